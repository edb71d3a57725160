/**
 * CUDA kernels against the CPU twin: every op of cuda/include/minisgl.h runs on random
 * inputs of several shapes in both build/libminisgl_cpu.so (host pointers) and
 * build/libminisgl_cuda.so (device pointers), and the outputs are compared: bf16 outputs by
 * relative L2 error, integer ops and greedy sampling exactly. GPU outputs are poisoned
 * first (NaN / -777) so an element that was never written fails the test. Timings (events,
 * graph replays) of the decode-time GEMM and attention are printed against the measured
 * device-to-device copy bandwidth.
 *
 * Skipped unless the CUDA library loads and sees a device. MINISGL_KERNELS_SELF=1 runs the
 * CPU library on both sides (checks this harness on a machine without a GPU).
 */
import assert from "node:assert/strict";
import type { NativeLib } from "../../ffi/lib.ts";
import {
  type Arr,
  BF16,
  DevBuf as Dev,
  F16,
  F32,
  FP8_E4M3,
  from16,
  fromBf16,
  loadPair,
  makeRng,
  ptr,
  samplingParams,
  to16,
  toBf16,
  toE4m3,
} from "./harness.ts";

const libs = loadPair();
/** True when a CUDA device (or self mode) is there to test. */
export const cudaAvailable = libs !== null;
const cpu = libs?.cpu as NativeLib;
const gpu = libs?.gpu as NativeLib;
const isCuda = libs !== null && gpu.sym.msg_backend() === 1;
const { rand, randn, randint } = makeRng(12345);
/** Random bf16 values (as raw bits). */
const rbf = (n: number, scale = 1) => toBf16(randn(n, scale));

/** Runs `fn` on both libraries with the given inputs; returns both copies of each output. */
function both(
  inputs: Record<string, Arr>,
  outputs: Record<string, Arr>,
  fn: (lib: NativeLib, b: Record<string, Deno.PointerValue>) => number,
  what: string,
): Record<string, [Arr, Arr]> {
  const res: Record<string, [Arr, Arr]> = {};
  const runs: Record<string, Arr>[] = [];
  for (const lib of [cpu, gpu]) {
    const bufs: Record<string, Dev> = {};
    for (const [k, v] of Object.entries(inputs)) bufs[k] = Dev.of(lib, v);
    for (const [k, v] of Object.entries(outputs)) {
      bufs[k] = inputs[k] ? bufs[k] : Dev.of(lib, v);
      if (!inputs[k] && lib === gpu) bufs[k].poison(v instanceof Int32Array ? 0x80 : 0xff);
    }
    const ptrs: Record<string, Deno.PointerValue> = {};
    for (const [k, v] of Object.entries(bufs)) ptrs[k] = v.p;
    lib.check(fn(lib, ptrs), `${what} (${lib === cpu ? "cpu" : "gpu"})`);
    lib.check(lib.sym.msg_device_sync(), "device sync");
    const out: Record<string, Arr> = {};
    for (const k of Object.keys(outputs)) out[k] = bufs[k].read(outputs[k]);
    for (const b of Object.values(bufs)) b.free();
    runs.push(out);
  }
  for (const k of Object.keys(outputs)) res[k] = [runs[0][k], runs[1][k]];
  return res;
}

function asF32(a: Arr, dtype: number): Float32Array {
  return dtype === BF16 ? fromBf16(a as Uint16Array) : (a as Float32Array);
}
/** Asserts no NaN in the GPU output and relative L2 error <= tol. */
function close(pair: [Arr, Arr], dtype: number, tol: number, what: string) {
  const ref = asF32(pair[0], dtype), got = asF32(pair[1], dtype);
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(got[i])) assert.fail(`${what}: NaN (unwritten?) at ${i}`);
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  const err = Math.sqrt(num / Math.max(den, 1e-30));
  assert.ok(err <= tol, `${what}: relative L2 error ${err.toExponential(3)} > ${tol}`);
}
function exact(pair: [Arr, Arr], what: string) {
  const [a, b] = pair;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i] && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) {
      assert.fail(`${what}: element ${i}: cpu ${a[i]} gpu ${b[i]}`);
    }
  }
}
const ig = { ignore: !cudaAvailable };

// ---------------------------------------------------------------- elementwise, norms

