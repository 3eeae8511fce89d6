// Tests for the RESP2 layer (src/net/resp.ts): request parsing split at every byte boundary,
// inline commands, binary safety, every protocol error with bounded memory, a seeded fuzz,
// byte-exact reply encoding against Redis wire strings, and reply parser round trips.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_RESP_LIMITS,
  RespProtocolError,
  RespReplyParser,
  RespRequestParser,
  encodeCommand,
  encodeReplies,
  splitInline,
  encodeReply,
  type RespLimits,
  type RespValue,
} from '../src/net/resp.js';
import type { KvReply } from '../src/guest/kv.js';
import { Rng } from '../src/sim/rng.js';
import { fuzzIterations } from '../src/testing/fuzz-scale.js';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');
const ALL_BYTES = String.fromCharCode(...Array.from({ length: 256 }, (_, i) => i));

/** Feed chunks, draining after each push, and collect every command. */
function parseAll(chunks: readonly Buffer[], limits?: Partial<RespLimits>): string[][] {
  const p = new RespRequestParser(limits);
  const out: string[][] = [];
  for (const c of chunks) {
    p.push(c);
    for (let cmd = p.next(); cmd !== null; cmd = p.next()) out.push(cmd);
  }
  assert.equal(p.bufferedBytes, 0, 'everything consumed');
  return out;
}

function splits(buf: Buffer, ...at: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const i of [...at, buf.length]) {
    out.push(buf.subarray(prev, i));
    prev = i;
  }
  return out;
}

function protocolError(f: () => unknown, re?: RegExp): void {
  assert.throws(f, (e: unknown) => e instanceof RespProtocolError && (re === undefined || re.test(e.message)));
}

/** Push the input in one chunk and drain: must throw RespProtocolError. */
function rejects(input: string | Buffer, re?: RegExp, limits?: Partial<RespLimits>): void {
  const p = new RespRequestParser(limits);
  protocolError(() => {
    p.push(typeof input === 'string' ? b(input) : input);
    while (p.next() !== null);
  }, re);
}

const STREAM_CMDS: string[][] = [
  ['SET', 'key', 'value'],
  ['GET', 'key'],
  ['SET', 'bin\r\nkey', ALL_BYTES],
  ['SET', '', ''],
  ['PING'],
  ['MSET', 'a', '1', 'b', '2'],
  ['INCR', 'counter'],
];
const STREAM = Buffer.concat([
  ...STREAM_CMDS.slice(0, 4).map(encodeCommand),
  b('PING\r\n'),
  b('*0\r\n'), // empty array: skipped
  b('\r\n'), // empty inline line: skipped
  b('*-1\r\n'), // null array: skipped
  encodeCommand(STREAM_CMDS[5]!),
  b('  INCR \t counter  \n'), // inline, LF only, extra blanks
]);

test('pipelined commands split at every byte boundary, and at every pair of boundaries', () => {
  assert.deepEqual(parseAll([STREAM]), STREAM_CMDS);
  for (let i = 0; i <= STREAM.length; i++) assert.deepEqual(parseAll(splits(STREAM, i)), STREAM_CMDS, `split at ${i}`);
  for (let i = 0; i <= STREAM.length; i += 3) {
    for (let j = i; j <= STREAM.length; j += 5) assert.deepEqual(parseAll(splits(STREAM, i, j)), STREAM_CMDS, `split at ${i},${j}`);
  }
  const bytes = Array.from({ length: STREAM.length }, (_, i) => STREAM.subarray(i, i + 1));
  assert.deepEqual(parseAll(bytes), STREAM_CMDS, 'one byte at a time');
});

test('many pipelined commands in one chunk, and a chunk ending mid-command', () => {
  const cmds = Array.from({ length: 1000 }, (_, i) => ['SET', `key:${i}`, 'x'.repeat(i % 50)]);
  const wire = Buffer.concat(cmds.map(encodeCommand));
  assert.deepEqual(parseAll([wire]), cmds);
  assert.deepEqual(parseAll(splits(wire, 7777, 7778, 20000)), cmds);
  const p = new RespRequestParser();
  p.push(wire.subarray(0, 100));
  const got: string[][] = [];
  for (let c = p.next(); c !== null; c = p.next()) got.push(c);
  assert.ok(got.length >= 1 && p.next() === null);
});

