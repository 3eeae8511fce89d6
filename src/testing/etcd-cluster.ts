// Real etcd for tests: `EtcdCluster.start({ members })` runs its own etcd processes (Debian's
// etcd-server, 3.4) on free loopback ports with their data in a temp directory, and `stop()`
// kills them and removes the directory (tests call it in `after`; an exit hook does it too if
// the test process dies first). Members can be killed with -9 and started again on the same
// data, and the helper finds the raft leader, so fault tests can take quorum away and give
// it back. Election timing is short (heartbeat 50 ms, election 500 ms) to keep tests fast.
// Addresses are a parameter (`host`, or one host per member with `hosts`, then on etcd's
// standard ports 2379/2380), and `wrap` runs each member under a command prefix (`ip netns
// exec NAME`), so tests in network namespaces (src/testing/netns.ts) reuse it.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { freePorts } from './process-cluster.js';

export const ETCD_BINARY = process.env.LOCKSTEP_ETCD ?? 'etcd';

/** Null when an etcd server binary is on PATH; otherwise the one-line reason tests skip with. */
export function etcdMissing(): string | null {
  const r = spawnSync(ETCD_BINARY, ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    // In CI a missing etcd is a broken CI (.ci/run installs it), not a reason to skip.
    if (process.env.CI) throw new Error(`CI without etcd ('${ETCD_BINARY}'): .ci/run must install etcd-server`);
    return `etcd is not installed: apt-get install etcd-server (looked for '${ETCD_BINARY}')`;
  }
  return null;
}

export interface EtcdMember {
  readonly name: string;
  readonly host: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dataDir: string;
  child: ChildProcess | null;
}

export interface EtcdClusterOptions {
  /** 1 or 3 (any odd number works). */
  readonly members?: number;
  readonly host?: string;
  /** One address per member (its own host: every member on ports 2379 and 2380); overrides `host`. */
  readonly hosts?: readonly string[];
  /** A command prefix to run member `name` under, e.g. ['ip', 'netns', 'exec', 'lsN-1-4']. */
  readonly wrap?: (name: string) => readonly string[];
  readonly heartbeatMs?: number;
  readonly electionMs?: number;
}

const live = new Set<EtcdCluster>();
process.once('exit', () => {
  for (const c of live) c.killAllSync();
});

export class EtcdCluster {
  readonly members: EtcdMember[] = [];
  private readonly initialCluster: string;

  private constructor(
    readonly dir: string,
    hosts: readonly string[],
    ports: number[],
    private readonly heartbeatMs: number,
    private readonly electionMs: number,
    private readonly wrap: ((name: string) => readonly string[]) | undefined,
  ) {
    for (const [i, host] of hosts.entries()) {
      this.members.push({ name: `e${i + 1}`, host, clientPort: ports[2 * i]!, peerPort: ports[2 * i + 1]!, dataDir: join(dir, `e${i + 1}`), child: null });
    }
    this.initialCluster = this.members.map((m) => `${m.name}=http://${m.host}:${m.peerPort}`).join(',');
  }

  static async start(opts: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    const count = opts.hosts?.length ?? opts.members ?? 1;
    const hosts = opts.hosts ?? Array.from({ length: count }, () => opts.host ?? '127.0.0.1');
    const ports = opts.hosts ? hosts.flatMap(() => [2379, 2380]) : await freePorts(2 * count);
    const c = new EtcdCluster(mkdtempSync(join(tmpdir(), 'lockstep-etcd-')), hosts, ports, opts.heartbeatMs ?? 50, opts.electionMs ?? 500, opts.wrap);
    live.add(c);
    try {
      for (const m of c.members) c.spawn(m.name, 'new');
      await c.waitHealthy(30_000);
      return c;
    } catch (e) {
      await c.stop();
      throw e;
    }
  }

  /** "host:port,host:port,..." of every member's client URL (or of the members named). */
  endpoints(names?: readonly string[]): string {
    return this.members.filter((m) => !names || names.includes(m.name)).map((m) => `${m.host}:${m.clientPort}`).join(',');
  }

