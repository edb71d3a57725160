/**
 * Loading progress for the terminal: the engine reports stages (weights, KV pool, CUDA
 * graphs) while it starts; this prints them as they come instead of a silent wait.
 */

/** A printer for startEngine's onProgress reports ({stage, done, total} or strings). It
 *  prints each stage's start, every 10% step, and its end. */
export function progressPrinter(log: (line: string) => void): (report: unknown) => void {
  let lastStage = "";
  let lastDecile = -1;
  const t0 = performance.now();
  return (report: unknown) => {
    const r = typeof report === "object" && report !== null
      ? report as Record<string, unknown>
      : { stage: String(report) };
    const stage = String(r.stage ?? "");
    const done = typeof r.done === "number" ? r.done : null;
    const total = typeof r.total === "number" ? r.total : null;
    const decile = done !== null && total ? Math.floor((10 * done) / total) : -1;
    if (stage === lastStage && decile === lastDecile) return;
    if (stage === lastStage && decile < 10 && decile - lastDecile < 1) return;
    lastStage = stage;
    lastDecile = decile;
    const rank = typeof r.rank === "number" && r.rank > 0 ? ` (rank ${r.rank})` : "";
    const amount = done !== null && total !== null ? ` ${describeAmount(stage, done, total)}` : "";
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    log(`[${secs}s] ${stage}${rank}${amount}`);
  };
}

/** "12.0/40.0 MB" for byte counts, "3/8" for steps. */
export function describeAmount(stage: string, done: number, total: number): string {
  if (total >= 1 << 20 || /weight/i.test(stage) && total > 1024) {
    return `${(done / 1e6).toFixed(1)}/${(total / 1e6).toFixed(1)} MB`;
  }
  return `${done}/${total}`;
}
