// Issue 9 item 1: a snapshot stream is the state as of the moment it began, whatever writes
// happen while its pieces are taken (kv: copy-on-write at key granularity), and a recruit that
// restores the pieces one at a time ends with the same state. Both replication modes, the
// duplicate filter included.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReplicatedService, createKv, type KvCommand, type KvMachine, type KvReply, type KvChange } from '../src/guest/index.js';
import { wholeRestoreStream, wholeSnapshotStream } from '../src/guest/snapshot-stream.js';
import { Rng } from '../src/sim/rng.js';

type Kv = ReplicatedService<KvCommand, KvReply, KvChange>;

function randomWrite(rng: Rng, keys: number): KvCommand {
  const k = `k${rng.int(0, keys * 2)}`; // half the keys do not exist yet
  switch (rng.int(0, 4)) {
    case 0:
      return ['DEL', k];
    case 1:
      return ['APPEND', k, 'z'.repeat(rng.int(1, 3000))]; // some grow past the big-value size
    case 2:
      return ['INCR', `n${rng.int(0, 20)}`];
    default:
      return ['SET', k, `w${rng.u32()}`];
  }
}

function restoreFrom(pieces: readonly Uint8Array[], mode: 'rsm' | 'state-transfer'): Kv {
  const r = new ReplicatedService(createKv(), mode);
  const s = r.restoreStream();
  for (const p of pieces) s.add(p);
  s.finish();
  return r;
}

for (const mode of ['rsm', 'state-transfer'] as const) {
  test(`${mode}: the kv snapshot stream is the state at its start, whatever is written while it runs`, () => {
    const rng = new Rng(9);
    const keys = 3000;
    const p: Kv = new ReplicatedService(createKv(), mode);
    // Ten client sessions, opened with seq 1, ackedBelow 0; then one seq counter for them all.
    for (let c = 0; c < 10; c++) p.execute({ clientId: `c${c}`, seq: 1, ackedBelow: 0, command: ['DEL', 'none'] });
    let seq = 1;
    for (let i = 0; i < keys; i++) p.execute({ clientId: `c${i % 7}`, seq: ++seq, ackedBelow: seq, command: ['SET', `k${i}`, `v${i}`.repeat(1 + (i % 5))] });
    const atStart = p.digest();
    const whole = p.snapshot();
    const stream = p.snapshotStream();
    const pieces: Uint8Array[] = [];
    for (;;) {
      // Between pieces, writes: changes, deletes, appends (big values too) and new keys.
      for (let w = rng.int(0, 40); w > 0; w--) p.execute({ clientId: `c${rng.int(0, 9)}`, seq: ++seq, ackedBelow: seq, command: randomWrite(rng, keys) });
      const piece = stream.next(700);
      if (piece === null) break;
      pieces.push(piece.slice());
    }
    assert.ok(pieces.length > 20, `many pieces (${pieces.length})`);
    assert.notEqual(p.digest(), atStart, 'the state changed while the stream ran');
    const r = restoreFrom(pieces, mode);
    assert.equal(r.digest(), atStart, 'the restored state is the state at the start');
    assert.equal((r.machine as KvMachine).fullDigest(), (r.machine as KvMachine).digest(), 'the restored digest is the state\'s own');
    // The same state as the whole snapshot taken at the start.
    const w = new ReplicatedService(createKv(), mode);
    w.restore(whole);
    assert.equal(w.digest(), atStart);
    assert.equal(r.appliedEntries, w.appliedEntries);
    // A stream closed early lets go of its copies; a new one starts from the state of now.
    const early = p.snapshotStream();
    early.next(100);
    early.close();
    assert.equal(early.next(100), null);
    const now = p.digest();
    const s2 = p.snapshotStream();
    const all: Uint8Array[] = [];
    for (let piece = s2.next(4096); piece !== null; piece = s2.next(4096)) all.push(piece);
    assert.equal(restoreFrom(all, mode).digest(), now);
  });
}

test('the default stream cuts snapshot() and the default restore gathers the pieces', () => {
  const kv = createKv();
  for (let i = 0; i < 500; i++) kv.execute(['SET', `k${i}`, `v${i}`]);
  const whole = kv.snapshot();
  const s = wholeSnapshotStream(whole);
  const into = createKv();
  const r = wholeRestoreStream((b) => into.restore(b));
  let n = 0;
  for (let p = s.next(100); p !== null; p = s.next(100)) {
    r.add(p);
    n++;
  }
  assert.equal(n, Math.ceil(whole.length / 100));
  r.finish();
  assert.equal(into.digest(), kv.digest());
  const empty = wholeSnapshotStream(new Uint8Array(0));
  assert.equal(empty.next(10)?.length, 0, 'an empty snapshot is one empty piece');
  assert.equal(empty.next(10), null);
});

test('a corrupt or foreign piece is refused with a clear error', () => {
  const r = new ReplicatedService(createKv(), 'rsm');
  const s = r.restoreStream();
  assert.throws(() => s.add(Uint8Array.of(9, 0, 0)), /unknown snapshot stream version 9/);
  assert.throws(() => s.finish(), /no pieces/);
  const kv = createKv();
  const ks = kv.restoreStream();
  assert.throws(() => ks.add(Uint8Array.of(1, 2)), /not a kv snapshot piece/);
});
