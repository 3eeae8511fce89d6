// Stock Redis clients against real lockstep processes: redis-cli (commands and their exact
// output, ROLE, INFO replication, NOTPRIMARY on the backup, piped input), ioredis in sentinel
// mode across a kill -9 of the primary (no acknowledged write lost, no failover code of ours),
// and redis-benchmark as a smoke test. The README promises "speak to it with any Redis
// client"; this is where that is checked. Needs redis-tools (.ci/run installs it); on a
// developer machine without the binaries those suites are skipped, in CI they fail.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { Redis } from 'ioredis';
import { ProcessCluster } from '../src/testing/process-cluster.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function installed(bin: string): boolean {
  return spawnSync(bin, ['--version'], { stdio: 'ignore' }).status === 0;
}
const HAVE_CLI = installed('redis-cli');
const HAVE_BENCH = installed('redis-benchmark');
// In CI the tools are installed by .ci/run: a missing one there is a broken CI, not a skip.
if (process.env.CI && !(HAVE_CLI && HAVE_BENCH)) throw new Error('CI without redis-cli/redis-benchmark: .ci/run must install redis-tools');

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a binary with optional stdin, killing it after `timeoutMs`. */
function run(bin: string, args: readonly string[], input?: string, timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.on('error', () => {}); // the child may exit before reading everything
    child.stdin.end(input ?? '');
  });
}

