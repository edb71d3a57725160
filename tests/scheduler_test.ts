/**
 * Policy tests of the Scheduler (src/scheduler/scheduler.ts) without a model: batches run
 * on a tiny executable model of the worker's *contract* (page table rows written from
 * pageStart/newPages, KV slots addressed through them, a device-side last-token slot per
 * row). Each KV slot holds a hash of the whole prefix up to its position, computed from
 * the slot of the previous position as read through the page table, so any page mix-up
 * (a page reused while in use, a wrong cached prefix, a missing page) changes the tokens.
 * Outputs are compared with each request run alone. End-to-end runs on the real CPU
 * worker are in engine_test.ts.
 */
import assert from "node:assert/strict";
import { type Plan, Scheduler, type SchedulerConfig } from "../src/scheduler/scheduler.ts";
import { SchedulerLoop } from "../src/scheduler/loop.ts";
import type { ForwardResult } from "../src/ipc/batch.ts";
import { encodeBatch } from "../src/ipc/batch_codec.ts";
import {
  defaultSamplingParams,
  type SamplingParams,
  type TokenEvent,
} from "../src/engine/types.ts";
import type { SubmitMessage } from "../src/scheduler/request.ts";
import { ensureTestModel, sharedPrefixWorkload } from "./fixtures.ts";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig, type EngineConfig } from "../src/engine/config.ts";
import type { Engine } from "../src/engine/types.ts";

const VOCAB = 64;
const EOS = 3;
const START = 0x12345;

function mix(h: number, token: number): number {
  h = Math.imul(h ^ token, 0x9E3779B1) + 0x7F4A7C15;
  return (h ^ (h >>> 15)) | 0;
}
/** The "model": next token from the prefix hash (EOS is possible). */
function next(h: number): number {
  return ((h >>> 7) % (VOCAB - 4)) + 4 - ((h >>> 3) % 41 === 0 ? 4 - EOS : 0);
}

/** Reference: a request alone. */
function reference(prompt: number[], p: SamplingParams): number[] {
  let h = START;
  for (const t of prompt) h = mix(h, t);
  const out: number[] = [];
  while (out.length < p.maxTokens) {
    const t = next(h);
    out.push(t);
    if (!p.ignoreEos && t === EOS) break;
    h = mix(h, t);
  }
  return out;
}

/** Executes batches in push order like the worker, checking the page contract. */
class ContractDevice {
  pt = new Map<number, number[]>();
  kv: Int32Array;
  written: Uint8Array;
  last = new Map<number, number>();
  constructor(readonly cfg: SchedulerConfig) {
    this.kv = new Int32Array(cfg.numPages * cfg.pageSize);
    this.written = new Uint8Array(cfg.numPages * cfg.pageSize);
  }
  slot(row: number, pos: number): number {
    const P = this.cfg.pageSize;
    const page = this.pt.get(row)![Math.floor(pos / P)];
    assert.ok(page !== undefined && page >= 0 && page < this.cfg.numPages, `no page for ${pos}`);
    return page * P + (pos % P);
  }
  run(plan: Plan): ForwardResult {
    const { entries } = plan.batch;
    const rows = new Set(entries.map((e) => e.row));
    assert.equal(rows.size, entries.length, "a row twice in one batch");
    const tokens = new Int32Array(entries.length).fill(-1);
    let total = 0;
    for (const [k, e] of entries.entries()) {
      total += e.qLen;
      const row = this.pt.get(e.row) ?? [];
      if (e.pageStart === 0) row.length = 0;
      assert.ok(e.pageStart <= row.length, "pages sent with a gap");
      row.length = e.pageStart;
      row.push(...e.newPages);
      this.pt.set(e.row, row);
      let h = e.startPos === 0 ? START : this.kv[this.slot(e.row, e.startPos - 1)];
      if (e.startPos > 0) {
        assert.ok(this.written[this.slot(e.row, e.startPos - 1)], "read unwritten KV");
      }
      for (let i = 0; i < e.qLen; i++) {
        const t = e.inputIds ? e.inputIds[i] : this.last.get(e.row)!;
        assert.ok(t !== undefined, "decode without a sampled token");
        h = mix(h, t);
        const s = this.slot(e.row, e.startPos + i);
        this.kv[s] = h;
        this.written[s] = 1;
      }
      if (e.sample) {
        tokens[k] = next(h);
        this.last.set(e.row, tokens[k]);
      }
    }
    assert.ok(total <= this.cfg.maxBatchTokens);
    if (this.cfg.maxRecordWords !== undefined) {
      const words = encodeBatch(plan.batch).length;
      assert.ok(words <= this.cfg.maxRecordWords, `record of ${words} words`);
    }
    return {
      id: plan.batch.id,
      tokens,
      logprobs: new Float32Array(entries.length).fill(-1),
      topIds: entries.map(() => null),
      topLogprobs: entries.map(() => null),
      promptLogprobs: entries.map((e) =>
        e.logprobTargets ? Float32Array.from(e.logprobTargets, (t) => (t < 0 ? NaN : -t)) : null
      ),
      promptTopIds: entries.map(() => null),
      promptTopLogprobs: entries.map(() => null),
      seconds: 0,
    };
  }
}

