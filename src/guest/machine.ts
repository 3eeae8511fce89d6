// defineMachine: a service module that exports a full StateMachine (issue 10 item 1), for
// control over encoding, changes (state-transfer mode) and digests, behind the same client
// port and in the same determinism sandbox as a defineService module.
//
//   export default defineMachine(() => createCounters());             // a fresh machine per replica
//   export default defineMachine({ create: () => createCounters(), simulate(random) {...} });
//
// How it maps to RESP: the machine's commands are the client's argument lists as sent
// (`readonly string[]`, the first one the command's name), and its replies are RESP values,
// the `KvReply` shapes of lockstep/guest ({kind:'bulk',value}, {kind:'integer',value: bigint},
// {kind:'status'|'error'|'array',...}). Its codec is its own: how commands, replies and changes
// are laid out in log entries and the duplicate filter is up to it (kvCodec is there to reuse).
//
// Every call into the machine runs in the module's sandbox under service.timeoutMs. What the
// wrapper adds to the machine's own contract (src/guest/types.ts):
//   - a reply that is not a RESP value becomes an error reply naming the problem; the change the
//     command made stands (the same on every replica, since a backup re-executing gets the same);
//   - a throw (or the time limit) from execute: the machine's digest, taken before the command,
//     tells whether the state changed. If not, the command is refused with an error reply and
//     nothing is logged, as for kv. If it did, the state is half-changed in a way no log entry
//     describes, and `onBroken` is called (a primary quarantines the command on every replica,
//     then fail-stops once its backup has that; its backup holds the state as it was before
//     the command). A machine must validate before it changes anything.
//   - a read-only command (never logged) whose run changed the digest is broken the same way.
//   - bytes coming back (encodings, snapshots) are copied into this realm's Uint8Array.

import { LockstepError } from '../errors.js';
import type { KvCommand, KvReply } from './kv.js';
import type { Execution, GuestCodec, StateMachine } from './types.js';
import type { CommandRunner } from './service.js';
import { isInfrastructureError } from './service.js';

/** A module's machine: commands are client argument lists, replies RESP values. */
export type ModuleMachine = StateMachine<KvCommand, KvReply, unknown>;

export interface MachineDefinition {
  /** A fresh machine with the empty state (called once per replica, and for every recruit). */
  readonly create: () => ModuleMachine;
  /** Optional, for `lockstep sim --service`, as in defineService. */
  readonly simulate?: (random: (n: number) => number, client: string, counter: number) => readonly string[];
}

export interface DefinedMachine extends MachineDefinition {
  readonly __lockstepMachine: true;
}

/** Mark a machine factory as a module's service; `defineMachine(create)` or `defineMachine({ create, simulate })`. */
export function defineMachine(def: MachineDefinition | (() => ModuleMachine)): DefinedMachine {
  const d: MachineDefinition = typeof def === 'function' ? { create: def } : def;
  if (typeof d !== 'object' || d === null || typeof d.create !== 'function') {
    throw new TypeError('defineMachine: expects a function returning a fresh StateMachine, or { create, simulate? }');
  }
  if (d.simulate !== undefined && typeof d.simulate !== 'function') throw new TypeError('defineMachine: simulate must be a function (random, client, counter) => command');
  return Object.freeze({ create: d.create, ...(d.simulate ? { simulate: d.simulate } : {}), __lockstepMachine: true as const });
}

export function isDefinedMachine(v: unknown): v is DefinedMachine {
  return typeof v === 'object' && v !== null && (v as { __lockstepMachine?: unknown }).__lockstepMachine === true;
}

const METHODS = ['isReadOnly', 'errorReply', 'execute', 'applyChange', 'snapshot', 'restore', 'digest'] as const;
const CODEC = ['encodeCommand', 'decodeCommand', 'encodeReply', 'decodeReply', 'encodeChange', 'decodeChange'] as const;

function isBytes(v: unknown): v is Uint8Array {
  return Object.prototype.toString.call(v) === '[object Uint8Array]';
}

