// The determinism guard and the default codec of service modules (issue 10), in process: what
// a module may not call (at load and at run time), and that a command that throws, loops
// forever or returns what cannot be sent leaves the state exactly as it was.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { LockstepError } from '../src/errors.js';
import { parseConfig } from '../src/node/config.js';
import { checkLinearizable, type ModelOp } from '../src/testing/model-check.js';
import { ReplicatedService, loadServiceModule, loadServiceSource, type KvReply } from '../src/guest/index.js';

const HEAD = "import { defineService } from 'lockstep/guest';\n";
const svc = (body: string, extra = ''): string =>
  `${HEAD}${extra}\nexport default defineService({ name: 't', initial: () => ({ n: 0, m: new Map(), log: [] }), commands: { ${body} } });\n`;

function loadError(source: string): LockstepError {
  try {
    loadServiceSource(source, 'inline.js', { timeoutMs: 200 });
  } catch (e) {
    assert.ok(e instanceof LockstepError, `a LockstepError, got ${String(e)}`);
    assert.equal(e.code, 'E_SERVICE_MODULE');
    return e;
  }
  assert.fail('the module loaded');
}

function service(source: string, mode: 'rsm' | 'state-transfer' = 'rsm'): ReplicatedService<readonly string[], KvReply, unknown> {
  const loaded = loadServiceSource(source, 'inline.js', { timeoutMs: 200 });
  return new ReplicatedService(loaded.machine(), mode) as ReplicatedService<readonly string[], KvReply, unknown>;
}

const run = (s: ReplicatedService<readonly string[], KvReply, unknown>, ...command: string[]): KvReply =>
  s.execute({ clientId: null, seq: 1, ackedBelow: 0, command }).reply;

