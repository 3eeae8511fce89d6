// The WASI preview1 host on its own: calls are driven directly against a bare
// WebAssembly.Memory (no wasm module), with iovecs, strings and structs laid out by hand the
// way wasi-libc would, and the results read back from memory.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ERRNO, EVENTTYPE, FDFLAGS, FILETYPE, LOOKUPFLAGS, OFLAGS, RIGHTS, SDFLAGS, WASI_FUNCTIONS, WHENCE, wasiResults } from '../src/wasm/abi.js';
import { GuestMemory, WasiFault } from '../src/wasm/memory.js';
import { WasiExit, WasiHost, isWait, type OutputEffect, type Wait, type WasiHostOptions } from '../src/wasm/wasi.js';
import { Guest } from '../src/testing/wasi-guest.js';
import { fuzzIterations } from '../src/testing/fuzz-scale.js';

// ---- fixtures -------------------------------------------------------------------------------

const RW = RIGHTS.FD_READ | RIGHTS.FD_WRITE;
const enc = new TextEncoder();
const dec = new TextDecoder();

interface Fixture {
  host: WasiHost;
  g: Guest;
  root: string;
  effects: OutputEffect[];
  stdout: Uint8Array[];
  call: (name: string, ...args: (number | bigint)[]) => number | Wait;
  ok: (name: string, ...args: (number | bigint)[]) => void;
}

function tempRoot(t: TestContext): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-wasi-'));
  t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  return root;
}

function fixture(t: TestContext, opts: Partial<WasiHostOptions> = {}): Fixture {
  const root = opts.root ?? tempRoot(t);
  const effects: OutputEffect[] = [];
  const stdout: Uint8Array[] = [];
  const host = new WasiHost({
    args: ['prog'], env: [], listen: [], mode: 'live', ...opts, root,
    output: (e) => effects.push(e),
    stdout: (b) => stdout.push(b),
    stderr: () => {},
  });
  t.after(() => host.close());
  const g = new Guest();
  const call = (name: string, ...args: (number | bigint)[]): number | Wait =>
    host.call(name, g.mem, args, { startedAtNs: process.hrtime.bigint() });
  const ok = (name: string, ...args: (number | bigint)[]): void => assert.equal(call(name, ...args), ERRNO.SUCCESS, name);
  return { host, g, root, effects, stdout, call, ok };
}

/** Opens a guest path under fd 3; returns the new fd. */
function open(f: Fixture, p: string, oflags = 0, rights = RW, fdflags = 0, dirflags: number = LOOKUPFLAGS.SYMLINK_FOLLOW): number {
  const [pp, pl] = f.g.str(p);
  const out = f.g.alloc(4);
  f.ok('path_open', 3, dirflags, pp, pl, oflags, rights, 0n, fdflags, out);
  return f.g.mem.u32(out);
}

function openErr(f: Fixture, p: string, oflags = 0, dirflags: number = LOOKUPFLAGS.SYMLINK_FOLLOW): number | Wait {
  const [pp, pl] = f.g.str(p);
  return f.call('path_open', 3, dirflags, pp, pl, oflags, RW, 0n, 0, f.g.alloc(4));
}

function write(f: Fixture, fd: number, s: string): number {
  const io = f.g.iovs(s);
  const n = f.g.alloc(4);
  f.ok('fd_write', fd, io.ptr, io.n, n);
  return f.g.mem.u32(n);
}

/** fd_read into one buffer of `size`; returns the text, or the errno / Wait. */
function read(f: Fixture, fd: number, size = 256): string | number | Wait {
  const io = f.g.iovs(size);
  const n = f.g.alloc(4);
  const r = f.call('fd_read', fd, io.ptr, io.n, n);
  if (r !== ERRNO.SUCCESS) return r;
  return dec.decode(f.g.mem.read(io.bufs[0]!, f.g.mem.u32(n)));
}

function pathCall(f: Fixture, name: string, p: string): number | Wait {
  const [pp, pl] = f.g.str(p);
  return f.call(name, 3, pp, pl);
}

/** fd_readdir in one go with a big buffer: the names, in order. */
function listDir(f: Fixture, fd: number): string[] {
  const buf = f.g.alloc(4096);
  const used = f.g.alloc(4);
  f.ok('fd_readdir', fd, buf, 4096, 0n, used);
  return parseDirents(f.g.mem, buf, f.g.mem.u32(used)).map((d) => d.name);
}

function parseDirents(mem: GuestMemory, buf: number, used: number): { next: bigint; ino: bigint; name: string; type: number }[] {
  const out = [];
  for (let at = buf; at + 24 <= buf + used; ) {
    const namlen = mem.u32(at + 16);
    if (at + 24 + namlen > buf + used) break;
    out.push({ next: mem.u64(at), ino: mem.u64(at + 8), type: mem.u8(at + 20), name: mem.readString(at + 24, namlen) });
    at += 24 + namlen;
  }
  return out;
}

/** Retries a call until it stops waiting, as the runtime does (same args, same start time). */
async function settle(f: Fixture, name: string, args: (number | bigint)[], ms = 5000): Promise<{ ret: number; waited: number }> {
  const ctx = { startedAtNs: process.hrtime.bigint() };
  const deadline = Date.now() + ms;
  for (let waited = 0; ; waited++) {
    const r = f.host.call(name, f.g.mem, args, ctx);
    if (!isWait(r)) return { ret: r, waited };
    assert.ok(Date.now() < deadline, `${name} still waiting after ${ms} ms`);
    await withTimeout(r.wait, deadline - Date.now(), name);
  }
}

