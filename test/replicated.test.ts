// Tests for ReplicatedService (src/guest/replicated.ts): a primary and a backup fed the
// primary's entries stay identical in both modes, both modes give the same replies, and the
// duplicate filter gives at-most-once execution across failover and snapshot transfer.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { REPLICATION_MODES, ReplicatedService, createKv } from '../src/guest/index.js';
import type { ClientRequest, KvChange, KvCommand, KvReply, ReplicationMode, ServiceResult } from '../src/guest/index.js';
import { LockstepError } from '../src/errors.js';
import { Rng } from '../src/sim/rng.js';

type Kv = ReplicatedService<KvCommand, KvReply, KvChange>;

/** The project's seeded PRNG, as a float source. */
function prng(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.float();
}

function service(mode: ReplicationMode, limits?: { clientsMax?: number; repliesPerClientMax?: number; sessionEntries?: number }): Kv {
  return new ReplicatedService(createKv(), mode, limits);
}

function req(clientId: string | null, seq: number, command: KvCommand, ackedBelow = 0): ClientRequest<KvCommand> {
  return { clientId, seq, ackedBelow, command };
}

/** Execute on the primary and ship the entry (if any) to the backups. */
function step(primary: Kv, backups: readonly Kv[], r: ClientRequest<KvCommand>): ServiceResult<KvReply> {
  const res = primary.execute(r);
  if (res.entry !== null) for (const b of backups) b.applyEntry(res.entry);
  return res;
}

function assertSame(a: Kv, b: Kv, why: string): void {
  assert.equal(a.digest(), b.digest(), why);
  assert.deepEqual(a.snapshot(), b.snapshot(), why);
  assert.equal(a.appliedEntries, b.appliedEntries, why);
}

const isStale = (r: KvReply): boolean => r.kind === 'error' && r.message.startsWith('ERR E_DEDUP_STALE');
const isWindow = (r: KvReply): boolean => r.kind === 'error' && r.message.startsWith('ERR E_DEDUP_WINDOW');
const isExpired = (r: KvReply): boolean => r.kind === 'error' && r.message.startsWith('ERR E_SESSION_EXPIRED') && r.message.includes('start a new session');

/**
 * A seeded workload: 4 deduplicating clients and a plain one, random commands over a few keys,
 * retries of recent requests (the reply was "lost"), ackedBelow trailing behind, and a
 * failover (backup takes over, a new backup is recruited by snapshot) every 150 requests.
 * Returns every reply in order.
 */
