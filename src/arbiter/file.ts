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

import { constants as fsConstants, promises as fs } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LockstepError } from '../errors.js';
import { NO_VIEW, sameView, type View } from '../core/types.js';
import { checkProposal, encodeView, type Arbiter, type CasResult } from './types.js';

const VIEW_FILE = /^view-(\d+)$/;

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
  private created = false;

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

  async current(): Promise<View> {
    await this.ensureDir();
    let best = 0;
    for (const name of await step(this.dir, 'readdir', () => fs.readdir(this.dir))) {
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

  async compareAndSet(expected: View, next: View): Promise<CasResult> {
    checkProposal(expected, next);
    const cur = await this.current();
    if (!sameView(cur, expected)) return { ok: false, view: cur };

    const temp = join(this.dir, `.tmp-view-${process.pid}-${randomBytes(8).toString('hex')}`);
    const target = join(this.dir, `view-${next.epoch}`);
    const body = encodeView(this.cluster, next) + '\n';
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
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') return { ok: false, view: await this.current() };
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
    return { ok: true, view: next };
  }

  /** Created lazily, once: recreating a vanished directory later would silently forget every view. */
  private async ensureDir(): Promise<void> {
    if (this.created) return;
    await step(this.dir, 'mkdir', () => fs.mkdir(this.dir, { recursive: true }));
    this.created = true;
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
    if (typeof o !== 'object' || o === null || o.epoch !== epoch || typeof o.primary !== 'string' || !member(o.primary) || !member(o.backup)) {
      throw new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter ${path}: not a valid view for epoch ${epoch}: ${JSON.stringify(text.slice(0, 200))}`);
    }
    if (o.cluster !== undefined && o.cluster !== this.cluster) {
      throw new LockstepError('E_ARBITER_CLUSTER', `arbiter ${path} holds a view of cluster ${JSON.stringify(o.cluster)}, not ${JSON.stringify(this.cluster)}: give every cluster its own arbiter directory`);
    }
    return Object.freeze({ epoch, primary: o.primary, backup: o.backup });
  }
}
