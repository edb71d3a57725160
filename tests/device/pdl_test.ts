/**
 * Programmatic dependent launch (cuda/src/pdl.cuh): kernels launched with it may start while
 * the kernel before them on the stream still runs, and are correct only because each waits
 * (griddepcontrol.wait) before touching memory. These tests chain dependent kernels on one
 * stream and compare with the CPU twin:
 * - a large GEMV (128 MB of weights) straight into silu_mul that reads its output (poisoned
 *   with NaN first): a consumer that did not wait would read the poison;
 * - six decoder-like layers (add_rmsnorm, GEMV gate_up, silu_mul, GEMV down) at M = 1 and 4,
 *   run directly and as a CUDA graph replayed three times (bit-identical to the direct run);
 * - an lm_head GEMV (PDL, triggers early) into msg_sample (six plain launches) on a created
 *   stream and as graph replays: the same tokens and logprobs as on the default stream (no PDL).
 *   Written for sampling's own PDL launches (seen passing on an H100, 2026-12-05, then
 *   reverted: no gain at batch 1, 1-3% slower at batch 8-128).
 * Skipped unless the CUDA library loads and sees a device. MINISGL_KERNELS_SELF=1 runs the
 * comparisons with the CPU library on both sides (checks this harness without a GPU).
 */
import assert from "node:assert/strict";
import type { NativeLib } from "../../ffi/lib.ts";
import {
  BF16,
  DevBuf as Buf,
  F32,
  fromBf16,
  loadPair,
  makeRng,
  ptr,
  samplingParams,
  SELF,
  toBf16,
} from "./harness.ts";

const libs = loadPair();
const ig = { ignore: libs === null };
const cpu = libs?.cpu as NativeLib, gpu = libs?.gpu as NativeLib;
const { randn } = makeRng(4242);

/** `n` bf16 values: a 1M-value random block repeated (large weights stay cheap to make). */
function bf16Values(n: number, scale: number): Uint16Array {
  const block = toBf16(randn(Math.min(n, 1 << 20), scale));
  const out = new Uint16Array(n);
  for (let o = 0; o < n; o += block.length) {
    out.set(block.subarray(0, Math.min(block.length, n - o)), o);
  }
  return out;
}

function relErr(ref: Float32Array, got: Float32Array, what: string): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) assert.fail(`${what}: ${got[i]} at ${i} (read before written?)`);
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

/** A stream on `lib` (null = the CPU library's synchronous default). */
function streamOf(lib: NativeLib): Deno.PointerValue {
  if (lib === cpu && !SELF) return null;
  const h = new BigUint64Array(1);
  lib.check(lib.sym.msg_stream_create(ptr(h)), "stream");
  return Deno.UnsafePointer.create(h[0]);
}

Deno.test({
  name: "pdl: silu_mul right after a 128 MB GEMV reads the GEMV's output, not the poison",
  ...ig,
  fn: () => {
    const N = 16384, K = 4096;
    const x = bf16Values(K, 1), w = bf16Values(N * K, 0.02);
    const run = (lib: NativeLib) => {
      const st = streamOf(lib);
      const a = Buf.of(lib, x), wb = Buf.of(lib, w);
      const gu = new Buf(lib, N * 2), act = new Buf(lib, (N / 2) * 2);
      lib.check(lib.sym.msg_device_sync(), "sync"); // the uploads, before work on `st`
      const results: Float32Array[] = [];
      for (let rep = 0; rep < 3; rep++) {
        lib.check(lib.sym.msg_memset(gu.p, 0xff, BigInt(N * 2), st), "poison");
        lib.check(lib.sym.msg_memset(act.p, 0xff, BigInt(N), st), "poison");
        lib.check(lib.sym.msg_gemm(gu.p, BF16, a.p, BF16, wb.p, BF16, null, 1, N, K, st), "gemm");
        lib.check(lib.sym.msg_silu_mul(act.p, gu.p, 1, N / 2, BF16, st), "silu_mul");
        if (st) lib.check(lib.sym.msg_stream_sync(st), "sync");
        results.push(fromBf16(act.read(new Uint16Array(N / 2))));
      }
      [a, wb, gu, act].forEach((b) => b.free());
      if (st && lib !== cpu) lib.check(lib.sym.msg_stream_destroy(st), "stream destroy");
      return results;
    };
    const ref = run(cpu)[0];
    for (const [i, got] of run(gpu).entries()) {
      const err = relErr(ref, got, `rep ${i}`);
      assert.ok(err < 2e-2, `rep ${i}: relative L2 error ${err.toExponential(3)}`);
    }
  },
});

