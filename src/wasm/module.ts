// The load-time pipeline for a guest WebAssembly module: refuse what lockstep cannot run
// deterministically, then instrument the module with binaryen's asyncify so that a guest
// blocked in a host call (accept/recv/poll, or a backup waiting for the next log record) can be
// unwound off the stack and the event loop stays free (docs/WASM-BRIDGE.md says why asyncify and
// not a worker thread).
//
// The steps, in order:
//   1. parse the module's imports, memories and exports from its bytes (our own small parser,
//      so every structural refusal names the problem even where V8 or binaryen would not read it)
//      and refuse: no memory, an imported, shared, 64-bit or second memory, imports from outside
//      wasi_snapshot_preview1, an initial memory above the guest's page limit;
//   2. set the memory's maximum to min(module's maximum, maxMemoryPages), so every replica has
//      the same limit and memory.grow past it returns -1 on all of them alike;
//   3. read the module with binaryen and validate it against the feature set we allow, refusing
//      threads/atomics, relaxed SIMD and the other features named in FORBIDDEN_FEATURES;
//   4. export every mutable global (a snapshot of an unwound guest is its memory plus these);
//      drop DWARF (stale after any rewrite) but keep the name section;
//   5. run asyncify with every WASI import allowed to unwind (see OPTIMIZE_AFTER_ASYNCIFY for
//      why no full -O2 follows);
//   6. compile with V8, and cache the result by the original bytes' hash when asked.
//
// The output must be byte-identical for the same input and options on every run and every
// replica: the backup replays the primary's log against the same instrumented code. binaryen's
// passes are deterministic, and nothing here depends on time, paths or the environment.

import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type Binaryen from 'binaryen';
import { assert } from '../core/assert.js';
import { LockstepError } from '../errors.js';
import { pinWasmTier } from './engine.js';
import { pidAlive } from '../pid.js';

export interface LoadOptions {
  /** Max linear memory in 64 KiB pages for this guest: the same on every replica. */
  maxMemoryPages: number;
  /** Instrument with asyncify (default true). */
  asyncify?: boolean;
  /** Directory for the instrumented-module cache (default: none → no cache). */
  cacheDir?: string | null;
  /**
   * Told when loading will take a while: this process instruments the module (binaryen, up
   * to a minute for a large guest), or waits for another process doing it into the same cache.
   */
  onProgress?: (what: 'instrumenting' | 'waiting-for-another-process') => void;
}

export interface AsyncifyExports {
  startUnwind: string;
  stopUnwind: string;
  startRewind: string;
  stopRewind: string;
  getState: string;
}

export interface LoadedModule {
  module: WebAssembly.Module;
  /** The instrumented bytes actually compiled. */
  bytes: Uint8Array;
  /** sha256 (hex) of the ORIGINAL module bytes. */
  sha256: string;
  asyncify: boolean;
  /** Exported names the runtime needs. */
  exports: { start: string | null; memory: string; asyncify: AsyncifyExports | null };
  /** Export names of all mutable globals, by global index (lockstep_global_<index>). */
  globals: string[];
  /** Export name of the shadow-stack pointer global (lld's __stack_pointer), or null. */
  stackPointerGlobal: string | null;
  memory: { initialPages: number; maximumPages: number };
  /** Milliseconds spent in binaryen (0 on a cache hit). */
  instrumentMs: number;
}

const WASI_MODULE = 'wasi_snapshot_preview1';
const MEMORY_EXPORT = 'memory';
const START_EXPORT = '_start';
const GLOBAL_EXPORT_PREFIX = 'lockstep_global_';
/** A wasm32 memory cannot have more than 65536 pages (4 GiB). */
const MAX_WASM32_PAGES = 65536;
/**
 * binaryen's optimize and shrink levels while we run passes. asyncify reads them too: at a level
 * above 0 it cleans up the code it adds with local passes (the "+105% without -O2" in
 * docs/WASM-BRIDGE.md was mostly that cleanup switched off). Level 1 and 2 give the same bytes.
 */
