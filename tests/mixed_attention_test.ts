/**
 * Mixed batches on the CPU backend: the one-token entries at the head and tail of a batch go
 * to the decode kernel and the rest to the extend kernel (attentionSegments), and the
 * attention output of the mixed batch equals that of every entry run alone.
 */
import assert from "node:assert/strict";
import { attentionSegments, oneTokenRuns } from "../src/runtime/attention.ts";
import {
  attendEntries,
  Device,
  DType,
  type MixedCase,
  mixedInputs,
  relErr,
  rowsOf,
} from "./mixed_attention.ts";

Deno.test("mixed batches: one-token runs at the head and tail, split into three calls", () => {
  assert.deepEqual(oneTokenRuns([1, 1, 5, 1, 7, 1]), { head: 2, tail: 1 });
  assert.deepEqual(oneTokenRuns([4, 1]), { head: 0, tail: 1 });
  assert.deepEqual(oneTokenRuns([1, 1, 1]), { head: 3, tail: 0 });
  assert.deepEqual(oneTokenRuns([2]), { head: 0, tail: 0 });
  const mixed = { numTokens: 2 + 13 + 1, batch: 6, isDecode: false, decodeHead: 2, decodeTail: 1 };
  assert.deepEqual(attentionSegments(mixed), [
    { kernel: "decode", entry0: 0, entries: 2, token0: 0, tokens: 2 },
    { kernel: "extend", entry0: 2, entries: 3, token0: 2, tokens: 13 },
    { kernel: "decode", entry0: 5, entries: 1, token0: 15, tokens: 1 },
  ]);
  assert.deepEqual(
    attentionSegments({ numTokens: 4, batch: 4, isDecode: true, decodeHead: 4, decodeTail: 0 }),
    [{ kernel: "decode", entry0: 0, entries: 4, token0: 0, tokens: 4 }],
  );
  assert.deepEqual(
    attentionSegments({ numTokens: 9, batch: 1, isDecode: false, decodeHead: 0, decodeTail: 0 }),
    [{ kernel: "extend", entry0: 0, entries: 1, token0: 0, tokens: 9 }],
  );
  assert.throws(
    () =>
      attentionSegments({ numTokens: 3, batch: 3, isDecode: false, decodeHead: 3, decodeTail: 0 }),
    /bad mixed batch/,
  );
});

const CASE: MixedCase = {
  pageSize: 4,
  hq: 8,
  hkv: 2,
  headDim: 32,
  // Decodes with short and long contexts (one at a page boundary), extends with no prefix and
  // a prefix ending inside a page, a one-token prompt in the middle (stays with extend).
  reqs: [[40, 1], [7, 1], [0, 9], [13, 6], [0, 1], [22, 5], [63, 1], [4, 1]],
};

Deno.test("mixed batches: decode head + extend + decode tail = every entry alone (CPU)", () => {
  const dev = new Device("cpu");
  const inp = mixedInputs(CASE, 11);
  for (const order of [[0, 1, 2, 3, 4, 5, 6, 7], [2, 0, 3, 6], [6, 7, 3], [1, 5, 2, 0, 7]]) {
    const mixed = attendEntries(dev, DType.F32, "native", inp, order);
    for (const b of order) {
      const alone = attendEntries(dev, DType.F32, "native", inp, [b]);
      const err = relErr(alone, rowsOf(mixed, CASE, order, b));
      assert.ok(err < 1e-5, `order ${order}: entry ${b} differs, relative error ${err}`);
    }
  }
});
