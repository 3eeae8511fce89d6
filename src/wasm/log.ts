// The record/replay log of a WebAssembly guest (DESIGN.md §3): what the primary's host writes
// for every host call the guest makes, and the backup's host reads back.
//
// Every host call has a class (WasiHost.classify):
//   config  derived from the service config alone (args, environ, preopens): never logged;
//   input   its result comes from outside (clock, random, a socket, stdin, file metadata): the
//           log carries the return value and every byte of guest memory the call wrote, and
//           the backup copies them in instead of making the call;
//   output  it acts on the outside (a socket write, stdout, closing a connection): the log
//           carries the return value, the memory the call wrote (the byte count) and a digest
//           of the bytes sent; the backup checks the digest and sends nothing;
//   local   it acts on this replica's own guest directory (open, seek, write a file…): both
//           replicas make the call; the log carries the return value and a digest of the
//           memory written so the backup can check its own call came out the same;
//   exit    proc_exit: the guest ends here on both replicas.
// Each record also carries the call's function and arguments, checked on replay: a backup
// whose guest makes a different call than the primary's stops with a divergence error naming
// the call index and the difference, never silently.
//
// An entry of the replication log is a batch of consecutive records: byte 'W', version 1,
// the call index of its first record, the record count, then the records.

import { ByteReader, ByteWriter, Hash64 } from '../guest/bytes.js';
import { LockstepError } from '../errors.js';

export type CallClass = 'config' | 'input' | 'output' | 'local' | 'exit';
export type LoggedClass = Exclude<CallClass, 'config'>;
export type CallArg = number | bigint;

export interface MemWrite {
  readonly ptr: number;
  readonly data: Uint8Array;
}

export interface CallRecord {
  /** The call's index among every logged call this guest made since it started (0-based). */
  readonly index: number;
  readonly fn: string;
  readonly cls: LoggedClass;
  readonly args: readonly CallArg[];
  readonly ret: number;
  /** input and output: the guest memory the call wrote, in order. Empty for the others. */
  readonly writes: readonly MemWrite[];
  /** output: digest of the bytes sent; local: digest of the memory written; else 0. */
  readonly digest: string;
}

/**
 * The WASI preview1 functions, in a fixed order: a record names its function by position, so
 * this list is part of the log format. Append only.
 */
export const CALL_NAMES: readonly string[] = [
  'args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'clock_res_get', 'clock_time_get',
  'fd_advise', 'fd_allocate', 'fd_close', 'fd_datasync', 'fd_fdstat_get', 'fd_fdstat_set_flags',
  'fd_fdstat_set_rights', 'fd_filestat_get', 'fd_filestat_set_size', 'fd_filestat_set_times', 'fd_pread',
  'fd_prestat_get', 'fd_prestat_dir_name', 'fd_pwrite', 'fd_read', 'fd_readdir', 'fd_renumber', 'fd_seek',
  'fd_sync', 'fd_tell', 'fd_write', 'path_create_directory', 'path_filestat_get', 'path_filestat_set_times',
  'path_link', 'path_open', 'path_readlink', 'path_remove_directory', 'path_rename', 'path_symlink',
  'path_unlink_file', 'poll_oneoff', 'proc_exit', 'proc_raise', 'sched_yield', 'random_get', 'sock_accept',
  'sock_recv', 'sock_send', 'sock_shutdown',
];
const CALL_INDEX = new Map(CALL_NAMES.map((n, i) => [n, i]));
const CLASSES: readonly LoggedClass[] = ['input', 'output', 'local', 'exit'];

const MAGIC = 0x57; // 'W'
const VERSION = 1;

/** Digest of a list of memory writes (ptr and bytes), or of output bytes. */
export function digestWrites(writes: readonly MemWrite[]): string {
  const h = new Hash64();
  for (const w of writes) h.u32(w.ptr).bytes(w.data);
  return hex(h);
}

export function digestBytes(chunks: readonly Uint8Array[]): string {
  const h = new Hash64();
  for (const c of chunks) h.bytes(c);
  return hex(h);
}

