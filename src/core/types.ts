// The vocabulary of the replication core: views, entries, peer messages, the inputs the core
// accepts and the actions it asks its driver to carry out (DESIGN.md §2, §4).
//
// The core is sans-IO. A driver (the simulator, or a real node process) owns the network,
// the arbiter, the clock and the guest. It feeds the core Inputs, with the current time, and
// carries out the Actions the core returns, in order. Completed I/O (an arbiter answer, a
// message) comes back as a new Input, never as a callback into the core.

export type NodeId = string;

/**
 * A view: who is primary and who are the backups in an epoch. Views live in the arbiter, the
 * shared storage of VMware FT; the only way to change one is the arbiter's test-and-set
 * `compareAndSet(expected, next)`. Epoch 0 is "no view yet". `backups` lists every backup, in
 * the order they were added (most clusters keep one: `"backups": 1`, the default); an output
 * waits for each of them.
 */
export interface View {
  readonly epoch: number;
  readonly primary: NodeId | null;
  readonly backups: readonly NodeId[];
}

export const NO_VIEW: View = { epoch: 0, primary: null, backups: [] };

export function sameView(a: View, b: View): boolean {
  return a.epoch === b.epoch && a.primary === b.primary && a.backups.length === b.backups.length && a.backups.every((id, i) => b.backups[i] === id);
}

/** The view's first backup (the only one in a one-backup cluster), or null. */
export function firstBackup(v: View): NodeId | null {
  return v.backups[0] ?? null;
}

/** Is `id` one of the view's backups? */
export function isBackupIn(v: View, id: NodeId): boolean {
  return v.backups.includes(id);
}

/** `{epoch 3, primary n1, backup n2}`; with several backups `{epoch 3, primary n1, backups n2,n3}`. */
export function formatView(v: View): string {
  const b = v.backups.length > 1 ? `backups ${v.backups.join(',')}` : `backup ${v.backups[0] ?? '-'}`;
  return `{epoch ${v.epoch}, primary ${v.primary ?? '-'}, ${b}}`;
}

/** A log entry: an opaque guest payload at a log index (indexes start at 1). */
export interface Entry {
  readonly index: number;
  readonly payload: Uint8Array;
}

/**
 * Messages between replicas on the logging channel. The transport supplies the sender's id.
 *
 * frame     primary -> backup or recruit. Entries have consecutive indexes from prevIndex+1.
 *           An empty frame is a heartbeat (and the probe a waiting read needs an ack of).
 *           pendingView: the view the primary is about to propose that makes the receiver
 *           the backup (handover of a recruit), so the receiver can go live if the primary
 *           dies after the test-and-set but before it could say so.
 *           commitIndex: every backup of the view holds the entries up to it, so a follower
 *           applies an entry only once it is at most this (protocol 8; see replica.ts "Several
 *           backups and the commit index"). term, baseIndex, baseTerm: which log the sender's
 *           is (the epoch it went live in, and what it held then, from which log), so a backup
 *           of the previous primary can tell how much of what it holds is in the new one's log.
 * chunk     primary -> recruit: piece number `chunk` (from 0) of the guest state at `index`;
 *           `last` on the final piece. A bounded window of chunks is in flight (§3.1 below).
 *           `keep` (protocol 8): no state comes; the recruit keeps the state it said it holds
 *           in its join (index and log term), which is a prefix of the primary's log, and
 *           takes the entries after it (a durable node back from a restart: replica.ts
 *           "Resuming a spare that kept its state").
 * chunkAck  recruit -> primary: cumulative, `chunks` = how many leading chunks of the
 *           snapshot at `index` the recruit holds; `gap` when the chunk acked came out of
 *           order (one before it was lost) and was dropped.
 * ack       backup/recruit -> primary: cumulative, the highest index held; `gap` when the
 *           frame acked could not be taken because entries before it are missing.
 * refuse    the answer to a frame or ack from an older epoch: "you are stale, I know epoch N".
 * join      a spare asking to be recruited: `index` and `logTerm` say what state it holds
 *           (0 and 0: none; protocol 8, a durable node's disk: entries 1..index of the log of
 *           term `logTerm`), so that the primary may send only the entries after it.
 */
