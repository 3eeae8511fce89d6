// The cluster config file: one JSON file shared by every node of a cluster. It is validated
// completely before anything starts, and every complaint names the JSON path (`nodes[1].client`)
// and what to do, because a node that starts on a half-understood config fails later and far
// from the cause. Unknown keys are refused (a typo must not silently fall back to a default),
// which also refuses `bugs`: planted bugs exist for the simulator only, never for a real node.

import { SERVICE_TIMEOUT_MS_DEFAULT } from '../guest/sandbox.js';
import { DEDUP_SESSION_ENTRIES_DEFAULT } from '../guest/replicated.js';
import { readFile } from 'node:fs/promises';
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { isIPv4, isIPv6 } from 'node:net';
import { LockstepError, isLockstepError } from '../errors.js';
import { DEFAULT_SNAPSHOT_CHUNK_BYTES, DEFAULT_SNAPSHOT_WINDOW_CHUNKS, DEFAULT_TIMING, type CoreConfig, type CoreTiming } from '../core/types.js';
import { parseArbiterSpec } from '../arbiter/spec.js';
import { DURABLE_BACKLOG_BYTES_DEFAULT, DURABLE_COMPACT_BYTES_DEFAULT } from './durable.js';
import type { ArbiterOptions, EtcdClientOptions } from '../arbiter/types.js';

export interface NodeAddress { readonly host: string; readonly port: number }
export interface NodeConfig {
  readonly id: string;
  /** Where the other replicas reach this one's logging channel. */
  readonly peer: NodeAddress;
  /** Where this replica listens for its logging channel: `peer` unless the config sets
   *  `peerListen` (a proxy or NAT between them; the fault tests put a TCP proxy there). */
  readonly peerListen: NodeAddress;
  /** The RESP client port (kv). A wasm service's clients use the guest's own `listen`: null. */
  readonly client: NodeAddress | null;
  readonly admin: NodeAddress;
  /** The arbiter spec this node uses: the top-level `arbiter`, or the node's own endpoints for
   *  the same etcd prefix (`nodes[i].arbiter`: its local member, a proxy). */
  readonly arbiter: string;
  /** Durable mode: where this node keeps its log and snapshots (resolved against the config's directory); null when not durable. */
  readonly dataDir: string | null;
}
export interface KvServiceConfig { readonly kind: 'kv'; readonly mode: 'rsm' | 'state-transfer' }
/** A WebAssembly/WASI guest replicated by record and replay (docs/WASM.md). */
export interface WasmServiceConfig {
  readonly kind: 'wasm';
  /** The module's path, resolved against the config file's directory. */
  readonly module: string;
  /** argv[1..]; argv[0] is the module's file name. */
  readonly args: readonly string[];
  /** The guest's environment, "KEY=VALUE". */
  readonly env: readonly string[];
  /** Listening sockets the primary opens for the guest (fds 4, 5, ...), the same on every node. */
  readonly listen: readonly NodeAddress[];
  /** Linear memory limit, the same on every replica. */
  readonly memoryLimitMb: number;
  /** Where the per-replica guest directories are (`<guestDir>/<node id>`), resolved. */
  readonly guestDir: string;
  /**
   * How a recruit gets the guest's snapshot: 'stream' (default: taken at one point, made and
   * restored a piece at a time, image-stream.ts) or 'whole' (built and restored in one
   * event-loop turn each, the way before issue 9 item 4; kept to compare against).
   */
  readonly snapshot?: 'stream' | 'whole';
}
/** A user's service module (defineService or defineMachine) replicated at the application level (docs/SERVICES.md). */
export interface ModuleServiceConfig {
  readonly kind: 'module';
  /** The .js (ES module) file's path, resolved against the config file's directory. */
  readonly module: string;
  readonly mode: 'rsm' | 'state-transfer';
  /** The primary logs its state digest every this many entries; a backup that differs fail-stops. 0: never. */
  readonly digestEvery: number;
  /** The longest one command (or loading the module) may run, in ms. */
  readonly timeoutMs: number;
}
export type ServiceConfig = KvServiceConfig | WasmServiceConfig | ModuleServiceConfig;
/** The protocol's timing fields (CoreTiming) plus what only a real cluster has. */
export interface ClusterConfig extends CoreTiming {
  readonly cluster: string;
  readonly arbiter: string;
  /** Bound on one arbiter call to a remote store (etcd). */
  readonly arbiterTimeoutMs: number;
  /** TLS and user for an etcd arbiter, read from the files the config names; undefined: none. */
  readonly etcd: EtcdClientOptions | undefined;
  readonly service: ServiceConfig;
  readonly maxClientConnections: number;
  /** The longest value (bulk string) a client may send, and the largest value kv stores (Redis's proto-max-bulk-len). */
  readonly protoMaxBulkLen: number;
  /** The largest reply; a command whose reply would be larger gets an error instead. */
  readonly maxReplyBytes: number;
  /** Bytes of unparsed client input held across all connections; beyond it a connection is closed. */
  readonly clientInputBytesMax: number;
  /** The password clients must give with AUTH (from `requirePassFile`), or null: none asked. */
  readonly requirePass: string | null;
  /** TLS on the client port (from `clientTls`), or null: plain TCP. */
  readonly clientTls: TlsFiles | null;
  /** Mutual TLS on the peer port (from `peerTls`), or null: plain TCP. */
  readonly peerTls: PeerTlsFiles | null;
  /** kv: the state's size limit (key and value bytes plus 64 a key); writes past it get -OOM. Replicated: the same on every node. */
  readonly maxmemory: number;
  /** kv: the duplicate filter's size limit in counted bytes; the oldest clients' replies go first. Replicated: the same on every node. */
  readonly dedupBytesMax: number;
  /** A deduplicating client's session expires after this many log entries without one of its own (log time). Replicated: the same on every node. */
  readonly dedupSessionEntries: number;
  /** The shared secret peers prove they hold (from `secretFile`), or null: no peer authentication. */
  readonly secret: Uint8Array | null;
  readonly nodes: readonly NodeConfig[];
  /**
   * Durable mode (issue 11 item 3): every node keeps its log and snapshots in its `dataDir`, and
   * an entry counts as acked only once the backup has it on disk (docs/ARCHITECTURE.md).
   */
  readonly durable: boolean;
  /** Durable mode: a node snapshots its state and deletes the log behind it after this many log bytes. */
  readonly durableCompactBytes: number;
  /**
   * Durable mode: about this many bytes of recent entries every node keeps in memory, so that a
   * node back with its disk after the failure timeout is sent only what it lacks instead of a
   * snapshot (replica.ts "Resuming a spare that kept its state"). 0: always a snapshot.
   */
  readonly durableBacklogBytes: number;
  /** How many backups the primary keeps (issue 11 item 4): every output waits for each of them. Default 1. */
  readonly backups: number;
  /** The directory the config file is in (relative arbiter paths resolve against it). */
  readonly baseDir: string;
}

