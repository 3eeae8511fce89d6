// Table tests of the core's pure parts: message validation, views, the replica's guards.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AssertionError,
  DEFAULT_TIMING,
  NO_VIEW,
  formatView,
  createReplica,
  isView,
  sameView,
  step,
  validateMessage,
} from '../src/core/index.js';

const view = { epoch: 3, primary: 'n1', backups: ['n2'] };
const frame = { type: 'frame', view, seq: 1, prevIndex: 0, payloads: [new Uint8Array(2)], primaryIndex: 1, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 };

test('validateMessage accepts well-formed messages and names what is wrong with the rest', () => {
  const cases: [unknown, string | null][] = [
    [frame, null],
    [{ ...frame, payloads: [] }, null],
    [{ ...frame, pendingView: { epoch: 4, primary: 'n1', backups: ['n3'] } }, null],
    [{ ...frame, commitIndex: 2 }, 'frame: commitIndex is not an index up to primaryIndex'],
    [{ ...frame, term: view.epoch + 1 }, 'frame: term, baseIndex or baseTerm out of range'],
    [{ ...frame, term: 2, baseTerm: 2 }, 'frame: term, baseIndex or baseTerm out of range'],
    [{ ...frame, baseIndex: -1 }, 'frame: term, baseIndex or baseTerm is not an index'],
    [{ type: 'chunk', view, seq: 2, index: 7, chunk: 0, last: true, data: new Uint8Array(0), keep: false }, null],
    [{ type: 'chunkAck', epoch: 3, seq: 2, index: 7, chunks: 1, gap: false }, null],
    [{ type: 'ack', epoch: 3, seq: 1, ackedIndex: 0, gap: false }, null],
    [{ type: 'refuse', epoch: 4, reason: 'stale' }, null],
    [{ type: 'join', index: 0, logTerm: 0 }, null],
    [null, 'message is not an object'],
    [[], 'unknown message type'],
    [{ type: 'frame', view: null }, 'frame: view is not an object'],
    [{ ...frame, view: { epoch: 0, primary: 'n1', backups: [] } }, 'frame: view.epoch is not a positive integer'],
    [{ ...frame, view: { epoch: 1, primary: null, backups: [] } }, 'frame: view.primary is not a node id'],
    [{ ...frame, view: { epoch: 1, primary: 'n1', backups: ['n1'] } }, 'frame: view names one node as primary and backup'],
    [{ ...frame, view: { epoch: 1, primary: 'n1', backups: ['n2', 'n3', 'n2'] } }, 'frame: view names one backup twice'],
    [{ ...frame, view: { epoch: 1, primary: 'n1', backup: 'n2' } }, 'frame: view.backups is not a list of node ids'],
    [{ ...frame, view: { epoch: 1, primary: 'n1', backups: ['n2', ''] } }, 'frame: view.backups is not a list of node ids'],
    [{ ...frame, seq: 0 }, 'frame: seq is not a positive integer'],
    [{ ...frame, seq: 1.5 }, 'frame: seq is not a positive integer'],
    [{ ...frame, prevIndex: -1 }, 'frame: prevIndex is not an index'],
    [{ ...frame, prevIndex: 2 ** 60 }, 'frame: prevIndex is not an index'],
    [{ ...frame, payloads: 'x' }, 'frame: payloads is not an array of byte arrays'],
    [{ ...frame, payloads: [[1, 2]] }, 'frame: payloads is not an array of byte arrays'],
    [{ ...frame, primaryIndex: 0 }, 'frame: entries beyond primaryIndex'],
    [{ ...frame, pendingView: 7 }, 'frame: pendingView: view is not an object'],
    [{ type: 'chunk', view, seq: 2, index: 7, chunk: 0, last: true, data: [1], keep: false }, 'chunk: data is not a byte array'],
    [{ type: 'chunk', view, seq: 2, index: 7, chunk: -1, last: true, data: new Uint8Array(0), keep: false }, 'chunk: chunk is not a chunk number'],
    [{ type: 'chunk', view, seq: 2, index: 7, chunk: 0, last: 1, data: new Uint8Array(0), keep: false }, 'chunk: last is not a boolean'],
    [{ type: 'chunk', view, seq: 2, index: 7, chunk: 0, last: true, data: new Uint8Array(0) }, 'chunk: keep is not a boolean'],
    [{ type: 'chunk', view, seq: 2, index: 0, chunk: 0, last: true, data: new Uint8Array(0), keep: true }, 'chunk: a keep chunk is the single, empty, last chunk at an index above 0'],
    [{ type: 'chunk', view, seq: 2, index: 7, chunk: 0, last: false, data: new Uint8Array(0), keep: true }, 'chunk: a keep chunk is the single, empty, last chunk at an index above 0'],
    [{ type: 'join' }, 'join: index or logTerm is not an index'],
    [{ type: 'join', index: 0, logTerm: 3 }, 'join: index and logTerm are both 0 (no state) or both above 0'],
    [{ type: 'chunkAck', epoch: 3, seq: 2, index: 7, chunks: 1 }, 'chunkAck: gap is not a boolean'],
    [{ type: 'ack', epoch: 3, seq: 1, ackedIndex: 0 }, 'ack: gap is not a boolean'],
    [{ type: 'ack', epoch: 0, seq: 1, ackedIndex: 0, gap: false }, 'ack: epoch is not a positive integer'],
    [{ type: 'refuse', epoch: 1 }, 'refuse: reason is not a string'],
    [{ type: 'toString' }, 'unknown message type'],
  ];
  for (const [msg, problem] of cases) {
    const got = validateMessage(msg);
    if (problem === null) assert.equal(got, msg, JSON.stringify(msg));
    else assert.ok(typeof got === 'string' && got.startsWith(problem), `${String(got)} should start with ${problem}`);
  }
});

