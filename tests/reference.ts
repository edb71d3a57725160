/**
 * An independent float64 reference of the dense decoders (Llama, Mistral, Qwen2, Qwen3):
 * one sequence, no cache, no batching, no paging — the textbook forward pass, written to
 * be obviously correct rather than fast. Weights come through the safetensors reader and
 * are widened to float64; all math is float64.
 *
 *   const ref = await loadReferenceModel(dir);
 *   const logits = ref.forward([1, 2, 3]);   // Float64Array [3 * vocab]
 */

import { loadModelConfig, type ModelConfig } from "../src/model/config.ts";
import { checkWeights, SafetensorsFolder, toFloat64 } from "../src/model/safetensors.ts";
import { ropeInvFreq } from "../src/model/rope.ts";

type Vec = Float64Array;

interface Layer {
  inputNorm: Vec;
  wq: Vec;
  wk: Vec;
  wv: Vec;
  wo: Vec;
  bq: Vec | null;
  bk: Vec | null;
  bv: Vec | null;
  bo: Vec | null;
  qNorm: Vec | null;
  kNorm: Vec | null;
  postNorm: Vec;
  wGate: Vec;
  wUp: Vec;
  wDown: Vec;
}

/** A loaded reference model. */
export interface ReferenceModel {
  cfg: ModelConfig;
  /** Logits of every position, row-major [ids.length, vocab]; `kvFp8`: keys (after the
   *  rotary) and values rounded to e4m3 as an fp8 KV cache stores them. */
  forward(ids: readonly number[], kvFp8?: boolean): Float64Array;
  /** Logits of the last position only (the lm head is most of the cost). */
  lastLogits(ids: readonly number[]): Float64Array;
}

/** A greedy continuation and, per step, the gap between the best and second logit. */
export interface ReferenceGreedy {
  tokens: number[];
  gaps: number[];
}

/** Decodes `steps` tokens greedily after `prompt` (full recompute each step). */
export function referenceGreedy(
  model: ReferenceModel,
  prompt: readonly number[],
  steps: number,
): ReferenceGreedy {
  const ids = [...prompt], tokens: number[] = [], gaps: number[] = [];
  for (let s = 0; s < steps; s++) {
    const row = model.lastLogits(ids);
    let best = 0;
    for (let v = 1; v < row.length; v++) if (row[v] > row[best]) best = v;
    let second = -Infinity;
    for (let v = 0; v < row.length; v++) if (v !== best && row[v] > second) second = row[v];
    tokens.push(best);
    gaps.push(row[best] - second);
    ids.push(best);
  }
  return { tokens, gaps };
}

/** Loads a model folder for the reference forward. */
export async function loadReferenceModel(dir: string): Promise<ReferenceModel> {
  const cfg = await loadModelConfig(dir);
  const st = await SafetensorsFolder.open(dir);
  checkWeights(cfg, st);
  const w = async (name: string) => {
    const t = st.get(name);
    return toFloat64(await st.readTensor(name), t.dtype);
  };
  const opt = (name: string) => (st.tensors.has(name) ? w(name) : Promise.resolve(null));
  const layers: Layer[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      inputNorm: await w(p + "input_layernorm.weight"),
      wq: await w(p + "self_attn.q_proj.weight"),
      wk: await w(p + "self_attn.k_proj.weight"),
      wv: await w(p + "self_attn.v_proj.weight"),
      wo: await w(p + "self_attn.o_proj.weight"),
      bq: cfg.attentionBias ? await w(p + "self_attn.q_proj.bias") : null,
      bk: cfg.attentionBias ? await w(p + "self_attn.k_proj.bias") : null,
      bv: cfg.attentionBias ? await w(p + "self_attn.v_proj.bias") : null,
      bo: cfg.oProjBias ? await opt(p + "self_attn.o_proj.bias") : null,
      qNorm: cfg.qkNorm ? await w(p + "self_attn.q_norm.weight") : null,
      kNorm: cfg.qkNorm ? await w(p + "self_attn.k_norm.weight") : null,
      postNorm: await w(p + "post_attention_layernorm.weight"),
      wGate: await w(p + "mlp.gate_proj.weight"),
      wUp: await w(p + "mlp.up_proj.weight"),
      wDown: await w(p + "mlp.down_proj.weight"),
    });
  }
  const embed = await w("model.embed_tokens.weight");
  const norm = await w("model.norm.weight");
  const lmHead = cfg.tieWordEmbeddings ? embed : await w("lm_head.weight");
  const invFreq = ropeInvFreq(cfg, cfg.headDim);
  return {
    cfg,
    forward: (ids, kvFp8 = false) =>
      forward(cfg, layers, embed, norm, lmHead, invFreq, ids, 0, kvFp8),
    lastLogits: (ids) => forward(cfg, layers, embed, norm, lmHead, invFreq, ids, ids.length - 1),
  };
}

/** Convenience: load + forward. */
export async function referenceLogits(
  dir: string,
  ids: readonly number[],
  kvFp8 = false,
): Promise<Float64Array> {
  return (await loadReferenceModel(dir)).forward(ids, kvFp8);
}

/** Rounded magnitude of |x| on the e4m3 grid in float64 (the grid step below 2^-5 is 2^-9,
 *  subnormals included, else 2^(e - 3) in [2^e, 2^(e + 1)), so |x| / step is exact): round to
 *  nearest, ties to the even multiple of the step. */
