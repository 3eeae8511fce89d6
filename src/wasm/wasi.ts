// The WASI preview1 host: what an unmodified wasm32-wasi program sees as its operating system.
//
// The runtime (record/replay, replication) sits between the guest and this host and needs
// three properties from it, which shape everything below:
//
//  1. Nothing blocks and nothing is async. A call that cannot complete now writes nothing and
//     returns a Wait; the runtime suspends the guest (asyncify), awaits the promise and retries
//     the same call with the same arguments.
//  2. Outputs are not performed by the call. A write to stdout or to a connection becomes an
//     OutputEffect handed to `output`; the runtime releases it through performOutput() when the
//     output rule allows (after the backup has the log up to that point).
//  3. Host state is deterministic. Fd numbers, file positions and inode numbers depend only on
//     the sequence of calls, so the backup, which executes the same local calls and replays
//     inputs and outputs through replayEffect(), keeps the same fd table as the primary.
//
// The file system is the guest directory and nothing else: every guest directory fd is a
// directory held open on the host, and paths resolve beneath it (beneath.ts; docs/WASM.md,
// "The sandbox").
//
// For recruiting a backup from a snapshot of the guest, the host's state (fd table, guest
// directory) can also be saved and restored as bytes: snapshotState / restoreState.

import { createHash, randomFillSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  CLOCKID,
  ERRNO,
  EVENTRWFLAGS,
  EVENTTYPE,
  FDFLAGS,
  FILETYPE,
  FSTFLAGS,
  LOOKUPFLAGS,
  OFLAGS,
  PREOPENTYPE,
  RIFLAGS,
  RIGHTS,
  RIGHTS_ALL,
  SDFLAGS,
  SIZEOF,
  SUBCLOCKFLAGS,
  WASI_FUNCTIONS,
  WHENCE,
  isWasiFunction,
  type WasiFunctionName,
} from './abi.js';
import { GuestMemory, WasiFault } from './memory.js';
import { ErrnoError, checkFdPaths, closeQuietly, fail, fdPath, openDirectory, resolveBeneath, type Resolved } from './beneath.js';
import { ByteReader, ByteWriter } from '../guest/bytes.js';
import { decodePath, decodeTree, encodePath, encodeTree, inodeKey, readTree, replaceTree, type Tree, type TreeNode } from './tree.js';

// ---------------------------------------------------------------------------------------------
// Public types

export interface WasiHostOptions {
  /** argv; argv[0] is the program name. */
  args: readonly string[];
  /** The environment, as "K=V" strings. */
  env: readonly string[];
  /** Host directory preopened as fd 3 under the guest name "/". */
  root: string;
  /** Listening sockets, given to the guest as fds 4, 5, ... in this order. */
  listen: readonly { host: string; port: number }[];
  /** The contents of fd 0 (default empty: reads return EOF at once). */
  stdin?: Uint8Array;
  /** Receives every output effect of a call; the runtime decides when to performOutput it. */
  output: (effect: OutputEffect) => void;
  /** Where performOutput sends stdout / stderr bytes (default: process.stdout / process.stderr). */
  stdout?: (bytes: Uint8Array) => void;
  stderr?: (bytes: Uint8Array) => void;
  mode: 'live' | 'replay';
}

export type OutputEffect =
  | { kind: 'stdout' | 'stderr'; bytes: Uint8Array }
  | { kind: 'send'; conn: number; bytes: Uint8Array }
  | { kind: 'close'; conn: number }
  | { kind: 'shutdown'; conn: number; how: number };

/** Returned by call() when the call cannot complete now: retry it once `wait` settles. */
export interface Wait {
  readonly wait: Promise<void>;
}

export interface CallContext {
  /** process.hrtime.bigint() when the call was first attempted (same on every retry). */
  startedAtNs: bigint;
}

export type CallClass = 'config' | 'input' | 'output' | 'local' | 'exit';

export type CallArgs = readonly (number | bigint)[];

/** Thrown by call() for proc_exit (and proc_raise): the guest is finished. */
export class WasiExit extends Error {
  readonly code: number;
  constructor(code: number) {
    super(`guest exited with code ${code}`);
    this.name = 'WasiExit';
    this.code = code;
  }
}

export function isWait(r: number | Wait): r is Wait {
  return typeof r === 'object';
}

// ---------------------------------------------------------------------------------------------
// Internal errors and argument decoding

// Node's error codes (from libuv, so the same on every platform) to WASI errnos. Most are
// the WASI name with an E in front; the rest are listed.
const NODE_ERRNO: ReadonlyMap<string, number> = new Map<string, number>([
  ...Object.entries(ERRNO).map(([k, v]): [string, number] => [`E${k}`, v]),
  ['EOPNOTSUPP', ERRNO.NOTSUP],
  ['EWOULDBLOCK', ERRNO.AGAIN],
  ['ERR_FS_FILE_TOO_LARGE', ERRNO.FBIG],
]);

/** The errno for anything a handler threw, or rethrows WasiExit (the one exception allowed out). */
function errnoOf(e: unknown): number {
  if (e instanceof WasiExit) throw e;
  if (e instanceof ErrnoError) return e.errno;
  if (e instanceof WasiFault) return ERRNO.FAULT;
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return NODE_ERRNO.get(code) ?? ERRNO.IO;
  return ERRNO.IO;
}

/** Typed views of a call's raw arguments (i32 as JS numbers, i64 as BigInt). */
class Args {
  constructor(private readonly v: CallArgs) {}

  private raw(i: number): number | bigint {
    const x = this.v[i];
    if (x === undefined) fail(ERRNO.INVAL);
    return x;
  }

  /** A guest pointer or length, passed on as-is: GuestMemory checks it. */
  ptr(i: number): number {
    const x = this.raw(i);
    return typeof x === 'bigint' ? Number(BigInt.asIntN(32, x)) : x;
  }

  u32(i: number): number {
    const x = this.raw(i);
    return typeof x === 'bigint' ? Number(BigInt.asUintN(32, x)) : x >>> 0;
  }

  u64(i: number): bigint {
    return BigInt.asUintN(64, BigInt(this.raw(i)));
  }

  i64(i: number): bigint {
    return BigInt.asIntN(64, BigInt(this.raw(i)));
  }
}

// ---------------------------------------------------------------------------------------------
// Guest memory helpers

interface Iovec {
  buf: number;
  len: number;
}

/** Reads and bounds-checks an iovec array before anything is done, so a fault changes nothing. */
function readIovecs(mem: GuestMemory, ptr: number, count: number): Iovec[] {
  const base = mem.check(ptr, count * SIZEOF.iovec);
  const out: Iovec[] = [];
  for (let i = 0; i < count; i++) {
    const iov = { buf: mem.u32(base + i * 8), len: mem.u32(base + i * 8 + 4) };
    mem.check(iov.buf, iov.len);
    out.push(iov);
  }
  return out;
}

function totalLen(iovs: readonly Iovec[]): number {
  return iovs.reduce((n, v) => n + v.len, 0);
}

function gather(mem: GuestMemory, iovs: readonly Iovec[]): Uint8Array {
  const out = new Uint8Array(totalLen(iovs));
  let at = 0;
  for (const v of iovs) {
    out.set(mem.read(v.buf, v.len), at);
    at += v.len;
  }
  return out;
}

function scatter(mem: GuestMemory, iovs: readonly Iovec[], data: Uint8Array): void {
  let at = 0;
  for (const v of iovs) {
    if (at >= data.byteLength) break;
    const piece = data.subarray(at, at + v.len);
    mem.write(v.buf, piece);
    at += piece.byteLength;
  }
}

const fatalUtf8 = new TextDecoder('utf-8', { fatal: true });

function readPath(mem: GuestMemory, ptr: number, len: number): string {
  let p: string;
  try {
    p = fatalUtf8.decode(mem.read(ptr, len));
  } catch (e) {
    if (e instanceof WasiFault) throw e;
    fail(ERRNO.ILSEQ);
  }
  if (p.includes('\0')) fail(ERRNO.INVAL);
  return p;
}

/** A fixed-size struct built in JS and copied in with one write (padding comes out zero). */
function struct(size: number): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(size);
  return { bytes, view: new DataView(bytes.buffer) };
}

// ---------------------------------------------------------------------------------------------
// Waiting

/** A level-change notifier: whoever waits on it is woken at the next fire(). */
class Signal {
  private readonly waiters = new Set<() => void>();

  on(fn: () => void): () => void {
    this.waiters.add(fn);
    return () => this.waiters.delete(fn);
  }

  fire(): void {
    const fns = [...this.waiters];
    this.waiters.clear();
    for (const fn of fns) fn();
  }
}

// ---------------------------------------------------------------------------------------------
// Connections and listeners

/** Above this many buffered bytes the host stops reading the socket (TCP pushes back). */
const HIGH_WATER = 1 << 20;
const EMPTY = new Uint8Array(0);

/**
 * A TCP connection as the guest sees it: received bytes buffered in the host until the guest
 * reads them. A replayed connection (the backup's copy of one the primary accepted) has no
 * socket; once live it behaves as a connection that was reset.
 */
class Connection {
  /** Host connection id, assigned at accept in call order (so equal on both replicas). */
  id = -1;
  readonly signal = new Signal();
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  /** The peer sent FIN. */
  ended = false;
  /** The socket errored or closed without FIN. */
  failed = false;
  /** The guest shut down its reading / writing side. */
  shutRd = false;
  shutWr = false;

  constructor(readonly socket: net.Socket | null) {
    if (socket !== null) this.attach(socket);
  }

  /** No real peer any more: reads give CONNRESET, writes PIPE. */
  get broken(): boolean {
    return this.failed || this.socket === null;
  }

  get available(): number {
    return this.bufferedBytes;
  }

