// The kv front: the built-in kv machine behind a RESP2 client port (issue 3).
//
// Replies leave only through the output rule: a kv command is executed at once on the
// primary, its entry appended, and its reply held by the core until released. Replies on one
// client connection go out in request order (a per-connection queue of slots), so a PING
// pipelined behind a held GET waits for it.

import net from 'node:net';
import tls from 'node:tls';
import { createHash, timingSafeEqual } from 'node:crypto';
import { canAppend, type Entry, type Replica, type Role, type View } from '../core/index.js';
import { ReplicatedService, createKv, type ClientRequest, type KvChange, type KvCommand, type KvMachine, type KvReply } from '../guest/index.js';
import { AssertionError } from '../core/assert.js';
import { RespProtocolError, RespRequestParser, encodeReply, replySize, DEFAULT_RESP_LIMITS, type RespLimits } from '../net/resp.js';
import { EXEC_COMMAND, OPEN_COMMAND, parseExec, parseOpen } from '../net/exec.js';
import { TIMING_ON, timing } from '../net/timing.js';
import { clientOf, formatAddress, nodeOf, type ClusterConfig, type KvServiceConfig } from './config.js';
import { metaCommand, type NodeView } from './commands.js';
import type { FrontHost, ServiceFront } from './front.js';
import type { RestoreStream, SnapshotStream } from '../guest/snapshot-stream.js';
import { listenOrExplain } from './listen.js';

/** kv's machine, or a service module's (ModuleFront): the same commands and replies, their own changes. */
type Service = ReplicatedService<KvCommand, KvReply, unknown>;

interface Slot {
  bytes: Buffer | null;
  /** The output rule has not released this reply yet. */
  held?: boolean;
  /** Close the connection once this reply is written (QUIT). */
  close?: boolean;
  /** A held reply's command name and performance.now() at its read, for the latency metrics. */
  command?: string;
  readAt?: number;
}

class ClientConn {
  readonly parser: RespRequestParser;
  readonly slots: Slot[] = [];
  /** Commands parsed but not yet run: flow control is closed. */
  readonly waiting: string[][] = [];
  /** Bytes of replies in `slots` not yet handed to the socket. */
  slotBytes = 0;
  closed = false;
  /** AUTH given (or no password asked): until then only AUTH, HELLO and QUIT run. */
  authed = false;
  constructor(
    readonly socket: net.Socket,
    readonly id: number,
    limits: Partial<RespLimits>,
  ) {
    this.parser = new RespRequestParser(limits);
  }
}

/** Replies held by the output rule at most; beyond it clients wait (their sockets pause). */
const MAX_HELD_REPLIES = 100_000;
/** Unread reply bytes per client connection at most; beyond it that client's commands wait. */
const MAX_CLIENT_OUTPUT_BYTES = 8 * 1024 * 1024;

export class KvFront implements ServiceFront, NodeView {
  protected service: Service;
  private clientServer: net.Server | null = null;
  private readonly outputs = new Map<number, { conn: ClientConn; slot: Slot }>();
  /** The client request being executed (for a module front whose machine breaks under it). */
  protected executing: ClientRequest<KvCommand> | null = null;
  /** Held outputs that are not replies: what to do once the output rule releases (or drops) them. */
  private readonly whenOut = new Map<number, () => void>();
  private nextOutputId = 1;
  private readonly conns = new Set<ClientConn>();
  private nextConnId = 1;
  /** Connections whose commands wait for flow control to open. */
  private readonly blocked = new Set<ClientConn>();
  /** Connections with replies ready to write at the end of this turn. */
  private readonly dirty = new Set<ClientConn>();
  readonly counters = { commands: 0, releases: 0, discards: 0, clientErrors: 0, opsLastSecond: 0, opsThisSecond: 0 };
  private rateTimer: NodeJS.Timeout | null = null;
  /** Unparsed client input held now, over every connection (bounded by clientInputBytesMax). */
  private inputBytes = 0;

