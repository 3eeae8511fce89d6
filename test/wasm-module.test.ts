// The load-time module pipeline (src/wasm/module.ts): what it refuses and why, the memory limit
// it sets, the asyncify instrumentation (unwinding and rewinding a real guest), determinism of
// its output, and its cache. The modules are in test/fixtures/wasm/ with their sources.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LockstepError } from '../src/errors.js';
import { loadModule, type LoadedModule } from '../src/wasm/module.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/wasm/', import.meta.url));
const fixture = (name: string): Uint8Array => new Uint8Array(readFileSync(join(FIXTURES, `${name}.wasm`)));
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

// ---- refusals --------------------------------------------------------------------------------

async function refusal(bytes: Uint8Array, maxMemoryPages = 16): Promise<string> {
  try {
    await loadModule(bytes, { maxMemoryPages });
  } catch (e) {
    assert.ok(e instanceof LockstepError, `expected a LockstepError, got ${String(e)}`);
    assert.equal(e.code, 'E_WASM_MODULE');
    return e.message;
  }
  assert.fail('the module was accepted');
}

const REFUSALS: [string, RegExp][] = [
  ['atomics', /threads\/atomics instructions.*single-threaded/],
  ['shared-memory', /shared memory.*-pthread/],
  ['relaxed-simd', /relaxed-SIMD instructions.*-mrelaxed-simd/],
  ['memory64', /64-bit memory.*wasm32/],
  ['imported-memory', /imports its memory \(env\.memory\).*define and export its own memory/],
  ['no-memory', /has no memory/],
  ['unexported-memory', /does not export its memory as "memory"/],
  ['foreign-import', /outside wasi_snapshot_preview1: env\.next_input, env\.emscripten_notify_memory_growth;/],
];

for (const [name, pattern] of REFUSALS) {
  test(`refuses ${name}.wasm, saying why and what to do`, async () => {
    assert.match(await refusal(fixture(name)), pattern);
  });
}

test('refuses bytes that are not WebAssembly, with V8 saying where', async () => {
  assert.match(await refusal(new TextEncoder().encode('#!/bin/sh\necho hi\n')), /not valid WebAssembly/);
  const truncated = fixture('upper').subarray(0, 200);
  assert.match(await refusal(truncated), /not valid WebAssembly: .*@\+\d+/);
});

test('refuses an initial memory larger than the guest limit', async () => {
  // upper.wasm starts with 2 pages (lld's default 64 KiB stack plus data).
  assert.match(await refusal(fixture('upper'), 1), /initial memory is 2 pages.*limit of 1 pages/);
});

test('refuses a module that is already instrumented (it exports names lockstep reserves)', async () => {
  const once = await loadModule(fixture('probe'), { maxMemoryPages: 4 });
  assert.match(await refusal(once.bytes), /already exports "lockstep_global_0", a name lockstep reserves/);
});

test('refuses a page limit that is not a whole number of wasm32 pages', async () => {
  for (const bad of [0, -1, 1.5, 65537, Number.NaN]) {
    assert.match(await refusal(fixture('probe'), bad), /maxMemoryPages must be an integer/);
  }
});

// ---- the memory limit ------------------------------------------------------------------------

/** Imports that do nothing: for instantiating modules whose host calls a test does not make. */
function inertWasi(module: WebAssembly.Module): WebAssembly.Imports {
  const fns: Record<string, () => number> = {};
  for (const i of WebAssembly.Module.imports(module)) fns[i.name] = () => 0;
  return { wasi_snapshot_preview1: fns };
}

test('the memory maximum becomes the guest limit, and memory.grow past it returns -1', async () => {
  const loaded = await loadModule(fixture('probe'), { maxMemoryPages: 4 }); // the module says 100
  assert.deepEqual(loaded.memory, { initialPages: 1, maximumPages: 4 });
  const ex = new WebAssembly.Instance(loaded.module, inertWasi(loaded.module)).exports;
  const grow = ex.grow as (pages: number) => number;
  assert.equal(grow(3), 1); // returns the old size in pages
  assert.equal(grow(1), -1);
  assert.equal((ex.memory as WebAssembly.Memory).buffer.byteLength, 4 * 65536);
});

test('a module maximum below the guest limit is kept; no maximum becomes the limit', async () => {
  assert.equal((await loadModule(fixture('probe'), { maxMemoryPages: 300 })).memory.maximumPages, 100);
  assert.deepEqual((await loadModule(fixture('upper'), { maxMemoryPages: 300 })).memory, {
    initialPages: 2,
    maximumPages: 300,
  });
});

// ---- asyncify --------------------------------------------------------------------------------

const UNWINDING = 1;
const REWINDING = 2;

/**
 * The host side of asyncify, as the runtime does it: an import that must wait calls block(),
 * which unwinds the guest; run() then awaits the promise and rewinds, and the import, called
 * again while rewinding, finishes the call.
 */
