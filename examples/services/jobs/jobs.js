// A job queue as a lockstep service: enqueue, claim, ack. Each job is handed to exactly one
// claimer; a claim is a logged command, so a failover neither loses nor repeats it, and a
// client retrying through lockstep/client gets its own claim's reply back (exactly-once).
// Claims do not expire here (no clock): a worker that dies holds its job until REQUEUE.
import { defineService } from 'lockstep/guest';

export default defineService({
  name: 'jobs',
  // pending: ids in FIFO order; jobs: id -> { body, worker }.
  initial: () => ({ nextId: 1, pending: [], jobs: {} }),
  // lockstep sim --service jobs.js: clients enqueue, claim more often than they enqueue (so the
  // queue stays short, as a healthy one does), and ack (now and then a job not theirs).
  simulate(random, client, counter) {
    const roll = random(8);
    if (roll < 2) return ['ENQUEUE', `${client}.${counter}`];
    if (roll < 5) return ['CLAIM', client];
    if (roll === 5) return ['ACKALL', client];
    if (roll === 6) return ['ACK', String(1 + random(counter)), client];
    return ['STATS'];
  },
  commands: {
    // ENQUEUE body -> job id
    enqueue(state, [body]) {
      if (body === undefined) throw new Error('usage: ENQUEUE body');
      const id = String(state.nextId++);
      state.jobs[id] = { body, worker: null };
      state.pending.push(id);
      return id;
    },
    // CLAIM worker -> [id, body], or nil when nothing is pending
    claim(state, [worker]) {
      if (worker === undefined) throw new Error('usage: CLAIM worker');
      const id = state.pending.shift();
      if (id === undefined) return null;
      state.jobs[id].worker = worker;
      return [id, state.jobs[id].body];
    },
    // ACK id worker -> 1 done, or error NOTYOURS
    ack(state, [id, worker]) {
      const job = state.jobs[id];
      if (job === undefined || job.worker !== worker) throw new Error(`NOTYOURS job ${id} is not claimed by ${worker}`);
      delete state.jobs[id];
      return 1;
    },
    // ACKALL worker -> how many jobs of this worker were done (a worker finishing a batch)
    ackall(state, [worker]) {
      if (worker === undefined) throw new Error('usage: ACKALL worker');
      let n = 0;
      for (const [id, job] of Object.entries(state.jobs)) {
        if (job.worker === worker) {
          delete state.jobs[id];
          n++;
        }
      }
      return n;
    },
    // REQUEUE id: put a claimed job back at the head of the queue (its worker died)
    requeue(state, [id]) {
      const job = state.jobs[id];
      if (job === undefined || job.worker === null) throw new Error(`NOTCLAIMED job ${id}`);
      job.worker = null;
      state.pending.unshift(id);
      return 1;
    },
    stats: {
      readOnly: true,
      run(state) {
        return { pending: state.pending.length, claimed: Object.keys(state.jobs).length - state.pending.length, next: state.nextId };
      },
    },
  },
});
