#!/usr/bin/env node
// Where a replicated command's time goes (issue 13 item 1), against one node alone. Not a test.
//
// Two setups, started once and kept up for the whole run: one lockstep node (kv rsm, no
// backup) and a three-node cluster (kv --mode, default rsm: primary, backup, spare). Every node
// runs with LOCKSTEP_TIMING=1 (src/net/timing.ts: a few performance.now() stamps, off unless
// that variable is set). The load is redis-benchmark (C, so the load generator takes little of
// the two cores), one command kind and concurrency per cell; the cells run interleaved: for
// each round, for each cell, the one node then the cluster (then the next cell).
//
// Per cell and setup it measures:
// - CPU µs per op of each node process: utime+stime from /proc/<pid>/stat (all its threads,
//   clock ticks of 1/CLK_TCK s) before and after the run, over the run's requests. The idle
//   CPU of each process (heartbeats, ticks) is measured first and reported beside it.
// - The time split on the primary, one command in flight (timing.ts): command read -> first
//   frame written to a peer -> first ack read after it -> reply written; on the backup, frame
//   read -> ack written. Means over the commands followed (all of them at c=1; a sample when
//   several are in flight).
// - With --strace: syscalls per op on the primary and the backup (and the one node), from
//   `strace -c -f -p PID` attached for one more run of the cell; epoll_wait/epoll_pwait calls
//   per op are event-loop turns per op (libuv polls once per turn). strace slows the traced
//   process a lot, so its runs give counts only and are not used for the CPU or time numbers.
//
//   npx tsc -p . && node bench/breakdown.mjs [--rounds 2] [--n 20000] [--conc 1,16,64] [--ops SET,GET]
//                                            [--mode rsm] [--strace] [--dist DIR] [--json FILE]

import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { loadavg, cpus } from 'node:os';
import { loadDist, options, reaper } from './lib.mjs';

const opt = options();
const o = {
  rounds: Number(opt('--rounds', '2')),
  n: Number(opt('--n', '20000')),
  conc: opt('--conc', '1,16,64').split(',').map(Number),
  ops: opt('--ops', 'SET,GET').split(','),
  mode: opt('--mode', 'rsm'),
  strace: process.argv.includes('--strace'),
  dist: opt('--dist', undefined),
  json: opt('--json', null),
};
process.env.LOCKSTEP_TIMING = '1'; // inherited by every node process
const { ProcessCluster } = await loadDist(o.dist);
const log = (...a) => console.error('[breakdown]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100;
const HAVE_STRACE = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;
if (o.strace && !HAVE_STRACE) log('strace not found (apt-get install strace): no syscall counts');

const { clusters, children, cleanup } = reaper();

/** utime+stime of a process, in µs. */
function cpuUs(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) / CLK_TCK) * 1e6;
}

function run(bin, argv) {
  return new Promise((res, rej) => {
    const ch = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(ch);
    const out = [];
    const err = [];
    ch.stdout.on('data', (c) => out.push(c));
    ch.stderr.on('data', (c) => err.push(c));
    ch.on('error', rej);
    ch.on('close', (code) => {
      children.delete(ch);
      if (code !== 0) rej(new Error(`${bin} exited ${code}: ${Buffer.concat(err)}`));
      else res(Buffer.concat(out).toString());
    });
  });
}

