/**
 * What `main.ts` does: flags -> checks -> native library -> engine -> HTTP server or shell,
 * and a graceful exit on SIGINT/SIGTERM. Every expected failure (bad flag, broken model
 * folder, build failure, engine startup error) ends with one line `error: ...` and exit 1.
 */

import { defaultEngineConfig, type EngineConfig } from "../engine/config.ts";
import { startEngine } from "../engine/engine.ts";
import { runWorkerNode } from "../engine/worker_node.ts";
import type { Engine, SamplingParams } from "../engine/types.ts";
import { type GenerationDefaults, loadModelConfig } from "../model/config.ts";
import { ServerMetrics } from "../server/metrics.ts";
import { startServer } from "../server/serve.ts";
import type { ServerContext } from "../server/context.ts";
import { textTokenizer } from "../text/tokenizer_port.ts";
import { tokenizePool } from "../server/tokenize_pool.ts";
import { runShell } from "../shell/shell.ts";
import { loadTokenizer } from "../tokenizer/tokenizer.ts";
import { Device } from "../../ffi/device.ts";
import { cudaDeviceCount } from "../../ffi/comm.ts";
import { tpError } from "../model/tp.ts";
import { ensureDefaultModel } from "./default_model.ts";
import { prepareNativeLibrary } from "./native_lib.ts";
import { type CliOptions, FlagError, helpText, parseFlags, resolveApiKey } from "./flags.ts";
import { progressPrinter } from "./progress.ts";
import { attentionPageSize } from "../runtime/attention.ts";

/** After the engine died: how long /health keeps answering 503 (with the reason) before
 *  the process exits non-zero for its supervisor to restart it. */
const ENGINE_DEATH_LINGER_MS = 2_000;

/** Tokenizer workers (each holds its own copy of the tokenizer): a burst of prompts is
 *  tokenized on several cores while the HTTP thread keeps streaming. */
const TOKENIZER_WORKERS = Math.min(8, Math.max(2, Math.floor(navigator.hardwareConcurrency / 2)));

/** Largest request body (413 beyond). */
const MAX_BODY_BYTES = 8 << 20;

const log = (line: string) => console.error(line);

/** The first line of an error's message (never a stack trace). */
export function errorLine(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split("\n")[0].trim() || (err instanceof Error ? err.name : "unknown error");
}

/** Picks the backend: auto = CUDA when its library loads and reports a device. */
function resolveDevice(opt: CliOptions["device"], cudaLib: string | null): "cpu" | "cuda" {
  if (opt !== "auto") return opt;
  if (cudaLib === null) return "cpu";
  try {
    new Device("cuda", 0);
    return "cuda";
  } catch {
    return "cpu";
  }
}

/** The engine configuration the flags describe. */
export function engineConfig(
  o: CliOptions,
  modelDir: string,
  device: "cpu" | "cuda",
): EngineConfig {
  const c = defaultEngineConfig(modelDir);
  return {
    ...c,
    device,
    tpSize: o.tp,
    nnodes: o.nnodes,
    nodeRank: o.nodeRank,
    distInitAddr: o.distInitAddr,
    dummyWeightSeed: o.dummyWeight ? 0 : null,
    pageSize: attentionPageSize(o.attn ?? c.attn, o.pageSize),
    numPages: o.numPages,
    memFraction: o.memFraction,
    maxRunningRequests: o.maxRunningRequests,
    maxPrefillLength: o.maxPrefillLength,
    maxQueuedRequests: o.maxQueuedRequests,
    cache: o.cache,
    disableOverlapSchedule: o.disableOverlapSchedule,
    cudaGraphMaxBs: device === "cpu" ? 0 : (o.cudaGraphMaxBs ?? c.cudaGraphMaxBs),
    attn: o.attn ?? c.attn,
    dtype: o.dtype,
    kvCacheDtype: o.kvCacheDtype,
    contextLength: o.contextLength,
    cpuThreads: o.cpuThreads,
  };
}

