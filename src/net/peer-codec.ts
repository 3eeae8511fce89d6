// The binary encoding of the logging channel: the connection handshake and the core's
// PeerMessages (one message per frame, see framing.ts).
//
// Built on the guest's ByteWriter/ByteReader (varint lengths and integers, node ids and
// reasons as lossless `text`). A message is a tag byte and its fields in a fixed order; a
// View is varuint epoch, a presence byte (bit 0 primary, bit 1 backup), then the ids present.
// Decoding checks structure only (truncation, unknown tags, bad flag bytes, trailing bytes
// all throw PeerCodecError); whether the values make sense is validateMessage's job in the
// core. Encoding is one pass into a reused writer, so a frame of many small payloads costs
// one copy. Decoded payloads and chunk data are VIEWS into the input (no copy): they alias
// the frame buffer, which the caller must keep alive and leave unmodified.
//
// Handshake: magic 'LSTP', varuint protocolVersion, text cluster, text nodeId, varuint epoch.
// This prefix is frozen across protocol versions, so a peer of another version is still
// decoded and can be told why it is refused; the magic tells a stray client apart. From
// version 2 a flags byte follows; flag 1: a 32-byte challenge follows (the answering side of a
// cluster with a shared secret asks the dialling side to prove it holds the secret).
// From version 3, text arbiterId (the identity lockstep init gave the node's arbiter) comes
// between the epoch and the flags byte: nodes on two arbiters refuse each other.
// Version 4: a snapshot no longer travels as one message (tag 2, gone) but as chunk messages
// (tag 6) acked by chunkAck messages (tag 7); the handshake is unchanged, so a version 3 peer
// is still decoded and refused for its version.
// Version 5: the messages are unchanged, but what they carry is not: kv log entries may be
// session-open entries, and the duplicate filter in a snapshot keeps each client session's
// last use (issue 9 item 5); a version 4 peer could not read them, so it is refused.
// Version 6: log entries may quarantine a command that broke a module's machine, and the
// duplicate filter in a snapshot carries the quarantine; a version 5 peer is refused.
// Version 7: the handshake says the oldest version the node still speaks (flags bit 1, a
// varuint after the challenge), and two nodes talk the newest version both speak: a node of
// version N speaks N and N-1, so during a rolling upgrade N and N+1 run side by side
// (`agreedVersion`; docs/ARCHITECTURE.md "Protocol versions and rolling upgrades"). A node
// answers a dialler in the dialler's version when that is older than its own, in that
// version's handshake format, so a version 6 node (which knew no ranges) is answered as a
// version 6 node would answer. Messages are the same in 6 and 7.
// Version 8: a frame carries, after primaryIndex, the commit index (every backup holds the
// entries up to it: a follower applies no further) and which log the sender's is (term, base
// index, base term: varuints), so that when a primary dies its other backups follow the one
// that went live instead of being recruited again (issue 11 item 4). Messages are encoded and
// decoded in a connection's version: a frame in version 7 has none of these fields, and one
// decoded from a version 7 peer gets commit index = its last entry (apply at once, as version 7
// did) and term 0 (unknown: a backup never follows another primary on its word).
// Also in version 8: a join carries the state the spare holds (varuint index, varuint log term;
// 0 0: none), and a chunk's flags byte may set bit 1, keep: the recruit keeps that state and no
// snapshot comes (replica.ts "Resuming a spare that kept its state"). A version 7 join is
// decoded as holding nothing; a keep chunk is never encoded for version 7 (its peers could not
// tell it from an empty snapshot), and is refused in a version 7 decode.
// A handshake of a NEWER version than this node knows is decoded leniently: flag bits it does
// not know and bytes after the fields it knows are ignored. So later versions may only append
// to the handshake (a field per new flag bit, in bit order), and a node of version N can
// always read an N+1 peer's range and answer it in N.
// Auth proof (version 2): magic 'LSTA' and a 32-byte HMAC-SHA256, the dialler's first frame
// after the answer's handshake when it was challenged.

import { ByteReader, ByteWriter } from '../guest/bytes.js';
import type { PeerMessage, View } from '../core/types.js';

/** The newest logging-channel protocol this node speaks (what its handshake announces). */
export const PROTOCOL_VERSION = 8;
/**
 * The oldest one it still speaks: the previous version, so that a rolling upgrade can run
 * version N and N+1 side by side. Versions before 6 changed what entries and snapshots carry
 * without a range to fall back on, so they are refused.
 */
export const PROTOCOL_VERSION_MIN = 7;
/** The first version whose frames carry the commit index and the sender's log (term, base). */
const COMMIT_VERSION = 8;
/** The first version whose handshake carries the oldest version the node speaks. */
const RANGE_VERSION = 7;

