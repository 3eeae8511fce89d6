// kv's store: byte-string keys and values kept OFF the JS heap, in 1024 shards.
//
// Why not a Map: a V8 Map rehashes every entry in one synchronous step when it doubles (575 ms
// at 2^21 keys, 895 ms at 2^22 on this machine) and holds at most 2^24 entries; and millions of
// small strings make V8's collector pause a node for hundreds of ms to seconds (10 M keys:
// young-generation scavenges of 83-267 ms each, gaps of 0.7-1.7 s between event-loop turns).
// A backup takes a primary that pauses longer than the failure timeout for dead (issue 9).
//
// So each shard is an open-addressing hash table in typed arrays (for each slot: the record's
// offset, the key's full hash and the key's length) over an arena, one Buffer, of records
// [u32 value length][key bytes][value bytes]. The collector sees four objects a shard, whatever
// the number of keys. A shard grows, rebuilds its table and compacts its arena synchronously,
// but it holds about 1/1024 of the keys, so each of those steps moves a thousandth of the
// state (about a megabyte at 10 M keys). A value of SIDE_CHARS or more stays a JS string in the
// shard's `side` map (few of them, and copying them through an arena would cost more).
//
// Keys and values are latin1 strings (one char = one byte); anything else throws, as the log
// encoding would. Reads return new strings (young garbage, cheap to collect). A key's shard and
// table slot come from a hash of all of it (FNV-1a; MD5 from 256 chars), deterministic but not
// observable: iteration order is unspecified, and kv sorts or sums over keys where it matters.

import { createHash } from 'node:crypto';
import { copyBytes, writeLatin1, type ByteWriter } from './bytes.js';

/** How many shards (a power of two). */
export const SHARDS = 1024;
const SHARD_MASK = SHARDS - 1;
/** A value this long or longer is kept as a JS string beside the table. */
export const SIDE_CHARS = 64 * 1024;
/** From this key length on, the key's hash is an MD5 of its bytes (native), not a JS loop. */
const NATIVE_HASH_CHARS = 256;
/** The value-length field of a record whose value is in `side`. */
const IN_SIDE = 0xffffffff;
const EMPTY = -1;
const TOMBSTONE = -2;
const MIN_SLOTS = 16;
const MIN_ARENA = 256;
/** A table is rebuilt when this share of its slots is used or dead. */
const MAX_LOAD = 0.7;
/** Offsets are int32: a shard's arena stays below 2 GiB (2 TiB for the store). */
const MAX_ARENA = 0x7fffffff;

let scratch = Buffer.allocUnsafeSlow(256);
/** A char that is not one byte. */
const WIDE = /[^\x00-\xff]/;

/** `key`'s bytes in the shared scratch buffer (valid until the next call). */
function keyBytes(key: string): Buffer {
  if (key.length > scratch.length) scratch = Buffer.allocUnsafeSlow(Math.max(key.length, scratch.length * 2));
  writeLatin1(scratch, 0, key);
  return scratch;
}

/** The full 32-bit hash of a key whose bytes are in `kb[at, at + n)`. */
function hashOf(kb: Uint8Array, n: number, at = 0): number {
  if (n >= NATIVE_HASH_CHARS) return createHash('md5').update(kb.subarray(at, at + n)).digest().readInt32LE(0);
  let h = 0x811c9dc5;
  for (let i = at; i < at + n; i++) h = Math.imul(h ^ kb[i]!, 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x45d9f3b);
  return h ^ (h >>> 16);
}

/** A key's full 32-bit hash (its shard is `keyHash(key) & (SHARDS - 1)`). */
export function keyHash(key: string): number {
  return hashOf(keyBytes(key), key.length);
}

/** The shard a key goes to. */
export function shardOf(key: string): number {
  return keyHash(key) & SHARD_MASK;
}

