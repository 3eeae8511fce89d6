// The arbiter factory: a spec and the cluster's options in, an Arbiter out. It is the one file
// that knows every implementation (types.ts stays at the bottom; memory.ts, file.ts and
// etcd.ts import only types). Every arbiter is scoped to one cluster through `opts.cluster`.

import { resolve } from 'node:path';
import { LockstepError } from '../errors.js';
import { EtcdArbiter } from './etcd.js';
import { FileArbiter } from './file.js';
import { MemoryArbiter } from './memory.js';
import { parseArbiterSpec } from './spec.js';
import type { Arbiter, ArbiterOptions } from './types.js';

export { parseArbiterSpec } from './spec.js';

/**
 * Opens an arbiter. 'file:DIR' resolves a relative DIR against opts.baseDir (default: cwd);
 * 'memory:' is a fresh in-process arbiter; 'etcd://...' a client of that etcd cluster (it
 * connects on first use, so opening never blocks or fails on an unreachable etcd).
 */
export function openArbiter(spec: string, opts: ArbiterOptions): Arbiter {
  const parsed = parseArbiterSpec(spec);
  if (parsed.kind !== 'etcd' && opts.etcd !== undefined) {
    throw new LockstepError('E_CONFIG_INVALID', `etcd client options are set but the arbiter is '${spec}', not etcd://...`);
  }
  switch (parsed.kind) {
    case 'file':
      return new FileArbiter(resolve(opts.baseDir ?? process.cwd(), parsed.dir), opts.cluster);
    case 'memory':
      return new MemoryArbiter(opts.cluster);
    case 'etcd':
      return new EtcdArbiter(parsed.endpoints, parsed.prefix, opts.cluster, { timeoutMs: opts.timeoutMs, ...opts.etcd });
  }
}
