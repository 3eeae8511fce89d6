// One replica of the primary/backup protocol, as a sans-IO state machine (DESIGN.md §2).
//
// `step(replica, input, nowMs)` is the only entry point that changes a replica; it returns
// the actions the driver must carry out, in order. Nothing here does I/O, reads a clock,
// draws randomness or waits: the same inputs give the same actions, which is what lets the
// simulator reproduce a whole cluster run from one seed.
//
// Where the paper lives (Scales et al. 2010):
//   §2.1 logging channel      sendFrames / onFrame / onAck: frames of consecutive entries,
//                             cumulative acks, heartbeats when idle, go-back-N retransmit.
//   §2.2 output rule          hold / tryRelease: an output waits until every guard (the
//                             backup, or a recruit being handed over) acked its index; a
//                             read-like output also waits for the ack of a frame sent after it.
//   §2.3 detecting failure    tick: no frame (backup) or ack (primary) for failureTimeoutMs
//                             of our own running time (a stall of ours is not the peer's
//                             silence). Suspicion never changes roles; only the test-and-set does.
//   §2.3 shared-storage       startCas / onArbiterResult: go live when won, halt when lost,
//        test-and-set         wait (retrying) while the arbiter does not answer.
//   (refinement)              rumour / onArbiterView: a peer's word that a newer epoch exists
//                             is read back from the arbiter before the replica halts on it.
//   §3.1 FT VMotion           startRecruit / advanceRecruit: snapshot at i while serving,
//        (new backup)         sent in chunks (sendChunks / onChunk / onChunkAck: a bounded
//                             window in flight, cumulative chunk acks, go-back-N resend),
//                             entries after i behind them, handover (hold outputs for the
//                             recruit too, wait until it holds everything released), then the
//                             test-and-set. A recruit is dropped only when it makes no progress.
//   §3.3 flow control         canAppend: bounded unacked entries and bytes.

import { assert, assertNever } from './assert.js';
import {
  DEFAULT_SNAPSHOT_CHUNK_BYTES,
  DEFAULT_SNAPSHOT_WINDOW_CHUNKS,
  NO_VIEW,
  firstBackup,
  formatView,
  isBackupIn,
  sameView,
  type Action,
  type CoreConfig,
  type Entry,
  type Input,
  type LogLevel,
  type NodeId,
  type PeerMessage,
  type Role,
  type SwitchoverCode,
  type View,
} from './types.js';
import { validateMessage } from './validate.js';

/** The primary's record of one follower on its logging channel. */
interface Follower {
  readonly id: NodeId;
  /** backup: in the view. recruit: a spare being made a backup. */
  kind: 'backup' | 'recruit';
  /** Recruits only: snapshot sent, catching up on entries, or handover (outputs wait for it). */
  phase: 'snapshot' | 'catchup' | 'handover';
  /** The next index to send. */
  nextIndex: number;
  /** The highest index the follower acked (cumulative). */
  ackedIndex: number;
  /** The highest frame seq the follower acked. */
  ackedSeq: number;
  /** The highest frame seq sent to the follower (0: not even the snapshot yet). */
  sentSeq: number;
  lastSendMs: number;
  lastAckMs: number;
  /** When ackedIndex last grew (or entries were last resent): drives retransmission. */
  lastProgressMs: number;
  /** Gap acks for frames older than this are ignored (a resend is already under way). */
  rewindSeq: number;
  /** Recruits: the index of the snapshot they started from (entries before it are not needed). */
  readonly snapshotIndex: number;
  /**
   * Recruits resumed from the state they kept (a durable node's disk): the log term they said
   * it is of (their snapshot is that state, kept: one empty chunk with `keep`); 0: a snapshot.
   */
  readonly resumeTerm: number;
  /**
   * A backup kept from the view we went live from: ackedIndex is what it must hold (what we had
   * applied), until its first ack says what it does hold.
   */
  inherited: boolean;
  /** Recruits in handover: the seq of the first frame that told them of the pending view. */
  handoverSeq: number;
  /** Recruits: when the snapshot was handed to us (for the round trip logged at catch-up). */
  snapshotSentMs: number;
  /** Recruits: acks of frames sent before this seq are from an earlier attempt and ignored. */
  startSeq: number;
  /**
   * Recruits: the snapshot's chunks (views of the driver's bytes), as far as the driver has
   * produced them; acked ones are let go (replaced by an empty array).
   */
  chunks: Uint8Array[];
  /** Recruits: the driver gave the last chunk. */
  sealed: boolean;
  /** Recruits: the snapshot's bytes so far, for the logs. */
  snapshotBytes: number;
  /** Recruits: the next chunk to send. */
  nextChunk: number;
  /** Recruits: how many leading chunks the recruit acked (cumulative). */
  chunksAcked: number;
  /** Recruits: chunk gap acks for chunks sent before this seq are ignored (a resend is under way). */
  chunkRewindSeq: number;
  /** Recruits: when chunksAcked last grew (or chunks were last resent): drives chunk resends. */
  chunkResendMs: number;
  /**
   * Recruits: when the recruit last made progress (a new chunk or entry acked). A recruit is
   * abandoned only after failureTimeoutMs without progress, however big the snapshot.
   */
  progressMs: number;
  /** Recruits: the longest wait between two steps of progress during the snapshot. */
  progressGapMaxMs: number;
  /**
   * It acked a frame of the primary's current view, so it knows it is the backup of that view
   * (a recruit just made backup may not have heard yet). A switchover waits for this.
   */
  viewAcked: boolean;
}

interface Held {
  readonly outputId: number;
  /** The last index appended when the output was produced. */
  readonly index: number;
  /** 0, or the frame seq a guard must have acked (a frame sent after the output was produced). */
  readonly freshSeq: number;
}

type CasPurpose = 'bootstrap' | 'goLive' | 'dropBackup' | 'addBackup' | 'fence' | 'switchover';

/**
 * A planned switchover under way on the primary (issue 11 item 1). `drain`: no new command is
 * taken (canAppend is false, so the driver parks them), the backup catches up and every held
 * output goes out. `cas`: the test-and-set `{e, self, B} -> {e+1, B, self}` is pending; nothing
 * is released meanwhile.
 */
interface PendingSwitch {
  readonly to: NodeId;
  readonly startedMs: number;
  phase: 'drain' | 'cas';
}

/** A switchover whose backup has not caught up in this many failure timeouts is aborted. */
export const SWITCHOVER_DRAIN_TIMEOUTS = 2;

interface PendingCas {
  readonly purpose: CasPurpose;
  readonly expected: View;
  readonly next: View;
  /** Every retry of this proposal has a request id >= this one. */
  readonly firstRequestId: number;
  retryAtMs: number;
}

/**
 * A peer said a newer epoch exists that this replica is not part of (a `refuse`, a frame or an
 * ack of a newer epoch). Before it acts on that (halts, or drops the state it follows) it reads
 * the arbiter's view; until the answer it carries on as it was.
 */
interface PendingConfirm {
  /** The newest epoch rumoured while this confirmation is pending. */
  epoch: number;
  /** What the peer said, for the logs. */
  reason: string;
  /** Every read for this confirmation has a request id >= this one. */
  readonly firstRequestId: number;
  /** When to (re)send the read; reads are at most one per arbiterRetryMs. */
  retryAtMs: number;
  /** Reads sent so far. */
  reads: number;
}

/** A backup's or recruit's record of the primary it takes frames from. */
interface Following {
  readonly primary: NodeId;
  epoch: number;
  lastHeardMs: number;
  /** Set during a recruit's handover: the view its primary is proposing with it as backup. */
  pendingView: View | null;
  /** The snapshot this recruit restores: its index, the leading chunks held, all of them? */
  restore: { readonly index: number; chunks: number; done: boolean } | null;
}

export interface Replica {
  readonly config: CoreConfig;
  role: Role;
  /** The view this replica acts in (primary, backup) or last acted in. */
  view: View;
  /** The highest epoch this replica has heard of. */
  knownEpoch: number;
  nowMs: number;
  /** The highest log index this replica holds (appended as primary, received as follower). */
  lastIndex: number;
  haltReason: string | null;
  /**
   * Which log this replica holds ("Several backups and the commit index" below): the term (the
   * epoch it went live in) of the primary whose log its entries are a prefix of; 0: unknown (a
   * node recovered from disk, or whose primary spoke protocol 7).
   */
  logTerm: number;
  /**
   * Primary: the highest commit index sent to any follower (to each, what every OTHER guard
   * acked). Follower: the highest one heard: it applies up to it.
   */
  commitIndex: number;
  /** Follower: the highest index applied to the guest (entries after it are in `pending`). */
  appliedIndex: number;
  /** Follower: entries held and not yet applied, appliedIndex+1 .. lastIndex, from pendingHead. */
  pending: Entry[];
  pendingHead: number;
  /** Started from disk (durable mode): the log term its disk said (0: unknown); null: not recovered. */
  recoveredFrom: number | null;
  /** Primary: the epoch it went live in (its term), what it held then, and from which log. */
  term: number;
  baseIndex: number;
  baseTerm: number;

  // Primary.
  readonly followers: Map<NodeId, Follower>;
  /** Entries retained for followers' acks: log[logHead] is the oldest. */
  log: Entry[];
  logHead: number;
  retainedBytes: number;
  /**
   * The backlog (config backlogBytes): entries before log[logHead] that no follower needs any
   * more (a primary's, every follower acked them; a follower's, applied), up to backlogBytes,
   * for resuming a spare that kept its state. backlog[backlogHead] is the oldest; the last is
   * the entry just before log[logHead] (a follower's: its appliedIndex).
   */
  backlog: Entry[];
  backlogHead: number;
  backlogCost: number;
  /** The seq of the last frame (or snapshot) sent, to any follower. */
  frameSeq: number;
  held: Held[];
  heldHead: number;
  /** The highest index any released output was tagged with. */
  releasedIndexMax: number;
  /** The highest freshSeq among held outputs: a frame with seq >= this must reach each guard. */
  freshSeqWanted: number;
  /** The recruit a takeSnapshot was asked for. */
  snapshotFor: NodeId | null;
  /**
   * How long a recruit receiving its snapshot may go without progress (a new chunk or entry
   * acked). failureTimeoutMs at first; a link slower than that (a long round trip) would
   * never get a recruit through, so this doubles each time a recruit is abandoned for want
   * of progress (up to RECRUIT_PATIENCE_MAX failure timeouts), and is set to twice the
   * longest wait seen when a snapshot completes.
   */
  recruitPatienceMs: number;

  // Backup and recruit.
  following: Following | null;

  // Spare.
  lastJoinMs: number;

  /** The last tick: a longer gap than STALL_MS means this replica itself was not running. */
  lastTickMs: number;

  /** Primary: a planned switchover under way. */
  switchover: PendingSwitch | null;
  /**
   * Backup, just after its switchover landed: the new primary, told of its view (a `refuse` of
   * the new epoch, which it confirms with the arbiter) every heartbeat until its first frame.
   */
  notifyPrimary: NodeId | null;
  lastNotifyMs: number;

  // The arbiter.
  cas: PendingCas | null;
  /** A rumour of a newer epoch being checked with the arbiter. */
  confirm: PendingConfirm | null;
  /** When the last arbiterRead was sent (reads for rumours are rate-limited by arbiterRetryMs). */
  lastReadMs: number;
  nextRequestId: number;
}

/** The recruit patience grows up to this many failure timeouts. */
export const RECRUIT_PATIENCE_MAX = 64;

export function createReplica(config: CoreConfig, nowMs: number): Replica {
  assert(config.nodes.includes(config.id), `config.nodes must include this node (${config.id})`);
  assert(config.failureTimeoutMs > config.heartbeatMs, 'failureTimeoutMs must exceed heartbeatMs');
  return {
    config,
    role: 'booting',
    view: NO_VIEW,
    knownEpoch: 0,
    nowMs,
    lastIndex: 0,
    haltReason: null,
    logTerm: 0,
    commitIndex: 0,
    appliedIndex: 0,
    pending: [],
    pendingHead: 0,
    term: 0,
    baseIndex: 0,
    baseTerm: 0,
    recoveredFrom: null,
    followers: new Map(),
    log: [],
    logHead: 0,
    retainedBytes: 0,
    backlog: [],
    backlogHead: 0,
    backlogCost: 0,
    frameSeq: 0,
    held: [],
    heldHead: 0,
    releasedIndexMax: 0,
    freshSeqWanted: 0,
    snapshotFor: null,
    recruitPatienceMs: config.failureTimeoutMs,
    following: null,
    lastJoinMs: -Infinity,
    lastTickMs: nowMs,
    switchover: null,
    notifyPrimary: null,
    lastNotifyMs: -Infinity,
    cas: null,
    confirm: null,
    lastReadMs: -Infinity,
    nextRequestId: 1,
  };
}

