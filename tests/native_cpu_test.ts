/**
 * Tests of the CPU implementation of the native ABI (build/libminisgl_cpu.so) against small
 * fp64 TypeScript references, on random inputs of several (odd) shapes. The CPU backend's
 * "device" memory is host memory, so typed arrays are passed straight through ffi.
 */
import assert from "node:assert/strict";
import { ensureBuilt } from "../cuda/build.ts";
import { loadNative } from "../ffi/lib.ts";
import { e4m3RoundRef } from "./reference.ts";

await ensureBuilt();
const lib = loadNative("cpu");
const S = lib.sym;

const F32 = 0, F16 = 1, BF16 = 2, FP8 = 6;
type FloatDtype = typeof F32 | typeof F16 | typeof BF16;

// ---------------------------------------------------------------- helpers

function p(a: ArrayBufferView): Deno.PointerValue {
  return Deno.UnsafePointer.of(a as unknown as BufferSource);
}

function ok(status: number, what: string): void {
  lib.check(status, what);
}

/** Seeded uniform generator in [0, 1) (mulberry32) so failures reproduce. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randArray(n: number, r: () => number, scale = 1): number[] {
  return Array.from({ length: n }, () => (r() * 2 - 1) * scale);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** f32 -> bf16 bits, round to nearest even (independent of the C++ code). */
function bf16Bits(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  if ((u & 0x7fffffff) > 0x7f800000) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

function bf16Value(bits: number): number {
  u32buf[0] = bits << 16;
  return f32buf[0];
}

/** Values stored in `dtype`, as the typed array the library reads. */
function encode(values: ArrayLike<number>, dtype: FloatDtype): Float32Array | Uint16Array {
  if (dtype === F32) return Float32Array.from(values);
  if (dtype === F16) return new Uint16Array(Float16Array.from(values).buffer);
  return Uint16Array.from(Array.from(values, bf16Bits));
}

/** The numbers a buffer of `dtype` holds. */
function decode(buf: Float32Array | Uint16Array, dtype: FloatDtype): number[] {
  if (dtype === F32) return Array.from(buf as Float32Array);
  if (dtype === F16) return Array.from(new Float16Array((buf as Uint16Array).slice().buffer));
  return Array.from(buf as Uint16Array, bf16Value);
}

/** Asserts |a - e| <= atol + rtol * |e| (or <= tol[i] when given per element). */
function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  atol = 1e-5,
  rtol = 1e-5,
): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    if (a === e || (Number.isNaN(e) && Number.isNaN(a))) continue;
    if (!(Math.abs(a - e) <= atol + rtol * Math.abs(e))) {
      assert.fail(`${what}: [${i}] = ${a}, expected ${e}`);
    }
  }
}

function softmax(x: number[]): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function logSoftmax(x: ArrayLike<number>): number[] {
  const a = Array.from(x);
  const m = Math.max(...a);
  const lse = m + Math.log(a.reduce((s, v) => s + Math.exp(v - m), 0));
  return a.map((v) => v - lse);
}

// ---------------------------------------------------------------- device, memory, errors

Deno.test("device queries, events, graphs and comm of the CPU backend", () => {
  assert.equal(S.msg_backend(), 0);
  const count = new Int32Array(1);
  ok(S.msg_device_count(p(count)), "device_count");
  assert.equal(count[0], 1);
  const name = new Uint8Array(128);
  ok(S.msg_device_name(0, p(name), 128), "device_name");
  assert.match(new TextDecoder().decode(name.subarray(0, name.indexOf(0))), /^CPU/);
  const mem = new BigUint64Array(2);
  ok(S.msg_mem_info(p(mem.subarray(0, 1)), p(mem.subarray(1))), "mem_info");
  assert.ok(mem[0] > 0n && mem[0] <= mem[1]);

  const ev = new BigUint64Array(2);
  ok(S.msg_event_create(p(ev.subarray(0, 1))), "event_create");
  ok(S.msg_event_create(p(ev.subarray(1))), "event_create");
  const [e0, e1] = [Deno.UnsafePointer.create(ev[0]), Deno.UnsafePointer.create(ev[1])];
  ok(S.msg_event_record(e0, null), "record");
  ok(S.msg_event_record(e1, null), "record");
  const ms = new Float32Array(1), done = new Int32Array(1);
  ok(S.msg_event_elapsed_ms(e0, e1, p(ms)), "elapsed");
  ok(S.msg_event_query(e1, p(done)), "query");
  assert.ok(ms[0] >= 0 && done[0] === 1);
  ok(S.msg_event_destroy(e0), "destroy");
  ok(S.msg_event_destroy(e1), "destroy");

  assert.notEqual(S.msg_graph_begin(null), 0);
  assert.throws(() => lib.check(S.msg_graph_begin(null), "graph_begin"), /CUDA graphs/);

  const comm = new BigUint64Array(1);
  // Several ranks need the id that names their shared segment (tests/tp_test.ts joins two).
  assert.throws(() => lib.check(S.msg_comm_init(p(comm), 2, 0, null), "init"), /NULL unique id/);
  ok(S.msg_comm_init(p(comm), 1, 0, null), "comm_init");
  const c = Deno.UnsafePointer.create(comm[0]);
  const buf = Float32Array.from([1, 2, 3]);
  ok(S.msg_all_reduce(p(buf), 3n, F32, c, null), "all_reduce");
  assert.deepEqual(Array.from(buf), [1, 2, 3]);
  ok(S.msg_comm_destroy(c), "comm_destroy");
});

Deno.test("malloc, memset and memcpy round trip", () => {
  const n = 1001;
  const slot = new BigUint64Array(1);
  ok(S.msg_malloc(p(slot), BigInt(n)), "malloc");
  const dev = Deno.UnsafePointer.create(slot[0]);
  ok(S.msg_memset(dev, 0xab, BigInt(n), null), "memset");
  const host = new Uint8Array(n);
  ok(S.msg_memcpy_d2h(p(host), dev, BigInt(n), null), "d2h");
  assert.ok(host.every((b) => b === 0xab));
  const src = Uint8Array.from({ length: n }, (_, i) => (i * 7) & 255);
  ok(S.msg_memcpy_h2d(dev, p(src), BigInt(n), null), "h2d");
  ok(S.msg_malloc(p(slot), BigInt(n)), "malloc");
  const dev2 = Deno.UnsafePointer.create(slot[0]);
  ok(S.msg_memcpy_d2d(dev2, dev, BigInt(n), null), "d2d");
  ok(S.msg_memcpy_d2h(p(host), dev2, BigInt(n), null), "d2h");
  assert.deepEqual(host, src);
  ok(S.msg_free(dev), "free");
  ok(S.msg_free(dev2), "free");
});

