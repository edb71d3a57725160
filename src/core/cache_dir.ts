/**
 * Where minisgl writes what it makes for itself (the built native library, the default
 * model): never inside the source tree, which is read-only in a compiled binary.
 * $MINISGL_CACHE_DIR, else $XDG_CACHE_HOME/minisgl, else ~/.cache/minisgl.
 */

import { join } from "node:path";

/** The cache folder (not created here). */
export function cacheDir(): string {
  const own = Deno.env.get("MINISGL_CACHE_DIR");
  if (own) return own;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "minisgl");
  const home = Deno.env.get("HOME");
  if (!home) {
    throw new Error("cannot choose a cache folder: set MINISGL_CACHE_DIR (or HOME)");
  }
  return join(home, ".cache", "minisgl");
}
