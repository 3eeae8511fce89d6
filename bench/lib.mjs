// What bench/breakdown.mjs and bench/cpu-attr.mjs share: reading `--name value` options,
// loading a build's ProcessCluster, and killing whatever a run started however it ends.

import { existsSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** `opt('--n', '20000')`: the value after that flag, or the default. */
export function options(args = process.argv.slice(2)) {
  return (name, def) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : def;
  };
}

/** The build to measure: `--dist DIR` or this checkout's dist/, with its ProcessCluster; exits 2 if it is not built. */
export async function loadDist(dir) {
  const dist = resolve(dir ?? fileURLToPath(new URL('../dist', import.meta.url)));
  const path = `${dist}/src/testing/process-cluster.js`;
  if (!existsSync(path)) {
    console.error(`${path} is missing: build first with \`npx tsc -p .\``);
    process.exit(2);
  }
  const { ProcessCluster } = await import(path);
  return { dist, ProcessCluster };
}

/**
 * Every cluster and child process a run starts, killed on exit, on an error and on Ctrl-C
 * (`also` runs after, to remove temp files).
 */
export function reaper(also = () => {}) {
  const clusters = [];
  const children = new Set();
  const cleanup = () => {
    for (const ch of children) if (ch.exitCode === null && ch.signalCode === null) ch.kill('SIGKILL');
    for (const c of clusters) for (const n of c.nodes) if (n.child?.pid && n.child.exitCode === null) try { process.kill(n.child.pid, 'SIGKILL'); } catch { /* gone */ }
    for (const c of clusters) rmSync(c.dir, { recursive: true, force: true }); // c.stop() does not run when the script dies
    also();
  };
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { cleanup(); process.exit(130); });
  return { clusters, children, cleanup };
}
