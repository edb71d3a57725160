/**
 * Top logprobs against the float64 reference: at every prompt position (echo with
 * logprobs k, chunked prefill, several requests in one batch with different k) and for
 * generated tokens of concurrent requests; through the server with the openai client.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { ensureTestModel, GREEDY_PARAMS } from "./fixtures.ts";
import { loadReferenceModel, type ReferenceModel } from "./reference.ts";
import { LLM } from "../src/llm/generate.ts";
import { startServerProcess } from "./server_harness.ts";

const TOL = 2e-3;

/** log_softmax of row `r` of the reference logits. */
function logSoftmax(logits: Float64Array, vocab: number, r: number): Float64Array {
  const row = logits.subarray(r * vocab, (r + 1) * vocab);
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(row, (x) => x - lse);
}

/** Asserts that `got` are the top-k of `ref` (ids exact unless the reference ties within
 *  TOL at the cut) with values within TOL, in descending order. */
function assertTopK(
  got: { id: number; logprob: number }[],
  ref: Float64Array,
  k: number,
  what: string,
) {
  assert.equal(got.length, k, `${what}: ${k} alternatives`);
  const order = Array.from(ref.keys()).sort((a, b) => ref[b] - ref[a]);
  for (let j = 0; j < k; j++) {
    assert.ok(Math.abs(got[j].logprob - ref[got[j].id]) < TOL, `${what}: value of ${got[j].id}`);
    assert.ok(Math.abs(got[j].logprob - ref[order[j]]) < TOL, `${what}: rank ${j}`);
    if (j > 0) assert.ok(got[j].logprob <= got[j - 1].logprob, `${what}: descending`);
  }
}

function prompt(n: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => 1000 + ((seed * 7919 + i * 104729) % 140000));
}

Deno.test("prompt top logprobs equal the reference at every position (chunked, batched)", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const ref: ReferenceModel = await loadReferenceModel(dir);
  const V = ref.cfg.vocabSize;
  const llm = await LLM.load(dir, {
    device: "cpu",
    cudaGraphMaxBs: 0,
    numPages: 256,
    maxPrefillLength: 8,
    cache: "naive",
  });
  try {
    const prompts = [prompt(19, 1), prompt(13, 2)];
    const ks = [5, 3];
    const outs = await Promise.all(prompts.map(async (p, i) =>
      (await llm.generate([p], {
        ...GREEDY_PARAMS,
        maxTokens: 3,
        logprobs: true,
        topLogprobs: ks[i],
        promptLogprobs: true,
      }))[0]
    ));
    for (const [i, p] of prompts.entries()) {
      const out = outs[i];
      const full = [...p, ...out.tokenIds];
      const logits = ref.forward(full);
      const tops = out.promptTopLogprobs!;
      assert.equal(tops.length, p.length);
      assert.equal(tops[0], null);
      for (let pos = 1; pos < p.length; pos++) {
        assertTopK(tops[pos]!, logSoftmax(logits, V, pos - 1), ks[i], `prompt ${i} pos ${pos}`);
      }
      // Generated tokens of concurrent requests: their own alternatives, not a neighbour's.
      for (const [j, lp] of out.logprobs!.entries()) {
        assertTopK(lp.top, logSoftmax(logits, V, p.length - 1 + j), ks[i], `prompt ${i} gen ${j}`);
      }
    }
  } finally {
    await llm.shutdown();
  }
});

Deno.test("server: echo + logprobs k returns real alternatives at every prompt position", {
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const ref = await loadReferenceModel(dir);
  const server = await startServerProcess();
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const p = prompt(12, 3);
    const r = await client.completions.create({
      model: "tiny-qwen3",
      prompt: p,
      max_tokens: 0,
      echo: true,
      logprobs: 4,
      // @ts-expect-error: vLLM's extension, not in the client's types
      return_tokens_as_token_ids: true,
    });
    const lp = r.choices[0].logprobs!;
    const logits = ref.forward(p);
    assert.equal(lp.top_logprobs!.length, p.length);
    assert.equal(lp.top_logprobs![0], null);
    for (let pos = 1; pos < p.length; pos++) {
      const top = lp.top_logprobs![pos]!;
      const want = logSoftmax(logits, ref.cfg.vocabSize, pos - 1);
      const alts = Object.entries(top).map(([k, v]) => ({ id: Number(k.slice(9)), logprob: v }))
        .sort((a, b) => b.logprob - a.logprob);
      // The 4 best, plus the prompt token itself when it is not among them.
      assert.ok(alts.length === 4 || alts.length === 5, `pos ${pos}: ${alts.length} entries`);
      const best = alts.length === 5 ? alts.filter((a) => a.id !== p[pos]) : alts;
      assertTopK(best, want, 4, `echo pos ${pos}`);
    }
  } finally {
    await server.stop();
  }
});
