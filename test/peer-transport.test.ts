// The logging channel's transport in one process: two PeerTransports on loopback.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PeerTransport } from '../src/net/peer-transport.js';
import { freePorts } from '../src/testing/process-cluster.js';

function transport(self: string, other: string, ports: Record<string, number>, got: string[]): PeerTransport {
  return new PeerTransport({
    cluster: 't',
    self,
    listen: { host: '127.0.0.1', port: ports[self]! },
    peers: new Map([[other, { host: '127.0.0.1', port: ports[other]! }]]),
    maxFrameBytes: 1 << 20,
    maxQueuedBytes: 1 << 20,
    epoch: () => 1,
    secret: new Uint8Array(32).fill(9),
    onMessage: (from, msg) => got.push(`${from}:${(msg as { type: string }).type}`),
    log: () => {},
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
