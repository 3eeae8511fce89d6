// The byte format of a guest snapshot (GuestRuntime.snapshot / GuestRuntime.restore): the
// whole state of a WebAssembly/WASI guest between two host calls, from which a new backup
// carries on instead of replaying the log since the guest started.
//
// A guest unwound by asyncify has no live wasm frame, so its state is: linear memory, every
// mutable global (module.ts exports them all, asyncify's own included), the unwound stack the
// runtime keeps in a JS copy, the runtime's counters (the next call index, the output digest),
// the log records it received and has not replayed yet, and the host state (fd table and guest
// directory, WasiHost.snapshotState). Layout, version 1:
//
//   'G' 1
//   sha256 of the original module (latin1 hex): a snapshot only restores into the same guest
//   phase (u8): 0 not started, 1 suspended in a host call, 2 exited
//   calls (varuint): logged calls made so far = the index of the next record
//   output count (varuint), output hash state (u32, u32, varuint)
//   phase 2: exit code (varuint)
//   phase 1, 2: memory size in bytes (varuint, whole pages), then the count of its 4 KiB chunks
//            that are not all zero and each as chunk number (varuint, increasing) and its bytes;
//            then the globals: count, then each a tag (0 number as f64 bits, 1 i64 as
//            bigint, 2 null reference) and its value
//   phase 1: the unwind base (varuint) and the unwound stack (bytes)
//   queued records (bytes): one log entry payload (log.ts) with the records received and not
//            replayed yet, or empty
//   host state (bytes): WasiHost.snapshotState
//   sha256 of all the above (32 raw bytes): a snapshot damaged anywhere is refused
//
// Decoding checks every field against the module it is restored into and throws
// E_CORRUPT_ENTRY, never a crash and never a half-restored guest.
//
// Version 2 is the same state streamed in pieces (image-stream.ts, issue 9 item 4): what a
// recruit gets by default. This whole form is kept for the service config `"snapshot":
// "whole"` and for tools that want one buffer.

import { createHash } from 'node:crypto';
import { ByteReader, ByteWriter } from '../guest/bytes.js';
import { LockstepError } from '../errors.js';
import { decodeEntry, type CallRecord } from './log.js';
import type { LoadedModule } from './module.js';

export type GlobalValue = number | bigint | null;

export interface GuestImage {
  readonly sha256: string;
  readonly phase: 'new' | 'suspended' | 'exited';
  readonly calls: number;
  readonly outputCount: number;
  readonly outputHash: readonly [number, number, number];
  readonly exitCode: number;
  /** phase suspended/exited: linear memory, whole. */
  readonly memory: Uint8Array | null;
  readonly globals: readonly GlobalValue[];
  readonly unwindBase: number;
  readonly unwoundStack: Uint8Array | null;
  /** The queued records as one log entry payload (empty when none). */
  readonly queued: Uint8Array;
  readonly host: Uint8Array;
}

/** A decoded image, with the queued records decoded too. */
export interface DecodedImage extends GuestImage {
  readonly queuedRecords: readonly CallRecord[];
}

const MAGIC = 0x47; // 'G'
const VERSION = 1;
const PHASES = ['new', 'suspended', 'exited'] as const;
const PAGE = 65536;
export const CHUNK = 4096;
const DIGEST_BYTES = 32;

export function encodeImage(img: GuestImage): Uint8Array {
  const chunks = img.memory === null ? [] : nonZeroChunks(img.memory);
  const w = new ByteWriter(chunks.length * (CHUNK + 4) + img.host.length + img.queued.length + (img.unwoundStack?.length ?? 0) + 4096);
  encodePrelude(w, img, VERSION);
  if (img.phase !== 'new') {
    const mem = img.memory!;
    w.varuint(mem.byteLength).varuint(chunks.length);
    for (const c of chunks) w.varuint(c).bytes(mem.subarray(c * CHUNK, (c + 1) * CHUNK));
    encodeGlobals(w, img.globals);
  }
  if (img.phase === 'suspended') w.varuint(img.unwindBase).bytes(img.unwoundStack!);
  w.bytes(img.queued).bytes(img.host);
  const body = w.finish();
  const out = new Uint8Array(body.length + DIGEST_BYTES);
  out.set(body, 0);
  out.set(createHash('sha256').update(body).digest(), body.length);
  return out;
}

type Prelude = Pick<GuestImage, 'sha256' | 'phase' | 'calls' | 'outputCount' | 'outputHash' | 'exitCode'>;

/** What every version starts with: magic, version, module, phase, counters, exit code. */
export function encodePrelude(w: ByteWriter, img: Prelude, version: number): void {
  w.u8(MAGIC).u8(version).latin1(img.sha256).u8(PHASES.indexOf(img.phase)).varuint(img.calls);
  w.varuint(img.outputCount).u32(img.outputHash[0]).u32(img.outputHash[1]).varuint(img.outputHash[2]);
  if (img.phase === 'exited') w.varuint(img.exitCode);
}

