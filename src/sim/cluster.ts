// The deterministic simulator (after TigerBeetle's VOPR): one seed reproduces one whole run of
// a replicated kv cluster under faults, with the very core and guest the real nodes run.
//
// What it simulates: replicas (each a core Replica driving a ReplicatedService over the kv
// machine), the arbiter's test-and-set, concurrent clients that retry with (client id, seq),
// and a network of FIFO connections with random delay (so messages on different connections
// reorder), broken connections, partitions (full, one-way, node-to-arbiter), crashes (state
// lost; restart as an empty spare, or, with durable restarts, often with its disk), kills (a
// crash with no restart, as a node nobody brings back), pauses (the node takes no steps, then
// resumes believing what it believed), stalls (the node's event loop is busy inside a step: a
// GC pause, a big command, a snapshot whose cost grows with the state), an arbiter that is
// slow or unreachable for a while, and a forger that sends live nodes refuses, frames and acks
// of newer epochs in other nodes' names.
// The primary keeps one or two backups (drawn per seed); with two, the primary and one backup
// sometimes crash at once while the other lags (double-crash).
//
// A run has a safety phase, with faults drawn per seed ("swarm": each fault kind on or off),
// then a liveness phase where everything heals and every client must finish. The checks run
// as the run goes (replica divergence, assertion failures) and at its end (linearizability,
// lost or doubled appends, releases by a node that was not the primary, liveness).
//
// Everything random comes from the seed's Rng; time is the event queue's clock. Nothing here
// reads the wall clock, so the trace hash of a seed is the same on every run.

import {
  AssertionError,
  NO_VIEW,
  canAppend,
  createReplica,
  snapshotChunksWanted,
  formatView,
  isBackupIn,
  sameView,
  step,
  type Action,
  type CoreTiming,
  type Entry,
  type Input,
  type PeerMessage,
  type PlantedBugs,
  type Replica,
  type View,
} from '../core/index.js';
import { ReplicatedService, createKv, type ClientRequest, type KvChange, type KvCommand, type KvReply, type ReplicationMode, type RestoreStream, type SnapshotStream, type StateMachine } from '../guest/index.js';
import type { HistoryEvent, OpF } from './history.js';
import { checkHistory } from './linearizability.js';
import { LockstepError } from '../errors.js';
import { Rng, TraceHash } from './rng.js';

/**
 * A service module under simulation: every replica gets a fresh machine, and clients send the
 * commands `command` draws. Its replies are not checked against a model (the linearizability
 * and append checks are kv's); divergence, exactly-once recording, releases, liveness and
 * recruiting are checked as for kv, and error replies are the service's own answers.
 */
export interface SimService {
  readonly name: string;
  machine(): StateMachine<KvCommand, KvReply, unknown>;
  /** A client's next command; `random(n)` is a deterministic integer in [0, n). */
  command(random: (n: number) => number, client: string, counter: number): readonly string[];
}

export interface SimOptions {
  readonly seed: number;
  /** Replication mode; drawn from the seed when absent. */
  readonly mode?: ReplicationMode;
  readonly bugs?: PlantedBugs;
  /** A service other than kv (lockstep sim --service): its machine and its clients' workload. */
  readonly service?: SimService;
  readonly nodes?: number;
  readonly clients?: number;
  /** How long faults are injected. */
  readonly safetyMs?: number;
  /** After healing, every client must complete its operations within this. */
  readonly livenessMs?: number;
  /** Lines of trace kept for the report. */
  readonly traceTailLines?: number;
  /** Switch the forger on (true) or off (false); drawn from the seed when absent. */
  readonly forge?: boolean;
  /**
   * A "query of death": client c0 sometimes sends a command that changes a kv replica's state
   * and then throws (a broken machine). Its primary must quarantine it before it stops, and
   * every later primary refuse it; off unless asked for (it crashes primaries on purpose).
   */
  readonly poison?: boolean;
  /** Planned switchovers among the random events (true) or not (false); drawn from the seed when absent. */
  readonly switchovers?: boolean;
  /**
   * How many backups the primary keeps (CoreConfig.backups: 1 or 2); drawn from the seed when
   * absent, from a generator of its own, so a seed that draws 1 runs as before this existed.
   * With 2, the cluster has at least 4 nodes (a spare to recruit), up to two nodes may be
   * killed, and sometimes the primary and one backup crash at once (`double-crash`).
   */
  readonly backups?: number;
  /** With 2 backups, the double-crash fault on (true) or off (false); drawn from the seed when absent. */
  readonly doubleCrash?: boolean;
  /**
   * Durable restarts (issue 11 item 3): the core runs durable with a backlog (CoreConfig
   * durable, backlogBytes: 2 or 64 KiB, drawn), and a crashed or halted node often restarts
   * with its disk: the state it had at the crash with every entry it had received applied,
   * started `kept` (entries 1..lastIndex of its log term), so a primary resumes it or refuses
   * to; or, when the arbiter's view names it (primary or backup) as it restarts after a crash,
   * started `recovered` with that view, as the node does (it waits as a backup and goes live from
   * its disk after the failure timeout). A crash may then take every holder of the state if one
   * of them keeps its disk, and now and then every live node crashes at once (`power-loss`).
   * Off unless asked (its draws come from a generator of its own), so seeds run as before.
   */
  readonly durableRestarts?: boolean;
}

/** The poison command (SimOptions.poison): the sim's kv machine breaks on it. */
const POISON_COMMAND = 'LOCKSTEP.SIM.POISON';

/**
 * `m` with a broken command: POISON_COMMAND throws E_SERVICE_MACHINE, as a defineMachine's
 * wrapper does for an execute that threw after changing the state. It changes nothing here,
 * so the broken node's digests stay comparable with its followers' (the node stops anyway);
 * what is simulated is the reaction: quarantine, stop, refusal. It is never logged.
 */
