// defineService: a user's replicated service in a few lines, on top of StateMachine (issue 10).
//
//   export default defineService({
//     name: 'bank',
//     initial: () => ({ accounts: {} }),
//     commands: {
//       deposit(state, [who, amount]) { ... return state.accounts[who]; },
//       balance: { readOnly: true, run(state, [who]) { return state.accounts[who] ?? 0; } },
//     },
//   });
//
// Commands arrive as Redis-style argument lists (`DEPOSIT alice 10`): the first argument picks
// the command (case-insensitively), the rest reach `run` as strings. `run` mutates `state` and
// returns the reply, converted to RESP: string -> bulk, integer or bigint -> integer, other
// finite number -> bulk of its decimal text, boolean -> 1/0, null/undefined -> nil, array ->
// array, plain object -> flat [key, value, ...] array (as HGETALL). Anything else (a function,
// a Map, a Promise, NaN) is an error reply. A thrown error is an error reply too: its message,
// prefixed with "ERR " unless it starts with an upper-case code word, as Redis's do.
//
// Atomicity: a command runs on a copy of the state, decoded from the state's encoding. Only
// when it returns a serialisable reply does the copy become the state; a throw, a bad reply or
// a timeout leaves the state exactly as it was, on every replica. The cost is one decode and
// one encode of the whole state per command: fine for the small services this API is for;
// a big state wants a hand-written StateMachine with its own changes.
//
// State: plain objects, arrays, strings, finite numbers, bigints, booleans, null, Map and Set,
// nested. Its encoding preserves insertion order (iteration order is state too), so the
// snapshot restores the same iteration order and the digest (a hash of the encoding) tells two
// states apart even when only their order differs.

import { ByteReader, ByteWriter, Hash64, hex8 } from './bytes.js';
import type { Execution, GuestCodec, StateMachine } from './types.js';
import { kvCodec, type KvCommand, type KvReply } from './kv.js';

/** A command's arguments after its name, as the client sent them. */
export type ServiceArgs = readonly string[];

export type CommandFn<S> = (state: S, args: ServiceArgs) => unknown;

export interface CommandSpec<S> {
  /** Never changes the state: not logged (its reply still waits for the backup's ack). */
  readonly readOnly?: boolean;
  readonly run: CommandFn<S>;
}

export interface ServiceDefinition<S> {
  readonly name: string;
  /** The empty state (a function is called once per fresh replica). */
  readonly initial: S | (() => S);
  readonly commands: Readonly<Record<string, CommandFn<S> | CommandSpec<S>>>;
  /**
   * Optional, for `lockstep sim --service`: a simulated client's next command, drawn with
   * `random(n)` (an integer in [0, n), deterministic per seed), e.g. ['TRANSFER', 'a', 'b', '5'].
   */
  readonly simulate?: (random: (n: number) => number, client: string, counter: number) => readonly string[];
}

export interface DefinedService<S> extends ServiceDefinition<S> {
  readonly __lockstepService: true;
}

const NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;
/** Commands the client port answers itself (src/node/commands.ts, AUTH, HELLO, lockstep/client's wrapper). */
const RESERVED = new Set(['PING', 'ECHO', 'SELECT', 'QUIT', 'COMMAND', 'CLIENT', 'INFO', 'ROLE', 'SENTINEL', 'WAIT', 'CONFIG', 'AUTH', 'HELLO', 'LOCKSTEP.EXEC']);

/** Check a definition's shape now, so a mistake is a load error rather than a surprise later. */
export function defineService<S>(def: ServiceDefinition<S>): DefinedService<S> {
  const where = (what: string): string => `defineService(${typeof def?.name === 'string' ? JSON.stringify(def.name) : '?'}): ${what}`;
  if (typeof def !== 'object' || def === null) throw new TypeError('defineService: expects an object { name, initial, commands }');
  if (typeof def.name !== 'string' || !NAME_RE.test(def.name)) throw new TypeError(where('name must be a short identifier (letters, digits, _ . -)'));
  if (!('initial' in def)) throw new TypeError(where('initial (the empty state, or a function returning it) is missing'));
  if (typeof def.commands !== 'object' || def.commands === null) throw new TypeError(where('commands must be an object of command functions'));
  const seen = new Set<string>();
  for (const [key, spec] of Object.entries(def.commands)) {
    const upper = key.toUpperCase();
    if (!/^[A-Za-z][A-Za-z0-9_.-]*$/.test(key)) throw new TypeError(where(`command name ${JSON.stringify(key)} must be a word (letters, digits, _ . -)`));
    if (seen.has(upper)) throw new TypeError(where(`two commands named ${upper} (names are case-insensitive)`));
    if (RESERVED.has(upper)) throw new TypeError(where(`command name ${key} is taken by the client port's own ${upper} (answered by every node, never by the service): pick another`));
    seen.add(upper);
    const fn = typeof spec === 'function' ? spec : (spec as CommandSpec<S> | null)?.run;
    if (typeof fn !== 'function') throw new TypeError(where(`command ${key} must be a function or { run, readOnly? }`));
    if (fn.constructor?.name === 'AsyncFunction' || fn.constructor?.name === 'AsyncGeneratorFunction') {
      throw new TypeError(where(`command ${key} is async: a replicated command must finish before it returns (no await)`));
    }
  }
  if (def.simulate !== undefined && typeof def.simulate !== 'function') throw new TypeError(where('simulate must be a function (random, client, counter) => command'));
  return Object.freeze({ ...def, __lockstepService: true as const });
}

