// The `lockstep` command as a user runs it: a real child process, its output and exit code.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

test('lockstep sim --seed S prints the same trace hash every time', async () => {
  const a = await run(['sim', '--seed', '17']);
  const b = await run(['sim', '--seed', '17']);
  assert.equal(a.code, 0, a.stderr);
  const hash = /trace ([0-9a-f]{16})/.exec(a.stdout)?.[1];
  assert.ok(hash, a.stdout);
  assert.equal(/trace ([0-9a-f]{16})/.exec(b.stdout)?.[1], hash);
  assert.match(a.stdout, /^1 passed, 0 failed/m);
});

test('lockstep sim reports a failing seed: the seed, the check and the trace tail', async () => {
  const r = await run(['sim', '--seeds', '60', '--bug', 'noOutputRule', '--tail', '5']);
  assert.equal(r.code, 1);
  assert.match(r.stdout, /^seed \d+ FAILED/m);
  assert.match(r.stdout, /^ {2}check [a-z-]+: /m);
  assert.match(r.stdout, /last 5 trace lines:\n( {4}.*\n){5}/);
  assert.match(r.stdout, /reproduce: lockstep sim --seed \d+ --bug noOutputRule/);
  assert.match(r.stdout, /^\d+ passed, [1-9]\d* failed/m);
});

test('lockstep: bad usage exits 2 with a coded error', async () => {
  for (const args of [['sim', '--seeds', 'many'], ['sim', '--bug', 'nope'], ['sim', '--what'], ['frobnicate']]) {
    const r = await run(args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.stderr, /^error E_[A-Z_]+: /m, args.join(' '));
  }
});

test('lockstep check reads a history file and says whether it is linearizable', async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-cli-'));
  try {
    const good = join(dir, 'good.jsonl');
    const bad = join(dir, 'bad.jsonl');
    const ev = (process: number, type: string, f: string, value: string | null, time: number) =>
      JSON.stringify({ process, type, f, key: 'k', value, time });
    writeFileSync(good, [ev(0, 'invoke', 'set', 'a', 1), ev(0, 'ok', 'set', 'a', 2), ev(1, 'invoke', 'get', null, 3), ev(1, 'ok', 'get', 'a', 4)].join('\n'));
    writeFileSync(bad, [ev(0, 'invoke', 'set', 'a', 1), ev(0, 'ok', 'set', 'a', 2), ev(1, 'invoke', 'get', null, 3), ev(1, 'ok', 'get', null, 4)].join('\n'));
    assert.equal((await run(['check', good])).code, 0);
    const r = await run(['check', bad]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /not linearizable: key "k"/);
    const missing = await run(['check', join(dir, 'nope.jsonl')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /error E_FILE_READ/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
