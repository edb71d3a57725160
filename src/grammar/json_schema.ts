/**
 * JSON Schema (the subset structured outputs use) as a regex AST over the JSON text: types,
 * properties / required / additionalProperties, enum, const, arrays with min/maxItems,
 * strings with min/maxLength and pattern, integer ranges, nested objects, anyOf / oneOf,
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
function numberOf(signed: boolean): Rx {
  return seq(
    signed ? INTEGER : NAT,
    opt(seq(lit("."), rep(DIGIT, 1, MAX_DIGITS))),
    opt(seq(bytes(0x45, 0x45, 0x65, 0x65), opt(bytes(0x2b, 0x2b, 0x2d, 0x2d)), rep(DIGIT, 1, 3))),
  );
}
const NUMBER = numberOf(true);

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
        const lo = bound(sc.minimum, sc.exclusiveMinimum, 1n, path);
        const hi = bound(sc.maximum, sc.exclusiveMaximum, -1n, path);
        return lo === null && hi === null ? INTEGER : integerRange(lo, hi);
      }
      case "number":
        // Ranges of reals are not regular in general: a minimum of 0 or more drops the sign.
        if (typeof sc.minimum === "number" && sc.minimum >= 0) return numberOf(false);
        return NUMBER;
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

/** An integer bound from inclusive / exclusive forms (`step` moves an exclusive one in). */
function bound(incl: unknown, excl: unknown, step: bigint, path: string): bigint | null {
  const num = (v: unknown, what: string) => {
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new GrammarError(`json_schema: ${path}.${what} must be a number`);
    }
    return v;
  };
  let b: bigint | null = null;
  if (incl !== undefined) {
    const v = num(incl, step > 0 ? "minimum" : "maximum");
    b = BigInt(step > 0 ? Math.ceil(v) : Math.floor(v));
  }
  if (typeof excl === "number") {
    const v = num(excl, step > 0 ? "exclusiveMinimum" : "exclusiveMaximum");
    const e = Number.isInteger(v)
      ? BigInt(v) + step
      : BigInt(step > 0 ? Math.ceil(v) : Math.floor(v));
    b = b === null ? e : step > 0 ? (e > b ? e : b) : (e < b ? e : b);
  }
  return b;
}