/** `redis-cli --no-raw -p port args...`: Redis's typed output ((integer) 1, "v", (nil)). */
async function cli(port: number, ...args: string[]): Promise<string> {
  const r = await run('redis-cli', ['--no-raw', '-p', String(port), ...args]);
  assert.equal(r.code, 0, `redis-cli ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** `redis-cli -p port args...` with stdout not a terminal: raw mode, one line per value. */
async function cliRaw(port: number, ...args: string[]): Promise<string[]> {
  const r = await run('redis-cli', ['-p', String(port), ...args]);
  assert.equal(r.code, 0, `redis-cli ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.replace(/\n$/, '').split('\n');
}

/** Node ids and client ports of the primary, the backup and the spare of a 3-node cluster. */
async function roles(cluster: ProcessCluster): Promise<{ primary: string; backup: string; spare: string; port: (id: string) => number }> {
  const p = await cluster.primary();
  assert.ok(p, 'a primary');
  const backup = p.view.backup;
  assert.ok(backup, 'with a backup');
  const spare = cluster.nodes.map((n) => n.id).find((id) => id !== p.id && id !== backup);
  assert.ok(spare, 'and a spare');
  return { primary: p.id, backup, spare, port: (id) => cluster.node(id).client.port };
}

/** Wait until the backup holds everything the primary logged (so ROLE/INFO offsets agree). */
async function quiet(cluster: ProcessCluster, primary: string, backup: string): Promise<number> {
  let index = -1;
  await cluster.waitFor(async () => {
    const [p, b] = await Promise.all([cluster.status(primary), cluster.status(backup)]);
    if (!p || !b || p.lag !== 0 || p.logIndex !== b.logIndex) return false;
    index = p.logIndex;
    return true;
  }, 20_000, 'the backup to catch up');
  return index;
}

describe('redis-cli against a three-node cluster', { skip: HAVE_CLI ? false : 'redis-cli not installed (apt-get install redis-tools)', timeout: 180_000 }, () => {
  let cluster: ProcessCluster;
  let ids: Awaited<ReturnType<typeof roles>>;
  before(async () => {
    cluster = await ProcessCluster.start({ nodes: 3 });
    ids = await roles(cluster);
  });
  after(async () => {
    await cluster?.stop();
  });

  test('SET, GET, INCR, APPEND, MGET, DEL on the primary, with their exact output', async () => {
    const P = ids.port(ids.primary);
    assert.equal(await cli(P, 'SET', 'greeting', 'hello'), 'OK\n');
    assert.equal(await cli(P, 'GET', 'greeting'), '"hello"\n');
    assert.equal(await cli(P, 'GET', 'missing'), '(nil)\n');
    assert.equal(await cli(P, 'INCR', 'counter'), '(integer) 1\n');
    assert.equal(await cli(P, 'INCR', 'counter'), '(integer) 2\n');
    assert.equal(await cli(P, 'APPEND', 'greeting', ', world'), '(integer) 12\n');
    assert.equal(await cli(P, 'GET', 'greeting'), '"hello, world"\n');
    assert.equal(await cli(P, 'MGET', 'greeting', 'counter', 'missing'), '1) "hello, world"\n2) "2"\n3) (nil)\n');
    assert.equal(await cli(P, 'INCR', 'greeting'), '(error) ERR value is not an integer or out of range\n');
    assert.equal(await cli(P, 'DEL', 'greeting', 'counter', 'missing'), '(integer) 2\n');
    assert.equal(await cli(P, 'MGET', 'greeting', 'counter'), '1) (nil)\n2) (nil)\n');
    // Raw mode (the default when stdout is not a terminal), as in shell scripts.
    assert.deepEqual(await cliRaw(P, 'SET', 'k', 'v'), ['OK']);
    assert.deepEqual(await cliRaw(P, 'GET', 'k'), ['v']);
    assert.deepEqual(await cliRaw(P, 'INCR', 'n'), ['1']);
  });

  test('PING, ECHO and SELECT 0 on every node; SELECT 1 refused', async () => {
    for (const id of [ids.primary, ids.backup, ids.spare]) {
      const port = ids.port(id);
      assert.equal(await cli(port, 'PING'), 'PONG\n', id);
      assert.equal(await cli(port, 'PING', 'hi there'), '"hi there"\n', id);
      assert.equal(await cli(port, 'ECHO', 'lockstep'), '"lockstep"\n', id);
      assert.equal(await cli(port, 'SELECT', '0'), 'OK\n', id);
    }
    assert.match(await cli(ids.port(ids.primary), 'SELECT', '1'), /^\(error\) ERR DB index is out of range\n$/);
  });

  test('ROLE on primary, backup and spare, in Redis reply format', async () => {
    const P = ids.port(ids.primary);
    const B = ids.port(ids.backup);
    await cli(P, 'SET', 'role-test', 'x');
    const index = await quiet(cluster, ids.primary, ids.backup);
    assert.ok(index > 0);
    // master, log index, [[backup host, backup port, acked index]]
    assert.deepEqual(await cliRaw(P, 'ROLE'), ['master', String(index), '127.0.0.1', String(B), String(index)]);
    assert.equal(
      await cli(P, 'ROLE'),
      `1) "master"\n2) (integer) ${index}\n3) 1) 1) "127.0.0.1"\n      2) "${B}"\n      3) "${index}"\n`,
    );
    // slave, primary host, primary port, connected, offset
    assert.deepEqual(await cliRaw(B, 'ROLE'), ['slave', '127.0.0.1', String(P), 'connected', String(index)]);
    const spare = await cliRaw(ids.port(ids.spare), 'ROLE');
    assert.equal(spare[0], 'slave', 'the spare calls itself a replica');
    assert.equal(spare.at(-1), '-1', 'with no offset: it holds no state');
  });

  test('INFO replication on primary and backup', async () => {
    const P = ids.port(ids.primary);
    const B = ids.port(ids.backup);
    const index = await quiet(cluster, ids.primary, ids.backup);
    const fields = (text: string): Map<string, string> =>
      new Map(text.split(/\r?\n/).filter((l) => l.includes(':')).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]));
    const p = fields(await cli(P, 'INFO', 'replication'));
    assert.equal(p.get('role'), 'master');
    assert.equal(p.get('lockstep_role'), 'primary');
    assert.equal(p.get('connected_slaves'), '1');
    assert.equal(p.get('slave0'), `ip=127.0.0.1,port=${B},state=online,offset=${index},lag=0`);
    assert.equal(p.get('master_repl_offset'), String(index));
    const b = fields(await cli(B, 'INFO', 'replication'));
    assert.equal(b.get('role'), 'slave');
    assert.equal(b.get('lockstep_role'), 'backup');
    assert.equal(b.get('master_host'), '127.0.0.1');
    assert.equal(b.get('master_port'), String(P));
    assert.equal(b.get('master_link_status'), 'up');
    assert.equal(b.get('slave_repl_offset'), String(index));
    assert.equal(b.get('epoch'), p.get('epoch'));
  });

  test('a write on the backup gets NOTPRIMARY naming the primary and its address; nothing is written', async () => {
    const P = ids.port(ids.primary);
    const B = ids.port(ids.backup);
    const out = await cli(B, 'SET', 'on-backup', '1');
    const re = new RegExp(`^\\(error\\) NOTPRIMARY the primary is ${ids.primary} at 127\\.0\\.0\\.1:${P}\\b.*\\n$`);
    assert.match(out, re);
    assert.match(await cli(B, 'INCR', 'on-backup'), re);
    assert.match(await cli(B, 'GET', 'on-backup'), re, 'reads too: only the primary answers kv commands');
    assert.equal(await cli(P, 'GET', 'on-backup'), '(nil)\n');
  });

  test('redis-cli reading many commands from stdin (redis-cli -p PORT < file)', async () => {
    const P = ids.port(ids.primary);
    const n = 400;
    const lines: string[] = [];
    const expected: string[] = [];
    for (let i = 1; i <= n; i++) {
      lines.push(`SET piped:${i} "value ${i}"`, 'INCR piped:count', `APPEND piped:log ${i % 10}`, `GET piped:${i}`);
      expected.push('OK', `(integer) ${i}`, `(integer) ${i}`, `"value ${i}"`);
    }
    lines.push('MGET piped:1 piped:nope', 'DEL piped:count');
    expected.push('1) "value 1"', '2) (nil)', '(integer) 1');
    const r = await run('redis-cli', ['--no-raw', '-p', String(P)], lines.join('\n') + '\n', 120_000);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.replace(/\n$/, '').split('\n'), expected);
    const log = (await cliRaw(P, 'GET', 'piped:log'))[0]!;
    assert.equal(log.length, n);
  });

  test('redis-cli --pipe (RESP on stdin, replies counted)', async () => {
    const P = ids.port(ids.primary);
    const n = 2000;
    const enc = (...parts: string[]): string => `*${parts.length}\r\n` + parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join('');
    let input = '';
    for (let i = 0; i < n; i++) input += enc('SET', `mass:${i}`, `v${i}`);
    const r = await run('redis-cli', ['-p', String(P), '--pipe'], input, 120_000);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`errors: 0, replies: ${n}`));
    assert.deepEqual(await cliRaw(P, 'MGET', 'mass:0', `mass:${n - 1}`), ['v0', `v${n - 1}`]);
  });

  test('redis-benchmark -t set,get -n 2000 -c 16 -P 16 -q completes and reports a throughput', { skip: HAVE_BENCH ? false : 'redis-benchmark not installed' }, async (t) => {
    const P = ids.port(ids.primary);
    const r = await run('redis-benchmark', ['-p', String(P), '-t', 'set,get', '-n', '2000', '-c', '16', '-P', '16', '-q'], undefined, 120_000);
    assert.equal(r.code, 0, r.stderr);
    const rps = (name: string): number => {
      const m = new RegExp(`${name}: ([0-9.]+) requests per second`).exec(r.stdout);
      assert.ok(m, `a ${name} line in ${JSON.stringify(r.stdout)}`);
      return Number(m[1]);
    };
    const set = rps('SET');
    const get = rps('GET');
    t.diagnostic(`redis-benchmark: SET ${set} req/s, GET ${get} req/s`);
    assert.ok(set > 0 && get > 0);
    // The cluster is still healthy and consistent afterwards.
    await quiet(cluster, ids.primary, ids.backup);
  });
});

