// RESP2, the Redis wire protocol: the client port's side (parse requests, encode replies) and
// the client library's side (encode commands, parse replies).
//
// Both parsers are incremental: push() socket chunks as they come, then call next() until it
// returns null. Bytes wait in a ByteQueue (a list of chunks and a read offset): pipelined
// commands are parsed in place with no concatenation, a bulk split over many chunks is joined
// once when complete, and the search for a line end resumes where it stopped. A parser keeps
// the state of a half-read value (arguments so far, the bulk length it waits for), so no byte
// is scanned twice. Every length a peer claims is checked against RespLimits before anything
// is allocated for it, and the bytes held (queued, plus a half-read value's parts) never
// exceed maxBufferedBytes. Any violation throws RespProtocolError; the parser is then unusable
// (the server answers -ERR with the message, as Redis does, and closes the connection).
// Strings are latin1 (one char per byte), as the kv guest takes them: binary safe.

import type { KvReply } from '../guest/kv.js';

export class RespProtocolError extends Error {
  readonly reason: string;
  constructor(reason: string) {
    super(reason);
    this.name = 'RespProtocolError';
    this.reason = reason;
  }
}

export interface RespLimits {
  /** Most elements in one array (a request's arguments, a reply's items). */
  readonly maxArrayLength: number;
  /** Longest bulk string. */
  readonly maxBulkBytes: number;
  /** Longest line: an inline command, a status or error reply, a length header. */
  readonly maxInlineBytes: number;
  /** Most bytes held at once: unparsed input plus the parts of a half-read value. */
  readonly maxBufferedBytes: number;
}

export const DEFAULT_RESP_LIMITS: RespLimits = {
  maxArrayLength: 1_048_576,
  maxBulkBytes: 64 * 1024 * 1024,
  maxInlineBytes: 64 * 1024,
  maxBufferedBytes: 128 * 1024 * 1024,
};

/** A reply as it travels: a KvReply, or also a null array (`*-1`) at any depth. */
export type RespValue =
  | Exclude<KvReply, { readonly kind: 'array' }>
  | { readonly kind: 'array'; readonly items: readonly RespValue[] | null };

/** Arrays nest at most this deep in a parsed reply (Redis replies nest two or three deep). */
const MAX_REPLY_DEPTH = 128;

const CR = 13;
const LF = 10;
const STAR = 42;
const DOLLAR = 36;
const PLUS = 43;
const MINUS = 45;
const COLON = 58;
const EMPTY = Buffer.alloc(0);
/** A bulk over several chunks from this size on is joined as bytes before it becomes a string. */
const JOIN_BYTES = 64 * 1024;

/**
 * Bytes as a latin1 string (a copy: the string does not keep the buffer alive). Node's own
 * latin1Slice, behind toString('latin1'), skips the encoding lookup: ~30% faster on short keys.
 */
type Slicer = (this: Buffer, start: number, end: number) => string;
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice?: Slicer }).latin1Slice;
const latin1: (b: Buffer, start: number, end: number) => string = latin1Slice
  ? (b, start, end) => latin1Slice.call(b, start, end)
  : (b, start, end) => b.toString('latin1', start, end);

