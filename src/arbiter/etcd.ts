// EtcdArbiter: the test-and-set as one etcd v3 transaction (DESIGN.md §5), for replicas on
// several machines. A cluster's view is the value of one key, `PREFIX/CLUSTER/view`, holding
// the canonical JSON of types.ts `encodeView`. compareAndSet is one Txn:
//
//   if  (expected = NO_VIEW ? create_revision(key) = 0 : value(key) = encode(expected))
//   then put(key, encode(next))
//   else get(key)                      -- the refusal names the view that is there
//
// etcd orders every Txn through raft, so exactly one proposal per view wins, on a majority
// of members, and a minority (or a member without a leader) cannot answer at all. The value
// is compared, not only the epoch: the whole view, as every arbiter (docs/ARCHITECTURE.md).
// If the stored bytes are not our canonical encoding (an operator wrote the key by hand) but
// parse to the expected view, one more Txn compares the mod revision instead.
//
// Every call is bounded by one deadline (`timeoutMs`, shared by the attempts on the several
// endpoints): past it, or on any trouble a retry may fix (unreachable, no leader, out of
// space, slow), the call rejects with E_ARBITER_UNAVAILABLE and the node retries on its own
// clock. An attempt whose answer was lost may still have landed; the retry then sees its own
// proposal as the current view, which the core counts as a win. Credentials that etcd refuses
// are E_ARBITER_AUTH: waiting does not fix them.
//
// Identity: `PREFIX/CLUSTER/id`, created by init() in one Txn only if absent
// (create_revision = 0). current() reads it with the view in one Txn, and compareAndSet's compare
// includes it, so an uninitialized prefix is ArbiterNotInitialized and never gains a view.
//
// Client: the `etcd3` npm package (microsoft/etcd3, over @grpc/grpc-js), with its retries and
// circuit breakers replaced by one bounded retry over the endpoints (see docs/ARCHITECTURE.md).
// It is loaded on first use (loading its gRPC definitions takes about half a second), so a node
// on the file arbiter never pays for it.

import type { Etcd3, IOptions } from 'etcd3';
import { LockstepError } from '../errors.js';
import { NO_VIEW, sameView, type View } from '../core/types.js';
import { etcdIdentityKey, etcdViewKey, formatEndpoint } from './spec.js';
import { ArbiterNotInitialized, checkProposal, decodeIdentity, encodeIdentity, encodeView, newIdentity, storedBackups } from './types.js';
import type { Arbiter, ArbiterIdentity, CasResult, EtcdClientOptions, EtcdEndpoint, InitResult } from './types.js';

export const ETCD_DEFAULT_TIMEOUT_MS = 1000;

export interface EtcdArbiterOptions extends EtcdClientOptions {
  readonly timeoutMs?: number | undefined;
}

interface Stored { readonly view: View; readonly bytes: string; readonly modRevision: string }

export class EtcdArbiter implements Arbiter {
  readonly description: string;
  readonly key: string;
  readonly identityKey: string;
  private client: Promise<Etcd3> | null = null;
  private readonly options: Omit<IOptions, 'faultHandling'>;
  private readonly timeoutMs: number;
  private closed = false;

  constructor(
    readonly endpoints: readonly EtcdEndpoint[],
    readonly prefix: string,
    readonly cluster: string,
    opts: EtcdArbiterOptions = {},
  ) {
    if (endpoints.length === 0) throw new Error('EtcdArbiter needs at least one endpoint');
    this.key = etcdViewKey(prefix, cluster);
    this.identityKey = etcdIdentityKey(prefix, cluster);
    this.timeoutMs = opts.timeoutMs ?? ETCD_DEFAULT_TIMEOUT_MS;
    const tls = opts.ca !== undefined;
    const hosts = endpoints.map((e) => `${tls ? 'https' : 'http'}://${formatEndpoint(e)}`);
    this.description = `etcd://${endpoints.map(formatEndpoint).join(',')}${prefix} (key ${this.key}${tls ? ', tls' : ''}${opts.user !== undefined ? `, user ${opts.user}` : ''})`;
    this.options = {
      hosts,
      dialTimeout: this.timeoutMs,
      grpcOptions: {
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': this.timeoutMs,
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        // A client the library rebuilds after a failure gets new connections, not a shared
        // subchannel still backing off from the old failure.
        'grpc.use_local_subchannel_pool': 1,
      },
      ...(tls ? { credentials: { rootCertificate: Buffer.from(opts.ca!), ...(opts.key ? { privateKey: Buffer.from(opts.key) } : {}), ...(opts.cert ? { certChain: Buffer.from(opts.cert) } : {}) } } : {}),
      ...(opts.user !== undefined ? { auth: { username: opts.user, password: opts.password ?? '', callOptions: () => ({ deadline: Date.now() + this.timeoutMs }) } } : {}),
    };
  }

