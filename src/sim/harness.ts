// A hand-driven cluster for scenario tests: the same core as everywhere, but every message,
// arbiter answer and tick happens only when the test says so. Where the simulator draws
// faults at random, a scenario scripts one case of the paper exactly (the backup fails, both
// sides suspect each other, a deposed primary wakes up...) and asserts what follows.
//
// The guest here is a stand-in that counts: the primary's "state" is its entries, a snapshot
// is the text `snap@INDEX`. Scenario tests are about the protocol; the kv guest has its own.

import {
  NO_VIEW,
  canAppend,
  createReplica,
  sameView,
  step,
  type Action,
  type CoreConfig,
  type CoreTiming,
  type Input,
  type PeerMessage,
  type Replica,
  type Role,
  type View,
} from '../core/index.js';

export interface Envelope {
  readonly from: string;
  readonly to: string;
  readonly msg: PeerMessage;
}

interface CasRequest {
  readonly from: string;
  readonly requestId: number;
  readonly expected: View;
  readonly next: View;
}

export const HARNESS_TIMING: CoreTiming = {
  heartbeatMs: 10,
  failureTimeoutMs: 100,
  retransmitMs: 30,
  arbiterRetryMs: 50,
  joinIntervalMs: 20,
  unackedEntriesMax: 1000,
  unackedBytesMax: 1 << 20,
  frameEntriesMax: 16,
  frameBytesMax: 1 << 16,
  catchupEntriesMax: 2,
};

const encoder = new TextEncoder();

export class Harness {
  now = 0;
  readonly replicas = new Map<string, Replica>();
  /** Messages sent and not yet delivered or dropped, in send order. */
  net: Envelope[] = [];
  /** Test-and-set requests that reached the arbiter and are not yet answered. */
  casQueue: CasRequest[] = [];
  /** Reads of the view (arbiterRead) that reached the arbiter and are not yet answered. */
  readQueue: { readonly from: string; readonly requestId: number }[] = [];
  arbiterView: View = NO_VIEW;
  /** When false, requests to the arbiter are lost (it is unreachable). */
  arbiterUp = true;
  /** Replicas that take no steps (crashed or paused); messages to them wait in `net`. */
  readonly stopped = new Set<string>();
  readonly released = new Map<string, number[]>();
  readonly discarded = new Map<string, number[]>();
  /** Entries each follower applied, by index. */
  readonly applied = new Map<string, number[]>();
  /** Entries each follower received (held, acked; applied once the commit index reaches them), by index. */
  readonly received = new Map<string, number[]>();
  readonly snapshots = new Map<string, number[]>();
  readonly logs: { node: string; event: string; fields: Record<string, unknown> }[] = [];
  /** Every `switchover` action (issue 11 item 1): its outcome and code. */
  readonly switchovers: { node: string; outcome: string; code: string | null; reason: string }[] = [];
  readonly roles: { node: string; role: Role; view: View }[] = [];
  private nextOutputId = 1;

  constructor(
    readonly ids: readonly string[] = ['n1', 'n2', 'n3'],
    overrides: Partial<CoreConfig> = {},
  ) {
    for (const id of ids) this.replicas.set(id, createReplica({ ...HARNESS_TIMING, ...overrides, id, nodes: ids }, 0));
  }

  replica(id: string): Replica {
    const r = this.replicas.get(id);
    if (!r) throw new Error(`no replica ${id}`);
    return r;
  }

  role(id: string): Role {
    return this.replica(id).role;
  }

  /** Feed one input to a replica now and carry out its actions. */
  input(id: string, input: Input): Action[] {
    const actions = step(this.replica(id), input, this.now);
    for (const a of actions) this.act(id, a);
    return actions;
  }

  private act(id: string, a: Action): void {
    switch (a.type) {
      case 'send':
        this.net.push({ from: id, to: a.to, msg: a.msg });
        return;
      case 'arbiterCas':
        if (this.arbiterUp) this.casQueue.push({ from: id, requestId: a.requestId, expected: a.expected, next: a.next });
        return;
      case 'arbiterRead':
        if (this.arbiterUp) this.readQueue.push({ from: id, requestId: a.requestId });
        return;
      case 'release':
        this.released.set(id, [...(this.released.get(id) ?? []), ...a.outputIds]);
        return;
      case 'discard':
        this.discarded.set(id, [...(this.discarded.get(id) ?? []), ...a.outputIds]);
        return;
      case 'receive':
        this.received.set(id, [...(this.received.get(id) ?? []), ...a.entries.map((e) => e.index)]);
        return;
      case 'apply':
        this.applied.set(id, [...(this.applied.get(id) ?? []), ...a.entries.map((e) => e.index)]);
        return;
      case 'restoreChunk':
        if (!a.last) return;
        this.snapshots.set(id, [...(this.snapshots.get(id) ?? []), a.index]);
        this.applied.set(id, []);
        return;
      case 'takeSnapshot': {
        const index = this.replica(id).lastIndex;
        this.input(id, { type: 'snapshot', index, data: encoder.encode(`snap@${index}`) });
        return;
      }
      case 'role':
        this.roles.push({ node: id, role: a.role, view: a.view });
        return;
      case 'log':
        this.logs.push({ node: id, event: a.event, fields: a.fields });
        return;
      case 'switchover':
        this.switchovers.push({ node: id, outcome: a.outcome, code: a.code, reason: a.reason });
        return;
    }
  }