  /** Copies up to max buffered bytes; unless peek, they are consumed. */
  take(max: number, peek: boolean): Uint8Array {
    const out = new Uint8Array(Math.min(max, this.bufferedBytes));
    let at = 0;
    for (const c of this.chunks) {
      if (at >= out.byteLength) break;
      const piece = c.subarray(0, out.byteLength - at);
      out.set(piece, at);
      at += piece.byteLength;
    }
    if (!peek) this.consume(out.byteLength);
    return out;
  }

  private consume(n: number): void {
    this.bufferedBytes -= n;
    while (n > 0) {
      const head = this.chunks[0]!;
      if (head.byteLength <= n) {
        this.chunks.shift();
        n -= head.byteLength;
      } else {
        this.chunks[0] = head.subarray(n);
        n = 0;
      }
    }
    if (this.socket?.isPaused() && this.bufferedBytes <= HIGH_WATER) this.socket.resume();
  }

  /**
   * The peer's end of data: a FIN, or a reset that followed data. libuv reports both as EOF
   * (it synthesizes EOF on POLLHUP after a short read) where the kernel would give the guest
   * ECONNRESET, and a server must not run a half-received request from a client that reset.
   * A zero-byte write puts nothing on the wire but fetches the socket's pending error, so the
   * EOF is only shown to the guest once the write has succeeded. When output is still queued
   * (or our side is already shut), that output will meet any reset instead.
   */
  private confirmEnd(s: net.Socket): void {
    const settle = (err?: Error | null): void => {
      if (err) this.failed = true;
      else this.ended = true;
      this.signal.fire();
    };
    if (s.destroyed || s.writableEnded || s.writableLength > 0) settle();
    else s.write(EMPTY, settle);
  }

  private attach(s: net.Socket): void {
    s.on('data', (b: Buffer) => {
      this.chunks.push(b);
      this.bufferedBytes += b.byteLength;
      if (this.bufferedBytes > HIGH_WATER) s.pause();
      this.signal.fire();
    });
    s.on('end', () => this.confirmEnd(s));
    s.on('error', () => {
      this.failed = true;
      this.signal.fire();
    });
    s.on('close', () => {
      if (!this.ended) this.failed = true;
      this.signal.fire();
    });
  }
}

class Listener {
  server: net.Server | null = null;
  /** Connections that arrived and the guest has not accepted yet, in arrival order. */
  readonly pending: Connection[] = [];
  readonly signal = new Signal();
  /** The guest closed the fd: never bind again, refuse arrivals. */
  closed = false;

  constructor(
    readonly host: string,
    readonly port: number,
  ) {}

  get address(): string {
    return this.host.includes(':') ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }
}

// ---------------------------------------------------------------------------------------------
// The fd table

type FdEntry =
  | { kind: 'stdin'; flags: number; pos: number }
  | { kind: 'stdout' | 'stderr'; flags: number }
  /** hostFd: the directory itself, open, so paths resolve from it wherever it is now (beneath.ts). */
  | { kind: 'dir'; flags: number; rel: string[]; preopen: string | null; hostFd: number }
  | { kind: 'file'; flags: number; rel: string[]; hostFd: number; filetype: number; pos: bigint; access: FileAccess }
  | { kind: 'listener'; flags: number; listener: Listener }
  | { kind: 'conn'; flags: number; conn: Connection };

/** How a file was opened (read, write or both), so a restored host can reopen it the same way. */
type FileAccess = 0 | 1 | 2;
const ACCESS_READ: FileAccess = 0;
const ACCESS_WRITE: FileAccess = 1;
const ACCESS_BOTH: FileAccess = 2;

type DirEntry = Extract<FdEntry, { kind: 'dir' }>;
type FileEntry = Extract<FdEntry, { kind: 'file' }>;
type ConnEntry = Extract<FdEntry, { kind: 'conn' }>;
type ListenerEntry = Extract<FdEntry, { kind: 'listener' }>;

function guestPathOf(rel: readonly string[]): string {
  return '/' + rel.join('/');
}

/**
 * The inode number the guest sees: derived from the guest path, because the real inode of a
 * file differs between the replicas' disks. (Two hard links to one file get different numbers;
 * guests use ino only to tell files apart, which this still does.)
 */
function inodeOf(rel: readonly string[]): bigint {
  const h = createHash('sha256').update(guestPathOf(rel)).digest();
  return h.readBigUInt64LE(0) >> 1n || 1n;
}

function filetypeOf(st: fs.Stats | fs.BigIntStats | fs.Dirent): number {
  if (st.isFile()) return FILETYPE.REGULAR;
  if (st.isDirectory()) return FILETYPE.DIRECTORY;
  if (st.isSymbolicLink()) return FILETYPE.SYMLINK;
  if (st.isCharacterDevice()) return FILETYPE.CHAR;
  if (st.isBlockDevice()) return FILETYPE.BLOCK;
  if (st.isSocket()) return FILETYPE.SOCKET_STREAM;
  return FILETYPE.UNKNOWN;
}

/**
 * filestat: dev is always 0 and ino comes from inodeOf, so both are equal on both replicas.
 * The timestamps (and a directory's size) are whatever this disk stored: they differ between
 * replicas, which is why the filestat calls are classified as inputs and logged.
 */
