import assert from "node:assert/strict";
import { createRingBuffer, Ring } from "../src/ipc/ring.ts";

Deno.test("ring: messages come out in order, with wrap-around", () => {
  const ring = new Ring(createRingBuffer(256)); // 64 words
  let next = 0, expect = 0;
  for (let round = 0; round < 500; round++) {
    // Push messages of varying length until full, then drain some.
    for (;;) {
      const len = (next * 7) % 13;
      const msg = Int32Array.from({ length: len }, (_, i) => next * 100 + i);
      if (!ring.tryPush(msg)) break;
      next++;
    }
    const drain = 1 + (round % 4);
    for (let k = 0; k < drain; k++) {
      const m = ring.tryPop();
      if (!m) break;
      const len = (expect * 7) % 13;
      assert.deepEqual(Array.from(m), Array.from({ length: len }, (_, i) => expect * 100 + i));
      expect++;
    }
  }
  for (let m = ring.tryPop(); m; m = ring.tryPop()) expect++;
  assert.deepEqual(expect, next);
  assert(next > 1000);
});

Deno.test("ring: parts are read back as one message; too-large messages are refused", () => {
  const ring = new Ring(createRingBuffer(1024));
  ring.push(Int32Array.of(1, 2), Int32Array.of(3), new Int32Array(0), Int32Array.of(4));
  assert.deepEqual(Array.from(ring.pop(0)!), [1, 2, 3, 4]);
  assert.deepEqual(ring.pop(1), null);
  assert.throws(() => ring.tryPush(new Int32Array(ring.maxMessageWords + 1)), /exceeds the limit/);
  // The largest allowed message fits an empty ring wherever its indices stand.
  for (let shift = 0; shift < ring.capacity; shift += 37) {
    ring.tryPush(new Int32Array(shift % ring.maxMessageWords));
    ring.tryPop();
    assert(ring.tryPush(new Int32Array(ring.maxMessageWords).fill(shift)));
    assert.deepEqual(ring.tryPop()![ring.maxMessageWords - 1], shift);
  }
});

Deno.test("ring: a worker streams 5000 messages through a small ring (blocking both ways)", async () => {
  const toWorker = createRingBuffer(4096), fromWorker = createRingBuffer(4096);
  const code = `
    import { Ring } from ${JSON.stringify(new URL("../src/ipc/ring.ts", import.meta.url).href)};
    self.onmessage = (ev) => {
      const input = new Ring(ev.data.a), output = new Ring(ev.data.b);
      for (;;) {
        const m = input.pop();
        if (m === null) break;
        if (m.length === 1 && m[0] === -7) break;
        let s = 0;
        for (const x of m) s = (s + x) | 0;
        output.push(Int32Array.of(m.length, s));
      }
      self.postMessage("done");
    };`;
  const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
  const w = new Worker(url, { type: "module" });
  const done = new Promise((r) => (w.onmessage = r));
  w.postMessage({ a: toWorker, b: fromWorker });
  const input = new Ring(toWorker), output = new Ring(fromWorker);
  const N = 5000;
  const consumer = (async () => {
    for (let i = 0; i < N; i++) {
      const m = await output.popAsync(10000);
      if (!m) throw new Error("timed out");
      const len = i % 300;
      assert.deepEqual(m[0], len);
      assert.deepEqual(m[1], (len * (len - 1) / 2 + i * len) | 0);
    }
  })();
  for (let i = 0; i < N; i++) {
    const len = i % 300;
    await input.pushAsync(Int32Array.from({ length: len }, (_, k) => k + i));
  }
  await input.pushAsync(Int32Array.of(-7));
  await consumer;
  await done;
  w.terminate();
  URL.revokeObjectURL(url);
});

Deno.test("ring: close wakes a waiting consumer", async () => {
  const ring = new Ring(createRingBuffer(1024));
  const p = ring.popAsync();
  setTimeout(() => ring.close(), 10);
  assert.deepEqual(await p, null);
  assert.throws(() => ring.tryPush(Int32Array.of(1)), /closed/);
});
