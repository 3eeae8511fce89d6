// Scenario tests: the paper's cases, each scripted message by message on the real core.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, between, except, type Envelope } from '../src/sim/harness.js';
import { canAppend, status } from '../src/core/index.js';

/** Everything but the n1-n2 link, and no joins (so no recruiting yet). */
const cutNoJoins = (e: Envelope): boolean => except('n1', 'n2')(e) && e.msg.type !== 'join';

/** n1 primary, n2 its backup, n3 a spare: the steady state of a three-node cluster. */
function steady(): Harness {
  const h = new Harness();
  h.boot('n1');
  h.settle(300);
  assert.deepEqual(h.arbiterView, { epoch: 2, primary: 'n1', backups: ['n2'] });
  assert.equal(h.role('n1'), 'primary');
  assert.equal(h.role('n2'), 'backup');
  assert.equal(h.role('n3'), 'spare');
  return h;
}

test('boot: the first to win the test-and-set 0 -> 1 is primary; it recruits a backup', () => {
  const h = new Harness();
  h.boot('n2');
  assert.equal(h.role('n2'), 'primary');
  assert.equal(h.role('n1'), 'spare');
  h.settle(300);
  assert.equal(h.arbiterView.primary, 'n2');
  assert.notEqual(h.arbiterView.backups[0] ?? null, null);
  assert.equal(h.role(h.arbiterView.backups[0]!), 'backup');
});

test('output rule: a write is released only once the backup acked its entry', () => {
  const h = steady();
  const [out] = h.write('n1', 1);
  assert.equal(h.isReleased('n1', out!), false, 'not before the ack');
  h.deliver((e) => e.from === 'n1'); // the frame reaches the backup, its ack is still queued
  assert.equal(h.isReleased('n1', out!), false, 'not while the ack is in flight');
  h.deliver();
  assert.equal(h.isReleased('n1', out!), true);
  assert.deepEqual(h.received.get('n2'), [1]);
  // The only backup applies what it holds at once (its commit index is what every OTHER backup holds).
  assert.deepEqual(h.applied.get('n2'), [1]);
});

test('output rule: a primary with no backup releases at once', () => {
  const h = new Harness(['n1']);
  h.boot('n1');
  const [out] = h.write('n1', 1);
  assert.equal(h.isReleased('n1', out!), true);
  assert.equal(h.isReleased('n1', h.read('n1')), true);
});

test('reads wait for the ack of a frame sent after them, even when everything is acked', () => {
  const h = steady();
  h.write('n1', 2);
  h.deliver();
  assert.equal(status(h.replica('n1')).lagEntries, 0);
  const r = h.read('n1');
  assert.equal(h.isReleased('n1', r), false, 'a read is not answered from the acked state alone');
  const probe = h.net.find((e) => e.from === 'n1' && e.to === 'n2' && e.msg.type === 'frame');
  assert.ok(probe, 'the read makes the primary send a frame at once');
  h.deliver();
  assert.equal(h.isReleased('n1', r), true);
});

test('the backup fails: the primary suspects it, wins the test-and-set, releases and carries on alone', () => {
  const h = steady();
  h.crash('n2');
  const outs = h.write('n1', 3);
  h.advance(150, { deliver: cutNoJoins, arbiter: true });
  assert.equal(h.arbiterView.epoch, 3);
  assert.equal(h.arbiterView.backups[0] ?? null, null);
  for (const o of outs) assert.equal(h.isReleased('n1', o), true);
  assert.equal(h.role('n1'), 'primary');
  // ... and recruits the spare, which becomes the backup with every entry.
  h.settle(300);
  assert.deepEqual(h.arbiterView, { epoch: 4, primary: 'n1', backups: ['n3'] });
  assert.equal(h.role('n3'), 'backup');
  assert.equal(h.replica('n3').lastIndex, h.replica('n1').lastIndex);
});