function hex(h: Hash64): string {
  return (h.a >>> 0).toString(16).padStart(8, '0') + (h.b >>> 0).toString(16).padStart(8, '0');
}

/** Packs records into entries. Reuse one per guest. */
export class RecordBatch {
  private readonly w = new ByteWriter(4096);
  private count = 0;
  private first = 0;

  get size(): number {
    return this.count;
  }

  /** Bytes written so far (to cap an entry's size). */
  get byteLength(): number {
    return this.w.length;
  }

  add(r: CallRecord): void {
    if (this.count === 0) this.first = r.index;
    else if (r.index !== this.first + this.count) throw new Error(`record ${r.index} out of order after ${this.first + this.count - 1}`);
    const fn = CALL_INDEX.get(r.fn);
    if (fn === undefined) throw new Error(`unknown host call ${r.fn}`);
    const w = this.w;
    w.u8(fn).u8(CLASSES.indexOf(r.cls)).u8(r.args.length);
    for (const a of r.args) {
      if (typeof a === 'bigint') w.u8(1).bigint(a);
      else w.u8(0).bigint(BigInt(a));
    }
    w.bigint(BigInt(r.ret));
    w.varuint(r.writes.length);
    for (const m of r.writes) w.varuint(m.ptr).bytes(m.data);
    w.latin1(r.digest);
    this.count++;
  }

  /** The entry payload for the records added since the last take, or null if none. */
  take(): Uint8Array | null {
    if (this.count === 0) return null;
    const body = this.w.finish();
    const head = new ByteWriter(16).u8(MAGIC).u8(VERSION).varuint(this.first).varuint(this.count).finish();
    const out = new Uint8Array(head.length + body.length);
    out.set(head, 0);
    out.set(body, head.length);
    this.w.reset();
    this.count = 0;
    return out;
  }
}

/** How many records an entry holds, from its header alone. Throws E_CORRUPT_ENTRY on garbage. */
export function entryRecordCount(payload: Uint8Array): number {
  const r = new ByteReader(payload, 'wasm log entry');
  if (r.u8() !== MAGIC) r.corrupt('not a wasm log entry (bad magic byte)');
  const version = r.u8();
  if (version !== VERSION) r.corrupt(`unknown wasm log version ${version}`);
  r.varuint();
  return r.varuint();
}

/** Decode one entry payload into its records. Throws E_CORRUPT_ENTRY on garbage. */
export function decodeEntry(payload: Uint8Array): CallRecord[] {
  const r = new ByteReader(payload, 'wasm log entry');
  if (r.u8() !== MAGIC) r.corrupt('not a wasm log entry (bad magic byte)');
  const version = r.u8();
  if (version !== VERSION) r.corrupt(`unknown wasm log version ${version}`);
  const first = r.varuint();
  const count = r.varuint();
  const out: CallRecord[] = [];
  for (let i = 0; i < count; i++) {
    const fn = CALL_NAMES[r.u8()] ?? r.corrupt('unknown host call number');
    const cls = CLASSES[r.u8()] ?? r.corrupt('unknown call class');
    const nargs = r.u8();
    const args: CallArg[] = [];
    for (let k = 0; k < nargs; k++) {
      const tag = r.u8();
      const v = r.bigint();
      if (tag === 1) args.push(v);
      else if (tag === 0 && v >= -0x80000000n && v <= 0xffffffffn) args.push(Number(v));
      else r.corrupt('bad argument');
    }
    const ret = Number(r.bigint());
    const writes: MemWrite[] = [];
    const n = r.varuint();
    for (let k = 0; k < n; k++) writes.push({ ptr: r.varuint(), data: r.bytes().slice() });
    const digest = r.latin1();
    out.push({ index: first + i, fn, cls, args, ret, writes, digest });
  }
  r.end();
  return out;
}

/** A one-line description of a call, for divergence errors. */
export function describeCall(fn: string, args: readonly CallArg[]): string {
  return `${fn}(${args.map(String).join(', ')})`;
}

export function divergence(message: string): LockstepError {
  return new LockstepError('E_WASM_DIVERGENCE', message);
}
