/**
 * The scheduling policy: which requests run in the next forward batch, with which pages.
 *
 * Each step builds one batch: a decode entry for every running request that has finished
 * its prefill, then prefill entries (continued chunks first, then new admissions in FIFO
 * order) up to --max-prefill-length tokens. Mixing decodes into every batch is what keeps
 * them from starving while long prompts are prefilled in chunks.
 *
 * Memory: decodes get a page when they cross a page boundary; when the pool (free +
 * evictable cache pages) cannot give them one, the newest running request is retracted:
 * its pages go back (its computed prefix stays in the radix cache), and it is requeued with
 * the tokens it generated, to be recomputed. Admission keeps a reserve for the expected
 * growth of running requests (new-token ratio, raised after a retraction, decaying after).
 *
 * Overlap: schedule() may run while the previous batch is still in flight. Everything it
 * needs is known at that time (positions and pages are planned; decode input tokens live on
 * the device), and stop conditions are checked one step late in process().
 */

import type { FinishReason, TokenEvent } from "../engine/types.ts";
import type { BatchEntry, ForwardBatch, ForwardResult, RowSampling } from "../ipc/batch.ts";
import { BATCH_HEADER_WORDS, entryWords } from "../ipc/batch_codec.ts";
import { PageAllocator } from "../cache/page_allocator.ts";
import { NaiveCache, type PrefixCache } from "../cache/prefix_cache.ts";
import { RadixCache } from "../cache/radix_cache.ts";
import { Req, type SubmitMessage, validateRequest } from "./request.ts";
import { SchedulerStats } from "./stats.ts";

/** Limits and model facts the policy works with. */
export interface SchedulerConfig {
  pageSize: number;
  numPages: number;
  /** Page-table rows of the worker (the most requests holding pages). */
  maxRows: number;
  /** Most prefill tokens in one batch. */
  maxPrefillLength: number;
  /** Most tokens (prefill + decode) in one batch. */
  maxBatchTokens: number;
  /** Longest prompt + completion. */
  maxContextLen: number;
  vocabSize: number;
  eosTokenIds: number[];
  cache: "radix" | "naive";
  /** Most words of one batch record (the ring's message limit); absent = no limit. Batches
   *  are packed up to it, and a request that could not fit alone is rejected at submit. */
  maxRecordWords?: number;
}

/** A scheduled batch and the request of each entry. */
export interface Plan {
  batch: ForwardBatch;
  reqs: Req[];
}

const RATIO_INIT = 0.5;
const RATIO_MIN = 0.1;
const RATIO_DECAY = 0.002;
const RATIO_AFTER_RETRACT = 1;

/** The row sampling of one step (a plain literal: object spread is a slow path in V8). */
function stepSampling(r: Req, step: number): RowSampling {
  const s = r.sampling;
  return {
    temperature: s.temperature,
    topP: s.topP,
    topK: s.topK,
    minP: s.minP,
    seed: s.seed,
    step,
    presencePenalty: s.presencePenalty,
    frequencyPenalty: s.frequencyPenalty,
    repetitionPenalty: s.repetitionPenalty,
  };
}

/** The scheduler's state and policy (no I/O; the loop in loop.ts drives it). */
export class Scheduler {
  readonly allocator: PageAllocator;
  readonly cache: PrefixCache;
  readonly stats = new SchedulerStats();
  readonly waiting: Req[] = [];
  readonly running: Req[] = [];
  #byId = new Map<string, Req>();
  #rowsFree: number[] = [];
  #aborts = new Set<string>();
  #events: [string, TokenEvent][] = [];
  #eos: Set<number>;
  #nextOrder = 0;
  #nextBatch = 1;
  #nextGrammarKey = 1;
  /** Keys of finished constrained requests, sent with the next batch. */
  #released: number[] = [];
  #ratio = RATIO_INIT;
  /** Words still free in the record of the batch being built. */
  #recordLeft = Infinity;
  readonly P: number;

  constructor(readonly cfg: SchedulerConfig) {
    this.P = cfg.pageSize;
    this.allocator = new PageAllocator(cfg.numPages);
    this.cache = cfg.cache === "radix"
      ? new RadixCache(cfg.pageSize, this.allocator)
      : new NaiveCache(cfg.pageSize, this.allocator);
    for (let r = cfg.maxRows - 1; r >= 0; r--) this.#rowsFree.push(r);
    this.#eos = new Set(cfg.eosTokenIds);
  }

