// One replica process: the pure core driven by real I/O (DESIGN.md §4).
//
// This is the third driver of the core, beside the simulator and the scenario harness. It
// owns what the core must not: the clock (performance.now, made monotonic), timers, the
// logging channel over TCP (PeerTransport), the arbiter (a file directory by default) and the
// admin port. The service and how clients reach it belong to a front (front.ts): the kv
// machine behind a RESP2 port (kv-front.ts) or a WebAssembly guest (wasm-front.ts). Every
// completed piece of I/O comes back into the core as an Input through `input()`; every
// Action the core returns is carried out in `act()`, in order.
//
// Start, in order: read the arbiter's identity (wait while the arbiter does not answer; refuse
// to start, exit 2, if it was never initialized), probe it, open the ports, then survey the
// peers before the core's first step: wait (at most PEER_SURVEY_MS) until every peer has either
// answered the handshake or is found down. A peer on another arbiter refuses the start
// (E_ARBITER_MISMATCH, exit 2): two arbiters would each let a node bootstrap as primary.

import http from 'node:http';
import { getHeapStatistics } from 'node:v8';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import {
  ChunkAssembler,
  DEFAULT_SNAPSHOT_CHUNK_BYTES,
  NO_VIEW,
  formatView,
  isBackupIn,
  createReplica,
  snapshotChunksWanted,
  status as coreStatus,
  step,
  type Action,
  type CoreConfig,
  type Input,
  type Replica,
  type SwitchoverCode,
  type View,
} from '../core/index.js';
import { openArbiter } from '../arbiter/open.js';
import { isNotInitialized, type Arbiter, type ArbiterIdentity } from '../arbiter/types.js';
import { LockstepError, isLockstepError } from '../errors.js';
import { PeerTransport } from '../net/peer-transport.js';
import { TIMING_ON, timing } from '../net/timing.js';
import { PROTOCOL_VERSION, PROTOCOL_VERSION_MIN } from '../net/peer-codec.js';
import { arbiterFor, checkHeapFits, coreConfigFor, formatAddress, isLoopbackHost, nodeOf, type ClusterConfig } from './config.js';
import type { FrontHost, LogFields, ServiceFront } from './front.js';
import { wholeSnapshotStream, type RestoreStream, type SnapshotStream } from '../guest/snapshot-stream.js';
import { KvFront } from './kv-front.js';
import { ModuleFront } from './module-front.js';
import { WasmFront } from './wasm-front.js';
import { explainListen, listenOn } from './listen.js';
import { serveAdmin, type AdminHost } from './admin.js';
import { NodeMetrics } from './metrics.js';
import type { ViewRecord } from '../arbiter/types.js';
import { DurableStore, type Recovered } from './durable.js';
import type { Entry, PeerMessage } from '../core/types.js';

export type LogRecord = Record<string, unknown>;

/** A primary streaming a snapshot spends at most this long of an event-loop turn producing chunks. */
const PUMP_SLICE_MS = 4;
/** An event-loop turn this late (the longest in a second) is logged as event-loop-stall. */
const STALL_LOG_MS = 100;
const PEER_MAX_FRAME_BYTES = 512 * 1024 * 1024;
const PEER_MAX_QUEUED_BYTES = 256 * 1024 * 1024;
/** How often /status's arbiter health is refreshed by a read when nothing else asked it. */
const ARBITER_HEALTH_MS = 2000;
/** How often a node that cannot read its arbiter's identity at start asks again. */
const IDENTITY_RETRY_MS = 1000;
/**
 * The longest a starting node waits for its peers to answer or be found down before its first
 * step. A down peer is found at once (connection refused); a peer's redial backoff is at most 1 s.
 */
const PEER_SURVEY_MS = 2500;

/** How long POST /api/switchover waits for the new primary to be live after the test-and-set landed. */
const SWITCHOVER_LIVE_WAIT_MS = 3000;

/** The answer to a switchover asked of this node (POST /api/switchover, SENTINEL FAILOVER). */
export interface SwitchoverReport {
  readonly ok: boolean;
  /** done: the roles swapped; refused: nothing changed; aborted: begun, then given up (the message says why). */
  readonly outcome: 'done' | 'refused' | 'aborted' | 'timeout';
  readonly code: SwitchoverCode | 'E_NOT_IMPLEMENTED' | 'E_UNKNOWN_NODE' | null;
  readonly message: string;
  readonly view: View;
  /** From the request to the test-and-set's answer (done) or the refusal/abort. */
  readonly ms: number;
  /** done: the new primary sent its first frame to this node (it is live) within SWITCHOVER_LIVE_WAIT_MS. */
  readonly newPrimaryLive?: boolean;
  /** done: from the request until that first frame. */
  readonly liveMs?: number;
}

type SwitchoverAction = Extract<Action, { type: 'switchover' }>;

/** What /status says about the arbiter: which one, whether its last answer came, how fast. */
export interface ArbiterHealth {
  readonly arbiter: string;
  health: 'unknown' | 'ok' | 'unavailable';
  /** Milliseconds the last answered call took (null: none answered yet). */
  lastLatencyMs: number | null;
  /** Wall-clock time of the last call's end, answered or failed. */
  lastAt: string | null;
  /** Why the last call failed (null after an answer). */
  lastError: string | null;
}

