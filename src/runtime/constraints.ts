/**
 * Structured outputs on the worker side: the matchers of constrained requests (keyed by the
 * scheduler's grammar key, made when a request's grammar first arrives, dropped when the
 * scheduler releases it), compiled grammars cached per source, and the host block of one
 * batch's masks and logit_bias for msg_apply_token_mask.
 *
 * Why here and not in the scheduler: with overlap scheduling the scheduler sends batch N+1
 * before it knows token N, and the mask of N+1 needs token N. The worker enqueues the
 * forward pass of N+1 first, then takes token N from finish(N), advances the matchers and
 * uploads the masks while the device still runs the forward pass (model_runner.ts).
 */
import { join } from "node:path";
import {
  CompiledGrammar,
  GrammarCache,
  GrammarError,
  type GrammarSpec,
  Matcher,
  stringRuns,
} from "../grammar/grammar.ts";
import { vocabTrie } from "../grammar/vocab.ts";
import type { ForwardBatch } from "../ipc/batch.ts";

/** Most logit_bias entries one row may carry in the block (OpenAI allows 300). */
export const MAX_BIAS_PER_ROW = 300;

/** Section offsets (int32 words) of the constraint block for up to maxB sampled rows. */
export class ConstraintLayout {
  readonly maskRows: number;
  readonly biasRows: number;
  readonly biasStarts: number;
  readonly biasIds: number;
  readonly biasValues: number;
  readonly masks: number;
  readonly words: number;
  constructor(readonly maxB: number, readonly maskWords: number) {
    // Small sections, then the masks (one upload covers both), then the bias entries.
    this.maskRows = 0;
    this.biasRows = maxB;
    this.biasStarts = 2 * maxB;
    this.masks = 3 * maxB + 4;
    this.biasIds = this.masks + maxB * maskWords;
    this.biasValues = this.biasIds + maxB * MAX_BIAS_PER_ROW;
    this.words = this.biasValues + maxB * MAX_BIAS_PER_ROW;
  }
}

/** What one batch's block holds: rows with a mask, rows with a bias, their bias entries,
 *  and the words of the first upload (small sections and masks). */
export interface FilledConstraints {
  numMasked: number;
  numBiased: number;
  numBias: number;
  words: number;
}

/** Matchers and grammars of one worker. */
export class Constraints {
  private matchers = new Map<number, Matcher>();
  private cache: GrammarCache | null = null;
  readonly L: ConstraintLayout;
  /** Seconds spent filling masks (lookups, copies and first-time mask builds). */
  maskSeconds = 0;
  maskedRows = 0;

  constructor(private modelDir: string, private vocabSize: number, maxB: number) {
    this.L = new ConstraintLayout(maxB, Math.ceil(vocabSize / 32));
  }

  /** Whether some sampled entry of the batch is constrained or biased. */
  static needed(batch: ForwardBatch): boolean {
    for (const e of batch.entries) if (e.sample && (e.grammar || e.logitBias)) return true;
    return false;
  }

  /** Drops the matchers the scheduler released. */
  release(batch: ForwardBatch): void {
    const rel = batch.releasedGrammars;
    if (rel) { for (const k of rel) this.matchers.delete(k); }
  }

  /** Builds the vocabulary trie, its string-run tables and the grammar cache over them,
   *  once (the first compile() does it otherwise). */
  prepare(): GrammarCache {
    if (!this.cache) {
      const tj = JSON.parse(Deno.readTextFileSync(join(this.modelDir, "tokenizer.json")));
      this.cache = new GrammarCache(vocabTrie(tj, this.vocabSize));
      stringRuns(this.cache.trie);
    }
    return this.cache;
  }

  /** The grammar of a spec (compiled once per source). */
  compile(spec: GrammarSpec): CompiledGrammar {
    return this.prepare().get(spec);
  }

  /** Fills the block for the sampled rows of a batch (sampled row s = s-th sampled entry):
   *  new matchers first, then each constrained row's mask at its current state. */
  fill(
    batch: ForwardBatch,
    sampleEntries: number[],
    i32: Int32Array,
    f32: Float32Array,
  ): FilledConstraints {
    const t0 = performance.now();
    const L = this.L;
    let nm = 0, nb = 0, nBias = 0;
    i32[L.biasStarts] = 0;
    for (let s = 0; s < sampleEntries.length; s++) {
      const e = batch.entries[sampleEntries[s]];
      if (e.grammar) {
        const key = e.grammar.key, spec = e.grammar.spec;
        let m = this.matchers.get(key);
        if (spec) {
          const stops = Array.from(spec.stopIds);
          m = this.guarded(key, () => new Matcher(this.compile(spec), stops)) ??
            new Matcher(null, stops);
          this.matchers.set(key, m);
        }
        if (m) {
          i32[L.maskRows + nm] = s;
          const out = i32.subarray(L.masks + nm * L.maskWords, L.masks + (nm + 1) * L.maskWords);
          if (this.guarded(key, () => m.fillMask(out)) === null) (m.fail(), m.fillMask(out));
          nm++;
        }
      }
      if (e.logitBias) {
        const n = Math.min(e.logitBias.ids.length, MAX_BIAS_PER_ROW);
        i32[L.biasRows + nb] = s;
        i32.set(e.logitBias.ids.subarray(0, n), L.biasIds + nBias);
        f32.set(e.logitBias.values.subarray(0, n), L.biasValues + nBias);
        nBias += n;
        nb++;
        i32[L.biasStarts + nb] = nBias;
      }
    }
    this.maskSeconds += (performance.now() - t0) / 1000;
    this.maskedRows += nm;
    return { numMasked: nm, numBiased: nb, numBias: nBias, words: L.masks + nm * L.maskWords };
  }

  /** Advances the matchers past the tokens a finished batch sampled. */
  advance(batch: ForwardBatch, tokens: Int32Array): void {
    const es = batch.entries;
    for (let k = 0; k < es.length; k++) {
      const g = es[k].grammar;
      if (!g || !es[k].sample) continue;
      const m = this.matchers.get(g.key);
      if (m && this.guarded(g.key, () => m.accept(tokens[k])) === null) m.fail();
    }
  }

  /** `f()`, or null after a GrammarError or RangeError (logged): an automaton that outgrows
   *  its bounds while generating fails its own request (the matcher then allows only stop
   *  tokens), not the worker and with it every request. */
  private guarded<T>(key: number, f: () => T): T | null {
    try {
      return f();
    } catch (e) {
      // RangeError: a stack or map the automaton outgrew (admission refuses what it can see).
      if (!(e instanceof GrammarError || e instanceof RangeError)) throw e;
      console.error(`grammar ${key}: ${e.message}; its request ends here`);
      return null;
    }
  }

  /** Live matchers (tests). */
  get size(): number {
    return this.matchers.size;
  }
}
