// The digest hash of one kv pair, at native speed for big values (issue 14 item 4).
//
// Every write changes the state digest by the hash of the pair it removes and the pair it
// adds (kv.ts). Hash64 runs in JS, one step per char: fine for a short value, but a 64 MiB
// value took most of a second per hash, and an APPEND rehashed the whole value. So:
//
//   value shorter than BIG_VALUE_CHARS  Hash64 of (key, value), as always;
//   longer                              Hash64 of (tag 3, key, length, SHA-256 of the value).
//
// SHA-256 comes from node:crypto (native; SHA-NI where the CPU has it), fed through a reused
// 1 MiB buffer so a big string is never copied into a fresh buffer of its own size (fresh
// memory costs page faults: about 3 ms per MiB on the machine these numbers come from). A
// value of LIVE_HASH_CHARS or more keeps its running SHA-256 context, so an APPEND hashes only
// the appended bytes (`hash.copy()` finalises a copy, the context carries on). Every replica
// computes the same digest whatever path it took (executing, installing a change, restoring a
// snapshot): SHA-256 of the same bytes is the same, extended or not.

import { createHash, type Hash } from 'node:crypto';
import { Hash64, writeLatin1 } from './bytes.js';

/** From this length on a value is hashed with SHA-256 (the same constant on every replica). */
export const BIG_VALUE_CHARS = 4096;
/** From this length on a value keeps its running SHA-256 context for appends. */
export const LIVE_HASH_CHARS = 64 * 1024;
const FEED_BYTES = 1024 * 1024;
const TWO32 = 0x1_0000_0000;

let feed: Uint8Array | null = null;

/** Add latin1 `s` to `h`, a MiB at a time through one reused buffer. */
export function feedLatin1(h: Hash, s: string): void {
  const buf = (feed ??= new Uint8Array(FEED_BYTES));
  for (let i = 0; i < s.length; i += FEED_BYTES) {
    const part = s.length <= FEED_BYTES ? s : s.slice(i, i + FEED_BYTES);
    writeLatin1(buf, 0, part);
    h.update(buf.subarray(0, part.length));
  }
}

/** What a big value's pair contributes to the digest, and its running hash (or null). */
export interface BigPair {
  readonly a: number;
  readonly b: number;
  readonly length: number;
  /** The SHA-256 context over the whole value, kept for values of LIVE_HASH_CHARS or more. */
  readonly live: Hash | null;
}

/** The pair (key, value) of a big value, from a SHA-256 context over exactly the value. */
function finish(h64: Hash64, key: string, length: number, sha: Hash): { a: number; b: number } {
  const d = (length >= LIVE_HASH_CHARS ? sha.copy() : sha).digest();
  h64.reset().u32(3).str(key).u32(length % TWO32).u32(Math.floor(length / TWO32));
  for (let i = 0; i < 32; i += 4) h64.u32(d.readUInt32LE(i));
  return { a: h64.a, b: h64.b };
}

/** Hash a big value (length >= BIG_VALUE_CHARS) from scratch. */
export function hashBig(h64: Hash64, key: string, value: string): BigPair {
  const sha = createHash('sha256');
  feedLatin1(sha, value);
  const { a, b } = finish(h64, key, value.length, sha);
  return { a, b, length: value.length, live: value.length >= LIVE_HASH_CHARS ? sha : null };
}

/**
 * The pair after appending `add` to a big value whose pair is `old` and whose whole new value
 * is `value`: only `add` is hashed when the old value kept its context.
 */
export function appendBig(h64: Hash64, key: string, old: BigPair, add: string, value: string): BigPair {
  if (old.live === null) return hashBig(h64, key, value);
  feedLatin1(old.live, add);
  const { a, b } = finish(h64, key, value.length, old.live);
  return { a, b, length: value.length, live: old.live };
}