Deno.test("invalid arguments return an error with a message, never crash", () => {
  const x = new Float32Array(8);
  assert.throws(() => lib.check(S.msg_cast(p(x), 9, p(x), F32, 8n, null), "cast"), /unsupported/);
  assert.throws(
    () => lib.check(S.msg_gemm(p(x), F32, p(x), F32, p(x), 7, null, 1, 1, 1, null), "gemm"),
    /unsupported dtypes/,
  );
  assert.throws(
    () => lib.check(S.msg_gemm(p(x), F32, p(x), F32, p(x), F32, null, -1, 2, 2, null), "g"),
    /negative/,
  );
  assert.throws(
    () => lib.check(S.msg_rmsnorm(null, p(x), p(x), 1, 8, 1e-6, F32, F32, null), "rms"),
    /NULL/,
  );
  const ids = Int32Array.from([-1]);
  assert.throws(
    () => lib.check(S.msg_embedding(p(x), p(x), p(ids), 1, 8, F32, F32, null), "emb"),
    /negative id/,
  );
  assert.throws(
    () => lib.check(S.msg_top_logprobs(p(ids), p(x), p(x), 1, 8, 9, null), "top"),
    /bad sizes/,
  );
  assert.notEqual(S.msg_set_device(1), 0);
});

// ---------------------------------------------------------------- elementwise

Deno.test("cast round trips round to nearest even", () => {
  const r = rng(1);
  const vals = [
    ...randArray(997, r, 100),
    0,
    -0,
    1,
    Infinity,
    -Infinity,
    NaN,
    65504,
    65520, // f16 overflow boundary
    1 + 2 ** -8, // bf16 halfway, rounds down to even
    1 + 3 * 2 ** -8, // halfway, rounds up to even
    3e-8, // f16 subnormal
    1e-40, // f32 subnormal
  ];
  const n = vals.length;
  const src = Float32Array.from(vals);
  for (const dt of [BF16, F16] as const) {
    const out = new Uint16Array(n);
    ok(S.msg_cast(p(out), dt, p(src), F32, BigInt(n), null), "cast f32->16");
    assert.deepEqual(Array.from(out), Array.from(encode(src, dt)), `f32 -> ${dt}`);
    const back = new Float32Array(n);
    ok(S.msg_cast(p(back), F32, p(out), dt, BigInt(n), null), "cast 16->f32");
    assertClose(back, decode(out, dt), `${dt} -> f32`, 0, 0);
  }
  const b = encode(src, BF16), h = new Uint16Array(n);
  ok(S.msg_cast(p(h), F16, p(b), BF16, BigInt(n), null), "bf16->f16");
  assert.deepEqual(Array.from(h), Array.from(encode(decode(b, BF16), F16)));
});

Deno.test("rmsnorm, add_rmsnorm, silu_mul, add and embedding match fp64", () => {
  const r = rng(2);
  for (const [rows, hidden] of [[1, 8], [3, 37], [17, 256], [5, 1000]]) {
    for (const wd of [F32, BF16, F16] as const) {
      const x = randArray(rows * hidden, r, 3), y = randArray(rows * hidden, r, 3);
      const wv = decode(encode(randArray(hidden, r, 2), wd), wd);
      const w = encode(wv, wd), eps = 1e-6;
      const norm = (v: number[]) =>
        v.flatMap((_, i) => {
          if (i % hidden) return [];
          const row = v.slice(i, i + hidden);
          const inv = 1 / Math.sqrt(row.reduce((s, a) => s + a * a, 0) / hidden + eps);
          return row.map((a, j) => a * inv * wv[j]);
        });
      const out = new Float32Array(rows * hidden);
      const xf = Float32Array.from(x), yf = Float32Array.from(y);
      ok(S.msg_rmsnorm(p(out), p(xf), p(w), rows, hidden, eps, F32, wd, null), "rmsnorm");
      assertClose(out, norm(Array.from(xf)), `rmsnorm ${rows}x${hidden}`, 1e-5, 1e-5);

      const res = Float32Array.from(y);
      ok(
        S.msg_add_rmsnorm(p(out), p(res), p(xf), p(w), rows, hidden, eps, F32, F32, wd, null),
        "add",
      );
      const sum = Array.from(xf, (a, i) => a + yf[i]);
      assertClose(res, sum, "add_rmsnorm residual", 1e-6, 1e-6);
      assertClose(out, norm(Array.from(Float32Array.from(sum))), "add_rmsnorm out", 1e-5, 1e-5);
    }
    const inter = hidden;
    const gu = Float32Array.from(randArray(rows * 2 * inter, r, 6));
    const out = new Float32Array(rows * inter);
    ok(S.msg_silu_mul(p(out), p(gu), rows, inter, F32, null), "silu_mul");
    const ref = Array.from(out, (_, i) => {
      const rr = Math.floor(i / inter), j = i % inter;
      const g = gu[rr * 2 * inter + j];
      return g / (1 + Math.exp(-g)) * gu[rr * 2 * inter + inter + j];
    });
    assertClose(out, ref, "silu_mul", 1e-5, 1e-5);

    const a = encode(randArray(rows * hidden, r), BF16),
      b = encode(randArray(rows * hidden, r), BF16);
    const o = new Uint16Array(rows * hidden);
    ok(S.msg_add(p(o), p(a), p(b), BigInt(rows * hidden), BF16, null), "add");
    const da = decode(a, BF16), db = decode(b, BF16);
    assert.deepEqual(Array.from(o), Array.from(encode(da.map((v, i) => v + db[i]), BF16)));
  }
  const vocab = 50, hidden = 33, n = 9;
  const table = encode(randArray(vocab * hidden, r), BF16), tv = decode(table, BF16);
  const ids = Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
  const out = new Float32Array(n * hidden);
  ok(S.msg_embedding(p(out), p(table), p(ids), n, hidden, F32, BF16, null), "embedding");
  assert.deepEqual(
    Array.from(out),
    Array.from(ids).flatMap((id) => tv.slice(id * hidden, (id + 1) * hidden)),
  );
});

// ---------------------------------------------------------------- GEMM

function gemmRef(a: number[], w: number[], bias: number[] | null, M: number, N: number, K: number) {
  const out = new Float64Array(M * N), mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0, t = Math.abs(s);
      for (let k = 0; k < K; k++) {
        s += a[m * K + k] * w[n * K + k];
        t += Math.abs(a[m * K + k] * w[n * K + k]);
      }
      out[m * N + n] = s;
      mag[m * N + n] = t;
    }
  }
  return { out, mag };
}

