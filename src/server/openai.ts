/**
 * Hand-written validators for OpenAI's request bodies. They turn untrusted JSON into
 * normalized requests, or throw an `ApiError` (400) whose message and `param` name the
 * offending field precisely. Unknown fields are ignored, as OpenAI does.
 */

import type { SamplingParams } from "../engine/types.ts";
import { ApiError, badParam } from "./errors.ts";
import { readStructured } from "./structured.ts";
import { withToolFields } from "./tools.ts";
import type { ChatMessage } from "../text/tokenizer_port.ts";

/** Fields shared by chat and text completions. */
export interface CommonRequest {
  /** As sent by the client (checked against the served names by the route). */
  model: string | null;
  n: number;
  stream: boolean;
  /** stream_options.include_usage */
  includeUsage: boolean;
  /** Stop strings (never part of the output). */
  stop: string[];
  /** Sampling parameters the client set (maxTokens is resolved against the context). */
  sampling: Partial<SamplingParams>;
  /** max_tokens / max_completion_tokens, null when not given. */
  maxTokens: number | null;
  user: string | null;
  /** vLLM's return_tokens_as_token_ids: logprob tokens as "token_id:ID". */
  returnTokensAsTokenIds: boolean;
}

/** A validated POST /v1/chat/completions body. */
export interface ChatRequest extends CommonRequest {
  messages: ChatMessage[];
  /** chat_template_kwargs (e.g. enable_thinking), passed to the template. */
  templateKwargs: Record<string, unknown>;
  /** Also add a generation prompt (default true); false continues the last message. */
  addGenerationPrompt: boolean;
}

/** A validated POST /v1/completions body. */
export interface CompletionRequest extends CommonRequest {
  /** One entry per prompt: text or token ids. */
  prompts: (string | number[])[];
  echo: boolean;
  /** `logprobs` of the legacy API: null = none, k = top-k alternatives (0..20). */
  logprobs: number | null;
}

/** Most choices per prompt, and most top logprobs, that a request may ask for. */
export const MAX_N = 128;
export const MAX_TOP_LOGPROBS = 20;

type Json = Record<string, unknown>;

/** Deepest nesting of arrays and objects a request body may have: deeper values would
 *  overflow the stack of code that walks them recursively (error messages, templates). */
export const MAX_JSON_DEPTH = 64;

/** The nesting depth of a parsed JSON value, walked without recursion; stops counting
 *  past `limit`. */
export function jsonDepth(value: unknown, limit = MAX_JSON_DEPTH): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== "object") continue;
    const depth = d + 1;
    if (depth > deepest) deepest = depth;
    if (deepest > limit) return deepest;
    for (const child of Object.values(v)) {
      if (child !== null && typeof child === "object") stack.push([child, depth]);
    }
  }
  return deepest;
}

/** Parses a request body's text as a JSON object (400 on anything else). */
export function parseJsonObject(text: string): Json {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ApiError(
      400,
      `We could not parse the JSON body of your request: ${(e as Error).message}`,
    );
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ApiError(400, "The request body must be a JSON object.");
  }
  if (jsonDepth(value) > MAX_JSON_DEPTH) {
    throw new ApiError(
      400,
      `The request body is nested more than ${MAX_JSON_DEPTH} levels deep.`,
      null,
      "nesting_too_deep",
    );
  }
  return value as Json;
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

/** Reads optional fields of a body with type and range checks. `null` counts as absent. */
class Fields {
  constructor(private readonly body: Json, private readonly prefix = "") {}

  has(name: string): boolean {
    return this.body[name] !== undefined && this.body[name] !== null;
  }

  raw(name: string): unknown {
    return this.body[name];
  }

  number(
    name: string,
    opts: { min?: number; max?: number; integer?: boolean; exclusiveMin?: boolean } = {},
  ): number | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    const p = this.prefix + name;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw badParam(p, `Invalid type for '${p}': expected a number, but got ${typeName(v)}.`);
    }
    if (opts.integer && !Number.isSafeInteger(v)) {
      throw badParam(p, `Invalid value for '${p}': expected an integer, but got ${v}.`);
    }
    const { min, max } = opts;
    if (min !== undefined && (opts.exclusiveMin ? v <= min : v < min)) {
      const rel = opts.exclusiveMin ? "greater than" : "greater than or equal to";
      throw badParam(p, `Invalid value for '${p}': ${v} must be ${rel} ${min}.`);
    }
    if (max !== undefined && v > max) {
      throw badParam(p, `Invalid value for '${p}': ${v} must be less than or equal to ${max}.`);
    }
    return v;
  }

  boolean(name: string): boolean | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "boolean") {
      const p = this.prefix + name;
      throw badParam(p, `Invalid type for '${p}': expected a boolean, but got ${typeName(v)}.`);
    }
    return v;
  }

  string(name: string): string | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") {
      const p = this.prefix + name;
      throw badParam(p, `Invalid type for '${p}': expected a string, but got ${typeName(v)}.`);
    }
    return v;
  }

  object(name: string): Json | undefined {
    const v = this.body[name];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) {
      const p = this.prefix + name;
      throw badParam(p, `Invalid type for '${p}': expected an object, but got ${typeName(v)}.`);
    }
    return v as Json;
  }
}

