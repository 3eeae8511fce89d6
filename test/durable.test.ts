// The durable store (src/node/durable.ts) on a real disk: what is written comes back; a write
// torn by a crash at the very end of the log is cut off and reported; damage anywhere else, in
// a snapshot or in meta.json is refused with E_DURABLE_CORRUPT naming the file and the offset; a
// full disk is E_DURABLE_IO naming the file; a second process on the same dataDir is refused.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DurableStore, type DurableMeta } from '../src/node/durable.js';
import { isLockstepError } from '../src/errors.js';
import { createReplica, step } from '../src/core/replica.js';
import { DEFAULT_TIMING } from '../src/core/types.js';

const META: DurableMeta = { format: 1, cluster: 'c', node: 'n1', arbiterId: 'a', view: { epoch: 3, primary: 'n1', backups: ['n2'] } };
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

function flip(buf: Buffer, at: number, mask: number): void {
  buf.writeUInt8(buf.readUInt8(at) ^ mask, at);
}

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-durable-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A fresh store with entries 1..n committed (one commit per `batch` entries), closed. */
function written(dir: string, n: number, batch = 1, snapshotAt?: number): void {
  const s = new DurableStore(dir);
  s.lock();
  assert.equal(s.open().meta, null, 'a fresh directory');
  s.reset(0, []);
  s.writeMeta(META);
  for (let i = 1; i <= n; i++) {
    s.append([{ index: i, payload: bytes(`entry ${i}`) }], 3);
    if (i % batch === 0) s.commit();
    if (i === snapshotAt) s.snapshot([bytes(`state at ${i}`), bytes(' (second piece)')]);
  }
  s.commit();
  s.close();
}

function reopen(dir: string) {
  const s = new DurableStore(dir);
  s.lock();
  try {
    return s.open();
  } finally {
    s.close();
  }
}

function segments(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.startsWith('log-')).sort();
}

function codeOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    if (isLockstepError(e)) return { code: e.code, message: e.message };
    throw e;
  }
  assert.fail('expected a LockstepError');
}

test('round trip: meta, snapshot pieces and the entries after it come back', (t) => {
  const dir = tempDir(t);
  written(dir, 40, 3, 25);
  const r = reopen(dir);
  assert.deepEqual(r.meta, META);
  assert.equal(r.snapshotIndex, 25);
  assert.deepEqual(r.snapshotPieces.map(text), ['state at 25', ' (second piece)']);
  assert.deepEqual(r.entries.map((e) => e.index), Array.from({ length: 15 }, (_, i) => 26 + i));
  assert.equal(text(r.entries[0]!.payload), 'entry 26');
  assert.equal(r.lastIndex, 40);
  assert.deepEqual(r.warnings, []);
  // The compaction deleted the log it covers.
  assert.ok(segments(dir).every((n) => Number(n.split('-')[2]!.slice(0, 20)) > 25), segments(dir).join(' '));
  // Appending after a reopen goes on from the last index.
  const s = new DurableStore(dir);
  s.lock();
  s.open();
  s.append([{ index: 41, payload: bytes('entry 41') }], 4);
  s.commit();
  s.close();
  assert.equal(reopen(dir).lastIndex, 41);
});

test('a reset (a recruit\'s snapshot) supersedes everything before it, and a recruit\'s snapshot written piece by piece comes back', (t) => {
  const dir = tempDir(t);
  written(dir, 10);
  const s = new DurableStore(dir);
  s.lock();
  s.open();
  s.snapshotPiece(7, 0, bytes('a'), false);
  s.snapshotPiece(7, 1, bytes('b'), true);
  s.append([{ index: 8, payload: bytes('new 8') }], 5);
  s.commit();
  s.close();
  const r = reopen(dir);
  assert.equal(r.snapshotIndex, 7);
  assert.deepEqual(r.snapshotPieces.map(text), ['a', 'b']);
  assert.deepEqual(r.entries.map((e) => text(e.payload)), ['new 8'], 'the old entries 8..10 are gone');
});

test('a torn last record is cut off, with a warning naming the file and the offset', (t) => {
  const dir = tempDir(t);
  written(dir, 5);
  const seg = join(dir, segments(dir).at(-1)!);
  const size = statSync(seg).size;
  truncateSync(seg, size - 3); // the last record's body cut short
  const r = reopen(dir);
  assert.equal(r.lastIndex, 4);
  assert.equal(r.warnings.length, 1);
  assert.match(r.warnings[0]!, new RegExp(`${seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cut at offset \\d+`));
  assert.ok(statSync(seg).size < size - 3, 'the file was cut');
  // Zeros at the end (a crash that extended the file) are a torn write too.
  appendFileSync(seg, Buffer.alloc(100));
  const z = reopen(dir);
  assert.equal(z.lastIndex, 4);
  assert.match(z.warnings[0]!, /zeros/);
});

