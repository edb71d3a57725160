/**
 * A regex AST (regex.ts) as a byte-level automaton: a Thompson NFA, determinized lazily.
 * DFA states are made on first visit (subset construction one byte at a time), so a large
 * schema only pays for the states generation actually reaches. State 0 is the start;
 * DEAD (-1) is the rejecting sink.
 */
import { GrammarError, type Rx } from "./regex.ts";

export const DEAD = -1;
const UNKNOWN = -2;

/** Most DFA states one grammar may build (guards against a blow-up). */
export const MAX_DFA_STATES = 200_000;

class Nfa {
  eps: number[][] = [];
  /** Byte transitions per state: flat [lo, hi, target] triples. */
  trans: number[][] = [];
  /** cut[b]: some byte range starts at b or ends at b - 1 (the byte classes' bounds). */
  cut = new Uint8Array(257);
  add(): number {
    this.eps.push([]);
    this.trans.push([]);
    return this.eps.length - 1;
  }
  build(node: Rx, from: number): number {
    switch (node.t) {
      case "bytes": {
        const to = this.add();
        const t = this.trans[from];
        for (let k = 0; k < node.ranges.length; k += 2) {
          t.push(node.ranges[k], node.ranges[k + 1], to);
          this.cut[node.ranges[k]] = this.cut[node.ranges[k + 1] + 1] = 1;
        }
        return to;
      }
      case "seq": {
        let cur = from;
        for (const it of node.items) cur = this.build(it, cur);
        return cur;
      }
      case "alt": {
        const end = this.add();
        for (const it of node.items) {
          const s = this.add();
          this.eps[from].push(s);
          this.eps[this.build(it, s)].push(end);
        }
        return end;
      }
      case "rep": {
        let cur = from;
        for (let k = 0; k < node.min; k++) cur = this.build(node.item, cur);
        if (node.max < 0) {
          const s = this.add();
          this.eps[cur].push(s);
          this.eps[this.build(node.item, s)].push(s);
          return s;
        }
        const end = this.add();
        this.eps[cur].push(end);
        for (let k = node.min; k < node.max; k++) {
          cur = this.build(node.item, cur);
          this.eps[cur].push(end);
        }
        return end;
      }
    }
  }
}

/** A lazily determinized byte automaton. */
export class Dfa {
  private nfa = new Nfa();
  private final: number;
  private sets: Int32Array[] = [];
  /** DFA states by a hash of the seeds that made them (flat [seeds, id] pairs). */
  private bySeeds = new Map<number, (number[] | number)[]>();
  /** DFA states by a hash of their NFA set. */
  private ids = new Map<number, number[]>();
  /** Transitions per state, 256 entries each (UNKNOWN until computed). One row per state
   *  rather than one table that doubles: copying a table of many megabytes stalled the step
   *  that happened to create the state past a power of two (~10 ms at 8k states). */
  private rows: Int32Array[] = [];
  private accepting: number[] = [];
  private mark: Uint32Array;
  private stamp = 0;
  /** One byte of each class of bytes the grammar never tells apart (same transitions from
   *  every NFA state, so from every DFA state). */
  readonly classReps: Uint8Array;
  /** The byte after the last of each class, and each byte's class. */
  private classEnd: Uint16Array;
  private classOf: Uint8Array;

  constructor(ast: Rx) {
    const start = this.nfa.add();
    this.final = this.nfa.build(ast, start);
    this.mark = new Uint32Array(this.nfa.eps.length);
    this.intern([start]);
    const cut = this.nfa.cut;
    cut[0] = 1;
    const reps: number[] = [];
    for (let b = 0; b < 256; b++) if (cut[b]) reps.push(b);
    this.classReps = Uint8Array.from(reps);
    this.classEnd = Uint16Array.from(reps, (_, c) => c + 1 < reps.length ? reps[c + 1] : 256);
    this.classOf = new Uint8Array(256);
    for (let c = 0; c < reps.length; c++) this.classOf.fill(c, reps[c], this.classEnd[c]);
  }

