/**
 * A 7 MB /tokenize body is tokenized off the HTTP thread: /health keeps answering while it
 * runs. Measures the slowest /health answer during the big request and asserts only a
 * generous bound (on the HTTP thread, the issue measured 20 s of silence).
 */

import assert from "node:assert/strict";
import { post, startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test("tokenize: a 7 MB body does not stall /health", opts, async () => {
  const server = await startServerProcess();
  try {
    const text = "the quick brown fox jumps over the lazy dog 0123456789 ".repeat(127_000);
    const t0 = performance.now();
    let bigDone = false;
    const big = post(server.url, "/tokenize", { prompt: text }).finally(() => (bigDone = true));
    let slowest = 0, answered = 0;
    while (!bigDone) {
      const h0 = performance.now();
      const r = await fetch(`${server.url}/health`);
      await r.body?.cancel();
      assert.equal(r.status, 200);
      slowest = Math.max(slowest, performance.now() - h0);
      answered++;
      await new Promise((r) => setTimeout(r, 50));
    }
    const res = await big;
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(res.status, 200, JSON.stringify(res.json).slice(0, 200));
    assert.ok((res.json.count as number) > 1_000_000);
    console.log(
      `7 MB /tokenize: ${seconds.toFixed(1)} s; /health answered ${answered} times, ` +
        `slowest ${slowest.toFixed(0)} ms`,
    );
    assert.ok(answered >= 3, `health answered ${answered} times during ${seconds} s`);
    assert.ok(slowest < 2_000, `slowest /health: ${slowest} ms`);
  } finally {
    await server.stop();
  }
});
