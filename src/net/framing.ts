// Framing for the logging channel: each message is a u32 big-endian length, then that many
// bytes. The decoder is incremental: push() socket chunks, then next() until null.
//
// Shaped for the two loads the channel carries. Many small frames in one chunk come out as
// subarray views of that chunk (no copy). One big frame (a snapshot) arriving in many chunks
// is collected as a list and copied once, when it is complete. A length above the maximum is
// refused as soon as its 4 header bytes are in, before any of the body is waited for.
// A frame returned may alias a pushed chunk: the caller must not modify chunks after push.

export class FramingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FramingError';
  }
}

const EMPTY = Buffer.alloc(0);

/** The frame of a payload: its u32 big-endian length, then the payload (one copy). */
export function frame(payload: Uint8Array): Buffer {
  if (payload.length > 0xffffffff) throw new RangeError(`frame payload too large: ${payload.length} bytes`);
  const out = Buffer.allocUnsafe(4 + payload.length);
  out.writeUInt32BE(payload.length, 0);
  out.set(payload, 4);
  return out;
}

export class FrameDecoder {
  private chunks: Buffer[] = [];
  private head = 0; // first chunk with unread bytes
  private off = 0; // read offset in chunks[head]
  private avail = 0; // unread bytes
  private need = -1; // body length of the frame whose header was read; -1: reading a header

  /** The largest frame accepted; may be raised later (after a peer's handshake, say). */
  constructor(public maxFrameBytes: number) {}

  /** Bytes pushed and not yet returned in a frame. */
  get bufferedBytes(): number {
    return this.avail;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.avail += chunk.length;
  }

  /** The next complete frame's payload, or null until more bytes arrive. */
  next(): Buffer | null {
    if (this.need < 0) {
      if (this.avail < 4) return null;
      const h = this.take(4);
      const n = h.readUInt32BE(0);
      if (n > this.maxFrameBytes) throw new FramingError(`frame of ${n} bytes exceeds the maximum of ${this.maxFrameBytes}`);
      this.need = n;
    }
    if (this.avail < this.need) return null;
    const out = this.take(this.need);
    this.need = -1;
    return out;
  }

  /** Consume n <= avail bytes: a view if they lie in one chunk, else one copy. */
  private take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const chunks = this.chunks;
    let c = chunks[this.head]!;
    let out: Buffer;
    if (this.off + n <= c.length) {
      out = c.subarray(this.off, this.off + n);
      this.off += n;
    } else {
      out = Buffer.allocUnsafe(n);
      let w = 0;
      for (;;) {
        const k = Math.min(n - w, c.length - this.off);
        c.copy(out, w, this.off, this.off + k);
        w += k;
        this.off += k;
        if (w === n) break;
        c = chunks[++this.head]!;
        this.off = 0;
      }
    }
    this.avail -= n;
    if (this.off === c.length) {
      this.head++;
      this.off = 0;
    }
    if (this.avail === 0) {
      this.chunks = [];
      this.head = 0;
    } else if (this.head >= 64 && this.head * 2 >= chunks.length) {
      chunks.splice(0, this.head);
      this.head = 0;
    }
    return out;
  }
}