/** Flow control (§3.3 of the paper): may the primary append another entry now? */
export function canAppend(r: Replica): boolean {
  if (r.role !== 'primary') return false;
  // A switchover stops new commands: they wait (parked by the driver), then go to the new primary.
  if (r.switchover !== null) return false;
  if (r.followers.size === 0) return true;
  return r.log.length - r.logHead < r.config.unackedEntriesMax && r.retainedBytes < r.config.unackedBytesMax;
}

export interface ReplicaStatus {
  readonly id: NodeId;
  readonly role: Role;
  readonly view: View;
  readonly knownEpoch: number;
  readonly lastIndex: number;
  /** Primary: what every backup holds (sent to them in frames). Follower: the highest heard. */
  readonly commitIndex: number;
  /** The highest index applied to the guest (a follower applies up to the commit index). */
  readonly appliedIndex: number;
  /** Primary: what every backup acked (the least of them; = lastIndex when it has none). Follower: lastIndex. */
  readonly ackedIndex: number;
  /** Entries appended but not yet acked by the backup. */
  readonly lagEntries: number;
  readonly heldOutputs: number;
  readonly retainedEntries: number;
  readonly retainedBytes: number;
  readonly recruit: {
    readonly id: NodeId;
    readonly phase: string;
    readonly ackedIndex: number;
    /** Snapshot chunks the recruit acked, of `chunks` (0 of 0 until the snapshot is taken). */
    readonly chunksAcked: number;
    readonly chunks: number;
  } | null;
  readonly haltReason: string | null;
  /** A planned switchover under way: to whom, in which phase, for how long. */
  readonly switchover: { readonly to: NodeId; readonly phase: string; readonly ms: number } | null;
}

export function status(r: Replica): ReplicaStatus {
  let ackedIndex = r.lastIndex;
  let recruit: ReplicaStatus['recruit'] = null;
  for (const f of r.followers.values()) {
    if (f.kind === 'backup') ackedIndex = Math.min(ackedIndex, f.ackedIndex);
    else recruit = { id: f.id, phase: f.phase, ackedIndex: f.ackedIndex, chunksAcked: f.chunksAcked, chunks: f.chunks.length };
  }
  return {
    id: r.config.id,
    role: r.role,
    view: r.view,
    knownEpoch: r.knownEpoch,
    lastIndex: r.lastIndex,
    commitIndex: r.commitIndex,
    appliedIndex: r.role === 'primary' ? r.lastIndex : r.appliedIndex,
    ackedIndex,
    lagEntries: r.lastIndex - ackedIndex,
    heldOutputs: r.held.length - r.heldHead,
    retainedEntries: r.log.length - r.logHead,
    retainedBytes: r.retainedBytes,
    recruit,
    haltReason: r.haltReason,
    switchover: r.switchover === null ? null : { to: r.switchover.to, phase: r.switchover.phase, ms: r.nowMs - r.switchover.startedMs },
  };
}

