/**
 * msg_apply_token_mask (cuda/src/mask.cu) against its CPU twin (cuda/cpu/mask.cpp): random
 * logits, masks of every density (all allowed, none, sparse, dense, a partial last word) on
 * a subset of rows, with and without logit_bias; the outputs must be identical (the op only
 * adds a bias and writes -inf). Skipped unless the CUDA library loads and sees a device
 * (MINISGL_KERNELS_SELF=1: the CPU library on both sides).
 */
import assert from "node:assert/strict";
import { DevBuf, loadPair, makeRng, ptr } from "./harness.ts";

const libs = loadPair();
const { rand, randn } = makeRng(777);

Deno.test({
  name: "cuda: token masks and logit_bias equal the CPU twin",
  ignore: libs === null,
  fn() {
    const { cpu, gpu } = libs!;
    for (const vocab of [151936, 1000, 33]) {
      const B = 9, W = Math.ceil(vocab / 32);
      const logits = randn(B * vocab, 2);
      const rows = Int32Array.from([0, 2, 3, 5, 8]);
      const n = rows.length;
      const masks = new Int32Array(n * W);
      const density = [1, 0, 0.001, 0.7, 0.5];
      for (let i = 0; i < n; i++) {
        for (let v = 0; v < vocab; v++) {
          if (rand() < density[i]) masks[i * W + (v >> 5)] |= 1 << (v & 31);
        }
      }
      const starts = Int32Array.from([0, 3, 3, 5, 5, 7]);
      const ids = Int32Array.from([1, vocab - 1, 5, 0, 7, 2, vocab + 4]); // last one skipped
      const vals = Float32Array.from([100, -100, 3.5, 1, -2, 50, 9]);
      for (const withBias of [false, true]) {
        const outs: Float32Array[] = [];
        for (const lib of [cpu, gpu]) {
          const b = [logits, rows, masks, starts, ids, vals].map((a) => DevBuf.of(lib, a));
          lib.check(
            lib.sym.msg_apply_token_mask(
              b[0].p,
              vocab,
              b[1].p,
              b[2].p,
              withBias ? b[3].p : null,
              withBias ? b[4].p : null,
              withBias ? b[5].p : null,
              n,
              null,
            ),
            "token_mask",
          );
          lib.check(lib.sym.msg_device_sync(), "sync");
          outs.push(b[0].read(logits));
          for (const x of b) x.free();
        }
        assert.deepEqual(outs[1], outs[0], `vocab ${vocab} bias ${withBias}`);
        // Untouched rows stay as they were; a fully masked row is all -inf.
        assert.deepEqual(outs[0].subarray(vocab, 2 * vocab), logits.subarray(vocab, 2 * vocab));
        assert.ok(outs[0].subarray(2 * vocab, 3 * vocab).every((x) => x === -Infinity));
      }
    }
    void ptr;
  },
});
