// Recruiting a backup from a snapshot of the whole guest instead of replaying the log since it
// started (issue 4 item 4), in one process: a guest recorded live is snapshotted while it is
// suspended, restored into a fresh replay runtime in another directory, fed the rest of the
// log, and must end in the recorded run's exact memory, output digest, host state and guest
// directory. A damaged snapshot is refused with E_CORRUPT_ENTRY and changes nothing.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModule, type LoadedModule } from '../src/wasm/module.js';
import { GuestRuntime, SnapshotUnsupported, type GuestEnd, type RecordSink, type RuntimeMode } from '../src/wasm/runtime.js';
import { WasiHost, type OutputEffect } from '../src/wasm/wasi.js';
import { decodeEntry } from '../src/wasm/log.js';
import { recordLocally, replayLocally, restoreLocally } from '../src/wasm/local.js';
import { GuestMemory } from '../src/wasm/memory.js';
import { LOOKUPFLAGS, OFLAGS, RIGHTS } from '../src/wasm/abi.js';
import { Hash64 } from '../src/guest/bytes.js';
import { LineClient } from '../src/testing/line-client.js';
import { freePorts } from '../src/testing/process-cluster.js';

const example = (p: string): string => fileURLToPath(new URL(`../../examples/${p}`, import.meta.url));
const modules = new Map<string, Promise<LoadedModule>>();
const load = (p: string, asyncify = true): Promise<LoadedModule> => {
  const key = `${p}:${asyncify}`;
  let m = modules.get(key);
  if (!m) modules.set(key, (m = loadModule(fs.readFileSync(example(p)), { maxMemoryPages: 1024, asyncify })));
  return m;
};

