// The client port's own commands: the ones that are not the guest's and never touch its
// state (PING, ECHO, SELECT 0, COMMAND, QUIT, CLIENT, INFO, ROLE, SENTINEL, WAIT, CONFIG GET). They are
// answered at once on any replica, primary or not, so that redis-cli connects to every node
// and ioredis in sentinel mode can ask any node where the primary is.
//
// SENTINEL is answered in the shape Redis Sentinel uses, with the cluster name as the master
// name: every lockstep node is its own sentinel. ioredis configured with every node's client
// address as `sentinels` and `name: <cluster>` follows failover with no custom code: it asks
// get-master-addr-by-name, connects, checks `role:master` in INFO, and asks again when the
// connection drops or the role is wrong.

import { status as coreStatus, type Replica, type View } from '../core/index.js';
import type { KvReply } from '../guest/index.js';
import { clientOf, type ClusterConfig, type NodeConfig } from './config.js';

export interface NodeView {
  readonly id: string;
  readonly clusterConfig: ClusterConfig;
  readonly replicaState: Replica;
  /** The newest view known here (a spare's own stays empty until recruited). */
  readonly knownView: View;
  readonly clientCount: number;
  /** SENTINEL FAILOVER: begin a planned switchover (issue 11 item 1). */
  beginSwitchover(to: string | null): { readonly started: boolean; readonly code: string | null; readonly message: string };
}

export interface MetaReply {
  readonly reply: KvReply;
  /** Close the connection after this reply (QUIT). */
  readonly close?: boolean;
}

const ok: KvReply = { kind: 'status', value: 'OK' };
const nil: KvReply = { kind: 'bulk', value: null };
const bulk = (value: string): KvReply => ({ kind: 'bulk', value });
const int = (n: number): KvReply => ({ kind: 'integer', value: BigInt(n) });
const arr = (items: KvReply[]): KvReply => ({ kind: 'array', items });
const err = (message: string): KvReply => ({ kind: 'error', message });
const arity = (name: string): KvReply => err(`ERR wrong number of arguments for '${name.toLowerCase()}' command`);

/** The reply to a meta command, or null if `name` is not one (a guest command). */
export function metaCommand(node: NodeView, name: string, args: readonly string[]): MetaReply | null {
  switch (name) {
    case 'PING':
      if (args.length > 2) return { reply: arity(name) };
      return { reply: args.length === 2 ? bulk(args[1]!) : { kind: 'status', value: 'PONG' } };
    case 'ECHO':
      return { reply: args.length === 2 ? bulk(args[1]!) : arity(name) };
    case 'SELECT':
      if (args.length !== 2) return { reply: arity(name) };
      return { reply: args[1] === '0' ? ok : err('ERR DB index is out of range') };
    case 'QUIT':
      return { reply: ok, close: true };
    case 'COMMAND': {
      const sub = (args[1] ?? '').toUpperCase();
      return { reply: sub === 'COUNT' ? int(0) : arr([]) };
    }
    case 'CLIENT': {
      const sub = (args[1] ?? '').toUpperCase();
      if (sub === 'SETNAME' || sub === 'SETINFO') return { reply: ok };
      if (sub === 'GETNAME') return { reply: nil };
      return { reply: err(`ERR CLIENT ${sub.toLowerCase() || '(no subcommand)'} is not supported by lockstep`) };
    }
    case 'INFO':
      return { reply: bulk(info(node, (args[1] ?? 'all').toLowerCase())) };
    case 'ROLE':
      return { reply: args.length === 1 ? role(node) : arity(name) };
    case 'SENTINEL':
      return { reply: sentinel(node, args) };
    case 'WAIT':
      // Every reply of lockstep already waited for the backup's ack (the output rule), so
      // the writes before this WAIT are on as many replicas as the view has backups.
      if (args.length !== 3) return { reply: arity(name) };
      if (!/^-?\d{1,18}$/.test(args[1]!) || !/^-?\d{1,18}$/.test(args[2]!)) return { reply: err('ERR value is not an integer or out of range') };
      if (args[2]!.startsWith('-')) return { reply: err('ERR timeout is negative') };
      return { reply: int(node.replicaState.role === 'primary' ? node.replicaState.view.backups.length : 0) };
    case 'CONFIG':
      // No runtime-settable config; redis-benchmark asks for `save` and `appendonly`.
      if ((args[1] ?? '').toUpperCase() === 'GET') return { reply: arr([]) };
      return { reply: err('ERR lockstep has no runtime configuration; edit the cluster config file') };
    default:
      return null;
  }
}

