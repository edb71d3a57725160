/**
 * The scheduler's own CPU time per step at 256 running requests (no model): schedule(),
 * the batch record encode + decode that the rings carry, the result record, and
 * process(). Results are synthetic tokens; only the host-side cost is measured.
 *
 *   deno run -A bench/scheduler_bench.ts [--running 256] [--page-size 1] [--steps 2000]
 */
import { parseArgs } from "node:util";
import { Scheduler } from "../src/scheduler/scheduler.ts";
import { decodeBatch, decodeResult, encodeBatch, encodeResult } from "../src/ipc/batch_codec.ts";
import { defaultSamplingParams } from "../src/engine/types.ts";
import type { ForwardResult } from "../src/ipc/batch.ts";

const { values } = parseArgs({
  options: {
    running: { type: "string", default: "256" },
    "page-size": { type: "string", default: "1" },
    steps: { type: "string", default: "2000" },
    cache: { type: "string", default: "radix" },
  },
});
const running = Number(values.running), pageSize = Number(values["page-size"]);
const steps = Number(values.steps);

const s = new Scheduler({
  pageSize,
  numPages: Math.ceil((running * (512 + steps + 64)) / pageSize),
  maxRows: running,
  maxPrefillLength: 8192,
  maxBatchTokens: 8192 + running,
  maxContextLen: 1 << 20,
  vocabSize: 151936,
  eosTokenIds: [151645],
  cache: values.cache as "radix" | "naive",
});
const shared = Array.from({ length: 256 }, (_, i) => 1000 + i);
for (let i = 0; i < running; i++) {
  s.submit({
    id: `r${i}`,
    promptIds: [...shared, ...Array.from({ length: 256 }, (_, k) => 5000 + i * 7 + k)],
    params: { ...defaultSamplingParams(), maxTokens: steps + 16, ignoreEos: true },
    seed: BigInt(i),
  });
}

function result(id: number, n: number, t: number): ForwardResult {
  return {
    id,
    tokens: new Int32Array(n).fill(100 + (t % 1000)),
    logprobs: new Float32Array(n).fill(-1),
    topIds: new Array(n).fill(null),
    topLogprobs: new Array(n).fill(null),
    promptLogprobs: new Array(n).fill(null),
    promptTopIds: new Array(n).fill(null),
    promptTopLogprobs: new Array(n).fill(null),
    seconds: 0,
  };
}

// Admit everything (prefill steps), then time steady decode steps.
let guard = 0;
while (s.running.some((r) => !r.decoding) || s.waiting.length > 0) {
  const plan = s.schedule()!;
  s.process(plan, result(plan.batch.id, plan.batch.entries.length, 0));
  s.takeEvents();
  if (++guard > 1000) throw new Error("admission did not finish");
}
const times: number[] = [];
let sched = 0, codec = 0, proc = 0;
for (let t = 0; t < steps; t++) {
  const t0 = performance.now();
  const plan = s.schedule()!;
  const t1 = performance.now();
  const rec = encodeBatch(plan.batch).slice(); // the ring copies it
  decodeBatch(rec); // what the worker does
  const res = decodeResult(
    encodeResult(result(plan.batch.id, plan.batch.entries.length, t)).slice(),
  );
  const t2 = performance.now();
  s.process(plan, res);
  s.takeEvents();
  const t3 = performance.now();
  if (plan.batch.entries.length !== running) throw new Error("not a full decode batch");
  sched += t1 - t0;
  codec += t2 - t1;
  proc += t3 - t2;
  times.push(t3 - t0);
}
times.sort((a, b) => a - b);
const us = (ms: number) => (ms * 1000).toFixed(1);
console.log(
  `scheduler step at ${running} running requests, page size ${pageSize}, ${values.cache} cache:\n` +
    `  mean ${us((sched + codec + proc) / steps)} us (schedule ${us(sched / steps)}, ` +
    `codec ${us(codec / steps)}, process ${us(proc / steps)}); ` +
    `p50 ${us(times[steps >> 1])} us, p99 ${us(times[Math.floor(steps * 0.99)])} us`,
);
const m = s.metrics();
console.log(`  pages in use ${m.kvPagesInUse}, cached ${m.kvPagesCached}, free ${m.kvPagesFree}`);