test('a bad CRC in a middle record is refused: E_DURABLE_CORRUPT naming the file and the offset', (t) => {
  const dir = tempDir(t);
  written(dir, 5);
  const seg = join(dir, segments(dir).at(-1)!);
  const buf = readFileSync(seg);
  flip(buf, 8 + 12 + 12 + 2, 0xff); // inside entry 1's payload
  writeFileSync(seg, buf);
  const e = codeOf(() => reopen(dir));
  assert.equal(e.code, 'E_DURABLE_CORRUPT');
  assert.ok(e.message.includes(seg), e.message);
  assert.match(e.message, /at offset 8: record CRC mismatch/);
  // A bad CRC in the very last record is a torn write, not damage.
  written(dir + '-b', 5);
  t.after(() => rmSync(dir + '-b', { recursive: true, force: true }));
  const seg2 = join(dir + '-b', segments(dir + '-b').at(-1)!);
  const b2 = readFileSync(seg2);
  flip(b2, b2.length - 1, 0xff);
  writeFileSync(seg2, b2);
  assert.equal(reopen(dir + '-b').lastIndex, 4);
});

test('garbage in a record header before the end is refused', (t) => {
  const dir = tempDir(t);
  written(dir, 5);
  const seg = join(dir, segments(dir).at(-1)!);
  const buf = readFileSync(seg);
  flip(buf, 8, 0x01); // entry 1's length: its complement no longer matches
  writeFileSync(seg, buf);
  const e = codeOf(() => reopen(dir));
  assert.equal(e.code, 'E_DURABLE_CORRUPT');
  assert.match(e.message, /at offset 8: bad record header/);
});

test('a corrupt snapshot or meta.json is refused, naming the file', (t) => {
  const dir = tempDir(t);
  written(dir, 10, 1, 6);
  const snap = join(dir, readdirSync(dir).find((n) => n.startsWith('snap-'))!);
  const buf = readFileSync(snap);
  flip(buf, 20 + 12, 0xff);
  writeFileSync(snap, buf);
  const e = codeOf(() => reopen(dir));
  assert.equal(e.code, 'E_DURABLE_CORRUPT');
  assert.ok(e.message.includes(snap), e.message);
  assert.match(e.message, /piece 0: CRC mismatch/);
  flip(buf, 20 + 12, 0xff);
  writeFileSync(snap, buf.subarray(0, buf.length - 4)); // its end marker cut
  assert.equal(codeOf(() => reopen(dir)).code, 'E_DURABLE_CORRUPT');
  writeFileSync(snap, buf);
  assert.equal(reopen(dir).lastIndex, 10);
  writeFileSync(join(dir, 'meta.json'), '{"format": 1, "clu');
  const m = codeOf(() => reopen(dir));
  assert.equal(m.code, 'E_DURABLE_CORRUPT');
  assert.match(m.message, /meta\.json at offset 0: not valid JSON/);
});

test('an entry missing between segments is refused', (t) => {
  const dir = tempDir(t);
  written(dir, 10);
  const s = new DurableStore(dir);
  s.lock();
  s.open(); // the next commit opens a new segment at 11
  s.append([{ index: 11, payload: bytes('x') }], 3);
  s.commit();
  s.close();
  assert.equal(segments(dir).length, 2);
  const first = join(dir, segments(dir)[0]!);
  // Cut the first segment after entry 5: 6..10 are gone, 11 follows 5.
  const buf = readFileSync(first);
  let at = 8;
  for (let i = 0; i < 5; i++) at += 12 + buf.readUInt32LE(at);
  writeFileSync(first, buf.subarray(0, at));
  const e = codeOf(() => reopen(dir));
  assert.equal(e.code, 'E_DURABLE_CORRUPT');
  assert.match(e.message, /entry 11 follows entry 5/);
});

