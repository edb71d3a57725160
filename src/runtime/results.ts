/**
 * The output side of a forward batch: device buffers the sampler and the logprob ops write,
 * and pinned host blocks they are copied into asynchronously. Reading a block after its
 * event turns it into a ForwardResult. The host block holds, in int32/fp32 words:
 * tokens [B], logprobs [B], top ids [B, MAX_TOP], top logprobs [B, MAX_TOP] (row s of the
 * sampled rows at s * topK: the op writes [rows, topK]), the prompt logprobs of the batch's
 * tokens [maxT], then the prompt top logprobs: ids [maxT * MAX_TOP] and logprobs
 * [maxT * MAX_TOP], an entry whose tokens start at t holding [qLen, k] from t * MAX_TOP.
 */
import { type Device, DType, type Handle, type Tensor } from "../../ffi/device.ts";
import type { ForwardBatch, ForwardResult } from "../ipc/batch.ts";
import type { FilledBatch } from "./staging.ts";

/** Most top logprobs returned per token (OpenAI allows 20). */
export const MAX_TOP = 20;

/** Top alternatives per prompt position of an entry that asked for prompt logprobs. */
export function promptTopK(e: { logprobTargets: Int32Array | null; topLogprobs: number }): number {
  return e.logprobTargets ? Math.min(e.topLogprobs, MAX_TOP) : 0;
}

/** One pinned host block of results. */
export interface ResultBlock {
  ptr: Deno.PointerValue;
  i32: Int32Array;
  f32: Float32Array;
}

export class ResultBuffers {
  readonly tokens: Tensor;
  readonly logprobs: Tensor;
  readonly topIds: Tensor;
  readonly topLps: Tensor;
  readonly promptLp: Tensor;
  readonly promptTopIds: Tensor;
  readonly promptTopLps: Tensor;
  private words: number;

  private maxT: number;

  constructor(private dev: Device, private maxB: number, maxT: number) {
    this.tokens = dev.alloc(DType.I32, [maxB]);
    this.logprobs = dev.alloc(DType.F32, [maxB]);
    this.topIds = dev.alloc(DType.I32, [maxB, MAX_TOP]);
    this.topLps = dev.alloc(DType.F32, [maxB, MAX_TOP]);
    this.promptLp = dev.alloc(DType.F32, [maxT]);
    this.promptTopIds = dev.alloc(DType.I32, [maxT * MAX_TOP]);
    this.promptTopLps = dev.alloc(DType.F32, [maxT * MAX_TOP]);
    this.words = 2 * maxB * (1 + MAX_TOP) + maxT * (1 + 2 * MAX_TOP);
    this.maxT = maxT;
  }

  /** A pinned host block for one batch in flight. */
  hostBlock(): ResultBlock {
    const h = this.dev.hostAlloc(this.words * 4);
    return { ptr: h.ptr, i32: new Int32Array(h.buf), f32: new Float32Array(h.buf) };
  }

  /** Enqueues the copies of what the batch produced into `block`. */
  collect(batch: ForwardBatch, f: FilledBatch, block: ResultBlock, topK: number, stream: Handle) {
    const { dev } = this;
    const S = f.numSample, B = this.maxB;
    const at = (words: number) => Deno.UnsafePointer.offset(block.ptr!, words * 4);
    if (S) {
      dev.downloadPtr(block.ptr, this.tokens, S * 4, stream);
      dev.downloadPtr(at(B), this.logprobs, S * 4, stream);
      if (topK) {
        // S rows of topK values
        dev.downloadPtr(at(2 * B), this.topIds, S * topK * 4, stream);
        dev.downloadPtr(at(2 * B + B * MAX_TOP), this.topLps, S * topK * 4, stream);
      }
    }
    if (batch.entries.some((e) => e.logprobTargets)) {
      dev.downloadPtr(at(2 * B * (1 + MAX_TOP)), this.promptLp, f.numTokens * 4, stream);
    }
    if (batch.entries.some((e) => e.logprobTargets && e.topLogprobs > 0)) {
      const base = 2 * B * (1 + MAX_TOP) + this.maxT, n = f.numTokens * MAX_TOP;
      dev.downloadPtr(at(base), this.promptTopIds, n * 4, stream);
      dev.downloadPtr(at(base + this.maxT * MAX_TOP), this.promptTopLps, n * 4, stream);
    }
  }

  /** The result of a batch whose copies into `block` have completed. */
  read(batch: ForwardBatch, f: FilledBatch, block: ResultBlock, topK: number, seconds: number) {
    const B = this.maxB, n = batch.entries.length, T = MAX_TOP;
    const { i32, f32 } = block;
    const res: ForwardResult = {
      id: batch.id,
      tokens: new Int32Array(n).fill(-1),
      logprobs: new Float32Array(n).fill(NaN),
      topIds: new Array(n).fill(null),
      topLogprobs: new Array(n).fill(null),
      promptLogprobs: new Array(n).fill(null),
      promptTopIds: new Array(n).fill(null),
      promptTopLogprobs: new Array(n).fill(null),
      seconds,
    };
    f.sampleEntries.forEach((ei, s) => {
      res.tokens[ei] = i32[s];
      res.logprobs[ei] = f32[B + s];
      const k = Math.min(batch.entries[ei].topLogprobs, T);
      if (k > 0 && topK > 0) {
        res.topIds[ei] = i32.slice(2 * B + s * topK, 2 * B + s * topK + k);
        res.topLogprobs[ei] = f32.slice(2 * B + B * T + s * topK, 2 * B + B * T + s * topK + k);
      }
    });
    let t = 0;
    const base = 2 * B * (1 + T);
    const topBase = base + this.maxT, topLpBase = topBase + this.maxT * T;
    batch.entries.forEach((e, i) => {
      if (e.logprobTargets) {
        const lp = f32.slice(base + t, base + t + e.qLen);
        for (let j = 0; j < e.qLen; j++) if (e.logprobTargets[j] < 0) lp[j] = NaN;
        res.promptLogprobs[i] = lp;
        const k = promptTopK(e);
        if (k > 0) {
          const o = t * T;
          res.promptTopIds[i] = i32.slice(topBase + o, topBase + o + e.qLen * k);
          res.promptTopLogprobs[i] = f32.slice(topLpBase + o, topLpBase + o + e.qLen * k);
        }
      }
      t += e.qLen;
    });
    return res;
  }
}
