#!/usr/bin/env node
// Runs an example guest under Node's own node:wasi (preview1), for checking the
// examples without lockstep's host. node:wasi has no sockets, so it can run
// clockrand, nanloop and sqlite, not kvserver.
//
//   node examples/run-wasi.mjs [--dir DIR] [--stdin FILE] [--env K=V]... GUEST.wasm [ARG]...
//
// --dir DIR is preopened as the guest's "/" (fd 3, as lockstep's host does);
// default: the current directory. --stdin FILE is the guest's standard input
// (default: this process's). The guest's exit code becomes this process's.
import { readFileSync, openSync, closeSync } from 'node:fs';
import { WASI } from 'node:wasi';
import process from 'node:process';

const argv = process.argv.slice(2);
let dir = '.';
let stdinPath = null;
const env = {};
while (argv.length > 0 && argv[0].startsWith('--')) {
  const flag = argv.shift();
  const value = argv.shift();
  if (value === undefined) throw new Error(`${flag} needs a value`);
  if (flag === '--dir') dir = value;
  else if (flag === '--stdin') stdinPath = value;
  else if (flag === '--env') {
    const eq = value.indexOf('=');
    if (eq <= 0) throw new Error(`--env wants K=V, got ${value}`);
    env[value.slice(0, eq)] = value.slice(eq + 1);
  } else throw new Error(`unknown flag ${flag}`);
}
const guest = argv.shift();
if (guest === undefined) {
  console.error('usage: run-wasi.mjs [--dir DIR] [--stdin FILE] [--env K=V]... GUEST.wasm [ARG]...');
  process.exit(64);
}
const stdinFd = stdinPath === null ? 0 : openSync(stdinPath, 'r');
const wasi = new WASI({
  version: 'preview1',
  args: [guest.replace(/^.*\//, ''), ...argv],
  env,
  preopens: { '/': dir },
  stdin: stdinFd,
  returnOnExit: true,
});
const module = await WebAssembly.compile(readFileSync(guest));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
const code = wasi.start(instance);
if (stdinFd !== 0) closeSync(stdinFd);
process.exitCode = code;
