/**
 * Fault injection for the engine-death tests: `MINISGL_FAULT=<site>:after=<n>` makes a
 * worker fail once it has handled n batches. Unset (the default) it does nothing; a
 * malformed value stops start-up with one line, so a typo cannot pass for a clean run.
 *
 * Sites: `scheduler` (the scheduler loop throws), `scheduler-uncaught` (an exception
 * escapes on the scheduler worker's event loop, outside the loop), `gpu` (the GPU worker's
 * serve loop throws), `gpu-uncaught` (the GPU worker leaves its loop without closing its
 * rings and throws where nothing catches it).
 */

/** Where a fault is injected. */
export type FaultSite = "scheduler" | "scheduler-uncaught" | "gpu" | "gpu-uncaught";

/** A fault to inject: at `site`, after `after` batches. */
export interface Fault {
  site: FaultSite;
  after: number;
}

const SITES: readonly FaultSite[] = ["scheduler", "scheduler-uncaught", "gpu", "gpu-uncaught"];

/** Name of the environment variable read by faultFromEnv. */
export const FAULT_ENV = "MINISGL_FAULT";

/** Parses a MINISGL_FAULT value; null for none (undefined or empty). */
export function parseFault(spec: string | undefined): Fault | null {
  if (spec === undefined || spec === "") return null;
  const m = spec.match(/^([a-z-]+):after=(\d+)$/);
  if (!m || !SITES.includes(m[1] as FaultSite)) {
    throw new Error(
      `${FAULT_ENV}=${spec}: expected <site>:after=<n> with site one of ${SITES.join(", ")}`,
    );
  }
  return { site: m[1] as FaultSite, after: Number(m[2]) };
}

/** The fault asked for in the environment, or null. */
export function faultFromEnv(): Fault | null {
  return parseFault(Deno.env.get(FAULT_ENV));
}

/** The error an injected fault throws. */
export function injectedFault(site: FaultSite, batches: number): Error {
  return new Error(`injected fault (${FAULT_ENV}=${site}) after ${batches} batches`);
}
