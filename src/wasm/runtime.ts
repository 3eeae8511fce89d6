// Running a WebAssembly/WASI guest under record or replay (DESIGN.md §3).
//
// One GuestRuntime runs one instance of a guest on the node's main thread. Every host call
// goes through `hostCall`, which is where the hypervisor sits:
//
//   plain   the call is made for real and outputs go out at once (no replication);
//   record  (the primary) the call is made for real; if it is logged (WasiHost.classify) its
//           record goes into the current batch; batches become log entries; an output's
//           effects are handed to the sink only after the entry holding its record, so the
//           output rule can hold them until the backup has that entry;
//   replay  (the backup) a logged call is not made: its record is taken from the log, its
//           function and arguments checked, its memory writes copied in and its return value
//           returned. Local calls (the guest's own directory) are made and checked.
//
// A call that must wait (accept, recv, poll with nothing ready; a backup whose next record has
// not arrived; a primary whose log is full) must not block the event loop: heartbeats and
// acks keep flowing. The module is instrumented with asyncify (module.ts), so the import
// unwinds the guest's stack, the run loop awaits the reason to wait, then rewinds and the
// import is entered again and retries. docs/WASM-BRIDGE.md has why this and not a worker.
//
// The unwound stack is written just below the guest's stack pointer: while the guest is
// suspended nothing uses that memory. The bytes it held are put back after the unwind and again
// after the rewind, so suspending leaves no trace in guest memory: the primary and the backup
// suspend at different calls, and their memory must still hash the same.

import { LockstepError } from '../errors.js';
import type { LoadedModule } from './module.js';
import { GuestMemory, WasiFault } from './memory.js';
import { WasiExit, type OutputEffect, type WasiHost } from './wasi.js';
import {
  RecordBatch,
  describeCall,
  digestBytes,
  digestWrites,
  divergence,
  type CallArg,
  type CallClass,
  type CallRecord,
  type MemWrite,
} from './log.js';
import { Hash64 } from '../guest/bytes.js';

export type RuntimeMode = 'plain' | 'record' | 'replay';

/** Where a recording runtime puts its log and its outputs (the wasm front, or a test). */
export interface RecordSink {
  /** May the guest make another logged call (flow control on the unacked log)? */
  canRecord(): boolean;
  /** Resolves when `canRecord` may have turned true. */
  whenCanRecord(): Promise<void>;
  /** One log entry: a batch of consecutive records. */
  append(payload: Uint8Array): void;
  /** Effects of output calls whose records were appended already, in order. */
  output(effects: readonly OutputEffect[]): void;
}

export type GuestEnd =
  | { readonly kind: 'exit'; readonly code: number }
  | { readonly kind: 'trap'; readonly message: string }
  | { readonly kind: 'divergence'; readonly message: string }
  | { readonly kind: 'stopped' };

export interface RuntimeOptions {
  readonly loaded: LoadedModule;
  readonly host: WasiHost;
  readonly mode: RuntimeMode;
  readonly sink?: RecordSink;
  /** Record/plain: give the event loop a turn after running this long (default 10 ms). */
  readonly sliceMs?: number;
  /** Record: close a batch (one log entry) at this many bytes (default 256 KiB). */
  readonly batchBytes?: number;
}

const UNWINDING = 1;
const REWINDING = 2;
/** Room for the unwound stack: locals of every frame between _start and the import. */
const UNWIND_BYTES = 16 * 1024;
/** Below this address is no stack (wasm-ld leaves the first KiB alone). */
const LOW_MEMORY = 1024;

interface AsyncifyExports {
  startUnwind(ptr: number): void;
  stopUnwind(): void;
  startRewind(ptr: number): void;
  stopRewind(): void;
  getState(): number;
}

/** Thrown out of the guest to end it from inside a host call (stop, divergence). */
class Abort extends Error {
  constructor(readonly end: GuestEnd) {
    super(end.kind);
  }
}

