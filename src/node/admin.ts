// The admin port's HTTP routes: /status (this node, JSON), /metrics (Prometheus text, from
// metrics.ts), / (the dashboard page, dashboard.ts), /api/node (this node's status and its
// per-second series) and /api/cluster (every node's /api/node, read over their admin ports as
// the config names them, and the arbiter's views as a timeline). Nothing here decides anything:
// a peer that does not answer in time is shown as down. One route acts: POST /api/switchover
// asks this node, the primary, to hand its role to its backup (issue 11 item 1; the core
// decides, and refuses when it must). The admin port has no credentials: that POST must carry
// the header `x-lockstep-switchover: 1`, which a browser cannot send cross-origin without a
// preflight this port never grants, so a web page cannot trigger it.

import http from 'node:http';
import type { ViewRecord } from '../arbiter/types.js';
import type { View } from '../core/index.js';
import { formatAddress, type ClusterConfig, type NodeAddress } from './config.js';
import { DASHBOARD_HTML } from './dashboard.js';
import type { NodeMetrics, SeriesPoint } from './metrics.js';
import type { SwitchoverReport } from './replica-node.js';

/** How long POST /api/switchover waits for the outcome before answering 504 (the switchover goes on). */
export const SWITCHOVER_ANSWER_MS = 15_000;
/** The header POST /api/switchover must carry (see the top of this file). */
export const SWITCHOVER_HEADER = 'x-lockstep-switchover';

/** How long /api/cluster waits for a peer's /api/node (a node whose event loop is busy answers late). */
const PEER_TIMEOUT_MS = 1500;

export interface AdminHost {
  readonly id: string;
  readonly config: ClusterConfig;
  readonly metrics: NodeMetrics;
  statusJson(): Record<string, unknown>;
  /** The arbiter's views, oldest first; null where the arbiter keeps only the current one. */
  arbiterHistory(): Promise<readonly ViewRecord[] | null>;
  /** Hand the primary role to the backup (`to`: the node that must take over, null: the backup). */
  switchover(to: string | null): Promise<SwitchoverReport>;
}

export interface NodeReport {
  readonly id: string;
  readonly admin: string;
  readonly up: boolean;
  readonly status: Record<string, unknown> | null;
  readonly series: readonly SeriesPoint[];
  readonly error?: string;
}

export interface TimelineEvent {
  readonly epoch: number;
  readonly at: string | null;
  /**
   * start: the first view; switchover: primary and backup swapped (a planned switchover);
   * failover: the primary changed otherwise; view-change: only the backup did.
   */
  readonly kind: 'start' | 'switchover' | 'failover' | 'view-change';
  readonly view: View;
  readonly text: string;
}

export function serveAdmin(host: AdminHost, req: http.IncomingMessage, res: http.ServerResponse): void {
  const [path, query] = (req.url ?? '/').split('?');
  if (path === '/api/switchover') return switchoverRoute(host, req, res, new URLSearchParams(query ?? ''));
  if (req.method !== 'GET') return send(res, 405, 'text/plain', 'only GET is served here (and POST /api/switchover)\n');
  switch (path) {
    case '/status':
      return send(res, 200, 'application/json', JSON.stringify(host.statusJson(), viewJson) + '\n');
    case '/metrics':
      host.metrics.text().then(
        (text) => send(res, 200, host.metrics.contentType, text),
        (e: unknown) => send(res, 500, 'text/plain', `metrics failed: ${(e as Error).message}\n`),
      );
      return;
    case '/':
    case '/index.html':
      return send(res, 200, 'text/html; charset=utf-8', DASHBOARD_HTML);
    case '/api/node':
      return send(res, 200, 'application/json', JSON.stringify(nodeReport(host), viewJson) + '\n');
    case '/api/cluster':
      clusterReport(host).then(
        // Any page may read it (as any client may read /status): a dashboard whose own node
        // died asks the others.
        (r) => send(res, 200, 'application/json', JSON.stringify(r, viewJson) + '\n', { 'access-control-allow-origin': '*' }),
        (e: unknown) => send(res, 500, 'text/plain', `cluster report failed: ${(e as Error).message}\n`),
      );
      return;
    default:
      return send(res, 404, 'text/plain', 'not found: try / (the dashboard), /status, /metrics, /api/node or /api/cluster\n');
  }
}