Deno.test("gemm matches fp64 for bf16/f16/f32 weights, M = 1 and M > 1, odd sizes", () => {
  const r = rng(3);
  const shapes = [
    [1, 37, 53],
    [1, 64, 256],
    [3, 19, 300],
    [8, 40, 17],
    [24, 33, 129],
    [25, 70, 260],
    [97, 45, 520],
    [130, 129, 31],
  ];
  for (const [M, N, K] of shapes) {
    for (const wd of [BF16, F32, F16] as const) {
      for (const withBias of [false, true]) {
        const a = Float32Array.from(randArray(M * K, r));
        const w = encode(randArray(N * K, r), wd), wv = decode(w, wd);
        const b = withBias ? encode(randArray(N, r), wd) : null;
        const out = new Float32Array(M * N);
        ok(S.msg_gemm(p(out), F32, p(a), F32, p(w), wd, b ? p(b) : null, M, N, K, null), "gemm");
        const ref = gemmRef(Array.from(a), wv, b ? decode(b, wd) : null, M, N, K);
        for (let i = 0; i < M * N; i++) {
          const tol = 2e-6 * ref.mag[i] + 1e-6;
          if (!(Math.abs(out[i] - ref.out[i]) <= tol)) {
            assert.fail(
              `gemm ${M}x${N}x${K} w=${wd} bias=${withBias}: [${i}] ${out[i]} vs ${ref.out[i]}`,
            );
          }
        }
      }
    }
  }
  // bf16 activations in and out (the GPU's act dtype), fp32 accumulation.
  const [M, N, K] = [31, 50, 200];
  const a = encode(randArray(M * K, r), BF16), w = encode(randArray(N * K, r), BF16);
  const out = new Uint16Array(M * N);
  ok(S.msg_gemm(p(out), BF16, p(a), BF16, p(w), BF16, null, M, N, K, null), "gemm bf16");
  const ref = gemmRef(decode(a, BF16), decode(w, BF16), null, M, N, K);
  assertClose(decode(out, BF16), ref.out, "gemm bf16 out", 1e-3, 2 ** -8);
});

Deno.test("gemm gives the same bits with 1 thread and with all threads", () => {
  const r = rng(4);
  for (const [M, N, K] of [[1, 300, 300], [70, 200, 300]]) {
    const a = Float32Array.from(randArray(M * K, r)), w = encode(randArray(N * K, r), BF16);
    const o1 = new Float32Array(M * N), o2 = new Float32Array(M * N);
    ok(S.msg_set_num_threads(1), "threads");
    ok(S.msg_gemm(p(o1), F32, p(a), F32, p(w), BF16, null, M, N, K, null), "gemm");
    ok(S.msg_set_num_threads(0), "threads");
    ok(S.msg_gemm(p(o2), F32, p(a), F32, p(w), BF16, null, M, N, K, null), "gemm");
    assert.deepEqual(o1, o2);
  }
});

// ---------------------------------------------------------------- rope + KV store, slots

Deno.test("rope_store_kv rotates q/k (with and without q/k norm, partial rot_dim) and stores k/v", () => {
  const r = rng(5);
  const cases = [
    { n: 5, hq: 4, hkv: 2, hd: 16, rot: 16, norm: false },
    { n: 7, hq: 3, hkv: 1, hd: 12, rot: 8, norm: true },
    { n: 3, hq: 2, hkv: 2, hd: 32, rot: 32, norm: true },
  ];
  for (const { n, hq, hkv, hd, rot, norm } of cases) {
    const row = (hq + 2 * hkv) * hd, maxPos = 40, numSlots = 20, eps = 1e-6;
    const x0 = Array.from(Float32Array.from(randArray(n * row, r, 2)));
    const qkv = Float32Array.from(x0);
    const positions = Int32Array.from({ length: n }, () => Math.floor(r() * maxPos));
    const slots = Int32Array.from({ length: n }, (_, i) => (i === 1 ? -1 : (i * 3 + 2) % numSlots));
    const cs = Float32Array.from({ length: maxPos * rot }, (_, i) => {
      const pos = Math.floor(i / rot), j = i % rot, half = rot / 2;
      const f = pos / 10000 ** ((2 * (j % half)) / rot);
      return j < half ? Math.cos(f) : Math.sin(f);
    });
    const qn = norm ? encode(randArray(hd, r, 2), BF16) : null;
    const kn = norm ? encode(randArray(hd, r, 2), BF16) : null;
    const kc = new Float32Array(numSlots * hkv * hd).fill(7), vc = kc.slice();
    ok(
      S.msg_rope_store_kv(
        p(qkv),
        p(positions),
        qn && p(qn),
        kn && p(kn),
        eps,
        p(cs),
        rot,
        p(slots),
        p(kc),
        p(vc),
        n,
        hq,
        hkv,
        hd,
        F32,
        BF16,
        F32,
        null,
      ),
      "rope_store_kv",
    );
    const ref = x0.slice();
    const kcRef = new Array(kc.length).fill(7), vcRef = kcRef.slice();
    for (let t = 0; t < n; t++) {
      for (let h = 0; h < hq + 2 * hkv; h++) {
        const off = t * row + h * hd;
        let x = ref.slice(off, off + hd);
        if (h < hq + hkv) {
          const nw = h < hq ? qn : kn;
          if (nw) {
            const wv = decode(nw, BF16);
            const inv = 1 / Math.sqrt(x.reduce((s, a) => s + a * a, 0) / hd + eps);
            x = x.map((a, i) => a * inv * wv[i]);
          }
          const half = rot / 2, y = x.slice();
          for (let i = 0; i < half; i++) {
            const c = cs[positions[t] * rot + i], s = cs[positions[t] * rot + half + i];
            y[i] = x[i] * c - x[i + half] * s;
            y[i + half] = x[i + half] * c + x[i] * s;
          }
          x = y;
        }
        ref.splice(off, hd, ...x);
        if (slots[t] >= 0 && h >= hq) {
          const dst = h < hq + hkv ? kcRef : vcRef, kh = h < hq + hkv ? h - hq : h - hq - hkv;
          dst.splice((slots[t] * hkv + kh) * hd, hd, ...x);
        }
      }
    }
    assertClose(qkv, ref, `rope qkv hd=${hd} rot=${rot} norm=${norm}`, 1e-5, 1e-5);
    assertClose(kc, kcRef, "k cache", 1e-5, 1e-5);
    assertClose(vc, vcRef, "v cache", 0, 0);
  }
});

Deno.test("compute_slots follows the page table", () => {
  const pageSize = 4, ptStride = 6;
  const pageTable = Int32Array.from({ length: 3 * ptStride }, (_, i) => (i * 5 + 3) % 17);
  const rows = Int32Array.from([2, 0]), seqLens = Int32Array.from([9, 21]);
  const qStarts = Int32Array.from([0, 3, 4]);
  const slots = new Int32Array(4), positions = new Int32Array(4);
  ok(
    S.msg_compute_slots(
      p(slots),
      p(positions),
      p(pageTable),
      ptStride,
      p(rows),
      p(seqLens),
      p(qStarts),
      2,
      pageSize,
      3,
      null,
    ),
    "compute_slots",
  );
  const pos = [6, 7, 8, 20];
  const req = [0, 0, 0, 1];
  assert.deepEqual(Array.from(positions), pos);
  assert.deepEqual(
    Array.from(slots),
    pos.map((q, i) =>
      pageTable[rows[req[i]] * ptStride + Math.floor(q / pageSize)] * pageSize + q % pageSize
    ),
  );
});

// ---------------------------------------------------------------- fp8 e4m3 KV cache

