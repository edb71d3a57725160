/**
 * What the device tests share: both native libraries (the CUDA one under test, the CPU twin
 * as reference), device buffers, a seeded generator and bf16/f16 conversions.
 * MINISGL_KERNELS_SELF=1 loads the CPU library on both sides, which checks a test harness on
 * a machine without a GPU.
 */
import { loadNative, type NativeLib } from "../../ffi/lib.ts";

export const F32 = 0, F16 = 1, BF16 = 2, FP8_E4M3 = 6;
export type Arr = Float32Array | Int32Array | Uint16Array | Uint8Array;
export const ptr = (a: Arr | BigUint64Array) =>
  Deno.UnsafePointer.of(a as unknown as Uint8Array<ArrayBuffer>);

/** The CPU library on both sides (MINISGL_KERNELS_SELF=1). */
export const SELF = Deno.env.get("MINISGL_KERNELS_SELF") === "1";

/** True when this machine has an NVIDIA GPU (the driver lists one), whatever our library
 *  does: then a library that does not load is a failure, not a reason to skip. */
function gpuPresent(): boolean {
  try {
    for (const _ of Deno.readDirSync("/proc/driver/nvidia/gpus")) return true;
  } catch {
    // No NVIDIA driver.
  }
  return false;
}

/** The device tests must run (not be skipped): MINISGL_REQUIRE_CUDA=1 or a GPU is present. */
export const CUDA_REQUIRED = !SELF &&
  (Deno.env.get("MINISGL_REQUIRE_CUDA") === "1" || gpuPresent());

let reported = false;

/** The CPU library and the one under test, or null when no CUDA device can be used. When
 *  CUDA is required (CUDA_REQUIRED) and cannot be used, a failing test says why, so the run
 *  fails instead of reporting every device test as ignored. */
export function loadPair(): { cpu: NativeLib; gpu: NativeLib } | null {
  let why: string;
  try {
    const cpu = loadNative("cpu");
    const gpu = SELF ? loadNative("cpu") : loadNative("cuda");
    const n = new Int32Array(1);
    const rc = gpu.sym.msg_device_count(ptr(n));
    if (rc === 0 && n[0] >= 1) return { cpu, gpu };
    why = `msg_device_count returned ${rc} with ${n[0]} devices`;
  } catch (err) {
    why = err instanceof Error ? err.message : String(err);
  }
  if (CUDA_REQUIRED && !reported) {
    reported = true;
    Deno.test("device: the CUDA library loads and sees a GPU", () => {
      throw new Error(
        `CUDA is required (MINISGL_REQUIRE_CUDA=1 or a GPU is present) but unusable: ${why}`,
      );
    });
  }
  return null;
}

/** msg_sampling_params rows (32 bytes each): [temperature, top_p, min_p, top_k] of row i from
 *  f(i), seed 1000 + 7919 i, step 3 i. */
export function samplingParams(
  rows: number,
  f: (i: number) => [number, number, number, number],
): Uint8Array {
  const buf = new ArrayBuffer(rows * 32), dv = new DataView(buf);
  for (let i = 0; i < rows; i++) {
    const [t, p, mp, k] = f(i);
    dv.setFloat32(i * 32, t, true);
    dv.setFloat32(i * 32 + 4, p, true);
    dv.setFloat32(i * 32 + 8, mp, true);
    dv.setInt32(i * 32 + 12, k, true);
    dv.setBigUint64(i * 32 + 16, BigInt(1000 + i * 7919), true);
    dv.setInt32(i * 32 + 24, i * 3, true);
  }
  return new Uint8Array(buf);
}

/** A seeded generator (mulberry32) with normal and integer draws. */
export function makeRng(seed: number) {
  const rand = (): number => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const randn = (n: number, scale = 1): Float32Array => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      a[i] = Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand()) * scale;
    }
    return a;
  };
  const randint = (n: number, hi: number) => Int32Array.from({ length: n }, () => rand() * hi | 0);
  return { rand, randn, randint };
}

