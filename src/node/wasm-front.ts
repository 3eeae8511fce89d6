// The wasm front: a WebAssembly/WASI guest replicated by record and replay (issue 4,
// DESIGN.md §3), driven by the same core as the kv service.
//
// The primary runs the guest live (GuestRuntime in record mode): its host calls become log
// records, batched into log entries; its outputs (socket writes, closes, stdout) are held by
// the core's output rule until the backup has acked the entry holding their record. The
// backup runs the same guest in replay mode, fed by the entries the core applies, and sends
// nothing. When the backup goes live it finishes the records it has, its host opens the
// guest's listening sockets, and the guest carries on; connections from before the cut-over
// are reset (the clients reconnect).
//
// Recruiting a new backup (the core's takeSnapshot / installSnapshot). A snapshot is one tag
// byte and a body:
//   'S'  a snapshot of the whole guest (GuestRuntime.snapshot: memory, globals, unwound stack,
//        counters, fd table, guest directory; src/wasm/image.ts). The recruit restores it in
//        replay mode and carries on from there: its cost is the guest's size, not its age.
//   'L'  every log entry since the guest started (varuint count, then each entry), which the
//        recruit replays from the start. The fallback, for a guest loaded without asyncify
//        (it cannot be resumed) and for a primary with no guest yet (an empty log: the recruit
//        starts the guest afresh). Only such a front keeps the whole log in memory.
//   's'  the same state as 'S', streamed (the default, issue 9 item 4): snapshotStream takes it at
//        one point (one copy of memory, the small parts, the host state) and makes the pieces
//        on demand (src/wasm/image-stream.ts); restoreStream copies each piece's memory into
//        the new instance as it comes, so neither side holds its event loop for the whole
//        memory. Service config `"snapshot": "whole"` gives 'S' instead (to compare).
//   'X'  the primary could not snapshot its guest (the text says why): the recruit stops.
// A guest that has exited is snapshotted too (phase "exited"): the recruit holds its memory and
// directory and reports the same exit.
//
// The snapshot can be ahead of the core's last index: appends the front holds in `pending`
// (flow control closed) are in the guest's state already, and reach the recruit afterwards as
// entries after the snapshot's index. The restored runtime drops records below the snapshot's
// call count (GuestRuntime.feed), so those are not replayed twice.

import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { basename, isAbsolute, join, relative } from 'node:path';
import { canAppend, type Entry, type Role, type View } from '../core/index.js';
import { ByteReader, ByteWriter } from '../guest/bytes.js';
import { LockstepError } from '../errors.js';
import { loadModule, type LoadedModule } from '../wasm/module.js';
import { GuestRuntime, type GuestEnd, type RecordSink, type RuntimeMode } from '../wasm/runtime.js';
import type { ImageStreamWriter } from '../wasm/image-stream.js';
import { WasiHost, type OutputEffect } from '../wasm/wasi.js';
import type { WasmServiceConfig } from './config.js';
import type { FrontHost, ServiceFront } from './front.js';
import { wholeRestoreStream, wholeSnapshotStream, type RestoreStream, type SnapshotStream } from '../guest/snapshot-stream.js';

type Pending = { readonly kind: 'append'; readonly payload: Uint8Array } | { readonly kind: 'hold'; readonly effect: OutputEffect };

type GuestState = 'none' | 'running' | 'exited' | 'failed';

/** A restored guest's memory is hashed for the guest-restore log line only up to this size (a full sha256 holds the event loop: ~0.5 s at 256 MiB here). */
const RESTORE_HASH_MAX_BYTES = 32 * 1024 * 1024;

/** While a listening address stays in use, say so in the log this often. */
const LISTEN_RETRY_LOG_MS = 10_000;

/** The first byte of a snapshot: its format (see the header comment). */
const TAG_GUEST = 0x53; // 'S'
const TAG_STREAM = 0x73; // 's'
const TAG_LOG = 0x4c; // 'L'
const TAG_FAILED = 0x58; // 'X'

