/**
 * EBNF grammars (the GBNF subset SGLang's `ebnf` field and llama.cpp take) compiled to the
 * regex AST of regex.ts:
 *
 *   root   ::= "Answer: " answer ("." | "!")?     # `#` starts a comment
 *   answer ::= [a-z]+ ( ", " [a-z]+ )* | number
 *   number ::= "-"? [0-9]{1,6}
 *
 * Rules `name ::= expr`; the start rule is `root`. An expression is alternatives (`|`) of
 * sequences of items: "string" or 'string' literals (escapes \n \t \r \\ \" \' \xHH
 * \uHHHH), character classes ([a-z], [^"\\], as in regex.ts), `.` (any character), rule
 * names, groups ( ... ), each item optionally followed by ? * + {m} {m,} {m,n}.
 *
 * Each rule becomes one rule of the automaton (a `call` in regex.ts), so a rule may refer to
 * itself, directly or through others, and nest as deep as the automaton's call stack
 * (MAX_CALL_DEPTH in automaton.ts). Rules with no finite derivation (every branch recurses
 * forever) are pruned by grammar.ts, as for every grammar, and a root with none is refused.
 */
import {
  alt,
  call,
  EMPTY,
  GrammarError,
  lit,
  parseRegex,
  rep,
  type Rule,
  type Rx,
  seq,
} from "./regex.ts";

/** An EBNF expression before rules are inlined. */
type Expr =
  | { t: "rx"; rx: Rx }
  | { t: "ref"; name: string; at: number }
  | { t: "seq"; items: Expr[] }
  | { t: "alt"; items: Expr[] }
  | { t: "rep"; item: Expr; min: number; max: number };

/** "line L, column C" of offset `at` in `text`. */
function where(text: string, at: number): string {
  const before = text.slice(0, at).split("\n");
  return `line ${before.length}, column ${before[before.length - 1].length + 1}`;
}