test('views: equality and shape', () => {
  assert.ok(sameView(view, { ...view }));
  assert.ok(!sameView(view, { ...view, backups: [] }));
  assert.ok(!sameView(view, { ...view, backups: [...view.backups, 'n3'] }));
  assert.ok(!sameView({ ...view, backups: ['n2', 'n3'] }, { ...view, backups: ['n3', 'n2'] }), 'the order of backups is part of a view');
  assert.equal(formatView({ ...view, backups: ['n2', 'n3'] }), '{epoch 3, primary n1, backups n2,n3}');
  assert.equal(formatView(view), '{epoch 3, primary n1, backup n2}');
  assert.ok(!sameView(view, NO_VIEW));
  assert.ok(isView(view));
  assert.ok(!isView(NO_VIEW), 'epoch 0 is not a view a peer may send');
});

const config = { ...DEFAULT_TIMING, id: 'n1', nodes: ['n1', 'n2'] };

test('a replica refuses a config it cannot run with (an invariant, not peer input)', () => {
  assert.throws(() => createReplica({ ...config, id: 'x' }, 0), AssertionError);
  assert.throws(() => createReplica({ ...config, failureTimeoutMs: 10, heartbeatMs: 10 }, 0), AssertionError);
});

test('time never goes back; inputs that break the caller contract are assertion failures', () => {
  const r = createReplica(config, 100);
  assert.throws(() => step(r, { type: 'tick' }, 99), AssertionError);
  assert.throws(() => step(r, { type: 'append', payload: new Uint8Array(1) }, 100), AssertionError, 'not primary');
  step(r, { type: 'start' }, 100);
  assert.throws(() => step(r, { type: 'start' }, 100), AssertionError);
});

test('the bootstrap test-and-set: won -> primary, lost -> spare, late answers ignored', () => {
  const won = createReplica(config, 0);
  const [cas] = step(won, { type: 'start' }, 0).filter((a) => a.type === 'arbiterCas');
  assert.ok(cas?.type === 'arbiterCas');
  assert.deepEqual(cas.expected, NO_VIEW);
  assert.deepEqual(cas.next, { epoch: 1, primary: 'n1', backups: [] });
  step(won, { type: 'arbiterResult', requestId: cas.requestId, ok: true, view: cas.next }, 1);
  assert.equal(won.role, 'primary');

  const lost = createReplica(config, 0);
  step(lost, { type: 'start' }, 0);
  step(lost, { type: 'arbiterResult', requestId: 1, ok: false, view: { epoch: 5, primary: 'n2', backups: [] } }, 1);
  assert.equal(lost.role, 'spare');
  assert.equal(lost.knownEpoch, 5);
  const late = step(lost, { type: 'arbiterResult', requestId: 1, ok: true, view: { epoch: 1, primary: 'n1', backups: [] } }, 2);
  assert.equal(lost.role, 'spare');
  assert.ok(late.some((a) => a.type === 'log' && a.event === 'ignoring'));
});
