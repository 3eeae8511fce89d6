// More than one backup on real processes (issue 11 item 4): `"backups": 2`. Every reply waits
// for both backups' acks, so any two nodes can die, at once or one after the other, and
// nothing acknowledged is lost: kill -9 under lockstep/client load, then every acked append is
// read back and the history must be linearizable.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { startLoad, workloadProblems } from '../src/testing/workload.js';
import type { NodeStatus } from '../src/cli/admin-client.js';
import { postSwitchover } from '../src/cli/switchover.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The primary, once its view has `n` backups that act as backups of that view. */
async function withBackups(cluster: ProcessCluster, n: number, what: string): Promise<NodeStatus> {
  let found: NodeStatus | null = null;
  await cluster.waitFor(async () => {
    const all = await cluster.statuses();
    const p = all.find((s) => s?.role === 'primary') ?? null;
    const backups = p?.view.backups ?? [];
    if (p === null || backups.length !== n) return false;
    const ok = backups.every((id) => {
      const b = all.find((s) => s?.id === id);
      return b?.role === 'backup' && b.epoch === p.epoch;
    });
    if (ok) found = p;
    return ok;
  }, 30_000, what);
  return found!;
}

/** kill -9 of `ids` at once; then `survivor`, the backup left, must go live. */
async function dieAtOnce(cluster: ProcessCluster, ids: readonly string[], survivor: string): Promise<void> {
  await Promise.all(ids.map((id) => cluster.kill9(id)));
  await cluster.waitFor(async () => (await cluster.status(survivor))?.role === 'primary', 30_000, `${survivor} to go live`);
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`backups 2, three nodes: kill -9 the primary and a backup AT ONCE under load; the last node goes live with every acked write (${mode})`, async (t) => {
    const cluster = await ProcessCluster.start({ nodes: 3, mode, extra: { backups: 2 } });
    t.after(() => cluster.stop());
    const p = await withBackups(cluster, 2, 'a primary with two backups');
    assert.equal(p.view.backup, p.view.backups![0], '/status keeps `backup`: the first of `backups`');
    const [b1, b2] = p.view.backups! as [string, string];
    const stop = startLoad(cluster.clientAddresses(), 4, 31, t);
    await sleep(800);
    await dieAtOnce(cluster, [p.id, b1], b2);
    await sleep(800);
    const result = await stop();
    t.diagnostic(`${result.ok} operations, ${result.failed} failed`);
    assert.ok(result.ok > 50, `the workload made progress (${result.ok} ops)`);
    assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
  });
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`backups 2, three nodes: the primary dies, then the new primary right after (no recruit between): the other backup followed it and takes over with every acked write (${mode})`, async (t) => {
    const cluster = await ProcessCluster.start({ nodes: 3, mode, extra: { backups: 2 } });
    t.after(() => cluster.stop());
    const p = await withBackups(cluster, 2, 'a primary with two backups');
    const stop = startLoad(cluster.clientAddresses(), 4, 35, t);
    await sleep(600);
    await cluster.kill9(p.id); // and it stays down: no spare, nothing to recruit
    // The winner keeps the other backup, which follows it with what it holds (no snapshot).
    const second = await withBackups(cluster, 1, 'a new primary that kept the other backup');
    const [other] = second.view.backups! as [string];
    assert.ok(p.view.backups!.includes(second.id) && p.view.backups!.includes(other));
    assert.match(cluster.log(other), /"event":"(follow-new-primary|new-log)"/, `${other} followed ${second.id}`);
    assert.doesNotMatch(cluster.log(other), new RegExp(`recruit-snapshot-start[^\\n]*"primary":"${second.id}"`), `${other} was not recruited again`);
    await sleep(300);
    // The second failure, back to back.
    await cluster.kill9(second.id);
    await cluster.waitFor(async () => (await cluster.status(other))?.role === 'primary', 30_000, `${other} to go live`);
    await sleep(600);
    const result = await stop();
    t.diagnostic(`${result.ok} operations, ${result.failed} failed; primaries ${p.id} -> ${second.id} -> ${other}`);
    assert.ok(result.ok > 50, `the workload made progress (${result.ok} ops)`);
    assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
  });
}

test('backups 2, four nodes: the primary dies, the survivor recruits back to two backups; then it and a backup die at once; nothing acked is lost', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 4, extra: { backups: 2 } });
  t.after(() => cluster.stop());
  const first = await withBackups(cluster, 2, 'a primary with two backups');
  const stop = startLoad(cluster.clientAddresses(), 4, 32, t);
  await sleep(600);
  // One after the other: the primary first.
  await cluster.kill9(first.id);
  const second = await withBackups(cluster, 2, 'a new primary with two backups again (the other backup and the spare recruited)');
  assert.notEqual(second.id, first.id);
  assert.ok(first.view.backups!.includes(second.id), `${second.id} was a backup of ${first.id}`);
  await sleep(600);
  // Then the new primary and one of its backups at once.
  const [c1, c2] = second.view.backups! as [string, string];
  await dieAtOnce(cluster, [second.id, c1], c2);
  await sleep(600);
  const result = await stop();
  t.diagnostic(`${result.ok} operations, ${result.failed} failed; primaries ${first.id} -> ${second.id} -> ${c2}`);
  assert.ok(result.ok > 50, `the workload made progress (${result.ok} ops)`);
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
});

