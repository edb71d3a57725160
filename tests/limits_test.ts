/**
 * Client mistakes are 400s at admission, never 500s or "retry later" 503s: deeply nested
 * arrays, more completions than the server can ever hold, non-streaming responses past
 * the size limit, template kwargs the chat template cannot use. A client that goes away
 * is not counted as a server error. Real server process, CPU backend.
 */

import assert from "node:assert/strict";
import { post, startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

/** [[[...[1]...]]] nested `depth` arrays deep. */
function nested(depth: number): string {
  return "[".repeat(depth) + "1" + "]".repeat(depth);
}

Deno.test("limits: client mistakes are 400s at admission", opts, async (t) => {
  const server = await startServerProcess();
  const url = server.url;
  const expect400 = async (path: string, body: unknown, code: RegExp) => {
    const r = await post(url, path, body);
    assert.equal(r.status, 400, JSON.stringify(r.json).slice(0, 300));
    assert.match(JSON.stringify(r.json), code);
  };
  try {
    await t.step("nesting", async () => {
      const deep = nested(100_000);
      await expect400("/v1/completions", `{"prompt": ${deep}}`, /nesting_too_deep/);
      await expect400("/detokenize", `{"tokens": ${deep}}`, /nesting_too_deep/);
      await expect400(
        "/v1/chat/completions",
        `{"messages": [{"role": "user", "content": ${deep}}]}`,
        /nesting_too_deep/,
      );
      // A reasonable depth is still parsed and checked as usual.
      await expect400("/v1/completions", `{"prompt": ${nested(10)}}`, /prompt/);
    });
    await t.step("more completions than the server holds", async () => {
      const prompts = Array.from({ length: 200 }, (_, i) => [100 + i]);
      await expect400(
        "/v1/completions",
        { prompt: prompts, n: 128, max_tokens: 1 },
        /too_many_completions/,
      );
    });
    await t.step("response-size budget (streaming exempt)", async () => {
      const big = { prompt: "x", n: 128, logprobs: 20, max_tokens: 4000 };
      await expect400("/v1/completions", big, /response_too_large/);
      await expect400(
        "/v1/chat/completions",
        {
          messages: [{ role: "user", content: "x" }],
          n: 128,
          logprobs: true,
          top_logprobs: 20,
          max_tokens: 4000,
        },
        /response_too_large/,
      );
      const ctl = new AbortController();
      const r = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ...big, stream: true }),
        signal: ctl.signal,
      });
      assert.equal(r.status, 200);
      await r.body!.getReader().read();
      ctl.abort();
    });
    await t.step("chat_template_kwargs the template cannot use", async () => {
      await expect400(
        "/tokenize",
        { messages: [{ role: "user", content: "hi" }], chat_template_kwargs: { tools: 5 } },
        /chat template/,
      );
    });
    await t.step("a client that goes away is no server error", async () => {
      const ctl = new AbortController();
      const pending = fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "x", max_tokens: 2000, ignore_eos: true }),
        signal: ctl.signal,
      }).catch(() => null);
      await new Promise((r) => setTimeout(r, 500));
      ctl.abort();
      await pending;
      await new Promise((r) => setTimeout(r, 500));
      const text = await (await fetch(`${url}/metrics`)).text();
      assert.doesNotMatch(text, /minisgl_http_errors_total\{status="5\d\d"\}/);
      assert.doesNotMatch(text, /minisgl_requests_finished_total\{reason="error"\}/);
    });
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
  } finally {
    const status = await server.stop();
    assert.equal(status.code, 0, server.stderr());
  }
});
