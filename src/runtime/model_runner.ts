/**
 * The model runner of one GPU worker: owns the device, weights, KV pool, page table,
 * per-row token table and activation buffers, and turns a ForwardBatch into launched
 * device work (`launch`) and later into a ForwardResult (`finish`). Decode batches replay
 * CUDA graphs captured per padded batch size (the forward part also per sequence bucket).
 */
import { Device, DType, dtypeSize, type Handle, Tensor } from "../../ffi/device.ts";
import { DEFAULTS, type KvCacheDtype } from "../core/defaults.ts";
import { Communicator, PeerAllReduce, type PeerBufferInfo } from "../../ffi/comm.ts";
import { attentionDevice, FA3_AUTO_V6_MAX_KEYS, Ops } from "../../ffi/ops.ts";
import type { ForwardBatch, ForwardResult, WorkerInfo } from "../ipc/batch.ts";
import {
  type DecoderShape,
  forward,
  type ModelWeights,
  type TensorParallel,
  type Workspace,
} from "../model/llama.ts";
import { type TpShard, tpShard } from "../model/tp.ts";
import { dummyWeights } from "./dummy_weights.ts";
import type { ModelConfig } from "../model/config.ts";
import { allocKvPool } from "./kv_pool.ts";
import {
  createAttention,
  FA3_VARIANTS,
  fa3Variant,
  type ForwardMeta,
  type HybridAttention,
  NativeAttention,
  parseAttentionNames,
  WidenedPages,
} from "./attention.ts";
import { type FilledBatch, fillStaging, padDecode, StagingLayout } from "./staging.ts";
import { MAX_TOP, promptTopK, type ResultBlock, ResultBuffers } from "./results.ts";
import { loadWeights } from "./weights.ts";
import { CudaGraphs, graphSeqBuckets } from "./cuda_graph.ts";
import { Constraints } from "./constraints.ts";

/** How to build a runner (a subset of the engine's flags). */
export interface RunnerOptions {
  backend: "cpu" | "cuda";
  deviceIndex: number;
  modelDir: string;
  pageSize: number;
  numPages: number | null;
  memFraction: number;
  maxRows: number;
  maxPrefillLength: number;
  cudaGraphMaxBs: number;
  dtype: "auto" | "bfloat16" | "float16" | "float32";
  /** KV cache storage (src/core/defaults.ts). */
  kvCacheDtype: KvCacheDtype;
  /** fp8 cache: tokens of widened pages for the extend calls (null: the model's context, at
   *  least 16k; tests set it small to make the calls split). */
  widenTokens?: number | null;
  cpuThreads: number;
  /** `--attn PREFILL[,DECODE]` ("" = native). */
  attn: string;
  /** Tensor-parallel rank and group size; `commId` (the communicator's unique id, made
   *  once for the group) is needed when tpSize > 1. */
  tpRank: number;
  tpSize: number;
  commId: Uint8Array | null;
  /** Fill weights on the device from this seed instead of reading the files. */
  dummyWeightSeed: number | null;
}

/** Options for a runner of `modelDir` on `backend`: the defaults table, then `over`. */
export function runnerOptions(
  modelDir: string,
  backend: "cpu" | "cuda",
  over: Partial<RunnerOptions> = {},
): RunnerOptions {
  return {
    backend,
    deviceIndex: 0,
    modelDir,
    pageSize: DEFAULTS.pageSize,
    numPages: null,
    memFraction: DEFAULTS.memFraction,
    maxRows: DEFAULTS.maxRunningRequests,
    maxPrefillLength: DEFAULTS.maxPrefillLength,
    cudaGraphMaxBs: backend === "cuda" ? DEFAULTS.cudaGraphMaxBs : 0,
    dtype: DEFAULTS.dtype,
    kvCacheDtype: DEFAULTS.kvCacheDtype,
    cpuThreads: DEFAULTS.cpuThreads,
    attn: DEFAULTS.attn,
    tpRank: 0,
    tpSize: 1,
    commId: null,
    dummyWeightSeed: null,
    ...over,
  };
}

export type Progress = (stage: string, done: number, total: number) => void;

/** Hands this rank's peer buffer to the other ranks and returns all of them in rank order
 *  (the GPU worker goes through the main thread). */
export type PeerExchange = (mine: PeerBufferInfo) => Promise<PeerBufferInfo[]>;