test('the primary fails: the backup goes live with every entry whose output was released', () => {
  const h = steady();
  const outs = h.write('n1', 5);
  h.deliver();
  for (const o of outs) assert.equal(h.isReleased('n1', o), true);
  h.write('n1', 2); // appended, never sent: their outputs were never released
  h.crash('n1');
  h.advance(200, { deliver: () => true, arbiter: true });
  assert.equal(h.role('n2'), 'primary');
  assert.deepEqual(h.arbiterView, { epoch: 4, primary: 'n2', backups: ['n3'] });
  assert.equal(h.replica('n2').lastIndex, 5, 'holds the five released entries, not the two unsent ones');
});

test('both sides suspect each other: exactly one wins the test-and-set, the other halts', () => {
  for (const first of ['n1', 'n2']) {
    const h = steady();
    const held = h.write('n1', 2);
    h.drop(between('n1', 'n2'));
    // Cut between the two; each still reaches the arbiter. Requests queue there together.
    h.advance(120, { deliver: except('n1', 'n2') });
    h.drop(between('n1', 'n2'));
    assert.equal(h.casQueue.length, 2, 'both asked the arbiter');
    h.casQueue.sort((a, b) => (a.from === first ? -1 : b.from === first ? 1 : 0));
    h.answerArbiter();
    const loser = first === 'n1' ? 'n2' : 'n1';
    assert.equal(h.role(first), 'primary', `${first} won`);
    assert.equal(h.role(loser), 'halted', `${loser} lost and halted`);
    assert.equal(h.arbiterView.primary, first);
    if (first === 'n1') for (const o of held) assert.equal(h.isReleased('n1', o), true);
    else assert.deepEqual(h.discarded.get('n1'), held, 'the deposed primary discards what it held');
  }
});

/** n1 primary of epoch 2 is paused while n2 goes live; n1 is still paused on return. */
function deposedWhilePaused(): Harness {
  const h = steady();
  h.write('n1', 2);
  h.deliver();
  h.pause('n1');
  h.advance(200, { deliver: (e) => e.from !== 'n1', arbiter: true });
  assert.equal(h.role('n2'), 'primary');
  return h;
}

test('a deposed primary wakes up: it releases nothing and learns it is deposed', () => {
  const h = deposedWhilePaused();
  const releasedBefore = (h.released.get('n1') ?? []).length;
  h.resume('n1');
  // It still believes it is primary of epoch 2: a read and a write it takes now must never go out.
  const r = h.read('n1');
  const [w] = h.write('n1', 1);
  h.deliver();
  h.advance(50, { deliver: () => true, arbiter: true });
  assert.equal(h.isReleased('n1', r), false);
  assert.equal(h.isReleased('n1', w!), false);
  assert.equal((h.released.get('n1') ?? []).length, releasedBefore);
  assert.equal(h.role('n1'), 'halted');
  assert.ok(h.logs.some((l) => l.node === 'n1' && l.event === 'role' && String(l.fields.reason).includes('deposed')));
});

test('a stale frame that arrives after a view change is refused with the newer epoch', () => {
  const h = steady();
  h.write('n1', 1);
  const stale = h.net.find((e) => e.from === 'n1' && e.to === 'n2' && e.msg.type === 'frame');
  assert.ok(stale);
  h.drop(() => true);
  h.crash('n1');
  h.advance(200, { deliver: () => true, arbiter: true });
  assert.equal(h.role('n2'), 'primary');
  const before = h.replica('n2').lastIndex;
  h.input('n2', { type: 'message', from: 'n1', msg: stale.msg });
  assert.equal(h.replica('n2').lastIndex, before, 'not applied');
  const answer = h.net.find((e) => e.from === 'n2' && e.to === 'n1');
  assert.equal(answer?.msg.type, 'refuse');
  assert.equal(answer?.msg.type === 'refuse' && answer.msg.epoch, h.arbiterView.epoch);
});

