/**
 * The fused decode ops of cuda/src/gemv.cu (msg_add_rmsnorm_gemm, msg_silu_mul_gemm) against
 * the CPU twin on random inputs: bf16 and f16, M = 1..5 (5 is above the fused threshold: the
 * composition runs), fp32 and 16-bit residuals, no residual_in (the zero residual of the
 * first layer), with and without bias, activations too large for shared memory (composition
 * again), N that leaves a partial last group, K that takes split-K inside a block. GPU outputs
 * and residual_out start poisoned (NaN); the fused path must not read `scratch` (poisoned too).
 * residual_out must equal the CPU's bit for bit (one fp32 or 16-bit rounding of x + r on both).
 * Results must be deterministic and equal under CUDA-graph replay. Then, printed and not
 * asserted, each fused op against the two kernels it replaces on the decode shapes of
 * Qwen3-0.6B and Llama-3-8B (graph replays over > 200 MB of weights).
 * Skipped unless the CUDA library loads and sees a device. MINISGL_KERNELS_SELF=1 runs the
 * comparison test with the CPU library on both sides (checks this harness without a GPU).
 */
import assert from "node:assert/strict";
import type { NativeLib } from "../../ffi/lib.ts";
import { BF16, DevBuf as Buf, F16, F32, loadPair, makeRng, ptr, SELF } from "./harness.ts";

const libs = loadPair();
const ig = { ignore: libs === null };
const igCuda = { ignore: libs === null || SELF };
const cpu = libs?.cpu as NativeLib, gpu = libs?.gpu as NativeLib;
const { randn } = makeRng(4242);

function cast(x: Float32Array | Uint16Array, from: number, to: number): Float32Array | Uint16Array {
  const out = to === F32 ? new Float32Array(x.length) : new Uint16Array(x.length);
  cpu.check(cpu.sym.msg_cast(ptr(out), to, ptr(x), from, BigInt(x.length), null), "cast");
  return out;
}
const rand = (n: number, dt: number, scale = 1) => cast(randn(n, scale), F32, dt);
const asF32 = (a: Float32Array | Uint16Array, dt: number) =>
  (dt === F32 ? a : cast(a, dt, F32)) as Float32Array;
const size = (dt: number) => (dt === F32 ? 4 : 2);

function relErr(ref: Float32Array, got: Float32Array, what: string): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(got[i])) assert.fail(`${what}: NaN (unwritten?) at ${i}`);
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

interface NormCase {
  M: number;
  N: number;
  K: number;
  dt: number;
  rt: number; // residual dtype
  resIn: boolean;
  bias: boolean;
}
type NormIn = {
  x: Float32Array | Uint16Array;
  r: Float32Array | Uint16Array;
  nw: Float32Array | Uint16Array;
  w: Float32Array | Uint16Array;
  b: Float32Array | Uint16Array;
};

/** msg_add_rmsnorm_gemm on `lib`: [out, residual_out] as fp32. */
function normGemmOn(lib: NativeLib, c: NormCase, v: NormIn): [Float32Array, Float32Array] {
  const bufs = [v.x, v.r, v.nw, v.w, v.b].map((a) => Buf.of(lib, a));
  const [x, r, nw, w, b] = bufs;
  const out = new Buf(lib, c.M * c.N * 2), rOut = new Buf(lib, c.M * c.K * size(c.rt));
  const scratch = new Buf(lib, c.M * c.K * 2);
  [out, rOut, scratch].forEach((d) => d.poison());
  lib.check(
    lib.sym.msg_add_rmsnorm_gemm(
      out.p,
      rOut.p,
      c.resIn ? r.p : null,
      x.p,
      nw.p,
      w.p,
      c.bias ? b.p : null,
      scratch.p,
      c.M,
      c.N,
      c.K,
      1e-6,
      c.dt,
      c.rt,
      c.dt,
      null,
    ),
    "add_rmsnorm_gemm",
  );
  const o = asF32(out.read(new Uint16Array(c.M * c.N)), c.dt);
  const ro = c.rt === F32
    ? rOut.read(new Float32Array(c.M * c.K))
    : asF32(rOut.read(new Uint16Array(c.M * c.K)), c.rt);
  [...bufs, out, rOut, scratch].forEach((d) => d.free());
  return [o, ro];
}

