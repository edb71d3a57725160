/**
 * Finds or builds the native libraries the server loads, without writing into the source
 * tree: next to the executable (a compiled binary ships them there), in $MINISGL_LIB_DIR,
 * in the source tree's build/ when `deno task build` made it, else built in the cache
 * folder. The choice goes to MINISGL_LIB_DIR so that the workers load the same files.
 */

import { dirname, join } from "node:path";
import { type BuildResult, ensureBuilt } from "../../cuda/build.ts";
import { SOURCE_BUILD_DIR } from "../../ffi/lib.ts";
import { cacheDir } from "../core/cache_dir.ts";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

const CPU_LIB = "libminisgl_cpu.so", CUDA_LIB = "libminisgl_cuda.so";

/** The folder the libraries are loaded from and whether it may be built into. */
export function nativeLibraryDir(): { dir: string; prebuilt: boolean } {
  const exeDir = dirname(Deno.execPath());
  if (exists(join(exeDir, CPU_LIB))) return { dir: exeDir, prebuilt: true };
  const own = Deno.env.get("MINISGL_LIB_DIR");
  if (own) return { dir: own, prebuilt: false };
  if (exists(join(SOURCE_BUILD_DIR, CPU_LIB))) return { dir: SOURCE_BUILD_DIR, prebuilt: false };
  return { dir: join(cacheDir(), "native"), prebuilt: false };
}

/** Makes the libraries available (building what is missing or stale unless they came with
 *  the executable) and points MINISGL_LIB_DIR at them. */
export async function prepareNativeLibrary(
  wantCuda: boolean,
  log: (line: string) => void,
): Promise<BuildResult> {
  const { dir, prebuilt } = nativeLibraryDir();
  Deno.env.set("MINISGL_LIB_DIR", dir);
  if (prebuilt) {
    const cuda = join(dir, CUDA_LIB);
    return { cpu: join(dir, CPU_LIB), cuda: wantCuda && exists(cuda) ? cuda : null };
  }
  if (!exists(join(dir, CPU_LIB))) {
    log(`building the native library in ${dir} (first run only; this takes a minute)`);
  }
  return await ensureBuilt({ cuda: wantCuda, dir });
}