const OPTIMIZE_LEVEL = 2;
const SHRINK_LEVEL = 1;
/**
 * Whether a full optimize() (-O2 -s1) follows asyncify. Measured with binaryen.js 132 on a
 * 2-vCPU machine: on a 0.87 MB SQLite build (emscripten's), asyncify took ~19.5 s and -O2
 * after it another ~19 s (-O1: ~13 s) for 0.5% less code; on bench/wasm-bridge/guest.wasm
 * 10% less code, and V8 ran the variants at the same speed (run, run_deep at depth 100,
 * wait mode). So it is off: it would double the load time of a large guest for nothing.
 */
const OPTIMIZE_AFTER_ASYNCIFY = false;
/** Bump when the pipeline's output changes for the same input, to invalidate caches. */
const PIPELINE_VERSION = 1;

const ASYNCIFY_EXPORTS: AsyncifyExports = {
  startUnwind: 'asyncify_start_unwind',
  stopUnwind: 'asyncify_stop_unwind',
  startRewind: 'asyncify_start_rewind',
  stopRewind: 'asyncify_stop_rewind',
  getState: 'asyncify_get_state',
};

/**
 * Features we accept: what clang-19 (and clang-20, which adds bulk memory and
 * nontrapping-fptoint by default) emits for wasm32-wasi, and what Node 20's V8 runs. All of it
 * is deterministic given the same inputs.
 */
const ALLOWED_FEATURES = [
  'MutableGlobals',
  'SignExt',
  'NontrappingFPToInt',
  'BulkMemory',
  'BulkMemoryOpt',
  'SIMD128',
  'Multivalue',
  'ReferenceTypes',
  'CallIndirectOverlong',
] as const;

/** Features we refuse, with the reason and what to do, by binaryen's name for them. */
const FORBIDDEN_FEATURES: Record<string, string> = {
  Atomics:
    'threads/atomics instructions: a guest runs on one thread and is replayed instruction for ' +
    'instruction, so build it single-threaded (no -pthread, no -matomics, target wasm32-wasi)',
  RelaxedSIMD:
    'relaxed-SIMD instructions: their results may differ between machines, so a backup could ' +
    'diverge from its primary; build without -mrelaxed-simd (plain -msimd128 is fine)',
  Memory64: '64-bit memory (memory64): build for wasm32, not wasm64',
  MultiMemory: 'more than one memory (multi-memory): a guest has exactly one memory',
  ExceptionHandling:
    'wasm exception handling (-fwasm-exceptions): not supported yet; build with -fno-exceptions',
  TailCall: 'tail calls (-mtail-call): not supported yet; build without -mtail-call',
  GC: 'wasm GC types: not supported; build a linear-memory (C/C++/Rust) guest',
  ExtendedConst: 'extended constant expressions (-mextended-const): Node 20 cannot run them',
  Strings: 'stringref: not supported',
  StackSwitching: 'stack switching: not supported',
  SharedEverything: 'shared-everything threads: a guest runs on one thread',
  FP16: 'half-precision SIMD (fp16): not supported',
  AcquireReleaseAtomics: 'acquire/release atomics: a guest runs on one thread',
  RelaxedAtomics: 'relaxed atomics: a guest runs on one thread',
  CustomPageSizes: 'custom page sizes: a guest uses 64 KiB pages',
  WideArithmetic: 'wide arithmetic: not supported by Node 20',
  CompactImports: 'compact imports: not supported by Node 20',
};

// ---------------------------------------------------------------------------------------------
// Refusals

function refuse(message: string): never {
  throw new LockstepError('E_WASM_MODULE', message);
}

// ---------------------------------------------------------------------------------------------
// A minimal reader for the module sections we check (imports, memories, exports). Anything it
// cannot parse is an invalid module.

interface Limits {
  initial: number;
  maximum: number | null;
  shared: boolean;
  is64: boolean;
  customPageSize: boolean;
}

interface Structure {
  imports: { module: string; name: string; kind: number; limits: Limits | null }[];
  /** Memories defined by the module (not imported). */
  memories: Limits[];
  exports: { name: string; kind: number; index: number }[];
  /** Where each section's id byte is, and where its body starts and ends. */
  sections: { id: number; header: number; start: number; end: number }[];
}

const KIND_FUNC = 0;
const KIND_TABLE = 1;
const KIND_MEMORY = 2;
const KIND_GLOBAL = 3;
const KIND_TAG = 4;
const KIND_NAMES = ['function', 'table', 'memory', 'global', 'tag'];
const SECTION_IMPORT = 2;
const SECTION_MEMORY = 5;
const SECTION_EXPORT = 7;

