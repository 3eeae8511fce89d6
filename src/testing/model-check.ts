// Linearizability of a history against any sequential model (test tool, issue 10): Wing & Gong's
// search with memoization of (linearized set, model state). The kv checker in src/sim/ is per
// key and knows kv's operations only; a service's operations (a transfer touches two accounts)
// need the whole state as one object, so this one is general and meant for small histories
// (hundreds of operations from a handful of concurrent clients).

export interface ModelOp<I, O> {
  /** When the client sent it and when the reply came (any monotonic clock). */
  readonly call: number;
  readonly ret: number;
  readonly input: I;
  readonly output: O;
}

export interface ModelResult {
  readonly ok: boolean;
  /** Configurations explored. */
  readonly explored: number;
  /** When not linearizable: the longest prefix placed, as indexes into the ops. */
  readonly longestPrefix?: readonly number[];
}

/**
 * Is there an order of `ops`, consistent with real time (an op that returned before another
 * was called comes first), in which `step` from `init` gives every op its observed output?
 * `step` returns the next state and the output; `same` compares outputs; `key` encodes a state.
 */
export function checkLinearizable<S, I, O>(
  ops: readonly ModelOp<I, O>[],
  init: S,
  step: (state: S, input: I) => { state: S; output: O },
  same: (a: O, b: O) => boolean,
  key: (state: S) => string,
): ModelResult {
  const order = ops.map((_, i) => i).sort((a, b) => ops[a]!.call - ops[b]!.call);
  const placed = new Uint8Array(ops.length);
  const seen = new Set<string>();
  const path: number[] = [];
  let best: number[] = [];
  let explored = 0;
  // Depth-first, with an explicit stack (one frame per op placed) rather than recursion: a
  // history of thousands of operations would overflow the call stack.
  interface Frame {
    readonly state: S;
    /** The next position in `order` to try from this configuration. */
    at: number;
    readonly horizon: number;
  }
  const enter = (state: S): Frame | null => {
    const memo = `${Buffer.from(placed).toString('base64')}|${key(state)}`;
    if (seen.has(memo)) return null;
    seen.add(memo);
    explored++;
    // The earliest return among ops not yet placed: only ops called before it may go next.
    let horizon = Infinity;
    for (const i of order) if (placed[i] === 0 && ops[i]!.ret < horizon) horizon = ops[i]!.ret;
    return { state, at: 0, horizon };
  };
  const search = (): boolean => {
    if (ops.length === 0) return true;
    const first = enter(init);
    const stack: Frame[] = first === null ? [] : [first];
    while (stack.length > 0) {
      const f = stack[stack.length - 1]!;
      let pushed = false;
      while (f.at < order.length) {
        const i = order[f.at++]!;
        const op = ops[i]!;
        if (op.call > f.horizon) {
          f.at = order.length;
          break;
        }
        if (placed[i] === 1) continue;
        const next = step(f.state, op.input);
        if (!same(next.output, op.output)) continue;
        placed[i] = 1;
        path.push(i);
        if (path.length > best.length) best = [...path];
        if (path.length === ops.length) return true;
        const child = enter(next.state);
        if (child !== null) {
          stack.push(child);
          pushed = true;
          break;
        }
        path.pop();
        placed[i] = 0;
      }
      if (pushed) continue;
      stack.pop();
      // Undo the op that led to this configuration.
      if (stack.length > 0) {
        const i = path.pop()!;
        placed[i] = 0;
      }
    }
    return false;
  };
  const ok = search();
  return ok ? { ok, explored } : { ok, explored, longestPrefix: best };
}
