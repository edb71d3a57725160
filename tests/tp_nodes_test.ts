/**
 * Tensor parallelism across hosts (--nnodes), rehearsed on one machine on the CPU backend:
 * two processes (--node-rank 0 and 1, --tp 2) meet at --dist-init-addr, node 0 serves
 * HTTP, node 1's rank gets the batches through its relay and all-reduces over TCP. Its
 * prompt logprobs and greedy text must equal a one-process --tp 2 run's exactly (the TCP
 * sum is the shared-memory sum, in rank order) and --tp 1's within fp32 tolerance.
 */
import assert from "node:assert/strict";
import { ensureTestModel, REPO_ROOT } from "./fixtures.ts";
import { runDeno, type ServerProcess, startServerProcess, tinyMainArgs } from "./server_harness.ts";
import { FlagError, parseFlags } from "../src/cli/flags.ts";
import { runRanks } from "../bench/tp_ranks.ts";
import { tcpUniqueId } from "../ffi/comm.ts";
import { NodeLink } from "../src/ipc/node_link.ts";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A node other than 0: main.ts with node flags; no HTTP, so no "listening on" to await. */
function startNode(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: REPO_ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const err = new Response(child.stderr).text();
  return {
    child,
    /** Exit code and stderr, or null if it has not exited within ms. */
    async exit(ms: number): Promise<{ code: number; err: string } | null> {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<null>((r) => (timer = setTimeout(() => r(null), ms)));
      const done = child.status.then(async (s) => ({ code: s.code, err: await err }));
      const out = await Promise.race([done, late]);
      clearTimeout(timer);
      return out;
    },
  };
}

/** SIGTERM, then SIGKILL if the process is still there after `ms` (a stuck rank blocks an
 *  orderly shutdown: the test must fail, not hang). */
async function stop(p: ServerProcess, ms = 30_000): Promise<Deno.CommandStatus> {
  const timer = setTimeout(() => {
    try {
      p.child.kill("SIGKILL");
    } catch { /* gone */ }
  }, ms);
  try {
    return await p.stop("SIGTERM");
  } finally {
    clearTimeout(timer);
  }
}

/** Node 0 (an HTTP server) and node 1 of a --tp 2 --nnodes 2 run on this machine. */
async function twoNodes(extra: string[] = [], node1Extra: string[] = []) {
  const addr = `127.0.0.1:${freePort()}`;
  const flags = (rank: number) => [
    "--tp",
    "2",
    "--nnodes",
    "2",
    "--node-rank",
    String(rank),
    "--dist-init-addr",
    addr,
    ...extra,
  ];
  const node1 = startNode(await tinyMainArgs([...flags(1), ...node1Extra]));
  let node0: ServerProcess;
  try {
    node0 = await startServerProcess(flags(0));
  } catch (e) {
    node1.child.kill("SIGKILL");
    await node1.child.status;
    throw e;
  }
  return { node0, node1 };
}

interface Completion {
  text: string;
  logprobs: { tokens: string[]; token_logprobs: (number | null)[] };
}

const PROMPTS = ["The capital of France is", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15"];

/** Greedy completions with the prompt's logprobs (echo), each bounded in time so that a
 *  stuck relay fails the test instead of hanging it. */
async function completions(url: string): Promise<Completion[]> {
  const out: Completion[] = [];
  for (const prompt of PROMPTS) {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt, max_tokens: 12, temperature: 0, echo: true, logprobs: 2 }),
      signal: AbortSignal.timeout(30_000),
    });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    out.push(body.choices[0]);
  }
  return out;
}

Deno.test("--nnodes 2 (two processes, TCP): logprobs and text of one-process --tp 2, near --tp 1", async () => {
  const { node0, node1 } = await twoNodes();
  let two: Completion[];
  try {
    two = await completions(node0.url);
  } finally {
    await stop(node0);
  }
  // Node 0's orderly shutdown reaches node 1 through its relay: it exits 0.
  const end = await node1.exit(20_000);
  assert.equal(end?.code, 0, end?.err ?? "node 1 still running");

  const oneProcess = await startServerProcess(["--tp", "2"]);
  const tp2 = await completions(oneProcess.url).finally(() => stop(oneProcess));
  assert.deepEqual(two, tp2, "two processes = one process, bit for bit");

  const single = await startServerProcess([]);
  const tp1 = await completions(single.url).finally(() => stop(single));
  for (const [i, c] of two.entries()) {
    assert.equal(c.text, tp1[i].text, `prompt ${i}: greedy text of --tp 1`);
    c.logprobs.token_logprobs.forEach((lp, j) => {
      const ref = tp1[i].logprobs.token_logprobs[j];
      if (lp === null || ref === null) assert.equal(lp, ref);
      else assert.ok(Math.abs(lp - ref) < 1e-3, `prompt ${i} token ${j}: ${lp} vs ${ref}`);
    });
  }
});

Deno.test("--nnodes 2: node 1 exits when node 0 goes away", async () => {
  const { node0, node1 } = await twoNodes();
  await node0.stop("SIGKILL");
  const end = await node1.exit(20_000);
  if (end === null) node1.child.kill("SIGKILL");
  assert.ok(end !== null, "node 1 still runs 20 s after node 0 died");
  assert.equal(end.code, 1);
  assert.match(end.err, /error: node 0 went away; node 1 of 2 exits/);
});

