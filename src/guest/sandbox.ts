// Loading a user's service module into a determinism guard (issue 10).
//
// The module (an ES module: `import { defineService } from 'lockstep/guest'; export default
// defineService({...})`, or `export default defineMachine(() => machine)` for a full
// StateMachine, machine.ts) is evaluated in a node:vm context of its own, where everything that
// differs between replicas is replaced by a function that throws an error naming the call:
// Date, Math.random, timers, queueMicrotask, WeakRef, FinalizationRegistry, Intl, require,
// process, console, fetch. The only import allowed is 'lockstep/guest'; any other import (a
// node builtin, a package, another file) is refused at load, a dynamic import() too (the source is refused at load if it mentions one).
//
// node:vm is no security boundary: this guards against mistakes, not against hostile code.
// Every command runs under a time limit (vm's timeout): a command that loops forever is
// stopped, and the caller decides what that means (the primary answers with an error and
// logs nothing; a backup re-executing an entry the primary finished in time fail-stops).
//
// The module is rewritten into a script (import lines become reads of the guest API, `export
// default` an assignment) because vm.SourceTextModule needs a Node flag; the rewrite covers
// the import and export forms a service module needs, and refuses the others by name.

import vm from 'node:vm';
import { readFileSync } from 'node:fs';
import { LockstepError } from '../errors.js';
import { defineService, isDefinedService, serviceMachine, toReply, type CommandRunner, type Realm } from './service.js';
import { defineMachine, isDefinedMachine, wrapMachine, type ModuleMachine } from './machine.js';
import { ByteReader, ByteWriter, Hash64, SumDigest, hex8 } from './bytes.js';
import { kvCodec, type KvCommand } from './kv.js';

export const DENIED_MARK = 'LockstepDeterminismError';

// Run inside the context before the module: replace the non-deterministic parts of the global.
const PRELUDE = `(() => {
  'use strict';
  const G = globalThis;
  class LockstepDeterminismError extends Error {}
  Object.defineProperty(LockstepDeterminismError.prototype, 'name', { value: '${DENIED_MARK}' });
  const why = (name, hint) => name + ' is not available in a lockstep service: replicas must compute the same thing from the same commands' + (hint ? ' (' + hint + ')' : '');
  const deny = (name, hint) => function () { throw new LockstepDeterminismError(why(name, hint)); };
  const clock = 'pass the time in as a command argument';
  const NoDate = deny('Date', clock);
  NoDate.now = deny('Date.now()', clock);
  NoDate.parse = deny('Date.parse()', clock);
  NoDate.UTC = deny('Date.UTC()', clock);
  Object.defineProperty(G, 'Date', { value: NoDate, writable: false, configurable: false });
  Object.defineProperty(G.Math, 'random', { value: deny('Math.random()', 'pass random values in as command arguments'), writable: false, configurable: false });
  const io = 'a service only changes its state and returns a reply';
  for (const n of ['setTimeout', 'setInterval', 'setImmediate', 'clearTimeout', 'clearInterval', 'clearImmediate', 'queueMicrotask']) {
    Object.defineProperty(G, n, { value: deny(n + '()', 'a command runs to completion at once'), writable: false, configurable: false });
  }
  for (const n of ['fetch', 'require']) {
    Object.defineProperty(G, n, { value: deny(n + '()', io), writable: false, configurable: false });
  }
  for (const n of ['WeakRef', 'FinalizationRegistry']) {
    Object.defineProperty(G, n, { value: deny(n, 'garbage collection differs between replicas'), writable: false, configurable: false });
  }
  for (const n of ['process', 'console', 'Intl', 'Buffer', 'performance', 'crypto', 'SharedArrayBuffer', 'Atomics', 'WebAssembly']) {
    Object.defineProperty(G, n, { get: deny(n, n === 'console' ? io : n === 'Intl' ? 'locale and time zone differ between machines' : io), configurable: false });
  }
  G.__lockstep_call = (fn, state, args) => fn(state, args);
})();`;

const CALL = new vm.Script('__lockstep_call(__lockstep_fn, __lockstep_state, __lockstep_args)', { filename: 'lockstep:call' });

