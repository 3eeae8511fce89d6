// Tests for the kv reference state machine (src/guest/kv.ts) and the byte codec it is built
// on (src/guest/bytes.ts): Redis semantics command by command, error replies that change
// nothing, codec round trips, snapshots, and the incremental digest against a full recompute.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteReader, ByteWriter, createKv, kvCodec, parseInt64 } from '../src/guest/index.js';
import type { KvChange, KvCommand, KvMachine, KvReply } from '../src/guest/index.js';
import { LockstepError } from '../src/errors.js';
import { Rng } from '../src/sim/rng.js';

/** The project's seeded PRNG, as a float source. */
function prng(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.float();
}

const ok: KvReply = { kind: 'status', value: 'OK' };
const nil: KvReply = { kind: 'bulk', value: null };
const bulk = (value: string): KvReply => ({ kind: 'bulk', value });
const int = (v: number | bigint): KvReply => ({ kind: 'integer', value: BigInt(v) });
const err = (message: string): KvReply => ({ kind: 'error', message });
const arr = (...items: KvReply[]): KvReply => ({ kind: 'array', items });
const NOT_INT = err('ERR value is not an integer or out of range');
const OVERFLOW = err('ERR increment or decrement would overflow');
const arity = (name: string): KvReply => err(`ERR wrong number of arguments for '${name}' command`);

function kvWith(setup: readonly KvCommand[]): KvMachine {
  const kv = createKv();
  for (const c of setup) assert.notEqual(kv.execute(c).reply.kind, 'error', `setup ${c.join(' ')}`);
  return kv;
}

interface Case {
  readonly name: string;
  readonly setup?: readonly KvCommand[];
  readonly cmd: KvCommand;
  readonly reply: KvReply;
  /** Expected writes; omitted = nothing written (change null). */
  readonly writes?: KvChange['writes'];
}

