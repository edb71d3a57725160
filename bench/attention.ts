/**
 * Attention microbenchmarks through the ABI (`deno task bench attention`), with FLOPs and
 * bytes counted and, in the same run, PyTorch's scaled_dot_product_attention (cuDNN and
 * flash backends, bench/peers/attention_sdpa.py) on the same shapes, so every figure is a
 * ratio measured side by side.
 *
 *   prefill  hd128-causal-8k (1 request of 8,192 new tokens) and hd128-chunk1k-x16 (16 of
 *            1,024); 32 query / 8 KV heads, head_dim 128, causal, no prefix, bf16.
 *            tflops = 4 * hq * head_dim * (causal key-query pairs) / time.
 *   decode   bs1-ctx32k, bs64-ctx1k, bs64-ctx8k, and bs256-ctx100-2k (256 contexts uniform in
 *            [100, 2048], seeded: the offline workload's ragged batches); bw_frac = K+V bytes
 *            / time over a device-to-device copy bandwidth (bytes read + written) measured in
 *            this run.
 *
 *            fa3 is timed in the variants --fa3 lists (record field "variant"; default: the
 *            one MINISGL_FA3_VARIANT names, else auto, 5 and 6; auto is what the engine runs,
 *            v5 or v6 by the longest request's keys). The decode kernel is timed on
 *            each --decode-kernels kernel (MSG_DECODE_KERNEL, record field "decode_kernel"):
 *            balanced at each --decode-blocks grid size (MSG_DECODE_BLOCKS, field "blocks"),
 *            grid at each --decode-splits value (MSG_DECODE_SPLITS, field "splits"), both at
 *            each --decode-keys minimum (MSG_DECODE_SPLIT_KEYS, field "min_keys"); 0 = the
 *            launcher's own choice, the default of each.
 *
 * Timing: CUDA events around `--iters` calls, median of `--repeats`, after a warm-up.
 *
 *   ttft     with --ttft-model DIR: time to first token (one prefill + sample through the
 *            ModelRunner, no prefix cache, median of 3) of prompts of --ttft-lens tokens
 *            under --attn fa2 and fa3.
 *
 *   deno run -A bench/attention.ts [--page 1] [--repeats 9] [--only prefill|decode]
 *     [--no-peer] [--fa3 auto,5,6|none] [--decode-kernels auto,grid,grid-pf,balanced,balanced-pf]
 *     [--decode-max-seq N (launches planned as a graph captured at N keys replays them)]
 *     [--decode-splits 0,16,32,64] [--decode-blocks 0,264,528] [--decode-keys 0,256]
 *     [--kv-cache-dtype auto|fp8_e4m3]
 *     [--ttft-model DIR --ttft-name NAME --ttft-lens 8192,32768]
 *     [--out FILE]
 */
import { parseArgs } from "node:util";
import { Device, DType, dtypeSize, type Handle, type Tensor } from "../ffi/device.ts";
import { parseKvCacheDtype } from "../src/core/defaults.ts";
import { type AttentionArgs, attentionDecode, attentionExtend, Ops } from "../ffi/ops.ts";
import { appendResult } from "./results.ts";
import { copyBandwidth } from "./roofline.ts";
import { loadModelConfig } from "../src/model/config.ts";
import { ModelRunner, runnerOptions } from "../src/runtime/model_runner.ts";
import { GREEDY } from "../src/ipc/batch.ts";
import {
  FA3_VARIANTS,
  type Fa3Variant,
  fa3Variant,
  parseFa3Variant,
} from "../src/runtime/attention.ts";

