/**
 * The text-generation layer between the engine (token ids in, token events out) and the
 * API surfaces (HTTP server, shell, offline `LLM` in src/llm/): incremental detokenization that
 * never emits broken UTF-8, stop strings that never reach the output, token logprobs, and
 * the usage numbers of a finished request.
 */

import type { Engine, SamplingParams, TokenEvent } from "../engine/types.ts";
import { TextError } from "./errors.ts";
import { StopMatcher } from "./stop.ts";

/** Turns token ids into text piece by piece (holds back incomplete UTF-8). */
export interface TextDecoderStream {
  /** Adds tokens; returns the new complete text. */
  push(ids: number[]): string;
  /** Ends the stream; returns whatever was held back. */
  flush(): string;
}

/** One alternative token and its logprob. */
export interface TopLogprob {
  id: number;
  logprob: number;
}

/** One generated token with its logprob and top alternatives (ids). */
export interface TokenLogprob {
  id: number;
  logprob: number;
  top: TopLogprob[];
}

/** Why a request finished, in OpenAI's words. */
export type TextFinishReason = "stop" | "length";

/** Usage numbers of one finished request. */
export interface RequestUsage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

/** One step of a text stream. */
export interface TextChunk {
  /** New output text (may be empty). */
  text: string;
  /** Tokens generated since the last chunk (stop tokens and tokens past a stop string
   *  left out). */
  tokens: number[];
  /** Their logprobs, when asked for. */
  logprobs: TokenLogprob[];
  /** Prompt logprobs (first null), on the first chunk when asked for. */
  promptLogprobs?: (number | null)[];
  /** Top alternatives at each prompt position (first null), with promptLogprobs when the
   *  request asked for top logprobs. */
  promptTopLogprobs?: (TopLogprob[] | null)[];
  /** Set on the last chunk. */
  finish?: {
    reason: TextFinishReason;
    usage: RequestUsage;
    stopString?: string;
    /** The token id that ended the request (eos or a stop token id), if one did. */
    stopToken?: number;
  };
}

/** A request for `generateText`. */
export interface TextRequest {
  id: string;
  promptIds: number[];
  params: SamplingParams;
  stop: string[];
}

/** Latency observers (for the server's histograms). */
export interface TextHooks {
  /** Seconds from submission to the first generated token. */
  onFirstToken?(seconds: number): void;
  /** Seconds between two token events, once per token of the later event. */
  onInterToken?(seconds: number): void;
}

/** Detokenization plus stop strings: token ids in, safe text out, cut at a stop string. */
export class TextAssembler {
  readonly #decoder: TextDecoderStream;
  readonly #matcher: StopMatcher;

  constructor(decoder: TextDecoderStream, stops: readonly string[]) {
    this.#decoder = decoder;
    this.#matcher = new StopMatcher(stops);
  }

  /** True once a stop string matched. */
  get stopped(): boolean {
    return this.#matcher.stopped;
  }

