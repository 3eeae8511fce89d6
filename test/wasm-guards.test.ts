// Determinism guards of the WebAssembly hypervisor: NaN bits agree between replicas in
// separate processes; out of memory and stack overflow end the guest as traps, the same way
// on the replay, and a node whose guest traps stops (fail-stop). Modules with shared memory,
// threads or relaxed SIMD are refused by loadModule (test/wasm-module.test.ts).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModule } from '../src/wasm/module.js';
import { recordLocally, replayLocally } from '../src/wasm/local.js';
import { ProcessCluster, freePorts } from '../src/testing/process-cluster.js';
import { runCli, spawnCli } from '../src/testing/cli-child.js';

const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const fixture = (name: string): string => here(`../../test/fixtures/wasm/${name}`);

function tempDir(t: { after: (f: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-guard-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('wasm guards: out of memory is a trap at the same call on the primary and the backup (same limit)', async (t) => {
  const loaded = await loadModule(readFileSync(fixture('oom.wasm')), { maxMemoryPages: 64 });
  assert.equal(loaded.memory.maximumPages, 64);
  const rec = await recordLocally(loaded, { args: ['oom'], root: tempDir(t) });
  assert.equal(rec.end.kind, 'trap');
  assert.match((rec.end as { message: string }).message, /unreachable/);
  assert.equal(rec.calls, 4, 'grows 1 → 17 → 33 → 49, then 65 > 64 fails');
  const rep = await replayLocally(loaded, { args: ['oom'], root: tempDir(t) }, rec.entries);
  assert.deepEqual(rep.end, rec.end);
  assert.equal(rep.calls, rec.calls);
  assert.equal(rep.memoryHash, rec.memoryHash);
});

test('wasm guards: stack overflow is a trap, not a host crash', async (t) => {
  const loaded = await loadModule(readFileSync(fixture('deep.wasm')), { maxMemoryPages: 16 });
  const rec = await recordLocally(loaded, { args: ['deep'], root: tempDir(t) });
  assert.equal(rec.end.kind, 'trap');
  assert.match((rec.end as { message: string }).message, /stack overflow/);
});

test('wasm guards: a node whose guest traps stops with a fail-stop record and exit code 3', { timeout: 60_000 }, async (t) => {
  const dir = tempDir(t);
  const [peer, client, admin] = await freePorts(3);
  const config = join(dir, 'cluster.json');
  writeFileSync(config, JSON.stringify({
    cluster: 'oom', arbiter: 'file:arbiter',
    service: { kind: 'wasm', module: fixture('oom.wasm'), listen: [], memoryLimitMb: 4 },
    nodes: [{ id: 'n1', peer: `127.0.0.1:${peer}`, client: `127.0.0.1:${client}`, admin: `127.0.0.1:${admin}` }],
  }));
  assert.equal((await runCli(['init', '--config', config])).code, 0);
  const node = spawnCli(t, ['node', '--config', config, '--id', 'n1']);
  const code = await node.exited;
  const out = node.output();
  assert.equal(code, 3, out);
  const stop = out.split('\n').filter((l) => l.includes('"fail-stop"'));
  assert.equal(stop.length, 1, out);
  assert.match(stop[0]!, /guest trap: unreachable/);
});

test('wasm guards: 10^6 iterations making NaNs give the same memory on primary and backup processes', { timeout: 120_000 }, async (t) => {
  // The guest runs its loop in one go (hundreds of ms on a loaded machine): a failure timeout
  // well beyond that keeps n1 primary, so its log is the one that holds the guest's output.
  const c = await ProcessCluster.start({
    nodes: 2,
    failureTimeoutMs: 3000,
    service: { kind: 'wasm', module: here('../../examples/nanloop/nanloop.wasm'), args: ['1000000'], listen: [], memoryLimitMb: 64 },
  });
  t.after(() => c.stop());
  let hashes: string[] = [];
  await c.waitFor(async () => {
    const all = await c.statuses();
    if (!all.every((s) => s?.guest?.state === 'exited')) return false;
    hashes = all.map((s) => s!.guest!.memoryHash!);
    assert.deepEqual(all.map((s) => s!.guest!.exitCode), [0, 0]);
    assert.deepEqual(all.map((s) => s!.guest!.mode).sort(), ['record', 'replay']);
    return true;
  }, 60_000, 'the guest to exit on both replicas');
  assert.equal(hashes[0], hashes[1], 'the NaN bits in memory differ between the replicas');
  assert.match(c.log('n1'), /nanloop: 1000000 iterations/);
});