function encodeFilestat(filetype: number, ino: bigint, st: fs.BigIntStats | null): Uint8Array {
  const { bytes, view } = struct(SIZEOF.filestat);
  view.setBigUint64(0, 0n, true);
  view.setBigUint64(8, ino, true);
  view.setUint8(16, filetype);
  if (st !== null) {
    view.setBigUint64(24, st.nlink, true);
    view.setBigUint64(32, st.size, true);
    view.setBigUint64(40, st.atimeNs, true);
    view.setBigUint64(48, st.mtimeNs, true);
    view.setBigUint64(56, st.ctimeNs, true);
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// Paths (resolved by beneath.ts)

/** Removing or renaming "." or ".." (or the directory fd itself) is refused, as POSIX does. */
function requireNamedEntry(guestPath: string): void {
  const last = guestPath.split('/').filter((c) => c !== '').pop();
  if (last === undefined || last === '.' || last === '..') fail(ERRNO.INVAL);
}

function nsToSeconds(ns: bigint): number {
  return Number(ns / 1000n) / 1e6;
}

/** The (atime, mtime) pair for a set_times call, keeping what the flags leave unchanged. */
function newTimes(st: fs.BigIntStats, atim: bigint, mtim: bigint, flags: number): [number, number] {
  if (flags & FSTFLAGS.ATIM && flags & FSTFLAGS.ATIM_NOW) fail(ERRNO.INVAL);
  if (flags & FSTFLAGS.MTIM && flags & FSTFLAGS.MTIM_NOW) fail(ERRNO.INVAL);
  const now = Date.now() / 1000;
  const pick = (set: number, setNow: number, v: bigint, old: bigint): number =>
    flags & setNow ? now : flags & set ? nsToSeconds(v) : nsToSeconds(old);
  return [
    pick(FSTFLAGS.ATIM, FSTFLAGS.ATIM_NOW, atim, st.atimeNs),
    pick(FSTFLAGS.MTIM, FSTFLAGS.MTIM_NOW, mtim, st.mtimeNs),
  ];
}

// ---------------------------------------------------------------------------------------------
// Clocks

function monotonicNs(): bigint {
  return process.hrtime.bigint();
}

function realtimeNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/** Bytes one read of a file may return: bounds host memory for huge guest buffers. */
const MAX_FILE_IO = 16 << 20;
/** What poll reports as writable space on a socket (outputs are buffered in the host). */
const SOCKET_WRITE_SPACE = 65536n;

interface Readiness {
  ready: boolean;
  nbytes: bigint;
  hangup: boolean;
  error: number;
  /** When not ready: what to wait on. */
  signal?: Signal;
}

type Handler = (mem: GuestMemory, a: Args, ctx: CallContext) => number | Wait;

// ---------------------------------------------------------------------------------------------
// The host

export class WasiHost {
  private readonly opts: WasiHostOptions;
  private readonly root: string;
  /** The root, held open by the host itself (the guest may close fd 3): snapshots resolve from it. */
  private readonly rootFd: number;
  private currentMode: 'live' | 'replay';
  private readonly fds = new Map<number, FdEntry>();
  private readonly listeners: Listener[] = [];
  /** Accepted connections, from accept until performOutput(close) (outputs may lag the fd). */
  private readonly conns = new Map<number, Connection>();
  private nextConnId = 1;
  private readonly sockets = new Set<net.Socket>();
  /** Wake-ups of outstanding Waits, so close() can settle them. */
  private readonly pendingWaits = new Set<() => void>();
  private readonly argBytes: Uint8Array[];
  private readonly envBytes: Uint8Array[];
  private readonly stdin: Uint8Array;
  private closed = false;
  private readonly handlers: Record<WasiFunctionName, Handler>;

  constructor(opts: WasiHostOptions) {
    this.opts = opts;
    // The root is held open: guest paths resolve beneath open directories (beneath.ts), never
    // by a host path string. The path is kept for snapshots of the whole tree.
    this.root = fs.realpathSync(opts.root);
    if (!fs.statSync(this.root).isDirectory()) throw new Error(`WASI root ${opts.root} is not a directory`);
    this.rootFd = openDirectory(this.root);
    try {
      checkFdPaths(this.rootFd);
    } catch (e) {
      closeQuietly(this.rootFd);
      throw e;
    }
    this.currentMode = opts.mode;
    const enc = new TextEncoder();
    const nulTerminated = (s: string): Uint8Array => enc.encode(s + '\0');
    this.argBytes = opts.args.map(nulTerminated);
    this.envBytes = opts.env.map(nulTerminated);
    this.stdin = opts.stdin ?? new Uint8Array(0);
    this.fds.set(0, { kind: 'stdin', flags: 0, pos: 0 });
    this.fds.set(1, { kind: 'stdout', flags: 0 });
    this.fds.set(2, { kind: 'stderr', flags: 0 });
    this.fds.set(3, { kind: 'dir', flags: 0, rel: [], preopen: '/', hostFd: openDirectory(this.root) });
    for (const l of opts.listen) {
      const listener = new Listener(l.host, l.port);
      this.listeners.push(listener);
      this.fds.set(this.lowestFreeFd(), { kind: 'listener', flags: 0, listener });
    }
    this.handlers = this.makeHandlers();
  }

  get mode(): 'live' | 'replay' {
    return this.currentMode;
  }

  // --- the entry points ---------------------------------------------------------------------

  /**
   * Runs one WASI import. Returns the errno (results are in guest memory) or a Wait. Never
   * throws, except WasiExit for proc_exit / proc_raise.
   */
  call(name: string, mem: GuestMemory, args: CallArgs, ctx: CallContext): number | Wait {
    if (!isWasiFunction(name)) return ERRNO.NOSYS;
    if (args.length < WASI_FUNCTIONS[name].length) return ERRNO.INVAL;
    try {
      return this.handlers[name](mem, new Args(args), ctx);
    } catch (e) {
      return errnoOf(e);
    }
  }

  /** How the recorder treats a call; depends only on the name and the fd table. */
  classify(name: string, args: CallArgs): CallClass {
    switch (name) {
      case 'args_get':
      case 'args_sizes_get':
      case 'environ_get':
      case 'environ_sizes_get':
      case 'clock_res_get':
      case 'fd_prestat_get':
      case 'fd_prestat_dir_name':
        return 'config';
      case 'proc_exit':
      case 'proc_raise':
        return 'exit';
      case 'clock_time_get':
      case 'random_get':
      case 'poll_oneoff':
      case 'sock_accept':
      case 'sock_recv':
      case 'fd_filestat_get':
      case 'path_filestat_get':
      case 'fd_readdir':
        return 'input';
      case 'sock_send':
      case 'sock_shutdown':
        return 'output';
      case 'fd_read':
      case 'fd_pread':
        return this.kindOfArg(args) === 'stdin' || this.kindOfArg(args) === 'conn' ? 'input' : 'local';
      case 'fd_write':
      case 'fd_pwrite': {
        const k = this.kindOfArg(args);
        return k === 'stdout' || k === 'stderr' || k === 'conn' ? 'output' : 'local';
      }
      case 'fd_close':
        return this.kindOfArg(args) === 'conn' ? 'output' : 'local';
      default:
        return 'local';
    }
  }

  /** Performs an effect for real: the runtime calls it when the output rule allows. */
  /**
   * Perform several effects, in order, with each connection's writes coalesced: the sockets
   * written to are corked until the end, so many small replies released by one ack leave in
   * one writev per connection instead of one write each.
   */
  performOutputs(effects: Iterable<OutputEffect>): void {
    const corked: net.Socket[] = [];
    for (const e of effects) {
      if (e.kind === 'send') {
        const s = this.conns.get(e.conn)?.socket;
        if (s && !s.destroyed && !s.writableEnded && s.writableCorked === 0) {
          s.cork();
          corked.push(s);
        }
      }
      this.performOutput(e);
    }
    for (const s of corked) if (!s.destroyed && s.writableCorked > 0) s.uncork();
  }

  performOutput(effect: OutputEffect): void {
    switch (effect.kind) {
      case 'stdout':
        (this.opts.stdout ?? ((b) => process.stdout.write(b)))(effect.bytes);
        return;
      case 'stderr':
        (this.opts.stderr ?? ((b) => process.stderr.write(b)))(effect.bytes);
        return;
      case 'send': {
        const s = this.conns.get(effect.conn)?.socket;
        if (s && !s.destroyed && !s.writableEnded) s.write(effect.bytes);
        return;
      }
      case 'shutdown': {
        const s = this.conns.get(effect.conn)?.socket;
        if (s && !s.destroyed && effect.how & SDFLAGS.WR) s.end();
        return;
      }
      case 'close': {
        const s = this.conns.get(effect.conn)?.socket;
        this.conns.delete(effect.conn);
        if (s) closeSocket(s);
        return;
      }
    }
  }

  /**
   * Keeps the fd table in step on the backup after the runtime replayed an input or output
   * call from the log (without calling call()). Throws when the log disagrees with this host.
   */
  replayEffect(name: string, args: CallArgs, ret: number, mem: GuestMemory): void {
    if (ret !== ERRNO.SUCCESS) return;
    const a = new Args(args);
    const entry = this.fds.get(a.u32(0));
    switch (name) {
      case 'sock_accept':
        return this.replayAccept(a, entry, mem);
      case 'fd_close':
        if (entry?.kind === 'conn') {
          this.fds.delete(a.u32(0));
          this.conns.delete(entry.conn.id);
        }
        return;
      case 'sock_shutdown':
        if (entry?.kind === 'conn') this.markShutdown(entry.conn, a.u32(1));
        return;
      case 'fd_read':
        // stdin is part of host state: advance it by what the primary read.
        if (entry?.kind === 'stdin') entry.pos += mem.u32(a.ptr(3));
        return;
    }
  }

  /** Binds every listen address not closed by the guest (live mode's real sockets). */
  async openListeners(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const l of this.listeners) {
      if (!l.closed && l.server === null) await this.bind(l, deadline);
    }
  }

  /** The backup takes over: replayed connections stay broken (no socket), listeners open. */
  async goLive(timeoutMs = 30_000): Promise<void> {
    this.currentMode = 'live';
    await this.openListeners(timeoutMs);
  }

  /** Destroys every socket and server, closes host files and settles outstanding Waits. */
  close(): void {
    this.closed = true;
    for (const l of this.listeners) {
      l.server?.close();
      l.server = null;
      l.signal.fire();
    }
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    for (const e of this.fds.values()) if (e.kind === 'file' || e.kind === 'dir') closeQuietly(e.hostFd);
    this.fds.clear();
    closeQuietly(this.rootFd);
    for (const wake of [...this.pendingWaits]) wake();
  }

  /** Canonical JSON of the fd table, to compare two replicas' host states. */
  hostState(): string {
    const rows = [...this.fds.entries()].sort((x, y) => x[0] - y[0]).map(([fd, e]) => describe(fd, e));
    return JSON.stringify(rows);
  }

  // --- snapshots ----------------------------------------------------------------------------

  /**
   * The host's whole state, for a snapshot of the guest (GuestRuntime.snapshot): the fd table,
   * which listeners the guest closed, the next connection id and the guest directory's
   * contents. A connection is kept as its id and shutdown flags only: the restored side has
   * no socket for it, as the backup never has (replayEffect). See HOST_VERSION for the layout.
   */
  snapshotState(): Uint8Array {
    if (this.closed) throw new Error('cannot snapshot a closed WASI host');
    const tree = readTree(this.root);
    const w = new ByteWriter(64 * 1024);
    w.u8(HOST_MAGIC).u8(HOST_VERSION).varuint(this.nextConnId);
    w.varuint(this.listeners.length);
    for (const l of this.listeners) w.text(l.address).u8(l.closed ? 1 : 0);
    const fds = [...this.fds.entries()].sort((x, y) => x[0] - y[0]);
    w.varuint(fds.length);
    for (const [fd, e] of fds) this.encodeFd(w, fd, e, tree);
    encodeTree(w, tree.nodes);
    return w.finish();
  }

  /**
   * Replace this host's state with a snapshot's: its guest directory is emptied and recreated,
   * the files the guest had open are reopened, every connection becomes a replayed one (no
   * socket). The host must be new (nothing run on it) and built with the same config as the
   * snapshot's: the same listen addresses and stdin. Throws E_CORRUPT_ENTRY on a bad snapshot,
   * before anything is changed.
   */
  restoreState(bytes: Uint8Array): void {
    const img = decodeHostImage(bytes, this.listeners.map((l) => l.address), this.stdin.byteLength);
    for (const e of this.fds.values()) if (e.kind === 'file' || e.kind === 'dir') closeQuietly(e.hostFd);
    this.fds.clear();
    this.conns.clear();
    replaceTree(this.root, img.tree);
    img.listenersClosed.forEach((closed, i) => {
      if (closed) this.closeListener(this.listeners[i]!);
    });
    for (const f of img.fds) this.fds.set(f.fd, this.entryFromImage(f));
    this.nextConnId = img.nextConnId;
  }

  private encodeFd(w: ByteWriter, fd: number, e: FdEntry, tree: Tree): void {
    w.varuint(fd).u8(FD_KINDS.indexOf(e.kind)).varuint(e.flags);
    switch (e.kind) {
      case 'stdin':
        w.varuint(e.pos);
        return;
      case 'stdout':
      case 'stderr':
        return;
      case 'dir': {
        encodePath(w, e.rel);
        w.u8(e.preopen === null ? 0 : 1);
        if (e.preopen !== null) w.text(e.preopen);
        // Where the directory is now (the guest may have renamed it), or gone (removed).
        const key = inodeKey(fs.fstatSync(e.hostFd, { bigint: true }));
        const now = key === inodeKey(fs.fstatSync(this.rootFd, { bigint: true })) ? [] : tree.byInode.get(key);
        if (now === undefined) return void w.u8(OPEN_UNLINKED);
        w.u8(OPEN_AT_PATH);
        return encodePath(w, now);
      }
      case 'file':
        return encodeOpenFile(w, e, tree);
      case 'listener':
        w.varuint(this.listeners.indexOf(e.listener));
        return;
      case 'conn':
        w.varuint(e.conn.id).u8((e.conn.shutRd ? 1 : 0) | (e.conn.shutWr ? 2 : 0));
        return;
    }
  }

  private entryFromImage(f: FdImage): FdEntry {
    switch (f.kind) {
      case 'stdin':
        return { kind: f.kind, flags: f.flags, pos: f.pos };
      case 'stdout':
      case 'stderr':
        return { kind: f.kind, flags: f.flags };
      case 'dir': {
        const hostFd = f.at === null ? openRemovedDirectory() : this.openInRoot(f.at, openDirectory);
        return { kind: f.kind, flags: f.flags, rel: f.rel, preopen: f.preopen, hostFd };
      }
      case 'file': {
        const hostFd = f.data === null ? this.openInRoot(f.at, (p) => fs.openSync(p, openFlagsOf(f.access))) : openUnlinked(f.data, f.access);
        return { kind: f.kind, flags: f.flags, rel: f.rel, hostFd, filetype: f.filetype, pos: f.pos, access: f.access };
      }
      case 'listener':
        return { kind: f.kind, flags: f.flags, listener: this.listeners[f.index]! };
      case 'conn': {
        // Exactly what replayAccept makes (and replayEffect's shutdowns): a connection with no socket.
        const c = new Connection(null);
        c.id = f.id;
        c.shutRd = f.shutRd;
        c.shutWr = f.shutWr;
        this.conns.set(c.id, c);
        return { kind: f.kind, flags: f.flags, conn: c };
      }
    }
  }

  // --- fd table -----------------------------------------------------------------------------

  /** Deterministic allocation: the lowest free fd from 3 up, whatever the timing. */
  private lowestFreeFd(): number {
    let fd = 3;
    while (this.fds.has(fd)) fd++;
    return fd;
  }

  private kindOfArg(args: CallArgs): FdEntry['kind'] | undefined {
    const fd = args[0];
    if (fd === undefined) return undefined;
    return this.fds.get(new Args(args).u32(0))?.kind;
  }

  private entry(fd: number): FdEntry {
    return this.fds.get(fd) ?? fail(ERRNO.BADF);
  }

  /** A regular-file fd; a directory is ISDIR, anything else `other` (SPIPE: not seekable). */
  private fileEntry(fd: number, other: number = ERRNO.SPIPE): FileEntry {
    const e = this.entry(fd);
    if (e.kind === 'file') return e;
    return fail(e.kind === 'dir' ? ERRNO.ISDIR : other);
  }

  private dirEntry(fd: number): DirEntry {
    const e = this.entry(fd);
    return e.kind === 'dir' ? e : fail(ERRNO.NOTDIR);
  }

  private connEntry(fd: number): ConnEntry {
    const e = this.entry(fd);
    if (e.kind === 'conn') return e;
    return fail(e.kind === 'listener' ? ERRNO.NOTCONN : ERRNO.NOTSOCK);
  }

  private listenerEntry(fd: number): ListenerEntry {
    const e = this.entry(fd);
    if (e.kind === 'listener') return e;
    return fail(e.kind === 'conn' ? ERRNO.INVAL : ERRNO.NOTSOCK);
  }

  /** Opens a path of the guest tree (from a snapshot) as beneath.ts resolves any other. */
  private openInRoot(at: readonly string[], open: (host: string) => number): number {
    const r = resolveBeneath({ hostFd: this.rootFd, rel: [] }, at.length === 0 ? '.' : at.join('/'), false);
    try {
      return open(r.host);
    } finally {
      r.close();
    }
  }

  /** Resolves a guest path beneath a directory fd, runs `use` on it, closes what it held. */
  private beneath<T>(dirFd: number, mem: GuestMemory, ptr: number, len: number, follow: boolean, use: (r: Resolved) => T): T {
    const dir = this.dirEntry(dirFd);
    const r = resolveBeneath(dir, readPath(mem, ptr, len), follow);
    try {
      return use(r);
    } finally {
      r.close();
    }
  }

  /** Closes an fd's host resources; connections are handled by the caller (they are outputs). */
  private release(e: FdEntry): void {
    if (e.kind === 'file' || e.kind === 'dir') closeQuietly(e.hostFd);
    if (e.kind === 'listener') this.closeListener(e.listener);
  }

  private closeListener(l: Listener): void {
    l.closed = true;
    l.server?.close();
    l.server = null;
    for (const c of l.pending.splice(0)) c.socket?.destroy();
    l.signal.fire();
  }

  // --- waiting ------------------------------------------------------------------------------

  /** A Wait that settles at the first fire() of any signal or at the monotonic deadline. */
  private waitFor(signals: readonly Signal[], deadlineNs: bigint | null): Wait {
    const wait = new Promise<void>((resolve) => {
      const offs: (() => void)[] = [];
      let timer: NodeJS.Timeout | undefined;
      const wake = (): void => {
        for (const off of offs) off();
        if (timer !== undefined) clearTimeout(timer);
        this.pendingWaits.delete(wake);
        resolve();
      };
      for (const s of signals) offs.push(s.on(wake));
      if (deadlineNs !== null) {
        // Round up and add a millisecond: timers may fire a little before the hrtime deadline,
        // and an early wake-up only costs a retry that returns another Wait.
        const ms = Number((deadlineNs - monotonicNs() + 999_999n) / 1_000_000n) + 1;
        timer = setTimeout(wake, Math.min(Math.max(ms, 1), 0x7fff_ffff));
      }
      this.pendingWaits.add(wake);
      if (this.closed) wake();
    });
    return { wait };
  }

  // --- sockets ------------------------------------------------------------------------------

  private async bind(l: Listener, deadline: number): Promise<void> {
    for (;;) {
      try {
        const server = await this.listenOnce(l);
        // close() (or the guest closing the fd) may have come while we were binding.
        if (this.closed || l.closed) server.close();
        else l.server = server;
        return;
      } catch (e) {
        const inUse = (e as { code?: string }).code === 'EADDRINUSE';
        if (!inUse || Date.now() + 100 > deadline || this.closed) {
          throw new Error(`cannot listen on ${l.address}: ${(e as Error).message}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private listenOnce(l: Listener): Promise<net.Server> {
    return new Promise((resolve, reject) => {
      // allowHalfOpen: a peer's FIN must not end our side; the guest decides when to close.
      const server = net.createServer({ allowHalfOpen: true }, (s) => this.onConnection(l, s));
      server.once('error', (err) => {
        server.close();
        reject(err);
      });
      server.listen({ host: l.host, port: l.port }, () => {
        server.removeAllListeners('error');
        server.on('error', () => {});
        resolve(server);
      });
    });
  }

  private onConnection(l: Listener, s: net.Socket): void {
    if (this.closed || l.closed) {
      s.destroy();
      return;
    }
    s.setNoDelay(true);
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
    l.pending.push(new Connection(s));
    l.signal.fire();
  }

  /** Gives an accepted connection its fd and connection id (both in call order). */
  private acceptInto(c: Connection, flags: number): number {
    const fd = this.lowestFreeFd();
    c.id = this.nextConnId++;
    this.conns.set(c.id, c);
    this.fds.set(fd, { kind: 'conn', flags: flags & FDFLAGS.NONBLOCK, conn: c });
    return fd;
  }

  private replayAccept(a: Args, entry: FdEntry | undefined, mem: GuestMemory): void {
    if (entry?.kind !== 'listener') throw new Error(`replayed sock_accept on fd ${a.u32(0)}, which is not a listener here`);
    const expected = this.lowestFreeFd();
    const logged = mem.u32(a.ptr(2));
    if (logged !== expected) {
      throw new Error(`replayed sock_accept returned fd ${logged}, but this host would allocate fd ${expected}`);
    }
    this.acceptInto(new Connection(null), a.u32(1));
  }

  private markShutdown(c: Connection, how: number): void {
    if (how & SDFLAGS.RD) c.shutRd = true;
    if (how & SDFLAGS.WR) c.shutWr = true;
  }

  /** Bytes read from a connection into the iovecs, or a Wait. Data first, then EOF/reset. */
  private connRead(e: ConnEntry, mem: GuestMemory, iovs: readonly Iovec[], riflags: number): number | Wait {
    const c = e.conn;
    const want = totalLen(iovs);
    if (want === 0 || c.shutRd) return 0;
    const nonblock = (e.flags & FDFLAGS.NONBLOCK) !== 0;
    const waitAll = (riflags & RIFLAGS.RECV_WAITALL) !== 0;
    if (c.available > 0 && (!waitAll || c.available >= want || c.ended || c.broken || nonblock)) {
      const data = c.take(want, (riflags & RIFLAGS.RECV_PEEK) !== 0);
      scatter(mem, iovs, data);
      return data.byteLength;
    }
    if (c.broken) fail(ERRNO.CONNRESET);
    if (c.ended) return 0;
    if (nonblock) fail(ERRNO.AGAIN);
    return this.waitFor([c.signal], null);
  }

  /** A write to a connection: an output effect, never a socket write here. */
  private connWrite(e: ConnEntry, bytes: Uint8Array): number {
    const c = e.conn;
    if (c.shutWr || c.broken) fail(ERRNO.PIPE);
    if (bytes.byteLength > 0) this.opts.output({ kind: 'send', conn: c.id, bytes });
    return bytes.byteLength;
  }

  // --- files --------------------------------------------------------------------------------

  private fileRead(e: FileEntry, mem: GuestMemory, iovs: readonly Iovec[], at: bigint): number {
    const buf = Buffer.alloc(Math.min(totalLen(iovs), MAX_FILE_IO));
    const n = fs.readSync(e.hostFd, buf, 0, buf.byteLength, at);
    scatter(mem, iovs, buf.subarray(0, n));
    return n;
  }

  private fileWrite(e: FileEntry, data: Uint8Array, at: bigint): number {
    if (data.byteLength === 0) return 0;
    return fs.writeSync(e.hostFd, data, 0, data.byteLength, Number(at));
  }

  private fileSize(e: FileEntry): bigint {
    return fs.fstatSync(e.hostFd, { bigint: true }).size;
  }

  private stdinRead(e: Extract<FdEntry, { kind: 'stdin' }>, mem: GuestMemory, iovs: readonly Iovec[]): number {
    const data = this.stdin.subarray(e.pos, e.pos + totalLen(iovs));
    scatter(mem, iovs, data);
    e.pos += data.byteLength;
    return data.byteLength;
  }

  /** The read of fd_read / sock_recv by fd kind: bytes read, or a Wait. */
  private readFd(fd: number, mem: GuestMemory, iovs: readonly Iovec[]): number | Wait {
    const e = this.entry(fd);
    switch (e.kind) {
      case 'stdin':
        return this.stdinRead(e, mem, iovs);
      case 'file': {
        const n = this.fileRead(e, mem, iovs, e.pos);
        e.pos += BigInt(n);
        return n;
      }
      case 'conn':
        return this.connRead(e, mem, iovs, 0);
      case 'dir':
        return fail(ERRNO.ISDIR);
      case 'listener':
        return fail(ERRNO.NOTCONN);
      default:
        return fail(ERRNO.BADF);
    }
  }

  private writeFd(fd: number, bytes: Uint8Array): number {
    const e = this.entry(fd);
    switch (e.kind) {
      case 'stdout':
      case 'stderr':
        if (bytes.byteLength > 0) this.opts.output({ kind: e.kind, bytes });
        return bytes.byteLength;
      case 'file': {
        // APPEND is done here rather than by O_APPEND so the position stays host state.
        const at = e.flags & FDFLAGS.APPEND ? this.fileSize(e) : e.pos;
        const n = this.fileWrite(e, bytes, at);
        e.pos = at + BigInt(n);
        return n;
      }
      case 'conn':
        return this.connWrite(e, bytes);
      case 'dir':
        return fail(ERRNO.ISDIR);
      case 'listener':
        return fail(ERRNO.NOTCONN);
      default:
        return fail(ERRNO.BADF);
    }
  }

  private filestatOf(e: FdEntry): Uint8Array {
    switch (e.kind) {
      case 'file':
        return encodeFilestat(e.filetype, inodeOf(e.rel), fs.fstatSync(e.hostFd, { bigint: true }));
      case 'dir':
        return encodeFilestat(FILETYPE.DIRECTORY, inodeOf(e.rel), fs.fstatSync(e.hostFd, { bigint: true }));
      case 'listener':
      case 'conn':
        return encodeFilestat(FILETYPE.SOCKET_STREAM, 0n, null);
      default:
        return encodeFilestat(FILETYPE.CHAR, 0n, null);
    }
  }

  private filetypeOfEntry(e: FdEntry): number {
    switch (e.kind) {
      case 'file':
        return e.filetype;
      case 'dir':
        return FILETYPE.DIRECTORY;
      case 'listener':
      case 'conn':
        return FILETYPE.SOCKET_STREAM;
      default:
        return FILETYPE.CHAR;
    }
  }

  /**
   * The entries of a directory as fd_readdir lists them: ".", ".." and the rest sorted by name,
   * so both replicas see the same order whatever their file systems return.
   */
  private dirListing(dir: DirEntry): { name: string; type: number; ino: bigint }[] {
    const parent = dir.rel.length > 0 ? dir.rel.slice(0, -1) : dir.rel;
    const entries = fs.readdirSync(fdPath(dir.hostFd), { withFileTypes: true });
    entries.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
    return [
      { name: '.', type: FILETYPE.DIRECTORY, ino: inodeOf(dir.rel) },
      { name: '..', type: FILETYPE.DIRECTORY, ino: inodeOf(parent) },
      ...entries.map((d) => ({ name: d.name, type: filetypeOf(d), ino: inodeOf([...dir.rel, d.name]) })),
    ];
  }

  private openDir(r: Resolved, oflags: number, st: fs.BigIntStats | null): number {
    if (st === null) return fail(oflags & OFLAGS.CREAT ? ERRNO.INVAL : ERRNO.NOENT);
    if (!st.isDirectory()) return fail(ERRNO.NOTDIR);
    // Write rights are not refused here (some runtimes ask for every right on every open);
    // a later write to the directory fd is ISDIR.
    if (oflags & (OFLAGS.CREAT | OFLAGS.TRUNC)) return fail(ERRNO.ISDIR);
    const hostFd = openDirectory(r.host);
    const fd = this.lowestFreeFd();
    this.fds.set(fd, { kind: 'dir', flags: 0, rel: r.rel, preopen: null, hostFd });
    return fd;
  }

  private openFile(r: Resolved, oflags: number, rightsBase: bigint, fdflags: number): number {
    // The access mode follows the rights wasi-libc derives from O_RDONLY / O_WRONLY / O_RDWR.
    const read = (rightsBase & RIGHTS.FD_READ) !== 0n;
    const writeRights = RIGHTS.FD_WRITE | RIGHTS.FD_ALLOCATE | RIGHTS.FD_FILESTAT_SET_SIZE | RIGHTS.FD_DATASYNC;
    const write = (rightsBase & writeRights) !== 0n || (oflags & OFLAGS.TRUNC) !== 0;
    const c = fs.constants;
    const access = read && write ? ACCESS_BOTH : write ? ACCESS_WRITE : ACCESS_READ;
    let flags = openFlagsOf(access);
    if (oflags & OFLAGS.CREAT) flags |= c.O_CREAT;
    if (oflags & OFLAGS.EXCL) flags |= c.O_EXCL;
    if (oflags & OFLAGS.TRUNC) flags |= c.O_TRUNC;
    const hostFd = fs.openSync(r.host, flags, 0o666);
    const filetype = filetypeOf(fs.fstatSync(hostFd));
    const fd = this.lowestFreeFd();
    const keep = FDFLAGS.APPEND | FDFLAGS.NONBLOCK;
    this.fds.set(fd, { kind: 'file', flags: fdflags & keep, rel: r.rel, hostFd, filetype, pos: 0n, access });
    return fd;
  }

  // --- poll ---------------------------------------------------------------------------------

  private fdReadiness(fd: number, type: number): Readiness {
    const e = this.fds.get(fd);
    const ready = (nbytes: bigint, hangup = false): Readiness => ({ ready: true, nbytes, hangup, error: 0 });
    if (e === undefined) return { ready: true, nbytes: 0n, hangup: false, error: ERRNO.BADF };
    switch (e.kind) {
      case 'conn': {
        const c = e.conn;
        const hangup = c.ended || c.broken;
        if (type === EVENTTYPE.FD_WRITE) return ready(hangup ? 0n : SOCKET_WRITE_SPACE, hangup);
        if (c.available > 0 || hangup || c.shutRd) return ready(BigInt(c.available), hangup);
        return { ready: false, nbytes: 0n, hangup: false, error: 0, signal: c.signal };
      }
      case 'listener': {
        const l = e.listener;
        if (type === EVENTTYPE.FD_READ && l.pending.length > 0) return ready(BigInt(l.pending.length));
        return { ready: false, nbytes: 0n, hangup: false, error: 0, signal: l.signal };
      }
      case 'file': {
        if (type === EVENTTYPE.FD_WRITE) return ready(0n);
        const left = this.fileSize(e) - e.pos;
        return ready(left > 0n ? left : 0n);
      }
      case 'stdin':
        return ready(type === EVENTTYPE.FD_READ ? BigInt(this.stdin.byteLength - e.pos) : 0n);
      default:
        return ready(0n);
    }
  }

  /** A clock subscription's deadline on the monotonic clock, or an errno for a bad clock. */
  private clockDeadline(id: number, timeout: bigint, flags: number, ctx: CallContext): bigint | number {
    const abs = (flags & SUBCLOCKFLAGS.SUBSCRIPTION_CLOCK_ABSTIME) !== 0;
    if (id === CLOCKID.MONOTONIC) return abs ? timeout : ctx.startedAtNs + timeout;
    if (id === CLOCKID.REALTIME) return abs ? monotonicNs() + (timeout - realtimeNs()) : ctx.startedAtNs + timeout;
    return ERRNO.INVAL;
  }

  private pollOneoff(mem: GuestMemory, a: Args, ctx: CallContext): number | Wait {
    const n = a.u32(2);
    if (n === 0) return ERRNO.INVAL;
    const inPtr = mem.check(a.ptr(0), n * SIZEOF.subscription);
    const outPtr = mem.check(a.ptr(1), n * SIZEOF.event);
    mem.check(a.ptr(3), 4);
    const now = monotonicNs();
    const events: Uint8Array[] = [];
    const signals: Signal[] = [];
    let earliest: bigint | null = null;
    for (let i = 0; i < n; i++) {
      const s = inPtr + i * SIZEOF.subscription;
      const userdata = mem.u64(s);
      const tag = mem.u8(s + 8);
      if (tag === EVENTTYPE.CLOCK) {
        const d = this.clockDeadline(mem.u32(s + 16), mem.u64(s + 24), mem.u16(s + 40), ctx);
        if (typeof d === 'number') events.push(encodeEvent(userdata, d, tag, 0n, false));
        else if (d <= now) events.push(encodeEvent(userdata, 0, tag, 0n, false));
        else earliest = earliest === null || d < earliest ? d : earliest;
      } else if (tag === EVENTTYPE.FD_READ || tag === EVENTTYPE.FD_WRITE) {
        const r = this.fdReadiness(mem.u32(s + 16), tag);
        if (r.ready) events.push(encodeEvent(userdata, r.error, tag, r.nbytes, r.hangup));
        else if (r.signal) signals.push(r.signal);
      } else {
        return ERRNO.INVAL;
      }
    }
    if (events.length === 0) return this.waitFor(signals, earliest);
    events.forEach((ev, i) => mem.write(outPtr + i * SIZEOF.event, ev));
    mem.setU32(a.ptr(3), events.length);
    return ERRNO.SUCCESS;
  }

  // --- the handlers, one per import -----------------------------------------------------------

  private makeHandlers(): Record<WasiFunctionName, Handler> {
    const ok = ERRNO.SUCCESS;
    return {
      args_get: (mem, a) => writeStringList(mem, a.ptr(0), a.ptr(1), this.argBytes),
      args_sizes_get: (mem, a) => writeListSizes(mem, a.ptr(0), a.ptr(1), this.argBytes),
      environ_get: (mem, a) => writeStringList(mem, a.ptr(0), a.ptr(1), this.envBytes),
      environ_sizes_get: (mem, a) => writeListSizes(mem, a.ptr(0), a.ptr(1), this.envBytes),

      clock_res_get: (mem, a) => {
        const id = a.u32(0);
        if (id === CLOCKID.REALTIME) mem.setU64(a.ptr(1), 1_000_000n); // Date.now(): milliseconds
        else if (id <= CLOCKID.THREAD_CPUTIME) mem.setU64(a.ptr(1), 1n);
        else return ERRNO.INVAL;
        return ok;
      },
      clock_time_get: (mem, a) => {
        const id = a.u32(0);
        // The CPU-time clocks read the monotonic clock: a guest only measures intervals with them.
        if (id === CLOCKID.REALTIME) mem.setU64(a.ptr(2), realtimeNs());
        else if (id <= CLOCKID.THREAD_CPUTIME) mem.setU64(a.ptr(2), monotonicNs());
        else return ERRNO.INVAL;
        return ok;
      },

      fd_advise: (_mem, a) => {
        this.fileEntry(a.u32(0));
        return a.u32(3) <= 5 ? ok : ERRNO.INVAL;
      },
      fd_allocate: (_mem, a) => {
        const e = this.fileEntry(a.u32(0));
        const end = a.u64(1) + a.u64(2);
        if (end > BigInt(Number.MAX_SAFE_INTEGER)) return ERRNO.FBIG;
        if (this.fileSize(e) < end) fs.ftruncateSync(e.hostFd, Number(end));
        return ok;
      },
      fd_close: (_mem, a) => {
        const fd = a.u32(0);
        const e = this.entry(fd);
        this.fds.delete(fd);
        if (e.kind === 'conn') this.opts.output({ kind: 'close', conn: e.conn.id });
        else this.release(e);
        return ok;
      },
      fd_datasync: (_mem, a) => this.syncFd(a.u32(0), fs.fdatasyncSync),
      fd_sync: (_mem, a) => this.syncFd(a.u32(0), fs.fsyncSync),
      fd_fdstat_get: (mem, a) => {
        const e = this.entry(a.u32(0));
        const { bytes, view } = struct(SIZEOF.fdstat);
        view.setUint8(0, this.filetypeOfEntry(e));
        view.setUint16(2, e.flags, true);
        // Rights are granted in full and not enforced: the OS and the fd kind decide instead.
        view.setBigUint64(8, RIGHTS_ALL, true);
        view.setBigUint64(16, RIGHTS_ALL, true);
        mem.write(a.ptr(1), bytes);
        return ok;
      },
      fd_fdstat_set_flags: (_mem, a) => {
        const e = this.entry(a.u32(0));
        const flags = a.u32(1);
        if (flags & ~(FDFLAGS.APPEND | FDFLAGS.NONBLOCK)) return ERRNO.NOTSUP;
        e.flags = flags;
        return ok;
      },
      fd_fdstat_set_rights: (_mem, a) => {
        this.entry(a.u32(0));
        return ok;
      },
      fd_filestat_get: (mem, a) => {
        const e = this.entry(a.u32(0));
        mem.check(a.ptr(1), SIZEOF.filestat);
        mem.write(a.ptr(1), this.filestatOf(e));
        return ok;
      },
      fd_filestat_set_size: (_mem, a) => {
        const e = this.fileEntry(a.u32(0), ERRNO.INVAL);
        const size = a.u64(1);
        if (size > BigInt(Number.MAX_SAFE_INTEGER)) return ERRNO.FBIG;
        fs.ftruncateSync(e.hostFd, Number(size));
        return ok;
      },
      fd_filestat_set_times: (_mem, a) => {
        const e = this.entry(a.u32(0));
        const flags = a.u32(3);
        if (e.kind !== 'file' && e.kind !== 'dir') return ERRNO.NOTSUP;
        const [at, mt] = newTimes(fs.fstatSync(e.hostFd, { bigint: true }), a.u64(1), a.u64(2), flags);
        fs.futimesSync(e.hostFd, at, mt);
        return ok;
      },
      fd_pread: (mem, a) => {
        const e = this.fileEntry(a.u32(0));
        const iovs = readIovecs(mem, a.ptr(1), a.u32(2));
        mem.check(a.ptr(4), 4);
        mem.setU32(a.ptr(4), this.fileRead(e, mem, iovs, a.u64(3)));
        return ok;
      },
      fd_pwrite: (mem, a) => {
        const e = this.fileEntry(a.u32(0));
        const data = gather(mem, readIovecs(mem, a.ptr(1), a.u32(2)));
        mem.check(a.ptr(4), 4);
        mem.setU32(a.ptr(4), this.fileWrite(e, data, a.u64(3)));
        return ok;
      },
      fd_prestat_get: (mem, a) => {
        const e = this.fds.get(a.u32(0));
        // Not a preopen is BADF: wasi-libc scans fds from 3 up and stops at the first BADF.
        if (e?.kind !== 'dir' || e.preopen === null) return ERRNO.BADF;
        const { bytes, view } = struct(SIZEOF.prestat);
        view.setUint8(0, PREOPENTYPE.DIR);
        view.setUint32(4, Buffer.byteLength(e.preopen), true);
        mem.write(a.ptr(1), bytes);
        return ok;
      },
      fd_prestat_dir_name: (mem, a) => {
        const e = this.fds.get(a.u32(0));
        if (e?.kind !== 'dir' || e.preopen === null) return ERRNO.BADF;
        const name = new TextEncoder().encode(e.preopen);
        if (a.u32(2) < name.byteLength) return ERRNO.NAMETOOLONG;
        mem.write(a.ptr(1), name);
        return ok;
      },
      fd_read: (mem, a) => {
        const iovs = readIovecs(mem, a.ptr(1), a.u32(2));
        mem.check(a.ptr(3), 4);
        const r = this.readFd(a.u32(0), mem, iovs);
        if (isWait(r)) return r;
        mem.setU32(a.ptr(3), r);
        return ok;
      },
      fd_readdir: (mem, a) => {
        const dir = this.dirEntry(a.u32(0));
        const bufLen = a.u32(2);
        mem.check(a.ptr(1), bufLen);
        mem.check(a.ptr(4), 4);
        const out = encodeDirents(this.dirListing(dir), a.u64(3), bufLen);
        mem.write(a.ptr(1), out);
        mem.setU32(a.ptr(4), out.byteLength);
        return ok;
      },
      fd_renumber: (_mem, a) => {
        const from = a.u32(0);
        const to = a.u32(1);
        const e = this.entry(from);
        const target = this.entry(to);
        if (from === to) return ok;
        // Closing a connection is an output; a local call must not make one.
        if (target.kind === 'conn') return ERRNO.NOTSUP;
        this.release(target);
        this.fds.set(to, e);
        this.fds.delete(from);
        return ok;
      },
      fd_seek: (mem, a) => {
        const e = this.fileEntry(a.u32(0));
        const whence = a.u32(2);
        mem.check(a.ptr(3), 8);
        const base = whence === WHENCE.SET ? 0n : whence === WHENCE.CUR ? e.pos : whence === WHENCE.END ? this.fileSize(e) : -1n;
        if (base < 0n) return ERRNO.INVAL;
        const pos = base + a.i64(1);
        if (pos < 0n) return ERRNO.INVAL;
        e.pos = pos;
        mem.setU64(a.ptr(3), pos);
        return ok;
      },
      fd_tell: (mem, a) => {
        mem.setU64(a.ptr(1), this.fileEntry(a.u32(0)).pos);
        return ok;
      },
      fd_write: (mem, a) => {
        const data = gather(mem, readIovecs(mem, a.ptr(1), a.u32(2)));
        mem.check(a.ptr(3), 4);
        mem.setU32(a.ptr(3), this.writeFd(a.u32(0), data));
        return ok;
      },

      // Every path is resolved by beneath.ts; each system call below names an entry of a
      // directory it holds open and does not follow a final symlink (it expanded those itself).
      path_create_directory: (mem, a) =>
        this.beneath(a.u32(0), mem, a.ptr(1), a.u32(2), false, (r) => {
          fs.mkdirSync(r.host);
          return ok;
        }),
      path_filestat_get: (mem, a) => {
        const follow = (a.u32(1) & LOOKUPFLAGS.SYMLINK_FOLLOW) !== 0;
        return this.beneath(a.u32(0), mem, a.ptr(2), a.u32(3), follow, (r) => {
          mem.check(a.ptr(4), SIZEOF.filestat);
          const st = r.stat() ?? fail(ERRNO.NOENT);
          mem.write(a.ptr(4), encodeFilestat(filetypeOf(st), inodeOf(r.rel), st));
          return ok;
        });
      },
      path_filestat_set_times: (mem, a) => {
        const follow = (a.u32(1) & LOOKUPFLAGS.SYMLINK_FOLLOW) !== 0;
        return this.beneath(a.u32(0), mem, a.ptr(2), a.u32(3), follow, (r) => {
          const [at, mt] = newTimes(r.stat() ?? fail(ERRNO.NOENT), a.u64(4), a.u64(5), a.u32(6));
          fs.lutimesSync(r.host, at, mt);
          return ok;
        });
      },
      path_link: (mem, a) => {
        const follow = (a.u32(1) & LOOKUPFLAGS.SYMLINK_FOLLOW) !== 0;
        return this.beneath(a.u32(0), mem, a.ptr(2), a.u32(3), follow, (from) =>
          this.beneath(a.u32(4), mem, a.ptr(5), a.u32(6), false, (to) => {
            fs.linkSync(from.host, to.host);
            return ok;
          }),
        );
      },
      path_open: (mem, a) => {
        const follow = (a.u32(1) & LOOKUPFLAGS.SYMLINK_FOLLOW) !== 0;
        const oflags = a.u32(4);
        const rightsBase = a.u64(5);
        return this.beneath(a.u32(0), mem, a.ptr(2), a.u32(3), follow, (r) => {
          mem.check(a.ptr(8), 4);
          const st = r.stat();
          if (st && oflags & OFLAGS.CREAT && oflags & OFLAGS.EXCL) return ERRNO.EXIST;
          if (st?.isSymbolicLink()) return ERRNO.LOOP; // a final symlink the guest asked not to follow
          const dirWanted = (oflags & OFLAGS.DIRECTORY) !== 0 || st?.isDirectory() === true;
          // "name/" is a directory: a missing one cannot be made a file (Linux says EISDIR).
          if (r.trailing && !dirWanted) return oflags & OFLAGS.CREAT ? ERRNO.ISDIR : ERRNO.NOENT;
          const fd = dirWanted ? this.openDir(r, oflags, st) : this.openFile(r, oflags, rightsBase, a.u32(7));
          mem.setU32(a.ptr(8), fd);
          return ok;
        });
      },
      path_readlink: (mem, a) =>
        this.beneath(a.u32(0), mem, a.ptr(1), a.u32(2), false, (r) => {
          const bufLen = a.u32(4);
          mem.check(a.ptr(3), bufLen);
          mem.check(a.ptr(5), 4);
          const target = fs.readlinkSync(r.host, { encoding: 'buffer' }).subarray(0, bufLen);
          mem.write(a.ptr(3), target);
          mem.setU32(a.ptr(5), target.byteLength);
          return ok;
        }),
      path_remove_directory: (mem, a) => {
        requireNamedEntry(readPath(mem, a.ptr(1), a.u32(2)));
        return this.beneath(a.u32(0), mem, a.ptr(1), a.u32(2), false, (r) => {
          fs.rmdirSync(r.host);
          return ok;
        });
      },
      path_rename: (mem, a) => {
        requireNamedEntry(readPath(mem, a.ptr(1), a.u32(2)));
        requireNamedEntry(readPath(mem, a.ptr(4), a.u32(5)));
        return this.beneath(a.u32(0), mem, a.ptr(1), a.u32(2), false, (from) =>
          this.beneath(a.u32(3), mem, a.ptr(4), a.u32(5), false, (to) => {
            fs.renameSync(from.host, to.host);
            return ok;
          }),
        );
      },
      path_symlink: (mem, a) => {
        const target = readPath(mem, a.ptr(0), a.u32(1));
        // A link out of the root could never be followed; refuse to make one. (A relative one
        // that climbs out is made, as on any host: it is refused when followed, see beneath.ts.)
        if (target.startsWith('/')) return ERRNO.NOTCAPABLE;
        return this.beneath(a.u32(2), mem, a.ptr(3), a.u32(4), false, (r) => {
          fs.symlinkSync(target, r.host);
          return ok;
        });
      },
      path_unlink_file: (mem, a) => {
        requireNamedEntry(readPath(mem, a.ptr(1), a.u32(2)));
        return this.beneath(a.u32(0), mem, a.ptr(1), a.u32(2), false, (r) => {
          fs.unlinkSync(r.host);
          return ok;
        });
      },

      poll_oneoff: (mem, a, ctx) => this.pollOneoff(mem, a, ctx),
      proc_exit: (_mem, a) => {
        throw new WasiExit(a.u32(0));
      },
      proc_raise: (_mem, a) => {
        // No signal handlers in preview1: every raised signal terminates, as its default would.
        throw new WasiExit(128 + a.u32(0));
      },
      sched_yield: () => ok,
      random_get: (mem, a) => {
        const len = a.u32(1);
        mem.check(a.ptr(0), len);
        mem.write(a.ptr(0), randomFillSync(new Uint8Array(len)));
        return ok;
      },

      sock_accept: (mem, a) => {
        const e = this.listenerEntry(a.u32(0));
        const flags = a.u32(1);
        if (flags & ~FDFLAGS.NONBLOCK) return ERRNO.INVAL;
        mem.check(a.ptr(2), 4);
        const c = e.listener.pending.shift();
        if (c === undefined) return e.flags & FDFLAGS.NONBLOCK ? ERRNO.AGAIN : this.waitFor([e.listener.signal], null);
        mem.setU32(a.ptr(2), this.acceptInto(c, flags));
        return ok;
      },
      sock_recv: (mem, a) => {
        const e = this.connEntry(a.u32(0));
        const riflags = a.u32(3);
        if (riflags & ~(RIFLAGS.RECV_PEEK | RIFLAGS.RECV_WAITALL)) return ERRNO.INVAL;
        const iovs = readIovecs(mem, a.ptr(1), a.u32(2));
        mem.check(a.ptr(4), 4);
        mem.check(a.ptr(5), 2);
        const r = this.connRead(e, mem, iovs, riflags);
        if (isWait(r)) return r;
        mem.setU32(a.ptr(4), r);
        mem.setU16(a.ptr(5), 0);
        return ok;
      },
      sock_send: (mem, a) => {
        const e = this.connEntry(a.u32(0));
        const data = gather(mem, readIovecs(mem, a.ptr(1), a.u32(2)));
        mem.check(a.ptr(4), 4);
        mem.setU32(a.ptr(4), this.connWrite(e, data));
        return ok;
      },
      sock_shutdown: (_mem, a) => {
        const e = this.connEntry(a.u32(0));
        const how = a.u32(1);
        if (how === 0 || how & ~(SDFLAGS.RD | SDFLAGS.WR)) return ERRNO.INVAL;
        this.markShutdown(e.conn, how);
        this.opts.output({ kind: 'shutdown', conn: e.conn.id, how });
        return ok;
      },
    };
  }

  private syncFd(fd: number, sync: (hostFd: number) => void): number {
    const e = this.entry(fd);
    if (e.kind === 'file' || e.kind === 'dir') sync(e.hostFd);
    else return ERRNO.INVAL;
    return ERRNO.SUCCESS;
  }
}

// ---------------------------------------------------------------------------------------------
// Encoders and small helpers used by the handlers

/** args_sizes_get / environ_sizes_get: the count and the bytes of all NUL-terminated strings. */
function writeListSizes(mem: GuestMemory, countPtr: number, sizePtr: number, list: readonly Uint8Array[]): number {
  mem.check(countPtr, 4);
  mem.check(sizePtr, 4);
  mem.setU32(countPtr, list.length);
  mem.setU32(sizePtr, list.reduce((n, b) => n + b.byteLength, 0));
  return ERRNO.SUCCESS;
}

/** args_get / environ_get: a pointer array into one buffer of NUL-terminated strings. */
function writeStringList(mem: GuestMemory, ptrsPtr: number, bufPtr: number, list: readonly Uint8Array[]): number {
  const ptrs = mem.check(ptrsPtr, list.length * 4);
  const buf = mem.check(bufPtr, list.reduce((n, b) => n + b.byteLength, 0));
  let at = buf;
  list.forEach((s, i) => {
    mem.setU32(ptrs + i * 4, at);
    mem.write(at, s);
    at += s.byteLength;
  });
  return ERRNO.SUCCESS;
}

function encodeEvent(userdata: bigint, error: number, type: number, nbytes: bigint, hangup: boolean): Uint8Array {
  const { bytes, view } = struct(SIZEOF.event);
  view.setBigUint64(0, userdata, true);
  view.setUint16(8, error, true);
  view.setUint8(10, type);
  if (type !== EVENTTYPE.CLOCK) {
    view.setBigUint64(16, nbytes, true);
    view.setUint16(24, hangup ? EVENTRWFLAGS.FD_READWRITE_HANGUP : 0, true);
  }
  return bytes;
}

/**
 * fd_readdir's buffer: from entry `cookie` on, each a 24-byte dirent and its name, until
 * bufLen is full. The last entry may be cut short; wasi-libc then sees a full buffer and asks
 * again with a bigger one from that entry's cookie.
 */
function encodeDirents(entries: readonly { name: string; type: number; ino: bigint }[], cookie: bigint, bufLen: number): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  const first = cookie < BigInt(entries.length) ? Number(cookie) : entries.length;
  for (let i = first; i < entries.length && size < bufLen; i++) {
    const ent = entries[i]!;
    const name = Buffer.from(ent.name, 'utf8');
    const { bytes, view } = struct(SIZEOF.dirent + name.byteLength);
    view.setBigUint64(0, BigInt(i + 1), true);
    view.setBigUint64(8, ent.ino, true);
    view.setUint32(16, name.byteLength, true);
    view.setUint8(20, ent.type);
    bytes.set(name, SIZEOF.dirent);
    parts.push(bytes);
    size += bytes.byteLength;
  }
  return Buffer.concat(parts).subarray(0, bufLen);
}

// ---------------------------------------------------------------------------------------------
// The host's part of a guest snapshot (snapshotState / restoreState). Layout, version 1:
//
//   'H' 1  nextConnId
//   listeners: count, then each: its address (text, checked against this host's), closed (u8)
//   fds: count, then each: fd, kind (FD_KINDS), fdflags, then by kind:
//     stdin     position
//     dir       guest path, preopen (u8 0/1 and its text)
//     file      guest path, position (bigint), filetype (u8), access (u8: r, w, rw), then
//               where to reopen it: 0 and the path it now has in the tree (it may have been
//               renamed since it was opened), or 1 and its bytes (it was unlinked while open)
//     listener  index in the listen list
//     conn      connection id, shutdown flags (u8: 1 read, 2 write)
//   the guest directory: tree.ts's encodeTree
//
// Paths are lists of components, each a plain name (tree.ts's decodePath).

const HOST_MAGIC = 0x48; // 'H'
/** 2: a directory fd says where its directory is now (it is held open, so it moves with renames). */
const HOST_VERSION = 2;
const FD_KINDS = ['stdin', 'stdout', 'stderr', 'dir', 'file', 'listener', 'conn'] as const;
const OPEN_AT_PATH = 0;
const OPEN_UNLINKED = 1;

type FdImage = { readonly fd: number; readonly flags: number } & (
  | { readonly kind: 'stdin'; readonly pos: number }
  | { readonly kind: 'stdout' | 'stderr' }
  /** `at`: where to reopen it in the tree, or (null) an empty directory that no longer has a name. */
  | { readonly kind: 'dir'; readonly rel: string[]; readonly preopen: string | null; readonly at: string[] | null }
  | {
      readonly kind: 'file'; readonly rel: string[]; readonly pos: bigint; readonly filetype: number; readonly access: FileAccess;
      /** Reopen at this path of the tree, or (null) make an unlinked file with `data`. */
      readonly at: string[]; readonly data: Uint8Array | null;
    }
  | { readonly kind: 'listener'; readonly index: number }
  | { readonly kind: 'conn'; readonly id: number; readonly shutRd: boolean; readonly shutWr: boolean }
);

interface HostImage {
  readonly nextConnId: number;
  readonly listenersClosed: boolean[];
  readonly fds: FdImage[];
  readonly tree: TreeNode[];
}

/** An open file: where the restored side reopens it, found by its inode in the tree just read. */
function encodeOpenFile(w: ByteWriter, e: FileEntry, tree: Tree): void {
  encodePath(w, e.rel);
  w.bigint(e.pos).u8(e.filetype).u8(e.access);
  const now = tree.byInode.get(inodeKey(fs.fstatSync(e.hostFd, { bigint: true })));
  if (now !== undefined) {
    w.u8(OPEN_AT_PATH);
    encodePath(w, now);
    return;
  }
  if (e.filetype !== FILETYPE.REGULAR) throw new Error(`cannot snapshot the open file ${guestPathOf(e.rel)}: it is not a regular file`);
  w.u8(OPEN_UNLINKED).bytes(readOpenFile(e));
}

/** The bytes of a file that has no name any more, through its fd (or /proc for a write-only fd). */
function readOpenFile(e: FileEntry): Uint8Array {
  const fd = e.access === ACCESS_WRITE ? fs.openSync(`/proc/self/fd/${e.hostFd}`, 'r') : e.hostFd;
  try {
    const size = Number(fs.fstatSync(fd).size);
    const out = Buffer.alloc(size);
    let at = 0;
    while (at < size) {
      const n = fs.readSync(fd, out, at, size - at, at);
      if (n === 0) break;
      at += n;
    }
    return out.subarray(0, at);
  } finally {
    if (fd !== e.hostFd) closeQuietly(fd);
  }
}

/** An open file with no name, holding `data`: made in a temporary directory and unlinked. */
function openUnlinked(data: Uint8Array, access: FileAccess): number {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-unlinked-'));
  try {
    const p = path.join(dir, 'f');
    fs.writeFileSync(p, data, { mode: 0o600 });
    return fs.openSync(p, openFlagsOf(access));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** An open directory with no name (it was removed while the guest held it): empty, as it was. */
function openRemovedDirectory(): number {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-removed-'));
  try {
    return openDirectory(dir);
  } finally {
    fs.rmdirSync(dir);
  }
}

/** Decode and check a host snapshot against this host's listen addresses and stdin. */
function decodeHostImage(bytes: Uint8Array, addresses: readonly string[], stdinLength: number): HostImage {
  const r = new ByteReader(bytes, 'wasm host snapshot');
  if (r.u8() !== HOST_MAGIC) r.corrupt('not a wasm host snapshot (bad magic byte)');
  const version = r.u8();
  if (version !== HOST_VERSION) r.corrupt(`unknown wasm host snapshot version ${version}`);
  const nextConnId = r.varuint();
  if (nextConnId < 1) r.corrupt('connection ids start at 1');
  const nl = r.varuint();
  if (nl !== addresses.length) throw new Error(`the snapshot's guest listens on ${nl} addresses, this one on ${addresses.length}: the configs differ`);
  const listenersClosed: boolean[] = [];
  for (let i = 0; i < nl; i++) {
    const a = r.text();
    if (a !== addresses[i]) throw new Error(`the snapshot's guest listens on ${a}, this one on ${addresses[i]}: the configs differ`);
    listenersClosed.push(r.u8() !== 0);
  }
  const fds: FdImage[] = [];
  const n = r.varuint();
  for (let i = 0; i < n; i++) fds.push(decodeFd(r, nl, stdinLength));
  const tree = decodeTree(r);
  r.end();
  checkFdImages(r, fds, tree, nextConnId);
  return { nextConnId, listenersClosed, fds, tree };
}

function decodeFd(r: ByteReader, listeners: number, stdinLength: number): FdImage {
  const fd = r.varuint();
  if (fd > 0x7fff_ffff) r.corrupt(`fd ${fd} out of range`);
  const kind = FD_KINDS[r.u8()] ?? r.corrupt('unknown fd kind');
  const flags = r.varuint();
  if (flags > 0xffff) r.corrupt(`bad fd flags ${flags}`);
  switch (kind) {
    case 'stdin': {
      const pos = r.varuint();
      return pos <= stdinLength ? { fd, flags, kind, pos } : r.corrupt(`stdin position ${pos} past its ${stdinLength} bytes`);
    }
    case 'stdout':
    case 'stderr':
      return { fd, flags, kind };
    case 'dir': {
      const rel = decodePath(r);
      const preopen = r.u8() === 0 ? null : r.text();
      const where = r.u8();
      if (where === OPEN_AT_PATH) return { fd, flags, kind, rel, preopen, at: decodePath(r) };
      if (where === OPEN_UNLINKED) return { fd, flags, kind, rel, preopen, at: null };
      return r.corrupt(`bad open-directory source ${where}`);
    }
    case 'file':
      return decodeFileFd(r, fd, flags);
    case 'listener': {
      const index = r.varuint();
      return index < listeners ? { fd, flags, kind, index } : r.corrupt(`listener ${index} of ${listeners}`);
    }
    case 'conn': {
      const id = r.varuint();
      const shut = r.u8();
      if (shut > 3) r.corrupt(`bad shutdown flags ${shut}`);
      return { fd, flags, kind, id, shutRd: (shut & 1) !== 0, shutWr: (shut & 2) !== 0 };
    }
  }
}

function decodeFileFd(r: ByteReader, fd: number, flags: number): FdImage {
  const rel = decodePath(r);
  const pos = r.bigint();
  if (pos < 0n || pos >= 1n << 63n) r.corrupt(`file position ${pos} out of range`);
  const filetype = r.u8();
  const access = r.u8();
  if (access !== ACCESS_READ && access !== ACCESS_WRITE && access !== ACCESS_BOTH) r.corrupt(`bad file access ${access}`);
  const where = r.u8();
  if (where === OPEN_AT_PATH) return { fd, flags, kind: 'file', rel, pos, filetype, access, at: decodePath(r), data: null };
  if (where === OPEN_UNLINKED) return { fd, flags, kind: 'file', rel, pos, filetype, access, at: [], data: r.bytes() };
  return r.corrupt(`bad open-file source ${where}`);
}

/** No fd twice, no connection id twice or not yet given out, every file to reopen in the tree. */
function checkFdImages(r: ByteReader, fds: readonly FdImage[], tree: readonly TreeNode[], nextConnId: number): void {
  const files = new Set(tree.filter((t) => t.kind === 'file' || t.kind === 'link').map((t) => t.path.join('/')));
  const dirs = new Set(['', ...tree.filter((t) => t.kind === 'dir').map((t) => t.path.join('/'))]);
  const seenFd = new Set<number>();
  const seenConn = new Set<number>();
  for (const f of fds) {
    if (seenFd.has(f.fd)) r.corrupt(`fd ${f.fd} listed twice`);
    seenFd.add(f.fd);
    if (f.kind === 'conn') {
      if (seenConn.has(f.id) || f.id < 1 || f.id >= nextConnId) r.corrupt(`bad connection id ${f.id}`);
      seenConn.add(f.id);
    }
    if (f.kind === 'file' && f.data === null && !files.has(f.at.join('/'))) r.corrupt(`open file ${guestPathOf(f.at)} is not in the snapshot's directory`);
    if (f.kind === 'dir' && f.at !== null && !dirs.has(f.at.join('/'))) r.corrupt(`open directory ${guestPathOf(f.at)} is not in the snapshot's directory`);
  }
}

function describe(fd: number, e: FdEntry): Record<string, unknown> {
  switch (e.kind) {
    case 'stdin':
      return { fd, kind: e.kind, flags: e.flags, pos: e.pos };
    case 'stdout':
    case 'stderr':
      return { fd, kind: e.kind, flags: e.flags };
    case 'dir':
      return { fd, kind: e.kind, path: guestPathOf(e.rel), preopen: e.preopen, flags: e.flags };
    case 'file':
      return { fd, kind: e.kind, path: guestPathOf(e.rel), pos: e.pos.toString(), flags: e.flags };
    case 'listener':
      return { fd, kind: e.kind, listen: e.listener.address, flags: e.flags };
    case 'conn':
      return { fd, kind: e.kind };
  }
}

/** The host open(2) flags that reopen a file with the access it was opened with. */
function openFlagsOf(access: FileAccess): number {
  const c = fs.constants;
  return (access === ACCESS_BOTH ? c.O_RDWR : access === ACCESS_WRITE ? c.O_WRONLY : c.O_RDONLY) | c.O_NOFOLLOW;
}

/** close(2) on a connection: flush what was written, send FIN, then free the socket. */
function closeSocket(s: net.Socket): void {
  if (s.destroyed) return;
  if (!s.writableEnded) s.end();
  if (s.writableFinished) s.destroy();
  else s.once('finish', () => s.destroy());
}
