/**
 * SGLang's native API (also Mini-SGLang's): POST /generate with `text` or `input_ids` and
 * `sampling_params`, streamed or not; /get_model_info, /get_server_info, /flush_cache and
 * /health_generate. Also vLLM's GET /tokenizer_info (lm-evaluation-harness's remote
 * tokenizer reads it).
 */

import type { SamplingParams } from "../engine/types.ts";
import { collectText, type TextChunk } from "../text/textgen.ts";
import {
  admit,
  baseSamplingParams,
  newId,
  release,
  resolveMaxTokens,
  type ServerContext,
} from "./context.ts";
import { type ChoiceChunk, chunksOf, collectChoices, sseChoices, startChoices } from "./choices.ts";
import { ApiError, badParam } from "./errors.ts";
import { checkTokenIds } from "./openai.ts";
import { readConstraint } from "./structured.ts";
import { sseData } from "./sse.ts";

type Json = Record<string, unknown>;

/** SGLang's default max_new_tokens. */
export const GENERATE_DEFAULT_MAX_NEW_TOKENS = 128;

/** A validated /generate body. */
export interface GenerateRequest {
  /** Prompts as text or token ids; `batch` when the body held lists of them. */
  prompts: (string | number[])[];
  batch: boolean;
  sampling: Partial<SamplingParams>;
  maxNewTokens: number | null;
  stop: string[];
  stream: boolean;
  rid: string | null;
}

function num(sp: Json, key: string, min: number, max: number): number | undefined {
  const v = sp[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
    throw badParam(`sampling_params.${key}`, `'${key}' must be a number in [${min}, ${max}].`);
  }
  return v;
}

function int(sp: Json, key: string, min: number, max: number): number | undefined {
  const v = num(sp, key, min, max);
  if (v !== undefined && !Number.isInteger(v)) {
    throw badParam(`sampling_params.${key}`, `'${key}' must be an integer.`);
  }
  return v;
}

function bool(sp: Json, key: string, param = `sampling_params.${key}`): boolean | undefined {
  const v = sp[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw badParam(param, `'${key}' must be a boolean.`);
  return v;
}

/** Validates a /generate body (SGLang's GenerateReqInput, the fields we serve). */
export function parseGenerateRequest(body: Json, vocabSize: number): GenerateRequest {
  const hasText = body.text !== undefined && body.text !== null;
  const hasIds = body.input_ids !== undefined && body.input_ids !== null;
  if (hasText === hasIds) {
    throw badParam("text", "Exactly one of 'text' and 'input_ids' is required.");
  }
  let prompts: (string | number[])[];
  let batch = false;
  if (hasText) {
    const t = body.text;
    if (typeof t === "string") prompts = [t];
    else if (Array.isArray(t) && t.length > 0 && t.every((x) => typeof x === "string")) {
      prompts = t as string[];
      batch = true;
    } else throw badParam("text", "'text' must be a string or a non-empty list of strings.");
  } else {
    const ids = body.input_ids;
    if (Array.isArray(ids) && ids.length > 0 && ids.every(Array.isArray)) {
      prompts = ids.map((x, i) => checkTokenIds(x, `input_ids[${i}]`, vocabSize));
      batch = true;
    } else prompts = [checkTokenIds(ids, "input_ids", vocabSize)];
  }
  const raw = body.sampling_params ?? {};
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw badParam("sampling_params", "'sampling_params' must be an object.");
  }
  const sp = raw as Json;
  const sampling: Partial<SamplingParams> = {};
  const set = <K extends keyof SamplingParams>(k: K, v: SamplingParams[K] | undefined) => {
    if (v !== undefined) sampling[k] = v;
  };
  set("temperature", num(sp, "temperature", 0, 100));
  set("topP", num(sp, "top_p", 0, 1));
  const topK = int(sp, "top_k", -1, 1 << 30);
  set("topK", topK === -1 ? 0 : topK);
  set("minP", num(sp, "min_p", 0, 1));
  set("frequencyPenalty", num(sp, "frequency_penalty", -2, 2));
  set("presencePenalty", num(sp, "presence_penalty", -2, 2));
  set("repetitionPenalty", num(sp, "repetition_penalty", 0, 10));
  set("ignoreEos", bool(sp, "ignore_eos"));
  set("seed", int(sp, "sampling_seed", 0, Number.MAX_SAFE_INTEGER));
  if (sp.stop_token_ids !== undefined && sp.stop_token_ids !== null) {
    sampling.stopTokenIds = checkTokenIds(
      sp.stop_token_ids,
      "sampling_params.stop_token_ids",
      vocabSize,
    );
  }
  const constraint = readConstraint(sp, "sampling_params.");
  if (constraint) sampling.constraint = constraint;
  bool(sp, "skip_special_tokens"); // special tokens are always skipped in the text
  let stop: string[] = [];
  if (typeof sp.stop === "string") stop = [sp.stop];
  else if (Array.isArray(sp.stop) && sp.stop.every((s: unknown) => typeof s === "string")) {
    stop = sp.stop as string[];
  } else if (sp.stop !== undefined && sp.stop !== null) {
    throw badParam("sampling_params.stop", "'stop' must be a string or a list of strings.");
  }
  const n = int(sp, "n", 1, 1);
  void n; // SGLang's n > 1 is not served: one output per prompt.
  const rid = body.rid;
  if (rid !== undefined && rid !== null && typeof rid !== "string") {
    throw badParam("rid", "'rid' must be a string.");
  }
  if (batch && typeof rid === "string") {
    throw badParam("rid", "'rid' names one request; leave it out for a batch.");
  }
  return {
    prompts,
    batch,
    sampling,
    maxNewTokens: int(sp, "max_new_tokens", 0, 1 << 24) ?? null,
    stop,
    stream: bool(body, "stream", "stream") ?? false,
    rid: typeof rid === "string" ? rid : null,
  };
}

