/** Model folders: make-model output read back through the config and safetensors readers,
 *  the streaming/sharded writer, and the one-line errors for broken folders. */

import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { ensureTestModel } from "./fixtures.ts";
import { loadModelConfig, ModelError, parseModelConfig } from "../src/model/config.ts";
import {
  checkWeights,
  expectedWeights,
  SafetensorsFolder,
  toFloat64,
} from "../src/model/safetensors.ts";
import { writeSafetensors, writeSafetensorsModel } from "../src/model/safetensors_write.ts";
import { makeModel } from "../src/model/make_model.ts";
import { PRESETS } from "../src/model/presets.ts";

Deno.test("tiny-qwen3: config and weights round-trip", async () => {
  const dir = await ensureTestModel("tiny-qwen3");
  const cfg = await loadModelConfig(dir);
  assert.equal(cfg.arch, "qwen3");
  assert.equal(cfg.headDim, 32);
  assert.equal(cfg.numKvHeads, 2);
  assert.equal(cfg.qkNorm, true);
  assert.equal(cfg.attentionBias, false);
  assert.equal(cfg.tieWordEmbeddings, true);
  assert.deepEqual(cfg.eosTokenIds, [151645, 151643]);
  assert.equal(cfg.bosTokenId, 151643);
  assert.deepEqual(cfg.generation, { temperature: 0.6, topP: 0.95, topK: 20 });
  assert.equal(cfg.torchDtype, "bfloat16");

  const st = await SafetensorsFolder.open(dir);
  checkWeights(cfg, st);
  const want = expectedWeights(cfg);
  assert.equal(st.tensors.size, want.length);
  assert.ok(!st.tensors.has("lm_head.weight"));
  const emb = st.get("model.embed_tokens.weight");
  assert.deepEqual(emb.shape, [151936, 32]);
  assert.equal(emb.dtype, "BF16");
  // Values: embedding std 3/sqrt(hidden), norms around 1.
  const e = toFloat64(await st.readTensor(emb.name), "BF16");
  const std = Math.sqrt(e.reduce((a, b) => a + b * b, 0) / e.length);
  assert.ok(Math.abs(std / (3 / Math.sqrt(32)) - 1) < 0.01, `embedding std ${std}`);
  const n = toFloat64(await st.readTensor("model.norm.weight"), "BF16");
  assert.ok(n.every((v) => v > 0.4 && v < 1.6));
  // Sync read into a caller's (bigger) buffer gives the same bytes.
  const into = new Uint8Array(emb.byteLength + 16);
  const a = st.readTensorSync(emb.name, into);
  assert.equal(a.length, emb.byteLength);
  assert.deepEqual(a, await st.readTensor(emb.name));
  // A byte range is a slice of the tensor.
  assert.deepEqual(await st.readRange(emb.name, 64, 128), a.subarray(64, 192));
  assert.deepEqual(st.readRangeSync(emb.name, 64, 128), a.subarray(64, 192));
  assert.throws(() => st.readRangeSync(emb.name, emb.byteLength - 2, 4), RangeError);
});

Deno.test("every preset's config parses and describes the right shapes", () => {
  const sizes: Record<string, number> = {};
  for (const p of Object.values(PRESETS)) {
    const cfg = parseModelConfig(p.config, p.generationConfig, p.name);
    sizes[p.name] = expectedWeights(cfg).reduce((s, w) => s + w.shape.reduce((a, b) => a * b), 0);
  }
  assert.equal(sizes["qwen3-0.6b"], 596049920); // Qwen3-0.6B's parameter count
  assert.equal(sizes["llama-3.2-1b"], 1235814400); // Llama-3.2-1B's
  assert.equal(sizes["llama-3-8b"], 8030261248); // Meta-Llama-3-8B's
  for (const t of ["tiny-qwen3", "tiny-llama", "tiny-qwen2", "tiny-mistral"]) {
    assert.ok(sizes[t] * 2 < 17e6, `${t}: ${sizes[t] * 2} bytes`);
  }
  const llama = parseModelConfig(PRESETS["llama-3.2-1b"].config, null);
  assert.deepEqual(llama.ropeScaling, {
    type: "llama3",
    factor: 32,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  });
  assert.equal(parseModelConfig(PRESETS["tiny-qwen2"].config, null).attentionBias, true);
  assert.equal(parseModelConfig(PRESETS["tiny-mistral"].config, null).tieWordEmbeddings, false);
});

