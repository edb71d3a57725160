/**
 * Time to first token through the engine (scheduler, GPU worker, prefill, sampling, the
 * event back on the main thread) on an otherwise empty engine: one request at a time, each
 * with fresh random ids so that the radix cache never helps; the median of --repeats.
 *
 *   deno task bench ttft --model DIR --name qwen3-0.6b [--lengths 32,8192] [--repeats 5]
 *     [--out results.json] [engine flags]
 */
import { parseArgs } from "node:util";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig } from "../src/engine/config.ts";
import { defaultSamplingParams } from "../src/engine/types.ts";
import { appendResult } from "./results.ts";
import {
  ENGINE_FLAGS,
  engineOverrides,
  markdownTable,
  percentile,
  seededRandom,
} from "./common.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    lengths: { type: "string", default: "32,8192" },
    repeats: { type: "string", default: "5" },
    out: { type: "string" },
    ...ENGINE_FLAGS,
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");
const lengths = a.lengths!.split(",").map(Number);
const config = { ...defaultEngineConfig(a.model), ...engineOverrides(a) };
config.maxPrefillLength = Math.max(config.maxPrefillLength, ...lengths);
const engine = await startEngine(config);
const card = engine.info.deviceName;
const rand = seededRandom(12345);
const idRange = Math.min(10000, engine.info.vocabSize);

/** Milliseconds from submit to the first token event of one fresh prompt of `len` ids. */
async function once(len: number, tag: string): Promise<number> {
  const promptIds = Array.from({ length: len }, () => Math.floor(rand() * idRange));
  const params = { ...defaultSamplingParams(), temperature: 0, ignoreEos: true, maxTokens: 1 };
  const t0 = performance.now();
  let ms = NaN;
  for await (const ev of engine.submit({ id: tag, promptIds, params })) {
    if (Number.isNaN(ms) && ev.tokens.length) ms = performance.now() - t0;
    if (ev.finish?.error) throw new Error(ev.finish.error);
  }
  return ms;
}

const perLen: Record<number, number[]> = {};
for (const len of lengths) {
  await once(len, `warm-${len}`); // first use of this prefill shape
  perLen[len] = [];
  for (let i = 0; i < Number(a.repeats); i++) perLen[len].push(await once(len, `t-${len}-${i}`));
}
await engine.shutdown();

const rows = lengths.map((len) => ({
  prompt_tokens: len,
  ttft_ms_median: percentile(perLen[len], 50),
  ttft_ms_min: Math.min(...perLen[len]),
  ttft_ms_max: Math.max(...perLen[len]),
}));
console.log(markdownTable(rows, ["prompt_tokens", "ttft_ms_median", "ttft_ms_min", "ttft_ms_max"]));
const record: Record<string, unknown> = {
  name: "ttft",
  model: a.name,
  device_name: card,
  repeats: Number(a.repeats),
  page_size: config.pageSize,
  attn: config.attn,
};
for (const r of rows) {
  const key = r.prompt_tokens >= 1000 ? `${Math.round(r.prompt_tokens / 1024)}k` : r.prompt_tokens;
  record[`ttft_${key}_ms`] = r.ttft_ms_median;
}
record.per_length = rows;
console.log(JSON.stringify(record));
if (a.out) await appendResult(a.out, card, record);
