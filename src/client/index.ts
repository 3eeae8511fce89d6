// The lockstep client library (`lockstep/client`): finds the primary, follows failover, and
// gives every command exactly-once execution.
//
// Each command gets a sequence number and travels as `LOCKSTEP.EXEC <clientId> <seq>
// <ackedBelow> CMD args...`. The replicated duplicate filter on the server records the reply
// of every executed (clientId, seq), so when the primary fails and the client resends a
// command to the new primary, a command that already executed is answered from the filter and
// not run again. `ackedBelow` tells the filter which replies the client holds, so it can
// forget them.
//
// Many commands may be in flight at once: they are pipelined on one connection to the
// primary, and replies come back in order. When the connection breaks, times out, or the node
// says it is not the primary (naming the one it believes is), the client connects to the
// named node or the next one and resends every unanswered command, in order, with its
// original sequence number.
//
// The client id names a session of the filter (docs/CLIENT.md). `LOCKSTEP.OPEN <clientId>`,
// pipelined ahead of the session's first requests and resent on each connection until it is
// answered, opens it (harmless to repeat, so a first request in flight when the primary dies is
// resent like any other, never left in doubt); a session the filter forgot (idle past
// dedupSessionEntries log entries, or evicted) answers E_SESSION_EXPIRED and runs nothing. The
// client then opens a new session under a fresh id and resends there every command that cannot
// have run before; a command an earlier sending of which may have run is failed with
// SessionExpiredError: it may or may not have executed, and no retry can tell.
//
// Plain Redis clients (redis-cli, ioredis) do not send ids: a retry of theirs may execute
// twice (at-least-once). Use this library where that matters.

import net from 'node:net';
import tls from 'node:tls';
import { randomUUID } from 'node:crypto';
import { RespReplyParser, encodeCommand } from '../net/resp.js';
import { OPEN_COMMAND, execArgs } from '../net/exec.js';
import type { KvReply } from '../guest/index.js';

export interface Address {
  readonly host: string;
  readonly port: number;
}

export interface ClientOptions {
  /** The client addresses of the cluster's nodes ("host:port" or {host, port}). */
  readonly nodes: readonly (string | Address)[];
  /** The id the duplicate filter knows this client by (default: a random UUID). */
  readonly clientId?: string;
  /** Give up on one connection attempt, or on a reply, after this long and try another node. */
  readonly attemptTimeoutMs?: number;
  /** Reject a command that has not completed after this long (its outcome is then unknown). */
  readonly commandTimeoutMs?: number;
  /** At most this many commands in flight (the server's filter keeps 1024 per client). */
  readonly maxInFlight?: number;
  /** The cluster's client password (its requirePassFile): sent with AUTH on every connection. */
  readonly password?: string;
  /** Speak TLS to the client port: true, or node:tls options (e.g. `{ ca }` for a private CA). */
  readonly tls?: true | tls.ConnectionOptions;
}

/** An error reply from the server (the command ran, or was refused, and said so). */
export class ReplyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReplyError';
  }
}

/**
 * The command did not complete in time. If `mayHaveExecuted` is false it was never sent to any
 * node and certainly did not execute; otherwise its outcome is unknown.
 */
export class CommandTimeoutError extends Error {
  constructor(
    message: string,
    readonly mayHaveExecuted: boolean,
  ) {
    super(message);
    this.name = 'CommandTimeoutError';
  }
}

/**
 * The server forgot this client's session (E_SESSION_EXPIRED) while the command was in doubt:
 * it may have executed once, or not at all. The client goes on under a new session.
 */
export class SessionExpiredError extends ReplyError {
  readonly code = 'E_SESSION_EXPIRED';
  readonly mayHaveExecuted = true;
  constructor(message: string) {
    super(message);
    this.name = 'SessionExpiredError';
  }
}

export type Value = string | number | bigint | null | Value[];

interface Pending {
  /** Its seq in the current session (renumbered when a new session begins). */
  seq: number;
  readonly args: readonly string[];
  readonly resolve: (v: KvReply) => void;
  readonly reject: (e: Error) => void;
  deadline: NodeJS.Timeout | undefined;
  /** Written to some connection at least once: only then may it have executed. */
  sent: boolean;
  /** A sending of it in this session went unanswered (its connection dropped): it may have run. */
  lost: boolean;
}

