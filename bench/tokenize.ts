/**
 * Prompt tokenization on the CPU: the chat template plus encoding of SGLang's "random"
 * prompts (random token ids decoded to text, as bench/serving.ts sends them) with the
 * server's tokenizer, against @huggingface/tokenizers' own BPE loop on the same prompts.
 * The server pays this once per request on its HTTP thread or a tokenizer worker, so at
 * 128 prompts sent at once it bounds how soon the last one can be scheduled.
 *
 *   deno task bench tokenize --tokenizer DIR [--name qwen3] [--prompts 128]
 *     [--input-min 200] [--input-max 800] [--card NAME] [--out results.json]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { textTokenizer } from "../src/text/tokenizer_port.ts";
import { appendResult } from "./results.ts";
import {
  markdownTable,
  mean,
  percentile,
  randomPromptText,
  seededRandom,
  uniformInt,
} from "./common.ts";

const { values: a } = parseArgs({
  options: {
    tokenizer: { type: "string" },
    name: { type: "string", default: "tokenizer" },
    prompts: { type: "string", default: "128" },
    "input-min": { type: "string", default: "200" },
    "input-max": { type: "string", default: "800" },
    rounds: { type: "string", default: "3" },
    card: { type: "string", default: "cpu" },
    out: { type: "string" },
  },
  strict: true,
});
if (!a.tokenizer) throw new Error("--tokenizer DIR (a model folder) is required");
const dir = a.tokenizer;
const hf = await loadTokenizer(dir);
const server = textTokenizer(hf);
const library = new Tokenizer(
  JSON.parse(await Deno.readTextFile(join(dir, "tokenizer.json"))),
  JSON.parse(await Deno.readTextFile(join(dir, "tokenizer_config.json"))),
);

// Prompts of bench/serving.ts's random dataset (randomPromptText); every round gets its own
// (as a server sees new prompts), round 0 warms the JIT and is not counted.
const rand = seededRandom(0);
const rounds = Array.from(
  { length: Number(a.rounds) + 1 },
  () =>
    Array.from({ length: Number(a.prompts) }, () => {
      const n = uniformInt(rand, Number(a["input-min"]), Number(a["input-max"]));
      return randomPromptText(hf, rand, n);
    }),
);

/** Milliseconds per prompt of `f`, and the tokens it made, over the counted rounds. */
function time(f: (p: string) => number): { ms: number[]; tokens: number } {
  const ms: number[] = [];
  let tokens = 0;
  for (const [r, prompts] of rounds.entries()) {
    for (const p of prompts) {
      const t0 = performance.now();
      const n = f(p);
      if (r > 0) {
        ms.push(performance.now() - t0);
        tokens += n;
      }
    }
  }
  return { ms, tokens };
}

const chat = (p: string) => [{ role: "user" as const, content: p }];
const ours = time((p) => server.chatTemplate(chat(p), true, {}).length);
const theirs = time((p) =>
  library.encode(hf.applyChatTemplate(chat(p), { addGenerationPrompt: true }), {
    add_special_tokens: false,
  }).ids.length
);
if (ours.tokens !== theirs.tokens) {
  throw new Error(`token counts differ: ${ours.tokens} vs ${theirs.tokens}`);
}
const result = {
  name: "tokenize",
  model: a.name,
  prompts: Number(a.prompts),
  input_len: `U[${a["input-min"]},${a["input-max"]}]`,
  prompt_tokens_mean: ours.tokens / ours.ms.length,
  ms_per_prompt_mean: mean(ours.ms),
  ms_per_prompt_p99: percentile(ours.ms, 99),
  library_ms_per_prompt_mean: mean(theirs.ms),
  speedup: mean(theirs.ms) / mean(ours.ms),
  us_per_token: (1000 * mean(ours.ms) * ours.ms.length) / ours.tokens,
};
console.log(JSON.stringify(result));
console.log(
  markdownTable([result], [
    "model",
    "prompt_tokens_mean",
    "ms_per_prompt_mean",
    "ms_per_prompt_p99",
    "library_ms_per_prompt_mean",
    "speedup",
  ]),
);
if (a.out) await appendResult(a.out, a.card, result);
