/**
 * startEngine: spawns the GPU worker(s) and the scheduler worker, wires their rings, and
 * returns the Engine of src/engine/types.ts. The main thread only forwards requests and
 * turns the scheduler's per-step event messages into one async stream per request.
 */

import { makeUniqueId } from "../../ffi/comm.ts";
import { loadModelConfig } from "../model/config.ts";
import { tpError } from "../model/tp.ts";
import { Ring } from "../ipc/ring.ts";
import type { WorkerInfo } from "../ipc/batch.ts";
import type { SchedulerConfig } from "../scheduler/scheduler.ts";
import { type SubmitMessage, validateRequest } from "../scheduler/request.ts";
import type { EngineConfig } from "./config.ts";
import { type EngineProgress, type GpuWorker, ringSizes, startNodeWorkers } from "./gpu_workers.ts";
import { acceptNodes, RemoteNodes } from "./nodes.ts";
import { EventStream } from "./stream.ts";
import { type Fault, faultFromEnv } from "./fault.ts";
import type { Engine, EngineInfo, EngineMetrics, EngineRequest, TokenEvent } from "./types.ts";

export type { EngineProgress } from "./gpu_workers.ts";
export { ringSizes } from "./gpu_workers.ts";

/** Seeds of requests without one: random, or reproducible from config.randomSeed. */
function seedSource(base: number | null): () => bigint {
  if (base === null) {
    return () => crypto.getRandomValues(new BigUint64Array(1))[0];
  }
  let state = BigInt.asUintN(64, BigInt(Math.trunc(base)));
  return () => {
    // splitmix64
    state = BigInt.asUintN(64, state + 0x9E3779B97F4A7C15n);
    let z = state;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94D049BB133111EBn);
    return z ^ (z >> 31n);
  };
}

/** How long metrics() waits for the scheduler's answer. */
const METRICS_TIMEOUT_MS = 10_000;
/** The scheduler answers a ping every HEARTBEAT_MS; silent for SCHEDULER_SILENCE_MS (a hung
 *  or vanished worker), the engine is declared dead so that no stream waits forever. */
const HEARTBEAT_MS = 1_000;
const SCHEDULER_SILENCE_MS = 30_000;

/** Start the engine: GPU workers (one per tensor-parallel rank of this node), then the
 *  scheduler. With nnodes > 1 this is node 0: it first waits for the other nodes
 *  (src/engine/nodes.ts), whose ranks get the batches through relays. */
export async function startEngine(
  config: EngineConfig,
  onProgress?: (p: EngineProgress) => void,
  log: (line: string) => void = () => {},
): Promise<Engine> {
  const model = await loadModelConfig(config.modelDir);
  const tpErr = tpError(model, config.tpSize);
  if (tpErr) throw new Error(tpErr);
  const rings = ringSizes(config, model.maxPositionEmbeddings);
  // One communicator id for the group, made here; every rank joins with it.
  let commId: Uint8Array | null = null;
  let nodes: RemoteNodes | null = null;
  if (config.nnodes > 1) {
    const joined = await acceptNodes(config, log);
    commId = joined.commId;
    nodes = new RemoteNodes(joined.links, rings.toWorker);
  } else if (config.tpSize > 1) commId = makeUniqueId(config.device);
  const fault = faultFromEnv();
  const remoteInfos = nodes?.ready() ?? Promise.resolve([]);
  let gpus: GpuWorker[] = [], infos: WorkerInfo[];
  try {
    const remoteFailed = remoteInfos.then(() => new Promise<never>(() => {}));
    gpus = await startNodeWorkers(config, 0, commId, rings, fault, onProgress, remoteFailed);
    infos = [...gpus.map((g) => g.info), ...await remoteInfos];
  } catch (e) {
    for (const g of gpus) g.worker.terminate();
    nodes?.close();
    throw e;
  }
  const w = gpus[0].info;
  const maxContextLen = Math.min(
    model.maxPositionEmbeddings,
    w.maxSeqLen,
    w.numPages * w.pageSize,
    config.contextLength ?? Infinity,
  );
  const schedConfig: SchedulerConfig = {
    pageSize: w.pageSize,
    // Every rank sized its own pool: the scheduler hands out pages that all of them hold.
    numPages: Math.min(...infos.map((i) => i.numPages)),
    maxRows: Math.min(w.maxRows, config.maxRunningRequests),
    maxPrefillLength: Math.max(1, Math.min(config.maxPrefillLength, w.maxBatchTokens)),
    maxBatchTokens: w.maxBatchTokens,
    maxContextLen,
    vocabSize: w.vocabSize,
    eosTokenIds: model.eosTokenIds,
    cache: config.cache,
    maxRecordWords: new Ring(gpus[0].to).maxMessageWords,
  };
  const info: EngineInfo = {
    modelName: config.modelDir.replace(/[\\/]+$/, "").split(/[\\/]/).pop() ?? config.modelDir,
    modelDir: config.modelDir,
    backend: w.backend,
    deviceName: w.deviceName,
    maxContextLen,
    vocabSize: w.vocabSize,
    eosTokenIds: model.eosTokenIds,
    numPages: schedConfig.numPages,
    pageSize: w.pageSize,
  };
  const scheduler = new Worker(new URL("../../workers/scheduler_worker.ts", import.meta.url), {
    type: "module",
  });
  const engine = new EngineImpl(info, config, schedConfig, scheduler, gpus, fault, nodes);
  await engine.ready;
  return engine;
}