function runWorkload(mode: ReplicationMode, seed: number): { replies: KvReply[]; final: Kv; duplicates: number } {
  const rnd = prng(seed);
  let primary = service(mode, { repliesPerClientMax: 64 });
  let backup = service(mode, { repliesPerClientMax: 64 });
  const clients = ['alice', 'bob', 'carol', 'dave'];
  const next = new Map<string, number>(clients.map((c) => [c, 1]));
  const acked = new Map<string, number>(clients.map((c) => [c, 0]));
  const sent = new Map<string, Map<number, { command: KvCommand; reply: KvReply | null }>>(clients.map((c) => [c, new Map()]));
  const replies: KvReply[] = [];
  let duplicates = 0;
  const key = (): string => `k${Math.floor(rnd() * 6)}`;
  const command = (): KvCommand => {
    switch (Math.floor(rnd() * 8)) {
      case 0: return ['SET', key(), String(Math.floor(rnd() * 10))];
      case 1: return ['APPEND', key(), String.fromCharCode(97 + Math.floor(rnd() * 26))];
      case 2: return ['INCR', key()];
      case 3: return ['DEL', key()];
      case 4: return ['MSET', key(), 'x', key(), '7'];
      case 5: return ['GET', key()];
      case 6: return ['INCRBY', key(), String(Math.floor(rnd() * 9) - 4)];
      default: return ['MGET', key(), key()];
    }
  };
  for (let i = 1; i <= 1500; i++) {
    const who = Math.floor(rnd() * 5);
    if (who === 4) {
      replies.push(step(primary, [backup], req(null, 1, command())).reply);
    } else {
      const id = clients[who]!;
      const mine = sent.get(id)!;
      let seq: number;
      if (rnd() < 0.25 && next.get(id)! > 1) {
        // retry one of the last few requests
        seq = Math.max(1, next.get(id)! - 1 - Math.floor(rnd() * 6));
      } else {
        seq = next.get(id)!;
        next.set(id, seq + 1);
        mine.set(seq, { command: command(), reply: null });
      }
      const prev = mine.get(seq)!;
      const res = step(primary, [backup], req(id, seq, prev.command, acked.get(id)!));
      replies.push(res.reply);
      if (isStale(res.reply)) {
        assert.ok(seq < acked.get(id)!, 'stale only below what the client acknowledged');
      } else if (res.duplicate) {
        assert.ok(prev.reply !== null, 'a duplicate was executed before');
        assert.deepEqual(res.reply, prev.reply, 'a duplicate gets the first reply');
        duplicates++;
      } else if (!res.readOnly && res.entry !== null && prev.reply !== null) {
        assert.fail(`client ${id} seq ${seq} executed twice`);
      }
      if (res.entry !== null) prev.reply = res.reply;
      // the client learns replies and acknowledges them a while later
      if (rnd() < 0.3) acked.set(id, Math.max(acked.get(id)!, next.get(id)! - 3));
    }
    if (i % 50 === 0) assertSame(primary, backup, `${mode} step ${i}`);
    if (i % 150 === 0) {
      // failover: the backup goes live, a fresh spare is recruited from a snapshot
      primary = backup;
      backup = service(mode, { repliesPerClientMax: 64 });
      backup.restore(primary.snapshot());
      assertSame(primary, backup, `${mode} recruit at ${i}`);
    }
  }
  assertSame(primary, backup, `${mode} end`);
  return { replies, final: primary, duplicates };
}

test('primary and backup stay identical, and both modes give the same replies and state', () => {
  for (const seed of [1, 2, 99]) {
    const rsm = runWorkload('rsm', seed);
    const st = runWorkload('state-transfer', seed);
    assert.deepEqual(rsm.replies, st.replies, `seed ${seed}: replies`);
    assert.equal(rsm.final.digest(), st.final.digest(), `seed ${seed}: digest`);
    assert.deepEqual(rsm.final.snapshot(), st.final.snapshot(), `seed ${seed}: snapshot`);
    assert.ok(rsm.final.appliedEntries > 500);
    assert.ok(rsm.replies.some(isStale), 'the workload exercises stale retries');
    assert.ok(rsm.duplicates > 50 && st.duplicates === rsm.duplicates, `duplicates ${rsm.duplicates}`);
  }
});

test('a retried mutating request returns the first reply and executes once', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode);
    const b = service(mode);
    const first = step(p, [b], req('c', 1, ['APPEND', 'k', 'x']));
    assert.deepEqual(first.reply, { kind: 'integer', value: 1n });
    assert.ok(first.entry !== null);
    assert.equal(first.duplicate, false);
    const again = step(p, [b], req('c', 1, ['APPEND', 'k', 'x']));
    assert.deepEqual(again, { reply: first.reply, entry: null, duplicate: true, readOnly: false });
    assert.deepEqual(p.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: 'x' });
    // failover to the backup: the retry is still a duplicate there
    const onBackup = b.execute(req('c', 1, ['APPEND', 'k', 'x']));
    assert.equal(onBackup.duplicate, true);
    assert.deepEqual(onBackup.reply, first.reply);
    // a new replica from a snapshot knows it too
    const fresh = service(mode);
    fresh.restore(b.snapshot());
    assertSame(fresh, b, mode);
    const onFresh = fresh.execute(req('c', 1, ['APPEND', 'k', 'x']));
    assert.equal(onFresh.duplicate, true);
    assert.deepEqual(onFresh.reply, first.reply);
    assert.deepEqual(fresh.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: 'x' });
    // the next seq executes
    assert.deepEqual(fresh.execute(req('c', 2, ['APPEND', 'k', 'x'])).reply, { kind: 'integer', value: 2n });
  }
});

