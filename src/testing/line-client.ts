// A client for line protocols (examples/kvserver): one request line, one reply line, over real
// TCP. Used by the wasm tests and benchmarks.

import net from 'node:net';

export class LineClient {
  private buf = '';
  /** Reply lines that arrived before anyone asked for them. */
  private readonly lines: string[] = [];
  private readonly waiters: { resolve: (line: string) => void; reject: (e: Error) => void }[] = [];
  private closedError: Error | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.buf += d.toString('latin1');
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).replace(/\r$/, '');
        this.buf = this.buf.slice(nl + 1);
        const w = this.waiters.shift();
        if (w) w.resolve(line);
        else this.lines.push(line);
      }
    });
    const fail = (e: Error): void => {
      this.closedError ??= e;
      for (const w of this.waiters.splice(0)) w.reject(this.closedError);
    };
    socket.on('error', (e) => fail(e));
    socket.on('close', () => fail(new Error('connection closed')));
  }

  static connect(addr: { host: string; port: number }, timeoutMs = 2000): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(addr);
      const t = setTimeout(() => {
        s.destroy();
        reject(new Error(`connect to ${addr.host}:${addr.port} timed out`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        resolve(new LineClient(s));
      });
      s.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  /** Connect, retrying until `timeoutMs` (the primary may be failing over). */
  static async connectRetry(addr: { host: string; port: number }, timeoutMs: number): Promise<LineClient> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await LineClient.connect(addr, 1000);
      } catch (e) {
        if (Date.now() > end) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** Send one line, resolve with the reply line (reject if the connection ends first). */
  request(line: string): Promise<string> {
    const p = this.next();
    this.socket.write(line + '\n');
    return p;
  }

  /** Send lines without waiting (pipelining); read the replies with `next`. */
  send(line: string): void {
    this.socket.write(line + '\n');
  }

  next(): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<string>((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  close(): void {
    this.socket.destroy();
  }
}
