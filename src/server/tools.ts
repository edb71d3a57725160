/**
 * Tool calls on /v1/chat/completions: `tools`, `tool_choice` and `parallel_tool_calls`
 * validated; the tools go into the chat template (Qwen's and Llama 3's take a `tools`
 * variable); with tool_choice "required" or a named function the output is constrained to
 * the model family's tool-call format (src/grammar/tool_calls.ts) with arguments valid
 * against the parameters schema; with "auto" the model's own markup is parsed. The answer
 * carries `tool_calls` (ids, arguments as JSON strings) and finish_reason "tool_calls".
 */
import type { SamplingParams } from "../engine/types.ts";
import { GrammarError, specToRegex } from "../grammar/grammar.ts";
import type { ToolCallsSource } from "../grammar/tool_calls.ts";
import { badParam } from "./errors.ts";
import type { ChatMessage } from "../text/tokenizer_port.ts";

type Json = Record<string, unknown>;

/** The validated tool fields of a chat request (null when no tools were given). */
export interface ToolRequest {
  /** As the client sent them (the template renders them). */
  tools: Json[];
  choice: "auto" | "none" | "required" | { name: string };
  parallel: boolean;
}

/** One parsed call, in OpenAI's response shape. */
export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/** Reads `tools`, `tool_choice` and `parallel_tool_calls` (400s name the field). */
export function parseTools(body: Json): ToolRequest | null {
  const raw = body.tools;
  const choiceRaw = body.tool_choice;
  if (raw === undefined || raw === null) {
    if (
      choiceRaw !== undefined && choiceRaw !== null && choiceRaw !== "none" && choiceRaw !== "auto"
    ) {
      throw badParam("tool_choice", "'tool_choice' needs 'tools'.");
    }
    return null;
  }
  if (!Array.isArray(raw)) throw badParam("tools", "Invalid type for 'tools': expected an array.");
  const names = new Set<string>();
  raw.forEach((t, i) => {
    const p = `tools[${i}]`;
    if (t === null || typeof t !== "object" || (t as Json).type !== "function") {
      throw badParam(
        `${p}.type`,
        `Invalid '${p}': expected {"type": "function", "function": {...}}.`,
      );
    }
    const f = (t as Json).function as Json | undefined;
    if (!f || typeof f.name !== "string" || !/^[a-zA-Z0-9_.-]{1,64}$/.test(f.name)) {
      throw badParam(
        `${p}.function.name`,
        `Invalid '${p}.function.name': 1-64 of a-z, A-Z, 0-9, _ . -.`,
      );
    }
    if (f.parameters !== undefined && (f.parameters === null || typeof f.parameters !== "object")) {
      throw badParam(
        `${p}.function.parameters`,
        `Invalid '${p}.function.parameters': expected a JSON Schema object.`,
      );
    }
    names.add(f.name);
  });
  let choice: ToolRequest["choice"] = "auto";
  if (choiceRaw === "none" || choiceRaw === "auto" || choiceRaw === "required") choice = choiceRaw;
  else if (choiceRaw !== undefined && choiceRaw !== null) {
    const name = ((choiceRaw as Json)?.function as Json | undefined)?.name;
    if (
      typeof choiceRaw !== "object" || (choiceRaw as Json).type !== "function" ||
      typeof name !== "string"
    ) {
      throw badParam(
        "tool_choice",
        "Invalid 'tool_choice': 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
      );
    }
    if (!names.has(name)) {
      throw badParam("tool_choice", `'tool_choice' names an unknown function '${name}'.`);
    }
    choice = { name };
  }
  const par = body.parallel_tool_calls;
  if (par !== undefined && par !== null && typeof par !== "boolean") {
    throw badParam(
      "parallel_tool_calls",
      "Invalid type for 'parallel_tool_calls': expected a boolean.",
    );
  }
  return { tools: raw as Json[], choice, parallel: par !== false };
}

/** The model family's tool-call markup, from its chat template. */
export function toolFormat(chatTemplate: unknown): "qwen" | "llama3" {
  return typeof chatTemplate === "string" && chatTemplate.includes("<|start_header_id|>") &&
      !chatTemplate.includes("<tool_call>")
    ? "llama3"
    : "qwen";
}

