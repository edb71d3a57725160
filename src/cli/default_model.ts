/**
 * The model used when --model is not given: a tiny Qwen3 with random weights and the real
 * Qwen3 tokenizer, made once by src/model/make_model.ts into the cache folder
 * (src/core/cache_dir.ts: models/tiny-qwen3). It lets `deno task serve` work out of the
 * box; its output is random text.
 */

import { join } from "node:path";
import { GENERATOR_VERSION, makeModel, STAMP_FILE } from "../model/make_model.ts";
import { cacheDir } from "../core/cache_dir.ts";

/** The preset and the folder of the default model. */
export const DEFAULT_PRESET = "tiny-qwen3";
/** The folder of the default model (in the cache folder). */
export function defaultModelDir(): string {
  return join(cacheDir(), "models", DEFAULT_PRESET);
}

/** True when the folder holds a model made by the current generator (seed 0). */
async function isCurrent(dir: string): Promise<boolean> {
  try {
    const stamp = JSON.parse(await Deno.readTextFile(join(dir, STAMP_FILE)));
    return stamp.preset === DEFAULT_PRESET && stamp.seed === 0 &&
      stamp.generatorVersion === GENERATOR_VERSION;
  } catch {
    return false;
  }
}

/** Returns the default model folder, making it first if needed (atomically: it is built in
 *  a temporary folder and renamed into place, so tests running at once do not collide). */
export async function ensureDefaultModel(log: (line: string) => void): Promise<string> {
  const dir = defaultModelDir();
  if (await isCurrent(dir)) return dir;
  log(`making the default model ${DEFAULT_PRESET} (random weights) in ${dir}`);
  const parent = join(dir, "..");
  await Deno.mkdir(parent, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: parent, prefix: `.tmp-${DEFAULT_PRESET}-` });
  try {
    await makeModel(DEFAULT_PRESET, tmp, { seed: 0 });
    try {
      await Deno.rename(tmp, dir);
    } catch {
      if (!(await isCurrent(dir))) {
        // A stale copy is in the way: move it aside, then place ours.
        const old = `${dir}.old-${Date.now()}`;
        await Deno.rename(dir, old);
        await Deno.remove(old, { recursive: true }).catch(() => {});
        await Deno.rename(tmp, dir);
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return dir;
}
