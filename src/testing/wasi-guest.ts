// Guest memory for driving the WASI host call by call from a test, without a wasm module: a
// bare WebAssembly.Memory with a bump allocator, to lay out strings, iovecs and out-parameters
// the way wasi-libc would, and read the results back.

import { GuestMemory } from '../wasm/memory.js';

const enc = new TextEncoder();

export class Guest {
  readonly mem = new GuestMemory(new WebAssembly.Memory({ initial: 2 }));
  private next = 1024;

  alloc(n: number): number {
    const p = this.next;
    this.next += (n + 7) & ~7;
    return p;
  }

  str(s: string): [number, number] {
    const b = enc.encode(s);
    const p = this.alloc(b.byteLength);
    this.mem.write(p, b);
    return [p, b.byteLength];
  }

  /** An iovec array over fresh buffers of the given sizes (or contents). */
  iovs(...parts: (number | string)[]): { ptr: number; n: number; bufs: number[] } {
    const ptr = this.alloc(parts.length * 8);
    const bufs = parts.map((part, i) => {
      const data = typeof part === 'string' ? enc.encode(part) : new Uint8Array(part);
      const b = this.alloc(data.byteLength);
      this.mem.write(b, data);
      this.mem.setU32(ptr + i * 8, b);
      this.mem.setU32(ptr + i * 8 + 4, data.byteLength);
      return b;
    });
    return { ptr, n: parts.length, bufs };
  }
}
