// Snapshots in pieces (issue 9): a primary streams a recruit's snapshot a slice at a time while
// it keeps executing, and the recruit restores it piece by piece. A machine may implement the
// streaming form itself (kv: copy-on-write at key granularity); for any other the defaults
// below build it from snapshot()/restore(), which is fine for small states.

/**
 * A snapshot being taken: its pieces, consistent as of the moment the stream was begun, while
 * the machine keeps executing. Pieces are produced on demand, each about `maxBytes` (a single
 * record larger than that makes a larger piece); each piece is sent as one chunk.
 */
export interface SnapshotStream {
  /** The next piece, or null once every piece was given. */
  next(maxBytes: number): Uint8Array | null;
  /** Stop early (the recruit went away): let go of what the stream keeps (copy-on-write). */
  close(): void;
}

/** A snapshot being restored: the pieces of a SnapshotStream, in order. */
export interface RestoreStream {
  /** Take one piece (the bytes may be reused after the call: copy what must stay). */
  add(piece: Uint8Array): void;
  /** Every piece was added: the machine's state becomes the snapshot's. */
  finish(): void;
}

/** A stream that cuts one whole snapshot into pieces. */
export function wholeSnapshotStream(bytes: Uint8Array): SnapshotStream {
  let at = 0;
  let done = false;
  return {
    next(maxBytes: number): Uint8Array | null {
      if (done) return null;
      const piece = bytes.subarray(at, at + Math.max(1, maxBytes));
      at += piece.length;
      if (at >= bytes.length) done = true;
      return piece;
    },
    close(): void {
      done = true;
    },
  };
}

/** A restore that gathers the pieces and restores the whole snapshot at the end. */
export function wholeRestoreStream(restore: (bytes: Uint8Array) => void): RestoreStream {
  const parts: Uint8Array[] = [];
  let n = 0;
  return {
    add(piece: Uint8Array): void {
      parts.push(piece.slice());
      n += piece.length;
    },
    finish(): void {
      const all = new Uint8Array(n);
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      restore(all);
    },
  };
}
