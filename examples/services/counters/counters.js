// Named counters as a full StateMachine (defineMachine), not defineService: the machine lays
// out its own log entries in a compact binary form, logs in state-transfer mode only the
// counter a command changed (not the whole state), and keeps its digest incremental, so
// a command costs the same however many counters there are.
//
//   INCRBY name n   add the integer n (may be negative); replies the new value
//   GET name        the value (0 if absent); read-only
//   DEL name        remove it; replies 1 if it existed, else 0
//   SUM             the total over all counters; read-only
//
// Commands are the client's arguments (strings); replies are RESP values ({ kind, ... }).

import { defineMachine, ByteReader, ByteWriter, Hash64, SumDigest, kvCodec } from 'lockstep/guest';

const OP_INCRBY = 1, OP_DEL = 2, OP_OTHER = 0;
const MAX = 2 ** 53 - 1;

function createCounters() {
  let counters = new Map(); // name -> number (safe integer)
  const sum = new SumDigest(); // order-independent: the sum of one hash per counter
  const h = new Hash64();
  const hashOf = (name, value) => h.reset().str(name).str(String(value));
  const set = (name, value) => {
    const old = counters.get(name);
    if (old !== undefined) sum.sub(hashOf(name, old));
    if (value === null) counters.delete(name);
    else {
      counters.set(name, value);
      sum.add(hashOf(name, value));
    }
  };
  const int = (v) => ({ kind: 'integer', value: BigInt(v) });
  const error = (message) => ({ kind: 'error', message });
  const arity = (cmd, n) => cmd.length === n ? null : error(`ERR wrong number of arguments for '${cmd[0].toLowerCase()}' command`);

  return {
    name: 'counters',
    codec: {
      // INCRBY and DEL in a byte or two plus the name; anything else (an unknown command a
      // client with an id sent, logged with its error reply) as its argument list.
      encodeCommand(cmd) {
        const op = cmd[0].toUpperCase();
        const w = new ByteWriter(32);
        if (op === 'INCRBY' && cmd.length === 3) return w.u8(OP_INCRBY).text(cmd[1]).text(cmd[2]).finish();
        if (op === 'DEL' && cmd.length === 2) return w.u8(OP_DEL).text(cmd[1]).finish();
        w.u8(OP_OTHER).varuint(cmd.length);
        for (const a of cmd) w.text(a);
        return w.finish();
      },
      decodeCommand(bytes) {
        const r = new ByteReader(bytes, 'counters command');
        const op = r.u8();
        let cmd;
        if (op === OP_INCRBY) cmd = ['INCRBY', r.text(), r.text()];
        else if (op === OP_DEL) cmd = ['DEL', r.text()];
        else if (op === OP_OTHER) {
          const n = r.varuint();
          cmd = [];
          for (let i = 0; i < n; i++) cmd.push(r.text());
        } else r.corrupt(`unknown op ${op}`);
        r.end();
        return cmd;
      },
      encodeReply: (reply) => kvCodec.encodeReply(reply),
      decodeReply: (bytes) => kvCodec.decodeReply(bytes),
      // A change is one counter's new value (or its removal): state-transfer logs just that.
      encodeChange: ({ name, value }) => value === null ? new ByteWriter(16).u8(0).text(name).finish() : new ByteWriter(24).u8(1).text(name).f64(value).finish(),
      decodeChange(bytes) {
        const r = new ByteReader(bytes, 'counters change');
        const has = r.u8();
        const name = r.text();
        const value = has === 1 ? r.f64() : null;
        r.end();
        if (has > 1 || (value !== null && !Number.isSafeInteger(value))) r.corrupt('bad change');
        return { name, value };
      },
    },
    isReadOnly: (cmd) => ['GET', 'SUM'].includes(cmd[0].toUpperCase()),
    errorReply: (message) => error(message),
    execute(cmd) {
      const op = cmd[0].toUpperCase();
      switch (op) {
        case 'INCRBY': {
          const bad = arity(cmd, 3);
          if (bad) return { reply: bad, change: null };
          // Validate everything before changing anything.
          if (!/^-?[0-9]{1,16}$/.test(cmd[2])) return { reply: error('ERR value is not an integer or out of range'), change: null };
          const next = (counters.get(cmd[1]) ?? 0) + Number(cmd[2]);
          if (Math.abs(next) > MAX) return { reply: error('ERR increment or decrement would overflow'), change: null };
          set(cmd[1], next);
          return { reply: int(next), change: { name: cmd[1], value: next } };
        }
        case 'GET': {
          const bad = arity(cmd, 2);
          return { reply: bad ?? int(counters.get(cmd[1]) ?? 0), change: null };
        }
        case 'DEL': {
          const bad = arity(cmd, 2);
          if (bad) return { reply: bad, change: null };
          if (!counters.has(cmd[1])) return { reply: int(0), change: null };
          set(cmd[1], null);
          return { reply: int(1), change: { name: cmd[1], value: null } };
        }
        case 'SUM': {
          let total = 0;
          for (const v of counters.values()) total += v;
          return { reply: int(total), change: null };
        }
        default:
          return { reply: error(`ERR unknown command '${cmd[0].slice(0, 64)}' for service counters`), change: null };
      }
    },
    applyChange({ name, value }) {
      set(name, value);
    },
    snapshot() {
      const w = new ByteWriter(64 + counters.size * 24).varuint(counters.size);
      for (const [name, value] of counters) w.text(name).f64(value);
      return w.finish();
    },
    restore(bytes) {
      const r = new ByteReader(bytes, 'counters snapshot');
      const n = r.varuint();
      const next = [];
      for (let i = 0; i < n; i++) next.push([r.text(), r.f64()]);
      r.end();
      counters = new Map();
      sum.clear();
      for (const [name, value] of next) set(name, value);
    },
    digest: () => sum.hex(),
  };
}

export default defineMachine({
  create: createCounters,
  // lockstep sim --service: a few counters, small increments, an occasional DEL.
  simulate(random) {
    const name = ['a', 'b', 'c'][random(3)];
    const roll = random(10);
    if (roll < 6) return ['INCRBY', name, String(random(21) - 10)];
    if (roll < 9) return random(2) === 0 ? ['GET', name] : ['SUM'];
    return ['DEL', name];
  },
});
