/**
 * A regex AST (regex.ts) as a byte-level automaton: a Thompson NFA, determinized lazily.
 * DFA states are made on first visit (subset construction one byte at a time), so a large
 * schema only pays for the states generation actually reaches. State 0 is the start;
 * DEAD (-1) is the rejecting sink.
 *
 * Rules (`call` nodes) make it a pushdown automaton: each rule's body is built once, and a
 * call edge enters it. What the subset construction tracks is then not an NFA state but a
 * configuration (NFA state, call stack), numbered on first sight; a stack is a chain of
 * return states, also numbered, at most MAX_CALL_DEPTH deep. A DFA state is a set of
 * configurations, so a document nested k deep has its own states, made lazily like any
 * other; without rules every stack is empty and nothing changes. A configuration is only
 * made when what it has left to match fits in the stack that remains (`need`), so every
 * state the automaton reaches can still finish: a constrained generation never walks into
 * a dead end, even at the bound.
 */
import {
  derives,
  derivingRules,
  GrammarError,
  NEVER,
  type Rule,
  rulesOf,
  type Rx,
} from "./regex.ts";

export const DEAD = -1;
const UNKNOWN = -2;

/** Most DFA states one grammar may build (guards against a blow-up). */
export const MAX_DFA_STATES = 200_000;
/** Deepest stack of rule calls (JSON nesting, recursive $ref or EBNF rules). */
export const MAX_CALL_DEPTH = 128;
/** Most configurations one closure may reach, and one automaton may number: an ambiguous
 *  grammar (a rule that can nest in two ways at each level) keeps every reading of the text
 *  as its own stack, 2^depth of them. Past these bounds the grammar fails its request. */
export const MAX_STATE_CONFIGS = 4096;
export const MAX_CONFIGS = 2_000_000;

/** Most NFA states a grammar may have (checked on its AST before it is built): ~30 ms of
 *  compile in the GPU worker and tens of MB; the person schema of the benchmarks has 12,805. */
export const MAX_NFA_STATES = 250_000;

/** How many NFA states Nfa.build makes of `root` (each rule's body once; a repetition copies
 *  its item), counted on the AST so that admission can refuse a grammar before any is made. */
export function nfaSize(root: Rx): number {
  const memo = new Map<Rx, number>();
  const size = (r: Rx): number => {
    let n = memo.get(r);
    if (n !== undefined) return n;
    switch (r.t) {
      case "bytes":
        n = 1;
        break;
      case "seq":
        n = r.items.reduce((a, x) => a + size(x), 0);
        break;
      case "alt":
        n = 1 + r.items.reduce((a, x) => a + 1 + size(x), 0);
        break;
      case "rep": {
        const k = size(r.item);
        n = r.min * k + (r.max < 0 ? 1 + k : 1 + (r.max - r.min) * k);
        break;
      }
      case "call": // the return state; the body is counted once, below
        n = 1;
        break;
    }
    memo.set(r, n);
    return n;
  };
  // Each rule's start state and body, once.
  return rulesOf(root).rules.reduce((a, rule) => a + 1 + size(rule.body ?? NEVER), 1 + size(root));
}

/** A rule of `root` that can call itself before matching any byte (left recursion), or null.
 *  Every reading of such a rule is a different stack from the first byte on, so the
 *  automaton's configurations multiply with each level; grammars write it as repetition. */
export function leftRecursion(root: Rx): Rule | null {
  const reached = rulesOf(root), rules = reached.rules;
  const nullable = derivingRules(reached, true);
  const empty = (r: Rx) => derives(r, nullable, true);
  // The rules each one can call before any byte, then a cycle among them.
  const first = (r: Rx, out: Set<Rule>): void => {
    if (r.t === "seq") {
      for (const it of r.items) {
        first(it, out);
        if (!empty(it)) break;
      }
    } else if (r.t === "alt") r.items.forEach((it) => first(it, out));
    else if (r.t === "rep") {
      if (r.max !== 0) first(r.item, out);
    } else if (r.t === "call") out.add(r.rule);
  };
  const calls = new Map<Rule, Set<Rule>>();
  for (const rule of rules) {
    const out = new Set<Rule>();
    if (rule.body) first(rule.body, out);
    calls.set(rule, out);
  }
  const state = new Map<Rule, number>(); // 1: on the path, 2: done
  const visit = (rule: Rule): Rule | null => {
    state.set(rule, 1);
    for (const next of calls.get(rule)!) {
      const st = state.get(next);
      if (st === 1) return next;
      if (st === undefined) {
        const found = visit(next);
        if (found) return found;
      }
    }
    state.set(rule, 2);
    return null;
  };
  for (const rule of rules) {
    if (!state.has(rule)) {
      const found = visit(rule);
      if (found) return found;
    }
  }
  return null;
}

