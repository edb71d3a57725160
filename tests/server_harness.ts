/**
 * Starts a real minisgl server process (`deno run -A main.ts ... --port 0`) for the
 * integration tests and reads the bound port from its "listening on" line.
 */

import { ensureTestModel, REPO_ROOT } from "./fixtures.ts";

/** A running server subprocess. */
export interface ServerProcess {
  url: string;
  child: Deno.ChildProcess;
  /** Everything the process wrote to stderr so far. */
  stderr(): string;
  /** Sends a signal and waits for the exit status. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/** Runs `deno <args>` in the repository root to the end; its exit code and output. */
export async function runDeno(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: REPO_ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** `deno` arguments that run main.ts on the tiny Qwen3 (CPU backend, one thread), or on
 *  another model folder. */
export async function tinyMainArgs(flags: string[], modelDir?: string): Promise<string[]> {
  const model = modelDir ?? await ensureTestModel("tiny-qwen3");
  return [
    "run",
    "-A",
    "main.ts",
    "--model",
    model,
    "--device",
    "cpu",
    "--cpu-threads",
    "1",
    ...flags,
  ];
}

/** How startServerProcess runs the server. */
export interface ServerProcessOptions {
  /** Model folder (default: the tiny Qwen3). */
  modelDir?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Runs the command through `sh -c 'ulimit -n N; exec ...'` (a low fd limit). */
  fdLimit?: number;
}

/** Starts the server on the tiny Qwen3 (CPU backend) with extra flags. */
export async function startServerProcess(
  extra: string[] = [],
  options: ServerProcessOptions = {},
): Promise<ServerProcess> {
  const args = await tinyMainArgs(["--port", "0", ...extra], options.modelDir);
  const quoted = [Deno.execPath(), ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`);
  const child = new Deno.Command(options.fdLimit ? "sh" : Deno.execPath(), {
    args: options.fdLimit
      ? ["-c", `ulimit -n ${options.fdLimit} && exec ${quoted.join(" ")}`]
      : args,
    env: options.env,
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let err = "";
  const errDone = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) err += chunk;
  })();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const deadline = Date.now() + 60_000;
  while (!/listening on (\S+)/.test(out)) {
    if (Date.now() > deadline) throw new Error(`server did not start: ${err}`);
    const { done, value } = await reader.read();
    if (done) {
      await errDone;
      throw new Error(`server exited before listening: ${err}`);
    }
    out += value;
  }
  const url = out.match(/listening on (\S+)/)![1];
  // Keep draining stdout so the child never blocks on a full pipe.
  const outDone = (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  let status: Promise<Deno.CommandStatus> | null = null;
  return {
    url,
    child,
    stderr: () => err,
    stop(signal: Deno.Signal = "SIGTERM") {
      if (status === null) {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
        status = Promise.all([child.status, errDone, outDone]).then(([s]) => s);
      }
      return status;
    },
  };
}

/** A copy of the tiny Qwen3 with config.json fields replaced (e.g. a longer context);
 *  the caller removes it. */
export async function tinyModelWith(config: Record<string, unknown>): Promise<string> {
  const src = await ensureTestModel("tiny-qwen3");
  const dir = await Deno.makeTempDir({ prefix: "minisgl-model-" });
  for await (const e of Deno.readDir(src)) {
    if (e.isFile) await Deno.copyFile(`${src}/${e.name}`, `${dir}/${e.name}`);
  }
  const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...cfg, ...config }));
  return dir;
}

/** Reads one gauge or counter from /metrics. */
export async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} (\\S+)$`, "m"));
  if (!m) throw new Error(`metric ${name} not found`);
  return Number(m[1]);
}

/** POSTs JSON (or raw bytes) and returns status and parsed body. */
export async function post(
  url: string,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const raw = body instanceof Uint8Array || typeof body === "string" ? body : JSON.stringify(body);
  const res = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: raw as BodyInit,
  });
  const text = await res.text();
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text);
  } catch {
    json = { raw: text };
  }
  return { status: res.status, json };
}