/** The e4m3 byte of x (its sign from `negative`, so -0 and NaN keep theirs): NaN -> 0x7f,
 *  finite values rounding above 448 (and infinities) -> 448, else the rounded value. */
function e4m3Ref(x: number, negative: boolean): number {
  const sign = negative ? 0x80 : 0;
  if (Number.isNaN(x)) return sign | 0x7f;
  const r = e4m3RoundRef(x);
  if (r >= 448) return sign | 0x7e;
  if (r < 2 ** -6) return sign | (r * 512); // subnormal: m * 2^-9
  let e = -6;
  while (r >= 2 ** (e + 1)) e++;
  return sign | ((e + 7) << 3) | (r / 2 ** (e - 3) - 8);
}

/** The value of an e4m3 byte (NaN for 0x7f, 0xff). */
function e4m3Value(b: number): number {
  const sign = b & 0x80 ? -1 : 1, e = (b >> 3) & 15, m = b & 7;
  if (e === 15 && m === 7) return NaN;
  return sign * (e === 0 ? m * 2 ** -9 : (8 + m) * 2 ** (e - 10));
}

/** The fp8 caches msg_rope_store_kv writes (kv_dtype e4m3, no norm, no rotation) for tokens of
 *  one q, k and v head of 128 each: k = vals, v = vals reversed (vals: raw act-dtype data). */
function ropeStoreFp8(vals: Float32Array | Uint16Array, act: FloatDtype) {
  const hd = 128, n = vals.length / hd, row = 3 * hd;
  const qkv = act === F32 ? new Float32Array(n * row) : new Uint16Array(n * row);
  const rev = vals.slice().reverse();
  for (let t = 0; t < n; t++) {
    qkv.set(vals.subarray(t * hd, (t + 1) * hd), t * row + hd);
    qkv.set(rev.subarray(t * hd, (t + 1) * hd), t * row + 2 * hd);
  }
  const kc = new Uint8Array(n * hd).fill(0x55), vc = kc.slice();
  const slots = Int32Array.from({ length: n }, (_, t) => t);
  ok(
    S.msg_rope_store_kv(
      p(qkv),
      p(new Int32Array(n)),
      null,
      null,
      1e-6,
      p(new Float32Array(1)),
      0,
      p(slots),
      p(kc),
      p(vc),
      n,
      1,
      1,
      hd,
      act,
      BF16,
      FP8,
      null,
    ),
    "rope_store_kv fp8",
  );
  return { kc, vc };
}

/** Asserts the fp8 caches of ropeStoreFp8(vals) hold e4m3Ref of every value (value[i] and
 *  its sign bit negative[i]). */
function checkFp8Store(
  vals: Float32Array | Uint16Array,
  act: FloatDtype,
  value: (i: number) => number,
  negative: (i: number) => boolean,
  what: string,
) {
  const { kc, vc } = ropeStoreFp8(vals, act);
  const n = vals.length;
  for (let i = 0; i < n; i++) {
    const want = e4m3Ref(value(i), negative(i));
    for (const [got, j] of [[kc[i], i], [vc[n - 1 - i], n - 1 - i]]) {
      if (got !== want) {
        assert.fail(
          `${what}: input ${i} (${value(i)}, raw 0x${vals[i].toString(16)}): cache[${j}] = ` +
            `0x${got.toString(16)}, expected 0x${want.toString(16)}`,
        );
      }
    }
  }
}

Deno.test("fp8 e4m3: the float64 reference rounds to nearest even and saturates", () => {
  // Spot checks of the reference itself (the tests below hold the library to it).
  const cases: [number, number][] = [
    [0, 0x00],
    [2 ** -10, 0x00], // half the smallest subnormal: tie to even (0)
    [2 ** -10 * 1.0001, 0x01],
    [3 * 2 ** -10, 0x02], // tie between subnormals 1 and 2: even
    [15 * 2 ** -10, 0x08], // tie between 7 * 2^-9 and the smallest normal 2^-6: even (8)
    [2 ** -6, 0x08],
    [1, 0x38],
    [1.0625, 0x38], // tie 1 / 1.125: even
    [1.1875, 0x3a], // tie 1.125 / 1.25: even
    [432, 0x7e], // tie 416 / 448: even (448)
    [448, 0x7e],
    [463.9, 0x7e],
    [464, 0x7e], // would round to 480 (NaN): saturates
    [1e6, 0x7e],
    [Infinity, 0x7e],
  ];
  for (const [x, b] of cases) {
    assert.equal(e4m3Ref(x, false), b, `e4m3Ref(${x})`);
    assert.equal(e4m3Ref(-x, true), b | 0x80, `e4m3Ref(${-x})`);
  }
  for (let b = 0; b < 256; b++) {
    if ((b & 0x7f) !== 0x7f) assert.equal(e4m3Ref(e4m3Value(b), (b & 0x80) !== 0), b);
  }
});

Deno.test("fp8 e4m3: rope_store_kv converts every bf16 and f16 bit pattern", () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  checkFp8Store(all, BF16, (i) => bf16Value(all[i]), (i) => all[i] >= 0x8000, "bf16");
  const f16 = new Float16Array(all.buffer);
  checkFp8Store(all, F16, (i) => f16[i], (i) => all[i] >= 0x8000, "f16");
  // kv_dtype other than the act dtype or fp8 is an error.
  const x = new Float32Array(48), z = new Int32Array(1);
  const call = (kvDtype: number) =>
    S.msg_rope_store_kv(
      p(x),
      p(z),
      null,
      null,
      1e-6,
      null,
      0,
      p(z),
      p(x),
      p(x),
      1,
      1,
      1,
      16,
      F32,
      F32,
      kvDtype,
      null,
    );
  assert.throws(() => lib.check(call(BF16), "rope"), /KV cache dtype/);
  ok(call(F32), "rope");
});

Deno.test("fp8 e4m3: rope_store_kv converts f32 values at and around every rounding tie", () => {
  const r = rng(61);
  const vals: number[] = [];
  const grid = Array.from({ length: 127 }, (_, b) => e4m3Value(b));
  grid.push(480); // past the top: the midpoint 464 saturates
  for (let b = 0; b + 1 < grid.length; b++) {
    const mid = (grid[b] + grid[b + 1]) / 2;
    f32buf[0] = mid;
    const u = u32buf[0];
    for (const d of [-2, -1, 0, 1, 2]) {
      u32buf[0] = u + d;
      vals.push(f32buf[0]);
    }
    vals.push(grid[b]);
  }
  // Random magnitudes over 2^-14 .. 2^10 with random low bits, and specials.
  for (let i = 0; i < 4000; i++) vals.push(2 ** (r() * 24 - 14) * (1 + r()));
  vals.push(0, Infinity, NaN, 1e-45, 1.1754942e-38, 3.4028235e38, 2 ** -9, 2 ** -6 - 2 ** -20);
  const signed = vals.flatMap((x) => [x, -x]);
  while (signed.length % 128) signed.push(0);
  const f32 = Float32Array.from(signed), bits = new Uint32Array(f32.buffer);
  checkFp8Store(f32, F32, (i) => f32[i], (i) => bits[i] >>> 31 === 1, "f32");
});