test('an ack from an older epoch is ignored by the new primary', () => {
  const h = steady();
  h.crash('n1');
  h.advance(200, { deliver: () => true, arbiter: true });
  const epoch = h.replica('n2').view.epoch;
  const held = h.write('n2', 1);
  h.input('n2', { type: 'message', from: 'n3', msg: { type: 'ack', epoch: epoch - 1, seq: 1, ackedIndex: 99, gap: false } });
  assert.equal(h.isReleased('n2', held[0]!), false);
});

test('the arbiter does not answer: the backup waits and retries, and never goes live on its own', () => {
  const h = steady();
  h.crash('n1');
  h.arbiterUp = false;
  h.advance(2000, { deliver: () => true });
  assert.equal(h.role('n2'), 'backup', 'waiting, not guessing');
  assert.ok(h.events('n2', 'cas-retry') > 10);
  h.arbiterUp = true;
  h.advance(100, { deliver: () => true, arbiter: true });
  assert.equal(h.role('n2'), 'primary');
});

test('a lost answer to a test-and-set that did land: the retry is refused with our own view, which is a win', () => {
  const h = steady();
  h.crash('n2');
  h.advance(110, { deliver: cutNoJoins });
  assert.equal(h.casQueue.length, 1);
  const req = h.casQueue[0]!;
  h.arbiterView = req.next; // it landed; the answer is lost
  h.casQueue = [];
  h.advance(60, { deliver: cutNoJoins, arbiter: true });
  assert.equal(h.role('n1'), 'primary');
  assert.deepEqual(h.replica('n1').view, req.next);
});

test('primary and backup both lost: the empty spare never becomes primary', () => {
  const h = steady();
  h.write('n1', 3);
  h.deliver();
  h.crash('n1');
  h.crash('n2');
  h.advance(3000, { deliver: () => true, arbiter: true });
  assert.equal(h.role('n3'), 'spare');
  assert.deepEqual(h.arbiterView, { epoch: 2, primary: 'n1', backups: ['n2'] });
});

test('recruiting: during the handover outputs wait for the recruit too, then it becomes backup', () => {
  const h = steady();
  h.crash('n2');
  h.advance(150, { deliver: cutNoJoins, arbiter: true });
  assert.equal(h.arbiterView.backups[0] ?? null, null);
  h.write('n1', 3); // released at once: no backup
  // n3 joins and gets a snapshot; deliver only the snapshot and its ack.
  h.advance(25, { deliver: (e) => e.msg.type === 'join' });
  const f = status(h.replica('n1')).recruit;
  assert.equal(f?.id, 'n3');
  h.deliver();
  assert.deepEqual(h.snapshots.get('n3'), [3]);
  // Snapshot acked, caught up, told of the pending view: the test-and-set is at the arbiter.
  assert.equal(status(h.replica('n1')).recruit?.phase, 'handover');
  assert.deepEqual(h.casQueue.map((c) => c.next), [{ epoch: 4, primary: 'n1', backups: ['n3'] }]);
  // While the handover is under way, a write waits for n3 as well.
  const [w] = h.write('n1', 1);
  assert.equal(h.isReleased('n1', w!), false);
  h.deliver();
  assert.equal(h.isReleased('n1', w!), true);
  h.answerArbiter();
  h.settle(100);
  assert.deepEqual(h.arbiterView, { epoch: 4, primary: 'n1', backups: ['n3'] });
  assert.equal(h.role('n3'), 'backup');
});

test('a recruit whose primary dies right after the handover test-and-set goes live', () => {
  const h = new Harness();
  h.boot('n1');
  h.write('n1', 4);
  h.advance(30, { deliver: (e) => e.msg.type !== 'ack' || e.to !== 'n1' || true });
  h.deliver();
  // The addBackup test-and-set is queued at the arbiter: it lands, then n1 dies.
  const pending = h.casQueue.find((r) => r.from === 'n1');
  assert.ok(pending, 'n1 proposed a backup');
  const recruit = pending.next.backups[0]!;
  h.crash('n1');
  h.answerArbiter();
  assert.equal(h.arbiterView.backups[0] ?? null, recruit);
  h.advance(300, { deliver: () => true, arbiter: true });
  assert.equal(h.role(recruit), 'primary', 'the recruit knew the pending view and went live');
  assert.equal(h.replica(recruit).lastIndex, 4);
});

