// The kv snapshot stream into a restore, in one process (issue 9): how long the primary's side
// (making the pieces) and the recruit's side (restoring them) take for N keys of 16-byte
// values, with nothing else running in the process. The recruit of bench/recruit.mjs does the
// same work on two processes, plus the peer frames and acks.
//
//   npm run build && node --max-old-space-size=3000 bench/kv-snapshot.mjs [--keys N] [--piece-kb KB]
//
// Prints one JSON line: load, produce and restore times, the longest piece made and restored,
// and whether the restored digest is the original's.

import { createKv } from '../dist/src/guest/kv.js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const KEYS = Number(arg('--keys', '1000000'));
const PIECE = Number(arg('--piece-kb', '64')) * 1024;
const ms = (x) => Math.round(x * 10) / 10;

const kv = createKv();
let t = performance.now();
for (let i = 0; i < KEYS; i++) kv.applyChange({ writes: [[`key:${i}`, '0123456789abcdef']] });
const loadMs = performance.now() - t;

const pieces = [];
let bytes = 0;
let maxNextMs = 0;
t = performance.now();
const s = kv.snapshotStream();
for (;;) {
  const a = performance.now();
  const p = s.next(PIECE);
  if (p === null) break;
  maxNextMs = Math.max(maxNextMs, performance.now() - a);
  pieces.push(p);
  bytes += p.length;
}
const produceMs = performance.now() - t;

const copy = createKv();
const r = copy.restoreStream();
let maxAddMs = 0;
t = performance.now();
for (const p of pieces) {
  const a = performance.now();
  r.add(p);
  maxAddMs = Math.max(maxAddMs, performance.now() - a);
}
r.finish();
const restoreMs = performance.now() - t;

process.stdout.write(JSON.stringify({
  keys: KEYS, pieceBytes: PIECE, pieces: pieces.length, bytes,
  loadMs: Math.round(loadMs), produceMs: Math.round(produceMs), maxNextMs: ms(maxNextMs),
  restoreMs: Math.round(restoreMs), maxAddMs: ms(maxAddMs), sameDigest: copy.digest() === kv.digest(),
}) + '\n');
