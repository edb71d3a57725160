/**
 * SGLang compatibility against a real server process started with SGLang's flag names:
 * POST /generate (text, input_ids, batches, streaming, stop ids, errors), /get_model_info,
 * /get_server_info, /flush_cache (refused while a request runs), /health_generate, vLLM's
 * /tokenizer_info and return_tokens_as_token_ids through the official openai client.
 */

import assert from "node:assert/strict";
import OpenAI from "openai";
import { metric, post, startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

/** Reads an SSE response into its data frames (without [DONE]) and says if [DONE] came. */
async function sseFrames(
  res: Response,
): Promise<{ frames: Record<string, unknown>[]; done: boolean }> {
  const text = await res.text();
  const frames: Record<string, unknown>[] = [];
  let done = false;
  for (const block of text.split("\n\n")) {
    const line = block.trim();
    if (!line.startsWith("data: ")) continue;
    const data = line.slice(6);
    if (data === "[DONE]") done = true;
    else frames.push(JSON.parse(data));
  }
  return { frames, done };
}

Deno.test(
  "sglang: /generate, model and server info, flush_cache, health_generate, tokenizer_info",
  opts,
  async (t) => {
    const server = await startServerProcess([
      "--context-length",
      "256",
      "--cache-type",
      "radix",
      "--attention-backend",
      "native",
      "--mem-fraction-static",
      "0.5",
    ]);
    const url = server.url;
    const greedy = { temperature: 0, max_new_tokens: 8, ignore_eos: true };
    try {
      await t.step("get_model_info and get_server_info", async () => {
        const mi = await (await fetch(`${url}/get_model_info`)).json();
        assert.match(mi.model_path, /tiny-qwen3$/);
        assert.equal(mi.tokenizer_path, mi.model_path);
        assert.equal(mi.is_generation, true);
        const si = await (await fetch(`${url}/get_server_info`)).json();
        assert.equal(si.context_length, 256, "--context-length caps the context");
        assert.equal(si.mem_fraction_static, 0.5);
        assert.equal(si.attention_backend, "native");
        assert.equal(si.disable_radix_cache, false);
        assert.equal(typeof si.version, "string");
        assert.equal(si.internal_states[0].num_running_reqs, 0);
      });

      let textIds: number[] = [];
      await t.step("generate: text and input_ids give the same greedy output", async () => {
        const a = await post(url, "/generate", { text: "The capital of", sampling_params: greedy });
        assert.equal(a.status, 200, JSON.stringify(a.json));
        const out = a.json as {
          text: string;
          output_ids: number[];
          meta_info: Record<string, unknown>;
        };
        assert.equal(out.output_ids.length, 8);
        assert.deepEqual(out.meta_info.finish_reason, { type: "length", length: 8 });
        assert.equal(out.meta_info.completion_tokens, 8);
        const tok = await post(url, "/tokenize", { prompt: "The capital of" });
        textIds = tok.json.tokens as number[];
        assert.equal(out.meta_info.prompt_tokens, textIds.length);
        const detok = await post(url, "/detokenize", { tokens: out.output_ids });
        assert.equal(out.text, detok.json.prompt);
        const b = await post(url, "/generate", { input_ids: textIds, sampling_params: greedy });
        assert.deepEqual(b.json.output_ids, out.output_ids);
        assert.equal(b.json.text, out.text);
        // The second run found the prompt in the radix cache.
        assert.ok((b.json.meta_info as { cached_tokens: number }).cached_tokens > 0);
      });

      await t.step(
        "generate: streaming sends the text so far; the last frame equals the plain result",
        async () => {
          const plain = await post(url, "/generate", {
            input_ids: textIds,
            sampling_params: greedy,
          });
          const res = await fetch(`${url}/generate`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ input_ids: textIds, sampling_params: greedy, stream: true }),
          });
          assert.equal(res.status, 200);
          assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
          const { frames, done } = await sseFrames(res);
          assert.ok(done, "ends with [DONE]");
          assert.ok(frames.length >= 2);
          for (let i = 1; i < frames.length; i++) {
            assert.ok((frames[i].text as string).startsWith(frames[i - 1].text as string));
          }
          const last = frames.at(-1)!;
          assert.equal(last.text, plain.json.text);
          assert.deepEqual(last.output_ids, plain.json.output_ids);
          const reasons = frames.map((f) =>
            (f.meta_info as { finish_reason: unknown }).finish_reason
          );
          assert.ok(reasons.slice(0, -1).every((r) => r === null));
          assert.deepEqual(reasons.at(-1), { type: "length", length: 8 });
        },
      );

      await t.step("generate: batches, stop_token_ids, bad input", async () => {
        const batch = await fetch(`${url}/generate`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ text: ["The capital of", "Hello"], sampling_params: greedy }),
        });
        const outs = await batch.json();
        assert.ok(Array.isArray(outs) && outs.length === 2);
        const single = await post(url, "/generate", { text: "Hello", sampling_params: greedy });
        assert.deepEqual(outs[1].output_ids, single.json.output_ids);

        const ids = single.json.output_ids as number[];
        const stopId = ids[3];
        const first = ids.indexOf(stopId);
        const stopped = await post(url, "/generate", {
          text: "Hello",
          sampling_params: { ...greedy, stop_token_ids: [stopId] },
        });
        const meta = stopped.json.meta_info as Record<string, unknown>;
        assert.deepEqual(meta.finish_reason, { type: "stop", matched: stopId });
        assert.deepEqual(stopped.json.output_ids, ids.slice(0, first));

        const both = await post(url, "/generate", { text: "a", input_ids: [1] });
        assert.equal(both.status, 400);
        const long = await post(url, "/generate", {
          input_ids: Array.from({ length: 250 }, (_, i) => i + 10),
          sampling_params: { max_new_tokens: 10 },
        });
        assert.equal(long.status, 400, "beyond --context-length");
        const badTemp = await post(url, "/generate", {
          text: "a",
          sampling_params: { temperature: "hot" },
        });
        assert.equal(badTemp.status, 400);
        assert.match(JSON.stringify(badTemp.json), /temperature/);
      });

      await t.step(
        "flush_cache: refused while a request runs, then empties the cache",
        async () => {
          assert.ok(await metric(url, "minisgl_kv_pages_cached") > 0);
          const ctrl = new AbortController();
          const res = await fetch(`${url}/generate`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              text: "Hello",
              sampling_params: { max_new_tokens: 200, ignore_eos: true },
              stream: true,
            }),
            signal: ctrl.signal,
          });
          const reader = res.body!.getReader();
          await reader.read(); // the request is running
          const busy = await fetch(`${url}/flush_cache`, { method: "POST" });
          assert.equal(busy.status, 400);
          await busy.body?.cancel();
          ctrl.abort();
          await reader.cancel().catch(() => {});
          // The server notices the disconnect and frees the request.
          let status = 0;
          for (let i = 0; i < 100 && status !== 200; i++) {
            await new Promise((r) => setTimeout(r, 50));
            const r = await fetch(`${url}/flush_cache`, { method: "POST" });
            status = r.status;
            await r.body?.cancel();
          }
          assert.equal(status, 200);
          assert.equal(await metric(url, "minisgl_kv_pages_cached"), 0);
          const again = await post(url, "/generate", {
            input_ids: textIds,
            sampling_params: greedy,
          });
          assert.equal((again.json.meta_info as { cached_tokens: number }).cached_tokens, 0);
        },
      );

      await t.step("health_generate and tokenizer_info", async () => {
        const h = await fetch(`${url}/health_generate`);
        assert.equal(h.status, 200);
        await h.body?.cancel();
        const ti = await (await fetch(`${url}/tokenizer_info`)).json();
        assert.equal(ti.eos_token, "<|im_end|>");
        assert.equal(typeof ti.chat_template, "string");
        assert.equal(ti.added_tokens_decoder, undefined);
      });

      await t.step("openai client: return_tokens_as_token_ids", async () => {
        const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
        const r = await client.completions.create({
          model: "tiny-qwen3",
          prompt: textIds,
          max_tokens: 8,
          temperature: 0,
          logprobs: 2,
          // @ts-expect-error: vLLM's extension, not in the client's types
          ignore_eos: true,
          return_tokens_as_token_ids: true,
        });
        const plain = await post(url, "/generate", { input_ids: textIds, sampling_params: greedy });
        const tokens = r.choices[0].logprobs!.tokens!;
        assert.deepEqual(tokens, (plain.json.output_ids as number[]).map((id) => `token_id:${id}`));
        for (const top of r.choices[0].logprobs!.top_logprobs!) {
          assert.ok(Object.keys(top).every((k) => /^token_id:\d+$/.test(k)));
        }
        const chat = await client.chat.completions.create({
          model: "tiny-qwen3",
          messages: [{ role: "user", content: "Hi" }],
          max_tokens: 4,
          logprobs: true,
          top_logprobs: 2,
          // @ts-expect-error: vLLM's extension, not in the client's types
          return_tokens_as_token_ids: true,
        });
        for (const c of chat.choices[0].logprobs!.content!) assert.match(c.token, /^token_id:\d+$/);
      });
    } finally {
      await server.stop();
    }
  },
);
