/**
 * A request as the scheduler tracks it: its tokens so far, its KV state (row, pages,
 * cached prefix) and its stop conditions.
 */

import { BATCH_HEADER_WORDS, entryWords } from "../ipc/batch_codec.ts";
import type { CacheHandle } from "../cache/prefix_cache.ts";
import type { RowSampling, WireGrammar } from "../ipc/batch.ts";
import { GrammarError, specToRegex } from "../grammar/grammar.ts";
import type { SamplingParams, TokenEvent } from "../engine/types.ts";

/** What the main thread sends for a new request (the seed already chosen). */
export interface SubmitMessage {
  id: string;
  promptIds: number[];
  params: SamplingParams;
  seed: bigint;
}

/** Limits a request is checked against before it is queued. */
export interface RequestLimits {
  vocabSize: number;
  /** Longest prompt + completion (model context, capped by the KV pool). */
  maxContextLen: number;
  /** Page size and most words of one batch record, when records are limited. */
  pageSize?: number;
  maxRecordWords?: number;
}

/** Words of the largest batch record a request needs on its own: its whole page list, a
 *  penalty history of max_tokens and a prefill chunk of one token with its target. */
export function soloRecordWords(
  promptLen: number,
  maxTokens: number,
  pageSize: number,
  constraint = 0,
): number {
  const pages = Math.ceil((promptLen + maxTokens) / pageSize) + 1;
  return BATCH_HEADER_WORDS + 1 + entryWords(1, true, pages, maxTokens, true) + constraint;
}

const utf8 = new TextEncoder();

/** Words the grammar (key, and the spec while unsent; `stopIds` stop tokens) and the
 *  logit_bias of a sampled entry add to a batch record (batch_codec.ts). */
export function constraintWords(
  p: SamplingParams,
  withSpec: boolean,
  stopIds: number,
): number {
  let w = p.logitBias?.length ? 1 + 2 * p.logitBias.length : 0;
  if (p.constraint) {
    w += 1;
    if (withSpec) w += 3 + stopIds + Math.ceil(utf8.encode(p.constraint.source).length / 4);
  }
  return w;
}

/** Why a request can never be served, or null. Shared by the engine (to reject at once)
 *  and the scheduler. */
export function validateRequest(
  promptIds: number[],
  params: SamplingParams,
  c: RequestLimits,
): string | null {
  const n = promptIds.length;
  if (n === 0) return "the prompt is empty";
  if (!Number.isInteger(params.maxTokens) || params.maxTokens < 0) {
    return "max_tokens must be an integer >= 0";
  }
  for (const t of promptIds) {
    if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
      return `token id ${t} is outside the vocabulary (0..${c.vocabSize - 1})`;
    }
  }
  for (const [t, v] of params.logitBias ?? []) {
    if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
      return `logit_bias: token id ${t} is outside the vocabulary (0..${c.vocabSize - 1})`;
    }
    if (!(v >= -100 && v <= 100)) return `logit_bias: value ${v} is outside -100..100`;
  }
  if (params.constraint) {
    try {
      specToRegex(params.constraint);
    } catch (e) {
      if (e instanceof GrammarError) return e.message;
      throw e;
    }
  }
  if (n + params.maxTokens > c.maxContextLen) {
    return `prompt (${n} tokens) + max_tokens (${params.maxTokens}) exceeds the context ` +
      `length ${c.maxContextLen} (the model's context, capped by the KV pool)`;
  }
  if (c.maxRecordWords !== undefined) {
    // Stop ids of the grammar: at most the request's own plus a few eos ids.
    const cw = constraintWords(params, true, params.stopTokenIds.length + 8);
    const words = soloRecordWords(n, params.maxTokens, c.pageSize ?? 1, cw);
    if (words > c.maxRecordWords) {
      const what = cw > 64 ? " + the grammar" : "";
      return `prompt (${n} tokens) + max_tokens (${params.maxTokens})${what} need a batch record of ` +
        `${words * 4} bytes, over the limit of ${c.maxRecordWords * 4} bytes of this server`;
    }
  }
  return null;
}

/** The scheduler's request state. */
export class Req {
  readonly id: string;
  readonly params: SamplingParams;
  readonly promptLen: number;
  /** Prompt followed by the completion tokens known so far (stop token included). */
  readonly tokens: number[];
  readonly sampling: RowSampling;
  /** Admission order; retraction picks the highest. */
  order = 0;
  done = false;

