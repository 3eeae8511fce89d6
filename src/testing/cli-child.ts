// Tests that run the `lockstep` command itself as a child process: start it, collect its
// stdout, and make sure it (and with it the nodes it started) is gone when the test ends.

import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

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

/**
 * A base port P for `lockstep cluster`/`run` (they use P+1.., P+101.., P+201..): below the
 * kernel's ephemeral range (32768 and up by default), so that no outgoing connection's source
 * port and no `listen(0)` elsewhere in the suite can take one of them while the test runs, and
 * with all of P+1..P+9, P+101..P+109 and P+201..P+209 free now. Random, so that two test files
 * running at once rarely pick the same; checked, so that a clash is skipped rather than failed.
 */
export async function freeBasePort(): Promise<number> {
  const offsets = [0, 100, 200].flatMap((hundred) => Array.from({ length: 9 }, (_, i) => hundred + 1 + i));
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 120) * 100;
    if (await allFree(offsets.map((o) => base + o))) return base;
  }
  throw new Error('freeBasePort: no base port in 20000..32000 with its 27 ports free after 50 tries');
}

async function allFree(ports: readonly number[]): Promise<boolean> {
  const servers: net.Server[] = [];
  try {
    for (const port of ports) {
      const s = net.createServer();
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(port, '127.0.0.1', () => resolve());
      });
      servers.push(s);
    }
    return true;
  } catch {
    return false;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
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
    // 'close', not 'exit': after 'exit' the last of stdout and stderr may still be unread.
    child.once('close', (code) => {
      clearTimeout(kill);
      resolve({ code, stdout, stderr });
    });
  });
}