function tagged(tag: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 1);
  out[0] = tag;
  out.set(body, 1);
  return out;
}

export class WasmFront implements ServiceFront {
  private loaded: LoadedModule | null = null;
  private host: WasiHost | null = null;
  private runtime: GuestRuntime | null = null;
  /** Bumped per guest instance, so a stale instance's late callbacks are ignored. */
  private generation = 0;
  private state: GuestState = 'none';
  private exitCode: number | null = null;
  private failure: string | null = null;
  /** Without guest snapshots only: every entry since the guest started (what a recruit replays). */
  private entries: Uint8Array[] = [];
  private entryBytes = 0;
  /** Log this replica's guest made or received since it started (or was restored): counted, not kept. */
  private logTotal = { entries: 0, bytes: 0 };
  /** How this replica's guest was recruited, and the last snapshot it gave a recruit. */
  private restoredFrom: Record<string, unknown> | null = null;
  private lastSnapshot: Record<string, unknown> | null = null;
  /** Appends and holds waiting for flow control, in order (an output waits behind its entry). */
  private readonly pending: Pending[] = [];
  private readonly held = new Map<number, OutputEffect>();
  /** A recruit's host while its streamed snapshot arrives (closed if the guest is dropped first). */
  private restoringHost: WasiHost | null = null;
  private nextOutputId = 1;
  private flowWaiters: (() => void)[] = [];
  /** Bootstrap primary, guest not started: no backup in the view yet (see `role`). */
  private waitingForBackup = false;
  readonly counters = { outputs: 0, released: 0, discarded: 0 };

  constructor(
    private readonly node: FrontHost,
    private readonly svc: WasmServiceConfig,
  ) {}

  /** This replica's guest directory: emptied at every start, so never anything but guestDir/<id>. */
  private get root(): string {
    const root = join(this.svc.guestDir, this.node.id);
    const rel = relative(this.svc.guestDir, root);
    if (rel !== this.node.id || rel.startsWith('.') || isAbsolute(rel)) throw new Error(`lockstep invariant broken: guest directory ${root} is not a child of ${this.svc.guestDir}`);
    return root;
  }

  async start(): Promise<void> {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(this.svc.module);
    } catch (e) {
      throw new LockstepError('E_FILE_READ', `cannot read the guest module ${this.svc.module}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    this.loaded = await loadModule(bytes, {
      maxMemoryPages: this.svc.memoryLimitMb * 16,
      cacheDir: join(this.svc.guestDir, '.module-cache'),
      onProgress: (what) =>
        this.node.log('info', what === 'instrumenting' ? 'guest-instrumenting' : 'guest-instrumenting-wait', {
          module: this.svc.module,
          note: what === 'instrumenting'
            ? 'instrumenting the module for record/replay (asyncify); a large guest takes up to a minute, cached after'
            : 'another node of this machine is instrumenting the module; waiting for its cached result',
        }),
    });
    this.node.log('info', 'guest-loaded', {
      module: this.svc.module, sha256: this.loaded.sha256, instrumentMs: Math.round(this.loaded.instrumentMs),
      memoryPages: this.loaded.memory.maximumPages,
    });
  }

  async stop(): Promise<void> {
    this.dropGuest();
  }

  // ---- guest lifecycle ---------------------------------------------------------------------

  /**
   * Whether a recruit gets a snapshot of the guest (it can be resumed: asyncify) rather than
   * the whole log. Without, the front keeps every entry since the guest started.
   */
  private get guestSnapshots(): boolean {
    return this.loaded?.exports.asyncify != null;
  }

  /** A fresh guest in an emptied directory, in record (primary) or replay (follower) mode. */
  private startGuest(mode: RuntimeMode): void {
    const gen = this.freshGuestDir();
    const host = this.makeHost(mode, () => runtime);
    const runtime = new GuestRuntime({ loaded: this.loaded!, host, mode, sink: this.sink(gen) });
    this.launch(gen, host, runtime);
    if (mode === 'record') this.openListeners(host, gen);
    this.node.log('info', 'guest-start', { mode });
  }

  /** A recruit's guest, restored from the primary's snapshot, in replay mode. */
  private restoreGuest(snapshot: Uint8Array): void {
    const t0 = performance.now();
    const gen = this.freshGuestDir();
    let runtime: GuestRuntime | null = null;
    const host = this.makeHost('replay', () => runtime!);
    try {
      runtime = GuestRuntime.restore({ loaded: this.loaded!, host, mode: 'replay', sink: this.sink(gen) }, snapshot);
    } catch (e) {
      host.close();
      this.node.failStop(`cannot restore the primary's guest snapshot: ${(e as Error).message}`);
      return;
    }
    this.launch(gen, host, runtime);
    const ms = Math.round(performance.now() - t0);
    this.restoredFrom = { kind: 'snapshot', bytes: snapshot.length, calls: runtime.callCount, ms };
    this.node.log('info', 'guest-restore', { from: 'snapshot', bytes: snapshot.length, calls: runtime.callCount, ms, memoryHash: runtime.memoryHash() });
  }

