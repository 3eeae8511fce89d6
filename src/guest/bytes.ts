// Byte encoding for log entries, snapshots and codecs, plus a small 64-bit hash for digests.
//
// Everything under src/guest must be pure and deterministic. This file runs on any JS engine
// (Uint8Array/DataView), and where Node's Buffer exists it moves long byte strings with Buffer's
// native latin1 copies instead of a loop per byte: a 64 MiB value once took seconds here,
// longer than the failure timeout (issue 14 item 4). Both paths give the same bytes. Integers are little-endian;
// lengths and counts are unsigned LEB128 varints. Strings come in two flavours:
//   latin1  a byte string (Redis keys/values): one char (code 0..255) = one byte.
//   text    any JS string: each UTF-16 code unit as a varint (ASCII = 1 byte, lossless).
// The reader never reads out of bounds: truncation or garbage throws
// LockstepError('E_CORRUPT_ENTRY').

import { LockstepError } from '../errors.js';

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const CHUNK = 8192; // String.fromCharCode.apply argument limit, kept well below the stack cap
/** From this length on, a latin1 string is copied natively (when Buffer exists). */
const NATIVE_CHARS = 512;
/** A writer whose buffer grew past this hands it over on take() instead of copying it. */
const TAKE_BYTES = 64 * 1024;

interface NativeBuffer extends Uint8Array {
  latin1Write(s: string, offset: number, length: number): number;
  latin1Slice(start: number, end: number): string;
}
interface NativeBufferClass {
  from(ab: ArrayBufferLike, byteOffset: number, length: number): NativeBuffer;
}
const NodeBuffer = (globalThis as unknown as { Buffer?: NativeBufferClass }).Buffer;

/** A Buffer over the same memory as `b` (no copy), where Buffer exists. */
function asNative(b: Uint8Array): NativeBuffer | null {
  return NodeBuffer === undefined ? null : NodeBuffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** True when some char of `s` is above 0xff (V8 answers at once for one-byte strings). */
function hasWideChar(s: string): boolean {
  return /[^\x00-\xff]/.test(s);
}

/** Bytes of `v` as an unsigned LEB128 varint. */
export function varuintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 0x80);
    n++;
  }
  return n;
}

/** Copy the latin1 string `s` into `buf` at `pos` (the room is there); chars above 0xff throw. */
export function writeLatin1(buf: Uint8Array, pos: number, s: string): void {
  const n = s.length;
  if (n >= NATIVE_CHARS && NodeBuffer !== undefined) {
    if (hasWideChar(s)) throw new RangeError('not a latin1 string');
    const written = asNative(buf)!.latin1Write(s, pos, n);
    if (written !== n) throw new RangeError(`latin1 write of ${n} chars wrote ${written}`);
    return;
  }
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new RangeError(`not a latin1 string (char ${c} at ${i})`);
    buf[pos + i] = c;
  }
}

/** The bytes buf[start, end) as a latin1 string (a copy). */
export function readLatin1(buf: Uint8Array, start: number, end: number): string {
  const n = end - start;
  if (n <= CHUNK) return String.fromCharCode.apply(null, buf.subarray(start, end) as unknown as number[]);
  if (NodeBuffer !== undefined) return asNative(buf)!.latin1Slice(start, end);
  let s = '';
  for (let i = start; i < end; i += CHUNK) {
    s += String.fromCharCode.apply(null, buf.subarray(i, Math.min(i + CHUNK, end)) as unknown as number[]);
  }
  return s;
}

/** Copy src[from, from + n) to dst at `to`: a loop for short runs (a native copy's call costs more). */
export function copyBytes(src: Uint8Array, from: number, n: number, dst: Uint8Array, to: number): void {
  if (n > 64) {
    dst.set(src.subarray(from, from + n), to);
    return;
  }
  for (let i = 0; i < n; i++) dst[to + i] = src[from + i]!;
}