/**
 * Where hash h starts probing in a table of `size` slots (any size: multiply and shift). The
 * hash is remixed with a salt from the size: a table filled from another table's iteration
 * order (a restore, a rebuild) would otherwise receive its keys sorted by home slot, and with
 * linear probing sorted inserts into a smaller table pile up in one cluster: quadratic (a 10 M
 * key restore did not finish in minutes; 1 M took 5 s). Deterministic: the same on every run.
 */
function home(h: number, size: number): number {
  let y = h ^ Math.imul(size, 0x9e3779b1);
  y = Math.imul(y ^ (y >>> 16), 0x85ebca6b);
  y = Math.imul(y ^ (y >>> 13), 0xc2b2ae35);
  y ^= y >>> 16;
  return Math.floor(((y >>> 0) * size) / 4294967296);
}

class Shard {
  arena: Buffer = Buffer.allocUnsafeSlow(MIN_ARENA);
  /** Bytes of the arena in use, live records and garbage. */
  top = 0;
  garbage = 0;
  offsets = new Int32Array(MIN_SLOTS).fill(EMPTY);
  hashes = new Int32Array(MIN_SLOTS);
  keyLengths = new Int32Array(MIN_SLOTS);
  count = 0;
  tombstones = 0;
  /** Tables built (for tests: a shard grows by a factor, so this is logarithmic in its keys). */
  rebuilds = 0;
  readonly side = new Map<string, string>();
  /**
   * How much this shard grows its table and arena by, between 2x and 3x (tables) and 1.5x and
   * 2x (arenas), different for each shard: keys spread evenly, so shards that all grew by 2x
   * would all grow in the same few turns. (The 760-1,177 ms gaps first blamed on that were
   * mostly a sizing bug, rebuilding some tables on every insert: bench/README.md.)
   */
  private readonly spread: number;

  constructor(index: number) {
    this.spread = (index * 0.6180339887498949) % 1;
  }

  /** The slot holding the key (bytes kb[at, at + n), hash h), or -1. */
  find(kb: Uint8Array, n: number, h: number, at = 0): number {
    const size = this.offsets.length;
    for (let i = home(h, size); ; i = i + 1 === size ? 0 : i + 1) {
      const off = this.offsets[i]!;
      if (off === EMPTY) return -1;
      if (off !== TOMBSTONE && this.hashes[i] === h && this.keyLengths[i] === n && this.arena.compare(kb, at, at + n, off + 4, off + 4 + n) === 0) return i;
    }
  }

  /** A free slot for hash h (the table has room: see `reserveSlot`). */
  private freeSlot(h: number): number {
    const size = this.offsets.length;
    for (let i = home(h, size); ; i = i + 1 === size ? 0 : i + 1) {
      const off = this.offsets[i]!;
      if (off === EMPTY || off === TOMBSTONE) return i;
    }
  }

  value(slot: number, key: string): string {
    const off = this.offsets[slot]!;
    const vlen = this.arena.readUInt32LE(off);
    if (vlen === IN_SIDE) return this.side.get(key)!;
    const at = off + 4 + this.keyLengths[slot]!;
    return this.arena.toString('latin1', at, at + vlen);
  }

  keyAt(slot: number): string {
    const off = this.offsets[slot]!;
    return this.arena.toString('latin1', off + 4, off + 4 + this.keyLengths[slot]!);
  }

  /** Bytes of the record in `slot` in the arena. */
  private recordBytes(slot: number): number {
    const vlen = this.arena.readUInt32LE(this.offsets[slot]!);
    return 4 + this.keyLengths[slot]! + (vlen === IN_SIDE ? 0 : vlen);
  }

