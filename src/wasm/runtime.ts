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
//
// Snapshots (recruiting a backup without the whole log). The guest runs on the node's main
// thread, so whenever anything else runs the guest is not started, ended, or suspended:
// unwound, with its stack in `unwoundStack` and its memory as it was. `snapshot()` then takes
// memory, globals, the unwound stack, the counters and the host state (image.ts has the
// format); `GuestRuntime.restore` builds a runtime from one, and its `run()` resumes with the
// same rewind an await ends with: the import that was suspended is entered again, finishes the
// rewind and retries its call, which in replay mode takes the next record of the log.
// `snapshotStream()` / `GuestRuntime.restoreStream` are the same state in pieces
// (image-stream.ts): the guest is held suspended while its memory is copied in slices.

import { LockstepError } from '../errors.js';
import type { LoadedModule } from './module.js';
import { GuestMemory, WasiFault } from './memory.js';
import { WasiExit, type OutputEffect, type WasiHost } from './wasi.js';
import {
  RecordBatch,
  decodeEntry,
  entryRecordCount,
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
import { decodeImage, encodeImage, type DecodedImage, type GlobalValue, type GuestImage } from './image.js';
import { ImageStreamReader, ImageStreamWriter, type StreamHeader } from './image-stream.js';

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
/** A snapshot stream copies the held guest's memory this long per event-loop turn at most. */
const COPY_SLICE_MS = 10;
const CHUNK_BYTES = 4096;
const ZERO_CHUNK = Buffer.alloc(CHUNK_BYTES);
/** Below this address is no stack (wasm-ld leaves the first KiB alone). */
const LOW_MEMORY = 1024;

interface AsyncifyExports {
  startUnwind(ptr: number): void;
  stopUnwind(): void;
  startRewind(ptr: number): void;
  stopRewind(): void;
  getState(): number;
}

const NO_ASYNCIFY = 'the guest was loaded without asyncify instrumentation, so it cannot be resumed from a snapshot';

/** This runtime's guest cannot be snapshotted now (or at all); the message says why. */
export class SnapshotUnsupported extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotUnsupported';
  }
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
  /** Replay: entries received and not decoded yet, and how many records they hold. */
  private entries: Uint8Array[] = [];
  private entryHead = 0;
  private undecoded = 0;
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
  /** Every host call entered, rewinds included (memoryHash's cache key). */
  private hostCalls = 0;
  private hashCache: { mem: GuestMemory; hostCalls: number; hash: string } | null = null;
  /** Host calls since the time slice was last checked. */
  private sinceClock = 0;
  /** Between beginRewind and the import the rewind re-enters. */
  private rewinding = false;
  /** What the host gets as a call's context: when the call was first tried (read only if asked). */
  private readonly ctx = ((rt: GuestRuntime) => ({
    get startedAtNs(): bigint {
      return (rt.attemptStartNs ??= process.hrtime.bigint());
    },
  }))(this);
  private stopped = false;
  /** The guest's code is on the stack (a snapshot now would catch it mid-instruction). */
  private inGuest = false;
  /** How run() ended (a restored exited guest starts ended). */
  private endedWith: GuestEnd | null = null;
  /**
   * Replay after a restore: records below this index are in the snapshot already, so feed()
   * drops them. The primary's snapshot can be ahead of the core's last index (appends waiting
   * for flow control in the front), so the entries after that index can repeat records the
   * snapshot holds; dropping exactly those (and no others) is simpler than making the
   * snapshot wait for the front to drain, which flow control may not allow for a long time.
   */
  private skipBelow = 0;
  readonly stats = { suspends: 0, slices: 0 };
  /** Snapshot streams holding the guest suspended (snapshotStream), and the run loop waiting for them. */
  private holds = 0;
  private unhold: (() => void) | null = null;

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

  /** Replay: records still to consume (decoded or not). */
  get backlog(): number {
    return this.queue.length - this.queueHead + this.undecoded;
  }

  /** The size of the guest's linear memory (0 before it started). */
  get memoryBytes(): number {
    return this.mem?.byteLength ?? 0;
  }

  /** sha256 of the guest's linear memory (null before it started). */
  memoryHash(): string | null {
    const mem = this.mem;
    if (mem === null) return null;
    // The guest only runs between host calls, so with no host call since the last hash the
    // memory is the same: /status, polled often, does not rehash megabytes each time.
    const c = this.hashCache;
    if (c !== null && c.mem === mem && c.hostCalls === this.hostCalls) return c.hash;
    const hash = mem.hash();
    this.hashCache = { mem, hostCalls: this.hostCalls, hash };
    return hash;
  }

  /** Digest of every output the guest made (sent by the primary, checked by the backup). */
  outputDigest(): string {
    return `${this.outputCount}:${(this.outputHash.a >>> 0).toString(16).padStart(8, '0')}${(this.outputHash.b >>> 0).toString(16).padStart(8, '0')}`;
  }

  /** Replay: more records from the log, in order (those a restored snapshot holds are dropped). */
  feed(records: readonly CallRecord[]): void {
    this.decodeAll();
    for (const r of records) if (r.index >= this.skipBelow) this.queue.push(r);
    this.wake();
  }

  /**
   * Replay: one more log entry. It is decoded only when the guest reaches its records, so a
   * long backlog (a recruit catching up) holds bytes, not one object per record.
   */
  feedEntry(payload: Uint8Array): void {
    const count = entryRecordCount(payload);
    this.entries.push(payload);
    this.undecoded += count;
    this.wake();
  }

  /** The next record to replay, decoding the next entry when the decoded ones are used up. */
  private nextRecord(): CallRecord | null {
    while (this.queueHead >= this.queue.length) {
      if (this.entryHead >= this.entries.length) return null;
      const payload = this.entries[this.entryHead++]!;
      if (this.entryHead > 1024 && this.entryHead * 2 > this.entries.length) {
        this.entries = this.entries.slice(this.entryHead);
        this.entryHead = 0;
      }
      let records: CallRecord[];
      try {
        records = decodeEntry(payload);
      } catch (e) {
        throw divergence(`call ${this.calls}: the next log entry cannot be decoded: ${(e as Error).message}`);
      }
      this.undecoded -= records.length;
      this.queue = records.filter((r) => r.index >= this.skipBelow);
      this.queueHead = 0;
    }
    return this.queue[this.queueHead]!;
  }

  /** Decode every entry still queued (for a snapshot, or before records are fed directly). */
  private decodeAll(): void {
    if (this.entryHead >= this.entries.length) return;
    const rest = this.queue.slice(this.queueHead);
    for (let i = this.entryHead; i < this.entries.length; i++) {
      for (const r of decodeEntry(this.entries[i]!)) if (r.index >= this.skipBelow) rest.push(r);
    }
    this.entries = [];
    this.entryHead = 0;
    this.undecoded = 0;
    this.queue = rest;
    this.queueHead = 0;
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
    const w = this.unhold;
    this.unhold = null;
    w?.();
  }

  private wake(): void {
    const w = this.wakeReplay;
    this.wakeReplay = null;
    w?.();
  }

  // ---- the run loop ------------------------------------------------------------------------

  /**
   * Instantiate and run the guest to its end (a restored guest: resume it where its snapshot
   * was taken). Resolves with how it ended; never rejects.
   */
  async run(): Promise<GuestEnd> {
    const end = await this.runToEnd();
    this.endedWith = end;
    return end;
  }

  private async runToEnd(): Promise<GuestEnd> {
    if (this.endedWith !== null) return this.endedWith;
    if (this.instance === null) {
      try {
        this.instantiate();
      } catch (e) {
        return { kind: 'trap', message: `cannot instantiate the module: ${(e as Error).message}` };
      }
    }
    const start = this.instance!.exports[this.loaded.exports.start ?? '_start'];
    if (typeof start !== 'function') return { kind: 'trap', message: 'the module exports no _start function (a WASI command is needed)' };
    this.sliceStart = performance.now();
    // Restored while suspended: rewind into the import that was waiting, as after an await.
    if (this.unwoundStack !== null) this.beginRewind();
    for (;;) {
      try {
        this.inGuest = true;
        (start as () => void)();
      } catch (e) {
        return this.ended(e);
      } finally {
        this.inGuest = false;
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
      // Held by a snapshot stream: stay suspended until it has its copy of memory.
      while (this.holds > 0 && !this.stopped) await new Promise<void>((resolve) => (this.unhold = resolve));
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

  // ---- snapshots --------------------------------------------------------------------------

  /**
   * The guest's whole state now (image.ts has the format). Possible when the guest has not
   * started, is suspended (the only state a running guest is ever in when other code runs) or
   * has exited; throws SnapshotUnsupported otherwise, and always for a guest loaded without
   * asyncify (it cannot be resumed: it never unwinds).
   */
  snapshot(): Uint8Array {
    this.checkSnapshot();
    return encodeImage(this.image());
  }

  /**
   * The same state as `snapshot()`, as of now, in pieces (image-stream.ts): memory is copied
   * once here (one memcpy) with the small parts and the host state; the pieces are made from
   * those copies on demand (zero-chunk scan and sha256 a piece at a time), so the guest may run
   * on between them. Throws SnapshotUnsupported as `snapshot()` does.
   */
  snapshotStream(): ImageStreamWriter {
    this.checkSnapshot();
    const img = this.image(false);
    const live = img.memory;
    if (live === null || img.phase !== 'suspended') {
      // Not started (no memory) or exited (its memory never changes again): read it as it is.
      return new ImageStreamWriter(img);
    }
    // Suspended: the guest is held (not resumed) until its memory is copied, a slice per
    // event-loop turn, so neither the copy (page faults on fresh memory cost ~1 s at 256 MiB
    // on this machine) nor the stream holds the event loop. Pieces read the live memory while
    // the guest is held and the copy after. The copy goes from the top of memory down while the
    // stream goes up from the bottom: the guest is let go where they meet, so what the stream
    // sends in the meantime is never copied (copying upwards behind the stream's cursor, the
    // copy ran ahead of it and the stream saved nothing).
    const release = this.hold();
    const copy = new Uint8Array(live.byteLength);
    let source = live;
    const writer = new ImageStreamWriter(img, () => source, release);
    const chunks = live.byteLength / CHUNK_BYTES;
    const liveBuf = Buffer.from(live.buffer, live.byteOffset, live.byteLength);
    const startedMs = performance.now();
    const copyStats = { turns: 0, copiedChunks: 0, copyMs: 0, heldMs: 0 };
    /** Chunks [low, chunks) are copied. */
    let low = chunks;
    const step = (): void => {
      if (writer.closed) return release();
      const began = performance.now();
      const until = began + COPY_SLICE_MS;
      copyStats.turns++;
      while (low > writer.memoryCursor && performance.now() < until) {
        const end = Math.max(writer.memoryCursor, low - 256);
        while (low > end) {
          low--;
          const at = low * CHUNK_BYTES;
          if (liveBuf.compare(ZERO_CHUNK, 0, CHUNK_BYTES, at, at + CHUNK_BYTES) === 0) continue; // the copy is zero already
          copy.set(live.subarray(at, at + CHUNK_BYTES), at);
          copyStats.copiedChunks++;
        }
      }
      copyStats.copyMs += Math.round((performance.now() - began) * 10) / 10;
      if (low > writer.memoryCursor && !writer.memoryDone) return void setImmediate(step);
      source = copy;
      copyStats.copyMs = Math.round(copyStats.copyMs);
      copyStats.heldMs = Math.round(performance.now() - startedMs);
      writer.copyStats = copyStats;
      release();
    };
    setImmediate(step);
    return writer;
  }

  /**
   * Keep the guest from resuming (it stays suspended, its memory unchanged) until the returned
   * function is called. The node's event loop goes on; only the guest waits.
   */
  private hold(): () => void {
    this.holds++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holds === 0) {
        const w = this.unhold;
        this.unhold = null;
        w?.();
      }
    };
  }

  private checkSnapshot(): void {
    if (this.loaded.exports.asyncify === null) throw new SnapshotUnsupported(NO_ASYNCIFY);
    if (this.stopped) throw new SnapshotUnsupported('the guest was stopped');
    if (this.inGuest) throw new SnapshotUnsupported('the guest is running (a snapshot is taken between host calls)');
    if (this.batch.size > 0) throw new SnapshotUnsupported('records are waiting in an unflushed batch');
  }

  /** The state now; `copyMemory` false: memory is the live bytes (the caller keeps them unchanged). */
  private image(copyMemory = true): GuestImage {
    const phase = this.phase();
    const mem = this.mem;
    const live = phase !== 'new' && mem !== null;
    return {
      sha256: this.loaded.sha256,
      phase,
      calls: this.calls,
      outputCount: this.outputCount,
      outputHash: this.outputHash.state(),
      exitCode: this.endedWith?.kind === 'exit' ? this.endedWith.code : 0,
      memory: live ? (copyMemory ? mem.read(0, mem.byteLength) : mem.live()) : null,
      globals: live ? this.globalValues() : [],
      unwindBase: this.unwindBase,
      unwoundStack: phase === 'suspended' ? this.unwoundStack : null,
      queued: this.queuedPayload(),
      host: this.host.snapshotState(),
    };
  }

  private phase(): GuestImage['phase'] {
    const end = this.endedWith;
    if (end !== null) {
      if (end.kind === 'exit') return 'exited';
      throw new SnapshotUnsupported(`the guest ended (${end.kind}) and cannot be carried on`);
    }
    if (this.instance === null) return 'new';
    if (this.unwoundStack !== null) return 'suspended';
    throw new SnapshotUnsupported('the guest is neither suspended, ended nor new');
  }

  private globalValues(): GlobalValue[] {
    return this.loaded.globals.map((name) => {
      const v = (this.instance!.exports[name] as WebAssembly.Global).value as unknown;
      if (typeof v === 'number' || typeof v === 'bigint' || v === null) return v;
      throw new SnapshotUnsupported(`global ${name} holds a reference, which a snapshot cannot carry`);
    });
  }

  /** Replay: the records received and not replayed yet, as one log entry (they follow `calls`). */
  private queuedPayload(): Uint8Array {
    this.decodeAll();
    const b = new RecordBatch();
    for (let i = this.queueHead; i < this.queue.length; i++) b.add(this.queue[i]!);
    return b.take() ?? new Uint8Array(0);
  }

  /**
   * A runtime whose guest carries on from `snapshot` (taken by `snapshot()` of a runtime of the
   * same module, whatever its mode). `opts.host` must be new and built with the same config
   * (args, env, listen, stdin); its directory is emptied and filled from the snapshot. In replay
   * mode, feed it the log from the snapshot's index on: the records it holds already are
   * dropped. A damaged snapshot (checksum, structure, another module) throws E_CORRUPT_ENTRY
   * before anything is changed.
   */
  static restore(opts: RuntimeOptions, snapshot: Uint8Array): GuestRuntime {
    if (opts.loaded.exports.asyncify === null) throw new SnapshotUnsupported(NO_ASYNCIFY);
    const img = decodeImage(snapshot, opts.loaded, UNWIND_BYTES);
    opts.host.restoreState(img.host);
    const rt = new GuestRuntime(opts);
    rt.applyImage(img);
    return rt;
  }

  /**
   * A restore from the pieces of `snapshotStream()` (of a runtime of the same module), taken as
   * they come: each is checked and hashed, and its memory copied straight into the new
   * instance's memory (instantiated when the header arrives); `finish` checks the digest,
   * restores the host state and the small parts, and gives the runtime. Anything damaged
   * throws E_CORRUPT_ENTRY (from `add` or `finish`); the caller then drops the runtime and the
   * host, never running them. `opts` as for `restore`.
   */
  static restoreStream(opts: RuntimeOptions): { add(piece: Uint8Array): void; finish(): GuestRuntime; readonly stats: ImageStreamReader['stats'] } {
    if (opts.loaded.exports.asyncify === null) throw new SnapshotUnsupported(NO_ASYNCIFY);
    const rt = new GuestRuntime(opts);
    const reader = new ImageStreamReader(opts.loaded, UNWIND_BYTES, { begin: (h) => rt.beginRestore(h) });
    return {
      stats: reader.stats,
      add: (piece) => reader.add(piece),
      finish: () => {
        const { header, host } = reader.finish();
        opts.host.restoreState(host);
        rt.applyState(header);
        return rt;
      },
    };
  }

  /** A streamed restore's header is in: instantiate, size memory, zero what the data segments wrote. */
  private beginRestore(h: StreamHeader): Uint8Array | null {
    if (h.phase === 'new') return null;
    const t0 = performance.now();
    try {
      return this.instantiateFor(h);
    } finally {
      this.restoreBeginMs = performance.now() - t0;
    }
  }

  /** How long a streamed restore's header took (instantiate, grow): for the restore's log line. */
  restoreBeginMs = 0;

  private instantiateFor(h: StreamHeader): Uint8Array {
    this.instantiate();
    this.hashCache = null;
    const memory = this.instance!.exports[this.loaded.exports.memory] as WebAssembly.Memory;
    // Chunks the snapshot does not send are zero; the fresh instance's data segments are not.
    const fresh = Buffer.from(memory.buffer);
    const zero = Buffer.alloc(4096);
    for (let at = 0; at + 4096 <= fresh.length; at += 4096) {
      if (fresh.compare(zero, 0, 4096, at, at + 4096) !== 0) fresh.fill(0, at, at + 4096);
    }
    const grow = (h.memorySize - memory.buffer.byteLength) / 65536;
    if (grow > 0) memory.grow(grow);
    return new Uint8Array(memory.buffer);
  }

  private applyImage(img: DecodedImage): void {
    if (img.phase !== 'new') {
      this.instantiate();
      this.restoreMemory(img.memory!);
    }
    this.applyState(img);
  }

  /** Counters, queued records, globals and where the guest stands (memory is in place already). */
  private applyState(img: Omit<StreamHeader, 'memorySize' | 'hostBytes'>): void {
    this.calls = img.calls;
    this.outputCount = img.outputCount;
    this.outputHash.setState(img.outputHash);
    this.queue = [...img.queuedRecords];
    this.skipBelow = img.calls + img.queuedRecords.length;
    if (img.phase === 'new') return;
    this.restoreGlobals(img.globals);
    if (this.asy!.getState() !== 0) throw new LockstepError('E_CORRUPT_ENTRY', `corrupt wasm guest snapshot: asyncify's state is ${this.asy!.getState()}, not normal`);
    if (img.phase === 'exited') this.endedWith = { kind: 'exit', code: img.exitCode };
    if (img.phase === 'suspended') {
      this.unwindBase = img.unwindBase;
      this.unwoundStack = img.unwoundStack!.slice();
    }
  }

  private restoreMemory(bytes: Uint8Array): void {
    this.hashCache = null;
    const memory = this.instance!.exports[this.loaded.exports.memory] as WebAssembly.Memory;
    const grow = (bytes.byteLength - memory.buffer.byteLength) / 65536;
    if (grow > 0) memory.grow(grow);
    // The fresh instance's data segments are overwritten, zeros included.
    new Uint8Array(memory.buffer).set(bytes);
  }

  private restoreGlobals(values: readonly GlobalValue[]): void {
    this.loaded.globals.forEach((name, i) => {
      const g = this.instance!.exports[name] as WebAssembly.Global;
      const v = values[i]!;
      const now = g.value as unknown;
      // The value's kind must match the global's type: a mismatch is a snapshot of something else.
      const fits = typeof v === 'bigint' ? typeof now === 'bigint' : v === null ? typeof now !== 'number' && typeof now !== 'bigint' : typeof now === 'number';
      if (!fits) throw new LockstepError('E_CORRUPT_ENTRY', `corrupt wasm guest snapshot: global ${name} cannot hold ${String(v)}`);
      g.value = v;
    });
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
    this.rewinding = true;
    const mem = this.mem!;
    this.savedBelowStack = mem.read(this.unwindBase, UNWIND_BYTES);
    mem.write(this.unwindBase, this.unwoundStack!);
    this.unwoundStack = null;
    this.asy!.startRewind(this.unwindBase);
  }

  /** The import was entered by the rewind: the stack is back, put back what was below it. */
  private finishRewind(): void {
    this.rewinding = false;
    if (this.asy!.getState() !== REWINDING) throw new Abort({ kind: 'trap', message: 'host bug: a host call during a rewind found asyncify not rewinding' });
    this.asy!.stopRewind();
    this.mem!.write(this.unwindBase, this.savedBelowStack!);
    this.savedBelowStack = null;
    this.pending = null;
  }

  // ---- the host call -----------------------------------------------------------------------

  private hostCall(name: string, args: CallArg[]): number {
    this.hostCalls++;
    // Kept in JS rather than asked of asyncify_get_state: a call into wasm per host call costs.
    if (this.rewinding) this.finishRewind();
    if (this.stopped) throw new Abort({ kind: 'stopped' });
    const cls = this.host.classify(name, args);
    if (cls === 'config') return this.direct(name, args, cls);
    // The clock is read every 16th call only: reading it costs more than most host calls.
    if (this.asy !== null && (++this.sinceClock & 15) === 0 && performance.now() - this.sliceStart > this.sliceMs) {
      // The guest has had the thread long enough: let timers, acks and heartbeats run.
      this.stats.slices++;
      return this.suspend(new Promise<void>((resolve) => setImmediate(resolve)));
    }
    if (this.mode === 'replay') {
      if (this.nextRecord() !== null) return this.replay(name, args, cls);
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
    const r = this.host.call(name, this.mem!, args, this.ctx);
    this.attemptStartNs = null;
    if (typeof r !== 'number') throw new Abort({ kind: 'trap', message: `host bug: ${cls} call ${name} wanted to wait` });
    return r;
  }

  /** Make the call for real (plain or record). */
  private live(name: string, args: CallArg[], cls: CallClass): number {
    const mem = this.mem!;
    this.effects = [];
    mem.startTracking();
    let r: number | { wait: Promise<void> };
    try {
      r = this.host.call(name, mem, args, this.ctx);
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
      this.host.performOutputs(effects);
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
    const rec = this.queue[this.queueHead]!; // nextRecord() made sure there is one
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
        const r = this.host.call(name, mem, args, this.ctx);
        this.attemptStartNs = null;
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
