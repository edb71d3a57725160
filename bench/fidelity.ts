/**
 * Whole-model fidelity against Hugging Face transformers: a seeded prompt is prefilled,
 * then decoded greedily step by step; the logits of every position go to
 * bench/hf_logits.py, which runs transformers on the same safetensors and reports the
 * relative L2 error per position. The same decode steps are also run through the serving
 * path (CUDA graphs when enabled) and must pick the same tokens.
 *
 *   deno run -A bench/fidelity.ts --model DIR --name qwen3-0.6b [--device cuda]
 *     [--prompt 512] [--decode 64] [--kv-cache-dtype auto|fp8_e4m3] [--out results.json]
 */
import { parseArgs } from "node:util";
import { loadModelConfig } from "../src/model/config.ts";
import { ModelRunner, runnerOptions } from "../src/runtime/model_runner.ts";
import { type BatchEntry, GREEDY } from "../src/ipc/batch.ts";
import { appendResult } from "./results.ts";
import { DEFAULTS, parseKvCacheDtype } from "../src/core/defaults.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    device: { type: "string", default: "cuda" },
    prompt: { type: "string", default: "512" },
    decode: { type: "string", default: "64" },
    "hf-dtype": { type: "string", default: "float32" },
    "kv-cache-dtype": { type: "string", default: DEFAULTS.kvCacheDtype },
    out: { type: "string" },
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");
const P = Number(a.prompt), D = Number(a.decode), PAGE = 16;
const kvCacheDtype = parseKvCacheDtype(a["kv-cache-dtype"]!);
const cfg = await loadModelConfig(a.model);
const runner = await ModelRunner.create(
  cfg,
  runnerOptions(a.model, a.device as "cpu" | "cuda", {
    pageSize: PAGE,
    numPages: Math.ceil((P + D + 1) / PAGE) + 8,
    maxRows: 4,
    maxPrefillLength: P,
    cudaGraphMaxBs: a.device === "cuda" ? 4 : 0,
    kvCacheDtype,
  }),
  () => {},
);
const V = cfg.vocabSize;
const pages = Int32Array.from({ length: Math.ceil((P + D + 1) / PAGE) }, (_, i) => i);
const entry = (row: number, ids: number[] | null, start: number, qLen: number): BatchEntry => ({
  row,
  startPos: start,
  qLen,
  inputIds: ids ? Int32Array.from(ids) : null,
  pageStart: 0,
  newPages: pages,
  sample: true,
  sampling: GREEDY,
  penaltyTokens: null,
  logprobTargets: null,
  topLogprobs: 0,
});
let s = 12345;
const ids = Array.from({ length: P }, () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % V);
const argmax = (x: Float32Array) => x.reduce((b, v, i, arr) => (v > arr[b] ? i : b), 0);

// Reference path: logits of every position, decode steps one token at a time (row 0).
const all = new Float32Array((P + D) * V);
const [pre] = runner.logitsOf({ id: 0, entries: [entry(0, ids, 0, P)] });
all.set(pre);
const seq = [...ids];
let next = argmax(pre.subarray((P - 1) * V));
for (let i = 0; i < D; i++) {
  seq.push(next);
  const [l] = runner.logitsOf({ id: 1 + i, entries: [entry(0, [next], P + i, 1)] });
  all.set(l, (P + i) * V);
  next = argmax(l);
}
// Serving path (row 1): prefill with sampling, then device-side decode steps.
const served: number[] = [];
let r = runner.run({ id: 100, entries: [entry(1, ids, 0, P)] });
served.push(r.tokens[0]);
for (let i = 0; i < D - 1; i++) {
  r = runner.run({ id: 101 + i, entries: [entry(1, null, P + i, 1)] });
  served.push(r.tokens[0]);
}
const tokensMatch = served.every((t, i) => t === seq[P + i]);

const dir = await Deno.makeTempDir();
await Deno.writeTextFile(`${dir}/ids.json`, JSON.stringify(seq));
await Deno.writeFile(`${dir}/ours.f32`, new Uint8Array(all.buffer));
const py = new Deno.Command("python3", {
  args: [
    new URL("./hf_logits.py", import.meta.url).pathname,
    a.model,
    `${dir}/ids.json`,
    `${dir}/ours.f32`,
    `${dir}/hf.json`,
    "--dtype",
    a["hf-dtype"]!,
  ],
  stdout: "inherit",
  stderr: "inherit",
});
if (!(await py.output()).success) throw new Error("hf_logits.py failed");
const hf = JSON.parse(await Deno.readTextFile(`${dir}/hf.json`));
const record = {
  name: "fidelity_vs_hf",
  model: a.name,
  device: a.device,
  device_name: runner.info.deviceName,
  prompt_tokens: P,
  decode_steps: D,
  kv_cache_dtype: kvCacheDtype,
  max_rel_l2: hf.max_rel_l2,
  mean_rel_l2: hf.mean_rel_l2,
  argmax_agreement: hf.argmax_agreement,
  max_prompt_logprob_abs_diff: hf.max_prompt_logprob_abs_diff,
  hf_dtype: hf.hf_dtype,
  serving_path_tokens_match: tokensMatch,
};
console.log(JSON.stringify(record));
if (a.out) await appendResult(a.out, runner.info.deviceName, record);
await Deno.remove(dir, { recursive: true });
