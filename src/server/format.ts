/**
 * Response pieces shared by the chat and completion routes: usage, logprobs in OpenAI's
 * two formats, merging the streams of n choices, and running one choice with the
 * server's bookkeeping (admission slot, metrics).
 */

import { engineFailed, release, type ServerContext } from "./context.ts";
import { TextError } from "../text/errors.ts";
import type { TextTokenizer } from "../text/tokenizer_port.ts";
import {
  generateText,
  type RequestUsage,
  type TextChunk,
  type TextRequest,
  type TokenLogprob,
  type TopLogprob,
} from "../text/textgen.ts";

/** OpenAI's usage object. */
export interface UsageJson {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** Usage of a request made of prompts × n choices: each prompt counts once. */
export function usageJson(choices: { prompt: number; usage: RequestUsage }[]): UsageJson {
  const prompts = new Map<number, RequestUsage>();
  let completion = 0;
  for (const c of choices) {
    if (!prompts.has(c.prompt)) prompts.set(c.prompt, c.usage);
    completion += c.usage.completionTokens;
  }
  let prompt = 0;
  let cached = 0;
  for (const u of prompts.values()) {
    prompt += u.promptTokens;
    cached += u.cachedTokens;
  }
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: cached },
  };
}

/** One entry of chat logprobs.content. */
export interface ChatLogprobEntry {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

/** OpenAI caps -inf logprobs at this value (JSON has no infinities). */
function finite(x: number): number {
  return Number.isFinite(x) ? x : -9999;
}

/** Chat-format logprobs entries for generated tokens. */
export function chatLogprobs(tok: TextTokenizer, lps: TokenLogprob[]): ChatLogprobEntry[] {
  return lps.map((lp) => ({
    token: tok.tokenText(lp.id),
    logprob: finite(lp.logprob),
    bytes: tok.tokenBytes(lp.id),
    top_logprobs: lp.top.map((t) => ({
      token: tok.tokenText(t.id),
      logprob: finite(t.logprob),
      bytes: tok.tokenBytes(t.id),
    })),
  }));
}

/** The legacy completions logprobs object. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[];
  text_offset: number[];
}

/** A token for completion logprobs: prompt tokens have no alternatives (top null). */
export interface LogprobItem {
  id: number;
  logprob: number | null;
  top: { id: number; logprob: number }[] | null;
}

/** Legacy-format logprobs starting at character `offset` of the choice's text. */
export function completionLogprobs(
  tok: TextTokenizer,
  items: LogprobItem[],
  offset: number,
): CompletionLogprobs {
  const out: CompletionLogprobs = {
    tokens: [],
    token_logprobs: [],
    top_logprobs: [],
    text_offset: [],
  };
  for (const it of items) {
    const text = tok.tokenText(it.id);
    out.tokens.push(text);
    out.token_logprobs.push(it.logprob === null ? null : finite(it.logprob));
    if (it.top === null) {
      out.top_logprobs.push(it.logprob === null ? null : { [text]: finite(it.logprob) });
    } else {
      const top: Record<string, number> = {};
      for (const t of it.top) top[tok.tokenText(t.id)] = finite(t.logprob);
      if (it.logprob !== null && !(text in top)) top[text] = finite(it.logprob);
      out.top_logprobs.push(top);
    }
    out.text_offset.push(offset);
    offset += text.length;
  }
  return out;
}

/** The tokenizer logprobs are rendered with: token ids as "token_id:ID" when the request
 *  asked (vLLM's return_tokens_as_token_ids), so that a client can map them back exactly. */
export function logprobTokenizer(tok: TextTokenizer, asTokenIds: boolean): TextTokenizer {
  if (!asTokenIds) return tok;
  const utf8 = new TextEncoder();
  return {
    ...tok,
    tokenText: (id) => `token_id:${id}`,
    tokenBytes: (id) => [...utf8.encode(`token_id:${id}`)],
  };
}

/** Items for generated tokens. */
export function generatedItems(lps: TokenLogprob[]): LogprobItem[] {
  return lps.map((lp) => ({ id: lp.id, logprob: lp.logprob, top: lp.top }));
}

/** Items for prompt tokens with their logprobs (first null) and, when the engine
 *  returned them, the real top alternatives at each position. */
export function promptItems(
  ids: number[],
  lps: (number | null)[] | undefined,
  tops?: (TopLogprob[] | null)[],
): LogprobItem[] {
  return ids.map((id, i) => {
    const lp = lps?.[i];
    const logprob = lp === undefined || lp === null || Number.isNaN(lp) ? null : lp;
    return { id, logprob, top: logprob === null ? null : tops?.[i] ?? null };
  });
}

/** Interleaves several streams as their values come; returns (ends) the rest when the
 *  consumer stops early or one of them throws. */
export async function* mergeStreams<T>(
  gens: AsyncGenerator<T, void, undefined>[],
): AsyncGenerator<{ index: number; value: T }, void, undefined> {
  const pending = new Map<number, Promise<{ index: number; r: IteratorResult<T, void> }>>();
  const pull = (i: number) => pending.set(i, gens[i].next().then((r) => ({ index: i, r })));
  gens.forEach((_, i) => pull(i));
  try {
    while (pending.size > 0) {
      const { index, r } = await Promise.race(pending.values());
      if (r.done) {
        pending.delete(index);
        continue;
      }
      pull(index);
      yield { index, value: r.value };
    }
  } finally {
    for (const i of pending.keys()) {
      pending.get(i)!.catch(() => {});
      gens[i].return(undefined).catch(() => {});
    }
  }
}

/** Runs one choice with the server's bookkeeping; the admission slot is released when it
 *  ends, however it ends. */
export async function* runChoice(
  ctx: ServerContext,
  req: TextRequest,
  arrival: number,
): AsyncGenerator<TextChunk, void, undefined> {
  const m = ctx.metrics;
  let outcome = "abort";
  try {
    const gen = generateText(ctx.engine, ctx.tokenizer.detokenizer(req.promptIds), req, {
      onFirstToken: (s) => m.ttft.observe(s),
      onInterToken: (s) => m.itl.observe(s),
    });
    for await (const chunk of gen) {
      if (chunk.finish) {
        outcome = chunk.finish.reason;
        m.e2e.observe((performance.now() - arrival) / 1000);
      }
      yield chunk;
    }
  } catch (err) {
    // Aborted with the server still up: the client went away, no server error.
    const gone = err instanceof TextError && err.kind === "aborted" && !ctx.closing;
    outcome = gone ? "abort" : "error";
    // A stream the dead engine ended is the server's failure, not the client's.
    const failure = ctx.engine.failure;
    if (failure !== null && err instanceof TextError && err.kind === "rejected") {
      throw engineFailed(failure);
    }
    throw err;
  } finally {
    m.finish(outcome);
    release(ctx);
  }
}