export function e4m3RoundRef(x: number): number {
  const a = Math.abs(x);
  let e = -6;
  while (e < 9 && a >= 2 ** (e + 1)) e++;
  const step = 2 ** (e - 3), m = a / step;
  let q = Math.floor(m);
  const frac = m - q;
  if (frac > 0.5 || (frac === 0.5 && q % 2 === 1)) q++;
  return q * step;
}

/** |x| rounded to e4m3, saturated at 448 (the fp8 KV cache's rule, minisgl.h). */
function e4m3Saturated(x: number): number {
  return Math.min(e4m3RoundRef(x), 448);
}

/** y[out] = W[out, in] x[in] (+ b). */
function linear(w: Vec, x: Vec, outDim: number, b: Vec | null): Vec {
  const inDim = x.length, y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let s = b ? b[o] : 0;
    const row = o * inDim;
    for (let i = 0; i < inDim; i++) s += w[row + i] * x[i];
    y[o] = s;
  }
  return y;
}

/** x / sqrt(mean(x^2) + eps) * weight, over `x.subarray(off, off + n)`, in place. */
function rmsnormInPlace(x: Vec, off: number, n: number, weight: Vec, eps: number) {
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[off + i] * x[off + i];
  const r = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) x[off + i] = x[off + i] * r * weight[i];
}

function rmsnorm(x: Vec, weight: Vec, eps: number): Vec {
  const y = Float64Array.from(x);
  rmsnormInPlace(y, 0, y.length, weight, eps);
  return y;
}

/** Neox-style rotary embedding of each head of `x` (heads of size d) at position `pos`:
 *  pairs (i, i + d/2) rotate by pos * invFreq[i]. */
function rope(x: Vec, heads: number, d: number, pos: number, invFreq: Vec) {
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    const o = h * d;
    for (let i = 0; i < half; i++) {
      const a = pos * invFreq[i], c = Math.cos(a), s = Math.sin(a);
      const x1 = x[o + i], x2 = x[o + half + i];
      x[o + i] = x1 * c - x2 * s;
      x[o + half + i] = x2 * c + x1 * s;
    }
  }
}

function forward(
  cfg: ModelConfig,
  layers: Layer[],
  embed: Vec,
  norm: Vec,
  lmHead: Vec,
  invFreq: Vec,
  ids: readonly number[],
  firstRow: number,
  kvFp8 = false,
): Float64Array {
  const H = cfg.hiddenSize, d = cfg.headDim, nq = cfg.numHeads, nkv = cfg.numKvHeads;
  const group = nq / nkv, n = ids.length, eps = cfg.rmsNormEps;
  const hidden: Vec[] = ids.map((id) => {
    if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) {
      throw new RangeError(`token id ${id} outside the vocabulary`);
    }
    return embed.slice(id * H, (id + 1) * H);
  });
  for (const L of layers) {
    const qs: Vec[] = [], ks: Vec[] = [], vs: Vec[] = [];
    for (let t = 0; t < n; t++) {
      const x = rmsnorm(hidden[t], L.inputNorm, eps);
      const q = linear(L.wq, x, nq * d, L.bq);
      const k = linear(L.wk, x, nkv * d, L.bk);
      const v = linear(L.wv, x, nkv * d, L.bv);
      if (L.qNorm && L.kNorm) {
        for (let h = 0; h < nq; h++) rmsnormInPlace(q, h * d, d, L.qNorm, eps);
        for (let h = 0; h < nkv; h++) rmsnormInPlace(k, h * d, d, L.kNorm, eps);
      }
      rope(q, nq, d, t, invFreq);
      rope(k, nkv, d, t, invFreq);
      if (kvFp8) {
        for (const x of [k, v]) {
          for (let i = 0; i < x.length; i++) x[i] = Math.sign(x[i]) * e4m3Saturated(x[i]);
        }
      }
      qs.push(q), ks.push(k), vs.push(v);
    }
    const scale = 1 / Math.sqrt(d);
    for (let t = 0; t < n; t++) {
      const attn = new Float64Array(nq * d);
      for (let h = 0; h < nq; h++) {
        const kh = Math.floor(h / group);
        // Causal softmax over positions 0..t.
        const scores = new Float64Array(t + 1);
        let max = -Infinity;
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < d; i++) dot += qs[t][h * d + i] * ks[s][kh * d + i];
          scores[s] = dot * scale;
          if (scores[s] > max) max = scores[s];
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) sum += scores[s] = Math.exp(scores[s] - max);
        for (let s = 0; s <= t; s++) {
          const p = scores[s] / sum;
          for (let i = 0; i < d; i++) attn[h * d + i] += p * vs[s][kh * d + i];
        }
      }
      const o = linear(L.wo, attn, H, L.bo);
      for (let i = 0; i < H; i++) hidden[t][i] += o[i];
      const x = rmsnorm(hidden[t], L.postNorm, eps);
      const gate = linear(L.wGate, x, cfg.intermediateSize, null);
      const up = linear(L.wUp, x, cfg.intermediateSize, null);
      for (let i = 0; i < gate.length; i++) gate[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
      const down = linear(L.wDown, gate, H, null);
      for (let i = 0; i < H; i++) hidden[t][i] += down[i];
    }
  }
  const V = cfg.vocabSize;
  const logits = new Float64Array((n - firstRow) * V);
  for (let t = firstRow; t < n; t++) {
    const x = rmsnorm(hidden[t], norm, eps);
    logits.set(linear(lmHead, x, V, null), (t - firstRow) * V);
  }
  return logits;
}
