// Tests for the history parser/pairer and the linearizability checker: hand-written good and bad
// histories, per-key independence, time ties, the failure report, the state budget, a seeded
// cross-check against a brute-force permutation checker on tiny histories, and a speed bound.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pairOperations, parseHistoryLines, type HistoryEvent, type OpF, type Operation } from '../src/sim/history.js';
import { checkHistory, checkOperations } from '../src/sim/linearizability.js';
import { LockstepError } from '../src/errors.js';

type T = HistoryEvent['type'];
/** [process, type, f, key, value, time] */
type Row = readonly [number, T, OpF, string, string | null, number];
const evs = (rows: readonly Row[]): HistoryEvent[] =>
  rows.map(([process, type, f, key, value, time]) => ({ process, type, f, key, value, time }));
const check = (rows: readonly Row[]) => checkHistory(evs(rows));
const accepts = (rows: readonly Row[]) => assert.equal(check(rows).ok, true);
const rejects = (rows: readonly Row[]) => {
  const r = check(rows);
  assert.equal(r.ok, false);
  assert.ok(r.failure && !r.timedOut);
};

// --- parsing and pairing ---------------------------------------------------------------------

test('parseHistoryLines: fields, blank lines, defaults', () => {
  const text = '{"process":1,"type":"invoke","f":"get","key":"k","time":1}\n\n  \r\n' +
    '{"process":1,"type":"ok","f":"get","key":"k","value":"v","time":2}\r\n';
  assert.deepEqual(parseHistoryLines(text), [
    { process: 1, type: 'invoke', f: 'get', key: 'k', value: null, time: 1 },
    { process: 1, type: 'ok', f: 'get', key: 'k', value: 'v', time: 2 },
  ]);
});

test('parseHistoryLines: errors name the line and the field', () => {
  const bad = (text: string, code: string, re: RegExp) =>
    assert.throws(() => parseHistoryLines(text), (e: unknown) => e instanceof LockstepError && e.code === code && re.test(e.message));
  const good = '{"process":1,"type":"invoke","f":"get","key":"k","time":1}\n';
  bad(good + '\n{"process":1,', 'E_HISTORY_PARSE', /^line 3: not valid JSON/);
  bad(good + '[1]', 'E_HISTORY_EVENT', /^line 2: expected a JSON object/);
  bad(good + '{"type":"ok","f":"get","key":"k","time":2}', 'E_HISTORY_EVENT', /^line 2: field "process" is missing/);
  bad('{"process":1.5,"type":"ok","f":"get","key":"k","time":2}', 'E_HISTORY_EVENT', /line 1: field "process" must be an integer/);
  bad('{"process":1,"type":"done","f":"get","key":"k","time":2}', 'E_HISTORY_EVENT', /field "type"/);
  bad('{"process":1,"type":"ok","f":"cas","key":"k","time":2}', 'E_HISTORY_EVENT', /field "f"/);
  bad('{"process":1,"type":"ok","f":"get","key":3,"time":2}', 'E_HISTORY_EVENT', /field "key" must be a string/);
  bad('{"process":1,"type":"ok","f":"get","key":"k","value":7,"time":2}', 'E_HISTORY_EVENT', /field "value"/);
  bad('{"process":1,"type":"ok","f":"get","key":"k","time":"x"}', 'E_HISTORY_EVENT', /field "time" must be a finite number/);
  bad('{"process":1,"type":"invoke","f":"set","key":"k","time":1}', 'E_HISTORY_EVENT', /line 1: field "value" must be a string for an invoke of set/);
});

