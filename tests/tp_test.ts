/**
 * Tensor parallelism on the CPU backend: ranks as Workers of one process joined through
 * the shared-memory communicator. `--tp 2` must give the logits of `--tp 1` (fp32
 * tolerance, as tests/model_runner_test.ts holds against float64) and the same greedy
 * tokens, for the four tiny architectures (tiny-qwen2 and tiny-mistral have a single KV
 * head, replicated over both ranks).
 */
import { deepEqual, ok as assert } from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { maxRelErr, runRanks } from "../bench/tp_ranks.ts";
import { Device, DType } from "../ffi/device.ts";
import { Ops } from "../ffi/ops.ts";

function ids(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % vocab);
}

for (const preset of ["tiny-qwen3", "tiny-llama", "tiny-qwen2", "tiny-mistral"]) {
  Deno.test(`${preset}: --tp 2 gives the logits and greedy tokens of --tp 1`, async () => {
    const dir = await ensureTestModel(preset);
    const { vocab_size: V } = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    const prompts = [ids(37, V, 1), ids(5, V, 2), ids(120, V, 3)];
    const job = {
      dir,
      prompts,
      steps: 12,
      dummyWeightSeed: null,
      backend: "cpu" as const,
      forced: null,
    };
    const [one] = await runRanks(job, 1);
    const two = await runRanks(job, 2);
    for (const [r, out] of two.entries()) {
      prompts.forEach((_, i) => {
        const err = maxRelErr(out.logits[i], one.logits[i], V);
        assert(err < 1e-4, `${preset} rank ${r} prompt ${i}: relative error ${err}`);
      });
      deepEqual(out.tokens, one.tokens, `${preset} rank ${r} greedy tokens`);
      deepEqual(out.continuation, one.tokens, `${preset} rank ${r} host argmax = device greedy`);
      const err = maxRelErr(out.decodeLogits, one.decodeLogits, V);
      assert(err < 1e-4, `${preset} rank ${r} decode steps: relative error ${err}`);
    }
    // Both ranks computed bit-identical logits (the same gathered tensor).
    prompts.forEach((_, i) => deepEqual(two[0].logits[i], two[1].logits[i]));
  });
}

Deno.test("fill_random: seeded, within mean +- scale, mean and spread of a uniform", () => {
  const dev = new Device("cpu");
  const ops = new Ops(dev);
  const t = dev.alloc(DType.F32, [1 << 16]);
  const get = (seed: bigint) => {
    ops.fillRandom(t, seed, 0.5, 2);
    const h = new Float32Array(t.numel);
    dev.download(h, t);
    return h;
  };
  const a = get(1n), b = get(1n), c = get(2n);
  deepEqual(a, b);
  assert(a.some((x, i) => x !== c[i]), "another seed gives other values");
  const mean = a.reduce((s, x) => s + x, 0) / a.length;
  const sd = Math.sqrt(a.reduce((s, x) => s + (x - mean) ** 2, 0) / a.length);
  assert(a.every((x) => x >= -1.5 && x < 2.5), "inside [mean - scale, mean + scale)");
  assert(Math.abs(mean - 0.5) < 0.02, `mean ${mean}`);
  assert(Math.abs(sd - 2 / Math.sqrt(3)) < 0.02, `sd ${sd}`);
  dev.close();
});