  /** Drop the old guest and empty its directory: the generation of the next one. */
  private freshGuestDir(): number {
    this.dropGuest();
    const gen = ++this.generation;
    this.logTotal = { entries: 0, bytes: 0 };
    rmSync(this.root, { recursive: true, force: true });
    mkdirSync(this.root, { recursive: true });
    return gen;
  }

  private launch(gen: number, host: WasiHost, runtime: GuestRuntime): void {
    this.host = host;
    this.runtime = runtime;
    this.state = 'running';
    void runtime.run().then((end) => this.guestEnded(gen, end));
  }

  private makeHost(mode: RuntimeMode, runtime: () => GuestRuntime | null): WasiHost {
    return new WasiHost({
      args: [basename(this.svc.module), ...this.svc.args],
      env: [...this.svc.env, `LOCKSTEP_LISTEN_FDS=${this.svc.listen.length}`],
      root: this.root,
      listen: this.svc.listen,
      output: (e) => runtime()!.onOutput(e),
      stdout: (b) => this.node.log('info', 'guest-stdout', { text: Buffer.from(b).toString('utf8') }),
      stderr: (b) => this.node.log('info', 'guest-stderr', { text: Buffer.from(b).toString('utf8') }),
      mode: mode === 'replay' ? 'replay' : 'live',
    });
  }

  /** Count an entry of this guest's log; keep it only when a recruit would need it. */
  private noteEntry(payload: Uint8Array): void {
    this.logTotal.entries++;
    this.logTotal.bytes += payload.length;
    if (this.guestSnapshots) return;
    this.entries.push(payload);
    this.entryBytes += payload.length;
  }

