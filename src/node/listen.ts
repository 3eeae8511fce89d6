// Listening on a configured address, with the one error a node reports when it cannot.

import type net from 'node:net';
import { LockstepError } from '../errors.js';
import { formatAddress, type NodeAddress } from './config.js';

/**
 * Listen; once listening, errors the server reports later (EMFILE on accept, say) go to
 * `onError` rather than end the process as an unhandled 'error' event.
 */
export function listenOn(server: net.Server, addr: NodeAddress, onError: (e: NodeJS.ErrnoException) => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject);
      server.on('error', onError);
      resolve();
    });
  });
}

/** Listen, or throw E_LISTEN naming what could not listen where, and why. */
export async function listenOrExplain(what: string, server: net.Server, addr: NodeAddress, onError: (e: NodeJS.ErrnoException) => void): Promise<void> {
  await explainListen(what, addr, () => listenOn(server, addr, onError));
}

export async function explainListen(what: string, addr: NodeAddress, go: () => Promise<void>): Promise<void> {
  try {
    await go();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new LockstepError('E_LISTEN', `cannot listen on the ${what} address ${formatAddress(addr)}: ${code}`);
  }
}
