// `lockstep status --config FILE`: the arbiter's view and every node's state, read from each
// node's admin port. A node that does not answer is shown as down.

import { openArbiter } from '../arbiter/open.js';
import { formatView } from '../core/index.js';
import { arbiterFor, formatAddress, loadConfig } from '../node/config.js';
import { parseFlags, required } from './args.js';
import { fetchStatus, formatStatusLine } from './admin-client.js';
import type { CheckOutput } from './check.js';

export const STATUS_USAGE = `usage: lockstep status --config FILE [--json]

Prints which arbiter the cluster uses and the view it holds and, for every node in FILE, what its admin port's
/status says: role, epoch, log index, backup lag, ops/s. --json prints the raw statuses.
`;

export async function statusCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const flags = parseFlags('status', argv, { values: ['--config'], switches: ['--json'] });
  if (flags.help) {
    out.stdout(STATUS_USAGE);
    return 0;
  }
  const config = await loadConfig(required(flags, 'status', '--config'));
  const statuses = await Promise.all(config.nodes.map((n) => fetchStatus(n.admin)));
  let view: string;
  const { spec, options } = arbiterFor(config, null);
  const arbiter = openArbiter(spec, options);
  try {
    view = formatView(await arbiter.current());
  } catch (e) {
    view = `unavailable (${(e as Error).message})`;
  } finally {
    await arbiter.close();
  }
  if (flags.switches.has('--json')) {
    out.stdout(JSON.stringify({ cluster: config.cluster, arbiter: arbiter.description, arbiterView: view, nodes: statuses }, null, 2) + '\n');
    return 0;
  }
  const lines = [`cluster ${config.cluster}: arbiter ${arbiter.description}`, `arbiter view ${view}`];
  config.nodes.forEach((n, i) => lines.push(formatStatusLine(n.id, n.client === null ? '-' : formatAddress(n.client), statuses[i] ?? null)));
  out.stdout(lines.join('\n') + '\n');
  return 0;
}