  /** Set the key (bytes kb[0, n), hash h); true if it is new. */
  set(key: string, kb: Buffer, n: number, h: number, value: string): boolean {
    const inSide = value.length >= SIDE_CHARS;
    let slot = this.find(kb, n, h);
    if (slot >= 0) {
      const off = this.offsets[slot]!;
      const old = this.arena.readUInt32LE(off);
      if (!inSide && old === value.length) {
        writeLatin1(this.arena, off + 4 + n, value); // same length: in place
        return false;
      }
      if (old === IN_SIDE) this.side.delete(key);
      this.garbage += this.recordBytes(slot);
      // Out of the table while the new record is appended, so that a compaction does not copy
      // the old one (and so that `garbage` stays right); back at once, nothing else runs.
      this.offsets[slot] = TOMBSTONE;
      this.offsets[slot] = this.append(kb, n, inSide ? null : value);
      if (inSide) this.side.set(key, value);
      return false;
    }
    this.reserveSlot();
    const at = this.append(kb, n, inSide ? null : value);
    slot = this.freeSlot(h);
    if (this.offsets[slot] === TOMBSTONE) this.tombstones--;
    this.offsets[slot] = at;
    this.hashes[slot] = h;
    this.keyLengths[slot] = n;
    this.count++;
    if (inSide) this.side.set(key, value);
    return true;
  }

  /**
   * Add a key that is not in the shard, from bytes: key src[ks, ks + kn) (hash h), value
   * src[vs, vs + vn) (shorter than SIDE_CHARS). False, and nothing changed, if the key is there.
   * A restore's path: no JS string is made for either, and the key is looked up once.
   */
  addNew(src: Uint8Array, ks: number, kn: number, h: number, vs: number, vn: number): boolean {
    if (this.find(src, kn, h, ks) >= 0) return false;
    this.reserveSlot();
    const need = 4 + kn + vn;
    if (this.top + need > this.arena.length) this.makeRoom(need);
    const at = this.top;
    const arena = this.arena;
    arena.writeUInt32LE(vn, at);
    copyBytes(src, ks, kn, arena, at + 4);
    copyBytes(src, vs, vn, arena, at + 4 + kn);
    this.top += need;
    const slot = this.freeSlot(h);
    if (this.offsets[slot] === TOMBSTONE) this.tombstones--;
    this.offsets[slot] = at;
    this.hashes[slot] = h;
    this.keyLengths[slot] = kn;
    this.count++;
    return true;
  }

  /**
   * A restore's guess: make an empty shard's table and arena big enough for about `keys` keys
   * in `bytes` of records, with room to grow (by this shard's own factor, as it would have
   * grown), so that it does not grow step by step from nothing. A wrong guess costs memory or
   * growth steps, never correctness.
   */
  presize(keys: number, bytes: number): void {
    if (this.count !== 0 || this.top !== 0) return;
    this.rebuild(Math.max(MIN_SLOTS, Math.ceil((keys * (1.2 + this.spread)) / MAX_LOAD)));
    this.arena = Buffer.allocUnsafeSlow(Math.min(MAX_ARENA, Math.max(MIN_ARENA, Math.ceil(bytes * (1.2 + this.spread / 2)))));
  }

  delete(key: string, kb: Buffer, n: number, h: number): boolean {
    const slot = this.find(kb, n, h);
    if (slot < 0) return false;
    if (this.arena.readUInt32LE(this.offsets[slot]!) === IN_SIDE) this.side.delete(key);
    this.garbage += this.recordBytes(slot);
    this.offsets[slot] = TOMBSTONE;
    this.tombstones++;
    this.count--;
    if (this.count === 0) this.reset();
    return true;
  }

  private reset(): void {
    this.arena = Buffer.allocUnsafeSlow(MIN_ARENA);
    this.top = 0;
    this.garbage = 0;
    this.rebuild(MIN_SLOTS);
  }

  /** Make room in the table for one more key: at most MAX_LOAD of its slots used or dead. */
  private reserveSlot(): void {
    if (this.count + this.tombstones + 1 <= this.offsets.length * MAX_LOAD) return;
    this.rebuild(Math.max(MIN_SLOTS, Math.ceil(((this.count + 1) * (2 + this.spread)) / MAX_LOAD)));
  }

