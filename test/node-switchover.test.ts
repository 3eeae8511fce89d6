// Planned switchover on real processes (issue 11 item 1): lockstep/client writers see no error
// across switchovers there and back, nothing acknowledged is lost or doubled, the history is
// linearizable, the old primary serves as the backup; and the refusals, with their codes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { startLoad, workloadProblems } from '../src/testing/workload.js';
import { postSwitchover } from '../src/cli/switchover.js';
import { Redis } from 'ioredis';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, ...args], { timeout: 30_000 }, (e, stdout, stderr) => {
      resolve({ code: e === null ? 0 : typeof e.code === 'number' ? e.code : -1, stdout, stderr });
    });
  });
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`switchover under load and back: no client error, nothing lost or doubled, linearizable, old primary serves as backup (${mode})`, async (t) => {
    const cluster = await ProcessCluster.start({ mode });
    t.after(() => cluster.stop());
    const p = (await cluster.primary())!;
    const b = p.view.backup!;
    assert.ok(b, 'a backup');
    const finish = startLoad(cluster.clientAddresses(), 4, 7, t);
    await sleep(600);
    // There, with the CLI (it finds the primary itself).
    const there = await cli(['switchover', '--config', cluster.configPath]);
    assert.equal(there.code, 0, there.stderr);
    assert.match(there.stdout, new RegExp(`switchover done: ${p.id} -> ${b}, now \\{epoch ${p.epoch + 1}, primary ${b}, backup ${p.id}\\}`));
    const [sp, sb] = await Promise.all([cluster.status(p.id), cluster.status(b)]);
    assert.equal(sp!.role, 'backup', 'the old primary is the backup');
    assert.equal(sb!.role, 'primary');
    await sleep(600);
    const mid = (await cluster.status(p.id))!;
    assert.equal(mid.role, 'backup', 'still the backup under load');
    assert.ok(mid.logIndex > sp!.logIndex, 'applying the new primary\'s entries');
    // And back, through the admin port, naming the target.
    const back = await postSwitchover(cluster.node(b).admin, p.id);
    assert.equal(back.ok, true, back.message);
    assert.deepEqual(back.view, { epoch: p.epoch + 2, primary: p.id, backup: b, backups: [b] });
    t.diagnostic(`switchover back: roles swapped ${back.ms} ms after the request, new primary live after ${back.liveMs} ms`);
    await sleep(600);
    const result = await finish();
    t.diagnostic(`${result.ok} operations, ${result.failed} failed`);
    assert.ok(result.ok > 100, `the workload made progress (${result.ok} ops)`);
    assert.equal(result.failed, 0, 'no client saw an error');
    assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
    await cluster.waitFor(async () => {
      const [x, y] = await Promise.all([cluster.status(p.id), cluster.status(b)]);
      return x?.role === 'primary' && y?.role === 'backup' && x.lag === 0 && x.logIndex === y.logIndex;
    }, 5000, 'the backup to catch up');
    const [x, y] = await Promise.all([cluster.status(p.id), cluster.status(b)]);
    assert.equal(y!.digest, x!.digest, 'identical state at the same log index');
  });
}

test('the backup dies during the catch-up: the switchover is aborted, the primary serves on, no client error', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const p = (await cluster.primary())!;
  const b = p.view.backup!;
  const finish = startLoad(cluster.clientAddresses(), 3, 11, t);
  await sleep(500);
  await cluster.kill9(b);
  // Asked before the primary noticed: it begins, waits for acks that never come, and gives up
  // when the backup has been silent for the failure timeout.
  const r = await postSwitchover(cluster.node(p.id).admin, null);
  t.diagnostic(`${r.outcome} ${r.code} after ${r.ms} ms: ${r.message}`);
  assert.equal(r.ok, false);
  assert.equal(r.code, 'E_SWITCHOVER_ABORTED');
  assert.match(r.message, new RegExp(`the backup ${b} is silent`));
  assert.equal((await cluster.status(p.id))!.role, 'primary', 'the primary serves on');
  await sleep(500);
  const result = await finish();
  assert.equal(result.failed, 0, 'the commands parked during the attempt ran');
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
});

/** SENTINEL FAILOVER <cluster> on a node's client port: the reply, or the error's message. */
async function sentinelFailover(cluster: ProcessCluster, id: string): Promise<string> {
  const c = cluster.node(id).client;
  const redis = new Redis({ host: c.host, port: c.port, lazyConnect: true, maxRetriesPerRequest: 0 });
  try {
    await redis.connect();
    return String(await redis.call('SENTINEL', 'FAILOVER', cluster.cluster));
  } catch (e) {
    return (e as Error).message;
  } finally {
    redis.disconnect();
  }
}

test('switchover refusals: not the primary, not the backup, no header, no backup; SENTINEL FAILOVER', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 2 });
  t.after(() => cluster.stop());
  const first = (await cluster.primary())!;
  // SENTINEL FAILOVER on the client port: refused on the backup, begun on the primary.
  assert.match(await sentinelFailover(cluster, first.view.backup!), new RegExp(`^ERR E_SWITCHOVER_NOT_PRIMARY .*send SENTINEL FAILOVER to ${first.id} at `));
  assert.equal(await sentinelFailover(cluster, first.id), 'OK');
  await cluster.waitFor(async () => (await cluster.status(first.view.backup!))?.role === 'primary' && (await cluster.status(first.id))?.role === 'backup', 10_000, 'the roles to swap');
  const p = (await cluster.primary())!;
  const b = p.view.backup!;
  assert.equal(b, first.id);
  const notPrimary = await postSwitchover(cluster.node(b).admin, null);
  assert.equal(notPrimary.code, 'E_SWITCHOVER_NOT_PRIMARY');
  assert.match(notPrimary.message, new RegExp(`the primary this node knows of is ${p.id}`));
  const viaCli = await cli(['switchover', '--config', cluster.configPath, '--node', b]);
  assert.equal(viaCli.code, 1);
  assert.match(viaCli.stderr, /^error E_SWITCHOVER_NOT_PRIMARY: /);
  const target = await postSwitchover(cluster.node(p.id).admin, p.id);
  assert.equal(target.code, 'E_SWITCHOVER_TARGET');
  const unknown = await cli(['switchover', '--config', cluster.configPath, '--to', 'n9']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /E_UNKNOWN_NODE/);
  // Without the header (a browser's cross-origin POST could not add it without a preflight).
  const status = await new Promise<number>((resolve, reject) => {
    const a = cluster.node(p.id).admin;
    const req = http.request({ host: a.host, port: a.port, path: '/api/switchover', method: 'POST' }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(status, 403);
  assert.equal((await cluster.status(p.id))!.role, 'primary', 'nothing changed');
  // No backup: kill it; the primary drops it and, with no spare, stays alone.
  await cluster.kill9(b);
  await cluster.waitFor(async () => (await cluster.status(p.id))?.view.backup === null, 10_000, 'the primary to drop its backup');
  const alone = await cli(['switchover', '--config', cluster.configPath]);
  assert.equal(alone.code, 1);
  assert.match(alone.stderr, /^error E_SWITCHOVER_NO_BACKUP: /);
  assert.match(await sentinelFailover(cluster, p.id), /^NOGOODSLAVE No suitable replica to promote: E_SWITCHOVER_NO_BACKUP /);
});
