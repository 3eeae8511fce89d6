// Service modules on real clusters (issue 10): real processes, the RESP client port, kill -9.
// The three examples keep their invariants across failover; the digest check fail-stops a
// backup whose state diverged where no reply shows it, and the primary recruits a fresh one; a
// command that loops forever gets an error reply and leaves primary and backup equal; a module
// that calls Math.random() while loading is refused before the node starts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ProcessCluster, freePorts } from '../src/testing/process-cluster.js';
import { Redis } from 'ioredis';
import { LockstepClient, ReplyError } from '../src/client/index.js';
import { freeBasePort, spawnCli } from '../src/testing/cli-child.js';
import { checkLinearizable, type ModelOp } from '../src/testing/model-check.js';
import { BANK_ACCOUNTS, openAccounts, transferOf } from '../src/testing/bank-load.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const example = (p: string): string => fileURLToPath(new URL(`../../examples/services/${p}`, import.meta.url));
const fixture = (p: string): string => fileURLToPath(new URL(`../../test/fixtures/services/${p}`, import.meta.url));
const bin = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

async function moduleCluster(module: string, mode: 'rsm' | 'state-transfer', extra: Record<string, unknown> = {}, nodes = 2): Promise<ProcessCluster> {
  return ProcessCluster.start({ nodes, service: { kind: 'module', module, mode, ...extra } });
}

function client(c: ProcessCluster, id?: string): LockstepClient {
  return new LockstepClient({ nodes: c.clientAddresses(), commandTimeoutMs: 60_000, ...(id ? { clientId: id } : {}) });
}

/** Wait for primary and backup to be quiet and equal; returns the digest. */
async function settled(c: ProcessCluster): Promise<string> {
  let digest = '';
  await c.waitFor(async () => {
    const p = await c.primary();
    if (!p?.view.backup) return false;
    const b = await c.status(p.view.backup);
    digest = String(p.digest);
    return b?.role === 'backup' && p.digest !== undefined && p.digest === b.digest && p.logIndex === b.logIndex;
  }, 30_000, 'primary and backup to hold the same state');
  return digest;
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`bank: concurrent transfers across kill -9 of the primary run exactly once and conserve the total (${mode})`, async (t) => {
    const cluster = await moduleCluster(example('bank/bank.js'), mode);
    t.after(() => cluster.stop());
    const setup = client(cluster);
    t.after(() => setup.close());
    const names = BANK_ACCOUNTS;
    const balances = await openAccounts(setup, names, 1000);
    const primary = (await cluster.primary())!;
    const backupId = primary.view.backup!;
    let stop = false;
    let done = 0;
    let refused = 0;
    // Every call and reply, for the linearizability check (balances and transfers).
    const history: ModelOp<string[], string>[] = [];
    const worker = async (w: number): Promise<void> => {
      const c = client(cluster, `worker-${w}`);
      try {
        for (let i = 0; !stop; i++) {
          const tr = transferOf(names, w, i, 300);
          if (tr === null) continue;
          const { from, to, cents } = tr;
          const input = i % 3 === 2 ? ['BALANCE', to] : ['TRANSFER', from, to, String(cents)];
          const call = performance.now();
          try {
            const out = await c.call(...input);
            history.push({ call, ret: performance.now(), input, output: String(out) });
            if (input[0] === 'BALANCE') continue;
            // Exactly once: the reply is the payer's balance right after this one transfer.
            balances.set(from, balances.get(from)! - cents);
            balances.set(to, balances.get(to)! + cents);
            assert.equal(typeof out, 'number');
            done++;
          } catch (e) {
            assert.ok(e instanceof ReplyError && /^NOFUNDS/.test(e.message), String(e));
            history.push({ call, ret: performance.now(), input, output: 'NOFUNDS' });
            refused++;
          }
        }
      } finally {
        c.close();
      }
    };
    const workers = [0, 1, 2, 3].map(worker);
    await sleep(700);
    await cluster.kill9(primary.id);
    await cluster.waitFor(async () => (await cluster.status(backupId))?.role === 'primary', 30_000, `${backupId} to go live`);
    await sleep(700);
    stop = true;
    await Promise.all(workers);
    t.diagnostic(`${done} transfers, ${refused} refused for funds`);
    assert.ok(done > 20, `progress (${done})`);
    assert.deepEqual(await setup.call('AUDIT'), [5000, 5000]);
    // Every acknowledged transfer took effect once, no other did: the balances say so.
    for (const n of names) assert.equal(await setup.call('BALANCE', n), balances.get(n), n);
    // Linearizable: one order of every call, consistent with real time, explains every reply.
    const bank = (state: Map<string, number>, [op, a, b, n]: string[]): { state: Map<string, number>; output: string } => {
      if (op === 'BALANCE') return { state, output: String(state.get(a!)) };
      const cents = Number(n);
      if (state.get(a!)! < cents) return { state, output: 'NOFUNDS' };
      const next = new Map(state);
      next.set(a!, state.get(a!)! - cents);
      next.set(b!, state.get(b!)! + cents);
      return { state: next, output: String(next.get(a!)) };
    };
    const lin = checkLinearizable(history, new Map(names.map((n) => [n, 1000])), bank, (x, y) => x === y, (st) => [...st.values()].join(','));
    t.diagnostic(`${history.length} operations checked for linearizability, ${lin.explored} configurations`);
    assert.ok(lin.ok, `not linearizable; longest linearizable prefix ${lin.longestPrefix?.length} of ${history.length}`);
  });
}

