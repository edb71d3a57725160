/**
 * Errors of the text layer. They say what went wrong in the text layer's own words; the
 * HTTP server maps them to statuses (src/server/errors.ts), the shell and the offline
 * LLM show or throw them as they are.
 */

/** Why a request of the text layer failed. */
export type TextErrorKind =
  /** The engine refused the request (it can never fit, bad parameters). */
  | "rejected"
  /** The engine aborted the request (shutting down). */
  | "aborted";

/** A request that the engine refused or aborted. */
export class TextError extends Error {
  constructor(readonly kind: TextErrorKind, message: string) {
    super(message);
    this.name = "TextError";
  }
}
