/**
 * Starts `main.ts` (the server) as a child process on a free port for the serving and
 * ablation benchmarks, and stops it with SIGTERM (the server drains in-flight requests).
 */

/** A server child process and the base URL it listens on. */
export interface ServeHandle {
  url: string;
  stop(): Promise<void>;
}

/** Runs `deno run -A main.ts FLAGS --port 0` and waits (up to `timeoutMs`) for its
 *  "listening on URL" line; its log goes to this process's stderr. */
export async function startServer(flags: string[], timeoutMs = 300_000): Promise<ServeHandle> {
  const main = new URL("../main.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, ...flags, "--port", "0"],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  try {
    while (!/listening on (\S+)/.test(out)) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`server exited before listening (flags: ${flags.join(" ")})`);
      out += value;
    }
  } finally {
    clearTimeout(timer);
  }
  const url = out.match(/listening on (\S+)/)![1];
  // Keep draining stdout so that the child never blocks on a full pipe.
  const drained = (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return {
    url,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await Promise.all([child.status, drained]);
    },
  };
}