/** Bytes of a handshake challenge and of an auth proof. */
export const AUTH_BYTES = 32;

export interface Handshake {
  readonly cluster: string;
  readonly nodeId: string;
  readonly protocolVersion: number;
  readonly epoch: number;
  /** Version 3: the id of the arbiter this node uses (its identity, from lockstep init). */
  readonly arbiterId?: string;
  /** Version 2: the challenge the dialler must answer with an auth proof, or null. */
  readonly challenge?: Uint8Array | null;
  /** Version 7: the oldest protocol version the node still speaks (absent: only `protocolVersion`). */
  readonly minVersion?: number;
}

/**
 * The protocol version two nodes talk on a connection, given the other's handshake: the newest
 * both speak, or null when their ranges do not meet. Each side computes the same number.
 */
export function agreedVersion(theirs: Handshake, newest = PROTOCOL_VERSION, oldest = PROTOCOL_VERSION_MIN): number | null {
  const v = Math.min(newest, theirs.protocolVersion);
  return v >= Math.max(oldest, theirs.minVersion ?? theirs.protocolVersion) ? v : null;
}

/** "6" or "6 to 7": the versions a handshake says its node speaks, for a refusal's reason. */
export function versionRange(h: Pick<Handshake, 'protocolVersion' | 'minVersion'>): string {
  const lo = h.minVersion ?? h.protocolVersion;
  return lo === h.protocolVersion ? `${lo}` : `${lo} to ${h.protocolVersion}`;
}

export class PeerCodecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PeerCodecError';
  }
}

const MAGIC = [0x4c, 0x53, 0x54, 0x50]; // 'LSTP'
const AUTH_MAGIC = [0x4c, 0x53, 0x54, 0x41]; // 'LSTA'
const enum Tag {
  Frame = 1,
  // 2 was a whole snapshot in one message (protocol version 3 and before).
  Ack = 3,
  Refuse = 4,
  Join = 5,
  Chunk = 6,
  ChunkAck = 7,
}

/** One writer for every encode; take() hands a large buffer over rather than copy it. */
const shared = new ByteWriter(4096);

function encodeWith(write: (w: ByteWriter) => void): Uint8Array {
  write(shared.reset());
  return shared.take();
}

/** Run a decoder, turning the reader's errors (and any other slip) into PeerCodecError. */
function decodeWith<T>(bytes: Uint8Array, what: string, read: (r: ByteReader) => T): T {
  // A Buffer's subarrays are Buffers: view the same memory as a plain Uint8Array so decoded
  // payloads have exactly the type the core and its tests expect.
  const plain = Object.getPrototypeOf(bytes) === Uint8Array.prototype ? bytes : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const r = new ByteReader(plain, what);
  try {
    const v = read(r);
    r.end();
    return v;
  } catch (e) {
    if (e instanceof PeerCodecError) throw e;
    throw new PeerCodecError(e instanceof Error ? e.message : String(e));
  }
}

function bool(r: ByteReader): boolean {
  const b = r.u8();
  if (b > 1) r.corrupt(`bad boolean byte ${b}`);
  return b === 1;
}

export function encodeHandshake(h: Handshake): Uint8Array {
  return encodeWith((w) => {
    for (const b of MAGIC) w.u8(b);
    w.varuint(h.protocolVersion).text(h.cluster).text(h.nodeId).varuint(h.epoch);
    if (h.protocolVersion >= 3) {
      if (h.arbiterId === undefined) throw new RangeError('a version 3 handshake carries an arbiterId');
      w.text(h.arbiterId);
    }
    if (h.protocolVersion < 2) return;
    const c = h.challenge ?? null;
    if (c !== null && c.length !== AUTH_BYTES) throw new RangeError(`a challenge is ${AUTH_BYTES} bytes, got ${c.length}`);
    const range = h.protocolVersion >= RANGE_VERSION;
    if (range && h.minVersion === undefined) throw new RangeError(`a version ${RANGE_VERSION} handshake carries a minVersion`);
    w.u8((c === null ? 0 : 1) | (range ? 2 : 0));
    if (c !== null) w.raw(c);
    if (range) w.varuint(h.minVersion!);
  });
}

