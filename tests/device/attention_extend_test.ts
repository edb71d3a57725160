/**
 * Paged extend attention against the CPU twin on random inputs, for the extend entry points
 * of the ABI: msg_attention_extend (mma/WMMA, any GPU), msg_attention_extend_hopper_v5 and _v6
 * (fa3 v5, warp-specialised on a persistent grid, and v6 = v5 storing O through shared memory;
 * MINISGL_FA3_VARIANT=5 or 6; the first one where they do not apply). Page sizes 1, 7, 16, 64, 256;
 * GQA 1, 2, 4, 7, 8; head_dim 64, 128 and 256 (the Hopper entries' fallback); ragged batches
 * whose requests have no prefix, a prefix ending inside a page, or a prefix of many pages;
 * bf16 and f16. For v5 and v6 also: key tiles that wrap their K/V ring several times (2 slots
 * at hd128, 4 at hd64), partial last tiles, items whose second consumer has only padding rows,
 * prefixes that leave the first consumer a fully masked last tile, more work items than SMs,
 * and every case again with the grid capped at 1 and 5 blocks. GPU outputs are
 * poisoned (NaN) before every run.
 *
 * Skipped unless the CUDA library loads and sees a device. MINISGL_KERNELS_SELF=1 runs the
 * comparison with the CPU library on both sides (checks this harness without a GPU).
 */
import assert from "node:assert/strict";
import type { NativeLib } from "../../ffi/lib.ts";
import { BF16, DevBuf as Dev, F16, from16, loadPair, makeRng, to16 } from "./harness.ts";

const libs = loadPair();
const cpu = libs?.cpu as NativeLib, gpu = libs?.gpu as NativeLib;
const { rand, randn } = makeRng(777);

interface Case {
  hd: number;
  ps: number;
  hq: number;
  hkv: number;
  /** [prefix, new tokens] per request. */
  reqs: [number, number][];
  dtype: number;
}

/** Inputs of a case: shuffled pages, rows in reverse order, q rows inside a qkv buffer. */
function makeInputs(c: Case) {
  const seqs = c.reqs.map(([p, n]) => p + n);
  const pages = seqs.map((s) => Math.ceil(s / c.ps));
  const stride = Math.max(1, ...pages) + 1;
  const numPages = pages.reduce((x, y) => x + y, 0) + 2;
  const perm = Int32Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = rand() * (i + 1) | 0;
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const rows = Int32Array.from(seqs.map((_, i) => seqs.length - 1 - i));
  const pt = new Int32Array(seqs.length * stride);
  let next = 0;
  seqs.forEach((_, b) => {
    for (let j = 0; j < pages[b]; j++) pt[rows[b] * stride + j] = perm[next++];
  });
  const qStarts = new Int32Array(seqs.length + 1);
  c.reqs.forEach(([, n], b) => qStarts[b + 1] = qStarts[b] + n);
  const totalQ = qStarts[seqs.length];
  const qStride = (c.hq + 2 * c.hkv) * c.hd;
  const kv = numPages * c.ps * c.hkv * c.hd;
  return {
    seqs: Int32Array.from(seqs),
    pt,
    stride,
    rows,
    qStarts,
    totalQ,
    qStride,
    q: to16(randn(totalQ * qStride), c.dtype),
    kc: to16(randn(kv), c.dtype),
    vc: to16(randn(kv), c.dtype),
  };
}

type Entry =
  | "msg_attention_extend"
  | "msg_attention_extend_hopper_v5"
  | "msg_attention_extend_hopper_v6";
/** The CUDA entry points under test: the mma/WMMA kernel and the fa3 variants. */
const ENTRIES: Entry[] = [
  "msg_attention_extend",
  "msg_attention_extend_hopper_v5",
  "msg_attention_extend_hopper_v6",
];

function runCase(lib: NativeLib, fn: Entry, c: Case, inp: ReturnType<typeof makeInputs>) {
  const n = inp.totalQ * c.hq * c.hd;
  const d = {
    q: Dev.of(lib, inp.q),
    kc: Dev.of(lib, inp.kc),
    vc: Dev.of(lib, inp.vc),
    pt: Dev.of(lib, inp.pt),
    rows: Dev.of(lib, inp.rows),
    lens: Dev.of(lib, inp.seqs),
    qs: Dev.of(lib, inp.qStarts),
    o: new Dev(lib, n * 2),
  };
  d.o.poison();
  lib.check(
    lib.sym[fn](
      d.o.p,
      d.q.p,
      inp.qStride,
      d.kc.p,
      d.vc.p,
      d.pt.p,
      inp.stride,
      d.rows.p,
      d.lens.p,
      d.qs.p,
      c.reqs.length,
      inp.totalQ,
      Math.max(...c.reqs.map(([, q]) => q)),
      Math.max(...inp.seqs),
      c.hq,
      c.hkv,
      c.hd,
      c.ps,
      1 / Math.sqrt(c.hd),
      c.dtype,
      null,
    ),
    fn,
  );
  const out = d.o.read(new Uint16Array(n));
  Object.values(d).forEach((x) => x.free());
  return from16(out, c.dtype);
}

/** Relative L2 error of got against ref; fails on NaN (an unwritten output). */
function relErr(ref: Float32Array, got: Float32Array, what: string): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(got[i])) assert.fail(`${what}: NaN (unwritten?) at element ${i}`);
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

