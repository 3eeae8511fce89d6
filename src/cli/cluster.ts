// `lockstep cluster` (= `npm start`): the main job. Writes a config for a local cluster of
// three nodes (a primary, a backup, a spare) on the embedded file arbiter, starts each as a
// child process, prints how to connect, and shows a live status line per node. A node that
// dies (kill -9 it to watch a failover) is started again after a second, as an empty spare
// that the primary recruits. Ctrl-C stops every child and leaves no process behind.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { resolve, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatAddress, loadConfig } from '../node/config.js';
import { intValue, parseFlags } from './args.js';
import { fetchStatus, formatStatusLine, type NodeStatus } from './admin-client.js';
import { assertPreviousRunGone, lockRunDir, retireEtcdView, retireOldArbiter } from './run-dir.js';
import type { CheckOutput } from './check.js';
import { LockstepError, isLockstepError } from '../errors.js';
import { parseArbiterSpec } from '../arbiter/spec.js';
import { initClusterArbiter } from './init.js';
import { loadServiceModule } from '../guest/sandbox.js';

export const CLUSTER_USAGE = `usage: lockstep cluster [--dir DIR] [--nodes N] [--backups B] [--base-port P] [--mode rsm|state-transfer] [--service FILE.js] [--name NAME] [--arbiter SPEC] [--no-respawn]

Starts a local replicated kv cluster (with --service, your own service module instead of kv:
its commands are called like Redis commands, see docs/SERVICES.md): N nodes (default 3: primary, backup, spare) as child
processes, on the file arbiter in DIR/arbiter (DIR defaults to .lockstep/cluster). Node i
listens for clients on P+i, for peers on P+100+i and for the dashboard, /status and /metrics
on P+200+i (P defaults to 7000). Logs go to DIR/<id>.log. --backups B: the primary keeps B
backups (default 1; B is at most N-1): every reply waits for each of them, so B nodes can fail
at once and nothing acknowledged is lost (try --nodes 4 --backups 2).

Each start is a new cluster (state lives in memory only). One supervisor at a time may use
DIR: a second is refused, naming the first one's pid. Views a previous run left in
DIR/arbiter are kept in DIR/arbiter.old-<time>, never deleted, and only once none of that
run's nodes answers any more. The new DIR/arbiter is created (as lockstep init does) before
any node starts.

A node that dies is started again as an empty spare, after 1 s, then 2 s, 4 s ... while it
keeps dying; its last error is shown. A node that exits with a configuration or usage error
(code 2) is not started again. --no-respawn: never start a node again. Ctrl-C stops everything.

--arbiter etcd://127.0.0.1:2379 uses a running etcd instead of the file arbiter (the view
under /lockstep/NAME/view). A view an earlier run left there is kept, as for the file
arbiter, under /lockstep/NAME/view.old-<time>.
`;

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

export async function clusterCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const flags = parseFlags('cluster', argv, { values: ['--dir', '--nodes', '--backups', '--base-port', '--mode', '--service', '--name', '--arbiter'], switches: ['--no-respawn'] });
  if (flags.help) {
    out.stdout(CLUSTER_USAGE);
    return 0;
  }
  const dir = resolve(flags.values.get('--dir') ?? join('.lockstep', 'cluster'));
  const count = intValue(flags, '--nodes', 3, 1, 9);
  const backups = intValue(flags, '--backups', 1, 1, 8);
  if (count > 1 && backups > count - 1) throw new LockstepError('E_BAD_FLAG_VALUE', `--backups ${backups} needs at least ${backups + 1} nodes (--nodes ${backups + 1}, or ${backups + 2} to keep a spare), got --nodes ${count}`);
  const base = intValue(flags, '--base-port', 7000, 1024, 65_000);
  const mode = flags.values.get('--mode') ?? 'rsm';
  if (mode !== 'rsm' && mode !== 'state-transfer') throw new LockstepError('E_BAD_FLAG_VALUE', `--mode must be rsm or state-transfer, got ${JSON.stringify(mode)}`);
  const name = flags.values.get('--name') ?? 'demo';
  const respawn = !flags.switches.has('--no-respawn');

  const arbiter = flags.values.get('--arbiter');
  if (arbiter !== undefined) {
    try {
      if (parseArbiterSpec(arbiter).kind !== 'etcd') throw new LockstepError('E_BAD_FLAG_VALUE', `--arbiter takes etcd://HOST:PORT[,...][/PREFIX] (the default is the file arbiter in DIR/arbiter), got ${JSON.stringify(arbiter)}`);
    } catch (e) {
      if (isLockstepError(e) && e.code === 'E_CONFIG_INVALID') throw new LockstepError('E_BAD_FLAG_VALUE', `--arbiter: ${e.message}`);
      throw e;
    }
  }
  const module = flags.values.get('--service');
  let service: Record<string, unknown> = { kind: 'kv', mode };
  let describe: string = mode;
  if (module !== undefined) {
    if (!/\.m?js$/.test(module)) throw new LockstepError('E_BAD_FLAG_VALUE', `--service takes a service module, a .js or .mjs file, got ${JSON.stringify(module)}`);
    const path = resolve(module);
    loadServiceModule(path); // refuse a module that cannot load here, before any node starts
    service = { kind: 'module', module: path, mode };
    describe = `${mode} service ${module}`;
  }
  return superviseCluster({ dir, name, count, base, respawn, service, describe, ...(backups > 1 ? { backups } : {}), ...(arbiter ? { arbiter } : {}) }, out);
}

