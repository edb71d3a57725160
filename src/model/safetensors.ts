/**
 * Safetensors reading: one `model.safetensors` or a sharded folder
 * (`model.safetensors.index.json` + shards). Only headers are read at open; a tensor's
 * bytes are read on demand with a file handle at its offset, straight into a caller's
 * buffer (e.g. pinned host memory), so no weight file is ever held in memory whole.
 *
 * Layout of a file: u64 little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?}`, then the data;
 * offsets are relative to the first byte after the header.
 */

import { basename, join } from "node:path";
import { type ModelConfig, ModelError } from "./config.ts";

export { ModelError };

/** Bytes per element of every safetensors dtype. */
export const DTYPE_SIZES: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};

/** Where one tensor lives. `byteOffset` is absolute in `file`. */
export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Full path of the file holding it. */
  file: string;
  byteOffset: number;
  byteLength: number;
}

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Parses one safetensors file's header (reads only the header bytes). */
export async function readSafetensorsHeader(
  path: string,
): Promise<{ tensors: TensorInfo[]; metadata: Record<string, string> }> {
  const name = basename(path);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ModelError(`${name}: missing`);
    throw new ModelError(`${name}: cannot open (${(e as Error).message})`);
  }
  try {
    const size = (await file.stat()).size;
    if (size < 8) throw new ModelError(`${name}: truncated file (${size} bytes, no header)`);
    const lenBytes = new Uint8Array(8);
    await readFully(file, lenBytes, 0, name);
    const headerLen = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
    if (headerLen < 2 || headerLen > 100_000_000 || 8 + headerLen > size) {
      throw new ModelError(`${name}: corrupt header (length ${headerLen}, file ${size} bytes)`);
    }
    const headerBytes = new Uint8Array(headerLen);
    await readFully(file, headerBytes, 8, name);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
    } catch {
      throw new ModelError(`${name}: corrupt header (not valid JSON)`);
    }
    if (typeof header !== "object" || header === null || Array.isArray(header)) {
      throw new ModelError(`${name}: corrupt header (not a JSON object)`);
    }
    const dataStart = 8 + headerLen;
    const tensors: TensorInfo[] = [];
    let metadata: Record<string, string> = {};
    for (const [tname, raw] of Object.entries(header as Record<string, unknown>)) {
      if (tname === "__metadata__") {
        metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      tensors.push(parseEntry(name, tname, raw, dataStart, size, path));
    }
    return { tensors, metadata };
  } finally {
    file.close();
  }
}

