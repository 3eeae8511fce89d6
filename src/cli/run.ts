// `lockstep run guest.wasm [args...]`: run an unmodified WASI program under fault tolerance on
// a local three-node cluster (a primary, a backup, a spare), as `lockstep cluster` does for
// kv. The guest's stdout and stderr are printed as the primary releases them (the output
// rule: only what the backup holds). A program that exits ends the cluster with its exit code
// once the backup has replayed up to the exit; a server runs until Ctrl-C.

import { existsSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { argTokens, intValue, parseFlags } from './args.js';
import type { CheckOutput } from './check.js';
import { superviseCluster } from './cluster.js';
import { LockstepError } from '../errors.js';

export const RUN_USAGE = `usage: lockstep run [--listen HOST:PORT]... [--dir DIR] [--nodes N] [--base-port P] [--memory-mb M] [--name NAME] [--no-respawn] [--] GUEST.wasm [ARGS...]

Runs an unmodified WebAssembly/WASI (preview1) program under record/replay fault tolerance
on a local cluster of N nodes (default 3). The primary runs the guest and logs every input it
observes; the backup replays the log; kill -9 the primary and the backup goes live with the
same state. Each --listen address is a TCP socket the primary opens for the guest (fds 4, 5,
...; fd 3 is the guest's directory DIR/guests/<node>). Ports and files as for
lockstep cluster (DIR defaults to .lockstep/run, P to 7400; see lockstep cluster --help for
the run directory's lock and for restarts).
`;

const RUN_VALUES = ['--dir', '--nodes', '--base-port', '--memory-mb', '--name'];
const RUN_REPEATED = ['--listen'];
const RUN_SWITCHES = ['--no-respawn'];

export async function runCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const dash = argv.indexOf('--');
  const firstPositional = dash >= 0 ? dash + 1 : findModuleArg(argv);
  const own = firstPositional < 0 ? argv : argv.slice(0, dash >= 0 ? dash : firstPositional);
  const flags = parseFlags('run', own, { values: RUN_VALUES, repeated: RUN_REPEATED, switches: RUN_SWITCHES });
  if (flags.help) {
    out.stdout(RUN_USAGE);
    return 0;
  }
  const guest = firstPositional < 0 ? [] : argv.slice(firstPositional);
  const module = guest[0];
  if (module === undefined) throw new LockstepError('E_USAGE', `lockstep run needs a .wasm file\n${RUN_USAGE}`);
  const path = resolve(module);
  if (!existsSync(path)) throw new LockstepError('E_FILE_READ', `no such guest module: ${path}`);
  const dir = resolve(flags.values.get('--dir') ?? join('.lockstep', 'run'));
  const listen = flags.repeated.get('--listen') ?? [];
  return superviseCluster(
    {
      dir,
      name: flags.values.get('--name') ?? 'wasm',
      count: intValue(flags, '--nodes', 3, 1, 9),
      base: intValue(flags, '--base-port', 7400, 1024, 65_000),
      respawn: !flags.switches.has('--no-respawn'),
      service: { kind: 'wasm', module: path, args: guest.slice(1), listen, memoryLimitMb: intValue(flags, '--memory-mb', 256, 1, 4096) },
      describe: `wasm ${basename(path)}`,
      connect: listen.length > 0 ? `connect: the guest listens on ${listen.join(', ')} (whichever node is primary)` : 'the guest has no listening socket (--listen HOST:PORT to give it one)',
      onLog: (rec) => {
        if (rec.event === 'guest-stdout' && typeof rec.text === 'string') process.stdout.write(rec.text);
        else if (rec.event === 'guest-stderr' && typeof rec.text === 'string') process.stderr.write(rec.text);
        else if (rec.event === 'fail-stop') out.stdout(`\n${String(rec.node)}: fail-stop: ${String(rec.reason)}\n`);
        else if (rec.event === 'guest-instrumenting') out.stdout(`\n${String(rec.node)}: ${String(rec.note)}\n`);
        else if (rec.event === 'guest-waiting-for-backup') out.stdout(`\n${String(rec.node)} is primary; the guest starts once a backup is recruited\n`);
        else if (rec.event === 'guest-go-live') out.stdout(`\n${String(rec.node)} goes live (${String(rec.backlog)} records to finish)\n`);
      },
      until: (statuses) => {
        const primary = statuses.find((s) => s?.role === 'primary') ?? null;
        if (!primary?.guest || primary.guest.state !== 'exited') return null;
        // Done once the backup (if any) has replayed up to the exit too.
        const backup = statuses.find((s) => s?.id === primary.view.backup) ?? null;
        if (backup && backup.guest?.state !== 'exited') return null;
        out.stdout(`\nthe guest exited with code ${primary.guest.exitCode} on ${primary.id}${backup ? ` and on the backup ${backup.id}` : ''}\n`);
        return primary.guest.exitCode ?? 0;
      },
    },
    out,
  );
}

/** The index of the first argument that is not a flag or a flag's value (the module). */
function findModuleArg(argv: readonly string[]): number {
  const first = argTokens(argv, [...RUN_VALUES, ...RUN_REPEATED], RUN_SWITCHES).find((t) => t.kind === 'positional');
  return first?.kind === 'positional' ? first.index : -1;
}
