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

/** An attention backend, Mini-SGLang's interface: metadata preparation outside the
 *  forward pass, hooks around CUDA-graph capture and replay, and the per-layer call. */
export interface AttentionBackend {
  /** Per-batch metadata, before the forward pass (never inside a graph). */
  prepare(meta: ForwardMeta): void;
  /** Before the decode graph of `bs` rows is captured (fix the buffers it will read). */
  prepareCapture(bs: number): void;
  /** Before that graph is replayed, once the batch's block is on the device. */
  prepareReplay(bs: number): void;
  /** Rotary + KV store of the layer's new tokens, then attention into `out`. */
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

/** One backend for prefill/mixed batches and one for decode (`--attn PREFILL,DECODE`). */
export class HybridAttention implements AttentionBackend {
  constructor(readonly prefill: AttentionBackend, readonly decode: AttentionBackend) {}
  private pick(meta: ForwardMeta): AttentionBackend {
    return meta.isDecode ? this.decode : this.prefill;
  }
  prepare(meta: ForwardMeta): void {
    this.pick(meta).prepare(meta);
  }
  prepareCapture(bs: number): void {
    this.decode.prepareCapture(bs);
  }
  prepareReplay(bs: number): void {
    this.decode.prepareReplay(bs);
  }
  storeAndAttend(
    layer: number,
    qkv: Tensor,
    out: Tensor,
    qNorm: Tensor | null,
    kNorm: Tensor | null,
    meta: ForwardMeta,
    h: HeadShape,
  ): void {
    this.pick(meta).storeAndAttend(layer, qkv, out, qNorm, kNorm, meta, h);
  }
}

/** Names accepted by `--attn`. */
export const ATTENTION_BACKENDS = ["native"] as const;

/** Validates `--attn PREFILL[,DECODE]` ("" = default); throws a one-line Error. Returns
 *  the two names (the one name serves both phases). */
export function parseAttentionNames(spec: string): [string, string] {
  const names = spec ? spec.split(",") : ["native"];
  if (names.length > 2) throw new Error(`--attn takes PREFILL[,DECODE], got "${spec}"`);
  for (const n of names) {
    if (!(ATTENTION_BACKENDS as readonly string[]).includes(n)) {
      throw new Error(
        `--attn: unknown attention backend "${n}" (known: ${ATTENTION_BACKENDS.join(", ")})`,
      );
    }
  }
  return [names[0], names[1] ?? names[0]];
}

/** The hybrid backend of `--attn`; `make` builds a backend by name. */
export function createAttention(
  spec: string,
  make: (name: string) => AttentionBackend,
): HybridAttention {
  const [prefill, decode] = parseAttentionNames(spec);
  const p = make(prefill);
  return new HybridAttention(p, decode === prefill ? p : make(decode));
}

/** The library's own kernels: extend for prefill/mixed batches, split-K decode. They read
 *  seq_lens and the page table on the device, so there is no metadata to prepare. */
export class NativeAttention implements AttentionBackend {
  constructor(
    private ops: Ops,
    private kv: KvCache,
    private cosSin: Tensor,
    private wDtype: DType,
  ) {}

  prepare(): void {}
  prepareCapture(): void {}
  prepareReplay(): void {}

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
