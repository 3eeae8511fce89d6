// Machine-level fault tolerance with real processes: an unmodified WASI program (the C
// kvserver in examples/) replicated by record and replay on a cluster of `lockstep node`
// children, with kill -9, a cut logging channel, and memory hashes compared across replicas.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { ProcessCluster, freePorts } from '../src/testing/process-cluster.js';
import { freeBasePort, spawnCli } from '../src/testing/cli-child.js';
import { examplePath, kvserverCluster, quiesced } from '../src/testing/wasm-cluster.js';
import { LineClient } from '../src/testing/line-client.js';


test('wasm cluster: after a workload primary and backup have the same memory, output and host state', { timeout: 120_000 }, async (t) => {
  const { c, addr } = await kvserverCluster();
  t.after(() => c.stop());
  const clients = await Promise.all([0, 1, 2, 3].map(() => LineClient.connectRetry(addr, 20_000)));
  t.after(() => clients.forEach((x) => x.close()));
  await Promise.all(clients.map(async (cl, i) => {
    for (let k = 0; k < 50; k++) {
      assert.equal(await cl.request(`SET c${i}k${k % 7} value ${i} ${k}`), 'OK');
      assert.match(await cl.request(`INCR n${i}`), /^\d+$/);
      assert.match(await cl.request(`GET c${i}k${k % 7}`), /^VALUE value /);
    }
  }));
  assert.equal(await clients[0]!.request('COUNT'), String(4 * 7 + 4));
  const [p, b] = await quiesced(c);
  assert.ok(p.guest!.calls > 600, `the guest made ${p.guest!.calls} logged calls`);
  assert.equal(b.guest!.memoryHash, p.guest!.memoryHash, 'memory hashes differ');
  assert.equal(b.guest!.outputDigest, p.guest!.outputDigest, 'output digests differ');
  assert.equal(b.guest!.hostState, p.guest!.hostState, 'host states differ');
  assert.equal(b.guest!.mode, 'replay');
});

test('wasm cluster: kill -9 the primary mid-workload; the backup goes live with every acknowledged update', { timeout: 120_000 }, async (t) => {
  const { c, addr } = await kvserverCluster();
  t.after(() => c.stop());
  const acked = new Map<string, number>();
  let stop = false;
  const writer = async (w: number): Promise<void> => {
    let cl: LineClient | null = null;
    for (let i = 0; !stop; i++) {
      try {
        cl ??= await LineClient.connectRetry(addr, 20_000);
        const key = `w${w}`;
        const reply = await cl.request(`SET ${key} ${i}`);
        if (reply === 'OK') acked.set(key, i);
      } catch {
        cl?.close();
        cl = null; // reset by the cut-over: reconnect to whichever node now listens
      }
    }
    cl?.close();
  };
  const writers = [0, 1, 2].map((w) => writer(w));
  await c.waitFor(() => [...acked.values()].every((v) => v > 20) && acked.size === 3, 30_000, 'some acknowledged writes');
  const before = (await c.primary())!;
  await c.kill9(before.id);
  await c.waitFor(async () => {
    const p = await c.primary();
    return p !== null && p.id !== before.id && p.guest?.mode === 'record';
  }, 30_000, 'the backup to go live');
  // Keep writing through the failover for a moment, then check every acknowledged value.
  const afterCount = new Map(acked);
  await c.waitFor(() => [...acked.entries()].every(([k, v]) => v > (afterCount.get(k) ?? 0) + 5), 30_000, 'writes after the failover');
  stop = true;
  await Promise.all(writers);
  const cl = await LineClient.connectRetry(addr, 20_000);
  t.after(() => cl.close());
  for (const [key, value] of acked) {
    const got = await cl.request(`GET ${key}`);
    // A write may have landed without its OK reaching the client (the reply was cut), so the
    // value is the last acknowledged one or one written after it, never older.
    const m = /^VALUE (\d+)$/.exec(got);
    assert.ok(m, `${key}: ${got}`);
    assert.ok(Number(m[1]) >= value, `${key}: acknowledged ${value} but the new primary has ${m[1]}`);
  }
});

test('wasm cluster: no byte of output reaches a client before the backup has acked the log up to it', { timeout: 120_000 }, async (t) => {
  const { c, addr } = await kvserverCluster({ peerProxies: true, failureTimeoutMs: 8000 });
  t.after(() => c.stop());
  const cl = await LineClient.connectRetry(addr, 20_000);
  t.after(() => cl.close());
  assert.equal(await cl.request('SET before 1'), 'OK');
  const primary = (await c.primary())!;
  const backupId = primary.view.backup!;
  // Frames to the backup are dropped: it cannot ack, so nothing the guest sends may go out.
  c.peerProxy(backupId).cut = 'to-target';
  let reply: string | null = null;
  const pending = cl.request('SET during 2').then((r) => (reply = r));
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(reply, null, 'the reply went out before the backup acked its record');
  const held = (await c.status(primary.id))!;
  assert.ok(held.guest!.heldOutputs >= 1, `held outputs: ${held.guest!.heldOutputs}`);
  c.peerProxy(backupId).heal();
  await pending;
  assert.equal(reply, 'OK');
  assert.equal(await cl.request('GET during'), 'VALUE 2');
});

test('lockstep run: a batch guest runs on a local cluster, prints once, and ends the run with its exit code', { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-run-'));
  const basePort = await freeBasePort();
  const run = spawnCli(t, ['run', '--dir', dir, '--base-port', String(basePort), '--no-respawn', examplePath('clockrand/clockrand.wasm'), '3']);
  t.after(async () => rmSync(dir, { recursive: true, force: true })); // after the kill above
  const code = await run.exited;
  const out = run.output();
  assert.equal(code, 0, out);
  assert.equal(out.match(/^iter 2 /gm)?.length, 1, `the guest's output appears exactly once:\n${out}`);
  assert.match(out, /the guest exited with code 0 on n\d and on the backup n\d/);
  assert.match(out, /stopped; no node is left running/);
});

test('wasm cluster: a primary whose guest address is taken waits for it (logging), and serves once it is free', { timeout: 120_000 }, async (t) => {
  const [port] = await freePorts(1);
  // Someone else holds the guest's address (on one machine: a deposed primary not yet stopped).
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(port, '127.0.0.1', () => r()));
  let blocked = true;
  t.after(() => (blocked ? new Promise<void>((r) => blocker.close(() => r())) : undefined));
  const c = await ProcessCluster.start({
    nodes: 1,
    service: { kind: 'wasm', module: examplePath('kvserver/kvserver.wasm'), listen: [`127.0.0.1:${port}`], memoryLimitMb: 64 },
  });
  t.after(() => c.stop());
  await c.waitFor(() => c.log('n1').includes('"guest-listen-waiting"'), 30_000, 'n1 to log that the address is in use');
  assert.equal((await c.status('n1'))?.role, 'primary', 'the node waits; it does not give up the service');
  await new Promise<void>((r) => blocker.close(() => r()));
  blocked = false;
  const cl = await LineClient.connectRetry({ host: '127.0.0.1', port: port! }, 30_000);
  t.after(() => cl.close());
  assert.equal(await cl.request('SET k v'), 'OK');
  assert.match(c.log('n1'), /"guest-listening"/);
});
