/**
 * The engine end to end on the CPU backend: real GPU worker (CPU twin), real scheduler
 * worker, real rings, the tiny Qwen3 test model with random weights.
 */
import assert from "node:assert/strict";
import { ensureTestModel, GREEDY_PARAMS, sharedPrefixWorkload } from "./fixtures.ts";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig, type EngineConfig } from "../src/engine/config.ts";
import { defaultSamplingParams, type Engine, type TokenEvent } from "../src/engine/types.ts";

async function engine(over: Partial<EngineConfig>): Promise<Engine> {
  const dir = await ensureTestModel("tiny-qwen3");
  return startEngine({
    ...defaultEngineConfig(dir),
    device: "cpu",
    cudaGraphMaxBs: 0,
    numPages: 4096,
    maxRunningRequests: 256,
    cpuThreads: 2,
    ...over,
  });
}

interface Run {
  tokens: number[];
  events: TokenEvent[];
  finish: NonNullable<TokenEvent["finish"]>;
}

async function collect(stream: AsyncIterable<TokenEvent>): Promise<Run> {
  const tokens: number[] = [], events: TokenEvent[] = [];
  for await (const ev of stream) {
    events.push(ev);
    tokens.push(...ev.tokens);
  }
  const finish = events[events.length - 1].finish!;
  assert.ok(finish, "the stream ends with a finish event");
  return { tokens, events, finish };
}

Deno.test("engine: chunked/unchunked, overlap/no overlap, radix/naive, page sizes agree", async () => {
  const reqs = sharedPrefixWorkload(24, 8).map((r, i) => ({
    ...r,
    promptIds: i % 4 === 0 ? [...r.promptIds, ...r.promptIds] : r.promptIds,
  }));
  const configs: Partial<EngineConfig>[] = [
    {},
    { maxPrefillLength: 16 },
    { disableOverlapSchedule: true },
    { cache: "naive" },
    { pageSize: 16, maxPrefillLength: 40 },
  ];
  let first: number[][] | null = null;
  for (const c of configs) {
    const e = await engine(c);
    const out = (await Promise.all(reqs.map((r) => collect(e.submit(r))))).map((r) => r.tokens);
    const m = await e.metrics();
    await e.shutdown();
    assert.equal(m.kvPagesInUse, 0);
    if (first) assert.deepEqual(out, first, JSON.stringify(c));
    else first = out;
  }
});

Deno.test("engine: stop tokens, eos, abort, rejection, early break", async () => {
  const e = await engine({ numPages: 512 });
  try {
    const prompt = [11, 22, 33, 44, 55];
    const free = await collect(
      e.submit({ id: "free", promptIds: prompt, params: { ...GREEDY_PARAMS, maxTokens: 12 } }),
    );
    const stopAt = free.tokens[5];
    const first = free.tokens.indexOf(stopAt);
    const stopped = await collect(
      e.submit({
        id: "stop",
        promptIds: prompt,
        params: { ...GREEDY_PARAMS, maxTokens: 12, stopTokenIds: [stopAt] },
      }),
    );
    assert.equal(stopped.finish.reason, "stop");
    assert.equal(stopped.finish.stopToken, stopAt);
    assert.deepEqual(stopped.tokens, free.tokens.slice(0, first));
    assert.equal(stopped.finish.completionTokens, first + 1);
    assert.equal(stopped.finish.cachedTokens, 4, "the second run reuses the prompt prefix");
    // eos ids of the model stop a request unless ignoreEos.
    const eos = e.info.eosTokenIds[0];
    const asEos = await collect(
      e.submit({
        id: "eos",
        promptIds: [...prompt, ...free.tokens.slice(0, 2)],
        params: { ...GREEDY_PARAMS, ignoreEos: false, maxTokens: 3 },
      }),
    );
    assert.ok(asEos.finish.reason === "length" || asEos.finish.stopToken === eos);

    // Too long for the pool / context: rejected at once.
    const rej = await collect(
      e.submit({ id: "big", promptIds: prompt, params: { ...GREEDY_PARAMS, maxTokens: 600 } }),
    );
    assert.equal(rej.finish.reason, "abort");
    assert.match(rej.finish.error!, /context length 512/);

    // Abort a long request after a few events; leaving a for-await early aborts too.
    const long = e.submit({
      id: "long",
      promptIds: prompt,
      params: { ...GREEDY_PARAMS, maxTokens: 400 },
    });
    let n = 0, last: TokenEvent | null = null;
    for await (const ev of long) {
      if (++n === 3) e.abort("long");
      last = ev;
    }
    assert.equal(last?.finish?.reason, "abort");
    for await (
      const _ of e.submit({
        id: "brk",
        promptIds: prompt,
        params: { ...GREEDY_PARAMS, maxTokens: 400 },
      })
    ) break;
    let m = await e.metrics();
    for (let i = 0; i < 100 && m.numRequestsRunning + m.numRequestsWaiting > 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      m = await e.metrics();
    }
    assert.equal(m.numRequestsRunning + m.numRequestsWaiting, 0);
    assert.equal(m.kvPagesInUse, 0);
    assert.equal(m.kvPagesTotal, 512);
  } finally {
    await e.shutdown();
  }
});

Deno.test("engine: seeded sampling is reproducible and independent of the batch", async () => {
  const e = await engine({});
  try {
    const p = {
      ...defaultSamplingParams(),
      temperature: 1,
      topK: 50,
      maxTokens: 12,
      ignoreEos: true,
      seed: 1234,
    };
    const a = await collect(e.submit({ id: "s1", promptIds: [5, 6, 7], params: p }));
    const crowd = Array.from(
      { length: 10 },
      (_, i) =>
        collect(e.submit({ id: `c${i}`, promptIds: [9, i, 7], params: { ...p, seed: undefined } })),
    );
    const b = await collect(e.submit({ id: "s2", promptIds: [5, 6, 7], params: p }));
    const others = await Promise.all(crowd);
    assert.deepEqual(a.tokens, b.tokens);
    assert.ok(new Set(others.map((o) => o.tokens.join())).size > 5, "random seeds differ");
  } finally {
    await e.shutdown({ abort: true });
  }
});
