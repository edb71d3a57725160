/**
 * The dense-decoder ops of the native ABI as typed functions over `Tensor`s. Shapes are
 * read from the tensors where they are unambiguous; every call is checked.
 */
import { type Device, DType, dtypeSize, type Handle, Tensor } from "./device.ts";

const ptr = (t: Tensor | null) => (t ? t.ptr : null);

/** Op launcher bound to one device and stream. */
export class Ops {
  constructor(readonly dev: Device, public stream: Handle = null) {}

  private get s() {
    return this.dev.sym;
  }

  /** out[i] = table[ids[i]] */
  embedding(out: Tensor, table: Tensor, ids: Tensor, n: number): void {
    const hidden = table.shape[1];
    this.dev.check(
      this.s.msg_embedding(
        out.ptr,
        table.ptr,
        ids.ptr,
        n,
        hidden,
        out.dtype,
        table.dtype,
        this.stream,
      ),
      "embedding",
    );
  }

  /** Fills a tensor with zero bytes. */
  zero(t: Tensor): void {
    this.dev.check(this.s.msg_memset(t.ptr, 0, BigInt(t.bytes), this.stream), "memset");
  }

  /** out[i] = x[idx[i]] (rows). */
  gatherRows(out: Tensor, x: Tensor, idx: Tensor, n: number): void {
    const rowBytes = (x.bytes / x.shape[0]) | 0;
    this.dev.check(
      this.s.msg_gather_rows(out.ptr, x.ptr, idx.ptr, n, BigInt(rowBytes), this.stream),
      "gather rows",
    );
  }

  gatherI32(out: Tensor, src: Tensor, idx: Tensor, n: number): void {
    this.dev.check(this.s.msg_gather_i32(out.ptr, src.ptr, idx.ptr, n, this.stream), "gather");
  }

  scatterI32(dst: Tensor, idx: Tensor, src: Tensor, n: number): void {
    this.dev.check(this.s.msg_scatter_i32(dst.ptr, idx.ptr, src.ptr, n, this.stream), "scatter");
  }

  cast(out: Tensor, x: Tensor): void {
    this.dev.check(
      this.s.msg_cast(out.ptr, out.dtype, x.ptr, x.dtype, BigInt(x.numel), this.stream),
      "cast",
    );
  }

  rmsnorm(out: Tensor, x: Tensor, w: Tensor, rows: number, eps: number): void {
    const h = w.shape[0];
    this.dev.check(
      this.s.msg_rmsnorm(out.ptr, x.ptr, w.ptr, rows, h, eps, x.dtype, w.dtype, this.stream),
      "rmsnorm",
    );
  }

  /** residual += x; out = rmsnorm(residual) * w. */
  addRmsnorm(out: Tensor, residual: Tensor, x: Tensor, w: Tensor, rows: number, eps: number) {
    const h = w.shape[0];
    this.dev.check(
      this.s.msg_add_rmsnorm(
        out.ptr,
        residual.ptr,
        x.ptr,
        w.ptr,
        rows,
        h,
        eps,
        x.dtype,
        residual.dtype,
        w.dtype,
        this.stream,
      ),
      "add_rmsnorm",
    );
  }

  /** out[M, N] = a[M, K] @ w[N, K]^T (+ bias). */
  gemm(out: Tensor, a: Tensor, w: Tensor, bias: Tensor | null, M: number): void {
    const [N, K] = w.shape;
    this.dev.check(
      this.s.msg_gemm(
        out.ptr,
        out.dtype,
        a.ptr,
        a.dtype,
        w.ptr,
        w.dtype,
        ptr(bias),
        M,
        N,
        K,
        this.stream,
      ),
      `gemm ${M}x${N}x${K}`,
    );
  }

