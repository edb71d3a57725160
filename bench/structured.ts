/**
 * Structured-output speed: decode throughput with a nested JSON schema against free decoding
 * of the same lengths, at batch 1 and batch 64, through the whole engine (the grammar
 * matchers and masks in the GPU worker, overlap kept).
 *
 * Per batch size B: `rounds` rounds of B concurrent chat prompts asking for a person as
 * JSON, constrained to the schema (temperature 0.7, seed = index; each ends when its JSON
 * is complete); then the same prompts unconstrained with ignore_eos and max_tokens = the
 * length each constrained request produced, so both runs decode the same tokens per request
 * at the same batch shape. tok/s = completion tokens / wall time. After a warm-up with the
 * same schema (the worker's vocabulary trie and first masks), as a server that has seen the
 * schema once.
 *
 * Also printed: the vocabulary trie build, the schema's compile time (automaton) and the
 * per-token mask time (fill + advance) replaying the generated tokens on this thread, cold
 * (masks built on first use) and warm (cached), as the worker computes them.
 *
 *   deno task bench structured --model DIR --name qwen3-0.6b [--batches 1,64]
 *     [--max-tokens 256] [--out FILE] [engine flags: --device cpu ...]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig } from "../src/engine/config.ts";
import { defaultSamplingParams, type Engine, type SamplingParams } from "../src/engine/types.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { GrammarCache, Matcher } from "../src/grammar/grammar.ts";
import { vocabTrie } from "../src/grammar/vocab.ts";
import { appendResult } from "./results.ts";
import { PERSON_SCHEMA } from "./person_schema.ts";
import { ENGINE_FLAGS, engineOverrides, markdownTable } from "./common.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    batches: { type: "string", default: "1,64" },
    "bs1-rounds": { type: "string", default: "4" },
    "max-tokens": { type: "string", default: "256" },
    out: { type: "string" },
    ...ENGINE_FLAGS,
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");

const constraint = { kind: "json_schema" as const, source: JSON.stringify(PERSON_SCHEMA) };

const tokenizer = await loadTokenizer(a.model);
const ask = (i: number) =>
  `Invent person number ${i} for a test database and describe them as JSON with name, age, ` +
  `email, address, friends, tags and active.`;
function promptIds(i: number): number[] {
  try {
    return tokenizer.encodeChat([{ role: "user", content: ask(i) }], {
      enable_thinking: false,
    });
  } catch {
    return tokenizer.encode(ask(i));
  }
}

const maxTokens = Number(a["max-tokens"]);

interface Run {
  seconds: number;
  tokens: number[][];
  reasons: string[];
}

/** B concurrent requests; `lengths` given: unconstrained with exactly those lengths. */
async function runBatch(
  engine: Engine,
  tag: string,
  ids: number[],
  lengths: number[] | null,
): Promise<Run> {
  const t0 = performance.now();
  const tokens: number[][] = ids.map(() => []);
  const reasons: string[] = ids.map(() => "");
  await Promise.all(ids.map(async (id, k) => {
    const params: SamplingParams = {
      ...defaultSamplingParams(),
      temperature: 0.7,
      seed: id,
      maxTokens: lengths ? lengths[k] : maxTokens,
      ignoreEos: lengths !== null,
      constraint: lengths ? null : constraint,
    };
    for await (
      const ev of engine.submit({ id: `${tag}-${id}`, promptIds: promptIds(id), params })
    ) {
      tokens[k].push(...ev.tokens);
      if (ev.finish) {
        if (ev.finish.error) throw new Error(`request ${id}: ${ev.finish.error}`);
        reasons[k] = ev.finish.reason;
      }
    }
  }));
  return { seconds: (performance.now() - t0) / 1000, tokens, reasons };
}

const config = { ...defaultEngineConfig(a.model), ...engineOverrides(a) };
const engine = await startEngine(config);
const card = engine.info.deviceName;
const batches = a.batches!.split(",").map(Number);

// Warm-up: the worker builds its vocabulary trie and the schema's first masks.
const tw = performance.now();
await runBatch(engine, "warm-c", [100000, 100001], null);
await runBatch(engine, "warm-u", [100000], [16]);
console.log(
  `warm-up (trie + first masks in the worker): ${(performance.now() - tw).toFixed(0)} ms`,
);

