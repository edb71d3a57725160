/**
 * Runs the Hono app on Deno.serve behind the connection guard (guard.ts: timeouts, a cap
 * on connections, accept errors survived) and shuts it down gracefully: stop accepting,
 * let in-flight requests finish up to the grace period, then abort what is left and close
 * every connection, whether or not its client still reads.
 */

import { createApp } from "./app.ts";
import type { ServerContext } from "./context.ts";
import { errorResponse } from "./errors.ts";
import {
  connectionCap,
  ConnectionGuard,
  type GuardOptions,
  openFileCount,
  openFileLimit,
} from "./guard.ts";

/** A running HTTP server. */
export interface RunningServer {
  hostname: string;
  port: number;
  /** Stops accepting, waits for in-flight requests up to `graceMs`, aborts the rest
   *  through the engine, closes every connection, and resolves when all are closed. */
  shutdown(graceMs: number): Promise<void>;
  /** The guard (connection counts, for tests and logs). */
  guard: ConnectionGuard;
}

/** Connection limits of startServer. */
export interface ServerLimits {
  headerTimeoutMs: number;
  idleTimeoutMs: number;
  /** null: derived from the process's open-file limit. */
  maxConnections: number | null;
}

/** After the grace period and the engine's abort, how long responses get to end before
 *  their connections are closed under them. */
const ABORT_DRAIN_MS = 1_000;

/** Starts serving `ctx` on host:port (port 0 = any free port). */
export function startServer(
  ctx: ServerContext,
  host: string,
  port: number,
  limits: ServerLimits,
  log: (line: string) => void = (line) => console.error(line),
): Promise<RunningServer> {
  const app = createApp(ctx);
  const listener = Deno.listen({ hostname: host, port });
  const options: GuardOptions = {
    headerTimeoutMs: limits.headerTimeoutMs,
    idleTimeoutMs: limits.idleTimeoutMs,
    maxConnections: limits.maxConnections ?? connectionCap(openFileLimit(), openFileCount()),
  };
  let guard: ConnectionGuard | null = null;
  let backend: Deno.HttpServer<Deno.NetAddr>;
  let stopping = false;
  const startBackend = (): Deno.NetAddr => {
    let addr: Deno.NetAddr | null = null;
    backend = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen: (a) => {
        addr = a;
      },
      onError: (err) => errorResponse(err),
    }, (req, info) => {
      const relay = info.remoteAddr.port;
      guard?.requestStarted(relay);
      info.completed.finally(() => guard?.requestEnded(relay)).catch(() => {});
      return app.fetch(req);
    });
    // Deno.serve's accept loop ends on its first accept error: start another one.
    backend.finished.catch((err: Error) => {
      if (stopping) return;
      log(`warning: the HTTP backend stopped (${err.message}); starting it again`);
      guard!.backend = startBackend();
    });
    return addr ?? backend.addr;
  };
  guard = new ConnectionGuard(listener, startBackend(), options, log);
  const g = guard;
  return Promise.resolve({
    hostname: listener.addr.hostname,
    port: listener.addr.port,
    guard: g,
    shutdown: async (graceMs: number) => {
      ctx.closing = true;
      g.stopAccepting();
      stopping = true;
      // The guard sees every request from its first byte (Deno.serve would close a
      // connection whose request is still in the relay as idle): wait for them there.
      if (!(await g.untilQuiet(graceMs))) {
        // Ending the engine's streams ends the responses still open; a client that does
        // not read them keeps its connection only until the drain time is over.
        await ctx.engine.shutdown({ abort: true });
        await g.untilQuiet(ABORT_DRAIN_MS);
      }
      g.closeAll();
      await backend.shutdown().catch(() => {});
      await g.done;
    },
  });
}
