/**
 * The model's generation_config.json supplies the sampling defaults a request leaves out
 * (tiny-qwen3's are Qwen3's: temperature 0.6, top_p 0.95, top_k 20), logged at start; a
 * request's own values win; --generation-config ignore turns it off.
 */

import assert from "node:assert/strict";
import { post, startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

const PROMPT = "Tell me a story";

async function sample(url: string, extra: Record<string, unknown>): Promise<number[]> {
  const r = await post(url, "/generate", {
    text: PROMPT,
    sampling_params: { max_new_tokens: 24, ignore_eos: true, sampling_seed: 7, ...extra },
  });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.output_ids as number[];
}

async function completion(url: string, extra: Record<string, unknown>): Promise<string> {
  const r = await post(url, "/v1/completions", {
    prompt: PROMPT,
    max_tokens: 24,
    seed: 7,
    ignore_eos: true,
    ...extra,
  });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return (r.json.choices as { text: string }[])[0].text;
}

const QWEN = { temperature: 0.6, top_p: 0.95, top_k: 20 };
const PLAIN = { temperature: 1, top_p: 1, top_k: -1 };

Deno.test(
  "generation_config.json: defaults applied, logged, overridden, ignorable",
  opts,
  async () => {
    const auto = await startServerProcess();
    let withDefaults: number[], explicitQwen: number[], explicitPlain: number[];
    let chatDefault: string, chatQwen: string;
    try {
      withDefaults = await sample(auto.url, {});
      explicitQwen = await sample(auto.url, QWEN);
      explicitPlain = await sample(auto.url, PLAIN);
      chatDefault = await completion(auto.url, {});
      chatQwen = await completion(auto.url, QWEN);
      // A request's own value wins over the model's default.
      const greedy = await sample(auto.url, { temperature: 0 });
      assert.deepEqual(await sample(auto.url, { ...QWEN, temperature: 0 }), greedy);
    } finally {
      await auto.stop();
    }
    assert.match(
      auto.stderr(),
      /sampling defaults from generation_config\.json: .*temperature=0\.6/,
    );
    assert.deepEqual(withDefaults, explicitQwen, "no sampling params = the model's defaults");
    assert.notDeepEqual(explicitQwen, explicitPlain, "the defaults change the sampling");
    assert.equal(chatDefault, chatQwen, "/v1/completions applies them too");

    const ignore = await startServerProcess(["--generation-config", "ignore"]);
    try {
      assert.deepEqual(await sample(ignore.url, {}), explicitPlain);
      assert.doesNotMatch(ignore.stderr(), /sampling defaults from generation_config/);
    } finally {
      await ignore.stop();
    }
  },
);
