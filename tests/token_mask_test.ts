/**
 * msg_apply_token_mask on the CPU backend, against the rule of minisgl.h computed here:
 * biased logits where the mask bit is set, -inf where it is clear, other rows untouched.
 */
import assert from "node:assert/strict";
import { loadNative } from "../ffi/lib.ts";

const ptr = (a: Int32Array | Float32Array) =>
  Deno.UnsafePointer.of(a as unknown as Uint8Array<ArrayBuffer>);

Deno.test("token mask: bias then mask on the listed rows only (CPU)", () => {
  const lib = loadNative("cpu");
  const vocab = 70, B = 4, W = Math.ceil(vocab / 32);
  const logits = Float32Array.from({ length: B * vocab }, (_, i) => Math.sin(i));
  const rows = Int32Array.from([3, 1]);
  const masks = new Int32Array(2 * W);
  const allowed = [[0, 5, 31, 32, 69], [1, 2, 3, 40, 64, 65]];
  allowed.forEach((a, i) => a.forEach((v) => masks[i * W + (v >> 5)] |= 1 << (v & 31)));
  const starts = Int32Array.from([0, 2, 3]);
  const ids = Int32Array.from([5, 6, 40]);
  const vals = Float32Array.from([100, 100, -7]);
  const out = logits.slice();
  lib.check(
    lib.sym.msg_apply_token_mask(
      ptr(out),
      vocab,
      ptr(rows),
      ptr(masks),
      ptr(starts),
      ptr(ids),
      ptr(vals),
      2,
      null,
    ),
    "token_mask",
  );
  const want = logits.slice();
  for (let i = 0; i < 2; i++) {
    const r = rows[i];
    for (let k = starts[i]; k < starts[i + 1]; k++) want[r * vocab + ids[k]] += vals[k];
    for (let v = 0; v < vocab; v++) {
      if (!allowed[i].includes(v)) want[r * vocab + v] = -Infinity;
    }
  }
  assert.deepEqual(out, want);
  // Token 6 got +100 but is masked on row 3: still -inf; token 5 is the row's argmax.
  assert.equal(out[3 * vocab + 6], -Infinity);
  const row3 = Array.from(out.subarray(3 * vocab, 4 * vocab));
  assert.equal(row3.indexOf(Math.max(...row3)), 5);
});
