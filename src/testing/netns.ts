// Several hosts on one machine, for real: each "host" is a Linux network namespace with its
// own address, joined to the others by a veth pair to one bridge in the root namespace (the
// test process, i.e. the client, reaches every host through the bridge's own address). A cut
// is then a cut between machines, not between ports: every connection between two hosts is
// affected, whatever process or port it belongs to.
//
// Faults, all in the kernel:
// - cuts and loss: one nftables table of the `bridge` family in the root namespace, the
//   "switch" (`table bridge lsN_<pid>_<g>`), rebuilt in one transaction at every change.
//   A cut a -> b drops the IP packets from a's address to b's in the switch, so it can be
//   one-way; the sender sees silence, as with a pulled cable (dropping in the sender's own
//   OUTPUT hook would fail its sends with EPERM, which no real cut does). Loss drops a share
//   of the frames entering and leaving a host's port (`numgen random`), both ways.
// - delay: `tc netem` on the host's eth0 when the kernel has it. Where it does not
//   (CONFIG_NET_SCH_NETEM unset, as on the Firecracker VMs this project's CI runs on; no
//   module can be loaded there), every packet the host sends goes to an NFQUEUE (iptables-legacy:
//   the kernel has xt_NFQUEUE but not nft_queue) and nfq-delay.py, running in the host,
//   gives the accept verdict `ms` later. Either way a host's outgoing packets wait `ms`: the
//   one-way delay between two hosts with a delay of d each is d, the round trip 2d.
//
// Names carry the test process's pid (namespaces `lsN-<pid>-<i>`, links `lsN<pid>b<g>` and
// `lsN<pid>v<i>`), so `Hosts.create` removes what a crashed earlier run left behind (its pid
// no longer alive) and never touches anything else. `destroy()` kills every process still in
// the namespaces (by pid: only tests start processes there), then deletes namespaces, veths,
// the bridge and the table; an exit hook does the same if the test process dies first.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { pidAlive as alive } from '../pid.js';

const PREFIX = 'lsN';
const DELAYER = fileURLToPath(new URL('../../../src/testing/nfq-delay.py', import.meta.url));

export interface Host {
  /** 1-based, within its Hosts. */
  readonly index: number;
  /** The network namespace. */
  readonly ns: string;
  /** Its address on the bridge. */
  readonly ip: string;
  /** The root-namespace end of its veth pair (a port of the bridge). */
  readonly port: string;
}

function run(args: readonly string[], input?: string): { ok: boolean; out: string } {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', input, timeout: 20_000 });
  return { ok: !r.error && r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim() };
}

function must(args: readonly string[], input?: string): string {
  const r = run(args, input);
  if (!r.ok) throw new Error(`${args.join(' ')} failed: ${r.out}`);
  return r.out;
}

/** Null when network namespaces can be used here; otherwise the one-line reason tests skip with. */
export function netnsMissing(): string | null {
  if (process.getuid?.() !== 0) return 'not root: network namespaces need root (CI runs as root)';
  for (const tool of [['ip', 'netns', 'list'], ['nft', '--version'], ['iptables-legacy', '--version'], ['python3', '--version']]) {
    const r = run(tool);
    if (!r.ok) return `'${tool.join(' ')}' failed (${r.out.split('\n')[0] || 'not found'}): apt-get install iproute2 nftables iptables python3`;
  }
  return null;
}

/** Kill every process in namespace `ns`, by pid, and wait until they are gone. */
function killAllIn(ns: string): void {
  for (let attempt = 0; attempt < 50; attempt++) {
    const pids = run(['ip', 'netns', 'pids', ns]).out.split(/\s+/).filter((p) => /^\d+$/.test(p)).map(Number);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGCONT');
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    spawnSync('sleep', ['0.05']);
  }
}

/** Remove namespaces, links and switch tables of earlier runs whose process is dead. */
function removeLeftovers(): void {
  const dead = (pid: string): boolean => Number(pid) !== process.pid && !alive(Number(pid));
  for (const line of run(['ip', 'netns', 'list']).out.split('\n')) {
    const m = /^(lsN-(\d+)-\d+)\b/.exec(line);
    if (m && dead(m[2]!)) {
      killAllIn(m[1]!);
      run(['ip', 'netns', 'del', m[1]!]);
    }
  }
  for (const line of run(['ip', '-o', 'link', 'show']).out.split('\n')) {
    const m = /^\d+: (lsN(\d+)[bv]\d+)[@:]/.exec(line);
    if (m && dead(m[2]!)) run(['ip', 'link', 'del', m[1]!]);
  }
  for (const line of run(['nft', 'list', 'tables', 'bridge']).out.split('\n')) {
    const m = /^table bridge (lsN_(\d+)_\d+)$/.exec(line.trim());
    if (m && dead(m[2]!)) run(['nft', 'delete', 'table', 'bridge', m[1]!]);
  }
}

