/**
 * Unit tests of the server's pure parts: stop strings, detokenization with stops (real
 * Qwen3 tokenizer), request validation, SSE framing, errors, metrics, stream merging.
 */

import assert from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { textTokenizer } from "../src/text/tokenizer_port.ts";
import { StopMatcher } from "../src/text/stop.ts";
import { TextAssembler } from "../src/text/textgen.ts";
import { parseChatRequest, parseCompletionRequest, parseJsonObject } from "../src/server/openai.ts";
import { ApiError, errorResponse } from "../src/server/errors.ts";
import { SSE_DONE, sseData, sseResponse } from "../src/server/sse.ts";
import { Histogram, ServerMetrics } from "../src/server/metrics.ts";
import { completionLogprobs, mergeStreams, usageJson } from "../src/server/format.ts";
import { readJsonBody } from "../src/server/app.ts";

/** Feeds pieces through a matcher; returns the emitted text and the stop. */
function runMatcher(stops: string[], pieces: string[]): { out: string; stop: string | null } {
  const m = new StopMatcher(stops);
  let out = "";
  for (const p of pieces) {
    const r = m.push(p);
    out += r.text;
    if (r.stop !== null) return { out, stop: r.stop };
  }
  return { out: out + m.flush(), stop: null };
}

Deno.test("stop matcher: a stop string split across pieces never reaches the output", () => {
  assert.deepEqual(runMatcher(["END"], ["hello E", "N", "D world"]), {
    out: "hello ",
    stop: "END",
  });
  assert.deepEqual(runMatcher(["END"], ["hello E", "NX"]), { out: "hello ENX", stop: null });
  // Held-back prefix released at the end of the stream.
  assert.deepEqual(runMatcher(["END"], ["abc EN"]), { out: "abc EN", stop: null });
  // Earliest match wins among several stops.
  assert.deepEqual(runMatcher(["xyz", "b"], ["axyzb"]), { out: "a", stop: "xyz" });
  assert.deepEqual(runMatcher(["\n\n"], ["line\n", "\nnext"]), { out: "line", stop: "\n\n" });
  // No stops: everything passes at once.
  const m = new StopMatcher([]);
  assert.equal(m.push("E").text, "E");
});

Deno.test("stop matcher: only the part that can start a stop string is held back", () => {
  const m = new StopMatcher(["abcd"]);
  assert.equal(m.push("xxab").text, "xx");
  assert.equal(m.push("x").text, "abx");
  assert.equal(m.push("abc").text, "");
  assert.deepEqual(m.push("d tail"), { text: "", stop: "abcd" });
  assert.equal(m.push("more").text, "");
});

Deno.test("text assembler: emoji across tokens and stops across tokens (Qwen3 tokenizer)", async () => {
  const tok = textTokenizer(await loadTokenizer(await ensureTestModel("tiny-qwen3")));
  const text = "I like 🫠 and 你好 very much. STOP here";
  const ids = tok.encode(text, false);
  const prompt = tok.encode("Say:", false);
  // Without stops: joined pieces are the text, and no piece holds a broken character.
  const a = new TextAssembler(tok.detokenizer(prompt), []);
  let out = "";
  for (const id of ids) {
    const r = a.push([id]);
    assert.ok(!r.text.includes("\uFFFD"), `broken UTF-8 in piece ${JSON.stringify(r.text)}`);
    out += r.text;
  }
  out += a.flush();
  assert.equal(out, text);
  // A stop string spanning several tokens ends the text right before it.
  const b = new TextAssembler(tok.detokenizer(prompt), ["much. STOP"]);
  const r = b.push(ids);
  assert.equal(r.stop, "much. STOP");
  assert.equal(r.text, "I like 🫠 and 你好 very ");
  assert.ok(r.kept < ids.length && r.kept > 3);
  assert.equal(tok.decode(ids.slice(0, r.kept)).includes("STOP"), true);
  // The emoji's bytes are split over tokens; logprob bytes of those tokens join up.
  const crab = tok.encode("🫠", false);
  assert.ok(crab.length > 1, "the emoji spans several tokens");
  assert.deepEqual(crab.flatMap((id) => tok.tokenBytes(id)), [...new TextEncoder().encode("🫠")]);
});

