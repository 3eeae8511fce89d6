// The node-facing commands as a user runs them: lockstep node refusing a bad config,
// lockstep status, the admin port's /status and /metrics, and lockstep cluster (npm start)
// starting three nodes and leaving none behind on Ctrl-C.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parsePrometheusText } from '../src/testing/prom-text.js';
import { ProcessCluster, freePorts } from '../src/testing/process-cluster.js';
import { freeBasePort, spawnCli } from '../src/testing/cli-child.js';
import { LockstepClient } from '../src/client/index.js';

const bin = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

function run(args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
    });
  });
}

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

test('lockstep node refuses a bad config before starting, naming the field', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-cfg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'c.json');
  const node = (id: string, p: number) => ({ id, peer: `127.0.0.1:${p}`, client: `127.0.0.1:${p + 1}`, admin: `127.0.0.1:${p + 2}` });
  const cases: [unknown, RegExp][] = [
    [{ cluster: 'c', arbiter: 'file:a', service: { kind: 'kv', mode: 'rsm' }, nodes: [node('n1', 9000)], heartbeatMs: 100, failureTimeoutMs: 200 }, /E_CONFIG_INVALID.*failureTimeoutMs/],
    [{ cluster: 'c', arbiter: 'file:a', service: { kind: 'kv', mode: 'rsm' }, nodes: [node('n1', 9000), node('n1', 9010)] }, /E_CONFIG_INVALID.*nodes\[1\]\.id/],
    [{ cluster: 'c', arbiter: 'file:a', service: { kind: 'kv', mode: 'rsm' }, nodes: [node('n1', 9000)], colour: 'red' }, /E_CONFIG_INVALID.*unknown key colour/],
    [{ cluster: 'c', arbiter: 'etcd://127.0.0.1:2379', etcd: { authFile: 'nope' }, service: { kind: 'kv', mode: 'rsm' }, nodes: [node('n1', 9000)] }, /E_CONFIG_INVALID.*etcd\.authFile: cannot read/],
  ];
  for (const [config, pattern] of cases) {
    writeFileSync(path, JSON.stringify(config));
    const r = await run(['node', '--config', path, '--id', 'n1']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, pattern);
  }
  writeFileSync(path, '{ "cluster": ');
  assert.match((await run(['node', '--config', path, '--id', 'n1'])).stderr, /E_CONFIG_PARSE/);
  writeFileSync(path, JSON.stringify(cases[0]![0]).replace('"failureTimeoutMs":200', '"failureTimeoutMs":900'));
  assert.match((await run(['node', '--config', path, '--id', 'n7'])).stderr, /E_UNKNOWN_NODE.*valid ids: n1/);
});

test('lockstep node refuses a maxmemory its JS heap cannot hold, naming the flag that fixes it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-cfg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'c.json');
  const config = (extra: object): string => JSON.stringify({ cluster: 'c', arbiter: 'file:a', service: { kind: 'kv', mode: 'rsm' }, nodes: [{ id: 'n1', peer: '127.0.0.1:9000', client: '127.0.0.1:9001', admin: '127.0.0.1:9002' }], ...extra });
  const node = (heapMb: number): Promise<{ code: number; stderr: string }> =>
    new Promise((resolve) => {
      execFile(process.execPath, [`--max-old-space-size=${heapMb}`, bin, 'node', '--config', path, '--id', 'n1'], { timeout: 30_000 }, (err, _out, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stderr });
      });
    });
  // The default maxmemory (256 MiB) in a 256 MiB heap: refused before anything opens (values
  // of 64 KiB and more live on the JS heap: a state of them would not fit).
  writeFileSync(path, config({}));
  const small = await node(256);
  assert.equal(small.code, 2, small.stderr);
  assert.match(small.stderr, /^error E_CONFIG_INVALID: maxmemory 256 MiB needs a JS heap of 384 MiB \(1.5x\), and this node's is \d+ MiB: start node with --max-old-space-size=384 .*or lower maxmemory to \d+ MiB or less/m);
  // 64 MiB fits: the node gets past the check (and stops at the next thing: no arbiter yet).
  writeFileSync(path, config({ maxmemory: 64 * 2 ** 20 }));
  const fits = await node(256);
  assert.equal(fits.code, 2, fits.stderr);
  assert.doesNotMatch(fits.stderr, /JS heap/);
  assert.match(fits.stderr, /lockstep init/);
});

