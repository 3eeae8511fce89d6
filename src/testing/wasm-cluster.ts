// Test tools for clusters running a WebAssembly guest: start one on the C kvserver example,
// and wait until the backup has replayed everything the primary did.

import { fileURLToPath } from 'node:url';
import { ProcessCluster, freePorts, type ProcessClusterOptions } from './process-cluster.js';
import type { NodeStatus } from '../cli/admin-client.js';

/** A file of the repository's examples/ directory. */
export const examplePath = (p: string): string => fileURLToPath(new URL(`../../../examples/${p}`, import.meta.url));

/** A cluster serving examples/kvserver on a free port; `addr` is where its guest listens. */
export async function kvserverCluster(
  opts: { peerProxies?: boolean; failureTimeoutMs?: number; args?: string[]; memoryLimitMb?: number } & Pick<ProcessClusterOptions, 'nodes'> = {},
): Promise<{ c: ProcessCluster; addr: { host: string; port: number } }> {
  const [port] = await freePorts(1);
  const addr = { host: '127.0.0.1', port: port! };
  const c = await ProcessCluster.start({
    ...(opts.nodes !== undefined ? { nodes: opts.nodes } : {}),
    service: { kind: 'wasm', module: examplePath('kvserver/kvserver.wasm'), args: opts.args ?? [], listen: [`127.0.0.1:${port}`], memoryLimitMb: opts.memoryLimitMb ?? 64 },
    heartbeatMs: 30,
    failureTimeoutMs: opts.failureTimeoutMs ?? 600,
    peerProxies: opts.peerProxies ?? false,
  });
  return { c, addr };
}

/**
 * Wait until the primary and its backup (not `backupNot`) have made the same number of logged
 * calls, the backup has no backlog and the primary no unacked entries; return both statuses.
 */
export async function quiesced(c: ProcessCluster, backupNot?: string): Promise<[NodeStatus, NodeStatus]> {
  let pair: [NodeStatus, NodeStatus] | null = null;
  await c.waitFor(async () => {
    const all = await c.statuses();
    const p = all.find((s) => s?.role === 'primary');
    const b = all.find((s) => s?.role === 'backup');
    if (!p?.guest || !b?.guest || b.id === backupNot) return false;
    if (p.guest.calls !== b.guest.calls || b.guest.backlog !== 0 || p.lag !== 0) return false;
    pair = [p, b];
    return true;
  }, 30_000, 'the backup to replay up to the primary');
  return pair!;
}
