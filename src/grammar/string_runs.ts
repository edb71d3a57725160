/**
 * Masks of "inside a string" states without walking the whole vocabulary.
 *
 * Most of a JSON document's tokens are string content, and a string with maxLength is a
 * chain of states ("k characters left"), each of which allows nearly every token: a full
 * trie walk per state costs ~2 ms on Qwen3's 333k-node trie. But tokens made only of
 * string characters (printable ASCII other than `"` and `\`, and UTF-8 multi-byte
 * characters, the last possibly cut) are accepted by such a state exactly when the chain
 * still has room for as many characters as the token starts: one precomputed bitset per
 * count (`pureUpTo`). Only the other tokens (those with a quote, a backslash, a control
 * byte or a stray continuation byte after a run of string characters) are walked, from
 * the chain state their run leads to: `exits` (1,492 nodes for Qwen3, whose subtrees hold
 * under 3% of the trie).
 *
 * Whether a state is such a chain is read off the automaton, not assumed: `chainOf`
 * checks that every string character takes it to one and the same next state (through the
 * same intermediate states for each multi-byte lead), and so on down the chain. A state
 * that fails (a pattern's class, a structural state) is walked as usual.
 */
import { DEAD, type Dfa } from "./automaton.ts";
import type { VocabTrie } from "./vocab.ts";

/** ASCII bytes of string content (JSON's unescaped characters). */
const isContent = (b: number) => b >= 0x20 && b <= 0x7e && b !== 0x22 && b !== 0x5c;
/** Bytes a UTF-8 character of this length starts with (as regex.ts's NON_ASCII). */
const LEADS: [number, number, number][] = [[0xc2, 0xdf, 1], [0xe0, 0xef, 2], [0xf0, 0xf4, 3]];

/** The string-run view of one trie (built once per tokenizer, on first use). */
export class StringRuns {
  /** Exit nodes (first byte off a run of string characters), in preorder. */
  readonly exits: Int32Array;
  /** Per exit: characters completed before it, and the bytes of a cut character before it
   *  (packed low byte first, count in bits 24..). */
  readonly exitChars: Int32Array;
  readonly exitPartial: Int32Array;
  /** Most characters a pure token starts. */
  readonly maxChars: number;
  private cumulative: Int32Array[];

  constructor(readonly trie: VocabTrie) {
    const { byte, depth, tokStart, ids } = trie;
    const N = byte.length;
    // Per depth along the current path: chars done, bytes of the cut char, bytes it needs.
    const chars = new Int32Array(trie.maxDepth + 1);
    const partial = new Int32Array(trie.maxDepth + 1);
    const need = new Int32Array(trie.maxDepth + 1);
    const exits: number[] = [], exitChars: number[] = [], exitPartial: number[] = [];
    const words = Math.ceil(trie.vocabSize / 32);
    const counts: number[][] = [];
    let maxChars = 0;
    for (let n = 0; n < N;) {
      // An exit's subtree is skipped below, so the parent (depth d - 1) is on a pure path.
      const d = depth[n], b = byte[n];
      let c = chars[d - 1], p = partial[d - 1], k = need[d - 1];
      let ok: boolean;
      if (k > 0) {
        ok = b >= 0x80 && b <= 0xbf;
        if (ok) {
          p = p | (b << (8 * ((p >>> 24) & 3)));
          p = (p & 0xffffff) | ((((p >>> 24) & 3) + 1) << 24);
          if (--k === 0) [c, p] = [c + 1, 0];
        }
      } else if (isContent(b)) {
        ok = true;
        c++;
      } else {
        const lead = LEADS.find(([lo, hi]) => b >= lo && b <= hi);
        ok = lead !== undefined;
        if (lead) [p, k] = [b | (1 << 24), lead[2]];
      }
      if (!ok) {
        exits.push(n);
        exitChars.push(c);
        exitPartial.push(partial[d - 1]);
        n = trie.end[n];
        continue;
      }
      [chars[d], partial[d], need[d]] = [c, p, k];
      const started = c + (k > 0 ? 1 : 0);
      for (let t = tokStart[n]; t < tokStart[n + 1]; t++) {
        (counts[started] ??= []).push(ids[t]);
      }
      maxChars = Math.max(maxChars, started);
      n++;
    }
    this.exits = Int32Array.from(exits);
    this.exitChars = Int32Array.from(exitChars);
    this.exitPartial = Int32Array.from(exitPartial);
    this.maxChars = maxChars;
    // Bitsets by count, cumulative: 129 of 19 KB for Qwen3.
    this.cumulative = [];
    let m = new Int32Array(words);
    for (let k = 0; k <= maxChars; k++) {
      m = m.slice();
      for (const id of counts[k] ?? []) m[id >> 5] |= 1 << (id & 31);
      this.cumulative.push(m);
    }
  }