const MAX_NODES = 16;
/** 64 MiB: Redis allows 512 MiB, but a value that large stalls a replica past the failure timeout. */
const DEFAULT_PROTO_MAX_BULK_LEN = 64 * 1024 * 1024;
/** The longest JavaScript string is 2^29 - 24 characters; kv values are latin1 strings. */
const MAX_PROTO_MAX_BULK_LEN = (1 << 29) - 24;
const DEFAULT_MAX_REPLY_BYTES = 256 * 1024 * 1024;
/** A Buffer holds at most 4 GiB; one reply is one Buffer. */
const MAX_BUFFER_BYTES = 2 ** 32 - 1;
const DEFAULT_CLIENT_INPUT_BYTES_MAX = 512 * 1024 * 1024;
const DEFAULT_MAXMEMORY = 256 * 1024 * 1024;
const DEFAULT_DEDUP_BYTES_MAX = 64 * 1024 * 1024;
/**
 * Snapshots go in chunks (issue 9), so maxmemory has no frame to fit. The duplicate filter is
 * still one piece, one chunk, one peer frame of at most 512 MiB (replica-node.ts): its counted
 * size bounds its bytes from above, so it stays below that, with room for the frame's fields.
 */
const DEDUP_BYTES_CEILING = 480 * 1024 * 1024;
/**
 * Cluster names and node ids: they name files and directories (a node's log, a wasm guest's
 * directory `guestDir/<id>`, which is emptied at start), so they start with a letter or digit:
 * no `.`, `..` or hidden names.
 */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const ROLES = ['peer', 'client', 'admin'] as const;
const TOP_REQUIRED = ['cluster', 'arbiter', 'service', 'nodes'] as const;
const INTS = [
  'heartbeatMs', 'failureTimeoutMs', 'retransmitMs', 'arbiterRetryMs', 'joinIntervalMs', 'unackedEntriesMax',
  'unackedBytesMax', 'frameEntriesMax', 'frameBytesMax', 'catchupEntriesMax', 'maxClientConnections', 'arbiterTimeoutMs',
  'protoMaxBulkLen', 'maxReplyBytes', 'clientInputBytesMax', 'maxmemory', 'dedupBytesMax', 'dedupSessionEntries',
  'snapshotChunkBytes', 'snapshotWindowChunks', 'durableCompactBytes', 'durableBacklogBytes', 'backups',
] as const;
const ETCD_KEYS = ['caFile', 'certFile', 'keyFile', 'authFile'] as const;
/** The default bound on one etcd call: well above a LAN etcd's commit time, below a human's patience. */
export const ARBITER_TIMEOUT_MS_DEFAULT = 1000;
type IntKey = (typeof INTS)[number];