/** Largest all-reduce that takes the one-shot peer-memory path (decode rows of hidden);
 *  larger ones go through NCCL. */
const PEER_ALL_REDUCE_BYTES = 1 << 20;

/** The largest M of each GEMM M bucket of cuda/src/gemm.cu (bucket_m: multiples of 8 up to
 *  64, then 8 buckets an octave) from 5 (below, decode GEMVs) to maxT, the last one capped at
 *  maxT (it still falls in its bucket). */
export function gemmWarmSizes(maxT: number): number[] {
  const bucket = (m: number) => {
    if (m <= 64) return Math.ceil(m / 8) * 8;
    const g = 2 ** Math.floor(Math.log2(m)) / 8;
    return Math.ceil(m / g) * g;
  };
  const out: number[] = [];
  for (let m = 5; m <= maxT; m = bucket(m) + 1) out.push(Math.min(bucket(m), maxT));
  return out;
}

/** Host blocks of one batch in flight: its staged inputs and its results. */
interface Slot {
  ptr: Deno.PointerValue;
  i32: Int32Array;
  f32: Float32Array;
  u64: BigUint64Array;
  out: ResultBlock;
  event: Handle;
  /** Host block of the batch's grammar masks and logit_bias (made on first use). */
  cons: { ptr: Deno.PointerValue; i32: Int32Array; f32: Float32Array } | null;
}

/** Launched work of one batch, finished later. */
export interface Pending {
  batch: ForwardBatch;
  filled: FilledBatch;
  slot: Slot;
  topK: number;
  start: number;
  /** Constrained batch: the logits are computed but sampling waits for sampleDeferred()
   *  (after the previous batch's tokens advanced the matchers). */
  deferred: boolean;
  /** Padded size of the decode graph it replays (0: none). */
  graphBs: number;
}

export class ModelRunner {
  readonly dev: Device;
  readonly ops: Ops;
  readonly info: WorkerInfo;
  private L: StagingLayout;
  private meta: ReturnType<StagingLayout["deviceViews"]>;
  private slots: Slot[] = [];
  private slotIdx = 0;
  private pageTable!: Tensor;
  private tokenTable!: Tensor;
  private ws!: Workspace;
  private logits!: Tensor;
  /** This rank's vocabulary columns of the logits, and the all-gather's staging (TP). */
  private localLogits: Tensor | null = null;
  private gatherScratch: Tensor | null = null;
  private tp: TensorParallel | null = null;
  private comm: Communicator | null = null;
  private peer: PeerAllReduce | null = null;
  private positions!: Tensor;
  private kvSlots!: Tensor;
  private decodeTmp!: Tensor;
  private out!: ResultBuffers;
  private lastHidden!: Tensor;
  private attn!: HybridAttention;
  private graphs: CudaGraphs | null = null;
  /** Penalty tokens of batches whose tokens do not fit the staging block (grow-only). */
  private penaltyExtra: Tensor | null = null;
  /** Matchers of constrained requests and the device copy of a batch's masks. */
  readonly constraints: Constraints;
  private consDev: Tensor | null = null;
  private shape: DecoderShape;
  private weights!: ModelWeights;
  private stream: Handle;
  readonly dummyRow: number;

  private constructor(
    readonly cfg: ModelConfig,
    readonly opts: RunnerOptions,
    dev: Device,
    readonly actDtype: DType,
    private wDtype: DType,
    readonly shard: TpShard,
  ) {
    this.dev = dev;
    this.stream = dev.backend === "cuda" ? dev.createStream() : null;
    this.ops = new Ops(dev, this.stream);
    this.shape = {
      hidden: cfg.hiddenSize,
      intermediate: shard.intermediate,
      numHeads: shard.numHeads,
      numKvHeads: shard.numKvHeads,
      headDim: cfg.headDim,
      eps: cfg.rmsNormEps,
    };
    const maxT = opts.maxPrefillLength + opts.maxRows;
    this.L = new StagingLayout(maxT, opts.maxRows);
    this.dummyRow = opts.maxRows;
    this.info = {
      backend: dev.backend,
      deviceName: dev.name(),
      numPages: 0,
      pageSize: opts.pageSize,
      maxRows: opts.maxRows,
      maxSeqLen: 0,
      vocabSize: cfg.vocabSize,
      maxBatchTokens: maxT,
      loadSeconds: 0,
    };
    this.meta = this.L.deviceViews(dev.alloc(DType.I32, [this.L.words]));
    this.constraints = new Constraints(opts.modelDir, cfg.vocabSize, opts.maxRows);
  }