/** Unread bytes as a list of chunks. Consumed chunks are dropped; nothing is concatenated. */
class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // first chunk with unread bytes
  private off = 0; // read offset in chunks[head]
  length = 0; // unread bytes
  // findLF's resume point: bytes from the read head known to hold no LF (0: start at the
  // head), and where they end. Any consumption resets it.
  private scanned = 0;
  private scanChunk = 0;
  private scanPos = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** Offset from the read head of the first LF, or -1. */
  findLF(): number {
    const chunks = this.chunks;
    let ci = this.scanned === 0 ? this.head : this.scanChunk;
    let pos = this.scanned === 0 ? this.off : this.scanPos;
    for (; ci < chunks.length; ci++, pos = 0) {
      const c = chunks[ci]!;
      // Header lines are short: a few bytes scanned in JS beat a call into indexOf.
      const stop = Math.min(pos + 24, c.length);
      let i = pos;
      while (i < stop && c[i] !== LF) i++;
      if (i === stop) i = stop === c.length ? -1 : c.indexOf(LF, stop);
      if (i >= 0) {
        this.scanChunk = ci;
        this.scanPos = pos;
        return this.scanned + i - pos;
      }
      this.scanned += c.length - pos;
    }
    this.scanChunk = ci;
    this.scanPos = 0;
    return -1;
  }

  /** The byte at offset i (< length) from the read head. */
  byteAt(i: number): number {
    let ci = this.head;
    i += this.off;
    for (;;) {
      const c = this.chunks[ci++]!;
      if (i < c.length) return c[i]!;
      i -= c.length;
    }
  }

  skip(n: number): void {
    this.length -= n;
    this.scanned = 0;
    if (this.length === 0) {
      this.chunks = [];
      this.head = 0;
      this.off = 0;
      return;
    }
    const chunks = this.chunks;
    let off = this.off + n;
    let head = this.head;
    while (off >= chunks[head]!.length) off -= chunks[head++]!.length;
    if (head >= 64 && head * 2 >= chunks.length) {
      chunks.splice(0, head);
      head = 0;
    }
    this.head = head;
    this.off = off;
  }

  /** Consume a length header line of lf + 1 bytes (lf from findLF): its value, or NaN. */
  takeLength(lf: number): number {
    const c = this.chunks[this.head]!;
    const off = this.off;
    if (off + lf >= c.length) {
      const line = this.take(lf + 1);
      return parseLength(line, 0, lf + 1);
    }
    this.skip(lf + 1);
    return parseLength(c, off, off + lf + 1);
  }

  /** Consume n (<= length) bytes: a view if they lie in one chunk, else one copy. */
  take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const c = this.chunks[this.head]!;
    let out: Buffer;
    if (this.off + n <= c.length) out = c.subarray(this.off, this.off + n);
    else {
      out = Buffer.allocUnsafe(n);
      let w = 0;
      for (let ci = this.head, pos = this.off; w < n; ci++, pos = 0) {
        const src = this.chunks[ci]!;
        const k = Math.min(n - w, src.length - pos);
        src.copy(out, w, pos, pos + k);
        w += k;
      }
    }
    this.skip(n);
    return out;
  }

  /** Consume n bytes and the CRLF after them (n + 2 <= length); null if the CRLF is not there. */
  takeLatin1Crlf(n: number): string | null {
    const c = this.chunks[this.head]!;
    const off = this.off;
    let s: string;
    if (off + n + 2 <= c.length) {
      if (c[off + n] !== CR || c[off + n + 1] !== LF) return null;
      s = latin1(c, off, off + n);
    } else {
      if (this.byteAt(n) !== CR || this.byteAt(n + 1) !== LF) return null;
      if (n >= JOIN_BYTES) {
        // A big bulk over many chunks: join the bytes once (outside V8's heap), then one
        // string. A string of chunk strings would be copied by the young-generation GC and
        // flattened later: seconds for 64 MiB (issue 14 item 4).
        const joined = this.take(n);
        this.skip(2);
        return latin1(joined, 0, n);
      }
      s = '';
      for (let ci = this.head, pos = off, left = n; left > 0; ci++, pos = 0) {
        const src = this.chunks[ci]!;
        const k = Math.min(left, src.length - pos);
        s += latin1(src, pos, pos + k);
        left -= k;
      }
    }
    this.skip(n + 2);
    return s;
  }
}

/**
 * A length header line buf[start, stop) (type byte, digits, CRLF) as a number: NaN if it is
 * not one. At most 15 digits, so the value is exact; longer is beyond every limit anyway.
 */
function parseLength(line: Buffer, start: number, stop: number): number {
  const end = stop - 2;
  if (end < start + 2 || line[end] !== CR) return NaN;
  let i = start + 1;
  const neg = line[i] === MINUS;
  if (neg && ++i === end) return NaN;
  if (end - i > 15) return NaN;
  // As Redis's string2ll: no leading zeros ("$04", "*01") and no "-0".
  if (line[i] === 48 && (end - i > 1 || neg)) return NaN;
  let v = 0;
  for (; i < end; i++) {
    const d = line[i]! - 48;
    if (d < 0 || d > 9) return NaN;
    v = v * 10 + d;
  }
  return neg ? -v : v;
}

