// The logging channel cut, real processes: every node's peer address is a TCP proxy in front of
// the port it listens on, so a test can silently drop the traffic into a node (one way or both)
// or break its connections, under a concurrent write load. A cut between primary and backup
// must end with exactly one of them primary, by the arbiter's test-and-set, and the other back
// as a spare; a reset needs no failover at all. Always: the history is linearizable, no
// acknowledged append is lost or doubled, and once healed the cluster has a backup again.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { runWorkload, workloadProblems, type WorkloadResult } from '../src/testing/workload.js';
import { LockstepClient } from '../src/client/index.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Setup {
  cluster: ProcessCluster;
  /** Run before the cluster stops, last added first (t.after hooks run in the order added). */
  cleanups: (() => void | Promise<void>)[];
  primaryId: string;
  backupId: string;
  spareId: string;
  epoch: number;
}

async function startCluster(t: TestContext, opts: { mode?: 'rsm' | 'state-transfer'; failureTimeoutMs?: number } = {}): Promise<Setup> {
  const cluster = await ProcessCluster.start({ nodes: 3, peerProxies: true, mode: opts.mode ?? 'rsm', heartbeatMs: 50, failureTimeoutMs: opts.failureTimeoutMs ?? 600 });
  const cleanups: (() => void | Promise<void>)[] = [];
  t.after(async () => {
    try {
      for (const f of cleanups.reverse()) await f();
    } finally {
      await cluster.stop();
    }
  });
  const p = await cluster.primary();
  assert.ok(p, 'a primary');
  assert.ok(p.view.backup, 'with a backup');
  const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== p.id && id !== p.view.backup)!;
  return { cluster, cleanups, primaryId: p.id, backupId: p.view.backup, spareId, epoch: p.epoch };
}

/** The view the arbiter holds for `epoch` (the file arbiter's `view-<epoch>` file). */
function arbiterView(cluster: ProcessCluster, epoch: number): { epoch: number; primary: string | null; backup: string | null } | null {
  try {
    return JSON.parse(readFileSync(join(cluster.dir, 'arbiter', `view-${epoch}`), 'utf8')) as { epoch: number; primary: string | null; backup: string | null };
  } catch {
    return null;
  }
}

/** The workload's outcome: complete, linearizable, and every acknowledged append there once. */
async function checkOutcome(t: TestContext, cluster: ProcessCluster, result: WorkloadResult): Promise<void> {
  t.diagnostic(`${result.ok} operations, ${result.history.length} events`);
  assert.ok(result.ok > 50, `the workload made progress (${result.ok} ops)`);
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
}

/** Healed: a primary whose backup follows it in the same view. */
async function waitForPrimaryAndBackup(cluster: ProcessCluster): Promise<{ primary: string; backup: string }> {
  let pair: { primary: string; backup: string } | null = null;
  await cluster.waitFor(async () => {
    const all = await cluster.statuses();
    const p = all.find((s) => s?.role === 'primary');
    if (!p || !p.view.backup) return false;
    const b = all.find((s) => s?.id === p.view.backup);
    if (b?.role !== 'backup' || b.epoch !== p.epoch) return false;
    pair = { primary: p.id, backup: b.id };
    return true;
  }, 60_000, 'a primary with a backup again');
  return pair!;
}

/** Quiet (no load): the backup catches up and then holds exactly the primary's state. */
async function checkConverged(cluster: ProcessCluster, pair: { primary: string; backup: string }): Promise<void> {
  let sample: [string, string] | null = null;
  await cluster.waitFor(async () => {
    const [p, b] = await Promise.all([cluster.status(pair.primary), cluster.status(pair.backup)]);
    if (p === null || b === null || p.lag !== 0 || p.logIndex !== b.logIndex) return false;
    sample = [p.digest ?? '', b.digest ?? ''];
    return true;
  }, 30_000, 'the backup to catch up');
  const [pd, bd] = sample!;
  assert.equal(bd, pd, `the backup ${pair.backup} holds exactly the primary's (${pair.primary}) state at the same log index`);
}

/**
 * Cut the channel as `cut` says under a write load; wait until exactly one of primary and
 * backup is primary in a newer epoch and the other is not; heal; wait for a backup again.
 */
