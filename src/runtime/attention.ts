/**
 * Attention backends: rotary + KV-cache store, then paged attention over the cache.
 * A backend is picked per phase (`--attn PREFILL,DECODE`), like Mini-SGLang's
 * HybridBackend. Names (`fa3`, `fa2`/`native`, `flashdecode`, Mini-SGLang's `fa`, `fi`,
 * `trtllm`, and `auto`) resolve to this library's kernels by device (resolveAttention).
 */
import {
  type AttentionArgs,
  attentionDecode,
  attentionExtend,
  type ExtendKernel,
  type Ops,
  type Tensor,
} from "../../ffi/ops.ts";
import { type Device, DType, type Handle } from "../../ffi/device.ts";

/** Device-side description of one forward batch, passed down explicitly. */
export interface ForwardMeta {
  numTokens: number;
  batch: number;
  /** Every entry has exactly one new token (decode kernels and graphs apply). */
  isDecode: boolean;
  maxQLen: number;
  /** Entries at the start / the end of the batch with one new token each (the scheduler
   *  puts decodes first): a mixed batch sends them to the decode kernel, the rest to the
   *  extend kernel. Ignored when isDecode. */
  decodeHead: number;
  decodeTail: number;
  /** Upper bound of seqLens (the captured maximum when replaying a graph). */
  maxSeqLen: number;
  inputIds: Tensor;
  positions: Tensor;
  slots: Tensor;
  rows: Tensor;
  seqLens: Tensor;
  qStarts: Tensor;
  /** qStarts on the host, where known (not for decode batches). */
  hostQStarts?: Int32Array;
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

/** Names accepted by `--attn`: this library's backends, Mini-SGLang's names as aliases for
 *  the nearest of them, and `auto`. */
export const ATTENTION_BACKENDS = [
  "auto",
  "fa3",
  "fa2",
  "native",
  "flashdecode",
  "fa",
  "fi",
  "trtllm",
] as const;
export type AttentionName = (typeof ATTENTION_BACKENDS)[number];

/** Prefill/extend kernels: fa3 = wgmma (sm_90), fa2 = mma/WMMA (any CUDA GPU), cpu. */
export type PrefillKernel = "fa3" | "fa2" | "cpu";
/** Decode kernels: flashdecode = split-KV paged decode, cpu. */
export type DecodeKernel = "flashdecode" | "cpu";

/** What the device offers to the resolution of names. */
export interface AttentionDevice {
  cuda: boolean;
  /** Compute capability 9.x (wgmma). */
  hopper: boolean;
}

/** The kernels `--attn` resolved to on a device. */
export interface ResolvedAttention {
  prefill: PrefillKernel;
  decode: DecodeKernel;
  /** One line for the start-up log: what each name resolved to. */
  log: string;
}

/** Validates `--attn PREFILL[,DECODE]` ("" = auto); throws a one-line Error. Returns the
 *  two names (the one name serves both phases). */
export function parseAttentionNames(spec: string): [AttentionName, AttentionName] {
  const names = spec ? spec.split(",") : ["auto"];
  if (names.length > 2) throw new Error(`--attn takes PREFILL[,DECODE], got "${spec}"`);
  for (const n of names) {
    if (!(ATTENTION_BACKENDS as readonly string[]).includes(n)) {
      throw new Error(
        `--attn: unknown attention backend "${n}" (known: ${ATTENTION_BACKENDS.join(", ")})`,
      );
    }
  }
  return [names[0], names[1] ?? names[0]] as [AttentionName, AttentionName];
}

/** The page size `--attn` runs with: Mini-SGLang's trtllm forces 64 unless the page size is
 *  16, 32 or 64; the other backends take any page size. */
export function attentionPageSize(spec: string, pageSize: number): number {
  const trtllm = parseAttentionNames(spec).includes("trtllm");
  return trtllm && ![16, 32, 64].includes(pageSize) ? 64 : pageSize;
}

/** The prefill kernel of a name: every name but the Ampere-path ones takes the
 *  FlashAttention-3-style kernel where the GPU has wgmma (fa, fi, trtllm and auto are
 *  Mini-SGLang's prefill choices, all nearest to it). */
function prefillKernel(name: AttentionName, dev: AttentionDevice): PrefillKernel {
  if (!dev.cuda) return "cpu";
  if (name === "fa2" || name === "native" || name === "flashdecode") return "fa2";
  return dev.hopper ? "fa3" : "fa2";
}

/** Resolves `--attn` on a device: one prefill and one decode kernel, and the log line. */
export function resolveAttention(spec: string, dev: AttentionDevice): ResolvedAttention {
  const [p, d] = parseAttentionNames(spec);
  const prefill = prefillKernel(p, dev);
  const decode: DecodeKernel = dev.cuda ? "flashdecode" : "cpu";
  const why = !dev.cuda
    ? " (CPU: every name runs the CPU kernels)"
    : p === "fa3" && !dev.hopper
    ? " (fa3 needs sm_90)"
    : "";
  return {
    prefill,
    decode,
    log: `attention: prefill ${p} -> ${prefill}, decode ${d} -> ${decode}${why}`,
  };
}

/** Variants of the fa3 kernel and the ABI entry point of each: 5 (a producer warpgroup,
 *  128-key tiles, ping-pong consumers, on a persistent grid over a global heavy-first work list),
 *  6 (v5 with O written through shared memory in 16-byte coalesced stores) and auto (the
 *  default: v6 where the longest request spans at most FA3_AUTO_V6_MAX_KEYS = 4,096 keys, else
 *  v5). H100, 2026-12-05, TFLOP/s: one 8k prompt v5 475-513, v6 447-469; 2 prompts of 4k v5
 *  472, v6 491; 16 chunks of 1k v5 338-349, v6 370-386. v1, v3 and v4 (350, 413 and 400 at 8k on
 *  an H200) were deleted that day, v2 before (bench/notes/attention.md). */
export const FA3_VARIANTS = {
  auto: "hopper",
  5: "hopper5",
  6: "hopper6",
} as const satisfies Record<string | number, ExtendKernel>;
export type Fa3Variant = keyof typeof FA3_VARIANTS;

/** The fa3 variant `MINISGL_FA3_VARIANT` names (unset or empty: auto); throws on other
 *  values. */
export function parseFa3Variant(value: string | undefined): Fa3Variant {
  if (value === undefined || value === "" || value === "auto") return "auto";
  if (value === "5" || value === "6") return Number(value) as 5 | 6;
  throw new Error(`MINISGL_FA3_VARIANT must be auto, 5 or 6, got "${value}"`);
}

let fa3VariantOnce: Fa3Variant | null = null;
/** The fa3 variant of this process: MINISGL_FA3_VARIANT, read once. */
export function fa3Variant(): Fa3Variant {
  return fa3VariantOnce ??= parseFa3Variant(Deno.env.get("MINISGL_FA3_VARIANT"));
}

/** The hybrid backend of `--attn` on `dev`; `make` builds the backend of a prefill kernel.
 *  Decode batches run through the same backend: every name's decode is the one decode
 *  kernel of the device. */
export function createAttention(
  spec: string,
  dev: AttentionDevice,
  make: (prefill: PrefillKernel) => AttentionBackend,
): { attn: HybridAttention; resolved: ResolvedAttention } {
  const resolved = resolveAttention(spec, dev);
  const p = make(resolved.prefill);
  return { attn: new HybridAttention(p, p), resolved };
}

/** How many entries lead and trail a batch with one new token each (qLens in batch order;
 *  a batch of only such entries is all head). */
export function oneTokenRuns(qLens: readonly number[]): { head: number; tail: number } {
  let head = 0, tail = 0;
  while (head < qLens.length && qLens[head] === 1) head++;
  while (tail < qLens.length - head && qLens[qLens.length - 1 - tail] === 1) tail++;
  return { head, tail };
}

/** One attention call over a contiguous range of a batch's entries and their tokens. */
export interface AttentionSegment {
  kernel: "decode" | "extend";
  entry0: number;
  entries: number;
  token0: number;
  tokens: number;
}

/** The calls of a batch: one decode call for a decode batch; for a mixed batch, the decode
 *  kernel on the one-token entries at its head and tail (one query row each, instead of a
 *  64-128-row extend tile mostly wasted) and the extend kernel on the entries between. */
export function attentionSegments(
  m: Pick<ForwardMeta, "numTokens" | "batch" | "isDecode" | "decodeHead" | "decodeTail">,
): AttentionSegment[] {
  if (m.isDecode) {
    return [{ kernel: "decode", entry0: 0, entries: m.batch, token0: 0, tokens: m.numTokens }];
  }
  const head = m.decodeHead, tail = m.decodeTail, mid = m.batch - head - tail;
  if (head < 0 || tail < 0 || mid <= 0) {
    throw new Error(
      `attention: bad mixed batch (${m.batch} entries, ${m.numTokens} tokens, ` +
        `decode head ${head}, tail ${tail})`,
    );
  }
  const out: AttentionSegment[] = [];
  if (head) out.push({ kernel: "decode", entry0: 0, entries: head, token0: 0, tokens: head });
  out.push({
    kernel: "extend",
    entry0: head,
    entries: mid,
    token0: head,
    tokens: m.numTokens - head - tail,
  });
  if (tail) {
    out.push({
      kernel: "decode",
      entry0: head + mid,
      entries: tail,
      token0: m.numTokens - tail,
      tokens: tail,
    });
  }
  return out;
}

/** Where the extend kernels read an fp8 cache from: they take caches in the activation
 *  dtype, so before each extend call the pages of its requests are widened into these
 *  (msg_kv_widen_pages), page j of the call's request b at page b * P + j (P pages a
 *  request); `iota` (0, 1, 2, ...) serves as the rows and, viewed as [requests, P], as the
 *  page table. */
export class WidenedPages {
  readonly k: Tensor;
  readonly v: Tensor;
  readonly iota: Tensor;

