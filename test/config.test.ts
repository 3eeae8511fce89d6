// The cluster config file: a valid file parses with every default filled in, and each kind of
// mistake is refused before anything starts, with the right code and a message naming the
// JSON path. Table-driven: each case is a small edit of one valid config.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_SNAPSHOT_CHUNK_BYTES, DEFAULT_SNAPSHOT_WINDOW_CHUNKS, DEFAULT_TIMING } from '../src/core/types.js';
import { isLockstepError } from '../src/errors.js';
import { coreConfigFor, formatAddress, loadConfig, nodeOf, parseConfig } from '../src/node/config.js';
import { validConfig } from '../src/testing/config-fixture.js';

type Json = Record<string, unknown>;

const base = (): Json => validConfig();
const parse = (j: Json) => parseConfig(JSON.stringify(j, null, 2), 'cluster.json', '/etc/lockstep');
const node = (j: Json, i: number) => (j.nodes as Json[])[i]!;

test('a valid config parses with the defaults filled in', () => {
  const c = parse(base());
  assert.equal(c.cluster, 'demo');
  assert.equal(c.arbiter, 'file:.lockstep/arbiter');
  assert.equal(c.baseDir, '/etc/lockstep');
  assert.deepEqual(c.service, { kind: 'kv', mode: 'rsm' });
  assert.deepEqual(c.nodes[1], {
    id: 'n2',
    peer: { host: '127.0.0.1', port: 7102 },
    peerListen: { host: '127.0.0.1', port: 7102 },
    client: { host: '127.0.0.1', port: 7002 },
    admin: { host: '127.0.0.1', port: 7202 },
    arbiter: 'file:.lockstep/arbiter',
    dataDir: null,
  });
  assert.equal(c.durable, false);
  assert.equal(c.arbiterTimeoutMs, 1000);
  assert.equal(c.etcd, undefined);
  assert.equal(c.retransmitMs, 150);
  assert.equal(c.arbiterRetryMs, 250);
  assert.equal(c.joinIntervalMs, 200);
  assert.equal(c.maxClientConnections, 10_000);
  assert.equal(c.unackedBytesMax, DEFAULT_TIMING.unackedBytesMax);
  assert.equal(c.catchupEntriesMax, DEFAULT_TIMING.catchupEntriesMax);

  const j = base();
  delete j.heartbeatMs;
  delete j.failureTimeoutMs;
  Object.assign(j, { frameEntriesMax: 7, arbiterRetryMs: 99, service: { kind: 'kv', mode: 'state-transfer' } });
  const d = parse(j);
  assert.equal(d.heartbeatMs, DEFAULT_TIMING.heartbeatMs);
  assert.equal(d.failureTimeoutMs, DEFAULT_TIMING.failureTimeoutMs);
  assert.equal(d.frameEntriesMax, 7);
  assert.equal(d.arbiterRetryMs, 99);
  assert.deepEqual(d.service, { kind: 'kv', mode: 'state-transfer' });

  const h = base();
  Object.assign(h, { heartbeatMs: 20, failureTimeoutMs: 101 });
  const e = parse(h);
  assert.deepEqual([e.retransmitMs, e.arbiterRetryMs, e.joinIntervalMs], [60, 50, 80]);
});

test('maxmemory is no longer tied to one snapshot frame (snapshots go in chunks): 10 M keys fit', () => {
  const j = base();
  j.maxmemory = 4 * 1024 * 1024 * 1024;
  j.dedupBytesMax = 480 * 1024 * 1024;
  j.dedupSessionEntries = 1000;
  const c = parse(j);
  assert.equal(c.maxmemory, 4 * 1024 * 1024 * 1024);
  assert.equal(c.dedupBytesMax, 480 * 1024 * 1024);
  assert.equal(c.dedupSessionEntries, 1000);
  assert.equal(parse(base()).dedupSessionEntries, 10_000_000);
});

