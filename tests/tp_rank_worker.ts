/// <reference lib="deno.worker" />
/**
 * One tensor-parallel rank for tests/tp_test.ts: builds a CPU ModelRunner for its rank,
 * computes the full logits of each prompt (each in its own row), then greedy-decodes
 * `steps` tokens of prompt 0 through run(), and posts {logits, tokens}.
 */
import { loadModelConfig } from "../src/model/config.ts";
import { ModelRunner, runnerOptions } from "../src/runtime/model_runner.ts";
import { type BatchEntry, GREEDY } from "../src/ipc/batch.ts";

/** What the test sends. */
export interface RankJob {
  dir: string;
  rank: number;
  size: number;
  id: Uint8Array | null;
  prompts: number[][];
  steps: number;
  dummyWeightSeed: number | null;
}

const PAGE = 4;

/** A fresh entry for `row` covering ids at startPos (pages row * 256 + i). */
export function rowEntry(row: number, ids: number[] | null, startPos: number, qLen: number) {
  const end = startPos + qLen, first = Math.floor(startPos / PAGE);
  const pages = Array.from(
    { length: Math.ceil(end / PAGE) - first },
    (_, i) => row * 256 + first + i,
  );
  const e: BatchEntry = {
    row,
    startPos,
    qLen,
    inputIds: ids ? Int32Array.from(ids) : null,
    pageStart: first,
    newPages: Int32Array.from(pages),
    sample: true,
    sampling: GREEDY,
    penaltyTokens: null,
    logprobTargets: null,
    topLogprobs: 0,
  };
  return e;
}

self.onmessage = async (ev: MessageEvent<RankJob>) => {
  const j = ev.data;
  try {
    const cfg = await loadModelConfig(j.dir);
    const r = await ModelRunner.create(
      cfg,
      runnerOptions(j.dir, "cpu", {
        pageSize: PAGE,
        numPages: 2048,
        maxRows: 8,
        maxPrefillLength: 512,
        tpRank: j.rank,
        tpSize: j.size,
        commId: j.id,
        dummyWeightSeed: j.dummyWeightSeed,
      }),
      () => {},
    );
    const logits = r.logitsOf({
      id: 0,
      entries: j.prompts.map((p, i) => ({ ...rowEntry(i, p, 0, p.length), sample: false })),
    });
    // Greedy decode of prompt 0 in row 7: prefill, then decode from the device token table.
    const p = j.prompts[0];
    const tokens: number[] = [r.run({ id: 1, entries: [rowEntry(7, p, 0, p.length)] }).tokens[0]];
    for (let s = 1; s < j.steps; s++) {
      const res = r.run({ id: 1 + s, entries: [rowEntry(7, null, p.length + s - 1, 1)] });
      tokens.push(res.tokens[0]);
    }
    r.dev.close();
    self.postMessage({ logits, tokens });
  } catch (e) {
    self.postMessage({ error: (e as Error).message });
  }
  self.close();
};
