#!/usr/bin/env node
// Benchmarks of lockstep's Redis port on this machine, in one run: what replication costs
// (a replicated three-node cluster, in each kv mode, against one lockstep node alone), and how
// that compares with the nearest Redis setup that gives the same guarantee (a primary with one
// replica, WAIT 1 0 after each SET). Two load generators: redis-benchmark (C clients, with and
// without pipelining) and an ioredis closed loop that measures p50/p99 latency client-side.
// Not a test: numbers depend on the machine and on what else runs on it. See bench/README.md.
//
// Interleaved, because the machine is shared and its load drifts: the run is --rounds rounds
// (3 by default); each round starts every setup afresh, one at a time (a fresh cluster or
// Redis pair per setup per round, stopped before the next one starts, so no idle setup shares
// the cores), runs every cell on it, checks that no view change (or replica loss) happened,
// and stops it. The setups' order rotates by one each round (round 1: single, rsm, st, redis;
// round 2: rsm, st, redis, single; ...), so no setup always runs first or last. Per cell the
// table gives the median over the rounds of ops/s, p50 and p99, with the spread (min-max of
// the rounds), and the ratios of the medians (replicated/single, replicated/Redis) with the
// min-max of the per-round ratios (each round's two numbers were measured minutes apart).
//
// With --baseline DIR (another build's dist/, e.g. built from the commit before a change), the
// lockstep setups also run on that build, in the same rounds, each right after its own: a
// before/after comparison with the same interleaving.
//
//   npx tsc -p . && node bench/redis-bench.mjs [--rounds 3] [--n 20000] [--seconds 3] [--conc 1,16,64]
//        [--setups single,replicated,redis] [--modes rsm,state-transfer] [--dist DIR] [--baseline DIR] [--json FILE]

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir, cpus, totalmem, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';


// ---------------------------------------------------------------- options

const HELP = `usage: node bench/redis-bench.mjs [options]
  --rounds R       interleaved rounds (default 3); the table gives medians and min-max over them
  --modes LIST     kv modes of the replicated setup: rsm,state-transfer (default both)
  --n N            redis-benchmark requests per run (default 20000; unpipelined c=1 runs use N/4)
  --seconds S      ioredis load per cell, after a short warm-up (default 3)
  --conc LIST      concurrencies (default 1,16,64)
  --setups LIST    any of single,replicated,two-backups,redis (default single,replicated,redis;
                   redis only if redis-server exists) (single is one node in kv rsm mode;
                   replicated and two-backups run once per --modes entry; two-backups is four
                   nodes with "backups": 2)
  --no-benchmark   skip redis-benchmark      --no-ioredis   skip the ioredis load
  --dist DIR       the build to measure (default: this checkout's dist/)
  --baseline DIR   another build (a dist/ directory, e.g. before a change): its 1-node and
                   replicated setups run in the same rounds, interleaved, and every row of the
                   measured build gets a ratio to the baseline's
  --json FILE      also write every measurement as JSON
  --table FILE     run nothing: print the table of a run's --json FILE (with --setups, --modes
                   and --baseline choosing the rows shown: without --baseline, no [base] rows)`;

