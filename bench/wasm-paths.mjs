// The cost of the WASI host's path resolution alone (src/wasm/beneath.ts), without a guest:
// WasiHost.call on a bare memory, path_filestat_get and path_open + fd_close of a path 1 and 3
// components deep, in blocks that alternate between this build and --baseline's (another
// checkout's dist/), so both see the same load. Median µs per call over the blocks.
//
//   npx tsc -p . && node bench/wasm-paths.mjs [--baseline /other/checkout/dist] [--blocks 30] [--per 2000]
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const argText = (name) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const BLOCKS = Number(argText('--blocks') ?? 30);
const PER = Number(argText('--per') ?? 2000);
const here = new URL('../dist/', import.meta.url).pathname;
const builds = [['new', here]];
if (argText('--baseline')) builds.unshift(['baseline', argText('--baseline')]);

const FOLLOW = 1;
const RIGHTS_READ = 2n;
const enc = new TextEncoder();
const dir = mkdtempSync(join(tmpdir(), 'lockstep-paths-'));
const subjects = [];
for (const [name, dist] of builds) {
  const { WasiHost } = await import(join(dist, 'src/wasm/wasi.js'));
  const { GuestMemory } = await import(join(dist, 'src/wasm/memory.js'));
  const root = join(dir, name);
  mkdirSync(join(root, 'd/e'), { recursive: true });
  writeFileSync(join(root, 'f.dat'), 'x');
  writeFileSync(join(root, 'd/e/f.dat'), 'x');
  const host = new WasiHost({ args: ['x'], env: [], root, listen: [], output: () => {}, mode: 'live' });
  const mem = new GuestMemory(new WebAssembly.Memory({ initial: 1 }));
  const ctx = { startedAtNs: 0n };
  const put = (at, s) => (mem.write(at, enc.encode(s)), [at, enc.encode(s).byteLength]);
  const paths = { 1: put(1024, 'f.dat'), 3: put(1100, 'd/e/f.dat') };
  const call = (fn, ...args) => {
    const r = host.call(fn, mem, args, ctx);
    if (r !== 0) throw new Error(`${name}: ${fn} gave errno ${r}`);
  };
  subjects.push({
    name,
    host,
    ops: {
      'stat 1': () => call('path_filestat_get', 3, FOLLOW, ...paths[1], 2048),
      'stat 3': () => call('path_filestat_get', 3, FOLLOW, ...paths[3], 2048),
      'open+close 1': () => (call('path_open', 3, FOLLOW, ...paths[1], 0, RIGHTS_READ, 0n, 0, 2048), call('fd_close', mem.u32(2048))),
      'open+close 3': () => (call('path_open', 3, FOLLOW, ...paths[3], 0, RIGHTS_READ, 0n, 0, 2048), call('fd_close', mem.u32(2048))),
    },
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const times = new Map();
try {
  for (const op of Object.keys(subjects[0].ops)) {
    for (let b = 0; b < BLOCKS; b++) {
      for (const s of subjects) {
        const f = s.ops[op];
        const t0 = performance.now();
        for (let i = 0; i < PER; i++) f();
        const key = `${op}/${s.name}`;
        times.set(key, [...(times.get(key) ?? []), ((performance.now() - t0) * 1000) / PER]);
      }
    }
  }
} finally {
  for (const s of subjects) s.host.close();
  rmSync(dir, { recursive: true, force: true });
}
console.log(`µs per operation, median of ${BLOCKS} blocks of ${PER}, builds alternating`);
console.log(`| operation | ${subjects.map((s) => s.name).join(' | ')} |${subjects.length > 1 ? ' new/baseline |' : ''}`);
console.log(`|---|${subjects.map(() => '---|').join('')}${subjects.length > 1 ? '---|' : ''}`);
for (const op of Object.keys(subjects[0].ops)) {
  const m = subjects.map((s) => median(times.get(`${op}/${s.name}`)));
  console.log(`| ${op} | ${m.map((x) => x.toFixed(2)).join(' | ')} |${m.length > 1 ? ` ${(m[1] / m[0]).toFixed(2)}x |` : ''}`);
}
