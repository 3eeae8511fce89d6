// Real lockstep on real etcd: three lockstep nodes as child processes whose arbiter is a
// 3-member etcd cluster (its own processes, src/testing/etcd-cluster.ts), real kill -9 of
// lockstep and of etcd members, a concurrent client workload checked for lost or doubled
// writes and for linearizability. Skipped with one line when etcd-server is not installed.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { EtcdCluster, etcdMissing } from '../src/testing/etcd-cluster.js';
import { TcpProxy } from '../src/testing/tcp-proxy.js';
import { runWorkload, startLoad, workloadProblems } from '../src/testing/workload.js';
import { postSwitchover } from '../src/cli/switchover.js';
import { openArbiter } from '../src/arbiter/open.js';
import { runCli } from '../src/testing/cli-child.js';

const SKIP = etcdMissing();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const opts = { skip: SKIP ?? false, timeout: 180_000 };

/** A 3-member etcd and a 3-node lockstep cluster on it; both stopped after the test. */
async function lockstepOnEtcd(t: { after(f: () => Promise<void>): void }) {
  const etcd = await EtcdCluster.start({ members: 3 });
  t.after(() => etcd.stop());
  const cluster = await ProcessCluster.start({ arbiter: etcd.spec() });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  return { etcd, cluster, primary, backupId: primary.view.backup! };
}