  private etcd(): Promise<Etcd3> {
    this.client ??= Promise.all([import('etcd3'), import('cockatiel')]).then(([{ Etcd3, isRecoverableError }, { ConstantBackoff, handleWhen, noop, retry }]) =>
      new Etcd3({
        ...this.options,
        // One attempt per endpoint and one more (a broken connection gets a fresh one), 10 ms apart, all under the call's one deadline; no
        // circuit breaker, so an endpoint that comes back is used at once.
        faultHandling: {
          host: () => noop,
          global: retry(handleWhen(isRecoverableError), { maxAttempts: this.endpoints.length + 1, backoff: new ConstantBackoff(10) }),
        },
      }),
    );
    return this.client;
  }

  async identity(): Promise<ArbiterIdentity> {
    const deadline = await this.deadline();
    const res = await this.call('identity read', (etcd) => etcd.get(this.identityKey).options({ deadline }).exec());
    return this.decodeIdentity(res.kvs[0] as Kv | undefined);
  }

  async init(): Promise<InitResult> {
    const mine = newIdentity(this.cluster);
    const deadline = await this.deadline();
    const res = await this.call('init', (etcd) =>
      etcd.if(this.identityKey, 'Create', '==', 0).then(etcd.put(this.identityKey).value(encodeIdentity(mine))).else(etcd.get(this.identityKey)).options({ deadline }).commit(),
    );
    if (res.succeeded) return { identity: mine, created: true };
    return { identity: this.decodeIdentity(res.responses[0]?.response_range?.kvs[0] as Kv | undefined), created: false };
  }

  async current(): Promise<View> {
    const deadline = await this.deadline();
    // One read of both keys, at one revision.
    const res = await this.call('read', (etcd) => etcd.if(this.key, 'Version', '<', 0).else(etcd.get(this.identityKey), etcd.get(this.key)).options({ deadline }).commit());
    return this.fromElse(res).view;
  }

  async compareAndSet(expected: View, next: View): Promise<CasResult> {
    checkProposal(expected, next);
    const body = encodeView(this.cluster, next);
    const deadline = await this.deadline();
    const txn = (column: 'Create' | 'Value' | 'Mod', value: string | number) =>
      this.call('transaction', (etcd) =>
        etcd
          .if(this.key, column, '==', value)
          .and(this.identityKey, 'Create', '>', 0)
          .then(etcd.put(this.key).value(body))
          .else(etcd.get(this.identityKey), etcd.get(this.key))
          .options({ deadline })
          .commit(),
      );
    let res = await txn(expected.epoch === 0 ? 'Create' : 'Value', expected.epoch === 0 ? 0 : encodeView(this.cluster, expected));
    if (res.succeeded) return { ok: true, view: next };
    let cur = this.fromElse(res);
    if (expected.epoch > 0 && sameView(cur.view, expected)) {
      // The view we expect, in bytes we did not write: compare by revision instead.
      res = await txn('Mod', cur.modRevision);
      if (res.succeeded) return { ok: true, view: next };
      cur = this.fromElse(res);
    }
    return { ok: false, view: cur.view };
  }

