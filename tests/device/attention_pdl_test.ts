/**
 * The decode attention kernel reads seq_lens, the page table and the K/V of old keys before
 * its PDL wait (cuda/src/pdl.cuh's rule), but the newest key's K/V (written by the kernel just
 * before it, rope_store_kv in a forward pass) only after it. Here a PDL kernel (gather_i32)
 * rewrites the whole K+V pool (32 MB) just before the decode call on a created stream; every
 * request's newest key (slot seq_len - 1) holds NaN until then. Its pages are the last of the
 * pool, so they are written by the gather's last wave, while the decode blocks are already
 * resident; the K region is placed first, then last (a kernel reading the newest key early
 * would show NaN or stale data). Both kernels (MSG_DECODE_KERNEL), directly and as a graph of
 * (gather, decode) replayed after re-poisoning, against the CPU twin on the same calls.
 * Skipped unless the CUDA library loads and sees a device. MINISGL_KERNELS_SELF=1 runs it
 * with the CPU library on both sides (checks this harness without a GPU).
 */
import assert from "node:assert/strict";
import type { NativeLib } from "../../ffi/lib.ts";
import { BF16, DevBuf as Buf, fromBf16, loadPair, makeRng, ptr, SELF, toBf16 } from "./harness.ts";

const libs = loadPair();
const cpu = libs?.cpu as NativeLib, gpu = libs?.gpu as NativeLib;
const { rand, randn } = makeRng(777);

const hd = 128, ps = 16, hq = 32, hkv = 8, numPages = 512;
const seqs = [1, 5, 16, 17, 40, 100, 333, 1000];
const bs = seqs.length, maxSeq = 1024, qStride = (hq + 2 * hkv) * hd;
const slotElems = hkv * hd, regionElems = numPages * ps * slotElems;

/** Page table (row b = request b): the page of each request's newest key is among the last
 *  `bs` of the pool; the others are shuffled low pages. */
function pageTable() {
  const stride = Math.ceil(maxSeq / ps);
  const low = Int32Array.from({ length: numPages - bs }, (_, i) => i);
  for (let i = low.length - 1; i > 0; i--) {
    const j = rand() * (i + 1) | 0;
    [low[i], low[j]] = [low[j], low[i]];
  }
  const pt = new Int32Array(bs * stride);
  let next = 0;
  seqs.forEach((s, b) => {
    const pages = Math.ceil(s / ps);
    for (let j = 0; j < pages; j++) {
      pt[b * stride + j] = j === pages - 1 ? numPages - 1 - b : low[next++];
    }
  });
  return { pt, stride };
}

function relErr(ref: Float32Array, got: Float32Array, what: string): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) {
      assert.fail(`${what}: ${got[i]} at ${i} (newest key read early?)`);
    }
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

Deno.test({
  name: "attention decode: the newest key written by the PDL kernel just before is read after it",
  ignore: libs === null,
  fn() {
    const { pt, stride } = pageTable();
    // The pool: a 1M-value random block repeated (values only need to differ per key).
    const block = toBf16(randn(1 << 20, 1));
    const truth = new Uint16Array(2 * regionElems);
    for (let o = 0; o < truth.length; o += block.length) truth.set(block, o);
    const q = toBf16(randn(bs * qStride, 1));
    const idx = Int32Array.from({ length: truth.length / 2 }, (_, i) => i);

    const run = (lib: NativeLib, kFirst: boolean, graphReps: number): Float32Array[] => {
      const s = lib.sym;
      const kOff = kFirst ? 0 : regionElems, vOff = kFirst ? regionElems : 0;
      const poisoned = truth.slice();
      seqs.forEach((n, b) => {
        const key = n - 1, slot = pt[b * stride + (key / ps | 0)] * ps + key % ps;
        for (const off of [kOff, vOff]) {
          poisoned.fill(0x7fc0, off + slot * slotElems, off + (slot + 1) * slotElems);
        }
      });
      let st: Deno.PointerValue = null;
      if (lib !== cpu || SELF) {
        const h = new BigUint64Array(1);
        lib.check(s.msg_stream_create(ptr(h)), "stream");
        st = Deno.UnsafePointer.create(h[0]);
      }
      const pool = Buf.of(lib, poisoned), src = Buf.of(lib, truth), ix = Buf.of(lib, idx);
      const qb = Buf.of(lib, q), ptb = Buf.of(lib, pt);
      const rows = Buf.of(lib, Int32Array.from(seqs, (_, i) => i));
      const lens = Buf.of(lib, Int32Array.from(seqs)), out = new Buf(lib, bs * hq * hd * 2);
      lib.check(s.msg_device_sync(), "sync"); // the uploads, before work on `st`
      const call = () => {
        lib.check(s.msg_gather_i32(pool.p, src.p, ix.p, idx.length, st), "gather");
        lib.check(
          s.msg_attention_decode(
            out.p,
            qb.p,
            qStride,
            Deno.UnsafePointer.offset(pool.p!, kOff * 2),
            Deno.UnsafePointer.offset(pool.p!, vOff * 2),
            ptb.p,
            stride,
            rows.p,
            lens.p,
            bs,
            maxSeq,
            hq,
            hkv,
            hd,
            ps,
            1 / Math.sqrt(hd),
            BF16,
            BF16,
            st,
          ),
          "decode",
        );
      };
      const rePoison = () => {
        lib.check(s.msg_memcpy_h2d(pool.p, ptr(poisoned), BigInt(poisoned.byteLength), st), "h2d");
        lib.check(s.msg_memset(out.p, 0xff, BigInt(out.bytes), st), "poison out");
      };
      const read = () => {
        if (st) lib.check(s.msg_stream_sync(st), "sync");
        return fromBf16(out.read(new Uint16Array(bs * hq * hd)));
      };
      rePoison();
      call();
      const results = [read()];
      if (graphReps) {
        const h = new BigUint64Array(1);
        lib.check(s.msg_graph_begin(st), "graph begin");
        call();
        lib.check(s.msg_graph_end(st, ptr(h)), "graph end");
        const g = Deno.UnsafePointer.create(h[0]);
        for (let r = 0; r < graphReps; r++) {
          rePoison();
          lib.check(s.msg_graph_launch(g, st), "graph launch");
          results.push(read());
        }
        lib.check(s.msg_graph_destroy(g), "graph destroy");
      }
      [pool, src, ix, qb, ptb, rows, lens, out].forEach((b) => b.free());
      if (st) lib.check(s.msg_stream_destroy(st), "stream destroy");
      return results;
    };

    for (const kFirst of [true, false]) {
      const ref = run(cpu, kFirst, 0)[0];
      for (const kernel of ["balanced", "balanced-pf", "grid", "grid-pf"]) {
        Deno.env.set("MSG_DECODE_KERNEL", kernel);
        try {
          for (const [i, got] of run(gpu, kFirst, SELF ? 0 : 3).entries()) {
            const what = `${kFirst ? "K" : "V"} region first, ${kernel}, ${
              i ? `replay ${i}` : "direct"
            }`;
            const err = relErr(ref, got, what);
            assert.ok(err <= 1e-2, `${what}: relative L2 error ${err.toExponential(3)} > 1e-2`);
          }
        } finally {
          Deno.env.delete("MSG_DECODE_KERNEL");
        }
      }
    }
  },
});
