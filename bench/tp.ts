/**
 * Tensor-parallel figures of issue 9, written to bench/results (run by scripts/device_tp.sh
 * on a two-GPU machine; --device cpu with a tiny model checks the script itself).
 *
 *   deno run -A bench/tp.ts fidelity --model DIR --name llama-3-8b [--prompt 512 --steps 64]
 *     TP=2 logits against TP=1 over the prompt and `steps` teacher-forced decode steps:
 *     {"name":"tp_fidelity","model","max_rel_l2"}
 *   deno run -A bench/tp.ts decode --model DIR --name llama-3-8b [--tokens 256] [--dummy]
 *     one request, decode tok/s through the engine at TP=2 (and TP=1 unless --dummy):
 *     {"name":"decode_bs1_tp2","model","tok_per_s","speedup_vs_tp1"?}
 *   deno run -A bench/tp.ts offline --model DIR --name llama-3-70b [--requests 128] [--dummy]
 *     the offline workload at TP=2: {"name":"offline_tp2","model","out_tok_per_s"}
 */
import { parseArgs } from "node:util";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig, type EngineConfig } from "../src/engine/config.ts";
import { defaultSamplingParams } from "../src/engine/types.ts";
import { loadModelConfig } from "../src/model/config.ts";
import { appendResult } from "./results.ts";
import { maxRelErr, runRanks } from "./tp_ranks.ts";
import { randomWorkload, runWorkload, warmUp } from "./workload.ts";

const { positionals, values: a } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    model: { type: "string" },
    name: { type: "string" },
    device: { type: "string", default: "cuda" },
    tp: { type: "string", default: "2" },
    prompt: { type: "string", default: "512" },
    steps: { type: "string", default: "64" },
    tokens: { type: "string", default: "256" },
    requests: { type: "string", default: "128" },
    // The offline workload of bench/offline.ts: U[100, len] in and out (len 1024).
    "max-len": { type: "string", default: "1024" },
    dummy: { type: "boolean", default: false },
    card: { type: "string", default: "unknown card" },
    out: { type: "string", default: "bench/results/tp.json" },
  },
});
const mode = positionals[0];
if (!a.model || !a.name) throw new Error("--model and --name are required");
const backend = a.device === "cpu" ? "cpu" : "cuda";
const tp = Number(a.tp);
const cfg = await loadModelConfig(a.model);
const record = async (r: Record<string, unknown>) => {
  console.log(JSON.stringify(r));
  await appendResult(a.out!, a.card!, r);
};
const engineConfig = (tpSize: number): EngineConfig => ({
  ...defaultEngineConfig(a.model!),
  device: backend,
  tpSize,
  pageSize: 16,
  cudaGraphMaxBs: backend === "cpu" ? 0 : -1,
  dummyWeightSeed: a.dummy ? 0 : null,
  randomSeed: 0,
});

if (mode === "fidelity") {
  let s = 12345;
  const prompt = Array.from({ length: Number(a.prompt) }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % cfg.vocabSize;
  });
  const job = {
    dir: a.model,
    backend: backend as "cpu" | "cuda",
    prompts: [prompt],
    steps: Number(a.steps),
    dummyWeightSeed: null,
  };
  const [one] = await runRanks({ ...job, forced: null }, 1);
  const [two] = await runRanks({ ...job, forced: one.continuation }, tp);
  const V = cfg.vocabSize;
  const err = Math.max(
    maxRelErr(two.logits[0], one.logits[0], V),
    maxRelErr(two.decodeLogits, one.decodeLogits, V),
  );
  await record({ name: "tp_fidelity", model: a.name, tp, max_rel_l2: err });
} else if (mode === "decode") {
  const tokPerS = async (tpSize: number) => {
    const engine = await startEngine(engineConfig(tpSize));
    await warmUp(engine, Math.min(cfg.vocabSize, 32000));
    const params = {
      ...defaultSamplingParams(),
      temperature: 0,
      ignoreEos: true,
      maxTokens: Number(a.tokens),
    };
    let first = 0, n = 0;
    for await (
      const ev of engine.submit({ id: "d", promptIds: [1, 2, 3, 4, 5, 6, 7, 8], params })
    ) {
      if (ev.tokens.length && !first) first = performance.now(), n -= ev.tokens.length;
      n += ev.tokens.length;
    }
    const rate = n / ((performance.now() - first) / 1000);
    await engine.shutdown();
    return rate;
  };
  const two = await tokPerS(tp);
  const r: Record<string, unknown> = { name: `decode_bs1_tp${tp}`, model: a.name, tok_per_s: two };
  if (!a.dummy) r.speedup_vs_tp1 = two / await tokPerS(1);
  await record(r);
} else if (mode === "offline") {
  const engine = await startEngine(engineConfig(tp));
  const idRange = Math.min(cfg.vocabSize, 10000), len = Number(a["max-len"]);
  await warmUp(engine, idRange);
  const items = randomWorkload({
    n: Number(a.requests),
    seed: 0,
    idRange,
    inMin: Math.min(100, len),
    inMax: len,
    outMin: Math.min(100, len),
    outMax: len,
  });
  const stats = await runWorkload(engine, items, 0.6, "offline-tp");
  await engine.shutdown();
  await record({
    name: `offline_tp${tp}`,
    model: a.name,
    requests: items.length,
    out_tok_per_s: stats.outTokPerS,
  });
} else {
  throw new Error(`unknown mode ${mode} (fidelity, decode, offline)`);
}
