/**
 * Typed wrappers over the native library: device memory as `Tensor` handles, copies,
 * streams, events and graphs. Together with ffi/ops.ts this is the only code that holds
 * native pointers; callers see tensors and numbers.
 */
import { type Backend, loadNative, type NativeLib } from "./lib.ts";

/** Storage types, with the header's codes. */
export enum DType {
  F32 = 0,
  F16 = 1,
  BF16 = 2,
  I32 = 3,
  I64 = 4,
  U8 = 5,
  /** fp8 e4m3: KV caches only (minisgl.h). */
  FP8_E4M3 = 6,
}

/** Bytes per element of a dtype. */
export function dtypeSize(d: DType): number {
  if (d === DType.F32 || d === DType.I32) return 4;
  if (d === DType.I64) return 8;
  return d === DType.U8 || d === DType.FP8_E4M3 ? 1 : 2;
}

/** A view of device memory: pointer, dtype and shape (row-major, contiguous). */
export class Tensor {
  constructor(
    readonly ptr: Deno.PointerValue,
    readonly dtype: DType,
    readonly shape: readonly number[],
  ) {}
  /** Number of elements. */
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get bytes(): number {
    return this.numel * dtypeSize(this.dtype);
  }
  /** Rows [start, start + count) of the first dimension, as a tensor. */
  rows(start: number, count: number): Tensor {
    const rowElems = this.shape.slice(1).reduce((a, b) => a * b, 1);
    return this.at(start * rowElems, [count, ...this.shape.slice(1)]);
  }
  /** The tensor of `shape` that starts `elemOffset` elements into this one. */
  at(elemOffset: number, shape: readonly number[], dtype = this.dtype): Tensor {
    const off = elemOffset * dtypeSize(this.dtype);
    const p = off === 0 ? this.ptr : Deno.UnsafePointer.offset(this.ptr!, off);
    return new Tensor(p, dtype, shape);
  }
  /** Same memory, another shape of the same size. */
  view(shape: readonly number[]): Tensor {
    return new Tensor(this.ptr, this.dtype, shape);
  }
}

/** An opaque stream, event or graph handle. */
export type Handle = Deno.PointerValue;

type Typed = Int32Array | Float32Array | Uint8Array | Uint16Array | BigUint64Array;

/** One device of one backend (the CPU backend counts as one device). */
export class Device {
  readonly lib: NativeLib;
  private out = new BigUint64Array(2);
  private outPtr: Deno.PointerValue;

  constructor(readonly backend: Backend, readonly index = 0) {
    this.lib = loadNative(backend);
    this.outPtr = Deno.UnsafePointer.of(this.out);
    if (backend === "cuda") {
      const n = new Int32Array(1);
      this.lib.check(this.lib.sym.msg_device_count(Deno.UnsafePointer.of(n)), "CUDA device count");
      if (index >= n[0]) throw new Error(`CUDA device ${index} not found (${n[0]} devices)`);
      this.lib.check(this.lib.sym.msg_set_device(index), "cudaSetDevice");
    }
  }

  get sym() {
    return this.lib.sym;
  }

  /** Called after every successful native call with its name; null normally. `bench latency
   *  --ops` records a CUDA event there to time each op of a decode step. */
  onCall: ((what: string) => void) | null = null;

  /** Throws with the library's message when status != 0. */
  check(status: number, what: string): void {
    this.lib.check(status, what);
    if (this.onCall) this.onCall(what);
  }

  name(): string {
    const buf = new Uint8Array(256);
    this.check(this.sym.msg_device_name(this.index, Deno.UnsafePointer.of(buf), 256), "name");
    return new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
  }

  /** Free and total memory in bytes. */
  memInfo(): { free: number; total: number } {
    const o = this.outPtr;
    this.check(this.sym.msg_mem_info(o, Deno.UnsafePointer.offset(o!, 8)), "memory info");
    return { free: Number(this.out[0]), total: Number(this.out[1]) };
  }

  /** Device memory for a tensor of `shape`. */
  alloc(dtype: DType, shape: readonly number[]): Tensor {
    const bytes = Math.max(1, shape.reduce((a, b) => a * b, 1) * dtypeSize(dtype));
    this.check(this.sym.msg_malloc(this.outPtr, BigInt(bytes)), `alloc ${bytes} bytes`);
    return new Tensor(Deno.UnsafePointer.create(this.out[0]), dtype, shape);
  }

  free(t: Tensor): void {
    this.check(this.sym.msg_free(t.ptr), "free");
  }