interface Outcome {
  tokens: number[];
  finish: NonNullable<TokenEvent["finish"]>;
  events: TokenEvent[];
}

/** Drive the scheduler like loop.ts does (overlap: result N processed after N+1 is sent). */
function drive(
  cfg: SchedulerConfig,
  reqs: SubmitMessage[],
  overlap: boolean,
  opts: { abortAfterSteps?: Map<string, number>; arriveAt?: Map<string, number> } = {},
) {
  const s = new Scheduler(cfg);
  const dev = new ContractDevice(cfg);
  const out = new Map<string, Outcome>();
  const take = () => {
    for (const [id, ev] of s.takeEvents()) {
      const o = out.get(id) ?? { tokens: [], finish: undefined!, events: [] };
      assert.equal(o.finish, undefined, "event after finish");
      o.tokens.push(...ev.tokens);
      o.events.push(ev);
      if (ev.finish) o.finish = ev.finish;
      out.set(id, o);
    }
  };
  const pending = [...reqs];
  const inflight: [Plan, ForwardResult][] = [];
  let step = 0;
  for (; step < 100000; step++) {
    for (let i = pending.length - 1; i >= 0; i--) {
      if ((opts.arriveAt?.get(pending[i].id) ?? 0) <= step) s.submit(pending.splice(i, 1)[0]);
    }
    for (const [id, at] of opts.abortAfterSteps ?? []) if (at === step) s.abort(id);
    const plan = s.schedule();
    if (plan) inflight.push([plan, dev.run(plan)]);
    take();
    const m = s.metrics();
    assert.equal(m.kvPagesTotal, m.kvPagesFree + m.kvPagesCached + m.kvPagesInUse);
    assert.ok(m.kvPagesInUse >= 0 && m.kvPagesFree >= 0);
    if (plan) {
      while (inflight.length > (overlap ? 1 : 0)) s.process(...inflight.shift()!);
    } else if (inflight.length) s.process(...inflight.shift()!);
    else if (pending.length === 0) break;
    take();
  }
  assert.ok(s.idle, "work left over");
  return { out, metrics: s.metrics(), steps: step };
}

function config(over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return {
    pageSize: 1,
    numPages: 400,
    maxRows: 64,
    maxPrefillLength: 64,
    maxBatchTokens: 64 + 64,
    maxContextLen: 400,
    vocabSize: VOCAB,
    eosTokenIds: [EOS],
    cache: "radix",
    ...over,
  };
}