/** Random e4m3 bytes of values uniform in (-scale, scale) (no NaN). */
function randFp8(n: number, r: () => number, scale = 2): Uint8Array {
  return Uint8Array.from({ length: n }, () => {
    const x = (r() * 2 - 1) * scale;
    return e4m3Ref(x, x < 0);
  });
}

/** Raw data of one page widened to `dtype` (what msg_kv_widen_pages writes). */
function widenRef(bytes: ArrayLike<number>, dtype: FloatDtype): Float32Array | Uint16Array {
  return encode(Array.from(bytes, e4m3Value), dtype);
}

Deno.test("kv_widen_pages widens every e4m3 byte exactly (bf16, f16, f32)", () => {
  const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
  for (const dtype of [BF16, F16, F32] as const) {
    const dk = dtype === F32 ? new Float32Array(256) : new Uint16Array(256), dv = dk.slice();
    ok(
      S.msg_kv_widen_pages(
        p(dk),
        p(dv),
        p(bytes),
        p(bytes),
        p(Int32Array.from([0])),
        1,
        p(Int32Array.from([0])),
        p(Int32Array.from([1])),
        1,
        1,
        1,
        2,
        128,
        FP8,
        dtype,
        null,
      ),
      "kv_widen_pages",
    );
    for (const d of [dk, dv]) {
      const got = decode(d, dtype);
      for (let b = 0; b < 256; b++) {
        const want = e4m3Value(b);
        if (Number.isNaN(want)) assert.ok(Number.isNaN(got[b]), `byte 0x${b.toString(16)}`);
        else assert.ok(Object.is(got[b], want), `byte 0x${b.toString(16)}: ${got[b]} != ${want}`);
      }
    }
  }
});

Deno.test("kv_widen_pages copies the pages of each request, widened, and nothing else", () => {
  const r = rng(62);
  for (const pageSize of [1, 16]) {
    for (const dtype of [BF16, F16, F32] as const) {
      const hkv = 2, hd = 24, pageElems = pageSize * hkv * hd;
      const seqLens = pageSize === 1 ? [5, 0, 9, 1] : [37, 16, 0, 1];
      const batch = seqLens.length, pagesPerRow = pageSize === 1 ? 11 : 4, ptStride = 13;
      const numPages = 64;
      const k = randFp8(numPages * pageElems, r), v = randFp8(numPages * pageElems, r);
      // Rows in reverse order, pages shuffled; unused entries point anywhere.
      const pageTable = Int32Array.from(
        { length: (batch + 2) * ptStride },
        () => Math.floor(r() * numPages),
      );
      const rows = Int32Array.from({ length: batch }, (_, b) => batch + 1 - b);
      const sentinel = dtype === F32 ? 0.3125 : 0x3e80;
      const dstElems = batch * pagesPerRow * pageElems;
      const mk = () =>
        dtype === F32
          ? new Float32Array(dstElems).fill(sentinel)
          : new Uint16Array(dstElems).fill(sentinel);
      const dk = mk(), dv = mk();
      ok(
        S.msg_kv_widen_pages(
          p(dk),
          p(dv),
          p(k),
          p(v),
          p(pageTable),
          ptStride,
          p(rows),
          p(Int32Array.from(seqLens)),
          batch,
          pagesPerRow,
          pageSize,
          hkv,
          hd,
          FP8,
          dtype,
          null,
        ),
        "kv_widen_pages",
      );
      const wantK = mk(), wantV = mk();
      for (let b = 0; b < batch; b++) {
        for (let j = 0; j < Math.ceil(seqLens[b] / pageSize); j++) {
          const src = pageTable[rows[b] * ptStride + j] * pageElems;
          const dst = (b * pagesPerRow + j) * pageElems;
          wantK.set(widenRef(k.subarray(src, src + pageElems), dtype), dst);
          wantV.set(widenRef(v.subarray(src, src + pageElems), dtype), dst);
        }
      }
      const what = `widen page ${pageSize} dtype ${dtype}`;
      assert.deepEqual(Array.from(dk), Array.from(wantK), `${what}: k`);
      assert.deepEqual(Array.from(dv), Array.from(wantV), `${what}: v`);
    }
  }
  // A seq_len over pages_per_row * page_size and a non-fp8 source are errors.
  const one = Int32Array.from([0]), buf = new Uint16Array(64);
  const call = (seqLen: number, srcDtype: number) =>
    S.msg_kv_widen_pages(
      p(buf),
      p(buf),
      p(buf),
      p(buf),
      p(one),
      1,
      p(one),
      p(Int32Array.from([seqLen])),
      1,
      1,
      4,
      1,
      8,
      srcDtype,
      BF16,
      null,
    );
  assert.throws(() => lib.check(call(5, FP8), "widen"), /seq_len 5/);
  assert.throws(() => lib.check(call(4, BF16), "widen"), /unsupported source dtype/);
  ok(call(4, FP8), "widen");
});

// ---------------------------------------------------------------- attention

interface AttnCase {
  seqLens: number[];
  qLens: number[];
  hq: number;
  hkv: number;
  hd: number;
  pageSize: number;
  dtype: FloatDtype;
  /** fp8 e4m3 caches (decode) instead of caches in dtype. */
  fp8?: boolean;
}

/** A paged cache filled with random k/v for every position of every request, the queries
 *  (rows of a wider qkv-like buffer) and the fp64 reference output. */
/** msg_attention_decode of attnSetup's buffers (one query row per request), caches in
 *  `kvDtype`. */
function decodeOn(
  s: ReturnType<typeof attnSetup>,
  c: AttnCase,
  out: Float32Array | Uint16Array,
  seqLens: Int32Array,
  maxSeqLen: number,
  kvDtype: number,
): number {
  return S.msg_attention_decode(
    p(out),
    p(s.q),
    s.qStride,
    p(s.k),
    p(s.v),
    p(s.pageTable),
    s.ptStride,
    p(s.rows),
    p(seqLens),
    seqLens.length,
    maxSeqLen,
    c.hq,
    c.hkv,
    c.hd,
    c.pageSize,
    s.scale,
    c.dtype,
    kvDtype,
    null,
  );
}