export class ReplicaNode implements FrontHost, AdminHost {
  private replicaState: Replica;
  private readonly front: ServiceFront;
  private readonly core: CoreConfig;
  private readonly transport: PeerTransport;
  private readonly arbiter: Arbiter;
  /** Read at start, before anything opens; carried in every peer handshake. */
  private arbiterIdentity: ArbiterIdentity | null = null;
  /** Peers seen on another arbiter: id -> their arbiter's id. */
  readonly arbiterMismatches = new Map<string, string>();
  readonly arbiterHealth: ArbiterHealth;
  private arbiterHealthTimer: NodeJS.Timeout | null = null;
  private arbiterCallsInFlight = 0;
  /** The newest view read from the arbiter (see knownView). */
  private arbiterView: View = NO_VIEW;
  private lastArbiterCallMs = -Infinity;
  private adminServer: http.Server | null = null;
  private tickTimer: NodeJS.Timeout | null = null;
  private metricsTimer: NodeJS.Timeout | null = null;
  readonly metrics: NodeMetrics;
  private flushScheduled = false;
  private lastNowMs = 0;
  /** Bumped when this replica halts and starts over as an empty spare. */
  private incarnation = 0;
  /** A recruit's snapshot chunks, until the last one (for a front that restores a whole snapshot). */
  private readonly chunks = new ChunkAssembler();
  /** A recruit's snapshot being restored piece by piece (a front with restoreStream). */
  private restoring: RestoreStream | null = null;
  /** Primary: the snapshot stream being fed to the core, and the piece read ahead of it. */
  private producing: { readonly index: number; readonly stream: SnapshotStream; ahead: Uint8Array | null } | null = null;
  private pumpScheduled = false;
  private stopped = false;
  readonly counters = { viewChanges: 0 };
  /** The switchover request being stepped now (its refusal or start comes back at once). */
  private switchAsking: ((a: SwitchoverAction) => void) | null = null;
  /** The switchover under way in the core: its done or aborted comes later. */
  private switchActive: ((a: SwitchoverAction) => void) | null = null;
  /** The core's immediate answer (started or refused) to the last switchover asked. */
  private switchFirst: SwitchoverAction | null = null;
  /** How late timers ran (each second's longest is checked, then reset), and the longest since start. */
  private readonly loopDelay = monitorEventLoopDelay({ resolution: 10 });
  private loopDelayMaxMs = 0;
  /** Durable mode: this node's dataDir (null: in memory). */
  private readonly store: DurableStore | null;
  /** Durable mode: acks waiting for the commit (fsync) of what they ack, at the end of this turn. */
  private deferredSends: { readonly to: string; readonly msg: PeerMessage }[] = [];
  /** Durable mode: the logTerm meta.json last said (written again when the core's changes). */
  private metaLogTerm = 0;
  /** Durable mode: releases waiting for the commit of the entries the outputs depend on. */
  private deferredReleases: (readonly number[])[] = [];
  /** Durable mode: the compaction under way (a snapshot of the service at `index` being written). */
  private compacting: { readonly index: number; readonly stream: SnapshotStream; readonly startedMs: number; bytes: number; readonly logBytes: number } | null = null;

  constructor(
    readonly config: ClusterConfig,
    readonly id: string,
    private readonly logLine: (rec: LogRecord) => void,
    private readonly exit: (code: number) => void = (code) => process.exit(code),
  ) {
    nodeOf(config, id);
    this.core = coreConfigFor(config, id);
    this.replicaState = createReplica(this.core, this.nowMs());
    this.front = config.service.kind === 'kv' ? new KvFront(this)
      : config.service.kind === 'module' ? new ModuleFront(this, config.service)
      : new WasmFront(this, config.service);
    const arb = arbiterFor(config, id);
    this.arbiter = openArbiter(arb.spec, arb.options);
    this.arbiterHealth = { arbiter: this.arbiter.description, health: 'unknown', lastLatencyMs: null, lastAt: null, lastError: null };
    const self = nodeOf(config, id);
    this.transport = new PeerTransport({
      cluster: config.cluster,
      self: id,
      listen: self.peerListen,
      peers: new Map(config.nodes.filter((n) => n.id !== id).map((n) => [n.id, n.peer])),
      maxFrameBytes: PEER_MAX_FRAME_BYTES,
      maxQueuedBytes: PEER_MAX_QUEUED_BYTES,
      epoch: () => this.replicaState.view.epoch,
      secret: config.secret,
      tls: config.peerTls,
      arbiterId: () => {
        if (this.arbiterIdentity === null) throw new Error('lockstep invariant broken: a handshake before the arbiter identity was read');
        return this.arbiterIdentity.id;
      },
      onArbiterMismatch: (peer, theirs) => this.arbiterMismatches.set(peer, theirs),
      onMessage: (from, msg) => this.input({ type: 'message', from, msg }),
      log: (level, event, fields) => this.log(level, event, fields),
    });
    this.metrics = new NodeMetrics({ currentRole: () => this.replicaState.role, gauges: (metric) => this.scrapedMetrics(metric) });
    this.store = config.durable ? new DurableStore(self.dataDir!) : null;
  }

  get replica(): Replica {
    return this.replicaState;
  }

