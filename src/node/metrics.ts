// The node's metrics, kept in a prom-client registry (the Prometheus text format is prom-client's,
// not ours). Three kinds of source:
//
// - State read at scrape time (role, epoch, log index, the transport's and the front's counters):
//   `refresh()` copies them into gauges and counters just before the registry is rendered.
// - Per-command latency, from a command's arrival to its reply's release by the output rule
//   (the wait for the backup's ack included). The hot path only appends the name and the time to
//   a batch (`command()`); once a second (`tick()`), or when the batch is full, the batch goes
//   into the histogram and the per-command counters. bench/README.md has the cost.
// - Events: the ack round trip (a frame sent to a follower until its ack came back) and the
//   failover duration (the last frame heard from the old primary until this node went live).
//
// The same tick keeps a per-second series of the last minutes (ops/s, mean and highest latency)
// for the dashboard (admin.ts).

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { PeerMessage, Role } from '../core/index.js';

/** Latency buckets in seconds: 50 µs to 10 s (a reply waits at least one ack round trip). */
const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];
/** Failover: failure detection (failureTimeoutMs) plus the arbiter's test-and-set. */
const FAILOVER_BUCKETS = [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30];
/** The batch is put into the histogram when it holds this many commands, even within a second. */
const BATCH_MAX = 16_384;
/** Distinct command labels at most; the rest are counted as "other" (a client picks the names). */
const COMMAND_LABELS_MAX = 64;
/** Frames in flight per peer whose send time is kept for the ack round trip. */
const FRAMES_TRACKED_MAX = 4096;
/** Seconds of per-second samples kept for the dashboard. */
export const SERIES_SECONDS = 300;

export interface SeriesPoint {
  /** Wall-clock milliseconds at the end of the second. */
  readonly t: number;
  readonly ops: number;
  /** Mean and highest command latency in that second, in milliseconds (null: no command). */
  readonly meanMs: number | null;
  readonly maxMs: number | null;
}

type MetricFn = (name: string, type: 'gauge' | 'counter', help: string, value: number) => void;

/** Numbers the registry reads at scrape time, supplied by the node. */
export interface MetricSources {
  /** The replica's role now (lockstep_role{role=...} is 1 for it, 0 for the others). */
  currentRole(): Role;
  /** Every other scraped number, unlabelled. */
  gauges(set: MetricFn): void;
}

