/**
 * Rotary embedding tables. Frequencies follow Hugging Face exactly (including Llama 3.1's
 * `llama3` scaling, `_compute_llama3_parameters`), computed in float64; the table the
 * kernels read is rounded to float32 once at the end.
 */

import type { RopeScaling } from "./config.ts";

/** The rope fields of a ModelConfig. */
export interface RopeParams {
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
}

/** inv_freq[i] = theta^(-2i/rotDim) for i < rotDim/2, then llama3 scaling if configured. */
export function ropeInvFreq(cfg: RopeParams, rotDim: number): Float64Array {
  if (rotDim <= 0 || rotDim % 2 !== 0) throw new RangeError(`rotDim ${rotDim} must be even`);
  const half = rotDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / rotDim);
  const s = cfg.ropeScaling;
  if (s === null) return inv;
  const oldCtx = s.originalMaxPositionEmbeddings;
  const lowFreqWavelen = oldCtx / s.lowFreqFactor;
  const highFreqWavelen = oldCtx / s.highFreqFactor;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    // Long wavelengths are slowed down by `factor`; short ones kept; in between blended.
    const scaled = wavelen > lowFreqWavelen ? inv[i] / s.factor : inv[i];
    const isMedium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
    if (isMedium) {
      const smooth = (oldCtx / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = (1 - smooth) * scaled / s.factor + smooth * scaled;
    } else {
      inv[i] = scaled;
    }
  }
  return inv;
}

/** fp32 table [maxPos, rotDim]: row p holds cos(p * inv_freq) in [0, rotDim/2) and
 *  sin(p * inv_freq) in [rotDim/2, rotDim) — the layout msg_rope_store_kv reads. */
export function ropeCosSin(cfg: RopeParams, maxPos: number, rotDim: number): Float32Array {
  const inv = ropeInvFreq(cfg, rotDim);
  const half = rotDim / 2;
  const out = new Float32Array(maxPos * rotDim);
  for (let p = 0; p < maxPos; p++) {
    const row = p * rotDim;
    for (let i = 0; i < half; i++) {
      const a = p * inv[i];
      out[row + i] = Math.cos(a);
      out[row + half + i] = Math.sin(a);
    }
  }
  return out;
}
