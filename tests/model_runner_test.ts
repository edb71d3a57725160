/**
 * The engine's forward pass on the CPU backend against the float64 reference: every
 * architecture, every position, prompts of 1 to 300 tokens; incremental decode against
 * full recompute; batches against single requests; cached prefixes through shared pages.
 */
import { equal as assertEquals, ok as assert } from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { referenceLogits } from "./reference.ts";
import { loadModelConfig } from "../src/model/config.ts";
import { ModelRunner, runnerOptions } from "../src/runtime/model_runner.ts";
import { type BatchEntry, GREEDY } from "../src/ipc/batch.ts";
import { graphBatchSizes, graphSeqBuckets, seqBucketFor } from "../src/runtime/cuda_graph.ts";

const PAGE = 4;

async function runner(dir: string, maxRows = 8) {
  const cfg = await loadModelConfig(dir);
  const r = await ModelRunner.create(
    cfg,
    runnerOptions(dir, "cpu", { pageSize: PAGE, numPages: 1024, maxRows, maxPrefillLength: 1024 }),
    () => {},
  );
  return { cfg, r };
}

/** An entry for `row` whose pages are row * 128 + i (disjoint per row). */
function entry(row: number, ids: number[], startPos = 0, pages?: number[]): BatchEntry {
  const end = startPos + ids.length;
  const first = Math.floor(startPos / PAGE);
  const all = pages ?? Array.from({ length: Math.ceil(end / PAGE) }, (_, i) => row * 128 + i);
  return {
    row,
    startPos,
    qLen: ids.length,
    inputIds: Int32Array.from(ids),
    pageStart: first,
    newPages: Int32Array.from(all.slice(first, Math.ceil(end / PAGE))),
    sample: true,
    sampling: GREEDY,
    penaltyTokens: null,
    logprobTargets: null,
    topLogprobs: 0,
  };
}

function randomIds(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

/** max over positions of ||a_p - b_p|| / ||b_p||. */
function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>, vocab: number): number {
  let worst = 0;
  for (let p = 0; p < b.length / vocab; p++) {
    let num = 0, den = 0;
    for (let i = p * vocab; i < (p + 1) * vocab; i++) {
      num += (a[i] - b[i]) ** 2;
      den += b[i] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / den));
  }
  return worst;
}

for (const preset of ["tiny-qwen3", "tiny-llama", "tiny-qwen2", "tiny-mistral"]) {
  Deno.test(`${preset}: logits equal the float64 reference at every position`, async () => {
    const dir = await ensureTestModel(preset);
    const { cfg, r } = await runner(dir);
    for (const [n, seed] of [[1, 1], [17, 2], [300, 3]]) {
      const ids = randomIds(n, cfg.vocabSize, seed);
      const [got] = r.logitsOf({ id: 0, entries: [entry(0, ids)] });
      const want = await referenceLogits(dir, ids);
      const err = maxRelErr(got, want, cfg.vocabSize);
      assert(err < 1e-4, `${preset} n=${n}: relative error ${err}`);
    }
    r.dev.close();
  });
}

Deno.test("incremental decode equals full recompute; batch equals each alone", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const { cfg, r } = await runner(dir);
  const V = cfg.vocabSize;
  const ids = randomIds(40, V, 7);
  const [full] = r.logitsOf({ id: 0, entries: [entry(0, ids)] });
  // Prefill 25, then one token at a time in row 1.
  const [pre] = r.logitsOf({ id: 1, entries: [entry(1, ids.slice(0, 25))] });
  assert(maxRelErr(pre, full.subarray(0, 25 * V), V) < 1e-5);
  for (let p = 25; p < 40; p++) {
    const [step] = r.logitsOf({ id: 2, entries: [entry(1, [ids[p]], p)] });
    assert(maxRelErr(step, full.subarray(p * V, (p + 1) * V), V) < 1e-5, `position ${p}`);
  }
  // A batch of 8 different prompts equals each alone.
  const prompts = Array.from({ length: 8 }, (_, i) => randomIds(3 + 9 * i, V, 100 + i));
  const alone = prompts.map((p, i) => r.logitsOf({ id: 3, entries: [entry(i, p)] })[0]);
  const together = r.logitsOf({ id: 4, entries: prompts.map((p, i) => entry(i, p)) });
  prompts.forEach((_, i) => assert(maxRelErr(together[i], alone[i], V) < 1e-5, `prompt ${i}`));
  r.dev.close();
});

