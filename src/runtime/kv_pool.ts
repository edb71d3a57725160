/**
 * The KV pool and the tables that address it: per layer, k and v of
 * [(numPages + 1) * pageSize, kvHeads, headDim] (the extra page is the dummy page that
 * padded rows of a CUDA graph write to), the page table [maxRows + 1, pages per row], the
 * per-row table of last sampled tokens, and the rotary table up to the longest sequence.
 * Sized once from --num-pages or from --mem-fraction of the memory left; never grown.
 */
import { type Device, DType, dtypeSize, type Handle, type Tensor } from "../../ffi/device.ts";
import type { ModelConfig } from "../model/config.ts";
import { ropeCosSin } from "../model/rope.ts";
import type { KvCache } from "./attention.ts";

/** What sizes the pool. */
export interface KvPoolOptions {
  backend: "cpu" | "cuda";
  pageSize: number;
  numPages: number | null;
  memFraction: number;
  maxRows: number;
}

export interface KvPool {
  kv: KvCache;
  pageTable: Tensor;
  tokenTable: Tensor;
  cosSin: Tensor;
  numPages: number;
  maxSeqLen: number;
}

/** Allocates the pool in `kvDtype` (the activation dtype, or fp8 e4m3) for `kvHeads` heads
 *  (this rank's, under tensor parallelism); the CPU backend caps the automatic size at 2 GiB. */
export function allocKvPool(
  dev: Device,
  cfg: ModelConfig,
  o: KvPoolOptions,
  kvDtype: DType,
  stream: Handle,
  kvHeads = cfg.numKvHeads,
): KvPool {
  const ps = o.pageSize;
  const bytesPerPage = cfg.numLayers * 2 * ps * kvHeads * cfg.headDim *
    dtypeSize(kvDtype);
  let numPages = o.numPages;
  if (numPages === null) {
    let budget = dev.memInfo().free * o.memFraction;
    if (o.backend === "cpu") budget = Math.min(budget, 2 * 2 ** 30);
    else budget -= 512 * 2 ** 20; // room for graphs and the cuBLASLt workspace
    numPages = Math.floor(budget / bytesPerPage) - 1;
  }
  if (numPages < 1) {
    throw new Error(`no memory left for the KV cache (${bytesPerPage} bytes a page)`);
  }
  const maxSeqLen = Math.min(cfg.maxPositionEmbeddings, numPages * ps);
  const k: Tensor[] = [], v: Tensor[] = [];
  const per = [(numPages + 1) * ps, kvHeads, cfg.headDim];
  for (let l = 0; l < cfg.numLayers; l++) {
    k.push(dev.alloc(kvDtype, per));
    v.push(dev.alloc(kvDtype, per));
  }
  const pageTable = dev.alloc(DType.I32, [o.maxRows + 1, Math.ceil(maxSeqLen / ps)]);
  // Every entry starts at the dummy page so that stale rows never point outside the pool.
  dev.upload(pageTable, new Int32Array(pageTable.numel).fill(numPages), stream);
  const tokenTable = dev.alloc(DType.I32, [o.maxRows + 1]);
  dev.memset(tokenTable, 0, stream);
  const rotDim = cfg.headDim; // partial rotary is not used by these architectures
  const cosSin = dev.alloc(DType.F32, [maxSeqLen, rotDim]);
  dev.upload(cosSin, ropeCosSin(cfg, maxSeqLen, rotDim), stream);
  dev.sync(stream);
  return { kv: { k, v }, pageTable, tokenTable, cosSin, numPages, maxSeqLen };
}
