// Reads JSON lines (one per run) on stdin, prints median and [min-max] per configuration.
import { createInterface } from 'node:readline';
const rows = [];
for await (const l of createInterface({ input: process.stdin })) if (l.startsWith('{')) rows.push(JSON.parse(l));
const groups = new Map();
for (const r of rows) {
  const key = [r.host, r.module, r.fn, r.depth ?? 0, r.mode, r.work].join('|');
  if (!groups.has(key)) groups.set(key, []);
  groups.get(key).push(r);
}
const med = (a) => { const s = [...a].sort((x, y) => x - y); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const f = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const sums = new Map();
console.log('| host | module (bytes) | fn | depth | input | work | runs | µs/call median [min–max] | calls/s median | heartbeat max late ms median [max] | unwinds |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
for (const [, g] of groups) {
  const r = g[0], us = g.map((x) => x.us_per_call), hb = g.map((x) => x.hb_max_late_ms);
  const sk = `${r.fn === 'run_deep' ? 'run' : r.fn}|${r.work}|${r.n}`;
  if (!sums.has(sk)) sums.set(sk, new Set());
  g.forEach((x) => sums.get(sk).add(x.sum));
  console.log(`| ${r.host} | ${r.module} (${r.size}) | ${r.fn} | ${r.depth ?? 0} | ${r.mode} | ${r.work} | ${g.length} | ${f(med(us))} [${f(Math.min(...us))}–${f(Math.max(...us))}] | ${Math.round(med(g.map((x) => x.calls_per_s)))} | ${f(med(hb))} [${f(Math.max(...hb))}] | ${r.unwinds ?? ''} |`);
}
const bad = [...sums].filter(([k, s]) => !k.startsWith('compute') && s.size > 1);
console.log(bad.length ? `\nCHECKSUM MISMATCH: ${JSON.stringify(bad.map(([k, s]) => [k, [...s]]))}` : '\nchecksums: all hosts agree per (fn, work, n)');