test('addresses: hostnames, IPv6 in brackets, formatAddress round-trips', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const secretFile = join(dir, 'secret'); // peers beyond loopback need a secret
  writeFileSync(secretFile, '0123456789abcdef0123456789abcdef\n');
  const j = { ...base(), secretFile };
  Object.assign(node(j, 0), { peer: 'db-1.example.com:7101', client: '[::1]:7001', admin: '[fe80::1]:7201' });
  const c = parse(j);
  assert.deepEqual(c.nodes[0]!.client, { host: '::1', port: 7001 });
  assert.equal(formatAddress(c.nodes[0]!.client), '[::1]:7001');
  assert.equal(formatAddress(c.nodes[0]!.peer), 'db-1.example.com:7101');
  // The same port on different hosts is fine (one node per machine).
  const k = { ...base(), secretFile };
  Object.assign(node(k, 1), { peer: '10.0.0.2:7101', client: '10.0.0.2:7001', admin: '10.0.0.2:7201' });
  Object.assign(node(k, 0), { peer: '10.0.0.1:7101', client: '10.0.0.1:7001', admin: '10.0.0.1:7201' });
  assert.equal(parse(k).nodes.length, 3);
});

test('nodeOf and coreConfigFor', () => {
  const c = parse(base());
  assert.equal(nodeOf(c, 'n3').client?.port, 7003);
  assert.throws(() => nodeOf(c, 'n9'), (e) => isLockstepError(e) && e.code === 'E_UNKNOWN_NODE' && e.message.includes('n9') && e.message.includes('n1, n2, n3'));
  assert.throws(() => coreConfigFor(c, 'n9'), (e) => isLockstepError(e) && e.code === 'E_UNKNOWN_NODE');
  const core = coreConfigFor(c, 'n2');
  assert.deepEqual(core, {
    id: 'n2', nodes: ['n1', 'n2', 'n3'], backups: 1, heartbeatMs: 50, failureTimeoutMs: 500, retransmitMs: 150, arbiterRetryMs: 250, joinIntervalMs: 200,
    unackedEntriesMax: DEFAULT_TIMING.unackedEntriesMax, unackedBytesMax: DEFAULT_TIMING.unackedBytesMax,
    frameEntriesMax: DEFAULT_TIMING.frameEntriesMax, frameBytesMax: DEFAULT_TIMING.frameBytesMax, catchupEntriesMax: DEFAULT_TIMING.catchupEntriesMax,
    snapshotChunkBytes: DEFAULT_SNAPSHOT_CHUNK_BYTES, snapshotWindowChunks: DEFAULT_SNAPSHOT_WINDOW_CHUNKS, durable: false, backlogBytes: 0,
  });
  assert.ok(!('bugs' in core));
});

test('durable mode: each node\'s dataDir resolves against the config\'s directory; durableCompactBytes and durableBacklogBytes default to 64 MiB (the core keeps that backlog)', () => {
  const j = base();
  j.durable = true;
  (j.nodes as Json[]).forEach((n, i) => (n.dataDir = i === 0 ? '/var/lib/lockstep/n1' : `data/n${i + 1}`));
  const c = parse(j);
  assert.equal(c.durable, true);
  assert.equal(c.durableCompactBytes, 64 * 1024 * 1024);
  assert.deepEqual(c.nodes.map((n) => n.dataDir), ['/var/lib/lockstep/n1', '/etc/lockstep/data/n2', '/etc/lockstep/data/n3']);
  j.durableCompactBytes = 1 << 20;
  assert.equal(parse(j).durableCompactBytes, 1 << 20);
  assert.equal(coreConfigFor(c, 'n1').backlogBytes, 64 * 1024 * 1024);
  j.durableBacklogBytes = 4096;
  assert.equal(coreConfigFor(parse(j), 'n1').backlogBytes, 4096);
});

const durable = (j: Json): void => {
  j.durable = true;
  (j.nodes as Json[]).forEach((n) => (n.dataDir = `data/${String(n.id)}`));
};