  /** An arbiter spec for lockstep: etcd://<every member>[prefix]. */
  spec(prefix = ''): string {
    return `etcd://${this.endpoints()}${prefix}`;
  }

  member(name: string): EtcdMember {
    const m = this.members.find((x) => x.name === name);
    if (!m) throw new Error(`no etcd member ${name}`);
    return m;
  }

  /** Start member `name` (again, on its data directory: `existing` once the cluster has formed). */
  spawn(name: string, state: 'new' | 'existing' = 'existing'): ChildProcess {
    const m = this.member(name);
    const url = (port: number): string => `http://${m.host}:${port}`;
    const log = createWriteStream(join(this.dir, `${name}.log`), { flags: 'a' });
    const [command, ...prefix] = [...(this.wrap?.(name) ?? []), ETCD_BINARY];
    const child = spawn(command!, [...prefix,
      '--name', name, '--data-dir', m.dataDir,
      '--listen-client-urls', url(m.clientPort), '--advertise-client-urls', url(m.clientPort),
      '--listen-peer-urls', url(m.peerPort), '--initial-advertise-peer-urls', url(m.peerPort),
      '--initial-cluster', this.initialCluster, '--initial-cluster-token', `lockstep-test-${basename(this.dir)}`,
      '--initial-cluster-state', state,
      '--heartbeat-interval', String(this.heartbeatMs), '--election-timeout', String(this.electionMs),
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.pipe(log);
    child.stderr?.pipe(log);
    m.child = child;
    return child;
  }

  async kill9(name: string): Promise<void> {
    const m = this.member(name);
    const child = m.child;
    m.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    process.kill(child.pid, 'SIGKILL');
    await exited;
  }

  /** What one member's maintenance/status says, or null if it does not answer in time. */
  async memberStatus(name: string, timeoutMs = 1000): Promise<{ memberId: string; leader: string } | null> {
    const m = this.member(name);
    const body = await post(m.host, m.clientPort, '/v3/maintenance/status', '{}', timeoutMs);
    if (body === null) return null;
    try {
      const o = JSON.parse(body) as { header?: { member_id?: string }; leader?: string };
      if (!o.header?.member_id || !o.leader) return null;
      return { memberId: o.header.member_id, leader: o.leader };
    } catch {
      return null;
    }
  }

  /** The name of the member that is raft leader now, as a running member reports it. */
  async leader(): Promise<string | null> {
    const statuses = await Promise.all(this.members.map(async (m) => (m.child ? { m, s: await this.memberStatus(m.name) } : null)));
    for (const x of statuses) if (x?.s && x.s.leader === x.s.memberId) return x.m.name;
    return null;
  }

  /** Until every running member says it is healthy (has a leader and answers a read). */
  async waitHealthy(timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const running = this.members.filter((m) => m.child !== null);
      const ok = await Promise.all(running.map(async (m) => /"health":\s*"true"/.test((await get(m.host, m.clientPort, '/health', 1000)) ?? '')));
      if (ok.every(Boolean)) return;
      if (Date.now() > end) throw new Error(`etcd did not become healthy within ${timeoutMs} ms; logs in ${this.dir}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** SIGKILL every member. Synchronous, for the exit hook. */
  killAllSync(): void {
    for (const m of this.members) {
      if (m.child?.pid !== undefined && m.child.exitCode === null && m.child.signalCode === null) {
        try {
          process.kill(m.child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => this.kill9(m.name)));
    live.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function request(host: string, port: number, method: string, path: string, body: string | null, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    const req = http.request({ host, port, method, path, timeout: timeoutMs, headers: body === null ? {} : { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      res.on('error', () => resolve(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
    req.end(body ?? undefined);
  });
}

const get = (host: string, port: number, path: string, timeoutMs: number) => request(host, port, 'GET', path, null, timeoutMs);
const post = (host: string, port: number, path: string, body: string, timeoutMs: number) => request(host, port, 'POST', path, body, timeoutMs);
