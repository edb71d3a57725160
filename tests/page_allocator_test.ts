import assert from "node:assert/strict";
import { PageAllocator } from "../src/cache/page_allocator.ts";

Deno.test("page allocator: alloc, free, exhaustion and double free", () => {
  const a = new PageAllocator(10);
  assert.equal(a.freePages, 10);
  const x = a.alloc(4)!;
  assert.deepEqual(x, [0, 1, 2, 3]);
  assert.equal(a.alloc(7), null, "all or nothing");
  assert.equal(a.freePages, 6);
  const y = a.alloc(6)!;
  assert.equal(new Set([...x, ...y]).size, 10);
  assert.equal(a.freePages, 0);
  assert.equal(a.alloc(1), null);
  a.free([2, 0]);
  assert.ok(a.isFree(2) && a.isFree(0) && !a.isFree(1));
  assert.deepEqual(a.alloc(2), [0, 2], "most recently freed first");
  assert.throws(() => a.free([5, 5]), /twice/);
  assert.throws(() => a.free([10]), /out of range/);
  assert.deepEqual(a.alloc(0), []);
});
