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
// the digest is an order-independent sum of per-pair hashes, updated on every write (O(1)).

import type { GuestCodec, Execution, StateMachine } from './types.js';
import { ByteReader, ByteWriter, Hash64, SumDigest } from './bytes.js';

export type KvCommand = readonly string[];

export type KvReply =
  | { readonly kind: 'status'; readonly value: string }
  | { readonly kind: 'error'; readonly message: string }
  | { readonly kind: 'integer'; readonly value: bigint }
  | { readonly kind: 'bulk'; readonly value: string | null }
  | { readonly kind: 'array'; readonly items: readonly KvReply[] };

/** Writes in order; a null value deletes the key. */
export type KvChange = { readonly writes: readonly (readonly [key: string, value: string | null])[] };

type Write = readonly [key: string, value: string | null];

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

  private data = new Map<string, string>();
  /** The longest value a command may make (Redis's proto-max-bulk-len); the same on every replica. */
  private readonly maxValueBytes: number;
  private readonly sum = new SumDigest();
  private readonly h = new Hash64();

  constructor(maxValueBytes = MAX_STRING) {
    this.maxValueBytes = maxValueBytes;
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

  execute(args: KvCommand): Execution<KvReply, KvChange> {
    const writes: Write[] = [];
    const reply = this.run(args, writes);
    return { reply, change: writes.length === 0 ? null : { writes } };
  }

  applyChange(change: KvChange): void {
    for (const [key, value] of change.writes) this.put(key, value);
  }

  snapshot(): Uint8Array {
    const keys = [...this.data.keys()].sort();
    const w = new ByteWriter(64 + keys.length * 16);
    w.u8(1).varuint(keys.length);
    for (const k of keys) w.latin1(k).latin1(this.data.get(k)!);
    return w.finish();
  }

  restore(snapshot: Uint8Array): void {
    const r = new ByteReader(snapshot, 'kv snapshot');
    if (r.u8() !== 1) r.corrupt('unknown kv snapshot version');
    const n = r.varuint();
    if (n > r.remaining) r.corrupt('key count larger than the snapshot');
    const data = new Map<string, string>();
    let prev: string | null = null;
    for (let i = 0; i < n; i++) {
      const k = r.latin1();
      if (prev !== null && !(prev < k)) r.corrupt('keys not strictly sorted');
      data.set(k, r.latin1());
      prev = k;
    }
    r.end();
    this.data = data;
    this.recomputeDigest(this.sum);
  }

  /** Incremental, order-independent digest of the whole store: O(1). */
  digest(): string {
    return this.sum.hex();
  }

  /** The same digest recomputed from scratch (O(n)): tests check it equals digest(). */
  fullDigest(): string {
    const s = new SumDigest();
    this.recomputeDigest(s);
    return s.hex();
  }

  private recomputeDigest(s: SumDigest): void {
    s.clear();
    for (const [k, v] of this.data) s.add(this.h.reset().str(k).str(v));
  }

  /** Set (or delete, value null) and keep the digest in step. */
  private put(key: string, value: string | null): void {
    const old = this.data.get(key);
    if (old !== undefined) this.sum.sub(this.h.reset().str(key).str(old));
    if (value === null) {
      this.data.delete(key);
    } else {
      this.data.set(key, value);
      this.sum.add(this.h.reset().str(key).str(value));
    }
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
        const value = old + add;
        this.write(writes, a1, value);
        return int(value.length);
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
        const items: KvReply[] = [];
        for (let i = 1; i < n; i++) items.push({ kind: 'bulk', value: this.data.get(args[i]!) ?? null });
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

/** A kv machine whose values are at most `maxValueBytes` long (default and ceiling: what a string can hold). */
export function createKv(maxValueBytes = MAX_STRING): KvMachine {
  return new KvMachine(Math.min(maxValueBytes, MAX_STRING));
}

// ---------------------------------------------------------------------------------------------
// Codec. Command: varuint argc, latin1 args. Change: varuint count, then per write u8 (0 delete,
// 1 set), latin1 key, [latin1 value]. Reply: u8 tag, then
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
    const w = scratch.reset().varuint(command.length);
    for (const a of command) w.latin1(a);
    return w.finish();
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
    return scratch.finish();
  },
  decodeReply(bytes) {
    const r = new ByteReader(bytes, 'kv reply');
    const reply = readReply(r, 0);
    r.end();
    return reply;
  },
  encodeChange(change) {
    const w = scratch.reset().varuint(change.writes.length);
    for (const [k, v] of change.writes) {
      if (v === null) w.u8(0).latin1(k);
      else w.u8(1).latin1(k).latin1(v);
    }
    return w.finish();
  },
  decodeChange(bytes) {
    const r = new ByteReader(bytes, 'kv change');
    const n = r.varuint();
    if (n > r.remaining) r.corrupt('write count larger than the input');
    const writes: Write[] = [];
    for (let i = 0; i < n; i++) {
      const op = r.u8();
      if (op > 1) r.corrupt(`unknown write op ${op}`);
      const k = r.latin1();
      writes.push([k, op === 0 ? null : r.latin1()]);
    }
    r.end();
    return { writes };
  },
};
