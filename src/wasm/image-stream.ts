// A guest snapshot in pieces (issue 9 item 4): the same state as image.ts's whole image, taken
// at one moment but encoded, hashed, sent and restored a piece at a time, so neither the
// primary nor the recruit holds its event loop for a whole guest memory.
//
// At the moment the stream begins (the guest is between host calls), the primary takes the
// small parts (globals, unwound stack, counters, queued records) and the host state (fd table
// and guest directory, WasiHost.snapshotState), and holds the guest suspended while its memory
// is copied a slice per event-loop turn (GuestRuntime.snapshotStream: one copy into fresh
// memory costs its page faults, ~1 s at 256 MiB here). Pieces are made on demand from the
// memory as of that moment (the held guest's live memory, then the copy): the zero-chunk scan
// and the sha256 go a piece at a time. The recruit parses each piece as it comes, copies memory
// runs straight into place (the new instance's memory) and hashes as it goes; at the end only
// the small parts are applied.
//
// Layout, version 2 of image.ts's 'G' (version 1 is the whole image): a sequence of frames,
// each a kind byte, a body length (varuint) and the body, in this order:
//
//   'h' once, the header: 'G' 2, the module's sha256 (latin1 hex), phase (u8), calls, output
//       count, output hash state (u32, u32, varuint), phase 2: exit code; phase 1, 2: memory
//       size (bytes, whole pages) and the globals (image.ts's encoding); phase 1: unwind base and
//       unwound stack (bytes); queued records (bytes, one log entry payload or empty); the host
//       state's length (varuint)
//   'm' any number: a run of consecutive 4 KiB memory chunks that are not all zero: the first
//       chunk's number (varuint), then the chunks' bytes (the rest of the body, whole chunks);
//       runs increase and do not overlap; a run may be empty (a piece that only scanned zeros);
//       chunks in no run are zero
//   't' any number: the next bytes of the host state, until its length is reached
//   'e' once, last: the sha256 of every frame before it, as sent (32 raw bytes)
//
// Every frame is checked as it arrives (order, bounds, sizes against the module restored into),
// and the digest at the end: anything damaged or missing throws E_CORRUPT_ENTRY, and the caller
// drops what it was building (the guest is only started after `finish`).

import { createHash, type Hash } from 'node:crypto';
import { LockstepError } from '../errors.js';
import { ByteReader, ByteWriter } from '../guest/bytes.js';
import { decodeEntry, type CallRecord } from './log.js';
import { CHUNK, decodeGlobals, decodeMemorySize, decodePrelude, encodeGlobals, encodePrelude, type GlobalValue, type GuestImage } from './image.js';
import type { LoadedModule } from './module.js';

const VERSION = 2;
const F_HEADER = 0x68; // 'h'
const F_MEMORY = 0x6d; // 'm'
const F_HOST = 0x74; // 't'
const F_END = 0x65; // 'e'
const DIGEST_BYTES = 32;
/** The largest frame body a reader accepts (the header holds the queued records; a memory run or host piece is one piece). */
const MAX_FRAME = 256 * 1024 * 1024;
/** Zero chunks one `next` may scan past before it returns what it has (an empty run if nothing). */
const SCAN_CHUNKS_PER_PIECE = 4096;

const ZERO_CHUNK = Buffer.alloc(CHUNK);

/** Everything of a GuestImage but the memory, which the stream reads from `memory`. */
export type StreamImage = Omit<GuestImage, 'memory'> & {
  /** phase suspended/exited: a copy of linear memory taken when the stream began (not read from the live guest). */
  readonly memory: Uint8Array | null;
};

/** The header as decoded by the reader (what the runtime applies at finish). */
export interface StreamHeader {
  readonly sha256: string;
  readonly phase: GuestImage['phase'];
  readonly calls: number;
  readonly outputCount: number;
  readonly outputHash: readonly [number, number, number];
  readonly exitCode: number;
  readonly memorySize: number;
  readonly globals: readonly GlobalValue[];
  readonly unwindBase: number;
  readonly unwoundStack: Uint8Array | null;
  readonly queuedRecords: readonly CallRecord[];
  readonly hostBytes: number;
}

/** Produces a StreamImage's frames a piece at a time (SnapshotStream.next). */
export class ImageStreamWriter {
  private readonly hash: Hash = createHash('sha256');
  private stage: 'header' | 'memory' | 'host' | 'end' | 'done' = 'header';
  /** memory: the next chunk to look at; host: the next byte to send. */
  private at = 0;
  private readonly chunks: number;
  /** Pieces and bytes produced, for the log. */
  readonly stats = { pieces: 0, bytes: 0, memoryChunks: 0 };