/** Constrains the output to tool calls when tool_choice is "required" or a named function.
 *  A bad parameters schema is a 400 naming the tool. */
export function applyToolChoice(
  req: ToolRequest,
  format: "qwen" | "llama3",
  sampling: Partial<SamplingParams>,
): void {
  if (req.choice === "auto" || req.choice === "none") return;
  if (sampling.constraint) {
    throw badParam(
      "tool_choice",
      "'tool_choice' required or named cannot be combined with 'response_format' json, 'regex', " +
        "'json_schema' or 'ebnf'.",
    );
  }
  const fns = req.tools.map((t) => t.function as Json);
  const chosen = typeof req.choice === "object"
    ? fns.filter((f) => f.name === (req.choice as { name: string }).name)
    : fns;
  const src: ToolCallsSource = {
    format,
    parallel: req.parallel && req.choice === "required",
    tools: chosen.map((f) => ({ name: f.name as string, parameters: f.parameters })),
  };
  const c = { kind: "tool_calls" as const, source: JSON.stringify(src) };
  try {
    specToRegex(c);
  } catch (e) {
    if (e instanceof GrammarError) throw badParam("tools", `Invalid 'tools': ${e.message}`);
    throw e;
  }
  sampling.constraint = c;
}

let callCounter = 0;
function callId(): string {
  const r = crypto.getRandomValues(new Uint8Array(9));
  return `call_${Array.from(r, (b) => b.toString(36).padStart(2, "0")).join("").slice(0, 16)}${
    (callCounter++ % 1000).toString(36)
  }`;
}

function asCall(v: unknown, argKey: string): ToolCall | null {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return null;
  const o = v as Json;
  const args = o[argKey] ?? o.arguments ?? o.parameters ?? {};
  if (typeof o.name !== "string") return null;
  return {
    id: callId(),
    type: "function",
    function: { name: o.name, arguments: typeof args === "string" ? args : JSON.stringify(args) },
  };
}

/** Splits a completion into text and tool calls (the model's markup); calls is empty when
 *  the text holds none. */
export function parseToolCalls(
  text: string,
  format: "qwen" | "llama3",
): { content: string | null; calls: ToolCall[] } {
  const calls: ToolCall[] = [];
  if (format === "llama3") {
    const t = text.trim().replace(/^<\|python_tag\|>/, "");
    if (t.startsWith("{")) {
      try {
        const c = asCall(JSON.parse(t), "parameters");
        if (c) return { content: null, calls: [c] };
      } catch {
        // Not a call: plain text.
      }
    }
    return { content: text, calls };
  }
  const re = /<tool_call>\s*([\s\S]*?)\s*<\/tool_call>/g;
  let rest = "", last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    let call: ToolCall | null = null;
    try {
      call = asCall(JSON.parse(m[1]), "arguments");
    } catch {
      call = null;
    }
    if (!call) continue;
    calls.push(call);
    rest += text.slice(last, m.index);
    last = m.index + m[0].length;
  }
  if (calls.length === 0) return { content: text, calls };
  rest += text.slice(last);
  const content = rest.trim();
  return { content: content.length ? content : null, calls };
}

/** A history message's tool fields: an assistant turn's `tool_calls` (arguments parsed back
 *  into objects for the templates) and a tool result's `tool_call_id`. */
export function withToolFields(msg: ChatMessage, m: Json, p: string): ChatMessage {
  if (msg.role === "tool") {
    if (typeof m.tool_call_id !== "string") {
      throw badParam(`${p}.tool_call_id`, `Missing required parameter: '${p}.tool_call_id'.`);
    }
    msg.tool_call_id = m.tool_call_id;
  }
  if (msg.role === "assistant" && Array.isArray(m.tool_calls)) {
    msg.tool_calls = m.tool_calls.map((c, i) => {
      const f = (c as Json)?.function as Json | undefined;
      if (!f || typeof f.name !== "string") {
        throw badParam(`${p}.tool_calls[${i}].function`, `Invalid '${p}.tool_calls[${i}]'.`);
      }
      let args: unknown = f.arguments ?? {};
      if (typeof args === "string") {
        try {
          args = JSON.parse(args);
        } catch {
          // Kept as the string the client sent.
        }
      }
      return { ...(c as Json), function: { name: f.name, arguments: args } };
    });
  }
  return msg;
}
