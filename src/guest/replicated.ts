// ReplicatedService: a StateMachine run in one replication mode, with the replicated
// duplicate filter that gives clients at-most-once execution across failover (DESIGN.md §2).
//
// The primary calls `execute` and appends the returned `entry` to the log; the backup calls
// `applyEntry` with it. The filter (client id -> floor + recorded replies by seq) is part of
// the replicated state: it changes only in logged steps, identically on both sides, and is in
// every snapshot and digest. Anything that does not produce an entry (reads, refusals,
// duplicates, a plain client's write that changed nothing) leaves the filter untouched, so the
// primary never drifts from its backup. A write from a client with an id is always logged,
// even when it changed nothing: a late duplicate of it must find its recorded reply.
//
// Entry encoding (opaque to the core):
//   u8 mode tag (1 rsm, 2 state-transfer)
//   u8 has-client (0 plain client, 1 deduplicated, 2 session open, 3 quarantine); if 1: text
//     clientId, varuint seq, varuint ackedBelow; if 2: text clientId, and nothing else follows;
//     if 3: text command fingerprint, text reason, text the session it opens ('' for none),
//     and nothing else follows
//   rsm:            bytes command
//   state-transfer: [bytes reply, only if has-client] u8 has-change (0 only with a client)
//                   [bytes change, if has-change]
//
// Sessions: a client id names a session. It opens with the request seq 1, ackedBelow 0 (the
// first sending of a client's first request); a request from an id the filter does not know,
// other than that one, is refused with E_SESSION_EXPIRED, never executed. A session's first
// request that logs nothing by itself (a read, a refused write) logs a session-open entry, so
// the session exists before its seq 2. A session expires when sessionEntries logged entries
// pass without a logged step of its own (log time: replicated, the same on every replica,
// never the wall clock); at most clientsMax sessions are remembered, the least recently used
// being evicted. Either way its later requests are refused with E_SESSION_EXPIRED, so a late
// retry of an old request cannot execute twice: the client starts a new session (a new id).
// A client may hold at most repliesPerClientMax unacknowledged replies (a new request beyond
// that is refused with E_DEDUP_WINDOW).
// The filter is also bounded in bytes (bytesMax, counted deterministically: reply bytes plus a
// fixed overhead per record and per client, so every replica evicts the same). Past it, the
// least recently used client's recorded replies are dropped first, and its floor raised above
// them: a retry of one of them is refused with E_DEDUP_STALE (it executed once; its reply is
// gone), never executed again. Only if that is not enough are whole sessions evicted, as above.
// A command that changed nothing is recorded as the machine shortens it (`recordedReply`: kv
// cuts long error replies), so refused commands cost little.

import { createHash } from 'node:crypto';
import type { ReplicationMode, StateMachine } from './types.js';
import { ByteReader, ByteWriter, Hash64, SumDigest } from './bytes.js';
import { wholeRestoreStream, wholeSnapshotStream, type RestoreStream, type SnapshotStream } from './snapshot-stream.js';

export interface ClientRequest<C> {
  /** null = plain client: no deduplication (at-least-once on retry). */
  readonly clientId: string | null;
  /** >= 1, per client. */
  readonly seq: number;
  /** The client holds replies for every seq < ackedBelow: the filter may forget them. */
  readonly ackedBelow: number;
  readonly command: C;
}

export interface ServiceResult<R> {
  readonly reply: R;
  /** What to append to the log; null = nothing to log. */
  readonly entry: Uint8Array | null;
  /** The reply was recorded earlier for this (clientId, seq); nothing executed. */
  readonly duplicate: boolean;
  readonly readOnly: boolean;
}

export interface DedupLimits {
  readonly clientsMax?: number;
  readonly repliesPerClientMax?: number;
  /** Bytes the filter may hold, as counted by filterBytes (the same on every replica). */
  readonly bytesMax?: number;
  /** A session expires after this many logged entries without a logged step of its own. */
  readonly sessionEntries?: number;
}

