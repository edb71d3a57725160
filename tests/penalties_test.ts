/**
 * Presence / frequency / repetition penalties through the model runner (CPU backend): the
 * greedy token of a penalized row equals the argmax of its logits penalized on the host by
 * the rule of msg_apply_penalties, for penalty tokens that fit the staging block and for
 * more than it holds (the overflow buffer); rows without penalties in the same batch are
 * untouched.
 */
import { equal as assertEquals, notEqual } from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { loadModelConfig } from "../src/model/config.ts";
import { ModelRunner, runnerOptions } from "../src/runtime/model_runner.ts";
import { type BatchEntry, GREEDY, type RowSampling } from "../src/ipc/batch.ts";

const PAGE = 4;

function entry(
  row: number,
  ids: number[],
  sampling: RowSampling,
  pen: number[] | null,
): BatchEntry {
  return {
    row,
    startPos: 0,
    qLen: ids.length,
    inputIds: Int32Array.from(ids),
    pageStart: 0,
    newPages: Int32Array.from({ length: Math.ceil(ids.length / PAGE) }, (_, i) => row * 64 + i),
    sample: true,
    sampling,
    penaltyTokens: pen ? Int32Array.from(pen) : null,
    logprobTargets: null,
    topLogprobs: 0,
  };
}

/** argmax of `logits` after the penalties of msg_apply_penalties for `tokens`. */
function penalizedArgmax(logits: Float32Array, tokens: number[], s: RowSampling): number {
  const count = new Map<number, number>();
  for (const t of tokens) count.set(t, (count.get(t) ?? 0) + 1);
  let best = -1, bestV = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    let v = logits[i];
    const c = count.get(i) ?? 0;
    if (c > 0) {
      v -= s.frequencyPenalty * c + s.presencePenalty;
      if (s.repetitionPenalty !== 1) {
        v = v > 0 ? v / s.repetitionPenalty : v * s.repetitionPenalty;
      }
    }
    if (v > bestV) [best, bestV] = [i, v];
  }
  return best;
}

Deno.test("penalties: greedy tokens equal the host-penalized argmax, in and beyond the block", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const cfg = await loadModelConfig(dir);
  // maxPrefillLength 64 + 4 rows: the staging block holds 68 penalty tokens.
  const r = await ModelRunner.create(
    cfg,
    runnerOptions(dir, "cpu", { pageSize: PAGE, numPages: 512, maxRows: 4, maxPrefillLength: 64 }),
    () => {},
  );
  const prompt = Array.from({ length: 12 }, (_, i) => (i * 7919 + 13) % cfg.vocabSize);
  const all = r.logitsOf({ id: 0, entries: [entry(0, prompt, GREEDY, null)] })[0];
  const last = all.subarray((prompt.length - 1) * cfg.vocabSize);
  const order = Array.from(last.keys()).sort((a, b) => last[b] - last[a]);
  const top = order[0];

  const cases: { name: string; tokens: number[]; s: RowSampling }[] = [
    {
      name: "in the block",
      tokens: [order[0], order[0], order[1], order[2], order[2], order[2]],
      s: { ...GREEDY, presencePenalty: 0.5, frequencyPenalty: 0.75, repetitionPenalty: 1.3 },
    },
    {
      name: "beyond the block",
      tokens: [...Array(150).fill(order[0]), ...Array(40).fill(order[1])],
      s: { ...GREEDY, presencePenalty: 0, frequencyPenalty: 0.05, repetitionPenalty: 1 },
    },
  ];
  for (let round = 0; round < 2; round++) {
    for (const c of cases) {
      const want = penalizedArgmax(last, c.tokens, c.s);
      notEqual(want, top, `${c.name}: the penalties must change the greedy token`);
      // The plain row first, so the penalized row's token starts do not begin at 0.
      const res = r.run({
        id: 1,
        entries: [entry(2, prompt, GREEDY, null), entry(1, prompt, c.s, c.tokens)],
      });
      assertEquals(res.tokens[0], top, `${c.name}: the row without penalties`);
      assertEquals(res.tokens[1], want, `${c.name} (round ${round})`);
    }
  }
  r.dev.close();
});
