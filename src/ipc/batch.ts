/**
 * What the scheduler sends to a GPU worker (a forward batch) and what comes back (its
 * result). These are the in-memory shapes; `batch_codec.ts` turns them into the binary
 * records that travel through the SharedArrayBuffer rings of `ring.ts`.
 */

/** Per-row sampling parameters, as `msg_sampling_params` of cuda/include/minisgl.h. */
export interface RowSampling {
  /** <= 0: greedy. */
  temperature: number;
  /** 1 = off. */
  topP: number;
  /** <= 0 = off. */
  topK: number;
  /** 0 = off. */
  minP: number;
  /** Per-request random key (uint64 as bigint). */
  seed: bigint;
  /** Index of the token being sampled within the request's completion (0 for the first). */
  step: number;
  /** OpenAI penalties; 0/0/1 = off. Applied to the logits before sampling. */
  presencePenalty: number;
  frequencyPenalty: number;
  repetitionPenalty: number;
}

/** Greedy sampling with every penalty off (tests, benchmarks, padded rows). */
export const GREEDY: Readonly<RowSampling> = {
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  seed: 0n,
  step: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
};

/** One request's share of a forward batch. */
export interface BatchEntry {
  /** The request's row in the worker's page table and device token table (0-based,
   *  < WorkerInfo.maxRows). Stable while the request holds KV pages. */
  row: number;
  /** Tokens of this request already in the KV cache (cached prefix + earlier chunks). */
  startPos: number;
  /** Number of new tokens this step (>= 1). */
  qLen: number;
  /** The new tokens (length qLen), or null for a decode step (qLen 1) whose input is the
   *  token last sampled for this row, which the worker keeps on the device. */
  inputIds: Int32Array | null;
  /** Page ids of the request's page list from index pageStart on: the worker writes them
   *  into the row of its page table. Must cover every page up to position
   *  startPos + qLen - 1. Pages before pageStart are those sent earlier for this row. */
  pageStart: number;
  newPages: Int32Array;
  /** Sample a next token from the last new position (final prefill chunk, or decode). */
  sample: boolean;
  sampling: RowSampling;
  /** Tokens generated so far by this request, for penalties (msg_apply_penalties).
   *  Null when no penalty is set. */
  penaltyTokens: Int32Array | null;
  /** If not null (length qLen): the worker returns log p(targets[i] | tokens <= i) for
   *  every new position i with targets[i] >= 0 (prompt logprobs for `echo`). */
  logprobTargets: Int32Array | null;
  /** How many top logprobs to return for the sampled token (0 = none). */
  topLogprobs: number;
  /** Sampled entries of a constrained request: its key in the worker's matchers, and the
   *  grammar itself the first time the request samples (null afterwards). */
  grammar?: { key: number; spec: WireGrammar | null } | null;
  /** logit_bias of a sampled entry (token ids and values added to their logits). */
  logitBias?: { ids: Int32Array; values: Float32Array } | null;
}

/** A grammar as it travels to the worker: kind, source (regex or schema JSON) and the stop
 *  tokens the finished text may end with. */
export interface WireGrammar {
  kind: "regex" | "json_schema" | "json_object" | "tool_calls" | "ebnf";
  source: string;
  stopIds: Int32Array;
}

/** A forward batch: entries are run together in one forward pass. */
export interface ForwardBatch {
  /** Increasing id, echoed in the result. */
  id: number;
  entries: BatchEntry[];
  /** Keys of constrained requests that ended since the last batch (the worker drops their
   *  matchers). */
  releasedGrammars?: Int32Array | null;
}

/** The result of one forward batch. Arrays are indexed by entry (in batch order). */
export interface ForwardResult {
  id: number;
  /** Sampled token of each entry, -1 for entries with sample = false. */
  tokens: Int32Array;
  /** Log-probability of each sampled token (temperature 1, unfiltered), NaN if none. */
  logprobs: Float32Array;
  /** Top logprobs of each entry that asked (ids and values, topLogprobs each), else null. */
  topIds: (Int32Array | null)[];
  topLogprobs: (Float32Array | null)[];
  /** Prompt logprobs of entries that asked: length qLen, NaN where targets[i] < 0. */
  promptLogprobs: (Float32Array | null)[];
  /** Top alternatives at each prompt position of entries that asked for prompt logprobs
   *  with topLogprobs k > 0: [qLen, k] row-major, descending. */
  promptTopIds: (Int32Array | null)[];
  promptTopLogprobs: (Float32Array | null)[];
  /** Seconds the worker spent on this batch (wall clock, from dequeue to result). */
  seconds: number;
}

/** What a GPU worker reports once its weights and KV pool are ready. */
export interface WorkerInfo {
  backend: "cpu" | "cuda";
  deviceName: string;
  /** Pages in the KV pool (page ids are 0 .. numPages - 1). */
  numPages: number;
  pageSize: number;
  /** Rows of the page table = the most requests that can hold pages at once. */
  maxRows: number;
  /** Longest sequence (prompt + completion) a row can hold. */
  maxSeqLen: number;
  vocabSize: number;
  /** Largest number of new tokens one batch may carry (sum of qLen). */
  maxBatchTokens: number;
  /** Seconds spent loading weights, sizing the pool and capturing graphs. */
  loadSeconds: number;
}
