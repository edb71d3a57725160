/**
 * Free list of the pages of the one KV pool (page ids 0 .. numPages - 1). The pool is
 * fixed at start-up by the GPU worker; the scheduler only hands out ids.
 */

/** Page allocator: a stack of free page ids, so recently freed (cache-warm) pages come
 *  back first. */
export class PageAllocator {
  #free: Int32Array;
  #top: number;
  /** Debug aid (tests): which pages are currently free. */
  #isFree: Uint8Array;

  constructor(readonly numPages: number) {
    this.#free = new Int32Array(numPages);
    this.#isFree = new Uint8Array(numPages).fill(1);
    // Low ids on top of the stack: allocation order 0, 1, 2, ...
    for (let i = 0; i < numPages; i++) this.#free[i] = numPages - 1 - i;
    this.#top = numPages;
  }

  /** Number of free pages. */
  get freePages(): number {
    return this.#top;
  }

  /** Take n pages, or null (nothing taken) when fewer than n are free. */
  alloc(n: number): number[] | null {
    if (n > this.#top) return null;
    const out: number[] = new Array(n);
    for (let k = 0; k < n; k++) {
      const p = this.#free[--this.#top];
      this.#isFree[p] = 0;
      out[k] = p;
    }
    return out;
  }

  /** Return pages to the pool. Throws on a double free (a scheduler bug worth a crash in
   *  tests, since it would let two requests write the same KV slots). */
  free(pages: ArrayLike<number>): void {
    for (let k = 0; k < pages.length; k++) {
      const p = pages[k];
      if (p < 0 || p >= this.numPages || this.#isFree[p]) {
        throw new Error(`page ${p} freed twice or out of range`);
      }
      this.#isFree[p] = 1;
      this.#free[this.#top++] = p;
    }
  }

  /** Whether page p is free. */
  isFree(p: number): boolean {
    return this.#isFree[p] === 1;
  }
}
