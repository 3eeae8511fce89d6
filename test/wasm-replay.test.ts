// Record and replay of unmodified WASI programs in one process: the backup's replay ends in
// the same memory, output and host state as the primary's run; a tampered log is a
// divergence naming the call; a real third-party program (the SQLite shell) replays exactly.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModule, type LoadedModule } from '../src/wasm/module.js';
import { recordLocally, replayLocally, type LocalGuest } from '../src/wasm/local.js';
import { RecordBatch, decodeEntry, type CallRecord } from '../src/wasm/log.js';

const example = (p: string): string => fileURLToPath(new URL(`../../examples/${p}`, import.meta.url));
const modules = new Map<string, Promise<LoadedModule>>();
/** Batch programs whose whole log is there before the replay never wait, so they need no asyncify. */
const load = (p: string, asyncify = true): Promise<LoadedModule> => {
  let m = modules.get(p);
  if (!m) modules.set(p, (m = loadModule(readFileSync(example(p)), { maxMemoryPages: 1024, asyncify })));
  return m;
};

function tempRoot(t: { after: (f: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-wasm-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Record in one directory, replay in a fresh one; both runs' results. */
async function recordAndReplay(t: { after: (f: () => void) => void }, p: string, g: Omit<LocalGuest, 'root'>, asyncify = true) {
  const loaded = await load(p, asyncify);
  const rec = await recordLocally(loaded, { ...g, root: tempRoot(t) });
  const rep = await replayLocally(loaded, { ...g, root: tempRoot(t) }, rec.entries);
  return { rec, rep, loaded };
}

function records(entries: readonly Uint8Array[]): CallRecord[] {
  return entries.flatMap((e) => decodeEntry(e));
}

function reencode(recs: readonly CallRecord[]): Uint8Array[] {
  const b = new RecordBatch();
  for (const r of recs) b.add(r);
  return [b.take()!];
}

test('wasm replay: clock and randomness are recorded, and the replay ends in the same state', async (t) => {
  const { rec, rep } = await recordAndReplay(t, 'clockrand/clockrand.wasm', { args: ['clockrand', '4'] });
  assert.deepEqual(rec.end, { kind: 'exit', code: 0 });
  assert.deepEqual(rep.end, { kind: 'exit', code: 0 });
  assert.match(rec.stdout, /iter 3 /);
  assert.ok(rec.calls > 10, `${rec.calls} logged calls`);
  assert.equal(rep.calls, rec.calls);
  assert.equal(rep.memoryHash, rec.memoryHash);
  assert.equal(rep.outputDigest, rec.outputDigest);
  assert.equal(rep.hostState, rec.hostState);
  // A second live run reads other clocks and other random bytes: the state really depends on them.
  const again = await recordLocally(await load('clockrand/clockrand.wasm'), { args: ['clockrand', '4'], root: tempRoot(t) });
  assert.notEqual(again.memoryHash, rec.memoryHash);
});

test('wasm replay: a tampered log is a divergence naming the call', async (t) => {
  const loaded = await load('clockrand/clockrand.wasm');
  const rec = await recordLocally(loaded, { args: ['clockrand', '3'], root: tempRoot(t) });
  const recs = records(rec.entries);

  // 1. A record's argument changed: caught at that very call.
  const i = recs.findIndex((r) => r.fn === 'clock_time_get');
  const bad = recs.map((r, k) => (k === i ? { ...r, args: r.args.map((a, j) => (j === 0 ? (Number(a) === 0 ? 1 : 0) : a)) } : r));
  const r1 = await replayLocally(loaded, { args: ['clockrand', '3'], root: tempRoot(t) }, reencode(bad));
  assert.equal(r1.end.kind, 'divergence');
  assert.match((r1.end as { message: string }).message, new RegExp(`call ${i}: the guest made clock_time_get`));

  // 2. An input's bytes changed: the guest's own later output differs from what the primary sent.
  const j = recs.findIndex((r) => r.fn === 'random_get');
  const flipped = recs.map((r, k) => {
    if (k !== j) return r;
    const w = r.writes[0]!;
    const data = w.data.slice();
    data[0] = data[0]! ^ 0xff;
    return { ...r, writes: [{ ptr: w.ptr, data }, ...r.writes.slice(1)] };
  });
  const r2 = await replayLocally(loaded, { args: ['clockrand', '3'], root: tempRoot(t) }, reencode(flipped));
  assert.equal(r2.end.kind, 'divergence');
  // clockrand writes what it printed to a file too: that local write is the first to differ.
  assert.match((r2.end as { message: string }).message, /call \d+: fd_write\(\d+, .*different/);

  // 3. A record's function changed.
  const swapped = recs.map((r, k) => (k === i ? { ...r, fn: 'random_get' } : r));
  const r3 = await replayLocally(loaded, { args: ['clockrand', '3'], root: tempRoot(t) }, reencode(swapped));
  assert.equal(r3.end.kind, 'divergence');
  assert.match((r3.end as { message: string }).message, /but the primary made random_get/);
});

test('wasm replay: the SQLite shell (third-party, unmodified) replays to the same memory', { timeout: 120_000 }, async (t) => {
  const sql = [
    'create table t(id integer primary key, name text, score real);',
    "with recursive c(x) as (select 1 union all select x + 1 from c where x < 500) insert into t(name, score) select 'n' || x, random() % 1000 / 7.0 from c;",
    "insert into t(name, score) values ('now', julianday('now'));",
    'select count(*), sum(id) from t;',
    'create index ts on t(score);',
    'select name from t order by score desc limit 3;',
    '',
  ].join('\n');
  const { rec, rep } = await recordAndReplay(t, 'sqlite/sqlite3.wasm', { args: ['sqlite3', '/test.db'], stdin: Buffer.from(sql) }, false);
  assert.deepEqual(rec.end, { kind: 'exit', code: 0 }, rec.stdout);
  assert.match(rec.stdout, /^501\|125751$/m);
  assert.deepEqual(rep.end, { kind: 'exit', code: 0 });
  assert.equal(rep.calls, rec.calls);
  assert.equal(rep.memoryHash, rec.memoryHash);
  assert.equal(rep.outputDigest, rec.outputDigest);
  assert.equal(rep.hostState, rec.hostState);
});
