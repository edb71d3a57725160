/**
 * The choices of one API request (n per prompt) as engine requests: started together,
 * merged into one stream in arrival order, aborted together when the client goes away.
 * Shared by /v1/chat/completions and /v1/completions.
 */

import { defaultSamplingParams, type SamplingParams } from "../engine/types.ts";
import { admit, checkResponseSize, type ServerContext } from "./context.ts";
import { mergeStreams, runChoice } from "./format.ts";
import { SSE_DONE, sseData, sseResponse } from "./sse.ts";
import type { TextChunk, TextRequest } from "../text/textgen.ts";

/** Sampling parameters of choice `i` of a request (seed + i keeps choices distinct): the
 *  request's own over `base` (the server's defaults, see baseSamplingParams). */
export function choiceParams(
  sampling: Partial<SamplingParams>,
  maxTokens: number,
  i: number,
  base: SamplingParams = defaultSamplingParams(),
): SamplingParams {
  const p: SamplingParams = { ...base, ...sampling, maxTokens };
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

/** A chunk of choice `index`. */
export type ChoiceChunk = { index: number; value: TextChunk };

/** Running choices: their merged stream, and how to abort them all. */
export interface Choices {
  first: IteratorResult<ChoiceChunk, void>;
  merged: AsyncGenerator<ChoiceChunk, void, undefined>;
  abort: () => void;
}

/** Admits and starts every choice, and waits for the first chunk so that a request the
 *  engine rejects still gets a real HTTP error. A non-streaming response must fit the
 *  response-size limit. */
export async function startChoices(
  ctx: ServerContext,
  requests: TextRequest[],
  signal: AbortSignal,
  arrival: number,
  stream: boolean,
): Promise<Choices> {
  if (!stream) checkResponseSize(requests.map((r) => r.params));
  admit(ctx, requests.length);
  const gens = requests.map((r) => runChoice(ctx, r, arrival));
  const abort = abortOnDisconnect(ctx, signal, requests.map((r) => r.id));
  const merged = mergeStreams(gens);
  try {
    return { first: await merged.next(), merged, abort };
  } catch (err) {
    abort();
    throw err;
  }
}

/** Every chunk of the choices in arrival order. */
export async function* chunksOf(c: Choices): AsyncGenerator<ChoiceChunk, void, undefined> {
  let next = c.first;
  while (!next.done) {
    yield next.value;
    next = await c.merged.next();
  }
}

/** Collects every chunk with `onChunk` (non-streaming responses); aborts on failure. */
export async function collectChoices(c: Choices, onChunk: (ch: ChoiceChunk) => void) {
  try {
    for await (const ch of chunksOf(c)) onChunk(ch);
  } catch (err) {
    c.abort();
    throw err;
  }
}

/** An SSE response of `body`'s frames, then the usage chunk (when asked) and [DONE]. A
 *  client that goes away aborts every choice. */
export function sseChoices(
  c: Choices,
  body: AsyncGenerator<Uint8Array, void, undefined>,
  usageChunk: (() => Record<string, unknown>) | null,
): Response {
  const frames = async function* (): AsyncGenerator<Uint8Array, void, undefined> {
    yield* body;
    if (usageChunk) yield sseData(usageChunk());
    yield SSE_DONE;
  };
  return sseResponse(frames(), () => {
    c.abort();
    c.merged.return(undefined).catch(() => {});
  });
}
