/**
 * JSON Schema (the subset structured outputs use) as a regex AST over the JSON text: types,
 * properties / required / additionalProperties, enum, const, arrays with min/maxItems,
 * strings with min/maxLength and pattern, integer and real ranges (exact over decimal text:
 * a bounded number has no exponent), nested objects, anyOf / oneOf,
 * and $ref to local $defs, recursive ones included. The text is compact JSON with at most
 * one space after `:` and `,`; properties come in the schema's order. An object without
 * `properties` (and `{"type": "json_object"}`) is any JSON object. Nesting (of any JSON and
 * of recursive $refs) goes through rule calls, bounded only by the automaton's call stack
 * (MAX_CALL_DEPTH in automaton.ts).
 */
import {
  alt,
  bytes,
  call,
  EMPTY,
  GrammarError,
  lit,
  NEVER,
  NON_ASCII,
  opt,
  parseRegex,
  rep,
  type Rule,
  type Rx,
  seq,
} from "./regex.ts";
/** Digits of an integer part without bounds (keeps the automaton finite-width). */
const MAX_DIGITS = 16;

type Schema = Record<string, unknown>;

const SP = opt(lit(" "));
const DIGIT = bytes(0x30, 0x39);
/** One character inside a JSON string: unescaped printable (not " or \), an escape, or a
 *  non-ASCII UTF-8 character. */
const STRING_CHAR = alt(
  bytes(0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7e),
  seq(
    lit("\\"),
    alt(
      bytes(
        0x22,
        0x22,
        0x2f,
        0x2f,
        0x5c,
        0x5c,
        0x62,
        0x62,
        0x66,
        0x66,
        0x6e,
        0x6e,
        0x72,
        0x72,
        0x74,
        0x74,
      ),
      seq(lit("u"), rep(bytes(0x30, 0x39, 0x41, 0x46, 0x61, 0x66), 4, 4)),
    ),
  ),
  NON_ASCII,
);
const NAT = alt(lit("0"), seq(bytes(0x31, 0x39), rep(DIGIT, 0, MAX_DIGITS - 1)));
const INTEGER = seq(opt(lit("-")), NAT);
/** Any JSON number (bounded ones go through numberRange, without an exponent). */
const NUMBER = seq(
  INTEGER,
  opt(seq(lit("."), rep(DIGIT, 1, MAX_DIGITS))),
  opt(seq(bytes(0x45, 0x45, 0x65, 0x65), opt(bytes(0x2b, 0x2b, 0x2d, 0x2d)), rep(DIGIT, 1, 3))),
);

function stringOf(min: number, max: number): Rx {
  return seq(lit('"'), rep(STRING_CHAR, min, max), lit('"'));
}

/** Any JSON value: one rule, which objects and arrays call for their members. */
const VALUE: Rule = { name: "json value", body: null };
/** A call to any JSON value. */
export const anyValue = (): Rx => call(VALUE);

/** Any JSON object. */
export function anyObject(): Rx {
  const member = seq(stringOf(0, -1), lit(":"), SP, anyValue());
  return seq(lit("{"), opt(seq(member, rep(seq(lit(","), SP, member), 0, -1))), lit("}"));
}

function anyArray(): Rx {
  const v = anyValue();
  return seq(lit("["), opt(seq(v, rep(seq(lit(","), SP, v), 0, -1))), lit("]"));
}

VALUE.body = alt(
  stringOf(0, -1),
  NUMBER,
  lit("true"),
  lit("false"),
  lit("null"),
  anyObject(),
  anyArray(),
);

/** Digit strings from a to b inclusive, both of the same length. */
function digitRange(a: string, b: string): Rx {
  if (a.length === 0) return EMPTY;
  // Every string of the length: one repetition (else both edges would recurse at every
  // digit, 2^n copies: "integer, minimum 0" alone made 1.2 million automaton states).
  if (/^0*$/.test(a) && /^9*$/.test(b)) return rep(DIGIT, a.length, a.length);
  if (a[0] === b[0]) return seq(lit(a[0]), digitRange(a.slice(1), b.slice(1)));
  const n = a.length - 1;
  const lo = a.charCodeAt(0), hi = b.charCodeAt(0);
  const parts = [seq(lit(a[0]), digitRange(a.slice(1), "9".repeat(n)))];
  if (hi - lo > 1) parts.push(seq(bytes(lo + 1, hi - 1), rep(DIGIT, n, n)));
  parts.push(seq(lit(b[0]), digitRange("0".repeat(n), b.slice(1))));
  return alt(...parts);
}

