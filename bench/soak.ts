/**
 * Soak test of the HTTP server: a bounded mix of valid, invalid, aborted and slow-reading
 * clients against `main.ts` on loopback for --minutes, reporting requests by outcome, 5xx
 * answers, the server's RSS over time and the KV pages still in use at the end (after the
 * last client is gone, that must be 0: no leaked request).
 *
 *   deno task bench soak [--model DIR] [--minutes 5] [--requests N] [--concurrency 16]
 *     [--device cpu] [--num-pages 32768] [--card NAME] [--out bench/results/soak.json]
 *
 * The KV pool is small on purpose (--num-pages): the prefix cache fills it within the
 * first few hundred requests and evicts from then on. With a pool of gigabytes, RSS would
 * keep rising as the cache touches fresh pool pages for the first time, which says
 * nothing about leaks.
 *
 * Without --model it runs the server's default tiny model (random weights). The run stops at
 * --minutes or after --requests, whichever comes first.
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { appendResult } from "./results.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    minutes: { type: "string", default: "5" },
    requests: { type: "string", default: "0" },
    concurrency: { type: "string", default: "16" },
    device: { type: "string", default: "cpu" },
    "num-pages": { type: "string", default: "32768" },
    card: { type: "string", default: "cpu" },
    out: { type: "string" },
  },
  strict: true,
});

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const model = a.model ?? "default";
const minutes = Number(a.minutes), maxRequests = Number(a.requests) || Infinity;
const concurrency = Number(a.concurrency);

// --- the server -------------------------------------------------------------------------
const child = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    join(ROOT, "main.ts"),
    ...(a.model ? ["--model", a.model] : []),
    "--device",
    a.device,
    "--port",
    "0",
    "--cpu-threads",
    "1",
    "--num-pages",
    a["num-pages"],
  ],
  stdout: "piped",
  stderr: "piped",
}).spawn();
let serverLog = "";
(async () => {
  for await (const c of child.stderr.pipeThrough(new TextDecoderStream())) serverLog += c;
})();
const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
let out = "";
while (!/listening on (\S+)/.test(out)) {
  const { done, value } = await reader.read();
  if (done) throw new Error(`server exited: ${serverLog}`);
  out += value;
}
const url = out.match(/listening on (\S+)/)![1];
(async () => {
  while (!(await reader.read()).done) { /* drain */ }
})();

/** Resident set size of the server process in MiB (workers are threads of it). */
function rssMiB(): number {
  const status = Deno.readTextFileSync(`/proc/${child.pid}/status`);
  return Number(status.match(/^VmRSS:\s+(\d+) kB/m)![1]) / 1024;
}

// --- the clients ------------------------------------------------------------------------
let seed = 12345;
const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];

type Kind = "valid" | "stream" | "chat" | "invalid" | "aborted" | "slow";
const MIX: [Kind, number][] = [
  ["valid", 0.35],
  ["stream", 0.15],
  ["chat", 0.1],
  ["invalid", 0.25],
  ["aborted", 0.1],
  ["slow", 0.05],
];

const deep = (n: number): unknown => (n === 0 ? [1] : [deep(n - 1)]);
/** Client mistakes, each must get a 4xx. */
const INVALID: (() => { path: string; body: string })[] = [
  () => ({ path: "/v1/completions", body: "{not json" }),
  () => ({ path: "/v1/completions", body: JSON.stringify({ prompt: "x", max_tokens: -1 }) }),
  () => ({ path: "/v1/completions", body: JSON.stringify({ prompt: "x", temperature: "hot" }) }),
  () => ({ path: "/v1/completions", body: JSON.stringify({ prompt: "x", model: "nope" }) }),
  () => ({ path: "/v1/completions", body: JSON.stringify({ prompt: [10 ** 9] }) }),
  () => ({ path: "/v1/completions", body: JSON.stringify({ prompt: "x", max_tokens: 10 ** 6 }) }),
  () => ({ path: "/v1/chat/completions", body: JSON.stringify({ messages: "hi" }) }),
  () => ({ path: "/v1/chat/completions", body: JSON.stringify({ messages: [{ role: "x" }] }) }),
  () => ({ path: "/v1/completions", body: JSON.stringify({ prompt: deep(5000) }) }),
  () => ({ path: "/tokenize", body: JSON.stringify({ prompt: 5 }) }),
  () => ({ path: "/detokenize", body: JSON.stringify({ tokens: [-1] }) }),
  () => ({ path: "/v1/nothing", body: "{}" }),
];

const counts: Record<string, number> = {};
const count = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);
let done = 0, fiveXX = 0, fiveXXClientFault = 0;
const samples: { requests: number; seconds: number; rssMiB: number }[] = [];
let rssAt1000 = null as number | null;

const post = (path: string, body: string, signal?: AbortSignal) =>
  fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
    signal,
  });

