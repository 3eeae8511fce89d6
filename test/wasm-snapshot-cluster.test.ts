// Recruiting by guest snapshot on a real cluster: `lockstep node` children running the C
// kvserver, kill -9 of the backup, the spare recruited from a snapshot of the whole guest
// (much smaller than the log since the guest started), memory hashes compared, then kill -9 of
// the primary and the recruited backup going live with every acknowledged write.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { kvserverCluster, quiesced } from '../src/testing/wasm-cluster.js';
import { LineClient } from '../src/testing/line-client.js';
import type { GuestStatus, NodeStatus } from '../src/cli/admin-client.js';

function fields(s: NodeStatus): GuestStatus {
  return s.guest!;
}

/** `n` SETs of ~200-byte values by each of `clients`, over a few keys each; the acked values. */
async function workload(addr: { host: string; port: number }, tag: string, clients: number, n: number, acked: Map<string, string>): Promise<void> {
  await Promise.all(Array.from({ length: clients }, async (_, w) => {
    const cl = await LineClient.connectRetry(addr, 20_000);
    try {
      for (let i = 0; i < n; i++) {
        const key = `${tag}${w}k${i % 5}`;
        const value = `${'v'.repeat(200)}-${i}`;
        assert.equal(await cl.request(`SET ${key} ${value}`), 'OK');
        acked.set(key, value);
      }
    } finally {
      cl.close();
    }
  }));
}

test('wasm cluster: a spare is recruited from a guest snapshot, matches the primary, and takes over with every acked write', { timeout: 180_000 }, async (t) => {
  const { c, addr } = await kvserverCluster();
  t.after(() => c.stop());
  const acked = new Map<string, string>();
  await workload(addr, 'a', 4, 300, acked);
  const [p0, b0] = await quiesced(c);
  assert.equal(fields(p0).recruitBy, 'snapshot');
  assert.equal(fields(p0).logBytes, 0, 'the primary keeps no log for recruits');
  const logBytes = fields(p0).logBytesTotal;
  assert.ok(logBytes > 400_000, `the guest's log is ${logBytes} bytes`);

  // The backup dies; the spare is recruited while clients keep writing.
  await c.kill9(b0.id);
  const during = workload(addr, 'b', 2, 150, acked);
  const [p1, b1] = await quiesced(c, b0.id);
  await during;
  assert.equal(p1.id, p0.id);
  const restored = fields(b1).restoredFrom;
  assert.equal(restored?.kind, 'snapshot', `the recruit says ${JSON.stringify(restored)}`);
  assert.equal(restored.streamed, true, 'restored from the streamed snapshot (the default)');
  assert.ok(restored.bytes * 5 < logBytes, `a snapshot of ${restored.bytes} bytes against a log of ${logBytes}`);
  assert.equal(fields(p1).lastSnapshot?.kind, 'snapshot');
  assert.match(c.log(b1.id), /"event":"guest-restore"[^\n]*"from":"snapshot"/);

  // More work; then primary and recruit are the same machine.
  await workload(addr, 'c', 3, 100, acked);
  const [p2, b2] = await quiesced(c);
  assert.equal(b2.id, b1.id);
  assert.ok(b2.guest!.calls > (restored.calls ?? 0));
  assert.equal(b2.guest!.memoryHash, p2.guest!.memoryHash, 'memory hashes differ');
  assert.equal(b2.guest!.outputDigest, p2.guest!.outputDigest, 'output digests differ');
  assert.equal(b2.guest!.hostState, p2.guest!.hostState, 'host states differ');

  // The primary dies: the recruit goes live and has every acknowledged write.
  await c.kill9(p2.id);
  await c.waitFor(async () => {
    const p = await c.primary();
    return p?.id === b2.id && p.guest?.mode === 'record';
  }, 30_000, 'the recruited backup to go live');
  const cl = await LineClient.connectRetry(addr, 20_000);
  t.after(() => cl.close());
  for (const [key, value] of acked) assert.equal(await cl.request(`GET ${key}`), `VALUE ${value}`, key);
  assert.equal(await cl.request('COUNT'), String(acked.size));
});
