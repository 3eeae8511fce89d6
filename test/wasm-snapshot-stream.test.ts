// The streamed guest snapshot (issue 9 item 4, src/wasm/image-stream.ts), in one process: taken
// at one point while the guest keeps serving clients between its pieces, restored piece by piece
// into a fresh replay runtime, which must hold the state as of the start and then replay to the
// primary's exact state; a damaged, truncated or padded stream is refused with E_CORRUPT_ENTRY
// (never another error), and a refused stream changes nothing in the guest directory.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModule, type LoadedModule } from '../src/wasm/module.js';
import { GuestRuntime, type RecordSink } from '../src/wasm/runtime.js';
import { WasiHost, type OutputEffect } from '../src/wasm/wasi.js';
import { decodeEntry } from '../src/wasm/log.js';
import { LineClient } from '../src/testing/line-client.js';
import { freePorts } from '../src/testing/process-cluster.js';

const kvserverPath = fileURLToPath(new URL('../../examples/kvserver/kvserver.wasm', import.meta.url));
let kvserver: Promise<LoadedModule> | null = null;
const load = (): Promise<LoadedModule> => (kvserver ??= loadModule(fs.readFileSync(kvserverPath), { maxMemoryPages: 1024 }));

function tempRoot(t: TestContext): string {
  const dir = fs.mkdtempSync(join(tmpdir(), 'lockstep-snapstream-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function newHost(root: string, listen: { host: string; port: number }[], mode: 'live' | 'replay', rt: () => GuestRuntime | null): WasiHost {
  return new WasiHost({
    args: ['kvserver', '--persist', 'kv.log'], env: [], root, listen, mode,
    output: (e) => rt()!.onOutput(e), stdout: () => {}, stderr: () => {},
  });
}

/** A recording kvserver on `port` whose outputs go out at once (no backup here). */
async function primaryGuest(t: TestContext, port: number): Promise<{ rt: GuestRuntime; host: WasiHost; entries: Uint8Array[]; root: string }> {
  const entries: Uint8Array[] = [];
  let rt: GuestRuntime | null = null;
  const root = tempRoot(t);
  const host = newHost(root, [{ host: '127.0.0.1', port }], 'live', () => rt);
  const sink: RecordSink = {
    canRecord: () => true,
    whenCanRecord: async () => {},
    append: (p) => void entries.push(p),
    output: (effects: readonly OutputEffect[]) => effects.forEach((e) => host.performOutput(e)),
  };
  rt = new GuestRuntime({ loaded: await load(), host, mode: 'record', sink });
  t.after(() => {
    rt!.stop();
    host.close();
  });
  await host.openListeners();
  void rt.run();
  return { rt, host, entries, root };
}

/** Restore `pieces` into a fresh replay runtime in `root`; the error if it is refused. */
function restorePieces(loaded: LoadedModule, root: string, port: number, pieces: readonly Uint8Array[]): { rt: GuestRuntime; host: WasiHost } | { error: unknown } {
  let rt: GuestRuntime | null = null;
  const host = newHost(root, [{ host: '127.0.0.1', port }], 'replay', () => rt);
  try {
    const s = GuestRuntime.restoreStream({ loaded, host, mode: 'replay' });
    for (const p of pieces) s.add(p);
    rt = s.finish();
    return { rt, host };
  } catch (error) {
    host.close();
    return { error };
  }
}

test('wasm snapshot stream: pieces made while the guest keeps serving give the state as of the start, and replay to the end', { timeout: 120_000 }, async (t) => {
  const loaded = await load();
  const [port] = await freePorts(1);
  const p = await primaryGuest(t, port!);
  const addr = { host: '127.0.0.1', port: port! };
  const cl = await LineClient.connectRetry(addr, 10_000);
  t.after(() => cl.close());
  for (let i = 0; i < 60; i++) assert.equal(await cl.request(`SET k${i % 13} ${'v'.repeat(i * 40)}`), 'OK');

  // The consistent point: here, between events, the guest is suspended.
  const stream = p.rt.snapshotStream();
  const atHash = p.rt.memoryHash();
  const atCalls = p.rt.callCount;
  const atEntries = p.entries.length;
  const atHostState = p.host.hostState();
  // Pieces are made one at a time while the guest handles more requests (memory, directory and
  // counters change under the stream).
  const pieces: Uint8Array[] = [];
  for (let i = 0; ; i++) {
    const piece = stream.next(4096 + 64);
    if (piece === null) break;
    pieces.push(piece);
    if (i % 3 === 0) assert.match(await cl.request(`APPEND k${i % 13} ${'w'.repeat(100)}`), /^\d+$/);
  }
  assert.ok(pieces.length > 20, `${pieces.length} pieces`);
  assert.notEqual(p.rt.memoryHash(), atHash, 'the guest ran on between the pieces');

  const root = tempRoot(t);
  const r = restorePieces(loaded, root, port!, pieces);
  assert.ok('rt' in r, `refused: ${String((r as { error: unknown }).error)}`);
  t.after(() => {
    r.rt.stop();
    r.host.close();
  });
  assert.equal(r.rt.callCount, atCalls);
  assert.equal(r.rt.memoryHash(), atHash, 'the restored memory is the memory as of the start');
  assert.equal(r.host.hostState(), atHostState, 'the host state as of the start');

  // The log from the snapshot on: the restored guest ends in the primary's exact state.
  void r.rt.run();
  for (const e of p.entries.slice(atEntries)) r.rt.feed(decodeEntry(e));
  const deadline = Date.now() + 20_000;
  while (r.rt.callCount < p.rt.callCount || r.rt.backlog > 0) {
    assert.ok(Date.now() < deadline, `replay stuck at ${r.rt.callCount} of ${p.rt.callCount}`);
    await new Promise((res) => setTimeout(res, 5));
  }
  assert.equal(r.rt.memoryHash(), p.rt.memoryHash());
  assert.equal(r.rt.outputDigest(), p.rt.outputDigest());
  assert.equal(r.host.hostState(), p.host.hostState());
  assert.equal(fs.readFileSync(join(root, 'kv.log'), 'latin1'), fs.readFileSync(join(p.root, 'kv.log'), 'latin1'));
});

test('wasm snapshot stream: a damaged piece anywhere, a missing or an extra one is refused with E_CORRUPT_ENTRY', { timeout: 120_000 }, async (t) => {
  const loaded = await load();
  const [port] = await freePorts(1);
  const p = await primaryGuest(t, port!);
  const cl = await LineClient.connectRetry({ host: '127.0.0.1', port: port! }, 10_000);
  t.after(() => cl.close());
  for (let i = 0; i < 20; i++) assert.equal(await cl.request(`SET k${i} ${'x'.repeat(300)}`), 'OK');
  const stream = p.rt.snapshotStream();
  const pieces: Uint8Array[] = [];
  for (let piece = stream.next(16_384); piece !== null; piece = stream.next(16_384)) pieces.push(piece);
  const root = tempRoot(t);
  fs.writeFileSync(join(root, 'mine'), 'untouched');

  const refused = (what: string, ps: Uint8Array[]): void => {
    const r = restorePieces(loaded, root, port!, ps);
    assert.ok('error' in r, `${what}: restored`);
    assert.equal((r.error as { code?: string }).code, 'E_CORRUPT_ENTRY', `${what}: ${String(r.error)}`);
  };
  // Every piece, at its first, a middle and its last byte, and a few bytes between.
  for (const [i, piece] of pieces.entries()) {
    const at = new Set([0, 1, 2, 3, Math.floor(piece.length / 3), Math.floor(piece.length / 2), piece.length - 1]);
    for (const k of at) {
      const bad = pieces.map((x) => x);
      const copy = piece.slice();
      copy[k]! ^= 0x20;
      bad[i] = copy;
      refused(`piece ${i} of ${pieces.length}, byte ${k}`, bad);
    }
  }
  refused('the last piece missing', pieces.slice(0, -1));
  refused('a piece missing in the middle', [...pieces.slice(0, 2), ...pieces.slice(3)]);
  refused('a piece twice', [...pieces.slice(0, 3), pieces[2]!, ...pieces.slice(3)]);
  refused('bytes after the end', [...pieces, new Uint8Array([0x74, 1, 0])]);
  refused('a half piece', [...pieces.slice(0, -1), pieces.at(-1)!.subarray(0, 10)]);
  refused('garbage', [new Uint8Array(5000).fill(0x47)]);
  refused('nothing', []);
  assert.deepEqual(fs.readdirSync(root), ['mine'], 'a refused stream left the directory alone');
  assert.equal(fs.readFileSync(join(root, 'mine'), 'utf8'), 'untouched');

  // Split anywhere (not at the producer's piece boundaries), the same bytes still restore.
  const all = Buffer.concat(pieces);
  const odd: Uint8Array[] = [];
  for (let at = 0, n = 1; at < all.length; at += n, n = (n * 7 + 3) % 9000 + 1) odd.push(all.subarray(at, at + n));
  const r = restorePieces(loaded, root, port!, odd);
  assert.ok('rt' in r, String((r as { error: unknown }).error));
  r.host.close();
});