Deno.test("validation: chat requests", () => {
  const v = 1000;
  const ok = parseChatRequest({
    model: "m",
    messages: [{ role: "system", content: "s" }, {
      role: "user",
      content: [{ type: "text", text: "a" }, { type: "text", text: "b" }],
    }],
    max_completion_tokens: 5,
    temperature: 0,
    stop: "x",
    n: 2,
    seed: 7,
    logprobs: true,
    top_logprobs: 3,
    stream: true,
    stream_options: { include_usage: true },
    some_unknown_field: { ignored: true },
  }, v);
  assert.deepEqual(ok.messages[1], { role: "user", content: "ab" });
  assert.equal(ok.maxTokens, 5);
  assert.deepEqual(ok.stop, ["x"]);
  assert.equal(ok.sampling.topLogprobs, 3);
  assert.equal(ok.includeUsage, true);
  const bad: [Record<string, unknown>, string][] = [
    [{ messages: [] }, "messages"],
    [{}, "messages"],
    [{ messages: "hi" }, "messages"],
    [{ messages: [{ role: "robot", content: "x" }] }, "messages[0].role"],
    [{ messages: [{ role: "user", content: 5 }] }, "messages[0].content"],
    [{ messages: [{ role: "user", content: "x" }], temperature: "hot" }, "temperature"],
    [{ messages: [{ role: "user", content: "x" }], temperature: 1e308 }, "temperature"],
    [{ messages: [{ role: "user", content: "x" }], max_tokens: 1.5 }, "max_tokens"],
    [{ messages: [{ role: "user", content: "x" }], max_tokens: 0 }, "max_tokens"],
    [{ messages: [{ role: "user", content: "x" }], n: 0 }, "n"],
    [{ messages: [{ role: "user", content: "x" }], seed: 1e300 }, "seed"],
    [{ messages: [{ role: "user", content: "x" }], stop: [1] }, "stop[0]"],
    [{ messages: [{ role: "user", content: "x" }], top_logprobs: 2 }, "top_logprobs"],
    [{ messages: [{ role: "user", content: "x" }], stop_token_ids: [v] }, "stop_token_ids[0]"],
    [{ messages: [{ role: "user", content: "x" }], stream: "yes" }, "stream"],
  ];
  for (const [body, param] of bad) {
    assert.throws(() => parseChatRequest(body, v), (e: unknown) => {
      assert.ok(e instanceof ApiError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.param, param, `${JSON.stringify(body)}: ${e.message}`);
      return true;
    });
  }
});

Deno.test("validation: completion requests", () => {
  const v = 100;
  assert.deepEqual(parseCompletionRequest({ prompt: "hi" }, v).prompts, ["hi"]);
  assert.deepEqual(parseCompletionRequest({ prompt: [1, 2] }, v).prompts, [[1, 2]]);
  assert.deepEqual(parseCompletionRequest({ prompt: [[1], [2, 3]] }, v).prompts, [[1], [2, 3]]);
  const e = parseCompletionRequest({ prompt: "x", echo: true, logprobs: 2, max_tokens: 0 }, v);
  assert.equal(e.sampling.promptLogprobs, true);
  assert.equal(e.sampling.topLogprobs, 2);
  assert.equal(e.maxTokens, 0);
  for (
    const [body, param] of [
      [{ prompt: [1, "a"] }, "prompt"],
      [{ prompt: [5, 100] }, "prompt[1]"],
      [{ prompt: [[1], [-1]] }, "prompt[1][0]"],
      [{ prompt: "" }, "prompt"],
      [{ prompt: 3 }, "prompt"],
      [{ prompt: "x", logprobs: 21 }, "logprobs"],
      [{ prompt: "x", max_tokens: -1 }, "max_tokens"],
    ] as [Record<string, unknown>, string][]
  ) {
    assert.throws(() => parseCompletionRequest(body, v), (err: unknown) => {
      assert.ok(err instanceof ApiError && err.status === 400 && err.param === param, String(err));
      return true;
    });
  }
  assert.throws(() => parseJsonObject("{bad"), (err: unknown) => (err as ApiError).status === 400);
  assert.throws(() => parseJsonObject("[1]"), (err: unknown) => (err as ApiError).status === 400);
});

Deno.test("request bodies: size limit and UTF-8", async () => {
  const req = (body: BodyInit) => new Request("http://x/", { method: "POST", body });
  assert.deepEqual(await readJsonBody(req('{"a":1}'), 100), { a: 1 });
  await assert.rejects(readJsonBody(req("x".repeat(200)), 100), (e: ApiError) => e.status === 413);
  await assert.rejects(
    readJsonBody(req(new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x7d])), 100),
    (e: ApiError) => e.status === 400 && /UTF-8/.test(e.message),
  );
  await assert.rejects(readJsonBody(req(""), 100), (e: ApiError) => e.status === 400);
});

