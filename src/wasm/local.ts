// Record and replay in one process, with no cluster: the primary's half writes its log to
// memory, the backup's half reads it back. For tests, benchmarks and `lockstep replay`-style
// checks of a guest's determinism. The replicated path (wasm-front.ts) uses the same runtime.

import type { LoadedModule } from './module.js';
import { GuestRuntime, type GuestEnd, type RecordSink, type RuntimeMode } from './runtime.js';
import { WasiHost, type OutputEffect } from './wasi.js';

export interface LocalGuest {
  readonly args: readonly string[];
  readonly env?: readonly string[];
  /** The guest's directory (fd 3). */
  readonly root: string;
  readonly stdin?: Uint8Array;
  readonly listen?: readonly { host: string; port: number }[];
}

export interface LocalRun {
  readonly end: GuestEnd;
  /** The log entries (record), or those given (replay). */
  readonly entries: readonly Uint8Array[];
  readonly calls: number;
  readonly memoryHash: string | null;
  readonly outputDigest: string;
  readonly hostState: string;
  /** What the guest wrote to stdout (record and plain; a replay sends nothing). */
  readonly stdout: string;
  readonly ms: number;
}

/** Run a guest with its log kept in memory (`record`), or with no log at all (`plain`). */
export function recordLocally(loaded: LoadedModule, g: LocalGuest, mode: 'record' | 'plain' = 'record'): Promise<LocalRun> {
  const entries: Uint8Array[] = [];
  let stdout = '';
  let host: WasiHost | null = null;
  const sink: RecordSink = {
    canRecord: () => true,
    whenCanRecord: () => Promise.resolve(),
    append: (p) => void entries.push(p),
    // No backup here: the output rule has nothing to wait for.
    output: (effects: readonly OutputEffect[]) => host!.performOutputs(effects),
  };
  return runLocally(loaded, g, mode, {
    entries,
    sink,
    stdout: (b) => (stdout += Buffer.from(b).toString('utf8')),
    stdoutText: () => stdout,
    onHost: (h) => (host = h),
  });
}

/** Replay a recorded log: the backup's half. */
export function replayLocally(loaded: LoadedModule, g: LocalGuest, entries: readonly Uint8Array[]): Promise<LocalRun> {
  return runLocally(loaded, g, 'replay', {
    entries,
    prepare: (rt) => entries.forEach((e) => rt.feedEntry(e)),
  });
}

/**
 * Restore a guest snapshot (GuestRuntime.snapshot) and replay the log entries after it: a
 * backup recruited by snapshot. Entries may start before the snapshot's call count; the
 * records the snapshot holds already are dropped.
 */
export function restoreLocally(loaded: LoadedModule, g: LocalGuest, snapshot: Uint8Array, entries: readonly Uint8Array[]): Promise<LocalRun> {
  return runLocally(loaded, g, 'replay', {
    entries,
    from: snapshot,
    prepare: (rt) => entries.forEach((e) => rt.feedEntry(e)),
  });
}

interface RunParts {
  readonly entries: readonly Uint8Array[];
  readonly sink?: RecordSink;
  readonly stdout?: (b: Uint8Array) => void;
  readonly stdoutText?: () => string;
  readonly onHost?: (h: WasiHost) => void;
  readonly prepare?: (rt: GuestRuntime) => void;
  /** Start from this guest snapshot instead of from _start. */
  readonly from?: Uint8Array;
}

async function runLocally(loaded: LoadedModule, g: LocalGuest, mode: RuntimeMode, parts: RunParts): Promise<LocalRun> {
  let rt: GuestRuntime | null = null;
  const discard = (): void => {};
  const host = new WasiHost({
    args: g.args,
    env: g.env ?? [],
    root: g.root,
    listen: g.listen ?? [],
    ...(g.stdin ? { stdin: g.stdin } : {}),
    output: (e) => rt!.onOutput(e),
    stdout: parts.stdout ?? discard,
    stderr: parts.stdout ?? discard,
    mode: mode === 'replay' ? 'replay' : 'live',
  });
  parts.onHost?.(host);
  const t0 = performance.now();
  try {
    const opts = { loaded, host, mode, ...(parts.sink ? { sink: parts.sink } : {}) };
    rt = parts.from ? GuestRuntime.restore(opts, parts.from) : new GuestRuntime(opts);
    parts.prepare?.(rt);
    if (mode !== 'replay' && (g.listen ?? []).length > 0) await host.openListeners();
    const end = await rt.run();
    return {
      end, entries: parts.entries, calls: rt.callCount, memoryHash: rt.memoryHash(), outputDigest: rt.outputDigest(),
      hostState: host.hostState(), stdout: parts.stdoutText?.() ?? '', ms: performance.now() - t0,
    };
  } finally {
    host.close();
  }
}