/** The fewest nested rule calls any text of `root` takes, or MAX_CALL_DEPTH + 1 for any
 *  more: a grammar past MAX_CALL_DEPTH has no text the automaton can finish. Settled one
 *  depth at a time: a rule of depth k calls one of depth k - 1, so each level looks only at
 *  the callers of the last (sweeping every rule until nothing changed settled one rule per
 *  sweep along a chain: a thousand rules took seconds). */
export function minCallDepth(root: Rx): number {
  const INF = MAX_CALL_DEPTH + 1;
  const { rules, callers } = rulesOf(root);
  const depth = new Map<Rule, number>(rules.map((r) => [r, INF]));
  const of = (r: Rx): number => {
    switch (r.t) {
      case "bytes":
        return 0;
      case "seq":
        return r.items.reduce((a, x) => Math.max(a, of(x)), 0);
      case "alt":
        return r.items.reduce((a, x) => Math.min(a, of(x)), INF);
      case "rep":
        return r.min === 0 ? 0 : of(r.item);
      case "call":
        return Math.min(INF, 1 + depth.get(r.rule)!);
    }
  };
  let candidates = rules;
  for (let k = 0; k < INF && candidates.length; k++) {
    const next = new Set<Rule>();
    for (const rule of candidates) {
      if (depth.get(rule)! < INF || !rule.body || of(rule.body) > k) continue;
      depth.set(rule, k);
      for (const c of callers.get(rule) ?? []) next.add(c);
    }
    candidates = [...next];
  }
  return of(root);
}

