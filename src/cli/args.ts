// Small shared flag parsing for the CLI subcommands: --name value pairs and switches, with
// coded errors for unknown flags and missing or malformed values.

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

export function parseFlags(command: string, argv: readonly string[], spec: FlagSpec): ParsedFlags {
  const values = new Map<string, string>();
  const switches = new Set<string>();
  const repeated = new Map<string, string[]>();
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') help = true;
    else if (spec.values.includes(a) || spec.repeated?.includes(a)) {
      const v = argv[++i];
      if (v === undefined) throw new LockstepError('E_USAGE', `${a} needs a value (see lockstep ${command} --help)`);
      if (spec.values.includes(a)) values.set(a, v);
      else repeated.set(a, [...(repeated.get(a) ?? []), v]);
    } else if (spec.switches?.includes(a)) switches.add(a);
    else throw new LockstepError('E_USAGE', `unknown argument ${JSON.stringify(a)} (see lockstep ${command} --help)`);
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
