// Tests that run the `lockstep` command itself as a child process: start it, collect its
// stdout, and make sure it (and with it the nodes it started) is gone when the test ends.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePorts } from './process-cluster.js';

const MAIN = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export interface CliChild {
  readonly child: ChildProcess;
  /** Everything it wrote to stdout so far. */
  output(): string;
  /** Everything it wrote to stderr so far. */
  errors(): string;
  /** Its exit code (null if a signal ended it). */
  readonly exited: Promise<number | null>;
}

/**
 * Run `lockstep ARGS...`; killed (SIGKILL) after the test if it is still running. `group`: in a
 * process group of its own, as a terminal runs a command, so that a test can press Ctrl-C
 * (SIGINT to the whole group: the command and every node it started).
 */
export function spawnCli(t: { after: (fn: () => Promise<void>) => void }, args: readonly string[], opts: { group?: boolean } = {}): CliChild {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: opts.group === true });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  // 'close', not 'exit': by then everything it wrote has been read.
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL'); // its nodes go with it: they exit when their parent's IPC channel closes
    await exited;
  });
  return { child, output: () => out, errors: () => err, exited };
}

/** A base port P for `lockstep cluster`/`run` (they use P+1.., P+101.., P+201..), near a free one. */
export async function freeBasePort(): Promise<number> {
  const [base] = await freePorts(1);
  return Math.min(60_000, Math.max(20_000, base! - (base! % 1000)));
}

/** Run `lockstep ARGS...` to its end (SIGKILL after `timeoutMs`): exit code, stdout, stderr. */
export function runCli(args: readonly string[], timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const kill = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(kill);
      resolve({ code, stdout, stderr });
    });
  });
}
