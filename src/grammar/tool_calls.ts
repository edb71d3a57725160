/**
 * Tool-call output formats as grammars: the model family's markup around a function name
 * and arguments valid against that function's parameter schema. Qwen (2.5 / 3):
 *   <tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>
 * one or more (parallel calls, newline-separated); Llama 3: {"name": "NAME", "parameters":
 * ARGS} (one call). The source of a "tool_calls" grammar is this JSON:
 *   {"format": "qwen" | "llama3", "parallel": bool, "tools": [{"name", "parameters"}]}.
 */
import { anyObject, schemaToRegex } from "./json_schema.ts";
import { alt, GrammarError, lit, rep, type Rx, seq } from "./regex.ts";

/** Most calls of one parallel answer. */
export const MAX_PARALLEL_CALLS = 4;

/** What a tool_calls grammar is built from. */
export interface ToolCallsSource {
  format: "qwen" | "llama3";
  parallel: boolean;
  tools: { name: string; parameters?: unknown }[];
}

/** The regex AST of a tool_calls source (GrammarError names a bad parameter schema). */
export function toolCallsToRegex(src: ToolCallsSource): Rx {
  if (!Array.isArray(src.tools) || src.tools.length === 0) {
    throw new GrammarError("tool_calls: no tools");
  }
  const calls = src.tools.map((t) => {
    let args: Rx;
    try {
      args = t.parameters === undefined ? anyObject() : schemaToRegex(t.parameters);
    } catch (e) {
      if (e instanceof GrammarError) {
        throw new GrammarError(`function ${t.name}: parameters: ${e.message}`);
      }
      throw e;
    }
    const name = JSON.stringify(t.name);
    return src.format === "qwen"
      ? seq(lit(`<tool_call>\n{"name": ${name}, "arguments": `), args, lit("}\n</tool_call>"))
      : seq(lit(`{"name": ${name}, "parameters": `), args, lit("}"));
  });
  const one = alt(...calls);
  if (src.format !== "qwen" || !src.parallel) return one;
  return seq(one, rep(seq(lit("\n"), one), 0, MAX_PARALLEL_CALLS - 1));
}
