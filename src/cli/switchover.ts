// `lockstep switchover --config FILE [--to ID] [--node ID]`: a planned switchover (issue 11
// item 1). Finds the primary by asking every node's admin port for /status (or asks --node),
// then POSTs /api/switchover to it: the primary parks new commands, its backup catches up, the
// roles swap through one test-and-set, and the parked commands are answered NOTPRIMARY naming
// the new primary (lockstep/client follows that and resends: its users see no error).

import http from 'node:http';
import { formatView } from '../core/index.js';
import { LockstepError } from '../errors.js';
import { formatAddress, loadConfig, type NodeAddress } from '../node/config.js';
import { SWITCHOVER_HEADER } from '../node/admin.js';
import type { SwitchoverReport } from '../node/replica-node.js';
import { parseFlags, required } from './args.js';
import { fetchStatus } from './admin-client.js';
import type { CheckOutput } from './check.js';

export const SWITCHOVER_USAGE = `usage: lockstep switchover --config FILE [--to ID] [--node ID] [--json]

Hands the primary role to the backup, with no lost or doubled command: the primary stops
taking new commands (they wait), the backup catches up to the last index, the roles swap
through one test-and-set on the arbiter (the old primary becomes the backup: it holds the same
state), and the waiting commands are answered NOTPRIMARY naming the new primary
(lockstep/client follows it and resends, so its users see no error).

  --to ID    the node that must take over; refused unless it is the backup (default: the backup)
  --node ID  ask this node instead of finding the primary (refused unless it is the primary)
  --json     print the node's answer as JSON

exit status: 0 the roles swapped, 1 refused or aborted (error E_SWITCHOVER_...: why), 2 bad
usage or config, or no node answers as primary.
`;

export async function switchoverCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const flags = parseFlags('switchover', argv, { values: ['--config', '--to', '--node'], switches: ['--json'] });
  if (flags.help) {
    out.stdout(SWITCHOVER_USAGE);
    return 0;
  }
  const config = await loadConfig(required(flags, 'switchover', '--config'));
  const ask = flags.values.get('--node');
  const to = flags.values.get('--to') ?? null;
  for (const id of [ask, to]) {
    if (id !== undefined && id !== null && !config.nodes.some((n) => n.id === id)) {
      throw new LockstepError('E_UNKNOWN_NODE', `no node ${JSON.stringify(id)} in ${config.cluster} (nodes: ${config.nodes.map((n) => n.id).join(', ')})`);
    }
  }
  let node = ask === undefined ? undefined : config.nodes.find((n) => n.id === ask);
  if (node === undefined) {
    const statuses = await Promise.all(config.nodes.map((n) => fetchStatus(n.admin)));
    let best = -1;
    config.nodes.forEach((n, i) => {
      const s = statuses[i];
      if (s?.role === 'primary' && (best < 0 || s.epoch > statuses[best]!.epoch)) best = i;
    });
    if (best < 0) {
      const seen = config.nodes.map((n, i) => `${n.id}: ${statuses[i]?.role ?? 'down'}`).join(', ');
      throw new LockstepError('E_SWITCHOVER_NOT_PRIMARY', `no node of ${config.cluster} answers as primary on its admin port (${seen}); nothing to hand over`);
    }
    node = config.nodes[best]!;
  }
  const r = await postSwitchover(node.admin, to);
  if (flags.switches.has('--json')) out.stdout(JSON.stringify({ node: node.id, ...r }, null, 2) + '\n');
  if (r.ok) {
    if (!flags.switches.has('--json')) {
      const live = r.newPrimaryLive ? `; ${r.view.primary} live after ${r.liveMs} ms` : `; ${r.view.primary} not yet heard from as primary after ${r.liveMs} ms (it goes live once it confirms the view with the arbiter)`;
      out.stdout(`switchover done: ${node.id} -> ${r.view.primary}, now ${formatView(r.view)}: roles swapped ${r.ms} ms after the request${live}\n`);
    }
    return 0;
  }
  out.stderr(`error ${r.code ?? 'E_SWITCHOVER_ABORTED'}: ${node.id} (admin ${formatAddress(node.admin)}): ${r.message}\n`);
  return 1;
}

/** POST /api/switchover to a node's admin port; its JSON answer. */
export function postSwitchover(addr: NodeAddress, to: string | null, timeoutMs = 20_000): Promise<SwitchoverReport> {
  const host = addr.host === '0.0.0.0' ? '127.0.0.1' : addr.host === '::' ? '::1' : addr.host;
  const path = `/api/switchover${to === null ? '' : `?to=${encodeURIComponent(to)}`}`;
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port: addr.port, path, method: 'POST', timeout: timeoutMs, agent: false, headers: { [SWITCHOVER_HEADER]: '1' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        try {
          resolve(JSON.parse(text) as SwitchoverReport);
        } catch {
          reject(new LockstepError('E_SWITCHOVER_ABORTED', `the admin port at ${formatAddress(addr)} answered HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
        }
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on('error', (e) => reject(new LockstepError('E_SWITCHOVER_ABORTED', `cannot reach the admin port at ${formatAddress(addr)}: ${e.message} (the switchover may or may not have begun: see lockstep status)`)));
    req.end();
  });
}