Deno.test({
  name: "cuda: cast, add, embedding, gathers, scatter",
  ...ig,
  fn() {
    const n = 100003;
    const x = randn(n, 3);
    let r = both(
      { x },
      { o: new Uint16Array(n) },
      (l, b) => l.sym.msg_cast(b.o, BF16, b.x, F32, BigInt(n), null),
      "cast f32->bf16",
    );
    exact(r.o, "cast f32->bf16");
    r = both(
      { x },
      { o: new Uint16Array(n) },
      (l, b) => l.sym.msg_cast(b.o, F16, b.x, F32, BigInt(n), null),
      "cast f32->f16",
    );
    exact(r.o, "cast f32->f16");
    const xb = rbf(n), yb = rbf(n);
    r = both(
      { xb },
      { o: new Float32Array(n) },
      (l, b) => l.sym.msg_cast(b.o, F32, b.xb, BF16, BigInt(n), null),
      "cast bf16->f32",
    );
    exact(r.o, "cast bf16->f32");
    for (const m of [n, 1000, 7]) {
      r = both(
        { xb, yb },
        { o: new Uint16Array(m) },
        (l, b) => l.sym.msg_add(b.o, b.xb, b.yb, BigInt(m), BF16, null),
        "add",
      );
      exact(r.o, `add n=${m}`);
    }
    for (const hidden of [1024, 100]) {
      const table = rbf(500 * hidden), ids = randint(37, 500);
      r = both(
        { table, ids },
        { o: new Uint16Array(37 * hidden) },
        (l, b) => l.sym.msg_embedding(b.o, b.table, b.ids, 37, hidden, BF16, BF16, null),
        "embedding",
      );
      exact(r.o, `embedding hidden=${hidden}`);
      r = both(
        { table, ids },
        { o: new Float32Array(37 * hidden) },
        (l, b) => l.sym.msg_embedding(b.o, b.table, b.ids, 37, hidden, F32, BF16, null),
        "embedding f32",
      );
      exact(r.o, `embedding f32 hidden=${hidden}`);
    }
    for (const rowBytes of [2048, 6]) {
      const src = new Uint8Array(300 * rowBytes).map(() => rand() * 256), idx = randint(41, 300);
      r = both(
        { src, idx },
        { o: new Uint8Array(41 * rowBytes) },
        (l, b) => l.sym.msg_gather_rows(b.o, b.src, b.idx, 41, BigInt(rowBytes), null),
        "gather_rows",
      );
      exact(r.o, `gather_rows ${rowBytes}`);
    }
    const src = randint(1000, 1 << 30), idx = randint(333, 1000);
    r = both(
      { src, idx },
      { o: new Int32Array(333) },
      (l, b) => l.sym.msg_gather_i32(b.o, b.src, b.idx, 333, null),
      "gather_i32",
    );
    exact(r.o, "gather_i32");
    const perm = Int32Array.from({ length: 1000 }, (_, i) => i).sort(() => rand() - 0.5);
    const dst = randint(1000, 100);
    r = both(
      { dst, perm: perm.slice(0, 500), src },
      { dst },
      (l, b) => l.sym.msg_scatter_i32(b.dst, b.perm, b.src, 500, null),
      "scatter_i32",
    );
    exact(r.dst, "scatter_i32");
  },
});

Deno.test({
  name: "cuda: rmsnorm, add_rmsnorm, silu_mul",
  ...ig,
  fn() {
    for (const [rows, hidden] of [[1, 4096], [7, 1024], [64, 2048], [3, 100]]) {
      const x = rbf(rows * hidden), w = rbf(hidden, 0.5), res = rbf(rows * hidden);
      let r = both(
        { x, w },
        { o: new Uint16Array(rows * hidden) },
        (l, b) => l.sym.msg_rmsnorm(b.o, b.x, b.w, rows, hidden, 1e-6, BF16, BF16, null),
        "rmsnorm",
      );
      close(r.o, BF16, 1e-2, `rmsnorm ${rows}x${hidden}`);
      r = both(
        { x, w, res },
        { o: new Uint16Array(rows * hidden), res },
        (l, b) =>
          l.sym.msg_add_rmsnorm(b.o, b.res, b.x, b.w, rows, hidden, 1e-6, BF16, BF16, BF16, null),
        "add_rmsnorm",
      );
      exact(r.res, `add_rmsnorm residual ${rows}x${hidden}`);
      close(r.o, BF16, 1e-2, `add_rmsnorm ${rows}x${hidden}`);
      // fp32 residual stream with bf16 activations
      const resF = Float32Array.from({ length: rows * hidden }, () => Math.random() * 2 - 1);
      const rf = both(
        { x, w, resF },
        { o: new Uint16Array(rows * hidden), resF },
        (l, b) =>
          l.sym.msg_add_rmsnorm(b.o, b.resF, b.x, b.w, rows, hidden, 1e-6, BF16, F32, BF16, null),
        "add_rmsnorm f32 residual",
      );
      exact(rf.resF, `add_rmsnorm f32 residual ${rows}x${hidden}`);
      close(rf.o, BF16, 1e-2, `add_rmsnorm f32 residual out ${rows}x${hidden}`);
    }
    for (const [rows, inter] of [[1, 14336], [5, 3072], [3, 100]]) {
      const gu = rbf(rows * 2 * inter, 2);
      const r = both(
        { gu },
        { o: new Uint16Array(rows * inter) },
        (l, b) => l.sym.msg_silu_mul(b.o, b.gu, rows, inter, BF16, null),
        "silu_mul",
      );
      close(r.o, BF16, 1e-2, `silu_mul ${rows}x${inter}`);
    }
  },
});

// ---------------------------------------------------------------- GEMM

