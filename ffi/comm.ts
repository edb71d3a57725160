/**
 * Communicators of tensor parallelism: a unique id made once (on the main thread, or by
 * node 0's rendezvous) and handed to every rank, then one communicator per rank. On CUDA
 * this is NCCL; on the CPU backend, a shared-memory segment named from the id.
 */
import type { Device, Handle } from "./device.ts";
import { type Backend, loadNative } from "./lib.ts";

/** Bytes of a unique id. */
export const UNIQUE_ID_BYTES = 128;

/** A fresh unique id for a communicator of `backend` (loads the library briefly). NCCL's id
 *  names a bootstrap socket of this process, so the process must outlive the ranks' join. */
export function makeUniqueId(backend: Backend): Uint8Array {
  const lib = loadNative(backend);
  const id = new Uint8Array(UNIQUE_ID_BYTES);
  lib.check(lib.sym.msg_comm_unique_id(Deno.UnsafePointer.of(id)), "communicator unique id");
  // The CUDA library stays loaded: NCCL's bootstrap root lives in it.
  if (backend === "cpu") lib.close();
  return id;
}

/** A CPU communicator id whose ranks meet over TCP (ranks on several hosts): rank 0 listens
 *  at host:port, the others connect there (the id layout of cuda/include/minisgl.h). */
export function tcpUniqueId(host: string, port: number): Uint8Array {
  const id = makeUniqueId("cpu");
  const addr = new TextEncoder().encode(`tcp:${host.includes(":") ? `[${host}]` : host}:${port}`);
  if (addr.length > UNIQUE_ID_BYTES - 17) throw new Error(`host name too long: ${host}`);
  id.set(addr, 16);
  return id;
}

/** This rank's communicator; `destroy` it when done. */
export class Communicator {
  private constructor(
    private dev: Device,
    readonly handle: Handle,
    readonly rank: number,
    readonly size: number,
  ) {}

  /** Joins rank `rank` of `size`; blocks until every rank has joined. */
  static join(dev: Device, size: number, rank: number, id: Uint8Array): Communicator {
    const out = new BigUint64Array(1);
    const idCopy = new Uint8Array(id); // a pointer needs an ArrayBuffer of its own
    dev.check(
      dev.sym.msg_comm_init(Deno.UnsafePointer.of(out), size, rank, Deno.UnsafePointer.of(idCopy)),
      `join communicator as rank ${rank} of ${size}`,
    );
    return new Communicator(dev, Deno.UnsafePointer.create(out[0]), rank, size);
  }

  destroy(): void {
    this.dev.check(this.dev.sym.msg_comm_destroy(this.handle), "communicator destroy");
  }
}

/** GPUs the CUDA library sees (0 when it cannot load or finds none). */
export function cudaDeviceCount(): number {
  try {
    const lib = loadNative("cuda");
    const n = new Int32Array(1);
    const rc = lib.sym.msg_device_count(Deno.UnsafePointer.of(n));
    return rc === 0 ? n[0] : 0;
  } catch {
    return 0;
  }
}

/** What a rank tells the others about its peer buffer (structured-clone safe). */
export interface PeerBufferInfo {
  ptr: bigint;
  handle: Uint8Array;
  pid: number;
}

/** The one-shot peer-memory all-reduce of one rank (CUDA only), for messages of at most
 *  `maxBytes`; larger ones go through the communicator (NCCL). */
export class PeerAllReduce {
  private constructor(
    private dev: Device,
    readonly handle: Handle,
    readonly maxBytes: number,
  ) {}

  /** Allocates this rank's peer-visible buffer; hand the info to every other rank. */
  static allocBuffer(dev: Device, maxBytes: number): { buf: Handle; info: PeerBufferInfo } {
    const out = new BigUint64Array(1), handle = new Uint8Array(64);
    dev.check(
      dev.sym.msg_peer_buffer_alloc(
        Deno.UnsafePointer.of(out),
        BigInt(maxBytes),
        Deno.UnsafePointer.of(handle),
      ),
      "peer buffer",
    );
    return { buf: Deno.UnsafePointer.create(out[0]), info: { ptr: out[0], handle, pid: Deno.pid } };
  }

  /** Opens every peer's buffer (infos in rank order, this rank's included). */
  static create(
    dev: Device,
    rank: number,
    buf: Handle,
    maxBytes: number,
    infos: PeerBufferInfo[],
  ): PeerAllReduce {
    const ptrs = BigUint64Array.from(infos, (i) => i.ptr);
    const handles = new Uint8Array(64 * infos.length);
    infos.forEach((i, r) => handles.set(i.handle, 64 * r));
    const pids = Int32Array.from(infos, (i) => i.pid);
    const out = new BigUint64Array(1);
    dev.check(
      dev.sym.msg_peer_all_reduce_create(
        Deno.UnsafePointer.of(out),
        infos.length,
        rank,
        buf,
        BigInt(maxBytes),
        Deno.UnsafePointer.of(ptrs),
        Deno.UnsafePointer.of(handles),
        Deno.UnsafePointer.of(pids),
      ),
      "peer all-reduce",
    );
    return new PeerAllReduce(dev, Deno.UnsafePointer.create(out[0]), maxBytes);
  }

  /** Sums n elements of `buf` (a device pointer of `dtype`) over the ranks, in place. */
  allReduce(buf: Handle, n: number, dtype: number, stream: Handle): void {
    this.dev.check(
      this.dev.sym.msg_peer_all_reduce(buf, BigInt(n), dtype, this.handle, stream),
      "peer all_reduce",
    );
  }
}