test('flow control: the primary stops taking input when the unacked log is full, and resumes on acks', () => {
  const h = new Harness(['n1', 'n2', 'n3'], { unackedEntriesMax: 4 });
  h.boot('n1');
  h.settle(300);
  h.write('n1', 4);
  assert.equal(canAppend(h.replica('n1')), false);
  assert.throws(() => h.write('n1', 1), /cannot append/);
  h.deliver();
  assert.equal(canAppend(h.replica('n1')), true);
  assert.equal(status(h.replica('n1')).retainedEntries, 0);
});

test('flow control counts bytes too', () => {
  const h = new Harness(['n1', 'n2', 'n3'], { unackedBytesMax: 100 });
  h.boot('n1');
  h.settle(300);
  h.write('n1', 2, 60);
  assert.equal(canAppend(h.replica('n1')), false);
  h.deliver();
  assert.equal(canAppend(h.replica('n1')), true);
});

test('a frame after a gap is acked with the gap flag and the primary resends from the last ack', () => {
  const h = steady();
  const outs = h.write('n1', 3);
  h.drop(between('n1', 'n2'));
  h.write('n1', 2);
  h.deliver((e) => e.from === 'n1');
  assert.equal(h.replica('n2').lastIndex, 0, 'entries 4-5 are not taken after a gap');
  const gapAck = h.net.find((e) => e.from === 'n2' && e.msg.type === 'ack');
  assert.ok(gapAck?.msg.type === 'ack' && gapAck.msg.gap);
  h.deliver();
  assert.equal(h.replica('n2').lastIndex, 5);
  for (const o of outs) assert.equal(h.isReleased('n1', o), true);
});

test('lost frames are found by the next heartbeat, lost acks repaired by the next cumulative ack', () => {
  const h = steady();
  const outs = h.write('n1', 3);
  h.drop(between('n1', 'n2'));
  assert.equal(h.replica('n2').lastIndex, 0);
  h.advance(30, { deliver: () => true, arbiter: true });
  assert.equal(h.replica('n2').lastIndex, 3, 'the heartbeat showed the gap; the entries were resent');
  const more = h.write('n1', 2);
  h.deliver((e) => e.from === 'n1');
  h.drop((e) => e.from === 'n2' && e.msg.type === 'ack');
  assert.equal(h.isReleased('n1', more[1]!), false);
  h.advance(20, { deliver: () => true, arbiter: true });
  for (const o of [...outs, ...more]) assert.equal(h.isReleased('n1', o), true);
});

test('a backup restarted empty is suspected at once when it asks to join', () => {
  const h = steady();
  h.input('n1', { type: 'message', from: 'n2', msg: { type: 'join', index: 0, logTerm: 0 } });
  assert.equal(h.casQueue.length, 1);
  assert.equal(h.casQueue[0]!.next.backups[0] ?? null, null);
});

test('a spare never acks frames of a primary it does not follow', () => {
  const h = steady();
  h.write('n1', 1);
  const frame = h.net.find((e) => e.from === 'n1' && e.to === 'n2' && e.msg.type === 'frame')!;
  h.input('n3', { type: 'message', from: 'n1', msg: frame.msg });
  assert.equal(h.net.some((e) => e.from === 'n3' && e.msg.type === 'ack'), false);
});

