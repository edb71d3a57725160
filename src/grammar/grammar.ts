/**
 * Constrained decoding: a grammar (regex, JSON schema or any JSON object) compiled to a lazy
 * byte DFA, token masks per DFA state over a vocabulary trie (made on first use, then a
 * lookup), and a per-request matcher that advances with each sampled token. Stop tokens
 * (eos) are allowed exactly in accepting states; once the text is complete (no byte can
 * follow) they are all that is allowed.
 */
import { DEAD, Dfa } from "./automaton.ts";
import { ANY_DEPTH, anyObject, schemaToRegex } from "./json_schema.ts";
import { GrammarError, parseRegex, type Rx } from "./regex.ts";
import { type ToolCallsSource, toolCallsToRegex } from "./tool_calls.ts";
import type { VocabTrie } from "./vocab.ts";

export { GrammarError };

/** What a request is constrained to. `source` is the regex, the schema as JSON text, or a
 *  tool_calls.ts source as JSON text. */
export interface GrammarSpec {
  kind: "regex" | "json_schema" | "json_object" | "tool_calls";
  source: string;
}

/** The regex AST of a spec; GrammarError when it does not compile (names the problem). */
export function specToRegex(spec: GrammarSpec): Rx {
  switch (spec.kind) {
    case "regex":
      return parseRegex(spec.source);
    case "json_object":
      return anyObject(ANY_DEPTH);
    case "json_schema": {
      let schema: unknown;
      try {
        schema = JSON.parse(spec.source);
      } catch (e) {
        throw new GrammarError(`json_schema is not valid JSON: ${(e as Error).message}`);
      }
      return schemaToRegex(schema);
    }
    case "tool_calls":
      return toolCallsToRegex(JSON.parse(spec.source) as ToolCallsSource);
  }
}

/** A compiled grammar for one vocabulary: its DFA and the token mask of each state seen. */
export class CompiledGrammar {
  readonly dfa: Dfa;
  private masks = new Map<number, Int32Array>();
  /** Seconds spent building masks (for the benchmark's per-token mask time). */
  maskSeconds = 0;
  readonly words: number;

  constructor(readonly spec: GrammarSpec, readonly trie: VocabTrie) {
    this.dfa = new Dfa(specToRegex(spec));
    this.words = Math.ceil(trie.vocabSize / 32);
  }

  /** Bit t set: token t keeps the text inside the grammar from `state`. */
  maskOf(state: number): Int32Array {
    let m = this.masks.get(state);
    if (m) return m;
    const t0 = performance.now();
    m = new Int32Array(this.words);
    const { byte, depth, end, tokStart, ids } = this.trie;
    const dfa = this.dfa;
    const stateAt = new Int32Array(this.trie.maxDepth + 1);
    stateAt[0] = state;
    const N = byte.length;
    for (let n = 0; n < N;) {
      const d = depth[n];
      const s = dfa.step(stateAt[d - 1], byte[n]);
      if (s === DEAD) {
        n = end[n];
        continue;
      }
      stateAt[d] = s;
      for (let k = tokStart[n]; k < tokStart[n + 1]; k++) {
        const id = ids[k];
        m[id >> 5] |= 1 << (id & 31);
      }
      n++;
    }
    this.masks.set(state, m);
    this.maskSeconds += (performance.now() - t0) / 1000;
    return m;
  }

  /** Masks built so far. */
  get cachedMasks(): number {
    return this.masks.size;
  }
}

/** Compiled grammars by spec, per trie (a worker serves one tokenizer). */
export class GrammarCache {
  private map = new Map<string, CompiledGrammar>();
  constructor(readonly trie: VocabTrie, private capacity = 64) {}

  get(spec: GrammarSpec): CompiledGrammar {
    const key = spec.kind + "\0" + spec.source;
    let g = this.map.get(key);
    if (g) {
      this.map.delete(key); // most recent last
      this.map.set(key, g);
      return g;
    }
    g = new CompiledGrammar(spec, this.trie);
    this.map.set(key, g);
    if (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value!);
    return g;
  }
}

/** One request's position in its grammar. */
export class Matcher {
  private state = 0;
  /** A stop token was accepted: the text is complete. */
  private stopped = false;

  constructor(readonly grammar: CompiledGrammar, readonly stopIds: readonly number[]) {}

  /** Whether the text so far is a full match. */
  get accepting(): boolean {
    return this.stopped || (this.state !== DEAD && this.grammar.dfa.isAccepting(this.state));
  }

  /** Writes the allowed tokens of the next step into `out` (grammar.words int32 words). */
  fillMask(out: Int32Array): void {
    if (this.stopped || this.state === DEAD) {
      out.fill(0);
    } else {
      out.set(this.grammar.maskOf(this.state));
      if (!this.grammar.dfa.isAccepting(this.state)) return;
    }
    for (const id of this.stopIds) out[id >> 5] |= 1 << (id & 31);
  }

  /** Advances past a sampled token (a stop token ends the text). */
  accept(token: number): void {
    if (this.stopped) return;
    if (this.stopIds.includes(token)) {
      this.stopped = true;
      return;
    }
    if (this.state === DEAD) return;
    const bytes = this.grammar.trie.tokens[token];
    this.state = bytes ? this.grammar.dfa.walk(this.state, bytes) : DEAD;
  }
}
