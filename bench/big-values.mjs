// bench/big-values.mjs: what one big value costs the other clients (issue 14, item 4).
// For each mode and size: a fresh 3-node cluster (heartbeat 50 ms, failure timeout 500 ms, the
// defaults' timeout), a PING loop on its own connection to the primary (one PING in flight at a
// time, its latency measured in this process), then one SET of a SIZE-byte value on another
// connection, then (only for the 1 MB row and up, as the issue reported) 200 one-byte APPENDs to
// a 2 MB value. Reported: the SET's latency, the longest PING during it, the same for the APPEND
// run, whether the view changed (a failover), and whether every replica's digest agrees after.
// Usage: node bench/big-values.mjs [--dist DIR] [--sizes 1,16,64] [--modes rsm,state-transfer]
// --dist points at another build's dist/ (e.g. an older commit's) to compare old with new.
// Prints a table on stdout, progress on stderr. Every node is killed and every temp dir removed.

import net from 'node:net';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? dflt : process.argv[i + 1];
};
const dist = resolve(arg('--dist', new URL('../dist', import.meta.url).pathname));
const sizesMb = arg('--sizes', '1,16,64').split(',').map(Number);
const modes = arg('--modes', 'rsm,state-transfer').split(',');
const { ProcessCluster } = await import(pathToFileURL(`${dist}/src/testing/process-cluster.js`).href);
const MB = 1024 * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A RESP connection that sends one command at a time and resolves its reply (latin1). */
function connect(port) {
  return new Promise((res, rej) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    let want = null;
    s.setNoDelay(true);
    s.on('data', (d) => {
      buf += d.toString('latin1');
      if (want && /\r\n$/.test(buf)) {
        const w = want;
        want = null;
        const out = buf;
        buf = '';
        w(out);
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => { if (want) { const w = want; want = null; w('closed'); } });
    // A pending send must keep this process alive (a closed socket resolves it with 'closed').
    const keep = setInterval(() => undefined, 1000);
    s.on('close', () => clearInterval(keep));
    s.on('connect', () => res({
      send: (bytes) => new Promise((r) => { if (s.destroyed) return r('closed'); want = r; s.write(bytes); }),
      close: () => s.destroy(),
      closed: () => s.destroyed,
      onClose: (f) => s.on('close', f),
    }));
    s.once('error', rej);
  });
}

function cmd(...args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a), 'latin1');
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** Run `work` while a PING loop runs; the work's time and the worst PING latency. */
async function withPings(port, work) {
  const ping = await connect(port);
  let stop = false;
  let worst = 0;
  let count = 0;
  const loop = (async () => {
    while (!stop) {
      const t = performance.now();
      const r = await Promise.race([ping.send(cmd('PING')), sleep(10_000).then(() => 'timeout')]);
      if (r === 'timeout') { worst = Infinity; break; }
      worst = Math.max(worst, performance.now() - t);
      count++;
    }
  })();
  await sleep(200);
  const t = performance.now();
  const result = await work();
  const ms = performance.now() - t;
  await sleep(200);
  stop = true;
  await loop;
  ping.close();
  return { ms, worst, count, result };
}

const rows = [];
for (const mode of modes) {
  for (const mb of sizesMb) {
    process.stderr.write(`${mode} ${mb} MB...\n`);
    const cluster = await ProcessCluster.start({ mode, heartbeatMs: 50, failureTimeoutMs: 500, extra: { protoMaxBulkLen: 64 * MB, clientInputBytesMax: 512 * MB } });
    try {
      const p0 = await cluster.primary();
      const port = cluster.node(p0.id).client.port;
      const c = await connect(port);
      const value = Buffer.alloc(mb * MB, 0x61);
      for (let i = 0; i < value.length; i += 4093) value[i] = i & 0xff;
      const set = await withPings(port, () => c.send(cmd('SET', 'big', value)));
      let app = null;
      if (mb === sizesMb[0]) {
        await c.send(cmd('SET', 'grow', Buffer.alloc(2 * MB, 0x62)));
        app = await withPings(port, async () => {
          let last = '';
          for (let i = 0; i < 200 && !c.closed(); i++) last = await c.send(cmd('APPEND', 'grow', 'x'));
          return last;
        });
      }
      await sleep(1000);
      const st = await cluster.statuses();
      const live = st.filter((s) => s && (s.role === 'primary' || s.role === 'backup'));
      const failover = st.some((s) => s && s.epoch !== p0.epoch && s.role !== 'spare') || !st.some((s) => s?.role === 'primary' && s.id === p0.id);
      const agree = live.length === 2 && live[0].digest === live[1].digest;
      rows.push({ mode, mb, setOk: set.result.startsWith('+OK'), setMs: set.ms, setPingMax: set.worst,
        appendMs: app?.ms, appendPingMax: app?.worst, appendOk: app ? app.result.trim() === `:${2 * MB + 200}` : undefined, failover, agree });
      c.close();
    } finally {
      await cluster.stop();
    }
  }
}

const f = (v) => (v === undefined ? '-' : v === Infinity ? 'stuck' : typeof v === 'number' ? v.toFixed(0) : String(v));
console.log(`dist: ${dist}`);
console.log('mode            size  | SET ms  max PING ms | 200 APPENDs to 2 MB: ms  max PING ms | failover  digests agree');
for (const r of rows) {
  console.log(`${r.mode.padEnd(15)} ${String(r.mb).padStart(3)} MB | ${f(r.setOk ? r.setMs : 'failed').padStart(6)}  ${f(r.setPingMax).padStart(11)} | ${f(r.appendOk === false ? 'failed' : r.appendMs).padStart(23)}  ${f(r.appendPingMax).padStart(11)} | ${String(r.failover).padEnd(8)}  ${r.agree}`);
}
