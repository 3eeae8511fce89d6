#!/usr/bin/env node
// Runs the built kvserver.wasm against a scripted, in-memory stand-in for the
// socket half of lockstep's host: fd 4 is a listening socket, accepted
// connections get fds 10, 11, ...; sock_accept, sock_recv, sock_send,
// sock_shutdown, poll_oneoff, fd_fdstat_get, fd_fdstat_set_flags and fd_close
// are served here for those fds, everything else by node:wasi.
//
// It checks the wasm build itself (wasi-libc's accept/recv/send/poll/fcntl as
// compiled in), which native-test.sh cannot: partial sends, EAGAIN, peers
// that reset, half-close, many connections; the first instance runs with
// --persist /kv.log, and a second one replays that log. No real sockets are
// used; files are node:wasi's, in a temporary directory.
//
//   node examples/kvserver/mock-host-test.mjs [--blocking] [--seed=N]
//
// --blocking: the host refuses O_NONBLOCK (fd_fdstat_set_flags -> ENOTSUP),
// as a host without non-blocking sockets would.
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WASI } from 'node:wasi';
import process from 'node:process';

const here = dirname(fileURLToPath(import.meta.url));
const blocking = process.argv.includes('--blocking');
const seedArg = process.argv.find((a) => a.startsWith('--seed='));
let seed = seedArg ? Number(seedArg.slice(7)) : 1;
function rand(n) {
  // xorshift32: deterministic per seed
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed % n;
}

const E = { SUCCESS: 0, AGAIN: 6, BADF: 8, CONNRESET: 15, INVAL: 28, NOTSUP: 58, PIPE: 64 };
const LISTEN_FD = 4;
const FDFLAGS_NONBLOCK = 4;

class Idle extends Error {}

// ---- the scenario --------------------------------------------------------
// Each step happens when the guest has nothing left to do (poll would block).
const steps = [];
const expect = new Map(); // client -> { lines, closedByServer }
function step(f) {
  steps.push(f);
}

const bigValue = 'v'.repeat(65536);
const clients = [];
function client(name) {
  const c = { name, fd: -1, toServer: [], received: '', eof: false, reset: false, closedByServer: false, window: Infinity, shutWr: false };
  clients.push(c);
  return c;
}
const pendingAccept = [];

// A: basic commands, sent in pieces split at random places.
const A = client('A');
step(() => pendingAccept.push(A));
{
  const text =
    'SET a 1\r\nGET a\nINCR a\nINCR a\nAPPEND a xyz\nGET a\nDEL a\nDEL a\nGET a\nSET b x y  z\nGET b\nCOUNT\nINCR b\nNOPE\n\n';
  let i = 0;
  while (i < text.length) {
    const n = 1 + rand(7);
    const piece = text.slice(i, i + n);
    step(() => A.toServer.push(piece));
    i += n;
  }
}
expect.set(A, {
  lines: ['OK', 'VALUE 1', '2', '3', '4', 'VALUE 3xyz', '1', '0', 'NIL', 'OK', 'VALUE x y  z', '1', 'ERR value is not an integer', "ERR unknown command 'NOPE'", 'ERR empty command'],
  closedByServer: false,
});

// B: a slow reader of big replies (send window of 1000 bytes at a time).
const B = client('B');
B.window = 1000;
step(() => pendingAccept.push(B));
step(() => B.toServer.push(`SET big ${bigValue}\n` + 'GET big\n'.repeat(6)));
for (let i = 0; i < 500; i++) step(() => (B.window += 1000));
expect.set(B, { lines: ['OK', ...Array(6).fill(`VALUE ${bigValue}`)], closedByServer: false });

// C: half-close after commands; the last line has no newline.
const C = client('C');
step(() => pendingAccept.push(C));
step(() => C.toServer.push('SET c 7\nGET c'));
step(() => (C.eof = true));
expect.set(C, { lines: ['OK', 'VALUE 7'], closedByServer: true });

// D: QUIT with more after it.
const D = client('D');
step(() => pendingAccept.push(D));
step(() => D.toServer.push('COUNT\nQUIT\nSET never 1\n'));
step(() => (D.eof = true)); // the peer closes once it has BYE
expect.set(D, { lines: ['3', 'BYE'], closedByServer: true });

// E: resets mid-line; F: resets with replies pending.
const E1 = client('E');
step(() => pendingAccept.push(E1));
step(() => E1.toServer.push('SET e partial'));
step(() => (E1.reset = true));
expect.set(E1, { lines: [], closedByServer: true });
const F = client('F');
F.window = 0;
step(() => pendingAccept.push(F));
step(() => F.toServer.push('GET big\n'));
step(() => (F.reset = true));
expect.set(F, { lines: [], closedByServer: true });

