// `lockstep sim`: runs the deterministic simulator over many seeds and reports each failing
// seed with the check that failed and the tail of its trace. The same seed always gives the
// same trace hash, so a reported seed is a reproducible bug report: `lockstep sim --seed S`.

import { writeFileSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import { LockstepError } from '../errors.js';
import type { PlantedBugs } from '../core/index.js';
import type { ReplicationMode } from '../guest/index.js';
import { simulate, type SimResult } from '../sim/index.js';
import { simServiceOf } from '../guest/sandbox.js';
import type { CheckOutput } from './check.js';
import { argTokens } from './args.js';

export const SIM_USAGE = `usage: lockstep sim [--seeds N] [--seed S] [--mode rsm|state-transfer] [--backups 1|2] [--service FILE.js] [--poison] [--durable-restarts] [--bug NAME] [--tail LINES] [--history FILE]

Runs the deterministic simulator: a 3- or 4-replica kv cluster, its arbiter and 5 clients, under
faults drawn per seed (crashes, kills, pauses, stalls, slow snapshots, partitions, broken
connections, a slow or unreachable arbiter; on about half the seeds, planned switchovers asked
of the primary now and then), then heals it and checks linearizability, lost or
doubled writes, releases by a node that was not the primary, replica divergence, liveness,
and that the primary gets a backup again.

  --seeds N     run seeds S .. S+N-1 (default 100)
  --seed S      the first seed (default 1); with no --seeds, runs that one seed and prints its trace hash
  --mode M      replication mode for every seed (default: drawn per seed)
  --backups N   backups the primary keeps, 1 or 2, for every seed (default: drawn per seed);
                with 2 the cluster has 4 nodes, two may be killed, and sometimes the primary
                and one backup crash at once while the other lags
  --service F   simulate this service module instead of kv (its definition's simulate() draws
                the clients' commands; kv's linearizability and append checks do not apply)
  --poison      client c0 sometimes sends a command that breaks the machine it runs on (it
                changes the state, then throws): each primary it reaches must quarantine it
                and stop, and the next refuse it (E_SERVICE_QUARANTINED), not stop in turn
  --durable-restarts
                the nodes are durable and keep a backlog (2 or 64 KiB, drawn per seed): a
                crashed or halted node often comes back with its disk, every entry it had
                received, and the primary must resume it only from a prefix of its own log;
                one the arbiter's view names comes back recovered and may go live from its
                disk, so crashes may take every live copy (sometimes every node at once)
  --bug NAME    plant a known bug: noOutputRule, liveWithoutArbiter, staleReads, earlyBackup,
                noRecruitFence, haltOnRumour, ackDroppedChunk, switchEarly, noQuarantine (with --poison),
                releaseOnOneAck, noBaseCheck (with --backups 2), resumeAnyLog (with --durable-restarts)
  --tail LINES  trace lines to print for a failing seed (default 40)
  --history F   write the client history as JSON lines (for lockstep check) to file F: the
                single seed's, or each failing seed's to F with .seed-N before its extension

exit status: 0 every seed passed, 1 some seed failed, 2 bad usage
`;

const BUGS: readonly (keyof PlantedBugs)[] = ['noOutputRule', 'liveWithoutArbiter', 'staleReads', 'earlyBackup', 'noRecruitFence', 'haltOnRumour', 'ackDroppedChunk', 'switchEarly', 'noQuarantine', 'releaseOnOneAck', 'noBaseCheck', 'resumeAnyLog'];

interface SimArgs {
  readonly first: number;
  readonly count: number;
  readonly single: boolean;
  readonly mode: ReplicationMode | undefined;
  /** SimOptions.backups, or undefined: drawn per seed. */
  readonly backups: number | undefined;
  readonly bugs: PlantedBugs | undefined;
  readonly tail: number;
  /** Where to write histories, or null. */
  readonly history: string | null;
  /** A service module to simulate instead of kv. */
  readonly service: string | null;
  /** SimOptions.poison. */
  readonly poison: boolean;
  /** SimOptions.durableRestarts. */
  readonly durableRestarts: boolean;
}

function intFlag(name: string, v: string | undefined, min: number): number {
  if (v === undefined) throw new LockstepError('E_USAGE', `${name} needs a value`);
  if (!/^-?[0-9]+$/.test(v) || Number(v) < min || !Number.isSafeInteger(Number(v))) {
    throw new LockstepError('E_BAD_FLAG_VALUE', `${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  }
  return Number(v);
}

function parseSimArgs(argv: readonly string[]): SimArgs | 'help' {
  let first = 1;
  let count: number | undefined;
  let seedGiven = false;
  let mode: ReplicationMode | undefined;
  let backups: number | undefined;
  let bugs: PlantedBugs | undefined;
  let tail = 40;
  let history: string | null = null;
  let service: string | null = null;
  let poison = false;
  let durableRestarts = false;
  for (const t of argTokens(argv, ['--seeds', '--seed', '--mode', '--backups', '--bug', '--tail', '--history', '--service'], ['--poison', '--durable-restarts'])) {
    const a = t.kind === 'flag' ? t.flag : '';
    const v = t.kind === 'flag' ? t.value : undefined;
    switch (a) {
      case '--help':
        return 'help';
      case '--seeds':
        count = intFlag(a, v, 1);
        break;
      case '--seed':
        first = intFlag(a, v, 0);
        seedGiven = true;
        break;
      case '--mode': {
        if (v !== 'rsm' && v !== 'state-transfer') throw new LockstepError('E_BAD_FLAG_VALUE', `--mode must be rsm or state-transfer, got ${JSON.stringify(v ?? '')}`);
        mode = v;
        break;
      }
      case '--backups': {
        if (v !== '1' && v !== '2') throw new LockstepError('E_BAD_FLAG_VALUE', `--backups must be 1 or 2, got ${JSON.stringify(v ?? '')}`);
        backups = Number(v);
        break;
      }
      case '--bug': {
        if (!BUGS.includes(v as keyof PlantedBugs)) throw new LockstepError('E_BAD_FLAG_VALUE', `--bug must be one of ${BUGS.join(', ')}, got ${JSON.stringify(v ?? '')}`);
        bugs = { [v as keyof PlantedBugs]: true };
        break;
      }
      case '--tail':
        tail = intFlag(a, v, 0);
        break;
      case '--history': {
        if (v === undefined || v.startsWith('--')) throw new LockstepError('E_USAGE', '--history needs a file to write the history to (see lockstep sim --help)');
        history = v;
        break;
      }
      case '--poison':
        if (v !== undefined) throw new LockstepError('E_BAD_FLAG_VALUE', '--poison takes no value');
        poison = true;
        break;
      case '--durable-restarts':
        if (v !== undefined) throw new LockstepError('E_BAD_FLAG_VALUE', '--durable-restarts takes no value');
        durableRestarts = true;
        break;
      case '--service': {
        if (v === undefined || !/\.m?js$/.test(v)) throw new LockstepError('E_BAD_FLAG_VALUE', `--service takes a service module, a .js or .mjs file, got ${JSON.stringify(v ?? '')}`);
        service = v;
        break;
      }
      default:
        throw new LockstepError('E_USAGE', `unknown argument ${JSON.stringify(t.kind === 'positional' ? t.value : t.typed)} (see lockstep sim --help)`);
    }
  }
  const single = seedGiven && count === undefined;
  return { first, count: count ?? (single ? 1 : 100), single, mode, backups, bugs, tail, history, service, poison, durableRestarts };
}

/** h.jsonl -> h.seed-17.jsonl */
function seedFile(path: string, seed: number): string {
  const ext = extname(path);
  return `${path.slice(0, path.length - ext.length)}.seed-${seed}${ext}`;
}

/** Write a run's client history as JSON lines; returns the path. */
function writeHistory(path: string, r: SimResult): string {
  try {
    writeFileSync(path, r.history.map((e) => JSON.stringify(e) + '\n').join(''));
  } catch (e) {
    throw new LockstepError('E_FILE_WRITE', `cannot write the history to ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return path;
}

function report(r: SimResult, args: SimArgs, out: CheckOutput): void {
  const { tail, history } = args;
  const lines = [`seed ${r.seed} FAILED (mode ${r.mode}, backups ${r.backups}, faults ${r.faults.join(',')}, trace ${r.traceHash})`];
  const seen = new Set<string>();
  for (const f of r.failures) {
    if (seen.has(f.check + f.message)) continue;
    seen.add(f.check + f.message);
    lines.push(`  check ${f.check}: ${f.message}`);
  }
  if (tail > 0) {
    lines.push(`  last ${Math.min(tail, r.traceTail.length)} trace lines:`);
    for (const t of r.traceTail.slice(-tail)) lines.push(`    ${t}`);
  }
  const flags = `${args.service ? ` --service ${args.service}` : ''}${args.mode ? ` --mode ${args.mode}` : ''}${args.backups !== undefined ? ` --backups ${args.backups}` : ''}${args.durableRestarts ? ' --durable-restarts' : ''}${args.bugs ? ` --bug ${Object.keys(args.bugs)[0]}` : ''}`;
  lines.push(`  reproduce: lockstep sim --seed ${r.seed}${flags}`);
  if (history !== null) lines.push(`  history: ${writeHistory(args.single ? history : seedFile(history, r.seed), r)}`);
  out.stdout(lines.join('\n') + '\n');
}

export async function simCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  const args = parseSimArgs(argv);
  if (args === 'help') {
    out.stdout(SIM_USAGE);
    return 0;
  }
  const service = args.service === null ? undefined : simServiceOf(resolve(args.service));
  const started = performance.now();
  let failed = 0;
  let ops = 0;
  let goLives = 0;
  let switchovers = 0;
  let unknownKeys = 0;
  for (let seed = args.first; seed < args.first + args.count; seed++) {
    const r = simulate({ seed, mode: args.mode, ...(args.backups !== undefined ? { backups: args.backups } : {}), bugs: args.bugs, traceTailLines: Math.max(args.tail, 1), poison: args.poison, durableRestarts: args.durableRestarts, ...(service ? { service } : {}) });
    ops += r.stats.opsCompleted;
    goLives += r.stats.goLives;
    switchovers += r.stats.switchoversDone;
    if (!r.ok) {
      failed++;
      report(r, args, out);
    } else if (args.single) {
      out.stdout(`seed ${seed} ok (mode ${r.mode}, backups ${r.backups}, faults ${r.faults.join(',')}, trace ${r.traceHash}, ${r.stats.opsCompleted} ops, ${r.stats.goLives} go-lives, ${r.stats.switchoversDone} switchovers, ${r.stats.views} views)\n`);
      if (args.history !== null) out.stdout(`history: ${writeHistory(args.history, r)}\n`);
    }
    unknownKeys += r.stats.linearizabilityUnknownKeys;
    // Yield now and then so a long run can be interrupted.
    if (seed % 50 === 0) await new Promise((res) => setImmediate(res));
  }
  const secs = (performance.now() - started) / 1000;
  out.stdout(`${args.count - failed} passed, ${failed} failed (seeds ${args.first}..${args.first + args.count - 1}, ${ops} client ops, ${goLives} go-lives, ${switchovers} switchovers, ${secs.toFixed(1)} s${unknownKeys > 0 ? `, ${unknownKeys} keys whose linearizability search gave up` : ''})\n`);
  return failed === 0 ? 0 : 1;
}
