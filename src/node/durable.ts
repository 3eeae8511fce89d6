// Durable mode (issue 11 item 3): one node's log and snapshots on its own disk, in `dataDir`.
//
// Files (every number little-endian):
//   LOCK                      the pid of the node using the directory (a second node refuses: E_DIR_LOCKED)
//   meta.json                 {format, cluster, node, arbiterId, view}: written atomically (tmp, fsync, rename, fsync dir)
//   snap-<gen>-<index>.snap   the service's state at log index `index`: "LSSNAP01", gen u32, index u64, then pieces
//                             [len u32][~len u32][crc32 u32][bytes], then "LSSNEND1", pieces u32. Written to a .tmp
//                             file, fsync'd, renamed, the directory fsync'd: a snapshot file is whole or absent.
//   log-<gen>-<first>.log     entries after the snapshot: "LSLOG001", then records [len u32][~len u32][crc32 u32][body],
//                             body = index u64, epoch u32, payload. Appended and fdatasync'd once per commit (group commit).
//
// A generation (gen) is one line of history: a recruit's snapshot from its primary, or an empty
// start, begins a new one (reset); compaction (a snapshot of the node's own state) stays in its
// generation and deletes the log segments it covers. Recovery reads the newest generation with
// a snapshot, its newest snapshot and the entries after it.
//
// What is refused at open, never dropped quietly: a bad CRC, a bad record header or an index out
// of sequence anywhere but the very end of the last segment, a corrupt snapshot or meta.json
// (E_DURABLE_CORRUPT, naming the file and the offset). At the very end of the last segment a
// short or bad record is a write torn by a crash: it was never fsync'd, so never acked; it is
// cut off and the cut is reported (warnings). An I/O error (ENOSPC, EIO) is E_DURABLE_IO naming
// the file: the node stops being a replica rather than ack what it could not write.

import {
  closeSync,
  existsSync,
  fdatasyncSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  writeSync,
  write as fsWrite,
  fdatasync as fsFdatasync,
} from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { LockstepError, isLockstepError } from '../errors.js';
import { takePidLock } from '../pid.js';
import type { Entry, View } from '../core/types.js';

const LOG_MAGIC = Buffer.from('LSLOG001', 'latin1');
const SNAP_MAGIC = Buffer.from('LSSNAP01', 'latin1');
const SNAP_END = Buffer.from('LSSNEND1', 'latin1');
const REC_HEADER = 12;
const BODY_HEADER = 12;
/** No record or snapshot piece is larger (a peer frame is at most 512 MiB). */
const MAX_RECORD = 1024 * 1024 * 1024;
export const DURABLE_COMPACT_BYTES_DEFAULT = 64 * 1024 * 1024;
/** The entries kept in memory for a node back with its disk (config durableBacklogBytes). */
export const DURABLE_BACKLOG_BYTES_DEFAULT = 64 * 1024 * 1024;

export interface DurableMeta {
  readonly format: 1;
  readonly cluster: string;
  readonly node: string;
  readonly arbiterId: string | null;
  readonly view: View;
  /**
   * The term of the log this disk's entries are a prefix of (replica.ts "Several backups and the
   * commit index"); absent (a release before it) or 0: unknown.
   */
  readonly logTerm?: number;
}

export interface Recovered {
  /** meta.json, or null: a fresh directory (nothing was ever written here). */
  readonly meta: DurableMeta | null;
  /** The newest snapshot: its index and pieces (none: the empty state). */
  readonly snapshotIndex: number;
  readonly snapshotPieces: readonly Uint8Array[];
  /** The entries after the snapshot, consecutive. */
  readonly entries: readonly Entry[];
  readonly lastIndex: number;
  /** Torn tails cut off and leftovers removed, for the log. */
  readonly warnings: readonly string[];
}

function corrupt(file: string, offset: number, what: string): never {
  throw new LockstepError('E_DURABLE_CORRUPT', `${file} at offset ${offset}: ${what}; the node refuses to start rather than lose or invent entries (see docs/DEPLOY.md, "Durable mode": move this node's dataDir away and start it empty; it is recruited from the primary)`);
}

