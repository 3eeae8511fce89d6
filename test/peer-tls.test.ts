// Mutual TLS on the peer port (issue 12, item 5): with peerTls, every node presents a
// certificate of the cluster's CA and accepts only peers that do. Real processes, real TLS:
// - a passive observer between the nodes (a TcpProxy on each peer address) sees TLS records,
//   never a value a client wrote; the same observer on a plain cluster does see it (the check
//   can fail);
// - a peer with a certificate of another CA, one with none, and a plain-TCP peer sending a
//   valid lockstep handshake are each refused at TLS, logged, and the node serves on;
// - the cluster fails over through a kill -9 of the primary with every acknowledged write
//   intact, and the killed node, started again, is recruited (a snapshot over TLS).
// Certificates are made per run with openssl (Debian's openssl); skipped without it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LockstepClient } from '../src/client/index.js';
import { HAVE_OPENSSL, makeCa, makeCert } from '../src/testing/certs.js';
import { frame } from '../src/net/framing.js';
import { PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, encodeHandshake } from '../src/net/peer-codec.js';
import { PeerTransport, type PeerTransportOptions } from '../src/net/peer-transport.js';
import { ProcessCluster, freePorts } from '../src/testing/process-cluster.js';

if (process.env.CI && !HAVE_OPENSSL) throw new Error('CI without openssl: .ci/run must install openssl');
const SKIP = HAVE_OPENSSL ? false : 'openssl not installed (apt-get install openssl)';

/** Everything a passive observer on every peer address saw, both ways. */
function observe(cluster: ProcessCluster): Buffer[] {
  const seen: Buffer[] = [];
  for (const n of cluster.nodes) cluster.peerProxy(n.id).tap = (_dir, chunk) => void seen.push(Buffer.from(chunk));
  return seen;
}

/** Write a value no protocol byte could contain by chance, and return it once acknowledged (so the backup has it). */
async function writeCanary(cluster: ProcessCluster): Promise<string> {
  const canary = `canary-${randomBytes(12).toString('hex')}`;
  const db = new LockstepClient({ nodes: cluster.clientAddresses() });
  try {
    assert.equal(await db.set('secret-key', canary.repeat(64)), 'OK');
    assert.equal(await db.get('secret-key'), canary.repeat(64));
  } finally {
    db.close();
  }
  return canary;
}

/** Connect (`connect` makes the socket), send a valid handshake of member n2, and say what came back before the node closed it. */
function tryAsPeer(cluster: ProcessCluster, target: string, connect: (port: number) => net.Socket): Promise<{ reply: Buffer; closed: boolean }> {
  const hello = frame(encodeHandshake({ cluster: cluster.cluster, nodeId: 'n2', protocolVersion: PROTOCOL_VERSION, minVersion: PROTOCOL_VERSION_MIN, epoch: 0, arbiterId: cluster.arbiterId, challenge: null }));
  return new Promise((resolve) => {
    const s = connect(cluster.node(target).peerListen!.port);
    const chunks: Buffer[] = [];
    let closed = false;
    const timer = setTimeout(() => s.destroy(), 6000);
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', () => undefined);
    s.on('close', () => {
      closed = true;
      clearTimeout(timer);
      resolve({ reply: Buffer.concat(chunks), closed });
    });
    s.write(hello);
  });
}

