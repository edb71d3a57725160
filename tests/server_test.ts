/**
 * The OpenAI-compatible server against a real server process on the CPU backend (tiny
 * random Qwen3): the official openai client for chat, completions, models, usage, stop,
 * seeds and n; raw HTTP for every kind of bad input; a mid-stream disconnect; SIGTERM.
 */

import assert from "node:assert/strict";
import OpenAI from "openai";
import { metric, post, startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test("server: OpenAI client, streaming, stop, seeds, n, logprobs, usage", opts, async (t) => {
  const server = await startServerProcess();
  const url = server.url;
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
  try {
    await t.step("models and health", async () => {
      const models = await client.models.list();
      assert.equal(models.data.length, 1);
      assert.equal(models.data[0].id, "tiny-qwen3");
      const health = await fetch(`${url}/health`);
      assert.equal(health.status, 200);
      await health.body?.cancel();
    });

    const messages = [
      { role: "system" as const, content: "You are terse." },
      { role: "user" as const, content: "Say something." },
    ];

    await t.step("chat: plain and streamed agree; usage adds up", async () => {
      const plain = await client.chat.completions.create({
        model: "tiny-qwen3",
        messages,
        max_tokens: 8,
        temperature: 0,
      });
      assert.match(plain.id, /^chatcmpl-/);
      assert.equal(plain.object, "chat.completion");
      const choice = plain.choices[0];
      assert.equal(choice.message.role, "assistant");
      assert.equal(typeof choice.message.content, "string");
      assert.ok(choice.finish_reason === "length" || choice.finish_reason === "stop");
      const tok = await post(url, "/tokenize", { messages });
      assert.equal(plain.usage!.prompt_tokens, (tok.json.tokens as number[]).length);
      assert.equal(
        plain.usage!.total_tokens,
        plain.usage!.prompt_tokens + plain.usage!.completion_tokens,
      );
      if (choice.finish_reason === "length") assert.equal(plain.usage!.completion_tokens, 8);

      const stream = await client.chat.completions.create({
        model: "tiny-qwen3",
        messages,
        max_tokens: 8,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      let text = "";
      let finish: string | null = null;
      let usage: OpenAI.CompletionUsage | null | undefined = null;
      let role = "";
      for await (const chunk of stream) {
        assert.equal(chunk.object, "chat.completion.chunk");
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices) {
          if (c.delta.role) role = c.delta.role;
          text += c.delta.content ?? "";
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
      assert.equal(role, "assistant");
      assert.equal(text, choice.message.content);
      assert.equal(finish, choice.finish_reason);
      assert.equal(usage?.completion_tokens, plain.usage!.completion_tokens);
      // The same prompt again: its prefix comes from the radix cache.
      assert.ok((usage?.prompt_tokens_details?.cached_tokens ?? 0) > 0, JSON.stringify(usage));
    });

    await t.step("completions: text, token ids, several prompts, echo + logprobs", async () => {
      const a = await client.completions.create({
        model: "tiny-qwen3",
        prompt: "The capital of France is",
        max_tokens: 6,
        temperature: 0,
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsNonStreaming);
      assert.equal(a.object, "text_completion");
      assert.equal(a.choices[0].finish_reason, "length");
      assert.equal(a.usage!.completion_tokens, 6);
      const ids = (await post(url, "/tokenize", { prompt: "The capital of France is" })).json
        .tokens as number[];
      const b = await client.completions.create({
        model: "tiny-qwen3",
        prompt: ids,
        max_tokens: 6,
        temperature: 0,
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsNonStreaming);
      assert.equal(b.choices[0].text, a.choices[0].text);
      const multi = await client.completions.create({
        model: "tiny-qwen3",
        prompt: ["one", "two three"],
        max_tokens: 3,
        temperature: 0,
      });
      assert.deepEqual(multi.choices.map((c) => c.index), [0, 1]);
      // max_tokens 0 + echo + logprobs: the prompt's own logprobs, the first one null.
      const echo = await client.completions.create({
        model: "tiny-qwen3",
        prompt: "Hello big world",
        max_tokens: 0,
        echo: true,
        logprobs: 1,
      });
      const lp = echo.choices[0].logprobs!;
      assert.equal(echo.choices[0].text, "Hello big world");
      assert.equal(lp.tokens!.join(""), "Hello big world");
      assert.equal(lp.token_logprobs![0], null);
      assert.ok(lp.token_logprobs!.slice(1).every((x) => typeof x === "number" && x <= 0));
      assert.equal(echo.usage!.completion_tokens, 0);
      // Streamed completions carry the same text.
      const s = await client.completions.create({
        model: "tiny-qwen3",
        prompt: "The capital of France is",
        max_tokens: 6,
        temperature: 0,
        stream: true,
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsStreaming);
      let text = "";
      for await (const chunk of s) text += chunk.choices[0]?.text ?? "";
      assert.equal(text, a.choices[0].text);
    });

    await t.step("stop strings never reach the output, even across tokens", async () => {
      const base = {
        model: "tiny-qwen3",
        prompt: "Once upon a time",
        max_tokens: 12,
        temperature: 0,
        ignore_eos: true,
      };
      const full = await client.completions.create(
        base as OpenAI.CompletionCreateParamsNonStreaming,
      );
      const text = full.choices[0].text;
      const ids = (await post(url, "/tokenize", { prompt: text, add_special_tokens: false })).json
        .tokens as number[];
      // A stop string made of the end of token 2 and the start of token 3.
      const t1 = (await post(url, "/detokenize", { tokens: ids.slice(0, 2) })).json
        .prompt as string;
      const cut = Math.max(1, t1.length);
      const stop = text.slice(cut - 1, cut + 1);
      assert.ok(stop.length > 0);
      const want = text.slice(0, text.indexOf(stop));
      const stopped = await client.completions.create(
        { ...base, stop: [stop, "\u0000never"] } as OpenAI.CompletionCreateParamsNonStreaming,
      );
      assert.equal(stopped.choices[0].text, want);
      assert.equal(stopped.choices[0].finish_reason, "stop");
      assert.ok(stopped.usage!.completion_tokens <= 12);
      const streamed = await client.completions.create(
        { ...base, stop, stream: true } as OpenAI.CompletionCreateParamsStreaming,
      );
      let got = "";
      let finish = "";
      for await (const c of streamed) {
        got += c.choices[0]?.text ?? "";
        finish = c.choices[0]?.finish_reason ?? finish;
      }
      assert.equal(got, want);
      assert.equal(finish, "stop");
    });

    await t.step("seed reproducibility and n choices (seed + i)", async () => {
      const req = {
        model: "tiny-qwen3",
        messages,
        max_tokens: 8,
        temperature: 1,
        seed: 1234,
      };
      const a = await client.chat.completions.create(req);
      const b = await client.chat.completions.create(req);
      assert.equal(a.choices[0].message.content, b.choices[0].message.content);
      const c = await client.chat.completions.create({ ...req, seed: 99 });
      assert.notEqual(c.choices[0].message.content, a.choices[0].message.content);
      const n = await client.chat.completions.create({ ...req, n: 3 });
      assert.deepEqual(n.choices.map((x) => x.index), [0, 1, 2]);
      assert.equal(n.choices[0].message.content, a.choices[0].message.content);
      assert.ok(new Set(n.choices.map((x) => x.message.content)).size > 1);
      assert.equal(n.usage!.prompt_tokens, a.usage!.prompt_tokens);
      const sum = n.choices.length * 8;
      assert.ok(n.usage!.completion_tokens <= sum);
      const s = await client.chat.completions.create({ ...req, n: 2, stream: true });
      const texts = ["", ""];
      for await (const chunk of s) {
        for (const ch of chunk.choices) texts[ch.index] += ch.delta.content ?? "";
      }
      assert.deepEqual(texts, n.choices.slice(0, 2).map((x) => x.message.content));
    });

    await t.step("chat logprobs with top alternatives and bytes", async () => {
      const r = await client.chat.completions.create({
        model: "tiny-qwen3",
        messages,
        max_tokens: 4,
        temperature: 0,
        logprobs: true,
        top_logprobs: 3,
      });
      const content = r.choices[0].logprobs!.content!;
      assert.equal(content.length, r.usage!.completion_tokens);
      for (const e of content) {
        assert.ok(e.logprob <= 0);
        assert.equal(e.top_logprobs.length, 3);
        assert.ok(Array.isArray(e.bytes));
        // Greedy: the chosen token is the most likely one.
        assert.ok(Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-3);
      }
      const text = new TextDecoder().decode(new Uint8Array(content.flatMap((e) => e.bytes!)));
      assert.equal(text, r.choices[0].message.content);
    });

    await t.step("a client that disconnects mid-stream frees its request", async () => {
      const ac = new AbortController();
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt: "Tell me",
          max_tokens: 2000,
          ignore_eos: true,
          stream: true,
        }),
        signal: ac.signal,
      });
      const reader = res.body!.getReader();
      await reader.read();
      await reader.read();
      assert.equal(await metric(url, "minisgl_num_requests_running"), 1);
      ac.abort();
      await reader.cancel().catch(() => {});
      const t0 = Date.now();
      while (await metric(url, "minisgl_num_requests_running") !== 0) {
        assert.ok(Date.now() - t0 < 5000, "request still running 5 s after the disconnect");
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(await metric(url, "minisgl_kv_pages_in_use"), 0);
      const metrics = await (await fetch(`${url}/metrics`)).text();
      assert.match(metrics, /^minisgl_time_to_first_token_seconds_count [1-9]/m);
      assert.match(metrics, /^minisgl_inter_token_latency_seconds_count [1-9]/m);
    });

    await t.step("SIGTERM lets the request in flight finish, then exits 0", async () => {
      const inflight = post(url, "/v1/completions", {
        prompt: "Count",
        max_tokens: 40,
        ignore_eos: true,
      });
      await new Promise((r) => setTimeout(r, 300));
      const status = server.stop("SIGTERM");
      const r = await inflight;
      assert.equal(r.status, 200);
      assert.equal(
        (r.json.usage as { completion_tokens: number }).completion_tokens,
        40,
      );
      assert.equal((await status).code, 0, server.stderr());
    });
  } finally {
    await server.stop("SIGKILL");
  }
});

Deno.test(
  "server: bad input gets OpenAI-shaped errors and the server keeps serving",
  opts,
  async (t) => {
    const key = "sk-test-key";
    const server = await startServerProcess([
      "--api-key",
      key,
      "--max-running-requests",
      "1",
      "--max-queued-requests",
      "1",
    ]);
    const url = server.url;
    const auth = { authorization: `Bearer ${key}` };
    const chat = (body: unknown) => post(url, "/v1/chat/completions", body, auth);
    const msgs = [{ role: "user", content: "hi" }];
    /** Asserts an error status and OpenAI's error body. */
    const expectError = (
      r: { status: number; json: Record<string, unknown> },
      status: number,
      param?: string | null,
    ) => {
      assert.equal(r.status, status, JSON.stringify(r.json).slice(0, 300));
      const e = r.json.error as Record<string, unknown>;
      assert.equal(typeof e.message, "string");
      assert.ok((e.message as string).length > 0);
      assert.ok("type" in e && "param" in e && "code" in e, JSON.stringify(e));
      if (param !== undefined) assert.equal(e.param, param);
    };
    try {
      await t.step("api key", async () => {
        expectError(await post(url, "/v1/chat/completions", { messages: msgs }), 401);
        expectError(
          await post(url, "/v1/chat/completions", { messages: msgs }, {
            authorization: "Bearer nope",
          }),
          401,
        );
        const models = await fetch(`${url}/v1/models`);
        assert.equal(models.status, 401);
        await models.body?.cancel();
        const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
        assert.equal((await client.models.list()).data[0].id, "tiny-qwen3");
        const health = await fetch(`${url}/health`);
        assert.equal(health.status, 200);
        await health.body?.cancel();
      });

      await t.step("malformed bodies, wrong types, unknown model, context, size", async () => {
        expectError(await chat("{not json"), 400);
        expectError(await chat("[1,2]"), 400);
        expectError(await chat(""), 400);
        expectError(
          await chat(new Uint8Array([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x3a, 0x31, 0x7d])),
          400,
        );
        expectError(await chat({ messages: [] }), 400, "messages");
        expectError(await chat({ messages: "hi" }), 400, "messages");
        expectError(
          await chat({ messages: [{ role: "user", content: 1 }] }),
          400,
          "messages[0].content",
        );
        expectError(await chat({ messages: msgs, temperature: "warm" }), 400, "temperature");
        expectError(await chat({ messages: msgs, max_tokens: 1e300 }), 400, "max_tokens");
        expectError(await chat({ messages: msgs, max_tokens: 5000 }), 400, "max_tokens");
        expectError(await chat({ messages: msgs, n: 1e9 }), 400, "n");
        expectError(await chat({ messages: msgs, seed: 1e30 }), 400, "seed");
        expectError(await chat({ messages: msgs, top_p: -1 }), 400, "top_p");
        expectError(await chat({ messages: msgs, model: "gpt-4" }), 404, "model");
        const c = (body: unknown) => post(url, "/v1/completions", body, auth);
        expectError(await c({ prompt: [1, 2, 1e12] }), 400, "prompt[2]");
        expectError(await c({ prompt: "x ".repeat(5000) }), 400, "prompt");
        expectError(await c({}), 400, "prompt");
        // A 10 MB body is refused with 413 before it is parsed.
        const big = JSON.stringify({ prompt: "a".repeat(10 << 20) });
        expectError(await c(big), 413);
        expectError(await post(url, "/v1/nothing", {}, auth), 404);
        // Unknown fields are ignored, as OpenAI does.
        const ok = await chat({ messages: msgs, max_tokens: 2, frobnicate: { x: 1 }, user: "u1" });
        assert.equal(ok.status, 200, JSON.stringify(ok.json));
      });

      await t.step("1000 malformed requests in a row, then a good one", async () => {
        const bodies = ["{", "null", '{"messages": 5}', '{"messages": [{"role": 1}]}', "\u0000"];
        for (let i = 0; i < 1000; i += 50) {
          const batch = Array.from(
            { length: 50 },
            (_, j) => post(url, "/v1/chat/completions", bodies[(i + j) % bodies.length], auth),
          );
          for (const r of await Promise.all(batch)) assert.equal(r.status, 400);
        }
        const ok = await chat({ messages: msgs, max_tokens: 2 });
        assert.equal(ok.status, 200);
      });

      await t.step("a full queue answers 503", async () => {
        const long = { prompt: "Go", max_tokens: 400, ignore_eos: true };
        const ac = new AbortController();
        const running = [1, 2].map(() =>
          fetch(`${url}/v1/completions`, {
            method: "POST",
            headers: { "content-type": "application/json", ...auth },
            body: JSON.stringify({ ...long, stream: true }),
            signal: ac.signal,
          }).catch(() => null)
        );
        // A queued stream's headers come with its first token: watch the metrics instead.
        const t1 = Date.now();
        while (await metric(url, "minisgl_server_requests_in_flight") < 2) {
          assert.ok(Date.now() - t1 < 5000, "the two requests never showed up");
          await new Promise((r) => setTimeout(r, 20));
        }
        expectError(await post(url, "/v1/completions", long, auth), 503);
        ac.abort();
        for (const r of await Promise.all(running)) await r?.body?.cancel().catch(() => {});
        const t0 = Date.now();
        while (await metric(url, "minisgl_num_requests_running") !== 0) {
          assert.ok(Date.now() - t0 < 5000);
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.equal(await metric(url, "minisgl_num_requests_waiting"), 0);
        assert.equal(await metric(url, "minisgl_server_requests_in_flight"), 0);
      });
    } finally {
      await server.stop("SIGKILL");
    }
  },
);