Deno.test("config: newer rope_parameters spelling, eos union, sliding window note", () => {
  const base = { ...PRESETS["tiny-llama"].config } as Record<string, unknown>;
  delete base.rope_scaling;
  delete base.rope_theta;
  base.rope_parameters = {
    rope_type: "llama3",
    rope_theta: 500000,
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 64,
  };
  base.eos_token_id = [128001, 128009];
  base.sliding_window = 4096;
  const cfg = parseModelConfig(base, { eos_token_id: 128008 });
  assert.equal(cfg.ropeTheta, 500000);
  assert.equal(cfg.ropeScaling?.factor, 8);
  assert.deepEqual(cfg.eosTokenIds, [128001, 128009, 128008]);
  assert.equal(cfg.notes.length, 1);
  assert.match(cfg.notes[0], /sliding_window 4096 ignored/);
  // head_dim defaults to hidden / heads.
  const noHd = { ...PRESETS["tiny-mistral"].config };
  assert.equal(parseModelConfig(noHd, null).headDim, 16);
});

Deno.test("make-model is deterministic per seed; sharded output reads back", async () => {
  const root = await Deno.makeTempDir();
  try {
    await makeModel("tiny-mistral", join(root, "a"), { seed: 7 });
    await makeModel("tiny-mistral", join(root, "b"), { seed: 7, maxShardBytes: 3_000_000 });
    await makeModel("tiny-mistral", join(root, "c"), { seed: 8 });
    const a = await SafetensorsFolder.open(join(root, "a"));
    const b = await SafetensorsFolder.open(join(root, "b"));
    const c = await SafetensorsFolder.open(join(root, "c"));
    const files = new Set([...b.tensors.values()].map((t) => t.file));
    // Embedding and lm_head (8.2 MB each) exceed the shard size: one shard each.
    assert.deepEqual([...files].map((f) => basename(f)).sort(), [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
    ]);
    const index = JSON.parse(
      await Deno.readTextFile(join(root, "b", "model.safetensors.index.json")),
    );
    assert.equal(Object.keys(index.weight_map).length, a.tensors.size);
    checkWeights(await loadModelConfig(join(root, "b")), b);
    for (const name of a.tensors.keys()) {
      assert.deepEqual(await b.readTensor(name), await a.readTensor(name), name);
    }
    const w = "model.layers.1.mlp.up_proj.weight";
    assert.notDeepEqual(await c.readTensor(w), await a.readTensor(w));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("writeSafetensors: header padded to 8, data after it, metadata kept", async () => {
  const root = await Deno.makeTempDir();
  try {
    const data = new Uint8Array(4 * 6).map((_, i) => i);
    await writeSafetensors(join(root, "model.safetensors"), [
      { name: "x", dtype: "F32", shape: [2, 3], data },
      { name: "empty", dtype: "BF16", shape: [0, 4], data: new Uint8Array(0) },
    ], { format: "pt" });
    const bytes = await Deno.readFile(join(root, "model.safetensors"));
    const hl = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(hl % 8, 0);
    assert.equal(bytes.length, 8 + hl + 24);
    const st = await SafetensorsFolder.open(root);
    assert.deepEqual(st.metadata, { format: "pt" });
    assert.deepEqual(await st.readTensor("x"), data);
    assert.deepEqual(st.get("empty").shape, [0, 4]);
    // A writer given the wrong number of bytes refuses.
    await assert.rejects(() =>
      writeSafetensorsModel(root, [{ name: "y", dtype: "F16", shape: [4] }], async (_, write) => {
        await write(new Uint8Array(6));
      })
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** Asserts that `fn` throws a one-line ModelError matching `re`. */
async function expectModelError(fn: () => Promise<unknown>, re: RegExp) {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof ModelError, `not a ModelError: ${e}`);
    assert.ok(!e.message.includes("\n"), `multi-line: ${e.message}`);
    assert.match(e.message, re);
    return;
  }
  assert.fail(`no error, expected ${re}`);
}

Deno.test("broken folders give one-line ModelErrors", async () => {
  const src = await ensureTestModel("tiny-qwen2");
  const root = await Deno.makeTempDir();
  const cfgText = await Deno.readTextFile(join(src, "config.json"));
  const cfg0 = JSON.parse(cfgText);
  const mk = async (name: string, config: unknown = cfg0) => {
    const d = join(root, name);
    await Deno.mkdir(d);
    if (config !== null) await Deno.writeTextFile(join(d, "config.json"), JSON.stringify(config));
    return d;
  };
  const load = (d: string) => loadModelConfig(d);
  const open = (d: string) => SafetensorsFolder.open(d);
  try {
    await expectModelError(() => load(join(root, "nope")), /nope: model folder not found/);
    await expectModelError(async () => load(await mk("noconf", null)), /config\.json: missing/);
    await expectModelError(
      async () => load(await mk("arch", { ...cfg0, architectures: ["GPT2LMHeadModel"] })),
      /config\.json: unknown architecture "GPT2LMHeadModel" \(supported: LlamaForCausalLM/,
    );
    const noHidden = { ...cfg0 };
    delete noHidden.hidden_size;
    await expectModelError(
      async () => load(await mk("field", noHidden)),
      /config\.json: missing field "hidden_size"/,
    );
    await expectModelError(
      async () => load(await mk("badval", { ...cfg0, num_hidden_layers: -2 })),
      /config\.json: field "num_hidden_layers" must be a positive integer, got -2/,
    );
    await expectModelError(
      async () => load(await mk("gqa", { ...cfg0, num_key_value_heads: 3 })),
      /not a multiple of num_key_value_heads 3/,
    );
    await expectModelError(async () => {
      const d = await mk("json", null);
      await Deno.writeTextFile(join(d, "config.json"), "{ nope");
      return load(d);
    }, /config\.json: invalid JSON/);
    await expectModelError(async () => open(await mk("noweights")), /no model\.safetensors/);

    // Corrupt safetensors files, built from the real one.
    const good = await Deno.readFile(join(src, "model.safetensors"));
    const hl = Number(new DataView(good.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(good.subarray(8, 8 + hl)));
    const withHeader = (h: unknown, data = good.subarray(8 + hl)) => {
      const hb = new TextEncoder().encode(JSON.stringify(h));
      const out = new Uint8Array(8 + hb.length + data.length);
      new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
      out.set(hb, 8);
      out.set(data, 8 + hb.length);
      return out;
    };
    const st = async (name: string, bytes: Uint8Array) => {
      const d = await mk(name);
      await Deno.writeFile(join(d, "model.safetensors"), bytes);
      return d;
    };
    const big = new Uint8Array(good.subarray(0, 64));
    new DataView(big.buffer).setBigUint64(0, 1n << 40n, true);
    await expectModelError(
      async () => open(await st("hdrlen", big)),
      /model\.safetensors: corrupt header/,
    );
    const notJson = withHeader({});
    notJson.set(new TextEncoder().encode("{{"), 8);
    await expectModelError(
      async () => open(await st("hdrjson", notJson)),
      /corrupt header \(not valid JSON\)/,
    );
    await expectModelError(
      async () => open(await st("trunc", good.subarray(0, good.length - 100))),
      /model\.safetensors: tensor [\w.]+: data \[\d+, \d+\) lies outside the file \(truncated/,
    );
    await expectModelError(
      async () => open(await st("tiny", good.subarray(0, 5))),
      /truncated file/,
    );
    const E = "model.norm.weight";
    await expectModelError(
      async () =>
        open(await st("dtype", withHeader({ ...header, [E]: { ...header[E], dtype: "Q4" } }))),
      /tensor model\.norm\.weight: unknown dtype "Q4"/,
    );
    await expectModelError(
      async () =>
        open(await st("size", withHeader({ ...header, [E]: { ...header[E], shape: [31] } }))),
      /tensor model\.norm\.weight: 64 bytes, but BF16 \[31\] needs 62/,
    );

    // Valid files whose tensors disagree with config.json.
    const cfg = await loadModelConfig(src);
    const check = async (h: Record<string, unknown>) => {
      const d = await st(`chk${Math.random()}`, withHeader(h));
      checkWeights(cfg, await open(d));
    };
    const q = "model.layers.0.self_attn.q_proj.weight";
    const qOff = header[q].data_offsets;
    await expectModelError(
      () => check({ ...header, [q]: { ...header[q], shape: [16, 64] } }),
      /^model\.safetensors: tensor model\.layers\.0\.self_attn\.q_proj\.weight has shape \[16, 64\], config expects \[32, 32\]$/,
    );
    await expectModelError(
      () => check({ ...header, [q]: { dtype: "I16", shape: [32, 32], data_offsets: qOff } }),
      /tensor model\.layers\.0\.self_attn\.q_proj\.weight has dtype I16, expected BF16/,
    );
    const noBias = { ...header };
    delete noBias["model.layers.1.self_attn.k_proj.bias"];
    await expectModelError(
      () => check(noBias),
      /model\.safetensors: missing tensor model\.layers\.1\.self_attn\.k_proj\.bias/,
    );

    // A shard index naming a tensor its file lacks.
    const d = await st("index", good);
    await Deno.writeTextFile(
      join(d, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { "model.ghost.weight": "model.safetensors" } }),
    );
    await expectModelError(
      () => open(d),
      /model\.safetensors: tensor model\.ghost\.weight listed in the index is missing/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