export interface LocalCluster {
  readonly dir: string;
  readonly name: string;
  readonly count: number;
  readonly base: number;
  readonly respawn: boolean;
  /** The config's `service` object. */
  readonly service: Record<string, unknown>;
  /** An etcd arbiter spec; default: the file arbiter in DIR/arbiter. */
  readonly arbiter?: string;
  /** The config's `backups` (absent: the default, 1). */
  readonly backups?: number;
  /** Said in the banner after the cluster's name ("rsm", "wasm kvserver.wasm"). */
  readonly describe: string;
  /** How clients connect, for the banner. */
  readonly connect?: string;
  /** Each JSON log line of every child, parsed (the wasm run prints the guest's stdout). */
  readonly onLog?: (rec: Record<string, unknown>) => void;
  /** Stop when this resolves (the guest exited); the resolved value is the exit code. */
  readonly until?: (statuses: readonly (NodeStatus | null)[]) => number | null;
}

/**
 * Write a config for a local cluster on the file arbiter, start every node as a child, show a
 * status line per node, restart a dead node as an empty spare, and stop everything on Ctrl-C
 * (or when `until` says so). Resolves with the exit code.
 */
export async function superviseCluster(c: LocalCluster, out: CheckOutput): Promise<number> {
  const { dir, name, count, base, respawn } = c;
  mkdirSync(dir, { recursive: true });
  const unlock = lockRunDir(dir);
  try {
    return await supervise(c, out);
  } finally {
    unlock();
  }
}

/** Restarts of a node that keeps dying wait longer each time: 1 s, 2 s, 4 s ... up to this. */
const RESPAWN_BACKOFF_MAX_MS = 30_000;
/** A node that ran this long before dying starts the backoff over. */
const RESPAWN_HEALTHY_MS = 60_000;

