/// <reference lib="deno.worker" />
/**
 * Scheduler worker: owns the Scheduler (admission, prefix cache, pages, batching) and the
 * overlap loop. Batches go to the GPU worker(s) through SharedArrayBuffer rings; token
 * events go back to the main thread, one postMessage per step.
 *
 * Protocol (main -> worker): {type:"init", config, overlap, toWorkers, fromWorkers, fault},
 * {type:"submit", req}, {type:"abort", id}, {type:"metrics", seq}, {type:"flush", seq},
 * {type:"ping"}, {type:"shutdown", abort}. Worker -> main: {type:"ready"},
 * {type:"events", events}, {type:"metrics", seq, metrics}, {type:"flushed", seq, ok},
 * {type:"pong"}, {type:"failing", error} (the loop died: sent before its requests' aborts),
 * {type:"stopped", error?}.
 */
import { Scheduler, type SchedulerConfig } from "../src/scheduler/scheduler.ts";
import { SchedulerLoop, type Transport } from "../src/scheduler/loop.ts";
import type { SubmitMessage } from "../src/scheduler/request.ts";
import { Ring } from "../src/ipc/ring.ts";
import {
  decodeFailure,
  decodeResult,
  encodeBatch,
  encodeShutdown,
  KIND_FAILURE,
  recordKind,
} from "../src/ipc/batch_codec.ts";
import { type Fault, injectedFault } from "../src/engine/fault.ts";

type InMessage =
  | {
    type: "init";
    config: SchedulerConfig;
    overlap: boolean;
    toWorkers: SharedArrayBuffer[];
    fromWorkers: SharedArrayBuffer[];
    fault: Fault | null;
  }
  | { type: "submit"; req: SubmitMessage }
  | { type: "abort"; id: string }
  | { type: "metrics"; seq: number }
  | { type: "flush"; seq: number }
  | { type: "ping" }
  | { type: "shutdown"; abort: boolean };

let sched: Scheduler | null = null;
let loop: SchedulerLoop | null = null;
let dead: string | null = null;

/** Rings to every rank; results are read from all (ranks answer in lockstep), rank 0's kept. */
function ringTransport(to: Ring[], from: Ring[], fault: Fault | null): Transport {
  let sent = 0;
  return {
    async send(batch) {
      if (fault && ++sent > fault.after) injectFault(fault, sent);
      const msg = encodeBatch(batch);
      try {
        for (const r of to) await r.pushAsync(msg);
      } catch (e) {
        // A worker that failed closed its ring after leaving its reason in its results ring.
        for (let i = 0; i < from.length; i++) {
          for (let m = from[i].tryPop(); m; m = from[i].tryPop()) {
            if (recordKind(m) === KIND_FAILURE) throw workerFailure(i, m);
          }
        }
        throw e;
      }
    },
    async recv() {
      let first: Int32Array | null = null;
      for (let i = 0; i < from.length; i++) {
        const m = await from[i].popAsync();
        if (m === null) return null;
        if (recordKind(m) === KIND_FAILURE) throw workerFailure(i, m);
        if (i === 0) first = m;
      }
      return decodeResult(first!);
    },
  };
}

/** A GPU worker's own error (its failure record), so that the engine fails with the cause
 *  whichever of this loop's report and the worker's reaches the engine first. */
function workerFailure(rank: number, record: Int32Array): Error {
  return new Error(`GPU worker ${rank}: ${decodeFailure(record)}`);
}

/** MINISGL_FAULT (src/engine/fault.ts): throw inside the loop, or once, outside it. */
function injectFault(fault: Fault, sent: number): void {
  if (fault.site === "scheduler") throw injectedFault(fault.site, sent - 1);
  if (fault.site === "scheduler-uncaught" && sent === fault.after + 1) {
    setTimeout(() => {
      throw injectedFault(fault.site, sent - 1);
    });
  }
}

function start(m: Extract<InMessage, { type: "init" }>): void {
  const to = m.toWorkers.map((b) => new Ring(b));
  const from = m.fromWorkers.map((b) => new Ring(b));
  const s = new Scheduler(m.config);
  sched = s;
  const l = new SchedulerLoop(
    s,
    ringTransport(to, from, m.fault),
    m.overlap,
    (events) => self.postMessage({ type: "events", events }),
    (error) => self.postMessage({ type: "failing", error }),
  );
  loop = l;
  self.postMessage({ type: "ready" });
  l.run().then(
    () => {
      for (const r of to) if (!r.closed) r.tryPush(encodeShutdown());
      self.postMessage({ type: "stopped", steps: l.steps, cpuSeconds: l.cpuSeconds });
    },
    (e: Error) => {
      dead = e.message;
      for (const r of to) r.close();
      self.postMessage({ type: "stopped", error: e.message });
    },
  );
}

self.onmessage = (ev: MessageEvent<InMessage>) => {
  const m = ev.data;
  switch (m.type) {
    case "init":
      start(m);
      break;
    case "submit":
      if (!sched || !loop) break;
      if (dead) {
        self.postMessage({
          type: "events",
          events: [[m.req.id, {
            tokens: [],
            finish: {
              reason: "abort",
              promptTokens: m.req.promptIds.length,
              completionTokens: 0,
              cachedTokens: 0,
              error: dead,
            },
          }]],
        });
        break;
      }
      sched.submit(m.req);
      {
        const ev = sched.takeEvents(); // an immediate rejection
        if (ev.length) self.postMessage({ type: "events", events: ev });
      }
      loop.notify();
      break;
    case "abort":
      sched?.abort(m.id);
      loop?.notify();
      break;
    case "metrics":
      if (sched) self.postMessage({ type: "metrics", seq: m.seq, metrics: sched.metrics() });
      break;
    case "flush":
      self.postMessage({ type: "flushed", seq: m.seq, ok: sched?.flushCache() ?? false });
      break;
    case "ping":
      self.postMessage({ type: "pong" });
      break;
    case "shutdown":
      loop?.stop(m.abort);
      break;
  }
};
