// Issue 14 item 10, regression: split brain from a misconfigured file arbiter. Reported: two
// copies of one config in two directories, each with `"arbiter": "file:arb"` (relative, so
// resolved against each copy's directory): two arbiters. Both nodes became primary and took
// different writes, with no warning; the missing arbiter directory was created silently.
//
// Real processes, real files, loopback only. Now: a node refuses to start on an arbiter that
// `lockstep init` never created (and creates nothing); if the operator inits the second copy
// too, the nodes carry their arbiters' ids in the handshake, refuse each other loudly, and a
// starting node that meets a peer on another arbiter refuses to start, so two primaries with
// different data never exist.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePorts } from '../src/testing/process-cluster.js';
import { runCli, spawnCli, type CliChild } from '../src/testing/cli-child.js';
import { fetchStatus, type NodeStatus } from '../src/cli/admin-client.js';
import { LockstepClient } from '../src/client/index.js';

interface Setup {
  readonly cfgA: string;
  readonly cfgB: string;
  readonly arbA: string;
  readonly arbB: string;
  readonly admin: Record<'n1' | 'n2', { host: string; port: number }>;
  readonly client: Record<'n1' | 'n2', string>;
}

/** Two identical config files in two directories, as in the report. */
async function twoCopies(t: TestContext, secret: boolean): Promise<Setup> {
  const root = mkdtempSync(join(tmpdir(), 'lockstep-issue14-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const [c1, p1, a1, c2, p2, a2] = await freePorts(6);
  const config = {
    cluster: 'shop',
    arbiter: 'file:arb',
    ...(secret ? { secretFile: 'secret' } : {}),
    service: { kind: 'kv', mode: 'rsm' },
    heartbeatMs: 50,
    failureTimeoutMs: 500,
    nodes: [
      { id: 'n1', client: `127.0.0.1:${c1}`, peer: `127.0.0.1:${p1}`, admin: `127.0.0.1:${a1}` },
      { id: 'n2', client: `127.0.0.1:${c2}`, peer: `127.0.0.1:${p2}`, admin: `127.0.0.1:${a2}` },
    ],
  };
  const key = randomBytes(32).toString('hex');
  const cfg = (name: string): string => {
    const dir = join(root, name);
    mkdirSync(dir);
    if (secret) writeFileSync(join(dir, 'secret'), key, { mode: 0o600 });
    writeFileSync(join(dir, 'cluster.json'), JSON.stringify(config, null, 2));
    return join(dir, 'cluster.json');
  };
  return {
    cfgA: cfg('a'),
    cfgB: cfg('b'),
    arbA: join(root, 'a', 'arb'),
    arbB: join(root, 'b', 'arb'),
    admin: { n1: { host: '127.0.0.1', port: a1! }, n2: { host: '127.0.0.1', port: a2! } },
    client: { n1: `127.0.0.1:${c1}`, n2: `127.0.0.1:${c2}` },
  };
}

async function waitFor(pred: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const views = (arb: string): string[] => (existsSync(arb) ? readdirSync(arb).filter((n) => /^view-\d+$/.test(n)) : []);
const arbiterId = (arb: string): string => (JSON.parse(readFileSync(join(arb, 'arbiter.json'), 'utf8')) as { id: string }).id;
const logRecords = (c: CliChild): Record<string, unknown>[] =>
  c.output().split('\n').flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });

test('issue 14: two config copies with a relative file:arb never give two primaries', async (t) => {
  const s = await twoCopies(t, true);
  const TWO = /two arbiters: split brain risk, check the arbiter path in every node's config/;

  const help = await runCli(['--help']);
  assert.match(help.stdout, /^ {2}init +create the cluster's arbiter, once, before its nodes start: lockstep init --config FILE$/m);

  // No arbiter yet: the node refuses to start, says to run lockstep init, and creates nothing.
  const early = await runCli(['node', '--config', s.cfgA, '--id', 'n1']);
  assert.equal(early.code, 2, early.stderr);
  assert.match(early.stderr, /^error E_ARBITER_UNAVAILABLE: arbiter file:\S+\/a\/arb is not initialized \(the directory \S+ does not exist\): run `lockstep init --config FILE`/m);
  assert.equal(existsSync(s.arbA), false, 'the arbiter directory is not created on first use');

  // lockstep init, once; again it changes nothing and says so.
  const init = await runCli(['init', '--config', s.cfgA]);
  assert.equal(init.code, 0, init.stderr);
  const idA = arbiterId(s.arbA);
  assert.match(init.stdout, new RegExp(`^initialized arbiter file:\\S+/a/arb \\(id ${idA}, cluster shop, created `));
  const again = await runCli(['init', '--config', s.cfgA]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, new RegExp(`already initialized for this cluster \\(id ${idA}, `));
  assert.equal(arbiterId(s.arbA), idA);

  // Another cluster's config naming the same directory: init refuses it.
  const otherCfg = join(s.cfgA, '..', 'other.json');
  writeFileSync(otherCfg, readFileSync(s.cfgA, 'utf8').replace('"shop"', '"other"'));
  const other = await runCli(['init', '--config', otherCfg]);
  assert.equal(other.code, 2);
  assert.match(other.stderr, /error E_ARBITER_CLUSTER: .*belongs to cluster "shop", not "other"/);

  // n1 from copy A: primary, takes a write.
  const n1 = spawnCli(t, ['node', '--config', s.cfgA, '--id', 'n1']);
  await waitFor(async () => (await fetchStatus(s.admin.n1, 1000))?.role === 'primary', 30_000, 'n1 to become primary');
  const client = new LockstepClient({ nodes: [s.client.n1], commandTimeoutMs: 10_000 });
  t.after(() => client.close());
  await client.set('order', 'from-a');
  const before = (await fetchStatus(s.admin.n1, 1000))!;

  // n2 from copy B, as reported: its arbiter directory does not exist. Refused, nothing created.
  const b1 = await runCli(['node', '--config', s.cfgB, '--id', 'n2']);
  assert.equal(b1.code, 2);
  assert.match(b1.stderr, /E_ARBITER_UNAVAILABLE: arbiter file:\S+\/b\/arb is not initialized.*lockstep init/);
  assert.equal(existsSync(s.arbB), false);

  // The operator inits copy B too: a second arbiter. n2 meets n1, on the other arbiter, and
  // refuses to start (exit 2) naming both; n1 warns, naming both, and carries on as it was.
  assert.equal((await runCli(['init', '--config', s.cfgB])).code, 0);
  const idB = arbiterId(s.arbB);
  assert.notEqual(idB, idA);
  const n2 = spawnCli(t, ['node', '--config', s.cfgB, '--id', 'n2']);
  const code = await Promise.race([n2.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 20_000))]);
  assert.equal(code, 2, `n2 refuses to start; stderr: ${n2.errors()}`);
  assert.match(n2.errors(), new RegExp(`error E_ARBITER_MISMATCH: peer n1 uses arbiter ${idA}, this node \\(n2\\) uses arbiter ${idB} at file:\\S+/b/arb: `));
  assert.match(n2.errors(), TWO);
  assert.deepEqual(views(s.arbB), [], 'n2 never took a view on its arbiter: it was never primary');
  const warned = logRecords(n2).find((r) => r.event === 'two-arbiters');
  assert.ok(warned, 'n2 logged two-arbiters');
  assert.equal(warned.level, 'warn');
  await waitFor(() => logRecords(n1).some((r) => r.event === 'two-arbiters'), 10_000, 'n1 to warn');
  const w1 = logRecords(n1).find((r) => r.event === 'two-arbiters')!;
  assert.deepEqual([w1.level, w1.peer, w1.arbiterId, w1.peerArbiterId], ['warn', 'n2', idA, idB]);
  assert.match(String(w1.meaning), TWO);

  const after = (await fetchStatus(s.admin.n1, 1000))!;
  assert.deepEqual([after.role, after.epoch], [before.role, before.epoch], 'n1 is still the one primary, in the same epoch');
  assert.equal(await client.get('order'), 'from-a');
  assert.equal(n1.child.exitCode, null, 'n1 still runs');
});