/** A RESP value from the sandbox as a host KvReply; a string naming the problem if it is none. */
export function respOf(v: unknown, path: string, depth = 0): KvReply | string {
  if (depth > 200) return `${path} is nested deeper than 200`;
  if (typeof v !== 'object' || v === null) return `${path} is ${v === null ? 'null' : typeof v}, not a RESP value ({ kind, ... })`;
  const o = v as Record<string, unknown>;
  switch (o.kind) {
    case 'status':
      return typeof o.value === 'string' && !/[\r\n]/.test(o.value) ? { kind: 'status', value: o.value } : `${path}.value must be a one-line string`;
    case 'error':
      return typeof o.message === 'string' && !/[\r\n]/.test(o.message) ? { kind: 'error', message: o.message } : `${path}.message must be a one-line string`;
    case 'integer':
      if (typeof o.value === 'bigint') return { kind: 'integer', value: o.value };
      if (typeof o.value === 'number' && Number.isSafeInteger(o.value)) return { kind: 'integer', value: BigInt(o.value) };
      return `${path}.value must be a bigint or a safe integer`;
    case 'bulk':
      return typeof o.value === 'string' || o.value === null ? { kind: 'bulk', value: o.value } : `${path}.value must be a string or null`;
    case 'array': {
      if (!Array.isArray(o.items)) return `${path}.items must be an array`;
      const items: KvReply[] = [];
      for (let i = 0; i < o.items.length; i++) {
        const r = respOf(o.items[i], `${path}.items[${i}]`, depth + 1);
        if (typeof r === 'string') return r;
        items.push(r);
      }
      return { kind: 'array', items };
    }
    default:
      return `${path}.kind is ${JSON.stringify(String(o.kind)).slice(0, 40)}, not one of status, error, integer, bulk, array`;
  }
}

export interface WrapOptions {
  readonly runner: CommandRunner;
  /** The state changed under a command that threw: this replica cannot carry on. */
  readonly onBroken?: (reason: string, command: KvCommand) => void;
  /** For error messages. */
  readonly where: string;
}

/**
 * The module's machine as the node runs it: every call in the sandbox under its time limit,
 * arguments copied into the sandbox's realm, results checked and copied out.
 */