  /** Page-locked host memory of `bytes` bytes, with a byte view over it. */
  hostAlloc(bytes: number): { ptr: Deno.PointerValue; buf: ArrayBuffer } {
    this.check(this.sym.msg_host_alloc(this.outPtr, BigInt(bytes)), `host alloc ${bytes}`);
    const ptr = Deno.UnsafePointer.create(this.out[0]);
    return { ptr, buf: Deno.UnsafePointerView.getArrayBuffer(ptr!, bytes) };
  }

  hostFree(ptr: Deno.PointerValue): void {
    this.check(this.sym.msg_host_free(ptr), "host free");
  }

  /** Copies a host array (pinned or not) into device memory at `dst`. */
  upload(dst: Tensor, src: Typed, stream: Handle = null, dstByteOffset = 0): void {
    const d = dstByteOffset ? Deno.UnsafePointer.offset(dst.ptr!, dstByteOffset) : dst.ptr;
    this.check(
      this.sym.msg_memcpy_h2d(d, Deno.UnsafePointer.of(src), BigInt(src.byteLength), stream),
      "copy to device",
    );
  }

  /** Copies from a host pointer (a pinned staging buffer) into device memory. */
  uploadPtr(dst: Tensor, src: Deno.PointerValue, bytes: number, stream: Handle = null, off = 0) {
    const d = off ? Deno.UnsafePointer.offset(dst.ptr!, off) : dst.ptr;
    this.check(this.sym.msg_memcpy_h2d(d, src, BigInt(bytes), stream), "copy to device");
  }

  /** Copies device memory into a host pointer (asynchronous on CUDA). */
  downloadPtr(dst: Deno.PointerValue, src: Tensor, bytes: number, stream: Handle = null) {
    this.check(this.sym.msg_memcpy_d2h(dst, src.ptr, BigInt(bytes), stream), "copy to host");
  }

  /** Copies device memory into a host array and waits for it. */
  download(dst: Typed, src: Tensor, stream: Handle = null): void {
    this.check(
      this.sym.msg_memcpy_d2h(Deno.UnsafePointer.of(dst), src.ptr, BigInt(dst.byteLength), stream),
      "copy to host",
    );
    this.sync(stream);
  }

  copy(dst: Tensor, src: Tensor, bytes = src.bytes, stream: Handle = null): void {
    this.check(this.sym.msg_memcpy_d2d(dst.ptr, src.ptr, BigInt(bytes), stream), "copy");
  }

  memset(dst: Tensor, value: number, stream: Handle = null): void {
    this.check(this.sym.msg_memset(dst.ptr, value, BigInt(dst.bytes), stream), "memset");
  }

  sync(stream: Handle = null): void {
    this.check(this.sym.msg_stream_sync(stream), "stream sync");
  }

  createStream(): Handle {
    this.check(this.sym.msg_stream_create(this.outPtr), "stream create");
    return Deno.UnsafePointer.create(this.out[0]);
  }

  createEvent(): Handle {
    this.check(this.sym.msg_event_create(this.outPtr), "event create");
    return Deno.UnsafePointer.create(this.out[0]);
  }

  record(event: Handle, stream: Handle): void {
    this.check(this.sym.msg_event_record(event, stream), "event record");
  }

  waitEvent(event: Handle): void {
    this.check(this.sym.msg_event_sync(event), "event sync");
  }

  /** True when all work recorded before the event has finished (never blocks). */
  eventDone(event: Handle): boolean {
    const done = new Int32Array(1);
    this.check(this.sym.msg_event_query(event, Deno.UnsafePointer.of(done)), "event query");
    return done[0] !== 0;
  }

  /** Milliseconds between two recorded events. */
  elapsedMs(start: Handle, end: Handle): number {
    const f = new Float32Array(1);
    this.check(
      this.sym.msg_event_elapsed_ms(start, end, Deno.UnsafePointer.of(f)),
      "event elapsed",
    );
    return f[0];
  }

  /** Captures what `body` launches on `stream` into a graph. */
  capture(stream: Handle, body: () => void): Handle {
    this.check(this.sym.msg_graph_begin(stream), "graph capture begin");
    try {
      body();
    } catch (e) {
      this.sym.msg_graph_end(stream, this.outPtr);
      throw e;
    }
    this.check(this.sym.msg_graph_end(stream, this.outPtr), "graph capture end");
    return Deno.UnsafePointer.create(this.out[0]);
  }

  launchGraph(graph: Handle, stream: Handle): void {
    this.check(this.sym.msg_graph_launch(graph, stream), "graph launch");
  }

  destroyGraph(graph: Handle): void {
    this.check(this.sym.msg_graph_destroy(graph), "graph destroy");
  }

  close(): void {
    this.lib.close();
  }
}
