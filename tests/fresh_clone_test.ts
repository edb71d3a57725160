/**
 * What `deno compile` relies on: serving never writes into the source tree. A fresh clone
 * served with an empty HOME (default model, native library built on first use) leaves
 * `git status --porcelain --ignored` empty; the library and the model land in
 * ~/.cache/minisgl. Also the order of the cache folder's environment variables.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { REPO_ROOT } from "./fixtures.ts";
import { cacheDir } from "../src/core/cache_dir.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

async function output(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")}: ${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

Deno.test("cache folder: MINISGL_CACHE_DIR, then XDG_CACHE_HOME, then HOME", () => {
  const saved = ["MINISGL_CACHE_DIR", "XDG_CACHE_HOME", "HOME"].map((k) => [k, Deno.env.get(k)]);
  try {
    Deno.env.delete("MINISGL_CACHE_DIR");
    Deno.env.delete("XDG_CACHE_HOME");
    Deno.env.set("HOME", "/h");
    assert.equal(cacheDir(), "/h/.cache/minisgl");
    Deno.env.set("XDG_CACHE_HOME", "/x");
    assert.equal(cacheDir(), "/x/minisgl");
    Deno.env.set("MINISGL_CACHE_DIR", "/m");
    assert.equal(cacheDir(), "/m");
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k!) : Deno.env.set(k!, v);
  }
});

Deno.test("fresh clone, empty HOME: serving writes nothing inside the clone", opts, async () => {
  const tmp = await Deno.makeTempDir({ prefix: "minisgl-clone-test-" });
  try {
    const clone = join(tmp, "clone"), home = join(tmp, "home");
    await Deno.mkdir(home);
    await output("git", ["clone", "--quiet", "--no-hardlinks", REPO_ROOT, clone]);
    assert.equal(await output("git", ["status", "--porcelain", "--ignored"], clone), "");
    // The npm packages come from this machine's Deno cache (no network here).
    const denoDir = JSON.parse(await output(Deno.execPath(), ["info", "--json"])).denoDir;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts", "--device", "cpu", "--cpu-threads", "1", "--port", "0"],
      cwd: clone,
      clearEnv: true,
      env: { HOME: home, DENO_DIR: denoDir, PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let err = "";
    const errDone = (async () => {
      for await (const c of child.stderr.pipeThrough(new TextDecoderStream())) err += c;
    })();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    try {
      while (!/listening on (\S+)/.test(out)) {
        const { done, value } = await reader.read();
        if (done) throw new Error(`server exited: ${err}`);
        out += value;
      }
      const url = out.match(/listening on (\S+)/)![1];
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "Hello", max_tokens: 4 }),
      });
      assert.equal(res.status, 200, await res.clone().text());
      await res.body?.cancel();
    } finally {
      child.kill("SIGTERM");
      await child.status;
      await reader.cancel().catch(() => {});
      await errDone;
    }
    assert.equal(
      await output("git", ["status", "--porcelain", "--ignored"], clone),
      "",
      "nothing written inside the clone",
    );
    const cache = join(home, ".cache", "minisgl");
    assert.ok((await Deno.stat(join(cache, "native", "libminisgl_cpu.so"))).isFile);
    assert.ok((await Deno.stat(join(cache, "models", "tiny-qwen3", "config.json"))).isFile);
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
});
