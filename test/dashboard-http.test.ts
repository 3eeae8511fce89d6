// The admin port over plain HTTP, on real node processes: /metrics in the Prometheus text format
// (prom-client's), with the latency histograms, per-command counters and process metrics;
// /api/cluster with every node and the arbiter's views; a kill -9 of the primary shows up in
// both (a failover on the timeline, a failover duration on the new primary); / is the page.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { parsePrometheusText, sampleValue } from '../src/testing/prom-text.js';
import { LockstepClient } from '../src/client/index.js';

const GRAFANA = fileURLToPath(new URL('../../docs/grafana-dashboard.json', import.meta.url));

async function get(port: number, path: string): Promise<{ status: number; type: string; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(10_000) });
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

interface ClusterReport {
  cluster: string;
  servedBy: string;
  nodes: { id: string; up: boolean; status: { role: string; view: { epoch: number; primary: string | null } } | null; series: { t: number; ops: number }[] }[];
  timeline: { epoch: number; kind: string; at: string | null; view: { primary: string | null; backup: string | null } }[] | null;
}

test('/metrics is Prometheus text with histograms, per-command counters and process metrics; /api/cluster follows a kill -9', async (t) => {
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const client = new LockstepClient({ nodes: cluster.clientAddresses() });
  t.after(() => client.close());
  for (let i = 0; i < 30; i++) await client.set(`k${i}`, 'v');
  for (let i = 0; i < 10; i++) await client.get(`k${i}`);
  // The spare may still be recruiting when the cluster has started: wait for a backup.
  await cluster.waitFor(async () => ((await cluster.primary())?.view.backup ?? null) !== null, 30_000, 'a primary with a backup');
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;
  const p = cluster.node(primary.id);

  const m = await get(p.admin.port, '/metrics');
  assert.equal(m.status, 200);
  assert.match(m.type, /^text\/plain; version=0\.0\.4/);
  const fams = parsePrometheusText(m.body); // throws on any line that is not Prometheus text
  assert.equal(sampleValue(fams, 'lockstep_role', { role: 'primary' }), 1);
  assert.equal(sampleValue(fams, 'lockstep_role', { role: 'backup' }), 0);
  assert.equal(fams.get('lockstep_client_commands_total')?.type, 'counter');
  assert.ok(sampleValue(fams, 'lockstep_client_commands_total')! >= 40);
  for (const h of ['lockstep_command_latency_seconds', 'lockstep_ack_round_trip_seconds', 'lockstep_failover_duration_seconds']) {
    assert.equal(fams.get(h)?.type, 'histogram', h);
    assert.equal(sampleValue(fams, `${h}_bucket`, { le: '+Inf' }), sampleValue(fams, `${h}_count`), `${h}: +Inf bucket = count`);
  }
  // Every answered command is in the latency histogram, each held at least until the backup acked it.
  const commands = sampleValue(fams, 'lockstep_command_latency_seconds_count')!;
  assert.ok(commands >= 40, `latency count ${commands}`);
  assert.ok(sampleValue(fams, 'lockstep_commands_by_name_total', { command: 'set' })! >= 30);
  assert.ok(sampleValue(fams, 'lockstep_commands_by_name_total', { command: 'get' })! >= 10);
  assert.ok(sampleValue(fams, 'lockstep_ack_round_trip_seconds_count')! > 0, 'acks timed');
  assert.equal(sampleValue(fams, 'lockstep_failover_duration_seconds_count'), 0, 'no failover yet');
  assert.ok(fams.has('process_cpu_user_seconds_total') && fams.has('nodejs_heap_size_used_bytes'), 'process metrics');
  // The Grafana dashboard reads only metrics that exist.
  const exposed = new Set([...fams.values()].flatMap((f) => f.samples.map((x) => x.name)));
  const grafana = JSON.parse(readFileSync(GRAFANA, 'utf8')) as { panels: { targets: { expr: string }[] }[] };
  const read = new Set(grafana.panels.flatMap((pa) => pa.targets.flatMap((x) => x.expr.match(/\b(?:lockstep|process|nodejs)_[a-z0-9_]+/g) ?? [])));
  assert.ok(read.size >= 10);
  assert.deepEqual([...read].filter((n) => !exposed.has(n)), [], 'metrics docs/grafana-dashboard.json reads but /metrics lacks');

  // Every node answers (on a loaded machine one may miss the 1.5 s of one report: ask again).
  let r1!: ClusterReport;
  await cluster.waitFor(async () => {
    r1 = JSON.parse((await get(cluster.node(backupId).admin.port, '/api/cluster')).body) as ClusterReport;
    return r1.nodes.every((n) => n.up);
  }, 20_000, 'every node up in /api/cluster');
  assert.equal(r1.servedBy, backupId);
  assert.deepEqual(r1.nodes.map((n) => n.id), cluster.nodes.map((n) => n.id));
  assert.equal(r1.nodes.find((n) => n.id === primary.id)!.status!.role, 'primary');
  assert.ok(r1.timeline !== null && r1.timeline.length >= 1);
  assert.equal(r1.timeline.at(-1)!.epoch, primary.view.epoch);
  assert.equal(r1.timeline[0]!.kind, 'start');
  assert.ok(r1.timeline.every((e) => e.at !== null && !Number.isNaN(Date.parse(e.at))), 'each view has a time');

  await cluster.kill9(primary.id);
  const started = Date.now();
  // The backup goes live (under heavy load the primary may have replaced it before the kill:
  // the new primary is whichever the cluster says).
  const newPrimary = await cluster.newPrimary(primary.id, 30_000);
  const b = cluster.node(newPrimary);
  const fams2 = parsePrometheusText((await get(b.admin.port, '/metrics')).body);
  assert.equal(sampleValue(fams2, 'lockstep_failover_duration_seconds_count'), 1);
  const took = sampleValue(fams2, 'lockstep_failover_duration_seconds_sum')!;
  assert.ok(took > 0.2 && took * 1000 < Date.now() - started + 30_000, `failover took ${took} s (failureTimeoutMs is at least the floor)`);

  const r2 = JSON.parse((await get(b.admin.port, '/api/cluster')).body) as ClusterReport;
  assert.equal(r2.nodes.find((n) => n.id === primary.id)!.up, false, 'the killed node is shown down');
  assert.equal(r2.nodes.find((n) => n.id === newPrimary)!.status!.role, 'primary');
  const failover = r2.timeline!.find((e) => e.kind === 'failover' && e.view.primary === newPrimary);
  assert.ok(failover, `a failover to ${newPrimary} on the timeline: ${JSON.stringify(r2.timeline)}`);

  const page = await get(b.admin.port, '/');
  assert.equal(page.status, 200);
  assert.match(page.type, /^text\/html/);
  assert.match(page.body, /<script>[\s\S]*\/api\/cluster/);
  assert.doesNotMatch(page.body, /(src|href)="https?:/, 'the page loads nothing from elsewhere');
  assert.equal((await get(b.admin.port, '/nope')).status, 404);
});
