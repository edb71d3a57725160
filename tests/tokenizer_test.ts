/** The real Qwen3 and Llama 3 tokenizers (as make-model writes them): round trips, known
 *  ids, chat templates, and streaming detokenization. */

import assert from "node:assert/strict";
import { ensureTestModel } from "./fixtures.ts";
import { type HfTokenizer, loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { IncrementalDetokenizer } from "../src/tokenizer/detokenizer.ts";
import { textTokenizer } from "../src/text/tokenizer_port.ts";
import { warmTokenizer } from "../src/text/warm_up.ts";

let qwenP: Promise<HfTokenizer> | null = null, llamaP: Promise<HfTokenizer> | null = null;
const qwen = () => (qwenP ??= ensureTestModel("tiny-qwen3").then(loadTokenizer));
const llama = () => (llamaP ??= ensureTestModel("tiny-llama").then(loadTokenizer));

const SAMPLES = [
  "Hello world",
  "The quick brown fox jumps over the lazy dog.\n\n  Indented\ttab",
  "naïve café résumé — “quotes” ½ ß Ω",
  "你好，世界！日本語のテキスト。한국어 텍스트",
  "emoji: 😀👍🏽🇫🇷 👨‍👩‍👧 🧑🏿‍🚀",
  "code: for (let i = 0; i < 10; i++) { x += 0x1F; }",
  "",
];

Deno.test("qwen3 tokenizer: known ids, round trips, special tokens", async () => {
  const t = await qwen();
  assert.deepEqual(t.encode("Hello world"), [9707, 1879]);
  assert.equal(t.bosTokenId, null); // Qwen adds no BOS
  assert.equal(t.eosTokenId, 151645);
  assert.equal(t.padTokenId, 151643);
  assert.equal(t.vocabSize, 151669);
  for (const s of SAMPLES) assert.equal(t.decode(t.encode(s)), s);
  const ids = t.encode("a<|im_end|>b<|endoftext|>");
  assert.ok(ids.includes(151645) && ids.includes(151643));
  assert.equal(t.decode(ids), "a<|im_end|>b<|endoftext|>");
  assert.equal(t.decode(ids, { skipSpecialTokens: true }), "ab");
  assert.deepEqual(t.encode("<think>"), [151667]); // added but not special: kept by decode
  assert.equal(t.decode([151667, 9707], { skipSpecialTokens: true }), "<think>Hello");
  assert.equal(t.tokenToId("<|im_start|>"), 151644);
  assert.equal(t.idToToken(9707), "Hello");
});

Deno.test("llama3 tokenizer: BOS, known ids, round trips, clean-up", async () => {
  const t = await llama();
  assert.deepEqual(t.encode("Hello world"), [128000, 9906, 1917]);
  assert.deepEqual(t.encode("Hello world", { addSpecialTokens: false }), [9906, 1917]);
  assert.equal(t.bosTokenId, 128000);
  assert.equal(t.eosTokenId, 128001);
  assert.equal(t.vocabSize, 128256);
  assert.equal(t.tokenToId("<|eot_id|>"), 128009);
  for (const s of [...SAMPLES, "Hi , there . don 't"]) {
    assert.equal(t.decode(t.encode(s, { addSpecialTokens: false })), s);
    assert.equal(t.decode(t.encode(s), { skipSpecialTokens: true }), s);
  }
  // Llama 3's tokenizer_config asks for tokenization-space clean-up, which transformers 5
  // ignores for BPE (checked against transformers 5.17): off unless asked for.
  const ids = t.encode("Hi , there .", { addSpecialTokens: false });
  assert.equal(t.decode(ids), "Hi , there .");
  assert.equal(t.decode(ids, { cleanUpTokenizationSpaces: true }), "Hi, there.");
});

Deno.test("qwen3 chat template: enable_thinking, history reasoning stripped", async () => {
  const t = await qwen();
  const msgs = [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Hi" },
    { role: "assistant", content: "<think>\nhmm\n</think>\n\nHello!" },
    { role: "user", content: "2+2?" },
  ];
  const history = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" +
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n";
  assert.equal(t.applyChatTemplate(msgs), history + "<|im_start|>assistant\n");
  assert.equal(
    t.applyChatTemplate(msgs, { enable_thinking: true }),
    history + "<|im_start|>assistant\n",
  );
  assert.equal(
    t.applyChatTemplate(msgs, { enable_thinking: false }),
    history + "<|im_start|>assistant\n<think>\n\n</think>\n\n",
  );
  assert.equal(t.applyChatTemplate(msgs, { addGenerationPrompt: false }), history);
  // The last assistant turn (after the last user query) keeps its reasoning.
  assert.equal(
    t.applyChatTemplate(msgs.slice(1, 3), { addGenerationPrompt: false }),
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello!<|im_end|>\n",
  );
  // The rendered prompt tokenizes with the special tokens as single ids.
  const ids = t.encode(t.applyChatTemplate(msgs.slice(0, 2)), { addSpecialTokens: false });
  assert.equal(ids[0], 151644);
  assert.equal(ids.filter((i) => i === 151645).length, 2);
});

Deno.test("llama3 chat template: system + user + assistant turns", async () => {
  const t = await llama();
  const msgs = [
    { role: "system", content: "You are helpful." },
    { role: "user", content: " Hi! " },
    { role: "assistant", content: "Hello." },
    { role: "user", content: "2+2?" },
  ];
  const h = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
  const history = "<|begin_of_text|>" + h("system") + "You are helpful.<|eot_id|>" + h("user") +
    "Hi!<|eot_id|>" + h("assistant") + "Hello.<|eot_id|>" + h("user") + "2+2?<|eot_id|>";
  assert.equal(t.applyChatTemplate(msgs), history + h("assistant"));
  assert.equal(t.applyChatTemplate(msgs, { addGenerationPrompt: false }), history);
  const ids = t.encodeChat(msgs);
  assert.deepEqual(ids, t.encode(t.applyChatTemplate(msgs), { addSpecialTokens: false }));
  assert.deepEqual(ids.slice(0, 4), [128000, 128006, 9125, 128007]);
  assert.equal(ids.filter((i) => i === 128000).length, 1);
});

/** Streams `ids` one token (or `step` tokens) at a time through a detokenizer. */
function stream(t: HfTokenizer, ids: number[], step = 1, skip = false): string[] {
  const d = new IncrementalDetokenizer(t, { skipSpecialTokens: skip });
  const pieces: string[] = [];
  for (let i = 0; i < ids.length; i += step) pieces.push(d.push(ids.slice(i, i + step)));
  pieces.push(d.flush());
  assert.equal(pieces.join(""), d.text);
  return pieces;
}

Deno.test("incremental detokenizer: emoji split across tokens, CJK, both tokenizers", async () => {
  for (const t of [await qwen(), await llama()]) {
    // 😀 is two byte-level tokens in Llama 3: nothing until the character completes.
    const emoji = t.encode("😀", { addSpecialTokens: false });
    if (emoji.length === 2) assert.deepEqual(stream(t, emoji), ["", "😀", ""]);
    for (const s of SAMPLES) {
      const ids = t.encode(s, { addSpecialTokens: false });
      for (const step of [1, 2, 3]) {
        const pieces = stream(t, ids, step);
        assert.ok(pieces.every((p) => !p.includes("\uFFFD")), `U+FFFD in ${pieces}`);
        assert.equal(pieces.join(""), t.decode(ids, { cleanUpTokenizationSpaces: false }));
        assert.equal(pieces.join(""), s);
      }
    }
    const multi = t.encode("🧑🏿‍🚀🇫🇷👨‍👩‍👧漢字", { addSpecialTokens: false });
    assert.ok(multi.length > 6, "multi-token characters");
  }
  const l = await llama();
  assert.deepEqual(stream(l, l.encode("😀", { addSpecialTokens: false })), ["", "😀", ""]);
});

Deno.test("incremental detokenizer: special tokens, prompt context, broken tail", async () => {
  const t = await qwen();
  const ids = [...t.encode("Hi there"), 151645];
  assert.equal(stream(t, ids, 1, true).join(""), "Hi there");
  assert.equal(stream(t, ids, 1, false).join(""), "Hi there<|im_end|>");
  // With prompt context, the first generated token keeps its leading space.
  const prompt = t.encode("Say:");
  const d = new IncrementalDetokenizer(t, { promptIds: prompt });
  assert.equal(d.push(t.encode(" yes")), " yes");
  // A stream that ends inside a character: held back, then flushed as U+FFFD like decode.
  const l = await llama();
  const half = l.encode("😀", { addSpecialTokens: false }).slice(0, 1);
  const d2 = new IncrementalDetokenizer(l);
  assert.equal(d2.push(half), "");
  assert.equal(d2.flush(), l.decode(half));
});

Deno.test("incremental detokenizer: works without prompt ids, one token at a time", async () => {
  const tok = await loadTokenizer(await ensureTestModel("tiny-qwen3"));
  const ids = tok.encode("héllo 👋🏽 世界", { addSpecialTokens: false });
  const d = new IncrementalDetokenizer(tok);
  let text = "";
  for (const id of ids) {
    const piece = d.push([id]);
    assert.ok(!piece.includes("\uFFFD"));
    text += piece;
  }
  text += d.flush();
  assert.equal(text, "héllo 👋🏽 世界");
});

Deno.test("tokenizer warm-up runs on every preset's tokenizer and changes no result", async () => {
  for (const preset of ["tiny-qwen3", "tiny-llama", "tiny-qwen2", "tiny-mistral"]) {
    const hf = await loadTokenizer(await ensureTestModel(preset));
    const tok = textTokenizer(hf);
    const before = SAMPLES.map((s) => tok.encode(s, true));
    warmTokenizer(tok, hf.vocabSize, 3, 200);
    assert.deepEqual(SAMPLES.map((s) => tok.encode(s, true)), before, preset);
    assert.deepEqual(SAMPLES.map((s) => textTokenizer(hf).encode(s, true)), before, preset);
  }
});
