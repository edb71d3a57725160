/**
 * What the mixed-batch attention tests share (tests/mixed_attention_test.ts on the CPU,
 * tests/device/attention_mixed_test.ts on the GPU): random inputs of a batch whose entries are
 * decode rows (one new token) and extend rows, and one run of NativeAttention.storeAndAttend
 * (rotary + KV store, then the decode and extend calls the batch splits into) over any subset
 * of those entries, each run on fresh copies of the inputs.
 */
import { Device, DType, type Tensor } from "../ffi/device.ts";
import { type ExtendKernel, Ops } from "../ffi/ops.ts";
import {
  type ForwardMeta,
  type HeadShape,
  NativeAttention,
  oneTokenRuns,
} from "../src/runtime/attention.ts";
import { from16, makeRng, to16 } from "./device/harness.ts";

/** Shape of a case; reqs are [cached prefix, new tokens] per entry (1 new token = decode). */
export interface MixedCase {
  pageSize: number;
  hq: number;
  hkv: number;
  headDim: number;
  reqs: [number, number][];
}

/** Random inputs of a case (float32; rounded to the run's dtype on upload). */
export interface MixedInputs {
  c: MixedCase;
  /** Page-table row of entry b is b; its pages are disjoint from every other entry's. */
  pageTable: Int32Array;
  ptStride: number;
  numSlots: number;
  /** The whole KV pool (prefixes; the new tokens' slots are overwritten by the store). */
  k: Float32Array;
  v: Float32Array;
  /** qkv rows of entry b's new tokens, [newTokens, (hq + 2 hkv) headDim]. */
  qkv: Float32Array[];
  cosSin: Float32Array;
}

export function mixedInputs(c: MixedCase, seed: number): MixedInputs {
  const { randn, rand } = makeRng(seed);
  const seqs = c.reqs.map(([p, n]) => p + n);
  const pages = seqs.map((s) => Math.ceil(s / c.pageSize));
  const ptStride = Math.max(...pages);
  const numPages = pages.reduce((x, y) => x + y, 0);
  // Shuffled pages, so that a wrong row or page offset reads someone else's keys.
  const perm = Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = rand() * (i + 1) | 0;
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const pageTable = new Int32Array(c.reqs.length * ptStride);
  let next = 0;
  pages.forEach((n, b) => {
    for (let j = 0; j < n; j++) pageTable[b * ptStride + j] = perm[next++];
  });
  const numSlots = numPages * c.pageSize;
  const width = (c.hq + 2 * c.hkv) * c.headDim;
  const maxSeq = Math.max(...seqs);
  const cosSin = new Float32Array(maxSeq * c.headDim);
  const half = c.headDim / 2;
  for (let p = 0; p < maxSeq; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * Math.pow(10000, -i / half);
      cosSin[p * c.headDim + i] = Math.cos(a);
      cosSin[p * c.headDim + half + i] = Math.sin(a);
    }
  }
  return {
    c,
    pageTable,
    ptStride,
    numSlots,
    k: randn(numSlots * c.hkv * c.headDim),
    v: randn(numSlots * c.hkv * c.headDim),
    qkv: c.reqs.map(([, n]) => randn(n * width)),
    cosSin,
  };
}

function put(dev: Device, dtype: DType, shape: number[], data: Float32Array): Tensor {
  const t = dev.alloc(dtype, shape);
  dev.upload(t, dtype === DType.F32 ? data : to16(data, dtype));
  return t;
}

function putI32(dev: Device, data: Int32Array): Tensor {
  const t = dev.alloc(DType.I32, [Math.max(1, data.length)]);
  dev.upload(t, data);
  return t;
}

/** Attention output of the entries `which` (in that order) run as one batch on `dev`:
 *  float32 [their new tokens, hq * headDim]. */