/** Run an I/O call; a failure is E_DURABLE_IO naming the file. */
function io<T>(file: string, what: string, call: () => T): T {
  try {
    return call();
  } catch (e) {
    if (isLockstepError(e)) throw e;
    const err = e as NodeJS.ErrnoException;
    throw new LockstepError('E_DURABLE_IO', `${what} ${file} failed: ${err.code ?? ''} ${err.message}; this node cannot keep its log on disk and stops being a replica (fail-stop) rather than ack what it did not write`);
  }
}

function u64(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * 2 ** 32;
}

function putU64(buf: Buffer, at: number, v: number): void {
  buf.writeUInt32LE(v % 2 ** 32, at);
  buf.writeUInt32LE(Math.floor(v / 2 ** 32), at + 4);
}

function recordHeader(body: Uint8Array): Buffer {
  const h = Buffer.alloc(REC_HEADER);
  h.writeUInt32LE(body.length, 0);
  h.writeUInt32LE(~body.length >>> 0, 4);
  h.writeUInt32LE(crc32(body), 8);
  return h;
}

const pad = (n: number): string => String(n).padStart(20, '0');
const SNAP_RE = /^snap-(\d+)-(\d+)\.snap$/;
const LOG_RE = /^log-(\d+)-(\d+)\.log$/;

interface FileRef { readonly name: string; readonly gen: number; readonly index: number }

/** The data directory of one node. Synchronous: a commit is short and must finish before its acks go. */
export class DurableStore {
  private unlock: (() => void) | null = null;
  private gen = 0;
  /** The open segment (null: none yet in this generation since the last snapshot). */
  private segFd: number | null = null;
  private segName = '';
  private segBytes = 0;
  /** Records appended and not yet written. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private lastIndex = 0;
  /** The index of the current snapshot (compaction or a recruit's). */
  snapshotIndex = 0;
  /** An asynchronous commit is under way. */
  private inFlight = false;
  /** Segments closed while a commit to them was under way. */
  private closeAfterFlight: number[] = [];
  /** Log bytes written since the last snapshot (compaction is due past compactBytes). */
  logBytesSinceSnapshot = 0;
  /** Snapshot being received from a primary (recruit): its tmp file. */
  private incoming: SnapshotFile | null = null;
  /** Compaction under way: the snapshot of this node's own state being written, a piece at a time. */
  private outgoing: SnapshotFile | null = null;
  /** Commits (one write and one fdatasync each), their bytes and time, snapshots written. */
  readonly stats = { commits: 0, bytes: 0, commitMs: 0, commitMsMax: 0, snapshots: 0 };

  constructor(readonly dir: string) {}

  private file(name: string): string {
    return join(this.dir, name);
  }

  // ---- the lock ----------------------------------------------------------------------------

  /** Take the directory's lock, or throw E_DIR_LOCKED naming the live holder. */
  lock(): void {
    io(this.dir, 'creating', () => mkdirSync(this.dir, { recursive: true }));
    const path = this.file('LOCK');
    this.unlock = takePidLock(
      path,
      (holder) => new LockstepError('E_DIR_LOCKED', `the dataDir ${this.dir} is in use by another process (pid ${holder}, in ${path}): two nodes on one dataDir would corrupt it. Stop that one first; if pid ${holder} is not a lockstep node, remove ${path}`),
      (reason) => new LockstepError('E_DURABLE_IO', `${reason}; this node cannot use its dataDir`),
    );
  }

  /** Close files and let the lock go (if still ours). */
  close(): void {
    this.closeSegment();
    this.dropIncoming();
    this.abortCompaction();
    this.unlock?.();
    this.unlock = null;
  }

  // ---- recovery ----------------------------------------------------------------------------