export class ByteWriter {
  private buf: Uint8Array;
  private dv: DataView | null = null; // made on first u32/f64: DataViews are costly to create
  private pos = 0;

  /**
   * A writer is cheap to reuse: hot paths keep one and call reset() per message, since
   * allocating a fresh buffer per entry dominates the cost of small encodes.
   */
  constructor(initialCapacity = 256) {
    this.buf = new Uint8Array(Math.max(16, initialCapacity));
  }

  private get view(): DataView {
    return (this.dv ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength));
  }

  /** Bytes written so far. */
  get length(): number {
    return this.pos;
  }

  private reserve(n: number): void {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    // Doubling, but never to twice a large need: one 64 MiB value must not reserve 128 MiB.
    const cap = Math.max(need, this.buf.length * 2);
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = null;
  }

  u8(v: number): this {
    this.reserve(1);
    this.buf[this.pos++] = v & 0xff;
    return this;
  }

  u32(v: number): this {
    this.reserve(4);
    this.view.setUint32(this.pos, v >>> 0, true);
    this.pos += 4;
    return this;
  }

  f64(v: number): this {
    this.reserve(8);
    this.view.setFloat64(this.pos, v, true);
    this.pos += 8;
    return this;
  }

  /** Unsigned LEB128 of a safe non-negative integer. */
  varuint(v: number): this {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`varuint out of range: ${v}`);
    this.reserve(8);
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.pos++] = v;
    return this;
  }

  /** Any bigint, zigzag then LEB128 (small values take 1-3 bytes). */
  bigint(v: bigint): this {
    let z = v >= 0n ? v << 1n : ((-v) << 1n) - 1n;
    if (z <= BigInt(MAX_SAFE)) return this.varuint(Number(z));
    while (z >= 0x80n) {
      this.u8(Number(z & 0x7fn) | 0x80);
      z >>= 7n;
    }
    return this.u8(Number(z));
  }

  /** A byte string: varuint length, then one byte per char. Chars above 0xff are a bug. */
  latin1(s: string): this {
    const n = s.length;
    this.varuint(n);
    this.reserve(n);
    writeLatin1(this.buf, this.pos, s);
    this.pos += n;
    return this;
  }

  /** Any JS string: varuint count of UTF-16 code units, then each unit as a varuint. */
  text(s: string): this {
    const n = s.length;
    this.varuint(n);
    this.reserve(n * 3);
    const buf = this.buf;
    let p = this.pos;
    for (let i = 0; i < n; i++) {
      let c = s.charCodeAt(i);
      while (c >= 0x80) {
        buf[p++] = (c & 0x7f) | 0x80;
        c >>>= 7;
      }
      buf[p++] = c;
    }
    this.pos = p;
    return this;
  }

  /** Length-prefixed bytes. */
  bytes(b: Uint8Array): this {
    this.varuint(b.length);
    return this.raw(b);
  }

  /** The latin1 string whose bytes are b[at, at + n), as latin1() writes it (no string made). */
  latin1Bytes(b: Uint8Array, at: number, n: number): this {
    this.varuint(n);
    this.reserve(n);
    copyBytes(b, at, n, this.buf, this.pos);
    this.pos += n;
    return this;
  }

  /** Bytes with no length prefix. */
  raw(b: Uint8Array): this {
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }

  /** A copy of exactly the bytes written; the writer can keep going or be reset. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  /** The bytes written so far, not copied: valid until the writer is written to or reset. */
  unCopied(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }

  /**
   * The bytes written, and the writer starts over empty. A large buffer is handed over as it is
   * (no copy: a 64 MiB entry is not copied twice), a small one is copied and kept for reuse.
   */
  take(): Uint8Array {
    if (this.pos < TAKE_BYTES) {
      const out = this.buf.slice(0, this.pos);
      this.pos = 0;
      return out;
    }
    const out = this.buf.subarray(0, this.pos);
    this.buf = new Uint8Array(256);
    this.dv = null;
    this.pos = 0;
    return out;
  }

  /** Make room for at least `n` more bytes now (one allocation when the size is known). */
  expect(n: number): this {
    this.reserve(n);
    return this;
  }

  reset(): this {
    this.pos = 0;
    return this;
  }
}

