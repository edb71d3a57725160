/**
 * src/grammar: regexes and JSON Schemas compiled to byte automata, token masks over the tiny
 * Qwen3's real vocabulary (151k byte-level BPE tokens), and random walks that pick any
 * allowed token: whatever the walk picks, the text must match in full when the stop token
 * is taken (checked by JavaScript's RegExp and an independent schema validator).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ensureTestModel } from "./fixtures.ts";
import { Dfa, MAX_CALL_DEPTH, nfaSize } from "../src/grammar/automaton.ts";
import { NEVER, parseRegex, prune } from "../src/grammar/regex.ts";
import { ebnfToRegex } from "../src/grammar/ebnf.ts";
import {
  GrammarCache,
  GrammarError,
  type GrammarSpec,
  Matcher,
  specToRegex,
} from "../src/grammar/grammar.ts";
import { vocabTrie } from "../src/grammar/vocab.ts";
import { schemaProblem } from "./json_schema_check.ts";
import { bundledTokenizerFiles } from "../src/model/presets.ts";
import { ARITH_EBNF, isArith, isList, LIST_EBNF } from "./ebnf_check.ts";

const enc = new TextEncoder(), dec = new TextDecoder();
const fullMatch = (re: string, s: string) => new Dfa(parseRegex(re)).walk(0, enc.encode(s));
const accepts = (re: string, s: string) => {
  const d = new Dfa(parseRegex(re));
  const st = d.walk(0, enc.encode(s));
  return st >= 0 && d.isAccepting(st);
};

Deno.test("grammar: regex syntax matches like RegExp (full match)", () => {
  const cases: [string, string[], string[]][] = [
    ["(cat|dog)s? [0-9]{3}", ["cat 123", "dogs 000"], ["cat 12", "cow 123", "cats 1234"]],
    ["[a-c]+x*", ["a", "abcxx", "cccc"], ["", "x", "ad"]],
    ["\\d{2,3}-\\w+", ["12-a_b", "123-Z"], ["1-a", "1234-a", "12-"]],
    ['[^"]{1,3}', ["ab", "é", "\u4e2d\u6587"], ["", 'a"', "abcd"]],
    ["a.c", ["abc", "a\u00e9c"], ["ac", "a\nc"]],
    ["(?:ab){2}|\\(x\\)", ["abab", "(x)"], ["ab", "x"]],
    ["^h[eé]llo$", ["hello", "héllo"], ["hallo"]],
  ];
  for (const [re, yes, no] of cases) {
    for (const s of yes) assert.ok(accepts(re, s), `${re} should match ${JSON.stringify(s)}`);
    for (const s of no) assert.ok(!accepts(re, s), `${re} should not match ${JSON.stringify(s)}`);
    for (const s of [...yes, ...no]) {
      assert.equal(accepts(re, s), new RegExp(`^(?:${re})$`, "u").test(s), `${re} vs ${s}`);
    }
  }
  assert.equal(fullMatch("abc", "abd"), -1);
});

Deno.test("grammar: bad regexes and schemas throw GrammarError naming the problem", () => {
  const bad: GrammarSpec[] = [
    { kind: "regex", source: "(ab" },
    { kind: "regex", source: "a{3,1}" },
    { kind: "regex", source: "*a" },
    { kind: "json_schema", source: "{not json" },
    { kind: "json_schema", source: '{"type":"wat"}' },
    { kind: "json_schema", source: '{"$ref":"#/$defs/missing"}' },
    { kind: "json_schema", source: '{"type":"object","properties":{"a":{}},"required":["b"]}' },
    { kind: "ebnf", source: "root ::= x" },
    { kind: "ebnf", source: "root ::= 'a" },
    { kind: "ebnf", source: "start ::= 'a'" },
    { kind: "ebnf", source: "root ::= 'a' root" },
    { kind: "ebnf", source: "root ::= ('a' | 'b'" },
    { kind: "ebnf", source: "root ::= [b-a]" },
    { kind: "ebnf", source: "root ::= 'a'\nroot ::= 'b'" },
  ];
  for (const spec of bad) {
    assert.throws(() => specToRegex(spec), GrammarError, spec.source);
  }
  assert.throws(() => specToRegex({ kind: "json_schema", source: '{"type":"wat"}' }), /wat/);
  assert.throws(
    () => specToRegex({ kind: "ebnf", source: 'root ::= "a" b\nc ::= "c"' }),
    /undefined rule b at line 1, column 14/,
  );
  assert.throws(() => specToRegex({ kind: "ebnf", source: "root ::= root" }), /finite/);
});

Deno.test("grammar: ebnf syntax (literals, classes, groups, repeats, recursion)", () => {
  const accepts = (g: string, s: string) => {
    const d = new Dfa(specToRegex({ kind: "ebnf", source: g }));
    const st = d.walk(0, enc.encode(s));
    return st >= 0 && d.isAccepting(st);
  };
  const cases: [string, string[], string[]][] = [
    [
      `root ::= greet ", " name "!"?  # comment\n greet ::= "hi" | 'hello'\nname ::= [A-Z] [a-z]*`,
      ["hi, Bo", "hello, Ann!"],
      ["hi, bo", "hey, Bo", "hi,Bo"],
    ],
    ['root ::= ("ab" | [0-9]+){2,3} "\\n\\x41\\u00e9"', ["ab12\nAé", "abab1\nAé"], ["ab\nAé"]],
    [`root ::= . "." [^a-z"]`, ["é.Q", "x.\u4e2d"], ["x.a", 'x."', "xy.Q"]],
    // Recursion nests as deep as the automaton's call stack: 30 levels of parentheses are
    // 90 rule calls (expr, term, factor per level).
    [
      ARITH_EBNF,
      ["1+2*3", "(1+(2*3))-4", "((7))", "((((1))))", "(".repeat(30) + "1" + ")".repeat(30)],
      ["1+", "12a", "1+2+3+4+5", "((1)", "(".repeat(30) + "1" + ")".repeat(29)],
    ],
  ];
  for (const [g, yes, no] of cases) {
    for (const s of yes) assert.ok(accepts(g, s), `${g} should match ${JSON.stringify(s)}`);
    for (const s of no) assert.ok(!accepts(g, s), `${g} should not match ${JSON.stringify(s)}`);
  }
  for (const s of ["1+2*3", "(1+(2*3))-4", "((7))", "1+", "12a", "1+2+3+4+5"]) {
    assert.equal(accepts(ARITH_EBNF, s), isArith(s), s);
  }
});

Deno.test("grammar: nesting goes through rule calls, as deep as the call stack", () => {
  const accepting = (spec: GrammarSpec, s: string) => {
    const d = new Dfa(specToRegex(spec));
    const st = d.walk(0, enc.encode(s));
    return st >= 0 && d.isAccepting(st);
  };
  const obj: GrammarSpec = { kind: "json_object", source: "" };
  // Any JSON, objects and arrays in turn: one call per level.
  const nest = (k: number) =>
    Array.from({ length: k }, (_, i) => i % 2 ? "[" : '{"k": ').join("") + "1" +
    Array.from({ length: k }, (_, i) => (k - 1 - i) % 2 ? "]" : "}").join("");
  for (const k of [1, 4, 20, MAX_CALL_DEPTH - 1]) {
    assert.ok(accepting(obj, nest(k)), `json_object ${k} deep`);
    assert.ok(!accepting(obj, nest(k).slice(0, -1)), `json_object ${k} deep, unclosed`);
  }
  assert.ok(!accepting(obj, nest(MAX_CALL_DEPTH + 1)), "past the call stack");
  assert.ok(!accepting(obj, '{"a": [1}]'), "crossed brackets");
  // A recursive $ref: a tree 12 levels deep, every node checked at every depth.
  const tree = { kind: "json_schema" as const, source: JSON.stringify(SCHEMAS.tree) };
  const node = (d: number, v: number): string =>
    d === 0 ? `{"v": ${v}}` : `{"v": ${v}, "kids": [${node(d - 1, v)}, {"v": 0}]}`;
  assert.ok(accepting(tree, node(12, 3)));
  assert.ok(!accepting(tree, node(12, 3).replace('{"v": 3}', '{"v": 6}')), "v out of range");
  assert.ok(!accepting(tree, node(12, 3).replace('"kids": [{"v": 3}', '"kids": [{"w": 3}')));
  // Left recursion is refused at admission (each reading would be a stack of its own from
  // the first byte on), directly or through other rules; an ambiguous grammar that is not
  // left-recursive fails only when its readings outgrow the bound, as a GrammarError (which
  // ends its request in the GPU worker, tests/constraints_test.ts), not a hang.
  for (
    const g of [
      'root ::= sum\nsum ::= sum "+" "1" | "1"',
      'root ::= x\nx ::= x x | "a"',
      'root ::= x\nx ::= y | "c"\ny ::= "b"? x "a"',
    ]
  ) {
    assert.throws(() => specToRegex({ kind: "ebnf", source: g }), /is left-recursive/, g);
  }
  // Nested thousands deep, a pattern, schema or grammar overflows the compilers' recursion:
  // a 400 like any bad grammar, not a server error.
  let deepSchema: unknown = { type: "integer" };
  for (let i = 0; i < 20000; i++) deepSchema = { type: "object", properties: { a: deepSchema } };
  for (
    const spec of [
      { kind: "json_schema" as const, source: JSON.stringify(deepSchema) },
      { kind: "regex" as const, source: "(".repeat(20000) + "a" + ")".repeat(20000) },
      {
        kind: "ebnf" as const,
        source: "root ::= " + "(".repeat(20000) + '"a"' + ")".repeat(20000),
      },
    ]
  ) {
    assert.throws(() => specToRegex(spec), /nested too deeply to compile/, spec.kind);
  }
  const ambiguous = new Dfa(
    specToRegex({ kind: "ebnf", source: 'root ::= x\nx ::= "a" x "b" | "a" x | "c"' }),
  );
  assert.ok(ambiguous.isAccepting(ambiguous.walk(0, enc.encode("aaacbb"))));
  assert.throws(() => ambiguous.walk(0, enc.encode("a".repeat(40))), /too ambiguous/);
  // At the bound, no dead end: a "(" is allowed only while its ")" can still be reached. Each
  // level is two calls (x, then y after the "-"), under root's call of x: 63 levels fit in
  // 128. Were the 64th "(" allowed, the "-" after it would need a call past the bound.
  const parens = new Dfa(
    specToRegex({ kind: "ebnf", source: 'root ::= x\nx ::= "(" "-" y ")" | "a"\ny ::= x' }),
  );
  const deepest = "(-".repeat(63) + "a" + ")".repeat(63);
  assert.ok(parens.isAccepting(parens.walk(0, enc.encode(deepest))));
  assert.equal(parens.walk(0, enc.encode("(-".repeat(63) + "(")), -1);
  // What can never finish is pruned: the "b" branch needs x, which recurses without end, so
  // no text may start with it; a schema that requires itself has no finite instance at all.
  const dead = new Dfa(specToRegex({ kind: "ebnf", source: 'root ::= "a" | "b" x\nx ::= "c" x' }));
  assert.equal(dead.walk(0, enc.encode("b")), -1);
  assert.ok(dead.isAccepting(dead.walk(0, enc.encode("a"))));
  // Refused at admission, before the GPU worker builds anything: too many automaton states,
  // or no text that fits the call stack.
  assert.throws(
    () => specToRegex({ kind: "regex", source: "(a{1000}){1000}" }),
    /regex: too large \(\d+ automaton states, at most 250000/,
  );
  assert.throws(
    () => specToRegex({ kind: "ebnf", source: 'root ::= ("a"{1000}){300}' }),
    /ebnf: too large/,
  );
  const deep = ["root ::= r0"];
  for (let i = 0; i < MAX_CALL_DEPTH; i++) deep.push(`r${i} ::= "(" r${i + 1} ")"`);
  deep.push(`r${MAX_CALL_DEPTH} ::= "x"`);
  assert.throws(
    () => specToRegex({ kind: "ebnf", source: deep.join("\n") }),
    /ebnf: every text nests deeper than 128 rules/,
  );
  // The size counted on the AST is the automaton's.
  for (
    const spec of [
      { kind: "json_schema" as const, source: JSON.stringify(SCHEMAS.person) },
      { kind: "json_schema" as const, source: JSON.stringify(SCHEMAS.tree) },
      { kind: "json_object" as const, source: "" },
      { kind: "ebnf" as const, source: ARITH_EBNF },
      { kind: "regex" as const, source: "(ab|c){2,5}x*" },
    ]
  ) {
    const rx = specToRegex(spec);
    assert.equal(nfaSize(rx), new Dfa(rx).nfaSize, spec.kind);
  }
  const endless = {
    $defs: { n: { type: "object", properties: { c: { $ref: "#/$defs/n" } }, required: ["c"] } },
    $ref: "#/$defs/n",
  };
  assert.throws(
    () => specToRegex({ kind: "json_schema", source: JSON.stringify(endless) }),
    /json_schema: no finite text/,
  );
});

Deno.test("grammar: a chain of a thousand rules, each finishing through the next", () => {
  // r_k's call depth settles only after r_(k+1)'s, against the order the rules are met: the
  // fixed points that swept every rule until nothing changed took one sweep per rule (1.5 s
  // of admission and 2.6 s in the GPU worker here; now ~0.2 and ~0.5 s). Speed is not
  // asserted in a test; what is checked is that the depths come out exact at the bound.
  const g = ['root ::= r1\nr1 ::= "x" | "c" r2'];
  for (let i = 2; i <= 1000; i++) {
    g.push(`r${i} ::= "d" r${i - 1} "${"b".repeat(120)}" | "c" r${i + 1}`);
  }
  g.push('r1001 ::= "z"');
  const d = new Dfa(specToRegex({ kind: "ebnf", source: g.join("\n") }));
  // After k "c"s the text is k + 1 calls deep and can only finish through r_k ... r_1 (k
  // more), so 63 fit in 128 and a 64th is refused.
  const b = "b".repeat(120);
  const c63 = "c".repeat(63) + "d".repeat(63) + "x" + b.repeat(63);
  assert.ok(d.isAccepting(d.walk(0, enc.encode(c63))));
  assert.equal(d.walk(0, enc.encode("c".repeat(64))), -1);
  // Pruning, which runs before admission's size bound, on a chain where each rule derives
  // text only once the next one does: all productive, nothing dropped; its only text nests
  // 1,000 calls deep, which admission then refuses.
  const p = ["root ::= r1"];
  for (let i = 1; i < 1000; i++) p.push(`r${i} ::= "b" r${i + 1}`);
  p.push('r1000 ::= "z"');
  const src = p.join("\n");
  assert.notEqual(prune(ebnfToRegex(src)), NEVER);
  assert.throws(() => specToRegex({ kind: "ebnf", source: src }), /nests deeper than 128/);
});

Deno.test("grammar: integer ranges with one bound stay small and exact", () => {
  const check = (sc: unknown, yes: string[], no: string[]) => {
    const rx = specToRegex({ kind: "json_schema", source: JSON.stringify(sc) });
    assert.ok(nfaSize(rx) < 5000, `${JSON.stringify(sc)}: ${nfaSize(rx)} states`);
    const d = new Dfa(rx);
    const ok = (x: string) => {
      const st = d.walk(0, enc.encode(x));
      return st >= 0 && d.isAccepting(st);
    };
    for (const x of yes) assert.ok(ok(x), `${JSON.stringify(sc)} ${x}`);
    for (const x of no) assert.ok(!ok(x), `${JSON.stringify(sc)} ${x}`);
  };
  check({ type: "integer", minimum: 0 }, ["0", "17", "9999999999999999"], ["-1", "01", "1.5"]);
  check({ type: "integer", maximum: 5 }, ["-300", "5", "0"], ["6", "10"]);
  check({ type: "integer", exclusiveMinimum: -5 }, ["-4", "0", "123456"], ["-5", "-6"]);
});

Deno.test("grammar: number ranges (minimum, maximum, exclusive) are exact over decimals", () => {
  // Exact decimal order: both sides scaled to integers of 40 fraction digits. ("-0" is left
  // out: the grammar writes zero without a sign.)
  const scaled = (x: string) => {
    const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(x)!;
    const v = BigInt(m[2] + (m[3] ?? "").padEnd(40, "0"));
    return m[1] ? -v : v;
  };
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const pick = <T>(xs: T[]) => xs[Math.floor(rnd() * xs.length)];
  const edges = [0, 0.5, 1, 1.25, 2, 3.14159, 10, 99.9, 100, 0.05, 0.007, 12.5];
  const value = () =>
    (rnd() < 0.3 ? -1 : 1) * pick(edges) + (rnd() < 0.3 ? pick([0, 0.01, -0.01, 1]) : 0);
  const candidates = [
    "0",
    "0.0",
    "0.5",
    "0.50",
    "0.49",
    "0.51",
    "1",
    "1.0",
    "1.25",
    "1.2500",
    "1.249",
    "2",
    "3",
    "3.14159",
    "3.1416",
    "3.14158",
    "9",
    "10",
    "10.000",
    "99.9",
    "99.89",
    "100",
    "100.01",
    "-0.5",
    "-1",
    "-1.25",
    "-3.2",
    "-10",
    "-99.9",
    "-100",
    "0.05",
    "0.0499",
    "0.007",
    "0.00700",
    "0.0071",
    "12.5",
    "12.49",
    "12.51",
    "-0.05",
    "-0.007",
    "1000",
    "7.5",
  ];
  for (let k = 0; k < 120; k++) {
    const sc: Record<string, unknown> = { type: "number" };
    let lo = rnd() < 0.8 ? value() : null, hi = rnd() < 0.8 ? value() : null;
    if (lo !== null && hi !== null && lo > hi) [lo, hi] = [hi, lo];
    const loX = rnd() < 0.4, hiX = rnd() < 0.4;
    if (lo !== null) sc[loX ? "exclusiveMinimum" : "minimum"] = lo;
    if (hi !== null) sc[hiX ? "exclusiveMaximum" : "maximum"] = hi;
    if (lo === null && hi === null) continue;
    if (lo !== null && hi !== null && lo === hi && (loX || hiX)) {
      assert.throws(() => specToRegex({ kind: "json_schema", source: JSON.stringify(sc) }));
      continue;
    }
    const d = new Dfa(specToRegex({ kind: "json_schema", source: JSON.stringify(sc) }));
    for (const c of candidates) {
      const x = scaled(c);
      const want = (lo === null || (loX ? x > scaled(String(lo)) : x >= scaled(String(lo)))) &&
        (hi === null || (hiX ? x < scaled(String(hi)) : x <= scaled(String(hi))));
      const st = d.walk(0, enc.encode(c));
      assert.equal(st >= 0 && d.isAccepting(st), want, `${JSON.stringify(sc)} ${c}`);
    }
  }
});

const SCHEMAS: Record<string, unknown> = {
  person: {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 10 },
      age: { type: "integer", minimum: 18, maximum: 120 },
      email: { type: "string", pattern: "[a-z]{1,5}@[a-z]{1,5}\\.com" },
      tags: { type: "array", items: { enum: ["a", "b", "c"] }, minItems: 1, maxItems: 3 },
      address: {
        type: "object",
        properties: { city: { type: "string", maxLength: 8 }, zip: { type: "integer" } },
        required: ["city"],
        additionalProperties: false,
      },
      score: { type: "number", exclusiveMinimum: -1.5, maximum: 2.25 },
      kind: { anyOf: [{ const: "x" }, { type: "boolean" }, { type: "null" }] },
    },
    required: ["name", "age", "tags"],
    additionalProperties: false,
  },
  tree: {
    $defs: {
      node: {
        type: "object",
        properties: {
          v: { type: "integer", minimum: -5, maximum: 5 },
          kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 },
        },
        required: ["v"],
        additionalProperties: false,
      },
    },
    $ref: "#/$defs/node",
  },
};

Deno.test("grammar: random token walks over the Qwen vocabulary end in valid text", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const tj = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer.json")));
  const V = 151936, EOS = 151645;
  const cache = new GrammarCache(vocabTrie(tj, V));
  const specs: [GrammarSpec, (s: string) => string | null][] = [
    ...Object.entries(SCHEMAS).map((
      [_name, schema],
    ): [GrammarSpec, (s: string) => string | null] => [
      { kind: "json_schema", source: JSON.stringify(schema) },
      (s) => schemaProblem(JSON.parse(s), schema) ?? null,
    ]),
    [
      { kind: "regex", source: "(yes|no), [0-9]{1,4}!" },
      (s) => /^(yes|no), [0-9]{1,4}!$/.test(s) ? null : `regex mismatch ${s}`,
    ],
    [{ kind: "json_object", source: "" }, (s) => {
      const v = JSON.parse(s);
      return v && typeof v === "object" && !Array.isArray(v) ? null : "not an object";
    }],
    [{ kind: "ebnf", source: ARITH_EBNF }, (s) => isArith(s) ? null : `not arithmetic: ${s}`],
    [{ kind: "ebnf", source: LIST_EBNF }, (s) => isList(s) ? null : `not a list: ${s}`],
  ];
  const mask = new Int32Array(Math.ceil(V / 32));
  let seed = 1;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (const [spec, check] of specs) {
    const g = cache.get(spec);
    let completed = 0;
    for (let walk = 0; walk < 6; walk++) {
      const m = new Matcher(g, [EOS]);
      let text = "", done = false;
      for (let step = 0; step < 400 && !done; step++) {
        m.fillMask(mask);
        const allowed: number[] = [];
        for (let t = 0; t < V; t++) if (mask[t >> 5] & (1 << (t & 31))) allowed.push(t);
        assert.ok(allowed.length > 0, `no token allowed after ${JSON.stringify(text)}`);
        // Prefer the stop token now and then, so walks of unbounded grammars end.
        const t = allowed.includes(EOS) && rnd() < 0.3
          ? EOS
          : allowed[Math.floor(rnd() * allowed.length)];
        if (t === EOS) done = true;
        else text += dec.decode(g.trie.tokens[t]!, { stream: true });
        m.accept(t);
      }
      if (!done) continue; // ran long: nothing to check (bounded grammars end well before)
      completed++;
      assert.equal(check(text), null, `${spec.kind} ${spec.source.slice(0, 40)}: ${text}`);
    }
    assert.ok(completed >= 3, `${spec.kind}: only ${completed} of 6 walks ended`);
  }
});

Deno.test("grammar: string-chain masks equal a token-by-token check of every state", async () => {
  const { tokenizer: tj } = await bundledTokenizerFiles("qwen3");
  const V = 151936;
  const trie = vocabTrie(tj, V);
  const specs: GrammarSpec[] = [
    { kind: "json_schema", source: JSON.stringify(SCHEMAS.person) },
    { kind: "regex", source: '"(x|[^"\\\\]){0,40}", [a-z]{2,30}' },
    { kind: "json_object", source: "" },
  ];
  for (const spec of specs) {
    const g = new GrammarCache(trie).get(spec);
    // Breadth-first over the automaton: string chains and their neighbours come early.
    const seen = new Set([0]), queue = [0];
    let checked = 0;
    while (queue.length && checked < 60) {
      const s = queue.shift()!;
      const mask = g.maskOf(s);
      for (let t = 0; t < V; t++) {
        const b = trie.tokens[t];
        const want = b !== null && b.length > 0 && g.dfa.walk(s, b) >= 0;
        const got = (mask[t >> 5] & (1 << (t & 31))) !== 0;
        if (want !== got) {
          assert.fail(`${spec.kind} state ${s}: token ${t} ${JSON.stringify(dec.decode(b!))}`);
        }
      }
      checked++;
      for (const r of g.dfa.classReps) {
        const n = g.dfa.step(s, r);
        if (n >= 0 && !seen.has(n)) (seen.add(n), queue.push(n));
      }
    }
    assert.ok(
      g.builds.chain > 10 && g.builds.full > 3,
      `${spec.kind}: ${JSON.stringify(g.builds)}`,
    );
  }
});

Deno.test("grammar cache: least recently used grammars dropped past the count or the mask bytes", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const tj = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer.json")));
  const trie = vocabTrie(tj, 151936);
  const a: GrammarSpec = { kind: "regex", source: "[a-z]{1,8}(,[0-9]{1,3})*" };
  const b: GrammarSpec = { kind: "regex", source: "(yes|no)" };
  const c: GrammarSpec = { kind: "regex", source: "[0-9]+" };

  // Within both bounds: the same compiled grammar comes back.
  const roomy = new GrammarCache(trie);
  const ga = roomy.get(a);
  ga.maskOf(0);
  roomy.get(b);
  assert.equal(roomy.get(a), ga);

  // Past the byte budget: the grammar whose masks were built goes when the next comes in.
  const tight = new GrammarCache(trie, 64, 1);
  const ta = tight.get(a);
  assert.equal(tight.get(a), ta, "a grammar with no masks yet stays");
  ta.maskOf(0);
  assert.ok(ta.slabBytes > 0);
  tight.get(b);
  assert.equal(tight.size, 1);
  assert.notEqual(tight.get(a), ta, "recompiled after it was dropped");

  // Past the count: the least recently used goes.
  const two = new GrammarCache(trie, 2);
  const g1 = two.get(a), g2 = two.get(b);
  two.get(a); // a is now the most recent
  two.get(c);
  assert.equal(two.size, 2);
  assert.equal(two.get(a), g1);
  assert.notEqual(two.get(b), g2);
});