// [name, edit of the base config, code, substrings the message must contain]
const cases: [string, (j: Json) => void, string, string[]][] = [
  ['durable without a dataDir', (j) => { durable(j); delete node(j, 1).dataDir; }, 'E_CONFIG_INVALID', ['nodes[1].dataDir: missing', 'its own dataDir']],
  ['two nodes on one dataDir', (j) => { durable(j); node(j, 2).dataDir = './data/n1'; }, 'E_CONFIG_INVALID', ['nodes[2].dataDir', '/etc/lockstep/data/n1 is already the dataDir of nodes[0].dataDir']],
  ['dataDir without durable', (j) => { node(j, 0).dataDir = 'data/n1'; }, 'E_CONFIG_INVALID', ['nodes[0].dataDir: is set but "durable" is not true']],
  ['durable not a boolean', (j) => { j.durable = 'yes'; }, 'E_CONFIG_INVALID', ['durable: must be true or false']],
  ['durableCompactBytes without durable', (j) => { j.durableCompactBytes = 1000; }, 'E_CONFIG_INVALID', ['durableCompactBytes: is set but "durable" is not true']],
  ['durableBacklogBytes without durable', (j) => { j.durableBacklogBytes = 1000; }, 'E_CONFIG_INVALID', ['durableBacklogBytes: is set but "durable" is not true']],
  ['more backups than nodes to hold them', (j) => { j.backups = 3; }, 'E_CONFIG_INVALID', ['backups: 3 backups need at least 4 nodes', 'this cluster has 3']],
  ['backups zero', (j) => { j.backups = 0; }, 'E_CONFIG_INVALID', ['backups: must be a positive integer']],
  ['durable wasm service', (j) => { durable(j); j.service = { kind: 'wasm', module: 'g.wasm', listen: ['127.0.0.1:7300'] }; for (const n of j.nodes as Json[]) delete n.client; }, 'E_NOT_IMPLEMENTED', ['durable: durable mode is not yet built for the wasm service']],
  ['unknown top-level key', (j) => { j.heartbeatMS = 5; }, 'E_CONFIG_INVALID', ['unknown key heartbeatMS', 'known keys: cluster, arbiter']],
  ['unknown node key', (j) => { node(j, 0).clinet = 'x'; }, 'E_CONFIG_INVALID', ['unknown key nodes[0].clinet', 'known keys: id, peer, client, admin']],
  ['unknown service key', (j) => { (j.service as Json).size = 1; }, 'E_CONFIG_INVALID', ['unknown key service.size']],
  ['bugs is refused', (j) => { j.bugs = { noOutputRule: true }; }, 'E_CONFIG_INVALID', ['unknown key bugs', 'simulator only']],
  ['missing cluster', (j) => { delete j.cluster; }, 'E_CONFIG_INVALID', ['cluster: missing']],
  ['missing nodes', (j) => { delete j.nodes; }, 'E_CONFIG_INVALID', ['nodes: missing']],
  ['missing node address', (j) => { delete node(j, 2).admin; }, 'E_CONFIG_INVALID', ['nodes[2].admin: missing']],
  ['missing service mode', (j) => { j.service = { kind: 'kv' }; }, 'E_CONFIG_INVALID', ['service.mode: missing']],
  ['service not an object', (j) => { j.service = 'kv'; }, 'E_CONFIG_INVALID', ['service: must be a JSON object', '"kv"']],
  ['node not an object', (j) => { (j.nodes as unknown[])[1] = 'n2'; }, 'E_CONFIG_INVALID', ['nodes[1]: must be a JSON object']],
  ['cluster name', (j) => { j.cluster = 'my cluster'; }, 'E_CONFIG_INVALID', ['cluster: must be 1 to 64 letters', '"my cluster"']],
  ['cluster name too long', (j) => { j.cluster = 'x'.repeat(65); }, 'E_CONFIG_INVALID', ['cluster:']],
  ['cluster not a string', (j) => { j.cluster = 7; }, 'E_CONFIG_INVALID', ['cluster:', 'got 7']],
  ['node id', (j) => { node(j, 1).id = 'n/2'; }, 'E_CONFIG_INVALID', ['nodes[1].id: must be']],
  // A wasm node's guest directory is guestDir/<id>, emptied at start: `..` once emptied the config's directory.
  ['node id ..', (j) => { node(j, 1).id = '..'; }, 'E_CONFIG_INVALID', ['nodes[1].id: must be', 'starting with a letter or digit', '".."']],
  ['node id .', (j) => { node(j, 1).id = '.'; }, 'E_CONFIG_INVALID', ['nodes[1].id: must be']],
  ['hidden node id', (j) => { node(j, 1).id = '.n2'; }, 'E_CONFIG_INVALID', ['nodes[1].id: must be']],
  ['cluster name ..', (j) => { j.cluster = '..'; }, 'E_CONFIG_INVALID', ['cluster: must be']],
  ['protoMaxBulkLen past what a string holds', (j) => { j.protoMaxBulkLen = 2 ** 30; }, 'E_CONFIG_INVALID', ['protoMaxBulkLen: must be at most']],
  ['clientInputBytesMax below two values', (j) => { j.protoMaxBulkLen = 1000; j.clientInputBytesMax = 1999; }, 'E_CONFIG_INVALID', ['clientInputBytesMax', 'at least twice protoMaxBulkLen']],
  ['dedupBytesMax past one snapshot chunk', (j) => { j.dedupBytesMax = 481 * 1024 * 1024; }, 'E_CONFIG_INVALID', ['dedupBytesMax: must be at most 503316480', 'one snapshot chunk']],
  ['dedupSessionEntries zero', (j) => { j.dedupSessionEntries = 0; }, 'E_CONFIG_INVALID', ['dedupSessionEntries: must be a positive integer']],
  ['maxReplyBytes past a Buffer', (j) => { j.maxReplyBytes = 2 ** 32; }, 'E_CONFIG_INVALID', ['maxReplyBytes: must be at most']],
  ['duplicate node id', (j) => { node(j, 2).id = 'n1'; }, 'E_CONFIG_INVALID', ['nodes[2].id', 'already used by nodes[0].id']],
  ['no port', (j) => { node(j, 1).client = '127.0.0.1'; }, 'E_CONFIG_INVALID', ['nodes[1].client: must be "host:port"']],
  ['port 0', (j) => { node(j, 1).client = '127.0.0.1:0'; }, 'E_CONFIG_INVALID', ['nodes[1].client: port 0', '1 to 65535']],
  ['port too big', (j) => { node(j, 1).peer = '127.0.0.1:65536'; }, 'E_CONFIG_INVALID', ['nodes[1].peer: port 65536']],
  ['port not a number', (j) => { node(j, 1).peer = 'localhost:http'; }, 'E_CONFIG_INVALID', ['nodes[1].peer: must be "host:port"']],
  ['bad IPv4', (j) => { node(j, 0).admin = '300.1.1.1:7201'; }, 'E_CONFIG_INVALID', ['nodes[0].admin']],
  ['bare IPv6', (j) => { node(j, 0).admin = '::1:7201'; }, 'E_CONFIG_INVALID', ['nodes[0].admin', '[::1]:port']],
  ['bad host', (j) => { node(j, 0).admin = 'a_b:7201'; }, 'E_CONFIG_INVALID', ['nodes[0].admin']],
  ['address not a string', (j) => { node(j, 0).peer = 7101; }, 'E_CONFIG_INVALID', ['nodes[0].peer', 'got 7101']],
  ['duplicate address across nodes', (j) => { node(j, 1).client = '127.0.0.1:7001'; }, 'E_CONFIG_INVALID', ['nodes[1].client', '127.0.0.1:7001', 'already used by nodes[0].client']],
  ['duplicate address across roles', (j) => { node(j, 0).admin = '127.0.0.1:7101'; }, 'E_CONFIG_INVALID', ['nodes[0].admin', 'already used by nodes[0].peer']],
  ['duplicate port with a wildcard host', (j) => { node(j, 2).peer = '0.0.0.0:7001'; }, 'E_CONFIG_INVALID', ['nodes[2].peer', 'already used by nodes[0].client']],
  ['duplicate address, host case', (j) => { node(j, 0).peer = 'Host:9000'; node(j, 1).peer = 'host:9000'; }, 'E_CONFIG_INVALID', ['nodes[1].peer']],
  ['no nodes', (j) => { j.nodes = []; }, 'E_CONFIG_INVALID', ['nodes: must be an array of 1 to 16']],
  ['17 nodes', (j) => { j.nodes = Array.from({ length: 17 }, (_, i) => ({ id: `n${i}`, peer: `h:${8000 + i}`, client: `h:${9000 + i}`, admin: `h:${10000 + i}` })); }, 'E_CONFIG_INVALID', ['nodes: must be an array of 1 to 16', '17 nodes']],
  ['nodes not an array', (j) => { j.nodes = { n1: {} }; }, 'E_CONFIG_INVALID', ['nodes: must be an array']],
  ['heartbeat not an integer', (j) => { j.heartbeatMs = 12.5; }, 'E_CONFIG_INVALID', ['heartbeatMs: must be a positive integer', '12.5']],
  ['heartbeat zero', (j) => { j.heartbeatMs = 0; }, 'E_CONFIG_INVALID', ['heartbeatMs: must be a positive integer']],
  ['heartbeat a string', (j) => { j.heartbeatMs = '50'; }, 'E_CONFIG_INVALID', ['heartbeatMs: must be a positive integer', '"50"']],
  ['negative limit', (j) => { j.unackedBytesMax = -1; }, 'E_CONFIG_INVALID', ['unackedBytesMax: must be a positive integer']],
  ['maxClientConnections zero', (j) => { j.maxClientConnections = 0; }, 'E_CONFIG_INVALID', ['maxClientConnections']],
  ['failure timeout too short', (j) => { j.failureTimeoutMs = 100; }, 'E_CONFIG_INVALID', ['failureTimeoutMs: failure timeout 100 ms is not above 3 heartbeats of 50 ms: a single late heartbeat would trigger a failover']],
  ['failure timeout exactly 3 heartbeats', (j) => { j.failureTimeoutMs = 150; }, 'E_CONFIG_INVALID', ['failureTimeoutMs']],
  ['retransmit not below the failure timeout', (j) => { j.retransmitMs = 500; }, 'E_CONFIG_INVALID', ['retransmitMs: retransmit interval 500 ms must be below the failure timeout 500 ms']],
  ['wasm service without a module', (j) => { j.service = { kind: 'wasm', listen: [] }; }, 'E_CONFIG_INVALID', ['service.module: missing']],
  ['wasm service with a kv mode', (j) => { j.service = { kind: 'wasm', module: 'g.wasm', listen: [], mode: 'rsm' }; }, 'E_CONFIG_INVALID', ['unknown key service.mode']],
  ['wasm service with a bad listen address', (j) => { j.service = { kind: 'wasm', module: 'g.wasm', listen: ['nowhere'] }; }, 'E_CONFIG_INVALID', ['service.listen[0]: must be "host:port"']],
  ['wasm service with a bad memory limit', (j) => { j.service = { kind: 'wasm', module: 'g.wasm', listen: [], memoryLimitMb: 0 }; }, 'E_CONFIG_INVALID', ['service.memoryLimitMb: must be an integer from 1 to 4096']],
  ['unknown service kind', (j) => { j.service = { kind: 'sql', mode: 'rsm' }; }, 'E_CONFIG_INVALID', ['service.kind: must be "kv"', '"sql"']],
  ['bad mode', (j) => { j.service = { kind: 'kv', mode: 'lockstep' }; }, 'E_CONFIG_INVALID', ['service.mode: must be "rsm" or "state-transfer"']],
  ['arbiter not a string', (j) => { j.arbiter = { file: 'x' }; }, 'E_CONFIG_INVALID', ['arbiter: must be a string']],
  ['arbiter file: empty', (j) => { j.arbiter = 'file:'; }, 'E_CONFIG_INVALID', ['arbiter:', 'names no directory']],
  ['arbiter unknown', (j) => { j.arbiter = '/var/lib/arb'; }, 'E_CONFIG_INVALID', ['arbiter:', 'use file:DIR']],
  ['arbiter etcd with a bad prefix', (j) => { j.arbiter = 'etcd://10.0.0.1:2379/x/'; }, 'E_CONFIG_INVALID', ['arbiter:', "prefix '/x/'"]],
  ['arbiter etcd with a bad endpoint', (j) => { j.arbiter = 'etcd://10.0.0.1'; }, 'E_CONFIG_INVALID', ['arbiter:', "endpoint '10.0.0.1', not HOST:PORT"]],
  ['etcd options on a file arbiter', (j) => { j.etcd = { caFile: 'ca.pem' }; }, 'E_CONFIG_INVALID', ['etcd: sets etcd client options but the arbiter is "file:.lockstep/arbiter"']],
  ['etcd authFile missing', (j) => { j.arbiter = 'etcd://h:1'; j.etcd = { authFile: '/nonexistent/auth' }; }, 'E_CONFIG_INVALID', ['etcd.authFile: cannot read /nonexistent/auth: ENOENT']],
  ['etcd unknown option', (j) => { j.arbiter = 'etcd://h:1'; j.etcd = { password: 'inline' }; }, 'E_CONFIG_INVALID', ['unknown key etcd.password', 'authFile']],
  ['a node arbiter on a file arbiter', (j) => { node(j, 1).arbiter = 'etcd://h:1'; }, 'E_CONFIG_INVALID', ['nodes[1].arbiter: a node may only name its own endpoints']],
  ['a node arbiter with another prefix', (j) => { j.arbiter = 'etcd://h:1/a'; node(j, 1).arbiter = 'etcd://h:2/b'; }, 'E_CONFIG_INVALID', ['nodes[1].arbiter:', 'same prefix (/a)']],
  ['arbiterTimeoutMs zero', (j) => { j.arbiterTimeoutMs = 0; }, 'E_CONFIG_INVALID', ['arbiterTimeoutMs: must be a positive integer']],
];