  /**
   * A read, then a Txn whose compare never holds (version < 0) with a put in its then-branch:
   * etcd checks the permission of every op in both branches, so this proves the user may
   * write the key, without writing it.
   */
  async probe(): Promise<View> {
    const view = await this.current();
    const deadline = await this.deadline();
    await this.call('write-permission check', (etcd) =>
      etcd.if(this.key, 'Version', '<', 0).then(etcd.put(this.key).value('')).options({ deadline }).commit(),
    );
    return view;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.client) (await this.client).close();
  }

  // ---- helpers -----------------------------------------------------------------------------

  /** The deadline of a call starting now; the client library is loaded first (once), so its load time is not counted. */
  private async deadline(): Promise<number> {
    await this.etcd();
    return Date.now() + this.timeoutMs;
  }

  /** Runs one etcd call, mapping every failure to a LockstepError naming etcd's reason. */
  private async call<T>(what: string, f: (etcd: Etcd3) => Promise<T>): Promise<T> {
    if (this.closed) throw new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter ${this.description}: closed`);
    const started = Date.now();
    try {
      return await f(await this.etcd());
    } catch (e) {
      throw this.explain(what, e, Date.now() - started);
    }
  }

  private explain(what: string, e: unknown, elapsedMs: number): LockstepError {
    if (e instanceof LockstepError) return e;
    const msg = (e instanceof Error ? e.message : String(e)).replace(/\s+/g, ' ').slice(0, 300);
    const where = `arbiter ${this.description}: ${what}`;
    if (/user name is empty/.test(msg)) {
      return new LockstepError('E_ARBITER_AUTH', `${where}: etcd demands authentication and no user is configured (${msg}); set etcd.authFile in the config to a file holding USER:PASSWORD`);
    }
    if (/authentication failed|invalid user ID or password|user name not found/.test(msg)) {
      return new LockstepError('E_ARBITER_AUTH', `${where}: etcd refused the user and password from etcd.authFile (${msg})`);
    }
    if (/authentication is not enabled/.test(msg)) {
      return new LockstepError('E_ARBITER_AUTH', `${where}: a user is configured (etcd.authFile) but this etcd has authentication disabled (${msg}); enable it (etcdctl auth enable) or remove etcd.authFile`);
    }
    if (/permission denied/.test(msg)) {
      return new LockstepError('E_ARBITER_AUTH', `${where}: the user may not read and write ${this.key} (${msg}); grant it readwrite on the prefix ${this.prefix}/`);
    }
    const late = /deadline|DEADLINE_EXCEEDED/i.test(msg) || elapsedMs >= this.timeoutMs;
    return new LockstepError('E_ARBITER_UNAVAILABLE', `${where} failed${late ? ` (no answer within ${this.timeoutMs} ms)` : ''}: ${msg}`);
  }

  /** The else-branch of a Txn that reads [identity, view]: the view, if the identity is there. */
  private fromElse(res: { responses: { response_range?: { kvs: unknown[] } | null }[] }): Stored {
    const id = res.responses[0]?.response_range;
    const view = res.responses[1]?.response_range;
    if (!id || !view) throw new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter ${this.description}: a refused transaction came back without the current value`);
    this.decodeIdentity(id.kvs[0] as Kv | undefined);
    return this.decode(view.kvs[0] as Kv | undefined);
  }

  private decodeIdentity(kv: Kv | undefined): ArbiterIdentity {
    if (kv === undefined) throw new ArbiterNotInitialized(this.description, `etcd has no ${this.identityKey}`);
    return decodeIdentity(Buffer.from(kv.value).toString('utf8'), `${this.identityKey} on etcd`, this.cluster);
  }

  private decode(kv: Kv | undefined): Stored {
    if (kv === undefined) return { view: NO_VIEW, bytes: '', modRevision: '0' };
    const bytes = Buffer.from(kv.value).toString('utf8');
    let o: Record<string, unknown> | null = null;
    try {
      o = JSON.parse(bytes) as Record<string, unknown> | null;
    } catch {
      // handled below
    }
    const member = (x: unknown): x is string | null => x === null || (typeof x === 'string' && x !== '');
    const backups = typeof o === 'object' && o !== null ? storedBackups(o) : null;
    if (typeof o !== 'object' || o === null || !Number.isSafeInteger(o.epoch) || (o.epoch as number) < 1 || typeof o.primary !== 'string' || !member(o.primary) || backups === null) {
      throw new LockstepError('E_ARBITER_UNAVAILABLE', `arbiter ${this.description}: ${this.key} does not hold a view: ${JSON.stringify(bytes.slice(0, 200))}`);
    }
    if (o.cluster !== this.cluster) {
      throw new LockstepError('E_ARBITER_CLUSTER', `arbiter ${this.description}: ${this.key} holds a view of cluster ${JSON.stringify(o.cluster)}, not ${JSON.stringify(this.cluster)}`);
    }
    return { view: Object.freeze({ epoch: o.epoch as number, primary: o.primary, backups: Object.freeze(backups) }), bytes, modRevision: String(kv.mod_revision) };
  }
}

interface Kv { readonly value: Uint8Array; readonly mod_revision: string | number }
