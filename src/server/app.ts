/**
 * The HTTP routes (Hono): OpenAI's /v1 API, /health, /metrics, /tokenize, /detokenize.
 * Every client mistake becomes an OpenAI-shaped 4xx; nothing a client sends stops the
 * server.
 */

import { Hono } from "hono";
import { chatCompletions } from "./chat.ts";
import { completions } from "./completions.ts";
import { checkModel, type ServerContext } from "./context.ts";
import { ApiError, errorResponse } from "./errors.ts";
import { TextError } from "../text/errors.ts";
import {
  flushCache,
  generate,
  healthGenerate,
  modelInfo,
  SERVER_VERSION,
  serverInfo,
} from "./native.ts";
import { checkTokenIds, parseChatRequest, parseJsonObject } from "./openai.ts";

/** Reads a request body as UTF-8 JSON object text, enforcing the size limit (413). */
export async function readJsonBody(
  req: Request,
  maxBytes: number,
): Promise<Record<string, unknown>> {
  const declared = Number(req.headers.get("content-length") ?? "NaN");
  const tooLarge = () =>
    new ApiError(
      413,
      `The request body is larger than the limit of ${maxBytes} bytes.`,
      null,
      "request_too_large",
    );
  if (declared > maxBytes) {
    // Drain nothing: cancelling the body lets the server answer at once.
    req.body?.cancel().catch(() => {});
    throw tooLarge();
  }
  if (req.body === null) {
    throw new ApiError(400, "The request body is empty: expected a JSON object.");
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(400, "The request body is not valid UTF-8.");
  }
  if (text.trim() === "") {
    throw new ApiError(400, "The request body is empty: expected a JSON object.");
  }
  return parseJsonObject(text);
}

/** Routes open without the API key: probes of load balancers and Prometheus. */
const OPEN_ROUTES = new Set(["/health", "/metrics"]);

const utf8 = new TextEncoder();

/** Compares a presented secret with the expected one in a time that depends only on the
 *  expected one's length, not on where they differ. */
export function sameSecret(given: string, expected: string): boolean {
  const a = utf8.encode(given), b = utf8.encode(expected);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (i < a.length ? a[i] : 0) ^ b[i];
  return diff === 0;
}

/** The status counted for a request whose client closed the connection (nginx's). */
const CLIENT_CLOSED = 499;