function attnSetup(c: AttnCase, r: () => number) {
  const { seqLens, qLens, hq, hkv, hd, pageSize } = c;
  const batch = seqLens.length;
  const ptStride = Math.max(...seqLens.map((s) => Math.ceil(s / pageSize))) + 1;
  const numPages = batch * ptStride + 3;
  // Distinct, shuffled pages per request; rows of the page table in reverse order.
  const pages = Array.from({ length: numPages }, (_, i) => i).sort(() => r() - 0.5);
  const pageTable = new Int32Array((batch + 1) * ptStride);
  const rows = Int32Array.from({ length: batch }, (_, b) => batch - b);
  for (let b = 0; b < batch; b++) {
    for (let j = 0; j < ptStride; j++) pageTable[rows[b] * ptStride + j] = pages[b * ptStride + j];
  }
  const kvRow = hkv * hd;
  const kv8 = c.fp8 ? [0, 1].map(() => randFp8(numPages * pageSize * kvRow, r)) : [];
  const kv = c.fp8
    ? kv8.map((b) => Array.from(b, e4m3Value))
    : [randArray(numPages * pageSize * kvRow, r), randArray(numPages * pageSize * kvRow, r)]
      .map((v) => decode(encode(v, c.dtype), c.dtype));
  const qStarts = [0];
  for (const q of qLens) qStarts.push(qStarts[qStarts.length - 1] + q);
  const totalQ = qStarts[batch], qStride = (hq + 2 * hkv) * hd;
  const q = decode(encode(randArray(totalQ * qStride, r), c.dtype), c.dtype);
  const scale = 1 / Math.sqrt(hd);
  const ref = new Float64Array(totalQ * hq * hd);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < qLens[b]; i++) {
      const t = qStarts[b] + i, pos = seqLens[b] - qLens[b] + i;
      for (let h = 0; h < hq; h++) {
        const kh = Math.floor(h / (hq / hkv));
        const slotOff = (pp: number) =>
          ((pageTable[rows[b] * ptStride + Math.floor(pp / pageSize)] * pageSize + pp % pageSize) *
              hkv + kh) * hd;
        const scores = [];
        for (let pp = 0; pp <= pos; pp++) {
          let s = 0;
          for (let d = 0; d < hd; d++) s += q[t * qStride + h * hd + d] * kv[0][slotOff(pp) + d];
          scores.push(s * scale);
        }
        const pr = softmax(scores);
        for (let pp = 0; pp <= pos; pp++) {
          for (let d = 0; d < hd; d++) {
            ref[(t * hq + h) * hd + d] += pr[pp] * kv[1][slotOff(pp) + d];
          }
        }
      }
    }
  }
  return {
    ptStride,
    pageTable,
    rows,
    qStarts: Int32Array.from(qStarts),
    totalQ,
    qStride,
    q: encode(q, c.dtype),
    k: c.fp8 ? kv8[0] : encode(kv[0], c.dtype),
    v: c.fp8 ? kv8[1] : encode(kv[1], c.dtype),
    scale,
    ref,
  };
}

Deno.test("attention extend: ragged batch over cached prefixes, page sizes 1/4/16, GQA", () => {
  const r = rng(6);
  const cases: AttnCase[] = [
    { seqLens: [7, 20, 33], qLens: [7, 5, 1], hq: 4, hkv: 2, hd: 16, pageSize: 1, dtype: F32 },
    { seqLens: [70, 3, 18], qLens: [9, 3, 18], hq: 4, hkv: 1, hd: 24, pageSize: 4, dtype: F32 },
    { seqLens: [40, 17], qLens: [40, 2], hq: 2, hkv: 2, hd: 12, pageSize: 16, dtype: F32 },
    { seqLens: [25, 9], qLens: [6, 9], hq: 6, hkv: 2, hd: 16, pageSize: 4, dtype: BF16 },
    // Few queries over a long prefix: keys split into chunks and merged.
    { seqLens: [530, 20, 300], qLens: [3, 20, 8], hq: 4, hkv: 2, hd: 16, pageSize: 16, dtype: F32 },
    { seqLens: [600], qLens: [5], hq: 2, hkv: 1, hd: 68, pageSize: 4, dtype: BF16 },
  ];
  for (const c of cases) {
    const s = attnSetup(c, r);
    const batch = c.seqLens.length, seqLens = Int32Array.from(c.seqLens);
    const out = c.dtype === F32
      ? new Float32Array(s.totalQ * c.hq * c.hd)
      : new Uint16Array(s.totalQ * c.hq * c.hd);
    ok(
      S.msg_attention_extend(
        p(out),
        p(s.q),
        s.qStride,
        p(s.k),
        p(s.v),
        p(s.pageTable),
        s.ptStride,
        p(s.rows),
        p(seqLens),
        p(s.qStarts),
        batch,
        s.totalQ,
        Math.max(...c.qLens),
        Math.max(...c.seqLens),
        c.hq,
        c.hkv,
        c.hd,
        c.pageSize,
        s.scale,
        c.dtype,
        null,
      ),
      "attention_extend",
    );
    const tol = c.dtype === F32 ? 1e-5 : 2 ** -8;
    assertClose(decode(out, c.dtype), s.ref, `extend ${JSON.stringify(c)}`, tol, tol);
  }
});

Deno.test("attention decode: one query per request over the paged cache", () => {
  const r = rng(7);
  // seq_len 0 is a padded row (zeros); over 256 keys the context is split and merged.
  const lens: Record<number, number[]> = {
    1: [0, 9, 17, 100],
    4: [300, 9, 600, 1],
    16: [257, 513, 17, 100],
  };
  for (const pageSize of [1, 4, 16]) {
    const c: AttnCase = {
      seqLens: lens[pageSize],
      qLens: [1, 1, 1, 1],
      hq: 8,
      hkv: 2,
      hd: 32,
      pageSize,
      dtype: F32,
    };
    const s = attnSetup(c, r);
    const seqLens = Int32Array.from(c.seqLens);
    const out = new Float32Array(4 * c.hq * c.hd);
    // Decode reads query row b with the qkv stride.
    ok(decodeOn(s, c, out, seqLens, 128, F32), "attention_decode");
    assertClose(out, s.ref, `decode page ${pageSize}`, 1e-5, 1e-5);
  }
});

Deno.test("attention decode over fp8 caches matches fp64 on the widened values", () => {
  const r = rng(63);
  const cases: AttnCase[] = [
    { seqLens: [0, 9, 17, 100], qLens: [], hq: 8, hkv: 2, hd: 32, pageSize: 1, dtype: BF16 },
    { seqLens: [300, 9, 600, 1], qLens: [], hq: 4, hkv: 4, hd: 64, pageSize: 16, dtype: F16 },
    { seqLens: [257, 40, 13], qLens: [], hq: 16, hkv: 1, hd: 16, pageSize: 7, dtype: F32 },
  ];
  for (const c0 of cases) {
    const c = { ...c0, qLens: c0.seqLens.map(() => 1), fp8: true };
    const s = attnSetup(c, r);
    const batch = c.seqLens.length, n = batch * c.hq * c.hd;
    const out = c.dtype === F32 ? new Float32Array(n) : new Uint16Array(n);
    const seqLens = Int32Array.from(c.seqLens);
    ok(decodeOn(s, c, out, seqLens, Math.max(...c.seqLens), FP8), "attention_decode fp8");
    const tol = c.dtype === F32 ? 1e-5 : c.dtype === BF16 ? 2 ** -8 : 2 ** -10;
    assertClose(decode(out, c.dtype), s.ref, `decode fp8 ${JSON.stringify(c0)}`, tol, tol);
  }
  // Caches in another 16-bit dtype than q are an error.
  const x = new Uint16Array(64), i1 = Int32Array.from([0]), l1 = Int32Array.from([1]);
  assert.throws(
    () =>
      lib.check(
        S.msg_attention_decode(
          p(x),
          p(x),
          8,
          p(x),
          p(x),
          p(i1),
          1,
          p(i1),
          p(l1),
          1,
          1,
          1,
          1,
          8,
          1,
          1,
          BF16,
          F16,
          null,
        ),
        "decode",
      ),
    /KV cache dtype/,
  );
});

