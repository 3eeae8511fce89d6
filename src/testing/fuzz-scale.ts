// How long the fuzz tests run. `npm test` runs them briefly (scale 1); a soak sets
// LOCKSTEP_FUZZ_SCALE=N to run N times as many iterations (docs/SECURITY.md).

export function fuzzIterations(base: number): number {
  const v = process.env.LOCKSTEP_FUZZ_SCALE;
  if (v === undefined || v === '') return base;
  const scale = Number(v);
  if (!Number.isFinite(scale) || scale <= 0) throw new Error(`LOCKSTEP_FUZZ_SCALE must be a positive number, got ${JSON.stringify(v)}`);
  return Math.max(1, Math.round(base * scale));
}
