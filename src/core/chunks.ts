// A driver-side helper for recruits whose guest restores from one whole snapshot: collect the
// core's restoreChunk actions and hand over the snapshot's bytes when the last one arrives.
// (A guest that restores chunk by chunk takes the actions directly instead.)

import type { Action } from './types.js';

type RestoreChunk = Extract<Action, { type: 'restoreChunk' }>;

export class ChunkAssembler {
  private parts: Uint8Array[] = [];
  private bytes = 0;
  private index = -1;

  /** Add a chunk; on the last one, returns the whole snapshot (and starts afresh). */
  add(a: RestoreChunk): Uint8Array | null {
    if (a.chunk === 0 || a.index !== this.index) this.clear();
    this.index = a.index;
    // The chunk aliases a received frame: keep a copy only if it must outlive this call.
    this.parts.push(a.last && this.parts.length === 0 ? a.data : a.data.slice());
    this.bytes += a.data.length;
    if (!a.last) return null;
    const whole = this.parts.length === 1 ? this.parts[0]! : concat(this.parts, this.bytes);
    this.clear();
    return whole;
  }

  /** Bytes held for a snapshot not yet complete. */
  get pendingBytes(): number {
    return this.bytes;
  }

  clear(): void {
    this.parts = [];
    this.bytes = 0;
    this.index = -1;
  }
}

function concat(parts: readonly Uint8Array[], n: number): Uint8Array {
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