export function attendEntries(
  dev: Device,
  dtype: DType,
  extend: ExtendKernel,
  inp: MixedInputs,
  which: number[],
): Float32Array {
  const { c } = inp;
  const ops = new Ops(dev);
  const width = (c.hq + 2 * c.hkv) * c.headDim;
  const qLens = which.map((b) => c.reqs[b][1]);
  const T = qLens.reduce((x, y) => x + y, 0);
  const qkvHost = new Float32Array(T * width);
  const qStarts = new Int32Array(which.length + 1);
  const positions = new Int32Array(T), slots = new Int32Array(T);
  which.forEach((b, i) => {
    const [prefix, n] = c.reqs[b];
    const t0 = qStarts[i];
    qkvHost.set(inp.qkv[b], t0 * width);
    for (let j = 0; j < n; j++) {
      const p = prefix + j;
      positions[t0 + j] = p;
      slots[t0 + j] = inp.pageTable[b * inp.ptStride + Math.floor(p / c.pageSize)] *
          c.pageSize + p % c.pageSize;
    }
    qStarts[i + 1] = t0 + n;
  });
  const kvShape = [inp.numSlots, c.hkv, c.headDim];
  const t = {
    k: put(dev, dtype, kvShape, inp.k),
    v: put(dev, dtype, kvShape, inp.v),
    qkv: put(dev, dtype, [T, width], qkvHost),
    cosSin: put(dev, DType.F32, [inp.cosSin.length / c.headDim, c.headDim], inp.cosSin),
    out: dev.alloc(dtype, [T, c.hq * c.headDim]),
    pageTable: putI32(dev, inp.pageTable),
    rows: putI32(dev, Int32Array.from(which)),
    seqLens: putI32(dev, Int32Array.from(which, (b) => c.reqs[b][0] + c.reqs[b][1])),
    qStarts: putI32(dev, qStarts),
    positions: putI32(dev, positions),
    slots: putI32(dev, slots),
  };
  dev.memset(t.out, 0xff); // NaN: a row no kernel writes fails the comparison
  const pageTable = t.pageTable.at(0, [c.reqs.length, inp.ptStride]);
  const { head, tail } = oneTokenRuns(qLens);
  const meta: ForwardMeta = {
    numTokens: T,
    batch: which.length,
    isDecode: Math.max(...qLens) === 1,
    maxQLen: Math.max(...qLens),
    decodeHead: head,
    decodeTail: tail,
    maxSeqLen: Math.max(...which.map((b) => c.reqs[b][0] + c.reqs[b][1])),
    inputIds: t.rows, // unused by attention
    positions: t.positions,
    slots: t.slots,
    rows: t.rows,
    seqLens: t.seqLens,
    qStarts: t.qStarts,
    pageTable,
    pageSize: c.pageSize,
  };
  const h: HeadShape = { hq: c.hq, hkv: c.hkv, headDim: c.headDim, eps: 1e-6 };
  const attn = new NativeAttention(ops, { k: [t.k], v: [t.v] }, t.cosSin, dtype, extend);
  attn.prepare();
  attn.storeAndAttend(0, t.qkv, t.out, null, null, meta, h);
  dev.sync();
  const n = T * c.hq * c.headDim;
  let out: Float32Array;
  if (dtype === DType.F32) {
    out = new Float32Array(n);
    dev.download(out, t.out);
  } else {
    const raw = new Uint16Array(n);
    dev.download(raw, t.out);
    out = from16(raw, dtype);
  }
  for (const x of Object.values(t)) dev.free(x);
  return out;
}

/** The rows of entry `b`'s new tokens inside the output of a run over `which`. */
export function rowsOf(
  out: Float32Array,
  c: MixedCase,
  which: number[],
  b: number,
): Float32Array {
  const w = c.hq * c.headDim;
  let t0 = 0;
  for (const e of which) {
    if (e === b) return out.subarray(t0 * w, (t0 + c.reqs[b][1]) * w);
    t0 += c.reqs[e][1];
  }
  throw new Error(`entry ${b} is not in the run`);
}

/** Relative L2 error of got against ref; NaN (an unwritten row) counts as infinite. */
export function relErr(ref: Float32Array, got: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(got[i])) return Infinity;
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

export { Device, DType };
