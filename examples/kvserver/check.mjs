#!/usr/bin/env node
// Protocol checks for a running kvserver, whatever runs it (lockstep's host,
// or the native build of native-test.sh). No dependencies.
//
//   node examples/kvserver/check.mjs [HOST:]PORT [--fresh] [--phase=write|verify]
//
// --fresh: the store is expected to start empty (checks COUNT exactly).
// --phase=write / --phase=verify: the persistence check in two halves, with
// a restart of the server in between (native-test.sh does that).
// Prints one line per check and "N passed, N failed"; exits 1 on a failure.
import net from 'node:net';
import process from 'node:process';

const args = process.argv.slice(2);
const target = args.find((a) => !a.startsWith('--'));
if (!target) {
  console.error('usage: check.mjs [HOST:]PORT [--fresh] [--phase=write|verify]');
  process.exit(64);
}
const [host, port] = target.includes(':') ? target.split(':') : ['127.0.0.1', target];
const fresh = args.includes('--fresh');
const phase = (args.find((a) => a.startsWith('--phase=')) || '').slice('--phase='.length);
const TIMEOUT_MS = 20000;

// A connection that collects reply lines and notices the close.
class Client {
  constructor() {
    this.buf = Buffer.alloc(0);
    this.lines = [];
    this.waiters = [];
    this.closed = false;
    this.error = null;
    this.sock = net.connect({ host, port: Number(port) });
    this.sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      let i;
      while ((i = this.buf.indexOf(10)) >= 0) {
        this.lines.push(this.buf.subarray(0, i).toString('latin1'));
        this.buf = this.buf.subarray(i + 1);
      }
      this.wake();
    });
    this.sock.on('error', (e) => {
      this.error = e;
      this.closed = true;
      this.wake();
    });
    this.sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }
  wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  ready() {
    return new Promise((resolve, reject) => {
      this.sock.once('connect', resolve);
      this.sock.once('error', reject);
    });
  }
  send(s) {
    this.sock.write(typeof s === 'string' ? Buffer.from(s, 'latin1') : s);
  }
  async until(pred, what) {
    const deadline = Date.now() + TIMEOUT_MS;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
  async read(n = 1) {
    await this.until(() => this.lines.length >= n || this.closed, `${n} reply lines`);
    if (this.lines.length < n) throw new Error(`connection closed after ${this.lines.length} of ${n} lines`);
    return this.lines.splice(0, n);
  }
  async cmd(line) {
    this.send(line + '\n');
    return (await this.read(1))[0];
  }
  async waitClosed() {
    await this.until(() => this.closed, 'the server to close the connection');
  }
  end() {
    this.sock.end();
  }
  destroy() {
    this.sock.destroy();
  }
}

async function connect() {
  const c = new Client();
  await c.ready();
  return c;
}