function requests(n: number, seed: number): SubmitMessage[] {
  let s = seed;
  const rnd = (k: number) => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % k;
  const prefixes = Array.from(
    { length: 3 },
    () => Array.from({ length: 40 + rnd(40) }, () => 4 + rnd(60)),
  );
  return Array.from({ length: n }, (_, i) => {
    const prompt = [
      ...prefixes[i % 3].slice(0, 10 + rnd(70)),
      ...Array.from({ length: 1 + rnd(12) }, () => 4 + rnd(60)),
    ];
    const params = {
      ...defaultSamplingParams(),
      temperature: 0,
      maxTokens: 5 + rnd(40),
      ignoreEos: i % 4 === 0,
    };
    return { id: `r${i}`, promptIds: prompt, params, seed: BigInt(i) };
  });
}

for (const pageSize of [1, 4, 16]) {
  for (const overlap of [true, false]) {
    for (const cache of ["radix", "naive"] as const) {
      Deno.test(`scheduler: page ${pageSize}, overlap ${overlap}, ${cache}: outputs equal solo runs under memory pressure`, () => {
        const cfg = config({
          cache,
          pageSize,
          numPages: Math.ceil(600 / pageSize),
          maxPrefillLength: 48,
          maxContextLen: 600,
        });
        const reqs = requests(120, 7 + pageSize);
        const arriveAt = new Map(reqs.map((r, i) => [r.id, Math.floor(i / 3)]));
        const { out, metrics } = drive(cfg, reqs, overlap, { arriveAt });
        for (const r of reqs) {
          const o = out.get(r.id)!;
          const ref = reference(r.promptIds, r.params);
          const stopped = ref[ref.length - 1] === EOS && !r.params.ignoreEos;
          assert.deepEqual(o.tokens, stopped ? ref.slice(0, -1) : ref, r.id);
          assert.equal(o.finish.reason, stopped ? "stop" : "length");
          assert.equal(o.finish.completionTokens, ref.length);
          if (stopped) assert.equal(o.finish.stopToken, EOS);
        }
        assert.equal(metrics.kvPagesInUse, 0);
        assert.ok(metrics.retractionsTotal > 0, "the pool was meant to be too small");
        if (cache === "radix") {
          assert.ok(metrics.cachedTokensTotal > 1000, `${metrics.cachedTokensTotal}`);
        } else assert.equal(metrics.cachedTokensTotal, 0);
      });
    }
  }
}

Deno.test("scheduler: long prompts are chunked; results equal unchunked", () => {
  const reqs = requests(30, 99).map((r) => ({
    ...r,
    promptIds: [...r.promptIds, ...r.promptIds, ...r.promptIds],
  }));
  const a = drive(config({ maxPrefillLength: 5, numPages: 2000, maxContextLen: 2000 }), reqs, true);
  const b = drive(
    config({ maxPrefillLength: 1000, maxBatchTokens: 2000, numPages: 2000, maxContextLen: 2000 }),
    reqs,
    true,
  );
  for (const r of reqs) assert.deepEqual(a.out.get(r.id)!.tokens, b.out.get(r.id)!.tokens);
  assert.ok(a.steps > b.steps);
});

Deno.test("scheduler: batches split at the record limit; results equal unsplit", () => {
  // Requests over one long shared prefix: each admission sends its whole page list.
  const prefix = Array.from({ length: 300 }, (_, i) => 1 + (i * 17) % (VOCAB - 2));
  const reqs = requests(40, 7).map((r, i) => ({
    ...r,
    promptIds: [...prefix, 1 + i],
    params: { ...r.params, ignoreEos: true, maxTokens: 4, repetitionPenalty: 1.1 },
  }));
  const wide = config({ numPages: 20000, maxContextLen: 400 });
  const limit = 3 * 400; // room for about three page lists of the prefix
  const a = drive({ ...wide, maxRecordWords: limit }, reqs, true);
  const b = drive(wide, reqs, true);
  for (const r of reqs) {
    assert.equal(a.out.get(r.id)!.finish.reason, "length");
    assert.deepEqual(a.out.get(r.id)!.tokens, b.out.get(r.id)!.tokens);
  }
  assert.ok(a.steps > b.steps);
  // One that could not fit a record even alone is refused at submit, saying why.
  const s = new Scheduler({ ...wide, maxRecordWords: 200 });
  s.submit({ ...reqs[0], id: "huge" });
  const [[, ev]] = s.takeEvents();
  assert.match(ev.finish!.error!, /need a batch record of \d+ bytes, over the limit of 800/);
});

