// A real cluster for tests: every replica a child process (`lockstep node`), real TCP on
// loopback, the file arbiter in a temp directory (or any arbiter spec, e.g. a real etcd), real signals (kill -9, SIGSTOP, SIGCONT).
// `stop()` kills every child and removes the directory; tests call it in `after` so nothing
// is left behind even when an assertion fails. With `peerProxies`, every node listens for the
// logging channel on its own `peerListen` port and a TcpProxy sits on its `peer` address (the
// one the other nodes dial), so a test can cut, or reset, any node's incoming channel. With
// `hosts` and `wrap`, every node runs on a host of its own (a network namespace with its own
// address, src/testing/netns.ts) on fixed ports, under a command prefix (`ip netns exec`).
// The arbiter is created before any node starts, by the code `lockstep init` runs.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetchStatus, type NodeStatus } from '../cli/admin-client.js';
import { TcpProxy } from './tcp-proxy.js';
import { initClusterArbiter } from '../cli/init.js';
import { loadConfig } from '../node/config.js';

/** This build's `lockstep` entry point (what nodes run unless the cluster or `spawn` says otherwise). */
export const MAIN = fileURLToPath(new URL('../cli/main.js', import.meta.url));

export interface ProcessClusterOptions {
  readonly nodes?: number;
  readonly mode?: 'rsm' | 'state-transfer';
  /** Give the cluster a shared secret for peer authentication (default true). */
  readonly secret?: boolean;
  /** The config's `service` object (default: kv in `mode`). */
  readonly service?: Record<string, unknown>;
  readonly heartbeatMs?: number;
  readonly failureTimeoutMs?: number;
  /** Extra top-level config fields. */
  readonly extra?: Record<string, unknown>;
  /**
   * Give every node a `peerListen` port and put a TcpProxy on its `peer` address, forwarding
   * to `peerListen`, before any node starts: `peerProxy(id)` carries everything sent to `id`
   * on the logging channel (the other nodes' messages, and its handshake answers back).
   */
  readonly peerProxies?: boolean;
  /** The arbiter spec (default: file:arbiter in the cluster's directory), e.g. an EtcdCluster's spec(). */
  readonly arbiter?: string;
  /** Extra fields of one node's config entry (e.g. its own `arbiter` endpoints). */
  readonly nodeExtra?: (id: string) => Record<string, unknown>;
  /**
   * One address per node, in order (the node count is then its length): node i listens there
   * on ports 7000 (client), 7100 (peer), 7200 (admin), as on a machine of its own.
   */
  readonly hosts?: readonly string[];
  /** A command prefix to run node `id` under, e.g. ['ip', 'netns', 'exec', 'lsN-1-1']. */
  readonly wrap?: (id: string) => readonly string[];
  /** The `cli/main.js` every node starts with (default: this build's), e.g. an older release's. */
  readonly main?: string;
  /** Durable mode: `"durable": true`, every node's dataDir `data-<id>` in the cluster's directory (see dataDir). */
  readonly durable?: boolean;
}

export interface ProcessNode {
  readonly id: string;
  readonly client: { host: string; port: number };
  readonly peer: { host: string; port: number };
  /** Where the node itself listens for peers, when it differs from `peer` (peerProxies). */
  readonly peerListen?: { host: string; port: number };
  readonly admin: { host: string; port: number };
  child: ChildProcess | null;
}

/** Ports that were free a moment ago (bind to 0, read, close). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise<net.Server>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

/** Once `child` has exited (at once if it has): its exit code (null: ended by a signal). */
function exitOf(child: ChildProcess): Promise<number | null> {
  return new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(child.exitCode) : child.once('exit', (code) => r(code))));
}

export class ProcessCluster {
  readonly dir: string;
  readonly configPath: string;
  readonly nodes: ProcessNode[] = [];
  readonly cluster = 'test';
  /** The proxy on each node's peer address, by node id (peerProxies only). */
  readonly peerProxies = new Map<string, TcpProxy>();
  /** The id of the arbiter's identity (what every node carries in its handshake). */
  arbiterId = '';
  private wrap: ((id: string) => readonly string[]) | undefined;
  private main = MAIN;

