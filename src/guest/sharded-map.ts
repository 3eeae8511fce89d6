// A string-keyed map split over many small JS Maps, for stores of millions of keys.
//
// Why: a V8 Map is one hash table that doubles when full (and halves when a quarter full),
// rehashing every entry in one synchronous step. Measured here (Node 20, 16-byte values):
// inserting the 524,288th key takes 89 ms, the 1,048,576th 224 ms, the 2,097,152nd 575 ms, the
// 4,194,304th 895 ms. A node whose event loop stops for longer than the failure timeout (500 ms
// by default) is taken for dead: a kv primary loaded past 2 M keys was deposed by its own
// backup, mid-load, with nothing else wrong (issue 9). A V8 Map also refuses more than 2^24
// (16.7 M) entries. Split over SHARDS maps, each rehash moves 1/SHARDS of the entries (a
// fraction of a millisecond at 10 M keys), and the whole holds SHARDS x 2^24 entries.
//
// A key's shard is a hash of its length, its first 32 and its last 32 characters: cheap for
// long keys, and deterministic (the same on every replica, though nothing observable depends on
// which shard holds a key: iteration order is unspecified, as a Map's is across replicas).
// Keys that differ only between their 32nd and their 32nd-last character fall into one shard,
// which then behaves like one Map: no worse than before.

/** How many maps (a power of two). */
export const SHARDS = 1024;
const MASK = SHARDS - 1;
/** Characters hashed at each end of a key. */
const ENDS = 32;

/** The shard of `key`: FNV-1a over its length and its ends, then a final mix. */
export function shardOf(key: string): number {
  const n = key.length;
  let h = Math.imul(0x811c9dc5 ^ n, 0x01000193);
  if (n <= 2 * ENDS) {
    for (let i = 0; i < n; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  } else {
    for (let i = 0; i < ENDS; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
    for (let i = n - ENDS; i < n; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x45d9f3b);
  h ^= h >>> 16;
  return h & MASK;
}

export class ShardedMap<V> implements Iterable<[string, V]> {
  private readonly shards: Map<string, V>[] = Array.from({ length: SHARDS }, () => new Map<string, V>());
  private count = 0;

  get size(): number {
    return this.count;
  }

  get(key: string): V | undefined {
    return this.shards[shardOf(key)]!.get(key);
  }

  has(key: string): boolean {
    return this.shards[shardOf(key)]!.has(key);
  }

  set(key: string, value: V): this {
    const m = this.shards[shardOf(key)]!;
    const before = m.size;
    m.set(key, value);
    this.count += m.size - before;
    return this;
  }

  delete(key: string): boolean {
    const gone = this.shards[shardOf(key)]!.delete(key);
    if (gone) this.count--;
    return gone;
  }

  /** Shard `i`'s map (read it, do not change it: the count would be wrong). */
  shard(i: number): ReadonlyMap<string, V> {
    return this.shards[i]!;
  }

  *keys(): IterableIterator<string> {
    for (const m of this.shards) yield* m.keys();
  }

  *[Symbol.iterator](): IterableIterator<[string, V]> {
    for (const m of this.shards) yield* m;
  }
}