export function decodeHandshake(bytes: Uint8Array): Handshake {
  if (bytes.length < 4 || MAGIC.some((b, i) => bytes[i] !== b)) throw new PeerCodecError('not a lockstep peer (bad magic)');
  return decodeWith(bytes, 'handshake', (r) => {
    r.u32();
    const protocolVersion = r.varuint();
    const cluster = r.text();
    const nodeId = r.text();
    const epoch = r.varuint();
    if (protocolVersion < 2) return { cluster, nodeId, protocolVersion, epoch };
    const arbiter = protocolVersion >= 3 ? { arbiterId: r.text() } : {};
    const flags = r.u8();
    const newer = protocolVersion > PROTOCOL_VERSION;
    const known = protocolVersion >= RANGE_VERSION ? 3 : 1;
    if (flags > known && !newer) r.corrupt(`bad handshake flags ${flags}`);
    const challenge = (flags & 1) === 1 ? raw(r, AUTH_BYTES).slice() : null;
    const range = protocolVersion >= RANGE_VERSION && (flags & 2) === 2 ? { minVersion: r.varuint() } : {};
    // A newer version may append fields this node does not know: skipped, not refused.
    if (newer) r.skipRest();
    return { cluster, nodeId, protocolVersion, epoch, ...arbiter, challenge, ...range };
  });
}

function raw(r: ByteReader, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = r.u8();
  return out;
}

export function encodeAuthProof(mac: Uint8Array): Uint8Array {
  if (mac.length !== AUTH_BYTES) throw new RangeError(`an auth proof is ${AUTH_BYTES} bytes, got ${mac.length}`);
  return Uint8Array.from([...AUTH_MAGIC, ...mac]);
}

/** The MAC of an auth proof frame; throws PeerCodecError if the frame is not one. */
export function decodeAuthProof(bytes: Uint8Array): Uint8Array {
  if (bytes.length !== 4 + AUTH_BYTES || AUTH_MAGIC.some((b, i) => bytes[i] !== b)) throw new PeerCodecError('not an auth proof');
  return Uint8Array.from(bytes.subarray(4));
}

// A view: flags bit 0 primary, bit 1 a (first) backup, bit 2 more backups (a count, then
// each). Bit 2 is set only for views with two or more backups, which only a cluster with
// `"backups"` above 1 makes, so a view of one backup is encoded as before it existed.
function writeView(w: ByteWriter, v: View): void {
  const more = v.backups.length - 1;
  w.varuint(v.epoch).u8((v.primary !== null ? 1 : 0) | (v.backups.length > 0 ? 2 : 0) | (more > 0 ? 4 : 0));
  if (v.primary !== null) w.text(v.primary);
  if (v.backups.length > 0) w.text(v.backups[0]!);
  if (more > 0) {
    w.varuint(more);
    for (let i = 1; i < v.backups.length; i++) w.text(v.backups[i]!);
  }
}

/** At most this many backups in a view on the wire (a peer's count is checked before reading). */
const VIEW_BACKUPS_MAX = 64;

function readView(r: ByteReader): View {
  const epoch = r.varuint();
  const flags = r.u8();
  if (flags > 7 || (flags & 6) === 4) r.corrupt(`bad view flags ${flags}`);
  const primary = flags & 1 ? r.text() : null;
  const backups: string[] = flags & 2 ? [r.text()] : [];
  if (flags & 4) {
    const more = r.varuint();
    if (more < 1 || more >= VIEW_BACKUPS_MAX) r.corrupt(`a view with ${more + 1} backups`);
    for (let i = 0; i < more; i++) backups.push(r.text());
  }
  return { epoch, primary, backups };
}

export function encodePeerMessage(msg: PeerMessage, version = PROTOCOL_VERSION): Uint8Array {
  return encodeWith((w) => writeMessage(w, msg, (b) => w.bytes(b), version));
}

/** Payloads and snapshots from this size on are not copied into a frame but written beside it. */
const BESIDE_BYTES = 64 * 1024;

/**
 * A message as one whole frame (framing.ts: u32 big-endian length, then the message) in parts
 * to write in order: large payloads and chunk data are their own parts, views of the
 * caller's bytes, so a 64 MiB entry is never copied on its way out (issue 14 item 4). The
 * caller must leave them unmodified until written (log entries and snapshots are immutable).
 */
export function encodePeerFrame(msg: PeerMessage, version = PROTOCOL_VERSION): Uint8Array[] {
  const parts: Uint8Array[] = [];
  const w = shared.reset().u32(0);
  writeMessage(w, msg, (b) => {
    if (b.length < BESIDE_BYTES) {
      w.bytes(b);
      return;
    }
    w.varuint(b.length);
    parts.push(w.take(), b);
  }, version);
  parts.push(w.take());
  let n = -4;
  for (const p of parts) n += p.length;
  if (n > 0xffffffff) throw new RangeError(`frame payload too large: ${n} bytes`);
  new DataView(parts[0]!.buffer, parts[0]!.byteOffset, 4).setUint32(0, n, false);
  return parts;
}

