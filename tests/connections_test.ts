/**
 * Connection hygiene of the real server process: half-sent headers and idle keep-alive
 * connections are closed, connections beyond the cap get a 503, and running out of file
 * descriptors is logged and survived (a low `ulimit -n`).
 */

import assert from "node:assert/strict";
import { post, startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };
const encoder = new TextEncoder();

/** Milliseconds until the server closes `conn` (reads and drops what it sends). */
async function closedAfter(conn: Deno.Conn, limitMs: number): Promise<number> {
  const t0 = performance.now();
  const buf = new Uint8Array(4096);
  const timer = setTimeout(() => conn.close(), limitMs);
  try {
    while ((await conn.read(buf)) !== null) { /* drain */ }
  } catch { /* closed by the timer */ }
  clearTimeout(timer);
  return performance.now() - t0;
}

/** Opens up to `n` raw connections (stops at the first refusal). */
async function openMany(port: number, n: number): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  for (let i = 0; i < n; i++) {
    try {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    } catch {
      break;
    }
  }
  return conns;
}

async function healthy(url: string): Promise<void> {
  const r = await fetch(`${url}/health`);
  assert.equal(r.status, 200, await r.text());
  const c = await post(url, "/v1/completions", { prompt: "hello", max_tokens: 3 });
  assert.equal(c.status, 200, JSON.stringify(c.json));
}

Deno.test("connections: header and keep-alive timeouts", opts, async () => {
  const server = await startServerProcess(["--header-timeout", "1", "--keep-alive-timeout", "2"]);
  const port = Number(new URL(server.url).port);
  try {
    const half = await Deno.connect({ hostname: "127.0.0.1", port });
    await half.write(encoder.encode("GET /health HTTP/1.1\r\nHost: x\r\n"));
    const silent = await Deno.connect({ hostname: "127.0.0.1", port });
    const idle = await Deno.connect({ hostname: "127.0.0.1", port });
    await idle.write(encoder.encode("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
    const [h, s, i] = await Promise.all([
      closedAfter(half, 20_000),
      closedAfter(silent, 20_000),
      closedAfter(idle, 20_000),
    ]);
    assert.ok(h > 800 && h < 6_000, `half-sent headers closed after ${h} ms`);
    assert.ok(s > 800 && s < 6_000, `silent connection closed after ${s} ms`);
    assert.ok(i > 1_800 && i < 8_000, `idle keep-alive closed after ${i} ms`);
    await healthy(server.url);
  } finally {
    const status = await server.stop();
    assert.equal(status.code, 0, server.stderr());
  }
});

Deno.test("connections: beyond the cap -> 503, the server goes on", opts, async () => {
  const server = await startServerProcess([], { fdLimit: 160 });
  const port = Number(new URL(server.url).port);
  try {
    const cap = Number(server.stderr().match(/accepting up to (\d+) connections/)![1]);
    assert.ok(cap >= 4 && cap < 160 / 3, `cap ${cap}`);
    const conns = await openMany(port, cap + 20);
    const extra = conns[conns.length - 1];
    const answer = new Uint8Array(1024);
    const n = await extra.read(answer);
    assert.ok(n !== null, "no answer beyond the cap");
    assert.match(new TextDecoder().decode(answer.subarray(0, n)), /^HTTP\/1.1 503.*too_many_conn/s);
    for (const c of conns) c.close();
    await new Promise((r) => setTimeout(r, 500));
    await healthy(server.url);
  } finally {
    const status = await server.stop();
    assert.equal(status.code, 0, server.stderr());
  }
});

Deno.test("connections: out of file descriptors -> logged and survived", opts, async () => {
  // A cap above what the descriptors allow: accept itself fails (EMFILE).
  const server = await startServerProcess(["--max-connections", "5000"], { fdLimit: 160 });
  const port = Number(new URL(server.url).port);
  try {
    const conns = await openMany(port, 400);
    await new Promise((r) => setTimeout(r, 1_000));
    assert.match(server.stderr(), /warning: .*Too many open files/);
    for (const c of conns) c.close();
    await new Promise((r) => setTimeout(r, 1_000));
    await healthy(server.url);
  } finally {
    const status = await server.stop();
    assert.equal(status.code, 0, server.stderr());
  }
});
