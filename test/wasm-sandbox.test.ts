// Issue 14 item 5: a guest must not reach any host file outside its root, whatever it does to
// its own directory tree in between (rename a directory it holds a handle on, swap a symlink in
// for it, hard links, loops, ...). The escape guest runs under the real host, recording and
// then replaying, against real temp directories with a "secret" beside the root; the table
// drives the other escape attempts call by call.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModule } from '../src/wasm/module.js';
import { recordLocally, replayLocally } from '../src/wasm/local.js';

const SECRET = 'TOPSECRET-42\n';
const fixture = (name: string): string => fileURLToPath(new URL(`../../test/fixtures/wasm/${name}`, import.meta.url));

/** <tmp>/root is the guest's root; <tmp>/secret and <tmp>/victim sit beside it. */
function sandbox(t: TestContext): { dir: string; root: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-sandbox-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  fs.mkdirSync(root);
  fs.writeFileSync(path.join(dir, 'secret'), SECRET);
  fs.writeFileSync(path.join(dir, 'victim'), 'keep me\n');
  return { dir, root };
}

/** Everything outside the root is as sandbox() made it. */
function assertOutsideUntouched(dir: string, who: string): void {
  assert.deepEqual(fs.readdirSync(dir).sort(), ['root', 'secret', 'victim'], `${who}: nothing made or removed beside the root`);
  assert.equal(fs.readFileSync(path.join(dir, 'secret'), 'utf8'), SECRET, `${who}: the secret is unchanged`);
  assert.equal(fs.readFileSync(path.join(dir, 'victim'), 'utf8'), 'keep me\n', `${who}: the victim is unchanged`);
}

/** "<step> NN" lines of the escape guest, as a map from step to errno. */
function steps(stdout: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of stdout.matchAll(/^(\w+) +(\d\d)$/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

test('the escape guest of issue 14 cannot read, write or delete outside its root, recording or replaying', { timeout: 120_000 }, async (t) => {
  const loaded = await loadModule(fs.readFileSync(fixture('escape.wasm')), { maxMemoryPages: 16 });
  const primary = sandbox(t);
  const rec = await recordLocally(loaded, { args: ['escape'], root: primary.root });
  assert.deepEqual(rec.end, { kind: 'exit', code: 0 }, rec.stdout);
  assert.ok(!rec.stdout.includes('TOPSECRET'), `the guest read the secret:\n${rec.stdout}`);
  assert.ok(!/^root:/m.test(rec.stdout), `the guest read /etc/passwd:\n${rec.stdout}`);
  assert.ok(!rec.stdout.includes('victim'), `the guest listed the root's parent:\n${rec.stdout}`);
  assertOutsideUntouched(primary.dir, 'primary');

  // The handle still names the directory it was opened on (now "z"), which has no secret;
  // what the guest made through it is inside the root.
  const s = steps(rec.stdout);
  for (const name of ['mkdir', 'opendir', 'rename', 'symlink', 'create', 'write', 'mkdirin', 'readdir', 'mkdir2', 'opendir2', 'rename2', 'symlink2']) {
    assert.equal(s.get(name), 0, `${name} succeeds inside the root:\n${rec.stdout}`);
  }
  for (const name of ['open', 'unlink', 'open2']) assert.equal(s.get(name), 44, `${name} finds nothing (NOENT):\n${rec.stdout}`);
  assert.equal(fs.readFileSync(path.join(primary.root, 'z/planted'), 'utf8'), 'pwned\n');
  assert.ok(fs.statSync(path.join(primary.root, 'z/newdir')).isDirectory());
  assert.equal(fs.readlinkSync(path.join(primary.root, 'a')), '..');

  // The backup makes the same local calls on its own directory: sealed by the same code.
  const backup = sandbox(t);
  const rep = await replayLocally(loaded, { args: ['escape'], root: backup.root }, rec.entries);
  assert.deepEqual(rep.end, { kind: 'exit', code: 0 });
  assert.equal(rep.memoryHash, rec.memoryHash);
  assert.equal(rep.hostState, rec.hostState);
  assertOutsideUntouched(backup.dir, 'backup');
  assert.equal(fs.readFileSync(path.join(backup.root, 'z/planted'), 'utf8'), 'pwned\n');
});
