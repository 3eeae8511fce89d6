// The simulator's public surface: run seeds, check histories.
export { simulate, type SimOptions, type SimResult, type SimFailure, type SimCheck, type SimStats } from './cluster.js';
export { Rng, TraceHash } from './rng.js';
export * from './history.js';
export * from './linearizability.js';