  /** No request waiting or running. */
  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  /** Why a request can never be served, or null. */
  validate(m: SubmitMessage): string | null {
    if (this.#byId.has(m.id)) return `duplicate request id ${m.id}`;
    return validateRequest(m.promptIds, m.params, this.cfg);
  }

  /** Queue a request (or finish it at once with an error when it can never fit). */
  submit(m: SubmitMessage): void {
    const err = this.validate(m);
    const r = new Req(m);
    if (err) {
      this.#emitFinish(r, "abort", undefined, err);
      return;
    }
    r.order = this.#nextOrder++;
    const c = m.params.constraint;
    if (c) {
      const stops = new Set(m.params.stopTokenIds);
      if (!m.params.ignoreEos) { for (const t of this.cfg.eosTokenIds) stops.add(t); }
      r.grammarKey = this.#nextGrammarKey++;
      r.grammar = { kind: c.kind, source: c.source, stopIds: Int32Array.from(stops) };
    }
    this.#byId.set(r.id, r);
    this.waiting.push(r);
    this.stats.promptTokens += r.promptLen;
  }

  /** Ask to stop a request; it leaves at the next schedule(). */
  abort(id: string): void {
    if (this.#byId.has(id)) this.#aborts.add(id);
  }

  /** Abort everything (shutdown with abort, or a dead worker). */
  abortAll(error?: string): void {
    for (const r of [...this.running, ...this.waiting]) this.#finish(r, "abort", undefined, error);
    this.#aborts.clear();
  }

  /** Events produced since the last call (one list per step, for one postMessage). */
  takeEvents(): [string, TokenEvent][] {
    const e = this.#events;
    this.#events = [];
    return e;
  }

  /** Build the next batch, or null when there is nothing to run now. */
  schedule(): Plan | null {
    for (const id of this.#aborts) {
      const r = this.#byId.get(id);
      if (r) this.#finish(r, "abort");
    }
    this.#aborts.clear();
    const entries: BatchEntry[] = [], reqs: Req[] = [];
    // One word for the count of released grammars, sent after the entries.
    this.#recordLeft = (this.cfg.maxRecordWords ?? Infinity) - BATCH_HEADER_WORDS - 1;
    this.#scheduleDecodes(entries, reqs);
    this.#schedulePrefills(entries, reqs);
    if (entries.length === 0) return null;
    this.#ratio = Math.max(RATIO_MIN, this.#ratio - RATIO_DECAY);
    const batch: ForwardBatch = { id: this.#nextBatch++, entries, releasedGrammars: null };
    const k = Math.min(this.#released.length, Math.max(0, this.#recordLeft));
    if (k > 0) {
      batch.releasedGrammars = Int32Array.from(this.#released.slice(0, k));
      this.#released = this.#released.slice(k);
    }
    return { batch, reqs };
  }

  #canDecode(r: Req): boolean {
    return r.decoding && r.scheduled < r.params.maxTokens &&
      r.kvLen < this.cfg.maxContextLen && !(r.hasPenalty && r.inflight > 0);
  }

  #available(): number {
    return this.allocator.freePages + this.cache.evictablePages;
  }

  /** Take n pages, evicting cached ones if needed; null if the pool cannot. */
  #take(n: number): number[] | null {
    if (n <= 0) return [];
    const short = n - this.allocator.freePages;
    if (short > 0) this.cache.evict(short);
    return this.allocator.alloc(n);
  }

  #scheduleDecodes(entries: BatchEntry[], reqs: Req[]): void {
    const P = this.P;
    let dec = this.running.filter((r) => this.#canDecode(r));
    for (;;) {
      let need = 0;
      for (const r of dec) if (r.kvLen >= r.pages.length * P) need++;
      if (need <= this.#available()) break;
      const victim = this.#newestRunning();
      this.#retract(victim);
      dec = dec.filter((r) => r !== victim);
    }
    // New page ids of all decodes live in one array (views per entry): a typed array per
    // entry would dominate the cost of a 256-request step.
    let unsent = 0;
    for (const r of dec) unsent += r.pages.length - r.sentPages + 1;
    const arena = new Int32Array(unsent);
    let at = 0;
    for (const r of dec) {
      const grow = r.kvLen >= r.pages.length * P ? 1 : 0;
      const penalty = r.hasPenalty ? r.outLen : 0;
      const words = entryWords(1, false, r.pages.length - r.sentPages + grow, penalty, false) +
        r.constraintWords;
      // Past the record limit: this decode waits for the next step.
      if (words > this.#recordLeft) continue;
      this.#recordLeft -= words;
      if (grow) r.pages.push(this.#take(1)![0]);
      const from = at;
      for (let i = r.sentPages; i < r.pages.length; i++) arena[at++] = r.pages[i];
      entries.push({
        row: r.row,
        startPos: r.kvLen,
        qLen: 1,
        inputIds: null,
        pageStart: r.sentPages,
        newPages: arena.subarray(from, at),
        sample: true,
        sampling: stepSampling(r, r.scheduled),
        penaltyTokens: r.hasPenalty ? Int32Array.from(r.tokens.slice(r.promptLen)) : null,
        logprobTargets: null,
        topLogprobs: r.params.logprobs ? r.params.topLogprobs : 0,
        grammar: r.grammarEntry(),
        logitBias: r.logitBias,
      });
      reqs.push(r);
      r.sentPages = r.pages.length;
      r.kvLen++;
      r.scheduled++;
      r.inflight++;
    }
  }

  #schedulePrefills(entries: BatchEntry[], reqs: Req[]): void {
    const P = this.P;
    let budget = Math.min(this.cfg.maxPrefillLength, this.cfg.maxBatchTokens - entries.length);
    // Chunked prompts already holding a row continue first.
    for (const r of [...this.running]) {
      if (budget <= 0) break;
      if (r.row < 0 || r.kvLen >= r.fillLen) continue;
      const chunk = Math.min(
        r.fillLen - r.kvLen,
        budget,
        this.#chunkFitting(r, r.pages.length - r.sentPages),
      );
      if (chunk <= 0) continue;
      const need = Math.ceil((r.kvLen + chunk) / P) - r.pages.length;
      // Stuck with nothing else to run: retract newer requests (or this one) to go on.
      while (need > this.#available() && entries.length === 0 && r.row >= 0) {
        this.#retract(this.#newestRunning());
      }
      if (r.row < 0 || need > this.#available()) continue;
      r.pages.push(...this.#take(need)!);
      this.#addPrefill(r, chunk, entries, reqs);
      budget -= chunk;
    }
    // New admissions (and retracted requests, which keep their place by age).
    let reserve = 0;
    for (const r of this.running) reserve += this.#expectedGrowth(r, r.kvLen);
    while (budget > 0 && this.waiting.length > 0 && this.#rowsFree.length > 0) {
      const r = this.waiting[0];
      if (r.inflight > 0) break; // its last token is still in flight: wait for it
      const fill = r.tokens.length;
      const wantLogprobs = r.promptLogprobs !== null && !r.promptLogprobsSent;
      const m = this.cache.match(r.tokens, wantLogprobs ? 0 : fill - 1);
      this.cache.lock(m.handle);
      const chunk = Math.min(fill - m.length, budget, this.#chunkFitting(r, m.pages.length));
      if (chunk <= 0) {
        this.cache.unlock(m.handle);
        break;
      }
      const need = Math.ceil((m.length + chunk) / P) - m.pages.length;
      const growth = this.#expectedGrowth(r, m.length + chunk, fill);
      const avail = this.#available();
      if (avail < need || (this.running.length > 0 && avail < need + reserve + growth)) {
        this.cache.unlock(m.handle);
        break;
      }
      this.waiting.shift();
      r.row = this.#rowsFree.pop()!;
      r.pages = m.pages;
      r.pages.push(...this.#take(need)!);
      r.sentPages = 0;
      r.handle = m.handle;
      r.ownedLen = m.length;
      r.kvLen = m.length;
      r.fillLen = fill;
      r.scheduled = r.outLen;
      if (r.cachedTokens < 0) {
        r.cachedTokens = m.length;
        this.stats.cachedTokens += m.length;
      }
      this.#insertRunning(r);
      this.#addPrefill(r, chunk, entries, reqs);
      budget -= chunk;
      reserve += growth;
    }
  }

  /** Pages a request is expected to need beyond `kvLen` tokens (rest of its prompt and the
   *  expected share of its remaining completion). */
  #expectedGrowth(r: Req, kvLen: number, fill = r.fillLen): number {
    const rest = Math.max(0, r.params.maxTokens - r.scheduled);
    const end = Math.max(fill, kvLen) + Math.ceil(rest * this.#ratio);
    return Math.max(0, Math.ceil(end / this.P) - Math.ceil(kvLen / this.P));
  }

  /** Largest prefill chunk of `r` whose entry fits the words left in the record, given the
   *  pages it has not sent yet (a chunk adds at most one page a token, plus one). */
  #chunkFitting(r: Req, unsentPages: number): number {
    const targets = r.promptLogprobs !== null && !r.promptLogprobsSent;
    const penalty = r.hasPenalty ? r.outLen : 0;
    const fixed = entryWords(0, false, unsentPages + 1, penalty, false) + r.constraintWords;
    return Math.max(0, Math.floor((this.#recordLeft - fixed) / (targets ? 3 : 2)));
  }

  #addPrefill(r: Req, chunk: number, entries: BatchEntry[], reqs: Req[]): void {
    const start = r.kvLen;
    const final = start + chunk === r.fillLen;
    const sample = final && r.scheduled < r.params.maxTokens;
    let targets: Int32Array | null = null;
    if (r.promptLogprobs && !r.promptLogprobsSent) {
      targets = new Int32Array(chunk);
      for (let i = 0; i < chunk; i++) {
        const p = start + i + 1;
        targets[i] = p < r.promptLen ? r.tokens[p] : -1;
      }
    }
    const newPages = Int32Array.from(r.pages.slice(r.sentPages));
    const penaltyTokens = sample && r.hasPenalty
      ? Int32Array.from(r.tokens.slice(r.promptLen))
      : null;
    this.#recordLeft -= entryWords(
      chunk,
      true,
      newPages.length,
      penaltyTokens?.length ?? 0,
      targets !== null,
    ) + (sample ? r.constraintWords : 0);
    entries.push({
      row: r.row,
      startPos: start,
      qLen: chunk,
      inputIds: Int32Array.from(r.tokens.slice(start, start + chunk)),
      pageStart: r.sentPages,
      newPages,
      sample,
      sampling: stepSampling(r, r.scheduled),
      penaltyTokens,
      logprobTargets: targets,
      // With prompt logprobs, k alternatives at every prompt position too (echo + logprobs k).
      topLogprobs: (sample && r.params.logprobs) || targets ? r.params.topLogprobs : 0,
      grammar: sample ? r.grammarEntry() : null,
      logitBias: sample ? r.logitBias : null,
    });
    reqs.push(r);
    r.sentPages = r.pages.length;
    r.kvLen += chunk;
    r.inflight++;
    if (sample) r.scheduled++;
    this.#cacheUnfinished(r);
  }

  /** Share the full pages of a prompt as soon as they are scheduled, so requests admitted
   *  in later steps hit them even while this one runs. Skipped when another request
   *  already cached more of the same prefix: then ours stay private until release. */
  #cacheUnfinished(r: Req): void {
    if (!this.cache.sharing) return;
    const aligned = Math.floor(r.kvLen / this.P) * this.P;
    if (aligned <= r.ownedLen) return;
    const m = this.cache.match(r.tokens, aligned);
    if (m.length !== r.ownedLen) return;
    this.cache.insert(r.tokens, aligned, r.pages);
    const h = this.cache.handleOf(r.tokens, aligned);
    this.cache.lock(h);
    this.cache.unlock(r.handle);
    r.handle = h;
    r.ownedLen = aligned;
  }

  /** Give back a request's row and pages: full pages of its computed tokens go to the
   *  cache (radix), the rest to the pool. */
  #release(r: Req): void {
    if (r.row < 0) return;
    const P = this.P;
    if (this.cache.sharing) {
      const aligned = Math.floor(Math.min(r.kvLen, r.tokens.length) / P) * P;
      const prefix = this.cache.insert(r.tokens, aligned, r.pages);
      this.allocator.free(r.pages.slice(r.ownedLen / P, prefix / P));
      this.allocator.free(r.pages.slice(aligned / P));
      this.cache.unlock(r.handle);
    } else {
      this.allocator.free(r.pages);
    }
    this.#rowsFree.push(r.row);
    r.row = -1;
    r.pages = [];
    r.sentPages = 0;
    r.handle = null;
    r.ownedLen = 0;
    r.kvLen = 0;
    r.fillLen = 0;
  }

  #newestRunning(): Req {
    return this.running[this.running.length - 1];
  }

  /** Keep `running` sorted by age so the newest is last. */
  #insertRunning(r: Req): void {
    const a = this.running;
    let i = a.length;
    while (i > 0 && a[i - 1].order > r.order) i--;
    a.splice(i, 0, r);
  }

  #retract(r: Req): void {
    this.#release(r);
    this.running.splice(this.running.indexOf(r), 1);
    const w = this.waiting;
    let i = 0;
    while (i < w.length && w[i].order < r.order) i++;
    w.splice(i, 0, r);
    this.stats.retractions++;
    this.#ratio = RATIO_AFTER_RETRACT;
  }

  /** Apply the result of a scheduled batch: new tokens, stop conditions, events. */
  process(plan: Plan, res: ForwardResult): void {
    const { entries } = plan.batch;
    for (let k = 0; k < entries.length; k++) {
      const r = plan.reqs[k], e = entries[k];
      r.inflight--;
      if (r.done) continue;
      const pl = res.promptLogprobs[k];
      if (pl && e.logprobTargets && r.promptLogprobs) {
        for (let i = 0; i < e.qLen; i++) {
          if (e.logprobTargets[i] >= 0) r.promptLogprobs[e.startPos + i + 1] = pl[i];
        }
      }
      const pIds = res.promptTopIds[k], pLps = res.promptTopLogprobs[k];
      if (pIds && pLps && e.logprobTargets && r.promptTopLogprobs) {
        const kk = pIds.length / e.qLen;
        for (let i = 0; i < e.qLen; i++) {
          if (e.logprobTargets[i] < 0) continue;
          r.promptTopLogprobs[e.startPos + i + 1] = {
            ids: Array.from(pIds.subarray(i * kk, (i + 1) * kk)),
            logprobs: Array.from(pLps.subarray(i * kk, (i + 1) * kk)),
          };
        }
      }
      if (e.sample) {
        this.#appendToken(r, res.tokens[k], res.logprobs[k], res.topIds[k], res.topLogprobs[k]);
      } else if (
        r.row >= 0 && e.startPos + e.qLen === r.fillLen && r.outLen >= r.params.maxTokens
      ) {
        this.#finish(r, "length");
      }
    }
    for (const r of plan.reqs) {
      if (!r.done && r.pendTokens.length > 0) this.#emit(r, undefined);
    }
  }

  #appendToken(
    r: Req,
    t: number,
    lp: number,
    topIds: Int32Array | null,
    topLp: Float32Array | null,
  ): void {
    r.tokens.push(t);
    this.stats.generatedTokens++;
    const p = r.params;
    if ((!p.ignoreEos && this.#eos.has(t)) || p.stopTokenIds.includes(t)) {
      this.#finish(r, "stop", t);
      return;
    }
    r.pendTokens.push(t);
    if (p.logprobs) r.pendLogprobs.push(lp);
    if (p.topLogprobs > 0 && topIds && topLp) {
      r.pendTop.push({ ids: Array.from(topIds), logprobs: Array.from(topLp) });
    }
    if (r.outLen >= p.maxTokens) this.#finish(r, "length");
  }

  #finish(r: Req, reason: FinishReason, stopToken?: number, error?: string): void {
    if (r.done) return;
    r.done = true;
    if (r.grammarSent) this.#released.push(r.grammarKey);
    this.#release(r);
    let i = this.running.indexOf(r);
    if (i >= 0) this.running.splice(i, 1);
    i = this.waiting.indexOf(r);
    if (i >= 0) this.waiting.splice(i, 1);
    this.#byId.delete(r.id);
    this.#emitFinish(r, reason, stopToken, error);
  }

  #emitFinish(r: Req, reason: FinishReason, stopToken?: number, error?: string): void {
    this.#emit(r, {
      reason,
      stopToken,
      promptTokens: r.promptLen,
      completionTokens: r.outLen,
      cachedTokens: Math.max(0, r.cachedTokens),
      error,
    });
  }

  #emit(r: Req, finish: TokenEvent["finish"]): void {
    this.#events.push([r.id, r.takeEvent(finish)]);
  }

  /** Drops every cached prefix (SGLang's /flush_cache). Refused (false) while requests
   *  wait or run: their pages and cache locks must stay. */
  flushCache(): boolean {
    if (!this.idle) return false;
    this.cache.evict(this.cache.evictablePages);
    return true;
  }

  /** Gauges and counters; kvPagesTotal = free + cached + inUse by construction. */
  metrics() {
    return this.stats.snapshot(this, this.allocator.freePages, this.cache.evictablePages);
  }
}
