// The one registry of user-facing errors. Every error a user can see (bad config, bad CLI
// flag, bad input file, a refused client request) is a LockstepError with a stable code from
// ERROR_CODES; docs/ERRORS.md lists the same codes and test/errors.test.ts keeps the two in
// step. Peer garbage is not here: it is logged and dropped. Broken invariants are not here:
// they are assertion failures (src/core/assert.ts).

export const ERROR_CODES = {
  E_USAGE: 'the command line is wrong: an unknown command, flag or a missing argument',
  E_BAD_FLAG_VALUE: 'a flag has a value of the wrong kind (a number expected, say)',
  E_FILE_READ: 'a file named on the command line cannot be read',
  E_FILE_WRITE: 'a file named on the command line cannot be written',
  E_HISTORY_PARSE: 'a line of a history file is not valid JSON',
  E_HISTORY_EVENT: 'a history event is missing a field or has a field of the wrong kind',
  E_HISTORY_ORDER: 'a history breaks process order (a completion with no invoke, two invokes in a row, time going back)',
  E_DEDUP_STALE: 'a client retried a request whose reply it already acknowledged, or whose recorded reply was evicted to keep the filter under `dedupBytesMax`; the request is not run again',
  E_DEDUP_WINDOW: 'a client has too many requests in flight for the duplicate filter',
  E_SESSION_EXPIRED: 'a deduplicating client\'s session is not known to the duplicate filter: it expired (no request for `dedupSessionEntries` log entries), was evicted (more than 100,000 sessions), or was never opened (a session opens with LOCKSTEP.OPEN, or with seq 1, ackedBelow 0); the request is not run, and whether an earlier sending of it ran cannot be known: start a new session with a new client id (lockstep/client does this itself)',
  E_CORRUPT_ENTRY: 'a log entry or snapshot could not be decoded',
  E_CONFIG_PARSE: 'the config file is not valid JSON',
  E_CONFIG_INVALID: 'the config file has a missing, unknown or wrong field (the message names it)',
  E_UNKNOWN_NODE: 'the node id given on the command line is not in the config',
  E_NOT_IMPLEMENTED: 'a feature named in the config or on the command line is not built yet',
  E_ARBITER_UNAVAILABLE: 'the arbiter cannot be read or written in time (its directory is missing or unusable, or it was never created by lockstep init; etcd is unreachable, slow, without a leader or out of space); the node waits and retries, but refuses to start on an arbiter never initialized',
  E_ARBITER_CLUSTER: 'the arbiter holds a view of another cluster (two clusters share one arbiter directory): give every cluster its own',
  E_ARBITER_MISMATCH: 'a peer uses another arbiter than this node (two arbiters: split brain risk): check the arbiter path in every node\'s config and run lockstep init once per cluster; the node refuses to start. Also: a durable node\'s dataDir was written under another arbiter (the arbiter was initialized again, or the config points at another one); the node refuses to trust that disk',
  E_ARBITER_AUTH: 'etcd refused this node\'s credentials: it demands a user and none is configured, the user or password is wrong, or the user may not read and write the view\'s key',
  E_LISTEN: 'a port in the config cannot be listened on (in use, or no such address)',
  E_WASM_DIVERGENCE: 'a backup replaying a WebAssembly guest saw it make a different host call, or get a different result, than on the primary (the message names the call index and the difference)',
  E_WASM_MODULE: 'a guest WebAssembly module cannot be run (invalid, or it uses a feature or import lockstep refuses; the message names it)',
  E_SERVICE_MODULE: 'a service module (`service.kind` "module") cannot be loaded: unreadable, an import other than lockstep/guest, a call such as Math.random() or Date.now() while loading, or no `export default defineService(...)` / `defineMachine(...)` (the message names it)',
  E_SERVICE_DIVERGENCE: 'a backup\'s state digest differs from the one the primary logged at the same entry: the service module is not deterministic (the message names the entry); the backup fail-stops and the primary recruits a fresh one',
  E_SERVICE_MACHINE: 'a module\'s full StateMachine (`defineMachine`) threw from execute after changing its state (or a read changed it), which no log entry describes: a primary logs the command\'s quarantine, then fail-stops once its backup has it; the backup holds the state as before the command',
  E_SERVICE_QUARANTINED: 'the command once broke the service on a primary (E_SERVICE_MACHINE) and is refused on every replica from then on, unrun, so retrying it cannot stop each new primary in turn; fix the machine to validate before it changes anything (the last 1,000 such commands are remembered)',
  E_SERVICE_TIMEOUT: 'a backup re-executing a service module command ran past `service.timeoutMs` where the primary finished it; the backup fail-stops rather than diverge',
  E_SWITCHOVER_NOT_PRIMARY: 'a switchover was asked of a node that is not the primary (the message names the primary it knows of): ask the primary; `lockstep switchover --config FILE` finds it',
  E_SWITCHOVER_NO_BACKUP: 'a switchover was asked while the view has no backup: only a backup holds the state to take over; wait until a spare is recruited (`lockstep status` shows it) and try again',
  E_SWITCHOVER_TARGET: 'a switchover named a node (`--to`) that is not the backup of the current view: only the backup can take over',
  E_SWITCHOVER_BUSY: 'a switchover was asked while one is already under way, or while the view is changing (a recruit, a dropped backup): try again when it is done',
  E_SWITCHOVER_ABORTED: 'a switchover began but did not swap the roles: the backup was silent, restarted or did not catch up in two failure timeouts (the primary serves on, waiting commands run), or the view moved under it (the backup went live: the old primary stepped down); the message says which',
  E_DIR_LOCKED: 'a local cluster\'s run directory is in use by another supervisor, or by nodes still running there; or a durable node\'s dataDir is in use by another running node (the message names the pid and the lock file)',
  E_DURABLE_CORRUPT: 'durable mode: a file in the node\'s dataDir is damaged (a bad CRC or record header before the end of the log, an entry missing, a corrupt snapshot or meta.json; the message names the file and the offset): the node refuses to start rather than lose or invent entries; move its dataDir away and start it empty (it is recruited from the primary), or restore the directory',
  E_DURABLE_IO: 'durable mode: the node cannot read or write its dataDir (disk full, an I/O error, a permission; the message names the file): a node that cannot keep its log on disk stops (fail-stop) rather than ack what it did not write',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class LockstepError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'LockstepError';
    this.code = code;
  }
}

export function isLockstepError(e: unknown): e is LockstepError {
  return e instanceof LockstepError;
}
