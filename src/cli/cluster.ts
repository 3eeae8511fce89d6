// `lockstep cluster` (= `npm start`): the main job. Writes a config for a local cluster of
// three nodes (a primary, a backup, a spare) on the embedded file arbiter, starts each as a
// child process, prints how to connect, and shows a live status line per node. A node that
// dies (kill -9 it to watch a failover) is started again after a second, as an empty spare
// that the primary recruits. Ctrl-C stops every child and leaves no process behind.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { resolve, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatAddress, loadConfig } from '../node/config.js';
import { intValue, parseFlags } from './args.js';
import { fetchStatus, formatStatusLine, type NodeStatus } from './admin-client.js';
import type { CheckOutput } from './check.js';
import { LockstepError, isLockstepError } from '../errors.js';
import { etcdViewKey, formatEndpoint, parseArbiterSpec } from '../arbiter/spec.js';

export const CLUSTER_USAGE = `usage: lockstep cluster [--dir DIR] [--nodes N] [--base-port P] [--mode rsm|state-transfer] [--name NAME] [--arbiter SPEC]

Starts a local replicated kv cluster: N nodes (default 3: primary, backup, spare) as child
processes, on the file arbiter in DIR/arbiter (DIR defaults to .lockstep). Node i listens
for clients on P+i, for peers on P+100+i and for /status and /metrics on P+200+i (P defaults
to 7000). Each start is a new cluster: DIR/arbiter is cleared first. Logs go to DIR/<id>.log.
A node that dies is restarted after a second as an empty spare. Ctrl-C stops everything.
--arbiter etcd://127.0.0.1:2379 uses a running etcd instead (the view under
/lockstep/NAME/view, deleted first so each start is a new cluster).
`;

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

export async function clusterCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const flags = parseFlags('cluster', argv, { values: ['--dir', '--nodes', '--base-port', '--mode', '--name', '--arbiter'], switches: ['--no-respawn'] });
  if (flags.help) {
    out.stdout(CLUSTER_USAGE);
    return 0;
  }
  const dir = resolve(flags.values.get('--dir') ?? '.lockstep');
  const count = intValue(flags, '--nodes', 3, 1, 9);
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
  return superviseCluster({ dir, name, count, base, respawn, service: { kind: 'kv', mode }, describe: mode, ...(arbiter ? { arbiter } : {}) }, out);
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
  rmSync(join(dir, 'arbiter'), { recursive: true, force: true });
  if (c.arbiter !== undefined) await forgetEtcdView(c.arbiter, name);
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

  const children = new Map<string, ChildProcess>();
  let stopping = false;
  const startChild = (id: string): void => {
    const log = createWriteStream(join(dir, `${id}.log`), { flags: 'a' });
    const child = spawn(process.execPath, [MAIN, 'node', '--config', configPath, '--id', id], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    if (c.onLog && child.stdout) forEachJsonLine(child.stdout, c.onLog);
    children.set(id, child);
    child.on('exit', (code, signal) => {
      if (children.get(id) === child) children.delete(id);
      if (stopping) return;
      out.stdout(`\n${id} (pid ${child.pid}) exited (${signal ?? `code ${code}`})${respawn ? '; starting it again as an empty spare in 1 s' : ''}\n`);
      if (respawn) setTimeout(() => !stopping && startChild(id), 1000);
    });
  };
  for (const n of config.nodes) startChild(n.id);

  out.stdout(
    [
      `lockstep cluster "${name}" (${c.describe}) on arbiter ${c.arbiter ?? 'file:arbiter'}: ${count} nodes, config ${configPath}, logs ${dir}/<id>.log`,
      ...config.nodes.map((n) => `  ${n.id}: ${n.client === null ? '' : `clients ${formatAddress(n.client)}  `}admin http://${formatAddress(n.admin)}/status`),
      c.connect ?? `connect: redis-cli -p ${base + 1}   (any node answers INFO, ROLE and SENTINEL; writes go to the primary)`,
      `status:  lockstep status --config ${configPath}`,
      'kill -9 the primary\'s pid (shown below) to watch the backup go live. Ctrl-C stops the cluster.',
      '',
    ].join('\n'),
  );

  const tty = process.stdout.isTTY === true;
  let drawn = 0;
  let last = '';
  let finish: ((code: number) => void) | null = null;
  const render = async (): Promise<void> => {
    const statuses = await Promise.all(config.nodes.map((n) => fetchStatus(n.admin, 500)));
    const lines = config.nodes.map((n, i) => {
      const s = statuses[i] ?? null;
      return `${formatStatusLine(n.id, n.client === null ? '-' : formatAddress(n.client), s)}${s ? ` pid ${s.pid}` : ''}`;
    });
    const text = lines.join('\n');
    if (tty && c.onLog === undefined) {
      if (drawn > 0) process.stdout.write(`\x1b[${drawn}A`);
      process.stdout.write(lines.map((l) => `\x1b[2K${l}`).join('\n') + '\n');
      drawn = lines.length;
    } else if (text.replace(/ops\/s \d+\s*/g, '') !== last.replace(/ops\/s \d+\s*/g, '')) {
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
          child.kill('SIGTERM');
        }),
    ),
  );
  out.stdout('stopped; no node is left running.\n');
  return exitCode;
}

/** A demo start is a new cluster: delete the cluster's view key on that etcd first. */
async function forgetEtcdView(spec: string, cluster: string): Promise<void> {
  const parsed = parseArbiterSpec(spec);
  if (parsed.kind !== 'etcd') return;
  const { Etcd3 } = await import('etcd3');
  const client = new Etcd3({ hosts: parsed.endpoints.map((e) => `http://${formatEndpoint(e)}`), dialTimeout: 2000 });
  try {
    await client.delete().key(etcdViewKey(parsed.prefix, cluster)).options({ deadline: Date.now() + 3000 });
  } catch (e) {
    throw new LockstepError('E_ARBITER_UNAVAILABLE', `--arbiter ${spec}: cannot reach etcd to start a new cluster there: ${(e as Error).message}`);
  } finally {
    client.close();
  }
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
