// The kv store's sharded map (issue 9: no V8 Map rehash of millions of entries in one step):
// it behaves as a Map, and keys spread over the shards, short or long.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SHARDS, ShardedMap, shardOf } from '../src/guest/sharded-map.js';
import { Rng } from '../src/sim/rng.js';

test('a ShardedMap does what a Map does, under random sets and deletes', () => {
  const rng = new Rng(5);
  const m = new ShardedMap<number>();
  const ref = new Map<string, number>();
  for (let i = 0; i < 50_000; i++) {
    const k = `k${rng.int(0, 5000)}`;
    if (rng.int(0, 3) === 0) assert.equal(m.delete(k), ref.delete(k));
    else {
      m.set(k, i);
      ref.set(k, i);
    }
    assert.equal(m.size, ref.size);
  }
  for (const [k, v] of ref) assert.equal(m.get(k), v);
  assert.equal(m.get('nope'), undefined);
  assert.equal(m.has('nope'), false);
  assert.deepEqual([...m].sort(([a], [b]) => (a < b ? -1 : 1)), [...ref].sort(([a], [b]) => (a < b ? -1 : 1)));
  assert.deepEqual([...m.keys()].sort(), [...ref.keys()].sort());
  let inShards = 0;
  for (let i = 0; i < SHARDS; i++) inShards += m.shard(i).size;
  assert.equal(inShards, ref.size);
});

test('keys spread over the shards: counters, long keys with a common prefix and suffix, binary keys', () => {
  const families: [string, (i: number) => string][] = [
    ['key:<i>', (i) => `key:${i}`],
    ['long, a common suffix', (i) => `user:${i}:${'s'.repeat(200)}`],
    ['long, a common prefix', (i) => `${'p'.repeat(200)}:${i}`],
    ['latin1 bytes', (i) => String.fromCharCode(i & 0xff, (i >> 8) & 0xff, (i >> 16) & 0xff)],
  ];
  const n = 200_000;
  for (const [name, key] of families) {
    const counts = new Array<number>(SHARDS).fill(0);
    for (let i = 0; i < n; i++) counts[shardOf(key(i))]!++;
    const max = Math.max(...counts);
    const min = Math.min(...counts);
    assert.ok(max < (3 * n) / SHARDS && min > n / SHARDS / 3, `${name}: shard sizes ${min}..${max} for a mean of ${n / SHARDS}`);
  }
});
