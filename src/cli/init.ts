// `lockstep init --config FILE`: create the cluster's arbiter, once. The arbiter gets an
// identity (a random id, the cluster's name, the time): on the file arbiter the directory and
// its arbiter.json, on etcd the key PREFIX/CLUSTER/id, each created only if absent. Nodes refuse
// to start on an arbiter without one, and refuse a peer whose arbiter has another id (two
// arbiters mean two primaries: split brain). Run again on the same cluster's arbiter it changes
// nothing and says so; on another cluster's it is E_ARBITER_CLUSTER. `lockstep cluster`,
// `lockstep run` and the test clusters call initClusterArbiter, the same code.

import { openArbiter } from '../arbiter/open.js';
import type { InitResult } from '../arbiter/types.js';
import { arbiterFor, loadConfig, type ClusterConfig } from '../node/config.js';
import { parseFlags, required } from './args.js';
import type { CheckOutput } from './check.js';

export const INIT_USAGE = `usage: lockstep init --config FILE

Creates the arbiter of the cluster described in FILE, once, before any node starts: for
"arbiter": "file:DIR" the directory DIR (relative to FILE's directory) with its identity file
DIR/arbiter.json; for etcd://... the key PREFIX/CLUSTER/id. Nodes refuse to start on an
arbiter that was not initialized, and refuse peers whose arbiter is another one.

Run it on one machine, once per cluster. On an arbiter that already has this cluster's
identity it changes nothing and exits 0; on another cluster's it exits 2.
`;

export interface InitOutcome extends InitResult {
  /** Which arbiter: 'file:/abs/dir', 'etcd://...'. */
  readonly description: string;
}

/** Create (or find) the identity of `config`'s arbiter: the one place a cluster's arbiter is made. */
export async function initClusterArbiter(config: ClusterConfig): Promise<InitOutcome> {
  const { spec, options } = arbiterFor(config, null);
  const arbiter = openArbiter(spec, options);
  try {
    return { description: arbiter.description, ...(await arbiter.init()) };
  } finally {
    await arbiter.close();
  }
}

export async function initCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const flags = parseFlags('init', argv, { values: ['--config'] });
  if (flags.help) {
    out.stdout(INIT_USAGE);
    return 0;
  }
  const config = await loadConfig(required(flags, 'init', '--config'));
  const r = await initClusterArbiter(config);
  const who = `id ${r.identity.id}, cluster ${r.identity.cluster}, created ${r.identity.createdAt}`;
  if (r.created) out.stdout(`initialized arbiter ${r.description} (${who})\n`);
  else out.stdout(`arbiter ${r.description} is already initialized for this cluster (${who}); nothing changed\n`);
  return 0;
}
