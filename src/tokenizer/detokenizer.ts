/**
 * Incremental detokenization for streaming, the SGLang / vLLM way: decode a small window of
 * recent tokens twice (without and with the new ones) and emit the difference. Byte-level
 * BPE splits multi-byte characters (emoji, CJK) across tokens; while the window's text ends
 * in U+FFFD the tail is an incomplete UTF-8 sequence, so the new text is held back until
 * the character completes. Decoding only a window keeps each step O(window), and re-decoding
 * a token or two of context keeps spaces and merges that depend on neighbours right.
 */

import type { HfTokenizer } from "./tokenizer.ts";

/** Tokens of context kept before the first unread token (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET). */
const CONTEXT_TOKENS = 5;

/** Turns a growing list of generated ids into text pieces. */
export class IncrementalDetokenizer {
  private ids: number[];
  /** Start of the window whose text was already emitted. */
  private prefixOffset: number;
  /** Ids before this index have been emitted as text. */
  private readOffset: number;
  private emitted = "";

  /** `promptIds` (optional) give the first generated tokens their left context, like vLLM;
   *  they are never emitted. `skipSpecialTokens` defaults to true (OpenAI servers do). */
  constructor(
    private readonly tokenizer: HfTokenizer,
    opts: { promptIds?: readonly number[]; skipSpecialTokens?: boolean } = {},
  ) {
    const prompt = opts.promptIds ?? [];
    this.ids = prompt.slice(Math.max(0, prompt.length - CONTEXT_TOKENS));
    this.prefixOffset = 0;
    this.readOffset = this.ids.length;
    this.skipSpecial = opts.skipSpecialTokens ?? true;
  }

  private readonly skipSpecial: boolean;

  /** Adds new token ids; returns the text they complete (possibly ""). Never returns a
   *  broken UTF-8 sequence: incomplete characters wait for the following tokens. */
  push(newIds: readonly number[]): string {
    for (const id of newIds) this.ids.push(id);
    if (this.readOffset >= this.ids.length) return "";
    const prefixText = this.decode(this.prefixOffset, this.readOffset);
    const newText = this.decode(this.prefixOffset, this.ids.length);
    if (newText.length > prefixText.length && !newText.endsWith("\uFFFD")) {
      const piece = newText.slice(prefixText.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      this.emitted += piece;
      return piece;
    }
    return "";
  }

  /** End of stream: returns whatever is still held back (an incomplete UTF-8 tail decodes
   *  to U+FFFD here, exactly as a full decode would). */
  flush(): string {
    if (this.readOffset >= this.ids.length) return "";
    const prefixText = this.decode(this.prefixOffset, this.readOffset);
    const newText = this.decode(this.prefixOffset, this.ids.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    const piece = newText.length > prefixText.length ? newText.slice(prefixText.length) : "";
    this.emitted += piece;
    return piece;
  }

  /** All text emitted so far. */
  get text(): string {
    return this.emitted;
  }

  /** Decodes without tokenization-space clean-up: clean-up looks across token boundaries
   *  (" ." -> "."), which a window cannot do consistently, so streaming text is raw. */
  private decode(from: number, to: number): string {
    if (from >= to) return ""; // the tokenizer library rejects an empty list
    return this.tokenizer.decode(this.ids.slice(from, to), {
      skipSpecialTokens: this.skipSpecial,
      cleanUpTokenizationSpaces: false,
    });
  }
}
