// kv: the reference state machine, a byte-string key/value store with Redis semantics.
//
// Commands are RESP-style argument lists of latin1 strings (one char = one byte), so the Redis
// protocol layer can hand them over without decoding. Replies mirror RESP2 types; an error's
// `message` is the whole RESP error line without the leading '-' (e.g. "ERR syntax error").
// Every command that writes records its writes as a KvChange, in order, so state-transfer
// backups install exactly what the primary did. Only writes that change the state are
// recorded: `change` is null iff the state did not change.
//
// Determinism: the store is a Map, whose iteration order depends on the history of deletes
// and re-inserts, which differs between a replica that executes and one that installs
// changes. So nothing observable iterates the Map in its own order: snapshots sort keys and
// the digest is an order-independent sum of per-pair hashes, updated on every write (O(1) in
// the number of keys; a big value is hashed natively, and an APPEND hashes only what it adds:
// value-hash.ts). In state-transfer mode an APPEND ships only the appended bytes.
//
// Memory (issue 14 item 8): the state's size is counted deterministically, as the bytes of
// every key and value plus KEY_OVERHEAD_BYTES per key, the same on every replica. With a
// maxmemory limit, a write that could take it past the limit is refused with Redis's -OOM
// error before it executes (`admit`, on the primary only: a refused command is never logged,
// so rsm backups never see it). Reads and DEL always work.

import type { GuestCodec, Execution, StateMachine } from './types.js';
import type { RestoreStream, SnapshotStream } from './snapshot-stream.js';
import { ByteReader, ByteWriter, Hash64, SumDigest, readLatin1, varuintSize } from './bytes.js';
import { BIG_VALUE_CHARS, appendBig, hashBig, type BigPair } from './value-hash.js';
import { KvStore, SHARDS, keyHash } from './kv-store.js';

export type KvCommand = readonly string[];

export type KvReply =
  | { readonly kind: 'status'; readonly value: string }
  | { readonly kind: 'error'; readonly message: string }
  | { readonly kind: 'integer'; readonly value: bigint }
  | { readonly kind: 'bulk'; readonly value: string | null }
  | { readonly kind: 'array'; readonly items: readonly KvReply[] };

/**
 * Writes in order; a null value deletes the key; with `append`, the value is appended to the
 * key's current value (which exists: an APPEND to a missing key is a plain set).
 */
export type KvChange = { readonly writes: readonly Write[] };

type Write = readonly [key: string, value: string | null, append?: 'append'];

/** What each key costs in the memory count beyond its bytes (the Map entry, string headers). */
export const KEY_OVERHEAD_BYTES = 64;
/** The bytes an INCR may write: the longest int64 in decimal. */
const INT64_CHARS = 20;
/** Redis's shared.oomerr (server.c), without the leading '-'. */
export const OOM_MESSAGE = "OOM command not allowed when used memory > 'maxmemory'.";
/** A recorded error reply of a command that changed nothing is cut to this many chars. */
const RECORDED_ERROR_CHARS = 96;

const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
/** Redis's proto-max-bulk-len is 512 MiB; V8 strings stop 24 chars short of that. */
const MAX_STRING = (1 << 29) - 24;

const OK: KvReply = { kind: 'status', value: 'OK' };
const NIL: KvReply = { kind: 'bulk', value: null };
const ERR_NOT_INT = err('ERR value is not an integer or out of range');
const ERR_OVERFLOW = err('ERR increment or decrement would overflow');
const ERR_SET_OPTIONS = err('ERR SET options (EX, PX, NX, XX, GET, KEEPTTL...) are not supported yet: only SET key value');

function err(message: string): KvReply {
  return { kind: 'error', message };
}

function int(v: bigint | number): KvReply {
  return { kind: 'integer', value: BigInt(v) };
}

/** Redis arity: n > 0 exactly n args (including the name), n < 0 at least -n. */
const ARITY: ReadonlyMap<string, number> = new Map([
  ['get', 2], ['set', -3], ['del', -2], ['append', 3], ['incr', 2], ['decr', 2], ['incrby', 3],
  ['decrby', 3], ['mget', -2], ['mset', -3], ['exists', -2], ['dbsize', 1],
]);
const READ_ONLY: ReadonlySet<string> = new Set(['get', 'mget', 'exists', 'dbsize']);

