/**
 * Constrained decoding: a grammar (regex, JSON schema or any JSON object) compiled to a lazy
 * byte DFA, token masks per DFA state over a vocabulary trie (made on first use, then a
 * lookup), and a per-request matcher that advances with each sampled token. Stop tokens
 * (eos) are allowed exactly in accepting states; once the text is complete (no byte can
 * follow) they are all that is allowed.
 */
import {
  DEAD,
  Dfa,
  leftRecursion,
  MAX_CALL_DEPTH,
  MAX_NFA_STATES,
  minCallDepth,
  nfaSize,
} from "./automaton.ts";
import { ebnfToRegex } from "./ebnf.ts";
import { anyObject, schemaToRegex } from "./json_schema.ts";
import { GrammarError, NEVER, parseRegex, prune, type Rx } from "./regex.ts";
import { type ToolCallsSource, toolCallsToRegex } from "./tool_calls.ts";
import { StringRuns } from "./string_runs.ts";
import type { VocabTrie } from "./vocab.ts";

export { GrammarError };

/** What a request is constrained to. `source` is the regex, the schema as JSON text, or a
 *  tool_calls.ts source as JSON text. */
export interface GrammarSpec {
  kind: "regex" | "json_schema" | "json_object" | "tool_calls" | "ebnf";
  source: string;
}

/** The regex AST of a spec, pruned of what can never finish (regex.ts prune); GrammarError
 *  when it does not compile or nothing finite matches it (names the problem). */
export function specToRegex(spec: GrammarSpec): Rx {
  try {
    return checkedRegex(spec);
  } catch (e) {
    // A pattern, schema or grammar nested thousands deep overflows the recursive compilers'
    // stack: a bad request like any other, not a server error.
    if (e instanceof RangeError) {
      throw new GrammarError(`${spec.kind}: nested too deeply to compile (${e.message})`);
    }
    throw e;
  }
}

function checkedRegex(spec: GrammarSpec): Rx {
  const rx = prune(parse(spec));
  if (rx === NEVER) {
    throw new GrammarError(
      `${spec.kind}: no finite text matches it (every branch recurses without end)`,
    );
  }
  // Refused here, at admission, rather than by the automaton in the GPU worker.
  const states = nfaSize(rx);
  if (states > MAX_NFA_STATES) {
    throw new GrammarError(
      `${spec.kind}: too large (${states} automaton states, at most ${MAX_NFA_STATES}; ` +
        `bounded repetitions and maxLength copy what they repeat)`,
    );
  }
  const left = leftRecursion(rx);
  if (left) {
    throw new GrammarError(
      `${spec.kind}: rule ${left.name} is left-recursive (it can call itself before matching ` +
        `any text); write the repetition with * or +, e.g. sum ::= term ("+" term)*`,
    );
  }
  if (minCallDepth(rx) > MAX_CALL_DEPTH) {
    throw new GrammarError(`${spec.kind}: every text nests deeper than ${MAX_CALL_DEPTH} rules`);
  }
  return rx;
}

function parse(spec: GrammarSpec): Rx {
  switch (spec.kind) {
    case "regex":
      return parseRegex(spec.source);
    case "json_object":
      return anyObject();
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
    case "ebnf":
      return ebnfToRegex(spec.source);
  }
}

/** A string state's mask: the shared bitset of its room, plus the ids of accepted tokens
 *  that leave the string. */
interface ChainMask {
  base: Int32Array;
  ids: Int32Array;
}
type StoredMask = Int32Array | ChainMask;

/** Masks per allocation: typed arrays of 19 KB each cost more to allocate (and collect) than
 *  to fill. */
const MASKS_PER_SLAB = 32;

/**
 * A compiled grammar for one vocabulary: its DFA and the token mask of each state seen,
 * built on the state's first visit. A state inside a string (a chain of "k characters
 * left" states, or an unbounded string) takes the string_runs.ts shortcut: a precomputed
 * bitset of the tokens made only of string characters, plus a walk of the few subtrees
 * that leave the string. Any other state walks the whole trie once, skipping subtrees the
 * automaton rejects (cheap for structural states, where nearly everything is rejected at
 * the first byte).
 */
