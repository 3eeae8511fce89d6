// Tests for the logging channel's wire format: the peer codec (src/net/peer-codec.ts) round
// trips every message kind exactly, refuses truncated and garbage input with PeerCodecError
// (fuzzed), and the framing (src/net/framing.ts) survives any split and refuses an oversize
// length before buffering its body.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PROTOCOL_VERSION,
  PROTOCOL_VERSION_MIN,
  agreedVersion,
  PeerCodecError,
  decodeAuthProof,
  decodeHandshake,
  encodeAuthProof,
  decodePeerMessage,
  encodeHandshake,
  encodePeerMessage,
  encodePeerFrame,
  type Handshake,
} from '../src/net/peer-codec.js';
import { FrameDecoder, FramingError, frame } from '../src/net/framing.js';
import { validateMessage } from '../src/core/validate.js';
import type { PeerMessage, View } from '../src/core/types.js';
import { Rng } from '../src/sim/rng.js';
import { fuzzIterations } from '../src/testing/fuzz-scale.js';

const rng = new Rng(4242);
const bytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => rng.u32() & 0xff);

const V1: View = { epoch: 1, primary: 'a', backups: [] };
const V2: View = { epoch: 7, primary: 'node-b', backups: ['node-c'] };
const V3: View = { epoch: 2 ** 40, primary: 'ünïcødé ☃', backups: ['z'] };
const V4: View = { epoch: 9, primary: 'n1', backups: ['n2', 'n3', 'n4'] };

