/**
 * Starting GPU workers: one Worker per tensor-parallel rank of this node, each with a ring
 * for batches and one for results (sized so that any one request fits), and the broker of
 * the one-shot all-reduce's peer buffers. Used by the engine (node 0) and by the other
 * nodes of a multi-node run (worker_node.ts).
 */

import type { PeerBufferInfo } from "../../ffi/comm.ts";
import { createRingBuffer, ringBytesFor } from "../ipc/ring.ts";
import { requestRecordWordsBound, resultRecordWordsBound } from "../ipc/batch_codec.ts";
import type { WorkerInfo } from "../ipc/batch.ts";
import { type EngineConfig, ranksPerNode, workerConfig } from "./config.ts";
import type { Fault } from "./fault.ts";

/** Start-up progress of one GPU worker (loading weights, sizing the pool, graphs). */
export interface EngineProgress {
  rank: number;
  stage: string;
  done: number;
  total: number;
}

/** Peer buffers of the one-shot all-reduce: each rank sends its own; once all have, each
 *  rank gets the whole list (rank order). */
class PeerBroker {
  #infos: (PeerBufferInfo | undefined)[];
  #workers: Worker[] = [];
  constructor(private size: number) {
    this.#infos = new Array(size);
  }
  add(rank: number, info: PeerBufferInfo, worker: Worker) {
    this.#infos[rank] = info;
    this.#workers[rank] = worker;
    if (this.#infos.filter((i) => i).length < this.size) return;
    for (const w of this.#workers) w.postMessage({ type: "peers", infos: this.#infos });
  }
}

/** Largest ring the engine makes: a model whose whole context needs a larger batch record
 *  gets requests past that length rejected at submit instead. */
const MAX_RING_BYTES = 64 << 20;

/** Ring sizes from the configuration, so that any one request the model's context allows
 *  fits a batch record (the scheduler packs batches up to the limit) and any batch's
 *  result fits a result record. */
export function ringSizes(
  config: EngineConfig,
  maxPositionEmbeddings: number,
): { toWorker: number; fromWorker: number } {
  const maxBatchTokens = config.maxPrefillLength + config.maxRunningRequests;
  const batch = requestRecordWordsBound(maxPositionEmbeddings, config.pageSize, maxBatchTokens);
  const result = resultRecordWordsBound(config.maxRunningRequests, maxBatchTokens);
  return {
    toWorker: Math.min(MAX_RING_BYTES, ringBytesFor(batch)),
    fromWorker: ringBytesFor(result),
  };
}

/** Start one GPU worker (tensor-parallel rank `rank`) and wait until it is ready. `peers`:
 *  the broker of the one-shot all-reduce, null when the ranks span hosts. */
export function startGpuWorker(
  config: EngineConfig,
  rank: number,
  commId: Uint8Array | null,
  peers: PeerBroker | null,
  rings: { toWorker: number; fromWorker: number },
  fault: Fault | null,
  onProgress?: (p: EngineProgress) => void,
): Promise<{ worker: Worker; info: WorkerInfo; to: SharedArrayBuffer; from: SharedArrayBuffer }> {
  const worker = new Worker(new URL("../../workers/gpu_worker.ts", import.meta.url), {
    type: "module",
  });
  const to = createRingBuffer(rings.toWorker), from = createRingBuffer(rings.fromWorker);
  return new Promise((resolve, reject) => {
    worker.onmessage = (ev: MessageEvent) => {
      const m = ev.data;
      if (m.type === "progress") onProgress?.({ rank, ...m });
      else if (m.type === "peer") peers?.add(rank, m.info, worker);
      else if (m.type === "ready") resolve({ worker, info: m.info, to, from });
      else if (m.type === "error") {
        worker.terminate();
        reject(new Error(`GPU worker ${rank}: ${m.message}`));
      }
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      worker.terminate();
      reject(new Error(`GPU worker ${rank}: ${e.message}`));
    };
    worker.postMessage({
      type: "init",
      config: workerConfig(config, rank, commId),
      toWorker: to,
      fromWorker: from,
      fault: rank === 0 ? fault : null,
    });
  });
}

/** A started GPU worker and its rings. */
export type GpuWorker = Awaited<ReturnType<typeof startGpuWorker>>;

/** Starts this node's ranks (first .. first + ranksPerNode - 1) and waits for all; when one
 *  fails, ends the others and throws its error. `abandon` rejecting ends the wait at once
 *  (another node failed while the ranks wait for it in the communicator). */
export async function startNodeWorkers(
  config: EngineConfig,
  first: number,
  commId: Uint8Array | null,
  rings: { toWorker: number; fromWorker: number },
  fault: Fault | null,
  onProgress?: (p: EngineProgress) => void,
  abandon: Promise<never> = new Promise(() => {}),
): Promise<GpuWorker[]> {
  const local = ranksPerNode(config);
  // Peer memory cannot reach the ranks of another host.
  const peers = config.nnodes > 1 ? null : new PeerBroker(local);
  const settled = await Promise.race([
    Promise.allSettled(
      Array.from(
        { length: local },
        (_, i) => startGpuWorker(config, first + i, commId, peers, rings, fault, onProgress),
      ),
    ),
    abandon,
  ]);
  const failed = settled.find((s) => s.status === "rejected") as PromiseRejectedResult | undefined;
  const gpus = settled.flatMap((s) => s.status === "fulfilled" ? [s.value] : []);
  if (failed) {
    for (const g of gpus) g.worker.terminate();
    throw failed.reason;
  }
  return gpus;
}
