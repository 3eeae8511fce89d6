// The logging channel over TCP: length-prefixed binary frames between replicas.
//
// Each replica listens on its peer address and dials every other replica; a dialled
// connection carries this replica's messages to that peer, an accepted one carries the
// peer's messages here. So each pair has two connections, each one-way, each ordered — what
// the core assumes of a channel. A connection opens with a handshake both ways (cluster name,
// node id, protocol version, epoch); a peer of another cluster or version, or an unknown
// node, is refused with a logged reason and the connection closed. Garbage after the
// handshake (a bad length, an undecodable message) closes that connection only.
//
// With a shared secret (the config's secretFile), the answering side's handshake carries a
// random 32-byte challenge and the dialling side must answer with HMAC-SHA256(secret, the
// challenge and both ids) before anything it sends is taken: a process that knows the cluster
// name and a member's id, but not the secret, cannot inject messages (a forged `refuse` would
// depose the primary). A fresh challenge per connection makes a recorded proof useless. Both
// sides must agree on having a secret; a mismatch is refused with the reason.
//
// Every handshake carries the id of the node's arbiter (its identity, from lockstep init). A
// peer on another arbiter is refused with a warn log `two-arbiters` naming both ids: two
// arbiters can each make a primary (split brain), which is what a config copied to two
// directories with a relative `file:` path once did. The answering side refuses at once, but
// first answers with its own handshake, so the dialler learns which arbiter it met. The node is
// told (onArbiterMismatch) so that it refuses to start: always from the answer to our own dial
// (the address the config names), from an inbound claim only without a secret (with one, an
// unproved claim is only logged: a stranger must not be able to stop a node's start).
//
// With peerTls (the config's certificate, key and CA), the channel is mutual TLS (node:tls):
// the answering side asks for the dialler's certificate and refuses one its CA did not sign,
// the dialler checks that the answering side's certificate chains to the CA and names the
// address it dialled. Only then does the lockstep handshake above run, inside TLS, so a reader
// of the network sees neither the state nor the handshake. A plain peer meeting a TLS node, or
// the other way round, is refused (`peer-refused`, naming TLS as the reason); a failed TLS
// handshake ends that connection only.
//
// Protocol versions (peer-codec.ts): a node speaks PROTOCOL_VERSION_MIN to PROTOCOL_VERSION,
// and a connection runs at the newest version both ends speak. The dialler announces the
// newest it speaks, or, once it has learnt from the peer's own handshake that the peer is
// older, the peer's version in that version's format (a version 6 node refuses any other
// without answering, so only its own dial tells us what it is). The answering side answers in
// the agreed version. When a peer comes back newer (it was upgraded), an outbound connection
// still at the older version is closed and dialled again (also when our dial was under way as
// its newer handshake came), so the pair converges to the newest version both speak. What a
// peer said is forgotten when the connection it said it on closes: its next process may be
// another release, and two upgraded nodes that dialled each other on what their old processes
// said would otherwise keep the older version for ever. `versions()` reports what each
// connection runs, for /status.
//
// Sending never blocks and never queues without bound: if there is no connection the message
// is dropped (the core resends from the last ack); while one is being opened, messages wait
// (bounded) for its handshake; writes of one event-loop turn are coalesced into one socket
// write (`flush`).

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { FrameDecoder, frame } from './framing.js';
import {
  AUTH_BYTES,
  PROTOCOL_VERSION,
  PROTOCOL_VERSION_MIN,
  agreedVersion,
  decodeAuthProof,
  decodeHandshake,
  PeerCodecError,
  decodePeerMessage,
  encodeAuthProof,
  encodeHandshake,
  encodePeerFrame,
  versionRange,
  type Handshake,
} from './peer-codec.js';
import type { PeerMessage } from '../core/index.js';
import { TIMING_ON, timing } from './timing.js';

export interface PeerAddress {
  readonly host: string;
  readonly port: number;
}