Deno.test("scheduler: aborts free pages; impossible requests are rejected at once", () => {
  const reqs = requests(20, 5).map((r) => ({
    ...r,
    params: { ...r.params, ignoreEos: true, maxTokens: 60 },
  }));
  const tooLong = {
    id: "long",
    promptIds: new Array(390).fill(5),
    params: { ...defaultSamplingParams(), maxTokens: 20 },
    seed: 0n,
  };
  const badToken = { id: "bad", promptIds: [1, VOCAB], params: defaultSamplingParams(), seed: 0n };
  const aborts = new Map(reqs.filter((_, i) => i % 2 === 0).map((r, i) => [r.id, 3 + i * 4]));
  const { out, metrics } = drive(config(), [...reqs, tooLong, badToken], true, {
    abortAfterSteps: aborts,
  });
  assert.match(out.get("long")!.finish.error!, /exceeds the context length 400/);
  assert.match(out.get("bad")!.finish.error!, /outside the vocabulary/);
  for (const r of reqs) {
    const o = out.get(r.id)!;
    assert.equal(o.finish.reason, aborts.has(r.id) ? "abort" : "length");
    if (!aborts.has(r.id)) assert.deepEqual(o.tokens, reference(r.promptIds, r.params));
  }
  assert.equal(metrics.kvPagesInUse, 0);
  assert.equal(metrics.numRequestsRunning + metrics.numRequestsWaiting, 0);
});

Deno.test("scheduler: max_tokens 0 with prompt logprobs, stop token ids, cached tokens reported", () => {
  const prompt = Array.from({ length: 30 }, (_, i) => 4 + i);
  const p = { ...defaultSamplingParams(), temperature: 0 };
  const ref = reference(prompt, { ...p, maxTokens: 50, ignoreEos: true });
  const reqs: SubmitMessage[] = [
    { id: "lp", promptIds: prompt, params: { ...p, maxTokens: 0, promptLogprobs: true }, seed: 1n },
    {
      id: "stop",
      promptIds: prompt,
      params: { ...p, maxTokens: 50, ignoreEos: true, stopTokenIds: [ref[4]] },
      seed: 2n,
    },
  ];
  const { out } = drive(config({ maxPrefillLength: 7 }), reqs, true, {
    arriveAt: new Map([["stop", 20]]),
  });
  const lp = out.get("lp")!;
  assert.equal(lp.finish.reason, "length");
  assert.deepEqual(lp.events[0].promptLogprobs, [null, ...prompt.slice(1).map((t) => -t)]);
  const st = out.get("stop")!;
  assert.equal(st.finish.reason, "stop");
  assert.equal(st.finish.stopToken, ref[4]);
  assert.deepEqual(st.tokens, ref.slice(0, ref.indexOf(ref[4])));
  assert.equal(st.finish.cachedTokens, 29, "the prompt minus its last token came from the cache");
});

