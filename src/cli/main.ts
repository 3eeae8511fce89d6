#!/usr/bin/env node
// The `lockstep` command: a thin dispatcher. Each subcommand lives in its own module and
// returns an exit code; user errors are LockstepErrors printed as `error CODE: message`.

import { isLockstepError } from '../errors.js';
import { checkCommand, type CheckOutput } from './check.js';
import { simCommand } from './sim.js';
import { nodeCommand } from './node.js';
import { clusterCommand } from './cluster.js';
import { statusCommand } from './status.js';
import { runCommand } from './run.js';
import { initCommand } from './init.js';
import { switchoverCommand } from './switchover.js';
import { readFileSync } from 'node:fs';

/** The version in the package.json this command was installed with. */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return typeof pkg.version === 'string' ? pkg.version : 'unknown';
}

const USAGE = `usage: lockstep <command> [options]

exit status: 0 success, 2 a usage, configuration or input error (error E_CODE: ...),
70 an internal error; lockstep check also exits 1 (not linearizable) and 3 (gave up).

commands:
  cluster  start a local replicated kv cluster (the main job; npm start)
  run      run a WebAssembly/WASI program under fault tolerance: lockstep run GUEST.wasm [ARGS]
  init     create the cluster's arbiter, once, before its nodes start: lockstep init --config FILE
  node     run one replica: lockstep node --config FILE --id ID (after lockstep init)
  status   the view and every node's state: lockstep status --config FILE
  switchover  hand the primary role to the backup (planned): lockstep switchover --config FILE
  sim      run the deterministic simulator over many seeds
  check    check that a key/value history is linearizable
  help     print this help
  version  print the version (also --version)

Each command takes --help. Running replicas yourself: write one config file, run
lockstep init --config FILE once, then lockstep node --config FILE --id ID on every node.
`;

// Output piped into a reader that stops early (`lockstep sim ... | head`) is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

const io: CheckOutput = {
  stdout: (s) => void process.stdout.write(s),
  stderr: (s) => void process.stderr.write(s),
};

async function main(argv: readonly string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'sim':
      return simCommand(rest, io);
    case 'check':
      return checkCommand(rest, io);
    case 'init':
      return initCommand(rest, io);
    case 'node':
      return nodeCommand(rest, io);
    case 'cluster':
      return clusterCommand(rest, io);
    case 'status':
      return statusCommand(rest, io);
    case 'switchover':
      return switchoverCommand(rest, io);
    case 'run':
      return runCommand(rest, io);
    case 'version':
    case '--version':
    case '-V':
      io.stdout(`lockstep ${packageVersion()}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      io.stdout(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      io.stderr(`error E_USAGE: unknown command ${JSON.stringify(cmd)}\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    if (isLockstepError(e)) {
      io.stderr(`error ${e.code}: ${e.message}\n`);
      process.exitCode = 2;
    } else {
      // A bug, not the user's input. Not exit code 1: `lockstep check` means "not linearizable" by it.
      io.stderr(`internal error (a bug in lockstep; please report it): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 70;
    }
  },
);
