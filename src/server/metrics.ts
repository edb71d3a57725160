/**
 * Prometheus text exposition for GET /metrics: the scheduler's gauges and counters
 * (EngineMetrics) as `minisgl_*`, plus latency histograms measured by the server.
 */

import type { EngineMetrics } from "../engine/types.ts";

/** A cumulative Prometheus histogram with fixed bucket bounds (seconds). */
export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly name: string, readonly help: string, readonly bounds: number[]) {
    this.counts = new Array(bounds.length).fill(0);
  }

  /** Records one observation. */
  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]) this.counts[i]++;
  }

  /** The histogram in Prometheus text format. */
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    this.bounds.forEach((b, i) => lines.push(`${this.name}_bucket{le="${b}"} ${this.counts[i]}`));
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.count}`);
    lines.push(`${this.name}_sum ${this.sum}`, `${this.name}_count ${this.count}`);
    return lines.join("\n");
  }
}

/** Metrics the HTTP server keeps itself. */
export class ServerMetrics {
  readonly ttft = new Histogram(
    "minisgl_time_to_first_token_seconds",
    "Time from request submission to its first generated token.",
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20],
  );
  readonly itl = new Histogram(
    "minisgl_inter_token_latency_seconds",
    "Time between two generated tokens of one request.",
    [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1],
  );
  readonly e2e = new Histogram(
    "minisgl_e2e_request_latency_seconds",
    "Time from request arrival to its last token.",
    [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120],
  );
  /** Finished requests by finish reason (stop, length, abort, error). */
  readonly finished = new Map<string, number>();
  /** HTTP requests answered with an error, by status. */
  readonly httpErrors = new Map<number, number>();

  /** Counts a finished request. */
  finish(reason: string): void {
    this.finished.set(reason, (this.finished.get(reason) ?? 0) + 1);
  }

  /** Counts an error response. */
  error(status: number): void {
    this.httpErrors.set(status, (this.httpErrors.get(status) ?? 0) + 1);
  }

  /** All metrics (engine's and ours) in Prometheus text format. */
  render(engine: EngineMetrics, inFlight: number): string {
    const out: string[] = [];
    const gauge = (name: string, help: string, v: number) =>
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name} ${v}`);
    const counter = (name: string, help: string, v: number) =>
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name} ${v}`);
    gauge(
      "minisgl_num_requests_running",
      "Requests in the running batch.",
      engine.numRequestsRunning,
    );
    gauge(
      "minisgl_num_requests_waiting",
      "Requests waiting for admission.",
      engine.numRequestsWaiting,
    );
    gauge("minisgl_kv_pages_total", "Pages in the KV cache pool.", engine.kvPagesTotal);
    gauge("minisgl_kv_pages_free", "Free KV pages.", engine.kvPagesFree);
    gauge(
      "minisgl_kv_pages_cached",
      "KV pages held only by the prefix cache.",
      engine.kvPagesCached,
    );
    gauge("minisgl_kv_pages_in_use", "KV pages held by running requests.", engine.kvPagesInUse);
    gauge(
      "minisgl_kv_cache_usage_ratio",
      "Fraction of KV pages not free.",
      engine.kvPagesTotal > 0 ? 1 - engine.kvPagesFree / engine.kvPagesTotal : 0,
    );
    gauge(
      "minisgl_server_requests_in_flight",
      "Engine requests the HTTP server has admitted and not finished.",
      inFlight,
    );
    counter("minisgl_prompt_tokens_total", "Prompt tokens processed.", engine.promptTokensTotal);
    counter(
      "minisgl_cached_tokens_total",
      "Prompt tokens served from the prefix cache.",
      engine.cachedTokensTotal,
    );
    counter("minisgl_generation_tokens_total", "Tokens generated.", engine.generatedTokensTotal);
    counter(
      "minisgl_retractions_total",
      "Running requests retracted for lack of KV pages.",
      engine.retractionsTotal,
    );
    out.push(
      "# HELP minisgl_requests_finished_total Finished requests by reason.",
      "# TYPE minisgl_requests_finished_total counter",
    );
    for (const [reason, n] of this.finished) {
      out.push(`minisgl_requests_finished_total{reason="${reason}"} ${n}`);
    }
    out.push(
      "# HELP minisgl_http_errors_total Error responses by HTTP status.",
      "# TYPE minisgl_http_errors_total counter",
    );
    for (const [status, n] of this.httpErrors) {
      out.push(`minisgl_http_errors_total{status="${status}"} ${n}`);
    }
    out.push(this.ttft.render(), this.itl.render(), this.e2e.render());
    return out.join("\n") + "\n";
  }
}
