// One compiler tier for every guest, so replicas agree on NaN bits.
//
// V8 compiles wasm twice: first with Liftoff (fast to compile), then, for functions that get
// hot, with TurboFan. The two may produce different NaN bit patterns for the same
// instruction (which operand's payload propagates, canonical or not), and when a function
// tiers up depends on timing. The primary and the backup would then compute different bits
// in a guest's memory and diverge. Pinning every function to TurboFan, compiled before it
// first runs, gives one machine code per function on every replica of the same V8 build.
// (The alternative, rewriting every float operation to canonicalize NaNs, costs run time in
// every float op; binaryen's --denan is not that: it replaces NaNs with 0.)
//
// V8 reads these flags when it compiles a module, so they must be set before the first
// WebAssembly.Module is made in this process; `loadModule` calls this first.

import v8 from 'node:v8';

const FLAGS = ['--no-liftoff', '--no-wasm-tier-up', '--no-wasm-dynamic-tiering'] as const;
let pinned = false;

export function pinWasmTier(): void {
  if (pinned) return;
  for (const f of FLAGS) v8.setFlagsFromString(f);
  pinned = true;
}

export const PINNED_WASM_FLAGS: readonly string[] = FLAGS;