// ---------------------------------------------------------------- sampling, logprobs

interface SP {
  temperature: number;
  topP: number;
  minP: number;
  topK: number;
  seed: bigint;
  step: number;
}

/** Rows of msg_sampling_params as laid out in memory (32 bytes each). */
function encodeParams(ps: SP[]): Uint8Array {
  const buf = new Uint8Array(32 * ps.length), dv = new DataView(buf.buffer);
  ps.forEach((s, i) => {
    dv.setFloat32(i * 32, s.temperature, true);
    dv.setFloat32(i * 32 + 4, s.topP, true);
    dv.setFloat32(i * 32 + 8, s.minP, true);
    dv.setInt32(i * 32 + 12, s.topK, true);
    dv.setBigUint64(i * 32 + 16, s.seed, true);
    dv.setInt32(i * 32 + 24, s.step, true);
  });
  return buf;
}

function uniformRef(seed: bigint, step: number): number {
  const M = (1n << 64n) - 1n;
  let z = (seed ^ (BigInt.asUintN(64, BigInt(step)) * 0x9E3779B97F4A7C15n)) & M;
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & M;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & M;
  z = z ^ (z >> 31n);
  return Number(z >> 11n) * 2 ** -53;
}

/** The header's sampling semantics in fp64 (real weights instead of fixed point): ranks by
 *  logit descending, ties by lower index; top-k, top-p and min-p keep a prefix of the ranks;
 *  the draw walks the kept tokens in INDEX order. `fragile` marks a row where a filter or
 *  the draw lies so close to a boundary that fp32 may legitimately decide the other way. */
function sampleRef(x: number[], sp: SP): { token: number; kept: Set<number>; fragile: boolean } {
  const V = x.length;
  const order = Array.from({ length: V }, (_, i) => i);
  order.sort((a, b) => x[b] - x[a] || a - b);
  if (sp.temperature <= 0) return { token: order[0], kept: new Set([order[0]]), fragile: false };
  const T = Math.fround(sp.temperature);
  const z = x.map((v) => Math.fround(v / T)), zmax = z[order[0]];
  const w = z.map((v) => Math.exp(v - zmax));
  const near = (a: number, b: number) => Math.abs(a - b) <= 1e-4 * Math.max(1, Math.abs(b));
  let fragile = false;
  const K = sp.topK > 0 && sp.topK < V ? sp.topK : V;
  let S = 0;
  for (let j = 0; j < K; j++) S += w[order[j]];
  let L = K;
  if (sp.topP < 1) {
    let cum = 0, j = 0;
    for (; j < K; j++) {
      if (j > 0 && near(cum, sp.topP * S)) fragile = true;
      if (j > 0 && cum >= sp.topP * S) break;
      cum += w[order[j]];
    }
    L = j;
  }
  if (sp.minP > 0) {
    let j = 0;
    for (; j < L; j++) {
      if (near(w[order[j]], sp.minP)) fragile = true;
      if (j > 0 && w[order[j]] < sp.minP) break;
    }
    L = j;
  }
  const kept = new Set(order.slice(0, L));
  let total = 0;
  for (let j = 0; j < L; j++) total += w[order[j]];
  const target = uniformRef(sp.seed, sp.step) * total;
  let cum = 0, token = -1;
  for (let i = 0; i < V && token < 0; i++) {
    if (!kept.has(i)) continue;
    cum += w[i];
    if (near(cum, target)) fragile = true;
    if (cum > target) token = i;
  }
  return { token, kept, fragile };
}

function sample(logits: Float32Array, ps: SP[], vocab: number) {
  // Every buffer is held in a variable for the duration of the call (a temporary could be
  // collected while native code still reads it).
  const tokens = new Int32Array(ps.length), lps = new Float32Array(ps.length);
  const work = logits.slice(), params = encodeParams(ps);
  ok(S.msg_sample(p(tokens), p(lps), p(work), p(params), ps.length, vocab, null), "sample");
  return { tokens, lps };
}

Deno.test("msg_uniform is the header's splitmix formula", () => {
  for (
    const [seed, step] of [[0n, 0], [1n, 0], [42n, 7], [0xffffffffffffffffn, -1], [
      123456789n,
      2 ** 31 - 1,
    ]] as const
  ) {
    assert.equal(S.msg_uniform(seed, step), uniformRef(seed, step));
  }
});

Deno.test("sample follows temperature, top-k, top-p, min-p and the seeded inverse CDF", () => {
  const r = rng(8);
  const vocab = 1000, ps: SP[] = [];
  for (const temperature of [0, 0.5, 1, 1.3]) {
    for (const topK of [0, 1, 5, 50]) {
      for (const [topP, minP] of [[1, 0], [0.9, 0], [0.5, 0.05], [1, 0.2]]) {
        ps.push({
          temperature,
          topK,
          topP,
          minP,
          seed: BigInt(ps.length * 7919),
          step: ps.length % 5,
        });
      }
    }
  }
  const logits = Float32Array.from(randArray(ps.length * vocab, r, 4));
  const { tokens, lps } = sample(logits, ps, vocab);
  let compared = 0;
  ps.forEach((sp, i) => {
    const row = Array.from(logits.subarray(i * vocab, (i + 1) * vocab));
    const ref = sampleRef(row, sp);
    assert.ok(ref.kept.has(tokens[i]), `row ${i}: token ${tokens[i]} was filtered out`);
    if (!ref.fragile) {
      assert.equal(tokens[i], ref.token, `row ${i} ${JSON.stringify({ ...sp, seed: 0 })}`);
      compared++;
    }
    assertClose([lps[i]], [logSoftmax(row)[tokens[i]]], `logprob row ${i}`, 1e-4, 1e-5);
    if (sp.topK === 1 || sp.temperature === 0) {
      assert.equal(tokens[i], row.indexOf(Math.max(...row)), `row ${i} is greedy`);
    }
  });
  assert.ok(compared > ps.length * 0.9, `only ${compared} rows compared`);
  // Seeded: the same call again, and every row alone, give the same tokens.
  assert.deepEqual(sample(logits, ps, vocab).tokens, tokens);
  for (const i of [5, 17, 40]) {
    assert.equal(
      sample(logits.slice(i * vocab, (i + 1) * vocab), [ps[i]], vocab).tokens[0],
      tokens[i],
    );
  }
});

