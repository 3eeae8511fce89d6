// The wasm front's side of recruiting by snapshot, in one process with a stand-in for the node
// and its core: a primary front snapshotted while clients are busy, and a recruit front that
// installs the snapshot and is then fed entries that overlap it (as appends the primary held
// back under flow control would: they reach the core after the snapshot's index but carry
// records the snapshot already holds). Also: the snapshot formats ('S', 'L', 'X') and how a
// recruit answers a bad one.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClusterConfig, WasmServiceConfig } from '../src/node/config.js';
import type { FrontHost } from '../src/node/front.js';
import { WasmFront } from '../src/node/wasm-front.js';
import { NO_VIEW, type Input, type Replica } from '../src/core/index.js';
import { LineClient } from '../src/testing/line-client.js';
import { freePorts } from '../src/testing/process-cluster.js';

const kvserver = fileURLToPath(new URL('../../examples/kvserver/kvserver.wasm', import.meta.url));

/** A node stand-in: a log of appended payloads, flow control always open, outputs released at once. */
class FakeNode implements FrontHost {
  // No nodes listed: a bootstrap primary does not wait for a backup to start its guest.
  readonly config = { nodes: [] } as unknown as ClusterConfig;
  readonly knownView = NO_VIEW;
  readonly appended: Uint8Array[] = [];
  readonly failures: string[] = [];
  readonly events: { event: string; fields: Record<string, unknown> }[] = [];
  front: WasmFront | null = null;
  readonly replica: Replica;

  constructor(readonly id: string, role: 'primary' | 'spare') {
    // Just what canAppend reads: the role, no switchover, and no followers (so no flow control).
    this.replica = { role, followers: new Map(), switchover: null } as unknown as Replica;
  }

  input(i: Input): void {
    if (i.type === 'append') this.appended.push(i.payload);
    if (i.type === 'hold') queueMicrotask(() => this.front?.release([i.outputId]));
  }

  scheduleFlush(): void {}

  log(_level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void {
    this.events.push({ event, fields });
  }

  failStop(reason: string): void {
    this.failures.push(reason);
  }
}

function svc(t: TestContext, port: number): WasmServiceConfig {
  const guestDir = mkdtempSync(join(tmpdir(), 'lockstep-front-'));
  t.after(() => rmSync(guestDir, { recursive: true, force: true }));
  return { kind: 'wasm', module: kvserver, args: ['--persist', 'kv.log'], env: [], listen: [{ host: '127.0.0.1', port }], memoryLimitMb: 64, guestDir };
}

async function front(t: TestContext, node: FakeNode, port: number): Promise<WasmFront> {
  const f = new WasmFront(node, svc(t, port));
  node.front = f;
  t.after(() => f.stop());
  await f.start();
  return f;
}

const guest = (f: WasmFront): Record<string, unknown> => f.status().guest as Record<string, unknown>;

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test("wasm front: a recruit restores the primary's snapshot and skips the records it holds already", { timeout: 60_000 }, async (t) => {
  const [port] = await freePorts(1);
  const pn = new FakeNode('a', 'primary');
  const primary = await front(t, pn, port!);
  primary.role('primary', { epoch: 1, primary: 'a', backups: [] }, 'test');
  const addr = { host: '127.0.0.1', port: port! };
  const clients = await Promise.all([0, 1, 2, 3].map(() => LineClient.connectRetry(addr, 10_000)));
  t.after(() => clients.forEach((c) => c.close()));
  for (const [i, c] of clients.entries()) assert.equal(await c.request(`SET k${i} first`), 'OK');

  // Requests in flight: the guest may be between reading some and answering them.
  const before = pn.appended.length;
  const replies = clients.map((c, i) => c.request(`SET k${i} second`));
  await until(() => pn.appended.length > before, 'the guest to handle some of them');
  const index = pn.appended.length; // the core's last index
  const snap = primary.takeSnapshot();
  assert.equal(snap[0], 0x53, 'a guest snapshot');
  assert.equal(guest(primary).logBytes, 0, 'no log kept');

  const rn = new FakeNode('b', 'spare');
  const recruit = await front(t, rn, port!);
  recruit.installSnapshot(index, snap);
  assert.deepEqual(rn.failures, []);
  assert.equal((guest(recruit).restoredFrom as { kind: string }).kind, 'snapshot');
  assert.ok(rn.events.some((e) => e.event === 'guest-restore' && e.fields.from === 'snapshot'));

  assert.deepEqual(await Promise.all(replies), ['OK', 'OK', 'OK', 'OK']);
  for (const [i, c] of clients.entries()) assert.equal(await c.request(`APPEND k${i} +`), String('second+'.length));
  // From two entries before the snapshot's index: their records are in the snapshot already.
  let fed = index - 2;
  const feed = (): void => {
    recruit.apply(pn.appended.slice(fed).map((payload, k) => ({ index: fed + k + 1, payload })));
    fed = pn.appended.length;
  };
  feed();
  await until(() => {
    feed();
    return guest(recruit).calls === guest(primary).calls && guest(recruit).backlog === 0;
  }, 'the recruit to catch up');
  assert.equal(guest(recruit).memoryHash, guest(primary).memoryHash);
  assert.equal(guest(recruit).outputDigest, guest(primary).outputDigest);
  assert.equal(guest(recruit).hostState, guest(primary).hostState);
  assert.deepEqual(rn.failures, []);
});

test('wasm front: snapshot formats: no guest yet is an empty log; a failed or unknown snapshot stops the recruit', async (t) => {
  const [port] = await freePorts(1);
  const idle = await front(t, new FakeNode('a', 'primary'), port!);
  const empty = idle.takeSnapshot();
  assert.deepEqual([...empty], [0x4c, 0], "'L' and no entries");

  const rn = new FakeNode('b', 'spare');
  const recruit = await front(t, rn, port!);
  recruit.installSnapshot(0, empty);
  assert.equal((guest(recruit).restoredFrom as { kind: string }).kind, 'log');
  assert.equal(guest(recruit).state, 'running');
  recruit.installSnapshot(0, new Uint8Array([0x58, ...Buffer.from('no room')]));
  assert.match(rn.failures.at(-1)!, /could not snapshot its guest: no room/);
  recruit.installSnapshot(0, new Uint8Array([0x01, 2, 3]));
  assert.match(rn.failures.at(-1)!, /unknown format tag 1/);
  recruit.installSnapshot(0, new Uint8Array([0x53, 2, 3]));
  assert.match(rn.failures.at(-1)!, /cannot restore the primary's guest snapshot: corrupt/);
  // The streamed form ('s'), whole or piece by piece: a damaged stream stops the recruit too.
  recruit.installSnapshot(0, new Uint8Array([0x73, 0x68, 3, 1, 2, 3, 0x65, 32, ...new Uint8Array(32)]));
  assert.match(rn.failures.at(-1)!, /cannot restore the primary's guest snapshot: corrupt wasm guest snapshot/);
  const r = recruit.restoreStream();
  r.add(new Uint8Array([0x73, 0x6d, 200]));
  r.add(new Uint8Array([1]));
  r.finish();
  assert.match(rn.failures.at(-1)!, /cannot restore the primary's guest snapshot: corrupt wasm guest snapshot stream: (frame m before the header|.*truncated)/);
});
