// The bank example service (examples/services/bank) under test: accounts opened with a known
// balance, and the transfer each worker makes at each step (a fixed pattern, so a run can be
// told again), for the tests that check each acknowledged transfer happened exactly once.

import assert from 'node:assert/strict';
import type { LockstepClient } from '../client/index.js';

export const BANK_ACCOUNTS = ['ann', 'bob', 'cat', 'dan', 'eve'];

/** Open every account with `cents`; the balances, to be kept up to date by the caller. */
export async function openAccounts(client: LockstepClient, names: readonly string[], cents: number): Promise<Map<string, number>> {
  const balances = new Map<string, number>();
  for (const n of names) {
    assert.equal(await client.call('OPEN', n, cents), 'OK');
    balances.set(n, cents);
  }
  return balances;
}

/** Worker `w`'s transfer number `i`: from, to (null when they are the same account) and how much, 1 to maxCents. */
export function transferOf(names: readonly string[], w: number, i: number, maxCents: number): { from: string; to: string; cents: number } | null {
  const from = names[(w + i) % names.length]!;
  const to = names[(w + 2 * i + 1) % names.length]!;
  return from === to ? null : { from, to, cents: 1 + ((w * 7 + i * 13) % maxCents) };
}
