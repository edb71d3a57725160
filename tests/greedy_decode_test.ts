/**
 * Long greedy decodes through the whole engine (CPU backend) follow the float64 reference
 * token by token, at several page sizes, with the overlap schedule on and off, chunked
 * prefill and not. The test model decodes varied text (make-model's gains), so a fault
 * that feeds a wrong token into the next step (a stale per-row token table, a wrong page)
 * changes the continuation instead of hiding behind one repeated token.
 */
import assert from "node:assert/strict";
import { ensureTestModel, GREEDY_PARAMS } from "./fixtures.ts";
import { loadReferenceModel, type ReferenceGreedy, referenceGreedy } from "./reference.ts";
import { startEngine } from "../src/engine/engine.ts";
import { defaultEngineConfig, type EngineConfig } from "../src/engine/config.ts";

const STEPS = 48;

/** Prompts of 8 to 24 tokens whose reference continuations have clear argmax gaps. */
const PROMPTS = [2, 4, 6, 7].map((k) => {
  const len = 5 + ((k * 7) % 23);
  return Array.from({ length: len }, (_, i) => 100 + ((k * 7919 + i * 104729) % 150000));
});

/** Smallest best-vs-second logit gap the CPU engine (relative error < 1e-4) must resolve. */
const MIN_GAP = 2e-3;

const CONFIGS: Partial<EngineConfig>[] = [
  { pageSize: 1 },
  { pageSize: 1, disableOverlapSchedule: true, maxPrefillLength: 8 },
  { pageSize: 4, maxPrefillLength: 8 },
  { pageSize: 4, disableOverlapSchedule: true },
  { pageSize: 16, maxPrefillLength: 8 },
  { pageSize: 16, disableOverlapSchedule: true },
];

Deno.test("greedy decode: 48 steps equal the float64 reference at page sizes 1/4/16, overlap on/off, chunked or not", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const ref = await loadReferenceModel(dir);
  const want: ReferenceGreedy[] = PROMPTS.map((p) => referenceGreedy(ref, p, STEPS));
  for (const [i, r] of want.entries()) {
    // The test model must not decode into a repeated token, or this test proves little.
    assert.ok(new Set(r.tokens).size >= STEPS * 0.75, `prompt ${i}: varied reference output`);
    assert.ok(Math.min(...r.gaps) > MIN_GAP, `prompt ${i}: reference argmax gaps are clear`);
  }
  for (const c of CONFIGS) {
    const engine = await startEngine({
      ...defaultEngineConfig(dir),
      device: "cpu",
      cudaGraphMaxBs: 0,
      numPages: 512,
      maxRunningRequests: 8,
      cpuThreads: 2,
      ...c,
    });
    try {
      const got = await Promise.all(PROMPTS.map(async (promptIds, i) => {
        const tokens: number[] = [];
        const stream = engine.submit({
          id: `g${i}`,
          promptIds,
          params: { ...GREEDY_PARAMS, maxTokens: STEPS },
        });
        for await (const ev of stream) tokens.push(...ev.tokens);
        return tokens;
      }));
      for (const [i, tokens] of got.entries()) {
        assert.deepEqual(tokens, want[i].tokens, `prompt ${i}, config ${JSON.stringify(c)}`);
      }
    } finally {
      await engine.shutdown();
    }
  }
});