test('an etcd arbiter: endpoints per node, TLS and a user read from files', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-cfg-etcd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'auth'), 'lockstep:pa:ss\n');
  writeFileSync(join(dir, 'ca.pem'), 'CA');
  writeFileSync(join(dir, 'c.pem'), 'CERT');
  writeFileSync(join(dir, 'k.pem'), 'KEY');
  const j = base();
  Object.assign(j, { arbiter: 'etcd://10.0.0.1:2379,10.0.0.2:2379/prod', arbiterTimeoutMs: 700, etcd: { authFile: 'auth', caFile: 'ca.pem', certFile: 'c.pem', keyFile: 'k.pem' } });
  node(j, 0).arbiter = 'etcd://127.0.0.1:2379/prod';
  const c = parseConfig(JSON.stringify(j), 'cluster.json', dir);
  assert.equal(c.arbiterTimeoutMs, 700);
  assert.equal(c.nodes[0]!.arbiter, 'etcd://127.0.0.1:2379/prod');
  assert.equal(c.nodes[1]!.arbiter, 'etcd://10.0.0.1:2379,10.0.0.2:2379/prod');
  assert.equal(c.etcd?.user, 'lockstep');
  assert.equal(c.etcd?.password, 'pa:ss');
  assert.equal(Buffer.from(c.etcd!.ca!).toString(), 'CA');
  for (const [etcd, msg] of [
    [{ certFile: 'c.pem', keyFile: 'k.pem' }, 'etcd.caFile: a client certificate needs TLS'],
    [{ caFile: 'ca.pem', certFile: 'c.pem' }, 'etcd.keyFile: certFile and keyFile go together'],
    [{ authFile: 'ca.pem' }, 'must hold one line USER:PASSWORD'],
  ] as const) {
    j.etcd = etcd;
    assert.throws(() => parseConfig(JSON.stringify(j), 'cluster.json', dir), (e: unknown) => isLockstepError(e) && e.code === 'E_CONFIG_INVALID' && e.message.includes(msg), msg);
  }
});

