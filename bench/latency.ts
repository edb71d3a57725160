/**
 * Decode latency through the model runner (no scheduler): tok/s at batch sizes 1, 8, 32, 128
 * (CUDA graphs replayed as the server replays them), and the share of the memory roofline:
 *
 *   roofline_frac_read = steps/s x bytes a step must read / copy bandwidth
 *
 * where the bytes a step must read are every weight matrix once (one embedding row per token
 * unless the embedding is tied to the LM head, which then reads all of it) plus the KV cache
 * of every row, and the copy bandwidth is a device-to-device copy (bytes read + written per
 * second) measured in the same run. Time to first token goes through the engine instead
 * (bench/ttft.ts); --ttft runs it first, in its own process, before this one loads the model.
 *
 * --ops: where a step's time goes instead (records `decode_ops`). The step runs eagerly (no
 * graph) with a CUDA event recorded after every native call, so each op's device time is the
 * time between its event and the one before. The stream is first held busy by device copies
 * that outlast the host's enqueueing of the whole step, so the ops run back to back as on a
 * loaded device rather than at the host's launch rate. The sum of the ops is the step without
 * graphs and PDL; set beside the graph-replayed step of a plain run, the difference is what
 * kernel boundaries cost.
 *
 *   deno task bench latency --model DIR --name llama-3-8b [--batches 1,8,32,128]
 *     [--steps 256] [--ttft [--ttft-lengths 32,8192]] [--ops [--ops-steps 8]]
 *     [--kv-cache-dtype auto|fp8_e4m3]
 *     [--out results.json] [--plot]
 */
import { parseArgs } from "node:util";
import { ModelRunner, type Pending, runnerOptions } from "../src/runtime/model_runner.ts";
import { type BatchEntry, GREEDY } from "../src/ipc/batch.ts";
import { DType, type Handle } from "../ffi/device.ts";
import { DEFAULTS, parseKvCacheDtype } from "../src/core/defaults.ts";
import { appendResult } from "./results.ts";
import { copyBandwidth, decodeStepBytes, modelBytes } from "./roofline.ts";
import { markdownTable, plotPath, svgLinePlot } from "./common.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    device: { type: "string", default: "cuda" },
    batches: { type: "string", default: "1,8,32,128" },
    steps: { type: "string", default: "256" },
    prompt: { type: "string", default: "16" },
    "page-size": { type: "string", default: "16" },
    "num-pages": { type: "string" },
    "copy-mib": { type: "string", default: "1024" },
    attn: { type: "string", default: DEFAULTS.attn },
    "kv-cache-dtype": { type: "string", default: DEFAULTS.kvCacheDtype },
    ttft: { type: "boolean", default: false },
    ops: { type: "boolean", default: false },
    "ops-steps": { type: "string", default: "8" },
    "ttft-lengths": { type: "string", default: "32,8192" },
    plot: { type: "boolean", default: false },
    out: { type: "string" },
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");

if (a.ttft) {
  const args = ["run", "-A", new URL("./ttft.ts", import.meta.url).pathname];
  args.push("--model", a.model, "--name", a.name!, "--device", a.device!);
  args.push("--lengths", a["ttft-lengths"]!, "--page-size", a["page-size"]!, "--attn", a.attn!);
  if (a.out) args.push("--out", a.out);
  const { success } = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!success) throw new Error("bench/ttft.ts failed");
}