function poisonable(m: StateMachine<KvCommand, KvReply, unknown>): StateMachine<KvCommand, KvReply, unknown> {
  const isReadOnly = (c: KvCommand): boolean => c[0] !== POISON_COMMAND && m.isReadOnly(c);
  const execute = (c: KvCommand): ReturnType<typeof m.execute> => {
    if (c[0] !== POISON_COMMAND) return m.execute(c);
    throw new LockstepError('E_SERVICE_MACHINE', `${POISON_COMMAND} threw after changing the state`);
  };
  // Everything else is m's own, called on m (a kv machine keeps its state in its fields).
  return new Proxy(m, {
    get(target, key) {
      if (key === 'isReadOnly') return isReadOnly;
      if (key === 'execute') return execute;
      const v = Reflect.get(target, key) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

export type SimCheck =
  | 'assertion'
  | 'divergence'
  | 'linearizability'
  | 'lost-write'
  | 'duplicate-execution'
  | 'release-epoch'
  | 'release-authority'
  | 'liveness'
  | 'backup-liveness'
  | 'client-error';

export interface SimFailure {
  readonly check: SimCheck;
  readonly message: string;
}

export interface SimStats {
  readonly events: number;
  readonly opsCompleted: number;
  readonly opsInvoked: number;
  readonly goLives: number;
  readonly recruits: number;
  readonly crashes: number;
  readonly pauses: number;
  readonly stalls: number;
  readonly partitions: number;
  readonly views: number;
  readonly simMs: number;
  /** Keys whose linearizability search gave up (unknown, not a failure). */
  readonly linearizabilityUnknownKeys: number;
  /** Planned switchovers asked of the primary, and how many landed (the roles swapped). */
  readonly switchoversAsked: number;
  readonly switchoversDone: number;
  /** The most backups a view of the arbiter named. */
  readonly maxBackups: number;
  /** double-crash faults that struck (the primary and a backup crashed at once). */
  readonly doubleCrashes: number;
  /** Durable restarts: restarts with the disk (kept), and primaries' resumes of them and refusals. */
  readonly keptRestarts: number;
  /** Durable restarts: restarts with the disk while the arbiter's view named the node (recovered). */
  readonly recoveredRestarts: number;
  /** Recovered nodes that learned the view moved on to one naming them primary (their earlier process's test-and-set). */
  readonly recoveredViews: number;
  /** Durable restarts: crashes that left no live holder of the state, only disks (power-loss among them). */
  readonly diskOnlyCrashes: number;
  /** Durable restarts: power-loss faults that struck (every live node crashed at once). */
  readonly powerLosses: number;
  readonly resumes: number;
  readonly resumesRefused: number;
}

export interface SimResult {
  readonly seed: number;
  readonly mode: ReplicationMode;
  /** How many backups the primary kept (SimOptions.backups). */
  readonly backups: number;
  readonly ok: boolean;
  readonly failures: readonly SimFailure[];
  readonly traceHash: string;
  readonly traceTail: readonly string[];
  /** The fault kinds this seed's swarm switched on. */
  readonly faults: readonly string[];
  readonly stats: SimStats;
  /** The clients' history, for `lockstep check` and for debugging. */
  readonly history: readonly HistoryEvent[];
}

// Timing of the simulated cluster: short, so that a run sees many failovers.
const SIM_CORE: CoreTiming = {
  heartbeatMs: 20,
  failureTimeoutMs: 150,
  retransmitMs: 50,
  arbiterRetryMs: 100,
  joinIntervalMs: 60,
  unackedEntriesMax: 48,
  unackedBytesMax: 16 * 1024,
  frameEntriesMax: 8,
  frameBytesMax: 2048,
  catchupEntriesMax: 4,
  // Small chunks and a small window: a recruit's snapshot of a few hundred bytes takes many
  // chunks, several round trips, and chunk-loss faults hit it.
  snapshotChunkBytes: 48,
  snapshotWindowChunks: 3,
};
const TICK_MS = 10;
const CLIENT_TIMEOUT_MS = 250;
const APPEND_KEYS = ['a0', 'a1'];
const MIXED_KEYS = ['k0', 'k1', 'k2'];
const OPS_AFTER_HEAL = 4;

type NetMsg =
  | { readonly t: 'peer'; readonly msg: PeerMessage }
  | { readonly t: 'cas'; readonly requestId: number; readonly expected: View; readonly next: View }
  | { readonly t: 'casResult'; readonly requestId: number; readonly ok: boolean; readonly view: View; readonly inc: number }
  | { readonly t: 'read'; readonly requestId: number }
  | { readonly t: 'readResult'; readonly requestId: number; readonly view: View; readonly inc: number }
  | { readonly t: 'request'; readonly seq: number; readonly command: KvCommand }
  | { readonly t: 'reply'; readonly seq: number; readonly reply: KvReply }
  | { readonly t: 'redirect'; readonly seq: number; readonly primary: string | null };

interface Delivery {
  readonly k: 'deliver';
  readonly from: string;
  readonly fromInc: number;
  readonly to: string;
  readonly conn: number;
  readonly sentAt: number;
  readonly msg: NetMsg;
}

type SimEvent =
  | Delivery
  | { readonly k: 'tick'; readonly node: string; readonly inc: number }
  | { readonly k: 'arbiter'; readonly d: Delivery }
  | { readonly k: 'client'; readonly client: number; readonly token: number }
  | { readonly k: 'restart'; readonly node: string; readonly inc: number }
  | { readonly k: 'unstall'; readonly node: string; readonly inc: number }
  | { readonly k: 'fault' }
  | { readonly k: 'undo'; readonly undo: () => void; readonly what: string }
  | { readonly k: 'forge' }
  | { readonly k: 'switchover' }
  | { readonly k: 'double' }
  | { readonly k: 'powerLoss' }
  | { readonly k: 'heal' };

interface Queued {
  readonly at: number;
  readonly seq: number;
  readonly ev: SimEvent;
}

/** A binary min-heap on (at, seq): ties resolve in insertion order, so runs are reproducible. */
class EventQueue {
  private heap: Queued[] = [];
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  push(at: number, ev: SimEvent): void {
    const h = this.heap;
    h.push({ at, seq: this.seq++, ev });
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  pop(): Queued | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (top === undefined || last === undefined || h.length === 0) return top;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && less(h[l]!, h[m]!)) m = l;
      if (r < h.length && less(h[r]!, h[m]!)) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
    return top;
  }
}

function less(a: Queued, b: Queued): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

type Service = ReplicatedService<KvCommand, KvReply, unknown>;

interface SimNode {
  readonly id: string;
  inc: number;
  alive: boolean;
  paused: boolean;
  /**
   * Stalled (its event loop busy inside a step) until this time. Steps of a stalled node
   * happen at this time, its sends leave then, and what reaches it waits in pausedQueue.
   */
  busyUntil: number;
  /** Killed: it stays down, even when the faults heal. */
  killed: boolean;
  /** Messages that reached the node while it was paused or stalled. */
  pausedQueue: Delivery[];
  replica: Replica;
  service: Service;
  outputs: Map<number, { readonly client: string; readonly seq: number; readonly reply: KvReply }>;
  /** Held outputs (replies and a quarantine's stop): the log index each waits for, and when it was held. */
  held: Map<number, { readonly index: number; readonly at: number; readonly fresh: boolean }>;
  backlog: { readonly client: string; readonly seq: number; readonly command: KvCommand }[];
  nextOutputId: number;
  /** State digest at each log index this incarnation holds. */
  digests: Map<number, string>;
  /** Entries held and not yet applied: the incarnation each came from (its digests are the reference). */
  receivedFrom: Map<number, { readonly node: string; readonly inc: number }>;
  /** A recruit's snapshot being restored chunk by chunk, into a fresh service. */
  restoring: { readonly service: Service; readonly stream: RestoreStream } | null;
  /** Its machine broke (poison): it takes no command and crashes once this output is released. */
  brokenOutput: number | null;
  /** A primary's snapshot stream being fed to its core (copy-on-write while it serves). */
  producing: { readonly index: number; readonly stream: SnapshotStream; ahead: Uint8Array | null } | null;
  /** Durable restarts: what its disk held when it crashed (null: nothing to keep). */
  disk: Disk | null;
}

/**
 * A durable node's disk at its crash: entries 1..index of the log of term logTerm. Its guest
 * (dead with it, never touched again) is at the last index it applied; the entries it held
 * and had not applied are replayed on it at the restart, each checked against its source.
 */
interface Disk {
  readonly index: number;
  readonly logTerm: number;
  readonly service: Service;
  readonly digests: ReadonlyMap<number, string>;
  readonly held: readonly Entry[];
  /**
   * The disk's last entries the core still had in memory (backlog, retained log, held), ending at
   * `index`: a recovered start gets them as `tail`, as the node's driver hands over its disk's.
   */
  readonly tail: readonly Entry[];
  readonly receivedFrom: ReadonlyMap<number, { readonly node: string; readonly inc: number }>;
  /** It halted (and rejoins kept, whatever the view says), rather than crashed. */
  readonly halted: boolean;
}

interface PendingOp {
  readonly f: OpF;
  readonly key: string;
  readonly value: string | null;
  readonly seq: number;
  readonly invokedAt: number;
  /** A service module's command (kv's is made from f, key and value). */
  readonly command?: readonly string[];
}

interface SimClient {
  readonly id: string;
  readonly process: number;
  seq: number;
  pending: PendingOp | null;
  target: number;
  token: number;
  opsAfterHeal: number;
  done: boolean;
  counter: number;
}

interface Release {
  readonly node: string;
  readonly inc: number;
  readonly epoch: number;
  readonly at: number;
  readonly authorityAt: number;
  /** The highest log index a released output waited for, and when the last fresh read among them was held (-1: none). */
  readonly index: number;
  readonly freshHeldAt: number;
}

/** An ack a replica sent to a primary: when, in which epoch, and the log index it held. */
interface AckSent {
  readonly at: number;
  readonly epoch: number;
  readonly ackedIndex: number;
}

type FaultKind =
  | NewFaultKind
  | 'crash'
  | 'pause'
  | 'isolate'
  | 'one-way'
  | 'arbiter-link'
  | 'conn-break'
  | 'arbiter-slow'
  | 'arbiter-down'
  | 'client-link';

/**
 * Fault kinds added after the first long sweeps. They are drawn from a generator of their
 * own, so a seed that switches none of them on draws the same faults as before they existed.
 *   stall           a node's event loop is busy for a while inside a step (a GC pause, a big
 *                   command): nothing it receives is read and its timers fire late; when it
 *                   comes back its timer runs before the messages that waited (as in Node,
 *                   whose timers phase comes before the poll phase).
 *   slow-snapshot   taking each snapshot chunk stalls the primary, restoring it the recruit,
 *                   for a time proportional to the chunk's size (up to a tenth of the failure
 *                   timeout: a slice). Unlike other faults, this does not heal.
 *   kill            a crash with no restart (kill -9 of a node nobody brings back).
 */
type NewFaultKind = 'stall' | 'slow-snapshot' | 'kill';
const NEW_FAULT_KINDS: readonly NewFaultKind[] = ['stall', 'slow-snapshot', 'kill'];

const FAULT_KINDS: readonly FaultKind[] = [
  'crash',
  'pause',
  'isolate',
  'one-way',
  'arbiter-link',
  'conn-break',
  'arbiter-slow',
  'arbiter-down',
  'client-link',
];

export function simulate(opts: SimOptions): SimResult {
  return new Simulation(opts).run();
}

class Simulation {
  private readonly seed: number;
  private readonly rng: Rng;
  private readonly netRng: Rng;
  private readonly mode: ReplicationMode;
  private readonly bugs: PlantedBugs;
  private readonly service: SimService | null;
  private readonly safetyMs: number;
  private readonly livenessMs: number;
  private readonly tailMax: number;
  private readonly q = new EventQueue();
  private now = 0;
  private events = 0;
  private readonly hash = new TraceHash();
  private readonly tail: string[] = [];
  private readonly failures: SimFailure[] = [];

  private readonly nodeIds: string[];
  private readonly nodes = new Map<string, SimNode>();
  private readonly clients: SimClient[] = [];
  private readonly history: HistoryEvent[] = [];
  /** A service module's completed commands (they are not in `history`, which is kv's). */
  private acked = 0;
  /** Every incarnation's digests, kept after it dies: followers compare against their source. */
  private readonly digestsOf = new Map<string, Map<number, string>>();

  // The arbiter.
  private view: View = NO_VIEW;
  private readonly views: { readonly at: number; readonly view: View }[] = [];
  private arbiterSlowUntil = -1;

  // The network.
  private readonly conns = new Map<string, { id: number; last: number }>();
  private readonly blocked = new Map<string, number>();

  // Faults.
  private readonly faultKinds: FaultKind[];
  /**
   * The forger (issue 14 item 9): a process that holds the cluster's secret, or any process
   * when there is none, sends live nodes `refuse`s, frames and acks of newer epochs, from
   * random node ids, all through the run (healing does not stop it). Its draws come from a
   * generator of its own, so a seed without it runs as before it existed.
   */
  private readonly forgeRng: Rng;
  private readonly forgeMeanMs: number | null;
  /**
   * Planned switchovers (issue 11 item 1): an operator asks the primary (sometimes another
   * node, or for another target) to hand over to its backup, every so often through the
   * safety phase. A generator of its own, so a seed without them runs as before they existed.
   */
  private readonly switchRng: Rng;
  private readonly switchMeanMs: number | null;
  /** chunk-loss: the chance that a snapshot chunk is lost (0: none), and its generator. */
  private readonly chunkLoss: number;
  private readonly chunkRng: Rng;
  /** SimOptions.poison, and the draws of when c0 sends the poison (a generator of its own). */
  private readonly poison: boolean;
  private readonly poisonRng: Rng;
  /** SimOptions.backups. */
  private readonly backups: number;
  /**
   * double-crash (2 backups): now and then the primary and one of its backups crash at once,
   * sometimes right after the other backup's link from the primary was cut (so it lags): the
   * backup left must hold every released entry. A generator of its own; null when off.
   */
  private readonly doubleRng: Rng;
  private readonly doubleMeanMs: number | null;
  /**
   * Durable restarts (SimOptions.durableRestarts): the chance that a restart keeps the disk,
   * and the core's backlogBytes; null when off. A generator of its own.
   */
  private readonly durableRng: Rng;
  private readonly durable: { readonly keepChance: number; readonly backlogBytes: number; readonly powerLossMeanMs: number | null } | null;
  private faultMeanMs = 300;
  /** slow-snapshot: the stall per KiB of snapshot, when taken and when installed. */
  private readonly snapshotMsPerKiB: number;
  private healed = false;
  /** When, after healing, the view first named a live backup that acts as one (null: not yet). */
  private backupSeenAt: number | null = null;
  /** The run is over and the final checks are running (they add nothing to the trace). */
  private finished = false;

  private readonly releases: Release[] = [];
  /** Acks replicas sent, by `primary#incarnation|sender` (the forger's are not here). */
  private readonly acksSent = new Map<string, AckSent[]>();
  private stats = { opsCompleted: 0, opsInvoked: 0, goLives: 0, recruits: 0, crashes: 0, pauses: 0, stalls: 0, partitions: 0, linearizabilityUnknownKeys: 0, switchoversAsked: 0, switchoversDone: 0, maxBackups: 0, doubleCrashes: 0, keptRestarts: 0, recoveredRestarts: 0, recoveredViews: 0, diskOnlyCrashes: 0, powerLosses: 0, resumes: 0, resumesRefused: 0 };

  constructor(opts: SimOptions) {
    this.seed = opts.seed;
    this.rng = new Rng(opts.seed);
    this.netRng = this.rng.fork();
    // Draw the mode even when it is given, so that --mode does not shift the rest of the run.
    const drawn: ReplicationMode = this.rng.chance(0.5) ? 'rsm' : 'state-transfer';
    this.mode = opts.mode ?? drawn;
    this.bugs = opts.bugs ?? {};
    this.service = opts.service ?? null;
    this.safetyMs = opts.safetyMs ?? 3000;
    this.livenessMs = opts.livenessMs ?? 4000;
    this.tailMax = opts.traceTailLines ?? 60;
    // The newer fault kinds (and three-node clusters) come from a generator of their own.
    const xr = new Rng((opts.seed ^ 0x5f3759df) >>> 0);
    const newKinds = NEW_FAULT_KINDS.filter(() => xr.chance(0.35));
    // A kill in a three-node cluster leaves the primary one spare: the case of issue 16.
    const drawnN = xr.chance(newKinds.includes('kill') ? 0.7 : newKinds.length > 0 ? 0.3 : 0) ? 3 : 4;
    // The number of backups, from a generator of its own (a seed drawing 1 runs as before).
    const br = new Rng((opts.seed ^ 0x7f4a7c15) >>> 0);
    const drawnBackups = br.chance(0.5) ? 2 : 1;
    this.backups = opts.backups ?? drawnBackups;
    if (!Number.isSafeInteger(this.backups) || this.backups < 1 || this.backups > 2) throw new RangeError(`backups must be 1 or 2, got ${this.backups}`);
    // A primary, its backups and a spare to recruit when one fails.
    const n = opts.nodes ?? Math.max(drawnN, this.backups + 2);
    this.snapshotMsPerKiB = newKinds.includes('slow-snapshot') ? xr.pick([100, 300, 1000]) : 0;
    this.nodeIds = Array.from({ length: n }, (_, i) => `n${i + 1}`);
    this.faultKinds = FAULT_KINDS.filter(() => this.rng.chance(0.5));
    if (this.faultKinds.length === 0) this.faultKinds.push(this.rng.pick(FAULT_KINDS));
    this.faultMeanMs = this.rng.pick([150, 300, 600]);
    // slow-snapshot is a property of the cluster, not a fault the nemesis injects.
    this.faultKinds.push(...newKinds.filter((k) => k !== 'slow-snapshot'));
    this.forgeRng = new Rng((opts.seed ^ 0x2545f491) >>> 0);
    const forge = this.forgeRng.chance(0.35);
    const forgeMeanMs = this.forgeRng.pick([30, 100, 300]);
    this.forgeMeanMs = (opts.forge ?? forge) ? forgeMeanMs : null;
    // chunk-loss: the network loses snapshot chunks (alone; a lost chunk is resent) until
    // the faults heal. A generator of its own, so other draws stay as they were.
    this.chunkRng = new Rng((opts.seed ^ 0x1b873593) >>> 0);
    this.chunkLoss = this.chunkRng.chance(0.4) ? this.chunkRng.pick([0.05, 0.2, 0.5]) : 0;
    this.poison = opts.poison === true;
    this.poisonRng = new Rng((opts.seed ^ 0x3c6ef372) >>> 0);
    this.switchRng = new Rng((opts.seed ^ 0x68e31da4) >>> 0);
    const switchovers = this.switchRng.chance(0.5);
    const switchMeanMs = this.switchRng.pick([100, 300, 800]);
    this.switchMeanMs = (opts.switchovers ?? switchovers) ? switchMeanMs : null;
    this.doubleRng = new Rng((opts.seed ^ 0x0bad5eed) >>> 0);
    const double = this.doubleRng.chance(0.6);
    const doubleMeanMs = this.doubleRng.pick([200, 500, 1000]);
    this.doubleMeanMs = this.backups > 1 && (opts.doubleCrash ?? double) ? doubleMeanMs : null;
    this.durableRng = new Rng((opts.seed ^ 0x4a7c159e) >>> 0);
    const keepChance = this.durableRng.pick([0.5, 0.8, 1]);
    // Sometimes a backlog of a few entries only, so that both resumes and refusals happen.
    const backlogBytes = this.durableRng.pick([2 * 1024, 64 * 1024]);
    // power-loss: now and then every live node crashes at once (drawn after the rest, so those stay).
    const powerLossMeanMs = this.durableRng.chance(0.5) ? this.durableRng.pick([500, 1000, 2000]) : null;
    this.durable = opts.durableRestarts === true ? { keepChance, backlogBytes, powerLossMeanMs } : null;
    for (let i = 0; i < (opts.clients ?? 5); i++) {
      this.clients.push({ id: `c${i}`, process: i, seq: 0, pending: null, target: i % n, token: 0, opsAfterHeal: 0, done: false, counter: 0 });
    }
  }

  run(): SimResult {
    const snap = this.snapshotMsPerKiB > 0 ? ` slow-snapshot=${this.snapshotMsPerKiB}ms/KiB` : '';
    const size = this.nodeIds.length !== 4 ? ` nodes=${this.nodeIds.length}` : '';
    const forge = this.forgeMeanMs !== null ? ` forge=${this.forgeMeanMs}ms` : '';
    const loss = this.chunkLoss > 0 ? ` chunk-loss=${this.chunkLoss}` : '';
    const sw = this.switchMeanMs !== null ? ` switchover=${this.switchMeanMs}ms` : '';
    const backups = this.backups !== 1 ? ` backups=${this.backups}` : '';
    const double = this.doubleMeanMs !== null ? ` double-crash=${this.doubleMeanMs}ms` : '';
    const power = this.durable?.powerLossMeanMs != null ? ` power-loss=${this.durable.powerLossMeanMs}ms` : '';
    const durable = this.durable !== null ? ` durable-restart=${this.durable.keepChance} backlog=${this.durable.backlogBytes}${power}` : '';
    this.trace(`seed mode=${this.mode} faults=${this.faultKinds.join(',')} mean=${this.faultMeanMs}${snap}${size}${forge}${loss}${sw}${backups}${double}${durable}`);
    if (this.forgeMeanMs !== null) this.q.push(100 + this.forgeRng.exp(this.forgeMeanMs), { k: 'forge' });
    if (this.switchMeanMs !== null) this.q.push(150 + this.switchRng.exp(this.switchMeanMs), { k: 'switchover' });
    if (this.doubleMeanMs !== null) this.q.push(300 + this.doubleRng.exp(this.doubleMeanMs), { k: 'double' });
    if (this.durable?.powerLossMeanMs != null) this.q.push(300 + this.durableRng.exp(this.durable.powerLossMeanMs), { k: 'powerLoss' });
    for (const id of this.nodeIds) this.startNode(id, 0, this.rng.int(0, 30));
    for (const c of this.clients) this.wakeClient(c, 50 + this.rng.int(0, 50));
    this.q.push(this.rng.exp(this.faultMeanMs) + 200, { k: 'fault' });
    this.q.push(this.safetyMs, { k: 'heal' });
    const deadline = this.safetyMs + this.livenessMs;
    while (this.q.size > 0) {
      const item = this.q.pop()!;
      if (item.at > deadline) break;
      this.now = item.at;
      this.events++;
      this.dispatch(item.ev);
      if (this.healed && this.backupSeenAt === null && this.hasBackup()) this.backupSeenAt = this.now;
      if (this.healed && this.backupSeenAt !== null && this.clients.every((c) => c.done)) break;
    }
    this.finished = true;
    this.finalChecks();
    const ok = this.failures.length === 0;
    return {
      seed: this.seed,
      mode: this.mode,
      ok,
      failures: this.failures,
      traceHash: this.hash.hex(),
      traceTail: this.tail.slice(),
      faults: [...this.faultKinds, ...(this.snapshotMsPerKiB > 0 ? ['slow-snapshot'] : []), ...(this.forgeMeanMs !== null ? ['forge'] : []), ...(this.chunkLoss > 0 ? ['chunk-loss'] : []), ...(this.switchMeanMs !== null ? ['switchover'] : []), ...(this.doubleMeanMs !== null ? ['double-crash'] : []), ...(this.durable !== null ? ['durable-restart'] : []), ...(this.durable?.powerLossMeanMs != null ? ['power-loss'] : [])],
      backups: this.backups,
      history: this.history,
      stats: { ...this.stats, events: this.events, views: this.views.length, simMs: Math.round(this.now) },
    };
  }

  // -------------------------------------------------------------------------------------
  // Trace and failures

  private trace(line: string): void {
    const s = `${this.now.toFixed(3)} ${line}`;
    this.hash.update(s);
    this.tail.push(s);
    if (this.tail.length > this.tailMax * 2) this.tail.splice(0, this.tail.length - this.tailMax);
  }

  private fail(check: SimCheck, message: string): void {
    if (this.failures.some((f) => f.check === check && f.message === message)) return;
    if (!this.finished) this.trace(`FAIL ${check}: ${message}`);
    if (this.failures.length < 20) this.failures.push({ check, message });
  }

  // -------------------------------------------------------------------------------------
  // Events

  private dispatch(ev: SimEvent): void {
    switch (ev.k) {
      case 'deliver':
        return this.deliver(ev);
      case 'tick': {
        const node = this.nodes.get(ev.node);
        if (!node || node.inc !== ev.inc || !node.alive) return;
        this.q.push(this.now + TICK_MS, ev);
        if (!node.paused && this.now >= node.busyUntil) {
          this.stepNode(node, { type: 'tick' }, this.now, null);
          this.pumpSnapshot(node, 1);
        }
        return;
      }
      case 'arbiter':
        return this.arbiterProcess(ev.d);
      case 'client':
        return this.onClientWake(ev.client, ev.token);
      case 'restart': {
        const node = this.nodes.get(ev.node);
        if (node && node.inc === ev.inc && !node.alive && !node.killed) this.startNode(ev.node, ev.inc + 1, 0);
        return;
      }
      case 'unstall': {
        const node = this.nodes.get(ev.node);
        if (node && node.inc === ev.inc) this.unstall(node);
        return;
      }
      case 'fault':
        if (this.healed) return;
        this.injectFault();
        this.q.push(this.now + this.rng.exp(this.faultMeanMs), { k: 'fault' });
        return;
      case 'undo':
        if (this.healed) return;
        this.trace(`undo ${ev.what}`);
        ev.undo();
        return;
      case 'forge':
        this.forgeOne();
        this.q.push(this.now + this.forgeRng.exp(this.forgeMeanMs ?? 100), { k: 'forge' });
        return;
      case 'switchover':
        if (this.healed) return;
        this.askSwitchover();
        this.q.push(this.now + this.switchRng.exp(this.switchMeanMs ?? 300), { k: 'switchover' });
        return;
      case 'double':
        if (this.healed) return;
        this.doubleCrash();
        this.q.push(this.now + this.doubleRng.exp(this.doubleMeanMs ?? 500), { k: 'double' });
        return;
      case 'powerLoss':
        if (this.healed) return;
        this.powerLoss();
        this.q.push(this.now + this.durableRng.exp(this.durable?.powerLossMeanMs ?? 1000), { k: 'powerLoss' });
        return;
      case 'heal':
        return this.heal();
    }
  }

  // -------------------------------------------------------------------------------------
  // The network: FIFO connections between endpoints, random delays, drops on break

  private connKey(from: string, to: string): string {
    return `${from}>${to}`;
  }

  private conn(from: string, to: string): { id: number; last: number } {
    const key = this.connKey(from, to);
    let c = this.conns.get(key);
    if (!c) this.conns.set(key, (c = { id: 0, last: 0 }));
    return c;
  }

  private breakConn(from: string, to: string): void {
    const c = this.conn(from, to);
    c.id++;
    c.last = this.now;
  }

  private send(from: string, fromInc: number, to: string, msg: NetMsg): void {
    if ((this.blocked.get(this.connKey(from, to)) ?? 0) > 0) return;
    if (msg.t === 'peer' && msg.msg.type === 'chunk' && !this.healed && this.chunkLoss > 0 && this.chunkRng.chance(this.chunkLoss)) {
      this.trace(`lose ${from}>${to} chunk ${msg.msg.chunk} of the snapshot at ${msg.msg.index}`);
      return;
    }
    const c = this.conn(from, to);
    const r = this.netRng;
    let delay = 0.2 + r.exp(1.5);
    if (r.chance(0.03)) delay += r.exp(25);
    // A stalled node's sends leave when its event loop is free again.
    const departs = Math.max(this.now, this.nodes.get(from)?.busyUntil ?? 0);
    const at = Math.max(departs + delay, c.last);
    c.last = at;
    this.q.push(at, { k: 'deliver', from, fromInc, to, conn: c.id, sentAt: this.now, msg });
  }

  private deliver(d: Delivery): void {
    if (this.conn(d.from, d.to).id !== d.conn) return; // the connection broke: lost in flight
    if (d.to === 'arbiter') {
      const slow = this.now < this.arbiterSlowUntil ? this.rng.int(20, 400) : 0;
      this.q.push(this.now + slow, { k: 'arbiter', d });
      return;
    }
    const node = this.nodes.get(d.to);
    if (node) {
      if (!node.alive) return;
      if (node.paused || this.now < node.busyUntil) {
        node.pausedQueue.push(d);
        return;
      }
      this.nodeReceive(node, d);
      return;
    }
    const client = this.clients.find((c) => c.id === d.to);
    if (client) this.clientReceive(client, d);
  }

  // -------------------------------------------------------------------------------------
  // The arbiter: an atomic test-and-set of the view

  private arbiterProcess(d: Delivery): void {
    const m = d.msg;
    if (m.t === 'read') {
      this.send('arbiter', 0, d.from, { t: 'readResult', requestId: m.requestId, view: this.view, inc: d.fromInc });
      return;
    }
    if (m.t !== 'cas') return;
    const ok = sameView(this.view, m.expected) && m.next.epoch === this.view.epoch + 1;
    if (ok) {
      this.view = m.next;
      this.views.push({ at: this.now, view: m.next });
      this.stats.maxBackups = Math.max(this.stats.maxBackups, m.next.backups.length);
      this.trace(`arbiter view ${formatView(m.next)} by ${d.from}`);
      // The moments after a view change are where failover bugs live: sometimes strike then.
      if (!this.healed && m.next.backups.length > 0 && this.faultKinds.includes('crash') && this.rng.chance(0.3)) {
        const primary = this.nodes.get(d.from);
        const inc = primary?.inc;
        this.later(this.rng.int(0, 30), `crash ${d.from} after view ${m.next.epoch}`, () => {
          const keeps = primary && primary.alive && primary.inc === inc ? this.mayCrashAll([primary], true) : null;
          if (primary && keeps !== null) {
            this.stats.crashes++;
            this.crash(primary, this.rng.int(50, 600), keeps);
          }
        });
      }
    }
    this.send('arbiter', 0, d.from, { t: 'casResult', requestId: m.requestId, ok, view: this.view, inc: d.fromInc });
  }

  // -------------------------------------------------------------------------------------
  // Replicas

  private startNode(id: string, inc: number, delayMs: number): void {
    // Durable restarts: often back with what the disk held at the crash (crash() drew whether).
    const disk = this.nodes.get(id)?.disk ?? null;
    const service: Service = disk?.service ?? new ReplicatedService(this.machine(), this.mode);
    const durable = this.durable === null ? {} : { durable: true, backlogBytes: this.durable.backlogBytes };
    const replica = createReplica({ ...SIM_CORE, id, nodes: this.nodeIds, backups: this.backups, bugs: this.bugs, ...durable }, this.now);
    const digests = new Map<number, string>(disk?.digests ?? [[0, service.digest()]]);
    this.digestsOf.set(`${id}#${inc}`, digests);
    const node: SimNode = {
      id,
      inc,
      alive: true,
      paused: false,
      busyUntil: 0,
      killed: false,
      pausedQueue: [],
      replica,
      service,
      outputs: new Map(),
      held: new Map(),
      backlog: [],
      brokenOutput: null,
      nextOutputId: 1,
      digests,
      receivedFrom: new Map(),
      restoring: null,
      producing: null,
      disk: null,
    };
    this.nodes.set(id, node);
    const at = this.now + delayMs;
    if (disk === null) {
      this.trace(`start ${id}#${inc}`);
      this.q.push(at, { k: 'tick', node: id, inc });
      this.stepNode(node, { type: 'start' }, this.now, null);
      return;
    }
    // The node replays its disk: the entries it held and had not applied go to its guest too.
    // Like the node (recoverDurable), a process restarted while the arbiter's current view names
    // it starts recovered in that view, any other kept; a halted node rejoins kept (startOver).
    const v = this.view;
    const recovered = !disk.halted && v.epoch > 0 && (v.primary === id || isBackupIn(v, id));
    this.trace(`start ${id}#${inc} ${recovered ? `recovered in ${formatView(v)} at` : 'kept'} 1..${disk.index} of term ${disk.logTerm} (replays ${disk.held.length} held)`);
    if (recovered) this.stats.recoveredRestarts++;
    else this.stats.keptRestarts++;
    for (const [index, from] of disk.receivedFrom) node.receivedFrom.set(index, from);
    this.applyEntries(node, disk.held, null);
    node.receivedFrom.clear();
    this.q.push(at, { k: 'tick', node: id, inc });
    const start: Input = recovered ? { type: 'start', recovered: { index: disk.index, view: v, logTerm: disk.logTerm, tail: disk.tail } } : { type: 'start', kept: { index: disk.index, logTerm: disk.logTerm } };
    this.stepNode(node, start, this.now, null);
  }

  /**
   * Durable restarts: what `node`'s disk holds as it crashes, entries 1..lastIndex of its log
   * term, if any: its guest is at the last index it applied (its digests' last), and the
   * entries it held after that are in its core's pending list.
   */
  private diskOf(node: SimNode, quiet = false): Omit<Disk, 'halted'> | null {
    const r = node.replica;
    if (this.durable === null || r.lastIndex <= 0 || r.logTerm <= 0 || node.restoring !== null) return null;
    let at = 0;
    for (const index of node.digests.keys()) at = Math.max(at, index);
    const held = r.pending.slice(r.pendingHead).filter((e) => e.index > at);
    if (at + held.length !== r.lastIndex || held.some((e, i) => e.index !== at + 1 + i)) {
      if (!quiet) this.trace(`${node.id} disk not kept: guest at ${at}, core holds ${r.lastIndex} (${held.length} held after it)`);
      return null;
    }
    return { index: r.lastIndex, logTerm: r.logTerm, service: node.service, digests: node.digests, held, tail: diskTail(r), receivedFrom: node.receivedFrom };
  }

  /**
   * Crash `node`; it restarts after `restartInMs` (never, when null) as an empty spare, or with
   * durable restarts maybe with what its disk holds now (surely, when `keeps` has it: it is the
   * last holder of the state, see mayCrashAll). `halted`: it halted, and rejoins kept.
   */
  private crash(node: SimNode, restartInMs: number | null, keeps: ReadonlySet<SimNode> = new Set(), halted = false): void {
    const disk = restartInMs === null ? null : this.diskOf(node);
    node.disk = disk !== null && (keeps.has(node) || this.durableRng.chance(this.durable!.keepChance)) ? { ...disk, halted } : null;
    if (disk !== null) {
      // Its guest may come back: a snapshot stream it was taking dies with the process.
      node.producing?.stream.close();
      node.producing = null;
    }
    node.alive = false;
    node.killed = restartInMs === null;
    node.paused = false;
    node.pausedQueue = [];
    for (const other of [...this.nodeIds, 'arbiter', ...this.clients.map((c) => c.id)]) {
      this.breakConn(node.id, other);
      this.breakConn(other, node.id);
    }
    this.trace(`${node.killed ? 'kill' : 'crash'} ${node.id}#${node.inc}`);
    if (restartInMs !== null) this.q.push(this.now + restartInMs, { k: 'restart', node: node.id, inc: node.inc });
  }

  private nodeReceive(node: SimNode, d: Delivery): void {
    const m = d.msg;
    switch (m.t) {
      case 'peer':
        this.trace(`${d.from}>${node.id} ${describe(m.msg)}`);
        this.stepNode(node, { type: 'message', from: d.from, msg: m.msg }, d.sentAt, { node: d.from, inc: d.fromInc });
        break;
      case 'casResult':
        // An answer to an earlier incarnation (asked before a crash, answered after the restart)
        // goes to a process that no longer exists: a real node's new process never sees it.
        if (m.inc !== node.inc) return this.trace(`arbiter>${node.id} cas#${m.requestId} for ${node.id}#${m.inc}: dropped`);
        this.trace(`arbiter>${node.id} cas#${m.requestId} ok=${m.ok} ${formatView(m.view)}`);
        this.stepNode(node, { type: 'arbiterResult', requestId: m.requestId, ok: m.ok, view: m.view }, d.sentAt, null);
        break;
      case 'readResult':
        if (m.inc !== node.inc) return this.trace(`arbiter>${node.id} read#${m.requestId} for ${node.id}#${m.inc}: dropped`);
        this.trace(`arbiter>${node.id} read#${m.requestId} ${formatView(m.view)}`);
        this.stepNode(node, { type: 'arbiterView', requestId: m.requestId, view: m.view }, d.sentAt, null);
        break;
      case 'request':
        if (node.replica.role !== 'primary' || node.brokenOutput !== null || (m.command[0] === POISON_COMMAND && !this.poisonMayBreak(node))) {
          const hint = node.replica.view.primary === node.id ? null : node.replica.view.primary;
          this.send(node.id, node.inc, d.from, { t: 'redirect', seq: m.seq, primary: hint });
          return;
        }
        node.backlog.push({ client: d.from, seq: m.seq, command: m.command });
        break;
      default:
        return;
    }
    this.drain(node);
    this.stepNode(node, { type: 'flush' }, this.now, null);
  }

  /** Execute waiting client requests while flow control lets the primary append. */
  private drain(node: SimNode): void {
    const r = node.replica;
    while (node.alive && node.backlog.length > 0 && r.role === 'primary' && canAppend(r) && node.brokenOutput === null) {
      const req = node.backlog.shift()!;
      if (req.command[0] === POISON_COMMAND && !this.poisonMayBreak(node)) {
        // Checked again when it runs, not only when it arrived: a command parked by a
        // switchover runs later, maybe after the backup was dropped (seed 80 with --poison).
        this.send(node.id, node.inc, req.client, { t: 'redirect', seq: req.seq, primary: null });
        continue;
      }
      const request = { clientId: req.client, seq: req.seq, ackedBelow: req.seq === 1 ? 0 : req.seq, command: req.command };
      let res: ReturnType<Service['execute']>;
      try {
        res = node.service.execute(request);
      } catch (e) {
        if (!(e instanceof LockstepError && e.code === 'E_SERVICE_MACHINE')) throw e;
        this.broken(node, request, e.message);
        continue;
      }
      if (res.entry !== null) {
        this.stepNode(node, { type: 'append', payload: res.entry }, this.now, null);
        node.digests.set(r.lastIndex, node.service.digest());
      }
      const outputId = node.nextOutputId++;
      node.outputs.set(outputId, { client: req.client, seq: req.seq, reply: res.reply });
      this.hold(node, outputId, res.entry === null);
    }
    if (node.alive && (r.role !== 'primary' || node.brokenOutput !== null) && node.backlog.length > 0) {
      // After a switchover the view names the new primary: point the waiting clients at it.
      const hint = r.role === 'backup' && r.view.primary !== node.id ? r.view.primary : null;
      for (const req of node.backlog.splice(0)) this.send(node.id, node.inc, req.client, { t: 'redirect', seq: req.seq, primary: hint });
    }
  }

  /**
   * A command broke `node`'s machine (the poison): its state changed with no entry to say how.
   * As the module front does: log the command's quarantine, answer the client, take no other
   * command, and crash once the output rule releases the quarantine entry (the supervisor
   * restarts the node as an empty spare). Its digests stop here: its state is not the log's.
   */
  private broken(node: SimNode, req: ClientRequest<KvCommand>, why: string): void {
    this.trace(`${node.id} broken by ${req.command[0]} of ${req.clientId}`);
    if (this.bugs.noQuarantine) {
      this.crash(node, this.rng.int(50, 200)); // the reply dies with it: the client resends
      return;
    }
    const entry = node.service.quarantine(req, why);
    this.stepNode(node, { type: 'append', payload: entry }, this.now, null);
    node.digests.set(node.replica.lastIndex, node.service.digest());
    // The client's error reply waits for the output rule like any other: the quarantine entry
    // may open the client's session, and the reply must not tell of what the backup may lack.
    const replyId = node.nextOutputId++;
    node.outputs.set(replyId, { client: req.clientId!, seq: req.seq, reply: { kind: 'error', message: `ERR ${why.slice(0, 120)}` } });
    this.hold(node, replyId, false);
    const outputId = node.nextOutputId++;
    node.brokenOutput = outputId;
    this.hold(node, outputId, false);
  }

  /** Hold an output until the output rule releases it, noting what it rests on. */
  private hold(node: SimNode, outputId: number, fresh: boolean): void {
    node.held.set(outputId, { index: node.replica.lastIndex, at: this.now, fresh });
    this.stepNode(node, { type: 'hold', outputId, fresh }, this.now, null);
  }

  /**
   * Step the node's core and carry out its actions. `authorityAt` is when the information
   * behind this input was true at its source (a message's send time): a release must not
   * rest on information from after a newer view existed.
   */
  private stepNode(node: SimNode, input: Input, authorityAt: number, source: { node: string; inc: number } | null): void {
    let actions: Action[];
    try {
      // A stalled node steps when its event loop is free: at the end of the stall.
      actions = step(node.replica, input, Math.max(this.now, node.busyUntil));
    } catch (e) {
      if (e instanceof AssertionError) {
        this.fail('assertion', `${node.id}#${node.inc} on ${input.type}: ${e.message}`);
        this.crash(node, 100);
        return;
      }
      throw e;
    }
    for (const a of actions) this.act(node, a, authorityAt, source);
  }

  private act(node: SimNode, a: Action, authorityAt: number, source: { node: string; inc: number } | null): void {
    if (!node.alive) return;
    switch (a.type) {
      case 'send':
        if (a.msg.type === 'ack') {
          const key = `${a.to}#${this.nodes.get(a.to)?.inc ?? 0}|${node.id}`;
          const acks = this.acksSent.get(key) ?? [];
          acks.push({ at: this.now, epoch: a.msg.epoch, ackedIndex: a.msg.ackedIndex });
          this.acksSent.set(key, acks);
        }
        this.send(node.id, node.inc, a.to, { t: 'peer', msg: a.msg });
        return;
      case 'arbiterCas':
        if (node.brokenOutput !== null && a.expected.backups.some((id) => !isBackupIn(a.next, id))) {
          // As the node does: a broken primary never drops any backup; it stops instead.
          this.trace(`${node.id} broken, its backup silent: stops rather than drop it`);
          this.crash(node, this.rng.int(50, 200));
          return;
        }
        this.send(node.id, node.inc, 'arbiter', { t: 'cas', requestId: a.requestId, expected: a.expected, next: a.next });
        return;
      case 'arbiterRead':
        this.send(node.id, node.inc, 'arbiter', { t: 'read', requestId: a.requestId });
        return;
      case 'release': {
        let index = 0;
        let freshHeldAt = -1;
        for (const id of a.outputIds) {
          const h = node.held.get(id);
          node.held.delete(id);
          if (h !== undefined) index = Math.max(index, h.index);
          if (h !== undefined && h.fresh) freshHeldAt = Math.max(freshHeldAt, h.at);
        }
        const rel: Release = { node: node.id, inc: node.inc, epoch: node.replica.view.epoch, at: this.now, authorityAt, index, freshHeldAt };
        for (const id of a.outputIds) {
          const o = node.outputs.get(id);
          if (!o) continue;
          node.outputs.delete(id);
          this.send(node.id, node.inc, o.client, { t: 'reply', seq: o.seq, reply: o.reply });
        }
        if (node.brokenOutput !== null && a.outputIds.includes(node.brokenOutput)) {
          this.trace(`${node.id} quarantine released: stops`);
          this.releases.push(rel);
          this.crash(node, this.rng.int(50, 200));
          return;
        }
        this.releases.push(rel);
        this.trace(`${node.id} release ${a.outputIds.length} epoch=${node.replica.view.epoch}`);
        return;
      }
      case 'discard':
        if (node.brokenOutput !== null && a.outputIds.includes(node.brokenOutput)) {
          this.crash(node, this.rng.int(50, 200));
          return;
        }
        for (const id of a.outputIds) {
          node.outputs.delete(id);
          node.held.delete(id);
        }
        return;
      case 'receive':
        if (source !== null) for (const e of a.entries) node.receivedFrom.set(e.index, source);
        return;
      case 'apply':
        return this.applyEntries(node, a.entries, source);
      case 'restoreChunk': {
        // The recruit restores chunk by chunk (as the node's kv front does): each costs time
        // in proportion to its size.
        this.snapshotStall(node, a.data.length, 'install');
        if (a.chunk === 0 || node.restoring === null) {
          const fresh: Service = new ReplicatedService(this.machine(), this.mode);
          node.restoring = { service: fresh, stream: fresh.restoreStream() };
        }
        const { service, stream } = node.restoring;
        try {
          stream.add(a.data);
          if (!a.last) return;
          node.restoring = null;
          stream.finish();
        } catch (e) {
          node.restoring = null;
          this.fail('divergence', `${node.id} snapshot at ${a.index} does not restore: ${e instanceof Error ? e.message : String(e)}`);
          return;
        }
        node.service = service;
        node.digests.clear();
        node.digests.set(a.index, service.digest());
        const want = source ? this.digestsOf.get(`${source.node}#${source.inc}`)?.get(a.index) : undefined;
        if (want !== service.digest()) this.fail('divergence', `${node.id} snapshot at ${a.index} differs from ${source?.node}'s state`);
        this.stats.recruits++;
        return;
      }
      case 'takeSnapshot': {
        // A snapshot stream (copy-on-write), begun now and fed to the core a few chunks per
        // tick while the node keeps serving, as the node driver does.
        node.producing?.stream.close();
        const stream = node.service.snapshotStream();
        node.producing = { index: node.replica.lastIndex, stream, ahead: stream.next(SIM_CORE.snapshotChunkBytes ?? 48) };
        this.pumpSnapshot(node, 1);
        return;
      }
      case 'role':
        this.trace(`${node.id} role ${a.role} ${formatView(a.view)}: ${a.reason}`);
        if (a.role === 'primary' && a.reason.includes('suspecting')) this.stats.goLives++;
        if (a.role === 'halted') {
          // A halted replica discards its state and rejoins later as a fresh spare (durable: often kept).
          this.crash(node, this.rng.int(50, 200), undefined, true);
        } else if (a.role !== 'primary') {
          this.drain(node);
        }
        return;
      case 'log':
        if (a.event !== 'ignoring' && a.event !== 'role') this.trace(`${node.id} ${a.event} ${JSON.stringify(a.fields)}`);
        if (a.event === 'recruit-handover') this.strikeHandover(node, String(a.fields['recruit']));
        if (a.event === 'recruit-resume') this.stats.resumes++;
        if (a.event === 'resume-refused') this.stats.resumesRefused++;
        if (a.event === 'recovered-view') this.stats.recoveredViews++;
        return;
      case 'switchover':
        // The trace has the core's log record of it; count the ones that landed.
        if (a.outcome === 'done') this.stats.switchoversDone++;
        return;
    }
  }

  /**
   * Apply entries to the node's guest. Each entry is checked against the state of the node it
   * came from (a backup going live applies entries its old primary sent; one that follows a new
   * primary, entries from both; a durable node's restart, what its disk held).
   */
  private applyEntries(node: SimNode, entries: readonly Entry[], source: { node: string; inc: number } | null): void {
    for (const e of entries) {
      const from = node.receivedFrom.get(e.index) ?? source;
      node.receivedFrom.delete(e.index);
      const ref = from ? this.digestsOf.get(`${from.node}#${from.inc}`) : undefined;
      try {
        node.service.applyEntry(e.payload);
      } catch (err) {
        // Only a state that already diverged refuses an entry its primary applied.
        this.fail('divergence', `${node.id} could not apply ${e.index}: ${err instanceof Error ? err.message : String(err)}`);
        return;
      }
      const d = node.service.digest();
      node.digests.set(e.index, d);
      const want = ref?.get(e.index);
      if (want === undefined) this.fail('divergence', `${node.id} applied ${e.index} from ${from?.node ?? '?'}, which has no state at that index`);
      else if (want !== d) this.fail('divergence', `${node.id}#${node.inc} state at index ${e.index} differs from ${from?.node}'s`);
    }
  }

  // -------------------------------------------------------------------------------------
  // Clients: one operation at a time, retried with the same seq until answered

  private wakeClient(c: SimClient, inMs: number): void {
    c.token++;
    this.q.push(this.now + inMs, { k: 'client', client: c.process, token: c.token });
  }

  private onClientWake(i: number, token: number): void {
    const c = this.clients[i]!;
    if (c.token !== token || c.done) return;
    if (c.pending !== null) {
      // Timed out (or told to retry): try again with the same seq.
      this.sendRequest(c);
      return;
    }
    if (this.healed && c.opsAfterHeal >= OPS_AFTER_HEAL) {
      c.done = true;
      this.trace(`${c.id} done`);
      return;
    }
    this.invoke(c);
  }

  private machine(): StateMachine<KvCommand, KvReply, unknown> {
    const m = this.service === null ? (createKv() as StateMachine<KvCommand, KvReply, unknown>) : this.service.machine();
    return this.poison ? poisonable(m) : m;
  }

  private invoke(c: SimClient): void {
    const r = this.rng;
    if (this.poison && c.process === 0 && this.poisonRng.chance(0.15)) {
      c.counter++;
      c.seq++;
      c.pending = { f: 'set', key: POISON_COMMAND, value: null, seq: c.seq, invokedAt: this.now, command: [POISON_COMMAND] };
      this.stats.opsInvoked++;
      this.trace(`${c.id} invoke ${POISON_COMMAND}`);
      this.sendRequest(c);
      return;
    }
    if (this.service !== null) {
      c.counter++;
      c.seq++;
      const command = this.service.command((n) => r.int(0, n - 1), c.id, c.counter);
      c.pending = { f: 'set', key: command[0] ?? '', value: null, seq: c.seq, invokedAt: this.now, command };
      this.stats.opsInvoked++;
      this.trace(`${c.id} invoke ${command.join(' ').slice(0, 80)}`);
      this.sendRequest(c);
      return;
    }
    const appendKey = r.chance(0.35);
    const key = appendKey ? r.pick(APPEND_KEYS) : r.pick(MIXED_KEYS);
    const roll = r.float();
    let f: OpF;
    if (appendKey) f = roll < 0.5 ? 'get' : 'append';
    else f = roll < 0.4 ? 'get' : roll < 0.65 ? 'set' : roll < 0.9 ? 'append' : 'del';
    c.counter++;
    const value = f === 'set' ? `${c.id}.${c.counter}` : f === 'append' ? `${c.id}.${c.counter};` : null;
    c.seq++;
    c.pending = { f, key, value, seq: c.seq, invokedAt: this.now };
    this.stats.opsInvoked++;
    this.history.push({ process: c.process, type: 'invoke', f, key, value, time: this.now });
    this.trace(`${c.id} invoke ${f} ${key} ${value ?? ''}`);
    this.sendRequest(c);
  }

  private sendRequest(c: SimClient): void {
    const p = c.pending!;
    const command: KvCommand = p.command ??
      (p.f === 'get' ? ['GET', p.key] : p.f === 'del' ? ['DEL', p.key] : [p.f === 'set' ? 'SET' : 'APPEND', p.key, p.value!]);
    const target = this.nodeIds[c.target]!;
    if (this.nodes.get(target)?.killed) {
      // A killed node's port refuses connections: the client knows at once and tries the next.
      c.target = (c.target + 1) % this.nodeIds.length;
      this.wakeClient(c, 20);
      return;
    }
    this.send(c.id, 0, target, { t: 'request', seq: p.seq, command });
    this.wakeClient(c, CLIENT_TIMEOUT_MS + this.rng.int(0, 50));
  }

  private clientReceive(c: SimClient, d: Delivery): void {
    const p = c.pending;
    const m = d.msg;
    if (p === null || (m.t !== 'reply' && m.t !== 'redirect') || m.seq !== p.seq) return;
    if (m.t === 'redirect') {
      const hinted = m.primary === null ? -1 : this.nodeIds.indexOf(m.primary);
      c.target = hinted >= 0 && hinted !== c.target ? hinted : (c.target + 1) % this.nodeIds.length;
      this.wakeClient(c, hinted >= 0 ? 1 : 20);
      return;
    }
    const reply = m.reply;
    if (p.command !== undefined) {
      // A service's error replies are its answers (NOFUNDS ...); only the harness's own are failures.
      if (reply.kind === 'error' && /^ERR internal error/.test(reply.message)) this.fail('client-error', `${c.id} ${p.key}: ${reply.message}`);
      this.trace(`${c.id} ok ${p.key} ${reply.kind} from ${d.from}`);
      this.stats.opsCompleted++;
      this.acked++;
      c.pending = null;
      if (this.healed) c.opsAfterHeal++;
      this.wakeClient(c, this.rng.int(0, 20));
      return;
    }
    let value: string | null = null;
    if (reply.kind === 'error') {
      this.fail('client-error', `${c.id} ${p.f} ${p.key}: ${reply.message}`);
    } else if (p.f === 'get') {
      value = reply.kind === 'bulk' ? reply.value : null;
    }
    this.history.push({ process: c.process, type: 'ok', f: p.f, key: p.key, value: p.f === 'get' ? value : p.value, time: this.now });
    this.trace(`${c.id} ok ${p.f} ${p.key} ${p.f === 'get' ? String(value) : ''} from ${d.from}`);
    this.stats.opsCompleted++;
    c.pending = null;
    if (this.healed) c.opsAfterHeal++;
    this.wakeClient(c, this.rng.int(0, 20));
  }

  // -------------------------------------------------------------------------------------
  // Faults (safety phase) and healing (liveness phase)

  private liveNodes(): SimNode[] {
    return [...this.nodes.values()].filter((n) => n.alive);
  }

  /** Does `node` hold replicated state (so losing it may lose data)? */
  private holdsState(node: SimNode): boolean {
    // A primary broken by the poison is about to stop: it holds nothing to count on.
    if (!node.alive || node.brokenOutput !== null) return false;
    const r = node.replica;
    return r.role === 'primary' || r.role === 'backup' || (r.role === 'spare' && r.following !== null);
  }

  /**
   * Crashing `nodes` (restarting later, or never) must leave a holder of each view the arbiter
   * may hold: its current view, and that of a test-and-set in flight of a crashing node (it may
   * land after the crash and make the dead node the only member). A holder is a live member
   * holding the state; with both primary and backup lost the cluster rightly refuses service
   * forever (a scenario test covers that), and the liveness check could not be made.
   *
   * With durable restarts a member that crashes holding the state and restarts with its disk
   * holds it too: it comes back while the view still names it (no live member is left to change
   * it), so it starts recovered and goes live from its disk, as a real node after kill -9 of
   * every node at once. So when no live holder is left the crash may still happen, and the
   * set returned names the crashing holders whose disk it must keep (the disk goes only when
   * another copy of the state is left, as the nemesis never crashes the last live holder
   * without one). Returns null when the crash must not happen, the empty set when any disk may go.
   */
  private mayCrashAll(crashing: readonly SimNode[], restarting: boolean): ReadonlySet<SimNode> | null {
    const views = [this.view];
    for (const node of crashing) if (node.replica.cas !== null) views.push(node.replica.cas.next);
    const gone = new Set(crashing.map((n) => n.id));
    const keeps = new Set<SimNode>();
    for (const v of views) {
      const members = [v.primary, ...v.backups].filter((id): id is string => id !== null);
      if (members.some((id) => !gone.has(id) && this.holdsState(this.nodes.get(id)!))) continue;
      if (this.durable === null || !restarting) return null;
      const onDisk = crashing.find((n) => members.includes(n.id) && this.holdsState(n) && this.diskOf(n, true) !== null);
      if (onDisk === undefined) return null;
      keeps.add(onDisk);
    }
    if (keeps.size > 0) this.stats.diskOnlyCrashes++;
    return keeps;
  }

  private block(from: string, to: string): () => void {
    const key = this.connKey(from, to);
    this.blocked.set(key, (this.blocked.get(key) ?? 0) + 1);
    this.breakConn(from, to);
    return () => {
      this.blocked.set(key, (this.blocked.get(key) ?? 1) - 1);
    };
  }

  private later(ms: number, what: string, undo: () => void): void {
    this.q.push(this.now + ms, { k: 'undo', undo, what });
  }

  private injectFault(): void {
    const r = this.rng;
    const kind = r.pick(this.faultKinds);
    const live = this.liveNodes();
    if (live.length === 0) return;
    // Half the time aim at the primary or one of its backups: that is where the protocol is tested.
    const v = this.view;
    const members = live.filter((n) => n.id === v.primary || isBackupIn(v, n.id));
    const node = members.length > 0 && r.chance(0.5) ? r.pick(members) : r.pick(live);
    // The primary's partner is one of its backups (drawn only when there are several, so a
    // one-backup run draws as before); a backup's is the primary.
    const partner = node.id === v.primary ? (v.backups.length > 1 ? r.pick(v.backups) : (v.backups[0] ?? null)) : v.primary;
    const others = this.nodeIds.filter((id) => id !== node.id);
    const other = partner !== null && partner !== node.id && r.chance(0.5) ? partner : r.pick(others);
    const duration = r.pick([r.int(20, 120), r.int(100, 400), r.int(300, 1200)]);
    switch (kind) {
      case 'crash': {
        const keeps = this.mayCrashAll([node], true);
        if (keeps === null) return;
        this.stats.crashes++;
        this.crash(node, r.int(50, 600), keeps);
        return;
      }
      case 'kill':
        // One node at most stays down per backup kept (one in a one-backup cluster), so the
        // cluster keeps a primary and a spare (with 2 backups, 4 nodes: two may be lost for good).
        if ([...this.nodes.values()].filter((n) => n.killed).length >= this.backups || this.mayCrashAll([node], false) === null) return;
        this.stats.crashes++;
        this.crash(node, null);
        return;
      case 'stall':
        if (node.paused) return;
        this.stats.stalls++;
        this.stall(node, r.pick([r.int(50, 200), r.int(150, 800)]), 'busy');
        return;
      case 'pause':
        if (node.paused) return;
        this.stats.pauses++;
        node.paused = true;
        this.trace(`pause ${node.id} for ${duration}`);
        this.later(duration, `resume ${node.id}`, () => this.resume(node));
        return;
      case 'isolate': {
        this.stats.partitions++;
        this.trace(`isolate ${node.id} from replicas for ${duration}`);
        const undos = this.nodeIds.filter((id) => id !== node.id).flatMap((id) => [this.block(node.id, id), this.block(id, node.id)]);
        this.later(duration, `isolate ${node.id}`, () => undos.forEach((u) => u()));
        return;
      }
      case 'one-way': {
        this.stats.partitions++;
        this.trace(`drop ${node.id}>${other} for ${duration}`);
        this.later(duration, `drop ${node.id}>${other}`, this.block(node.id, other));
        return;
      }
      case 'arbiter-link': {
        const dir = r.pick(['both', 'requests', 'answers']);
        this.trace(`cut ${node.id}<->arbiter (${dir}) for ${duration}`);
        const undos: (() => void)[] = [];
        if (dir !== 'answers') undos.push(this.block(node.id, 'arbiter'));
        if (dir !== 'requests') undos.push(this.block('arbiter', node.id));
        this.later(duration, `cut ${node.id}<->arbiter`, () => undos.forEach((u) => u()));
        return;
      }
      case 'conn-break':
        this.trace(`break ${node.id}>${other}`);
        this.breakConn(node.id, other);
        return;
      case 'arbiter-slow':
        this.trace(`arbiter slow for ${duration}`);
        this.arbiterSlowUntil = Math.max(this.arbiterSlowUntil, this.now + duration);
        return;
      case 'arbiter-down': {
        this.trace(`arbiter down for ${duration}`);
        const undos = this.nodeIds.flatMap((id) => [this.block(id, 'arbiter'), this.block('arbiter', id)]);
        this.later(duration, 'arbiter down', () => undos.forEach((u) => u()));
        return;
      }
      case 'client-link': {
        const c = r.pick(this.clients);
        this.trace(`drop ${node.id}>${c.id} for ${duration}`);
        this.later(duration, `drop ${node.id}>${c.id}`, this.block(node.id, c.id));
        return;
      }
    }
  }

  /**
   * One forged message to a live node, as if from another node: a `refuse`, a frame (a
   * heartbeat: no entries) or an ack, naming an epoch newer than the arbiter's, sometimes
   * just past it, sometimes absurd. Half the time it aims at the primary or the backup.
   */
  private forgeOne(): void {
    const r = this.forgeRng;
    const live = this.liveNodes();
    if (live.length === 0) return;
    const members = live.filter((n) => n.id === this.view.primary || isBackupIn(this.view, n.id));
    const target = members.length > 0 && r.chance(0.5) ? r.pick(members) : r.pick(live);
    const from = r.pick(this.nodeIds.filter((id) => id !== target.id));
    const epoch = this.view.epoch + (r.chance(0.5) ? r.int(1, 3) : r.int(4, 1_000_000));
    let msg: PeerMessage;
    const kind = r.pick(['refuse', 'refuse', 'frame', 'ack'] as const);
    if (kind === 'refuse') {
      msg = { type: 'refuse', epoch, reason: 'forged' };
    } else if (kind === 'frame') {
      const backup = r.pick([target.id, null, r.pick(this.nodeIds)]);
      const backups = backup === null || backup === from ? [] : [backup];
      // With several backups, sometimes a second one (drawn only then: one-backup runs draw as before).
      if (this.backups > 1 && r.chance(0.5)) {
        const second = r.pick(this.nodeIds);
        if (second !== from && !backups.includes(second)) backups.push(second);
      }
      const last = target.replica.lastIndex;
      // Which log it claims: none, the target's own, or one of this epoch; a commit index up to its end.
      const term = r.pick([0, Math.min(epoch, target.replica.logTerm), epoch]);
      const baseTerm = term === 0 ? 0 : r.pick([0, target.replica.logTerm, term - 1].filter((t) => t < term));
      const log = { commitIndex: r.int(0, last), term, baseIndex: r.int(0, last), baseTerm };
      msg = { type: 'frame', view: { epoch, primary: from, backups }, seq: r.int(1, 1000), prevIndex: last, payloads: [], primaryIndex: last, pendingView: null, ...log };
    } else {
      msg = { type: 'ack', epoch, seq: 1, ackedIndex: 0, gap: false };
    }
    this.trace(`forge ${from}>${target.id} ${describe(msg)}`);
    this.send(from, this.nodes.get(from)?.inc ?? 0, target.id, { t: 'peer', msg });
  }

  /**
   * An operator's switchover: usually asked of the primary for its backup; sometimes of another
   * node, or naming a node that is not the backup (both refused, nothing changes).
   */
  private askSwitchover(): void {
    const r = this.switchRng;
    const live = this.liveNodes().filter((n) => !n.paused);
    if (live.length === 0) return;
    const primary = live.find((n) => n.replica.role === 'primary' && n.replica.view.epoch === this.view.epoch);
    const node = primary !== undefined && r.chance(0.85) ? primary : r.pick(live);
    const to = r.chance(0.8) ? null : r.pick(this.nodeIds);
    this.stats.switchoversAsked++;
    this.trace(`switchover asked of ${node.id}${to === null ? '' : ` to ${to}`}`);
    // A primary broken by the poison refuses (as the node does): as a backup it would diverge.
    if (node.brokenOutput !== null) return this.trace(`${node.id} broken: switchover refused`);
    this.stepNode(node, { type: 'switchover', to }, this.now, null);
    this.stepNode(node, { type: 'flush' }, this.now, null);
  }

  /**
   * double-crash (issue 11 item 4: "two nodes can die at once and nothing acknowledged is
   * lost"): the primary of a view with two backups crashes together with one of them. Usually
   * the one that acked the most (the primary's own count) goes, and often the other's link
   * from the primary is cut first for less than the failure timeout, so the backup left lags:
   * it must still hold every entry of a released output, since outputs wait for every backup.
   */
  private doubleCrash(): void {
    const r = this.doubleRng;
    const v = this.view;
    const primary = v.primary === null ? undefined : this.nodes.get(v.primary);
    if (primary === undefined || !primary.alive || primary.paused || primary.replica.role !== 'primary' || !sameView(primary.replica.view, v)) return;
    const backups = v.backups.map((id) => this.nodes.get(id)).filter((b): b is SimNode => b !== undefined && b.alive && b.replica.role === 'backup' && sameView(b.replica.view, v));
    if (backups.length < 2) return;
    const acked = (b: SimNode): number => primary.replica.followers.get(b.id)?.ackedIndex ?? -1;
    const victim = r.chance(0.7) ? backups.reduce((a, b) => (acked(b) > acked(a) ? b : a)) : r.pick(backups);
    const survivor = r.pick(backups.filter((b) => b !== victim));
    const [pInc, vInc] = [primary.inc, victim.inc];
    const strike = (): void => {
      if (!primary.alive || primary.inc !== pInc || !victim.alive || victim.inc !== vInc) return;
      const keeps = this.mayCrashAll([primary, victim], true);
      if (keeps === null) return this.trace(`double-crash ${primary.id}+${victim.id} skipped: no holder would be left`);
      this.trace(`double-crash ${primary.id}+${victim.id} (acked ${acked(victim)}; ${survivor.id} acked ${acked(survivor)})`);
      this.stats.crashes += 2;
      this.stats.doubleCrashes++;
      this.crash(primary, r.int(50, 600), keeps);
      this.crash(victim, r.int(50, 600), keeps);
    };
    if (!r.chance(0.6)) return strike();
    // Cut the primary's frames to the survivor for a while, and strike during the cut.
    const lagMs = r.int(20, Math.floor(SIM_CORE.failureTimeoutMs * 0.8));
    const atMs = r.int(5, lagMs);
    this.trace(`drop ${primary.id}>${survivor.id} for ${lagMs} (double-crash in ${atMs})`);
    this.later(lagMs, `drop ${primary.id}>${survivor.id}`, this.block(primary.id, survivor.id));
    this.later(atMs, `double-crash ${primary.id}+${victim.id}`, strike);
  }

  /**
   * power-loss (durable restarts): every live node crashes at once, as with kill -9 of the whole
   * cluster, and each restarts after a while, with its disk (surely, for the holders mayCrashAll
   * names): nothing acknowledged may be lost, and the cluster must serve again once they are back.
   */
  private powerLoss(): void {
    const r = this.durableRng;
    const live = this.liveNodes();
    if (live.length === 0) return;
    const keeps = this.mayCrashAll(live, true);
    if (keeps === null) return this.trace(`power-loss skipped: no disk would hold the state`);
    this.trace(`power-loss ${live.map((n) => n.id).join('+')} (disks surely kept: ${[...keeps].map((n) => n.id).join('+') || 'none'})`);
    this.stats.powerLosses++;
    this.stats.crashes += live.length;
    for (const n of live) this.crash(n, r.int(50, 600), keeps);
  }

  /**
   * A handover is where recruit bugs live (issue 16): sometimes, a few milliseconds in, the
   * primary stalls, or the recruit's acks stop reaching it for a while.
   */
  private strikeHandover(primary: SimNode, recruit: string): void {
    const r = this.rng;
    const kinds = (['stall', 'one-way'] as const).filter((k) => this.faultKinds.includes(k));
    if (this.healed || kinds.length === 0 || !r.chance(0.3)) return;
    const kind = r.pick(kinds);
    const inc = primary.inc;
    const ms = r.int(100, 600);
    if (kind === 'stall') {
      this.later(r.int(0, 20), `stall ${primary.id} at handover`, () => {
        if (primary.alive && primary.inc === inc && !primary.paused) this.stall(primary, ms, 'busy at handover');
      });
    } else {
      this.later(r.int(0, 20), `drop ${recruit}>${primary.id} at handover`, () => {
        this.trace(`drop ${recruit}>${primary.id} for ${ms}`);
        this.later(ms, `drop ${recruit}>${primary.id}`, this.block(recruit, primary.id));
      });
    }
  }

  /** The node's event loop is busy for `ms` from now (or from the end of a stall under way). */
  private stall(node: SimNode, ms: number, why: string): void {
    if (ms <= 0) return;
    node.busyUntil = Math.max(this.now, node.busyUntil) + ms;
    this.trace(`stall ${node.id} for ${ms.toFixed(1)} (${why})`);
    this.q.push(node.busyUntil, { k: 'unstall', node: node.id, inc: node.inc });
  }

  /** Feed up to `max` chunks of the node's snapshot stream to its core, as its window allows. */
  private pumpSnapshot(node: SimNode, max: number): void {
    for (let n = 0; n < max && node.producing !== null && node.alive; n++) {
      const p = node.producing;
      if (node.replica.snapshotFor === null || node.replica.role !== 'primary') {
        p.stream.close(); // the recruit was abandoned
        node.producing = null;
        return;
      }
      if (snapshotChunksWanted(node.replica) === 0) return;
      const data = p.ahead ?? new Uint8Array(0);
      p.ahead = p.ahead === null ? null : p.stream.next(SIM_CORE.snapshotChunkBytes ?? 48);
      const last = p.ahead === null;
      if (last) node.producing = null;
      this.snapshotStall(node, data.length, 'take');
      this.stepNode(node, { type: 'snapshotChunk', index: p.index, data, last }, this.now, null);
    }
  }

  /**
   * A snapshot chunk costs time in proportion to its size, up to a tenth of the failure
   * timeout: a driver streams a snapshot in slices that short (the node: 4 ms per event-loop
   * turn plus one 64 KiB piece, against a 500 ms timeout).
   */
  private snapshotStall(node: SimNode, bytes: number, what: 'take' | 'install'): void {
    const ms = Math.min((bytes / 1024) * this.snapshotMsPerKiB, SIM_CORE.failureTimeoutMs / 10);
    if (ms > 0) this.stall(node, ms, `${what} a snapshot chunk of ${bytes} bytes`);
  }

  /**
   * The end of a stall. Node runs expired timers before it reads the sockets that filled up
   * meanwhile, so the tick comes first: the replica sees the silence before the messages.
   */
  private unstall(node: SimNode): void {
    if (!node.alive || node.paused || this.now < node.busyUntil) return;
    this.trace(`unstall ${node.id}`);
    this.stepNode(node, { type: 'tick' }, this.now, null);
    this.receiveQueued(node);
  }

  /** Deliver what reached a paused or stalled node meanwhile (unless its connection broke). */
  private receiveQueued(node: SimNode): void {
    const queued = node.pausedQueue;
    node.pausedQueue = [];
    for (const d of queued) if (node.alive && this.conn(d.from, d.to).id === d.conn) this.nodeReceive(node, d);
  }

  private resume(node: SimNode): void {
    if (!node.alive || !node.paused) return;
    node.paused = false;
    this.trace(`resume ${node.id}`);
    if (this.now < node.busyUntil) return; // the end of its stall delivers what waited
    // It wakes believing what it believed: first the messages that waited, then the time.
    this.receiveQueued(node);
    if (node.alive) this.stepNode(node, { type: 'tick' }, this.now, null);
  }

  private heal(): void {
    this.trace('heal');
    this.healed = true;
    this.blocked.clear();
    this.arbiterSlowUntil = -1;
    for (const node of this.nodes.values()) {
      if (node.paused) this.resume(node);
      else if (!node.alive && !node.killed) this.startNode(node.id, node.inc + 1, 0);
    }
  }

  // -------------------------------------------------------------------------------------
  // Checks at the end of a run

  private finalChecks(): void {
    for (const c of this.clients) {
      if (!c.done) {
        const p = c.pending;
        this.fail(
          'liveness',
          `${c.id} did not finish within ${this.livenessMs} ms of healing` +
            (p ? `: ${p.f} ${p.key} pending since ${p.invokedAt.toFixed(1)}` : ''),
        );
      }
    }
    if (this.backupSeenAt === null) {
      const roles = [...this.nodes.values()].map((n) => `${n.id}:${n.alive ? n.replica.role : 'down'}`).join(' ');
      this.fail(
        'backup-liveness',
        `no backup in the view within ${this.livenessMs} ms of healing, with a live primary and a spare (view ${formatView(this.view)}; ${roles})`,
      );
    }
    this.checkReleases();
    this.checkStateKept();
    this.checkAppends();
    const lin = checkHistory(this.history, { maxStatesPerKey: 200_000 });
    this.stats.linearizabilityUnknownKeys = lin.keys.filter((k) => k.timedOut).length;
    if (lin.failure) {
      const f = lin.failure;
      const ops = (f.unplaced ?? [])
        .slice(0, 6)
        .map((o) => `p${o.process} ${o.f}${o.input === null ? '' : ` ${o.input}`}${o.f === 'get' ? ` -> ${String(o.output)}` : ''} [${o.call.toFixed(1)}, ${o.ret.toFixed(1)}]`)
        .join('; ');
      this.fail('linearizability', `key ${f.key} (state ${JSON.stringify(f.state ?? null)}): cannot place ${ops}`);
    }
  }

  /**
   * After healing, with at least two live nodes, the arbiter's view must come to name a live
   * backup that acts as one, under a live primary of that view: no sequence of timeouts may
   * leave the primary alone while a spare is alive and reachable.
   */
  /**
   * The poison stops the primary it breaks, so, like the nemesis, it must not take the last
   * holder of the state: it only lands on a primary whose view has a live backup acting as
   * one and no test-and-set in flight (otherwise a broken primary may take every copy with
   * it, and no check could tell a bug from that double failure). Elsewhere it is turned away
   * as if by a redirect.
   */
  private poisonMayBreak(node: SimNode): boolean {
    const v = node.replica.view;
    // A test-and-set of its own in flight (dropping a silent backup) may land after it stops,
    // leaving a view with no holder: the same double fault the nemesis keeps out of crashes.
    if (node.replica.cas !== null) return false;
    // Every backup of its view is live and acts as one in that very view (with several, a
    // dead one would be dropped by a test-and-set the broken primary refuses to make).
    return v.backups.length > 0 && v.backups.every((id) => {
      const b = this.nodes.get(id);
      return b !== undefined && b.alive && b.replica.role === 'backup' && b.replica.view.epoch === v.epoch && sameView(b.replica.view, v);
    });
  }

  /**
   * The arbiter's view has a live primary acting as one and as many backups acting as such
   * as the cluster keeps, or as the live nodes allow (a primary and every other live node).
   */
  private hasBackup(): boolean {
    const v = this.view;
    const wanted = Math.min(this.backups, this.liveNodes().length - 1);
    if (wanted <= 0) return true;
    const acts = (id: string | null, role: string): boolean => {
      const n = id === null ? undefined : this.nodes.get(id);
      return n !== undefined && n.alive && n.replica.role === role && n.replica.view.epoch === v.epoch;
    };
    return acts(v.primary, 'primary') && v.backups.filter((id) => acts(id, 'backup')).length >= wanted;
  }

  /**
   * Some live node of the arbiter's view still holds the state: the nemesis never crashes the
   * last holder, so if none is left a replica discarded it on its own (a halt on a peer's
   * word: issue 14 item 9), and every acknowledged write went with it.
   */
  private checkStateKept(): void {
    const v = this.view;
    if (v.primary === null) return;
    const holders = [v.primary, ...v.backups].filter((id) => id !== null && this.holdsState(this.nodes.get(id)!));
    const acked = this.acked + this.history.filter((e) => e.type === 'ok' && e.f !== 'get').length;
    if (holders.length === 0 && acked > 0) {
      const roles = [...this.nodes.values()].map((n) => `${n.id}:${n.alive ? n.replica.role : 'down'}`).join(' ');
      this.fail('lost-write', `every copy of the state is gone: no live node of ${formatView(v)} holds it (${roles}); ${acked} acknowledged writes lost`);
    }
  }

  /** At most one node releases in an epoch, and only on authority from before a newer view existed. */
  private checkReleases(): void {
    const byEpoch = new Map<number, string>();
    for (const rel of this.releases) {
      const who = `${rel.node}#${rel.inc}`;
      const first = byEpoch.get(rel.epoch);
      if (first === undefined) byEpoch.set(rel.epoch, who);
      else if (first !== who) this.fail('release-epoch', `${first} and ${who} both released outputs in epoch ${rel.epoch}`);
      const v = this.views.find((x) => x.view.epoch === rel.epoch);
      if (v === undefined || v.view.primary !== rel.node) {
        this.fail('release-epoch', `${who} released in epoch ${rel.epoch}, which the arbiter never gave it`);
        continue;
      }
      const newer = this.views.find((x) => x.view.epoch > rel.epoch && x.view.primary !== rel.node);
      if (newer !== undefined && newer.at < rel.authorityAt && !this.vouched(rel, newer)) {
        this.fail(
          'release-authority',
          `${who} released at ${rel.at.toFixed(1)} in epoch ${rel.epoch} on information from ${rel.authorityAt.toFixed(1)}, after epoch ${newer.view.epoch} (${formatView(newer.view)}) existed at ${newer.at.toFixed(1)}`,
        );
      }
    }
  }

  /**
   * With several backups a release rests on the acks of several guards, and the input that
   * set it off may come late from one that is not the newer view's primary: the ack of a
   * backup left out of it, sent after it existed (rsm seed 29 with switchovers), or a stalled
   * primary's tick that gives up on a recruit in handover, the other guard having acked long
   * before (state-transfer seed 10791). What makes the release safe is that the newer view's
   * primary had acked, before it was one, every entry the released outputs wait for, and that
   * every read among them was held before the newer view existed (its state was current
   * then). A cluster keeping one backup is checked as before: its releases rest on one ack.
   */
  private vouched(rel: Release, newer: { readonly at: number; readonly view: View }): boolean {
    const x = newer.view.primary;
    if (this.backups < 2 || x === null) return false;
    if (rel.freshHeldAt >= newer.at) return false;
    // Its acks of this primary's log in this epoch or an earlier one of the same process (a
    // recruit acks in the epoch it was recruited in): the log's indexes run on across them.
    const acks = this.acksSent.get(`${rel.node}#${rel.inc}|${x}`) ?? [];
    return acks.some((a) => a.at < newer.at && a.epoch <= rel.epoch && a.ackedIndex >= rel.index);
  }

  /** Append-only keys: every acknowledged append is there exactly once, nothing twice. */
  private checkAppends(): void {
    if (this.service !== null) return; // kv's APPEND keys; a service module has none
    const primary = [...this.nodes.values()].find((n) => n.alive && n.replica.role === 'primary' && n.replica.view.epoch === this.view.epoch);
    if (!primary) return; // liveness has already failed if this matters
    const written = new Set<string>();
    for (const e of this.history) if (e.f === 'append' && e.type === 'invoke' && e.value !== null) written.add(e.value);
    for (const key of APPEND_KEYS) {
      const res = primary.service.execute({ clientId: null, seq: 1, ackedBelow: 0, command: ['GET', key] });
      const value = res.reply.kind === 'bulk' ? (res.reply.value ?? '') : '';
      const tokens = value.split(';').filter((t) => t.length > 0).map((t) => `${t};`);
      const seen = new Set<string>();
      for (const t of tokens) {
        if (seen.has(t)) this.fail('duplicate-execution', `append ${t} is in ${key} twice`);
        if (!written.has(t)) this.fail('lost-write', `${key} holds ${t}, which no client appended`);
        seen.add(t);
      }
      for (const e of this.history) {
        if (e.type === 'ok' && e.f === 'append' && e.key === key && e.value !== null && !seen.has(e.value)) {
          this.fail('lost-write', `acknowledged append ${e.value} is missing from ${key}`);
        }
      }
    }
  }
}

function describe(m: PeerMessage): string {
  switch (m.type) {
    case 'frame':
      return `frame e${m.view.epoch} s${m.seq} prev=${m.prevIndex} n=${m.payloads.length}${m.pendingView ? ' handover' : ''}`;
    case 'chunk':
      return `chunk e${m.view.epoch} s${m.seq} at=${m.index} #${m.chunk}${m.last ? ' last' : ''}${m.keep ? ' keep' : ''} ${m.data.length}B`;
    case 'chunkAck':
      return `chunkAck e${m.epoch} s${m.seq} at=${m.index} held=${m.chunks}${m.gap ? ' gap' : ''}`;
    case 'ack':
      return `ack e${m.epoch} s${m.seq} idx=${m.ackedIndex}${m.gap ? ' gap' : ''}`;
    case 'refuse':
      return `refuse e${m.epoch}`;
    case 'join':
      return m.index > 0 ? `join holding ${m.index} of term ${m.logTerm}` : 'join';
  }
}

/** The consecutive entries ending at r.lastIndex that the core holds in memory (see Disk.tail). */
function diskTail(r: Replica): Entry[] {
  const byIndex = new Map<number, Entry>();
  for (const e of r.backlog.slice(r.backlogHead)) byIndex.set(e.index, e);
  for (const e of r.log.slice(r.logHead)) byIndex.set(e.index, e);
  for (const e of r.pending.slice(r.pendingHead)) byIndex.set(e.index, e);
  let from = r.lastIndex + 1;
  while (byIndex.has(from - 1)) from--;
  const tail: Entry[] = [];
  for (let i = from; i <= r.lastIndex; i++) tail.push(byIndex.get(i)!);
  return tail;
}