test('etcd (3 members): kill -9 the primary under load; the backup goes live through etcd, nothing acknowledged lost or doubled, linearizable', opts, async (t) => {
  const { etcd, cluster, primary, backupId } = await lockstepOnEtcd(t);
  assert.match(JSON.stringify((await cluster.status(primary.id)) as unknown), /"arbiter":\{"arbiter":"etcd:\/\/.*"health":"ok"/);

  let stop!: () => void;
  const load = runWorkload(cluster.clientAddresses(), 4, 11, new Promise<void>((r) => (stop = r)));
  t.after(() => stop()); // a failed assertion must not leave the writers running
  await sleep(800);
  await cluster.kill9(primary.id);
  await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live`);
  await sleep(1000);
  stop();
  const result = await load;
  t.diagnostic(`${result.ok} operations`);
  assert.ok(result.ok > 50, `the workload made progress (${result.ok} ops)`);
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);

  const out = await runCli(['status', '--config', cluster.configPath]);
  assert.match(out.stdout, new RegExp(`arbiter etcd://${etcd.endpoints().replace(/\./g, '\\.')}/lockstep \\(key /lockstep/test/view\\)`));
  assert.match(out.stdout, /arbiter view \{epoch \d+, primary /);
});

test('etcd loses its leader, then quorum, while lockstep serves: no failover without quorum, nothing acknowledged lost; quorum back, failover works', opts, async (t) => {
  const { etcd, cluster, primary, backupId } = await lockstepOnEtcd(t);

  let stop!: () => void;
  const load = runWorkload(cluster.clientAddresses(), 4, 12, new Promise<void>((r) => (stop = r)));
  t.after(() => stop()); // a failed assertion must not leave the writers running
  await sleep(500);
  const leader = (await etcd.leader())!;
  await etcd.kill9(leader);
  const second = etcd.members.find((m) => m.child !== null)!.name;
  await etcd.kill9(second);
  await sleep(500);
  assert.equal((await cluster.status(primary.id))?.role, 'primary', 'the primary serves on without etcd: it needs no arbiter until a view changes');

  await cluster.kill9(primary.id);
  await sleep(3000);
  const roles = (await cluster.statuses()).map((s) => s?.role ?? 'down');
  assert.ok(!roles.includes('primary'), `no failover without etcd quorum: ${roles.join(',')}`);
  assert.equal((await cluster.status(backupId))?.role, 'backup', 'the backup waits, it does not guess');
  assert.match(cluster.log(backupId), /"event":"arbiter-unavailable".*"waitingFor":"go-live|"event":"arbiter-unavailable"/);
  const health = (await cluster.status(backupId)) as unknown as { arbiter: { health: string; lastError: string } };
  assert.equal(health.arbiter.health, 'unavailable');

  etcd.spawn(second); // quorum back (2 of 3)
  await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 60_000, `${backupId} to go live once etcd has quorum`);
  await sleep(1000);
  stop();
  const result = await load;
  t.diagnostic(`${result.ok} operations, ${result.failed} failed`);
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
});

test('etcd: a planned switchover under load goes through etcd\'s compare-and-swap; no client error, nothing lost or doubled, linearizable', opts, async (t) => {
  const { etcd, cluster, primary, backupId } = await lockstepOnEtcd(t);
  const finish = startLoad(cluster.clientAddresses(), 4, 23, t);
  await sleep(800);
  const sw = await postSwitchover(cluster.node(primary.id).admin, null);
  assert.equal(sw.ok, true, sw.message);
  assert.deepEqual(sw.view, { epoch: primary.epoch + 1, primary: backupId, backup: primary.id, backups: [primary.id] });
  t.diagnostic(`roles swapped ${sw.ms} ms after the request, new primary live after ${sw.liveMs} ms`);
  // etcd holds the swapped view: the arbiter every node reads says so too.
  const arbiter = openArbiter(etcd.spec(), { cluster: cluster.cluster, timeoutMs: 2000 });
  try {
    const stored = await arbiter.current();
    assert.equal(stored.epoch, primary.epoch + 1);
    assert.equal(stored.primary, backupId);
  } finally {
    await arbiter.close();
  }
  await sleep(800);
  const result = await finish();
  t.diagnostic(`${result.ok} operations, ${result.failed} failed`);
  assert.ok(result.ok > 100, `the workload made progress (${result.ok} ops)`);
  assert.equal(result.failed, 0, 'no client saw an error');
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);
  assert.equal((await cluster.status(primary.id))?.role, 'backup', 'the old primary serves as the backup');
});

test('a backup cut from etcd but not from its primary cannot go live; reconnected, it does', opts, async (t) => {
  const etcd = await EtcdCluster.start({ members: 3 });
  t.after(() => etcd.stop());
  // n2 reaches every etcd member through its own proxy.
  const proxies = await Promise.all(etcd.members.map(async (m) => {
    const p = new TcpProxy({ host: '127.0.0.1', port: m.clientPort });
    await p.start();
    return p;
  }));
  t.after(() => Promise.all(proxies.map((p) => p.stop())));
  const viaProxies = `etcd://${proxies.map((p) => `127.0.0.1:${p.port}`).join(',')}`;
  const cluster = await ProcessCluster.start({ nodes: 2, arbiter: etcd.spec(), nodeExtra: (id) => (id === 'n2' ? { arbiter: viaProxies } : {}) });
  t.after(() => cluster.stop());
  assert.equal((await cluster.status('n1'))?.view.backup, 'n2');

  for (const p of proxies) p.cut = 'both';
  await sleep(300);
  assert.equal((await cluster.status('n1'))?.role, 'primary', 'cut from etcd, n2 is still a backup the primary replicates to');
  await cluster.kill9('n1');
  await sleep(3000);
  assert.equal((await cluster.status('n2'))?.role, 'backup', 'n2 suspects the primary but cannot win the test-and-set: it waits');
  assert.match(cluster.log('n2'), /"event":"arbiter-unavailable"/);

  for (const p of proxies) {
    p.cut = null;
    p.heal();
  }
  await cluster.waitFor(async () => (await cluster.status('n2'))?.role === 'primary', 30_000, 'n2 to go live once it reaches etcd');
});

test('an etcd that demands a user and gets none: the node refuses to start, naming the cause', opts, async (t) => {
  const etcd = await EtcdCluster.start({ members: 1 });
  t.after(() => etcd.stop());
  const { Etcd3 } = await import('etcd3');
  const root = new Etcd3({ hosts: `http://${etcd.endpoints()}` });
  await root.user('root').create('rootpw');
  await root.user('root').addRole('root');
  await root.auth.authEnable();
  root.close();
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const { freePorts } = await import('../src/testing/process-cluster.js');
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-etcd-auth-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const [a, b, c] = await freePorts(3);
  const config = { cluster: 'c', arbiter: etcd.spec(), service: { kind: 'kv', mode: 'rsm' }, nodes: [{ id: 'n1', client: `127.0.0.1:${a}`, peer: `127.0.0.1:${b}`, admin: `127.0.0.1:${c}` }] };
  writeFileSync(join(dir, 'c.json'), JSON.stringify(config));
  const r = await runCli(['node', '--config', join(dir, 'c.json'), '--id', 'n1']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /error E_ARBITER_AUTH: .*etcd demands authentication and no user is configured.*etcd\.authFile/);

  writeFileSync(join(dir, 'auth'), 'root:wrong\n');
  writeFileSync(join(dir, 'c.json'), JSON.stringify({ ...config, etcd: { authFile: 'auth' } }));
  const r2 = await runCli(['node', '--config', join(dir, 'c.json'), '--id', 'n1']);
  assert.equal(r2.code, 2, r2.stderr);
  assert.match(r2.stderr, /error E_ARBITER_AUTH: .*refused the user and password/);
});
