/**
 * The tokenizer operations the text layer and its callers (server, shell, offline LLM)
 * use (`TextTokenizer`), and its adapter over src/tokenizer's HfTokenizer, including the raw bytes of a single token for
 * OpenAI's logprobs (`bytes`), which a byte-level BPE token may split mid-character.
 */

import { IncrementalDetokenizer } from "../tokenizer/detokenizer.ts";
import type { HfTokenizer } from "../tokenizer/tokenizer.ts";
import type { TextDecoderStream } from "./textgen.ts";

/** A chat message after validation: content flattened to text. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
  /** An assistant turn's tool calls (OpenAI's shape, arguments as a JSON string). */
  tool_calls?: unknown[];
  /** A tool result's call id. */
  tool_call_id?: string;
}

/** The tokenizer operations the text layer, the server and the shell use. */
export interface TextTokenizer {
  /** Text to ids; `addSpecialTokens` adds BOS where the model wants one. */
  encode(text: string, addSpecialTokens: boolean): number[];
  /** Ids to text, skipping special tokens. */
  decode(ids: number[]): string;
  /** The chat template applied to messages, as token ids. */
  chatTemplate(
    messages: ChatMessage[],
    addGenerationPrompt: boolean,
    kwargs: Record<string, unknown>,
  ): number[];
  /** A fresh streaming detokenizer (never emits broken UTF-8); the prompt's last tokens
   *  give the first generated ones their left context (SentencePiece spaces). */
  detokenizer(promptIds?: readonly number[]): TextDecoderStream;
  /** The text of one token on its own (for logprobs), and its raw bytes. */
  tokenText(id: number): string;
  tokenBytes(id: number): number[];
  /** tokenizer_config.json's settings with the special tokens and the chat template, as
   *  vLLM's /tokenizer_info serves them. */
  info(): Record<string, unknown>;
}

/** GPT-2's byte <-> printable character table used by byte-level BPE vocabularies. */
function byteDecoder(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const map = new Map<string, number>();
  bs.forEach((b, i) => map.set(String.fromCodePoint(cs[i]), b));
  return map;
}

/** True when tokenizer.json's decoder (or one in its sequence) is ByteLevel. */
function isByteLevel(tokenizerJson: Record<string, unknown>): boolean {
  const d = tokenizerJson.decoder as { type?: string; decoders?: { type?: string }[] } | null;
  if (!d) return false;
  return d.type === "ByteLevel" || (d.decoders ?? []).some((x) => x.type === "ByteLevel");
}

const utf8 = new TextEncoder();
const lenient = new TextDecoder();

/** Wraps an HfTokenizer as a TextTokenizer. */
export function textTokenizer(tok: HfTokenizer): TextTokenizer {
  const byteLevel = isByteLevel(tok.tokenizerJson);
  const bytesOf = byteLevel ? byteDecoder() : null;
  const bytesCache = new Map<number, number[]>();
  const textCache = new Map<number, string>();

  const tokenBytes = (id: number): number[] => {
    const hit = bytesCache.get(id);
    if (hit) return hit;
    const piece = tok.idToToken(id) ?? "";
    let bytes: number[];
    if (tok.specialTokenIds.has(id)) bytes = [...utf8.encode(piece)];
    else if (bytesOf) {
      bytes = [];
      for (const ch of piece) {
        const b = bytesOf.get(ch);
        if (b === undefined) bytes.push(...utf8.encode(ch));
        else bytes.push(b);
      }
    } else {
      // SentencePiece: "<0xE2>" byte-fallback pieces, "▁" for spaces.
      const m = piece.match(/^<0x([0-9A-Fa-f]{2})>$/);
      bytes = m ? [parseInt(m[1], 16)] : [...utf8.encode(piece.replaceAll("\u2581", " "))];
    }
    bytesCache.set(id, bytes);
    return bytes;
  };

  return {
    encode: (text, addSpecialTokens) => tok.encode(text, { addSpecialTokens }),
    // The underlying decoder rejects an empty list.
    decode: (ids) => (ids.length === 0 ? "" : tok.decode(ids, { skipSpecialTokens: true })),
    chatTemplate(messages, addGenerationPrompt, kwargs) {
      // Tool calls and tool results keep the fields the templates read; the arguments go
      // in as objects (Qwen's template writes a string as is, an object as JSON).
      const msgs = messages.map((m) => {
        const out: Record<string, unknown> & { role: string; content: string } = {
          role: m.role,
          content: m.content,
        };
        if (m.tool_calls) out.tool_calls = m.tool_calls;
        if (m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
        return out;
      });
      const text = tok.applyChatTemplate(msgs, { ...kwargs, addGenerationPrompt });
      // The template already holds BOS etc.; the post-processor must not add them again.
      return tok.encode(text, { addSpecialTokens: false });
    },
    detokenizer: (promptIds) => new IncrementalDetokenizer(tok, { promptIds }),
    tokenText(id) {
      let t = textCache.get(id);
      if (t === undefined) {
        t = tok.specialTokenIds.has(id)
          ? (tok.idToToken(id) ?? "")
          : lenient.decode(new Uint8Array(tokenBytes(id)));
        textCache.set(id, t);
      }
      return t;
    },
    tokenBytes,
    info() {
      const { added_tokens_decoder: _, ...config } = tok.config as Record<string, unknown>;
      return {
        ...config,
        tokenizer_class: config.tokenizer_class ?? "PreTrainedTokenizerFast",
        bos_token: tok.bosToken,
        eos_token: tok.eosToken,
        pad_token: tok.padToken,
        unk_token: tok.unkToken,
        chat_template: tok.chatTemplate,
        vocab_size: tok.vocabSize,
      };
    },
  };
}
