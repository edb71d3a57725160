/**
 * Regular expressions over bytes: an AST (byte classes, sequences, alternations, bounded or
 * unbounded repetition) and a parser for the common regex syntax (classes, escapes, groups,
 * alternation, ? * + {m,n}). Text is UTF-8: a literal character becomes its bytes and `.`
 * or a negated class matches whole UTF-8 characters. A pattern always matches in full
 * (anchors ^ and $ at its ends are accepted and ignored), as Outlines and XGrammar do.
 */

/** A regex AST node. `bytes` is a set of byte ranges [lo, hi] (inclusive, flat pairs).
 *  `call` matches its rule's body; rules may call themselves (directly or through others):
 *  that is what makes JSON nesting, recursive $ref and recursive EBNF rules unbounded (the
 *  automaton keeps a stack of calls, automaton.ts). */
export type Rx =
  | { t: "bytes"; ranges: number[] }
  | { t: "seq"; items: Rx[] }
  | { t: "alt"; items: Rx[] }
  | { t: "rep"; item: Rx; min: number; max: number } // max -1 = unbounded
  | { t: "call"; rule: Rule };

/** A named, possibly recursive sub-grammar. Made with an empty body, which is set once the
 *  body (which may call the rule) is built. */
export interface Rule {
  name: string;
  body: Rx | null;
}

/** A pattern that does not parse (the message says where and why). */
export class GrammarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GrammarError";
  }
}

/** Largest bounded repetition count accepted ({m,n}); each copy becomes automaton states. */
export const MAX_REPEAT = 1000;

export const seq = (...items: Rx[]): Rx => items.length === 1 ? items[0] : { t: "seq", items };
export const alt = (...items: Rx[]): Rx => items.length === 1 ? items[0] : { t: "alt", items };
export const rep = (item: Rx, min: number, max: number): Rx => ({ t: "rep", item, min, max });
export const opt = (item: Rx): Rx => rep(item, 0, 1);
export const bytes = (...ranges: number[]): Rx => ({ t: "bytes", ranges });
export const EMPTY: Rx = { t: "seq", items: [] };
/** Matches nothing: an alternation of no branches. */
export const NEVER: Rx = { t: "alt", items: [] };
export const call = (rule: Rule): Rx => ({ t: "call", rule });

/** The rules `root` reaches (each once, in the order met) and, for each, the rules whose
 *  bodies call it. */
export function rulesOf(root: Rx): { rules: Rule[]; callers: Map<Rule, Set<Rule>> } {
  const rules: Rule[] = [], seen = new Set<Rule>();
  const callers = new Map<Rule, Set<Rule>>();
  const reach = (r: Rx, owner: Rule | null): void => {
    if (r.t === "seq" || r.t === "alt") r.items.forEach((x) => reach(x, owner));
    else if (r.t === "rep") reach(r.item, owner);
    else if (r.t === "call") {
      if (owner) {
        const set = callers.get(r.rule);
        if (set) set.add(owner);
        else callers.set(r.rule, new Set([owner]));
      }
      if (seen.has(r.rule)) return;
      seen.add(r.rule);
      rules.push(r.rule);
      reach(r.rule.body ?? NEVER, r.rule);
    }
  };
  reach(root, null);
  return { rules, callers };
}

/** Whether `r` derives a text (`emptyOnly`: the empty text) calling only rules in `ok`. */
export function derives(r: Rx, ok: Set<Rule>, emptyOnly: boolean): boolean {
  switch (r.t) {
    case "bytes":
      return !emptyOnly;
    case "seq":
      return r.items.every((x) => derives(x, ok, emptyOnly));
    case "alt":
      return r.items.some((x) => derives(x, ok, emptyOnly));
    case "rep":
      return r.min === 0 || derives(r.item, ok, emptyOnly);
    case "call":
      return ok.has(r.rule);
  }
}

/** The rules whose body derives a text (`emptyOnly`: the empty text) from such rules alone,
 *  to a fixed point. Once a rule joins, only its callers are looked at again: sweeping every
 *  rule until none joined took one sweep per rule along a chain, seconds for a large grammar,
 *  before admission's size bound. */
export function derivingRules(
  { rules, callers }: ReturnType<typeof rulesOf>,
  emptyOnly: boolean,
): Set<Rule> {
  const ok = new Set<Rule>();
  for (let check = rules; check.length;) {
    const next = new Set<Rule>();
    for (const rule of check) {
      if (ok.has(rule) || !derives(rule.body ?? NEVER, ok, emptyOnly)) continue;
      ok.add(rule);
      for (const c of callers.get(rule) ?? []) if (!ok.has(c)) next.add(c);
    }
    check = [...next];
  }
  return ok;
}

/**
 * The AST without what can never finish: a rule with no finite derivation (each branch calls
 * on without end, like a required property whose schema requires itself) is called nowhere,
 * and the sequences that need it drop out of the alternatives around them. So from any point
 * a generation can still end. NEVER when nothing is left. Rule bodies are pruned in place
 * (an unchanged node is returned as it is).
 */
