/**
 * SGLang's / vLLM's flag names are aliases of ours; --context-length caps the context and
 * --dtype float32 runs on the CPU backend.
 */
import assert from "node:assert/strict";
import { FlagError, helpText, parseFlags } from "../src/cli/flags.ts";
import { LLM } from "../src/llm/generate.ts";
import { ensureTestModel, GREEDY_PARAMS } from "./fixtures.ts";

Deno.test("flags: SGLang aliases parse as our flags", () => {
  const ours = parseFlags([
    "--model=/m",
    "--tp=1",
    "--mem-fraction=0.5",
    "--attn=native",
    "--cache=naive",
    "--shell",
  ]);
  const sglang = parseFlags([
    "--model-path=/m",
    "--tp-size=1",
    "--mem-fraction-static=0.5",
    "--attention-backend=native",
    "--cache-type=naive",
    "--shell-mode",
  ]);
  assert.deepEqual(sglang, ours);
  assert.equal(parseFlags(["--tensor-parallel-size", "1"]).tp, 1);
  assert.equal(ours.model, "/m");
  assert.equal(ours.memFraction, 0.5);
  assert.equal(ours.cache, "naive");
  assert.equal(ours.shell, true);
  // Validation applies to the alias too, and two spellings must agree.
  assert.throws(() => parseFlags(["--cache-type", "lru"]), /--cache must be one of/);
  assert.throws(
    () => parseFlags(["--model", "/a", "--model-path", "/b"]),
    (e) => e instanceof FlagError && /--model-path and --model/.test(e.message),
  );
  assert.equal(parseFlags(["--model", "/a", "--model-path", "/a"]).model, "/a");
  assert.match(helpText(), /--model-path/);
  assert.match(helpText(), /--mem-fraction-static/);
});

Deno.test("flags: --context-length and --dtype float32", () => {
  assert.equal(parseFlags([]).contextLength, null);
  assert.equal(parseFlags(["--context-length", "100"]).contextLength, 100);
  assert.throws(() => parseFlags(["--context-length", "0"]), /--context-length must be/);
  assert.equal(parseFlags(["--dtype", "float32"]).dtype, "float32");
});

Deno.test("engine: contextLength caps the context; float32 weights decode like bf16 on the CPU", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const outs: number[][] = [];
  for (const dtype of ["auto", "float32"] as const) {
    const llm = await LLM.load(dir, {
      device: "cpu",
      cudaGraphMaxBs: 0,
      numPages: 256,
      dtype,
      contextLength: 40,
    });
    try {
      assert.equal(llm.engine.info.maxContextLen, 40);
      const [r] = await llm.generate([[5, 6, 7, 8]], { ...GREEDY_PARAMS, maxTokens: 12 });
      outs.push(r.tokenIds);
      // Beyond the cap: rejected.
      await assert.rejects(
        llm.generate([Array.from({ length: 38 }, (_, i) => i + 1)], {
          ...GREEDY_PARAMS,
          maxTokens: 8,
        }),
      );
    } finally {
      await llm.shutdown();
    }
  }
  // bf16 weights widen to float32 exactly, and CPU activations are float32 either way.
  assert.deepEqual(outs[1], outs[0]);
});

Deno.test("flags: --kv-cache-dtype takes auto, fp8 and fp8_e4m3 (vLLM's and SGLang's names)", () => {
  assert.equal(parseFlags([]).kvCacheDtype, "auto");
  assert.equal(parseFlags(["--kv-cache-dtype", "fp8"]).kvCacheDtype, "fp8_e4m3");
  assert.equal(parseFlags(["--kv-cache-dtype=fp8_e4m3"]).kvCacheDtype, "fp8_e4m3");
  assert.throws(
    () => parseFlags(["--kv-cache-dtype", "fp8_e5m2"]),
    (e) => e instanceof FlagError && /fp8_e5m2 is not supported/.test(e.message),
  );
  assert.match(helpText(), /--kv-cache-dtype/);
});
