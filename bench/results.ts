/** bench/results/*.json records: {"card", "date", "results": [...]}. */

import { dirname } from "node:path";

/** Appends one result to the record file at `path` (created when absent). */
export async function appendResult(path: string, card: string, result: Record<string, unknown>) {
  let rec: { card: string; date: string; results: Record<string, unknown>[] };
  try {
    rec = JSON.parse(await Deno.readTextFile(path));
  } catch {
    rec = { card, date: new Date().toISOString().slice(0, 10), results: [] };
  }
  rec.results.push(result);
  await Deno.mkdir(dirname(path), { recursive: true });
  await Deno.writeTextFile(path, JSON.stringify(rec, null, 2) + "\n");
}
