// A service module that exports a full StateMachine (defineMachine), in process: the counters
// example keeps primary and backup equal in both modes (its own binary codec, its state-transfer
// changes, its incremental digest), snapshots restore; the sandbox still refuses non-determinism;
// a throw that changed nothing is an error reply, a throw that changed the state stops the
// replica (E_SERVICE_MACHINE); a reply that is not a RESP value is an error reply; and the
// simulator runs the example for a few seeds in both modes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { LockstepError } from '../src/errors.js';
import { ReplicatedService, loadServiceModule, loadServiceSource, simServiceOf, type KvReply } from '../src/guest/index.js';
import { simulate } from '../src/sim/index.js';

const counters = fileURLToPath(new URL('../../examples/services/counters/counters.js', import.meta.url));
type Svc = ReplicatedService<readonly string[], KvReply, unknown>;

// A one-value register with commands that misbehave on purpose.
const breaks = fileURLToPath(new URL('../../test/fixtures/services/breaks-machine.js', import.meta.url));
const REGISTER = readFileSync(breaks, 'utf8');

const run = (s: Svc, ...command: string[]): KvReply => s.execute({ clientId: null, seq: 1, ackedBelow: 0, command }).reply;

test('counters (defineMachine): primary and backup stay equal in both modes, exactly-once retries, snapshots restore', () => {
  const loaded = loadServiceModule(counters);
  assert.equal(loaded.kind, 'machine');
  assert.equal(loaded.name, 'counters');
  for (const mode of ['rsm', 'state-transfer'] as const) {
    const p = new ReplicatedService(loaded.machine(), mode) as Svc;
    const b = new ReplicatedService(loaded.machine(), mode) as Svc;
    const entries: Uint8Array[] = [];
    let seq = 0;
    const call = (...command: string[]): KvReply => {
      const r = p.execute({ clientId: 'c', seq: ++seq, ackedBelow: seq - 1, command });
      if (r.entry !== null) {
        entries.push(r.entry);
        b.applyEntry(r.entry);
      }
      assert.equal(b.digest(), p.digest(), `${mode} after ${command.join(' ')}`);
      return r.reply;
    };
    for (let i = 0; i < 50; i++) call('INCRBY', `k${i % 7}`, String((i * 13) % 21 - 10));
    assert.deepEqual(call('DEL', 'k3'), { kind: 'integer', value: 1n });
    assert.deepEqual(call('INCRBY', 'k1', '1.5'), { kind: 'error', message: 'ERR value is not an integer or out of range' });
    assert.deepEqual(call('frob'), { kind: 'error', message: "ERR unknown command 'frob' for service counters" });
    const sum = call('SUM');
    assert.equal(sum.kind, 'integer');
    // A retry of the last write gets the recorded reply and does not run again.
    const again = p.execute({ clientId: 'c', seq: seq - 2, ackedBelow: seq - 3, command: ['INCRBY', 'k1', '1.5'] });
    assert.equal(again.duplicate, true);
    // state-transfer logs one counter, not the state: entries stay small.
    if (mode === 'state-transfer') assert.ok(Math.max(...entries.map((e) => e.length)) < 64, `${Math.max(...entries.map((e) => e.length))} bytes`);
    const fresh = new ReplicatedService(loaded.machine(), mode) as Svc;
    fresh.restore(p.snapshot());
    assert.equal(fresh.digest(), p.digest());
    assert.deepEqual(run(fresh, 'SUM'), sum);
  }
});

