/// <reference lib="deno.worker" />
/**
 * Tokenizer worker: tokenizes and renders chat templates of large inputs away from the
 * HTTP thread, so that one big body delays only its own request (src/server/tokenize_pool.ts).
 *
 * Protocol: {type:"init", modelDir} -> {type:"ready"} or {type:"error", message}; then
 * {id, op:"encode", text, addSpecialTokens} | {id, op:"chat", messages, addGenerationPrompt,
 * kwargs} | {id, op:"decode", ids} -> {id, result} or {id, error}.
 */
import { loadTokenizer } from "../src/tokenizer/tokenizer.ts";
import { type TextTokenizer, textTokenizer } from "../src/text/tokenizer_port.ts";
import type { TokenizeJob } from "../src/server/tokenize_pool.ts";
import { warmTokenizer } from "../src/text/warm_up.ts";

let tok: TextTokenizer | null = null;

self.onmessage = async (ev: MessageEvent) => {
  const m = ev.data;
  if (m.type === "init") {
    try {
      const hf = await loadTokenizer(m.modelDir);
      tok = textTokenizer(hf);
      warmTokenizer(tok, hf.vocabSize);
      self.postMessage({ type: "ready" });
    } catch (e) {
      self.postMessage({ type: "error", message: (e as Error).message });
    }
    return;
  }
  const job = m as TokenizeJob & { id: number };
  try {
    let result: number[] | string;
    if (job.op === "encode") result = tok!.encode(job.text, job.addSpecialTokens);
    else if (job.op === "chat") {
      result = tok!.chatTemplate(job.messages, job.addGenerationPrompt, job.kwargs);
    } else result = tok!.decode(job.ids);
    self.postMessage({ id: job.id, result });
  } catch (e) {
    self.postMessage({ id: job.id, error: (e as Error).message });
  }
};