  /** Loads weights, sizes the KV pool and captures graphs. */
  static async create(
    cfg: ModelConfig,
    opts: RunnerOptions,
    progress: Progress,
    peerExchange: PeerExchange | null = null,
  ): Promise<ModelRunner> {
    const t0 = performance.now();
    parseAttentionNames(opts.attn); // fail before loading anything
    fa3Variant();
    const dev = new Device(opts.backend, opts.deviceIndex);
    if (opts.backend === "cpu" && opts.cpuThreads > 0) {
      dev.check(dev.sym.msg_set_num_threads(opts.cpuThreads), "threads");
    }
    const fileDtype = cfg.torchDtype === "float16" ? DType.F16 : DType.BF16;
    if (opts.dtype === "float32" && opts.backend !== "cpu") {
      throw new Error("--dtype float32 runs on the CPU backend only (use --device cpu)");
    }
    const wDtype = opts.dtype === "float16"
      ? DType.F16
      : opts.dtype === "bfloat16"
      ? DType.BF16
      : opts.dtype === "float32"
      ? DType.F32
      : fileDtype;
    const act = opts.backend === "cpu" ? DType.F32 : wDtype;
    const shard = tpShard(cfg, opts.tpRank, opts.tpSize);
    const r = new ModelRunner(cfg, opts, dev, act, wDtype, shard);
    if (opts.tpSize > 1) {
      if (!opts.commId) throw new Error("tensor parallelism needs a communicator id");
      progress("communicator", 0, 1);
      const comm = r.comm = Communicator.join(dev, opts.tpSize, opts.tpRank, opts.commId);
      // MINISGL_PEER_ALL_REDUCE=0: every all-reduce through NCCL (A/B measurements).
      if (
        peerExchange && opts.backend === "cuda" &&
        Deno.env.get("MINISGL_PEER_ALL_REDUCE") !== "0"
      ) {
        const { buf, info } = PeerAllReduce.allocBuffer(dev, PEER_ALL_REDUCE_BYTES);
        const infos = await peerExchange(info);
        r.peer = PeerAllReduce.create(dev, opts.tpRank, buf, PEER_ALL_REDUCE_BYTES, infos);
      }
      const peer = r.peer, ops = r.ops;
      r.tp = {
        // Every rank takes the same path for the same n: the choice is a collective's too.
        allReduce: (t, n) =>
          peer && n * dtypeSize(t.dtype) <= peer.maxBytes
            ? peer.allReduce(t.ptr, n, t.dtype, r.stream)
            : ops.allReduce(t, n, comm.handle),
        vocabStart: shard.vocabStart,
      };
      progress("communicator", 1, 1);
    }
    r.weights = opts.dummyWeightSeed !== null
      ? dummyWeights(dev, r.ops, cfg, shard, wDtype, BigInt(opts.dummyWeightSeed))
      : await loadWeights(dev, cfg, opts.modelDir, wDtype, r.stream, progress, shard);
    // Default (-1): 256 on cards with more than 80 GB free, else 160, as SGLang does.
    const graphMax = opts.cudaGraphMaxBs >= 0
      ? opts.cudaGraphMaxBs
      : (dev.memInfo().free > 80e9 ? 256 : 160);
    r.allocBuffers();
    r.allocKv(progress);
    if (opts.backend === "cuda") r.warmGemms(progress);
    if (opts.backend === "cuda" && graphMax > 0) {
      // MINISGL_GRAPH_SEQ_BUCKETS=0: one forward graph per size, planned at the pool's
      // longest sequence (A/B measurements).
      const spread = Deno.env.get("MINISGL_GRAPH_SEQ_BUCKETS") !== "0";
      r.graphs = new CudaGraphs(
        dev,
        r.stream,
        Math.min(graphMax, opts.maxRows),
        graphSeqBuckets(r.info.maxSeqLen, spread),
      );
      r.graphs.capture(
        (bs, maxSeqLen) => r.decodeForward(bs, maxSeqLen),
        [(bs) => r.decodeSample(bs, false), (bs) => r.decodeSample(bs, true)],
        (bs) => r.prepareDummyDecode(bs),
        progress,
      );
    }
    // On the GPU the vocabulary trie of structured outputs (~0.5 s) is built now, not when
    // the first constrained request arrives, where it would stall every running request.
    // The CPU backend (tests, development) keeps it lazy.
    if (opts.backend === "cuda") {
      progress("grammar tables", 0, 1);
      r.constraints.prepare();
      progress("grammar tables", 1, 1);
    }
    dev.sync(r.stream);
    r.info.loadSeconds = (performance.now() - t0) / 1000;
    return r;
  }

