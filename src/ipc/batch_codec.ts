/**
 * Binary records of ForwardBatch and ForwardResult (src/ipc/batch.ts) for the rings of
 * ring.ts: Int32 words, floats through a Float32 view of the same memory, the uint64 seed
 * as two words. No JSON on the hot path.
 *
 * Batch record:  [KIND_BATCH, id, nEntries] then per entry
 *   [row, startPos, qLen, flags, pageStart, nNewPages, topLogprobs, nPenalty,
 *    temperature f, topP f, topK, minP f, seedLo, seedHi, step,
 *    presence f, frequency f, repetition f]
 *   inputIds[qLen] (if FLAG_INPUT) newPages[nNewPages] penaltyTokens[nPenalty] (if
 *   FLAG_PENALTY) logprobTargets[qLen] (if FLAG_TARGETS) [key] (if FLAG_GRAMMAR)
 *   [kind, nStop, nBytes] stopIds[nStop] source utf-8 bytes packed 4 a word (if FLAG_SPEC)
 *   [nBias] biasIds[nBias] biasValues f[nBias] (if FLAG_BIAS)
 * then [nReleased] releasedGrammars[nReleased].
 * Result record: [KIND_RESULT, id, n, seconds f] tokens[n] logprobs f[n] then per entry
 *   [k] topIds[k] topLogprobs f[k] [m] promptLogprobs f[m] [p] promptTopIds[p]
 *   promptTopLogprobs f[p] (k = 0 / m = -1 / p = 0: null)
 * Control record: [KIND_SHUTDOWN]
 * Failure record: [KIND_FAILURE, nBytes] message utf-8 bytes packed 4 a word (a GPU worker's
 *   last record before it closes its rings: the scheduler then fails with the cause).
 */

import type { BatchEntry, ForwardBatch, ForwardResult, RowSampling, WireGrammar } from "./batch.ts";

/** First word of every record. */
export const KIND_BATCH = 1;
export const KIND_RESULT = 2;
export const KIND_SHUTDOWN = 3;
export const KIND_FAILURE = 4;

const FLAG_INPUT = 1;
const FLAG_SAMPLE = 2;
const FLAG_PENALTY = 4;
const FLAG_TARGETS = 8;
const FLAG_GRAMMAR = 16;
const FLAG_SPEC = 32;
const FLAG_BIAS = 64;
const GRAMMAR_KINDS = ["regex", "json_schema", "json_object", "tool_calls", "ebnf"] as const;
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();
/** Fixed words of one batch entry (before its arrays). */
export const ENTRY_WORDS = 18;
/** Words of a batch record before its entries. */
export const BATCH_HEADER_WORDS = 3;
/** Largest top_logprobs a result record is sized for (the OpenAI API's limit). */
export const MAX_TOP_LOGPROBS = 20;

/** Words of one batch entry as encodeBatch writes it. */
export function entryWords(
  qLen: number,
  hasInput: boolean,
  newPages: number,
  penaltyTokens: number,
  hasTargets: boolean,
): number {
  return ENTRY_WORDS + (hasInput ? qLen : 0) + newPages + penaltyTokens + (hasTargets ? qLen : 0);
}

/** Words of the largest batch record one request can need on its own: a prefill chunk of
 *  maxBatchTokens (inputs and logprob targets), the page list of a whole context and a
 *  penalty history of a whole context. The scheduler packs batches up to the ring's limit
 *  and only needs every single request to fit. */
export function requestRecordWordsBound(
  maxContextLen: number,
  pageSize: number,
  maxBatchTokens: number,
): number {
  const pages = Math.ceil(maxContextLen / pageSize) + 1;
  // + 1: the count of released grammars after the entries.
  return BATCH_HEADER_WORDS + 1 + entryWords(maxBatchTokens, true, pages, maxContextLen, true);
}

/** Words of the largest result record of a batch of up to maxRows entries and
 *  maxBatchTokens tokens (top logprobs for every entry, prompt logprobs for every token). */
export function resultRecordWordsBound(maxRows: number, maxBatchTokens: number): number {
  return 4 + maxRows * (4 + 2 * MAX_TOP_LOGPROBS) + maxBatchTokens;
}

/** A growable word buffer with an Int32 and a Float32 view of the same memory; reused
 *  across encodes so a steady-state encode allocates nothing. */