test('inline commands as telnet sends them', () => {
  assert.deepEqual(parseAll([b('SET k v\r\nGET k\n')]), [['SET', 'k', 'v'], ['GET', 'k']]);
  assert.deepEqual(parseAll([b('\r\n\n   \r\n\t\n')]), [], 'blank lines yield nothing');
  assert.deepEqual(parseAll([b('  ping  \r\n')]), [['ping']]);
  assert.deepEqual(parseAll([b('set k \xa0\xff\x00\r\n')]), [['set', 'k', '\xa0\xff\x00']], 'latin1 bytes are not blanks');
  assert.deepEqual(parseAll([b('a\rb c\r\n')]), [['a', 'b', 'c']], 'a CR inside is a blank, as sdssplitargs');
});

test('inline commands: quoting as redis-server (sdssplitargs)', () => {
  const table: [string, string[]][] = [
    ['SET k "hello world"', ['SET', 'k', 'hello world']],
    ['SET k ""', ['SET', 'k', '']],
    ['SET k "a\\nb\\t\\"q\\"\\x41\\\\"', ['SET', 'k', 'a\nb\t"q"A\\']],
    ["SET k 'it\\'s \\n'", ['SET', 'k', "it's \\n"]],
    ['SET k "\\xZZ"', ['SET', 'k', 'xZZ']],
    ['  GET   "k k"  ', ['GET', 'k k']],
  ];
  for (const [line, want] of table) {
    assert.deepEqual(splitInline(line), want, line);
    assert.deepEqual(parseAll([b(`${line}\r\n`)]), [want], line);
  }
  for (const bad of ['SET k "open', "SET k 'open", 'SET k "a"b', "SET k 'a'b", "SET k 'it''s'"]) {
    assert.throws(() => splitInline(bad), /Protocol error: unbalanced quotes in request/, bad);
    rejects(`${bad}\r\n`, /unbalanced quotes/);
  }
});

test('bulk strings are binary safe: CRLF inside and every byte 0-255', () => {
  const vals = [ALL_BYTES, '\r\n', '\r\n\r\n*1\r\n$1\r\n', '$-1\r\n', '\0', ALL_BYTES.repeat(300)];
  const cmd = ['SET', ...vals];
  const wire = encodeCommand(cmd);
  assert.deepEqual(parseAll([wire]), [cmd]);
  for (let i = 0; i < 2000; i += 7) assert.deepEqual(parseAll(splits(wire, i)), [cmd]);
});

test('a big bulk in many chunks, a long inline line byte by byte', () => {
  const big = 'v'.repeat(3 << 20);
  const wire = encodeCommand(['SET', 'k', big]);
  const chunks: Buffer[] = [];
  for (let i = 0; i < wire.length; i += 1000) chunks.push(wire.subarray(i, i + 1000));
  assert.deepEqual(parseAll(chunks), [['SET', 'k', big]]);
  const line = `SET k ${'x'.repeat(60_000)}\r\n`;
  const bytes = Array.from({ length: line.length }, (_, i) => b(line[i]!));
  assert.deepEqual(parseAll(bytes), [['SET', 'k', 'x'.repeat(60_000)]]);
});

