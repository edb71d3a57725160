/// <reference lib="deno.worker" />
/**
 * GPU worker: one per device (the CPU backend runs through the same worker). It loads
 * the native library, weights and KV pool, then serves forward batches from a ring in
 * order, pushing results to the other ring. Grammar matchers of structured outputs live
 * here (src/runtime/constraints.ts). While batch N runs on the device it waits on
 * "batch N+1 arrived or batch N done", whichever comes first (see serve()).
 *
 * Protocol: postMessage {type:"init", config, toWorker, fromWorker, fault}; answers
 * {type:"progress", stage, done, total}* (with tensor parallelism on CUDA also one
 * {type:"peer", info}, answered by {type:"peers", infos}), then {type:"ready", info} or {type:"error",
 * message}. A failure while serving posts {type:"fatal", message} and closes the rings.
 */
import { ModelRunner, type Pending } from "../src/runtime/model_runner.ts";
import type { PeerBufferInfo } from "../ffi/comm.ts";
import { loadModelConfig } from "../src/model/config.ts";
import { Ring } from "../src/ipc/ring.ts";
import {
  decodeBatch,
  encodeFailure,
  encodeResult,
  KIND_BATCH,
  KIND_SHUTDOWN,
  recordKind,
} from "../src/ipc/batch_codec.ts";
import type { ForwardBatch } from "../src/ipc/batch.ts";
import type { GpuWorkerConfig } from "../src/engine/config.ts";
import { type Fault, injectedFault } from "../src/engine/fault.ts";

interface InitMessage {
  type: "init";
  config: GpuWorkerConfig;
  toWorker: SharedArrayBuffer;
  fromWorker: SharedArrayBuffer;
  /** MINISGL_FAULT (src/engine/fault.ts), for the engine-death tests; null normally. */
  fault: Fault | null;
}

/** Thrown by serve to leave this worker the way a crash outside the loop would. */
class UncaughtFault extends Error {}

/** How long one wait for the next batch lasts while a batch is in flight, before the worker
 *  looks at that batch's event again (ms). A new batch wakes the wait at once. */
const POLL_MS = 0.02;

/**
 * Serves batches in order. With batch N in flight the worker waits for whichever comes first:
 * batch N+1 in the ring (launched at once, behind N on the stream, so the device never idles
 * on the host) or the end of N (its result is pushed at once, so the scheduler never waits
 * on a result that is ready). Two batches at most are in flight: the staging blocks are
 * double-buffered. On the CPU backend launch() computes synchronously and the event is done
 * right away, so each result goes out before the next batch is read.
 */
function serve(runner: ModelRunner, input: Ring, output: Ring, fault: Fault | null) {
  let batches = 0;
  let pending: Pending | null = null;
  const prof = Deno.env.get("MINISGL_WORKER_PROFILE") ? new HostProfile() : null;
  const trace = Deno.env.get("MINISGL_STEP_TRACE") ? new StepTrace() : null;
  let pendingConstrained = false;
  try {
    for (;;) {
      if (pending && runner.isDone(pending)) {
        trace?.done(pending.batch.id);
        output.push(encodeResult(runner.finish(pending)));
        pending = null;
      }
      prof?.mark();
      const msg = pending ? input.pop(POLL_MS) : input.pop();
      prof?.add(pending ? "waitNextInFlight" : "idle", pendingConstrained);
      if (msg === null) {
        if (!input.closed) continue; // timed out: look at the event again
        if (pending) output.push(encodeResult(runner.finish(pending)));
        return;
      }
      const kind = recordKind(msg);
      if (kind === KIND_SHUTDOWN) {
        if (pending) output.push(encodeResult(runner.finish(pending)));
        return;
      }
      if (kind !== KIND_BATCH) throw new Error(`unexpected record kind ${kind}`);
      if (fault && batches++ >= fault.after) {
        const err = injectedFault(fault.site, batches - 1);
        if (fault.site === "gpu") throw err;
        if (fault.site === "gpu-uncaught") throw new UncaughtFault(err.message);
      }
      const batch = decodeBatch(msg);
      trace?.launch(batch);
      const next = runner.launch(batch);
      const constrained = next.deferred;
      prof?.add("launch", constrained);
      // N ran before N+1 on the stream; its slot is reused by N+2.
      if (pending) {
        trace?.done(pending.batch.id);
        output.push(encodeResult(runner.finish(pending)));
      }
      prof?.add("finishPrevious", constrained);
      // A constrained N+1 samples now: token N has advanced the matchers, and the device is
      // still busy with N+1's forward pass while the masks are made.
      if (next.deferred) runner.sampleDeferred(next);
      prof?.add("masksAndSampling", constrained);
      prof?.batch(constrained);
      pending = next;
      pendingConstrained = constrained;
    }
  } finally {
    if (prof) console.error(prof.report());
  }
}

/** Host time of the serving loop by phase (MINISGL_WORKER_PROFILE=1), for constrained and
 *  free batches apart, printed when the worker stops: where a slow step spends its time
 *  when no device profiler is at hand. */