  private constructor(dir: string) {
    this.dir = dir;
    this.configPath = join(dir, 'cluster.json');
  }

  static async start(opts: ProcessClusterOptions = {}): Promise<ProcessCluster> {
    const count = opts.hosts?.length ?? opts.nodes ?? 3;
    const c = new ProcessCluster(mkdtempSync(join(tmpdir(), 'lockstep-test-')));
    c.wrap = opts.wrap;
    if (opts.main !== undefined) c.main = opts.main;
    try {
      if (opts.hosts && opts.peerProxies) throw new Error('peerProxies listen on loopback; with hosts, cut the network instead (netns.ts)');
      const per = opts.peerProxies ? 4 : 3;
      const ports = opts.hosts ? opts.hosts.flatMap(() => [7000, 7100, 7200]) : await freePorts(count * per);
      for (let i = 0; i < count; i++) {
        const host = opts.hosts?.[i] ?? '127.0.0.1';
        c.nodes.push({
          id: `n${i + 1}`,
          client: { host, port: ports[i * per]! },
          peer: { host, port: ports[i * per + 1]! },
          admin: { host, port: ports[i * per + 2]! },
          ...(opts.peerProxies ? { peerListen: { host: '127.0.0.1', port: ports[i * per + 3]! } } : {}),
          child: null,
        });
      }
      for (const n of c.nodes) {
        if (!n.peerListen) continue;
        const proxy = new TcpProxy(n.peerListen, n.peer.port);
        c.peerProxies.set(n.id, proxy);
        await proxy.start(n.peer.port);
      }
      if (opts.secret !== false) writeFileSync(join(c.dir, 'secret'), randomBytes(32).toString('hex'));
      const config = {
        cluster: c.cluster,
        arbiter: opts.arbiter ?? 'file:arbiter',
        ...(opts.secret !== false ? { secretFile: 'secret' } : {}),
        service: opts.service ?? { kind: 'kv', mode: opts.mode ?? 'rsm' },
        heartbeatMs: opts.heartbeatMs ?? 30,
        failureTimeoutMs: opts.failureTimeoutMs ?? 300,
        ...(opts.durable ? { durable: true } : {}),
        ...opts.extra,
        nodes: c.nodes.map((n) => ({
          id: n.id,
          client: `${n.client.host}:${n.client.port}`,
          peer: `${n.peer.host}:${n.peer.port}`,
          admin: `${n.admin.host}:${n.admin.port}`,
          ...(n.peerListen ? { peerListen: `${n.peerListen.host}:${n.peerListen.port}` } : {}),
          ...(opts.durable ? { dataDir: `data-${n.id}` } : {}),
          ...opts.nodeExtra?.(n.id),
        })),
      };
      writeFileSync(c.configPath, JSON.stringify(config, null, 2));
      c.arbiterId = (await initClusterArbiter(await loadConfig(c.configPath))).identity.id;
      // The first node starts first so that it wins the bootstrap; the rest are spares.
      c.spawn('n1');
      await c.waitFor(async () => (await c.status('n1'))?.role === 'primary', 30_000, 'n1 to become primary');
      for (const n of c.nodes.slice(1)) c.spawn(n.id);
      if (count > 1) await c.waitFor(async () => (await c.statuses()).some((s) => s?.role === 'backup'), 30_000, 'a backup to be recruited');
      return c;
    } catch (e) {
      await c.stop();
      throw e;
    }
  }

  /** The proxy in front of node `id`'s peer address (needs `peerProxies`). */
  peerProxy(id: string): TcpProxy {
    const p = this.peerProxies.get(id);
    if (!p) throw new Error(`no peer proxy for ${id}: start the cluster with peerProxies`);
    return p;
  }

