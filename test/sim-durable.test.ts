// The simulator with durable restarts (SimOptions.durableRestarts, lockstep sim
// --durable-restarts; issue 11 item 3): the core is durable and keeps a backlog, and a crashed
// or halted node often comes back with its disk (every entry it had received), started kept.
// Primaries must resume such a node only from a prefix of their own log (replica.ts "Resuming
// a spare that kept its state"), and send a snapshot otherwise; the planted bug resumeAnyLog
// resumes any state not past the log, and a deposed primary's never-released entries stay in
// the resumed node's state. A node that crashes while the arbiter's view names it comes back
// `recovered` in that view, as the node does, and may go live from its disk: so a crash may
// take every live holder of the state when one keeps its disk, and now and then every node
// crashes at once (power-loss): nothing acknowledged may be lost.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simulate } from '../src/sim/index.js';
import { simCommand } from '../src/cli/sim.js';
import { describeFailure } from '../src/testing/sim-report.js';
import type { ReplicationMode } from '../src/guest/index.js';

const MODES: readonly ReplicationMode[] = ['rsm', 'state-transfer'];

test('simulator, durable restarts: seeds pass every check in both modes with 1 and 2 backups; kept nodes are both resumed and refused, named ones recovered', () => {
  // Sweeps passed (with recovered starts and power-loss): seeds 1..1000 in each mode with 1 and
  // with 2 backups (and 1001..2500 in rsm), 1..2000 with mode and backups drawn, and 1..250 each with the poison, the
  // forger, switchovers (1 and 2 backups) and double crashes forced on. (Before recovered
  // starts: 1..2000 in each mode with 1 and 2 backups, 2001..5000 drawn, 1..300 forced.) For kv
  // the two modes run the same schedule (the entries differ, not their sizes), so each seed here
  // is one schedule checked both ways.
  let kept = 0;
  let recovered = 0;
  let diskOnly = 0;
  let powerLosses = 0;
  let resumes = 0;
  let refused = 0;
  for (const mode of MODES) {
    for (const backups of [1, 2]) {
      for (let seed = 1; seed <= 40; seed++) {
        const r = simulate({ seed, mode, backups, durableRestarts: true });
        assert.ok(r.ok, `${describeFailure(r)}\n  reproduce: lockstep sim --seed ${seed} --mode ${mode} --backups ${backups} --durable-restarts`);
        assert.ok(r.faults.includes('durable-restart'));
        kept += r.stats.keptRestarts;
        recovered += r.stats.recoveredRestarts;
        diskOnly += r.stats.diskOnlyCrashes;
        powerLosses += r.stats.powerLosses;
        resumes += r.stats.resumes;
        refused += r.stats.resumesRefused;
      }
    }
  }
  assert.ok(kept > 100, `nodes restarted with their disk (${kept})`);
  assert.ok(recovered > 100, `nodes the view named restarted recovered (${recovered})`);
  assert.ok(diskOnly > 50, `crashes left the state on disks only (${diskOnly})`);
  assert.ok(powerLosses > 30, `every node crashed at once (${powerLosses})`);
  assert.ok(resumes > 20, `primaries resumed kept nodes (${resumes})`);
  assert.ok(refused > 20, `primaries refused to resume some, and sent a snapshot (${refused})`);
});

test('simulator, durable restarts: a recovered node whose earlier process\'s test-and-set lands after its restart waits in that view and goes live from it', () => {
  // These seeds failed (liveness, lost-write) before the core's namesMeRecovered: the primary's
  // test-and-set (to go live, or drop a backup) was in flight as every node crashed, the node
  // came back recovered in the view before it, then lost its own test-and-set to the late one
  // (or a forged rumour made it read the view) and halted, leaving a view whose only primary
  // was a spare: every copy of the state was gone from the view.
  for (const [seed, backups] of [[727, 1], [759, 1], [814, 2], [898, 2]] as const) {
    for (const mode of MODES) {
      const r = simulate({ seed, mode, backups, durableRestarts: true });
      assert.ok(r.ok, `${describeFailure(r)}\n  reproduce: lockstep sim --seed ${seed} --mode ${mode} --backups ${backups} --durable-restarts`);
      assert.ok(r.stats.recoveredViews > 0, `seed ${seed}: a recovered node took up the view its earlier process wrote`);
    }
  }
});

