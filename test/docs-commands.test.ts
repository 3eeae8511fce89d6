// Every shell command in README.md and docs/*.md, pasted as a new user would, in order, in a
// temporary copy of the checkout (issue 15). Each command is run exactly as written (with the
// one placeholder, <the primary's pid>, filled in) and checked to do what the docs say. A
// command added to the docs that this test does not know fails it: write down what it should
// do, or why it is not run here.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const HAVE_REDIS_CLI = spawnSync('redis-cli', ['--version'], { stdio: 'ignore' }).status === 0;

/** The shell commands of a markdown file: each non-comment line of its sh/bash blocks. */
function commandsOf(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/```(?:sh|bash|shell)\n([\s\S]*?)```/g)) {
    for (const line of m[1]!.split('\n')) {
      const cmd = stripComment(line).trim();
      if (cmd !== '') out.push(cmd);
    }
  }
  return out;
}

/** `cmd   # comment` -> `cmd` (a # inside quotes is not a comment). */
function stripComment(line: string): string {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === quote) quote = null;
    } else if ((c === '"' || c === "'") && (i === 0 || /[\s=(]/.test(line[i - 1]!))) quote = c; // a quote opens a word, not "primary's"
    else if (c === '#' && (i === 0 || /\s/.test(line[i - 1]!))) return line.slice(0, i);
  }
  return line;
}

const DOCS = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** Commands this test runs (below, in order). */
const RUN = new Set([
  'npm ci && npm start',
  'redis-cli -p 7001 SET greeting hello',
  'redis-cli -p 7003 ROLE',
  "kill -9 <the primary's pid>",
  './lockstep status --config .lockstep/cluster/cluster.json',
  './lockstep run examples/clockrand/clockrand.wasm 5',
  './lockstep run --listen 127.0.0.1:7301 examples/kvserver/kvserver.wasm',
  "exec 3<>/dev/tcp/127.0.0.1/7301; printf 'SET a 1\\nGET a\\n' >&3; timeout 1 cat <&3; exec 3>&-",
  './lockstep init --config cluster.json',
  './lockstep node --config cluster.json --id n1',
  './lockstep sim --seeds 200',
  './lockstep sim --seed 42',
  './lockstep sim --seeds 100 --bug staleReads',
  './lockstep sim --seeds 200 --poison',
  './lockstep sim --seeds 100 --durable-restarts',
  './lockstep sim --seed 42 --history h.jsonl',
  './lockstep check h.jsonl',
  './lockstep check examples/histories/stale-read.jsonl',
]);

/** Commands not run here, and why. */
const NOT_RUN: ReadonlyMap<string, string> = new Map([
  ['npm test', 'it is the command running this test'],
  ['LOCKSTEP_FUZZ_SCALE=100 node --test dist/test/resp.test.js dist/test/peer-codec.test.js dist/test/node-bad-input.test.js dist/test/wasm-host.test.js', 'an hour-long soak; the same files run at scale 1 in npm test'],
  ['apt-get update && apt-get install -y clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32 binaryen wabt', 'installs a toolchain (the built .wasm files are committed)'],
  ['clang-19 --target=wasm32-wasi --sysroot=/usr -O2 -o hello.wasm hello.c', 'needs the clang toolchain'],
  ['clang-19 --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor -o guest.wasm guest.c', 'needs the clang toolchain'],
  ['wasm-opt guest.wasm --asyncify --pass-arg=asyncify-imports@env.next_input -O2 -o guest.async.wasm', 'needs Debian binaryen'],
  ['etcdctl user add root && etcdctl user grant-role root root', 'production etcd setup; test/node-etcd covers an etcd with auth'],
  ['etcdctl role add lockstep && etcdctl role grant-permission lockstep readwrite --prefix=true /lockstep/', 'production etcd setup; test/node-etcd covers an etcd with auth'],
  ['etcdctl user add lockstep && etcdctl user grant-role lockstep lockstep', 'production etcd setup; test/node-etcd covers an etcd with auth'],
  ['./lockstep cluster --service examples/services/bank/bank.js', 'test/service-cluster.test.ts runs the same module on a real cluster (through ProcessCluster) and checks the command line refuses a module that cannot load'],
  ['redis-cli -p 7001 OPEN alice 100', 'test/service-cluster.test.ts calls the bank over the client port (lockstep/client); RESP is the same as redis-cli\'s'],
  ['redis-cli -p 7001 TRANSFER alice bob 10', 'as OPEN above'],
  ['./lockstep sim --service examples/services/bank/bank.js --seeds 300', '300 seeds take minutes per example; test/service-sim.test.ts runs the simulator on each example for a few seeds'],
  ['etcdctl auth enable', 'production etcd setup; test/node-etcd covers an etcd with auth'],
  ['./lockstep switchover --config cluster.json', 'needs all three nodes of that config running; test/node-switchover.test.ts runs lockstep switchover --config on a real three-node cluster (ProcessCluster) and checks its output and the roles after'],
  ['./lockstep switchover --config cluster.json --to n2', 'as above; test/node-switchover.test.ts names the target (--to, and an unknown one: E_UNKNOWN_NODE)'],
  ['./lockstep status --config cluster.json', 'as above; the status command itself is run on the npm start cluster'],
]);