const f32b = new Float32Array(1), u32b = new Uint32Array(f32b.buffer);
/** Raw bf16 bits of `a` (round to nearest even; NaN stays NaN). */
export function toBf16(a: Float32Array): Uint16Array {
  const o = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) {
    f32b[0] = a[i];
    const u = u32b[0];
    o[i] = (u & 0x7fffffff) > 0x7f800000
      ? (u >>> 16) | 0x40
      : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return o;
}
export function fromBf16(a: Uint16Array): Float32Array {
  const o = new Float32Array(a.length);
  const u = new Uint32Array(o.buffer);
  for (let i = 0; i < a.length; i++) u[i] = a[i] << 16;
  return o;
}
/** Raw 16-bit values of `a` in bf16 or f16, and back. */
export function to16(a: Float32Array, dtype: number): Uint16Array {
  return dtype === F16 ? new Uint16Array(new Float16Array(a).buffer) : toBf16(a);
}
export function from16(a: Uint16Array, dtype: number): Float32Array {
  if (dtype === F16) return Float32Array.from(new Float16Array(a.buffer, a.byteOffset, a.length));
  return fromBf16(a);
}

/** The fp8 e4m3 bytes of `vals` (raw data of act dtype `dtype`) as the CPU library stores
 *  them: msg_rope_store_kv with kv_dtype e4m3, no norm and no rotation, the values in the k
 *  and v heads of 128 of one token after another. */
export function toE4m3(cpu: NativeLib, vals: Uint16Array | Float32Array, dtype: number) {
  const hd = 128, n = Math.ceil(vals.length / (2 * hd)), row = 3 * hd;
  const qkv = dtype === F32 ? new Float32Array(n * row) : new Uint16Array(n * row);
  for (let t = 0; t < n; t++) {
    qkv.set(vals.subarray(2 * t * hd, Math.min(vals.length, 2 * (t + 1) * hd)), t * row + hd);
  }
  const kc = new Uint8Array(n * hd), vc = new Uint8Array(n * hd);
  const slots = Int32Array.from({ length: n }, (_, t) => t);
  cpu.check(
    cpu.sym.msg_rope_store_kv(
      ptr(qkv),
      ptr(new Int32Array(n)),
      null,
      null,
      1e-6,
      ptr(new Float32Array(1)),
      0,
      ptr(slots),
      ptr(kc),
      ptr(vc),
      n,
      1,
      1,
      hd,
      dtype,
      dtype,
      FP8_E4M3,
      null,
    ),
    "rope_store_kv (e4m3 conversion)",
  );
  const out = new Uint8Array(vals.length);
  for (let t = 0; t < n; t++) {
    const o = 2 * t * hd;
    out.set(kc.subarray(t * hd, t * hd + Math.min(hd, vals.length - o)), o);
    if (o + hd < vals.length) {
      out.set(vc.subarray(t * hd, t * hd + Math.min(hd, vals.length - o - hd)), o + hd);
    }
  }
  return out;
}

/** Device memory of a library (host memory for the CPU one); `off` bytes of padding in
 *  front of the data, for misalignment tests. */
export class DevBuf {
  readonly base: Deno.PointerValue;
  readonly p: Deno.PointerValue;
  constructor(readonly lib: NativeLib, readonly bytes: number, readonly off = 0) {
    const h = new BigUint64Array(1);
    lib.check(lib.sym.msg_malloc(ptr(h), BigInt(Math.max(bytes, 16) + off)), "malloc");
    this.base = Deno.UnsafePointer.create(h[0]);
    this.p = off ? Deno.UnsafePointer.offset(this.base!, off) : this.base;
  }
  /** A copy of a host array. */
  static of(lib: NativeLib, a: Arr, off = 0): DevBuf {
    const d = new DevBuf(lib, a.byteLength, off);
    lib.check(lib.sym.msg_memcpy_h2d(d.p, ptr(a), BigInt(a.byteLength), null), "h2d");
    return d;
  }
  /** The contents, as an array of the kind and length of `like`. */
  read<T extends Arr>(like: T): T {
    const out = new (like.constructor as new (n: number) => T)(like.length);
    const s = this.lib.sym;
    this.lib.check(s.msg_memcpy_d2h(ptr(out), this.p, BigInt(out.byteLength), null), "d2h");
    this.lib.check(s.msg_device_sync(), "sync");
    return out;
  }
  /** Fills with a byte (0xff makes NaN of every float type), so unwritten output shows. */
  poison(byte = 0xff) {
    this.lib.check(this.lib.sym.msg_memset(this.p, byte, BigInt(this.bytes), null), "memset");
  }
  free() {
    this.lib.check(this.lib.sym.msg_free(this.base), "free");
  }
}