  /** Bitset of the pure tokens that start at most `k` characters. */
  pureUpTo(k: number): Int32Array {
    return this.cumulative[Math.min(k, this.maxChars)];
  }

  /**
   * The chain of states from `s` along string characters: `chain[i]` is the state after i
   * characters, for i <= room (`chain.length - 1`), where every string character from
   * chain[i < room] leads to chain[i + 1] and every one from chain[room] is rejected.
   * Null when `s` is not such a chain (some character leads elsewhere).
   */
  chainOf(dfa: Dfa, s: number, memo: Map<number, number[] | null>): number[] | null {
    const known = memo.get(s);
    if (known !== undefined) return known;
    const chain = [s];
    let out: number[] | null = null;
    for (let i = 0; i < this.maxChars; i++) {
      const next = uniformNext(dfa, chain[i]);
      if (next === null) break;
      if (next === DEAD) {
        out = chain;
        break;
      }
      // A chain from a state seen before (the string one character on): reuse its tail.
      const tail = memo.get(next);
      if (tail) {
        out = chain.concat(tail).slice(0, this.maxChars + 1);
        break;
      }
      chain.push(next);
    }
    // Past the longest pure token the room makes no difference: as good as unbounded.
    if (!out && chain.length > this.maxChars) out = chain;
    if (!out) {
      memo.set(s, null);
      return null;
    }
    // Every state along the chain is the head of its tail: remember them all.
    for (let i = out.length - 1; i >= 0; i--) {
      if (!memo.has(out[i])) memo.set(out[i], i === 0 ? out : out.slice(i));
    }
    return out;
  }
}

/** The one state every string character leads to from `s` (DEAD: all rejected), or null. */
function uniformNext(dfa: Dfa, s: number): number | null {
  let next: number | undefined;
  const same = (x: number) => {
    if (next === undefined) next = x;
    return next === x;
  };
  // Class representatives cover every byte: check each class inside the content range.
  for (const b of dfa.classReps) {
    if (b >= 0x20 && b <= 0x7e && b !== 0x22 && b !== 0x5c && !same(dfa.step(s, b))) return null;
  }
  // The byte after a class representative may start a new class inside a range: check the
  // boundaries of the content range too (0x20, 0x23, 0x5d are class starts or inside one).
  for (const b of [0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7e]) if (!same(dfa.step(s, b))) return null;
  for (const [lo, hi, conts] of LEADS) {
    let mid: number | undefined;
    for (const b of dfa.classReps) {
      if (b < lo || b > hi) continue;
      const x = dfa.step(s, b);
      if (mid === undefined) mid = x;
      else if (mid !== x) return null;
    }
    const first = dfa.step(s, lo);
    if (mid !== undefined && mid !== first) return null;
    mid = first;
    // Through the continuation bytes to the character's end.
    for (let k = 0; k < conts; k++) {
      if (mid === DEAD) break;
      let after: number | undefined;
      for (const b of dfa.classReps) {
        if (b < 0x80 || b > 0xbf) continue;
        const x = dfa.step(mid, b);
        if (after === undefined) after = x;
        else if (after !== x) return null;
      }
      const first2 = dfa.step(mid, 0x80);
      if (after !== undefined && after !== first2) return null;
      mid = first2;
    }
    if (!same(mid)) return null;
  }
  return next ?? DEAD;
}
