// The simulator as a test: hundreds of seeded runs under faults must pass every check, the
// same seed must replay the same run, and known bugs planted in the core must be caught.
// These runs keep one backup (`backups: 1`: each seed runs as it did before the number of
// backups was drawn per seed, so the regression seeds mean what they meant); runs with two
// backups are in sim-backups.test.ts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simulate } from '../src/sim/index.js';
import { describeFailure } from '../src/testing/sim-report.js';
import type { PlantedBugs } from '../src/core/index.js';
import type { ReplicationMode } from '../src/guest/index.js';

for (const mode of ['rsm', 'state-transfer'] as ReplicationMode[]) {
  for (let block = 0; block < 5; block++) {
    const first = 1 + block * 50 + (mode === 'rsm' ? 0 : 10_000);
    test(`simulator: seeds ${first}..${first + 49} pass every check (${mode})`, () => {
      let failovers = 0;
      for (let seed = first; seed < first + 50; seed++) {
        const r = simulate({ seed, mode, backups: 1 });
        assert.ok(r.ok, describeFailure(r));
        // Stalls of up to 800 ms, aimed at the primary half the time, leave some seeds little
        // time to serve in; so do arbiter cuts and outages that keep the one node that may go
        // live from the arbiter most of the safety phase (seed 107 with the forger on: 20 ops,
        // all after healing). They must pass every check all the same.
        const arbiterOut = r.faults.includes('arbiter-link') && r.faults.includes('arbiter-down');
        const minOps = r.faults.includes('stall') || arbiterOut ? 10 : 50;
        assert.ok(r.stats.opsCompleted > minOps, `seed ${seed} did real work (${r.stats.opsCompleted} ops)`);
        assert.equal(r.stats.linearizabilityUnknownKeys, 0, `seed ${seed}: the checker gave up on a key`);
        failovers += r.stats.goLives;
      }
      assert.ok(failovers > 0, 'some seed in the block had the backup go live');
    });
  }
}

test('simulator: seeds that once failed stay fixed (regressions found by long sweeps)', () => {
  // 113608 and six more: a recruit gave up its state on a refusal that was not final.
  // 203026, 212429: a no-op DEL from a client went unrecorded and a late duplicate ran it.
  for (const seed of [100296, 102356, 105989, 113608, 116141, 116816, 118990, 203026, 212429, 224, 412, 19, 2]) {
    const r = simulate({ seed, backups: 1 });
    assert.ok(r.ok, describeFailure(r));
  }
});

test('simulator: issue 16 seeds (a primary left without a backup while a spare is alive) stay fixed', () => {
  // Found on the old core with the stall, slow-snapshot and kill fault models. 96, 128, 167,
  // 288, 357: recruits asked forever to go live from a pending view that never landed
  // (cas-not-yet). 1, 5, 82: a slow snapshot made the primary abandon every recruit on "no ack".
  for (const seed of [96, 128, 167, 288, 357, 1, 5, 82]) {
    const r = simulate({ seed, backups: 1 });
    assert.ok(r.ok, describeFailure(r));
  }
});

test('simulator: issue 14.9 seeds (a forger sends refuses and frames of newer epochs) stay fixed', () => {
  // With the forger on, the old core (planted: haltOnRumour) halted the primary and the backup
  // on forged words and lost every copy of the state (lost-write, liveness) in these seeds.
  // (Seed 13 no longer catches it since recruits stream their snapshot in chunks, issue 9:
  // the run differs; it still has to pass.)
  for (const seed of [5, 8, 10, 11, 12, 13, 20, 25]) {
    const r = simulate({ seed, backups: 1 });
    assert.ok(r.faults.includes('forge'), `seed ${seed} draws the forger`);
    assert.ok(r.ok, describeFailure(r));
    if (seed !== 13) assert.ok(!simulate({ seed, backups: 1, bugs: { haltOnRumour: true } }).ok, `seed ${seed} still catches the old behaviour`);
  }
});

test('simulator: planned switchovers among the random events pass every check, both modes (issue 11 item 1)', () => {
  // A sweep of seeds 1..3000 in both modes with switchovers forced on passed (25,474 landed).
  let done = 0;
  for (const mode of ['rsm', 'state-transfer'] as ReplicationMode[]) {
    for (let seed = 1; seed <= 120; seed++) {
      const r = simulate({ seed, mode, backups: 1, switchovers: true });
      assert.ok(r.ok, describeFailure(r));
      assert.ok(r.faults.includes('switchover'));
      done += r.stats.switchoversDone;
    }
  }
  assert.ok(done > 500, `switchovers landed (${done})`);
  // Drawn per seed when not forced: about half the seeds have them.
  const drawn = Array.from({ length: 40 }, (_, i) => simulate({ seed: 1 + i, backups: 1 }).faults.includes('switchover')).filter(Boolean).length;
  assert.ok(drawn > 5 && drawn < 35, `${drawn} of 40 seeds draw switchovers`);
});

test('simulator: one seed, one run (the trace hash replays)', () => {
  const a = simulate({ seed: 4242 });
  const b = simulate({ seed: 4242 });
  const c = simulate({ seed: 4243 });
  assert.equal(a.traceHash, b.traceHash);
  assert.deepEqual(a.history, b.history);
  assert.notEqual(a.traceHash, c.traceHash);
  // Giving the mode a seed would have drawn anyway does not change the run.
  assert.equal(simulate({ seed: 4242, mode: a.mode }).traceHash, a.traceHash);
});

const PLANTED: readonly [keyof PlantedBugs, string][] = [
  ['noOutputRule', 'the output rule switched off'],
  ['liveWithoutArbiter', 'a backup that goes live without winning the test-and-set'],
  ['staleReads', 'reads answered without a fresh ack (a deposed primary serves stale data)'],
  ['earlyBackup', 'a recruit made backup before it holds every released entry'],
  ['noRecruitFence', 'a recruit abandoned in handover is not fenced off (it asks to go live forever)'],
  ['haltOnRumour', 'a replica halts on a peer\'s word of a newer epoch, unconfirmed by the arbiter'],
  ['ackDroppedChunk', 'a recruit acks a snapshot chunk it dropped (its restored state misses a piece)'],
  ['switchEarly', 'a switchover swaps the roles before the backup acked the last index'],
];

for (const [bug, what] of PLANTED) {
  test(`simulator catches a planted bug: ${what}`, () => {
    const caught: string[] = [];
    for (let seed = 1; seed <= 400 && caught.length === 0; seed++) {
      const r = simulate({ seed, backups: 1, bugs: { [bug]: true } });
      if (!r.ok) caught.push(`seed ${seed}: ${[...new Set(r.failures.map((f) => f.check))].join(', ')}`);
    }
    assert.ok(caught.length > 0, `no seed among 400 caught ${bug}`);
  });
}

test('a query of death (--poison): each primary it breaks quarantines it first, so the cluster loses nothing', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = simulate({ seed, poison: true });
    assert.ok(r.ok, `seed ${seed} (lockstep sim --seed ${seed} --poison): ${r.failures.map((f) => `${f.check}: ${f.message}`).slice(0, 3).join('; ')}`);
  }
});

test('simulator catches a planted bug: a broken primary stops without quarantining the command (with --poison)', () => {
  const caught: string[] = [];
  for (let seed = 1; seed <= 50 && caught.length === 0; seed++) {
    const r = simulate({ seed, poison: true, bugs: { noQuarantine: true } });
    if (!r.ok) caught.push(`seed ${seed}: ${[...new Set(r.failures.map((f) => f.check))].join(', ')}`);
  }
  assert.ok(caught.length > 0, 'no seed among 50 caught noQuarantine');
});
