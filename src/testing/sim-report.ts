// What a failing simulator seed says in a test's assertion message: the seed and how it ran,
// each failed check, and the end of its trace.

import type { SimResult } from '../sim/index.js';

export function describeFailure(r: SimResult): string {
  return [
    `seed ${r.seed} (${r.mode}, backups ${r.backups}, faults ${r.faults.join(',')}):`,
    ...r.failures.map((f) => `  ${f.check}: ${f.message}`),
    ...r.traceTail.slice(-30).map((l) => `    ${l}`),
  ].join('\n');
}