  /** Read and check everything on disk (after lock()). Throws E_DURABLE_CORRUPT or E_DURABLE_IO. */
  open(): Recovered {
    const warnings: string[] = [];
    const names = io(this.dir, 'listing', () => readdirSync(this.dir));
    for (const n of names) {
      if (n.endsWith('.tmp')) {
        // A snapshot or meta.json being written when the node died: never renamed, never used.
        io(this.file(n), 'removing', () => rmSync(this.file(n), { force: true }));
        warnings.push(`removed ${this.file(n)}: an unfinished write (the node died while writing it; it was never in use)`);
      }
    }
    const snaps: FileRef[] = [];
    const logs: FileRef[] = [];
    for (const n of names) {
      const s = SNAP_RE.exec(n);
      if (s) snaps.push({ name: n, gen: Number(s[1]), index: Number(s[2]) });
      const l = LOG_RE.exec(n);
      if (l) logs.push({ name: n, gen: Number(l[1]), index: Number(l[2]) });
    }
    const metaPath = this.file('meta.json');
    if (!existsSync(metaPath)) {
      if (snaps.length > 0 || logs.length > 0) corrupt(metaPath, 0, `missing, but the directory holds ${[...snaps, ...logs].map((f) => f.name).slice(0, 3).join(', ')}`);
      return { meta: null, snapshotIndex: 0, snapshotPieces: [], entries: [], lastIndex: 0, warnings };
    }
    const meta = this.readMeta(metaPath);
    if (snaps.length === 0) corrupt(this.dir, 0, 'meta.json is there but no snapshot file (snap-*.snap): every generation starts with one');
    const gen = Math.max(...snaps.map((s) => s.gen));
    const newer = logs.filter((l) => l.gen > gen);
    if (newer.length > 0) corrupt(this.file(newer[0]!.name), 0, `a log segment of generation ${newer[0]!.gen}, newer than every snapshot (${gen})`);
    const snap = snaps.filter((s) => s.gen === gen).sort((a, b) => b.index - a.index)[0]!;
    const pieces = this.readSnapshot(this.file(snap.name), gen, snap.index);
    // The segments of this generation, in order; entries up to the snapshot are covered by it.
    const segs = logs.filter((l) => l.gen === gen).sort((a, b) => a.index - b.index);
    const entries: Entry[] = [];
    let last = snap.index;
    segs.forEach((seg, i) => {
      const isLast = i === segs.length - 1;
      const path = this.file(seg.name);
      const r = this.readSegment(path, seg.index, isLast, warnings);
      for (const e of r) {
        if (e.index <= snap.index) continue;
        if (e.index !== last + 1) corrupt(path, 0, `entry ${e.index} follows entry ${last}: an entry is missing`);
        entries.push(e);
        last = e.index;
      }
    });
    // Leftovers of older generations (a reset interrupted between its rename and its deletes).
    for (const f of [...snaps, ...logs]) {
      if (f.gen < gen || (f.gen === gen && f.name.startsWith('snap-') && f.index < snap.index) || (f.gen === gen && f.name.startsWith('log-') && f.index <= snap.index && this.segEnd(f, segs) <= snap.index)) {
        io(this.file(f.name), 'removing', () => rmSync(this.file(f.name), { force: true }));
      }
    }
    this.gen = gen;
    this.snapshotIndex = snap.index;
    this.lastIndex = last;
    // Append to a fresh segment: the last one may have been cut at a torn record.
    this.segFd = null;
    this.logBytesSinceSnapshot = entries.reduce((n, e) => n + e.payload.length + REC_HEADER + BODY_HEADER, 0);
    return { meta, snapshotIndex: snap.index, snapshotPieces: pieces, entries, lastIndex: last, warnings };
  }

  /** The last index a segment can hold: one before the next segment's first (Infinity for the last). */
  private segEnd(f: FileRef, segs: readonly FileRef[]): number {
    const next = segs.find((s) => s.index > f.index);
    return next === undefined ? Infinity : next.index - 1;
  }

  private readMeta(path: string): DurableMeta {
    const text = io(path, 'reading', () => readFileSync(path, 'utf8'));
    let m: unknown;
    try {
      m = JSON.parse(text);
    } catch (e) {
      corrupt(path, 0, `not valid JSON (${(e as Error).message})`);
    }
    const o = m as Record<string, unknown>;
    const v = o?.view as Record<string, unknown> | undefined;
    if (typeof o !== 'object' || o === null || o.format !== 1 || typeof o.cluster !== 'string' || typeof o.node !== 'string' || (o.arbiterId !== null && typeof o.arbiterId !== 'string')
      || typeof v !== 'object' || v === null || typeof v.epoch !== 'number' || (v.primary !== null && typeof v.primary !== 'string')) {
      corrupt(path, 0, 'not a lockstep meta.json of format 1');
    }
    // `backups` (a list); a release before several backups wrote `backup` (an id or null).
    const backups = Array.isArray(v.backups) ? v.backups : v.backup === null ? [] : [v.backup];
    if (!backups.every((b) => typeof b === 'string' && b !== '')) corrupt(path, 0, 'not a lockstep meta.json of format 1 (its view\'s backups are not node ids)');
    if (o.logTerm !== undefined && !(typeof o.logTerm === 'number' && Number.isSafeInteger(o.logTerm) && o.logTerm >= 0)) corrupt(path, 0, 'not a lockstep meta.json of format 1 (its logTerm is not an epoch)');
    return { ...(m as DurableMeta), view: { epoch: v.epoch, primary: v.primary as string | null, backups: backups as string[] } };
  }

