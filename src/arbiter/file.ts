// FileArbiter: the shared-disk test-and-set of VMware FT on a directory. Each view is an
// immutable file `view-<epoch>` holding {"epoch","primary","backup"}; the current view is the
// highest epoch. A proposal is written whole to a private temp file, fsynced, then published
// with link(2), which fails with EEXIST if the name exists: exactly one proposal per epoch
// wins, atomically, on a local or NFS file system, and a torn view is never visible. Views are
// never deleted, so a reader's readdir-then-read cannot race with a change of the file it reads.
// Any trouble (missing or unusable directory, I/O error, a view file that does not parse) is
// E_ARBITER_UNAVAILABLE: skipping a bad file could roll the view back, so we never guess.
// Each view file names its cluster; a view of another cluster (two clusters given one
// directory) is E_ARBITER_CLUSTER. A file without the field (written before views carried
// it) is taken as this cluster's.
//
// The directory is created only by `init` (lockstep init), together with its identity file
// `arbiter.json` (published by the same write-fsync-link as a view, so two racing inits make
// one identity). Every other call on a directory that is missing or has no identity file is
// ArbiterNotInitialized: creating it on first use once let two config copies with a relative
// path give a cluster two arbiters (issue 14).

import { constants as fsConstants, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LockstepError } from '../errors.js';
import { NO_VIEW, sameView, type View } from '../core/types.js';
import { ArbiterNotInitialized, checkProposal, decodeIdentity, encodeIdentity, encodeView, newIdentity, storedBackups } from './types.js';
import type { Arbiter, ArbiterIdentity, CasResult, InitResult, ViewRecord } from './types.js';

const VIEW_FILE = /^view-(\d+)$/;
export const IDENTITY_FILE = 'arbiter.json';

function unavailable(path: string, what: string, e: unknown): LockstepError {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  const detail = code ?? (e instanceof Error ? e.message : String(e));
  return new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter ${path}: ${what} failed (${detail})`);
}

/** Runs one fs step, turning any failure into E_ARBITER_UNAVAILABLE naming the path and errno. */
async function step<T>(path: string, what: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw unavailable(path, what, e);
  }
}

export class FileArbiter implements Arbiter {
  readonly description: string;

  constructor(
    readonly dir: string,
    readonly cluster = 'test',
  ) {
    this.description = `file:${dir}`;
  }

  async probe(): Promise<View> {
    const view = await this.current();
    await step(this.dir, 'access for writing', () => fs.access(this.dir, fsConstants.W_OK));
    return view;
  }

  async close(): Promise<void> {}

  async identity(): Promise<ArbiterIdentity> {
    await this.names(); // a missing directory or identity file: not initialized
    return this.readIdentity();
  }

  async init(): Promise<InitResult> {
    await step(this.dir, 'mkdir', () => fs.mkdir(this.dir, { recursive: true }));
    const mine = newIdentity(this.cluster);
    const created = await this.publish(join(this.dir, IDENTITY_FILE), encodeIdentity(mine) + '\n');
    return created ? { identity: mine, created: true } : { identity: await this.readIdentity(), created: false };
  }

  /** The directory's names; it must exist and hold the identity file (read by identity()). */
  private async names(): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new ArbiterNotInitialized(this.description, `the directory ${this.dir} does not exist`);
      throw unavailable(this.dir, 'readdir', e);
    }
    if (!names.includes(IDENTITY_FILE)) throw new ArbiterNotInitialized(this.description, `${this.dir} has no ${IDENTITY_FILE}`);
    return names;
  }

  private async readIdentity(): Promise<ArbiterIdentity> {
    const path = join(this.dir, IDENTITY_FILE);
    const text = await step(path, 'read', () => fs.readFile(path, 'utf8'));
    return decodeIdentity(text, path, this.cluster);
  }

  async current(): Promise<View> {
    const names = await this.names();
    await this.readIdentity(); // another cluster's arbiter is refused even before it holds a view
    let best = 0;
    for (const name of names) {
      const m = VIEW_FILE.exec(name);
      if (!m) continue; // temp files and anything else that is not a view
      const epoch = Number(m[1]);
      if (!Number.isSafeInteger(epoch) || name !== `view-${epoch}`) {
        throw new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter ${join(this.dir, name)}: not a canonical view file name; remove or rename it`);
      }
      best = Math.max(best, epoch);
    }
    return best === 0 ? NO_VIEW : this.readView(best);
  }

  /** The last `limit` view-<epoch> files, oldest first; `at` is the file's modification time (when it was published). */
  async history(limit = 50): Promise<readonly ViewRecord[]> {
    const epochs = (await this.names())
      .map((name) => VIEW_FILE.exec(name))
      .filter((m): m is RegExpExecArray => m !== null && m[0] === `view-${Number(m[1])}`)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b)
      .slice(-limit);
    const out: ViewRecord[] = [];
    for (const epoch of epochs) {
      const path = join(this.dir, `view-${epoch}`);
      const st = await step(path, 'stat', () => fs.stat(path));
      out.push({ view: await this.readView(epoch), at: st.mtime.toISOString() });
    }
    return out;
  }

  async compareAndSet(expected: View, next: View): Promise<CasResult> {
    checkProposal(expected, next);
    const cur = await this.current();
    if (!sameView(cur, expected)) return { ok: false, view: cur };

    const target = join(this.dir, `view-${next.epoch}`);
    if (!(await this.publish(target, encodeView(this.cluster, next) + '\n'))) return { ok: false, view: await this.current() };
    return { ok: true, view: next };
  }

  /**
   * Write `body` whole to a private temp file, fsync it, and link it to `target`, then fsync the
   * directory. False if `target` exists (someone else published first): exclusive, never torn.
   */
  private async publish(target: string, body: string): Promise<boolean> {
    const temp = join(this.dir, `.tmp-${process.pid}-${randomBytes(8).toString('hex')}`);
    try {
      await step(temp, 'write', async () => {
        const fh = await fs.open(temp, 'wx');
        try {
          await fh.writeFile(body);
          await fh.sync();
        } finally {
          await fh.close();
        }
      });
      try {
        await fs.link(temp, target);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
        throw unavailable(target, 'link', e);
      }
    } finally {
      await fs.unlink(temp).catch(() => undefined); // best effort: a leftover is ignored by readers
    }
    await step(this.dir, 'fsync', async () => {
      const fh = await fs.open(this.dir, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    });
    return true;
  }

  private async readView(epoch: number): Promise<View> {
    const path = join(this.dir, `view-${epoch}`);
    const text = await step(path, 'read', () => fs.readFile(path, 'utf8'));
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      throw unavailable(path, 'parse', e);
    }
    const o = v as Record<string, unknown> | null;
    const member = (x: unknown): x is string | null => x === null || (typeof x === 'string' && x !== '');
    const backups = typeof o === 'object' && o !== null ? storedBackups(o) : null;
    if (typeof o !== 'object' || o === null || o.epoch !== epoch || typeof o.primary !== 'string' || !member(o.primary) || backups === null) {
      throw new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter ${path}: not a valid view for epoch ${epoch}: ${JSON.stringify(text.slice(0, 200))}`);
    }
    if (o.cluster !== undefined && o.cluster !== this.cluster) {
      throw new LockstepError('E_ARBITER_CLUSTER', `arbiter ${path} holds a view of cluster ${JSON.stringify(o.cluster)}, not ${JSON.stringify(this.cluster)}: give every cluster its own arbiter directory`);
    }
    return Object.freeze({ epoch, primary: o.primary, backups: Object.freeze(backups) });
  }
}