test('plain clients and reads are not deduplicated', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode);
    const b = service(mode);
    step(p, [b], req(null, 1, ['APPEND', 'k', 'x']));
    step(p, [b], req(null, 1, ['APPEND', 'k', 'x']));
    assert.deepEqual(p.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: 'xx' }, 'at-least-once');
    // A session's first request, a read, logs the session's opening (and nothing else).
    const read = step(p, [b], req('c', 1, ['GET', 'k']));
    assert.deepEqual({ ...read, entry: null }, { reply: { kind: 'bulk', value: 'xx' }, entry: null, duplicate: false, readOnly: false });
    assert.ok(read.entry !== null, 'the session-open entry');
    step(p, [b], req('d', 1, ['APPEND', 'k', 'y']));
    const reread = step(p, [b], req('c', 1, ['GET', 'k']));
    assert.deepEqual(reread, { reply: { kind: 'bulk', value: 'xxy' }, entry: null, duplicate: false, readOnly: true }, 'a retried read reads again');
    assert.equal(p.clientCount, 2, 'sessions c and d');
    assertSame(p, b, mode);
  }
});

test('a plain client\'s write that changes nothing is neither logged nor recorded', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode);
    const digest = p.digest();
    for (const command of [['DEL', 'missing'], ['INCR', 'n', 'extra'], ['SET', 'k', 'v', 'EX', '1'], ['NOPE']]) {
      const res = p.execute(req(null, 1, command));
      assert.equal(res.entry, null, command.join(' '));
      assert.equal(res.duplicate, false);
    }
    assert.equal(p.digest(), digest);
    assert.equal(p.appliedEntries, 0);
  }
});

test('a client\'s write that changes nothing is logged and recorded: a late duplicate cannot run it again', () => {
  // Regression (simulator seeds 203026, 212429): DEL of a missing key went unrecorded; a
  // delayed copy of the request arrived after the key was set again and deleted it, after
  // the client already had its reply.
  for (const mode of REPLICATION_MODES) {
    const p = service(mode);
    const b = service(mode);
    const first = step(p, [b], req('c', 1, ['DEL', 'k']));
    assert.notEqual(first.entry, null, 'logged');
    assert.deepEqual(first.reply, { kind: 'integer', value: 0n });
    step(p, [b], req('d', 1, ['SET', 'k', 'v']));
    const late = step(p, [b], req('c', 1, ['DEL', 'k']));
    assert.equal(late.duplicate, true);
    assert.equal(late.entry, null);
    assert.deepEqual(late.reply, first.reply);
    assert.deepEqual(p.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: 'v' });
    assertSame(p, b, mode);
  }
});

test('stale requests are refused', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode);
    const b = service(mode);
    for (let seq = 1; seq <= 5; seq++) step(p, [b], req('c', seq, ['INCR', 'n']));
    // seq 6 acknowledges everything below 4: the filter forgets 1..3
    step(p, [b], req('c', 6, ['INCR', 'n'], 4));
    assertSame(p, b, mode);
    const stale = step(p, [b], req('c', 2, ['INCR', 'n'], 4));
    assert.equal(stale.entry, null);
    assert.equal(stale.duplicate, false);
    assert.ok(isStale(stale.reply), JSON.stringify(stale.reply));
    const stillThere = step(p, [b], req('c', 4, ['INCR', 'n'], 4));
    assert.equal(stillThere.duplicate, true);
    assert.deepEqual(stillThere.reply, { kind: 'integer', value: 4n });
    assert.deepEqual(p.machine.execute(['GET', 'n']).reply, { kind: 'bulk', value: '6' });
    // ackedBelow beyond the request's own seq is clamped to it
    step(p, [b], req('c', 7, ['INCR', 'n'], 100));
    assert.equal(step(p, [b], req('c', 7, ['INCR', 'n'], 100)).duplicate, true);
    assert.ok(isStale(step(p, [b], req('c', 6, ['INCR', 'n'])).reply));
    assertSame(p, b, mode);
  }
});

