// bench/resp-parser.mjs: lockstep's hand-written RESP request parser (src/net/resp.ts) against
// redis-parser (the parser ioredis uses, from npm), on the same bytes, in one process (issue 12,
// item 6: a hand-written part stays only where it is measured to be faster on the hot path).
//
// Each workload is a stream of pipelined commands cut into socket-sized chunks (as a TCP socket
// delivers them); both parsers get the same chunks and must produce the same arguments:
// - ours: RespRequestParser, push() then next() until null: argv as latin1 strings (binary safe);
// - redis-parser with returnBuffers, each argument then made a latin1 string (the same output:
//   `buf+latin1`, the like-for-like column);
// - redis-parser with strings (utf8 decoding: not binary safe, so not a drop-in, but its
//   fastest path on ASCII; shown so the comparison is not only against its slower mode).
// Reported: commands per second (best of --rounds), and the ratio ours / each. Runs its
// workloads in the same process one after the other; nothing else is started.
// Usage: node bench/resp-parser.mjs [--rounds 5] [--ms 400]

import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const require = createRequire(import.meta.url);
const RedisParser = require('redis-parser');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? dflt : process.argv[i + 1];
};
const rounds = Number(arg('--rounds', '5'));
const ms = Number(arg('--ms', '400'));
const dist = resolve(new URL('../dist', import.meta.url).pathname);
const { RespRequestParser, encodeCommand } = await import(pathToFileURL(`${dist}/src/net/resp.js`).href);

/** `count` commands made by `make(i)`, encoded and cut into `chunk`-byte pieces. */
function stream(count, make, chunk) {
  const all = Buffer.concat(Array.from({ length: count }, (_, i) => encodeCommand(make(i))));
  const chunks = [];
  for (let off = 0; off < all.length; off += chunk) chunks.push(all.subarray(off, Math.min(all.length, off + chunk)));
  return { chunks, count, bytes: all.length };
}

const WORKLOADS = [
  { name: 'GET, 16 KiB chunks', ...stream(20_000, (i) => ['GET', `key:${i}`], 16 * 1024) },
  { name: 'SET 16 B values, 16 KiB chunks', ...stream(20_000, (i) => ['SET', `key:${i}`, 'v'.repeat(16)], 16 * 1024) },
  { name: 'SET 1 KiB values, 64 KiB chunks', ...stream(5_000, (i) => ['SET', `key:${i}`, String.fromCharCode(i % 256).repeat(1024)], 64 * 1024) },
  { name: 'SET 1 MiB values, 64 KiB chunks', ...stream(16, (i) => ['SET', `key:${i}`, 'x'.repeat(1 << 20)], 64 * 1024) },
  { name: 'MSET 100 keys, 16 KiB chunks', ...stream(1_000, (i) => ['MSET', ...Array.from({ length: 100 }, (_, j) => [`k:${i}:${j}`, `v${j}`]).flat()], 16 * 1024) },
];

/** A pass of redis-parser over a workload; with `buffers`, each argument is then made a latin1 string. */
function withRedisParser(buffers) {
  return (w) => {
    let n = 0;
    let sum = 0;
    const p = new RedisParser({
      returnBuffers: buffers,
      returnReply(reply) {
        const last = buffers ? reply.map((b) => b.toString('latin1'))[reply.length - 1] : reply[reply.length - 1];
        n++;
        sum += last.length;
      },
      returnError(e) {
        throw e;
      },
    });
    for (const c of w.chunks) p.execute(c);
    return [n, sum];
  };
}

/** One pass of a parser over a workload: the number of commands and a checksum of argument lengths. */
const PARSERS = {
  ours(w) {
    const p = new RespRequestParser({ maxBufferedBytes: 1 << 30 });
    let n = 0;
    let sum = 0;
    for (const c of w.chunks) {
      p.push(c);
      for (let cmd = p.next(); cmd !== null; cmd = p.next()) {
        n++;
        sum += cmd[cmd.length - 1].length;
      }
    }
    return [n, sum];
  },
  'redis-parser buf+latin1': withRedisParser(true),
  'redis-parser utf8': withRedisParser(false),
};

/** Commands per second: passes over the workload for `ms`, best of `rounds`. */
function measure(parse, w) {
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    let passes = 0;
    while (performance.now() - t0 < ms) {
      parse(w);
      passes++;
    }
    best = Math.max(best, (passes * w.count * 1000) / (performance.now() - t0));
  }
  return best;
}

const names = Object.keys(PARSERS);
const fmt = (x) => (x >= 1e6 ? `${(x / 1e6).toFixed(2)}M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)}k` : x.toFixed(0));
console.log(`node ${process.version}; best of ${rounds} rounds of ${ms} ms; commands/s`);
console.log(['workload'.padEnd(34), ...names.map((n) => n.padStart(24)), ...names.slice(1).map((n) => `ours / ${n}`.padStart(31))].join(' '));
for (const w of WORKLOADS) {
  const checks = names.map((n) => JSON.stringify(PARSERS[n](w)));
  if (checks.slice(0, 2).some((c) => c !== checks[0])) throw new Error(`${w.name}: the parsers disagree: ${checks.join(' ')}`);
  if (JSON.parse(checks[0])[0] !== w.count) throw new Error(`${w.name}: ${checks[0]} commands, expected ${w.count}`);
  for (const n of names) measure(PARSERS[n], w); // warm up every parser before any is timed
  const rates = names.map((n) => measure(PARSERS[n], w));
  console.log([w.name.padEnd(34), ...rates.map((r) => fmt(r).padStart(24)), ...rates.slice(1).map((r) => `${(rates[0] / r).toFixed(2)}x`.padStart(31))].join(' '));
}