class Driver {
  private pending: Promise<void> | null = null;
  unwinds = 0;
  constructor(
    private readonly loaded: LoadedModule,
    private readonly ex: WebAssembly.Exports,
    private readonly dataStart: number,
    private readonly dataEnd: number,
  ) {}
  private call(name: keyof NonNullable<LoadedModule['exports']['asyncify']>, ...args: number[]): number {
    return (this.ex[this.loaded.exports.asyncify![name]] as (...a: number[]) => number)(...args);
  }
  /** True when the guest is being resumed: the import must now do its work and return. */
  resuming(): boolean {
    if (this.call('getState') !== REWINDING) return false;
    this.call('stopRewind');
    return true;
  }
  block(until: Promise<void>): void {
    const view = new DataView((this.ex.memory as WebAssembly.Memory).buffer);
    view.setInt32(this.dataStart, this.dataStart + 8, true); // where the saved stack goes
    view.setInt32(this.dataStart + 4, this.dataEnd, true); // and where the area ends
    this.pending = until;
    this.unwinds++;
    this.call('startUnwind', this.dataStart);
  }
  async run<T>(entry: () => T): Promise<T> {
    for (;;) {
      const result = entry();
      if (this.call('getState') !== UNWINDING) return result;
      this.call('stopUnwind');
      await this.pending;
      this.call('startRewind', this.dataStart);
    }
  }
}

test('asyncify exports are present and a host call unwinds and rewinds with locals and stack intact', async () => {
  const loaded = await loadModule(fixture('probe'), { maxMemoryPages: 4 });
  assert.deepEqual(loaded.exports, {
    start: '_start',
    memory: 'memory',
    asyncify: {
      startUnwind: 'asyncify_start_unwind',
      stopUnwind: 'asyncify_stop_unwind',
      startRewind: 'asyncify_start_rewind',
      stopRewind: 'asyncify_stop_rewind',
      getState: 'asyncify_get_state',
    },
  });
  // __stack_pointer and $counter, then asyncify's own state and data pointer; $limit is immutable.
  assert.deepEqual(loaded.globals, ['lockstep_global_0', 'lockstep_global_1', 'lockstep_global_3', 'lockstep_global_4']);
  assert.equal(loaded.stackPointerGlobal, 'lockstep_global_0'); // found by its name here

  let d: Driver | null = null;
  let ex: WebAssembly.Exports = {};
  const wasi = {
    random_get(ptr: number, len: number): number {
      if (!d!.resuming()) {
        d!.block(new Promise((resolve) => setImmediate(resolve))); // "no input yet"
        return 0;
      }
      new DataView((ex.memory as WebAssembly.Memory).buffer).setUint32(ptr, 42, true);
      assert.equal(len, 4);
      return 0;
    },
    sched_yield: () => 0,
  };
  ex = new WebAssembly.Instance(loaded.module, { wasi_snapshot_preview1: wasi }).exports;
  d = new Driver(loaded, ex, 40000, 41024);
  const global = (name: string): number => (ex[name] as WebAssembly.Global).value as number;

  assert.equal(await d.run(() => (ex.run as (n: number) => number)(3)), 3000 + 42 + 5);
  assert.equal(d.unwinds, 1);
  assert.equal(global('lockstep_global_1'), 8); // the code after the call ran once
  assert.equal(global(loaded.stackPointerGlobal!), 32768); // the frame was popped
  assert.equal(global('lockstep_global_3'), 0); // asyncify is back to normal
});

/**
 * Just enough WASI for upper.wasm: stdin comes in chunks, and each read waits (unwinds) for the
 * next chunk to "arrive" on a later turn of the event loop.
 */
async function runUpper(loaded: LoadedModule, chunks: string[]): Promise<{ stdout: string; unwinds: number }> {
  const input = [...chunks, ''].map((c) => new TextEncoder().encode(c)); // '' is the end of file
  let available = 0; // chunks that have "arrived" and not been read
  let stdout = '';
  let d: Driver | null = null;
  let ex: WebAssembly.Exports = {};
  const view = (): DataView => new DataView((ex.memory as WebAssembly.Memory).buffer);
  const iovecs = (iovs: number, n: number): Uint8Array[] =>
    Array.from({ length: n }, (_, i) => {
      const [buf, len] = [view().getUint32(iovs + 8 * i, true), view().getUint32(iovs + 8 * i + 4, true)];
      return new Uint8Array((ex.memory as WebAssembly.Memory).buffer, buf, len);
    });
  const wasi = {
    fd_read(fd: number, iovs: number, n: number, nread: number): number {
      assert.equal(fd, 0);
      if (d !== null && !d.resuming() && available === 0) {
        d.block(new Promise((resolve) => setImmediate(() => resolve(void available++))));
        return 0;
      }
      const chunk = input.shift()!;
      available--;
      const dest = iovecs(iovs, n)[0]!;
      dest.set(chunk.subarray(0, dest.length)); // the test's chunks fit in upper's 64-byte buffer
      view().setUint32(nread, chunk.length, true);
      return 0;
    },
    fd_write(fd: number, iovs: number, n: number, nwritten: number): number {
      assert.equal(fd, 1);
      const parts = iovecs(iovs, n);
      stdout += parts.map((p) => new TextDecoder().decode(p)).join('');
      view().setUint32(nwritten, parts.reduce((s, p) => s + p.length, 0), true);
      return 0;
    },
    proc_exit(code: number): never {
      throw new Error(`proc_exit(${code})`);
    },
  };
  ex = new WebAssembly.Instance(loaded.module, { wasi_snapshot_preview1: wasi }).exports;
  if (loaded.asyncify) {
    d = new Driver(loaded, ex, 126976, 131072); // the top 4 KiB of upper's memory are unused
    await d.run(() => (ex._start as () => void)());
  } else {
    available = input.length; // no waiting possible: all the input is there from the start
    (ex._start as () => void)();
  }
  return { stdout, unwinds: d?.unwinds ?? 0 };
}