/** Decimal integers lo..hi (0 <= lo <= hi), no leading zeros. */
function natRange(lo: bigint, hi: bigint): Rx {
  const parts: Rx[] = [];
  const a = lo.toString(), b = hi.toString();
  for (let len = a.length; len <= b.length; len++) {
    const from = len === a.length ? a : "1" + "0".repeat(len - 1);
    const to = len === b.length ? b : "9".repeat(len);
    parts.push(digitRange(from, to));
  }
  return alt(...parts);
}

/** A bound of a real range: its decimal digits before and after the point (no trailing
 *  zeros after it), and whether it is exclusive. */
interface DecBound {
  int: bigint;
  frac: string;
  strict: boolean;
}

/** The exact decimal digits of a finite number >= 0 (String() may use an exponent). */
function decimalOf(v: number): { int: bigint; frac: string } {
  const m = /^(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$/.exec(String(v));
  if (!m) throw new GrammarError(`json_schema: bound ${v} is not a decimal number`);
  let digits = m[1] + (m[2] ?? ""), point = m[1].length + Number(m[3] ?? 0);
  if (point <= 0) (digits = "0".repeat(1 - point) + digits, point = 1);
  if (point > digits.length) digits += "0".repeat(point - digits.length);
  return { int: BigInt(digits.slice(0, point)), frac: digits.slice(point).replace(/0+$/, "") };
}

/** Digits after the point, 1..MAX_DIGITS of them; any (no bound left), or made of zeros. */
const ANY_FRAC = rep(DIGIT, 1, MAX_DIGITS);
const ZERO_FRAC = rep(lit("0"), 1, MAX_DIGITS);
/** A digit run of 0.G > 0: some digit not zero. */
const POSITIVE_TAIL = seq(
  rep(lit("0"), 0, MAX_DIGITS),
  bytes(0x31, 0x39),
  rep(DIGIT, 0, MAX_DIGITS),
);

/**
 * Digit strings G (after the point, possibly empty, value 0.G) with 0.G above the lower bound
 * 0.s (at least, or above when `sx`) and below the upper 0.t (at most, or below when `tx`);
 * null: no such bound. Digit by digit: a first digit above s's first leaves only the upper
 * bound, one equal to it carries the rest of s on, one below it fails; the same for t.
 */
function fracBetween(s: string | null, sx: boolean, t: string | null, tx: boolean): Rx {
  if (s === "" && !sx) s = null; // 0.G >= 0 always
  if (t === "" && tx) return NEVER; // 0.G < 0 never
  if (s === null && t === null) return opt(ANY_FRAC);
  if (t === "") return s === null ? opt(ZERO_FRAC) : NEVER; // 0.G <= 0: zeros, and not > 0
  if (s === "" && t === null) return POSITIVE_TAIL; // 0.G > 0: some digit not zero
  const parts: Rx[] = [];
  // G empty (value 0): when 0 satisfies both bounds (a t left here is > 0).
  if (s === null) parts.push(EMPTY);
  // A strict "" lower bound (0.G > 0) goes on digit by digit as a bound of 0.
  const s0 = s === null ? -1 : s === "" ? 0 : s.charCodeAt(0) - 48;
  const t0 = t === null ? 10 : t.charCodeAt(0) - 48;
  for (let d = Math.max(s0, 0); d <= Math.min(t0, 9); d++) {
    const lower = d === s0 ? s!.slice(1) : null, upper = d === t0 ? t!.slice(1) : null;
    // Digits strictly between the two bounds' digits share their rest: one class.
    let e = d;
    if (d !== s0 && d !== t0) { while (e + 1 < Math.min(t0, 10)) e++; }
    const rest = fracBetween(lower, sx, upper, tx);
    if (rest !== NEVER) parts.push(seq(bytes(0x30 + d, 0x30 + e), rest));
    d = e;
  }
  return parts.length ? alt(...parts) : NEVER;
}

/** The optional fraction (".digits") of a number whose integer part equals the bounds'
 *  integer parts on the sides given (null: that side is already satisfied). */
function fracPart(lo: DecBound | null, hi: DecBound | null): Rx {
  const g = fracBetween(lo && lo.frac, lo?.strict ?? false, hi && hi.frac, hi?.strict ?? false);
  if (g === NEVER) return NEVER;
  // G empty is the number without a point; digits need one.
  const digits = nonEmpty(g);
  const parts = digits === NEVER ? [] : [seq(lit("."), digits)];
  if (matchesEmpty(g)) parts.unshift(EMPTY);
  return parts.length ? alt(...parts) : NEVER;
}

/** Whether fracBetween's `r` takes the empty string (it is opt(...) or an alternation with
 *  EMPTY in it). */
function matchesEmpty(r: Rx): boolean {
  return r === EMPTY || (r.t === "rep" && r.min === 0) ||
    (r.t === "alt" && r.items.some(matchesEmpty));
}

/** fracBetween's `r` without its empty string. */
function nonEmpty(r: Rx): Rx {
  if (r === EMPTY) return NEVER;
  if (r.t === "alt") {
    const items = r.items.map(nonEmpty).filter((x) => x !== NEVER);
    return items.length ? alt(...items) : NEVER;
  }
  if (r.t === "rep" && r.min === 0) return r.max === 1 ? nonEmpty(r.item) : { ...r, min: 1 };
  return r;
}

/** Reals x >= 0 between the bounds (either null: unbounded), without an exponent: the
 *  integer part against the bounds' integer parts, then the fraction where they are equal. */
function nonNegRange(lo: DecBound | null, hi: DecBound | null): Rx {
  const big = 10n ** BigInt(MAX_DIGITS) - 1n;
  const li = lo?.int ?? 0n, hiInt = hi?.int ?? big;
  if (li > hiInt) return NEVER;
  const intLit = (n: bigint) => lit(n.toString());
  if (li === hiInt) return seq(intLit(li), fracPart(lo, hi));
  const parts: Rx[] = [];
  // The lowest integer part (lo's, or 0 with no lower bound) with the lower fraction bound.
  parts.push(seq(intLit(li), fracPart(lo, null)));
  if (hiInt - li > 1n) parts.push(seq(natRange(li + 1n, hiInt - 1n), opt(seq(lit("."), ANY_FRAC))));
  parts.push(seq(intLit(hiInt), fracPart(null, hi)));
  const live = parts.filter((x) => !hasNever(x));
  return live.length ? alt(...live) : NEVER;
}

/** Whether a sequence contains NEVER (matches nothing). */
function hasNever(r: Rx): boolean {
  return r === NEVER || (r.t === "seq" && r.items.some(hasNever));
}

/** Numbers in a real range [lo, hi] (bounds inclusive or `strict`; either null: unbounded),
 *  written without an exponent. Ranges over decimal digits are regular: the negative part is
 *  "-" and the mirrored range of |x|. */
function numberRange(
  lo: number | null,
  loStrict: boolean,
  hi: number | null,
  hiStrict: boolean,
  path: string,
): Rx {
  if (lo !== null && hi !== null && (lo > hi || (lo === hi && (loStrict || hiStrict)))) {
    throw new GrammarError(`json_schema: ${path} has an empty range [${lo}, ${hi}]`);
  }
  const bound = (v: number, strict: boolean): DecBound => ({ ...decimalOf(Math.abs(v)), strict });
  const parts: Rx[] = [];
  // x >= 0: from max(lo, 0) (0 inclusive when lo < 0) to hi.
  if (hi === null || hi > 0 || (hi === 0 && !hiStrict)) {
    const l = lo === null || lo < 0 ? null : bound(lo, loStrict);
    parts.push(nonNegRange(l, hi === null ? null : bound(hi, hiStrict)));
  }
  // x < 0: "-" then |x| in (max(-hi, 0), -lo].
  if (lo === null || lo < 0) {
    const l = hi === null || hi >= 0 ? { int: 0n, frac: "", strict: true } : bound(hi, hiStrict);
    parts.push(seq(lit("-"), nonNegRange(l, lo === null ? null : bound(lo, loStrict))));
  }
  const live = parts.filter((x) => !hasNever(x));
  if (!live.length) throw new GrammarError(`json_schema: ${path} has no number in its range`);
  return alt(...live);
}

/** Integers in [lo, hi] (either may be null: unbounded). */
function integerRange(lo: bigint | null, hi: bigint | null): Rx {
  const big = 10n ** BigInt(MAX_DIGITS) - 1n;
  const l = lo ?? -big, h = hi ?? big;
  if (l > h) throw new GrammarError(`integer range [${l}, ${h}] is empty`);
  const parts: Rx[] = [];
  if (h >= 0n) parts.push(natRange(l > 0n ? l : 0n, h));
  if (l < 0n) parts.push(seq(lit("-"), natRange(h < 0n ? -h : 1n, -l)));
  return alt(...parts);
}

/** Compiles a JSON Schema to a regex AST; GrammarError for what it cannot express. */
export function schemaToRegex(root: unknown): Rx {
  if (typeof root !== "object" || root === null || Array.isArray(root)) {
    if (root === true) return anyValue();
    throw new GrammarError("json_schema: the schema must be an object");
  }
  const defs = {
    ...((root as Schema).definitions as Schema | undefined ?? {}),
    ...((root as Schema).$defs as Schema | undefined ?? {}),
  };
  /** $refs being expanded (a $ref met again inside its own expansion is a recursive call),
   *  and the rule of each that turned out recursive. */
  const expanding = new Set<string>();
  const recursive = new Map<string, Rule>();

  const resolve = (ref: string): Schema => {
    if (ref === "#") return root as Schema;
    const m = /^#\/(\$defs|definitions)\/(.+)$/.exec(ref);
    if (!m || !(m[2] in defs)) throw new GrammarError(`json_schema: unresolvable $ref ${ref}`);
    return defs[m[2]] as Schema;
  };

  const go = (s: unknown, path: string): Rx => {
    if (s === true || (typeof s === "object" && s !== null && Object.keys(s).length === 0)) {
      return anyValue();
    }
    if (typeof s !== "object" || s === null || Array.isArray(s)) {
      throw new GrammarError(`json_schema: ${path} is not a schema object`);
    }
    const sc = s as Schema;
    if (typeof sc.$ref === "string") {
      const ref = sc.$ref;
      if (expanding.has(ref)) {
        let rule = recursive.get(ref);
        if (!rule) recursive.set(ref, rule = { name: ref, body: null });
        return call(rule);
      }
      // Inlined, unless the expansion called itself: then it is the body of the ref's rule.
      expanding.add(ref);
      try {
        const body = go(resolve(ref), ref);
        const rule = recursive.get(ref);
        if (!rule) return body;
        rule.body = body;
        recursive.delete(ref);
        return call(rule);
      } finally {
        expanding.delete(ref);
      }
    }
    if ("const" in sc) return lit(JSON.stringify(sc.const));
    if (Array.isArray(sc.enum)) {
      if (sc.enum.length === 0) throw new GrammarError(`json_schema: ${path}.enum is empty`);
      return alt(...sc.enum.map((v) => lit(JSON.stringify(v))));
    }
    const union = (sc.anyOf ?? sc.oneOf) as unknown;
    if (union !== undefined) {
      if (!Array.isArray(union) || union.length === 0) {
        throw new GrammarError(`json_schema: ${path}.anyOf must be a non-empty array`);
      }
      return alt(...union.map((u, k) => go(u, `${path}.anyOf[${k}]`)));
    }
    if (Array.isArray(sc.allOf) && sc.allOf.length === 1) return go(sc.allOf[0], path);
    let type = sc.type;
    if (Array.isArray(type)) {
      return alt(...type.map((t) => go({ ...sc, type: t }, path)));
    }
    if (type === undefined) {
      if (sc.properties) type = "object";
      else if (sc.items) type = "array";
      else return anyValue();
    }
    switch (type) {
      case "string":
        return stringSchema(sc, path);
      case "integer": {
        const lo = intBound(realBound(sc.minimum, sc.exclusiveMinimum, 1, path), 1);
        const hi = intBound(realBound(sc.maximum, sc.exclusiveMaximum, -1, path), -1);
        return lo === null && hi === null ? INTEGER : integerRange(lo, hi);
      }
      case "number": {
        const lo = realBound(sc.minimum, sc.exclusiveMinimum, 1, path);
        const hi = realBound(sc.maximum, sc.exclusiveMaximum, -1, path);
        if (!lo && !hi) return NUMBER;
        return numberRange(
          lo?.v ?? null,
          lo?.strict ?? false,
          hi?.v ?? null,
          hi?.strict ?? false,
          path,
        );
      }
      case "boolean":
        return alt(lit("true"), lit("false"));
      case "null":
        return lit("null");
      case "array":
        return arraySchema(sc, path);
      case "object":
        return objectSchema(sc, path);
      default:
        throw new GrammarError(`json_schema: ${path} has unsupported type ${JSON.stringify(type)}`);
    }
  };

  const arraySchema = (sc: Schema, path: string): Rx => {
    const min = nonNeg(sc.minItems, 0, `${path}.minItems`);
    const max = sc.maxItems === undefined ? -1 : nonNeg(sc.maxItems, 0, `${path}.maxItems`);
    if (max !== -1 && max < min) throw new GrammarError(`json_schema: ${path} maxItems < minItems`);
    const prefix = Array.isArray(sc.prefixItems) ? sc.prefixItems : [];
    const item = sc.items === undefined || sc.items === true
      ? anyValue()
      : go(sc.items, `${path}.items`);
    if (prefix.length) {
      const parts = prefix.map((p, k) => go(p, `${path}.prefixItems[${k}]`));
      let body: Rx = parts[0];
      for (let k = 1; k < parts.length; k++) body = seq(body, lit(","), SP, parts[k]);
      return seq(lit("["), body, lit("]"));
    }
    const more = seq(lit(","), SP, item);
    if (max === 0) return lit("[]");
    const body = seq(item, rep(more, Math.max(0, min - 1), max === -1 ? -1 : max - 1));
    return seq(lit("["), min === 0 ? opt(body) : body, lit("]"));
  };

  const objectSchema = (sc: Schema, path: string): Rx => {
    const props = sc.properties as Record<string, unknown> | undefined;
    if (!props || Object.keys(props).length === 0) {
      if (sc.additionalProperties === false) return lit("{}");
      return anyObject();
    }
    const required = new Set(Array.isArray(sc.required) ? sc.required as string[] : []);
    for (const r of required) {
      if (!(r in props)) {
        throw new GrammarError(`json_schema: ${path} requires unknown property ${r}`);
      }
    }
    const names = Object.keys(props);
    const member = names.map((n) =>
      seq(lit(JSON.stringify(n)), lit(":"), SP, go(props[n], `${path}.${n}`))
    );
    const isReq = names.map((n) => required.has(n));
    // After property i, the rest in order: required ones always, optional ones maybe.
    const rest = (i: number): Rx =>
      seq(
        ...names.slice(i + 1).map((_, k) => {
          const j = i + 1 + k;
          const m = seq(lit(","), SP, member[j]);
          return isReq[j] ? m : opt(m);
        }),
      );
    const firsts: Rx[] = [];
    for (let i = 0; i < names.length; i++) {
      firsts.push(seq(member[i], rest(i)));
      if (isReq[i]) break; // a required property cannot be skipped
    }
    const allOptional = isReq.every((r) => !r);
    const body = allOptional ? opt(alt(...firsts)) : alt(...firsts);
    return seq(lit("{"), body, lit("}"));
  };

  const stringSchema = (sc: Schema, path: string): Rx => {
    if (typeof sc.pattern === "string") {
      const p = parseRegex(sc.pattern);
      return seq(lit('"'), jsonSafe(p), lit('"'));
    }
    if (sc.format !== undefined) {
      const f = FORMATS[sc.format as string];
      if (f) return seq(lit('"'), f, lit('"'));
    }
    const min = nonNeg(sc.minLength, 0, `${path}.minLength`);
    const max = sc.maxLength === undefined ? -1 : nonNeg(sc.maxLength, 0, `${path}.maxLength`);
    if (max !== -1 && max < min) {
      throw new GrammarError(`json_schema: ${path} maxLength < minLength`);
    }
    return stringOf(min, max);
  };

  return go(root, "schema");
}

const D2 = rep(DIGIT, 2, 2);
const FORMATS: Record<string, Rx> = {
  date: seq(rep(DIGIT, 4, 4), lit("-"), D2, lit("-"), D2),
  time: seq(
    D2,
    lit(":"),
    D2,
    lit(":"),
    D2,
    opt(seq(lit("."), rep(DIGIT, 1, 6))),
    opt(alt(lit("Z"), seq(bytes(0x2b, 0x2b, 0x2d, 0x2d), D2, lit(":"), D2))),
  ),
  uuid: seq(
    ...[8, 4, 4, 4, 12].flatMap((
      n,
      k,
    ) => [...(k ? [lit("-")] : []), rep(bytes(0x30, 0x39, 0x61, 0x66), n, n)]),
  ),
};
FORMATS["date-time"] = seq(FORMATS.date, lit("T"), FORMATS.time);

/** A pattern's characters as they may appear inside a JSON string: `"`, `\` and control
 *  characters (which JSON escapes) are left out. */
function jsonSafe(r: Rx): Rx {
  switch (r.t) {
    case "bytes": {
      const out: number[] = [];
      for (let k = 0; k < r.ranges.length; k += 2) {
        let lo = r.ranges[k];
        const hi = r.ranges[k + 1];
        for (let c = lo; c <= hi; c++) {
          const bad = c < 0x20 || c === 0x22 || c === 0x5c;
          if (bad) {
            if (c > lo) out.push(lo, c - 1);
            lo = c + 1;
          }
        }
        if (lo <= hi) out.push(lo, hi);
      }
      if (out.length === 0) {
        throw new GrammarError("json_schema: pattern matches only characters JSON must escape");
      }
      return bytes(...out);
    }
    case "seq":
      return { t: "seq", items: r.items.map(jsonSafe) };
    case "alt":
      return { t: "alt", items: r.items.map(jsonSafe) };
    case "rep":
      return { ...r, item: jsonSafe(r.item) };
    case "call": // patterns have no rules
      return r;
  }
}

function nonNeg(v: unknown, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    throw new GrammarError(`json_schema: ${what} must be a non-negative integer`);
  }
  return v;
}