test('a full disk is E_DURABLE_IO naming the file', { skip: process.platform !== 'linux' && 'needs /dev/full' }, (t) => {
  const dir = tempDir(t);
  const s = new DurableStore(dir);
  s.lock();
  s.open();
  s.reset(0, []);
  s.writeMeta(META);
  // The segment the next commit opens is /dev/full: every write there fails with ENOSPC.
  const seg = join(dir, `log-${'1'.padStart(20, '0')}-${'1'.padStart(20, '0')}.log`);
  symlinkSync('/dev/full', seg);
  s.append([{ index: 1, payload: bytes('x') }], 1);
  const e = codeOf(() => s.commit());
  s.close();
  assert.equal(e.code, 'E_DURABLE_IO');
  assert.ok(e.message.includes(seg), e.message);
  assert.match(e.message, /ENOSPC/);
});

test('a second process on the same dataDir is refused (E_DIR_LOCKED); a stale lock (its pid gone) is taken over', async (t) => {
  const dir = tempDir(t);
  // A live process holds the lock.
  const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
  t.after(() => holder.kill('SIGKILL'));
  writeFileSync(join(dir, 'LOCK'), `${holder.pid}\n`);
  const s = new DurableStore(dir);
  const e = codeOf(() => s.lock());
  assert.equal(e.code, 'E_DIR_LOCKED');
  assert.ok(e.message.includes(`pid ${holder.pid}`) && e.message.includes(join(dir, 'LOCK')), e.message);
  const exited = new Promise((r) => holder.once('exit', r));
  holder.kill('SIGKILL');
  await exited;
  s.lock(); // the holder is gone (kill -9 leaves its lock behind)
  assert.equal(readFileSync(join(dir, 'LOCK'), 'utf8').trim(), String(process.pid));
  s.close();
  assert.ok(!readdirSync(dir).includes('LOCK'), 'closed: the lock is let go');
});

// The core's side: a node recovered from its disk, named in the arbiter's view, waits as a
// backup of that view's primary and asks to go live from that view after the failure timeout,
// as a backup does; it takes frames if that primary is alive.
test('core: a recovered start waits as a backup of the view\'s primary, then asks {e, P, B} -> {e+1, self, B without self}', () => {
  const view = { epoch: 4, primary: 'n1', backups: ['n2'] };
  for (const self of ['n1', 'n2']) {
    const r = createReplica({ ...DEFAULT_TIMING, id: self, nodes: ['n1', 'n2', 'n3'] }, 0);
    const out = step(r, { type: 'start', recovered: { index: 17, view } }, 0);
    assert.equal(r.role, 'backup');
    assert.equal(r.lastIndex, 17);
    assert.deepEqual(r.view, view);
    assert.ok(out.some((a) => a.type === 'role' && a.role === 'backup'));
    assert.ok(!out.some((a) => a.type === 'arbiterCas'), 'no bootstrap');
    const early = step(r, { type: 'tick' }, DEFAULT_TIMING.failureTimeoutMs / 4);
    assert.ok(!early.some((a) => a.type === 'arbiterCas'));
    const asks = [DEFAULT_TIMING.failureTimeoutMs / 2, (3 * DEFAULT_TIMING.failureTimeoutMs) / 4, DEFAULT_TIMING.failureTimeoutMs + 1].flatMap((t) => step(r, { type: 'tick' }, t));
    const cas = asks.find((a) => a.type === 'arbiterCas');
    assert.ok(cas !== undefined && cas.type === 'arbiterCas', `${self} asks to go live`);
    assert.deepEqual(cas.expected, view);
    assert.deepEqual(cas.next, { epoch: 5, primary: self, backups: self === 'n1' ? ['n2'] : [] }, 'the other named node stays its backup');
    step(r, { type: 'arbiterResult', requestId: cas.requestId, ok: true, view: cas.next }, DEFAULT_TIMING.failureTimeoutMs + 2);
    assert.equal(r.role, 'primary');
    assert.equal(r.lastIndex, 17, 'live with its disk');
  }
  // The primary of that view alive: the recovered backup (its disk says it holds the log of
  // term 3, the primary's) takes its frames from the index it holds.
  const b = createReplica({ ...DEFAULT_TIMING, id: 'n2', nodes: ['n1', 'n2', 'n3'], durable: true }, 0);
  step(b, { type: 'start', recovered: { index: 17, view, logTerm: 3 } }, 0);
  const frame = { type: 'frame', view, seq: 9, prevIndex: 16, payloads: [bytes('17'), bytes('18')], primaryIndex: 18, pendingView: null, commitIndex: 17, term: 3, baseIndex: 0, baseTerm: 0 };
  const acks = step(b, { type: 'message', from: 'n1', msg: frame }, 10);
  assert.ok(acks.some((a) => a.type === 'receive' && a.entries.length === 1 && a.entries[0]!.index === 18), 'only entry 18 is new');
  assert.ok(acks.some((a) => a.type === 'send' && a.msg.type === 'ack' && a.msg.ackedIndex === 18));
  assert.ok(!acks.some((a) => a.type === 'apply'), 'not applied before the commit index reaches it');
  const next = step(b, { type: 'message', from: 'n1', msg: { ...frame, seq: 10, prevIndex: 18, payloads: [], commitIndex: 18 } }, 20);
  assert.ok(next.some((a) => a.type === 'apply' && a.entries.length === 1 && a.entries[0]!.index === 18), 'applied once committed');
  // A disk of unknown log (a release before log terms, or never told) is not trusted with
  // another primary's frames: it halts and is recruited again.
  const u = createReplica({ ...DEFAULT_TIMING, id: 'n2', nodes: ['n1', 'n2', 'n3'], durable: true }, 0);
  step(u, { type: 'start', recovered: { index: 17, view } }, 0);
  step(u, { type: 'message', from: 'n1', msg: { ...frame, term: 4, baseIndex: 16, baseTerm: 3 } }, 10);
  assert.equal(u.role, 'halted');
  // Never from a view that does not name it.
  const c = createReplica({ ...DEFAULT_TIMING, id: 'n3', nodes: ['n1', 'n2', 'n3'] }, 0);
  assert.throws(() => step(c, { type: 'start', recovered: { index: 17, view } }, 0), /does not name this replica/);
});

