/**
 * Offline throughput through the whole engine (scheduler worker, GPU worker, radix cache,
 * overlap loop, CUDA graphs) on nano-vllm's / Mini-SGLang's workload: 256 requests, seed 0,
 * input ids uniform in [0, 10000), input length U[100, 1024], max_tokens U[100, 1024],
 * temperature 0.6, ignore_eos, all submitted at once; output tokens over wall time with
 * prefill included.
 *
 * With --hf, --hf-requests requests of the same distribution (next seed) run through Hugging
 * Face transformers' continuous batching (bench/baseline_hf.py, first, on an empty device)
 * and through the engine, and vs_hf_x is the ratio of the two on that same subset.
 * --dataset shared-prefix: --groups prompts prefixes of --prefix-len ids, each followed by a
 * unique U[input-min, input-max] suffix (for the radix-cache ablation).
 *
 *   deno task bench offline --model DIR --name qwen3-0.6b [--requests 256] [--hf]
 *     [--hf-requests 64] [--out results.json] [engine flags: --page-size 16 ...]
 */
import { parseArgs } from "node:util";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig } from "../src/engine/config.ts";
import { appendResult } from "./results.ts";
import { ENGINE_FLAGS, engineOverrides, markdownTable } from "./common.ts";
import { randomWorkload, runWorkload, sharedPrefixWorkload, warmUp } from "./workload.ts";
import { copyBandwidthApart, modelBytes, workloadReadBytes } from "./roofline.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    requests: { type: "string", default: "256" },
    seed: { type: "string", default: "0" },
    dataset: { type: "string", default: "random" },
    groups: { type: "string", default: "8" },
    "prefix-len": { type: "string", default: "2048" },
    "id-range": { type: "string", default: "10000" },
    "input-min": { type: "string", default: "100" },
    "input-max": { type: "string", default: "1024" },
    "output-min": { type: "string", default: "100" },
    "output-max": { type: "string", default: "1024" },
    temperature: { type: "string", default: "0.6" },
    hf: { type: "boolean", default: false },
    "hf-requests": { type: "string", default: "64" },
    python: { type: "string", default: "python3" },
    out: { type: "string" },
    ...ENGINE_FLAGS,
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");
const temperature = Number(a.temperature);
const shape = {
  seed: Number(a.seed),
  idRange: Number(a["id-range"]),
  inMin: Number(a["input-min"]),
  inMax: Number(a["input-max"]),
  outMin: Number(a["output-min"]),
  outMax: Number(a["output-max"]),
};
const groups = Number(a.groups);
const items = a.dataset === "shared-prefix"
  ? sharedPrefixWorkload({
    ...shape,
    groups,
    perGroup: Math.ceil(Number(a.requests) / groups),
    prefixLen: Number(a["prefix-len"]),
  })
  : randomWorkload({ ...shape, n: Number(a.requests) });
if (a.dataset !== "random" && a.dataset !== "shared-prefix") {
  throw new Error(`unknown --dataset ${a.dataset}`);
}
const hfN = Math.min(Number(a["hf-requests"]), items.length);
// The subset both sides run for vs_hf_x is drawn with the next seed: run through the engine
// after the full workload, the full workload's first prompts would sit in the radix cache.
const subset = a.hf ? randomWorkload({ ...shape, seed: shape.seed + 1, n: hfN }) : [];

// Transformers runs first, on an empty device: the engine's memory (KV pool sized from the
// free memory) stays with this process until it exits.
let hf: Record<string, unknown> | null = null, hfError: string | null = null;
if (a.hf) {
  const dir = await Deno.makeTempDir();
  const workload = `${dir}/workload.json`, result = `${dir}/hf.json`;
  await Deno.writeTextFile(
    workload,
    JSON.stringify({ temperature, requests: subset.map((w) => [w.promptIds, w.maxTokens]) }),
  );
  const py = new Deno.Command(a.python!, {
    args: [
      new URL("./baseline_hf.py", import.meta.url).pathname,
      "--model",
      a.model,
      "--workload",
      workload,
      "--out",
      result,
    ],
    stdout: "inherit",
    stderr: "inherit",
  });
  try {
    const { success } = await py.output();
    if (!success) throw new Error("baseline_hf.py failed (its output is above)");
    hf = JSON.parse(await Deno.readTextFile(result));
  } catch (e) {
    hfError = (e as Error).message;
  }
  await Deno.remove(dir, { recursive: true });
}

