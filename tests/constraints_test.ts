/**
 * The GPU worker's side of structured outputs (src/runtime/constraints.ts), on the CPU: a
 * grammar whose automaton outgrows its bound while generating must end its own request
 * (only the stop token allowed from then on), not throw out of the worker's serving loop,
 * which would end every request of the engine.
 */
import assert from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { Constraints } from "../src/runtime/constraints.ts";
import type { ForwardBatch } from "../src/ipc/batch.ts";
import { GREEDY } from "../src/ipc/batch.ts";

const V = 151936, EOS = 151645;

Deno.test("constraints: an automaton past its bound ends its request, not the worker", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const c = new Constraints(dir, V, 2);
  // The 13th byte from the end must be "a": a DFA of 2^13 states, built as text comes.
  const spec = { kind: "regex" as const, source: "(a|b)*a(a|b){12}" };
  const g = c.compile(spec);
  g.dfa.maxStates = g.dfa.size + 40;
  const ids = (s: string) =>
    g.trie.tokens.findIndex((b) => b?.length === 1 && b[0] === s.charCodeAt(0));
  const a = ids("a"), b = ids("b");
  const batch = (first: boolean): ForwardBatch => ({
    id: 0,
    releasedGrammars: null,
    entries: [{
      row: 0,
      startPos: 0,
      qLen: 1,
      inputIds: null,
      pageStart: 0,
      newPages: new Int32Array(0),
      sample: true,
      sampling: GREEDY,
      penaltyTokens: null,
      logprobTargets: null,
      topLogprobs: 0,
      grammar: {
        key: 7,
        spec: first ? { ...spec, stopIds: Int32Array.of(EOS) } : null,
      },
    }],
  });
  const { L } = c;
  const block = new ArrayBuffer(L.words * 4);
  const i32 = new Int32Array(block), f32 = new Float32Array(block);
  const mask = () => i32.subarray(L.masks, L.masks + L.maskWords);
  const allowed = (t: number) => (mask()[t >> 5] & (1 << (t & 31))) !== 0;
  let failedAt = -1;
  for (let step = 0; step < 200 && failedAt < 0; step++) {
    const bt = batch(step === 0);
    assert.equal(c.fill(bt, [0], i32, f32).numMasked, 1);
    if (!allowed(a) && !allowed(b)) failedAt = step;
    else c.advance(bt, Int32Array.of((step * 7919) % 3 ? a : b));
  }
  assert.ok(failedAt > 0, "the bound was never reached");
  // From then on: the stop token and nothing else, step after step.
  for (let step = 0; step < 3; step++) {
    const bt = batch(false);
    c.fill(bt, [0], i32, f32);
    const set = [...mask()].reduce((n, w) => n + (w === 0 ? 0 : 1), 0);
    assert.equal(set, 1);
    assert.ok(allowed(EOS));
    c.advance(bt, Int32Array.of(a));
  }
});