  /** Runs every GEMM of a layer (and the LM head) once at the largest M of each of the
   *  library's M buckets up to the largest batch: cuBLASLt's algorithm is chosen per bucket
   *  (cuda/src/gemm.cu), and the heuristic and the first load of each kernel it picks cost
   *  milliseconds of host time, which a serving step must not pay. Outputs land in the
   *  workspace and are overwritten by the first real step. */
  private warmGemms(progress: Progress) {
    const L0 = this.weights.layers[0];
    if (!L0) return;
    const { ops, ws } = this;
    const sizes = gemmWarmSizes(this.L.maxT);
    sizes.forEach((M, i) => {
      ops.gemm(ws.qkv, ws.normed, L0.qkv, L0.qkvBias, M);
      ops.gemm(ws.delta, ws.attnOut, L0.o, L0.oBias, M);
      ops.gemm(ws.gateUp, ws.normed, L0.gateUp, null, M);
      ops.gemm(ws.delta, ws.act, L0.down, null, M);
      if (M <= this.L.maxB) this.lmHead(this.logits.rows(0, M), ws.normed, M);
      progress("GEMM plans", i + 1, sizes.length);
    });
    this.dev.sync(this.stream);
  }

  private allocBuffers() {
    const { dev, L, cfg } = this;
    const maxT = L.maxT, maxB = L.maxB;
    const H = cfg.hiddenSize, I = this.shard.intermediate;
    const qkvW = (this.shard.numHeads + 2 * this.shard.numKvHeads) * cfg.headDim;
    const a = (shape: number[]) => dev.alloc(this.actDtype, shape);
    this.ws = {
      residual: dev.alloc(DType.F32, [maxT, H]),
      normed: a([maxT, H]),
      qkv: a([maxT, qkvW]),
      attnOut: a([maxT, this.shard.numHeads * cfg.headDim]),
      delta: a([maxT, H]),
      gateUp: a([maxT, 2 * I]),
      act: a([maxT, I]),
    };
    this.lastHidden = a([maxB, H]);
    this.logits = dev.alloc(DType.F32, [maxB, cfg.vocabSize]);
    if (this.tp) {
      const { vocabRows, size } = this.shard;
      this.localLogits = dev.alloc(DType.F32, [maxB, vocabRows]);
      if (dev.backend === "cuda") {
        this.gatherScratch = dev.alloc(DType.F32, [size * maxB * vocabRows]);
      }
    }
    this.positions = dev.alloc(DType.I32, [maxT]);
    this.kvSlots = dev.alloc(DType.I32, [maxT]);
    this.decodeTmp = dev.alloc(DType.I32, [maxB]);
    this.out = new ResultBuffers(dev, maxB, maxT);
    for (let i = 0; i < 2; i++) {
      const host = dev.hostAlloc(L.words * 4);
      this.slots.push({
        ptr: host.ptr,
        i32: new Int32Array(host.buf),
        f32: new Float32Array(host.buf),
        u64: new BigUint64Array(host.buf),
        out: this.out.hostBlock(),
        event: dev.createEvent(),
        cons: null,
      });
    }
  }