  constructor(protected readonly node: FrontHost) {
    this.service = this.freshService();
  }

  // ---- NodeView: what the meta commands (INFO, ROLE, SENTINEL) read -------------------------

  get id(): string {
    return this.node.id;
  }

  get clusterConfig(): ClusterConfig {
    return this.node.config;
  }

  get replicaState(): Replica {
    return this.node.replica;
  }

  beginSwitchover(to: string | null): { readonly started: boolean; readonly code: string | null; readonly message: string } {
    return this.node.beginSwitchover?.(to) ?? { started: false, code: null, message: 'this node cannot begin a switchover' };
  }

  get clientCount(): number {
    return this.conns.size;
  }

  // ---- ServiceFront ------------------------------------------------------------------------

  async start(): Promise<void> {
    const self = nodeOf(this.node.config, this.node.id);
    const tlsFiles = this.node.config.clientTls;
    // With TLS, 'secureConnection' hands over the socket once the handshake is done; a failed
    // handshake is that connection's tlsClientError, never the node's.
    const server = tlsFiles === null
      ? net.createServer((s) => this.acceptClient(s))
      : tls.createServer({ cert: tlsFiles.cert, key: tlsFiles.key }, (s) => this.acceptClient(s)).on('tlsClientError', () => undefined);
    this.clientServer = server;
    await listenOrExplain('client', server, clientOf(self), (e) => this.node.log('warn', 'client-server-error', { reason: e.code ?? e.message }));
    this.rateTimer = setInterval(() => {
      this.counters.opsLastSecond = this.counters.opsThisSecond;
      this.counters.opsThisSecond = 0;
    }, 1000);
  }

