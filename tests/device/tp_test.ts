/**
 * Tensor-parallel collectives on GPUs (run by scripts/device_tp.sh on a two-GPU machine):
 * - the shard ops (fill_random, embedding_range) give the CPU twin's bits (one GPU);
 * - with two GPUs, ranks as Workers: NCCL all-reduce, the one-shot peer all-reduce (also
 *   captured in a CUDA graph with NCCL and replayed 3 times) and the column all-gather equal
 *   the sums and layout computed here. Sums of exact f32 integers-and-halves are exact.
 * Ignored without CUDA; the two-GPU test is ignored with fewer than two GPUs.
 */
import assert from "node:assert/strict";
import { cudaDeviceCount, makeUniqueId } from "../../ffi/comm.ts";
import type { NativeLib } from "../../ffi/lib.ts";
import { BF16, DevBuf as Buf, F32, loadPair, makeRng, ptr } from "./harness.ts";
import { inputOf } from "./tp_rank.ts";

const libs = loadPair();
const cpu = libs?.cpu as NativeLib, gpu = libs?.gpu as NativeLib;

Deno.test({
  name: "fill_random and embedding_range: GPU bits equal the CPU twin's",
  ignore: libs === null,
  fn() {
    for (const dtype of [F32, BF16]) {
      const n = 100_003, esz = dtype === F32 ? 4 : 2;
      const want = new Uint8Array(n * esz);
      cpu.check(cpu.sym.msg_fill_random(ptr(want), BigInt(n), dtype, 99n, 0.25, 0.5, null), "c");
      const b = new Buf(gpu, n * esz);
      gpu.check(gpu.sym.msg_fill_random(b.p, BigInt(n), dtype, 99n, 0.25, 0.5, null), "g");
      assert.deepEqual(b.read(new Uint8Array(n * esz)), want, `dtype ${dtype}`);
      b.free();
    }
    const { randn } = makeRng(5);
    const V = 300, H = 64, start = 100, rowsHere = 150, n = 40;
    const table = randn(rowsHere * H);
    const ids = Int32Array.from({ length: n }, (_, i) => (i * 37) % V);
    const want = new Float32Array(n * H);
    cpu.check(
      cpu.sym.msg_embedding_range(
        ptr(want),
        ptr(table),
        ptr(ids),
        n,
        H,
        start,
        rowsHere,
        F32,
        F32,
        null,
      ),
      "cpu embedding_range",
    );
    const [t, i, o] = [Buf.of(gpu, table), Buf.of(gpu, ids), new Buf(gpu, n * H * 4)];
    gpu.check(
      gpu.sym.msg_embedding_range(o.p, t.p, i.p, n, H, start, rowsHere, F32, F32, null),
      "gpu embedding_range",
    );
    assert.deepEqual(o.read(new Float32Array(n * H)), want);
    for (const x of [t, i, o]) x.free();
  },
});

Deno.test({
  name: "two GPUs: NCCL and one-shot peer all-reduce (direct and in a graph), column all-gather",
  ignore: libs === null || cudaDeviceCount() < 2,
  async fn() {
    const size = 2, n = 8192 * 4 + 3, rows = 5, cols = 1001;
    const id = makeUniqueId("cuda");
    const workers = Array.from(
      { length: size },
      () => new Worker(new URL("./tp_rank.ts", import.meta.url), { type: "module" }),
    );
    const infos: unknown[] = [];
    const results = await Promise.all(
      workers.map((w, rank) =>
        new Promise<Record<string, Float32Array | Float32Array[]>>((resolve, reject) => {
          w.onerror = (e) => (e.preventDefault(), reject(new Error(e.message)));
          w.onmessage = (ev) => {
            if (ev.data.type === "peer") {
              infos[rank] = ev.data.info;
              if (infos.filter((x) => x).length === size) {
                for (const x of workers) x.postMessage({ type: "peers", infos });
              }
            } else resolve(ev.data);
          };
          w.postMessage({ type: "start", rank, size, id, n, rows, cols });
        })
      ),
    );
    for (const w of workers) w.terminate();
    const sum = Float32Array.from({ length: n }, (_, i) => inputOf(0, i) + inputOf(1, i));
    const twice = sum.map((v) => v * 2); // peer then NCCL inside the graph
    for (const [rank, r] of results.entries()) {
      assert.deepEqual(r.nccl, sum, `rank ${rank} NCCL`);
      assert.deepEqual(r.oneShot, sum, `rank ${rank} one-shot`);
      for (const g of r.graphRuns as Float32Array[]) {
        assert.deepEqual(g, twice, `rank ${rank} graph`);
      }
      const W = size * cols - 1;
      const want = Float32Array.from({ length: rows * W }, (_, k) => {
        const row = Math.floor(k / W), col = k % W;
        return inputOf(Math.floor(col / cols), row * cols + (col % cols));
      });
      assert.deepEqual(r.gathered, want, `rank ${rank} all-gather`);
    }
  },
});