  /** out[M, I] = silu(a @ w[:I]^T) * (a @ w[I:]^T) for w [2I, K]; gateUp [M, 2I] is the
   *  call's scratch (see msg_gemm_silu). */
  gemmSilu(out: Tensor, gateUp: Tensor, a: Tensor, w: Tensor, M: number): void {
    const [N2, K] = w.shape;
    this.dev.check(
      this.s.msg_gemm_silu(
        out.ptr,
        gateUp.ptr,
        a.ptr,
        a.dtype,
        w.ptr,
        w.dtype,
        M,
        N2 / 2,
        K,
        this.stream,
      ),
      `gemm_silu ${M}x${N2}x${K}`,
    );
  }

  ropeStoreKv(
    qkv: Tensor,
    positions: Tensor,
    qNorm: Tensor | null,
    kNorm: Tensor | null,
    eps: number,
    cosSin: Tensor,
    slots: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    n: number,
    hq: number,
    hkv: number,
    headDim: number,
    wDtype: DType,
  ): void {
    this.dev.check(
      this.s.msg_rope_store_kv(
        qkv.ptr,
        positions.ptr,
        ptr(qNorm),
        ptr(kNorm),
        eps,
        cosSin.ptr,
        cosSin.shape[1],
        slots.ptr,
        kCache.ptr,
        vCache.ptr,
        n,
        hq,
        hkv,
        headDim,
        qkv.dtype,
        wDtype,
        kCache.dtype,
        this.stream,
      ),
      "rope_store_kv",
    );
  }

  /** The pages of `batch` requests out of fp8 caches into caches of dstK/dstV's dtype (the
   *  activation dtype), page j of request b at b * pagesPerRow + j (msg_kv_widen_pages). */
  kvWidenPages(
    dstK: Tensor,
    dstV: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    pageTable: Tensor,
    rows: Tensor,
    seqLens: Tensor,
    batch: number,
    pagesPerRow: number,
    pageSize: number,
  ): void {
    this.dev.check(
      this.s.msg_kv_widen_pages(
        dstK.ptr,
        dstV.ptr,
        kCache.ptr,
        vCache.ptr,
        pageTable.ptr,
        pageTable.shape[1],
        rows.ptr,
        seqLens.ptr,
        batch,
        pagesPerRow,
        pageSize,
        kCache.shape[1],
        kCache.shape[2],
        kCache.dtype,
        dstK.dtype,
        this.stream,
      ),
      "kv_widen_pages",
    );
  }

  computeSlots(
    slots: Tensor,
    positions: Tensor,
    pageTable: Tensor,
    rows: Tensor,
    seqLens: Tensor,
    qStarts: Tensor,
    batch: number,
    pageSize: number,
    maxQLen: number,
  ): void {
    this.dev.check(
      this.s.msg_compute_slots(
        slots.ptr,
        positions.ptr,
        pageTable.ptr,
        pageTable.shape[1],
        rows.ptr,
        seqLens.ptr,
        qStarts.ptr,
        batch,
        pageSize,
        maxQLen,
        this.stream,
      ),
      "compute_slots",
    );
  }

  /** params null: every row greedy (one pass on CUDA). */
  sample(
    tokens: Tensor,
    logprobs: Tensor | null,
    logits: Tensor,
    params: Tensor | null,
    rows: number,
  ): void {
    this.dev.check(
      this.s.msg_sample(
        tokens.ptr,
        ptr(logprobs),
        logits.ptr,
        ptr(params),
        rows,
        logits.shape[1],
        this.stream,
      ),
      "sample",
    );
  }

  tokenLogprobs(out: Tensor, logits: Tensor, targets: Tensor, rows: number): void {
    this.dev.check(
      this.s.msg_token_logprobs(
        out.ptr,
        logits.ptr,
        targets.ptr,
        rows,
        logits.shape[1],
        this.stream,
      ),
      "token_logprobs",
    );
  }

