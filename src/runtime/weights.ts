/**
 * Weights from safetensors to device memory: each tensor is read in chunks into one of two
 * pinned staging buffers and copied asynchronously while the next chunk is read. q/k/v and
 * gate/up are merged into one matrix each on the way (one GEMM instead of three or two).
 */
import { type Device, DType, dtypeSize, type Handle, Tensor } from "../../ffi/device.ts";
import type { ModelConfig } from "../model/config.ts";
import type { LayerWeights, ModelWeights } from "../model/llama.ts";
import { checkWeights, ModelError, SafetensorsFolder } from "../model/safetensors.ts";

const FILE_DTYPES: Record<string, DType> = { BF16: DType.BF16, F16: DType.F16, F32: DType.F32 };
const STAGING_BYTES = 32 << 20;

/** Loads every weight of `cfg` from `dir` in `wDtype`; reports ("weights", bytes, total). */
export async function loadWeights(
  dev: Device,
  cfg: ModelConfig,
  dir: string,
  wDtype: DType,
  stream: Handle,
  progress: (stage: string, done: number, total: number) => void,
): Promise<ModelWeights> {
  const folder = await SafetensorsFolder.open(dir);
  checkWeights(cfg, folder);
  const total = [...folder.tensors.values()].reduce((a, t) => a + t.byteLength, 0);
  const stager = new Stager(dev, stream, wDtype);
  let done = 0, lastReport = -1;
  const report = () => {
    const pct = Math.floor((100 * done) / total);
    if (pct !== lastReport) progress("weights", done, total), lastReport = pct;
  };

  /** One device tensor holding the named tensors stacked along the first dimension. */
  const load = (...names: string[]): Tensor => {
    const infos = names.map((n) => folder.get(n));
    const rows = infos.reduce((a, t) => a + t.shape[0], 0);
    const out = dev.alloc(wDtype, [rows, ...infos[0].shape.slice(1)]);
    let at = 0;
    for (const t of infos) {
      const src = FILE_DTYPES[t.dtype];
      const n = t.byteLength / dtypeSize(src);
      stager.copy(folder, t.name, src, n, out, at);
      at += n;
      done += t.byteLength;
      report();
    }
    return out;
  };
  const opt = (name: string) => (folder.tensors.has(name) ? load(name) : null);

  report();
  const embed = load("model.embed_tokens.weight");
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`, a = p + "self_attn.";
    layers.push({
      inputNorm: load(p + "input_layernorm.weight"),
      qkv: load(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
      qkvBias: cfg.attentionBias
        ? load(a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias")
        : null,
      qNorm: cfg.qkNorm ? load(a + "q_norm.weight") : null,
      kNorm: cfg.qkNorm ? load(a + "k_norm.weight") : null,
      o: load(a + "o_proj.weight"),
      oBias: cfg.oProjBias ? opt(a + "o_proj.bias") : null,
      postNorm: load(p + "post_attention_layernorm.weight"),
      gateUp: load(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
      down: load(p + "mlp.down_proj.weight"),
    });
    // Let the worker's event loop breathe (progress messages go out between layers).
    await new Promise((r) => setTimeout(r, 0));
  }
  const norm = load("model.norm.weight");
  const lmHead = cfg.tieWordEmbeddings ? embed : load("lm_head.weight");
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

  /** Copies `n` elements of tensor `name` (file dtype `src`) into `out` at element `at`,
   *  converting to the weight dtype on the device when they differ. */
  copy(folder: SafetensorsFolder, name: string, src: DType, n: number, out: Tensor, at: number) {
    const esz = dtypeSize(src);
    const chunkElems = Math.floor(STAGING_BYTES / esz);
    for (let e = 0; e < n; e += chunkElems) {
      const m = Math.min(chunkElems, n - e);
      const b = this.bufs[this.next];
      this.next = (this.next + 1) % this.bufs.length;
      if (b.used) this.dev.waitEvent(b.event);
      const info = folder.get(name);
      readRangeSync(info.file, info.byteOffset + e * esz, b.bytes.subarray(0, m * esz));
      if (src === this.wDtype) {
        this.dev.uploadPtr(out, b.ptr, m * esz, this.stream, (at + e) * esz);
      } else {
        this.scratch ??= this.dev.alloc(DType.U8, [STAGING_BYTES]);
        const s = new Tensor(this.scratch.ptr, src, [m]);
        this.dev.uploadPtr(s, b.ptr, m * esz, this.stream);
        this.dev.check(
          this.dev.sym.msg_cast(
            out.at(at + e, [m]).ptr,
            this.wDtype,
            s.ptr,
            src,
            BigInt(m),
            this.stream,
          ),
          `convert ${name}`,
        );
      }
      this.dev.record(b.event, this.stream);
      b.used = true;
    }
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
