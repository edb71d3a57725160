/**
 * The decode GEMV kernels of cuda/src/gemv.cu (msg_gemm with M <= 8, 16-bit a and w)
 * against the CPU twin on random inputs: bf16 and f16, M = 1..8, with and without bias,
 * bf16/f16/fp32 outputs, K not a multiple of 8 and misaligned pointers (scalar path),
 * split-K shapes (small N). GPU outputs are poisoned (NaN) first. Results must be
 * deterministic and equal under CUDA-graph replay. Then timings of the Llama-3-8B and
 * Qwen3-0.6B decode shapes (graph replays, rotating over weight buffers of > 200 MB in all
 * so that L2 cannot hold them), next to cuBLASLt on the same calls and the measured
 * device-to-device copy bandwidth.
 *
 * The path is chosen through msg_gemv_max_m (a tuning knob of the ABI): 8 sends every M <= 8
 * to the GEMV kernels
 * (the default threshold is lower), 0 sends every msg_gemm to cuBLASLt.
 * Skipped unless the CUDA library loads and sees a device. MINISGL_KERNELS_SELF=1 runs the
 * comparison test with the CPU library on both sides (checks this harness without a GPU).
 */
import assert from "node:assert/strict";
import type { NativeLib } from "../../ffi/lib.ts";
import {
  type Arr,
  BF16,
  DevBuf as Buf,
  F16,
  F32,
  loadPair,
  makeRng,
  ptr,
  SELF as self,
} from "./harness.ts";

function tryLoad() {
  const pair = loadPair();
  if (!pair) return null;
  return { ...pair, maxM: self ? (_m: number) => 0 : pair.gpu.sym.msg_gemv_max_m };
}
const libs = tryLoad();
const ig = { ignore: libs === null };
const igCuda = { ignore: libs === null || self };
const cpu = libs?.cpu as NativeLib, gpu = libs?.gpu as NativeLib;
/** Sets the GEMV threshold of msg_gemm (0 = cuBLASLt for all); returns the previous one. */
const setMaxM = (m: number) => libs!.maxM(m);
/** Runs fn with the GEMV threshold set to m, then restores it. */
function withMaxM<T>(m: number, fn: () => T): T {
  const prev = setMaxM(m);
  try {
    return fn();
  } finally {
    setMaxM(prev);
  }
}

const { randn } = makeRng(777);
/** Host conversion between fp32 and a 16-bit dtype through the CPU library's msg_cast. */
function cast(x: Float32Array | Uint16Array, from: number, to: number): Float32Array | Uint16Array {
  const out = to === F32 ? new Float32Array(x.length) : new Uint16Array(x.length);
  cpu.check(cpu.sym.msg_cast(ptr(out), to, ptr(x), from, BigInt(x.length), null), "cast");
  return out;
}
const rand16 = (n: number, dt: number, scale = 1) => cast(randn(n, scale), F32, dt) as Uint16Array;
const toF32 = (a: Arr, dt: number) =>
  dt === F32 ? a as Float32Array : cast(a as Uint16Array, dt, F32) as Float32Array;

interface Case {
  M: number;
  N: number;
  K: number;
  dt: number;
  ot: number;
  bias: boolean;
  off?: number; // bytes added to the a and w pointers
}
type Inputs = { a: Uint16Array; w: Uint16Array; b: Uint16Array };

/** msg_gemm of one case on `lib`; returns the output as fp32. Outputs start as NaN. */
function gemmOn(lib: NativeLib, c: Case, x: Inputs): Float32Array {
  const off = c.off ?? 0, osz = c.ot === F32 ? 4 : 2;
  const a = Buf.of(lib, x.a, off), w = Buf.of(lib, x.w, off), b = Buf.of(lib, x.b);
  const o = new Buf(lib, c.M * c.N * osz);
  lib.check(lib.sym.msg_memset(o.p, 0xff, BigInt(c.M * c.N * osz), null), "poison");
  lib.check(
    lib.sym.msg_gemm(o.p, c.ot, a.p, c.dt, w.p, c.dt, c.bias ? b.p : null, c.M, c.N, c.K, null),
    "gemm",
  );
  const raw = o.read(c.ot === F32 ? new Float32Array(c.M * c.N) : new Uint16Array(c.M * c.N));
  [a, w, b, o].forEach((d) => d.free());
  return toF32(raw, c.ot);
}