export class CompiledGrammar {
  readonly dfa: Dfa;
  private masks = new Map<number, StoredMask>();
  /** Seconds spent building masks (for the benchmark's per-token mask time). */
  maskSeconds = 0;
  /** Masks built as string chains and by walking the whole trie, and their seconds. */
  readonly builds = { chain: 0, full: 0, chainSeconds: 0, fullSeconds: 0 };
  readonly words: number;
  private stateAt: Int32Array;
  private runs: StringRuns;
  private slab = new Int32Array(0);
  private slabUsed = MASKS_PER_SLAB;
  /** Bytes of the mask slabs allocated so far (what a grammar's masks hold). */
  slabBytes = 0;
  /** string_runs.ts chains by state (null: not a string state). */
  private chains = new Map<number, number[] | null>();

  constructor(readonly spec: GrammarSpec, readonly trie: VocabTrie) {
    this.dfa = new Dfa(specToRegex(spec));
    this.words = Math.ceil(trie.vocabSize / 32);
    this.stateAt = new Int32Array(trie.maxDepth + 1);
    this.runs = stringRuns(trie);
  }

  /** Bit t set: token t keeps the text inside the grammar from `state` (a new array for a
   *  string state's mask; writeMask fills one in place). */
  maskOf(state: number): Int32Array {
    const m = this.entry(state);
    if (m instanceof Int32Array) return m;
    const out = new Int32Array(this.words);
    this.writeMask(state, out);
    return out;
  }

  /** Writes maskOf(state) into `out` (this.words int32 words). */
  writeMask(state: number, out: Int32Array): void {
    const m = this.entry(state);
    if (m instanceof Int32Array) {
      out.set(m);
      return;
    }
    out.set(m.base);
    const ids = m.ids;
    for (let i = 0; i < ids.length; i++) out[ids[i] >> 5] |= 1 << (ids[i] & 31);
  }

  /** The stored mask of `state`, built on its first visit. */
  private entry(state: number): StoredMask {
    let m = this.masks.get(state);
    if (m) return m;
    const t0 = performance.now();
    const chain = this.runs.chainOf(this.dfa, state, this.chains);
    if (chain) {
      m = this.chainMask(chain);
    } else {
      const dense = this.alloc();
      this.walk(state, dense, 0, this.trie.size);
      m = dense;
    }
    this.masks.set(state, m);
    const dt = (performance.now() - t0) / 1000;
    this.maskSeconds += dt;
    const b = this.builds;
    if (chain) (b.chain++, b.chainSeconds += dt);
    else (b.full++, b.fullSeconds += dt);
    return m;
  }

  /** The mask of a string chain state (string_runs.ts): the pure tokens it has room for (a
   *  bitset shared by every state with that room), and the tokens of the exits' subtrees
   *  the chain state their run leads to accepts (a short list). */
  private chainMask(chain: number[]): ChainMask {
    const room = chain.length - 1;
    const list: number[] = [];
    const { exits, exitChars, exitPartial } = this.runs;
    const { byte, end } = this.trie;
    const dfa = this.dfa;
    for (let i = 0; i < exits.length; i++) {
      const c = exitChars[i], p = exitPartial[i];
      if (c > room || (p !== 0 && c >= room)) continue; // no room for the run before it
      let s = chain[c];
      for (let k = 0, n = p >>> 24; k < n && s !== DEAD; k++) {
        s = dfa.step(s, (p >>> (8 * k)) & 0xff);
      }
      // Most exits (a control byte, a stray quote) die at their first byte: test it here.
      const e = exits[i];
      if (s !== DEAD && dfa.step(s, byte[e]) !== DEAD) this.walk(s, list, e, end[e]);
    }
    return { base: this.runs.pureUpTo(room), ids: Int32Array.from(list) };
  }

  /** A zeroed mask, cut from a slab (one allocation per MASKS_PER_SLAB masks). */
  private alloc(): Int32Array {
    if (this.slabUsed === MASKS_PER_SLAB) {
      this.slab = new Int32Array(this.words * MASKS_PER_SLAB);
      this.slabUsed = 0;
      this.slabBytes += this.slab.byteLength;
    }
    const at = this.words * this.slabUsed++;
    return this.slab.subarray(at, at + this.words);
  }

