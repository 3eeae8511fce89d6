// The nodes' own JSON log lines, for the benchmarks that read what a node measured itself.

/** The JSON log lines of node `id` of cluster `c` (events in `names`, all when omitted). */
export function events(c, id, names) {
  const out = [];
  for (const line of c.log(id).split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const e = JSON.parse(line);
      if (names === undefined || names.includes(e.event)) out.push(e);
    } catch {
      // a line cut by a kill
    }
  }
  return out;
}