class Writer {
  i = new Int32Array(1024);
  f = new Float32Array(this.i.buffer);
  n = 0;
  reserve(words: number): void {
    if (this.n + words <= this.i.length) return;
    let cap = this.i.length * 2;
    while (cap < this.n + words) cap *= 2;
    const next = new Int32Array(cap);
    next.set(this.i.subarray(0, this.n));
    this.i = next;
    this.f = new Float32Array(next.buffer);
  }
}

const batchWriter = new Writer();
const resultWriter = new Writer();
// The seed travels as two words: a BigUint64 scratch cell with an Int32 view splits and
// joins it without BigInt arithmetic (which costs ~0.2 us an entry). Little-endian hosts.
const seedCell = new BigUint64Array(1);
const seedWords = new Int32Array(seedCell.buffer);

/** The shutdown control record. */
export function encodeShutdown(): Int32Array {
  return Int32Array.of(KIND_SHUTDOWN);
}

/** The failure record of `message`. */
export function encodeFailure(message: string): Int32Array {
  const bytes = utf8.encode(message);
  const out = new Int32Array(2 + Math.ceil(bytes.length / 4));
  out[0] = KIND_FAILURE;
  out[1] = bytes.length;
  new Uint8Array(out.buffer, 8).set(bytes);
  return out;
}

/** The message of a failure record. */
export function decodeFailure(msg: Int32Array): string {
  if (msg[0] !== KIND_FAILURE) throw new Error(`not a failure record (kind ${msg[0]})`);
  return utf8Decoder.decode(new Uint8Array(msg.buffer, msg.byteOffset + 8, msg[1]));
}

/** Kind of a record (KIND_*). */
export function recordKind(msg: Int32Array): number {
  return msg[0];
}

/** Encode a batch. The returned view is valid until the next encodeBatch call. */
export function encodeBatch(batch: ForwardBatch): Int32Array {
  const w = batchWriter;
  w.n = 0;
  w.reserve(3);
  w.i[0] = KIND_BATCH;
  w.i[1] = batch.id;
  w.i[2] = batch.entries.length;
  w.n = 3;
  for (const e of batch.entries) {
    const nPen = e.penaltyTokens ? e.penaltyTokens.length : 0;
    w.reserve(
      ENTRY_WORDS + (e.inputIds ? e.qLen : 0) + e.newPages.length + nPen +
        (e.logprobTargets ? e.qLen : 0),
    );
    const i = w.i, f = w.f, o = w.n, s = e.sampling;
    i[o] = e.row;
    i[o + 1] = e.startPos;
    i[o + 2] = e.qLen;
    i[o + 3] = (e.inputIds ? FLAG_INPUT : 0) | (e.sample ? FLAG_SAMPLE : 0) |
      (e.penaltyTokens ? FLAG_PENALTY : 0) | (e.logprobTargets ? FLAG_TARGETS : 0) |
      (e.grammar || e.logitBias ? constraintFlags(e) : 0);
    i[o + 4] = e.pageStart;
    i[o + 5] = e.newPages.length;
    i[o + 6] = e.topLogprobs;
    i[o + 7] = nPen;
    f[o + 8] = s.temperature;
    f[o + 9] = s.topP;
    i[o + 10] = s.topK;
    f[o + 11] = s.minP;
    seedCell[0] = s.seed;
    i[o + 12] = seedWords[0];
    i[o + 13] = seedWords[1];
    i[o + 14] = s.step;
    f[o + 15] = s.presencePenalty;
    f[o + 16] = s.frequencyPenalty;
    f[o + 17] = s.repetitionPenalty;
    let p = o + ENTRY_WORDS;
    if (e.inputIds) {
      if (e.inputIds.length !== e.qLen) throw new Error("inputIds length != qLen");
      i.set(e.inputIds, p);
      p += e.qLen;
    }
    i.set(e.newPages, p);
    p += e.newPages.length;
    if (e.penaltyTokens) {
      i.set(e.penaltyTokens, p);
      p += nPen;
    }
    if (e.logprobTargets) {
      if (e.logprobTargets.length !== e.qLen) throw new Error("logprobTargets length != qLen");
      i.set(e.logprobTargets, p);
      p += e.qLen;
    }
    w.n = p;
    if (i[o + 3] & (FLAG_GRAMMAR | FLAG_BIAS)) writeConstraint(w, e);
  }
  const rel = batch.releasedGrammars;
  w.reserve(1 + (rel ? rel.length : 0));
  w.i[w.n++] = rel ? rel.length : 0;
  if (rel) {
    w.i.set(rel, w.n);
    w.n += rel.length;
  }
  return w.i.subarray(0, w.n);
}

