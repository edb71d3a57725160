/**
 * Offline throughput through the whole engine (scheduler worker, GPU worker, radix cache,
 * overlap loop, CUDA graphs), as SGLang's bench_offline_throughput measures it: N requests
 * of random token ids submitted at once, each generating exactly --output tokens.
 *
 *   deno run -A bench/throughput.ts --model DIR --name qwen3-0.6b [--device cuda]
 *     [--prompts 256] [--input 512] [--output 256] [--out results.json]
 */
import { parseArgs } from "node:util";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig } from "../src/engine/config.ts";
import { defaultSamplingParams } from "../src/engine/types.ts";
import { appendResult } from "./results.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    device: { type: "string", default: "cuda" },
    prompts: { type: "string", default: "256" },
    input: { type: "string", default: "512" },
    output: { type: "string", default: "256" },
    "page-size": { type: "string", default: "16" },
    out: { type: "string" },
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");
const N = Number(a.prompts), IN = Number(a.input), OUT = Number(a.output);
const engine = await startEngine({
  ...defaultEngineConfig(a.model),
  device: a.device as "cpu" | "cuda",
  pageSize: Number(a["page-size"]),
  cudaGraphMaxBs: a.device === "cuda" ? -1 : 0,
});
const V = engine.info.vocabSize;
let s = 7;
const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
const prompts = Array.from({ length: N }, () => Array.from({ length: IN }, () => rand() % V));
const params = { ...defaultSamplingParams(), temperature: 0, ignoreEos: true, maxTokens: OUT };

async function runAll(): Promise<{ seconds: number; generated: number; ttft: number[] }> {
  const t0 = performance.now();
  const ttft: number[] = [];
  const counts = await Promise.all(prompts.map(async (p, i) => {
    let n = 0;
    for await (const ev of engine.submit({ id: `r${i}-${t0}`, promptIds: p, params })) {
      if (n === 0 && ev.tokens.length) ttft.push((performance.now() - t0) / 1000);
      n += ev.tokens.length;
      if (ev.finish?.error) throw new Error(ev.finish.error);
    }
    return n;
  }));
  return {
    seconds: (performance.now() - t0) / 1000,
    generated: counts.reduce((x, y) => x + y, 0),
    ttft,
  };
}

// Warm-up with a few requests, then the measured run on a fresh prefix (new random ids).
const warm = prompts.splice(0, Math.min(8, N));
await Promise.all(warm.map(async (p, i) => {
  for await (
    const _ of engine.submit({ id: `w${i}`, promptIds: p, params: { ...params, maxTokens: 8 } })
  );
}));
prompts.push(
  ...Array.from({ length: warm.length }, () => Array.from({ length: IN }, () => rand() % V)),
);
const r = await runAll();
const expected = N * OUT;
const record = {
  name: "offline_throughput",
  model: a.name,
  device: engine.info.backend,
  device_name: engine.info.deviceName,
  prompts: N,
  input_len: IN,
  output_len: OUT,
  all_completed: r.generated === expected,
  output_tok_per_s: r.generated / r.seconds,
  total_tok_per_s: (r.generated + N * IN) / r.seconds,
  seconds: r.seconds,
  median_ttft_s: r.ttft.sort((x, y) => x - y)[r.ttft.length >> 1],
};
console.log(JSON.stringify(record));
if (a.out) await appendResult(a.out, engine.info.deviceName, record);
await engine.shutdown();