test('every protocol error is a RespProtocolError', () => {
  rejects('*10000000\r\n', /invalid multibulk length/);
  rejects(`*${DEFAULT_RESP_LIMITS.maxArrayLength + 1}\r\n`, /invalid multibulk length/);
  rejects('*1\r\n$1000000000\r\n', /invalid bulk length/);
  rejects(`*1\r\n$${DEFAULT_RESP_LIMITS.maxBulkBytes + 1}\r\n`, /invalid bulk length/);
  rejects('*-2\r\n', /invalid multibulk length/);
  rejects('*1\r\n$-1\r\n', /invalid bulk length/);
  rejects('*1\r\n$-2\r\n', /invalid bulk length/);
  rejects('*abc\r\n', /invalid multibulk length/);
  rejects('*\r\n', /invalid multibulk length/);
  rejects('*-\r\n', /invalid multibulk length/);
  rejects('*1 \r\n', /invalid multibulk length/);
  rejects('*1\n', /invalid multibulk length/, undefined); // the count line must end with CRLF
  rejects('*99999999999999999999\r\n', /invalid multibulk length/);
  rejects('*1\r\n$x\r\n', /invalid bulk length/);
  rejects('*1\r\n$1.5\r\n', /invalid bulk length/);
  // Leading zeros and -0, as Redis's string2ll refuses them.
  rejects('*01\r\n$1\r\na\r\n', /invalid multibulk length/);
  rejects('*1\r\n$04\r\nabcd\r\n', /invalid bulk length/);
  rejects('*1\r\n$-0\r\n', /invalid bulk length/);
  rejects('*-0\r\n', /invalid multibulk length/);
  rejects('*1\r\n$3\r\nfooXY', /expected CRLF after bulk/);
  rejects('*1\r\n$3\r\nfoo\rX', /expected CRLF after bulk/);
  rejects('*1\r\n$3\r\nfoo\n\r', /expected CRLF after bulk/);
  rejects('*1\r\n:1\r\n', /expected '\$', got ':'/);
  rejects('*2\r\n$1\r\na\r\n*1\r\n', /expected '\$', got '\*'/);
  rejects('*1\r\n\x00', /expected '\$', got '\\x00'/);
  rejects('x'.repeat(101), /too big inline request/, { maxInlineBytes: 100 });
  rejects(`${'x'.repeat(101)}\r\n`, /too big inline request/, { maxInlineBytes: 100 });
  rejects(`*${'1'.repeat(200)}`, /too big mbulk count string/, { maxInlineBytes: 100 });
  rejects(`*1\r\n$${'1'.repeat(200)}`, /too big bulk count string/, { maxInlineBytes: 100 });
  rejects('x'.repeat(1001), /bytes buffered/, { maxBufferedBytes: 1000 });
});

test('lengths are refused at once, before their bytes arrive, and memory stays bounded', () => {
  // A huge claimed array or bulk throws on the header alone.
  for (const header of ['*10000000\r\n', '*1\r\n$1000000000\r\n']) {
    const p = new RespRequestParser();
    p.push(b(header));
    protocolError(() => p.next());
  }
  // A big bulk that is allowed is waited for without allocating for it.
  const p = new RespRequestParser();
  p.push(b('*1\r\n$60000000\r\n'));
  assert.equal(p.next(), null);
  assert.ok(p.bufferedBytes < 100, `buffered ${p.bufferedBytes}`);
  // Parts of a half-read array count against the buffer limit: a million tiny bulks
  // (allowed one by one) cannot pile up beyond it.
  const q = new RespRequestParser({ maxBufferedBytes: 10_000 });
  q.push(b('*1000000\r\n'));
  assert.equal(q.next(), null);
  protocolError(() => {
    for (let i = 0; i < 10_000; i++) {
      q.push(b('$1\r\na\r\n'));
      assert.equal(q.next(), null);
      assert.ok(q.bufferedBytes <= 10_000);
    }
  }, /bytes buffered/);
  // Draining keeps the count low: the limit is on what is held, not on what went through.
  const r = new RespRequestParser({ maxBufferedBytes: 1000 });
  for (let i = 0; i < 1000; i++) {
    r.push(encodeCommand(['SET', 'k', 'x'.repeat(100)]));
    assert.deepEqual(r.next(), ['SET', 'k', 'x'.repeat(100)]);
  }
});

test('fuzz: random and mutated input only ever throws RespProtocolError, and terminates', () => {
  const rng = new Rng(20240611);
  const valid = Buffer.concat([STREAM, ...STREAM_CMDS.map(encodeCommand)]);
  const limits = { maxArrayLength: 64, maxBulkBytes: 512, maxInlineBytes: 256, maxBufferedBytes: 4096 };
  let errors = 0;
  let commands = 0;
  for (let iter = 0, n = fuzzIterations(3000); iter < n; iter++) {
    let input: Buffer;
    const mode = iter % 3;
    if (mode === 0) {
      input = Buffer.from(Array.from({ length: rng.int(0, 300) }, () => rng.u32() & 0xff));
    } else if (mode === 1) {
      input = Buffer.from(valid);
      for (let k = rng.int(1, 6); k > 0; k--) input[rng.int(0, input.length - 1)] = rng.pick([42, 36, 13, 10, 45, 48, 57, rng.u32() & 0xff]);
    } else {
      // RESP-ish tokens glued at random
      const toks = ['*', '$', '\r\n', '\n', '-1', '0', '3', '99', 'abc', ' ', '*2\r\n', '$3\r\nfoo\r\n', '\r'];
      input = b(Array.from({ length: rng.int(1, 60) }, () => rng.pick(toks)).join(''));
    }
    const p = new RespRequestParser(limits);
    try {
      let pos = 0;
      while (pos < input.length) {
        const n = rng.int(1, 40);
        p.push(input.subarray(pos, pos + n));
        pos += n;
        for (let guard = 0; ; guard++) {
          assert.ok(guard <= input.length + 1, 'next() keeps returning commands');
          const c = p.next();
          if (c === null) break;
          commands++;
          assert.ok(c.length > 0 && c.length <= limits.maxArrayLength);
        }
        assert.ok(p.bufferedBytes <= limits.maxBufferedBytes);
      }
    } catch (e) {
      if (!(e instanceof RespProtocolError)) throw e;
      errors++;
    }
  }
  assert.ok(errors > 100 && commands > 100, `errors ${errors}, commands ${commands}`);
});

