/// <reference lib="deno.worker" />
/**
 * GPU worker: one per device (the CPU backend runs through the same worker). It loads
 * the native library, weights and KV pool, then serves forward batches from a ring in
 * order, pushing results to the other ring. While batch N runs on the device it already
 * launches batch N+1 if one is waiting, so the device never idles on the host.
 *
 * Protocol: postMessage {type:"init", config, toWorker, fromWorker}; answers
 * {type:"progress", stage, done, total}*, then {type:"ready", info} or {type:"error",
 * message}. A failure while serving posts {type:"fatal", message} and closes the rings.
 */
import { ModelRunner, type Pending } from "../src/runtime/model_runner.ts";
import { loadModelConfig } from "../src/model/config.ts";
import { Ring } from "../src/ipc/ring.ts";
import {
  decodeBatch,
  encodeResult,
  KIND_BATCH,
  KIND_SHUTDOWN,
  recordKind,
} from "../src/ipc/batch_codec.ts";
import type { GpuWorkerConfig } from "../src/engine/config.ts";

interface InitMessage {
  type: "init";
  config: GpuWorkerConfig;
  toWorker: SharedArrayBuffer;
  fromWorker: SharedArrayBuffer;
}

function serve(runner: ModelRunner, input: Ring, output: Ring) {
  // On the CPU backend launch() computes synchronously: holding a result back while the
  // next batch runs would only delay it.
  const pipelined = runner.dev.backend === "cuda";
  let pending: Pending | null = null;
  for (;;) {
    const msg = pending ? input.tryPop() : input.pop();
    if (msg === null) {
      if (pending) {
        output.push(encodeResult(runner.finish(pending)));
        pending = null;
        continue;
      }
      return; // closed
    }
    const kind = recordKind(msg);
    if (kind === KIND_SHUTDOWN) {
      if (pending) output.push(encodeResult(runner.finish(pending)));
      return;
    }
    if (kind !== KIND_BATCH) throw new Error(`unexpected record kind ${kind}`);
    const next = runner.launch(decodeBatch(msg));
    if (pending) output.push(encodeResult(runner.finish(pending)));
    pending = next;
    if (!pipelined) {
      output.push(encodeResult(runner.finish(pending)));
      pending = null;
    }
  }
}

self.onmessage = async (ev: MessageEvent<InitMessage>) => {
  if (ev.data?.type !== "init") return;
  const { config: c, toWorker, fromWorker } = ev.data;
  const input = new Ring(toWorker), output = new Ring(fromWorker);
  let runner: ModelRunner;
  try {
    const cfg = await loadModelConfig(c.modelDir);
    runner = await ModelRunner.create(cfg, {
      backend: c.device,
      deviceIndex: c.deviceIndex,
      modelDir: c.modelDir,
      pageSize: c.pageSize,
      numPages: c.numPages,
      memFraction: c.memFraction,
      maxRows: c.maxRunningRequests,
      maxPrefillLength: c.maxPrefillLength,
      cudaGraphMaxBs: c.cudaGraphMaxBs,
      dtype: c.dtype,
      cpuThreads: c.cpuThreads,
      attn: c.attn,
    }, (stage, done, total) => self.postMessage({ type: "progress", stage, done, total }));
  } catch (e) {
    self.postMessage({ type: "error", message: (e as Error).message });
    return;
  }
  self.postMessage({ type: "ready", info: runner.info });
  // Serving blocks this thread (Atomics.wait); give the ready message a moment to leave.
  await new Promise((r) => setTimeout(r, 0));
  try {
    serve(runner, input, output);
  } catch (e) {
    self.postMessage({ type: "fatal", message: (e as Error).message });
    input.close();
    output.close();
  }
  self.close();
};
