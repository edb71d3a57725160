/**
 * CUDA graphs of the decode step, per padded batch size. A graph reads its inputs
 * from the fixed device metadata block and writes sampled tokens to fixed buffers, so
 * replaying it needs one upload and one launch instead of hundreds of op calls. The step is
 * captured in parts (the forward pass to the logits, then sampling, and sampling when every
 * row is greedy), replayed one forward then one sampling part; a constrained batch replays
 * the forward part, applies its grammar masks, then a sampling part.
 *
 * The forward part is captured once per sequence-length bucket too: the decode attention
 * plans its grid (splits per request) from the batch's longest sequence, and a graph freezes
 * that plan. Captured only at the pool's longest sequence, every replay ran the plan of a
 * 40k-key batch: at batch 256 of 1k-key requests, 5-9 splits of 128-256 keys each with its
 * merge where 1-3 of 384-1,024 stream better. A replay takes the smallest bucket that holds its
 * longest sequence; the kernel trims each request's splits to its own length on the device.
 * H100, 2026-12-06, offline (256 requests, contexts up to 2k; buckets off / on, alternated):
 * qwen3-0.6b 24.1k / 27.0k output tok/s with the fp8 cache, 19.8k / 20.8k with the 16-bit one;
 * llama-3-8b (an 8k pool, whose plan at batch 256 was one split already) 9.96k / 9.97k. The
 * extra captures did not show in start-up time (~4 s either way).
 */
import type { Device, Handle } from "../../ffi/device.ts";

/** Batch sizes captured up to `max`: 1, 2, 4, 8, then every 8 (as SGLang does). */
export function graphBatchSizes(max: number): number[] {
  const sizes: number[] = [];
  for (const s of [1, 2, 4]) if (s <= max) sizes.push(s);
  for (let s = 8; s <= max; s += 8) sizes.push(s);
  if (max > 0 && sizes[sizes.length - 1] !== max) sizes.push(max);
  return sizes;
}

/** Longest-sequence buckets of the forward graphs up to `maxSeqLen`: 1,024 keys, then x4,
 *  and `maxSeqLen` itself (only it when `spread` is false). */
export function graphSeqBuckets(maxSeqLen: number, spread = true): number[] {
  const out: number[] = [];
  for (let s = 1024; spread && s < maxSeqLen; s *= 4) out.push(s);
  out.push(maxSeqLen);
  return out;
}

/** The smallest bucket that holds `seq` keys (the last one past them all). */
export function seqBucketFor(buckets: number[], seq: number): number {
  for (let i = 0; i < buckets.length; i++) if (buckets[i] >= seq) return i;
  return buckets.length - 1;
}

export class CudaGraphs {
  readonly sizes: number[];
  /** Per size: the forward part of each sequence bucket; the sampling parts. */
  private forward = new Map<number, Handle[]>();
  private sampling = new Map<number, Handle[]>();
  /** Seconds spent capturing. */
  captureSeconds = 0;

  constructor(
    private dev: Device,
    private stream: Handle,
    maxBs: number,
    readonly seqBuckets: number[],
  ) {
    this.sizes = graphBatchSizes(maxBs);
  }

  /** Captures `forward(bs, seq)` for every size and bucket and each sampling part
   *  `sampling[i](bs)` for every size, after `prepare(bs)` wrote a dummy batch and one eager
   *  run warmed the libraries up (cuBLASLt picks its algorithms outside capture). */
  capture(
    forward: (bs: number, maxSeqLen: number) => void,
    sampling: ((bs: number) => void)[],
    prepare: (bs: number) => void,
    progress: (stage: string, done: number, total: number) => void,
  ): void {
    const t0 = performance.now();
    const order = [...this.sizes].reverse();
    const cap = (f: () => void) => this.dev.capture(this.stream, f);
    order.forEach((bs, i) => {
      progress("CUDA graphs", i, order.length);
      prepare(bs);
      forward(bs, this.seqBuckets[this.seqBuckets.length - 1]);
      for (const part of sampling) part(bs);
      this.dev.sync(this.stream);
      this.forward.set(bs, this.seqBuckets.map((s) => cap(() => forward(bs, s))));
      this.sampling.set(bs, sampling.map((part) => cap(() => part(bs))));
    });
    progress("CUDA graphs", order.length, order.length);
    this.captureSeconds = (performance.now() - t0) / 1000;
  }

  /** The smallest captured size >= bs, or 0 when bs is too large. */
  sizeFor(bs: number): number {
    for (const s of this.sizes) if (s >= bs) return s;
    return 0;
  }

  /** Replays the forward part of size `bs` for a batch whose longest sequence is `maxSeqLen`. */
  launchForward(bs: number, maxSeqLen: number): void {
    const g = this.forward.get(bs)!;
    this.dev.launchGraph(g[seqBucketFor(this.seqBuckets, maxSeqLen)], this.stream);
  }

  /** Replays sampling part `i` of size `bs`. */
  launchSampling(bs: number, i: number): void {
    this.dev.launchGraph(this.sampling.get(bs)![i], this.stream);
  }

  destroy(): void {
    for (const m of [this.forward, this.sampling]) {
      for (const gs of m.values()) for (const g of gs) this.dev.destroyGraph(g);
      m.clear();
    }
  }
}
