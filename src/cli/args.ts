// Flag parsing for the CLI subcommands, on node:util.parseArgs: `--name value` and
// `--name=value`, switches, repeated flags, -h/--help. parseArgs (in its lenient mode, with
// tokens) splits argv; what the CLI promises on top of it stays here: every unknown flag, stray
// argument and missing value is a coded error (E_USAGE) naming the argument as it was typed.

import { parseArgs } from 'node:util';
import { LockstepError } from '../errors.js';

export interface FlagSpec {
  readonly values: readonly string[];
  readonly switches?: readonly string[];
  /** Flags that take a value and may be given more than once. */
  readonly repeated?: readonly string[];
}

export interface ParsedFlags {
  readonly values: ReadonlyMap<string, string>;
  readonly switches: ReadonlySet<string>;
  readonly repeated: ReadonlyMap<string, readonly string[]>;
  readonly help: boolean;
}

/** One argument (or flag and its value) of argv, in order, as node:util.parseArgs splits it. */
export type ArgToken =
  /** `flag` is `--name` for a known flag (`-h` is `--help`), else the argument as typed; `value` is undefined when none came. */
  | { readonly kind: 'flag'; readonly flag: string; readonly known: boolean; readonly value: string | undefined; readonly typed: string }
  | { readonly kind: 'positional'; readonly value: string; /** Its index in argv. */ readonly index: number }
  /** `--`: no subcommand gives it a meaning. */
  | { readonly kind: 'terminator'; readonly typed: string };

/**
 * Split argv: each of `valueFlags` takes the next argument (even one starting with `-`, as
 * before) or its `=value`; `switches` take none. Unknown flags come back unknown, not thrown.
 */
export function argTokens(argv: readonly string[], valueFlags: readonly string[], switches: readonly string[] = []): ArgToken[] {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  for (const f of valueFlags) options[f.replace(/^--/, '')] = { type: 'string' };
  for (const f of switches) options[f.replace(/^--/, '')] = { type: 'boolean' };
  const { tokens } = parseArgs({ args: [...argv], options, strict: false, allowPositionals: true, tokens: true });
  return tokens.map((t): ArgToken => {
    if (t.kind === 'positional') return { kind: 'positional', value: t.value, index: t.index };
    if (t.kind === 'option-terminator') return { kind: 'terminator', typed: argv[t.index]! };
    const known = Object.hasOwn(options, t.name) && (t.rawName === `--${t.name}` || (t.name === 'help' && t.rawName === '-h'));
    return { kind: 'flag', flag: known ? `--${t.name}` : argv[t.index]!, known, value: t.value, typed: argv[t.index]! };
  });
}

export function parseFlags(command: string, argv: readonly string[], spec: FlagSpec): ParsedFlags {
  const values = new Map<string, string>();
  const switches = new Set<string>();
  const repeated = new Map<string, string[]>();
  let help = false;
  const unknown = (typed: string): never => {
    throw new LockstepError('E_USAGE', `unknown argument ${JSON.stringify(typed)} (see lockstep ${command} --help)`);
  };
  for (const t of argTokens(argv, [...spec.values, ...(spec.repeated ?? [])], spec.switches ?? [])) {
    if (t.kind !== 'flag') unknown(t.kind === 'positional' ? t.value : t.typed);
    else if (!t.known) unknown(t.typed);
    else if (t.flag === '--help') help = true;
    else if (spec.switches?.includes(t.flag)) {
      if (t.value !== undefined) throw new LockstepError('E_USAGE', `${t.flag} takes no value, got ${JSON.stringify(t.typed)} (see lockstep ${command} --help)`);
      switches.add(t.flag);
    } else {
      if (t.value === undefined) throw new LockstepError('E_USAGE', `${t.flag} needs a value (see lockstep ${command} --help)`);
      if (spec.values.includes(t.flag)) values.set(t.flag, t.value);
      else repeated.set(t.flag, [...(repeated.get(t.flag) ?? []), t.value]);
    }
  }
  return { values, switches, repeated, help };
}

export function intValue(flags: ParsedFlags, name: string, dflt: number, min: number, max: number): number {
  const v = flags.values.get(name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!/^[0-9]+$/.test(v) || n < min || n > max) {
    throw new LockstepError('E_BAD_FLAG_VALUE', `${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  }
  return n;
}

export function required(flags: ParsedFlags, command: string, name: string): string {
  const v = flags.values.get(name);
  if (v === undefined) throw new LockstepError('E_USAGE', `lockstep ${command} needs ${name} (see lockstep ${command} --help)`);
  return v;
}
