/**
 * The host side of bench/tp_rank.ts: runs `size` ranks as Workers (one communicator id
 * made here) and compares logits. Used by bench/tp.ts and tests/tp_test.ts.
 */
import { makeUniqueId } from "../ffi/comm.ts";
import type { RankJob } from "./tp_rank.ts";

/** What a rank posts back (bench/tp_rank.ts). */
export interface RankOut {
  logits: Float32Array[];
  tokens: number[];
  decodeLogits: Float32Array;
  continuation: number[];
}

/** Runs `size` ranks as Workers; resolves with every rank's output. `id`: the
 *  communicator's id (default: a fresh one, shared memory on the CPU). */
export function runRanks(
  job: Omit<RankJob, "rank" | "size" | "id" | "deviceIndex">,
  size: number,
  id = size > 1 ? makeUniqueId(job.backend) : null,
) {
  return Promise.all(
    Array.from({ length: size }, (_, rank) =>
      new Promise<RankOut>((resolve, reject) => {
        const w = new Worker(new URL("./tp_rank.ts", import.meta.url), { type: "module" });
        w.onmessage = (ev) => {
          w.terminate();
          if (ev.data.error) reject(new Error(`rank ${rank}: ${ev.data.error}`));
          else resolve(ev.data);
        };
        w.onerror = (e) => {
          e.preventDefault();
          w.terminate();
          reject(new Error(`rank ${rank}: ${e.message}`));
        };
        w.postMessage(
          {
            ...job,
            rank,
            size,
            id,
            deviceIndex: job.backend === "cuda" ? rank : 0,
          } satisfies RankJob,
        );
      })),
  );
}

/** max over positions of ||a_p - b_p|| / ||b_p||. */
export function maxRelErr(a: Float32Array, b: Float32Array, vocab: number): number {
  let worst = 0;
  for (let p = 0; p < b.length / vocab; p++) {
    let num = 0, den = 0;
    for (let i = p * vocab; i < (p + 1) * vocab; i++) num += (a[i] - b[i]) ** 2, den += b[i] ** 2;
    worst = Math.max(worst, Math.sqrt(num / den));
  }
  return worst;
}
