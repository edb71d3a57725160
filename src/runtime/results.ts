/**
 * The output side of a forward batch: device buffers the sampler and the logprob ops write,
 * and pinned host blocks they are copied into asynchronously. Reading a block after its
 * event turns it into a ForwardResult. The host block holds, in int32/fp32 words:
 * tokens [B], logprobs [B], top ids [B, MAX_TOP], top logprobs [B, MAX_TOP], then the
 * prompt logprobs of the batch's tokens [maxT].
 */
import { type Device, DType, type Handle, type Tensor } from "../../ffi/device.ts";
import type { ForwardBatch, ForwardResult } from "../ipc/batch.ts";
import type { FilledBatch } from "./staging.ts";

/** Most top logprobs returned per token (OpenAI allows 20). */
export const MAX_TOP = 20;

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
  private words: number;

  constructor(private dev: Device, private maxB: number, maxT: number) {
    this.tokens = dev.alloc(DType.I32, [maxB]);
    this.logprobs = dev.alloc(DType.F32, [maxB]);
    this.topIds = dev.alloc(DType.I32, [maxB, MAX_TOP]);
    this.topLps = dev.alloc(DType.F32, [maxB, MAX_TOP]);
    this.promptLp = dev.alloc(DType.F32, [maxT]);
    this.words = 2 * maxB * (1 + MAX_TOP) + maxT;
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
        // rows of MAX_TOP values, of which the first topK are filled
        dev.downloadPtr(at(2 * B), this.topIds, S * MAX_TOP * 4, stream);
        dev.downloadPtr(at(2 * B + B * MAX_TOP), this.topLps, S * MAX_TOP * 4, stream);
      }
    }
    if (batch.entries.some((e) => e.logprobTargets)) {
      dev.downloadPtr(at(2 * B * (1 + MAX_TOP)), this.promptLp, f.numTokens * 4, stream);
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
      seconds,
    };
    f.sampleEntries.forEach((ei, s) => {
      res.tokens[ei] = i32[s];
      res.logprobs[ei] = f32[B + s];
      const k = Math.min(batch.entries[ei].topLogprobs, T);
      if (k > 0 && topK > 0) {
        res.topIds[ei] = i32.slice(2 * B + s * T, 2 * B + s * T + k);
        res.topLogprobs[ei] = f32.slice(2 * B + B * T + s * T, 2 * B + B * T + s * T + k);
      }
    });
    let t = 0;
    const base = 2 * B * (1 + T);
    batch.entries.forEach((e, i) => {
      if (e.logprobTargets) {
        const lp = f32.slice(base + t, base + t + e.qLen);
        for (let j = 0; j < e.qLen; j++) if (e.logprobTargets[j] < 0) lp[j] = NaN;
        res.promptLogprobs[i] = lp;
      }
      t += e.qLen;
    });
    return res;
  }
}