test('garbage from a peer is dropped with a logged reason; the replica carries on', () => {
  const h = steady();
  const garbage: unknown[] = [
    null,
    42,
    'frame',
    { type: 'frame' },
    { type: 'frame', view: { epoch: 2, primary: 'n1', backups: ['n2'] }, seq: 1, prevIndex: -1, payloads: [], primaryIndex: 0, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
    { type: 'frame', view: { epoch: 2, primary: 'n1', backups: ['n2'] }, seq: 1, prevIndex: 0, payloads: ['x'], primaryIndex: 1, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
    { type: 'frame', view: { epoch: 2, primary: 'n1', backups: ['n2'] }, seq: 1, prevIndex: 5, payloads: [new Uint8Array(1)], primaryIndex: 2, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
    { type: 'ack', epoch: 2, seq: 1, ackedIndex: 1e300, gap: false },
    { type: 'ack', epoch: 2, seq: 99999, ackedIndex: 0, gap: false },
    { type: 'chunk', view: { epoch: 2, primary: 'n1', backups: ['n2'] }, seq: 1, index: 0, chunk: 0, last: true, data: 'x' },
    { type: 'refuse', epoch: 'x', reason: '' },
    { type: 'nope' },
    { type: '__proto__' },
  ];
  for (const g of garbage) {
    for (const to of ['n1', 'n2', 'n3']) h.input(to, { type: 'message', from: 'n1' === to ? 'n2' : 'n1', msg: g });
  }
  h.input('n1', { type: 'message', from: 'stranger', msg: { type: 'join', index: 0, logTerm: 0 } });
  assert.ok(h.logs.filter((l) => l.event === 'ignoring').length >= garbage.length);
  assert.equal(h.role('n1'), 'primary');
  assert.equal(h.role('n2'), 'backup');
  const [w] = h.write('n1', 1);
  h.deliver();
  assert.equal(h.isReleased('n1', w!), true, 'still replicating');
});

test('a recruit refused because the view it expects does not exist yet keeps its state and asks again', () => {
  const h = new Harness();
  h.boot('n1');
  h.write('n1', 3);
  h.advance(30, { deliver: () => true }); // recruit, hand over; the arbiter answers nothing yet
  const proposal = h.casQueue.find((r) => r.from === 'n1');
  assert.ok(proposal, 'n1 proposed its recruit as backup');
  const recruit = proposal.next.backups[0]!;
  // n1 dies; its proposal is slow to reach the arbiter.
  h.casQueue = h.casQueue.filter((r) => r !== proposal);
  h.crash('n1');
  h.advance(120, { deliver: () => true });
  const early = h.casQueue.filter((r) => r.from === recruit);
  assert.ok(early.length > 0, 'the recruit asked to go live from the pending view');
  h.answerArbiter(); // refused: the arbiter still holds epoch 1
  assert.equal(h.arbiterView.epoch, 1);
  assert.equal(h.role(recruit), 'spare');
  assert.equal(h.replica(recruit).lastIndex, 3, 'the refusal was not final: the recruit kept its state');
  assert.ok(h.events(recruit, 'cas-not-yet') > 0);
  // The dead primary's proposal lands at last; the recruit's next attempt wins.
  h.casQueue.unshift(proposal);
  h.advance(100, { deliver: () => true, arbiter: true });
  assert.equal(h.role(recruit), 'primary');
  assert.equal(h.arbiterView.primary, recruit);
});

test('fuzz: mutated and random peer messages never throw out of the core, whatever its role', async () => {
  const { Rng } = await import('../src/sim/rng.js');
  const rng = new Rng(7);
  const pick = <T>(xs: readonly T[]): T => rng.pick(xs);
  const numbers = [0, 1, 2, 3, -1, 1.5, 2 ** 53, Number.MAX_SAFE_INTEGER, NaN, Infinity, 1e9];
  const values: unknown[] = [...numbers, null, undefined, '', 'n1', 'n9', [], {}, new Uint8Array(3), [new Uint8Array(1)], true];
  let thrown = 0;
  for (let round = 0; round < 40; round++) {
    const h = steady();
    h.write('n1', rng.int(0, 5));
    const samples = h.net.map((e) => e.msg as unknown as Record<string, unknown>);
    samples.push({ type: 'ack', epoch: 2, seq: 1, ackedIndex: 0, gap: false }, { type: 'join', index: 0, logTerm: 0 }, { type: 'refuse', epoch: 3, reason: 'x' });
    for (let i = 0; i < 200; i++) {
      const base = { ...pick(samples) };
      const keys = Object.keys(base);
      for (let k = rng.int(1, 3); k > 0; k--) {
        const key = rng.chance(0.8) && keys.length > 0 ? pick(keys) : pick(['type', 'view', 'extra']);
        base[key] = rng.chance(0.3) ? { epoch: pick(numbers), primary: pick(['n1', 'n2', 'n3', null]), backups: pick([['n1'], ['n2', 'n3'], [], null, ['n1', 'n1'], 'n2']) } : pick(values);
      }
      const to = pick(['n1', 'n2', 'n3']);
      const from = pick(['n1', 'n2', 'n3', 'x']);
      try {
        h.input(to, { type: 'message', from, msg: base });
        h.input(to, { type: 'flush' });
      } catch (e) {
        thrown++;
        assert.fail(`${to} threw on ${JSON.stringify(base, (_k, v) => (v instanceof Uint8Array ? `bytes(${v.length})` : v))} from ${from}: ${(e as Error).message}`);
      }
    }
    h.advance(50, { deliver: () => true, arbiter: true });
  }
  assert.equal(thrown, 0);
});

/**
 * Issue 16: n1 hands over to recruit n2 (n2 is told the pending view {2, n1, n2}) and then
 * hears no more acks from it, so it abandons n2 before proposing. n2, cut off from its
 * primary, asks the arbiter to go live from the pending view, which does not exist yet: a
 * "no" that is not final. n3 is dead, so no other spare can be recruited.
 */
function abandonedHandover(bugs: { noRecruitFence?: boolean } = {}): Harness {
  const h = new Harness(['n1', 'n2', 'n3'], { bugs });
  h.boot('n1');
  h.crash('n3');
  h.write('n1', 3);
  const abandoned = (): boolean => h.events('n1', 'recruit-abandoned') > 0;
  // Once n2 knows the pending view, its acks stop reaching n1 until n1 has abandoned it.
  const cutAcks = (e: Envelope): boolean =>
    !(e.from === 'n2' && e.msg.type === 'ack' && !abandoned() && h.replica('n2').following?.pendingView != null);
  h.advance(1500, { deliver: cutAcks, arbiter: true });
  assert.ok(abandoned(), 'n1 abandoned its recruit in handover');
  return h;
}

test('issue 16: a recruit abandoned in handover is fenced off, goes back to an empty spare and is recruited again', () => {
  const h = abandonedHandover();
  assert.ok(h.logs.some((l) => l.node === 'n1' && l.event === 'cas-result' && l.fields['purpose'] === 'fence' && l.fields['won'] === true));
  assert.deepEqual(h.arbiterView, { epoch: 3, primary: 'n1', backups: ['n2'] }, 'fence {2, n1, -}, then n2 recruited again');
  assert.equal(h.role('n2'), 'backup');
  assert.equal(h.replica('n2').lastIndex, 3);
  const [w] = h.write('n1', 1);
  h.settle(50);
  assert.equal(h.isReleased('n1', w!), true, 'replicating to the new backup');
  // The recruit's own attempts to go live from {2, n1, n2} can never land now.
  assert.ok(h.logs.some((l) => l.node === 'n2' && l.event === 'cas-result' && l.fields['purpose'] === 'goLive' && l.fields['won'] === false));
});

test('issue 16, planted: without the fence the recruit asks forever and the primary never gets a backup', () => {
  const h = abandonedHandover({ noRecruitFence: true });
  assert.ok(h.events('n2', 'cas-not-yet') > 5, 'n2 keeps asking to go live from a view that does not exist');
  assert.deepEqual(h.arbiterView, { epoch: 1, primary: 'n1', backups: [] });
  assert.equal(h.role('n2'), 'spare');
  assert.equal(h.replica('n2').cas?.purpose, 'goLive', 'still asking to go live from {2, n1, n2}');
  assert.equal(h.replica('n1').followers.size, 0, 'and n1 recruits nobody');
});

// ---------------------------------------------------------------------------------------
// Issue 14 item 9: a peer's word alone never makes a replica discard its state. A rumour of a
// newer epoch (a refuse, a frame or an ack) is checked with the arbiter first.

const FORGED = 1_000_000;

function forge(h: Harness, to: string, from: string, msg: Envelope['msg']): void {
  h.input(to, { type: 'message', from, msg });
}

function ignoredRumours(h: Harness, node: string): number {
  return h.logs.filter((l) => l.node === node && l.event === 'ignoring' && l.fields.reason === `rumour of epoch ${FORGED} not confirmed by the arbiter`).length;
}

test('issue 14.9: a forged refuse to the primary is checked with the arbiter, ignored, and the primary keeps serving', () => {
  const h = steady();
  const before = h.write('n1', 3);
  h.deliver();
  forge(h, 'n1', 'n2', { type: 'refuse', epoch: FORGED, reason: 'forged' });
  assert.equal(h.role('n1'), 'primary', 'no halt on a peer\'s word');
  assert.deepEqual(h.readQueue.map((q) => q.from), ['n1'], 'it asked the arbiter what view it holds');
  // While the read is pending the primary serves on: the output rule still guards every release.
  const during = h.write('n1', 2);
  h.deliver();
  for (const o of [...before, ...during]) assert.equal(h.isReleased('n1', o), true);
  h.answerArbiter();
  assert.equal(ignoredRumours(h, 'n1'), 1, 'logged: ignoring (rumour of epoch N not confirmed by the arbiter)');
  assert.equal(h.role('n1'), 'primary');
  assert.deepEqual(h.replica('n1').view, { epoch: 2, primary: 'n1', backups: ['n2'] });
  assert.equal(h.replica('n1').knownEpoch, 2, 'the rumoured epoch is not believed either');
  assert.equal(h.discarded.get('n1'), undefined);
  // The forged ack and the forged "newer primary" frame are rumours too.
  // (Reads for rumours go at most once per arbiterRetryMs: a flood of forgeries is not a
  // flood of reads.)
  forge(h, 'n1', 'n2', { type: 'ack', epoch: FORGED, seq: 1, ackedIndex: 0, gap: false });
  assert.equal(h.readQueue.length, 0, 'not at once: the last read was just now');
  h.advance(60, { deliver: () => true, arbiter: true });
  assert.equal(ignoredRumours(h, 'n1'), 2);
  forge(h, 'n1', 'n3', { type: 'frame', view: { epoch: FORGED, primary: 'n3', backups: [] }, seq: 1, prevIndex: 0, payloads: [], primaryIndex: 0, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 });
  h.advance(100, { deliver: () => true, arbiter: true });
  assert.equal(ignoredRumours(h, 'n1'), 3);
  assert.equal(h.role('n1'), 'primary');
  assert.equal(h.arbiterView.epoch, 2, 'no view change at all');
  const after = h.write('n1', 1);
  h.deliver();
  assert.equal(h.isReleased('n1', after[0]!), true);
});

test('issue 14.9: a forged refuse, and a forged "you are backup of epoch N", leave the backup with its state', () => {
  const h = steady();
  h.write('n1', 4);
  h.deliver();
  forge(h, 'n2', 'n3', { type: 'refuse', epoch: FORGED, reason: 'forged' });
  assert.equal(h.role('n2'), 'backup');
  const during = h.write('n1', 1);
  h.deliver();
  assert.equal(h.isReleased('n1', during[0]!), true, 'the backup keeps acking while it checks');
  h.answerArbiter();
  assert.equal(ignoredRumours(h, 'n2'), 1);
  forge(h, 'n2', 'n1', { type: 'frame', view: { epoch: FORGED, primary: 'n1', backups: ['n2'] }, seq: 1, prevIndex: 5, payloads: [], primaryIndex: 5, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 });
  forge(h, 'n2', 'n3', { type: 'frame', view: { epoch: FORGED, primary: 'n3', backups: [] }, seq: 1, prevIndex: 0, payloads: [], primaryIndex: 0, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 });
  h.advance(60, { deliver: () => true, arbiter: true });
  assert.equal(ignoredRumours(h, 'n2'), 2, 'both frames were one rumour, checked with one read');
  assert.deepEqual(h.replica('n2').view, { epoch: 2, primary: 'n1', backups: ['n2'] }, 'not backup of the forged epoch');
  assert.equal(h.replica('n2').lastIndex, 5);
  // The state it kept is the state that survives the primary.
  h.crash('n1');
  h.advance(300, { deliver: () => true, arbiter: true });
  assert.equal(h.role('n2'), 'primary');
  assert.equal(h.replica('n2').lastIndex, 5);
});

test('issue 14.9: a refuse the arbiter confirms still halts the deposed primary', () => {
  const h = deposedWhilePaused();
  h.resume('n1');
  const [w] = h.write('n1', 1);
  h.deliver(); // n2 refuses n1's frame with its epoch: n1 asks the arbiter
  assert.ok(h.events('n1', 'confirming') >= 1);
  assert.equal(h.role('n1'), 'primary', 'not before the arbiter answers');
  h.answerArbiter();
  assert.equal(h.role('n1'), 'halted');
  assert.match(h.replica('n1').haltReason ?? '', /deposed: n2 knows newer epoch \d+ .*the arbiter holds \{epoch \d+, primary n2/);
  assert.equal(h.isReleased('n1', w!), false);
  assert.deepEqual(h.discarded.get('n1'), [w]);
});

test('issue 14.9: arbiter unreachable while confirming: the replicas keep their state and roles, neither halts nor goes live', () => {
  const h = steady();
  h.write('n1', 3);
  h.deliver();
  h.arbiterUp = false;
  forge(h, 'n1', 'n2', { type: 'refuse', epoch: FORGED, reason: 'forged' });
  forge(h, 'n2', 'n1', { type: 'refuse', epoch: FORGED, reason: 'forged' });
  h.advance(1000, { deliver: () => true });
  assert.equal(h.role('n1'), 'primary');
  assert.equal(h.role('n2'), 'backup');
  assert.ok(h.events('n1', 'confirm-retry') >= 10, 'it keeps asking, once per arbiterRetryMs');
  assert.equal(ignoredRumours(h, 'n1'), 0, 'nothing decided without the arbiter');
  const out = h.write('n1', 1);
  h.deliver();
  assert.equal(h.isReleased('n1', out[0]!), true, 'and serves on meanwhile');
  h.arbiterUp = true;
  h.advance(100, { deliver: () => true, arbiter: true });
  assert.equal(ignoredRumours(h, 'n1'), 1);
  assert.equal(ignoredRumours(h, 'n2'), 1);
  assert.deepEqual(h.arbiterView, { epoch: 2, primary: 'n1', backups: ['n2'] });
  assert.equal(h.replica('n2').lastIndex, 4);
});

test('issue 14.9, planted: believing the peer (haltOnRumour) loses every copy of the state', () => {
  const h = new Harness(['n1', 'n2', 'n3'], { bugs: { haltOnRumour: true } });
  h.boot('n1');
  h.settle(300);
  h.write('n1', 3);
  h.deliver();
  forge(h, 'n1', 'n2', { type: 'refuse', epoch: FORGED, reason: 'forged' });
  forge(h, 'n2', 'n1', { type: 'refuse', epoch: FORGED, reason: 'forged' });
  assert.equal(h.role('n1'), 'halted');
  assert.equal(h.role('n2'), 'halted');
});