test('calls that differ between replicas are refused at load, each by name', () => {
  const cases: [string, RegExp][] = [
    ['const seed = Math.random();', /Math\.random\(\)/],
    ['const t = Date.now();', /Date\.now\(\)/],
    ['const d = new Date();', /Date is not available/],
    ["setTimeout(() => {}, 1);", /setTimeout\(\)/],
    ['const e = process.env;', /process is not available/],
    ["const fs = require('fs');", /require\(\) is not available/],
    ['console.log(1);', /console is not available/],
    ['const r = new WeakRef({});', /WeakRef/],
  ];
  for (const [line, want] of cases) {
    const e = loadError(svc('get() { return 1; }', line));
    assert.match(e.message, want, line);
    assert.match(e.message, /loading it failed/);
  }
  assert.match(loadError("import fs from 'node:fs';\n" + svc('get() { return 1; }')).message, /import of 'node:fs' is not available/);
  assert.match(loadError("import { x } from './other.js';\n" + svc('get() { return 1; }')).message, /import of '.\/other.js'/);
  assert.match(loadError(svc("get() { return import('node:fs'); }")).message, /import\('node:fs'\) is not available/);
  assert.match(loadError(svc('async get() { return 1; }')).message, /command get is async/);
  assert.match(loadError(svc('get() { return 1; }', 'while (true) {}')).message, /did not finish within 200 ms/);
  assert.match(loadError('export default 42;').message, /default export must be defineService/);
  assert.match(loadError(svc('info() { return 1; }')).message, /command name info is taken by the client port's own INFO/);
  const spinInit = `${HEAD}export default defineService({ name: 't', initial: () => { for (;;) {} }, commands: {} });`;
  assert.throws(() => loadServiceSource(spinInit, 'inline.js', { timeoutMs: 200 }).machine(), (e: unknown) => e instanceof LockstepError && /its initial state: .*timed out after 200ms/.test(e.message));
});

test('calls that differ between replicas are refused at run time: an error reply naming the call, the state unchanged', async () => {
  const s = service(svc(`
    roll(state) { state.n = 1; state.n = Math.random(); return 1; },
    stamp(state) { state.n = 2; return Date.now(); },
    later(state) { state.n = 3; setTimeout(() => {}, 0); return 1; },
    env(state) { state.n = 4; return process.env.HOME; },
    get: { readOnly: true, run(state) { return state.n; } },`));
  const before = s.digest();
  const cases: [string, RegExp][] = [['ROLL', /Math\.random\(\)/], ['STAMP', /Date\.now\(\)/], ['LATER', /setTimeout\(\)/], ['ENV', /process is not available/]];
  for (const [name, want] of cases) {
    const r = run(s, name);
    assert.equal(r.kind, 'error', name);
    assert.match((r as { message: string }).message, want);
    assert.match((r as { message: string }).message, /^ERR /);
  }
  assert.deepEqual(run(s, 'GET'), { kind: 'integer', value: 0n });
  assert.equal(s.digest(), before);
});

test('a command that throws midway leaves the state as it was, on primary and backup alike', () => {
  const src = svc(`
    add(state, [k]) { state.m.set(k, (state.m.get(k) ?? 0) + 1); state.n++; if (k === 'bad') throw new Error('NOPE bad key'); return state.n; },
    boom(state) { state.log.push('half'); null.x; },
    get: { readOnly: true, run(state) { return [state.n, [...state.m.keys()], state.log]; } },`);
  for (const mode of ['rsm', 'state-transfer'] as const) {
    const p = service(src, mode);
    const b = service(src, mode);
    const entries: Uint8Array[] = [];
    const exec = (...command: string[]): KvReply => {
      const r = p.execute({ clientId: 'c1', seq: entries.length + 1, ackedBelow: 0, command });
      if (r.entry) entries.push(r.entry);
      return r.reply;
    };
    assert.deepEqual(exec('ADD', 'a'), { kind: 'integer', value: 1n });
    const d = p.digest();
    assert.deepEqual(exec('ADD', 'bad'), { kind: 'error', message: 'NOPE bad key' });
    const boom = exec('BOOM');
    assert.equal(boom.kind, 'error');
    assert.match((boom as { message: string }).message, /^ERR Cannot read properties of null/);
    assert.notEqual(p.digest(), d, 'the filter recorded the two error replies');
    assert.deepEqual(run(p, 'GET'), { kind: 'array', items: [{ kind: 'integer', value: 1n }, { kind: 'array', items: [{ kind: 'bulk', value: 'a' }] }, { kind: 'array', items: [] }] });
    for (const e of entries) b.applyEntry(e);
    assert.equal(b.digest(), p.digest(), `${mode}: the backup holds the same state and filter`);
  }
});

test('a command that loops forever is stopped by the time limit and changes nothing', () => {
  const s = service(svc(`
    spin(state) { state.n = 99; for (;;) {} },
    get: { readOnly: true, run(state) { return state.n; } },`));
  const before = s.digest();
  const t0 = performance.now();
  assert.throws(() => run(s, 'SPIN'), (e: unknown) => (e as { code?: string }).code === 'ERR_SCRIPT_EXECUTION_TIMEOUT');
  assert.ok(performance.now() - t0 < 5000);
  assert.equal(s.digest(), before);
  assert.deepEqual(run(s, 'GET'), { kind: 'integer', value: 0n });
});

test('a reply that cannot be sent is an error reply naming what it is, and the command has no effect', () => {
  const s = service(svc(`
    fn(state) { state.n = 1; return () => 1; },
    map(state) { state.n = 2; return new Map([[1, 2]]); },
    nan(state) { state.n = 3; return [1, { x: NaN }]; },
    promise(state) { state.n = 4; return Promise.resolve(1); },
    badstate(state) { state.n = () => 1; return 1; },
    ok(state) { state.n = 6; return { n: state.n, big: 10n ** 20n, half: 0.5, yes: true, none: null }; },`));
  const before = s.digest();
  const cases: [string, RegExp][] = [
    ['FN', /the reply of FN is a function/],
    ['MAP', /the reply of MAP is a Map/],
    ['NAN', /the reply of NAN\[1\]\.x is NaN/],
    ['PROMISE', /the reply of PROMISE is a Promise/],
    ['BADSTATE', /the state after BADSTATE\.n is a function/],
  ];
  for (const [name, want] of cases) {
    const r = run(s, name);
    assert.equal(r.kind, 'error', name);
    assert.match((r as { message: string }).message, want);
    assert.match((r as { message: string }).message, /the command had no effect/);
  }
  assert.equal(s.digest(), before);
  assert.deepEqual(run(s, 'ok'), {
    kind: 'array',
    items: [
      { kind: 'bulk', value: 'n' }, { kind: 'integer', value: 6n },
      { kind: 'bulk', value: 'big' }, { kind: 'integer', value: 10n ** 20n },
      { kind: 'bulk', value: 'half' }, { kind: 'bulk', value: '0.5' },
      { kind: 'bulk', value: 'yes' }, { kind: 'integer', value: 1n },
      { kind: 'bulk', value: 'none' }, { kind: 'bulk', value: null },
    ],
  });
});

test('a read-only command cannot change the state; unknown commands are an error reply', () => {
  const s = service(svc(`peek: { readOnly: true, run(state) { state.n = 7; return state.n; } }, get: { readOnly: true, run(state) { return state.n; } },`));
  assert.deepEqual(run(s, 'PEEK'), { kind: 'integer', value: 7n });
  assert.deepEqual(run(s, 'GET'), { kind: 'integer', value: 0n });
  assert.deepEqual(run(s, 'NOPE'), { kind: 'error', message: "ERR unknown command 'NOPE' for service t" });
});

test('snapshots keep iteration order, and the digest tells apart states that differ only in order', () => {
  const src = svc(`
    put(state, [k]) { state.m.set(k, 1); state.log.push(k); return state.m.size; },
    order: { readOnly: true, run(state) { return [...state.m.keys()]; } },`);
  const a = service(src);
  const b = service(src);
  run(a, 'PUT', 'x'); run(a, 'PUT', 'y');
  run(b, 'PUT', 'y'); run(b, 'PUT', 'x');
  assert.notEqual(a.digest(), b.digest());
  const c = service(src);
  c.restore(a.snapshot());
  assert.equal(c.digest(), a.digest());
  assert.deepEqual(run(c, 'ORDER'), run(a, 'ORDER'));
});

test('the three examples load and answer', () => {
  const ex = (p: string): string => fileURLToPath(new URL(`../../examples/services/${p}`, import.meta.url));
  for (const [file, cmd] of [['bank/bank.js', ['AUDIT']], ['locks/locks.js', ['HOLDER', 'x']], ['jobs/jobs.js', ['STATS']]] as const) {
    const s = new ReplicatedService(loadServiceModule(ex(file)).machine(), 'rsm');
    assert.notEqual(s.execute({ clientId: null, seq: 1, ackedBelow: 0, command: cmd }).reply.kind, 'error', file);
  }
});

test('the config refuses a module service it cannot run, naming the field', () => {
  const cfg = (service: Record<string, unknown>): string => JSON.stringify({
    cluster: 'c', arbiter: 'file:a', service,
    nodes: [{ id: 'n1', peer: '127.0.0.1:9000', client: '127.0.0.1:9001', admin: '127.0.0.1:9002' }],
  });
  const ok = parseConfig(cfg({ kind: 'module', module: 'bank.js', mode: 'rsm' }), 'c.json', '/srv');
  assert.deepEqual(ok.service, { kind: 'module', module: '/srv/bank.js', mode: 'rsm', digestEvery: 1, timeoutMs: 1000 });
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ kind: 'module', module: 'bank.ts', mode: 'rsm' }, /service\.module: must be the path of a \.js or \.mjs file/],
    [{ kind: 'module', module: 'bank.js', mode: 'fast' }, /service\.mode: must be "rsm" or "state-transfer"/],
    [{ kind: 'module', module: 'bank.js' }, /service\.mode: missing/],
    [{ kind: 'module', module: 'bank.js', mode: 'rsm', digestEvery: -1 }, /service\.digestEvery: must be an integer from 0/],
    [{ kind: 'module', module: 'bank.js', mode: 'rsm', timeoutMs: 0 }, /service\.timeoutMs: must be an integer from 1/],
    [{ kind: 'module', module: 'bank.js', mode: 'rsm', listen: [] }, /unknown key service\.listen/],
  ];
  for (const [service, want] of bad) {
    assert.throws(() => parseConfig(cfg(service), 'c.json', '/srv'), (e: unknown) => e instanceof LockstepError && e.code === 'E_CONFIG_INVALID' && want.test(e.message), JSON.stringify(service));
  }
});

