/**
 * The dense decoder shared by Llama, Mistral, Qwen2 and Qwen3: pre-norm blocks of
 * attention (GQA, rotary, optional qkv bias and q/k RMSNorm) and a SiLU-gated MLP.
 * The forward pass is a sequence of op calls; batching, paging and graphs live below it.
 */
import type { Ops, Tensor } from "../../ffi/ops.ts";
import type { AttentionBackend, ForwardMeta } from "../runtime/attention.ts";

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
  // The residual stream is fp32 (see Workspace); it starts at zero and every layer's
  // output, the embedding first, is added into it.
  // Row-parallel outputs (and the vocab-parallel embedding) are partial sums over ranks.
  const reduce = (t: Tensor) => tp?.allReduce(t, n * shape.hidden);
  if (tp) ops.embeddingRange(ws.delta, w.embed, meta.inputIds, n, tp.vocabStart);
  else ops.embedding(ws.delta, w.embed, meta.inputIds, n);
  reduce(ws.delta);
  ops.zero(ws.residual.rows(0, n));
  for (let l = 0; l < w.layers.length; l++) {
    const L = w.layers[l];
    ops.addRmsnorm(ws.normed, ws.residual, ws.delta, L.inputNorm, n, eps);

    ops.gemm(ws.qkv, ws.normed, L.qkv, L.qkvBias, n);
    attn.storeAndAttend(l, ws.qkv, ws.attnOut, L.qNorm, L.kNorm, meta, { hq, hkv, headDim, eps });
    ops.gemm(ws.delta, ws.attnOut, L.o, L.oBias, n);
    reduce(ws.delta);

    ops.addRmsnorm(ws.normed, ws.residual, ws.delta, L.postNorm, n, eps);
    ops.gemmSilu(ws.act, ws.gateUp, ws.normed, L.gateUp, n);
    ops.gemm(ws.delta, ws.act, L.down, null, n);
    reduce(ws.delta);
  }
  ops.addRmsnorm(ws.normed, ws.residual, ws.delta, w.norm, n, eps);
  return ws.normed;
}
