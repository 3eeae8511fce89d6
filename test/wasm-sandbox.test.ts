// Issue 14 item 5: a guest must not reach any host file outside its root, whatever it does to
// its own directory tree in between (rename a directory it holds a handle on, swap a symlink in
// for it, hard links, loops, ...). The escape guest runs under the real host, recording and
// then replaying, against real temp directories with a "secret" beside the root; the table
// drives the other escape attempts call by call.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERRNO, FILETYPE, LOOKUPFLAGS, OFLAGS, RIGHTS } from '../src/wasm/abi.js';
import { loadModule } from '../src/wasm/module.js';
import { recordLocally, replayLocally } from '../src/wasm/local.js';
import { WasiHost, type Wait } from '../src/wasm/wasi.js';
import { Guest } from '../src/testing/wasi-guest.js';

const SECRET = 'TOPSECRET-42\n';
const fixture = (name: string): string => fileURLToPath(new URL(`../../test/fixtures/wasm/${name}`, import.meta.url));

/** <tmp>/root is the guest's root; <tmp>/secret and <tmp>/victim sit beside it. */
function sandbox(t: TestContext): { dir: string; root: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-sandbox-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  fs.mkdirSync(root);
  fs.writeFileSync(path.join(dir, 'secret'), SECRET);
  fs.writeFileSync(path.join(dir, 'victim'), 'keep me\n');
  return { dir, root };
}

/** Everything outside the root is as sandbox() made it. */
function assertOutsideUntouched(dir: string, who: string): void {
  assert.deepEqual(fs.readdirSync(dir).sort(), ['root', 'secret', 'victim'], `${who}: nothing made or removed beside the root`);
  assert.equal(fs.readFileSync(path.join(dir, 'secret'), 'utf8'), SECRET, `${who}: the secret is unchanged`);
  assert.equal(fs.readFileSync(path.join(dir, 'victim'), 'utf8'), 'keep me\n', `${who}: the victim is unchanged`);
}