async function bench(port, op, c, n) {
  const t0 = performance.now();
  const out = await run('redis-benchmark', ['-p', String(port), '-t', op.toLowerCase(), '-n', String(n), '-c', String(c), '--csv']);
  const secs = (performance.now() - t0) / 1000;
  const row = out.split('\n').map((l) => l.split(',').map((x) => x.replace(/"/g, ''))).find((f) => f[0] === op);
  if (!row) throw new Error(`no ${op} row: ${out}`);
  return { rps: Number(row[1]), avgMs: Number(row[2]), p50Ms: Number(row[4]), secs };
}

async function status(admin) {
  const r = await fetch(`http://${admin.host}:${admin.port}/status`);
  return r.json();
}

async function setup(nodes) {
  const c = await ProcessCluster.start({ nodes, mode: nodes === 1 ? 'rsm' : o.mode, heartbeatMs: 50, failureTimeoutMs: 1000 });
  clusters.push(c);
  let st;
  await c.waitFor(async () => (st = await c.statuses()).every((x) => x !== null && x.role !== 'booting'), 30_000, 'every node to answer /status');
  const byRole = (role) => c.nodes[st.findIndex((s) => s.role === role)];
  const primary = byRole('primary');
  const roles = { primary, backup: nodes > 1 ? byRole('backup') : null, spare: nodes > 2 ? byRole('spare') : null };
  return { c, port: primary.client.port, roles, epoch: st.find((s) => s.role === 'primary').epoch };
}

/** Syscall counts of `pid` while `during` runs: strace -c -f, stopped with SIGINT. */
async function straceCounts(pid, during) {
  const ch = spawn('strace', ['-c', '-f', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(ch);
  const err = [];
  ch.stderr.on('data', (d) => err.push(d));
  const closed = new Promise((r) => ch.on('close', r));
  await sleep(500); // attached
  try {
    await during();
  } finally {
    ch.kill('SIGINT');
    await closed;
    children.delete(ch);
  }
  const counts = {};
  for (const line of Buffer.concat(err).toString().split('\n')) {
    const f = line.trim().split(/\s+/);
    // % time, seconds, usecs/call, calls, [errors], syscall
    if (f.length >= 5 && /^\d+(\.\d+)?$/.test(f[0]) && /^\d+$/.test(f[3])) counts[f[f.length - 1]] = Number(f[3]);
  }
  return counts;
}

const diffTiming = (a, b) => {
  const out = {};
  for (const k of Object.keys(b ?? {})) {
    const n = b[k].n - (a?.[k]?.n ?? 0);
    out[k] = { n, meanUs: n > 0 ? (b[k].sumUs - (a?.[k]?.sumUs ?? 0)) / n : NaN };
  }
  return out;
};

const started = Date.now();
const load0 = loadavg();
const results = [];
try {
  log('starting one node and a three-node cluster');
  const single = await setup(1);
  const repl = await setup(3);
  const setups = [{ name: '1 node', s: single }, { name: `replicated ${o.mode}`, s: repl }];
  // Idle CPU (µs per second) of each process, both setups up.
  const idle = {};
  {
    const pids = setups.flatMap(({ name, s }) => Object.entries(s.roles).filter(([, n]) => n).map(([role, n]) => ({ key: `${name} ${role}`, pid: n.child.pid })));
    const before = pids.map((p) => cpuUs(p.pid));
    await sleep(5000);
    pids.forEach((p, i) => (idle[p.key] = (cpuUs(p.pid) - before[i]) / 5));
  }
  log('idle CPU µs/s:', JSON.stringify(idle));
  for (let round = 1; round <= o.rounds; round++) {
    for (const op of o.ops) for (const c of o.conc) for (const { name, s } of setups) {
      const n = c === 1 ? Math.max(1000, Math.floor(o.n / 4)) : o.n;
      log(`round ${round}: ${name} ${op} -c ${c} -n ${n}`);
      const nodes = Object.entries(s.roles).filter(([, x]) => x);
      const t0 = Object.fromEntries(await Promise.all(nodes.map(async ([role, x]) => [role, (await status(x.admin)).timing])));
      const c0 = Object.fromEntries(nodes.map(([role, x]) => [role, cpuUs(x.child.pid)]));
      const b = await bench(s.port, op, c, n);
      const c1 = Object.fromEntries(nodes.map(([role, x]) => [role, cpuUs(x.child.pid)]));
      const t1 = Object.fromEntries(await Promise.all(nodes.map(async ([role, x]) => [role, (await status(x.admin)).timing])));
      const cpuPerOp = Object.fromEntries(nodes.map(([role]) => [role, (c1[role] - c0[role]) / n]));
      results.push({ round, setup: name, op, c, n, ...b, cpuPerOp, timing: Object.fromEntries(nodes.map(([role]) => [role, diffTiming(t0[role], t1[role])])) });
    }
  }
  if (o.strace && HAVE_STRACE) {
    for (const op of o.ops) for (const c of o.conc) for (const { name, s } of setups) {
      const n = Math.max(1000, Math.floor(o.n / 10));
      for (const role of ['primary', 'backup']) {
        const node = s.roles[role];
        if (!node) continue;
        log(`strace ${name} ${role}: ${op} -c ${c} -n ${n}`);
        const counts = await straceCounts(node.child.pid, () => bench(s.port, op, c, n));
        results.push({ strace: true, setup: name, role, op, c, n, counts });
      }
    }
  }
  for (const { name, s } of setups) {
    const p = await status(s.roles.primary.admin);
    if (p.role !== 'primary' || p.epoch !== s.epoch) throw new Error(`${name}: VIEW CHANGED during the run (epoch ${s.epoch} -> ${p.epoch}, role ${p.role})`);
  }
  const load1 = loadavg();
  report(idle, load0, load1);
  if (o.json) writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), o, idle, loadavg: { start: load0, end: load1 }, results }, null, 2));
} catch (e) {
  console.error('breakdown failed:', e?.stack ?? e);
  process.exitCode = 1;
} finally {
  for (const c of clusters) await c.stop().catch(() => {});
  clusters.length = 0;
  cleanup();
}

function median(xs) {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}
function f(x, d = 1) {
  return Number.isFinite(x) ? x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) : '-';
}

