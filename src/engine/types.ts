/**
 * The core vocabulary shared by the engine, the scheduler, the text layer, the server, the
 * shell, the offline LLM and the benchmarks: sampling parameters, requests, token events,
 * metrics and the `Engine` interface. Everyone imports these from here, never from another
 * layer's internals; this module imports nothing. A request goes in as token ids with
 * sampling parameters; tokens come back as an async stream of events. Text
 * (detokenization, stop strings) is src/text/'s job.
 */

/** Sampling and stopping parameters of one request (OpenAI / vLLM semantics). */
export interface SamplingParams {
  /** 0 = greedy. Default 1. */
  temperature: number;
  topP: number;
  /** 0 or -1 = off. */
  topK: number;
  minP: number;
  /** Undefined = a random seed chosen at submission. */
  seed?: number;
  /** Most tokens to generate (0 allowed: only prompt logprobs). */
  maxTokens: number;
  /** Do not stop at the model's eos ids. */
  ignoreEos: boolean;
  /** Extra token ids that end the request (finish reason "stop"). */
  stopTokenIds: number[];
  presencePenalty: number;
  frequencyPenalty: number;
  repetitionPenalty: number;
  /** Return the logprob of each generated token. */
  logprobs: boolean;
  /** Also return this many top alternatives per generated token (0..20). */
  topLogprobs: number;
  /** Return the logprob of every prompt token (first one null), for `echo`; with
   *  topLogprobs, also the top alternatives at every prompt position. */
  promptLogprobs: boolean;
  /** Structured output: the completion must match this regex, JSON Schema (as JSON text)
   *  or be a JSON object; it ends (eos) only where the match is complete. Null = free. */
  constraint?: {
    kind: "regex" | "json_schema" | "json_object" | "tool_calls" | "ebnf";
    source: string;
  } | null;
  /** OpenAI logit_bias: [token id, value in -100..100] added to the logits. */
  logitBias?: [number, number][] | null;
}

/** Defaults a vLLM / SGLang user expects. */
export function defaultSamplingParams(): SamplingParams {
  return {
    temperature: 1,
    topP: 1,
    topK: 0,
    minP: 0,
    maxTokens: 16,
    ignoreEos: false,
    stopTokenIds: [],
    presencePenalty: 0,
    frequencyPenalty: 0,
    repetitionPenalty: 1,
    logprobs: false,
    topLogprobs: 0,
    promptLogprobs: false,
  };
}

/** A request given to the engine. */
export interface EngineRequest {
  /** Unique id chosen by the caller. */
  id: string;
  promptIds: number[];
  params: SamplingParams;
}

export type FinishReason = "stop" | "length" | "abort";

/** One event of a request's stream. Every request ends with exactly one event that has
 *  `finish` set (it may carry tokens too). */
export interface TokenEvent {
  /** New tokens since the last event (may be empty). */
  tokens: number[];
  /** Logprob of each token in `tokens` (when params.logprobs). */
  logprobs?: number[];
  /** Top alternatives for each token in `tokens` (when params.topLogprobs > 0). */
  topLogprobs?: { ids: number[]; logprobs: number[] }[];
  /** Prompt logprobs (when params.promptLogprobs), in the first event; first is null. */
  promptLogprobs?: (number | null)[];
  /** With promptLogprobs and topLogprobs k > 0: the top k alternatives at each prompt
   *  position (first is null), in the first event. */
  promptTopLogprobs?: ({ ids: number[]; logprobs: number[] } | null)[];
  finish?: {
    reason: FinishReason;
    /** The token id that stopped the request (eos or a stop token), if any. */
    stopToken?: number;
    promptTokens: number;
    completionTokens: number;
    /** Prompt tokens served from the prefix cache. */
    cachedTokens: number;
    /** Error message when the request could not be served (reason "abort"). */
    error?: string;
  };
}

/** Scheduler metrics, as served on /metrics. Invariant:
 *  kvPagesTotal = kvPagesFree + kvPagesCached + kvPagesInUse. */
export interface EngineMetrics {
  numRequestsRunning: number;
  numRequestsWaiting: number;
  kvPagesTotal: number;
  kvPagesFree: number;
  kvPagesCached: number;
  kvPagesInUse: number;
  promptTokensTotal: number;
  cachedTokensTotal: number;
  generatedTokensTotal: number;
  retractionsTotal: number;
}

/** What callers may need to know about the loaded model and engine. */
export interface EngineInfo {
  modelName: string;
  modelDir: string;
  backend: "cpu" | "cuda";
  deviceName: string;
  /** The model's context length (max_position_embeddings, capped by the pool). */
  maxContextLen: number;
  vocabSize: number;
  eosTokenIds: number[];
  numPages: number;
  pageSize: number;
}

/** The engine: one per process. */
export interface Engine {
  readonly info: EngineInfo;
  /** Start a request. Rejects at once (a finish event with reason "abort" and an error)
   *  when it can never fit. */
  submit(request: EngineRequest): AsyncIterable<TokenEvent>;
  /** Stop a request; its stream ends with reason "abort" and its pages are freed. */
  abort(id: string): void;
  /** Scheduler gauges; rejects when the scheduler does not answer in time or is dead. */
  metrics(): Promise<EngineMetrics>;
  /** Drops every cached prefix; false (nothing done) while requests wait or run. */
  flushCache(): Promise<boolean>;
  /** Why the engine stopped serving (a worker failed), or null while it serves. Once set,
   *  every open stream has ended with this error and new requests are rejected with it. */
  readonly failure: string | null;
  /** Resolves with the reason when the engine dies; never settles otherwise. */
  readonly dead: Promise<string>;
  /** Finish in-flight work (or abort it when `abort` is true) and stop the workers. */
  shutdown(options?: { abort?: boolean }): Promise<void>;
}