/** Checks a list of token ids (non-negative safe integers below `vocabSize`). */
export function checkTokenIds(v: unknown, param: string, vocabSize: number): number[] {
  if (!Array.isArray(v)) {
    throw badParam(param, `Invalid type for '${param}': expected an array of token ids.`);
  }
  for (let i = 0; i < v.length; i++) {
    const t = v[i];
    if (typeof t !== "number" || !Number.isInteger(t)) {
      throw badParam(`${param}[${i}]`, `Invalid token id at '${param}[${i}]': ${String(t)}.`);
    }
    if (t < 0 || t >= vocabSize) {
      throw badParam(
        `${param}[${i}]`,
        `Token id ${t} at '${param}[${i}]' is out of range [0, ${vocabSize}).`,
      );
    }
  }
  return v as number[];
}

/** Fields common to both endpoints. `maxTokensMin` is 1 for chat and 0 for completions. */
function readCommon(body: Json, maxTokensMin: number, vocabSize: number): CommonRequest {
  const f = new Fields(body);
  const model = f.string("model") ?? null;
  const n = f.number("n", { integer: true, min: 1, max: MAX_N }) ?? 1;
  const stream = f.boolean("stream") ?? false;
  let includeUsage = false;
  const so = f.object("stream_options");
  if (so) {
    includeUsage = new Fields(so, "stream_options.").boolean("include_usage") ?? false;
  }
  const mct = f.number("max_completion_tokens", { integer: true, min: maxTokensMin });
  const mt = f.number("max_tokens", { integer: true, min: maxTokensMin });
  const maxTokens = mct ?? mt ?? null;

  const sampling: Partial<SamplingParams> = {};
  const temperature = f.number("temperature", { min: 0, max: 2 });
  if (temperature !== undefined) sampling.temperature = temperature;
  const topP = f.number("top_p", { min: 0, max: 1, exclusiveMin: true });
  if (topP !== undefined) sampling.topP = topP;
  const topK = f.number("top_k", { integer: true, min: -1, max: vocabSize });
  if (topK !== undefined) sampling.topK = topK < 0 ? 0 : topK;
  const minP = f.number("min_p", { min: 0, max: 1 });
  if (minP !== undefined) sampling.minP = minP;
  const seed = f.number("seed", { integer: true });
  if (seed !== undefined) sampling.seed = seed;
  const ignoreEos = f.boolean("ignore_eos");
  if (ignoreEos !== undefined) sampling.ignoreEos = ignoreEos;
  const pp = f.number("presence_penalty", { min: -2, max: 2 });
  if (pp !== undefined) sampling.presencePenalty = pp;
  const fp = f.number("frequency_penalty", { min: -2, max: 2 });
  if (fp !== undefined) sampling.frequencyPenalty = fp;
  const rp = f.number("repetition_penalty", { min: 0, max: 2, exclusiveMin: true });
  if (rp !== undefined) sampling.repetitionPenalty = rp;
  if (f.has("stop_token_ids")) {
    sampling.stopTokenIds = checkTokenIds(f.raw("stop_token_ids"), "stop_token_ids", vocabSize);
  }

  let stop: string[] = [];
  if (f.has("stop")) {
    const s = f.raw("stop");
    if (typeof s === "string") stop = [s];
    else if (Array.isArray(s)) {
      s.forEach((x, i) => {
        if (typeof x !== "string") {
          throw badParam(`stop[${i}]`, `Invalid type for 'stop[${i}]': expected a string.`);
        }
      });
      stop = s as string[];
    } else {
      throw badParam("stop", "Invalid type for 'stop': expected a string or an array of strings.");
    }
    if (stop.length > 16) throw badParam("stop", "At most 16 stop sequences are allowed.");
    stop = stop.filter((x) => x.length > 0);
  }
  readStructured(body, sampling, vocabSize);
  const user = f.string("user") ?? null;
  const returnTokensAsTokenIds = f.boolean("return_tokens_as_token_ids") ?? false;
  return {
    model,
    n,
    stream,
    includeUsage,
    stop,
    sampling,
    maxTokens,
    user,
    returnTokensAsTokenIds,
  };
}

