// MemoryArbiter: the arbiter as one variable in this process, for tests and single-process
// demos. Same contract as the file and etcd arbiters (test/arbiter.test.ts runs one suite on
// all). `down` simulates an arbiter that cannot be reached. Arbiters built on one MemoryStore
// share it, as nodes share a directory: like a view file, the stored view names its cluster,
// and an arbiter of another cluster refuses it.
//
// Identity: a MemoryArbiter built without a store (`memory:` in a config) makes its own store,
// initialized at construction: nothing outlives the process, so there is nothing to init. A
// store made explicitly (`new MemoryStore()`) starts without one, as an uninitialized file
// directory or etcd prefix, until some arbiter on it calls init().

import { LockstepError } from '../errors.js';
import { NO_VIEW, sameView, type View } from '../core/types.js';
import { ArbiterNotInitialized, checkProposal, newIdentity, type Arbiter, type ArbiterIdentity, type CasResult, type InitResult } from './types.js';

export class MemoryStore {
  /** While true every call of every arbiter on this store rejects with E_ARBITER_UNAVAILABLE. */
  down = false;
  view: View = NO_VIEW;
  cluster: string | null = null;
  identity: ArbiterIdentity | null = null;
}

export class MemoryArbiter implements Arbiter {
  readonly description = 'memory:';
  readonly store: MemoryStore;

  constructor(
    readonly cluster = 'test',
    store?: MemoryStore,
  ) {
    if (store === undefined) {
      store = new MemoryStore();
      store.identity = newIdentity(cluster);
    }
    this.store = store;
  }

  /** While true every call rejects with E_ARBITER_UNAVAILABLE. */
  get down(): boolean {
    return this.store.down;
  }
  set down(v: boolean) {
    this.store.down = v;
  }

  async identity(): Promise<ArbiterIdentity> {
    return this.readIdentity();
  }

  async init(): Promise<InitResult> {
    this.reachable();
    if (this.store.identity !== null) return { identity: this.readIdentity(), created: false };
    this.store.identity = newIdentity(this.cluster);
    return { identity: this.store.identity, created: true };
  }

  async compareAndSet(expected: View, next: View): Promise<CasResult> {
    checkProposal(expected, next);
    const cur = this.read(); // read, compare and write in one synchronous step: atomic
    if (!sameView(cur, expected)) return { ok: false, view: cur };
    this.store.view = Object.freeze({ epoch: next.epoch, primary: next.primary, backups: Object.freeze([...next.backups]) });
    this.store.cluster = this.cluster;
    return { ok: true, view: this.store.view };
  }

  async current(): Promise<View> {
    return this.read();
  }

  private reachable(): void {
    if (this.store.down) throw new LockstepError('E_ARBITER_UNAVAILABLE', 'memory arbiter is down');
  }

  private readIdentity(): ArbiterIdentity {
    this.reachable();
    const id = this.store.identity;
    if (id === null) throw new ArbiterNotInitialized(this.description, 'this store has no identity');
    if (id.cluster !== this.cluster) throw new LockstepError('E_ARBITER_CLUSTER', `memory arbiter belongs to cluster ${id.cluster}, not ${this.cluster}`);
    return id;
  }

  private read(): View {
    this.readIdentity();
    if (this.store.cluster !== null && this.store.cluster !== this.cluster) {
      throw new LockstepError('E_ARBITER_CLUSTER', `memory arbiter holds a view of cluster ${this.store.cluster}, not ${this.cluster}`);
    }
    return this.store.view;
  }

  probe(): Promise<View> {
    return this.current();
  }

  async close(): Promise<void> {}
}
