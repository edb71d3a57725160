/**
 * Tokenizer warm-up: V8 runs a function interpreted until it has been called often enough to
 * optimise, and a fresh tokenizer is several times slower for its first prompts. Measured on
 * this project's CPU machine (Qwen3 tokenizer, chat template of 500-token random prompts): 33
 * ms for the first, 3-6.5 ms each for the next ~20, 1.1 ms once optimised. In a serving burst
 * the tokenizer workers were cold and fed requests to the scheduler a few at a time for the
 * first ~150 ms. Each tokenizer worker runs this at start (the HTTP thread keeps only inputs
 * under OFFLOAD_THRESHOLD, too short to matter).
 */
import type { TextTokenizer } from "./tokenizer_port.ts";

/** `rounds` texts decoded from seeded random token ids (every script of the vocabulary, new
 *  words for BPE) of `tokens` ids each, through encode, the chat template and decode. */
export function warmTokenizer(
  tok: TextTokenizer,
  vocabSize: number,
  rounds = 32,
  tokens = 500,
): void {
  let seed = 12345;
  const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
  for (let r = 0; r < rounds; r++) {
    const text = tok.decode(Array.from({ length: tokens }, () => Math.floor(next() * vocabSize)));
    tok.decode(tok.encode(text, true));
    try {
      tok.chatTemplate([{ role: "user", content: text }], true, {});
    } catch {
      // A tokenizer without a chat template: encode and decode were warmed.
    }
  }
}