const { values: a } = parseArgs({
  options: {
    page: { type: "string", default: "1" },
    repeats: { type: "string", default: "9" },
    iters: { type: "string", default: "5" },
    "no-peer": { type: "boolean", default: false },
    only: { type: "string" },
    "ttft-model": { type: "string" },
    "ttft-name": { type: "string", default: "model" },
    "ttft-lens": { type: "string", default: "8192,32768" },
    out: { type: "string" },
    fa3: { type: "string" },
    "decode-splits": { type: "string", default: "0" },
    "decode-blocks": { type: "string", default: "0" },
    "decode-keys": { type: "string", default: "0" },
    "decode-kernels": { type: "string", default: "auto,grid,balanced-pf" },
    "kv-cache-dtype": { type: "string", default: "auto" },
    "decode-max-seq": { type: "string", default: "0" },
  },
  strict: true,
});
const PAGE = Number(a.page), REPEATS = Number(a.repeats), ITERS = Number(a.iters);
const HQ = 32, HKV = 8, HD = 128;
const dev = new Device("cuda");
const ops = new Ops(dev, dev.createStream());
const card = dev.name();
const e0 = dev.createEvent(), e1 = dev.createEvent();

/** Median milliseconds of one call of `body` (events around ITERS calls, REPEATS times). */
function timeMs(body: () => void, stream: Handle = ops.stream): number {
  body();
  dev.sync(stream);
  const t: number[] = [];
  for (let r = 0; r < REPEATS; r++) {
    dev.record(e0, stream);
    for (let i = 0; i < ITERS; i++) body();
    dev.record(e1, stream);
    dev.waitEvent(e1);
    t.push(dev.elapsedMs(e0, e1) / ITERS);
  }
  t.sort((x, y) => x - y);
  return t[t.length >> 1];
}

/** Random values, never zeros (zeros can run faster): bf16 uniform in [-1, 1), or for fp8
 *  e4m3 bytes of a random sign, exponent field 1..7 (2^-6 .. 2^0) and mantissa. */
function fillRandom(t: Tensor, seed: number) {
  const fp8 = t.dtype === DType.FP8_E4M3;
  const chunk = 1 << 22, buf = fp8 ? new Uint8Array(chunk) : new Uint16Array(chunk);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  let s = seed >>> 0;
  for (let i = 0; i < chunk; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    f[0] = s / 2147483648 - 1;
    buf[i] = fp8 ? (s >>> 24 & 0x80) | ((s >>> 8) % 7 + 1) << 3 | (s >>> 16 & 7) : u[0] >>> 16;
  }
  for (let off = 0; off < t.numel; off += chunk) {
    const n = Math.min(chunk, t.numel - off);
    dev.upload(t.at(off, [n]), buf.subarray(0, n), ops.stream);
  }
  dev.sync(ops.stream);
}

/** Buffers and arguments of `batch` requests with `qLen` new tokens over `seqLen` keys each,
 *  or over lens[i] keys (at most seqLen) where `lens` is given. */
function setup(
  batch: number,
  qLen: number,
  seqLen: number,
  decode: boolean,
  lens?: Int32Array,
  kvDtype = DType.BF16,
) {
  const pagesPer = Math.ceil(seqLen / PAGE), slots = batch * pagesPer * PAGE;
  const totalQ = batch * qLen;
  const t = {
    q: dev.alloc(DType.BF16, [totalQ, HQ, HD]),
    out: dev.alloc(DType.BF16, [totalQ, HQ, HD]),
    k: dev.alloc(kvDtype, [slots, HKV, HD]),
    v: dev.alloc(kvDtype, [slots, HKV, HD]),
    pt: dev.alloc(DType.I32, [batch, pagesPer]),
    rows: dev.alloc(DType.I32, [batch]),
    lens: dev.alloc(DType.I32, [batch]),
    starts: dev.alloc(DType.I32, [batch + 1]),
  };
  fillRandom(t.q, 1);
  fillRandom(t.k, 2);
  fillRandom(t.v, 3);
  // Each request on consecutive pages, as a fresh allocation gives them.
  dev.upload(t.pt, Int32Array.from({ length: batch * pagesPer }, (_, i) => i), ops.stream);
  dev.upload(t.rows, Int32Array.from({ length: batch }, (_, i) => i), ops.stream);
  dev.upload(t.lens, lens ?? new Int32Array(batch).fill(seqLen), ops.stream);
  dev.upload(t.starts, Int32Array.from({ length: batch + 1 }, (_, i) => i * qLen), ops.stream);
  dev.sync(ops.stream);
  const args: AttentionArgs = {
    out: t.out,
    q: t.q,
    qRowStride: HQ * HD,
    kCache: t.k,
    vCache: t.v,
    pageTable: t.pt,
    rows: t.rows,
    seqLens: t.lens,
    qStarts: t.starts,
    batch,
    totalQ,
    maxQLen: decode ? 1 : qLen,
    maxSeqLen: seqLen,
    hq: HQ,
    hkv: HKV,
    headDim: HD,
    pageSize: PAGE,
    scale: 1 / Math.sqrt(HD),
  };
  return { args, free: () => Object.values(t).forEach((x) => dev.free(x)) };
}

