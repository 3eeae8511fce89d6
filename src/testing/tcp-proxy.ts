// A TCP proxy for fault tests: forwards between a listening port and a target, and can cut
// the traffic (both ways or one way), delay what goes to the target (a slow link, or a peer
// that answers late), or, as 6.824's "unreliable" network does, drop a reply after the
// request went through (then close the connection, so the client must retry).
// A cut drops bytes from a stream that stays open, which no real TCP stream does: `heal()`
// ends the cut and breaks off the connections, so both ends start over on fresh ones.

import net from 'node:net';

export type Direction = 'both' | 'to-target' | 'from-target';

export class TcpProxy {
  private server: net.Server | null = null;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  /** Traffic in these directions is dropped (connections stay open: a silent cut). */
  cut: Direction | null = null;
  /** Probability that a chunk from the target is dropped and the connection closed. */
  dropReplies = 0;
  /**
   * Every chunk towards the target is held this long (order kept: one delay for all). Change
   * it with `reset()` (or `heal()`), so no chunk overtakes one still held.
   */
  delayToTargetMs = 0;
  /** Called with every chunk that passes, before it is forwarded: a passive observer of the wire. */
  tap: ((direction: 'to-target' | 'from-target', chunk: Buffer) => void) | null = null;
  /**
   * Deterministic loss: once this many more bytes went towards the target, the data read
   * then is dropped and every proxied connection is broken off (what was in flight is lost;
   * the nodes dial again). Fires once, then goes back to null; `breaks` counts the firings.
   */
  breakAfterToTargetBytes: number | null = null;
  breaks = 0;
  /** Bytes dropped by `cut`, per direction (a test can check that a cut really cut). */
  readonly dropped = { toTarget: 0, fromTarget: 0 };
  private stopping = false;
  private rng: () => number;
  port = 0;

  constructor(
    private readonly target: { host: string; port: number },
    seed = 1,
  ) {
    let s = seed >>> 0;
    this.rng = () => {
      s = (s + 0x6d2b79f5) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 15), z | 1);
      z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
      return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
    };
  }

  async start(port = 0): Promise<number> {
    const server = net.createServer((client) => this.accept(client));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  private accept(client: net.Socket): void {
    if (this.stopping) return void client.destroy();
    const upstream = net.connect(this.target);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    const close = (): void => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    const toTarget = (d: Buffer): void => {
      if (this.cut === 'both' || this.cut === 'to-target') {
        this.dropped.toTarget += d.length;
        return;
      }
      if (this.breakAfterToTargetBytes !== null) {
        this.breakAfterToTargetBytes -= d.length;
        if (this.breakAfterToTargetBytes <= 0) {
          this.breakAfterToTargetBytes = null;
          this.breaks++;
          this.dropped.toTarget += d.length;
          this.reset();
          return;
        }
      }
      if (!upstream.destroyed) {
        this.tap?.('to-target', d);
        upstream.write(d);
      }
    };
    // A cut made while chunks are held drops them too: they were still "on the wire".
    client.on('data', (d) => (this.delayToTargetMs > 0 ? setTimeout(() => toTarget(d), this.delayToTargetMs) : toTarget(d)));
    upstream.on('data', (d) => {
      if (this.cut === 'both' || this.cut === 'from-target') {
        this.dropped.fromTarget += d.length;
        return;
      }
      if (this.dropReplies > 0 && this.rng() < this.dropReplies) return close();
      this.tap?.('from-target', d);
      client.write(d);
    });
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  }

  /** Stop cutting and close every proxied connection: a stream that lost bytes to the cut has a
   *  hole no real TCP stream has, so it is broken off and the nodes dial again. */
  heal(): void {
    this.cut = null;
    this.reset();
  }

  /** Close every proxied connection now (a broken cable). */
  reset(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  async stop(): Promise<void> {
    this.stopping = true; // connections accepted from now on are closed at once, so close() ends
    this.reset();
    const s = this.server;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}