test('jobs: each job is claimed by exactly one worker across kill -9 of the primary', async (t) => {
  const cluster = await moduleCluster(example('jobs/jobs.js'), 'rsm');
  t.after(() => cluster.stop());
  const setup = client(cluster);
  t.after(() => setup.close());
  const total = 300;
  for (let i = 0; i < total; i++) await setup.call('ENQUEUE', `job-${i}`);
  const primary = (await cluster.primary())!;
  const claimedBy = new Map<string, string>();
  const worker = async (name: string): Promise<void> => {
    const c = client(cluster, name);
    try {
      for (;;) {
        const got = (await c.call('CLAIM', name)) as [string, string] | null;
        if (got === null) return;
        assert.ok(!claimedBy.has(got[0]), `job ${got[0]} claimed by ${claimedBy.get(got[0])} and ${name}`);
        claimedBy.set(got[0], name);
        assert.equal(await c.call('ACK', got[0], name), 1);
        await sleep(3);
      }
    } finally {
      c.close();
    }
  };
  const workers = ['w1', 'w2', 'w3'].map(worker);
  await sleep(300);
  await cluster.kill9(primary.id);
  await Promise.all(workers);
  assert.equal(claimedBy.size, total, 'every job delivered');
  assert.deepEqual(await setup.call('STATS'), ['pending', 0, 'claimed', 0, 'next', total + 1]);
});

test('locks: fencing tokens only grow, and one holder at a time, across kill -9 of the primary', async (t) => {
  const cluster = await moduleCluster(example('locks/locks.js'), 'state-transfer');
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  let now = 1000;
  const grants: { owner: string; token: number; at: number }[] = [];
  let stop = false;
  const contender = async (owner: string): Promise<void> => {
    const c = client(cluster, owner);
    try {
      while (!stop) {
        const at = ++now;
        try {
          const token = await c.call<number>('ACQUIRE', 'L', owner, at, 50);
          grants.push({ owner, token, at });
          const [holder, held] = (await c.call('HOLDER', 'L')) as [string, number, number];
          assert.equal(holder, owner);
          assert.equal(held, token);
          assert.equal(await c.call('RELEASE', 'L', owner, token), 1);
        } catch (e) {
          assert.ok(e instanceof ReplyError && /^HELD L by /.test(e.message), String(e));
          await sleep(2);
        }
      }
    } finally {
      c.close();
    }
  };
  const all = ['a', 'b', 'c'].map(contender);
  await sleep(600);
  await cluster.kill9(primary.id);
  await sleep(1500);
  stop = true;
  await Promise.all(all);
  assert.ok(grants.length > 10, `progress (${grants.length})`);
  const tokens = grants.map((g) => g.token).sort((x, y) => x - y);
  assert.equal(new Set(tokens).size, tokens.length, 'no token granted twice');
  const c = client(cluster);
  t.after(() => c.close());
  assert.equal(await c.call('HOLDER', 'L'), null);
  // A stale token cannot release or renew.
  const token = (await c.call('ACQUIRE', 'L', 'z', now + 1, 10)) as number;
  assert.ok(token > tokens.at(-1)!);
  assert.equal(await c.call('RELEASE', 'L', 'z', tokens[0]!), 0);
  await assert.rejects(c.call('RENEW', 'L', 'z', token, now + 100, 10), /LOST L/);
});