test('a full machine runs in the sandbox: non-determinism, throws, bad replies and time limits', () => {
  const loaded = loadServiceModule(breaks, { timeoutMs: 200 });
  const broken: string[] = [];
  const s = new ReplicatedService(loaded.machine((why) => broken.push(why)), 'rsm') as Svc;
  assert.deepEqual(run(s, 'SET', '5'), { kind: 'status', value: 'OK' });
  const roll = run(s, 'ROLL');
  assert.equal(roll.kind, 'error');
  assert.match((roll as { message: string }).message, /^ERR Math\.random\(\) is not available in a lockstep service/);
  // A throw that changed nothing: its message is the error reply, as for defineService.
  assert.deepEqual(run(s, 'REFUSE'), { kind: 'error', message: 'NOPE not today' });
  // Past the time limit with the state unchanged: the sandbox's error, nothing logged (the front answers it).
  assert.throws(() => run(s, 'SPIN'), (e: unknown) => (e as { code?: string }).code === 'ERR_SCRIPT_EXECUTION_TIMEOUT');
  assert.deepEqual(run(s, 'GET'), { kind: 'integer', value: 5n });
  assert.equal(broken.length, 0);
  // Not a RESP value: an error reply naming it; the change stands (a backup re-executing gets the same).
  const bad = run(s, 'BADREPLY');
  assert.equal(bad.kind, 'error');
  assert.match((bad as { message: string }).message, /^ERR breaks: the reply of BADREPLY\.kind is "float", not one of status, error/);
  assert.deepEqual(run(s, 'GET'), { kind: 'integer', value: 7n });
  // Changed the state, then threw: no entry can describe that, so the replica is told to stop.
  assert.throws(() => run(s, 'BREAK'), (e: unknown) => e instanceof LockstepError && e.code === 'E_SERVICE_MACHINE');
  assert.equal(broken.length, 1);
  assert.match(broken[0]!, /^E_SERVICE_MACHINE: breaks\.execute\(BREAK\) threw after changing the state \(digest 7 before, -1 after\): half done/);
  // A read-only command is never logged, so one that changed the state is broken too.
  const t = new ReplicatedService(loaded.machine((why) => broken.push(why)), 'rsm') as Svc;
  assert.throws(() => run(t, 'PEEK'), (e: unknown) => e instanceof LockstepError && e.code === 'E_SERVICE_MACHINE');
  assert.match(broken[1]!, /^E_SERVICE_MACHINE: breaks\.execute\(PEEK\) changed the state \(digest 0 before, 1 after\), but isReadOnly says it is a read/);
});

test('defineMachine: a module that cannot make a machine is refused at load', () => {
  const refused = (source: string, want: RegExp): void => {
    assert.throws(() => loadServiceSource(source, 'm.js', { timeoutMs: 200 }), (e: unknown) => e instanceof LockstepError && e.code === 'E_SERVICE_MODULE' && want.test(e.message), want.source);
  };
  const head = "import { defineMachine } from 'lockstep/guest';\n";
  refused(`${head}export default defineMachine(() => ({ name: 'x' }));`, /its machine x has no isReadOnly\(\)/);
  refused(`${head}export default defineMachine(() => Date.now());`, /its create\(\): Date\.now\(\) is not available/);
  refused(`${head}export default defineMachine(42);`, /loading it failed: defineMachine: expects a function/);
  refused(REGISTER.replace('encodeChange: (x)', 'encodeChangeX: (x)'), /its machine breaks's codec has no encodeChange\(\)/);
});

test('sim: counters (defineMachine) passes seeds 1..4 in both modes', () => {
  const service = simServiceOf(counters);
  for (const mode of ['rsm', 'state-transfer'] as const) {
    for (let seed = 1; seed <= 4; seed++) {
      const r = simulate({ seed, mode, service });
      assert.deepEqual(r.failures, [], `seed ${seed} ${mode}`);
      assert.ok(r.stats.opsCompleted > 50, `seed ${seed} ${mode}: ${r.stats.opsCompleted} ops`);
    }
  }
});

test('lockstep sim --service runs a defineMachine module from the command line', async () => {
  const bin = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [bin, 'sim', '--service', counters, '--seeds', '3'], { timeout: 120_000 }, (err, stdout, stderr) => resolve({ code: err === null ? 0 : Number(err.code), stdout, stderr }));
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^3 passed, 0 failed \(seeds 1\.\.3/m);
});
