/**
 * Hugging Face model folder configuration: `config.json` + `generation_config.json` parsed
 * into one typed, validated `ModelConfig`. Every problem is a `ModelError` whose message is
 * one line naming the file and what is wrong, so the CLI can print it as is.
 */

import { join } from "node:path";

/** A problem with a model folder (missing file, bad value, corrupt weights). One-line message. */
export class ModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelError";
  }
}

/** Supported dense decoder architectures. */
export type Arch = "llama" | "mistral" | "qwen2" | "qwen3";

/** `architectures[0]` of config.json -> our architecture. */
export const ARCHITECTURES: Readonly<Record<string, Arch>> = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "mistral",
  Qwen2ForCausalLM: "qwen2",
  Qwen3ForCausalLM: "qwen3",
};

/** Llama 3.1 style rope scaling (HF `rope_type: "llama3"`). */
export interface RopeScaling {
  type: "llama3";
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** Sampling defaults from generation_config.json (only those present). */
export interface GenerationDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
}

/** Weight / activation dtype named in config.json. */
export type TorchDtype = "bfloat16" | "float16" | "float32";

/** Everything the engine needs to know about a model's shape. */
export interface ModelConfig {
  arch: Arch;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2 always; Llama/Qwen3 when `attention_bias`). */
  attentionBias: boolean;
  /** o_proj carries a bias (Llama/Qwen3 `attention_bias`: HF uses it for o_proj too). */
  oProjBias: boolean;
  /** Per-head RMSNorm of q and k before rope (Qwen3). */
  qkNorm: boolean;
  torchDtype: TorchDtype;
  /** Union of config.json and generation_config.json eos ids (config's first). */
  eosTokenIds: number[];
  bosTokenId: number | null;
  generation: GenerationDefaults;
  /** Things read but deliberately not applied (e.g. sliding window), for a startup log. */
  notes: string[];
}

type Json = Record<string, unknown>;

/** Reads and validates `<dir>/config.json` and the optional `<dir>/generation_config.json`. */
export async function loadModelConfig(dir: string): Promise<ModelConfig> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch {
    throw new ModelError(`${dir}: model folder not found`);
  }
  if (!st.isDirectory) throw new ModelError(`${dir}: not a folder`);
  const config = await readJsonFile(join(dir, "config.json"), true);
  const generation = await readJsonFile(join(dir, "generation_config.json"), false);
  return parseModelConfig(config!, generation, join(dir, "config.json"));
}