/** Counted per recorded reply beyond its bytes (the Map entry, the record, the array header). */
export const RECORD_OVERHEAD_BYTES = 160;
/** Counted per remembered client beyond its id (its state, two Map entries). */
export const CLIENT_OVERHEAD_BYTES = 240;
export const DEDUP_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;
export const DEDUP_CLIENTS_MAX_DEFAULT = 100_000;
export const DEDUP_SESSION_ENTRIES_DEFAULT = 10_000_000;

const TAG_RSM = 1;
const TAG_STATE_TRANSFER = 2;
const SNAPSHOT_VERSION = 4; // 3: sessions (lastUsed per client); 4: quarantined commands
/** The first piece of a snapshot stream starts with this (snapshotStream). */
const STREAM_VERSION = 5; // 4: sessions (lastUsed per client); 5: quarantined commands
/** Quarantined commands remembered (the oldest is forgotten past it, on every replica alike). */
export const QUARANTINE_MAX = 1000;

/** A duplicate filter read from a snapshot, not yet installed. */
interface ParsedFilter {
  readonly clients: Map<string, ClientState>;
  readonly withReplies: Map<string, ClientState>;
  readonly filterBytes: number;
  readonly quarantined: Map<string, string>;
}
const TWO32 = 0x1_0000_0000;

interface Recorded {
  readonly bytes: Uint8Array; // the encoded reply
  readonly a: number; // its digest hash lanes
  readonly b: number;
}

interface ClientState {
  readonly id: string;
  /** Lowest seq still accepted; replies below it were acknowledged (or evicted) and forgotten. */
  floor: number;
  /** The number of the last logged entry of this session (appliedEntries then): expiry. */
  lastUsed: number;
  readonly replies: Map<number, Recorded>;
}

type Refusal<R> = { readonly reply: R; readonly duplicate: boolean };

function newFloor(floor: number, seq: number, ackedBelow: number): number {
  return Math.max(floor, Math.min(ackedBelow, seq));
}

