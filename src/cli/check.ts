// `lockstep check FILE`: the CLI adapter around the linearizability checker. Reads a JSON-lines
// history, pairs and checks it, and prints one verdict. Exit codes: 0 linearizable, 1 not
// linearizable, 2 bad input or usage (error E_xxx on stderr), 3 unknown (the search hit its
// state budget). Output goes through the `out` callbacks, one call per message, each ending in
// a newline, so the command is testable without a process.

import { readFile } from 'node:fs/promises';
import { LockstepError, isLockstepError } from '../errors.js';
import { pairOperations, parseHistoryLines, type Operation } from '../sim/history.js';
import { checkOperations, DEFAULT_MAX_STATES_PER_KEY } from '../sim/linearizability.js';
import { argTokens } from './args.js';

export interface CheckOutput {
  readonly stdout: (s: string) => void;
  readonly stderr: (s: string) => void;
}

export const CHECK_USAGE = `usage: lockstep check [--max-states N] FILE

Checks that the key/value history in FILE is linearizable. FILE holds one JSON event a line:
  {"process": 1, "type": "invoke", "f": "append", "key": "k", "value": "x", "time": 10}
type is invoke|ok|fail|info, f is get|set|append|del; a get's ok carries the value read (null
if missing); set/append invokes carry the value written. Times must not go back. A fail did
not happen; an info (or an invoke never completed) may have happened, at any time after it.

  --max-states N  give up on a key after N search states (default ${DEFAULT_MAX_STATES_PER_KEY})

exit status: 0 linearizable, 1 not linearizable, 2 bad usage or input, 3 unknown (search gave up)
`;

export function formatOperation(op: Operation): string {
  const what = op.f === 'get' ? ` -> ${JSON.stringify(op.output)}` : op.f === 'del' ? '' : ` ${JSON.stringify(op.input)}`;
  const ret = op.ret === Infinity ? '?' : String(op.ret);
  return `process ${op.process}: ${op.f}${what} [${op.call}, ${ret}]${op.outcome === 'info' ? ' (info: may not have happened)' : ''}`;
}

function parseArgs(argv: readonly string[]): { help: true } | { help: false; file: string; maxStates: number } {
  let file: string | undefined;
  let maxStates = DEFAULT_MAX_STATES_PER_KEY;
  for (const t of argTokens(argv, ['--max-states'])) {
    if (t.kind === 'flag' && t.flag === '--help') return { help: true };
    if (t.kind === 'flag' && t.flag === '--max-states') {
      const v = t.value;
      if (v === undefined) throw new LockstepError('E_USAGE', '--max-states needs a value');
      if (!/^[1-9][0-9]*$/.test(v)) throw new LockstepError('E_BAD_FLAG_VALUE', `--max-states must be a positive integer, got ${JSON.stringify(v)}`);
      maxStates = Number(v);
    } else if (t.kind !== 'positional') {
      throw new LockstepError('E_USAGE', `unknown flag ${t.typed} (see lockstep check --help)`);
    } else if (file !== undefined) {
      throw new LockstepError('E_USAGE', `unexpected argument ${JSON.stringify(t.value)}: check takes one FILE`);
    } else file = t.value;
  }
  if (file === undefined) throw new LockstepError('E_USAGE', 'missing FILE (usage: lockstep check [--max-states N] FILE)');
  return { help: false, file, maxStates };
}

export async function checkCommand(argv: readonly string[], out: CheckOutput): Promise<number> {
  try {
    const args = parseArgs(argv);
    if (args.help) {
      out.stdout(CHECK_USAGE);
      return 0;
    }
    let text: string;
    try {
      text = await readFile(args.file, 'utf8');
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      throw new LockstepError('E_FILE_READ', `cannot read ${args.file}: ${why}`);
    }
    const ops = pairOperations(parseHistoryLines(text));
    const result = checkOperations(ops, { maxStatesPerKey: args.maxStates });
    const f = result.failure;
    if (f) {
      const lines = [
        `not linearizable: key ${JSON.stringify(f.key)}`,
        `value after the linearized prefix: ${JSON.stringify(f.state ?? null)}`,
        'cannot place any of these next:',
        ...(f.unplaced ?? []).map((op) => `  ${formatOperation(op)}`),
      ];
      if (f.blockingReads?.length) lines.push('later reads that rule them out:', ...f.blockingReads.map((op) => `  ${formatOperation(op)}`));
      lines.push(`linearized prefix: ${f.prefix?.length ?? 0} operations`);
      out.stdout(lines.join('\n') + '\n');
      return 1;
    }
    const stuck = result.keys.find((k) => k.timedOut);
    if (stuck) {
      out.stdout(`unknown: search exceeded ${args.maxStates} states on key ${JSON.stringify(stuck.key)}\n`);
      return 3;
    }
    out.stdout(`linearizable: ${ops.length} operations on ${result.keys.length} keys\n`);
    return 0;
  } catch (e) {
    if (!isLockstepError(e)) throw e;
    out.stderr(`error ${e.code}: ${e.message}\n`);
    return 2;
  }
}
