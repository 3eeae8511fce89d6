// The CLI's flag parsing (src/cli/args.ts) on node:util.parseArgs: the behaviour the
// subcommands promise, kept from the hand-written parser it replaced, plus `--flag=value`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isLockstepError } from '../src/errors.js';
import { parseFlags } from '../src/cli/args.js';

const SPEC = { values: ['--config', '--id'], switches: ['--json'], repeated: ['--node'] };
const parse = (argv: string[]) => parseFlags('node', argv, SPEC);
const refused = (argv: string[], code: string, message: RegExp): void =>
  assert.throws(() => parse(argv), (e) => isLockstepError(e) && e.code === code && message.test(e.message), argv.join(' '));

test('values, switches, repeated flags and help, in either spelling of a value', () => {
  const f = parse(['--config', 'c.json', '--id=n2', '--json', '--node', 'a', '--node=b']);
  assert.deepEqual([...f.values], [['--config', 'c.json'], ['--id', 'n2']]);
  assert.deepEqual([...f.switches], ['--json']);
  assert.deepEqual(f.repeated.get('--node'), ['a', 'b']);
  assert.equal(f.help, false);
  assert.equal(parse(['-h']).help, true);
  assert.equal(parse(['--help']).help, true);
  assert.equal(parse(['--id', 'a', '--id', 'b']).values.get('--id'), 'b', 'the last one wins');
  assert.equal(parse(['--config', '--id']).values.get('--config'), '--id', 'a value may start with a dash, as before');
  assert.equal(parse(['--config=a=b']).values.get('--config'), 'a=b');
});

test('unknown flags, stray arguments, missing values: E_USAGE naming the argument as typed', () => {
  refused(['--frobnicate'], 'E_USAGE', /^unknown argument "--frobnicate" \(see lockstep node --help\)$/);
  refused(['stray'], 'E_USAGE', /^unknown argument "stray"/);
  refused(['-x'], 'E_USAGE', /^unknown argument "-x"/);
  refused(['--', '--config', 'c'], 'E_USAGE', /^unknown argument "--"/);
  refused(['--id', 'n1', '--config'], 'E_USAGE', /^--config needs a value \(see lockstep node --help\)$/);
  refused(['--json=yes'], 'E_USAGE', /^--json takes no value, got "--json=yes"/);
});

test('lockstep run: its own flags stop at the module; what follows is the guest\'s', async () => {
  const { runCommand } = await import('../src/cli/run.js');
  const printed: string[] = [];
  const out = { stdout: (s: string) => void printed.push(s), stderr: (s: string) => void printed.push(s) };
  const coded = (code: string, message: RegExp) => (e: unknown) => isLockstepError(e) && e.code === code && message.test(e.message);
  await assert.rejects(runCommand(['--frobnicate', 'guest.wasm'], out), coded('E_USAGE', /^unknown argument "--frobnicate" \(see lockstep run --help\)/));
  // The guest's own flags are not lockstep's: the module is looked for, not the flag refused.
  await assert.rejects(runCommand(['--nodes', '2', '--listen=127.0.0.1:7301', 'missing.wasm', '--guest-flag', '-x'], out), coded('E_FILE_READ', /no such guest module: .*missing\.wasm/));
  // -h is help, not a module named "-h".
  assert.equal(await runCommand(['-h'], out), 0);
  assert.match(printed.join(''), /usage: lockstep run/);
});