/** The extend entry points of the ABI, by the backend name that uses them and the fa3
 *  variant: those --fa3 lists ("none": native alone), else the one MINISGL_FA3_VARIANT names,
 *  else every variant. */
const fa3Timed: Fa3Variant[] = a.fa3 === "none"
  ? []
  : a.fa3
  ? a.fa3.split(",").map(parseFa3Variant)
  : Deno.env.get("MINISGL_FA3_VARIANT")
  ? [fa3Variant()]
  : ["auto", 5, 6];
const prefillKernels: { kernel: string; variant?: Fa3Variant; run: (x: AttentionArgs) => void }[] =
  [
    { kernel: "native", run: (x) => attentionExtend(ops, x, "native") },
    ...fa3Timed.map((v) => ({
      kernel: "fa3",
      variant: v,
      run: (x: AttentionArgs) => attentionExtend(ops, x, FA3_VARIANTS[v]),
    })),
  ];

const prefillShapes = [
  { model: "hd128-causal-8k", batch: 1, qLen: 8192 },
  { model: "hd128-chunk1k-x16", batch: 16, qLen: 1024 },
  // Where fa3 auto switches from v6 to v5 (FA3_AUTO_V6_MAX_KEYS).
  { model: "hd128-causal-2k-x4", batch: 4, qLen: 2048 },
  { model: "hd128-causal-4k-x2", batch: 2, qLen: 4096 },
];
/** `batch` context lengths uniform in [lo, hi] (seeded): the ragged batches of the offline
 *  workload, whose requests are at every stage of their prompt and answer at once. */
function raggedLens(batch: number, lo: number, hi: number): Int32Array {
  let s = 12345;
  return Int32Array.from({ length: batch }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return lo + Math.floor((s / 2 ** 32) * (hi - lo + 1));
  });
}
const decodeShapes: { model: string; batch: number; ctx: number; lens?: Int32Array }[] = [
  { model: "bs1-ctx32k", batch: 1, ctx: 32768 },
  { model: "bs64-ctx1k", batch: 64, ctx: 1024 },
  { model: "bs64-ctx8k", batch: 64, ctx: 8192 },
  { model: "bs256-ctx100-2k", batch: 256, ctx: 2048, lens: raggedLens(256, 100, 2048) },
];