class Reader {
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    start = 0,
    readonly end = bytes.length,
  ) {
    this.pos = start;
  }
  u8(): number {
    if (this.pos >= this.end) throw new Error('unexpected end of section');
    return this.bytes[this.pos++]!;
  }
  /** An unsigned LEB128 of up to 64 bits, as a Number (exact up to 2^53, enough for limits). */
  leb(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = this.u8();
      result += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) return result;
      scale *= 128;
    }
    throw new Error('LEB128 number too long');
  }
  /** Skip a signed LEB128 (a heap type index). */
  skipLeb(): void {
    for (let i = 0; i < 10; i++) if ((this.u8() & 0x80) === 0) return;
    throw new Error('LEB128 number too long');
  }
  name(): string {
    const len = this.leb();
    if (this.pos + len > this.end) throw new Error('name runs past its section');
    const s = new TextDecoder('utf-8', { fatal: true }).decode(this.bytes.subarray(this.pos, this.pos + len));
    this.pos += len;
    return s;
  }
}

function readLimits(r: Reader): Limits {
  const flags = r.u8();
  if (flags & ~0x0f) throw new Error(`unknown limits flags 0x${flags.toString(16)}`);
  const initial = r.leb();
  const maximum = flags & 1 ? r.leb() : null;
  if (flags & 8) r.leb(); // the log2 of a custom page size
  return { initial, maximum, shared: (flags & 2) !== 0, is64: (flags & 4) !== 0, customPageSize: (flags & 8) !== 0 };
}

/** A value type: one byte, except the typed references (ref null? ht) of the GC proposals. */
function skipValType(r: Reader): void {
  const t = r.u8();
  if (t === 0x63 || t === 0x64) r.skipLeb();
}

function readImports(r: Reader, out: Structure['imports']): void {
  for (let n = r.leb(); n > 0; n--) {
    const module = r.name();
    const name = r.name();
    const kind = r.u8();
    let limits: Limits | null = null;
    switch (kind) {
      case KIND_FUNC:
        r.leb(); // type index
        break;
      case KIND_TABLE:
        skipValType(r);
        readLimits(r);
        break;
      case KIND_MEMORY:
        limits = readLimits(r);
        break;
      case KIND_GLOBAL:
        skipValType(r);
        r.u8(); // mutability
        break;
      case KIND_TAG:
        r.u8(); // attribute
        r.leb(); // type index
        break;
      default:
        throw new Error(`unknown import kind ${kind}`);
    }
    out.push({ module, name, kind, limits });
  }
}

function readExports(r: Reader, out: Structure['exports']): void {
  for (let n = r.leb(); n > 0; n--) {
    const name = r.name();
    const kind = r.u8();
    out.push({ name, kind, index: r.leb() });
  }
}

const WASM_HEADER = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