test('backups 2: a killed backup leaves the view alone, the spare takes its place, and both backups end with the primary\'s state', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 4, extra: { backups: 2 } });
  t.after(() => cluster.stop());
  const p = await withBackups(cluster, 2, 'a primary with two backups');
  const [b1, b2] = p.view.backups! as [string, string];
  const spare = cluster.nodes.map((n) => n.id).find((id) => id !== p.id && id !== b1 && id !== b2)!;
  const stop = startLoad(cluster.clientAddresses(), 3, 33, t);
  await sleep(500);
  await cluster.kill9(b1);
  const after = await withBackups(cluster, 2, `${spare} recruited in ${b1}'s place`);
  assert.equal(after.id, p.id, 'the primary stayed');
  assert.deepEqual(after.view.backups, [b2, spare], `${b2} stayed in the view, ${spare} joined it`);
  await sleep(400);
  const result = await stop();
  assert.equal(result.failed, 0);
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
  await cluster.waitFor(async () => {
    const [x, y, z] = await Promise.all([cluster.status(p.id), cluster.status(b2), cluster.status(spare)]);
    return x !== null && y !== null && z !== null && x.lag === 0 && y.logIndex === x.logIndex && z.logIndex === x.logIndex && y.digest === x.digest && z.digest === x.digest;
  }, 10_000, 'both backups to hold the primary\'s state (same index, same digest)');
});

test('backups 2: with one backup\'s link slow, replies wait for it; the primary and the FAST backup die at once with what was on the wire, and the slow one has every acked write', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3, extra: { backups: 2 }, peerProxies: true, failureTimeoutMs: 1000 });
  t.after(() => cluster.stop());
  const p = await withBackups(cluster, 2, 'a primary with two backups');
  const [fast, slow] = p.view.backups! as [string, string];
  // Everything sent to `slow` arrives 150 ms late (well under the 1 s failure timeout: it stays
  // in the view): its acks come last, so every reply waits for them. (A longer delay from 0
  // reorders nothing: what went before is already through.)
  cluster.peerProxy(slow).delayToTargetMs = 150;
  const stop = startLoad(cluster.clientAddresses(), 4, 34, t);
  await sleep(1000);
  assert.equal((await cluster.status(p.id))?.epoch, p.epoch, 'the slow backup is still in the view');
  // The primary's machine and the fast backup fail together, and what was still on its way to
  // the slow backup is lost with them: only the output rule says the slow one has what counts.
  cluster.peerProxy(slow).cut = 'to-target';
  await Promise.all([cluster.kill9(p.id), cluster.kill9(fast)]);
  await sleep(400); // until every chunk held when they died would have arrived: all dropped
  cluster.peerProxy(slow).heal();
  cluster.peerProxy(slow).delayToTargetMs = 0;
  await cluster.waitFor(async () => (await cluster.status(slow))?.role === 'primary', 30_000, `${slow} to go live`).catch((e: Error) => {
    throw new Error(`${e.message}; its log ends:\n${cluster.log(slow).split('\n').slice(-25).join('\n')}`);
  });
  await sleep(500);
  const result = await stop();
  t.diagnostic(`${result.ok} operations, ${result.failed} failed; ${cluster.peerProxy(slow).dropped.toTarget} bytes to ${slow} lost on the wire`);
  assert.ok(result.ok > 20, `the workload made progress (${result.ok} ops)`);
  assert.ok(cluster.peerProxy(slow).dropped.toTarget > 0, 'something was on the wire to the slow backup when the others died');
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
});

test('backups 2: a switchover under load to the second backup; the old primary is its backup at once, the other follows it (no snapshot); no error, nothing lost', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 4, extra: { backups: 2 } });
  t.after(() => cluster.stop());
  const p = await withBackups(cluster, 2, 'a primary with two backups');
  const [b1, b2] = p.view.backups! as [string, string];
  const stop = startLoad(cluster.clientAddresses(), 4, 35, t);
  await sleep(500);
  const sw = await postSwitchover(cluster.node(p.id).admin, b2);
  assert.equal(sw.ok, true, sw.message);
  assert.deepEqual(sw.view, { epoch: p.epoch + 1, primary: b2, backup: p.id, backups: [p.id, b1] });
  const after = await withBackups(cluster, 2, `${b2} with both backups acting`);
  assert.equal(after.id, b2);
  assert.deepEqual(after.view.backups, [p.id, b1], 'the old primary is the first backup, the other stayed');
  assert.doesNotMatch(cluster.log(b1), new RegExp(`recruit-snapshot-start[^\\n]*"primary":"${b2}"`), `${b1} was not recruited by ${b2}`);
  await sleep(400);
  const result = await stop();
  t.diagnostic(`${result.ok} operations, ${result.failed} failed; switchover in ${sw.ms} ms; backups then ${after.view.backups!.join(', ')}`);
  assert.equal(result.failed, 0, 'no client saw an error');
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
});
