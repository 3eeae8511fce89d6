// The guest package's public API (`lockstep/guest`): the state-machine interface, the kv
// reference machine, the replicated service with its duplicate filter, and the byte codec
// helpers that log entries and snapshots are built from.

export * from './types.js';
export * from './bytes.js';
export * from './kv.js';
export * from './replicated.js';
export * from './service.js';
export * from './machine.js';
export * from './sandbox.js';
export * from './snapshot-stream.js';
