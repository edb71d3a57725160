/**
 * minisgl's entry point: `deno task serve [--model DIR] [flags]` serves the OpenAI API
 * (or chats in the terminal with --shell). See src/cli/run.ts and `--help`.
 */

import { main } from "./src/cli/run.ts";

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
