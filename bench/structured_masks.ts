/**
 * Token-mask cost on the CPU, without a model: the real Qwen3 vocabulary (151,936 ids, the
 * bundled tokenizer), the nested schema of bench/person_schema.ts, and `--walks` valid JSON
 * documents sampled by drawing a random allowed token under the mask at each step (seeded;
 * the stop token taken with probability 1/2 once allowed; a stop is never forced, so each
 * document is as long as the schema's bounds make it). The walks run in lockstep, a
 * batch of `--batch` at a time, each batch on a fresh compiled grammar so first-reach mask
 * builds are counted as a server that has just seen the schema pays them; a last batch
 * re-runs on the warm grammar.
 *
 * Reported: vocabulary trie build, compile time per schema (the bench schema and the test
 * schemas), mask time per token (accept + fillMask, as the worker does per row: p50, p99,
 * max, mean, cold and warm), the mask time of one batch step (all rows), and the masks built
 * (string chains and full trie walks) with their mean build time.
 *
 *   deno task bench structured_masks [--walks 128] [--batch 64] [--seed 1] [--out FILE]
 */
import { parseArgs } from "node:util";
import { bundledTokenizerFiles } from "../src/model/presets.ts";
import { CompiledGrammar, type GrammarSpec, Matcher, stringRuns } from "../src/grammar/grammar.ts";
import { vocabTrie } from "../src/grammar/vocab.ts";
import { appendResult } from "./results.ts";
import { PERSON_SCHEMA } from "./person_schema.ts";
import { markdownTable, mean, percentile, seededRandom } from "./common.ts";

const { values: a } = parseArgs({
  options: {
    walks: { type: "string", default: "128" },
    batch: { type: "string", default: "64" },
    seed: { type: "string", default: "1" },
    "max-steps": { type: "string", default: "600" },
    out: { type: "string" },
  },
  strict: true,
});
const walks = Number(a.walks), B = Number(a.batch), maxSteps = Number(a["max-steps"]);
const V = 151936; // Qwen3-0.6B's logits width (the vocabulary padded)
const STOPS = [151645, 151643]; // <|im_end|>, <|endoftext|>

/** The CPU's model name (the record's card). */
function cpuName(): string {
  try {
    const m = /model name\s*:\s*(.+)/.exec(Deno.readTextFileSync("/proc/cpuinfo"));
    if (m) return m[1].trim();
  } catch {
    // not Linux
  }
  return `${Deno.build.arch} cpu`;
}

const { tokenizer: tj } = await bundledTokenizerFiles("qwen3");
const t0 = performance.now();
const trie = vocabTrie(tj, V);
stringRuns(trie);
const trieMs = performance.now() - t0;

// Compile time per schema: the bench schema and a few shapes from the tests.
const SCHEMAS: Record<string, unknown> = {
  person: PERSON_SCHEMA,
  tree: {
    $defs: {
      node: {
        type: "object",
        properties: {
          v: { type: "integer", minimum: -5, maximum: 5 },
          kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 },
        },
        required: ["v"],
      },
    },
    $ref: "#/$defs/node",
  },
  json_object: null,
};
const spec = (name: string): GrammarSpec =>
  name === "json_object"
    ? { kind: "json_object", source: "" }
    : { kind: "json_schema", source: JSON.stringify(SCHEMAS[name]) };
const compileRows: Record<string, unknown>[] = [];
for (const name of Object.keys(SCHEMAS)) {
  const times: number[] = [];
  let g: CompiledGrammar | null = null;
  for (let k = 0; k < 5; k++) {
    const t = performance.now();
    g = new CompiledGrammar(spec(name), trie);
    times.push(performance.now() - t);
  }
  compileRows.push({ schema: name, compile_ms: percentile(times, 50), nfa_states: g!.dfa.nfaSize });
}

const dec = new TextDecoder();
const W = Math.ceil(V / 32);

/** A random set bit of `mask` (uniform over the allowed tokens), or -1. */
function randomAllowed(mask: Int32Array, rand: () => number): number {
  let n = 0;
  for (let w = 0; w < W; w++) {
    let x = mask[w];
    // popcount
    x = x - ((x >>> 1) & 0x55555555);
    x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
    n += Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
  }
  if (n === 0) return -1;
  let k = Math.floor(rand() * n);
  for (let w = 0; w < W; w++) {
    const x = mask[w];
    if (x === 0) continue;
    for (let b = 0; b < 32; b++) {
      if (x & (1 << b) && k-- === 0) return w * 32 + b;
    }
  }
  return -1;
}

interface BatchStats {
  perToken: number[]; // ms per row-step (fillMask + accept)
  perStep: number[]; // ms per batch step (all live rows)
  tokens: number;
  valid: number;
  docs: number;
  masksBuilt: number;
  buildMs: number;
  /** Masks built as string chains and by full walks: [count, ms]. */
  chain: [number, number];
  full: [number, number];
}

