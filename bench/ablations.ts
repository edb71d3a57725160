/**
 * Ablations in one run: each engine feature switched off (or changed) alone against the
 * same baseline, on the offline workload of bench/offline.ts (shortened for time):
 *
 *   overlap scheduling on / off, CUDA graphs on / off, page size 16 / 1 (random prompts);
 *   radix cache / naive cache (shared-prefix prompts: --groups prefixes of --prefix-len ids).
 *
 * Every configuration runs in its own process (bench/offline.ts), so each starts on an empty
 * device. One record per configuration, name "ablation", with its ratio to the baseline.
 *
 *   deno task bench ablations --model DIR --name qwen3-0.6b [--requests 128]
 *     [--only overlap,graphs,page,radix] [--out results.json] [--device cpu]
 */
import { parseArgs } from "node:util";
import { appendResult } from "./results.ts";
import { markdownTable } from "./common.ts";

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    name: { type: "string", default: "model" },
    device: { type: "string", default: "cuda" },
    requests: { type: "string", default: "128" },
    "input-min": { type: "string", default: "100" },
    "input-max": { type: "string", default: "512" },
    "output-min": { type: "string", default: "100" },
    "output-max": { type: "string", default: "256" },
    groups: { type: "string", default: "8" },
    "prefix-len": { type: "string", default: "2048" },
    "suffix-min": { type: "string", default: "32" },
    "suffix-max": { type: "string", default: "128" },
    "shared-output-max": { type: "string", default: "64" },
    only: { type: "string", default: "overlap,graphs,page,radix" },
    "cpu-threads": { type: "string", default: "0" },
    out: { type: "string" },
  },
  strict: true,
});
if (!a.model) throw new Error("--model is required");
const only = new Set(a.only!.split(","));

interface Config {
  feature: string;
  setting: string;
  workload: "random" | "shared-prefix";
  flags: string[];
}
const random = [
  "--requests",
  a.requests!,
  "--input-min",
  a["input-min"]!,
  "--input-max",
  a["input-max"]!,
  "--output-min",
  a["output-min"]!,
  "--output-max",
  a["output-max"]!,
];
const shared = [
  "--dataset",
  "shared-prefix",
  "--requests",
  a.requests!,
  "--groups",
  a.groups!,
  "--prefix-len",
  a["prefix-len"]!,
  "--input-min",
  a["suffix-min"]!,
  "--input-max",
  a["suffix-max"]!,
  "--output-min",
  "32",
  "--output-max",
  a["shared-output-max"]!,
];
const configs: Config[] = [{
  feature: "baseline",
  setting: "all on",
  workload: "random",
  flags: [],
}];
if (only.has("overlap")) {
  configs.push({
    feature: "overlap",
    setting: "off",
    workload: "random",
    flags: ["--disable-overlap-schedule"],
  });
}
if (only.has("graphs") && a.device === "cuda") {
  configs.push({
    feature: "cuda graphs",
    setting: "off",
    workload: "random",
    flags: ["--cuda-graph-max-bs", "0"],
  });
}
if (only.has("page")) {
  configs.push({
    feature: "page size",
    setting: "1",
    workload: "random",
    flags: ["--page-size", "1"],
  });
}
if (only.has("radix")) {
  configs.push(
    { feature: "radix cache", setting: "radix", workload: "shared-prefix", flags: [] },
    {
      feature: "radix cache",
      setting: "naive",
      workload: "shared-prefix",
      flags: ["--cache", "naive"],
    },
  );
}

const dir = await Deno.makeTempDir();
const rows: Record<string, unknown>[] = [];
let card = "unknown";
for (const [i, c] of configs.entries()) {
  const out = `${dir}/${i}.json`;
  const args = [
    "run",
    "-A",
    new URL("./offline.ts", import.meta.url).pathname,
    "--model",
    a.model,
    "--name",
    a.name!,
    "--device",
    a.device!,
    "--cpu-threads",
    a["cpu-threads"]!,
    "--page-size",
    "16",
    ...(c.workload === "random" ? random : shared),
    ...c.flags,
    "--out",
    out,
  ];
  console.error(`ablation ${i + 1}/${configs.length}: ${c.feature} ${c.setting}`);
  const { success } = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "null",
    stderr: "inherit",
  }).output();
  if (!success) {
    rows.push({ ...c, error: "offline.ts failed" });
    continue;
  }
  const rec = JSON.parse(await Deno.readTextFile(out));
  card = rec.card;
  const r = rec.results[0];
  rows.push({
    feature: c.feature,
    setting: c.setting,
    workload: c.workload,
    out_tok_per_s: r.out_tok_per_s,
    total_tok_per_s: r.total_tok_per_s,
    seconds: r.seconds,
    cached_tokens: r.cached_tokens,
    median_ttft_s: r.median_ttft_s,
  });
}
await Deno.remove(dir, { recursive: true });

// Ratios: random-workload settings against the baseline, naive against radix.
const base = rows.find((r) => r.feature === "baseline")?.total_tok_per_s as number | undefined;
const radix = rows.find((r) => r.setting === "radix")?.total_tok_per_s as number | undefined;
for (const r of rows) {
  const ref = r.workload === "shared-prefix" ? radix : base;
  r.vs_reference = typeof r.total_tok_per_s === "number" && ref ? r.total_tok_per_s / ref : null;
}
console.log(markdownTable(rows, [
  "feature",
  "setting",
  "workload",
  "out_tok_per_s",
  "total_tok_per_s",
  "vs_reference",
  "cached_tokens",
  "median_ttft_s",
]));
for (const r of rows) {
  const record = { name: "ablation", model: a.name, device_name: card, ...r };
  console.log(JSON.stringify(record));
  if (a.out) await appendResult(a.out, card, record);
}
