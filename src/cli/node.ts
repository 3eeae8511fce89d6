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

The arbiter must have been created first (lockstep init --config FILE, once per cluster): a
node waits while its arbiter does not answer, but refuses to start (exit 2) on one that was
never initialized, and on finding a peer whose arbiter is another one (two arbiters: split
brain risk; check the arbiter path in every node's config).
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
    // Supervised (lockstep cluster): the supervisor asks a node to stop by closing the IPC
    // channel, and a supervisor that dies closes it too.
    if (process.send) process.once('disconnect', stop);
    // The supervisor may have asked already, while this node was still starting.
    if (process.send !== undefined && !process.connected) stop();
  });
  await node.stop();
  // Started by `lockstep cluster`: the IPC channel to the supervisor is a handle that would keep
  // this process alive after every socket closed (and the supervisor would SIGKILL it).
  if (process.connected) process.disconnect();
  return 0;
}
