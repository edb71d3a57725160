/**
 * Online serving load generator, after SGLang's bench_serving: streaming chat completions
 * against an OpenAI-compatible server, requests arriving as a Poisson process at each
 * --rates value (inf = all at once) or under a fixed --concurrency cap; random prompts or
 * shared-prefix groups. Reports time to first token, inter-token latency (gaps between
 * streamed chunks) and end-to-end latency at p50/p90/p99, and throughput.
 *
 * Either against a running server (--url) or one this script starts with the flags given
 * after `--` (main.ts, --port 0) and stops at the end.
 *
 *   deno task bench serving --tokenizer DIR --name qwen3-0.6b --num-prompts 128
 *     --input-min 200 --input-max 800 --output-len 256 --concurrency 128 [--rates inf,16,32]
 *     [--dataset random|shared-prefix] [--out results.json] -- --model DIR [server flags]
 */
import { parseArgs } from "node:util";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { appendResult } from "./results.ts";
import {
  markdownTable,
  mean,
  percentile,
  plotPath,
  randomPromptText,
  seededRandom,
  svgLinePlot,
  uniformInt,
} from "./common.ts";
import { type ServeHandle, startServer } from "./serve_process.ts";

const { values: a, positionals: serveFlags } = parseArgs({
  options: {
    url: { type: "string" },
    tokenizer: { type: "string" },
    name: { type: "string", default: "model" },
    "served-model": { type: "string" },
    card: { type: "string" },
    dataset: { type: "string", default: "random" },
    "num-prompts": { type: "string", default: "128" },
    "input-min": { type: "string", default: "200" },
    "input-max": { type: "string", default: "800" },
    "output-len": { type: "string", default: "256" },
    "prefix-len": { type: "string", default: "1024" },
    groups: { type: "string", default: "8" },
    rates: { type: "string", default: "inf" },
    concurrency: { type: "string", default: "0" },
    seed: { type: "string", default: "0" },
    warmup: { type: "string", default: "4" },
    plot: { type: "boolean", default: false },
    out: { type: "string" },
  },
  strict: true,
  allowPositionals: true,
});
if (!a.url === !serveFlags.length) throw new Error("give --url, or server flags after --");
if (!a.tokenizer) throw new Error("--tokenizer DIR (the model folder) is required");
const tok = await loadTokenizer(a.tokenizer);
let server: ServeHandle | null = null;
if (serveFlags.length) server = await startServer(serveFlags);
const base = (a.url ?? server!.url).replace(/\/+$/, "");

try {
  const modelsRes = await fetch(`${base}/v1/models`);
  const models = await modelsRes.json();
  const model = a["served-model"] ?? models.data?.[0]?.id ?? "default";
  const card = a.card ?? await cardName(serveFlags.join(" "));
  const n = Number(a["num-prompts"]);
  const concurrency = Number(a.concurrency);
  const rates = a.rates!.split(",").map((r) => r === "inf" ? Infinity : Number(r));

  // Warm-up: a few short requests, not measured.
  await Promise.all(
    makePrompts(Number(a.warmup), 1000).map((p) => oneRequest(base, model, p, 8)),
  );
  const rows: Record<string, unknown>[] = [];
  for (const [i, rate] of rates.entries()) {
    // Each rate gets prompts of its own (the same distribution, the next seed), so that no run
    // finds the previous run's prompts in the prefix cache.
    const prompts = makePrompts(n, i);
    const r = await runOnce(base, model, prompts, rate, concurrency);
    const rec = {
      name: "serving",
      model: a.name,
      device_name: card,
      dataset: a.dataset,
      request_rate: Number.isFinite(rate) ? rate : "inf",
      concurrency: concurrency || prompts.length,
      num_prompts: prompts.length,
      input_len: a.dataset === "random"
        ? `U[${a["input-min"]},${a["input-max"]}]`
        : `${a["prefix-len"]} shared + U[${a["input-min"]},${a["input-max"]}]`,
      output_len: Number(a["output-len"]),
      ...r,
    };
    rows.push(rec);
    console.log(JSON.stringify(rec));
    if (a.out) await appendResult(a.out, card, rec);
  }
  console.log(markdownTable(rows, [
    "request_rate",
    "concurrency",
    "completed",
    "output_tok_per_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
  ]));
  if (a.plot && rows.length > 1) {
    const pts = (k: string) =>
      rows.filter((r) => typeof r.request_rate === "number").map((
        r,
      ) => [r.request_rate as number, r[k] as number] as [number, number]);
    const path = plotPath(a.out, `serving-${a.name}`);
    await Deno.writeTextFile(
      path,
      svgLinePlot(`serving ${a.name} on ${card}`, "request rate (req/s)", "ms", [
        { label: "TTFT p99", points: pts("ttft_p99_ms") },
        { label: "ITL p99", points: pts("itl_p99_ms") },
      ]),
    );
    console.log(`plot: ${path}`);
  }
} finally {
  await server?.stop();
}