async function cutUnderLoad(
  t: TestContext,
  setup: Setup,
  seed: number,
  cut: (s: Setup) => void,
  heal: (s: Setup) => void,
  dropped: (s: Setup) => number,
): Promise<void> {
  const { cluster, primaryId, backupId, epoch } = setup;
  let stop!: () => void;
  const until = new Promise<void>((r) => (stop = r));
  const load = runWorkload(cluster.clientAddresses(), 4, seed, until);
  setup.cleanups.push(() => stop()); // on failure: stop the clients; they end when their commands do
  await sleep(800);
  cut(setup);

  // Exactly one of the two goes on as primary, in the next epoch, by the arbiter.
  let winner = '';
  await cluster.waitFor(async () => {
    const [p, b] = await Promise.all([cluster.status(primaryId), cluster.status(backupId)]);
    const live = [p, b].filter((s) => s?.role === 'primary' && s.epoch > epoch);
    const other = [p, b].find((s) => s !== null && !live.includes(s));
    if (live.length !== 1 || other === undefined || other === null || other.role === 'primary') return false;
    winner = live[0]!.id;
    return true;
  }, 60_000, 'exactly one of primary and backup to be primary in a newer epoch');
  const loser = winner === primaryId ? backupId : primaryId;
  const next = arbiterView(cluster, epoch + 1);
  assert.ok(next, `the arbiter holds view ${epoch + 1}`);
  assert.equal(next.primary, winner, `the arbiter made ${winner} primary of epoch ${epoch + 1}`);
  assert.equal(next.backup, null, 'alone');
  await cluster.waitFor(() => /"event":"rejoin-as-spare"/.test(cluster.log(loser)), 30_000, `${loser} to halt and rejoin as a spare`);
  t.diagnostic(`cut: ${winner} won epoch ${epoch + 1}, ${loser} rejoined as a spare`);
  assert.ok(dropped(setup) > 0, 'the cut dropped traffic');

  // Serve a while with the channel still cut, then heal.
  await sleep(1000);
  const during = await cluster.status(winner);
  assert.equal(during?.role, 'primary', `${winner} is still primary while the cut lasts`);
  const loserStatus = await cluster.status(loser);
  assert.notEqual(loserStatus?.role, 'primary', `${loser} did not come back as primary`);
  heal(setup);
  const healed = await waitForPrimaryAndBackup(cluster);
  t.diagnostic(`healed: primary ${healed.primary}, backup ${healed.backup}`);
  await sleep(800);
  stop();
  const result = await load;
  await checkOutcome(t, cluster, result);
  await checkConverged(cluster, await waitForPrimaryAndBackup(cluster));
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`the channel between primary and backup cut both ways under load: one of them goes on via the arbiter, the other rejoins as a spare (${mode})`, async (t) => {
    const setup = await startCluster(t, { mode });
    await cutUnderLoad(
      t,
      setup,
      mode === 'rsm' ? 21 : 22,
      ({ cluster, primaryId, backupId }) => {
        // Everything into the primary (the backup's acks) and into the backup (the frames).
        cluster.peerProxy(primaryId).cut = 'both';
        cluster.peerProxy(backupId).cut = 'both';
      },
      ({ cluster, primaryId, backupId }) => {
        cluster.peerProxy(primaryId).heal();
        cluster.peerProxy(backupId).heal();
      },
      ({ cluster, primaryId, backupId }) => cluster.peerProxy(primaryId).dropped.toTarget + cluster.peerProxy(backupId).dropped.toTarget,
    );
  });
}

test('the channel cut one way (frames to the backup dropped, its side to the primary open) under load: same outcome', async (t) => {
  const setup = await startCluster(t, { mode: 'rsm' });
  await cutUnderLoad(
    t,
    setup,
    23,
    ({ cluster, backupId }) => {
      cluster.peerProxy(backupId).cut = 'to-target';
    },
    ({ cluster, backupId }) => {
      cluster.peerProxy(backupId).heal();
    },
    ({ cluster, backupId }) => cluster.peerProxy(backupId).dropped.toTarget,
  );
});

test('connections of the channel reset mid-load: no failover, the primary resends from the last ack, writes keep completing', async (t) => {
  // A failure timeout far above a reconnect: a reset must be survived without a view change.
  const setup = await startCluster(t, { mode: 'rsm', failureTimeoutMs: 5000 });
  const { cluster, primaryId, backupId, epoch } = setup;
  let stop!: () => void;
  const until = new Promise<void>((r) => (stop = r));
  const load = runWorkload(cluster.clientAddresses(), 4, 24, until);
  setup.cleanups.push(() => stop());
  const probe = new LockstepClient({ nodes: cluster.clientAddresses(), commandTimeoutMs: 30_000 });
  setup.cleanups.push(() => probe.close());
  const connectedBefore = (cluster.log(primaryId).match(/"event":"peer-connected"/g) ?? []).length;
  const probes: string[] = [];
  await sleep(500);
  for (let i = 0; i < 6; i++) {
    // Alternately the frames' connection (into the backup), the acks' (into the primary), both.
    if (i % 3 !== 1) cluster.peerProxy(backupId).reset();
    if (i % 3 !== 0) cluster.peerProxy(primaryId).reset();
    const v = `r${i};`;
    await probe.append('reset-log', v); // completes only once the backup holds it: the channel is back
    probes.push(v);
    await sleep(300);
  }
  stop();
  const result = await load;
  await checkOutcome(t, cluster, result);
  assert.equal(await probe.get('reset-log'), probes.join(''), 'each probe append once, in order');

  const [p, b] = await Promise.all([cluster.status(primaryId), cluster.status(backupId)]);
  assert.equal(p?.role, 'primary', `${primaryId} is still primary`);
  assert.equal(b?.role, 'backup', `${backupId} is still backup`);
  assert.equal(p?.epoch, epoch, 'no failover: the epoch is unchanged');
  assert.equal(b?.epoch, epoch, 'no failover: the backup\'s epoch is unchanged');
  assert.equal(arbiterView(cluster, epoch + 1), null, 'the arbiter was never asked for a new view');
  const connectedAfter = (cluster.log(primaryId).match(/"event":"peer-connected"/g) ?? []).length;
  assert.ok(connectedAfter > connectedBefore, `the primary dialled the backup again after the resets (${connectedAfter - connectedBefore} times)`);
  const pair = await waitForPrimaryAndBackup(cluster);
  assert.deepEqual(pair, { primary: primaryId, backup: backupId });
  await checkConverged(cluster, pair);
});
