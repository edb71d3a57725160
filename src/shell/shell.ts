/**
 * `--shell`: chat with the model in the terminal. Messages go through the model's chat
 * template with the whole history; /reset forgets it, /exit quits. Tokens are printed as
 * they come; Ctrl-C stops the current answer, not the shell. Works with stdin as a pipe
 * (the tests drive it that way).
 */

import { defaultSamplingParams, type Engine } from "../engine/types.ts";
import type { ChatMessage, TextTokenizer } from "../text/tokenizer_port.ts";
import { generateText } from "../text/textgen.ts";

/** What the shell needs. */
export interface ShellOptions {
  engine: Engine;
  tokenizer: TextTokenizer;
  /** Lines typed by the user. */
  input: ReadableStream<Uint8Array>;
  /** Where answers go. */
  write(text: string): Promise<void>;
  /** Most tokens per answer, and the sampling temperature. */
  maxTokens: number;
  temperature: number;
  /** Registers the Ctrl-C handler; returns its remover (default: Deno's SIGINT). */
  onInterrupt?(handler: () => void): () => void;
}

/** Splits a byte stream into lines (without their line ends). */
export async function* readLines(input: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of input) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
    }
  }
  buf += decoder.decode();
  if (buf.length > 0) yield buf;
}

function sigint(handler: () => void): () => void {
  try {
    Deno.addSignalListener("SIGINT", handler);
    return () => Deno.removeSignalListener("SIGINT", handler);
  } catch {
    return () => {}; // Platforms without signals: no Ctrl-C handling.
  }
}

/** The help printed at start and on unknown commands. */
export const SHELL_HELP =
  "Type a message and press Enter. /reset clears the history, /exit quits, " +
  "Ctrl-C stops an answer.";

/** Runs the chat loop until /exit or the end of input. */
export async function runShell(opts: ShellOptions): Promise<void> {
  const { engine, tokenizer, write } = opts;
  const history: ChatMessage[] = [];
  let current: string | null = null;
  let interrupted = false;
  let turn = 0;
  const removeInterrupt = (opts.onInterrupt ?? sigint)(() => {
    if (current !== null) {
      interrupted = true;
      engine.abort(current);
    } else {
      write("\n(Ctrl-C stops an answer; type /exit to quit)\n> ").catch(() => {});
    }
  });
  await write(`${SHELL_HELP}\n> `);
  try {
    for await (const raw of readLines(opts.input)) {
      const line = raw.trim();
      if (line === "") {
        await write("> ");
        continue;
      }
      if (line === "/exit" || line === "/quit") break;
      if (line === "/reset") {
        history.length = 0;
        await write("(history cleared)\n> ");
        continue;
      }
      if (line.startsWith("/")) {
        await write(`unknown command ${line}. ${SHELL_HELP}\n> `);
        continue;
      }
      history.push({ role: "user", content: line });
      const promptIds = tokenizer.chatTemplate(history, true, {});
      const room = engine.info.maxContextLen - promptIds.length;
      if (room <= 0) {
        history.pop();
        await write(
          `(the conversation is ${promptIds.length} tokens, beyond the context of ` +
            `${engine.info.maxContextLen}; /reset to start over)\n> `,
        );
        continue;
      }
      const id = `shell-${++turn}-${crypto.randomUUID().slice(0, 8)}`;
      current = id;
      interrupted = false;
      const params = {
        ...defaultSamplingParams(),
        temperature: opts.temperature,
        topP: opts.temperature > 0 ? 0.95 : 1,
        maxTokens: Math.min(opts.maxTokens, room),
      };
      let answer = "";
      let stats = "";
      const t0 = performance.now();
      try {
        for await (
          const chunk of generateText(engine, tokenizer.detokenizer(promptIds), {
            id,
            promptIds,
            params,
            stop: [],
          })
        ) {
          if (chunk.text) {
            answer += chunk.text;
            await write(chunk.text);
          }
          const f = chunk.finish;
          if (f) {
            const s = (performance.now() - t0) / 1000;
            stats = `[${f.usage.promptTokens} prompt tokens (${f.usage.cachedTokens} cached), ` +
              `${f.usage.completionTokens} tokens in ${s.toFixed(2)} s, finish: ${f.reason}]`;
          }
        }
      } catch (err) {
        // An abort we asked for (Ctrl-C) ends the stream with an error: not a failure.
        if (!interrupted) stats = `[error: ${(err as Error).message}]`;
      } finally {
        current = null;
      }
      if (interrupted) stats = "[stopped]";
      history.push({ role: "assistant", content: answer });
      await write(`\n${stats}\n> `);
    }
  } finally {
    removeInterrupt();
  }
  await write("\n");
}