export type PeerMessage =
  | {
      readonly type: 'frame';
      readonly view: View;
      readonly seq: number;
      readonly prevIndex: number;
      readonly payloads: readonly Uint8Array[];
      readonly primaryIndex: number;
      readonly pendingView: View | null;
      /** Every backup of the view holds the entries up to here: a follower applies up to it. */
      readonly commitIndex: number;
      /** The epoch in which the sender went live with this log (its term); 0: not said (protocol 7). */
      readonly term: number;
      /** The sender's last index when it went live: its entries up to here came from the log of `baseTerm`. */
      readonly baseIndex: number;
      /** The term of the log the sender's entries up to baseIndex came from; 0: unknown. */
      readonly baseTerm: number;
    }
  | {
      readonly type: 'chunk';
      readonly view: View;
      readonly seq: number;
      readonly index: number;
      readonly chunk: number;
      readonly last: boolean;
      readonly data: Uint8Array;
      /** Protocol 8: keep the state held at `index` (no data comes; a single chunk, last). */
      readonly keep: boolean;
    }
  | { readonly type: 'chunkAck'; readonly epoch: number; readonly seq: number; readonly index: number; readonly chunks: number; readonly gap: boolean }
  | { readonly type: 'ack'; readonly epoch: number; readonly seq: number; readonly ackedIndex: number; readonly gap: boolean }
  | { readonly type: 'refuse'; readonly epoch: number; readonly reason: string }
  | { readonly type: 'join'; readonly index: number; readonly logTerm: number };

export type Role = 'booting' | 'spare' | 'backup' | 'primary' | 'halted';

/**
 * Switches that plant known bugs, for proving that the simulator's checks catch them. Never
 * set in production; the real node refuses a config that sets them.
 */
export interface PlantedBugs {
  /** Release every output at once, ignoring the backup's acks (§2.2 switched off). */
  readonly noOutputRule?: boolean;
  /** A backup that suspects its primary goes live without winning the test-and-set. */
  readonly liveWithoutArbiter?: boolean;
  /** Reads wait for the backup to ack their index but not for a fresh ack. */
  readonly staleReads?: boolean;
  /** A recruit is made backup as soon as its snapshot is sent, before it holds what was released. */
  readonly earlyBackup?: boolean;
  /**
   * A primary that abandons a recruit it told of a pending view does not fence that view off
   * (issue 16): the recruit keeps asking to go live from a view that never lands, forever.
   */
  readonly noRecruitFence?: boolean;
  /**
   * A replica acts on a peer's word that a newer epoch exists (a `refuse`, a frame or ack of a
   * newer epoch) without confirming it with the arbiter: one forged message halts a primary
   * or a backup and discards its state (issue 14 item 9; the behaviour before the fix).
   */
  readonly haltOnRumour?: boolean;
  /**
   * A recruit that receives a snapshot chunk out of order (one before it was lost) counts it
   * as held and acks it, although it dropped it: its restored state misses a piece.
   */
  readonly ackDroppedChunk?: boolean;
  /**
   * The simulator's node front only (the core ignores it): a primary whose machine a command
   * broke stops at once, without quarantining the command first, and its reply is lost with
   * it, so the client resends the command to the next primary, which it breaks in turn: one
   * "query of death" takes down every node (the behaviour before E_SERVICE_QUARANTINED).
   */
  readonly noQuarantine?: boolean;
  /**
   * A planned switchover swaps the roles at once, before the backup has acked the primary's
   * last index and before every held output went out (issue 11 item 1): the new primary
   * misses entries the old one appended, and the old one, now its backup, diverges.
   */
  readonly switchEarly?: boolean;
  /**
   * With several backups, an output is released once ANY one of them acked its index, not
   * every one (issue 11 item 4): a primary and that backup can die, and the backup that goes
   * live lacks what a client was told.
   */
  readonly releaseOnOneAck?: boolean;
  /**
   * A backup that follows a new primary (the one of the other backups that went live) keeps
   * what it holds without checking it against the new primary's log (its term and base index):
   * entries the old primary sent it and never sent the new one stay in its log in place of the
   * new primary's, and its state diverges.
   */
  readonly noBaseCheck?: boolean;
  /**
   * A primary resumes a spare that kept its state (a durable node back from a restart) whatever
   * log that state is from: entries the spare's disk holds that the primary's log lacks (a
   * deposed primary's never-released ones) stay in its state, and it diverges.
   */
  readonly resumeAnyLog?: boolean;
}

/** The protocol's timing and bounds: what a cluster config sets for every replica. */
export interface CoreTiming {
  /** An idle primary sends a heartbeat frame this often. */
  readonly heartbeatMs: number;
  /** No frame (backup) or ack (primary) for this long = suspected failure. */
  readonly failureTimeoutMs: number;
  /** Resend unacked entries when acks make no progress for this long. */
  readonly retransmitMs: number;
  /** Repeat an unanswered test-and-set after this long. */
  readonly arbiterRetryMs: number;
  /** A spare announces itself (join) this often. */
  readonly joinIntervalMs: number;
  /** Flow control: at most this many entries held for a follower's ack. */
  readonly unackedEntriesMax: number;
  /** Flow control: at most this many payload bytes held for a follower's ack. */
  readonly unackedBytesMax: number;
  /** At most this many entries in one frame. */
  readonly frameEntriesMax: number;
  /** At most this many payload bytes in one frame (a single larger entry goes alone). */
  readonly frameBytesMax: number;
  /** A recruit this close (in entries) to the primary's log starts the handover. */
  readonly catchupEntriesMax: number;
  /** A snapshot goes to a recruit in chunks of at most this many bytes (default 64 KiB). */
  readonly snapshotChunkBytes?: number;
  /** At most this many snapshot chunks sent and not yet acked by the recruit (default 32). */
  readonly snapshotWindowChunks?: number;
}