function relErr(ref: Float32Array, got: Float32Array, what: string): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(got[i])) assert.fail(`${what}: NaN (unwritten?) at ${i}`);
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

Deno.test({
  name: "cuda gemv: matches the CPU library, deterministic, agrees with cuBLASLt",
  ...ig,
  fn: () =>
    withMaxM(8, () => {
      const cases: Case[] = [];
      for (const M of [1, 2, 3, 4, 5, 6, 7, 8]) {
        cases.push({ M, N: 1000, K: 4096, dt: BF16, ot: BF16, bias: M % 2 === 0 });
        cases.push({ M, N: 259, K: 1024, dt: F16, ot: F16, bias: M % 2 === 1 });
      }
      cases.push(
        { M: 1, N: 4099, K: 2048, dt: BF16, ot: F32, bias: false }, // logits, odd N
        { M: 8, N: 1024, K: 14336, dt: BF16, ot: BF16, bias: false }, // split-K inside blocks
        { M: 1, N: 64, K: 3072, dt: BF16, ot: BF16, bias: true }, // tiny N, split-K
        { M: 3, N: 77, K: 40, dt: BF16, ot: F32, bias: true }, // K < one warp step
        { M: 5, N: 130, K: 1003, dt: BF16, ot: BF16, bias: true }, // K % 8 != 0: scalar path
        { M: 2, N: 300, K: 512, dt: F16, ot: F32, bias: false, off: 2 }, // misaligned: scalar
        { M: 1, N: 1, K: 8, dt: BF16, ot: BF16, bias: true },
        { M: 9, N: 200, K: 256, dt: BF16, ot: BF16, bias: true }, // above the threshold
      );
      for (const c of cases) {
        const what = `gemm M=${c.M} N=${c.N} K=${c.K} dt=${c.dt} out=${c.ot} bias=${c.bias}` +
          (c.off ? ` off=${c.off}` : "");
        const x = {
          a: rand16(c.M * c.K, c.dt),
          w: rand16(c.N * c.K, c.dt, 0.05),
          b: rand16(c.N, c.dt),
        };
        const ref = gemmOn(cpu, c, x), got = gemmOn(gpu, c, x);
        // fp32 outputs differ only by summation order; 16-bit ones by one rounding.
        const tol = c.ot === F32 ? 1e-5 : c.ot === F16 ? 2e-3 : 1e-2;
        const err = relErr(ref, got, what);
        assert.ok(err <= tol, `${what}: relative L2 error ${err.toExponential(3)} > ${tol}`);
        const again = gemmOn(gpu, c, x);
        assert.deepEqual(again, got, `${what}: not deterministic`);
        const lt = withMaxM(0, () => gemmOn(gpu, c, x));
        const e2 = relErr(lt, got, `${what} vs cuBLASLt`);
        assert.ok(e2 <= tol, `${what}: vs cuBLASLt relative L2 error ${e2.toExponential(3)}`);
      }
    }),
});

/** msg_gemm_silu of M rows, `inter` outputs, K inputs on `lib` (output fp32; starts NaN). */
function gemmSiluOn(
  lib: NativeLib,
  M: number,
  inter: number,
  K: number,
  dt: number,
  x: { a: Uint16Array; w: Uint16Array },
  off = 0,
): Float32Array {
  const a = Buf.of(lib, x.a, off), w = Buf.of(lib, x.w, off);
  const o = new Buf(lib, M * inter * 2), gu = new Buf(lib, M * 2 * inter * 2);
  lib.check(lib.sym.msg_memset(o.p, 0xff, BigInt(M * inter * 2), null), "poison");
  lib.check(lib.sym.msg_gemm_silu(o.p, gu.p, a.p, dt, w.p, dt, M, inter, K, null), "gemm_silu");
  const raw = o.read(new Uint16Array(M * inter));
  [a, w, o, gu].forEach((d) => d.free());
  return toF32(raw, dt);
}

