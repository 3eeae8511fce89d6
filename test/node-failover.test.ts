// Real processes, real faults: kill -9 the primary of a running cluster under a concurrent
// write load. The backup must go live, no acknowledged write may be lost or doubled, and the
// whole history must be linearizable.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { runWorkload, workloadProblems } from '../src/testing/workload.js';
import { checkHistory } from '../src/sim/linearizability.js';
import { LockstepClient } from '../src/client/index.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`kill -9 the primary under load: the backup goes live, nothing acknowledged is lost, history linearizable (${mode})`, async (t) => {
    const cluster = await ProcessCluster.start({ mode });
    t.after(() => cluster.stop());
    const primary = await cluster.primary();
    assert.ok(primary, 'a primary');
    const backupId = primary.view.backup;
    assert.ok(backupId, 'with a backup');

    let stop!: () => void;
    const until = new Promise<void>((r) => (stop = r));
    const load = runWorkload(cluster.clientAddresses(), 4, 1, until);
    t.after(() => stop()); // a failed assertion must not leave the writers running
    await sleep(800);
    await cluster.kill9(primary.id);
    await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live`);
    await sleep(1200);
    stop();
    const result = await load;

    t.diagnostic(`${result.ok} operations, ${result.history.length} events`);
    assert.ok(result.ok > 50, `the workload made progress (${result.ok} ops)`);
    assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
  });
}

test('kill -9 the backup: the primary carries on alone, recruits the spare while writes continue, same state', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId)!;
  let stop!: () => void;
  const until = new Promise<void>((r) => (stop = r));
  const load = runWorkload(cluster.clientAddresses(), 3, 2, until);
  t.after(() => stop()); // a failed assertion must not leave the writers running
  await sleep(500);
  await cluster.kill9(backupId);
  await cluster.waitFor(async () => (await cluster.status(spareId))?.role === 'backup', 30_000, `${spareId} to be recruited as backup`);
  const during = (await cluster.status(primary.id))!;
  assert.equal(during.role, 'primary', 'the primary carried on');
  await sleep(500);
  stop();
  const result = await load;
  assert.equal(result.failed, 0);
  assert.ok(!checkHistory(result.history).failure, 'linearizable');
  // Quiet now: the new backup holds exactly the primary's state.
  await cluster.waitFor(async () => {
    const [p, b] = await Promise.all([cluster.status(primary.id), cluster.status(spareId)]);
    return p !== null && b !== null && p.lag === 0 && p.logIndex === b.logIndex;
  }, 5000, 'the backup to catch up');
  const [p, b] = await Promise.all([cluster.status(primary.id), cluster.status(spareId)]);
  assert.equal(b!.digest, p!.digest, 'identical state at the same log index');
  assert.ok(p!.logIndex > 0);
});

test('SIGSTOP the primary past the failure timeout, then SIGCONT: it releases nothing stale and rejoins as a spare', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  let stop!: () => void;
  const until = new Promise<void>((r) => (stop = r));
  const load = runWorkload(cluster.clientAddresses(), 4, 3, until);
  t.after(() => stop()); // a failed assertion must not leave the writers running
  await sleep(400);
  cluster.signal(primary.id, 'SIGSTOP');
  await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live`);
  await sleep(300);
  cluster.signal(primary.id, 'SIGCONT');
  await cluster.waitFor(async () => {
    const s = await cluster.status(primary.id);
    return s !== null && s.role !== 'primary';
  }, 30_000, `${primary.id} to learn it is deposed`);
  await sleep(800);
  stop();
  const result = await load;
  assert.equal(result.failed, 0);
  const lin = checkHistory(result.history);
  assert.ok(!lin.failure, `linearizable (a deposed primary's stale reply would break it): ${JSON.stringify(lin.failure)}`);
  assert.match(cluster.log(primary.id), /"event":"rejoin-as-spare"/);
  await cluster.waitFor(async () => ['spare', 'backup'].includes((await cluster.status(primary.id))?.role ?? ''), 30_000, 'the old primary to rejoin');
});

test('primary and backup both killed: the empty spare refuses service; a restarted empty node never becomes primary', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const client = new LockstepClient({ nodes: cluster.clientAddresses(), commandTimeoutMs: 2000, attemptTimeoutMs: 300 });
  t.after(() => client.close());
  await client.set('k', 'v');
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId)!;
  await cluster.kill9(primary.id);
  await cluster.kill9(backupId);
  cluster.spawn(primary.id);
  await sleep(1500);
  const statuses = await cluster.statuses();
  assert.ok(statuses.every((s) => s === null || s.role !== 'primary'), `no primary: ${JSON.stringify(statuses.map((s) => s?.role))}`);
  assert.equal((await cluster.status(spareId))?.role, 'spare');
  await assert.rejects(client.get('k'), /did not complete/);
});

test('the arbiter unusable for a while: nobody goes live until it answers', async (t) => {
  const { renameSync, writeFileSync, rmSync } = await import('node:fs');
  const { join } = await import('node:path');
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  const dir = join(cluster.dir, 'arbiter');
  renameSync(dir, `${dir}.away`);
  writeFileSync(dir, 'not a directory');
  await cluster.kill9(primary.id);
  await sleep(2000);
  assert.equal((await cluster.status(backupId))?.role, 'backup', 'waiting, not guessing');
  assert.ok(((await cluster.statuses()).every((s) => s === null || s.role !== 'primary')), 'no primary');
  assert.match(cluster.log(backupId), /"event":"arbiter-unavailable"/);
  rmSync(dir);
  renameSync(`${dir}.away`, dir);
  await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live once the arbiter answers`);
});

test('exactly once through a proxy that drops replies after the command ran: 100 appends, each once, in order', async (t) => {
  const { TcpProxy } = await import('../src/testing/tcp-proxy.js');
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  // Every node is reached through its own unreliable proxy.
  const proxies = await Promise.all(cluster.nodes.map(async (n) => {
    const p = new TcpProxy(n.client, n.client.port);
    await p.start();
    p.dropReplies = 0.3;
    return p;
  }));
  t.after(() => Promise.all(proxies.map((p) => p.stop())));
  const client = new LockstepClient({ nodes: proxies.map((p) => `127.0.0.1:${p.port}`), attemptTimeoutMs: 300 });
  t.after(() => client.close());
  const expected: string[] = [];
  for (let i = 0; i < 100; i++) {
    expected.push(`x${i};`);
    await client.append('log', `x${i};`);
  }
  for (const p of proxies) p.dropReplies = 0;
  assert.equal(await client.get('log'), expected.join(''));
  assert.ok(client.reconnects > 10, `replies were dropped and commands resent (${client.reconnects} reconnects)`);
  assert.equal((await cluster.status(primary.id))?.role, 'primary');
});