export const DEFAULT_SNAPSHOT_CHUNK_BYTES = 64 * 1024;
export const DEFAULT_SNAPSHOT_WINDOW_CHUNKS = 32;

export interface CoreConfig extends CoreTiming {
  readonly id: NodeId;
  /** Every replica of the cluster, this one included. */
  readonly nodes: readonly NodeId[];
  /** How many backups a primary keeps in its view, recruiting spares up to it (default 1). */
  readonly backups?: number;
  /**
   * The driver writes received entries to disk as they come and cannot take them back: a
   * backup that would have to drop held entries (following a new primary whose log lacks them)
   * halts instead, to be recruited again.
   */
  readonly durable?: boolean;
  /**
   * Keep about this many bytes (payloads plus 64 per entry) of entries every follower already
   * acked, or a backup already applied, so that a durable node coming back with its disk is sent
   * only the entries after it instead of a snapshot (like Redis's replication backlog).
   * 0 or absent: none kept.
   */
  readonly backlogBytes?: number;
  readonly bugs?: PlantedBugs;
}

export const DEFAULT_TIMING: CoreTiming = {
  heartbeatMs: 50,
  failureTimeoutMs: 500,
  retransmitMs: 150,
  arbiterRetryMs: 250,
  joinIntervalMs: 200,
  unackedEntriesMax: 10_000,
  unackedBytesMax: 16 * 1024 * 1024,
  frameEntriesMax: 1024,
  frameBytesMax: 1024 * 1024,
  catchupEntriesMax: 64,
};

/** What a driver feeds the core. Every input is given with the current time. */
export type Input =
  /**
   * Boot: try the bootstrap test-and-set 0 -> 1; the loser becomes a spare. `recovered` (durable
   * mode): the driver restored the guest from this node's disk up to `index`, and the arbiter's
   * current view is `view`, which names this node (primary or backup). The replica waits as a
   * backup of that view's primary and, after the failure timeout with no frame, asks to go live
   * from it as any backup would (`{e, P, B} -> {e+1, self, -}`): whichever named node comes back
   * first takes over with its disk. A node not named in the view must not be given `recovered`.
   */
  | {
      readonly type: 'start';
      readonly recovered?: {
        readonly index: number;
        readonly view: View;
        readonly logTerm?: number;
        /** The disk's last entries, ending at `index` (kept in the backlog when backlogBytes is set). */
        readonly tail?: readonly Entry[];
      };
      /**
       * Durable mode, a node the view does not name (or one that halted) that kept its disk:
       * the guest holds entries 1..index of the log of term logTerm. It starts as a spare that
       * says so in its joins; the primary sends it only the entries after index when its own
       * log has that prefix and it still keeps them, and a snapshot otherwise.
       */
      readonly kept?: { readonly index: number; readonly logTerm: number };
    }
  /** Time passed: run the failure detector, heartbeats, retransmission, retries. */
  | { readonly type: 'tick' }
  /** A message from a peer, not yet trusted: the core validates it. */
  | { readonly type: 'message'; readonly from: NodeId; readonly msg: unknown }
  /** The arbiter's answer to arbiterCas `requestId`: `view` is the view it now holds. */
  | { readonly type: 'arbiterResult'; readonly requestId: number; readonly ok: boolean; readonly view: View }
  /** The arbiter's answer to arbiterRead `requestId`: the view it holds now. */
  | { readonly type: 'arbiterView'; readonly requestId: number; readonly view: View }
  /** The arbiter could not be asked (unreachable, timed out), for arbiterCas or arbiterRead `requestId`. The core retries later. */
  | { readonly type: 'arbiterFailed'; readonly requestId: number; readonly reason: string }
  /** Primary: append a guest entry. Only when `canAppend` (flow control). */
  | { readonly type: 'append'; readonly payload: Uint8Array }
  /**
   * Primary: an output was produced; it is tagged with the last index appended and released
   * when the output rule allows. `fresh`: a read (or any output computed from state without
   * appending): it also waits for the ack of a frame sent after it was produced.
   */
  | { readonly type: 'hold'; readonly outputId: number; readonly fresh: boolean }
  /** The answer to takeSnapshot: the guest state at `index` (= the last index appended), whole. */
  | { readonly type: 'snapshot'; readonly index: number; readonly data: Uint8Array }
  /**
   * Or the answer to takeSnapshot in pieces: the driver began a snapshot stream consistent at
   * `index` before any other input, and gives its chunks in order as `snapshotChunksWanted`
   * allows, while appends go on; `last` on the final one. Each is sent as one chunk.
   */
  | { readonly type: 'snapshotChunk'; readonly index: number; readonly data: Uint8Array; readonly last: boolean }
  /**
   * An operator asks this replica, the primary, to hand its role to its backup (a planned
   * switchover, issue 11 item 1). `to`: the node that must take over (null: the backup). The
   * answer comes as `switchover` actions: `refused` at once, or `started`, then `done` or
   * `aborted`.
   */
  | { readonly type: 'switchover'; readonly to: NodeId | null }
  /** The end of a batch of inputs: send what is pending (frames are coalesced until then). */
  | { readonly type: 'flush' };