test('the per-client reply window is bounded', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode, { repliesPerClientMax: 3 });
    const b = service(mode, { repliesPerClientMax: 3 });
    for (let seq = 1; seq <= 3; seq++) assert.ok(step(p, [b], req('c', seq, ['INCR', 'n'])).entry !== null);
    const full = step(p, [b], req('c', 4, ['INCR', 'n']));
    assert.ok(isWindow(full.reply), JSON.stringify(full.reply));
    assert.equal(full.entry, null);
    assert.equal(step(p, [b], req('c', 2, ['INCR', 'n'])).duplicate, true, 'duplicates are still answered');
    assert.ok(step(p, [b], req('other', 1, ['INCR', 'n'])).entry !== null, 'other clients are unaffected');
    const acked = step(p, [b], req('c', 4, ['INCR', 'n'], 2));
    assert.deepEqual(acked.reply, { kind: 'integer', value: 5n });
    assert.ok(isWindow(step(p, [b], req('c', 5, ['INCR', 'n'], 2)).reply));
    assertSame(p, b, mode);
  }
});

test('the least recently used session is evicted, and its late retry is refused, not run again', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode, { clientsMax: 2 });
    const b = service(mode, { clientsMax: 2 });
    step(p, [b], req('a', 1, ['APPEND', 'k', 'a']));
    step(p, [b], req('b', 1, ['APPEND', 'k', 'b']));
    step(p, [b], req('a', 2, ['APPEND', 'k', 'a'])); // a is now the most recent
    step(p, [b], req('c', 1, ['APPEND', 'k', 'c'])); // evicts b
    assert.equal(p.clientCount, 2);
    assert.equal(step(p, [b], req('a', 1, ['APPEND', 'k', 'a'])).duplicate, true);
    // b's retry of seq 1 (a retry is sent with ackedBelow 1) and its next request are refused.
    const late = step(p, [b], req('b', 1, ['APPEND', 'k', 'b'], 1));
    assert.ok(isExpired(late.reply), JSON.stringify(late.reply));
    assert.equal(late.entry, null);
    assert.ok(isExpired(step(p, [b], req('b', 2, ['APPEND', 'k', 'b'])).reply));
    assert.deepEqual(p.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: 'abac' }, 'b ran once');
    assertSame(p, b, mode);
    const fresh = service(mode, { clientsMax: 2 });
    fresh.restore(p.snapshot());
    assertSame(fresh, p, `${mode} LRU order survives a snapshot`);
    step(p, [b, fresh], req('d', 1, ['APPEND', 'k', 'd']));
    assertSame(fresh, p, mode);
    assertSame(b, p, mode);
  }
});

test('corrupt or foreign entries and snapshots are refused and change nothing', () => {
  const isCorrupt = (e: unknown): boolean => e instanceof LockstepError && e.code === 'E_CORRUPT_ENTRY';
  const rsm = service('rsm');
  const st = service('state-transfer');
  const eRsm = rsm.execute(req('c', 1, ['SET', 'k', 'v'])).entry!;
  const eSt = st.execute(req('c', 1, ['SET', 'k', 'v'])).entry!;
  for (const [svc, entry, foreign] of [[service('rsm'), eRsm, eSt], [service('state-transfer'), eSt, eRsm]] as const) {
    const digest = svc.digest();
    assert.throws(() => svc.applyEntry(foreign), isCorrupt, 'entry from the other mode');
    for (let n = 0; n < entry.length; n++) assert.throws(() => svc.applyEntry(entry.subarray(0, n)), isCorrupt);
    assert.throws(() => svc.applyEntry(new Uint8Array([...entry, 0])), isCorrupt);
    assert.equal(svc.digest(), digest);
    assert.equal(svc.appliedEntries, 0);
    svc.applyEntry(entry);
    assert.equal(svc.appliedEntries, 1);
  }
  const snap = rsm.snapshot();
  const target = service('rsm');
  const digest = target.digest();
  for (let n = 0; n < snap.length; n++) assert.throws(() => target.restore(snap.subarray(0, n)), isCorrupt);
  assert.equal(target.digest(), digest);
  target.restore(snap);
  assertSame(target, rsm, 'restored');
});

