// MemoryArbiter: the arbiter as one variable in this process, for tests and single-process
// demos. Same contract as the file and etcd arbiters (test/arbiter.test.ts runs one suite on
// all). `down` simulates an arbiter that cannot be reached. Arbiters built on one MemoryStore
// share it, as nodes share a directory: like a view file, the stored view names its cluster,
// and an arbiter of another cluster refuses it.

import { LockstepError } from '../errors.js';
import { NO_VIEW, sameView, type View } from '../core/types.js';
import { checkProposal, type Arbiter, type CasResult } from './types.js';

export class MemoryStore {
  /** While true every call of every arbiter on this store rejects with E_ARBITER_UNAVAILABLE. */
  down = false;
  view: View = NO_VIEW;
  cluster: string | null = null;
}

export class MemoryArbiter implements Arbiter {
  readonly description = 'memory:';

  constructor(
    readonly cluster = 'test',
    readonly store = new MemoryStore(),
  ) {}

  /** While true every call rejects with E_ARBITER_UNAVAILABLE. */
  get down(): boolean {
    return this.store.down;
  }
  set down(v: boolean) {
    this.store.down = v;
  }

  async compareAndSet(expected: View, next: View): Promise<CasResult> {
    checkProposal(expected, next);
    const cur = this.read(); // read, compare and write in one synchronous step: atomic
    if (!sameView(cur, expected)) return { ok: false, view: cur };
    this.store.view = Object.freeze({ epoch: next.epoch, primary: next.primary, backup: next.backup });
    this.store.cluster = this.cluster;
    return { ok: true, view: this.store.view };
  }

  async current(): Promise<View> {
    return this.read();
  }

  private read(): View {
    if (this.store.down) throw new LockstepError('E_ARBITER_UNAVAILABLE', 'memory arbiter is down');
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
