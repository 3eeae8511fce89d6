// The arbiter: VMware FT's shared-storage test-and-set, the one place views live (DESIGN.md §2,
// §5). A single atomic compareAndSet of the whole view is the only way to change who is
// primary; everything else (failure detection, recruiting) only decides what to propose.
// An arbiter that cannot be read or written says so (E_ARBITER_UNAVAILABLE) and never guesses:
// the caller waits and retries, as VMware FT "just waits until it can".
//
// Every arbiter has an identity, created once by `lockstep init` (never on first use): a random
// id, the cluster's name and the creation time. Nodes carry the id in the peer handshake and
// refuse a peer whose arbiter is another one: two config copies whose relative `file:arb`
// resolved to two directories gave two arbiters, each with its own primary (issue 14).
//
// This file is the bottom of the arbiter package: types and the proposal check only. The
// implementations (memory.ts, file.ts, etcd.ts) import it; the factory (open.ts) imports them.

import { randomBytes } from 'node:crypto';
import { LockstepError } from '../errors.js';
import { formatView, type View } from '../core/types.js';

export interface CasResult {
  readonly ok: boolean;
  /** What the arbiter holds after the call (on a win, `next`). */
  readonly view: View;
}

export interface Arbiter {
  /**
   * Atomic: if the arbiter holds exactly `expected` (NO_VIEW = nothing yet), make `next`
   * (epoch expected.epoch+1) the current view. Rejects with LockstepError E_ARBITER_UNAVAILABLE
   * when the store cannot be read or written in time: the caller retries later, never guesses.
   * E_ARBITER_CLUSTER: the store holds another cluster's view; E_ARBITER_AUTH: the store
   * refuses this node's credentials. Neither is fixed by waiting.
   */
  compareAndSet(expected: View, next: View): Promise<CasResult>;
  current(): Promise<View>;
  /**
   * Read the current view and check, as far as the store allows without changing anything,
   * that this node could also write it (credentials, permissions, the cluster). A node calls
   * it once at start, so that what no retry can fix is a clear error there and then.
   */
  probe(): Promise<View>;
  /**
   * The identity `init` created. An arbiter without one rejects this and every other call with
   * ArbiterNotInitialized (code E_ARBITER_UNAVAILABLE, saying to run lockstep init); one of
   * another cluster with E_ARBITER_CLUSTER.
   */
  identity(): Promise<ArbiterIdentity>;
  /**
   * Create the identity if there is none, atomically (exactly one of racing inits creates it);
   * otherwise return the one there (`created: false`). The only call that creates anything.
   */
  init(): Promise<InitResult>;
  /** Free connections and timers; later calls reject. */
  close(): Promise<void>;
  /**
   * Every view the arbiter still holds, oldest first, with when it was written where the store
   * knows it: for the dashboard's timeline, never for deciding. Absent where the store keeps only
   * the current view (etcd).
   */
  history?(): Promise<readonly ViewRecord[]>;
  /** Which store, for logs and status: 'file:/abs/dir', 'etcd://h:p,h:p/prefix (key ...)'. */
  readonly description: string;
}

/** A view as the arbiter recorded it. */
export interface ViewRecord {
  readonly view: View;
  /** ISO 8601, when it was written (null: the store does not say). */
  readonly at: string | null;
}

/** Who an arbiter is: created once, never changed. */
export interface ArbiterIdentity {
  /** 32 hex digits, random. */
  readonly id: string;
  readonly cluster: string;
  /** ISO 8601, when `lockstep init` created it. */
  readonly createdAt: string;
}

export interface InitResult {
  readonly identity: ArbiterIdentity;
  /** False: the arbiter already had an identity (returned as it is). */
  readonly created: boolean;
}

/** The arbiter has no identity: `lockstep init` was never run on it (or the path is wrong). */
export class ArbiterNotInitialized extends LockstepError {
  readonly notInitialized = true;
  constructor(description: string, detail: string) {
    super(
      'E_ARBITER_UNAVAILABLE',
      `arbiter ${description} is not initialized (${detail}): run \`lockstep init --config FILE\` once for the cluster, then start the nodes; if it was initialized, this node's arbiter path is wrong (a relative file: path resolves against the config file's directory)`,
    );
  }
}

export function isNotInitialized(e: unknown): e is ArbiterNotInitialized {
  return e instanceof ArbiterNotInitialized;
}

export function newIdentity(cluster: string): ArbiterIdentity {
  return Object.freeze({ id: randomBytes(16).toString('hex'), cluster, createdAt: new Date().toISOString() });
}

