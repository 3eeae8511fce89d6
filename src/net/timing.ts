// Where a replicated command's time goes, for bench/breakdown.mjs: a few stamps on the hot
// path, taken only when the node runs with LOCKSTEP_TIMING=1 (otherwise each hook is one test
// of a constant false). Meant for one command in flight at a time (a single client): the
// primary follows one command at a time from its read to its reply's write, through the
// first frame written to a peer after the read and the first ack read after that frame; a
// backup times each frame read until the next write to the primary (its ack). Commands that
// arrive while one is followed are not followed (with many clients this is a sample).
// Read through /status (`timing`) when on.

export const TIMING_ON = process.env['LOCKSTEP_TIMING'] === '1';

interface Span {
  n: number;
  sumMs: number;
}

const span = (): Span => ({ n: 0, sumMs: 0 });

class Timing {
  private cmdAt = -1;
  private frameOutAt = -1;
  private ackInAt = -1;
  private frameInAt = -1;
  /** Primary, replicated: read -> frame written, frame -> ack read, ack -> reply written. */
  readonly cmdToFrame = span();
  readonly frameToAck = span();
  readonly ackToReply = span();
  /** Read -> reply written, with a frame on the way (replicated) or without (one node, or a meta command). */
  readonly cmdToReplyReplicated = span();
  readonly cmdToReplyDirect = span();
  /** Backup: a frame read -> the next write to the primary (the ack). */
  readonly frameToAckOut = span();

  /** A client command's bytes were read. */
  cmd(): void {
    if (this.cmdAt < 0) this.cmdAt = performance.now();
  }

  /** Bytes written to a peer (frames on the primary, acks on a backup). */
  peerWrite(): void {
    const t = performance.now();
    if (this.cmdAt >= 0 && this.frameOutAt < 0) this.frameOutAt = t;
    if (this.frameInAt >= 0) {
      add(this.frameToAckOut, t - this.frameInAt);
      this.frameInAt = -1;
    }
  }

  /** A message decoded from a peer. */
  peerMessage(type: unknown): void {
    if (type === 'ack') {
      if (this.frameOutAt >= 0 && this.ackInAt < 0) this.ackInAt = performance.now();
    } else if (type === 'frame') {
      if (this.frameInAt < 0) this.frameInAt = performance.now();
    }
  }

  /** Reply bytes written to a client. */
  reply(): void {
    if (this.cmdAt < 0) return;
    const t = performance.now();
    if (this.frameOutAt < 0) add(this.cmdToReplyDirect, t - this.cmdAt);
    else if (this.ackInAt >= 0) {
      add(this.cmdToFrame, this.frameOutAt - this.cmdAt);
      add(this.frameToAck, this.ackInAt - this.frameOutAt);
      add(this.ackToReply, t - this.ackInAt);
      add(this.cmdToReplyReplicated, t - this.cmdAt);
    } else return; // a frame went out but no ack came yet: not this command's reply
    this.cmdAt = this.frameOutAt = this.ackInAt = -1;
  }

  /** Counts and summed microseconds since start, for /status (a reader takes differences). */
  report(): Record<string, { n: number; sumUs: number }> {
    const out: Record<string, { n: number; sumUs: number }> = {};
    for (const [k, v] of Object.entries(this)) {
      if (typeof v === 'object' && v !== null && 'sumMs' in v) out[k] = { n: v.n, sumUs: Math.round(v.sumMs * 1000) };
    }
    return out;
  }
}

function add(s: Span, ms: number): void {
  s.n++;
  s.sumMs += ms;
}

export const timing = new Timing();