function showByte(b: number): string {
  return b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
}

/**
 * An inline command's arguments, as redis-server's sdssplitargs splits them: on runs of
 * blanks, with "double quotes" (escapes \n \r \t \b \a \\ \" and \xHH) and 'single
 * quotes' (only \' escaped). A quote must close, and be followed by a blank or the end.
 */
export function splitInline(line: string): string[] {
  const args: string[] = [];
  const blank = (c: string | undefined): boolean => c === ' ' || c === '\t' || c === '\r' || c === '\n' || c === '\v' || c === '\f';
  const hex = (c: string | undefined): boolean => c !== undefined && /^[0-9a-fA-F]$/.test(c);
  let i = 0;
  for (;;) {
    while (blank(line[i])) i++;
    if (i >= line.length) return args;
    let cur = '';
    let quote: '"' | "'" | null = null;
    for (;;) {
      const c = line[i];
      if (quote === '"') {
        if (c === undefined) throw new RespProtocolError('Protocol error: unbalanced quotes in request');
        if (c === '\\' && line[i + 1] === 'x' && hex(line[i + 2]) && hex(line[i + 3])) {
          cur += String.fromCharCode(Number.parseInt(line.slice(i + 2, i + 4), 16));
          i += 4;
          continue;
        }
        if (c === '\\' && line[i + 1] !== undefined) {
          const e = line[i + 1]!;
          cur += e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e === 'b' ? '\b' : e === 'a' ? '\x07' : e;
          i += 2;
          continue;
        }
        if (c === '"') {
          if (line[i + 1] !== undefined && !blank(line[i + 1])) throw new RespProtocolError('Protocol error: unbalanced quotes in request');
          i++;
          break;
        }
        cur += c;
        i++;
      } else if (quote === "'") {
        if (c === undefined) throw new RespProtocolError('Protocol error: unbalanced quotes in request');
        if (c === '\\' && line[i + 1] === "'") {
          cur += "'";
          i += 2;
          continue;
        }
        if (c === "'") {
          if (line[i + 1] !== undefined && !blank(line[i + 1])) throw new RespProtocolError('Protocol error: unbalanced quotes in request');
          i++;
          break;
        }
        cur += c;
        i++;
      } else {
        if (c === undefined || blank(c)) break;
        if (c === '"' || c === "'") quote = c;
        else cur += c;
        i++;
      }
    }
    args.push(cur);
  }
}

/** Shared by both parsers: the queue, the limits, line reading and the held-bytes bound. */
abstract class RespParser {
  protected readonly limits: RespLimits;
  protected readonly q = new ByteQueue();
  /** Bytes of the current half-read value already moved out of the queue. */
  protected held = 0;

  constructor(limits: Partial<RespLimits> = {}) {
    this.limits = { ...DEFAULT_RESP_LIMITS, ...limits };
  }

  /** Bytes held now: unparsed input plus the parts of a half-read value. */
  get bufferedBytes(): number {
    return this.q.length + this.held;
  }

  push(chunk: Buffer): void {
    if (this.q.length + this.held + chunk.length > this.limits.maxBufferedBytes) {
      throw new RespProtocolError(`Protocol error: more than ${this.limits.maxBufferedBytes} bytes buffered`);
    }
    this.q.push(chunk);
  }

  /** The length of the next line, LF excluded, or -1 until it is complete. */
  protected lineEnd(tooBig: string): number {
    const lf = this.q.findLF();
    if (lf < 0 ? this.q.length > this.limits.maxInlineBytes : lf > this.limits.maxInlineBytes) {
      throw new RespProtocolError(tooBig);
    }
    return lf;
  }

  /** The next line, LF included, or null until it is complete. */
  protected line(tooBig: string): Buffer | null {
    const lf = this.lineEnd(tooBig);
    return lf < 0 ? null : this.q.take(lf + 1);
  }
}

/** The server side: client requests (arrays of bulk strings, or inline lines) as argv. */
export class RespRequestParser extends RespParser {
  private args: string[] | null = null; // the arguments of a half-read array
  private want = 0; // arguments still to read
  private bulk = -1; // the length of the bulk waited for; -1: reading its header

