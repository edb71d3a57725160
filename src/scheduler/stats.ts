/**
 * Counters of the scheduler and the snapshot served as EngineMetrics (/metrics).
 */

import type { EngineMetrics } from "../engine/types.ts";

/** Monotonic counters; gauges are read from the scheduler at snapshot time. */
export class SchedulerStats {
  promptTokens = 0;
  cachedTokens = 0;
  generatedTokens = 0;
  retractions = 0;
  steps = 0;

  /** The metrics now. In-use pages are the rest of the pool, so the invariant
   *  total = free + cached + inUse holds by construction; tests check it against an
   *  independent count of the pages requests hold. */
  snapshot(
    s: { running: unknown[]; waiting: unknown[]; cfg: { numPages: number } },
    freePages: number,
    cachedPages: number,
  ): EngineMetrics {
    const total = s.cfg.numPages;
    return {
      numRequestsRunning: s.running.length,
      numRequestsWaiting: s.waiting.length,
      kvPagesTotal: total,
      kvPagesFree: freePages,
      kvPagesCached: cachedPages,
      kvPagesInUse: total - freePages - cachedPages,
      promptTokensTotal: this.promptTokens,
      cachedTokensTotal: this.cachedTokens,
      generatedTokensTotal: this.generatedTokens,
      retractionsTotal: this.retractions,
    };
  }
}