for (const [name, edit, code, parts] of cases) {
  test(`refused: ${name}`, () => {
    const j = base();
    edit(j);
    assert.throws(() => parse(j), (e: unknown) => {
      assert.ok(isLockstepError(e), `not a LockstepError: ${String(e)}`);
      assert.equal(e.code, code, e.message);
      assert.ok(e.message.startsWith('cluster.json: '), e.message);
      for (const p of parts) assert.ok(e.message.includes(p), `${JSON.stringify(e.message)} lacks ${JSON.stringify(p)}`);
      return true;
    });
  });
}

test('memory: is an accepted arbiter', () => {
  const j = base();
  j.arbiter = 'memory:';
  assert.equal(parse(j).arbiter, 'memory:');
});

test('invalid JSON: E_CONFIG_PARSE with line and column', () => {
  const bad: [string, string][] = [
    ['{\n  "cluster": "demo",\n}', 'at line 3, column 1'],
    ['{\n  "cluster" "demo"\n}', 'at line 2, column 13'],
    ['{"cluster":', 'at line 1, column 12'],
    ['', 'at line 1, column 1'],
  ];
  for (const [text, where] of bad) {
    assert.throws(() => parseConfig(text, 'c.json', '/'), (e) => isLockstepError(e) && e.code === 'E_CONFIG_PARSE' && e.message.startsWith('c.json: not valid JSON') && e.message.includes(where), text);
  }
  assert.throws(() => parseConfig('[]', 'c.json', '/'), (e) => isLockstepError(e) && e.code === 'E_CONFIG_INVALID' && e.message.includes('must be a JSON object'));
});

