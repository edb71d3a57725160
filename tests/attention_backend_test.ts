/** `--attn PREFILL[,DECODE]`: parsing, errors, and the hybrid backend it builds. */
import assert from "node:assert/strict";
import {
  type AttentionBackend,
  createAttention,
  parseAttentionNames,
} from "../src/runtime/attention.ts";

Deno.test("--attn: one name serves both phases, two names split them, unknown names fail", () => {
  assert.deepEqual(parseAttentionNames(""), ["native", "native"]);
  assert.deepEqual(parseAttentionNames("native"), ["native", "native"]);
  assert.deepEqual(parseAttentionNames("native,native"), ["native", "native"]);
  assert.throws(
    () => parseAttentionNames("fa"),
    /unknown attention backend "fa" \(known: native\)/,
  );
  assert.throws(() => parseAttentionNames("native,fi"), /unknown attention backend "fi"/);
  assert.throws(() => parseAttentionNames("native,native,native"), /PREFILL\[,DECODE\]/);
});

Deno.test("--attn: the hybrid backend builds each named backend once", () => {
  const made: string[] = [];
  const make = (name: string): AttentionBackend => {
    made.push(name);
    return {
      prepare() {},
      prepareCapture() {},
      prepareReplay() {},
      storeAndAttend() {},
    };
  };
  const one = createAttention("native", make);
  assert.equal(one.prefill, one.decode);
  assert.deepEqual(made, ["native"]);
  const two = createAttention("native,native", make);
  assert.equal(two.prefill, two.decode);
  assert.throws(() => createAttention("nope", make), /unknown attention backend/);
});