/** Why a switchover was refused or aborted: stable codes (src/errors.ts, docs/ERRORS.md). */
export type SwitchoverCode =
  | 'E_SWITCHOVER_NOT_PRIMARY'
  | 'E_SWITCHOVER_NO_BACKUP'
  | 'E_SWITCHOVER_TARGET'
  | 'E_SWITCHOVER_BUSY'
  | 'E_SWITCHOVER_ABORTED';

export type LogLevel = 'info' | 'warn';

/** What the core asks its driver to do, in the order given. */
export type Action =
  | { readonly type: 'send'; readonly to: NodeId; readonly msg: PeerMessage }
  /**
   * The arbiter's atomic test-and-set: if the arbiter holds exactly `expected`, replace it by
   * `next` (whose epoch is expected.epoch + 1). Views are immutable once written, so this is
   * "create epoch N+1 if epoch N is the newest and is the view I think it is".
   */
  | { readonly type: 'arbiterCas'; readonly requestId: number; readonly expected: View; readonly next: View }
  /**
   * Read the arbiter's current view and give it back as an `arbiterView` input with this
   * `requestId` (or `arbiterFailed`). The core asks before it acts on a peer's word that a
   * newer epoch exists: a peer's word alone never makes a replica discard its state.
   */
  | { readonly type: 'arbiterRead'; readonly requestId: number }
  /** These held outputs may now be released, in this order. */
  | { readonly type: 'release'; readonly outputIds: readonly number[] }
  /** These held outputs will never be released (this node stopped being primary). */
  | { readonly type: 'discard'; readonly outputIds: readonly number[]; readonly reason: string }
  /**
   * Follower: these entries arrived and are held, not yet applied (they are once the commit
   * index reaches them). A durable driver writes them to its log before any ack that follows.
   */
  | { readonly type: 'receive'; readonly entries: readonly Entry[] }
  /** Follower (or a backup going live): apply these entries, received before, to the guest, in order. */
  | { readonly type: 'apply'; readonly entries: readonly Entry[] }
  /**
   * Recruit: piece `chunk` of the snapshot taken at `index`, in order. Chunk 0 starts a new
   * snapshot (the driver drops any partial one); on `last` the guest's state is the primary's
   * at `index`. Chunks arrive one at a time so the recruit can restore incrementally.
   */
  | { readonly type: 'restoreChunk'; readonly index: number; readonly chunk: number; readonly last: boolean; readonly data: Uint8Array }
  /**
   * Primary: take a snapshot of the guest now and give it back as a `snapshot` input, before
   * any other input; or start a snapshot stream now and give it as `snapshotChunk` inputs.
   */
  | { readonly type: 'takeSnapshot' }
  /** The role or view changed. On 'primary' a follower's guest goes live; on 'halted' the driver discards this replica (it may rejoin later as a fresh spare). */
  | { readonly type: 'role'; readonly role: Role; readonly view: View; readonly reason: string }
  /**
   * The course of a switchover asked with the `switchover` input. `refused` (nothing changed)
   * and `aborted` (the primary serves on, or halted if the view moved under it) carry a code;
   * `done`: the test-and-set landed, `view` names the new primary and this replica is its backup.
   */
  | { readonly type: 'switchover'; readonly outcome: 'started' | 'done' | 'refused' | 'aborted'; readonly code: SwitchoverCode | null; readonly reason: string; readonly view: View }
  /** A structured log record. */
  | { readonly type: 'log'; readonly level: LogLevel; readonly event: string; readonly fields: Readonly<Record<string, string | number | boolean | null>> };
