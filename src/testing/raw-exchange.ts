// Raw bytes to a port and what comes back: for tests that must see the exact wire answer
// (protocol errors, a closed connection) rather than what a client library makes of it.

import net from 'node:net';

/**
 * Send `data` (a string is sent as latin1) on a fresh connection to 127.0.0.1:`port`; collect
 * the answer until the server closes the connection (`closed`) or stays quiet for `quietMs`.
 */
export function rawExchange(port: number, data: Buffer | string, quietMs: number): Promise<{ reply: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let reply = '';
    let closed = false;
    let timer: NodeJS.Timeout | undefined;
    const done = (): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ reply, closed });
    };
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(done, quietMs);
    };
    s.on('data', (d: Buffer) => {
      reply += d.toString('latin1');
      arm();
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      closed = true;
      done();
    });
    s.on('connect', () => {
      s.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
      arm();
    });
  });
}