  node(id: string): ProcessNode {
    const n = this.nodes.find((x) => x.id === id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /**
   * Start (or start again: an empty spare, or in durable mode from its dataDir) node `id`,
   * with the cluster's `cli/main.js` or `main` (another build's, as in a rolling upgrade).
   */
  spawn(id: string, main: string = this.main): ChildProcess {
    const n = this.node(id);
    const log = createWriteStream(join(this.dir, `${id}.log`), { flags: 'a' });
    const [command, ...prefix] = [...(this.wrap?.(id) ?? []), process.execPath];
    const child = spawn(command!, [...prefix, main, 'node', '--config', this.configPath, '--id', id], { stdio: ['ignore', 'pipe', 'pipe'] });
    // Neither stream ends the log: a child writing to stderr as its stdout closes would
    // otherwise write after the end ("write after end" in the test).
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    child.once('close', () => log.end()); // after both streams are done
    n.child = child;
    return child;
  }

  /** Send a signal to node `id` (SIGKILL, SIGSTOP, SIGCONT, SIGTERM). */
  signal(id: string, sig: NodeJS.Signals): void {
    const child = this.node(id).child;
    if (!child || child.pid === undefined) throw new Error(`${id} is not running`);
    process.kill(child.pid, sig);
  }

  async kill9(id: string): Promise<void> {
    const child = this.node(id).child;
    if (!child) return;
    const exited = exitOf(child);
    this.signal(id, 'SIGKILL');
    await exited;
    this.node(id).child = null;
  }

  /** Stop node `id` as an operator would (SIGTERM) and wait for it to exit; its exit code. */
  async stopNode(id: string, timeoutMs = 10_000): Promise<number | null> {
    const child = this.node(id).child;
    if (!child) return null;
    const exited = exitOf(child);
    this.signal(id, 'SIGTERM');
    const timer = new Promise<'late'>((r) => setTimeout(() => r('late'), timeoutMs).unref());
    const code = await Promise.race([exited, timer]);
    if (code === 'late') {
      await this.kill9(id);
      throw new Error(`${id} did not exit within ${timeoutMs} ms of SIGTERM (killed)`);
    }
    this.node(id).child = null;
    return code;
  }

  /** Durable mode: node `id`'s dataDir (spawn starts it again from there). */
  dataDir(id: string): string {
    return join(this.dir, `data-${this.node(id).id}`);
  }

  /** kill -9 every running node at once (one signal each, back to back), and wait until all are gone. */
  async killAll(): Promise<void> {
    const running = this.nodes.filter((n) => n.child !== null && n.child.exitCode === null && n.child.signalCode === null);
    const exited = running.map((n) => exitOf(n.child!));
    for (const n of running) process.kill(n.child!.pid!, 'SIGKILL');
    await Promise.all(exited);
    for (const n of this.nodes) n.child = null;
  }

  status(id: string): Promise<NodeStatus | null> {
    return fetchStatus(this.node(id).admin, 1000);
  }

  statuses(): Promise<(NodeStatus | null)[]> {
    return Promise.all(this.nodes.map((n) => fetchStatus(n.admin, 1000)));
  }

  async primary(): Promise<NodeStatus | null> {
    return (await this.statuses()).find((s) => s?.role === 'primary') ?? null;
  }

  clientAddresses(): string[] {
    return this.nodes.map((n) => `${n.client.host}:${n.client.port}`);
  }

  log(id: string): string {
    try {
      return readFileSync(join(this.dir, `${id}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  /** Poll `pred` until it holds, or fail after `timeoutMs` naming what was awaited. */
  /** Wait until a node other than `old` is primary (after a kill of `old`); its id. */
  async newPrimary(old: string, timeoutMs: number): Promise<string> {
    let id = '';
    await this.waitFor(async () => {
      const s = await this.primary();
      if (s !== null && s.id !== old) id = s.id;
      return id !== '';
    }, timeoutMs, `a primary other than ${old}`);
    return id;
  }

  async waitFor(pred: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (await pred()) return;
      if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** Kill every child (SIGCONT first, in case one is stopped) and remove the directory. */
  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (n) => {
        const child = n.child;
        n.child = null;
        if (!child || child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
        const exited = exitOf(child);
        try {
          process.kill(child.pid, 'SIGCONT');
          process.kill(child.pid, 'SIGKILL');
        } catch {
          return;
        }
        await exited;
      }),
    );
    await Promise.all([...this.peerProxies.values()].map((p) => p.stop()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