const batches = a.batches!.split(",").map(Number);
const steps = Number(a.steps), P = Number(a.prompt), PAGE = Number(a["page-size"]);
const maxB = Math.max(...batches);
// Rows prefilled together: at most ~16k tokens a batch (as a server's chunked prefill would).
const prefillRows = Math.min(maxB, Math.max(1, Math.floor(16384 / P)));
const kvCacheDtype = parseKvCacheDtype(a["kv-cache-dtype"]!);
const mb = await modelBytes(a.model, kvCacheDtype);
const cfg = mb.cfg;
const runner = await ModelRunner.create(
  cfg,
  runnerOptions(a.model, a.device as "cpu" | "cuda", {
    pageSize: PAGE,
    numPages: a["num-pages"] ? Number(a["num-pages"]) : null,
    maxRows: maxB,
    maxPrefillLength: Math.max(prefillRows * P, 64),
    cudaGraphMaxBs: a.device === "cuda" && !a.ops ? maxB : 0,
    attn: a.attn!,
    kvCacheDtype,
  }),
  () => {},
);
const dev = runner.dev;
const card = runner.info.deviceName;
const opsSteps = a.ops ? Number(a["ops-steps"]) + 1 : 0;
const pagesPerRow = Math.ceil((P + steps + 32 + opsSteps) / PAGE);
const rowPages = (r: number) =>
  Int32Array.from({ length: pagesPerRow }, (_, i) => r * pagesPerRow + i);
const entry = (row: number, ids: number[] | null, start: number): BatchEntry => ({
  row,
  startPos: start,
  qLen: ids ? ids.length : 1,
  inputIds: ids ? Int32Array.from(ids) : null,
  pageStart: 0,
  newPages: start === 0 ? rowPages(row) : new Int32Array(0),
  sample: true,
  sampling: GREEDY,
  penaltyTokens: null,
  logprobTargets: null,
  topLogprobs: 0,
});

/** Prefills `bs` rows, then times `n` pipelined decode steps (as the GPU worker runs them).
 *  `pos`: the rows' length after the last step. */
function measureDecode(
  bs: number,
  n: number,
): { stepsPerS: number; meanSeqLen: number; pos: number } {
  const prompt = (r: number) =>
    Array.from({ length: P }, (_, i) => (i * 7919 + r * 31) % Math.min(10000, cfg.vocabSize));
  for (let r0 = 0; r0 < bs; r0 += prefillRows) {
    const rows = Math.min(prefillRows, bs - r0);
    runner.run({
      id: -1,
      entries: Array.from({ length: rows }, (_, r) => entry(r0 + r, prompt(r0 + r), 0)),
    });
  }
  let pos = P;
  const run = (k: number) => {
    let pending: Pending | null = null;
    const t0 = performance.now();
    for (let i = 0; i < k; i++) {
      const p = runner.launch({
        id: i,
        entries: Array.from({ length: bs }, (_, r) => entry(r, null, pos)),
      });
      pos++;
      if (pending) runner.finish(pending);
      pending = p;
    }
    if (pending) runner.finish(pending);
    return k / ((performance.now() - t0) / 1000);
  };
  run(16); // warm-up
  const start = pos;
  const stepsPerS = run(n);
  return { stepsPerS, meanSeqLen: (start + pos) / 2, pos };
}

/** Native calls that are not work on the stream (no event after them). */
const HOST_CALLS = /^(event |stream sync|copy to host|alloc|free|host )/;