export class ByteReader {
  private dv: DataView | null = null;
  private pos = 0;

  constructor(private readonly buf: Uint8Array, private readonly what = 'entry') {}

  private get view(): DataView {
    return (this.dv ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength));
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  /** Throw E_CORRUPT_ENTRY (for callers that find a semantically bad value). */
  corrupt(why: string): never {
    throw new LockstepError('E_CORRUPT_ENTRY', `corrupt ${this.what} at byte ${this.pos}: ${why}`);
  }

  private need(n: number): void {
    if (this.buf.length - this.pos < n) this.corrupt(`truncated (need ${n} bytes, have ${this.remaining})`);
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  f64(): number {
    this.need(8);
    const v = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }

  varuint(): number {
    const first = this.buf[this.pos]; // undefined past the end: the loop below says so
    if (first !== undefined && first < 0x80) {
      this.pos++;
      return first;
    }
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (v > MAX_SAFE) this.corrupt('varuint above 2^53');
        return v;
      }
      mul *= 0x80;
    }
    return this.corrupt('varuint too long');
  }

  bigint(): bigint {
    let z = 0n;
    let shift = 0n;
    for (;;) {
      const b = this.u8();
      z |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) break;
      shift += 7n;
      if (shift > 7n * 1024n) this.corrupt('bigint too long');
    }
    return (z & 1n) === 0n ? z >> 1n : -((z + 1n) >> 1n);
  }

  /** A byte string (as latin1() reads) left as bytes: its start in the buffer; it ends at `offset`. */
  latin1Span(): number {
    const n = this.varuint();
    this.need(n);
    const start = this.pos;
    this.pos += n;
    return start;
  }

  latin1(): string {
    const n = this.varuint();
    this.need(n);
    const start = this.pos;
    this.pos += n;
    return readLatin1(this.buf, start, start + n);
  }

  text(): string {
    const n = this.varuint();
    this.need(n); // at least one byte per unit
    const units: number[] = new Array<number>(n);
    for (let i = 0; i < n; i++) {
      let c = 0;
      let shift = 0;
      for (;;) {
        const b = this.u8();
        c |= (b & 0x7f) << shift;
        if (b < 0x80) break;
        shift += 7;
        if (shift > 14) this.corrupt('text code unit too long');
      }
      if (c > 0xffff) this.corrupt('text code unit above 0xffff');
      units[i] = c;
    }
    let s = '';
    for (let i = 0; i < n; i += CHUNK) s += String.fromCharCode.apply(null, units.slice(i, i + CHUNK));
    return s;
  }

  /** Length-prefixed bytes (a view into the input, not a copy). */
  bytes(): Uint8Array {
    const n = this.varuint();
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** Skip whatever is left (fields a newer format appended that this reader does not know). */
  skipRest(): void {
    this.pos = this.buf.length;
  }

  /** Assert the whole input was consumed. */
  end(): void {
    if (this.pos !== this.buf.length) this.corrupt(`${this.remaining} trailing bytes`);
  }
}

// ---------------------------------------------------------------------------------------------
// Hashing for digests. Two independent 32-bit lanes (murmur3-style mixing with different
// seeds), so a digest is ~64 bits. Order-independent digests add these pairs lane-wise mod
// 2^32 (see addHash/subHash): adding and removing an element is O(1) and commutative.

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A streaming two-lane hash. Reuse one instance: `h.reset().str(k).str(v)`, then read a/b. */
export class Hash64 {
  private x = 0;
  private y = 0;
  private n = 0;

  reset(): this {
    this.x = 0x9747b28c;
    this.y = 0x5bd1e995;
    this.n = 0;
    return this;
  }

  constructor() {
    this.reset();
  }