  /** A new table of `size` slots with the live keys (no arena read: hashes are kept). */
  private rebuild(size: number): void {
    this.rebuilds++;
    const offsets = this.offsets;
    const hashes = this.hashes;
    const lengths = this.keyLengths;
    this.offsets = new Int32Array(size).fill(EMPTY);
    this.hashes = new Int32Array(size);
    this.keyLengths = new Int32Array(size);
    this.tombstones = 0;
    for (let i = 0; i < offsets.length; i++) {
      const off = offsets[i]!;
      if (off < 0) continue;
      const s = this.freeSlot(hashes[i]!);
      this.offsets[s] = off;
      this.hashes[s] = hashes[i]!;
      this.keyLengths[s] = lengths[i]!;
    }
  }

  /** Append a record (value null: in side); its offset. Grows or compacts the arena first. */
  private append(kb: Buffer, n: number, value: string | null): number {
    const need = 4 + n + (value?.length ?? 0);
    if (this.top + need > this.arena.length) this.makeRoom(need);
    const at = this.top;
    this.arena.writeUInt32LE(value === null ? IN_SIDE : value.length, at);
    kb.copy(this.arena, at + 4, 0, n);
    if (value !== null) writeLatin1(this.arena, at + 4 + n, value);
    this.top += need;
    return at;
  }

  /** Room for `need` more bytes: a compacted copy of the live records if half is garbage, else a bigger arena. */
  private makeRoom(need: number): void {
    const live = this.top - this.garbage;
    const compact = this.garbage * 2 > this.top;
    const grow = 1.5 + this.spread / 2;
    const size = Math.ceil(Math.max(MIN_ARENA, compact ? (live + need) * grow : Math.max(this.arena.length * grow, this.top + need)));
    // Both sizes below are at least live + need: only when that passes the cap is there no room.
    if (live + need > MAX_ARENA) throw new RangeError('kv store: a shard\'s arena would pass 2 GiB');
    const next = Buffer.allocUnsafeSlow(Math.min(size, MAX_ARENA));
    if (!compact && this.top + need <= next.length) {
      this.arena.copy(next, 0, 0, this.top);
      this.arena = next;
      return;
    }
    // Copy the live records in slot order, and point the slots at their new places.
    let top = 0;
    for (let i = 0; i < this.offsets.length; i++) {
      const off = this.offsets[i]!;
      if (off < 0) continue;
      const bytes = this.recordBytes(i);
      this.arena.copy(next, top, off, off + bytes);
      this.offsets[i] = top;
      top += bytes;
    }
    this.arena = next;
    this.top = top;
    this.garbage = 0;
  }
}

/** A string-to-string map of latin1 byte strings, off the JS heap (see the header). */
export class KvStore {
  private readonly shards: Shard[] = Array.from({ length: SHARDS }, (_, i) => new Shard(i));
  private count = 0;
  /** addNewBytes (a restore): the shard being filled, and the size of the last one filled. */
  private filling = -1;
  private fillHint = { keys: 0, bytes: 0 };

  get size(): number {
    return this.count;
  }

  get(key: string): string | undefined {
    const n = key.length;
    const kb = keyBytes(key);
    const h = hashOf(kb, n);
    const s = this.shards[h & SHARD_MASK]!;
    const slot = s.find(kb, n, h);
    return slot < 0 ? undefined : s.value(slot, key);
  }

  has(key: string): boolean {
    const n = key.length;
    const kb = keyBytes(key);
    const h = hashOf(kb, n);
    return this.shards[h & SHARD_MASK]!.find(kb, n, h) >= 0;
  }

  set(key: string, value: string): this {
    // Checked before anything changes (the key is, by keyBytes): a failed write changes nothing.
    if (value.length < SIDE_CHARS && WIDE.test(value)) throw new RangeError('kv store: a value is not a latin1 string');
    const n = key.length;
    const kb = keyBytes(key);
    const h = hashOf(kb, n);
    if (this.shards[h & SHARD_MASK]!.set(key, kb, n, h, value)) this.count++;
    return this;
  }

