// A lock service with fencing tokens as a lockstep service. Lease times are logical: the client
// passes "now" (any number that only grows, e.g. its own clock in ms) with every call, and the
// service never reads a clock. A lease held past `expires` may be taken by another client; every
// grant carries a fencing token larger than all before it, so a storage server that remembers
// the largest token it has seen refuses writes from a holder whose lease was taken over.
import { defineService } from 'lockstep/guest';

function int(text, what) {
  if (!/^[0-9]{1,15}$/.test(text ?? '')) throw new Error(`${what} must be a non-negative integer, got ${JSON.stringify(text)}`);
  return Number(text);
}

export default defineService({
  name: 'locks',
  initial: () => ({ locks: {}, lastToken: 0, now: 0 }),
  // lockstep sim --service locks.js: clients contend for two locks with growing logical time.
  simulate(random, client, counter) {
    const lock = random(2) === 0 ? 'a' : 'b';
    const now = String(counter * 10 + random(10));
    switch (random(4)) {
      case 0: return ['ACQUIRE', lock, client, now, String(5 + random(30))];
      case 1: return ['RENEW', lock, client, String(1 + random(counter)), now, '20'];
      case 2: return ['RELEASE', lock, client, String(1 + random(counter))];
      default: return ['HOLDER', lock];
    }
  },
  commands: {
    // ACQUIRE lock owner now ttl -> fencing token, or error HELD
    acquire(state, [lock, owner, now, ttl]) {
      if (owner === undefined) throw new Error('usage: ACQUIRE lock owner now ttl');
      const t = Math.max(state.now, int(now, 'now'));
      state.now = t;
      const held = state.locks[lock];
      if (held !== undefined && held.expires > t && held.owner !== owner) throw new Error(`HELD ${lock} by ${held.owner} until ${held.expires}`);
      state.lastToken += 1;
      state.locks[lock] = { owner, token: state.lastToken, expires: t + int(ttl, 'ttl') };
      return state.lastToken;
    },
    // RENEW lock owner token now ttl -> new expiry, or error LOST
    renew(state, [lock, owner, token, now, ttl]) {
      if (owner === undefined) throw new Error('usage: RENEW lock owner token now ttl');
      const t = Math.max(state.now, int(now, 'now'));
      state.now = t;
      const held = state.locks[lock];
      if (held === undefined || held.owner !== owner || held.token !== int(token, 'token') || held.expires <= t) throw new Error(`LOST ${lock}`);
      held.expires = t + int(ttl, 'ttl');
      return held.expires;
    },
    // RELEASE lock owner token -> 1 released, 0 not held by that token
    release(state, [lock, owner, token]) {
      const held = state.locks[lock];
      if (held === undefined || held.owner !== owner || held.token !== int(token, 'token')) return 0;
      delete state.locks[lock];
      return 1;
    },
    // HOLDER lock -> [owner, token, expires] or nil
    holder: {
      readOnly: true,
      run(state, [lock]) {
        const held = state.locks[lock];
        return held === undefined ? null : [held.owner, held.token, held.expires];
      },
    },
  },
});
