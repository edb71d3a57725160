/**
 * Single-producer single-consumer ring of variable-length binary messages over a
 * SharedArrayBuffer. One thread pushes, one thread pops; messages are Int32 words.
 *
 * Layout (Int32 words): a header of HEADER_WORDS words (write index, read index and the
 * closed flag, on separate cache lines so producer and consumer do not false-share), then
 * `capacity` data words. A message is one length word followed by its payload. A message
 * that does not fit before the end of the data area leaves a WRAP marker and starts again
 * at word 0. One word always stays empty so that "read == write" means empty.
 *
 * Blocking calls use Atomics.wait (workers); the async ones use Atomics.waitAsync, for
 * threads that must keep their event loop running (the scheduler, the main thread).
 */

const WRITE = 0;
const CLOSED = 8;
const READ = 16;
const HEADER_WORDS = 32;
const WRAP = -1;

/** Atomics.waitAsync plus a timer of the same length: Deno does not count a pending
 *  waitAsync as work, so without the timer an otherwise idle event loop would end (and the
 *  promise never settle) while the other side is still about to notify. */
async function waitAsync(a: Int32Array, i: number, v: number, ms: number): Promise<void> {
  const res = Atomics.waitAsync(a, i, v, ms);
  if (!res.async) return;
  const keep = setTimeout(() => {}, ms + 1);
  try {
    await res.value;
  } finally {
    clearTimeout(keep);
  }
}

/** Default ring size: 16 MiB, room for a prefill batch of many thousand tokens. */
export const DEFAULT_RING_BYTES = 16 << 20;

/** Thrown by push when the ring was closed by either side. */
export class RingClosedError extends Error {
  constructor() {
    super("ring closed");
    this.name = "RingClosedError";
  }
}

/** Data bytes of a ring whose maxMessageWords is at least `words` (and at least the
 *  default size). */
export function ringBytesFor(words: number): number {
  return Math.max(DEFAULT_RING_BYTES, (2 * words + 8) * 4);
}

/** Allocate the shared memory of a ring of `bytes` data bytes (rounded down to words). */
export function createRingBuffer(bytes: number = DEFAULT_RING_BYTES): SharedArrayBuffer {
  const words = Math.floor(bytes / 4);
  if (words < 16) throw new Error(`ring too small: ${bytes} bytes`);
  return new SharedArrayBuffer((HEADER_WORDS + words) * 4);
}

/** One end (or both) of a ring; both threads wrap the same SharedArrayBuffer. */
export class Ring {
  readonly capacity: number;
  /** Largest payload (in words) that push accepts: any larger one could wait forever. */
  readonly maxMessageWords: number;
  #hdr: Int32Array;
  #data: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.#hdr = new Int32Array(buffer, 0, HEADER_WORDS);
    this.#data = new Int32Array(buffer, HEADER_WORDS * 4);
    this.capacity = this.#data.length;
    // With payload + 1 <= capacity / 2 - 1 a message fits an empty ring wherever the
    // indices stand (either before the end, or at 0 below the read index).
    this.maxMessageWords = Math.floor(this.capacity / 2) - 2;
  }

  /** True once close() was called on either side. */
  get closed(): boolean {
    return Atomics.load(this.#hdr, CLOSED) !== 0;
  }

  /** Mark the ring closed and wake both sides. Messages already in it can still be popped. */
  close(): void {
    Atomics.store(this.#hdr, CLOSED, 1);
    Atomics.notify(this.#hdr, WRITE);
    Atomics.notify(this.#hdr, READ);
  }

  /** Push if there is room now; false when full. Accepts a message split into parts
   *  (written back to back, read back as one message). */
  tryPush(...parts: Int32Array[]): boolean {
    let len = 0;
    for (const p of parts) len += p.length;
    if (len > this.maxMessageWords) {
      throw new Error(
        `ring message of ${len * 4} bytes exceeds the limit of ${this.maxMessageWords * 4} ` +
          `bytes; make the ring larger`,
      );
    }
    if (this.closed) throw new RingClosedError();
    const cap = this.capacity;
    const w = Atomics.load(this.#hdr, WRITE);
    const r = Atomics.load(this.#hdr, READ);
    const free = (r - w - 1 + cap) % cap;
    const need = len + 1;
    let at = w;
    if (cap - w >= need) {
      if (free < need) return false;
    } else {
      if (free < cap - w + need) return false;
      this.#data[w] = WRAP;
      at = 0;
    }
    const d = this.#data;
    d[at] = len;
    let o = at + 1;
    for (const p of parts) {
      d.set(p, o);
      o += p.length;
    }
    // The atomic store publishes the payload written above to the consumer.
    Atomics.store(this.#hdr, WRITE, o % cap);
    Atomics.notify(this.#hdr, WRITE);
    return true;
  }

  /** Push, blocking (Atomics.wait) while the ring is full. Workers only. */
  push(...parts: Int32Array[]): void {
    while (!this.tryPush(...parts)) {
      const r = Atomics.load(this.#hdr, READ);
      if (this.tryPush(...parts)) return;
      Atomics.wait(this.#hdr, READ, r, 100);
    }
  }

  /** Push, awaiting (Atomics.waitAsync) while the ring is full. */
  async pushAsync(...parts: Int32Array[]): Promise<void> {
    while (!this.tryPush(...parts)) {
      const r = Atomics.load(this.#hdr, READ);
      if (this.tryPush(...parts)) return;
      await waitAsync(this.#hdr, READ, r, 100);
    }
  }

  /** Pop a message if one is there (a copy, owned by the caller); null when empty. */
  tryPop(): Int32Array | null {
    const cap = this.capacity;
    let r = Atomics.load(this.#hdr, READ);
    const w = Atomics.load(this.#hdr, WRITE);
    if (r === w) return null;
    let len = this.#data[r];
    if (len === WRAP) {
      r = 0;
      len = this.#data[0];
    }
    const msg = this.#data.slice(r + 1, r + 1 + len);
    Atomics.store(this.#hdr, READ, (r + 1 + len) % cap);
    Atomics.notify(this.#hdr, READ);
    return msg;
  }

  /** Pop, blocking (Atomics.wait) up to timeoutMs; null on timeout or when closed and
   *  empty. Workers only. */
  pop(timeoutMs = Infinity): Int32Array | null {
    const deadline = timeoutMs === Infinity ? Infinity : performance.now() + timeoutMs;
    for (;;) {
      const w = Atomics.load(this.#hdr, WRITE);
      const m = this.tryPop();
      if (m) return m;
      if (this.closed) return null;
      const left = deadline - performance.now();
      if (left <= 0) return null;
      Atomics.wait(this.#hdr, WRITE, w, Math.min(left, 1000));
    }
  }

  /** Pop, awaiting (Atomics.waitAsync) up to timeoutMs; null on timeout or when closed
   *  and empty. Keeps the caller's event loop running. */
  async popAsync(timeoutMs = Infinity): Promise<Int32Array | null> {
    const deadline = timeoutMs === Infinity ? Infinity : performance.now() + timeoutMs;
    for (;;) {
      const w = Atomics.load(this.#hdr, WRITE);
      const m = this.tryPop();
      if (m) return m;
      if (this.closed) return null;
      const left = deadline - performance.now();
      if (left <= 0) return null;
      await waitAsync(this.#hdr, WRITE, w, Math.min(left, 1000));
    }
  }
}