  topLogprobs(ids: Tensor, lps: Tensor, logits: Tensor, rows: number, k: number): void {
    this.dev.check(
      this.s.msg_top_logprobs(ids.ptr, lps.ptr, logits.ptr, rows, logits.shape[1], k, this.stream),
      "top_logprobs",
    );
  }

  applyPenalties(
    logits: Tensor,
    tokens: Tensor,
    starts: Tensor,
    presence: Tensor,
    frequency: Tensor,
    repetition: Tensor,
    rows: number,
  ): void {
    this.dev.check(
      this.s.msg_apply_penalties(
        logits.ptr,
        logits.shape[1],
        tokens.ptr,
        starts.ptr,
        presence.ptr,
        frequency.ptr,
        repetition.ptr,
        rows,
        this.stream,
      ),
      "penalties",
    );
  }

  /** logit_bias then token masks on `n` rows of fp32 logits (msg_apply_token_mask). */
  applyTokenMask(
    logits: Tensor,
    rows: Tensor,
    masks: Tensor | null,
    biasStarts: Tensor | null,
    biasIds: Tensor | null,
    biasValues: Tensor | null,
    n: number,
  ): void {
    this.dev.check(
      this.s.msg_apply_token_mask(
        logits.ptr,
        logits.shape[1],
        rows.ptr,
        masks?.ptr ?? null,
        biasStarts?.ptr ?? null,
        biasIds?.ptr ?? null,
        biasValues?.ptr ?? null,
        n,
        this.stream,
      ),
      "token_mask",
    );
  }

  /** Sums the first n elements of buf over the ranks of `comm`, in place. */
  allReduce(buf: Tensor, n: number, comm: Handle): void {
    this.dev.check(
      this.s.msg_all_reduce(buf.ptr, BigInt(n), buf.dtype, comm, this.stream),
      "all_reduce",
    );
  }

  /** out [rows, out.shape[1]] = every rank's src [rows, cols] side by side (rank order);
   *  `scratch` holds nranks * rows * cols elements (the CUDA backend's staging). */
  allGatherCols(out: Tensor, src: Tensor, scratch: Tensor | null, rows: number, comm: Handle) {
    this.dev.check(
      this.s.msg_all_gather_cols(
        out.ptr,
        out.shape[1],
        src.ptr,
        ptr(scratch),
        rows,
        src.shape[1],
        src.dtype,
        comm,
        this.stream,
      ),
      "all_gather_cols",
    );
  }

  /** out[i] = table[ids[i] - vocabStart], zero for ids outside this rank's rows. */
  embeddingRange(out: Tensor, table: Tensor, ids: Tensor, n: number, vocabStart: number) {
    this.dev.check(
      this.s.msg_embedding_range(
        out.ptr,
        table.ptr,
        ids.ptr,
        n,
        table.shape[1],
        vocabStart,
        table.shape[0],
        out.dtype,
        table.dtype,
        this.stream,
      ),
      "embedding_range",
    );
  }

  /** t = mean + scale * uniform[-1, 1) from `seed` (dummy weights). */
  fillRandom(t: Tensor, seed: bigint, mean: number, scale: number): void {
    this.dev.check(
      this.s.msg_fill_random(t.ptr, BigInt(t.numel), t.dtype, seed, mean, scale, this.stream),
      "fill_random",
    );
  }
}

/** Arguments of one attention call, shared by the backends. */
export interface AttentionArgs {
  out: Tensor;
  q: Tensor;
  /** Elements between consecutive q rows (the qkv row width). */
  qRowStride: number;
  kCache: Tensor;
  vCache: Tensor;
  pageTable: Tensor;
  rows: Tensor;
  seqLens: Tensor;
  qStarts: Tensor;
  batch: number;
  totalQ: number;
  maxQLen: number;
  maxSeqLen: number;
  hq: number;
  hkv: number;
  headDim: number;
  pageSize: number;
  scale: number;
}