Deno.test({
  name: "cuda: gemm (bf16, fp32 logits, bias, fallback)",
  ...ig,
  fn() {
    const cases: [number, number, number, number, number, boolean][] = [
      // M, N, K, in dtype, out dtype, bias
      [1, 1024, 4096, BF16, BF16, false],
      [7, 1000, 512, BF16, BF16, true],
      [128, 768, 1024, BF16, BF16, false],
      [3, 2000, 256, BF16, F32, false],
      [5, 300, 128, F32, F32, true],
      // Buckets up to M = 256 are tuned on their first call (gemm.cu): the tuned algorithm at the
      // bucket's M, then at another M of the same bucket (13 in 16's), with bias and fp32 out.
      [16, 1024, 1024, BF16, BF16, true],
      [13, 1024, 1024, BF16, BF16, true],
      [64, 3072, 1024, BF16, BF16, false],
      [200, 2048, 512, BF16, F32, false],
      [256, 4096, 1024, BF16, BF16, true],
      [300, 1024, 512, BF16, BF16, false],
    ];
    for (const [M, N, K, dt, ot, useBias] of cases) {
      const a = dt === BF16 ? rbf(M * K) : randn(M * K);
      const w = dt === BF16 ? rbf(N * K, 0.05) : randn(N * K, 0.05);
      const bias = dt === BF16 ? rbf(N) : randn(N);
      const o = ot === BF16 ? new Uint16Array(M * N) : new Float32Array(M * N);
      const r = both(
        { a, w, bias },
        { o },
        (l, b) => l.sym.msg_gemm(b.o, ot, b.a, dt, b.w, dt, useBias ? b.bias : null, M, N, K, null),
        "gemm",
      );
      close(r.o, ot, 1e-2, `gemm ${M}x${N}x${K} ${dt}->${ot} bias=${useBias}`);
    }
    // a_dtype != w_dtype goes through the fallback kernel.
    const a = randn(4 * 96), w = rbf(50 * 96);
    const r = both(
      { a, w },
      { o: new Float32Array(200) },
      (l, b) => l.sym.msg_gemm(b.o, F32, b.a, F32, b.w, BF16, null, 4, 50, 96, null),
      "gemm mixed",
    );
    close(r.o, F32, 1e-5, "gemm mixed f32 x bf16");
  },
});

// ---------------------------------------------------------------- rope, slots, attention

function cosSin(maxPos: number, rot: number): Float32Array {
  const cs = new Float32Array(maxPos * rot), half = rot / 2;
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      const f = p / Math.pow(10000, (2 * i) / rot);
      cs[p * rot + i] = Math.cos(f);
      cs[p * rot + half + i] = Math.sin(f);
    }
  }
  return cs;
}

/** msg_rope_store_kv on `both`'s buffers (qkv, pos, cs, slots, kc, vc, and qn, kn with
 *  `norm`), the weights in the act dtype. */
function ropeStore(
  l: NativeLib,
  b: Record<string, Deno.PointerValue>,
  o: {
    norm: boolean;
    rot: number;
    n: number;
    hq: number;
    hkv: number;
    hd: number;
    act: number;
    kv: number;
  },
): number {
  return l.sym.msg_rope_store_kv(
    b.qkv,
    b.pos,
    o.norm ? b.qn : null,
    o.norm ? b.kn : null,
    1e-6,
    b.cs,
    o.rot,
    b.slots,
    b.kc,
    b.vc,
    o.n,
    o.hq,
    o.hkv,
    o.hd,
    o.act,
    o.act,
    o.kv,
    null,
  );
}

Deno.test({
  name: "cuda: rope_store_kv, compute_slots",
  ...ig,
  fn() {
    for (const [hd, rot, norm] of [[128, 128, true], [64, 64, false], [128, 64, false]] as const) {
      const n = 13, hq = 8, hkv = 2, slotsN = 64, width = (hq + 2 * hkv) * hd;
      const qkv = rbf(n * width), pos = randint(n, 500), cs = cosSin(512, rot);
      const slots = Int32Array.from({ length: n }, (_, i) => (i === 3 ? -1 : (i * 7) % slotsN));
      const qn = rbf(hd, 0.3), kn = rbf(hd, 0.3);
      const kc = rbf(slotsN * hkv * hd), vc = rbf(slotsN * hkv * hd);
      const r = both(
        { qkv, pos, cs, slots, qn, kn, kc, vc },
        { qkv, kc, vc },
        (l, b) => ropeStore(l, b, { norm: norm, rot: rot, n, hq, hkv, hd, act: BF16, kv: BF16 }),
        "rope",
      );
      for (const k of ["qkv", "kc", "vc"]) {
        close(r[k], BF16, 1e-2, `rope ${k} hd=${hd} rot=${rot}`);
      }
    }
    const batch = 4, ps = 16, stride = 10;
    const pt = randint(batch * stride, 1000), rows = Int32Array.from([2, 0, 3, 1]);
    const qlens = [5, 1, 40, 17], seqs = Int32Array.from([20, 9, 40, 150]);
    const qs = Int32Array.from([0, 5, 6, 46, 63]);
    const r = both(
      { pt, rows, seqs, qs },
      { sl: new Int32Array(63), po: new Int32Array(63) },
      (l, b) =>
        l.sym.msg_compute_slots(
          b.sl,
          b.po,
          b.pt,
          stride,
          b.rows,
          b.seqs,
          b.qs,
          batch,
          ps,
          Math.max(...qlens),
          null,
        ),
      "compute_slots",
    );
    exact(r.sl, "slots");
    exact(r.po, "positions");
  },
});

/** Asserts two fp8 e4m3 caches are the same bytes (a NaN may differ in sign). */
function sameFp8(pair: [Arr, Arr], what: string) {
  const [a, b] = pair;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i] || ((a[i] & 0x7f) === 0x7f && (b[i] & 0x7f) === 0x7f)) continue;
    assert.fail(`${what}: byte ${i}: cpu 0x${a[i].toString(16)} gpu 0x${b[i].toString(16)}`);
  }
}

