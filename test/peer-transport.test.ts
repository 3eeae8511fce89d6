// The logging channel's transport in one process: two PeerTransports on loopback.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { PeerTransport, type PeerTransportOptions } from '../src/net/peer-transport.js';
import { FrameDecoder, frame } from '../src/net/framing.js';
import { PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, decodeHandshake, encodeHandshake } from '../src/net/peer-codec.js';
import { freePorts } from '../src/testing/process-cluster.js';

function transport(self: string, other: string, ports: Record<string, number>, got: string[], more: Partial<PeerTransportOptions> = {}): PeerTransport {
  return new PeerTransport({
    cluster: 't',
    self,
    listen: { host: '127.0.0.1', port: ports[self]! },
    peers: new Map([[other, { host: '127.0.0.1', port: ports[other]! }]]),
    maxFrameBytes: 1 << 20,
    maxQueuedBytes: 1 << 20,
    epoch: () => 1,
    secret: new Uint8Array(32).fill(9),
    tls: null,
    arbiterId: () => 'a1a1a1a1',
    onMessage: (from, msg) => got.push(`${from}:${(msg as { type: string }).type}`),
    log: () => {},
    ...more,
  });
}

test('a peer that reaches us is dialled back at once, not after our reconnect backoff', async (t) => {
  const [pa, pb] = await freePorts(2);
  const ports = { a: pa!, b: pb! };
  const atA: string[] = [];
  const atB: string[] = [];
  const a = transport('a', 'b', ports, atA);
  t.after(() => a.close());
  await a.start();
  // b is not listening yet: a's dials fail and its backoff grows to about a second.
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(a.isConnected('b'), false);
  const b = transport('b', 'a', ports, atB);
  t.after(() => b.close());
  const t0 = performance.now();
  await b.start();
  // b's dial reaches a; a answers the join it carries right away, which needs a's own link to b.
  b.send('a', { type: 'join', index: 0, logTerm: 0 });
  b.flush();
  while (!a.isConnected('b') && performance.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 5));
  const ms = performance.now() - t0;
  assert.ok(a.isConnected('b'), 'a connected to b');
  assert.ok(ms < 400, `a dialled b back after ${ms.toFixed(0)} ms; its backoff alone is up to 1000 ms`);
  a.send('b', { type: 'join', index: 0, logTerm: 0 });
  a.flush();
  while (atB.length === 0 && performance.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(atB, ['a:join']);
  assert.deepEqual(atA, ['b:join']);
});

for (const secret of [true, false]) {
  test(`two nodes on two arbiters refuse each other both ways, loudly, and tell the node (${secret ? 'with' : 'without'} a secret)`, async (t) => {
    const [pa, pb] = await freePorts(2);
    const ports = { a: pa!, b: pb! };
    const logs: { at: string; event: string; fields: Record<string, unknown> }[] = [];
    const mismatches: string[] = [];
    const got: string[] = [];
    const make = (self: string, other: string, arbiterId: string): PeerTransport =>
      transport(self, other, ports, got, {
        arbiterId: () => arbiterId,
        secret: secret ? new Uint8Array(32).fill(9) : null,
        log: (_level, event, fields) => logs.push({ at: self, event, fields }),
        onArbiterMismatch: (peer, theirs) => mismatches.push(`${self} sees ${peer} on ${theirs}`),
      });
    const a = make('a', 'b', 'aaaa0000');
    const b = make('b', 'a', 'bbbb1111');
    t.after(() => Promise.all([a.close(), b.close()]));
    await a.start();
    await b.start();
    const t0 = performance.now();
    while (!(mismatches.some((m) => m.startsWith('a ')) && mismatches.some((m) => m.startsWith('b '))) && performance.now() - t0 < 5000) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(mismatches.includes('a sees b on bbbb1111'), JSON.stringify(mismatches));
    assert.ok(mismatches.includes('b sees a on aaaa0000'), JSON.stringify(mismatches));
    for (const [self, mine, theirs] of [['a', 'aaaa0000', 'bbbb1111'], ['b', 'bbbb1111', 'aaaa0000']] as const) {
      const warn = logs.find((l) => l.at === self && l.event === 'two-arbiters');
      assert.ok(warn, `${self} logs two-arbiters`);
      assert.equal(warn.fields.arbiterId, mine);
      assert.equal(warn.fields.peerArbiterId, theirs);
      assert.match(String(warn.fields.meaning), /two arbiters: split brain risk, check the arbiter path in every node's config/);
    }
    a.send('b', { type: 'join', index: 0, logTerm: 0 });
    b.send('a', { type: 'join', index: 0, logTerm: 0 });
    a.flush();
    b.flush();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(a.isConnected('b') || b.isConnected('a'), false, 'no link between two arbiters');
    assert.deepEqual(got, [], 'nothing passes');
    // Bounded noise: once the reconnect backoff is at its 1 s, a refusal a second each way (each
    // logged by both sides), not a storm; and one two-arbiters line per peer every 5 s.
    await new Promise((r) => setTimeout(r, 2000));
    const refusals = (): number => logs.filter((l) => l.event === 'peer-refused').length;
    const before = refusals();
    await new Promise((r) => setTimeout(r, 2000));
    assert.ok(refusals() - before <= 12, `${refusals() - before} refusals in 2 s at the steady state`);
    assert.ok(logs.filter((l) => l.event === 'two-arbiters').length <= 2, `two-arbiters logged ${logs.filter((l) => l.event === 'two-arbiters').length} times`);
  });
}

/**
 * A scripted peer "b" on raw sockets: it answers our dials as the test says, and can dial us
 * with a handshake of any version. It sends no messages: only versions are looked at.
 */
class ScriptedPeer {
  readonly dialsIn: { version: number; socket: net.Socket; answer: (version: number) => void }[] = [];
  private readonly sockets = new Set<net.Socket>();
  private server: net.Server | null = null;
  /** How to answer a dial in `announced`: a version to answer in, 'hold' (answer later, by hand) or 'refuse' (close, as release 6 does for any other version). */
  policy: (announced: number) => number | 'hold' | 'refuse' = () => 'refuse';

  constructor(private readonly port: number, private readonly aPort: number) {}

  handshake(version: number): Buffer {
    const h = { cluster: 't', nodeId: 'b', protocolVersion: version, epoch: 1, arbiterId: 'a1a1a1a1', challenge: null };
    return frame(encodeHandshake(version >= 7 ? { ...h, minVersion: PROTOCOL_VERSION_MIN } : h));
  }

  async listen(): Promise<void> {
    const server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => {});
      const decoder = new FrameDecoder(1 << 16);
      socket.on('data', (chunk: Buffer) => {
        decoder.push(chunk);
        for (let f = decoder.next(); f !== null; f = decoder.next()) {
          const announced = decodeHandshake(f).protocolVersion;
          const answer = (v: number): void => void socket.write(this.handshake(v));
          this.dialsIn.push({ version: announced, socket, answer });
          const what = this.policy(announced);
          if (what === 'refuse') socket.destroy();
          else if (what !== 'hold') answer(what);
        }
      });
    });
    await new Promise<void>((r) => server.listen(this.port, '127.0.0.1', r));
    this.server = server;
  }

  /** Dial a with a handshake in `version`; the socket stays open until die(). */
  async dial(version: number): Promise<void> {
    const socket = net.connect(this.aPort, '127.0.0.1');
    this.sockets.add(socket);
    socket.on('error', () => {});
    await new Promise<void>((r) => socket.once('connect', r));
    socket.write(this.handshake(version));
  }

  /** The process ends: its listener and every connection close. */
  async die(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}

