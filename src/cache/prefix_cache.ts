/**
 * The interface the scheduler sees of a prefix cache (radix or naive), and the naive one.
 *
 * Ownership rules, shared by both: a request's page list is [pages owned by the cache
 * (its matched or inserted prefix, locked while the request runs)] + [private pages].
 * `insert(tokens, len, pages)` gives the cache the pages of tokens[0, len) beyond what it
 * already had; the caller frees its pages of the part that was already present
 * [owned, returned prefix), and keeps/frees whatever lies past len itself.
 */

import type { PageAllocator } from "./page_allocator.ts";

/** Opaque handle of a cached prefix (a tree node), or null for "nothing". */
export type CacheHandle = object | null;

/** A match of a token sequence against the cache. */
export interface CacheMatch {
  handle: CacheHandle;
  /** Matched tokens (a multiple of the page size). */
  length: number;
  /** The cache's pages of those tokens (length / pageSize of them). */
  pages: number[];
}

/** What the scheduler needs from a prefix cache. */
export interface PrefixCache {
  readonly pageSize: number;
  /** True when inserted pages stay shareable (radix); false when insert frees them. */
  readonly sharing: boolean;
  /** Pages held by the cache that no request locks: free after eviction. */
  readonly evictablePages: number;
  /** Pages held by the cache in total (evictable + locked). */
  readonly cachedPages: number;
  /** Longest page-aligned cached prefix of tokens[0, maxLen). Marks it recently used. */
  match(tokens: ArrayLike<number>, maxLen: number): CacheMatch;
  /** Protect a matched prefix (and its ancestors) from eviction. */
  lock(handle: CacheHandle): void;
  unlock(handle: CacheHandle): void;
  /** Insert tokens[0, len) (len a multiple of the page size) with their pages; returns
   *  how many leading tokens were already cached (see the ownership rules above). */
  insert(tokens: ArrayLike<number>, len: number, pages: ArrayLike<number>): number;
  /** The handle of the node that ends exactly at tokens[0, len) after an insert (for
   *  locking what was just inserted). */
  handleOf(tokens: ArrayLike<number>, len: number): CacheHandle;
  /** Free at least n evictable pages if there are that many (least recently used
   *  leaves first); returns the number freed. */
  evict(n: number): number;
}

/** --cache naive: nothing is shared; pages go back to the pool when a request ends. */
export class NaiveCache implements PrefixCache {
  readonly sharing = false;
  readonly evictablePages = 0;
  readonly cachedPages = 0;
  constructor(readonly pageSize: number, readonly allocator: PageAllocator) {}
  match(): CacheMatch {
    return { handle: null, length: 0, pages: [] };
  }
  lock(): void {}
  unlock(): void {}
  insert(_tokens: ArrayLike<number>, len: number, pages: ArrayLike<number>): number {
    const n = len / this.pageSize;
    const own: number[] = new Array(n);
    for (let i = 0; i < n; i++) own[i] = pages[i];
    this.allocator.free(own);
    return 0;
  }
  handleOf(): CacheHandle {
    return null;
  }
  evict(): number {
    return 0;
  }
}