test('simulator, durable restarts: a primary switched over to backup keeps its backlog one run of entries up to its last index', () => {
  // Seed 299 (2 backups) failed with "entry 134 needed but nothing is retained": a primary's
  // switchover dropped its retained log (134..172) but kept its backlog (78..133); going live
  // again it resumed a spare from 77 over the gap. Now the retained entries join the backlog, and
  // a resume or a backup's catch-up checks that every entry it needs is kept (keepsFrom).
  for (const mode of MODES) {
    const r = simulate({ seed: 299, mode, backups: 2, durableRestarts: true });
    assert.ok(r.ok, `${describeFailure(r)}\n  reproduce: lockstep sim --seed 299 --mode ${mode} --backups 2 --durable-restarts`);
  }
});

test('simulator, durable restarts off (the default): a seed runs as it did before they existed', () => {
  const a = simulate({ seed: 77, backups: 1 });
  assert.equal(simulate({ seed: 77, backups: 1, durableRestarts: false }).traceHash, a.traceHash);
  assert.ok(!a.faults.includes('durable-restart'));
  assert.notEqual(simulate({ seed: 77, backups: 1, durableRestarts: true }).traceHash, a.traceHash);
});

test('simulator catches a planted bug: a primary resumes a kept state from another log (resumeAnyLog), both modes, 1 and 2 backups', () => {
  // Seeds 1..400 catch it: 24 with 1 backup (first 1, 2, 14, 43), 60 with 2 (first 4, 5, 13,
  // 46); the same seeds in both modes. Divergence: a resumed node applies the primary's entries
  // to a state with the deposed primary's, or a lagging backup's, never-released ones. (Before
  // recovered starts, 34 and 87 of 1..400: a node the view names now comes back recovered,
  // not kept, so fewer restarts are resumes.)
  for (const mode of MODES) {
    for (const backups of [1, 2]) {
      let caught = 0;
      for (let seed = 1; seed <= 40 && caught === 0; seed++) {
        if (!simulate({ seed, mode, backups, durableRestarts: true, bugs: { resumeAnyLog: true } }).ok) caught = seed;
      }
      assert.ok(caught > 0, `no seed among 40 caught resumeAnyLog (${mode}, ${backups} backups)`);
    }
  }
});

test('simulator catches a planted bug: a recovered backup keeps what it holds past a new primary\'s base (noBaseCheck), 2 backups, both modes', () => {
  // Seeds 1..1000 catch it in 38 (rsm; 1..400 in state-transfer: the same 15 seeds), all
  // divergence; before recovered starts 15 of 1..400 did too, others (34, 45, 69, ...). Seed 5
  // is one of the new ones: n4 comes back recovered holding entry 41 that n3, going live with
  // base 40, never had, keeps it, and applies n3's 42 onto it. With one backup no other backup
  // follows a node that goes live, so the check is never reached.
  for (const mode of MODES) {
    const r = simulate({ seed: 5, mode, backups: 2, durableRestarts: true, bugs: { noBaseCheck: true } });
    assert.ok(!r.ok, `seed 5 should catch noBaseCheck (${mode})`);
    assert.ok(r.failures.some((f) => f.check === 'divergence'), describeFailure(r));
    assert.ok(r.stats.recoveredRestarts > 0);
    assert.ok(simulate({ seed: 5, mode, backups: 2, durableRestarts: true }).ok, 'and passes without it');
  }
});

test('lockstep sim --durable-restarts --bug resumeAnyLog: a failing seed says how to reproduce it', async () => {
  let stdout = '';
  const out = { stdout: (s: string) => void (stdout += s), stderr: () => {} };
  assert.equal(await simCommand(['--seed', '1', '--seeds', '1', '--mode', 'rsm', '--backups', '1', '--durable-restarts', '--bug', 'resumeAnyLog', '--tail', '0'], out), 1, stdout);
  assert.match(stdout, /seed 1 FAILED .*durable-restart/);
  assert.match(stdout, /check divergence/);
  assert.match(stdout, /reproduce: lockstep sim --seed 1 --mode rsm --backups 1 --durable-restarts --bug resumeAnyLog/);
  stdout = '';
  assert.equal(await simCommand(['--seed', '1', '--seeds', '2', '--backups', '1', '--durable-restarts'], out), 0, stdout);
  await assert.rejects(simCommand(['--durable-restarts=yes'], out), /--durable-restarts takes no value/);
});