export function parseConfig(text: string, source: string, baseDir: string): ClusterConfig {
  function fail(path: string, msg: string, code: 'E_CONFIG_INVALID' | 'E_NOT_IMPLEMENTED' = 'E_CONFIG_INVALID'): never {
    throw new LockstepError(code, `${source}: ${path}: ${msg}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new LockstepError('E_CONFIG_PARSE', `${source}: not valid JSON${jsonErrorWhere(text, (e as Error).message)}`);
  }

  const object = (v: unknown, path: string, known: readonly string[], required: readonly string[]): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, `must be a JSON object, got ${describe(v)}`);
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (!known.includes(k)) {
        const where = path === '(top level)' ? k : `${path}.${k}`;
        const hint = k === 'bugs' ? ' (planted bugs are for the simulator only; a real node never runs with them)' : '';
        throw new LockstepError('E_CONFIG_INVALID', `${source}: unknown key ${where}${hint}; known keys: ${known.join(', ')}`);
      }
    }
    for (const k of required) if (!(k in o)) fail(path === '(top level)' ? k : `${path}.${k}`, 'missing; it is required');
    return o;
  };
  const name = (v: unknown, path: string): string => {
    if (typeof v !== 'string' || !NAME.test(v)) fail(path, `must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, got ${describe(v)}`);
    return v;
  };

  const top = object(json, '(top level)', CONFIG_KEYS.top, TOP_REQUIRED);
  const cluster = name(top.cluster, 'cluster');

  if (typeof top.arbiter !== 'string') fail('arbiter', `must be a string such as "file:.lockstep/arbiter", got ${describe(top.arbiter)}`);
  const arbiter = top.arbiter;
  const spec = (v: string, path: string) => {
    try {
      return parseArbiterSpec(v);
    } catch (e) {
      if (isLockstepError(e)) fail(path, e.message, e.code === 'E_NOT_IMPLEMENTED' ? e.code : 'E_CONFIG_INVALID');
      throw e;
    }
  };
  const arbiterSpec = spec(arbiter, 'arbiter');
  let etcd: EtcdClientOptions | undefined;
  if (top.etcd !== undefined) {
    if (arbiterSpec.kind !== 'etcd') fail('etcd', `sets etcd client options but the arbiter is ${JSON.stringify(arbiter)}, not etcd://...; remove it or use an etcd arbiter`);
    etcd = readEtcdOptions(object(top.etcd, 'etcd', ETCD_KEYS, []), baseDir, fail);
  }
  const nodeArbiter = (v: unknown, path: string): string => {
    if (v === undefined) return arbiter;
    if (typeof v !== 'string') fail(path, `must be a string such as "etcd://127.0.0.1:2379", got ${describe(v)}`);
    const own = spec(v, path);
    if (arbiterSpec.kind !== 'etcd' || own.kind !== 'etcd' || own.prefix !== arbiterSpec.prefix) {
      fail(path, `a node may only name its own endpoints of the cluster's etcd arbiter, with the same prefix (${arbiterSpec.kind === 'etcd' ? arbiterSpec.prefix : 'the top-level arbiter is not etcd'}): every node must use the same store`);
    }
    return v;
  };

  const service = parseService(top.service, baseDir, object, fail);
  const secret = top.secretFile === undefined ? null : readSecret(top.secretFile, baseDir, fail);
  const requirePass = top.requirePassFile === undefined ? null : readPassword(top.requirePassFile, baseDir, fail);
  const clientTls = top.clientTls === undefined ? null : readTls(top.clientTls, baseDir, object, fail);
  const peerTls = top.peerTls === undefined ? null : readPeerTls(top.peerTls, baseDir, object, fail);
  if (service.kind === 'wasm' && (requirePass !== null || clientTls !== null)) {
    fail(requirePass !== null ? 'requirePassFile' : 'clientTls', 'applies to the kv service\'s client port; a wasm guest serves its own sockets');
  }
  const int = (key: IntKey, dflt: number): number => {
    const v = top[key];
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) fail(key, `must be a positive integer, got ${describe(v)}`);
    return v;
  };
  const heartbeatMs = int('heartbeatMs', DEFAULT_TIMING.heartbeatMs);
  const failureTimeoutMs = int('failureTimeoutMs', DEFAULT_TIMING.failureTimeoutMs);
  if (failureTimeoutMs <= 3 * heartbeatMs) {
    fail('failureTimeoutMs', `failure timeout ${failureTimeoutMs} ms is not above 3 heartbeats of ${heartbeatMs} ms: a single late heartbeat would trigger a failover; raise failureTimeoutMs above ${3 * heartbeatMs} or lower heartbeatMs`);
  }
  const protoMaxBulkLen = int('protoMaxBulkLen', DEFAULT_PROTO_MAX_BULK_LEN);
  if (protoMaxBulkLen > MAX_PROTO_MAX_BULK_LEN) fail('protoMaxBulkLen', `must be at most ${MAX_PROTO_MAX_BULK_LEN} (512 MiB less what a JavaScript string cannot hold), got ${protoMaxBulkLen}`);
  const maxReplyBytes = int('maxReplyBytes', DEFAULT_MAX_REPLY_BYTES);
  if (maxReplyBytes > MAX_BUFFER_BYTES) fail('maxReplyBytes', `must be at most ${MAX_BUFFER_BYTES}, got ${maxReplyBytes}`);
  const clientInputBytesMax = int('clientInputBytesMax', DEFAULT_CLIENT_INPUT_BYTES_MAX);
  if (clientInputBytesMax < 2 * protoMaxBulkLen) fail('clientInputBytesMax', `${clientInputBytesMax} must be at least twice protoMaxBulkLen (${protoMaxBulkLen}), or no command with the largest value could ever arrive`);
  const maxmemory = int('maxmemory', DEFAULT_MAXMEMORY);
  const dedupBytesMax = int('dedupBytesMax', DEFAULT_DEDUP_BYTES_MAX);
  if (dedupBytesMax > DEDUP_BYTES_CEILING) {
    fail('dedupBytesMax', `must be at most ${DEDUP_BYTES_CEILING}, got ${dedupBytesMax}: a new backup receives the whole duplicate filter in one snapshot chunk, a peer frame of at most 512 MiB`);
  }
  const dedupSessionEntries = int('dedupSessionEntries', DEDUP_SESSION_ENTRIES_DEFAULT);
  const retransmitMs = int('retransmitMs', 3 * heartbeatMs);
  if (retransmitMs >= failureTimeoutMs) fail('retransmitMs', `retransmit interval ${retransmitMs} ms must be below the failure timeout ${failureTimeoutMs} ms, or a lost frame is retransmitted only after a failover`);

  if (!Array.isArray(top.nodes) || top.nodes.length < 1 || top.nodes.length > MAX_NODES) {
    fail('nodes', `must be an array of 1 to ${MAX_NODES} nodes, got ${Array.isArray(top.nodes) ? `${top.nodes.length} nodes` : describe(top.nodes)}`);
  }
  if (top.durable !== undefined && typeof top.durable !== 'boolean') fail('durable', `must be true or false, got ${describe(top.durable)}`);
  const durable = top.durable === true;
  if (durable && service.kind === 'wasm') {
    fail('durable', 'durable mode is not yet built for the wasm service (its guest\'s record log and memory image are not kept on disk); use it with the kv or a module service, or run the wasm service in memory', 'E_NOT_IMPLEMENTED');
  }
  const durableCompactBytes = int('durableCompactBytes', DURABLE_COMPACT_BYTES_DEFAULT);
  const durableBacklogBytes = int('durableBacklogBytes', DURABLE_BACKLOG_BYTES_DEFAULT);
  const backups = int('backups', 1);
  if (top.nodes.length > 1 && backups > top.nodes.length - 1) {
    fail('backups', `${backups} backups need at least ${backups + 1} nodes (a primary and ${backups} backups; one more as a spare to recruit when one fails), this cluster has ${top.nodes.length}`);
  }
  if (!durable && top.durableCompactBytes !== undefined) fail('durableCompactBytes', 'is set but "durable" is not true');
  if (!durable && top.durableBacklogBytes !== undefined) fail('durableBacklogBytes', 'is set but "durable" is not true');
  const dataDirs: { dir: string; host: string; path: string }[] = [];
  const ids = new Map<string, string>();
  const used: { host: string; port: number; path: string }[] = [];
  const nodes = top.nodes.map((raw, i): NodeConfig => {
    const path = `nodes[${i}]`;
    // A wasm guest listens on its own addresses (service.listen): its nodes need no client port.
    const required = service.kind === 'wasm' ? ['id', 'peer', 'admin'] : ['id', ...ROLES];
    const o = object(raw, path, CONFIG_KEYS.node, required);
    const id = name(o.id, `${path}.id`);
    const twin = ids.get(id);
    if (twin !== undefined) fail(`${path}.id`, `node id ${id} is already used by ${twin}; node ids must be unique`);
    ids.set(id, `${path}.id`);
    const addr = (role: (typeof ROLES)[number] | 'peerListen'): NodeAddress => {
      const p = `${path}.${role}`;
      const a = parseAddress(o[role]);
      if (typeof a === 'string') return fail(p, a);
      const host = a.host.toLowerCase();
      const clash = used.find((u) => u.port === a.port && (u.host === host || WILDCARD.has(u.host) || WILDCARD.has(host)));
      if (clash) fail(p, `address ${formatAddress(a)} is already used by ${clash.path}; every node and role needs its own address`);
      used.push({ host, port: a.port, path: p });
      return a;
    };
    const peer = addr('peer');
    const peerListen = o.peerListen === undefined ? peer : addr('peerListen');
    let dataDir: string | null = null;
    if (durable) {
      if (o.dataDir === undefined) fail(`${path}.dataDir`, 'missing; with "durable": true every node needs its own dataDir, a directory on a local disk where it keeps its log and snapshots');
      if (typeof o.dataDir !== 'string' || o.dataDir === '') fail(`${path}.dataDir`, `must be a directory path, got ${describe(o.dataDir)}`);
      dataDir = resolve(baseDir, o.dataDir);
      const twin = dataDirs.find((d) => d.dir === dataDir && d.host === peer.host.toLowerCase());
      if (twin) fail(`${path}.dataDir`, `${dataDir} is already the dataDir of ${twin.path} on the same host: two nodes on one dataDir would corrupt it; give every node its own`);
      dataDirs.push({ dir: dataDir, host: peer.host.toLowerCase(), path: `${path}.dataDir` });
    } else if (o.dataDir !== undefined) {
      fail(`${path}.dataDir`, 'is set but "durable" is not true: set "durable": true to keep the log on disk, or remove dataDir');
    }
    return { id, peer, peerListen, client: o.client === undefined ? null : addr('client'), admin: addr('admin'), arbiter: nodeArbiter(o.arbiter, `${path}.arbiter`), dataDir };
  });

  if (secret === null && peerTls === null) {
    // Without a secret or mutual TLS anyone who can reach a peer port speaks the replication
    // protocol. On loopback that is this machine's users (the node warns); beyond it, the network.
    const open = nodes.find((n) => !isLoopbackHost(n.peerListen.host));
    if (open) {
      fail('secretFile', `missing, but ${open.id} listens for peers on ${formatAddress(open.peerListen)}, which is not a loopback address: anyone on that network could speak the replication protocol. Make a secret (\`openssl rand -hex 32 > secret\`, the same file on every node) and name it in secretFile, or give every node a certificate of one CA in peerTls`);
    }
  }

  return {
    cluster, arbiter, arbiterTimeoutMs: int('arbiterTimeoutMs', ARBITER_TIMEOUT_MS_DEFAULT), etcd, service, heartbeatMs, failureTimeoutMs, retransmitMs,
    arbiterRetryMs: int('arbiterRetryMs', Math.max(1, Math.floor(failureTimeoutMs / 2))),
    joinIntervalMs: int('joinIntervalMs', 4 * heartbeatMs),
    unackedEntriesMax: int('unackedEntriesMax', DEFAULT_TIMING.unackedEntriesMax),
    unackedBytesMax: int('unackedBytesMax', DEFAULT_TIMING.unackedBytesMax),
    frameEntriesMax: int('frameEntriesMax', DEFAULT_TIMING.frameEntriesMax),
    frameBytesMax: int('frameBytesMax', DEFAULT_TIMING.frameBytesMax),
    catchupEntriesMax: int('catchupEntriesMax', DEFAULT_TIMING.catchupEntriesMax),
    snapshotChunkBytes: int('snapshotChunkBytes', DEFAULT_SNAPSHOT_CHUNK_BYTES),
    snapshotWindowChunks: int('snapshotWindowChunks', DEFAULT_SNAPSHOT_WINDOW_CHUNKS),
    maxClientConnections: int('maxClientConnections', 10_000),
    protoMaxBulkLen, maxReplyBytes, clientInputBytesMax, maxmemory, dedupBytesMax, dedupSessionEntries,
    secret, requirePass, clientTls, peerTls, nodes, durable, durableCompactBytes, durableBacklogBytes, backups, baseDir,
  };
}