Deno.test("sample over a large vocabulary (bucketed ranking) matches the reference", () => {
  const r = rng(11);
  const vocab = 40000;
  const ps: SP[] = [
    { temperature: 1, topK: 0, topP: 1, minP: 0, seed: 5n, step: 0 },
    { temperature: 0.6, topK: 0, topP: 0.9, minP: 0, seed: 6n, step: 1 },
    { temperature: 1.2, topK: 300, topP: 0.95, minP: 0, seed: 7n, step: 2 },
    { temperature: 0.8, topK: 0, topP: 1, minP: 0.01, seed: 8n, step: 3 },
    { temperature: 2, topK: 0, topP: 0.5, minP: 0.001, seed: 9n, step: 4 },
  ];
  // Flat rows (as a random-weight model gives) and a peaked one with repeated values.
  const logits = Float32Array.from(randArray(ps.length * vocab, r, 2));
  for (let i = 0; i < vocab; i++) {
    logits[vocab + i] = Math.round(logits[vocab + i] * 8) + (i % 7 === 0 ? 6 : 0);
  }
  const { tokens } = sample(logits, ps, vocab);
  ps.forEach((sp, i) => {
    const ref = sampleRef(Array.from(logits.subarray(i * vocab, (i + 1) * vocab)), sp);
    assert.ok(ref.kept.has(tokens[i]), `row ${i}: token ${tokens[i]} was filtered out`);
    if (!ref.fragile) assert.equal(tokens[i], ref.token, `row ${i}`);
  });
});

Deno.test("greedy picks the lowest index among tied maxima", () => {
  const logits = Float32Array.from([0, 1, 5, 2, 5, -1, 5]);
  const sp = { temperature: 0, topK: 0, topP: 1, minP: 0, seed: 1n, step: 0 };
  const two = new Float32Array(14);
  two.set(logits);
  two.set(logits, 7);
  const { tokens, lps } = sample(two, [sp, { ...sp, temperature: 1, topK: 1 }], 7);
  assert.deepEqual(Array.from(tokens), [2, 2]);
  assertClose([lps[0]], [logSoftmax(logits)[2]], "greedy logprob");
});

Deno.test("sampling over many seeds matches the (filtered) softmax; filters hold", () => {
  const logits = [1, 0.5, 0, -0.5, 2, 1.5, -3, 0.2, 1.5, 0.7];
  const vocab = logits.length, n = 6000, T = 0.8;
  const rows = new Float32Array(n * vocab);
  for (let i = 0; i < n; i++) rows.set(logits, i * vocab);
  const base = { temperature: T, topK: 0, topP: 1, minP: 0, step: 3 };
  const ps = Array.from({ length: n }, (_, i) => ({ ...base, seed: BigInt(i) * 1000003n }));
  const probs = softmax(logits.map((v) => v / T));
  for (const filt of [{}, { topP: 0.6 }, { minP: 0.3 }, { topK: 3, topP: 0.8 }, { topK: 4 }]) {
    const fp = ps.map((s) => ({ ...s, ...filt }));
    const kept = sampleRef(logits, fp[0]).kept;
    const tokens = sample(rows, fp, vocab).tokens;
    const counts = new Array(vocab).fill(0);
    for (const t of tokens) counts[t]++;
    // Excluded tokens are never drawn; kept ones with their renormalized probability.
    let mass = 0;
    kept.forEach((t) => mass += probs[t]);
    probs.forEach((p0, t) => {
      const pr = kept.has(t) ? p0 / mass : 0, sd = Math.sqrt(pr * (1 - pr) / n);
      assert.ok(
        Math.abs(counts[t] / n - pr) < 5 * sd + 1e-3,
        `${JSON.stringify(filt)} token ${t}: ${counts[t] / n} vs ${pr}`,
      );
    });
  }
  // Tied logits (indices 5 and 8) at the top-2 boundary: the lower index is kept.
  const k2 = ps.slice(0, 200).map((s) => ({ ...s, topK: 2 }));
  const seen = new Set(sample(rows.subarray(0, vocab * 200), k2, vocab).tokens);
  assert.deepEqual([...seen].sort(), [4, 5], `top-2 set: ${[...seen]}`);
});

Deno.test("token_logprobs and top_logprobs (descending, ties by lower index)", () => {
  const r = rng(9);
  const rows = 5, vocab = 301, k = 7;
  const logits = Float32Array.from(randArray(rows * vocab, r, 5));
  logits[3] = logits[10] = logits[20] = 30; // a three-way tie at the top of row 0
  const targets = Int32Array.from({ length: rows }, () => Math.floor(r() * vocab));
  const out = new Float32Array(rows);
  ok(S.msg_token_logprobs(p(out), p(logits), p(targets), rows, vocab, null), "token_logprobs");
  const ids = new Int32Array(rows * k), lps = new Float32Array(rows * k);
  ok(S.msg_top_logprobs(p(ids), p(lps), p(logits), rows, vocab, k, null), "top_logprobs");
  for (let i = 0; i < rows; i++) {
    const row = Array.from(logits.subarray(i * vocab, (i + 1) * vocab)), ls = logSoftmax(row);
    assertClose([out[i]], [ls[targets[i]]], `token_logprobs row ${i}`, 1e-4, 1e-5);
    const order = row.map((_, j) => j).sort((a, b) => row[b] - row[a] || a - b).slice(0, k);
    assert.deepEqual(Array.from(ids.subarray(i * k, (i + 1) * k)), order);
    assertClose(lps.subarray(i * k, (i + 1) * k), order.map((j) => ls[j]), "top lps", 1e-4, 1e-5);
  }
});

Deno.test("apply_penalties: frequency, presence and repetition per distinct token", () => {
  const r = rng(10);
  const rows = 3, vocab = 50;
  const logits = Float32Array.from(randArray(rows * vocab, r, 3));
  const tokens = Int32Array.from([4, 4, 9, 4, 1, /* row 1: none */ 7, 8, 7, 49]);
  const starts = Int32Array.from([0, 5, 5, 9]);
  const presence = Float32Array.from([0.5, 1, 0]), frequency = Float32Array.from([0.25, 0, 0.1]);
  const repetition = Float32Array.from([1.3, 1, 2]);
  const ref = Array.from(logits);
  for (let i = 0; i < rows; i++) {
    const counts = new Map<number, number>();
    for (let j = starts[i]; j < starts[i + 1]; j++) {
      counts.set(tokens[j], (counts.get(tokens[j]) ?? 0) + 1);
    }
    for (const [t, c] of counts) {
      let v = ref[i * vocab + t] - (frequency[i] * c + presence[i]);
      if (repetition[i] !== 1) v = v > 0 ? v / repetition[i] : v * repetition[i];
      ref[i * vocab + t] = v;
    }
  }
  ok(
    S.msg_apply_penalties(
      p(logits),
      vocab,
      p(tokens),
      p(starts),
      p(presence),
      p(frequency),
      p(repetition),
      rows,
      null,
    ),
    "apply_penalties",
  );
  assertClose(logits, ref, "penalties", 1e-5, 1e-5);
});
