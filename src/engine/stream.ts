/**
 * One request's stream of token events: pushed by the engine as the scheduler's messages
 * arrive, consumed with `for await`. Leaving the loop early aborts the request.
 */

import type { TokenEvent } from "./types.ts";

/** An async iterable queue of TokenEvents that ends after the event with `finish`. */
export class EventStream implements AsyncIterable<TokenEvent> {
  #queue: TokenEvent[] = [];
  #wake: (() => void) | null = null;
  #finished = false;
  #consumerGone = false;

  /** `onCancel` runs when the consumer stops before the finish event. */
  constructor(readonly onCancel: () => void) {}

  /** Add an event (ignored after the finish event). */
  push(ev: TokenEvent): void {
    if (this.#finished) return;
    if (ev.finish) this.#finished = true;
    this.#queue.push(ev);
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<TokenEvent> {
    let sawFinish = false;
    try {
      for (;;) {
        while (this.#queue.length === 0) await new Promise<void>((r) => (this.#wake = r));
        const ev = this.#queue.shift()!;
        yield ev;
        if (ev.finish) {
          sawFinish = true;
          return;
        }
      }
    } finally {
      if (!sawFinish && !this.#consumerGone) {
        this.#consumerGone = true;
        this.onCancel();
      }
    }
  }
}
