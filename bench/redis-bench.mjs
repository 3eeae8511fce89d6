#!/usr/bin/env node
// Benchmarks of lockstep's Redis port on this machine, in one run: what replication costs
// (a replicated three-node cluster against one lockstep node alone), and how that compares
// with the nearest Redis setup that gives the same guarantee (a primary with one replica,
// WAIT 1 0 after each SET). Two load generators: redis-benchmark (C clients, with and without
// pipelining) and an ioredis closed loop that measures p50/p99 latency client-side.
// Not a test: numbers depend on the machine and on what else runs on it. See bench/README.md.
//
//   npx tsc -p . && node bench/redis-bench.mjs [--n 20000] [--seconds 3] [--conc 1,16,64]
//                                              [--setups single,replicated,redis] [--json FILE]

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';

const DIST = fileURLToPath(new URL('../dist/src/testing/process-cluster.js', import.meta.url));
if (!existsSync(DIST)) {
  console.error('dist/ is missing: build first with `npx tsc -p .`');
  process.exit(2);
}
const { ProcessCluster, freePorts } = await import(DIST);

// ---------------------------------------------------------------- options

const HELP = `usage: node bench/redis-bench.mjs [options]
  --n N            redis-benchmark requests per run (default 20000; unpipelined c=1 runs use N/4)
  --seconds S      ioredis load per cell, after a short warm-up (default 3)
  --conc LIST      concurrencies (default 1,16,64)
  --setups LIST    any of single,replicated,redis (default all; redis only if redis-server exists)
  --no-benchmark   skip redis-benchmark      --no-ioredis   skip the ioredis load
  --json FILE      also write every measurement as JSON`;

function parseArgs(argv) {
  const o = { n: 20000, seconds: 3, conc: [1, 16, 64], setups: ['single', 'replicated', 'redis'], benchmark: true, ioredis: true, json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--n') o.n = Number(val());
    else if (a === '--seconds') o.seconds = Number(val());
    else if (a === '--conc') o.conc = val().split(',').map(Number);
    else if (a === '--setups') o.setups = val().split(',');
    else if (a === '--no-benchmark') o.benchmark = false;
    else if (a === '--no-ioredis') o.ioredis = false;
    else if (a === '--json') o.json = val();
    else if (a === '--help' || a === '-h') {
      console.log(HELP);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${HELP}`);
  }
  if (!(o.n >= 100) || !(o.seconds > 0) || o.conc.some((c) => !(c >= 1))) throw new Error(`bad option values\n${HELP}`);
  for (const s of o.setups) if (!['single', 'replicated', 'redis'].includes(s)) throw new Error(`unknown setup ${s}`);
  return o;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(e.message);
  process.exit(2);
}

const have = (bin) => spawnSync(bin, ['--version'], { stdio: 'ignore' }).status === 0;
const HAVE_BENCH = have('redis-benchmark');
const HAVE_REDIS = have('redis-server') && have('redis-cli');
if (!HAVE_BENCH && opts.benchmark) console.error('redis-benchmark not found (apt-get install redis-tools): skipping it');
if (!HAVE_REDIS && opts.setups.includes('redis')) console.error('redis-server not found (apt-get install redis-server): skipping the Redis setup');

// ---------------------------------------------------------------- cleanup, even on Ctrl-C

const clusters = new Set(); // ProcessCluster
const children = new Set(); // ChildProcess (redis-server, redis-benchmark)
const dirs = new Set();
const clients = new Set(); // ioredis

function killAllSync() {
  for (const r of clients) r.disconnect();
  clients.clear();
  for (const c of clusters) for (const n of c.nodes) if (n.child?.pid && n.child.exitCode === null && n.child.signalCode === null) killPid(n.child.pid);
  for (const ch of children) if (ch.pid && ch.exitCode === null && ch.signalCode === null) killPid(ch.pid);
  for (const c of clusters) rmSync(c.dir, { recursive: true, force: true });
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
function killPid(pid) {
  try {
    process.kill(pid, 'SIGCONT');
    process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping every process this benchmark started`);
    // Wait (briefly) for the killed children to be reaped, so none is left a zombie.
    const live = [...children, ...[...clusters].flatMap((c) => c.nodes.map((n) => n.child))].filter((ch) => ch && ch.exitCode === null && ch.signalCode === null);
    const reaped = Promise.all(live.map((ch) => new Promise((r) => ch.once('exit', r))));
    killAllSync();
    Promise.race([reaped, sleep(2000)]).then(() => process.exit(130));
  });
}