function writeMessage(w: ByteWriter, msg: PeerMessage, bytes: (b: Uint8Array) => void, version: number): void {
    switch (msg.type) {
      case 'frame':
        w.u8(Tag.Frame);
        writeView(w, msg.view);
        w.varuint(msg.seq).varuint(msg.prevIndex).varuint(msg.primaryIndex);
        if (version >= COMMIT_VERSION) w.varuint(msg.commitIndex).varuint(msg.term).varuint(msg.baseIndex).varuint(msg.baseTerm);
        if (msg.pendingView === null) w.u8(0);
        else writeView(w.u8(1), msg.pendingView);
        w.varuint(msg.payloads.length);
        for (const p of msg.payloads) bytes(p);
        return;
      case 'chunk':
        w.u8(Tag.Chunk);
        writeView(w, msg.view);
        if (msg.keep && version < COMMIT_VERSION) throw new PeerCodecError(`a keep chunk cannot be said in protocol ${version}`);
        w.varuint(msg.seq).varuint(msg.index).varuint(msg.chunk).u8((msg.last ? 1 : 0) | (msg.keep ? 2 : 0));
        bytes(msg.data);
        return;
      case 'chunkAck':
        w.u8(Tag.ChunkAck).varuint(msg.epoch).varuint(msg.seq).varuint(msg.index).varuint(msg.chunks).u8(msg.gap ? 1 : 0);
        return;
      case 'ack':
        w.u8(Tag.Ack).varuint(msg.epoch).varuint(msg.seq).varuint(msg.ackedIndex).u8(msg.gap ? 1 : 0);
        return;
      case 'refuse':
        w.u8(Tag.Refuse).varuint(msg.epoch).text(msg.reason);
        return;
      case 'join':
        w.u8(Tag.Join);
        if (version >= COMMIT_VERSION) w.varuint(msg.index).varuint(msg.logTerm);
        return;
    }
}

/**
 * Decode a message's structure into the shape the core expects; the core's validateMessage
 * checks the rest. Payloads and chunk data alias `bytes`.
 */
export function decodePeerMessage(bytes: Uint8Array, version = PROTOCOL_VERSION): unknown {
  return decodeWith(bytes, 'peer message', (r) => {
    const tag = r.u8();
    switch (tag) {
      case Tag.Frame: {
        const view = readView(r);
        const seq = r.varuint();
        const prevIndex = r.varuint();
        const primaryIndex = r.varuint();
        const log = version >= COMMIT_VERSION ? { commitIndex: r.varuint(), term: r.varuint(), baseIndex: r.varuint(), baseTerm: r.varuint() } : null;
        const pendingView = bool(r) ? readView(r) : null;
        const count = r.varuint();
        if (count > r.remaining) r.corrupt(`${count} payloads in ${r.remaining} bytes`); // each takes >= 1
        const payloads: Uint8Array[] = new Array<Uint8Array>(count);
        for (let i = 0; i < count; i++) payloads[i] = r.bytes();
        // A version 7 frame: its entries are applied as they come, as version 7 did.
        const { commitIndex, term, baseIndex, baseTerm } = log ?? { commitIndex: prevIndex + count, term: 0, baseIndex: 0, baseTerm: 0 };
        return { type: 'frame', view, seq, prevIndex, payloads, primaryIndex, pendingView, commitIndex, term, baseIndex, baseTerm };
      }
      case Tag.Chunk: {
        const view = readView(r);
        const seq = r.varuint();
        const index = r.varuint();
        const chunk = r.varuint();
        const flags = r.u8();
        if (flags > (version >= COMMIT_VERSION ? 3 : 1)) return r.corrupt(`bad chunk flags ${flags}`);
        return { type: 'chunk', view, seq, index, chunk, last: (flags & 1) !== 0, data: r.bytes(), keep: (flags & 2) !== 0 };
      }
      case Tag.ChunkAck: {
        const epoch = r.varuint();
        const seq = r.varuint();
        const index = r.varuint();
        const chunks = r.varuint();
        return { type: 'chunkAck', epoch, seq, index, chunks, gap: bool(r) };
      }
      case Tag.Ack: {
        const epoch = r.varuint();
        const seq = r.varuint();
        const ackedIndex = r.varuint();
        return { type: 'ack', epoch, seq, ackedIndex, gap: bool(r) };
      }
      case Tag.Refuse: {
        const epoch = r.varuint();
        return { type: 'refuse', epoch, reason: r.text() };
      }
      case Tag.Join:
        if (version < COMMIT_VERSION) return { type: 'join', index: 0, logTerm: 0 };
        return { type: 'join', index: r.varuint(), logTerm: r.varuint() };
      default:
        return r.corrupt(`unknown message tag ${tag}`);
    }
  });
}
