/**
 * Server-sent events as OpenAI streams them: `data: <json>\n\n` per chunk and a final
 * `data: [DONE]\n\n`. The response body pulls from an async generator, so a slow client
 * slows generation down instead of buffering, and a client that goes away cancels it.
 */

const encoder = new TextEncoder();

/** One SSE frame carrying a JSON payload. */
export function sseData(payload: unknown): Uint8Array {
  return encoder.encode(`data: ${JSON.stringify(payload)}\n\n`);
}

/** The frame that ends an OpenAI stream. */
export const SSE_DONE: Uint8Array = encoder.encode("data: [DONE]\n\n");

/**
 * A streaming SSE Response whose frames come from `frames`. `onCancel` runs once when the
 * client disconnects before the stream ended (the request must then be aborted at once).
 */
export function sseResponse(
  frames: AsyncGenerator<Uint8Array, void, undefined>,
  onCancel: () => void,
): Response {
  let done = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const next = await frames.next();
        if (next.done) {
          done = true;
          controller.close();
        } else {
          controller.enqueue(next.value);
        }
      } catch (err) {
        // An error after the headers went out: report it in-band, OpenAI-style, then end.
        done = true;
        const message = err instanceof Error ? err.message : String(err);
        controller.enqueue(
          sseData({ error: { message, type: "server_error", param: null, code: null } }),
        );
        controller.enqueue(SSE_DONE);
        controller.close();
      }
    },
    cancel() {
      if (!done) {
        done = true;
        onCancel();
        // Let the generator run its finally blocks (it must not await the engine again).
        frames.return(undefined).catch(() => {});
      }
    },
  }, { highWaterMark: 0 });
  return new Response(body, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "connection": "keep-alive",
      "x-accel-buffering": "no",
    },
  });
}