const config = { ...defaultEngineConfig(a.model), ...engineOverrides(a) };
// The copy bandwidth for the memory floor below (GPU only), in a process of its own before the
// engine sizes its KV pool from the free memory.
const bw = config.device === "cuda" ? await copyBandwidthApart(config.deviceIndex) : NaN;
const engine = await startEngine(config);
const card = engine.info.deviceName;
await warmUp(engine, Number(a["id-range"]));
const full = await runWorkload(engine, items, temperature, "offline");
const ours = a.hf ? await runWorkload(engine, subset, temperature, "offline-hf-subset") : null;
await engine.shutdown();

// The memory floor (bench/roofline.ts): the KV and weight bytes any schedule must read for this
// workload, over the copy bandwidth measured above (with tensor parallelism each of the tpSize
// GPUs reads its share).
const floor = workloadReadBytes(
  await modelBytes(a.model, config.kvCacheDtype),
  items.map((w) => ({ input: w.promptIds.length, output: w.maxTokens })),
);
const floorS = (floor.kvBytes + floor.weightBytes) / (bw * config.tpSize);

const hfTokPerS = typeof hf?.out_tok_per_s === "number" ? hf.out_tok_per_s : null;
const record = {
  name: "offline",
  model: a.name,
  device: engine.info.backend,
  device_name: card,
  requests: full.requests,
  seed: Number(a.seed),
  dataset: a.dataset,
  input_len: a.dataset === "random"
    ? `U[${a["input-min"]},${a["input-max"]}]`
    : `${a["prefix-len"]} shared (${groups} groups) + U[${a["input-min"]},${a["input-max"]}]`,
  output_len: `U[${a["output-min"]},${a["output-max"]}]`,
  temperature,
  page_size: config.pageSize,
  cache: config.cache,
  overlap: !config.disableOverlapSchedule,
  cuda_graph_max_bs: config.cudaGraphMaxBs,
  attn: config.attn,
  kv_cache_dtype: config.kvCacheDtype,
  cached_tokens: full.cachedTokens,
  all_completed: full.outputTokens === items.reduce((s, w) => s + w.maxTokens, 0),
  out_tok_per_s: full.outTokPerS,
  total_tok_per_s: full.totalTokPerS,
  output_tokens: full.outputTokens,
  seconds: full.seconds,
  median_ttft_s: full.medianTtftS,
  kv_read_tb: floor.kvBytes / 1e12,
  weight_read_tb: floor.weightBytes / 1e12,
  copy_bandwidth_gbs: Number.isFinite(bw) ? bw / 1e9 : null,
  read_floor_s: Number.isFinite(floorS) ? floorS : null,
  roofline_frac_read: Number.isFinite(floorS) ? floorS / full.seconds : null,
  vs_hf_x: hfTokPerS && ours ? ours.outTokPerS / hfTokPerS : null,
  ...(a.hf
    ? {
      hf_requests: hfN,
      hf_workload_seed: Number(a.seed) + 1,
      ours_on_hf_subset_tok_per_s: ours?.outTokPerS,
      hf_out_tok_per_s: hfTokPerS,
      hf: hf ?? { error: hfError },
    }
    : {}),
};
console.log(markdownTable([record], [
  "model",
  "device_name",
  "requests",
  "out_tok_per_s",
  "total_tok_per_s",
  "seconds",
  "roofline_frac_read",
  "vs_hf_x",
]));
console.log(JSON.stringify(record));
if (a.out) await appendResult(a.out, card, record);
