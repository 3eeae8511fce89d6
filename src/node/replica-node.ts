// One replica process: the pure core driven by real I/O (DESIGN.md §4).
//
// This is the third driver of the core, beside the simulator and the scenario harness. It
// owns what the core must not: the clock (performance.now, made monotonic), timers, the
// logging channel over TCP (PeerTransport), the arbiter (a file directory by default), the
// guest (a ReplicatedService running the kv machine) and the client port (RESP2). Every
// completed piece of I/O comes back into the core as an Input through `input()`; every
// Action the core returns is carried out in `act()`, in order.
//
// Replies leave only through the output rule: a kv command is executed at once on the
// primary, its entry appended, and its reply held by the core until released. Replies on one
// client connection go out in request order (a per-connection queue of slots), so a PING
// pipelined behind a held GET waits for it.

import http from 'node:http';
import net from 'node:net';
import {
  canAppend,
  createReplica,
  status as coreStatus,
  step,
  type Action,
  type CoreConfig,
  type Input,
  type Replica,
} from '../core/index.js';
import { ReplicatedService, createKv, type KvChange, type KvCommand, type KvReply } from '../guest/index.js';
import { openArbiter, type Arbiter } from '../arbiter/types.js';
import { LockstepError } from '../errors.js';
import { PeerTransport } from '../net/peer-transport.js';
import { RespProtocolError, RespRequestParser, encodeReply } from '../net/resp.js';
import { EXEC_COMMAND, parseExec } from '../net/exec.js';
import { coreConfigFor, formatAddress, nodeOf, type ClusterConfig, type NodeAddress } from './config.js';
import { metaCommand, type NodeView } from './commands.js';

type Service = ReplicatedService<KvCommand, KvReply, KvChange>;

export type LogRecord = Record<string, unknown>;

interface Slot {
  bytes: Buffer | null;
  /** The output rule has not released this reply yet. */
  held?: boolean;
  /** Close the connection once this reply is written (QUIT). */
  close?: boolean;
}

class ClientConn {
  readonly parser = new RespRequestParser();
  readonly slots: Slot[] = [];
  /** Commands parsed but not yet run: flow control is closed. */
  readonly waiting: string[][] = [];
  /** Bytes of replies in `slots` not yet handed to the socket. */
  slotBytes = 0;
  closed = false;
  constructor(
    readonly socket: net.Socket,
    readonly id: number,
  ) {}
}

const PEER_MAX_FRAME_BYTES = 512 * 1024 * 1024;
/** Replies held by the output rule at most; beyond it clients wait (their sockets pause). */
const MAX_HELD_REPLIES = 100_000;
/** Unread reply bytes per client connection at most; beyond it that client's commands wait. */
const MAX_CLIENT_OUTPUT_BYTES = 8 * 1024 * 1024;
const PEER_MAX_QUEUED_BYTES = 256 * 1024 * 1024;

export class ReplicaNode implements NodeView {
  private replica: Replica;
  private service: Service;
  private readonly core: CoreConfig;
  private readonly transport: PeerTransport;
  private readonly arbiter: Arbiter;
  private clientServer: net.Server | null = null;
  private adminServer: http.Server | null = null;
  private tickTimer: NodeJS.Timeout | null = null;
  private rateTimer: NodeJS.Timeout | null = null;
  private flushScheduled = false;
  private lastNowMs = 0;
  /** Bumped when this replica halts and starts over as an empty spare. */
  private incarnation = 0;
  private readonly outputs = new Map<number, { conn: ClientConn; slot: Slot }>();
  private nextOutputId = 1;
  private readonly conns = new Set<ClientConn>();
  private nextConnId = 1;
  /** Connections whose commands wait for flow control to open. */
  private readonly blocked = new Set<ClientConn>();
  /** Connections with replies ready to write at the end of this turn. */
  private readonly dirty = new Set<ClientConn>();
  private stopped = false;
  readonly counters = { commands: 0, releases: 0, discards: 0, viewChanges: 0, clientErrors: 0, opsLastSecond: 0, opsThisSecond: 0 };

