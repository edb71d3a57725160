/**
 * What a decode must read at the least, and the device copy bandwidth to divide it by (the
 * memory roofline of bench/latency.ts and bench/offline.ts, the bandwidth of bench/attention.ts).
 */
import { loadModelConfig, type ModelConfig } from "../src/model/config.ts";
import { SafetensorsFolder } from "../src/model/safetensors.ts";
import { Device, DType, type Handle } from "../ffi/device.ts";
import type { KvCacheDtype } from "../src/core/defaults.ts";

const ELT = 2; // bf16 / fp16 weights (and KV cache unless fp8)

export interface ModelBytes {
  cfg: ModelConfig;
  /** Every tensor of the checkpoint. */
  weightBytes: number;
  /** The input embedding (read one row per token unless it is also the LM head). */
  embedBytes: number;
  /** K and V of one token over all layers. */
  kvPerToken: number;
}

/** The bytes of the model in `dir`, with its KV cache in `kv` (fp8: one byte an element). */
export async function modelBytes(dir: string, kv: KvCacheDtype = "auto"): Promise<ModelBytes> {
  const cfg = await loadModelConfig(dir);
  const folder = await SafetensorsFolder.open(dir);
  let weightBytes = 0, embedBytes = 0;
  for (const [name, t] of folder.tensors) {
    weightBytes += t.byteLength;
    if (name.endsWith("embed_tokens.weight")) embedBytes = t.byteLength;
  }
  const kvElement = kv === "fp8_e4m3" ? 1 : ELT;
  const kvPerToken = cfg.numLayers * 2 * cfg.numKvHeads * cfg.headDim * kvElement;
  return { cfg, weightBytes, embedBytes, kvPerToken };
}

/** Weight bytes one step of `rows` tokens reads: every matrix once, an embedding row a token
 *  (all of it when tied to the LM head, which reads it whole). */
export function stepWeightBytes(m: ModelBytes, rows: number): number {
  if (m.cfg.tieWordEmbeddings) return m.weightBytes;
  return m.weightBytes - m.embedBytes + rows * m.cfg.hiddenSize * ELT;
}

/** Bytes one decode step of `bs` rows at mean length `seqLen` must read. */
export function decodeStepBytes(m: ModelBytes, bs: number, seqLen: number): number {
  return stepWeightBytes(m, bs) + bs * seqLen * m.kvPerToken;
}

/** Device-to-device copy bandwidth (bytes read + written per second) of `bytes`-long buffers,
 *  median of 10 copies after 2 warm-ups, on `stream`. */
export function copyBandwidth(dev: Device, bytes = 1 << 30, stream: Handle = null): number {
  const x = dev.alloc(DType.U8, [bytes]), y = dev.alloc(DType.U8, [bytes]);
  dev.memset(x, 7);
  const e0 = dev.createEvent(), e1 = dev.createEvent();
  const times: number[] = [];
  for (let i = 0; i < 12; i++) {
    dev.record(e0, stream);
    dev.copy(y, x, bytes, stream);
    dev.record(e1, stream);
    dev.waitEvent(e1);
    if (i >= 2) times.push(dev.elapsedMs(e0, e1));
  }
  for (const e of [e0, e1]) dev.check(dev.sym.msg_event_destroy(e), "event destroy");
  dev.free(x);
  dev.free(y);
  times.sort((p, q) => p - q);
  return (2 * bytes) / (times[times.length >> 1] / 1000);
}

/** copyBandwidth() of device `index` of `backend` in a process of its own (the engine's
 *  process never loads the library on its main thread); NaN, with a warning, when that fails. */
export async function copyBandwidthApart(index: number, backend = "cuda"): Promise<number> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, String(index), backend],
    stderr: "inherit",
  }).output();
  const bw = out.success ? Number(new TextDecoder().decode(out.stdout).trim()) : NaN;
  if (!Number.isFinite(bw)) console.warn("copy bandwidth: not measured (see above)");
  return bw;
}

/**
 * The memory floor of a decode workload run to its max_tokens (ignore_eos): the KV every decode
 * step must read (output token t >= 2 of a request of `input` prompt tokens reads input + t - 1
 * keys; the first comes from the prefill) and the weights once a step (at least max_tokens
 * steps: a request's tokens come one step apart). Prefill compute is not counted.
 */
export function workloadReadBytes(
  m: ModelBytes,
  requests: { input: number; output: number }[],
): { kvBytes: number; weightBytes: number } {
  let keyReads = 0, steps = 0;
  for (const { input, output } of requests) {
    keyReads += Math.max(0, output - 1) * (input + output / 2);
    steps = Math.max(steps, output);
  }
  return { kvBytes: keyReads * m.kvPerToken, weightBytes: steps * stepWeightBytes(m, 1) };
}

if (import.meta.main) {
  // deno run -A bench/roofline.ts [DEVICE [cuda|cpu]]: prints the copy bandwidth in bytes/s.
  const backend = Deno.args[1] === "cpu" ? "cpu" : "cuda";
  console.log(copyBandwidth(new Device(backend, Number(Deno.args[0] ?? 0))));
}
