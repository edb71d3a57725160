/**
 * Structured outputs through the server and the official `openai` npm client, on the tiny
 * random Qwen3 (CPU backend): only the constraint can make its output valid. For several
 * seeds: json_schema output parses and validates (streamed and not, finish_reason "stop"),
 * json_object gives an object, a regex (completions, SGLang's extra field) matches in full,
 * an EBNF grammar (recursive) parses on chat, completions and /generate,
 * logit_bias +100 forces its token, and bad grammars are 400s naming the field.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import { post, startServerProcess } from "./server_harness.ts";
import { schemaProblem } from "./json_schema_check.ts";
import { parseToolCalls } from "../src/server/tools.ts";
import { isList, LIST_EBNF } from "./ebnf_check.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

const SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 8 },
    age: { type: "integer", minimum: 0, maximum: 130 },
    pets: { type: "array", items: { enum: ["cat", "dog"] }, maxItems: 2 },
    home: {
      type: "object",
      properties: { zip: { type: "string", pattern: "[0-9]{5}" } },
      required: ["zip"],
      additionalProperties: false,
    },
  },
  required: ["name", "age", "home"],
  additionalProperties: false,
};

Deno.test(
  "structured outputs: json_schema, json_object, regex, logit_bias, errors",
  opts,
  async (t) => {
    const server = await startServerProcess();
    const url = server.url;
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
    const messages = [{ role: "user" as const, content: "Describe a person." }];
    const responseFormat = {
      type: "json_schema" as const,
      json_schema: { name: "person", schema: SCHEMA, strict: true },
    };
    try {
      await t.step("json_schema, not streamed, many seeds", async () => {
        const runs = await Promise.all(
          [1, 2, 3, 4, 5, 6].map((seed) =>
            client.chat.completions.create({
              model: "tiny-qwen3",
              messages,
              seed,
              temperature: 1,
              max_tokens: 120,
              response_format: responseFormat,
            })
          ),
        );
        for (const r of runs) {
          const c = r.choices[0];
          assert.equal(c.finish_reason, "stop", c.message.content ?? "");
          const v = JSON.parse(c.message.content!);
          assert.equal(schemaProblem(v, SCHEMA), null, c.message.content!);
        }
      });

      await t.step("json_schema, streamed", async () => {
        for (const seed of [7, 8, 9]) {
          const stream = await client.chat.completions.create({
            model: "tiny-qwen3",
            messages,
            seed,
            max_tokens: 120,
            response_format: responseFormat,
            stream: true,
          });
          let text = "", finish: string | null = null;
          for await (const chunk of stream) {
            text += chunk.choices[0]?.delta?.content ?? "";
            finish = chunk.choices[0]?.finish_reason ?? finish;
          }
          assert.equal(finish, "stop", text);
          assert.equal(schemaProblem(JSON.parse(text), SCHEMA), null, text);
        }
      });

      await t.step("json_object gives an object", async () => {
        // Any object: strings and members are unbounded and the random model's logits are
        // peaked, so alone it may run on; logit_bias +100 on closing tokens (", "}, }, }}:
        // Qwen ids from tokenizer.json) makes it close where the grammar allows them (bias
        // and mask compose: a biased token the grammar forbids stays out).
        const runs = await Promise.all(
          [1, 2, 3, 4, 5, 6].map((seed) =>
            client.chat.completions.create({
              model: "tiny-qwen3",
              messages,
              seed,
              max_tokens: 200,
              response_format: { type: "json_object" },
              logit_bias: { "1": 100, "92": 100, "9207": 100, "3417": 100 },
            })
          ),
        );
        for (const r of runs) {
          const c = r.choices[0];
          assert.equal(c.finish_reason, "stop", c.message.content ?? "");
          const v = JSON.parse(c.message.content!);
          assert.ok(v !== null && typeof v === "object" && !Array.isArray(v), c.message.content!);
        }
      });

      await t.step("regex on completions (SGLang's extra field) matches in full", async () => {
        const re = "(red|green|blue) [0-9]{2,4}( items)?";
        for (const seed of [1, 2, 3, 4, 5]) {
          const r = await client.completions.create({
            model: "tiny-qwen3",
            prompt: "Colour:",
            seed,
            max_tokens: 30,
            regex: re,
          } as OpenAI.CompletionCreateParamsNonStreaming);
          const c = r.choices[0];
          assert.equal(c.finish_reason, "stop", c.text);
          assert.match(c.text, new RegExp(`^(?:${re})$`));
        }
      });

      await t.step("/generate takes sampling_params.regex", async () => {
        const r = await post(url, "/generate", {
          text: "x",
          sampling_params: { max_new_tokens: 20, regex: "[A-Z]{3}-[0-9]{3}" },
        });
        assert.equal(r.status, 200);
        assert.match(r.json.text as string, /^[A-Z]{3}-[0-9]{3}$/);
      });

      await t.step("ebnf (SGLang's extra field) on chat, completions, /generate", async () => {
        // Recursive (lists nest in lists): the output must parse under it. Rules nest as deep
        // as the automaton's call stack, so the grammar must let a random model finish: in
        // ARITH_EBNF every "(" opens more terms than a random pick closes, and its text grows
        // to max_tokens; in LIST_EBNF a list holds a list in under one item of three.
        const chats = await Promise.all(
          [1, 2, 3, 4, 5, 6].map((seed) =>
            client.chat.completions.create({
              model: "tiny-qwen3",
              messages,
              seed,
              max_tokens: 120,
              ebnf: LIST_EBNF,
            } as OpenAI.ChatCompletionCreateParamsNonStreaming)
          ),
        );
        for (const r of chats) {
          const c = r.choices[0];
          assert.equal(c.finish_reason, "stop", c.message.content ?? "");
          assert.ok(isList(c.message.content!), c.message.content!);
        }
        for (const seed of [7, 8, 9]) {
          const r = await client.completions.create({
            model: "tiny-qwen3",
            prompt: "List:",
            seed,
            max_tokens: 120,
            ebnf: LIST_EBNF,
          } as OpenAI.CompletionCreateParamsNonStreaming);
          assert.equal(r.choices[0].finish_reason, "stop", r.choices[0].text);
          assert.ok(isList(r.choices[0].text), r.choices[0].text);
        }
        const g = await post(url, "/generate", {
          text: "x",
          sampling_params: { max_new_tokens: 120, ebnf: LIST_EBNF },
        });
        assert.equal(g.status, 200);
        assert.ok(isList(g.json.text as string), g.json.text as string);
        const bad = await post(url, "/generate", {
          text: "x",
          sampling_params: { ebnf: "root ::= (" },
        });
        assert.equal(bad.status, 400);
        assert.match(JSON.stringify(bad.json), /sampling_params\.ebnf/);
      });

      await t.step("logit_bias +100 forces its token; -100 bans it", async () => {
        const r = await client.completions.create({
          model: "tiny-qwen3",
          prompt: "Hello",
          max_tokens: 6,
          temperature: 1,
          seed: 3,
          logit_bias: { "1234": 100 },
          logprobs: 1,
          return_tokens_as_token_ids: true,
        } as OpenAI.CompletionCreateParamsNonStreaming);
        const toks = r.choices[0].logprobs!.tokens!;
        assert.deepEqual(toks, Array(6).fill("token_id:1234"));
        const greedy = await client.completions.create({
          model: "tiny-qwen3",
          prompt: "Hello",
          max_tokens: 1,
          temperature: 0,
          logprobs: 1,
          return_tokens_as_token_ids: true,
        } as OpenAI.CompletionCreateParamsNonStreaming);
        const first = greedy.choices[0].logprobs!.tokens![0];
        const id = first.split(":")[1];
        const banned = await client.completions.create({
          model: "tiny-qwen3",
          prompt: "Hello",
          max_tokens: 1,
          temperature: 0,
          logit_bias: { [id]: -100 },
          logprobs: 1,
          return_tokens_as_token_ids: true,
        } as OpenAI.CompletionCreateParamsNonStreaming);
        assert.notEqual(banned.choices[0].logprobs!.tokens![0], first);
      });

      const WEATHER = {
        type: "object",
        properties: {
          city: { type: "string", maxLength: 12 },
          unit: { enum: ["c", "f"] },
          days: { type: "integer", minimum: 1, maximum: 7 },
        },
        required: ["city", "unit"],
        additionalProperties: false,
      };
      const TIME = {
        type: "object",
        properties: { zone: { type: "string", pattern: "UTC[+-][0-9]{1,2}" } },
        required: ["zone"],
        additionalProperties: false,
      };
      const tools = [
        { type: "function" as const, function: { name: "get_weather", parameters: WEATHER } },
        { type: "function" as const, function: { name: "get_time", parameters: TIME } },
      ];
      const schemaOf: Record<string, unknown> = { get_weather: WEATHER, get_time: TIME };
      const checkCalls = (
        calls: OpenAI.ChatCompletionMessageToolCall[] | undefined,
        only?: string,
      ) => {
        assert.ok(calls && calls.length >= 1, "no tool calls");
        for (const c of calls) {
          assert.equal(c.type, "function");
          assert.match(c.id, /^call_/);
          const fn = (c as OpenAI.ChatCompletionMessageFunctionToolCall).function;
          if (only) assert.equal(fn.name, only);
          assert.equal(
            schemaProblem(JSON.parse(fn.arguments), schemaOf[fn.name]),
            null,
            fn.arguments,
          );
        }
        assert.equal(new Set(calls.map((c) => c.id)).size, calls.length);
      };

      await t.step("tool_choice required / named give valid tool_calls", async () => {
        for (const seed of [1, 2, 3, 4]) {
          const r = await client.chat.completions.create({
            model: "tiny-qwen3",
            messages: [{ role: "user", content: "Weather in Paris?" }],
            seed,
            max_tokens: 200,
            tools,
            tool_choice: seed % 2
              ? "required"
              : { type: "function", function: { name: "get_time" } },
          });
          const c = r.choices[0];
          // The tools went into the template (Qwen's "# Tools" system block).
          assert.ok(r.usage!.prompt_tokens > 100, `${r.usage!.prompt_tokens} prompt tokens`);
          assert.equal(c.finish_reason, "tool_calls", JSON.stringify(c.message));
          checkCalls(c.message.tool_calls, seed % 2 ? undefined : "get_time");
        }
      });

      await t.step(
        "tool calls streamed in OpenAI's delta shape; tool results accepted",
        async () => {
          const stream = await client.chat.completions.create({
            model: "tiny-qwen3",
            messages: [
              { role: "user", content: "Weather?" },
              {
                role: "assistant",
                content: null,
                tool_calls: [{
                  id: "call_1",
                  type: "function",
                  function: { name: "get_weather", arguments: '{"city":"Oslo","unit":"c"}' },
                }],
              },
              { role: "tool", tool_call_id: "call_1", content: '{"temp": 3}' },
            ],
            seed: 5,
            max_tokens: 200,
            tools,
            tool_choice: { type: "function", function: { name: "get_weather" } },
            stream: true,
          });
          const acc: {
            id: string;
            type: "function";
            function: { name: string; arguments: string };
          }[] = [];
          let finish: string | null = null;
          for await (const chunk of stream) {
            for (const d of chunk.choices[0]?.delta?.tool_calls ?? []) {
              acc[d.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } };
              if (d.id) acc[d.index].id = d.id;
              acc[d.index].function.name += d.function?.name ?? "";
              acc[d.index].function.arguments += d.function?.arguments ?? "";
            }
            finish = chunk.choices[0]?.finish_reason ?? finish;
          }
          assert.equal(finish, "tool_calls");
          checkCalls(acc, "get_weather");
        },
      );

      await t.step("tool_choice none leaves the text alone", async () => {
        const r = await client.chat.completions.create({
          model: "tiny-qwen3",
          messages,
          seed: 1,
          max_tokens: 8,
          tools,
          tool_choice: "none",
        });
        assert.equal(r.choices[0].message.tool_calls, undefined);
        assert.equal(r.choices[0].finish_reason, "length");
      });

      await t.step("bad grammars and biases are 400s naming the field", async () => {
        const cases: [Record<string, unknown>, string][] = [
          [{
            response_format: {
              type: "json_schema",
              json_schema: { name: "x", schema: { type: "wat" } },
            },
          }, "response_format.json_schema.schema"],
          [{ response_format: { type: "xml" } }, "response_format.type"],
          [{ regex: "(ab" }, "regex"],
          [{ ebnf: "root ::= 'a' missing" }, "ebnf"],
          [{ ebnf: 42 }, "ebnf"],
          [{ logit_bias: { "abc": 1 } }, "logit_bias"],
          [{ logit_bias: { "5": 101 } }, "logit_bias"],
        ];
        for (const [extra, param] of cases) {
          const r = await post(url, "/v1/chat/completions", { messages, max_tokens: 4, ...extra });
          assert.equal(r.status, 400, JSON.stringify(extra));
          const err = r.json.error as Record<string, unknown>;
          assert.equal(err.param, param, JSON.stringify(err));
        }
        const g = await post(url, "/generate", {
          text: "x",
          sampling_params: { json_schema: "{" },
        });
        assert.equal(g.status, 400);
        // Still serving.
        const ok = await client.chat.completions.create({
          model: "tiny-qwen3",
          messages,
          max_tokens: 2,
        });
        assert.equal(ok.choices.length, 1);
      });
    } finally {
      await server.stop();
    }
  },
);

Deno.test("tool calls: the model's own markup is parsed (tool_choice auto)", () => {
  const q = parseToolCalls(
    'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',
    "qwen",
  );
  assert.equal(q.content, "Let me check.");
  assert.deepEqual(q.calls.map((c) => [c.function.name, c.function.arguments]), [
    ["f", '{"a":1}'],
    ["g", "{}"],
  ]);
  assert.notEqual(q.calls[0].id, q.calls[1].id);
  const l = parseToolCalls('{"name": "f", "parameters": {"x": "y"}}', "llama3");
  assert.deepEqual(l.calls.map((c) => c.function.arguments), ['{"x":"y"}']);
  assert.equal(l.content, null);
  const none = parseToolCalls("no calls <tool_call>not json</tool_call>", "qwen");
  assert.equal(none.calls.length, 0);
  assert.equal(none.content, "no calls <tool_call>not json</tool_call>");
});