Deno.test({
  name: "cuda gemv: gemm_silu (gate and up rows in one GEMV) matches the CPU library",
  ...ig,
  fn: () =>
    withMaxM(8, () => {
      // M, inter, K, dtype, pointer offset: GEMV paths (odd inter: a last group of one column),
      // split-K (small inter), then the GEMM + silu_mul fallbacks (M past the threshold, K % 8,
      // misaligned pointers).
      const cases: [number, number, number, number, number][] = [];
      for (const M of [1, 2, 3, 4, 5, 8]) {
        cases.push([M, 1003, 1024, BF16, 0], [M, 259, 4096, F16, 0]);
      }
      cases.push([1, 3, 3072, BF16, 0], [9, 300, 512, BF16, 0], [4, 100, 1003, BF16, 0]);
      cases.push([2, 100, 512, F16, 2]);
      for (const [M, inter, K, dt, off] of cases) {
        const what = `gemm_silu M=${M} inter=${inter} K=${K} dt=${dt} off=${off}`;
        const x = { a: rand16(M * K, dt), w: rand16(2 * inter * K, dt, 0.05) };
        const ref = gemmSiluOn(cpu, M, inter, K, dt, x, off);
        const got = gemmSiluOn(gpu, M, inter, K, dt, x, off);
        // The CPU forms silu(g) * u from fp32 sums, as the GEMV does; the fallbacks round g and
        // u to 16 bits first.
        const tol = dt === F16 ? 3e-3 : 1.5e-2;
        const err = relErr(ref, got, what);
        assert.ok(err <= tol, `${what}: relative L2 error ${err.toExponential(3)} > ${tol}`);
        assert.deepEqual(
          gemmSiluOn(gpu, M, inter, K, dt, x, off),
          got,
          `${what}: not deterministic`,
        );
      }
    }),
});

/** Stream, events and graph helpers of the CUDA library. */
function gpuTools() {
  const s = gpu.sym, chk = gpu.check.bind(gpu), h = new BigUint64Array(4);
  chk(s.msg_stream_create(ptr(h.subarray(0, 1))), "stream");
  chk(s.msg_event_create(ptr(h.subarray(1, 2))), "event");
  chk(s.msg_event_create(ptr(h.subarray(2, 3))), "event");
  const st = Deno.UnsafePointer.create(h[0]);
  const ev0 = Deno.UnsafePointer.create(h[1]), ev1 = Deno.UnsafePointer.create(h[2]);
  const graphOf = (fn: () => void) => {
    chk(s.msg_graph_begin(st), "graph begin");
    fn();
    chk(s.msg_graph_end(st, ptr(h.subarray(3, 4))), "graph end");
    return Deno.UnsafePointer.create(h[3]);
  };
  /** Median over `reps` runs of fn's time on the stream (ms), after one warm-up run. */
  const medianMs = (fn: () => void, reps: number) => {
    fn();
    const t: number[] = [];
    const ms = new Float32Array(1);
    for (let i = 0; i < reps; i++) {
      chk(s.msg_event_record(ev0, st), "record");
      fn();
      chk(s.msg_event_record(ev1, st), "record");
      chk(s.msg_event_sync(ev1), "event sync");
      chk(s.msg_event_elapsed_ms(ev0, ev1, ptr(ms)), "elapsed");
      t.push(ms[0]);
    }
    t.sort((p, q) => p - q);
    return t[t.length >> 1];
  };
  const close = () => {
    chk(s.msg_event_destroy(ev0), "event destroy");
    chk(s.msg_event_destroy(ev1), "event destroy");
    chk(s.msg_stream_destroy(st), "stream destroy");
  };
  return { s, chk, st, graphOf, medianMs, close };
}