Deno.test("scheduler: identical long prompts arriving one step apart share chunks without leaks", () => {
  const base = requests(1, 3)[0];
  const prompt = Array.from({ length: 200 }, (_, i) => 4 + ((i * 7) % 60));
  const reqs = Array.from({ length: 12 }, (_, i) => ({
    ...base,
    id: `d${i}`,
    promptIds: i % 3 === 2 ? [...prompt.slice(0, 150), 9, 9] : prompt,
    params: { ...base.params, maxTokens: 8 },
  }));
  for (const pageSize of [1, 8]) {
    const cfg = config({ pageSize, maxPrefillLength: 24, numPages: 2000, maxContextLen: 2000 });
    const { out, metrics } = drive(cfg, reqs, true, {
      arriveAt: new Map(reqs.map((r, i) => [r.id, i])),
    });
    for (const r of reqs) {
      const ref = reference(r.promptIds, r.params);
      const stop = ref[ref.length - 1] === EOS;
      assert.deepEqual(out.get(r.id)!.tokens, stop ? ref.slice(0, -1) : ref);
    }
    assert.equal(metrics.kvPagesInUse, 0);
    assert.ok(metrics.cachedTokensTotal > 1000);
  }
});

// ---------------------------------------------------------------- on the real CPU worker

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

async function collect(stream: AsyncIterable<TokenEvent>) {
  const tokens: number[] = [], events: TokenEvent[] = [];
  for await (const ev of stream) {
    events.push(ev);
    tokens.push(...ev.tokens);
  }
  const finish = events[events.length - 1].finish!;
  assert.ok(finish, "the stream ends with a finish event");
  return { tokens, events, finish };
}

Deno.test("scheduler (CPU worker): 200 concurrent requests through a small pool equal solo runs", async () => {
  const reqs = sharedPrefixWorkload(200, 6);
  // Solo runs: one request at a time, no overlap (prefixes cached: that keeps this fast;
  // radix vs naive equality is in engine_test.ts).
  const solo = await engine({ disableOverlapSchedule: true });
  const expected: number[][] = [];
  for (const r of reqs) expected.push((await collect(solo.submit(r))).tokens);
  await solo.shutdown();
  assert.ok(new Set(expected.map((t) => t.join())).size > 50, "outputs should differ");

  // Everything at once through a pool that holds a fraction of it.
  const e = await engine({ numPages: 1200 });
  const runs = await Promise.all(reqs.map((r) => collect(e.submit(r))));
  const m = await e.metrics();
  await e.shutdown();
  for (const [i, r] of runs.entries()) {
    assert.deepEqual(r.tokens, expected[i], reqs[i].id);
    assert.equal(r.finish.reason, "length");
    assert.equal(r.finish.completionTokens, reqs[i].params.maxTokens);
  }
  assert.equal(m.kvPagesInUse, 0);
  assert.equal(m.kvPagesTotal, m.kvPagesFree + m.kvPagesCached + m.kvPagesInUse);
  assert.ok(m.retractionsTotal > 0, "retractions");
  assert.ok(m.cachedTokensTotal > 5000, `prefix hits: ${m.cachedTokensTotal}`);
  assert.equal(m.cachedTokensTotal, runs.reduce((s, r) => s + r.finish.cachedTokens, 0));
  assert.equal(m.generatedTokensTotal >= runs.reduce((s, r) => s + r.tokens.length, 0), true);
});

Deno.test("scheduler loop: a dead worker is reported before the requests are aborted", async () => {
  // The engine turns a stream's abort into a 503 only if it already knows the engine died;
  // an abort seen first is the request's own rejection (a 400). So onFatal must come first.
  const s = new Scheduler(config());
  for (const r of requests(3, 11)) s.submit(r);
  const seen: string[] = [];
  const loop = new SchedulerLoop(
    s,
    {
      send: () => Promise.reject(new Error("the GPU worker stopped")),
      recv: () => Promise.resolve(null),
    },
    true,
    (events) => {
      for (const [id, ev] of events) {
        if (ev.finish?.error) seen.push(`abort ${id}: ${ev.finish.error}`);
      }
    },
    (message) => seen.push(`fatal: ${message}`),
  );
  await assert.rejects(loop.run(), /the GPU worker stopped/);
  assert.equal(seen[0], "fatal: the GPU worker stopped");
  assert.deepEqual(seen.slice(1).sort(), [
    "abort r0: the GPU worker stopped",
    "abort r1: the GPU worker stopped",
    "abort r2: the GPU worker stopped",
  ]);
});