function cases(): Case[] {
  const out: Case[] = [];
  // Prefix 0; a prefix ending inside a page; a prefix of many pages; single tokens; a
  // request long enough for several 128-row q tiles.
  const ragged: [number, number][] = [[0, 300], [37, 77], [1000, 130], [0, 1], [5, 1], [0, 64]];
  for (const dtype of [BF16, F16]) {
    for (const ps of [1, 16, 64, 256]) {
      out.push({ hd: 128, ps, hq: 32, hkv: 8, reqs: ragged, dtype }); // 4:1 (Llama-3-8B)
      out.push({ hd: 128, ps, hq: 8, hkv: 8, reqs: ragged, dtype }); // MHA
      out.push({ hd: 64, ps, hq: 16, hkv: 2, reqs: ragged, dtype }); // 8:1
    }
  }
  out.push({ hd: 128, ps: 16, hq: 16, hkv: 8, reqs: [[0, 1100], [200, 513]], dtype: BF16 });
  out.push({ hd: 256, ps: 16, hq: 8, hkv: 2, reqs: [[0, 150], [20, 33]], dtype: BF16 });
  out.push({ hd: 128, ps: 7, hq: 14, hkv: 2, reqs: [[3, 90], [0, 200]], dtype: F16 });
  // fa3 v5/v6 ring and consumer split: 1,300 keys are 11 tiles of 128 (wraps the 2-slot ring
  // 5 times, the 4-slot one twice) ending in a partial tile; prefix 64 puts every block's
  // 128-row diagonal across a tile boundary, so the first consumer's last tile is all
  // masked; 40 and 1 new tokens leave the second consumer only padding rows.
  const ring: [number, number][] = [[0, 1300], [64, 300], [500, 40], [7, 1], [64, 129]];
  for (const ps of [1, 7, 16, 64, 256]) {
    out.push({ hd: 128, ps, hq: 8, hkv: 1, reqs: ring, dtype: BF16 }); // 8:1
    out.push({ hd: 64, ps, hq: 4, hkv: 4, reqs: ring, dtype: F16 }); // MHA
  }
  // fa3 v5's persistent grid: more work items (q tiles x heads x requests) than SMs, so a
  // block walks several items of different requests, heads and tile counts (its K/V ring,
  // Q prefetch and token hand-over run across items); many items are empty (short requests).
  const many: [number, number][] = [
    [0, 1030],
    [37, 77],
    [0, 1],
    [300, 513],
    [64, 129],
    [5, 1],
    [0, 260],
    [1000, 40],
  ];
  out.push({ hd: 128, ps: 16, hq: 32, hkv: 8, reqs: many, dtype: BF16 });
  out.push({ hd: 64, ps: 1, hq: 16, hkv: 2, reqs: many, dtype: F16 });
  out.push({ hd: 128, ps: 64, hq: 40, hkv: 8, reqs: [[0, 2000], [64, 129]], dtype: BF16 });
  return out;
}

/** The cases with their inputs and the CPU twin's output, made once (in the same order of
 *  the seeded generator whichever test asks first). */
let prepared: { c: Case; inp: ReturnType<typeof makeInputs>; ref: Float32Array }[] | null = null;
function prepare() {
  return prepared ??= cases().map((c) => {
    const inp = makeInputs(c);
    return { c, inp, ref: runCase(cpu, "msg_attention_extend", c, inp) };
  });
}

// One test per entry point, each running every case and listing all that fail, so a device
// run tells which kernel and which shapes are wrong. fa3 v5 and v6 run again with their grid
// capped at 1 and 5 blocks (MINISGL_FA3_V5_BLOCKS, MINISGL_FA3_V6_BLOCKS): every case then
// chains many items per block.
const RUNS: { fn: Entry; blocks?: number }[] = [
  ...ENTRIES.map((fn) => ({ fn })),
  { fn: "msg_attention_extend_hopper_v5", blocks: 1 },
  { fn: "msg_attention_extend_hopper_v5", blocks: 5 },
  { fn: "msg_attention_extend_hopper_v6", blocks: 1 },
  { fn: "msg_attention_extend_hopper_v6", blocks: 5 },
];
for (const { fn, blocks } of RUNS) {
  const label = blocks === undefined ? fn : `${fn} (${blocks} blocks)`;
  Deno.test({
    name: `attention extend: ${label} = CPU (paged, GQA, ragged, prefixes)`,
    ignore: libs === null,
    fn() {
      const cap = fn.endsWith("_v6") ? "MINISGL_FA3_V6_BLOCKS" : "MINISGL_FA3_V5_BLOCKS";
      if (blocks !== undefined) Deno.env.set(cap, String(blocks));
      try {
        runAll(fn, label);
      } finally {
        Deno.env.delete(cap);
      }
    },
  });
}

/** Every case through `fn` against the CPU twin; fails listing the cases that differ. */
function runAll(fn: Entry, label: string) {
  const failures: string[] = [];
  const all = prepare();
  for (const { c, inp, ref } of all) {
    const what = `${label} hd=${c.hd} ps=${c.ps} hq=${c.hq} hkv=${c.hkv} ` +
      `reqs=${JSON.stringify(c.reqs)} dtype=${c.dtype === F16 ? "f16" : "bf16"}`;
    try {
      const err = relErr(ref, runCase(gpu, fn, c, inp), what);
      if (!(err <= 1e-2)) {
        failures.push(`${what}: relative L2 error ${err.toExponential(3)} > 1e-2`);
      }
    } catch (e) {
      failures.push((e as Error).message);
    }
  }
  assert.equal(
    failures.length,
    0,
    `${failures.length} of ${all.length} cases failed:\n${failures.slice(0, 12).join("\n")}`,
  );
}