test('core: a recovered node that loses its test-and-set to one its earlier process sent (a view naming it primary) waits in that view and goes live from it', () => {
  // Every node crashed while n1's test-and-set to drop its backup was in flight; n1 came back
  // recovered in the view before it, and the late one landed as n1 asked to go live (lockstep
  // sim --durable-restarts seed 727). Only n1 writes views naming it primary (but for a
  // switchover to it), and no process of it learned of that view: nothing was released in it.
  const view = { epoch: 4, primary: 'n1', backups: ['n2'] };
  const late = { epoch: 5, primary: 'n1', backups: [] };
  // Ticks a quarter of the failure timeout apart (a longer gap is a stall, not silence).
  const q = DEFAULT_TIMING.failureTimeoutMs / 4;
  const ticks = (r: ReturnType<typeof createReplica>, from: number): ReturnType<typeof step> => [1, 2, 3, 4, 5].flatMap((i) => step(r, { type: 'tick' }, from + i * q));
  const r = createReplica({ ...DEFAULT_TIMING, id: 'n1', nodes: ['n1', 'n2', 'n3'], durable: true }, 0);
  step(r, { type: 'start', recovered: { index: 17, view, logTerm: 3 } }, 0);
  const t = 5 * q;
  const cas = ticks(r, 0).find((a) => a.type === 'arbiterCas');
  assert.ok(cas !== undefined && cas.type === 'arbiterCas');
  step(r, { type: 'arbiterResult', requestId: cas.requestId, ok: false, view: late }, t + 1);
  assert.equal(r.role, 'backup', 'not halted: it still holds every released entry');
  assert.deepEqual(r.view, late);
  const again = ticks(r, t + 1).find((a) => a.type === 'arbiterCas');
  assert.ok(again !== undefined && again.type === 'arbiterCas', 'asks again, from the late view');
  assert.deepEqual(again.expected, late);
  assert.deepEqual(again.next, { epoch: 6, primary: 'n1', backups: [] });
  step(r, { type: 'arbiterResult', requestId: again.requestId, ok: true, view: again.next }, 2 * t + 3);
  assert.equal(r.role, 'primary');
  assert.equal(r.lastIndex, 17, 'live with its disk');
  // A view naming another primary is another node's: the recovered node halts, as before.
  const o = createReplica({ ...DEFAULT_TIMING, id: 'n1', nodes: ['n1', 'n2', 'n3'], durable: true }, 0);
  step(o, { type: 'start', recovered: { index: 17, view, logTerm: 3 } }, 0);
  const lost = ticks(o, 0).find((a) => a.type === 'arbiterCas');
  assert.ok(lost !== undefined && lost.type === 'arbiterCas');
  step(o, { type: 'arbiterResult', requestId: lost.requestId, ok: false, view: { epoch: 5, primary: 'n2', backups: [] } }, t + 1);
  assert.equal(o.role, 'halted');
});

