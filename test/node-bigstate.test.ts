// Issue 9 on real processes: a snapshot big enough for many chunks reaches a recruit through a
// link that loses what is in flight mid-stream (the proxy breaks every connection after a set
// number of bytes: deterministic, no randomness), and a recruit killed halfway through its
// snapshot leaves the primary serving while the next spare is recruited.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { ProcessCluster } from '../src/testing/process-cluster.js';

const CHUNK = 16 * 1024;
const KEYS = 12_000;
const VALUE = 'v'.repeat(300);

interface RecruitStatus {
  readonly id: string;
  readonly phase: string;
  readonly chunksAcked: number;
  readonly chunks: number;
}

/** Write KEYS keys (about 4 MB: some 250 chunks of 16 KiB) through the primary. */
async function load(cluster: ProcessCluster, primaryId: string): Promise<void> {
  const n = cluster.node(primaryId);
  const redis = new Redis({ host: n.client.host, port: n.client.port, lazyConnect: true, maxRetriesPerRequest: 0 });
  try {
    await redis.connect();
    for (let at = 0; at < KEYS; at += 1000) {
      const p = redis.pipeline();
      for (let i = at; i < Math.min(KEYS, at + 1000); i++) p.set(`key:${i}`, `${VALUE}${i}`);
      const res = await p.exec();
      assert.ok(res !== null && res.every(([err]) => err === null), 'every load write succeeds');
    }
  } finally {
    redis.disconnect();
  }
}

async function recruitOf(cluster: ProcessCluster, id: string): Promise<RecruitStatus | null> {
  const s = (await cluster.status(id)) as unknown as { recruit?: RecruitStatus | null } | null;
  return s?.recruit ?? null;
}

async function sameState(cluster: ProcessCluster, primaryId: string, backupId: string): Promise<void> {
  await cluster.waitFor(async () => {
    const [p, b] = await Promise.all([cluster.status(primaryId), cluster.status(backupId)]);
    return p !== null && b !== null && p.lag === 0 && p.logIndex === b.logIndex;
  }, 30_000, 'the backup to catch up');
  const [p, b] = await Promise.all([cluster.status(primaryId), cluster.status(backupId)]);
  assert.equal(b!.digest, p!.digest, 'identical state at the same log index');
  assert.ok(p!.logIndex >= KEYS);
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`${mode}: a snapshot of many chunks, with chunks lost mid-stream, reaches the recruit whole`, async (t) => {
    const cluster = await ProcessCluster.start({ nodes: 3, mode, peerProxies: true, failureTimeoutMs: 1000, extra: { snapshotChunkBytes: CHUNK, snapshotWindowChunks: 8 } });
    t.after(() => cluster.stop());
    const primary = (await cluster.primary())!;
    const backupId = primary.view.backup!;
    const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId)!;
    await load(cluster, primary.id);
    // Everything the primary sends the spare: after 1 MB (a quarter of the snapshot) the
    // connection breaks and what was in flight is lost.
    const link = cluster.peerProxy(spareId);
    link.breakAfterToTargetBytes = 1024 * 1024;
    await cluster.kill9(backupId);
    await cluster.waitFor(async () => (await cluster.status(primary.id))?.view.backup === spareId, 60_000, `${spareId} to be recruited as backup`);
    assert.equal(link.breaks, 1, 'the link broke mid-snapshot');
    const log = cluster.log(primary.id);
    assert.match(log, /"event":"recruit-done"/);
    assert.doesNotMatch(log, /"event":"recruit-abandoned"/, 'a recruit making progress is never abandoned');
    // The last snapshot taken (the first was the empty state, for the first backup).
    const taken = [...log.matchAll(/"event":"recruit-snapshot-taken".*?"chunks":(\d+)/g)].at(-1);
    assert.ok(taken !== undefined && Number(taken[1]) >= 100, `many chunks (${taken?.[1]})`);
    await sameState(cluster, primary.id, spareId);
  });
}

test('a recruit killed halfway through its snapshot: the primary keeps serving and the next spare is recruited', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 4, peerProxies: true, failureTimeoutMs: 1000, extra: { snapshotChunkBytes: CHUNK, snapshotWindowChunks: 4 } });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  await load(cluster, primary.id);
  // Slow links to every node but the primary (acks come back 50 ms late): a snapshot takes
  // some 60 round trips, time enough to kill the recruit in the middle of it.
  const others = cluster.nodes.map((n) => n.id).filter((id) => id !== primary.id);
  cluster.peerProxy(primary.id).delayToTargetMs = 50;
  cluster.peerProxy(primary.id).reset();
  await cluster.kill9(backupId);
  let first: RecruitStatus | null = null;
  await cluster.waitFor(async () => {
    const r = await recruitOf(cluster, primary.id);
    // Still receiving its snapshot (of some 250 chunks), 20 chunks in.
    if (r !== null && r.phase === 'snapshot' && r.chunksAcked >= 20) first = r;
    return first !== null;
  }, 60_000, 'a recruit halfway through its snapshot');
  const halfway = first as RecruitStatus | null;
  assert.ok(halfway !== null && others.includes(halfway.id));
  await cluster.kill9(halfway.id);
  const next = others.find((id) => id !== backupId && id !== halfway.id)!;

  // The primary answers clients throughout.
  const n = cluster.node(primary.id);
  const redis = new Redis({ host: n.client.host, port: n.client.port, maxRetriesPerRequest: 0 });
  t.after(() => redis.disconnect());
  assert.equal(await redis.set('after-kill', '1'), 'OK');
  await cluster.waitFor(async () => (await cluster.status(primary.id))?.view.backup === next, 60_000, `${next} to be recruited as backup`);
  assert.equal(await redis.set('after-recruit', '2'), 'OK');
  const abandoned = cluster.log(primary.id).split('\n').filter((l) => l.includes('"event":"recruit-abandoned"') && l.includes(`"recruit":"${halfway.id}"`));
  assert.ok(abandoned.length > 0, `the primary abandoned ${halfway.id}`);
  await sameState(cluster, primary.id, next);
});
