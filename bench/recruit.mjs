// bench/recruit.mjs: recruiting a new backup for a big kv state under a steady write load
// (issue 9). A fresh 3-node cluster per mode (heartbeat 50 ms, failure timeout 500 ms, the
// defaults); N keys of 16-byte values loaded through the primary (ioredis pipelines); then one
// client writes every 5 ms and /status of the primary is polled every 20 ms, first for a
// baseline window with the backup alive, then from kill -9 of the backup until the spare is
// the backup and caught up. Reported per mode: the longest write (a write's latency, i.e. the
// stall a client sees) in the baseline, from the kill on (it includes the failure timeout the
// primary waits before dropping the dead backup), and during the recruit proper (writes issued
// after the drop), and the longest /status answer, baseline vs recruit; the time from the
// kill to a backup in the view; the primary's peak RSS during the recruit against its RSS
// before and the state's size (usedMemoryBytes). Prints JSON lines on stdout, progress on
// stderr. Needs a build. Usage: node bench/recruit.mjs [--keys N] [--modes rsm,state-transfer]
// [--maxmemory MB (the kv's maxmemory; default the config's 256)] [--failure-ms MS (500)]
// [--logs DIR (keep each node's log there)] [--chunk-kb KB --window N (snapshot chunks and how many
// in flight; default the config's 64 KiB and 32)]. A maxmemory past 2/3 of the nodes' V8 heap is
// refused: give them more, e.g. NODE_OPTIONS=--max-old-space-size=3100 for --maxmemory 2048.

import { Redis } from 'ioredis';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ProcessCluster } from '../dist/src/testing/process-cluster.js';
import { events } from './log-events.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const KEYS = Number(arg('--keys', '1000000'));
const MODES = arg('--modes', 'rsm,state-transfer').split(',');
const MAXMEMORY_MB = arg('--maxmemory', null);
const FAILURE_MS = Number(arg('--failure-ms', '500'));
const LOGS = arg('--logs', null);
/** Snapshot chunk size and window (the config's snapshotChunkBytes / snapshotWindowChunks; default: the defaults). */
const CHUNK_KB = arg('--chunk-kb', null);
const WINDOW = arg('--window', null);
const BASELINE_MS = 3000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (s) => process.stderr.write(`${new Date().toISOString()} ${s}\n`);

async function load(host, port) {
  const redis = new Redis({ host, port, maxRetriesPerRequest: 50 });
  await redis.ping();
  const value = '0123456789abcdef';
  for (let at = 0; at < KEYS; at += 2_000) {
    const p = redis.pipeline();
    for (let i = at; i < Math.min(KEYS, at + 2_000); i++) p.set(`key:${i}`, value);
    const res = await p.exec();
    const bad = res.find(([e]) => e);
    if (bad) throw new Error(`load failed at ${at}: ${bad[0].message}`);
    if (at % 200_000 === 0) log(`loaded ${at}`);
  }
  redis.disconnect();
}

/** A window of measurements: longest write, longest /status, peak RSS. */
function window() {
  return { writeMaxMs: 0, writes: 0, statusMaxMs: 0, statuses: 0, rssPeak: 0 };
}

/**
 * Where the recruit's time went: on the primary, the snapshot stream's wall time and the time
 * spent making pieces (kv-snapshot-sent), the chunks' round trip (recruit-catchup); on the
 * recruit, the time spent restoring pieces against the wall time from the first piece to the
 * last (kv-restore: the rest is waiting for pieces and the node's other work, e.g. decoding
 * frames), and the longest event-loop stall each logged during the recruit.
 */
function breakdown(cluster, primaryId, recruitId) {
  const p = events(cluster, primaryId, ['recruit-start', 'kv-snapshot-sent', 'recruit-snapshot-taken', 'recruit-catchup', 'recruit-done', 'event-loop-stall']);
  const r = events(cluster, recruitId, ['kv-restore', 'event-loop-stall']);
  const last = (list, name) => list.filter((e) => e.event === name).at(-1);
  const start = last(p, 'recruit-start');
  const since = (list) => list.filter((e) => start !== undefined && e.time >= start.time && e.event === 'event-loop-stall');
  const stall = (list) => Math.max(0, ...since(list).map((e) => e.maxMs ?? e.ms ?? e.delayMs ?? 0));
  const sent = last(p, 'kv-snapshot-sent');
  const taken = last(p, 'recruit-snapshot-taken');
  const catchup = last(p, 'recruit-catchup');
  const restore = last(r, 'kv-restore');
  const done = last(p, 'recruit-done');
  return {
    recruitStarts: p.filter((e) => e.event === 'recruit-start').length,
    // When the phases began on the primary (the longest write's recruitAt set beside them).
    at: { start: start?.time, snapshotTaken: taken?.time, catchup: catchup?.time, done: done?.time },
    primary: { produceMs: sent?.produceMs, maxNextMs: sent?.maxNextMs, streamMs: sent?.ms, pieces: sent?.pieces, bytes: taken?.bytes, snapshotRoundTripMs: catchup?.snapshotRoundTripMs, longestStallMs: stall(p) },
    recruit: { addMs: restore?.addMs, maxAddMs: restore?.maxAddMs, finishMs: restore?.finishMs, restoreWallMs: restore?.ms, longestStallMs: stall(r) },
  };
}