/**
 * Command names are matched case-insensitively. toLowerCase is safe here: the only latin1
 * chars that lowercase into ASCII are A-Z, so this matches exactly what strcasecmp matches.
 */
function commandName(args: KvCommand): string {
  const name = args[0];
  return name === undefined || name.length > 16 ? '' : name.toLowerCase();
}

/** Redis's string2ll: canonical signed 64-bit decimal, else null. */
export function parseInt64(s: string): bigint | null {
  if (s.length === 0 || s.length > 20 || !/^(?:0|-?[1-9][0-9]*)$/.test(s)) return null;
  const v = BigInt(s);
  return v < INT64_MIN || v > INT64_MAX ? null : v;
}

/** The reply Redis gives for an unknown command (processCommand in server.c). */
function unknownCommand(args: KvCommand): KvReply {
  const cstr = (s: string): string => {
    const nul = s.indexOf('\0');
    return nul < 0 ? s : s.slice(0, nul);
  };
  let rest = '';
  for (let i = 1; i < args.length && rest.length < 128; i++) {
    rest += `'${cstr(args[i]!).slice(0, 128 - rest.length)}' `;
  }
  const text = `unknown command '${cstr(args[0] ?? '').slice(0, 128)}', with args beginning with: ${rest}`;
  return err('ERR ' + text.replace(/[\r\n]/g, ' '));
}

function wrongArity(name: string): KvReply {
  return err(`ERR wrong number of arguments for '${name}' command`);
}

export class KvMachine implements StateMachine<KvCommand, KvReply, KvChange> {
  readonly name = 'kv';
  readonly codec: GuestCodec<KvCommand, KvReply, KvChange> = kvCodec;

  /** The keys and values: off the JS heap, in shards, so that no rehash or collection stops the event loop (kv-store.ts). */
  private data = new KvStore();
  /** Digest parts of the values of BIG_VALUE_CHARS or more (so removing one needs no rehash). */
  private bigs = new Map<string, BigPair>();
  /** The longest value a command may make (Redis's proto-max-bulk-len); the same on every replica. */
  private readonly maxValueBytes: number;
  /** The limit on usedBytes beyond which writes are refused (Infinity: none). */
  readonly maxmemoryBytes: number;
  private used = 0;
  private readonly sum = new SumDigest();
  private readonly h = new Hash64();
  /**
   * Open snapshot streams (copy-on-write): before a key changes, each keeps the key's value
   * as it was when the stream began (null: it did not exist), unless it kept one already.
   */
  private readonly streams = new Set<KvSnapshotStream>();

  constructor(maxValueBytes = MAX_STRING, maxmemoryBytes = Infinity) {
    this.maxValueBytes = maxValueBytes;
    this.maxmemoryBytes = maxmemoryBytes;
  }

  /** The state's size as counted for maxmemory: key and value bytes plus KEY_OVERHEAD_BYTES a key. */
  get usedBytes(): number {
    return this.used;
  }

  /** Number of keys. */
  get size(): number {
    return this.data.size;
  }

  /** The value at `key` (for tests and tools; commands go through execute). */
  get(key: string): string | undefined {
    return this.data.get(key);
  }

  isReadOnly(command: KvCommand): boolean {
    return READ_ONLY.has(commandName(command));
  }

  errorReply(message: string): KvReply {
    return err('ERR ' + message);
  }

  /**
   * Refuse a write that could take the state past maxmemory (Redis's denyoom commands: every
   * kv write but DEL). The bound is what the command could add at most, so the state never
   * passes the limit; Redis checks only that it is not already past it.
   */
  admit(args: KvCommand): KvReply | null {
    if (this.maxmemoryBytes === Infinity) return null;
    const name = commandName(args);
    let grow = 0;
    switch (name) {
      case 'set':
      case 'mset':
        for (let i = 1; i + 1 < args.length; i += 2) grow += args[i]!.length + args[i + 1]!.length + KEY_OVERHEAD_BYTES;
        break;
      case 'append':
        grow = (args[2]?.length ?? 0) + (args[1] !== undefined && this.data.has(args[1]) ? 0 : args[1]!.length + KEY_OVERHEAD_BYTES);
        break;
      case 'incr':
      case 'decr':
      case 'incrby':
      case 'decrby':
        grow = INT64_CHARS + (args[1]?.length ?? 0) + KEY_OVERHEAD_BYTES;
        break;
      default:
        return null;
    }
    return this.used + grow > this.maxmemoryBytes ? err(OOM_MESSAGE) : null;
  }