Deno.test({
  name: "cuda gemv: graph replay equals a direct call",
  ...igCuda,
  fn: () =>
    withMaxM(8, () => {
      const { s, chk, st, graphOf, close } = gpuTools();
      for (const M of [1, 4, 8]) {
        const N = 2048, K = 4096;
        const a = Buf.of(gpu, rand16(M * K, BF16)), w = Buf.of(gpu, rand16(N * K, BF16, 0.05));
        const b = Buf.of(gpu, rand16(N, BF16)), o = new Buf(gpu, M * N * 4);
        const call = () =>
          chk(s.msg_gemm(o.p, F32, a.p, BF16, w.p, BF16, b.p, M, N, K, st), "gemm");
        call();
        chk(s.msg_stream_sync(st), "sync");
        const direct = o.read(new Float32Array(M * N));
        chk(s.msg_memset(o.p, 0xff, BigInt(M * N * 4), st), "poison");
        const g = graphOf(call);
        chk(s.msg_graph_launch(g, st), "launch");
        chk(s.msg_stream_sync(st), "sync");
        assert.deepEqual(o.read(new Float32Array(M * N)), direct, `graph replay M=${M}`);
        chk(s.msg_graph_destroy(g), "graph destroy");
        [a, w, b, o].forEach((d) => d.free());
      }
      close();
    }),
});