  /** Adds tokens one at a time; `kept` counts the tokens consumed up to and including the
   *  one that completed a stop string (the rest are not part of the output). */
  push(tokens: readonly number[]): { text: string; kept: number; stop: string | null } {
    let text = "";
    let kept = 0;
    for (const t of tokens) {
      if (this.#matcher.stopped) break;
      kept++;
      const r = this.#matcher.push(this.#decoder.push([t]));
      text += r.text;
      if (r.stop !== null) return { text, kept, stop: r.stop };
    }
    return { text, kept, stop: null };
  }

  /** End of stream: the text still held back (incomplete characters, stop prefixes). */
  flush(): string {
    if (this.#matcher.stopped) return "";
    return this.#matcher.push(this.#decoder.flush()).text + this.#matcher.flush();
  }
}

/** Converts one engine event's logprobs into `TokenLogprob`s. */
function eventLogprobs(ev: TokenEvent, count: number): TokenLogprob[] {
  if (!ev.logprobs) return [];
  const out: TokenLogprob[] = [];
  for (let i = 0; i < count; i++) {
    const top = ev.topLogprobs?.[i];
    out.push({
      id: ev.tokens[i],
      logprob: ev.logprobs[i],
      top: top ? top.ids.map((id, j) => ({ id, logprob: top.logprobs[j] })) : [],
    });
  }
  return out;
}

/**
 * Runs one request on the engine and yields text chunks. The last chunk has `finish`.
 * Stopping early (a stop string) aborts the engine request at once; so does `return()`
 * on the generator (a client that went away).
 */
export async function* generateText(
  engine: Engine,
  decoder: TextDecoderStream,
  req: TextRequest,
  hooks: TextHooks = {},
): AsyncGenerator<TextChunk, void, undefined> {
  const assembler = new TextAssembler(decoder, req.stop);
  const started = performance.now();
  let last = started;
  let generated = 0;
  let finished = false;
  let firstEvent = true;
  try {
    for await (
      const ev of engine.submit({ id: req.id, promptIds: req.promptIds, params: req.params })
    ) {
      const fin = ev.finish;
      if (assembler.stopped) {
        // Draining after an abort we asked for: only the usage numbers matter now.
        if (fin) {
          finished = true;
          yield {
            text: "",
            tokens: [],
            logprobs: [],
            finish: {
              reason: "stop",
              usage: {
                promptTokens: fin.promptTokens,
                completionTokens: generated,
                cachedTokens: fin.cachedTokens,
              },
            },
          };
          return;
        }
        continue;
      }
      if (fin?.reason === "abort") {
        finished = true;
        if (fin.error) throw new TextError("rejected", fin.error);
        throw new TextError("aborted", "The request was aborted: the server is shutting down.");
      }
      let tokens = ev.tokens;
      if (tokens.length > 0) {
        const now = performance.now();
        if (generated === 0) hooks.onFirstToken?.((now - started) / 1000);
        else for (let i = 0; i < tokens.length; i++) hooks.onInterToken?.((now - last) / 1000);
        last = now;
      }
      // The token that ended the request (eos, a stop token id) is not part of the text.
      if (fin?.stopToken !== undefined && tokens.at(-1) === fin.stopToken) {
        tokens = tokens.slice(0, -1);
      }
      const { text, kept, stop } = assembler.push(tokens);
      const stopString = stop ?? undefined;
      generated += kept;
      const chunk: TextChunk = {
        text,
        tokens: tokens.slice(0, kept),
        logprobs: eventLogprobs(ev, kept),
      };
      if (firstEvent && ev.promptLogprobs) chunk.promptLogprobs = ev.promptLogprobs;
      if (firstEvent && ev.promptTopLogprobs) {
        chunk.promptTopLogprobs = ev.promptTopLogprobs.map((t) =>
          t ? t.ids.map((id, j) => ({ id, logprob: t.logprobs[j] })) : null
        );
      }
      firstEvent = false;
      if (stopString !== undefined) {
        if (fin) {
          finished = true;
          chunk.finish = {
            reason: "stop",
            stopString,
            usage: {
              promptTokens: fin.promptTokens,
              completionTokens: generated,
              cachedTokens: fin.cachedTokens,
            },
          };
          yield chunk;
          return;
        }
        engine.abort(req.id);
        yield chunk;
        continue;
      }
      if (fin) {
        finished = true;
        chunk.text += assembler.flush();
        chunk.finish = {
          reason: fin.reason === "length" ? "length" : "stop",
          stopToken: fin.stopToken,
          usage: {
            promptTokens: fin.promptTokens,
            completionTokens: fin.completionTokens,
            cachedTokens: fin.cachedTokens,
          },
        };
      }
      yield chunk;
      if (fin) return;
    }
    if (!finished) throw new Error(`engine stream of request ${req.id} ended without finish`);
  } finally {
    // The consumer stopped early (client gone) or something threw: free the request now.
    if (!finished) engine.abort(req.id);
  }
}

/** A whole request's result, collected from `generateText`. */
export interface TextResult {
  text: string;
  tokens: number[];
  logprobs: TokenLogprob[];
  promptLogprobs?: (number | null)[];
  promptTopLogprobs?: (TopLogprob[] | null)[];
  finishReason: TextFinishReason;
  usage: RequestUsage;
}

/** Runs `generateText` to the end and joins the chunks. */
export async function collectText(
  engine: Engine,
  decoder: TextDecoderStream,
  req: TextRequest,
  hooks: TextHooks = {},
): Promise<TextResult> {
  let text = "";
  const tokens: number[] = [];
  const logprobs: TokenLogprob[] = [];
  let promptLogprobs: (number | null)[] | undefined;
  let promptTopLogprobs: (TopLogprob[] | null)[] | undefined;
  for await (const chunk of generateText(engine, decoder, req, hooks)) {
    text += chunk.text;
    tokens.push(...chunk.tokens);
    logprobs.push(...chunk.logprobs);
    if (chunk.promptLogprobs) promptLogprobs = chunk.promptLogprobs;
    if (chunk.promptTopLogprobs) promptTopLogprobs = chunk.promptTopLogprobs;
    if (chunk.finish) {
      return {
        text,
        tokens,
        logprobs,
        promptLogprobs,
        promptTopLogprobs,
        finishReason: chunk.finish.reason,
        usage: chunk.finish.usage,
      };
    }
  }
  throw new Error(`request ${req.id} ended without finish`);
}
