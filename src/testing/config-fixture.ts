// A small valid cluster config (kv, three nodes on loopback) for config tests to edit.

export function validConfig(): Record<string, unknown> {
  return {
    cluster: 'demo',
    arbiter: 'file:.lockstep/arbiter',
    service: { kind: 'kv', mode: 'rsm' },
    heartbeatMs: 50,
    failureTimeoutMs: 500,
    nodes: [1, 2, 3].map((i) => ({ id: `n${i}`, peer: `127.0.0.1:710${i}`, client: `127.0.0.1:700${i}`, admin: `127.0.0.1:720${i}` })),
  };
}