Deno.test({
  name: "cuda gemv: decode-shape timings vs cuBLASLt and copy bandwidth",
  ...igCuda,
  fn() {
    const { s, chk, st, graphOf, medianMs, close } = gpuTools();
    const name = new Uint8Array(256);
    chk(s.msg_device_name(0, ptr(name), 256), "name");
    const card = new TextDecoder().decode(name).replace(/\0.*$/s, "");

    // One pool of random bf16 weights; a shape's buffers are consecutive slices of it.
    const poolBytes = 1.1e9, block = rand16(1 << 22, BF16, 0.05);
    const pool = new Buf(gpu, poolBytes);
    for (let off = 0; off < poolBytes; off += block.byteLength) {
      const len = Math.min(block.byteLength, poolBytes - off);
      const dst = Deno.UnsafePointer.offset(pool.p!, off);
      chk(s.msg_memcpy_h2d(dst, ptr(block), BigInt(len), st), "h2d");
    }
    const copyMs = medianMs(
      () =>
        chk(
          s.msg_memcpy_d2d(pool.p, Deno.UnsafePointer.offset(pool.p!, 5e8), BigInt(5e8), st),
          "d2d",
        ),
      11,
    );
    const copyGBs = 2 * 5e8 / copyMs / 1e6;
    console.log(
      `device: ${card}; d2d copy ${copyGBs.toFixed(0)} GB/s (read + write); ` +
        `msg_gemm's default GEMV threshold: M <= ${setMaxM(-1)}`,
    );
    console.log(
      "shape (model)           M  out  | gemv us   GB/s  %copy | cuBLASLt us   GB/s  %copy | speedup",
    );

    const shapes: [number, number, string, number][] = [
      [6144, 4096, "8B qkv", BF16],
      [4096, 4096, "8B o", BF16],
      [28672, 4096, "8B gate_up", BF16],
      [4096, 14336, "8B down", BF16],
      [128256, 4096, "8B lm_head", F32],
      [4096, 1024, "0.6B qkv", BF16],
      [1024, 2048, "0.6B o", BF16],
      [6144, 1024, "0.6B gate_up", BF16],
      [1024, 3072, "0.6B down", BF16],
      [151936, 1024, "0.6B lm_head", F32],
    ];
    const a = Buf.of(gpu, rand16(8 * 14336, BF16)), o = new Buf(gpu, 8 * 151936 * 4);
    /** Microseconds per call(i) in a graph of `calls` calls replayed, after one direct call
     *  (plans and warm-up outside the capture). */
    const graphUs = (call: (i: number) => void, calls: number) => {
      call(0);
      chk(s.msg_stream_sync(st), "sync");
      const g = graphOf(() => {
        for (let i = 0; i < calls; i++) call(i);
      });
      const us = medianMs(() => chk(s.msg_graph_launch(g, st), "launch"), 9) / calls * 1000;
      chk(s.msg_graph_destroy(g), "graph destroy");
      return us;
    };
    const m1 = new Map<string, [number, number]>(); // M = 1 times (us): gemv, cuBLASLt
    for (const [N, K, what, ot] of shapes) {
      const wBytes = N * K * 2;
      const nBuf = Math.max(1, Math.ceil(2.5e8 / wBytes)); // > 200 MB streamed per round
      assert.ok(nBuf * wBytes <= poolBytes);
      const calls = nBuf * Math.max(1, Math.ceil(24 / nBuf));
      for (const M of [1, 2, 4, 8]) {
        const bytes = wBytes + M * K * 2 + M * N * (ot === F32 ? 4 : 2);
        const timeOne = (maxM: number) =>
          withMaxM(maxM, () =>
            graphUs((i) => {
              const w = Deno.UnsafePointer.offset(pool.p!, (i % nBuf) * wBytes);
              chk(s.msg_gemm(o.p, ot, a.p, BF16, w, BF16, null, M, N, K, st), "gemm");
            }, calls));
        const gv = timeOne(8), lt = timeOne(0);
        if (M === 1) m1.set(what, [gv, lt]);
        const col = (us: number) => {
          const gbs = bytes / us / 1e3;
          return `${us.toFixed(1).padStart(8)} ${gbs.toFixed(0).padStart(6)} ${
            (100 * gbs / copyGBs).toFixed(0).padStart(5)
          }%`;
        };
        console.log(
          `${`${N}x${K} (${what})`.padEnd(24)}${String(M).padStart(1)}  ${
            ot === F32 ? "f32 " : "bf16"
          } |${col(gv)} | ${col(lt).padStart(22)} | ${(lt / gv).toFixed(2)}x`,
        );
      }
    }
    // The gated MLP's activation: gate_up GEMV + silu_mul (two kernels) against gemm_silu.
    const act = new Buf(gpu, 8 * 14336 * 2);
    for (const [inter, K, what] of [[14336, 4096, "8B"], [3072, 1024, "0.6B"]] as const) {
      const wBytes = 2 * inter * K * 2, nBuf = Math.max(1, Math.ceil(2.5e8 / wBytes));
      const calls = nBuf * Math.max(1, Math.ceil(24 / nBuf));
      for (const M of [1, 4]) {
        const timeOf = (fused: boolean) =>
          withMaxM(8, () =>
            graphUs((i) => {
              const w = Deno.UnsafePointer.offset(pool.p!, (i % nBuf) * wBytes);
              if (fused) {
                chk(s.msg_gemm_silu(act.p, o.p, a.p, BF16, w, BF16, M, inter, K, st), "gemm_silu");
              } else {
                chk(s.msg_gemm(o.p, BF16, a.p, BF16, w, BF16, null, M, 2 * inter, K, st), "gemm");
                chk(s.msg_silu_mul(act.p, o.p, M, inter, BF16, st), "silu_mul");
              }
            }, calls));
        const two = timeOf(false), one = timeOf(true);
        console.log(
          `${what} gate_up + silu M=${M}: gemm + silu_mul ${two.toFixed(1)} us, gemm_silu ${
            one.toFixed(1)
          } us (${(two / one).toFixed(2)}x)`,
        );
      }
    }
    act.free();
    // The GEMMs of one Llama-3-8B decode step at M = 1: 32 x (qkv, o, gate_up, down) + lm_head.
    const stepUs = (i: number) =>
      32 * ["qkv", "o", "gate_up", "down"].reduce((t, k) => t + m1.get(`8B ${k}`)![i], 0) +
      m1.get("8B lm_head")![i];
    console.log(
      `Llama-3-8B GEMMs per decode step (M=1): gemv ${(stepUs(0) / 1000).toFixed(3)} ms, ` +
        `cuBLASLt ${(stepUs(1) / 1000).toFixed(3)} ms`,
    );
    [pool, a, o].forEach((d) => d.free());
    close();
  },
});