  /** KV pool from --num-pages, or a fraction of the free memory left. An fp8 pool first
   *  takes the widened pages its extend calls read (one request of the longest context, or
   *  16k tokens of shorter ones). */
  private allocKv(progress: Progress) {
    progress("KV pool", 0, 1);
    let widened: WidenedPages | null = null;
    if (this.opts.kvCacheDtype === "fp8_e4m3") {
      const ps = this.opts.pageSize;
      const tokens = this.opts.widenTokens ?? Math.max(this.cfg.maxPositionEmbeddings, 16384);
      widened = new WidenedPages(
        this.dev,
        this.actDtype,
        Math.ceil(tokens / ps),
        ps,
        this.shard.numKvHeads,
        this.cfg.headDim,
        this.stream,
      );
    }
    const pool = allocKvPool(
      this.dev,
      this.cfg,
      this.opts,
      widened ? DType.FP8_E4M3 : this.actDtype,
      this.stream,
      this.shard.numKvHeads,
    );
    this.pageTable = pool.pageTable;
    this.tokenTable = pool.tokenTable;
    const { attn, resolved } = createAttention(
      this.opts.attn,
      attentionDevice(this.ops),
      (k) =>
        new NativeAttention(
          this.ops,
          pool.kv,
          pool.cosSin,
          this.wDtype,
          k === "fa3" ? FA3_VARIANTS[fa3Variant()] : "native",
          widened,
        ),
    );
    this.attn = attn;
    const v = fa3Variant();
    const fa3 = v === "auto" ? `auto: v6 up to ${FA3_AUTO_V6_MAX_KEYS} keys, else v5` : `v${v}`;
    console.error(resolved.log + (resolved.prefill === "fa3" ? ` (fa3 ${fa3})` : ""));
    this.info.numPages = pool.numPages;
    this.info.maxSeqLen = pool.maxSeqLen;
    progress("KV pool", 1, 1);
  }

  private nextSlot(): Slot {
    const s = this.slots[this.slotIdx];
    this.slotIdx = (this.slotIdx + 1) % this.slots.length;
    return s;
  }

  private forwardMeta(
    f: Pick<
      FilledBatch,
      "numTokens" | "batch" | "isDecode" | "maxQLen" | "maxSeqLen" | "decodeHead" | "decodeTail"
    >,
    hostQStarts?: Int32Array,
  ): ForwardMeta {
    return {
      numTokens: f.numTokens,
      batch: f.batch,
      isDecode: f.isDecode,
      maxQLen: f.maxQLen,
      maxSeqLen: f.maxSeqLen,
      decodeHead: f.decodeHead,
      decodeTail: f.decodeTail,
      inputIds: this.meta.ids,
      positions: this.positions,
      slots: this.kvSlots,
      rows: this.meta.rows,
      seqLens: this.meta.seqLens,
      qStarts: this.meta.qStarts,
      hostQStarts,
      pageTable: this.pageTable,
      pageSize: this.opts.pageSize,
    };
  }

  private decodeMeta(bs: number, maxSeqLen: number): ForwardMeta {
    return this.forwardMeta({
      numTokens: bs,
      batch: bs,
      isDecode: true,
      maxQLen: 1,
      maxSeqLen,
      decodeHead: bs,
      decodeTail: 0,
    });
  }

  /** The decode step of `bs` rows on device-resident inputs up to the logits (first graph
   *  part; the attention backend was prepared before). */
  private decodeForward(bs: number, maxSeqLen: number) {
    const { ops, meta } = this;
    ops.gatherI32(meta.ids, this.tokenTable, meta.rows, bs);
    ops.computeSlots(
      this.kvSlots,
      this.positions,
      this.pageTable,
      meta.rows,
      meta.seqLens,
      meta.qStarts,
      bs,
      this.opts.pageSize,
      1,
    );
    const hidden = forward(
      ops,
      this.shape,
      this.weights,
      this.ws,
      this.attn,
      this.decodeMeta(bs, maxSeqLen),
      this.tp,
    );
    this.lmHead(this.logits.rows(0, bs), hidden, bs);
  }

  /** Sampling of a decode step from its logits (second graph part; third when every row is
   *  greedy: one kernel instead of six). */
  private decodeSample(bs: number, greedy: boolean) {
    const { ops, meta } = this;
    const params = greedy ? null : meta.params;
    ops.sample(this.out.tokens, this.out.logprobs, this.logits.rows(0, bs), params, bs);
    ops.scatterI32(this.tokenTable, meta.sampleRows, this.out.tokens, bs);
  }

  /** Full fp32 logits [n, vocab] of n hidden rows: with TP, this rank's vocabulary
   *  columns then an all-gather (every rank ends with the same logits and samples alike). */
  private lmHead(logits: Tensor, hidden: Tensor, n: number) {
    if (!this.tp) {
      this.ops.gemm(logits, hidden, this.weights.lmHead, null, n);
      return;
    }
    const local = this.localLogits!.rows(0, n);
    this.ops.gemm(local, hidden, this.weights.lmHead, null, n);
    this.ops.allGatherCols(logits, local, this.gatherScratch, n, this.comm!.handle);
  }

