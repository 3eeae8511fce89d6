// The arbiter: VMware FT's shared-storage test-and-set, the one place views live (DESIGN.md §2,
// §5). A single atomic compareAndSet of the whole view is the only way to change who is
// primary; everything else (failure detection, recruiting) only decides what to propose.
// An arbiter that cannot be read or written says so (E_ARBITER_UNAVAILABLE) and never guesses:
// the caller waits and retries, as VMware FT "just waits until it can".

import { resolve } from 'node:path';
import { LockstepError } from '../errors.js';
import { formatView, type View } from '../core/types.js';
import { FileArbiter } from './file.js';
import { MemoryArbiter } from './memory.js';

export interface CasResult {
  readonly ok: boolean;
  /** What the arbiter holds after the call (on a win, `next`). */
  readonly view: View;
}

export interface Arbiter {
  /**
   * Atomic: if the arbiter holds exactly `expected` (NO_VIEW = nothing yet), make `next`
   * (epoch expected.epoch+1) the current view. Rejects with LockstepError E_ARBITER_UNAVAILABLE
   * when the store cannot be read or written: the caller retries later, never guesses.
   */
  compareAndSet(expected: View, next: View): Promise<CasResult>;
  current(): Promise<View>;
  readonly description: string;
}

export type ArbiterSpec = { readonly kind: 'file'; readonly dir: string } | { readonly kind: 'memory' };

/** Parses an arbiter spec without touching anything: 'file:DIR' | 'memory:'. Shared by the config validator. */
export function parseArbiterSpec(spec: string): ArbiterSpec {
  if (spec.startsWith('file:')) {
    const dir = spec.slice('file:'.length);
    if (dir.trim() === '') throw new LockstepError('E_CONFIG_INVALID', `arbiter spec '${spec}' names no directory; use file:DIR`);
    return { kind: 'file', dir };
  }
  if (spec === 'memory:') return { kind: 'memory' };
  if (spec.startsWith('etcd://')) throw new LockstepError('E_NOT_IMPLEMENTED', 'the etcd arbiter is not built yet; use file:DIR');
  throw new LockstepError('E_CONFIG_INVALID', `arbiter spec '${spec}' is not understood; use file:DIR (or memory: for a single-process test)`);
}

/** Opens an arbiter. 'file:DIR' resolves a relative DIR against baseDir (default: cwd); 'memory:' is a fresh in-process arbiter. */
export function openArbiter(spec: string, opts: { baseDir?: string } = {}): Arbiter {
  const parsed = parseArbiterSpec(spec);
  return parsed.kind === 'file' ? new FileArbiter(resolve(opts.baseDir ?? process.cwd(), parsed.dir)) : new MemoryArbiter();
}

/** A proposal that breaks these rules is a bug in the caller, not an arbiter outcome: a plain Error. */
export function checkProposal(expected: View, next: View): void {
  const ok =
    Number.isSafeInteger(expected.epoch) && expected.epoch >= 0 && next.epoch === expected.epoch + 1 &&
    typeof next.primary === 'string' && next.primary !== '' && next.backup !== next.primary;
  if (!ok) throw new Error(`invalid arbiter proposal ${formatView(expected)} -> ${formatView(next)}`);
}
