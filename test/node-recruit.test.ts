// Issue 16 on real processes: a recruit abandoned in handover must be recruited again. A
// recruit whose acks stop reaching the primary right after it was told the pending view (as
// for a recruit whose event loop stalls then) is abandoned; the primary fences that view
// off, the recruit's go-live from it is refused for good, it starts over as an empty spare,
// and once the link is back it becomes the backup. No acknowledged write is lost meanwhile.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { runWorkload, workloadProblems } from '../src/testing/workload.js';
import { LockstepClient } from '../src/client/index.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A node's log records so far (a line still being written is skipped). */
function logEvents(cluster: ProcessCluster, id: string): Record<string, unknown>[] {
  const records: Record<string, unknown>[] = [];
  for (const line of cluster.log(id).split('\n')) {
    try {
      records.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not a whole JSON line
    }
  }
  return records;
}

test('a recruit abandoned in handover is fenced off and recruited again; a backup in the end, nothing acknowledged lost', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3, peerProxies: true, failureTimeoutMs: 300 });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId)!;
  const live = cluster.nodes.filter((n) => n.id !== backupId).map((n) => `${n.client.host}:${n.client.port}`);

  // Some state first, under a concurrent load.
  let stopLoad!: () => void;
  const load = runWorkload(cluster.clientAddresses(), 3, 16, new Promise<void>((r) => (stopLoad = r)));
  t.after(() => stopLoad());
  await sleep(500);
  stopLoad();
  const loaded = await load;

  // Everything the spare sends the primary now arrives 1.5 s late (five failure timeouts),
  // and the backup dies: the primary recruits the spare through the slow link.
  const slow = cluster.peerProxy(primary.id);
  slow.delayToTargetMs = 1500;
  slow.reset();
  await cluster.kill9(backupId);

  // A slow trickle of appends throughout (slow enough for the recruit to reach handover).
  const client = new LockstepClient({ nodes: live, attemptTimeoutMs: 3000, commandTimeoutMs: 60_000 });
  t.after(() => client.close());
  const acked: string[] = [];
  let trickling = true;
  t.after(() => (trickling = false));
  const trickle = (async () => {
    for (let i = 0; trickling; i++) {
      await client.append('trickle', `t${i};`);
      acked.push(`t${i};`);
      await sleep(100);
    }
  })().catch((e: unknown) => {
    if (trickling) throw e; // a failure after the test ended (the client closed) is not one
  });

  // The slow link makes the handover last 1.5 s (the primary waits for the ack of the frame
  // that told the spare the pending view). Catch one and cut the link then: the spare's acks
  // stop, as for a recruit whose event loop stalls. If a handover slips by, the next is caught.
  const events = (id: string, event: string, purpose?: string): number =>
    logEvents(cluster, id).filter((e) => e['event'] === event && (purpose === undefined || e['purpose'] === purpose)).length;
  await cluster.waitFor(
    () => events(primary.id, 'recruit-handover') > events(primary.id, 'cas-attempt', 'addBackup'),
    90_000,
    `${primary.id} to hand over to ${spareId}`,
  );
  slow.cut = 'to-target';
  // The primary hears no ack in time, abandons the spare and fences the pending view off.
  const fenced = (): boolean =>
    logEvents(cluster, primary.id).some((e) => e['event'] === 'cas-result' && e['purpose'] === 'fence' && e['won'] === true);
  await cluster.waitFor(fenced, 30_000, `${primary.id} to abandon ${spareId} in handover and fence the pending view off`);
  assert.ok(
    logEvents(cluster, primary.id).some((e) => e['event'] === 'recruit-abandoned' && e['toldPendingView'] === true),
    'the recruit was abandoned after it was told the pending view',
  );
  // The spare asks to go live from the fenced-off view, loses for good and starts over empty.
  await cluster.waitFor(
    () => logEvents(cluster, spareId).some((e) => e['event'] === 'cas-result' && e['purpose'] === 'goLive' && e['won'] === false),
    30_000,
    `${spareId} to be refused for good`,
  );

  // The link is back and quick: the spare is recruited and becomes the backup.
  slow.delayToTargetMs = 0;
  slow.heal();
  await cluster.waitFor(async () => {
    const [p, s] = await Promise.all([cluster.status(primary.id), cluster.status(spareId)]);
    return p?.role === 'primary' && p.view.backup === spareId && s?.role === 'backup';
  }, 60_000, `${spareId} to be the backup of ${primary.id}`);

  trickling = false;
  await trickle;
  t.diagnostic(`${loaded.ok} load operations, ${acked.length} trickled appends; view ${JSON.stringify((await cluster.status(primary.id))?.view)}`);
  assert.ok(acked.length > 5, `appends went through meanwhile (${acked.length})`);
  assert.deepEqual(await workloadProblems(live, loaded), []);
  assert.equal(await client.get('trickle'), acked.join(''), 'every acknowledged append, once, in order');
  await cluster.waitFor(async () => {
    const [p, s] = await Promise.all([cluster.status(primary.id), cluster.status(spareId)]);
    return p !== null && s !== null && p.lag === 0 && p.logIndex === s.logIndex;
  }, 10_000, 'the backup to catch up');
  const [p, s] = await Promise.all([cluster.status(primary.id), cluster.status(spareId)]);
  assert.equal(s!.digest, p!.digest, 'identical state at the same log index');
});