export class GuestRuntime {
  private readonly host: WasiHost;
  private readonly loaded: LoadedModule;
  private mode: RuntimeMode;
  private readonly sink: RecordSink | null;
  private readonly sliceMs: number;
  private readonly batchBytes: number;
  private instance: WebAssembly.Instance | null = null;
  private mem: GuestMemory | null = null;
  private asy: AsyncifyExports | null = null;
  private stackPointer: WebAssembly.Global | null = null;

  /** Logged calls made (record) or replayed (replay) so far: the next record's index. */
  private calls = 0;
  private readonly batch = new RecordBatch();
  /** Effects of the output call in progress (the host emits them inside `call`). */
  private effects: OutputEffect[] = [];
  private readonly outputHash = new Hash64();
  private outputCount = 0;

  /** Replay: records received and not yet consumed. */
  private queue: CallRecord[] = [];
  private queueHead = 0;
  private wakeReplay: (() => void) | null = null;
  /** Replay: asked to go live once the queue is drained. */
  private liveRequested: (() => Promise<void>) | null = null;

  /** Suspension state: why the guest waits, and where its stack went. */
  private pending: Promise<unknown> | null = null;
  private unwindBase = 0;
  private savedBelowStack: Uint8Array | null = null;
  private unwoundStack: Uint8Array | null = null;
  /** The monotonic time the call being retried was first tried (poll timeouts count from it). */
  private attemptStartNs: bigint | null = null;
  private sliceStart = 0;
  private stopped = false;
  readonly stats = { suspends: 0, slices: 0 };

  constructor(opts: RuntimeOptions) {
    this.loaded = opts.loaded;
    this.host = opts.host;
    this.mode = opts.mode;
    this.sink = opts.sink ?? null;
    if (this.mode === 'record' && this.sink === null) throw new Error('a recording runtime needs a sink');
    this.sliceMs = opts.sliceMs ?? 10;
    this.batchBytes = opts.batchBytes ?? 256 * 1024;
  }

  /** The host calls its output effects through this (set it as WasiHostOptions.output). */
  readonly onOutput = (e: OutputEffect): void => {
    this.effects.push(e);
  };

  get callCount(): number {
    return this.calls;
  }

  get currentMode(): RuntimeMode {
    return this.mode;
  }

  /** Replay: records still to consume. */
  get backlog(): number {
    return this.queue.length - this.queueHead;
  }

  /** sha256 of the guest's linear memory (null before it started). */
  memoryHash(): string | null {
    return this.mem?.hash() ?? null;
  }

  /** Digest of every output the guest made (sent by the primary, checked by the backup). */
  outputDigest(): string {
    return `${this.outputCount}:${(this.outputHash.a >>> 0).toString(16).padStart(8, '0')}${(this.outputHash.b >>> 0).toString(16).padStart(8, '0')}`;
  }

  /** Replay: more records from the log, in order. */
  feed(records: readonly CallRecord[]): void {
    for (const r of records) this.queue.push(r);
    this.wake();
  }

  /**
   * Replay → record: once every record received is consumed, run `openLive` (the host opens
   * the listening sockets) and carry on live. The backup going live (DESIGN.md §2.4).
   */
  promote(openLive: () => Promise<void>): void {
    this.liveRequested = openLive;
    this.wake();
  }

  /** End the guest at its next host call or wait (it is never resumed). */
  stop(): void {
    this.stopped = true;
    this.wake();
  }

  private wake(): void {
    const w = this.wakeReplay;
    this.wakeReplay = null;
    w?.();
  }

  // ---- the run loop ------------------------------------------------------------------------

  /** Instantiate and run the guest to its end. Resolves with how it ended; never rejects. */
  async run(): Promise<GuestEnd> {
    try {
      this.instantiate();
    } catch (e) {
      return { kind: 'trap', message: `cannot instantiate the module: ${(e as Error).message}` };
    }
    const start = this.instance!.exports[this.loaded.exports.start ?? '_start'];
    if (typeof start !== 'function') return { kind: 'trap', message: 'the module exports no _start function (a WASI command is needed)' };
    this.sliceStart = performance.now();
    for (;;) {
      try {
        (start as () => void)();
      } catch (e) {
        return this.ended(e);
      }
      if (this.asy === null || this.asy.getState() !== UNWINDING) {
        this.flush();
        return { kind: 'exit', code: 0 };
      }
      this.finishUnwind();
      this.flush();
      try {
        await this.pending;
      } catch {
        // A wait that failed is retried like one that succeeded: the call will say what is wrong.
      }
      if (this.stopped) return { kind: 'stopped' };
      this.beginRewind();
      this.sliceStart = performance.now();
    }
  }

