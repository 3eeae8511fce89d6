// Recruiting a backup of a wasm guest with a big memory, on real processes (issue 9 item 4):
// the snapshot taken whole in one event-loop turn and restored whole ("snapshot": "whole", the
// way before) against the streamed snapshot ("stream", the default), in the same run.
//
//   npm run build && node bench/wasm-recruit-stall.mjs [--mb 256] [--modes whole,stream] [--failure-ms 3000] [--logs DIR]
//
// Per mode, a fresh 3-node cluster (heartbeat 50 ms, failure timeout --failure-ms) runs
// examples/kvserver with `--ballast MB` (MB MiB of pseudo-random bytes, so nearly every 4 KiB
// chunk of memory is in the snapshot). A client sends `POKE i` (changes a byte of the ballast)
// every 5 ms and times each reply. Then kill -9 of the backup; the spare is recruited. Reported:
// - backupAgainMs: from the kill to the primary's recruit-done (includes the failure timeout);
//   recruitMs: from recruit-start to recruit-done;
// - the longest event-loop stall on the primary and on the recruit, from recruit-start to a
//   second after recruit-done: the nodes' own `event-loop-stall` log lines (the longest
//   monitorEventLoopDelay reading of each second, logged from 100 ms; "<100" when none);
// - the client's longest reply during the recruit (what a client of the guest sees);
// - the front's own numbers (guest-snapshot / guest-snapshot-sent on the primary,
//   guest-restore on the recruit);
// - then kill -9 of the primary: the recruit goes live and its BALLAST checksum and a key
//   written before must be the old primary's (sameState).
// Nothing polls /status during the recruit (its memory hash of a big guest would itself stall
// the node): progress is read from the nodes' log files. JSON lines on stdout, progress on stderr.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ProcessCluster, freePorts } from '../dist/src/testing/process-cluster.js';
import { examplePath } from '../dist/src/testing/wasm-cluster.js';
import { LineClient } from '../dist/src/testing/line-client.js';
import { events } from './log-events.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const MB = Number(arg('--mb', '256'));
const MODES = arg('--modes', 'whole,stream').split(',');
const FAILURE_MS = Number(arg('--failure-ms', '3000'));
/** Keep the nodes' logs here (per mode and node). */
const LOGS = arg('--logs', null);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (s) => process.stderr.write(`${new Date().toISOString()} ${s}\n`);

async function waitLog(c, id, event, sinceMs, timeoutMs) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const e = events(c, id, [event]).find((x) => Date.parse(x.time) >= sinceMs);
    if (e) return e;
    if (Date.now() > end) throw new Error(`no ${event} in ${id}'s log after ${timeoutMs} ms`);
    await sleep(50);
  }
}

const maxStall = (c, id, from, to) => {
  const s = events(c, id, ['event-loop-stall']).filter((e) => Date.parse(e.time) >= from && Date.parse(e.time) <= to + 1500);
  return s.length === 0 ? '<100' : Math.max(...s.map((e) => e.maxMs));
};

async function once(mode) {
  const [port] = await freePorts(1);
  const addr = { host: '127.0.0.1', port };
  const c = await ProcessCluster.start({
    service: { kind: 'wasm', module: examplePath('kvserver/kvserver.wasm'), args: ['--ballast', String(MB)], listen: [`127.0.0.1:${port}`], memoryLimitMb: MB + 64, snapshot: mode },
    heartbeatMs: 50,
    failureTimeoutMs: FAILURE_MS,
  });
  try {
    let primary = null;
    await c.waitFor(async () => {
      const p = await c.primary();
      if (p?.view.backup && p.guest?.state === 'running') primary = p;
      return primary !== null;
    }, 300_000, 'a primary with a backup');
    const backupId = primary.view.backup;
    const spareId = c.nodes.map((n) => n.id).find((id) => id !== primary.id && id !== backupId);
    const cl = await LineClient.connectRetry(addr, 300_000);
    const t0 = performance.now();
    const sum0 = await cl.request('BALLAST'); // answered once the ballast is filled
    say(`${mode}: ${MB} MiB ballast ${sum0} (checksum took ${Math.round(performance.now() - t0)} ms)`);
    assertOk(await cl.request('SET marker before'), 'OK');
    await sleep(3000); // the backup replays the fill

    let stopping = false;
    const lat = [];
    const poker = (async () => {
      for (let i = 0; !stopping; i++) {
        const s = Date.now();
        const ps = performance.now();
        await cl.request(`POKE ${i * 7919}`);
        lat.push([s, performance.now() - ps]);
        await sleep(5);
      }
    })();
    await sleep(1000);
    const killedAt = Date.now();
    await c.kill9(backupId);
    say(`${mode}: killed backup ${backupId}; recruiting ${spareId}`);
    const start = await waitLog(c, primary.id, 'recruit-start', killedAt, 120_000);
    const done = await waitLog(c, primary.id, 'recruit-done', killedAt, 600_000);
    const startMs = Date.parse(start.time);
    const doneMs = Date.parse(done.time);
    await sleep(2000); // a stall check tick after the end
    stopping = true;
    await poker;
    // Every reply in flight at any time from recruit-start to a second after recruit-done.
    const during = lat.filter(([s, ms]) => s + ms >= startMs && s <= doneMs + 1000).map(([, ms]) => ms);
    const before = lat.filter(([s]) => s < killedAt).map(([, ms]) => ms);
    const snap = events(c, primary.id, ['guest-snapshot', 'guest-snapshot-sent']).filter((e) => Date.parse(e.time) >= killedAt).map(strip);
    const restore = events(c, spareId, ['guest-restore']).filter((e) => Date.parse(e.time) >= killedAt).map(strip);
    if (LOGS !== null) {
      mkdirSync(LOGS, { recursive: true });
      for (const n of c.nodes) writeFileSync(join(LOGS, `${mode}-${n.id}.log`), c.log(n.id));
    }
    const sum1 = await cl.request('BALLAST');
    cl.close();

    // The primary dies: the recruit goes live with the same state.
    await c.kill9(primary.id);
    const cl2 = await LineClient.connectRetry(addr, 60_000);
    const sum2 = await cl2.request('BALLAST');
    const marker = await cl2.request('GET marker');
    cl2.close();
    return {
      mode, mb: MB, failureTimeoutMs: FAILURE_MS,
      backupAgainMs: doneMs - killedAt, recruitMs: doneMs - startMs,
      stallMs: { primary: maxStall(c, primary.id, startMs, doneMs), recruit: maxStall(c, spareId, startMs, doneMs) },
      clientMaxMs: { before: Math.round(Math.max(...before)), duringRecruit: Math.round(Math.max(0, ...during)), replies: during.length },
      primary: snap, recruit: restore,
      sameState: sum1 === sum2 && marker === 'VALUE before',
    };
  } finally {
    await c.stop();
  }
}

function strip(e) {
  const { time, level, node, role, epoch, ...rest } = e;
  return rest;
}

function assertOk(got, want) {
  if (got !== want) throw new Error(`got ${got}, want ${want}`);
}

for (const mode of MODES) {
  const r = await once(mode);
  process.stdout.write(JSON.stringify(r) + '\n');
}