// G: an overlong line.
const G = client('G');
step(() => pendingAccept.push(G));
for (let i = 0; i < 20; i++) step(() => G.toServer.push('x'.repeat(5000)));
step(() => (G.eof = true));
expect.set(G, { lines: ['ERR line too long'], closedByServer: true });

// M0..M69: 70 connections at once while A and B are still open: 62 fit in
// the 64 slots, 8 are refused.
const many = [];
step(() => {
  for (let i = 0; i < 70; i++) {
    const c = client(`M${i}`);
    many.push(c);
    pendingAccept.push(c);
  }
});
step(() => many.forEach((c) => c.toServer.push('INCR m\n')));
step(() => many.forEach((c) => (c.eof = true)));

// Z: after all that, the store is consistent.
const Z = client('Z');
step(() => pendingAccept.push(Z));
step(() => Z.toServer.push('GET e\nGET never\nGET c\nGET b\n'));
step(() => (Z.eof = true));

// ---- the host half -------------------------------------------------------
// Runs one guest instance until it ends or waits with the script used up.
async function runGuest(args, dir) {
  const conns = new Map(); // fd -> client
  let nextFd = 10;
  let memory;
  const view = () => new DataView(memory.buffer);
  const bytes = () => new Uint8Array(memory.buffer);
  let nonblock = new Map(); // fd -> bool
  let calls = { accept: 0, recv: 0, send: 0, poll: 0, again: 0 };

  function readable(c) {
    return c.reset || c.toServer.length > 0 || c.eof;
  }
  function writable(c) {
    return c.reset || c.window > 0;
  }
  function advance() {
    const f = steps.shift();
    if (!f) throw new Idle('script done');
    f();
  }

  const wasi = new WASI({ version: 'preview1', args, env: { LOCKSTEP_LISTEN_FDS: '1' }, preopens: { '/': dir }, returnOnExit: true });
  const raw = wasi.getImportObject().wasi_snapshot_preview1;
  // node:wasi numbers the files it opens from 4 up, where the guest expects
  // its listening socket: give those files guest fds from 100 up instead.
  const fileFds = new Map(); // guest fd -> node:wasi fd
  let nextFileFd = 100;
  const base = {};
  for (const [name, f] of Object.entries(raw)) {
    base[name] = name.startsWith('fd_') || name.startsWith('path_') ? (fd, ...rest) => f(fileFds.get(fd) ?? fd, ...rest) : f;
  }
  base.path_open = (...a) => {
    const fdPtr = a[a.length - 1];
    a[0] = fileFds.get(a[0]) ?? a[0];
    const r = raw.path_open(...a);
    if (r === 0) {
      const g = nextFileFd++;
      fileFds.set(g, view().getUint32(fdPtr, true));
      view().setUint32(fdPtr, g, true);
    }
    return r;
  };
  const fdCloseFile = base.fd_close;
  base.fd_close = (fd) => {
    const r = fdCloseFile(fd);
    if (r === 0) fileFds.delete(fd);
    return r;
  };
  const imp = { ...base };

  imp.fd_fdstat_get = (fd, ptr) => {
    if (fd !== LISTEN_FD && !conns.has(fd)) return base.fd_fdstat_get(fd, ptr);
    const v = view();
    for (let i = 0; i < 24; i++) v.setUint8(ptr + i, 0);
    v.setUint8(ptr, 6); // SOCKET_STREAM
    v.setUint16(ptr + 2, nonblock.get(fd) ? FDFLAGS_NONBLOCK : 0, true);
    v.setBigUint64(ptr + 8, 0x1fffffffn, true);
    return E.SUCCESS;
  };
  imp.fd_fdstat_set_flags = (fd, flags) => {
    if (fd !== LISTEN_FD && !conns.has(fd)) return base.fd_fdstat_set_flags(fd, flags);
    if (blocking) return E.NOTSUP;
    nonblock.set(fd, (flags & FDFLAGS_NONBLOCK) !== 0);
    return E.SUCCESS;
  };
  imp.fd_close = (fd) => {
    if (!conns.has(fd)) return base.fd_close(fd);
    conns.get(fd).closedByServer = true;
    conns.delete(fd);
    return E.SUCCESS;
  };
  imp.sock_accept = (fd, flags, retptr) => {
    calls.accept++;
    if (fd !== LISTEN_FD) return E.BADF;
    while (pendingAccept.length === 0) {
      if (nonblock.get(fd)) {
        calls.again++;
        return E.AGAIN;
      }
      advance(); // a blocking accept waits for the script
    }
    const c = pendingAccept.shift();
    c.fd = nextFd++;
    conns.set(c.fd, c);
    nonblock.set(c.fd, (flags & FDFLAGS_NONBLOCK) !== 0);
    view().setUint32(retptr, c.fd, true);
    return E.SUCCESS;
  };
  imp.sock_recv = (fd, iovs, iovsLen, riFlags, nreadPtr, roFlagsPtr) => {
    calls.recv++;
    const c = conns.get(fd);
    if (!c) return E.BADF;
    while (!readable(c)) {
      if (nonblock.get(fd)) {
        calls.again++;
        return E.AGAIN;
      }
      advance();
    }
    if (c.reset) return E.CONNRESET;
    const v = view();
    let n = 0;
    if (c.toServer.length > 0) {
      let data = Buffer.from(c.toServer[0], 'latin1');
      for (let i = 0; i < iovsLen && data.length > 0; i++) {
        const p = v.getUint32(iovs + 8 * i, true);
        const len = v.getUint32(iovs + 8 * i + 4, true);
        const k = Math.min(len, data.length);
        bytes().set(data.subarray(0, k), p);
        data = data.subarray(k);
        n += k;
      }
      if (data.length === 0) c.toServer.shift();
      else c.toServer[0] = data.toString('latin1');
    }
    v.setUint32(nreadPtr, n, true);
    v.setUint16(roFlagsPtr, 0, true);
    return E.SUCCESS;
  };
  imp.sock_send = (fd, iovs, iovsLen, siFlags, nwrittenPtr) => {
    calls.send++;
    const c = conns.get(fd);
    if (!c) return E.BADF;
    if (c.shutWr) return E.PIPE;
    while (!writable(c)) {
      if (nonblock.get(fd)) {
        calls.again++;
        return E.AGAIN;
      }
      advance();
    }
    if (c.reset) return E.PIPE;
    const v = view();
    // Take a random part of what is offered: partial writes are the rule here.
    let offered = 0;
    for (let i = 0; i < iovsLen; i++) offered += v.getUint32(iovs + 8 * i + 4, true);
    let take = Math.min(c.window, offered, 1 + rand(Math.max(1, Math.min(offered, 70000))));
    const n = take;
    for (let i = 0; i < iovsLen && take > 0; i++) {
      const p = v.getUint32(iovs + 8 * i, true);
      const len = v.getUint32(iovs + 8 * i + 4, true);
      const k = Math.min(len, take);
      c.received += Buffer.from(bytes().subarray(p, p + k)).toString('latin1');
      take -= k;
    }
    c.window -= n;
    v.setUint32(nwrittenPtr, n, true);
    return E.SUCCESS;
  };
  imp.sock_shutdown = (fd, how) => {
    const c = conns.get(fd);
    if (!c) return E.BADF;
    if (how & 2) {
      c.shutWr = true;
      c.closedByServer = true; // no more bytes will come: as good as closed for the client
    }
    return E.SUCCESS;
  };
  imp.poll_oneoff = (inPtr, outPtr, nsubs, neventsPtr) => {
    calls.poll++;
    for (;;) {
      const v = view();
      let nev = 0;
      let clockSub = null;
      for (let i = 0; i < nsubs; i++) {
        const s = inPtr + 48 * i;
        const userdata = v.getBigUint64(s, true);
        const tag = v.getUint8(s + 8);
        if (tag === 0) {
          clockSub = userdata;
          continue;
        }
        const fd = v.getUint32(s + 16, true);
        let ready = false;
        let hangup = false;
        if (fd === LISTEN_FD) ready = tag === 1 && pendingAccept.length > 0;
        else {
          const c = conns.get(fd);
          if (!c) ready = true; // reported as an error below
          else if (tag === 1) {
            ready = readable(c);
            hangup = c.eof && c.toServer.length === 0;
          } else ready = writable(c);
        }
        if (!ready) continue;
        const o = outPtr + 32 * nev++;
        for (let j = 0; j < 32; j++) v.setUint8(o + j, 0);
        v.setBigUint64(o, userdata, true);
        v.setUint16(o + 8, fd === LISTEN_FD || conns.has(fd) ? E.SUCCESS : E.BADF, true);
        v.setUint8(o + 10, tag);
        v.setBigUint64(o + 16, 1n, true);
        v.setUint16(o + 24, hangup ? 1 : 0, true);
      }
      if (nev === 0 && clockSub !== null) {
        // Only a zero timeout is used by kvserver: it expires at once.
        const o = outPtr;
        for (let j = 0; j < 32; j++) v.setUint8(o + j, 0);
        v.setBigUint64(o, clockSub, true);
        v.setUint8(o + 10, 0);
        nev = 1;
      }
      if (nev > 0) {
        v.setUint32(neventsPtr, nev, true);
        return E.SUCCESS;
      }
      advance();
    }
  };

  const stdout = [];
  // Capture the guest's stdout through node:wasi: run with a pipe is awkward,
  // so wrap fd_write for fd 1.
  imp.fd_write = (fd, iovs, iovsLen, nwrittenPtr) => {
    if (fd !== 1) return base.fd_write(fd, iovs, iovsLen, nwrittenPtr);
    const v = view();
    let n = 0;
    for (let i = 0; i < iovsLen; i++) {
      const p = v.getUint32(iovs + 8 * i, true);
      const len = v.getUint32(iovs + 8 * i + 4, true);
      stdout.push(Buffer.from(bytes().subarray(p, p + len)).toString('latin1'));
      n += len;
    }
    v.setUint32(nwrittenPtr, n, true);
    return E.SUCCESS;
  };

  const mod = await WebAssembly.compile(readFileSync(join(here, 'kvserver.wasm')));
  const inst = await WebAssembly.instantiate(mod, { wasi_snapshot_preview1: imp });
  memory = inst.exports.memory;
  let endedBy;
  try {
    const code = wasi.start(inst);
    endedBy = `exit ${code}`;
  } catch (e) {
    if (!(e instanceof Idle)) throw e;
    endedBy = 'idle';
  }
  return { endedBy, stdout: stdout.join(''), calls };

}

