// Scenario tests for resuming a spare that kept its state (issue 11 item 3, replica.ts
// "Resuming a spare that kept its state"), message by message on the real core: a durable node
// back after the failure timeout, with entries 1..i of its primary's log on disk, is sent only
// the entries after i; one whose state is not a prefix of the primary's log (a deposed
// primary's never-released entries), or whose entries the primary no longer keeps, gets a
// snapshot.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness } from '../src/sim/harness.js';
import { status } from '../src/core/index.js';

const DURABLE = { durable: true, backlogBytes: 1 << 20 };

/** n1 primary, n2 its backup (recruited by snapshot), `n` writes acknowledged. */
function pair(overrides = {}, n = 5): Harness {
  const h = new Harness(['n1', 'n2'], { ...DURABLE, ...overrides });
  h.boot('n1');
  h.settle(300);
  assert.deepEqual(h.arbiterView.backups, ['n2']);
  const outs = h.write('n1', n);
  h.settle(50);
  for (const o of outs) assert.ok(h.isReleased('n1', o));
  return h;
}

/** What n2 holds as a durable node's disk would say it: entries 1..lastIndex of the log of logTerm. */
function disk(h: Harness, id: string): { index: number; logTerm: number } {
  const r = h.replica(id);
  return { index: r.lastIndex, logTerm: r.logTerm };
}

test('resume: a backup back after the failure timeout with its state is sent only the entries after it, and is backup again', () => {
  const h = pair();
  const kept = disk(h, 'n2');
  assert.equal(kept.index, 5);
  assert.ok(kept.logTerm > 0);
  h.crash('n2');
  h.write('n1', 3);
  h.settle(300); // the failure timeout: n1 drops n2 and serves alone
  assert.deepEqual(h.arbiterView.backups, []);
  h.write('n1', 4);
  const snapshotsBefore = h.snapshots.get('n2')?.length ?? 0;
  h.applied.set('n2', []);
  h.restart('n2', { kept });
  h.settle(300);
  assert.deepEqual(h.arbiterView.backups, ['n2'], 'n2 is the backup again');
  assert.equal(h.role('n2'), 'backup');
  assert.equal(h.events('n1', 'recruit-resume'), 1);
  assert.equal(h.events('n1', 'recruit-start'), 1, 'no second snapshot recruit (the first made n2 backup at boot)');
  assert.equal(h.snapshots.get('n2')?.length ?? 0, snapshotsBefore, 'no snapshot restored');
  assert.deepEqual(h.applied.get('n2'), [6, 7, 8, 9, 10, 11, 12], 'exactly the entries after its state, in order');
  // And it guards outputs again: a write waits for its ack.
  const [out] = h.write('n1', 1);
  assert.equal(h.isReleased('n1', out!), false);
  h.settle(50);
  assert.equal(h.isReleased('n1', out!), true);
  assert.equal(status(h.replica('n2')).lastIndex, 13);
});

test('resume: a state that is not a prefix of the primary\'s log (a deposed primary\'s unreleased entries) gets a snapshot; the planted bug resumeAnyLog takes it', () => {
  for (const bug of [false, true]) {
    const h = pair(bug ? { bugs: { resumeAnyLog: true } } : {});
    // n1 appends 3 more that never reach n2, then dies: its disk holds 8, n2 only 5.
    h.write('n1', 3);
    const kept = disk(h, 'n1');
    assert.equal(kept.index, 8);
    h.crash('n1');
    h.settle(400);
    assert.equal(h.role('n2'), 'primary');
    h.write('n2', 4); // n2's log: 1..5 of n1's, then 6..9 of its own
    h.restart('n1', { kept });
    h.settle(400);
    assert.deepEqual(h.arbiterView.backups, ['n1'], `${bug}: n1 is recruited either way`);
    if (!bug) {
      assert.equal(h.events('n2', 'resume-refused'), 1);
      assert.equal(h.events('n2', 'recruit-resume'), 0);
      assert.deepEqual(h.snapshots.get('n1')?.at(-1), 9, 'a snapshot of n2\'s state');
    } else {
      // Its entries 6..8 are n1's own, never released, not n2's: its state diverged.
      assert.equal(h.events('n2', 'recruit-resume'), 1, 'the bug resumes it');
    }
  }
});

/** n2 dies, is dropped after the failure timeout, n1 takes `writes` more, n2 comes back with its disk. */
function backAfterTimeout(h: Harness, writes: number): void {
  const kept = disk(h, 'n2');
  h.crash('n2');
  h.settle(300);
  h.write('n1', writes);
  h.restart('n2', { kept });
  h.settle(300);
}

test('resume: entries the primary no longer keeps (past backlogBytes) mean a snapshot', () => {
  const h = pair({ backlogBytes: 200 }); // a few 8-byte entries (64 bytes each counted beside)
  backAfterTimeout(h, 20);
  assert.equal(h.role('n2'), 'backup');
  assert.equal(h.events('n1', 'recruit-resume'), 0);
  assert.ok(h.logs.some((l) => l.node === 'n1' && l.event === 'resume-refused' && /no longer kept/.test(String(l.fields.reason))));
});