/** POST /api/switchover[?to=ID]: 200 done, 409 refused or aborted, 501 not built, 504 still under way. */
function switchoverRoute(host: AdminHost, req: http.IncomingMessage, res: http.ServerResponse, query: URLSearchParams): void {
  if (req.method !== 'POST') return send(res, 405, 'text/plain', 'POST /api/switchover asks this node, the primary, to hand over to its backup\n');
  if (req.headers[SWITCHOVER_HEADER] !== '1') {
    return send(res, 403, 'application/json', JSON.stringify({ ok: false, message: `POST /api/switchover needs the header ${SWITCHOVER_HEADER}: 1 (lockstep switchover sends it)` }) + '\n');
  }
  req.resume(); // no body is read
  const to = query.get('to');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), SWITCHOVER_ANSWER_MS);
  });
  Promise.race([host.switchover(to === null || to === '' ? null : to), late]).then(
    (r) => {
      clearTimeout(timer);
      if (r === null) {
        return send(res, 504, 'application/json', JSON.stringify({ ok: false, outcome: 'timeout', code: null, message: `no outcome in ${SWITCHOVER_ANSWER_MS} ms (the arbiter may be unreachable); the switchover goes on: see /status` }) + '\n');
      }
      const code = r.ok ? 200 : r.code === 'E_NOT_IMPLEMENTED' ? 501 : 409;
      send(res, code, 'application/json', JSON.stringify(r, viewJson) + '\n');
    },
    (e: unknown) => send(res, 500, 'text/plain', `switchover failed: ${(e as Error).message}\n`),
  );
}

function send(res: http.ServerResponse, code: number, type: string, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store', ...headers });
  res.end(body);
}

function nodeReport(host: AdminHost): NodeReport {
  const self = host.config.nodes.find((n) => n.id === host.id)!;
  return { id: host.id, admin: formatAddress(self.admin), up: true, status: host.statusJson(), series: host.metrics.recent() };
}

/** Every node's report (this one's without a request) and the arbiter's timeline. */
export async function clusterReport(host: AdminHost): Promise<Record<string, unknown>> {
  const nodes = await Promise.all(
    host.config.nodes.map(async (n): Promise<NodeReport> => {
      if (n.id === host.id) return nodeReport(host);
      try {
        const r = (await getJson(reachable(n.admin), '/api/node', PEER_TIMEOUT_MS)) as NodeReport;
        return { ...r, id: n.id, admin: formatAddress(n.admin), up: true };
      } catch (e) {
        return { id: n.id, admin: formatAddress(n.admin), up: false, status: null, series: [], error: (e as Error).message };
      }
    }),
  );
  let timeline: TimelineEvent[] | null = null;
  let arbiterError: string | null = null;
  try {
    const h = await host.arbiterHistory();
    timeline = h === null ? null : toTimeline(h);
  } catch (e) {
    arbiterError = (e as Error).message;
  }
  return { cluster: host.config.cluster, servedBy: host.id, time: new Date().toISOString(), nodes, timeline, arbiterError };
}

/**
 * JSON.stringify's replacer for everything the admin port answers: a view (an object with an
 * `epoch` and a `backups` list) also carries `backup`, its first backup or null, as views did
 * before they could list several: scripts and dashboards that read `view.backup` keep working.
 */
export function viewJson(_key: string, value: unknown): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  const v = value as { epoch?: unknown; backups?: unknown; backup?: unknown };
  if (typeof v.epoch !== 'number' || !Array.isArray(v.backups) || 'backup' in v) return value;
  const { epoch, primary, backups, ...rest } = value as View & Record<string, unknown>;
  return { epoch, primary, backup: backups[0] ?? null, backups, ...rest };
}

/** Views in epoch order, each said as what changed from the one before. */
export function toTimeline(history: readonly ViewRecord[]): TimelineEvent[] {
  const out: TimelineEvent[] = [];
  let prev: View | null = null;
  for (const { view, at } of history) {
    const backups = (v: View): string => (v.backups.length > 1 ? `backups ${v.backups.join(', ')}` : `backup ${v.backups[0] ?? '-'}`);
    const who = `primary ${view.primary ?? '-'}, ${backups(view)}`;
    let kind: TimelineEvent['kind'];
    let text: string;
    if (prev === null) {
      kind = 'start';
      text = `epoch ${view.epoch}: ${who}`;
    } else if (prev.primary !== null && view.backups.length === 1 && prev.primary === view.backups[0] && view.primary !== null && prev.backups.includes(view.primary)) {
      kind = 'switchover';
      text = `epoch ${view.epoch}: switchover, ${view.primary ?? 'no node'} took over from ${prev.primary}, which is its backup`;
    } else if (prev.primary !== view.primary) {
      kind = 'failover';
      text = `epoch ${view.epoch}: failover, ${view.primary ?? 'no node'} took over from ${prev.primary ?? 'no node'} (${backups(view)})`;
    } else {
      kind = 'view-change';
      text = `epoch ${view.epoch}: ${backups(prev)} -> ${backups(view).replace(/^backups? /, '')} (primary ${view.primary ?? '-'})`;
    }
    out.push({ epoch: view.epoch, at, kind, view, text });
    prev = view;
  }
  return out;
}

/** A wildcard listen address is reached on loopback. */
function reachable(a: NodeAddress): NodeAddress {
  if (a.host === '0.0.0.0') return { ...a, host: '127.0.0.1' };
  if (a.host === '::') return { ...a, host: '::1' };
  return a;
}

function getJson(addr: NodeAddress, path: string, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: addr.host, port: addr.port, path, timeout: timeoutMs, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch (e) {
          reject(e as Error);
        }
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}
