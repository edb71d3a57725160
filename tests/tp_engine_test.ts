/**
 * Tensor parallelism through the whole engine on the CPU backend: one GPU worker per
 * rank, the scheduler pushing every batch to every rank's ring, rank 0's results returned.
 * `--tp 2` must produce the greedy tokens of `--tp 1`; dummy weights run from config.json
 * alone; a split that does not divide is refused with one line at start.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ensureTestModel, sharedPrefixWorkload } from "./fixtures.ts";
import { runDeno } from "./server_harness.ts";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig, type EngineConfig } from "../src/engine/config.ts";
import type { TokenEvent } from "../src/engine/types.ts";
import { makeModel } from "../src/model/make_model.ts";
import { loadModelConfig } from "../src/model/config.ts";
import { tpError } from "../src/model/tp.ts";
import { expectedWeights } from "../src/model/safetensors.ts";

async function generate(preset: string, over: Partial<EngineConfig>, n = 6, maxTokens = 10) {
  const dir = await ensureTestModel(preset);
  const e = await startEngine({
    ...defaultEngineConfig(dir),
    device: "cpu",
    cudaGraphMaxBs: 0,
    numPages: 2048,
    maxRunningRequests: 16,
    maxPrefillLength: 48, // chunked prefill on the longer prompts
    ...over,
  });
  const collect = async (s: AsyncIterable<TokenEvent>) => {
    const t: number[] = [];
    for await (const ev of s) t.push(...ev.tokens);
    return t;
  };
  const out = await Promise.all(
    sharedPrefixWorkload(n, maxTokens).map((r) => collect(e.submit(r))),
  );
  await e.shutdown();
  return out;
}

for (const preset of ["tiny-qwen3", "tiny-mistral"]) {
  Deno.test(`engine ${preset}: --tp 2 generates the greedy tokens of --tp 1`, async () => {
    const one = await generate(preset, { tpSize: 1 });
    const two = await generate(preset, { tpSize: 2 });
    assert.ok(one.every((t) => t.length >= 8), "every request generated");
    assert.deepEqual(two, one);
  });
}

Deno.test("engine: --tp 2 with dummy weights runs from config.json and the tokenizer alone", async () => {
  const src = await ensureTestModel("tiny-llama");
  const dir = await Deno.makeTempDir({ prefix: "minisgl-dummy-" });
  try {
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(join(src, f), join(dir, f));
    }
    const e = await startEngine({
      ...defaultEngineConfig(dir),
      device: "cpu",
      cudaGraphMaxBs: 0,
      numPages: 512,
      maxRunningRequests: 4,
      dummyWeightSeed: 7,
      tpSize: 2,
    });
    const [req] = sharedPrefixWorkload(1, 6);
    const tokens: number[] = [];
    for await (const ev of e.submit(req)) tokens.push(...ev.tokens);
    await e.shutdown();
    assert.equal(tokens.length, 6);
    assert.ok(tokens.every((t) => t >= 0 && t < e.info.vocabSize));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: --tp that does not divide the heads exits 1 with one line", async () => {
  const dir = await ensureTestModel("tiny-qwen3"); // 4 heads
  const out = await runDeno([
    "run",
    "-A",
    "main.ts",
    "--model",
    dir,
    "--device",
    "cpu",
    "--tp-size",
    "3",
  ]);
  const err = out.stderr;
  assert.equal(out.code, 1, err);
  const lines = err.split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(lines.length, 1, err);
  assert.match(lines[0], /--tp 3: 4 attention heads do not divide over 3 ranks/);
});

Deno.test("make-model llama-3-70b: config and tokenizer only, Meta-Llama-3-70B's shapes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "minisgl-70b-" });
  try {
    await makeModel("llama-3-70b", dir);
    const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(files, [
      "config.json",
      "generation_config.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    const cfg = await loadModelConfig(dir);
    const params = expectedWeights(cfg).reduce((s, w) => s + w.shape.reduce((a, b) => a * b), 0);
    assert.equal(params, 70553706496); // Meta-Llama-3-70B's parameter count
    assert.equal(tpError(cfg, 2), null);
    assert.equal(tpError(cfg, 16), null); // 8 KV heads replicated over 16 ranks
    assert.match(tpError(cfg, 3)!, /64 attention heads do not divide over 3 ranks/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