function positiveInt(v: number | undefined, dflt: number, what: string): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${what} must be a positive integer, got ${v}`);
  return v;
}

export class ReplicatedService<C, R, X> {
  readonly clientsMax: number;
  readonly repliesPerClientMax: number;
  readonly bytesMax: number;
  readonly sessionEntries: number;

  /** Clients in least-recently-used-first order (Map delete + reinsert on each logged use). */
  private clients = new Map<string, ClientState>();
  /** The clients holding recorded replies, in the same order (the first to lose them). */
  private withReplies = new Map<string, ClientState>();
  private bytes = 0;
  private readonly filterSum = new SumDigest();
  private readonly h = new Hash64();
  private readonly w = new ByteWriter(256); // reused for every entry
  private applied = 0;
  /**
   * Commands that broke the machine on a primary (it changed its state and then threw): their
   * fingerprint -> the reason, oldest first. Replicated state (in snapshots and the digest): a
   * quarantined command is refused on every replica, so a "query of death" retried by its
   * client against each new primary in turn stops one primary, not the whole cluster.
   */
  private quarantined = new Map<string, string>();
  /** The quarantine's part of digest() ('' when empty), kept up to date when it changes. */
  private quarantineDigest = '';
  /** No session can expire before appliedEntries reaches this (a cache, not replicated state). */
  private expiryCheckAt = 0;

  constructor(
    readonly machine: StateMachine<C, R, X>,
    readonly mode: ReplicationMode,
    limits: DedupLimits = {},
  ) {
    if (mode !== 'rsm' && mode !== 'state-transfer') throw new RangeError(`unknown replication mode ${String(mode)}`);
    this.clientsMax = positiveInt(limits.clientsMax, DEDUP_CLIENTS_MAX_DEFAULT, 'clientsMax');
    this.repliesPerClientMax = positiveInt(limits.repliesPerClientMax, 1024, 'repliesPerClientMax');
    this.bytesMax = positiveInt(limits.bytesMax, DEDUP_BYTES_MAX_DEFAULT, 'bytesMax');
    this.sessionEntries = positiveInt(limits.sessionEntries, DEDUP_SESSION_ENTRIES_DEFAULT, 'sessionEntries');
  }

  /** The duplicate filter's size as bounded by bytesMax. */
  get filterBytes(): number {
    return this.bytes;
  }

  /** Entries executed or applied so far (logged steps only). */
  get appliedEntries(): number {
    return this.applied;
  }

  /** Clients currently remembered by the duplicate filter. */
  get clientCount(): number {
    return this.clients.size;
  }

  /** Primary side: run the request now. */
  execute(req: ClientRequest<C>): ServiceResult<R> {
    const { clientId: id, seq, ackedBelow, command } = req;
    if (!Number.isSafeInteger(seq) || seq < 1) throw new RangeError(`seq must be an integer >= 1, got ${seq}`);
    if (!Number.isSafeInteger(ackedBelow) || ackedBelow < 0) {
      throw new RangeError(`ackedBelow must be an integer >= 0, got ${ackedBelow}`);
    }
    const m = this.machine;
    // A session's first request opens it with an entry of its own when it logs nothing itself.
    const opens = id !== null && !this.clients.has(id);
    if (this.quarantined.size > 0) {
      const why = this.quarantined.get(this.fingerprint(command));
      if (why !== undefined) {
        const refused = id !== null ? this.refusal(id, seq, ackedBelow) : null;
        if (refused !== null) return { ...refused, entry: null, readOnly: false };
        const reply = m.errorReply(`E_SERVICE_QUARANTINED this command broke the service on an earlier primary and is refused on every replica: ${why.slice(0, 300)}`);
        return { reply, entry: opens ? this.open(id) : null, duplicate: false, readOnly: false };
      }
    }
    if (m.isReadOnly(command)) {
      const refused = opens ? this.refusal(id, seq, ackedBelow) : null;
      if (refused !== null) return { ...refused, entry: null, readOnly: false };
      const { reply, change } = m.execute(command);
      if (change !== null) throw new Error(`${m.name}: a read-only command changed the state`);
      if (opens) return { reply, entry: this.open(id), duplicate: false, readOnly: false };
      return { reply, entry: null, duplicate: false, readOnly: true };
    }
    if (id !== null) {
      const refused = this.refusal(id, seq, ackedBelow);
      if (refused !== null) return { ...refused, entry: null, readOnly: false };
    }
    // Admission (kv: maxmemory) is decided here, on the primary, before anything executes: a
    // refused command is not recorded (its retry is judged afresh), so no backup ever sees it.
    const denied = m.admit?.(command) ?? null;
    if (denied !== null) return { reply: denied, entry: opens ? this.open(id) : null, duplicate: false, readOnly: false };
    const { reply, change } = m.execute(command);
    // A write that changed nothing need not be logged for a plain client. For a client with an
    // id it must be: otherwise a delayed duplicate of it, arriving after the client moved on,
    // would execute again when it no longer changes nothing (DEL of a key set since).
    if (change === null && id === null) return { reply, entry: null, duplicate: false, readOnly: false };

    const w = this.w.reset().u8(this.mode === 'rsm' ? TAG_RSM : TAG_STATE_TRANSFER);
    if (id === null) w.u8(0);
    else w.u8(1).text(id).varuint(seq).varuint(ackedBelow);
    const replyBytes = id === null ? null : this.toRecord(reply, change !== null);
    if (this.mode === 'rsm') {
      const codec = m.codec;
      if (codec.commandLength !== undefined && codec.writeCommand !== undefined) {
        const n = codec.commandLength(command);
        w.expect(n + 9).varuint(n);
        const at = w.length;
        codec.writeCommand(w, command);
        if (w.length - at !== n) throw new Error(`${m.name}: commandLength said ${n} bytes, writeCommand wrote ${w.length - at}`);
      } else {
        const cmd = codec.encodeCommand(command);
        w.expect(cmd.length + 9).bytes(cmd);
      }
    } else {
      if (replyBytes !== null) w.bytes(replyBytes);
      if (change === null) w.u8(0);
      else {
        const bytes = m.codec.encodeChange(change);
        w.expect(bytes.length + 10).u8(1).bytes(bytes);
      }
    }
    if (id !== null) this.commit(id, seq, ackedBelow, replyBytes!);
    this.stepped();
    return { reply, entry: w.take(), duplicate: false, readOnly: false };
  }

  /**
   * Primary side: make sure session `id` exists (LOCKSTEP.OPEN). The session-open entry to log
   * if it was unknown, else null. Running it twice is harmless, so a client may resend it
   * whenever its answer was lost, unlike a first request.
   */
  ensureSession(id: string): Uint8Array | null {
    if (id.length === 0) throw new RangeError('a session id must not be empty');
    return this.clients.has(id) ? null : this.open(id);
  }

  /** A command's fingerprint for the quarantine: a hash of its encoding. */
  private fingerprint(command: C): string {
    return createHash('sha256').update(this.machine.codec.encodeCommand(command)).digest('hex').slice(0, 32);
  }

  /**
   * Primary side: `command` broke the machine here (its state changed with no entry to say how,
   * so this replica must stop). The entry that quarantines the command on every replica;
   * appliedEntries counts it. Nothing else may be executed here afterwards.
   */
  quarantine(req: ClientRequest<C>, reason: string): Uint8Array {
    const fp = this.fingerprint(req.command);
    const why = reason.replace(/[\r\n]+/g, ' ').slice(0, 300);
    // A session's opening request that broke the machine still opens it (as a refused one does).
    const id = req.clientId;
    const opens = id !== null && !this.clients.has(id) && this.refusal(id, req.seq, req.ackedBelow) === null ? id : '';
    const entry = this.w.reset().u8(this.mode === 'rsm' ? TAG_RSM : TAG_STATE_TRANSFER).u8(3).text(fp).text(why).text(opens).take();
    this.addQuarantine(fp, why);
    if (opens !== '') this.openSession(opens);
    this.stepped();
    return entry;
  }

  /** Commands quarantined so far (for status). */
  get quarantinedCount(): number {
    return this.quarantined.size;
  }

  private addQuarantine(fp: string, why: string): void {
    const q = this.quarantined;
    q.delete(fp);
    q.set(fp, why);
    if (q.size > QUARANTINE_MAX) q.delete(q.keys().next().value!);
    this.hashQuarantine();
  }

  /** Rare and small (at most QUARANTINE_MAX): hashed whole, in order, whenever it changes. */
  private hashQuarantine(): void {
    if (this.quarantined.size === 0) {
      this.quarantineDigest = '';
      return;
    }
    const h = createHash('sha256');
    for (const fp of this.quarantined.keys()) h.update(fp);
    this.quarantineDigest = `/q${h.digest('hex').slice(0, 16)}`;
  }

  /** The session-open entry for `id` (unknown here), applied at once. */
  private open(id: string): Uint8Array {
    const entry = this.w.reset().u8(this.mode === 'rsm' ? TAG_RSM : TAG_STATE_TRANSFER).u8(2).text(id).take();
    this.openSession(id);
    this.stepped();
    return entry;
  }

  /** One more logged entry: count it, then expire the sessions idle for sessionEntries entries. */
  private stepped(): void {
    this.applied++;
    if (this.applied < this.expiryCheckAt) return;
    const oldest = this.applied - this.sessionEntries;
    let c = this.clients.values().next();
    for (; c.done !== true && c.value.lastUsed <= oldest; c = this.clients.values().next()) this.evict(c.value);
    // Last uses only grow, and new sessions start at the newest: the first can expire no sooner.
    this.expiryCheckAt = (c.done === true ? this.applied : c.value.lastUsed) + this.sessionEntries;
  }

  /** The encoded reply the filter records (the machine may shorten it: `recordedReply`). */
  private toRecord(reply: R, changed: boolean): Uint8Array {
    const m = this.machine;
    return m.codec.encodeReply(m.recordedReply ? m.recordedReply(reply, changed) : reply);
  }

  /** Backup side: apply an entry made by `execute` on a primary in the same mode. */
  applyEntry(entry: Uint8Array): void {
    const m = this.machine;
    const r = new ByteReader(entry, 'log entry');
    const tag = r.u8();
    const want = this.mode === 'rsm' ? TAG_RSM : TAG_STATE_TRANSFER;
    if (tag !== want) r.corrupt(`entry tag ${tag}, but this service runs in ${this.mode} mode (tag ${want})`);
    const hasClient = r.u8();
    if (hasClient > 3) r.corrupt(`bad client flag ${hasClient}`);
    if (hasClient === 3) {
      const fp = r.text();
      const why = r.text();
      const opens = r.text();
      r.end();
      if (!/^[0-9a-f]{32}$/.test(fp)) r.corrupt('bad quarantine fingerprint');
      if (opens !== '' && this.clients.has(opens)) throw new Error('replica divergence: a quarantine entry opens a session this replica knows');
      this.addQuarantine(fp, why);
      if (opens !== '') this.openSession(opens);
      this.stepped();
      return;
    }
    if (hasClient === 2) {
      const id = r.text();
      r.end();
      if (this.clients.has(id)) throw new Error('replica divergence: a session-open entry for a session this replica knows');
      this.openSession(id);
      this.stepped();
      return;
    }
    let id: string | null = null;
    let seq = 0;
    let ackedBelow = 0;
    if (hasClient === 1) {
      id = r.text();
      seq = r.varuint();
      ackedBelow = r.varuint();
      if (seq < 1) r.corrupt('seq 0');
    }
    // Decode everything before touching any state: a corrupt entry changes nothing.
    if (this.mode === 'rsm') {
      const command = m.codec.decodeCommand(r.bytes());
      r.end();
      if (id !== null && this.refusal(id, seq, ackedBelow) !== null) {
        throw new Error(`replica divergence: entry for client seq ${seq} is refused here but was executed on the primary`);
      }
      const { reply, change } = m.execute(command);
      if (change === null && id === null) throw new Error('replica divergence: the command changed nothing here but did on the primary');
      if (id !== null) this.commit(id, seq, ackedBelow, this.toRecord(reply, change !== null));
    } else {
      let replyBytes: Uint8Array | null = null;
      if (id !== null) {
        replyBytes = r.bytes().slice();
        m.codec.decodeReply(replyBytes); // validate
      }
      const hasChange = r.u8();
      if (hasChange > 1 || (hasChange === 0 && id === null)) r.corrupt(`bad change flag ${hasChange}`);
      const change = hasChange === 1 ? m.codec.decodeChange(r.bytes()) : null;
      r.end();
      if (change !== null) m.applyChange(change);
      if (id !== null) this.commit(id, seq, ackedBelow, replyBytes!);
    }
    this.stepped();
  }

  /** Machine state + the whole duplicate filter (LRU order included) + appliedEntries. */
  snapshot(): Uint8Array {
    const machine = this.machine.snapshot();
    const w = new ByteWriter(machine.length + 64 + this.clients.size * 32);
    w.u8(SNAPSHOT_VERSION).bytes(machine).varuint(this.applied);
    this.writeFilter(w);
    return w.finish();
  }

  /**
   * The snapshot in pieces (issue 9), consistent as of now while entries keep executing: the
   * first piece is appliedEntries and the duplicate filter (bounded by dedupBytesMax, written
   * at once), the rest the machine's own stream (or its snapshot() cut in pieces).
   */
  snapshotStream(): SnapshotStream {
    const w = new ByteWriter(64 + this.clients.size * 32);
    w.u8(STREAM_VERSION).varuint(this.applied);
    this.writeFilter(w);
    let head: Uint8Array | null = w.finish();
    const m = this.machine;
    const machine = m.snapshotStream ? m.snapshotStream() : wholeSnapshotStream(m.snapshot());
    return {
      next(maxBytes: number): Uint8Array | null {
        if (head === null) return machine.next(maxBytes);
        const h = head;
        head = null;
        return h;
      },
      close(): void {
        head = null;
        machine.close();
      },
    };
  }

  /** Restore from the pieces of snapshotStream; on a corrupt piece it throws, and nothing changed. */
  restoreStream(): RestoreStream {
    const m = this.machine;
    const machine = m.restoreStream ? m.restoreStream() : wholeRestoreStream((b) => m.restore(b));
    let head: { applied: number; filter: ParsedFilter } | null = null;
    return {
      add: (piece: Uint8Array): void => {
        if (head !== null) return machine.add(piece);
        const r = new ByteReader(piece, 'snapshot stream');
        const version = r.u8();
        if (version !== STREAM_VERSION) r.corrupt(`unknown snapshot stream version ${version}`);
        const applied = r.varuint();
        const filter = this.readFilter(r, applied);
        r.end();
        head = { applied, filter };
      },
      finish: (): void => {
        if (head === null) throw new Error('snapshot stream: no pieces');
        machine.finish();
        this.installFilter(head.filter);
        this.applied = head.applied;
      },
    };
  }

  private writeFilter(w: ByteWriter): void {
    w.varuint(this.quarantined.size);
    for (const [fp, why] of this.quarantined) w.text(fp).text(why);
    w.varuint(this.clients.size);
    for (const [id, c] of this.clients) {
      w.text(id).varuint(c.floor).varuint(c.lastUsed).varuint(c.replies.size);
      for (const [seq, rec] of c.replies) w.varuint(seq).bytes(rec.bytes);
    }
  }

  /** Replace machine state and filter with a snapshot; on a corrupt snapshot nothing changes. */
  restore(bytes: Uint8Array): void {
    const r = new ByteReader(bytes, 'snapshot');
    const version = r.u8();
    if (version !== SNAPSHOT_VERSION) r.corrupt(`unknown snapshot version ${version}`);
    const machine = r.bytes();
    const applied = r.varuint();
    const filter = this.readFilter(r, applied);
    r.end();
    this.machine.restore(machine);
    this.installFilter(filter);
    this.applied = applied;
  }

  private readFilter(r: ByteReader, applied: number): ParsedFilter {
    const q = r.varuint();
    if (q > QUARANTINE_MAX) r.corrupt(`${q} quarantined commands, more than ${QUARANTINE_MAX}`);
    const quarantined = new Map<string, string>();
    for (let i = 0; i < q; i++) {
      const fp = r.text();
      if (!/^[0-9a-f]{32}$/.test(fp) || quarantined.has(fp)) r.corrupt('bad quarantine fingerprint');
      quarantined.set(fp, r.text());
    }
    const n = r.varuint();
    if (n > r.remaining) r.corrupt('client count larger than the snapshot');
    const clients = new Map<string, ClientState>();
    const withReplies = new Map<string, ClientState>();
    let filterBytes = 0;
    let last = 0;
    for (let i = 0; i < n; i++) {
      const id = r.text();
      if (clients.has(id)) r.corrupt('duplicate client id');
      const floor = r.varuint();
      const lastUsed = r.varuint();
      // Sessions are written least recently used first; none may be expired or from the future.
      if (lastUsed < last || lastUsed > applied) r.corrupt(`bad session last use ${lastUsed}`);
      last = lastUsed;
      const k = r.varuint();
      if (k > r.remaining) r.corrupt('reply count larger than the snapshot');
      const replies = new Map<number, Recorded>();
      for (let j = 0; j < k; j++) {
        const seq = r.varuint();
        if (seq < floor || seq < 1 || replies.has(seq)) r.corrupt(`bad recorded seq ${seq}`);
        const reply = r.bytes().slice();
        this.machine.codec.decodeReply(reply); // validate
        replies.set(seq, this.recorded(id, seq, reply));
        filterBytes += reply.length + RECORD_OVERHEAD_BYTES;
      }
      const c: ClientState = { id, floor, lastUsed, replies };
      clients.set(id, c);
      if (replies.size > 0) withReplies.set(id, c);
      filterBytes += id.length + CLIENT_OVERHEAD_BYTES;
    }
    return { clients, withReplies, filterBytes, quarantined };
  }

  private installFilter({ clients, withReplies, filterBytes, quarantined }: ParsedFilter): void {
    this.quarantined = quarantined;
    this.hashQuarantine();
    this.clients = clients;
    this.withReplies = withReplies;
    this.bytes = filterBytes;
    this.expiryCheckAt = 0;
    this.filterSum.clear();
    for (const c of clients.values()) {
      this.addSession(c, 1);
      for (const rec of c.replies.values()) this.filterSum.addPair(rec.a, rec.b, 1);
    }
  }

  /** Machine digest + duplicate-filter digest (+ the quarantine's, if any); all O(1) here. */
  digest(): string {
    return `${this.machine.digest()}/${this.filterSum.hex()}${this.quarantineDigest}`;
  }

  // ---- the filter ------------------------------------------------------------------------

  /** Why a deduplicated request must not execute (no session, stale, duplicate, window full), or null. */
  private refusal(id: string, seq: number, ackedBelow: number): Refusal<R> | null {
    const c = this.clients.get(id);
    const m = this.machine;
    if (c === undefined) {
      if (seq === 1 && ackedBelow === 0) return null; // opens the session
      return {
        reply: m.errorReply(
          `E_SESSION_EXPIRED client session ${JSON.stringify(id.slice(0, 64))} is not known: it expired (no request in ${this.sessionEntries} log entries), was evicted (over ${this.clientsMax} sessions) or never opened (a session opens with LOCKSTEP.OPEN, or with seq 1, ackedBelow 0); request ${seq} was not run now, and whether it ran before cannot be known; start a new session with a new client id`,
        ),
        duplicate: false,
      };
    }
    if (seq < c.floor) {
      return {
        reply: m.errorReply(
          `E_DEDUP_STALE request ${seq} is below this client's floor ${c.floor}: it was acknowledged, or its reply was evicted to keep the duplicate filter under its byte limit; it is not run again`,
        ),
        duplicate: false,
      };
    }
    const rec = c.replies.get(seq);
    if (rec !== undefined) return { reply: m.codec.decodeReply(rec.bytes), duplicate: true };
    const max = this.repliesPerClientMax;
    if (c.replies.size >= max) {
      const floor = newFloor(c.floor, seq, ackedBelow);
      let live = 0;
      for (const s of c.replies.keys()) if (s >= floor) live++;
      if (live >= max) {
        return {
          reply: m.errorReply(
            `E_DEDUP_WINDOW ${live} replies await acknowledgement (limit ${max}); raise ackedBelow before sending more`,
          ),
          duplicate: false,
        };
      }
    }
    return null;
  }

  /** The logged part of a deduplicated request: touch, prune by ackedBelow, record, evict. */
  private commit(id: string, seq: number, ackedBelow: number, replyBytes: Uint8Array): void {
    const c = this.clients.get(id) ?? this.openSession(id);
    // c's digest term changes once for the new last use and floor together.
    this.addSession(c, -1);
    c.lastUsed = this.applied + 1;
    this.clients.delete(id);
    this.withReplies.delete(id);
    this.clients.set(id, c);
    this.dropBelow(c, newFloor(c.floor, seq, ackedBelow));
    this.addSession(c, 1);
    this.withReplies.set(id, c); // after dropBelow, which takes out a client left without replies
    const rec = this.recorded(id, seq, replyBytes);
    c.replies.set(seq, rec);
    this.filterSum.addPair(rec.a, rec.b, 1);
    this.bytes += replyBytes.length + RECORD_OVERHEAD_BYTES;
    this.shrink(c, seq);
  }

  /** A new session for `id`, the most recently used. */
  private openSession(id: string): ClientState {
    const c: ClientState = { id, floor: 1, lastUsed: this.applied + 1, replies: new Map() };
    this.clients.set(id, c);
    this.addSession(c, 1);
    this.bytes += id.length + CLIENT_OVERHEAD_BYTES;
    if (this.clients.size > this.clientsMax) this.evict(this.clients.values().next().value!);
    return c;
  }

  /** Forget c's replies below `floor` (acknowledged, or evicted) and refuse those seqs from now on. */
  private raiseFloor(c: ClientState, floor: number): void {
    if (floor <= c.floor) return;
    this.addSession(c, -1);
    this.dropBelow(c, floor);
    this.addSession(c, 1);
  }

  /** raiseFloor without the session's digest term (the caller updates it). */
  private dropBelow(c: ClientState, floor: number): void {
    if (floor <= c.floor) return;
    for (const [s, rec] of c.replies) {
      if (s < floor) {
        c.replies.delete(s);
        this.filterSum.addPair(-rec.a, -rec.b, -1);
        this.bytes -= rec.bytes.length + RECORD_OVERHEAD_BYTES;
      }
    }
    c.floor = floor;
    if (c.replies.size === 0) this.withReplies.delete(c.id);
  }

  /**
   * Over bytesMax: drop the replies of the least recently used clients (their floors rise past
   * them), then whole clients; the client `current` just recorded `seq` keeps that reply.
   * Deterministic: it depends only on replicated state and the bound.
   */
  private shrink(current: ClientState, seq: number): void {
    while (this.bytes > this.bytesMax) {
      const withReplies = this.withReplies.values().next();
      if (withReplies.done !== true && withReplies.value !== current) {
        const c = withReplies.value;
        let top = c.floor;
        for (const s of c.replies.keys()) top = Math.max(top, s + 1);
        this.raiseFloor(c, top);
        continue;
      }
      const oldest = this.clients.values().next();
      if (oldest.done !== true && oldest.value !== current) {
        this.evict(oldest.value);
        continue;
      }
      this.raiseFloor(current, seq); // the current client alone is over: keep only its latest
      return;
    }
  }

  private evict(c: ClientState): void {
    this.clients.delete(c.id);
    this.withReplies.delete(c.id);
    this.addSession(c, -1);
    this.bytes -= c.id.length + CLIENT_OVERHEAD_BYTES;
    for (const rec of c.replies.values()) {
      this.filterSum.addPair(-rec.a, -rec.b, -1);
      this.bytes -= rec.bytes.length + RECORD_OVERHEAD_BYTES;
    }
  }

  private recorded(id: string, seq: number, bytes: Uint8Array): Recorded {
    const h = this.h.reset().u32(1).str(id).u32(seq % TWO32).u32(Math.floor(seq / TWO32)).bytes(bytes);
    return { bytes, a: h.a, b: h.b };
  }

  /** Add (or take out) a session's id, floor and last use to the filter digest. */
  private addSession(c: ClientState, sign: 1 | -1): void {
    const { id, floor, lastUsed } = c;
    const h = this.h.reset().u32(3).str(id).u32(floor % TWO32).u32(Math.floor(floor / TWO32))
      .u32(lastUsed % TWO32).u32(Math.floor(lastUsed / TWO32));
    this.filterSum.addPair(sign * h.a, sign * h.b, sign);
  }
}
