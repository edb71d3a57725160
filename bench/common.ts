/**
 * Helpers shared by the benchmarks of bench/: a seeded generator, percentiles, markdown
 * tables, a small SVG line plot, and flag parsing of the engine settings they vary.
 */
import type { EngineConfig } from "../src/engine/config.ts";
import { parseKvCacheDtype } from "../src/core/defaults.ts";

/** mulberry32: a small seeded generator of floats in [0, 1) (same stream for a seed). */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6D2B79F5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform integer in [lo, hi] (both included). */
export function uniformInt(rand: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo + 1));
}

/** The text of SGLang's "random" dataset prompt of `n` tokens: random ids in
 *  [1000, 30000) decoded, re-encoded (decoding can merge ids) and cut to `n` tokens. */
export function randomPromptText(
  tok: {
    vocabSize: number;
    encode(text: string, opts: { addSpecialTokens: boolean }): number[];
    decode(ids: number[]): string;
  },
  rand: () => number,
  n: number,
): string {
  const lo = Math.min(1000, tok.vocabSize - 1), hi = Math.min(30000, tok.vocabSize - 1);
  const ids = Array.from({ length: n }, () => uniformInt(rand, lo, hi));
  return tok.decode(tok.encode(tok.decode(ids), { addSpecialTokens: false }).slice(0, n));
}

/** The p-th percentile (0..100) by linear interpolation, NaN for an empty list. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const x = (p / 100) * (s.length - 1);
  const lo = Math.floor(x), hi = Math.ceil(x);
  return s[lo] + (s[hi] - s[lo]) * (x - lo);
}

export function mean(values: number[]): number {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

/** Rounds for display: 3 significant digits below 100, integers above. */
export function fmt(x: unknown): string {
  if (typeof x !== "number") return String(x ?? "");
  if (!Number.isFinite(x)) return String(x);
  if (Math.abs(x) >= 100 || Number.isInteger(x)) return String(Math.round(x));
  return x.toPrecision(3);
}

/** A markdown table of `rows` over `columns` (keys of the rows). */
export function markdownTable(rows: Record<string, unknown>[], columns: string[]): string {
  const lines = [
    `| ${columns.join(" | ")} |`,
    `|${columns.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${columns.map((c) => fmt(r[c])).join(" | ")} |`),
  ];
  return lines.join("\n");
}

/** One curve of a line plot. */
export interface Series {
  label: string;
  points: [number, number][];
}

/** A self-contained SVG line plot (log2 x axis when `logX`). */
export function svgLinePlot(
  title: string,
  xLabel: string,
  yLabel: string,
  series: Series[],
  logX = false,
): string {
  const W = 640, H = 400, L = 70, R = 20, T = 40, B = 50;
  const all = series.flatMap((s) => s.points).filter(([x, y]) => isFinite(x) && isFinite(y));
  const tx = (x: number) => logX ? Math.log2(x) : x;
  const xs = all.map(([x]) => tx(x)), ys = all.map(([, y]) => y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1e-9);
  const y1 = Math.max(...ys, 1e-9) * 1.1;
  const px = (x: number) => L + ((tx(x) - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (y: number) => H - B - (y / y1) * (H - T - B);
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}</text>`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`,
    `<text x="${W / 2}" y="${H - 10}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text x="15" y="${H / 2}" text-anchor="middle" transform="rotate(-90 15 ${H / 2})">${
      esc(yLabel)
    }</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const y = (y1 * i) / 4;
    parts.push(
      `<text x="${L - 5}" y="${py(y) + 4}" text-anchor="end">${fmt(y)}</text>`,
      `<line x1="${L}" y1="${py(y)}" x2="${W - R}" y2="${py(y)}" stroke="#ddd"/>`,
    );
  }
  const xticks = [...new Set(series.flatMap((s) => s.points.map(([x]) => x)))];
  for (const x of xticks) {
    parts.push(`<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle">${fmt(x)}</text>`);
  }
  series.forEach((s, i) => {
    const c = colors[i % colors.length];
    const pts = s.points.filter(([x, y]) => isFinite(x) && isFinite(y));
    parts.push(
      `<polyline fill="none" stroke="${c}" stroke-width="2" points="${
        pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ")
      }"/>`,
      ...pts.map(([x, y]) =>
        `<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${c}"/>`
      ),
      `<text x="${L + 10}" y="${T + 14 * (i + 1)}" fill="${c}">${esc(s.label)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

/** Where a plot goes: next to the --out record file, or bench/results/ when none. */
export function plotPath(out: string | undefined, name: string): string {
  const dir = out ? out.replace(/[^/\\]*$/, "") : "";
  return `${dir || "./"}${name}.svg`;
}

/** Engine settings the benchmarks take as flags (same names as the server's). Unset ones
 *  keep the engine's defaults (src/core/defaults.ts), except the page size: 16 here. */
export const ENGINE_FLAGS = {
  device: { type: "string", default: "cuda" },
  "page-size": { type: "string", default: "16" },
  "cuda-graph-max-bs": { type: "string" },
  "max-running-requests": { type: "string" },
  "max-prefill-length": { type: "string" },
  "mem-fraction": { type: "string" },
  "num-pages": { type: "string" },
  cache: { type: "string" },
  "disable-overlap-schedule": { type: "boolean", default: false },
  "cpu-threads": { type: "string" },
  attn: { type: "string" },
  "kv-cache-dtype": { type: "string" },
} as const;

/** The EngineConfig fields that ENGINE_FLAGS' values set (only those given). */
export function engineOverrides(
  v: Record<string, string | boolean | undefined>,
): Partial<EngineConfig> {
  const num = (k: string) => typeof v[k] === "string" ? Number(v[k]) : undefined;
  const device = v.device === "cpu" ? "cpu" : "cuda";
  const o: Partial<EngineConfig> = {
    device,
    pageSize: num("page-size"),
    cudaGraphMaxBs: device === "cpu" ? 0 : num("cuda-graph-max-bs"),
    maxRunningRequests: num("max-running-requests"),
    maxPrefillLength: num("max-prefill-length"),
    memFraction: num("mem-fraction"),
    numPages: num("num-pages"),
    cache: v.cache === "naive" || v.cache === "radix" ? v.cache : undefined,
    disableOverlapSchedule: v["disable-overlap-schedule"] === true,
    cpuThreads: num("cpu-threads"),
    attn: typeof v.attn === "string" ? v.attn : undefined,
    kvCacheDtype: typeof v["kv-cache-dtype"] === "string"
      ? parseKvCacheDtype(v["kv-cache-dtype"])
      : undefined,
  };
  for (const k of Object.keys(o) as (keyof EngineConfig)[]) if (o[k] === undefined) delete o[k];
  return o;
}