test('requests with a bad seq are a caller bug', () => {
  const p = service('rsm');
  assert.throws(() => p.execute(req('c', 0, ['SET', 'k', 'v'])), RangeError);
  assert.throws(() => p.execute(req('c', 1.5, ['SET', 'k', 'v'])), RangeError);
  assert.throws(() => p.execute(req('c', 1, ['SET', 'k', 'v'], -1)), RangeError);
  assert.throws(() => service('rsm', { clientsMax: 0 }), RangeError);
});

test('the filter is bounded in bytes: old replies go first, then their retries are refused, never re-run (issue 14 item 7)', () => {
  for (const mode of REPLICATION_MODES) {
    const limits = { bytesMax: 4000 };
    const p = new ReplicatedService(createKv(), mode, limits);
    const b = new ReplicatedService(createKv(), mode, limits);
    // 10 clients, 3 writes each: about 10 * (240 + 3 * 165) counted bytes, well over 4000.
    for (let seq = 1; seq <= 3; seq++) for (let c = 0; c < 10; c++) step(p, [b], req(`c${c}`, seq, ['APPEND', 'k', 'x']));
    assert.ok(p.filterBytes <= 4000, `${p.filterBytes}`);
    assertSame(p, b, mode);
    // The most recent client still has its replies; the first lost them but is remembered.
    assert.equal(step(p, [b], req('c9', 3, ['APPEND', 'k', 'x'])).duplicate, true);
    const evicted = step(p, [b], req('c0', 1, ['APPEND', 'k', 'x']));
    assert.ok(isStale(evicted.reply), JSON.stringify(evicted.reply));
    assert.equal(evicted.entry, null, 'an evicted reply\'s retry does not run again');
    assert.deepEqual(p.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: 'x'.repeat(30) });
    const fresh = new ReplicatedService(createKv(), mode, limits);
    fresh.restore(p.snapshot());
    assert.equal(fresh.filterBytes, p.filterBytes);
    step(p, [b, fresh], req('new', 1, ['APPEND', 'k', 'y']));
    assertSame(fresh, p, mode);
    assertSame(b, p, mode);
  }
});

test('refused commands are recorded short', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode);
    const b = service(mode);
    const long = ['NOSUCH', 'a'.repeat(500), 'b'.repeat(500)];
    const first = step(p, [b], req('c', 1, long));
    assert.ok(first.reply.kind === 'error' && first.reply.message.length > 128, 'the client gets the whole error');
    const retry = step(p, [b], req('c', 1, long));
    assert.equal(retry.duplicate, true);
    assert.ok(retry.reply.kind === 'error' && retry.reply.message.startsWith("ERR unknown command 'NOSUCH'") && retry.reply.message.length <= 96, JSON.stringify(retry.reply));
    assert.ok(p.filterBytes < 600, `${p.filterBytes}`);
    assertSame(p, b, mode);
  }
});