export function isDefinedService(v: unknown): v is DefinedService<unknown> {
  return typeof v === 'object' && v !== null && (v as { __lockstepService?: unknown }).__lockstepService === true;
}

// ---- state encoding ----------------------------------------------------------------------

/** The constructors values are decoded with: a sandbox's own, so decoded state lives in its realm. */
export interface Realm {
  readonly Object: ObjectConstructor;
  readonly Array: ArrayConstructor;
  readonly Map: MapConstructor;
  readonly Set: SetConstructor;
}

const HOST_REALM: Realm = { Object, Array, Map, Set };

const T_NULL = 0, T_UNDEF = 1, T_FALSE = 2, T_TRUE = 3, T_NUM = 4, T_STR = 5, T_BIG = 6, T_ARR = 7, T_OBJ = 8, T_MAP = 9, T_SET = 10;
const MAX_DEPTH = 200;

/** A value that cannot be part of a service's state or reply; the message names where it is. */
export class NotSerialisable extends Error {
  constructor(readonly path: string, what: string) {
    super(`${path} is ${what}, which cannot be replicated (allowed: plain objects, arrays, strings, finite numbers, bigints, booleans, null, Map, Set)`);
    this.name = 'NotSerialisable';
  }
}

function kindOf(v: unknown): string {
  if (typeof v === 'function') return 'a function';
  if (typeof v === 'symbol') return 'a symbol';
  if (typeof v === 'number') return String(v);
  const ctor = (v as { constructor?: { name?: string } }).constructor?.name;
  return ctor ? `a ${ctor}` : 'an object with no prototype';
}

function protoName(v: object): string | undefined {
  const p = Object.getPrototypeOf(v) as { constructor?: { name?: string } } | null;
  return p === null ? 'null' : p.constructor?.name;
}

