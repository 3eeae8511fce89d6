// MemoryArbiter: the arbiter as one variable in this process, for tests and single-process
// demos. Same contract as the file arbiter (test/arbiter.test.ts runs one suite on both).
// `down` simulates an arbiter that cannot be reached.

import { LockstepError } from '../errors.js';
import { NO_VIEW, sameView, type View } from '../core/types.js';
import { checkProposal, type Arbiter, type CasResult } from './types.js';

export class MemoryArbiter implements Arbiter {
  readonly description = 'memory:';
  /** While true every call rejects with E_ARBITER_UNAVAILABLE. */
  down = false;
  private view: View = NO_VIEW;

  async compareAndSet(expected: View, next: View): Promise<CasResult> {
    checkProposal(expected, next);
    this.check();
    if (!sameView(this.view, expected)) return { ok: false, view: this.view };
    this.view = Object.freeze({ epoch: next.epoch, primary: next.primary, backup: next.backup });
    return { ok: true, view: this.view };
  }

  async current(): Promise<View> {
    this.check();
    return this.view;
  }

  private check(): void {
    if (this.down) throw new LockstepError('E_ARBITER_UNAVAILABLE', 'memory arbiter is down');
  }
}