  /** Boot every replica; `first` reaches the arbiter first and becomes primary. */
  boot(first = this.ids[0]!): void {
    for (const id of [first, ...this.ids.filter((x) => x !== first)]) this.input(id, { type: 'start' });
    this.answerArbiter();
  }

  /** The arbiter answers every queued test-and-set, in arrival order, then every queued read. */
  answerArbiter(): void {
    const queue = this.casQueue;
    this.casQueue = [];
    for (const req of queue) {
      const ok = sameView(this.arbiterView, req.expected) && req.next.epoch === req.expected.epoch + 1;
      if (ok) this.arbiterView = req.next;
      if (!this.stopped.has(req.from)) this.input(req.from, { type: 'arbiterResult', requestId: req.requestId, ok, view: this.arbiterView });
    }
    const reads = this.readQueue;
    this.readQueue = [];
    for (const req of reads) if (!this.stopped.has(req.from)) this.input(req.from, { type: 'arbiterView', requestId: req.requestId, view: this.arbiterView });
  }

  /** Deliver queued messages (those matching `which`), in order, until none is left. */
  deliver(which: (e: Envelope) => boolean = () => true, maxRounds = 100): number {
    let delivered = 0;
    for (let round = 0; round < maxRounds; round++) {
      const ready = this.net.filter((e) => which(e) && !this.stopped.has(e.to));
      if (ready.length === 0) break;
      this.net = this.net.filter((e) => !ready.includes(e));
      for (const e of ready) {
        if (this.stopped.has(e.to)) continue;
        delivered++;
        this.input(e.to, { type: 'message', from: e.from, msg: e.msg });
      }
      for (const id of this.ids) if (!this.stopped.has(id)) this.input(id, { type: 'flush' });
    }
    return delivered;
  }

  /** Lose queued messages matching `which`. */
  drop(which: (e: Envelope) => boolean): number {
    const before = this.net.length;
    this.net = this.net.filter((e) => !which(e));
    return before - this.net.length;
  }

  /** Let `ms` pass in steps of `stepMs`, ticking running replicas; optionally deliver and answer as it goes. */
  advance(ms: number, opts: { deliver?: (e: Envelope) => boolean; arbiter?: boolean; stepMs?: number } = {}): void {
    const stepMs = opts.stepMs ?? 5;
    const end = this.now + ms;
    while (this.now < end) {
      this.now = Math.min(end, this.now + stepMs);
      for (const id of this.ids) if (!this.stopped.has(id)) this.input(id, { type: 'tick' });
      if (opts.deliver) this.deliver(opts.deliver);
      if (opts.arbiter) this.answerArbiter();
    }
  }

  /** Run with a healthy network and arbiter for `ms`. */
  settle(ms = 200): void {
    this.advance(ms, { deliver: () => true, arbiter: true });
  }

  /** Primary: append `n` entries and hold one output after each; returns the output ids. */
  write(id: string, n = 1, bytes = 8): number[] {
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      if (!canAppend(this.replica(id))) throw new Error(`${id} cannot append (flow control or not primary)`);
      this.input(id, { type: 'append', payload: new Uint8Array(bytes) });
      ids.push(this.hold(id, false));
    }
    this.input(id, { type: 'flush' });
    return ids;
  }

  /** Primary: hold a read's output (it needs a fresh ack); returns its id. */
  read(id: string): number {
    const outputId = this.hold(id, true);
    this.input(id, { type: 'flush' });
    return outputId;
  }

  private hold(id: string, fresh: boolean): number {
    const outputId = this.nextOutputId++;
    this.input(id, { type: 'hold', outputId, fresh });
    return outputId;
  }

  isReleased(id: string, outputId: number): boolean {
    return (this.released.get(id) ?? []).includes(outputId);
  }

  /** A crash: the replica takes no more steps and its in-flight messages are lost. */
  crash(id: string): void {
    this.stopped.add(id);
    this.drop((e) => e.from === id || e.to === id);
  }

  /**
   * A crashed replica starts again: a fresh core (same config), given `start` with what the
   * driver would give it (`kept`: the state a durable node's disk held; `recovered`: named in
   * the arbiter's view). Its messages in flight were dropped at the crash.
   */
  restart(id: string, start: Omit<Extract<Input, { type: 'start' }>, 'type'> = {}): void {
    const old = this.replica(id);
    this.replicas.set(id, createReplica(old.config, this.now));
    this.stopped.delete(id);
    this.input(id, { type: 'start', ...start });
  }

  /** A pause (SIGSTOP, a long GC): no steps; messages to it wait until resume. */
  pause(id: string): void {
    this.stopped.add(id);
  }

  resume(id: string): void {
    this.stopped.delete(id);
  }

  events(node: string, event: string): number {
    return this.logs.filter((l) => l.node === node && l.event === event).length;
  }
}

/** A message filter: messages between the named replicas only (both ways when `both`). */
export function between(a: string, b: string, both = true): (e: Envelope) => boolean {
  return (e) => (e.from === a && e.to === b) || (both && e.from === b && e.to === a);
}

/** A message filter: everything except messages between a and b. */
export function except(a: string, b: string): (e: Envelope) => boolean {
  const f = between(a, b);
  return (e) => !f(e);
}