async function supervise(c: LocalCluster, out: CheckOutput): Promise<number> {
  const { dir, name, count, base, respawn } = c;
  await assertPreviousRunGone(dir);
  const retired = retireOldArbiter(dir);
  if (retired !== null) out.stdout(`the views of the previous run in ${dir} are kept in ${retired}\n`);
  if (c.arbiter !== undefined) {
    const kept = await retireEtcdView(c.arbiter, name);
    if (kept !== null) out.stdout(`the view of the previous run on ${c.arbiter} is kept under ${kept}\n`);
  }
  const configPath = join(dir, 'cluster.json');
  // A fresh secret per start: the nodes prove to each other that they hold it (peer auth).
  writeFileSync(join(dir, 'secret'), randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  const raw = {
    cluster: name,
    arbiter: c.arbiter ?? 'file:arbiter',
    secretFile: 'secret',
    service: c.service,
    heartbeatMs: 50,
    failureTimeoutMs: 500,
    ...(c.backups !== undefined ? { backups: c.backups } : {}),
    nodes: Array.from({ length: count }, (_, i) => ({
      id: `n${i + 1}`,
      // A wasm guest's clients use its own listen addresses; the nodes need no client port.
      ...(c.service.kind === 'wasm' ? {} : { client: `127.0.0.1:${base + 1 + i}` }),
      peer: `127.0.0.1:${base + 101 + i}`,
      admin: `127.0.0.1:${base + 201 + i}`,
    })),
  };
  writeFileSync(configPath, JSON.stringify(raw, null, 2) + '\n');
  const config = await loadConfig(configPath);
  // The arbiter is created here, as `lockstep init` does, never by a node on first use.
  const init = await initClusterArbiter(config);
  out.stdout(`${init.created ? 'initialized' : 'using'} arbiter ${init.description} (id ${init.identity.id})\n`);

  const tty = process.stdout.isTTY === true;
  let drawn = 0;
  /** An event line: printed above the status block, which is then drawn afresh below it. */
  const event = (text: string): void => {
    out.stdout(text);
    drawn = 0;
  };

  const children = new Map<string, ChildProcess>();
  const restarts = new Map<string, number>();
  let stopping = false;
  let finish: ((code: number) => void) | null = null;
  const startChild = (id: string): void => {
    const logPath = join(dir, `${id}.log`);
    const log = createWriteStream(logPath, { flags: 'a' });
    log.on('error', () => undefined); // a full disk must not take the supervisor down
    // A process group of its own: the terminal's Ctrl-C reaches only the supervisor, which then
    // asks each node to stop (a node still starting up would otherwise die of the SIGINT).
    const child = spawn(process.execPath, [MAIN, 'node', '--config', configPath, '--id', id], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], detached: true });
    // Both streams go into one file: neither may end it (the other may still be writing).
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    const tail = lastLines(child);
    if (c.onLog && child.stdout) forEachJsonLine(child.stdout, c.onLog);
    children.set(id, child);
    const startedMs = Date.now();
    // On stop, 'exit' (a child the supervisor disconnected may never emit 'close'); otherwise
    // 'close', once all it wrote has been read, to show its last error.
    child.once('exit', (code, signal) => {
      if (stopping) out.stdout(`${id} (pid ${child.pid}) stopped (${signal ?? `code ${code}`})\n`);
    });
    child.once('close', (code, signal) => {
      log.end();
      if (children.get(id) === child) children.delete(id);
      if (stopping) return;
      // A node killed by a signal said nothing about it; one that exited may have said why.
      const why = signal === null ? lastError(tail()) : null;
      const failures = Date.now() - startedMs > RESPAWN_HEALTHY_MS ? 1 : (restarts.get(id) ?? 0) + 1;
      restarts.set(id, failures);
      const delayMs = Math.min(RESPAWN_BACKOFF_MAX_MS, 1000 * 2 ** (failures - 1));
      // Exit code 2 is a usage or configuration error: starting it again cannot help.
      const again = respawn && code !== 2;
      const what = `${id} (pid ${child.pid}) exited (${signal ?? `code ${code}`})${why ? `: ${why}` : ''}`;
      const next = again
        ? `; starting it again as an empty spare in ${delayMs / 1000} s${failures > 1 ? ` (failure ${failures} in a row)` : ''}`
        : respawn
          ? `; not starting it again (a configuration or usage error; see ${logPath})`
          : '';
      event(`\n${what}${next}\n`);
      if (again) setTimeout(() => !stopping && startChild(id), delayMs);
      else if (children.size === 0) finish?.(code ?? 1);
    });
  };
  for (const n of config.nodes) startChild(n.id);

  out.stdout(
    [
      `lockstep cluster "${name}" (${c.describe}) on arbiter ${c.arbiter ?? 'file:arbiter'}: ${count} nodes, config ${configPath}, logs ${dir}/<id>.log`,
      ...config.nodes.map((n) => `  ${n.id}: ${n.client === null ? '' : `clients ${formatAddress(n.client)}  `}admin http://${formatAddress(n.admin)}/status`),
      `dashboard: http://${formatAddress(config.nodes[0]!.admin)}/   (any node's admin address serves it)`,
      c.connect ?? `connect: redis-cli -p ${base + 1}   (any node answers INFO, ROLE and SENTINEL; writes go to the primary)`,
      `status:  lockstep status --config ${configPath}`,
      'kill -9 the primary\'s pid (shown below) to watch the backup go live. Ctrl-C stops the cluster.',
      '',
    ].join('\n'),
  );

  let last = '';
  const render = async (): Promise<void> => {
    const statuses = await Promise.all(config.nodes.map((n) => fetchStatus(n.admin, 500)));
    if (stopping) return;
    const lines = config.nodes.map((n, i) => {
      const s = statuses[i] ?? null;
      return `${formatStatusLine(n.id, n.client === null ? '-' : formatAddress(n.client), s)}${s ? ` pid ${s.pid}` : ''}`;
    });
    const text = lines.join('\n');
    if (tty && c.onLog === undefined) {
      if (drawn > 0) process.stdout.write(`\x1b[${drawn}A`);
      process.stdout.write(lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n');
      drawn = lines.length;
    } else if (steady(text) !== steady(last)) {
      out.stdout(text + '\n');
    }
    last = text;
    const code = c.until?.(statuses) ?? null;
    if (code !== null) finish?.(code);
  };
  const timer = setInterval(() => void render(), 1000);

  const exitCode = await new Promise<number>((resolveStop) => {
    finish = resolveStop;
    process.once('SIGINT', () => resolveStop(0));
    process.once('SIGTERM', () => resolveStop(0));
  });
  stopping = true;
  clearInterval(timer);
  out.stdout('\nstopping the cluster...\n');
  await Promise.all(
    [...children.values()].map(
      (child) =>
        new Promise<void>((done) => {
          if (child.exitCode !== null || child.signalCode !== null) return done();
          const kill = setTimeout(() => child.kill('SIGKILL'), 3000);
          child.once('exit', () => {
            clearTimeout(kill);
            done();
          });
          // Closing the IPC channel asks the node to stop (cli/node.ts). A signal could race with
          // a node that is already exiting on the terminal's own Ctrl-C and kill it mid-exit.
          if (child.connected) child.disconnect();
          else child.kill('SIGTERM');
        }),
    ),
  );
  out.stdout('stopped; no node is left running.\n');
  return exitCode;
}

