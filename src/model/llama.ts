/**
 * The dense decoder shared by Llama, Mistral, Qwen2 and Qwen3: pre-norm blocks of
 * attention (GQA, rotary, optional qkv bias and q/k RMSNorm) and a SiLU-gated MLP.
 * The forward pass is a sequence of op calls; batching, paging and graphs live below it.
 */
import type { Ops, Tensor } from "../../ffi/ops.ts";
import type { AttentionBackend, ForwardMeta } from "../runtime/attention.ts";

/** The projections' fused epilogues at decode sizes (GEMV kernels): the residual add + RMSNorm
 *  after o and down (msg_gemm_add_rmsnorm) and the rotary + KV store after qkv
 *  (msg_gemm_rope_store_kv). Elsewhere those calls are the separate ops anyway. */
export interface GemvFuse {
  norm: boolean;
  rope: boolean;
}
/** Off until the kernels have passed tests/device/gemv_test.ts and pdl_test.ts on a GPU (written
 *  2026-12-05 without one); then "norm,rope". */
export const DEFAULT_GEMV_FUSE = "";

/** MINISGL_GEMV_FUSE: a comma list of "norm" and "rope" (unset: DEFAULT_GEMV_FUSE; "" or "0":
 *  neither); throws on other names. */
export function parseGemvFuse(value: string | undefined): GemvFuse {
  const names = (value ?? DEFAULT_GEMV_FUSE).split(",").filter((n) => n !== "" && n !== "0");
  for (const n of names) {
    if (n !== "norm" && n !== "rope") {
      throw new Error(`MINISGL_GEMV_FUSE lists norm and rope, got "${value}"`);
    }
  }
  return { norm: names.includes("norm"), rope: names.includes("rope") };
}

let gemvFuseOnce: GemvFuse | null = null;
/** This process's fused epilogues: MINISGL_GEMV_FUSE, read once. */
export function gemvFuse(): GemvFuse {
  return gemvFuseOnce ??= parseGemvFuse(Deno.env.get("MINISGL_GEMV_FUSE"));
}

/** Weights of one block, with q/k/v and gate/up merged as SGLang does. */
export interface LayerWeights {
  inputNorm: Tensor;
  /** [(hq + 2 hkv) * headDim, hidden] */
  qkv: Tensor;
  qkvBias: Tensor | null;
  qNorm: Tensor | null;
  kNorm: Tensor | null;
  /** [hidden, hq * headDim] */
  o: Tensor;
  oBias: Tensor | null;
  postNorm: Tensor;
  /** [2 * intermediate, hidden]: gate rows then up rows */
  gateUp: Tensor;
  /** [hidden, intermediate] */
  down: Tensor;
}

export interface ModelWeights {
  embed: Tensor;
  layers: LayerWeights[];
  norm: Tensor;
  /** The embedding itself when tied. */
  lmHead: Tensor;
}

/** Shapes the forward pass needs. */
export interface DecoderShape {
  hidden: number;
  intermediate: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  eps: number;
}

/** This rank's place in a tensor-parallel group (src/model/tp.ts); shapes are local. */
export interface TensorParallel {
  /** Sums the first n elements of t over the ranks, in place. */
  allReduce(t: Tensor, n: number): void;
  /** First vocabulary row of the local embedding. */
  vocabStart: number;
}

/** Activation buffers, each with room for `maxTokens` rows. */
export interface Workspace {
  /** fp32 even when activations are 16-bit: summing 30-odd layer outputs in bf16 costs
   *  more accuracy than anything else in the forward pass. */
  residual: Tensor;
  normed: Tensor;
  qkv: Tensor;
  attnOut: Tensor;
  delta: Tensor;
  gateUp: Tensor;
  act: Tensor;
}

/** Runs the decoder over the batch described by `meta`; returns the final normed
 *  hidden states, one row per input token. */
export function forward(
  ops: Ops,
  shape: DecoderShape,
  w: ModelWeights,
  ws: Workspace,
  attn: AttentionBackend,
  meta: ForwardMeta,
  tp: TensorParallel | null = null,
): Tensor {
  const n = meta.numTokens;
  const { eps, numHeads: hq, numKvHeads: hkv, headDim } = shape;
  const heads = { hq, hkv, headDim, eps };
  const fuse = gemvFuse();
  // The residual stream is fp32 (see Workspace); it starts at zero and every layer's
  // output, the embedding first, is added into it.
  // Row-parallel outputs (and the vocab-parallel embedding) are partial sums over ranks.
  const reduce = (t: Tensor) => tp?.allReduce(t, n * shape.hidden);
  if (tp) ops.embeddingRange(ws.delta, w.embed, meta.inputIds, n, tp.vocabStart);
  else ops.embedding(ws.delta, w.embed, meta.inputIds, n);
  reduce(ws.delta);
  ops.zero(ws.residual.rows(0, n));
  ops.addRmsnorm(ws.normed, ws.residual, ws.delta, w.layers[0].inputNorm, n, eps);
  // A row-parallel projection, then the residual add + RMSNorm with `norm`: one call unless
  // the output must first be summed over the ranks (or the fusion is off).
  const project = (a: Tensor, wt: Tensor, bias: Tensor | null, norm: Tensor) => {
    if (!tp && fuse.norm) {
      return ops.gemmAddRmsnorm(ws.normed, ws.residual, ws.delta, a, wt, bias, norm, n, eps);
    }
    ops.gemm(ws.delta, a, wt, bias, n);
    reduce(ws.delta);
    ops.addRmsnorm(ws.normed, ws.residual, ws.delta, norm, n, eps);
  };
  for (let l = 0; l < w.layers.length; l++) {
    const L = w.layers[l];
    const store = attn.kvStore(l, L.qNorm, L.kNorm, meta, heads);
    if (fuse.rope) ops.gemmRopeStoreKv(ws.qkv, ws.normed, L.qkv, L.qkvBias, n, store);
    else {
      ops.gemm(ws.qkv, ws.normed, L.qkv, L.qkvBias, n);
      ops.ropeStoreKv(ws.qkv, n, store);
    }
    attn.attend(l, ws.qkv, ws.attnOut, meta, heads);
    project(ws.attnOut, L.o, L.oBias, L.postNorm);
    ops.gemmSilu(ws.act, ws.gateUp, ws.normed, L.gateUp, n);
    project(ws.act, L.down, null, l + 1 < w.layers.length ? w.layers[l + 1].inputNorm : w.norm);
  }
  return ws.normed;
}
