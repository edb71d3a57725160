/**
 * Command-line flags: definitions, help text, parsing (node:util parseArgs, strict) and
 * validation. Every mistake is a `FlagError` with a one-line message naming the flag.
 */

import { parseArgs } from "node:util";
import { DEFAULTS, type KvCacheDtype, parseKvCacheDtype } from "../core/defaults.ts";
import { parseAttentionNames } from "../runtime/attention.ts";
import { parseHostPort } from "../ipc/node_link.ts";

/** A bad command line; the message is one line. */
export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

/** `--attn`, validated before anything loads (an unknown backend name is a flag error). */
function attnFlag(spec: string | null): string | null {
  if (spec === null) return null;
  try {
    parseAttentionNames(spec);
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
  return spec;
}

/** `--kv-cache-dtype` (fp8 is fp8_e4m3). */
function kvCacheDtypeFlag(v: string | undefined): KvCacheDtype {
  if (v === undefined) return DEFAULTS.kvCacheDtype;
  try {
    return parseKvCacheDtype(v);
  } catch (e) {
    throw new FlagError((e as Error).message);
  }
}

/** The validated command line. */
export interface CliOptions {
  help: boolean;
  /** null: use the default tiny random model. */
  model: string | null;
  host: string;
  port: number;
  device: "cpu" | "cuda" | "auto";
  tp: number;
  /** Hosts the tensor-parallel ranks span, this host's place among them, and node 0's
   *  rendezvous address (null with one node). */
  nnodes: number;
  nodeRank: number;
  distInitAddr: string | null;
  /** Fill weights from a seed on the device (config.json alone, no safetensors). */
  dummyWeight: boolean;
  pageSize: number;
  /** null: size the pool from memory. */
  numPages: number | null;
  memFraction: number;
  maxRunningRequests: number;
  maxPrefillLength: number;
  maxQueuedRequests: number;
  cache: "radix" | "naive";
  disableOverlapSchedule: boolean;
  /** null: the engine's default. */
  cudaGraphMaxBs: number | null;
  /** Attention backend(s), e.g. "fa" or "fa,fi"; null: the engine's default. */
  attn: string | null;
  dtype: "auto" | "bfloat16" | "float16" | "float32";
  kvCacheDtype: KvCacheDtype;
  /** Cap on prompt + output tokens; null: the model's context. */
  contextLength: number | null;
  /** "auto": the model's generation_config.json gives the sampling defaults. */
  generationConfig: "auto" | "ignore";
  apiKey: string | null;
  /** A file holding the API key (its first line). */
  apiKeyFile: string | null;
  shell: boolean;
  servedModelName: string | null;
  /** Connection timeouts and the shutdown grace period, in seconds. */
  headerTimeout: number;
  keepAliveTimeout: number;
  shutdownGrace: number;
  /** Most open client connections; null: from the open-file limit. */
  maxConnections: number | null;
  /** 0: all cores. */
  cpuThreads: number;
  /** Shell: most tokens per answer, and the sampling temperature. */
  maxTokens: number;
  temperature: number;
}

/** Environment variable holding the API key when no flag gives one. */
export const API_KEY_ENV = "MINISGL_API_KEY";

/** The API key: --api-key, else the first line of --api-key-file, else $MINISGL_API_KEY,
 *  else null (no key). */
export function resolveApiKey(
  o: Pick<CliOptions, "apiKey" | "apiKeyFile">,
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): string | null {
  if (o.apiKey !== null) return o.apiKey;
  if (o.apiKeyFile !== null) {
    let text: string;
    try {
      text = Deno.readTextFileSync(o.apiKeyFile);
    } catch (e) {
      throw new FlagError(`--api-key-file ${o.apiKeyFile}: ${(e as Error).message}`);
    }
    const key = text.split(/\r?\n/)[0].trim();
    if (key === "") throw new FlagError(`--api-key-file ${o.apiKeyFile}: the first line is empty`);
    return key;
  }
  const fromEnv = env(API_KEY_ENV)?.trim();
  return fromEnv ? fromEnv : null;
}

/** One flag: its parseArgs type, default shown in --help, and help line. */
interface FlagSpec {
  type: "string" | "boolean";
  value?: string;
  help: string;
  short?: string;
  /** Other names of the flag (SGLang's, vLLM's), accepted the same way. */
  aliases?: string[];
}

const FLAGS: Record<string, FlagSpec> = {
  "model": {
    type: "string",
    value: "DIR",
    help: "Hugging Face model folder (default: a tiny random Qwen3, made in " +
      "~/.cache/minisgl/models/tiny-qwen3)",
    aliases: ["model-path"],
  },
  "host": {
    type: "string",
    value: "HOST",
    help: `address to listen on (default ${DEFAULTS.host})`,
  },
  "port": {
    type: "string",
    value: "PORT",
    help: `port to listen on, 0 = any free port (default ${DEFAULTS.port})`,
  },
  "device": {
    type: "string",
    value: "cpu|cuda|auto",
    help:
      `backend: auto = CUDA when its library loads and a GPU exists (default ${DEFAULTS.device})`,
  },
  "tp": {
    type: "string",
    value: "N",
    help: `tensor-parallel GPUs (default ${DEFAULTS.tpSize})`,
    aliases: ["tp-size", "tensor-parallel-size"],
  },
  "nnodes": {
    type: "string",
    value: "N",
    help: "hosts the --tp ranks span, tp / nnodes on each (default 1)",
  },
  "node-rank": {
    type: "string",
    value: "K",
    help: "this host's place, 0 .. nnodes - 1; node 0 serves HTTP, the others only compute",
  },
  "dist-init-addr": {
    type: "string",
    value: "HOST:PORT",
    help: "node 0's address, where the nodes meet (needed with --nnodes > 1)",
  },
  "dummy-weight": {
    type: "boolean",
    help: "random weights filled on the device from config.json alone (no safetensors read)",
  },
  "load-format": {
    type: "string",
    value: "auto|safetensors|dummy",
    help: "how weights are loaded: dummy = --dummy-weight (default auto)",
  },
  "page-size": {
    type: "string",
    value: "N",
    help: `tokens per KV page, a power of two up to 256 (default ${DEFAULTS.pageSize})`,
  },
  "num-pages": {
    type: "string",
    value: "N",
    help: "KV pages in the pool (default: sized from --mem-fraction)",
  },
  "mem-fraction": {
    type: "string",
    value: "F",
    help: "fraction of the device memory left free after loading the weights that the KV " +
      `cache takes (default ${DEFAULTS.memFraction}; the CPU backend takes at most 2 GiB)`,
    aliases: ["mem-fraction-static"],
  },
  "max-running-requests": {
    type: "string",
    value: "N",
    help: `most requests decoding at once (default ${DEFAULTS.maxRunningRequests})`,
  },
  "max-prefill-length": {
    type: "string",
    value: "N",
    help: `most prompt tokens in one prefill chunk (default ${DEFAULTS.maxPrefillLength})`,
  },
  "max-queued-requests": {
    type: "string",
    value: "N",
    help: "most requests waiting beyond the running ones; more get 503 " +
      `(default ${DEFAULTS.maxQueuedRequests})`,
  },
  "cache": {
    type: "string",
    value: "radix|naive",
    help: `prefix cache (default ${DEFAULTS.cache})`,
    aliases: ["cache-type"],
  },
  "disable-overlap-schedule": {
    type: "boolean",
    help: "schedule batch N+1 only after batch N finished",
  },
  "cuda-graph-max-bs": {
    type: "string",
    value: "N",
    help: "largest decode batch captured in a CUDA graph, 0 = none (default: from " +
      "--max-running-requests)",
  },
  "attn": {
    type: "string",
    value: "NAME[,NAME]",
    help: `attention backend (prefill[,decode]) (default ${DEFAULTS.attn})`,
    aliases: ["attention-backend"],
  },
  "generation-config": {
    type: "string",
    value: "auto|ignore",
    help: "auto: sampling defaults from the model's generation_config.json " +
      `(default ${DEFAULTS.generationConfig})`,
  },
  "context-length": {
    type: "string",
    value: "N",
    help: "most prompt + output tokens of a request (default: the model's context)",
  },
  "dtype": {
    type: "string",
    value: "auto|bfloat16|float16|float32",
    help: `weight dtype, float32 on the CPU only (default ${DEFAULTS.dtype}: the model's)`,
  },
  "kv-cache-dtype": {
    type: "string",
    value: "auto|fp8_e4m3",
    help: "KV cache storage: auto = the activation dtype, fp8_e4m3 (or fp8) halves the " +
      `cache's bytes: twice the tokens and less to read a decode step (default ${DEFAULTS.kvCacheDtype})`,
  },
  "api-key": {
    type: "string",
    value: "KEY",
    help: "require 'Authorization: Bearer KEY' on every route but /health and /metrics " +
      "(also --api-key-file, or $MINISGL_API_KEY: keeps the key out of ps)",
  },
  "api-key-file": { type: "string", value: "FILE", help: "read the API key from FILE" },
  "shell": {
    type: "boolean",
    help: "chat in the terminal instead of serving HTTP",
    aliases: ["shell-mode"],
  },
  "served-model-name": {
    type: "string",
    value: "NAME",
    help: "model name in the API (default: the folder's name)",
  },
  "header-timeout": {
    type: "string",
    value: "S",
    help: `seconds a client gets to send request headers (default ${DEFAULTS.headerTimeout})`,
  },
  "keep-alive-timeout": {
    type: "string",
    value: "S",
    help: `seconds an idle keep-alive connection stays open (default ${DEFAULTS.keepAliveTimeout})`,
  },
  "shutdown-grace": {
    type: "string",
    value: "S",
    help: "seconds requests may finish after SIGTERM/SIGINT before they are aborted " +
      `(default ${DEFAULTS.shutdownGrace})`,
  },
  "max-connections": {
    type: "string",
    value: "N",
    help: "most open client connections (default: a third of the open-file limit, less a " +
      "reserve)",
  },
  "cpu-threads": {
    type: "string",
    value: "N",
    help: `threads of the CPU backend, 0 = all cores (default ${DEFAULTS.cpuThreads})`,
  },
  "max-tokens": {
    type: "string",
    value: "N",
    help: `shell: most tokens per answer (default ${DEFAULTS.shellMaxTokens})`,
  },
  "temperature": {
    type: "string",
    value: "T",
    help: `shell: sampling temperature (default ${DEFAULTS.shellTemperature})`,
  },
  "help": { type: "boolean", short: "h", help: "show this help" },
};

/** The --help text. */
export function helpText(): string {
  const lines = [
    "minisgl: an OpenAI-compatible LLM server (Deno + a native CUDA/CPU library)",
    "",
    "usage: deno task serve [--model DIR] [flags]",
    "",
    "flags:",
  ];
  for (const [name, spec] of Object.entries(FLAGS)) {
    const left = `  ${spec.short ? `-${spec.short}, ` : ""}--${name}${
      spec.value ? ` ${spec.value}` : ""
    }`;
    const also = spec.aliases ? ` (also ${spec.aliases.map((a) => `--${a}`).join(", ")})` : "";
    lines.push(left.padEnd(42) + spec.help + also);
  }
  lines.push(
    "",
    "structured outputs (per request, see README): response_format json_schema / json_object,",
    "regex, json_schema and ebnf (SGLang's fields), logit_bias, tools + tool_choice.",
  );
  return lines.join("\n");
}

/** Turns parseArgs' errors into our one-line messages. */
function parseError(err: unknown): FlagError {
  const e = err as { code?: string; message?: string };
  const msg = e.message ?? String(err);
  if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const m = msg.match(/'(-{1,2}[^']*)'/);
    return new FlagError(`unknown flag ${m ? m[1] : msg} (see --help)`);
  }
  if (e.code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
    const m = msg.match(/'([^']*)'/);
    return new FlagError(`unexpected argument ${m ? m[1] : ""} (flags start with --; see --help)`);
  }
  if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    const m = msg.match(/'(--?[a-z-]+)/);
    const flag = m ? m[1] : "";
    if (msg.includes("does not take an argument")) {
      return new FlagError(`flag ${flag} takes no value (see --help)`);
    }
    return new FlagError(`flag ${flag} needs a value (see --help)`);
  }
  return new FlagError(`${msg.split("\n")[0]} (see --help)`);
}

