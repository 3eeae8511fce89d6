// Parsing an arbiter spec, without touching anything: 'file:DIR', 'memory:' or
// 'etcd://HOST:PORT[,HOST:PORT...][/PREFIX]'. Pure, so the config validator can use it
// without loading any store's client library.

import { isIPv4, isIPv6 } from 'node:net';
import { LockstepError } from '../errors.js';
import type { ArbiterSpec, EtcdEndpoint } from './types.js';

export const ETCD_DEFAULT_PREFIX = '/lockstep';
const ETCD_USAGE = 'use etcd://HOST:PORT[,HOST:PORT...][/PREFIX], e.g. etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/lockstep';
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const PREFIX = /^(\/[A-Za-z0-9._-]+)+$/;

export function parseArbiterSpec(spec: string): ArbiterSpec {
  const invalid = (msg: string): never => {
    throw new LockstepError('E_CONFIG_INVALID', `arbiter spec '${spec}' ${msg}`);
  };
  if (spec.startsWith('file:')) {
    const dir = spec.slice('file:'.length);
    if (dir.trim() === '') invalid('names no directory; use file:DIR');
    return { kind: 'file', dir };
  }
  if (spec === 'memory:') return { kind: 'memory' };
  if (spec.startsWith('etcd://')) {
    const rest = spec.slice('etcd://'.length);
    const slash = rest.indexOf('/');
    const hostList = slash < 0 ? rest : rest.slice(0, slash);
    const prefix = slash < 0 ? ETCD_DEFAULT_PREFIX : rest.slice(slash);
    if (!PREFIX.test(prefix)) invalid(`has prefix '${prefix}': a prefix is /name[/name...] of letters, digits, '.', '_' or '-', no trailing '/'; ${ETCD_USAGE}`);
    const endpoints: EtcdEndpoint[] = [];
    for (const hp of hostList.split(',')) {
      const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(hp) ?? /^([^:[\]]+):(\d{1,5})$/.exec(hp);
      const host = m?.[1];
      const port = Number(m?.[2]);
      const hostOk = host !== undefined && (hp.startsWith('[') ? isIPv6(host) : isIPv4(host) || (HOSTNAME.test(host) && !/^[\d.]+$/.test(host)));
      if (!hostOk || port < 1 || port > 65535) invalid(`has endpoint '${hp}', not HOST:PORT; ${ETCD_USAGE}`);
      if (endpoints.some((e) => e.host === host && e.port === port)) invalid(`names endpoint '${hp}' twice`);
      endpoints.push({ host: host!, port });
    }
    return { kind: 'etcd', endpoints, prefix };
  }
  return invalid(`is not understood; use file:DIR, etcd://HOST:PORT[,...][/PREFIX] (or memory: for a single-process test)`);
}

/** The etcd key a cluster's view lives under. */
export function etcdViewKey(prefix: string, cluster: string): string {
  return `${prefix}/${cluster}/view`;
}

/** The etcd key a cluster's arbiter identity lives under (created once, by lockstep init). */
export function etcdIdentityKey(prefix: string, cluster: string): string {
  return `${prefix}/${cluster}/id`;
}

export function formatEndpoint(e: EtcdEndpoint): string {
  return e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}
