// docs/cluster.schema.json, the config's JSON Schema for editors (completion and checking as
// you type), names exactly the keys the node's own check accepts (src/node/config.ts), and the
// README's example config is valid by both.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { CONFIG_KEYS, parseConfig } from '../src/node/config.js';
import { isLockstepError } from '../src/errors.js';
import { validConfig } from '../src/testing/config-fixture.js';

type Schema = { properties?: Record<string, Schema>; items?: Schema; oneOf?: Schema[]; required?: string[]; additionalProperties?: boolean };
const schema = JSON.parse(readFileSync(new URL('../../docs/cluster.schema.json', import.meta.url), 'utf8')) as Schema;
const keys = (s: Schema | undefined): string[] => Object.keys(s?.properties ?? {}).sort();
const sorted = (a: readonly string[]): string[] => [...a].sort();

test('the schema and the config check name the same keys, object by object', () => {
  const p = schema.properties!;
  assert.deepEqual(keys(schema), sorted(CONFIG_KEYS.top));
  assert.deepEqual(keys(p.nodes!.items), sorted(CONFIG_KEYS.node));
  const [kv, wasm, module] = p.service!.oneOf!;
  assert.deepEqual(keys(kv), sorted(CONFIG_KEYS.kvService));
  assert.deepEqual(keys(wasm), sorted(CONFIG_KEYS.wasmService));
  assert.deepEqual(keys(module), sorted(CONFIG_KEYS.moduleService));
  assert.deepEqual(keys(p.etcd), sorted(CONFIG_KEYS.etcd));
  assert.deepEqual(keys(p.clientTls), sorted(CONFIG_KEYS.clientTls));
  assert.deepEqual(keys(p.peerTls), sorted(CONFIG_KEYS.peerTls));
  assert.deepEqual(p.peerTls!.required!.slice().sort(), sorted(CONFIG_KEYS.peerTls), 'the node requires all three files');
  for (const s of [schema, p.nodes!.items!, kv!, wasm!, module!, p.etcd!, p.clientTls!, p.peerTls!]) assert.equal(s.additionalProperties, false, 'unknown keys are refused, as the node refuses them');
});

test("the README's example config passes the node's check, and has only the schema's keys", () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const text = /```json\n(\{ "cluster": "demo"[\s\S]*?)```/.exec(readme)![1]!;
  const c = parseConfig(text, 'README.md', '/tmp');
  assert.equal(c.nodes.length, 3);
  const raw = JSON.parse(text) as Record<string, unknown>;
  for (const k of Object.keys(raw)) assert.ok(k in schema.properties!, k);
});

// A JSON Schema validator (ajv, draft 2020-12, strict) reads the published schema as editors
// do: the schema itself must be valid, accept what the node accepts, and refuse the shape
// mistakes the node refuses. The node keeps its own check (src/node/config.ts): its messages
// name the path and what to do, and most of its rules (files, addresses, cross-field bounds)
// are beyond a schema; see docs/ARCHITECTURE.md, "Hand-written, or a library".
test('ajv compiles the schema (strict) and agrees with the node on valid configs and on shape mistakes', () => {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  const validate = ajv.compile(schema);
  const base = validConfig;
  const schemaOk = (c: unknown): boolean => validate(c) as boolean;
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  assert.ok(schemaOk(JSON.parse(/```json\n(\{ "cluster": "demo"[\s\S]*?)```/.exec(readme)![1]!)), JSON.stringify(validate.errors));
  assert.ok(schemaOk(base()), JSON.stringify(validate.errors));
  const everything = {
    ...base(), secretFile: 's', requirePassFile: 'p', clientTls: { certFile: 'c', keyFile: 'k' }, peerTls: { certFile: 'c', keyFile: 'k', caFile: 'ca' },
    arbiter: 'etcd://127.0.0.1:2379', etcd: { caFile: 'ca', certFile: 'c', keyFile: 'k', authFile: 'a' }, maxmemory: 1 << 20,
  };
  assert.ok(schemaOk(everything), JSON.stringify(validate.errors));
  const shapeMistakes: [string, (c: Record<string, unknown>) => void][] = [
    ['an unknown top-level key', (c) => void (c.heartbeat = 50)],
    ['planted bugs', (c) => void (c.bugs = { noOutputRule: true })],
    ['a missing cluster', (c) => void delete c.cluster],
    ['a bad cluster name', (c) => void (c.cluster = '..')],
    ['heartbeatMs 12.5', (c) => void (c.heartbeatMs = 12.5)],
    ['heartbeatMs 0', (c) => void (c.heartbeatMs = 0)],
    ['heartbeatMs "50"', (c) => void (c.heartbeatMs = '50')],
    ['service kind redis', (c) => void (c.service = { kind: 'redis', mode: 'rsm' })],
    ['service mode fast', (c) => void (c.service = { kind: 'kv', mode: 'fast' })],
    ['no nodes', (c) => void (c.nodes = [])],
    ['a node without peer', (c) => void delete (c.nodes as Record<string, unknown>[])[1]!.peer],
    ['an unknown node key', (c) => void ((c.nodes as Record<string, unknown>[])[0]!.role = 'primary')],
    ['peerTls without caFile', (c) => void (c.peerTls = { certFile: 'c', keyFile: 'k' })],
    ['clientTls with a CA', (c) => void (c.clientTls = { certFile: 'c', keyFile: 'k', caFile: 'ca' })],
  ];
  for (const [what, edit] of shapeMistakes) {
    const c = base();
    edit(c);
    assert.equal(schemaOk(c), false, `the schema refuses ${what}`);
    assert.throws(() => parseConfig(JSON.stringify(c), 'c.json', '/tmp'), (e) => isLockstepError(e) && e.code === 'E_CONFIG_INVALID', `the node refuses ${what}`);
  }
});
