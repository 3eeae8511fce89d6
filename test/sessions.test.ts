// Client sessions of the duplicate filter on a real 3-node cluster (issue 9 item 5): a session
// idle for dedupSessionEntries log entries expires on every replica alike; a late retry of
// its request is refused with E_SESSION_EXPIRED, also by the next primary after kill -9, and
// never runs twice; lockstep/client renews its session and carries on, and a command of its
// that was in doubt when the session went is failed as such (it may have run), not resent.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { RespPipe } from '../src/testing/resp-pipe.js';
import { TcpProxy } from '../src/testing/tcp-proxy.js';
import { LockstepClient, SessionExpiredError } from '../src/client/index.js';
import type { KvReply } from '../src/guest/index.js';

const SESSION_ENTRIES = 50;
const expired = (r: KvReply): boolean => r.kind === 'error' && r.message.startsWith('ERR E_SESSION_EXPIRED') && r.message.includes('start a new session');

test('an expired session\'s late retry is refused on every primary, and the client renews its session', { timeout: 180_000 }, async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3, heartbeatMs: 50, failureTimeoutMs: 2000, extra: { dedupSessionEntries: SESSION_ENTRIES } });
  t.after(() => cluster.stop());
  const p0 = (await cluster.primary())!;
  let db = await RespPipe.connect(cluster.node(p0.id).client.port);
  t.after(() => db.close());
  const client = new LockstepClient({ nodes: cluster.clientAddresses(), commandTimeoutMs: 60_000 });
  t.after(() => client.close());
  assert.equal(await client.incr('n'), 1);
  const firstId = client.clientId;

  assert.deepEqual(await db.one('LOCKSTEP.EXEC', 'raw', '1', '0', 'INCR', 'n'), { kind: 'integer', value: 2n });
  assert.deepEqual(await db.one('LOCKSTEP.EXEC', 'raw', '1', '1', 'INCR', 'n'), { kind: 'integer', value: 2n }, 'a retry in a live session is a duplicate');
  // More than SESSION_ENTRIES log entries from others: both sessions expire.
  const replies = await db.send(Array.from({ length: SESSION_ENTRIES + 5 }, (_, i) => ['SET', `x${i}`, String(i)]));
  assert.ok(replies.every((r) => r.kind === 'status'));
  const late = await db.one('LOCKSTEP.EXEC', 'raw', '1', '1', 'INCR', 'n');
  assert.ok(expired(late), JSON.stringify(late));
  assert.deepEqual(await db.one('GET', 'n'), { kind: 'bulk', value: '2' }, 'the late retry did not run');

  // The idle client's next command is refused (it did not run), so the client sends it again
  // under a new session: it runs once.
  assert.equal(await client.incr('n'), 3);
  assert.equal(client.sessionsRenewed, 1);
  assert.notEqual(client.clientId, firstId);

  // Expiry is replicated state: after kill -9 of the primary, the new one refuses too.
  await cluster.waitFor(async () => {
    const st = (await cluster.statuses()).filter((s) => s?.role === 'primary' || s?.role === 'backup');
    return st.length === 2 && st[0]!.appliedIndex === st[1]!.appliedIndex && st[0]!.digest === st[1]!.digest;
  }, 30_000, 'the backup to apply everything with the same digest');
  await cluster.kill9(p0.id);
  const p1 = await cluster.newPrimary(p0.id, 30_000);
  db.close();
  db = await RespPipe.connect(cluster.node(p1).client.port);
  for (const [seq, acked] of [['1', '1'], ['2', '1']]) {
    const r = await db.one('LOCKSTEP.EXEC', 'raw', seq!, acked!, 'INCR', 'n');
    assert.ok(expired(r), JSON.stringify(r));
  }
  assert.equal(await client.incr('n'), 4, 'the client follows the failover in its new session');
  assert.equal(await client.get('n'), '4');
});

/** One node, a proxy in front of its client port (for the client under test), and a direct RESP connection. */
async function oneNodeBehindProxy(t: TestContext, extra: Record<string, unknown>): Promise<{ cluster: ProcessCluster; proxy: TcpProxy; db: RespPipe }> {
  const cluster = await ProcessCluster.start({ nodes: 1, extra });
  t.after(() => cluster.stop());
  const port = cluster.node('n1').client.port;
  const proxy = new TcpProxy({ host: '127.0.0.1', port });
  await proxy.start();
  t.after(() => proxy.stop());
  const db = await RespPipe.connect(port);
  t.after(() => db.close());
  return { cluster, proxy, db };
}