describe('a cluster with peerTls (no secretFile: TLS is the only guard)', { skip: SKIP, timeout: 300_000 }, () => {
  let dir: string;
  let cluster: ProcessCluster;
  let seen: Buffer[];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'lockstep-peer-tls-'));
    const caFile = makeCa(dir);
    const node = makeCert(dir, 'node');
    makeCa(dir, 'rogue-ca');
    makeCert(dir, 'rogue', 'rogue-ca');
    cluster = await ProcessCluster.start({ secret: false, peerProxies: true, extra: { peerTls: { ...node, caFile } } });
    seen = observe(cluster);
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a passive observer of the peer port sees TLS records, never the written value', async () => {
    const before = seen.length;
    const canary = await writeCanary(cluster);
    const wire = Buffer.concat(seen.slice(before));
    assert.ok(wire.length > canary.length * 64, `the observer saw the replication traffic (${wire.length} bytes)`);
    assert.equal(wire.indexOf(canary), -1, 'the value is not on the wire in plaintext');
    assert.equal(wire.indexOf('secret-key'), -1, 'nor the key');
    const log = cluster.log('n1');
    assert.match(log, /"event":"node-start".*"peerTls":true/);
    assert.doesNotMatch(log, /peer-auth-off/, 'mutual TLS authenticates peers: no warning');
  });

  test('peers without a certificate of the cluster CA are refused at TLS; the node serves on', async () => {
    const primary = (await cluster.primary())!;
    const target = primary.id;
    const results = {
      'another CA': await tryAsPeer(cluster, target, (port) => tls.connect({ host: '127.0.0.1', port, ca: readFileSync(join(dir, 'ca.pem')), cert: readFileSync(join(dir, 'rogue.pem')), key: readFileSync(join(dir, 'rogue.key')) })),
      'no certificate': await tryAsPeer(cluster, target, (port) => tls.connect({ host: '127.0.0.1', port, ca: readFileSync(join(dir, 'ca.pem')) })),
      'plain TCP': await tryAsPeer(cluster, target, (port) => net.connect(port, '127.0.0.1')),
    };
    for (const [who, r] of Object.entries(results)) {
      assert.ok(r.closed, `${who}: closed`);
      assert.equal(r.reply.indexOf('LSTP'), -1, `${who}: no lockstep handshake came back`);
    }
    const refusals = (): string[] => cluster.log(target).match(/"event":"peer-refused"[^\n]*/g) ?? [];
    await cluster.waitFor(() => refusals().length >= 3, 10_000, 'three refusals logged');
    const reasons = refusals().join('\n');
    assert.match(reasons, /"remote":"127\.0\.0\.1:\d+"[^\n]*TLS handshake failed \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/, 'another CA: the reason and who');
    assert.match(reasons, /"remote":"127\.0\.0\.1:\d+"[^\n]*TLS handshake failed \(no certificate\)/, 'no certificate');
    assert.match(reasons, /TLS handshake failed \(ERR_SSL_WRONG_VERSION_NUMBER\)/, 'plain TCP');
    const db = new LockstepClient({ nodes: cluster.clientAddresses() });
    try {
      assert.equal(await db.set('after-rogues', 'ok'), 'OK');
      assert.equal(await db.get('after-rogues'), 'ok');
    } finally {
      db.close();
    }
    const now = (await cluster.primary())!;
    assert.equal(now.id, primary.id, 'no failover');
    assert.equal(now.epoch, primary.epoch, 'no new view');
  });

  test('fails over through a kill -9 of the primary, no acknowledged write lost; the killed node is recruited again over TLS', async () => {
    const db = new LockstepClient({ nodes: cluster.clientAddresses() });
    try {
      for (let i = 0; i < 100; i++) await db.append('log', `${i};`);
      const before = (await cluster.primary())!;
      await cluster.kill9(before.id);
      for (let i = 100; i < 200; i++) await db.append('log', `${i};`);
      const after = (await cluster.primary())!;
      assert.notEqual(after.id, before.id, 'another node is primary');
      assert.equal(await db.get('log'), Array.from({ length: 200 }, (_, i) => `${i};`).join(''), 'each append exactly once');
      // The killed node comes back as a spare; with the backup killed too, it is the only one
      // left to recruit: it gets the whole state in a snapshot over TLS.
      cluster.spawn(before.id);
      await cluster.waitFor(async () => ['spare', 'backup'].includes((await cluster.status(before.id))?.role ?? ''), 60_000, `${before.id} to rejoin`);
      const backup = (await cluster.statuses()).find((s) => s?.role === 'backup' && s.id !== before.id);
      if (backup) await cluster.kill9(backup.id);
      await cluster.waitFor(async () => (await cluster.status(before.id))?.role === 'backup', 60_000, `${before.id} to be recruited as backup`);
      await db.append('log', '200;');
      assert.equal(await db.get('log'), Array.from({ length: 201 }, (_, i) => `${i};`).join(''));
    } finally {
      db.close();
    }
  });
});

describe('the same observer on a cluster without peerTls', { skip: SKIP, timeout: 120_000 }, () => {
  let cluster: ProcessCluster;
  before(async () => {
    cluster = await ProcessCluster.start({ peerProxies: true });
  });
  after(async () => {
    await cluster?.stop();
  });

  test('reads the written value off the wire (so the check above can fail)', async () => {
    const seen = observe(cluster);
    const canary = await writeCanary(cluster);
    assert.notEqual(Buffer.concat(seen).indexOf(canary), -1);
  });
});