const records: Record<string, unknown>[] = [];
const allOutputs: number[][] = [];
let tag = 0;
for (const B of batches) {
  const rounds = B === 1 ? Number(a["bs1-rounds"]) : 1;
  let cSec = 0, uSec = 0, cTok = 0, uTok = 0, valid = 0, stopped = 0, n = 0;
  for (let r = 0; r < rounds; r++) {
    const ids = Array.from({ length: B }, (_, k) => 1000 * B + r * B + k);
    const c = await runBatch(engine, `c${tag++}`, ids, null);
    const lengths = c.tokens.map((t) => Math.max(1, t.length));
    const u = await runBatch(engine, `u${tag++}`, ids, lengths);
    cSec += c.seconds;
    uSec += u.seconds;
    for (let k = 0; k < B; k++) {
      cTok += c.tokens[k].length;
      uTok += u.tokens[k].length;
      n++;
      if (c.reasons[k] === "stop") stopped++;
      allOutputs.push(c.tokens[k]);
      try {
        JSON.parse(tokenizer.decode(c.tokens[k], { skipSpecialTokens: true }));
        valid++;
      } catch {
        // Cut by max_tokens: not counted as valid.
      }
    }
  }
  const tokPerS = cTok / cSec, freePerS = uTok / uSec;
  records.push({
    name: "structured",
    model: a.name,
    batch: B,
    tok_per_s: tokPerS,
    unconstrained_tok_per_s: freePerS,
    vs_unconstrained: tokPerS / freePerS,
    device: engine.info.backend,
    device_name: card,
    requests: n,
    mean_output_tokens: cTok / n,
    finished_stop: stopped / n,
    valid_json: valid / n,
    temperature: 0.7,
    schema: "PERSON_SCHEMA (bench/person_schema.ts)",
  });
}
await engine.shutdown();

// Mask costs on this thread, replaying the generated tokens through a fresh grammar.
const tj = JSON.parse(await Deno.readTextFile(join(a.model, "tokenizer.json")));
let t0 = performance.now();
const trie = vocabTrie(tj, engine.info.vocabSize);
const trieMs = performance.now() - t0;
t0 = performance.now();
const grammar = new GrammarCache(trie).get(constraint);
const compileMs = performance.now() - t0;
const mask = new Int32Array(grammar.words);
const stops = engine.info.eosTokenIds;
const replay = () => {
  let steps = 0;
  const t = performance.now();
  for (const seq of allOutputs) {
    const m = new Matcher(grammar, stops);
    for (const tok of seq) {
      m.fillMask(mask);
      m.accept(tok);
      steps++;
    }
  }
  return { us: (performance.now() - t) * 1000 / Math.max(1, steps), steps };
};
const cold = replay(), warm = replay();
const masks = {
  trie_build_ms: trieMs,
  trie_nodes: trie.size,
  schema_compile_ms: compileMs,
  nfa_states: grammar.dfa.nfaSize,
  dfa_states_reached: grammar.dfa.size,
  masks_built: grammar.cachedMasks,
  mask_build_ms_total: grammar.maskSeconds * 1000,
  mask_build_ms_per_state: grammar.maskSeconds * 1000 / Math.max(1, grammar.cachedMasks),
  per_token_mask_us_cold: cold.us,
  per_token_mask_us_warm: warm.us,
  replayed_tokens: cold.steps,
};
console.log(
  `mask costs: trie ${trieMs.toFixed(0)} ms (${trie.size} nodes); schema compile ` +
    `${compileMs.toFixed(1)} ms; ${grammar.cachedMasks} masks built in ` +
    `${(grammar.maskSeconds * 1000).toFixed(0)} ms ` +
    `(${masks.mask_build_ms_per_state.toFixed(2)} ms/state); per token ` +
    `${cold.us.toFixed(1)} us cold, ${warm.us.toFixed(1)} us warm (fill + advance)`,
);
for (const r of records) Object.assign(r, { note: masks });
console.log(markdownTable(records, [
  "model",
  "device_name",
  "batch",
  "tok_per_s",
  "unconstrained_tok_per_s",
  "vs_unconstrained",
  "valid_json",
]));
for (const r of records) {
  console.log(JSON.stringify(r));
  if (a.out) await appendResult(a.out, card, r);
}
