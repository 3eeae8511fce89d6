// Assertions for the pure core. A broken invariant inside the core is a bug, and fail-stop
// is the model this system is built on: the process stops rather than run on in a state it
// cannot explain. (No node:assert here: the core imports nothing from Node.)

export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AssertionError';
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(`lockstep invariant broken: ${message}`);
}

export function assertNever(value: never, what: string): never {
  throw new AssertionError(`lockstep invariant broken: unexpected ${what}: ${JSON.stringify(value)}`);
}
