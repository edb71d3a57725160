/**
 * Configuration of the engine and of each GPU worker. The CLI (src/cli/) fills an
 * EngineConfig from flags; the engine derives one GpuWorkerConfig per tensor-parallel rank.
 */

import { DEFAULTS, type KvCacheDtype } from "../core/defaults.ts";

/** What one GPU worker (workers/gpu_worker.ts) is started with. */
export interface GpuWorkerConfig {
  /** Hugging Face model folder. */
  modelDir: string;
  device: "cpu" | "cuda";
  /** CUDA device ordinal (0 on the CPU). */
  deviceIndex: number;
  tpRank: number;
  tpSize: number;
  /** Tokens per KV page (a power of two, 1 .. 256). */
  pageSize: number;
  /** Exact number of KV pages, or null to size the pool from memFraction. */
  numPages: number | null;
  /** Fraction of free device memory (after weights) given to the KV pool. */
  memFraction: number;
  /** Page-table rows = the most requests that hold KV pages at once. */
  maxRunningRequests: number;
  /** Most new tokens in one batch (prefill chunk size). */
  maxPrefillLength: number;
  /** Largest decode batch captured into a CUDA graph (0 = no graphs). */
  cudaGraphMaxBs: number;
  dtype: "auto" | "bfloat16" | "float16" | "float32";
  /** KV cache storage: "auto" (the activation dtype) or "fp8_e4m3" (half the bytes). */
  kvCacheDtype: KvCacheDtype;
  /** Attention backend name(s): PREFILL[,DECODE] (today "native"). */
  attn: string;
  /** Threads of the CPU backend (0 = all cores). */
  cpuThreads: number;
  /** Fill weights on the device from this seed instead of reading safetensors (null:
   *  read the files). */
  dummyWeightSeed: number | null;
  /** The communicator's unique id, made once for all ranks (null when tpSize is 1). */
  commId: Uint8Array | null;
  /** Hosts the ranks span (--nnodes); each runs tpSize / nnodes of them. */
  nnodes: number;
}

/** Everything the engine is started with: the worker settings plus the scheduler's. */
export interface EngineConfig extends Omit<GpuWorkerConfig, "tpRank" | "commId"> {
  /** Cap on the context length (prompt + output), or null for the model's. */
  contextLength: number | null;
  /** "radix": share prompt prefixes through the radix cache; "naive": no sharing. */
  cache: "radix" | "naive";
  /** Requests waiting beyond the running ones before submit rejects new ones. */
  maxQueuedRequests: number;
  /** Run schedule and forward back to back instead of overlapped. */
  disableOverlapSchedule: boolean;
  /** Seed policy for requests without params.seed: null = a fresh random seed each;
   *  a number = seeds drawn from a generator seeded with it (reproducible runs). */
  randomSeed: number | null;
  /** This host's place among nnodes (0 runs the scheduler; see src/engine/nodes.ts). */
  nodeRank: number;
  /** Node 0's rendezvous address (HOST:PORT) when nnodes > 1, else null. */
  distInitAddr: string | null;
}

/** Tensor-parallel ranks on each node. */
export function ranksPerNode(c: Pick<EngineConfig, "tpSize" | "nnodes">): number {
  return c.tpSize / c.nnodes;
}

/** The engine configuration of the defaults table (src/core/defaults.ts), on CUDA. */
export function defaultEngineConfig(modelDir: string): EngineConfig {
  return {
    modelDir,
    device: "cuda",
    deviceIndex: 0,
    tpSize: DEFAULTS.tpSize,
    pageSize: DEFAULTS.pageSize,
    numPages: null,
    memFraction: DEFAULTS.memFraction,
    maxRunningRequests: DEFAULTS.maxRunningRequests,
    maxPrefillLength: DEFAULTS.maxPrefillLength,
    cudaGraphMaxBs: DEFAULTS.cudaGraphMaxBs,
    dtype: DEFAULTS.dtype,
    kvCacheDtype: DEFAULTS.kvCacheDtype,
    attn: DEFAULTS.attn,
    cpuThreads: DEFAULTS.cpuThreads,
    dummyWeightSeed: null,
    cache: DEFAULTS.cache,
    maxQueuedRequests: DEFAULTS.maxQueuedRequests,
    disableOverlapSchedule: false,
    contextLength: null,
    randomSeed: null,
    nnodes: 1,
    nodeRank: 0,
    distInitAddr: null,
  };
}

/** The GpuWorkerConfig of (global) rank `rank`: device = deviceIndex + its rank on its node. */
export function workerConfig(
  c: EngineConfig,
  rank: number,
  commId: Uint8Array | null,
): GpuWorkerConfig {
  return {
    modelDir: c.modelDir,
    device: c.device,
    deviceIndex: c.device === "cuda" ? c.deviceIndex + rank % ranksPerNode(c) : 0,
    tpRank: rank,
    tpSize: c.tpSize,
    pageSize: c.pageSize,
    numPages: c.numPages,
    memFraction: c.memFraction,
    maxRunningRequests: c.maxRunningRequests,
    maxPrefillLength: c.maxPrefillLength,
    cudaGraphMaxBs: c.cudaGraphMaxBs,
    dtype: c.dtype,
    kvCacheDtype: c.kvCacheDtype,
    attn: c.attn,
    cpuThreads: c.cpuThreads,
    dummyWeightSeed: c.dummyWeightSeed,
    commId,
    nnodes: c.nnodes,
  };
}