/** Builds the Hono app over a server context. */
export function createApp(ctx: ServerContext): Hono {
  const app = new Hono();
  const info = ctx.engine.info;

  app.onError((err, c) => {
    const res = errorResponse(err);
    // A client that went away is no server error: counted as nginx's 499.
    ctx.metrics.error(c.req.raw.signal.aborted ? CLIENT_CLOSED : res.status);
    if (res.status >= 500 && !(err instanceof ApiError || err instanceof TextError)) {
      console.error("internal error:", err);
    }
    return res;
  });
  app.notFound((c) => {
    ctx.metrics.error(404);
    return errorResponse(
      new ApiError(404, `Unknown route: ${c.req.method} ${c.req.path}`, null, "not_found"),
    );
  });

  // With --api-key every route needs it but the probes (/health, /metrics).
  app.use("*", async (c, next) => {
    if (ctx.apiKey !== null && !OPEN_ROUTES.has(c.req.path)) {
      const auth = c.req.header("authorization") ?? "";
      if (!sameSecret(auth, `Bearer ${ctx.apiKey}`)) {
        throw new ApiError(
          401,
          auth === ""
            ? "Missing API key: send 'Authorization: Bearer <key>'."
            : "Incorrect API key provided.",
          null,
          "invalid_api_key",
        );
      }
    }
    await next();
  });

  app.get("/health", (c) => {
    const failure = ctx.engine.failure;
    if (failure !== null) return c.json({ status: "engine failed", error: failure }, 503);
    if (ctx.closing) return c.json({ status: "shutting down" }, 503);
    return c.json({ status: "ok" });
  });

  app.get("/metrics", async (c) => {
    let m;
    try {
      m = await ctx.engine.metrics();
    } catch (err) {
      throw new ApiError(503, `Engine metrics unavailable: ${(err as Error).message}`);
    }
    return c.body(ctx.metrics.render(m, ctx.inFlight), 200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
    });
  });

  app.get("/v1/models", (c) =>
    c.json({
      object: "list",
      data: ctx.modelNames.slice(0, 1).map((id) => ({
        id,
        object: "model",
        created: startedAt,
        owned_by: "minisgl",
        root: info.modelDir,
        max_model_len: info.maxContextLen,
      })),
    }));

  app.get("/v1/models/:id", (c) => {
    const id = checkModel(ctx, c.req.param("id"));
    return c.json({
      id,
      object: "model",
      created: startedAt,
      owned_by: "minisgl",
      root: info.modelDir,
    });
  });

  app.post("/v1/chat/completions", async (c) => {
    const body = await readJsonBody(c.req.raw, ctx.maxBodyBytes);
    return await chatCompletions(ctx, body, c.req.raw.signal);
  });

  app.post("/v1/completions", async (c) => {
    const body = await readJsonBody(c.req.raw, ctx.maxBodyBytes);
    return await completions(ctx, body, c.req.raw.signal);
  });

  // vLLM-style tokenizer endpoints: {prompt} or {messages} in, {tokens, count} out.
  const tokenize = async (c: { req: { raw: Request }; json: (v: unknown) => Response }) => {
    const body = await readJsonBody(c.req.raw, ctx.maxBodyBytes);
    if (typeof body.model === "string") checkModel(ctx, body.model);
    let tokens: number[];
    if (body.messages !== undefined) {
      const chat = parseChatRequest(body, info.vocabSize);
      try {
        tokens = await ctx.tokenize.chatTemplate(
          chat.messages,
          chat.addGenerationPrompt,
          chat.templateKwargs,
        );
      } catch (err) {
        throw new ApiError(
          400,
          `Could not apply the chat template: ${(err as Error).message}`,
          "messages",
        );
      }
    } else if (typeof body.prompt === "string") {
      const add = body.add_special_tokens;
      if (add !== undefined && typeof add !== "boolean") {
        throw new ApiError(
          400,
          "Invalid type for 'add_special_tokens': expected a boolean.",
          "add_special_tokens",
        );
      }
      tokens = await ctx.tokenize.encode(body.prompt, add ?? true);
    } else {
      throw new ApiError(400, "Expected 'prompt' (a string) or 'messages'.", "prompt");
    }
    return c.json({ tokens, count: tokens.length, max_model_len: info.maxContextLen });
  };
  app.post("/tokenize", tokenize);
  app.post("/v1/tokenize", tokenize);

  const detokenize = async (c: { req: { raw: Request }; json: (v: unknown) => Response }) => {
    const body = await readJsonBody(c.req.raw, ctx.maxBodyBytes);
    if (typeof body.model === "string") checkModel(ctx, body.model);
    if (body.tokens === undefined) {
      throw new ApiError(400, "Missing required parameter: 'tokens'.", "tokens");
    }
    const tokens = checkTokenIds(body.tokens, "tokens", info.vocabSize);
    return c.json({ prompt: await ctx.tokenize.decode(tokens) });
  };
  app.post("/detokenize", detokenize);
  app.post("/v1/detokenize", detokenize);

  // SGLang's native API.
  app.post("/generate", async (c) => {
    const body = await readJsonBody(c.req.raw, ctx.maxBodyBytes);
    return await generate(ctx, body, c.req.raw.signal);
  });
  app.get("/get_model_info", (c) => c.json(modelInfo(ctx)));
  app.get("/get_server_info", async (c) => c.json(await serverInfo(ctx)));
  app.get("/version", (c) => c.json({ version: SERVER_VERSION }));
  app.get("/flush_cache", () => flushCache(ctx));
  app.post("/flush_cache", () => flushCache(ctx));
  app.get("/health_generate", () => healthGenerate(ctx));
  app.get("/tokenizer_info", (c) => c.json(ctx.tokenizer.info()));

  return app;
}

/** Reported as the models' creation time. */
const startedAt = Math.floor(Date.now() / 1000);
