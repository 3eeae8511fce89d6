// The logging channel's transport in one process: two PeerTransports on loopback.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PeerTransport, type PeerTransportOptions } from '../src/net/peer-transport.js';
import { freePorts } from '../src/testing/process-cluster.js';

function transport(self: string, other: string, ports: Record<string, number>, got: string[], more: Partial<PeerTransportOptions> = {}): PeerTransport {
  return new PeerTransport({
    cluster: 't',
    self,
    listen: { host: '127.0.0.1', port: ports[self]! },
    peers: new Map([[other, { host: '127.0.0.1', port: ports[other]! }]]),
    maxFrameBytes: 1 << 20,
    maxQueuedBytes: 1 << 20,
    epoch: () => 1,
    secret: new Uint8Array(32).fill(9),
    tls: null,
    arbiterId: () => 'a1a1a1a1',
    onMessage: (from, msg) => got.push(`${from}:${(msg as { type: string }).type}`),
    log: () => {},
    ...more,
  });
}

test('a peer that reaches us is dialled back at once, not after our reconnect backoff', async (t) => {
  const [pa, pb] = await freePorts(2);
  const ports = { a: pa!, b: pb! };
  const atA: string[] = [];
  const atB: string[] = [];
  const a = transport('a', 'b', ports, atA);
  t.after(() => a.close());
  await a.start();
  // b is not listening yet: a's dials fail and its backoff grows to about a second.
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(a.isConnected('b'), false);
  const b = transport('b', 'a', ports, atB);
  t.after(() => b.close());
  const t0 = performance.now();
  await b.start();
  // b's dial reaches a; a answers the join it carries right away, which needs a's own link to b.
  b.send('a', { type: 'join' });
  b.flush();
  while (!a.isConnected('b') && performance.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 5));
  const ms = performance.now() - t0;
  assert.ok(a.isConnected('b'), 'a connected to b');
  assert.ok(ms < 400, `a dialled b back after ${ms.toFixed(0)} ms; its backoff alone is up to 1000 ms`);
  a.send('b', { type: 'join' });
  a.flush();
  while (atB.length === 0 && performance.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(atB, ['a:join']);
  assert.deepEqual(atA, ['b:join']);
});

for (const secret of [true, false]) {
  test(`two nodes on two arbiters refuse each other both ways, loudly, and tell the node (${secret ? 'with' : 'without'} a secret)`, async (t) => {
    const [pa, pb] = await freePorts(2);
    const ports = { a: pa!, b: pb! };
    const logs: { at: string; event: string; fields: Record<string, unknown> }[] = [];
    const mismatches: string[] = [];
    const got: string[] = [];
    const make = (self: string, other: string, arbiterId: string): PeerTransport =>
      transport(self, other, ports, got, {
        arbiterId: () => arbiterId,
        secret: secret ? new Uint8Array(32).fill(9) : null,
        log: (_level, event, fields) => logs.push({ at: self, event, fields }),
        onArbiterMismatch: (peer, theirs) => mismatches.push(`${self} sees ${peer} on ${theirs}`),
      });
    const a = make('a', 'b', 'aaaa0000');
    const b = make('b', 'a', 'bbbb1111');
    t.after(() => Promise.all([a.close(), b.close()]));
    await a.start();
    await b.start();
    const t0 = performance.now();
    while (!(mismatches.some((m) => m.startsWith('a ')) && mismatches.some((m) => m.startsWith('b '))) && performance.now() - t0 < 5000) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(mismatches.includes('a sees b on bbbb1111'), JSON.stringify(mismatches));
    assert.ok(mismatches.includes('b sees a on aaaa0000'), JSON.stringify(mismatches));
    for (const [self, mine, theirs] of [['a', 'aaaa0000', 'bbbb1111'], ['b', 'bbbb1111', 'aaaa0000']] as const) {
      const warn = logs.find((l) => l.at === self && l.event === 'two-arbiters');
      assert.ok(warn, `${self} logs two-arbiters`);
      assert.equal(warn.fields.arbiterId, mine);
      assert.equal(warn.fields.peerArbiterId, theirs);
      assert.match(String(warn.fields.meaning), /two arbiters: split brain risk, check the arbiter path in every node's config/);
    }
    a.send('b', { type: 'join' });
    b.send('a', { type: 'join' });
    a.flush();
    b.flush();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(a.isConnected('b') || b.isConnected('a'), false, 'no link between two arbiters');
    assert.deepEqual(got, [], 'nothing passes');
    // Bounded noise: once the reconnect backoff is at its 1 s, a refusal a second each way (each
    // logged by both sides), not a storm; and one two-arbiters line per peer every 5 s.
    await new Promise((r) => setTimeout(r, 2000));
    const refusals = (): number => logs.filter((l) => l.event === 'peer-refused').length;
    const before = refusals();
    await new Promise((r) => setTimeout(r, 2000));
    assert.ok(refusals() - before <= 12, `${refusals() - before} refusals in 2 s at the steady state`);
    assert.ok(logs.filter((l) => l.event === 'two-arbiters').length <= 2, `two-arbiters logged ${logs.filter((l) => l.event === 'two-arbiters').length} times`);
  });
}
