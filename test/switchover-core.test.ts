// Planned switchover (issue 11 item 1) on the real core, scripted message by message: the roles
// swap through one test-and-set, and every failure in the middle ends with one primary holding
// every released entry.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, between } from '../src/sim/harness.js';
import { canAppend, status } from '../src/core/index.js';
import { toTimeline } from '../src/node/admin.js';

/** n1 primary, n2 its backup, n3 a spare. */
function steady(): Harness {
  const h = new Harness();
  h.boot('n1');
  h.settle(300);
  assert.deepEqual(h.arbiterView, { epoch: 2, primary: 'n1', backups: ['n2'] });
  return h;
}

function outcomes(h: Harness, node: string): string[] {
  return h.switchovers.filter((s) => s.node === node).map((s) => (s.code === null ? s.outcome : `${s.outcome} ${s.code}`));
}

test('switchover: new commands wait, the backup catches up, one test-and-set swaps the roles', () => {
  const h = steady();
  const [w] = h.write('n1', 3);
  h.input('n1', { type: 'switchover', to: null });
  assert.deepEqual(outcomes(h, 'n1'), ['started']);
  assert.equal(canAppend(h.replica('n1')), false, 'new commands wait (parked by the driver)');
  assert.equal(h.arbiterView.epoch, 2, 'no test-and-set before the backup acked the last index');
  h.deliver(); // frames and acks: the held writes go out, the test-and-set is asked
  assert.ok(h.isReleased('n1', w!));
  h.answerArbiter();
  assert.deepEqual(h.arbiterView, { epoch: 3, primary: 'n2', backups: ['n1'] });
  assert.deepEqual(outcomes(h, 'n1'), ['started', 'done']);
  assert.equal(h.role('n1'), 'backup', 'the old primary is the backup at once: it holds the same log');
  h.deliver(); // n1's word reaches n2, which reads the arbiter
  h.answerArbiter();
  assert.equal(h.role('n2'), 'primary');
  h.settle(50);
  const [w2] = h.write('n2', 2);
  h.deliver();
  assert.ok(h.isReleased('n2', w2!), 'the new primary releases on the old one\'s acks');
  assert.deepEqual(h.applied.get('n1'), [4, 5], 'the old primary applies the new primary\'s entries');
  // And back.
  h.input('n2', { type: 'switchover', to: 'n1' });
  h.settle(50);
  assert.deepEqual(h.arbiterView, { epoch: 4, primary: 'n1', backups: ['n2'] });
  assert.equal(h.role('n1'), 'primary');
  assert.equal(h.role('n2'), 'backup');
});

test('switchover refusals: not the primary, not the backup, no backup, one already under way', () => {
  const h = steady();
  h.input('n2', { type: 'switchover', to: null });
  assert.deepEqual(outcomes(h, 'n2'), ['refused E_SWITCHOVER_NOT_PRIMARY']);
  h.input('n1', { type: 'switchover', to: 'n3' });
  assert.deepEqual(outcomes(h, 'n1'), ['refused E_SWITCHOVER_TARGET']);
  h.write('n1', 1);
  h.input('n1', { type: 'switchover', to: 'n2' });
  h.input('n1', { type: 'switchover', to: 'n2' });
  assert.deepEqual(outcomes(h, 'n1').slice(1), ['started', 'refused E_SWITCHOVER_BUSY']);
  const alone = new Harness(['n1']);
  alone.boot('n1');
  alone.input('n1', { type: 'switchover', to: null });
  assert.deepEqual(outcomes(alone, 'n1'), ['refused E_SWITCHOVER_NO_BACKUP']);
  assert.ok(canAppend(alone.replica('n1')), 'a refusal changes nothing');
});

test('switchover: the backup dies during the catch-up; the switchover aborts and the primary serves on', () => {
  const h = steady();
  const [w] = h.write('n1', 2);
  h.input('n1', { type: 'switchover', to: null });
  h.crash('n2');
  h.advance(600, { deliver: () => true, arbiter: true });
  assert.deepEqual(outcomes(h, 'n1'), ['started', 'aborted E_SWITCHOVER_ABORTED']);
  assert.equal(h.role('n1'), 'primary');
  assert.equal(h.arbiterView.primary, 'n1');
  assert.ok(h.isReleased('n1', w!), 'released once n1 carries on without the backup');
  assert.ok(canAppend(h.replica('n1')), 'commands are taken again');
});

test('switchover: the old primary dies right after the test-and-set; the backup goes live from that view', () => {
  const h = steady();
  const [w] = h.write('n1', 3);
  h.input('n1', { type: 'switchover', to: null });
  h.deliver();
  assert.ok(h.isReleased('n1', w!));
  h.answerArbiter();
  assert.deepEqual(h.arbiterView, { epoch: 3, primary: 'n2', backups: ['n1'] });
  h.crash('n1'); // its word to n2 is lost with it
  h.advance(600, { deliver: () => true, arbiter: true });
  assert.equal(h.role('n2'), 'primary', 'n2 suspected n1, was refused with the view naming it primary, and went live');
  assert.equal(h.replica('n2').lastIndex, 3, 'with every released entry');
});

test('switchover: the view moved under it (the backup went live first); the old primary halts and serves nothing', () => {
  const h = steady();
  h.write('n1', 1);
  h.deliver();
  h.input('n1', { type: 'switchover', to: null });
  assert.ok(h.casQueue.some((c) => c.from === 'n1' && c.next.primary === 'n2'), 'caught up at once: the test-and-set is asked');
  // n2 stops hearing n1 and asks to go live; its test-and-set reaches the arbiter first.
  h.advance(600, { deliver: (e) => !between('n1', 'n2', false)(e), arbiter: false });
  assert.ok(h.casQueue.some((c) => c.from === 'n2'));
  h.casQueue = [...h.casQueue.filter((c) => c.from !== 'n1'), ...h.casQueue.filter((c) => c.from === 'n1')];
  h.answerArbiter();
  assert.deepEqual(h.arbiterView, { epoch: 3, primary: 'n2', backups: [] });
  assert.equal(h.role('n2'), 'primary');
  assert.notEqual(h.role('n1'), 'primary');
  assert.deepEqual(outcomes(h, 'n1'), ['started', 'aborted E_SWITCHOVER_ABORTED']);
});

test('the dashboard timeline tells a switchover from a failover', () => {
  const at = null;
  const events = toTimeline([
    { view: { epoch: 1, primary: 'n1', backups: [] }, at },
    { view: { epoch: 2, primary: 'n1', backups: ['n2'] }, at },
    { view: { epoch: 3, primary: 'n2', backups: ['n1'] }, at },
    { view: { epoch: 4, primary: 'n1', backups: [] }, at },
  ]);
  assert.deepEqual(events.map((e) => e.kind), ['start', 'view-change', 'switchover', 'failover']);
  assert.equal(events[2]!.text, 'epoch 3: switchover, n2 took over from n1, which is its backup');
});