  /** How the memory was copied (set by the runtime when its copy is done). */
  copyStats: Record<string, number> | null = null;

  /**
   * `img.memory` is the memory as of the snapshot (its size, and the bytes unless `source` is
   * given); `source` gives where to read it now (the live memory while the guest is held, the
   * copy after); `onEnd` runs once when the stream ends or is closed.
   */
  constructor(
    private img: StreamImage,
    private readonly source: (() => Uint8Array) | null = null,
    private readonly onEnd: (() => void) | null = null,
  ) {
    this.chunks = img.memory === null ? 0 : img.memory.byteLength / CHUNK;
    this.hasMemory = img.memory !== null;
  }

  private readonly hasMemory: boolean;

  /** The memory as of the snapshot, as a Buffer (from `source` if given). */
  private get mem(): Buffer {
    const m = this.source !== null ? this.source() : this.img.memory!;
    return Buffer.from(m.buffer, m.byteOffset, m.byteLength);
  }

  /** The first memory chunk no piece has read yet. */
  get memoryCursor(): number {
    return this.stage === 'header' ? 0 : this.stage === 'memory' ? this.at : this.chunks;
  }

  /** Every piece that reads memory was made. */
  get memoryDone(): boolean {
    return this.stage !== 'header' && this.stage !== 'memory';
  }

  /** Ended or closed. */
  get closed(): boolean {
    return this.stage === 'done';
  }

  /** The next piece (one or more whole frames, about `maxBytes`), or null after the last. */
  next(maxBytes: number): Uint8Array | null {
    if (this.stage === 'done') return null;
    const budget = Math.max(CHUNK + 16, maxBytes);
    const w = new ByteWriter(Math.min(budget, 1 << 20) + 64);
    if (this.stage === 'header') {
      this.frame(w, F_HEADER, this.header());
      this.stage = this.hasMemory ? 'memory' : 'host';
    }
    if (this.stage === 'memory' && w.length < budget) this.memoryRuns(w, budget);
    while (this.stage === 'host' && w.length < budget) {
      const host = this.img.host;
      if (this.at >= host.length) {
        this.stage = 'end';
        break;
      }
      const n = Math.min(host.length - this.at, Math.max(1, budget - w.length - 8));
      this.frame(w, F_HOST, host.subarray(this.at, this.at + n));
      this.at += n;
    }
    if (this.stage === 'end' && w.length < budget) {
      const digest = this.hash.digest();
      w.u8(F_END).varuint(DIGEST_BYTES).raw(digest);
      this.stage = 'done';
      this.drop();
    }
    const out = w.finish();
    this.stats.pieces++;
    this.stats.bytes += out.length;
    return out;
  }

  /** Let go of the memory copy (the stream ended or was closed). */
  drop(): void {
    this.stage = 'done';
    this.img = { ...this.img, memory: null, host: new Uint8Array(0) };
    this.onEnd?.();
  }

  private header(): Uint8Array {
    const img = this.img;
    const w = new ByteWriter(4096 + img.queued.length + (img.unwoundStack?.length ?? 0));
    encodePrelude(w, img, VERSION);
    if (img.phase !== 'new') {
      w.varuint(img.memory!.byteLength);
      encodeGlobals(w, img.globals);
    }
    if (img.phase === 'suspended') w.varuint(img.unwindBase).bytes(img.unwoundStack!);
    w.bytes(img.queued).varuint(img.host.length);
    return w.finish();
  }

  /** Runs of non-zero chunks from `at`, into `w` until the budget or the scan limit. */
  private memoryRuns(w: ByteWriter, budget: number): void {
    const mem = this.mem;
    let scanned = 0;
    let wrote = false;
    while (this.at < this.chunks && w.length < budget) {
      // Skip zero chunks (memcmp with a zero chunk), a bounded number per piece.
      while (this.at < this.chunks && scanned < SCAN_CHUNKS_PER_PIECE && isZero(mem, this.at)) {
        this.at++;
        scanned++;
      }
      if (this.at >= this.chunks) break;
      if (scanned >= SCAN_CHUNKS_PER_PIECE) {
        // Nothing but zeros so far: an empty run keeps the piece a frame (and says where we are).
        if (!wrote) this.memoryFrame(w, this.at, 0);
        return;
      }
      // A run of non-zero chunks, as long as the piece allows.
      const first = this.at;
      const room = Math.max(1, Math.floor((budget - w.length - 16) / CHUNK));
      let n = 0;
      while (this.at < this.chunks && n < room && !isZero(mem, this.at)) {
        this.at++;
        n++;
      }
      this.memoryFrame(w, first, n);
      wrote = true;
      scanned += n;
    }
    if (this.at >= this.chunks) {
      this.stage = 'host';
      this.at = 0;
    }
  }

