// Client-port security as Redis users expect it (issue 12, item 5): with requirePassFile a
// client is refused every command but AUTH, HELLO and QUIT until it gives the password; with
// clientTls the port speaks only TLS. ioredis with `password` and `tls` (sentinel mode) and
// lockstep's own client follow a kill -9 of the primary with every acknowledged write intact.
// Certificates are made per run with openssl (Debian's openssl); skipped without it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { LockstepClient } from '../src/client/index.js';
import { encodeCommand } from '../src/net/resp.js';
import { HAVE_OPENSSL, makeCerts } from '../src/testing/certs.js';

if (process.env.CI && !HAVE_OPENSSL) throw new Error('CI without openssl: .ci/run must install openssl');
const PASSWORD = 'correct horse battery staple';

/** Send RESP commands over TLS on one connection; the replies as one string. */
function tlsExchange(port: number, ca: Buffer, commands: string[][]): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca }, () => s.write(Buffer.concat(commands.map(encodeCommand))));
    let got = '';
    const timer = setTimeout(() => s.end(), 1500);
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('error', reject);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
  });
}

describe('a cluster with requirePassFile and clientTls', { skip: HAVE_OPENSSL ? false : 'openssl not installed (apt-get install openssl)', timeout: 300_000 }, () => {
  let dir: string;
  let ca: Buffer;
  let cluster: ProcessCluster;
  let port: number;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lockstep-tls-'));
    const certs = makeCerts(dir);
    ca = certs.ca;
    writeFileSync(join(dir, 'password'), `${PASSWORD}\n`, { mode: 0o600 });
    cluster = await ProcessCluster.start({
      extra: { requirePassFile: join(dir, 'password'), clientTls: { certFile: certs.certFile, keyFile: certs.keyFile } },
    });
    port = cluster.node((await cluster.primary())!.id).client.port;
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('plain TCP gets nothing: the port speaks only TLS', async () => {
    const got = await new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(encodeCommand(['PING'])));
      let out = '';
      s.on('data', (d: Buffer) => (out += d.toString('latin1')));
      s.on('error', () => undefined);
      s.on('close', () => resolve(out));
      setTimeout(() => s.destroy(), 1500);
    });
    assert.doesNotMatch(got, /PONG|NOAUTH/);
  });

  test('without the password every command but AUTH is refused; a wrong one too; the right one opens it', async () => {
    const got = await tlsExchange(port, ca, [
      ['SET', 'k', 'v'], ['GET', 'k'], ['INFO'], ['SENTINEL', 'get-master-addr-by-name', 'test'],
      ['AUTH', 'wrong'], ['GET', 'k'], ['AUTH', 'default', PASSWORD], ['SET', 'k', 'v'], ['GET', 'k'],
    ]);
    assert.equal(got, [
      '-NOAUTH Authentication required.', '-NOAUTH Authentication required.', '-NOAUTH Authentication required.', '-NOAUTH Authentication required.',
      '-WRONGPASS invalid username-password pair or user is disabled.', '-NOAUTH Authentication required.', '+OK', '+OK', '$1', 'v', '',
    ].join('\r\n'));
  });

  test('ioredis with password and tls (sentinel mode) and lockstep/client follow a kill -9 of the primary; no acknowledged write lost', async () => {
    const redis = new Redis({
      sentinels: cluster.nodes.map((n) => ({ host: n.client.host, port: n.client.port })),
      name: cluster.cluster,
      password: PASSWORD,
      sentinelPassword: PASSWORD,
      tls: { ca },
      sentinelTLS: { ca },
      enableTLSForSentinelMode: true,
      retryStrategy: (times: number) => Math.min(times * 50, 500),
      sentinelRetryStrategy: (times: number) => Math.min(times * 50, 500),
      reconnectOnError: (err: Error) => (err.message.startsWith('NOTPRIMARY') ? 2 : false),
    });
    redis.on('error', () => undefined);
    const db = new LockstepClient({ nodes: cluster.clientAddresses(), password: PASSWORD, tls: { ca } });
    try {
      for (let i = 0; i < 100; i++) {
        assert.equal(await redis.set(`io:${i}`, `v${i}`), 'OK');
        await db.append('ls', `${i};`);
      }
      const before = (await cluster.primary())!;
      await cluster.kill9(before.id);
      // Writes go on through the failover; each acknowledged one must read back.
      const acked: string[] = [];
      for (let i = 100; i < 200; i++) {
        for (;;) {
          try {
            await redis.set(`io:${i}`, `v${i}`);
            break;
          } catch {
            await new Promise((r) => setTimeout(r, 50));
          }
        }
        acked.push(`io:${i}`);
        await db.append('ls', `${i};`);
      }
      const after = (await cluster.primary())!;
      assert.notEqual(after.id, before.id, 'another node is primary');
      const values = await redis.mget(...Array.from({ length: 200 }, (_, i) => `io:${i}`));
      assert.deepEqual(values, Array.from({ length: 200 }, (_, i) => `v${i}`));
      assert.equal(await db.get('ls'), Array.from({ length: 200 }, (_, i) => `${i};`).join(''), 'lockstep/client: each append exactly once');
    } finally {
      redis.disconnect();
      db.close();
    }
  });

  test('lockstep/client with a wrong password fails at once, saying so', async () => {
    const db = new LockstepClient({ nodes: cluster.clientAddresses(), password: 'nope', tls: { ca }, commandTimeoutMs: 10_000 });
    try {
      await assert.rejects(db.get('k'), /AUTH refused: WRONGPASS/);
    } finally {
      db.close();
    }
  });
});