async function withTimeout(p: Promise<void>, ms: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise<void>((_, rej) => (timer = setTimeout(() => rej(new Error(`${what}: no wake-up in ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function connect(t: TestContext, port: number): Promise<net.Socket & { received: () => string }> {
  const s = net.connect({ host: '127.0.0.1', port });
  t.after(() => s.destroy());
  let got = '';
  s.on('data', (b) => (got += b.toString()));
  s.on('error', () => {});
  await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
  return Object.assign(s, { received: () => got });
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// ---- abi and memory -------------------------------------------------------------------------

test('abi: every preview1 import is listed; only proc_exit has no result', () => {
  const names = Object.keys(WASI_FUNCTIONS);
  assert.equal(names.length, 46);
  assert.deepEqual(WASI_FUNCTIONS.fd_seek, ['i32', 'i64', 'i32', 'i32']);
  assert.deepEqual(WASI_FUNCTIONS.path_open, ['i32', 'i32', 'i32', 'i32', 'i32', 'i64', 'i64', 'i32', 'i32']);
  assert.deepEqual(wasiResults('proc_exit'), []);
  assert.deepEqual(wasiResults('fd_read'), ['i32']);
  assert.equal(ERRNO.NOTCAPABLE, 76);
  assert.equal(ERRNO.SPIPE, 70);
});

test('memory: little-endian accessors, faults instead of range errors, growth, tracking, hash', () => {
  const wm = new WebAssembly.Memory({ initial: 1 });
  const mem = new GuestMemory(wm);
  mem.setU32(8, 0x01020304);
  assert.deepEqual([...mem.read(8, 4)], [4, 3, 2, 1]);
  mem.setU64(16, -1n);
  assert.equal(mem.u64(16), 0xffff_ffff_ffff_ffffn);
  mem.setU16(30, 0xbeef);
  assert.equal(mem.u16(30), 0xbeef);
  assert.equal(mem.u8(30), 0xef);
  for (const bad of [() => mem.u32(65533), () => mem.read(-1, 1), () => mem.read(0, -1), () => mem.u8(1.5),
    () => mem.write(65535, new Uint8Array(2)), () => mem.u8(2 ** 32), () => mem.check(0, 65537)]) {
    assert.throws(bad, WasiFault);
  }
  mem.u8(65535);
  const before = mem.hash();
  wm.grow(1);
  mem.setU32(65536 + 100, 7); // past the old end: the views must have been refreshed
  assert.equal(mem.u32(65536 + 100), 7);
  assert.equal(mem.byteLength, 131072);
  assert.notEqual(mem.hash(), before);
  mem.startTracking();
  mem.setU8(1, 9);
  mem.write(40, enc.encode('hi'));
  const writes = mem.stopTracking();
  assert.deepEqual(writes.map((w) => [w.ptr, [...w.data]]), [[1, [9]], [40, [104, 105]]]);
  mem.setU8(2, 1);
  assert.deepEqual(mem.stopTracking(), []);
});

test('memory: every accessor sees a grow at once, whatever was called last', () => {
  const accessors: [string, (m: GuestMemory, at: number) => unknown][] = [
    ['u8', (m, at) => m.u8(at)], ['u16', (m, at) => m.u16(at)], ['u32', (m, at) => m.u32(at)], ['u64', (m, at) => m.u64(at)],
    ['read', (m, at) => m.read(at, 4)], ['readString', (m, at) => m.readString(at, 4)], ['setU8', (m, at) => m.setU8(at, 1)],
    ['setU16', (m, at) => m.setU16(at, 1)], ['setU32', (m, at) => m.setU32(at, 1)], ['setU64', (m, at) => m.setU64(at, 1n)],
    ['write', (m, at) => m.write(at, new Uint8Array(4))], ['hash', (m) => m.hash()],
  ];
  for (const [name, use] of accessors) {
    const wm = new WebAssembly.Memory({ initial: 1 });
    const mem = new GuestMemory(wm);
    mem.u32(0); // cache views over the first buffer
    wm.grow(1); // detaches it
    assert.doesNotThrow(() => use(mem, 65536 + 8), `${name} right after a grow`);
    assert.doesNotThrow(() => use(mem, 0), `${name} below the old end`);
  }
});

// ---- config calls ---------------------------------------------------------------------------

test('args and environ are laid out as wasi-libc expects', (t) => {
  const f = fixture(t, { args: ['prog', 'a b', 'ü'], env: ['A=1', 'EMPTY='] });
  const { g } = f;
  const [c, s] = [g.alloc(4), g.alloc(4)];
  f.ok('args_sizes_get', c, s);
  assert.equal(g.mem.u32(c), 3);
  assert.equal(g.mem.u32(s), 5 + 4 + 3);
  const [argv, buf] = [g.alloc(12), g.alloc(12)];
  f.ok('args_get', argv, buf);
  assert.deepEqual([0, 1, 2].map((i) => g.mem.u32(argv + 4 * i)), [buf, buf + 5, buf + 9]);
  assert.equal(dec.decode(g.mem.read(buf, 12)), 'prog\0a b\0ü\0');
  f.ok('environ_sizes_get', c, s);
  assert.deepEqual([g.mem.u32(c), g.mem.u32(s)], [2, 4 + 7]);
  const [envp, ebuf] = [g.alloc(8), g.alloc(11)];
  f.ok('environ_get', envp, ebuf);
  assert.equal(g.mem.u32(envp + 4), ebuf + 4);
  assert.equal(dec.decode(g.mem.read(ebuf, 11)), 'A=1\0EMPTY=\0');
});

test('fd 3 is the preopened "/" and nothing else is a preopen', (t) => {
  const f = fixture(t);
  const p = f.g.alloc(8);
  f.ok('fd_prestat_get', 3, p);
  assert.equal(f.g.mem.u8(p), 0);
  assert.equal(f.g.mem.u32(p + 4), 1);
  const name = f.g.alloc(8);
  f.ok('fd_prestat_dir_name', 3, name, 1);
  assert.equal(f.g.mem.readString(name, 1), '/');
  assert.equal(f.call('fd_prestat_dir_name', 3, name, 0), ERRNO.NAMETOOLONG);
  assert.equal(f.call('fd_prestat_get', 4, p), ERRNO.BADF);
  assert.equal(f.call('fd_prestat_get', 1, p), ERRNO.BADF);
  const st = f.g.alloc(24);
  for (const fd of [0, 1, 2]) {
    f.ok('fd_fdstat_get', fd, st);
    assert.equal(f.g.mem.u8(st), FILETYPE.CHAR);
  }
  f.ok('fd_fdstat_get', 3, st);
  assert.equal(f.g.mem.u8(st), FILETYPE.DIRECTORY);
  assert.equal(f.g.mem.u64(st + 8), (1n << 30n) - 1n);
});

test('clocks, random_get, sched_yield', (t) => {
  const f = fixture(t);
  const p = f.g.alloc(8);
  f.ok('clock_time_get', 0, 1000n, p);
  const wall = f.g.mem.u64(p);
  assert.ok(Math.abs(Number(wall / 1_000_000n) - Date.now()) < 5000);
  f.ok('clock_time_get', 1, 1n, p);
  const m1 = f.g.mem.u64(p);
  f.ok('clock_time_get', 1, 1n, p);
  assert.ok(f.g.mem.u64(p) >= m1);
  assert.equal(f.call('clock_time_get', 9, 1n, p), ERRNO.INVAL);
  f.ok('clock_res_get', 1, p);
  assert.equal(f.g.mem.u64(p), 1n);
  const buf = f.g.alloc(64);
  f.g.mem.startTracking();
  f.ok('random_get', buf, 64);
  const writes = f.g.mem.stopTracking();
  assert.equal(writes.length, 1);
  assert.equal(writes[0]!.data.byteLength, 64);
  assert.ok(writes[0]!.data.some((b) => b !== 0));
  f.ok('sched_yield');
});

test('stdin reads its buffer then EOF; stdout writes become effects', (t) => {
  const f = fixture(t, { stdin: enc.encode('abc') });
  assert.equal(read(f, 0, 2), 'ab');
  assert.equal(read(f, 0, 2), 'c');
  assert.equal(read(f, 0, 2), '');
  assert.equal(write(f, 1, 'out!'), 4);
  assert.equal(write(f, 2, 'err'), 3);
  assert.deepEqual(f.effects.map((e) => [e.kind, 'bytes' in e ? dec.decode(e.bytes) : '']), [['stdout', 'out!'], ['stderr', 'err']]);
  assert.equal(f.stdout.length, 0, 'nothing is written before performOutput');
  f.host.performOutput(f.effects[0]!);
  assert.equal(dec.decode(f.stdout[0]), 'out!');
  assert.equal(read(f, 1), ERRNO.BADF);
  assert.equal(f.call('fd_seek', 1, 0n, 0, f.g.alloc(8)), ERRNO.SPIPE);
});

// ---- files ----------------------------------------------------------------------------------

test('files: create, write, seek, read, pread/pwrite, stat, truncate, append', (t) => {
  const f = fixture(t);
  const { g } = f;
  const fd = open(f, 'a.txt', OFLAGS.CREAT);
  assert.equal(fd, 4);
  assert.equal(write(f, fd, 'hello world'), 11);
  assert.equal(fs.readFileSync(path.join(f.root, 'a.txt'), 'utf8'), 'hello world');
  const pos = g.alloc(8);
  f.ok('fd_tell', fd, pos);
  assert.equal(g.mem.u64(pos), 11n);
  assert.equal(read(f, fd), '', 'at the end: EOF');
  f.ok('fd_seek', fd, -5n, WHENCE.END, pos);
  assert.equal(g.mem.u64(pos), 6n);
  assert.equal(read(f, fd), 'world');
  assert.equal(f.call('fd_seek', fd, -100n, WHENCE.CUR, pos), ERRNO.INVAL);
  const io = g.iovs(3, 2);
  const n = g.alloc(4);
  f.ok('fd_pread', fd, io.ptr, io.n, 0n, n);
  assert.equal(g.mem.u32(n), 5);
  assert.equal(g.mem.readString(io.bufs[0]!, 3) + g.mem.readString(io.bufs[1]!, 2), 'hello');
  const w = g.iovs('J');
  f.ok('fd_pwrite', fd, w.ptr, w.n, 0n, n);
  f.ok('fd_tell', fd, pos);
  assert.equal(g.mem.u64(pos), 11n, 'pread/pwrite leave the position alone');
  const st = g.alloc(64);
  f.ok('fd_filestat_get', fd, st);
  assert.equal(g.mem.u64(st), 0n, 'dev is always 0');
  assert.notEqual(g.mem.u64(st + 8), 0n);
  assert.equal(g.mem.u8(st + 16), FILETYPE.REGULAR);
  assert.equal(g.mem.u64(st + 32), 11n);
  f.ok('fd_filestat_set_size', fd, 4n);
  f.ok('fd_allocate', fd, 0n, 6n);
  assert.equal(fs.readFileSync(path.join(f.root, 'a.txt'), 'latin1'), 'Jell\0\0');
  f.ok('fd_sync', fd);
  f.ok('fd_datasync', fd);
  f.ok('fd_advise', fd, 0n, 0n, 0);
  f.ok('fd_close', fd);
  assert.equal(f.call('fd_close', fd), ERRNO.BADF);

  const ap = open(f, 'a.txt', 0, RW, FDFLAGS.APPEND);
  write(f, ap, '!');
  assert.equal(fs.readFileSync(path.join(f.root, 'a.txt'), 'latin1'), 'Jell\0\0!');
  const fdst = g.alloc(24);
  f.ok('fd_fdstat_get', ap, fdst);
  assert.equal(g.mem.u16(fdst + 2), FDFLAGS.APPEND);
  assert.equal(g.mem.u8(fdst), FILETYPE.REGULAR);
  assert.equal(openErr(f, 'a.txt', OFLAGS.CREAT | OFLAGS.EXCL), ERRNO.EXIST);
  assert.equal(openErr(f, 'a.txt', OFLAGS.DIRECTORY), ERRNO.NOTDIR);
  assert.equal(openErr(f, 'nope.txt'), ERRNO.NOENT);
  const tr = open(f, 'a.txt', OFLAGS.TRUNC);
  assert.equal(read(f, tr), '');
  assert.equal(fs.statSync(path.join(f.root, 'a.txt')).size, 0);
});

test('directories: mkdir, readdir (sorted, with . and .., cookies), rename, unlink, rmdir', (t) => {
  const f = fixture(t);
  const { g } = f;
  assert.equal(pathCall(f, 'path_create_directory', 'sub'), ERRNO.SUCCESS);
  assert.equal(pathCall(f, 'path_create_directory', 'sub'), ERRNO.EXIST);
  for (const name of ['zeta', 'alpha', 'mid']) f.ok('fd_close', open(f, `sub/${name}`, OFLAGS.CREAT));
  const dir = open(f, 'sub', OFLAGS.DIRECTORY, RIGHTS.FD_READDIR);
  assert.deepEqual(listDir(f, dir), ['.', '..', 'alpha', 'mid', 'zeta']);
  assert.deepEqual(listDir(f, 3), ['.', '..', 'sub']);
  assert.equal(read(f, dir), ERRNO.ISDIR);

  // A small buffer: the last entry is cut, bufused == buf_len, and the cookie resumes.
  const buf = g.alloc(64);
  const used = g.alloc(4);
  f.ok('fd_readdir', dir, buf, 60, 0n, used);
  assert.equal(g.mem.u32(used), 60);
  const first = parseDirents(g.mem, buf, 60);
  assert.deepEqual(first.map((d) => d.name), ['.', '..']);
  f.ok('fd_readdir', dir, buf, 64, first[1]!.next, used);
  assert.deepEqual(parseDirents(g.mem, buf, g.mem.u32(used)).map((d) => [d.name, d.type]), [['alpha', FILETYPE.REGULAR], ['mid', FILETYPE.REGULAR]]);
  f.ok('fd_readdir', dir, buf, 64, 99n, used);
  assert.equal(g.mem.u32(used), 0);

  // path_filestat_get, relative to the subdirectory fd.
  const [pp, pl] = g.str('alpha');
  const st = g.alloc(64);
  assert.equal(f.call('path_filestat_get', dir, 0, pp, pl, st), ERRNO.SUCCESS);
  assert.equal(g.mem.u8(st + 16), FILETYPE.REGULAR);

  const [a, al] = g.str('sub/alpha');
  const [b, bl] = g.str('beta');
  f.ok('path_rename', 3, a, al, 3, b, bl);
  assert.ok(fs.existsSync(path.join(f.root, 'beta')));
  assert.equal(pathCall(f, 'path_remove_directory', 'sub'), ERRNO.NOTEMPTY);
  assert.equal(pathCall(f, 'path_unlink_file', 'sub'), ERRNO.ISDIR);
  for (const name of ['mid', 'zeta']) assert.equal(pathCall(f, 'path_unlink_file', `sub/${name}`), ERRNO.SUCCESS);
  assert.equal(pathCall(f, 'path_remove_directory', 'sub/.'), ERRNO.INVAL);
  assert.equal(pathCall(f, 'path_remove_directory', 'sub'), ERRNO.SUCCESS);
  assert.equal(pathCall(f, 'path_unlink_file', 'beta'), ERRNO.SUCCESS);
  assert.deepEqual(fs.readdirSync(f.root), []);
  assert.equal(pathCall(f, 'path_remove_directory', '.'), ERRNO.INVAL);
  assert.ok(fs.existsSync(f.root));
});

test('symlinks inside the root work; readlink; fd numbers are the lowest free', (t) => {
  const f = fixture(t);
  const { g } = f;
  pathCall(f, 'path_create_directory', 'd');
  f.ok('fd_close', open(f, 'd/file', OFLAGS.CREAT));
  const [tp, tl] = g.str('d');
  const [lp, ll] = g.str('lnk');
  f.ok('path_symlink', tp, tl, 3, lp, ll);
  const x = open(f, 'lnk/file');
  write(f, x, 'via link');
  assert.equal(fs.readFileSync(path.join(f.root, 'd/file'), 'utf8'), 'via link');
  const buf = g.alloc(16);
  const used = g.alloc(4);
  f.ok('path_readlink', 3, lp, ll, buf, 16, used);
  assert.equal(g.mem.readString(buf, g.mem.u32(used)), 'd');
  // fds: 4 is x; open two more, close the middle one, the next open takes it back.
  const y = open(f, 'd/file');
  const z = open(f, 'd/file');
  assert.deepEqual([x, y, z], [4, 5, 6]);
  f.ok('fd_close', y);
  assert.equal(open(f, 'd/file'), 5);
  f.ok('fd_renumber', 6, 4);
  assert.equal(f.call('fd_tell', 6, g.alloc(8)), ERRNO.BADF);
  assert.equal(open(f, 'd/file'), 6);
});

test('nothing escapes the root: .., absolute paths and symlinks out are refused', (t) => {
  const f = fixture(t);
  const outside = tempRoot(t);
  fs.writeFileSync(path.join(outside, 'secret'), 'no');
  fs.symlinkSync(outside, path.join(f.root, 'abs'));
  fs.symlinkSync('../..', path.join(f.root, 'up'));
  fs.mkdirSync(path.join(f.root, 'sub'));
  const cases: [string, number][] = [
    ['../x', ERRNO.NOTCAPABLE],
    ['/etc/passwd', ERRNO.NOTCAPABLE],
    ['sub/../../x', ERRNO.NOTCAPABLE],
    ['abs/secret', ERRNO.NOTCAPABLE],
    ['abs', ERRNO.NOTCAPABLE],
    ['up/etc/passwd', ERRNO.NOTCAPABLE],
    ['', ERRNO.NOENT],
  ];
  for (const [p, want] of cases) assert.equal(openErr(f, p, OFLAGS.CREAT), want, p);
  assert.equal(openErr(f, 'abs', 0, 0), ERRNO.LOOP, 'a final symlink not to be followed is not opened');
  const [pp, pl] = f.g.str('abs/secret');
  assert.equal(f.call('path_filestat_get', 3, LOOKUPFLAGS.SYMLINK_FOLLOW, pp, pl, f.g.alloc(64)), ERRNO.NOTCAPABLE);
  assert.equal(pathCall(f, 'path_unlink_file', '../x'), ERRNO.NOTCAPABLE);
  assert.equal(pathCall(f, 'path_create_directory', 'abs/newdir'), ERRNO.NOTCAPABLE);
  const [tp, tl] = f.g.str('/etc');
  const [lp, ll] = f.g.str('etc');
  assert.equal(f.call('path_symlink', tp, tl, 3, lp, ll), ERRNO.NOTCAPABLE);
  // A directory fd is a boundary too: ".." from it may not climb even to the root.
  const sub = open(f, 'sub', OFLAGS.DIRECTORY, RIGHTS.FD_READDIR);
  const [up, ul] = f.g.str('../x');
  assert.equal(f.call('path_open', sub, 0, up, ul, OFLAGS.CREAT, RW, 0n, 0, f.g.alloc(4)), ERRNO.NOTCAPABLE);
  assert.deepEqual(fs.readdirSync(outside), ['secret']);
  assert.equal(fs.readFileSync(path.join(outside, 'secret'), 'utf8'), 'no');
});

// ---- robustness -----------------------------------------------------------------------------

test('bad pointers are FAULT, unknown fds BADF, wrong kinds their errno; nothing is consumed by a fault', (t) => {
  const f = fixture(t, { stdin: enc.encode('keep') });
  const { g } = f;
  const end = g.mem.byteLength;
  assert.equal(f.call('args_get', -1, 0), ERRNO.FAULT);
  assert.equal(f.call('args_sizes_get', end - 2, 0), ERRNO.FAULT);
  assert.equal(f.call('clock_time_get', 1, 0n, end), ERRNO.FAULT);
  const bad = g.iovs(4);
  g.mem.setU32(bad.ptr, end - 2); // the buffer runs past the end
  assert.equal(f.call('fd_write', 1, bad.ptr, 1, g.alloc(4)), ERRNO.FAULT);
  assert.equal(f.effects.length, 0, 'a faulting write emits nothing');
  const io = g.iovs(4);
  assert.equal(f.call('fd_read', 0, io.ptr, io.n, end), ERRNO.FAULT);
  assert.equal(read(f, 0), 'keep', 'the faulting read consumed nothing');
  assert.equal(f.call('fd_read', 0, io.ptr, 0x7fff_ffff, g.alloc(4)), ERRNO.FAULT);
  assert.equal(f.call('fd_write', 99, io.ptr, io.n, g.alloc(4)), ERRNO.BADF);
  assert.equal(f.call('fd_close', 99), ERRNO.BADF);
  assert.equal(f.call('sock_accept', 3, 0, g.alloc(4)), ERRNO.NOTSOCK);
  assert.equal(f.call('sock_recv', 1, io.ptr, io.n, 0, g.alloc(4), g.alloc(4)), ERRNO.NOTSOCK);
  assert.equal(f.call('sock_shutdown', 0, SDFLAGS.WR), ERRNO.NOTSOCK);
  assert.equal(f.call('fd_readdir', 1, 0, 0, 0n, 0), ERRNO.NOTDIR);
  assert.equal(f.call('no_such_function'), ERRNO.NOSYS);
  assert.equal(f.call('fd_close'), ERRNO.INVAL, 'missing arguments');
  assert.equal(f.call('poll_oneoff', 0, 0, 0, g.alloc(4)), ERRNO.INVAL);
  assert.throws(() => f.call('proc_exit', 3), (e) => e instanceof WasiExit && e.code === 3);
});

test('random arguments to every import never throw (except proc_exit / proc_raise)', async (t) => {
  const f = fixture(t);
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  const pick = (): number => [0, 1, 3, 4, 8, 64, 1024, 4096, 131071, 131072, -1, 0x7fffffff][rnd() % 12]!;
  const waits: Wait[] = [];
  for (let i = 0, n = fuzzIterations(4000); i < n; i++) {
    const names = Object.keys(WASI_FUNCTIONS) as (keyof typeof WASI_FUNCTIONS)[];
    const name = names[rnd() % names.length]!;
    const args = WASI_FUNCTIONS[name].map((ty) => (ty === 'i64' ? BigInt(pick()) * BigInt(rnd() % 3 - 1) : pick()));
    try {
      const r = f.call(name, ...args);
      if (isWait(r)) waits.push(r);
      else assert.ok(Number.isInteger(r) && r >= 0 && r <= 76, `${name} returned ${r}`);
    } catch (e) {
      assert.ok(e instanceof WasiExit && (name === 'proc_exit' || name === 'proc_raise'), `${name}(${args.join(', ')}) threw ${String(e)}`);
    }
  }
  f.host.close(); // settles any Wait the fuzz left behind
  await Promise.all(waits.map((w) => w.wait));
});

// ---- poll -----------------------------------------------------------------------------------

/** Writes subscriptions; returns [in, out, neventsPtr]. */
function subscriptions(g: Guest, subs: ({ clock: bigint; abs?: boolean; id?: number } | { fd: number; type: number })[]): [number, number, number] {
  const inPtr = g.alloc(48 * subs.length);
  subs.forEach((s, i) => {
    const at = inPtr + 48 * i;
    g.mem.setU64(at, BigInt(100 + i));
    if ('clock' in s) {
      g.mem.setU8(at + 8, EVENTTYPE.CLOCK);
      g.mem.setU32(at + 16, s.id ?? 1);
      g.mem.setU64(at + 24, s.clock);
      g.mem.setU16(at + 40, s.abs ? 1 : 0);
    } else {
      g.mem.setU8(at + 8, s.type);
      g.mem.setU32(at + 16, s.fd);
    }
  });
  return [inPtr, g.alloc(32 * subs.length), g.alloc(4)];
}

function events(g: Guest, out: number, n: number): { userdata: bigint; error: number; type: number; nbytes: bigint; flags: number }[] {
  return Array.from({ length: g.mem.u32(n) }, (_, i) => {
    const at = out + 32 * i;
    return { userdata: g.mem.u64(at), error: g.mem.u16(at + 8), type: g.mem.u8(at + 10), nbytes: g.mem.u64(at + 16), flags: g.mem.u16(at + 24) };
  });
}

test('poll_oneoff: a relative clock waits, then fires; past deadlines and ready fds return at once', async (t) => {
  const f = fixture(t);
  const { g } = f;
  const [inP, out, n] = subscriptions(g, [{ clock: 50_000_000n }]);
  const t0 = Date.now();
  const first = f.call('poll_oneoff', inP, out, 1, n);
  assert.ok(isWait(first), 'a 50 ms sleep waits');
  const { ret } = await settle(f, 'poll_oneoff', [inP, out, 1, n]);
  assert.equal(ret, ERRNO.SUCCESS);
  assert.ok(Date.now() - t0 >= 40, `slept ${Date.now() - t0} ms`);
  assert.deepEqual(events(g, out, n).map((e) => [e.userdata, e.error, e.type]), [[100n, 0, EVENTTYPE.CLOCK]]);

  const [in2, out2, n2] = subscriptions(g, [{ clock: 0n, abs: true, id: 0 }, { clock: 10_000_000_000n }]);
  f.ok('poll_oneoff', in2, out2, 2, n2);
  assert.deepEqual(events(g, out2, n2).map((e) => e.userdata), [100n]);

  const file = open(f, 'f', OFLAGS.CREAT);
  write(f, file, 'xyz');
  f.ok('fd_seek', file, 0n, WHENCE.SET, g.alloc(8));
  const [in3, out3, n3] = subscriptions(g, [{ clock: 10_000_000_000n }, { fd: file, type: EVENTTYPE.FD_READ }, { fd: 77, type: EVENTTYPE.FD_READ }]);
  f.ok('poll_oneoff', in3, out3, 3, n3);
  assert.deepEqual(events(g, out3, n3).map((e) => [e.userdata, e.error, e.type, e.nbytes]), [
    [101n, 0, EVENTTYPE.FD_READ, 3n],
    [102n, ERRNO.BADF, EVENTTYPE.FD_READ, 0n],
  ]);
});

// ---- sockets --------------------------------------------------------------------------------

test('sockets: accept waits for a client, reads wait for data, writes are effects until performOutput', async (t) => {
  const port = await freePort();
  const f = fixture(t, { listen: [{ host: '127.0.0.1', port }] });
  const { g } = f;
  await f.host.openListeners();
  const st = g.alloc(24);
  f.ok('fd_fdstat_get', 4, st);
  assert.equal(g.mem.u8(st), FILETYPE.SOCKET_STREAM);
  const res = g.alloc(4);
  const first = f.call('sock_accept', 4, 0, res);
  assert.ok(isWait(first));
  const client = await connect(t, port);
  await withTimeout(first.wait, 5000, 'accept wake-up');
  assert.equal((await settle(f, 'sock_accept', [4, 0, res])).ret, ERRNO.SUCCESS);
  const conn = g.mem.u32(res);
  assert.equal(conn, 5);
  assert.equal(f.host.classify('fd_read', [conn, 0, 0, 0]), 'input');
  assert.equal(f.host.classify('fd_write', [conn, 0, 0, 0]), 'output');

  // fd_read waits until the client writes.
  const io = g.iovs(64);
  const nread = g.alloc(4);
  const r = f.call('fd_read', conn, io.ptr, io.n, nread);
  assert.ok(isWait(r));
  client.write('ping');
  assert.equal((await settle(f, 'fd_read', [conn, io.ptr, io.n, nread])).ret, ERRNO.SUCCESS);
  assert.equal(g.mem.readString(io.bufs[0]!, g.mem.u32(nread)), 'ping');

  // Writes are not performed by the call.
  assert.equal(write(f, conn, 'pong'), 4);
  const sendEffect = f.effects.at(-1)!;
  assert.deepEqual(sendEffect.kind === 'send' && [sendEffect.conn, dec.decode(sendEffect.bytes)], [1, 'pong']);
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(client.received(), '');
  f.host.performOutput(sendEffect);
  await until(() => client.received() === 'pong', 'the client to receive pong');

  // poll: readable once data arrives; sock_recv with PEEK leaves it buffered.
  const [inP, out, n] = subscriptions(g, [{ fd: conn, type: EVENTTYPE.FD_READ }, { fd: 4, type: EVENTTYPE.FD_READ }]);
  assert.ok(isWait(f.call('poll_oneoff', inP, out, 2, n)));
  client.write('more');
  assert.equal((await settle(f, 'poll_oneoff', [inP, out, 2, n])).ret, ERRNO.SUCCESS);
  assert.deepEqual(events(g, out, n).map((e) => [e.userdata, e.type]), [[100n, EVENTTYPE.FD_READ]]);
  const [roLen, roFlags] = [g.alloc(4), g.alloc(4)];
  await until(() => {
    f.ok('poll_oneoff', inP, out, 2, n);
    return events(g, out, n)[0]!.nbytes === 4n;
  }, 'all 4 bytes to be buffered');
  f.ok('sock_recv', conn, io.ptr, io.n, 1, roLen, roFlags);
  f.ok('sock_recv', conn, io.ptr, io.n, 0, roLen, roFlags);
  assert.equal(g.mem.readString(io.bufs[0]!, g.mem.u32(roLen)), 'more');

  // The client ends: EOF; shutdown and close are effects too.
  client.end();
  assert.equal((await settle(f, 'fd_read', [conn, io.ptr, io.n, nread])).ret, ERRNO.SUCCESS);
  assert.equal(g.mem.u32(nread), 0);
  const si = g.iovs('bye');
  f.ok('sock_send', conn, si.ptr, si.n, 0, g.alloc(4));
  f.ok('sock_shutdown', conn, SDFLAGS.WR);
  assert.equal(f.call('sock_send', conn, si.ptr, si.n, 0, g.alloc(4)), ERRNO.PIPE);
  f.ok('fd_close', conn);
  assert.deepEqual(f.effects.slice(-3).map((e) => e.kind), ['send', 'shutdown', 'close']);
  const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
  for (const e of f.effects.slice(-3)) f.host.performOutput(e);
  await withTimeout(closed, 5000, 'the client to see the close');
  assert.equal(client.received(), 'pongbye');
  assert.equal(f.call('fd_read', conn, io.ptr, io.n, nread), ERRNO.BADF);
});

test('sockets: NONBLOCK accept and read return AGAIN; a reset peer reads CONNRESET, writes PIPE', async (t) => {
  const port = await freePort();
  const f = fixture(t, { listen: [{ host: '127.0.0.1', port }] });
  const { g } = f;
  await f.host.openListeners();
  const res = g.alloc(4);
  f.ok('fd_fdstat_set_flags', 4, FDFLAGS.NONBLOCK);
  assert.equal(f.call('sock_accept', 4, 0, res), ERRNO.AGAIN);
  const client = await connect(t, port);
  await until(() => f.call('sock_accept', 4, FDFLAGS.NONBLOCK, res) === ERRNO.SUCCESS, 'a pending connection');
  const conn = g.mem.u32(res);
  assert.equal(read(f, conn), ERRNO.AGAIN);
  const st = g.alloc(24);
  f.ok('fd_fdstat_get', conn, st);
  assert.equal(g.mem.u16(st + 2), FDFLAGS.NONBLOCK);
  client.resetAndDestroy();
  const io = g.iovs('x');
  const nread = g.alloc(4);
  await until(() => f.call('fd_read', conn, io.ptr, io.n, nread) === ERRNO.CONNRESET, 'the reset to be seen');
  assert.equal(f.call('fd_write', conn, io.ptr, io.n, g.alloc(4)), ERRNO.PIPE);
  f.ok('fd_close', conn);
});

test('sockets: megabytes from a client arrive intact through the 1 MiB host buffer', async (t) => {
  const port = await freePort();
  const f = fixture(t, { listen: [{ host: '127.0.0.1', port }] });
  const { g } = f;
  await f.host.openListeners();
  const client = await connect(t, port);
  const res = g.alloc(4);
  assert.equal((await settle(f, 'sock_accept', [4, 0, res])).ret, ERRNO.SUCCESS);
  const conn = g.mem.u32(res);
  const sent = Buffer.alloc(3 << 20);
  for (let i = 0; i < sent.length; i++) sent[i] = (i * 7 + (i >> 13)) & 0xff;
  client.end(sent);
  const io = g.iovs(65536);
  const nread = g.alloc(4);
  const got: Uint8Array[] = [];
  for (;;) {
    assert.equal((await settle(f, 'fd_read', [conn, io.ptr, io.n, nread])).ret, ERRNO.SUCCESS);
    const n = g.mem.u32(nread);
    if (n === 0) break;
    got.push(g.mem.read(io.bufs[0]!, n));
  }
  assert.ok(Buffer.concat(got).equals(sent), 'the bytes read are the bytes sent');
});

test('openListeners retries while the address is in use, then names it', async (t) => {
  const port = await freePort();
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(port, '127.0.0.1', r));
  t.after(() => blocker.close());
  const f = fixture(t, { listen: [{ host: '127.0.0.1', port }] });
  await assert.rejects(f.host.openListeners(300), new RegExp(`127\\.0\\.0\\.1:${port}`));
  const freed = new Promise<void>((r) => setTimeout(() => blocker.close(() => r()), 250));
  await f.host.openListeners(10_000);
  await freed;
  const client = await connect(t, port);
  assert.equal((await settle(f, 'sock_accept', [4, 0, f.g.alloc(4)])).ret, ERRNO.SUCCESS);
  client.destroy();
});

// ---- classification and replay ----------------------------------------------------------------

test('classify follows the name and the fd kind', (t) => {
  const f = fixture(t);
  const file = open(f, 'x', OFLAGS.CREAT);
  const c = (name: string, ...args: number[]): string => f.host.classify(name, args);
  assert.equal(c('args_get', 0, 0), 'config');
  assert.equal(c('fd_prestat_dir_name', 3, 0, 0), 'config');
  assert.equal(c('proc_exit', 0), 'exit');
  assert.equal(c('clock_time_get', 0, 0, 0), 'input');
  assert.equal(c('poll_oneoff', 0, 0, 0, 0), 'input');
  assert.equal(c('fd_read', 0, 0, 0, 0), 'input');
  assert.equal(c('fd_read', file, 0, 0, 0), 'local');
  assert.equal(c('fd_filestat_get', file, 0), 'input');
  assert.equal(c('fd_write', 1, 0, 0, 0), 'output');
  assert.equal(c('fd_write', file, 0, 0, 0), 'local');
  assert.equal(c('fd_close', file), 'local');
  assert.equal(c('path_open', 3, 0, 0, 0, 0, 0, 0, 0, 0), 'local');
  assert.equal(c('fd_seek', file, 0, 0, 0), 'local');
});

test('replay: replayEffect keeps the fd table equal to the live host; goLive resets replayed connections', async (t) => {
  const port = await freePort();
  const listen = [{ host: '127.0.0.1', port }];
  const live = fixture(t, { listen });
  const backup = fixture(t, { listen, mode: 'replay' });
  await live.host.openListeners();
  const res = live.g.alloc(4);
  const bres = backup.g.alloc(4);

  // The primary accepts a connection (an input) and opens a file (local, run on both).
  const client = await connect(t, port);
  assert.equal((await settle(live, 'sock_accept', [4, 0, res])).ret, ERRNO.SUCCESS);
  const conn = live.g.mem.u32(res);
  backup.g.mem.setU32(bres, conn); // what the runtime copies from the log
  backup.host.replayEffect('sock_accept', [4, 0, bres], 0, backup.g.mem);
  assert.equal(open(live, 'data', OFLAGS.CREAT), open(backup, 'data', OFLAGS.CREAT));
  assert.equal(backup.host.hostState(), live.host.hostState());
  assert.equal(backup.host.classify('fd_read', [conn, 0, 0, 0]), 'input');

  // A second connection, then the first is closed (an output): equal again.
  const client2 = await connect(t, port);
  assert.equal((await settle(live, 'sock_accept', [4, 0, res])).ret, ERRNO.SUCCESS);
  const conn2 = live.g.mem.u32(res);
  assert.equal(conn2, 7);
  backup.g.mem.setU32(bres, conn2);
  backup.host.replayEffect('sock_accept', [4, 0, bres], 0, backup.g.mem);
  live.ok('fd_close', conn);
  backup.host.replayEffect('fd_close', [conn], 0, backup.g.mem);
  assert.equal(backup.host.hostState(), live.host.hostState());
  assert.match(live.host.hostState(), /"kind":"conn"/);

  // A log that disagrees with this host's allocation is refused.
  backup.g.mem.setU32(bres, 9);
  assert.throws(() => backup.host.replayEffect('sock_accept', [4, 0, bres], 0, backup.g.mem), /fd 9.*fd 5/);

  // Fail-over: the primary's sockets go away, the backup goes live on the same address.
  live.host.close();
  client.destroy();
  await backup.host.goLive();
  assert.equal(backup.host.mode, 'live');
  const { g } = backup;
  assert.equal(read(backup, conn2), ERRNO.CONNRESET);
  const io = g.iovs('x');
  assert.equal(backup.call('fd_write', conn2, io.ptr, io.n, g.alloc(4)), ERRNO.PIPE);
  const [inP, out, n] = subscriptions(g, [{ fd: conn2, type: EVENTTYPE.FD_READ }]);
  backup.ok('poll_oneoff', inP, out, 1, n);
  assert.equal(events(g, out, n)[0]!.flags, 1, 'hangup');
  backup.ok('fd_close', conn2);
  backup.host.performOutput(backup.effects.at(-1)!);
  client2.destroy();

  // New clients reach the backup, at the lowest free fd.
  const client3 = await connect(t, port);
  assert.equal((await settle(backup, 'sock_accept', [4, 0, bres])).ret, ERRNO.SUCCESS);
  assert.equal(g.mem.u32(bres), 5);
  const r = backup.g.iovs(16);
  const nr = g.alloc(4);
  client3.write('hi');
  assert.equal((await settle(backup, 'fd_read', [5, r.ptr, r.n, nr])).ret, ERRNO.SUCCESS);
  assert.equal(g.mem.readString(r.bufs[0]!, g.mem.u32(nr)), 'hi');
});
