/**
 * The connection guard in front of Deno.serve. Deno.serve has no header or idle timeout,
 * no cap on connections, and its accept loop ends for good on the first accept error
 * (EMFILE: too many open files). So the public port is our own accept loop: each client
 * connection is relayed to Deno.serve on a loopback port, and the guard
 * - caps open client connections below the process's file limit (each costs three
 *   descriptors: the client's, the relay's, and Deno.serve's end of the relay), answering
 *   503 and closing beyond it;
 * - closes a connection whose request headers do not arrive within headerTimeoutMs, and a
 *   keep-alive connection idle (no request running, no bytes) for idleTimeoutMs;
 * - logs accept errors and keeps accepting after a short pause;
 * - can end every connection at once (shutdown after the grace period, even when a
 *   client stopped reading).
 * The HTTP handler tells the guard when a request of a relay starts and ends
 * (requestStarted / requestEnded, keyed by the relay's local port).
 */

/** Limits of the guard. */
export interface GuardOptions {
  maxConnections: number;
  headerTimeoutMs: number;
  idleTimeoutMs: number;
}

/** State of one client connection and its relay. */
interface Relay {
  client: Deno.Conn;
  upstream: Deno.Conn;
  /** Requests of this connection inside the HTTP handler. */
  active: number;
  lastActivity: number;
  /** When a request began to arrive with no handler running yet (header timeout). */
  headerSince: number | null;
  /** Bytes of a request arrived that the HTTP handler has not seen yet. */
  arriving: boolean;
  closed: boolean;
}

const OVERLOADED_BODY = JSON.stringify({
  error: {
    message: "Too many open connections. Retry later.",
    type: "server_overloaded",
    param: null,
    code: "too_many_connections",
  },
});
/** The answer to a connection beyond the cap (written raw: it never reaches Deno.serve). */
const OVERLOADED = new TextEncoder().encode(
  "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n" +
    `connection: close\r\ncontent-length: ${OVERLOADED_BODY.length}\r\n\r\n${OVERLOADED_BODY}`,
);

/** The soft limit of open files of this process (Linux), or null when unknown. */
export function openFileLimit(): number | null {
  try {
    const text = Deno.readTextFileSync("/proc/self/limits");
    const m = text.match(/^Max open files\s+(\d+|unlimited)/m);
    if (!m) return null;
    return m[1] === "unlimited" ? null : Number(m[1]);
  } catch {
    return null;
  }
}

/** Descriptors open in this process now (Linux), or null when unknown. */
export function openFileCount(): number | null {
  try {
    let n = 0;
    for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
    return n;
  } catch {
    return null;
  }
}

/** Descriptors kept free beyond those open at start: files opened later, and connections
 *  beyond the cap, which hold one while their 503 is written. */
const SPARE_FDS = 64;
/** Time without bytes after which a relay with no request counts as quiet. */
const SETTLE_MS = 100;
/** Refusals written at once; more are closed without an answer. */
const MAX_PENDING_REFUSALS = SPARE_FDS / 2;

/** The most client connections the file limit allows (three descriptors each). */
export function connectionCap(
  fdLimit: number | null,
  openNow: number | null,
  ceiling = 10_000,
): number {
  if (fdLimit === null) return ceiling;
  const free = fdLimit - (openNow ?? 64) - SPARE_FDS;
  return Math.max(4, Math.min(ceiling, Math.floor(free / 3)));
}

/** Accepts client connections and relays them to Deno.serve within the limits. */
export class ConnectionGuard {
  readonly #relays = new Map<number, Relay>();
  readonly #sweep: ReturnType<typeof setInterval>;
  #closed = false;
  #lastAcceptLog = 0;
  #pendingRefusals = 0;
  /** Accepted connections whose relay is being connected (not in #relays yet). */
  #opening = 0;
  /** Connections refused at the cap, and accept errors survived. */
  refused = 0;
  acceptErrors = 0;
  readonly done: Promise<void>;

  constructor(
    readonly listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>,
    public backend: Deno.NetAddr,
    readonly options: GuardOptions,
    readonly log: (line: string) => void,
  ) {
    this.#sweep = setInterval(() => this.#expire(), 250);
    this.done = this.#acceptLoop();
  }

  /** Open client connections. */
  get connections(): number {
    return this.#relays.size + this.#opening;
  }