class Nfa {
  eps: number[][] = [];
  /** Byte transitions per state: flat [lo, hi, target] triples. */
  trans: number[][] = [];
  /** Call edges per state: flat [callee's start, return state] pairs. */
  calls: number[][] = [];
  /** Per state: 1 when it ends a rule's body (a configuration there returns). */
  ruleEnd: number[] = [];
  /** cut[b]: some byte range starts at b or ends at b - 1 (the byte classes' bounds). */
  cut = new Uint8Array(257);
  /** Per state: the fewest nested calls that finishing from it takes (the end of its rule's
   *  body, or of the grammar), filled by needs(); MAX_CALL_DEPTH + 1 for any more or when it
   *  cannot finish. */
  need = new Int32Array(0);
  /** Each rule's start state, built on its first call. */
  private rules = new Map<Rule, number>();
  add(): number {
    this.eps.push([]);
    this.trans.push([]);
    this.calls.push([]);
    this.ruleEnd.push(0);
    return this.eps.length - 1;
  }
  /** The start state of a rule's body (built on first use; the body may call the rule). */
  private ruleStart(rule: Rule): number {
    let start = this.rules.get(rule);
    if (start !== undefined) return start;
    if (!rule.body) throw new GrammarError(`rule ${rule.name} has no body`);
    start = this.add();
    this.rules.set(rule, start);
    this.ruleEnd[this.build(rule.body, start)] = 1;
    return start;
  }
  /** Fills `need`, a fixed point: 0 at the end of a body (and at `final`); through an edge,
   *  what its target needs; through a call, one more than the callee's start needs or what
   *  the return state needs, whichever is more. Settled smallest need first (as Dijkstra
   *  does: each is at least what it is made of), so each state once: sweeping all states
   *  until nothing changed settled one more level of calls per sweep, and a chain of a
   *  thousand rules took seconds. Capped at MAX_CALL_DEPTH + 1: no more ever fits. */
  needs(final: number): void {
    const n = this.eps.length, CAP = MAX_CALL_DEPTH + 1;
    // No rules: nothing to nest (and every state of a pruned grammar can finish).
    if (this.rules.size === 0) {
      this.need = new Int32Array(n);
      return;
    }
    const need = new Int32Array(n).fill(CAP);
    // The states each one's need is made of, reversed: who to look at again once it settles.
    // Once per pair (a class of many ranges has as many edges to one target).
    const preds: number[][] = Array.from({ length: n }, () => []);
    const pred = (t: number, q: number) => {
      if (preds[t][preds[t].length - 1] !== q) preds[t].push(q);
    };
    for (let q = 0; q < n; q++) {
      for (const t of this.eps[q]) pred(t, q);
      const tr = this.trans[q];
      for (let k = 2; k < tr.length; k += 3) pred(tr[k], q);
      const c = this.calls[q];
      for (let k = 0; k < c.length; k++) pred(c[k], q);
    }
    const of = (q: number): number => {
      let v = need[q];
      for (const t of this.eps[q]) v = Math.min(v, need[t]);
      const tr = this.trans[q];
      for (let k = 2; k < tr.length; k += 3) v = Math.min(v, need[tr[k]]);
      const c = this.calls[q];
      for (let k = 0; k < c.length; k += 2) {
        v = Math.min(v, Math.max(1 + need[c[k]], need[c[k + 1]]));
      }
      return v;
    };
    // Buckets of states by tentative need; a state may sit in several (the lowest counts).
    const buckets: number[][] = Array.from({ length: CAP }, () => []);
    const done = new Uint8Array(n);
    for (let q = 0; q < n; q++) {
      if (this.ruleEnd[q] || q === final) (need[q] = 0, buckets[0].push(q));
    }
    for (let b = 0; b < CAP; b++) {
      const bucket = buckets[b];
      while (bucket.length) {
        const q = bucket.pop()!;
        if (done[q] || need[q] !== b) continue;
        done[q] = 1;
        for (const p of preds[q]) {
          if (done[p]) continue;
          const v = of(p);
          if (v < need[p]) (need[p] = v, buckets[v].push(p));
        }
      }
    }
    this.need = need;
  }
  build(node: Rx, from: number): number {
    switch (node.t) {
      case "call": {
        const to = this.add();
        this.calls[from].push(this.ruleStart(node.rule), to);
        return to;
      }
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
  /** Most states this automaton may build (MAX_DFA_STATES; tests lower it). */
  maxStates = MAX_DFA_STATES;
  private nfa = new Nfa();
  private final: number;
  /** Each DFA state's configurations (sorted ids). */
  private sets: Int32Array[] = [];
  /** Configurations: NFA state and stack of each, and their ids by (state, stack). Those on
   *  the empty stack (every one without rules) are the NFA states' own numbers. */
  private cfgQ: number[] = [];
  private cfgS: number[] = [];
  private cfgIds = new Map<number, number>();
  /** Stacks (0 = empty): the stack below, the return state on top, the depth; ids by
   *  (below, return state). */
  private stackBelow = [0];
  private stackRet = [-1];
  private stackDepth = [0];
  private stackIds = new Map<number, number>();
  /** DFA states by a hash of the seeds that made them (flat [seeds, id] pairs). */
  private bySeeds = new Map<number, (number[] | number)[]>();
  /** DFA states by a hash of their NFA set. */
  private ids = new Map<number, number[]>();
  /** Transitions per state, 256 entries each (UNKNOWN until computed). One row per state
   *  rather than one table that doubles: copying a table of many megabytes stalled the step
   *  that happened to create the state past a power of two (~10 ms at 8k states). */
  private rows: Int32Array[] = [];
  private accepting: number[] = [];
  /** Configurations already in the closure being built (stamp per closure). */
  private mark = new Uint32Array(1024);
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
    this.nfa.needs(this.final);
    if (this.nfa.need[start] > MAX_CALL_DEPTH) {
      throw new GrammarError(`grammar needs rule calls nested over ${MAX_CALL_DEPTH} deep`);
    }
    const n = this.nfa.eps.length;
    this.cfgQ = Array.from({ length: n }, (_, q) => q);
    this.cfgS = new Array(n).fill(0);
    this.mark = new Uint32Array(Math.max(1024, 2 * n));
    this.intern([this.config(start, 0)]);
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

  /** The id of configuration (NFA state q, stack s). */
  private config(q: number, s: number): number {
    if (s === 0) return q;
    const key = s * this.nfa.eps.length + q;
    let id = this.cfgIds.get(key);
    if (id === undefined) {
      id = this.cfgQ.length;
      if (id >= MAX_CONFIGS) {
        throw new GrammarError(`grammar too ambiguous: over ${MAX_CONFIGS} parse configurations`);
      }
      this.cfgQ.push(q);
      this.cfgS.push(s);
      this.cfgIds.set(key, id);
      if (id >= this.mark.length) {
        const m = new Uint32Array(this.mark.length * 2);
        m.set(this.mark);
        this.mark = m;
      }
    }
    return id;
  }

  /** Whether a configuration at NFA state q on stack s can finish within the stack bound. */
  private fits(q: number, s: number): boolean {
    return this.stackDepth[s] + this.nfa.need[q] <= MAX_CALL_DEPTH;
  }

  /** Stack `below` with return state `ret` pushed, or -1 when the call into a rule starting
   *  at `start` could not finish within MAX_CALL_DEPTH (or its caller, once it returns). */
  private push(below: number, ret: number, start: number): number {
    const d = this.stackDepth[below], need = this.nfa.need;
    if (d + 1 + need[start] > MAX_CALL_DEPTH || d + need[ret] > MAX_CALL_DEPTH) return -1;
    const key = below * this.nfa.eps.length + ret;
    let id = this.stackIds.get(key);
    if (id === undefined) {
      id = this.stackBelow.length;
      this.stackBelow.push(below);
      this.stackRet.push(ret);
      this.stackDepth.push(this.stackDepth[below] + 1);
      this.stackIds.set(key, id);
    }
    return id;
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
      const c = set[i], t = trans[this.cfgQ[c]];
      for (let k = 0; k < t.length; k += 3) {
        if (b >= t[k] && b <= t[k + 1] && this.fits(t[k + 2], this.cfgS[c])) {
          next.push(this.config(t[k + 2], this.cfgS[c]));
        }
      }
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

  /** The DFA state of the closure of configurations `seeds` (epsilon moves, calls into
   *  rules, returns at a rule's end). */
  private intern(seeds: number[]): number {
    const stamp = ++this.stamp;
    const work = seeds.slice();
    const out: number[] = [];
    const nfa = this.nfa;
    let reached = 0;
    while (work.length) {
      const c = work.pop()!;
      if (this.mark[c] === stamp) continue;
      this.mark[c] = stamp;
      if (++reached > MAX_STATE_CONFIGS) {
        throw new GrammarError(
          `grammar too ambiguous: over ${MAX_STATE_CONFIGS} ways to read the text at one point`,
        );
      }
      const q = this.cfgQ[c], st = this.cfgS[c];
      // Only configurations with byte transitions (or the final one) tell DFA states apart.
      if (nfa.trans[q].length || (q === this.final && st === 0)) out.push(c);
      const eps = nfa.eps[q];
      for (let i = 0; i < eps.length; i++) {
        if (this.fits(eps[i], st)) work.push(this.config(eps[i], st));
      }
      const calls = nfa.calls[q];
      for (let i = 0; i < calls.length; i += 2) {
        const pushed = this.push(st, calls[i + 1], calls[i]);
        if (pushed >= 0) work.push(this.config(calls[i], pushed));
      }
      if (nfa.ruleEnd[q] && st !== 0) {
        work.push(this.config(this.stackRet[st], this.stackBelow[st]));
      }
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
    if (id >= this.maxStates) {
      throw new GrammarError(`grammar needs more than ${this.maxStates} automaton states`);
    }
    this.sets.push(Int32Array.from(out));
    if (bucket) bucket.push(id);
    else this.ids.set(h, [id]);
    this.accepting.push(out.some((c) => this.cfgQ[c] === this.final && this.cfgS[c] === 0) ? 1 : 0);
    this.rows.push(new Int32Array(256).fill(UNKNOWN));
    return id;
  }
}

function sameSet(a: Int32Array, b: number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
