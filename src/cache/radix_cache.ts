/**
 * Radix prefix cache (--cache radix): a token-prefix tree whose edges carry the KV pages
 * of their tokens. Matching and inserting are page-aligned (only full pages are shared),
 * nodes split at page boundaries, locked nodes (reference counts up the path) are never
 * evicted, and eviction frees least-recently-used unlocked leaves first.
 */

import type { PageAllocator } from "./page_allocator.ts";
import type { CacheHandle, CacheMatch, PrefixCache } from "./prefix_cache.ts";

/** A tree node: the edge from its parent holds `key` tokens and their `pages`. */
export class RadixNode {
  children = new Map<number | string, RadixNode>();
  lockRef = 0;
  lastAccess = 0;
  constructor(
    public parent: RadixNode | null,
    public key: Int32Array,
    public pages: Int32Array,
  ) {}
}

/** The radix cache over one page allocator. */
export class RadixCache implements PrefixCache {
  readonly sharing = true;
  readonly root = new RadixNode(null, new Int32Array(0), new Int32Array(0));
  #evictable = 0;
  #total = 0;
  #tick = 0;

  constructor(readonly pageSize: number, readonly allocator: PageAllocator) {
    this.root.lockRef = 1; // the root is never evicted
  }

  get evictablePages(): number {
    return this.#evictable;
  }
  get cachedPages(): number {
    return this.#total;
  }

  /** Child map key of the page starting at tokens[pos]: the token itself for page size 1,
   *  the whole first page otherwise (two edges may share a first token). */
  #childKey(tokens: ArrayLike<number>, pos: number): number | string {
    if (this.pageSize === 1) return tokens[pos];
    let s = "" + tokens[pos];
    for (let i = 1; i < this.pageSize; i++) s += "," + tokens[pos + i];
    return s;
  }

  /** Walk down from the root along tokens[0, len), splitting the last edge where the
   *  match ends inside it. Returns the deepest node reached, the matched length and the
   *  pages on the way. */
  #walk(tokens: ArrayLike<number>, len: number, pages: number[] | null) {
    const P = this.pageSize;
    const tick = ++this.#tick;
    let node = this.root;
    let pos = 0;
    node.lastAccess = tick;
    while (pos + P <= len) {
      const child = node.children.get(this.#childKey(tokens, pos));
      if (!child) break;
      const key = child.key;
      const lim = Math.min(key.length, len - pos);
      let cl = P; // the first page matched (the map key)
      while (cl < lim && key[cl] === tokens[pos + cl]) cl++;
      cl -= cl % P;
      const next = cl < key.length ? this.#split(child, cl) : child;
      next.lastAccess = tick;
      if (pages) { for (let i = 0; i < next.pages.length; i++) pages.push(next.pages[i]); }
      pos += cl;
      node = next;
      if (cl < key.length) break;
    }
    return { node, pos };
  }

  /** Split `child` so that its first `at` tokens become a new node above it. */
  #split(child: RadixNode, at: number): RadixNode {
    const parent = child.parent!;
    const mid = new RadixNode(
      parent,
      child.key.subarray(0, at),
      child.pages.subarray(0, at / this.pageSize),
    );
    mid.lockRef = child.lockRef;
    mid.lastAccess = child.lastAccess;
    child.key = child.key.subarray(at);
    child.pages = child.pages.subarray(at / this.pageSize);
    child.parent = mid;
    mid.children.set(this.#childKey(child.key, 0), child);
    parent.children.set(this.#childKey(mid.key, 0), mid);
    return mid;
  }

  match(tokens: ArrayLike<number>, maxLen: number): CacheMatch {
    const pages: number[] = [];
    const { node, pos } = this.#walk(tokens, Math.min(maxLen, tokens.length), pages);
    return { handle: node === this.root ? null : node, length: pos, pages };
  }

  lock(handle: CacheHandle): void {
    for (let n = handle as RadixNode | null; n && n !== this.root; n = n.parent) {
      if (n.lockRef === 0) this.#evictable -= n.pages.length;
      n.lockRef++;
    }
  }

  unlock(handle: CacheHandle): void {
    for (let n = handle as RadixNode | null; n && n !== this.root; n = n.parent) {
      if (n.lockRef <= 0) throw new Error("radix cache: unlock of an unlocked node");
      n.lockRef--;
      if (n.lockRef === 0) this.#evictable += n.pages.length;
    }
  }

  insert(tokens: ArrayLike<number>, len: number, pages: ArrayLike<number>): number {
    const P = this.pageSize;
    if (len % P !== 0) throw new Error(`radix cache: insert of ${len} tokens (page ${P})`);
    const { node, pos } = this.#walk(tokens, len, null);
    if (pos < len) {
      const key = Int32Array.from({ length: len - pos }, (_, i) => tokens[pos + i]);
      const pg = Int32Array.from({ length: (len - pos) / P }, (_, i) => pages[pos / P + i]);
      const leaf = new RadixNode(node, key, pg);
      leaf.lastAccess = this.#tick;
      node.children.set(this.#childKey(key, 0), leaf);
      this.#evictable += pg.length;
      this.#total += pg.length;
    }
    return pos;
  }

  handleOf(tokens: ArrayLike<number>, len: number): CacheHandle {
    const { node, pos } = this.#walk(tokens, len, null);
    if (pos !== len) throw new Error("radix cache: handleOf a prefix that is not cached");
    return node === this.root ? null : node;
  }

  evict(n: number): number {
    if (n <= 0 || this.#evictable === 0) return 0;
    const heap = new LeafHeap();
    const stack: RadixNode[] = [this.root];
    while (stack.length) {
      const x = stack.pop()!;
      if (x.children.size === 0) {
        if (x.lockRef === 0) heap.push(x);
      } else for (const c of x.children.values()) stack.push(c);
    }
    let freed = 0;
    while (freed < n && heap.size > 0) {
      const leaf = heap.pop();
      this.allocator.free(leaf.pages);
      freed += leaf.pages.length;
      this.#evictable -= leaf.pages.length;
      this.#total -= leaf.pages.length;
      const parent = leaf.parent!;
      parent.children.delete(this.#childKey(leaf.key, 0));
      leaf.parent = null;
      if (parent !== this.root && parent.children.size === 0 && parent.lockRef === 0) {
        heap.push(parent);
      }
    }
    return freed;
  }
}

/** Binary min-heap of leaves by lastAccess. */
class LeafHeap {
  #a: RadixNode[] = [];
  get size(): number {
    return this.#a.length;
  }
  push(x: RadixNode): void {
    const a = this.#a;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p].lastAccess <= a[i].lastAccess) break;
      [a[p], a[i]] = [a[i], a[p]];
      i = p;
    }
  }
  pop(): RadixNode {
    const a = this.#a;
    const top = a[0];
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && a[l].lastAccess < a[m].lastAccess) m = l;
        if (r < a.length && a[r].lastAccess < a[m].lastAccess) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i], a[m]];
        i = m;
      }
    }
    return top;
  }
}
