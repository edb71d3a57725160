/**
 * POST /v1/chat/completions: messages through the model's chat template, n choices,
 * streamed as chat.completion.chunk events or returned whole.
 */

import {
  baseSamplingParams,
  checkModel,
  newId,
  resolveMaxTokens,
  type ServerContext,
} from "./context.ts";
import { ApiError } from "./errors.ts";
import { type ChatLogprobEntry, chatLogprobs, logprobTokenizer, usageJson } from "./format.ts";
import { parseChatRequest } from "./openai.ts";
import { applyToolChoice, parseToolCalls, parseTools, toolFormat } from "./tools.ts";
import { sseData } from "./sse.ts";
import type { RequestUsage } from "../text/textgen.ts";
import { choiceParams, chunksOf, collectChoices, sseChoices, startChoices } from "./choices.ts";

/** Handles one chat completion request. */
export async function chatCompletions(
  ctx: ServerContext,
  body: Record<string, unknown>,
  signal: AbortSignal,
): Promise<Response> {
  const arrival = performance.now();
  const req = parseChatRequest(body, ctx.engine.info.vocabSize);
  const toolReq = parseTools(body);
  // Tools on: in the template, maybe constrained, and the answer parsed for calls.
  const toolsOn = toolReq !== null && toolReq.choice !== "none";
  const format = toolFormat(toolsOn ? ctx.tokenizer.info().chat_template : null);
  if (toolsOn) applyToolChoice(toolReq, format, req.sampling);
  const lpTok = logprobTokenizer(ctx.tokenizer, req.returnTokensAsTokenIds);
  const model = checkModel(ctx, req.model);
  let promptIds: number[];
  try {
    promptIds = await ctx.tokenize.chatTemplate(
      req.messages,
      req.addGenerationPrompt,
      toolsOn ? { ...req.templateKwargs, tools: toolReq.tools } : req.templateKwargs,
    );
  } catch (err) {
    throw new ApiError(
      400,
      `Could not apply the chat template: ${(err as Error).message}`,
      "messages",
    );
  }
  if (promptIds.length === 0) {
    throw new ApiError(400, "The chat template produced an empty prompt.", "messages");
  }
  const maxTokens = resolveMaxTokens(ctx, promptIds.length, req.maxTokens, "messages");
  const id = newId("chatcmpl");
  const created = Math.floor(Date.now() / 1000);
  const ids = Array.from({ length: req.n }, (_, i) => `${id}-${i}`);
  const choices = await startChoices(
    ctx,
    ids.map((rid, i) => ({
      id: rid,
      promptIds,
      params: choiceParams(req.sampling, maxTokens, i, baseSamplingParams(ctx)),
      stop: req.stop,
    })),
    signal,
    arrival,
    req.stream,
  );
  const wantLogprobs = req.sampling.logprobs === true;
  // OpenAI's field order: id, object, created, model.
  const head = (object: string) => ({ id, object, created, model, system_fingerprint: "minisgl" });

  const finals: { prompt: number; usage: RequestUsage }[] = [];

  if (req.stream) {
    const usage = req.includeUsage ? { usage: null } : {};
    const chunk = (index: number, delta: object, logprobs: object | null, finish: string | null) =>
      sseData({
        ...head("chat.completion.chunk"),
        choices: [{ index, delta, logprobs, finish_reason: finish }],
        ...usage,
      });
    // With tools on, a choice's text is held back until it ends and then sent as content
    // and/or tool_calls deltas (the markup must be complete to parse).
    const held = ids.map(() => "");
    const body = async function* (): AsyncGenerator<Uint8Array, void, undefined> {
      for (let i = 0; i < req.n; i++) {
        yield chunk(i, { role: "assistant", content: "" }, null, null);
      }
      for await (const { index, value } of chunksOf(choices)) {
        if (toolsOn) {
          held[index] += value.text;
          if (!value.finish) continue;
          const { content, calls } = parseToolCalls(held[index], format);
          if (content) yield chunk(index, { content }, null, null);
          if (calls.length) {
            const deltas = calls.map((c, k) => ({ index: k, ...c }));
            yield chunk(index, { tool_calls: deltas }, null, null);
          }
          finals.push({ prompt: 0, usage: value.finish.usage });
          const reason = calls.length ? "tool_calls" : value.finish.reason;
          yield chunk(index, {}, null, reason);
          continue;
        }
        const lps = wantLogprobs && value.logprobs.length > 0
          ? { content: chatLogprobs(lpTok, value.logprobs), refusal: null }
          : null;
        if (value.text.length > 0 || lps !== null) {
          yield chunk(index, { content: value.text }, lps, null);
        }
        if (value.finish) {
          finals.push({ prompt: 0, usage: value.finish.usage });
          yield chunk(index, {}, null, value.finish.reason);
        }
      }
    };
    const usageChunk = () => ({
      ...head("chat.completion.chunk"),
      choices: [],
      usage: usageJson(finals),
    });
    return sseChoices(choices, body(), req.includeUsage ? usageChunk : null);
  }

  const texts = ids.map(() => "");
  const lps: ChatLogprobEntry[][] = ids.map(() => []);
  const reasons: (string | null)[] = ids.map(() => null);
  await collectChoices(choices, ({ index, value }) => {
    texts[index] += value.text;
    if (wantLogprobs) lps[index].push(...chatLogprobs(lpTok, value.logprobs));
    if (value.finish) {
      reasons[index] = value.finish.reason;
      finals.push({ prompt: 0, usage: value.finish.usage });
    }
  });
  return Response.json({
    ...head("chat.completion"),
    choices: ids.map((_, i) => {
      const parsed = toolsOn ? parseToolCalls(texts[i], format) : null;
      const message = parsed?.calls.length
        ? { role: "assistant", content: parsed.content, refusal: null, tool_calls: parsed.calls }
        : { role: "assistant", content: texts[i], refusal: null };
      return {
        index: i,
        message,
        logprobs: wantLogprobs ? { content: lps[i], refusal: null } : null,
        finish_reason: parsed?.calls.length ? "tool_calls" : reasons[i],
      };
    }),
    usage: usageJson(finals),
  });
}
