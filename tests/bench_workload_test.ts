/**
 * The benchmark workloads and statistics of bench/: the offline workload is the same for a
 * seed and stays in its ranges, shared-prefix requests share exactly their group's prefix,
 * percentiles interpolate like numpy's default, the read floor of bench/roofline.ts counts what a
 * decode must read.
 */
import { deepEqual, equal, ok } from "node:assert/strict";
import { percentile } from "../bench/common.ts";
import { randomWorkload, sharedPrefixWorkload } from "../bench/workload.ts";
import {
  decodeStepBytes,
  modelBytes,
  stepWeightBytes,
  workloadReadBytes,
} from "../bench/roofline.ts";

const shape = { seed: 0, idRange: 10000, inMin: 100, inMax: 1024, outMin: 100, outMax: 1024 };

Deno.test("bench: the offline workload is reproducible and within its ranges", () => {
  const a = randomWorkload({ ...shape, n: 256 }), b = randomWorkload({ ...shape, n: 256 });
  deepEqual(a, b);
  const other = randomWorkload({ ...shape, seed: 1, n: 256 });
  ok(a[0].promptIds.join() !== other[0].promptIds.join(), "another seed, other prompts");
  const lens = a.map((w) => w.promptIds.length), outs = a.map((w) => w.maxTokens);
  ok(Math.min(...lens) >= 100 && Math.max(...lens) <= 1024);
  ok(Math.min(...outs) >= 100 && Math.max(...outs) <= 1024);
  // Uniform: the mean of 256 draws from U[100, 1024] is 562 +- 3 standard errors (~50).
  const mean = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
  ok(Math.abs(mean(lens) - 562) < 50 && Math.abs(mean(outs) - 562) < 50, `${mean(lens)}`);
  let lo = Infinity, hi = -Infinity;
  for (const w of a) for (const id of w.promptIds) [lo, hi] = [Math.min(lo, id), Math.max(hi, id)];
  ok(lo >= 0 && lo < 100 && hi <= 9999 && hi > 9900, `ids in [${lo}, ${hi}]`);
});

Deno.test("bench: shared-prefix requests share exactly their group's prefix", () => {
  const items = sharedPrefixWorkload({
    ...shape,
    groups: 4,
    perGroup: 3,
    prefixLen: 64,
    inMin: 5,
    inMax: 9,
  });
  equal(items.length, 12);
  for (let i = 0; i < items.length; i++) {
    const same = items[(i + 4) % 12].promptIds, other = items[(i + 1) % 12].promptIds;
    deepEqual(items[i].promptIds.slice(0, 64), same.slice(0, 64), `request ${i}, same group`);
    ok(items[i].promptIds.slice(0, 64).join() !== other.slice(0, 64).join(), `request ${i}`);
    ok(items[i].promptIds.length >= 69 && items[i].promptIds.length <= 73);
  }
});

Deno.test("bench: percentiles interpolate between order statistics", () => {
  const xs = Array.from({ length: 100 }, (_, i) => 100 - i); // 100 .. 1, unsorted
  equal(percentile(xs, 50), 50.5);
  equal(percentile(xs, 0), 1);
  equal(percentile(xs, 100), 100);
  ok(Math.abs(percentile(xs, 99) - 99.01) < 1e-9);
  ok(Number.isNaN(percentile([], 50)));
});

Deno.test("bench: the read floor counts every decode step's keys and one weight read a step", async () => {
  // tiny-qwen3 (tied embedding: the LM head reads all of it every step).
  const dir = await Deno.makeTempDir();
  try {
    const make = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../scripts/make_model.ts", import.meta.url).pathname,
        "--preset",
        "tiny-qwen3",
        "--out",
        dir,
      ],
      stdout: "null",
      stderr: "inherit",
    });
    ok((await make.output()).success, "make-model");
    const m = await modelBytes(dir);
    equal(m.kvPerToken, m.cfg.numLayers * 2 * m.cfg.numKvHeads * m.cfg.headDim * 2);
    // Output tokens 2..4 of a 3-token prompt read 4, 5 and 6 keys; 1 output token reads none.
    const r = workloadReadBytes(m, [{ input: 3, output: 4 }, { input: 50, output: 1 }]);
    equal(r.kvBytes, 15 * m.kvPerToken);
    equal(r.weightBytes, 4 * stepWeightBytes(m, 1));
    equal(stepWeightBytes(m, 1), m.weightBytes, "tied: the whole embedding is read");
    equal(decodeStepBytes(m, 2, 10), m.weightBytes + 20 * m.kvPerToken);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
