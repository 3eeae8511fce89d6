// The arbiter contract, run on both implementations (one suite, as js-libp2p's interface
// compliance tests), then what only the file arbiter has: real races between processes, torn
// or garbage files, an unusable directory, and the spec parser.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, readdirSync, writeFileSync, renameSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NO_VIEW, sameView, type View } from '../src/core/types.js';
import { isLockstepError } from '../src/errors.js';
import { openArbiter, parseArbiterSpec, type Arbiter } from '../src/arbiter/types.js';
import { MemoryArbiter } from '../src/arbiter/memory.js';
import { FileArbiter } from '../src/arbiter/file.js';

const v = (epoch: number, primary: string, backup: string | null = null): View => ({ epoch, primary, backup });

function tempDir(t: { after(f: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-arbiter-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const isCode = (code: string) => (e: unknown) => isLockstepError(e) && e.code === code;

const implementations: { name: string; make: (t: { after(f: () => void): void }) => Arbiter }[] = [
  { name: 'MemoryArbiter', make: () => new MemoryArbiter() },
  { name: 'FileArbiter', make: (t) => new FileArbiter(join(tempDir(t), 'arb')) },
];

for (const { name, make } of implementations) {
  describe(`arbiter contract: ${name}`, () => {
    test('starts empty; the bootstrap 0 -> 1 wins once', async (t) => {
      const a = make(t);
      assert.deepEqual(await a.current(), NO_VIEW);
      assert.deepEqual(await a.compareAndSet(NO_VIEW, v(1, 'n1')), { ok: true, view: v(1, 'n1') });
      assert.deepEqual(await a.compareAndSet(NO_VIEW, v(1, 'n2')), { ok: false, view: v(1, 'n1') });
      assert.deepEqual(await a.current(), v(1, 'n1'));
    });

    test('a stale expected view is refused with the current view', async (t) => {
      const a = make(t);
      await a.compareAndSet(NO_VIEW, v(1, 'n1'));
      await a.compareAndSet(v(1, 'n1'), v(2, 'n1', 'n2'));
      assert.deepEqual(await a.compareAndSet(v(1, 'n1'), v(2, 'n1', 'n3')), { ok: false, view: v(2, 'n1', 'n2') });
      // The whole view is compared, not just the epoch.
      assert.deepEqual(await a.compareAndSet(v(2, 'n1', 'n3'), v(3, 'n3')), { ok: false, view: v(2, 'n1', 'n2') });
      assert.deepEqual(await a.current(), v(2, 'n1', 'n2'));
    });

    test('a retry of a CAS that already landed is refused with the view equal to next', async (t) => {
      const a = make(t);
      await a.compareAndSet(NO_VIEW, v(1, 'n1'));
      const next = v(2, 'n2');
      assert.equal((await a.compareAndSet(v(1, 'n1'), next)).ok, true);
      const again = await a.compareAndSet(v(1, 'n1'), next);
      assert.equal(again.ok, false);
      assert.ok(sameView(again.view, next));
    });

    test('epochs only grow', async (t) => {
      const a = make(t);
      let cur = NO_VIEW;
      for (let e = 1; e <= 20; e++) {
        const r = await a.compareAndSet(cur, v(e, `n${e % 3}`, e % 2 ? `n${(e + 1) % 3}` : null));
        assert.ok(r.ok);
        assert.ok(r.view.epoch > cur.epoch);
        cur = r.view;
        assert.deepEqual(await a.current(), cur);
        const stale = await a.compareAndSet(NO_VIEW, v(1, 'x'));
        assert.deepEqual(stale, { ok: false, view: cur });
      }
    });

    test('a malformed proposal is a programming error, not an arbiter outcome', async (t) => {
      const a = make(t);
      for (const next of [v(2, 'n1'), v(1, 'n1', 'n1'), { epoch: 1, primary: null, backup: null }]) {
        await assert.rejects(a.compareAndSet(NO_VIEW, next), (e: unknown) => e instanceof Error && !isLockstepError(e));
      }
      assert.deepEqual(await a.current(), NO_VIEW);
    });
  });
}

test('MemoryArbiter: down means unavailable', async () => {
  const a = new MemoryArbiter();
  a.down = true;
  await assert.rejects(a.current(), isCode('E_ARBITER_UNAVAILABLE'));
  await assert.rejects(a.compareAndSet(NO_VIEW, v(1, 'n1')), isCode('E_ARBITER_UNAVAILABLE'));
  a.down = false;
  assert.equal((await a.compareAndSet(NO_VIEW, v(1, 'n1'))).ok, true);
});

// Each child races from the view it knows to {e+1, self} until epoch ROUNDS, and prints every
// attempt. Attempt r starts at the shared instant t0 + r*SLOT_MS, so all children read the same
// view and then race the exclusive link; the child counts the EEXISTs it got (by wrapping
// fs.promises.link) to prove that path was taken. A slow machine only blurs the alignment.
const ROUNDS = 50;
const SLOT_MS = 10;
const CHILD = `
import fs from 'node:fs';
const link = fs.promises.link;
let eexist = 0;
fs.promises.link = async (...args) => { try { return await link(...args); } catch (e) { if (e.code === 'EEXIST') eexist++; throw e; } };
const { FileArbiter } = await import(${JSON.stringify(new URL('../src/arbiter/file.js', import.meta.url).href)});
const [dir, id, rounds, slot] = process.argv.slice(1);
const a = new FileArbiter(dir);
process.stdout.write('ready\\n');
const t0 = Number(await new Promise((r) => process.stdin.once('data', r)));
process.stdin.destroy();
let view = { epoch: 0, primary: null, backup: null };
const log = [];
for (let r = 0; view.epoch < Number(rounds); r++) {
  const wait = t0 + r * Number(slot) - Date.now();
  if (wait > 0) await new Promise((res) => setTimeout(res, wait));
  const next = { epoch: view.epoch + 1, primary: id, backup: null };
  const res = await a.compareAndSet(view, next);
  log.push({ next, ok: res.ok, view: res.view });
  view = res.view;
}
process.stdout.write(JSON.stringify({ log, eexist }) + '\\n');
`;

interface Attempt { next: View; ok: boolean; view: View }

test('FileArbiter: 8 processes racing for 50 epochs: one winner per epoch, losers see it', async (t) => {
  const dir = join(tempDir(t), 'arb');
  const children: ChildProcess[] = [];
  t.after(() => { for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL'); });
  const outputs = Array.from({ length: 8 }, (_, i) => {
    const c = spawn(process.execPath, ['--input-type=module', '-e', CHILD, dir, `n${i}`, String(ROUNDS), String(SLOT_MS)], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(c);
    let out = '';
    c.stdout!.setEncoding('utf8');
    const ready = new Promise<void>((res, rej) => {
      c.stdout!.on('data', (d: string) => { out += d; if (out.startsWith('ready\n')) res(); });
      c.on('exit', (code) => rej(new Error(`child n${i} exited ${code} before it was ready`)));
    });
    const done = new Promise<string>((res, rej) => c.on('exit', (code) => (code === 0 ? res(out) : rej(new Error(`child n${i} exited ${code}`)))));
    return { c, ready, done };
  });
  await Promise.all(outputs.map((o) => o.ready));
  const t0 = String(Date.now() + 50);
  for (const o of outputs) o.c.stdin!.end(t0);
  const results = await Promise.all(outputs.map(async (o) => JSON.parse((await o.done).split('\n')[1]!) as { log: Attempt[]; eexist: number }));
  const logs = results.map((r) => r.log);

  // The truth is on disk: exactly views 1..ROUNDS, no temp file left behind.
  const names = readdirSync(dir).sort();
  assert.deepEqual(names, Array.from({ length: ROUNDS }, (_, i) => `view-${i + 1}`).sort());
  const chain = new Map<number, View>();
  for (const n of names) { const x = JSON.parse(readFileSync(join(dir, n), 'utf8')) as View; chain.set(x.epoch, x); }

  const winners = new Map<number, string[]>();
  for (const log of logs) {
    let last = 0;
    for (const a of log) {
      if (a.ok) {
        winners.set(a.next.epoch, [...(winners.get(a.next.epoch) ?? []), a.next.primary!]);
        assert.deepEqual(a.view, a.next);
      } else {
        assert.ok(a.view.epoch >= a.next.epoch, `a loser saw epoch ${a.view.epoch} for its proposal of ${a.next.epoch}`);
      }
      assert.deepEqual(a.view, chain.get(a.view.epoch), 'every answer is the view on disk for its epoch');
      assert.ok(a.view.epoch > last, 'epochs only grow');
      last = a.view.epoch;
    }
  }
  for (let e = 1; e <= ROUNDS; e++) {
    assert.deepEqual(winners.get(e), [chain.get(e)!.primary], `epoch ${e}: exactly one winner, the one on disk`);
  }
  const losses = logs.flat().filter((a) => !a.ok).length;
  const eexist = results.reduce((n, r) => n + r.eexist, 0);
  assert.ok(eexist > 0, 'the children really raced on the exclusive link');
  t.diagnostic(`${new Set([...winners.values()].flat()).size} distinct winners, ${losses} refusals, ${eexist} lost at the link`);
});

test('FileArbiter: an unusable directory is unavailable, and works again when restored', async (t) => {
  const root = tempDir(t);
  const dir = join(root, 'arb');
  const a = new FileArbiter(dir);
  await a.compareAndSet(NO_VIEW, v(1, 'n1'));
  renameSync(dir, join(root, 'away'));
  writeFileSync(dir, 'not a directory');
  const unavailable = (e: unknown) => isCode('E_ARBITER_UNAVAILABLE')(e) && (e as Error).message.includes(dir) && /ENOTDIR/.test((e as Error).message);
  await assert.rejects(a.current(), unavailable);
  await assert.rejects(a.compareAndSet(v(1, 'n1'), v(2, 'n1')), unavailable);
  rmSync(dir);
  await assert.rejects(a.current(), isCode('E_ARBITER_UNAVAILABLE'), 'a vanished directory is not recreated (that would forget every view)');
  renameSync(join(root, 'away'), dir);
  assert.deepEqual(await a.current(), v(1, 'n1'));
  assert.deepEqual(await a.compareAndSet(v(1, 'n1'), v(2, 'n1', 'n2')), { ok: true, view: v(2, 'n1', 'n2') });
  assert.deepEqual(readdirSync(dir).sort(), ['view-1', 'view-2']);
});

test('FileArbiter: a directory that cannot be created is unavailable', async (t) => {
  const root = tempDir(t);
  writeFileSync(join(root, 'file'), '');
  await assert.rejects(new FileArbiter(join(root, 'file', 'arb')).current(), isCode('E_ARBITER_UNAVAILABLE'));
});

test('FileArbiter: a garbage or corrupt view file is unavailable, never skipped', async (t) => {
  for (const [name, body] of [['view-2', '{"epoch":2,"primary":"n'], ['view-2', '{"epoch":3,"primary":"n1","backup":null}'], ['view-2', '[]'], ['view-02', '{}']] as const) {
    const dir = join(tempDir(t), 'arb');
    const a = new FileArbiter(dir);
    await a.compareAndSet(NO_VIEW, v(1, 'n1'));
    writeFileSync(join(dir, name), body);
    await assert.rejects(a.current(), (e) => isCode('E_ARBITER_UNAVAILABLE')(e) && (e as Error).message.includes(join(dir, name)), `${name}: ${body}`);
    await assert.rejects(a.compareAndSet(v(1, 'n1'), v(2, 'n1')), isCode('E_ARBITER_UNAVAILABLE'));
  }
});

test('FileArbiter: temp files are ignored by readers', async (t) => {
  const dir = join(tempDir(t), 'arb');
  mkdirSync(dir);
  writeFileSync(join(dir, '.tmp-view-1-abc'), '{"epoch":1,"prim');
  const a = new FileArbiter(dir);
  assert.deepEqual(await a.current(), NO_VIEW);
  assert.equal((await a.compareAndSet(NO_VIEW, v(1, 'n1'))).ok, true);
});

test('openArbiter: spec parsing', async (t) => {
  const root = tempDir(t);
  const f = openArbiter('file:rel/arb', { baseDir: root });
  assert.ok(f instanceof FileArbiter);
  assert.equal(f.description, `file:${join(root, 'rel/arb')}`);
  await f.compareAndSet(NO_VIEW, v(1, 'n1'));
  assert.deepEqual(readdirSync(join(root, 'rel/arb')), ['view-1']);
  assert.equal(openArbiter(`file:${root}/abs`, { baseDir: '/nowhere' }).description, `file:${root}/abs`);
  assert.ok(openArbiter('memory:') instanceof MemoryArbiter);
  assert.deepEqual(parseArbiterSpec('file:x'), { kind: 'file', dir: 'x' });
  assert.throws(() => openArbiter('etcd://127.0.0.1:2379'), (e) => isCode('E_NOT_IMPLEMENTED')(e) && /etcd arbiter is not built yet; use file:DIR/.test((e as Error).message));
  for (const bad of ['file:', 'file:  ', 'memory:x', 'memory', '', 'zookeeper://x', '/tmp/arb']) {
    assert.throws(() => openArbiter(bad), isCode('E_CONFIG_INVALID'), bad);
  }
});