/** --page-size must be a power of two (page math uses shifts). */
function powerOfTwo(n: number): number {
  if ((n & (n - 1)) !== 0) throw new FlagError(`--page-size must be a power of two, got ${n}`);
  return n;
}

/** --nnodes, --node-rank and --dist-init-addr, checked against --tp. */
function nodeFlags(tp: number, nnodes: number, nodeRank: number, addr: string | null) {
  if (tp % nnodes !== 0) {
    throw new FlagError(
      `--tp ${tp} does not divide over --nnodes ${nnodes} (tp / nnodes ranks a node)`,
    );
  }
  if (nodeRank >= nnodes) {
    throw new FlagError(`--node-rank ${nodeRank} must be below --nnodes ${nnodes}`);
  }
  if (nnodes > 1 && addr === null) {
    throw new FlagError(`--nnodes ${nnodes} needs --dist-init-addr HOST:PORT (node 0's address)`);
  }
  if (addr !== null && parseHostPort(addr) === null) {
    throw new FlagError(`--dist-init-addr must be HOST:PORT, got '${addr}'`);
  }
  return { nnodes, nodeRank, distInitAddr: nnodes > 1 ? addr : null };
}

/** Parses and validates argv. Throws FlagError. */
export function parseFlags(argv: string[]): CliOptions {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const [name, spec] of Object.entries(FLAGS)) {
    options[name] = spec.short ? { type: spec.type, short: spec.short } : { type: spec.type };
    for (const alias of spec.aliases ?? []) options[alias] = { type: spec.type };
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options, strict: true, allowPositionals: false })
      .values as Record<
        string,
        string | boolean | undefined
      >;
  } catch (err) {
    throw parseError(err);
  }
  // Aliases fold into their flag; two spellings of one flag must agree.
  for (const [name, spec] of Object.entries(FLAGS)) {
    for (const alias of spec.aliases ?? []) {
      const v = values[alias];
      if (v === undefined) continue;
      if (values[name] !== undefined && values[name] !== v) {
        throw new FlagError(`--${alias} and --${name} are the same flag with different values`);
      }
      values[name] = v;
      delete values[alias];
    }
  }
  const str = (name: string) => values[name] as string | undefined;
  const int = (name: string, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const v = str(name);
    if (v === undefined) return def;
    if (!/^[0-9]+$/.test(v.trim()) || !Number.isSafeInteger(Number(v))) {
      throw new FlagError(`--${name} expects an integer, got '${v}'`);
    }
    const n = Number(v);
    if (n < min || n > max) {
      throw new FlagError(`--${name} must be between ${min} and ${max}, got ${n}`);
    }
    return n;
  };
  const float = (
    name: string,
    def: number,
    min: number,
    max: number,
    exclusiveMin = false,
  ): number => {
    const v = str(name);
    if (v === undefined) return def;
    const n = Number(v);
    if (v.trim() === "" || !Number.isFinite(n)) {
      throw new FlagError(`--${name} expects a number, got '${v}'`);
    }
    if ((exclusiveMin ? n <= min : n < min) || n > max) {
      throw new FlagError(
        `--${name} must be in ${exclusiveMin ? "(" : "["}${min}, ${max}], got ${n}`,
      );
    }
    return n;
  };
  const choice = <T extends string>(name: string, def: T, allowed: readonly T[]): T => {
    const v = str(name);
    if (v === undefined) return def;
    if (!(allowed as readonly string[]).includes(v)) {
      throw new FlagError(`--${name} must be one of ${allowed.join(", ")}, got '${v}'`);
    }
    return v as T;
  };
  const nonEmpty = (name: string): string | null => {
    const v = str(name);
    if (v === undefined) return null;
    if (v.trim() === "") throw new FlagError(`--${name} must not be empty`);
    return v;
  };
  const numPagesRaw = str("num-pages");
  const tp = int("tp", DEFAULTS.tpSize, 1, 64);
  const graphRaw = str("cuda-graph-max-bs");
  return {
    help: values.help === true,
    model: nonEmpty("model"),
    host: nonEmpty("host") ?? DEFAULTS.host,
    port: int("port", DEFAULTS.port, 0, 65535),
    device: choice("device", DEFAULTS.device, ["cpu", "cuda", "auto"] as const),
    tp,
    ...nodeFlags(
      tp,
      int("nnodes", 1, 1, 64),
      int("node-rank", 0, 0, 63),
      nonEmpty("dist-init-addr"),
    ),
    dummyWeight: values["dummy-weight"] === true ||
      choice("load-format", "auto", ["auto", "safetensors", "dummy"] as const) === "dummy",
    pageSize: powerOfTwo(int("page-size", DEFAULTS.pageSize, 1, 256)),
    numPages: numPagesRaw === undefined ? null : int("num-pages", 0, 1),
    memFraction: float("mem-fraction", DEFAULTS.memFraction, 0, 1, true),
    maxRunningRequests: int("max-running-requests", DEFAULTS.maxRunningRequests, 1, 1 << 20),
    maxPrefillLength: int("max-prefill-length", DEFAULTS.maxPrefillLength, 1, 1 << 24),
    maxQueuedRequests: int("max-queued-requests", DEFAULTS.maxQueuedRequests, 0, 1 << 24),
    cache: choice("cache", DEFAULTS.cache, ["radix", "naive"] as const),
    disableOverlapSchedule: values["disable-overlap-schedule"] === true,
    cudaGraphMaxBs: graphRaw === undefined ? null : int("cuda-graph-max-bs", 0, 0, 4096),
    attn: attnFlag(nonEmpty("attn")),
    dtype: choice("dtype", DEFAULTS.dtype, ["auto", "bfloat16", "float16", "float32"] as const),
    kvCacheDtype: kvCacheDtypeFlag(str("kv-cache-dtype")),
    generationConfig: choice(
      "generation-config",
      DEFAULTS.generationConfig,
      [
        "auto",
        "ignore",
      ] as const,
    ),
    contextLength: str("context-length") === undefined
      ? null
      : int("context-length", 0, 1, 1 << 24),
    apiKey: nonEmpty("api-key"),
    apiKeyFile: nonEmpty("api-key-file"),
    shell: values.shell === true,
    servedModelName: nonEmpty("served-model-name"),
    headerTimeout: float("header-timeout", DEFAULTS.headerTimeout, 0, 3600, true),
    keepAliveTimeout: float("keep-alive-timeout", DEFAULTS.keepAliveTimeout, 0, 3600, true),
    shutdownGrace: float("shutdown-grace", DEFAULTS.shutdownGrace, 0, 3600),
    maxConnections: str("max-connections") === undefined
      ? null
      : int("max-connections", 0, 1, 1 << 20),
    cpuThreads: int("cpu-threads", DEFAULTS.cpuThreads, 0, 4096),
    maxTokens: int("max-tokens", DEFAULTS.shellMaxTokens, 1, 1 << 24),
    temperature: float("temperature", DEFAULTS.shellTemperature, 0, 2),
  };
}