  private instantiate(): void {
    const imports: Record<string, (...args: CallArg[]) => number> = {};
    for (const imp of WebAssembly.Module.imports(this.loaded.module)) {
      if (imp.kind !== 'function') continue;
      const name = imp.name;
      imports[name] = (...args: CallArg[]) => this.hostCall(name, args);
    }
    this.instance = new WebAssembly.Instance(this.loaded.module, { wasi_snapshot_preview1: imports });
    const ex = this.instance.exports;
    const memory = ex[this.loaded.exports.memory];
    if (!(memory instanceof WebAssembly.Memory)) throw new Error('the module exports no memory');
    this.mem = new GuestMemory(memory);
    const a = this.loaded.exports.asyncify;
    if (a !== null) {
      const f = (n: string): ((...x: number[]) => number) => ex[n] as (...x: number[]) => number;
      this.asy = {
        startUnwind: f(a.startUnwind), stopUnwind: f(a.stopUnwind), startRewind: f(a.startRewind),
        stopRewind: f(a.stopRewind), getState: f(a.getState),
      };
      const sp = this.loaded.stackPointerGlobal === null ? undefined : ex[this.loaded.stackPointerGlobal];
      this.stackPointer = sp instanceof WebAssembly.Global ? sp : null;
    }
  }

  /** How the guest's run ended, from what was thrown out of it. */
  private ended(e: unknown): GuestEnd {
    this.flush();
    if (e instanceof WasiExit) return { kind: 'exit', code: e.code };
    if (e instanceof Abort) return e.end;
    if (e instanceof LockstepError && e.code === 'E_WASM_DIVERGENCE') return { kind: 'divergence', message: e.message };
    if (e instanceof RangeError && /call stack/i.test(e.message)) return { kind: 'trap', message: `stack overflow: ${e.message}` };
    if (e instanceof WebAssembly.RuntimeError) return { kind: 'trap', message: e.message };
    return { kind: 'trap', message: `host error: ${(e as Error)?.stack ?? String(e)}` };
  }

  // ---- suspending: unwind, wait, rewind ----------------------------------------------------

  /** Start unwinding the guest so the run loop can await `why`; the import returns at once. */
  private suspend(why: Promise<unknown>): number {
    const asy = this.asy;
    if (asy === null) {
      throw new Abort({ kind: 'trap', message: 'the guest has to wait for input, but it was loaded without asyncify instrumentation, so it cannot wait without blocking the node' });
    }
    if (this.stackPointer === null) {
      throw new Abort({ kind: 'trap', message: 'the guest has to wait, but its module has no stack pointer global to find free memory for the unwound stack' });
    }
    const sp = (this.stackPointer.value as number) >>> 0;
    const base = (sp - UNWIND_BYTES) & ~15;
    if (base < LOW_MEMORY) throw new Abort({ kind: 'trap', message: `the guest's stack pointer (${sp}) leaves no room below it for the unwound stack` });
    const mem = this.mem!;
    this.savedBelowStack = mem.read(base, UNWIND_BYTES);
    mem.setU32(base, base + 8);
    mem.setU32(base + 4, base + UNWIND_BYTES);
    this.unwindBase = base;
    this.pending = why;
    this.stats.suspends++;
    asy.startUnwind(base);
    return 0;
  }

  private finishUnwind(): void {
    this.asy!.stopUnwind();
    const mem = this.mem!;
    this.unwoundStack = mem.read(this.unwindBase, UNWIND_BYTES);
    mem.write(this.unwindBase, this.savedBelowStack!);
  }