  /**
   * What the duplicate filter records for a reply: a long error from a command that changed
   * nothing (an unknown command quotes its arguments) is cut short; the client that sent it
   * got it whole, and a retry gets the same error, shortened.
   */
  recordedReply(reply: KvReply, changed: boolean): KvReply {
    if (changed || reply.kind !== 'error' || reply.message.length <= RECORDED_ERROR_CHARS) return reply;
    return err(`${reply.message.slice(0, RECORDED_ERROR_CHARS - 3)}...`);
  }

  execute(args: KvCommand): Execution<KvReply, KvChange> {
    const writes: Write[] = [];
    const reply = this.run(args, writes);
    return { reply, change: writes.length === 0 ? null : { writes } };
  }

  applyChange(change: KvChange): void {
    for (const [key, value, append] of change.writes) {
      if (append === undefined) this.put(key, value);
      else if (value === null || !this.data.has(key)) throw new Error('kv: an append change to a missing key');
      else this.appendTo(key, value);
    }
  }

  snapshot(): Uint8Array {
    const keys = [...this.data.keys()].sort();
    const w = new ByteWriter(64 + keys.length * 16);
    w.u8(1).varuint(keys.length);
    for (const k of keys) w.latin1(k).latin1(this.data.get(k)!);
    return w.finish();
  }

  /**
   * The snapshot in pieces, consistent as of now while commands keep executing: a key changed
   * or deleted before it was written out is written with the value it had now (kept by
   * put/appendTo), and a key created later is not written. The keys are listed one shard at a
   * time, when the stream gets to it (listing 10 M keys at once would stop the event loop for
   * a second); a key deleted from a shard not listed yet is listed from what the stream kept.
   * A piece is KV_PIECE then (latin1 key, latin1 value) pairs to its end.
   */
  snapshotStream(): SnapshotStream {
    const s = new KvSnapshotStream(this, () => this.data);
    this.streams.add(s);
    return s;
  }

  /** The value `key` had when stream `s` began (for the stream only). */
  valueFor(s: KvSnapshotStream, key: string): string | undefined {
    const kept = s.kept.get(key);
    return kept === undefined ? this.data.get(key) : (kept ?? undefined);
  }

  /** Stream `s` is done: stop keeping old values for it. */
  endStream(s: KvSnapshotStream): void {
    this.streams.delete(s);
  }

  /** Restore from the pieces of a snapshotStream, each parsed as it comes; swapped in at finish. */
  restoreStream(): RestoreStream {
    const data = new KvStore();
    const bigs = new Map<string, BigPair>();
    const sum = new SumDigest();
    let used = 0;
    return {
      add: (piece: Uint8Array): void => {
        const r = new ByteReader(piece, 'kv snapshot piece');
        if (r.u8() !== KV_PIECE) r.corrupt('not a kv snapshot piece');
        const h = this.h;
        while (r.remaining > 0) {
          const ks = r.latin1Span();
          const kn = r.offset - ks;
          const vs = r.latin1Span();
          const vn = r.offset - vs;
          used += kn + vn + KEY_OVERHEAD_BYTES;
          if (vn < BIG_VALUE_CHARS) {
            // Most pairs: from the piece's bytes into the store and the digest, no strings made.
            if (!data.addNewBytes(piece, ks, kn, vs, vn)) r.corrupt(`key ${JSON.stringify(readLatin1(piece, ks, ks + Math.min(kn, 40)))} twice`);
            sum.add(h.reset().latin1Bytes(piece, ks, kn).latin1Bytes(piece, vs, vn));
            continue;
          }
          const k = readLatin1(piece, ks, ks + kn);
          const v = readLatin1(piece, vs, vs + vn);
          if (data.has(k)) r.corrupt(`key ${JSON.stringify(k.slice(0, 40))} twice`);
          data.set(k, v);
          this.addPair(sum, bigs, k, v);
        }
      },
      finish: (): void => {
        this.streams.clear();
        this.data = data;
        this.bigs = bigs;
        this.used = used;
        this.sum.clear();
        this.sum.addPair(sum.a, sum.b, sum.count);
      },
    };
  }

