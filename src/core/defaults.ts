/**
 * The one table of defaults: the command-line flags (src/cli/flags.ts), their --help text,
 * the engine's configuration (src/engine/config.ts) and the model runner's options
 * (src/runtime/model_runner.ts) all read it, so a default is changed in one place. Values
 * follow Mini-SGLang's where it has one. This module sits below every layer.
 */

/** KV cache storage: "auto" = the activation dtype; "fp8_e4m3" halves the cache's bytes
 *  (vLLM's and SGLang's --kv-cache-dtype; "fp8" is taken as "fp8_e4m3"). */
export const KV_CACHE_DTYPES = ["auto", "fp8_e4m3"] as const;
export type KvCacheDtype = (typeof KV_CACHE_DTYPES)[number];

/** A --kv-cache-dtype value; throws naming the accepted ones. */
export function parseKvCacheDtype(v: string): KvCacheDtype {
  if (v === "fp8") return "fp8_e4m3";
  if ((KV_CACHE_DTYPES as readonly string[]).includes(v)) return v as KvCacheDtype;
  throw new Error(`--kv-cache-dtype ${v}: one of auto, fp8, fp8_e4m3 (fp8_e5m2 is not supported)`);
}

/** Default values of the server, engine and runner settings. */
export const DEFAULTS = {
  host: "127.0.0.1",
  port: 1919,
  device: "auto",
  tpSize: 1,
  /** Tokens per KV page. */
  pageSize: 1,
  /** Fraction of free device memory (after weights) given to the KV pool. */
  memFraction: 0.9,
  maxRunningRequests: 256,
  maxPrefillLength: 8192,
  maxQueuedRequests: 4096,
  cache: "radix",
  /** Largest CUDA-graph decode batch; -1 = chosen from maxRunningRequests (0 on the CPU). */
  cudaGraphMaxBs: -1,
  dtype: "auto",
  kvCacheDtype: "auto" as KvCacheDtype,
  attn: "auto",
  /** 0 = all cores. */
  cpuThreads: 0,
  /** "auto": the model's generation_config.json gives the sampling defaults. */
  generationConfig: "auto",
  /** Seconds a client gets to send a request's headers, and a keep-alive connection may
   *  stay idle (uvicorn, behind SGLang, keeps them 5 s). */
  headerTimeout: 10,
  keepAliveTimeout: 30,
  /** Seconds in-flight requests may run on after SIGINT/SIGTERM before being aborted. */
  shutdownGrace: 30,
  /** Shell: most tokens per answer and the sampling temperature. */
  shellMaxTokens: 1024,
  shellTemperature: 0.7,
} as const;