function parseEntry(
  fileName: string,
  tname: string,
  raw: unknown,
  dataStart: number,
  fileSize: number,
  path: string,
): TensorInfo {
  const bad = (what: string): never => {
    throw new ModelError(`${fileName}: tensor ${tname}: ${what}`);
  };
  if (typeof raw !== "object" || raw === null) return bad("corrupt header entry");
  const { dtype, shape, data_offsets: off } = raw as Record<string, unknown>;
  if (typeof dtype !== "string" || !(dtype in DTYPE_SIZES)) {
    return bad(`unknown dtype ${JSON.stringify(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    return bad(`bad shape ${JSON.stringify(shape)}`);
  }
  if (
    !Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0) ||
    off[1] < off[0]
  ) {
    return bad(`bad data_offsets ${JSON.stringify(off)}`);
  }
  const [begin, end] = off as [number, number];
  if (dataStart + end > fileSize) {
    return bad(
      `data [${begin}, ${end}) lies outside the file (truncated? ${
        fileSize - dataStart
      } data bytes)`,
    );
  }
  const expect = numel(shape) * DTYPE_SIZES[dtype];
  if (end - begin !== expect) {
    bad(`${end - begin} bytes, but ${dtype} [${shape.join(", ")}] needs ${expect}`);
  }
  return {
    name: tname,
    dtype,
    shape: shape as number[],
    file: path,
    byteOffset: dataStart + begin,
    byteLength: end - begin,
  };
}

async function readFully(file: Deno.FsFile, into: Uint8Array, at: number, name: string) {
  await file.seek(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < into.length) {
    const n = await file.read(into.subarray(done, Math.min(into.length, done + CHUNK)));
    if (n === null || n === 0) throw new ModelError(`${name}: truncated file`);
    done += n;
  }
}

function readFullySync(file: Deno.FsFile, into: Uint8Array, at: number, name: string) {
  file.seekSync(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < into.length) {
    const n = file.readSync(into.subarray(done, Math.min(into.length, done + CHUNK)));
    if (n === null || n === 0) throw new ModelError(`${name}: truncated file`);
    done += n;
  }
}

/** Largest single read call (bytes). */
const CHUNK = 64 << 20;

/** The weights of one model folder: the tensor directory plus on-demand reads. */
export class SafetensorsFolder {
  private constructor(
    /** The folder. */
    readonly dir: string,
    /** Every tensor by name. */
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    /** `__metadata__` of the first file. */
    readonly metadata: Record<string, string>,
  ) {}

  /** Opens `dir`: `model.safetensors.index.json` if present, else `model.safetensors`. */
  static async open(dir: string): Promise<SafetensorsFolder> {
    const indexPath = join(dir, "model.safetensors.index.json");
    let files: string[];
    let weightMap: Record<string, string> | null = null;
    let indexText: string | null = null;
    try {
      indexText = await Deno.readTextFile(indexPath);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new ModelError(`model.safetensors.index.json: cannot read (${(e as Error).message})`);
      }
    }
    if (indexText !== null) {
      let index: unknown;
      try {
        index = JSON.parse(indexText);
      } catch {
        throw new ModelError(`model.safetensors.index.json: invalid JSON`);
      }
      const wm = (index as { weight_map?: unknown } | null)?.weight_map;
      if (typeof wm !== "object" || wm === null || Array.isArray(wm)) {
        throw new ModelError(`model.safetensors.index.json: missing "weight_map"`);
      }
      weightMap = wm as Record<string, string>;
      files = [...new Set(Object.values(weightMap))];
      for (const f of files) {
        if (typeof f !== "string" || f.includes("/") || f.includes("\\")) {
          throw new ModelError(`model.safetensors.index.json: bad file name ${JSON.stringify(f)}`);
        }
      }
    } else {
      try {
        await Deno.stat(join(dir, "model.safetensors"));
      } catch {
        throw new ModelError(
          `${dir}: no model.safetensors or model.safetensors.index.json in the folder`,
        );
      }
      files = ["model.safetensors"];
    }
    const headers = await Promise.all(files.map((f) => readSafetensorsHeader(join(dir, f))));
    const tensors = new Map<string, TensorInfo>();
    for (const h of headers) {
      for (const t of h.tensors) {
        if (tensors.has(t.name)) {
          throw new ModelError(`${basename(t.file)}: tensor ${t.name} appears in two files`);
        }
        tensors.set(t.name, t);
      }
    }
    if (weightMap) {
      for (const [name, f] of Object.entries(weightMap)) {
        const t = tensors.get(name);
        if (!t || basename(t.file) !== f) {
          throw new ModelError(`${f}: tensor ${name} listed in the index is missing from the file`);
        }
      }
    }
    return new SafetensorsFolder(dir, tensors, headers[0]?.metadata ?? {});
  }

  /** All tensors, in name order. */
  list(): TensorInfo[] {
    return [...this.tensors.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** One tensor's info; ModelError when absent. */
  get(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelError(`${basename(this.dir)}: missing tensor ${name}`);
    return t;
  }

  /** Reads a tensor's raw bytes (little-endian) into `into` (allocated when omitted;
   *  must hold at least byteLength bytes). Returns the filled view. */
  async readTensor(name: string, into?: Uint8Array): Promise<Uint8Array> {
    const t = this.get(name);
    return await this.readRange(name, 0, t.byteLength, into);
  }

  /** Reads bytes [start, start+length) of a tensor's data (e.g. a row block of a TP shard). */
  async readRange(
    name: string,
    start: number,
    length: number,
    into?: Uint8Array,
  ): Promise<Uint8Array> {
    const t = this.get(name);
    const buf = checkRange(t, start, length, into);
    const file = await Deno.open(t.file, { read: true });
    try {
      await readFully(file, buf, t.byteOffset + start, basename(t.file));
    } finally {
      file.close();
    }
    return buf;
  }

  /** Synchronous `readTensor` (for workers that stage weights without awaiting). */
  readTensorSync(name: string, into?: Uint8Array): Uint8Array {
    return this.readRangeSync(name, 0, this.get(name).byteLength, into);
  }

  /** Synchronous `readRange`: bytes [start, start+length) of a tensor's data. */
  readRangeSync(name: string, start: number, length: number, into?: Uint8Array): Uint8Array {
    const t = this.get(name);
    const buf = checkRange(t, start, length, into);
    const file = Deno.openSync(t.file, { read: true });
    try {
      readFullySync(file, buf, t.byteOffset + start, basename(t.file));
    } finally {
      file.close();
    }
    return buf;
  }
}

function checkRange(t: TensorInfo, start: number, length: number, into?: Uint8Array) {
  if (start < 0 || length < 0 || start + length > t.byteLength) {
    throw new RangeError(`${t.name}: range [${start}, ${start + length}) outside the tensor`);
  }
  if (into && into.length < length) {
    throw new RangeError(`${t.name}: buffer of ${into.length} bytes < ${length}`);
  }
  return into ? into.subarray(0, length) : new Uint8Array(length);
}

/** The tensors (name, shape) a model of this configuration must have, HF naming. */
export function expectedWeights(cfg: ModelConfig): { name: string; shape: number[] }[] {
  const h = cfg.hiddenSize, d = cfg.headDim, q = cfg.numHeads * d, kv = cfg.numKvHeads * d;
  const out: { name: string; shape: number[] }[] = [
    { name: "model.embed_tokens.weight", shape: [cfg.vocabSize, h] },
  ];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push({ name: p + "input_layernorm.weight", shape: [h] });
    out.push({ name: p + "self_attn.q_proj.weight", shape: [q, h] });
    out.push({ name: p + "self_attn.k_proj.weight", shape: [kv, h] });
    out.push({ name: p + "self_attn.v_proj.weight", shape: [kv, h] });
    if (cfg.attentionBias) {
      out.push({ name: p + "self_attn.q_proj.bias", shape: [q] });
      out.push({ name: p + "self_attn.k_proj.bias", shape: [kv] });
      out.push({ name: p + "self_attn.v_proj.bias", shape: [kv] });
    }
    out.push({ name: p + "self_attn.o_proj.weight", shape: [h, q] });
    if (cfg.oProjBias) out.push({ name: p + "self_attn.o_proj.bias", shape: [h] });
    if (cfg.qkNorm) {
      out.push({ name: p + "self_attn.q_norm.weight", shape: [d] });
      out.push({ name: p + "self_attn.k_norm.weight", shape: [d] });
    }
    out.push({ name: p + "post_attention_layernorm.weight", shape: [h] });
    out.push({ name: p + "mlp.gate_proj.weight", shape: [cfg.intermediateSize, h] });
    out.push({ name: p + "mlp.up_proj.weight", shape: [cfg.intermediateSize, h] });
    out.push({ name: p + "mlp.down_proj.weight", shape: [h, cfg.intermediateSize] });
  }
  out.push({ name: "model.norm.weight", shape: [h] });
  if (!cfg.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocabSize, h] });
  return out;
}

/** Float dtypes the engine loads. */
export const WEIGHT_DTYPES = ["BF16", "F16", "F32"] as const;

/** Checks a folder's tensors against `expectedWeights(cfg)`; throws the first problem as a
 *  one-line ModelError naming the file. Extra tensors are allowed (and ignored). */
export function checkWeights(cfg: ModelConfig, folder: SafetensorsFolder): void {
  const where = folder.tensors.has("model.embed_tokens.weight")
    ? basename(folder.get("model.embed_tokens.weight").file)
    : "model.safetensors";
  for (const w of expectedWeights(cfg)) {
    const t = folder.tensors.get(w.name);
    if (!t) throw new ModelError(`${where}: missing tensor ${w.name} (config.json expects it)`);
    const file = basename(t.file);
    if (t.shape.length !== w.shape.length || t.shape.some((v, i) => v !== w.shape[i])) {
      throw new ModelError(
        `${file}: tensor ${w.name} has shape [${t.shape.join(", ")}], config expects [${
          w.shape.join(", ")
        }]`,
      );
    }
    if (!(WEIGHT_DTYPES as readonly string[]).includes(t.dtype)) {
      throw new ModelError(
        `${file}: tensor ${w.name} has dtype ${t.dtype}, expected BF16, F16 or F32`,
      );
    }
  }
}

/** Decodes a BF16/F16/F32 tensor's bytes to float64 (for references and tests). */
export function toFloat64(bytes: Uint8Array, dtype: string): Float64Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const esz = DTYPE_SIZES[dtype];
  const n = bytes.byteLength / esz;
  const out = new Float64Array(n);
  if (dtype === "BF16") {
    const f = new Float32Array(1), u = new Uint32Array(f.buffer);
    for (let i = 0; i < n; i++) {
      u[0] = dv.getUint16(2 * i, true) << 16;
      out[i] = f[0];
    }
  } else if (dtype === "F16") {
    for (let i = 0; i < n; i++) out[i] = halfToFloat(dv.getUint16(2 * i, true));
  } else if (dtype === "F32") {
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
  } else {
    throw new ModelError(`cannot convert dtype ${dtype} to float`);
  }
  return out;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