Deno.test({
  name: "cuda: rope_store_kv into fp8 e4m3 caches (every bf16 and f16 pattern, rotated heads)",
  ...ig,
  fn() {
    // No norm, no rotation: k of the 512 tokens holds every 16-bit pattern, v the same
    // reversed; every slot is written, so GPU caches start poisoned (0xff).
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i), rev = all.slice().reverse();
    for (const dtype of [BF16, F16]) {
      const n = 512, hq = 2, hkv = 1, hd = 128, width = (hq + 2 * hkv) * hd;
      const qkv = to16(randn(n * width), dtype);
      for (let t = 0; t < n; t++) {
        qkv.set(all.subarray(t * hd, (t + 1) * hd), t * width + hq * hd);
        qkv.set(rev.subarray(t * hd, (t + 1) * hd), t * width + (hq + 1) * hd);
      }
      const slots = Int32Array.from({ length: n }, (_, i) => (i * 5) % n);
      const r = both(
        { qkv, pos: new Int32Array(n), cs: new Float32Array(1), slots },
        { qkv, kc: new Uint8Array(n * hd), vc: new Uint8Array(n * hd) },
        (l, b) =>
          ropeStore(l, b, { norm: false, rot: 0, n, hq, hkv, hd, act: dtype, kv: FP8_E4M3 }),
        "rope fp8",
      );
      sameFp8(r.kc, `rope fp8 k, every pattern of dtype ${dtype}`);
      sameFp8(r.vc, `rope fp8 v, every pattern of dtype ${dtype}`);
    }
    // Norm and (partial) rotation, a skipped token, unused slots: each cache holds the e4m3
    // bytes of the k/v that library wrote to its qkv (the CPU's conversion of them), and the
    // two libraries agree up to rounding.
    for (const [hd, rot, norm, dtype] of [[128, 128, true, BF16], [64, 32, false, F16]] as const) {
      const n = 13, hq = 8, hkv = 2, slotsN = 40, width = (hq + 2 * hkv) * hd;
      const qkv = to16(randn(n * width, 2), dtype), pos = randint(n, 500), cs = cosSin(512, rot);
      const slots = Int32Array.from({ length: n }, (_, i) => (i === 3 ? -1 : (i * 7) % slotsN));
      const qn = to16(randn(hd, 0.3), dtype), kn = to16(randn(hd, 0.3), dtype);
      const kc = new Uint8Array(slotsN * hkv * hd).fill(0xff), vc = kc.slice();
      const r = both(
        { qkv, pos, cs, slots, qn, kn, kc, vc },
        { qkv, kc, vc },
        (l, b) =>
          ropeStore(l, b, { norm: norm, rot: rot, n, hq, hkv, hd, act: dtype, kv: FP8_E4M3 }),
        "rope fp8 rotated",
      );
      const what = `rope fp8 hd=${hd} rot=${rot} norm=${norm} dtype=${dtype}`;
      for (const side of [0, 1]) {
        const out = r.qkv[side] as Uint16Array;
        const want = [kc.slice(), vc.slice()];
        for (let t = 0; t < n; t++) {
          if (slots[t] < 0) continue;
          for (const [c, h0] of [[0, hq], [1, hq + hkv]]) {
            const x = out.subarray(t * width + h0 * hd, t * width + (h0 + hkv) * hd);
            want[c].set(toE4m3(cpu, x, dtype), slots[t] * hkv * hd);
          }
        }
        const lib = side ? "gpu" : "cpu";
        sameFp8([want[0], r.kc[side]], `${what}: ${lib} k cache = e4m3 of its qkv`);
        sameFp8([want[1], r.vc[side]], `${what}: ${lib} v cache = e4m3 of its qkv`);
      }
      const f = (a: Arr) => from16(a as Uint16Array, dtype);
      close([f(r.qkv[0]), f(r.qkv[1])], F32, 1e-2, `${what}: qkv`);
      // Where the two qkv differ by a rounding, the bytes are neighbours on the e4m3 grid
      // (signed magnitude, the order of the values): at most one step apart, and rarely.
      const ord = (x: number) => (x & 0x80 ? -(x & 0x7f) : x);
      for (const k of ["kc", "vc"]) {
        const [a, b] = r[k];
        let diff = 0;
        for (let i = 0; i < a.length; i++) {
          if (a[i] === b[i]) continue;
          diff++;
          assert.ok(Math.abs(ord(a[i]) - ord(b[i])) <= 1, `${what}: ${k}[${i}] ${a[i]} vs ${b[i]}`);
        }
        assert.ok(diff <= a.length / 50, `${what}: ${k}: ${diff} bytes differ`);
      }
    }
  },
});

/** A random page table for `seqs` tokens per request, pages shuffled over the pool. */
function pageTable(seqs: number[], ps: number) {
  const pages = seqs.map((s) => Math.ceil(s / ps));
  const stride = Math.max(...pages) + 1, numPages = pages.reduce((a, b) => a + b, 0) + 3;
  const perm = Int32Array.from({ length: numPages }, (_, i) => i).sort(() => rand() - 0.5);
  const pt = new Int32Array(seqs.length * stride);
  let next = 0;
  seqs.forEach((_, b) => {
    for (let j = 0; j < pages[b]; j++) pt[b * stride + j] = perm[next++];
  });
  const rows = Int32Array.from(seqs.map((_, i) => i));
  return { pt, stride, rows, slots: numPages * ps };
}
/** A random paged cache: page table plus random k/v caches. */
function pagedCase(seqs: number[], ps: number, hkv: number, hd: number) {
  const { pt, stride, rows, slots } = pageTable(seqs, ps);
  return { pt, stride, rows, kc: rbf(slots * hkv * hd), vc: rbf(slots * hkv * hd) };
}