export function wrapMachine(m: unknown, opts: WrapOptions): ModuleMachine & { readonly stateBytes?: number } {
  const { runner, where } = opts;
  const bad = (why: string): LockstepError => new LockstepError('E_SERVICE_MODULE', `service module ${where}: ${why}`);
  if (typeof m !== 'object' || m === null) throw bad('create() must return a StateMachine object');
  const machine = m as Record<string, unknown> & { codec?: Record<string, unknown> };
  if (typeof machine.name !== 'string' || machine.name === '') throw bad('its machine has no name');
  for (const k of METHODS) if (typeof machine[k] !== 'function') throw bad(`its machine ${machine.name} has no ${k}() (the StateMachine interface, docs/SERVICES.md)`);
  if (typeof machine.codec !== 'object' || machine.codec === null) throw bad(`its machine ${machine.name} has no codec`);
  for (const k of CODEC) if (typeof machine.codec[k] !== 'function') throw bad(`its machine ${machine.name}'s codec has no ${k}()`);
  const codec = machine.codec;
  const call = <T>(f: () => T): T => runner.run(() => f(), undefined, []) as T;
  const method = (k: string) => (...args: unknown[]): unknown => call(() => (machine[k] as (...a: unknown[]) => unknown)(...args));
  const codecFn = (k: string) => (...args: unknown[]): unknown => call(() => (codec[k] as (...a: unknown[]) => unknown).apply(codec, args));
  const inRealm = (command: KvCommand): string[] => new runner.realm.Array<string>(...command);
  const bytesOut = (v: unknown, what: string): Uint8Array => {
    if (!isBytes(v)) throw bad(`${machine.name}.${what} returned ${typeof v}, not a Uint8Array`);
    return new Uint8Array(v);
  };
  const replyOut = (v: unknown, what: string): KvReply => {
    const r = respOf(v, what);
    return typeof r === 'string' ? { kind: 'error', message: `ERR ${machine.name}: ${r}` } : r;
  };
  const encodeCommand = codecFn('encodeCommand');
  const decodeCommand = codecFn('decodeCommand');
  const encodeReply = codecFn('encodeReply');
  const decodeReply = codecFn('decodeReply');
  const encodeChange = codecFn('encodeChange');
  const decodeChange = codecFn('decodeChange');
  const wrappedCodec: GuestCodec<KvCommand, KvReply, unknown> = {
    encodeCommand: (c) => bytesOut(encodeCommand(inRealm(c)), 'codec.encodeCommand'),
    decodeCommand: (b) => {
      const v = decodeCommand(b);
      if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw bad(`${machine.name}.codec.decodeCommand must return an array of strings`);
      return Array.from(v as string[]);
    },
    encodeReply: (r) => bytesOut(encodeReply(r), 'codec.encodeReply'),
    decodeReply: (b) => replyOut(decodeReply(b), 'codec.decodeReply()'),
    encodeChange: (c) => bytesOut(encodeChange(c), 'codec.encodeChange'),
    decodeChange: (b) => decodeChange(b),
  };
  const isReadOnly = method('isReadOnly');
  const errorReply = method('errorReply');
  const execute = method('execute');
  const digest = method('digest');
  const admit = typeof machine.admit === 'function' ? method('admit') : null;
  const recordedReply = typeof machine.recordedReply === 'function' ? method('recordedReply') : null;
  const applyChange = method('applyChange');
  const snapshot = method('snapshot');
  const restore = method('restore');
  let lastSnapshotBytes: number | undefined;
  /** The state changed where no log entry says so: tell the owner (a node fail-stops), and fail this call. */
  const broken = (why: string, command: KvCommand): LockstepError => {
    opts.onBroken?.(`E_SERVICE_MACHINE: ${why}`, command);
    return new LockstepError('E_SERVICE_MACHINE', why);
  };
  const digestOut = (): string => {
    const d = digest();
    if (typeof d !== 'string') throw bad(`${machine.name}.digest() must return a string`);
    return d;
  };
  const out: ModuleMachine & { readonly stateBytes?: number } = {
    name: machine.name,
    codec: wrappedCodec,
    get stateBytes() {
      return lastSnapshotBytes;
    },
    isReadOnly: (c) => isReadOnly(inRealm(c)) === true,
    errorReply: (message) => replyOut(errorReply(message), 'errorReply()'),
    execute(command): Execution<KvReply, unknown> {
      const before = digestOut();
      let res: unknown;
      try {
        res = execute(inRealm(command));
      } catch (e) {
        let after: string;
        try {
          after = digestOut();
        } catch {
          after = '(digest failed)';
        }
        if (after !== before) {
          throw broken(`${machine.name}.execute(${(command[0] ?? '').slice(0, 64)}) threw after changing the state (digest ${before} before, ${after} after): ${(e as Error)?.message ?? String(e)}; no log entry describes that change, so this replica stops (validate before changing anything, docs/SERVICES.md)`, command);
        }
        if (isInfrastructureError(e)) throw e;
        const msg = String((e as Error)?.message ?? e).replace(/[\r\n]+/g, ' ').slice(0, 500);
        return { reply: { kind: 'error', message: /^[A-Z][A-Z0-9_]+( |$)/.test(msg) ? msg : `ERR ${msg}` }, change: null };
      }
      if (typeof res !== 'object' || res === null || !('reply' in res) || !('change' in res)) {
        throw bad(`${machine.name}.execute must return { reply, change }`);
      }
      const r = res as { reply: unknown; change: unknown };
      if (isReadOnly(inRealm(command)) === true) {
        const after = digestOut();
        if (after !== before) {
          throw broken(`${machine.name}.execute(${(command[0] ?? '').slice(0, 64)}) changed the state (digest ${before} before, ${after} after), but isReadOnly says it is a read, which is never logged; this replica stops`, command);
        }
      }
      return { reply: replyOut(r.reply, `the reply of ${(command[0] ?? '').toUpperCase().slice(0, 64)}`), change: r.change ?? null };
    },
    applyChange: (c) => void applyChange(c),
    snapshot() {
      const b = bytesOut(snapshot(), 'snapshot()');
      lastSnapshotBytes = b.length;
      return b;
    },
    restore(b) {
      restore(b);
      lastSnapshotBytes = b.length;
    },
    digest: digestOut,
  };
  if (admit !== null) {
    (out as { admit?: ModuleMachine['admit'] }).admit = (c) => {
      const r = admit(inRealm(c));
      return r === null || r === undefined ? null : replyOut(r, 'admit()');
    };
  }
  if (recordedReply !== null) {
    (out as { recordedReply?: ModuleMachine['recordedReply'] }).recordedReply = (r, changed) => replyOut(recordedReply(r, changed), 'recordedReply()');
  }
  return out;
}