  /**
   * Add key src[ks, ks + kn) with value src[vs, vs + vn), both as bytes (latin1), the key not
   * in the store (false, nothing changed, if it is). The value must be shorter than SIDE_CHARS.
   */
  addNewBytes(src: Uint8Array, ks: number, kn: number, vs: number, vn: number): boolean {
    if (vn >= SIDE_CHARS) throw new RangeError('kv store: addNewBytes of a value kept beside the table');
    const h = hashOf(src, kn, ks);
    const i = h & SHARD_MASK;
    const s = this.shards[i]!;
    if (i !== this.filling) {
      // A snapshot stream sends a shard at a time, in this store's shard order, and shards hold
      // about the same number of keys: an empty shard starts the size the last one filled ended.
      const last = this.shards[this.filling];
      if (last !== undefined) this.fillHint = { keys: last.count, bytes: last.top };
      this.filling = i;
      if (this.fillHint.keys > 0) s.presize(this.fillHint.keys, this.fillHint.bytes);
    }
    if (!s.addNew(src, ks, kn, h, vs, vn)) return false;
    this.count++;
    return true;
  }

  delete(key: string): boolean {
    const n = key.length;
    const kb = keyBytes(key);
    const h = hashOf(kb, n);
    const gone = this.shards[h & SHARD_MASK]!.delete(key, kb, n, h);
    if (gone) this.count--;
    return gone;
  }

  /** The keys of shard `i` now (a thousandth of them: a snapshot stream lists a shard at a time). */
  shardKeys(i: number): string[] {
    const s = this.shards[i]!;
    const out: string[] = [];
    for (let slot = 0; slot < s.offsets.length; slot++) if (s.offsets[slot]! >= 0) out.push(s.keyAt(slot));
    return out;
  }

  /**
   * Write shard i's pairs to `w` as latin1 key then latin1 value, copied from the arena as
   * bytes (no JS strings made), except the keys whose hash is in `apart` and those whose value
   * is kept beside the table (SIDE_CHARS or more): those are handed to `each` as strings. A
   * snapshot stream's path.
   */
  writeShard(i: number, w: ByteWriter, apart: ReadonlySet<number> | undefined, each: (key: string) => void): void {
    const s = this.shards[i]!;
    const { offsets, hashes, keyLengths, arena } = s;
    for (let slot = 0; slot < offsets.length; slot++) {
      const off = offsets[slot]!;
      if (off < 0) continue;
      const vlen = arena.readUInt32LE(off);
      if (vlen === IN_SIDE || (apart !== undefined && apart.has(hashes[slot]!))) {
        each(s.keyAt(slot));
        continue;
      }
      const kn = keyLengths[slot]!;
      w.latin1Bytes(arena, off + 4, kn);
      w.latin1Bytes(arena, off + 4 + kn, vlen);
    }
  }

  *keys(): IterableIterator<string> {
    for (let i = 0; i < SHARDS; i++) yield* this.shardKeys(i);
  }

  *[Symbol.iterator](): IterableIterator<[string, string]> {
    for (const s of this.shards) {
      for (let slot = 0; slot < s.offsets.length; slot++) {
        if (s.offsets[slot]! < 0) continue;
        const k = s.keyAt(slot);
        yield [k, s.value(slot, k)];
      }
    }
  }

  /** The most tables any one shard has built (for tests and tools). */
  mostRebuilds(): number {
    let most = 0;
    for (const s of this.shards) most = Math.max(most, s.rebuilds);
    return most;
  }

  /** The longest run a lookup walks past its home slot, over every shard (for tests and tools). */
  longestProbe(): number {
    let longest = 0;
    for (const s of this.shards) {
      const size = s.offsets.length;
      for (let i = 0; i < size; i++) {
        if (s.offsets[i]! < 0) continue;
        const d = (i - home(s.hashes[i]!, size) + size) % size;
        if (d > longest) longest = d;
      }
    }
    return longest;
  }

  /** Bytes held outside the JS heap's strings: arenas and tables (for tests and tools). */
  arenaBytes(): number {
    let n = 0;
    for (const s of this.shards) n += s.arena.length + s.offsets.length * 12;
    return n;
  }
}
