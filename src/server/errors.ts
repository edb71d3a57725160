/**
 * OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`. Every client
 * mistake becomes an `ApiError` with a 4xx status; only our own bugs are 500s.
 */

import { TextError } from "../text/errors.ts";

/** An error to report to the client with an HTTP status and OpenAI's error body. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type: string = typeForStatus(status),
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** OpenAI's `type` for a status: client errors are invalid_request_error. */
function typeForStatus(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 404) return "invalid_request_error";
  if (status === 429 || status === 503) return "server_overloaded";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

/** The JSON body of an error. */
export function errorBody(err: ApiError): {
  error: { message: string; type: string; param: string | null; code: string | null };
} {
  return { error: { message: err.message, type: err.type, param: err.param, code: err.code } };
}

/** The ApiError of any thrown value: the text layer's errors get their HTTP status, other
 *  non-ApiErrors become a 500. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof TextError) {
    return err.kind === "rejected"
      ? new ApiError(400, err.message, null, "request_rejected")
      : new ApiError(503, err.message);
  }
  return new ApiError(500, `internal error: ${err instanceof Error ? err.message : String(err)}`);
}

/** A JSON Response for an error (any thrown value, see `toApiError`). */
export function errorResponse(err: unknown): Response {
  const apiErr = toApiError(err);
  return new Response(JSON.stringify(errorBody(apiErr)), {
    status: apiErr.status,
    headers: { "content-type": "application/json" },
  });
}

/** Shorthand for a 400 about one parameter. */
export function badParam(param: string, message: string): ApiError {
  return new ApiError(400, message, param);
}
