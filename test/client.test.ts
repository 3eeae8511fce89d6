// The client library against a real cluster: it finds the primary from any node, follows the
// NOTPRIMARY hint with a full pipeline in flight, and reports an unknown outcome as such.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { CommandTimeoutError, LockstepClient, ReplyError } from '../src/client/index.js';

test('the client finds the primary from a backup-first node list, with 500 commands in flight', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const primary = (await cluster.primary())!;
  const order = [primary.view.backup!, ...cluster.nodes.map((n) => n.id).filter((id) => id !== primary.id && id !== primary.view.backup), primary.id];
  const client = new LockstepClient({ nodes: order.map((id) => `127.0.0.1:${cluster.node(id).client.port}`), maxInFlight: 1000 });
  t.after(() => client.close());
  const replies = await Promise.all(Array.from({ length: 500 }, (_, i) => client.incr(`c${i % 10}`)));
  assert.equal(replies.length, 500);
  for (let k = 0; k < 10; k++) assert.equal(await client.get(`c${k}`), '50', 'each counter incremented exactly 50 times');
  assert.ok(client.reconnects <= 4, `followed the hint instead of wandering (${client.reconnects} moves)`);
});

test('error replies reject with ReplyError; an unreachable cluster rejects with CommandTimeoutError', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 1 });
  t.after(() => cluster.stop());
  const client = new LockstepClient({ nodes: cluster.clientAddresses(), commandTimeoutMs: 1500, attemptTimeoutMs: 200 });
  t.after(() => client.close());
  await client.set('s', 'abc');
  await assert.rejects(client.incr('s'), (e: unknown) => e instanceof ReplyError && /not an integer/.test(e.message));
  assert.equal(await client.append('s', 'é'), 5, 'UTF-8 bytes');
  assert.equal(await client.get('s'), 'abcé');
  await cluster.kill9('n1');
  // The only node is gone: the GET may have left on the old connection just before it broke
  // (outcome unknown) or never left (then it certainly did not execute); either way the error
  // says which, and what the attempts to reconnect saw.
  await assert.rejects(client.get('s'), (e: unknown) =>
    e instanceof CommandTimeoutError &&
    (e.mayHaveExecuted ? /may or may not have executed/ : /it was never sent to a node, so it did not execute/).test(e.message) &&
    /last attempts: .*ECONNREFUSED/.test(e.message));
});