/** The main-thread side of the engine. */
class EngineImpl implements Engine {
  readonly ready: Promise<void>;
  #streams = new Map<string, EventStream>();
  #metricsWaiters = new Map<
    number,
    { resolve: (m: EngineMetrics) => void; reject: (e: Error) => void }
  >();
  #flushWaiters = new Map<number, (ok: boolean) => void>();
  #seq = 0;
  #seed: () => bigint;
  #closing = false;
  #stopped: Promise<void>;
  #fatal: string | null = null;
  #onDead!: (reason: string) => void;
  readonly dead: Promise<string> = new Promise((r) => (this.#onDead = r));
  #lastPong = performance.now();
  #heartbeat: ReturnType<typeof setInterval>;

  constructor(
    readonly info: EngineInfo,
    readonly config: EngineConfig,
    readonly schedConfig: SchedulerConfig,
    readonly scheduler: Worker,
    readonly gpus: { worker: Worker; to: SharedArrayBuffer; from: SharedArrayBuffer }[],
    fault: Fault | null,
    readonly nodes: RemoteNodes | null = null,
  ) {
    this.#seed = seedSource(config.randomSeed);
    let onReady!: () => void, onStopped!: () => void;
    this.ready = new Promise((r) => (onReady = r));
    this.#stopped = new Promise((r) => (onStopped = r));
    scheduler.onmessage = (ev: MessageEvent) => {
      const m = ev.data;
      if (m.type === "events") this.#dispatch(m.events);
      else if (m.type === "metrics") {
        this.#metricsWaiters.get(m.seq)?.resolve(m.metrics);
        this.#metricsWaiters.delete(m.seq);
      } else if (m.type === "flushed") {
        this.#flushWaiters.get(m.seq)?.(m.ok);
        this.#flushWaiters.delete(m.seq);
      } else if (m.type === "pong") this.#lastPong = performance.now();
      // The loop died: fail (ending every stream as the engine's error) before its aborts.
      else if (m.type === "failing") this.#fail(`scheduler: ${m.error}`);
      else if (m.type === "ready") onReady();
      else if (m.type === "stopped") {
        if (m.error) this.#fail(`scheduler: ${m.error}`);
        onStopped();
      }
    };
    scheduler.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      this.#fail(`scheduler: ${e.message}`);
      onStopped();
    };
    this.#heartbeat = setInterval(() => {
      if (performance.now() - this.#lastPong > SCHEDULER_SILENCE_MS) {
        this.#fail(`scheduler: no answer for ${SCHEDULER_SILENCE_MS / 1000} s`);
        onStopped();
      } else this.scheduler.postMessage({ type: "ping" });
    }, HEARTBEAT_MS);
    // The heartbeat alone must not keep a finished process alive.
    Deno.unrefTimer(Number(this.#heartbeat));
    for (const [rank, g] of gpus.entries()) {
      g.worker.onmessage = (ev: MessageEvent) => {
        if (ev.data?.type === "fatal") this.#fail(`GPU worker ${rank}: ${ev.data.message}`);
      };
      g.worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#fail(`GPU worker ${rank}: ${e.message}`);
      };
    }
    nodes?.onLost((reason) => this.#fail(reason));
    scheduler.postMessage({
      type: "init",
      config: schedConfig,
      overlap: !config.disableOverlapSchedule,
      // Other nodes' ranks get every batch through their relays; only local results are read.
      toWorkers: [...gpus.map((g) => g.to), ...nodes?.rings ?? []],
      fromWorkers: gpus.map((g) => g.from),
      fault,
    });
  }

  get failure(): string | null {
    return this.#fatal;
  }

  /** A worker died: the engine is dead for good. Closing the rings stops the other
   *  workers; every open stream and metrics call ends here with the reason, without
   *  waiting on a scheduler that may be gone. */
  #fail(message: string): void {
    if (this.#fatal !== null) return;
    this.#fatal = message;
    clearInterval(this.#heartbeat);
    for (const g of this.gpus) {
      new Ring(g.to).close();
      new Ring(g.from).close();
    }
    this.nodes?.close();
    this.#endStreams(message);
    for (const w of this.#metricsWaiters.values()) w.reject(new Error(message));
    this.#metricsWaiters.clear();
    for (const w of this.#flushWaiters.values()) w(false);
    this.#flushWaiters.clear();
    this.#onDead(message);
  }

  /** Ends every open stream with `error`. */
  #endStreams(error: string): void {
    for (const [id, s] of this.#streams) {
      s.push({
        tokens: [],
        finish: { reason: "abort", promptTokens: 0, completionTokens: 0, cachedTokens: 0, error },
      });
      this.#streams.delete(id);
    }
  }

  #dispatch(events: [string, TokenEvent][]): void {
    for (const [id, ev] of events) {
      const s = this.#streams.get(id);
      if (!s) continue;
      s.push(ev);
      if (ev.finish) this.#streams.delete(id);
    }
  }

  #reject(req: EngineRequest, error: string): AsyncIterable<TokenEvent> {
    const s = new EventStream(() => {});
    s.push({
      tokens: [],
      finish: {
        reason: "abort",
        promptTokens: req.promptIds.length,
        completionTokens: 0,
        cachedTokens: 0,
        error,
      },
    });
    return s;
  }

  submit(req: EngineRequest): AsyncIterable<TokenEvent> {
    if (this.#closing || this.#fatal) {
      return this.#reject(req, this.#fatal ?? "the engine is shutting down");
    }
    if (this.#streams.has(req.id)) return this.#reject(req, `duplicate request id ${req.id}`);
    const cap = this.schedConfig.maxRows + this.config.maxQueuedRequests;
    if (this.#streams.size >= cap) {
      return this.#reject(req, `too many requests (${cap} running or queued)`);
    }
    const err = validateRequest(req.promptIds, req.params, this.schedConfig);
    if (err) return this.#reject(req, err);
    const seed = req.params.seed !== undefined
      ? BigInt.asUintN(64, BigInt(Math.trunc(req.params.seed)))
      : this.#seed();
    const stream = new EventStream(() => this.abort(req.id));
    this.#streams.set(req.id, stream);
    const msg: SubmitMessage = { id: req.id, promptIds: req.promptIds, params: req.params, seed };
    this.scheduler.postMessage({ type: "submit", req: msg });
    return stream;
  }

  abort(id: string): void {
    if (this.#streams.has(id)) this.scheduler.postMessage({ type: "abort", id });
  }

  metrics(): Promise<EngineMetrics> {
    if (this.#fatal !== null) return Promise.reject(new Error(this.#fatal));
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#metricsWaiters.delete(seq);
        reject(new Error(`the scheduler did not answer within ${METRICS_TIMEOUT_MS} ms`));
      }, METRICS_TIMEOUT_MS);
      this.#metricsWaiters.set(seq, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.scheduler.postMessage({ type: "metrics", seq });
    });
  }