describe('ioredis in sentinel mode', { timeout: 240_000 }, () => {
  test('follows a kill -9 of the primary with no failover code of ours; every acknowledged write survives', async (t) => {
    const cluster = await ProcessCluster.start({ nodes: 3 });
    t.after(() => cluster.stop());
    const ids = await roles(cluster);

    let errors = 0;
    const redis = new Redis({
      sentinels: cluster.nodes.map((n) => ({ host: n.client.host, port: n.client.port })),
      name: cluster.cluster,
      // Reconnect quickly; the defaults (up to 2 s) would only make the test slower.
      retryStrategy: (times: number) => Math.min(times * 50, 500),
      sentinelRetryStrategy: (times: number) => Math.min(times * 50, 500),
      // A deposed primary answers NOTPRIMARY: reconnect (ask the sentinels again) and resend,
      // as ioredis users do for Redis's READONLY.
      reconnectOnError: (err: Error) => (err.message.startsWith('NOTPRIMARY') ? 2 : false),
    });
    t.after(() => redis.disconnect());
    redis.on('error', () => errors++);

    // Every write acknowledged to us, key -> value (a write that failed is retried by us).
    const acked = new Map<string, string>();
    let killedAt = Infinity;
    const ackedBeforeKill = new Set<string>();
    let afterKill = 0;
    let failures = 0;
    let stop = false;

    // Phase 1: writes on the first primary.
    for (let i = 0; i < 200; i++) {
      await redis.set(`pre:${i}`, `v${i}`);
      acked.set(`pre:${i}`, `v${i}`);
    }
    assert.match(await redis.info('server'), new RegExp(`lockstep_node:${ids.primary}\\r\\n`), 'ioredis found the primary');

    // Phase 2: a writer that keeps going through the failover, four writes in flight.
    const writer = async (w: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const key = `live:${w}:${i}`;
        for (;;) {
          if (stop) return;
          try {
            await redis.set(key, `${w}/${i}`);
            break;
          } catch {
            failures++; // e.g. MaxRetriesPerRequestError while no primary was reachable
            await sleep(50);
          }
        }
        acked.set(key, `${w}/${i}`);
        if (Date.now() > killedAt) afterKill++;
      }
    };
    const writers = [0, 1, 2, 3].map(writer);
    try {
      await cluster.waitFor(() => acked.size >= 400, 60_000, 'writes before the kill');
      for (const k of acked.keys()) ackedBeforeKill.add(k);
      killedAt = Date.now();
      await cluster.kill9(ids.primary);
      const t0 = Date.now();
      await cluster.waitFor(() => afterKill >= 200, 90_000, 'writes to succeed again after the kill');
      t.diagnostic(`writes resumed ${Date.now() - t0} ms after kill -9; ${errors} error events, ${failures} failed writes retried`);
    } finally {
      stop = true;
      await Promise.all(writers);
    }

    const now = await cluster.primary();
    assert.equal(now?.id, ids.backup, 'the backup went live');
    assert.match(await redis.info('server'), new RegExp(`lockstep_node:${ids.backup}\\r\\n`), 'ioredis is on the new primary');

    // Every write acknowledged before the kill, and after it, reads back.
    const keys = [...acked.keys()];
    const lost: string[] = [];
    for (let i = 0; i < keys.length; i += 100) {
      const chunk = keys.slice(i, i + 100);
      const values = await redis.mget(...chunk);
      chunk.forEach((k, j) => {
        if (values[j] !== acked.get(k)) lost.push(`${k}=${String(values[j])} (acked ${acked.get(k)})`);
      });
    }
    assert.deepEqual(lost.filter((l) => ackedBeforeKill.has(l.slice(0, l.indexOf('=')))), [], 'no write acknowledged before the kill lost');
    assert.deepEqual(lost, [], 'no acknowledged write lost at all');
    t.diagnostic(`${ackedBeforeKill.size} writes acknowledged before the kill, ${keys.length} in all, all readable`);
  });
});