function tempRoot(t: TestContext): string {
  const dir = fs.mkdtempSync(join(tmpdir(), 'lockstep-snap-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Every file, directory and symlink under `root` with its contents, to compare two guest directories. */
function listing(root: string, dir = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(join(root, dir)).sort()) {
    const rel = dir === '' ? name : `${dir}/${name}`;
    const st = fs.lstatSync(join(root, rel));
    if (st.isDirectory()) Object.assign(out, { [rel]: 'dir' }, listing(root, rel));
    else if (st.isSymbolicLink()) out[rel] = `-> ${fs.readlinkSync(join(root, rel))}`;
    else out[rel] = fs.readFileSync(join(root, rel)).toString('latin1');
  }
  return out;
}

function corruptCode(e: unknown): boolean {
  return (e as { code?: string }).code === 'E_CORRUPT_ENTRY';
}

/** A guest on a host and a runtime, driven by hand (the tests decide when to snapshot). */
interface Guest {
  readonly host: WasiHost;
  readonly rt: GuestRuntime;
  readonly root: string;
  /** Log entries appended so far (record). */
  readonly entries: Uint8Array[];
  readonly taken: Taken[];
  ended: GuestEnd | null;
  readonly done: Promise<GuestEnd>;
}

interface GuestSpec {
  readonly args: readonly string[];
  readonly listen?: readonly { host: string; port: number }[];
  /** Fill the guest directory before the guest starts. */
  readonly seed?: (root: string) => void;
  /** Record: hold the guest on flow control before each of these call indexes and snapshot it there. */
  readonly snapshotsAt?: readonly number[];
}

interface Taken {
  readonly snap: Uint8Array;
  /** Entries appended before the snapshot, and the guest's call count then. */
  readonly entries: number;
  readonly calls: number;
}

function makeHost(spec: GuestSpec, root: string, mode: 'live' | 'replay', rt: () => GuestRuntime | null): WasiHost {
  return new WasiHost({
    args: spec.args, env: [], root, listen: spec.listen ?? [], mode,
    output: (e) => rt()!.onOutput(e), stdout: () => {}, stderr: () => {},
  });
}

/** Start a guest; `from` restores it from a snapshot (replay), else it records live. */
async function startGuest(t: TestContext, loaded: LoadedModule, spec: GuestSpec, mode: RuntimeMode, from?: Uint8Array): Promise<Guest> {
  const root = tempRoot(t);
  spec.seed?.(root);
  const entries: Uint8Array[] = [];
  let rt: GuestRuntime | null = null;
  const host = makeHost(spec, root, mode === 'replay' ? 'replay' : 'live', () => rt);
  t.after(() => {
    rt?.stop();
    host.close();
  });
  const taken: Taken[] = [];
  const stops = [...(spec.snapshotsAt ?? [])];
  const sink: RecordSink = {
    canRecord: () => stops.length === 0 || rt!.callCount < stops[0]!,
    // Called from inside the guest's host call: the snapshot is taken once it has unwound.
    whenCanRecord: () => new Promise<void>((resolve) => setImmediate(() => {
      stops.shift();
      taken.push({ snap: rt!.snapshot(), entries: entries.length, calls: rt!.callCount });
      resolve();
    })),
    append: (p) => void entries.push(p),
    // No backup in these tests: outputs go out at once.
    output: (effects: readonly OutputEffect[]) => effects.forEach((e) => host.performOutput(e)),
  };
  const opts = { loaded, host, mode, sink };
  rt = from === undefined ? new GuestRuntime(opts) : GuestRuntime.restore(opts, from);
  if (mode === 'record' && (spec.listen ?? []).length > 0) await host.openListeners();
  const g: Guest = { host, rt, root, entries, taken, ended: null, done: rt.run() };
  void g.done.then((end) => (g.ended = end));
  return g;
}

function feed(g: Guest, entries: readonly Uint8Array[]): void {
  for (const e of entries) g.rt.feed(decodeEntry(e));
}

/** Wait until a replaying guest has consumed every record up to `calls`. */
async function caughtUp(g: Guest, calls: number, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (g.rt.callCount < calls || g.rt.backlog > 0) {
    if (g.ended !== null) assert.fail(`the replay ended early: ${JSON.stringify(g.ended)}`);
    assert.ok(Date.now() < deadline, `replay stuck at call ${g.rt.callCount} of ${calls}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function assertSameGuest(a: Guest, b: Guest, what: string): void {
  assert.equal(b.rt.callCount, a.rt.callCount, `${what}: calls`);
  assert.equal(b.rt.memoryHash(), a.rt.memoryHash(), `${what}: memory hashes differ`);
  assert.equal(b.rt.outputDigest(), a.rt.outputDigest(), `${what}: output digests differ`);
  assert.equal(b.host.hostState(), a.host.hostState(), `${what}: host states differ`);
  assert.deepEqual(listing(b.root), listing(a.root), `${what}: guest directories differ`);
}

// ---- the kvserver over real TCP, with its persistence file open ------------------------------

test('wasm snapshot: a kvserver snapshotted mid-run and restored elsewhere replays to the recorded state', { timeout: 120_000 }, async (t) => {
  const loaded = await load('kvserver/kvserver.wasm');
  const [port] = await freePorts(1);
  const spec: GuestSpec = { args: ['kvserver', '--persist', 'data/kv.log'], listen: [{ host: '127.0.0.1', port: port! }] };
  // The directory holds more than the guest makes: nested directories, a symlink, a hard link.
  const seed = (root: string): void => {
    fs.mkdirSync(join(root, 'data/old'), { recursive: true });
    fs.writeFileSync(join(root, 'data/old/notes.txt'), 'kept as is\n');
    fs.symlinkSync('old/notes.txt', join(root, 'data/notes'));
    fs.linkSync(join(root, 'data/old/notes.txt'), join(root, 'hard.txt'));
  };
  const primary = await startGuest(t, loaded, { ...spec, seed }, 'record');
  const addr = { host: '127.0.0.1', port: port! };
  const a = await LineClient.connectRetry(addr, 10_000);
  const b = await LineClient.connectRetry(addr, 10_000);
  t.after(() => [a, b].forEach((c) => c.close()));
  for (let i = 0; i < 40; i++) {
    assert.equal(await a.request(`SET k${i % 9} v${i}`), 'OK');
    assert.match(await b.request(`INCR n`), /^\d+$/);
  }
  // Here (between events) the guest is suspended in poll: take the snapshot now.
  const snap = primary.rt.snapshot();
  const atEntries = primary.entries.length;
  const atCalls = primary.rt.callCount;
  assert.ok(atCalls > 200, `${atCalls} calls before the snapshot`);

  // The restored guest gets the entries from two before the snapshot on, as a recruit does when
  // the primary held appends back (flow control): records it holds already must be dropped.
  // The recruit's directory has leftovers of its own: the restore empties it first.
  const backup = await startGuest(t, loaded, { ...spec, seed: (root) => fs.writeFileSync(join(root, 'stale'), 'x') }, 'replay', snap);
  assert.equal(backup.rt.callCount, atCalls);
  assert.equal(backup.rt.memoryHash(), primary.rt.memoryHash(), 'memory right after the restore');
  assert.equal(backup.host.hostState(), primary.host.hostState(), 'host state right after the restore');
  assert.match(backup.host.hostState(), /"kind":"file","path":"\/data\/kv.log"/);
  feed(backup, primary.entries.slice(Math.max(0, atEntries - 2)));

  // More work after the snapshot: a new connection, a closed one, deletes and appends.
  const c = await LineClient.connectRetry(addr, 10_000);
  t.after(() => c.close());
  for (let i = 0; i < 30; i++) {
    assert.match(await c.request(`APPEND k${i % 5} +${i}`), /^\d+$/);
    assert.match(await c.request(`APPEND x ${i}`), /^\d+$/);
  }
  b.close();
  assert.match(await a.request('DEL k1'), /^\d+$/);
  assert.equal(await a.request('COUNT'), '10');
  feed(backup, primary.entries.slice(atEntries));
  await caughtUp(backup, primary.rt.callCount);
  assertSameGuest(primary, backup, 'after the rest of the log');
  assert.match(listing(backup.root)['data/kv.log']!, /^SET k0 v0\n/);
  assert.equal(fs.statSync(join(backup.root, 'hard.txt')).ino, fs.statSync(join(backup.root, 'data/old/notes.txt')).ino, 'the hard link is one file');
});

// ---- a batch guest: snapshots at exact calls, before the start and after the end ---------------

test('wasm snapshot: clockrand snapshotted at chosen calls, before it starts and after it exits', { timeout: 120_000 }, async (t) => {
  const loaded = await load('clockrand/clockrand.wasm');
  const spec: GuestSpec = { args: ['clockrand', '12'], snapshotsAt: [1, 17, 40] };
  const primary = await startGuest(t, loaded, spec, 'record');
  assert.deepEqual(await primary.done, { kind: 'exit', code: 0 });
  assert.deepEqual(primary.taken.map((x) => x.calls), [1, 17, 40]);
  assert.match(listing(primary.root)['clockrand.out']!, /iter 11 /);

  // From each snapshot, with the log from the snapshot's entry on: the same end, exactly.
  for (const k of primary.taken) {
    const b = await startGuest(t, loaded, { args: spec.args }, 'replay', k.snap);
    assert.equal(b.rt.callCount, k.calls);
    feed(b, primary.entries.slice(k.entries));
    assert.deepEqual(await b.done, { kind: 'exit', code: 0 }, `from call ${k.calls}`);
    assertSameGuest(primary, b, `from call ${k.calls}`);
  }

  // After the exit: the restored guest has ended too, with the same memory and directory.
  const after = await startGuest(t, loaded, { args: spec.args }, 'replay', primary.rt.snapshot());
  assert.deepEqual(await after.done, { kind: 'exit', code: 0 });
  assertSameGuest(primary, after, 'after the exit');

  // Before the start: the restored runtime starts the guest afresh and replays the whole log.
  const fresh = new GuestRuntime({ loaded, host: makeHost(spec, tempRoot(t), 'live', () => null), mode: 'record', sink: { canRecord: () => true, whenCanRecord: async () => {}, append: () => {}, output: () => {} } });
  const rep = await restoreLocally(loaded, { args: spec.args, root: tempRoot(t) }, fresh.snapshot(), primary.entries);
  assert.deepEqual(rep.end, { kind: 'exit', code: 0 });
  assert.equal(rep.memoryHash, primary.rt.memoryHash());
  assert.equal(rep.hostState, primary.host.hostState());
});

test('wasm snapshot: a replaying guest with records queued is snapshotted with them, and restores again', { timeout: 60_000 }, async (t) => {
  const loaded = await load('clockrand/clockrand.wasm');
  const spec: GuestSpec = { args: ['clockrand', '8'], snapshotsAt: [10] };
  const primary = await startGuest(t, loaded, spec, 'record');
  await primary.done;
  const first = primary.taken[0]!;
  const b = await startGuest(t, loaded, { args: spec.args }, 'replay', first.snap);
  // The records are queued but the guest has not run them (it resumes in a later turn).
  feed(b, primary.entries.slice(first.entries));
  const queued = b.rt.backlog;
  assert.ok(queued > 0);
  const second = b.rt.snapshot();
  b.rt.stop();
  const c = await startGuest(t, loaded, { args: spec.args }, 'replay', second);
  // (It may have replayed some of them already: run() goes until the guest first waits.)
  assert.equal(c.rt.callCount + c.rt.backlog, first.calls + queued, 'the queued records came along');
  // Entries fed again from the first snapshot on: all are in the second snapshot, all dropped.
  feed(c, primary.entries.slice(first.entries));
  assert.deepEqual(await c.done, { kind: 'exit', code: 0 });
  assertSameGuest(primary, c, 'through two snapshots');
});

// ---- refusals ------------------------------------------------------------------------------------

test('wasm snapshot: a damaged snapshot is refused with E_CORRUPT_ENTRY and changes nothing', { timeout: 60_000 }, async (t) => {
  const loaded = await load('clockrand/clockrand.wasm');
  const primary = await startGuest(t, loaded, { args: ['clockrand', '3'], snapshotsAt: [5] }, 'record');
  await primary.done;
  const snap = primary.taken[0]!.snap;
  const root = tempRoot(t);
  fs.writeFileSync(join(root, 'mine'), 'untouched');
  const tryRestore = (bytes: Uint8Array, l: LoadedModule = loaded): unknown => {
    const host = makeHost({ args: ['clockrand', '3'] }, root, 'replay', () => null);
    try {
      GuestRuntime.restore({ loaded: l, host, mode: 'replay' }, bytes);
      return null;
    } catch (e) {
      return e;
    } finally {
      host.close();
    }
  };
  const flipped = snap.slice();
  flipped[Math.floor(flipped.length / 2)]! ^= 0x40;
  const cases: [string, Uint8Array][] = [
    ['a flipped byte', flipped],
    ['truncated', snap.subarray(0, snap.length - 100)],
    ['empty', new Uint8Array(0)],
    ['garbage', new Uint8Array(5000).fill(0x47)],
  ];
  for (const [what, bytes] of cases) {
    const e = tryRestore(bytes);
    assert.ok(corruptCode(e), `${what}: ${String(e)}`);
  }
  // A well-formed snapshot of another module is refused too.
  const e = tryRestore(snap, await load('kvserver/kvserver.wasm'));
  assert.ok(corruptCode(e) && /not of this guest/.test((e as Error).message), String(e));
  assert.deepEqual(listing(root), { mine: 'untouched' }, 'a refused snapshot left the directory alone');
});

test('wasm snapshot: a guest loaded without asyncify cannot be snapshotted', async (t) => {
  const loaded = await load('clockrand/clockrand.wasm', false);
  // No iterations: no sleep, so no wait (a guest without asyncify cannot wait).
  const rec = await recordLocally(loaded, { args: ['clockrand', '0'], root: tempRoot(t) });
  assert.equal(rec.end.kind, 'exit');
  const host = makeHost({ args: ['clockrand', '2'] }, tempRoot(t), 'live', () => null);
  t.after(() => host.close());
  const rt = new GuestRuntime({ loaded, host, mode: 'plain' });
  assert.throws(() => rt.snapshot(), SnapshotUnsupported);
  assert.throws(() => GuestRuntime.restore({ loaded, host, mode: 'replay' }, new Uint8Array(10)), /without asyncify/);
  // The log is the way for such a guest (the front falls back to it).
  const rep = await replayLocally(loaded, { args: ['clockrand', '0'], root: tempRoot(t) }, rec.entries);
  assert.equal(rep.memoryHash, rec.memoryHash);
});

// ---- the host's part on its own: open files that moved or lost their name --------------------------

test('wasm snapshot: the host state carries open files by path, renamed and unlinked ones too', (t) => {
  const root = tempRoot(t);
  const host = makeHost({ args: ['x'] }, root, 'live', () => null);
  t.after(() => host.close());
  const mem = new GuestMemory(new WebAssembly.Memory({ initial: 1 }));
  let at = 1024;
  const call = (name: string, ...args: (number | bigint)[]): number => {
    const r = host.call(name, mem, args, { startedAtNs: process.hrtime.bigint() });
    assert.equal(r, 0, `${name} failed: ${String(r)}`);
    return r as number;
  };
  const str = (s: string): [number, number] => {
    const b = Buffer.from(s);
    mem.write(at, b);
    at += b.length + 8;
    return [at - b.length - 8, b.length];
  };
  const open = (p: string, oflags: number, rights: bigint): number => {
    const [pp, pl] = str(p);
    call('path_open', 3, LOOKUPFLAGS.SYMLINK_FOLLOW, pp, pl, oflags, rights, 0n, 0, 8);
    return mem.u32(8);
  };
  const write = (fd: number, s: string): void => {
    const [bp, bl] = str(s);
    mem.setU32(16, bp);
    mem.setU32(20, bl);
    call('fd_write', fd, 16, 1, 24);
  };
  const RW = RIGHTS.FD_READ | RIGHTS.FD_WRITE;
  const kept = open('kept.txt', OFLAGS.CREAT, RW);
  write(kept, 'hello world');
  const moved = open('before.txt', OFLAGS.CREAT, RIGHTS.FD_READ);
  fs.writeFileSync(join(root, 'before.txt'), 'moving');
  const gone = open('gone.txt', OFLAGS.CREAT, RIGHTS.FD_WRITE);
  write(gone, 'no name any more');
  const [fp, fl] = str('before.txt');
  const [tp, tl] = str('after.txt');
  call('path_rename', 3, fp, fl, 3, tp, tl);
  const [gp, gl] = str('gone.txt');
  call('path_unlink_file', 3, gp, gl);
  const dirFd = open('.', OFLAGS.DIRECTORY, RW);

  const snap = host.snapshotState();
  const root2 = tempRoot(t);
  const host2 = makeHost({ args: ['x'] }, root2, 'replay', () => null);
  t.after(() => host2.close());
  host2.restoreState(snap);
  assert.equal(host2.hostState(), host.hostState());
  assert.deepEqual(listing(root2), listing(root));
  // Each restored fd reaches the same bytes, at the same position.
  const readAll = (h: WasiHost, fd: number): string => {
    mem.setU32(16, 4096);
    mem.setU32(20, 256);
    assert.equal(h.call('fd_pread', mem, [fd, 16, 1, 0n, 24], { startedAtNs: 0n }), 0);
    return mem.readString(4096, mem.u32(24));
  };
  assert.equal(readAll(host2, kept), 'hello world');
  assert.equal(readAll(host2, moved), 'moving');
  assert.match(host2.hostState(), /"path":"\/gone.txt","pos":"16"/);
  assert.ok(dirFd > 3);
  // The write-only unlinked file is still writable through its fd, and has no name.
  assert.equal(host2.call('fd_write', mem, [gone, 16, 1, 24], { startedAtNs: 0n }), 0);
  assert.equal(fs.existsSync(join(root2, 'gone.txt')), false);
});

test('Hash64: state() and setState() carry a running hash over', () => {
  const a = new Hash64().str('abc').u32(7);
  const b = new Hash64().setState(a.state());
  a.bytes(new Uint8Array([1, 2, 3]));
  b.bytes(new Uint8Array([1, 2, 3]));
  assert.deepEqual([b.a, b.b], [a.a, a.b]);
});