/** Reads a JSON object file; null when absent and not required. Errors are ModelErrors. */
export async function readJsonFile(path: string, required: boolean): Promise<Json | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      if (!required) return null;
      throw new ModelError(`${path}: missing`);
    }
    throw new ModelError(`${path}: cannot read (${(e as Error).message})`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ModelError(`${path}: invalid JSON (${(e as Error).message.split("\n")[0]})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ModelError(`${path}: expected a JSON object`);
  }
  return value as Json;
}

/** Validates already-parsed config.json (and generation_config.json) objects.
 *  `source` names the file in error messages. */
export function parseModelConfig(
  config: Json,
  generation: Json | null,
  source = "config.json",
): ModelConfig {
  const fail = (what: string): never => {
    throw new ModelError(`${source}: ${what}`);
  };
  const archs = config.architectures;
  const archName = Array.isArray(archs) && typeof archs[0] === "string" ? archs[0] : undefined;
  if (archName === undefined) fail(`missing field "architectures"`);
  const arch = ARCHITECTURES[archName!];
  if (arch === undefined) {
    fail(
      `unknown architecture "${archName}" (supported: ${Object.keys(ARCHITECTURES).join(", ")})`,
    );
  }

  const int = (key: string, def?: number): number => {
    const v = config[key];
    if (v === undefined || v === null) {
      if (def !== undefined) return def;
      return fail(`missing field "${key}"`);
    }
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      return fail(`field "${key}" must be a positive integer, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const num = (key: string, def: number): number => {
    const v = config[key];
    if (v === undefined || v === null) return def;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      return fail(`field "${key}" must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const bool = (key: string, def: boolean): boolean => {
    const v = config[key];
    if (v === undefined || v === null) return def;
    if (typeof v !== "boolean") fail(`field "${key}" must be true or false`);
    return v as boolean;
  };

  const hiddenSize = int("hidden_size");
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    fail(`num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  }
  const headDim = int("head_dim", hiddenSize % numHeads === 0 ? hiddenSize / numHeads : undefined);

  // Newer transformers move rope_theta and the scaling into `rope_parameters`.
  const ropeParams = objectOrNull(config.rope_parameters) ?? objectOrNull(config.rope_scaling);
  let ropeTheta = num("rope_theta", 0);
  if (ropeTheta === 0) {
    const t = ropeParams?.rope_theta;
    if (t !== undefined && (typeof t !== "number" || !(t > 0))) fail(`bad rope_theta ${t}`);
    ropeTheta = (t as number | undefined) ?? 10000;
  }
  const ropeScaling = parseRopeScaling(ropeParams, fail);

  const defaultMaxPos: Record<Arch, number> = {
    llama: 2048,
    mistral: 32768,
    qwen2: 32768,
    qwen3: 32768,
  };
  const dtypeRaw = config.torch_dtype ?? config.dtype ?? "bfloat16";
  if (dtypeRaw !== "bfloat16" && dtypeRaw !== "float16" && dtypeRaw !== "float32") {
    fail(`unsupported torch_dtype ${JSON.stringify(dtypeRaw)} (bfloat16, float16 or float32)`);
  }
  if (bool("mlp_bias", false)) fail(`mlp_bias true is not supported`);
  const hiddenAct = config.hidden_act ?? "silu";
  if (hiddenAct !== "silu") fail(`unsupported hidden_act ${JSON.stringify(hiddenAct)} (silu)`);

  const attnBiasFlag = bool("attention_bias", false);
  const notes: string[] = [];
  const sw = config.sliding_window;
  if (typeof sw === "number" && config.use_sliding_window !== false) {
    notes.push(`sliding_window ${sw} ignored: full attention is used`);
  }

  const eosTokenIds: number[] = [];
  for (
    const [v, file] of [
      [config.eos_token_id, source],
      [generation?.eos_token_id, "generation_config.json"],
    ] as const
  ) {
    for (const id of v === undefined || v === null ? [] : Array.isArray(v) ? v : [v]) {
      if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
        throw new ModelError(`${file}: bad eos_token_id ${JSON.stringify(v)}`);
      }
      if (!eosTokenIds.includes(id)) eosTokenIds.push(id);
    }
  }
  const bos = config.bos_token_id ?? generation?.bos_token_id ?? null;
  if (bos !== null && (typeof bos !== "number" || !Number.isInteger(bos))) {
    fail(`bad bos_token_id ${JSON.stringify(bos)}`);
  }

  const cfg: ModelConfig = {
    arch: arch!,
    hiddenSize,
    intermediateSize: int("intermediate_size"),
    numLayers: int("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int("vocab_size"),
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: int("max_position_embeddings", defaultMaxPos[arch!]),
    tieWordEmbeddings: bool("tie_word_embeddings", false),
    attentionBias: arch === "qwen2" || (arch !== "mistral" && attnBiasFlag),
    oProjBias: (arch === "llama" || arch === "qwen3") && attnBiasFlag,
    qkNorm: arch === "qwen3",
    torchDtype: dtypeRaw as TorchDtype,
    eosTokenIds,
    bosTokenId: bos as number | null,
    generation: parseGeneration(generation),
    notes,
  };
  return cfg;
}

function objectOrNull(v: unknown): Json | null {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v as Json : null;
}

function parseRopeScaling(p: Json | null, fail: (what: string) => never): RopeScaling | null {
  if (p === null) return null;
  const type = p.rope_type ?? p.type ?? "default";
  if (type === "default") return null;
  if (type !== "llama3") {
    return fail(`unsupported rope scaling type ${JSON.stringify(type)} (default, llama3)`);
  }
  const field = (k: string): number => {
    const v = p[k];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      return fail(`rope scaling field "${k}" must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const s: RopeScaling = {
    type: "llama3",
    factor: field("factor"),
    lowFreqFactor: field("low_freq_factor"),
    highFreqFactor: field("high_freq_factor"),
    originalMaxPositionEmbeddings: field("original_max_position_embeddings"),
  };
  if (s.highFreqFactor <= s.lowFreqFactor) {
    fail(`rope scaling high_freq_factor must exceed low_freq_factor`);
  }
  return s;
}

function parseGeneration(g: Json | null): GenerationDefaults {
  const out: GenerationDefaults = {};
  if (g === null) return out;
  const pick = (k: string): number | undefined => {
    const v = g[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new ModelError(`generation_config.json: field "${k}" must be a number`);
    }
    return v;
  };
  const t = pick("temperature"),
    p = pick("top_p"),
    k = pick("top_k"),
    m = pick("min_p"),
    r = pick("repetition_penalty");
  if (t !== undefined) out.temperature = t;
  if (p !== undefined) out.topP = p;
  if (k !== undefined) out.topK = k;
  if (m !== undefined) out.minP = m;
  if (r !== undefined) out.repetitionPenalty = r;
  return out;
}
