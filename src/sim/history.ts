// Key/value histories as the linearizability checker reads them: Jepsen-style events (one JSON
// object a line: process, type invoke|ok|fail|info, f, key, value, time) and their pairing into
// operations with a call and a return. Pure (no node imports) so the simulator can hand its own
// event arrays to pairOperations without a file. Pairing keeps each event's position (callSeq /
// retSeq) because equal times are ordered by file order, which the times alone cannot say.

import { LockstepError } from '../errors.js';

export type OpF = 'get' | 'set' | 'append' | 'del';
export type EventType = 'invoke' | 'ok' | 'fail' | 'info';

export interface HistoryEvent {
  readonly process: number;
  readonly type: EventType;
  readonly f: OpF;
  readonly key: string;
  readonly value: string | null;
  readonly time: number;
}

export interface Operation {
  readonly id: number;
  readonly process: number;
  readonly f: OpF;
  readonly key: string;
  /** The written value for set/append; null for get/del. */
  readonly input: string | null;
  /** The value a get read (null = key missing); null for set/append/del (not checked). */
  readonly output: string | null;
  readonly call: number;
  /** Infinity if the outcome is unknown (info, or no completion by the end). */
  readonly ret: number;
  readonly outcome: 'ok' | 'info';
  /** Positions of the invoke / completion in the event sequence; they order events whose times
   *  tie. Optional: without them (on any op of a key) equal times count as concurrent. */
  readonly callSeq?: number;
  readonly retSeq?: number;
}

const OP_FS: readonly string[] = ['get', 'set', 'append', 'del'];
const TYPES: readonly string[] = ['invoke', 'ok', 'fail', 'info'];

/** The 1-based line of each event that parseHistoryLines made, for pairing errors. */
const lineOf = new WeakMap<HistoryEvent, number>();

function show(x: unknown): string {
  let s: string;
  try {
    s = JSON.stringify(x) ?? String(x);
  } catch {
    s = Array.isArray(x) ? '[an array nested too deep to show]' : '{an object nested too deep to show}';
  }
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

function toEvent(v: unknown, where: string): HistoryEvent {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new LockstepError('E_HISTORY_EVENT', `${where}: expected a JSON object, got ${show(v)}`);
  }
  const o = v as Record<string, unknown>;
  const need = (name: string, ok: (x: unknown) => boolean, want: string): void => {
    const x = o[name];
    if (ok(x)) return;
    const why = x === undefined ? 'is missing' : `must be ${want}, got ${show(x)}`;
    throw new LockstepError('E_HISTORY_EVENT', `${where}: field "${name}" ${why}`);
  };
  need('process', (x) => Number.isSafeInteger(x), 'an integer');
  need('type', (x) => typeof x === 'string' && TYPES.includes(x), 'one of invoke, ok, fail, info');
  need('f', (x) => typeof x === 'string' && OP_FS.includes(x), 'one of get, set, append, del');
  need('key', (x) => typeof x === 'string', 'a string');
  need('value', (x) => x === undefined || x === null || typeof x === 'string', 'a string or null');
  need('time', (x) => typeof x === 'number' && Number.isFinite(x), 'a finite number');
  const ev: HistoryEvent = {
    process: o['process'] as number,
    type: o['type'] as EventType,
    f: o['f'] as OpF,
    key: o['key'] as string,
    value: (o['value'] ?? null) as string | null,
    time: o['time'] as number,
  };
  if (ev.type === 'invoke' && (ev.f === 'set' || ev.f === 'append') && ev.value === null) {
    throw new LockstepError('E_HISTORY_EVENT', `${where}: field "value" must be a string for an invoke of ${ev.f}`);
  }
  return ev;
}

/** Parses JSON lines (blank lines skipped). Errors name the 1-based line and the field. */
export function parseHistoryLines(text: string): HistoryEvent[] {
  const events: HistoryEvent[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i] ?? '';
    if (raw.trim() === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch (e) {
      throw new LockstepError('E_HISTORY_PARSE', `line ${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    const ev = toEvent(v, `line ${i + 1}`);
    lineOf.set(ev, i + 1);
    events.push(ev);
  }
  return events;
}

type Draft = Omit<Operation, 'id'>;

/** Pairs each invoke with its process's next completion. fail: dropped; info or no completion:
 *  ret = Infinity (a get of unknown outcome constrains nothing and is dropped). Result in call
 *  order, ids 0..n-1. Events not from parseHistoryLines are validated too. */
export function pairOperations(events: readonly HistoryEvent[]): Operation[] {
  const pending = new Map<number, { ev: HistoryEvent; seq: number; where: string }>();
  const drafts: Draft[] = [];
  const keep = (inv: HistoryEvent, seq: number, outcome: 'ok' | 'info', ret: number, retSeq: number, output: string | null): void => {
    if (outcome === 'info' && inv.f === 'get') return;
    drafts.push({
      process: inv.process, f: inv.f, key: inv.key,
      input: inv.f === 'set' || inv.f === 'append' ? inv.value : null,
      output: inv.f === 'get' ? output : null,
      call: inv.time, ret, outcome, callSeq: seq, retSeq,
    });
  };
  let lastTime = -Infinity;
  events.forEach((ev, i) => {
    const line = lineOf.get(ev);
    const where = line === undefined ? `event ${i + 1}` : `line ${line}`;
    if (line === undefined) toEvent(ev, where);
    const order = (msg: string): LockstepError => new LockstepError('E_HISTORY_ORDER', `${where}: ${msg}`);
    if (ev.time < lastTime) throw order(`time ${ev.time} is before the previous event's time ${lastTime}`);
    lastTime = ev.time;
    const p = pending.get(ev.process);
    if (ev.type === 'invoke') {
      if (p) throw order(`process ${ev.process} invokes ${ev.f} while its ${p.ev.f} invoked at ${p.where} is pending`);
      pending.set(ev.process, { ev, seq: i, where });
      return;
    }
    if (!p) throw order(`${ev.type} of ${ev.f} for process ${ev.process}, which has no pending invoke`);
    if (p.ev.f !== ev.f || p.ev.key !== ev.key) {
      throw order(`${ev.type} of ${ev.f} ${show(ev.key)} for process ${ev.process} does not match its invoke of ${p.ev.f} ${show(p.ev.key)} at ${p.where}`);
    }
    pending.delete(ev.process);
    if (ev.type === 'ok') keep(p.ev, p.seq, 'ok', ev.time, i, ev.value);
    else if (ev.type === 'info') keep(p.ev, p.seq, 'info', Infinity, Infinity, null);
  });
  for (const p of pending.values()) keep(p.ev, p.seq, 'info', Infinity, Infinity, null);
  drafts.sort((a, b) => (a.callSeq ?? 0) - (b.callSeq ?? 0));
  return drafts.map((d, id) => ({ id, ...d }));
}