test('every shell command in README.md and docs/ is run by this test or says why not', () => {
  const unknown: string[] = [];
  for (const file of DOCS) for (const c of commandsOf(file)) if (!RUN.has(c) && !NOT_RUN.has(c)) unknown.push(`${file}: ${c}`);
  assert.deepEqual(unknown, [], 'commands in the docs that no test runs: add them to RUN (and run them below) or to NOT_RUN with a reason');
});

// ---- running them ---------------------------------------------------------------------------

/** A temp copy of the checkout: the files the docs use, dist and node_modules linked. */
function sandbox(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-docs-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const name of ['dist', 'node_modules', 'examples']) symlinkSync(join(ROOT, name), join(dir, name));
  for (const name of ['package.json', 'lockstep']) copyFileSync(join(ROOT, name), join(dir, name));
  return dir;
}

interface Shell {
  readonly child: ChildProcess;
  out(): string;
  readonly done: Promise<number | null>;
}

/** `bash -c CMD` in `cwd`, in its own process group (so Ctrl-C reaches what it started). */
function sh(t: { after: (fn: () => Promise<void>) => void }, cwd: string, cmd: string): Shell {
  const child = spawn('bash', ['-c', cmd], { cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
    await done;
  });
  return { child, out: () => out, done };
}

async function until(what: string, cond: () => boolean, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Run to the end; returns exit code and output. */
async function run(t: { after: (fn: () => Promise<void>) => void }, cwd: string, cmd: string): Promise<{ code: number | null; out: string }> {
  const s = sh(t, cwd, cmd);
  const code = await s.done;
  return { code, out: s.out() };
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** The ports the documented commands use, as written. */
const DOC_PORTS = [7001, 7002, 7003, 7101, 7102, 7103, 7201, 7202, 7203, 7301, 7401, 7402, 7403, 7501, 7502, 7503, 7601, 7602, 7603];

test('the documented commands, pasted in order, do what the docs say', { timeout: 600_000 }, async (t) => {
  const busy = [];
  for (const p of DOC_PORTS) if (!(await portFree(p))) busy.push(p);
  if (busy.length > 0) return t.skip(`the documented ports ${busy.join(', ')} are in use on this machine`);
  const dir = sandbox(t);

  // README: npm ci && npm start. npm ci is how this test got here; npm start runs as written.
  const start = sh(t, dir, 'npm start');
  const status = (): string => start.out().split('Ctrl-C stops the cluster.')[1] ?? '';
  await until('npm start to show a primary and a backup', () => /primary/.test(status()) && /backup/.test(status()) && new Set(status().match(/pid \d+/g)).size >= 3);
  assert.match(start.out(), /connect: redis-cli -p 7001/);

  if (HAVE_REDIS_CLI) {
    const set = await run(t, dir, 'redis-cli -p 7001 SET greeting hello');
    assert.equal(set.code, 0);
    assert.match(set.out, /^(OK|NOTPRIMARY the primary is n\d at 127\.0\.0\.1:700\d .*)\n+$/, 'any node; a backup or spare answers NOTPRIMARY <address>');
    const role = await run(t, dir, 'redis-cli -p 7003 ROLE');
    assert.equal(role.code, 0);
    assert.match(role.out, /^(master|slave)\n/);
  } else {
    t.diagnostic('redis-cli not installed (apt-get install redis-tools): its two README commands were not run');
  }

  // kill -9 <the primary's pid>: the backup goes live; the killed node comes back as a spare.
  const primaryLine = status().split('\n').reverse().find((l) => /^n\d\s+primary /.test(l))!;
  const [, primaryId, pid] = /^(n\d)\s+primary .* pid (\d+)$/.exec(primaryLine)!;
  const kill = await run(t, dir, "kill -9 <the primary's pid>".replace("<the primary's pid>", pid!));
  assert.equal(kill.code, 0);
  await until('the killed primary to be restarted as a spare', () => new RegExp(`${primaryId} \\(pid ${pid}\\) exited \\(SIGKILL\\); starting it again as an empty spare`).test(start.out()));
  await until('another node to be primary', () => {
    const last = status().split(`${primaryId} (pid ${pid}) exited`)[1] ?? '';
    return new RegExp(`^(?!${primaryId})n\\d\\s+primary `, 'm').test(last);
  });

  const st = await run(t, dir, './lockstep status --config .lockstep/cluster/cluster.json');
  assert.equal(st.code, 0, st.out);
  assert.match(st.out, /primary/);

  // Ctrl-C stops every node.
  process.kill(-start.child.pid!, 'SIGINT');
  await start.done; // npm itself may die of the SIGINT; the cluster under it stops cleanly
  assert.match(start.out(), /stopped; no node is left running/);
  const stops = [...start.out().matchAll(/n\d \(pid \d+\) stopped \((.*?)\)/g)].map((m) => m[1]);
  assert.ok(stops.length >= 2 && stops.every((how) => how === 'code 0'), start.out().slice(-1500)); // the killed one may be between restarts

  // README and docs/WASM.md: a batch guest, replayed by the backup.
  const batch = await run(t, dir, './lockstep run examples/clockrand/clockrand.wasm 5');
  assert.equal(batch.code, 0, batch.out);
  assert.match(batch.out, /the guest exited with code 0 on n\d and on the backup n\d/);

  // A C server over TCP, and docs/WASM.md's way to talk to it.
  const server = sh(t, dir, './lockstep run --listen 127.0.0.1:7301 examples/kvserver/kvserver.wasm');
  const TALK = "exec 3<>/dev/tcp/127.0.0.1/7301; printf 'SET a 1\\nGET a\\n' >&3; timeout 1 cat <&3; exec 3>&-";
  let talk = { code: null as number | null, out: '' };
  const end = Date.now() + 180_000; // the first load instruments the guest
  while (!/^OK\nVALUE 1\n/.test(talk.out)) {
    if (Date.now() > end) throw new Error(`the kv server did not answer on 127.0.0.1:7301; last: ${JSON.stringify(talk.out)}; run: ${server.out().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 500));
    talk = await run(t, dir, TALK);
  }
  process.kill(-server.child.pid!, 'SIGINT');
  assert.equal(await server.done, 0);

  // README: one replica by hand, with the README's config.
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const config = /```json\n(\{ "cluster": "demo"[\s\S]*?)```/.exec(readme)![1]!;
  writeFileSync(join(dir, 'cluster.json'), config);
  const init = await run(t, dir, './lockstep init --config cluster.json');
  assert.equal(init.code, 0, init.out);
  const again2 = await run(t, dir, './lockstep init --config cluster.json');
  assert.equal(again2.code, 0, `run again it changes nothing: ${again2.out}`);
  const node = sh(t, dir, './lockstep node --config cluster.json --id n1');
  await until('the node to log node-start', () => /"event":"node-start"/.test(node.out()), 30_000);
  process.kill(-node.child.pid!, 'SIGTERM');
  assert.equal(await node.done, 0, node.out());

  // The simulator and the checker.
  const many = await run(t, dir, './lockstep sim --seeds 200');
  assert.equal(many.code, 0, many.out.slice(-2000));
  assert.match(many.out, /^200 passed, 0 failed/m);
  const one = await run(t, dir, './lockstep sim --seed 42');
  assert.equal(one.code, 0);
  assert.match(one.out, /^seed 42 ok .*trace [0-9a-f]+/m);
  const again = await run(t, dir, './lockstep sim --seed 42');
  assert.equal(/trace ([0-9a-f]+)/.exec(again.out)![1], /trace ([0-9a-f]+)/.exec(one.out)![1], 'same seed, same hash');
  const bug = await run(t, dir, './lockstep sim --seeds 100 --bug staleReads');
  assert.equal(bug.code, 1, 'the planted bug is caught');
  assert.match(bug.out, /seed \d+ FAILED/);
  const poison = await run(t, dir, './lockstep sim --seeds 200 --poison');
  assert.equal(poison.code, 0, poison.out);
  assert.match(poison.out, /^200 passed, 0 failed/m);
  const durable = await run(t, dir, './lockstep sim --seeds 100 --durable-restarts');
  assert.equal(durable.code, 0, durable.out);
  assert.match(durable.out, /^100 passed, 0 failed/m);
  const hist = await run(t, dir, './lockstep sim --seed 42 --history h.jsonl');
  assert.equal(hist.code, 0);
  assert.ok(existsSync(join(dir, 'h.jsonl')));
  const check = await run(t, dir, './lockstep check h.jsonl');
  assert.equal(check.code, 0, check.out);
  assert.match(check.out, /^linearizable: \d+ operations/);
  const stale = await run(t, dir, './lockstep check examples/histories/stale-read.jsonl');
  assert.equal(stale.code, 1);
  assert.match(stale.out, /not linearizable: key "greeting"/);
});