  private memoryFrame(w: ByteWriter, first: number, n: number): void {
    const head = new ByteWriter(8).varuint(first).finish();
    this.frame(w, F_MEMORY, head, this.mem.subarray(first * CHUNK, (first + n) * CHUNK));
    this.stats.memoryChunks += n;
  }

  /** One frame into `w`, hashed as it is written: its body is `parts` one after the other. */
  private frame(w: ByteWriter, kind: number, ...parts: Uint8Array[]): void {
    const len = parts.reduce((n, p) => n + p.length, 0);
    const head = new ByteWriter(8).u8(kind).varuint(len).finish();
    this.hash.update(head);
    w.raw(head);
    for (const p of parts) {
      this.hash.update(p);
      w.raw(p);
    }
  }
}

function isZero(mem: Buffer, chunk: number): boolean {
  return mem.compare(ZERO_CHUNK, 0, CHUNK, chunk * CHUNK, (chunk + 1) * CHUNK) === 0;
}

/** Where the reader puts memory: the target is asked for once the header says the size. */
export interface ImageStreamTarget {
  /** The header is in and checked: give the bytes memory runs are copied into (`memorySize` long, zero where no run lands). */
  begin(header: StreamHeader): Uint8Array | null;
}

/** Takes a stream's pieces in order (RestoreStream.add), checking and hashing as it goes. */
export class ImageStreamReader {
  private readonly hash: Hash = createHash('sha256');
  /** Bytes of an incomplete frame carried over from the last piece. */
  private carry: Uint8Array = new Uint8Array(0);
  /** Pieces after `carry` not joined yet, the bytes held with `carry`, and how many the frame needs (0: not known yet). */
  private carryParts: Uint8Array[] = [];
  private carryBytes = 0;
  private carryNeed = 0;
  private header: StreamHeader | null = null;
  private memory: Uint8Array | null = null;
  /** The chunk the next memory run may start at. */
  private nextChunk = 0;
  private host: Uint8Array | null = null;
  private hostAt = 0;
  private ended = false;
  readonly stats = { pieces: 0, bytes: 0, memoryChunks: 0 };

  constructor(
    private readonly loaded: LoadedModule,
    private readonly unwindBytes: number,
    private readonly target: ImageStreamTarget,
  ) {}

  add(piece: Uint8Array): void {
    this.stats.pieces++;
    this.stats.bytes += piece.length;
    if (this.carry.length > 0) {
      // A frame spanning pieces: gather them without joining until the frame is complete, so a
      // big (or a damaged, huge) length costs one copy of the bytes, not one per piece.
      this.carryParts.push(piece.slice());
      this.carryBytes += piece.length;
      if (this.carryBytes < this.carryNeed) return;
      piece = Buffer.concat([this.carry, ...this.carryParts]);
      this.carryParts = [];
    }
    let at = 0;
    for (;;) {
      const f = frameAt(piece, at);
      if (f.end > piece.length) {
        // What is left is the start of a frame: keep a copy (the piece's bytes may be reused).
        this.carry = piece.slice(at);
        this.carryBytes = this.carry.length;
        this.carryNeed = f.end - at;
        return;
      }
      this.frame(piece, at, f.kind, f.bodyAt, f.end);
      at = f.end;
    }
  }

  /** Every piece is in: the header and host state, checked against the digest. */
  finish(): { header: StreamHeader; host: Uint8Array } {
    if (!this.ended || this.carry.length > 0 || this.header === null) corrupt(this.ended ? `${this.carry.length} bytes after its end` : 'it ended before its last frame (truncated)');
    return { header: this.header, host: this.host! };
  }