Deno.test({
  name: "cuda: attention extend (paged, causal, GQA)",
  ...ig,
  fn() {
    for (
      const [hd, ps, hq, hkv] of [[128, 16, 8, 2], [64, 1, 4, 4], [128, 5, 14, 2], [256, 16, 4, 1]]
    ) {
      const seqs = [70, 200, 33, 1]; // q lens 70, 17, 1, 1
      const c = pagedCase(seqs, ps, hkv, hd);
      const qs = Int32Array.from([0, 70, 87, 88, 89]), totalQ = 89;
      const stride = (hq + 2 * hkv) * hd, q = rbf(totalQ * stride);
      const r = both({
        q,
        pt: c.pt,
        rows: c.rows,
        kc: c.kc,
        vc: c.vc,
        seqs: Int32Array.from(seqs),
        qs,
      }, {
        o: new Uint16Array(totalQ * hq * hd),
      }, (l, b) =>
        l.sym.msg_attention_extend(
          b.o,
          b.q,
          stride,
          b.kc,
          b.vc,
          b.pt,
          c.stride,
          b.rows,
          b.seqs,
          b.qs,
          seqs.length,
          totalQ,
          70,
          200,
          hq,
          hkv,
          hd,
          ps,
          1 / Math.sqrt(hd),
          BF16,
          null,
        ), "extend");
      close(r.o, BF16, 1e-2, `extend hd=${hd} ps=${ps} hq=${hq} hkv=${hkv}`);
    }
  },
});

Deno.test({
  name: "cuda: attention decode (split-K, paged, GQA)",
  ...ig,
  fn() {
    for (
      const [hd, ps, hq, hkv, bs] of [[128, 16, 32, 8, 5], [64, 1, 16, 16, 3], [128, 7, 14, 2, 9], [
        256,
        16,
        8,
        1,
        2,
      ], [128, 16, 64, 4, 2]]
    ) {
      const seqs = Array.from({ length: bs }, (_, i) => (i === 0 ? 1 : 1 + (rand() * 1500 | 0)));
      const c = pagedCase(seqs, ps, hkv, hd);
      const stride = (hq + 2 * hkv) * hd, q = rbf(bs * stride);
      const r = both(
        { q, pt: c.pt, rows: c.rows, kc: c.kc, vc: c.vc, seqs: Int32Array.from(seqs) },
        { o: new Uint16Array(bs * hq * hd) },
        (l, b) =>
          l.sym.msg_attention_decode(
            b.o,
            b.q,
            stride,
            b.kc,
            b.vc,
            b.pt,
            c.stride,
            b.rows,
            b.seqs,
            bs,
            2048,
            hq,
            hkv,
            hd,
            ps,
            1 / Math.sqrt(hd),
            BF16,
            BF16,
            null,
          ),
        "decode",
      );
      close(r.o, BF16, 1e-2, `decode hd=${hd} ps=${ps} hq=${hq} hkv=${hkv} bs=${bs}`);
    }
  },
});

// ---------------------------------------------------------------- sampling, logprobs

/** The token msg_sample must pick, in float64 (the header's rule with real weights instead
 *  of fixed point): z = fp32(x / T), ranks by logit desc / index asc, top-k, top-p, min-p,
 *  then the inverse CDF with u over the kept tokens in INDEX order. Equal logits form one
 *  group, so rows with many ties stay fast. */
function refSample(
  x: Float32Array,
  t: number,
  topP: number,
  minP: number,
  topK: number,
  u: number,
): number {
  x = x.map((v) => Number.isNaN(v) ? -Infinity : v);
  const V = x.length;
  const argmax = () => x.reduce((b, v, i) => (v > x[b] ? i : b), 0);
  if (!(t > 0)) return argmax();
  const T = Math.fround(t), zf = (v: number) => Math.fround(v / T);
  const sorted = Float32Array.from(x).sort();
  const zmax = zf(sorted[V - 1]);
  if (!Number.isFinite(zmax)) return argmax();
  const gv: number[] = [], gc: number[] = []; // groups of equal logits, descending
  for (let i = V - 1; i >= 0; i--) {
    if (gv.length && gv[gv.length - 1] === sorted[i]) gc[gc.length - 1]++;
    else gv.push(sorted[i]), gc.push(1);
  }
  const w = gv.map((v) => Math.exp(zf(v) - zmax));
  const prefixMass = (n: number) => {
    let m = 0;
    for (let g = 0; n > 0; g++) m += w[g] * Math.min(n, gc[g]), n -= Math.min(n, gc[g]);
    return m;
  };
  let L = topK > 0 && topK < V ? topK : V;
  if (topP < 1) {
    const thr = topP * prefixMass(L);
    let cum = 0, kept = 0;
    for (let g = 0, left = L; left > 0; g++) {
      const c = Math.min(left, gc[g]);
      const n = Math.min(c, Math.max(0, Math.ceil((thr - cum) / w[g])));
      kept += n;
      if (n < c) break;
      cum += c * w[g], left -= c;
    }
    L = Math.max(1, kept);
  }
  if (minP > 0) {
    let n = 0;
    for (let g = 0; g < gv.length && w[g] >= minP; g++) n += gc[g];
    L = Math.max(1, Math.min(L, n));
  }
  // The kept set: every group above group G, and the first `tie` tokens (by index) of G.
  let G = 0, tie = L;
  while (tie > gc[G]) tie -= gc[G++];
  const target = u * prefixMass(L);
  let cum = 0, last = -1;
  for (let i = 0; i < V; i++) {
    const v = x[i];
    if (!(v > gv[G] || (v === gv[G] && tie-- > 0))) continue;
    cum += Math.exp(zf(v) - zmax);
    last = i;
    if (cum > target) return i;
  }
  return last;
}