async function one(kind: Kind): Promise<string> {
  const prompt = `soak ${Math.floor(rand() * 1000)} ` + "word ".repeat(Math.floor(rand() * 40));
  const max = 1 + Math.floor(rand() * 12);
  switch (kind) {
    case "valid": {
      const r = await post("/v1/completions", JSON.stringify({ prompt, max_tokens: max }));
      await r.text();
      return String(r.status);
    }
    case "chat": {
      const r = await post(
        "/v1/chat/completions",
        JSON.stringify({ messages: [{ role: "user", content: prompt }], max_tokens: max }),
      );
      await r.text();
      return String(r.status);
    }
    case "stream":
    case "slow": {
      const r = await post(
        "/v1/completions",
        JSON.stringify({ prompt, max_tokens: kind === "slow" ? 16 : max, stream: true }),
      );
      if (!r.body) return String(r.status);
      const rd = r.body.getReader();
      let text = "";
      for (;;) {
        const { done, value } = await rd.read();
        if (done) break;
        text += new TextDecoder().decode(value);
        if (kind === "slow") await new Promise((res) => setTimeout(res, 30 + rand() * 70));
      }
      return r.status === 200 && !text.endsWith("data: [DONE]\n\n")
        ? "truncated"
        : String(r.status);
    }
    case "aborted": {
      const ctl = new AbortController();
      const t = setTimeout(() => ctl.abort(), 5 + rand() * 100);
      try {
        const r = await post(
          "/v1/completions",
          JSON.stringify({ prompt, max_tokens: 64, stream: rand() < 0.5, ignore_eos: true }),
          ctl.signal,
        );
        await r.text();
        return `${r.status}`;
      } catch {
        return "aborted";
      } finally {
        clearTimeout(t);
      }
    }
    case "invalid": {
      const { path, body } = pick(INVALID)();
      const r = await post(path, body);
      await r.text();
      if (r.status >= 500) fiveXXClientFault++;
      return r.status >= 400 && r.status < 500 ? "4xx" : String(r.status);
    }
  }
}

function kindOf(): Kind {
  let x = rand();
  for (const [k, w] of MIX) {
    if ((x -= w) < 0) return k;
  }
  return "valid";
}

const t0 = performance.now();
const deadline = t0 + minutes * 60_000;
const sampler = setInterval(() => {
  samples.push({ requests: done, seconds: (performance.now() - t0) / 1000, rssMiB: rssMiB() });
}, 5_000);
await Promise.all(Array.from({ length: concurrency }, async () => {
  while (performance.now() < deadline && done < maxRequests) {
    const kind = kindOf();
    let outcome: string;
    try {
      outcome = await one(kind);
    } catch (e) {
      outcome = `network error (${(e as Error).message.slice(0, 40)})`;
    }
    if (/^5\d\d$/.test(outcome)) fiveXX++;
    count(`${kind}: ${outcome}`);
    done++;
    if (done === 1000) rssAt1000 = rssMiB();
  }
}));
clearInterval(sampler);
const seconds = (performance.now() - t0) / 1000;
// Aborted requests leave the engine within a step or two; give them a moment.
await new Promise((r) => setTimeout(r, 2_000));
const metrics = await (await fetch(`${url}/metrics`)).text();
const gauge = (name: string) => Number(metrics.match(new RegExp(`^${name} (\\S+)$`, "m"))![1]);
const rssEnd = rssMiB();
child.kill("SIGTERM");
const status = await child.status;

const result = {
  benchmark: "soak",
  model,
  device: a.device,
  concurrency,
  seconds: Math.round(seconds),
  requests: done,
  requestsPerSecond: Number((done / seconds).toFixed(1)),
  outcomes: Object.fromEntries(Object.entries(counts).sort()),
  fiveXX,
  fiveXXForClientFaults: fiveXXClientFault,
  kvPagesInUseAtEnd: gauge("minisgl_kv_pages_in_use"),
  kvPagesCachedAtEnd: gauge("minisgl_kv_pages_cached"),
  kvPagesTotal: gauge("minisgl_kv_pages_total"),
  requestsRunningAtEnd: gauge("minisgl_num_requests_running"),
  requestsInFlightAtEnd: gauge("minisgl_server_requests_in_flight"),
  rssMiBAfter1000: rssAt1000 === null ? null : Number(rssAt1000.toFixed(1)),
  rssMiBEnd: Number(rssEnd.toFixed(1)),
  rssEndOver1000: rssAt1000 === null ? null : Number((rssEnd / rssAt1000).toFixed(3)),
  rssMiBOverTime: samples.map((
    s,
  ) => [s.requests, Math.round(s.seconds), Number(s.rssMiB.toFixed(1))]),
  serverExitCode: status.code,
};
console.log(JSON.stringify(result, null, 2));
if (a.out) await appendResult(a.out, a.card, result);
const ok = fiveXXClientFault === 0 && result.kvPagesInUseAtEnd === 0 && status.code === 0 &&
  (result.rssEndOver1000 === null || result.rssEndOver1000 <= 1.1);
console.log(ok ? "soak: PASS" : "soak: FAIL");
Deno.exit(ok ? 0 : 1);