  /** Writes a dummy decode batch of `bs` padded rows (used before capture). */
  private prepareDummyDecode(bs: number) {
    const s = this.nextSlot();
    padDecode(this.L, s.i32, s.f32, 0, bs, this.dummyRow);
    this.dev.uploadPtr(this.meta.ids, s.ptr, this.L.words * 4, this.stream);
    this.dev.sync(this.stream);
    this.attn.prepareCapture(bs);
  }

  /** Enqueues the device work of a batch. A constrained batch stops before sampling
   *  (`deferred`): call sampleDeferred() once the batch before it is finished. */
  launch(batch: ForwardBatch): Pending {
    const start = performance.now();
    this.constraints.release(batch);
    const slot = this.nextSlot();
    const f = this.fill(batch, slot);
    let topK = 0;
    for (const i of f.sampleEntries) {
      topK = Math.max(topK, Math.min(batch.entries[i].topLogprobs, MAX_TOP));
    }
    const deferred = f.numSample > 0 && Constraints.needed(batch);
    // Graphs (and the plain decode body) gather every input token on the device.
    const deviceDecode = f.isDecode && f.numDecodeInputs === f.batch && topK === 0 &&
      !f.hasPenalties;
    const graphBs = deviceDecode ? this.graphs?.sizeFor(f.batch) ?? 0 : 0;
    if (graphBs) padDecode(this.L, slot.i32, slot.f32, f.batch, graphBs, this.dummyRow);
    this.upload(slot, f);

    if (graphBs) {
      this.attn.prepareReplay(graphBs);
      this.graphs!.launchForward(graphBs, f.maxSeqLen);
      if (!deferred) this.sampleGraph(graphBs, this.onePass(f));
    } else if (deviceDecode) {
      this.attn.prepare(this.decodeMeta(f.batch, f.maxSeqLen));
      this.decodeForward(f.batch, f.maxSeqLen);
      if (!deferred) this.decodeSample(f.batch, this.onePass(f));
    } else {
      this.generalBody(batch, f, topK, deferred);
    }
    const p: Pending = { batch, filled: f, slot, topK, start, deferred, graphBs };
    if (!deferred) this.seal(p);
    return p;
  }

  /** Every sampled row greedy: sampling takes its one-pass path, unless
   *  MINISGL_GREEDY_ONE_PASS=0 (A/B measurements). */
  private onePass(f: FilledBatch): boolean {
    return f.allGreedy && this.greedyOnePass;
  }
  private readonly greedyOnePass = Deno.env.get("MINISGL_GREEDY_ONE_PASS") !== "0";

  /** Replays the sampling part of a decode graph: the one-pass part when every row is greedy. */
  private sampleGraph(bs: number, greedy: boolean) {
    this.graphs!.launchSampling(bs, greedy ? 1 : 0);
  }

  /** Enqueues the copies of a batch's results and its completion event. */
  private seal(p: Pending) {
    this.out.collect(p.batch, p.filled, p.slot.out, p.topK, this.stream);
    this.dev.record(p.slot.event, this.stream);
  }

  /** Sampling of a deferred batch: the masks of its constrained rows at the matchers'
   *  current states and its logit_bias, applied to the logits left by launch(). */
  sampleDeferred(p: Pending) {
    const { ops, dev } = this;
    const f = p.filled, S = f.numSample, L = this.constraints.L;
    if (!p.slot.cons) {
      const h = dev.hostAlloc(L.words * 4);
      p.slot.cons = { ptr: h.ptr, i32: new Int32Array(h.buf), f32: new Float32Array(h.buf) };
    }
    if (!this.consDev) this.consDev = dev.alloc(DType.I32, [L.words]);
    const c = p.slot.cons, d = this.consDev;
    const fc = this.constraints.fill(p.batch, f.sampleEntries, c.i32, c.f32);
    dev.uploadPtr(d, c.ptr, fc.words * 4, this.stream);
    if (fc.numBias) {
      for (const off of [L.biasIds, L.biasValues]) {
        dev.uploadPtr(
          d,
          Deno.UnsafePointer.offset(c.ptr!, off * 4),
          fc.numBias * 4,
          this.stream,
          off * 4,
        );
      }
    }
    const logits = this.logits.rows(0, S);
    const v = (off: number, n: number, dt = DType.I32) => d.at(off, [n], dt);
    if (fc.numBiased) {
      ops.applyTokenMask(
        logits,
        v(L.biasRows, fc.numBiased),
        null,
        v(L.biasStarts, fc.numBiased + 1),
        v(L.biasIds, fc.numBias),
        v(L.biasValues, fc.numBias, DType.F32),
        fc.numBiased,
      );
    }
    if (fc.numMasked) {
      ops.applyTokenMask(
        logits,
        v(L.maskRows, fc.numMasked),
        v(L.masks, fc.numMasked * L.maskWords),
        null,
        null,
        null,
        fc.numMasked,
      );
    }
    if (p.graphBs) this.sampleGraph(p.graphBs, this.onePass(f));
    else this.sampleRows(f, logits, p.topK);
    p.deferred = false;
    this.seal(p);
  }

