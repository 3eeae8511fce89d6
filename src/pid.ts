import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';

// Whether a process exists, for the lock files of local tools (a supervisor's run directory,
// the instrumented-module cache): a lock whose pid is gone is stale.

/** Whether a process with this pid exists (one of another user's answers EPERM: it exists). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Take a lock file holding this process's pid, created exclusively; one whose pid is gone is
 * stale (kill -9 leaves it behind) and taken over. A live holder: `busy(pid)` is thrown; a
 * lock that cannot be created: `failed(reason)`. Returns the release (idempotent: it removes
 * the file only while it still holds our pid), also run at process exit.
 */
export function takePidLock(path: string, busy: (pid: number) => Error, failed: (reason: string) => Error): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw failed(`cannot create ${path}: ${(e as Error).message}`);
      const holder = Number.parseInt(readFileOrEmpty(path), 10);
      if (Number.isSafeInteger(holder) && holder > 0 && holder !== process.pid && pidAlive(holder)) throw busy(holder);
      rmSync(path, { force: true }); // stale: its holder is gone
      continue;
    }
    try {
      writeSync(fd, `${process.pid}\n`);
    } catch (e) {
      throw failed(`cannot write ${path}: ${(e as Error).message}`);
    } finally {
      closeSync(fd);
    }
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      process.removeListener('exit', release);
      if (readFileOrEmpty(path).trim() === String(process.pid)) rmSync(path, { force: true });
    };
    process.once('exit', release);
    return release;
  }
  throw failed(`cannot take ${path}: another process raced for it`);
}

function readFileOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
