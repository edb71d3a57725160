/**
 * Weights from safetensors to device memory: each tensor is read in chunks into one of two
 * pinned staging buffers and copied asynchronously while the next chunk is read. q/k/v and
 * gate/up are merged into one matrix each on the way (one GEMM instead of three or two).
 */
import { type Device, DType, dtypeSize, type Handle, Tensor } from "../../ffi/device.ts";
import type { ModelConfig } from "../model/config.ts";
import type { LayerWeights, ModelWeights } from "../model/llama.ts";
import { checkWeights, ModelError, SafetensorsFolder } from "../model/safetensors.ts";
import { type TpShard, tpShard } from "../model/tp.ts";

const FILE_DTYPES: Record<string, DType> = { BF16: DType.BF16, F16: DType.F16, F32: DType.F32 };
const STAGING_BYTES = 32 << 20;

/** Rows [first, first + count) of a tensor (a column-parallel block, or all of it). */
type Part = [name: string, first: number, count: number];

/** A run of `n` elements at element `offset` of a tensor in its file. */
interface Segment {
  offset: number;
  n: number;
}

/** Loads this rank's part (see src/model/tp.ts) of every weight of `cfg` from `dir` in
 *  `wDtype`, reading only its slices; reports ("weights", bytes, total). */
export async function loadWeights(
  dev: Device,
  cfg: ModelConfig,
  dir: string,
  wDtype: DType,
  stream: Handle,
  progress: (stage: string, done: number, total: number) => void,
  shard: TpShard = tpShard(cfg, 0, 1),
): Promise<ModelWeights> {
  const folder = await SafetensorsFolder.open(dir);
  checkWeights(cfg, folder);
  const total = [...folder.tensors.values()].reduce((a, t) => a + t.byteLength, 0) /
    shard.size;
  const stager = new Stager(dev, stream, wDtype);
  let done = 0, lastReport = -1;
  const report = () => {
    const pct = Math.floor((100 * Math.min(done, total)) / total);
    if (pct !== lastReport) progress("weights", Math.min(done, total), total), lastReport = pct;
  };

  /** One device tensor of `rows` rows: the given row ranges of the named tensors stacked
   *  along the first dimension, zero-padded at the end. */
  const loadRows = (parts: Part[], rows?: number) => {
    const infos = parts.map(([n]) => folder.get(n));
    const rowElems = infos[0].shape.slice(1).reduce((a, b) => a * b, 1);
    const real = parts.reduce((a, p) => a + p[2], 0);
    const out = dev.alloc(wDtype, [rows ?? real, ...infos[0].shape.slice(1)]);
    if (rows !== undefined && rows > real) dev.memset(out, 0, stream);
    let at = 0;
    parts.forEach(([, start, count], i) => {
      const n = count * rowElems;
      stager.copy(folder, infos[i].name, [{ offset: start * rowElems, n }], out, at);
      at += n;
      done += n * dtypeSize(FILE_DTYPES[infos[i].dtype]);
      report();
    });
    return out;
  };
  const whole = (name: string): Part => [name, 0, folder.get(name).shape[0]];
  const load = (...names: string[]) => loadRows(names.map(whole));
  /** Columns [start, start + count) of every row of a 2-D row-parallel weight. */
  const loadCols = (name: string, start: number, count: number) => {
    const t = folder.get(name);
    const [R, C] = t.shape;
    const out = dev.alloc(wDtype, [R, count]);
    const segs = Array.from({ length: R }, (_, r) => ({ offset: r * C + start, n: count }));
    stager.copy(folder, name, segs, out, 0);
    done += R * count * dtypeSize(FILE_DTYPES[t.dtype]);
    report();
    return out;
  };
  const opt = (name: string) => (folder.tensors.has(name) ? load(name) : null);

  const { headDim: D } = cfg;
  const hq = shard.numHeads, hkv = shard.numKvHeads, I = shard.intermediate;
  const qFirst = shard.rank * hq * D, kvFirst = shard.kvHeadStart * D;
  const qkvParts = (a: string, kind: "weight" | "bias"): Part[] => [
    [`${a}q_proj.${kind}`, qFirst, hq * D],
    [`${a}k_proj.${kind}`, kvFirst, hkv * D],
    [`${a}v_proj.${kind}`, kvFirst, hkv * D],
  ];
  report();
  const vocab = (name: string) =>
    loadRows([[name, shard.vocabStart, shard.vocabRealRows]], shard.vocabRows);
  const embed = vocab("model.embed_tokens.weight");
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`, a = p + "self_attn.";
    layers.push({
      inputNorm: load(p + "input_layernorm.weight"),
      qkv: loadRows(qkvParts(a, "weight")),
      qkvBias: cfg.attentionBias ? loadRows(qkvParts(a, "bias")) : null,
      qNorm: cfg.qkNorm ? load(a + "q_norm.weight") : null,
      kNorm: cfg.qkNorm ? load(a + "k_norm.weight") : null,
      o: loadCols(a + "o_proj.weight", shard.rank * hq * D, hq * D),
      // Row-parallel: partial sums are all-reduced, so only one rank adds the bias.
      oBias: cfg.oProjBias && shard.rank === 0 ? opt(a + "o_proj.bias") : null,
      postNorm: load(p + "post_attention_layernorm.weight"),
      gateUp: loadRows([
        [p + "mlp.gate_proj.weight", shard.rank * I, I],
        [p + "mlp.up_proj.weight", shard.rank * I, I],
      ]),
      down: loadCols(p + "mlp.down_proj.weight", shard.rank * I, I),
    });
    // Let the worker's event loop breathe (progress messages go out between layers).
    await new Promise((r) => setTimeout(r, 0));
  }
  const norm = load("model.norm.weight");
  const lmHead = cfg.tieWordEmbeddings ? embed : vocab("lm_head.weight");
  stager.close();
  closeWeightFiles();
  done = total;
  report();
  return { embed, layers, norm, lmHead };
}

/** Two pinned buffers: read chunk i+1 from disk while chunk i is being copied. */
class Stager {
  private bufs: { ptr: Deno.PointerValue; bytes: Uint8Array; event: Handle; used: boolean }[] = [];
  private next = 0;
  private scratch: Tensor | null = null;

  constructor(private dev: Device, private stream: Handle, private wDtype: DType) {
    for (let i = 0; i < 2; i++) {
      const h = dev.hostAlloc(STAGING_BYTES);
      this.bufs.push({
        ptr: h.ptr,
        bytes: new Uint8Array(h.buf),
        event: dev.createEvent(),
        used: false,
      });
    }
  }

  /** Copies the segments of tensor `name` (file dtype taken from the file), packed one
   *  after another, into `out` from element `at`, converting to the weight dtype on the
   *  device when they differ. Segments are read straight into the pinned buffers. */
  copy(folder: SafetensorsFolder, name: string, segs: Segment[], out: Tensor, at: number) {
    const info = folder.get(name);
    const src = FILE_DTYPES[info.dtype];
    const esz = dtypeSize(src);
    const chunkElems = Math.floor(STAGING_BYTES / esz);
    let b = this.take(), fill = 0;
    const flush = () => {
      if (fill) this.upload(b, src, fill, out, at, name);
      at += fill;
      fill = 0;
    };
    for (const s of segs) {
      for (let e = 0; e < s.n;) {
        if (fill === chunkElems) flush(), b = this.take();
        const m = Math.min(chunkElems - fill, s.n - e);
        const into = b.bytes.subarray(fill * esz, (fill + m) * esz);
        readRangeSync(info.file, info.byteOffset + (s.offset + e) * esz, into);
        fill += m;
        e += m;
      }
    }
    flush();
  }

  /** The next pinned buffer, once the copy it last fed has finished. */
  private take() {
    const b = this.bufs[this.next];
    this.next = (this.next + 1) % this.bufs.length;
    if (b.used) this.dev.waitEvent(b.event);
    b.used = false;
    return b;
  }

  private upload(
    b: Stager["bufs"][0],
    src: DType,
    m: number,
    out: Tensor,
    at: number,
    name: string,
  ) {
    const esz = dtypeSize(src);
    if (src === this.wDtype) {
      this.dev.uploadPtr(out, b.ptr, m * esz, this.stream, at * esz);
    } else {
      this.scratch ??= this.dev.alloc(DType.U8, [STAGING_BYTES]);
      const s = new Tensor(this.scratch.ptr, src, [m]);
      this.dev.uploadPtr(s, b.ptr, m * esz, this.stream);
      this.dev.check(
        this.dev.sym.msg_cast(out.at(at, [m]).ptr, this.wDtype, s.ptr, src, BigInt(m), this.stream),
        `convert ${name}`,
      );
    }
    this.dev.record(b.event, this.stream);
    b.used = true;
  }

  close() {
    this.dev.sync(this.stream);
    for (const b of this.bufs) this.dev.hostFree(b.ptr);
    if (this.scratch) this.dev.free(this.scratch);
  }
}

const files = new Map<string, Deno.FsFile>();

/** Reads exactly `into.length` bytes at `offset` of `path` (files stay open while loading). */
function readRangeSync(path: string, offset: number, into: Uint8Array) {
  let f = files.get(path);
  if (!f) files.set(path, f = Deno.openSync(path, { read: true }));
  f.seekSync(offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < into.length) {
    const n = f.readSync(into.subarray(got));
    if (n === null || n === 0) {
      throw new ModelError(`${path.split("/").pop()}: file ends early (truncated)`);
    }
    got += n;
  }
}

/** Closes the files opened while loading. */
function closeWeightFiles() {
  for (const f of files.values()) f.close();
  files.clear();
}
