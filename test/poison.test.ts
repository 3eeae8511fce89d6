// Poison commands against a real 3-node cluster (issue 14, items 1, 2 and 6): a query of death
// once took down each new primary in turn and lost every key. Each command here once ended a
// node (or could grow its memory without bound). Now each gets an error reply or a closed
// connection; no node dies, no failover happens, and the data written before is intact.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { LockstepClient } from '../src/client/index.js';
import { encodeCommand } from '../src/net/resp.js';
import { rawExchange } from '../src/testing/raw-exchange.js';

const MB = 1024 * 1024;
/** Small limits, so that the test can reach them quickly; the defaults are checked elsewhere. */
const PROTO_MAX_BULK_LEN = 1 * MB;
const CLIENT_INPUT_BYTES_MAX = 16 * MB;
const MAX_REPLY_BYTES = 64 * MB;

/** Raw bytes to the node; the answer until it closes or is quiet for `quietMs`. */
const exchange = (port: number, data: Buffer | string, quietMs = 1500): Promise<{ reply: string; closed: boolean }> => rawExchange(port, data, quietMs);

describe('poison commands on a 3-node cluster', { timeout: 300_000 }, () => {
  let cluster: ProcessCluster;
  let db: LockstepClient;
  let primaryPort: number;
  let pids: number[];
  let epoch: number;

  before(async () => {
    cluster = await ProcessCluster.start({
      // Generous: a million-key MGET is a second or more of work on a loaded machine, and what
      // is tested here is that nothing dies (stalls are the big-values tests' business).
      heartbeatMs: 100,
      failureTimeoutMs: 10_000,
      extra: { protoMaxBulkLen: PROTO_MAX_BULK_LEN, clientInputBytesMax: CLIENT_INPUT_BYTES_MAX, maxReplyBytes: MAX_REPLY_BYTES, maxClientConnections: 50 },
    });
    db = new LockstepClient({ nodes: cluster.clientAddresses() });
    for (let i = 0; i < 100; i++) assert.equal(await db.set(`k${i}`, `v${i}`), 'OK');
    const p = (await cluster.primary())!;
    primaryPort = cluster.node(p.id).client.port;
    epoch = p.epoch;
    pids = cluster.nodes.map((n) => n.child!.pid!);
  });
  after(async () => {
    db?.close();
    await cluster?.stop();
  });

  test('an MGET whose reply would pass 4 GiB gets an error reply (once: the primary exited)', async () => {
    const big = 'x'.repeat(4400);
    assert.equal(await db.set('big', big), 'OK');
    const args = ['MGET', ...Array.from({ length: 1_000_000 }, () => 'big')];
    const r = await exchange(primaryPort, encodeCommand(args), 15_000);
    assert.match(r.reply, /^-ERR reply of \d+ bytes exceeds maxReplyBytes \(67108864\)/);
    // Below the limit it works, on the same connection kind.
    const ok = await exchange(primaryPort, encodeCommand(['MGET', 'big', 'k1']));
    assert.equal(ok.reply, `*2\r\n$4400\r\n${big}\r\n$2\r\nv1\r\n`);
  });

  test('a value over protoMaxBulkLen, and an APPEND that would grow past it, are refused', async () => {
    const r = await exchange(primaryPort, `*3\r\n$3\r\nSET\r\n$1\r\nz\r\n$${PROTO_MAX_BULK_LEN + 1}\r\n`);
    assert.match(r.reply, /^-ERR Protocol error: invalid bulk length/);
    assert.equal(r.closed, true);
    const half = 'y'.repeat(PROTO_MAX_BULK_LEN / 2 + 10);
    assert.equal(await db.set('grow', half), 'OK');
    await assert.rejects(db.append('grow', half), /string exceeds maximum allowed size/);
    assert.equal((await db.get('grow'))?.length, half.length);
  });

  test('connections beyond maxClientConnections that reset do not end the node', async () => {
    const sockets: net.Socket[] = [];
    for (let i = 0; i < 120; i++) {
      const s = net.connect(primaryPort, '127.0.0.1');
      s.on('error', () => undefined);
      sockets.push(s);
    }
    await Promise.all(sockets.map((s) => new Promise<void>((r) => (s.readyState === 'open' ? r() : s.once('connect', () => r()).once('close', () => r())))));
    for (const s of sockets) s.resetAndDestroy();
    await new Promise((r) => setTimeout(r, 500));
    // And open/close churn well past the limit.
    for (let round = 0; round < 20; round++) {
      const batch = Array.from({ length: 60 }, () => net.connect(primaryPort, '127.0.0.1').on('error', () => undefined));
      await new Promise((r) => setTimeout(r, 20));
      for (const s of batch) s.resetAndDestroy();
    }
    assert.equal(await db.get('k7'), 'v7');
  });

  test('half-sent bulks over many connections are bounded by clientInputBytesMax in all', async () => {
    // Each connection sends most of a 1 MiB value and stops; the node's total budget is 16 MiB.
    const header = `*3\r\n$3\r\nSET\r\n$1\r\nh\r\n$${PROTO_MAX_BULK_LEN}\r\n`;
    const body = Buffer.alloc(PROTO_MAX_BULK_LEN - 1000, 0x61);
    const results = await Promise.all(Array.from({ length: 24 }, () => exchange(primaryPort, Buffer.concat([Buffer.from(header), body]), 3000)));
    const refused = results.filter((r) => /client input buffers are full/.test(r.reply));
    assert.ok(refused.length >= 24 - CLIENT_INPUT_BYTES_MAX / PROTO_MAX_BULK_LEN, `${refused.length} of 24 refused`);
    assert.ok(refused.every((r) => r.closed));
    // Once they are gone, the budget is free again: a whole value goes through.
    assert.equal(await db.set('after-budget', 'a'.repeat(PROTO_MAX_BULK_LEN)), 'OK');
  });

  test('afterwards: every node alive, no failover, every key intact', async () => {
    for (const pid of pids) assert.doesNotThrow(() => process.kill(pid, 0), `pid ${pid} is alive`);
    const statuses = await cluster.statuses();
    const seen = JSON.stringify(statuses.map((s) => [s?.id, s?.role, s?.epoch]));
    assert.ok(statuses.every((s) => s !== null), seen);
    assert.ok(statuses.every((s) => s!.role === 'spare' || s!.epoch === epoch), `no view change: ${seen}`);
    for (let i = 0; i < 100; i++) assert.equal(await db.get(`k${i}`), `v${i}`);
  });
});