  private beginRewind(): void {
    const mem = this.mem!;
    this.savedBelowStack = mem.read(this.unwindBase, UNWIND_BYTES);
    mem.write(this.unwindBase, this.unwoundStack!);
    this.unwoundStack = null;
    this.asy!.startRewind(this.unwindBase);
  }

  /** The import was entered by the rewind: the stack is back, put back what was below it. */
  private finishRewind(): void {
    this.asy!.stopRewind();
    this.mem!.write(this.unwindBase, this.savedBelowStack!);
    this.savedBelowStack = null;
    this.pending = null;
  }

  // ---- the host call -----------------------------------------------------------------------

  private hostCall(name: string, args: CallArg[]): number {
    if (this.asy !== null && this.asy.getState() === REWINDING) this.finishRewind();
    if (this.stopped) throw new Abort({ kind: 'stopped' });
    const cls = this.host.classify(name, args);
    if (cls === 'config') return this.direct(name, args, cls);
    if (this.asy !== null && performance.now() - this.sliceStart > this.sliceMs) {
      // The guest has had the thread long enough: let timers, acks and heartbeats run.
      this.stats.slices++;
      return this.suspend(new Promise<void>((resolve) => setImmediate(resolve)));
    }
    if (this.mode === 'replay') {
      if (this.backlog > 0) return this.replay(name, args, cls);
      if (this.liveRequested === null) return this.suspend(new Promise<void>((resolve) => (this.wakeReplay = resolve)));
      const open = this.liveRequested;
      this.liveRequested = null;
      // Every record is consumed: open the listening sockets, then retry this call live.
      return this.suspend(open().then(() => {
        this.mode = 'record';
      }));
    }
    if (this.mode === 'record' && !this.sink!.canRecord()) {
      this.flush();
      return this.suspend(this.sink!.whenCanRecord());
    }
    return this.live(name, args, cls);
  }

  /** A config call: made the same way on every replica, never logged. */
  private direct(name: string, args: CallArg[], cls: CallClass): number {
    const r = this.host.call(name, this.mem!, args, { startedAtNs: process.hrtime.bigint() });
    if (typeof r !== 'number') throw new Abort({ kind: 'trap', message: `host bug: ${cls} call ${name} wanted to wait` });
    return r;
  }

  /** Make the call for real (plain or record). */
  private live(name: string, args: CallArg[], cls: CallClass): number {
    const mem = this.mem!;
    this.attemptStartNs ??= process.hrtime.bigint();
    this.effects = [];
    mem.startTracking();
    let r: number | { wait: Promise<void> };
    try {
      r = this.host.call(name, mem, args, { startedAtNs: this.attemptStartNs });
    } catch (e) {
      mem.stopTracking();
      if (e instanceof WasiExit && this.mode === 'record') {
        this.record({ index: this.calls++, fn: name, cls: 'exit', args, ret: e.code, writes: [], digest: '' });
      }
      throw e;
    }
    const writes = mem.stopTracking();
    if (typeof r !== 'number') {
      if (writes.length > 0) throw new Abort({ kind: 'trap', message: `host bug: ${name} wrote guest memory and then asked to wait` });
      return this.suspend(r.wait);
    }
    this.attemptStartNs = null;
    const effects = this.effects;
    this.effects = [];
    if (cls === 'output') this.noteOutput(name, args);
    if (this.mode === 'plain') {
      for (const e of effects) this.host.performOutput(e);
      return r;
    }
    this.record({
      index: this.calls++, fn: name, cls: cls as CallRecord['cls'], args, ret: r,
      writes: cls === 'input' || cls === 'output' ? writes : [],
      digest: cls === 'output' ? this.lastOutputDigest : cls === 'local' ? digestWrites(writes) : '',
    });
    if (effects.length > 0) {
      // The output's record must be in the log before the output can be released.
      this.flush();
      this.sink!.output(effects);
    }
    return r;
  }

  private record(r: CallRecord): void {
    this.batch.add(r);
    if (this.batch.byteLength >= this.batchBytes || r.cls === 'exit') this.flush();
  }

