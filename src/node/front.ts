// The seam between a replica process and the service it replicates.
//
// ReplicaNode (replica-node.ts) owns what every replica has whatever it runs: the core, the
// clock, the logging channel, the arbiter, the admin port. A front owns the service and how
// the world reaches it: the kv front runs the kv machine behind a RESP2 client port; the wasm
// front runs a WebAssembly guest whose own listening sockets are the client port. The node
// hands the front the core's service-facing actions (apply, snapshot, release, discard, role)
// and the front feeds the core its service-facing inputs (append, hold, snapshot) through
// `FrontHost.input`.

import type { Entry, Input, Replica, Role, View } from '../core/index.js';
import type { ClusterConfig } from './config.js';
import type { RestoreStream, SnapshotStream } from '../guest/snapshot-stream.js';

export type LogFields = Record<string, unknown>;

/** What a front may use of its node. */
export interface FrontHost {
  readonly id: string;
  readonly config: ClusterConfig;
  /** The core's state (read only: the front changes it only through `input`). */
  readonly replica: Replica;
  /** The newest view known here, the arbiter's included: for redirecting clients, never for deciding. */
  readonly knownView: View;
  /** Feed the core one input and carry out its actions (may call back into the front). */
  input(input: Input): void;
  /** Run `afterFlush` at the end of this event-loop turn. */
  scheduleFlush(): void;
  log(level: 'info' | 'warn', event: string, fields: LogFields): void;
  /** This replica gave up (a fail-stop event in the service): log it and exit the process. */
  failStop(reason: string): void;
  /** SENTINEL FAILOVER: begin a planned switchover; whether it began (refused: the code and why). */
  beginSwitchover?(to: string | null): { readonly started: boolean; readonly code: string | null; readonly message: string };
  /** Where a front reports each answered command's latency (absent: not measured). */
  readonly metrics?: { command(name: string, startMs: number): void };
}

export interface ServiceFront {
  /**
   * The service broke on this primary and it waits only for its backup to take one last entry
   * (a command's quarantine) before it stops: why, or null. Such a node must never drop its
   * backup from the view: it would be left the only holder, with a broken state.
   */
  brokenReason?(): string | null;
  /** Open what the service listens on (the kv front's client port). */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Follower: apply entries, in order. */
  apply(entries: readonly Entry[]): void;
  /** Follower: replace the service with the one in this snapshot. */
  installSnapshot(index: number, data: Uint8Array): void;
  /** Primary: the service's state as of the last index appended. */
  takeSnapshot(): Uint8Array;
  /**
   * Optional (issue 9): the service's state as of the last index appended, in pieces taken a
   * slice at a time while the service keeps running. Without it, takeSnapshot is used.
   */
  snapshotStream?(): SnapshotStream;
  /**
   * Optional: restore a snapshot stream's pieces one at a time; the service is replaced at
   * finish. Without it, the pieces are gathered and given to installSnapshot.
   */
  restoreStream?(): RestoreStream;
  /** The output rule let these held outputs go, in this order. */
  release(outputIds: readonly number[]): void;
  /** These held outputs will never go out. */
  discard(outputIds: readonly number[], reason: string): void;
  /** The role or view changed. */
  role(role: Role, view: View, reason: string): void;
  /**
   * Halted: this replica starts over as a spare. The waiting clients are failed; the service is
   * dropped (an empty spare), or kept when `keepState` (a durable node keeps what its disk holds).
   */
  reset(keepState?: boolean): void;
  /** After an input that may have opened flow control (acks, ticks, arbiter answers). */
  flowMayHaveOpened(): void;
  /** End of an event-loop turn, after frames were sent: write what was released. */
  afterFlush(): void;
  /** Fields for /status. */
  status(): Record<string, unknown>;
  /** Prometheus lines for /metrics. */
  metrics(metric: (name: string, type: 'gauge' | 'counter', help: string, value: number) => void): void;
}
