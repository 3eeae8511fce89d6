// The arbiter: VMware FT's shared-storage test-and-set, the one place views live (DESIGN.md §2,
// §5). A single atomic compareAndSet of the whole view is the only way to change who is
// primary; everything else (failure detection, recruiting) only decides what to propose.
// An arbiter that cannot be read or written says so (E_ARBITER_UNAVAILABLE) and never guesses:
// the caller waits and retries, as VMware FT "just waits until it can".
//
// This file is the bottom of the arbiter package: types and the proposal check only. The
// implementations (memory.ts, file.ts, etcd.ts) import it; the factory (open.ts) imports them.

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
  /** Free connections and timers; later calls reject. */
  close(): Promise<void>;
  /** Which store, for logs and status: 'file:/abs/dir', 'etcd://h:p,h:p/prefix (key ...)'. */
  readonly description: string;
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

/** The JSON a stored view is written as (file, etcd), keys in this order, one canonical form. */
export function encodeView(cluster: string, v: View): string {
  return JSON.stringify({ cluster, epoch: v.epoch, primary: v.primary, backup: v.backup });
}

/** A proposal that breaks these rules is a bug in the caller, not an arbiter outcome: a plain Error. */
export function checkProposal(expected: View, next: View): void {
  const ok =
    Number.isSafeInteger(expected.epoch) && expected.epoch >= 0 && next.epoch === expected.epoch + 1 &&
    typeof next.primary === 'string' && next.primary !== '' && next.backup !== next.primary;
  if (!ok) throw new Error(`invalid arbiter proposal ${formatView(expected)} -> ${formatView(next)}`);
}