  private unit(c: number): void {
    let k = Math.imul(c, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    let x = this.x ^ k;
    x = (x << 13) | (x >>> 19);
    this.x = (Math.imul(x, 5) + 0xe6546b64) | 0;
    let y = Math.imul(this.y ^ c, 0x01000193);
    y = (y << 11) | (y >>> 21);
    this.y = (Math.imul(y, 0x27d4eb2f) + 0x165667b1) | 0;
    this.n++;
  }

  /** A 32-bit integer (also used as a field separator). */
  u32(v: number): this {
    this.unit(v | 0);
    return this;
  }

  /** A string, length-delimited so that ("ab","c") and ("a","bc") differ. */
  str(s: string): this {
    this.unit(s.length);
    for (let i = 0; i < s.length; i++) this.unit(s.charCodeAt(i));
    return this;
  }

  /** The same as str(s) for the latin1 string s whose bytes are b[at, at + n). */
  latin1Bytes(b: Uint8Array, at: number, n: number): this {
    this.unit(n);
    // unit() per byte, with the state in locals (a restore hashes every pair: a third of its time).
    let x = this.x;
    let y = this.y;
    for (let i = at; i < at + n; i++) {
      const c = b[i]!;
      let k = Math.imul(c, 0xcc9e2d51);
      k = (k << 15) | (k >>> 17);
      k = Math.imul(k, 0x1b873593);
      x ^= k;
      x = (x << 13) | (x >>> 19);
      x = (Math.imul(x, 5) + 0xe6546b64) | 0;
      y = Math.imul(y ^ c, 0x01000193);
      y = (y << 11) | (y >>> 21);
      y = (Math.imul(y, 0x27d4eb2f) + 0x165667b1) | 0;
    }
    this.x = x;
    this.y = y;
    this.n += n;
    return this;
  }

  /** Bytes, length-delimited, four at a time. */
  bytes(b: Uint8Array): this {
    this.unit(b.length);
    let i = 0;
    for (; i + 4 <= b.length; i += 4) this.unit(b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24));
    let t = 0;
    for (let s = 0; i < b.length; i++, s += 8) t |= b[i]! << s;
    this.unit(t);
    return this;
  }

  /**
   * The running state (both lanes and the unit count), so a streaming hash can be carried in a
   * snapshot and continued elsewhere: setState(state()) on a fresh instance hashes on the same.
   */
  state(): [number, number, number] {
    return [this.x >>> 0, this.y >>> 0, this.n];
  }

  setState(s: readonly [number, number, number]): this {
    this.x = s[0] | 0;
    this.y = s[1] | 0;
    this.n = s[2];
    return this;
  }

  get a(): number {
    return fmix32(this.x ^ this.n ^ fmix32(this.y));
  }

  get b(): number {
    return fmix32(this.y ^ Math.imul(this.n, 0x9e3779b1) ^ this.x);
  }
}

/** An order-independent multiset digest: lane-wise sums mod 2^32 plus an element count. */
export class SumDigest {
  a = 0;
  b = 0;
  count = 0;

  add(h: Hash64): void {
    this.a = (this.a + h.a) >>> 0;
    this.b = (this.b + h.b) >>> 0;
    this.count++;
  }

  sub(h: Hash64): void {
    this.a = (this.a - h.a) >>> 0;
    this.b = (this.b - h.b) >>> 0;
    this.count--;
  }

  addPair(a: number, b: number, count: number): void {
    this.a = (this.a + a) >>> 0;
    this.b = (this.b + b) >>> 0;
    this.count += count;
  }

  clear(): void {
    this.a = 0;
    this.b = 0;
    this.count = 0;
  }

  /** `<count hex>-<8 hex>-<8 hex>` */
  hex(): string {
    return `${this.count.toString(16)}-${hex8(this.a)}-${hex8(this.b)}`;
  }
}

export function hex8(v: number): string {
  return (v >>> 0).toString(16).padStart(8, '0');
}
