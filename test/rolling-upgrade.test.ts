// A rolling upgrade on real processes (issue 11 item 2): a 3-node cluster runs the previous
// release (the last one that speaks peer protocols 6 and 7, built from git into a temp
// directory), and every node is restarted on this build one after the other, as DEPLOY.md tells
// an operator to: the spare, then the backup, then a switchover to the upgraded backup, then
// the old primary. lockstep/client writers run throughout: no error, nothing acknowledged lost
// or doubled, a linearizable history, and at the end every connection runs protocol 8.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MAIN, ProcessCluster } from '../src/testing/process-cluster.js';
import { runWorkload, workloadProblems, type WorkloadResult } from '../src/testing/workload.js';
import { postSwitchover } from '../src/cli/switchover.js';
import { PROTOCOL_VERSION, PROTOCOL_VERSION_MIN } from '../src/net/peer-codec.js';
import type { NodeStatus } from '../src/cli/admin-client.js';

/**
 * The previous release: the last that speaks protocol 6 and 7 (before frames carried the commit
 * index and log terms, protocol 8). This build speaks 7 and 8, so the two talk 7.
 */
const PREVIOUS_RELEASE = 'c4c1cc412540d6e898a4b41c4a30c0fba8dedb4c';
const REPO = fileURLToPath(new URL('../..', import.meta.url));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Why the previous release cannot be built here (no git, or a clone without that commit), or null. */
function cannotBuild(): string | null {
  try {
    execFileSync('git', ['-C', REPO, 'cat-file', '-e', `${PREVIOUS_RELEASE}^{commit}`], { stdio: 'ignore' });
    return null;
  } catch {
    return `needs git and commit ${PREVIOUS_RELEASE.slice(0, 12)} (the previous release) in ${REPO}: a shallow clone or no git`;
  }
}