function constraintFlags(e: BatchEntry): number {
  return (e.grammar ? FLAG_GRAMMAR : 0) | (e.grammar?.spec ? FLAG_SPEC : 0) |
    (e.logitBias ? FLAG_BIAS : 0);
}

/** Appends an entry's grammar key / spec and logit_bias (rare: only constrained requests). */
function writeConstraint(w: Writer, e: BatchEntry): void {
  if (e.grammar) {
    const spec = e.grammar.spec;
    const src = spec ? utf8.encode(spec.source) : null;
    w.reserve(4 + (spec ? spec.stopIds.length + Math.ceil(src!.length / 4) : 0));
    w.i[w.n++] = e.grammar.key;
    if (spec) {
      w.i[w.n++] = GRAMMAR_KINDS.indexOf(spec.kind);
      w.i[w.n++] = spec.stopIds.length;
      w.i[w.n++] = src!.length;
      w.i.set(spec.stopIds, w.n);
      w.n += spec.stopIds.length;
      const words = Math.ceil(src!.length / 4);
      new Uint8Array(w.i.buffer, w.n * 4, words * 4).fill(0).set(src!);
      w.n += words;
    }
  }
  if (e.logitBias) {
    const b = e.logitBias;
    w.reserve(1 + 2 * b.ids.length);
    w.i[w.n++] = b.ids.length;
    w.i.set(b.ids, w.n);
    w.f.set(b.values, w.n + b.ids.length);
    w.n += 2 * b.ids.length;
  }
}

/** Decode a batch record. Arrays of the entries are views into `msg`. */
export function decodeBatch(msg: Int32Array): ForwardBatch {
  if (msg[0] !== KIND_BATCH) throw new Error(`not a batch record (kind ${msg[0]})`);
  const f = new Float32Array(msg.buffer, msg.byteOffset, msg.length);
  const n = msg[2];
  const entries: BatchEntry[] = new Array(n);
  let o = 3;
  for (let k = 0; k < n; k++) {
    const qLen = msg[o + 2], flags = msg[o + 3], nPages = msg[o + 5], nPen = msg[o + 7];
    seedWords[0] = msg[o + 12];
    seedWords[1] = msg[o + 13];
    const sampling: RowSampling = {
      temperature: f[o + 8],
      topP: f[o + 9],
      topK: msg[o + 10],
      minP: f[o + 11],
      seed: seedCell[0],
      step: msg[o + 14],
      presencePenalty: f[o + 15],
      frequencyPenalty: f[o + 16],
      repetitionPenalty: f[o + 17],
    };
    const row = msg[o], startPos = msg[o + 1], pageStart = msg[o + 4], top = msg[o + 6];
    let p = o + ENTRY_WORDS;
    let inputIds: Int32Array | null = null;
    if (flags & FLAG_INPUT) {
      inputIds = msg.subarray(p, p + qLen);
      p += qLen;
    }
    const newPages = msg.subarray(p, p + nPages);
    p += nPages;
    let penaltyTokens: Int32Array | null = null;
    if (flags & FLAG_PENALTY) {
      penaltyTokens = msg.subarray(p, p + nPen);
      p += nPen;
    }
    let logprobTargets: Int32Array | null = null;
    if (flags & FLAG_TARGETS) {
      logprobTargets = msg.subarray(p, p + qLen);
      p += qLen;
    }
    let grammar: BatchEntry["grammar"] = null;
    if (flags & FLAG_GRAMMAR) {
      const key = msg[p++];
      let spec: WireGrammar | null = null;
      if (flags & FLAG_SPEC) {
        const kind = GRAMMAR_KINDS[msg[p]], nStop = msg[p + 1], nBytes = msg[p + 2];
        p += 3;
        const stopIds = msg.slice(p, p + nStop);
        p += nStop;
        const source = utf8Decoder.decode(
          new Uint8Array(msg.buffer, msg.byteOffset + p * 4, nBytes),
        );
        p += Math.ceil(nBytes / 4);
        spec = { kind, source, stopIds };
      }
      grammar = { key, spec };
    }
    let logitBias: BatchEntry["logitBias"] = null;
    if (flags & FLAG_BIAS) {
      const nb = msg[p++];
      logitBias = { ids: msg.subarray(p, p + nb), values: f.subarray(p + nb, p + 2 * nb) };
      p += 2 * nb;
    }
    entries[k] = {
      row,
      startPos,
      qLen,
      inputIds,
      pageStart,
      newPages,
      sample: (flags & FLAG_SAMPLE) !== 0,
      sampling,
      penaltyTokens,
      logprobTargets,
      topLogprobs: top,
      grammar,
      logitBias,
    };
    o = p;
  }
  const nRel = o < msg.length ? msg[o] : 0;
  const releasedGrammars = nRel ? msg.slice(o + 1, o + 1 + nRel) : null;
  return { id: msg[1], entries, releasedGrammars };
}

