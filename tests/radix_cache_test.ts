import assert from "node:assert/strict";
import { PageAllocator } from "../src/cache/page_allocator.ts";
import { RadixCache, type RadixNode } from "../src/cache/radix_cache.ts";
import { NaiveCache } from "../src/cache/prefix_cache.ts";

function seq(...parts: (number[] | [number, number])[]): number[] {
  return parts.flat();
}
const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);

Deno.test("radix cache (page 1): insert, match, split, lock, evict", () => {
  const alloc = new PageAllocator(100);
  const c = new RadixCache(1, alloc);
  const a = seq([1, 2, 3, 4, 5]);
  const pa = alloc.alloc(5)!;
  assert.equal(c.insert(a, 5, pa), 0);
  assert.equal(c.cachedPages, 5);
  assert.equal(c.evictablePages, 5);

  // A match that ends inside the edge splits it.
  const m = c.match([1, 2, 3, 9, 9], 5);
  assert.equal(m.length, 3);
  assert.deepEqual(m.pages, pa.slice(0, 3));
  assert.equal(c.root.children.size, 1);
  const mid = c.root.children.get(1)!;
  assert.equal(mid.key.length, 3);
  assert.equal(mid.children.size, 1);

  // A second branch shares the first three tokens; insert reports the overlap.
  const b = [1, 2, 3, 7, 8, 9];
  const pb = alloc.alloc(6)!;
  assert.equal(c.insert(b, 6, pb), 3);
  alloc.free(pb.slice(0, 3)); // the caller's duplicates of the shared prefix
  assert.equal(c.cachedPages, 8);
  assert.equal(mid.children.size, 2);

  // maxLen caps a match.
  assert.equal(c.match(b, 4).length, 4);
  assert.equal(c.match(b, 0).length, 0);

  // Locked paths survive eviction; unlocked leaves go, least recently used first.
  const hb = c.match(b, 6);
  c.lock(hb.handle);
  assert.equal(c.evictablePages, 2); // a's tail [4, 5]
  assert.equal(c.evict(100), 2);
  assert.equal(c.cachedPages, 6);
  assert.equal(c.match(a, 5).length, 3);
  c.unlock(hb.handle);
  assert.equal(c.evictablePages, 6);
  assert.throws(() => c.unlock(hb.handle), /unlocked/);
  // Whole leaves go: b's tail, split into [7] + [8, 9] by the capped match above.
  assert.equal(c.evict(1), 2);
  assert.equal(c.evict(100), 4, "then [7], then the shared [1, 2, 3]");
  assert.equal(c.cachedPages, 0);
  assert.equal(alloc.freePages, 100);
});

Deno.test("radix cache (page 16): only full pages, aligned matches, LRU order", () => {
  const P = 16;
  const alloc = new PageAllocator(64);
  const c = new RadixCache(P, alloc);
  const a = range(0, 40); // 2 full pages + 8 tokens
  const pa = alloc.alloc(3)!;
  assert.throws(() => c.insert(a, 40, pa), /insert of 40/);
  assert.equal(c.insert(a, 32, pa), 0);
  alloc.free(pa.slice(2)); // the partial page stays private: freed by its owner
  // A prompt that differs inside page 2 matches page 1 only.
  const b = [...range(0, 20), 999, ...range(21, 19)];
  assert.equal(c.match(b, 40).length, 16);
  assert.equal(c.match(a, 31).length, 16, "rounded down to a page");
  assert.equal(c.match(a, 40).length, 32);
  // Same first token, different first page: distinct children.
  const d = [0, ...range(500, 31)];
  const pd = alloc.alloc(2)!;
  assert.equal(c.insert(d, 32, pd), 0);
  assert.equal(c.root.children.size, 2);
  assert.deepEqual(c.match(d, 32).pages, pd);
  // LRU: touch a, then evicting one leaf takes d.
  c.match(a, 32);
  // Eviction frees whole leaves: d's (2 pages, used longest ago) goes first.
  assert.equal(c.evict(1), 2);
  assert.equal(c.match(d, 32).length, 0);
  assert.equal(c.match(a, 32).length, 32);
});

Deno.test("radix cache (page 256): split at page boundaries", () => {
  const P = 256;
  const alloc = new PageAllocator(16);
  const c = new RadixCache(P, alloc);
  const a = range(0, 4 * P);
  const pa = alloc.alloc(4)!;
  c.insert(a, 4 * P, pa);
  const b = [...range(0, 2 * P), ...range(10000, 2 * P)];
  const pb = alloc.alloc(4)!;
  assert.equal(c.insert(b, 4 * P, pb), 2 * P);
  alloc.free(pb.slice(0, 2));
  assert.deepEqual(c.match(b, 4 * P).pages, [...pa.slice(0, 2), ...pb.slice(2)]);
  assert.equal(c.cachedPages, 6);
  const h = c.match(a, 3 * P + 5); // splits a's branch after page 3
  assert.equal(h.length, 3 * P);
  c.lock(h.handle);
  assert.equal(c.evictablePages, 3); // a's page 4, b's pages 3-4
  c.unlock(h.handle);
});

Deno.test("naive cache: shares nothing, frees on insert", () => {
  const alloc = new PageAllocator(8);
  const c = new NaiveCache(2, alloc);
  const p = alloc.alloc(3)!;
  assert.equal(c.insert([1, 2, 3, 4, 5], 4, p), 0);
  assert.equal(alloc.freePages, 7);
  assert.equal(c.match().length, 0);
});

