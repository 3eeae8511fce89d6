// The module front: a user's service module (defineService or defineMachine, docs/SERVICES.md) behind the same
// RESP client port as kv (issue 10). Everything about clients, the output rule, flow control
// and the duplicate filter is the kv front's; what differs is the machine (loaded from the
// module into its determinism guard, sandbox.ts) and the runtime digest check:
//
// Every log entry's payload is the service entry behind one byte: 0, or 1 followed by the
// digest (machine + duplicate filter) the primary had right after executing that entry. The
// primary adds it to every `digestEvery`-th logged step (counted by the service, so the same on
// every replica, snapshots included). A backup applies the entry, compares, and on a mismatch
// fail-stops with E_SERVICE_DIVERGENCE naming the entry's log index: the state agreed at the
// previous check and differs here, so the divergence entered at one of the entries between.
// The primary sees its backup gone and recruits a spare, which starts from its snapshot.
//
// A backup whose re-execution of an entry throws the sandbox's time limit (the primary finished
// it in time) fail-stops too (E_SERVICE_TIMEOUT) rather than carry a state the primary lacks.
// This lives here, not in src/core: the core never looks inside a payload.

import type { Entry } from '../core/index.js';
import { ByteReader, ByteWriter, loadServiceModule, ReplicatedService, isInfrastructureError, type KvCommand, type KvReply, type LoadedService } from '../guest/index.js';
import type { ModuleServiceConfig } from './config.js';
import type { FrontHost } from './front.js';
import { KvFront } from './kv-front.js';

export class ModuleFront extends KvFront {
  // `declare`: no field initializer, which would run after KvFront's constructor called freshService.
  declare private loaded: LoadedService | undefined;
  private failed = false;
  /** A primary whose machine broke, waiting for the quarantine to reach the backup: why. */
  private brokenWhy: string | null = null;
  private checks = 0;

  constructor(node: FrontHost, private readonly spec: ModuleServiceConfig) {
    super(node);
  }

  protected override freshService(): ReplicatedService<KvCommand, KvReply, unknown> {
    // Called by KvFront's constructor before ours has run: load lazily, once per process.
    if (this.loaded === undefined) {
      const spec = this.node.config.service as ModuleServiceConfig;
      this.loaded = loadServiceModule(spec.module, { timeoutMs: spec.timeoutMs });
    }
    const spec = this.node.config.service as ModuleServiceConfig;
    // A full machine whose execute threw after changing its state: stop (machine.ts).
    const machine = this.loaded.machine((reason, command) => this.broken(reason, command));
    return new ReplicatedService<KvCommand, KvReply, unknown>(machine, spec.mode, { bytesMax: this.node.config.dedupBytesMax, sessionEntries: this.node.config.dedupSessionEntries });
  }

  protected override payload(entry: Uint8Array): Uint8Array {
    const every = this.spec.digestEvery;
    if (every === 0 || this.service.appliedEntries % every !== 0) return withoutDigest(entry);
    return new ByteWriter(entry.length + 40).u8(1).text(this.service.digest()).raw(entry).finish();
  }

  override apply(entries: readonly Entry[]): void {
    for (const e of entries) {
      if (this.failed) return;
      const r = new ByteReader(e.payload, 'service log entry');
      const flag = r.u8();
      if (flag > 1) r.corrupt(`unknown digest flag ${flag}`);
      const want = flag === 1 ? r.text() : null;
      const inner = e.payload.subarray(e.payload.length - r.remaining);
      try {
        this.service.applyEntry(inner);
      } catch (err) {
        if (!isInfrastructureError(err)) throw err;
        return this.giveUp(`E_SERVICE_TIMEOUT: re-executing entry ${e.index} ran past service.timeoutMs (${this.spec.timeoutMs} ms) here, where the primary finished it; this backup stops rather than diverge`);
      }
      if (want !== null) {
        this.checks++;
        const here = this.service.digest();
        if (here !== want) {
          const every = this.spec.digestEvery;
          return this.giveUp(
            `E_SERVICE_DIVERGENCE: the service's state differs from the primary's at log index ${e.index} (digest here ${here}, primary ${want})` +
              (every > 1 ? `; it agreed at the previous check, ${every} logged entries earlier, so it diverged at one of those` : '; it agreed after the previous entry, so this entry diverged') +
              `: the service module ${this.spec.module} is not deterministic (see docs/SERVICES.md)`,
          );
        }
      }
    }
  }

  /**
   * The machine's state changed under a command with no entry to say how: this replica stops.
   * A primary first logs the command's quarantine and stops once its backup has it, taking no
   * command meanwhile: the next primary refuses the command (E_SERVICE_QUARANTINED), so a
   * client retrying it there, or an attacker sending it again, cannot stop every node in turn.
   */
  private broken(reason: string, command: KvCommand): void {
    if (this.failed) return;
    if (this.node.replica.role !== 'primary') return this.giveUp(reason);
    this.failed = true;
    this.brokenWhy = reason;
    const entry = this.service.quarantine(this.executing ?? { clientId: null, seq: 1, ackedBelow: 0, command }, reason);
    this.node.log('warn', 'service-command-quarantined', { command: (command[0] ?? '').slice(0, 64), reason: reason.slice(0, 300) });
    // No digest in this entry's payload: the machine's digest here is the broken one.
    this.logThen(withoutDigest(entry), () => this.node.failStop(`${reason}; the command is quarantined on every replica (E_SERVICE_QUARANTINED)`));
  }

  brokenReason(): string | null {
    return this.brokenWhy;
  }

  protected override notServing(): string | null {
    return this.failed ? 'this node is stopping: its service broke (E_SERVICE_MACHINE) and it waits for its backup to take the command\'s quarantine' : null;
  }

  private giveUp(reason: string): void {
    this.failed = true;
    this.node.failStop(reason);
  }

  override reset(keepState = false): void {
    this.failed = false;
    this.brokenWhy = null;
    super.reset(keepState);
  }

  protected override serviceStatus(): Record<string, unknown> {
    const machine = this.service.machine as { name: string; stateBytes?: number };
    // A full machine's state size is known from its last snapshot only (null before one).
    return { service: machine.name, stateBytes: machine.stateBytes ?? null, digestChecks: this.checks };
  }

  protected override serviceMetrics(metric: (name: string, type: 'gauge' | 'counter', help: string, value: number) => void): void {
    const machine = this.service.machine as { stateBytes?: number };
    if (machine.stateBytes !== undefined) metric('lockstep_service_state_bytes', 'gauge', 'The service module state\'s encoded size.', machine.stateBytes);
    metric('lockstep_service_digest_checks_total', 'counter', 'Digest checks passed on this replica as a backup.', this.checks);
  }
}

/** A log payload with digest flag 0: the service's entry after one zero byte. */
function withoutDigest(entry: Uint8Array): Uint8Array {
  const out = new Uint8Array(entry.length + 1);
  out.set(entry, 1);
  return out;
}