test('a clang-built WASI command blocks in fd_read, is unwound and rewound, and gives the same output', async () => {
  const loaded = await loadModule(fixture('upper'), { maxMemoryPages: 16 });
  assert.equal(loaded.stackPointerGlobal, 'lockstep_global_0'); // lld's global 0 (no names kept)
  assert.equal(loaded.globals[0], 'lockstep_global_0');
  const chunks = ['hello, ', 'lockstep\n', 'bye\n'];
  const blocking = await runUpper(loaded, chunks);
  assert.deepEqual(blocking, { stdout: 'HELLO, LOCKSTEP\nBYE\n', unwinds: 4 }); // 3 chunks and the end

  const plain = await loadModule(fixture('upper'), { maxMemoryPages: 16, asyncify: false });
  assert.equal(plain.exports.asyncify, null);
  assert.ok(!WebAssembly.Module.exports(plain.module).some((e) => e.name.startsWith('asyncify_')));
  assert.deepEqual(plain.globals, ['lockstep_global_0']);
  assert.deepEqual(await runUpper(plain, chunks), { stdout: 'HELLO, LOCKSTEP\nBYE\n', unwinds: 0 });
});

test('instrumentation leaves no binaryen pass argument set (they are process-global)', async () => {
  await loadModule(fixture('probe'), { maxMemoryPages: 4 });
  const { default: binaryen } = await import('binaryen');
  assert.equal(binaryen.getPassArgument('asyncify-imports'), null);
});

// ---- determinism -----------------------------------------------------------------------------

test('the same bytes and options give byte-identical output, in this process and another', async () => {
  const opts = { maxMemoryPages: 16 };
  const [a, b] = [await loadModule(fixture('upper'), opts), await loadModule(fixture('upper'), opts)];
  assert.equal(sha(a.bytes), sha(b.bytes));
  assert.equal(a.sha256, sha(fixture('upper')));
  // A fresh process stands for another replica.
  const moduleUrl = new URL('../src/wasm/module.js', import.meta.url).href;
  const script =
    `import { loadModule } from ${JSON.stringify(moduleUrl)};` +
    `import { readFileSync } from 'node:fs'; import { createHash } from 'node:crypto';` +
    `const m = await loadModule(readFileSync(${JSON.stringify(join(FIXTURES, 'upper.wasm'))}), { maxMemoryPages: 16 });` +
    `process.stdout.write(createHash('sha256').update(m.bytes).digest('hex'));`;
  const other = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(other, sha(a.bytes));
});

// ---- the cache -------------------------------------------------------------------------------

test('the cache: a second load is a hit and fast; options are part of the key; damage is a miss', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-wasm-cache-'));
  try {
    const opts = { maxMemoryPages: 16, cacheDir: join(dir, 'cache') };
    const first = await loadModule(fixture('upper'), opts);
    assert.ok(first.instrumentMs > 0);
    const files = readdirSync(opts.cacheDir);
    assert.equal(files.length, 1);
    assert.match(files[0]!, /\.wasm-cache$/); // no temporary file left behind

    const t0 = performance.now();
    const second = await loadModule(fixture('upper'), opts);
    const hitMs = performance.now() - t0;
    assert.equal(second.instrumentMs, 0);
    assert.ok(hitMs < 1000 && hitMs < first.instrumentMs, `a cache hit took ${hitMs} ms`);
    const { module: _m1, ...firstRest } = first;
    const { module: _m2, ...secondRest } = second;
    assert.deepEqual({ ...secondRest, instrumentMs: 1 }, { ...firstRest, instrumentMs: 1 });

    const otherLimit = await loadModule(fixture('upper'), { ...opts, maxMemoryPages: 32 });
    assert.ok(otherLimit.instrumentMs > 0);
    assert.equal(otherLimit.memory.maximumPages, 32);
    assert.equal(readdirSync(opts.cacheDir).length, 2);

    const path = join(opts.cacheDir, files[0]!);
    const damaged = readFileSync(path);
    damaged.writeUInt8(damaged.readUInt8(damaged.length - 1) ^ 0xff, damaged.length - 1);
    writeFileSync(path, damaged);
    const rebuilt = await loadModule(fixture('upper'), opts);
    assert.ok(rebuilt.instrumentMs > 0);
    assert.equal(sha(rebuilt.bytes), sha(first.bytes));
    assert.equal((await loadModule(fixture('upper'), opts)).instrumentMs, 0); // rewritten whole
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