test('resume: without backlogBytes nothing is kept after every follower acked, so a durable node back after the timeout gets a snapshot', () => {
  const h = pair({ backlogBytes: 0 });
  backAfterTimeout(h, 2);
  assert.equal(h.role('n2'), 'backup');
  assert.equal(h.events('n1', 'recruit-resume'), 0);
  assert.equal(h.events('n1', 'resume-refused'), 1);
});

test('resume: the new primary after a failover resumes the old backup\'s peer from the backlog it kept as a backup', () => {
  // n1 primary, n2 and n3 backups; n3 dies, is dropped; then n1 dies and n2 goes live. n3
  // comes back holding entries of n1's log that n2 applied as a backup and kept.
  const h = new Harness(['n1', 'n2', 'n3'], { ...DURABLE, backups: 2 });
  h.boot('n1');
  h.settle(600);
  assert.equal(h.arbiterView.backups.length, 2);
  h.write('n1', 5);
  h.settle(50);
  const kept = disk(h, 'n3');
  h.crash('n3');
  h.write('n1', 3);
  h.settle(300);
  h.crash('n1');
  h.settle(400);
  const live = h.arbiterView.primary!;
  assert.equal(live, 'n2');
  h.write(live, 2);
  h.applied.set('n3', []);
  h.restart('n3', { kept });
  h.settle(400);
  assert.equal(h.role('n3'), 'backup');
  assert.equal(h.events('n2', 'recruit-resume'), 1, `resumed from ${kept.index} (term ${kept.logTerm})`);
  assert.deepEqual(h.applied.get('n3'), Array.from({ length: h.replica('n2').lastIndex - kept.index }, (_, i) => kept.index + 1 + i));
});

test('resume: a spare told to keep a state it no longer holds ignores it and joins again; the primary abandons the resume and recruits it by snapshot', () => {
  const h = pair();
  const kept = disk(h, 'n2');
  h.crash('n2');
  h.settle(300);
  h.write('n1', 2);
  h.restart('n2', { kept });
  h.advance(30, { deliver: (e) => e.from === 'n2' }); // n1 hears the join, n2 hears nothing yet
  assert.equal(h.events('n1', 'recruit-resume'), 1);
  // n2 restarts again, empty this time (its disk moved away), before the keep arrives.
  h.drop((e) => e.to === 'n2');
  h.restart('n2');
  h.settle(400);
  assert.equal(h.role('n2'), 'backup');
  assert.ok(h.logs.some((l) => l.node === 'n1' && l.event === 'recruit-abandoned'), 'the resume was abandoned');
  assert.ok((h.snapshots.get('n2')?.length ?? 0) >= 2, 'recruited by snapshot');
});

test('recovered: after every node died, the named backup that comes back second follows the first with its disk and is sent what it lacks from the first\'s disk; a deposed primary\'s disk holding more gets a snapshot', () => {
  for (const first of ['n1', 'n2'] as const) {
    const h = pair();
    h.write('n1', 3); // n1 holds 8, n2 holds 5: the 3 never reached n2, never released
    h.drop(() => true);
    // The driver hands a recovered node its disk's entries (the harness's payloads are zeros).
    const tail = (n: number) => Array.from({ length: n }, (_, i) => ({ index: i + 1, payload: new Uint8Array(8) }));
    const disks = { n1: { ...disk(h, 'n1'), tail: tail(8) }, n2: { ...disk(h, 'n2'), tail: tail(5) } };
    const view = h.arbiterView; // what both disks were acked under
    h.crash('n1');
    h.crash('n2');
    const other = first === 'n1' ? 'n2' : 'n1';
    h.restart(first, { recovered: { ...disks[first], view } });
    for (let i = 0; i < 40 && h.role(first) !== 'primary'; i++) h.settle(5); // alone, it goes live from its disk after the failure timeout
    assert.equal(h.role(first), 'primary', `${first} went live from its disk`);
    h.write(first, 2);
    h.applied.set(other, []);
    // As the driver does: named in the arbiter's view now, it starts recovered; else it keeps its disk as a spare.
    const named = h.arbiterView.backups.includes(other);
    h.restart(other, named ? { recovered: { ...disks[other], view: h.arbiterView } } : { kept: { index: disks[other].index, logTerm: disks[other].logTerm } });
    h.settle(400);
    if (first === 'n1') {
      // n1 went live keeping n2 in its view; n2's 5 entries are n1's first 5: it follows n1
      // keeping them and is sent 6..8 from the disk's tail n1 keeps, then 9..10.
      assert.ok(named, 'n1 kept its backup n2 in the view it went live with');
      assert.equal(h.events('n2', 'new-log'), 1, 'n2 followed n1 with its disk');
      assert.equal(h.role('n2'), 'backup');
      assert.deepEqual(h.arbiterView.backups, ['n2']);
      assert.deepEqual(h.applied.get('n2'), [6, 7, 8, 9, 10]);
    } else {
      // n2 went live alone (the old primary is not kept in a go-live view). n1's disk holds 6..8,
      // which n2 never had (never released): resuming it would keep them, so it gets a snapshot.
      assert.ok(!named);
      assert.ok(h.logs.some((l) => l.node === 'n2' && l.event === 'resume-refused'), 'not resumed');
      assert.equal(h.role('n1'), 'backup');
      assert.deepEqual(h.snapshots.get('n1')?.at(-1), 7, 'a snapshot of n2\'s state (5 + 2)');
    }
  }
});
