/**
 * POST /v1/completions: one or more prompts (text or token ids) × n choices, with echo
 * and legacy-format logprobs (prompt tokens' logprobs too, the first one null).
 */

import {
  baseSamplingParams,
  checkModel,
  newId,
  resolveMaxTokens,
  type ServerContext,
} from "./context.ts";
import { choiceParams, chunksOf, collectChoices, sseChoices, startChoices } from "./choices.ts";
import {
  type CompletionLogprobs,
  completionLogprobs,
  generatedItems,
  type LogprobItem,
  logprobTokenizer,
  promptItems,
  usageJson,
} from "./format.ts";
import { parseCompletionRequest } from "./openai.ts";
import { sseData } from "./sse.ts";
import type { RequestUsage, TextChunk } from "../text/textgen.ts";

/** max_tokens when a completion request does not say (OpenAI's default). */
export const DEFAULT_MAX_TOKENS = 16;

/** Handles one text completion request. */
export async function completions(
  ctx: ServerContext,
  body: Record<string, unknown>,
  signal: AbortSignal,
): Promise<Response> {
  const arrival = performance.now();
  const req = parseCompletionRequest(body, ctx.engine.info.vocabSize);
  const model = checkModel(ctx, req.model);
  const tok = ctx.tokenizer;
  const lpTok = logprobTokenizer(tok, req.returnTokensAsTokenIds);
  const prompts = await Promise.all(req.prompts.map(async (p) => {
    const ids = typeof p === "string" ? await ctx.tokenize.encode(p, true) : p;
    return { ids, text: typeof p === "string" ? p : await ctx.tokenize.decode(p) };
  }));
  // OpenAI's legacy default is 16 tokens; the context bounds it too.
  const maxTokens = prompts.map((p) =>
    resolveMaxTokens(ctx, p.ids.length, req.maxTokens, "prompt", DEFAULT_MAX_TOKENS)
  );
  const id = newId("cmpl");
  const created = Math.floor(Date.now() / 1000);
  const n = req.n;
  const total = prompts.length * n;
  // Choice c belongs to prompt floor(c / n), as OpenAI numbers them.
  const ids = Array.from({ length: total }, (_, c) => `${id}-${c}`);
  const choices = await startChoices(
    ctx,
    ids.map((rid, c) => ({
      id: rid,
      promptIds: prompts[Math.floor(c / n)].ids,
      params: choiceParams(
        req.sampling,
        maxTokens[Math.floor(c / n)],
        c % n,
        baseSamplingParams(ctx),
      ),
      stop: req.stop,
    })),
    signal,
    arrival,
    req.stream,
  );
  const wantLogprobs = req.logprobs !== null;
  // OpenAI's field order: id, object, created, model.
  const head = (object: string) => ({ id, object, created, model, system_fingerprint: "minisgl" });

  // Per choice: text so far (for text_offset) and whether the echo went out.
  const textLen = ids.map(() => 0);
  const echoed = ids.map(() => false);
  /** A chunk's text and logprobs, with the echoed prompt in front of the first one. */
  const render = (
    c: number,
    chunk: TextChunk,
  ): { text: string; logprobs: CompletionLogprobs | null } => {
    let text = chunk.text;
    const items: LogprobItem[] = [];
    if (req.echo && !echoed[c]) {
      echoed[c] = true;
      const p = prompts[Math.floor(c / n)];
      text = p.text + text;
      if (wantLogprobs) {
        items.push(...promptItems(p.ids, chunk.promptLogprobs, chunk.promptTopLogprobs));
      }
    }
    if (wantLogprobs) items.push(...generatedItems(chunk.logprobs));
    const logprobs = wantLogprobs ? completionLogprobs(lpTok, items, textLen[c]) : null;
    textLen[c] += text.length;
    return { text, logprobs };
  };

  const finals: { prompt: number; usage: RequestUsage }[] = [];

  if (req.stream) {
    const usage = req.includeUsage ? { usage: null } : {};
    const body = async function* (): AsyncGenerator<Uint8Array, void, undefined> {
      for await (const { index, value } of chunksOf(choices)) {
        const { text, logprobs } = render(index, value);
        if (text.length > 0 || value.finish || (logprobs && logprobs.tokens.length > 0)) {
          yield sseData({
            ...head("text_completion"),
            choices: [{ index, text, logprobs, finish_reason: value.finish?.reason ?? null }],
            ...usage,
          });
        }
        if (value.finish) finals.push({ prompt: Math.floor(index / n), usage: value.finish.usage });
      }
    };
    const usageChunk = () => ({
      ...head("text_completion"),
      choices: [],
      usage: usageJson(finals),
    });
    return sseChoices(choices, body(), req.includeUsage ? usageChunk : null);
  }

  const texts = ids.map(() => "");
  const lps: (CompletionLogprobs | null)[] = ids.map(() => null);
  const reasons: (string | null)[] = ids.map(() => null);
  await collectChoices(choices, ({ index, value }) => {
    const { text, logprobs } = render(index, value);
    texts[index] += text;
    if (logprobs) {
      const acc = lps[index];
      if (acc === null) lps[index] = logprobs;
      else {
        acc.tokens.push(...logprobs.tokens);
        acc.token_logprobs.push(...logprobs.token_logprobs);
        acc.top_logprobs.push(...logprobs.top_logprobs);
        acc.text_offset.push(...logprobs.text_offset);
      }
    }
    if (value.finish) {
      reasons[index] = value.finish.reason;
      finals.push({ prompt: Math.floor(index / n), usage: value.finish.usage });
    }
  });
  return Response.json({
    ...head("text_completion"),
    choices: ids.map((_, c) => ({
      index: c,
      text: texts[c],
      logprobs: lps[c],
      finish_reason: reasons[c],
    })),
    usage: usageJson(finals),
  });
}