/** "<step> NN" lines of the escape guest, as a map from step to errno. */
function steps(stdout: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of stdout.matchAll(/^(\w+) +(\d\d)$/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

test('the escape guest of issue 14 cannot read, write or delete outside its root, recording or replaying', { timeout: 120_000 }, async (t) => {
  const loaded = await loadModule(fs.readFileSync(fixture('escape.wasm')), { maxMemoryPages: 16 });
  const primary = sandbox(t);
  const rec = await recordLocally(loaded, { args: ['escape'], root: primary.root });
  assert.deepEqual(rec.end, { kind: 'exit', code: 0 }, rec.stdout);
  assert.ok(!rec.stdout.includes('TOPSECRET'), `the guest read the secret:\n${rec.stdout}`);
  assert.ok(!/^root:/m.test(rec.stdout), `the guest read /etc/passwd:\n${rec.stdout}`);
  assert.ok(!rec.stdout.includes('victim'), `the guest listed the root's parent:\n${rec.stdout}`);
  assertOutsideUntouched(primary.dir, 'primary');

  // The handle still names the directory it was opened on (now "z"), which has no secret;
  // what the guest made through it is inside the root.
  const s = steps(rec.stdout);
  for (const name of ['mkdir', 'opendir', 'rename', 'symlink', 'create', 'write', 'mkdirin', 'readdir', 'mkdir2', 'opendir2', 'rename2', 'symlink2']) {
    assert.equal(s.get(name), 0, `${name} succeeds inside the root:\n${rec.stdout}`);
  }
  for (const name of ['open', 'unlink', 'open2']) assert.equal(s.get(name), 44, `${name} finds nothing (NOENT):\n${rec.stdout}`);
  assert.equal(fs.readFileSync(path.join(primary.root, 'z/planted'), 'utf8'), 'pwned\n');
  assert.ok(fs.statSync(path.join(primary.root, 'z/newdir')).isDirectory());
  assert.equal(fs.readlinkSync(path.join(primary.root, 'a')), '..');

  // The backup makes the same local calls on its own directory: sealed by the same code.
  const backup = sandbox(t);
  const rep = await replayLocally(loaded, { args: ['escape'], root: backup.root }, rec.entries);
  assert.deepEqual(rep.end, { kind: 'exit', code: 0 });
  assert.equal(rep.memoryHash, rec.memoryHash);
  assert.equal(rep.hostState, rec.hostState);
  assertOutsideUntouched(backup.dir, 'backup');
  assert.equal(fs.readFileSync(path.join(backup.root, 'z/planted'), 'utf8'), 'pwned\n');
});

// ---- a table of escape attempts, call by call -----------------------------------------------

const FOLLOW = LOOKUPFLAGS.SYMLINK_FOLLOW;
const RW = RIGHTS.FD_READ | RIGHTS.FD_WRITE;

/** A live host on a sandbox() root, and the calls the cases are written in. */
class Attempt {
  readonly g = new Guest();
  constructor(readonly host: WasiHost, readonly root: string) {}

  call(name: string, ...args: (number | bigint)[]): number | Wait {
    return this.host.call(name, this.g.mem, args, { startedAtNs: process.hrtime.bigint() });
  }

  /** A path call of the (fd, path) shape: unlink, rmdir, mkdir. */
  at(name: string, fd: number, p: string): number | Wait {
    return this.call(name, fd, ...this.g.str(p));
  }

  /** path_open; the new fd, or the errno as a negative number. */
  open(fd: number, p: string, oflags = 0, dirflags: number = FOLLOW): number {
    const out = this.g.alloc(4);
    const r = this.call('path_open', fd, dirflags, ...this.g.str(p), oflags, RW, 0n, 0, out);
    return r === ERRNO.SUCCESS ? this.g.mem.u32(out) : -Number(r);
  }

  openDir(p: string): number {
    const fd = this.open(3, p, OFLAGS.DIRECTORY);
    assert.ok(fd > 0, `opening ${p} as a directory: errno ${-fd}`);
    return fd;
  }

  stat(fd: number, p: string, dirflags: number = FOLLOW): number | Wait {
    return this.call('path_filestat_get', fd, dirflags, ...this.g.str(p), this.g.alloc(64));
  }

  /** The filetype byte of a successful path_filestat_get. */
  filetype(fd: number, p: string, dirflags: number): number {
    const buf = this.g.alloc(64);
    assert.equal(this.call('path_filestat_get', fd, dirflags, ...this.g.str(p), buf), ERRNO.SUCCESS, p);
    return this.g.mem.u8(buf + 16);
  }

  symlink(target: string, fd: number, p: string): number | Wait {
    return this.call('path_symlink', ...this.g.str(target), fd, ...this.g.str(p));
  }

  two(name: string, fd1: number, p1: string, fd2: number, p2: string, flags?: number): number | Wait {
    const from = this.g.str(p1);
    const to = this.g.str(p2);
    return flags === undefined ? this.call(name, fd1, ...from, fd2, ...to) : this.call(name, fd1, flags, ...from, fd2, ...to);
  }

  readlink(fd: number, p: string): number | Wait {
    return this.call('path_readlink', fd, ...this.g.str(p), this.g.alloc(256), 256, this.g.alloc(4));
  }

  /** The names fd_readdir lists. */
  list(fd: number): string[] {
    const buf = this.g.alloc(4096);
    const used = this.g.alloc(4);
    assert.equal(this.call('fd_readdir', fd, buf, 4096, 0n, used), ERRNO.SUCCESS);
    const names: string[] = [];
    const end = buf + this.g.mem.u32(used);
    for (let at = buf; at + 24 <= end; at += 24 + this.g.mem.u32(at + 16)) names.push(this.g.mem.readString(at + 24, this.g.mem.u32(at + 16)));
    return names;
  }

  /** The move: a handle on "a", then "a" renamed to "z" and a symlink to ".." put in its place. */
  swappedHandle(): number {
    assert.equal(this.at('path_create_directory', 3, 'a'), ERRNO.SUCCESS);
    const d = this.openDir('a');
    assert.equal(this.two('path_rename', 3, 'a', 3, 'z'), ERRNO.SUCCESS);
    assert.equal(this.symlink('..', 3, 'a'), ERRNO.SUCCESS);
    return d;
  }
}

const { NOENT, NOTCAPABLE, LOOP, NOTDIR, SUCCESS } = ERRNO;

const attempts: [string, (x: Attempt, outside: string) => void][] = [
  ['every path call through the swapped handle, and through the symlink from the root', (x) => {
    const d = x.swappedHandle();
    // The handle still names the directory it was opened on, now "z": empty, and inside.
    assert.deepEqual(x.list(d), ['.', '..']);
    assert.equal(x.open(d, 'secret'), -NOENT);
    assert.equal(x.stat(d, 'secret'), NOENT);
    assert.equal(x.at('path_unlink_file', d, 'victim'), NOENT);
    assert.equal(x.at('path_remove_directory', d, 'root'), NOENT);
    assert.equal(x.readlink(d, 'secret'), NOENT);
    assert.equal(x.two('path_link', d, 'secret', 3, 'stolen', 0), NOENT);
    assert.equal(x.two('path_rename', d, 'victim', 3, 'stolen'), NOENT);
    // Through the path "a" (a symlink to ".."), every call is refused.
    for (const flags of [0, FOLLOW]) {
      assert.equal(x.open(3, 'a/secret', 0, flags), -NOTCAPABLE);
      assert.equal(x.stat(3, 'a/secret', flags), NOTCAPABLE);
      assert.equal(x.call('path_filestat_set_times', 3, flags, ...x.g.str('a/secret'), 0n, 0n, 0b1010), NOTCAPABLE);
      assert.equal(x.two('path_link', 3, 'a/secret', 3, 'stolen', flags), NOTCAPABLE);
    }
    assert.equal(x.open(3, 'a/planted', OFLAGS.CREAT), -NOTCAPABLE);
    assert.equal(x.at('path_unlink_file', 3, 'a/victim'), NOTCAPABLE);
    assert.equal(x.at('path_remove_directory', 3, 'a/root'), NOTCAPABLE);
    assert.equal(x.at('path_create_directory', 3, 'a/newdir'), NOTCAPABLE);
    assert.equal(x.readlink(3, 'a/secret'), NOTCAPABLE);
    assert.equal(x.two('path_rename', 3, 'a/victim', 3, 'stolen'), NOTCAPABLE);
    assert.equal(x.two('path_rename', 3, 'z', 3, 'a/escaped'), NOTCAPABLE);
    assert.equal(x.symlink('x', 3, 'a/planted'), NOTCAPABLE);
    assert.equal(x.stat(3, 'stolen'), NOENT);
  }],
  ['rename over a directory a handle is on: the handle keeps the removed directory', (x) => {
    assert.equal(x.at('path_create_directory', 3, 'a'), SUCCESS);
    const d = x.openDir('a');
    assert.equal(x.at('path_create_directory', 3, 'b'), SUCCESS);
    assert.equal(x.symlink('../..', 3, 'b/s'), SUCCESS);
    assert.equal(x.two('path_rename', 3, 'b', 3, 'a'), SUCCESS);
    assert.equal(x.open(d, 's/secret'), -NOENT);
    assert.equal(x.open(d, 'planted', OFLAGS.CREAT), -NOENT);
    assert.equal(x.open(3, 'a/s/secret'), -NOTCAPABLE);
    const a = x.openDir('a');
    assert.equal(x.open(a, 's/secret'), -NOTCAPABLE);
  }],
  ['".." through a handle whose directory was moved', (x) => {
    assert.equal(x.at('path_create_directory', 3, 'p'), SUCCESS);
    assert.equal(x.at('path_create_directory', 3, 'p/q'), SUCCESS);
    const d = x.openDir('p/q');
    assert.equal(x.two('path_rename', 3, 'p/q', 3, 'q2'), SUCCESS);
    assert.equal(x.two('path_rename', 3, 'p', 3, 'q2/p'), SUCCESS);
    for (const p of ['../secret', '../../secret', '../../../secret', 'p/../../secret', '..']) assert.equal(x.open(d, p), -NOTCAPABLE, p);
    // The handle moved with its directory: what it makes is in q2.
    assert.ok(x.open(d, 'made', OFLAGS.CREAT) > 0);
    assert.equal(x.stat(3, 'q2/made'), SUCCESS);
    assert.ok(x.open(d, 'p/../made') > 0, '".." inside the handle is fine');
  }],
  ['a symlink as the last component, followed or not', (x) => {
    assert.equal(x.symlink('../secret', 3, 'l'), SUCCESS);
    assert.equal(x.open(3, 'l', 0, FOLLOW), -NOTCAPABLE);
    assert.equal(x.open(3, 'l', 0, 0), -LOOP);
    assert.equal(x.open(3, 'l', OFLAGS.CREAT | OFLAGS.TRUNC, 0), -LOOP);
    assert.equal(x.open(3, 'l', OFLAGS.CREAT | OFLAGS.TRUNC, FOLLOW), -NOTCAPABLE);
    assert.equal(x.stat(3, 'l', FOLLOW), NOTCAPABLE);
    assert.equal(x.filetype(3, 'l', 0), FILETYPE.SYMLINK);
    assert.equal(x.call('path_filestat_set_times', 3, FOLLOW, ...x.g.str('l'), 0n, 0n, 0b1010), NOTCAPABLE);
    // Linking the symlink itself makes a second symlink (link(2) does not follow), still refused.
    assert.equal(x.two('path_link', 3, 'l', 3, 'l2', 0), SUCCESS);
    assert.equal(x.filetype(3, 'l2', 0), FILETYPE.SYMLINK);
    assert.equal(x.open(3, 'l2'), -NOTCAPABLE);
    assert.equal(x.two('path_link', 3, 'l', 3, 'l3', FOLLOW), NOTCAPABLE);
    assert.equal(x.at('path_unlink_file', 3, 'l'), SUCCESS, 'unlink removes the link, not its target');
  }],
  ['absolute symlink targets', (x, outside) => {
    assert.equal(x.symlink('/etc/passwd', 3, 'p'), NOTCAPABLE);
    assert.equal(x.symlink(path.join(outside, 'secret'), 3, 'p'), NOTCAPABLE);
    // Made by someone else on the host: never followed.
    fs.symlinkSync(path.join(outside, 'secret'), path.join(x.root, 'abs'));
    fs.symlinkSync(outside, path.join(x.root, 'absdir'));
    assert.equal(x.open(3, 'abs'), -NOTCAPABLE);
    assert.equal(x.open(3, 'absdir/secret'), -NOTCAPABLE);
    assert.equal(x.open(3, 'absdir/planted', OFLAGS.CREAT), -NOTCAPABLE);
    assert.equal(x.at('path_unlink_file', 3, 'absdir/victim'), NOTCAPABLE);
    assert.equal(x.two('path_link', 3, 'abs', 3, 'stolen', FOLLOW), NOTCAPABLE);
  }],
  ['symlink loops are LOOP', (x) => {
    assert.equal(x.symlink('l2', 3, 'l1'), SUCCESS);
    assert.equal(x.symlink('l1', 3, 'l2'), SUCCESS);
    assert.equal(x.symlink('self/x', 3, 'self'), SUCCESS);
    assert.equal(x.open(3, 'l1'), -LOOP);
    assert.equal(x.open(3, 'l1/x', OFLAGS.CREAT), -LOOP);
    assert.equal(x.open(3, 'self'), -LOOP);
    assert.equal(x.stat(3, 'l2/x'), LOOP);
  }],
  ['hard links: nothing outside can be reached to link to', (x) => {
    fs.symlinkSync('../secret', path.join(x.root, 'rel'));
    assert.equal(x.two('path_link', 3, 'rel', 3, 'h', FOLLOW), NOTCAPABLE);
    assert.equal(x.two('path_link', 3, '../secret', 3, 'h', 0), NOTCAPABLE);
    const d = x.swappedHandle();
    assert.equal(x.two('path_link', d, 'secret', d, 'h', FOLLOW), NOENT);
    assert.equal(x.two('path_link', 3, 'a/secret', 3, 'h', 0), NOTCAPABLE);
    assert.equal(x.stat(3, 'h'), NOENT);
  }],
  ['a file or a trailing slash where a directory is needed', (x) => {
    assert.ok(x.open(3, 'f', OFLAGS.CREAT) > 0);
    assert.equal(x.open(3, 'f/x'), -NOTDIR);
    assert.equal(x.open(3, 'f/'), -NOTDIR);
    assert.equal(x.open(3, 'g/', OFLAGS.CREAT), -ERRNO.ISDIR);
    assert.equal(x.at('path_unlink_file', 3, 'f/'), NOTDIR);
  }],
  ['a path more than 1024 directories deep is NAMETOOLONG (each level is a host fd while resolving)', (x) => {
    fs.mkdirSync(path.join(x.root, ...Array<string>(1030).fill('d')), { recursive: true });
    assert.ok(x.open(3, [...Array<string>(1024).fill('d'), 'f'].join('/'), OFLAGS.CREAT) > 0);
    assert.equal(x.open(3, [...Array<string>(1025).fill('d'), 'f'].join('/'), OFLAGS.CREAT), -ERRNO.NAMETOOLONG);
  }],
];

/** The host's open fds, to check that resolution closes every directory it opened. */
const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

for (const [name, attempt] of attempts) {
  test(`escape attempt: ${name}`, (t) => {
    const { dir, root } = sandbox(t);
    const fdsBefore = openFds();
    const host = new WasiHost({ args: ['x'], env: [], root, listen: [], output: () => {}, mode: 'live' });
    try {
      attempt(new Attempt(host, root), dir);
    } finally {
      host.close();
    }
    assert.equal(openFds(), fdsBefore, 'every host fd is closed again');
    assertOutsideUntouched(dir, name);
  });
}

test('a snapshot reopens a directory fd where its directory is now, or empty if it was removed', (t) => {
  const a = sandbox(t);
  const b = sandbox(t);
  const mk = (root: string): WasiHost => new WasiHost({ args: ['x'], env: [], root, listen: [], output: () => {}, mode: 'replay' });
  const primary = mk(a.root);
  t.after(() => primary.close());
  const x = new Attempt(primary, a.root);
  const moved = x.swappedHandle();
  assert.equal(x.at('path_create_directory', 3, 'gone'), SUCCESS);
  const gone = x.openDir('gone');
  assert.equal(x.at('path_remove_directory', 3, 'gone'), SUCCESS);
  const restored = mk(b.root);
  t.after(() => restored.close());
  restored.restoreState(primary.snapshotState());
  assert.equal(restored.hostState(), primary.hostState());
  const y = new Attempt(restored, b.root);
  assert.ok(y.open(moved, 'made', OFLAGS.CREAT) > 0);
  assert.ok(fs.existsSync(path.join(b.root, 'z/made')), 'the handle is on "z" on the restored side too');
  assert.deepEqual(y.list(gone), ['.', '..']);
  assert.equal(y.open(gone, 'x', OFLAGS.CREAT), -NOENT);
  assertOutsideUntouched(b.dir, 'restored');
});