function member(config: ClusterConfig, id: string | null): NodeConfig | undefined {
  return id === null ? undefined : config.nodes.find((n) => n.id === id);
}

/** The primary as this replica believes it (itself when it is primary). */
function primaryOf(node: NodeView): NodeConfig | undefined {
  const r = node.replicaState;
  if (r.role === 'primary') return member(node.clusterConfig, node.id);
  const primary = node.knownView.primary;
  return primary === node.id ? undefined : member(node.clusterConfig, primary);
}

function info(node: NodeView, section: string): string {
  const r = node.replicaState;
  const s = coreStatus(r);
  const config = node.clusterConfig;
  const out: string[] = [];
  const want = (name: string): boolean => section === 'all' || section === 'default' || section === 'everything' || section === name;
  if (want('server')) {
    out.push('# Server', 'redis_version:7.0.0-lockstep', 'redis_mode:standalone', `lockstep_cluster:${config.cluster}`, `lockstep_node:${node.id}`, `process_id:${process.pid}`, '');
  }
  if (want('clients')) out.push('# Clients', `connected_clients:${node.clientCount}`, '');
  if (want('persistence')) out.push('# Persistence', 'loading:0', '');
  if (want('replication')) {
    const primary = primaryOf(node);
    const backups = r.view.backups.map((id) => member(config, id)).filter((b): b is NodeConfig => b !== undefined);
    out.push('# Replication', `role:${r.role === 'primary' ? 'master' : 'slave'}`, `lockstep_role:${r.role}`, `epoch:${r.view.epoch}`);
    out.push(`log_index:${s.lastIndex}`, `acked_index:${s.ackedIndex}`, `backup_lag:${s.lagEntries}`, `held_outputs:${s.heldOutputs}`);
    if (r.role === 'primary') {
      out.push(`connected_slaves:${backups.length}`);
      backups.forEach((b, i) => out.push(`slave${i}:ip=${clientOf(b).host},port=${clientOf(b).port},state=online,offset=${s.ackedIndex},lag=${s.lagEntries}`));
      out.push(`master_repl_offset:${s.lastIndex}`);
    } else {
      out.push(`master_host:${(primary ? clientOf(primary).host : '')}`, `master_port:${(primary ? clientOf(primary).port : 0)}`);
      out.push(`master_link_status:${r.role === 'backup' ? 'up' : 'down'}`, `slave_repl_offset:${s.lastIndex}`);
    }
    out.push('');
  }
  return out.join('\r\n');
}

/** ROLE in Redis's reply format. */
function role(node: NodeView): KvReply {
  const r = node.replicaState;
  const s = coreStatus(r);
  if (r.role === 'primary') {
    const backups = r.view.backups.map((id) => member(node.clusterConfig, id)).filter((b): b is NodeConfig => b !== undefined);
    const replicas = backups.map((b) => arr([bulk(clientOf(b).host), bulk(String(clientOf(b).port)), bulk(String(s.ackedIndex))]));
    return arr([bulk('master'), int(s.lastIndex), arr(replicas)]);
  }
  const primary = primaryOf(node);
  const state = r.role === 'backup' ? 'connected' : r.role === 'spare' && r.following ? 'sync' : 'connect';
  return arr([bulk('slave'), bulk((primary ? clientOf(primary).host : '')), int((primary ? clientOf(primary).port : 0)), bulk(state), int(r.role === 'backup' ? s.lastIndex : -1)]);
}

