// The client port beside a real redis-server: the same bytes sent to both must get the same
// answer, byte for byte (protocol errors, inline quoting, arity and argument errors). Each
// case once differed (issue 14, item 11). Needs redis-server (Debian's redis-server package;
// .ci/run installs it); skipped with one line without it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { ProcessCluster, freePorts } from '../src/testing/process-cluster.js';
import { rawExchange } from '../src/testing/raw-exchange.js';

const HAVE_REDIS = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
if (process.env.CI && !HAVE_REDIS) throw new Error('CI without redis-server: .ci/run must install redis-server');

/** Send `data` on a fresh connection; everything until the server closes or goes quiet. */
const exchange = async (port: number, data: string, quietMs = 300): Promise<string> => (await rawExchange(port, data, quietMs)).reply;

/** Same bytes in, same bytes out. */
const SAME: readonly [string, string][] = [
  ['leading zero in a bulk length', '*1\r\n$04\r\nPING\r\n'],
  ['leading zero in a multibulk count', '*01\r\n$4\r\nPING\r\n'],
  ['-0 as a bulk length', '*1\r\n$-0\r\n'],
  ['a bulk length that is not a number', '*1\r\n$x\r\n'],
  ['inline with double quotes', 'SET "my key" "a b\\tc"\r\nGET "my key"\r\n'],
  ['inline with single quotes', "SET k2 'it\\'s'\r\nGET k2\r\n"],
  ['inline with a hex escape', 'ECHO "\\x41\\x42"\r\n'],
  ['inline with an unbalanced quote', 'ECHO "open\r\nPING\r\n'],
  ['inline with a quote followed by a letter', 'ECHO "a"b\r\n'],
  ['WAIT with arguments that are not numbers', '*3\r\n$4\r\nWAIT\r\n$1\r\nx\r\n$1\r\ny\r\n'],
  ['WAIT with a negative timeout', '*3\r\n$4\r\nWAIT\r\n$1\r\n0\r\n$2\r\n-5\r\n'],
  ['ROLE with arguments', '*3\r\n$4\r\nROLE\r\n$1\r\nx\r\n$1\r\ny\r\n'],
  ['PING with two arguments', '*3\r\n$4\r\nPING\r\n$1\r\na\r\n$1\r\nb\r\n'],
  ['ECHO with none', '*1\r\n$4\r\nECHO\r\n'],
  ['an unknown command', '*2\r\n$5\r\nFROBS\r\n$1\r\nx\r\n'],
  ['APPEND and INCR errors', '*3\r\n$3\r\nSET\r\n$1\r\nn\r\n$2\r\nab\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$3\r\n1.5\r\n'],
  ['a bad type byte inside an array', '*1\r\n:1\r\n'],
];

describe('the client port answers as redis-server does', { skip: HAVE_REDIS ? false : 'redis-server not installed (apt-get install redis-server)', timeout: 120_000 }, () => {
  let redis: ChildProcess;
  let redisPort: number;
  let cluster: ProcessCluster;
  let lockstepPort: number;

  before(async () => {
    [redisPort] = (await freePorts(1)) as [number];
    redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    cluster = await ProcessCluster.start({ nodes: 1 });
    lockstepPort = cluster.node('n1').client.port;
    const deadline = Date.now() + 20_000;
    while ((await exchange(redisPort, 'PING\r\n', 100)) !== '+PONG\r\n') {
      if (Date.now() > deadline) throw new Error('redis-server did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
  });
  after(async () => {
    redis?.kill('SIGKILL');
    await cluster?.stop();
  });

  for (const [name, bytes] of SAME) {
    test(name, async () => {
      const [want, got] = await Promise.all([exchange(redisPort, bytes), exchange(lockstepPort, bytes)]);
      assert.ok(want.length > 0, 'redis-server answered');
      assert.equal(got, want);
    });
  }
});
