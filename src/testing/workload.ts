// A concurrent client workload against a real cluster, recorded as a history for the
// linearizability checker: several clients of the lockstep client library, each with one
// operation at a time (a Jepsen "process"), on append-only keys (for the lost/doubled write
// check) and mixed keys (get/set/append/del). Values are unique per operation.

import { performance } from 'node:perf_hooks';
import { LockstepClient } from '../client/index.js';
import { checkHistory } from '../sim/linearizability.js';
import type { HistoryEvent, OpF } from '../sim/history.js';
import { Rng } from '../sim/rng.js';

export interface WorkloadResult {
  readonly history: HistoryEvent[];
  readonly ok: number;
  readonly failed: number;
  /** Acknowledged appends, by key, in no particular order. */
  readonly ackedAppends: Map<string, string[]>;
}

export const APPEND_KEYS = ['a0', 'a1'];
export const MIXED_KEYS = ['k0', 'k1', 'k2'];

/** Run `clients` clients until `stop()` resolves; each finishes its current operation. */
export async function runWorkload(addresses: string[], clients: number, seed: number, until: Promise<void>): Promise<WorkloadResult> {
  const history: HistoryEvent[] = [];
  const ackedAppends = new Map<string, string[]>();
  let stopping = false;
  void until.then(() => {
    stopping = true;
  });
  let ok = 0;
  let failed = 0;
  const one = async (process: number): Promise<void> => {
    const rng = new Rng(seed * 100 + process);
    const client = new LockstepClient({ nodes: addresses, attemptTimeoutMs: 1000, commandTimeoutMs: 20_000 });
    let n = 0;
    try {
      while (!stopping) {
        n++;
        const appendKey = rng.chance(0.4);
        const key = appendKey ? rng.pick(APPEND_KEYS) : rng.pick(MIXED_KEYS);
        const roll = rng.float();
        const f: OpF = appendKey ? (roll < 0.4 ? 'get' : 'append') : roll < 0.4 ? 'get' : roll < 0.65 ? 'set' : roll < 0.9 ? 'append' : 'del';
        const value = f === 'set' ? `p${process}.${n}` : f === 'append' ? `p${process}.${n};` : null;
        history.push({ process, type: 'invoke', f, key, value, time: performance.now() });
        try {
          const args = f === 'get' ? ['GET', key] : f === 'del' ? ['DEL', key] : [f.toUpperCase(), key, value!];
          const reply = await client.call(...args);
          history.push({ process, type: 'ok', f, key, value: f === 'get' ? (reply as string | null) : value, time: performance.now() });
          if (f === 'append' && appendKey) ackedAppends.set(key, [...(ackedAppends.get(key) ?? []), value!]);
          ok++;
        } catch {
          // Unknown outcome (timed out): it may or may not have happened.
          history.push({ process, type: 'info', f, key, value, time: performance.now() });
          failed++;
        }
      }
    } finally {
      client.close();
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, i) => one(i)));
  return { history, ok, failed, ackedAppends };
}

/**
 * Start a workload of `clients` clients on these addresses; `finish()` stops it and gives its
 * result. With a test context `t`, it is also stopped when the test ends, whatever happened:
 * a test that fails before `finish()` must not leave writers running (its file would never end).
 */
export function startLoad(addresses: string[], clients: number, seed: number, t?: { after: (fn: () => void) => void }): () => Promise<WorkloadResult> {
  let stop!: () => void;
  const load = runWorkload(addresses, clients, seed, new Promise<void>((r) => (stop = r)));
  t?.after(() => stop());
  return () => {
    stop();
    return load;
  };
}

/** Every acknowledged append is in the final value exactly once, and nothing is there twice. */
export function appendProblems(key: string, finalValue: string | null, acked: readonly string[]): string[] {
  const tokens = (finalValue ?? '').split(';').filter((t) => t.length > 0).map((t) => `${t};`);
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const t of tokens) {
    if (seen.has(t)) problems.push(`${key}: ${t} is there twice`);
    seen.add(t);
  }
  for (const t of acked) if (!seen.has(t)) problems.push(`${key}: acknowledged append ${t} is lost`);
  return problems;
}

/**
 * What is wrong with a finished workload, as readable lines (empty: nothing): an operation
 * that did not complete, a history that is not linearizable (or could not be checked), an
 * acknowledged append lost or doubled in the final values read from the cluster.
 */
export async function workloadProblems(addresses: string[], result: WorkloadResult): Promise<string[]> {
  const problems: string[] = [];
  if (result.failed > 0) problems.push(`${result.failed} operations did not complete`);
  const lin = checkHistory(result.history);
  if (lin.failure) problems.push(`not linearizable: ${JSON.stringify(lin.failure)}`);
  if (lin.timedOut) problems.push('the linearizability search gave up');
  const reader = new LockstepClient({ nodes: addresses, commandTimeoutMs: 30_000 });
  try {
    for (const key of APPEND_KEYS) problems.push(...appendProblems(key, await reader.get(key), result.ackedAppends.get(key) ?? []));
  } finally {
    reader.close();
  }
  return problems;
}