  private frame(buf: Uint8Array, start: number, kind: number, bodyAt: number, end: number): void {
    if (this.ended) corrupt('a frame after its end');
    const body = buf.subarray(bodyAt, end);
    if (kind === F_END) {
      if (this.header === null || this.hostAt !== this.host!.length) corrupt('its end came before all of its memory and host state');
      if (body.length !== DIGEST_BYTES || !this.hash.digest().equals(body)) corrupt('its checksum does not match (damaged or truncated)');
      this.ended = true;
      return;
    }
    this.hash.update(buf.subarray(start, end));
    if (kind === F_HEADER) {
      if (this.header !== null) corrupt('a second header');
      this.header = this.decodeHeader(body);
      this.host = new Uint8Array(this.header.hostBytes);
      this.memory = this.target.begin(this.header);
      if (this.header.memorySize > 0 && (this.memory === null || this.memory.byteLength !== this.header.memorySize)) {
        throw new Error(`lockstep invariant broken: the restore target gave ${this.memory?.byteLength ?? 'no'} bytes of memory for ${this.header.memorySize}`);
      }
      return;
    }
    if (this.header === null) corrupt(`frame ${String.fromCharCode(kind)} before the header`);
    if (kind === F_MEMORY) return this.memoryRun(body);
    if (kind === F_HOST) {
      if (this.hostAt + body.length > this.host!.length) corrupt(`host state beyond the ${this.host!.length} bytes its header says`);
      this.host!.set(body, this.hostAt);
      this.hostAt += body.length;
      return;
    }
    corrupt(`unknown frame kind ${kind}`);
  }

  private memoryRun(body: Uint8Array): void {
    const mem = this.memory;
    if (mem === null) corrupt('memory in a snapshot of a guest that has none');
    if (this.hostAt > 0) corrupt('memory after host state');
    const r = new ByteReader(body, 'wasm guest snapshot memory run');
    const first = r.varuint();
    const bytes = r.remaining;
    if (bytes % CHUNK !== 0) corrupt(`a memory run of ${bytes} bytes (not whole 4 KiB chunks)`);
    const n = bytes / CHUNK;
    if (first < this.nextChunk || (first + n) * CHUNK > mem.byteLength) corrupt(`memory chunks ${first}..${first + n} out of order or out of range`);
    mem.set(body.subarray(r.offset), first * CHUNK);
    this.nextChunk = first + n;
    this.stats.memoryChunks += n;
  }

  private decodeHeader(body: Uint8Array): StreamHeader {
    const loaded = this.loaded;
    const r = new ByteReader(body, 'wasm guest snapshot header');
    const { sha256, phase, calls, outputCount, outputHash, exitCode } = decodePrelude(r, loaded, VERSION);
    const memorySize = phase === 'new' ? 0 : decodeMemorySize(r, loaded);
    const globals = phase === 'new' ? [] : decodeGlobals(r, loaded);
    const unwindBase = phase === 'suspended' ? r.varuint() : 0;
    const unwoundStack = phase === 'suspended' ? r.bytes().slice() : null;
    if (unwoundStack !== null && (unwoundStack.length !== this.unwindBytes || unwindBase + this.unwindBytes > memorySize)) {
      r.corrupt(`an unwound stack of ${unwoundStack.length} bytes at ${unwindBase}`);
    }
    const queued = r.bytes();
    const hostBytes = r.varuint();
    r.end();
    if (hostBytes > MAX_FRAME * 4) r.corrupt(`a host state of ${hostBytes} bytes`);
    const queuedRecords = queued.length === 0 ? [] : decodeEntry(queued);
    if (queuedRecords.length > 0 && queuedRecords[0]!.index !== calls) r.corrupt(`queued records start at call ${queuedRecords[0]!.index}, not ${calls}`);
    return { sha256, phase, calls, outputCount, outputHash, exitCode, memorySize, globals, unwindBase, unwoundStack, queuedRecords, hostBytes };
  }
}

/**
 * The frame starting at `at`; checks its kind and size. `end` beyond `buf` means it is not all
 * in yet: then `end` is where it ends if its length is known, else just past `buf`.
 */
function frameAt(buf: Uint8Array, at: number): { kind: number; bodyAt: number; end: number } {
  const unknown = { kind: 0, bodyAt: 0, end: buf.length + 1 };
  if (at >= buf.length) return { ...unknown, end: at + 1 };
  const kind = buf[at]!;
  if (kind !== F_HEADER && kind !== F_MEMORY && kind !== F_HOST && kind !== F_END) corrupt(`unknown frame kind ${kind}`);
  let len = 0;
  let mul = 1;
  let p = at + 1;
  for (let i = 0; ; i++) {
    if (p >= buf.length) return unknown;
    if (i >= 5) corrupt('a frame length too long');
    const b = buf[p++]!;
    len += (b & 0x7f) * mul;
    if (b < 0x80) break;
    mul *= 0x80;
  }
  if (len > MAX_FRAME) corrupt(`a frame of ${len} bytes`);
  return { kind, bodyAt: p, end: p + len };
}

function corrupt(why: string): never {
  throw new LockstepError('E_CORRUPT_ENTRY', `corrupt wasm guest snapshot stream: ${why}`);
}