for (const secret of [true, false]) {
  test(`issue 14: both copies initialized, both nodes started at once: at most one ever serves (${secret ? 'with' : 'without'} a secret)`, async (t) => {
    const s = await twoCopies(t, secret);
    for (const cfg of [s.cfgA, s.cfgB]) assert.equal((await runCli(['init', '--config', cfg])).code, 0);
    const nodes = { n1: spawnCli(t, ['node', '--config', s.cfgA, '--id', 'n1']), n2: spawnCli(t, ['node', '--config', s.cfgB, '--id', 'n2']) };
    const primaries = new Set<string>();
    const end = Date.now() + 8000;
    while (Date.now() < end) {
      const st = await Promise.all((['n1', 'n2'] as const).map((id) => fetchStatus(s.admin[id], 500)));
      const now = st.filter((x): x is NodeStatus => x?.role === 'primary').map((x) => x.id);
      assert.ok(now.length <= 1, `two primaries at once: ${now.join(', ')}`);
      for (const id of now) primaries.add(id);
      if ([nodes.n1, nodes.n2].some((c) => c.child.exitCode !== null)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    // Let the survivor (if any) run on, then look again.
    await new Promise((r) => setTimeout(r, 1500));
    const refused = (['n1', 'n2'] as const).filter((id) => nodes[id].child.exitCode === 2 && /E_ARBITER_MISMATCH/.test(nodes[id].errors()));
    assert.ok(refused.length >= 1, `at least one node refused to start: ${JSON.stringify({ n1: nodes.n1.errors() + nodes.n1.output(), n2: nodes.n2.errors() + nodes.n2.output() })}`);
    const running = (['n1', 'n2'] as const).filter((id) => nodes[id].child.exitCode === null);
    assert.ok(running.length <= 1);
    assert.ok(primaries.size <= 1, `primaries seen: ${[...primaries].join(', ')}`);
    assert.ok(views(s.arbA).length === 0 || views(s.arbB).length === 0, 'at most one arbiter ever had a view');
    t.diagnostic(`refused: ${refused.join(', ')}; running: ${running.join(', ') || 'none'}; primary seen: ${[...primaries].join(', ') || 'none'}`);
  });
}