test('maxmemory is decided on the primary: a refused write is not recorded, and logs only a new session\'s opening', () => {
  for (const mode of REPLICATION_MODES) {
    const p = new ReplicatedService(createKv(1 << 20, 300), mode);
    const b = new ReplicatedService(createKv(1 << 20, 300), mode);
    const res = step(p, [b], req('c', 1, ['SET', 'k', 'v'.repeat(300)]));
    assert.deepEqual(res.reply, { kind: 'error', message: "OOM command not allowed when used memory > 'maxmemory'." });
    assert.ok(res.entry !== null, 'only the session opens');
    assert.deepEqual(p.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: null });
    const again = step(p, [b], req('c', 1, ['SET', 'k', 'v'.repeat(300)]));
    assert.equal(again.entry, null, 'a refusal in an open session logs nothing');
    assert.equal(step(p, [b], req('c', 1, ['SET', 'k', 'v'])).duplicate, false, 'the retry is judged afresh');
    assertSame(p, b, mode);
  }
});

test('sessions expire by log time; their requests are refused with E_SESSION_EXPIRED, the same on every replica', () => {
  for (const mode of REPLICATION_MODES) {
    const limits = { sessionEntries: 5 };
    const p = service(mode, limits);
    const b = service(mode, limits);
    step(p, [b], req('a', 1, ['INCR', 'n']));
    step(p, [b], req('a', 2, ['INCR', 'n'], 1));
    step(p, [b], req('busy', 1, ['INCR', 'm']));
    // A snapshot (whole, and streamed) taken now expires 'a' at the same entry as the primary.
    const whole = service(mode, limits);
    whole.restore(p.snapshot());
    const streamed = service(mode, limits);
    const out = p.snapshotStream();
    const into = streamed.restoreStream();
    for (let piece = out.next(16); piece !== null; piece = out.next(16)) into.add(piece);
    into.finish();
    const all = [b, whole, streamed];
    for (const r of all) assertSame(r, p, `${mode} restored`);
    for (let seq = 2; seq <= 4; seq++) step(p, all, req('busy', seq, ['INCR', 'm'], seq - 1));
    assert.equal(p.clientCount, 2, 'a is used 4 entries ago: still there');
    assert.equal(step(p, all, req('a', 2, ['INCR', 'n'], 1)).duplicate, true);
    // A duplicate logs nothing, so a's last logged use stays entry 2: entry 7 expires it.
    step(p, all, req('busy', 5, ['INCR', 'm'], 4));
    assert.equal(p.clientCount, 1, 'a expired');
    for (const r of all) {
      assertSame(r, p, `${mode} expired alike`);
      assert.equal(r.clientCount, 1);
    }
    // The late retry and the next request are refused; nothing runs; n stays 2.
    for (const [seq, acked] of [[2, 1], [3, 2], [1, 1]] as const) {
      const res = step(p, all, req('a', seq, ['INCR', 'n'], acked));
      assert.ok(isExpired(res.reply), JSON.stringify(res.reply));
      assert.deepEqual({ entry: res.entry, duplicate: res.duplicate }, { entry: null, duplicate: false });
    }
    assert.deepEqual(p.machine.execute(['GET', 'n']).reply, { kind: 'bulk', value: '2' });
    // A new session (a new id, seq 1, ackedBelow 0) runs.
    assert.deepEqual(step(p, all, req('a2', 1, ['INCR', 'n'])).reply, { kind: 'integer', value: 3n });
    for (const r of all) assertSame(r, p, `${mode} after a new session`);
  }
});

