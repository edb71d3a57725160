/**
 * `deno task bench NAME [flags]`: runs one benchmark of bench/ with its own flags.
 *
 *   fidelity     logits vs Hugging Face transformers (GPU machine; needs python3 + torch)
 *   decode       decode tok/s at batch size 1 and the copy-bandwidth roofline
 *   throughput   offline throughput through the whole engine
 *   scheduler    the scheduler's CPU time per step at 256 running requests (no model)
 *
 * Each writes a record to --out FILE (bench/results/*.json format) where it takes --out.
 */
const scripts: Record<string, string> = {
  fidelity: "fidelity.ts",
  decode: "decode_bs1.ts",
  throughput: "throughput.ts",
  scheduler: "scheduler_bench.ts",
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