  private readSnapshot(path: string, gen: number, index: number): Uint8Array[] {
    const buf = io(path, 'reading', () => readFileSync(path));
    if (buf.length < 20 + 12 || !buf.subarray(0, 8).equals(SNAP_MAGIC)) corrupt(path, 0, 'not a lockstep snapshot file (bad magic or too short)');
    if (buf.readUInt32LE(8) !== gen || u64(buf, 12) !== index) corrupt(path, 8, `its header says generation ${buf.readUInt32LE(8)} index ${u64(buf, 12)}, its name ${gen} and ${index}`);
    const pieces: Uint8Array[] = [];
    let at = 20;
    for (;;) {
      if (at + 12 <= buf.length && buf.subarray(at, at + 8).equals(SNAP_END)) {
        if (buf.readUInt32LE(at + 8) !== pieces.length) corrupt(path, at, `the end says ${buf.readUInt32LE(at + 8)} pieces, ${pieces.length} were read`);
        if (at + 12 !== buf.length) corrupt(path, at + 12, 'bytes after the end of the snapshot');
        return pieces;
      }
      if (at + REC_HEADER > buf.length) corrupt(path, at, 'the snapshot ends without its end marker (truncated)');
      const len = buf.readUInt32LE(at);
      if ((~len >>> 0) !== buf.readUInt32LE(at + 4) || len > MAX_RECORD) corrupt(path, at, 'bad piece header');
      if (at + REC_HEADER + len > buf.length) corrupt(path, at, `piece of ${len} bytes runs past the end of the file (truncated)`);
      const body = buf.subarray(at + REC_HEADER, at + REC_HEADER + len);
      if (crc32(body) !== buf.readUInt32LE(at + 8)) corrupt(path, at, `piece ${pieces.length}: CRC mismatch`);
      pieces.push(body);
      at += REC_HEADER + len;
    }
  }