function parseStructure(bytes: Uint8Array): Structure {
  if (bytes.length < 8 || WASM_HEADER.some((b, i) => bytes[i] !== b)) {
    throw new Error('no WebAssembly header (\\0asm, version 1)');
  }
  const s: Structure = { imports: [], memories: [], exports: [], sections: [] };
  const r = new Reader(bytes, 8);
  while (r.pos < bytes.length) {
    const header = r.pos;
    const id = r.u8();
    const size = r.leb();
    const start = r.pos;
    const end = start + size;
    if (end > bytes.length) throw new Error(`section ${id} runs past the end of the module`);
    s.sections.push({ id, header, start, end });
    const body = new Reader(bytes, start, end);
    if (id === SECTION_IMPORT) readImports(body, s.imports);
    else if (id === SECTION_MEMORY) for (let n = body.leb(); n > 0; n--) s.memories.push(readLimits(body));
    else if (id === SECTION_EXPORT) readExports(body, s.exports);
    r.pos = end;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Structural checks (step 1)

function checkOptions(opts: LoadOptions): void {
  const p = opts.maxMemoryPages;
  if (!Number.isInteger(p) || p < 1 || p > MAX_WASM32_PAGES) {
    refuse(`maxMemoryPages must be an integer from 1 to ${MAX_WASM32_PAGES}, got ${String(p)}`);
  }
}

function checkMemory(s: Structure, maxMemoryPages: number): Limits {
  const imported = s.imports.filter((i) => i.kind === KIND_MEMORY);
  if (imported.length > 0) {
    const i = imported[0]!;
    refuse(
      `the module imports its memory (${i.module}.${i.name}); lockstep does not support imported ` +
        'memory yet: a guest must define and export its own memory (link without --import-memory)',
    );
  }
  if (s.memories.length === 0) {
    refuse(`the module has no memory; a WASI guest must define one and export it as "${MEMORY_EXPORT}"`);
  }
  if (s.memories.length > 1) refuse(`the module defines ${s.memories.length} memories; ${FORBIDDEN_FEATURES.MultiMemory}`);
  const mem = s.memories[0]!;
  if (mem.shared) {
    refuse(
      'the module has a shared memory (a threaded build); a guest runs on one thread and its ' +
        'memory must not be shared: build without -pthread / --shared-memory',
    );
  }
  if (mem.is64) refuse(`the module has a ${FORBIDDEN_FEATURES.Memory64}`);
  if (mem.customPageSize) refuse(`the module's memory has ${FORBIDDEN_FEATURES.CustomPageSizes}`);
  if (!s.exports.some((e) => e.kind === KIND_MEMORY && e.name === MEMORY_EXPORT)) {
    refuse(`the module does not export its memory as "${MEMORY_EXPORT}", as WASI requires`);
  }
  if (mem.initial > maxMemoryPages) {
    refuse(
      `the module's initial memory is ${mem.initial} pages (${mem.initial * 64} KiB), more than ` +
        `this guest's limit of ${maxMemoryPages} pages; raise the limit or link with a smaller ` +
        'initial memory (--initial-memory)',
    );
  }
  return mem;
}

/** Only wasi_snapshot_preview1 functions: the host implements nothing else, and records all of it. */
function checkImports(s: Structure): string[] {
  const foreign = s.imports.filter((i) => i.module !== WASI_MODULE);
  if (foreign.length > 0) {
    const names = foreign.map((i) => `${i.module}.${i.name}`).join(', ');
    refuse(
      `the module imports from outside ${WASI_MODULE}: ${names}; lockstep provides only WASI ` +
        'preview1 functions (build for wasm32-wasi without other host imports)',
    );
  }
  const nonFunctions = s.imports.filter((i) => i.kind !== KIND_FUNC);
  if (nonFunctions.length > 0) {
    const names = nonFunctions.map((i) => `${i.module}.${i.name} (${KIND_NAMES[i.kind]})`).join(', ');
    refuse(`the module imports non-function items from ${WASI_MODULE}: ${names}; WASI has only functions`);
  }
  return s.imports.map((i) => `${i.module}.${i.name}`);
}

// ---------------------------------------------------------------------------------------------
// The memory limit (step 2)

function encodeLeb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

/**
 * Rewrite the (single, 32-bit, unshared) memory's limits to initial..maximum. The memory
 * section is re-encoded whole, so its size prefix may change length.
 */
function setMemoryMaximum(bytes: Uint8Array, s: Structure, initial: number, maximum: number): Uint8Array {
  const sec = s.sections.find((x) => x.id === SECTION_MEMORY)!;
  const body = [0x01, 0x01, ...encodeLeb(initial), ...encodeLeb(maximum)];
  const header = [SECTION_MEMORY, ...encodeLeb(body.length)];
  const headerStart = sec.header; // not derived from the size: its LEB128 may be padded
  const out = new Uint8Array(headerStart + header.length + body.length + (bytes.length - sec.end));
  out.set(bytes.subarray(0, headerStart), 0);
  out.set(header, headerStart);
  out.set(body, headerStart + header.length);
  out.set(bytes.subarray(sec.end), headerStart + header.length + body.length);
  return out;
}

// ---------------------------------------------------------------------------------------------
// binaryen (steps 3–5)

type BinaryenApi = typeof Binaryen;
type BinaryenModule = Binaryen.Module;

let binaryenPromise: Promise<BinaryenApi> | null = null;

/** binaryen.js is a ~15 MB wasm build: load it on first use, so nodes without guests never do. */
/**
 * binaryen (about 100 MB) is an optional peer dependency: only the WebAssembly host needs it,
 * so installing lockstep for the kv service or the client alone does not pull it in.
 */
function binaryenMissing(e: unknown): never {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'MODULE_NOT_FOUND' || code === 'ERR_MODULE_NOT_FOUND') {
    throw new LockstepError('E_WASM_MODULE', 'running a WebAssembly guest needs the npm package binaryen (an optional dependency of lockstep): npm install binaryen@132.0.0');
  }
  throw e;
}

function loadBinaryen(): Promise<BinaryenApi> {
  binaryenPromise ??= import('binaryen').then((m) => m.default, binaryenMissing);
  return binaryenPromise;
}

/** The binaryen package version, part of the cache key (read without loading binaryen). */
let binaryenVersion: string | null = null;
async function getBinaryenVersion(): Promise<string> {
  if (binaryenVersion === null) {
    let path: string;
    try {
      path = createRequire(import.meta.url).resolve('binaryen/package.json');
    } catch (e) {
      binaryenMissing(e);
    }
    binaryenVersion = String((JSON.parse(await readFile(path, 'utf8')) as { version: unknown }).version);
  }
  return binaryenVersion;
}

function featureMask(b: BinaryenApi, names: readonly string[]): number {
  const table = b.Features as unknown as Record<string, number | undefined>;
  return names.reduce((mask, n) => mask | (table[n] ?? 0), 0);
}

/**
 * binaryen's validator prints its findings to stderr (through console.error, bound when
 * binaryen.js loaded). Capture them instead, for the refusal message: validate() is
 * synchronous, so nothing else can write while the streams are swapped.
 */
function validateQuietly(mod: BinaryenModule, features: number): { ok: boolean; text: string } {
  mod.setFeatures(features);
  let text = '';
  const capture = (chunk: unknown): boolean => ((text += String(chunk)), true);
  const { stdout, stderr } = process;
  const [outWrite, errWrite] = [stdout.write, stderr.write];
  stdout.write = capture as typeof stdout.write;
  stderr.write = capture as typeof stderr.write;
  try {
    return { ok: mod.validate() !== 0, text };
  } finally {
    stdout.write = outWrite;
    stderr.write = errWrite;
  }
}

function excerpt(text: string, max = 1500): string {
  const t = text.trim();
  return t.length > max ? `${t.slice(0, max)} …` : t;
}

/**
 * Validate against the allowed features. On failure, name the forbidden features the module
 * needs: a feature F is needed when the module does not validate with every feature but F.
 */
function checkFeatures(b: BinaryenApi, mod: BinaryenModule): void {
  const allowed = featureMask(b, ALLOWED_FEATURES);
  if (validateQuietly(mod, allowed).ok) return;
  const all = validateQuietly(mod, b.Features.All);
  if (!all.ok) refuse(`the module is not valid WebAssembly: ${excerpt(all.text)}`);
  const present = Object.keys(FORBIDDEN_FEATURES).filter((f) => featureMask(b, [f]) !== 0);
  const used = present.filter((f) => !validateQuietly(mod, b.Features.All & ~featureMask(b, [f])).ok);
  const reasons = used.length > 0 ? used.map((f) => FORBIDDEN_FEATURES[f]) : ['a WebAssembly feature lockstep does not allow'];
  refuse(`the module uses ${reasons.join('; and ')}`);
}

/** Read with binaryen; its parse errors are opaque objects, so say what V8 says instead. */
function readWithBinaryen(b: BinaryenApi, bytes: Uint8Array): BinaryenModule {
  try {
    return b.readBinary(bytes);
  } catch {
    refuse(`the module is not valid WebAssembly: ${v8Complaint(bytes) ?? 'binaryen cannot read it'}`);
  }
}

/** V8's WebAssembly functions take views of plain ArrayBuffers only, not SharedArrayBuffers. */
function plain(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes.buffer instanceof ArrayBuffer ? (bytes as Uint8Array<ArrayBuffer>) : new Uint8Array(bytes);
}

function v8Complaint(bytes: Uint8Array): string | null {
  try {
    new WebAssembly.Module(plain(bytes));
    return null;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

interface GlobalExports {
  /** Export names, in global index order. */
  names: string[];
  stackPointer: string | null;
}

/**
 * Export every mutable global not yet exported by us, as lockstep_global_<index>. A guest
 * unwound by asyncify has no live wasm frame, so its whole state is its memory plus these.
 * The stack pointer is lld's __stack_pointer: by name when the module kept its names, else
 * global 0 when it is a mutable i32 (lld always puts it first).
 */
function exportMutableGlobals(b: BinaryenApi, mod: BinaryenModule, from: number, acc: GlobalExports): void {
  for (let i = from; i < mod.getNumGlobals(); i++) {
    const g = b.getGlobalInfo(mod.getGlobalByIndex(i));
    if (!g.mutable || g.module) continue;
    const name = `${GLOBAL_EXPORT_PREFIX}${i}`;
    mod.addGlobalExport(g.name, name);
    acc.names.push(name);
    const lldFirst = i === 0 && g.type === b.i32;
    if (g.name === '__stack_pointer' || (lldFirst && acc.stackPointer === null)) acc.stackPointer = name;
  }
}

function checkExportNamesFree(s: Structure): void {
  const clash = s.exports.find((e) => e.name.startsWith(GLOBAL_EXPORT_PREFIX) || e.name.startsWith('asyncify_'));
  if (clash) refuse(`the module already exports "${clash.name}", a name lockstep reserves for its instrumentation`);
}

/**
 * Run fn with binaryen's process-global settings (pass arguments, optimize and shrink levels)
 * set as given, and restore them after. Everything in binaryen.js is synchronous, so no other
 * load can interleave and see them.
 */
function withSettings(b: BinaryenApi, passArgs: Record<string, string>, fn: () => void): void {
  const [level, shrink] = [b.getOptimizeLevel(), b.getShrinkLevel()];
  try {
    for (const [key, value] of Object.entries(passArgs)) b.setPassArgument(key, value);
    b.setOptimizeLevel(OPTIMIZE_LEVEL);
    b.setShrinkLevel(SHRINK_LEVEL);
    fn();
  } finally {
    b.clearPassArguments();
    b.setOptimizeLevel(level);
    b.setShrinkLevel(shrink);
  }
}

/**
 * Every WASI call may block (fd_read on a socket, poll_oneoff, sock_accept, …) or, on a
 * backup, wait for the next log record: all of them may unwind. Indirect calls are assumed to
 * reach them too (no asyncify-ignore-indirect): a C guest reads through function pointers
 * (stdio, SQLite's VFS), so ignoring them would be unsafe.
 */
function runAsyncify(b: BinaryenApi, mod: BinaryenModule, wasiImports: string[]): void {
  withSettings(b, { 'asyncify-imports': wasiImports.join(',') }, () => mod.runPasses(['asyncify']));
}

function runOptimizer(b: BinaryenApi, mod: BinaryenModule): void {
  withSettings(b, {}, () => mod.optimize());
}

interface Instrumented {
  bytes: Uint8Array;
  globals: GlobalExports;
}

/** Steps 3–5 on bytes that passed the structural checks. */
function instrument(b: BinaryenApi, bytes: Uint8Array, wasiImports: string[], asyncify: boolean): Instrumented {
  const mod = readWithBinaryen(b, bytes);
  try {
    checkFeatures(b, mod);
    // Validation left the allowed features set: the optimizer may then use them, nothing else.
    if (!WebAssembly.validate(plain(bytes))) refuse(`the module is not valid WebAssembly: ${v8Complaint(bytes)}`);
    // DWARF would be stale after any rewrite (binaryen updates it only when asked to).
    mod.runPasses(['strip-dwarf']);
    const globals: GlobalExports = { names: [], stackPointer: null };
    exportMutableGlobals(b, mod, 0, globals);
    if (asyncify) {
      const before = mod.getNumGlobals();
      runAsyncify(b, mod, wasiImports);
      // asyncify's own state and data pointer, appended by the pass: name them by index now,
      // before the optimizer reorders the globals.
      exportMutableGlobals(b, mod, before, globals);
      if (OPTIMIZE_AFTER_ASYNCIFY) runOptimizer(b, mod);
    }
    return { bytes: emitWithNames(b, mod), globals };
  } finally {
    mod.dispose();
  }
}

/** Keep the function names (the "name" section) if the guest had them: traps then name frames. */
function emitWithNames(b: BinaryenApi, mod: BinaryenModule): Uint8Array {
  const debugInfo = b.getDebugInfo();
  try {
    b.setDebugInfo(true);
    return mod.emitBinary();
  } finally {
    b.setDebugInfo(debugInfo);
  }
}

// ---------------------------------------------------------------------------------------------
// Describing the result

type Meta = Omit<LoadedModule, 'module' | 'bytes' | 'sha256' | 'instrumentMs'>;

/** Check that the compiled module exports what the runtime will call, and describe it. */
function describe(module: WebAssembly.Module, out: Uint8Array, asyncify: boolean, globals: GlobalExports): Meta {
  const exported = new Map(WebAssembly.Module.exports(module).map((e) => [e.name, e.kind]));
  const missing = (name: string, kind: string): boolean => exported.get(name) !== kind;
  assert(!missing(MEMORY_EXPORT, 'memory'), 'the instrumented module lost its memory export');
  const lost = [
    ...(asyncify ? Object.values(ASYNCIFY_EXPORTS).filter((n) => missing(n, 'function')) : []),
    ...globals.names.filter((n) => missing(n, 'global')),
  ];
  assert(lost.length === 0, `the instrumented module lacks the exports ${lost.join(', ')}`);
  const mem = parseStructure(out).memories[0];
  assert(mem?.maximum != null, 'the instrumented module has no memory maximum');
  return {
    asyncify,
    exports: {
      start: missing(START_EXPORT, 'function') ? null : START_EXPORT,
      memory: MEMORY_EXPORT,
      asyncify: asyncify ? { ...ASYNCIFY_EXPORTS } : null,
    },
    globals: globals.names,
    stackPointerGlobal: globals.stackPointer,
    memory: { initialPages: mem.initial, maximumPages: mem.maximum },
  };
}

// ---------------------------------------------------------------------------------------------
// The cache: one file per (original bytes, options, binaryen, pipeline) holding a JSON header
// line and the instrumented bytes, written to a temporary name and renamed into place, so a
// reader sees either nothing or a whole file.

const CACHE_MAGIC = 'lockstep-wasm-cache 1\n';

interface CacheHeader {
  meta: Meta;
  byteLength: number;
  sha256: string;
}

function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A lock older than this is taken over even if its pid lives (pids are reused). */
const INSTRUMENT_LOCK_STALE_MS = 10 * 60_000;

/**
 * Take `<entry>.lock` (exclusive create, holding our pid), waiting while another live process
 * holds it. Returns its release. A lock whose process is gone, or that is very old, is stale.
 */
async function instrumentLock(entry: string, onWait: () => void): Promise<() => Promise<void>> {
  const lock = `${entry}.lock`;
  let told = false;
  for (;;) {
    try {
      await mkdir(dirname(lock), { recursive: true });
      await writeFile(lock, `${process.pid}\n`, { flag: 'wx' });
      return () => unlink(lock).catch(() => {});
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return async () => {}; // cannot lock: instrument anyway
    }
    const holder = Number.parseInt(await readFile(lock, 'utf8').catch(() => ''), 10);
    const age = Date.now() - ((await stat(lock).catch(() => null))?.mtimeMs ?? 0);
    if (!Number.isSafeInteger(holder) || !pidAlive(holder) || age > INSTRUMENT_LOCK_STALE_MS) {
      await unlink(lock).catch(() => {});
      continue;
    }
    if (!told) onWait();
    told = true;
    await new Promise((r) => setTimeout(r, 200));
    if ((await stat(entry).catch(() => null)) !== null) return async () => {}; // made: read it
  }
}

async function cachePath(dir: string, originalSha: string, opts: Required<Omit<LoadOptions, 'onProgress'>>): Promise<string> {
  const key = {
    pipeline: PIPELINE_VERSION,
    binaryen: await getBinaryenVersion(),
    original: originalSha,
    maxMemoryPages: opts.maxMemoryPages,
    asyncify: opts.asyncify,
    optimize: [OPTIMIZE_LEVEL, SHRINK_LEVEL, OPTIMIZE_AFTER_ASYNCIFY],
  };
  return join(dir, `${sha256Hex(JSON.stringify(key))}.wasm-cache`);
}

/** A missing, truncated or otherwise damaged entry is a miss: it is rebuilt and overwritten. */
async function readCache(path: string): Promise<{ meta: Meta; bytes: Uint8Array } | null> {
  let file: Buffer;
  try {
    file = await readFile(path);
  } catch {
    return null;
  }
  const magic = Buffer.from(CACHE_MAGIC);
  if (!file.subarray(0, magic.length).equals(magic)) return null;
  const nl = file.indexOf(0x0a, magic.length);
  if (nl < 0) return null;
  try {
    const header = JSON.parse(file.subarray(magic.length, nl).toString('utf8')) as CacheHeader;
    const bytes = new Uint8Array(file.subarray(nl + 1));
    if (bytes.length !== header.byteLength || sha256Hex(bytes) !== header.sha256) return null;
    return { meta: header.meta, bytes };
  } catch {
    return null;
  }
}

async function writeCache(dir: string, path: string, meta: Meta, bytes: Uint8Array): Promise<void> {
  const header: CacheHeader = { meta, byteLength: bytes.length, sha256: sha256Hex(bytes) };
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(tmp, Buffer.concat([Buffer.from(CACHE_MAGIC + JSON.stringify(header) + '\n'), bytes]));
    await rename(tmp, path);
  } catch {
    // A cache that cannot be written only costs time on the next load.
    await unlink(tmp).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// The entry point

/**
 * Check, limit, instrument and compile a guest module. Refusals are LockstepError
 * E_WASM_MODULE with a message naming the problem and what to do.
 */
export async function loadModule(bytes: Uint8Array, options: LoadOptions): Promise<LoadedModule> {
  // Before this process compiles any guest: one compiler tier, so replicas agree on NaN bits.
  pinWasmTier();
  checkOptions(options);
  const opts: Required<Omit<LoadOptions, 'onProgress'>> = {
    maxMemoryPages: options.maxMemoryPages,
    asyncify: options.asyncify ?? true,
    cacheDir: options.cacheDir ?? null,
  };
  const sha256 = sha256Hex(bytes);
  const path = opts.cacheDir === null ? null : await cachePath(opts.cacheDir, sha256, opts);
  const fromCache = async (): Promise<LoadedModule | null> => {
    const hit = path === null ? null : await readCache(path);
    if (hit === null) return null;
    // The entry was written only after every check passed on these very bytes and options.
    const module = await WebAssembly.compile(plain(hit.bytes));
    return { module, bytes: hit.bytes, sha256, instrumentMs: 0, ...hit.meta };
  };
  const cached = await fromCache();
  if (cached) return cached;
  // One process per cache instruments a module; the others (the replicas of one machine,
  // started together) wait for its entry instead of each spending the same minute.
  const release = path === null ? null : await instrumentLock(path, () => options.onProgress?.('waiting-for-another-process'));
  try {
    const now = await fromCache(); // made while we waited
    if (now) return now;
    options.onProgress?.('instrumenting');
    return await instrumentAndCache(bytes, sha256, opts, path);
  } finally {
    await release?.();
  }
}

async function instrumentAndCache(bytes: Uint8Array, sha256: string, opts: Required<Omit<LoadOptions, 'onProgress'>>, path: string | null): Promise<LoadedModule> {
  const limited = checkAndLimit(bytes, opts.maxMemoryPages);
  const b = await loadBinaryen();
  const t0 = performance.now();
  const out = instrument(b, limited.bytes, limited.wasiImports, opts.asyncify);
  const instrumentMs = performance.now() - t0;
  const module = await WebAssembly.compile(plain(out.bytes));
  const meta = describe(module, out.bytes, opts.asyncify, out.globals);
  if (path !== null && opts.cacheDir !== null) await writeCache(opts.cacheDir, path, meta, out.bytes);
  return { module, bytes: out.bytes, sha256, instrumentMs, ...meta };
}

/** Steps 1–2: structural refusals, then the memory maximum rewritten to the guest's limit. */
function checkAndLimit(bytes: Uint8Array, maxMemoryPages: number): { bytes: Uint8Array; wasiImports: string[] } {
  let s: Structure;
  try {
    s = parseStructure(bytes);
  } catch (e) {
    const why = v8Complaint(bytes) ?? (e instanceof Error ? e.message : String(e));
    refuse(`the module is not valid WebAssembly: ${why}`);
  }
  const mem = checkMemory(s, maxMemoryPages);
  const wasiImports = checkImports(s);
  checkExportNamesFree(s);
  const maximum = Math.min(mem.maximum ?? MAX_WASM32_PAGES, maxMemoryPages);
  return { bytes: setMemoryMaximum(bytes, s, mem.initial, maximum), wasiImports };
}
