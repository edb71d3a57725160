/**
 * The per-batch metadata block. The host fills one pinned buffer with these int32
 * sections and uploads it in one copy to a device buffer of the same layout, whose
 * sections the kernels (and captured CUDA graphs) read at fixed addresses.
 */
import { DType, Tensor } from "../../ffi/device.ts";
import type { BatchEntry } from "../ipc/batch.ts";
import { oneTokenRuns } from "./attention.ts";

/** Words of one msg_sampling_params record. */
export const PARAM_WORDS = 8;

/** Section offsets (in int32 words) for batches of up to maxT tokens and maxB entries. */
export class StagingLayout {
  readonly ids: number;
  readonly rows: number;
  readonly seqLens: number;
  readonly qStarts: number;
  readonly lastIdx: number;
  readonly sampleRows: number;
  readonly decTok: number;
  readonly decRows: number;
  readonly targets: number;
  readonly params: number;
  readonly pageIdx: number;
  readonly pageVal: number;
  /** Penalty sections (sampled rows: token starts, presence, frequency, repetition, the
   *  tokens), last so that a batch without penalties uploads only `baseWords`. */
  readonly penStarts: number;
  readonly penPresence: number;
  readonly penFrequency: number;
  readonly penRepetition: number;
  readonly penTokens: number;
  /** Penalty tokens the block carries; more go through a separate device buffer. */
  readonly maxPenaltyTokens: number;
  /** Words up to the penalty sections. */
  readonly baseWords: number;
  readonly words: number;
  /** Page-table updates one upload can carry. */
  readonly maxPageUpdates: number;

  constructor(readonly maxT: number, readonly maxB: number) {
    let o = 0;
    const take = (n: number) => {
      const at = o;
      o += n + ((4 - (n % 4)) % 4); // 16-byte aligned sections
      return at;
    };
    this.ids = take(maxT);
    this.rows = take(maxB);
    this.seqLens = take(maxB);
    this.qStarts = take(maxB + 1);
    this.lastIdx = take(maxB);
    this.sampleRows = take(maxB);
    this.decTok = take(maxB);
    this.decRows = take(maxB);
    this.targets = take(maxT);
    this.params = take(maxB * PARAM_WORDS);
    this.maxPageUpdates = maxT + 4 * maxB;
    this.pageIdx = take(this.maxPageUpdates);
    this.pageVal = take(this.maxPageUpdates);
    this.baseWords = o;
    this.penStarts = take(maxB + 1);
    this.penPresence = take(maxB);
    this.penFrequency = take(maxB);
    this.penRepetition = take(maxB);
    this.maxPenaltyTokens = maxT;
    this.penTokens = take(this.maxPenaltyTokens);
    this.words = o;
  }

  /** Views of the device copy of the block. */
  deviceViews(block: Tensor) {
    const v = (off: number, n: number) => block.at(off, [n], DType.I32);
    return {
      ids: v(this.ids, this.maxT),
      rows: v(this.rows, this.maxB),
      seqLens: v(this.seqLens, this.maxB),
      qStarts: v(this.qStarts, this.maxB + 1),
      lastIdx: v(this.lastIdx, this.maxB),
      sampleRows: v(this.sampleRows, this.maxB),
      decTok: v(this.decTok, this.maxB),
      decRows: v(this.decRows, this.maxB),
      targets: v(this.targets, this.maxT),
      params: v(this.params, this.maxB * PARAM_WORDS),
      pageIdx: v(this.pageIdx, this.maxPageUpdates),
      pageVal: v(this.pageVal, this.maxPageUpdates),
      penStarts: v(this.penStarts, this.maxB + 1),
      penPresence: block.at(this.penPresence, [this.maxB], DType.F32),
      penFrequency: block.at(this.penFrequency, [this.maxB], DType.F32),
      penRepetition: block.at(this.penRepetition, [this.maxB], DType.F32),
      penTokens: v(this.penTokens, this.maxPenaltyTokens),
    };
  }
}

/** What the host learned while filling the block for one batch. */
export interface FilledBatch {
  numTokens: number;
  batch: number;
  numSample: number;
  numDecodeInputs: number;
  numPageUpdates: number;
  /** Page updates that did not fit (index, value pairs), uploaded separately. */
  overflowPages: Int32Array | null;
  maxQLen: number;
  maxSeqLen: number;
  isDecode: boolean;
  /** One-token entries leading / trailing the batch (see ForwardMeta). */
  decodeHead: number;
  decodeTail: number;
  /** Entry index of each sampled row. */
  sampleEntries: number[];
  /** The entries' token offsets, [batch + 1] (a view of the host block). */
  qStarts: Int32Array;
  /** Some sampled row has penalties: the penalty sections are filled (and uploaded). */
  hasPenalties: boolean;
  /** Every sampled row is greedy (temperature <= 0): sampling takes its one-pass path. */
  allGreedy: boolean;
  /** Penalty tokens of all sampled rows when more than the block holds (their starts are in
   *  the block), else null. */
  penaltyOverflow: Int32Array | null;
}