function parseArgs(argv) {
  const o = { rounds: 3, modes: ['rsm', 'state-transfer'], n: 20000, seconds: 3, conc: [1, 16, 64], setups: ['single', 'replicated', 'redis'], benchmark: true, ioredis: true, json: null, dist: null, baseline: null, table: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--n') o.n = Number(val());
    else if (a === '--rounds') o.rounds = Number(val());
    else if (a === '--modes') o.modes = val().split(',');
    else if (a === '--seconds') o.seconds = Number(val());
    else if (a === '--conc') o.conc = val().split(',').map(Number);
    else if (a === '--setups') o.setups = val().split(',');
    else if (a === '--no-benchmark') o.benchmark = false;
    else if (a === '--no-ioredis') o.ioredis = false;
    else if (a === '--json') o.json = val();
    else if (a === '--dist') o.dist = val();
    else if (a === '--baseline') o.baseline = val();
    else if (a === '--table') o.table = val();
    else if (a === '--help' || a === '-h') {
      console.log(HELP);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${HELP}`);
  }
  if (!(Number.isInteger(o.rounds) && o.rounds >= 1) || o.modes.length === 0) throw new Error(`bad option values\n${HELP}`);
  for (const m of o.modes) if (!['rsm', 'state-transfer'].includes(m)) throw new Error(`unknown mode ${m}`);
  if (!(o.n >= 100) || !(o.seconds > 0) || o.conc.some((c) => !(c >= 1))) throw new Error(`bad option values\n${HELP}`);
  for (const s of o.setups) if (!['single', 'replicated', 'two-backups', 'redis'].includes(s)) throw new Error(`unknown setup ${s}`);
  return o;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(e.message);
  process.exit(2);
}

// The build measured (its testing/process-cluster.js starts its own cli/main.js), and optionally a
// baseline build whose nodes run in the same rounds (before/after a change, interleaved).
const DIST_DIR = opts.dist !== null ? resolve(opts.dist) : fileURLToPath(new URL('../dist', import.meta.url));
const DIST = join(DIST_DIR, 'src/testing/process-cluster.js');
if (!existsSync(DIST)) {
  console.error(`${DIST} is missing: build first with \`npx tsc -p .\``);
  process.exit(2);
}
const BASE_MAIN = opts.baseline === null ? null : join(resolve(opts.baseline), 'src/cli/main.js');
if (BASE_MAIN !== null && !existsSync(BASE_MAIN)) {
  console.error(`${BASE_MAIN} is missing: --baseline names a built dist/ directory`);
  process.exit(2);
}
const { ProcessCluster, freePorts } = await import(DIST);

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

async function startLockstep(nodes, mode = 'rsm', main = undefined, backups = 1) {
  const c = await ProcessCluster.start({ nodes, mode, ...LOCKSTEP_TIMING, ...(main ? { main } : {}), ...(backups > 1 ? { extra: { backups } } : {}) });
  clusters.add(c);
  // With several backups, the run starts once the view names them all.
  if (backups > 1) await c.waitFor(async () => ((await c.primary())?.view.backups?.length ?? 0) === backups, 30_000, `a view with ${backups} backups`);
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

const MODE_SHORT = { rsm: 'rsm', 'state-transfer': 'st' };
/** Setup instances, in the order of round 1: single, replicated in each mode, redis. */
const SETUPS = [];
for (const s of opts.setups) {
  if (s === 'single') SETUPS.push({ key: 'single', label: 'lockstep, 1 node (no backup), kv rsm', short: '1 node', start: () => startLockstep(1, 'rsm') });
  else if (s === 'replicated') {
    for (const m of opts.modes) SETUPS.push({ key: `repl-${MODE_SHORT[m]}`, label: `lockstep, 3 nodes (primary+backup+spare), kv ${m}`, short: `replicated ${m}`, start: () => startLockstep(3, m) });
  } else if (s === 'two-backups') {
    for (const m of opts.modes) SETUPS.push({ key: `repl-${MODE_SHORT[m]}-2b`, label: `lockstep, 4 nodes (primary+2 backups+spare, "backups": 2), kv ${m}`, short: `2 backups ${m}`, start: () => startLockstep(4, m, undefined, 2) });
  }
}
if (BASE_MAIN !== null) {
  // Each lockstep setup is followed by the same setup on the baseline build.
  for (const s of SETUPS.splice(0)) {
    const two = s.key.endsWith('-2b');
    const [nodes, mode] = s.key === 'single' ? [1, 'rsm'] : [two ? 4 : 3, s.key.startsWith('repl-rsm') ? 'rsm' : 'state-transfer'];
    SETUPS.push(s, { key: `base-${s.key}`, label: `${s.label} [baseline ${opts.baseline}]`, short: `${s.short} [base]`, start: () => startLockstep(nodes, mode, BASE_MAIN, two ? 2 : 1) });
  }
}
for (const s of opts.setups) {
  if (s === 'redis' && HAVE_REDIS) SETUPS.push({ key: 'redis', label: 'Redis 1 primary + 1 replica', short: 'Redis+replica', start: startRedisPair });
}

const results = []; // { round, setup, tool, op, c, p, rps, p50, p99, errors }
const healthNotes = []; // { round, setup, health }

async function measure(setup, round) {
  log(`round ${round}: starting ${setup.label}`);
  const s = await setup.start();
  try {
    if (opts.benchmark && HAVE_BENCH) {
      for (const c of opts.conc) {
        for (const p of [1, 16]) {
          const n = p === 1 && c === 1 ? Math.max(100, Math.floor(opts.n / 4)) : opts.n;
          log(`round ${round} ${setup.key}: redis-benchmark -c ${c}${p > 1 ? ` -P ${p}` : ''} -n ${n}`);
          for (const row of await redisBenchmark(s.port, c, p, n)) results.push({ round, setup: setup.key, tool: 'redis-benchmark', c, p, ...row, errors: 0 });
        }
      }
    }
    if (opts.ioredis) {
      for (const c of opts.conc) {
        for (const op of ['SET', 'GET']) {
          const wait = setup.key === 'redis' && op === 'SET';
          log(`round ${round} ${setup.key}: ioredis ${op}${wait ? '+WAIT 1 0' : ''} x${c} for ${opts.seconds}s`);
          const r = await ioredisLoad(s.port, c, op, opts.seconds, wait);
          // Kept as op SET (the row's name says +WAIT on Redis) so the cells line up.
          results.push({ round, setup: setup.key, tool: 'ioredis', c, p: 1, rps: r.rps, p50: r.p50, p99: r.p99, op, errors: r.errors });
        }
      }
    }
    const health = await s.check();
    log(`round ${round} ${setup.key}: ${health}`);
    if (!/unchanged|connected/.test(health)) healthNotes.push({ round, setup: setup.key, health });
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
function median(xs) {
  const v = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}
/** "median (min-max)" of the rounds' values. */
function spread(xs, digits) {
  const v = xs.filter((x) => !Number.isNaN(x));
  if (v.length === 0) return '-';
  const med = fmt(median(v), digits);
  if (v.length === 1) return med;
  return `${med} (${fmt(Math.min(...v), digits)}-${fmt(Math.max(...v), digits)})`;
}

function printTable() {
  const cells = [];
  for (const tool of ['redis-benchmark', 'ioredis']) {
    for (const p of tool === 'ioredis' ? [1] : [1, 16]) for (const c of opts.conc) for (const op of ['SET', 'GET']) {
      if (results.some((r) => r.tool === tool && r.p === p && r.c === c && r.op === op)) cells.push({ tool, op, c, p });
    }
  }
  const rows = (setup, k) => results.filter((r) => r.setup === setup && r.tool === k.tool && r.op === k.op && r.c === k.c && r.p === k.p);
  const haveSingle = SETUPS.some((s) => s.key === 'single');
  const haveBase = BASE_MAIN !== null;
  const haveRedis = SETUPS.some((s) => s.key === 'redis');
  const W = { cell: 34, setup: 29, rps: 26, lat: 19, ratio: 19 };
  const lines = [];
  lines.push(`${pad('tool             op        c   P', W.cell)} ${pad('setup', W.setup)} ${pad('ops/s', W.rps, true)} ${pad('p50 ms', W.lat, true)} ${pad('p99 ms', W.lat, true)}` +
    (haveSingle ? ` ${pad('repl/single', W.ratio, true)}` : '') + (haveRedis ? ` ${pad('repl/Redis', W.ratio, true)}` : '') +
    (haveBase ? ` ${pad('/baseline', W.ratio, true)}` : ''));
  lines.push('-'.repeat(lines[0].length));
  /** The ratio of the medians, and the min-max of the per-round ratios. */
  const ratio = (a, b) => {
    if (a.length === 0 || b.length === 0) return '-';
    const r = fmt(median(a.map((x) => x.rps)) / median(b.map((x) => x.rps)), 2);
    const per = a.map((x) => ({ x, y: b.find((y) => y.round === x.round) })).filter((q) => q.y).map((q) => q.x.rps / q.y.rps);
    return per.length > 1 ? `${r} (${fmt(Math.min(...per), 2)}-${fmt(Math.max(...per), 2)})` : r;
  };
  for (const k of cells) {
    let first = true;
    for (const s of SETUPS) {
      const rs = rows(s.key, k);
      if (rs.length === 0) continue;
      const op = k.tool === 'ioredis' && k.op === 'SET' && s.key === 'redis' ? 'SET+WAIT' : k.op;
      const cellName = first ? `${pad(k.tool, 16)} ${pad(k.op, 8)} ${pad(k.c, 3, true)} ${pad(k.p, 3, true)}` : '';
      first = false;
      const isRepl = s.key.startsWith('repl-') || s.key.startsWith('base-repl-');
      const base = s.key.startsWith('base-');
      const errs = rs.reduce((n, r) => n + r.errors, 0);
      lines.push(`${pad(cellName, W.cell)} ${pad(s.short + (op !== k.op ? ' (*)' : ''), W.setup)} ${pad(spread(rs.map((r) => r.rps), 0), W.rps, true)} ${pad(spread(rs.map((r) => r.p50), 2), W.lat, true)} ${pad(spread(rs.map((r) => r.p99), 2), W.lat, true)}` +
        (haveSingle ? ` ${pad(isRepl ? ratio(rs, rows(base ? 'base-single' : 'single', k)) : '', W.ratio, true)}` : '') +
        (haveRedis ? ` ${pad(isRepl ? ratio(rs, rows('redis', k)) : '', W.ratio, true)}` : '') +
        (haveBase ? ` ${pad(!base && s.key !== 'redis' ? ratio(rs, rows(`base-${s.key}`, k)) : '', W.ratio, true)}` : '') +
        (errs ? `  ${errs} errors` : ''));
    }
  }
  console.log(lines.join('\n'));
  console.log('');
  console.log(`Each value: the median of ${opts.rounds} interleaved rounds, then (min-max) over the rounds. ops/s: throughput; p50/p99: latency in ms`);
  console.log('(redis-benchmark: its own histogram; ioredis: measured client-side per command).');
  console.log('repl/single, repl/Redis: ratio of the median ops/s of that replicated setup to the 1-node / Redis one, then (min-max) of the');
  console.log('per-round ratios (the two measured in the same round).');
  if (haveBase) console.log(`[base]: the same setup running the baseline build ${opts.baseline}; /baseline: this build's median ops/s over the baseline's.`);
  if (haveRedis) {
    console.log('(*) ioredis SET on Redis is SET + WAIT 1 0 pipelined (acknowledged only once the replica has it: the guarantee lockstep gives);');
    console.log('    redis-benchmark and GET rows on Redis are plain commands (no WAIT), so those ratios compare against unreplicated-speed Redis.');
  }
  if (healthNotes.length === 0) console.log(`No view change (lockstep) and no replica lost (Redis) during any setup's run, in any round.`);
  for (const h of healthNotes) console.log(`note: round ${h.round}, ${h.setup}: ${h.health}`);
}

if (opts.table !== null) {
  const j = JSON.parse(readFileSync(opts.table, 'utf8'));
  results.push(...j.results);
  healthNotes.push(...(j.healthNotes ?? []));
  Object.assign(opts, { rounds: j.opts.rounds, conc: j.opts.conc, n: j.opts.n, seconds: j.opts.seconds });
  console.log(`lockstep redis-bench, from ${opts.table}: run ${j.date.slice(0, 16).replace('T', ' ')} UTC${j.machine ? `, ${j.machine}` : ''};`);
  console.log(`${opts.rounds} interleaved rounds (fresh cluster per setup per round; order rotated), N=${opts.n}, ioredis ${opts.seconds}s/cell;`);
  console.log(`load average (1 min) ${j.loadavg.start[0].toFixed(2)} at the start, ${j.loadavg.end[0].toFixed(2)} at the end`);
  console.log('');
  printTable();
  process.exit(0);
}

const MACHINE = `node ${process.version}, ${cpus().length} cpus (${cpus()[0]?.model ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB`;
const started = Date.now();
const load0 = loadavg();
try {
  for (let round = 1; round <= opts.rounds; round++) {
    const shift = (round - 1) % SETUPS.length;
    for (const s of [...SETUPS.slice(shift), ...SETUPS.slice(0, shift)]) await measure(s, round);
  }
  const load1 = loadavg();
  console.log('');
  console.log(`lockstep redis-bench, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${MACHINE};`);
  console.log(`${opts.rounds} interleaved rounds (fresh cluster per setup per round; order rotated), N=${opts.n}, ioredis ${opts.seconds}s/cell; took ${Math.round((Date.now() - started) / 1000)} s;`);
  console.log(`load average (1 min) ${load0[0].toFixed(2)} at the start, ${load1[0].toFixed(2)} at the end`);
  console.log('');
  printTable();
  if (opts.json) writeFileSync(opts.json, JSON.stringify({ date: new Date().toISOString(), machine: MACHINE, opts, loadavg: { start: load0, end: load1 }, results, healthNotes }, null, 2));
} catch (e) {
  console.error('benchmark failed:', e?.stack ?? e);
  process.exitCode = 1;
} finally {
  for (const c of [...clusters]) await c.stop().catch(() => {});
  clusters.clear();
  killAllSync();
}
