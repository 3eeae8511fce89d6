// The exactly-once envelope on the client port, both sides of it in one place:
// `LOCKSTEP.EXEC <clientId> <seq> <ackedBelow> CMD args...`. The client library builds it;
// the node parses it and hands the request to the replicated duplicate filter.

export const EXEC_COMMAND = 'LOCKSTEP.EXEC';

/**
 * `LOCKSTEP.OPEN <clientId>`: open the session (log its session-open entry) if the duplicate
 * filter does not know it; `+OK` once the output rule allows. Harmless to repeat, so a client
 * opens each session with it and resends it freely, and its first request is never in doubt
 * the way a `seq 1, ackedBelow 0` opening is (which must not be resent once it may have run).
 */
export const OPEN_COMMAND = 'LOCKSTEP.OPEN';

/** Parse `LOCKSTEP.OPEN <clientId>`: the id, or an error message. */
export function parseOpen(args: readonly string[]): string | { clientId: string } {
  if (args.length !== 2) return `ERR wrong number of arguments for '${OPEN_COMMAND.toLowerCase()}' command`;
  const clientId = args[1]!;
  if (clientId.length === 0 || clientId.length > 128) return `ERR ${OPEN_COMMAND} client id must be 1 to 128 bytes`;
  return { clientId };
}

export interface ExecRequest {
  readonly clientId: string;
  readonly seq: number;
  readonly ackedBelow: number;
  readonly command: readonly string[];
}

/** The envelope's arguments for one command (latin1 wire strings). */
export function execArgs(clientId: string, seq: number, ackedBelow: number, command: readonly string[]): string[] {
  return [EXEC_COMMAND, clientId, String(seq), String(ackedBelow), ...command];
}

/** Parse an envelope (args[0] is EXEC_COMMAND, any case): a request, or an error message. */
export function parseExec(args: readonly string[]): ExecRequest | string {
  if (args.length < 5) return `ERR wrong number of arguments for '${EXEC_COMMAND.toLowerCase()}' command`;
  const [, clientId, seqText, ackedText] = args as [string, string, string, string];
  const seq = Number(seqText);
  const ackedBelow = Number(ackedText);
  if (clientId.length === 0 || clientId.length > 128) return `ERR ${EXEC_COMMAND} client id must be 1 to 128 bytes`;
  if (!/^[1-9][0-9]{0,15}$/.test(seqText) || !Number.isSafeInteger(seq)) return `ERR ${EXEC_COMMAND} seq must be a positive integer`;
  if (!/^(0|[1-9][0-9]{0,15})$/.test(ackedText) || !Number.isSafeInteger(ackedBelow)) return `ERR ${EXEC_COMMAND} ackedBelow must be a non-negative integer`;
  return { clientId, seq, ackedBelow, command: args.slice(4) };
}