const MESSAGES: PeerMessage[] = [
  { type: 'frame', view: V1, seq: 1, prevIndex: 0, payloads: [], primaryIndex: 0, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
  { type: 'frame', view: V2, seq: 99, prevIndex: 10, payloads: [new Uint8Array(0), bytes(1), bytes(300)], primaryIndex: 13, pendingView: V1, commitIndex: 12, term: 7, baseIndex: 10, baseTerm: 3 },
  { type: 'frame', view: V3, seq: 2 ** 53 - 1, prevIndex: 0, payloads: Array.from({ length: 5000 }, () => bytes(rng.int(0, 40))), primaryIndex: 5000, pendingView: V2, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
  { type: 'frame', view: V2, seq: 3, prevIndex: 5, payloads: [bytes(200_000), bytes(3)], primaryIndex: 7, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
  { type: 'chunk', view: V2, seq: 5, index: 1234, chunk: 0, last: false, data: bytes(1 << 20), keep: false },
  { type: 'chunk', view: V1, seq: 1, index: 0, chunk: 0, last: true, data: new Uint8Array(0), keep: false },
  { type: 'frame', view: V4, seq: 4, prevIndex: 1, payloads: [bytes(10)], primaryIndex: 2, pendingView: { ...V4, epoch: 10, backups: ['n2', 'n3', 'n4', 'n5'] }, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
  { type: 'chunk', view: V3, seq: 2 ** 40, index: 2 ** 50, chunk: 123_456, last: true, data: bytes(70), keep: false },
  { type: 'chunkAck', epoch: 7, seq: 6, index: 1234, chunks: 1, gap: false },
  { type: 'chunkAck', epoch: 2 ** 40, seq: 2 ** 53 - 1, index: 0, chunks: 0, gap: true },
  { type: 'ack', epoch: 7, seq: 99, ackedIndex: 13, gap: false },
  { type: 'ack', epoch: 1, seq: 1, ackedIndex: 0, gap: true },
  { type: 'refuse', epoch: 12, reason: 'stale epoch: I know epoch 12 ☃' },
  { type: 'refuse', epoch: 0, reason: '' },
  { type: 'join', index: 0, logTerm: 0 },
  { type: 'join', index: 2 ** 40, logTerm: 17 },
  { type: 'chunk', view: V2, seq: 8, index: 4321, chunk: 0, last: true, data: new Uint8Array(0), keep: true },
];

test('every message kind round-trips exactly, from a Uint8Array and from a Buffer', () => {
  for (const msg of MESSAGES) {
    const enc = encodePeerMessage(msg);
    assert.deepEqual(decodePeerMessage(enc), msg);
    // As the transport hands it over: a Buffer cut out of a socket chunk. Payloads still
    // come out as plain Uint8Arrays (deepEqual checks the prototype).
    const framed = frame(enc);
    const d = new FrameDecoder(4 << 20);
    d.push(framed);
    const f = d.next();
    assert.ok(f !== null && Buffer.isBuffer(f));
    const dec = decodePeerMessage(f);
    assert.deepEqual(dec, msg);
    assert.equal(validateMessage(dec), dec, `${msg.type} validates`);
  }
  // Structure only: values the core would refuse still round-trip.
  const odd = { type: 'frame', view: { epoch: 0, primary: null, backups: [''] }, seq: 0, prevIndex: 9, payloads: [], primaryIndex: 0, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 } as const;
  assert.deepEqual(decodePeerMessage(encodePeerMessage(odd as unknown as PeerMessage)), odd);
  assert.equal(encodePeerMessage({ type: 'join', index: 0, logTerm: 0 }).length, 3);
  assert.equal(encodePeerMessage({ type: 'ack', epoch: 3, seq: 4, ackedIndex: 100, gap: false }).length, 5);
});

test('protocol 7 frames: encoded without the commit index and log fields, decoded as "apply at once, log unknown"', () => {
  const msg: PeerMessage = { type: 'frame', view: V2, seq: 99, prevIndex: 10, payloads: [bytes(1), bytes(300)], primaryIndex: 13, pendingView: null, commitIndex: 12, term: 7, baseIndex: 10, baseTerm: 3 };
  const v8 = encodePeerMessage(msg, 8);
  const v7 = encodePeerMessage(msg, 7);
  assert.equal(v8.length - v7.length, 4, 'four one-byte varints fewer');
  assert.deepEqual(decodePeerMessage(v8, 8), msg);
  // What a version 7 node sends: its entries are applied as they come (commit = the last one).
  assert.deepEqual(decodePeerMessage(v7, 7), { ...msg, commitIndex: 12, term: 0, baseIndex: 0, baseTerm: 0 });
  assert.throws(() => decodePeerMessage(v7, 8), PeerCodecError, 'a version 7 frame is not read as version 8');
  assert.deepEqual(Buffer.concat(encodePeerFrame(msg, 7)), frame(v7));
  // Messages other than frames, joins and keep chunks are the same in both.
  for (const m of MESSAGES.filter((x) => x.type !== 'frame' && x.type !== 'join' && !(x.type === 'chunk' && x.keep))) assert.deepEqual(encodePeerMessage(m, 7), encodePeerMessage(m, 8), m.type);
});

test('protocol 7 joins say no state and keep chunks cannot be said (a spare resumed from its disk needs 8)', () => {
  const join: PeerMessage = { type: 'join', index: 500, logTerm: 4 };
  assert.deepEqual(decodePeerMessage(encodePeerMessage(join, 8), 8), join);
  const v7 = encodePeerMessage(join, 7);
  assert.equal(v7.length, 1, 'a version 7 join is the tag alone');
  assert.deepEqual(decodePeerMessage(v7, 7), { type: 'join', index: 0, logTerm: 0 });
  assert.throws(() => decodePeerMessage(v7, 8), PeerCodecError, 'a version 7 join is not read as version 8');
  const keep: PeerMessage = { type: 'chunk', view: V2, seq: 8, index: 4321, chunk: 0, last: true, data: new Uint8Array(0), keep: true };
  assert.throws(() => encodePeerMessage(keep, 7), PeerCodecError, 'an empty snapshot is not what a keep means');
  // A version 7 decoder refuses the keep bit rather than read an empty snapshot.
  assert.throws(() => decodePeerMessage(encodePeerMessage(keep, 8), 7), PeerCodecError);
  // The core refuses a keep that is not the single empty last chunk, and a join half said.
  assert.match(String(validateMessage({ ...keep, chunk: 1 })), /keep chunk/);
  assert.match(String(validateMessage({ ...keep, data: bytes(3) })), /keep chunk/);
  assert.match(String(validateMessage({ type: 'join', index: 5, logTerm: 0 })), /both 0/);
  assert.match(String(validateMessage({ type: 'join', index: -1, logTerm: 2 })), /not an index/);
});

test('encodePeerFrame is frame(encodePeerMessage) in parts, big payloads uncopied (issue 14 item 4)', () => {
  const big = bytes(200_000);
  const msgs: PeerMessage[] = [
    ...MESSAGES,
    { type: 'frame', view: V2, seq: 2, prevIndex: 0, payloads: [bytes(10), big, bytes(70_000), bytes(3)], primaryIndex: 4, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 },
    { type: 'chunk', view: V2, seq: 3, index: 9, chunk: 4, last: false, data: big, keep: false },
  ];
  for (const msg of msgs) {
    const parts = encodePeerFrame(msg);
    assert.deepEqual(Buffer.concat(parts), frame(encodePeerMessage(msg)), msg.type);
  }
  assert.ok(encodePeerFrame(msgs[msgs.length - 1]!).includes(big), 'the chunk data is a part of its own');
});

test('decoded payloads are views into the frame buffer (no copy)', () => {
  const msg: PeerMessage = { type: 'frame', view: V2, seq: 2, prevIndex: 0, payloads: [bytes(10), bytes(10)], primaryIndex: 2, pendingView: null, commitIndex: 0, term: 0, baseIndex: 0, baseTerm: 0 };
  const enc = encodePeerMessage(msg);
  const dec = decodePeerMessage(enc) as { payloads: Uint8Array[] };
  assert.equal(dec.payloads[0]!.buffer, enc.buffer);
});

test('truncated input, trailing bytes, unknown tags and bad flag bytes throw PeerCodecError', () => {
  const isCodecError = (e: unknown): boolean => e instanceof PeerCodecError;
  for (const msg of MESSAGES) {
    const enc = encodePeerMessage(msg);
    if (enc.length > 2000) continue; // the big ones: a few cut points below
    for (let n = 0; n < enc.length; n++) assert.throws(() => decodePeerMessage(enc.subarray(0, n)), isCodecError, `${msg.type} cut at ${n}`);
    assert.throws(() => decodePeerMessage(Uint8Array.from([...enc, 0])), isCodecError, `${msg.type} + trailing byte`);
  }
  const big = encodePeerMessage(MESSAGES[4]!);
  for (const n of [0, 1, 5, big.length - 1]) assert.throws(() => decodePeerMessage(big.subarray(0, n)), isCodecError);
  assert.throws(() => decodePeerMessage(Uint8Array.of(0)), /unknown message tag 0/);
  assert.throws(() => decodePeerMessage(Uint8Array.of(200)), /unknown message tag 200/);
  assert.throws(() => decodePeerMessage(Uint8Array.of(3, 1, 1, 1, 2)), /bad boolean/); // ack, gap = 2
  assert.throws(() => decodePeerMessage(Uint8Array.of(6, 1, 4)), /bad view flags/); // chunk, view flags 4
  // Version 4: a whole snapshot in one message (tag 2) is gone; a chunk's `last` is a boolean.
  assert.throws(() => decodePeerMessage(Uint8Array.of(2, 1, 1, 1, 1, 0, 0)), /unknown message tag 2/);
  assert.throws(() => decodePeerMessage(Uint8Array.of(6, 1, 1, 1, 0x61, 1, 1, 0, 4, 0)), /bad chunk flags 4/);
  assert.throws(() => decodePeerMessage(Uint8Array.of(6, 1, 1, 1, 0x61, 1, 1, 0, 2, 0), 7), /bad chunk flags 2/); // keep, in 7
  assert.throws(() => decodePeerMessage(Uint8Array.of(7, 1, 1, 1, 1, 3)), /bad boolean/); // chunkAck, gap = 3
  // A payload count larger than the bytes left is refused before allocating for it.
  const w = Uint8Array.of(1, 1, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f);
  assert.throws(() => decodePeerMessage(w, 7), /payloads in/);
  const w8 = Uint8Array.of(1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f); // + commit, term, base, base term
  assert.throws(() => decodePeerMessage(w8), /payloads in/);
});

test('fuzz: garbage and mutated messages throw PeerCodecError or decode to something validateMessage handles', () => {
  const small = MESSAGES.filter((m) => encodePeerMessage(m).length < 2000).map(encodePeerMessage);
  let decoded = 0;
  let refused = 0;
  const n = fuzzIterations(20_000);
  for (let iter = 0; iter < n; iter++) {
    let input: Uint8Array;
    if (iter % 2 === 0) {
      input = Uint8Array.from({ length: rng.int(0, 40) }, () => (rng.chance(0.5) ? rng.int(0, 6) : rng.u32() & 0xff));
    } else {
      input = Uint8Array.from(rng.pick(small));
      for (let k = rng.int(1, 4); k > 0; k--) input[rng.int(0, input.length - 1)] = rng.u32() & 0xff;
      if (rng.chance(0.2)) input = input.subarray(0, rng.int(0, input.length));
    }
    let out: unknown;
    try {
      out = decodePeerMessage(input);
    } catch (e) {
      if (!(e instanceof PeerCodecError)) throw e;
      refused++;
      continue;
    }
    decoded++;
    const v = validateMessage(out);
    if (typeof v !== 'string') assert.deepEqual(decodePeerMessage(encodePeerMessage(v)), out, 'a valid decode re-encodes to itself');
  }
  assert.ok(decoded > n / 20 && refused > n / 20, `decoded ${decoded}, refused ${refused}`);
});

test('handshake: round trip, a foreign version still decodes, garbage and stray clients refused', () => {
  const hs: Handshake[] = [
    { cluster: 'prod', nodeId: 'a', protocolVersion: PROTOCOL_VERSION, epoch: 0, arbiterId: '0123456789abcdef0123456789abcdef', challenge: null, minVersion: PROTOCOL_VERSION_MIN },
    { cluster: 'prod', nodeId: 'b', protocolVersion: PROTOCOL_VERSION, epoch: 7, arbiterId: 'ffff0000', challenge: Uint8Array.from({ length: 32 }, (_, i) => i * 7), minVersion: 3 },
    // Version 6 had no range: what a version 7 node sends a version 6 peer.
    { cluster: 'prod', nodeId: 'e', protocolVersion: 6, epoch: 1, arbiterId: 'ab', challenge: null },
    // Version 2 had no arbiter id, version 1 no flags byte: still decoded, so that such a peer
    // is told why it is refused.
    { cluster: 'old', nodeId: 'd', protocolVersion: 2, epoch: 3, challenge: null },
    { cluster: 'old', nodeId: 'c', protocolVersion: 1, epoch: 3 },
  ];
  for (const h of hs) {
    const enc = encodeHandshake(h);
    assert.equal(Buffer.from(enc.subarray(0, 4)).toString('latin1'), 'LSTP');
    assert.deepEqual(decodeHandshake(enc), h);
    assert.deepEqual(decodeHandshake(Buffer.from(enc)), h);
    for (let n = 0; n < enc.length; n++) assert.throws(() => decodeHandshake(enc.subarray(0, n)), PeerCodecError);
    assert.throws(() => decodeHandshake(Uint8Array.from([...enc, 1])), /trailing/);
  }
  assert.throws(() => encodeHandshake({ cluster: 'x', nodeId: 'a', protocolVersion: 3, epoch: 0 }), /arbiterId/);
  assert.throws(() => encodeHandshake({ cluster: 'x', nodeId: 'a', protocolVersion: 7, epoch: 0, arbiterId: '' }), /minVersion/);
  // A version this node does not know yet may append fields (flag bits above the ones known, bytes
  // after them): decoded for what it says of itself, the rest skipped, so it can be answered.
  const future = { cluster: 'ünï ☃', nodeId: 'node-with-a-long-name-'.repeat(10), protocolVersion: PROTOCOL_VERSION + 2, epoch: 2 ** 50, arbiterId: '', challenge: null, minVersion: PROTOCOL_VERSION + 1 };
  const enc = encodeHandshake(future);
  const flagsAt = enc.length - 2; // the flags byte, then the one-byte minVersion
  assert.equal(enc[flagsAt], 2);
  const appended = Uint8Array.from([...enc, 7, 7, 7]);
  appended[flagsAt] = 2 | 4 | 64;
  assert.deepEqual(decodeHandshake(appended), future);
  // But the flags of a version it knows are checked.
  const known = encodeHandshake({ ...future, protocolVersion: PROTOCOL_VERSION, minVersion: PROTOCOL_VERSION_MIN });
  known[known.length - 2] = 2 | 4;
  assert.throws(() => decodeHandshake(known), /bad handshake flags 6/);
  assert.throws(() => decodeHandshake(Buffer.from('*1\r\n$4\r\nPING\r\n')), /bad magic/);
  assert.throws(() => decodeHandshake(Buffer.from('GET / HTTP/1.1\r\n')), /bad magic/);
  assert.throws(() => decodeHandshake(encodePeerMessage({ type: 'join', index: 0, logTerm: 0 })), /bad magic/);
  for (let i = 0; i < 2000; i++) {
    const g = Uint8Array.from([0x4c, 0x53, 0x54, 0x50, ...Array.from({ length: rng.int(0, 20) }, () => rng.u32() & 0xff)]);
    try {
      decodeHandshake(g);
    } catch (e) {
      assert.ok(e instanceof PeerCodecError);
    }
  }
});

function drain(d: FrameDecoder): Buffer[] {
  const out: Buffer[] = [];
  for (let f = d.next(); f !== null; f = d.next()) out.push(f);
  return out;
}

test('framing: a stream of frames split at every boundary, and one byte at a time', () => {
  const payloads = [bytes(0), bytes(1), bytes(5), bytes(300), bytes(0), bytes(17)];
  const wire = Buffer.concat(payloads.map(frame));
  const expected = payloads.map((p) => Buffer.from(p));
  for (let i = 0; i <= wire.length; i++) {
    for (const j of [i, Math.min(wire.length, i + 1), Math.min(wire.length, i + 4), wire.length]) {
      const d = new FrameDecoder(1000);
      const got: Buffer[] = [];
      for (const c of [wire.subarray(0, i), wire.subarray(i, j), wire.subarray(j)]) {
        d.push(c);
        got.push(...drain(d));
      }
      assert.deepEqual(got, expected, `split at ${i},${j}`);
      assert.equal(d.bufferedBytes, 0);
    }
  }
  const d = new FrameDecoder(1000);
  const got: Buffer[] = [];
  for (let i = 0; i < wire.length; i++) {
    d.push(wire.subarray(i, i + 1));
    got.push(...drain(d));
  }
  assert.deepEqual(got, expected);
});

test('framing: many small frames in one chunk are views; a big frame in many chunks is joined once', () => {
  const many = Array.from({ length: 10_000 }, (_, i) => bytes(i % 20));
  const chunk = Buffer.concat(many.map(frame));
  const d = new FrameDecoder(1 << 20);
  d.push(chunk);
  const got = drain(d);
  assert.deepEqual(got, many.map((p) => Buffer.from(p)));
  assert.ok(got.every((f) => f.length === 0 || f.buffer === chunk.buffer), 'no copies');

  const big = bytes(3 << 20);
  const wire = frame(big);
  const d2 = new FrameDecoder(4 << 20);
  let out: Buffer[] = [];
  for (let i = 0; i < wire.length; i += 4099) {
    d2.push(wire.subarray(i, i + 4099));
    const fs = drain(d2);
    if (i + 4099 < wire.length) assert.equal(fs.length, 0);
    out = out.concat(fs);
  }
  assert.equal(out.length, 1);
  assert.ok(Buffer.from(big).equals(out[0]!));
});

test('framing: an oversize length is refused as soon as its header is in', () => {
  const d = new FrameDecoder(1000);
  d.push(Buffer.from([0, 0]));
  assert.equal(d.next(), null);
  d.push(Buffer.from([3, 0xe9])); // 1001
  assert.throws(() => d.next(), (e: unknown) => e instanceof FramingError && /1001 bytes exceeds the maximum of 1000/.test(e.message));
  const d2 = new FrameDecoder(64 * 1024);
  d2.push(Buffer.from('*1\r\n$4\r\nPING\r\n')); // a stray RESP client: its first 4 bytes read as ~700 MB
  assert.throws(() => d2.next(), FramingError);
  const d3 = new FrameDecoder(1000);
  d3.push(frame(new Uint8Array(1000)));
  assert.equal(drain(d3)[0]!.length, 1000, 'exactly the maximum is fine');
});

test('auth proof: round trip; anything else is not a proof', () => {
  const mac = Uint8Array.from({ length: 32 }, (_, i) => 255 - i);
  const enc = encodeAuthProof(mac);
  assert.equal(Buffer.from(enc.subarray(0, 4)).toString('latin1'), 'LSTA');
  assert.deepEqual(decodeAuthProof(enc), mac);
  assert.throws(() => encodeAuthProof(mac.subarray(1)), /32 bytes/);
  for (const bad of [enc.subarray(0, 35), Uint8Array.from([...enc, 0]), encodeHandshake({ cluster: 'c', nodeId: 'n', protocolVersion: PROTOCOL_VERSION, minVersion: PROTOCOL_VERSION_MIN, epoch: 0, arbiterId: 'ab' }), encodePeerMessage({ type: 'join', index: 0, logTerm: 0 })]) {
    assert.throws(() => decodeAuthProof(bad), PeerCodecError);
  }
});


test('protocol versions: two nodes talk the newest version both speak, or refuse when their ranges do not meet', () => {
  const h = (protocolVersion: number, minVersion?: number): Handshake => ({ cluster: 'c', nodeId: 'n', protocolVersion, epoch: 0, arbiterId: '', challenge: null, ...(minVersion !== undefined ? { minVersion } : {}) });
  // This node speaks 6 to 7.
  assert.equal(agreedVersion(h(7, 6), 7, 6), 7);
  assert.equal(agreedVersion(h(6), 7, 6), 6, 'a version 6 node (no range): talked to in 6');
  assert.equal(agreedVersion(h(8, 7), 7, 6), 7, 'a newer node that still speaks 7');
  assert.equal(agreedVersion(h(9, 8), 7, 6), null, 'a node two versions ahead');
  assert.equal(agreedVersion(h(5), 7, 6), null, 'a node older than the oldest spoken');
  // Symmetric: each end of a connection computes the same version from the other's handshake.
  for (const [a, b] of [[[7, 6], [8, 7]], [[6, 6], [7, 6]], [[7, 6], [7, 6]], [[9, 8], [7, 6]]] as const) {
    assert.equal(agreedVersion(h(b[0], b[1]), a[0], a[1]), agreedVersion(h(a[0], a[1]), b[0], b[1]));
  }
  assert.ok(PROTOCOL_VERSION_MIN === PROTOCOL_VERSION - 1, 'a release speaks its own protocol and the one before (docs/ARCHITECTURE.md)');
});
