// The client library as a user installs and calls it (issue 15, items 10 and 11): importable
// from ESM and from CommonJS through the package's own exports, the helpers docs/CLIENT.md
// lists, an error that says what the attempts saw when no node answers, and no binaryen (the
// WebAssembly host's 100 MB dependency) among what the client installs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { ProcessCluster, freePorts } from '../src/testing/process-cluster.js';
import { CommandTimeoutError, LockstepClient } from '../src/client/index.js';

const require = createRequire(import.meta.url);

test('lockstep/client from CommonJS (require) and from ESM (import) both work against a real node', { timeout: 60_000 }, async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 1 });
  t.after(() => cluster.stop());
  const nodes = cluster.clientAddresses();
  const cjs = require('lockstep/client') as typeof import('../src/client/index.js');
  assert.match(require.resolve('lockstep/client'), /dist\/cjs\/client\/index\.js$/);
  const esm = (await import('lockstep/client')) as typeof import('../src/client/index.js');
  for (const [name, mod] of [['cjs', cjs], ['esm', esm]] as const) {
    const db = new mod.LockstepClient({ nodes });
    try {
      assert.equal(await db.set(`${name}:n`, 10), 'OK');
      assert.equal(await db.incr(`${name}:n`), 11);
      assert.equal(await db.decr(`${name}:n`), 10);
      assert.equal(await db.decrby(`${name}:n`, 4), 6);
      assert.equal(await db.incrby(`${name}:n`, 2), 8);
      assert.equal(await db.append(`${name}:s`, 'ab'), 2);
      assert.deepEqual(await db.mget(`${name}:n`, `${name}:s`, 'missing'), ['8', 'ab', null]);
      assert.equal(await db.mset(`${name}:a`, '1', `${name}:b`, '2'), 'OK');
      assert.equal(await db.exists(`${name}:a`, `${name}:b`, 'missing'), 2);
      assert.equal(await db.del(`${name}:a`), 1);
      assert.equal(await db.get(`${name}:b`), '2');
      await assert.rejects(db.incr(`${name}:s`), (e: Error) => e.name === 'ReplyError' && /not an integer/.test(e.message));
    } finally {
      db.close();
    }
  }
});

test('with no node reachable, the timeout says what the attempts saw and that the command did not execute', async () => {
  const ports = await freePorts(2); // free a moment ago: nothing listens there
  const db = new LockstepClient({ nodes: ports.map((p) => `127.0.0.1:${p}`), commandTimeoutMs: 1500, attemptTimeoutMs: 300 });
  try {
    await assert.rejects(db.set('k', 'v'), (e: unknown) => {
      assert.ok(e instanceof CommandTimeoutError);
      assert.equal(e.mayHaveExecuted, false);
      assert.match(e.message, /never sent to a node, so it did not execute/);
      assert.match(e.message, new RegExp(`last attempts: .*127\\.0\\.0\\.1:(${ports.join('|')}): ECONNREFUSED`));
      return true;
    });
  } finally {
    db.close();
  }
});

test('the package installs the client without binaryen: the WebAssembly host\'s dependency is optional', () => {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as Record<string, Record<string, unknown> | undefined>;
  assert.equal(pkg.dependencies?.binaryen, undefined);
  assert.equal(pkg.peerDependencies?.binaryen, '132.0.0');
  assert.deepEqual(pkg.peerDependenciesMeta?.binaryen, { optional: true });
});
