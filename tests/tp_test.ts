/**
 * Tensor parallelism on the CPU backend: ranks as Workers of one process joined through
 * the shared-memory communicator. `--tp 2` must give the logits of `--tp 1` (fp32
 * tolerance, as tests/model_runner_test.ts holds against float64) and the same greedy
 * tokens, for the four tiny architectures (tiny-qwen2 and tiny-mistral have a single KV
 * head, replicated over both ranks).
 */
import { deepEqual, ok as assert } from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { makeUniqueId } from "../ffi/comm.ts";
import type { RankJob } from "./tp_rank_worker.ts";
import { Device, DType } from "../ffi/device.ts";
import { Ops } from "../ffi/ops.ts";

interface RankOut {
  logits: Float32Array[];
  tokens: number[];
}

/** Runs `size` ranks as Workers; resolves with every rank's output. */
export function runRanks(job: Omit<RankJob, "rank" | "size" | "id">, size: number) {
  const id = size > 1 ? makeUniqueId("cpu") : null;
  return Promise.all(
    Array.from({ length: size }, (_, rank) =>
      new Promise<RankOut>((resolve, reject) => {
        const w = new Worker(new URL("./tp_rank_worker.ts", import.meta.url), { type: "module" });
        w.onmessage = (ev) => {
          w.terminate();
          if (ev.data.error) reject(new Error(`rank ${rank}: ${ev.data.error}`));
          else resolve(ev.data);
        };
        w.onerror = (e) => {
          e.preventDefault();
          w.terminate();
          reject(new Error(`rank ${rank}: ${e.message}`));
        };
        w.postMessage({ ...job, rank, size, id } satisfies RankJob);
      })),
  );
}

function ids(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % vocab);
}

/** max over positions of ||a_p - b_p|| / ||b_p||. */
export function maxRelErr(a: Float32Array, b: Float32Array, vocab: number): number {
  let worst = 0;
  for (let p = 0; p < b.length / vocab; p++) {
    let num = 0, den = 0;
    for (let i = p * vocab; i < (p + 1) * vocab; i++) num += (a[i] - b[i]) ** 2, den += b[i] ** 2;
    worst = Math.max(worst, Math.sqrt(num / den));
  }
  return worst;
}

for (const preset of ["tiny-qwen3", "tiny-llama", "tiny-qwen2", "tiny-mistral"]) {
  Deno.test(`${preset}: --tp 2 gives the logits and greedy tokens of --tp 1`, async () => {
    const dir = await ensureTestModel(preset);
    const { vocab_size: V } = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    const prompts = [ids(37, V, 1), ids(5, V, 2), ids(120, V, 3)];
    const job = { dir, prompts, steps: 12, dummyWeightSeed: null };
    const [one] = await runRanks(job, 1);
    const two = await runRanks(job, 2);
    for (const [r, out] of two.entries()) {
      prompts.forEach((_, i) => {
        const err = maxRelErr(out.logits[i], one.logits[i], V);
        assert(err < 1e-4, `${preset} rank ${r} prompt ${i}: relative error ${err}`);
      });
      deepEqual(out.tokens, one.tokens, `${preset} rank ${r} greedy tokens`);
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