const cases: readonly Case[] = [
  // GET / SET
  { name: 'GET missing', cmd: ['GET', 'k'], reply: nil },
  { name: 'GET existing', setup: [['SET', 'k', 'v']], cmd: ['GET', 'k'], reply: bulk('v') },
  { name: 'command names are case-insensitive', setup: [['set', 'k', 'v']], cmd: ['gEt', 'k'], reply: bulk('v') },
  { name: 'GET arity', cmd: ['GET'], reply: arity('get') },
  { name: 'GET arity (too many)', cmd: ['GET', 'a', 'b'], reply: arity('get') },
  { name: 'SET', cmd: ['SET', 'k', 'v'], reply: ok, writes: [['k', 'v']] },
  { name: 'SET binary key and value', cmd: ['SET', '\x00\xff\r\n', '\x80'], reply: ok, writes: [['\x00\xff\r\n', '\x80']] },
  { name: 'SET empty value', cmd: ['SET', 'k', ''], reply: ok, writes: [['k', '']] },
  { name: 'SET overwrite', setup: [['SET', 'k', 'a']], cmd: ['SET', 'k', 'b'], reply: ok, writes: [['k', 'b']] },
  { name: 'SET same value changes nothing', setup: [['SET', 'k', 'a']], cmd: ['SET', 'k', 'a'], reply: ok },
  { name: 'SET arity', cmd: ['SET', 'k'], reply: arity('set') },
  {
    name: 'SET EX is refused',
    cmd: ['SET', 'k', 'v', 'EX', '10'],
    reply: err('ERR SET options (EX, PX, NX, XX, GET, KEEPTTL...) are not supported yet: only SET key value'),
  },
  {
    name: 'SET NX is refused',
    setup: [['SET', 'k', 'old']],
    cmd: ['SET', 'k', 'v', 'NX'],
    reply: err('ERR SET options (EX, PX, NX, XX, GET, KEEPTTL...) are not supported yet: only SET key value'),
  },
  // DEL
  { name: 'DEL missing', cmd: ['DEL', 'k'], reply: int(0) },
  {
    name: 'DEL counts deleted keys once',
    setup: [['MSET', 'a', '1', 'b', '2']],
    cmd: ['DEL', 'a', 'a', 'b', 'c'],
    reply: int(2),
    writes: [['a', null], ['b', null]],
  },
  { name: 'DEL arity', cmd: ['DEL'], reply: arity('del') },
  // APPEND
  { name: 'APPEND creates', cmd: ['APPEND', 'k', 'ab'], reply: int(2), writes: [['k', 'ab']] },
  { name: 'APPEND extends', setup: [['SET', 'k', 'ab']], cmd: ['APPEND', 'k', 'cd'], reply: int(4), writes: [['k', 'cd', 'append']] }, // state transfer ships the delta
  { name: 'APPEND empty to missing creates the key', cmd: ['APPEND', 'k', ''], reply: int(0), writes: [['k', '']] },
  { name: 'APPEND empty to existing changes nothing', setup: [['SET', 'k', 'ab']], cmd: ['APPEND', 'k', ''], reply: int(2) },
  { name: 'APPEND arity', cmd: ['APPEND', 'k'], reply: arity('append') },
  // INCR / INCRBY / DECR / DECRBY
  { name: 'INCR missing', cmd: ['INCR', 'n'], reply: int(1), writes: [['n', '1']] },
  { name: 'INCR existing', setup: [['SET', 'n', '41']], cmd: ['incr', 'n'], reply: int(42), writes: [['n', '42']] },
  { name: 'INCR negative', setup: [['SET', 'n', '-5']], cmd: ['INCR', 'n'], reply: int(-4), writes: [['n', '-4']] },
  { name: 'INCR on "abc"', setup: [['SET', 'n', 'abc']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on "01"', setup: [['SET', 'n', '01']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on "+1"', setup: [['SET', 'n', '+1']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on " 1"', setup: [['SET', 'n', ' 1']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on "1 "', setup: [['SET', 'n', '1 ']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on "-0"', setup: [['SET', 'n', '-0']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on ""', setup: [['SET', 'n', '']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on "1.0"', setup: [['SET', 'n', '1.0']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on 2^63', setup: [['SET', 'n', '9223372036854775808']], cmd: ['INCR', 'n'], reply: NOT_INT },
  { name: 'INCR on "0"', setup: [['SET', 'n', '0']], cmd: ['INCR', 'n'], reply: int(1), writes: [['n', '1']] },
  { name: 'INCR overflow', setup: [['SET', 'n', '9223372036854775807']], cmd: ['INCR', 'n'], reply: OVERFLOW },
  { name: 'DECR underflow', setup: [['SET', 'n', '-9223372036854775808']], cmd: ['DECR', 'n'], reply: OVERFLOW },
  { name: 'DECR', setup: [['SET', 'n', '0']], cmd: ['DECR', 'n'], reply: int(-1), writes: [['n', '-1']] },
  { name: 'INCR arity', cmd: ['INCR'], reply: arity('incr') },
  { name: 'INCRBY', setup: [['SET', 'n', '10']], cmd: ['INCRBY', 'n', '-25'], reply: int(-15), writes: [['n', '-15']] },
  { name: 'INCRBY 0 on missing creates "0"', cmd: ['INCRBY', 'n', '0'], reply: int(0), writes: [['n', '0']] },
  { name: 'INCRBY 0 on existing changes nothing', setup: [['SET', 'n', '7']], cmd: ['INCRBY', 'n', '0'], reply: int(7) },
  { name: 'INCRBY non-integer increment', setup: [['SET', 'n', '1']], cmd: ['INCRBY', 'n', '1.5'], reply: NOT_INT },
  { name: 'INCRBY increment "01"', cmd: ['INCRBY', 'n', '01'], reply: NOT_INT },
  { name: 'INCRBY increment out of range', cmd: ['INCRBY', 'n', '9223372036854775808'], reply: NOT_INT },
  {
    name: 'INCRBY to the maximum',
    setup: [['SET', 'n', '9223372036854775806']],
    cmd: ['INCRBY', 'n', '1'],
    reply: int(9223372036854775807n),
    writes: [['n', '9223372036854775807']],
  },
  { name: 'INCRBY overflow', setup: [['SET', 'n', '2']], cmd: ['INCRBY', 'n', '9223372036854775806'], reply: OVERFLOW },
  { name: 'INCRBY arity', cmd: ['INCRBY', 'n'], reply: arity('incrby') },
  { name: 'DECRBY', setup: [['SET', 'n', '5']], cmd: ['DECRBY', 'n', '7'], reply: int(-2), writes: [['n', '-2']] },
  { name: 'DECRBY INT64_MIN', cmd: ['DECRBY', 'n', '-9223372036854775808'], reply: err('ERR decrement would overflow') },
  // MGET / MSET / EXISTS / DBSIZE
  { name: 'MGET', setup: [['MSET', 'a', '1', 'c', '3']], cmd: ['MGET', 'a', 'b', 'c'], reply: arr(bulk('1'), nil, bulk('3')) },
  { name: 'MGET arity', cmd: ['MGET'], reply: arity('mget') },
  { name: 'MSET', cmd: ['MSET', 'a', '1', 'b', '2'], reply: ok, writes: [['a', '1'], ['b', '2']] },
  { name: 'MSET same key twice: last wins', cmd: ['MSET', 'a', '1', 'a', '2'], reply: ok, writes: [['a', '1'], ['a', '2']] },
  { name: 'MSET odd count', cmd: ['MSET', 'a', '1', 'b'], reply: arity('mset') },
  { name: 'MSET one arg', cmd: ['MSET', 'a'], reply: arity('mset') },
  { name: 'EXISTS counts duplicates', setup: [['SET', 'a', '1']], cmd: ['EXISTS', 'a', 'a', 'b'], reply: int(2) },
  { name: 'EXISTS arity', cmd: ['EXISTS'], reply: arity('exists') },
  { name: 'DBSIZE', setup: [['MSET', 'a', '1', 'b', '2']], cmd: ['DBSIZE'], reply: int(2) },
  { name: 'DBSIZE arity', cmd: ['DBSIZE', 'x'], reply: arity('dbsize') },
  // unknown commands
  {
    name: 'unknown command',
    cmd: ['FOO', 'a', 'b'],
    reply: err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' "),
  },
  { name: 'unknown command, no args', cmd: ['hello'], reply: err("ERR unknown command 'hello', with args beginning with: ") },
  {
    name: 'unknown command, newlines become spaces',
    cmd: ['x\r\ny', 'a\nb'],
    reply: err("ERR unknown command 'x  y', with args beginning with: 'a b' "),
  },
  {
    name: 'unknown command, args cut at 128 bytes',
    cmd: ['nope', 'a'.repeat(100), 'b'.repeat(100), 'c'],
    reply: err(`ERR unknown command 'nope', with args beginning with: '${'a'.repeat(100)}' '${'b'.repeat(25)}' `),
  },
  { name: 'empty command', cmd: [], reply: err("ERR unknown command '', with args beginning with: ") },
  { name: 'prototype names are not commands', cmd: ['constructor'], reply: err("ERR unknown command 'constructor', with args beginning with: ") },
];

test('kv commands follow Redis semantics', async (t) => {
  for (const c of cases) {
    await t.test(c.name, () => {
      const kv = kvWith(c.setup ?? []);
      const before = kv.snapshot();
      const beforeDigest = kv.digest();
      const { reply, change } = kv.execute(c.cmd);
      assert.deepEqual(reply, c.reply);
      if (c.writes === undefined) {
        assert.equal(change, null, 'nothing written');
        assert.deepEqual(kv.snapshot(), before, 'state unchanged');
        assert.equal(kv.digest(), beforeDigest);
      } else {
        assert.deepEqual(change?.writes, c.writes);
        // installing the change on a copy of the old state gives the same state
        const other = createKv();
        other.restore(before);
        other.applyChange(change!);
        assert.deepEqual(other.snapshot(), kv.snapshot());
        assert.equal(other.digest(), kv.digest());
      }
      assert.equal(kv.digest(), kv.fullDigest());
    });
  }
});

test('isReadOnly: exactly the read commands, case-insensitive', () => {
  const kv = createKv();
  for (const c of [['GET', 'k'], ['mget', 'a'], ['Exists', 'a'], ['DBSIZE'], ['get']]) assert.equal(kv.isReadOnly(c), true, c.join(' '));
  for (const c of [['SET', 'k', 'v'], ['DEL', 'k'], ['APPEND', 'k', 'v'], ['INCR', 'k'], ['MSET', 'a', 'b'], ['FOO'], []]) {
    assert.equal(kv.isReadOnly(c), false, c.join(' '));
  }
});

test('errorReply prefixes ERR', () => {
  assert.deepEqual(createKv().errorReply('E_DEDUP_STALE x'), err('ERR E_DEDUP_STALE x'));
});

test('parseInt64 is string2ll', () => {
  const good: [string, bigint][] = [['0', 0n], ['-1', -1n], ['123', 123n], ['9223372036854775807', 2n ** 63n - 1n], ['-9223372036854775808', -(2n ** 63n)]];
  for (const [s, v] of good) assert.equal(parseInt64(s), v, s);
  for (const s of ['', '-', '+1', '-0', '00', '01', ' 1', '1 ', '1a', '0x10', '1e3', '9223372036854775808', '-9223372036854775809', '١']) {
    assert.equal(parseInt64(s), null, JSON.stringify(s));
  }
});

test('codec round trips', () => {
  const commands: KvCommand[] = [[], ['GET', 'k'], ['SET', '\x00\xff'.repeat(5000), ''], ['MSET', 'a', '1', 'b', '2']];
  for (const c of commands) assert.deepEqual(kvCodec.decodeCommand(kvCodec.encodeCommand(c)), c);
  const replies: KvReply[] = [
    ok,
    err('ERR x'),
    err('unicode é ✓ 😀'),
    int(0),
    int(-1),
    int(2n ** 63n - 1n),
    int(-(2n ** 63n)),
    int(2n ** 200n),
    int(-(2n ** 200n) + 7n),
    nil,
    bulk(''),
    bulk('\x00\x01\xfe\xff'),
    arr(),
    arr(bulk('a'), nil, int(3), arr(arr(err('ERR deep'), ok), bulk('z'))),
  ];
  for (const r of replies) assert.deepEqual(kvCodec.decodeReply(kvCodec.encodeReply(r)), r);
  const changes: KvChange[] = [{ writes: [] }, { writes: [['a', '1'], ['b', null], ['\xff', '']] }];
  for (const c of changes) assert.deepEqual(kvCodec.decodeChange(kvCodec.encodeChange(c)), c);
});

test('codec rejects corrupt input with E_CORRUPT_ENTRY', () => {
  const isCorrupt = (e: unknown): boolean => e instanceof LockstepError && e.code === 'E_CORRUPT_ENTRY';
  const cmd = kvCodec.encodeCommand(['SET', 'key', 'value']);
  for (let n = 0; n < cmd.length; n++) assert.throws(() => kvCodec.decodeCommand(cmd.subarray(0, n)), isCorrupt, `truncated at ${n}`);
  assert.throws(() => kvCodec.decodeCommand(new Uint8Array([...cmd, 0])), isCorrupt, 'trailing byte');
  const reply = kvCodec.encodeReply(arr(bulk('a'), int(300)));
  for (let n = 0; n < reply.length; n++) assert.throws(() => kvCodec.decodeReply(reply.subarray(0, n)), isCorrupt);
  assert.throws(() => kvCodec.decodeReply(new Uint8Array([9])), isCorrupt, 'bad tag');
  assert.throws(() => kvCodec.decodeReply(new Uint8Array([5, 0xff, 0xff, 0xff, 0x7f])), isCorrupt, 'huge count');
  assert.throws(() => kvCodec.decodeChange(new Uint8Array([1, 2, 0])), isCorrupt, 'bad write op');
  assert.throws(() => kvCodec.decodeCommand(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])), isCorrupt, 'long varint');
  assert.throws(() => createKv().restore(new Uint8Array([2, 0])), isCorrupt, 'bad snapshot version');
});

test('ByteWriter/ByteReader round trip', () => {
  const nums = [0, 1, 127, 128, 255, 16383, 16384, 2 ** 31, 2 ** 32 + 5, Number.MAX_SAFE_INTEGER];
  const bigs = [0n, 1n, -1n, 63n, -64n, 2n ** 52n, -(2n ** 63n), 2n ** 64n + 3n, -(10n ** 40n)];
  const long = Array.from({ length: 20000 }, (_, i) => String.fromCharCode(i % 256)).join('');
  const w = new ByteWriter(1);
  for (const n of nums) w.varuint(n);
  for (const b of bigs) w.bigint(b);
  w.u8(200).u32(0xdeadbeef).f64(-0.1).latin1(long).text('héllo ✓ 😀 \ud800').bytes(new Uint8Array([1, 2, 3]));
  const r = new ByteReader(w.finish());
  for (const n of nums) assert.equal(r.varuint(), n);
  for (const b of bigs) assert.equal(r.bigint(), b);
  assert.equal(r.u8(), 200);
  assert.equal(r.u32(), 0xdeadbeef);
  assert.equal(r.f64(), -0.1);
  assert.equal(r.latin1(), long);
  assert.equal(r.text(), 'héllo ✓ 😀 \ud800');
  assert.deepEqual([...r.bytes()], [1, 2, 3]);
  r.end();
  assert.throws(() => r.u8(), (e: unknown) => e instanceof LockstepError && e.code === 'E_CORRUPT_ENTRY');
  assert.throws(() => new ByteWriter().latin1('✓'), RangeError);
  assert.throws(() => new ByteWriter().varuint(-1), RangeError);
});

/** A seeded random command over a small key space (so commands collide). */
function randomCommand(rnd: () => number): KvCommand {
  const key = (): string => `k${Math.floor(rnd() * 12)}`;
  const val = (): string => (rnd() < 0.3 ? String(Math.floor(rnd() * 100) - 50) : 'v' + String.fromCharCode(Math.floor(rnd() * 256)));
  switch (Math.floor(rnd() * 10)) {
    case 0: return ['SET', key(), val()];
    case 1: return ['DEL', key(), key()];
    case 2: return ['APPEND', key(), val()];
    case 3: return ['INCR', key()];
    case 4: return ['INCRBY', key(), String(Math.floor(rnd() * 20) - 10)];
    case 5: return ['MSET', key(), val(), key(), val()];
    case 6: return ['GET', key()];
    case 7: return ['MGET', key(), key()];
    case 8: return ['EXISTS', key(), key()];
    default: return ['DEL', key()];
  }
}

test('incremental digest == fullDigest; applying changes gives the same state', () => {
  for (const seed of [1, 2, 3, 42, 1234]) {
    const rnd = prng(seed);
    const exec = createKv();
    const apply = createKv();
    for (let i = 0; i < 2000; i++) {
      const { change } = exec.execute(randomCommand(rnd));
      if (change !== null) apply.applyChange(kvCodec.decodeChange(kvCodec.encodeChange(change)));
      if (i % 97 === 0) assert.equal(exec.digest(), exec.fullDigest(), `seed ${seed} step ${i}`);
    }
    assert.equal(exec.digest(), exec.fullDigest());
    assert.equal(apply.digest(), apply.fullDigest());
    assert.equal(exec.digest(), apply.digest());
    assert.deepEqual(exec.snapshot(), apply.snapshot());
  }
});

test('the digest and snapshot do not depend on insertion order', () => {
  const a = createKv();
  const b = createKv();
  for (const c of [['SET', 'x', '1'], ['SET', 'y', '2'], ['SET', 'z', '3']]) a.execute(c);
  for (const c of [['SET', 'z', '3'], ['SET', 'y', '0'], ['DEL', 'y'], ['SET', 'x', '1'], ['SET', 'y', '2']]) b.execute(c);
  assert.equal(a.digest(), b.digest());
  assert.deepEqual(a.snapshot(), b.snapshot());
  b.execute(['SET', 'y', '3']);
  assert.notEqual(a.digest(), b.digest());
  // pairs, not keys and values separately
  const c = createKv();
  const d = createKv();
  c.execute(['MSET', 'a', '1', 'b', '2']);
  d.execute(['MSET', 'a', '2', 'b', '1']);
  assert.notEqual(c.digest(), d.digest());
});

test('snapshot/restore round trip: equal digest, equal behaviour', () => {
  const rnd = prng(7);
  const a = createKv();
  for (let i = 0; i < 500; i++) a.execute(randomCommand(rnd));
  const b = createKv();
  b.execute(['SET', 'junk', 'to be replaced']);
  b.restore(a.snapshot());
  assert.equal(b.digest(), a.digest());
  assert.equal(b.fullDigest(), a.digest());
  assert.deepEqual(b.snapshot(), a.snapshot());
  for (let i = 0; i < 500; i++) {
    const cmd = randomCommand(rnd);
    assert.deepEqual(b.execute(cmd), a.execute(cmd), cmd.join(' '));
  }
  assert.equal(b.digest(), a.digest());
  // a corrupt snapshot leaves the state alone
  const snap = a.snapshot();
  const digest = a.digest();
  assert.throws(() => a.restore(snap.subarray(0, snap.length - 1)), LockstepError);
  assert.equal(a.digest(), digest);
  assert.equal(a.fullDigest(), digest);
});

test('big values: native digest, APPEND extends it, every path agrees (issue 14 item 4)', () => {
  const big = (n: number, c: string): string => c.repeat(n);
  const a = createKv();
  const b = createKv();
  const ship = (cmd: KvCommand): KvReply => {
    const { reply, change } = a.execute(cmd);
    if (change) b.applyChange(kvCodec.decodeChange(kvCodec.encodeChange(change)));
    assert.equal(a.digest(), b.digest(), cmd[0]);
    assert.equal(a.digest(), a.fullDigest(), `${cmd[0]}: incremental digest = full recompute`);
    return reply;
  };
  // Across both thresholds (4 KiB: SHA-256; 64 KiB: a running hash kept for appends).
  ship(['SET', 'x', big(4000, 'a')]);
  for (let i = 0; i < 30; i++) ship(['APPEND', 'x', big(5000, String.fromCharCode(0xe0 + i))]);
  assert.equal(a.get('x')!.length, 4000 + 30 * 5000);
  ship(['SET', 'x', big(70_000, 'q')]); // overwrite a big value
  const { change } = a.execute(['APPEND', 'x', 'tail']);
  assert.deepEqual(change?.writes, [['x', 'tail', 'append']], 'state transfer ships only the appended bytes');
  b.applyChange(change!);
  assert.equal(a.digest(), b.digest());
  // The same value reached by one SET digests the same as by SET + APPENDs.
  const c = createKv();
  c.execute(['SET', 'x', a.get('x')!]);
  assert.equal(c.digest(), a.digest());
  // A snapshot restores it, and appends continue from there.
  const d = createKv();
  d.restore(a.snapshot());
  assert.equal(d.digest(), a.digest());
  ship(['APPEND', 'x', 'more']);
  d.execute(['APPEND', 'x', 'more']);
  assert.equal(d.digest(), a.digest());
  ship(['DEL', 'x']);
  assert.equal(a.digest(), createKv().digest());
  // Wide chars cannot enter a big value through the codec.
  assert.throws(() => kvCodec.encodeCommand(['SET', 'k', 'a'.repeat(1000) + '\u0100']), RangeError);
});

test('change encodings from before op 2 still decode', () => {
  // varuint 2 writes; op 1 set 'k' = 'v'; op 0 delete 'z'
  const old = new Uint8Array([2, 1, 1, 0x6b, 1, 0x76, 0, 1, 0x7a]);
  assert.deepEqual(kvCodec.decodeChange(old), { writes: [['k', 'v'], ['z', null]] });
  const w = kvCodec.encodeChange({ writes: [['k', 'v'], ['z', null]] });
  assert.deepEqual([...w], [...old]);
  assert.throws(() => kvCodec.decodeChange(new Uint8Array([1, 3, 1, 0x6b])), LockstepError);
});

test('maxmemory: writes that could pass it get -OOM, reads and DEL work (issue 14 item 8)', () => {
  const kv = createKv(1 << 20, 1000);
  assert.deepEqual(kv.admit(['SET', 'a', 'x'.repeat(500)]), null);
  kv.execute(['SET', 'a', 'x'.repeat(500)]);
  assert.equal(kv.usedBytes, 1 + 500 + 64);
  const oom = err("OOM command not allowed when used memory > 'maxmemory'.");
  assert.deepEqual(kv.admit(['SET', 'b', 'y'.repeat(400)]), oom);
  assert.deepEqual(kv.admit(['APPEND', 'a', 'y'.repeat(436)]), oom);
  assert.deepEqual(kv.admit(['APPEND', 'a', 'y'.repeat(435)]), null);
  assert.deepEqual(kv.admit(['MSET', 'b', '1', 'c', 'z'.repeat(400)]), oom);
  assert.deepEqual(kv.admit(['INCR', 'n']), null);
  for (const read of [['GET', 'a'], ['MGET', 'a'], ['EXISTS', 'a'], ['DBSIZE'], ['DEL', 'a']]) assert.equal(kv.admit(read), null, read[0]);
  kv.execute(['DEL', 'a']);
  assert.equal(kv.usedBytes, 0);
  assert.equal(kv.admit(['SET', 'b', 'y'.repeat(400)]), null);
  // The count survives a snapshot and an append change.
  kv.execute(['SET', 'b', 'y'.repeat(400)]);
  kv.execute(['APPEND', 'b', 'zz']);
  const other = createKv(1 << 20, 1000);
  other.restore(kv.snapshot());
  assert.equal(other.usedBytes, kv.usedBytes);
  assert.equal(createKv().admit(['SET', 'k', 'x'.repeat(100_000)]), null, 'no limit by default');
});