/** Flattens a message's content: a string or an array of text parts. */
function messageContent(v: unknown, param: string): string {
  if (typeof v === "string") return v;
  if (v === null || v === undefined) return "";
  if (!Array.isArray(v)) {
    throw badParam(param, `Invalid type for '${param}': expected a string or an array of parts.`);
  }
  let text = "";
  v.forEach((part, i) => {
    const p = `${param}[${i}]`;
    if (part === null || typeof part !== "object" || Array.isArray(part)) {
      throw badParam(p, `Invalid type for '${p}': expected an object.`);
    }
    const { type, text: t } = part as Json;
    if (type !== "text") {
      throw badParam(`${p}.type`, `Unsupported content part type '${String(type)}': only 'text'.`);
    }
    if (typeof t !== "string") {
      throw badParam(`${p}.text`, `Invalid type for '${p}.text': expected a string.`);
    }
    text += t;
  });
  return text;
}

/** Validates a chat completion body. */
export function parseChatRequest(body: Json, vocabSize: number): ChatRequest {
  const common = readCommon(body, 1, vocabSize);
  const f = new Fields(body);
  const raw = body.messages;
  if (raw === undefined || raw === null) {
    throw badParam("messages", "Missing required parameter: 'messages'.");
  }
  if (!Array.isArray(raw)) {
    throw badParam("messages", `Invalid type for 'messages': expected an array.`);
  }
  if (raw.length === 0) {
    throw badParam("messages", "Invalid 'messages': empty array. Expected at least 1 message.");
  }
  const messages: ChatMessage[] = raw.map((m, i) => {
    const p = `messages[${i}]`;
    if (m === null || typeof m !== "object" || Array.isArray(m)) {
      throw badParam(p, `Invalid type for '${p}': expected an object.`);
    }
    let role = (m as Json).role;
    if (role === "developer") role = "system";
    if (role !== "system" && role !== "user" && role !== "assistant" && role !== "tool") {
      throw badParam(
        `${p}.role`,
        `Invalid value for '${p}.role': ${JSON.stringify(role) ?? "undefined"}. ` +
          "Supported roles are 'system', 'developer', 'user', 'assistant' and 'tool'.",
      );
    }
    const msg: ChatMessage = { role, content: messageContent((m as Json).content, `${p}.content`) };
    return withToolFields(msg, m as Json, p);
  });
  // Chat logprobs: a boolean plus top_logprobs.
  const logprobs = f.boolean("logprobs") ?? false;
  const top = f.number("top_logprobs", { integer: true, min: 0, max: MAX_TOP_LOGPROBS });
  if (top !== undefined && top > 0 && !logprobs) {
    throw badParam("top_logprobs", "'top_logprobs' requires 'logprobs' to be true.");
  }
  common.sampling.logprobs = logprobs;
  common.sampling.topLogprobs = top ?? 0;
  const templateKwargs = f.object("chat_template_kwargs") ?? {};
  const addGenerationPrompt = f.boolean("add_generation_prompt") ?? true;
  return { ...common, messages, templateKwargs, addGenerationPrompt };
}

/** Validates a (legacy) text completion body. */
export function parseCompletionRequest(body: Json, vocabSize: number): CompletionRequest {
  const common = readCommon(body, 0, vocabSize);
  const f = new Fields(body);
  const raw = body.prompt;
  if (raw === undefined || raw === null) {
    throw badParam("prompt", "Missing required parameter: 'prompt'.");
  }
  let prompts: (string | number[])[];
  if (typeof raw === "string") prompts = [raw];
  else if (Array.isArray(raw)) {
    if (raw.length === 0) throw badParam("prompt", "Invalid 'prompt': empty array.");
    if (raw.every((x) => typeof x === "string")) prompts = raw as string[];
    else if (raw.every((x) => typeof x === "number")) {
      prompts = [checkTokenIds(raw, "prompt", vocabSize)];
    } else if (raw.every((x) => Array.isArray(x))) {
      prompts = raw.map((x, i) => checkTokenIds(x, `prompt[${i}]`, vocabSize));
    } else {
      throw badParam(
        "prompt",
        "Invalid type for 'prompt': expected a string, an array of strings, an array of " +
          "token ids or an array of token id arrays.",
      );
    }
  } else {
    throw badParam("prompt", `Invalid type for 'prompt': expected a string or an array.`);
  }
  prompts.forEach((p, i) => {
    if (p.length === 0) {
      const param = prompts.length > 1 ? `prompt[${i}]` : "prompt";
      throw badParam(param, `Invalid '${param}': the prompt is empty.`);
    }
  });
  const echo = f.boolean("echo") ?? false;
  const logprobs = f.number("logprobs", { integer: true, min: 0, max: MAX_TOP_LOGPROBS }) ??
    null;
  if (logprobs !== null) {
    common.sampling.logprobs = true;
    common.sampling.topLogprobs = logprobs;
    if (echo) common.sampling.promptLogprobs = true;
  }
  if (f.has("suffix")) throw badParam("suffix", "'suffix' is not supported.");
  if (f.has("best_of") && f.number("best_of", { integer: true, min: 1 }) !== common.n) {
    throw badParam("best_of", "'best_of' other than n is not supported.");
  }
  return { ...common, prompts, echo, logprobs };
}