  restore(snapshot: Uint8Array): void {
    this.streams.clear();
    const r = new ByteReader(snapshot, 'kv snapshot');
    if (r.u8() !== 1) r.corrupt('unknown kv snapshot version');
    const n = r.varuint();
    if (n > r.remaining) r.corrupt('key count larger than the snapshot');
    const data = new KvStore();
    let prev: string | null = null;
    for (let i = 0; i < n; i++) {
      const k = r.latin1();
      if (prev !== null && !(prev < k)) r.corrupt('keys not strictly sorted');
      data.set(k, r.latin1());
      prev = k;
    }
    r.end();
    this.data = data;
    this.bigs = new Map();
    this.used = 0;
    for (const [k, v] of data) this.used += k.length + v.length + KEY_OVERHEAD_BYTES;
    this.recomputeDigest(this.sum, this.bigs);
  }

  /** Incremental, order-independent digest of the whole store: O(1). */
  digest(): string {
    return this.sum.hex();
  }

  /** The same digest recomputed from scratch (O(n)): tests check it equals digest(). */
  fullDigest(): string {
    const s = new SumDigest();
    this.recomputeDigest(s, new Map());
    return s.hex();
  }

  private recomputeDigest(s: SumDigest, bigs: Map<string, BigPair>): void {
    s.clear();
    for (const [k, v] of this.data) this.addPair(s, bigs, k, v);
  }

  /** Add the pair (key, value) to digest `s`, remembering a big value's hash in `bigs`. */
  private addPair(s: SumDigest, bigs: Map<string, BigPair>, key: string, value: string): void {
    if (value.length < BIG_VALUE_CHARS) {
      s.add(this.h.reset().str(key).str(value));
      return;
    }
    const p = hashBig(this.h, key, value);
    bigs.set(key, p);
    s.addPair(p.a, p.b, 1);
  }

  /** Take the pair (key, old) out of the digest and the memory count. */
  private removePair(key: string, old: string): void {
    const big = this.bigs.get(key);
    if (big !== undefined) {
      this.sum.addPair(-big.a, -big.b, -1);
      this.bigs.delete(key);
    } else {
      this.sum.sub(this.h.reset().str(key).str(old));
    }
    this.used -= key.length + old.length + KEY_OVERHEAD_BYTES;
  }

  /** Set (or delete, value null) and keep the digest and the memory count in step. */
  private put(key: string, value: string | null): void {
    const old = this.data.get(key);
    if (this.streams.size > 0) this.keepOld(key, old);
    if (old !== undefined) this.removePair(key, old);
    if (value === null) {
      this.data.delete(key);
    } else {
      this.data.set(key, value);
      this.addPair(this.sum, this.bigs, key, value);
      this.used += key.length + value.length + KEY_OVERHEAD_BYTES;
    }
  }

  /** Copy-on-write: every open stream keeps `key`'s value before its first change. */
  private keepOld(key: string, old: string | undefined): void {
    for (const s of this.streams) if (!s.kept.has(key)) s.keep(key, old ?? null);
  }

  /** Append `add` to the existing value at `key`: a big value hashes only `add`. */
  private appendTo(key: string, add: string): void {
    const old = this.data.get(key)!;
    const value = old + add;
    const big = this.bigs.get(key);
    if (big === undefined) {
      this.put(key, value);
      return;
    }
    if (this.streams.size > 0) this.keepOld(key, old);
    const p = appendBig(this.h, key, big, add, value);
    this.sum.addPair(p.a - big.a, p.b - big.b, 0);
    this.bigs.set(key, p);
    this.data.set(key, value);
    this.used += add.length;
  }

  /** A write made by a command: applied and recorded, unless it changes nothing. */
  private write(writes: Write[], key: string, value: string | null): void {
    if ((this.data.get(key) ?? null) === value) return;
    this.put(key, value);
    writes.push([key, value]);
  }

