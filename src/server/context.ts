/**
 * What the HTTP routes need: the engine, a tokenizer port, the served names, limits and
 * the server's own metrics. Also the admission counter behind --max-queued-requests.
 */

import { defaultSamplingParams, type Engine, type SamplingParams } from "../engine/types.ts";
import { ApiError } from "./errors.ts";
import type { ServerMetrics } from "./metrics.ts";
import type { TextTokenizer } from "../text/tokenizer_port.ts";
import type { AsyncTokenizer } from "./tokenize_pool.ts";

/** Everything the routes share. */
export interface ServerContext {
  engine: Engine;
  tokenizer: TextTokenizer;
  /** Tokenization of large inputs, run off the HTTP thread. */
  tokenize: AsyncTokenizer;
  /** Names accepted in `model` (the first is reported). */
  modelNames: string[];
  apiKey: string | null;
  metrics: ServerMetrics;
  /** Most engine requests in flight (running + queued) before answering 503. */
  maxInFlight: number;
  /** Largest request body in bytes (413 beyond). */
  maxBodyBytes: number;
  /** Engine requests in flight now. */
  inFlight: number;
  /** Set when shutting down: new requests get 503. */
  closing: boolean;
  /** Sampling defaults for what a request leaves out (the model's generation_config.json),
   *  over defaultSamplingParams(). */
  samplingDefaults?: Partial<SamplingParams>;
  /** The server's settings under SGLang's names, for /get_server_info. */
  serverArgs?: Record<string, unknown>;
}

/** The sampling parameters a request starts from: ours, then the model's defaults. */
export function baseSamplingParams(ctx: ServerContext): SamplingParams {
  return { ...defaultSamplingParams(), ...ctx.samplingDefaults };
}

/** Reserves `count` engine requests or throws 503; call `release` once per request. */
export function admit(ctx: ServerContext, count: number): void {
  if (ctx.engine.failure !== null) throw engineFailed(ctx.engine.failure);
  if (ctx.closing) throw new ApiError(503, "The server is shutting down.");
  if (count > ctx.maxInFlight) {
    // Retrying cannot help: it would not fit an idle server either.
    throw new ApiError(
      400,
      `The request asks for ${count} completions (prompts x n), more than the ` +
        `${ctx.maxInFlight} this server holds at once.`,
      "n",
      "too_many_completions",
    );
  }
  if (ctx.inFlight + count > ctx.maxInFlight) {
    throw new ApiError(
      503,
      `The server is overloaded: ${ctx.inFlight} requests in flight, limit ${ctx.maxInFlight} ` +
        "(--max-running-requests + --max-queued-requests). Retry later.",
      null,
      "queue_full",
    );
  }
  ctx.inFlight += count;
}

/** The 503 of every request once the engine died (the process is about to exit). */
export function engineFailed(reason: string): ApiError {
  return new ApiError(503, `The engine failed: ${reason}`, null, "engine_failed");
}

/** Estimated JSON bytes of one completion token, and of each of its top logprobs. */
const TOKEN_JSON_BYTES = 16;
const LOGPROB_JSON_BYTES = 64;
/** Largest estimated body of a non-streaming response; streams send as they go. */
export const MAX_RESPONSE_BYTES = 128 << 20;

/** 400 when a non-streaming response of these choices could outgrow MAX_RESPONSE_BYTES:
 *  it is built in memory (the text of every token, its logprob and top alternatives). */
export function checkResponseSize(
  choices: { maxTokens: number; logprobs: boolean; topLogprobs: number }[],
): void {
  let bytes = 0;
  for (const c of choices) {
    const perToken = TOKEN_JSON_BYTES +
      (c.logprobs ? LOGPROB_JSON_BYTES * (1 + c.topLogprobs) : 0);
    bytes += c.maxTokens * perToken;
  }
  if (bytes > MAX_RESPONSE_BYTES) {
    const c = choices[0];
    throw new ApiError(
      400,
      `The response could reach about ${Math.round(bytes / 2 ** 20)} MB (${choices.length} ` +
        `choices x max_tokens ${c.maxTokens} x ${c.topLogprobs} top logprobs), over the ` +
        `${MAX_RESPONSE_BYTES / 2 ** 20} MB limit of a non-streaming response. Use ` +
        "stream: true, or ask for fewer tokens, choices or logprobs.",
      "max_tokens",
      "response_too_large",
    );
  }
}

/** Releases one engine request reserved by `admit`. */
export function release(ctx: ServerContext): void {
  ctx.inFlight--;
}

/** Checks the `model` field against the served names (404 when unknown). */
export function checkModel(ctx: ServerContext, model: string | null): string {
  if (model === null) return ctx.modelNames[0];
  if (!ctx.modelNames.includes(model)) {
    throw new ApiError(
      404,
      `The model '${model}' does not exist. This server serves '${ctx.modelNames[0]}'.`,
      "model",
      "model_not_found",
    );
  }
  return model;
}

/** Resolves max_tokens against the context: 400 when the prompt plus it cannot fit. */
export function resolveMaxTokens(
  ctx: ServerContext,
  promptLen: number,
  maxTokens: number | null,
  promptParam: "messages" | "prompt",
  defaultMax = Infinity,
): number {
  const limit = ctx.engine.info.maxContextLen;
  if (promptLen >= limit && !(maxTokens === 0 && promptLen <= limit)) {
    throw new ApiError(
      400,
      `This model's maximum context length is ${limit} tokens. However, your prompt has ` +
        `${promptLen} tokens. Please reduce the length of the prompt.`,
      promptParam,
      "context_length_exceeded",
    );
  }
  if (maxTokens === null) return Math.min(defaultMax, limit - promptLen);
  if (promptLen + maxTokens > limit) {
    throw new ApiError(
      400,
      `This model's maximum context length is ${limit} tokens. However, you requested ` +
        `${promptLen + maxTokens} tokens (${promptLen} in the prompt, ${maxTokens} for the ` +
        "completion). Please reduce the length of the prompt or the completion.",
      "max_tokens",
      "context_length_exceeded",
    );
  }
  return maxTokens;
}

/** A random id with a prefix, as OpenAI's (e.g. chatcmpl-...). */
export function newId(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "")}`;
}
