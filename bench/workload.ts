/**
 * Offline workloads (token ids, lengths, sampling) and their run through the engine API,
 * shared by bench/offline.ts and bench/ablations.ts.
 */
import type { Engine, SamplingParams } from "../src/engine/types.ts";
import { defaultSamplingParams } from "../src/engine/types.ts";
import { seededRandom, uniformInt } from "./common.ts";

/** One request of a workload: prompt token ids and how many tokens to generate. */
export interface WorkItem {
  promptIds: number[];
  maxTokens: number;
}

/** nano-vllm's / Mini-SGLang's offline benchmark: `n` requests, input ids uniform in
 *  [0, idRange), input length U[inMin, inMax], max_tokens U[outMin, outMax]. */
export function randomWorkload(o: {
  n: number;
  seed: number;
  idRange: number;
  inMin: number;
  inMax: number;
  outMin: number;
  outMax: number;
}): WorkItem[] {
  checkRanges(o);
  const rand = seededRandom(o.seed);
  return Array.from({ length: o.n }, () => {
    const len = uniformInt(rand, o.inMin, o.inMax);
    const promptIds = Array.from({ length: len }, () => uniformInt(rand, 0, o.idRange - 1));
    return { promptIds, maxTokens: uniformInt(rand, o.outMin, o.outMax) };
  });
}

/** `groups` shared prefixes of `prefixLen` random ids, each followed by `perGroup` unique
 *  suffixes of U[inMin, inMax] ids (a system prompt or few-shot examples shared by many
 *  requests); max_tokens U[outMin, outMax]. Requests of a group are interleaved with the
 *  other groups', as they would arrive. */
export function sharedPrefixWorkload(o: {
  groups: number;
  perGroup: number;
  prefixLen: number;
  seed: number;
  idRange: number;
  inMin: number;
  inMax: number;
  outMin: number;
  outMax: number;
}): WorkItem[] {
  checkRanges(o);
  const rand = seededRandom(o.seed);
  const ids = (n: number) => Array.from({ length: n }, () => uniformInt(rand, 0, o.idRange - 1));
  const prefixes = Array.from({ length: o.groups }, () => ids(o.prefixLen));
  const items: WorkItem[] = [];
  for (let i = 0; i < o.perGroup; i++) {
    for (const prefix of prefixes) {
      const suffix = ids(uniformInt(rand, o.inMin, o.inMax));
      items.push({
        promptIds: [...prefix, ...suffix],
        maxTokens: uniformInt(rand, o.outMin, o.outMax),
      });
    }
  }
  return items;
}

function checkRanges(o: { inMin: number; inMax: number; outMin: number; outMax: number }) {
  if (!(o.inMin >= 1 && o.inMin <= o.inMax && o.outMin >= 1 && o.outMin <= o.outMax)) {
    throw new Error(
      `bad length ranges: input [${o.inMin}, ${o.inMax}], output [${o.outMin}, ${o.outMax}]`,
    );
  }
}

/** What one run of a workload measured. */
export interface RunStats {
  seconds: number;
  requests: number;
  promptTokens: number;
  outputTokens: number;
  cachedTokens: number;
  outTokPerS: number;
  totalTokPerS: number;
  /** Median time to first token, seconds. */
  medianTtftS: number;
}

/** Submits every item at once (ignore_eos, `temperature`, seed = index) and waits for all. */
export async function runWorkload(
  engine: Engine,
  items: WorkItem[],
  temperature: number,
  tag: string,
): Promise<RunStats> {
  const t0 = performance.now();
  const ttft: number[] = [];
  let outputTokens = 0, promptTokens = 0, cachedTokens = 0;
  await Promise.all(items.map(async (it, i) => {
    const params: SamplingParams = {
      ...defaultSamplingParams(),
      temperature,
      ignoreEos: true,
      maxTokens: it.maxTokens,
      seed: i,
    };
    let first = true;
    for await (const ev of engine.submit({ id: `${tag}-${i}`, promptIds: it.promptIds, params })) {
      if (first && ev.tokens.length) {
        ttft.push((performance.now() - t0) / 1000);
        first = false;
      }
      if (ev.finish) {
        if (ev.finish.error) throw new Error(`request ${i}: ${ev.finish.error}`);
        outputTokens += ev.finish.completionTokens;
        promptTokens += ev.finish.promptTokens;
        cachedTokens += ev.finish.cachedTokens;
      }
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  ttft.sort((a, b) => a - b);
  return {
    seconds,
    requests: items.length,
    promptTokens,
    outputTokens,
    cachedTokens,
    outTokPerS: outputTokens / seconds,
    totalTokPerS: (outputTokens + promptTokens) / seconds,
    medianTtftS: ttft[ttft.length >> 1] ?? NaN,
  };
}

/** A short warm-up (first prefills, first sampled decode steps) on ids no workload uses. */
export async function warmUp(engine: Engine, idRange: number) {
  const items = randomWorkload({
    n: 8,
    seed: 987654,
    idRange,
    inMin: 64,
    inMax: 256,
    outMin: 8,
    outMax: 16,
  });
  await runWorkload(engine, items, 0.6, `warm${Date.now()}`);
}