describe('PeerTransport with peerTls, in one process', { skip: SKIP, timeout: 60_000 }, () => {
  let dir: string;
  const pem = (name: string): Buffer => readFileSync(join(dir, name));
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'lockstep-peer-tls-unit-'));
    makeCa(dir);
    makeCert(dir, 'a');
    makeCert(dir, 'elsewhere', 'ca', '127.0.0.2');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Two transports a and b with the given TLS settings; after 1.5 s, the logs and whether each reached the other. */
  async function pair(tlsA: PeerTransportOptions['tls'], tlsB: PeerTransportOptions['tls']): Promise<{ logs: string[]; aToB: boolean; bToA: boolean }> {
    const [pa, pb] = await freePorts(2);
    const logs: string[] = [];
    const make = (self: string, other: string, port: number, otherPort: number, t: PeerTransportOptions['tls']): PeerTransport =>
      new PeerTransport({
        cluster: 't', self, listen: { host: '127.0.0.1', port }, peers: new Map([[other, { host: '127.0.0.1', port: otherPort }]]),
        maxFrameBytes: 1 << 20, maxQueuedBytes: 1 << 20, epoch: () => 1, secret: null, tls: t, arbiterId: () => 'a1a1',
        onMessage: () => {}, log: (_l, event, fields) => logs.push(`${self} ${event} ${JSON.stringify(fields)}`),
      });
    const a = make('a', 'b', pa!, pb!, tlsA);
    const b = make('b', 'a', pb!, pa!, tlsB);
    try {
      await a.start();
      await b.start();
      await new Promise((r) => setTimeout(r, 1500));
      return { logs, aToB: a.isConnected('b'), bToA: b.isConnected('a') };
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  }

  test('both with certificates of the CA: connected both ways', async () => {
    const t = { cert: pem('a.pem'), key: pem('a.key'), ca: pem('ca.pem') };
    const r = await pair(t, t);
    assert.deepEqual([r.aToB, r.bToA], [true, true], r.logs.join('\n'));
    assert.ok(r.logs.some((l) => /^a peer-accepted .*"tls":true/.test(l)));
  });

  test('a TLS node and a plain one refuse each other, each saying TLS is the difference', async () => {
    const r = await pair({ cert: pem('a.pem'), key: pem('a.key'), ca: pem('ca.pem') }, null);
    assert.deepEqual([r.aToB, r.bToA], [false, false]);
    const logs = r.logs.join('\n');
    assert.match(logs, /^b peer-refused .*it speaks TLS, but this node has no peerTls/m, 'the plain node, dialled with TLS');
    assert.match(logs, /^a peer-refused .*TLS handshake failed \(ERR_SSL_WRONG_VERSION_NUMBER\)/m, 'the TLS node, dialled in plain TCP');
  });

  test("a peer whose certificate does not name the address dialled is refused by the dialler", async () => {
    // b's certificate is the CA's, but for 127.0.0.2: a dials b at 127.0.0.1.
    const r = await pair({ cert: pem('a.pem'), key: pem('a.key'), ca: pem('ca.pem') }, { cert: pem('elsewhere.pem'), key: pem('elsewhere.key'), ca: pem('ca.pem') });
    assert.equal(r.aToB, false);
    assert.match(r.logs.join('\n'), /^a peer-refused .*ERR_TLS_CERT_ALTNAME_INVALID/m);
  });
});

describe('the start warning for a peer port beyond loopback', { skip: SKIP, timeout: 120_000 }, () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'lockstep-peer-tls-warn-'));
    makeCa(dir);
    makeCert(dir, 'node');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const withTls of [false, true]) {
    test(`a node listening for peers on 0.0.0.0 ${withTls ? 'with peerTls says nothing' : 'without peerTls logs peer-tls-off'}`, async () => {
      const [port] = await freePorts(1);
      const cluster = await ProcessCluster.start({
        nodes: 1,
        nodeExtra: () => ({ peerListen: `0.0.0.0:${port}` }),
        ...(withTls ? { extra: { peerTls: { certFile: join(dir, 'node.pem'), keyFile: join(dir, 'node.key'), caFile: join(dir, 'ca.pem') } } } : {}),
      });
      try {
        // Every line the start logs is in the file once the stop's own line is.
        cluster.signal('n1', 'SIGTERM');
        await cluster.waitFor(() => /"event":"node-stop"/.test(cluster.log('n1')), 10_000, 'node-stop logged');
        const log = cluster.log('n1');
        if (withTls) assert.doesNotMatch(log, /peer-tls-off/);
        else assert.match(log, /"event":"peer-tls-off".*the peer port 0\.0\.0\.0:\d+ is beyond loopback without peerTls/);
      } finally {
        await cluster.stop();
      }
    });
  }
});
