/**
 * Test models: `ensureTestModel("tiny-qwen3")` returns `.cache/models/tiny-qwen3` under the
 * repository root, making it once with src/model/make_model.ts (seed 0). Safe when several
 * test files ask at once: each builds in its own temporary folder and renames it into
 * place; a loser of the race drops its copy. A folder made by an older generator (stamp
 * mismatch) is rebuilt.
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { GENERATOR_VERSION, makeModel, STAMP_FILE } from "../src/model/make_model.ts";
import { defaultSamplingParams, type EngineRequest } from "../src/engine/types.ts";

/** Repository root. */
export const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Where test models live (gitignored). */
export const MODELS_DIR = join(REPO_ROOT, ".cache", "models");

const pending = new Map<string, Promise<string>>();

/** Path of the test model folder for `preset`, creating it if needed. */
export function ensureTestModel(preset: string): Promise<string> {
  let p = pending.get(preset);
  if (!p) {
    p = build(preset);
    pending.set(preset, p);
    p.catch(() => pending.delete(preset));
  }
  return p;
}

async function isCurrent(dir: string, preset: string): Promise<boolean> {
  try {
    const stamp = JSON.parse(await Deno.readTextFile(join(dir, STAMP_FILE)));
    return stamp.preset === preset && stamp.seed === 0 &&
      stamp.generatorVersion === GENERATOR_VERSION;
  } catch {
    return false;
  }
}

async function build(preset: string): Promise<string> {
  const dir = join(MODELS_DIR, preset);
  if (await isCurrent(dir, preset)) return dir;
  await Deno.mkdir(MODELS_DIR, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: MODELS_DIR, prefix: `.tmp-${preset}-` });
  try {
    await makeModel(preset, tmp, { seed: 0 });
    await Deno.chmod(tmp, 0o755); // makeTempDir gives 0700
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await Deno.rename(tmp, dir);
        return dir;
      } catch {
        // Someone else's copy is in place: keep it if current, else move it aside.
        if (await isCurrent(dir, preset)) return dir;
        const old = `${dir}.old-${Date.now()}-${Math.random().toString(36).slice(2)}`;
        await Deno.rename(dir, old).catch(() => {});
        await Deno.remove(old, { recursive: true }).catch(() => {});
      }
    }
    throw new Error(`ensureTestModel: cannot place ${dir}`);
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

/** Greedy sampling that ignores eos, for outputs that must compare exactly. */
export const GREEDY_PARAMS = { ...defaultSamplingParams(), temperature: 0, ignoreEos: true };

/** n greedy requests over three long shared prefixes (prefix-cache and batching tests). */
export function sharedPrefixWorkload(n: number, maxTokens: number): EngineRequest[] {
  const prefixes = [0, 1, 2].map((k) =>
    Array.from({ length: 80 }, (_, i) => 1000 + k * 977 + i * 31)
  );
  return Array.from({ length: n }, (_, i) => ({
    id: `q${i}`,
    promptIds: [...prefixes[i % 3].slice(0, 40 + ((i * 7) % 40)), 500 + i, 700 + (i % 13)],
    params: { ...GREEDY_PARAMS, maxTokens: maxTokens - (i % 3) },
  }));
}