function writeValue(w: ByteWriter, v: unknown, path: string, depth: number): void {
  if (depth > MAX_DEPTH) throw new NotSerialisable(path, `nested deeper than ${MAX_DEPTH}`);
  switch (typeof v) {
    case 'undefined': w.u8(T_UNDEF); return;
    case 'boolean': w.u8(v ? T_TRUE : T_FALSE); return;
    case 'number':
      if (!Number.isFinite(v)) throw new NotSerialisable(path, kindOf(v));
      w.u8(T_NUM).f64(v);
      return;
    case 'string': w.u8(T_STR).text(v); return;
    case 'bigint': w.u8(T_BIG).bigint(v); return;
    case 'object': {
      if (v === null) { w.u8(T_NULL); return; }
      if (Array.isArray(v)) {
        w.u8(T_ARR).varuint(v.length);
        for (let i = 0; i < v.length; i++) writeValue(w, v[i], `${path}[${i}]`, depth + 1);
        return;
      }
      const proto = protoName(v);
      if (proto === 'Map' && typeof (v as Map<unknown, unknown>).entries === 'function') {
        const m = v as Map<unknown, unknown>;
        w.u8(T_MAP).varuint(m.size);
        let i = 0;
        for (const [k, x] of m) {
          writeValue(w, k, `${path}.keys[${i}]`, depth + 1);
          writeValue(w, x, `${path}.get(${typeof k === 'string' ? JSON.stringify(k) : `#${i}`})`, depth + 1);
          i++;
        }
        return;
      }
      if (proto === 'Set' && typeof (v as Set<unknown>).values === 'function') {
        const s = v as Set<unknown>;
        w.u8(T_SET).varuint(s.size);
        let i = 0;
        for (const x of s) writeValue(w, x, `${path}.values[${i++}]`, depth + 1);
        return;
      }
      if (proto !== 'Object' && proto !== 'null') throw new NotSerialisable(path, kindOf(v));
      const keys = Object.keys(v);
      w.u8(T_OBJ).varuint(keys.length);
      for (const k of keys) {
        w.text(k);
        writeValue(w, (v as Record<string, unknown>)[k], /^[A-Za-z_$][\w$]*$/.test(k) ? `${path}.${k}` : `${path}[${JSON.stringify(k)}]`, depth + 1);
      }
      return;
    }
    default:
      throw new NotSerialisable(path, kindOf(v));
  }
}

function readValue(r: ByteReader, realm: Realm, depth: number): unknown {
  if (depth > MAX_DEPTH) r.corrupt('value nested too deep');
  const tag = r.u8();
  switch (tag) {
    case T_NULL: return null;
    case T_UNDEF: return undefined;
    case T_FALSE: return false;
    case T_TRUE: return true;
    case T_NUM: return r.f64();
    case T_STR: return r.text();
    case T_BIG: return r.bigint();
    case T_ARR: {
      const n = r.varuint();
      if (n > r.remaining) r.corrupt('array longer than the input');
      const a = new realm.Array<unknown>();
      for (let i = 0; i < n; i++) a.push(readValue(r, realm, depth + 1));
      return a;
    }
    case T_OBJ: {
      const n = r.varuint();
      if (n > r.remaining) r.corrupt('object larger than the input');
      const o = new realm.Object() as Record<string, unknown>;
      for (let i = 0; i < n; i++) {
        const k = r.text();
        const v = readValue(r, realm, depth + 1);
        // defineProperty: a key "__proto__" is data, never the prototype.
        Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
      }
      return o;
    }
    case T_MAP: {
      const n = r.varuint();
      if (n > r.remaining) r.corrupt('map larger than the input');
      const m = new realm.Map<unknown, unknown>();
      for (let i = 0; i < n; i++) {
        const k = readValue(r, realm, depth + 1);
        m.set(k, readValue(r, realm, depth + 1));
      }
      return m;
    }
    case T_SET: {
      const n = r.varuint();
      if (n > r.remaining) r.corrupt('set larger than the input');
      const s = new realm.Set<unknown>();
      for (let i = 0; i < n; i++) s.add(readValue(r, realm, depth + 1));
      return s;
    }
    default:
      return r.corrupt(`unknown value tag ${tag}`);
  }
}

/** The encoding of a state value (insertion order kept). Throws NotSerialisable naming the path. */
export function encodeState(v: unknown, path = 'state'): Uint8Array {
  const w = new ByteWriter(256);
  writeValue(w, v, path, 0);
  return w.finish();
}

export function decodeState(bytes: Uint8Array, realm: Realm = HOST_REALM): unknown {
  const r = new ByteReader(bytes, 'service state');
  const v = readValue(r, realm, 0);
  r.end();
  return v;
}

/** A reply value as RESP; throws NotSerialisable naming the path of what cannot be sent. */
export function toReply(v: unknown, path = 'reply', depth = 0): KvReply {
  if (depth > MAX_DEPTH) throw new NotSerialisable(path, `nested deeper than ${MAX_DEPTH}`);
  switch (typeof v) {
    case 'undefined': return { kind: 'bulk', value: null };
    case 'boolean': return { kind: 'integer', value: v ? 1n : 0n };
    case 'bigint': return { kind: 'integer', value: v };
    case 'number':
      if (!Number.isFinite(v)) throw new NotSerialisable(path, kindOf(v));
      return Number.isSafeInteger(v) ? { kind: 'integer', value: BigInt(v) } : { kind: 'bulk', value: String(v) };
    case 'string': return { kind: 'bulk', value: v };
    case 'object': {
      if (v === null) return { kind: 'bulk', value: null };
      if (Array.isArray(v)) return { kind: 'array', items: Array.from(v as unknown[], (x, i) => toReply(x, `${path}[${i}]`, depth + 1)) };
      const proto = protoName(v);
      if (proto !== 'Object' && proto !== 'null') throw new NotSerialisable(path, kindOf(v));
      const items: KvReply[] = [];
      for (const [k, x] of Object.entries(v)) items.push({ kind: 'bulk', value: k }, toReply(x, `${path}.${k}`, depth + 1));
      return { kind: 'array', items };
    }
    default:
      throw new NotSerialisable(path, kindOf(v));
  }
}

// ---- the machine -------------------------------------------------------------------------

/** How a command is run: directly (host), or in a sandbox with a time limit (sandbox.ts). */
export interface CommandRunner {
  readonly realm: Realm;
  run(fn: CommandFn<unknown>, state: unknown, args: readonly string[]): unknown;
}

const HOST_RUNNER: CommandRunner = { realm: HOST_REALM, run: (fn, state, args) => fn(state, args) };

/** A thrown error a user module may see as its command's failure (not the sandbox's time limit). */
export function isInfrastructureError(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === 'ERR_SCRIPT_EXECUTION_TIMEOUT';
}

function errorMessage(e: unknown): string {
  const raw = typeof e === 'object' && e !== null && typeof (e as { message?: unknown }).message === 'string'
    ? (e as { message: string }).message
    : String(e);
  const msg = raw.replace(/[\r\n]+/g, ' ').slice(0, 500);
  return /^[A-Z][A-Z0-9_]+( |$)/.test(msg) ? msg : `ERR ${msg}`;
}

export type ServiceMachine = StateMachine<KvCommand, KvReply, Uint8Array> & {
  /** The state's encoding (the snapshot, and in state-transfer mode every change). */
  readonly stateBytes: number;
};

/** Turn a defined service into a StateMachine with the default codec (RESP commands and replies). */
export function serviceMachine<S>(def: DefinedService<S>, runner: CommandRunner = HOST_RUNNER): ServiceMachine {
  const commands = new Map<string, { fn: CommandFn<unknown>; readOnly: boolean }>();
  for (const [key, spec] of Object.entries(def.commands)) {
    const fn = (typeof spec === 'function' ? spec : spec.run) as CommandFn<unknown>;
    commands.set(key.toUpperCase(), { fn, readOnly: typeof spec === 'function' ? false : spec.readOnly === true });
  }
  const initial = (): Uint8Array => {
    // Through the runner: in a sandbox, under its time limit like any command.
    const v = typeof def.initial === 'function' ? runner.run(def.initial as CommandFn<unknown>, undefined, new runner.realm.Array<string>()) : def.initial;
    return encodeState(v, `${def.name}: the initial state`);
  };
  let encoded = initial();
  let state: unknown = decodeState(encoded, runner.realm);
  let digest: string | null = null;
  const h = new Hash64();
  const err = (message: string): KvReply => ({ kind: 'error', message });
  const codec: GuestCodec<KvCommand, KvReply, Uint8Array> = {
    encodeCommand: kvCodec.encodeCommand,
    commandLength: kvCodec.commandLength!,
    writeCommand: kvCodec.writeCommand!,
    decodeCommand: kvCodec.decodeCommand,
    encodeReply: kvCodec.encodeReply,
    decodeReply: kvCodec.decodeReply,
    encodeChange: (c) => c,
    decodeChange: (b) => {
      decodeState(b); // validate before anything changes
      return b.slice();
    },
  };
  const install = (bytes: Uint8Array, value: unknown): void => {
    encoded = bytes;
    state = value;
    digest = null;
  };
  return {
    name: def.name,
    codec,
    get stateBytes() {
      return encoded.length;
    },
    isReadOnly(command) {
      return commands.get((command[0] ?? '').toUpperCase())?.readOnly === true;
    },
    errorReply: err,
    execute(command): Execution<KvReply, Uint8Array> {
      const name = (command[0] ?? '').toUpperCase();
      const c = commands.get(name);
      if (c === undefined) return { reply: err(`ERR unknown command '${(command[0] ?? '').slice(0, 64)}' for service ${def.name}`), change: null };
      // Run on a copy: only a command that returns a sendable reply changes the state.
      const work = decodeState(encoded, runner.realm);
      const args = new runner.realm.Array<string>(...command.slice(1));
      let out: unknown;
      try {
        out = runner.run(c.fn, work, args);
      } catch (e) {
        // A time limit is not the command's own outcome (another replica may finish in time):
        // it must not become a reply in the log. The caller decides (ModuleFront).
        if (isInfrastructureError(e)) {
          throw Object.assign(new Error(`${name} was stopped: ${(e as Error).message}; it had no effect`), { code: (e as { code: string }).code });
        }
        return { reply: err(errorMessage(e)), change: null };
      }
      let reply: KvReply;
      let after: Uint8Array;
      try {
        reply = toReply(out, `the reply of ${name}`);
        if (c.readOnly) return { reply, change: null };
        after = encodeState(work, `the state after ${name}`);
      } catch (e) {
        if (!(e instanceof NotSerialisable)) throw e;
        return { reply: err(`ERR ${e.message}; the command had no effect`), change: null };
      }
      if (after.length === encoded.length && Buffer.compare(after, encoded) === 0) return { reply, change: null };
      install(after, work);
      return { reply, change: after };
    },
    applyChange(change) {
      install(change, decodeState(change, runner.realm));
    },
    snapshot() {
      return encoded.slice();
    },
    restore(bytes) {
      const v = decodeState(bytes, runner.realm);
      install(bytes.slice(), v);
    },
    digest() {
      if (digest === null) {
        h.reset().bytes(encoded);
        digest = `${hex8(h.a)}${hex8(h.b)}`;
      }
      return digest;
    },
  };
}