test('a session opens only with seq 1, ackedBelow 0; a first read or refused write opens it too', () => {
  for (const mode of REPLICATION_MODES) {
    const p = service(mode);
    const b = service(mode);
    for (const [seq, acked] of [[2, 0], [5, 3], [1, 1]] as const) {
      const res = step(p, [b], req('x', seq, ['SET', 'k', 'v'], acked));
      assert.ok(isExpired(res.reply), JSON.stringify(res.reply));
      assert.equal(res.entry, null);
    }
    assert.equal(p.clientCount, 0);
    assert.deepEqual(step(p, [b], req('x', 1, ['GET', 'k'])).reply, { kind: 'bulk', value: null });
    assert.ok(isExpired(step(p, [b], req('y', 2, ['SET', 'k', 'v'])).reply), 'y never opened');
    assert.deepEqual(p.machine.execute(['GET', 'k']).reply, { kind: 'bulk', value: null });
    assert.deepEqual(step(p, [b], req('x', 2, ['SET', 'k', 'v'], 2)).reply, { kind: 'status', value: 'OK' }, 'x opened with a read');
    assertSame(p, b, mode);
    // The session state (last use) is in the digest: a session touched later differs.
    const q = service(mode);
    step(q, [], req('x', 1, ['GET', 'k']));
    step(q, [], req('x', 2, ['SET', 'k', 'v'], 2));
    assert.equal(q.digest(), p.digest());
    const early = service(mode);
    step(early, [], req('x', 1, ['SET', 'k', 'v']));
    step(early, [], req(null, 1, ['SET', 'z', '1']));
    const late = service(mode);
    step(late, [], req(null, 1, ['SET', 'z', '1']));
    step(late, [], req('x', 1, ['SET', 'k', 'v']));
    assert.equal(late.machine.digest(), early.machine.digest());
    assert.notEqual(late.digest(), early.digest(), 'same data, same floor and reply, another last use');
  }
});

for (const mode of REPLICATION_MODES) {
  test(`quarantine (${mode}): a quarantined command is refused unrun on every replica, and travels in snapshots`, () => {
    const p = service(mode);
    const b = service(mode);
    step(p, [b], req('c', 1, ['SET', 'k', '1']));
    const before = p.digest();
    const entry = p.quarantine(req('opener', 1, ['INCR', 'k']), 'E_SERVICE_MACHINE: broke\nhere');
    b.applyEntry(entry);
    assert.notEqual(p.digest(), before, 'the quarantine is in the digest');
    assertSame(p, b, 'after the quarantine entry');
    assert.equal(p.quarantinedCount, 1);
    assert.deepEqual(step(p, [b], req('opener', 2, ['INCR', 'x'], 1)).reply, { kind: 'integer', value: 1n }, 'the breaking request opened its session');
    assertSame(p, b, 'after the session opened by the quarantine');
    for (const s of [p, b]) {
      const r = s.execute(req(null, 1, ['INCR', 'k']));
      assert.equal(r.entry, null);
      assert.ok(r.reply.kind === 'error' && /^ERR E_SERVICE_QUARANTINED .*E_SERVICE_MACHINE: broke here/.test(r.reply.message), JSON.stringify(r.reply));
      assert.deepEqual(s.execute(req(null, 1, ['INCRBY', 'k', '2'])).reply, { kind: 'integer', value: 3n }, 'another command runs');
    }
    // Refused, a session's opening request still opens it.
    const opening = step(p, [b], req('d', 1, ['INCR', 'k']));
    assert.ok(opening.entry !== null && opening.reply.kind === 'error' && /E_SERVICE_QUARANTINED/.test(opening.reply.message));
    assertSame(p, b, 'after a refused opening');
    // Whole and streamed snapshots carry it.
    const whole = service(mode);
    whole.restore(p.snapshot());
    const streamed = service(mode);
    const out = p.snapshotStream();
    const into = streamed.restoreStream();
    for (let piece = out.next(64); piece !== null; piece = out.next(64)) into.add(piece);
    into.finish();
    for (const s of [whole, streamed]) {
      assert.equal(s.digest(), p.digest());
      assert.match(JSON.stringify(s.execute(req(null, 1, ['INCR', 'k'])).reply), /E_SERVICE_QUARANTINED/);
    }
    // A damaged quarantine entry is refused and changes nothing.
    const bad = entry.slice();
    bad[3] = 0x7a; // 'z' inside the fingerprint
    const c = service(mode);
    c.restore(b.snapshot());
    const d = c.digest();
    assert.throws(() => c.applyEntry(bad), (e: unknown) => e instanceof LockstepError && e.code === 'E_CORRUPT_ENTRY');
    assert.equal(c.digest(), d);
  });
}