  private run(args: KvCommand, writes: Write[]): KvReply {
    const name = commandName(args);
    const arity = ARITY.get(name);
    if (arity === undefined) return unknownCommand(args);
    const n = args.length;
    if (arity > 0 ? n !== arity : n < -arity) return wrongArity(name);
    const a1 = args[1]!;
    switch (name) {
      case 'get':
        return { kind: 'bulk', value: this.data.get(a1) ?? null };
      case 'set':
        if (n !== 3) return ERR_SET_OPTIONS;
        this.write(writes, a1, args[2]!);
        return OK;
      case 'del': {
        let count = 0;
        for (let i = 1; i < n; i++) {
          const k = args[i]!;
          if (this.data.has(k)) {
            this.write(writes, k, null);
            count++;
          }
        }
        return int(count);
      }
      case 'append': {
        const old = this.data.get(a1) ?? '';
        const add = args[2]!;
        if (old.length + add.length > this.maxValueBytes) {
          return err('ERR string exceeds maximum allowed size (proto-max-bulk-len)');
        }
        if (!this.data.has(a1)) {
          this.write(writes, a1, add);
          return int(add.length);
        }
        if (add.length === 0) return int(old.length);
        this.appendTo(a1, add);
        writes.push([a1, add, 'append']);
        return int(old.length + add.length);
      }
      case 'incr':
        return this.incrBy(writes, a1, 1n);
      case 'decr':
        return this.incrBy(writes, a1, -1n);
      case 'incrby':
      case 'decrby': {
        const by = parseInt64(args[2]!);
        if (by === null) return ERR_NOT_INT;
        if (name === 'incrby') return this.incrBy(writes, a1, by);
        if (by === INT64_MIN) return err('ERR decrement would overflow');
        return this.incrBy(writes, a1, -by);
      }
      case 'mget': {
        // The store makes a new string per read (kv-store.ts): a key named many times is read
        // once, or MGET of one 4 KiB key a million times would make 4 GB of copies before the
        // reply's size is checked, and the node would die of it (test/poison.test.ts).
        const items: KvReply[] = [];
        const read = new Map<string, KvReply>();
        for (let i = 1; i < n; i++) {
          const k = args[i]!;
          let item = read.get(k);
          if (item === undefined) read.set(k, (item = { kind: 'bulk', value: this.data.get(k) ?? null }));
          items.push(item);
        }
        return { kind: 'array', items };
      }
      case 'mset':
        if (n % 2 === 0) return wrongArity(name);
        for (let i = 1; i < n; i += 2) this.write(writes, args[i]!, args[i + 1]!);
        return OK;
      case 'exists': {
        let count = 0;
        for (let i = 1; i < n; i++) if (this.data.has(args[i]!)) count++;
        return int(count);
      }
      case 'dbsize':
        return int(this.data.size);
      default:
        return unknownCommand(args);
    }
  }

  private incrBy(writes: Write[], key: string, by: bigint): KvReply {
    const cur = this.data.get(key);
    const old = cur === undefined ? 0n : parseInt64(cur);
    if (old === null) return ERR_NOT_INT;
    const next = old + by;
    if (next < INT64_MIN || next > INT64_MAX) return ERR_OVERFLOW;
    this.write(writes, key, next.toString());
    return int(next);
  }
}

/**
 * A kv machine whose values are at most `maxValueBytes` long (default and ceiling: what a string
 * can hold) and whose state is at most `maxmemoryBytes` as counted by usedBytes (default: no limit).
 */
export function createKv(maxValueBytes = MAX_STRING, maxmemoryBytes = Infinity): KvMachine {
  return new KvMachine(Math.min(maxValueBytes, MAX_STRING), maxmemoryBytes);
}

// ---------------------------------------------------------------------------------------------
// Codec. Command: varuint argc, latin1 args. Change: varuint count, then per write u8 (0 delete,
// 1 set, 2 append: the value is appended to the key's), latin1 key, [latin1 value]. Op 2 is
// new with issue 14; changes without it are encoded as before. Reply: u8 tag, then
//   0 status text | 1 error text | 2 integer bigint | 3 bulk latin1 | 4 null bulk |
//   5 array varuint count + replies.