  /** Top logprobs, the draw, and the sampled tokens into the device token table. */
  private sampleRows(f: FilledBatch, logits: Tensor, topK: number) {
    const { ops, meta } = this, S = f.numSample;
    if (topK) ops.topLogprobs(this.out.topIds, this.out.topLps, logits, S, topK);
    ops.sample(this.out.tokens, this.out.logprobs, logits, this.onePass(f) ? null : meta.params, S);
    ops.scatterI32(this.tokenTable, meta.sampleRows, this.out.tokens, S);
  }

  /** Writes a batch into a slot's host block, within the buffers' bounds. */
  private fill(batch: ForwardBatch, slot: Slot): FilledBatch {
    const { L } = this;
    const f = fillStaging(L, slot.i32, slot.f32, slot.u64, batch.entries, this.pageTable.shape[1]);
    if (f.numTokens > L.maxT || f.batch > L.maxB) {
      throw new Error(
        `batch of ${f.numTokens} tokens / ${f.batch} entries exceeds ${L.maxT} / ${L.maxB}`,
      );
    }
    return f;
  }

  /** Copies the block to the device and applies the batch's page-table updates. */
  private upload(slot: Slot, f: FilledBatch) {
    const { meta } = this;
    const words = f.hasPenalties ? this.L.words : this.L.baseWords;
    this.dev.uploadPtr(meta.ids, slot.ptr, words * 4, this.stream);
    if (f.numPageUpdates) {
      this.ops.scatterI32(this.pageTable, meta.pageIdx, meta.pageVal, f.numPageUpdates);
    }
    if (f.overflowPages) this.uploadOverflowPages(f.overflowPages);
  }

  /** Input tokens of decode entries from the device table, KV slots, then the decoder. */
  private forwardAny(f: FilledBatch): Tensor {
    const { ops, meta } = this;
    if (f.numDecodeInputs) {
      ops.gatherI32(this.decodeTmp, this.tokenTable, meta.decRows, f.numDecodeInputs);
      ops.scatterI32(meta.ids, meta.decTok, this.decodeTmp, f.numDecodeInputs);
    }
    ops.computeSlots(
      this.kvSlots,
      this.positions,
      this.pageTable,
      meta.rows,
      meta.seqLens,
      meta.qStarts,
      f.batch,
      this.opts.pageSize,
      f.maxQLen,
    );
    const m = this.forwardMeta(f, f.qStarts);
    this.attn.prepare(m);
    return forward(ops, this.shape, this.weights, this.ws, this.attn, m, this.tp);
  }

  private uploadOverflowPages(pairs: Int32Array) {
    const n = pairs.length / 2;
    const idx = this.dev.alloc(DType.I32, [n]), val = this.dev.alloc(DType.I32, [n]);
    this.dev.upload(idx, pairs.filter((_, i) => i % 2 === 0), this.stream);
    this.dev.upload(val, pairs.filter((_, i) => i % 2 === 1), this.stream);
    this.ops.scatterI32(this.pageTable, idx, val, n);
    this.dev.sync(this.stream);
    this.dev.free(idx);
    this.dev.free(val);
  }