test('loadConfig: reads the file, baseDir is its directory; a missing file is E_FILE_READ', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'cluster.json');
  writeFileSync(path, JSON.stringify(base()));
  const c = await loadConfig(path);
  assert.equal(c.baseDir, dir);
  assert.equal(c.nodes.length, 3);
  await assert.rejects(loadConfig(join(dir, 'nope.json')), (e) => isLockstepError(e) && e.code === 'E_FILE_READ' && e.message.includes('nope.json') && e.message.includes('ENOENT'));
  await assert.rejects(loadConfig(dir), (e) => isLockstepError(e) && e.code === 'E_FILE_READ' && e.message.includes('EISDIR'));
  writeFileSync(path, '{"cluster": "demo"');
  await assert.rejects(loadConfig(path), (e) => isLockstepError(e) && e.code === 'E_CONFIG_PARSE' && e.message.startsWith(`${path}: `));
});

test('peerListen: a node may listen for peers on another address than the one peers dial', () => {
  const text = JSON.stringify({
    cluster: 'c',
    arbiter: 'file:a',
    service: { kind: 'kv', mode: 'rsm' },
    nodes: [
      { id: 'n1', peer: '127.0.0.1:7101', peerListen: '127.0.0.1:7111', client: '127.0.0.1:7001', admin: '127.0.0.1:7201' },
      { id: 'n2', peer: '127.0.0.1:7102', peerListen: '127.0.0.1:7101', client: '127.0.0.1:7002', admin: '127.0.0.1:7202' },
    ],
  });
  assert.throws(() => parseConfig(text, 'c.json', '/tmp'), /nodes\[1\]\.peerListen: address 127\.0\.0\.1:7101 is already used by nodes\[0\]\.peer/);
  const ok = parseConfig(text.replace('"peerListen":"127.0.0.1:7101"', '"peerListen":"127.0.0.1:7112"'), 'c.json', '/tmp');
  assert.deepEqual(ok.nodes[0]!.peerListen, { host: '127.0.0.1', port: 7111 });
  assert.deepEqual(ok.nodes[0]!.peer, { host: '127.0.0.1', port: 7101 });
});