test('reply encoding is byte-exact Redis wire format', () => {
  const cases: [RespValue, string][] = [
    [{ kind: 'status', value: 'OK' }, '+OK\r\n'],
    [{ kind: 'status', value: 'PONG' }, '+PONG\r\n'],
    [{ kind: 'error', message: "ERR unknown command 'foo', with args beginning with: " }, "-ERR unknown command 'foo', with args beginning with: \r\n"],
    [{ kind: 'error', message: 'WRONGTYPE Operation against a key holding the wrong kind of value' }, '-WRONGTYPE Operation against a key holding the wrong kind of value\r\n'],
    [{ kind: 'error', message: 'ERR bad\r\n+OK' }, '-ERR bad  +OK\r\n'], // no reply injection
    [{ kind: 'integer', value: 0n }, ':0\r\n'],
    [{ kind: 'integer', value: 1000n }, ':1000\r\n'],
    [{ kind: 'integer', value: -1n }, ':-1\r\n'],
    [{ kind: 'integer', value: -(1n << 63n) }, ':-9223372036854775808\r\n'],
    [{ kind: 'bulk', value: 'hello' }, '$5\r\nhello\r\n'],
    [{ kind: 'bulk', value: '' }, '$0\r\n\r\n'],
    [{ kind: 'bulk', value: null }, '$-1\r\n'],
    [{ kind: 'bulk', value: 'a\r\nb' }, '$4\r\na\r\nb\r\n'],
    [{ kind: 'bulk', value: 'x'.repeat(10) }, `$10\r\n${'x'.repeat(10)}\r\n`],
    [{ kind: 'array', items: [] }, '*0\r\n'],
    [{ kind: 'array', items: null }, '*-1\r\n'],
    [{ kind: 'array', items: [{ kind: 'bulk', value: 'hello' }, { kind: 'bulk', value: 'world' }] }, '*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n'],
    [
      { kind: 'array', items: [{ kind: 'integer', value: 1n }, { kind: 'array', items: [{ kind: 'status', value: 'Foo' }, { kind: 'error', message: 'Bar' }] }, { kind: 'bulk', value: null }] },
      '*3\r\n:1\r\n*2\r\n+Foo\r\n-Bar\r\n$-1\r\n',
    ],
  ];
  for (const [reply, wire] of cases) assert.equal(encodeReply(reply).toString('latin1'), wire);
  assert.equal(encodeReply({ kind: 'bulk', value: ALL_BYTES }).toString('latin1'), `$256\r\n${ALL_BYTES}\r\n`);
  assert.equal(encodeReplies(cases.map((c) => c[0])).toString('latin1'), cases.map((c) => c[1]).join(''));
  assert.equal(encodeReplies([]).length, 0);
  assert.equal(encodeCommand(['SET', 'key', 'value']).toString('latin1'), '*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n');
  assert.equal(encodeCommand(['GET', '']).toString('latin1'), '*2\r\n$3\r\nGET\r\n$0\r\n\r\n');
  assert.equal(encodeCommand([]).toString('latin1'), '*0\r\n');
});

function randomReply(rng: Rng, depth: number): KvReply {
  const str = (): string => String.fromCharCode(...Array.from({ length: rng.int(0, 12) }, () => rng.u32() & 0xff));
  const line = (): string => str().replace(/[\r\n]/g, '_');
  switch (rng.int(0, depth > 2 ? 3 : 4)) {
    case 0:
      return { kind: 'status', value: line() };
    case 1:
      return { kind: 'error', message: line() };
    case 2:
      return { kind: 'integer', value: BigInt(rng.int(-1e9, 1e9)) * BigInt(rng.int(0, 1e9)) };
    case 3:
      return { kind: 'bulk', value: rng.chance(0.2) ? null : str() };
    default:
      return { kind: 'array', items: Array.from({ length: rng.int(0, 5) }, () => randomReply(rng, depth + 1)) };
  }
}

