/**
 * A framed TCP link between two nodes of a multi-node run (--nnodes > 1): it carries node
 * 0's rendezvous (JSON messages) and, after it, the batch records of batch_codec.ts that
 * node 0's scheduler sends to another node's workers.
 *
 * Frame: [payload bytes u32][kind u32] then the payload, little-endian. Kind JSON: UTF-8
 * JSON text; kind RECORD: the Int32 words of one ring record, in host byte order (every
 * host we run on is little-endian, and both ends run this code).
 */

const KIND_JSON = 1;
const KIND_RECORD = 2;
/** Largest frame accepted: above any ring record (src/engine/engine.ts caps rings at 64 MiB). */
const MAX_FRAME_BYTES = 128 << 20;

/** What a link's next() returns: a JSON message, a record, or null at the end. */
export type Frame = { kind: "json"; value: unknown } | { kind: "record"; words: Int32Array };

/** HOST:PORT (HOST may be [v6]) as host and port, or null when it is not one. */
export function parseHostPort(s: string): { host: string; port: number } | null {
  const m = s.match(/^(?:\[([^\]]+)\]|([^:\[\]\s]+)):([0-9]{1,5})$/);
  if (!m) return null;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return null;
  return { host: m[1] ?? m[2], port };
}

/** One end of a link. Sends are queued in order; next() reads one frame at a time. */
export class NodeLink {
  #buf = new Uint8Array(64 << 10);
  #start = 0;
  #end = 0;
  #sending: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(readonly conn: Deno.TcpConn) {
    conn.setNoDelay(true);
  }

  /** Sends a JSON message (in order after earlier sends). */
  sendJson(value: unknown): Promise<void> {
    return this.#send(KIND_JSON, new TextEncoder().encode(JSON.stringify(value)));
  }

  /** Sends one ring record. */
  sendRecord(words: Int32Array): Promise<void> {
    return this.#send(
      KIND_RECORD,
      new Uint8Array(words.buffer, words.byteOffset, words.byteLength),
    );
  }

  #send(kind: number, payload: Uint8Array): Promise<void> {
    const frame = new Uint8Array(8 + payload.length);
    const head = new DataView(frame.buffer);
    head.setUint32(0, payload.length, true);
    head.setUint32(4, kind, true);
    frame.set(payload, 8);
    const sent = this.#sending.then(async () => {
      for (let at = 0; at < frame.length;) at += await this.conn.write(frame.subarray(at));
    });
    this.#sending = sent.catch(() => {});
    return sent;
  }

  /** The next frame, or null when the other end closed the link (or it broke). */
  async next(): Promise<Frame | null> {
    try {
      if (!await this.#fill(8)) return null;
      const head = new DataView(this.#buf.buffer, this.#start, 8);
      const bytes = head.getUint32(0, true), kind = head.getUint32(4, true);
      if (bytes > MAX_FRAME_BYTES || (kind !== KIND_JSON && kind !== KIND_RECORD)) {
        throw new Error(`bad frame (kind ${kind}, ${bytes} bytes): not a minisgl node`);
      }
      if (!await this.#fill(8 + bytes)) return null;
      const payload = this.#buf.slice(this.#start + 8, this.#start + 8 + bytes);
      this.#start += 8 + bytes;
      if (kind === KIND_JSON) {
        return { kind: "json", value: JSON.parse(new TextDecoder().decode(payload)) };
      }
      return { kind: "record", words: new Int32Array(payload.buffer, 0, bytes >> 2) };
    } catch (e) {
      if (this.#closed || e instanceof Deno.errors.ConnectionReset) return null;
      if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) return null;
      throw e;
    }
  }

  /** Reads until `n` bytes are buffered; false at the end of the stream. */
  async #fill(n: number): Promise<boolean> {
    if (this.#end - this.#start >= n) return true;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#buf.length - this.#start < n) {
      const grown = new Uint8Array(Math.max(n, this.#buf.length));
      grown.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = grown;
      this.#end -= this.#start;
      this.#start = 0;
    }
    while (this.#end - this.#start < n) {
      const got = await this.conn.read(this.#buf.subarray(this.#end));
      if (got === null) return false;
      this.#end += got;
    }
    return true;
  }

  /** Closes the connection (the other end's next() then returns null). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}