  /**
   * Open the guest's listening sockets. An address in use is waited for as long as it takes:
   * on one machine it is held by the old primary until it learns it was deposed (a stopped
   * process may take long), and this node holds the only current copy of the guest, so giving
   * up would lose the service. Any other error (no such address, no permission) is fatal.
   */
  private async openListeners(host: WasiHost, gen: number, goLive = false): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await (goLive ? host.goLive(LISTEN_RETRY_LOG_MS) : host.openListeners(LISTEN_RETRY_LOG_MS));
        if (attempt > 1) this.node.log('info', 'guest-listening', { after: `${attempt} attempts` });
        return;
      } catch (e) {
        if (gen !== this.generation) return;
        const message = (e as Error).message;
        if (!/EADDRINUSE/.test(message)) return this.node.failStop(`cannot open the guest's listening sockets: ${message}`);
        this.node.log('warn', 'guest-listen-waiting', { reason: message, attempt });
      }
    }
  }

  private dropGuest(): void {
    this.generation++;
    this.restoringHost?.close();
    this.restoringHost = null;
    this.runtime?.stop();
    this.host?.close();
    this.runtime = null;
    this.host = null;
    this.pending.length = 0;
    this.held.clear();
    this.wakeFlow();
  }

  private guestEnded(gen: number, end: GuestEnd): void {
    if (gen !== this.generation || end.kind === 'stopped') return;
    if (end.kind === 'exit') {
      this.state = 'exited';
      this.exitCode = end.code;
      this.node.log('info', 'guest-exit', { code: end.code, calls: this.runtime?.callCount ?? 0, memoryHash: this.runtime?.memoryHash() ?? null });
      return;
    }
    this.state = 'failed';
    this.failure = `${end.kind}: ${end.message}`;
    // A trap (stack overflow, out of memory, unreachable) or a divergence: this replica's guest
    // cannot go on, so the replica stops (fail-stop); its peer carries on or fails the same way.
    this.node.failStop(`guest ${end.kind}: ${end.message}`);
  }

  // ---- the sink: records into entries, outputs into held outputs -------------------------------

  private sink(gen: number): RecordSink {
    return {
      canRecord: () => gen === this.generation && this.pending.length === 0 && canAppend(this.node.replica),
      whenCanRecord: () => new Promise<void>((resolve) => this.flowWaiters.push(resolve)),
      append: (payload) => {
        if (gen !== this.generation) return;
        this.noteEntry(payload);
        this.pending.push({ kind: 'append', payload });
        this.drain();
      },
      output: (effects) => {
        if (gen !== this.generation) return;
        for (const effect of effects) this.pending.push({ kind: 'hold', effect });
        this.drain();
      },
    };
  }

  /** Hand the core what is pending, in order, while flow control lets entries in. */
  private drain(): void {
    while (this.pending.length > 0) {
      const p = this.pending[0]!;
      if (p.kind === 'append') {
        if (!canAppend(this.node.replica)) return;
        this.pending.shift();
        this.node.input({ type: 'append', payload: p.payload });
      } else {
        if (this.node.replica.role !== 'primary') return;
        this.pending.shift();
        const id = this.nextOutputId++;
        this.held.set(id, p.effect);
        this.counters.outputs++;
        this.node.input({ type: 'hold', outputId: id, fresh: false });
      }
    }
    this.wakeFlow();
  }

  private wakeFlow(): void {
    const waiters = this.flowWaiters;
    this.flowWaiters = [];
    for (const w of waiters) w();
  }

  // ---- ServiceFront ------------------------------------------------------------------------

  apply(entries: readonly Entry[]): void {
    const rt = this.runtime;
    if (rt === null) return;
    for (const e of entries) {
      this.noteEntry(e.payload);
      try {
        rt.feedEntry(e.payload);
      } catch (err) {
        // Not a log entry this guest can replay: this replica cannot follow the primary.
        this.node.failStop(`log entry ${e.index} cannot be replayed: ${(err as Error).message}`);
        return;
      }
    }
  }

  installSnapshot(_index: number, data: Uint8Array): void {
    this.entries = [];
    this.entryBytes = 0;
    const body = data.subarray(1);
    switch (data[0]) {
      case TAG_GUEST:
        return this.restoreGuest(body);
      case TAG_STREAM: {
        const r = this.guestRestoreStream();
        r.add(body);
        return r.finish();
      }
      case TAG_LOG:
        return this.installLog(body);
      case TAG_FAILED:
        return this.node.failStop(`the primary could not snapshot its guest: ${new TextDecoder().decode(body)}`);
      default:
        return this.node.failStop(`corrupt wasm snapshot: unknown format tag ${data[0] ?? '(empty)'}`);
    }
  }

  /** The 'L' fallback: start the guest afresh and replay every entry since it started. */
  private installLog(body: Uint8Array): void {
    const t0 = performance.now();
    const entries: Uint8Array[] = [];
    try {
      const r = new ByteReader(body, 'wasm log snapshot');
      const n = r.varuint();
      for (let i = 0; i < n; i++) entries.push(r.bytes().slice());
      r.end();
    } catch (e) {
      return this.node.failStop(`cannot install the primary's log snapshot: ${(e as Error).message}`);
    }
    this.startGuest('replay');
    this.apply(entries.map((payload, i) => ({ index: i + 1, payload })));
    this.restoredFrom = { kind: 'log', bytes: body.length + 1, entries: entries.length, ms: Math.round(performance.now() - t0) };
    this.node.log('info', 'guest-restore', { from: 'log', bytes: body.length + 1, entries: entries.length });
  }

  takeSnapshot(): Uint8Array {
    const t0 = performance.now();
    const out = this.snapshotBytes();
    const kind = out[0] === TAG_GUEST ? 'snapshot' : out[0] === TAG_LOG ? 'log' : 'failed';
    const ms = Math.round(performance.now() - t0);
    this.lastSnapshot = { kind, bytes: out.length, ms, calls: this.runtime?.callCount ?? 0, logBytesTotal: this.logTotal.bytes };
    this.node.log('info', 'guest-snapshot', this.lastSnapshot);
    return out;
  }

  private snapshotBytes(): Uint8Array {
    const rt = this.runtime;
    if (rt === null || !this.guestSnapshots) return this.logSnapshot();
    try {
      return tagged(TAG_GUEST, rt.snapshot());
    } catch (e) {
      // The log is not kept when snapshots are possible, so there is nothing to fall back to:
      // the recruit is told why and stops; this primary carries on alone.
      const why = (e as Error).message;
      this.node.log('warn', 'guest-snapshot-failed', { reason: why });
      return tagged(TAG_FAILED, new TextEncoder().encode(why));
    }
  }

  /**
   * The guest's snapshot in pieces ('s'): its state is taken now, in this call (the guest is
   * between host calls), and each `next` makes about a chunk of it from that copy while the
   * guest runs on. The log fallback, a failure, and `"snapshot": "whole"` are one whole
   * snapshot cut into pieces.
   */
  snapshotStream(): SnapshotStream {
    const rt = this.runtime;
    if (this.svc.snapshot === 'whole' || rt === null || !this.guestSnapshots) return wholeSnapshotStream(this.takeSnapshot());
    const t0 = performance.now();
    let writer: ImageStreamWriter;
    try {
      writer = rt.snapshotStream();
    } catch {
      return wholeSnapshotStream(this.takeSnapshot()); // 'X' with the reason
    }
    const beginMs = Math.round((performance.now() - t0) * 10) / 10;
    const info: Record<string, unknown> = { kind: 'snapshot', streamed: true, beginMs, calls: rt.callCount, logBytesTotal: this.logTotal.bytes, memoryBytes: rt.memoryBytes };
    this.lastSnapshot = info;
    this.node.log('info', 'guest-snapshot', info);
    let first = true;
    let maxNextMs = 0;
    let maxNextCpuMs = 0;
    return {
      next: (maxBytes) => {
        const t = performance.now();
        const c = process.cpuUsage();
        let piece = writer.next(maxBytes);
        maxNextMs = Math.max(maxNextMs, performance.now() - t);
        maxNextCpuMs = Math.max(maxNextCpuMs, cpuMsSince(c));
        if (piece === null) {
          Object.assign(info, {
            bytes: writer.stats.bytes + 1, pieces: writer.stats.pieces, memoryChunks: writer.stats.memoryChunks,
            maxNextMs: Math.round(maxNextMs * 10) / 10, maxNextCpuMs: Math.round(maxNextCpuMs * 10) / 10, ms: Math.round(performance.now() - t0), copy: writer.copyStats,
          });
          this.node.log('info', 'guest-snapshot-sent', info);
          return null;
        }
        if (first) {
          piece = tagged(TAG_STREAM, piece);
          first = false;
        }
        return piece;
      },
      close: () => writer.drop(),
    };
  }

  /**
   * A recruit's restore, a piece at a time: a streamed guest snapshot ('s') is restored as its
   * pieces come (guestRestoreStream); any other form is gathered and installed whole.
   */
  restoreStream(): RestoreStream {
    let inner: RestoreStream | null = null;
    return {
      add: (piece) => {
        if (inner === null) {
          if (piece.length === 0) return;
          if (piece[0] === TAG_STREAM) {
            inner = this.guestRestoreStream();
            piece = piece.subarray(1);
          } else {
            inner = wholeRestoreStream((bytes) => this.installSnapshot(0, bytes));
          }
        }
        inner.add(piece);
      },
      finish: () => {
        if (inner === null) return this.node.failStop('corrupt wasm snapshot: it is empty');
        inner.finish();
      },
    };
  }

  /** Restore a streamed guest snapshot: pieces into the new instance as they come, the rest at finish. */
  private guestRestoreStream(): RestoreStream {
    const t0 = performance.now();
    this.entries = [];
    this.entryBytes = 0;
    const gen = this.freshGuestDir();
    let runtime: GuestRuntime | null = null;
    const host = this.makeHost('replay', () => runtime!);
    this.restoringHost = host;
    let failed = false;
    let maxAddMs = 0;
    let maxAddCpuMs = 0;
    const fail = (e: unknown): void => {
      failed = true;
      if (this.restoringHost === host) this.restoringHost = null;
      host.close();
      this.node.failStop(`cannot restore the primary's guest snapshot: ${(e as Error).message}`);
    };
    let stream: ReturnType<typeof GuestRuntime.restoreStream>;
    try {
      stream = GuestRuntime.restoreStream({ loaded: this.loaded!, host, mode: 'replay', sink: this.sink(gen) });
    } catch (e) {
      fail(e);
      return { add() {}, finish() {} };
    }
    return {
      add: (piece) => {
        if (failed || gen !== this.generation) return;
        const t = performance.now();
        const c = process.cpuUsage();
        try {
          stream.add(piece);
        } catch (e) {
          return fail(e);
        }
        maxAddMs = Math.max(maxAddMs, performance.now() - t);
        maxAddCpuMs = Math.max(maxAddCpuMs, cpuMsSince(c));
      },
      finish: () => {
        if (failed || gen !== this.generation) return;
        const t = performance.now();
        try {
          runtime = stream.finish();
        } catch (e) {
          return fail(e);
        }
        this.restoringHost = null;
        this.launch(gen, host, runtime);
        const finishMs = Math.round((performance.now() - t) * 10) / 10;
        const bytes = stream.stats.bytes + 1;
        const ms = Math.round(performance.now() - t0);
        this.restoredFrom = { kind: 'snapshot', streamed: true, bytes, pieces: stream.stats.pieces, calls: runtime.callCount, ms, finishMs, maxAddMs: Math.round(maxAddMs * 10) / 10, maxAddCpuMs: Math.round(maxAddCpuMs * 10) / 10, beginMs: Math.round(runtime.restoreBeginMs * 10) / 10 };
        const memoryHash = runtime.memoryBytes <= RESTORE_HASH_MAX_BYTES ? runtime.memoryHash() : `not hashed here (${runtime.memoryBytes} bytes; /status has it)`;
        this.node.log('info', 'guest-restore', { from: 'snapshot', ...this.restoredFrom, memoryHash });
      },
    };
  }

  /** Every entry since the guest started (recruiting by replay; see the header comment). */
  private logSnapshot(): Uint8Array {
    const w = new ByteWriter(this.entryBytes + 8 * this.entries.length + 16);
    w.u8(TAG_LOG).varuint(this.entries.length);
    for (const e of this.entries) w.bytes(e);
    return w.finish();
  }

  release(outputIds: readonly number[]): void {
    const effects: OutputEffect[] = [];
    for (const id of outputIds) {
      const e = this.held.get(id);
      if (e === undefined) continue;
      this.held.delete(id);
      this.counters.released++;
      effects.push(e);
    }
    this.host?.performOutputs(effects);
  }

  discard(outputIds: readonly number[]): void {
    for (const id of outputIds) if (this.held.delete(id)) this.counters.discarded++;
  }

  role(role: Role, view: View, _reason: string): void {
    if (role !== 'primary') return;
    if (this.runtime === null && this.state === 'none') {
      // The first primary of the cluster (bootstrap): the guest starts here, from nothing, once
      // a backup is in the view. Started alone, a batch guest could run to its end with no
      // replica to replay it, and a crash then would lose it. A one-node cluster cannot wait.
      if (view.backups.length === 0 && this.node.config.nodes.length > 1) {
        if (!this.waitingForBackup) this.node.log('info', 'guest-waiting-for-backup', { view: `${view.epoch}` });
        this.waitingForBackup = true;
        return;
      }
      this.waitingForBackup = false;
      this.entries = [];
      this.entryBytes = 0;
      this.restoredFrom = null;
      this.startGuest('record');
      return;
    }
    const rt = this.runtime;
    const host = this.host;
    if (rt !== null && host !== null && rt.currentMode === 'replay') {
      const gen = this.generation;
      this.node.log('info', 'guest-go-live', { backlog: rt.backlog, calls: rt.callCount });
      rt.promote(() => this.openListeners(host, gen, true));
    }
    this.drain();
  }

  reset(): void {
    this.dropGuest();
    this.state = 'none';
    this.waitingForBackup = false;
    this.exitCode = null;
    this.failure = null;
    this.entries = [];
    this.entryBytes = 0;
    this.logTotal = { entries: 0, bytes: 0 };
    this.restoredFrom = null;
    this.lastSnapshot = null;
    rmSync(this.root, { recursive: true, force: true });
  }

  flowMayHaveOpened(): void {
    this.drain();
  }

  afterFlush(): void {}

  status(): Record<string, unknown> {
    const rt = this.runtime;
    return {
      guest: {
        state: this.state,
        mode: rt?.currentMode ?? null,
        exitCode: this.exitCode,
        failure: this.failure,
        calls: rt?.callCount ?? 0,
        backlog: rt?.backlog ?? 0,
        memoryHash: rt?.memoryHash() ?? null,
        outputDigest: rt?.outputDigest() ?? null,
        hostState: this.host?.hostState() ?? null,
        logEntries: this.entries.length,
        logBytes: this.entryBytes,
        logEntriesTotal: this.logTotal.entries,
        logBytesTotal: this.logTotal.bytes,
        recruitBy: this.guestSnapshots ? 'snapshot' : 'log',
        restoredFrom: this.restoredFrom,
        lastSnapshot: this.lastSnapshot,
        heldOutputs: this.held.size,
        suspends: rt?.stats.suspends ?? 0,
      },
    };
  }

  metrics(metric: (name: string, type: 'gauge' | 'counter', help: string, value: number) => void): void {
    const c = this.counters;
    metric('lockstep_guest_calls_total', 'counter', 'Logged host calls the guest made or replayed.', this.runtime?.callCount ?? 0);
    metric('lockstep_guest_log_bytes', 'gauge', 'Bytes of log kept since the guest started (a recruit replays it; 0 when recruits get a guest snapshot).', this.entryBytes);
    metric('lockstep_guest_log_bytes_total', 'counter', 'Bytes of log the guest made or received since it started here.', this.logTotal.bytes);
    metric('lockstep_guest_outputs_total', 'counter', 'Guest outputs held for the output rule.', c.outputs);
    metric('lockstep_released_outputs_total', 'counter', 'Guest outputs released by the output rule.', c.released);
    metric('lockstep_discarded_outputs_total', 'counter', 'Guest outputs discarded when this node stopped being primary.', c.discarded);
  }
}

/**
 * CPU milliseconds this process spent since `start` (process.cpuUsage(): user and system, all
 * threads). Unlike wall time it leaves out the time the process waited for a CPU, which on a
 * shared machine can dwarf the work: a piece's CPU time is what holding the loop cost.
 */
function cpuMsSince(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1000;
}
