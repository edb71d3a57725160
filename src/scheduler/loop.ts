/**
 * The overlap loop: schedule batch N+1 and send it, then process the result of batch N
 * while N+1 runs. With overlap off, each batch's result is processed before the next one
 * is scheduled. The loop yields to the event loop regularly so that submits and aborts
 * (postMessage from the main thread) get in even when the device never makes it wait.
 */

import type { ForwardBatch, ForwardResult } from "../ipc/batch.ts";
import type { TokenEvent } from "../engine/types.ts";
import type { Plan, Scheduler } from "./scheduler.ts";

/** How batches reach the GPU worker(s) and results come back. */
export interface Transport {
  send(batch: ForwardBatch): Promise<void>;
  /** The next result in order, or null when the worker is gone. */
  recv(): Promise<ForwardResult | null>;
}

/** Yield to the event loop through a macrotask (faster than setTimeout's clamp). */
function macrotask(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(null);
    ch.port2.close();
  });
}

/** Drives a Scheduler over a Transport until stopped. */
export class SchedulerLoop {
  #wake: (() => void) | null = null;
  #stop: { abort: boolean } | null = null;
  /** CPU seconds spent in schedule() + process() (for the benchmark and logs). */
  cpuSeconds = 0;
  steps = 0;

  constructor(
    readonly sched: Scheduler,
    readonly transport: Transport,
    readonly overlap: boolean,
    readonly post: (events: [string, TokenEvent][]) => void,
    /** Told of a fatal error BEFORE the requests are aborted with it, so that whoever ends
     *  their streams already knows the engine died (a 503, not the request's own 400). */
    readonly onFatal: (message: string) => void = () => {},
  ) {}

  /** Something new to do (a submit or an abort). */
  notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /** Stop: finish the work in flight first, or abort it. */
  stop(abort: boolean): void {
    this.#stop = { abort: abort || (this.#stop?.abort ?? false) };
    this.notify();
  }

  #flush(): void {
    const ev = this.sched.takeEvents();
    if (ev.length > 0) this.post(ev);
  }

  async #processOne(inflight: Plan[]): Promise<void> {
    const res = await this.transport.recv();
    if (res === null) throw new Error("the GPU worker stopped");
    const plan = inflight.shift()!;
    if (res.id !== plan.batch.id) {
      throw new Error(`result of batch ${res.id} where ${plan.batch.id} was expected`);
    }
    const t0 = performance.now();
    this.sched.process(plan, res);
    this.cpuSeconds += (performance.now() - t0) / 1000;
    this.#flush();
  }

  /** Run until stop() and no work is left. Throws when the worker is gone (after
   *  onFatal, then aborting every request with that error). */
  async run(): Promise<void> {
    const inflight: Plan[] = [];
    const limit = this.overlap ? 1 : 0;
    let lastYield = performance.now();
    try {
      for (;;) {
        if (this.#stop?.abort) this.sched.abortAll("the engine is shutting down");
        if (this.#stop && this.sched.idle && inflight.length === 0) break;
        const t0 = performance.now();
        const plan = this.sched.schedule();
        this.cpuSeconds += (performance.now() - t0) / 1000;
        if (plan) {
          this.steps++;
          await this.transport.send(plan.batch);
          inflight.push(plan);
        }
        this.#flush();
        if (plan) {
          while (inflight.length > limit) await this.#processOne(inflight);
        } else if (inflight.length > 0) {
          await this.#processOne(inflight);
        } else {
          if (this.#stop && this.sched.idle) continue;
          await new Promise<void>((r) => (this.#wake = r));
          lastYield = performance.now();
          continue;
        }
        if (performance.now() - lastYield > 2) {
          await macrotask();
          lastYield = performance.now();
        }
      }
    } catch (e) {
      this.onFatal((e as Error).message);
      this.sched.abortAll((e as Error).message);
      this.#flush();
      throw e;
    }
  }
}