const ROLES: readonly Role[] = ['booting', 'spare', 'backup', 'primary', 'halted'];

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly latency: Histogram;
  private readonly ackRtt: Histogram;
  private readonly failover: Histogram;
  private readonly commandsByName: Counter;
  private readonly commandSeconds: Counter;
  private readonly roleGauge: Gauge;
  private readonly scraped = new Map<string, Gauge | Counter>();
  // The batch: parallel arrays, reused.
  private batchNames: string[] = [];
  private batchMs = new Float64Array(BATCH_MAX);
  private batchLen = 0;
  private readonly labels = new Set<string>();
  private readonly labelOf = new Map<string, string>();
  private readonly series: SeriesPoint[] = [];
  private secondOps = 0;
  private secondSumMs = 0;
  private secondMaxMs = 0;
  private readonly framesSent = new Map<string, Map<number, number>>();
  private lastFrameFromPrimaryMs: number | null = null;
  private lastRole: Role = 'booting';

  constructor(private readonly sources: MetricSources) {
    collectDefaultMetrics({ register: this.registry });
    this.roleGauge = new Gauge({ name: 'lockstep_role', help: 'The replica\'s role (1 for the current one).', labelNames: ['role'], registers: [this.registry] });
    this.latency = new Histogram({
      name: 'lockstep_command_latency_seconds',
      help: 'Client command latency on this node: from the command read to its reply released, the output rule\'s wait for the backup\'s ack included.',
      buckets: LATENCY_BUCKETS,
      registers: [this.registry],
    });
    this.ackRtt = new Histogram({
      name: 'lockstep_ack_round_trip_seconds',
      help: 'Primary: from a frame sent to a follower until the follower\'s ack of it arrived.',
      buckets: LATENCY_BUCKETS,
      registers: [this.registry],
    });
    this.failover = new Histogram({
      name: 'lockstep_failover_duration_seconds',
      help: 'A backup going live: from the last frame it heard from the old primary until it became primary.',
      buckets: FAILOVER_BUCKETS,
      registers: [this.registry],
    });
    this.commandsByName = new Counter({
      name: 'lockstep_commands_by_name_total',
      help: `Client commands answered, by command name (at most ${COMMAND_LABELS_MAX} names, then "other").`,
      labelNames: ['command'],
      registers: [this.registry],
    });
    this.commandSeconds = new Counter({
      name: 'lockstep_command_seconds_total',
      help: 'Seconds spent from command read to reply released, summed by command name.',
      labelNames: ['command'],
      registers: [this.registry],
    });
  }

  // ---- hot path ----------------------------------------------------------------------------

  /** A command's reply was released (or answered at once): `startMs` is performance.now() at its read. */
  command(name: string, startMs: number): void {
    const i = this.batchLen++;
    this.batchNames[i] = name;
    this.batchMs[i] = performance.now() - startMs;
    if (this.batchLen === BATCH_MAX) this.drain();
  }

  // ---- events ------------------------------------------------------------------------------

  /** Every message this node sends (the frames' send times are kept for the ack round trip). */
  sent(to: string, msg: PeerMessage): void {
    if (msg.type !== 'frame') return;
    let m = this.framesSent.get(to);
    if (m === undefined) this.framesSent.set(to, (m = new Map()));
    m.set(msg.seq, performance.now());
    if (m.size > FRAMES_TRACKED_MAX) m.delete(m.keys().next().value as number);
  }

  /** Every message this node receives (not yet validated: the core does that; a bad one is ignored here). */
  received(from: string, raw: unknown): void {
    const msg = raw as { type?: unknown; seq?: unknown } | null;
    if (typeof msg !== 'object' || msg === null) return;
    if (msg.type === 'frame') {
      this.lastFrameFromPrimaryMs = performance.now();
    } else if (msg.type === 'ack' && typeof msg.seq === 'number') {
      const m = this.framesSent.get(from);
      const at = m?.get(msg.seq);
      if (m === undefined || at === undefined) return;
      this.ackRtt.observe((performance.now() - at) / 1000);
      // Acks are cumulative: frames up to this one will not be acked on their own.
      for (const seq of m.keys()) {
        if (seq > msg.seq) break;
        m.delete(seq);
      }
    }
  }

  /** This node's role changed. A backup that becomes primary has failed over. */
  role(role: Role): void {
    if (role === 'primary' && this.lastRole === 'backup' && this.lastFrameFromPrimaryMs !== null) {
      this.failover.observe((performance.now() - this.lastFrameFromPrimaryMs) / 1000);
    }
    if (role !== 'primary') this.framesSent.clear();
    this.lastRole = role;
  }

  // ---- once a second -----------------------------------------------------------------------

  /** Put the batch into the histogram and counters, and close this second's sample. */
  tick(): void {
    this.drain();
    this.series.push({
      t: Date.now(),
      ops: this.secondOps,
      meanMs: this.secondOps === 0 ? null : round3(this.secondSumMs / this.secondOps),
      maxMs: this.secondOps === 0 ? null : round3(this.secondMaxMs),
    });
    if (this.series.length > SERIES_SECONDS) this.series.shift();
    this.secondOps = 0;
    this.secondSumMs = 0;
    this.secondMaxMs = 0;
  }

  /** The last minutes, one point a second, oldest first. */
  recent(): readonly SeriesPoint[] {
    return this.series;
  }

  private drain(): void {
    const n = this.batchLen;
    if (n === 0) return;
    this.batchLen = 0;
    const counts = new Map<string, { n: number; ms: number }>();
    let last: { n: number; ms: number } | undefined;
    let lastName = '';
    for (let i = 0; i < n; i++) {
      const ms = this.batchMs[i]!;
      this.latency.observe(ms / 1000);
      this.secondSumMs += ms;
      if (ms > this.secondMaxMs) this.secondMaxMs = ms;
      const raw = this.batchNames[i]!;
      if (raw !== lastName || last === undefined) {
        const name = this.label(raw);
        last = counts.get(name);
        if (last === undefined) counts.set(name, (last = { n: 0, ms: 0 }));
        lastName = raw;
      }
      last.n++;
      last.ms += ms;
    }
    this.secondOps += n;
    for (const [command, c] of counts) {
      this.commandsByName.inc({ command }, c.n);
      this.commandSeconds.inc({ command }, c.ms / 1000);
    }
  }

  /** A command name as a label: lower case, checked, at most COMMAND_LABELS_MAX of them (cached by the name as sent). */
  private label(name: string): string {
    const known = this.labelOf.get(name);
    if (known !== undefined) return known;
    const lower = name.toLowerCase();
    let label = 'other';
    if (this.labels.has(lower)) label = lower;
    else if (this.labels.size < COMMAND_LABELS_MAX && /^[a-z][a-z0-9._|-]{0,31}$/.test(lower)) {
      this.labels.add(lower);
      label = lower;
    }
    if (this.labelOf.size < COMMAND_LABELS_MAX * 4) this.labelOf.set(name, label);
    return label;
  }

  // ---- scrape ------------------------------------------------------------------------------

  /** The Prometheus text of every metric, the scraped state freshly read. */
  async text(): Promise<string> {
    this.drain();
    const now = this.sources.currentRole();
    for (const role of ROLES) this.roleGauge.set({ role }, role === now ? 1 : 0);
    this.sources.gauges((name, type, help, value) => {
      let m = this.scraped.get(name);
      if (m === undefined) {
        m = type === 'gauge' ? new Gauge({ name, help, registers: [this.registry] }) : new Counter({ name, help, registers: [this.registry] });
        this.scraped.set(name, m);
      }
      if (m instanceof Gauge) m.set(value);
      else {
        // A total kept elsewhere: the counter takes its value (it never goes down there).
        m.reset();
        if (value > 0) m.inc(value);
      }
    });
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
