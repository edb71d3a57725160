/**
 * SIGTERM: the server stops accepting, lets streams finish within the grace period, then
 * ends the rest and exits 0, even when a client stopped reading its stream.
 */

import assert from "node:assert/strict";
import { startServerProcess } from "./server_harness.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test(
  "shutdown: SIGTERM within the grace period with a client that stopped reading",
  opts,
  async () => {
    const server = await startServerProcess(["--shutdown-grace", "2"]);
    const { port } = new URL(server.url);
    // A long stream whose client sends the request and never reads a byte (n choices with
    // logprobs: a few hundred KB a second pile up in the socket buffers).
    const stuck = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
    const body = JSON.stringify({
      prompt: "a very long story",
      max_tokens: 4000,
      ignore_eos: true,
      stream: true,
    });
    await stuck.write(
      new TextEncoder().encode(
        `POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n` +
          `content-length: ${body.length}\r\n\r\n${body}`,
      ),
    );
    // A short stream that fits in the grace period, read to its end.
    const short = fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "hi", max_tokens: 24, ignore_eos: true, stream: true }),
    });
    await new Promise((r) => setTimeout(r, 1_000));
    const t0 = performance.now();
    server.child.kill("SIGTERM");
    const shortText = await (await short).text();
    assert.match(shortText, /data: \[DONE\]\n\n$/);
    assert.doesNotMatch(shortText, /"error"/);
    const status = await Promise.race([
      server.child.status,
      new Promise<null>((r) => setTimeout(() => r(null), 20_000)),
    ]);
    const seconds = (performance.now() - t0) / 1000;
    stuck.close();
    if (status === null) server.child.kill("SIGKILL");
    assert.ok(status !== null, "still running 20 s after SIGTERM");
    assert.equal(status.code, 0, server.stderr());
    assert.ok(seconds >= 1.5 && seconds < 10, `exited ${seconds.toFixed(1)} s after SIGTERM`);
    await server.stop();
    assert.match(server.stderr(), /shutting down/);
  },
);
