// Tests for `lockstep check FILE` through checkCommand, with history files in a temp directory:
// the verdict lines, exit codes 0/1/2/3, and error messages that name the code and the line.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkCommand } from '../src/cli/check.js';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lockstep-check-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Row = readonly [number, string, string, string, string | null, number];
const jsonl = (rows: readonly Row[]): string =>
  rows.map(([process, type, f, key, value, time]) => JSON.stringify({ process, type, f, key, value, time })).join('\n') + '\n';

let files = 0;
async function run(argv: (file: string) => string[], content: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const file = join(dir, `h${files++}.jsonl`);
  await writeFile(file, content);
  let [stdout, stderr] = ['', ''];
  const code = await checkCommand(argv(file), { stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) });
  return { code, stdout, stderr };
}
const check = (content: string) => run((f) => [f], content);

const good: Row[] = [
  [1, 'invoke', 'set', 'a', 'x', 0], [2, 'invoke', 'append', 'b', 'p', 1],
  [1, 'ok', 'set', 'a', null, 2], [2, 'ok', 'append', 'b', null, 3],
  [1, 'invoke', 'get', 'a', null, 4], [2, 'invoke', 'append', 'b', 'q', 5],
  [1, 'ok', 'get', 'a', 'x', 6], [2, 'info', 'append', 'b', null, 7],
  [3, 'invoke', 'get', 'b', null, 8], [3, 'ok', 'get', 'b', 'pq', 9],
  [4, 'invoke', 'del', 'a', null, 10], [4, 'fail', 'del', 'a', null, 11],
];

test('a linearizable history: exit 0 and the counts', async () => {
  const r = await check(jsonl(good));
  assert.deepEqual(r, { code: 0, stdout: 'linearizable: 5 operations on 2 keys\n', stderr: '' });
});

test('a stale read: exit 1, the key, the ops that cannot be placed, the read, the prefix', async () => {
  const r = await check(jsonl([
    ...good,
    [5, 'invoke', 'set', 'a', 'y', 12], [5, 'ok', 'set', 'a', null, 13],
    [6, 'invoke', 'get', 'a', null, 14], [6, 'ok', 'get', 'a', 'x', 15],
  ]));
  assert.equal(r.code, 1);
  assert.equal(r.stderr, '');
  assert.equal(r.stdout, [
    'not linearizable: key "a"',
    'value after the linearized prefix: "x"',
    'cannot place any of these next:',
    '  process 5: set "y" [12, 13]',
    'later reads that rule them out:',
    '  process 6: get -> "x" [14, 15]',
    'linearized prefix: 2 operations',
    '',
  ].join('\n'));
});

test('an unexplainable read is itself listed, info ops are marked', async () => {
  const r = await check(jsonl([
    [1, 'invoke', 'append', 'k', 'x', 0], [1, 'info', 'append', 'k', null, 1],
    [2, 'invoke', 'get', 'k', null, 2], [2, 'ok', 'get', 'k', 'xx', 3],
  ]));
  assert.equal(r.code, 1);
  assert.match(r.stdout, /^not linearizable: key "k"\n/);
  assert.match(r.stdout, /\n {2}process 1: append "x" \[0, \?\] \(info: may not have happened\)\n/);
  assert.match(r.stdout, /\n {2}process 2: get -> "xx" \[2, 3\]\n/);
  assert.match(r.stdout, /\nlinearized prefix: 0 operations\n$/);
});

test('bad input: exit 2 with the error code and the line', async () => {
  const lines = jsonl(good).split('\n');
  const bad = async (content: string, re: RegExp) => {
    const r = await check(content);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, re);
  };
  await bad([...lines.slice(0, 3), '{"process": 1,', ...lines.slice(3)].join('\n'), /^error E_HISTORY_PARSE: line 4: not valid JSON/);
  await bad([...lines.slice(0, 2), '', '{"process":1,"type":"ok","f":"get","key":"a","time":"soon"}'].join('\n'), /^error E_HISTORY_EVENT: line 4: field "time" must be a finite number, got "soon"\n$/);
  await bad(jsonl([[1, 'invoke', 'get', 'a', null, 0], [1, 'ok', 'set', 'a', null, 1]]), /^error E_HISTORY_ORDER: line 2: ok of set "a" for process 1 does not match/);
  await bad(jsonl([[1, 'invoke', 'get', 'a', null, 5], [2, 'invoke', 'get', 'a', null, 4]]), /^error E_HISTORY_ORDER: line 2: time 4 is before/);
  await bad(jsonl([[1, 'ok', 'get', 'a', null, 5]]), /^error E_HISTORY_ORDER: line 1: ok of get for process 1, which has no pending invoke/);
  // Nested 100,000 deep: once a stack overflow, exit 1 ("not linearizable").
  await bad(`${'['.repeat(100_000)}${']'.repeat(100_000)}\n`, /^error E_HISTORY_EVENT: line 1: expected a JSON object, got \[an array nested too deep to show\]/);
  await bad(`${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}\n`, /^error E_HISTORY_EVENT: line 1: field "process" is missing/);
});

test('usage errors and unreadable files: exit 2; --help: exit 0', async () => {
  const call = async (argv: string[]) => {
    let [stdout, stderr] = ['', ''];
    const code = await checkCommand(argv, { stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) });
    return { code, stdout, stderr };
  };
  const missing = join(dir, 'no-such-file.jsonl');
  assert.deepEqual(await call([missing]), { code: 2, stdout: '', stderr: `error E_FILE_READ: cannot read ${missing}: ENOENT\n` });
  assert.deepEqual(await call([dir]), { code: 2, stdout: '', stderr: `error E_FILE_READ: cannot read ${dir}: EISDIR\n` });
  assert.match((await call([])).stderr, /^error E_USAGE: missing FILE/);
  assert.match((await call(['a', 'b'])).stderr, /^error E_USAGE: unexpected argument "b"/);
  assert.match((await call(['--frobnicate', 'a'])).stderr, /^error E_USAGE: unknown flag --frobnicate/);
  assert.match((await call(['--max-states', 'many', 'a'])).stderr, /^error E_BAD_FLAG_VALUE: --max-states must be a positive integer/);
  assert.match((await call(['a', '--max-states'])).stderr, /^error E_USAGE: --max-states needs a value/);
  for (const argv of [[], ['a', 'b'], ['--frobnicate', 'a']]) assert.equal((await call(argv)).code, 2);
  const help = await call(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^usage: lockstep check \[--max-states N\] FILE\n/);
  assert.match(help.stdout, /exit status: 0 linearizable, 1 not linearizable, 2 bad usage or input, 3 unknown/);
});

test('a search over its state budget: exit 3, unknown', async () => {
  const r = await run((f) => ['--max-states', '2', f], jsonl(good));
  assert.deepEqual(r, { code: 3, stdout: 'unknown: search exceeded 2 states on key "b"\n', stderr: '' });
});

test('an empty file is linearizable', async () => {
  assert.deepEqual(await check('\n\n'), { code: 0, stdout: 'linearizable: 0 operations on 0 keys\n', stderr: '' });
});