/** `n` walks in lockstep on grammar `g` (seeds from `seed0`). */
function runBatch(g: CompiledGrammar, n: number, seed0: number): BatchStats {
  const builtBefore = g.cachedMasks, buildBefore = g.maskSeconds, kinds0 = { ...g.builds };
  const rows = Array.from({ length: n }, (_, k) => ({
    m: new Matcher(g, STOPS),
    rand: seededRandom(seed0 + k),
    bytes: [] as number[],
    done: false,
  }));
  const masks = Array.from({ length: n }, () => new Int32Array(W));
  const st: BatchStats = {
    perToken: [],
    perStep: [],
    tokens: 0,
    valid: 0,
    docs: 0,
    masksBuilt: 0,
    buildMs: 0,
    chain: [0, 0],
    full: [0, 0],
  };
  for (let step = 0; step < maxSteps && rows.some((r) => !r.done); step++) {
    // Sample this step's tokens from last step's masks (outside the timing), then time the
    // worker's part: advance every row past its token and fill its next mask.
    const picks = rows.map((r, k) => {
      if (r.done) return -1;
      if (step === 0) return -2;
      const allowsStop = STOPS.some((s) => masks[k][s >> 5] & (1 << (s & 31)));
      return allowsStop && r.rand() < 0.5 ? STOPS[0] : randomAllowed(masks[k], r.rand);
    });
    let stepMs = 0;
    for (let k = 0; k < n; k++) {
      const r = rows[k], tok = picks[k];
      if (tok === -1) continue;
      if (tok >= 0 && STOPS.includes(tok)) {
        r.done = true;
        continue;
      }
      const t = performance.now();
      if (tok >= 0) r.m.accept(tok);
      r.m.fillMask(masks[k]);
      const dt = performance.now() - t;
      if (tok >= 0) r.bytes.push(...g.trie.tokens[tok]!);
      st.perToken.push(dt);
      stepMs += dt;
    }
    st.perStep.push(stepMs);
  }
  for (const r of rows) {
    if (!r.done) continue;
    st.docs++;
    try {
      JSON.parse(dec.decode(Uint8Array.from(r.bytes)));
      st.valid++;
    } catch {
      // counted as invalid
    }
  }
  st.tokens = st.perToken.length;
  st.masksBuilt = g.cachedMasks - builtBefore;
  st.buildMs = (g.maskSeconds - buildBefore) * 1000;
  const k = g.builds;
  st.chain = [k.chain - kinds0.chain, (k.chainSeconds - kinds0.chainSeconds) * 1000];
  st.full = [k.full - kinds0.full, (k.fullSeconds - kinds0.fullSeconds) * 1000];
  return st;
}

const person = spec("person");
const rows: Record<string, unknown>[] = [];
const cold: BatchStats[] = [];
let lastGrammar: CompiledGrammar | null = null;
for (let b = 0; b * B < walks; b++) {
  lastGrammar = new CompiledGrammar(person, trie);
  cold.push(runBatch(lastGrammar, Math.min(B, walks - b * B), Number(a.seed) + b * B));
}
const warm = runBatch(lastGrammar!, B, Number(a.seed) + 1_000_000);
const summarize = (label: string, sts: BatchStats[]) => {
  const tok = sts.flatMap((s) => s.perToken), step = sts.flatMap((s) => s.perStep);
  const built = sts.reduce((x, s) => x + s.masksBuilt, 0);
  const buildMs = sts.reduce((x, s) => x + s.buildMs, 0);
  return {
    run: label,
    docs: sts.reduce((x, s) => x + s.docs, 0),
    valid_json: sts.reduce((x, s) => x + s.valid, 0),
    tokens: tok.length,
    token_us_p50: percentile(tok, 50) * 1000,
    token_us_p99: percentile(tok, 99) * 1000,
    token_us_max: Math.max(...tok) * 1000,
    token_us_mean: mean(tok) * 1000,
    [`step${B}_ms_p50`]: percentile(step, 50),
    [`step${B}_ms_p99`]: percentile(step, 99),
    [`step${B}_ms_max`]: Math.max(...step),
    [`step${B}_ms_mean`]: mean(step),
    masks_built: built,
    build_us_per_mask: built ? buildMs * 1000 / built : 0,
    chain_builds: sts.reduce((x, s) => x + s.chain[0], 0),
    chain_build_us: 1000 * sts.reduce((x, s) => x + s.chain[1], 0) /
      Math.max(1, sts.reduce((x, s) => x + s.chain[0], 0)),
    full_builds: sts.reduce((x, s) => x + s.full[0], 0),
    full_build_us: 1000 * sts.reduce((x, s) => x + s.full[1], 0) /
      Math.max(1, sts.reduce((x, s) => x + s.full[0], 0)),
  };
};
rows.push(summarize("cold (fresh grammar per batch)", cold), summarize("warm", [warm]));

const card = cpuName();
console.log(`card: ${card}`);
console.log(
  `vocabulary trie and string runs: ${trieMs.toFixed(0)} ms, ${trie.size} nodes, ${V} ids`,
);
console.log(markdownTable(compileRows, ["schema", "compile_ms", "nfa_states"]));
console.log(markdownTable(rows, Object.keys(rows[0])));
if (a.out) {
  await appendResult(a.out, card, {
    name: "structured_masks",
    tokenizer: "qwen3",
    vocab: V,
    batch: B,
    walks,
    schema: "PERSON_SCHEMA (bench/person_schema.ts)",
    trie_build_ms: trieMs,
    compile: compileRows,
    cold: rows[0],
    warm: rows[1],
  });
}