test('secretFile: read relative to the config, trimmed; missing, empty or short secrets refused', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-secret-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const withSecret = (file: string): string => JSON.stringify({ ...base(), secretFile: file });
  assert.equal(parseConfig(JSON.stringify(base()), 'c.json', dir).secret, null, 'no secretFile: no peer authentication');
  writeFileSync(join(dir, 'good'), '  0123456789abcdef0123456789abcdef\n');
  assert.equal(Buffer.from(parseConfig(withSecret('good'), 'c.json', dir).secret!).toString(), '0123456789abcdef0123456789abcdef');
  writeFileSync(join(dir, 'short'), 'hunter2\n');
  const cases: [string, RegExp][] = [
    ['missing', /secretFile: cannot read .*missing: ENOENT/],
    ['short', /secretFile: .*short holds 7 bytes; a secret needs at least 16/],
    ['', /secretFile: must be the path of a file/],
    // Once read forever at start.
    ['/dev/zero', /secretFile: \/dev\/zero is not a regular file/],
    [dir, /is not a regular file/],
  ];
  for (const [file, message] of cases) {
    assert.throws(() => parseConfig(withSecret(file), 'c.json', dir), (e) => isLockstepError(e) && e.code === 'E_CONFIG_INVALID' && message.test(e.message), file);
  }
});

