// Validation of peer messages. A peer's message is input from outside the core's trust: a
// malformed one is dropped with a reason, never thrown (the node keeps serving). The checks
// are structural; whether a well-formed message makes sense now (its epoch, its sender) is
// the replica's business.

import type { PeerMessage, View } from './types.js';

function isIndex(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function isNodeIdOrNull(x: unknown): x is string | null {
  return x === null || (typeof x === 'string' && x.length > 0 && x.length <= 256);
}

function viewProblem(v: unknown): string | null {
  if (typeof v !== 'object' || v === null) return 'view is not an object';
  const o = v as Record<string, unknown>;
  if (!isIndex(o.epoch) || o.epoch === 0) return 'view.epoch is not a positive integer';
  if (!isNodeIdOrNull(o.primary) || o.primary === null) return 'view.primary is not a node id';
  if (!Array.isArray(o.backups) || !o.backups.every((b) => isNodeIdOrNull(b) && b !== null)) return 'view.backups is not a list of node ids';
  if (o.backups.includes(o.primary)) return 'view names one node as primary and backup';
  if (new Set(o.backups).size !== o.backups.length) return 'view names one backup twice';
  return null;
}

/** Returns the message if it is well formed, or the reason it is not. */
export function validateMessage(msg: unknown): PeerMessage | string {
  if (typeof msg !== 'object' || msg === null) return 'message is not an object';
  const m = msg as Record<string, unknown>;
  switch (m.type) {
    case 'frame': {
      const vp = viewProblem(m.view);
      if (vp) return `frame: ${vp}`;
      if (!isIndex(m.seq) || m.seq === 0) return 'frame: seq is not a positive integer';
      if (!isIndex(m.prevIndex)) return 'frame: prevIndex is not an index';
      if (!isIndex(m.primaryIndex)) return 'frame: primaryIndex is not an index';
      if (!Array.isArray(m.payloads) || !m.payloads.every((p) => p instanceof Uint8Array)) {
        return 'frame: payloads is not an array of byte arrays';
      }
      if (m.prevIndex + m.payloads.length > m.primaryIndex) return 'frame: entries beyond primaryIndex';
      if (!isIndex(m.commitIndex) || m.commitIndex > m.primaryIndex) return 'frame: commitIndex is not an index up to primaryIndex';
      if (!isIndex(m.term) || !isIndex(m.baseIndex) || !isIndex(m.baseTerm)) return 'frame: term, baseIndex or baseTerm is not an index';
      if (m.term > (m.view as View).epoch || m.baseIndex > m.primaryIndex || (m.term > 0 && m.baseTerm >= m.term)) return 'frame: term, baseIndex or baseTerm out of range';
      if (m.pendingView !== null) {
        const pp = viewProblem(m.pendingView);
        if (pp) return `frame: pendingView: ${pp}`;
      }
      return msg as PeerMessage;
    }
    case 'chunk': {
      const vp = viewProblem(m.view);
      if (vp) return `chunk: ${vp}`;
      if (!isIndex(m.seq) || m.seq === 0) return 'chunk: seq is not a positive integer';
      if (!isIndex(m.index)) return 'chunk: index is not an index';
      if (!isIndex(m.chunk)) return 'chunk: chunk is not a chunk number';
      if (typeof m.last !== 'boolean') return 'chunk: last is not a boolean';
      if (!(m.data instanceof Uint8Array)) return 'chunk: data is not a byte array';
      if (typeof m.keep !== 'boolean') return 'chunk: keep is not a boolean';
      if (m.keep && (m.chunk !== 0 || !m.last || m.data.length !== 0 || m.index === 0)) return 'chunk: a keep chunk is the single, empty, last chunk at an index above 0';
      return msg as PeerMessage;
    }
    case 'chunkAck':
      if (!isIndex(m.epoch) || m.epoch === 0) return 'chunkAck: epoch is not a positive integer';
      if (!isIndex(m.seq) || m.seq === 0) return 'chunkAck: seq is not a positive integer';
      if (!isIndex(m.index)) return 'chunkAck: index is not an index';
      if (!isIndex(m.chunks)) return 'chunkAck: chunks is not a count';
      if (typeof m.gap !== 'boolean') return 'chunkAck: gap is not a boolean';
      return msg as PeerMessage;
    case 'ack':
      if (!isIndex(m.epoch) || m.epoch === 0) return 'ack: epoch is not a positive integer';
      if (!isIndex(m.seq) || m.seq === 0) return 'ack: seq is not a positive integer';
      if (!isIndex(m.ackedIndex)) return 'ack: ackedIndex is not an index';
      if (typeof m.gap !== 'boolean') return 'ack: gap is not a boolean';
      return msg as PeerMessage;
    case 'refuse':
      if (!isIndex(m.epoch)) return 'refuse: epoch is not an index';
      if (typeof m.reason !== 'string') return 'refuse: reason is not a string';
      return msg as PeerMessage;
    case 'join':
      if (!isIndex(m.index) || !isIndex(m.logTerm)) return 'join: index or logTerm is not an index';
      if ((m.index === 0) !== (m.logTerm === 0)) return 'join: index and logTerm are both 0 (no state) or both above 0';
      return msg as PeerMessage;
    default:
      return `unknown message type ${JSON.stringify(String(m.type)).slice(0, 40)}`;
  }
}

export function isView(v: unknown): v is View {
  return viewProblem(v) === null;
}