  flushCache(): Promise<boolean> {
    if (this.#closing || this.#fatal) return Promise.resolve(false);
    const seq = ++this.#seq;
    return new Promise((resolve) => {
      // Like metrics(), never waits for good on a scheduler that does not answer.
      const timer = setTimeout(() => {
        this.#flushWaiters.delete(seq);
        resolve(false);
      }, METRICS_TIMEOUT_MS);
      this.#flushWaiters.set(seq, (ok) => {
        clearTimeout(timer);
        resolve(ok);
      });
      this.scheduler.postMessage({ type: "flush", seq });
    });
  }

  async shutdown(options?: { abort?: boolean }): Promise<void> {
    this.#closing = true;
    clearInterval(this.#heartbeat);
    if (this.#fatal === null) {
      this.scheduler.postMessage({ type: "shutdown", abort: options?.abort ?? false });
      await this.#stopped;
    }
    // Streams the scheduler could not finish (a dead worker) end here.
    this.#endStreams(this.#fatal ?? "the engine shut down");
    // The shutdown record reaches the other nodes' workers, then their links close.
    this.nodes?.close();
    // The GPU workers exit on the shutdown record; give them a moment to free memory.
    await new Promise((r) => setTimeout(r, 50));
    for (const g of this.gpus) g.worker.terminate();
    this.scheduler.terminate();
  }
}
