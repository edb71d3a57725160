/**
 * A tokenizer's vocabulary as bytes, in a trie laid out in preorder: a token mask for one
 * automaton state is one pass over the node arrays that skips whole subtrees the automaton
 * rejects (`end[n]` is the index after n's subtree). Built once per tokenizer.
 */

type Json = Record<string, unknown>;

/** GPT-2's byte <-> printable character table of byte-level BPE, reversed. */
function byteLevelDecoder(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const m = new Map<string, number>();
  bs.forEach((b, i) => m.set(String.fromCodePoint(cs[i]), b));
  return m;
}

function usesByteLevel(tj: Json): boolean {
  const has = (o: unknown): boolean => {
    if (!o || typeof o !== "object") return false;
    const x = o as Json;
    if (x.type === "ByteLevel") return true;
    for (const k of ["decoders", "pretokenizers"]) {
      if (Array.isArray(x[k]) && (x[k] as unknown[]).some(has)) return true;
    }
    return false;
  };
  return has(tj.decoder) || has(tj.pre_tokenizer);
}

const enc = new TextEncoder();

/** Bytes of every id of a tokenizer.json (null for special tokens and unknown ids). */
export function tokenBytes(tj: Json, vocabSize: number): (Uint8Array | null)[] {
  const out: (Uint8Array | null)[] = new Array(vocabSize).fill(null);
  const model = tj.model as Json;
  const byteLevel = usesByteLevel(tj);
  const table = byteLevel ? byteLevelDecoder() : null;
  const conv = (tok: string): Uint8Array | null => {
    if (table) {
      const b = new Uint8Array(tok.length);
      let n = 0;
      for (const ch of tok) {
        const v = table.get(ch);
        if (v === undefined) return enc.encode(tok); // not byte-level text: take it as is
        b[n++] = v;
      }
      return b.subarray(0, n);
    }
    const hex = /^<0x([0-9A-Fa-f]{2})>$/.exec(tok);
    if (hex) return Uint8Array.of(parseInt(hex[1], 16));
    return enc.encode(tok.replaceAll("\u2581", " "));
  };
  const vocab = model?.vocab;
  if (Array.isArray(vocab)) {
    // Unigram: [piece, score] pairs.
    vocab.forEach((v, id) => {
      if (id < vocabSize) out[id] = conv(String((v as unknown[])[0]));
    });
  } else if (vocab && typeof vocab === "object") {
    for (const [tok, id] of Object.entries(vocab as Record<string, number>)) {
      if (id < vocabSize) out[id] = conv(tok);
    }
  }
  for (const t of (tj.added_tokens ?? []) as { id: number; content: string; special?: boolean }[]) {
    if (t.id >= vocabSize) continue;
    out[t.id] = t.special ? null : enc.encode(t.content);
  }
  return out;
}

/** The vocabulary trie (preorder arrays) of one tokenizer. */
export class VocabTrie {
  /** Byte of each node, its depth (1 for children of the root) and its subtree end. */
  readonly byte: Uint8Array;
  readonly depth: Uint16Array;
  readonly end: Int32Array;
  /** Tokens ending at node n: ids[tokStart[n] .. tokStart[n + 1]). */
  readonly tokStart: Int32Array;
  readonly ids: Int32Array;
  readonly maxDepth: number;
  /** Width of the logits (mask bits); `tokens` holds each id's bytes (null: special). */
  readonly vocabSize: number;

  constructor(readonly tokens: (Uint8Array | null)[], vocabSize: number) {
    this.vocabSize = vocabSize;
    const list: { id: number; b: Uint8Array }[] = [];
    tokens.forEach((b, id) => {
      if (b && b.length) list.push({ id, b });
    });
    list.sort((x, y) => {
      const n = Math.min(x.b.length, y.b.length);
      for (let i = 0; i < n; i++) if (x.b[i] !== y.b[i]) return x.b[i] - y.b[i];
      return x.b.length - y.b.length || x.id - y.id;
    });
    const byte: number[] = [], depth: number[] = [], end: number[] = [];
    const tokNode: number[] = [];
    const path: number[] = []; // node ids along the current token
    let prev: Uint8Array = new Uint8Array(0);
    let maxDepth = 0;
    for (const { b } of list) {
      let l = 0;
      while (l < b.length && l < prev.length && b[l] === prev[l]) l++;
      while (path.length > l) end[path.pop()!] = byte.length;
      for (let k = l; k < b.length; k++) {
        path.push(byte.length);
        byte.push(b[k]);
        depth.push(k + 1);
        end.push(0);
      }
      tokNode.push(path[path.length - 1]);
      maxDepth = Math.max(maxDepth, b.length);
      prev = b;
    }
    while (path.length) end[path.pop()!] = byte.length;
    const N = byte.length;
    this.byte = Uint8Array.from(byte);
    this.depth = Uint16Array.from(depth);
    this.end = Int32Array.from(end);
    this.tokStart = new Int32Array(N + 1);
    // Tokens are in node order already (sorted bytes): count then prefix-sum.
    for (const n of tokNode) this.tokStart[n + 1]++;
    for (let n = 0; n < N; n++) this.tokStart[n + 1] += this.tokStart[n];
    this.ids = Int32Array.from(list, (t) => t.id);
    this.maxDepth = maxDepth;
  }

  /** Nodes in the trie. */
  get size(): number {
    return this.byte.length;
  }
}

/** The trie of a tokenizer.json, built once per object. */
const tries = new WeakMap<Json, VocabTrie>();
export function vocabTrie(tj: Json, vocabSize: number): VocabTrie {
  let t = tries.get(tj);
  if (!t || t.vocabSize !== vocabSize) {
    t = new VocabTrie(tokenBytes(tj, vocabSize), vocabSize);
    tries.set(tj, t);
  }
  return t;
}