/** SGLang's meta_info.finish_reason. */
function finishReason(chunk: TextChunk): Record<string, unknown> | null {
  const f = chunk.finish;
  if (!f) return null;
  if (f.reason === "length") return { type: "length", length: f.usage.completionTokens };
  if (f.stopString !== undefined) return { type: "stop", matched: f.stopString };
  if (f.stopToken !== undefined) return { type: "stop", matched: f.stopToken };
  return { type: "stop", matched: null };
}

/** Handles POST /generate. */
export async function generate(
  ctx: ServerContext,
  body: Json,
  signal: AbortSignal,
): Promise<Response> {
  const arrival = performance.now();
  const req = parseGenerateRequest(body, ctx.engine.info.vocabSize);
  const promptIds = await Promise.all(
    req.prompts.map((p) => typeof p === "string" ? ctx.tokenize.encode(p, true) : p),
  );
  const maxTokens = promptIds.map((ids) =>
    resolveMaxTokens(ctx, ids.length, req.maxNewTokens, "prompt", GENERATE_DEFAULT_MAX_NEW_TOKENS)
  );
  const base = req.rid ?? newId("gen");
  const ids = promptIds.map((_, i) => req.batch ? `${base}-${i}` : base);
  const choices = await startChoices(
    ctx,
    ids.map((id, i) => ({
      id,
      promptIds: promptIds[i],
      params: { ...baseSamplingParams(ctx), ...req.sampling, maxTokens: maxTokens[i] },
      stop: req.stop,
    })),
    signal,
    arrival,
    req.stream,
  );
  // Per prompt: text and ids so far (SGLang streams them whole, not as deltas).
  const texts = ids.map(() => "");
  const outIds: number[][] = ids.map(() => []);
  const output = (c: ChoiceChunk) => {
    const i = c.index, chunk = c.value;
    texts[i] += chunk.text;
    outIds[i].push(...chunk.tokens);
    const u = chunk.finish?.usage;
    return {
      text: texts[i],
      output_ids: [...outIds[i]],
      meta_info: {
        id: ids[i],
        finish_reason: finishReason(chunk),
        prompt_tokens: u?.promptTokens ?? promptIds[i].length,
        completion_tokens: u?.completionTokens ?? outIds[i].length,
        cached_tokens: u?.cachedTokens ?? 0,
        e2e_latency: (performance.now() - arrival) / 1000,
      },
      ...(req.batch ? { index: i } : {}),
    };
  };
  if (req.stream) {
    const frames = async function* (): AsyncGenerator<Uint8Array, void, undefined> {
      for await (const c of chunksOf(choices)) {
        if (c.value.text.length > 0 || c.value.tokens.length > 0 || c.value.finish) {
          yield sseData(output(c));
        }
      }
    };
    return sseChoices(choices, frames(), null);
  }
  const results: unknown[] = ids.map(() => null);
  await collectChoices(choices, (c) => {
    const o = output(c);
    if (c.value.finish) results[c.index] = o;
  });
  return Response.json(req.batch ? results : results[0]);
}