/** Encode a result. The returned view is valid until the next encodeResult call. */
export function encodeResult(res: ForwardResult): Int32Array {
  const n = res.tokens.length;
  const w = resultWriter;
  w.n = 0;
  w.reserve(4 + 2 * n);
  w.i[0] = KIND_RESULT;
  w.i[1] = res.id;
  w.i[2] = n;
  w.f[3] = res.seconds;
  w.i.set(res.tokens, 4);
  w.f.set(res.logprobs, 4 + n);
  w.n = 4 + 2 * n;
  for (let k = 0; k < n; k++) {
    const ids = res.topIds[k], vals = res.topLogprobs[k], pl = res.promptLogprobs[k];
    const pIds = res.promptTopIds[k], pVals = res.promptTopLogprobs[k];
    const kk = ids ? ids.length : 0, pk = pIds ? pIds.length : 0;
    w.reserve(3 + 2 * kk + (pl ? pl.length : 0) + 2 * pk);
    let o = w.n;
    w.i[o++] = kk;
    if (ids && vals) {
      w.i.set(ids, o);
      w.f.set(vals, o + kk);
      o += 2 * kk;
    }
    if (pl) {
      w.i[o++] = pl.length;
      w.f.set(pl, o);
      o += pl.length;
    } else {
      w.i[o++] = -1;
    }
    w.i[o++] = pk;
    if (pIds && pVals) {
      w.i.set(pIds, o);
      w.f.set(pVals, o + pk);
      o += 2 * pk;
    }
    w.n = o;
  }
  return w.i.subarray(0, w.n);
}

/** Decode a result record. Arrays are views into `msg`. */
export function decodeResult(msg: Int32Array): ForwardResult {
  if (msg[0] !== KIND_RESULT) throw new Error(`not a result record (kind ${msg[0]})`);
  const f = new Float32Array(msg.buffer, msg.byteOffset, msg.length);
  const n = msg[2];
  const topIds: (Int32Array | null)[] = new Array(n);
  const topLogprobs: (Float32Array | null)[] = new Array(n);
  const promptLogprobs: (Float32Array | null)[] = new Array(n);
  const promptTopIds: (Int32Array | null)[] = new Array(n).fill(null);
  const promptTopLogprobs: (Float32Array | null)[] = new Array(n).fill(null);
  let o = 4 + 2 * n;
  for (let k = 0; k < n; k++) {
    const kk = msg[o++];
    if (kk > 0) {
      topIds[k] = msg.subarray(o, o + kk);
      topLogprobs[k] = f.subarray(o + kk, o + 2 * kk);
      o += 2 * kk;
    } else {
      topIds[k] = null;
      topLogprobs[k] = null;
    }
    const m = msg[o++];
    if (m >= 0) {
      promptLogprobs[k] = f.subarray(o, o + m);
      o += m;
    } else {
      promptLogprobs[k] = null;
    }
    const pk = msg[o++];
    if (pk > 0) {
      promptTopIds[k] = msg.subarray(o, o + pk);
      promptTopLogprobs[k] = f.subarray(o + pk, o + 2 * pk);
      o += 2 * pk;
    }
  }
  return {
    id: msg[1],
    tokens: msg.subarray(4, 4 + n),
    logprobs: f.subarray(4 + n, 4 + 2 * n),
    topIds,
    topLogprobs,
    promptLogprobs,
    promptTopIds,
    promptTopLogprobs,
    seconds: f[3],
  };
}