test('a command in doubt when its session expires fails with SessionExpiredError and is not sent again', { timeout: 120_000 }, async (t) => {
  const { cluster, proxy, db } = await oneNodeBehindProxy(t, { dedupSessionEntries: SESSION_ENTRIES });
  const client = new LockstepClient({ nodes: [`127.0.0.1:${proxy.port}`], attemptTimeoutMs: 300, commandTimeoutMs: 60_000 });
  t.after(() => client.close());
  assert.equal(await client.incr('n'), 1);
  // The reply to the next INCR is lost: the client keeps resending it (a duplicate each time).
  proxy.cut = 'from-target';
  const inDoubt = client.incr('n');
  await cluster.waitFor(async () => JSON.stringify(await db.one('GET', 'n')) === JSON.stringify({ kind: 'bulk', value: '2' }), 30_000, 'the INCR to run');
  // Meanwhile the session expires.
  const replies = await db.send(Array.from({ length: SESSION_ENTRIES + 5 }, (_, i) => ['SET', `x${i}`, String(i)]));
  assert.ok(replies.every((r) => r.kind === 'status'));
  proxy.heal();
  await assert.rejects(inDoubt, (e: unknown) =>
    e instanceof SessionExpiredError && e.mayHaveExecuted && e.code === 'E_SESSION_EXPIRED' &&
    /may or may not have executed/.test(e.message) && /E_SESSION_EXPIRED/.test(e.message));
  assert.deepEqual(await db.one('GET', 'n'), { kind: 'bulk', value: '2' }, 'it ran once and was not sent again');
  assert.equal(await client.incr('n'), 3, 'the client goes on in a new session');
  assert.equal(client.sessionsRenewed, 1);
});

test('a first command whose reply is lost is resent and runs once: LOCKSTEP.OPEN opens the session, harmless to repeat', { timeout: 120_000 }, async (t) => {
  const { cluster, proxy, db } = await oneNodeBehindProxy(t, {});
  // The raw form: OPEN twice is OK, and then seq 1 with ackedBelow 1 runs (it cannot open).
  assert.deepEqual(await db.one('LOCKSTEP.OPEN', 'raw'), { kind: 'status', value: 'OK' });
  assert.deepEqual(await db.one('LOCKSTEP.OPEN', 'raw'), { kind: 'status', value: 'OK' });
  assert.deepEqual(await db.one('LOCKSTEP.EXEC', 'raw', '1', '1', 'INCR', 'm'), { kind: 'integer', value: 1n });
  assert.deepEqual(await db.one('LOCKSTEP.EXEC', 'raw', '1', '1', 'INCR', 'm'), { kind: 'integer', value: 1n }, 'a duplicate');
  const bad = await db.one('LOCKSTEP.OPEN');
  assert.ok(bad.kind === 'error' && /wrong number of arguments for 'lockstep.open'/.test(bad.message), JSON.stringify(bad));
  const unopened = await db.one('LOCKSTEP.EXEC', 'never-opened', '1', '1', 'INCR', 'm');
  assert.ok(expired(unopened), JSON.stringify(unopened));

  // The client's very first command is lost on the way (as when the primary dies with it in
  // its socket buffer): in doubt for the client, though it never ran. Its resend must run it.
  const client = new LockstepClient({ nodes: [`127.0.0.1:${proxy.port}`], attemptTimeoutMs: 300, commandTimeoutMs: 60_000 });
  t.after(() => client.close());
  proxy.cut = 'to-target';
  const lost = client.incr('k');
  await new Promise((r) => setTimeout(r, 1000)); // a few sendings, none reaching the node
  proxy.heal();
  assert.equal(await lost, 1, 'the first command, in doubt, is resent and runs');
  assert.equal(client.sessionsRenewed, 0);
  assert.deepEqual(await db.one('GET', 'k'), { kind: 'bulk', value: '1' });

  // A new client's first command (and its OPEN) run, and their replies are lost.
  const client2 = new LockstepClient({ nodes: [`127.0.0.1:${proxy.port}`], attemptTimeoutMs: 300, commandTimeoutMs: 60_000 });
  t.after(() => client2.close());
  proxy.cut = 'from-target';
  const first = client2.incr('n');
  await cluster.waitFor(async () => JSON.stringify(await db.one('GET', 'n')) === JSON.stringify({ kind: 'bulk', value: '1' }), 30_000, 'the INCR to run');
  await new Promise((r) => setTimeout(r, 1000)); // a few resends, each a duplicate
  proxy.heal();
  assert.equal(await first, 1, 'the resent first command is answered from the filter');
  assert.deepEqual(await db.one('GET', 'n'), { kind: 'bulk', value: '1' }, 'it ran once');
  assert.equal(client2.sessionsRenewed, 0);
  assert.equal(await client2.incr('n'), 2);
});