test('digest check: a backup whose state diverged unseen fail-stops naming the entry, and the primary recruits a spare', async (t) => {
  const cluster = await moduleCluster(fixture('hidden-counter.js'), 'rsm', {}, 3);
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId)!;
  const c = client(cluster);
  t.after(() => c.close());
  assert.equal(await c.call('SET', 1), 'OK');
  assert.equal(await c.call('SET', 2), 'OK');
  await settled(cluster);
  assert.equal(await c.call('GET'), 2); // bumps the hidden counter, on the primary only
  assert.equal(await c.call('SET', 3), 'OK'); // the backup copies a different counter
  await cluster.waitFor(() => cluster.node(backupId).child === null || cluster.node(backupId).child!.exitCode !== null, 30_000, `${backupId} to fail-stop`);
  const log = cluster.log(backupId);
  assert.match(log, /E_SERVICE_DIVERGENCE: the service's state differs from the primary's at log index \d+/);
  assert.match(log, /so this entry diverged/);
  await cluster.waitFor(async () => (await cluster.status(spareId))?.role === 'backup', 30_000, `${spareId} recruited`);
  assert.equal(await c.call('GET'), 3);
});

test('a command that loops forever gets an error reply; the cluster carries on with equal replicas', async (t) => {
  const cluster = await moduleCluster(fixture('spin.js'), 'rsm', { timeoutMs: 300 });
  t.after(() => cluster.stop());
  const c = client(cluster);
  t.after(() => c.close());
  assert.equal(await c.call('INCR'), 1);
  await assert.rejects(c.call('SPIN'), /ERR internal error running LOCKSTEP\.EXEC: SPIN was stopped: Script execution timed out after 300ms; it had no effect$/);
  assert.equal(await c.call('INCR'), 2);
  await settled(cluster);
});

test('a module that calls Math.random() while loading: the node refuses to start, naming the call', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-svc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const [p1, p2, p3] = await freePorts(3);
  const path = join(dir, 'c.json');
  writeFileSync(path, JSON.stringify({
    cluster: 'c', arbiter: 'file:a', service: { kind: 'module', module: fixture('random-at-load.js'), mode: 'rsm' },
    nodes: [{ id: 'n1', peer: `127.0.0.1:${p1}`, client: `127.0.0.1:${p2}`, admin: `127.0.0.1:${p3}` }],
  }));
  const run = (args: string[]): Promise<{ code: number; stderr: string }> => new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 30_000 }, (err, _out, stderr) => resolve({ code: err === null ? 0 : Number(err.code), stderr }));
  });
  assert.equal((await run(['init', '--config', path])).code, 0);
  const r = await run(['node', '--config', path, '--id', 'n1']);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /E_SERVICE_MODULE: service module .*random-at-load\.js: loading it failed: Math\.random\(\) is not available/);
});

test('lockstep cluster --service: the bank over ioredis call, across kill -9 of the primary node', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-svc-cluster-'));
  const basePort = await freeBasePort();
  const { child, output, exited } = spawnCli(t, ['cluster', '--dir', dir, '--base-port', String(basePort), '--service', example('bank/bank.js')]);
  t.after(async () => rmSync(dir, { recursive: true, force: true }));
  const admin = (i: number): string => `http://127.0.0.1:${basePort + 200 + i}/status`;
  const status = async (i: number): Promise<{ role?: string; pid?: number; digest?: string } | null> => {
    try {
      return (await (await fetch(admin(i))).json()) as { role?: string; pid?: number };
    } catch {
      return null;
    }
  };
  const primaryIndex = async (): Promise<number> => {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const all = await Promise.all([1, 2, 3].map(status));
      const p = all.findIndex((s) => s?.role === 'primary');
      if (p >= 0 && all.some((s) => s?.role === 'backup')) return p + 1;
      await sleep(100);
    }
    throw new Error(`no primary with a backup within 30 s:\n${output()}`);
  };
  const first = await primaryIndex();
  assert.match(output(), /rsm service .*bank\.js/);
  const redis = new Redis({ port: basePort + first, host: '127.0.0.1', maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
  await redis.connect();
  assert.equal(await redis.call('OPEN', 'ann', '100'), 'OK');
  assert.equal(await redis.call('OPEN', 'bob', '0'), 'OK');
  assert.equal(await redis.call('TRANSFER', 'ann', 'bob', '30'), 70);
  await assert.rejects(redis.call('TRANSFER', 'ann', 'bob', '500'), /NOFUNDS ann has 70, needs 500/);
  redis.disconnect();
  const pid = (await status(first))!.pid!;
  process.kill(pid, 'SIGKILL');
  const c = new LockstepClient({ nodes: [1, 2, 3].map((i) => `127.0.0.1:${basePort + i}`), commandTimeoutMs: 60_000 });
  try {
    assert.equal(await c.call('TRANSFER', 'bob', 'ann', 5), 25);
    assert.deepEqual(await c.call('AUDIT'), [100, 100]);
    assert.equal(await c.call('BALANCE', 'ann'), 75);
  } finally {
    c.close();
  }
  child.kill('SIGINT');
  assert.equal(await exited, 0);
});