// ---------------------------------------------------------------- helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error('[bench]', ...a);

/** Run a child to completion, tracked for cleanup; resolves with its stdout. */
function run(bin, args, timeoutMs = 300_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const out = [];
    const err = [];
    child.stdout.on('data', (c) => out.push(c));
    child.stderr.on('data', (c) => err.push(c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      const stdout = Buffer.concat(out).toString('utf8');
      if (code !== 0) reject(new Error(`${bin} ${args.join(' ')} exited ${code ?? signal}: ${Buffer.concat(err).toString('utf8')}`));
      else resolve(stdout);
    });
  });
}

async function waitFor(pred, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await pred()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// ---------------------------------------------------------------- setups

// Heartbeat and failure timeout as in the README's example config, but with a wider failure
// timeout: two shared cores under full load must not look like a dead primary.
const LOCKSTEP_TIMING = { heartbeatMs: 50, failureTimeoutMs: 1000 };

async function startLockstep(nodes) {
  const c = await ProcessCluster.start({ nodes, ...LOCKSTEP_TIMING });
  clusters.add(c);
  const p = await c.primary();
  if (!p) throw new Error('no primary');
  const port = c.node(p.id).client.port;
  return {
    port,
    async check() {
      // A view change during the run would make the numbers meaningless; say so.
      const now = await c.primary();
      return now && now.view.epoch === p.view.epoch ? 'view unchanged' : `VIEW CHANGED during the run (${JSON.stringify(p.view)} -> ${JSON.stringify(now?.view)})`;
    },
    async stop() {
      clusters.delete(c);
      await c.stop();
    },
  };
}

async function startRedisPair() {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-bench-redis-'));
  dirs.add(dir);
  const [pPort, rPort] = await freePorts(2);
  const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'yes'];
  const start = (port, extra, name) => {
    const fd = openSync(join(dir, `${name}.log`), 'a');
    const child = spawn('redis-server', ['--port', String(port), '--dir', dir, ...common, ...extra], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    children.add(child);
    return child;
  };
  const primary = start(pPort, [], 'primary');
  const replica = start(rPort, ['--replicaof', '127.0.0.1', String(pPort)], 'replica');
  const info = async (port) => run('redis-cli', ['-p', String(port), 'INFO', 'replication'], 5000);
  await waitFor(async () => /master_link_status:up/.test(await info(rPort)), 30_000, 'the Redis replica to sync');
  await waitFor(async () => /connected_slaves:1/.test(await info(pPort)), 30_000, 'the Redis primary to see its replica');
  return {
    port: pPort,
    async check() {
      return /connected_slaves:1/.test(await info(pPort)) ? 'replica connected' : 'REPLICA LOST during the run';
    },
    async stop() {
      for (const ch of [primary, replica]) {
        if (ch.exitCode !== null || ch.signalCode !== null) continue;
        const exited = new Promise((r) => ch.once('exit', r));
        ch.kill('SIGKILL');
        await exited;
        children.delete(ch);
      }
      dirs.delete(dir);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------- load generators

/** redis-benchmark -t set,get --csv; one row per command. */
async function redisBenchmark(port, c, pipeline, n) {
  const args = ['-p', String(port), '-t', 'set,get', '-n', String(n), '-c', String(c), '--csv'];
  if (pipeline > 1) args.push('-P', String(pipeline));
  const out = await run('redis-benchmark', args);
  const rows = [];
  for (const line of out.split('\n')) {
    const f = line.trim().split(',').map((s) => s.replace(/^"|"$/g, ''));
    if (f[0] !== 'SET' && f[0] !== 'GET') continue;
    // test, rps, avg, min, p50, p95, p99, max
    rows.push({ op: f[0], rps: Number(f[1]), p50: Number(f[4]), p99: Number(f[6]) });
  }
  if (rows.length !== 2) throw new Error(`redis-benchmark printed no SET/GET rows: ${out}`);
  return rows;
}

/**
 * ioredis closed loop: `c` workers, each with its own connection, each issuing one command
 * (or SET + WAIT 1 0 as one pipelined round trip, when `wait`) after the previous answered.
 * Latency is measured in the client, from send to answer.
 */
async function ioredisLoad(port, c, op, seconds, wait) {
  const conns = [];
  for (let i = 0; i < c; i++) {
    const r = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    r.on('error', () => {});
    clients.add(r);
    conns.push(r);
  }
  await Promise.all(conns.map((r) => r.connect()));
  const value = 'xyz'; // redis-benchmark's default 3-byte value
  const keys = 1000;
  const once = async (r, w, i) => {
    const key = `io:${w}:${i % keys}`;
    if (op === 'GET') {
      await r.get(key);
    } else if (wait) {
      const res = await r.pipeline().set(key, value).call('WAIT', '1', '0').exec();
      if (!res || res[0][0] || res[1][0] || Number(res[1][1]) < 1) throw new Error(`SET + WAIT failed: ${JSON.stringify(res)}`);
    } else {
      await r.set(key, value);
    }
  };
  // Warm-up: every key a GET may read exists, JIT and connections are warm.
  await Promise.all(conns.map(async (r, w) => {
    for (let i = 0; i < Math.min(keys, 200); i++) await (op === 'GET' ? r.set(`io:${w}:${i}`, value) : once(r, w, i));
  }));
  const lat = [];
  let errors = 0;
  let stop = false;
  const t0 = process.hrtime.bigint();
  const worker = async (r, w) => {
    for (let i = 0; !stop; i++) {
      const s = process.hrtime.bigint();
      try {
        await once(r, w, i % 200);
        lat.push(Number(process.hrtime.bigint() - s) / 1e6);
      } catch {
        errors++;
      }
    }
  };
  const timer = setTimeout(() => (stop = true), seconds * 1000);
  await Promise.all(conns.map(worker));
  clearTimeout(timer);
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  for (const r of conns) {
    r.disconnect();
    clients.delete(r);
  }
  lat.sort((a, b) => a - b);
  return { op, rps: lat.length / elapsed, p50: quantile(lat, 0.5), p99: quantile(lat, 0.99), errors };
}

// ---------------------------------------------------------------- the run

const SETUPS = {
  single: { label: 'lockstep, 1 node (no backup)', start: () => startLockstep(1) },
  replicated: { label: 'lockstep, 3 nodes (primary+backup+spare)', start: () => startLockstep(3) },
  redis: { label: 'Redis 1 primary + 1 replica', start: startRedisPair },
};

const results = []; // { setup, tool, op, c, p, rps, p50, p99, note }

async function measure(setupName) {
  const setup = SETUPS[setupName];
  log(`starting ${setup.label}`);
  const s = await setup.start();
  try {
    if (opts.benchmark && HAVE_BENCH) {
      for (const c of opts.conc) {
        for (const p of [1, 16]) {
          const n = p === 1 && c === 1 ? Math.max(100, Math.floor(opts.n / 4)) : opts.n;
          log(`${setupName}: redis-benchmark -c ${c}${p > 1 ? ` -P ${p}` : ''} -n ${n}`);
          for (const row of await redisBenchmark(s.port, c, p, n)) results.push({ setup: setupName, tool: 'redis-benchmark', c, p, ...row, note: setupName === 'redis' ? 'no WAIT' : '' });
        }
      }
    }
    if (opts.ioredis) {
      for (const c of opts.conc) {
        for (const op of ['SET', 'GET']) {
          const wait = setupName === 'redis' && op === 'SET';
          log(`${setupName}: ioredis ${op}${wait ? '+WAIT 1 0' : ''} x${c} for ${opts.seconds}s`);
          const r = await ioredisLoad(s.port, c, op, opts.seconds, wait);
          results.push({ setup: setupName, tool: 'ioredis', c, p: 1, ...r, op: wait ? 'SET+WAIT' : op, note: r.errors ? `${r.errors} errors` : '' });
        }
      }
    }
    const health = await s.check();
    log(`${setupName}: ${health}`);
    if (!/unchanged|connected/.test(health)) for (const r of results) if (r.setup === setupName) r.note = (r.note ? r.note + '; ' : '') + health;
  } finally {
    await s.stop();
  }
}

function fmt(x, digits = 0) {
  if (x === undefined || Number.isNaN(x)) return '-';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
function pad(s, w, right = false) {
  s = String(s);
  return right ? s.padStart(w) : s.padEnd(w);
}

function printTable() {
  const setups = opts.setups.filter((s) => s !== 'redis' || HAVE_REDIS);
  const find = (setup, tool, op, c, p) => results.find((r) => r.setup === setup && r.tool === tool && r.c === c && r.p === p && (r.op === op || (op === 'SET' && r.op === 'SET+WAIT')));
  const keys = [];
  for (const tool of ['redis-benchmark', 'ioredis']) {
    for (const p of tool === 'ioredis' ? [1] : [1, 16]) for (const c of opts.conc) for (const op of ['SET', 'GET']) if (setups.some((s) => find(s, tool, op, c, p))) keys.push({ tool, op, c, p });
  }
  const cell = (r) => (r ? `${pad(fmt(r.rps), 9, true)} ${pad(fmt(r.p50, 2), 6, true)} ${pad(fmt(r.p99, 2), 7, true)}` : pad('-', 24, true));
  const head = ['tool', 'op', 'c', 'P'];
  const lines = [];
  lines.push(`${pad(head[0], 16)} ${pad(head[1], 8)} ${pad(head[2], 3, true)} ${pad(head[3], 3, true)} | ` +
    setups.map((s) => pad({ single: 'lockstep 1 node', replicated: 'lockstep replicated', redis: 'Redis+replica' }[s], 24)).join(' | ') +
    ' | repl/single' + (setups.includes('redis') ? ' | repl/Redis' : ''));
  lines.push(`${pad('', 33)} | ` + setups.map(() => `${pad('ops/s', 9, true)} ${pad('p50ms', 6, true)} ${pad('p99ms', 7, true)}`).join(' | ') + ' | ops/s       ' + (setups.includes('redis') ? ' | ops/s' : ''));
  lines.push('-'.repeat(lines[0].length + 4));
  for (const k of keys) {
    const rs = setups.map((s) => find(s, k.tool, k.op, k.c, k.p));
    const one = find('single', k.tool, k.op, k.c, k.p);
    const rep = find('replicated', k.tool, k.op, k.c, k.p);
    const red = find('redis', k.tool, k.op, k.c, k.p);
    const ratio = (a, b) => (a && b ? `${fmt(a.rps / b.rps, 2)}` : '-');
    const op = k.tool === 'ioredis' && k.op === 'SET' && red ? 'SET (*)' : k.op;
    lines.push(`${pad(k.tool, 16)} ${pad(op, 8)} ${pad(k.c, 3, true)} ${pad(k.p, 3, true)} | ` + rs.map(cell).join(' | ') +
      ` | ${pad(ratio(rep, one), 11, true)}` + (setups.includes('redis') ? ` | ${pad(ratio(rep, red), 11, true)}` : ''));
  }
  const notes = results.filter((r) => r.note && r.note !== 'no WAIT');
  console.log(lines.join('\n'));
  console.log('');
  console.log('ops/s: throughput; p50/p99: latency in ms (redis-benchmark: its own histogram; ioredis: measured client-side per command).');
  console.log('repl/single = lockstep replicated / lockstep 1 node; repl/Redis = lockstep replicated / Redis primary+replica (throughput).');
  if (setups.includes('redis')) {
    console.log('(*) ioredis SET on Redis is SET + WAIT 1 0 pipelined (acknowledged only once the replica has it: the guarantee lockstep gives);');
    console.log('    redis-benchmark and GET rows on Redis are plain commands (no WAIT), so those ratios compare against unreplicated-speed Redis.');
  }
  for (const r of notes) console.log(`note: ${r.setup} ${r.tool} ${r.op} c=${r.c}: ${r.note}`);
}

const started = Date.now();
try {
  for (const s of opts.setups) {
    if (s === 'redis' && !HAVE_REDIS) continue;
    await measure(s);
  }
  console.log('');
  console.log(`lockstep redis-bench, ${new Date().toISOString().slice(0, 10)}, node ${process.version}, ${cpus().length} cpus (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB; N=${opts.n}, ioredis ${opts.seconds}s/cell; took ${Math.round((Date.now() - started) / 1000)} s`);
  console.log('');
  printTable();
  if (opts.json) writeFileSync(opts.json, JSON.stringify({ date: new Date().toISOString(), opts, results }, null, 2));
} catch (e) {
  console.error('benchmark failed:', e?.stack ?? e);
  process.exitCode = 1;
} finally {
  for (const c of [...clusters]) await c.stop().catch(() => {});
  clusters.clear();
  killAllSync();
}