export interface LoadOptions {
  /** Per command (and for evaluating the module), in ms. */
  readonly timeoutMs?: number;
}

export const SERVICE_TIMEOUT_MS_DEFAULT = 1000;

function moduleError(path: string, why: string): LockstepError {
  return new LockstepError('E_SERVICE_MODULE', `service module ${path}: ${why}`);
}

/** An ES module's source as a script: imports from 'lockstep/guest' only, `export` rewritten. */
export function moduleToScript(source: string, path: string): string {
  const guestOnly = (spec: string): void => {
    if (spec !== 'lockstep/guest') {
      throw moduleError(path, `import of '${spec}' is not available in a lockstep service (only 'lockstep/guest'): node builtins and I/O differ between replicas; bundle other code into this one file`);
    }
  };
  let out = source.replace(/^[ \t]*import\s+(['"])([^'"]+)\1\s*;?/gm, (_m, _q, spec: string) => {
    guestOnly(spec);
    return '';
  });
  out = out.replace(/^[ \t]*import\s+([\s\S]*?)\s+from\s+(['"])([^'"]+)\2\s*;?/gm, (_m, what: string, _q, spec: string) => {
    guestOnly(spec);
    const w = what.trim();
    const star = /^\*\s+as\s+([A-Za-z_$][\w$]*)$/.exec(w);
    if (star) return `const ${star[1]} = __lockstep_guest;`;
    const named = /^\{([\s\S]*)\}$/.exec(w);
    if (named) {
      const parts = named[1]!.split(',').map((s) => s.trim()).filter((s) => s !== '' && !s.startsWith('type '));
      const binds = parts.map((p) => {
        const m = /^([A-Za-z_$][\w$]*)(?:\s+as\s+([A-Za-z_$][\w$]*))?$/.exec(p);
        if (!m) throw moduleError(path, `cannot read the import list { ${named[1]!.trim()} }`);
        return m[2] ? `${m[1]}: ${m[2]}` : m[1]!;
      });
      return `const { ${binds.join(', ')} } = __lockstep_guest;`;
    }
    throw moduleError(path, `import ${w} from 'lockstep/guest': use import { defineService } from 'lockstep/guest'`);
  });
  const dynamic = /\bimport\s*\(\s*(['"`]?)([^'"`)]*)/.exec(out);
  if (dynamic) throw moduleError(path, `import(${dynamic[1]}${dynamic[2]}${dynamic[1]}) is not available in a lockstep service: node builtins and I/O differ between replicas`);
  out = out.replace(/^([ \t]*)export\s+default\s+/gm, '$1__lockstep_exports.default = ');
  out = out.replace(/^([ \t]*)export\s+(?=(const|let|var|function|class|async)\b)/gm, '$1');
  if (/^[ \t]*export\s/m.test(out)) throw moduleError(path, 'only `export default defineService({...})` and `export const/function ...` are understood');
  return out;
}

/** A sandbox's realm and its command runner (every call under the time limit). */
function makeRunner(context: vm.Context, timeoutMs: number): CommandRunner {
  const realm = vm.runInContext('({ Object, Array, Map, Set })', context) as Realm;
  return {
    realm,
    run(fn, state, args) {
      context.__lockstep_fn = fn;
      context.__lockstep_state = state;
      context.__lockstep_args = args;
      try {
        return CALL.runInContext(context, { timeout: timeoutMs, breakOnSigint: false });
      } finally {
        context.__lockstep_fn = context.__lockstep_state = context.__lockstep_args = undefined;
      }
    },
  };
}

/** What the sandbox offers as 'lockstep/guest': the authoring helpers and the codec pieces. */
const GUEST_API = Object.freeze({ defineService, defineMachine, toReply, kvCodec, ByteReader, ByteWriter, Hash64, SumDigest, hex8 });

export interface LoadedService {
  /** The service's name (defineService's name; a full machine's `name`). */
  readonly name: string;
  /** 'service': defineService (default codec); 'machine': defineMachine (a full StateMachine). */
  readonly kind: 'service' | 'machine';
  readonly simulate: ((random: (n: number) => number, client: string, counter: number) => readonly string[]) | undefined;
  /** The module's source, to load it again into a sandbox of its own (one per simulated replica). */
  readonly source: string;
  /**
   * A fresh machine (empty state) running this module's commands in its sandbox. `onBroken`:
   * a full machine's execute threw after changing its state (machine.ts); the caller stops.
   */
  machine(onBroken?: (reason: string, command: KvCommand) => void): ModuleMachine & { readonly stateBytes?: number };
}

/** Load a service module file into a fresh sandbox; errors are E_SERVICE_MODULE naming the cause. */
export function loadServiceModule(path: string, opts: LoadOptions = {}): LoadedService {
  let source: string;
  try {
    source = readFileSync(path, 'utf8');
  } catch (e) {
    throw moduleError(path, `cannot be read: ${(e as Error).message}`);
  }
  return loadServiceSource(source, path, opts);
}

export function loadServiceSource(source: string, path: string, opts: LoadOptions = {}): LoadedService {
  const timeoutMs = opts.timeoutMs ?? SERVICE_TIMEOUT_MS_DEFAULT;
  const script = moduleToScript(source, path);
  const context = vm.createContext({}, { name: `lockstep service ${path}`, codeGeneration: { strings: true, wasm: false } });
  vm.runInContext(PRELUDE, context, { filename: 'lockstep:prelude' });
  const exportsObj: { default?: unknown } = {};
  context.__lockstep_exports = exportsObj;
  context.__lockstep_guest = GUEST_API;
  try {
    new vm.Script(script, { filename: path }).runInContext(context, { timeout: timeoutMs });
  } catch (e) {
    if (e instanceof LockstepError) throw e;
    const code = (e as { code?: unknown }).code;
    if (code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') throw moduleError(path, `loading it did not finish within ${timeoutMs} ms`);
    throw moduleError(path, `loading it failed: ${(e as Error)?.message ?? String(e)}`);
  }
  const def = exportsObj.default;
  const runner = makeRunner(context, timeoutMs);
  if (isDefinedMachine(def)) {
    const machine = (onBroken?: (reason: string, command: KvCommand) => void): ModuleMachine & { readonly stateBytes?: number } => {
      let m: unknown;
      try {
        m = runner.run(() => def.create(), undefined, []);
      } catch (e) {
        throw moduleError(path, `its create(): ${(e as Error)?.message ?? String(e)}`);
      }
      return wrapMachine(m, { runner, where: path, ...(onBroken ? { onBroken } : {}) });
    };
    const name = machine().name; // a machine that cannot be made is a load error, not a surprise later
    return { name, kind: 'machine', simulate: def.simulate, source, machine };
  }
  if (!isDefinedService(def)) throw moduleError(path, 'its default export must be defineService({ name, initial, commands }) or defineMachine(() => stateMachine)');
  return {
    name: def.name,
    kind: 'service',
    simulate: def.simulate,
    source,
    machine: () => {
      try {
        return serviceMachine(def, runner);
      } catch (e) {
        throw moduleError(path, `its initial state: ${(e as Error).message}`);
      }
    },
  };
}

/**
 * A service module as the simulator runs it (lockstep sim --service): every replica its own
 * sandbox (module-level variables are not shared between replicas, as on real machines), and
 * clients drawing commands from the module's `simulate`.
 */
export function simServiceOf(path: string, opts: LoadOptions = {}): {
  name: string;
  machine: () => ModuleMachine;
  command: (random: (n: number) => number, client: string, counter: number) => readonly string[];
} {
  const first = loadServiceModule(path, opts);
  const simulate = first.simulate;
  if (simulate === undefined) {
    throw moduleError(path, 'has no simulate(random, client, counter) in its definition, so lockstep sim cannot make a workload for it (docs/SERVICES.md, "Testing a service")');
  }
  return {
    name: first.name,
    machine: () => loadServiceSource(first.source, path, opts).machine(),
    command: (random, client, counter) => {
      const out: unknown = simulate(random, client, counter);
      if (!Array.isArray(out) || out.length === 0 || !out.every((a) => typeof a === 'string')) {
        throw moduleError(path, `simulate must return a non-empty array of strings, got ${String(out)}`);
      }
      return Array.from(out as string[]);
    },
  };
}
