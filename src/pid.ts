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