/** How many connection attempts a CommandTimeoutError reports. */
const RECENT_ATTEMPTS = 6;

function parseAddress(a: string | Address): Address {
  if (typeof a !== 'string') return a;
  const i = a.lastIndexOf(':');
  const port = Number(a.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`not a host:port address: ${a}`);
  return { host: a.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

/** latin1 wire string from a user value (strings are sent as UTF-8 bytes). */
function toWire(v: string | number | Buffer): string {
  if (Buffer.isBuffer(v)) return v.toString('latin1');
  return Buffer.from(String(v), 'utf8').toString('latin1');
}

/** A server reply as a plain value: bulk strings decoded as UTF-8, integers as numbers when exact. */
export function toValue(r: KvReply): Value {
  switch (r.kind) {
    case 'status':
      return r.value;
    case 'error':
      throw new ReplyError(r.message);
    case 'integer':
      return r.value >= BigInt(Number.MIN_SAFE_INTEGER) && r.value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(r.value) : r.value;
    case 'bulk':
      return r.value === null ? null : Buffer.from(r.value, 'latin1').toString('utf8');
    case 'array':
      return r.items.map(toValue);
  }
}

export class LockstepClient {
  /** The current session's id (a new one after E_SESSION_EXPIRED). */
  clientId: string;
  /** The filter forgot the session: no sending until the replies on the wire are in, then a new one. */
  private renewing = false;
  /** How many times the server forgot this client's session (for tests and metrics). */
  sessionsRenewed = 0;
  private readonly nodes: Address[];
  private readonly attemptTimeoutMs: number;
  private readonly commandTimeoutMs: number;
  private readonly maxInFlight: number;
  private readonly password: string | null;
  private readonly tls: tls.ConnectionOptions | null;
  /** The AUTH sent on this connection has not been answered yet: the next reply is its. */
  private authPending = false;
  private nextSeq = 1;
  /** The current session was opened (LOCKSTEP.OPEN answered +OK): its requests need no opener. */
  private opened = false;
  /** Stands for the LOCKSTEP.OPEN on the current connection's wire, if one was sent there. */
  private opener: Pending | null = null;
  /** Sent (or to be sent) and not yet answered, in seq order. */
  private readonly inflight: Pending[] = [];
  /** Waiting for room (maxInFlight). */
  private readonly queued: (() => void)[] = [];
  private socket: net.Socket | null = null;
  private parser = new RespReplyParser();
  /** Commands on the current connection whose replies are due, in order. */
  private onWire: Pending[] = [];
  private target = 0;
  private connecting = false;
  private attemptTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** The last connection attempts and how each ended ("127.0.0.1:7001: ECONNREFUSED"), newest last. */
  private readonly recent: string[] = [];
  /** The node of the current (or last) connection. */
  private current: Address | null = null;
  /** The current connection's socket error, if it had one (ECONNREFUSED, ETIMEDOUT ...). */
  private socketError: string | null = null;
  /** The last E_SESSION_EXPIRED message (for the error of a command in doubt). */
  private lastRefusal = '';
  /** How many times the client moved to another node (for tests and metrics). */
  reconnects = 0;
  /** Moves since the last reply: the back-off counts these, so it applies once every node was tried in a row. */
  private movesSinceReply = 0;

  constructor(opts: ClientOptions) {
    if (opts.nodes.length === 0) throw new RangeError('ClientOptions.nodes is empty');
    this.nodes = opts.nodes.map(parseAddress);
    this.clientId = opts.clientId ?? randomUUID();
    this.attemptTimeoutMs = opts.attemptTimeoutMs ?? 2000;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 30_000;
    this.maxInFlight = Math.min(opts.maxInFlight ?? 512, 1000);
    this.password = opts.password ?? null;
    this.tls = opts.tls === undefined ? null : opts.tls === true ? {} : opts.tls;
  }

  /**
   * Run one command exactly once; resolves with its reply as a plain value. A service's own
   * commands go through here too (`db.call<number>('TRANSFER', 'ann', 'bob', 10)`): name the
   * reply's type when you know it; nothing checks it at run time.
   */
  async call<T extends Value = Value>(...args: (string | number | Buffer)[]): Promise<T> {
    return toValue(await this.callRaw(args.map(toWire))) as T;
  }

  /** Run one command exactly once; `args` are latin1 wire strings; resolves with the raw reply. */
  callRaw(args: readonly string[]): Promise<KvReply> {
    if (this.closed) return Promise.reject(new Error('the client is closed'));
    if (args.length === 0) return Promise.reject(new RangeError('a command needs a name'));
    return new Promise<KvReply>((resolve, reject) => {
      const go = (): void => {
        const seq = this.nextSeq++;
        const p: Pending = { seq, args, resolve, reject, deadline: undefined, sent: false, lost: false };
        p.deadline = setTimeout(() => this.expire(p), this.commandTimeoutMs);
        this.inflight.push(p);
        this.sendOrConnect([p]);
      };
      if (this.inflight.length >= this.maxInFlight) this.queued.push(go);
      else go();
    });
  }

  get(key: string): Promise<string | null> {
    return this.call('GET', key) as Promise<string | null>;
  }
  set(key: string, value: string | number | Buffer): Promise<string> {
    return this.call('SET', key, value) as Promise<string>;
  }
  append(key: string, value: string | number | Buffer): Promise<number> {
    return this.call('APPEND', key, value) as Promise<number>;
  }
  del(...keys: string[]): Promise<number> {
    return this.call('DEL', ...keys) as Promise<number>;
  }
  incr(key: string): Promise<number> {
    return this.call('INCR', key) as Promise<number>;
  }
  incrby(key: string, by: number): Promise<number> {
    return this.call('INCRBY', key, by) as Promise<number>;
  }
  decr(key: string): Promise<number> {
    return this.call('DECR', key) as Promise<number>;
  }
  decrby(key: string, by: number): Promise<number> {
    return this.call('DECRBY', key, by) as Promise<number>;
  }
  mget(...keys: string[]): Promise<(string | null)[]> {
    return this.call('MGET', ...keys) as Promise<(string | null)[]>;
  }
  mset(...kv: string[]): Promise<string> {
    return this.call('MSET', ...kv) as Promise<string>;
  }
  exists(...keys: string[]): Promise<number> {
    return this.call('EXISTS', ...keys) as Promise<number>;
  }
  dbsize(): Promise<number> {
    return this.call('DBSIZE') as Promise<number>;
  }

  /** Fail every unfinished command and close the connection. */
  close(): void {
    this.closed = true;
    if (this.attemptTimer) clearTimeout(this.attemptTimer);
    this.socket?.destroy();
    this.socket = null;
    for (const p of this.inflight.splice(0)) {
      clearTimeout(p.deadline);
      p.reject(new Error('the client was closed'));
    }
    this.queued.length = 0;
  }

  // ---- internals -------------------------------------------------------------------------

  /** The lowest seq whose reply this client does not hold: the filter may forget the rest. */
  private ackedBelow(): number {
    return this.inflight[0]?.seq ?? this.nextSeq;
  }

  private wire(p: Pending): Buffer {
    // The session is opened by LOCKSTEP.OPEN (harmless to resend), never by a request with
    // ackedBelow 0: such an opening could not be resent once it may have run.
    return encodeCommand(execArgs(this.clientId, p.seq, this.ackedBelow(), p.args));
  }

  /** Until the session is known to be open, each connection sends LOCKSTEP.OPEN first. */
  private openerBytes(): Buffer | null {
    if (this.opened || this.opener !== null) return null;
    const opener: Pending = { seq: 0, args: [OPEN_COMMAND], resolve: () => {}, reject: () => {}, deadline: undefined, sent: true, lost: false };
    this.opener = opener;
    this.onWire.push(opener);
    return encodeCommand([OPEN_COMMAND, this.clientId]);
  }

  private sendOrConnect(ps: Pending[]): void {
    if (this.renewing) return; // sent under the new session once the old one's replies are in
    if (this.socket !== null && !this.connecting) {
      const open = this.openerBytes();
      this.onWire.push(...ps);
      for (const p of ps) p.sent = true;
      const bytes = ps.map((p) => this.wire(p));
      if (open !== null) bytes.unshift(open);
      this.socket.write(bytes.length === 1 ? bytes[0]! : Buffer.concat(bytes));
      this.armAttemptTimer();
    } else if (!this.connecting) {
      this.connect();
    }
  }

  private armAttemptTimer(): void {
    if (this.attemptTimer || this.onWire.length === 0) return;
    this.attemptTimer = setTimeout(() => {
      this.attemptTimer = null;
      this.moveOn('no reply in time');
    }, this.attemptTimeoutMs);
  }

  private connect(): void {
    if (this.closed) return;
    this.connecting = true;
    const addr = this.nodes[this.target % this.nodes.length]!;
    this.current = addr;
    const socket: net.Socket = this.tls === null
      ? net.connect({ host: addr.host, port: addr.port })
      : tls.connect({ servername: net.isIP(addr.host) === 0 ? addr.host : undefined, ...this.tls, host: addr.host, port: addr.port });
    socket.setNoDelay(true);
    this.socket = socket;
    this.parser = new RespReplyParser();
    this.onWire = [];
    this.opener = null;
    this.socketError = null;
    const timer = setTimeout(() => {
      if (this.socket === socket) this.socketError = `no connection within ${this.attemptTimeoutMs} ms`;
      socket.destroy();
    }, this.attemptTimeoutMs);
    socket.on(this.tls === null ? 'connect' : 'secureConnect', () => {
      clearTimeout(timer);
      if (this.socket !== socket) return;
      this.connecting = false;
      this.authPending = this.password !== null;
      if (this.password !== null) socket.write(encodeCommand(['AUTH', toWire(this.password)]));
      // Resend everything unanswered, in seq order, with the original seqs.
      const todo = this.inflight.slice();
      if (todo.length > 0) this.sendOrConnect(todo);
    });
    socket.on('data', (chunk: Buffer) => {
      if (this.socket !== socket) return;
      try {
        this.parser.push(chunk);
        const parser = this.parser;
        // Stop at once if a reply made us leave this connection (NOTPRIMARY): the rest of the
        // chunk belongs to the old connection and its commands are being resent.
        for (let r = parser.next(); r !== null && this.socket === socket; r = parser.next()) this.onReply(r);
        if (this.renewing && this.onWire.length === 0 && this.socket === socket) this.renewSession();
      } catch (e) {
        this.moveOn(`bad reply: ${(e as Error).message}`);
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (this.socket === socket) this.socketError = e.code ?? e.message;
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (this.socket === socket) this.moveOn(this.socketError ?? 'connection closed');
    });
  }

  private onReply(r: KvReply): void {
    if (this.authPending) {
      this.authPending = false;
      if (r.kind === 'error') {
        // A wrong password is not cured by another node: every command fails with the reason.
        const e = new ReplyError(`AUTH refused: ${r.message}`);
        for (const p of this.inflight.splice(0)) {
          clearTimeout(p.deadline);
          p.reject(e);
        }
        return this.moveOn(`AUTH refused: ${r.message}`);
      }
      return;
    }
    const p = this.onWire.shift();
    if (p === undefined) return this.moveOn('a reply nobody asked for');
    const redirect = r.kind === 'error' && r.message.startsWith('NOTPRIMARY');
    if (!redirect) this.movesSinceReply = 0;
    if (this.attemptTimer) {
      clearTimeout(this.attemptTimer);
      this.attemptTimer = null;
    }
    this.armAttemptTimer();
    if (r.kind === 'error' && /^(ERR )?E_SESSION_EXPIRED /.test(r.message)) return this.sessionRefused(p, r.message);
    if (r.kind === 'error' && r.message.startsWith('NOTPRIMARY')) {
      const hinted = /at (\S+):(\d+) /.exec(r.message);
      if (hinted) {
        const i = this.nodes.findIndex((n) => n.host === hinted[1] && n.port === Number(hinted[2]));
        // moveOn steps to it (from the node before it: for the first node, the last one).
        if (i >= 0) this.target = (i - 1 + this.nodes.length) % this.nodes.length;
      }
      return this.moveOn('not the primary');
    }
    if (p === this.opener) {
      this.opener = null;
      if (r.kind === 'error') return this.moveOn(`${OPEN_COMMAND} refused: ${r.message.slice(0, 200)}`);
      this.opened = true;
      return;
    }
    const i = this.inflight.indexOf(p);
    if (i < 0) return; // already expired
    this.inflight.splice(i, 1);
    clearTimeout(p.deadline);
    p.resolve(r);
    this.queued.shift()?.();
  }

  /** Drop this connection and try the next node (or the hinted one), resending what is unanswered. */
  private moveOn(why: string): void {
    const addr = this.current;
    if (addr !== null) {
      this.recent.push(`${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}: ${why}`);
      if (this.recent.length > RECENT_ATTEMPTS) this.recent.shift();
    }
    if (this.attemptTimer) {
      clearTimeout(this.attemptTimer);
      this.attemptTimer = null;
    }
    const old = this.socket;
    this.socket = null;
    this.connecting = false;
    for (const p of this.onWire) p.lost = true; // unanswered: it may have run
    this.onWire = [];
    this.opener = null;
    old?.destroy();
    if (this.closed) return;
    if (this.renewing) this.renewSession();
    this.target = (this.target + 1) % this.nodes.length;
    this.reconnects++;
    this.movesSinceReply++;
    if (this.inflight.length > 0) {
      // Back off a little once every node has been tried (without a reply in between: a move
      // after each of many switchovers or failovers is not a streak).
      const delay = this.movesSinceReply % this.nodes.length === 0 ? 50 : 0;
      setTimeout(() => !this.socket && !this.connecting && this.connect(), delay);
    }
  }

  private expire(p: Pending): void {
    const i = this.inflight.indexOf(p);
    if (i < 0) return;
    this.inflight.splice(i, 1);
    const outcome = p.sent ? 'it may or may not have executed' : 'it was never sent to a node, so it did not execute';
    const seen = this.recent.length > 0 ? `; last attempts: ${this.recent.join('; ')}` : '';
    p.reject(new CommandTimeoutError(`command ${p.args[0]} (seq ${p.seq}) did not complete in ${this.commandTimeoutMs} ms; ${outcome}${seen}`, p.sent));
    this.queued.shift()?.();
  }

  /**
   * The server forgot this session: p did not run now. Send nothing more under it; once the
   * replies already on the wire are in (some may have run: they resolve as usual), begin anew.
   */
  private sessionRefused(p: Pending, message: string): void {
    if (this.inflight.includes(p)) this.lastRefusal = message;
    this.renewing = true;
    if (this.onWire.length === 0) this.renewSession();
  }

  /**
   * A new session under a fresh id: a command that may have run in the old one (a sending of
   * it went unanswered) fails with SessionExpiredError; the rest, which certainly did not run,
   * are renumbered from 1, in order, and sent.
   */
  private renewSession(): void {
    const old = this.clientId;
    this.renewing = false;
    this.sessionsRenewed++;
    this.clientId = randomUUID();
    this.nextSeq = 1;
    this.opened = false;
    this.opener = null;
    const keep: Pending[] = [];
    for (const p of this.inflight.splice(0)) {
      if (p.lost) {
        clearTimeout(p.deadline);
        p.reject(new SessionExpiredError(`command ${p.args[0]} (seq ${p.seq} of session ${old}) may or may not have executed: the server forgot the session before it could answer (${this.lastRefusal.replace(/^ERR /, "").slice(0, 300)}); the client goes on under session ${this.clientId}`));
        continue;
      }
      p.seq = this.nextSeq++;
      keep.push(p);
    }
    this.inflight.push(...keep);
    while (this.queued.length > 0 && this.inflight.length < this.maxInFlight) this.queued.shift()!();
    if (keep.length > 0) this.sendOrConnect(keep);
  }
}
