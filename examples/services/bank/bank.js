// A bank ledger as a lockstep service: accounts and transfers that conserve the total.
// Run it: lockstep cluster --service examples/services/bank/bank.js
import { defineService } from 'lockstep/guest';

/** A whole number of cents, or a thrown error that becomes the client's error reply. */
function amount(text) {
  if (!/^[0-9]{1,15}$/.test(text ?? '')) throw new Error(`amount must be a whole number of cents, got ${JSON.stringify(text)}`);
  return Number(text);
}

function arity(args, n, usage) {
  if (args.length !== n) throw new Error(`wrong number of arguments: ${usage}`);
}

export default defineService({
  name: 'bank',
  initial: () => ({ accounts: {}, total: 0 }),
  // lockstep sim --service bank.js: simulated clients open a few accounts, then move money.
  simulate(random, client, counter) {
    const names = ['ann', 'bob', 'cat', 'dan'];
    if (counter === 1) return ['OPEN', `${client}-own`, String(100 + random(100))];
    const pick = () => names[random(names.length)];
    switch (random(5)) {
      case 0: return ['OPEN', pick(), String(random(500))];
      case 1: return ['BALANCE', pick()];
      case 2: return ['AUDIT'];
      default: return ['TRANSFER', pick(), pick(), String(random(200))];
    }
  },
  commands: {
    // OPEN name cents: a new account with an opening deposit (money enters the bank here only).
    open(state, args) {
      arity(args, 2, 'OPEN name cents');
      const [name, cents] = args;
      if (Object.hasOwn(state.accounts, name)) throw new Error(`EXISTS account ${name} is already open`);
      state.accounts[name] = amount(cents);
      state.total += amount(cents);
      return 'OK';
    },
    // TRANSFER from to cents: all or nothing; the total never changes.
    transfer(state, args) {
      arity(args, 3, 'TRANSFER from to cents');
      const [from, to, cents] = args;
      const n = amount(cents);
      if (!Object.hasOwn(state.accounts, from)) throw new Error(`NOACCOUNT ${from}`);
      if (!Object.hasOwn(state.accounts, to)) throw new Error(`NOACCOUNT ${to}`);
      if (state.accounts[from] < n) throw new Error(`NOFUNDS ${from} has ${state.accounts[from]}, needs ${n}`);
      state.accounts[from] -= n;
      state.accounts[to] += n;
      return state.accounts[from];
    },
    balance: {
      readOnly: true,
      run(state, args) {
        arity(args, 1, 'BALANCE name');
        if (!Object.hasOwn(state.accounts, args[0])) throw new Error(`NOACCOUNT ${args[0]}`);
        return state.accounts[args[0]];
      },
    },
    // AUDIT: [total opened, sum of balances]; the two are equal in every reachable state.
    audit: {
      readOnly: true,
      run(state) {
        let sum = 0;
        for (const v of Object.values(state.accounts)) sum += v;
        return [state.total, sum];
      },
    },
  },
});
