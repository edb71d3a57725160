/**
 * A fatal error in a worker is visible and final: every open stream ends with an error,
 * /health and /metrics answer 503, new requests get 503, the reason is logged and the
 * process exits non-zero. Faults are injected into each worker, inside and outside its
 * loop, with MINISGL_FAULT (src/engine/fault.ts), against the real server process.
 */

import assert from "node:assert/strict";
import { post, startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

/** `p`, or a failure after `ms` (a zombie stream must fail the test, not hang it). */
function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

const LONG = { prompt: "tell me a story", max_tokens: 400, ignore_eos: true, temperature: 0 };

for (const site of ["scheduler", "scheduler-uncaught", "gpu", "gpu-uncaught"]) {
  Deno.test(`engine death: MINISGL_FAULT=${site}:after=4`, opts, async () => {
    const server = await startServerProcess([], { env: { MINISGL_FAULT: `${site}:after=4` } });
    try {
      const [streamed, whole] = await within(
        30_000,
        Promise.all([
          fetch(`${server.url}/v1/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ ...LONG, stream: true }),
          }).then(async (r) => ({ status: r.status, text: await r.text() })),
          post(server.url, "/v1/completions", LONG),
        ]),
      );
      // Both ended (no zombie), long before 400 tokens would have.
      assert.equal(streamed.status, 200);
      assert.match(streamed.text, /"error":\{"message":"[^"]*injected fault/);
      assert.match(streamed.text, /data: \[DONE\]\n\n$/);
      assert.equal(whole.status, 503, JSON.stringify(whole.json));
      assert.match(JSON.stringify(whole.json), /engine_failed/);
      const health = await fetch(`${server.url}/health`);
      assert.equal(health.status, 503);
      assert.match(await health.text(), /injected fault/);
      const metrics = await fetch(`${server.url}/metrics`);
      await metrics.body?.cancel();
      assert.equal(metrics.status, 503);
      const late = await post(server.url, "/v1/completions", { prompt: "hi", max_tokens: 2 });
      assert.equal(late.status, 503);
      // The process ends on its own, non-zero, with the reason in its log.
      const status = await Promise.race([
        server.child.status,
        new Promise<null>((r) => setTimeout(() => r(null), 20_000)),
      ]);
      assert.ok(status !== null, "still running 20 s after the engine died");
      assert.notEqual(status.code, 0);
      await server.stop();
      assert.match(server.stderr(), /error: the engine died: .*injected fault/);
    } finally {
      await server.stop("SIGKILL");
    }
  });
}

Deno.test("engine death: MINISGL_FAULT unset or malformed", opts, async () => {
  const bad = await startServerProcess([], { env: { MINISGL_FAULT: "gpu:sometimes" } }).then(
    (s) => s.stop("SIGKILL").then(() => "started"),
    (e: Error) => e.message,
  );
  assert.match(bad, /MINISGL_FAULT=gpu:sometimes: expected <site>:after=<n>/);
});
