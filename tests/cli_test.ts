/**
 * main.ts as a subprocess: bad flags and broken model folders end with exit 1 and one line
 * naming the flag or the file, never a stack trace; --help exits 0.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { ensureTestModel, REPO_ROOT } from "./fixtures.ts";
import { runDeno } from "./server_harness.ts";

/** Runs main.ts with args; returns exit code and output. */
function runMain(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runDeno(["run", "-A", "main.ts", ...args]);
}

/** Asserts exit 1 with exactly one `error: ...` line matching `pattern` and no stack. */
function assertOneLineError(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  const errors = r.stderr.split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(errors.length, 1, r.stderr);
  assert.match(errors[0], pattern);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
}

/** A copy of the tiny model that a test may break. */
async function modelCopy(): Promise<string> {
  const src = await ensureTestModel("tiny-qwen3");
  const dir = await Deno.makeTempDir({ prefix: "minisgl-cli-test-" });
  for await (const e of Deno.readDir(src)) {
    if (e.isFile) await Deno.copyFile(join(src, e.name), join(dir, e.name));
  }
  return dir;
}

Deno.test("cli: flags", async () => {
  const help = await runMain(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--model DIR/);
  assert.match(help.stdout, /--max-queued-requests/);
  assertOneLineError(await runMain(["--bogus"]), /^error: unknown flag --bogus \(see --help\)$/);
  assertOneLineError(await runMain(["--port", "abc"]), /--port expects an integer/);
  assertOneLineError(await runMain(["--port", "70000"]), /--port must be between/);
  assertOneLineError(await runMain(["--device", "tpu"]), /--device must be one of cpu, cuda, auto/);
  assertOneLineError(await runMain(["--page-size", "3"]), /--page-size must be a power of two/);
  assertOneLineError(await runMain(["--mem-fraction", "0"]), /--mem-fraction/);
  assertOneLineError(await runMain(["--model"]), /--model needs a value/);
  assertOneLineError(await runMain(["stray"]), /unexpected argument stray/);
});

Deno.test("cli: broken model folders", async () => {
  const missing = join(REPO_ROOT, ".cache", "no-such-model-folder");
  assertOneLineError(
    await runMain(["--model", missing, "--device", "cpu"]),
    /no-such-model-folder/,
  );

  const arch = await modelCopy();
  const cfg = JSON.parse(await Deno.readTextFile(join(arch, "config.json")));
  await Deno.writeTextFile(
    join(arch, "config.json"),
    JSON.stringify({ ...cfg, architectures: ["FooForCausalLM"] }),
  );
  assertOneLineError(await runMain(["--model", arch, "--device", "cpu"]), /FooForCausalLM/);

  const noWeights = await modelCopy();
  await Deno.remove(join(noWeights, "model.safetensors"));
  assertOneLineError(await runMain(["--model", noWeights, "--device", "cpu"]), /safetensors/);

  const corrupt = await modelCopy();
  const file = join(corrupt, "model.safetensors");
  const bytes = await Deno.readFile(file);
  await Deno.writeFile(file, bytes.subarray(0, Math.floor(bytes.length / 2)));
  assertOneLineError(await runMain(["--model", corrupt, "--device", "cpu"]), /safetensors/);

  const garbage = await modelCopy();
  await Deno.writeFile(join(garbage, "model.safetensors"), new Uint8Array(64).fill(0xff));
  assertOneLineError(await runMain(["--model", garbage, "--device", "cpu"]), /safetensors/);

  const shape = await modelCopy();
  const c2 = JSON.parse(await Deno.readTextFile(join(shape, "config.json")));
  await Deno.writeTextFile(
    join(shape, "config.json"),
    JSON.stringify({ ...c2, intermediate_size: c2.intermediate_size * 2 }),
  );
  assertOneLineError(await runMain(["--model", shape, "--device", "cpu"]), /shape|mlp/i);

  const noTokenizer = await modelCopy();
  await Deno.remove(join(noTokenizer, "tokenizer.json"));
  assertOneLineError(await runMain(["--model", noTokenizer, "--device", "cpu"]), /tokenizer\.json/);

  for (const d of [arch, noWeights, corrupt, garbage, shape, noTokenizer]) {
    await Deno.remove(d, { recursive: true });
  }
});