  /** Prefill / mixed batches: any mix of extend and decode entries. The logits of the
   *  sampled rows are made last, so a deferred batch leaves them for sampleDeferred(). */
  private generalBody(batch: ForwardBatch, f: FilledBatch, topK: number, deferred: boolean) {
    const { ops, meta } = this;
    const hidden = this.forwardAny(f);
    // Prompt logprobs: logits of the asked rows, a chunk of maxB rows at a time.
    let t = 0;
    for (const e of batch.entries) {
      if (e.logprobTargets) {
        for (let c = 0; c < e.qLen; c += this.L.maxB) {
          const n = Math.min(this.L.maxB, e.qLen - c);
          const logits = this.logits.rows(0, n);
          this.lmHead(logits, hidden.rows(t + c, n), n);
          ops.tokenLogprobs(
            this.out.promptLp.rows(t + c, n),
            logits,
            meta.targets.rows(t + c, n),
            n,
          );
          const k = promptTopK(e);
          if (k > 0) {
            // [qLen, k] of this entry from t * MAX_TOP (see results.ts).
            const o = t * MAX_TOP + c * k;
            ops.topLogprobs(
              this.out.promptTopIds.rows(o, n * k),
              this.out.promptTopLps.rows(o, n * k),
              logits,
              n,
              k,
            );
          }
        }
      }
      t += e.qLen;
    }
    const S = f.numSample;
    if (S) {
      ops.gatherRows(this.lastHidden, hidden, meta.lastIdx, S);
      const logits = this.logits.rows(0, S);
      this.lmHead(logits, this.lastHidden, S);
      this.applyPenalties(f, logits);
      if (!deferred) this.sampleRows(f, logits, topK);
    }
  }

  /** Penalties of the sampled rows, from the staging block (their tokens from the
   *  overflow buffer when the block could not hold them): nothing allocated or synced. */
  private applyPenalties(f: FilledBatch, logits: Tensor) {
    if (!f.hasPenalties) return;
    const { meta } = this;
    let tokens = meta.penTokens;
    if (f.penaltyOverflow) {
      const n = f.penaltyOverflow.length;
      if (!this.penaltyExtra || this.penaltyExtra.shape[0] < n) {
        // Grown rarely, to the next power of two; a batch in flight may still read the old
        // buffer, hence the sync before it is freed.
        if (this.penaltyExtra) {
          this.dev.sync(this.stream);
          this.dev.free(this.penaltyExtra);
        }
        this.penaltyExtra = this.dev.alloc(DType.I32, [2 ** Math.ceil(Math.log2(n))]);
      }
      this.dev.upload(this.penaltyExtra, f.penaltyOverflow, this.stream);
      tokens = this.penaltyExtra;
    }
    this.ops.applyPenalties(
      logits,
      tokens,
      meta.penStarts,
      meta.penPresence,
      meta.penFrequency,
      meta.penRepetition,
      f.numSample,
    );
  }

  /** True when a launched batch's device work has finished (finish() will not block). */
  isDone(p: Pending): boolean {
    return this.dev.eventDone(p.slot.event);
  }

  /** Waits for a launched batch and reads its result. */
  finish(p: Pending): ForwardResult {
    if (p.deferred) throw new Error("finish() of a batch whose sampling is still deferred");
    this.dev.waitEvent(p.slot.event);
    const seconds = (performance.now() - p.start) / 1000;
    const res = this.out.read(p.batch, p.filled, p.slot.out, p.topK, seconds);
    if (p.filled.numSample) this.constraints.advance(p.batch, res.tokens);
    return res;
  }

  /** Full fp32 logits of every new token of every entry (tests and fidelity checks;
   *  nothing is sampled). Entries are stored into the KV cache like any batch. */
  logitsOf(batch: ForwardBatch): Float32Array[] {
    const { dev, L } = this;
    const slot = this.nextSlot();
    const f = this.fill(batch, slot);
    this.upload(slot, f);
    const hidden = this.forwardAny(f);
    const V = this.cfg.vocabSize;
    const out: Float32Array[] = [];
    let t = 0;
    for (const e of batch.entries) {
      const host = new Float32Array(e.qLen * V);
      for (let c = 0; c < e.qLen; c += L.maxB) {
        const n = Math.min(L.maxB, e.qLen - c);
        const logits = this.logits.rows(0, n);
        this.lmHead(logits, hidden.rows(t + c, n), n);
        dev.download(host.subarray(c * V, (c + n) * V), logits, this.stream);
      }
      out.push(host);
      t += e.qLen;
    }
    return out;
  }

  /** Runs a batch to completion (no overlap). */
  run(batch: ForwardBatch): ForwardResult {
    const p = this.launch(batch);
    if (p.deferred) this.sampleDeferred(p);
    return this.finish(p);
  }
}
