// Issue 14 item 9 on real processes: a peer's word alone must not make a node halt. A process
// that holds the cluster's secret (it reads the secret file, as a member would) authenticates
// as a member and sends the primary and the backup `refuse {epoch: 1000000}`, and the backup a
// frame saying "you are the backup of epoch 1000000". Each node reads the arbiter's view (the
// file arbiter), finds no such epoch, logs the rumour as ignored and serves on: roles, epoch and
// state unchanged, no node starts over, no acknowledged write lost.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { appendProblems } from '../src/testing/workload.js';
import { LockstepClient } from '../src/client/index.js';
import { FrameDecoder, frame } from '../src/net/framing.js';
import { PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, decodeHandshake, encodeAuthProof, encodeHandshake, encodePeerMessage } from '../src/net/peer-codec.js';
import type { PeerMessage } from '../src/core/index.js';

const FORGED_EPOCH = 1_000_000;
const IGNORED = `rumour of epoch ${FORGED_EPOCH} not confirmed by the arbiter`;

/**
 * Dial `to`'s peer port as member `as`, answer its challenge with the secret, and resolve with
 * the authenticated socket once `to` logged it accepted.
 */
async function forgedMember(cluster: ProcessCluster, to: string, as: string, sockets: Set<net.Socket>): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port: cluster.node(to).peer.port });
  sockets.add(socket);
  socket.on('error', () => {});
  const decoder = new FrameDecoder(64 * 1024);
  const challenge = new Promise<Uint8Array>((resolve, reject) => {
    socket.on('data', (d: Buffer) => {
      decoder.push(d);
      const f = decoder.next();
      if (f === null) return;
      const c = decodeHandshake(f).challenge;
      if (c instanceof Uint8Array) resolve(c);
      else reject(new Error(`${to} sent no challenge: is the secret configured?`));
    });
    socket.once('close', () => reject(new Error(`${to} closed the connection before its handshake`)));
  });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write(frame(encodeHandshake({ cluster: cluster.cluster, nodeId: as, protocolVersion: PROTOCOL_VERSION, minVersion: PROTOCOL_VERSION_MIN, epoch: 0, arbiterId: cluster.arbiterId })));
  const secret = Buffer.from(readFileSync(join(cluster.dir, 'secret'), 'latin1').trim(), 'latin1');
  const mac = createHmac('sha256', secret)
    .update('lockstep peer auth v1\0')
    .update(`${cluster.cluster}\0${as}\0${to}\0`)
    .update(await challenge)
    .digest();
  socket.write(frame(encodeAuthProof(mac)));
  const port = socket.localPort;
  await cluster.waitFor(() => logged(cluster, to, (r) => r.event === 'peer-accepted' && r.remote === `127.0.0.1:${port}` && r.authenticated === true).length > 0, 20_000, `${to} to accept the forger as ${as}`);
  return socket;
}

function logged(cluster: ProcessCluster, id: string, pred: (r: Record<string, unknown>) => boolean): Record<string, unknown>[] {
  return cluster
    .log(id)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return []; // a torn last line
      }
    })
    .filter(pred);
}

test('issue 14.9: a member forging refuse {epoch: 1000000} to the primary and the backup halts neither; no acknowledged write is lost', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3, heartbeatMs: 50, failureTimeoutMs: 1500 });
  const sockets = new Set<net.Socket>();
  const client = new LockstepClient({ nodes: cluster.clientAddresses(), attemptTimeoutMs: 1000, commandTimeoutMs: 30_000 });
  t.after(async () => {
    client.close();
    for (const s of sockets) s.destroy();
    await cluster.stop();
  });
  const before = (await cluster.primary())!;
  const primary = before.id;
  const backup = before.view.backup;
  assert.ok(backup !== null, 'the cluster has a backup');
  const epoch = before.epoch;

  // Writes all along: before, during and after the forgery.
  const key = 'rumour-log';
  const acked: string[] = [];
  let writing = true;
  const writer = (async () => {
    for (let i = 0; writing; i++) {
      await client.append(key, `w${i};`);
      acked.push(`w${i};`);
    }
  })();
  await cluster.waitFor(() => acked.length >= 20, 30_000, '20 acknowledged appends before the forgery');

  const toPrimary = await forgedMember(cluster, primary, backup, sockets);
  const toBackup = await forgedMember(cluster, backup, primary, sockets);
  const refuse: PeerMessage = { type: 'refuse', epoch: FORGED_EPOCH, reason: 'forged: you are deposed' };
  toPrimary.write(frame(encodePeerMessage(refuse)));
  toBackup.write(frame(encodePeerMessage(refuse)));
  await cluster.waitFor(
    () => [primary, backup].every((id) => logged(cluster, id, (r) => r.event === 'ignoring' && r.reason === IGNORED).length >= 1),
    30_000,
    'both nodes to log the rumour as ignored',
  );
  // "You are the backup of epoch 1000000", in the primary's name, with its real log position.
  const at = (await cluster.status(backup))!.logIndex;
  const frameMsg: PeerMessage = {
    type: 'frame',
    view: { epoch: FORGED_EPOCH, primary, backups: [backup] },
    seq: 1,
    prevIndex: at,
    payloads: [],
    primaryIndex: at,
    pendingView: null,
    commitIndex: 0,
    term: 0,
    baseIndex: 0,
    baseTerm: 0,
  };
  toBackup.write(frame(encodePeerMessage(frameMsg)));
  await cluster.waitFor(() => logged(cluster, backup, (r) => r.event === 'ignoring' && r.reason === IGNORED).length >= 2, 30_000, 'the backup to ignore the forged view too');

  const mark = acked.length;
  await cluster.waitFor(() => acked.length >= mark + 20, 30_000, '20 more acknowledged appends after the forgery');
  writing = false;
  await writer;

  for (const [id, role] of [[primary, 'primary'], [backup, 'backup']] as const) {
    const s = (await cluster.status(id))!;
    assert.equal(s.role, role, `${id} is still the ${role}`);
    assert.equal(s.epoch, epoch, `${id}: no new epoch`);
    assert.equal((s as unknown as { incarnation: number }).incarnation, 0, `${id} never halted and started over`);
    assert.equal(logged(cluster, id, (r) => r.event === 'rejoin-as-spare').length, 0, `${id} discarded no state`);
    assert.ok(logged(cluster, id, (r) => r.event === 'confirming').length >= 1, `${id} checked the rumour with the arbiter`);
  }
  assert.deepEqual((await cluster.primary())!.view, before.view, 'the arbiter\'s view never changed');
  const problems = appendProblems(key, await client.get(key), acked);
  assert.deepEqual(problems, [], `every one of ${acked.length} acknowledged appends is there once`);
  // The backup holds the same state: it would carry on if the primary failed now.
  await cluster.waitFor(async () => {
    const [p, b] = await Promise.all([cluster.status(primary), cluster.status(backup)]);
    return p !== null && b !== null && p.logIndex === b.logIndex && p.digest === b.digest;
  }, 30_000, 'the backup to hold the primary\'s state');
});