  /** The next complete command, or null until more bytes arrive. */
  next(): string[] | null {
    const q = this.q;
    for (;;) {
      if (this.args === null) {
        if (q.length === 0) return null;
        if (q.byteAt(0) !== STAR) {
          const cmd = this.inline();
          if (cmd === null) return null;
          if (cmd.length > 0) return cmd;
          continue;
        }
        const lf = this.lineEnd('Protocol error: too big mbulk count string');
        if (lf < 0) return null;
        const n = q.takeLength(lf);
        if (n === 0 || n === -1) continue; // an empty or null array: nothing to run
        if (!(n > 0 && n <= this.limits.maxArrayLength)) throw new RespProtocolError('Protocol error: invalid multibulk length');
        this.args = [];
        this.want = n;
        this.held = lf + 1;
      }
      const args = this.args;
      while (this.want > 0) {
        if (this.bulk < 0) {
          if (q.length === 0) return null;
          const b = q.byteAt(0);
          if (b !== DOLLAR) throw new RespProtocolError(`Protocol error: expected '$', got '${showByte(b)}'`);
          const lf = this.lineEnd('Protocol error: too big bulk count string');
          if (lf < 0) return null;
          const len = q.takeLength(lf);
          if (!(len >= 0 && len <= this.limits.maxBulkBytes)) throw new RespProtocolError('Protocol error: invalid bulk length');
          this.bulk = len;
          this.held += lf + 1;
        }
        if (q.length < this.bulk + 2) return null;
        const s = q.takeLatin1Crlf(this.bulk);
        if (s === null) throw new RespProtocolError('Protocol error: expected CRLF after bulk string');
        args.push(s);
        this.held += this.bulk + 2;
        this.bulk = -1;
        this.want--;
      }
      this.args = null;
      this.held = 0;
      return args;
    }
  }

  private inline(): string[] | null {
    const line = this.line('Protocol error: too big inline request');
    if (line === null) return null;
    return splitInline(latin1(line, 0, line.length - 1));
  }
}

/**
 * The client side: server replies as KvReplies. A null array (`*-1`) comes out as a null bulk,
 * as hiredis makes both REDIS_REPLY_NIL: RESP2 clients do not tell the two apart.
 */
export class RespReplyParser extends RespParser {
  private readonly stack: { items: KvReply[]; want: number }[] = []; // open arrays
  private bulk = -1; // the length of the bulk waited for; -1: reading a line