class HostProfile {
  #t = performance.now();
  #ms = [new Map<string, number>(), new Map<string, number>()];
  #batches = [0, 0];

  /** Start timing a phase. */
  mark(): void {
    this.#t = performance.now();
  }

  /** Add the time since the last mark/add to `phase` of constrained or free batches. */
  add(phase: string, constrained = false): void {
    const now = performance.now(), m = this.#ms[constrained ? 1 : 0];
    m.set(phase, (m.get(phase) ?? 0) + now - this.#t);
    this.#t = now;
  }

  /** One batch went by. */
  batch(constrained: boolean): void {
    this.#batches[constrained ? 1 : 0]++;
  }

  report(): string {
    const lines = ["free", "constrained"].map((kind, i) => {
      const n = Math.max(1, this.#batches[i]);
      const parts = [...this.#ms[i]].map(([k, v]) => `${k} ${(v / n * 1000).toFixed(0)} us`);
      return `${kind} batches ${this.#batches[i]}: ${parts.join(", ")}`;
    });
    return `gpu worker host time per batch: ${lines.join("; ")}`;
  }
}

/** One stderr line per batch (MINISGL_STEP_TRACE=1): when it was read from the ring and when
 *  its result was seen ready, in ms since the first batch, with its prefill and decode rows:
 *  the step timeline of a serving run, to tell device time from waiting. */
class StepTrace {
  #t0 = -1;
  #open = new Map<number, string>();

  #now(): number {
    const t = performance.now();
    if (this.#t0 < 0) this.#t0 = t;
    return t - this.#t0;
  }

  launch(b: ForwardBatch): void {
    let prefillTokens = 0, prefillRows = 0, decodeRows = 0;
    for (const e of b.entries) {
      if (e.inputIds === null) decodeRows++;
      else (prefillRows++, prefillTokens += e.qLen);
    }
    this.#open.set(
      b.id,
      `step ${b.id}: read ${this.#now().toFixed(1)} ms, prefill ${prefillRows} rows ` +
        `${prefillTokens} tokens, decode ${decodeRows} rows`,
    );
  }

  done(id: number): void {
    const line = this.#open.get(id);
    if (line === undefined) return;
    this.#open.delete(id);
    console.error(`${line}, ready ${this.#now().toFixed(1)} ms`);
  }
}

/** Tensor parallelism on CUDA: this rank's peer buffer goes to the main thread, which
 *  answers {type:"peers", infos} once every rank has sent its own. */
function exchangePeers(mine: PeerBufferInfo): Promise<PeerBufferInfo[]> {
  return new Promise((resolve) => {
    const onPeers = (ev: MessageEvent) => {
      if (ev.data?.type !== "peers") return;
      self.removeEventListener("message", onPeers);
      resolve(ev.data.infos);
    };
    self.addEventListener("message", onPeers);
    self.postMessage({ type: "peer", info: mine });
  });
}

self.onmessage = async (ev: MessageEvent<InitMessage>) => {
  if (ev.data?.type !== "init") return;
  const { config: c, toWorker, fromWorker, fault } = ev.data;
  const input = new Ring(toWorker), output = new Ring(fromWorker);
  let runner: ModelRunner;
  try {
    const cfg = await loadModelConfig(c.modelDir);
    runner = await ModelRunner.create(
      cfg,
      {
        backend: c.device,
        deviceIndex: c.deviceIndex,
        modelDir: c.modelDir,
        pageSize: c.pageSize,
        numPages: c.numPages,
        memFraction: c.memFraction,
        maxRows: c.maxRunningRequests,
        maxPrefillLength: c.maxPrefillLength,
        cudaGraphMaxBs: c.cudaGraphMaxBs,
        dtype: c.dtype,
        kvCacheDtype: c.kvCacheDtype,
        cpuThreads: c.cpuThreads,
        attn: c.attn,
        tpRank: c.tpRank,
        tpSize: c.tpSize,
        commId: c.commId,
        dummyWeightSeed: c.dummyWeightSeed,
      },
      (stage, done, total) => self.postMessage({ type: "progress", stage, done, total }),
      // Peer memory cannot reach the ranks of another host.
      c.nnodes > 1 ? null : exchangePeers,
    );
  } catch (e) {
    self.postMessage({ type: "error", message: (e as Error).message });
    return;
  }
  self.postMessage({ type: "ready", info: runner.info });
  // Serving blocks this thread (Atomics.wait); give the ready message a moment to leave.
  await new Promise((r) => setTimeout(r, 0));
  try {
    serve(runner, input, output, fault);
  } catch (e) {
    // Leaves the rings open and escapes this handler: nothing here tells the engine.
    if (e instanceof UncaughtFault) throw e;
    const message = (e as Error).message;
    self.postMessage({ type: "fatal", message });
    try {
      output.tryPush(encodeFailure(message));
    } catch {
      // the engine closed the rings already
    }
    input.close();
    output.close();
  }
  self.close();
};
