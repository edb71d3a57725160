/**
 * The Vercel AI SDK against the server: `generateObject` (npm `ai` with
 * `@ai-sdk/openai-compatible`, structured outputs on, so it sends response_format
 * json_schema from a zod schema) on the tiny random Qwen3, for several seeds. Only the
 * constraint can make that model's output an object the zod schema accepts; the SDK
 * validates it and throws NoObjectGeneratedError otherwise (likewise `generateText` with
 * `Output.object`, which ai 7 recommends instead). Without structured outputs the
 * SDK sends json_object and keeps the schema to itself: the object must still parse.
 */
import assert from "node:assert/strict";
import { generateObject, generateText, Output } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";
import { startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

const Person = z.object({
  name: z.string().max(8),
  age: z.number().int().min(0).max(130),
  pets: z.array(z.enum(["cat", "dog"])).max(2),
  home: z.object({ zip: z.string().regex(/^[0-9]{5}$/) }),
});

Deno.test(
  "Vercel AI SDK generateObject returns an object the zod schema accepts",
  opts,
  async () => {
    const server = await startServerProcess();
    try {
      const provider = (structured: boolean) =>
        createOpenAICompatible({
          name: "minisgl",
          baseURL: `${server.url}/v1`,
          apiKey: "unused",
          supportsStructuredOutputs: structured,
        });
      const structured = provider(true);
      for (const seed of [1, 2, 3, 4]) {
        const { object, finishReason } = await generateObject({
          model: structured.chatModel("tiny-qwen3"),
          schema: Person,
          prompt: "Describe a person.",
          seed,
          maxOutputTokens: 150,
          maxRetries: 0,
        });
        assert.equal(finishReason, "stop");
        assert.deepEqual(Person.parse(object), object);
      }
      // generateObject's successor in ai 5+: generateText with an object output.
      const { output, finishReason } = await generateText({
        model: structured.chatModel("tiny-qwen3"),
        output: Output.object({ schema: Person }),
        prompt: "Describe a person.",
        seed: 9,
        maxOutputTokens: 150,
        maxRetries: 0,
      });
      assert.equal(finishReason, "stop");
      assert.deepEqual(Person.parse(output), output);
      // json_object mode: any object (a short one: +100 on `{}` (id 6257) ensures it ends).
      const { object } = await generateObject({
        model: provider(false).chatModel("tiny-qwen3"),
        output: "no-schema",
        prompt: "Anything as JSON.",
        seed: 5,
        maxOutputTokens: 50,
        maxRetries: 0,
        providerOptions: { minisgl: { logit_bias: { "6257": 100 } } },
      });
      assert.ok(object !== null && typeof object === "object" && !Array.isArray(object));
    } finally {
      await server.stop();
    }
  },
);