/** A status block without what changes every second (ops/s, the arbiter's latency): reprinted only when the rest changes. */
function steady(text: string): string {
  return text.replace(/ops\/s \d+\s*/g, '').replace(/arbiter (\S+) [\d.]+ ms/g, 'arbiter $1');
}

/** The last few lines a child wrote to stdout or stderr (to say why it died). */
function lastLines(child: ChildProcess, keep = 20): () => string[] {
  const lines: string[] = [];
  const add = (chunk: Buffer): void => {
    for (const l of chunk.toString('utf8').split('\n')) if (l.trim() !== '') lines.push(l);
    if (lines.length > keep) lines.splice(0, lines.length - keep);
  };
  child.stdout?.on('data', add);
  child.stderr?.on('data', add);
  return () => lines;
}

/** The most telling line of a dead node's last output: its `error CODE: ...` line, else its last warning. */
export function lastError(lines: readonly string[]): string | null {
  for (let i = lines.length - 1; i >= 0; i--) {
    const l = lines[i]!;
    if (/^error E_[A-Z_]+:/.test(l) || /^\S*Error\b/.test(l)) return l.slice(0, 300);
  }
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      const rec = JSON.parse(lines[i]!) as Record<string, unknown>;
      if (rec.level === 'warn' || rec.level === 'error') {
        const { time: _t, level: _l, node: _n, ...rest } = rec;
        return JSON.stringify(rest).slice(0, 300);
      }
    } catch {
      // not a log record
    }
  }
  return null;
}

/** Call `f` with every line of `stream` that parses as a JSON object. */
function forEachJsonLine(stream: NodeJS.ReadableStream, f: (rec: Record<string, unknown>) => void): void {
  let buf = '';
  stream.on('data', (chunk: Buffer) => {
    buf += chunk.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        const rec: unknown = JSON.parse(line);
        if (typeof rec === 'object' && rec !== null) f(rec as Record<string, unknown>);
      } catch {
        // not a log record
      }
    }
  });
}
