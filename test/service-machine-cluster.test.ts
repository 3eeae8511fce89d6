// A module exporting a full StateMachine (defineMachine) on real clusters: the counters example
// over the RESP client port (lockstep/client exactly-once, ioredis call), across kill -9 of the
// primary in both modes, then a spare recruited from the new primary's snapshot with the digest
// check passing; and a machine whose command changes the state and then throws fail-stops the
// primary (E_SERVICE_MACHINE) while the backup carries on with the state from before.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { LockstepClient } from '../src/client/index.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const counters = fileURLToPath(new URL('../../examples/services/counters/counters.js', import.meta.url));
const breaks = fileURLToPath(new URL('../../test/fixtures/services/breaks-machine.js', import.meta.url));

function client(c: ProcessCluster, id?: string): LockstepClient {
  return new LockstepClient({ nodes: c.clientAddresses(), commandTimeoutMs: 60_000, ...(id ? { clientId: id } : {}) });
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`counters (defineMachine): increments run exactly once across kill -9 of the primary, and a spare is recruited (${mode})`, async (t) => {
    const cluster = await ProcessCluster.start({ nodes: 3, service: { kind: 'module', module: counters, mode } });
    t.after(() => cluster.stop());
    const primary = (await cluster.primary())!;
    const backupId = primary.view.backup!;
    const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId)!;
    // ioredis: the machine's RESP integer replies arrive as numbers.
    const redis = new Redis({ port: cluster.node(primary.id).client.port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
    t.after(() => redis.disconnect());
    await redis.connect();
    assert.equal(await redis.call('INCRBY', 'seed', '41'), 41);
    assert.equal(await redis.call('INCRBY', 'seed', '1'), 42);
    await assert.rejects(redis.call('INCRBY', 'seed', 'x'), /ERR value is not an integer/);
    redis.disconnect();
    let stop = false;
    const acked = [0, 0, 0, 0];
    let done = 0;
    const clients = [0, 1, 2, 3].map((w) => client(cluster, `worker-${w}`));
    t.after(() => clients.forEach((c) => c.close()));
    const worker = async (w: number): Promise<void> => {
      for (let i = 1; !stop; i++) {
        const by = ((w * 7 + i * 13) % 19) - 9;
        const out = await clients[w]!.call<number>('INCRBY', `w${w}`, by);
        acked[w]! += by;
        // Exactly once: the reply is the value after this one increment.
        assert.equal(out, acked[w]);
        done++;
      }
    };
    const running = Promise.all([0, 1, 2, 3].map(worker));
    await sleep(700);
    await cluster.kill9(primary.id); // the clients carry on against the backup once it is live
    await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live`);
    await sleep(700);
    stop = true;
    await running;
    assert.ok(done > 20, `progress (${done} increments)`);
    const c = client(cluster);
    t.after(() => c.close());
    for (let w = 0; w < 4; w++) assert.equal(await c.call('GET', `w${w}`), acked[w], `w${w}`);
    assert.equal(await c.call('SUM'), 42 + acked.reduce((a, b) => a + b, 0));
    // The spare starts from the new primary's snapshot (the machine's own), then checks digests.
    await cluster.waitFor(async () => (await cluster.status(spareId))?.role === 'backup', 30_000, `${spareId} recruited`);
    assert.equal(await c.call('INCRBY', 'after', 3), 3);
    let checks = 0;
    await cluster.waitFor(async () => {
      const p = await cluster.status(backupId);
      const b = (await cluster.status(spareId)) as (Record<string, unknown> & { digest?: string; logIndex?: number }) | null;
      checks = Number(b?.digestChecks ?? 0);
      return b !== null && p?.digest === b.digest && p?.logIndex === b.logIndex && checks > 0;
    }, 30_000, 'primary and recruited backup equal, with a digest check passed');
    t.diagnostic(`${done} increments: ${acked.map((a, w) => `w${w}=${a}`).join(' ')}; ${checks} digest checks on the recruit`);
  });
}

/** The breaks machine (rsm) on `nodes` nodes, its register set to 5 through lockstep/client. */
async function breaksCluster(t: TestContext, nodes: number): Promise<{ cluster: ProcessCluster; primary: { id: string }; backupId: string; c: LockstepClient }> {
  const cluster = await ProcessCluster.start({ nodes, service: { kind: 'module', module: breaks, mode: 'rsm' } });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  const c = client(cluster);
  t.after(() => c.close());
  assert.equal(await c.call('SET', 5), 'OK');
  return { cluster, primary, backupId, c };
}

/** BREAK on the primary, from a plain client (no retry), so the command does not follow the failover to the next primary. */
async function breakPrimary(t: TestContext, cluster: ProcessCluster, primaryId: string): Promise<void> {
  const redis = new Redis({ port: cluster.node(primaryId).client.port, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
  t.after(() => redis.disconnect());
  await redis.connect();
  await assert.rejects(redis.call('BREAK'));
}

test('a full machine that changes its state and then throws: the primary quarantines the command and fail-stops (E_SERVICE_MACHINE), the backup goes on from before and refuses the command (E_SERVICE_QUARANTINED)', async (t) => {
  const { cluster, primary, backupId, c } = await breaksCluster(t, 3);
  await breakPrimary(t, cluster, primary.id);
  await cluster.waitFor(() => cluster.node(primary.id).child === null || cluster.node(primary.id).child!.exitCode !== null, 30_000, `${primary.id} to fail-stop`);
  assert.match(cluster.log(primary.id), /E_SERVICE_MACHINE: breaks\.execute\(BREAK\) threw after changing the state \(digest 5 before, -1 after\): half done/);
  assert.match(cluster.log(primary.id), /the command is quarantined on every replica/);
  await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live`);
  assert.equal(await c.call('GET'), 5);
  // The same command again (a client's retry, or an attacker) is refused unrun, by the new
  // primary, which stays up: a "query of death" stops one primary, not each in turn.
  for (let i = 0; i < 3; i++) {
    await assert.rejects(c.call('BREAK'), /E_SERVICE_QUARANTINED this command broke the service on an earlier primary/);
  }
  assert.equal(await c.call('SET', 6), 'OK');
  assert.equal(await c.call('GET'), 6);
  assert.equal((await cluster.status(backupId))?.role, 'primary');
  // The spare is recruited from a snapshot that carries the quarantine (the digests agree,
  // and include it), and it refuses the command too once it is primary.
  const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId)!;
  await cluster.waitFor(async () => {
    const [p, b] = await Promise.all([cluster.status(backupId), cluster.status(spareId)]);
    return b?.role === 'backup' && p?.appliedIndex === b.appliedIndex && p?.digest === b.digest && /\/q[0-9a-f]{16}$/.test(String(b.digest));
  }, 30_000, 'the spare recruited, with the quarantine in its digest');
  await cluster.kill9(backupId);
  await cluster.newPrimary(backupId, 30_000);
  await assert.rejects(c.call('BREAK'), /E_SERVICE_QUARANTINED/);
  assert.equal(await c.call('GET'), 6);
});

test('a broken primary whose backup is silent stops rather than drop it, and the backup takes over with the state from before', async (t) => {
  const { cluster, primary, backupId, c } = await breaksCluster(t, 2);
  cluster.signal(backupId, 'SIGSTOP');
  await breakPrimary(t, cluster, primary.id);
  await cluster.waitFor(() => cluster.node(primary.id).child === null || cluster.node(primary.id).child!.exitCode !== null, 30_000, `${primary.id} to fail-stop`);
  assert.match(cluster.log(primary.id), /the backup went silent before it had the command's quarantine, so this node stops now rather than drop it/);
  cluster.signal(backupId, 'SIGCONT');
  await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live`);
  assert.equal(await c.call('GET'), 5);
});