/** The arbiter spec and options node `id` opens (status and tools use the top-level spec). */
export function arbiterFor(config: ClusterConfig, id: string | null): { spec: string; options: ArbiterOptions } {
  const spec = id === null ? config.arbiter : nodeOf(config, id).arbiter;
  return {
    spec,
    options: { cluster: config.cluster, baseDir: config.baseDir, timeoutMs: config.arbiterTimeoutMs, ...(config.etcd ? { etcd: config.etcd } : {}) },
  };
}

/**
 * The `etcd` object: TLS files (caFile turns TLS on; certFile and keyFile go together, for
 * etcd's --client-cert-auth) and authFile, a file holding USER:PASSWORD. Secrets are never
 * inline in the config, which is often copied around and checked in.
 */
function readEtcdOptions(o: Record<string, unknown>, baseDir: string, fail: (path: string, msg: string) => never): EtcdClientOptions {
  const file = (key: (typeof ETCD_KEYS)[number]): Buffer | undefined => {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v === '') fail(`etcd.${key}`, `must be a file path, got ${describe(v)}`);
    const path = resolve(baseDir, v);
    try {
      return readFileSync(path);
    } catch (e) {
      return fail(`etcd.${key}`, `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  const ca = file('caFile');
  const cert = file('certFile');
  const key = file('keyFile');
  const auth = file('authFile');
  if ((cert === undefined) !== (key === undefined)) fail(cert ? 'etcd.keyFile' : 'etcd.certFile', 'certFile and keyFile go together (a client certificate and its key)');
  if (cert !== undefined && ca === undefined) fail('etcd.caFile', 'a client certificate needs TLS: set caFile to the CA that signed the etcd servers\' certificates');
  let user: string | undefined;
  let password: string | undefined;
  if (auth !== undefined) {
    const text = auth.toString('utf8').trim();
    const colon = text.indexOf(':');
    if (colon < 1 || text.includes('\n')) fail('etcd.authFile', `${resolve(baseDir, o.authFile as string)} must hold one line USER:PASSWORD (as etcdctl --user takes it)`);
    user = text.slice(0, colon);
    password = text.slice(colon + 1);
  }
  return { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}), ...(user !== undefined ? { user, password: password! } : {}) };
}

/** At least this many bytes of secret (after trimming whitespace): 128 bits. */
const SECRET_MIN_BYTES = 16;
const SECRET_MAX_BYTES = 4096;
const PEM_MAX_BYTES = 1024 * 1024;

type ObjectFn = (v: unknown, path: string, known: readonly string[], required: readonly string[]) => Record<string, unknown>;

/** PEM bytes for node:tls. */
export interface TlsFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
}
/** The peer port's PEM bytes: this node's certificate and key, and the CA every peer's must chain to. */
export interface PeerTlsFiles extends TlsFiles {
  readonly ca: Buffer;
}

/** 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || /^::ffff:127\./.test(h);
}

/**
 * A small regular file named by config key `key` (relative to the config's directory): a
 * secret, a password, a certificate. /dev/zero (or a fifo) would be read forever.
 */
function readSmallFile(key: string, v: unknown, baseDir: string, maxBytes: number, fail: (path: string, msg: string) => never): Buffer {
  if (typeof v !== 'string' || v === '') fail(key, `must be the path of a file, got ${describe(v)}`);
  const path = resolve(baseDir, v);
  try {
    const fd = openSync(path, 'r');
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) return fail(key, `${path} is not a regular file`);
      if (st.size > maxBytes) return fail(key, `${path} holds ${st.size} bytes; at most ${maxBytes} are expected here`);
      const bytes = Buffer.alloc(st.size);
      return bytes.subarray(0, readSync(fd, bytes, 0, st.size, 0));
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if (isLockstepError(e)) throw e;
    return fail(key, `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The cluster's shared secret: the file's bytes without surrounding whitespace. */
function readSecret(v: unknown, baseDir: string, fail: (path: string, msg: string) => never): Uint8Array {
  if (typeof v !== 'string' || v === '') fail('secretFile', `must be the path of a file holding the cluster's secret, got ${describe(v)}`);
  const secret = Buffer.from(readSmallFile('secretFile', v, baseDir, SECRET_MAX_BYTES, fail).toString('latin1').trim(), 'latin1');
  if (secret.length < SECRET_MIN_BYTES) {
    fail('secretFile', `${resolve(baseDir, v)} holds ${secret.length} bytes; a secret needs at least ${SECRET_MIN_BYTES} (e.g. \`openssl rand -hex 32 > ${v}\`)`);
  }
  return new Uint8Array(secret);
}

/** The client password (requirePassFile): the file's first line, without surrounding whitespace. */
function readPassword(v: unknown, baseDir: string, fail: (path: string, msg: string) => never): string {
  const text = readSmallFile('requirePassFile', v, baseDir, SECRET_MAX_BYTES, fail).toString('latin1');
  const password = (text.split(/\r?\n/)[0] ?? '').trim();
  if (password === '') fail('requirePassFile', `${resolve(baseDir, String(v))} holds no password on its first line`);
  return password;
}

/** TLS on the client port: a PEM certificate (chain) and its key. */
function readTls(v: unknown, baseDir: string, object: ObjectFn, fail: (path: string, msg: string) => never): TlsFiles {
  const o = object(v, 'clientTls', CONFIG_KEYS.clientTls, CONFIG_KEYS.clientTls);
  return { cert: readPem('clientTls.certFile', o.certFile, 'CERTIFICATE', baseDir, fail), key: readPem('clientTls.keyFile', o.keyFile, 'PRIVATE KEY', baseDir, fail) };
}

/**
 * Mutual TLS on the peer port: this node's certificate and key (presented both when it dials
 * and when it answers) and the CA that signed every node's certificate (a peer's must verify
 * against it, and name the peer address this node dials).
 */
function readPeerTls(v: unknown, baseDir: string, object: ObjectFn, fail: (path: string, msg: string) => never): PeerTlsFiles {
  const o = object(v, 'peerTls', CONFIG_KEYS.peerTls, CONFIG_KEYS.peerTls);
  return {
    cert: readPem('peerTls.certFile', o.certFile, 'CERTIFICATE', baseDir, fail),
    key: readPem('peerTls.keyFile', o.keyFile, 'PRIVATE KEY', baseDir, fail),
    ca: readPem('peerTls.caFile', o.caFile, 'CERTIFICATE', baseDir, fail),
  };
}

/** A PEM file of the given kind (`CERTIFICATE`, `PRIVATE KEY`), or a config error naming the key. */
function readPem(key: string, v: unknown, kind: 'CERTIFICATE' | 'PRIVATE KEY', baseDir: string, fail: (path: string, msg: string) => never): Buffer {
  const bytes = readSmallFile(key, v, baseDir, PEM_MAX_BYTES, fail);
  if (!new RegExp(`-----BEGIN [A-Z ]*${kind}-----`).test(bytes.toString('latin1'))) fail(key, `${resolve(baseDir, String(v))} is not a PEM ${kind === 'CERTIFICATE' ? 'certificate' : 'private key'}`);
  return bytes;
}

const WASM_KEYS = ['kind', 'module', 'args', 'env', 'listen', 'memoryLimitMb', 'guestDir', 'snapshot'] as const;
const MODULE_KEYS = ['kind', 'module', 'mode', 'digestEvery', 'timeoutMs'] as const;
export const DIGEST_EVERY_DEFAULT = 1;

/**
 * Every key the config may hold, by object. docs/cluster.schema.json (for editors) names the
 * same ones: test/config-schema keeps the two in step.
 */
export const CONFIG_KEYS = {
  top: [...TOP_REQUIRED, ...INTS, 'secretFile', 'etcd', 'requirePassFile', 'clientTls', 'peerTls', 'durable'],
  node: ['id', ...ROLES, 'peerListen', 'arbiter', 'dataDir'],
  kvService: ['kind', 'mode'],
  wasmService: WASM_KEYS,
  moduleService: MODULE_KEYS,
  etcd: ETCD_KEYS,
  clientTls: ['certFile', 'keyFile'],
  peerTls: ['certFile', 'keyFile', 'caFile'],
} as const;

function parseService(
  v: unknown,
  baseDir: string,
  object: (v: unknown, path: string, known: readonly string[], required: readonly string[]) => Record<string, unknown>,
  fail: (path: string, msg: string) => never,
): ServiceConfig {
  const kind = typeof v === 'object' && v !== null ? (v as Record<string, unknown>).kind : undefined;
  if (kind === 'wasm') return parseWasmService(object(v, 'service', WASM_KEYS, ['kind', 'module', 'listen']), baseDir, fail);
  if (kind === 'module') return parseModuleService(object(v, 'service', MODULE_KEYS, ['kind', 'module', 'mode']), baseDir, fail);
  const svc = object(v, 'service', CONFIG_KEYS.kvService, CONFIG_KEYS.kvService);
  if (svc.kind !== 'kv') fail('service.kind', `must be "kv", "module" or "wasm", got ${describe(svc.kind)}`);
  if (svc.mode !== 'rsm' && svc.mode !== 'state-transfer') fail('service.mode', `must be "rsm" or "state-transfer", got ${describe(svc.mode)}`);
  return { kind: 'kv', mode: svc.mode };
}

function parseModuleService(o: Record<string, unknown>, baseDir: string, fail: (path: string, msg: string) => never): ModuleServiceConfig {
  if (typeof o.module !== 'string' || !/\.m?js$/.test(o.module)) fail('service.module', `must be the path of a .js or .mjs file (an ES module whose default export is defineService(...) or defineMachine(...)), got ${describe(o.module)}`);
  if (o.mode !== 'rsm' && o.mode !== 'state-transfer') fail('service.mode', `must be "rsm" or "state-transfer", got ${describe(o.mode)}`);
  const every = o.digestEvery ?? DIGEST_EVERY_DEFAULT;
  if (typeof every !== 'number' || !Number.isSafeInteger(every) || every < 0 || every > 1_000_000) fail('service.digestEvery', `must be an integer from 0 (never) to 1000000, got ${describe(every)}`);
  const timeoutMs = o.timeoutMs ?? SERVICE_TIMEOUT_MS_DEFAULT;
  if (typeof timeoutMs !== 'number' || !Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000) fail('service.timeoutMs', `must be an integer from 1 to 600000, got ${describe(timeoutMs)}`);
  return { kind: 'module', module: resolve(baseDir, o.module), mode: o.mode, digestEvery: every, timeoutMs };
}

function parseWasmService(o: Record<string, unknown>, baseDir: string, fail: (path: string, msg: string) => never): WasmServiceConfig {
  if (typeof o.module !== 'string' || o.module === '') fail('service.module', `must be the path of a .wasm file, got ${describe(o.module)}`);
  const strings = (key: 'args' | 'env', pattern: RegExp | null, what: string): string[] => {
    const a = o[key];
    if (a === undefined) return [];
    if (!Array.isArray(a) || a.some((x) => typeof x !== 'string' || x.includes('\0') || (pattern !== null && !pattern.test(x)))) {
      fail(`service.${key}`, `must be an array of ${what}, got ${describe(a)}`);
    }
    return a as string[];
  };
  const args = strings('args', null, 'strings without NUL');
  const env = strings('env', /^[^=]+=/s, '"KEY=VALUE" strings');
  if (!Array.isArray(o.listen) || o.listen.length > 16) fail('service.listen', `must be an array of up to 16 "host:port" addresses, got ${describe(o.listen)}`);
  const listen = o.listen.map((x, i) => {
    const a = parseAddress(x);
    return typeof a === 'string' ? fail(`service.listen[${i}]`, a) : a;
  });
  const mb = o.memoryLimitMb ?? 256;
  if (typeof mb !== 'number' || !Number.isSafeInteger(mb) || mb < 1 || mb > 4096) fail('service.memoryLimitMb', `must be an integer from 1 to 4096, got ${describe(mb)}`);
  const guestDir = o.guestDir ?? 'guests';
  if (typeof guestDir !== 'string' || guestDir === '') fail('service.guestDir', `must be a directory path, got ${describe(guestDir)}`);
  const snapshot = o.snapshot ?? 'stream';
  if (snapshot !== 'stream' && snapshot !== 'whole') fail('service.snapshot', `must be "stream" or "whole", got ${describe(snapshot)}`);
  return { kind: 'wasm', module: resolve(baseDir, o.module), args, env, listen, memoryLimitMb: mb, guestDir: resolve(baseDir, guestDir), snapshot };
}

export async function loadConfig(path: string): Promise<ClusterConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new LockstepError('E_FILE_READ', `cannot read the config file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseConfig(text, path, dirname(resolve(path)));
}

/**
 * The JS heap a kv node needs per byte of `maxmemory`. kv keeps keys and values off the heap
 * (src/guest/kv-store.ts) except values of 64 KiB and more, which stay JS strings: a state of
 * big values is all on the heap, and the collector needs room beyond what is live.
 */
export const HEAP_PER_MAXMEMORY = 1.5;

/**
 * Refuse to run a kv node whose heap cannot hold the state `maxmemory` allows (in big values):
 * it would die of "JavaScript heap out of memory" when the state got there, and its backup,
 * holding the same state, soon after. `heapLimitBytes` is this process's (v8.getHeapStatistics().heap_size_limit).
 */
export function checkHeapFits(config: ClusterConfig, heapLimitBytes: number): void {
  if (config.service.kind !== 'kv') return;
  const need = Math.ceil(config.maxmemory * HEAP_PER_MAXMEMORY);
  if (need <= heapLimitBytes) return;
  const mib = (b: number): number => Math.ceil(b / 2 ** 20);
  throw new LockstepError(
    'E_CONFIG_INVALID',
    `maxmemory ${mib(config.maxmemory)} MiB needs a JS heap of ${mib(need)} MiB (${HEAP_PER_MAXMEMORY}x), and this node's is ${mib(heapLimitBytes)} MiB: ` +
      `start node with --max-old-space-size=${mib(need)} (or NODE_OPTIONS=--max-old-space-size=${mib(need)}), or lower maxmemory to ${Math.floor(mib(heapLimitBytes) / HEAP_PER_MAXMEMORY)} MiB or less`,
  );
}

export function nodeOf(config: ClusterConfig, id: string): NodeConfig {
  const node = config.nodes.find((n) => n.id === id);
  if (!node) throw new LockstepError('E_UNKNOWN_NODE', `node ${id} is not in cluster ${config.cluster}; valid ids: ${config.nodes.map((n) => n.id).join(', ')}`);
  return node;
}

export function coreConfigFor(config: ClusterConfig, id: string): CoreConfig {
  nodeOf(config, id);
  const { heartbeatMs, failureTimeoutMs, retransmitMs, arbiterRetryMs, joinIntervalMs } = config;
  const { unackedEntriesMax, unackedBytesMax, frameEntriesMax, frameBytesMax, catchupEntriesMax, snapshotChunkBytes, snapshotWindowChunks, backups } = config;
  return {
    id, nodes: config.nodes.map((n) => n.id), backups, heartbeatMs, failureTimeoutMs, retransmitMs, arbiterRetryMs, joinIntervalMs,
    unackedEntriesMax, unackedBytesMax, frameEntriesMax, frameBytesMax, catchupEntriesMax, snapshotChunkBytes, snapshotWindowChunks,
    durable: config.durable,
    backlogBytes: config.durable ? config.durableBacklogBytes : 0,
  };
}

/** A node's client port, where the service has one (kv): a null here is a bug, not a user error. */
export function clientOf(n: NodeConfig): NodeAddress {
  if (n.client === null) throw new Error(`node ${n.id} has no client address (a wasm service's nodes need none)`);
  return n.client;
}

export function formatAddress(a: NodeAddress): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** Hosts that listen on every address: they clash with any host on the same port. */
const WILDCARD = new Set(['0.0.0.0', '::']);
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** "host:port" or "[v6]:port" -> the address, or a message saying what is wrong. */
function parseAddress(v: unknown): NodeAddress | string {
  const usage = `must be "host:port" (IPv4 or hostname; "[::1]:port" for IPv6), got ${describe(v)}`;
  if (typeof v !== 'string') return usage;
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(v) ?? /^([^:[\]]+):(\d{1,5})$/.exec(v);
  if (!m) return usage;
  const host = m[1]!;
  const port = Number(m[2]);
  const bracketed = v.startsWith('[');
  if (bracketed ? !isIPv6(host) : !(isIPv4(host) || (HOSTNAME.test(host) && !/^[\d.]+$/.test(host)))) return usage;
  if (port < 1 || port > 65535) return `port ${port} in ${JSON.stringify(v)} is out of range; use 1 to 65535`;
  return { host, port };
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** " at line L, column C" from V8's "... in JSON at position N", when it gives one. */
function jsonErrorWhere(text: string, message: string): string {
  const reason = message.replace(/\s*in JSON at position \d+.*$/s, '').replace(/\s*\(line \d+ column \d+\)\s*$/, '');
  const m = /at position (\d+)/.exec(message);
  const pos = m ? Number(m[1]) : /end of JSON input/.test(message) ? text.length : null;
  if (pos === null) return `: ${reason}`;
  const before = text.slice(0, pos).split('\n');
  return ` at line ${before.length}, column ${before[before.length - 1]!.length + 1}: ${reason}`;
}