/** msg_silu_mul_gemm on `lib`: out as fp32. */
function siluGemmOn(
  lib: NativeLib,
  M: number,
  N: number,
  K: number,
  dt: number,
  gu: Uint16Array | Float32Array,
  wv: Uint16Array | Float32Array,
): Float32Array {
  const g = Buf.of(lib, gu), w = Buf.of(lib, wv);
  const out = new Buf(lib, M * N * 2), scratch = new Buf(lib, M * K * 2);
  out.poison();
  scratch.poison();
  lib.check(
    lib.sym.msg_silu_mul_gemm(out.p, g.p, w.p, scratch.p, M, N, K, dt, dt, null),
    "silu_mul_gemm",
  );
  const o = asF32(out.read(new Uint16Array(M * N)), dt);
  [g, w, out, scratch].forEach((d) => d.free());
  return o;
}

Deno.test({
  name: "cuda fused add_rmsnorm_gemm / silu_mul_gemm: match the CPU library, deterministic",
  ...ig,
  fn() {
    const fusedMax = gpu.sym.msg_fused_max_m();
    console.log(`msg_fused_max_m: ${fusedMax}`);
    const cases: NormCase[] = [];
    for (const M of [1, 2, 3, 4, 5]) {
      cases.push({ M, N: 4096, K: 1024, dt: BF16, rt: F32, resIn: true, bias: false });
      cases.push({ M, N: 259, K: 4096, dt: F16, rt: F16, resIn: M % 2 === 0, bias: true });
    }
    cases.push(
      { M: 1, N: 6144, K: 4096, dt: BF16, rt: F32, resIn: false, bias: false }, // first layer
      { M: 1, N: 64, K: 3072, dt: BF16, rt: BF16, resIn: true, bias: true }, // split-K
      { M: 4, N: 300, K: 14336, dt: BF16, rt: F32, resIn: true, bias: false }, // > smem
      { M: 3, N: 1030, K: 2048, dt: BF16, rt: F32, resIn: true, bias: true }, // partial group
    );
    for (const c of cases) {
      const what = `add_rmsnorm_gemm M=${c.M} N=${c.N} K=${c.K} dt=${c.dt} res=${c.rt} ` +
        `resIn=${c.resIn} bias=${c.bias}`;
      const v: NormIn = {
        x: rand(c.M * c.K, c.dt),
        r: rand(c.M * c.K, c.rt, 3),
        nw: rand(c.K, c.dt),
        w: rand(c.N * c.K, c.dt, 0.05),
        b: rand(c.N, c.dt),
      };
      const [refO, refR] = normGemmOn(cpu, c, v), [gotO, gotR] = normGemmOn(gpu, c, v);
      assert.deepEqual(gotR, refR, `${what}: residual_out differs`);
      const tol = c.dt === F16 ? 3e-3 : 1.2e-2;
      const err = relErr(refO, gotO, what);
      assert.ok(err <= tol, `${what}: relative L2 error ${err.toExponential(3)} > ${tol}`);
      assert.deepEqual(normGemmOn(gpu, c, v)[0], gotO, `${what}: not deterministic`);
    }
    for (
      const [M, N, K, dt] of [
        [1, 1024, 3072, BF16],
        [2, 1024, 3072, F16],
        [3, 4096, 14336, BF16],
        [4, 4096, 14336, BF16], // > smem: composition
        [4, 1000, 1024, BF16],
        [5, 512, 1024, BF16], // above the threshold
      ]
    ) {
      const what = `silu_mul_gemm M=${M} N=${N} K=${K} dt=${dt}`;
      const gu = rand(M * 2 * K, dt, 2), w = rand(N * K, dt, 0.05);
      const ref = siluGemmOn(cpu, M, N, K, dt, gu, w), got = siluGemmOn(gpu, M, N, K, dt, gu, w);
      const err = relErr(ref, got, what);
      const tol = dt === F16 ? 3e-3 : 1.2e-2;
      assert.ok(err <= tol, `${what}: relative L2 error ${err.toExponential(3)} > ${tol}`);
      assert.deepEqual(siluGemmOn(gpu, M, N, K, dt, gu, w), got, `${what}: not deterministic`);
    }
  },
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
  const medianMs = (g: Deno.PointerValue, reps: number) => {
    chk(s.msg_graph_launch(g, st), "launch");
    const t: number[] = [], ms = new Float32Array(1);
    for (let i = 0; i < reps; i++) {
      chk(s.msg_event_record(ev0, st), "record");
      chk(s.msg_graph_launch(g, st), "launch");
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
  name: "cuda fused ops: graph replay equals a direct call; timings against the two kernels",
  ...igCuda,
  fn() {
    const { s, chk, st, graphOf, medianMs, close } = gpuTools();
    const M = 1;
    console.log("shape (model)        M | fused us | two kernels us | saved us");
    for (
      const [N, K, what, kind] of [
        [4096, 1024, "0.6B qkv", "norm"],
        [6144, 1024, "0.6B gate_up", "norm"],
        [1024, 3072, "0.6B down", "silu"],
        [6144, 4096, "8B qkv", "norm"],
        [28672, 4096, "8B gate_up", "norm"],
        [4096, 14336, "8B down", "silu"],
      ] as const
    ) {
      const wBytes = N * K * 2, nBuf = Math.max(2, Math.ceil(2.5e8 / wBytes));
      const w = Buf.of(gpu, rand(N * K, BF16, 0.05));
      const ws = Array.from({ length: nBuf }, () => new Buf(gpu, wBytes));
      ws.forEach((d) => chk(s.msg_memcpy_d2d(d.p, w.p, BigInt(wBytes), st), "d2d"));
      const xIn = Buf.of(gpu, rand(M * 2 * K, BF16)), nw = Buf.of(gpu, rand(K, BF16));
      const rA = Buf.of(gpu, rand(M * K, F32)), rB = new Buf(gpu, M * K * 4);
      const out = new Buf(gpu, M * N * 2), scratch = new Buf(gpu, M * 2 * K * 2);
      const fused = (wb: Buf) =>
        kind === "norm"
          ? s.msg_add_rmsnorm_gemm(
            out.p,
            rB.p,
            rA.p,
            xIn.p,
            nw.p,
            wb.p,
            null,
            scratch.p,
            M,
            N,
            K,
            1e-6,
            BF16,
            F32,
            BF16,
            st,
          )
          : s.msg_silu_mul_gemm(out.p, xIn.p, wb.p, scratch.p, M, N, K, BF16, BF16, st);
      const twoKernels = (wb: Buf) => {
        chk(
          kind === "norm"
            ? s.msg_add_rmsnorm(scratch.p, rB.p, xIn.p, nw.p, M, K, 1e-6, BF16, F32, BF16, st)
            : s.msg_silu_mul(scratch.p, xIn.p, M, K, BF16, st),
          "first op",
        );
        return s.msg_gemm(out.p, BF16, scratch.p, BF16, wb.p, BF16, null, M, N, K, st);
      };
      // Graph replay of one fused call equals the direct call.
      chk(fused(ws[0]), "fused");
      chk(s.msg_stream_sync(st), "sync");
      const direct = out.read(new Uint16Array(M * N));
      out.poison();
      const g1 = graphOf(() => chk(fused(ws[0]), "fused"));
      chk(s.msg_graph_launch(g1, st), "launch");
      chk(s.msg_stream_sync(st), "sync");
      assert.deepEqual(out.read(new Uint16Array(M * N)), direct, `${what}: graph replay`);
      chk(s.msg_graph_destroy(g1), "graph destroy");

      const gf = graphOf(() => ws.forEach((wb) => chk(fused(wb), "fused")));
      const gt = graphOf(() => ws.forEach((wb) => chk(twoKernels(wb), "two kernels")));
      const fUs = medianMs(gf, 9) * 1e3 / nBuf, tUs = medianMs(gt, 9) * 1e3 / nBuf;
      console.log(
        `${what.padEnd(16)} ${M} ${N}x${K} | ${fUs.toFixed(2).padStart(7)} | ` +
          `${tUs.toFixed(2).padStart(13)} | ${(tUs - fUs).toFixed(2)}`,
      );
      [gf, gt].forEach((g) => chk(s.msg_graph_destroy(g), "graph destroy"));
      [w, ...ws, xIn, nw, rA, rB, out, scratch].forEach((d) => d.free());
    }
    close();
  },
});
