/// <reference lib="deno.worker" />
/**
 * One rank of tests/device/tp_test.ts on GPU `rank`: joins the NCCL communicator, opens the
 * peers' buffers (exchanged through the main thread), then runs NCCL all-reduce, the
 * one-shot peer all-reduce (direct and as a CUDA graph replayed 3 times) and the column
 * all-gather on rank-dependent f32 data, posting what it got back.
 */
import { Device, DType } from "../../ffi/device.ts";
import { Ops } from "../../ffi/ops.ts";
import { Communicator, PeerAllReduce, type PeerBufferInfo } from "../../ffi/comm.ts";

/** Element i of rank r's input (exact in f32, so sums are exact in any order). */
export const inputOf = (r: number, i: number) => ((i * 7 + r * 13) % 61) - 30 + r * 0.5;

self.onmessage = (ev: MessageEvent) => {
  if (ev.data.type !== "start") return;
  const { rank, size, id, n, cols, rows } = ev.data;
  const dev = new Device("cuda", rank);
  const stream = dev.createStream();
  const ops = new Ops(dev, stream);
  const comm = Communicator.join(dev, size, rank, id);
  const { buf, info } = PeerAllReduce.allocBuffer(dev, 1 << 20);
  self.onmessage = (e: MessageEvent) => {
    if (e.data.type !== "peers") return;
    const peer = PeerAllReduce.create(dev, rank, buf, 1 << 20, e.data.infos as PeerBufferInfo[]);
    const x = dev.alloc(DType.F32, [n]);
    const host = Float32Array.from({ length: n }, (_, i) => inputOf(rank, i));
    const read = () => {
      const h = new Float32Array(n);
      dev.download(h, x, stream);
      return h;
    };
    dev.upload(x, host, stream);
    ops.allReduce(x, n, comm.handle);
    const nccl = read();
    dev.upload(x, host, stream);
    peer.allReduce(x.ptr, n, DType.F32, stream);
    const oneShot = read();
    // Graph: reset from a device copy, reduce; replayed three times.
    const src = dev.alloc(DType.F32, [n]);
    dev.upload(src, host, stream);
    const g = dev.capture(stream, () => {
      dev.copy(x, src, src.bytes, stream);
      peer.allReduce(x.ptr, n, DType.F32, stream);
      ops.allReduce(x, n, comm.handle);
    });
    const graphRuns: Float32Array[] = [];
    for (let k = 0; k < 3; k++) dev.launchGraph(g, stream), graphRuns.push(read());
    const local = dev.alloc(DType.F32, [rows, cols]);
    dev.upload(
      local,
      Float32Array.from({ length: rows * cols }, (_, i) => inputOf(rank, i)),
      stream,
    );
    const full = dev.alloc(DType.F32, [rows, size * cols - 1]);
    const scratch = dev.alloc(DType.F32, [size * rows * cols]);
    ops.allGatherCols(full, local, scratch, rows, comm.handle);
    const gathered = new Float32Array(full.numel);
    dev.download(gathered, full, stream);
    self.postMessage({ nccl, oneShot, graphRuns, gathered });
  };
  self.postMessage({ type: "peer", info });
};