function flat(fields: [string, string][]): KvReply {
  return arr(fields.flatMap(([k, v]) => [bulk(k), bulk(v)]));
}

function sentinel(node: NodeView, args: readonly string[]): KvReply {
  const config = node.clusterConfig;
  const sub = (args[1] ?? '').toLowerCase();
  const name = args[2];
  const masterFields = (p: NodeConfig): [string, string][] => [
    ['name', config.cluster],
    ['ip', clientOf(p).host],
    ['port', String(clientOf(p).port)],
    ['runid', p.id],
    ['flags', 'master'],
    ['num-slaves', String(node.replicaState.view.backups.length)],
    ['num-other-sentinels', String(config.nodes.length - 1)],
    ['quorum', '1'],
    ['config-epoch', String(node.replicaState.view.epoch)],
  ];
  switch (sub) {
    case 'get-master-addr-by-name': {
      if (name !== config.cluster) return nil;
      const p = primaryOf(node);
      return p ? arr([bulk(clientOf(p).host), bulk(String(clientOf(p).port))]) : nil;
    }
    case 'masters': {
      const p = primaryOf(node);
      return arr(p ? [flat(masterFields(p))] : []);
    }
    case 'master': {
      if (name !== config.cluster) return err('ERR No such master with that name');
      const p = primaryOf(node);
      return p ? flat(masterFields(p)) : err('ERR no primary known to this node');
    }
    case 'sentinels': {
      if (name !== config.cluster) return err('ERR No such master with that name');
      return arr(
        config.nodes
          .filter((n) => n.id !== node.id)
          .map((n) => flat([['name', n.id], ['ip', clientOf(n).host], ['port', String(clientOf(n).port)], ['runid', n.id], ['flags', 'sentinel']])),
      );
    }
    case 'failover': {
      // A planned switchover (issue 11 item 1), begun here if this node is the primary; +OK
      // once begun, as Redis Sentinel answers before its failover is done.
      if (name === undefined || args.length !== 3) return arity('sentinel|failover');
      if (name !== config.cluster) return err('ERR No such master with that name');
      const r = node.beginSwitchover(null);
      if (r.started) return ok;
      // Redis Sentinel's own errors where they mean the same, with lockstep's code and reason.
      const prefix = r.code === 'E_SWITCHOVER_NO_BACKUP' ? 'NOGOODSLAVE No suitable replica to promote: ' : r.code === 'E_SWITCHOVER_BUSY' ? 'INPROG Failover already in progress: ' : 'ERR ';
      const where = r.code === 'E_SWITCHOVER_NOT_PRIMARY' ? primaryHint(node) : '';
      return err(`${prefix}${r.code ?? 'E_SWITCHOVER_ABORTED'} ${r.message}${where}`);
    }
    case 'replicas':
    case 'slaves': {
      if (name !== config.cluster) return err('ERR No such master with that name');
      const backups = node.replicaState.view.backups.map((id) => member(config, id)).filter((b): b is NodeConfig => b !== undefined);
      return arr(backups.map((b) => flat([['name', `${clientOf(b).host}:${clientOf(b).port}`], ['ip', clientOf(b).host], ['port', String(clientOf(b).port)], ['runid', b.id], ['flags', 'slave'], ['master-link-status', 'ok']])));
    }
    default:
      return err(`ERR unknown or unsupported SENTINEL subcommand '${sub}' (lockstep answers get-master-addr-by-name, masters, master, sentinels, replicas, failover)`);
  }
}

/** For a SENTINEL FAILOVER asked of another node: where to ask instead. */
function primaryHint(node: NodeView): string {
  const p = primaryOf(node);
  return p && p.id !== node.id ? ` (send SENTINEL FAILOVER to ${p.id} at ${clientOf(p).host}:${clientOf(p).port}, or run lockstep switchover)` : '';
}
