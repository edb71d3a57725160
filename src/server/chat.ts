/**
 * POST /v1/chat/completions: messages through the model's chat template, n choices,
 * streamed as chat.completion.chunk events or returned whole.
 */

import { defaultSamplingParams, type SamplingParams } from "../engine/types.ts";
import { admit, checkModel, newId, resolveMaxTokens, type ServerContext } from "./context.ts";
import { ApiError } from "./errors.ts";
import {
  type ChatLogprobEntry,
  chatLogprobs,
  mergeStreams,
  runChoice,
  usageJson,
} from "./format.ts";
import { parseChatRequest } from "./openai.ts";
import { SSE_DONE, sseData, sseResponse } from "./sse.ts";
import type { RequestUsage, TextChunk } from "./textgen.ts";

/** Sampling parameters of choice `i` of a request (seed + i keeps choices distinct). */
export function choiceParams(
  sampling: Partial<SamplingParams>,
  maxTokens: number,
  i: number,
): SamplingParams {
  const p: SamplingParams = { ...defaultSamplingParams(), ...sampling, maxTokens };
  if (p.seed !== undefined) p.seed = p.seed + i;
  return p;
}

/** Aborts the engine requests of a route when the client goes away. */
export function abortOnDisconnect(
  ctx: ServerContext,
  signal: AbortSignal,
  ids: string[],
): () => void {
  let done = false;
  const abort = () => {
    if (done) return;
    done = true;
    for (const id of ids) ctx.engine.abort(id);
  };
  signal.addEventListener("abort", abort, { once: true });
  return abort;
}

/** Handles one chat completion request. */
export async function chatCompletions(
  ctx: ServerContext,
  body: Record<string, unknown>,
  signal: AbortSignal,
): Promise<Response> {
  const arrival = performance.now();
  const req = parseChatRequest(body, ctx.engine.info.vocabSize);
  const model = checkModel(ctx, req.model);
  let promptIds: number[];
  try {
    promptIds = ctx.tokenizer.chatTemplate(
      req.messages,
      req.addGenerationPrompt,
      req.templateKwargs,
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
  admit(ctx, req.n);
  const gens = ids.map((rid, i) =>
    runChoice(ctx, {
      id: rid,
      promptIds,
      params: choiceParams(req.sampling, maxTokens, i),
      stop: req.stop,
    }, arrival)
  );
  const abort = abortOnDisconnect(ctx, signal, ids);
  const merged = mergeStreams(gens);
  // Wait for the first chunk so that a request the engine rejects gets a real HTTP error.
  let first: IteratorResult<{ index: number; value: TextChunk }, void>;
  try {
    first = await merged.next();
  } catch (err) {
    abort();
    throw err;
  }
  const wantLogprobs = req.sampling.logprobs === true;
  // OpenAI's field order: id, object, created, model.
  const head = (object: string) => ({ id, object, created, model, system_fingerprint: "minisgl" });

  if (req.stream) {
    const usage = req.includeUsage ? { usage: null } : {};
    const frames = async function* (): AsyncGenerator<Uint8Array, void, undefined> {
      for (let i = 0; i < req.n; i++) {
        yield sseData({
          ...head("chat.completion.chunk"),
          choices: [{
            index: i,
            delta: { role: "assistant", content: "" },
            logprobs: null,
            finish_reason: null,
          }],
          ...usage,
        });
      }
      const finals: { prompt: number; usage: RequestUsage }[] = [];
      let next = first;
      while (!next.done) {
        const { index, value } = next.value;
        const lps = wantLogprobs && value.logprobs.length > 0
          ? { content: chatLogprobs(ctx.tokenizer, value.logprobs), refusal: null }
          : null;
        if (value.text.length > 0 || lps !== null) {
          yield sseData({
            ...head("chat.completion.chunk"),
            choices: [{
              index,
              delta: { content: value.text },
              logprobs: lps,
              finish_reason: null,
            }],
            ...usage,
          });
        }
        if (value.finish) {
          finals.push({ prompt: 0, usage: value.finish.usage });
          yield sseData({
            ...head("chat.completion.chunk"),
            choices: [{ index, delta: {}, logprobs: null, finish_reason: value.finish.reason }],
            ...usage,
          });
        }
        next = await merged.next();
      }
      if (req.includeUsage) {
        yield sseData({
          ...head("chat.completion.chunk"),
          choices: [],
          usage: usageJson(finals),
        });
      }
      yield SSE_DONE;
    };
    return sseResponse(frames(), () => {
      abort();
      merged.return(undefined).catch(() => {});
    });
  }

  const texts = ids.map(() => "");
  const lps: ChatLogprobEntry[][] = ids.map(() => []);
  const reasons: (string | null)[] = ids.map(() => null);
  const finals: { prompt: number; usage: RequestUsage }[] = [];
  try {
    let next = first;
    while (!next.done) {
      const { index, value } = next.value;
      texts[index] += value.text;
      if (wantLogprobs) lps[index].push(...chatLogprobs(ctx.tokenizer, value.logprobs));
      if (value.finish) {
        reasons[index] = value.finish.reason;
        finals.push({ prompt: 0, usage: value.finish.usage });
      }
      next = await merged.next();
    }
  } catch (err) {
    abort();
    throw err;
  }
  return Response.json({
    ...head("chat.completion"),
    choices: ids.map((_, i) => ({
      index: i,
      message: { role: "assistant", content: texts[i], refusal: null },
      logprobs: wantLogprobs ? { content: lps[i], refusal: null } : null,
      finish_reason: reasons[i],
    })),
    usage: usageJson(finals),
  });
}