export interface PeerTransportOptions {
  readonly cluster: string;
  readonly self: string;
  readonly listen: PeerAddress;
  readonly peers: ReadonlyMap<string, PeerAddress>;
  /** The largest frame accepted (a snapshot is one frame). */
  readonly maxFrameBytes: number;
  /** Above this many bytes waiting in a socket, new messages to that peer are dropped. */
  readonly maxQueuedBytes: number;
  readonly epoch: () => number;
  /** The cluster's shared secret: peers must prove they hold it. Null: no authentication. */
  readonly secret: Uint8Array | null;
  /** Mutual TLS: this node's certificate and key, and the CA every peer's must chain to. Null: plain TCP. */
  readonly tls: { readonly cert: Buffer; readonly key: Buffer; readonly ca: Buffer } | null;
  /** The identity id of this node's arbiter (read before start()); a peer's must be the same. */
  readonly arbiterId: () => string;
  /** A peer uses another arbiter (already logged as `two-arbiters`). */
  readonly onArbiterMismatch?: (peer: string, peerArbiterId: string) => void;
  readonly onMessage: (from: string, msg: unknown) => void;
  readonly log: (level: 'info' | 'warn', event: string, fields: Record<string, unknown>) => void;
}

interface Outbound {
  socket: net.Socket | null;
  ready: boolean;
  /** Frames to write at the next flush, in parts (encodePeerFrame). */
  pending: Uint8Array[];
  pendingBytes: number;
  pendingFrames: number;
  retryTimer: NodeJS.Timeout | null;
  backoffMs: number;
  /** How the last dial ended: no TCP connection at all ('unreachable'), or not yet / otherwise. */
  lastOutcome: 'pending' | 'unreachable' | 'connected';
  /** The protocol version the ready connection runs (null: not ready). */
  version: number | null;
  /** The version the dial under way announced: messages queued before it is ready are encoded in it. */
  announced: number;
}

/** The protocol versions of the connections with one peer, for /status. */
export interface PeerVersions {
  /** What our connection to it runs (null: none ready). */
  readonly outbound: number | null;
  /** What its connection to us runs (null: none admitted yet). */
  readonly inbound: number | null;
  /** The newest version its last handshake said it speaks (null: not heard from). */
  readonly speaks: number | null;
}

const HANDSHAKE_TIMEOUT_MS = 5000;
const HANDSHAKE_MAX_BYTES = 64 * 1024;
const RECONNECT_MIN_MS = 20;
const RECONNECT_MAX_MS = 1000;
const TWO_ARBITERS_LOG_MS = 5000;
const PEER_TLS_HINT = 'peerTls needs a certificate signed by this node\'s caFile on every node';
/** The first byte of a TLS record carrying a handshake (a ClientHello): no frame of ours starts so (it would be over 64 KiB). */
const TLS_HANDSHAKE_RECORD = 0x16;

export class PeerTransport {
  private server: net.Server | null = null;
  private readonly out = new Map<string, Outbound>();
  private readonly inbound = new Set<net.Socket>();
  private closed = false;
  private flushScheduled = false;
  private readonly twoArbitersLoggedAt = new Map<string, number>();
  private readonly toldOtherArbiter = new Set<string>();
  /**
   * The newest version each peer's last admitted handshake announced, while the connection it
   * came on is open: a peer that went away may come back as another release, so what its
   * previous process said is forgotten with that process's connection.
   */
  private readonly peerNewest = new Map<string, number>();
  /** The version each peer's admitted inbound connection runs. */
  private readonly inboundVersion = new Map<string, number>();
  /** The inbound connection each peer's entries above were learnt from. */
  private readonly learntFrom = new Map<string, net.Socket>();
  /** Counters for /metrics. */
  readonly stats = { framesSent: 0, bytesSent: 0, framesReceived: 0, bytesReceived: 0, dropped: 0, refused: 0 };

  constructor(private readonly o: PeerTransportOptions) {}

