// docs/cluster.schema.json, the config's JSON Schema for editors (completion and checking as
// you type), names exactly the keys the node's own check accepts (src/node/config.ts), and the
// README's example config is valid by both.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CONFIG_KEYS, parseConfig } from '../src/node/config.js';

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
  for (const s of [schema, p.nodes!.items!, kv!, wasm!, module!, p.etcd!, p.clientTls!]) assert.equal(s.additionalProperties, false, 'unknown keys are refused, as the node refuses them');
});

test("the README's example config passes the node's check, and has only the schema's keys", () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const text = /```json\n(\{ "cluster": "demo"[\s\S]*?)```/.exec(readme)![1]!;
  const c = parseConfig(text, 'README.md', '/tmp');
  assert.equal(c.nodes.length, 3);
  const raw = JSON.parse(text) as Record<string, unknown>;
  for (const k of Object.keys(raw)) assert.ok(k in schema.properties!, k);
});
