/** The id-based BPE merge loop (src/tokenizer/fast_bpe.ts) gives the library's tokens,
 *  token for token, on the real Qwen3 and Llama 3 tokenizers: random text of every script,
 *  random token ids decoded (SGLang's random prompts), repeated symbols (rank ties). */

import assert from "node:assert/strict";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { ensureTestModel } from "./fixtures.ts";
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { buildMerger, installFastBpe } from "../src/tokenizer/fast_bpe.ts";

/** A deterministic generator of uint32s (xorshift). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>>= 0);
  };
}

const RANGES: [number, number][] = [
  [0x20, 0x7e], // ASCII
  [0xa0, 0x24f], // Latin
  [0x400, 0x4ff], // Cyrillic
  [0x600, 0x6ff], // Arabic
  [0x3040, 0x30ff], // kana
  [0x4e00, 0x9fff], // CJK
  [0xac00, 0xd7a3], // Hangul
  [0x1f300, 0x1faff], // emoji
];

function randomText(next: () => number, len: number): string {
  const out: string[] = [];
  for (let i = 0; i < len; i++) {
    const k = next() % 10;
    if (k === 0) out.push(" ");
    else if (k === 1) out.push(["\n", "\t", "  ", "'s", "1234", "aaaa", "!!"][next() % 7]);
    else {
      const [lo, hi] = RANGES[next() % RANGES.length];
      const run = 1 + (next() % 12);
      for (let j = 0; j < run; j++) out.push(String.fromCodePoint(lo + (next() % (hi - lo))));
    }
  }
  return out.join("");
}

for (const preset of ["tiny-qwen3", "tiny-llama"]) {
  Deno.test(`fast BPE equals the library's loop: ${preset}`, async () => {
    const dir = await ensureTestModel(preset);
    const fast = await loadTokenizer(dir);
    const json = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer.json")));
    const config = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer_config.json")));
    const slow = new Tokenizer(json, config);
    // The fast loop must be what `fast` runs (else this compares the library with itself).
    const model = (slow as unknown as { model: Parameters<typeof buildMerger>[0] }).model;
    assert.notEqual(buildMerger(model), null);
    const next = rng(preset.length);
    const texts: string[] = ["", "a", "aaaaaaaaaaaaaaaa", "        x", "ababababab abab"];
    for (let i = 0; i < 300; i++) texts.push(randomText(next, 1 + (next() % 80)));
    for (let i = 0; i < 100; i++) {
      const ids = Array.from({ length: 1 + (next() % 300) }, () => next() % fast.vocabSize);
      texts.push(fast.decode(ids));
    }
    let tokens = 0;
    for (const t of texts) {
      const want = slow.encode(t, { add_special_tokens: false }).ids;
      assert.deepEqual(fast.encode(t, { addSpecialTokens: false }), want, JSON.stringify(t));
      tokens += want.length;
    }
    assert.ok(tokens > 20_000, `only ${tokens} tokens compared`);
  });
}

Deno.test("fast BPE: installed for byte-level BPE only, merges that name no token refused", () => {
  const model = {
    tokens_to_ids: new Map([["a", 0], ["b", 1], ["ab", 2]]),
    vocab: ["a", "b", "ab"],
    merges: [["a", "b"]] as [string, string][],
    bpe: (t: string) => [t],
  };
  assert.equal(installFastBpe({ ...model, continuing_subword_suffix: "##" }), false);
  assert.equal(installFastBpe({ ...model, byte_fallback: true }), false);
  assert.equal(buildMerger({ ...model, merges: [["a", "a"]] }), null);
  const m = buildMerger(model)!;
  assert.deepEqual(m("abab"), ["ab", "ab"]);
  assert.deepEqual(m("aab"), ["a", "ab"]);
  assert.equal(m("abc"), null); // "c" is no symbol: the library's loop takes it
  const installed = { ...model };
  assert.equal(installFastBpe(installed), true);
  assert.deepEqual(installed.bpe("abc"), ["abc"]); // fell back to the original
});