  constructor(
    readonly config: ClusterConfig,
    readonly id: string,
    private readonly logLine: (rec: LogRecord) => void,
  ) {
    nodeOf(config, id);
    this.core = coreConfigFor(config, id);
    this.replica = createReplica(this.core, this.nowMs());
    this.service = this.freshService();
    this.arbiter = openArbiter(config.arbiter, { baseDir: config.baseDir });
    const self = nodeOf(config, id);
    this.transport = new PeerTransport({
      cluster: config.cluster,
      self: id,
      listen: self.peerListen,
      peers: new Map(config.nodes.filter((n) => n.id !== id).map((n) => [n.id, n.peer])),
      maxFrameBytes: PEER_MAX_FRAME_BYTES,
      maxQueuedBytes: PEER_MAX_QUEUED_BYTES,
      epoch: () => this.replica.view.epoch,
      onMessage: (from, msg) => this.input({ type: 'message', from, msg }),
      log: (level, event, fields) => this.log(level, event, fields),
    });
  }

  // ---- NodeView: what the meta commands (INFO, ROLE, SENTINEL) read -------------------------

  get clusterConfig(): ClusterConfig {
    return this.config;
  }

  get replicaState(): Replica {
    return this.replica;
  }

  get clientCount(): number {
    return this.conns.size;
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  async start(): Promise<void> {
    const self = nodeOf(this.config, this.id);
    await this.listen('peer', self.peerListen, () => this.transport.start());
    const clientServer = net.createServer((s) => this.acceptClient(s));
    this.clientServer = clientServer;
    await this.listen('client', self.client, () => listenOn(clientServer, self.client));
    const admin = http.createServer((req, res) => this.serveAdmin(req, res));
    this.adminServer = admin;
    await this.listen('admin', self.admin, () => listenOn(admin, self.admin));
    const tickMs = Math.max(1, Math.floor(this.config.heartbeatMs / 5));
    this.tickTimer = setInterval(() => this.input({ type: 'tick' }), tickMs);
    this.rateTimer = setInterval(() => {
      this.counters.opsLastSecond = this.counters.opsThisSecond;
      this.counters.opsThisSecond = 0;
    }, 1000);
    this.log('info', 'node-start', {
      cluster: this.config.cluster,
      peer: formatAddress(self.peer),
      client: formatAddress(self.client),
      admin: formatAddress(self.admin),
      mode: this.config.service.mode,
      arbiter: this.arbiter.description,
    });
    this.input({ type: 'start' });
  }

  private async listen(what: string, addr: NodeAddress, go: () => Promise<void>): Promise<void> {
    try {
      await go();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      throw new LockstepError('E_LISTEN', `cannot listen on the ${what} address ${formatAddress(addr)}: ${code}`);
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.rateTimer) clearInterval(this.rateTimer);
    for (const c of this.conns) c.socket.destroy();
    await this.transport.close();
    await Promise.all(
      [this.clientServer, this.adminServer].map(
        (s) => new Promise<void>((resolve) => (s ? s.close(() => resolve()) : resolve())),
      ),
    );
    this.log('info', 'node-stop', {});
  }

  // ---- the core loop -----------------------------------------------------------------------

  private nowMs(): number {
    this.lastNowMs = Math.max(this.lastNowMs, performance.now());
    return this.lastNowMs;
  }

  private freshService(): Service {
    return new ReplicatedService(createKv(), this.config.service.mode);
  }

  /** Feed the core one input and carry out what it asks. */
  input(input: Input): void {
    if (this.stopped) return;
    const actions = step(this.replica, input, this.nowMs());
    for (const a of actions) this.act(a);
    if (input.type === 'message' || input.type === 'arbiterResult' || input.type === 'tick') this.drainBlocked();
    this.scheduleFlush();
  }

  /** At the end of this event-loop turn: send pending frames, then write released replies. */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      if (this.stopped) return;
      for (const a of step(this.replica, { type: 'flush' }, this.nowMs())) this.act(a);
      this.transport.flush();
      this.writeReplies();
    });
  }

  private act(a: Action): void {
    switch (a.type) {
      case 'send':
        this.transport.send(a.to, a.msg);
        return;
      case 'arbiterCas': {
        const incarnation = this.incarnation;
        this.arbiter.compareAndSet(a.expected, a.next).then(
          (res) => {
            if (incarnation === this.incarnation) this.input({ type: 'arbiterResult', requestId: a.requestId, ok: res.ok, view: res.view });
          },
          (e: unknown) => {
            if (incarnation === this.incarnation) this.input({ type: 'arbiterFailed', requestId: a.requestId, reason: (e as Error).message });
          },
        );
        return;
      }
      case 'release':
        for (const o of this.takeOutputs(a.outputIds)) {
          this.counters.releases++;
          o.slot.held = false;
          this.flushConn(o.conn);
        }
        return;
      case 'discard':
        // These replies will never be sent: close their connections so the clients retry elsewhere.
        for (const o of this.takeOutputs(a.outputIds)) {
          this.counters.discards++;
          o.conn.socket.destroy();
        }
        return;
      case 'apply':
        for (const e of a.entries) this.service.applyEntry(e.payload);
        return;
      case 'installSnapshot': {
        const service = this.freshService();
        service.restore(a.data);
        this.service = service;
        return;
      }
      case 'takeSnapshot':
        this.input({ type: 'snapshot', index: this.replica.lastIndex, data: this.service.snapshot() });
        return;
      case 'role':
        this.counters.viewChanges++;
        if (a.role === 'halted') this.startOver(a.reason);
        else if (a.role !== 'primary') this.failWaiting();
        return;
      case 'log':
        this.log(a.level, a.event, a.fields);
        return;
    }
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

  /** Halted: discard the state and come back as an empty spare that may be recruited. */
  private startOver(reason: string): void {
    this.failWaiting();
    this.incarnation++;
    this.replica = createReplica(this.core, this.nowMs());
    this.service = this.freshService();
    this.log('warn', 'rejoin-as-spare', { reason, incarnation: this.incarnation });
    setImmediate(() => this.input({ type: 'start' }));
  }

  // ---- clients -----------------------------------------------------------------------------

  private acceptClient(socket: net.Socket): void {
    if (this.conns.size >= this.config.maxClientConnections) {
      socket.end(encodeReply({ kind: 'error', message: 'ERR max number of clients reached' }));
      return;
    }
    socket.setNoDelay(true);
    const conn = new ClientConn(socket, this.nextConnId++);
    this.conns.add(conn);
    socket.on('data', (chunk: Buffer) => {
      try {
        conn.parser.push(chunk);
        for (let cmd = conn.parser.next(); cmd !== null; cmd = conn.parser.next()) {
          if (conn.closed) return;
          this.counters.commands++;
          this.counters.opsThisSecond++;
          if (conn.waiting.length > 0 || this.outputFull(conn)) this.park(conn, cmd);
          else this.command(conn, cmd);
        }
      } catch (e) {
        if (!(e instanceof RespProtocolError)) throw e;
        this.counters.clientErrors++;
        this.log('warn', 'client-garbage', { client: conn.id, remote: socket.remoteAddress ?? '?', reason: e.message });
        socket.destroy();
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      conn.closed = true;
      this.conns.delete(conn);
      this.blocked.delete(conn);
    });
  }

  /** Run one client command, or park it if flow control is closed. */
  private command(conn: ClientConn, args: string[]): void {
    const name = (args[0] ?? '').toUpperCase();
    const meta = metaCommand(this, name, args);
    if (meta !== null) {
      const bytes = encodeReply(meta.reply);
      conn.slots.push({ bytes, close: meta.close === true });
      conn.slotBytes += bytes.length;
      this.flushConn(conn);
      return;
    }
    if (this.replica.role !== 'primary') {
      this.reply(conn, { kind: 'error', message: this.notPrimaryMessage() });
      return;
    }
    if (!this.flowOpen()) {
      this.park(conn, args);
      return;
    }
    let req: { clientId: string | null; seq: number; ackedBelow: number; command: KvCommand };
    if (name === EXEC_COMMAND) {
      const parsed = parseExec(args);
      if (typeof parsed === 'string') {
        this.reply(conn, { kind: 'error', message: parsed });
        return;
      }
      req = parsed;
    } else {
      req = { clientId: null, seq: 1, ackedBelow: 0, command: args };
    }
    const res = this.service.execute(req);
    if (res.entry !== null) this.input({ type: 'append', payload: res.entry });
    const slot: Slot = { bytes: encodeReply(res.reply), held: true };
    conn.slots.push(slot);
    conn.slotBytes += slot.bytes!.length;
    // The reply exists but stays in its slot, unwritten, until the output rule releases it.
    const outputId = this.nextOutputId++;
    this.outputs.set(outputId, { conn, slot });
    this.input({ type: 'hold', outputId, fresh: res.entry === null });
  }

  private reply(conn: ClientConn, reply: KvReply): void {
    const bytes = encodeReply(reply);
    conn.slots.push({ bytes });
    conn.slotBytes += bytes.length;
    this.flushConn(conn);
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

  notPrimaryMessage(): string {
    const v = this.replica.view;
    const primary = v.primary === null || v.primary === this.id ? null : this.config.nodes.find((n) => n.id === v.primary);
    if (primary) return `NOTPRIMARY the primary is ${primary.id} at ${formatAddress(primary.client)} (epoch ${v.epoch}); this node is ${this.replica.role}`;
    return `NOTPRIMARY no primary known to this node (it is ${this.replica.role}); try another node`;
  }

  /** Write the replies at the head of the connection's queue that are ready (released). */
  private flushConn(conn: ClientConn): void {
    if (conn.closed) return;
    this.dirty.add(conn);
    this.scheduleFlush();
  }

  /** Write every dirty connection's ready replies: one socket write per connection per turn. */
  private writeReplies(): void {
    for (const conn of this.dirty) this.writeReady(conn);
    this.dirty.clear();
    this.drainBlocked();
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
  }

  /**
   * May the primary take another command? The core bounds the unacked log (entries, bytes);
   * replies waiting for the output rule are bounded here too, since reads append nothing.
   */
  private flowOpen(): boolean {
    return canAppend(this.replica) && this.outputs.size < MAX_HELD_REPLIES;
  }

  /** Flow control reopened, or a client read its replies: run parked commands, in order, while there is room. */
  private drainBlocked(): void {
    if (this.blocked.size === 0) return;
    for (const conn of [...this.blocked]) {
      while (conn.waiting.length > 0 && !conn.closed && !this.outputFull(conn)) {
        // Only guest commands wait for the log; meta commands and errors need no room there.
        if (this.replica.role === 'primary' && !this.flowOpen()) break;
        this.command(conn, conn.waiting.shift()!);
      }
      if (conn.waiting.length === 0) {
        this.blocked.delete(conn);
        conn.socket.resume();
      }
    }
  }

  /** No longer primary: parked commands will never run here; close so clients go elsewhere. */
  private failWaiting(): void {
    for (const conn of [...this.blocked]) this.failWaitingConn(conn);
  }

  private failWaitingConn(conn: ClientConn): void {
    this.blocked.delete(conn);
    conn.waiting.length = 0;
    conn.socket.destroy();
  }

  // ---- admin: /status and /metrics ---------------------------------------------------------

  statusJson(): Record<string, unknown> {
    const s = coreStatus(this.replica);
    return {
      id: this.id,
      cluster: this.config.cluster,
      role: s.role,
      epoch: s.view.epoch,
      view: s.view,
      knownEpoch: s.knownEpoch,
      logIndex: s.lastIndex,
      ackedIndex: s.ackedIndex,
      appliedIndex: s.lastIndex, // followers apply entries as they arrive; the primary executes before appending
      lag: s.lagEntries,
      heldOutputs: s.heldOutputs,
      retainedEntries: s.retainedEntries,
      recruit: s.recruit,
      digest: this.service.digest(),
      rssBytes: process.memoryUsage.rss(),
      clients: this.conns.size,
      opsPerSec: this.counters.opsLastSecond,
      mode: this.config.service.mode,
      incarnation: this.incarnation,
      pid: process.pid,
    };
  }

  private metricsText(): string {
    const s = coreStatus(this.replica);
    const t = this.transport.stats;
    const c = this.counters;
    const lines: string[] = [];
    const metric = (name: string, type: 'gauge' | 'counter', help: string, value: number, labels = ''): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name}${labels} ${value}`);
    };
    lines.push('# HELP lockstep_role The replica\'s role (1 for the current one).', '# TYPE lockstep_role gauge');
    for (const role of ['booting', 'spare', 'backup', 'primary', 'halted']) lines.push(`lockstep_role{role="${role}"} ${s.role === role ? 1 : 0}`);
    metric('lockstep_epoch', 'gauge', 'Epoch of the view this replica acts in.', s.view.epoch);
    metric('lockstep_log_index', 'gauge', 'Highest log index held.', s.lastIndex);
    metric('lockstep_acked_index', 'gauge', 'Highest index the backup acked (primary).', s.ackedIndex);
    metric('lockstep_backup_lag_entries', 'gauge', 'Entries appended but not yet acked by the backup.', s.lagEntries);
    metric('lockstep_held_outputs', 'gauge', 'Replies held by the output rule.', s.heldOutputs);
    metric('lockstep_retained_bytes', 'gauge', 'Log bytes retained for followers (flow control).', s.retainedBytes);
    metric('lockstep_client_connections', 'gauge', 'Open client connections.', this.conns.size);
    metric('lockstep_client_commands_total', 'counter', 'Client commands received.', c.commands);
    metric('lockstep_released_outputs_total', 'counter', 'Replies released by the output rule.', c.releases);
    metric('lockstep_discarded_outputs_total', 'counter', 'Replies discarded when this node stopped being primary.', c.discards);
    metric('lockstep_client_protocol_errors_total', 'counter', 'Client connections closed for protocol garbage.', c.clientErrors);
    metric('lockstep_role_changes_total', 'counter', 'Role or view changes.', c.viewChanges);
    metric('lockstep_peer_frames_sent_total', 'counter', 'Logging-channel frames sent.', t.framesSent);
    metric('lockstep_peer_bytes_sent_total', 'counter', 'Logging-channel bytes sent.', t.bytesSent);
    metric('lockstep_peer_frames_received_total', 'counter', 'Logging-channel frames received.', t.framesReceived);
    metric('lockstep_peer_messages_dropped_total', 'counter', 'Messages dropped because the link was down or full.', t.dropped);
    metric('lockstep_peer_refused_total', 'counter', 'Peer connections refused or closed for garbage.', t.refused);
    return lines.join('\n') + '\n';
  }

  private serveAdmin(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(this.statusJson()) + '\n');
    } else if (req.method === 'GET' && path === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(this.metricsText());
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: try /status or /metrics\n');
    }
  }

  // ---- logs --------------------------------------------------------------------------------

  private log(level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void {
    this.logLine({ time: new Date().toISOString(), level, node: this.id, event, role: this.replica.role, epoch: this.replica.view.epoch, ...fields });
  }
}

function listenOn(server: net.Server, addr: NodeAddress): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