  constructor(
    dev: Device,
    dtype: DType,
    readonly pages: number,
    pageSize: number,
    hkv: number,
    headDim: number,
    stream: Handle,
  ) {
    this.k = dev.alloc(dtype, [pages * pageSize, hkv, headDim]);
    this.v = dev.alloc(dtype, [pages * pageSize, hkv, headDim]);
    this.iota = dev.alloc(DType.I32, [pages]);
    dev.upload(this.iota, Int32Array.from({ length: pages }, (_, i) => i), stream);
  }
}

/** The library's own kernels: an extend kernel (`extend`: fa3 "hopper"/"hopper5"/"hopper6" or
 *  "native") for prefill/mixed batches, split-K decode. They read seq_lens and the page table
 *  on the device, so there is no metadata to prepare. With an fp8 cache, `widened` holds the
 *  extend calls' pages in the activation dtype. */
export class NativeAttention implements AttentionBackend {
  constructor(
    private ops: Ops,
    private kv: KvCache,
    private cosSin: Tensor,
    private wDtype: DType,
    private extend: ExtendKernel = "native",
    private widened: WidenedPages | null = null,
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
    const base = {
      qRowStride: (h.hq + 2 * h.hkv) * h.headDim,
      kCache: k,
      vCache: v,
      pageTable: m.pageTable,
      maxSeqLen: m.maxSeqLen,
      hq: h.hq,
      hkv: h.hkv,
      headDim: h.headDim,
      pageSize: m.pageSize,
      scale: 1 / Math.sqrt(h.headDim),
    };
    for (const s of attentionSegments(m)) {
      const rows = m.rows.at(s.entry0, [s.entries]);
      const seqLens = m.seqLens.at(s.entry0, [s.entries]);
      if (s.kernel === "decode") {
        // The decode kernel reads q row b for entry b: offset q and out to the range.
        attentionDecode(this.ops, {
          ...base,
          out: out.rows(s.token0, s.tokens),
          q: qkv.rows(s.token0, s.tokens),
          rows,
          seqLens,
          qStarts: m.qStarts.at(s.entry0, [s.entries + 1]),
          batch: s.entries,
          totalQ: s.tokens,
          maxQLen: 1,
        });
      } else if (this.widened === null) {
        // The extend kernel indexes q and out by the (absolute) q_starts values.
        attentionExtend(this.ops, {
          ...base,
          out,
          q: qkv,
          rows,
          seqLens,
          qStarts: m.qStarts.at(s.entry0, [s.entries + 1]),
          batch: s.entries,
          totalQ: s.tokens,
          maxQLen: m.maxQLen,
        }, this.extend);
      } else {
        this.extendWidened(base, out, qkv, m, s, k, v);
      }
    }
  }