/** Parses `text` into rules; GrammarError with line:column for a syntax error. */
function parseRules(text: string): Map<string, Expr> {
  let i = 0;
  const fail = (why: string, at = i): never => {
    throw new GrammarError(`ebnf: ${why} at ${where(text, at)}`);
  };
  const skip = () => {
    for (;;) {
      while (i < text.length && /\s/.test(text[i])) i++;
      if (text[i] !== "#") return;
      while (i < text.length && text[i] !== "\n") i++;
    }
  };
  const NAME = /[A-Za-z_][A-Za-z0-9_-]*/y;
  const name = (): string | null => {
    NAME.lastIndex = i;
    const m = NAME.exec(text);
    if (!m) return null;
    i += m[0].length;
    return m[0];
  };
  // Whether a rule definition (`name ::=`) starts at i: it ends the previous rule's body.
  const atDefinition = () => {
    NAME.lastIndex = i;
    const m = NAME.exec(text);
    if (!m) return false;
    let j = i + m[0].length;
    while (j < text.length && /[ \t]/.test(text[j])) j++;
    return text.startsWith("::=", j);
  };

  const literal = (): Rx => {
    const quote = text[i++];
    let s = "";
    for (;;) {
      const c = text[i];
      if (c === undefined || c === "\n") fail("unterminated string literal");
      i++;
      if (c === quote) break;
      if (c !== "\\") {
        s += c;
        continue;
      }
      const e = text[i++];
      const hex = (n: number) => {
        const h = text.slice(i, i + n);
        if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(h)) fail(`\\${e} needs ${n} hex digits`);
        i += n;
        return String.fromCodePoint(parseInt(h, 16));
      };
      const simple: Record<string, string> = {
        n: "\n",
        t: "\t",
        r: "\r",
        "\\": "\\",
        '"': '"',
        "'": "'",
      };
      if (e in simple) s += simple[e];
      else if (e === "x") s += hex(2);
      else if (e === "u") s += hex(4);
      else if (e === "U") s += hex(8);
      else fail(`unknown escape \\${e}`, i - 2);
    }
    return lit(s);
  };

  const charClass = (): Rx => {
    const start = i;
    i++; // [
    if (text[i] === "^") i++;
    if (text[i] === "]") i++; // a leading ] is a member
    while (i < text.length && text[i] !== "]") {
      if (text[i] === "\n") fail("unterminated character class", start);
      i += text[i] === "\\" ? 2 : 1;
    }
    if (i >= text.length) fail("unterminated character class", start);
    i++;
    try {
      return parseRegex(text.slice(start, i));
    } catch (e) {
      if (e instanceof GrammarError) fail(`bad character class (${e.message})`, start);
      throw e;
    }
  };

  const item = (): Expr => {
    const c = text[i];
    if (c === '"' || c === "'") return { t: "rx", rx: literal() };
    if (c === "[") return { t: "rx", rx: charClass() };
    if (c === ".") {
      i++;
      return { t: "rx", rx: parseRegex(".") };
    }
    if (c === "(") {
      i++;
      const inner = alternatives();
      skip();
      if (text[i] !== ")") fail("missing )");
      i++;
      return inner;
    }
    const at = i;
    const n = name();
    if (n === null) {
      fail(c === undefined ? "unexpected end of grammar" : `unexpected ${JSON.stringify(c)}`);
    }
    return { t: "ref", name: n!, at };
  };

  const repeated = (): Expr => {
    let e = item();
    for (;;) {
      const c = text[i]; // no space before an operator
      let min: number, max: number;
      if (c === "?") [min, max] = [0, 1];
      else if (c === "*") [min, max] = [0, -1];
      else if (c === "+") [min, max] = [1, -1];
      else if (c === "{") {
        const m = /\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}/y;
        m.lastIndex = i;
        const r = m.exec(text);
        if (!r) fail("bad {m,n}");
        min = Number(r![1]);
        max = r![2] === undefined ? min : r![3] === "" ? -1 : Number(r![3]);
        if (max !== -1 && max < min) fail("{m,n} with n < m");
        if (Math.max(min, max) > 1000) fail("repeat count above 1000");
        i += r![0].length - 1;
      } else return e;
      i++;
      e = { t: "rep", item: e, min, max };
    }
  };

  const sequence = (): Expr => {
    const items: Expr[] = [];
    for (;;) {
      skip();
      const c = text[i];
      if (c === undefined || c === "|" || c === ")" || atDefinition()) break;
      items.push(repeated());
    }
    return items.length === 1 ? items[0] : { t: "seq", items };
  };

  function alternatives(): Expr {
    const items = [sequence()];
    for (;;) {
      skip();
      if (text[i] !== "|") break;
      i++;
      items.push(sequence());
    }
    return items.length === 1 ? items[0] : { t: "alt", items };
  }

  const rules = new Map<string, Expr>();
  skip();
  while (i < text.length) {
    const at = i;
    const n = name();
    if (n === null) fail("expected a rule name");
    skip();
    if (!text.startsWith("::=", i)) fail(`expected ::= after ${n}`);
    i += 3;
    if (rules.has(n!)) fail(`rule ${n} is defined twice`, at);
    rules.set(n!, alternatives());
    skip();
    if (text[i] === ")") fail("unbalanced )");
  }
  return rules;
}

/** Compiles an EBNF grammar to a regex AST (see the module comment for the subset). */
export function ebnfToRegex(text: string): Rx {
  const rules = parseRules(text);
  if (!rules.has("root")) throw new GrammarError("ebnf: the grammar has no root rule");
  // Every reference must name a rule.
  const check = (e: Expr) => {
    if (e.t === "ref" && !rules.has(e.name)) {
      throw new GrammarError(`ebnf: undefined rule ${e.name} at ${where(text, e.at)}`);
    }
    if (e.t === "seq" || e.t === "alt") e.items.forEach(check);
    if (e.t === "rep") check(e.item);
  };
  rules.forEach(check);

  // Each rule once, as a rule of the automaton (grammar.ts prunes what cannot finish).
  const made = new Map<string, Rule>();
  const ruleOf = (name: string): Rule => {
    let r = made.get(name);
    if (!r) {
      made.set(name, r = { name, body: null });
      r.body = build(rules.get(name)!);
    }
    return r;
  };
  const build = (e: Expr): Rx => {
    switch (e.t) {
      case "rx":
        return e.rx;
      case "ref":
        return call(ruleOf(e.name));
      case "seq":
        return e.items.length === 0 ? EMPTY : seq(...e.items.map(build));
      case "alt":
        return alt(...e.items.map(build));
      case "rep":
        return rep(build(e.item), e.min, e.max);
    }
  };
  return call(ruleOf("root"));
}