/** Feed one input to the replica at time `nowMs`; returns the actions to carry out, in order. */
export function step(r: Replica, input: Input, nowMs: number): Action[] {
  assert(nowMs >= r.nowMs, `time went back from ${r.nowMs} to ${nowMs}`);
  r.nowMs = nowMs;
  const out: Action[] = [];
  if (r.role === 'halted') return out;
  switch (input.type) {
    case 'start':
      assert(r.role === 'booting' && r.cas === null, 'start given twice');
      if (input.recovered !== undefined) startRecovered(r, out, input.recovered.index, input.recovered.view, input.recovered.logTerm ?? 0, input.recovered.tail ?? []);
      else if (input.kept !== undefined) startKept(r, out, input.kept.index, input.kept.logTerm);
      else startCas(r, out, 'bootstrap', NO_VIEW, { epoch: 1, primary: r.config.id, backups: [] });
      break;
    case 'tick':
      onTick(r, out);
      break;
    case 'message':
      onMessage(r, out, input.from, input.msg);
      break;
    case 'arbiterResult':
      onArbiterResult(r, out, input.requestId, input.ok, input.view);
      break;
    case 'arbiterView':
      onArbiterView(r, out, input.requestId, input.view);
      break;
    case 'arbiterFailed':
      if (r.cas && input.requestId >= r.cas.firstRequestId) {
        const waitingFor = `${r.cas.purpose}: ${formatView(r.cas.expected)} -> ${formatView(r.cas.next)}`;
        log(out, 'warn', 'arbiter-unavailable', { requestId: input.requestId, reason: input.reason, waitingFor, retryInMs: r.cas.retryAtMs - r.nowMs });
      } else if (r.confirm && input.requestId >= r.confirm.firstRequestId) {
        const waitingFor = `confirmation of a rumour of epoch ${r.confirm.epoch}: keeping our state`;
        log(out, 'warn', 'arbiter-unavailable', { requestId: input.requestId, reason: input.reason, waitingFor, retryInMs: r.confirm.retryAtMs - r.nowMs });
      }
      break;
    case 'append':
      onAppend(r, input.payload);
      break;
    case 'hold':
      onHold(r, out, input.outputId, input.fresh);
      break;
    case 'snapshot':
      onSnapshotTaken(r, out, input.index, input.data);
      break;
    case 'snapshotChunk':
      onSnapshotChunk(r, out, input.index, input.data, input.last);
      break;
    case 'switchover':
      onSwitchover(r, out, input.to);
      break;
    case 'flush':
      if (r.role === 'primary') sendFrames(r, out);
      break;
    default:
      assertNever(input, 'input');
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Roles and the arbiter

function log(out: Action[], level: LogLevel, event: string, fields: Record<string, string | number | boolean | null>): void {
  out.push({ type: 'log', level, event, fields });
}

function setRole(r: Replica, out: Action[], role: Role, reason: string): void {
  r.role = role;
  out.push({ type: 'role', role, view: r.view, reason });
  log(out, 'info', 'role', { role, view: formatView(r.view), reason });
}

function startCas(r: Replica, out: Action[], purpose: CasPurpose, expected: View, next: View): void {
  assert(r.cas === null, `a test-and-set is already pending (${r.cas?.purpose})`);
  assert(next.epoch === expected.epoch + 1, 'a new view must have the next epoch');
  const requestId = r.nextRequestId++;
  r.cas = { purpose, expected, next, firstRequestId: requestId, retryAtMs: r.nowMs + r.config.arbiterRetryMs };
  log(out, 'info', 'cas-attempt', { purpose, expected: formatView(expected), next: formatView(next), requestId });
  out.push({ type: 'arbiterCas', requestId, expected, next });
}

function onArbiterResult(r: Replica, out: Action[], requestId: number, ok: boolean, view: View): void {
  r.knownEpoch = Math.max(r.knownEpoch, view.epoch);
  const cas = r.cas;
  if (cas === null || requestId < cas.firstRequestId) {
    log(out, 'info', 'ignoring', { reason: 'answer to an old test-and-set', requestId, view: formatView(view) });
    return;
  }
  // A retry of a proposal that had already landed is refused with our own view: that is a win.
  const won = ok || sameView(view, cas.next);
  if (!won && view.epoch < cas.expected.epoch) {
    // The view we expect does not exist yet (a recruit going live from the view its primary
    // was proposing). It may still appear, and then an attempt of ours still in flight may
    // land: this "no" is not final. Keep the state and keep asking.
    log(out, 'warn', 'cas-not-yet', { purpose: cas.purpose, expected: formatView(cas.expected), view: formatView(view), requestId });
    return;
  }
  r.cas = null;
  log(out, won ? 'info' : 'warn', 'cas-result', { purpose: cas.purpose, won, view: formatView(view), requestId });
  switch (cas.purpose) {
    case 'bootstrap':
      if (won) becomePrimary(r, out, view, 'won the bootstrap test-and-set');
      else setRole(r, out, 'spare', `a view exists (${formatView(view)}): joining as a spare`);
      return;
    case 'goLive':
      if (won) becomePrimary(r, out, view, 'won the test-and-set after suspecting the primary');
      else if (isSwitchToMe(r, view)) becomePrimaryBySwitch(r, out, view);
      else if (namesMeBackupOfMyPrimary(r, view)) {
        // The view moved on under the primary we suspect (it added or dropped another backup)
        // and still names us its backup: every output released in it waited for our ack of
        // that epoch, so we hold them all. Follow it, and ask again from it at the next tick.
        r.following!.epoch = view.epoch;
        becomeBackup(r, out, view);
      }
      else if (mayFollowNewPrimary(r, view)) followNewPrimary(r, out, view, 'another backup won the test-and-set to go live');
      else if (namesMeRecovered(r, view)) recoveredIn(r, out, view, 'lost the test-and-set to go live');
      else if (r.role === 'spare') stopFollowing(r, out, `lost the test-and-set to go live; the view is ${formatView(view)}`);
      else halt(r, out, `lost the test-and-set to go live; the view is ${formatView(view)}`);
      return;
    case 'dropBackup': {
      if (!won) return halt(r, out, `lost the test-and-set to drop the backup; the view is ${formatView(view)}`);
      const gone = r.view.backups.filter((id) => !isBackupIn(view, id));
      r.view = view;
      for (const id of gone) r.followers.delete(id);
      backupsToAckView(r);
      const left = view.backups.length === 0 ? '' : ` (backups left: ${view.backups.join(', ')})`;
      setRole(r, out, 'primary', `carrying on without backup ${gone.join(', ') || '-'}${left}`);
      trimLog(r);
      tryRelease(r, out);
      return;
    }
    case 'fence':
      if (!won) return halt(r, out, `lost the test-and-set that fences off an abandoned handover; the view is ${formatView(view)}`);
      r.view = view;
      backupsToAckView(r);
      setRole(r, out, 'primary', `fenced off the handover view of epoch ${view.epoch}: no recruit can go live from it`);
      return;
    case 'switchover': {
      const sw = r.switchover;
      if (!won) {
        // Only this primary writes views naming it primary, one at a time: a view that moved
        // under us was written by another node (the backup went live). We are deposed.
        return halt(r, out, `lost the test-and-set of a switchover: the view moved to ${formatView(view)}`);
      }
      becomeBackupBySwitch(r, out, view, sw?.startedMs ?? r.nowMs);
      return;
    }
    case 'addBackup': {
      if (!won) return halt(r, out, `lost the test-and-set to add a backup; the view is ${formatView(view)}`);
      r.view = view;
      const added = view.backups[view.backups.length - 1];
      const f = added === undefined ? undefined : r.followers.get(added);
      assert(f !== undefined && f.kind === 'recruit', 'the recruit left while its test-and-set was pending');
      f.kind = 'backup';
      backupsToAckView(r);
      setRole(r, out, 'primary', `recruit ${f.id} is now the backup`);
      log(out, 'info', 'recruit-done', { recruit: f.id, epoch: view.epoch, ackedIndex: f.ackedIndex });
      return;
    }
    default:
      assertNever(cas.purpose, 'cas purpose');
  }
}

/**
 * Our view changed and kept backups (another backup was added or dropped, or a fence): none
 * of them has acked a frame of it yet, so none knows it is a backup of this epoch. A
 * switchover to one of them waits until it does (it goes from exactly this epoch).
 */
function backupsToAckView(r: Replica): void {
  for (const f of r.followers.values()) if (f.kind === 'backup') f.viewAcked = false;
}

function becomePrimary(r: Replica, out: Action[], view: View, reason: string): void {
  assert(view.primary === r.config.id, 'becoming primary of a view that names another primary');
  r.view = view;
  r.knownEpoch = Math.max(r.knownEpoch, view.epoch);
  r.following = null;
  r.notifyPrimary = null;
  r.followers.clear();
  r.log = [];
  r.logHead = 0;
  r.retainedBytes = 0;
  r.held = [];
  r.heldHead = 0;
  r.freshSeqWanted = 0;
  r.releasedIndexMax = r.lastIndex;
  // A follower going live applies what it holds and keeps it for the other backups, which hold
  // at least what it had applied (every backup holds the entries up to any commit index sent).
  const from = r.appliedIndex;
  const unapplied = r.pending.slice(r.pendingHead);
  if (unapplied.length > 0) out.push({ type: 'apply', entries: unapplied });
  r.pending = [];
  r.pendingHead = 0;
  r.appliedIndex = r.lastIndex;
  r.commitIndex = from;
  r.recoveredFrom = null;
  r.term = view.epoch;
  r.baseIndex = r.lastIndex;
  r.baseTerm = r.logTerm;
  r.logTerm = view.epoch;
  setRole(r, out, 'primary', reason);
  if (view.backups.length === 0) {
    // The backlog (applied entries) goes on with what it held unapplied.
    keepInBacklog(r, unapplied);
    return;
  }
  for (const e of unapplied) {
    r.log.push(e);
    r.retainedBytes += e.payload.length;
  }
  for (const id of view.backups) {
    const f = newFollower(r, id, 'backup', from, true);
    f.nextIndex = from + 1;
    r.followers.set(id, f);
  }
  log(out, 'info', 'kept-backups', { backups: view.backups.join(','), from: from + 1, lastIndex: r.lastIndex, baseTerm: r.baseTerm });
}

function becomeBackup(r: Replica, out: Action[], view: View): void {
  assert(r.following !== null && view.primary === r.following.primary, 'becoming backup of a primary not followed');
  r.view = view;
  r.knownEpoch = Math.max(r.knownEpoch, view.epoch);
  r.following.epoch = view.epoch;
  r.following.pendingView = null;
  setRole(r, out, 'backup', `named backup by ${view.primary ?? '-'}`);
}

/**
 * The arbiter's view names this follower a backup of another primary: one of the other
 * backups went live (keeping us), or a switchover handed the role to one. We hold at least
 * what it had applied; which of the rest is in its log its first frame says (`sameLog`).
 */
function mayFollowNewPrimary(r: Replica, view: View): boolean {
  const f = r.following;
  if (f === null || view.primary === null || view.primary === f.primary || view.primary === r.config.id || !isBackupIn(view, r.config.id)) return false;
  return r.role === 'backup' || (r.role === 'spare' && f.pendingView !== null && f.restore !== null && f.restore.done);
}

function followNewPrimary(r: Replica, out: Action[], view: View, why: string): void {
  const old = r.following!.primary;
  r.following = { primary: view.primary!, epoch: view.epoch, lastHeardMs: r.nowMs, pendingView: null, restore: null };
  r.view = view;
  r.knownEpoch = Math.max(r.knownEpoch, view.epoch);
  log(out, 'info', 'follow-new-primary', { from: old, to: view.primary, view: formatView(view), why, lastIndex: r.lastIndex, appliedIndex: r.appliedIndex, logTerm: r.logTerm });
  setRole(r, out, 'backup', `${why}: following ${view.primary} in ${formatView(view)}, keeping what this node holds`);
}

/**
 * Durable mode, at start: the guest holds this node's disk up to `index` and the arbiter's view
 * names this node. Every entry whose output was released is on the disk of each node that view
 * names (a backup acked only what it had fsync'd, a primary released only what it had fsync'd),
 * so the replica waits as a backup of the view's primary (itself, if it was the primary: no frame
 * comes, and it asks to go live after the failure timeout), exactly as a backup does.
 */
function startRecovered(r: Replica, out: Action[], index: number, view: View, logTerm: number, tail: readonly Entry[]): void {
  const self = r.config.id;
  assert(view.epoch > 0 && view.primary !== null && (view.primary === self || isBackupIn(view, self)), 'recovered with a view that does not name this replica');
  assert(Number.isSafeInteger(index) && index >= 0, 'recovered index');
  r.lastIndex = index;
  r.appliedIndex = index; // the driver replayed the whole disk, held entries too
  r.logTerm = logTerm;
  r.recoveredFrom = logTerm;
  // The disk's last entries go to the backlog: if this node goes live keeping a named backup
  // whose disk holds less (it came back too, from further behind), it sends it what it lacks.
  if (tail.length > 0 && tail[tail.length - 1]!.index === index) keepInBacklog(r, tail);
  r.view = view;
  r.knownEpoch = view.epoch;
  r.following = { primary: view.primary, epoch: view.epoch, lastHeardMs: r.nowMs, pendingView: null, restore: null };
  log(out, 'info', 'recovered', { index, view: formatView(view) });
  setRole(r, out, 'backup', `recovered from disk at index ${index}; named in ${formatView(view)}: waiting for ${view.primary === self ? 'the failure timeout to go live' : `frames from ${view.primary}, or the failure timeout to go live`}`);
}

/**
 * A node recovered from disk (not live since) learns that the arbiter's view moved on to one
 * naming it primary. Only this node writes such views, or its primary in a switchover to it
 * (isSwitchToMe, handled before): so a test-and-set its earlier process sent as it died (to go
 * live, or to add or drop a backup) landed after this process read the view. No process of it
 * learned it won, so nothing was released in that view, and the disk holds every entry released
 * before it (see startRecovered). Halting there would leave the view with a primary that never
 * acts and no backup that may go live (the lockstep sim --durable-restarts seeds 727 and 759,
 * rsm, one backup): instead it waits in that view as a recovered node, as a restart that had
 * read it would, and goes live from it after the failure timeout.
 */
function namesMeRecovered(r: Replica, view: View): boolean {
  return r.recoveredFrom !== null && r.role === 'backup' && r.following !== null && view.primary === r.config.id && view.epoch >= r.view.epoch;
}

function recoveredIn(r: Replica, out: Action[], view: View, why: string): void {
  const self = r.config.id;
  r.view = view;
  r.knownEpoch = Math.max(r.knownEpoch, view.epoch);
  r.following = { primary: self, epoch: view.epoch, lastHeardMs: r.following!.lastHeardMs, pendingView: null, restore: null };
  log(out, 'info', 'recovered-view', { view: formatView(view), why, lastIndex: r.lastIndex });
  setRole(r, out, 'backup', `${why}: recovered from disk, and the arbiter's view ${formatView(view)} names this node primary (a test-and-set of its earlier process): waiting for the failure timeout to go live from it`);
}

/**
 * Durable mode, at start, a node the view does not name that kept its disk (or one that halted
 * and kept its state): the guest holds entries 1..index of the log of term logTerm. It is a
 * spare like any other, but its joins say what it holds (see "Resuming a spare that kept its
 * state"). It never bootstraps: a cluster whose arbiter holds no view has no log to resume.
 */
function startKept(r: Replica, out: Action[], index: number, logTerm: number): void {
  assert(Number.isSafeInteger(index) && index > 0 && Number.isSafeInteger(logTerm) && logTerm > 0, 'kept state at an index and log term above 0');
  r.lastIndex = index;
  r.appliedIndex = index;
  r.commitIndex = index;
  r.logTerm = logTerm;
  log(out, 'info', 'kept', { index, logTerm });
  setRole(r, out, 'spare', `kept its state (entries 1..${index} of the log of term ${logTerm}): asking to be recruited from it`);
}

/** Stop: this replica's state can no longer be trusted to be current. Held outputs never go. */
/** No longer primary: held outputs never go (discarded), followers and retained entries are dropped. */
function dropPrimaryState(r: Replica, out: Action[], reason: string): void {
  const ids = r.held.slice(r.heldHead).map((h) => h.outputId);
  if (ids.length > 0) out.push({ type: 'discard', outputIds: ids, reason });
  r.held = [];
  r.heldHead = 0;
  r.freshSeqWanted = 0;
  r.followers.clear();
  // The retained entries are this node's own (applied): the backlog goes on with them, so that it
  // stays one run of entries ending at lastIndex (a primary switched over to backup goes on
  // applying after it; found by lockstep sim --durable-restarts --backups 2 seed 299).
  keepInBacklog(r, r.log.slice(r.logHead));
  r.log = [];
  r.logHead = 0;
  r.retainedBytes = 0;
}

function halt(r: Replica, out: Action[], reason: string): void {
  if (r.switchover !== null) endSwitch(r, out, 'aborted', 'E_SWITCHOVER_ABORTED', `this replica halted: ${reason}`);
  r.notifyPrimary = null;
  dropPrimaryState(r, out, reason);
  r.following = null;
  r.cas = null;
  r.confirm = null;
  r.haltReason = reason;
  setRole(r, out, 'halted', reason);
}

/**
 * A peer says epoch `epoch` exists and this replica is not in it (or not as it thinks). That
 * is a rumour, not the arbiter's word: a forged message (any peer with no secret configured,
 * or a member) must not make a primary or a backup discard the only copies of the state
 * (issue 14 item 9). So the replica reads the arbiter's view first and carries on meanwhile;
 * `onArbiterView` decides. If a test-and-set of ours for that very epoch is pending, the newer
 * view may be our own (its answer was lost or is late): the test-and-set's answer decides.
 */
function rumour(r: Replica, out: Action[], epoch: number, reason: string): void {
  if (r.cas !== null && r.cas.next.epoch >= epoch) {
    log(out, 'warn', 'deferring', { reason: `${reason}; our test-and-set for epoch ${r.cas.next.epoch} is pending`, epoch });
    return;
  }
  if (r.config.bugs?.haltOnRumour) {
    // PLANTED BUG: believe the peer.
    if (r.role === 'spare') stopFollowing(r, out, reason);
    else halt(r, out, `deposed: ${reason}`);
    return;
  }
  const c = r.confirm;
  if (c !== null) {
    // One confirmation at a time: its answer covers every rumour heard before it is read.
    if (epoch > c.epoch) {
      c.epoch = epoch;
      c.reason = reason;
    }
    return;
  }
  r.confirm = { epoch, reason, firstRequestId: r.nextRequestId, retryAtMs: Math.max(r.nowMs, r.lastReadMs + r.config.arbiterRetryMs), reads: 0 };
  log(out, 'warn', 'confirming', { reason, epoch, with: 'the arbiter', meanwhile: 'keeping our state and role' });
  if (r.nowMs >= r.confirm.retryAtMs) readArbiter(r, out, r.confirm);
}

function readArbiter(r: Replica, out: Action[], c: PendingConfirm): void {
  const requestId = r.nextRequestId++;
  r.lastReadMs = r.nowMs;
  c.retryAtMs = r.nowMs + r.config.arbiterRetryMs;
  c.reads++;
  out.push({ type: 'arbiterRead', requestId });
}

/** The epoch this replica acts in; null when it holds nothing a rumour could take away. */
function ownEpoch(r: Replica): number | null {
  switch (r.role) {
    case 'primary':
    case 'backup':
      return r.view.epoch;
    case 'spare':
      return r.following?.epoch ?? null;
    default:
      return null;
  }
}

/**
 * The arbiter's answer to a confirmation. A view no newer than our own: the rumour was false
 * (forged, or garbled), ignore it and carry on. A newer view: it is true. A follower named
 * backup of its own primary in it takes that view (a recruit handover whose pending view it
 * never heard); anyone else not in it halts (a recruit drops back to an empty spare).
 */
function onArbiterView(r: Replica, out: Action[], requestId: number, view: View): void {
  const c = r.confirm;
  if (c === null || requestId < c.firstRequestId) {
    log(out, 'info', 'ignoring', { reason: 'answer to an old read of the arbiter', requestId, view: formatView(view) });
    return;
  }
  r.confirm = null;
  r.knownEpoch = Math.max(r.knownEpoch, view.epoch);
  const mine = ownEpoch(r);
  if (mine === null || view.epoch <= mine) {
    log(out, 'warn', 'ignoring', { reason: `rumour of epoch ${c.epoch} not confirmed by the arbiter`, rumour: c.reason, arbiterView: formatView(view), reads: c.reads });
    return;
  }
  if (r.cas !== null && (r.cas.next.epoch >= view.epoch || r.role === 'spare')) {
    log(out, 'warn', 'deferring', { reason: `${c.reason}; the arbiter holds ${formatView(view)} and our test-and-set for epoch ${r.cas.next.epoch} is pending`, epoch: view.epoch });
    return;
  }
  log(out, 'warn', 'confirmed', { reason: c.reason, arbiterView: formatView(view) });
  const f = r.following;
  if (isSwitchToMe(r, view)) {
    becomePrimaryBySwitch(r, out, view);
  } else if (r.role !== 'primary' && f !== null && view.primary === f.primary && isBackupIn(view, r.config.id)) {
    f.epoch = view.epoch;
    becomeBackup(r, out, view);
  } else if (mayFollowNewPrimary(r, view)) {
    followNewPrimary(r, out, view, c.reason);
  } else if (namesMeRecovered(r, view)) {
    recoveredIn(r, out, view, c.reason);
  } else if (r.role === 'spare') {
    stopFollowing(r, out, `${c.reason}; the arbiter holds ${formatView(view)}`);
  } else {
    halt(r, out, `deposed: ${c.reason}; the arbiter holds ${formatView(view)}`);
  }
}

/** This follower holds nothing any more (an empty spare, or a recruit starting a snapshot). */
function forgetLog(r: Replica): void {
  clearBacklog(r);
  r.lastIndex = 0;
  r.appliedIndex = 0;
  r.commitIndex = 0;
  r.pending = [];
  r.pendingHead = 0;
  r.logTerm = 0;
}

/** A recruit whose primary went away: back to an empty spare that asks to be recruited. */
function stopFollowing(r: Replica, out: Action[], reason: string): void {
  r.following = null;
  r.confirm = null;
  forgetLog(r);
  r.lastJoinMs = -Infinity;
  setRole(r, out, 'spare', reason);
}

// ---------------------------------------------------------------------------------------
// Planned switchover (issue 11 item 1): the primary hands its role to its backup
//
// drain  canAppend turns false (the driver parks new commands, reads too); frames go on until
//        the backup has acked the last index and every held output is released. At most
//        SWITCHOVER_DRAIN_TIMEOUTS failure timeouts, and a silent backup aborts it at once.
// cas    `{e, P, B} -> {e+1, B, P}`: one test-and-set. Nothing is released meanwhile.
// won    P is B's backup at once (it holds exactly B's log: it appended nothing since B acked
//        its last index), and tells B with a `refuse` of epoch e+1, every heartbeat until B's
//        first frame. B confirms that with the arbiter (a rumour like any other) and, seeing
//        itself primary of the view that follows its own with its primary as backup, goes
//        live with P as its backup. A B that hears nothing suspects P, asks to go live, and is
//        refused with that same view: it goes live too.
// lost   the view moved: only P writes views naming P primary, so the backup went live. P is
//        deposed and halts, as for any lost test-and-set of a primary.

function onSwitchover(r: Replica, out: Action[], to: NodeId | null): void {
  const refuse = (code: SwitchoverCode, reason: string): void => {
    log(out, 'warn', 'switchover-refused', { code, reason, to });
    out.push({ type: 'switchover', outcome: 'refused', code, reason, view: r.view });
  };
  const self = r.config.id;
  if (r.role !== 'primary') {
    const who = r.view.primary !== null && r.view.primary !== self ? `; the primary this node knows of is ${r.view.primary} (epoch ${r.view.epoch})` : '';
    return refuse('E_SWITCHOVER_NOT_PRIMARY', `this node (${self}) is ${r.role}, not the primary: ask the primary${who}`);
  }
  const sw = r.switchover;
  if (sw !== null) return refuse('E_SWITCHOVER_BUSY', `a switchover to ${sw.to} is already under way (${sw.phase}, for ${Math.round(r.nowMs - sw.startedMs)} ms)`);
  const b = to !== null && isBackupIn(r.view, to) ? to : firstBackup(r.view);
  const f = b === null ? undefined : r.followers.get(b);
  if (b === null || f === undefined || f.kind !== 'backup') {
    const recruit = [...r.followers.values()].find((x) => x.kind === 'recruit');
    const wait = recruit !== undefined ? `; ${recruit.id} is being recruited (${recruit.phase}): try again when it is the backup` : '; no spare is being recruited: start one';
    return refuse('E_SWITCHOVER_NO_BACKUP', `the view ${formatView(r.view)} has no backup: only a backup holds the state to take over${wait}`);
  }
  if (to !== null && to !== b) {
    return refuse('E_SWITCHOVER_TARGET', `${to} is not a backup of ${formatView(r.view)}: only a backup (${r.view.backups.join(', ')}) holds the state, so only it can take over`);
  }
  if (r.cas !== null) return refuse('E_SWITCHOVER_BUSY', `a view change is under way (${r.cas.purpose}: ${formatView(r.cas.next)}): try again when it is done`);
  r.switchover = { to: b, startedMs: r.nowMs, phase: 'drain' };
  log(out, 'info', 'switchover-start', { to: b, lastIndex: r.lastIndex, ackedIndex: f.ackedIndex, heldOutputs: r.held.length - r.heldHead });
  out.push({ type: 'switchover', outcome: 'started', code: null, reason: `new commands wait while ${b} catches up`, view: r.view });
  trySwitch(r, out);
}

/** The drain is over when the backup holds the last index and every held output went out. */
function trySwitch(r: Replica, out: Action[]): void {
  const sw = r.switchover;
  if (sw === null || sw.phase !== 'drain' || r.cas !== null || r.role !== 'primary') return;
  const f = r.followers.get(sw.to);
  if (f === undefined || f.kind !== 'backup') return;
  // PLANTED BUG (switchEarly): swap at once, whatever the backup holds.
  // The backup must also have acked a frame of this view: a recruit just made backup may not
  // know it yet, and only a node acting as backup takes over from the view that follows.
  if (!r.config.bugs?.switchEarly && (!f.viewAcked || f.ackedIndex < r.lastIndex || r.heldHead < r.held.length)) return;
  sw.phase = 'cas';
  log(out, 'info', 'switchover-caught-up', { to: sw.to, ackedIndex: f.ackedIndex, lastIndex: r.lastIndex, drainMs: r.nowMs - sw.startedMs });
  // With several backups the others stay: they learn of the view from the new primary's
  // frames (confirming it with the arbiter) and follow it with what they hold.
  const others = r.view.backups.filter((id) => id !== sw.to);
  startCas(r, out, 'switchover', r.view, { epoch: r.view.epoch + 1, primary: sw.to, backups: [r.config.id, ...others] });
}

function endSwitch(r: Replica, out: Action[], outcome: 'done' | 'aborted', code: SwitchoverCode | null, reason: string): void {
  r.switchover = null;
  log(out, outcome === 'done' ? 'info' : 'warn', `switchover-${outcome}`, { code, reason, view: formatView(r.view) });
  out.push({ type: 'switchover', outcome, code, reason, view: r.view });
}

/** Our switchover landed: we are the new primary's backup, with exactly its log. */
function becomeBackupBySwitch(r: Replica, out: Action[], view: View, startedMs: number): void {
  const primary = view.primary;
  assert(primary !== null && isBackupIn(view, r.config.id), 'a switchover view names a primary and this replica as backup');
  dropPrimaryState(r, out, `switchover: ${primary} is the primary`);
  r.snapshotFor = null;
  r.view = view;
  r.knownEpoch = Math.max(r.knownEpoch, view.epoch);
  r.following = { primary, epoch: view.epoch, lastHeardMs: r.nowMs, pendingView: null, restore: null };
  r.appliedIndex = r.lastIndex;
  r.commitIndex = r.lastIndex; // the new primary acked it all before the switch
  setRole(r, out, 'backup', `switchover: ${primary} is primary of epoch ${view.epoch}, this replica its backup`);
  endSwitch(r, out, 'done', null, `${primary} is the primary of ${formatView(view)} (${Math.round(r.nowMs - startedMs)} ms after the request)`);
  r.notifyPrimary = primary;
  notifySwitch(r, out);
}

function notifySwitch(r: Replica, out: Action[]): void {
  const to = r.notifyPrimary;
  if (to === null) return;
  r.lastNotifyMs = r.nowMs;
  out.push({ type: 'send', to, msg: { type: 'refuse', epoch: r.view.epoch, reason: `switchover: the arbiter holds ${formatView(r.view)}, you are its primary` } });
}

/**
 * The arbiter names this backup primary of the view right after its own, with its primary as
 * backup: only its primary's switchover writes that view, and only once this backup had acked
 * its last index (and the primary appended nothing since). It holds every entry: it goes live.
 */
function isSwitchToMe(r: Replica, view: View): boolean {
  const f = r.following;
  return r.role === 'backup' && f !== null && r.view.primary === f.primary && view.epoch === r.view.epoch + 1 && view.primary === r.config.id && view.backups[0] === f.primary;
}

/**
 * A follower's primary is still primary of a newer view that names this replica one of its
 * backups (it added or dropped another backup meanwhile). The view may be the one we already
 * follow: a confirmation with the arbiter adopted it while our test-and-set to go live, from
 * the older view, was still being retried (that attempt could only lose).
 */
function namesMeBackupOfMyPrimary(r: Replica, view: View): boolean {
  const f = r.following;
  return (r.role === 'backup' || r.role === 'spare') && f !== null && view.epoch >= f.epoch && view.primary === f.primary && isBackupIn(view, r.config.id);
}

function becomePrimaryBySwitch(r: Replica, out: Action[], view: View): void {
  const old = r.following?.primary;
  assert(old !== undefined, 'a switchover to a backup that follows no primary');
  const at = r.lastIndex;
  becomePrimary(r, out, view, `switchover: ${old} handed over the primary role; it is our backup`);
  const f = newFollower(r, old, 'backup', at);
  // Our first frame goes at the next flush: the old primary holds its waiting clients until then.
  f.lastSendMs = -Infinity;
  r.followers.set(old, f);
  log(out, 'info', 'switchover-primary', { from: old, view: formatView(view), lastIndex: at });
}

// ---------------------------------------------------------------------------------------
// Time: failure detection, retransmission, retries, joins

/**
 * A gap between ticks longer than this means the replica itself did not run (a GC pause, a
 * big command, a snapshot serialised inside one event-loop turn, SIGSTOP). Its driver ticks
 * far more often than this.
 */
function stallMs(c: CoreConfig): number {
  return c.failureTimeoutMs / 2;
}

/**
 * We were not running for `gapMs`: the peers' silence over that time is ours, not theirs, and
 * what they sent meanwhile is still unread (Node runs due timers before it reads sockets).
 * Count silence only over time we were running, so a stall of ours never makes us suspect
 * a peer; a peer that is really gone is suspected one failure timeout later than otherwise.
 */
function forgiveStall(r: Replica, out: Action[], gapMs: number): void {
  const now = r.nowMs;
  for (const f of r.followers.values()) {
    f.lastAckMs = Math.min(now, f.lastAckMs + gapMs);
    f.progressMs = Math.min(now, f.progressMs + gapMs);
  }
  if (r.following !== null) r.following.lastHeardMs = Math.min(now, r.following.lastHeardMs + gapMs);
  log(out, 'warn', 'stalled', { ms: gapMs, reason: 'this replica did not run; peer silence over that time is not counted' });
}

function onTick(r: Replica, out: Action[]): void {
  const now = r.nowMs;
  const c = r.config;
  const gapMs = now - r.lastTickMs;
  r.lastTickMs = now;
  if (gapMs > stallMs(c)) forgiveStall(r, out, gapMs);
  if (r.cas !== null && now >= r.cas.retryAtMs) {
    const requestId = r.nextRequestId++;
    r.cas.retryAtMs = now + c.arbiterRetryMs;
    log(out, 'warn', 'cas-retry', { purpose: r.cas.purpose, next: formatView(r.cas.next), requestId });
    out.push({ type: 'arbiterCas', requestId, expected: r.cas.expected, next: r.cas.next });
  }
  if (r.confirm !== null && now >= r.confirm.retryAtMs) {
    if (r.confirm.reads > 0) log(out, 'warn', 'confirm-retry', { epoch: r.confirm.epoch, reads: r.confirm.reads });
    readArbiter(r, out, r.confirm);
  }
  switch (r.role) {
    case 'booting':
    case 'halted':
      return;
    case 'primary':
      if (r.switchover?.phase === 'drain' && now - r.switchover.startedMs >= SWITCHOVER_DRAIN_TIMEOUTS * c.failureTimeoutMs) {
        const f = r.followers.get(r.switchover.to);
        endSwitch(r, out, 'aborted', 'E_SWITCHOVER_ABORTED', `the backup ${r.switchover.to} did not catch up in ${Math.round(now - r.switchover.startedMs)} ms (acked ${f?.ackedIndex ?? '-'} of ${r.lastIndex}, ${r.held.length - r.heldHead} replies held): serving on as primary`);
      }
      const silentBackups: NodeId[] = [];
      for (const f of [...r.followers.values()]) {
        // A recruit receiving its snapshot is judged by progress (a new chunk or entry
        // acked), not by acks: it may ack heartbeats forever without restoring anything.
        const snapshotting = f.kind === 'recruit' && f.phase === 'snapshot';
        const silentMs = snapshotting ? now - f.progressMs : now - f.lastAckMs;
        if (silentMs >= (snapshotting ? r.recruitPatienceMs : c.failureTimeoutMs)) {
          if (f.kind === 'backup') {
            if (r.cas === null) {
              if (r.switchover !== null) endSwitch(r, out, 'aborted', 'E_SWITCHOVER_ABORTED', `the backup ${f.id} is silent (no ack for ${Math.round(silentMs)} ms): dropping it, serving on as primary`);
              log(out, 'warn', 'suspect', { peer: f.id, role: 'backup', silentMs });
              silentBackups.push(f.id);
            }
          } else if (r.cas?.purpose !== 'addBackup') {
            if (snapshotting) r.recruitPatienceMs = Math.min(2 * r.recruitPatienceMs, RECRUIT_PATIENCE_MAX * c.failureTimeoutMs);
            const what = snapshotting ? `no progress for ${silentMs} ms (${f.chunksAcked} of ${f.chunks.length} chunks acked)` : `no ack for ${silentMs} ms`;
            abandonRecruit(r, out, f, what);
          }
          continue;
        }
        if (snapshotting && f.nextChunk > f.chunksAcked && now - f.chunkResendMs >= c.retransmitMs) rewindChunks(r, f);
        const resendFrom = Math.max(f.ackedIndex, f.snapshotIndex) + 1;
        if (f.nextIndex > resendFrom && now - f.lastProgressMs >= c.retransmitMs) rewind(r, f, resendFrom);
      }
      // Every silent backup leaves the view in one test-and-set; the others stay. (Unless a
      // recruit abandoned in the loop above started its fence: then at a later tick.)
      if (silentBackups.length > 0 && r.cas === null) dropBackups(r, out, silentBackups);
      trySwitch(r, out);
      sendFrames(r, out);
      return;
    case 'backup': {
      const f = r.following;
      assert(f !== null, 'a backup follows its primary');
      if (r.notifyPrimary !== null && now - r.lastNotifyMs >= c.heartbeatMs) notifySwitch(r, out);
      if (r.cas === null && now - f.lastHeardMs >= c.failureTimeoutMs) {
        log(out, 'warn', 'suspect', { peer: f.primary, role: 'primary', silentMs: now - f.lastHeardMs });
        // The other backups (if any) stay: each holds at least what we applied, and follows us
        // from there (what it holds beyond our log it drops: see sameLog).
        const next: View = { epoch: r.view.epoch + 1, primary: c.id, backups: r.view.backups.filter((id) => id !== c.id) };
        if (c.bugs?.liveWithoutArbiter) becomePrimary(r, out, next, 'PLANTED BUG: went live without the arbiter');
        else startCas(r, out, 'goLive', r.view, next);
      }
      return;
    }
    case 'spare': {
      const f = r.following;
      if (f === null) {
        if (now - r.lastJoinMs >= c.joinIntervalMs) {
          r.lastJoinMs = now;
          // What it holds: nothing, or the state it kept (a durable node's disk).
          const kept = r.lastIndex > 0 && r.logTerm > 0;
          const msg: PeerMessage = { type: 'join', index: kept ? r.lastIndex : 0, logTerm: kept ? r.logTerm : 0 };
          for (const id of c.nodes) if (id !== c.id) out.push({ type: 'send', to: id, msg });
        }
      } else if (r.cas === null && now - f.lastHeardMs >= c.failureTimeoutMs) {
        if (f.pendingView !== null) {
          // Our primary was handing over to us and went silent: its test-and-set may have
          // landed, making us the backup of a dead primary. Only the arbiter knows.
          log(out, 'warn', 'suspect', { peer: f.primary, role: 'primary (handing over)', silentMs: now - f.lastHeardMs });
          startCas(r, out, 'goLive', f.pendingView, { epoch: f.pendingView.epoch + 1, primary: c.id, backups: f.pendingView.backups.filter((id) => id !== c.id) });
        } else {
          stopFollowing(r, out, `recruiting primary ${f.primary} silent for ${now - f.lastHeardMs} ms`);
        }
      }
      return;
    }
    default:
      assertNever(r.role, 'role');
  }
}

// ---------------------------------------------------------------------------------------
// Messages

function onMessage(r: Replica, out: Action[], from: NodeId, raw: unknown): void {
  if (from === r.config.id || !r.config.nodes.includes(from)) {
    log(out, 'warn', 'ignoring', { reason: 'message from a node not in the cluster', from: String(from).slice(0, 64) });
    return;
  }
  const msg = validateMessage(raw);
  if (typeof msg === 'string') {
    log(out, 'warn', 'ignoring', { reason: `malformed message: ${msg}`, from });
    return;
  }
  if (r.role === 'booting') return;
  switch (msg.type) {
    case 'frame':
    case 'chunk':
      onFromPrimary(r, out, from, msg);
      return;
    case 'ack':
      onAck(r, out, from, msg);
      return;
    case 'chunkAck':
      onChunkAck(r, out, from, msg);
      return;
    case 'refuse': {
      const mine = r.role === 'spare' ? (r.following?.epoch ?? Infinity) : r.view.epoch;
      // A spare asking to go live from its pending view lets the arbiter's answer decide.
      if (msg.epoch > mine && (r.role !== 'spare' || r.cas === null)) {
        rumour(r, out, msg.epoch, `${from} knows newer epoch ${msg.epoch} (${msg.reason.slice(0, 200)})`);
      }
      return;
    }
    case 'join':
      onJoin(r, out, from, msg);
      return;
    default:
      assertNever(msg, 'message');
  }
}

type FromPrimary = Extract<PeerMessage, { type: 'frame' | 'chunk' }>;

function refuse(out: Action[], to: NodeId, epoch: number, reason: string): void {
  log(out, 'warn', 'refused-frame', { from: to, myEpoch: epoch, reason });
  out.push({ type: 'send', to, msg: { type: 'refuse', epoch, reason } });
}

function onFromPrimary(r: Replica, out: Action[], from: NodeId, m: FromPrimary): void {
  const epoch = m.view.epoch;
  if (m.view.primary !== from) {
    log(out, 'warn', 'ignoring', { reason: `${m.type} from a node that is not the primary of its view`, from, view: formatView(m.view) });
    return;
  }
  if (r.role === 'primary') {
    if (epoch > r.view.epoch) rumour(r, out, epoch, `${from} is primary of newer epoch ${epoch}`);
    else refuse(out, from, r.view.epoch, `${m.type} of epoch ${epoch}, I am primary of epoch ${r.view.epoch}`);
    return;
  }
  if (r.cas?.purpose === 'goLive') {
    // We asked the arbiter to make us primary. Acking now could let the old primary release
    // an output after our new view exists, and taking a snapshot would swap the state the
    // request is about: wait for the arbiter's verdict.
    log(out, 'info', 'ignoring', { reason: `${m.type} while asking the arbiter to go live`, from, epoch });
    return;
  }
  const f = r.following;
  if (m.type === 'chunk') {
    if (r.role === 'backup') {
      if (epoch < r.view.epoch) refuse(out, from, r.view.epoch, `snapshot chunk of epoch ${epoch}`);
      else log(out, 'warn', 'ignoring', { reason: 'snapshot chunk sent to a backup', from, epoch });
      return;
    }
    if (f !== null && epoch < f.epoch) {
      refuse(out, from, f.epoch, `snapshot chunk of epoch ${epoch}, following epoch ${f.epoch}`);
      return;
    }
    onChunk(r, out, from, m);
    return;
  }
  // A frame.
  const mine = f?.epoch ?? r.knownEpoch;
  if (f === null || f.primary !== from || epoch < f.epoch) {
    if (epoch < mine) refuse(out, from, mine, `frame of epoch ${epoch}`);
    else if (r.role === 'backup' && epoch > r.view.epoch) rumour(r, out, epoch, `${from} is primary of newer epoch ${epoch}`);
    else log(out, 'info', 'ignoring', { reason: 'frame from a primary this replica does not follow', from, epoch });
    return;
  }
  if (epoch > f.epoch) {
    // A newer view from our own primary. The one expected is a recruit's handover: the view
    // its primary told it it was proposing. Anything else (another backup, or "you are the
    // backup of epoch N" out of the blue) is checked with the arbiter first.
    const expected = r.role === 'spare' && f.pendingView !== null && sameView(f.pendingView, m.view);
    if (!expected) {
      const what = isBackupIn(m.view, r.config.id) ? 'names this replica backup' : r.role === 'backup' ? 'does not name this replica backup' : 'does not name this recruit';
      rumour(r, out, epoch, `${from} says view ${formatView(m.view)}, which ${what}`);
      return;
    }
    f.epoch = epoch;
    becomeBackup(r, out, m.view);
  } else if (r.role === 'spare' && isBackupIn(m.view, r.config.id)) {
    // Named backup of the epoch it was recruited in: no primary says that (a view naming a
    // backup is always newer than the recruit's snapshot).
    rumour(r, out, epoch + 1, `${from} says view ${formatView(m.view)}, which names this recruit backup of the epoch it was recruited in`);
    return;
  }
  if (!sameLog(r, out, from, m)) return;
  r.knownEpoch = Math.max(r.knownEpoch, epoch);
  f.lastHeardMs = r.nowMs;
  if (r.notifyPrimary === from) r.notifyPrimary = null; // the new primary of our switchover is live
  f.pendingView = r.role === 'spare' ? m.pendingView : null;
  // While a snapshot is being restored nothing can be applied: entries wait for it.
  const restoring = f.restore !== null && !f.restore.done;
  const gap = restoring || m.prevIndex > r.lastIndex;
  if (!gap) {
    const entries: Entry[] = [];
    for (let i = r.lastIndex - m.prevIndex; i < m.payloads.length; i++) {
      const payload = m.payloads[i];
      assert(payload !== undefined, 'frame payload index in range');
      entries.push({ index: m.prevIndex + 1 + i, payload });
    }
    if (entries.length > 0) {
      r.lastIndex += entries.length;
      for (const e of entries) r.pending.push(e);
      out.push({ type: 'receive', entries });
    }
  }
  // The ack first: it says we hold the entries; applying them is ours alone.
  out.push({ type: 'send', to: from, msg: { type: 'ack', epoch, seq: m.seq, ackedIndex: r.lastIndex, gap } });
  if (!restoring) {
    r.commitIndex = Math.max(r.commitIndex, m.commitIndex);
    applyCommitted(r, out);
  }
}

/** Follower: apply the entries held up to the commit index. */
function applyCommitted(r: Replica, out: Action[]): void {
  const upTo = Math.min(r.commitIndex, r.lastIndex);
  if (upTo <= r.appliedIndex) return;
  const n = upTo - r.appliedIndex;
  const entries = r.pending.slice(r.pendingHead, r.pendingHead + n);
  assert(entries.length === n && entries[0]!.index === r.appliedIndex + 1, 'held entries to apply in range');
  r.pendingHead += n;
  r.appliedIndex = upTo;
  keepInBacklog(r, entries);
  if (r.pendingHead === r.pending.length) {
    r.pending = [];
    r.pendingHead = 0;
  } else if (r.pendingHead > 1024 && r.pendingHead * 2 > r.pending.length) {
    r.pending = r.pending.slice(r.pendingHead);
    r.pendingHead = 0;
  }
  out.push({ type: 'apply', entries });
}

/**
 * Several backups and the commit index (issue 11 item 4). A primary's frames carry the commit
 * index, what every backup holds; a follower applies entries only up to it and keeps the rest
 * as held (acked, not applied). So every backup's applied state is in every other backup's
 * log, and when the primary dies, any of them can go live keeping the others: it applies what
 * it holds and sends each from what it had applied, which each holds. Entries a backup holds
 * beyond the new primary's log were never released (each output waited for every backup), and
 * it drops them: the new primary's frames say which log it has (`term`: the epoch it went live
 * in; `baseIndex`, `baseTerm`: what it held then, from which primary's log). A backup whose log
 * is that of baseTerm keeps its entries up to baseIndex and drops the rest; one that cannot
 * tell (it holds another log, or applied beyond baseIndex, or recovered from disk) halts and is
 * recruited again, as before.
 *
 * Returns false when the frame was not taken (this replica halted).
 */
function sameLog(r: Replica, out: Action[], from: NodeId, m: Extract<PeerMessage, { type: 'frame' }>): boolean {
  if (m.term === r.logTerm) return true; // the log we hold (or both unknown: protocol 7, as it did)
  if (r.role === 'spare') {
    // A recruit: its snapshot and entries came from this primary.
    r.logTerm = m.term;
    return true;
  }
  const bug = r.config.bugs?.noBaseCheck === true;
  // A node recovered from disk applied all of it, held entries too (appliedIndex = lastIndex),
  // so it follows a new primary only if its base covers everything the disk held.
  if (bug || (m.baseTerm !== 0 && m.baseTerm === r.logTerm && r.appliedIndex <= m.baseIndex)) {
    // PLANTED BUG (noBaseCheck): keep everything held, whatever log it is from.
    const dropped = bug ? 0 : Math.max(0, r.lastIndex - m.baseIndex);
    if (dropped > 0 && r.config.durable) {
      halt(r, out, `${from}'s log lacks entries ${m.baseIndex + 1}..${r.lastIndex} that this node holds on disk (never released; a durable log is not cut back): it rejoins as a spare to be recruited`);
      return false;
    }
    if (dropped > 0) {
      r.pending.length -= dropped;
      r.lastIndex = m.baseIndex;
    }
    log(out, 'info', 'new-log', { primary: from, term: m.term, baseIndex: m.baseIndex, baseTerm: m.baseTerm, kept: r.lastIndex, dropped, appliedIndex: r.appliedIndex });
    r.logTerm = m.term;
    return true;
  }
  halt(
    r,
    out,
    `cannot tell how much of what this node holds is in ${from}'s log (its term ${m.term}, base ${m.baseIndex} of term ${m.baseTerm}; this node holds ${r.lastIndex} of term ${r.logTerm || 'unknown'}, applied ${r.appliedIndex}): it rejoins as a spare to be recruited`,
  );
  return false;
}

/**
 * A recruit takes a snapshot chunk. Chunks are taken in order only (cumulative acks, like
 * entries): an out-of-order one is dropped and acked with `gap`, so the primary resends from
 * the first one missing. A chunk of another snapshot (a new recruit attempt) starts afresh.
 */
function onChunk(r: Replica, out: Action[], from: NodeId, m: Extract<PeerMessage, { type: 'chunk' }>): void {
  const epoch = m.view.epoch;
  if (m.keep) return onKeep(r, out, from, m);
  let f = r.following;
  if (f === null || f.primary !== from || f.epoch !== epoch || f.restore === null || f.restore.index !== m.index) {
    f = { primary: from, epoch, lastHeardMs: r.nowMs, pendingView: null, restore: { index: m.index, chunks: 0, done: false } };
    r.following = f;
    forgetLog(r);
    log(out, 'info', 'recruit-snapshot-start', { primary: from, epoch, index: m.index });
  }
  const rs = f.restore;
  assert(rs !== null, 'a restore under way');
  r.knownEpoch = Math.max(r.knownEpoch, epoch);
  f.lastHeardMs = r.nowMs;
  let gap = false;
  // PLANTED BUG (ackDroppedChunk): take a chunk after a lost one as if nothing were missing.
  const take = !rs.done && (m.chunk === rs.chunks || (m.chunk > rs.chunks && r.config.bugs?.ackDroppedChunk === true));
  if (take) {
    out.push({ type: 'restoreChunk', index: m.index, chunk: m.chunk, last: m.last, data: m.data });
    rs.chunks = m.chunk + 1;
  } else if (m.chunk > rs.chunks) {
    gap = true;
  }
  if (m.last && !gap && !rs.done && rs.chunks === m.chunk + 1) {
    rs.done = true;
    r.lastIndex = m.index;
    r.appliedIndex = m.index;
    log(out, 'info', 'recruit-snapshot-restored', { primary: from, epoch, index: m.index, chunks: rs.chunks });
  }
  out.push({ type: 'send', to: from, msg: { type: 'chunkAck', epoch, seq: m.seq, index: m.index, chunks: rs.chunks, gap } });
}

/**
 * A resumed recruit: keep the state held (entries 1..index of the log it said in its joins).
 * Taken only by a spare holding exactly that; anything else joins again, with what it holds.
 */
function onKeep(r: Replica, out: Action[], from: NodeId, m: Extract<PeerMessage, { type: 'chunk' }>): void {
  const epoch = m.view.epoch;
  const f = r.following;
  const again = f !== null && f.primary === from && f.epoch === epoch && f.restore !== null && f.restore.index === m.index && f.restore.done;
  if (!again) {
    if (f !== null || r.lastIndex !== m.index || r.logTerm === 0) {
      log(out, 'warn', 'ignoring', { reason: `a keep of entries 1..${m.index}, this spare holds ${r.lastIndex}${f !== null ? ` and follows ${f.primary}` : ''}`, from, epoch });
      if (f === null) r.lastJoinMs = -Infinity; // say what it holds at the next tick
      return;
    }
    r.following = { primary: from, epoch, lastHeardMs: r.nowMs, pendingView: null, restore: { index: m.index, chunks: 1, done: true } };
    log(out, 'info', 'recruit-resumed', { primary: from, epoch, index: m.index, logTerm: r.logTerm });
  }
  r.knownEpoch = Math.max(r.knownEpoch, epoch);
  r.following!.lastHeardMs = r.nowMs;
  out.push({ type: 'send', to: from, msg: { type: 'chunkAck', epoch, seq: m.seq, index: m.index, chunks: 1, gap: false } });
}

function onAck(r: Replica, out: Action[], from: NodeId, m: Extract<PeerMessage, { type: 'ack' }>): void {
  if (r.role !== 'primary') return;
  if (m.epoch > r.view.epoch) return rumour(r, out, m.epoch, `${from} acked in newer epoch ${m.epoch}`);
  const f = r.followers.get(from);
  if (f === undefined || m.epoch < r.view.epoch) {
    log(out, 'info', 'ignoring', { reason: f === undefined ? 'ack from a node that is not a follower' : 'ack from an older epoch', from, epoch: m.epoch });
    return;
  }
  if (m.ackedIndex > r.lastIndex || m.seq > r.frameSeq) {
    log(out, 'warn', 'ignoring', { reason: 'ack beyond what was sent', from, ackedIndex: m.ackedIndex, seq: m.seq });
    return;
  }
  if (f.kind === 'recruit' && m.seq < f.startSeq) {
    log(out, 'info', 'ignoring', { reason: 'ack from an earlier attempt to recruit this node', from, seq: m.seq });
    return;
  }
  if (f.inherited) {
    f.inherited = false;
    if (m.ackedIndex < f.ackedIndex) {
      // It holds less than every backup should (only a forged commit index makes a backup apply
      // more than the others hold). Send it the rest if we still have it; else it must be
      // recruited again: drop it.
      const first = firstRetained(r);
      log(out, 'warn', 'backup-behind', { backup: from, ackedIndex: m.ackedIndex, expected: f.ackedIndex, retainedFrom: first });
      if (!keepsFrom(r, m.ackedIndex + 1)) {
        if (r.cas === null) dropBackups(r, out, [from]);
        else f.inherited = true; // decide at its next ack
        return;
      }
      f.ackedIndex = m.ackedIndex;
      rewind(r, f, m.ackedIndex + 1);
    }
  }
  f.lastAckMs = r.nowMs;
  f.ackedSeq = Math.max(f.ackedSeq, m.seq);
  if (f.kind === 'backup') f.viewAcked = true; // acks of older epochs were dropped above
  if (m.ackedIndex > f.ackedIndex) {
    f.ackedIndex = m.ackedIndex;
    f.lastProgressMs = r.nowMs;
    progress(r, f);
  }
  if (f.kind === 'recruit' && f.sealed && !m.gap && m.ackedIndex >= f.snapshotIndex && !snapshotDone(f)) {
    // It took a frame (a recruit still restoring acks every frame with a gap): it holds every
    // chunk, and their acks were lost.
    f.chunksAcked = f.nextChunk = f.chunks.length;
  }
  if (m.gap && m.seq >= f.rewindSeq) rewind(r, f, Math.max(f.ackedIndex, f.snapshotIndex) + 1);
  if (f.kind === 'recruit') advanceRecruit(r, out, f);
  tryRelease(r, out);
  trimLog(r);
  trySwitch(r, out);
}

function onJoin(r: Replica, out: Action[], from: NodeId, m: Extract<PeerMessage, { type: 'join' }>): void {
  if (r.role !== 'primary') return;
  if (isBackupIn(r.view, from)) {
    // Our backup restarted empty: it holds nothing. Suspect it now rather than after the timeout.
    if (r.cas === null) {
      if (r.switchover !== null) endSwitch(r, out, 'aborted', 'E_SWITCHOVER_ABORTED', `the backup ${from} restarted empty: dropping it, serving on as primary`);
      log(out, 'warn', 'suspect', { peer: from, role: 'backup', reason: 'it rejoined as an empty spare' });
      dropBackups(r, out, [from]);
    }
    return;
  }
  const f = r.followers.get(from);
  if (f !== undefined) {
    // Joins sent before the snapshot arrived come before its ack (one ordered channel); a
    // join after the ack means the recruit restarted (empty, or with other state). A resumed
    // one that says it holds other state than it was resumed from will never take its keep.
    const restarted = f.phase !== 'snapshot' || f.chunksAcked > 0;
    const otherState = f.resumeTerm > 0 && (m.index !== f.snapshotIndex || m.logTerm !== f.resumeTerm);
    if ((restarted || otherState) && r.cas?.purpose !== 'addBackup') abandonRecruit(r, out, f, restarted ? 'it rejoined as a spare' : `it holds other state than it was resumed from (${m.index} of term ${m.logTerm})`);
    return;
  }
  // One recruit at a time, while the view has fewer backups than the cluster keeps.
  const recruiting = [...r.followers.values()].some((x) => x.kind === 'recruit');
  if (r.view.backups.length < backupsWanted(r) && !recruiting && r.cas === null) {
    const why = m.index > 0 ? whyNotResume(r, m.index, m.logTerm) : null;
    if (m.index > 0 && why === null) startResume(r, out, from, m.index, m.logTerm);
    else {
      if (why !== null) log(out, 'info', 'resume-refused', { recruit: from, index: m.index, logTerm: m.logTerm, reason: why });
      startRecruit(r, out, from);
    }
  }
}

/** How many backups this cluster keeps (`"backups"`, default 1). */
function backupsWanted(r: Replica): number {
  return Math.max(1, r.config.backups ?? 1);
}

/** `{e, self, B} -> {e+1, self, B without ids}`: the silent or emptied backups leave the view. */
function dropBackups(r: Replica, out: Action[], ids: readonly NodeId[]): void {
  startCas(r, out, 'dropBackup', r.view, { epoch: r.view.epoch + 1, primary: r.config.id, backups: r.view.backups.filter((id) => !ids.includes(id)) });
}

// ---------------------------------------------------------------------------------------
// Recruiting a new backup (FT VMotion, §3.1)

function newFollower(r: Replica, id: NodeId, kind: Follower['kind'], ackedIndex: number, inherited = false, resume: { index: number; logTerm: number } | null = null): Follower {
  return {
    resumeTerm: resume?.logTerm ?? 0,
    inherited,
    id,
    kind,
    phase: kind === 'recruit' ? 'snapshot' : 'catchup',
    nextIndex: r.lastIndex + 1,
    ackedIndex,
    ackedSeq: 0,
    sentSeq: 0,
    lastSendMs: r.nowMs,
    lastAckMs: r.nowMs,
    lastProgressMs: r.nowMs,
    rewindSeq: 0,
    snapshotIndex: inherited ? ackedIndex : resume !== null ? resume.index : r.lastIndex,
    handoverSeq: 0,
    snapshotSentMs: r.nowMs,
    startSeq: r.frameSeq + 1,
    chunks: [],
    sealed: false,
    snapshotBytes: 0,
    nextChunk: 0,
    chunksAcked: 0,
    chunkRewindSeq: 0,
    chunkResendMs: r.nowMs,
    progressMs: r.nowMs,
    progressGapMaxMs: 0,
    viewAcked: false,
  };
}

function startRecruit(r: Replica, out: Action[], id: NodeId): void {
  r.followers.set(id, newFollower(r, id, 'recruit', 0));
  r.snapshotFor = id;
  log(out, 'info', 'recruit-start', { recruit: id, snapshotIndex: r.lastIndex, epoch: r.view.epoch });
  out.push({ type: 'takeSnapshot' });
}

// ---------------------------------------------------------------------------------------
// Resuming a spare that kept its state (issue 11 item 3)
//
// A durable node back from a restart that the view no longer names (it was dropped after the
// failure timeout), or one that halted, keeps its disk: entries 1..i of the log of term t (the
// epoch in which the primary whose log it followed went live). Its joins say (i, t). The
// primary recruits it without a snapshot when
//   - entries 1..i of its own log are that node's: t is its own term (its log only grows) and
//     i <= lastIndex, or t is its base term (the log it went live from, whose entries up to
//     baseIndex are its own) and i <= baseIndex. Any other log (older terms, or a node that
//     holds entries past the base: a deposed primary's never-released ones) gets a snapshot;
//   - it still keeps entries i+1.. (its retained log and its backlog, config backlogBytes).
// Then the recruit's "snapshot" is one empty chunk with `keep`: the spare takes it only if it
// still holds exactly (i, t), and acks it; entries i+1.. follow as for any recruit (catch-up,
// handover, the same test-and-set). A spare holding anything else ignores it and joins again;
// the primary, seeing a join with other state, abandons the resume.

/** Null when a spare holding entries 1..index of the log of term logTerm can be resumed; else why not. */
function whyNotResume(r: Replica, index: number, logTerm: number): string | null {
  const bug = r.config.bugs?.resumeAnyLog === true;
  const ours = (logTerm === r.term && index <= r.lastIndex) || (logTerm === r.baseTerm && r.baseTerm > 0 && index <= r.baseIndex);
  // PLANTED BUG (resumeAnyLog): take any state whose index is not beyond our log.
  if (!ours && !(bug && index <= r.lastIndex)) {
    return `its entries are not known to be a prefix of this log (term ${r.term}, base ${r.baseIndex} of term ${r.baseTerm}, last ${r.lastIndex})`;
  }
  const first = firstRetained(r);
  if (index + 1 < first) return `entries ${index + 1}..${first - 1} are no longer kept (backlogBytes ${r.config.backlogBytes ?? 0})`;
  if (!keepsFrom(r, index + 1)) return `entries ${index + 1}..${r.lastIndex} are not all kept`;
  return null;
}

/** Are entries from..lastIndex all in memory (the backlog, then the retained log, with no gap)? */
function keepsFrom(r: Replica, from: number): boolean {
  if (from > r.lastIndex) return true;
  const l0 = r.log[r.logHead]?.index;
  if (l0 !== undefined && from >= l0) return r.log[r.log.length - 1]!.index === r.lastIndex;
  const b0 = r.backlog[r.backlogHead]?.index;
  const b1 = r.backlog[r.backlog.length - 1]?.index;
  if (b0 === undefined || b1 === undefined || from < b0) return false;
  return l0 === undefined ? b1 === r.lastIndex : l0 === b1 + 1 && r.log[r.log.length - 1]!.index === r.lastIndex;
}

function startResume(r: Replica, out: Action[], id: NodeId, index: number, logTerm: number): void {
  const f = newFollower(r, id, 'recruit', 0, false, { index, logTerm });
  f.nextIndex = index + 1;
  f.chunks.push(KEEP_CHUNK);
  f.sealed = true;
  r.followers.set(id, f);
  log(out, 'info', 'recruit-resume', { recruit: id, index, logTerm, lastIndex: r.lastIndex, epoch: r.view.epoch });
  trimLog(r);
  sendChunks(r, out, f);
}

/** The keep chunk's (empty) data. */
const KEEP_CHUNK = new Uint8Array(0);

/** The first index still kept (backlog or retained log); lastIndex + 1 when none. */
function firstRetained(r: Replica): number {
  return r.backlog[r.backlogHead]?.index ?? r.log[r.logHead]?.index ?? r.lastIndex + 1;
}

function backlogOn(r: Replica): boolean {
  return (r.config.backlogBytes ?? 0) > 0;
}

/** An entry no follower needs any more (or a follower applied) goes to the backlog, if kept. */
function toBacklog(r: Replica, e: Entry): void {
  if (!backlogOn(r)) return;
  const last = r.backlog[r.backlog.length - 1];
  if (last !== undefined && last.index + 1 !== e.index) clearBacklog(r); // never a gap
  r.backlog.push(e);
  r.backlogCost += e.payload.length + BACKLOG_ENTRY_COST;
}

/** Drop the backlog's oldest entries past its budget (never one a follower still needs: `keepFrom`). */
function trimBacklog(r: Replica, keepFrom: number): void {
  const max = r.config.backlogBytes ?? 0;
  while (r.backlogHead < r.backlog.length && r.backlogCost > max) {
    const e = r.backlog[r.backlogHead]!;
    if (e.index >= keepFrom) break;
    r.backlogCost -= e.payload.length + BACKLOG_ENTRY_COST;
    r.backlogHead++;
  }
  if (r.backlog.length === 0) return; // off (no backlogBytes): nothing to do, nothing to allocate
  if (r.backlogHead === r.backlog.length) {
    r.backlog = [];
    r.backlogHead = 0;
  } else if (r.backlogHead > 1024 && r.backlogHead * 2 > r.backlog.length) {
    r.backlog = r.backlog.slice(r.backlogHead);
    r.backlogHead = 0;
  }
}

/**
 * Entries of this replica's own state that nothing else holds for a follower (applied by a
 * backup, appended by a primary with no follower, or retained ones of a primary stepping down),
 * up to lastIndex: into the backlog, then trimmed to its budget.
 */
function keepInBacklog(r: Replica, entries: readonly Entry[]): void {
  if (!backlogOn(r) || entries.length === 0) return;
  for (const e of entries) toBacklog(r, e);
  trimBacklog(r, r.lastIndex + 1);
}

function clearBacklog(r: Replica): void {
  r.backlog = [];
  r.backlogHead = 0;
  r.backlogCost = 0;
}

/** What an entry in the backlog costs beside its payload (the entry object, the array slot). */
const BACKLOG_ENTRY_COST = 64;

/**
 * The driver streams the snapshot of the recruit `snapshotFor`: how many more chunks it may
 * produce now (0: none, or the recruit is gone: then it drops its stream). The primary keeps
 * at most two windows of chunks not yet acked, so its extra memory stays bounded.
 */
export function snapshotChunksWanted(r: Replica): number {
  const f = r.snapshotFor === null ? undefined : r.followers.get(r.snapshotFor);
  if (r.role !== 'primary' || f === undefined || f.sealed) return 0;
  const window = Math.max(1, r.config.snapshotWindowChunks ?? DEFAULT_SNAPSHOT_WINDOW_CHUNKS);
  return Math.max(0, 2 * window - (f.chunks.length - f.chunksAcked));
}

/** The whole snapshot at once: cut into chunks of snapshotChunkBytes (views, no copy). */
function onSnapshotTaken(r: Replica, out: Action[], index: number, data: Uint8Array): void {
  const size = Math.max(1, r.config.snapshotChunkBytes ?? DEFAULT_SNAPSHOT_CHUNK_BYTES);
  for (let at = 0; at === 0 || at < data.length; at += size) {
    onSnapshotChunk(r, out, index, data.subarray(at, at + size), at + size >= data.length);
  }
}

/** A chunk of the recruit's snapshot, from the driver (in order; `last` on the final one). */
function onSnapshotChunk(r: Replica, out: Action[], index: number, data: Uint8Array, last: boolean): void {
  const f = r.snapshotFor === null ? undefined : r.followers.get(r.snapshotFor);
  if (r.role !== 'primary' || f === undefined || f.sealed) {
    log(out, 'info', 'ignoring', { reason: 'a snapshot chunk for no recruit (it was abandoned)', index });
    return;
  }
  assert(index === f.snapshotIndex, `snapshot at ${index}, asked at ${f.snapshotIndex}`);
  // Views, not copies: the driver hands the bytes over and never changes them.
  f.chunks.push(data);
  f.snapshotBytes += data.length;
  if (f.chunks.length === 1) {
    // The recruit's silence counts from now: taking the snapshot may have blocked us for long.
    f.snapshotSentMs = r.nowMs;
    f.lastAckMs = r.nowMs;
    f.lastProgressMs = r.nowMs;
    f.chunkResendMs = r.nowMs;
    f.progressMs = r.nowMs;
  }
  if (last) {
    f.sealed = true;
    r.snapshotFor = null;
    log(out, 'info', 'recruit-snapshot-taken', { recruit: f.id, index, bytes: f.snapshotBytes, chunks: f.chunks.length });
  }
  sendChunks(r, out, f);
  if (f.chunks.length > 1) return;
  if (r.config.bugs?.earlyBackup && r.cas === null) {
    // PLANTED BUG: hand over at once, without waiting for the recruit to hold what was released.
    f.phase = 'handover';
    startCas(r, out, 'addBackup', r.view, { epoch: r.view.epoch + 1, primary: r.config.id, backups: [...r.view.backups, f.id] });
  }
}

/** Recruits: send the snapshot's chunks the window allows (go-back-N from nextChunk). */
function sendChunks(r: Replica, out: Action[], f: Follower): void {
  const window = Math.max(1, r.config.snapshotWindowChunks ?? DEFAULT_SNAPSHOT_WINDOW_CHUNKS);
  while (f.nextChunk < f.chunks.length && f.nextChunk - f.chunksAcked < window) {
    const data = f.chunks[f.nextChunk];
    assert(data !== undefined, 'snapshot chunk in range');
    const seq = ++r.frameSeq;
    const last = f.sealed && f.nextChunk === f.chunks.length - 1;
    out.push({ type: 'send', to: f.id, msg: { type: 'chunk', view: r.view, seq, index: f.snapshotIndex, chunk: f.nextChunk, last, data, keep: f.resumeTerm > 0 } });
    f.nextChunk++;
    f.sentSeq = seq;
    f.lastSendMs = r.nowMs;
  }
}

/** The recruit holds every chunk: entries after the snapshot index follow. */
const ACKED_CHUNK = new Uint8Array(0);

function snapshotDone(f: Follower): boolean {
  return f.sealed && f.chunksAcked === f.chunks.length;
}

function onChunkAck(r: Replica, out: Action[], from: NodeId, m: Extract<PeerMessage, { type: 'chunkAck' }>): void {
  if (r.role !== 'primary') return;
  if (m.epoch > r.view.epoch) return rumour(r, out, m.epoch, `${from} acked a chunk in newer epoch ${m.epoch}`);
  const f = r.followers.get(from);
  if (f === undefined || f.kind !== 'recruit' || m.epoch < r.view.epoch || m.index !== f.snapshotIndex) {
    log(out, 'info', 'ignoring', { reason: 'chunk ack for no snapshot being sent', from, epoch: m.epoch, index: m.index });
    return;
  }
  if (m.chunks > f.nextChunk && m.chunks > f.chunksAcked || m.chunks > f.chunks.length || m.seq > r.frameSeq || m.seq < f.startSeq) {
    log(out, 'warn', 'ignoring', { reason: 'chunk ack beyond what was sent', from, chunks: m.chunks, seq: m.seq });
    return;
  }
  if (m.chunks < f.chunksAcked) return abandonRecruit(r, out, f, `it lost chunks it had acked (${m.chunks} < ${f.chunksAcked}): it restarted`);
  f.lastAckMs = r.nowMs;
  if (m.chunks > f.chunksAcked) {
    for (let i = f.chunksAcked; i < m.chunks; i++) f.chunks[i] = ACKED_CHUNK; // let it go
    f.chunksAcked = m.chunks;
    f.chunkResendMs = r.nowMs;
    progress(r, f);
  }
  if (m.gap && m.seq >= f.chunkRewindSeq && f.nextChunk > f.chunksAcked) rewindChunks(r, f);
  if (snapshotDone(f) && f.ackedIndex < f.snapshotIndex) f.ackedIndex = f.snapshotIndex;
  sendChunks(r, out, f);
  advanceRecruit(r, out, f);
  tryRelease(r, out);
  trimLog(r);
}

function progress(r: Replica, f: Follower): void {
  f.progressGapMaxMs = Math.max(f.progressGapMaxMs, r.nowMs - f.progressMs);
  f.progressMs = r.nowMs;
}

function rewindChunks(r: Replica, f: Follower): void {
  f.nextChunk = f.chunksAcked;
  f.chunkRewindSeq = r.frameSeq + 1;
  f.chunkResendMs = r.nowMs;
}

function advanceRecruit(r: Replica, out: Action[], f: Follower): void {
  if (f.phase === 'snapshot' && snapshotDone(f) && f.ackedIndex >= f.snapshotIndex) {
    f.phase = 'catchup';
    const roundTripMs = r.nowMs - f.snapshotSentMs;
    const max = RECRUIT_PATIENCE_MAX * r.config.failureTimeoutMs;
    r.recruitPatienceMs = Math.min(Math.max(r.config.failureTimeoutMs, 2 * f.progressGapMaxMs), max);
    log(out, 'info', 'recruit-catchup', { recruit: f.id, ackedIndex: f.ackedIndex, lastIndex: r.lastIndex, chunks: f.chunks.length, snapshotRoundTripMs: roundTripMs });
  }
  if (f.phase === 'catchup' && r.lastIndex - f.ackedIndex <= r.config.catchupEntriesMax && r.cas === null) {
    // From now on every output also waits for the recruit's ack (it is a guard).
    f.phase = 'handover';
    log(out, 'info', 'recruit-handover', { recruit: f.id, ackedIndex: f.ackedIndex, releasedIndexMax: r.releasedIndexMax });
  }
  if (f.phase === 'handover' && r.cas === null && f.ackedIndex >= Math.max(r.releasedIndexMax, r.commitIndex) && backupsHold(r) >= f.snapshotIndex && f.handoverSeq > 0 && f.ackedSeq >= f.handoverSeq) {
    // The recruit holds every entry any released output depends on and every entry a backup
    // may have applied, the other backups hold what its snapshot holds (so whichever of them
    // goes live can send the others what they lack), and it knows the view we are about to
    // propose (so it can go live if we die right after the test-and-set lands).
    startCas(r, out, 'addBackup', r.view, { epoch: r.view.epoch + 1, primary: r.config.id, backups: [...r.view.backups, f.id] });
  }
}

/**
 * Drop a recruit. One that was told the pending view `{e+1, self, it}` may be asking the
 * arbiter to go live from it, and keeps asking while the arbiter holds epoch e (its "no" is
 * not final: the view might still land, and an attempt of its own in flight with it). We
 * never proposed that view (a recruit is never abandoned while our proposal is pending), so
 * we fence it off: `{e, self, Bs} -> {e+1, self, Bs}`. Then epoch e+1 exists without the
 * recruit, its next refusal is final, it goes back to an empty spare that joins again, and
 * no attempt of its own still in flight can ever land. (With several backups another view
 * change of ours may be pending; it is the fence.)
 */
function abandonRecruit(r: Replica, out: Action[], f: Follower, reason: string): void {
  r.followers.delete(f.id);
  if (r.snapshotFor === f.id) r.snapshotFor = null;
  log(out, 'warn', 'recruit-abandoned', { recruit: f.id, reason, toldPendingView: f.handoverSeq > 0 });
  trimLog(r);
  tryRelease(r, out);
  if (f.handoverSeq > 0 && !r.config.bugs?.noRecruitFence) {
    // With several backups, a view change other than this recruit's may be pending (dropping
    // a silent backup, a switchover, another fence). It takes epoch e+1 without the recruit
    // whether it lands or loses (then the view had already moved on): that fences it too.
    assert(r.cas === null || r.cas.purpose !== 'addBackup', 'abandoning a recruit in handover while its own test-and-set is pending');
    if (r.cas === null) startCas(r, out, 'fence', r.view, { epoch: r.view.epoch + 1, primary: r.config.id, backups: r.view.backups });
  }
}

// ---------------------------------------------------------------------------------------
// The log, the logging channel and the output rule

function onAppend(r: Replica, payload: Uint8Array): void {
  assert(canAppend(r), 'append while not primary or while flow control is closed');
  r.lastIndex++;
  r.appliedIndex = r.lastIndex; // the primary executed it before appending it
  if (r.followers.size > 0) {
    r.log.push({ index: r.lastIndex, payload });
    r.retainedBytes += payload.length;
  } else if (backlogOn(r)) {
    keepInBacklog(r, [{ index: r.lastIndex, payload }]); // allocates only when a backlog is kept
  }
}

function onHold(r: Replica, out: Action[], outputId: number, fresh: boolean): void {
  assert(r.role === 'primary', 'an output held by a replica that is not primary');
  const freshSeq = fresh && !r.config.bugs?.staleReads ? r.frameSeq + 1 : 0;
  r.held.push({ outputId, index: r.lastIndex, freshSeq });
  r.freshSeqWanted = Math.max(r.freshSeqWanted, freshSeq);
  tryRelease(r, out);
}

function isGuard(r: Replica, f: Follower): boolean {
  return f.kind === 'backup' || (f.phase === 'handover' && !r.config.bugs?.earlyBackup);
}

/** §2.2: release, in order, every held output that every guard has acked. */
function tryRelease(r: Replica, out: Action[]): void {
  if (r.heldHead === r.held.length) return;
  // The switchover's test-and-set is pending: the view may already name another primary.
  if (r.switchover?.phase === 'cas') return;
  const ignoreRule = r.config.bugs?.noOutputRule === true;
  const oneAck = r.config.bugs?.releaseOnOneAck === true;
  // Runs for every held output (once when it is held, again on acks): it allocates only the
  // list of what it releases.
  let ids: number[] | null = null;
  while (r.heldHead < r.held.length) {
    const h = r.held[r.heldHead];
    assert(h !== undefined, 'held output in range');
    if (!ignoreRule && !guardsHold(r, h, oneAck)) break;
    (ids ??= []).push(h.outputId);
    r.releasedIndexMax = Math.max(r.releasedIndexMax, h.index);
    r.heldHead++;
  }
  if (r.heldHead === r.held.length) {
    r.held.length = 0; // nothing else keeps this array
    r.heldHead = 0;
    r.freshSeqWanted = 0;
  } else if (r.heldHead > 1024 && r.heldHead * 2 > r.held.length) {
    r.held = r.held.slice(r.heldHead);
    r.heldHead = 0;
  }
  if (ids !== null) out.push({ type: 'release', outputIds: ids });
}

/** Every guard (each backup, a recruit being handed over) acked held output `h`. */
function guardsHold(r: Replica, h: Held, oneAck: boolean): boolean {
  let guards = 0;
  let acked = 0;
  for (const g of r.followers.values()) {
    if (!isGuard(r, g)) continue;
    guards++;
    if (g.ackedIndex >= h.index && g.ackedSeq >= h.freshSeq) acked++;
  }
  // PLANTED BUG (releaseOnOneAck): one guard's ack is enough.
  if (oneAck && guards > 0) return acked > 0;
  return acked === guards;
}

/**
 * The commit index for follower `f`: what every OTHER guard (each backup, a recruit being handed
 * over) acked, so that what `f` applies is held by every other backup (with one backup: all it
 * holds, at once). A recruit is made backup only once it holds the highest commit index ever
 * sent (advanceRecruit), so that holds for it too.
 */
function commitFor(r: Replica, f: Follower): number {
  let c = r.lastIndex;
  for (const g of r.followers.values()) if (g !== f && isGuard(r, g)) c = Math.min(c, g.ackedIndex);
  if (c > r.commitIndex) r.commitIndex = c;
  return c;
}

/** The least index every backup in the view acked (lastIndex with none). */
function backupsHold(r: Replica): number {
  let c = r.lastIndex;
  for (const g of r.followers.values()) if (g.kind === 'backup') c = Math.min(c, g.ackedIndex);
  return c;
}

/** Drop retained entries that every follower has acked (or never needs). */
function trimLog(r: Replica): void {
  let keepFrom = r.lastIndex + 1;
  for (const f of r.followers.values()) keepFrom = Math.min(keepFrom, Math.max(f.ackedIndex, f.snapshotIndex) + 1);
  while (r.logHead < r.log.length) {
    const e = r.log[r.logHead];
    assert(e !== undefined, 'retained entry in range');
    if (e.index >= keepFrom) break;
    r.retainedBytes -= e.payload.length;
    r.logHead++;
    toBacklog(r, e);
  }
  trimBacklog(r, keepFrom);
  if (r.logHead === r.log.length) {
    r.log = [];
    r.logHead = 0;
  } else if (r.logHead > 1024 && r.logHead * 2 > r.log.length) {
    r.log = r.log.slice(r.logHead);
    r.logHead = 0;
  }
}

function rewind(r: Replica, f: Follower, from: number): void {
  f.nextIndex = from;
  f.rewindSeq = r.frameSeq + 1;
  f.lastProgressMs = r.nowMs;
}

function retained(r: Replica, index: number): Entry {
  const b = r.backlog[r.backlogHead];
  if (b !== undefined && index >= b.index && index < b.index + r.backlog.length - r.backlogHead) {
    const e = r.backlog[r.backlogHead + (index - b.index)]!;
    assert(e.index === index, `backlog entry ${index} in place`);
    return e;
  }
  const first = r.log[r.logHead];
  assert(first !== undefined, `entry ${index} needed but nothing is retained`);
  const e = r.log[r.logHead + (index - first.index)];
  assert(e !== undefined && e.index === index, `entry ${index} is not retained`);
  return e;
}

/** Send each follower its pending entries, a heartbeat when idle, a probe for waiting reads. */
function sendFrames(r: Replica, out: Action[]): void {
  const c = r.config;
  for (const f of r.followers.values()) {
    if (f.kind === 'recruit' && f.phase === 'snapshot') {
      sendChunks(r, out, f);
      if (!f.sealed || f.nextChunk < f.chunks.length) {
        // Entries go behind the last chunk; until then only heartbeats (the recruit acks
        // them, so it is heard even while the window is shut).
        if (r.nowMs - f.lastSendMs >= c.heartbeatMs) sendFrame(r, out, f, []);
        continue;
      }
    }
    let sent = false;
    while (f.nextIndex <= r.lastIndex) {
      const payloads: Uint8Array[] = [];
      let bytes = 0;
      while (f.nextIndex + payloads.length <= r.lastIndex && payloads.length < c.frameEntriesMax) {
        const e = retained(r, f.nextIndex + payloads.length);
        if (payloads.length > 0 && bytes + e.payload.length > c.frameBytesMax) break;
        payloads.push(e.payload);
        bytes += e.payload.length;
      }
      sendFrame(r, out, f, payloads);
      sent = true;
    }
    const probe = (isGuard(r, f) && r.freshSeqWanted > f.sentSeq) || (f.phase === 'handover' && f.handoverSeq === 0);
    if (!sent && (probe || r.nowMs - f.lastSendMs >= c.heartbeatMs)) sendFrame(r, out, f, []);
  }
}

function sendFrame(r: Replica, out: Action[], f: Follower, payloads: Uint8Array[]): void {
  const seq = ++r.frameSeq;
  const pendingView: View | null =
    f.kind === 'recruit' && f.phase === 'handover' ? { epoch: r.view.epoch + 1, primary: r.config.id, backups: [...r.view.backups, f.id] } : null;
  out.push({
    type: 'send',
    to: f.id,
    msg: {
      type: 'frame',
      view: r.view,
      seq,
      prevIndex: f.nextIndex - 1,
      payloads,
      primaryIndex: r.lastIndex,
      pendingView,
      commitIndex: commitFor(r, f),
      term: r.term,
      baseIndex: r.baseIndex,
      baseTerm: r.baseTerm,
    },
  });
  if (pendingView !== null && f.handoverSeq === 0) f.handoverSeq = seq;
  // The retransmission clock starts when entries go out to a follower that had none pending.
  if (payloads.length > 0 && f.ackedIndex >= f.nextIndex - 1) f.lastProgressMs = r.nowMs;
  f.nextIndex += payloads.length;
  f.sentSeq = seq;
  f.lastSendMs = r.nowMs;
}