const MAX_REPLY_DEPTH = 256;
/** One reusable writer for the codec (encodes are synchronous and never nest). */
const scratch = new ByteWriter(1024);

function writeReply(w: ByteWriter, reply: KvReply): void {
  switch (reply.kind) {
    case 'status':
      w.u8(0).text(reply.value);
      return;
    case 'error':
      w.u8(1).text(reply.message);
      return;
    case 'integer':
      w.u8(2).bigint(reply.value);
      return;
    case 'bulk':
      if (reply.value === null) w.u8(4);
      else w.u8(3).latin1(reply.value);
      return;
    case 'array':
      w.u8(5).varuint(reply.items.length);
      for (const item of reply.items) writeReply(w, item);
      return;
  }
}

function readReply(r: ByteReader, depth: number): KvReply {
  const tag = r.u8();
  switch (tag) {
    case 0:
      return { kind: 'status', value: r.text() };
    case 1:
      return { kind: 'error', message: r.text() };
    case 2:
      return { kind: 'integer', value: r.bigint() };
    case 3:
      return { kind: 'bulk', value: r.latin1() };
    case 4:
      return NIL;
    case 5: {
      if (depth >= MAX_REPLY_DEPTH) r.corrupt('reply nested too deep');
      const n = r.varuint();
      if (n > r.remaining) r.corrupt('array count larger than the input');
      const items: KvReply[] = [];
      for (let i = 0; i < n; i++) items.push(readReply(r, depth + 1));
      return { kind: 'array', items };
    }
    default:
      return r.corrupt(`unknown reply tag ${tag}`);
  }
}

export const kvCodec: GuestCodec<KvCommand, KvReply, KvChange> = {
  encodeCommand(command) {
    const w = scratch.reset().expect(kvCodec.commandLength!(command));
    kvCodec.writeCommand!(w, command);
    return w.take();
  },
  commandLength(command) {
    let n = varuintSize(command.length);
    for (const a of command) n += varuintSize(a.length) + a.length;
    return n;
  },
  writeCommand(w, command) {
    w.varuint(command.length);
    for (const a of command) w.latin1(a);
  },
  decodeCommand(bytes) {
    const r = new ByteReader(bytes, 'kv command');
    const n = r.varuint();
    if (n > r.remaining) r.corrupt('argument count larger than the input');
    const args: string[] = [];
    for (let i = 0; i < n; i++) args.push(r.latin1());
    r.end();
    return args;
  },
  encodeReply(reply) {
    writeReply(scratch.reset(), reply);
    return scratch.take();
  },
  decodeReply(bytes) {
    const r = new ByteReader(bytes, 'kv reply');
    const reply = readReply(r, 0);
    r.end();
    return reply;
  },
  encodeChange(change) {
    let size = 10;
    for (const [k, v] of change.writes) size += k.length + (v?.length ?? 0) + 21;
    const w = scratch.reset().expect(size).varuint(change.writes.length);
    for (const [k, v, append] of change.writes) {
      if (v === null) w.u8(0).latin1(k);
      else w.u8(append === undefined ? 1 : 2).latin1(k).latin1(v);
    }
    return w.take();
  },
  decodeChange(bytes) {
    const r = new ByteReader(bytes, 'kv change');
    const n = r.varuint();
    if (n > r.remaining) r.corrupt('write count larger than the input');
    const writes: Write[] = [];
    for (let i = 0; i < n; i++) {
      const op = r.u8();
      if (op > 2) r.corrupt(`unknown write op ${op}`);
      const k = r.latin1();
      writes.push(op === 0 ? [k, null] : op === 1 ? [k, r.latin1()] : [k, r.latin1(), 'append']);
    }
    r.end();
    return { writes };
  },
};

/** The first byte of every kv snapshot piece. */
const KV_PIECE = 0x4b;

