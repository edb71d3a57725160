/**
 * Tokenization off the HTTP thread: inputs past a size threshold are encoded, rendered
 * through the chat template or decoded by a small pool of tokenizer workers
 * (workers/tokenizer_worker.ts), so a multi-megabyte body delays only its own request while
 * /health and running streams carry on, and a burst of prompts is tokenized on several
 * cores. Small inputs stay inline, where a round trip to a worker would cost more than the
 * work.
 */

import type { ChatMessage, TextTokenizer } from "../text/tokenizer_port.ts";

/** One job of a tokenizer worker. */
export type TokenizeJob =
  | { op: "encode"; text: string; addSpecialTokens: boolean }
  | {
    op: "chat";
    messages: ChatMessage[];
    addGenerationPrompt: boolean;
    kwargs: Record<string, unknown>;
  }
  | { op: "decode"; ids: number[] };

/** Characters of text from which an encode or chat job goes to a worker: ~60 tokens, where
 *  the round trip (~0.1 ms) costs about what inline encoding does. Inline work runs on the
 *  HTTP thread, one request after another, and holds up the workers' results too: with 2 KB
 *  here, a burst of 128 prompts of 200-800 tokens on an H200 host reached the scheduler one
 *  every ~6 ms for 250 ms (the ~40% under 2 KB, serially), then the rest at once
 *  (MINISGL_STEP_TRACE, 2026-12-05). */
export const OFFLOAD_THRESHOLD = 256;
/** Token ids from which a decode goes to a worker (decoding is ~50x cheaper per token). */
const DECODE_OFFLOAD_IDS = 8 * 1024;

/** The tokenizer operations of the server that may run in a worker. */
export interface AsyncTokenizer {
  encode(text: string, addSpecialTokens: boolean): Promise<number[]>;
  chatTemplate(
    messages: ChatMessage[],
    addGenerationPrompt: boolean,
    kwargs: Record<string, unknown>,
  ): Promise<number[]>;
  decode(ids: number[]): Promise<string>;
  close(): void;
}

interface Slot {
  worker: Worker;
  ready: Promise<void>;
  busy: number;
}

/** A pool of `size` tokenizer workers over the model's tokenizer, with `inline` for small
 *  inputs. A worker that fails is replaced; its jobs fail with the error. */
export function tokenizePool(
  modelDir: string,
  inline: TextTokenizer,
  size: number,
): AsyncTokenizer {
  let nextId = 0;
  const waiting = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; slot: Slot }
  >();
  const spawn = (): Slot => {
    const worker = new Worker(new URL("../../workers/tokenizer_worker.ts", import.meta.url), {
      type: "module",
    });
    const slot: Slot = { worker, busy: 0, ready: Promise.resolve() };
    slot.ready = new Promise<void>((resolve, reject) => {
      worker.onmessage = (ev: MessageEvent) => {
        const m = ev.data;
        if (m.type === "ready") return resolve();
        if (m.type === "error") return reject(new Error(m.message));
        const w = waiting.get(m.id);
        if (!w) return;
        waiting.delete(m.id);
        slot.busy--;
        if (m.error !== undefined) w.reject(new Error(m.error));
        else w.resolve(m.result);
      };
    });
    slot.ready.catch(() => {});
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      const i = slots.indexOf(slot);
      if (i >= 0) slots[i] = spawn();
      for (const [id, w] of waiting) {
        if (w.slot !== slot) continue;
        waiting.delete(id);
        w.reject(new Error(`tokenizer worker failed: ${e.message}`));
      }
      worker.terminate();
    };
    worker.postMessage({ type: "init", modelDir });
    return slot;
  };
  const slots = Array.from({ length: Math.max(1, size) }, spawn);
  const run = async <T>(job: TokenizeJob): Promise<T> => {
    const slot = slots.reduce((a, b) => (b.busy < a.busy ? b : a));
    slot.busy++;
    await slot.ready;
    const id = nextId++;
    return new Promise<T>((resolve, reject) => {
      waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, slot });
      slot.worker.postMessage({ id, ...job });
    });
  };
  return {
    encode: (text, addSpecialTokens) =>
      text.length < OFFLOAD_THRESHOLD
        ? Promise.resolve(inline.encode(text, addSpecialTokens))
        : run({ op: "encode", text, addSpecialTokens }),
    chatTemplate: (messages, addGenerationPrompt, kwargs) => {
      let chars = 0;
      for (const m of messages) chars += m.content.length;
      return chars < OFFLOAD_THRESHOLD
        ? Promise.resolve(inline.chatTemplate(messages, addGenerationPrompt, kwargs))
        : run({ op: "chat", messages, addGenerationPrompt, kwargs });
    },
    decode: (ids) =>
      ids.length < DECODE_OFFLOAD_IDS
        ? Promise.resolve(inline.decode(ids))
        : run({ op: "decode", ids }),
    close: () => {
      for (const s of slots) s.worker.terminate();
    },
  };
}
