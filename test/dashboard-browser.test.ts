// The dashboard in a real headless Chromium (Debian's `chromium`, driven by puppeteer-core): the
// page from the primary's admin port shows three nodes; after a kill -9 of that primary it shows
// the new primary and the failover on the timeline (asking another node, its own being dead),
// and it asked nothing beyond loopback. Skipped, with one line, where /usr/bin/chromium is
// missing; in CI (CI=1) that is a failure: .ci/run installs chromium.
//
// LOCKSTEP_DASHBOARD_PNG=docs/dashboard.png writes the screenshot there (how docs/dashboard.png
// was made); otherwise it goes to the test's temp dir.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser } from 'puppeteer-core';
import { ProcessCluster } from '../src/testing/process-cluster.js';
import { LockstepClient } from '../src/client/index.js';

const CHROMIUM = process.env.LOCKSTEP_CHROMIUM ?? '/usr/bin/chromium';

function chromiumMissing(): string | null {
  if (existsSync(CHROMIUM)) return null;
  if (process.env.CI) throw new Error(`CI without ${CHROMIUM}: .ci/run must install chromium`);
  return `chromium is not installed: apt-get install chromium (looked for ${CHROMIUM})`;
}

test('the dashboard in headless Chromium: three nodes, then a kill -9 of the primary shows the new primary and the failover', { skip: chromiumMissing() ?? false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-dash-'));
  // One hook: Chromium is closed (and killed if need be) before its profile directory is
  // removed; after hooks run in the order they were added, and a live browser writes it again.
  let browser: Browser | null = null;
  t.after(async () => {
    if (browser !== null) {
      const proc = browser.process();
      await browser.close().catch(() => undefined);
      if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  });
  const cluster = await ProcessCluster.start({ nodes: 3 });
  t.after(() => cluster.stop());
  const client = new LockstepClient({ nodes: cluster.clientAddresses() });
  t.after(() => client.close());
  // The spare may still be recruiting when the cluster has started: wait for a backup.
  await cluster.waitFor(async () => ((await cluster.primary())?.view.backup ?? null) !== null, 30_000, 'a primary with a backup');
  const primary = (await cluster.primary())!;
  const backupId = primary.view.backup!;

  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in CI has no user namespaces for the sandbox; the page is our own, on loopback.
    args: ['--no-sandbox', '--disable-gpu', '--no-proxy-server', '--disable-background-networking', '--disable-component-update', `--user-data-dir=${join(dir, 'profile')}`],
    timeout: 60_000,
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1180, height: 900 });
  const requested: string[] = [];
  page.on('request', (r) => requested.push(r.url()));
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));

  const admin = cluster.node(primary.id).admin;
  await page.goto(`http://127.0.0.1:${admin.port}/`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction((id) => document.querySelectorAll('#nodes tr[data-node]').length === 3 && document.getElementById('primary')?.textContent === id, { timeout: 20_000 }, primary.id);
  const rows = await page.$$eval('#nodes tr[data-node]', (trs) => trs.map((tr) => [tr.getAttribute('data-node'), tr.getAttribute('data-role')]));
  assert.deepEqual(rows.map((r) => r[0]), cluster.nodes.map((n) => n.id));
  assert.deepEqual(rows.find((r) => r[0] === primary.id), [primary.id, 'primary']);
  assert.deepEqual(rows.find((r) => r[0] === backupId), [backupId, 'backup']);

  // Load for a few seconds, so that the charts have lines to draw (a point a second; two make a line).
  const loadFor = async (ms: number): Promise<void> => {
    const until = Date.now() + ms;
    for (let i = 0; Date.now() < until; i++) {
      await client.set(`k${i % 20}`, String(i));
      if (i % 50 === 49) await new Promise((r) => setTimeout(r, 20));
    }
  };
  await loadFor(3500);
  await page.waitForFunction(() => document.querySelectorAll('#chart-ops polyline').length > 0 && document.querySelectorAll('#chart-latency polyline').length > 0, { timeout: 20_000 });

  await cluster.kill9(primary.id);
  const killedAt = Date.now();
  // The backup goes live; under heavy load the primary may have dropped and replaced its backup
  // before the kill, so the new primary is whichever node the cluster says.
  const newPrimary = await cluster.newPrimary(primary.id, 30_000);
  try {
    await page.waitForFunction(
      (id) => document.getElementById('primary')?.textContent === id && document.querySelector('#timeline li[data-kind="failover"]') !== null,
      { timeout: 20_000, polling: 100 },
      newPrimary,
    );
  } catch (e) {
    const shown = await page.evaluate(() => ['meta', 'primary', 'nodes', 'timeline'].map((id) => `${id}: ${document.getElementById(id)?.textContent ?? ''}`).join('\n'));
    throw new Error(`${(e as Error).message}; the page shows:\n${shown}\nthe nodes say: ${JSON.stringify(await cluster.statuses())}`);
  }
  const shownMs = Date.now() - killedAt;
  t.diagnostic(`the new primary (${newPrimary}) and the failover were on the page ${shownMs} ms after the kill -9`);
  const failovers = await page.$$eval('#timeline li[data-kind="failover"]', (lis) => lis.map((li) => li.textContent ?? ''));
  assert.ok(failovers.some((f) => f.includes(`failover, ${newPrimary} took over from ${primary.id}`)), failovers.join('\n'));
  await page.waitForFunction((id) => document.querySelector(`#nodes tr[data-node="${id}"]`)?.getAttribute('data-role') === 'down', { timeout: 10_000 }, primary.id);

  await loadFor(4000); // on the new primary, so that its lines show in the screenshot
  await new Promise((r) => setTimeout(r, 1200));
  const png = process.env.LOCKSTEP_DASHBOARD_PNG ?? join(dir, 'dashboard.png');
  await page.screenshot({ path: png as `${string}.png`, fullPage: true });
  assert.deepEqual([...readFileSync(png).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'a PNG');

  assert.deepEqual(pageErrors, []);
  const elsewhere = requested.filter((u) => !/^http:\/\/127\.0\.0\.1:\d+\//.test(u));
  assert.deepEqual(elsewhere, [], 'the page asks nothing beyond loopback');
});
