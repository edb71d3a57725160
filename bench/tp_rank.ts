/// <reference lib="deno.worker" />
/**
 * One tensor-parallel rank as a Worker, for bench/tp.ts (fidelity) and tests/tp_test.ts:
 * builds a ModelRunner for its rank, computes the full logits of each prompt (each in its
 * own row), then `steps` decode steps of prompt 0 twice: in row 7 through run() (sampled on the
 * device, greedy) and in its own row through logitsOf() with the continuation `forced` (or, when null, the
 * argmax of its own logits), posting {logits, tokens, decodeLogits, continuation}.
 */
import { loadModelConfig } from "../src/model/config.ts";
import { ModelRunner, runnerOptions } from "../src/runtime/model_runner.ts";
import { type BatchEntry, GREEDY } from "../src/ipc/batch.ts";

/** What the test sends. */
export interface RankJob {
  dir: string;
  backend: "cpu" | "cuda";
  deviceIndex: number;
  forced: number[] | null;
  rank: number;
  size: number;
  id: Uint8Array | null;
  prompts: number[][];
  steps: number;
  dummyWeightSeed: number | null;
}

const PAGE = 4;
const MAX_ROWS = 8;

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

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

self.onmessage = async (ev: MessageEvent<RankJob>) => {
  const j = ev.data;
  try {
    const cfg = await loadModelConfig(j.dir);
    const r = await ModelRunner.create(
      cfg,
      runnerOptions(j.dir, j.backend, {
        deviceIndex: j.deviceIndex,
        cudaGraphMaxBs: 0,
        pageSize: PAGE,
        numPages: 2048,
        maxRows: MAX_ROWS,
        maxPrefillLength: 1024,
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
    // Teacher-forced decode after prompt 0 in its row (0): one token a step.
    const V = cfg.vocabSize;
    const decodeLogits = new Float32Array(j.steps * V), continuation: number[] = [];
    let prev = logits[0].subarray((p.length - 1) * V, p.length * V);
    for (let s = 0; s < j.steps; s++) {
      const tok = j.forced ? j.forced[s] : argmax(prev);
      continuation.push(tok);
      const [l] = r.logitsOf({ id: 100 + s, entries: [rowEntry(0, [tok], p.length + s, 1)] });
      decodeLogits.set(l, s * V);
      prev = l;
    }
    r.dev.close();
    self.postMessage({ logits, tokens, decodeLogits, continuation });
  } catch (e) {
    self.postMessage({ error: (e as Error).message });
  }
  self.close();
};