/** Params rows of [temperature, top_p, min_p, top_k] picked by a cycle over each list. */
function mixedParams(rows: number): Uint8Array {
  return samplingParams(rows, (i) => [
    [0.7, 1.0, 1.3][i % 3],
    [1, 0.9, 0.5, 0.95][i % 4],
    [0, 0, 0.05][i % 3],
    [0, 50, 1, 0, 2000, 20000, 7][i % 7],
  ]);
}

/** GPU and CPU tokens must be equal (same integer rule, same fp32 steps); the float64
 *  reference may differ only at floating-point boundaries. */
function checkSample(lg: Float32Array, pr: Uint8Array, rows: number, vocab: number, what: string) {
  const r = both(
    { lg, pr },
    { t: new Int32Array(rows), lp: new Float32Array(rows) },
    (l, b) => l.sym.msg_sample(b.t, b.lp, b.lg, b.pr, rows, vocab, null),
    "sample",
  );
  const [a, g] = r.t as [Int32Array, Int32Array];
  const pv = new DataView(pr.buffer);
  const bad: string[] = [];
  let refOff = 0;
  for (let i = 0; i < rows; i++) {
    const o = i * 32;
    const p4 = [0, 4, 8].map((k) => pv.getFloat32(o + k, true)).concat(pv.getInt32(o + 12, true));
    const want = refSample(
      lg.subarray(i * vocab, (i + 1) * vocab),
      p4[0],
      p4[1],
      p4[2],
      p4[3],
      cpu.sym.msg_uniform(pv.getBigUint64(o + 16, true), pv.getInt32(o + 24, true)),
    );
    if (want !== a[i]) refOff++;
    if (a[i] !== g[i]) bad.push(`row ${i} [${p4}]: cpu ${a[i]} gpu ${g[i]} ref ${want}`);
  }
  console.log(`sample ${what}: gpu != cpu in ${bad.length}, cpu != float64 ref in ${refOff}`);
  if (bad.length) console.log(bad.slice(0, 20).join("\n"));
  assert.equal(bad.length, 0, `${what}: GPU and CPU tokens differ`);
  assert.ok(refOff <= 2, `${what}: ${refOff} rows off the float64 reference`);
  const same = (x: Arr) => (x as Float32Array).filter((_, i) => a[i] === g[i]);
  close([same(r.lp[0]), same(r.lp[1])], F32, 1e-3, `${what} logprobs`);
}

Deno.test({
  name: "cuda: sample, token/top logprobs, penalties",
  ...ig,
  fn() {
    for (const vocab of [151936, 128256]) {
      const rows = 48;
      const logits = randn(rows * vocab, 3);
      for (let r = 0; r < rows; r++) logits[r * vocab + ((r * 7919) % vocab)] += 12; // clear max
      const greedy = samplingParams(rows, () => [0, 1, 0, 0]);
      let r = both(
        { logits, greedy },
        { t: new Int32Array(rows), lp: new Float32Array(rows) },
        (l, b) => l.sym.msg_sample(b.t, b.lp, b.logits, b.greedy, rows, vocab, null),
        "greedy",
      );
      exact(r.t, "greedy tokens");
      close(r.lp, F32, 1e-4, "greedy logprobs");
      // bf16-rounded logits have many exact ties: they test the index tie-break.
      checkSample(logits, mixedParams(rows), rows, vocab, `vocab=${vocab} fp32`);
      checkSample(fromBf16(toBf16(logits)), mixedParams(rows), rows, vocab, `vocab=${vocab} bf16`);
      // Flat rows (no spike): top-p cuts deep into the vocabulary.
      checkSample(randn(rows * vocab, 1), mixedParams(rows), rows, vocab, `vocab=${vocab} flat`);
      // No params (every row greedy: the one-pass launch), after the calls above left state in
      // the scratch: the tokens and logprobs of the greedy params, on both backends.
      const onePass = both(
        { logits },
        { t: new Int32Array(rows), lp: new Float32Array(rows) },
        (l, b) => l.sym.msg_sample(b.t, b.lp, b.logits, null, rows, vocab, null),
        "greedy, no params",
      );
      exact([r.t[0], onePass.t[1]], "greedy tokens, no params");
      exact([r.lp[1], onePass.lp[1]], "greedy logprobs on the GPU, no params");
      exact([r.lp[0], onePass.lp[0]], "greedy logprobs on the CPU, no params");
      if (vocab === 151936) {
        // Degenerate rows: constant, three values, mostly -inf, NaN: buffers overflow and
        // the one-block fallbacks run.
        const dr = 28, deg = new Float32Array(dr * vocab);
        for (let i = 0; i < dr; i++) {
          const row = deg.subarray(i * vocab, (i + 1) * vocab), kind = i % 4;
          for (let j = 0; j < vocab; j++) {
            row[j] = kind === 0 ? 0.5 : kind === 1 ? (j * 7) % 3 : kind === 2 ? -Infinity : j % 5;
          }
          if (kind === 2) row[(i * 31) % vocab] = 1, row[(i * 77) % vocab] = 1.5;
          if (kind === 3) row[i * 13] = NaN;
        }
        const dp = samplingParams(dr, (i) => [
          [1, 0.5, 2][i % 3],
          [1, 0.9, 0.3][(i >> 2) % 3],
          [0, 0.2][(i >> 1) % 2],
          [0, 5, 20000, 100000][(i >> 3) % 4],
        ]);
        checkSample(deg, dp, dr, vocab, "degenerate rows");
      }
      const targets = randint(rows, vocab);
      r = both(
        { logits, targets },
        { o: new Float32Array(rows) },
        (l, b) => l.sym.msg_token_logprobs(b.o, b.logits, b.targets, rows, vocab, null),
        "token_logprobs",
      );
      close(r.o, F32, 1e-4, "token_logprobs");
      const k = 5;
      r = both(
        { logits },
        { ids: new Int32Array(rows * k), lp: new Float32Array(rows * k) },
        (l, b) => l.sym.msg_top_logprobs(b.ids, b.lp, b.logits, rows, vocab, k, null),
        "top",
      );
      exact(r.ids, "top_logprobs ids");
      close(r.lp, F32, 1e-4, "top_logprobs");
    }
    const vocab = 5000, rows = 6;
    const logits = randn(rows * vocab, 2);
    const starts = Int32Array.from([0, 0, 10, 300, 301, 2301, 2400]);
    const tokens = randint(2400, 60);
    const pres = Float32Array.from([0.5, 0, 1, 0.2, 0, 0.3]);
    const freq = Float32Array.from([0.1, 0.2, 0, 0.3, 0.4, 0.05]);
    const rep = Float32Array.from([1, 1.2, 1.1, 1, 0.9, 1.3]);
    const r = both(
      { logits, starts, tokens, pres, freq, rep },
      { logits },
      (l, b) =>
        l.sym.msg_apply_penalties(
          b.logits,
          vocab,
          b.tokens,
          b.starts,
          b.pres,
          b.freq,
          b.rep,
          rows,
          null,
        ),
      "penalties",
    );
    close(r.logits, F32, 1e-6, "penalties");
  },
});