/** Which extend kernel of the ABI: "native" (msg_attention_extend, mma/WMMA, any GPU),
 *  "hopper5" (msg_attention_extend_hopper_v5, fa3 v5: wgmma, warp-specialised, ping-pong, on a
 *  persistent grid; the native one where it does not apply), "hopper6"
 *  (msg_attention_extend_hopper_v6, fa3 v6: v5 with O stored through shared memory) or
 *  "hopper" (fa3 auto: v5 or v6 per call, see hopperFor). */
export type ExtendKernel = "native" | "hopper5" | "hopper6" | "hopper";

/** The ABI entry point of each extend kernel but "hopper". */
const EXTEND_SYMBOLS = {
  native: "msg_attention_extend",
  hopper5: "msg_attention_extend_hopper_v5",
  hopper6: "msg_attention_extend_hopper_v6",
} as const satisfies Record<Exclude<ExtendKernel, "hopper">, string>;

/** Longest key span at which fa3 auto runs v6; longer spans run v5. v6's staged O store pays
 *  where work items are short, v5 wins where they are long (H100, 2026-12-05, TFLOP/s: 16 chunks
 *  of 1k v6 370-386 against v5 338-349 in four runs; 4 prompts of 2k v6 441 against 408 and 2 of
 *  4k v6 491 against 472 in one run; one 8k prompt v5 475-513 against v6 447-469 in four runs). */
export const FA3_AUTO_V6_MAX_KEYS = 4096;

/** The fa3 entry point "hopper" (auto) runs for a call whose longest request spans
 *  `maxSeqLen` keys. */
export function hopperFor(maxSeqLen: number): "hopper5" | "hopper6" {
  return maxSeqLen > FA3_AUTO_V6_MAX_KEYS ? "hopper5" : "hopper6";
}

/** Whether the device has CUDA and the Hopper (wgmma) extend kernel. */
export function attentionDevice(ops: Ops): { cuda: boolean; hopper: boolean } {
  const has = new Int32Array(1);
  ops.dev.check(ops.dev.sym.msg_attention_has_hopper(Deno.UnsafePointer.of(has)), "has_hopper");
  return { cuda: ops.dev.backend === "cuda", hopper: has[0] === 1 };
}

/** The attention entry points of the ABI. */
export function attentionExtend(ops: Ops, a: AttentionArgs, kernel: ExtendKernel = "native"): void {
  if (kernel === "hopper") kernel = hopperFor(a.maxSeqLen);
  const fn = ops.dev.sym[EXTEND_SYMBOLS[kernel]];
  ops.dev.check(
    fn(
      a.out.ptr,
      a.q.ptr,
      a.qRowStride,
      a.kCache.ptr,
      a.vCache.ptr,
      a.pageTable.ptr,
      a.pageTable.shape[1],
      a.rows.ptr,
      a.seqLens.ptr,
      a.qStarts.ptr,
      a.batch,
      a.totalQ,
      a.maxQLen,
      a.maxSeqLen,
      a.hq,
      a.hkv,
      a.headDim,
      a.pageSize,
      a.scale,
      a.out.dtype,
      ops.stream,
    ),
    kernel === "native" ? "attention_extend" : `attention_extend_${kernel}`,
  );
}

export function attentionDecode(ops: Ops, a: AttentionArgs): void {
  ops.dev.check(
    ops.dev.sym.msg_attention_decode(
      a.out.ptr,
      a.q.ptr,
      a.qRowStride,
      a.kCache.ptr,
      a.vCache.ptr,
      a.pageTable.ptr,
      a.pageTable.shape[1],
      a.rows.ptr,
      a.seqLens.ptr,
      a.batch,
      a.maxSeqLen,
      a.hq,
      a.hkv,
      a.headDim,
      a.pageSize,
      a.scale,
      a.out.dtype,
      a.kCache.dtype,
      ops.stream,
    ),
    "attention_decode",
  );
}

export { DType, dtypeSize, Tensor };