test('the model checker used for the bank finds a stale read and accepts a concurrent one', () => {
  type Op = ModelOp<string[], string>;
  const step = (s: number, [op, n]: string[]): { state: number; output: string } =>
    op === 'ADD' ? { state: s + Number(n), output: String(s + Number(n)) } : { state: s, output: String(s) };
  const check = (ops: Op[]) => checkLinearizable(ops, 0, step, (a, b) => a === b, String);
  const add: Op = { call: 0, ret: 10, input: ['ADD', '5'], output: '5' };
  // A read after the add returned that still sees 0: stale.
  assert.equal(check([add, { call: 11, ret: 12, input: ['GET'], output: '0' }]).ok, false);
  // The same read overlapping the add may see either.
  assert.equal(check([add, { call: 5, ret: 12, input: ['GET'], output: '0' }]).ok, true);
  assert.equal(check([add, { call: 5, ret: 12, input: ['GET'], output: '5' }]).ok, true);
  // An add applied twice (a retry that ran again) explains no reply of 10 with one add.
  assert.equal(check([add, { call: 20, ret: 30, input: ['GET'], output: '10' }]).ok, false);
});

test('the model checker takes long histories (its search keeps its own stack, not the call stack)', () => {
  type Op = ModelOp<string[], string>;
  const step = (s: number, [op, n]: string[]): { state: number; output: string } =>
    op === 'ADD' ? { state: s + Number(n), output: String(s + Number(n)) } : { state: s, output: String(s) };
  // 12,000 adds one after the other: a recursion per op placed overflowed the call stack.
  const ops: Op[] = Array.from({ length: 12_000 }, (_, i) => ({ call: i * 10, ret: i * 10 + 5, input: ['ADD', '1'], output: String(i + 1) }));
  assert.equal(checkLinearizable(ops, 0, step, (a, b) => a === b, String).ok, true);
});