function report(idle, load0, load1) {
  console.log(`\nlockstep breakdown, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, node ${process.version}, ${cpus().length} cpus; ` +
    `${o.rounds} rounds, redis-benchmark -n ${o.n} (c=1: n/4); took ${Math.round((Date.now() - started) / 1000)} s; load average (1 min) ${load0[0].toFixed(2)} -> ${load1[0].toFixed(2)}`);
  console.log(`idle CPU, µs per second: ${Object.entries(idle).map(([k, v]) => `${k} ${f(v, 0)}`).join(', ')}`);
  console.log('\nCPU µs per op (median of the rounds), and the primary\'s / backup\'s time split (mean µs, one command followed at a time):\n');
  const cols = ['op', 'c', 'setup', 'ops/s', 'client avg µs', 'CPU/op primary', 'CPU/op backup', 'CPU/op spare', 'CPU/op primary+backup', '(primary+backup) / 1 node', 'read->frame', 'frame->ack', 'ack->reply', 'read->reply', 'backup frame->ack', 'followed'];
  console.log(`| ${cols.join(' | ')} |`);
  console.log(`|${cols.map(() => '---').join('|')}|`);
  const rows = results.filter((r) => !r.strace);
  for (const op of o.ops) for (const c of o.conc) {
    let singleTotal = NaN;
    for (const name of ['1 node', `replicated ${o.mode}`]) {
      const rs = rows.filter((r) => r.op === op && r.c === c && r.setup === name);
      if (rs.length === 0) continue;
      const cpu = (role) => median(rs.map((r) => r.cpuPerOp[role]));
      const total = median(rs.map((r) => r.cpuPerOp.primary + (r.cpuPerOp.backup ?? 0)));
      if (name === '1 node') singleTotal = total;
      const t = (role, k) => median(rs.map((r) => r.timing[role]?.[k]?.meanUs));
      const followed = median(rs.map((r) => (r.timing.primary?.cmdToReplyReplicated?.n ?? 0) + (r.timing.primary?.cmdToReplyDirect?.n ?? 0)));
      const repl = name !== '1 node';
      console.log(`| ${op} | ${c} | ${name} | ${f(median(rs.map((r) => r.rps)), 0)} | ${f(median(rs.map((r) => r.avgMs * 1000)), 0)} | ${f(cpu('primary'))} | ${repl ? f(cpu('backup')) : ''} | ${repl ? f(cpu('spare')) : ''} | ${f(total)} | ${repl ? f(total / singleTotal, 2) : ''} | ` +
        (repl ? `${f(t('primary', 'cmdToFrame'))} | ${f(t('primary', 'frameToAck'))} | ${f(t('primary', 'ackToReply'))} | ${f(t('primary', 'cmdToReplyReplicated'))} | ${f(t('backup', 'frameToAckOut'))}` : ` |  |  | ${f(t('primary', 'cmdToReplyDirect'))} | `) +
        ` | ${f(followed, 0)} |`);
    }
  }
  const st = results.filter((r) => r.strace);
  if (st.length === 0) return;
  console.log('\nSyscalls per op (strace -c -f, a separate run per row; epoll_wait = event-loop turns):\n');
  const names = ['epoll_wait', 'epoll_pwait', 'read', 'write', 'writev', 'futex', 'mprotect'];
  const present = names.filter((k) => st.some((r) => r.counts[k]));
  console.log(`| op | c | setup | process | ${present.join(' | ')} | all |`);
  console.log(`|---|---|---|---|${present.map(() => '---').join('|')}|---|`);
  for (const r of st) {
    const all = Object.entries(r.counts).filter(([k]) => k !== 'total').reduce((a, [, v]) => a + v, 0);
    console.log(`| ${r.op} | ${r.c} | ${r.setup} | ${r.role} | ${present.map((k) => f((r.counts[k] ?? 0) / r.n, 2)).join(' | ')} | ${f(all / r.n, 2)} |`);
  }
}
