/**
 * Attention backends: rotary + KV-cache store, then paged attention over the cache.
 * A backend is picked per phase (`--attn PREFILL,DECODE`), like Mini-SGLang's
 * HybridBackend; today the library's own kernels are the one family ("native").
 */
import { attentionDecode, attentionExtend, type Ops, type Tensor } from "../../ffi/ops.ts";
import type { DType } from "../../ffi/device.ts";

/** Device-side description of one forward batch, passed down explicitly. */
export interface ForwardMeta {
  numTokens: number;
  batch: number;
  /** Every entry has exactly one new token (decode kernels and graphs apply). */
  isDecode: boolean;
  maxQLen: number;
  /** Upper bound of seqLens (the captured maximum when replaying a graph). */
  maxSeqLen: number;
  inputIds: Tensor;
  positions: Tensor;
  slots: Tensor;
  rows: Tensor;
  seqLens: Tensor;
  qStarts: Tensor;
  pageTable: Tensor;
  pageSize: number;
}

export interface HeadShape {
  hq: number;
  hkv: number;
  headDim: number;
  eps: number;
}

/** The KV pool: per layer, k and v of [numSlots, hkv, headDim]. */
export interface KvCache {
  k: Tensor[];
  v: Tensor[];
}

/** What the decoder needs from attention. */
export interface AttentionBackend {
  storeAndAttend(
    layer: number,
    qkv: Tensor,
    out: Tensor,
    qNorm: Tensor | null,
    kNorm: Tensor | null,
    meta: ForwardMeta,
    h: HeadShape,
  ): void;
}

/** Names accepted by `--attn`. */
export const ATTENTION_BACKENDS = ["native"] as const;

/** Validates `--attn PREFILL[,DECODE]` ("" = default); throws a one-line Error. */
export function checkAttentionNames(spec: string): void {
  if (!spec) return;
  const names = spec.split(",");
  if (names.length > 2) throw new Error(`--attn takes PREFILL[,DECODE], got "${spec}"`);
  for (const n of names) {
    if (!(ATTENTION_BACKENDS as readonly string[]).includes(n)) {
      throw new Error(
        `--attn: unknown attention backend "${n}" (known: ${ATTENTION_BACKENDS.join(", ")})`,
      );
    }
  }
}

/** The library's own kernels: extend for prefill/mixed batches, split-K decode. */
export class NativeAttention implements AttentionBackend {
  constructor(
    private ops: Ops,
    private kv: KvCache,
    private cosSin: Tensor,
    private wDtype: DType,
  ) {}

  storeAndAttend(
    layer: number,
    qkv: Tensor,
    out: Tensor,
    qNorm: Tensor | null,
    kNorm: Tensor | null,
    m: ForwardMeta,
    h: HeadShape,
  ): void {
    const k = this.kv.k[layer], v = this.kv.v[layer];
    this.ops.ropeStoreKv(
      qkv,
      m.positions,
      qNorm,
      kNorm,
      h.eps,
      this.cosSin,
      m.slots,
      k,
      v,
      m.numTokens,
      h.hq,
      h.hkv,
      h.headDim,
      this.wDtype,
    );
    const args = {
      out,
      q: qkv,
      qRowStride: (h.hq + 2 * h.hkv) * h.headDim,
      kCache: k,
      vCache: v,
      pageTable: m.pageTable,
      rows: m.rows,
      seqLens: m.seqLens,
      qStarts: m.qStarts,
      batch: m.batch,
      totalQ: m.numTokens,
      maxQLen: m.maxQLen,
      maxSeqLen: m.maxSeqLen,
      hq: h.hq,
      hkv: h.hkv,
      headDim: h.headDim,
      pageSize: m.pageSize,
      scale: 1 / Math.sqrt(h.headDim),
    };
    if (m.isDecode) attentionDecode(this.ops, args);
    else attentionExtend(this.ops, args);
  }
}
