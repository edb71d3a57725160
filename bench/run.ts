/**
 * `deno task bench NAME [flags]`: runs one benchmark of bench/ with its own flags.
 *
 *   fidelity     logits vs Hugging Face transformers (GPU machine; needs python3 + torch)
 *   offline      nano-vllm's offline workload through the engine (--hf: vs transformers)
 *   latency      decode tok/s at batch 1..128 and the copy-bandwidth roofline (--ttft too)
 *   ttft         time to first token through the engine (32 and 8k-token prompts)
 *   serving      OpenAI-API load generator (Poisson rates or fixed concurrency)
 *   ablations    overlap, CUDA graphs, radix vs naive, page size 1 vs 16, in one run
 *   scheduler    the scheduler's CPU time per step at 256 running requests (no model)
 *   attention    attention kernels through the ABI vs PyTorch SDPA (GPU machine; python3 + torch)
 *   soak         valid, invalid, aborted and slow clients against the server for N minutes
 *   structured   JSON-schema decoding vs free decoding at batch 1 and 64, mask costs
 *   tokenize     chat template + encoding of random prompts, vs the library's BPE loop (CPU)
 *   structured_masks  token-mask time on the CPU alone (Qwen3 vocabulary, nested schema)
 *
 * Each writes a record to --out FILE (bench/results/*.json format) where it takes --out.
 */
const scripts: Record<string, string> = {
  fidelity: "fidelity.ts",
  offline: "offline.ts",
  latency: "latency.ts",
  ttft: "ttft.ts",
  serving: "serving.ts",
  ablations: "ablations.ts",
  scheduler: "scheduler_bench.ts",
  attention: "attention.ts",
  soak: "soak.ts",
  structured: "structured.ts",
  tokenize: "tokenize.ts",
  structured_masks: "structured_masks.ts",
};
const [name, ...rest] = Deno.args;
const script = scripts[name ?? ""];
if (!script) {
  console.error(`usage: deno task bench ${Object.keys(scripts).join("|")} [flags]`);
  Deno.exit(name === undefined || name === "--help" ? 0 : 1);
}
const path = new URL(`./${script}`, import.meta.url).pathname;
const { code } = await new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", path, ...rest],
  stdin: "inherit",
  stdout: "inherit",
  stderr: "inherit",
}).output();
Deno.exit(code);