let passed = 0;
let failed = 0;
function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: got ${a.slice(0, 200)}, want ${e.slice(0, 200)}`);
}
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

const uniq = `${process.pid}-${Date.now()}`;
const k = (s) => `${s}-${uniq}`;

if (phase === 'write') {
  await check('persist: write phase', async () => {
    const c = await connect();
    eq(await c.cmd('SET p:a hello world'), 'OK', 'SET');
    eq(await c.cmd('SET p:b x'), 'OK', 'SET');
    eq(await c.cmd('APPEND p:b yz'), '3', 'APPEND');
    eq(await c.cmd('INCR p:n'), '1', 'INCR');
    eq(await c.cmd('INCR p:n'), '2', 'INCR');
    eq(await c.cmd('SET p:gone 1'), 'OK', 'SET');
    eq(await c.cmd('DEL p:gone'), '1', 'DEL');
    eq(await c.cmd('SET p:cr a\r\r'), 'OK', 'SET of a value ending in \\r');
    eq(await c.cmd('SET p:sp  two  spaces '), 'OK', 'SET of a value with spaces');
    c.end();
    await c.waitClosed();
  });
} else if (phase === 'verify') {
  await check('persist: verify phase', async () => {
    const c = await connect();
    eq(await c.cmd('GET p:a'), 'VALUE hello world', 'GET');
    eq(await c.cmd('GET p:b'), 'VALUE xyz', 'GET after APPEND');
    eq(await c.cmd('GET p:n'), 'VALUE 2', 'GET after INCR');
    eq(await c.cmd('GET p:gone'), 'NIL', 'GET after DEL');
    eq(await c.cmd('GET p:cr'), 'VALUE a\r', 'value ending in \\r');
    eq(await c.cmd('GET p:sp'), 'VALUE  two  spaces ', 'value with spaces');
    eq(await c.cmd('COUNT'), '5', 'COUNT');
    c.end();
    await c.waitClosed();
  });
} else {
  if (fresh) {
    await check('COUNT of an empty store', async () => {
      const c = await connect();
      eq(await c.cmd('COUNT'), '0', 'COUNT');
      c.destroy();
    });
  }

  await check('SET GET DEL COUNT', async () => {
    const c = await connect();
    const before = Number(await c.cmd('COUNT'));
    eq(await c.cmd(`SET ${k('a')} hello world`), 'OK', 'SET');
    eq(await c.cmd(`GET ${k('a')}`), 'VALUE hello world', 'GET');
    eq(await c.cmd(`get ${k('a')}`), 'VALUE hello world', 'lower-case command');
    eq(await c.cmd(`GET ${k('missing')}`), 'NIL', 'GET missing');
    eq(await c.cmd('COUNT'), String(before + 1), 'COUNT');
    eq(await c.cmd(`SET ${k('a')} second`), 'OK', 'SET again');
    eq(await c.cmd(`GET ${k('a')}`), 'VALUE second', 'GET overwritten');
    eq(await c.cmd(`DEL ${k('a')}`), '1', 'DEL');
    eq(await c.cmd(`DEL ${k('a')}`), '0', 'DEL again');
    eq(await c.cmd('COUNT'), String(before), 'COUNT after DEL');
    c.destroy();
  });

  await check('values: spaces kept, empty value, \\r\\n accepted', async () => {
    const c = await connect();
    eq(await c.cmd(`SET ${k('s')}   lead and  inner  `), 'OK', 'SET');
    eq(await c.cmd(`GET ${k('s')}`), 'VALUE   lead and  inner  ', 'GET');
    eq(await c.cmd(`SET ${k('e')} `), 'OK', 'SET empty');
    eq(await c.cmd(`GET ${k('e')}`), 'VALUE ', 'GET empty');
    eq(await c.cmd(`SET ${k('r')} crlf\r`), 'OK', 'SET with CRLF');
    eq(await c.cmd(`GET ${k('r')}\r`), 'VALUE crlf', 'GET with CRLF');
    eq(await c.cmd(`GET   ${k('r')}   `), 'VALUE crlf', 'extra spaces around the key of GET');
    c.destroy();
  });

  await check('INCR and APPEND', async () => {
    const c = await connect();
    eq(await c.cmd(`INCR ${k('n')}`), '1', 'INCR new');
    eq(await c.cmd(`INCR ${k('n')}`), '2', 'INCR');
    eq(await c.cmd(`SET ${k('n')} -5`), 'OK', 'SET');
    eq(await c.cmd(`INCR ${k('n')}`), '-4', 'INCR negative');
    eq(await c.cmd(`SET ${k('n')} 9223372036854775806`), 'OK', 'SET');
    eq(await c.cmd(`INCR ${k('n')}`), '9223372036854775807', 'INCR to max');
    eq(await c.cmd(`INCR ${k('n')}`), 'ERR increment would overflow', 'INCR overflow');
    eq(await c.cmd(`SET ${k('n')} 1x`), 'OK', 'SET');
    eq(await c.cmd(`INCR ${k('n')}`), 'ERR value is not an integer', 'INCR non-integer');
    eq(await c.cmd(`APPEND ${k('ap')} abc`), '3', 'APPEND new');
    eq(await c.cmd(`APPEND ${k('ap')}  de`), '6', 'APPEND');
    eq(await c.cmd(`GET ${k('ap')}`), 'VALUE abc de', 'GET after APPEND');
    c.destroy();
  });

  await check('errors', async () => {
    const c = await connect();
    eq(await c.cmd('FROB x'), "ERR unknown command 'FROB'", 'unknown');
    eq(await c.cmd(''), 'ERR empty command', 'empty');
    eq(await c.cmd('SET'), "ERR wrong number of arguments for 'SET'", 'SET no key');
    eq(await c.cmd(`SET ${k('x')}`), "ERR wrong number of arguments for 'SET'", 'SET no value');
    eq(await c.cmd(`GET ${k('x')} y`), "ERR wrong number of arguments for 'GET'", 'GET extra');
    eq(await c.cmd('COUNT x'), "ERR wrong number of arguments for 'COUNT'", 'COUNT extra');
    eq(await c.cmd(`SET ${'k'.repeat(1025)} v`), 'ERR key too long', 'key too long');
    eq(await c.cmd(`SET ${k('v')} ${'v'.repeat(65537)}`), 'ERR value too long', 'value too long');
    eq(await c.cmd(`SET ${k('v')} ${'v'.repeat(65530)}`), 'OK', 'SET near the limit');
    eq(await c.cmd(`APPEND ${k('v')} 1234567`), 'ERR value too long', 'APPEND past the limit');
    eq(await c.cmd(`APPEND ${k('v')} 123456`), '65536', 'APPEND to the limit');
    eq(await c.cmd('PING'), "ERR unknown command 'PING'", 'still serving after errors');
    c.destroy();
  });

  await check('partial lines and pipelining', async () => {
    const c = await connect();
    c.send('SE');
    await new Promise((r) => setTimeout(r, 50));
    c.send(`T ${k('p')} one`);
    await new Promise((r) => setTimeout(r, 50));
    c.send(' two\r');
    await new Promise((r) => setTimeout(r, 50));
    c.send('\nGET ');
    await new Promise((r) => setTimeout(r, 50));
    c.send(`${k('p')}\n`);
    eq(await c.read(2), ['OK', 'VALUE one two'], 'split writes');
    let batch = '';
    for (let i = 0; i < 1000; i++) batch += `INCR ${k('pipe')}\n`;
    c.send(batch);
    const got = await c.read(1000);
    eq(got[999], '1000', 'last of 1000 pipelined INCRs');
    eq(got[0], '1', 'first of 1000 pipelined INCRs');
    c.destroy();
  });

  await check('64 KiB values and output backpressure', async () => {
    const c = await connect();
    const big = Buffer.alloc(65536, 'b').toString('latin1');
    eq(await c.cmd(`SET ${k('big')} ${big}`), 'OK', 'SET 64 KiB');
    eq(await c.cmd(`GET ${k('big')}`), `VALUE ${big}`, 'GET 64 KiB');
    // 300 GETs of 64 KiB = 19 MiB of replies, requested at once, read slowly.
    c.sock.pause();
    let batch = '';
    for (let i = 0; i < 300; i++) batch += `GET ${k('big')}\n`;
    c.send(batch);
    await new Promise((r) => setTimeout(r, 300));
    // Another client is served meanwhile.
    const d = await connect();
    eq(await d.cmd(`SET ${k('other')} 1`), 'OK', 'another client during the backlog');
    d.destroy();
    c.sock.resume();
    const got = await c.read(300);
    eq(got.every((l) => l.length === 65542), true, 'all 300 replies whole');
    c.destroy();
  });

  await check('QUIT replies BYE and closes, dropping what follows', async () => {
    const c = await connect();
    c.send(`SET ${k('q')} 1\nQUIT\nSET ${k('q')} 2\n`);
    eq(await c.read(2), ['OK', 'BYE'], 'replies');
    await c.waitClosed();
    eq(c.lines, [], 'nothing after BYE');
    const d = await connect();
    eq(await d.cmd(`GET ${k('q')}`), 'VALUE 1', 'the command after QUIT was not run');
    d.destroy();
  });

  await check('an overlong line gets ERR line too long and a close', async () => {
    const c = await connect();
    c.send(`SET ${k('long')} ${'x'.repeat(70000)}`);
    c.send('x'.repeat(200000));
    c.send('\n');
    eq(await c.read(1), ['ERR line too long'], 'reply');
    await c.waitClosed();
  });

  await check('half-close: the commands before EOF are answered', async () => {
    const c = await connect();
    c.send(`SET ${k('h')} v\nGET ${k('h')}\nGET ${k('h')}`); // the last line has no \n
    c.end();
    await c.waitClosed();
    eq(c.lines, ['OK', 'VALUE v', 'VALUE v'], 'replies');
  });

  await check('abrupt disconnects mid-line do not hurt', async () => {
    for (let i = 0; i < 10; i++) {
      const c = await connect();
      c.send(`SET ${k('abrupt')} partial`);
      c.sock.resetAndDestroy ? c.sock.resetAndDestroy() : c.destroy();
    }
    const d = await connect();
    eq(await d.cmd(`GET ${k('abrupt')}`), 'NIL', 'the partial line was not run');
    d.destroy();
  });

  await check('40 concurrent clients x 50 INCRs', async () => {
    const clients = await Promise.all(Array.from({ length: 40 }, connect));
    await Promise.all(
      clients.map(async (c) => {
        for (let i = 0; i < 50; i++) await c.cmd(`INCR ${k('shared')}`);
      }),
    );
    eq(await clients[0].cmd(`GET ${k('shared')}`), 'VALUE 2000', 'total');
    clients.forEach((c) => c.destroy());
  });

  await check('the 65th connection is refused with ERR too many connections', async () => {
    await new Promise((r) => setTimeout(r, 300)); // let the server see the closes above
    const clients = [];
    for (let i = 0; i < 64; i++) {
      const c = await connect();
      eq(await c.cmd('COUNT') !== undefined, true, 'served');
      clients.push(c);
    }
    const extra = await connect();
    await extra.waitClosed();
    eq(extra.lines, ['ERR too many connections'], 'refusal');
    clients.forEach((c) => c.destroy());
    await new Promise((r) => setTimeout(r, 300));
    const again = await connect();
    eq(/^\d+$/.test(await again.cmd('COUNT')), true, 'served again after the closes');
    again.destroy();
  });
}

console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed === 0 ? 0 : 1;
