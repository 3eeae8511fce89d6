// The run directory of a local cluster (`lockstep cluster`, `lockstep run`): its lock, and what
// to do with the arbiter a previous run left there.
//
// Two supervisors in one directory once destroyed a live cluster: the second cleared the
// arbiter and rewrote the config and the secret under the first one's nodes. So a supervisor
// holds DIR/supervisor.lock (its pid, created exclusively) for as long as it runs; a second
// one is refused naming the holder. A lock whose pid is gone is stale and taken over.
//
// And views are never deleted: an arbiter left by an earlier run is moved aside to
// DIR/arbiter.old-<time>, and only when no node of the cluster that wrote it still answers.

import { closeSync, existsSync, openSync, readFileSync, readdirSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { LockstepError } from '../errors.js';
import { fetchStatus } from './admin-client.js';
import { loadConfig } from '../node/config.js';

const LOCK = 'supervisor.lock';

/** Whether a process with this pid exists (it may belong to another user: EPERM). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Take DIR's supervisor lock or throw E_DIR_LOCKED naming the live holder. Returns the release
 * function (idempotent; call it on every way out).
 */
export function lockRunDir(dir: string): () => void {
  const path = join(dir, LOCK);
  for (let attempt = 0; attempt < 2; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new LockstepError('E_DIR_LOCKED', `cannot create ${path}: ${(e as Error).message}`);
      const holder = Number.parseInt(readFileSafe(path), 10);
      if (Number.isSafeInteger(holder) && holder > 0 && alive(holder)) {
        throw new LockstepError('E_DIR_LOCKED', `${dir} is in use by another lockstep supervisor (pid ${holder}); stop it first, or use --dir for a second cluster`);
      }
      rmSync(path, { force: true }); // stale: its supervisor is gone
      continue;
    }
    writeSync(fd, `${process.pid}\n`);
    closeSync(fd);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      if (readFileSafe(path).trim() === String(process.pid)) rmSync(path, { force: true });
    };
    process.once('exit', release);
    return release;
  }
  throw new LockstepError('E_DIR_LOCKED', `cannot take ${path}: another supervisor raced for it`);
}

function readFileSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/**
 * A new run starts on an empty arbiter. Views an earlier run left in DIR/arbiter are kept
 * (moved to DIR/arbiter.old-<time>), and only when none of that run's nodes still answers on
 * its admin port: a live node means a cluster started some other way is still using them.
 * Returns the directory the old views went to, or null if there were none.
 */
export async function retireOldArbiter(dir: string): Promise<string | null> {
  const arbiter = join(dir, 'arbiter');
  if (!existsSync(arbiter)) return null;
  const views = readdirSync(arbiter).filter((n) => /^view-\d+$/.test(n));
  if (views.length === 0) {
    rmSync(arbiter, { recursive: true, force: true }); // holds no view: nothing to keep
    return null;
  }
  const configPath = join(dir, 'cluster.json');
  if (existsSync(configPath)) {
    let config: Awaited<ReturnType<typeof loadConfig>> | null = null;
    try {
      config = await loadConfig(configPath);
    } catch {
      config = null; // an old config we cannot read names no node we could ask
    }
    for (const n of config?.nodes ?? []) {
      const s = await fetchStatus(n.admin, 500);
      if (s !== null) {
        throw new LockstepError(
          'E_DIR_LOCKED',
          `node ${n.id} of the cluster in ${dir} still answers (pid ${s.pid}, ${s.role}); it uses the views in ${arbiter}. Stop it first, or use --dir for a second cluster`,
        );
      }
    }
  }
  const to = `${arbiter}.old-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  renameSync(arbiter, to);
  return to;
}