  /**
   * The newest view this node knows of: its own, or a newer one it read from the arbiter (a
   * spare's own view stays empty until it is recruited). Advice for redirecting clients only:
   * nothing decides on it.
   */
  get knownView(): View {
    const own = this.replicaState.view;
    return this.arbiterView.epoch > own.epoch ? this.arbiterView : own;
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  async start(): Promise<void> {
    const self = nodeOf(this.config, this.id);
    checkHeapFits(this.config, getHeapStatistics().heap_size_limit);
    // Durable mode: the disk is checked before anything else; a damaged file refuses the start.
    let onDisk: Recovered | null = null;
    if (this.store !== null) {
      try {
        this.store.lock();
        onDisk = this.store.open();
      } catch (e) {
        await this.arbiter.close();
        throw e;
      }
      for (const w of onDisk.warnings) this.log('warn', 'durable-repaired', { reason: w });
    }
    try {
      this.arbiterIdentity = await this.readIdentity();
    } catch (e) {
      await this.arbiter.close();
      throw e;
    }
    // What waiting cannot fix (a refused user, another cluster's view) stops the start here,
    // before any port opens; an arbiter that does not answer is only waited for.
    try {
      await this.askArbiter(() => this.arbiter.probe());
    } catch (e) {
      if (!isLockstepError(e) || e.code !== 'E_ARBITER_UNAVAILABLE') {
        await this.arbiter.close();
        throw e;
      }
      this.log('warn', 'arbiter-unavailable', { reason: e.message, waitingFor: 'the arbiter to answer; starting anyway, this node cannot go live until it does' });
    }
    const recovered = onDisk === null ? undefined : await this.recoverDurable(onDisk);
    await explainListen('peer', self.peerListen, () => this.transport.start());
    await this.front.start();
    const admin = http.createServer((req, res) => serveAdmin(this, req, res));
    this.adminServer = admin;
    await explainListen('admin', self.admin, () => listenOn(admin, self.admin, (e) => this.log('warn', 'admin-server-error', { reason: e.code ?? e.message })));
    await this.surveyPeers();
    const tickMs = Math.max(1, Math.floor(this.config.heartbeatMs / 5));
    this.tickTimer = setInterval(() => this.input({ type: 'tick' }), tickMs);
    this.arbiterHealthTimer = setInterval(() => this.checkArbiterHealth(), ARBITER_HEALTH_MS);
    this.loopDelay.enable();
    this.metricsTimer = setInterval(() => {
      this.metrics.tick();
      this.checkLoopDelay();
    }, 1000);
    this.log('info', 'node-start', {
      cluster: this.config.cluster,
      peer: formatAddress(self.peer),
      client: self.client === null ? null : formatAddress(self.client),
      admin: formatAddress(self.admin),
      service: this.config.service.kind,
      mode: this.config.service.kind === 'wasm' ? 'record-replay' : this.config.service.mode,
      arbiter: this.arbiter.description,
      arbiterId: this.arbiterIdentity.id,
      peerAuth: this.config.secret !== null,
      peerTls: this.config.peerTls !== null,
      durable: this.store === null ? null : this.store.dir,
    });
    const client = self.client;
    if (this.config.service.kind !== 'wasm' && client !== null && !isLoopbackHost(client.host) && this.config.requirePass === null && this.config.clientTls === null) {
      this.log('warn', 'client-security-off', {
        reason: `the client port ${formatAddress(client)} is beyond loopback with neither requirePassFile nor clientTls: anyone who reaches it can read and write every key, and read the traffic`,
      });
    }
    if (this.config.secret === null && this.config.peerTls === null) {
      this.log('warn', 'peer-auth-off', { reason: 'neither secretFile nor peerTls in the config: any process that can reach the peer port and knows a node id can send this node protocol messages' });
    }
    if (this.config.peerTls === null && !isLoopbackHost(self.peerListen.host)) {
      this.log('warn', 'peer-tls-off', {
        reason: `the peer port ${formatAddress(self.peerListen)} is beyond loopback without peerTls: anyone who can read that network reads the replicated state`,
      });
    }
    this.input({ type: 'start', ...recovered });
  }

  /**
   * Durable mode, at start: what of the disk this node may use. Only a node the arbiter's current
   * view names (primary or backup) holds every entry whose output was ever released (a backup
   * acked only what it had fsync'd; a primary released only what it had fsync'd): it restores its
   * service from the disk and waits as a backup (the core's `recovered` start). Any other node's
   * disk may be stale (it was dropped from the view, or never in it): it restores it too and
   * joins as a spare that says what it holds (the core's `kept` start), so the primary sends only
   * what it lacks when its log has that prefix, and a snapshot (which replaces the disk)
   * otherwise. A disk whose log term is unknown (written by a release before it) is discarded,
   * logged, and the node joins as an empty spare.
   */
  private async recoverDurable(disk: Recovered): Promise<Pick<Extract<Input, { type: 'start' }>, 'recovered' | 'kept'>> {
    const store = this.store!;
    const identity = this.arbiterIdentity!;
    const meta = disk.meta;
    if (meta !== null && (meta.cluster !== this.config.cluster || meta.node !== this.id)) {
      throw new LockstepError('E_CONFIG_INVALID', `the dataDir ${store.dir} holds node ${meta.node} of cluster ${meta.cluster}, this is node ${this.id} of cluster ${this.config.cluster}: every node needs its own dataDir; check nodes[].dataDir in the config`);
    }
    if (meta !== null && meta.arbiterId !== null && meta.arbiterId !== identity.id) {
      throw new LockstepError('E_ARBITER_MISMATCH', `the dataDir ${store.dir} was written under arbiter ${meta.arbiterId}, this node uses arbiter ${identity.id} at ${this.arbiter.description}: the arbiter was initialized again or the config names another one, so the views this disk was acked under are gone. Point the config at the old arbiter, or move ${store.dir} away to start this node empty`);
    }
    let view: View = NO_VIEW;
    for (let attempt = 1; ; attempt++) {
      try {
        view = await this.askArbiter(() => this.arbiter.current());
        this.sawView(view);
        break;
      } catch (e) {
        if (!isLockstepError(e) || e.code !== 'E_ARBITER_UNAVAILABLE' || this.stopped) throw e;
        this.log('warn', 'arbiter-unavailable', { reason: e.message, attempt, waitingFor: 'the arbiter\'s view: a durable node decides what of its disk it may use from it' });
        await new Promise((r) => setTimeout(r, IDENTITY_RETRY_MS));
      }
    }
    const named = view.epoch > 0 && (view.primary === this.id || isBackupIn(view, this.id));
    const logTerm = meta?.logTerm ?? 0;
    const kept = !named && meta !== null && disk.lastIndex > 0 && logTerm > 0 && view.epoch > 0;
    const writeMeta = (v: View): void => store.writeMeta({ format: 1, cluster: this.config.cluster, node: this.id, arbiterId: identity.id, view: v, logTerm: named || kept ? logTerm : 0 });
    if ((named || kept) && meta !== null) {
      const started = performance.now();
      if (disk.snapshotPieces.length > 0) {
        if (this.front.restoreStream) {
          const r = this.front.restoreStream();
          for (const p of disk.snapshotPieces) r.add(p);
          r.finish();
        } else {
          this.front.installSnapshot(disk.snapshotIndex, Buffer.concat(disk.snapshotPieces.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength))));
        }
      }
      for (let i = 0; i < disk.entries.length; i += 1024) this.front.apply(disk.entries.slice(i, i + 1024));
      writeMeta(view);
      this.metaLogTerm = logTerm;
      this.log('info', named ? 'durable-recovered' : 'durable-kept', {
        dataDir: store.dir, snapshotIndex: disk.snapshotIndex, entries: disk.entries.length, lastIndex: disk.lastIndex, logTerm,
        view: formatView(view), ms: Math.round(performance.now() - started),
        ...(kept ? { reason: `the arbiter's view does not name this node, so its disk may be behind: it joins as a spare holding entries 1..${disk.lastIndex} of the log of term ${logTerm}, and the primary sends it what it lacks, or a snapshot` } : {}),
      });
      return named ? { recovered: { index: disk.lastIndex, view, logTerm, tail: disk.entries } } : { kept: { index: disk.lastIndex, logTerm } };
    }
    if (meta !== null && disk.lastIndex > 0) {
      this.log('warn', 'durable-discarded', {
        dataDir: store.dir, lastIndex: disk.lastIndex,
        reason: `the arbiter's view ${formatView(view)} does not name this node and its disk does not say which log its entries are of (written by an older release), so it may be stale; it joins as an empty spare and is recruited from the primary`,
      });
    } else if (named) {
      this.log('warn', 'durable-empty', { dataDir: store.dir, reason: 'the view names this node but its dataDir holds nothing (a new or emptied directory): it joins as an empty spare' });
    }
    store.reset(0, []);
    writeMeta(view);
    return {};
  }

  /**
   * Durable mode, at the end of an event-loop turn: write and fsync what was appended (one
   * fdatasync for every entry of every frame since the last commit: group commit), off the
   * event loop, then let out what waited for it: the acks to the primary, the released replies.
   * One commit at a time: what comes while one is under way waits for the next, which starts
   * when it ends. Nothing to write and none under way: what waited goes out at once (every
   * entry appended is on disk).
   */
  private commitDurable(): void {
    const store = this.store;
    if (store === null || store.committing || this.stopped) return;
    const sends = this.deferredSends;
    const releases = this.deferredReleases;
    this.deferredSends = [];
    this.deferredReleases = [];
    const incarnation = this.incarnation;
    let started: boolean;
    try {
      started = store.commitAsync((err) => this.durableCommitted(err, incarnation, sends, releases));
    } catch (e) {
      return this.durableFailed(e);
    }
    if (!started) {
      this.letOut(sends, releases);
      this.maybeCompact();
    }
  }

  /** A commit ended: what waited for it goes out, and the next one starts with what came meanwhile. */
  private durableCommitted(err: LockstepError | null, incarnation: number, sends: readonly { readonly to: string; readonly msg: PeerMessage }[], releases: readonly (readonly number[])[]): void {
    if (this.stopped) return;
    if (err !== null) return this.durableFailed(err);
    // Halted meanwhile (startOver): this incarnation's acks and replies are dropped, never sent.
    if (incarnation === this.incarnation) this.letOut(sends, releases);
    this.maybeCompact();
    this.commitDurable();
    if (this.stopped) return;
    this.transport.flush();
    this.front.afterFlush();
  }

  private letOut(sends: readonly { readonly to: string; readonly msg: PeerMessage }[], releases: readonly (readonly number[])[]): void {
    for (const m of sends) this.transport.send(m.to, m.msg);
    for (const ids of releases) this.front.release(ids);
  }

  /** Durable mode: meta.json with this view and the log term the disk's entries belong to. */
  private writeDurableMeta(view: View): void {
    const logTerm = this.replicaState.logTerm;
    this.store!.writeMeta({ format: 1, cluster: this.config.cluster, node: this.id, arbiterId: this.arbiterIdentity?.id ?? null, view, logTerm });
    this.metaLogTerm = logTerm;
  }

  /** A disk error: fail-stop. Nothing waiting for the disk goes out. */
  private durableFailed(e: unknown): void {
    this.deferredSends = [];
    this.deferredReleases = [];
    if (isLockstepError(e)) this.failStop(`${e.code}: ${e.message}`);
    else throw e;
  }

  /** Run a store call; an I/O failure is fail-stop. */
  private durably(call: (store: DurableStore) => void): void {
    if (this.store === null || this.stopped) return;
    try {
      call(this.store);
    } catch (e) {
      this.durableFailed(e);
    }
  }

  /**
   * Compaction: past durableCompactBytes of log, snapshot the service and delete the log behind
   * it. The snapshot is a stream begun now (consistent at the last index; the service goes on),
   * written a slice of an event-loop turn at a time (pumpCompaction), so a big state does not
   * stall the node past its peers' failure timeout.
   */
  private maybeCompact(): void {
    const store = this.store;
    const r = this.replicaState;
    if (store === null || this.compacting !== null || store.committing || store.logBytesSinceSnapshot < this.config.durableCompactBytes) return;
    if ((r.role !== 'primary' && r.role !== 'backup') || this.restoring !== null || store.index !== r.lastIndex) return;
    // A backup's guest is behind its log (it applies up to the commit index): its state is the
    // snapshot of store.index only once it applied every entry it holds.
    if (r.role === 'backup' && r.appliedIndex !== r.lastIndex) return;
    if (this.front.brokenReason?.() != null) return;
    const logBytes = store.logBytesSinceSnapshot;
    let index = -1;
    this.durably((s) => (index = s.beginCompaction()));
    if (index < 0) return;
    const stream = this.front.snapshotStream ? this.front.snapshotStream() : wholeSnapshotStream(this.front.takeSnapshot());
    this.compacting = { index, stream, startedMs: performance.now(), bytes: 0, logBytes };
    this.scheduleCompaction();
  }

  private scheduleCompaction(): void {
    setImmediate(() => this.pumpCompaction());
  }

  private pumpCompaction(): void {
    const c = this.compacting;
    if (c === null || this.stopped) return;
    const r = this.replicaState;
    if (r.role !== 'primary' && r.role !== 'backup') return this.abortCompaction('this node is no longer primary or backup');
    const until = performance.now() + PUMP_SLICE_MS;
    for (;;) {
      const piece = c.stream.next(this.chunkBytes());
      if (piece === null) break;
      c.bytes += piece.length;
      this.durably((s) => s.compactionPiece(piece));
      if (this.stopped) return;
      if (performance.now() >= until) return this.scheduleCompaction();
    }
    this.compacting = null;
    this.durably((s) => s.finishCompaction());
    if (this.stopped) return;
    this.log('info', 'durable-snapshot', { index: c.index, bytes: c.bytes, logBytesDeleted: c.logBytes, ms: Math.round(performance.now() - c.startedMs) });
  }

  private abortCompaction(reason: string): void {
    const c = this.compacting;
    if (c === null) return;
    this.compacting = null;
    c.stream.close();
    this.store?.abortCompaction();
    this.log('info', 'durable-snapshot-dropped', { index: c.index, reason });
  }

  /**
   * The arbiter's identity. The node goes no further until it has it: an arbiter that does not
   * answer is waited for (logged each time); one never initialized, or another cluster's, or
   * refusing our credentials, is thrown (the start fails, exit 2).
   */
  private async readIdentity(): Promise<ArbiterIdentity> {
    for (let attempt = 1; ; attempt++) {
      try {
        const identity = await this.askArbiter(() => this.arbiter.identity());
        this.log('info', 'arbiter-identity', { arbiter: this.arbiter.description, arbiterId: identity.id, createdAt: identity.createdAt });
        return identity;
      } catch (e) {
        if (isNotInitialized(e) || !isLockstepError(e) || e.code !== 'E_ARBITER_UNAVAILABLE' || this.stopped) throw e;
        this.log('warn', 'arbiter-unavailable', { reason: e.message, attempt, waitingFor: `the arbiter's identity; this node opens no port and takes no step until it can read it (asking again every ${IDENTITY_RETRY_MS} ms)` });
        await new Promise((r) => setTimeout(r, IDENTITY_RETRY_MS));
      }
    }
  }

  /**
   * Before the first step: wait until every peer has answered the handshake or is found down
   * (bounded), and refuse to start if any is on another arbiter.
   */
  private async surveyPeers(): Promise<void> {
    const peers = this.config.nodes.map((n) => n.id).filter((id) => id !== this.id);
    const startedMs = performance.now();
    for (;;) {
      if (this.arbiterMismatches.size > 0) {
        const [peer, theirs] = [...this.arbiterMismatches][0]!;
        throw new LockstepError(
          'E_ARBITER_MISMATCH',
          `peer ${peer} uses arbiter ${theirs}, this node (${this.id}) uses arbiter ${this.arbiterIdentity!.id} at ${this.arbiter.description}: two arbiters: split brain risk, check the arbiter path in every node's config (a relative file: path resolves against the config file's directory) and run lockstep init once per cluster`,
        );
      }
      const unknown = peers.filter((p) => !this.transport.isConnected(p) && !this.transport.isUnreachable(p));
      const waitedMs = performance.now() - startedMs;
      if (unknown.length === 0 || waitedMs >= PEER_SURVEY_MS || this.stopped) {
        if (unknown.length > 0) this.log('info', 'peer-survey-incomplete', { unanswered: unknown, waitedMs: Math.round(waitedMs) });
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.arbiterHealthTimer) clearInterval(this.arbiterHealthTimer);
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    this.loopDelay.disable();
    await this.front.stop();
    await this.arbiter.close();
    await this.transport.close();
    this.store?.close();
    const admin = this.adminServer;
    if (admin) {
      const closed = new Promise<void>((resolve) => admin.close(() => resolve()));
      // A /status poller's keep-alive connection, mid-request when close() began, would hold the
      // stop open (seen: a node refusing to start never exited while a test polled it).
      admin.closeAllConnections();
      await closed;
    }
    this.log('info', 'node-stop', {});
  }

  /**
   * The longest event-loop delay of the last second: logged when it is a stall (a big
   * snapshot taken in one turn, a GC pause, a long command), kept for /status.
   */
  private checkLoopDelay(): void {
    const ms = this.loopDelay.max / 1e6;
    this.loopDelay.reset();
    this.loopDelayMaxMs = Math.max(this.loopDelayMaxMs, ms);
    if (ms >= STALL_LOG_MS) this.log('info', 'event-loop-stall', { maxMs: Math.round(ms) });
  }

  /** The service failed in a way this replica cannot carry on from: stop, and exit non-zero. */
  failStop(reason: string): void {
    if (this.stopped) return;
    this.log('warn', 'fail-stop', { reason });
    void this.stop().finally(() => this.exit(3));
  }

  // ---- the core loop -----------------------------------------------------------------------

  private nowMs(): number {
    this.lastNowMs = Math.max(this.lastNowMs, performance.now());
    return this.lastNowMs;
  }

  /** Feed the core one input and carry out what it asks. */
  input(input: Input): void {
    if (this.stopped) return;
    if (input.type === 'message') this.metrics.received(input.from, input.msg);
    const actions = step(this.replicaState, input, this.nowMs());
    if (input.type === 'append' && this.store !== null) {
      // The primary's own log: on disk (committed at the end of this turn) before any reply it depends on goes out.
      const entry: Entry = { index: this.replicaState.lastIndex, payload: input.payload };
      this.durably((s) => s.append([entry], this.replicaState.view.epoch));
    }
    for (const a of actions) this.act(a);
    if (input.type === 'message' || input.type === 'arbiterResult' || input.type === 'tick') this.front.flowMayHaveOpened();
    if (this.producing !== null && input.type !== 'snapshotChunk') this.schedulePump();
    this.scheduleFlush();
  }

  /**
   * At the end of this event-loop turn: write the outputs released in it and send pending
   * frames. In memory mode the replies go first: a frame's write can hand this CPU to the
   * backup it wakes, and replies already acked need not wait behind that (bench/README.md,
   * "On a quiet machine": +2% over 180 paired cells). Durable mode: frames, the fsync, then replies.
   */
  scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      if (this.stopped) return;
      for (const a of step(this.replicaState, { type: 'flush' }, this.nowMs())) this.act(a);
      // Commands afterFlush lets in (a client unblocked by flow control) schedule the next
      // turn's flush, which frames their entries.
      if (this.store === null) {
        this.front.afterFlush();
        this.transport.flush();
        return;
      }
      this.transport.flush();
      // Durable mode: the frames are on their way while this node fsyncs its own log; then the
      // acks and the replies that waited for that fsync go out.
      this.commitDurable();
      if (this.stopped) return;
      this.transport.flush();
      this.front.afterFlush();
    });
  }

  private act(a: Action): void {
    switch (a.type) {
      case 'send':
        this.metrics.sent(a.to, a.msg);
        // Durable mode: an ack says "I hold it", so it waits for the fsync at the end of this turn.
        if (this.store !== null && (a.msg.type === 'ack' || a.msg.type === 'chunkAck')) {
          // The disk's entries became a prefix of another log (a new primary's): say so before the ack.
          if (this.replicaState.logTerm !== this.metaLogTerm) this.durably(() => this.writeDurableMeta(this.replicaState.view));
          this.deferredSends.push({ to: a.to, msg: a.msg });
        }
        else this.transport.send(a.to, a.msg);
        return;
      case 'arbiterCas': {
        const broken = this.front.brokenReason?.() ?? null;
        if (broken !== null && a.next.backups.length < a.expected.backups.length && a.next.primary === a.expected.primary) {
          // Its backup went silent before it took the quarantine: stop now, leaving the view to
          // the backup (which holds the state as it was before the command), not drop it.
          return this.failStop(`${broken}; the backup went silent before it had the command's quarantine, so this node stops now rather than drop it`);
        }
        const incarnation = this.incarnation;
        this.askArbiter(() => this.arbiter.compareAndSet(a.expected, a.next)).then(
          (res) => {
            this.sawView(res.view);
            if (incarnation === this.incarnation) this.input({ type: 'arbiterResult', requestId: a.requestId, ok: res.ok, view: res.view });
          },
          (e: unknown) => {
            if (incarnation === this.incarnation) this.input({ type: 'arbiterFailed', requestId: a.requestId, reason: (e as Error).message });
          },
        );
        return;
      }
      case 'arbiterRead': {
        // A peer said a newer epoch exists: the core asks what the arbiter holds before it
        // believes it. Unanswered, it keeps its state and asks again (arbiterRetryMs).
        const incarnation = this.incarnation;
        this.askArbiter(() => this.arbiter.current()).then(
          (view) => {
            this.sawView(view);
            if (incarnation === this.incarnation) this.input({ type: 'arbiterView', requestId: a.requestId, view });
          },
          (e: unknown) => {
            if (incarnation === this.incarnation) this.input({ type: 'arbiterFailed', requestId: a.requestId, reason: (e as Error).message });
          },
        );
        return;
      }
      case 'release':
        // Durable mode: a reply goes out only once this node's own log holds what it depends on.
        if (this.store !== null) this.deferredReleases.push(a.outputIds);
        else this.front.release(a.outputIds);
        return;
      case 'discard':
        this.front.discard(a.outputIds, a.reason);
        return;
      case 'receive':
        // Durable mode: held entries go to the log now; the acks after them wait for its fsync.
        this.durably((s) => s.append(a.entries, this.replicaState.view.epoch));
        return;
      case 'apply':
        this.front.apply(a.entries);
        return;
      case 'restoreChunk': {
        // Durable mode: the snapshot goes to disk as it comes; at the last chunk it is fsync'd and
        // replaces what the disk held, before the chunk's ack goes out.
        this.durably((s) => s.snapshotPiece(a.index, a.chunk, a.data, a.last));
        if (this.front.restoreStream) {
          if (a.chunk === 0) this.restoring = this.front.restoreStream();
          const r = this.restoring;
          if (r === null) throw new Error(`snapshot chunk ${a.chunk} at ${a.index} with no restore under way`);
          r.add(a.data);
          if (a.last) {
            this.restoring = null;
            r.finish();
          }
          return;
        }
        const whole = this.chunks.add(a);
        if (whole !== null) this.front.installSnapshot(a.index, whole);
        return;
      }
      case 'takeSnapshot':
        if (this.front.snapshotStream) {
          // Begun now, before any other input: consistent at the last index appended.
          this.producing?.stream.close();
          const stream = this.front.snapshotStream();
          this.producing = { index: this.replicaState.lastIndex, stream, ahead: stream.next(this.chunkBytes()) };
          this.schedulePump();
          return;
        }
        this.input({ type: 'snapshot', index: this.replicaState.lastIndex, data: this.front.takeSnapshot() });
        return;
      case 'role':
        this.counters.viewChanges++;
        this.metrics.role(a.role);
        if (a.role === 'primary' || a.role === 'backup') {
          this.durably(() => this.writeDurableMeta(a.view));
        }
        if (a.role === 'halted') this.startOver(a.reason);
        else this.front.role(a.role, a.view, a.reason);
        return;
      case 'log':
        this.log(a.level, a.event, a.fields);
        return;
      case 'switchover': {
        if (this.switchAsking !== null) this.switchFirst = a;
        if (a.outcome === 'started') {
          this.switchActive = this.switchAsking;
          return;
        }
        const to = this.switchAsking ?? this.switchActive;
        if (a.outcome !== 'refused' || this.switchAsking === null) this.switchActive = null;
        to?.(a);
        return;
      }
    }
  }

  /**
   * SENTINEL FAILOVER on the client port: begin a switchover and say at once whether it began
   * (as Redis Sentinel answers +OK and fails over in the background). The outcome is logged.
   */
  beginSwitchover(to: string | null): { readonly started: boolean; readonly code: string | null; readonly message: string } {
    const done = this.switchover(to);
    void done.then((r) => {
      if (r.outcome !== 'refused') this.log(r.ok ? 'info' : 'warn', 'sentinel-failover', { outcome: r.outcome, code: r.code, message: r.message, ms: r.ms });
    });
    const first = this.switchFirst;
    if (first === null) return { started: false, code: 'E_SWITCHOVER_ABORTED', message: 'the switchover could not be asked (this node is stopping)' };
    return { started: first.outcome === 'started', code: first.code, message: first.reason };
  }

  /**
   * Hand the primary role to the backup (issue 11 item 1): the core parks new commands, waits
   * for the backup to catch up, swaps the roles with one test-and-set; then this waits (up to
   * SWITCHOVER_LIVE_WAIT_MS) for the new primary's first frame. Never throws: every outcome is
   * a report with a stable code.
   */
  switchover(to: string | null): Promise<SwitchoverReport> {
    const startedMs = performance.now();
    const view = (): View => this.replicaState.view;
    const since = (): number => Math.round((performance.now() - startedMs) * 10) / 10;
    if (this.config.service.kind === 'wasm') {
      return Promise.resolve({ ok: false, outcome: 'refused', code: 'E_NOT_IMPLEMENTED', view: view(), ms: 0,
        message: 'a switchover of a WebAssembly guest is not built: the primary runs the guest live and cannot turn into a replayer of the new primary\'s records; stop the primary (kill it) for a failover instead' });
    }
    const broken = this.front.brokenReason?.() ?? null;
    if (broken !== null) {
      // Its state is not the log's: as a backup it would diverge. It stops once its backup has the quarantine.
      return Promise.resolve({ ok: false, outcome: 'refused', code: 'E_SWITCHOVER_ABORTED', view: view(), ms: 0, message: `this primary's service broke and it is stopping, so it cannot become a backup: ${broken.slice(0, 300)}` });
    }
    if (to !== null && !this.config.nodes.some((n) => n.id === to)) {
      return Promise.resolve({ ok: false, outcome: 'refused', code: 'E_UNKNOWN_NODE', view: view(), ms: 0, message: `no node ${JSON.stringify(to)} in cluster ${this.config.cluster}` });
    }
    return new Promise((resolve) => {
      const answer = (a: SwitchoverAction): void => {
        const ms = since();
        if (a.outcome !== 'done') {
          resolve({ ok: false, outcome: a.outcome === 'started' ? 'timeout' : a.outcome, code: a.code, message: a.reason, view: a.view, ms });
          return;
        }
        // Landed: wait for the new primary's first frame (the core stops telling it then).
        const poll = (): void => {
          const live = this.replicaState.notifyPrimary === null && this.replicaState.following?.primary === a.view.primary;
          if (live || performance.now() - startedMs >= SWITCHOVER_LIVE_WAIT_MS || this.stopped || this.replicaState.role !== 'backup') {
            resolve({ ok: true, outcome: 'done', code: null, message: a.reason, view: a.view, ms, newPrimaryLive: live, liveMs: since() });
            return;
          }
          setTimeout(poll, 2);
        };
        poll();
      };
      this.switchAsking = answer;
      this.switchFirst = null;
      try {
        this.input({ type: 'switchover', to });
      } finally {
        this.switchAsking = null;
      }
      if (this.stopped) resolve({ ok: false, outcome: 'aborted', code: 'E_SWITCHOVER_ABORTED', message: 'this node is stopping', view: view(), ms: 0 });
    });
  }

  /** One arbiter call, timed for /status. A view of another cluster is fail-stop: a config error. */
  private async askArbiter<T>(call: () => Promise<T>): Promise<T> {
    const started = performance.now();
    this.arbiterCallsInFlight++;
    this.lastArbiterCallMs = started;
    try {
      const res = await call();
      Object.assign(this.arbiterHealth, { health: 'ok', lastLatencyMs: Math.round((performance.now() - started) * 10) / 10, lastAt: new Date().toISOString(), lastError: null });
      return res;
    } catch (e) {
      Object.assign(this.arbiterHealth, { health: 'unavailable', lastAt: new Date().toISOString(), lastError: (e as Error).message });
      if (isLockstepError(e) && e.code === 'E_ARBITER_CLUSTER' && this.adminServer !== null) this.failStop(`${e.code}: ${e.message}`);
      throw e;
    } finally {
      this.arbiterCallsInFlight--;
    }
  }

  /** A read now and then, so /status tells the arbiter's health even when nothing changes. */
  private checkArbiterHealth(): void {
    if (this.stopped || this.arbiterCallsInFlight > 0 || performance.now() - this.lastArbiterCallMs < ARBITER_HEALTH_MS) return;
    this.askArbiter(() => this.arbiter.current()).then((v) => this.sawView(v), () => undefined);
  }

  private sawView(v: View): void {
    if (v.epoch > this.arbiterView.epoch) this.arbiterView = v;
  }

  /** Halted: discard the state and come back as an empty spare that may be recruited. */
  private chunkBytes(): number {
    return this.core.snapshotChunkBytes ?? DEFAULT_SNAPSHOT_CHUNK_BYTES;
  }

  private schedulePump(): void {
    if (this.pumpScheduled || this.producing === null) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pumpSnapshot();
    });
  }

  /**
   * Feed the core the recruit's snapshot chunks as its window allows, for a few ms of this
   * event-loop turn at most, so clients and /status keep being served while a big state
   * streams. More turns follow while chunks are wanted; acks (input) start it again.
   */
  private pumpSnapshot(): void {
    const until = performance.now() + PUMP_SLICE_MS;
    while (this.producing !== null && !this.stopped) {
      const p = this.producing;
      if (this.replicaState.snapshotFor === null || this.replicaState.role !== 'primary') {
        // The recruit was abandoned (or we are no longer primary): drop the stream.
        p.stream.close();
        this.producing = null;
        return;
      }
      if (snapshotChunksWanted(this.replicaState) === 0) return; // the window is shut: acks reopen it
      if (performance.now() >= until) return this.schedulePump();
      const data = p.ahead ?? new Uint8Array(0);
      p.ahead = p.ahead === null ? null : p.stream.next(this.chunkBytes());
      const last = p.ahead === null;
      if (last) this.producing = null;
      this.input({ type: 'snapshotChunk', index: p.index, data, last });
    }
  }

  private startOver(reason: string): void {
    let kept: { index: number; logTerm: number } | undefined;
    if (this.store !== null) {
      // With no commit under way, what was appended is written and what waited for it goes out;
      // with one under way, what waits is dropped (an ack or a reply not sent is always safe).
      // Then the disk, no longer in any view, is discarded.
      if (!this.store.committing) {
        try {
          this.store.commit();
        } catch (e) {
          return this.durableFailed(e);
        }
        this.letOut(this.deferredSends, this.deferredReleases);
      }
      this.deferredSends = [];
      this.deferredReleases = [];
      this.abortCompaction('halted');
      kept = this.keepOnHalt();
      const lastIndex = this.store.index;
      if (kept !== undefined) {
        this.log('warn', 'durable-kept', { dataDir: this.store.dir, lastIndex, logTerm: kept.logTerm, reason: `halted (${reason}): this node is in no view; it rejoins as a spare holding entries 1..${lastIndex} of the log of term ${kept.logTerm}, and the primary sends it what it lacks, or a snapshot` });
      } else {
        this.durably((s) => s.reset(0, []));
        this.log('warn', 'durable-discarded', { dataDir: this.store.dir, lastIndex, reason: `halted (${reason}): this node is in no view, so its disk is stale; it rejoins as an empty spare` });
      }
    }
    this.front.reset(kept !== undefined);
    this.chunks.clear();
    this.restoring = null;
    this.producing?.stream.close();
    this.producing = null;
    this.incarnation++;
    this.replicaState = createReplica(this.core, this.nowMs());
    this.log('warn', 'rejoin-as-spare', { reason, incarnation: this.incarnation });
    setImmediate(() => this.input({ type: 'start', ...(kept !== undefined ? { kept } : {}) }));
  }

  /**
   * Durable mode, halting: can this node rejoin holding what its disk holds? Only when the disk
   * holds exactly the replica's log (no commit under way: startOver just wrote what was
   * appended), it knows which log that is, and the service is not broken (a module that failed
   * on a command is not kept). The held entries the replica had not applied are applied now, so
   * that the service holds the disk's entries 1..lastIndex, as a restart from the disk would.
   */
  private keepOnHalt(): { index: number; logTerm: number } | undefined {
    const st = this.replicaState;
    const store = this.store!;
    const held = st.pending.slice(st.pendingHead);
    const whole = st.appliedIndex + held.length === st.lastIndex;
    if (store.committing || store.index !== st.lastIndex || st.lastIndex === 0 || st.logTerm === 0 || !whole || this.restoring !== null || this.front.brokenReason?.() != null) return undefined;
    if (held.length > 0) this.front.apply(held);
    this.durably(() => this.writeDurableMeta(st.view));
    return { index: st.lastIndex, logTerm: st.logTerm };
  }

  // ---- admin: /status, /metrics, the dashboard (admin.ts) ---------------------------------------------------------

  statusJson(): Record<string, unknown> {
    const s = coreStatus(this.replicaState);
    return {
      id: this.id,
      cluster: this.config.cluster,
      role: s.role,
      epoch: s.view.epoch,
      view: s.view,
      knownEpoch: s.knownEpoch,
      logIndex: s.lastIndex,
      ackedIndex: s.ackedIndex,
      appliedIndex: s.appliedIndex, // a follower applies up to the commit index; the primary executes before appending
      commitIndex: s.commitIndex,
      lag: s.lagEntries,
      heldOutputs: s.heldOutputs,
      retainedEntries: s.retainedEntries,
      recruit: s.recruit,
      switchover: s.switchover,
      service: this.config.service.kind,
      arbiter: { ...this.arbiterHealth, id: this.arbiterIdentity?.id ?? null },
      ...(this.arbiterMismatches.size > 0 ? { peersOnOtherArbiters: Object.fromEntries(this.arbiterMismatches) } : {}),
      // The logging-channel versions this node speaks and what each peer connection runs (a rolling upgrade shows here).
      protocol: { oldest: PROTOCOL_VERSION_MIN, newest: PROTOCOL_VERSION, peers: this.transport.versions() },
      ...this.front.status(),
      rssBytes: process.memoryUsage.rss(),
      eventLoopMaxDelayMs: Math.round(Math.max(this.loopDelayMaxMs, this.loopDelay.max / 1e6)),
      incarnation: this.incarnation,
      durable: this.store === null ? null : { dataDir: this.store.dir, index: this.store.index, snapshotIndex: this.store.snapshotIndex, generation: this.store.generation, ...this.store.stats, commitMs: Math.round(this.store.stats.commitMs) },
      pid: process.pid,
      ...(TIMING_ON ? { timing: timing.report() } : {}),
    };
  }

  /** The scraped numbers for /metrics (lockstep_role is metrics.ts's own). */
  private scrapedMetrics(metric: (name: string, type: 'gauge' | 'counter', help: string, value: number) => void): void {
    const s = coreStatus(this.replicaState);
    const t = this.transport.stats;
    metric('lockstep_epoch', 'gauge', 'Epoch of the view this replica acts in.', s.view.epoch);
    metric('lockstep_log_index', 'gauge', 'Highest log index held.', s.lastIndex);
    metric('lockstep_acked_index', 'gauge', 'Highest index the backup acked (primary).', s.ackedIndex);
    metric('lockstep_backup_lag_entries', 'gauge', 'Entries appended but not yet acked by the backup.', s.lagEntries);
    metric('lockstep_held_outputs', 'gauge', 'Replies held by the output rule.', s.heldOutputs);
    metric('lockstep_retained_bytes', 'gauge', 'Log bytes retained for followers (flow control).', s.retainedBytes);
    this.front.metrics(metric);
    metric('lockstep_arbiter_up', 'gauge', 'Whether the arbiter\'s last call was answered (1) or failed (0); -1 before the first.', this.arbiterHealth.health === 'ok' ? 1 : this.arbiterHealth.health === 'unavailable' ? 0 : -1);
    metric('lockstep_arbiter_latency_ms', 'gauge', 'How long the arbiter\'s last answered call took.', this.arbiterHealth.lastLatencyMs ?? 0);
    metric('lockstep_role_changes_total', 'counter', 'Role or view changes.', this.counters.viewChanges);
    metric('lockstep_peer_frames_sent_total', 'counter', 'Logging-channel frames sent.', t.framesSent);
    metric('lockstep_peer_bytes_sent_total', 'counter', 'Logging-channel bytes sent.', t.bytesSent);
    metric('lockstep_peer_frames_received_total', 'counter', 'Logging-channel frames received.', t.framesReceived);
    metric('lockstep_peer_messages_dropped_total', 'counter', 'Messages dropped because the link was down or full.', t.dropped);
    metric('lockstep_peer_refused_total', 'counter', 'Peer connections refused or closed for garbage.', t.refused);
    const d = this.store?.stats;
    if (d !== undefined) {
      metric('lockstep_durable_commits_total', 'counter', 'Durable mode: group commits (one write and one fdatasync each).', d.commits);
      metric('lockstep_durable_commit_ms_total', 'counter', 'Durable mode: milliseconds spent writing and fsyncing the log.', Math.round(d.commitMs));
      metric('lockstep_durable_log_bytes_total', 'counter', 'Durable mode: log bytes written.', d.bytes);
      metric('lockstep_durable_snapshots_total', 'counter', 'Durable mode: snapshot files written (compaction, or a snapshot received as a recruit).', d.snapshots);
    }
  }

  /** The arbiter's views for the dashboard's timeline (null: this arbiter keeps no history). */
  async arbiterHistory(): Promise<readonly ViewRecord[] | null> {
    const arbiter = this.arbiter;
    return arbiter.history === undefined ? null : arbiter.history();
  }

  // ---- logs --------------------------------------------------------------------------------

  log(level: 'info' | 'warn', event: string, fields: LogFields): void {
    this.logLine({ time: new Date().toISOString(), level, node: this.id, event, role: this.replicaState.role, epoch: this.replicaState.view.epoch, ...fields });
  }
}
