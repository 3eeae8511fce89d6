// A raw RESP connection for tests and benchmarks: send many commands in one write (pipelined)
// and collect exactly that many replies, as the node sends them.

import net from 'node:net';
import { RespReplyParser, encodeCommand } from '../net/resp.js';
import type { KvReply } from '../guest/kv.js';

export class RespPipe {
  private readonly parser = new RespReplyParser({ maxBulkBytes: 1 << 29, maxBufferedBytes: 1 << 30 });
  private waiting: { n: number; got: KvReply[]; resolve: (r: KvReply[]) => void; reject: (e: Error) => void } | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.parser.push(d);
      const w = this.waiting;
      if (!w) return;
      for (let r = this.parser.next(); r !== null; r = this.parser.next()) {
        w.got.push(r as KvReply);
        if (w.got.length === w.n) {
          this.waiting = null;
          w.resolve(w.got);
          return;
        }
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => this.waiting?.reject(new Error(`connection closed with ${this.waiting.got.length} of ${this.waiting.n} replies`)));
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RespPipe> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, host);
      s.setNoDelay(true);
      s.once('error', reject);
      s.once('connect', () => resolve(new RespPipe(s)));
    });
  }

  /** Send every command in one write; resolve with their replies, in order. */
  send(commands: readonly (readonly string[])[]): Promise<KvReply[]> {
    if (this.waiting) throw new Error('RespPipe: one batch at a time');
    return new Promise((resolve, reject) => {
      this.waiting = { n: commands.length, got: [], resolve, reject };
      this.socket.write(Buffer.concat(commands.map((c) => encodeCommand(c))));
    });
  }

  async one(...command: string[]): Promise<KvReply> {
    return (await this.send([command]))[0]!;
  }

  close(): void {
    this.socket.destroy();
  }
}
