/**
 * The --shell chat REPL driven through stdin: a second turn sees the first (its prompt
 * holds the whole history), /reset forgets it, /exit quits with status 0.
 */

import assert from "node:assert/strict";
import { REPO_ROOT } from "./fixtures.ts";
import { tinyMainArgs } from "./server_harness.ts";

/** Per-turn stats the shell prints after each answer. */
const STATS = /\[(\d+) prompt tokens \((\d+) cached\), (\d+) tokens in [\d.]+ s, finish: (\w+)\]/g;

Deno.test("shell: history across turns, /reset, /exit", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: await tinyMainArgs(["--shell", "--temperature", "0", "--max-tokens", "6"]),
    cwd: REPO_ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(
    "Hello there\nWhat did I just say?\n/reset\nHello there\n/bogus\n/exit\n",
  ));
  await writer.close();
  const out = await child.output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  // Loading progress goes to stderr while the engine starts.
  assert.match(stderr, /weights/);
  const turns = [...stdout.matchAll(STATS)].map((m) => ({
    prompt: Number(m[1]),
    completion: Number(m[3]),
    at: m.index!,
    end: m.index! + m[0].length,
  }));
  assert.equal(turns.length, 3, stdout);
  // Turn 2's prompt holds turn 1's question and answer plus the new question.
  assert.ok(turns[1].prompt > turns[0].prompt + turns[0].completion, stdout);
  // After /reset the same question is the same prompt again, and greedy gives the same answer.
  assert.equal(turns[2].prompt, turns[0].prompt);
  const answer = (i: number) => {
    const start = stdout.lastIndexOf("> ", turns[i].at) + 2;
    return stdout.slice(start, turns[i].at);
  };
  assert.equal(answer(2), answer(0));
  assert.match(stdout, /\(history cleared\)/);
  assert.match(stdout, /unknown command \/bogus/);
});

Deno.test("shell: Ctrl-C stops the answer, not the shell", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: await tinyMainArgs(["--shell"]),
    cwd: REPO_ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const writer = child.stdin.getWriter();
  const enc = new TextEncoder();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const waitFor = async (re: RegExp) => {
    while (!re.test(out)) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`shell ended early: ${out}`);
      out += value;
    }
  };
  await waitFor(/> $/);
  const promptEnd = out.length;
  await writer.write(enc.encode("Tell me a long story\n"));
  // Wait until the answer is streaming (tokens printed as they come), then press Ctrl-C.
  while (out.length < promptEnd + 10) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`shell ended early: ${out}`);
    out += value;
  }
  assert.doesNotMatch(out.slice(promptEnd), /finish:/, "the answer should still be running");
  child.kill("SIGINT");
  await waitFor(/\[stopped\]\n> $|finish: \w+\]\n> $/);
  assert.match(out, /\[stopped\]/);
  await writer.write(enc.encode("/exit\n"));
  await writer.close();
  while (!(await reader.read()).done) { /* drain */ }
  assert.equal((await child.status).code, 0);
});