  /** Listen on the peer address and start dialling every peer. */
  async start(): Promise<void> {
    const t = this.o.tls;
    const server = t === null
      ? net.createServer((socket) => this.accept(socket))
      // rejectUnauthorized is ours to do (accept()): node:tls would end the socket before we
      // could log who it was and why.
      : tls.createServer({ cert: t.cert, key: t.key, ca: t.ca, requestCert: true, rejectUnauthorized: false, handshakeTimeout: HANDSHAKE_TIMEOUT_MS }, (socket) => this.accept(socket));
    if (t !== null) {
      // A peer without a certificate of our CA, a plain peer, or a stranger: refused, logged, and only that connection ends.
      server.on('tlsClientError', (e: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
        this.stats.refused++;
        this.o.log('warn', 'peer-refused', { remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, peer: null, reason: `TLS handshake failed (${e.code ?? e.message}): ${PEER_TLS_HINT}` });
      });
    }
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.listen.port, this.o.listen.host, () => {
        server.off('error', reject);
        // From now on a server error (EMFILE on accept, say) is logged; it must not end the node.
        server.on('error', (e: NodeJS.ErrnoException) => this.o.log('warn', 'peer-server-error', { reason: e.code ?? e.message }));
        resolve();
      });
    });
    for (const id of this.o.peers.keys()) this.dial(id);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const o of this.out.values()) {
      if (o.retryTimer) clearTimeout(o.retryTimer);
      o.socket?.destroy();
    }
    for (const s of this.inbound) s.destroy();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Queue a message for `to`; it goes out at the next flush. Dropped if the link is down or full. */
  send(to: string, msg: PeerMessage): void {
    const o = this.out.get(to);
    if (!o || !o.socket) {
      this.stats.dropped++;
      return;
    }
    if (o.socket.writableLength + o.pendingBytes > this.o.maxQueuedBytes) {
      this.stats.dropped++;
      this.o.log('warn', 'peer-backlog-full', { peer: to, queuedBytes: o.socket.writableLength + o.pendingBytes });
      return;
    }
    // Messages are encoded in the connection's version (a frame of version 7 has fewer fields).
    // One that version cannot say (a keep chunk to a version 7 peer) is dropped, as on a lost link.
    let parts: Uint8Array[];
    try {
      parts = encodePeerFrame(msg, o.version ?? o.announced);
    } catch (e) {
      if (!(e instanceof PeerCodecError)) throw e;
      this.stats.dropped++;
      this.o.log('warn', 'peer-cannot-say', { peer: to, type: msg.type, reason: e.message });
      return;
    }
    for (const part of parts) {
      o.pending.push(part);
      o.pendingBytes += part.length;
    }
    o.pendingFrames++;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Write everything queued, one socket write per peer. */
  flush(): void {
    this.flushScheduled = false;
    for (const o of this.out.values()) {
      if (o.pending.length === 0 || !o.socket || !o.ready || o.socket.destroyed) continue; // held until the handshake is done
      // Small parts are joined into one buffer; a large part (a big entry, a snapshot) goes as
      // it is, uncopied, in the same corked write.
      const socket = o.socket;
      this.stats.framesSent += o.pendingFrames;
      this.stats.bytesSent += o.pendingBytes;
      socket.cork();
      let run: Uint8Array[] = [];
      let runBytes = 0;
      const writeRun = (): void => {
        if (run.length > 0) socket.write(run.length === 1 ? run[0]! : Buffer.concat(run, runBytes));
        run = [];
        runBytes = 0;
      };
      for (const part of o.pending) {
        if (part.length >= 64 * 1024) {
          writeRun();
          socket.write(part);
        } else {
          run.push(part);
          runBytes += part.length;
        }
      }
      writeRun();
      o.pending = [];
      o.pendingBytes = 0;
      o.pendingFrames = 0;
      socket.uncork();
      if (TIMING_ON) timing.peerWrite();
    }
  }

  isConnected(to: string): boolean {
    return this.out.get(to)?.ready === true;
  }

  /** Nothing listens at the peer's address (its last dial got no TCP connection): it is down. */
  isUnreachable(to: string): boolean {
    return this.out.get(to)?.lastOutcome === 'unreachable';
  }

  /** Our handshake in protocol `version` (its format: a version 6 one carries no range). */
  private handshake(version: number, challenge: Uint8Array | null = null): Buffer {
    const h: Handshake = { cluster: this.o.cluster, nodeId: this.o.self, protocolVersion: version, epoch: this.o.epoch(), arbiterId: this.o.arbiterId(), challenge, minVersion: PROTOCOL_VERSION_MIN };
    return frame(encodeHandshake(h));
  }

  /** The version to dial `id` in: the newest we speak, or the peer's if it told us it is older. */
  private dialVersion(id: string): number {
    return Math.max(PROTOCOL_VERSION_MIN, Math.min(PROTOCOL_VERSION, this.peerNewest.get(id) ?? PROTOCOL_VERSION));
  }

  /** What each peer's connections run, by peer id. */
  versions(): Record<string, PeerVersions> {
    const out: Record<string, PeerVersions> = {};
    for (const id of this.o.peers.keys()) {
      const o = this.out.get(id);
      out[id] = { outbound: o?.ready ? o.version : null, inbound: this.inboundVersion.get(id) ?? null, speaks: this.peerNewest.get(id) ?? null };
    }
    return out;
  }

  /**
   * A peer's admitted handshake says which versions it speaks: remember the newest, and if our
   * connection to it runs an older version than both now speak (it was upgraded), dial again.
   */
  private learnVersion(peer: string, socket: net.Socket, h: Handshake, agreed: number): void {
    this.peerNewest.set(peer, h.protocolVersion);
    this.inboundVersion.set(peer, agreed);
    this.learntFrom.set(peer, socket);
    this.versionUp(peer);
  }

  /**
   * Our ready connection to `peer` runs an older version than both of us speak (we dialled on
   * what an older process of it said, or our dial was under way when its newer handshake came):
   * close it, and the reconnect dials in the newer version.
   */
  private versionUp(peer: string): void {
    const o = this.out.get(peer);
    if (o === undefined || !o.ready || o.socket === null || o.version === null) return;
    const both = Math.min(PROTOCOL_VERSION, this.peerNewest.get(peer) ?? PROTOCOL_VERSION_MIN);
    if (o.version >= both) return;
    this.o.log('info', 'peer-version-up', { peer, from: o.version, to: both });
    o.backoffMs = RECONNECT_MIN_MS;
    o.socket.destroy();
  }

  /** An inbound connection closed: if what we know of its peer's versions came on it, forget it. */
  private forgetVersion(socket: net.Socket): void {
    for (const [peer, from] of this.learntFrom) {
      if (from !== socket) continue;
      this.learntFrom.delete(peer);
      this.peerNewest.delete(peer);
      this.inboundVersion.delete(peer);
    }
  }

  /** What `from` must send `to` to answer `challenge`: bound to the cluster and both ids. */
  private proof(from: string, to: string, challenge: Uint8Array): Uint8Array {
    const mac = createHmac('sha256', this.o.secret!);
    mac.update('lockstep peer auth v1\0').update(this.o.cluster).update('\0').update(from).update('\0').update(to).update('\0').update(challenge);
    return new Uint8Array(mac.digest());
  }

  /** Does `frameBytes` prove that `peer` holds the secret, for this connection's challenge? */
  private proves(peer: string, challenge: Uint8Array, frameBytes: Uint8Array): boolean {
    let mac: Uint8Array;
    try {
      mac = decodeAuthProof(frameBytes);
    } catch {
      return false;
    }
    return timingSafeEqual(mac, this.proof(peer, this.o.self, challenge));
  }

  /** A peer that asks for a proof when this node has no secret, or the other way round. */
  private authMismatch(h: Handshake): string | null {
    if (this.o.secret !== null && !h.challenge) return `${h.nodeId} did not ask for an auth proof, but this node has a secret: set the same secretFile on every node`;
    if (this.o.secret === null && h.challenge) return `${h.nodeId} asks for an auth proof, but this node has no secret: set the same secretFile on every node`;
    return null;
  }

  /**
   * A peer on another arbiter: logged loudly, the node told (if `report`), and the reason
   * returned (null: the same arbiter). `remote` is set for an inbound connection.
   */
  private arbiterMismatch(h: Handshake, remote: string | null, report = true): string | null {
    if (h.arbiterId === this.o.arbiterId()) return null;
    const theirs = h.arbiterId ?? '(none)';
    const meaning = 'two arbiters: split brain risk, check the arbiter path in every node\'s config (a relative file: path resolves against the directory of the config file; run lockstep init once per cluster)';
    // Loud, but not a line per reconnect: once per peer every TWO_ARBITERS_LOG_MS.
    const now = Date.now();
    if (now - (this.twoArbitersLoggedAt.get(h.nodeId) ?? -Infinity) >= TWO_ARBITERS_LOG_MS) {
      this.twoArbitersLoggedAt.set(h.nodeId, now);
      this.o.log('warn', 'two-arbiters', { peer: h.nodeId, ...(remote !== null ? { remote } : {}), arbiterId: this.o.arbiterId(), peerArbiterId: theirs, meaning, ...(report ? {} : { authenticated: false }) });
    }
    if (report) this.o.onArbiterMismatch?.(h.nodeId, theirs);
    return `${h.nodeId} uses arbiter ${theirs}, this node uses arbiter ${this.o.arbiterId()}: ${meaning}`;
  }

  /** Why a peer's handshake is refused, or null. */
  private refusal(h: Handshake, expectedId: string | null): string | null {
    if (agreedVersion(h) === null) return `protocol version ${versionRange(h)}, this node speaks ${versionRange({ protocolVersion: PROTOCOL_VERSION, minVersion: PROTOCOL_VERSION_MIN })}`;
    if (h.cluster !== this.o.cluster) return `cluster ${JSON.stringify(h.cluster)}, this node is in ${JSON.stringify(this.o.cluster)}`;
    if (h.nodeId === this.o.self) return `node id ${h.nodeId} is this node's own`;
    if (!this.o.peers.has(h.nodeId)) return `unknown node id ${JSON.stringify(h.nodeId)}`;
    if (expectedId !== null && h.nodeId !== expectedId) return `dialled ${expectedId} but ${h.nodeId} answered`;
    return null;
  }

  // ---- inbound: the peer's messages to us ------------------------------------------------

  private accept(socket: net.Socket): void {
    if (this.closed) return void socket.destroy();
    const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    if (socket instanceof tls.TLSSocket && !socket.authorized) {
      // Nothing it sent is read: a certificate our CA did not sign (or none) ends it here.
      this.stats.refused++;
      // No certificate at all: its authorizationError would name a missing issuer. (null: already destroyed.)
      const none = Object.keys((socket.getPeerCertificate() as object | null) ?? {}).length === 0;
      this.o.log('warn', 'peer-refused', { remote, peer: null, reason: `TLS handshake failed (${none ? 'no certificate' : String(socket.authorizationError)}): ${PEER_TLS_HINT}` });
      return void socket.destroy();
    }
    this.inbound.add(socket);
    socket.setNoDelay(true);
    // Until the peer has identified itself, only a handshake-sized frame is accepted: a
    // stranger must not make this node buffer a snapshot-sized frame.
    const decoder = new FrameDecoder(HANDSHAKE_MAX_BYTES);
    let peer: string | null = null;
    /** The peer's handshake, once it passed refusal(). */
    let theirs: Handshake | null = null;
    /** The version this connection runs: its messages are decoded in it. */
    let inVersion = PROTOCOL_VERSION;
    /** With a secret: the challenge sent, until the peer's proof answers it. */
    let challenge: Uint8Array | null = null;
    /** Refused and ending: nothing more it sends is read. */
    let refused = false;
    const timer = setTimeout(() => {
      this.o.log('warn', 'peer-refused', { remote, peer, reason: peer === null ? 'no handshake within 5 s' : 'no auth proof within 5 s' });
      socket.destroy();
    }, HANDSHAKE_TIMEOUT_MS);
    const fail = (reason: string): void => {
      this.stats.refused++;
      this.o.log('warn', peer === null ? 'peer-refused' : 'peer-garbage', { remote, peer, reason });
      socket.destroy();
    };
    let first = true;
    socket.on('data', (chunk: Buffer) => {
      this.stats.bytesReceived += chunk.length;
      if (first && this.o.tls === null && chunk[0] === TLS_HANDSHAKE_RECORD) {
        return fail('it speaks TLS, but this node has no peerTls: set the same peerTls on every node');
      }
      first = false;
      try {
        decoder.push(chunk);
        for (let f = decoder.next(); f !== null; f = decoder.next()) {
          if (socket.destroyed || refused) return;
          if (peer === null) {
            const h = decodeHandshake(f);
            const why = this.refusal(h, null);
            if (why !== null) return fail(why);
            peer = h.nodeId;
            theirs = h;
            inVersion = agreedVersion(h) ?? PROTOCOL_VERSION;
            const other = this.arbiterMismatch(h, remote, this.o.secret === null);
            if (other !== null) {
              refused = true;
              clearTimeout(timer);
              return this.refuseOtherArbiter(socket, h, remote, other);
            }
            if (this.o.secret !== null) {
              // Nothing from this peer is taken until it proves it holds the secret.
              challenge = new Uint8Array(randomBytes(AUTH_BYTES));
              socket.write(this.handshake(agreedVersion(h)!, challenge));
              continue;
            }
            this.admit(socket, decoder, timer, h, remote, true);
            continue;
          }
          if (challenge !== null) {
            if (!this.proves(peer, challenge, f)) {
              peer = null; // logged as refused: it never got in
              return fail(`a ${f.length}-byte frame came instead of a valid auth proof: it did not prove it holds the cluster's secret (is secretFile the same on every node?)`);
            }
            challenge = null;
            this.admit(socket, decoder, timer, theirs!, remote, false);
            continue;
          }
          this.stats.framesReceived++;
          const msg = decodePeerMessage(f, inVersion);
          if (TIMING_ON) timing.peerMessage((msg as { type?: unknown }).type);
          this.o.onMessage(peer, msg);
        }
      } catch (e) {
        fail((e as Error).message);
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      this.inbound.delete(socket);
      this.forgetVersion(socket);
    });
  }

  /**
   * Refuse a connection from a peer on another arbiter: answer with our handshake (it names our
   * arbiter, so the dialler learns why) and end it; and dial the peer now, so it hears of us on
   * its own inbound side too.
   */
  private refuseOtherArbiter(socket: net.Socket, h: Handshake, remote: string, reason: string): void {
    const peer = h.nodeId;
    this.stats.refused++;
    this.o.log('warn', 'peer-refused', { remote, peer, reason });
    socket.end(this.handshake(agreedVersion(h)!));
    setTimeout(() => socket.destroy(), 1000).unref();
    // Once: two nodes on two arbiters redialling each other at every refusal would never back off.
    if (!this.toldOtherArbiter.has(peer)) {
      this.toldOtherArbiter.add(peer);
      this.redialNow(peer);
    }
  }

  /**
   * The peer is who it says: take its messages (and snapshot-sized frames) from now on.
   * `answer`: our handshake is still to be sent (it went with the challenge when there is a secret).
   */
  private admit(socket: net.Socket, decoder: FrameDecoder, timer: NodeJS.Timeout, h: Handshake, remote: string, answer: boolean): void {
    const peer = h.nodeId;
    const version = agreedVersion(h)!;
    clearTimeout(timer);
    decoder.maxFrameBytes = this.o.maxFrameBytes;
    if (answer) socket.write(this.handshake(version));
    this.o.log('info', 'peer-accepted', { peer, remote, ...(answer ? { peerEpoch: h.epoch } : {}), protocolVersion: version, authenticated: this.o.secret !== null, tls: this.o.tls !== null });
    this.learnVersion(peer, socket, h, version);
    this.redialNow(peer);
  }

  /**
   * The peer just reached us, so it is up: if our own connection to it is waiting out a
   * reconnect backoff, dial now. Otherwise what the core sends in answer to the peer's first
   * message (a snapshot for a spare's join) finds no connection and is dropped, and the
   * recruit is abandoned only after a failure timeout without an ack.
   */
  private redialNow(peer: string): void {
    const o = this.out.get(peer);
    if (o === undefined || o.socket !== null || o.retryTimer === null || this.closed) return;
    clearTimeout(o.retryTimer);
    o.retryTimer = null;
    o.backoffMs = RECONNECT_MIN_MS;
    this.dial(peer);
  }

  // ---- outbound: our messages to the peer ------------------------------------------------

  private dial(id: string): void {
    if (this.closed) return;
    const addr = this.o.peers.get(id)!;
    let o = this.out.get(id);
    if (!o) this.out.set(id, (o = { socket: null, ready: false, pending: [], pendingBytes: 0, pendingFrames: 0, retryTimer: null, backoffMs: RECONNECT_MIN_MS, lastOutcome: 'pending', version: null, announced: PROTOCOL_VERSION }));
    const state = o;
    const t = this.o.tls;
    // With TLS, the peer's certificate must chain to our CA and name the host we dial (node:tls's default identity check).
    const socket: net.Socket = t === null ? net.connect({ host: addr.host, port: addr.port }) : tls.connect({ host: addr.host, port: addr.port, cert: t.cert, key: t.key, ca: t.ca });
    state.socket = socket;
    state.ready = false;
    state.version = null;
    const announced = this.dialVersion(id);
    state.announced = announced;
    socket.setNoDelay(true);
    const decoder = new FrameDecoder(HANDSHAKE_MAX_BYTES);
    let connected = false;
    socket.on('connect', () => {
      connected = true;
      state.lastOutcome = 'connected';
      if (t === null) socket.write(this.handshake(announced));
    });
    // Our handshake goes only once the peer proved its certificate: it names the cluster and our arbiter.
    if (t !== null) socket.on('secureConnect', () => socket.write(this.handshake(announced)));
    socket.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
        for (let f = decoder.next(); f !== null; f = decoder.next()) {
          if (state.ready) throw new Error('the peer sent data on a one-way connection');
          const h = decodeHandshake(f);
          const why = this.refusal(h, id) ?? this.arbiterMismatch(h, null) ?? this.authMismatch(h);
          if (why !== null) throw new Error(why);
          // The answer is in the version we agree on, at most the one we announced.
          if (h.protocolVersion > announced) throw new Error(`answered in protocol version ${h.protocolVersion}, newer than the ${announced} it was dialled in`);
          if (h.challenge) socket.write(frame(encodeAuthProof(this.proof(this.o.self, id, h.challenge))));
          state.ready = true;
          state.version = agreedVersion(h);
          state.backoffMs = RECONNECT_MIN_MS;
          if (state.version !== announced && state.pending.length > 0) {
            // Queued in the version we announced, and the peer answered in an older one: drop
            // them (the core resends from the last ack, as for any message lost with a link).
            this.stats.dropped += state.pendingFrames;
            state.pending = [];
            state.pendingBytes = 0;
            state.pendingFrames = 0;
          }
          this.o.log('info', 'peer-connected', { peer: id, peerEpoch: h.epoch, protocolVersion: state.version });
          this.versionUp(id);
          this.flush();
        }
      } catch (e) {
        this.stats.refused++;
        this.o.log('warn', 'peer-refused', { peer: id, reason: (e as Error).message });
        socket.destroy();
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      // A TCP error (refused, reset) is the reconnect loop's business; a TLS one is a refusal worth saying.
      if (t === null || !connected || e.code === 'ECONNRESET' || e.code === 'EPIPE') return;
      this.stats.refused++;
      this.o.log('warn', 'peer-refused', { peer: id, reason: `TLS (${e.code ?? 'error'}): ${e.message}; ${PEER_TLS_HINT}, naming that node's peer host` });
    });
    socket.on('close', () => {
      if (state.socket !== socket) return;
      if (!connected) state.lastOutcome = 'unreachable';
      if (state.ready) this.o.log('warn', 'peer-disconnected', { peer: id });
      state.socket = null;
      state.ready = false;
      state.version = null;
      state.pending = [];
      state.pendingBytes = 0;
      state.pendingFrames = 0;
      if (this.closed) return;
      const delay = state.backoffMs;
      state.backoffMs = Math.min(RECONNECT_MAX_MS, state.backoffMs * 2);
      state.retryTimer = setTimeout(() => {
        state.retryTimer = null;
        this.dial(id);
      }, delay);
    });
  }
}