/** --ops: device time per op of a decode step of `bs` rows, mean of `n` steps (see the top). */
function profileOps(bs: number, n: number): Record<string, unknown> {
  const measured = measureDecode(bs, steps);
  let pos = measured.pos;
  const stream = runner.ops.stream;
  const step = () => {
    const p = runner.launch({
      id: 0,
      entries: Array.from({ length: bs }, (_, r) => entry(r, null, pos)),
    });
    pos++;
    return p;
  };
  const events: Handle[] = [], names: string[] = [];
  let used = 0, busy = false;
  /** An event on the stream after a native call (`busy`: not after its own calls). */
  const mark = (what: string) => {
    if (busy || HOST_CALLS.test(what)) return;
    busy = true;
    if (used === events.length) events.push(dev.createEvent());
    dev.record(events[used], stream);
    busy = false;
    names[used++] = what;
  };
  // The host's time to enqueue one step with its events; copies ahead must outlast it.
  dev.onCall = mark;
  const t = performance.now();
  runner.finish(step());
  const hostMs = performance.now() - t;
  const blockBytes = 256 << 20;
  const x = dev.alloc(DType.U8, [blockBytes]), y = dev.alloc(DType.U8, [blockBytes]);
  let copies = 0;
  dev.onCall = null;
  if (dev.backend === "cuda") {
    used = 0;
    mark("copy");
    dev.copy(y, x, blockBytes, stream);
    mark("copy");
    dev.sync(stream);
    copies = Math.ceil((3 * hostMs) / dev.elapsedMs(events[0], events[1])) + 1;
  }
  const ops = new Map<string, { calls: number; ms: number }>();
  let stepMs = 0;
  for (let i = 0; i < n; i++) {
    dev.onCall = null;
    for (let c = 0; c < copies; c++) dev.copy(y, x, blockBytes, stream);
    dev.onCall = mark;
    used = 0;
    mark("start");
    runner.finish(step());
    for (let k = 1; k < used; k++) {
      const ms = dev.elapsedMs(events[k - 1], events[k]);
      const o = ops.get(names[k]) ?? { calls: 0, ms: 0 };
      o.calls++;
      o.ms += ms;
      ops.set(names[k], o);
      stepMs += ms;
    }
  }
  dev.onCall = null;
  dev.free(x);
  dev.free(y);
  const list = [...ops].map(([op, o]) => ({
    op,
    calls: o.calls / n,
    us: (o.ms * 1000) / n,
    us_per_call: (o.ms * 1000) / o.calls,
    share: o.ms / stepMs,
  })).sort((p, q) => q.us - p.us);
  return {
    name: "decode_ops",
    model: a.name,
    device_name: card,
    batch: bs,
    eager_step_ms: 1000 / measured.stepsPerS,
    ops_step_ms: stepMs / n,
    host_enqueue_ms: hostMs,
    copies_ahead: copies,
    steps: n,
    page_size: PAGE,
    attn: a.attn,
    kv_cache_dtype: kvCacheDtype,
    ops: list,
  };
}

if (a.ops) {
  for (const bs of batches) {
    const rec = profileOps(bs, opsSteps - 1);
    console.log(
      `decode step at batch ${bs}: ${(rec.eager_step_ms as number).toFixed(3)} ms eager, ` +
        `${(rec.ops_step_ms as number).toFixed(3)} ms in ops run back to back`,
    );
    console.log(markdownTable(rec.ops as Record<string, unknown>[], [
      "op",
      "calls",
      "us",
      "us_per_call",
      "share",
    ]));
    if (a.out) await appendResult(a.out, card, rec);
  }
  Deno.exit(0);
}

const bw = dev.backend === "cuda" ? copyBandwidth(dev, Number(a["copy-mib"]) << 20) : NaN;
const rows: Record<string, unknown>[] = [];
for (const bs of batches) {
  const { stepsPerS, meanSeqLen } = measureDecode(bs, steps);
  const bytes = decodeStepBytes(mb, bs, meanSeqLen);
  const rec = {
    name: bs === 1 ? "decode_bs1" : "decode",
    model: a.name,
    device_name: card,
    batch: bs,
    tok_per_s: stepsPerS * bs,
    step_ms: 1000 / stepsPerS,
    bytes_per_step: bytes,
    copy_bandwidth_gbs: bw / 1e9,
    roofline_frac_read: (stepsPerS * bytes) / bw,
    steps,
    page_size: PAGE,
    attn: a.attn,
    kv_cache_dtype: kvCacheDtype,
  };
  rows.push(rec);
  if (a.out) await appendResult(a.out, card, rec);
}
console.log(markdownTable(rows, [
  "model",
  "batch",
  "tok_per_s",
  "step_ms",
  "bytes_per_step",
  "copy_bandwidth_gbs",
  "roofline_frac_read",
]));
for (const r of rows) console.log(JSON.stringify(r));
if (a.plot) {
  const path = plotPath(a.out, `decode-${a.name}`);
  await Deno.writeTextFile(
    path,
    svgLinePlot(`decode ${a.name} on ${card}`, "batch size", "output tok/s", [
      { label: "tok/s", points: rows.map((r) => [r.batch as number, r.tok_per_s as number]) },
    ], true),
  );
  console.log(`plot: ${path}`);
}
