/**
 * make-model: the command line of src/model/make_model.ts.
 *
 *   deno task make-model --preset tiny-qwen3 --out .cache/models/tiny-qwen3 [--seed 0]
 */

import { parseArgs } from "node:util";
import { makeModel } from "../src/model/make_model.ts";
import { PRESETS } from "../src/model/presets.ts";

const HELP = `make-model: write a Hugging Face model folder with seeded random bf16 weights

Usage: deno task make-model --preset NAME --out DIR [--seed N] [--shard-gb G]

  --preset NAME   one of: ${Object.keys(PRESETS).join(", ")}
  --out DIR       output folder (created; existing model files replaced)
  --seed N        weight seed (default 0); same seed, same bytes
  --shard-gb G    largest safetensors shard in GB (default 4)
  --list          list presets
  -h, --help      this text
`;

async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        preset: { type: "string" },
        out: { type: "string" },
        seed: { type: "string" },
        "shard-gb": { type: "string" },
        list: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    console.error(`make-model: ${(e as Error).message.split("\n")[0]} (see --help)`);
    return 1;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.list) {
    for (const p of Object.values(PRESETS)) console.log(`${p.name.padEnd(14)} ${p.description}`);
    return 0;
  }
  const fail = (m: string) => (console.error(`make-model: ${m} (see --help)`), 1);
  if (!values.preset) return fail("--preset is required");
  if (!PRESETS[values.preset]) return fail(`unknown preset "${values.preset}"`);
  if (!values.out) return fail("--out is required");
  const seed = values.seed === undefined ? 0 : Number(values.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) return fail(`--seed must be an integer >= 0`);
  const gb = values["shard-gb"] === undefined ? 4 : Number(values["shard-gb"]);
  if (!(gb > 0)) return fail(`--shard-gb must be a positive number`);
  await makeModel(values.preset, values.out, {
    seed,
    maxShardBytes: Math.floor(gb * 1024 ** 3),
    log: (l) => console.log(l),
  });
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