  async stop(): Promise<void> {
    if (this.rateTimer) clearInterval(this.rateTimer);
    for (const c of this.conns) c.socket.destroy();
    const s = this.clientServer;
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  apply(entries: readonly Entry[]): void {
    for (const e of entries) this.service.applyEntry(e.payload);
  }

  installSnapshot(_index: number, data: Uint8Array): void {
    const service = this.freshService();
    service.restore(data);
    this.service = service;
  }

  takeSnapshot(): Uint8Array {
    return this.service.snapshot();
  }

  /**
   * The service's stream, timed: at its end `kv-snapshot-sent` logs the time spent making
   * pieces (`produceMs`, the longest `maxNextMs`) against the stream's wall time (`ms`: the
   * rest is the window shut, waiting for the recruit's acks, and the node's other work).
   */
  snapshotStream(): SnapshotStream {
    const s = this.service.snapshotStream();
    const t0 = performance.now();
    const st = { pieces: 0, bytes: 0, produceMs: 0, maxNextMs: 0 };
    return {
      next: (maxBytes) => {
        const a = performance.now();
        const piece = s.next(maxBytes);
        const ms = performance.now() - a;
        st.produceMs += ms;
        st.maxNextMs = Math.max(st.maxNextMs, ms);
        if (piece !== null) {
          st.pieces++;
          st.bytes += piece.length;
        } else {
          this.node.log('info', 'kv-snapshot-sent', { ...st, produceMs: Math.round(st.produceMs), maxNextMs: round1(st.maxNextMs), ms: Math.round(performance.now() - t0) });
        }
        return piece;
      },
      close: () => s.close(),
    };
  }

  /**
   * A restore into a fresh service, swapped in at finish; `kv-restore` logs the time spent
   * restoring pieces (`addMs`, the longest `maxAddMs`) against the wall time from the first
   * piece to the end (`ms`: the rest is waiting for pieces, and the node's other work).
   */
  restoreStream(): RestoreStream {
    const service = this.freshService();
    const s = service.restoreStream();
    let t0 = 0;
    const st = { pieces: 0, bytes: 0, addMs: 0, maxAddMs: 0 };
    return {
      add: (piece) => {
        const a = performance.now();
        if (st.pieces === 0) t0 = a;
        s.add(piece);
        const ms = performance.now() - a;
        st.pieces++;
        st.bytes += piece.length;
        st.addMs += ms;
        st.maxAddMs = Math.max(st.maxAddMs, ms);
      },
      finish: () => {
        const a = performance.now();
        s.finish();
        this.service = service;
        const finishMs = performance.now() - a;
        this.node.log('info', 'kv-restore', { ...st, addMs: Math.round(st.addMs), maxAddMs: round1(st.maxAddMs), finishMs: round1(finishMs), ms: Math.round(performance.now() - t0) });
      },
    };
  }

  release(outputIds: readonly number[]): void {
    const metrics = this.node.metrics;
    for (const o of this.takeOutputs(outputIds)) {
      this.counters.releases++;
      o.slot.held = false;
      if (metrics !== undefined) metrics.command(o.slot.command!, o.slot.readAt!);
      this.flushConn(o.conn);
    }
    this.runWhenOut(outputIds); // after the replies it releases with it are written
  }

  discard(outputIds: readonly number[]): void {
    this.runWhenOut(outputIds);
    // These replies will never be sent: close their connections so the clients retry elsewhere.
    for (const o of this.takeOutputs(outputIds)) {
      this.counters.discards++;
      o.conn.socket.destroy();
    }
  }

  role(role: Role, _view: View): void {
    if (role !== 'primary') this.failWaiting();
  }

  reset(keepState = false): void {
    this.failWaiting();
    if (!keepState) this.service = this.freshService();
  }

  flowMayHaveOpened(): void {
    this.drainBlocked();
  }

  /** Write every dirty connection's ready replies: one socket write per connection per turn. */
  afterFlush(): void {
    for (const conn of this.dirty) this.writeReady(conn);
    this.dirty.clear();
    this.drainBlocked();
  }

  status(): Record<string, unknown> {
    return {
      digest: this.service.digest(),
      clients: this.conns.size,
      opsPerSec: this.counters.opsLastSecond,
      mode: this.mode,
      dedupBytes: this.service.filterBytes,
      ...this.serviceStatus(),
    };
  }

  /** The machine's own /status fields (kv: its memory use). */
  protected serviceStatus(): Record<string, unknown> {
    return { usedMemoryBytes: (this.service.machine as KvMachine).usedBytes };
  }

  metrics(metric: (name: string, type: 'gauge' | 'counter', help: string, value: number) => void): void {
    const c = this.counters;
    metric('lockstep_client_connections', 'gauge', 'Open client connections.', this.conns.size);
    metric('lockstep_client_commands_total', 'counter', 'Client commands received.', c.commands);
    metric('lockstep_released_outputs_total', 'counter', 'Replies released by the output rule.', c.releases);
    metric('lockstep_discarded_outputs_total', 'counter', 'Replies discarded when this node stopped being primary.', c.discards);
    metric('lockstep_client_protocol_errors_total', 'counter', 'Client connections closed for protocol garbage.', c.clientErrors);
    metric('lockstep_dedup_filter_bytes', 'gauge', 'Duplicate filter size as counted for dedupBytesMax.', this.service.filterBytes);
    this.serviceMetrics(metric);
  }

  /** The machine's own metrics (kv: memory use against maxmemory). */
  protected serviceMetrics(metric: (name: string, type: 'gauge' | 'counter', help: string, value: number) => void): void {
    metric('lockstep_kv_used_memory_bytes', 'gauge', 'kv state size as counted for maxmemory (key and value bytes, 64 a key).', (this.service.machine as KvMachine).usedBytes);
    metric('lockstep_kv_maxmemory_bytes', 'gauge', 'The maxmemory limit.', this.node.config.maxmemory);
  }

  // ---- the service -------------------------------------------------------------------------

  private get mode(): KvServiceConfig['mode'] {
    const svc = this.node.config.service;
    if (svc.kind === 'wasm') throw new Error(`KvFront given a ${svc.kind} service`);
    return svc.mode;
  }

  protected freshService(): Service {
    const c = this.node.config;
    return new ReplicatedService<KvCommand, KvReply, KvChange>(createKv(c.protoMaxBulkLen, c.maxmemory), this.mode, { bytesMax: c.dedupBytesMax, sessionEntries: c.dedupSessionEntries }) as Service;
  }

  /** What the log carries for an entry of the service (a subclass may add to it: ModuleFront's digest). */
  protected payload(entry: Uint8Array): Uint8Array {
    return entry;
  }

  private runWhenOut(ids: readonly number[]): void {
    if (this.whenOut.size === 0) return;
    for (const id of ids) {
      const f = this.whenOut.get(id);
      if (f === undefined) continue;
      this.whenOut.delete(id);
      f();
    }
  }

  /**
   * Log `entry` (a payload as given to the core) and call `then` once the output rule would
   * release a reply that depends on it: the backup has it (or the node stopped being primary).
   */
  protected logThen(entry: Uint8Array, then: () => void): void {
    this.node.input({ type: 'append', payload: entry });
    const outputId = this.nextOutputId++;
    this.whenOut.set(outputId, then);
    this.node.input({ type: 'hold', outputId, fresh: false });
  }

  /** Why this node takes no more commands although it is primary (a broken service), or null. */
  protected notServing(): string | null {
    return null;
  }

  /** Remove and return the held outputs with these ids (those still known), in order. */
  private takeOutputs(ids: readonly number[]): { conn: ClientConn; slot: Slot }[] {
    const taken: { conn: ClientConn; slot: Slot }[] = [];
    for (const id of ids) {
      const o = this.outputs.get(id);
      if (!o) continue;
      this.outputs.delete(id);
      taken.push(o);
    }
    return taken;
  }

  // ---- clients -----------------------------------------------------------------------------

  private acceptClient(socket: net.Socket): void {
    socket.on('error', () => {}); // a reset is the end of this connection, nothing more
    const config = this.node.config;
    if (this.conns.size >= config.maxClientConnections) {
      socket.end(encodeReply({ kind: 'error', message: 'ERR max number of clients reached' }));
      return;
    }
    socket.setNoDelay(true);
    const limits: Partial<RespLimits> = {
      maxBulkBytes: config.protoMaxBulkLen,
      maxBufferedBytes: Math.min(config.clientInputBytesMax, Math.max(DEFAULT_RESP_LIMITS.maxBufferedBytes, 2 * config.protoMaxBulkLen)),
    };
    const conn = new ClientConn(socket, this.nextConnId++, limits);
    conn.authed = config.requirePass === null;
    this.conns.add(conn);
    socket.on('data', (chunk: Buffer) => this.clientData(conn, chunk));
    socket.on('close', () => {
      conn.closed = true;
      this.inputBytes -= conn.parser.bufferedBytes;
      this.conns.delete(conn);
      this.blocked.delete(conn);
    });
  }

  /**
   * Bytes from a client. Nothing a client sends can end this process: protocol garbage gets
   * Redis's "-ERR Protocol error" and the connection closes; any other failure while parsing,
   * running or encoding a command closes that one connection (and is logged). Only a broken
   * invariant of the core (AssertionError) still stops the node: fail-stop is the model.
   */
  private clientData(conn: ClientConn, chunk: Buffer): void {
    if (conn.closed) return; // refused: what it still sends is dropped
    const before = conn.parser.bufferedBytes;
    const readAt = performance.now();
    if (TIMING_ON) timing.cmd();
    try {
      if (this.inputBytes + chunk.length > this.node.config.clientInputBytesMax) {
        throw new RespProtocolError(`client input buffers are full (clientInputBytesMax ${this.node.config.clientInputBytesMax} bytes over all connections)`);
      }
      conn.parser.push(chunk);
      for (let cmd = conn.parser.next(); cmd !== null; cmd = conn.parser.next()) {
        if (conn.closed) return;
        this.counters.commands++;
        this.counters.opsThisSecond++;
        if (conn.waiting.length > 0 || this.outputFull(conn)) this.park(conn, cmd);
        else this.command(conn, cmd, readAt);
      }
    } catch (e) {
      if (e instanceof AssertionError) throw e;
      this.counters.clientErrors++;
      const reason = e instanceof Error ? e.message : String(e);
      this.node.log('warn', e instanceof RespProtocolError ? 'client-garbage' : 'client-failed', {
        client: conn.id, remote: conn.socket.remoteAddress ?? '?', reason: reason.slice(0, 300),
        ...(e instanceof RespProtocolError ? {} : { stack: (e as Error).stack?.split('\n').slice(0, 6).join(' | ') ?? null }),
      });
      conn.closed = true;
      this.blocked.delete(conn);
      conn.socket.end(encodeReply({ kind: 'error', message: `ERR ${e instanceof RespProtocolError ? reason : `internal error: ${reason}`}` }));
      conn.socket.destroySoon();
    } finally {
      this.inputBytes += conn.parser.bufferedBytes - before;
    }
  }

  /**
   * Run one client command, or park it if flow control is closed. `readAt`: performance.now()
   * when its bytes were read (a parked command is timed from when it runs).
   */
  private command(conn: ClientConn, args: string[], readAt = performance.now()): void {
    const name = (args[0] ?? '').toUpperCase();
    if (name === 'AUTH') return this.reply(conn, this.auth(conn, args), name, readAt);
    if (!conn.authed && name !== 'QUIT' && name !== 'HELLO') {
      return this.reply(conn, { kind: 'error', message: 'NOAUTH Authentication required.' }, name, readAt);
    }
    const meta = metaCommand(this, name, args);
    if (meta !== null) {
      const bytes = this.encode(meta.reply);
      conn.slots.push({ bytes, close: meta.close === true });
      conn.slotBytes += bytes.length;
      this.flushConn(conn);
      this.node.metrics?.command(name, readAt);
      return;
    }
    if (this.node.replica.role !== 'primary') {
      if (this.awaitingNewPrimary()) return this.park(conn, args);
      this.reply(conn, { kind: 'error', message: this.notPrimaryMessage() }, name, readAt);
      return;
    }
    const stopping = this.notServing();
    if (stopping !== null) return this.reply(conn, { kind: 'error', message: `NOTPRIMARY ${stopping}; try another node` }, name, readAt);
    if (!this.flowOpen()) {
      this.park(conn, args);
      return;
    }
    if (name === OPEN_COMMAND) return this.openSession(conn, args, readAt);
    let req: { clientId: string | null; seq: number; ackedBelow: number; command: KvCommand };
    if (name === EXEC_COMMAND) {
      const parsed = parseExec(args);
      if (typeof parsed === 'string') {
        this.reply(conn, { kind: 'error', message: parsed }, name, readAt);
        return;
      }
      req = parsed;
    } else {
      req = { clientId: null, seq: 1, ackedBelow: 0, command: args };
    }
    let res: ReturnType<Service['execute']>;
    try {
      this.executing = req;
      res = this.service.execute(req);
    } catch (e) {
      // The machine validates before it changes anything (kv does), so a throw changed nothing
      // and nothing was logged: the client gets an error and this node carries on. Were it to
      // crash instead, the client's retry would crash each new primary in turn.
      if (e instanceof AssertionError) throw e;
      this.node.log('warn', 'command-failed', { command: name.slice(0, 64), args: args.length, reason: (e as Error).message?.slice(0, 300) ?? String(e) });
      const reply: KvReply = { kind: 'error', message: `ERR internal error running ${name.slice(0, 64)}: ${(e as Error).message?.slice(0, 200) ?? String(e)}` };
      // The command broke the service, which logged its quarantine (that may open the client's
      // session): the reply waits for the output rule, as every reply after an entry does.
      if (this.notServing() !== null) return this.logAndHold(conn, null, reply, name, readAt);
      this.reply(conn, reply, name, readAt);
      return;
    } finally {
      this.executing = null;
    }
    this.logAndHold(conn, res.entry, res.reply, req.command[0] ?? name, readAt);
  }

  /** LOCKSTEP.OPEN: log the session's open entry if it is new; +OK under the output rule either way. */
  private openSession(conn: ClientConn, args: string[], readAt: number): void {
    const parsed = parseOpen(args);
    if (typeof parsed === 'string') return this.reply(conn, { kind: 'error', message: parsed }, OPEN_COMMAND, readAt);
    const entry = this.service.ensureSession(parsed.clientId);
    this.logAndHold(conn, entry, { kind: 'status', value: 'OK' }, OPEN_COMMAND, readAt);
  }

  /** Append `entry` (if any) and hold `reply` in the connection's next slot until the output rule releases it. */
  private logAndHold(conn: ClientConn, entry: Uint8Array | null, reply: KvReply, command: string, readAt: number): void {
    if (entry !== null) this.node.input({ type: 'append', payload: this.payload(entry) });
    const slot: Slot = { bytes: this.encode(reply), held: true, command, readAt };
    conn.slots.push(slot);
    conn.slotBytes += slot.bytes!.length;
    // The reply exists but stays in its slot, unwritten, until the output rule releases it.
    const outputId = this.nextOutputId++;
    this.outputs.set(outputId, { conn, slot });
    this.node.input({ type: 'hold', outputId, fresh: entry === null });
  }

  /** AUTH password, or AUTH default password (Redis 6's form with the default user), as Redis answers it. */
  private auth(conn: ClientConn, args: readonly string[]): KvReply {
    if (args.length < 2 || args.length > 3) return { kind: 'error', message: "ERR wrong number of arguments for 'auth' command" };
    const want = this.node.config.requirePass;
    if (want === null) {
      return { kind: 'error', message: 'ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?' };
    }
    const user = args.length === 3 ? args[1]! : 'default';
    const given = args[args.length - 1]!;
    // Compare digests: equal length, so timingSafeEqual leaks nothing about the password.
    const digest = (x: string): Buffer => createHash('sha256').update(x, 'latin1').digest();
    if (user === 'default' && timingSafeEqual(digest(given), digest(want))) {
      conn.authed = true;
      return { kind: 'status', value: 'OK' };
    }
    this.node.log('warn', 'client-auth-failed', { client: conn.id, remote: conn.socket.remoteAddress ?? '?' });
    return { kind: 'error', message: 'WRONGPASS invalid username-password pair or user is disabled.' };
  }

  /**
   * A reply's bytes, or an error if it would exceed maxReplyBytes (an MGET of a million large
   * values once threw in encodeReply past a Buffer's 4 GiB and ended the process).
   */
  private encode(reply: KvReply): Buffer {
    const size = replySize(reply);
    const max = this.node.config.maxReplyBytes;
    if (size <= max) return encodeReply(reply);
    this.node.log('warn', 'reply-too-large', { bytes: size, maxReplyBytes: max });
    return encodeReply({ kind: 'error', message: `ERR reply of ${size} bytes exceeds maxReplyBytes (${max}); ask for fewer or smaller values at a time` });
  }

  /** An answer that waits for nothing (an error, AUTH); `name` and `readAt` time a command's. */
  private reply(conn: ClientConn, reply: KvReply, name?: string, readAt?: number): void {
    const bytes = this.encode(reply);
    conn.slots.push({ bytes });
    conn.slotBytes += bytes.length;
    this.flushConn(conn);
    if (name !== undefined) this.node.metrics?.command(name, readAt!);
  }

  /** Keep a command for later, in order, and stop reading the connection meanwhile. */
  private park(conn: ClientConn, args: string[]): void {
    conn.waiting.push(args);
    conn.socket.pause();
    this.blocked.add(conn);
  }

  /**
   * Has the client left too many replies unread? Then its next commands wait (like the log
   * bound): a client that never reads cannot grow this node's memory without bound.
   */
  private outputFull(conn: ClientConn): boolean {
    return conn.slotBytes + conn.socket.writableLength > MAX_CLIENT_OUTPUT_BYTES;
  }

  get knownView(): View {
    return this.node.knownView;
  }

  notPrimaryMessage(): string {
    const v = this.node.knownView;
    const primary = v.primary === null || v.primary === this.node.id ? null : this.node.config.nodes.find((n) => n.id === v.primary);
    if (primary) return `NOTPRIMARY the primary is ${primary.id} at ${formatAddress(clientOf(primary))} (epoch ${v.epoch}); this node is ${this.node.replica.role}`;
    return `NOTPRIMARY no primary known to this node (it is ${this.node.replica.role}); try another node`;
  }

  /** Write the replies at the head of the connection's queue that are ready (released). */
  private flushConn(conn: ClientConn): void {
    if (conn.closed) return;
    this.dirty.add(conn);
    this.node.scheduleFlush();
  }

  private writeReady(conn: ClientConn): void {
    if (conn.closed) return;
    const ready: Buffer[] = [];
    let close = false;
    let n = 0;
    while (n < conn.slots.length) {
      const s = conn.slots[n]!;
      if (s.bytes === null || s.held === true) break;
      ready.push(s.bytes);
      n++;
      if (s.close) {
        close = true;
        break;
      }
    }
    if (n === 0) return;
    conn.slots.splice(0, n);
    const data = ready.length === 1 ? ready[0]! : Buffer.concat(ready);
    conn.slotBytes -= data.length;
    if (close) conn.socket.end(data);
    else conn.socket.write(data);
    if (TIMING_ON) timing.reply();
  }

  /**
   * May the primary take another command? The core bounds the unacked log (entries, bytes);
   * replies waiting for the output rule are bounded here too, since reads append nothing.
   */
  private flowOpen(): boolean {
    return canAppend(this.node.replica) && this.outputs.size < MAX_HELD_REPLIES;
  }

  /** Flow control reopened, or a client read its replies: run parked commands, in order, while there is room. */
  private drainBlocked(): void {
    if (this.blocked.size === 0) return;
    for (const conn of [...this.blocked]) {
      while (conn.waiting.length > 0 && !conn.closed && !this.outputFull(conn)) {
        // Only guest commands wait for the log; meta commands and errors need no room there.
        if (this.node.replica.role === 'primary' && !this.flowOpen()) break;
        if (this.awaitingNewPrimary()) break;
        this.command(conn, conn.waiting.shift()!);
      }
      if (conn.waiting.length === 0) {
        this.blocked.delete(conn);
        conn.socket.resume();
      }
    }
  }

  /**
   * Just after our switchover landed, until the new primary's first frame: commands wait here
   * rather than be sent to a node that has not gone live yet (it would point them back here,
   * and the client would bounce between the two). The core stops waiting at that frame, or
   * when it goes live again itself or halts.
   */
  private awaitingNewPrimary(): boolean {
    const r = this.node.replica;
    return r.role === 'backup' && r.notifyPrimary !== null;
  }

  /**
   * No longer primary: parked commands never ran and never will here. Each gets its NOTPRIMARY
   * answer, in order, so the client knows it did not run (a closed connection would leave it in
   * doubt, and a deduplicating client cannot resend a first request in doubt after failover).
   */
  private failWaiting(): void {
    if (this.node.replica.role === 'primary') {
      for (const conn of [...this.blocked]) {
        this.blocked.delete(conn);
        conn.waiting.length = 0;
        conn.socket.destroy();
      }
      return;
    }
    this.drainBlocked();
  }
}

function round1(ms: number): number {
  return Math.round(ms * 10) / 10;
}