const doPrefill = a.only !== "decode", doDecode = a.only !== "prefill";
let peer: Record<string, { cudnn_tflops: number | null; flash_tflops: number | null }> = {};
if (!a["no-peer"] && doPrefill) {
  const shapes = prefillShapes.map((s) => ({
    model: s.model,
    batch: s.batch,
    q_len: s.qLen,
    hq: HQ,
    hkv: HKV,
    head_dim: HD,
    dtype: "bf16",
  }));
  const script = new URL("./peers/attention_sdpa.py", import.meta.url).pathname;
  try {
    const r = await new Deno.Command("python3", {
      args: [script, JSON.stringify(shapes)],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    const text = new TextDecoder().decode(r.stdout).trim().split("\n").pop() ?? "";
    if (r.success) peer = JSON.parse(text);
    else console.error(`peer script failed (exit ${r.code}); cudnn figures are null`);
  } catch (e) {
    console.error(`peer script not run (${(e as Error).message}); cudnn figures are null`);
  }
}

const records: Record<string, unknown>[] = [];
for (const s of doPrefill ? prefillShapes : []) {
  const { args, free } = setup(s.batch, s.qLen, s.qLen, false);
  const flops = 4 * HQ * HD * s.batch * (s.qLen * (s.qLen + 1) / 2);
  const p = peer[s.model] ?? { cudnn_tflops: null, flash_tflops: null };
  for (const { kernel, variant, run } of prefillKernels) {
    const ms = timeMs(() => run(args));
    const tflops = flops / (ms / 1e3) / 1e12;
    records.push({
      name: "attn_prefill",
      model: s.model,
      kernel,
      ...(variant ? { variant } : {}),
      page_size: PAGE,
      ms,
      tflops,
      cudnn_tflops: p.cudnn_tflops,
      flash_tflops: p.flash_tflops,
      vs_cudnn: p.cudnn_tflops ? tflops / p.cudnn_tflops : null,
    });
  }
  free();
}
const bw = copyBandwidth(dev, 1 << 30, ops.stream);
// The library reads MSG_DECODE_KERNEL (balanced: an even share of every request's keys per
// block, grid: (splits, head groups, requests)), MSG_DECODE_SPLITS (grid), MSG_DECODE_BLOCKS
// (balanced) and MSG_DECODE_SPLIT_KEYS (both: keys per split or block, at least) at every launch.
const list = (v: string) => v.split(",").map(Number);
const splitCounts = list(a["decode-splits"]), blockCounts = list(a["decode-blocks"]);
const keyCounts = list(a["decode-keys"]);
const decodeKernels = a["decode-kernels"].split(",");
// --kv-cache-dtype fp8_e4m3: the decode shapes over fp8 caches (bytes = what is read).
const decodeKv = parseKvCacheDtype(a["kv-cache-dtype"]) === "fp8_e4m3"
  ? DType.FP8_E4M3
  : DType.BF16;
// --decode-max-seq N: the launches planned for a longest sequence of N keys instead of the
// shape's own, as a decode graph captured for N replays them (src/runtime/cuda_graph.ts: the
// smallest sequence bucket holding the batch; until 2026-12-06 always the pool's longest): the
// grid kernel then picks its split count for N and trims the splits on the device to each
// real length.
const plannedMax = Number(a["decode-max-seq"]);
for (const s of doDecode ? decodeShapes : []) {
  const { args: shapeArgs, free } = setup(s.batch, 1, s.ctx, true, s.lens, decodeKv);
  const args = plannedMax > 0 ? { ...shapeArgs, maxSeqLen: plannedMax } : shapeArgs;
  const keys = s.lens ? s.lens.reduce((x, y) => x + y, 0) : s.batch * s.ctx;
  const bytes = 2 * keys * HKV * HD * dtypeSize(decodeKv);
  for (const variant of decodeKernels) {
    Deno.env.set("MSG_DECODE_KERNEL", variant);
    // auto (what the engine runs) at the launcher's own choices only; the others at each knob.
    const knob = variant.startsWith("grid") ? "MSG_DECODE_SPLITS" : "MSG_DECODE_BLOCKS";
    const counts = variant === "auto"
      ? [0]
      : knob === "MSG_DECODE_SPLITS"
      ? splitCounts
      : blockCounts;
    for (const count of counts) {
      for (const keys of variant === "auto" ? [0] : keyCounts) {
        Deno.env.set(knob, String(count));
        Deno.env.set("MSG_DECODE_SPLIT_KEYS", String(keys));
        const ms = timeMs(() => attentionDecode(ops, args));
        const gbs = bytes / (ms / 1e3) / 1e9;
        records.push({
          name: "attn_decode",
          model: s.model,
          kernel: "flashdecode",
          decode_kernel: variant,
          kv_cache_dtype: decodeKv === DType.FP8_E4M3 ? "fp8_e4m3" : "bf16",
          ...(variant === "auto"
            ? {}
            : { [knob === "MSG_DECODE_SPLITS" ? "splits" : "blocks"]: count > 0 ? count : "auto" }),
          min_keys: keys > 0 ? keys : "auto",
          ...(plannedMax > 0 ? { planned_max_seq: plannedMax } : {}),
          page_size: PAGE,
          ms,
          kv_gbs: gbs,
          copy_bandwidth_gbs: bw / 1e9,
          bw_frac: gbs / (bw / 1e9),
        });
      }
    }
    for (const k of ["MSG_DECODE_SPLITS", "MSG_DECODE_BLOCKS", "MSG_DECODE_SPLIT_KEYS"]) {
      Deno.env.delete(k);
    }
  }
  Deno.env.delete("MSG_DECODE_KERNEL");
  free();
}

/** Seconds from launching a prompt of `len` tokens (row 0, no cached prefix) to its first
 *  sampled token, median of 3 after a warm-up, for each prefill kernel. */
async function ttft(dir: string, lens: number[]) {
  const cfg = await loadModelConfig(dir);
  const maxLen = Math.max(...lens);
  for (const attn of ["fa2", "fa3"]) {
    const runner = await ModelRunner.create(
      cfg,
      runnerOptions(dir, "cuda", {
        pageSize: PAGE,
        numPages: Math.ceil((maxLen + 64) / PAGE) + 4,
        maxRows: 4,
        maxPrefillLength: maxLen,
        cudaGraphMaxBs: 0,
        attn,
      }),
      () => {},
    );
    const pages = Int32Array.from({ length: Math.ceil(maxLen / PAGE) }, (_, i) => i);
    for (const len of lens) {
      const ids = Int32Array.from({ length: len }, (_, i) => (i * 7919 + 13) % cfg.vocabSize);
      const once = () => {
        const t0 = performance.now();
        runner.run({
          id: 0,
          entries: [{
            row: 0,
            startPos: 0,
            qLen: len,
            inputIds: ids,
            pageStart: 0,
            newPages: pages.subarray(0, Math.ceil(len / PAGE)),
            sample: true,
            sampling: GREEDY,
            penaltyTokens: null,
            logprobTargets: null,
            topLogprobs: 0,
          }],
        });
        return (performance.now() - t0) / 1000;
      };
      once();
      const t = [once(), once(), once()].sort((x, y) => x - y);
      records.push({
        name: "attn_ttft",
        model: `${a["ttft-name"]}-${len}`,
        kernel: attn,
        ...(attn === "fa3" ? { variant: fa3Variant() } : {}),
        page_size: PAGE,
        ttft_s: t[1],
      });
    }
  }
}
if (a["ttft-model"]) {
  await ttft(a["ttft-model"], a["ttft-lens"]!.split(",").map(Number));
}

console.log(`${card}, page size ${PAGE}, copy ${(bw / 1e9).toFixed(0)} GB/s`);
for (const r of records) {
  if (r.name === "attn_ttft") {
    console.log(`attn_ttft ${r.model} ${r.kernel}: ${(r.ttft_s as number).toFixed(3)} s`);
    continue;
  }
  const fig = r.name === "attn_prefill"
    ? `${(r.tflops as number).toFixed(1)} TFLOP/s, cuDNN ${
      (r.cudnn_tflops as number | null)?.toFixed(1) ?? "-"
    }, flash ${(r.flash_tflops as number | null)?.toFixed(1) ?? "-"}, vs_cudnn ${
      (r.vs_cudnn as number | null)?.toFixed(3) ?? "-"
    }`
    : `${(r.kv_gbs as number).toFixed(0)} GB/s, bw_frac ${(r.bw_frac as number).toFixed(3)}`;
  const kernel = `${r.kernel}${r.variant ? ` v${r.variant}` : ""}${
    r.decode_kernel
      ? ` ${r.decode_kernel} ${
        r.splits ? `splits=${r.splits}` : `blocks=${r.blocks}`
      } keys=${r.min_keys}`
      : ""
  }`;
  console.log(`${r.name} ${r.model} ${kernel}: ${(r.ms as number).toFixed(3)} ms, ${fig}`);
}
if (a.out) { for (const r of records) await appendResult(a.out, card, r); }
