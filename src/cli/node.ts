// `lockstep node --config FILE --id ID`: run one replica in this process until SIGTERM or
// SIGINT (or, when started by `lockstep cluster`, until the parent goes away). Logs are JSON
// lines on stdout.

import { loadConfig } from '../node/config.js';
import { ReplicaNode } from '../node/replica-node.js';
import { parseFlags, required } from './args.js';
import type { CheckOutput } from './check.js';

export const NODE_USAGE = `usage: lockstep node --config FILE --id ID

Runs replica ID of the cluster described in FILE (JSON; see README). It listens on its peer,
client and admin addresses, takes part in the cluster's test-and-set on the arbiter, and logs
one JSON object a line on stdout. SIGTERM or SIGINT stops it.
`;

export async function nodeCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const flags = parseFlags('node', argv, { values: ['--config', '--id'] });
  if (flags.help) {
    out.stdout(NODE_USAGE);
    return 0;
  }
  const config = await loadConfig(required(flags, 'node', '--config'));
  const node = new ReplicaNode(config, required(flags, 'node', '--id'), (rec) => out.stdout(JSON.stringify(rec) + '\n'));
  try {
    await node.start();
  } catch (e) {
    await node.stop(); // close whatever did open, so the process can exit
    throw e;
  }
  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    if (process.send) process.once('disconnect', stop);
  });
  await node.stop();
  return 0;
}
