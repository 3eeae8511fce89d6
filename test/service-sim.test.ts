// `lockstep sim --service` (issue 10): the simulator runs a service module. The three examples
// pass a few seeds in both modes here (the 300-seed runs take minutes; see docs/SERVICES.md),
// and a module whose replicas diverge where no reply shows it fails the divergence check.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { simulate } from '../src/sim/index.js';
import { simServiceOf } from '../src/guest/index.js';

const example = (p: string): string => fileURLToPath(new URL(`../../examples/services/${p}`, import.meta.url));
const fixture = (p: string): string => fileURLToPath(new URL(`../../test/fixtures/services/${p}`, import.meta.url));
const bin = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

for (const file of ['bank/bank.js', 'locks/locks.js', 'jobs/jobs.js']) {
  test(`sim: ${file} passes seeds 1..4 in both modes, and a seed replays to the same trace`, () => {
    const service = simServiceOf(example(file));
    for (const mode of ['rsm', 'state-transfer'] as const) {
      for (let seed = 1; seed <= 4; seed++) {
        const r = simulate({ seed, mode, service });
        assert.deepEqual(r.failures, [], `seed ${seed} ${mode}`);
        assert.ok(r.stats.opsCompleted > 50, `seed ${seed} ${mode}: ${r.stats.opsCompleted} ops`);
      }
    }
    assert.equal(simulate({ seed: 3, service }).traceHash, simulate({ seed: 3, service }).traceHash);
  });
}

test('sim: a module with hidden module-level state fails the divergence check', () => {
  const service = simServiceOf(fixture('hidden-counter.js'));
  const r = simulate({ seed: 1, mode: 'rsm', service });
  assert.ok(r.failures.some((f) => f.check === 'divergence'), JSON.stringify(r.failures.slice(0, 3)));
});

test('lockstep sim --service: the command line runs a module, and refuses one without simulate()', async () => {
  const run = (args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 120_000 }, (err, stdout, stderr) => resolve({ code: err === null ? 0 : Number(err.code), stdout, stderr }));
  });
  const ok = await run(['sim', '--service', example('bank/bank.js'), '--seeds', '3']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /^3 passed, 0 failed \(seeds 1\.\.3/m);
  const bad = await run(['sim', '--service', fixture('spin.js'), '--seeds', '1']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /E_SERVICE_MODULE: service module .*spin\.js: has no simulate\(random, client, counter\)/);
  const diverges = await run(['sim', '--service', fixture('hidden-counter.js'), '--seed', '1', '--mode', 'rsm', '--tail', '0']);
  assert.equal(diverges.code, 1);
  assert.match(diverges.stdout, /check divergence: .* differs from/);
  assert.match(diverges.stdout, /reproduce: lockstep sim --seed 1 --service .*hidden-counter\.js --mode rsm/);
});