export function prune(root: Rx): Rx {
  const productive = derivingRules(rulesOf(root), false);
  const keep = (r: Rx): Rx => {
    switch (r.t) {
      case "bytes":
        return r;
      case "call":
        return productive.has(r.rule) ? r : NEVER;
      case "seq": {
        const items = r.items.map(keep);
        if (items.includes(NEVER)) return NEVER;
        return items.every((x, i) => x === r.items[i]) ? r : { t: "seq", items };
      }
      case "alt": {
        const items = r.items.map(keep).filter((x) => x !== NEVER);
        if (items.length === 0) return NEVER;
        return items.length === r.items.length && items.every((x, i) => x === r.items[i])
          ? r
          : alt(...items);
      }
      case "rep": {
        const item = keep(r.item);
        if (item === NEVER) return r.min === 0 ? EMPTY : NEVER;
        return item === r.item ? r : { ...r, item };
      }
    }
  };
  for (const rule of productive) rule.body = keep(rule.body!);
  return keep(root);
}

const enc = new TextEncoder();

/** The literal text `s` (its UTF-8 bytes). */
export function lit(s: string): Rx {
  const b = enc.encode(s);
  return seq(...Array.from(b, (x) => bytes(x, x)));
}

/** Any UTF-8 character whose code point is >= 0x80 (lead byte and continuations). */
export const NON_ASCII: Rx = alt(
  seq(bytes(0xc2, 0xdf), bytes(0x80, 0xbf)),
  seq(bytes(0xe0, 0xef), bytes(0x80, 0xbf), bytes(0x80, 0xbf)),
  seq(bytes(0xf0, 0xf4), bytes(0x80, 0xbf), bytes(0x80, 0xbf), bytes(0x80, 0xbf)),
);

/** Complement of ASCII ranges within 0..0x7f. */
function asciiComplement(ranges: number[]): number[] {
  const inSet = new Uint8Array(128);
  for (let i = 0; i < ranges.length; i += 2) {
    for (let c = ranges[i]; c <= Math.min(ranges[i + 1], 127); c++) inSet[c] = 1;
  }
  return rangesOf(inSet, 0);
}

/** Ranges of the entries of a 0/1 table that are non-zero (want 1) or zero (want 0). */
function rangesOf(table: Uint8Array, want: number): number[] {
  const out: number[] = [];
  const hit = (c: number) => (table[c] !== 0) === (want === 1);
  for (let c = 0; c < table.length; c++) {
    if (!hit(c)) continue;
    let e = c;
    while (e + 1 < table.length && hit(e + 1)) e++;
    out.push(c, e);
    c = e;
  }
  return out;
}

const DIGIT = [0x30, 0x39];
const WORD = [0x30, 0x39, 0x41, 0x5a, 0x5f, 0x5f, 0x61, 0x7a];
const SPACE = [0x09, 0x0d, 0x20, 0x20];