/** GET /get_model_info. */
export function modelInfo(ctx: ServerContext): Record<string, unknown> {
  const info = ctx.engine.info;
  return {
    model_path: info.modelDir,
    tokenizer_path: info.modelDir,
    is_generation: true,
    served_model_name: ctx.modelNames[0],
    max_context_length: info.maxContextLen,
  };
}

/** GET /get_server_info: the server's settings under SGLang's names, and the engine's state. */
export async function serverInfo(ctx: ServerContext): Promise<Record<string, unknown>> {
  const info = ctx.engine.info;
  const m = await ctx.engine.metrics();
  return {
    ...ctx.serverArgs,
    model_path: info.modelDir,
    context_length: info.maxContextLen,
    page_size: info.pageSize,
    max_total_num_tokens: info.numPages * info.pageSize,
    device: info.backend,
    device_name: info.deviceName,
    version: SERVER_VERSION,
    internal_states: [{
      num_running_reqs: m.numRequestsRunning,
      num_waiting_reqs: m.numRequestsWaiting,
      kv_pages_free: m.kvPagesFree,
      kv_pages_cached: m.kvPagesCached,
    }],
  };
}

/** Reported by /get_server_info and /version. */
export const SERVER_VERSION = "minisgl-0.1";

/** /flush_cache: drops the prefix cache; refused (400) while requests are in flight. */
export async function flushCache(ctx: ServerContext): Promise<Response> {
  const busy = () =>
    new Response(
      `Cache not flushed: ${ctx.inFlight} request(s) in flight. Retry when the server is idle.\n`,
      { status: 400, headers: { "content-type": "text/plain; charset=utf-8" } },
    );
  if (ctx.inFlight > 0) return busy();
  if (!(await ctx.engine.flushCache())) return busy();
  return new Response("Cache flushed.\n", {
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}

/** How long /health_generate waits for its one token. */
const HEALTH_TIMEOUT_MS = 20_000;

/** /health_generate: 200 once the engine generated a token, 503 otherwise. */
export async function healthGenerate(ctx: ServerContext): Promise<Response> {
  if (ctx.closing) throw new ApiError(503, "The server is shutting down.");
  admit(ctx, 1);
  const id = newId("health");
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const promptIds = [ctx.engine.info.eosTokenIds[0] ?? 0];
    const run = collectText(ctx.engine, ctx.tokenizer.detokenizer(promptIds), {
      id,
      promptIds,
      params: { ...baseSamplingParams(ctx), temperature: 0, maxTokens: 1, ignoreEos: true },
      stop: [],
    });
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        ctx.engine.abort(id);
        reject(new ApiError(503, "The engine did not generate a token in time."));
      }, HEALTH_TIMEOUT_MS);
    });
    const r = await Promise.race([run, timeout]);
    if (r.tokens.length !== 1) throw new ApiError(503, "The engine generated no token.");
    return new Response(null, { status: 200 });
  } finally {
    clearTimeout(timer);
    release(ctx);
  }
}