  /** A request of the relay whose local port is `port` entered the HTTP handler. */
  requestStarted(port: number): void {
    const r = this.#relays.get(port);
    if (!r) return;
    r.active++;
    r.headerSince = null;
    r.arriving = false;
  }

  /** That request's response ended (sent, or the client went away). */
  requestEnded(port: number): void {
    const r = this.#relays.get(port);
    if (!r) return;
    r.active = Math.max(0, r.active - 1);
    r.lastActivity = performance.now();
  }

  /** Stops accepting; open connections carry on. */
  stopAccepting(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.listener.close();
    } catch { /* already closed */ }
  }

  /** True when no connection has a request arriving or running, or bytes moving (a
   *  response the handler finished may still be on its way through the relay). */
  get quiet(): boolean {
    const now = performance.now();
    for (const r of this.#relays.values()) {
      if (r.closed) continue;
      if (r.active > 0 || r.arriving || now - r.lastActivity < SETTLE_MS) return false;
    }
    return true;
  }

  /** Resolves true once quiet, or false after `ms`. */
  async untilQuiet(ms: number): Promise<boolean> {
    const deadline = performance.now() + ms;
    while (!this.quiet) {
      if (performance.now() >= deadline) return false;
      await new Promise((res) => setTimeout(res, 10));
    }
    return true;
  }

  /** Ends every connection now (and stops accepting). */
  closeAll(): void {
    this.stopAccepting();
    clearInterval(this.#sweep);
    for (const r of [...this.#relays.values()]) this.#close(r);
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.listener.accept();
      } catch (err) {
        if (this.#closed) return;
        this.acceptErrors++;
        const now = performance.now();
        if (now - this.#lastAcceptLog > 5_000) {
          this.#lastAcceptLog = now;
          this.log(
            `warning: accept failed (${(err as Error).message}); ${this.#relays.size} ` +
              "connections open, accepting again shortly",
          );
        }
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      if (this.connections >= this.options.maxConnections) {
        this.refused++;
        if (this.#pendingRefusals >= MAX_PENDING_REFUSALS) {
          conn.close();
          continue;
        }
        this.#pendingRefusals++;
        conn.write(OVERLOADED).catch(() => {}).finally(() => {
          this.#pendingRefusals--;
          try {
            conn.close();
          } catch { /* gone */ }
        });
        continue;
      }
      this.#open(conn);
    }
  }

  async #open(client: Deno.TcpConn): Promise<void> {
    let upstream: Deno.TcpConn;
    this.#opening++;
    try {
      upstream = await Deno.connect({ hostname: this.backend.hostname, port: this.backend.port });
    } catch (err) {
      this.#opening--;
      this.log(`warning: cannot relay a connection: ${(err as Error).message}`);
      try {
        client.close();
      } catch { /* gone */ }
      return;
    }
    this.#opening--;
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const now = performance.now();
    const r: Relay = {
      client,
      upstream,
      active: 0,
      lastActivity: now,
      headerSince: now,
      arriving: false,
      closed: false,
    };
    const port = upstream.localAddr.port;
    this.#relays.set(port, r);
    await Promise.allSettled([
      this.#pump(r, client, upstream, true),
      this.#pump(r, upstream, client, false),
    ]);
    this.#close(r);
    this.#relays.delete(port);
  }

  /** Copies one direction until EOF or an error; then ends the whole relay. */
  async #pump(r: Relay, from: Deno.Conn, to: Deno.Conn, fromClient: boolean): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await from.read(buf);
        if (n === null) break;
        r.lastActivity = performance.now();
        if (fromClient && r.active === 0) {
          r.arriving = true;
          r.headerSince ??= r.lastActivity;
        }
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
        r.lastActivity = performance.now();
      }
    } catch { /* reset or closed by the other side */ }
    this.#close(r);
  }

  #close(r: Relay): void {
    if (r.closed) return;
    r.closed = true;
    for (const c of [r.client, r.upstream]) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  }

  #expire(): void {
    const now = performance.now();
    const { headerTimeoutMs, idleTimeoutMs } = this.options;
    for (const r of this.#relays.values()) {
      if (r.active > 0) continue;
      if (r.headerSince !== null && now - r.headerSince > headerTimeoutMs) this.#close(r);
      else if (r.headerSince === null && now - r.lastActivity > idleTimeoutMs) this.#close(r);
    }
  }
}
