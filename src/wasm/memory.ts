// Bounds-checked, little-endian access to a guest's linear memory.
//
// Every WASI host function reaches guest memory only through a GuestMemory, for two reasons:
// a bad guest pointer must become the errno FAULT (never a RangeError that escapes the host),
// and the recorder must be able to see exactly which bytes an input call wrote, so that the
// backup can replay them without running the call (startTracking / stopTracking).

import { createHash } from 'node:crypto';

/** errno FAULT of wasi_snapshot_preview1 (kept here so memory.ts does not depend on abi.ts). */
const ERRNO_FAULT = 21;

/** A guest pointer or length that falls outside linear memory. The host maps it to FAULT. */
export class WasiFault extends Error {
  readonly errno = ERRNO_FAULT;
  constructor(message: string) {
    super(message);
    this.name = 'WasiFault';
  }
}

/** One write the host made into guest memory while tracking was on. */
export interface TrackedWrite {
  ptr: number;
  data: Uint8Array;
}

/**
 * Converts a pointer or length as wasm hands it over (an i32, so possibly negative) to the
 * unsigned u32 it stands for. Anything that is not an i32/u32 integer is a fault: the host
 * never guesses what a fractional or huge "pointer" meant.
 */
function toU32(n: number, what: string): number {
  if (!Number.isInteger(n) || n < -0x8000_0000 || n > 0xffff_ffff) {
    throw new WasiFault(`${what} ${n} is not a 32-bit integer`);
  }
  return n >>> 0;
}

export class GuestMemory {
  private readonly memory: WebAssembly.Memory;
  // Views over memory.buffer. memory.grow() detaches the old ArrayBuffer and makes a new one,
  // so the views are rebuilt whenever memory.buffer is no longer the buffer they were made on.
  private buffer: ArrayBuffer | null = null;
  private bytes = new Uint8Array(0);
  private view = new DataView(new ArrayBuffer(0));
  private tracked: TrackedWrite[] | null = null;

  constructor(memory: WebAssembly.Memory) {
    this.memory = memory;
  }

  /** Current size of linear memory in bytes. */
  get byteLength(): number {
    return this.refresh().byteLength;
  }

  /** Throws WasiFault unless [ptr, ptr + len) lies inside memory. Returns ptr as a u32. */
  check(ptr: number, len: number): number {
    const p = toU32(ptr, 'pointer');
    const n = toU32(len, 'length');
    if (p + n > this.refresh().byteLength) {
      throw new WasiFault(`guest range [${p}, ${p + n}) is outside memory of ${this.bytes.byteLength} bytes`);
    }
    return p;
  }

  // Each accessor calls check() in its own statement before touching this.view: check()
  // refreshes the views after a grow, and in `this.view.getX(this.check(...))` JS would
  // have fetched the old, detached view before check() ran.

  u8(ptr: number): number {
    const p = this.check(ptr, 1);
    return this.view.getUint8(p);
  }

  u16(ptr: number): number {
    const p = this.check(ptr, 2);
    return this.view.getUint16(p, true);
  }

  u32(ptr: number): number {
    const p = this.check(ptr, 4);
    return this.view.getUint32(p, true);
  }

  u64(ptr: number): bigint {
    const p = this.check(ptr, 8);
    return this.view.getBigUint64(p, true);
  }

  setU8(ptr: number, n: number): void {
    const p = this.check(ptr, 1);
    this.view.setUint8(p, n);
    this.track(p, 1);
  }

  setU16(ptr: number, n: number): void {
    const p = this.check(ptr, 2);
    this.view.setUint16(p, n, true);
    this.track(p, 2);
  }

  setU32(ptr: number, n: number): void {
    const p = this.check(ptr, 4);
    this.view.setUint32(p, n >>> 0, true);
    this.track(p, 4);
  }

  setU64(ptr: number, v: bigint): void {
    const p = this.check(ptr, 8);
    this.view.setBigUint64(p, BigInt.asUintN(64, v), true);
    this.track(p, 8);
  }

  /** A copy of [ptr, ptr + len): later guest writes must not change what the host holds. */
  read(ptr: number, len: number): Uint8Array {
    const p = this.check(ptr, len);
    return this.bytes.slice(p, p + (len >>> 0));
  }

  write(ptr: number, data: Uint8Array): void {
    const p = this.check(ptr, data.byteLength);
    this.bytes.set(data, p);
    this.track(p, data.byteLength);
  }

  readString(ptr: number, len: number): string {
    return new TextDecoder().decode(this.read(ptr, len));
  }

  /** Starts recording every write made through this object (a restart drops older records). */
  startTracking(): void {
    this.tracked = [];
  }

  /** Stops recording and returns the writes, in the order they were made. */
  stopTracking(): TrackedWrite[] {
    const out = this.tracked ?? [];
    this.tracked = null;
    return out;
  }

  /** sha256 (hex) of the whole of linear memory: lets tests and the runtime compare replicas. */
  /** The live bytes of memory (no copy: valid until the guest grows its memory). */
  live(): Uint8Array {
    return this.refresh();
  }

  hash(): string {
    return createHash('sha256').update(this.refresh()).digest('hex');
  }

  private track(p: number, len: number): void {
    // The bytes are copied from memory after the write, so a record is exactly what landed.
    if (this.tracked !== null && len > 0) this.tracked.push({ ptr: p, data: this.bytes.slice(p, p + len) });
  }

  private refresh(): Uint8Array {
    const buf = this.memory.buffer;
    if (buf !== this.buffer || this.bytes.byteLength !== buf.byteLength) {
      this.buffer = buf;
      this.bytes = new Uint8Array(buf);
      this.view = new DataView(buf);
    }
    return this.bytes;
  }
}