/** Independent checks of the tree: every page is in exactly one of free / tree / held by a
 *  live request; evictable and lock counts agree with a recount; cached pages hold the
 *  tokens they are matched for. */
function checkInvariant(
  c: RadixCache,
  alloc: PageAllocator,
  live: { pages: number[]; ownedLen: number; handle: object | null }[],
  content: Map<number, string>,
) {
  const P = c.pageSize;
  const seen = new Uint8Array(alloc.numPages);
  let free = 0;
  for (let p = 0; p < alloc.numPages; p++) if (alloc.isFree(p)) (seen[p] = 1, free++);
  assert.equal(free, alloc.freePages);
  const locks = new Map<RadixNode, number>();
  for (const r of live) {
    for (let n = r.handle as RadixNode | null; n && n !== c.root; n = n.parent) {
      locks.set(n, (locks.get(n) ?? 0) + 1);
    }
    for (const p of r.pages.slice(r.ownedLen / P)) {
      assert.equal(seen[p], 0, `private page ${p} also elsewhere`);
      seen[p] = 1;
    }
  }
  let total = 0, evictable = 0;
  const walk = (n: RadixNode, prefix: string) => {
    for (const ch of n.children.values()) {
      assert.equal(ch.parent, n);
      assert.equal(ch.key.length, ch.pages.length * P);
      assert.equal(ch.lockRef, locks.get(ch) ?? 0, "lock count");
      let pre = prefix;
      for (let i = 0; i < ch.pages.length; i++) {
        const p = ch.pages[i];
        assert.equal(seen[p], 0, `tree page ${p} also elsewhere`);
        seen[p] = 1;
        pre += Array.from(ch.key.subarray(i * P, (i + 1) * P)).join(",") + ";";
        assert.equal(content.get(p), pre, "page holds the tokens it is matched for");
      }
      total += ch.pages.length;
      if (ch.lockRef === 0) evictable += ch.pages.length;
      walk(ch, pre);
    }
  };
  walk(c.root, "");
  assert.equal(total, c.cachedPages);
  assert.equal(evictable, c.evictablePages);
  assert.equal(seen.reduce((s, x) => s + x, 0), alloc.numPages, "a page leaked");
}

for (const P of [1, 16, 256]) {
  Deno.test(`radix cache (page ${P}): randomized operations keep the page invariant`, () => {
    let s = 12345 + P;
    const rnd = (n: number) => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return (s >>> 8) % n;
    };
    const numPages = P === 256 ? 48 : P === 16 ? 200 : 150;
    const U = Math.max(P, 8); // length unit: page 1 gets multi-token requests too
    const alloc = new PageAllocator(numPages);
    const c = new RadixCache(P, alloc);
    const content = new Map<number, string>(); // page -> tokens of the prefix it ends
    const bases = Array.from({ length: 4 }, (_, b) => range(b * 50000, 6 * Math.max(P, 8)));
    const live: { tokens: number[]; pages: number[]; ownedLen: number; handle: object | null }[] =
      [];
    const ops = P === 256 ? 1500 : 4000;
    let hits = 0, evicted = 0, failed = 0;
    for (let op = 0; op < ops; op++) {
      const kind = rnd(10);
      if (kind < 5) {
        // A request: shared base prefix + random tail, matched then given private pages.
        const base = bases[rnd(4)];
        const len = U * (1 + rnd(6)) + rnd(U);
        const tokens = [...base.slice(0, rnd(len + 1)), ...range(rnd(3) * 7, len)].slice(0, len);
        const m = c.match(tokens, len);
        if (m.length > 0) hits++;
        c.lock(m.handle);
        const need = Math.ceil(len / P) - m.pages.length;
        if (need > alloc.freePages) evicted += c.evict(need - alloc.freePages);
        const extra = alloc.alloc(need);
        if (!extra) {
          failed++;
          c.unlock(m.handle);
        } else {
          const pages = [...m.pages, ...extra];
          let pre = "";
          for (let i = 0; i < pages.length; i++) {
            pre += tokens.slice(i * P, (i + 1) * P).join(",") + ";";
            if (i >= m.pages.length) content.set(pages[i], pre);
          }
          live.push({ tokens, pages, ownedLen: m.length, handle: m.handle });
        }
      } else if (kind < 9 && live.length > 0) {
        // A request ends: its full pages go to the tree, duplicates and the tail are freed.
        const r = live.splice(rnd(live.length), 1)[0];
        const aligned = Math.floor(r.tokens.length / P) * P;
        const prefix = c.insert(r.tokens, aligned, r.pages);
        assert.ok(prefix >= r.ownedLen);
        alloc.free(r.pages.slice(r.ownedLen / P, prefix / P));
        alloc.free(r.pages.slice(aligned / P));
        c.unlock(r.handle);
      } else {
        evicted += c.evict(1 + rnd(8));
      }
      checkInvariant(c, alloc, live, content);
    }
    assert.ok(hits > ops / 10 && evicted > 0 && failed > 0, `${hits} ${evicted} ${failed}`);
    for (const r of live) {
      alloc.free(r.pages.slice(r.ownedLen / P));
      c.unlock(r.handle);
    }
    live.length = 0;
    assert.equal(c.evictablePages, c.cachedPages);
    c.evict(numPages);
    assert.equal(alloc.freePages, numPages);
  });
}