  /** Sets in `m` (a bitset, or a list to push ids on) the tokens of the subtrees of trie
   *  nodes [from, to) (siblings, in preorder; their parent in `state`) that the automaton
   *  accepts. */
  private walk(state: number, m: Int32Array | number[], from: number, to: number) {
    const bits = m instanceof Int32Array ? m : null;
    const { byte, depth, end, tokStart, ids } = this.trie;
    const dfa = this.dfa;
    const stateAt = this.stateAt;
    stateAt[depth[from] - 1] = state;
    for (let n = from; n < to;) {
      const d = depth[n];
      const s = dfa.step(stateAt[d - 1], byte[n]);
      if (s === DEAD) {
        n = end[n];
        continue;
      }
      stateAt[d] = s;
      for (let k = tokStart[n]; k < tokStart[n + 1]; k++) {
        const id = ids[k];
        if (bits) bits[id >> 5] |= 1 << (id & 31);
        else (m as number[]).push(id);
      }
      n++;
    }
  }

  /** Masks built so far. */
  get cachedMasks(): number {
    return this.masks.size;
  }
}

const runsOf = new WeakMap<VocabTrie, StringRuns>();
/** The string-run view of a trie, built once per trie. */
export function stringRuns(trie: VocabTrie): StringRuns {
  let r = runsOf.get(trie);
  if (!r) runsOf.set(trie, r = new StringRuns(trie));
  return r;
}

/** Default budget of the mask slabs a cache keeps: ~28,000 dense masks of a 151k vocabulary.
 *  A grammar's masks grow with the states its requests visit, so without a byte bound 64
 *  large schemas (agents send many tool schemas) could hold gigabytes in the GPU worker. */
export const GRAMMAR_CACHE_BYTES = 512 << 20;

/** Compiled grammars by spec, per trie (a worker serves one tokenizer), least recently used
 *  dropped first past `capacity` grammars or `maxBytes` of masks. A dropped grammar lives on
 *  in the matchers that use it; a later request compiles it again. */
export class GrammarCache {
  private map = new Map<string, CompiledGrammar>();
  constructor(
    readonly trie: VocabTrie,
    private capacity = 64,
    private maxBytes = GRAMMAR_CACHE_BYTES,
  ) {}

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
    // Masks grow while grammars are used, so the bound is checked when one comes in.
    let bytes = 0;
    for (const c of this.map.values()) bytes += c.slabBytes;
    for (const [k, c] of this.map) {
      if (this.map.size <= this.capacity && bytes <= this.maxBytes) break;
      if (c === g) break;
      this.map.delete(k);
      bytes -= c.slabBytes;
    }
    return g;
  }

  /** Grammars held. */
  get size(): number {
    return this.map.size;
  }
}

/** One request's position in its grammar. DEAD (a failed grammar) allows only the stop
 *  tokens, so that its request ends. */
export class Matcher {
  private state: number;
  /** A stop token was accepted: the text is complete. */
  private stopped = false;

  /** `grammar` null: a grammar that failed to compile (the matcher starts failed). */
  constructor(readonly grammar: CompiledGrammar | null, readonly stopIds: readonly number[]) {
    this.state = grammar ? 0 : DEAD;
  }

  /** Whether the text so far is a full match. */
  get accepting(): boolean {
    return this.stopped ||
      (this.state !== DEAD && this.grammar!.dfa.isAccepting(this.state));
  }

  /** Ends the text where it is: from now on only the stop tokens are allowed. For an error
   *  of the grammar in the GPU worker (an automaton past MAX_DFA_STATES), which must end its
   *  request, not the engine. */
  fail(): void {
    this.state = DEAD;
  }

  /** Writes the allowed tokens of the next step into `out` (grammar.words int32 words). */
  fillMask(out: Int32Array): void {
    if (this.stopped || this.state === DEAD) {
      out.fill(0);
    } else {
      this.grammar!.writeMask(this.state, out);
      if (!this.grammar!.dfa.isAccepting(this.state)) return;
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
    const bytes = this.grammar!.trie.tokens[token];
    this.state = bytes ? this.grammar!.dfa.walk(this.state, bytes) : DEAD;
  }
}