// ---------------------------------------------------------------- graphs, comm, timing

Deno.test({
  name: "cuda: graph replay, comm, memory info, timings",
  ignore: !cudaAvailable || !isCuda,
  fn() {
    const s = gpu.sym, chk = gpu.check.bind(gpu);
    const h = new BigUint64Array(4);
    chk(s.msg_stream_create(ptr(h.subarray(0, 1))), "stream");
    const st = Deno.UnsafePointer.create(h[0]);
    const ev0 =
      (chk(s.msg_event_create(ptr(h.subarray(1, 2))), "ev"), Deno.UnsafePointer.create(h[1]));
    const ev1 =
      (chk(s.msg_event_create(ptr(h.subarray(2, 3))), "ev"), Deno.UnsafePointer.create(h[2]));
    const timeMs = (fn: () => void, reps: number) => {
      fn();
      chk(s.msg_event_record(ev0, st), "rec");
      for (let i = 0; i < reps; i++) fn();
      chk(s.msg_event_record(ev1, st), "rec");
      chk(s.msg_event_sync(ev1), "sync");
      const ms = new Float32Array(1);
      chk(s.msg_event_elapsed_ms(ev0, ev1, ptr(ms)), "elapsed");
      return ms[0] / reps;
    };
    const graphOf = (fn: () => void) => {
      chk(s.msg_graph_begin(st), "graph begin");
      fn();
      chk(s.msg_graph_end(st, ptr(h.subarray(3, 4))), "graph end");
      return Deno.UnsafePointer.create(h[3]);
    };
    const name = new Uint8Array(256);
    chk(s.msg_device_name(0, ptr(name), 256), "name");
    const mem = new BigUint64Array(2);
    chk(s.msg_mem_info(ptr(mem.subarray(0, 1)), ptr(mem.subarray(1, 2))), "mem");
    console.log(
      `device: ${new TextDecoder().decode(name).replace(/\0.*$/s, "")}, ` +
        `${Number(mem[0]) / 2 ** 30 | 0} of ${Number(mem[1]) / 2 ** 30 | 0} GiB free`,
    );

    // Communicator of one rank, and NCCL's unique id (loads the library).
    chk(s.msg_comm_init(ptr(h.subarray(3, 4)), 1, 0, null), "comm init");
    const comm = Deno.UnsafePointer.create(h[3]);
    chk(s.msg_all_reduce(null, 0n, BF16, comm, st), "all_reduce");
    chk(s.msg_comm_destroy(comm), "comm destroy");
    const id = new Uint8Array(128);
    chk(s.msg_comm_unique_id(ptr(id)), "nccl unique id");

    // Large random device buffers: one random block copied over and over.
    const block = rbf(1 << 22);
    const randomDev = (n: number) => {
      const d = new Dev(gpu, n * 2);
      for (let off = 0; off < n; off += block.length) {
        const len = Math.min(block.length, n - off);
        chk(
          s.msg_memcpy_h2d(
            Deno.UnsafePointer.offset(d.p!, off * 2),
            ptr(block),
            BigInt(len * 2),
            st,
          ),
          "h2d",
        );
      }
      return d;
    };
    const big = new Dev(gpu, 1 << 30), big2 = new Dev(gpu, 1 << 30);
    const copyMs = timeMs(
      () => chk(s.msg_memcpy_d2d(big2.p, big.p, BigInt(1 << 30), st), "d2d"),
      5,
    );
    const copyGBs = 2 * 2 ** 30 / copyMs / 1e6;
    console.log(`d2d copy: ${copyGBs.toFixed(0)} GB/s (read + write)`);
    big.free();
    big2.free();

    // GEMM at M = 1 (decode), replayed from a graph of 20 calls.
    for (const [N, K] of [[4096, 4096], [14336, 4096]]) {
      const w = randomDev(N * K), a = Dev.of(gpu, rbf(K)), o = new Dev(gpu, N * 2);
      const call = () =>
        chk(s.msg_gemm(o.p, BF16, a.p, BF16, w.p, BF16, null, 1, N, K, st), "gemm");
      call();
      const g = graphOf(() => {
        for (let i = 0; i < 20; i++) call();
      });
      const ms = timeMs(() => chk(s.msg_graph_launch(g, st), "launch"), 10) / 20;
      const gbs = N * K * 2 / ms / 1e6;
      console.log(
        `gemm M=1 ${N}x${K} bf16: ${(ms * 1000).toFixed(1)} us, ${gbs.toFixed(0)} GB/s ` +
          `(${(100 * gbs / copyGBs).toFixed(0)}% of copy)`,
      );
      chk(s.msg_graph_destroy(g), "graph destroy");
      [w, a, o].forEach((d) => d.free());
    }

    // Decode attention (Llama-3-8B shapes), graph-captured, then replayed with other lengths:
    // the replay must equal a direct call.
    const hq = 32, hkv = 8, hd = 128, ps = 16, seq = 4096;
    for (const bs of [1, 8, 32, 64]) {
      const c = pageTable(Array(bs).fill(seq), ps);
      const kc = randomDev(c.slots * hkv * hd), vc = randomDev(c.slots * hkv * hd);
      const pt = Dev.of(gpu, c.pt);
      const rows = Dev.of(gpu, c.rows), lens = Dev.of(gpu, new Int32Array(bs).fill(seq));
      const q = Dev.of(gpu, rbf(bs * hq * hd)), o = new Dev(gpu, bs * hq * hd * 2);
      const call = () =>
        chk(
          s.msg_attention_decode(
            o.p,
            q.p,
            hq * hd,
            kc.p,
            vc.p,
            pt.p,
            c.stride,
            rows.p,
            lens.p,
            bs,
            seq,
            hq,
            hkv,
            hd,
            ps,
            0.088,
            BF16,
            BF16,
            st,
          ),
          "decode",
        );
      call();
      const g = graphOf(call);
      const ms = timeMs(() => chk(s.msg_graph_launch(g, st), "launch"), 20);
      const gbs = bs * seq * hkv * hd * 2 * 2 / ms / 1e6;
      console.log(
        `decode attention bs=${bs} seq=${seq}: ${(ms * 1000).toFixed(1)} us, ` +
          `${gbs.toFixed(0)} GB/s (${(100 * gbs / copyGBs).toFixed(0)}% of copy)`,
      );
      const short = Int32Array.from({ length: bs }, (_, i) => 1 + ((i * 977) % seq));
      chk(s.msg_memcpy_h2d(lens.p, ptr(short), BigInt(short.byteLength), st), "h2d");
      chk(s.msg_graph_launch(g, st), "launch");
      chk(s.msg_stream_sync(st), "sync");
      const replayed = o.read(new Uint16Array(bs * hq * hd));
      o.poison();
      call();
      chk(s.msg_stream_sync(st), "sync");
      exact([replayed, o.read(new Uint16Array(bs * hq * hd))], "graph replay = direct call");
      chk(s.msg_graph_destroy(g), "graph destroy");
      [kc, vc, pt, rows, lens, q, o].forEach((d) => d.free());
    }
    // Sampling of a decode batch (graph-safe: no host round trip), timed at 1, 64 and 256
    // rows; the graph's tokens must equal a direct call's (state in scratch stays clean).
    const vocab = 151936;
    const lg = Dev.of(gpu, randn(256 * vocab, 3)), tk = new Dev(gpu, 256 * 4);
    const configs: [string, [number, number, number, number]][] = [
      ["greedy", [0, 1, 0, 0]],
      ["temperature", [0.8, 1, 0, 0]],
      ["top-k 40", [0.8, 1, 0, 40]],
      ["top-p 0.95", [0.8, 0.95, 0, 0]],
      ["min-p 0.05", [0.8, 1, 0.05, 0]],
      ["top-k 40, top-p 0.95", [0.8, 0.95, 0, 40]],
      ["top-k, top-p, min-p", [0.8, 0.95, 0.05, 40]],
      ["top-k 5000, top-p 0.9", [1, 0.9, 0, 5000]],
    ];
    for (const rowsN of [1, 64, 256]) {
      const line: string[] = [];
      for (const [what, p] of configs) {
        const pr = Dev.of(gpu, samplingParams(rowsN, () => p));
        const call = () => chk(s.msg_sample(tk.p, null, lg.p, pr.p, rowsN, vocab, st), "sample");
        call();
        chk(s.msg_stream_sync(st), "sync");
        const direct = tk.read(new Int32Array(rowsN));
        const g = graphOf(call);
        const ms = timeMs(() => chk(s.msg_graph_launch(g, st), "launch"), 10);
        chk(s.msg_stream_sync(st), "sync");
        exact([direct, tk.read(new Int32Array(rowsN))], `sample graph replay (${what})`);
        line.push(`${what} ${(ms * 1000).toFixed(1)}`);
        chk(s.msg_graph_destroy(g), "graph destroy");
        pr.free();
      }
      console.log(`sample ${rowsN} rows x ${vocab} (us): ${line.join(", ")}`);
    }
    [lg, tk].forEach((d) => d.free());
    chk(s.msg_stream_destroy(st), "stream destroy");
  },
});
