// Linearizability checker for key/value histories: Wing & Gong's search with Lowe's memo, laid
// out as in Porcupine, one key at a time (P-compositionality: a history is linearizable iff each
// key's sub-history is). Per key, call/return entries sit in a doubly linked list (typed arrays,
// dancing links); the search places a call that comes before the first return entry, backtracks
// on reaching a return entry, and memoizes (placed set, state) so no configuration is explored
// twice. Memo keys hash incrementally (Zobrist XOR over the placed set, a polynomial hash of the
// state that an append extends in O(|value|)); every hit is confirmed by comparing bitset words
// and the state. Info ops (outcome unknown) have no return entry: they may be placed any time
// after their call or never; success is "every ok op placed".
//
// Plain Wing & Gong blows up on failing histories with many concurrent appends and long-lived
// info ops, so the search adds prunings, each exact (it only skips configurations from which no
// linearization could follow, or keeps one of several interchangeable ones; see the comments at
// each, and the brute-force cross-check in test/linearizability.test.ts): unobservable info
// writes are dropped up front; info ops of the same effect go in call order; a config is pruned
// if a finished one had the same state minus an info op; a lookahead to the next read; and
// writes whose order no read can see are kept in call order only. Pure: no node imports.

import { pairOperations, type HistoryEvent, type Operation } from './history.js';

export interface KeyResult {
  readonly key: string;
  readonly ok: boolean;
  /** When the key is not linearizable: the ops that could not be placed next at the deepest
   *  point of the search (in call order), the linearized prefix there, and the state it left. */
  readonly unplaced?: readonly Operation[];
  readonly prefix?: readonly Operation[];
  readonly state?: string | null;
  /** Later reads that rule out some unplaced ops: placing one would leave a value the read
   *  could not return, with no set/del able to come in between. */
  readonly blockingReads?: readonly Operation[];
  /** Distinct (linearized set, state) configurations reached. */
  readonly explored: number;
  /** The search gave up after maxStatesPerKey configurations: unknown, not a failure. */
  readonly timedOut?: boolean;
}

/** ok: every key proven linearizable. failure: the first key proven not linearizable.
 *  timedOut: some key's search gave up (without a failure, the verdict is unknown). */
export interface CheckResult {
  readonly ok: boolean;
  readonly keys: readonly KeyResult[];
  readonly failure?: KeyResult;
  readonly timedOut?: boolean;
}

export interface CheckOptions {
  readonly maxStatesPerKey?: number;
}

export const DEFAULT_MAX_STATES_PER_KEY = 1_000_000;

export function checkHistory(events: readonly HistoryEvent[], opts: CheckOptions = {}): CheckResult {
  return checkOperations(pairOperations(events), opts);
}

export function checkOperations(ops: readonly Operation[], opts: CheckOptions = {}): CheckResult {
  const max = opts.maxStatesPerKey ?? DEFAULT_MAX_STATES_PER_KEY;
  const byKey = new Map<string, Operation[]>();
  for (const op of ops) {
    if (op.outcome === 'info' && op.f === 'get') continue; // its output is unknown: no constraint
    let list = byKey.get(op.key);
    if (!list) byKey.set(op.key, (list = []));
    list.push(op);
  }
  const keys = [...byKey].map(([key, list]) => checkKey(key, list, max));
  const failure = keys.find((k) => !k.ok && !k.timedOut);
  const timedOut = keys.some((k) => k.timedOut);
  return { ok: !failure && !timedOut, keys, ...(failure ? { failure } : {}), ...(timedOut ? { timedOut } : {}) };
}

// --- hashing ---------------------------------------------------------------------------------

const B = 0x01000193; // FNV prime as the polynomial base
const NULL_HASH = 0x6b43a9b5;

function strHash(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (Math.imul(h, B) + s.charCodeAt(i)) | 0;
  return h;
}

function basePow(n: number): number {
  let p = 1;
  for (let i = 0; i < n; i++) p = Math.imul(p, B);
  return p;
}

/** Deterministic 32-bit values for Zobrist hashing (mulberry32). */
function zobrist(n: number): Int32Array {
  const z = new Int32Array(n);
  let a = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    z[i] = t ^ (t >>> 14);
  }
  return z;
}