  /** The next complete reply, or null until more bytes arrive. */
  next(): KvReply | null {
    const q = this.q;
    for (;;) {
      let v: KvReply;
      if (this.bulk >= 0) {
        if (q.length < this.bulk + 2) return null;
        const s = q.takeLatin1Crlf(this.bulk);
        if (s === null) throw new RespProtocolError('Protocol error: expected CRLF after bulk string');
        this.held += this.bulk + 2;
        this.bulk = -1;
        v = { kind: 'bulk', value: s };
      } else {
        if (q.length === 0) return null;
        const line = this.line('Protocol error: too long reply line');
        if (line === null) return null;
        const end = line.length - 2;
        if (end < 1 || line[end] !== CR) throw new RespProtocolError('Protocol error: reply line not ended by CRLF');
        this.held += line.length;
        switch (line[0]) {
          case PLUS:
            v = { kind: 'status', value: latin1(line, 1, end) };
            break;
          case MINUS:
            v = { kind: 'error', message: latin1(line, 1, end) };
            break;
          case COLON: {
            const s = latin1(line, 1, end);
            if (!/^-?[0-9]{1,19}$/.test(s)) throw new RespProtocolError('Protocol error: invalid integer reply');
            v = { kind: 'integer', value: BigInt(s) };
            break;
          }
          case DOLLAR: {
            const n = parseLength(line, 0, line.length);
            if (n === -1) {
              v = { kind: 'bulk', value: null };
              break;
            }
            if (!(n >= 0 && n <= this.limits.maxBulkBytes)) throw new RespProtocolError('Protocol error: invalid bulk length');
            this.bulk = n;
            continue;
          }
          case STAR: {
            const n = parseLength(line, 0, line.length);
            if (n === -1 || n === 0) {
              v = n === 0 ? { kind: 'array', items: [] } : { kind: 'bulk', value: null };
              break;
            }
            if (!(n > 0 && n <= this.limits.maxArrayLength)) throw new RespProtocolError('Protocol error: invalid multibulk length');
            if (this.stack.length >= MAX_REPLY_DEPTH) throw new RespProtocolError('Protocol error: arrays nested too deep');
            this.stack.push({ items: [], want: n });
            continue;
          }
          default:
            throw new RespProtocolError(`Protocol error: unknown reply type '${showByte(line[0]!)}'`);
        }
      }
      // A complete value: it closes every open array it is the last item of.
      for (;;) {
        const top = this.stack[this.stack.length - 1];
        if (top === undefined) {
          this.held = 0;
          return v;
        }
        top.items.push(v);
        if (--top.want > 0) break;
        this.stack.pop();
        v = { kind: 'array', items: top.items };
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding: measure, allocate once, write. Strings are written as latin1 (one byte per char).

function digits(n: number): number {
  let d = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    d++;
  }
  return d;
}

/** A status or error line cannot hold CR or LF (a reply that echoes input would inject). */
function oneLine(s: string): string {
  return s.indexOf('\r') < 0 && s.indexOf('\n') < 0 ? s : s.replace(/[\r\n]/g, ' ');
}

/** The encoded size of a reply, computed without encoding it (to refuse one too large first). */
export function replySize(r: RespValue): number {
  switch (r.kind) {
    case 'status':
      return r.value.length + 3;
    case 'error':
      return r.message.length + 3;
    case 'integer':
      return r.value.toString().length + 3;
    case 'bulk':
      return r.value === null ? 5 : r.value.length + digits(r.value.length) + 5;
    case 'array': {
      if (r.items === null) return 5;
      let n = digits(r.items.length) + 3;
      for (const item of r.items) n += replySize(item);
      return n;
    }
  }
}

function writeLine(buf: Buffer, pos: number, type: number, s: string): number {
  buf[pos++] = type;
  pos += buf.write(s, pos, 'latin1');
  buf[pos++] = CR;
  buf[pos++] = LF;
  return pos;
}

function writeBulk(buf: Buffer, pos: number, s: string): number {
  pos = writeLine(buf, pos, DOLLAR, String(s.length));
  pos += buf.write(s, pos, 'latin1');
  buf[pos++] = CR;
  buf[pos++] = LF;
  return pos;
}

function writeReply(buf: Buffer, pos: number, r: RespValue): number {
  switch (r.kind) {
    case 'status':
      return writeLine(buf, pos, PLUS, oneLine(r.value));
    case 'error':
      return writeLine(buf, pos, MINUS, oneLine(r.message));
    case 'integer':
      return writeLine(buf, pos, COLON, r.value.toString());
    case 'bulk':
      return r.value === null ? writeLine(buf, pos, DOLLAR, '-1') : writeBulk(buf, pos, r.value);
    case 'array':
      if (r.items === null) return writeLine(buf, pos, STAR, '-1');
      pos = writeLine(buf, pos, STAR, String(r.items.length));
      for (const item of r.items) pos = writeReply(buf, pos, item);
      return pos;
  }
}

/** One reply on the wire. CR/LF in a status or error line become spaces. */
export function encodeReply(reply: RespValue): Buffer {
  const buf = Buffer.allocUnsafe(replySize(reply));
  writeReply(buf, 0, reply);
  return buf;
}

/** Several replies in one buffer, for one socket write per batch. */
export function encodeReplies(replies: readonly RespValue[]): Buffer {
  let n = 0;
  for (const r of replies) n += replySize(r);
  const buf = Buffer.allocUnsafe(n);
  let pos = 0;
  for (const r of replies) pos = writeReply(buf, pos, r);
  return buf;
}

/** A command as the client sends it: an array of bulk strings (latin1). */
export function encodeCommand(args: readonly string[]): Buffer {
  let n = digits(args.length) + 3;
  for (const a of args) n += a.length + digits(a.length) + 5;
  const buf = Buffer.allocUnsafe(n);
  let pos = writeLine(buf, 0, STAR, String(args.length));
  for (const a of args) pos = writeBulk(buf, pos, a);
  return buf;
}