  /** Close the current batch into a log entry (record mode). */
  private flush(): void {
    if (this.mode !== 'record') return;
    const payload = this.batch.take();
    if (payload !== null) this.sink!.append(payload);
  }

  // ---- replay ------------------------------------------------------------------------------

  private replay(name: string, args: CallArg[], cls: CallClass): number {
    const rec = this.queue[this.queueHead]!;
    const mem = this.mem!;
    const at = `call ${this.calls}`;
    if (rec.index !== this.calls) throw divergence(`${at}: the log's next record is call ${rec.index}`);
    if (rec.fn !== name || !sameArgs(rec.args, args)) {
      throw divergence(`${at}: the guest made ${describeCall(name, args)} but the primary made ${describeCall(rec.fn, rec.args)}`);
    }
    if (rec.cls !== cls) throw divergence(`${at}: ${name} is ${cls} here but was ${rec.cls} on the primary (the host states differ)`);
    this.queueHead++;
    if (this.queueHead > 4096 && this.queueHead * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.queueHead);
      this.queueHead = 0;
    }
    this.calls++;
    switch (rec.cls) {
      case 'exit':
        throw new WasiExit(rec.ret);
      case 'local': {
        mem.startTracking();
        const r = this.host.call(name, mem, args, { startedAtNs: process.hrtime.bigint() });
        const writes = mem.stopTracking();
        if (typeof r !== 'number') throw divergence(`${at}: local call ${describeCall(name, args)} wanted to wait on this replica`);
        if (r !== rec.ret) throw divergence(`${at}: ${describeCall(name, args)} returned ${r} here but ${rec.ret} on the primary`);
        const d = digestWrites(writes);
        if (d !== rec.digest) throw divergence(`${at}: ${describeCall(name, args)} wrote different memory here (digest ${d}) than on the primary (${rec.digest})`);
        return r;
      }
      case 'output': {
        this.noteOutput(name, args);
        if (this.lastOutputDigest !== rec.digest) {
          throw divergence(`${at}: ${describeCall(name, args)} would send different bytes here (digest ${this.lastOutputDigest}) than the primary sent (${rec.digest})`);
        }
        this.applyWrites(rec.writes);
        this.host.replayEffect(name, args, rec.ret, mem);
        return rec.ret;
      }
      case 'input':
        this.applyWrites(rec.writes);
        this.host.replayEffect(name, args, rec.ret, mem);
        return rec.ret;
    }
  }

  private applyWrites(writes: readonly MemWrite[]): void {
    for (const w of writes) this.mem!.write(w.ptr, w.data);
  }

  // ---- outputs -----------------------------------------------------------------------------

  private lastOutputDigest = '';

  /** Digest the bytes an output call sends, from guest memory (the same on both replicas). */
  private noteOutput(name: string, args: CallArg[]): void {
    const chunks = outputBytes(this.mem!, name, args);
    this.lastOutputDigest = digestBytes(chunks);
    this.outputCount++;
    this.outputHash.str(name);
    for (const c of chunks) this.outputHash.bytes(c);
  }
}

/** The bytes an output call sends: the iovecs of fd_write/fd_pwrite/sock_send; none for close/shutdown. */
function outputBytes(mem: GuestMemory, name: string, args: CallArg[]): Uint8Array[] {
  if (name !== 'fd_write' && name !== 'fd_pwrite' && name !== 'sock_send') return [];
  const iovs = Number(args[1]) >>> 0;
  const n = Number(args[2]) >>> 0;
  const out: Uint8Array[] = [];
  try {
    for (let i = 0; i < n && i < 1024; i++) {
      const buf = mem.u32(iovs + i * 8);
      const len = mem.u32(iovs + i * 8 + 4);
      out.push(mem.read(buf, len));
    }
  } catch (e) {
    // A bad iovec: the host answers FAULT; the digest covers what could be read.
    if (!(e instanceof WasiFault)) throw e;
  }
  return out;
}

function sameArgs(a: readonly CallArg[], b: readonly CallArg[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (typeof x === 'bigint' || typeof y === 'bigint' ? BigInt(x) !== BigInt(y) : x !== y) return false;
  }
  return true;
}
