/**
 * A Hugging Face tokenizer from a model folder: `tokenizer.json` (through
 * @huggingface/tokenizers) and `tokenizer_config.json` (special tokens and the Jinja chat
 * template, rendered by @huggingface/jinja the way transformers' apply_chat_template does).
 */

import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { join } from "node:path";
import { ModelError } from "../model/config.ts";
import { installFastBpe } from "./fast_bpe.ts";

/** One chat message (extra fields such as `reasoning_content` or `tool_calls` pass through). */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

/** Options of `applyChatTemplate`; any other key becomes a template variable
 *  (e.g. `enable_thinking: false` for Qwen3, `tools`). */
export interface ChatTemplateOptions {
  /** Append the assistant header so the model answers (default true). */
  addGenerationPrompt?: boolean;
  [kwarg: string]: unknown;
}

type Json = Record<string, unknown>;

/** Tokenizer + chat template of one model folder. */
export class HfTokenizer {
  /** Special token strings from tokenizer_config.json (null when unset). */
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  /** Their ids (null when unset or not in the vocabulary). */
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  /** Ids of all tokens marked special (skipped by decode with skipSpecialTokens). */
  readonly specialTokenIds: ReadonlySet<number>;
  /** Number of ids the tokenizer can produce (largest id + 1, added tokens included). */
  readonly vocabSize: number;
  /** The raw chat template, or null when the folder has none. */
  readonly chatTemplate: string | null;
  private template: Template | null = null;

  /** Builds from parsed tokenizer.json / tokenizer_config.json objects. `chatTemplate`
   *  overrides the config's (e.g. from a chat_template.jinja file). */
  constructor(
    readonly tokenizerJson: Json,
    readonly config: Json,
    chatTemplate?: string | null,
    private readonly source = "tokenizer.json",
  ) {
    this.tok = new Tokenizer(tokenizerJson, config);
    installFastBpe((this.tok as unknown as { model: unknown }).model);
    this.bosToken = tokenString(config.bos_token);
    this.eosToken = tokenString(config.eos_token);
    this.padToken = tokenString(config.pad_token);
    this.unkToken = tokenString(config.unk_token);
    const id = (s: string | null) => (s === null ? null : this.tok.token_to_id(s) ?? null);
    this.bosTokenId = id(this.bosToken);
    this.eosTokenId = id(this.eosToken);
    this.padTokenId = id(this.padToken);
    const special = new Set<number>();
    let maxId = -1;
    for (const t of (tokenizerJson.added_tokens ?? []) as { id: number; special?: boolean }[]) {
      if (t.special) special.add(t.id);
      maxId = Math.max(maxId, t.id);
    }
    this.specialTokenIds = special;
    const vocab = (tokenizerJson.model as Json | undefined)?.vocab;
    if (vocab && typeof vocab === "object" && !Array.isArray(vocab)) {
      for (const v of Object.values(vocab as Record<string, number>)) if (v > maxId) maxId = v;
    } else if (Array.isArray(vocab)) {
      maxId = Math.max(maxId, vocab.length - 1);
    }
    this.vocabSize = maxId + 1;
    this.chatTemplate = chatTemplate ?? pickTemplate(config.chat_template);
    const isBpe = (tokenizerJson.model as Json | undefined)?.type === "BPE";
    this.cleanUpDefault = !isBpe && config.clean_up_tokenization_spaces !== false;
  }

  private readonly cleanUpDefault: boolean;

  private tok: Tokenizer;

  /** Text -> ids. `addSpecialTokens` (default true) applies the post-processor (e.g. the
   *  Llama 3 BOS). Pass false for text that already went through the chat template. */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  /** Ids -> text. `cleanUpTokenizationSpaces` (" ." -> ".") defaults to tokenizer_config's
   *  setting, except for BPE models where transformers 5 ignores it (it corrupts BPE text). */
  decode(
    ids: readonly number[],
    opts: { skipSpecialTokens?: boolean; cleanUpTokenizationSpaces?: boolean } = {},
  ): string {
    if (ids.length === 0) return ""; // the library rejects an empty list
    return this.tok.decode(ids as number[], {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: opts.cleanUpTokenizationSpaces ?? this.cleanUpDefault,
    });
  }

  /** A token's id, or undefined when not in the vocabulary. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  /** An id's token string, or undefined. */
  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** Renders the chat template like transformers' `apply_chat_template(tokenize=False)`. */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (this.chatTemplate === null) {
      throw new ModelError(`tokenizer_config.json: no chat_template in this model folder`);
    }
    if (this.template === null) {
      try {
        this.template = new Template(this.chatTemplate);
      } catch (e) {
        throw new ModelError(
          `tokenizer_config.json: chat_template does not parse (${firstLine(e)})`,
        );
      }
    }
    const { addGenerationPrompt, ...kwargs } = opts;
    // raise_exception and strftime_now are built-in globals of @huggingface/jinja.
    const vars: Record<string, unknown> = {
      bos_token: this.bosToken ?? "",
      eos_token: this.eosToken ?? "",
      pad_token: this.padToken ?? "",
      unk_token: this.unkToken ?? "",
      ...kwargs,
      messages,
      add_generation_prompt: addGenerationPrompt ?? true,
    };
    try {
      return this.template.render(vars);
    } catch (e) {
      throw new Error(`chat template: ${firstLine(e)}`);
    }
  }

  /** The chat prompt's token ids: the rendered template encoded without adding special
   *  tokens (the template already wrote BOS where the model wants one), as transformers'
   *  `apply_chat_template(tokenize=True)` does. */
  encodeChat(messages: ChatMessage[], opts: ChatTemplateOptions = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, opts), { addSpecialTokens: false });
  }

  /** Where it came from, for messages. */
  get name(): string {
    return this.source;
  }
}

/** Loads `<dir>/tokenizer.json` + `<dir>/tokenizer_config.json` (+ `chat_template.jinja`
 *  when present). Problems are ModelErrors naming the file. */
export async function loadTokenizer(dir: string): Promise<HfTokenizer> {
  const tj = await readJson(join(dir, "tokenizer.json"), "tokenizer.json");
  const cfg = await readJson(join(dir, "tokenizer_config.json"), "tokenizer_config.json");
  let template: string | null = null;
  try {
    template = await Deno.readTextFile(join(dir, "chat_template.jinja"));
  } catch {
    // Optional: newer transformers save the template in its own file.
  }
  try {
    return new HfTokenizer(tj, cfg, template, join(dir, "tokenizer.json"));
  } catch (e) {
    throw new ModelError(`tokenizer.json: cannot build the tokenizer (${firstLine(e)})`);
  }
}

async function readJson(path: string, name: string): Promise<Json> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    throw new ModelError(`${name}: missing from the model folder`);
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not an object");
    return v;
  } catch (e) {
    throw new ModelError(`${name}: invalid JSON (${firstLine(e)})`);
  }
}

/** tokenizer_config special tokens are a string or an AddedToken dict {content}. */
function tokenString(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as Json).content === "string") {
    return (v as Json).content as string;
  }
  return null;
}

/** chat_template is a string or a list of {name, template}; "default" wins. */
function pickTemplate(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const named = v as { name?: string; template?: string }[];
    const t = named.find((x) => x.name === "default") ?? named[0];
    return t?.template ?? null;
  }
  return null;
}

function firstLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split("\n")[0];
}