test('compaction in slices: entries appended while it runs go on after its index; a crash before it finishes leaves the old snapshot and every entry', (t) => {
  const dir = tempDir(t);
  written(dir, 10);
  const s = new DurableStore(dir);
  s.lock();
  s.open();
  assert.equal(s.beginCompaction(), 10);
  s.compactionPiece(bytes('state at 10'));
  s.append([{ index: 11, payload: bytes('entry 11') }, { index: 12, payload: bytes('entry 12') }], 3);
  s.commit();
  // The node dies here (no finish, no close): a new process opens the directory.
  const crashed = new DurableStore(dir);
  crashed.lock();
  const r = crashed.open();
  assert.equal(r.snapshotIndex, 0);
  assert.deepEqual(r.entries.map((e) => e.index), Array.from({ length: 12 }, (_, i) => i + 1));
  assert.ok(r.warnings.some((w) => w.includes('.snap.tmp') && w.includes('unfinished')), r.warnings.join('; '));
  // This time it finishes, with an entry appended meanwhile.
  assert.equal(crashed.beginCompaction(), 12);
  crashed.append([{ index: 13, payload: bytes('entry 13') }], 3);
  crashed.commit();
  crashed.compactionPiece(bytes('state at 12'));
  crashed.finishCompaction();
  crashed.close();
  const done = reopen(dir);
  assert.equal(done.snapshotIndex, 12);
  assert.deepEqual(done.snapshotPieces.map(text), ['state at 12']);
  assert.deepEqual(done.entries.map((e) => text(e.payload)), ['entry 13']);
  assert.equal(segments(dir).length, 1, `the segments the snapshot covers are gone: ${segments(dir).join(' ')}`);
});

test('an asynchronous commit writes in the background; one at a time; a full disk is E_DURABLE_IO', { skip: process.platform !== 'linux' && 'needs /dev/full' }, async (t) => {
  const dir = tempDir(t);
  written(dir, 3);
  const s = new DurableStore(dir);
  s.lock();
  s.open();
  assert.equal(s.commitAsync(() => assert.fail('nothing to write')), false);
  s.append([{ index: 4, payload: bytes('entry 4') }], 3);
  const done = new Promise<unknown>((r) => s.commitAsync(r));
  assert.equal(s.committing, true);
  s.append([{ index: 5, payload: bytes('entry 5') }], 3); // waits for the next commit
  assert.throws(() => s.commit(), /while an asynchronous one is under way/);
  assert.equal(await done, null);
  assert.equal(s.committing, false);
  assert.equal(await new Promise<unknown>((r) => s.commitAsync(r)), null);
  s.close();
  assert.deepEqual(reopen(dir).entries.map((e) => text(e.payload)), ['entry 1', 'entry 2', 'entry 3', 'entry 4', 'entry 5']);
  // A full disk: E_DURABLE_IO naming the file (thrown at once here: the new segment's header
  // cannot be written; a failed write of records comes through the callback).
  const full = tempDir(t);
  const f = new DurableStore(full);
  f.lock();
  f.open();
  f.reset(0, []);
  const seg = join(full, `log-${'1'.padStart(20, '0')}-${'1'.padStart(20, '0')}.log`);
  symlinkSync('/dev/full', seg);
  f.append([{ index: 1, payload: bytes('x') }], 1);
  const err = await new Promise<unknown>((r) => f.commitAsync(r)).catch((e: unknown) => e);
  f.close();
  assert.ok(isLockstepError(err) && err.code === 'E_DURABLE_IO' && err.message.includes(seg) && /ENOSPC/.test(err.message), String(err));
});

test('a segment the node created and died before writing an entry to is started over, not appended to', (t) => {
  const dir = tempDir(t);
  written(dir, 3);
  const s = new DurableStore(dir);
  s.lock();
  s.open();
  s.append([{ index: 4, payload: bytes('entry 4') }], 3);
  s.commit(); // opens log-...-4.log
  s.close();
  const seg4 = join(dir, segments(dir).at(-1)!);
  truncateSync(seg4, 8 + 5); // the header and a torn piece of entry 4: it was never whole
  for (let round = 0; round < 2; round++) {
    const again = new DurableStore(dir);
    again.lock();
    const r = again.open();
    assert.equal(r.lastIndex, 3);
    again.append([{ index: 4, payload: bytes('entry 4 again') }], 4);
    again.commit(); // the same file name: it must start over
    again.close();
    const back = reopen(dir);
    assert.deepEqual(back.entries.map((e) => text(e.payload)).slice(-1), ['entry 4 again']);
    assert.deepEqual(back.warnings, []);
    truncateSync(seg4, 8); // now only the header
  }
});
