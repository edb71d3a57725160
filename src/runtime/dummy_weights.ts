/**
 * Dummy weights (`--dummy-weight`, `--load-format dummy`): every tensor of this rank's
 * shard is filled on the device from a seed, from config.json alone, so a 70B shape runs
 * without its files. Scale: uniform in +-sqrt(3 / fan_in), unit variance out of every
 * projection (LeCun), so activations neither vanish nor overflow over 80 layers; norms are
 * ones, the embedding uniform in +-1. Fill seeds differ per tensor and per rank.
 */
import type { Device, DType, Tensor } from "../../ffi/device.ts";
import type { Ops } from "../../ffi/ops.ts";
import type { ModelConfig } from "../model/config.ts";
import type { LayerWeights, ModelWeights } from "../model/llama.ts";
import type { TpShard } from "../model/tp.ts";

/** This rank's weights filled from `seed` (same shapes as loadWeights gives). */
export function dummyWeights(
  dev: Device,
  ops: Ops,
  cfg: ModelConfig,
  shard: TpShard,
  wDtype: DType,
  seed: bigint,
): ModelWeights {
  let tensorIndex = 0n;
  const fill = (shape: number[], mean: number, scale: number): Tensor => {
    const t = dev.alloc(wDtype, shape);
    const s = BigInt.asUintN(64, seed * 1000003n + BigInt(shard.rank) * 7919n + tensorIndex++);
    ops.fillRandom(t, BigInt.asUintN(64, s * 0x9E3779B97F4A7C15n), mean, scale);
    return t;
  };
  const proj = (rows: number, fanIn: number) => fill([rows, fanIn], 0, Math.sqrt(3 / fanIn));
  const ones = (n: number) => fill([n], 1, 0);
  const H = cfg.hiddenSize, D = cfg.headDim;
  const hq = shard.numHeads, hkv = shard.numKvHeads, I = shard.intermediate;
  const embed = fill([shard.vocabRows, H], 0, 1);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    layers.push({
      inputNorm: ones(H),
      qkv: proj((hq + 2 * hkv) * D, H),
      qkvBias: cfg.attentionBias ? fill([(hq + 2 * hkv) * D], 0, 0) : null,
      qNorm: cfg.qkNorm ? ones(D) : null,
      kNorm: cfg.qkNorm ? ones(D) : null,
      // The full fan-in of a row-parallel weight is ranks * local columns.
      o: fill([H, hq * D], 0, Math.sqrt(3 / (cfg.numHeads * D))),
      oBias: null,
      postNorm: ones(H),
      gateUp: proj(2 * I, H),
      down: fill([H, I], 0, Math.sqrt(3 / cfg.intermediateSize)),
    });
  }
  const norm = ones(H);
  const lmHead = cfg.tieWordEmbeddings ? embed : proj(shard.vocabRows, H);
  return { embed, layers, norm, lmHead };
}