/** A real bound from inclusive / exclusive forms: the tighter of the two (`dir` 1 for a
 *  lower bound, -1 for an upper), and whether it is exclusive. */
function realBound(
  incl: unknown,
  excl: unknown,
  dir: number,
  path: string,
): { v: number; strict: boolean } | null {
  const num = (v: unknown, what: string) => {
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new GrammarError(`json_schema: ${path}.${what} must be a number`);
    }
    return v;
  };
  let b: { v: number; strict: boolean } | null = null;
  if (incl !== undefined) b = { v: num(incl, dir > 0 ? "minimum" : "maximum"), strict: false };
  if (typeof excl === "number") {
    const v = num(excl, dir > 0 ? "exclusiveMinimum" : "exclusiveMaximum");
    if (b === null || (dir > 0 ? v >= b.v : v <= b.v)) b = { v, strict: true };
  }
  return b;
}

/** The integer bound of a real one (`dir` as realBound's): the first integer inside it. */
function intBound(b: { v: number; strict: boolean } | null, dir: number): bigint | null {
  if (b === null) return null;
  if (dir > 0) return BigInt(b.strict ? Math.floor(b.v) + 1 : Math.ceil(b.v));
  return BigInt(b.strict ? Math.ceil(b.v) - 1 : Math.floor(b.v));
}
