// Path resolution confined beneath a directory handle: the WASI host's file-system sandbox
// (docs/WASM.md, "The sandbox"; issue 14 item 5).
//
// A guest names a file by a directory fd and a relative path. Every guest directory fd is a
// real open directory on the host, and a path is resolved from it one component at a time,
// the way openat(2) would, through Linux's /proc/self/fd/N: the kernel follows that magic link
// to the open directory itself, not to a path, so renaming a directory the guest holds, or
// swapping a symlink in for it, cannot redirect the handle. Node has no openat; this is it.
//
//  - Each intermediate component is opened with O_DIRECTORY | O_NOFOLLOW from the directory
//    before it. A symlink is read and expanded here, never by the kernel.
//  - ".." closes the directory this walk last opened; at the handle it is NOTCAPABLE (as in
//    wasmtime). An absolute path or symlink target is NOTCAPABLE.
//  - The result is a directory fd and one plain name in it (or "." for the directory itself),
//    and every system call made on it names `/proc/self/fd/<dir>/<name>` and does not follow a
//    final symlink (lstat, O_NOFOLLOW, readlink, lutimes, mkdir, unlink, rmdir, rename, link,
//    symlink). So the call acts on an entry of a directory reached from the handle, whatever
//    was changed in the tree between two calls, by the guest or by anyone else.

import * as fs from 'node:fs';
import { ERRNO } from './abi.js';

/** A WASI errno thrown inside a handler; WasiHost.call turns it into the return value. */
export class ErrnoError extends Error {
  constructor(readonly errno: number) {
    super(`errno ${errno}`);
  }
}

export function fail(errno: number): never {
  throw new ErrnoError(errno);
}

/** Symlinks expanded in one resolution before it is LOOP (Linux's limit). */
const MAX_SYMLINKS = 40;
/** Linux's PATH_MAX, for a guest path. */
const MAX_PATH_BYTES = 4096;
/**
 * Directories one resolution may hold open at once (the depth below its handle): symlinks can
 * make a path far deeper than PATH_MAX, and every level is a host fd until the call returns.
 */
const MAX_DEPTH = 1024;

const DIR_FLAGS = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW;

/** The host path that names an open fd itself (a directory: resolve names inside it). */
export function fdPath(hostFd: number): string {
  return `/proc/self/fd/${hostFd}`;
}

/** Opens a directory, refusing a symlink in its place. */
export function openDirectory(host: string): number {
  return fs.openSync(host, DIR_FLAGS);
}

/**
 * Asserts that this system resolves /proc/self/fd/N to the open directory (Linux with /proc
 * mounted): the sandbox is built on it, so a host without it must not run guests at all.
 */
export function checkFdPaths(dirFd: number): void {
  const viaFd = fs.statSync(fdPath(dirFd), { bigint: true });
  const direct = fs.fstatSync(dirFd, { bigint: true });
  if (!viaFd.isDirectory() || viaFd.ino !== direct.ino || viaFd.dev !== direct.dev) {
    throw new Error('the WASI sandbox needs /proc/self/fd (Linux with /proc mounted)');
  }
}

export function closeQuietly(hostFd: number): void {
  try {
    fs.closeSync(hostFd);
  } catch {
    // Already closed or never valid: nothing left to release.
  }
}

/** lstat with bigint fields (a filestat carries nanoseconds), or null when nothing is there. */
export function lstatOrNull(p: string): fs.BigIntStats | null {
  try {
    return fs.lstatSync(p, { bigint: true });
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return null;
    throw e;
  }
}

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/** Where a resolution starts: a guest directory fd's host fd and its guest path. */
export interface Base {
  readonly hostFd: number;
  readonly rel: readonly string[];
}

/** A resolved guest path. Holds open the directories it walked through: close() it. */
export class Resolved {
  private st: fs.BigIntStats | null | undefined;

  constructor(
    /** The directory holding the target (the base's fd or one this resolution opened). */
    readonly dirFd: number,
    /** The target's name in it: one component, never "..", or "." for the directory itself. */
    readonly name: string,
    /** Guest path components from the root to the target (symlinks expanded as asked). */
    readonly rel: string[],
    /** The guest path ended in "/". */
    readonly trailing: boolean,
    private readonly opened: number[],
    st: fs.BigIntStats | null | undefined,
  ) {
    this.st = st;
  }

  /** The host path of the target, for a system call that does not follow a final symlink. */
  get host(): string {
    return `${fdPath(this.dirFd)}/${this.name}`;
  }

  /** lstat of the target, null when it does not exist (made once per resolution). */
  stat(): fs.BigIntStats | null {
    if (this.st === undefined) this.st = lstatOrNull(this.host);
    return this.st;
  }

  close(): void {
    for (const fd of this.opened.splice(0)) closeQuietly(fd);
  }
}

/**
 * Resolves `guestPath` beneath `base`. Every intermediate component must be a directory (or
 * a symlink to one, inside the handle); the final one is followed only when `followFinal`
 * (or the path ends in "/") and may be missing, for creation.
 */
export function resolveBeneath(base: Base, guestPath: string, followFinal: boolean): Resolved {
  if (guestPath === '') fail(ERRNO.NOENT);
  if (guestPath.startsWith('/')) fail(ERRNO.NOTCAPABLE);
  if (Buffer.byteLength(guestPath) > MAX_PATH_BYTES) fail(ERRNO.NAMETOOLONG);
  const trailing = guestPath.endsWith('/');
  const follow = followFinal || trailing;
  /** The directories descended into, innermost last, and their names. */
  const opened: number[] = [];
  const names: string[] = [];
  let queue = components(guestPath);
  let links = 0;
  const expand = (host: string): void => {
    if (++links > MAX_SYMLINKS) fail(ERRNO.LOOP);
    const target = fs.readlinkSync(host);
    if (target.startsWith('/')) fail(ERRNO.NOTCAPABLE);
    queue = [...components(target), ...queue];
  };
  const done = (dirFd: number, name: string, st: fs.BigIntStats | null | undefined): Resolved => {
    if (trailing && st && !st.isDirectory()) fail(ERRNO.NOTDIR);
    const rel = [...base.rel, ...names];
    if (name !== '.') rel.push(name);
    return new Resolved(dirFd, name, rel, trailing, opened, st);
  };
  try {
    for (;;) {
      const dirFd = opened[opened.length - 1] ?? base.hostFd;
      const c = queue.shift();
      if (c === undefined) return done(dirFd, '.', undefined);
      if (c === '..') {
        const up = opened.pop();
        if (up === undefined) fail(ERRNO.NOTCAPABLE);
        closeQuietly(up);
        names.pop();
        continue;
      }
      const host = `${fdPath(dirFd)}/${c}`;
      if (queue.length === 0) {
        if (!follow) return done(dirFd, c, undefined);
        const st = lstatOrNull(host);
        if (st?.isSymbolicLink()) expand(host);
        else return done(dirFd, c, st);
        continue;
      }
      let fd: number;
      try {
        fd = openDirectory(host);
      } catch (e) {
        // O_NOFOLLOW | O_DIRECTORY on a symlink is ENOTDIR (or ELOOP): expand it ourselves.
        const code = (e as { code?: string }).code;
        if ((code === 'ENOTDIR' || code === 'ELOOP') && lstatOrNull(host)?.isSymbolicLink()) {
          expand(host);
          continue;
        }
        throw e;
      }
      opened.push(fd);
      names.push(c);
      if (opened.length > MAX_DEPTH) fail(ERRNO.NAMETOOLONG);
    }
  } catch (e) {
    for (const fd of opened) closeQuietly(fd);
    throw e;
  }
}
