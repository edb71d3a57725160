/**
 * msg_silu_mul_gemm (the MLP's down projection with its activation) against the CPU twin:
 * bf16 and f16, M = 1..4 (the CUDA GEMV forms silu(gate) * up while loading it), M = 6 and
 * unaligned K (the two-op path), outputs poisoned (NaN) first; on the GPU the fused result
 * also matches msg_silu_mul then msg_gemm within one rounding. Skipped unless the CUDA library
 * loads and sees a device; MINISGL_KERNELS_SELF=1 runs it with the CPU library on both sides.
 */
import assert from "node:assert/strict";
import type { NativeLib } from "../../ffi/lib.ts";
import { BF16, DevBuf as Buf, F16, from16, loadPair, makeRng, to16 } from "./harness.ts";

const libs = loadPair();
const ig = { ignore: libs === null };
const cpu = libs?.cpu as NativeLib, gpu = libs?.gpu as NativeLib;
const { randn } = makeRng(99);

function relErr(ref: Float32Array, got: Float32Array, what: string): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) assert.fail(`${what}: ${got[i]} at ${i} (unwritten?)`);
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

Deno.test({
  name: "cuda: silu_mul_gemm equals the CPU twin and the two separate ops",
  ...ig,
  fn: () => {
    for (const dt of [BF16, F16]) {
      for (
        const [M, N, K] of [[1, 1024, 3072], [2, 4096, 1024], [3, 300, 512], [4, 1000, 2048], [
          6,
          512,
          1024,
        ], [1, 130, 1003]]
      ) {
        const what = `dt=${dt} M=${M} N=${N} K=${K}`;
        const gu = to16(randn(M * 2 * K, 1), dt), w = to16(randn(N * K, 0.05), dt);
        /** Runs on `lib`: fused, or (separate) msg_silu_mul then msg_gemm. */
        const run = (lib: NativeLib, separate: boolean) => {
          const s = lib.sym;
          const g = Buf.of(lib, gu), wb = Buf.of(lib, w);
          const act = new Buf(lib, M * K * 2), out = new Buf(lib, M * N * 2);
          out.poison();
          if (separate) {
            lib.check(s.msg_silu_mul(act.p, g.p, M, K, dt, null), "silu_mul");
            lib.check(s.msg_gemm(out.p, dt, act.p, dt, wb.p, dt, null, M, N, K, null), "gemm");
          } else {
            lib.check(s.msg_silu_mul_gemm(out.p, g.p, act.p, dt, wb.p, dt, M, N, K, null), what);
          }
          const r = from16(out.read(new Uint16Array(M * N)), dt);
          [g, wb, act, out].forEach((b) => b.free());
          return r;
        };
        const ref = run(cpu, false), got = run(gpu, false);
        const tol = dt === BF16 ? 1e-2 : 2e-3;
        const e = relErr(ref, got, what);
        assert.ok(e <= tol, `${what}: relative L2 error vs CPU ${e.toExponential(3)}`);
        const e2 = relErr(run(gpu, true), got, `${what} vs separate`);
        assert.ok(e2 <= tol, `${what}: vs silu_mul + gemm ${e2.toExponential(3)}`);
      }
    }
  },
});
