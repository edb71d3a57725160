/**
 * Stop strings over streamed text. Text is pushed in pieces (one per decoded token or
 * so); the matcher releases only text that can no longer be the start of a stop string,
 * so a stop string is never part of the output even when it spans several tokens.
 */

/** Result of pushing text: what may be shown now, and whether a stop string matched. */
export interface StopPush {
  /** Text safe to emit. */
  text: string;
  /** The stop string that matched (output ends before it), or null. */
  stop: string | null;
}

/** Finds the first stop string in a text stream; holds back possible stop prefixes. */
export class StopMatcher {
  #stops: string[];
  #held = "";
  #stopped = false;

  constructor(stops: readonly string[]) {
    this.#stops = stops.filter((s) => s.length > 0);
  }

  /** True once a stop string matched; later pushes return nothing. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Adds text; returns what may be emitted now. */
  push(piece: string): StopPush {
    if (this.#stopped) return { text: "", stop: null };
    if (this.#stops.length === 0) return { text: piece, stop: null };
    const buf = this.#held + piece;
    // Earliest match wins; on a tie at one position the longer stop string.
    let at = -1;
    let which: string | null = null;
    for (const s of this.#stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at || (i === at && s.length > which!.length))) {
        at = i;
        which = s;
      }
    }
    if (which !== null) {
      this.#stopped = true;
      this.#held = "";
      return { text: buf.slice(0, at), stop: which };
    }
    const keep = this.#holdLength(buf);
    this.#held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep), stop: null };
  }

  /** Ends the stream: the held-back text was not a stop string after all. */
  flush(): string {
    const t = this.#stopped ? "" : this.#held;
    this.#held = "";
    return t;
  }

  /** Length of the longest suffix of `buf` that is a proper prefix of some stop string. */
  #holdLength(buf: string): number {
    let best = 0;
    for (const s of this.#stops) {
      const max = Math.min(s.length - 1, buf.length);
      for (let k = max; k > best; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}
