// The replication core's public surface: pure, sans-IO, shared by every guest and driver.
export * from './types.js';
export { assert, assertNever, AssertionError } from './assert.js';
export { validateMessage, isView } from './validate.js';
export { ChunkAssembler } from './chunks.js';
export { createReplica, step, canAppend, snapshotChunksWanted, status, SWITCHOVER_DRAIN_TIMEOUTS, type Replica, type ReplicaStatus } from './replica.js';