Deno.test("errors and SSE framing are OpenAI-shaped", async () => {
  const res = errorResponse(new ApiError(404, "no such model", "model", "model_not_found"));
  assert.equal(res.status, 404);
  assert.deepEqual(await res.json(), {
    error: {
      message: "no such model",
      type: "invalid_request_error",
      param: "model",
      code: "model_not_found",
    },
  });
  assert.equal(errorResponse(new Error("boom")).status, 500);
  const dec = new TextDecoder();
  assert.equal(dec.decode(sseData({ a: 1 })), 'data: {"a":1}\n\n');
  assert.equal(dec.decode(SSE_DONE), "data: [DONE]\n\n");
  async function* frames() {
    yield sseData({ n: 1 });
    yield SSE_DONE;
  }
  const body = await sseResponse(frames(), () => {}).text();
  assert.equal(body, 'data: {"n":1}\n\ndata: [DONE]\n\n');
  // A client that goes away mid-stream triggers the cancel callback once.
  let cancelled = 0;
  async function* endless() {
    for (let i = 0;; i++) yield sseData({ i });
  }
  const r = sseResponse(endless(), () => cancelled++);
  const reader = r.body!.getReader();
  await reader.read();
  await reader.cancel();
  assert.equal(cancelled, 1);
});

Deno.test("metrics render Prometheus text with histograms", () => {
  const h = new Histogram("x_seconds", "help", [0.1, 1]);
  h.observe(0.05);
  h.observe(0.5);
  h.observe(5);
  const text = h.render();
  assert.match(text, /x_seconds_bucket\{le="0.1"\} 1\n/);
  assert.match(text, /x_seconds_bucket\{le="1"\} 2\n/);
  assert.match(text, /x_seconds_bucket\{le="\+Inf"\} 3\n/);
  assert.match(text, /x_seconds_count 3/);
  const m = new ServerMetrics();
  m.finish("stop");
  const all = m.render({
    numRequestsRunning: 2,
    numRequestsWaiting: 1,
    kvPagesTotal: 10,
    kvPagesFree: 5,
    kvPagesCached: 3,
    kvPagesInUse: 2,
    promptTokensTotal: 7,
    cachedTokensTotal: 1,
    generatedTokensTotal: 9,
    retractionsTotal: 0,
  }, 3);
  assert.match(all, /^minisgl_server_requests_in_flight 3$/m);
  assert.match(all, /^minisgl_num_requests_running 2$/m);
  assert.match(all, /^minisgl_requests_finished_total\{reason="stop"\} 1$/m);
  assert.match(all, /^# TYPE minisgl_time_to_first_token_seconds histogram$/m);
  assert.match(all, /^# TYPE minisgl_inter_token_latency_seconds histogram$/m);
});

Deno.test("usage counts each prompt once; merged streams interleave and end", async () => {
  const u = (p: number, c: number, k: number) => ({
    promptTokens: p,
    completionTokens: c,
    cachedTokens: k,
  });
  assert.deepEqual(
    usageJson([{ prompt: 0, usage: u(5, 3, 0) }, { prompt: 0, usage: u(5, 4, 5) }, {
      prompt: 1,
      usage: u(2, 1, 0),
    }]),
    {
      prompt_tokens: 7,
      completion_tokens: 8,
      total_tokens: 15,
      prompt_tokens_details: { cached_tokens: 0 },
    },
  );
  async function* gen(tag: string, n: number) {
    for (let i = 0; i < n; i++) {
      await new Promise((r) => setTimeout(r, 1));
      yield `${tag}${i}`;
    }
  }
  const seen: string[] = [];
  for await (const { index, value } of mergeStreams([gen("a", 3), gen("b", 2)])) {
    seen.push(`${index}:${value}`);
  }
  assert.deepEqual(seen.filter((s) => s.startsWith("0:")), ["0:a0", "0:a1", "0:a2"]);
  assert.deepEqual(seen.filter((s) => s.startsWith("1:")), ["1:b0", "1:b1"]);
});

Deno.test("completion logprobs: offsets, nulls and top alternatives", async () => {
  const tok = textTokenizer(await loadTokenizer(await ensureTestModel("tiny-qwen3")));
  const ids = tok.encode("Hello world", false);
  const lp = completionLogprobs(tok, [
    { id: ids[0], logprob: null, top: null },
    { id: ids[1], logprob: -1.5, top: [{ id: ids[0], logprob: -0.5 }] },
  ], 0);
  assert.deepEqual(lp.tokens, ["Hello", " world"]);
  assert.deepEqual(lp.token_logprobs, [null, -1.5]);
  assert.deepEqual(lp.top_logprobs, [null, { "Hello": -0.5, " world": -1.5 }]);
  assert.deepEqual(lp.text_offset, [0, 5]);
});
