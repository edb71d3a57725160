/**
 * Safetensors writing, streamed: the header is written from the tensor specs up front and
 * the data follows in order, chunk by chunk, so a 16 GB model never sits in memory. Above a
 * shard size the output is split HF style: `model-0000i-of-0000n.safetensors` plus
 * `model.safetensors.index.json`.
 */

import { join } from "node:path";
import { DTYPE_SIZES, numel } from "./safetensors.ts";

/** Name, dtype and shape of a tensor to write. */
export interface TensorSpec {
  name: string;
  dtype: string;
  shape: number[];
}

/** A tensor with its bytes in memory. */
export interface TensorData extends TensorSpec {
  data: Uint8Array;
}

/** Byte size of a spec's data. */
export function specBytes(s: TensorSpec): number {
  const esz = DTYPE_SIZES[s.dtype];
  if (esz === undefined) throw new Error(`unknown dtype ${s.dtype}`);
  return numel(s.shape) * esz;
}

/** Writes one safetensors file whose tensors arrive in `specs` order through `write`. */
export class SafetensorsWriter {
  private index = 0;
  private doneInTensor = 0;

  private constructor(
    private file: Deno.FsFile,
    private specs: TensorSpec[],
    private path: string,
  ) {}

  /** Creates (truncates) `path` and writes the header. */
  static async create(
    path: string,
    specs: TensorSpec[],
    metadata: Record<string, string> = {},
  ): Promise<SafetensorsWriter> {
    const header: Record<string, unknown> = {};
    if (Object.keys(metadata).length) header.__metadata__ = metadata;
    let off = 0;
    for (const s of specs) {
      const n = specBytes(s);
      header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + n] };
      off += n;
    }
    let json = JSON.stringify(header);
    // Pad with spaces to a multiple of 8 so the data is aligned, as the Python writer does.
    json += " ".repeat((8 - ((new TextEncoder().encode(json).length) % 8)) % 8);
    const hb = new TextEncoder().encode(json);
    const file = await Deno.open(path, { write: true, create: true, truncate: true });
    const lenBytes = new Uint8Array(8);
    new DataView(lenBytes.buffer).setBigUint64(0, BigInt(hb.length), true);
    const w = new SafetensorsWriter(file, specs, path);
    await w.writeAll(lenBytes);
    await w.writeAll(hb);
    w.skipEmpty();
    return w;
  }

  /** Appends data bytes (may span tensors). Throws if more than the specs hold. */
  async write(chunk: Uint8Array): Promise<void> {
    let rest = chunk.length;
    let at = 0;
    while (rest > 0) {
      if (this.index >= this.specs.length) throw new Error(`${this.path}: too much data`);
      const room = specBytes(this.specs[this.index]) - this.doneInTensor;
      const n = Math.min(room, rest);
      this.doneInTensor += n;
      at += n;
      rest -= n;
      if (this.doneInTensor === specBytes(this.specs[this.index])) {
        this.index++;
        this.doneInTensor = 0;
        this.skipEmpty();
      }
    }
    await this.writeAll(chunk.subarray(0, at));
  }

  /** Closes the file; throws if some tensor data is missing. */
  async close(): Promise<void> {
    this.file.close();
    if (this.index < this.specs.length) {
      throw new Error(`${this.path}: data missing from tensor ${this.specs[this.index].name}`);
    }
    await Promise.resolve();
  }

  private skipEmpty() {
    while (this.index < this.specs.length && specBytes(this.specs[this.index]) === 0) this.index++;
  }

  private async writeAll(b: Uint8Array) {
    let done = 0;
    while (done < b.length) done += await this.file.write(b.subarray(done));
  }
}

/** Writes in-memory tensors to one safetensors file. */
export async function writeSafetensors(
  path: string,
  tensors: TensorData[],
  metadata: Record<string, string> = {},
): Promise<void> {
  for (const t of tensors) {
    if (t.data.length !== specBytes(t)) {
      throw new Error(`${t.name}: ${t.data.length} bytes, shape needs ${specBytes(t)}`);
    }
  }
  const w = await SafetensorsWriter.create(path, tensors, metadata);
  for (const t of tensors) await w.write(t.data);
  await w.close();
}

/** Splits specs, in order, into shards of at most `maxShardBytes` (a bigger tensor gets a
 *  shard of its own). */
export function planShards(specs: TensorSpec[], maxShardBytes: number): TensorSpec[][] {
  const shards: TensorSpec[][] = [];
  let cur: TensorSpec[] = [], size = 0;
  for (const s of specs) {
    const n = specBytes(s);
    if (cur.length && size + n > maxShardBytes) {
      shards.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(s);
    size += n;
  }
  if (cur.length) shards.push(cur);
  return shards;
}

/** Writes a model's weights into `dir`: `model.safetensors` when the total fits in
 *  `maxShardBytes`, else HF-style shards plus `model.safetensors.index.json`.
 *  `produce(spec, write)` must write exactly that tensor's bytes through `write`. */
export async function writeSafetensorsModel(
  dir: string,
  specs: TensorSpec[],
  produce: (spec: TensorSpec, write: (chunk: Uint8Array) => Promise<void>) => Promise<void>,
  opts: { maxShardBytes?: number; metadata?: Record<string, string> } = {},
): Promise<string[]> {
  const max = opts.maxShardBytes ?? 4 * 1024 ** 3;
  const metadata = opts.metadata ?? { format: "pt" };
  const shards = planShards(specs, max);
  const names = shards.length <= 1
    ? ["model.safetensors"]
    : shards.map((_, i) =>
      `model-${String(i + 1).padStart(5, "0")}-of-${
        String(shards.length).padStart(5, "0")
      }.safetensors`
    );
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards.length; i++) {
    const w = await SafetensorsWriter.create(join(dir, names[i]), shards[i], metadata);
    for (const s of shards[i]) {
      weightMap[s.name] = names[i];
      await produce(s, (c) => w.write(c));
    }
    await w.close();
  }
  if (shards.length === 0) await writeSafetensors(join(dir, names[0]), [], metadata);
  if (shards.length > 1) {
    const total = specs.reduce((a, s) => a + specBytes(s), 0);
    const index = { metadata: { total_size: total }, weight_map: weightMap };
    await Deno.writeTextFile(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify(index, null, 2) + "\n",
    );
  }
  return names;
}