/** Writes a batch into the host block (`i32`/`f32`/`u64` views of the same memory). */
export function fillStaging(
  L: StagingLayout,
  i32: Int32Array,
  f32: Float32Array,
  u64: BigUint64Array,
  entries: BatchEntry[],
  ptStride: number,
): FilledBatch {
  let t = 0, s = 0, d = 0, p = 0, maxQ = 0, maxSeq = 0, pen = 0;
  const sampleEntries: number[] = [];
  let hasPenalties = false, allGreedy = true;
  for (const e of entries) {
    if (e.sample && e.penaltyTokens) hasPenalties = true;
    if (e.sample && e.sampling.temperature > 0) allGreedy = false;
  }
  let overflow: number[] | null = null;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    i32[L.rows + i] = e.row;
    const seq = e.startPos + e.qLen;
    i32[L.seqLens + i] = seq;
    i32[L.qStarts + i] = t;
    if (e.inputIds) {
      i32.set(e.inputIds, L.ids + t);
    } else {
      i32[L.decTok + d] = t;
      i32[L.decRows + d] = e.row;
      d++;
    }
    if (e.logprobTargets) {
      for (let j = 0; j < e.qLen; j++) {
        i32[L.targets + t + j] = Math.max(0, e.logprobTargets[j]);
      }
    }
    if (e.sample) {
      i32[L.lastIdx + s] = t + e.qLen - 1;
      i32[L.sampleRows + s] = e.row;
      const b = L.params + s * PARAM_WORDS;
      const sp = e.sampling;
      f32[b] = sp.temperature;
      f32[b + 1] = sp.topP;
      f32[b + 2] = sp.minP;
      i32[b + 3] = sp.topK;
      u64[(b + 4) / 2] = sp.seed;
      i32[b + 6] = sp.step;
      i32[b + 7] = 0;
      if (hasPenalties) {
        const toks = e.penaltyTokens;
        i32[L.penStarts + s] = pen;
        f32[L.penPresence + s] = toks ? sp.presencePenalty : 0;
        f32[L.penFrequency + s] = toks ? sp.frequencyPenalty : 0;
        f32[L.penRepetition + s] = toks ? sp.repetitionPenalty : 1;
        if (toks) {
          if (pen + toks.length <= L.maxPenaltyTokens) i32.set(toks, L.penTokens + pen);
          pen += toks.length;
        }
      }
      sampleEntries.push(i);
      s++;
    }
    const base = e.row * ptStride + e.pageStart;
    for (let j = 0; j < e.newPages.length; j++) {
      if (p < L.maxPageUpdates) {
        i32[L.pageIdx + p] = base + j;
        i32[L.pageVal + p] = e.newPages[j];
        p++;
      } else {
        (overflow ??= []).push(base + j, e.newPages[j]);
      }
    }
    maxQ = Math.max(maxQ, e.qLen);
    maxSeq = Math.max(maxSeq, seq);
    t += e.qLen;
  }
  i32[L.qStarts + entries.length] = t;
  const { head, tail } = oneTokenRuns(entries.map((e) => e.qLen));
  if (hasPenalties) i32[L.penStarts + s] = pen;
  return {
    numTokens: t,
    batch: entries.length,
    numSample: s,
    numDecodeInputs: d,
    numPageUpdates: p,
    overflowPages: overflow ? Int32Array.from(overflow) : null,
    maxQLen: maxQ,
    maxSeqLen: maxSeq,
    isDecode: maxQ === 1,
    decodeHead: head,
    decodeTail: tail,
    sampleEntries,
    qStarts: i32.subarray(L.qStarts, L.qStarts + entries.length + 1),
    hasPenalties,
    allGreedy,
    penaltyOverflow: pen > L.maxPenaltyTokens ? penaltyTokensOf(entries, sampleEntries, pen) : null,
  };
}

/** The penalty tokens of the sampled rows, concatenated (rows without any add none). */
function penaltyTokensOf(entries: BatchEntry[], sampled: number[], total: number): Int32Array {
  const out = new Int32Array(total);
  let o = 0;
  for (const i of sampled) {
    const toks = entries[i].penaltyTokens;
    if (toks) {
      out.set(toks, o);
      o += toks.length;
    }
  }
  return out;
}

/** Pads a decode batch of `b` filled entries up to `to` with the dummy row. */
export function padDecode(
  L: StagingLayout,
  i32: Int32Array,
  f32: Float32Array,
  b: number,
  to: number,
  dummyRow: number,
) {
  for (let i = b; i < to; i++) {
    i32[L.rows + i] = dummyRow;
    i32[L.seqLens + i] = 1;
    i32[L.qStarts + i] = i;
    i32[L.sampleRows + i] = dummyRow;
    const o = L.params + i * PARAM_WORDS;
    f32[o] = 0; // greedy
    f32[o + 1] = 1;
    f32[o + 2] = 0;
    i32[o + 3] = 0;
    i32[o + 4] = 0;
    i32[o + 5] = 0;
    i32[o + 6] = 0;
    i32[o + 7] = 0;
  }
  i32[L.qStarts + to] = to;
}

export { Tensor };
