/**
 * The API key guards every route but /health and /metrics, comes from --api-key,
 * --api-key-file or $MINISGL_API_KEY, and is compared in constant time. A chat template
 * that does not parse stops start-up with one line. Real server processes, CPU backend.
 */

import assert from "node:assert/strict";
import { sameSecret } from "../src/server/app.ts";
import { resolveApiKey } from "../src/cli/flags.ts";
import { post, startServerProcess, tinyModelWith } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test("api key: compare and resolve", () => {
  assert.ok(sameSecret("Bearer k1", "Bearer k1"));
  assert.ok(!sameSecret("Bearer k2", "Bearer k1"));
  assert.ok(!sameSecret("Bearer k1x", "Bearer k1"));
  assert.ok(!sameSecret("", "Bearer k1"));
  const none = { apiKey: null, apiKeyFile: null };
  assert.equal(resolveApiKey(none, () => undefined), null);
  assert.equal(resolveApiKey(none, () => " from-env\n"), "from-env");
  assert.equal(resolveApiKey({ ...none, apiKey: "flag" }, () => "env"), "flag");
  assert.throws(() => resolveApiKey({ ...none, apiKeyFile: "/no/such/file" }), /--api-key-file/);
});

Deno.test("api key: every route but the probes, from a file or the environment", opts, async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/key`, "sk-from-file\n");
  const fromFile = await startServerProcess(["--api-key-file", `${dir}/key`]);
  const fromEnv = await startServerProcess([], { env: { MINISGL_API_KEY: "sk-from-env" } });
  try {
    for (const [server, key] of [[fromFile, "sk-from-file"], [fromEnv, "sk-from-env"]] as const) {
      const url = server.url;
      const auth = { authorization: `Bearer ${key}` };
      for (const path of ["/tokenize", "/detokenize", "/v1/tokenize", "/v1/completions"]) {
        const body = path.includes("detok") ? { tokens: [100] } : { prompt: "hi", max_tokens: 1 };
        assert.equal((await post(url, path, body)).status, 401, path);
        assert.equal((await post(url, path, body, { authorization: "Bearer no" })).status, 401);
        assert.equal((await post(url, path, body, auth)).status, 200, path);
      }
      for (const path of ["/health", "/metrics"]) {
        const r = await fetch(`${url}${path}`);
        await r.body?.cancel();
        assert.equal(r.status, 200, path);
      }
      // The key is not on the command line.
      const cmdline = await Deno.readTextFile(`/proc/${server.child.pid}/cmdline`);
      assert.ok(!cmdline.includes(key));
    }
  } finally {
    await fromFile.stop();
    await fromEnv.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chat template: one that does not parse stops start-up in one line", opts, async () => {
  const model = await tinyModelWith({});
  const cfgPath = `${model}/tokenizer_config.json`;
  const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
  await Deno.writeTextFile(
    cfgPath,
    JSON.stringify({ ...cfg, chat_template: "{% for m in messages %}{{ m.content }" }),
  );
  try {
    const outcome = await startServerProcess([], { modelDir: model }).then(
      (s) => s.stop().then(() => "started"),
      (e: Error) => e.message,
    );
    assert.match(outcome, /error: .*chat_template does not parse/);
    assert.equal(outcome.match(/error:/g)?.length, 1, outcome);
  } finally {
    await Deno.remove(model, { recursive: true });
  }
});