  // KV state, valid while row >= 0.
  row = -1;
  /** The row's page list (append-only while the row is held). */
  pages: number[] = [];
  /** Pages of `pages` already sent to the worker for this row. */
  sentPages = 0;
  /** Leading tokens whose pages the prefix cache owns (locked through `handle`). */
  ownedLen = 0;
  handle: CacheHandle = null;
  /** Tokens whose KV is computed or scheduled. */
  kvLen = 0;
  /** Tokens to prefill since admission (prompt + tokens generated before a retraction). */
  fillLen = 0;
  /** Completion tokens sampled by batches scheduled so far (known or in flight). */
  scheduled = 0;
  /** Entries of this request in batches not processed yet. */
  inflight = 0;

  /** Prompt tokens served from the cache at the first admission (reported). */
  cachedTokens = -1;
  /** Prompt logprobs by position (position 0 is null), when asked. */
  promptLogprobs: (number | null)[] | null;
  /** Top alternatives by prompt position (position 0 is null), when asked with topLogprobs. */
  promptTopLogprobs: ({ ids: number[]; logprobs: number[] } | null)[] | null;
  promptLogprobsSent = false;

  /** Constrained requests: the worker's matcher key (-1 = none), the grammar until it is
   *  sent, and the logit_bias sent with every sampled entry. */
  grammarKey = -1;
  grammar: WireGrammar | null = null;
  grammarSent = false;
  logitBias: { ids: Int32Array; values: Float32Array } | null = null;

  // Event under construction for the current step.
  pendTokens: number[] = [];
  pendLogprobs: number[] = [];
  pendTop: { ids: number[]; logprobs: number[] }[] = [];

  constructor(m: SubmitMessage) {
    this.id = m.id;
    this.params = m.params;
    this.promptLen = m.promptIds.length;
    this.tokens = m.promptIds.slice();
    const p = m.params;
    this.sampling = {
      temperature: p.temperature,
      topP: p.topP,
      topK: p.topK,
      minP: p.minP,
      seed: m.seed,
      step: 0,
      presencePenalty: p.presencePenalty,
      frequencyPenalty: p.frequencyPenalty,
      repetitionPenalty: p.repetitionPenalty,
    };
    if (p.logitBias && p.logitBias.length) {
      this.logitBias = {
        ids: Int32Array.from(p.logitBias, (b) => b[0]),
        values: Float32Array.from(p.logitBias, (b) => b[1]),
      };
    }
    this.promptLogprobs = p.promptLogprobs ? new Array(this.promptLen).fill(null) : null;
    this.promptTopLogprobs = p.promptLogprobs && p.topLogprobs > 0
      ? new Array(this.promptLen).fill(null)
      : null;
  }

  /** Completion tokens known. */
  get outLen(): number {
    return this.tokens.length - this.promptLen;
  }

  /** Whether penalties need the generated tokens (so decodes wait for known tokens). */
  get hasPenalty(): boolean {
    const p = this.params;
    return p.presencePenalty !== 0 || p.frequencyPenalty !== 0 || p.repetitionPenalty !== 1;
  }

  /** The grammar fields of a sampled entry (the grammar itself only the first time). */
  grammarEntry(): { key: number; spec: WireGrammar | null } | null {
    if (this.grammarKey < 0) return null;
    const spec = this.grammarSent ? null : this.grammar;
    this.grammarSent = true;
    this.#constraintWords = -1;
    return { key: this.grammarKey, spec };
  }

  #constraintWords = -1;
  /** Words this request's grammar and logit_bias add to a sampled entry of the next batch. */
  get constraintWords(): number {
    if (this.#constraintWords < 0) {
      this.#constraintWords = constraintWords(
        this.params,
        !this.grammarSent,
        this.grammar?.stopIds.length ?? 0,
      );
    }
    return this.#constraintWords;
  }

  /** The prompt prefill is fully scheduled: the request decodes from now on. */
  get decoding(): boolean {
    return this.row >= 0 && this.kvLen >= this.fillLen;
  }

  /** The event of this step: pending tokens (and prompt logprobs with the first ones),
   *  plus `finish` when the request ends. Clears the pending state. */
  takeEvent(finish: TokenEvent["finish"]): TokenEvent {
    const ev: TokenEvent = { tokens: this.pendTokens };
    if (this.params.logprobs) ev.logprobs = this.pendLogprobs;
    if (this.params.topLogprobs > 0) ev.topLogprobs = this.pendTop;
    if (
      this.promptLogprobs && !this.promptLogprobsSent &&
      (this.pendTokens.length > 0 || finish)
    ) {
      ev.promptLogprobs = this.promptLogprobs;
      if (this.promptTopLogprobs) ev.promptTopLogprobs = this.promptTopLogprobs;
      this.promptLogprobsSent = true;
    }
    if (finish) {
      if (finish.stopToken === undefined) delete finish.stopToken;
      if (finish.error === undefined) delete finish.error;
      ev.finish = finish;
    }
    this.pendTokens = [];
    this.pendLogprobs = [];
    this.pendTop = [];
    return ev;
  }
}