/** Parses `pattern` into an AST; throws GrammarError naming the problem. */
export function parseRegex(pattern: string): Rx {
  let i = 0;
  const fail = (why: string): never => {
    throw new GrammarError(`regex ${JSON.stringify(pattern)}: ${why} at offset ${i}`);
  };
  const peek = () => pattern[i];

  // A class body item: returns ASCII byte ranges, plus whether non-ASCII chars were listed.
  const classEscape = (c: string): number[] | null => {
    switch (c) {
      case "d":
        return DIGIT;
      case "w":
        return WORD;
      case "s":
        return SPACE;
      default:
        return null;
    }
  };
  const escapeChar = (): number => {
    const c = pattern[i++];
    if (c === undefined) fail("dangling backslash");
    switch (c) {
      case "n":
        return 10;
      case "t":
        return 9;
      case "r":
        return 13;
      case "f":
        return 12;
      case "v":
        return 11;
      case "0":
        return 0;
      case "x": {
        const h = pattern.slice(i, i + 2);
        if (!/^[0-9a-fA-F]{2}$/.test(h)) fail("\\x needs two hex digits");
        i += 2;
        return parseInt(h, 16);
      }
      case "u": {
        const h = pattern.slice(i, i + 4);
        if (!/^[0-9a-fA-F]{4}$/.test(h)) fail("\\u needs four hex digits");
        i += 4;
        return parseInt(h, 16);
      }
    }
    if (/[a-zA-Z0-9]/.test(c)) fail(`unsupported escape \\${c}`);
    return c.codePointAt(0)!;
  };

  const parseClass = (): Rx => {
    i++; // [
    let negate = false;
    if (peek() === "^") {
      negate = true;
      i++;
    }
    const table = new Uint8Array(128);
    const wide: number[] = []; // non-ASCII code points listed (pairs lo, hi)
    let first = true;
    const add = (lo: number, hi: number) => {
      for (let c = lo; c <= Math.min(hi, 127); c++) table[c] = 1;
      if (hi >= 128) wide.push(Math.max(lo, 128), hi);
    };
    while (true) {
      const c = peek();
      if (c === undefined) fail("unterminated class");
      if (c === "]" && !first) break;
      first = false;
      let lo: number;
      if (c === "\\") {
        i++;
        const set = classEscape(peek());
        if (set) {
          i++;
          for (let k = 0; k < set.length; k += 2) add(set[k], set[k + 1]);
          continue;
        }
        const up = peek();
        if (up === "D" || up === "W" || up === "S") {
          i++;
          const comp = asciiComplement(classEscape(up.toLowerCase())!);
          for (let k = 0; k < comp.length; k += 2) add(comp[k], comp[k + 1]);
          add(128, 0x10ffff);
          continue;
        }
        lo = escapeChar();
      } else {
        lo = c.codePointAt(0)!;
        i += c.length;
      }
      let hi = lo;
      if (peek() === "-" && pattern[i + 1] !== "]" && pattern[i + 1] !== undefined) {
        i++;
        const d = peek();
        if (d === "\\") {
          i++;
          hi = escapeChar();
        } else {
          hi = d.codePointAt(0)!;
          i += d.length;
        }
        if (hi < lo) fail("class range out of order");
      }
      add(lo, hi);
    }
    i++; // ]
    if (negate) {
      if (wide.length) fail("negated class with non-ASCII characters is not supported");
      const r = rangesOf(table, 0);
      return alt(bytes(...r), NON_ASCII);
    }
    const parts: Rx[] = [];
    const r = rangesOf(table, 1);
    if (r.length) parts.push(bytes(...r));
    for (let k = 0; k < wide.length; k += 2) {
      const [lo, hi] = [wide[k], wide[k + 1]];
      if (lo === 128 && hi === 0x10ffff) {
        parts.push(NON_ASCII);
        continue;
      }
      if (hi - lo > 256) fail("non-ASCII class range wider than 256 characters");
      for (let cp = lo; cp <= hi; cp++) parts.push(lit(String.fromCodePoint(cp)));
    }
    if (parts.length === 0) fail("empty class");
    return alt(...parts);
  };

  const parseAtom = (): Rx => {
    const c = peek();
    if (c === "(") {
      i++;
      if (pattern.startsWith("?:", i)) i += 2;
      else if (pattern[i] === "?") fail("unsupported group syntax");
      const inner = parseAlt();
      if (peek() !== ")") fail("missing )");
      i++;
      return inner;
    }
    if (c === "[") return parseClass();
    if (c === ".") {
      i++;
      return alt(bytes(0, 9, 11, 127), NON_ASCII);
    }
    if (c === "\\") {
      i++;
      const set = classEscape(peek());
      if (set) {
        i++;
        return bytes(...set);
      }
      const up = peek();
      if (up === "D" || up === "W" || up === "S") {
        i++;
        return alt(bytes(...asciiComplement(classEscape(up.toLowerCase())!)), NON_ASCII);
      }
      if (up === "b" || up === "B") fail("word boundaries are not supported");
      return lit(String.fromCodePoint(escapeChar()));
    }
    if (c === "*" || c === "+" || c === "?" || c === "{") fail(`nothing to repeat before ${c}`);
    const cp = c.codePointAt(0)!;
    const ch = String.fromCodePoint(cp);
    i += ch.length;
    return lit(ch);
  };

  const parseRepeat = (): Rx => {
    let atom = parseAtom();
    for (;;) {
      const c = peek();
      let min: number, max: number;
      if (c === "*") [min, max] = [0, -1];
      else if (c === "+") [min, max] = [1, -1];
      else if (c === "?") [min, max] = [0, 1];
      else if (c === "{") {
        const m = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i));
        if (!m) fail("bad {m,n}");
        min = Number(m![1]);
        max = m![2] === undefined ? min : m![3] === "" ? -1 : Number(m![3]);
        if (max !== -1 && max < min) fail("{m,n} with n < m");
        if (Math.max(min, max) > MAX_REPEAT) fail(`repeat count above ${MAX_REPEAT}`);
        i += m![0].length - 1;
      } else return atom;
      i++;
      if (peek() === "?" || peek() === "+") i++; // lazy / possessive: same language
      atom = rep(atom, min, max);
    }
  };

  const parseSeq = (): Rx => {
    const items: Rx[] = [];
    while (i < pattern.length && peek() !== "|" && peek() !== ")") {
      if (peek() === "^" && i === 0) {
        i++;
        continue;
      }
      if (peek() === "$" && i === pattern.length - 1) {
        i++;
        continue;
      }
      items.push(parseRepeat());
    }
    return seq(...items);
  };

  const parseAlt = (): Rx => {
    const items = [parseSeq()];
    while (peek() === "|") {
      i++;
      items.push(parseSeq());
    }
    return alt(...items);
  };

  const ast = parseAlt();
  if (i < pattern.length) fail("unbalanced )");
  return ast;
}
