// A spare knows who the primary is (issue 15, item 8). A spare's own view stays empty until it
// is recruited, so it used to answer `NOTPRIMARY no primary known` and ROLE with host "" port 0;
// it now reads the view from the arbiter and redirects clients, as README promises.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { ProcessCluster } from '../src/testing/process-cluster.js';

function ask(port: number, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`${line}\r\n`));
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (/\r\n$/.test(got) && !got.startsWith('*')) s.end();
      if (got.startsWith('*') && got.split('\r\n').length > 8) s.end();
    });
    s.on('close', () => resolve(got));
    s.on('error', reject);
    setTimeout(() => s.destroy(), 3000);
  });
}

test('a spare redirects to the primary, by the arbiter\'s view: NOTPRIMARY <address> and ROLE', { timeout: 120_000 }, async (t) => {
  const cluster = await ProcessCluster.start();
  t.after(() => cluster.stop());
  let statuses = await cluster.statuses();
  await cluster.waitFor(async () => (statuses = await cluster.statuses()).some((s) => s?.role === 'spare'), 30_000, 'a spare');
  const primary = statuses.find((s) => s?.role === 'primary')!;
  const spare = statuses.find((s) => s?.role === 'spare')!;
  assert.ok(primary && spare, JSON.stringify(statuses));
  const p = cluster.node(primary.id).client;
  const port = cluster.node(spare.id).client.port;
  let reply = '';
  await cluster.waitFor(async () => /NOTPRIMARY the primary is/.test((reply = await ask(port, 'SET k v'))), 15_000, `${spare.id} to redirect (last: ${reply})`);
  // The epoch is the one the spare last read: the recruit of the backup may come after it.
  assert.match(reply, new RegExp(`^-NOTPRIMARY the primary is ${primary.id} at ${p.host.replace(/\./g, '\\.')}:${p.port} \\(epoch \\d+\\); this node is spare\r\n$`));
  const role = await ask(port, 'ROLE');
  assert.match(role, new RegExp(`^\\*5\\r\\n\\$5\\r\\nslave\\r\\n\\$9\\r\\n${p.host.replace(/\./g, '\\.')}\\r\\n:${p.port}\\r\\n`));
});