  /** DFA states built so far. */
  get size(): number {
    return this.sets.length;
  }

  /** NFA states (a measure of the grammar's size). */
  get nfaSize(): number {
    return this.nfa.eps.length;
  }

  isAccepting(s: number): boolean {
    return this.accepting[s] === 1;
  }

  /** The state after byte `b` from `s` (DEAD when rejected). */
  step(s: number, b: number): number {
    const v = this.rows[s][b];
    return v !== UNKNOWN ? v : this.compute(s, b);
  }

  /** The state after `data` from `s`, or DEAD. */
  walk(s: number, data: Uint8Array): number {
    for (let i = 0; i < data.length && s !== DEAD; i++) s = this.step(s, data[i]);
    return s;
  }

  /** The entry of (s, b), filled in for every byte of b's class at once. */
  private compute(s: number, b: number): number {
    const next: number[] = [];
    const set = this.sets[s], trans = this.nfa.trans;
    for (let i = 0; i < set.length; i++) {
      const t = trans[set[i]];
      for (let k = 0; k < t.length; k += 3) if (b >= t[k] && b <= t[k + 1]) next.push(t[k + 2]);
    }
    const id = next.length ? this.internSeeds(next) : DEAD;
    const c = this.classOf[b];
    this.rows[s].fill(id, this.classReps[c], this.classEnd[c]);
    return id;
  }

  /** intern() through a cache keyed by the seeds themselves: the byte classes of one state
   *  often reach the same NFA states (every character inside a string), and hashing a few
   *  seeds is cheaper than closing them again. */
  private internSeeds(seeds: number[]): number {
    let h = seeds.length;
    for (const q of seeds) h = Math.imul(h ^ q, 0x9e3779b1) ^ (h >>> 15);
    const bucket = this.bySeeds.get(h);
    if (bucket) {
      for (let i = 0; i < bucket.length; i += 2) {
        const known = bucket[i] as number[];
        if (known.length !== seeds.length) continue;
        let k = 0;
        while (k < seeds.length && known[k] === seeds[k]) k++;
        if (k === seeds.length) return bucket[i + 1] as number;
      }
    }
    const id = this.intern(seeds);
    if (bucket) bucket.push(seeds, id);
    else this.bySeeds.set(h, [seeds, id]);
    return id;
  }

  /** The DFA state of the epsilon closure of `seeds`. */
  private intern(seeds: number[]): number {
    const stamp = ++this.stamp;
    const stack = seeds.slice();
    const out: number[] = [];
    while (stack.length) {
      const q = stack.pop()!;
      if (this.mark[q] === stamp) continue;
      this.mark[q] = stamp;
      // Only states with byte transitions (or the final one) tell DFA states apart.
      if (this.nfa.trans[q].length || q === this.final) out.push(q);
      const eps = this.nfa.eps[q];
      for (let i = 0; i < eps.length; i++) stack.push(eps[i]);
    }
    if (out.length === 0) return DEAD;
    if (out.length > 1) out.sort((a, b) => a - b);
    let h = out.length;
    for (const q of out) h = Math.imul(h ^ q, 0x9e3779b1) ^ (h >>> 15);
    const bucket = this.ids.get(h);
    if (bucket !== undefined) {
      for (const known of bucket) if (sameSet(this.sets[known], out)) return known;
    }
    const id = this.sets.length;
    if (id >= MAX_DFA_STATES) {
      throw new GrammarError(`grammar needs more than ${MAX_DFA_STATES} automaton states`);
    }
    this.sets.push(Int32Array.from(out));
    if (bucket) bucket.push(id);
    else this.ids.set(h, [id]);
    this.accepting.push(out.includes(this.final) ? 1 : 0);
    this.rows.push(new Int32Array(256).fill(UNKNOWN));
    return id;
  }
}

function sameSet(a: Int32Array, b: number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
