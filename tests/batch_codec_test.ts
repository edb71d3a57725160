import assert from "node:assert/strict";
import {
  decodeBatch,
  decodeFailure,
  decodeResult,
  encodeBatch,
  encodeFailure,
  encodeResult,
  encodeShutdown,
  KIND_FAILURE,
  KIND_SHUTDOWN,
  recordKind,
} from "../src/ipc/batch_codec.ts";
import type { BatchEntry, ForwardBatch, ForwardResult } from "../src/ipc/batch.ts";

function entry(k: number, decode: boolean): BatchEntry {
  const qLen = decode ? 1 : 5 + k;
  return {
    row: k,
    startPos: 100 * k,
    qLen,
    inputIds: decode ? null : Int32Array.from({ length: qLen }, (_, i) => 1000 + i + k),
    pageStart: k,
    newPages: Int32Array.from({ length: k % 3 }, (_, i) => 7 * k + i),
    sample: k % 2 === 0,
    sampling: {
      temperature: k * 0.25,
      topP: 0.5,
      topK: k,
      minP: 0.125,
      seed: 0xFEDCBA9876543210n + BigInt(k),
      step: k * 3,
      presencePenalty: 0.5,
      frequencyPenalty: -0.25,
      repetitionPenalty: 1.5,
    },
    penaltyTokens: k % 4 === 1 ? Int32Array.of(1, 2, 3, k) : null,
    logprobTargets: !decode && k % 3 === 0
      ? Int32Array.from({ length: qLen }, (_, i) => i - 1)
      : null,
    topLogprobs: k % 5,
    // Constrained entries: a key, the grammar on some (non-ASCII source), logit_bias.
    grammar: k % 3 === 2
      ? {
        key: 900 + k,
        spec: k % 6 === 2
          ? { kind: "json_schema", source: `{"const":"é${k}"}`, stopIds: Int32Array.of(7, k) }
          : null,
      }
      : null,
    logitBias: k % 4 === 3
      ? { ids: Int32Array.of(k, 3), values: Float32Array.of(100, -2.5) }
      : null,
  };
}

function plain(x: unknown): unknown {
  return JSON.parse(
    JSON.stringify(
      x,
      (_, v) =>
        typeof v === "bigint"
          ? v.toString()
          : ArrayBuffer.isView(v)
          ? Array.from(v as Int32Array)
          : v,
    ),
  );
}

Deno.test("batch codec: a mixed batch round-trips exactly", () => {
  const batch: ForwardBatch = {
    id: 42,
    entries: Array.from({ length: 20 }, (_, k) => entry(k, k % 2 === 1)),
    releasedGrammars: Int32Array.of(3, 1 << 30),
  };
  const copy = encodeBatch(batch).slice(); // as the ring would copy it
  assert.deepEqual(plain(decodeBatch(copy)), plain(batch));
  // Seeds with the top bit set survive the two-word split.
  assert.equal(decodeBatch(copy).entries[3].sampling.seed, 0xFEDCBA9876543213n);
});

Deno.test("batch codec: results round-trip, nulls included", () => {
  const res: ForwardResult = {
    id: 7,
    tokens: Int32Array.of(5, -1, 9),
    logprobs: Float32Array.of(-0.5, NaN, -2.25),
    topIds: [Int32Array.of(5, 6), null, Int32Array.of(9)],
    topLogprobs: [Float32Array.of(-0.5, -1.5), null, Float32Array.of(-2.25)],
    promptLogprobs: [null, Float32Array.of(NaN, -3, -4), Float32Array.of()],
    promptTopIds: [null, Int32Array.of(1, 2, 3, 4, 5, 6), null],
    promptTopLogprobs: [null, Float32Array.of(-1, -2, -3, -4, -5, -6), null],
    seconds: 0.25,
  };
  const back = decodeResult(encodeResult(res).slice());
  assert.equal(back.id, 7);
  assert.deepEqual(Array.from(back.tokens), [5, -1, 9]);
  assert.deepEqual(Array.from(back.logprobs), [-0.5, NaN, -2.25]);
  assert.deepEqual(back.topIds.map((x) => x && Array.from(x)), [[5, 6], null, [9]]);
  assert.deepEqual(back.topLogprobs.map((x) => x && Array.from(x)), [[-0.5, -1.5], null, [-2.25]]);
  assert.deepEqual(back.promptLogprobs.map((x) => x && Array.from(x)), [null, [NaN, -3, -4], []]);
  assert.deepEqual(back.promptTopIds.map((x) => x && Array.from(x)), [
    null,
    [1, 2, 3, 4, 5, 6],
    null,
  ]);
  assert.deepEqual(
    back.promptTopLogprobs.map((x) => x && Array.from(x)),
    [null, [-1, -2, -3, -4, -5, -6], null],
  );
  assert.equal(back.seconds, 0.25);
  assert.equal(recordKind(encodeShutdown()), KIND_SHUTDOWN);
  assert.throws(() => decodeResult(encodeShutdown()), /not a result/);
});

Deno.test("batch codec: a failure record carries its message, any length and script", () => {
  for (const m of ["", "x", "abcd", "injected fault (gpu) after 4 batches", "échec: 故障 ✗"]) {
    const rec = encodeFailure(m);
    assert.equal(recordKind(rec), KIND_FAILURE);
    assert.equal(decodeFailure(rec), m);
  }
  assert.throws(() => decodeFailure(encodeShutdown()), /not a failure/);
});