/** The JSON an identity is stored as (file, etcd), one canonical form. */
export function encodeIdentity(i: ArbiterIdentity): string {
  return JSON.stringify({ id: i.id, cluster: i.cluster, createdAt: i.createdAt });
}

/**
 * Parse a stored identity; `where` names it in errors. Garbage is E_ARBITER_UNAVAILABLE (never
 * guessed around); another cluster's is E_ARBITER_CLUSTER.
 */
export function decodeIdentity(text: string, where: string, cluster: string): ArbiterIdentity {
  let o: Record<string, unknown> | null = null;
  try {
    o = JSON.parse(text) as Record<string, unknown> | null;
  } catch {
    // handled below
  }
  if (typeof o !== 'object' || o === null || typeof o.id !== 'string' || !/^[0-9a-f]{8,64}$/.test(o.id) || typeof o.cluster !== 'string' || typeof o.createdAt !== 'string') {
    throw new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter identity ${where} is not valid: ${JSON.stringify(text.slice(0, 200))}; it is written once by lockstep init and never edited`);
  }
  if (o.cluster !== cluster) {
    throw new LockstepError('E_ARBITER_CLUSTER', `arbiter identity ${where} belongs to cluster ${JSON.stringify(o.cluster)}, not ${JSON.stringify(cluster)}: give every cluster its own arbiter`);
  }
  return Object.freeze({ id: o.id, cluster: o.cluster, createdAt: o.createdAt });
}

/** Options every arbiter gets from the factory (open.ts). */
export interface ArbiterOptions {
  /** The cluster's name: views are scoped by it (etcd key, a field of file and memory views). */
  readonly cluster: string;
  /** Relative file: directories resolve against it (default: cwd). */
  readonly baseDir?: string;
  /** Bound on one call to a remote store (etcd); past it the call is E_ARBITER_UNAVAILABLE. */
  readonly timeoutMs?: number;
  readonly etcd?: EtcdClientOptions;
}

/** How to reach an etcd that needs TLS or a user (bytes already read from the config's files). */
export interface EtcdClientOptions {
  /** CA that signed the etcd servers' certificates; set = TLS (https) to every endpoint. */
  readonly ca?: Uint8Array;
  /** Client certificate and key, for an etcd started with --client-cert-auth. */
  readonly cert?: Uint8Array;
  readonly key?: Uint8Array;
  readonly user?: string;
  readonly password?: string;
}

export interface EtcdEndpoint { readonly host: string; readonly port: number }

export type ArbiterSpec =
  | { readonly kind: 'file'; readonly dir: string }
  | { readonly kind: 'memory' }
  | { readonly kind: 'etcd'; readonly endpoints: readonly EtcdEndpoint[]; readonly prefix: string };

/**
 * The JSON a stored view is written as (file, etcd), keys in this order, one canonical form.
 * A view with at most one backup is written exactly as releases before several backups wrote
 * it (`backup`: an id or null), so a stored view compares equal across a rolling upgrade; only
 * a view with two or more backups adds `backups` (a release before it cannot read that view).
 */
export function encodeView(cluster: string, v: View): string {
  const more = v.backups.length > 1 ? { backups: v.backups } : {};
  return JSON.stringify({ cluster, epoch: v.epoch, primary: v.primary, backup: v.backups[0] ?? null, ...more });
}

/**
 * The backups of a stored view's JSON object (`backup`, and `backups` when there are several),
 * or null if they are not well formed: ids are non-empty strings, none repeated, none the primary.
 */
export function storedBackups(o: Record<string, unknown>): string[] | null {
  const id = (x: unknown): x is string => typeof x === 'string' && x !== '';
  let list: string[];
  if (o.backups !== undefined) {
    if (!Array.isArray(o.backups) || o.backups.length < 2 || !o.backups.every(id) || o.backup !== o.backups[0]) return null;
    list = o.backups as string[];
  } else if (o.backup === null) {
    list = [];
  } else if (id(o.backup)) {
    list = [o.backup];
  } else {
    return null;
  }
  return new Set(list).size === list.length && !list.includes(o.primary as string) ? list : null;
}

/** A proposal that breaks these rules is a bug in the caller, not an arbiter outcome: a plain Error. */
export function checkProposal(expected: View, next: View): void {
  const ok =
    Number.isSafeInteger(expected.epoch) && expected.epoch >= 0 && next.epoch === expected.epoch + 1 &&
    typeof next.primary === 'string' && next.primary !== '' && !next.backups.includes(next.primary) && new Set(next.backups).size === next.backups.length;
  if (!ok) throw new Error(`invalid arbiter proposal ${formatView(expected)} -> ${formatView(next)}`);
}