/** Runs the program; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  let opts: CliOptions;
  let apiKey: string | null;
  try {
    opts = parseFlags(argv);
    apiKey = resolveApiKey(opts);
  } catch (err) {
    if (err instanceof FlagError) {
      log(`error: ${err.message}`);
      return 1;
    }
    throw err;
  }
  if (opts.help) {
    console.log(helpText());
    return 0;
  }
  let engine: Engine | null = null;
  try {
    let modelDir = opts.model;
    if (modelDir === null) {
      modelDir = await ensureDefaultModel(log);
      log(
        `note: no --model given, using ${modelDir}: a tiny model with RANDOM weights, its output ` +
          "is random text. Use --model /path/to/Qwen3-0.6B for a real checkpoint.",
      );
    }
    // Validate the folder before anything heavy: one clear line on a broken model.
    const modelConfig = await loadModelConfig(modelDir);
    const tpErr = tpError(modelConfig, opts.tp);
    if (tpErr) throw new Error(tpErr);
    const hf = await loadTokenizer(modelDir);
    const tokenizer = textTokenizer(hf);
    // Compile and render the chat template once: a broken one stops start-up in one line
    // instead of failing every chat request.
    if (hf.chatTemplate !== null) {
      tokenizer.chatTemplate([{ role: "user", content: "hello" }], true, {});
    }
    const built = await prepareNativeLibrary(opts.device !== "cpu", log);
    if (opts.device === "cuda" && built.cuda === null) {
      throw new Error(
        "--device cuda: the CUDA library cannot be built here (nvcc or cuBLASLt missing)",
      );
    }
    const device = resolveDevice(opts.device, built.cuda);
    const localRanks = opts.tp / opts.nnodes;
    if (device === "cuda" && localRanks > cudaDeviceCount()) {
      const per = opts.nnodes > 1 ? ` (${localRanks} on each of --nnodes ${opts.nnodes})` : "";
      throw new Error(`--tp ${opts.tp}${per}: only ${cudaDeviceCount()} GPU(s) present`);
    }
    const config = engineConfig(opts, modelDir, device);
    log(`loading ${modelDir} (${modelConfig.arch}) on ${device}`);
    // Nodes other than node 0 serve no HTTP: they run their ranks for node 0's scheduler.
    if (config.nodeRank > 0) {
      if (opts.shell) {
        log(`note: --shell is for node 0; node ${config.nodeRank} serves its ranks only`);
      }
      return await runWorkerNode(config, log, progressPrinter(log));
    }
    engine = await startEngine(config, progressPrinter(log), log);
    const names = opts.servedModelName !== null
      ? [opts.servedModelName, engine.info.modelName]
      : [engine.info.modelName, modelDir];
    if (opts.shell) {
      await runShell({
        engine,
        tokenizer,
        input: Deno.stdin.readable,
        write: (text) => Deno.stdout.write(new TextEncoder().encode(text)).then(() => {}),
        maxTokens: opts.maxTokens,
        temperature: opts.temperature,
      });
      await engine.shutdown({ abort: true });
      return 0;
    }
    const ctx: ServerContext = {
      engine,
      tokenizer,
      modelNames: [...new Set(names)],
      apiKey,
      metrics: new ServerMetrics(),
      maxInFlight: opts.maxRunningRequests + opts.maxQueuedRequests,
      maxBodyBytes: MAX_BODY_BYTES,
      tokenize: tokenizePool(modelDir, tokenizer, TOKENIZER_WORKERS),
      inFlight: 0,
      closing: false,
      serverArgs: sglangServerArgs(opts, config, names[0]),
      samplingDefaults: opts.generationConfig === "auto"
        ? generationSamplingDefaults(modelConfig.generation)
        : {},
    };
    const shownDefaults = Object.entries(ctx.samplingDefaults ?? {});
    if (shownDefaults.length > 0) {
      log(
        `sampling defaults from generation_config.json: ${
          shownDefaults.map(([k, v]) => `${k}=${v}`).join(" ")
        } (a request's own values win; --generation-config ignore turns this off)`,
      );
    }
    const server = await startServer(ctx, opts.host, opts.port, {
      headerTimeoutMs: opts.headerTimeout * 1000,
      idleTimeoutMs: opts.keepAliveTimeout * 1000,
      maxConnections: opts.maxConnections,
    }, log);
    log(`accepting up to ${server.guard.options.maxConnections} connections`);
    const shown = server.hostname.includes(":") ? `[${server.hostname}]` : server.hostname;
    console.log(`listening on http://${shown}:${server.port}`);
    const died = await Promise.race([waitForSignal().then(() => null), engine.dead]);
    if (died !== null) {
      log(`error: the engine died: ${died}`);
      await new Promise((r) => setTimeout(r, ENGINE_DEATH_LINGER_MS));
      await server.shutdown(1_000);
      await engine.shutdown({ abort: true }).catch(() => {});
      return 1;
    }
    log("shutting down: finishing in-flight requests");
    await server.shutdown(opts.shutdownGrace * 1000);
    ctx.tokenize.close();
    await engine.shutdown();
    log("bye");
    return 0;
  } catch (err) {
    log(`error: ${errorLine(err)}`);
    if (engine) await engine.shutdown({ abort: true }).catch(() => {});
    return 1;
  }
}

/** The sampling defaults of generation_config.json, as vLLM applies them by default. */
export function generationSamplingDefaults(g: GenerationDefaults): Partial<SamplingParams> {
  const out: Partial<SamplingParams> = {};
  if (g.temperature !== undefined) out.temperature = g.temperature;
  if (g.topP !== undefined) out.topP = g.topP;
  if (g.topK !== undefined) out.topK = g.topK > 0 ? g.topK : 0;
  if (g.minP !== undefined) out.minP = g.minP;
  if (g.repetitionPenalty !== undefined) out.repetitionPenalty = g.repetitionPenalty;
  return out;
}

/** The settings /get_server_info reports, under SGLang's names. */
function sglangServerArgs(
  o: CliOptions,
  c: EngineConfig,
  servedName: string,
): Record<string, unknown> {
  return {
    model_path: c.modelDir,
    tokenizer_path: c.modelDir,
    served_model_name: servedName,
    host: o.host,
    port: o.port,
    tp_size: c.tpSize,
    nnodes: c.nnodes,
    dist_init_addr: c.distInitAddr,
    page_size: c.pageSize,
    mem_fraction_static: c.memFraction,
    max_running_requests: c.maxRunningRequests,
    max_queued_requests: c.maxQueuedRequests,
    chunked_prefill_size: c.maxPrefillLength,
    attention_backend: c.attn,
    disable_radix_cache: c.cache === "naive",
    disable_overlap_schedule: c.disableOverlapSchedule,
    cuda_graph_max_bs: c.cudaGraphMaxBs,
    dtype: c.dtype,
    kv_cache_dtype: c.kvCacheDtype,
    context_length: c.contextLength,
    device: c.device,
  };
}

/** Resolves on the first SIGINT or SIGTERM. */
function waitForSignal(): Promise<void> {
  return new Promise((resolve) => {
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    const handler = () => {
      for (const s of signals) Deno.removeSignalListener(s, handler);
      resolve();
    };
    for (const s of signals) Deno.addSignalListener(s, handler);
  });
}