function parseReplies(chunks: readonly Buffer[], limits?: Partial<RespLimits>): KvReply[] {
  const p = new RespReplyParser(limits);
  const out: KvReply[] = [];
  for (const c of chunks) {
    p.push(c);
    for (let r = p.next(); r !== null; r = p.next()) out.push(r);
  }
  assert.equal(p.bufferedBytes, 0);
  return out;
}

test('reply parser: round trips split at every boundary, and at random', () => {
  const rng = new Rng(7);
  const replies = Array.from({ length: 40 }, () => randomReply(rng, 0));
  const wire = encodeReplies(replies);
  assert.deepEqual(parseReplies([wire]), replies);
  for (let i = 0; i <= wire.length; i++) assert.deepEqual(parseReplies(splits(wire, i)), replies, `split at ${i}`);
  for (let iter = 0; iter < 200; iter++) {
    const rs = Array.from({ length: rng.int(1, 20) }, () => randomReply(rng, 0));
    const w = encodeReplies(rs);
    const cuts = Array.from({ length: rng.int(0, 8) }, () => rng.int(0, w.length)).sort((x, y) => x - y);
    assert.deepEqual(parseReplies(splits(w, ...cuts)), rs);
  }
  // A null array reads as nil, as hiredis and redis-cli see it; *0 is an empty array.
  assert.deepEqual(parseReplies([b('*-1\r\n*0\r\n*2\r\n*-1\r\n$-1\r\n')]), [
    { kind: 'bulk', value: null },
    { kind: 'array', items: [] },
    { kind: 'array', items: [{ kind: 'bulk', value: null }, { kind: 'bulk', value: null }] },
  ]);
  const big = ALL_BYTES.repeat(4096);
  const bw = encodeReply({ kind: 'bulk', value: big });
  const chunks: Buffer[] = [];
  for (let i = 0; i < bw.length; i += 999) chunks.push(bw.subarray(i, i + 999));
  assert.deepEqual(parseReplies(chunks), [{ kind: 'bulk', value: big }]);
});

test('reply parser: protocol errors and limits', () => {
  const bad = (s: string, re: RegExp, limits?: Partial<RespLimits>): void => {
    const p = new RespReplyParser(limits);
    protocolError(() => {
      p.push(b(s));
      while (p.next() !== null);
    }, re);
  };
  bad('?\r\n', /unknown reply type '\?'/);
  bad('+OK\n', /not ended by CRLF/);
  bad('\r\n', /not ended by CRLF/);
  bad(':12a\r\n', /invalid integer/);
  bad(':\r\n', /invalid integer/);
  bad('$-2\r\n', /invalid bulk length/);
  bad('$1000000000\r\n', /invalid bulk length/);
  bad('$3\r\nfooXX', /expected CRLF after bulk/);
  bad('*-2\r\n', /invalid multibulk length/);
  bad('*10000000\r\n', /invalid multibulk length/);
  bad('*1\r\n'.repeat(200), /nested too deep/);
  bad(`+${'x'.repeat(200)}`, /too long reply line/, { maxInlineBytes: 100 });
  bad('x'.repeat(200), /bytes buffered/, { maxBufferedBytes: 100 });
  const p = new RespReplyParser({ maxBufferedBytes: 1000 });
  p.push(b('*1000\r\n'));
  protocolError(() => {
    for (let i = 0; i < 1000; i++) {
      p.push(b(':1\r\n'));
      assert.equal(p.next(), null);
    }
  }, /bytes buffered/);
});

test('request parser reads what encodeCommand writes, for random binary argv', () => {
  const rng = new Rng(99);
  const cmds = Array.from({ length: 300 }, () =>
    Array.from({ length: rng.int(1, 8) }, () => String.fromCharCode(...Array.from({ length: rng.int(0, 40) }, () => rng.u32() & 0xff))),
  );
  const wire = Buffer.concat(cmds.map(encodeCommand));
  const cuts = Array.from({ length: 50 }, () => rng.int(0, wire.length)).sort((x, y) => x - y);
  assert.deepEqual(parseAll(splits(wire, ...cuts)), cmds);
});