test('a wasm service needs no client address on its nodes; kv does', () => {
  const j = base();
  j.service = { kind: 'wasm', module: 'guest.wasm', listen: ['127.0.0.1:7301'] };
  for (let i = 0; i < 3; i++) delete node(j, i).client;
  const c = parse(j);
  assert.deepEqual(c.nodes.map((n) => n.client), [null, null, null]);
  assert.equal(c.service.kind === 'wasm' && c.service.module, '/etc/lockstep/guest.wasm');
  const k = base();
  delete node(k, 1).client;
  assert.throws(() => parse(k), (e) => isLockstepError(e) && e.code === 'E_CONFIG_INVALID' && e.message.includes('nodes[1].client: missing'));
});

test('no secretFile with a peer address beyond loopback: refused; on loopback: allowed (the node warns)', () => {
  const j = base();
  node(j, 1).peer = '10.0.0.2:7102';
  assert.throws(() => parse(j), (e) => isLockstepError(e) && e.code === 'E_CONFIG_INVALID' && /secretFile: missing, but n2 listens for peers on 10\.0\.0\.2:7102, which is not a loopback address/.test(e.message));
  const wild = base();
  node(wild, 0).peerListen = '0.0.0.0:7111';
  assert.throws(() => parse(wild), /n1 listens for peers on 0\.0\.0\.0:7111/);
  const local = base();
  node(local, 0).peer = 'localhost:7101';
  node(local, 1).peer = '[::1]:7102';
  assert.equal(parse(local).secret, null);
});

test('peerTls: certFile, keyFile and caFile, each a PEM file; it stands in for secretFile beyond loopback', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-peertls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // The config check reads the files and looks for PEM blocks; node:tls judges them at start.
  writeFileSync(join(dir, 'node.pem'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
  writeFileSync(join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n');
  writeFileSync(join(dir, 'node.key'), '-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n');
  const files = { certFile: 'node.pem', keyFile: 'node.key', caFile: 'ca.pem' };
  const withTls = (peerTls: unknown, edit: (j: Json) => void = () => {}): string => {
    const j = { ...base(), peerTls };
    edit(j);
    return JSON.stringify(j);
  };
  const c = parseConfig(withTls(files), 'c.json', dir);
  assert.equal(c.peerTls!.ca.toString().includes('MIIC'), true);
  assert.equal(c.peerTls!.cert.toString().includes('MIIB'), true);
  assert.equal(parseConfig(JSON.stringify(base()), 'c.json', dir).peerTls, null, 'no peerTls: plain TCP');
  // Mutual TLS authenticates peers: a peer port beyond loopback needs no secretFile then.
  assert.deepEqual(parseConfig(withTls(files, (j) => void (node(j, 1).peer = '10.0.0.2:7102')), 'c.json', dir).nodes[1]!.peer, { host: '10.0.0.2', port: 7102 });
  const cases: [unknown, RegExp][] = [
    [{ certFile: 'node.pem', keyFile: 'node.key' }, /c\.json: peerTls\.caFile: missing; it is required/],
    [{ ...files, verify: false }, /unknown key peerTls\.verify; known keys: certFile, keyFile, caFile/],
    [{ ...files, caFile: 'node.key' }, /peerTls\.caFile: .*node\.key is not a PEM certificate/],
    [{ ...files, keyFile: 'ca.pem' }, /peerTls\.keyFile: .*ca\.pem is not a PEM private key/],
    [{ ...files, certFile: 'nope.pem' }, /peerTls\.certFile: cannot read .*nope\.pem: ENOENT/],
    ['certs/', /peerTls: must be a JSON object/],
  ];
  for (const [peerTls, message] of cases) {
    assert.throws(() => parseConfig(withTls(peerTls), 'c.json', dir), (e) => isLockstepError(e) && e.code === 'E_CONFIG_INVALID' && message.test(e.message), JSON.stringify(peerTls));
  }
});
