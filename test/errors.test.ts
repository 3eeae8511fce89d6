// The error registry and its documentation stay in step: every code in src/errors.ts is in
// docs/ERRORS.md with the same meaning, and the page lists no code that does not exist.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES, LockstepError, isLockstepError } from '../src/errors.js';

const doc = readFileSync(fileURLToPath(new URL('../../docs/ERRORS.md', import.meta.url)), 'utf8');

test('every error code is documented with its meaning', () => {
  for (const [code, meaning] of Object.entries(ERROR_CODES)) {
    assert.ok(doc.includes(`| \`${code}\` | ${meaning} |`), `docs/ERRORS.md lacks the row for ${code}`);
  }
});

test('the docs list no code that does not exist', () => {
  const listed = [...doc.matchAll(/^\| `(E_[A-Z_]+)` \|/gm)].map((m) => m[1]);
  assert.deepEqual(listed.sort(), Object.keys(ERROR_CODES).sort());
});

test('LockstepError carries its code', () => {
  const e = new LockstepError('E_USAGE', 'missing FILE');
  assert.ok(isLockstepError(e));
  assert.equal(e.code, 'E_USAGE');
  assert.ok(!isLockstepError(new Error('x')));
});
