// Reading a node's admin port: GET /status as JSON, with a timeout. A node that does not
// answer is reported as down, never as an error of the command asking.

import http from 'node:http';
import type { NodeAddress } from '../node/config.js';
import type { PeerVersions } from '../net/peer-transport.js';

export interface NodeStatus {
  readonly id: string;
  readonly role: string;
  readonly epoch: number;
  readonly logIndex: number;
  readonly ackedIndex: number;
  readonly appliedIndex: number;
  /** Primary: what every backup holds; follower: the highest commit index heard (it applies up to it). */
  readonly commitIndex?: number;
  readonly lag: number;
  readonly heldOutputs: number;
  /** kv: ops/s, client count and the state's digest (equal on replicas at the same log index). */
  readonly opsPerSec?: number;
  readonly clients?: number;
  readonly digest?: string;
  /** kv: the state's size as counted for maxmemory, and the duplicate filter's as counted for dedupBytesMax. */
  readonly usedMemoryBytes?: number;
  readonly dedupBytes?: number;
  /** wasm: the guest's state (wasm-front.ts `status`). */
  readonly guest?: GuestStatus;
  readonly rssBytes: number;
  /** The longest event-loop delay since the node started (monitorEventLoopDelay, 10 ms resolution). */
  readonly eventLoopMaxDelayMs?: number;
  /** Which arbiter this node uses, whether its last call was answered, and how fast. */
  readonly arbiter?: { readonly arbiter: string; readonly health: 'unknown' | 'ok' | 'unavailable'; readonly lastLatencyMs: number | null; readonly lastError: string | null };
  /** `backup`: the first of `backups` (null: none), as /status said before views listed several. */
  readonly view: { epoch: number; primary: string | null; backup: string | null; backups?: readonly string[] };
  /** The logging-channel protocol versions this node speaks, and what each peer connection runs (absent before version 7). */
  readonly protocol?: { readonly oldest: number; readonly newest: number; readonly peers: Readonly<Record<string, PeerVersions>> };
  /** Durable mode: the dataDir, the last index on disk, the current snapshot, commit counters (null: in memory; absent: an older node). */
  readonly durable?: DurableStatus | null;
  readonly pid: number;
}

export interface DurableStatus {
  readonly dataDir: string;
  readonly index: number;
  readonly snapshotIndex: number;
  readonly generation: number;
  readonly commits: number;
  readonly bytes: number;
  readonly commitMs: number;
  readonly commitMsMax: number;
  readonly snapshots: number;
}

export interface GuestStatus {
  readonly state: 'none' | 'running' | 'exited' | 'failed';
  readonly mode: 'record' | 'replay' | 'plain' | null;
  readonly exitCode: number | null;
  readonly failure: string | null;
  readonly calls: number;
  readonly backlog: number;
  readonly memoryHash: string | null;
  readonly outputDigest: string | null;
  readonly hostState: string | null;
  /** Log kept for recruits (only without guest snapshots) and made since the guest started. */
  readonly logEntries: number;
  readonly logBytes: number;
  readonly logEntriesTotal: number;
  readonly logBytesTotal: number;
  /** 'snapshot' or 'log': how this replica recruits a new backup. */
  readonly recruitBy: 'snapshot' | 'log';
  /** How this replica's guest was recruited (null: it started the guest). */
  readonly restoredFrom: {
    readonly kind: 'snapshot' | 'log'; readonly bytes: number; readonly calls?: number; readonly entries?: number; readonly ms: number;
    /** A streamed snapshot (issue 9 item 4): its pieces, the longest single piece's restore, and the restore's last step. */
    readonly streamed?: boolean; readonly pieces?: number; readonly maxAddMs?: number; readonly maxAddCpuMs?: number; readonly finishMs?: number;
  } | null;
  /** The last snapshot this replica gave a recruit. */
  readonly lastSnapshot: { readonly kind: string; readonly bytes: number; readonly ms: number; readonly calls: number; readonly logBytesTotal: number } | null;
  readonly heldOutputs: number;
  readonly suspends: number;
}

export function fetchStatus(addr: NodeAddress, timeoutMs = 1000): Promise<NodeStatus | null> {
  return new Promise((resolve) => {
    const req = http.get({ host: addr.host, port: addr.port, path: '/status', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as NodeStatus);
        } catch {
          resolve(null);
        }
      });
      res.on('error', () => resolve(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

export function formatStatusLine(id: string, client: string, s: NodeStatus | null): string {
  if (s === null) return `${id.padEnd(4)} ${'down'.padEnd(8)} ${client}`;
  const view = `view {${s.view.epoch}, ${s.view.primary ?? '-'}, ${(s.view.backups ?? [s.view.backup ?? '-']).join('+') || '-'}}`;
  const arb = s.arbiter ? ` arbiter ${s.arbiter.health}${s.arbiter.health === 'ok' && s.arbiter.lastLatencyMs !== null ? ` ${s.arbiter.lastLatencyMs} ms` : ''}` : '';
  // The protocol it speaks, and which peers it talks an older one with (a rolling upgrade under way).
  const older = s.protocol ? Object.entries(s.protocol.peers).filter(([, v]) => v.outbound !== null && v.outbound < s.protocol!.newest).map(([p, v]) => `${p}@${v.outbound}`) : [];
  const proto = s.protocol ? ` protocol ${s.protocol.newest}${older.length > 0 ? ` (talks ${older.join(' ')})` : ''}` : ' protocol 6 or older';
  return `${id.padEnd(4)} ${s.role.padEnd(8)} epoch ${String(s.epoch).padEnd(4)} log ${String(s.logIndex).padEnd(9)} lag ${String(s.lag).padEnd(6)} ${s.guest ? `guest ${s.guest.state} calls ${String(s.guest.calls).padEnd(8)}` : `ops/s ${String(s.opsPerSec ?? 0).padEnd(7)}`} ${client.padEnd(16)} ${view}${arb}${proto}`;
}