const until = async (what: string, cond: () => boolean, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test('versions: what an old peer said is forgotten with its connection, and a dial that raced its upgrade is redone in the newer version', async (t) => {
  const [pa, pb] = await freePorts(2);
  const events: string[] = [];
  const a = transport('a', 'b', { a: pa!, b: pb! }, [], { secret: null, log: (_l, event, f) => void events.push(`${event} ${JSON.stringify(f)}`) });
  t.after(() => a.close());
  const b = new ScriptedPeer(pb!, pa!);
  t.after(() => b.die());

  // 1. b runs the previous release: it refuses a's dial in 7, and its own dial in 6 teaches a to dial in 6.
  b.policy = (v) => (v === PROTOCOL_VERSION_MIN ? PROTOCOL_VERSION_MIN : 'refuse');
  await b.listen();
  await a.start();
  await b.dial(PROTOCOL_VERSION_MIN);
  await until('a to talk 6 to the old b', () => a.versions().b?.outbound === PROTOCOL_VERSION_MIN);
  assert.deepEqual(a.versions().b, { outbound: PROTOCOL_VERSION_MIN, inbound: PROTOCOL_VERSION_MIN, speaks: PROTOCOL_VERSION_MIN });
  assert.equal(b.dialsIn[0]!.version, PROTOCOL_VERSION, 'a first dialled in the newest version');

  // 2. b's process ends: what it said goes with it.
  await b.die();
  await until('a to forget the old b', () => a.versions().b?.speaks === null);
  assert.deepEqual(a.versions().b, { outbound: null, inbound: null, speaks: null });

  // 3. b comes back upgraded, but its dial raced ahead on what ITS old process knew of a (6),
  //    and a's redial went out in 6 on what that dial said; b holds the answer to it until
  //    its own newer dial has reached a.
  b.dialsIn.length = 0;
  b.policy = (v) => (v === PROTOCOL_VERSION ? PROTOCOL_VERSION : 'hold');
  await b.dial(PROTOCOL_VERSION_MIN);
  await until('a to know b as 6 again', () => a.versions().b?.speaks === PROTOCOL_VERSION_MIN);
  await b.listen();
  await until('a to dial b', () => b.dialsIn.length > 0);
  const held = b.dialsIn.find((d) => d.version === PROTOCOL_VERSION_MIN);
  assert.ok(held, `a dialled in 6 (it dialled in ${b.dialsIn.map((d) => d.version).join(', ')})`);
  await b.dial(PROTOCOL_VERSION);
  await until('a to hear b speaks 7', () => a.versions().b?.speaks === PROTOCOL_VERSION);
  held.answer(PROTOCOL_VERSION_MIN);
  await until('a to run 7 to b', () => a.versions().b?.outbound === PROTOCOL_VERSION);
  assert.ok(events.some((e) => e.startsWith('peer-version-up')), 'the 6 connection was closed as a version-up');
  assert.deepEqual(a.versions().b, { outbound: PROTOCOL_VERSION, inbound: PROTOCOL_VERSION, speaks: PROTOCOL_VERSION });
});