// --- per-key search --------------------------------------------------------------------------

/** Dancing links over items 0..k-1 in list order, head sentinel k; remove/restore in LIFO order. */
class Links {
  readonly next: Int32Array;
  readonly prev: Int32Array;
  constructor(readonly head: number) {
    this.next = new Int32Array(head + 1).map((_, i) => (i + 1 < head ? i + 1 : -1));
    this.prev = new Int32Array(head + 1).map((_, i) => (i === 0 ? head : i - 1));
    this.next[head] = head > 0 ? 0 : -1;
  }
  /** The first item other than x (x may be -1). */
  firstBut(x: number): number {
    const f = this.next[this.head]!;
    return f === x && f >= 0 ? this.next[f]! : f;
  }
  remove(x: number): void {
    const [n, p] = [this.next[x]!, this.prev[x]!];
    this.next[p] = n;
    if (n !== -1) this.prev[n] = p;
  }
  restore(x: number): void {
    const n = this.next[x]!;
    if (n !== -1) this.prev[n] = x;
    this.next[this.prev[x]!] = x;
  }
}

interface Seen { readonly bits: Uint32Array; readonly state: string | null; readonly run: number; done: boolean }

function checkKey(key: string, all: readonly Operation[], maxStates: number): KeyResult {
  const ops = dropUnobservable(all);
  const n = ops.length;
  // Entries in time order. With event positions on every op they order everything (ties in
  // time follow file order); otherwise by time, calls before returns at equal times (concurrent).
  const useSeq = ops.every((o) => o.callSeq !== undefined && (o.outcome === 'info' || o.retSeq !== undefined));
  const es: { op: number; ret: boolean; t: number }[] = [];
  ops.forEach((o, i) => {
    es.push({ op: i, ret: false, t: useSeq ? o.callSeq! : o.call });
    if (o.outcome === 'ok') es.push({ op: i, ret: true, t: useSeq ? o.retSeq! : o.ret });
  });
  es.sort((a, b) => a.t - b.t || Number(a.ret) - Number(b.ret));
  const m = es.length;
  const list = new Links(m);
  const H = m;
  const entOp = Int32Array.from(es, (e) => e.op);
  const isRet = Uint8Array.from(es, (e) => (e.ret ? 1 : 0));
  const callPos = new Int32Array(n);
  const retPos = new Int32Array(n).fill(-1); // -1: info, no return entry
  es.forEach((e, x) => ((e.ret ? retPos : callPos)[e.op] = x));

  // Lookahead: let g be the unplaced ok get that returns first. Between now and g, either no
  // set/del is placed, so g reads the state extended by appends, or the last one placed is an
  // unplaced set of a prefix of g's output or an unplaced del, with its call before g returns.
  // From a del (or an empty state) on, g's output must start with the value of an unplaced append.
  // An op that leaves a state fitting none of these is not tried.
  const getOp = Int32Array.from(ops.flatMap((o, i) => (o.f === 'get' && o.outcome === 'ok' ? [i] : [])).sort((a, b) => retPos[a]! - retPos[b]!));
  const delOp = Int32Array.from(ops.flatMap((o, i) => (o.f === 'del' ? [i] : [])).sort((a, b) => callPos[a]! - callPos[b]!));
  const slots = (of: Int32Array): Int32Array => {
    const s = new Int32Array(n).fill(-1);
    of.forEach((op, k) => (s[op] = k));
    return s;
  };
  const [gets, getSlot, dels, delSlot] = [new Links(getOp.length), slots(getOp), new Links(delOp.length), slots(delOp)];
  const getByCall = Int32Array.from(getOp).sort((a, b) => callPos[a]! - callPos[b]!);
  const [getsC, getCSlot] = [new Links(getByCall.length), slots(getByCall)];
  const infoOp = Int32Array.from(ops.flatMap((o, i) => (o.outcome === 'info' ? [i] : [])).sort((a, b) => callPos[a]! - callPos[b]!));
  const [infos, infoSlot] = [new Links(infoOp.length), slots(infoOp)];
  infoOp.forEach((i) => list.remove(callPos[i]!)); // the entry list holds ok ops only
  let pinned = -1; // an op g with the state known to be a prefix of g's output, or -1
  const byInput = new Map<string, number[]>(); // set/append ops by f and input
  ops.forEach((o, i) => {
    if (o.input === null) return;
    const same = byInput.get(o.f + o.input);
    if (same) same.push(i);
    else byInput.set(o.f + o.input, [i]);
  });
  const inputLengths = [...new Set(ops.map((o) => o.input?.length ?? 0))];
  const prefixers = new Map<string, number[]>();
  /** Is some op f other than `except`, unplaced, with a call before g returns, writing a prefix of g's output? */
  const pendingPrefix = (f: 'set' | 'append', g: number, except: number): boolean => {
    let ps = prefixers.get(f + g);
    if (!ps) {
      const out = ops[g]!.output ?? '';
      ps = inputLengths.flatMap((len) => byInput.get(f + out.slice(0, len)) ?? []).filter((a) => callPos[a]! < retPos[g]!);
      prefixers.set(f + g, ps);
    }
    return ps.some((a) => a !== except && !has(a));
  };

  // Twins: info ops with the same f and input are interchangeable (no return, same effect), so
  // they are placed in call order only, each after the previous one of its class: any
  // linearization can swap its twins into that order.
  const twin = new Int32Array(n).fill(-1);
  const lastOfClass = new Map<string, number>();
  for (const e of es) {
    const o = ops[e.op]!;
    if (e.ret || o.outcome !== 'info') continue;
    const cls = `${o.f}:${o.input ?? ''}`;
    twin[e.op] = lastOfClass.get(cls) ?? -1;
    lastOfClass.set(cls, e.op);
  }

  const zob = zobrist(n);
  const inHash = ops.map((o) => (o.input === null ? 0 : strHash(o.input)));
  const inPow = ops.map((o) => (o.f === 'append' && o.input !== null ? basePow(o.input.length) : 1));
  const words = new Uint32Array((n + 31) >>> 5);
  const has = (i: number): boolean => (words[i >>> 5]! & (1 << (i & 31))) !== 0;
  const flip = (i: number): void => {
    words[i >>> 5] = words[i >>> 5]! ^ (1 << (i & 31));
  };
  // The memo: configs (placed set, state, run) already reached. A config is also pruned if
  // dropping one of the last few info ops placed gives a finished (so failed) config with the
  // same state and run: every completion of the bigger one would complete that one too (info
  // ops are optional; a twin used in its place can be swapped back).
  const cache = new Map<number, Seen[]>();
  const find = (h: number, state: string | null, run: number, without: number): Seen | undefined => {
    const [wj, bj] = without < 0 ? [-1, 0] : [without >>> 5, 1 << (without & 31)];
    outer: for (const s of cache.get(h) ?? []) {
      if (s.state !== state || s.run !== run) continue;
      for (let w = 0; w < words.length; w++) if (s.bits[w] !== (w === wj ? words[w]! & ~bj : words[w])) continue outer;
      return s;
    }
    return undefined;
  };
  const remember = (h: number, state: string | null, sh: number, run: number): Seen | undefined => {
    const mix = Math.imul(sh, 0x9e3779b1) ^ Math.imul(run + 3, 0x85ebca6b);
    const key = (h ^ mix) | 0;
    if (find(key, state, run, -1)) return undefined;
    for (let k = infoStack.length - 1; k >= Math.max(0, infoStack.length - 3); k--) {
      const j = infoStack[k]!;
      if (find((h ^ zob[j]! ^ mix) | 0, state, run, j)?.done) return undefined;
    }
    const seen: Seen = { bits: words.slice(), state, run, done: false };
    const bucket = cache.get(key);
    if (bucket) bucket.push(seen);
    else cache.set(key, [seen]);
    return seen;
  };
  const infoStack: number[] = []; // info ops placed, in order

  const nInfo = ops.filter((o) => o.outcome === 'info').length;
  let okLeft = n - nInfo;
  let infoIn = 0; // info ops on the stack
  let state: string | null = null;
  let sHash = NULL_HASH;
  let bHash = 0;
  let explored = 0;
  const stack: { op: number; state: string | null; sHash: number; pinned: number; run: number; bound: number; seen: Seen }[] = [];
  // Blind writes. Call a read-free stretch of placed writes a block. Writes before the block's
  // last set/del are overwritten unseen, so their order is free and info ops among them can be
  // left out; after the block's final read, likewise for the whole block. So it is enough to try
  // blocks whose overwritten part holds ok writes sorted by call (sorting keeps real-time order).
  // `run` tracks the block: NONE (empty), the call position of its last ok write while sorted,
  // or UNSORTED once a write breaks the order or an info write is placed; an UNSORTED block takes
  // no further set/del, so it must meet a read, and an op that makes it UNSORTED is tried only if
  // some unplaced get that can come next could read the result.
  const [NONE, UNSORTED] = [-1, -2];
  let run = NONE;
  const readable = (g: number, except: number, ns: string): boolean => {
    for (let x = getsC.firstBut(-1); x >= 0 && callPos[getByCall[x]!]! < retPos[g]!; x = getsC.next[x]!) {
      const out = ops[getByCall[x]!]!.output;
      if (getByCall[x] !== except && out !== null && out.startsWith(ns)) return true;
    }
    return false;
  };

  /** Tries op i from the current config: its new state and pin, or undefined if it cannot go
   *  next; `vetoes` collects the gets whose lookahead ruled it out. */
  const step = (i: number, vetoes?: Operation[]): { ns: string | null; nh: number; pin: number; nr: number } | undefined => {
    const o = ops[i]!;
    if (o.f === 'get' && o.output !== state) return undefined;
    if (twin[i]! >= 0 && !has(twin[i]!)) return undefined;
    let [ns, nh] = [state, sHash];
    if (o.f === 'set') [ns, nh] = [o.input, o.input === null ? NULL_HASH : inHash[i]!];
    else if (o.f === 'del') [ns, nh] = [null, NULL_HASH];
    else if (o.f === 'append') {
      ns = (state ?? '') + (o.input ?? '');
      nh = (Math.imul(state === null ? 0 : sHash, inPow[i]!) + inHash[i]!) | 0;
    }
    let nr: number;
    if (o.f === 'get') nr = NONE;
    else if (o.f !== 'append' && run === UNSORTED) return undefined;
    else if (o.outcome === 'info') nr = UNSORTED;
    else nr = run === UNSORTED || (run >= 0 && callPos[i]! < run) ? UNSORTED : callPos[i]!;
    const gs = gets.firstBut(getSlot[i]!);
    if (gs < 0) return nr === UNSORTED ? undefined : { ns, nh, pin: -1, nr };
    const g = getOp[gs]!;
    if (nr === UNSORTED && ns !== null && !readable(g, i, ns)) return undefined;
    const out = ops[g]!.output;
    // (a) no set/del comes between now and g: g reads ns extended by appends
    if (ns === null ? out === null || pendingPrefix('append', g, i)
      : out !== null && (pinned !== g ? out.startsWith(ns)
        : o.f === 'append' ? out.startsWith(o.input ?? '', (state ?? '').length) : o.f === 'get' || out.startsWith(ns))) {
      return { ns, nh, pin: g, nr };
    }
    // (b) the last set/del before g is still to place
    if (out !== null && pendingPrefix('set', g, i)) return { ns, nh, pin: -1, nr };
    const d = dels.firstBut(delSlot[i]!);
    if (d >= 0 && callPos[delOp[d]!]! < retPos[g]! && (out === null || pendingPrefix('append', g, i))) return { ns, nh, pin: -1, nr };
    vetoes?.push(ops[g]!);
    return undefined;
  };

  let deepest = -Infinity;
  let report: Pick<KeyResult, 'prefix' | 'unplaced' | 'state' | 'blockingReads'> = {};

  // Candidates at a node: the calls before the first return entry (`bound`). The ok ones (in the
  // entry list) are tried first, then the info ones (own list, by call), so an optional op is
  // placed as late as it can be.
  let e = list.next[H]!; // cursor in the entry list (first pass)
  let pass2 = false;
  let inf = -1; // cursor in the info list (second pass)
  let bound = -1;
  while (okLeft > 0) {
    if (!pass2 && isRet[e]) [pass2, bound, inf] = [true, e, infos.firstBut(-1)];
    const i = !pass2 ? entOp[e]! : inf >= 0 && callPos[infoOp[inf]!]! < bound ? infoOp[inf]! : -1;
    if (i < 0) {
      // Nothing that could go next works. Note the deepest such point for the report, then
      // backtrack. Deepest = most ok ops placed, then fewest info ops (their placement is a guess).
      const depth = (n + 1) * (stack.length - infoIn) - infoIn;
      if (depth > deepest) {
        deepest = depth;
        const cands: number[] = [];
        for (let x = list.next[H]!; x !== bound; x = list.next[x]!) if (!isRet[x]) cands.push(entOp[x]!);
        for (let x = infos.firstBut(-1); x >= 0 && callPos[infoOp[x]!]! < bound; x = infos.next[x]!) cands.push(infoOp[x]!);
        cands.sort((p, q) => callPos[p]! - callPos[q]!);
        const unplaced = cands.map((c) => ops[c]!);
        const blockingReads: Operation[] = [];
        for (const c of cands) step(c, blockingReads);
        report = { prefix: stack.map((f) => ops[f.op]!), unplaced, state, blockingReads: [...new Set(blockingReads)] };
      }
      const top = stack.pop();
      if (!top) return { key, ok: false, ...report, explored };
      top.seen.done = true;
      const j = top.op;
      flip(j);
      bHash ^= zob[j]!;
      [state, sHash, pinned, run, bound] = [top.state, top.sHash, top.pinned, top.run, top.bound];
      if (delSlot[j]! >= 0) dels.restore(delSlot[j]!);
      if (getSlot[j]! >= 0) {
        gets.restore(getSlot[j]!);
        getsC.restore(getCSlot[j]!);
      }
      if (infoSlot[j]! >= 0) {
        infos.restore(infoSlot[j]!);
        infoIn--;
        infoStack.pop();
        [pass2, inf] = [true, infos.next[infoSlot[j]!]!];
      } else {
        list.restore(retPos[j]!);
        list.restore(callPos[j]!);
        okLeft++;
        [pass2, e] = [false, list.next[callPos[j]!]!];
      }
      continue;
    }
    const next = step(i);
    if (next) {
      flip(i);
      const nbh = bHash ^ zob[i]!;
      const seen = remember(nbh, next.ns, next.nh, next.nr);
      if (seen) {
        if (++explored > maxStates) return { key, ok: false, timedOut: true, explored };
        stack.push({ op: i, state, sHash, pinned, run, bound, seen });
        [state, sHash, bHash, pinned, run] = [next.ns, next.nh, nbh, next.pin, next.nr];
        if (getSlot[i]! >= 0) {
          gets.remove(getSlot[i]!);
          getsC.remove(getCSlot[i]!);
        }
        if (delSlot[i]! >= 0) dels.remove(delSlot[i]!);
        if (infoSlot[i]! >= 0) {
          infos.remove(infoSlot[i]!);
          infoIn++;
          infoStack.push(i);
        } else {
          list.remove(callPos[i]!);
          list.remove(retPos[i]!);
          okLeft--;
        }
        [pass2, e] = [false, list.next[H]!];
        continue;
      }
      flip(i);
    }
    if (pass2) inf = infos.next[inf]!;
    else e = list.next[e]!;
  }
  return { key, ok: true, explored };
}

/** Drops info writes no read can have seen, which is exact: an info append of t (or set of v)
 *  is followed, until the next set/del, by states containing t (starting with v); if no ok get
 *  returned such a value, no read falls in that stretch and leaving the op out changes nothing
 *  any read saw. This keeps the many info writes that never happened out of the search. */
function dropUnobservable(ops: readonly Operation[]): readonly Operation[] {
  const reads = ops.flatMap((o) => (o.f === 'get' && o.outcome === 'ok' && o.output !== null ? [o.output] : []));
  const joined = reads.join('\u0000');
  const seen = (o: Operation): boolean => {
    const v = o.input;
    if (o.outcome === 'ok' || o.f === 'del' || o.f === 'get' || !v) return true;
    if (o.f === 'set') return reads.some((r) => r.startsWith(v));
    return v.includes('\u0000') ? reads.some((r) => r.includes(v)) : joined.includes(v);
  };
  return ops.every(seen) ? ops : ops.filter(seen);
}