Deno.test("fp8 KV cache: near the float64 reference; decode, batches and split extend calls agree", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const cfg = await loadModelConfig(dir);
  const make = (widenTokens: number | null) =>
    ModelRunner.create(
      cfg,
      runnerOptions(dir, "cpu", {
        pageSize: PAGE,
        numPages: 1024,
        maxRows: 8,
        maxPrefillLength: 1024,
        kvCacheDtype: "fp8_e4m3",
        widenTokens,
      }),
      () => {},
    );
  const r = await make(null);
  const V = cfg.vocabSize;
  const ids = randomIds(40, V, 7);
  const [full] = r.logitsOf({ id: 0, entries: [entry(0, ids)] });
  // Keys and values are e4m3: the reference that rounds them alike, and not the plain one
  // (this small random model amplifies the cache's rounding to tens of percent).
  const err = maxRelErr(full, await referenceLogits(dir, ids, true), V);
  assert(err < 1e-4, `fp8 cache: relative error ${err} to the fp8 reference`);
  const plain = maxRelErr(full, await referenceLogits(dir, ids), V);
  assert(plain > 1e-2, `fp8 cache: relative error ${plain} to the plain reference`);
  // The decode kernel reads the fp8 cache as the extend calls read its widened pages.
  r.logitsOf({ id: 1, entries: [entry(1, ids.slice(0, 25))] });
  for (let p = 25; p < 40; p++) {
    const [step] = r.logitsOf({ id: 2, entries: [entry(1, [ids[p]], p)] });
    // A key computed in a batch of one may land on the other side of an e4m3 rounding
    // midpoint than in the batch of 40 (their f32 sums differ in the last bits): 1e-3.
    const e = maxRelErr(step, full.subarray(p * V, (p + 1) * V), V);
    assert(e < 1e-3, `position ${p}: ${e}`);
  }
  // A prompt whose first 16 tokens sit in row 1's pages (the prefill above): its suffix
  // reads them widened.
  const b = [...ids.slice(0, 16), ...randomIds(9, V, 12)];
  const pages = [128, 129, 130, 131, 128 * 5 + 4, 128 * 5 + 5, 128 * 5 + 6];
  const e = { ...entry(5, b.slice(16), 16), pageStart: 0, newPages: Int32Array.from(pages) };
  const [suffix] = r.logitsOf({ id: 5, entries: [e] });
  const [whole] = r.logitsOf({ id: 6, entries: [entry(6, b)] });
  assert(maxRelErr(suffix, whole.subarray(16 * V), V) < 1e-3, "cached prefix");
  // Eight prompts together, through widened pages that hold one request at a time.
  const prompts = Array.from({ length: 8 }, (_, i) => randomIds(3 + 9 * i, V, 100 + i));
  const alone = prompts.map((p, i) => r.logitsOf({ id: 3, entries: [entry(i, p)] })[0]);
  const small = await make(20 * PAGE); // 20 pages; the longest prompt needs 17
  const together = small.logitsOf({ id: 4, entries: prompts.map((p, i) => entry(i, p)) });
  prompts.forEach((_, i) => assert(maxRelErr(together[i], alone[i], V) < 1e-5, `prompt ${i}`));
  r.dev.close();
  small.dev.close();
});

Deno.test("a cached prefix in shared pages gives the same logits", async () => {
  const dir = await ensureTestModel("tiny-llama");
  const { cfg, r } = await runner(dir);
  const V = cfg.vocabSize;
  const a = randomIds(30, V, 11);
  const b = [...a.slice(0, 16), ...randomIds(9, V, 12)];
  r.logitsOf({ id: 0, entries: [entry(0, a)] });
  // Row 1 reuses row 0's first 4 pages (16 tokens) and computes only its suffix.
  const pages = [0, 1, 2, 3, 128 + 4, 128 + 5, 128 + 6];
  // A new row gets its whole page list (pageStart 0), cached pages included.
  const e = { ...entry(1, b.slice(16), 16), pageStart: 0, newPages: Int32Array.from(pages) };
  const [suffix] = r.logitsOf({ id: 1, entries: [e] });
  const want = await referenceLogits(dir, b);
  assert(maxRelErr(suffix, want.subarray(16 * V), V) < 1e-4);
  r.dev.close();
});

Deno.test("sampling through run(): greedy picks the argmax, decode reads the device token", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const { cfg, r } = await runner(dir);
  const V = cfg.vocabSize;
  const ids = randomIds(12, V, 21);
  const res = r.run({ id: 0, entries: [entry(0, ids)] });
  const want = await referenceLogits(dir, ids);
  const last = want.subarray(11 * V, 12 * V);
  let arg = 0;
  for (let i = 1; i < V; i++) if (last[i] > last[arg]) arg = i;
  assertEquals(res.tokens[0], arg);
  assert(res.logprobs[0] <= 0);
  // Decode with inputIds null takes the sampled token from the device table.
  const dec = entry(0, [0], 12);
  const res2 = r.run({ id: 1, entries: [{ ...dec, inputIds: null }] });
  const want2 = await referenceLogits(dir, [...ids, arg]);
  const l2 = want2.subarray(12 * V, 13 * V);
  let arg2 = 0;
  for (let i = 1; i < V; i++) if (l2[i] > l2[arg2]) arg2 = i;
  assertEquals(res2.tokens[0], arg2);
  r.dev.close();
});

Deno.test("decode graphs: sequence buckets of the forward part and the bucket a replay takes", () => {
  assertEquals(graphSeqBuckets(40960).join(), "1024,4096,16384,40960");
  assertEquals(graphSeqBuckets(8192).join(), "1024,4096,8192");
  assertEquals(graphSeqBuckets(4096).join(), "1024,4096");
  assertEquals(graphSeqBuckets(1000).join(), "1000");
  assertEquals(graphSeqBuckets(40960, false).join(), "40960");
  const b = graphSeqBuckets(40960);
  for (const [seq, i] of [[1, 0], [1024, 0], [1025, 1], [4096, 1], [20000, 3], [40960, 3]]) {
    assertEquals(seqBucketFor(b, seq), i, `seq ${seq}`);
  }
  assertEquals(graphBatchSizes(20).join(), "1,2,4,8,16,20");
});