test('lockstep node refuses a port that is taken', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-cfg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const net = await import('node:net');
  const [p1, p2, p3] = await freePorts(3);
  const blocker = net.createServer().listen(p2!, '127.0.0.1');
  t.after(() => blocker.close());
  const path = join(dir, 'c.json');
  writeFileSync(path, JSON.stringify({ cluster: 'c', arbiter: 'file:a', service: { kind: 'kv', mode: 'rsm' }, nodes: [{ id: 'n1', peer: `127.0.0.1:${p1}`, client: `127.0.0.1:${p2}`, admin: `127.0.0.1:${p3}` }] }));
  assert.equal((await run(['init', '--config', path])).code, 0);
  const r = await run(['node', '--config', path, '--id', 'n1']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /E_LISTEN.*client address 127\.0\.0\.1:\d+: EADDRINUSE/);
});

test('/status, /metrics and lockstep status describe the cluster', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const client = new LockstepClient({ nodes: cluster.clientAddresses() });
  t.after(() => client.close());
  for (let i = 0; i < 20; i++) await client.set(`k${i}`, 'v');
  const primary = (await cluster.primary())!;
  const p = cluster.node(primary.id);
  const status = JSON.parse((await get(p.admin.port, '/status')).body) as Record<string, unknown>;
  for (const key of ['id', 'role', 'epoch', 'view', 'logIndex', 'ackedIndex', 'appliedIndex', 'lag']) assert.ok(key in status, key);
  assert.equal(status.role, 'primary');
  assert.ok((status.logIndex as number) >= 20);
  const metrics = (await get(p.admin.port, '/metrics')).body;
  parsePrometheusText(metrics); // throws on a line that is not Prometheus text
  assert.match(metrics, /^lockstep_role\{role="primary"\} 1$/m);
  assert.match(metrics, /^# TYPE lockstep_client_commands_total counter$/m);
  assert.equal((await get(p.admin.port, '/nope')).status, 404);
  const r = await run(['status', '--config', cluster.configPath]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`arbiter view \\{epoch ${primary.view.epoch}, primary ${primary.id}`));
  assert.match(r.stdout, new RegExp(`^${primary.id} +primary`, 'm'));
  assert.match(r.stdout, /^n\d +backup/m);
});

test('lockstep cluster starts three nodes, serves, and leaves no process on Ctrl-C', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-cluster-'));
  const basePort = await freeBasePort();
  const { child, output, exited } = spawnCli(t, ['cluster', '--dir', dir, '--base-port', String(basePort)]);
  t.after(async () => rmSync(dir, { recursive: true, force: true })); // after the kill above
  const deadline = Date.now() + 30_000;
  const ready = (): boolean => /primary/.test(output().split('kill -9')[1] ?? '') && /backup/.test(output().split('kill -9')[1] ?? '') && new Set(output().match(/pid \d+/g)).size >= 3;
  while (!ready() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.match(output(), /connect: redis-cli -p \d+/);
  // The dashboard's address is printed, and answers with the page.
  const dash = new RegExp(`dashboard: http://127\\.0\\.0\\.1:${basePort + 201}/ `).exec(output());
  assert.ok(dash, output());
  assert.match((await get(basePort + 201, '/')).body, /<title>lockstep dashboard<\/title>/);
  const client = new LockstepClient({ nodes: [1, 2, 3].map((i) => `127.0.0.1:${basePort + i}`) });
  try {
    assert.equal(await client.set('hello', 'world'), 'OK');
    assert.equal(await client.get('hello'), 'world');
  } finally {
    client.close();
  }
  const pids = [...output().matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
  assert.ok(pids.length >= 3, output());
  child.kill('SIGINT');
  assert.equal(await exited, 0);
  assert.match(output(), /stopped; no node is left running/);
  for (const pid of new Set(pids)) {
    assert.throws(() => process.kill(pid, 0), /ESRCH/, `node pid ${pid} is gone`);
  }
});
