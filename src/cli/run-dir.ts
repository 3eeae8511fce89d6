// The run directory of a local cluster (`lockstep cluster`, `lockstep run`): its lock, and what
// to do with the arbiter a previous run left there.
//
// Two supervisors in one directory once destroyed a live cluster: the second cleared the
// arbiter and rewrote the config and the secret under the first one's nodes. So a supervisor
// holds DIR/supervisor.lock (its pid, created exclusively) for as long as it runs; a second
// one is refused naming the holder. A lock whose pid is gone is stale and taken over.
//
// And views are never deleted: an arbiter left by an earlier run is moved aside to
// DIR/arbiter.old-<time> (on etcd: PREFIX/CLUSTER/view.old-<time>), and only when no node of
// the cluster that wrote it still answers.

import { existsSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { LockstepError } from '../errors.js';
import { takePidLock } from '../pid.js';
import { fetchStatus } from './admin-client.js';
import { loadConfig } from '../node/config.js';
import { etcdViewKey, formatEndpoint, parseArbiterSpec } from '../arbiter/spec.js';

const LOCK = 'supervisor.lock';

/**
 * Take DIR's supervisor lock or throw E_DIR_LOCKED naming the live holder. Returns the release
 * function (idempotent; call it on every way out).
 */
export function lockRunDir(dir: string): () => void {
  return takePidLock(
    join(dir, LOCK),
    (holder) => new LockstepError('E_DIR_LOCKED', `${dir} is in use by another lockstep supervisor (pid ${holder}); stop it first, or use --dir for a second cluster`),
    (reason) => new LockstepError('E_DIR_LOCKED', reason),
  );
}

/**
 * Refuse to start over a run whose nodes still answer on their admin ports (DIR/cluster.json
 * names them): a cluster started some other way may still be using the views.
 */
export async function assertPreviousRunGone(dir: string): Promise<void> {
  const configPath = join(dir, 'cluster.json');
  if (!existsSync(configPath)) return;
  let config: Awaited<ReturnType<typeof loadConfig>> | null = null;
  try {
    config = await loadConfig(configPath);
  } catch {
    return; // an old config we cannot read names no node we could ask
  }
  for (const n of config.nodes) {
    const s = await fetchStatus(n.admin, 500);
    if (s !== null) {
      throw new LockstepError(
        'E_DIR_LOCKED',
        `node ${n.id} of the cluster in ${dir} still answers (pid ${s.pid}, ${s.role}); it uses that cluster's views. Stop it first, or use --dir for a second cluster`,
      );
    }
  }
}

/** A name for views kept aside, sortable by time. */
function oldName(): string {
  return `old-${new Date().toISOString().replace(/[:.]/g, '-')}`;
}

/**
 * A new run starts on an empty arbiter. Views an earlier run left in DIR/arbiter are kept
 * (moved to DIR/arbiter.old-<time>); call assertPreviousRunGone first. Returns the directory
 * the old views went to, or null if there were none.
 */
export function retireOldArbiter(dir: string): string | null {
  const arbiter = join(dir, 'arbiter');
  if (!existsSync(arbiter)) return null;
  const views = readdirSync(arbiter).filter((n) => /^view-\d+$/.test(n));
  if (views.length === 0) {
    rmSync(arbiter, { recursive: true, force: true }); // holds no view: nothing to keep
    return null;
  }
  const to = `${arbiter}.${oldName()}`;
  renameSync(arbiter, to);
  return to;
}

/**
 * The same for a demo cluster on etcd: the view at PREFIX/CLUSTER/view moves, in one
 * transaction, to PREFIX/CLUSTER/view.old-<time>. Returns that key, or null if there was no view.
 */
export async function retireEtcdView(spec: string, cluster: string): Promise<string | null> {
  const parsed = parseArbiterSpec(spec);
  if (parsed.kind !== 'etcd') return null;
  const { Etcd3 } = await import('etcd3');
  const client = new Etcd3({ hosts: parsed.endpoints.map((e) => `http://${formatEndpoint(e)}`), dialTimeout: 2000 });
  const key = etcdViewKey(parsed.prefix, cluster);
  const to = `${key}.${oldName()}`;
  try {
    const value = await client.get(key).options({ deadline: Date.now() + 3000 }).buffer();
    if (value === null) return null;
    const moved = await client
      .if(key, 'Value', '==', value)
      .then(client.put(to).value(value), client.delete().key(key))
      .options({ deadline: Date.now() + 3000 })
      .commit();
    if (!moved.succeeded) throw new Error(`the view at ${key} changed while it was being kept aside: is a cluster running on it?`);
    return to;
  } catch (e) {
    throw new LockstepError('E_ARBITER_UNAVAILABLE', `--arbiter ${spec}: cannot keep the previous run's view aside to start a new cluster: ${(e as Error).message}`);
  } finally {
    client.close();
  }
}