let generation = 0;
let hostCounter = 0;
const live = new Set<Hosts>();
process.once('exit', () => {
  for (const h of live) h.destroySync();
});

let netemWorks: boolean | null = null;

export class Hosts {
  readonly hosts: Host[] = [];
  /** The root namespace's address on the bridge: where a client in the test process comes from. */
  readonly bridgeIp: string;
  readonly bridge: string;
  readonly table: string;
  /** How delay is made here: 'netem' or 'nfqueue' (null until the first delay). */
  delayMechanism: 'netem' | 'nfqueue' | null = null;
  private readonly cuts = new Set<string>();
  private readonly lossPercent = new Map<number, number>();
  private readonly delayers = new Map<number, ChildProcess>();
  private readonly delayMs = new Map<number, number>();

  private constructor(count: number) {
    const g = ++generation;
    const net = `10.${64 + (process.pid % 128)}.${((process.pid >> 7) + g) % 256}`;
    this.bridge = `${PREFIX}${process.pid}b${g}`;
    this.table = `${PREFIX}_${process.pid}_${g}`;
    this.bridgeIp = `${net}.254`;
    for (let i = 1; i <= count; i++) {
      const n = ++hostCounter;
      this.hosts.push({ index: i, ns: `${PREFIX}-${process.pid}-${n}`, ip: `${net}.${i}`, port: `${PREFIX}${process.pid}v${n}` });
    }
  }

