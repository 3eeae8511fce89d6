// bench/switchover.mjs: the write pause of a planned switchover (issue 11 item 1). A fresh
// 3-node kv cluster per mode (heartbeat 50 ms, failure timeout 500 ms: the defaults, so the
// number does not lean on short timeouts); C closed-loop lockstep/client writers (each: SET,
// await the reply, SET again) on their own keys; after a warm-up, N switchovers back and forth
// (POST /api/switchover to the current primary, as lockstep switchover does), WAIT_MS apart.
// Reported per mode: the longest gap between two acknowledged writes of any one client
// during a switchover window (from the request to PAUSE_WINDOW_MS after the answer) and, for
// comparison, the longest in the steady windows between them; per switchover, the node's own
// times (roles swapped after `ms`, new primary's first frame after `liveMs`); client errors.
// Prints JSON lines on stdout, progress on stderr. Needs a build.
// Usage: node bench/switchover.mjs [--switchovers N] [--clients C] [--modes rsm,state-transfer]

import { LockstepClient } from '../dist/src/client/index.js';
import { ProcessCluster } from '../dist/src/testing/process-cluster.js';
import { postSwitchover } from '../dist/src/cli/switchover.js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const N = Number(arg('--switchovers', '20'));
const CLIENTS = Number(arg('--clients', '4'));
const MODES = arg('--modes', 'rsm,state-transfer').split(',');
const WAIT_MS = 500;
const PAUSE_WINDOW_MS = 300;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (s) => process.stderr.write(`${new Date().toISOString()} ${s}\n`);

async function once(mode) {
  const cluster = await ProcessCluster.start({ nodes: 3, mode, heartbeatMs: 50, failureTimeoutMs: 500 });
  try {
    let primary = (await cluster.primary()).id;
    /** Per client: the time of its last acknowledged write. Gaps are attributed to windows. */
    const windows = []; // [start, end] of each switchover's window
    const gaps = []; // { at: end time of the gap, ms }
    let errors = 0;
    let writes = 0;
    let stopping = false;
    const writer = async (i) => {
      const client = new LockstepClient({ nodes: cluster.clientAddresses(), attemptTimeoutMs: 1000, commandTimeoutMs: 10_000 });
      let last = performance.now();
      let n = 0;
      try {
        while (!stopping) {
          try {
            await client.call('SET', `w${i}`, String(++n));
            const now = performance.now();
            gaps.push({ from: last, to: now });
            last = now;
            writes++;
          } catch (e) {
            errors++;
            log(`client ${i}: ${e.message}`);
          }
        }
      } finally {
        client.close();
      }
    };
    const load = Promise.all(Array.from({ length: CLIENTS }, (_, i) => writer(i)));
    await sleep(1000);
    const reports = [];
    for (let k = 0; k < N; k++) {
      const start = performance.now();
      const r = await postSwitchover(cluster.node(primary).admin, null);
      const end = performance.now();
      windows.push([start, end + PAUSE_WINDOW_MS]);
      if (!r.ok) throw new Error(`switchover ${k} from ${primary}: ${r.code}: ${r.message}`);
      reports.push({ ms: r.ms, liveMs: r.liveMs, live: r.newPrimaryLive });
      primary = r.view.primary;
      await sleep(WAIT_MS);
    }
    stopping = true;
    await load;
    const inWindow = (g) => windows.some(([s, e]) => g.to >= s && g.from <= e);
    let pauseMax = 0;
    let steadyMax = 0;
    const perSwitch = windows.map(() => 0);
    for (const g of gaps) {
      const ms = g.to - g.from;
      if (inWindow(g)) {
        pauseMax = Math.max(pauseMax, ms);
        windows.forEach(([s, e], i) => {
          if (g.to >= s && g.from <= e) perSwitch[i] = Math.max(perSwitch[i], ms);
        });
      } else if (g.from > windows[0][0] - 500) {
        steadyMax = Math.max(steadyMax, ms);
      }
    }
    const sorted = [...perSwitch].sort((a, b) => a - b);
    const round = (x) => Math.round(x * 10) / 10;
    return {
      mode,
      switchovers: N,
      clients: CLIENTS,
      writes,
      clientErrors: errors,
      pauseMaxMs: round(pauseMax),
      pauseMedianMs: round(sorted[Math.floor(sorted.length / 2)]),
      pauseP90Ms: round(sorted[Math.floor(sorted.length * 0.9)]),
      steadyGapMaxMs: round(steadyMax),
      swapMsMax: round(Math.max(...reports.map((r) => r.ms))),
      liveMsMax: round(Math.max(...reports.map((r) => r.liveMs ?? 0))),
      liveMsMedian: round(reports.map((r) => r.liveMs ?? 0).sort((a, b) => a - b)[Math.floor(N / 2)]),
      allLive: reports.every((r) => r.live),
    };
  } finally {
    await cluster.stop();
  }
}

for (const mode of MODES) {
  log(`${mode}: ${N} switchovers, ${CLIENTS} closed-loop writers`);
  console.log(JSON.stringify(await once(mode)));
}
