// Shared helpers for the wasm-bridge benchmark (input source, heartbeat, args).
import { readFileSync } from 'node:fs';

export const REQ = 64;

export function parseArgs(argv) {
  const o = { n: 200000, work: 1, depth: 0, mode: 'ready', module: 'guest.wasm', notify: 'post', warm: 20000 };
  for (const a of argv) {
    const m = /^--([^=]+)=(.*)$/.exec(a);
    if (m) o[m[1]] = /^\d+$/.test(m[2]) ? Number(m[2]) : m[2];
  }
  return o;
}

export function loadModule(file) {
  const bytes = readFileSync(new URL(file, import.meta.url));
  return { bytes, module: new WebAssembly.Module(bytes) };
}

// The k-th request: deterministic 64 bytes, so every host computes the same checksum.
export function fillRequest(dst, k) {
  for (let i = 0; i < REQ; i++) dst[i] = (k + i * 7) & 0xff;
  return REQ;
}

// 10 ms heartbeat on the main thread; reports the worst lateness of a tick.
export function startHeartbeat(periodMs = 10) {
  let last = performance.now(), maxLate = 0, ticks = 0;
  const t = setInterval(() => {
    const now = performance.now();
    maxLate = Math.max(maxLate, now - last - periodMs);
    last = now; ticks++;
  }, periodMs);
  return {
    async stop() {
      // let one more tick happen so a fully blocked run is counted as late
      await new Promise((r) => setTimeout(r, periodMs * 2 + 2));
      clearInterval(t);
      return { maxLateMs: Math.max(0, maxLate), ticks };
    },
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const immediate = () => new Promise((r) => setImmediate(r));

export function report(o) { console.log(JSON.stringify(o)); }
