/**
 * Mixed batches on the GPU: NativeAttention splits a batch into the decode kernel for its
 * one-token head and tail entries and an extend kernel (each entry point of the ABI) for the
 * rest (native, fa3 v5 and v6), the latter reading q_starts from an offset (q_starts[0] > 0). The output of the mixed
 * batch is compared with the CPU twin running every entry alone, on random inputs: page sizes
 * 1, 16, 64; GQA 4 and 8; head_dim 64 and 128; bf16 and f16. Outputs are poisoned (NaN) first.
 *
 * Skipped unless the CUDA library loads and sees a device; MINISGL_KERNELS_SELF=1 runs the
 * CPU library on both sides.
 */
import assert from "node:assert/strict";
import { BF16, F16, loadPair, SELF } from "./harness.ts";
import {
  attendEntries,
  Device,
  DType,
  type MixedCase,
  mixedInputs,
  relErr,
  rowsOf,
} from "../mixed_attention.ts";

const libs = loadPair();

/** Decodes of short and long contexts at both ends, extends (no prefix, a prefix inside a
 *  page, several q tiles) and a one-token prompt between them. */
const REQS: [number, number][] = [
  [900, 1],
  [5, 1],
  [2000, 1],
  [0, 200],
  [37, 77],
  [0, 1],
  [1000, 130],
  [300, 1],
  [64, 1],
];

Deno.test({
  name: "attention mixed batches: decode head/tail + extend = CPU twin per entry",
  ignore: libs === null,
  fn() {
    const cpu = new Device("cpu"), gpu = new Device(SELF ? "cpu" : "cuda");
    const cases: MixedCase[] = [];
    for (const pageSize of [1, 16, 64]) {
      cases.push({ pageSize, hq: 32, hkv: 8, headDim: 128, reqs: REQS });
      cases.push({ pageSize, hq: 16, hkv: 2, headDim: 64, reqs: REQS });
    }
    const order = REQS.map((_, b) => b);
    let seed = 5;
    for (const c of cases) {
      const inp = mixedInputs(c, seed++);
      for (const dtype of [BF16, F16] as DType[]) {
        const refs = order.map((b) => attendEntries(cpu, dtype, "native", inp, [b]));
        for (
          const kernel of ["native", "hopper5", "hopper6", "hopper"] as const
        ) {
          const got = attendEntries(gpu, dtype, kernel, inp, order);
          for (const b of order) {
            const what = `${kernel} ps=${c.pageSize} hq=${c.hq} hkv=${c.hkv} hd=${c.headDim} ` +
              `${dtype === F16 ? "f16" : "bf16"} entry ${b} ${JSON.stringify(c.reqs[b])}`;
            const err = relErr(refs[b], rowsOf(got, c, order, b));
            assert.ok(err <= 1e-2, `${what}: relative L2 error ${err.toExponential(3)} > 1e-2`);
          }
        }
      }
    }
  },
});