test('pairOperations: ok, fail, info, pending; ids in call order', () => {
  const ops = pairOperations(evs([
    [1, 'invoke', 'set', 'k', 'a', 1],
    [2, 'invoke', 'get', 'k', null, 2],
    [3, 'invoke', 'append', 'k', 'x', 3],
    [4, 'invoke', 'del', 'k', null, 4],
    [5, 'invoke', 'get', 'k', null, 4],
    [2, 'ok', 'get', 'k', 'a', 5],
    [1, 'ok', 'set', 'k', 'ignored', 6],
    [3, 'info', 'append', 'k', null, 7],
    [4, 'fail', 'del', 'k', null, 8],
    [6, 'invoke', 'set', 'k', 'b', 9],
  ]));
  assert.deepEqual(ops.map((o) => [o.id, o.process, o.f, o.input, o.output, o.call, o.ret, o.outcome]), [
    [0, 1, 'set', 'a', null, 1, 6, 'ok'],
    [1, 2, 'get', null, 'a', 2, 5, 'ok'],
    [2, 3, 'append', 'x', null, 3, Infinity, 'info'],
    [3, 6, 'set', 'b', null, 9, Infinity, 'info'],
  ]); // the failed del and the get that never completed are dropped
});

test('pairOperations: order errors name the line (or event)', () => {
  const bad = (text: string, re: RegExp) =>
    assert.throws(() => pairOperations(parseHistoryLines(text)), (e: unknown) => e instanceof LockstepError && e.code === 'E_HISTORY_ORDER' && re.test(e.message));
  const inv = (p: number, t: number, f = 'get', key = 'k') => `{"process":${p},"type":"invoke","f":"${f}","key":"${key}","value":"v","time":${t}}\n`;
  const done = (p: number, t: number, f = 'get', key = 'k', type = 'ok') => `{"process":${p},"type":"${type}","f":"${f}","key":"${key}","time":${t}}\n`;
  bad(inv(1, 1) + '\n' + done(2, 2), /^line 3: ok of get for process 2, which has no pending invoke/);
  bad(inv(1, 1) + inv(1, 2), /^line 2: process 1 invokes get while its get invoked at line 1 is pending/);
  bad(inv(1, 1) + done(1, 2, 'set'), /^line 2: ok of set "k" for process 1 does not match its invoke of get "k"/);
  bad(inv(1, 1) + done(1, 2, 'get', 'j', 'fail'), /^line 2: fail of get "j" .* does not match/);
  bad(inv(1, 5) + done(1, 4), /^line 2: time 4 is before the previous event's time 5/);
  assert.throws(() => pairOperations(evs([[1, 'ok', 'get', 'k', null, 1]])), /^LockstepError: event 1: ok of get/);
  assert.throws(() => pairOperations([{ process: 1, type: 'invoke', f: 'get', key: 'k', value: null, time: NaN }]),
    (e: unknown) => e instanceof LockstepError && e.code === 'E_HISTORY_EVENT' && /event 1: field "time"/.test(e.message));
});

// --- known-good histories --------------------------------------------------------------------

test('sequential history is linearizable', () => {
  accepts([
    [1, 'invoke', 'get', 'k', null, 0], [1, 'ok', 'get', 'k', null, 1],
    [1, 'invoke', 'set', 'k', 'a', 2], [1, 'ok', 'set', 'k', null, 3],
    [2, 'invoke', 'append', 'k', 'b', 4], [2, 'ok', 'append', 'k', null, 5],
    [1, 'invoke', 'get', 'k', null, 6], [1, 'ok', 'get', 'k', 'ab', 7],
    [2, 'invoke', 'del', 'k', null, 8], [2, 'ok', 'del', 'k', null, 9],
    [1, 'invoke', 'get', 'k', null, 10], [1, 'ok', 'get', 'k', null, 11],
    [2, 'invoke', 'append', 'k', 'c', 12], [2, 'ok', 'append', 'k', null, 13],
    [1, 'invoke', 'get', 'k', null, 14], [1, 'ok', 'get', 'k', 'c', 15],
  ]);
});

test('concurrent overlapping writes: a later read may see either, consistently', () => {
  const writes: Row[] = [
    [1, 'invoke', 'set', 'k', 'x', 0], [2, 'invoke', 'set', 'k', 'y', 1],
    [1, 'ok', 'set', 'k', null, 10], [2, 'ok', 'set', 'k', null, 11],
  ];
  const read = (p: number, v: string | null, t: number): Row[] => [[p, 'invoke', 'get', 'k', null, t], [p, 'ok', 'get', 'k', v, t + 1]];
  accepts([...writes, ...read(3, 'x', 12)]);
  accepts([...writes, ...read(3, 'y', 12)]);
  rejects([...writes, ...read(3, null, 12)]);
  rejects([...writes, ...read(3, 'x', 12), ...read(3, 'y', 14)]); // flip-flop after both completed
  // reads during the writes may see nothing, x then y
  accepts([
    [1, 'invoke', 'set', 'k', 'x', 0], [2, 'invoke', 'set', 'k', 'y', 1],
    [3, 'invoke', 'get', 'k', null, 2], [3, 'ok', 'get', 'k', null, 3],
    [3, 'invoke', 'get', 'k', null, 4], [3, 'ok', 'get', 'k', 'x', 5],
    [3, 'invoke', 'get', 'k', null, 6], [3, 'ok', 'get', 'k', 'y', 7],
    [1, 'ok', 'set', 'k', null, 10], [2, 'ok', 'set', 'k', null, 11],
  ]);
  // concurrent appends in either order
  accepts([
    [1, 'invoke', 'append', 'k', 'a', 0], [2, 'invoke', 'append', 'k', 'b', 1],
    [1, 'ok', 'append', 'k', null, 2], [2, 'ok', 'append', 'k', null, 3],
    [3, 'invoke', 'get', 'k', null, 4], [3, 'ok', 'get', 'k', 'ba', 5],
  ]);
});

test('info writes may or may not have happened, at any time after their call', () => {
  const info: Row[] = [[1, 'invoke', 'set', 'k', 'x', 0], [1, 'info', 'set', 'k', null, 1]];
  const read = (v: string | null, t: number): Row[] => [[2, 'invoke', 'get', 'k', null, t], [2, 'ok', 'get', 'k', v, t + 1]];
  accepts([...info, ...read('x', 2)]); // happened
  accepts([...info, ...read(null, 2)]); // did not happen (yet)
  accepts([...info, ...read(null, 2), ...read('x', 4)]); // happened late, long after the info
  rejects([...info, ...read('x', 2), ...read(null, 4)]); // cannot un-happen
  rejects([...read('x', -3), ...info]); // cannot take effect before its call
  // no completion at all: same as info
  accepts([[1, 'invoke', 'append', 'k', 'x', 0], ...read('x', 2), ...read('x', 4)]);
  // an info get constrains nothing
  accepts([[1, 'invoke', 'get', 'k', null, 0], [1, 'info', 'get', 'k', 'zzz', 1]]);
  // a failed write did not happen
  rejects([[1, 'invoke', 'set', 'k', 'x', 0], [1, 'fail', 'set', 'k', null, 1], ...read('x', 2)]);
  // several info appends, only some happened, in some order
  accepts([
    [1, 'invoke', 'append', 'k', 'a', 0], [2, 'invoke', 'append', 'k', 'b', 1], [3, 'invoke', 'append', 'k', 'c', 2],
    [1, 'info', 'append', 'k', null, 3], [2, 'info', 'append', 'k', null, 4], [3, 'info', 'append', 'k', null, 5],
    ...read('c', 6), ...read('ca', 8),
  ]);
});

// --- known-bad histories ---------------------------------------------------------------------

const seq = (...ops: [OpF, string | null][]): Row[] =>
  ops.flatMap(([f, v], i): Row[] => [
    [1, 'invoke', f, 'k', f === 'get' ? null : v, 2 * i],
    [1, 'ok', f, 'k', f === 'get' ? v : null, 2 * i + 1],
  ]);

test('stale read after a later write completed is rejected', () => {
  rejects(seq(['set', 'a'], ['set', 'b'], ['get', 'a']));
});

test('lost append is rejected', () => {
  rejects(seq(['append', 'x'], ['append', 'y'], ['get', 'x']));
  rejects(seq(['append', 'x'], ['append', 'y'], ['get', 'y']));
  rejects([ // concurrent appends, both acknowledged, then a read that lost one
    [1, 'invoke', 'append', 'k', 'x', 0], [2, 'invoke', 'append', 'k', 'y', 1],
    [1, 'ok', 'append', 'k', null, 2], [2, 'ok', 'append', 'k', null, 3],
    [3, 'invoke', 'get', 'k', null, 4], [3, 'ok', 'get', 'k', 'y', 5],
  ]);
});

test('duplicated append is rejected', () => {
  rejects(seq(['append', 'x'], ['get', 'xx']));
  rejects(seq(['append', 'x'], ['append', 'y'], ['get', 'xyx']));
});

test('read of a value never written is rejected', () => {
  rejects(seq(['set', 'a'], ['get', 'b']));
  rejects(seq(['get', 'a']));
});

test('ignored del is rejected', () => {
  rejects(seq(['set', 'a'], ['del', null], ['get', 'a']));
  rejects(seq(['append', 'a'], ['del', null], ['append', 'b'], ['get', 'ab']));
  accepts(seq(['append', 'a'], ['del', null], ['append', 'b'], ['get', 'b']));
});

test('time ties follow file order in event histories, and are concurrent without positions', () => {
  const setThenGet: Row[] = [[1, 'invoke', 'set', 'k', 'x', 0], [1, 'ok', 'set', 'k', null, 5], [2, 'invoke', 'get', 'k', null, 5], [2, 'ok', 'get', 'k', null, 6]];
  rejects(setThenGet); // the set returned (line 2) before the get was invoked (line 3)
  const overlapping: Row[] = [setThenGet[0]!, setThenGet[2]!, setThenGet[1]!, setThenGet[3]!];
  accepts(overlapping);
  const stripped = pairOperations(evs(setThenGet)).map(({ callSeq: _c, retSeq: _r, ...o }): Operation => o);
  assert.equal(checkOperations(stripped).ok, true);
});

test('the failure report names the stuck ops, the prefix, the state and the read that rules them out', () => {
  const f = check([
    [1, 'invoke', 'append', 'k', 'x', 0], [1, 'ok', 'append', 'k', null, 1],
    [1, 'invoke', 'append', 'k', 'y', 2], [1, 'ok', 'append', 'k', null, 3],
    [2, 'invoke', 'get', 'k', null, 10], [3, 'invoke', 'append', 'k', 'z', 11], [2, 'ok', 'get', 'k', 'x', 12],
  ]).failure!;
  assert.equal(f.key, 'k');
  assert.deepEqual(f.prefix!.map((o) => o.input), ['x']);
  assert.equal(f.state, 'x');
  assert.deepEqual(f.unplaced!.map((o) => [o.f, o.input, o.call, o.ret]), [['append', 'y', 2, 3]]);
  assert.deepEqual(f.blockingReads!.map((o) => [o.f, o.output, o.call, o.ret]), [['get', 'x', 10, 12]]);
  // a read that cannot be placed is itself among the unplaced ops
  const g = check(seq(['set', 'a'], ['get', 'b'])).failure!;
  assert.deepEqual(g.unplaced!.map((o) => [o.f, o.output ?? o.input]), [['set', 'a']]);
  assert.deepEqual(g.blockingReads!.map((o) => o.output), ['b']);
  const h = check([[1, 'invoke', 'get', 'k', null, 0], [1, 'ok', 'get', 'k', 'q', 1]]).failure!;
  assert.deepEqual([h.prefix, h.unplaced!.map((o) => o.output), h.state], [[], ['q'], null]);
});

test('keys are checked independently; the bad key is named', () => {
  const onKey = (key: string, rows: Row[], p: number): Row[] => rows.map(([, ty, f, , v, t]) => [p, ty, f, key, v, t] as Row);
  const r = check([
    ...onKey('a', seq(['set', '1'], ['get', '1']), 1),
    ...onKey('b', seq(['set', '1'], ['set', '2'], ['get', '1']), 2),
    ...onKey('c', seq(['append', '1'], ['get', '1']), 3),
  ].sort((x, y) => x[5] - y[5]));
  assert.equal(r.ok, false);
  assert.equal(r.failure?.key, 'b');
  assert.deepEqual(r.keys.map((k) => [k.key, k.ok]), [['a', true], ['b', false], ['c', true]]);
  assert.deepEqual(check([]), { ok: true, keys: [] });
});

test('the state budget stops the search and reports timedOut, not a failure', () => {
  const rows = seq(['set', 'a'], ['get', 'a'], ['append', 'b'], ['get', 'ab'], ['del', null], ['get', null]);
  const r = checkHistory(evs(rows), { maxStatesPerKey: 3 });
  assert.equal(r.ok, false);
  assert.equal(r.timedOut, true);
  assert.equal(r.failure, undefined);
  assert.equal(r.keys[0]?.timedOut, true);
  assert.equal(checkHistory(evs(rows), { maxStatesPerKey: 6 }).ok, true);
});

// --- randomized cross-check ------------------------------------------------------------------

function prng(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Gen {
  processes: number; ops: number; keys: readonly string[];
  tieTimes?: boolean; crashes?: boolean; unique?: boolean;
  /** chance that a completion comes before the op took effect (then fail or info), and that an op that took effect ends info */
  lost?: number; info?: number;
}

/** Runs ops against a sequential model, each taking effect at a random point between its invoke
 *  and its completion (or not at all, for fail / some info). A crashed client leaves its op
 *  pending forever and comes back under a new process id. Values come from a tiny alphabet (to
 *  make coincidences likely) or are unique (as a real workload's are). */
function generate(rand: () => number, g: Gen): HistoryEvent[] {
  const pick = <X>(xs: readonly X[]): X => xs[Math.floor(rand() * xs.length)]!;
  const model = new Map<string, string | null>();
  const out: HistoryEvent[] = [];
  interface Pending { f: OpF; key: string; value: string | null; applied: boolean; read: string | null }
  const procs: (Pending | null)[] = Array.from({ length: g.processes }, () => null);
  const ids = procs.map((_, i) => i);
  let [step, started, token, nextId] = [0, 0, 0, g.processes];
  const emit = (i: number, type: HistoryEvent['type'], f: OpF, key: string, value: string | null) =>
    out.push({ process: ids[i]!, type, f, key, value, time: g.tieTimes ? Math.floor(step++ / 3) : step++ });
  while (started < g.ops || procs.some((p) => p !== null)) {
    const i = Math.floor(rand() * g.processes);
    const p = procs[i];
    if (!p) {
      if (started >= g.ops) continue;
      started++;
      const f = pick<OpF>(['get', 'get', 'set', 'append', 'append', 'del']);
      const key = pick(g.keys);
      const value = f === 'set' ? (g.unique ? `s${token++}` : pick(['a', 'b', 'c'])) : f === 'append' ? (g.unique ? `[${token++}]` : pick(['x', 'y', 'z'])) : null;
      emit(i, 'invoke', f, key, value);
      procs[i] = { f, key, value, applied: false, read: null };
    } else if (!p.applied && rand() >= (g.lost ?? 0.4)) {
      const cur = model.get(p.key) ?? null;
      p.read = cur;
      if (p.f === 'set') model.set(p.key, p.value);
      else if (p.f === 'append') model.set(p.key, (cur ?? '') + p.value);
      else if (p.f === 'del') model.set(p.key, null);
      p.applied = true;
    } else {
      const r = rand();
      if (g.crashes && r < 0.03) ids[i] = nextId++; // the op never completes
      else {
        const type = !p.applied ? (r < 0.5 ? 'fail' : 'info') : r < (g.info ?? 0.1) ? 'info' : 'ok';
        emit(i, type, p.f, p.key, type === 'ok' && p.f === 'get' ? p.read : null);
      }
      procs[i] = null;
    }
  }
  return out;
}

/** Sets one ok get's read value to another from a small pool (it may or may not be explainable). */
function mutate(rand: () => number, events: HistoryEvent[]): HistoryEvent[] | undefined {
  const reads = events.flatMap((e, i) => (e.type === 'ok' && e.f === 'get' ? [i] : []));
  if (reads.length === 0) return undefined;
  const at = reads[Math.floor(rand() * reads.length)]!;
  const old = events[at]!.value;
  const pool = [null, 'a', 'b', 'c', 'x', 'y', 'xy', 'yx', 'xx', 'ax', 'q'].filter((v) => v !== old);
  const value = pool[Math.floor(rand() * pool.length)]!;
  return events.map((e, i) => (i === at ? { ...e, value } : e));
}

/** Tries every subset of info ops and every order of the chosen ops that respects real time. */
function bruteForce(all: readonly Operation[]): boolean {
  const ops = all.filter((o) => !(o.f === 'get' && o.outcome === 'info'));
  const useSeq = ops.every((o) => o.callSeq !== undefined && (o.outcome === 'info' || o.retSeq !== undefined));
  const before = (a: Operation, b: Operation) => (useSeq ? a.retSeq! < b.callSeq! : a.ret < b.call);
  for (const key of new Set(ops.map((o) => o.key))) {
    const mine = ops.filter((o) => o.key === key);
    const infos = mine.filter((o) => o.outcome === 'info');
    let found = false;
    for (let mask = 0; mask < 1 << infos.length && !found; mask++) {
      const chosen = mine.filter((o) => o.outcome === 'ok' || (mask >> infos.indexOf(o)) & 1);
      const dfs = (placed: Set<Operation>, state: string | null): boolean => {
        if (placed.size === chosen.length) return true;
        for (const o of chosen) {
          if (placed.has(o) || chosen.some((p) => !placed.has(p) && p !== o && before(p, o))) continue;
          if (o.f === 'get' && o.output !== state) continue;
          const next = o.f === 'get' ? state : o.f === 'set' ? o.input : o.f === 'append' ? (state ?? '') + o.input : null;
          placed.add(o);
          if (dfs(placed, next)) return true;
          placed.delete(o);
        }
        return false;
      };
      found = dfs(new Set(), null);
    }
    if (!found) return false;
  }
  return true;
}

test('randomized: verdicts agree with a brute-force checker on 300 tiny histories', () => {
  const rand = prng(20240601);
  let valid = 0, rejected = 0;
  for (let n = 0; n < 300; n++) {
    const g: Gen = { processes: 2 + Math.floor(rand() * 3), ops: 2 + Math.floor(rand() * 5), keys: rand() < 0.7 ? ['k'] : ['k', 'j'], tieTimes: rand() < 0.3, crashes: rand() < 0.5 };
    const base = generate(rand, g);
    const events = n % 3 === 0 ? base : mutate(rand, base) ?? base;
    const ops = pairOperations(events);
    assert.ok(ops.length <= 6);
    const expected = bruteForce(ops);
    const got = checkOperations(ops);
    assert.equal(got.ok, expected, `history ${n}: checker ${got.ok}, brute force ${expected}\n${events.map((e) => JSON.stringify(e)).join('\n')}`);
    if (events === base) assert.equal(got.ok, true, `generated history ${n} must be linearizable`);
    if (expected) valid++;
    else rejected++;
  }
  assert.ok(valid > 100 && rejected > 60, `a useful mix: ${valid} valid, ${rejected} rejected`);
});

test('randomized: larger generated histories are accepted; a read of a never-written value is not', () => {
  const rand = prng(7);
  for (let n = 0; n < 60; n++) {
    const g: Gen = { processes: 3 + Math.floor(rand() * 6), ops: 30 + Math.floor(rand() * 270), keys: ['k', 'j', 'm'].slice(0, 1 + (n % 3)), tieTimes: n % 2 === 0, crashes: true, unique: n % 4 !== 0, lost: 0.1, info: 0.03 };
    const events = generate(rand, g);
    const r = checkHistory(events);
    assert.equal(r.ok, true, `history ${n}`);
    const reads = events.flatMap((e, i) => (e.type === 'ok' && e.f === 'get' ? [i] : []));
    if (reads.length === 0) continue;
    const at = reads[Math.floor(rand() * reads.length)]!;
    const bad = events.map((e, i) => (i === at ? { ...e, value: 'NEVER' } : e));
    const rb = checkHistory(bad);
    assert.equal(rb.failure?.key, events[at]!.key, `mutated history ${n}`);
  }
});

test('performance: 5 processes x 400 ops on 4 keys checks quickly', () => {
  const events = generate(prng(99), { processes: 5, ops: 2000, keys: ['a', 'b', 'c', 'd'], unique: true, crashes: true });
  const t0 = performance.now();
  const r = checkHistory(events);
  const ms = performance.now() - t0;
  assert.equal(r.ok, true);
  assert.ok(ms < 3000, `took ${ms.toFixed(0)} ms`);
});