/** A kv snapshot being streamed (KvMachine.snapshotStream). */
export class KvSnapshotStream implements SnapshotStream {
  /** Old values of keys changed since the stream began (null: the key did not exist then). */
  readonly kept = new Map<string, string | null>();
  /** Per shard not written yet: keys that existed when the stream began and have changed since. */
  private readonly changedBefore: (string[] | undefined)[] = [];
  /** Per shard: the hashes of the keys in `kept` (the shard's other keys are copied as bytes). */
  private readonly keptHashes: (Set<number> | undefined)[] = [];
  /** The next shard to write, and the pairs of the last one written (whole pairs go in a piece) and where in them. */
  private shardAt = 0;
  private staged: Uint8Array = new Uint8Array(0);
  private at = 0;
  /** Keys of that shard written after `staged`, one by one: those changed since, and big values. */
  private later: string[] = [];
  private laterAt = 0;
  private readonly stage = new ByteWriter(64 * 1024);
  private done = false;

  constructor(
    private readonly kv: KvMachine,
    private readonly store: () => KvStore,
  ) {}

  /** Keep `key`'s value of when the stream began, before its first change (KvMachine.put). */
  keep(key: string, old: string | null): void {
    this.kept.set(key, old);
    const h = keyHash(key);
    const i = h & (SHARDS - 1);
    if (i < this.shardAt) return; // written out already
    (this.keptHashes[i] ??= new Set()).add(h);
    if (old !== null) (this.changedBefore[i] ??= []).push(key);
  }

  next(maxBytes: number): Uint8Array | null {
    if (this.done) return null;
    const w = new ByteWriter(Math.min(maxBytes, 1 << 20) + 64);
    w.u8(KV_PIECE);
    while (w.length < maxBytes) {
      if (this.at < this.staged.length) {
        // Whole pairs from the staged shard, as many as fit (at least one), in one copy.
        const staged = this.staged;
        let end = this.at;
        while (end < staged.length && w.length + (end - this.at) < maxBytes) end = pairEnd(staged, end);
        w.raw(staged.subarray(this.at, end));
        this.at = end;
      } else if (this.laterAt < this.later.length) {
        const k = this.later[this.laterAt++]!;
        const v = this.kv.valueFor(this, k);
        if (v !== undefined) w.latin1(k).latin1(v);
      } else if (!this.stageNextShard()) {
        break;
      }
    }
    if (this.at >= this.staged.length && this.laterAt >= this.later.length && this.shardAt >= SHARDS) this.close();
    return w.unCopied(); // the writer is this piece's alone: no copy (a piece made is garbage soon, and a copy doubled it)
  }

  /**
   * Take the next non-empty shard: its pairs copied as bytes into `staged`, except the keys
   * changed since the stream began (their hash is in keptHashes) and the values kept beside
   * the table (big), which go to `later` with the keys deleted since; those are written a pair
   * at a time, with their value as of the stream's start (valueFor: kept since its first
   * change, whenever that is), so a big value makes a piece of its own as before, not a staging
   * copy. False when no shard is left.
   */
  private stageNextShard(): boolean {
    while (this.shardAt < SHARDS) {
      const i = this.shardAt++;
      const store = this.store();
      const w = this.stage.reset();
      const later: string[] = [];
      store.writeShard(i, w, this.keptHashes[i], (k) => later.push(k));
      for (const k of this.changedBefore[i] ?? []) if (!store.has(k)) later.push(k);
      this.changedBefore[i] = undefined;
      this.keptHashes[i] = undefined;
      if (w.length > 0 || later.length > 0) {
        this.staged = w.unCopied(); // read before the stage is used again (for the next shard)
        this.at = 0;
        this.later = later;
        this.laterAt = 0;
        return true;
      }
    }
    return false;
  }

  close(): void {
    this.done = true;
    this.kept.clear();
    this.staged = new Uint8Array(0);
    this.later = [];
    this.changedBefore.length = 0;
    this.keptHashes.length = 0;
    this.kv.endStream(this);
  }
}

/** Where the (latin1 key, latin1 value) pair at `at` of b ends (b is a stream's own staging: well formed). */
function pairEnd(b: Uint8Array, at: number): number {
  for (let field = 0; field < 2; field++) {
    let n = 0;
    let mul = 1;
    for (;;) {
      const x = b[at++]!;
      n += (x & 0x7f) * mul;
      if (x < 0x80) break;
      mul *= 0x80;
    }
    at += n;
  }
  return at;
}
