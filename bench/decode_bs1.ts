/**
 * Decode speed at batch size 1 (the memory-bound case gpt-fast is measured on), and the
 * device-to-device copy bandwidth measured in the same process, for the roofline:
 * roofline_frac = tok/s * weight bytes / copy bandwidth (bytes read + written per second).
 * The KV pool is sized as the server sizes it (--mem-fraction 0.9), so the captured graphs
 * are those a server would replay.
 *
 *   deno run -A bench/decode_bs1.ts --model DIR --name llama-3-8b [--steps 256] [--out F]
 */
import { parseArgs } from "node:util";
import { loadModelConfig } from "../src/model/config.ts";
import { SafetensorsFolder } from "../src/model/safetensors.ts";
import { ModelRunner, type Pending, runnerOptions } from "../src/runtime/model_runner.ts";
import { type BatchEntry, GREEDY } from "../src/ipc/batch.ts";
import { DType } from "../ffi/device.ts";
import { appendResult } from "./results.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    device: { type: "string", default: "cuda" },
    steps: { type: "string", default: "256" },
    prompt: { type: "string", default: "16" },
    graphs: { type: "string", default: "8" },
    out: { type: "string" },
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");
const steps = Number(a.steps), P = Number(a.prompt), PAGE = 16;
const cfg = await loadModelConfig(a.model);
const folder = await SafetensorsFolder.open(a.model);
const weightBytes = [...folder.tensors.values()].reduce((s, t) => s + t.byteLength, 0);
const runner = await ModelRunner.create(
  cfg,
  runnerOptions(a.model, a.device as "cpu" | "cuda", {
    pageSize: PAGE,
    maxRows: 8,
    maxPrefillLength: Math.max(P, 64),
    cudaGraphMaxBs: Number(a.graphs),
  }),
  () => {},
);
const dev = runner.dev;

// Copy bandwidth: 1 GiB buffers, median of 10 copies timed with events.
function copyBandwidth(): number {
  const n = 1 << 30;
  const x = dev.alloc(DType.U8, [n]), y = dev.alloc(DType.U8, [n]);
  dev.memset(x, 7);
  const e0 = dev.createEvent(), e1 = dev.createEvent();
  const times: number[] = [];
  for (let i = 0; i < 12; i++) {
    dev.record(e0, null);
    dev.copy(y, x, n);
    dev.record(e1, null);
    dev.waitEvent(e1);
    if (i >= 2) times.push(dev.elapsedMs(e0, e1));
  }
  dev.free(x);
  dev.free(y);
  times.sort((p, q) => p - q);
  return (2 * n) / (times[times.length >> 1] / 1000);
}

const pages = Int32Array.from({ length: Math.ceil((P + 2 * steps + 64) / PAGE) }, (_, i) => i);
const entry = (ids: number[] | null, start: number): BatchEntry => ({
  row: 0,
  startPos: start,
  qLen: ids ? ids.length : 1,
  inputIds: ids ? Int32Array.from(ids) : null,
  pageStart: 0,
  newPages: start === 0 ? pages : new Int32Array(0),
  sample: true,
  sampling: GREEDY,
  penaltyTokens: null,
  logprobTargets: null,
  topLogprobs: 0,
});
const prompt = Array.from({ length: P }, (_, i) => (i * 7919) % cfg.vocabSize);
let pos = 0;
const decodeSteps = (n: number, pipelined: boolean) => {
  const t0 = performance.now();
  let pending: Pending | null = null;
  for (let i = 0; i < n; i++) {
    const p = runner.launch({ id: i, entries: [entry(null, pos++)] });
    if (pipelined) {
      if (pending) runner.finish(pending);
      pending = p;
    } else runner.finish(p);
  }
  if (pending) runner.finish(pending);
  return n / ((performance.now() - t0) / 1000);
};
runner.run({ id: -1, entries: [entry(prompt, 0)] });
pos = P;
decodeSteps(16, true); // warm-up
const tokPerSPipelined = decodeSteps(steps, true);
const tokPerSSync = decodeSteps(Math.min(steps, 64), false);
const bw = copyBandwidth();
const record = {
  name: "decode_bs1",
  model: a.name,
  device_name: runner.info.deviceName,
  tok_per_s: tokPerSPipelined,
  tok_per_s_unpipelined: tokPerSSync,
  weight_bytes: weightBytes,
  copy_bandwidth_gbs: bw / 1e9,
  roofline_frac: (tokPerSPipelined * weightBytes) / bw,
  steps,
};
console.log(JSON.stringify(record));
if (a.out) await appendResult(a.out, runner.info.deviceName, record);