/** encodePrelude's fields, checked against the module restored into and the version expected. */
export function decodePrelude(r: ByteReader, loaded: LoadedModule, expectedVersion: number): Prelude {
  if (r.u8() !== MAGIC) r.corrupt('not a wasm guest snapshot (bad magic byte)');
  const version = r.u8();
  if (version !== expectedVersion) r.corrupt(`unknown wasm guest snapshot version ${version} (expected ${expectedVersion} here)`);
  const sha256 = r.latin1();
  if (sha256 !== loaded.sha256) r.corrupt(`it is a snapshot of module ${sha256.slice(0, 12)}…, not of this guest's ${loaded.sha256.slice(0, 12)}…`);
  const phase = PHASES[r.u8()] ?? r.corrupt('unknown guest phase');
  const calls = r.varuint();
  const outputCount = r.varuint();
  const outputHash: [number, number, number] = [r.u32(), r.u32(), r.varuint()];
  const exitCode = phase === 'exited' ? r.varuint() : 0;
  return { sha256, phase, calls, outputCount, outputHash, exitCode };
}

/** The numbers of the memory's 4 KiB chunks that hold anything but zeros. */
function nonZeroChunks(mem: Uint8Array): number[] {
  const words = new Uint32Array(mem.buffer, mem.byteOffset, mem.byteLength >>> 2);
  const per = CHUNK / 4;
  const out: number[] = [];
  for (let c = 0; c * per < words.length; c++) {
    for (let i = c * per, end = i + per; i < end; i++) {
      if (words[i] !== 0) {
        out.push(c);
        break;
      }
    }
  }
  return out;
}

export function encodeGlobals(w: ByteWriter, globals: readonly GlobalValue[]): void {
  w.varuint(globals.length);
  for (const g of globals) {
    if (typeof g === 'bigint') w.u8(1).bigint(g);
    else if (g === null) w.u8(2);
    else w.u8(0).f64(g);
  }
}

/**
 * Decode a snapshot for `loaded`, with `unwindBytes` the runtime's unwound-stack size.
 * Throws E_CORRUPT_ENTRY on anything damaged or not fitting this module.
 */
export function decodeImage(bytes: Uint8Array, loaded: LoadedModule, unwindBytes: number): DecodedImage {
  checkDigest(bytes);
  const r = new ByteReader(bytes.subarray(0, bytes.length - DIGEST_BYTES), 'wasm guest snapshot');
  const { sha256, phase, calls, outputCount, outputHash, exitCode } = decodePrelude(r, loaded, VERSION);
  const memory = phase === 'new' ? null : decodeMemory(r, loaded);
  const globals = phase === 'new' ? [] : decodeGlobals(r, loaded);
  const unwindBase = phase === 'suspended' ? r.varuint() : 0;
  const unwoundStack = phase === 'suspended' ? r.bytes() : null;
  if (unwoundStack !== null && (unwoundStack.length !== unwindBytes || unwindBase + unwindBytes > memory!.byteLength)) {
    r.corrupt(`an unwound stack of ${unwoundStack.length} bytes at ${unwindBase}`);
  }
  const queued = r.bytes();
  const host = r.bytes();
  r.end();
  const queuedRecords = queued.length === 0 ? [] : decodeEntry(queued);
  if (queuedRecords.length > 0 && queuedRecords[0]!.index !== calls) r.corrupt(`queued records start at call ${queuedRecords[0]!.index}, not ${calls}`);
  return { sha256, phase, calls, outputCount, outputHash, exitCode, memory, globals, unwindBase, unwoundStack, queued, host, queuedRecords };
}

function checkDigest(bytes: Uint8Array): void {
  if (bytes.length < DIGEST_BYTES + 2) throw new LockstepError('E_CORRUPT_ENTRY', `corrupt wasm guest snapshot: only ${bytes.length} bytes`);
  const body = bytes.subarray(0, bytes.length - DIGEST_BYTES);
  const want = bytes.subarray(bytes.length - DIGEST_BYTES);
  const got = createHash('sha256').update(body).digest();
  if (!got.equals(want)) throw new LockstepError('E_CORRUPT_ENTRY', 'corrupt wasm guest snapshot: its checksum does not match (damaged or truncated)');
}

function decodeMemory(r: ByteReader, loaded: LoadedModule): Uint8Array {
  const size = decodeMemorySize(r, loaded);
  const mem = new Uint8Array(size);
  const count = r.varuint();
  let prev = -1;
  for (let i = 0; i < count; i++) {
    const c = r.varuint();
    if (c <= prev || (c + 1) * CHUNK > size) r.corrupt(`memory chunk ${c} out of order or out of range`);
    const data = r.bytes();
    if (data.length !== CHUNK) r.corrupt(`a memory chunk of ${data.length} bytes`);
    mem.set(data, c * CHUNK);
    prev = c;
  }
  return mem;
}

/** A memory size (bytes, whole pages) that fits `loaded`'s limits. */
export function decodeMemorySize(r: ByteReader, loaded: LoadedModule): number {
  const size = r.varuint();
  const pages = size / PAGE;
  if (!Number.isInteger(pages) || pages < loaded.memory.initialPages || pages > loaded.memory.maximumPages) {
    r.corrupt(`a memory of ${size} bytes for a guest of ${loaded.memory.initialPages}..${loaded.memory.maximumPages} pages`);
  }
  return size;
}

export function decodeGlobals(r: ByteReader, loaded: LoadedModule): GlobalValue[] {
  const n = r.varuint();
  if (n !== loaded.globals.length) r.corrupt(`${n} globals for a guest with ${loaded.globals.length}`);
  const out: GlobalValue[] = [];
  for (let i = 0; i < n; i++) {
    const tag = r.u8();
    if (tag === 0) out.push(r.f64());
    else if (tag === 1) out.push(r.bigint());
    else if (tag === 2) out.push(null);
    else r.corrupt(`unknown global tag ${tag}`);
  }
  return out;
}
