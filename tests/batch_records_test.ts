/**
 * Batches of any size the scheduler admits reach the GPU worker: the batch record of many
 * requests sharing a long cached prefix (each sends its whole page list) used to exceed the
 * ring's message limit and kill the scheduler loop. Real server process, CPU backend.
 */

import assert from "node:assert/strict";
import { metric, post, startServerProcess, tinyModelWith } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

/** A prompt of `n` ids inside the tiny vocabulary, distinct per `salt`. */
function ids(n: number, salt: number): number[] {
  return Array.from({ length: n }, (_, i) => 100 + ((i * 7 + salt * 13) % 5000));
}

Deno.test(
  "batch records: 17,000-id prompt with n=128, then 257 requests on a cached prefix",
  opts,
  async () => {
    const model = await tinyModelWith({ max_position_embeddings: 32768 });
    const server = await startServerProcess(["--cpu-threads", "2"], { modelDir: model });
    try {
      const big = await post(server.url, "/v1/completions", {
        prompt: ids(17_000, 1),
        n: 128,
        max_tokens: 1,
        temperature: 0,
      });
      // Served, or refused up front with a reason: never a dead engine.
      if (big.status === 200) {
        assert.equal((big.json.choices as unknown[]).length, 128);
      } else {
        assert.equal(big.status, 400, JSON.stringify(big.json));
      }
      const prefix = ids(10_000, 2);
      const many = await Promise.all(
        Array.from({ length: 257 }, (_, i) =>
          post(server.url, "/v1/completions", {
            prompt: [...prefix, 200 + i],
            max_tokens: 2,
            temperature: 0,
          })),
      );
      for (const r of many) assert.equal(r.status, 200, JSON.stringify(r.json));
      const health = await fetch(`${server.url}/health`);
      await health.body?.cancel();
      assert.equal(health.status, 200);
      const small = await post(server.url, "/v1/completions", { prompt: "hello", max_tokens: 3 });
      assert.equal(small.status, 200, JSON.stringify(small.json));
      assert.ok(await metric(server.url, "minisgl_cached_tokens_total") > 0);
    } finally {
      const status = await server.stop();
      await Deno.remove(model, { recursive: true });
      assert.equal(status.code, 0, server.stderr());
    }
  },
);
