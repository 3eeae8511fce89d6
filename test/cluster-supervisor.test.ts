// `lockstep cluster` as a careless operator meets it: Ctrl-C (SIGINT to the whole process
// group, as a terminal sends it) stops every node on its own with code 0, fast; a second
// supervisor in the same directory is refused and the first cluster keeps its data; views a
// previous run left are kept, not deleted; a node that cannot start (its port is taken) is
// not restarted forever and the supervisor says why.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freeBasePort, spawnCli, type CliChild } from '../src/testing/cli-child.js';
import { LockstepClient } from '../src/client/index.js';

async function waitFor(what: string, cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The status block after the banner shows a primary, a backup and three pids. */
function ready(c: CliChild): boolean {
  const after = c.output().split('kill -9')[1] ?? '';
  return /primary/.test(after) && /backup/.test(after) && new Set(after.match(/pid \d+/g)).size >= 3;
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-supervisor-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('Ctrl-C stops the cluster fast, every node exiting on its own with code 0', async (t) => {
  const dir = tempDir(t);
  const base = await freeBasePort();
  const c = spawnCli(t, ['cluster', '--dir', dir, '--base-port', String(base)], { group: true });
  await waitFor('a primary and a backup', () => ready(c));
  const t0 = performance.now();
  process.kill(-c.child.pid!, 'SIGINT'); // the terminal's Ctrl-C: the supervisor and its nodes
  assert.equal(await c.exited, 0, c.errors());
  const ms = performance.now() - t0;
  const stopped = [...c.output().matchAll(/(n\d) \(pid \d+\) stopped \((.*?)\)/g)].map((m) => [m[1], m[2]]);
  assert.deepEqual(stopped.map(([, how]) => how), ['code 0', 'code 0', 'code 0'], c.output());
  // The supervisor SIGKILLs a node after 3 s: well under that means every node exited by itself.
  assert.ok(ms < 2500, `Ctrl-C took ${Math.round(ms)} ms`);
  t.diagnostic(`SIGINT to the last exit: ${Math.round(ms)} ms`);
  assert.equal(existsSync(join(dir, 'supervisor.lock')), false, 'the lock is released');
});

test('a second supervisor in the same directory is refused and the running cluster keeps its data', async (t) => {
  const dir = tempDir(t);
  const base = await freeBasePort();
  const first = spawnCli(t, ['cluster', '--dir', dir, '--base-port', String(base)]);
  await waitFor('a primary and a backup', () => ready(first));
  const db = new LockstepClient({ nodes: [1, 2, 3].map((i) => `127.0.0.1:${base + i}`) });
  t.after(() => db.close());
  assert.equal(await db.set('precious', 'v1'), 'OK');

  const second = spawnCli(t, ['cluster', '--dir', dir, '--base-port', String(base + 500)]);
  assert.equal(await second.exited, 2);
  assert.match(second.errors(), new RegExp(`error E_DIR_LOCKED: .*pid ${first.child.pid}`));
  const run = spawnCli(t, ['run', '--dir', dir, 'examples/clockrand/clockrand.wasm', '1']);
  assert.equal(await run.exited, 2);
  assert.match(run.errors(), /E_DIR_LOCKED/);

  assert.equal(await db.get('precious'), 'v1');
  first.child.kill('SIGINT');
  assert.equal(await first.exited, 0);

  // The next run in that directory starts afresh, and the old views are kept, not deleted.
  const third = spawnCli(t, ['cluster', '--dir', dir, '--base-port', String(base)]);
  await waitFor('a primary and a backup', () => ready(third));
  assert.match(third.output(), /the views of the previous run in .* are kept in .*arbiter\.old-/);
  const old = readdirSync(dir).filter((n) => n.startsWith('arbiter.old-'));
  assert.equal(old.length, 1);
  assert.ok(readdirSync(join(dir, old[0]!)).some((n) => /^view-\d+$/.test(n)));
  third.child.kill('SIGINT');
  assert.equal(await third.exited, 0);
});

test('a node whose port is taken is not restarted forever, and the supervisor shows its error', async (t) => {
  const dir = tempDir(t);
  const base = await freeBasePort();
  const squatter = net.createServer();
  await new Promise<void>((r) => squatter.listen(base + 2, '127.0.0.1', r));
  t.after(() => squatter.close());
  const c = spawnCli(t, ['cluster', '--dir', dir, '--base-port', String(base)]);
  await waitFor('n2 to fail', () => /n2 \(pid \d+\) exited/.test(c.output()));
  assert.match(c.output(), /n2 \(pid \d+\) exited \(code 2\): error E_LISTEN: .*EADDRINUSE.*; not starting it again/);
  // The other two still form a cluster.
  await waitFor('a primary and a backup', () => ready(c) || /primary[\s\S]*backup|backup[\s\S]*primary/.test(c.output().split('not starting it again')[1] ?? ''));
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(c.output().match(/n2 \(pid \d+\) exited/g)?.length, 1, 'n2 was not started again');
  c.child.kill('SIGINT');
  assert.equal(await c.exited, 0);
});
