/**
 * Runs the Hono app on Deno.serve and shuts it down gracefully: stop accepting, let
 * in-flight requests finish (up to a time limit), then abort what is left.
 */

import { createApp } from "./app.ts";
import type { ServerContext } from "./context.ts";
import { errorResponse } from "./errors.ts";

/** A running HTTP server. */
export interface RunningServer {
  hostname: string;
  port: number;
  /** Stops accepting, waits for in-flight requests up to `graceMs`, aborts the rest
   *  through the engine, and resolves when the listener is closed. */
  shutdown(graceMs: number): Promise<void>;
  /** Resolves when the listener has closed. */
  finished: Promise<void>;
}

/** Starts serving `ctx` on host:port (port 0 = any free port). */
export function startServer(
  ctx: ServerContext,
  host: string,
  port: number,
): Promise<RunningServer> {
  const app = createApp(ctx);
  let addr: Deno.NetAddr | null = null;
  // onListen runs inside Deno.serve, before it returns the server object.
  const server = Deno.serve({
    hostname: host,
    port,
    onListen: (a) => {
      addr = a;
    },
    onError: (err) => errorResponse(err),
  }, app.fetch);
  const bound = addr as Deno.NetAddr | null;
  return Promise.resolve({
    hostname: bound?.hostname ?? host,
    port: bound?.port ?? (server.addr as Deno.NetAddr).port,
    finished: server.finished,
    shutdown: async (graceMs: number) => {
      ctx.closing = true;
      const closed = server.shutdown();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((r) => {
        timer = setTimeout(() => r("timeout"), graceMs);
      });
      const first = await Promise.race([closed.then(() => "closed" as const), timeout]);
      clearTimeout(timer);
      if (first === "timeout") {
        // Ending the engine's streams ends the responses still open.
        await ctx.engine.shutdown({ abort: true });
        await closed;
      }
    },
  });
}
