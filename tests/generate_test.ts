/**
 * The offline API (LLM / generate) on the CPU backend with the tiny random Qwen3.
 */

import assert from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { LLM } from "../src/llm/generate.ts";

Deno.test({
  name: "generate: text and id prompts, determinism, stop strings, prompt logprobs",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const llm = await LLM.load(await ensureTestModel("tiny-qwen3"), {
      device: "cpu",
      cpuThreads: 1,
      numPages: 2048,
    });
    try {
      const ids = llm.tokenizer.encode("Once upon a time", true);
      const greedy = { temperature: 0, maxTokens: 8, ignoreEos: true };
      const [a, b, c] = await llm.generate(["Once upon a time", ids, "Another prompt"], greedy);
      assert.equal(a.text, b.text);
      assert.deepEqual(a.tokenIds, b.tokenIds);
      assert.equal(a.tokenIds.length, 8);
      assert.equal(a.finishReason, "length");
      assert.equal(a.promptTokens, ids.length);
      assert.equal(a.completionTokens, 8);
      assert.equal(c.tokenIds.length, 8);
      assert.equal(llm.tokenizer.decode(a.tokenIds), a.text);

      // Seeded sampling is reproducible.
      const seeded = { temperature: 1, seed: 5, maxTokens: 8, ignoreEos: true };
      const [s1] = await llm.generate(["Hi"], seeded);
      const [s2] = await llm.generate(["Hi"], seeded);
      assert.equal(s1.text, s2.text);

      // A stop string cuts the text before it.
      const stop = a.text.slice(3, 6);
      const [st] = await llm.generate(["Once upon a time"], greedy, { stop: [stop] });
      assert.equal(st.text, a.text.slice(0, a.text.indexOf(stop)));
      assert.equal(st.finishReason, "stop");

      // max_tokens 0 with prompt logprobs: scores of the prompt only, the first null.
      const [pl] = await llm.generate([ids], { maxTokens: 0, promptLogprobs: true });
      assert.equal(pl.text, "");
      assert.equal(pl.promptLogprobs!.length, ids.length);
      assert.equal(pl.promptLogprobs![0], null);
      assert.ok(pl.promptLogprobs!.slice(1).every((x) => typeof x === "number" && x <= 0));

      // Chat through the template.
      const [chat] = await llm.chat([[{ role: "user", content: "Hello" }]], greedy);
      assert.equal(chat.completionTokens, 8);
    } finally {
      await llm.shutdown();
    }
  },
});