  /**
   * One segment's entries. In the last segment, a short or bad record at the very end (nothing
   * but it, or zeros, after it) is a torn write: the file is cut there and a warning returned.
   */
  private readSegment(path: string, first: number, isLast: boolean, warnings: string[]): Entry[] {
    const buf = io(path, 'reading', () => readFileSync(path));
    const torn = (at: number, what: string): Entry[] => {
      if (!isLast) corrupt(path, at, `${what} (not the last segment, so not a torn write)`);
      io(path, 'truncating', () => {
        const fd = openSync(path, 'r+');
        try {
          ftruncateSync(fd, at);
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
      });
      warnings.push(`${path}: cut at offset ${at} (${buf.length - at} bytes): ${what} at the end of the log, a write torn by a crash; it was never fsync'd, so never acknowledged`);
      return entries;
    };
    const entries: Entry[] = [];
    if (buf.length < LOG_MAGIC.length) {
      if (buf.subarray(0).equals(LOG_MAGIC.subarray(0, buf.length))) return torn(0, 'a segment header cut short');
      corrupt(path, 0, 'not a lockstep log segment (bad magic)');
    }
    if (!buf.subarray(0, 8).equals(LOG_MAGIC)) corrupt(path, 0, 'not a lockstep log segment (bad magic)');
    let at = 8;
    let expect = first;
    const zerosFrom = (i: number): boolean => {
      for (let j = i; j < buf.length; j++) if (buf[j] !== 0) return false;
      return true;
    };
    while (at < buf.length) {
      if (at + REC_HEADER > buf.length) return torn(at, 'a record header cut short');
      const len = buf.readUInt32LE(at);
      if ((~len >>> 0) !== buf.readUInt32LE(at + 4) || len > MAX_RECORD || len < BODY_HEADER) {
        if (zerosFrom(at)) return torn(at, 'zeros where a record should be');
        corrupt(path, at, 'bad record header');
      }
      if (at + REC_HEADER + len > buf.length) return torn(at, `a record of ${len} bytes cut short`);
      const body = buf.subarray(at + REC_HEADER, at + REC_HEADER + len);
      if (crc32(body) !== buf.readUInt32LE(at + 8)) {
        if (at + REC_HEADER + len === buf.length) return torn(at, 'the last record with a bad CRC');
        corrupt(path, at, 'record CRC mismatch');
      }
      const index = u64(body, 0);
      if (index !== expect) corrupt(path, at, `record for entry ${index}, expected entry ${expect}`);
      entries.push({ index, payload: body.subarray(BODY_HEADER) });
      expect++;
      at += REC_HEADER + len;
    }
    return entries;
  }

  // ---- writing -----------------------------------------------------------------------------

  get index(): number {
    return this.lastIndex;
  }

  get generation(): number {
    return this.gen;
  }

  /** Write meta.json atomically. */
  writeMeta(meta: DurableMeta): void {
    this.atomicWrite('meta.json', Buffer.from(JSON.stringify(meta) + '\n'));
  }

  private atomicWrite(name: string, data: Buffer): void {
    const path = this.file(name);
    const tmp = `${path}.tmp`;
    io(tmp, 'writing', () => {
      const fd = openSync(tmp, 'w', 0o644);
      try {
        writeSync(fd, data);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    });
    io(path, 'renaming to', () => renameSync(tmp, path));
    this.syncDir();
  }

  private syncDir(): void {
    io(this.dir, 'fsync of directory', () => {
      const fd = openSync(this.dir, 'r');
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    });
  }

  /** Queue entries (consecutive after the last one); they reach the disk at the next commit. */
  append(entries: readonly Entry[], epoch: number): void {
    for (const e of entries) {
      if (e.index !== this.lastIndex + 1) throw new Error(`lockstep invariant broken: durable append of entry ${e.index} after ${this.lastIndex}`);
      const body = Buffer.alloc(BODY_HEADER + e.payload.length);
      putU64(body, 0, e.index);
      body.writeUInt32LE(epoch >>> 0, 8);
      body.set(e.payload, BODY_HEADER);
      this.pending.push(recordHeader(body), body);
      this.pendingBytes += REC_HEADER + body.length;
      this.lastIndex = e.index;
    }
  }

  /** Something appended is not on disk yet. */
  get dirty(): boolean {
    return this.pending.length > 0;
  }

  /** Write what was appended and fdatasync once (group commit). Throws E_DURABLE_IO. */
  commit(): void {
    if (this.inFlight) throw new Error('lockstep invariant broken: a synchronous commit while an asynchronous one is under way');
    const batch = this.takeBatch();
    if (batch === null) return;
    const started = performance.now();
    io(batch.file, 'writing', () => {
      let off = 0;
      while (off < batch.data.length) off += writeSync(batch.fd, batch.data, off, batch.data.length - off);
      fdatasyncSync(batch.fd);
    });
    this.committed(batch.data.length, performance.now() - started);
  }

  /** A commit is under way (commitAsync): no other may start until it ends. */
  get committing(): boolean {
    return this.inFlight;
  }

  /**
   * The same as commit, off the event loop: the write and the fdatasync run in libuv's thread
   * pool, and `done` is called when both are over (with E_DURABLE_IO if either failed). False,
   * and no call: nothing to write. One at a time: entries appended meanwhile wait for the next.
   * A new segment that cannot be created throws E_DURABLE_IO at once.
   */
  commitAsync(done: (err: LockstepError | null) => void): boolean {
    if (this.inFlight) throw new Error('lockstep invariant broken: two asynchronous commits at once');
    const batch = this.takeBatch();
    if (batch === null) return false;
    this.inFlight = true;
    const started = performance.now();
    const fail = (e: NodeJS.ErrnoException): void => {
      this.endFlight();
      try {
        io(batch.file, 'writing', () => {
          throw e;
        });
      } catch (err) {
        done(err as LockstepError);
      }
    };
    const write = (off: number): void => {
      fsWrite(batch.fd, batch.data, off, batch.data.length - off, null, (e, n) => {
        if (e) return fail(e);
        if (off + n < batch.data.length) return write(off + n);
        fsFdatasync(batch.fd, (e2) => {
          if (e2) return fail(e2);
          this.endFlight();
          this.committed(batch.data.length, performance.now() - started);
          done(null);
        });
      });
    };
    write(0);
    return true;
  }

  private endFlight(): void {
    this.inFlight = false;
    // A segment closed while its write was under way (a reset, a compaction): close it now.
    for (const fd of this.closeAfterFlight) closeSync(fd);
    this.closeAfterFlight = [];
  }

  /** What was appended, as one buffer for the open segment (opened if need be); null: nothing. */
  private takeBatch(): { fd: number; file: string; data: Buffer } | null {
    if (this.pending.length === 0) return null;
    if (this.segFd === null) this.openSegment(this.lastIndex - this.pending.length / 2 + 1);
    const data = this.pending.length === 2 ? Buffer.concat(this.pending) : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    return { fd: this.segFd!, file: this.file(this.segName), data };
  }

  private committed(bytes: number, ms: number): void {
    this.stats.commitMs += ms;
    this.stats.commitMsMax = Math.max(this.stats.commitMsMax, ms);
    this.segBytes += bytes;
    this.logBytesSinceSnapshot += bytes;
    this.stats.commits++;
    this.stats.bytes += bytes;
  }

  private openSegment(first: number): void {
    this.segName = `log-${pad(this.gen)}-${pad(first)}.log`;
    const path = this.file(this.segName);
    // 'w': a file of that name holds no entry (else the log's last index would be past its first):
    // it was created, then the node died before an entry in it was whole. It starts over.
    this.segFd = io(path, 'creating', () => {
      const fd = openSync(path, 'w', 0o644);
      writeSync(fd, LOG_MAGIC);
      return fd;
    });
    this.syncDir();
    this.segBytes = LOG_MAGIC.length;
  }

  private closeSegment(): void {
    if (this.segFd !== null) {
      if (this.inFlight) this.closeAfterFlight.push(this.segFd);
      else closeSync(this.segFd);
    }
    this.segFd = null;
  }

  /**
   * Compaction, begun: the snapshot of the service's state at the last index appended (committed
   * first). The log goes on in a new segment after that index, while the caller gives the
   * snapshot's pieces (compactionPiece) a slice at a time, from a stream begun at this very
   * moment; finishCompaction makes it current and deletes the log segments and older snapshots
   * it covers. Returns the snapshot's index.
   */
  beginCompaction(): number {
    if (this.inFlight) throw new Error('lockstep invariant broken: a compaction begun while a commit is under way');
    this.abortCompaction();
    this.commit();
    const index = this.lastIndex;
    this.closeSegment();
    this.outgoing = this.createSnapshotFile(this.gen, index);
    this.logBytesSinceSnapshot = 0;
    return index;
  }

  compactionPiece(data: Uint8Array): void {
    const out = this.outgoing;
    if (out === null) throw new Error('lockstep invariant broken: a compaction piece with no compaction under way');
    this.writePiece(out, data);
  }

  finishCompaction(): void {
    const out = this.outgoing;
    if (out === null) throw new Error('lockstep invariant broken: finishing no compaction');
    this.outgoing = null;
    this.sealSnapshotFile(out);
    this.removeExcept(out.gen, out.index);
    this.snapshotIndex = out.index;
  }

  /** Drop a compaction under way (the node halts, or a new generation begins). */
  abortCompaction(): void {
    const out = this.outgoing;
    if (out === null) return;
    this.outgoing = null;
    closeSync(out.fd);
    rmSync(out.tmp, { force: true });
  }

  /** A whole compaction at once: the service's state at the last index appended, in these pieces. */
  snapshot(pieces: readonly Uint8Array[]): void {
    this.beginCompaction();
    for (const p of pieces) this.compactionPiece(p);
    this.finishCompaction();
  }

  private createSnapshotFile(gen: number, index: number): SnapshotFile {
    const name = `snap-${pad(gen)}-${pad(index)}.snap`;
    const tmp = `${this.file(name)}.tmp`;
    const fd = io(tmp, 'creating', () => openSync(tmp, 'w', 0o644));
    const f = { fd, tmp, name, gen, index, pieces: 0 };
    io(tmp, 'writing', () => writeSync(fd, snapshotHeader(gen, index)));
    return f;
  }

  private writePiece(f: SnapshotFile, data: Uint8Array): void {
    io(f.tmp, 'writing', () => {
      writeSync(f.fd, recordHeader(data));
      writeSync(f.fd, data);
    });
    f.pieces++;
  }

  /** The end marker, fsync, rename into place, fsync of the directory: the file is whole or absent. */
  private sealSnapshotFile(f: SnapshotFile): void {
    io(f.tmp, 'writing', () => {
      writeSync(f.fd, snapshotEnd(f.pieces));
      fsyncSync(f.fd);
      closeSync(f.fd);
    });
    const path = this.file(f.name);
    io(path, 'renaming to', () => renameSync(f.tmp, path));
    this.syncDir();
    this.stats.snapshots++;
  }

  private dropIncoming(): void {
    const inc = this.incoming;
    if (inc === null) return;
    this.incoming = null;
    closeSync(inc.fd);
    rmSync(inc.tmp, { force: true });
  }

  /**
   * Start a new generation at `index` with this state (none: the empty state at 0): what was
   * on disk before is superseded and deleted once the new snapshot is on disk.
   */
  reset(index: number, pieces: readonly Uint8Array[]): void {
    this.abortCompaction();
    this.dropIncoming();
    this.pending = [];
    this.pendingBytes = 0;
    this.closeSegment();
    const f = this.createSnapshotFile(this.gen + 1, index);
    for (const p of pieces) this.writePiece(f, p);
    this.sealSnapshotFile(f);
    this.newGeneration(f.gen, index);
  }

  /** A recruit receives its primary's snapshot a piece at a time: written as it comes, made current at the last. */
  snapshotPiece(index: number, chunk: number, data: Uint8Array, last: boolean): void {
    if (chunk === 0) {
      this.abortCompaction();
      this.dropIncoming();
      this.incoming = this.createSnapshotFile(this.gen + 1, index);
    }
    const inc = this.incoming;
    if (inc === null || inc.index !== index) throw new Error(`lockstep invariant broken: snapshot piece ${chunk} at ${index} with no snapshot being received`);
    this.writePiece(inc, data);
    if (!last) return;
    this.incoming = null;
    this.sealSnapshotFile(inc);
    this.pending = [];
    this.pendingBytes = 0;
    this.closeSegment();
    this.newGeneration(inc.gen, index);
  }

  /** Generation `gen` begins with its snapshot at `index` (on disk): what came before goes. */
  private newGeneration(gen: number, index: number): void {
    this.gen = gen;
    this.removeExcept(gen, index);
    this.lastIndex = index;
    this.snapshotIndex = index;
    this.logBytesSinceSnapshot = 0;
  }

  /** Delete every snapshot and segment but the snapshot (gen, index) and later segments of gen. */
  private removeExcept(gen: number, index: number): void {
    const names = io(this.dir, 'listing', () => readdirSync(this.dir));
    for (const n of names) {
      const s = SNAP_RE.exec(n);
      const l = LOG_RE.exec(n);
      const old = s ? Number(s[1]) !== gen || Number(s[2]) !== index : l ? Number(l[1]) !== gen || Number(l[2]) <= index : false;
      if (old) io(this.file(n), 'removing', () => rmSync(this.file(n), { force: true }));
    }
    this.syncDir();
  }
}

interface SnapshotFile { readonly fd: number; readonly tmp: string; readonly name: string; readonly gen: number; readonly index: number; pieces: number }

function snapshotHeader(gen: number, index: number): Buffer {
  const h = Buffer.alloc(20);
  SNAP_MAGIC.copy(h, 0);
  h.writeUInt32LE(gen, 8);
  putU64(h, 12, index);
  return h;
}

function snapshotEnd(pieces: number): Buffer {
  const b = Buffer.alloc(12);
  SNAP_END.copy(b, 0);
  b.writeUInt32LE(pieces, 8);
  return b;
}
