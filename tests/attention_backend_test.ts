/** `--attn PREFILL[,DECODE]`: parsing, errors, resolution of every name on each kind of
 *  device, trtllm's page size, and the hybrid backend it builds. */
import assert from "node:assert/strict";
import {
  ATTENTION_BACKENDS,
  type AttentionBackend,
  attentionPageSize,
  createAttention,
  FA3_VARIANTS,
  parseAttentionNames,
  parseFa3Variant,
  resolveAttention,
} from "../src/runtime/attention.ts";
import { FlagError, parseFlags } from "../src/cli/flags.ts";
import { FA3_AUTO_V6_MAX_KEYS, hopperFor } from "../ffi/ops.ts";

const HOPPER = { cuda: true, hopper: true };
const AMPERE = { cuda: true, hopper: false };
const CPU = { cuda: false, hopper: false };

Deno.test("--attn: one name serves both phases, two names split them, unknown names fail", () => {
  assert.deepEqual(parseAttentionNames(""), ["auto", "auto"]);
  assert.deepEqual(parseAttentionNames("fa3"), ["fa3", "fa3"]);
  assert.deepEqual(parseAttentionNames("fa,fi"), ["fa", "fi"]);
  assert.throws(() => parseAttentionNames("flashinfer"), /unknown attention backend "flashinfer"/);
  assert.throws(() => parseAttentionNames("fa3,nope"), /unknown attention backend "nope"/);
  assert.throws(() => parseAttentionNames("fa,fi,fa"), /PREFILL\[,DECODE\]/);
});

Deno.test("--attn: names resolve to kernels by device, and the log line says so", () => {
  const prefill = (spec: string, dev: typeof HOPPER) => resolveAttention(spec, dev).prefill;
  for (const n of ["auto", "fa", "fa3", "fi", "trtllm"]) assert.equal(prefill(n, HOPPER), "fa3");
  for (const n of ["fa2", "native", "flashdecode"]) assert.equal(prefill(n, HOPPER), "fa2");
  for (const n of ATTENTION_BACKENDS) {
    assert.equal(prefill(n, AMPERE), "fa2", n);
    assert.equal(resolveAttention(n, AMPERE).decode, "flashdecode", n);
    const cpu = resolveAttention(n, CPU);
    assert.deepEqual([cpu.prefill, cpu.decode], ["cpu", "cpu"], n);
    assert.match(cpu.log, /CPU: every name runs the CPU kernels/);
  }
  assert.equal(
    resolveAttention("fa,fi", HOPPER).log,
    "attention: prefill fa -> fa3, decode fi -> flashdecode",
  );
  assert.match(resolveAttention("fa3", AMPERE).log, /prefill fa3 -> fa2.*fa3 needs sm_90/);
});

Deno.test("--attn: trtllm forces page size 64 unless it is 16, 32 or 64", () => {
  assert.equal(attentionPageSize("trtllm", 1), 64);
  assert.equal(attentionPageSize("fa,trtllm", 128), 64);
  for (const ps of [16, 32, 64]) assert.equal(attentionPageSize("trtllm", ps), ps);
  assert.equal(attentionPageSize("fa,fi", 1), 1);
  assert.throws(() => attentionPageSize("bogus", 1), /unknown attention backend/);
});

Deno.test("--attn: the hybrid backend is built from the resolved prefill kernel", () => {
  const made: string[] = [];
  const make = (kernel: string): AttentionBackend => {
    made.push(kernel);
    return {
      prepare() {},
      prepareCapture() {},
      prepareReplay() {},
      storeAndAttend() {},
    };
  };
  const { attn, resolved } = createAttention("fa,fi", HOPPER, make);
  assert.equal(attn.prefill, attn.decode);
  assert.deepEqual(made, ["fa3"]);
  assert.equal(resolved.decode, "flashdecode");
  createAttention("", AMPERE, make);
  assert.deepEqual(made, ["fa3", "fa2"]);
  assert.throws(() => createAttention("nope", HOPPER, make), /unknown attention backend/);
});

Deno.test("--attn: an unknown name is a flag error, before anything loads", () => {
  assert.equal(parseFlags(["--attn", "fa,fi"]).attn, "fa,fi");
  assert.throws(
    () => parseFlags(["--attn", "flashinfer"]),
    (e: Error) =>
      e instanceof FlagError && /unknown attention backend "flashinfer"/.test(e.message),
  );
});

Deno.test("MINISGL_FA3_VARIANT: unset is auto, auto/5/6 pick the entry points, others fail", () => {
  assert.equal(parseFa3Variant(undefined), "auto");
  assert.equal(parseFa3Variant(""), "auto");
  assert.equal(parseFa3Variant("auto"), "auto");
  assert.equal(parseFa3Variant("5"), 5);
  assert.equal(parseFa3Variant("6"), 6);
  assert.deepEqual(FA3_VARIANTS, { auto: "hopper", 5: "hopper5", 6: "hopper6" });
  for (const bad of ["1", "3", "4", "v5", "0", " 5", "7", "Auto"]) {
    assert.throws(() => parseFa3Variant(bad), /MINISGL_FA3_VARIANT must be auto, 5 or 6/);
  }
});

Deno.test("fa3 auto: v6 up to FA3_AUTO_V6_MAX_KEYS keys, v5 past it", () => {
  assert.equal(hopperFor(1), "hopper6");
  assert.equal(hopperFor(FA3_AUTO_V6_MAX_KEYS), "hopper6");
  assert.equal(hopperFor(FA3_AUTO_V6_MAX_KEYS + 1), "hopper5");
  assert.equal(hopperFor(32768), "hopper5");
});