  /** An extend call over an fp8 cache: its requests' pages widened, as many requests at a
   *  time as the widened pages hold (maxSeqLen's pages each), then the extend kernel on them. */
  private extendWidened(
    base: Omit<
      AttentionArgs,
      "out" | "q" | "rows" | "seqLens" | "qStarts" | "batch" | "totalQ" | "maxQLen"
    >,
    out: Tensor,
    qkv: Tensor,
    m: ForwardMeta,
    s: AttentionSegment,
    k: Tensor,
    v: Tensor,
  ): void {
    const w = this.widened!, P = Math.ceil(m.maxSeqLen / m.pageSize);
    const qs = m.hostQStarts;
    if (P > w.pages || qs === undefined) {
      throw new Error(
        `attention: an extend call over the fp8 cache needs ${P} widened pages a request ` +
          `(has ${w.pages}) and the batch's q offsets on the host`,
      );
    }
    const per = Math.floor(w.pages / P);
    for (let e0 = s.entry0; e0 < s.entry0 + s.entries; e0 += per) {
      const n = Math.min(per, s.entry0 + s.entries - e0);
      const rows = m.rows.at(e0, [n]), seqLens = m.seqLens.at(e0, [n]);
      this.ops.kvWidenPages(w.k, w.v, k, v, m.pageTable, rows, seqLens, n, P, m.pageSize);
      attentionExtend(this.ops, {
        ...base,
        kCache: w.k,
        vCache: w.v,
        pageTable: w.iota.at(0, [n, P]),
        out,
        q: qkv,
        rows: w.iota.at(0, [n]),
        seqLens,
        qStarts: m.qStarts.at(e0, [n + 1]),
        batch: n,
        totalQ: qs[e0 + n] - qs[e0],
        maxQLen: m.maxQLen,
      }, this.extend);
    }
  }
}