Deno.test("--nnodes 2: node 1 exits when node 0 goes away while its ranks join", async () => {
  // A node 0 that welcomes node 1 with a communicator whose hub never opens, then leaves:
  // node 1's rank keeps trying to reach the hub; node 1 itself must not wait for it.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const addr = `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
  const node1 = startNode(
    await tinyMainArgs([
      "--tp",
      "2",
      "--nnodes",
      "2",
      "--node-rank",
      "1",
      "--dist-init-addr",
      addr,
    ]),
  );
  const link = new NodeLink(await listener.accept());
  listener.close();
  const hello = await link.next();
  assert.equal(hello?.kind === "json" && (hello.value as { type: string }).type, "hello");
  await link.sendJson({
    type: "welcome",
    commId: Array.from(tcpUniqueId("127.0.0.1", freePort())),
  });
  await new Promise((r) => setTimeout(r, 1000)); // its rank is now joining
  link.close();
  const end = await node1.exit(20_000);
  if (end === null) node1.child.kill("SIGKILL");
  assert.ok(end !== null, "node 1 still runs 20 s after node 0 left");
  assert.equal(end.code, 1);
  assert.match(end.err, /error: node 0 went away while node 1 of 2 started/);
});

Deno.test("--nnodes 2: a node whose settings differ is refused, both exit 1 with one line", async () => {
  const addr = `127.0.0.1:${freePort()}`;
  const flags = (rank: number, page: string) =>
    tinyMainArgs([
      ...["--tp", "2", "--nnodes", "2", "--node-rank", String(rank), "--dist-init-addr", addr],
      ...["--page-size", page, "--port", "0"],
    ]);
  const node0 = startNode(await flags(0, "1"));
  const node1 = startNode(await flags(1, "4"));
  const [e0, e1] = await Promise.all([node0.exit(60_000), node1.exit(60_000)]);
  for (const [k, e] of [e0, e1].entries()) if (e === null) [node0, node1][k].child.kill("SIGKILL");
  for (const [k, e] of [e0, e1].entries()) {
    assert.ok(e !== null, `node ${k} still running`);
    assert.equal(e.code, 1, e.err);
    const lines = e.err.split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(lines.length, 1, e.err);
    assert.match(lines[0], /node 1 does not match node 0: pageSize 4 \(node 0: 1\)/);
  }
});

Deno.test("TCP communicator: 2 and 4 ranks give the shared-memory communicator's bits", async () => {
  const dir = await ensureTestModel("tiny-llama");
  const job = {
    dir,
    prompts: [[5, 17, 99, 3, 250, 41, 8], [7, 7, 7]],
    steps: 5,
    dummyWeightSeed: null,
    backend: "cpu" as const,
    forced: null,
  };
  // Index of the first element whose bits differ, -1 when none (assert's diff of two large
  // arrays would take minutes to print).
  const firstDiff = (a: Float32Array, b: Float32Array) => {
    if (a.length !== b.length) return 0;
    const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
    const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
    return x.findIndex((v, i) => v !== y[i]);
  };
  // 4 ranks: three additions in a row, whose order changes the bits (KV heads replicated).
  for (const size of [2, 4]) {
    const shm = await runRanks(job, size);
    const tcp = await runRanks(job, size, tcpUniqueId("127.0.0.1", freePort()));
    for (const [r, out] of tcp.entries()) {
      const what = `${size} ranks, rank ${r}`;
      out.logits.forEach((l, i) =>
        assert.equal(firstDiff(l, shm[r].logits[i]), -1, `${what} prompt ${i}`)
      );
      assert.equal(firstDiff(out.decodeLogits, shm[r].decodeLogits), -1, `${what} decode`);
      assert.deepEqual([out.tokens, out.continuation], [shm[r].tokens, shm[r].continuation]);
    }
  }
});

Deno.test("flags: --nnodes, --node-rank, --dist-init-addr are checked at parse time", () => {
  const err = (argv: string[]) => {
    try {
      parseFlags(argv);
    } catch (e) {
      assert.ok(e instanceof FlagError);
      return e.message;
    }
    return "accepted";
  };
  const addr = ["--dist-init-addr", "10.0.0.1:5000"];
  assert.match(
    err(["--tp", "3", "--nnodes", "2", ...addr]),
    /--tp 3 does not divide over --nnodes 2/,
  );
  assert.match(err(["--tp", "2", "--nnodes", "2"]), /--nnodes 2 needs --dist-init-addr HOST:PORT/);
  assert.match(
    err(["--tp", "2", "--nnodes", "2", "--node-rank", "2", ...addr]),
    /--node-rank 2 must be below --nnodes 2/,
  );
  assert.match(
    err(["--tp", "2", "--nnodes", "2", "--dist-init-addr", "host"]),
    /must be HOST:PORT, got 'host'/,
  );
  assert.match(
    err(["--tp", "2", "--nnodes", "2", "--dist-init-addr", "h:70000"]),
    /must be HOST:PORT/,
  );
  const ok = parseFlags([
    "--tp",
    "4",
    "--nnodes",
    "2",
    "--node-rank",
    "1",
    "--dist-init-addr",
    "[::1]:29500",
  ]);
  assert.deepEqual([ok.nnodes, ok.nodeRank, ok.distInitAddr], [2, 1, "[::1]:29500"]);
  assert.equal(parseFlags([]).distInitAddr, null);
});

Deno.test("cli: --tp 3 --nnodes 2 exits 1 with one line", async () => {
  const out = await runDeno(
    await tinyMainArgs(["--tp", "3", "--nnodes", "2", "--dist-init-addr", "127.0.0.1:1"]),
  );
  const err = out.stderr;
  assert.equal(out.code, 1, err);
  assert.equal(
    err.trim(),
    "error: --tp 3 does not divide over --nnodes 2 (tp / nnodes ranks a node)",
  );
});