const dir = mkdtempSync(join(tmpdir(), 'kvmock-'));
const run1 = await runGuest(['kvserver', '--persist', '/kv.log'], dir);
const endedBy = run1.endedBy;
const calls = run1.calls;
const stdout = [run1.stdout];

// ---- checks ----------------------------------------------------------------
let passed = 0;
let failed = 0;
function check(name, ok, detail = '') {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok ? '' : ': ' + detail}`);
}
const lines = (c) => (c.received === '' ? [] : c.received.replace(/\n$/, '').split('\n'));
check('the guest ran the whole script and waited for more', endedBy === 'idle', endedBy);
for (const [c, exp] of expect) {
  const got = lines(c);
  const same = JSON.stringify(got) === JSON.stringify(exp.lines);
  check(`client ${c.name}: replies`, same, `got ${JSON.stringify(got).slice(0, 300)}`);
  check(`client ${c.name}: ${exp.closedByServer ? 'closed' : 'still open'}`, c.closedByServer === exp.closedByServer, `closedByServer=${c.closedByServer}`);
}
{
  const served = many.filter((c) => lines(c)[0] !== 'ERR too many connections');
  const refused = many.filter((c) => lines(c)[0] === 'ERR too many connections');
  // Open at that point: A and B (64 - 2 = 62 free slots).
  check('62 of the 70 simultaneous connections served, 8 refused', served.length === 62 && refused.length === 8, `served ${served.length}, refused ${refused.length}`);
  const incrs = served.map((c) => Number(lines(c)[0])).sort((a, b) => a - b);
  check('their INCRs were 1..62', JSON.stringify(incrs) === JSON.stringify(Array.from({ length: 62 }, (_, i) => i + 1)), JSON.stringify(incrs).slice(0, 200));
  check('all of them closed', many.every((c) => c.closedByServer), '');
}
check('client Z: the store after it all', JSON.stringify(lines(Z)) === JSON.stringify(['NIL', 'NIL', 'VALUE 7', 'VALUE x y  z']), JSON.stringify(lines(Z)));
const out = stdout.join('');
check('stdout: the replay line, then the listening line', /^kvserver: replayed 0 commands from \/kv.log \(0 lines skipped\), 0 keys\nkvserver: listening on fd 4\n/.test(out), out.slice(0, 120));
check('stdout: one accept line per accepted connection', (out.match(/ accepted on fd 4 as fd /g) || []).length === clients.length - 8, `${(out.match(/ accepted /g) || []).length}`);
check(`partial sends and EAGAIN were exercised (${JSON.stringify(calls)})`, calls.send > 100 && (blocking || calls.again > 0), '');
// A second instance replays the log the first one wrote.
steps.length = 0;
pendingAccept.length = 0;
const P = client('P');
step(() => pendingAccept.push(P));
step(() => P.toServer.push('GET a\nGET b\nGET c\nGET e\nGET m\nCOUNT\nGET big\n'));
step(() => (P.eof = true));
const run2 = await runGuest(['kvserver', '--persist', 'kv.log'], dir);
check('restart with --persist: replayed', /kvserver: replayed \d+ commands from kv.log \(0 lines skipped\), 4 keys\n/.test(run2.stdout), run2.stdout.slice(0, 200));
check('restart with --persist: the store', JSON.stringify(lines(P)) === JSON.stringify(['NIL', 'VALUE x y  z', 'VALUE 7', 'NIL', 'VALUE 62', '4', `VALUE ${bigValue}`]), JSON.stringify(lines(P)).slice(0, 300));
rmSync(dir, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed === 0 ? 0 : 1;