Deno.test({
  name: "pdl: six chained decoder layers equal the CPU twin, directly and as graph replays",
  ...ig,
  fn: () => {
    const H = 1024, I = 3072, LAYERS = 6, eps = 1e-6;
    const wn = bf16Values(H, 0.1), wgu = bf16Values(2 * I * H, 0.03);
    const wd = bf16Values(H * I, 0.03);
    for (const M of [1, 4]) {
      const delta0 = bf16Values(M * H, 1);
      /** Runs the chain on `lib`; returns the final residual (fp32) per run. */
      const run = (lib: NativeLib, graph: boolean): Float32Array[] => {
        const s = lib.sym, st = streamOf(lib);
        const W = [Buf.of(lib, wn), Buf.of(lib, wgu), Buf.of(lib, wd)];
        const d0 = Buf.of(lib, delta0), zero = Buf.of(lib, new Float32Array(M * H));
        const res = new Buf(lib, M * H * 4), delta = new Buf(lib, M * H * 2);
        const normed = new Buf(lib, M * H * 2), gu = new Buf(lib, M * 2 * I * 2);
        const act = new Buf(lib, M * I * 2);
        lib.check(s.msg_device_sync(), "sync"); // the uploads, before work on `st`
        const body = () => {
          lib.check(s.msg_memcpy_d2d(res.p, zero.p, BigInt(M * H * 4), st), "reset");
          lib.check(s.msg_memcpy_d2d(delta.p, d0.p, BigInt(M * H * 2), st), "reset");
          for (let l = 0; l < LAYERS; l++) {
            lib.check(
              s.msg_add_rmsnorm(normed.p, res.p, delta.p, W[0].p, M, H, eps, BF16, F32, BF16, st),
              "add_rmsnorm",
            );
            lib.check(
              s.msg_gemm(gu.p, BF16, normed.p, BF16, W[1].p, BF16, null, M, 2 * I, H, st),
              "gemm",
            );
            lib.check(s.msg_silu_mul(act.p, gu.p, M, I, BF16, st), "silu_mul");
            lib.check(
              s.msg_gemm(delta.p, BF16, act.p, BF16, W[2].p, BF16, null, M, H, I, st),
              "gemm",
            );
          }
          lib.check(
            s.msg_add_rmsnorm(normed.p, res.p, delta.p, W[0].p, M, H, eps, BF16, F32, BF16, st),
            "add_rmsnorm",
          );
        };
        const out: Float32Array[] = [];
        const read = () => {
          if (st) lib.check(s.msg_stream_sync(st), "sync");
          out.push(res.read(new Float32Array(M * H)));
        };
        body();
        read();
        if (graph) {
          const h = new BigUint64Array(1);
          lib.check(s.msg_graph_begin(st), "graph begin");
          body();
          lib.check(s.msg_graph_end(st, ptr(h)), "graph end");
          const g = Deno.UnsafePointer.create(h[0]);
          for (let r = 0; r < 3; r++) {
            lib.check(s.msg_memset(res.p, 0xff, BigInt(M * H * 4), st), "poison");
            lib.check(s.msg_graph_launch(g, st), "graph launch");
            read();
          }
          lib.check(s.msg_graph_destroy(g), "graph destroy");
        }
        [...W, d0, zero, res, delta, normed, gu, act].forEach((b) => b.free());
        if (st && lib !== cpu) lib.check(s.msg_stream_destroy(st), "stream destroy");
        return out;
      };
      const ref = run(cpu, false)[0];
      const [direct, ...replays] = run(gpu, !SELF);
      const err = relErr(ref, direct, `M=${M} direct`);
      assert.ok(err < 5e-2, `M=${M}: relative L2 error vs CPU ${err.toExponential(3)}`);
      for (const [i, r] of replays.entries()) {
        assert.deepEqual(r, direct, `M=${M}: graph replay ${i} differs from the direct run`);
      }
    }
  },
});

Deno.test({
  name: "pdl: msg_sample right after the lm_head GEMV gives the default stream's tokens",
  ignore: libs === null || SELF,
  fn: () => {
    const s = gpu.sym, chk = gpu.check.bind(gpu);
    const rows = 4, V = 151936, K = 512;
    // greedy; temperature; top-k 50 + top-p 0.9; min-p 0.05 + top-k 2000 (the kernel paths)
    const cfg: [number, number, number, number][] = [
      [0, 1, 0, 0],
      [0.7, 1, 0, 0],
      [1, 0.9, 0, 50],
      [1.3, 0.95, 0.05, 2000],
    ];
    const pr = samplingParams(rows, (i) => cfg[i]);
    const a = Buf.of(gpu, bf16Values(rows * K, 1)), w = Buf.of(gpu, bf16Values(V * K, 0.2));
    const par = Buf.of(gpu, pr), lg = new Buf(gpu, rows * V * 4);
    const tok = new Buf(gpu, rows * 4), lp = new Buf(gpu, rows * 4);
    const step = (st: Deno.PointerValue) => {
      chk(s.msg_gemm(lg.p, F32, a.p, BF16, w.p, BF16, null, rows, V, K, st), "lm_head");
      chk(s.msg_sample(tok.p, lp.p, lg.p, par.p, rows, V, st), "sample");
    };
    const read = () => [tok.read(new Int32Array(rows)), lp.read(new Float32Array(rows))];
    const poison = (st: Deno.PointerValue) => {
      chk(s.msg_memset(tok.p, 0xff, BigInt(rows * 4), st), "poison");
      chk(s.msg_memset(lp.p, 0xff, BigInt(rows * 4), st), "poison");
      chk(s.msg_memset(lg.p, 0xff, BigInt(rows * V * 4), st), "poison");
    };
    chk(s.msg_device_sync(), "sync");
    step(null);
    chk(s.msg_device_sync(), "sync");
    const ref = read();
    const st = streamOf(gpu), h = new BigUint64Array(1);
    for (let rep = 0; rep < 3; rep++) {
      poison(st);
      step(st);
      chk(s.msg_stream_sync(st), "sync");
      assert.deepEqual(read(), ref, `created stream, rep ${rep}`);
    }
    chk(s.msg_graph_begin(st), "graph begin");
    step(st);
    chk(s.msg_graph_end(st, ptr(h)), "graph end");
    const g = Deno.UnsafePointer.create(h[0]);
    for (let rep = 0; rep < 3; rep++) {
      poison(st);
      chk(s.msg_graph_launch(g, st), "graph launch");
      chk(s.msg_stream_sync(st), "sync");
      assert.deepEqual(read(), ref, `graph replay ${rep}`);
    }
    chk(s.msg_graph_destroy(g), "graph destroy");
    chk(s.msg_stream_destroy(st), "stream destroy");
    [a, w, par, lg, tok, lp].forEach((b) => b.free());
  },
});