async function once(mode) {
  const extra = {
    ...(MAXMEMORY_MB === null ? {} : { maxmemory: Number(MAXMEMORY_MB) * 2 ** 20 }),
    ...(CHUNK_KB === null ? {} : { snapshotChunkBytes: Number(CHUNK_KB) * 1024 }),
    ...(WINDOW === null ? {} : { snapshotWindowChunks: Number(WINDOW) }),
  };
  const cluster = await ProcessCluster.start({ nodes: 3, mode, heartbeatMs: 50, failureTimeoutMs: FAILURE_MS, extra });
  try {
    const primary = await cluster.primary();
    const backupId = primary.view.backup;
    const spareId = cluster.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId);
    const n = cluster.node(primary.id);
    const t0 = performance.now();
    await load(n.client.host, n.client.port);
    log(`${mode}: ${KEYS} keys loaded in ${Math.round(performance.now() - t0)} ms`);
    const before = await cluster.status(primary.id);
    let w = window();
    let stopping = false;
    let droppedAt = null;
    let recruitWriteMaxMs = 0;
    let recruitWriteMaxAt = null;
    const writer = (async () => {
      const redis = new Redis({ host: n.client.host, port: n.client.port, maxRetriesPerRequest: 0 });
      for (let i = 0; !stopping; i++) {
        const s = performance.now();
        await redis.set(`w:${i % 1000}`, 'x'.repeat(16));
        const ms = performance.now() - s;
        w.writeMaxMs = Math.max(w.writeMaxMs, ms);
        // The recruit proper: writes issued once the dead backup was dropped from the view
        // (before that, writes wait out the failure timeout, as in any primary/backup).
        if (droppedAt !== null && s >= droppedAt && ms > recruitWriteMaxMs) {
          recruitWriteMaxMs = ms;
          recruitWriteMaxAt = new Date(Date.now() - ms).toISOString(); // when it was sent (to set beside the logs)
        }
        w.writes++;
        await sleep(5);
      }
      redis.disconnect();
    })();
    const poller = (async () => {
      while (!stopping) {
        const s = performance.now();
        const st = await cluster.status(primary.id);
        w.statusMaxMs = Math.max(w.statusMaxMs, performance.now() - s);
        w.statuses++;
        if (st) w.rssPeak = Math.max(w.rssPeak, st.rssBytes);
        await sleep(20);
      }
    })();
    await sleep(BASELINE_MS);
    const baseline = w;
    w = window();
    const killedAt = performance.now();
    await cluster.kill9(backupId);
    let backupMs = null;
    const deadline = Date.now() + 300_000;
    while (Date.now() < deadline) {
      const st = await cluster.status(primary.id);
      if (droppedAt === null && st?.view.backup === null) droppedAt = performance.now();
      if (st?.view.backup === spareId) {
        backupMs = performance.now() - killedAt;
        break;
      }
      await sleep(20);
    }
    await sleep(500);
    stopping = true;
    await Promise.all([writer, poller]);
    const after = await cluster.status(primary.id);
    const spare = await cluster.status(spareId);
    return {
      mode,
      keys: KEYS,
      stateBytes: before.usedMemoryBytes,
      backupAgainMs: backupMs === null ? null : Math.round(backupMs),
      droppedBackupMs: droppedAt === null ? null : Math.round(droppedAt - killedAt),
      backupAgainAfterDropMs: backupMs === null || droppedAt === null ? null : Math.round(killedAt + backupMs - droppedAt),
      writeMaxMs: { baseline: Math.round(baseline.writeMaxMs), killToBackup: Math.round(w.writeMaxMs), recruit: Math.round(recruitWriteMaxMs), recruitAt: recruitWriteMaxAt },
      statusMaxMs: { baseline: Math.round(baseline.statusMaxMs), recruit: Math.round(w.statusMaxMs) },
      writes: { baseline: baseline.writes, recruit: w.writes },
      primaryRssMB: { before: Math.round(before.rssBytes / 2 ** 20), baselinePeak: Math.round(baseline.rssPeak / 2 ** 20), recruitPeak: Math.round(w.rssPeak / 2 ** 20) },
      extraRssOverState: +((w.rssPeak - baseline.rssPeak) / before.usedMemoryBytes).toFixed(2),
      sameDigest: after.logIndex === spare?.logIndex ? after.digest === spare?.digest : 'not caught up yet',
      // Where the recruit's time went, from the nodes' own log lines (see breakdown()).
      breakdown: breakdown(cluster, primary.id, spareId),
    };
  } finally {
    if (LOGS !== null) {
      mkdirSync(LOGS, { recursive: true });
      for (const n of cluster.nodes) writeFileSync(join(LOGS, `${mode}-${n.id}.log`), cluster.log(n.id));
    }
    await cluster.stop();
  }
}

for (const mode of MODES) {
  const r = await once(mode);
  process.stdout.write(JSON.stringify(r) + '\n');
}
