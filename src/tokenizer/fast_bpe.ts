/**
 * A faster merge loop for @huggingface/tokenizers' BPE model. The library keys its merge
 * ranks by `JSON.stringify([left, right])` and builds that string for every candidate
 * pair, so a long pre-token (a run of CJK text is one pre-token of 3 byte-symbols a
 * character) costs ~20 us a token: 10 ms for a 500-token prompt of SGLang's random
 * dataset, which the HTTP thread spent while every stream waited.
 *
 * Here symbols are token ids and a pair is one number (left * V + right) looked up in a
 * Map<number, rank>; the merges run on index-linked arrays with a binary heap ordered by
 * (rank, position of the left symbol), the library's own order (its score is rank plus a
 * tie-break that grows with the position), so the output is the same token for token.
 * tests/fast_bpe_test.ts checks that against the library's loop on random and real text.
 *
 * Installed only for the plain byte-level model (no word suffixes, no byte fallback): the
 * Qwen and Llama 3 families. Anything else keeps the library's loop.
 */

/** The parts of the library's BPE model this reads and replaces. */
interface BpeModel {
  tokens_to_ids: Map<string, number>;
  vocab: string[];
  merges: [string, string][];
  end_of_word_suffix?: string | null;
  continuing_subword_suffix?: string | null;
  byte_fallback?: boolean;
  bpe(token: string): string[];
}

/** Pre-tokens longer than this are not cached (the library's limit too). */
const MAX_CACHED_LENGTH = 256;
/** The cache is dropped when it grows past this many pre-tokens. */
const CACHE_LIMIT = 100_000;

/** Replaces `model.bpe` with the id-based loop when the model is a plain byte-level BPE.
 *  Returns whether it did. */
export function installFastBpe(model: unknown): boolean {
  const m = model as Partial<BpeModel>;
  if (
    !(m.tokens_to_ids instanceof Map) || !Array.isArray(m.vocab) || !Array.isArray(m.merges) ||
    typeof m.bpe !== "function" || m.end_of_word_suffix || m.continuing_subword_suffix ||
    m.byte_fallback
  ) {
    return false;
  }
  const merger = buildMerger(m as BpeModel);
  if (merger === null) return false;
  const original = m.bpe.bind(m);
  const cache = new Map<string, string[]>();
  m.bpe = (token: string): string[] => {
    if (token.length === 0) return [];
    const hit = cache.get(token);
    if (hit !== undefined) return hit;
    const out = merger(token) ?? original(token);
    if (token.length < MAX_CACHED_LENGTH) {
      if (cache.size >= CACHE_LIMIT) cache.clear();
      cache.set(token, out);
    }
    return out;
  };
  return true;
}

/** The merge loop over one pre-token, or null when a symbol is not in the vocabulary
 *  (the caller then uses the library's loop, which handles it its own way). */
export type Merger = (token: string) => string[] | null;

/** Builds the id-based merge loop of a model, or null when a merge names a token that is
 *  not in the vocabulary (then the id form cannot express it). */
export function buildMerger(model: BpeModel): Merger | null {
  const ids = model.tokens_to_ids;
  const vocab = model.vocab;
  const V = vocab.length;
  const rankOf = new Map<number, number>();
  const mergedId = new Int32Array(model.merges.length);
  for (let r = 0; r < model.merges.length; r++) {
    const [a, b] = model.merges[r];
    const ia = ids.get(a), ib = ids.get(b), im = ids.get(a + b);
    if (ia === undefined || ib === undefined || im === undefined) return null;
    // A pair listed twice keeps its last rank, as in the library's Map built in order.
    rankOf.set(ia * V + ib, r);
    mergedId[r] = im;
  }

  // Scratch arrays, grown on demand; the heap holds (rank, left index) pairs, ordered by
  // rank, then by the left symbol's index (its original position: a merge keeps the left).
  let cap = 0;
  let tok = new Int32Array(0), next = new Int32Array(0), prev = new Int32Array(0);
  let heapRank = new Int32Array(0), heapPos = new Int32Array(0);
  const grow = (n: number) => {
    cap = Math.max(n, cap * 2, 64);
    tok = new Int32Array(cap);
    next = new Int32Array(cap);
    prev = new Int32Array(cap);
    heapRank = new Int32Array(cap * 2);
    heapPos = new Int32Array(cap * 2);
  };
  let size = 0;
  const less = (i: number, j: number) =>
    heapRank[i] < heapRank[j] || (heapRank[i] === heapRank[j] && heapPos[i] < heapPos[j]);
  const swap = (i: number, j: number) => {
    const r = heapRank[i], p = heapPos[i];
    heapRank[i] = heapRank[j];
    heapPos[i] = heapPos[j];
    heapRank[j] = r;
    heapPos[j] = p;
  };
  const push = (rank: number, pos: number) => {
    if (size === heapRank.length) {
      const r = new Int32Array(size * 2), p = new Int32Array(size * 2);
      r.set(heapRank);
      p.set(heapPos);
      heapRank = r;
      heapPos = p;
    }
    let i = size++;
    heapRank[i] = rank;
    heapPos[i] = pos;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!less(i, parent)) break;
      swap(i, parent);
      i = parent;
    }
  };
  const pop = () => {
    size--;
    if (size > 0) {
      heapRank[0] = heapRank[size];
      heapPos[0] = heapPos[size];
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < size && less(l, m)) m = l;
        if (r < size && less(r, m)) m = r;
        if (m === i) break;
        swap(i, m);
        i = m;
      }
    }
  };
  /** Rank of the pair starting at symbol i, or -1. */
  const pairRank = (i: number): number => {
    const j = next[i];
    if (j < 0) return -1;
    return rankOf.get(tok[i] * V + tok[j]) ?? -1;
  };

  return (token: string): string[] | null => {
    const chars = Array.from(token);
    const n = chars.length;
    if (n + 1 > cap) grow(n + 1);
    for (let i = 0; i < n; i++) {
      const id = ids.get(chars[i]);
      if (id === undefined) return null;
      tok[i] = id;
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    size = 0;
    for (let i = 0; i + 1 < n; i++) {
      const r = pairRank(i);
      if (r >= 0) push(r, i);
    }
    while (size > 0) {
      const rank = heapRank[0], i = heapPos[0];
      pop();
      // A stale entry: symbol i was merged away (tok = -1), or its pair changed since.
      if (tok[i] < 0 || pairRank(i) !== rank) continue;
      const j = next[i];
      tok[i] = mergedId[rank];
      tok[j] = -1;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      const p = prev[i];
      if (p >= 0) {
        const r = pairRank(p);
        if (r >= 0) push(r, p);
      }
      const r = pairRank(i);
      if (r >= 0) push(r, i);
    }
    const out: string[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(vocab[tok[i]]);
    return out;
  };
}