  /** `count` hosts (1-based indexes), each a namespace with lo up and eth0 at 10.x.y.<i>/24. */
  static create(count: number): Hosts {
    if (count < 1 || count > 250) throw new RangeError(`1..250 hosts, not ${count}`);
    removeLeftovers();
    const h = new Hosts(count);
    live.add(h);
    try {
      must(['ip', 'link', 'add', h.bridge, 'type', 'bridge']);
      must(['ip', 'addr', 'add', `${h.bridgeIp}/24`, 'dev', h.bridge]);
      must(['ip', 'link', 'set', h.bridge, 'up']);
      for (const host of h.hosts) {
        must(['ip', 'netns', 'add', host.ns]);
        must(['ip', 'link', 'add', host.port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', host.ns]);
        must(['ip', 'link', 'set', host.port, 'master', h.bridge]);
        must(['ip', 'link', 'set', host.port, 'up']);
        must(['ip', '-n', host.ns, 'link', 'set', 'lo', 'up']);
        must(['ip', '-n', host.ns, 'addr', 'add', `${host.ip}/24`, 'dev', 'eth0']);
        must(['ip', '-n', host.ns, 'link', 'set', 'eth0', 'up']);
      }
      h.applySwitch();
      return h;
    } catch (e) {
      h.destroySync();
      throw e;
    }
  }

  host(i: number): Host {
    const h = this.hosts[i - 1];
    if (!h) throw new Error(`no host ${i}`);
    return h;
  }

  /** The command prefix that runs a program on host `i`. */
  exec(i: number): string[] {
    return ['ip', 'netns', 'exec', this.host(i).ns];
  }

  /** Drop every packet from each host in `from` to each host in `to` (one way; see `partition`). */
  cut(from: readonly number[], to: readonly number[]): void {
    for (const a of from) for (const b of to) if (a !== b) this.cuts.add(`${this.host(a).ip}>${this.host(b).ip}`);
    this.applySwitch();
  }

  /** Cut both ways between the hosts in `a` and the hosts in `b`. */
  partition(a: readonly number[], b: readonly number[]): void {
    for (const x of a) for (const y of b) if (x !== y) {
      this.cuts.add(`${this.host(x).ip}>${this.host(y).ip}`);
      this.cuts.add(`${this.host(y).ip}>${this.host(x).ip}`);
    }
    this.applySwitch();
  }

  /** Remove every cut and every loss. */
  heal(): void {
    this.cuts.clear();
    this.lossPercent.clear();
    this.applySwitch();
  }

  /** Drop `percent` % of the frames on host `i`'s link, each way (0 removes it). */
  loss(i: number, percent: number): void {
    if (!Number.isInteger(percent) || percent < 0 || percent > 100) throw new RangeError(`loss is a whole percent, not ${percent}`);
    this.host(i);
    if (percent === 0) this.lossPercent.delete(i);
    else this.lossPercent.set(i, percent);
    this.applySwitch();
  }

  /** Delay every packet host `i` sends by `ms` (0 removes it). */
  async delay(i: number, ms: number): Promise<void> {
    if (!Number.isInteger(ms) || ms < 0) throw new RangeError(`delay is whole milliseconds, not ${ms}`);
    const host = this.host(i);
    if (netemWorks === null) {
      const probe = run(['tc', '-n', host.ns, 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms']);
      netemWorks = probe.ok;
      if (probe.ok) must(['tc', '-n', host.ns, 'qdisc', 'del', 'dev', 'lo', 'root']);
    }
    this.delayMechanism = netemWorks ? 'netem' : 'nfqueue';
    if (netemWorks) {
      if (ms === 0) run(['tc', '-n', host.ns, 'qdisc', 'del', 'dev', 'eth0', 'root']);
      else must(['tc', '-n', host.ns, 'qdisc', 'replace', 'dev', 'eth0', 'root', 'netem', 'delay', `${ms}ms`]);
      this.delayMs.set(i, ms);
      return;
    }
    await this.stopDelayer(i);
    if (ms === 0) return;
    const rule = ['OUTPUT', '-o', 'eth0', '-j', 'NFQUEUE', '--queue-num', '0', '--queue-bypass'];
    if (!run([...this.exec(i), 'iptables-legacy', '-w', '-C', ...rule]).ok) must([...this.exec(i), 'iptables-legacy', '-w', '-A', ...rule]);
    const child = spawn('ip', ['netns', 'exec', host.ns, 'python3', DELAYER, '0', String(ms)], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.delayers.set(i, child);
    let said = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the delayer on ${host.ns} did not start: ${said}`)), 10_000);
      const onData = (d: Buffer): void => {
        said += d.toString();
        if (said.includes('ready')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout?.on('data', onData);
      child.stderr?.on('data', (d: Buffer) => (said += d.toString()));
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the delayer on ${host.ns} exited (${code}): ${said}`));
      });
    });
    child.removeAllListeners('exit');
    this.delayMs.set(i, ms);
  }

  private async stopDelayer(i: number): Promise<void> {
    this.delayMs.delete(i);
    const child = this.delayers.get(i);
    this.delayers.delete(i);
    if (!child || child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGKILL');
    await exited;
  }

  /** The switch's rules as nft text (also what `destroy` removes). */
  private switchRules(): string {
    const pre: string[] = [];
    const post: string[] = [];
    for (const c of [...this.cuts].sort()) {
      const [from, to] = c.split('>');
      pre.push(`ip saddr ${from} ip daddr ${to} drop`);
    }
    for (const [i, p] of this.lossPercent) {
      const share = p === 100 ? '' : ` numgen random mod 100 < ${p}`;
      pre.push(`iifname "${this.host(i).port}"${share} drop`);
      post.push(`oifname "${this.host(i).port}"${share} drop`);
    }
    const chain = (name: string, hook: string, rules: string[]): string =>
      `  chain ${name} {\n    type filter hook ${hook} priority 0; policy accept;\n${rules.map((r) => `    ${r}\n`).join('')}  }\n`;
    return `table bridge ${this.table} {\n}\nflush table bridge ${this.table}\ntable bridge ${this.table} {\n${chain('pre', 'prerouting', pre)}${chain('post', 'postrouting', post)}}\n`;
  }

  private applySwitch(): void {
    must(['nft', '-f', '-'], this.switchRules());
  }

  /** Undo everything; safe to call twice and after a partial create. */
  async destroy(): Promise<void> {
    await Promise.all([...this.delayers.keys()].map((i) => this.stopDelayer(i)));
    this.destroySync();
  }

  /** Synchronous teardown, for the exit hook: processes in the hosts, namespaces, links, table. */
  destroySync(): void {
    for (const child of this.delayers.values()) if (child.pid !== undefined && child.exitCode === null) child.kill('SIGKILL');
    this.delayers.clear();
    for (const h of this.hosts) {
      if (!run(['ip', 'netns', 'pids', h.ns]).ok) continue;
      killAllIn(h.ns);
      run(['ip', 'netns', 'del', h.ns]);
    }
    for (const h of this.hosts) run(['ip', 'link', 'del', h.port]);
    run(['ip', 'link', 'del', this.bridge]);
    run(['nft', 'delete', 'table', 'bridge', this.table]);
    live.delete(this);
  }

  /** What is left of these hosts (empty after destroy): for tests of the helper itself. */
  leftovers(): string[] {
    const out: string[] = [];
    const names = run(['ip', 'netns', 'list']).out;
    for (const h of this.hosts) if (names.split('\n').some((l) => l.split(' ')[0] === h.ns)) out.push(`namespace ${h.ns}`);
    const links = run(['ip', '-o', 'link', 'show']).out;
    for (const name of [this.bridge, ...this.hosts.map((h) => h.port)]) if (new RegExp(`: ${name}[@:]`).test(links)) out.push(`link ${name}`);
    if (run(['nft', 'list', 'table', 'bridge', this.table]).ok) out.push(`table ${this.table}`);
    return out;
  }
}