/** Build the previous release's src/ into `dir` (git archive, then tsc with this checkout's node_modules); its cli/main.js. */
function buildPrevious(dir: string): string {
  execFileSync('sh', ['-c', `git -C "$1" archive "$2" | tar -x -C "$3"`, 'sh', REPO, PREVIOUS_RELEASE, dir]);
  symlinkSync(join(REPO, 'node_modules'), join(dir, 'node_modules'));
  writeFileSync(join(dir, 'tsconfig.release.json'), JSON.stringify({ extends: './tsconfig.json', include: ['src/**/*.ts'] }));
  execFileSync(process.execPath, [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.release.json')], { stdio: 'pipe' });
  const main = join(dir, 'dist', 'src', 'cli', 'main.js');
  assert.ok(existsSync(main), `the previous release built: ${main}`);
  return main;
}

/** Whether a node's /status comes from this build (the previous release has no `protocol`). */
const upgraded = (s: NodeStatus | null): boolean => s?.protocol?.newest === PROTOCOL_VERSION;

test('rolling upgrade from the previous release under lockstep/client load: spare, backup, switchover, old primary; no error, nothing lost', { skip: cannotBuild() ?? false }, async (t) => {
  const build = mkdtempSync(join(tmpdir(), 'lockstep-previous-'));
  t.after(() => rmSync(build, { recursive: true, force: true }));
  const t0 = Date.now();
  const oldMain = buildPrevious(build);
  t.diagnostic(`previous release ${PREVIOUS_RELEASE.slice(0, 12)} built in ${Date.now() - t0} ms`);

  const cluster = await ProcessCluster.start({ main: oldMain, failureTimeoutMs: 500 });
  t.after(() => cluster.stop());
  const first = (await cluster.primary())!;
  const P = first.id;
  const B = first.view.backup!;
  assert.ok(B, 'a backup');
  const S = cluster.nodes.map((n) => n.id).find((id) => id !== P && id !== B)!;
  for (const s of await cluster.statuses()) assert.equal(s?.protocol?.newest, PROTOCOL_VERSION_MIN, 'every node runs the previous release');

  let stop!: () => void;
  const load: Promise<WorkloadResult> = runWorkload(cluster.clientAddresses(), 4, 23, new Promise<void>((r) => (stop = r)));
  t.after(() => stop());
  await sleep(500);

  // Restart node `id` on this build (SIGTERM, as an operator would) and wait until it answers.
  const upgrade = async (id: string): Promise<void> => {
    await cluster.stopNode(id);
    cluster.spawn(id, MAIN);
    await cluster.waitFor(async () => upgraded(await cluster.status(id)), 30_000, `${id} to answer on this build`).catch((e: Error) => {
      throw new Error(`${e.message}; its log ends:\n${cluster.log(id).split('\n').slice(-15).join('\n')}`);
    });
  };
  // Until the primary `p` has a backup again, caught up.
  const backupAgain = (p: string, what: string): Promise<void> =>
    cluster.waitFor(async () => {
      const s = await cluster.status(p);
      if (s?.role !== 'primary' || s.view.backup === null) return false;
      const b = await cluster.status(s.view.backup);
      return b?.role === 'backup';
    }, 30_000, what);

  // 1. The spare.
  await upgrade(S);
  // 2. The backup: the primary drops it and recruits a node of either release.
  await upgrade(B);
  await backupAgain(P, `${P} to have a backup again after ${B}'s restart`);
  const mid = (await cluster.status(P))!;
  assert.ok(upgraded(await cluster.status(mid.view.backup!)), 'the backup runs this build (both non-primaries do)');
  // The upgraded backup talks the old primary's version.
  const newBackup = (await cluster.status(mid.view.backup!))!;
  assert.equal(newBackup.protocol!.peers[P]!.outbound, PROTOCOL_VERSION_MIN, `${newBackup.id} talks protocol ${PROTOCOL_VERSION_MIN} to ${P}`);
  assert.equal(newBackup.protocol!.peers[P]!.speaks, PROTOCOL_VERSION_MIN);
  await sleep(300);
  // 3. Switchover: the upgraded backup becomes the primary; the old primary (still the previous release) its backup.
  const sw = await postSwitchover(cluster.node(P).admin, null);
  assert.equal(sw.ok, true, sw.message);
  t.diagnostic(`switchover ${P} -> ${mid.view.backup}: roles swapped after ${sw.ms} ms`);
  const Q = mid.view.backup!;
  await backupAgain(Q, `${Q} to serve with ${P} as its backup`);
  await sleep(300);
  // 4. The old primary.
  await upgrade(P);
  await backupAgain(Q, `${Q} to have a backup again after ${P}'s restart`);
  await sleep(500);

  const result = await (stop(), load);
  t.diagnostic(`${result.ok} operations, ${result.failed} failed`);
  assert.ok(result.ok > 100, `the workload made progress (${result.ok} ops)`);
  assert.equal(result.failed, 0, 'no client saw an error');
  assert.deepEqual(await workloadProblems(cluster.clientAddresses(), result), []);

  // Every node runs this build, and every connection between them protocol 7.
  let seen = '';
  await cluster.waitFor(async () => {
    const all = await cluster.statuses();
    seen = JSON.stringify(all.map((s) => [s?.id, s?.role, s?.protocol?.peers]));
    // A connection not open (null) is fine: a spare need not dial anyone.
    const newest = (v: number | null): boolean => v === null || v === PROTOCOL_VERSION;
    return all.every((s) => upgraded(s) && Object.values(s!.protocol!.peers).every((v) => newest(v.outbound) && newest(v.inbound) && newest(v.speaks)));
  }, 10_000, 'every peer connection to run the newest protocol').catch((e: Error) => {
    const logs = cluster.nodes.map((n) => `${n.id}:\n${cluster.log(n.id).split('\n').filter((l) => /peer-(connected|accepted|version-up|refused|disconnected)/.test(l)).slice(-12).join('\n')}`);
    throw new Error(`${e.message}; last seen ${seen}\n${logs.join('\n')}`);
  });
  const p = (await cluster.primary())!;
  assert.equal(p.protocol!.peers[p.view.backup!]!.outbound, PROTOCOL_VERSION, 'primary to backup runs the newest protocol');
  await cluster.waitFor(async () => {
    const p = await cluster.primary();
    if (p === null || p.view.backup === null) return false;
    const b = await cluster.status(p.view.backup);
    return p.lag === 0 && b !== null && b.logIndex === p.logIndex && b.digest === p.digest;
  }, 10_000, 'the backup to hold the primary\'s state (same index, same digest)');
});
