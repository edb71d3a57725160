/**
 * CUDA graphs of the decode step, per padded batch size. A graph reads its inputs
 * from the fixed device metadata block and writes sampled tokens to fixed buffers, so
 * replaying it needs one upload and one launch instead of hundreds of op calls. The step is
 * captured in parts (the forward pass to the logits, then sampling, and sampling when every
 * row is greedy), replayed one forward then one sampling part; a constrained batch replays
 * the forward part, applies its grammar masks, then a sampling part.
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

export class CudaGraphs {
  readonly sizes: number[];
  private graphs = new Map<number, Handle[]>();
  /** Seconds spent capturing. */
  captureSeconds = 0;

  constructor(private dev: Device, private stream: Handle, maxBs: number) {
    this.sizes = graphBatchSizes(maxBs);
  }

  /** Captures each part `parts[i](bs)` for every size, after `prepare(bs)` wrote a dummy
   *  batch and one eager run warmed the libraries up (cuBLASLt picks its algorithms outside
   *  capture). */
  capture(
    parts: ((bs: number) => void)[],
    prepare: (bs: number) => void,
    progress: (stage: string, done: number, total: number) => void,
  ): void {
    const t0 = performance.now();
    const order = [...this.sizes].reverse();
    order.forEach((bs, i) => {
      progress("CUDA graphs", i, order.length);
      prepare(bs);
      for (const part of parts) part(bs);
      this.dev.sync(this.stream);
      this.graphs.set(bs, parts.map((part) => this.dev.capture(this.stream, () => part(bs))));
    });
    progress("CUDA graphs", order.length, order.length);
    this.captureSeconds = (performance.now() - t0) / 1000;
  }

  /** The smallest captured size >= bs, or 0 when bs is too large. */
  sizeFor(bs: number): number {
    for (const s of this.sizes) if (s >= bs) return s;
    return 0;
  }

  /** Replays the parts of size `bs` from `from` up to (not including) `to`. */
  launch(bs: number, from = 0, to = Infinity): void {
    const g = this.graphs.get(bs)!;
    for (let i = from; i < Math.min(to, g.length); i++) this.dev.launchGraph(g[i], this.stream);
  }

  destroy(): void {
    for (const gs of this.graphs.values()) for (const g of gs) this.dev.destroyGraph(g);
    this.graphs.clear();
  }
}
