/**
 * How a model is split over tensor-parallel ranks (Megatron style, as SGLang does):
 * - q/k/v and gate/up are column-parallel: each rank holds a contiguous block of output
 *   rows (whole heads), so attention and the MLP run on local heads with no communication;
 * - o_proj and down_proj are row-parallel: each rank holds a block of input columns and the
 *   partial sums are all-reduced (a bias is added by rank 0 only);
 * - with fewer KV heads than ranks, each KV head is replicated on ranks / kv_heads ranks
 *   (rank r holds head floor(r * kv / ranks)); each rank's KV pool holds only its heads;
 * - the embedding and the LM head are vocab-parallel: rank r holds rows
 *   [r * V', min(V, (r + 1) * V')) with V' = ceil(V / ranks). The embedding is a masked
 *   gather plus an all-reduce; the LM head computes local logits that an all-gather puts
 *   side by side into the full [rows, V] logits.
 *
 * Sampling: every rank gathers the same full logits and samples with the same parameters
 * and seeds (sampling is deterministic given those), so every rank writes the same token
 * into its device token table and no broadcast is needed; rank 0's results are returned.
 */
import type { ModelConfig } from "./config.ts";

/** This rank's part of the model. */
export interface TpShard {
  rank: number;
  size: number;
  /** Local query heads. */
  numHeads: number;
  /** Local KV heads (1 when replicated). */
  numKvHeads: number;
  /** First global KV head held by this rank. */
  kvHeadStart: number;
  /** Local MLP width. */
  intermediate: number;
  /** First vocabulary row held by this rank. */
  vocabStart: number;
  /** Rows of the local embedding / LM head (V', the same on every rank). */
  vocabRows: number;
  /** Of those, rows that exist in the model (the last rank may hold fewer). */
  vocabRealRows: number;
}

/** Why `cfg` cannot be split over `size` ranks, or null when it can. */
export function tpError(cfg: ModelConfig, size: number): string | null {
  if (size === 1) return null;
  if (cfg.numHeads % size !== 0) {
    return `--tp ${size}: ${cfg.numHeads} attention heads do not divide over ${size} ranks`;
  }
  const kv = cfg.numKvHeads;
  if (kv >= size ? kv % size !== 0 : size % kv !== 0) {
    return `--tp ${size}: ${kv} KV heads do not divide over ${size} ranks (nor ranks over heads)`;
  }
  if (cfg.intermediateSize % size !== 0) {
    return `--tp ${size}: intermediate size ${cfg.intermediateSize} does not divide over ${size} ranks`;
  }
  return null;
}

/** The shard of rank `rank` of `size`; throws the line of tpError when it cannot split. */
export function tpShard(cfg: ModelConfig, rank: number, size: number): TpShard {
  const err = tpError(cfg, size);
  if (err) throw new Error(err);
  const kv = cfg.numKvHeads;
  const numKvHeads = kv >= size ? kv / size : 1;
  const kvHeadStart = kv >= size ? rank * numKvHeads : Math.floor((rank * kv) / size);
  const vocabRows = Math.ceil(cfg.vocabSize / size);
  const vocabStart = rank * vocabRows;
  return {
    rank,
    size,
    numHeads: cfg.numHeads / size,
    numKvHeads,
    kvHeadStart,
    intermediate: cfg.intermediateSize / size,
    vocabStart,
    vocabRows,
    vocabRealRows: Math.max(0, Math.min(cfg.vocabSize, vocabStart + vocabRows) - vocabStart),
  };
}
