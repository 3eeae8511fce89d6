// The guest interface for application-level state machines (DESIGN.md §1).
//
// A guest is what lockstep replicates. The replication core never looks inside an entry:
// it carries opaque bytes. This file fixes what an application-level guest must provide so
// that `ReplicatedService` (replicated.ts) can run it in either mode of the seed material:
//
//   rsm             the log entry is the client command; the backup re-executes it.
//   state-transfer  the log entry is the change the primary's execution produced; the backup
//                   installs it with `applyChange` and never executes a command.
//
// Everything here must be deterministic: same state + same command = same reply, same change,
// same digest, on every replica and in every mode.

import type { ByteWriter } from './bytes.js';
import type { RestoreStream, SnapshotStream } from './snapshot-stream.js';

/** How entries are produced and consumed (the two approaches of the seed material). */
export type ReplicationMode = 'rsm' | 'state-transfer';

export const REPLICATION_MODES: readonly ReplicationMode[] = ['rsm', 'state-transfer'];

/** What `execute` returns: the reply for the client and the change it made (null: nothing). */
export interface Execution<Reply, Change> {
  readonly reply: Reply;
  readonly change: Change | null;
}

/** Byte encodings of a guest's commands, replies and changes (log entries, snapshots). */
export interface GuestCodec<Command, Reply, Change> {
  encodeCommand(command: Command): Uint8Array;
  /**
   * Optional, together: the length of encodeCommand's bytes, and writing those same bytes into
   * a writer, so an entry is built with one allocation and no copy of a big command.
   */
  commandLength?(command: Command): number;
  writeCommand?(w: ByteWriter, command: Command): void;
  decodeCommand(bytes: Uint8Array): Command;
  encodeReply(reply: Reply): Uint8Array;
  decodeReply(bytes: Uint8Array): Reply;
  encodeChange(change: Change): Uint8Array;
  decodeChange(bytes: Uint8Array): Change;
}

/**
 * An application state machine. Implementations keep their state in memory and must be
 * deterministic: no clock, no randomness, no I/O, no iteration over unordered structures
 * whose order differs between replicas.
 */
export interface StateMachine<Command, Reply, Change> {
  /** A short name, used in logs and errors ("kv"). */
  readonly name: string;
  readonly codec: GuestCodec<Command, Reply, Change>;
  /**
   * True if `command` can never change state. Read-only commands never enter the log; their
   * replies still obey the output rule (they wait for a fresh ack from the backup).
   */
  isReadOnly(command: Command): boolean;
  /** An error reply carrying `message` (used by the duplicate filter for refused requests). */
  errorReply(message: string): Reply;
  /**
   * Execute `command` against the current state, mutating it, and return the reply and the
   * change made. `change` is null when the state did not change (a read, an error reply).
   * Applying `change` with `applyChange` to an equal state must give an equal state.
   */
  execute(command: Command): Execution<Reply, Change>;
  /**
   * Optional admission check, run on the primary only, before `execute` (and after the
   * duplicate filter): a reply here refuses the command, which is neither executed, logged nor
   * recorded (kv: maxmemory). It may read only replicated state.
   */
  admit?(command: Command): Reply | null;
  /**
   * Optional: the reply the duplicate filter records for a retry (`changed`: the command
   * changed the state). A machine may shorten replies of commands that changed nothing.
   */
  recordedReply?(reply: Reply, changed: boolean): Reply;
  /** Install a change produced by `execute` on another replica. Never executes a command. */
  applyChange(change: Change): void;
  /** The whole state as bytes (for recruiting a new backup). */
  snapshot(): Uint8Array;
  /** Replace the whole state with a snapshot taken by `snapshot`. */
  restore(snapshot: Uint8Array): void;
  /**
   * Optional, together with restoreStream: the snapshot in pieces, for states too big to
   * serialise in one go (issue 9). The stream is consistent as of this call while `execute`
   * and `applyChange` keep changing the state; its pieces are asked for a slice at a time.
   * Without it, a stream is cut from `snapshot()` (snapshot-stream.ts), which stops the world
   * for as long as `snapshot()` takes: fine for small machines.
   */
  snapshotStream?(): SnapshotStream;
  /**
   * Optional: restore from the pieces of `snapshotStream`, one at a time (the state is
   * replaced at `finish`). Without it, the pieces are gathered and given to `restore`.
   */
  restoreStream?(): RestoreStream;
  /**
   * A digest of the whole state, cheap enough to call after every entry (keep it
   * incremental). Equal states give equal digests on every replica.
   */
  digest(): string;
}