/** The card the server runs on: "CPU" for --device cpu, else nvidia-smi's first GPU. */
async function cardName(serveFlags: string): Promise<string> {
  if (/--device[ =]cpu/.test(serveFlags)) return "CPU";
  try {
    const r = await new Deno.Command("nvidia-smi", {
      args: ["--query-gpu=name", "--format=csv,noheader"],
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(r.stdout).split("\n")[0].trim() || "unknown";
  } catch {
    return "unknown";
  }
}

/** Prompt texts: random token ids decoded to text and cut to the drawn length (SGLang's
 *  "random" dataset), or `groups` shared prefixes each followed by unique random text. */
function makePrompts(n: number, seedOffset: number): string[] {
  const rand = seededRandom(Number(a.seed) + seedOffset);
  const text = (n: number) => randomPromptText(tok, rand, n);
  const len = () => uniformInt(rand, Number(a["input-min"]), Number(a["input-max"]));
  if (a.dataset === "random") return Array.from({ length: n }, () => text(len()));
  if (a.dataset !== "shared-prefix") throw new Error(`unknown --dataset ${a.dataset}`);
  const groups = Array.from({ length: Number(a.groups) }, () => text(Number(a["prefix-len"])));
  return Array.from({ length: n }, (_, i) => groups[i % groups.length] + text(len()));
}

interface RequestResult {
  ok: boolean;
  error?: string;
  ttftMs: number;
  e2eMs: number;
  /** Gaps between content chunks after the first, ms. */
  itlMs: number[];
  promptTokens: number;
  outputTokens: number;
}

/** One streaming chat completion; times every content chunk. */
async function oneRequest(
  url: string,
  model: string,
  prompt: string,
  maxTokens: number,
): Promise<RequestResult> {
  const t0 = performance.now();
  const res: RequestResult = {
    ok: false,
    ttftMs: NaN,
    e2eMs: NaN,
    itlMs: [],
    promptTokens: 0,
    outputTokens: 0,
  };
  try {
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: prompt }],
        max_tokens: maxTokens,
        temperature: 0,
        ignore_eos: true,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
    let last = NaN, buf = "", chunks = 0;
    for await (const piece of r.body.pipeThrough(new TextDecoderStream())) {
      buf += piece;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const j = JSON.parse(data);
        if (j.error) throw new Error(JSON.stringify(j.error));
        if (j.usage) {
          res.promptTokens = j.usage.prompt_tokens;
          res.outputTokens = j.usage.completion_tokens;
        }
        const content = j.choices?.[0]?.delta?.content;
        if (content) {
          const now = performance.now();
          if (chunks === 0) res.ttftMs = now - t0;
          else res.itlMs.push(now - last);
          last = now;
          chunks++;
        }
      }
    }
    res.e2eMs = performance.now() - t0;
    res.ok = chunks > 0;
    if (!res.ok) res.error = "no content";
  } catch (e) {
    res.error = (e as Error).message;
  }
  return res;
}

/** Sends every prompt (Poisson arrivals at `rate`, at most `concurrency` in flight when
 *  > 0) and summarizes the results. */
async function runOnce(
  url: string,
  model: string,
  prompts: string[],
  rate: number,
  concurrency: number,
) {
  const rand = seededRandom(Number(a.seed) + 17);
  const out = Number(a["output-len"]);
  let inFlight = 0, done = 0;
  const waiters: (() => void)[] = [];
  const bar = progressBar(prompts.length);
  const t0 = performance.now();
  const tasks: Promise<RequestResult>[] = [];
  for (const p of prompts) {
    if (concurrency > 0) {
      while (inFlight >= concurrency) await new Promise<void>((r) => waiters.push(r));
    }
    inFlight++;
    tasks.push(
      oneRequest(url, model, p, out).then((res) => {
        inFlight--;
        waiters.shift()?.();
        bar(++done);
        return res;
      }),
    );
    if (Number.isFinite(rate)) {
      await new Promise((r) => setTimeout(r, (-Math.log(1 - rand()) / rate) * 1000));
    }
  }
  const results = await Promise.all(tasks);
  const seconds = (performance.now() - t0) / 1000;
  const ok = results.filter((r) => r.ok);
  const failed = results.filter((r) => !r.ok);
  if (failed.length) console.error(`${failed.length} failed, first: ${failed[0].error}`);
  const ttft = ok.map((r) => r.ttftMs), e2e = ok.map((r) => r.e2eMs);
  const itl = ok.flatMap((r) => r.itlMs);
  const outTok = ok.reduce((s, r) => s + r.outputTokens, 0);
  const inTok = ok.reduce((s, r) => s + r.promptTokens, 0);
  const q = (xs: number[], p: number) => percentile(xs, p);
  return {
    completed: ok.length,
    failed: failed.length,
    duration_s: seconds,
    request_throughput: ok.length / seconds,
    output_tok_per_s: outTok / seconds,
    total_tok_per_s: (outTok + inTok) / seconds,
    prompt_tokens_mean: inTok / (ok.length || 1),
    output_tokens_mean: outTok / (ok.length || 1),
    ttft_mean_ms: mean(ttft),
    ttft_p50_ms: q(ttft, 50),
    ttft_p90_ms: q(ttft, 90),
    ttft_p99_ms: q(ttft, 99),
    itl_mean_ms: mean(itl),
    itl_p50_ms: q(itl, 50),
    itl_p90_ms: q(itl, 90),
    itl_p99_ms: q(itl, 99),
    e2e_mean_ms: mean(e2e),
    e2e_p50_ms: q(e2e, 50),
    e2e_p90_ms: q(e2e, 90),
    e2e_p99_ms: q(e2e, 99),
  };
}

/** A one-line progress bar on stderr (redrawn in place on a terminal). */
function progressBar(total: number): (done: number) => void {
  const enc = new TextEncoder();
  const tty = Deno.stderr.isTerminal();
  let lastPct = -1;
  return (done: number) => {
    const pct = Math.floor((100 * done) / total);
    if (pct === lastPct || (!tty && pct % 10 !== 0 && done !== total)) return;
    lastPct = pct;
    const w = 30, fill = Math.round((w * done) / total);
    const line = `[${"#".repeat(fill)}${".".repeat(w - fill)}] ${done}/${total}`;
    Deno.stderr.writeSync(enc.encode(tty ? `\r${line}${done === total ? "\n" : ""}` : `${line}\n`));
  };
}
