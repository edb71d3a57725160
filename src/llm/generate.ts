/**
 * The offline API: generate text for a list of prompts without an HTTP server, like
 * Mini-SGLang's / vLLM's `LLM`. Prompts run concurrently through the same engine (one
 * continuous batch); stop strings and detokenization are the server's own.
 *
 *   const llm = await LLM.load("./models/Qwen3-0.6B", { device: "cpu" });
 *   const [out] = await llm.generate(["The capital of France is"], { maxTokens: 16 });
 *   await llm.shutdown();
 */

import { defaultEngineConfig, type EngineConfig } from "../engine/config.ts";
import { startEngine } from "../engine/engine.ts";
import { defaultSamplingParams, type Engine, type SamplingParams } from "../engine/types.ts";
import { type ChatMessage, type TextTokenizer, textTokenizer } from "../text/tokenizer_port.ts";
import { collectText, type TokenLogprob, type TopLogprob } from "../text/textgen.ts";
import { loadTokenizer } from "../tokenizer/tokenizer.ts";

/** The result of one prompt. */
export interface GenerateResult {
  text: string;
  /** Generated token ids (the stop token and tokens past a stop string left out). */
  tokenIds: number[];
  finishReason: "stop" | "length";
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  /** Per generated token, when params.logprobs. */
  logprobs?: TokenLogprob[];
  /** Per prompt token (first null), when params.promptLogprobs. */
  promptLogprobs?: (number | null)[];
  /** Per prompt position (first null), the top alternatives, when params.promptLogprobs
   *  and params.topLogprobs > 0. */
  promptTopLogprobs?: (TopLogprob[] | null)[];
}

/** Options besides the sampling parameters. */
export interface GenerateOptions {
  /** Stop strings (never part of the text). */
  stop?: string[];
}

let nextId = 0;

/** Runs every prompt (text, or token ids) with the same parameters; results in order. */
export function generate(
  engine: Engine,
  tokenizer: TextTokenizer,
  prompts: (string | number[])[],
  params: Partial<SamplingParams> = {},
  options: GenerateOptions = {},
): Promise<GenerateResult[]> {
  const full: SamplingParams = { ...defaultSamplingParams(), ...params };
  return Promise.all(prompts.map(async (prompt) => {
    const promptIds = typeof prompt === "string" ? tokenizer.encode(prompt, true) : prompt;
    if (promptIds.length === 0) throw new Error("generate: empty prompt");
    const id = `offline-${++nextId}`;
    const r = await collectText(engine, tokenizer.detokenizer(promptIds), {
      id,
      promptIds,
      params: full,
      stop: options.stop ?? [],
    });
    const out: GenerateResult = {
      text: r.text,
      tokenIds: r.tokens,
      finishReason: r.finishReason,
      promptTokens: r.usage.promptTokens,
      completionTokens: r.usage.completionTokens,
      cachedTokens: r.usage.cachedTokens,
    };
    if (full.logprobs) out.logprobs = r.logprobs;
    if (r.promptLogprobs) out.promptLogprobs = r.promptLogprobs;
    if (r.promptTopLogprobs) out.promptTopLogprobs = r.promptTopLogprobs;
    return out;
  }));
}

/** An engine plus its tokenizer: the offline entry point. */
export class LLM {
  private constructor(readonly engine: Engine, readonly tokenizer: TextTokenizer) {}

  /** Starts an engine on `modelDir` (config overrides the defaults, e.g. device "cpu"). */
  static async load(
    modelDir: string,
    config: Partial<EngineConfig> = {},
    onProgress?: Parameters<typeof startEngine>[1],
  ): Promise<LLM> {
    const tokenizer = textTokenizer(await loadTokenizer(modelDir));
    const engine = await startEngine({ ...defaultEngineConfig(modelDir), ...config }, onProgress);
    return new LLM(engine, tokenizer);
  }

  /** See `generate`. */
  generate(
    prompts: (string | number[])[],
    params: Partial<SamplingParams> = {},
    options: GenerateOptions = {},
  ): Promise<GenerateResult[]> {
    return generate(this.engine, this.tokenizer, prompts, params, options);
  }

  /** One chat turn per conversation, through the model's chat template. */
  chat(
    conversations: ChatMessage[][],
    params: Partial<SamplingParams> = {},
    options: GenerateOptions & { templateKwargs?: Record<string, unknown> } = {},
  ): Promise<GenerateResult[]> {
    const prompts = conversations.map((m) =>
      this.tokenizer.chatTemplate(m, true, options.templateKwargs ?? {})
    );
    return this.generate(prompts, params, options);
  }

  /** Finishes in-flight work and stops the engine. */
  shutdown(): Promise<void> {
    return this.engine.shutdown();
  }
}
