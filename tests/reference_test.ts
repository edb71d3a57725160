/** Sanity of the float64 reference forward on every tiny architecture. */

import assert from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { loadReferenceModel } from "./reference.ts";
import { ropeCosSin, ropeInvFreq } from "../src/model/rope.ts";

const PRESETS = ["tiny-qwen3", "tiny-llama", "tiny-qwen2", "tiny-mistral"];

for (const preset of PRESETS) {
  Deno.test(`reference ${preset}: finite, causal, deterministic, input-dependent`, async () => {
    const ref = await loadReferenceModel(await ensureTestModel(preset));
    const V = ref.cfg.vocabSize;
    const ids = [9707, 11, 1879, 0, 42, 3555, 17, 220, 100];
    const full = ref.forward(ids);
    assert.deepStrictEqual(full.length, ids.length * V);
    assert.ok(full.every(Number.isFinite), "all logits finite");

    // Causal: a prefix's logits are exactly the first rows of the longer input's.
    const prefix = ref.forward(ids.slice(0, 4));
    assert.deepStrictEqual(prefix, full.subarray(0, 4 * V));

    // Deterministic.
    assert.deepStrictEqual(ref.forward(ids), full);

    // Changing the last token changes only the last row.
    const other = ref.forward([...ids.slice(0, -1), 101]);
    assert.deepStrictEqual(
      other.subarray(0, (ids.length - 1) * V),
      full.subarray(0, (ids.length - 1) * V),
    );
    assert.ok(
      maxAbsDiff(other.subarray((ids.length - 1) * V), full.subarray((ids.length - 1) * V)) > 1e-3,
    );

    // Position matters (rope): without it attention is blind to the order of the history,
    // so swapping the first two tokens would leave the last row unchanged.
    const ab = ref.forward([5, 7, 9]), ba = ref.forward([7, 5, 9]);
    assert.ok(maxAbsDiff(ab.subarray(2 * V), ba.subarray(2 * V)) > 1e-6);

    // Logits are spread enough for stable greedy decoding (made with std ~3).
    const row = full.subarray(0, V);
    const mean = row.reduce((a, b) => a + b, 0) / V;
    const std = Math.sqrt(row.reduce((a, b) => a + (b - mean) ** 2, 0) / V);
    assert.ok(std > 1 && std < 10, `logit std ${std}`);
  });
}

Deno.test("rope: table layout and llama3 scaling bands", () => {
  const plain = { ropeTheta: 10000, ropeScaling: null };
  const inv = ropeInvFreq(plain, 8);
  assert.deepStrictEqual([...inv], [1, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75]);
  const t = ropeCosSin(plain, 3, 8);
  assert.deepStrictEqual(t.length, 24);
  for (let i = 0; i < 4; i++) {
    assert.deepStrictEqual(t[2 * 8 + i], Math.fround(Math.cos(2 * inv[i])));
    assert.deepStrictEqual(t[2 * 8 + 4 + i], Math.fround(Math.sin(2 * inv[i])));
  }
  const scaled = {
    ropeTheta: 500000,
    ropeScaling: {
      type: "llama3" as const,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    },
  };
  const base = ropeInvFreq({ ropeTheta: 500000, ropeScaling: null }, 128);
  const s = ropeInvFreq(scaled, 128);
  let high = 0, low = 0, mid = 0;
  for (let i = 0; i < 64; i++) {
    const wavelen = 2 * Math.PI / base[i];
    if (wavelen < 8192 / 4) (assert.deepStrictEqual(s[i], base[i]), high++);
    else if (wavelen > 8192) (assert.deepStrictEqual(s[i], base[i] / 8), low++);
    else (assert.ok(s[i] < base[i] && s[i] > base[i] / 8), mid++);
    if (i > 0) assert.ok(s[i] < s[i - 1], "frequencies decrease");
  }
  assert.ok(high > 0 && low > 0 && mid > 0, `bands ${high}/${mid}/${low}`);
});

function maxAbsDiff(a: Float64Array, b: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
