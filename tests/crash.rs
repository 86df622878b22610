//! Crash consistency (guarantee 5): the test binary re-runs itself as a
//! child that writes (`common/workload.rs`), and the parent kills it with
//! SIGKILL at a random moment, reopens the store and checks it:
//! - the history workload recovers to the state after *some* prefix of its
//!   operations (one point in history), no shorter than the last checkpoint
//!   the child reported, with every value readable (no record without its
//!   blob, no checksum failure);
//! - the bank workload never shows a transaction half applied;
//! - a write the engine reported flushed survives;
//! - no watcher (`watch_prefix`, Flushed or Synced) was told of a change
//!   that is gone after the crash;
//! - with `--features failpoints`, the same at exact points of a flush
//!   cycle, where the child aborts by itself (including halfway through
//!   applying a logged commit, which the next open must finish);
//! - with `Journal::Process`, no write the child saw acknowledged is lost,
//!   and the store is one point in history (no transaction split).
//!
//! Trials: `MILLPOND_CRASH_TRIALS` (default 8; 12 for the journal);
//! seed: `MILLPOND_SEED`.

mod common;

use std::time::Duration;

use common::workload::{
    self, assert_one_point_in_history, check_bank, check_events, value_for, Spec,
};
use common::{Rng, Store};
use millpond::{Config, Engine, Journal};

#[test]
fn child() {
    workload::child_main();
}

fn spec<'a>(store: &'a Store, seed: u64, mode: &'a str) -> Spec<'a> {
    Spec {
        test: "child",
        store: &store.path,
        seed,
        mode,
        write_delay_ms: None,
        point: None,
    }
}

fn reopen(store: &Store, what: &str) -> Engine {
    Engine::open(Config::new(&store.path))
        .unwrap_or_else(|err| panic!("{what}: reopen failed: {err}"))
}

#[test]
fn killed_at_random_moments_recovers_one_point_in_history() {
    let seed = common::seed("crash");
    let mut rng = Rng::new(seed);
    for trial in 0..workload::trials("CRASH", 8) {
        let store = Store::new();
        let child_seed = rng.next();
        let mut t = workload::spawn(spec(&store, child_seed, "history"));
        t.wait_for("ready");
        std::thread::sleep(Duration::from_millis(5 + rng.below(300)));
        t.kill();
        let what = format!("trial {trial} (child seed {child_seed})");
        let e = reopen(&store, &what);
        assert_one_point_in_history(&e, child_seed, t.checkpoint, &what);
        e.shutdown().unwrap();
    }
}

#[test]
fn a_flushed_write_survives_sigkill() {
    let seed = common::seed("crash-flushed");
    let mut rng = Rng::new(seed);
    for _ in 0..3 {
        let store = Store::new();
        let mut t = workload::spawn(spec(&store, rng.next(), "flushed"));
        let line = t.wait_for("flushed ");
        let n: u64 = line["flushed ".len()..].parse().unwrap();
        t.kill();
        let e = reopen(&store, "flushed");
        for i in 0..n {
            let got = e.get(format!("f-{i}").as_bytes()).unwrap();
            assert_eq!(got.unwrap(), value_for(i, i), "write {i} of {n}");
        }
    }
}

#[test]
fn killed_during_transactions_never_splits_one() {
    let seed = common::seed("crash-bank");
    let mut rng = Rng::new(seed);
    for trial in 0..workload::trials("CRASH", 8) {
        let store = Store::new();
        let child_seed = rng.next();
        let mut t = workload::spawn(spec(&store, child_seed, "bank"));
        t.wait_for("checkpoint");
        std::thread::sleep(Duration::from_millis(5 + rng.below(300)));
        t.kill();
        let what = format!("trial {trial} (child seed {child_seed})");
        let e = reopen(&store, &what);
        let transfers = check_bank(&e, &what);
        eprintln!(
            "{what}: last checkpoint {}, recovered {transfers} transfers",
            t.checkpoint
        );
        assert!(
            transfers >= t.checkpoint,
            "{what}: lost transfers behind a checkpoint"
        );
        e.shutdown().unwrap();
    }
}

/// Crashes at exact points of a flush cycle (feature `failpoints`): the child
/// aborts at the N-th time it reaches the point, N random.
#[cfg(feature = "failpoints")]
#[test]
fn crashed_at_each_point_of_a_flush_cycle_recovers_one_point_in_history() {
    let seed = common::seed("crash-points");
    let mut rng = Rng::new(seed);
    let points = [
        "flush-before-blobs",
        "flush-before-commit",
        "commit-mid-apply",
        "flush-after-commit",
        "flush-before-sync",
    ];
    for point in points {
        for trial in 0..2 {
            let store = Store::new();
            let child_seed = rng.next();
            let action = format!("{point}={}*off->return", 1 + rng.below(20));
            let mut t = workload::spawn(Spec {
                point: Some(&action),
                ..spec(&store, child_seed, "history")
            });
            t.wait_for("ready");
            assert!(
                t.wait_for_crash(),
                "{action}: the child never reached the crash point"
            );
            let what = format!("{action} trial {trial} (child seed {child_seed})");
            let e = reopen(&store, &what);
            assert_one_point_in_history(&e, child_seed, t.checkpoint, &what);
            e.shutdown().unwrap();
        }
    }
}

#[test]
fn no_watcher_saw_a_change_that_a_crash_took_back() {
    let seed = common::seed("crash-watched");
    let mut rng = Rng::new(seed);
    let mut events = 0;
    for trial in 0..workload::trials("CRASH", 8) {
        let store = Store::new();
        let child_seed = rng.next();
        let mut t = workload::spawn(spec(&store, child_seed, "watched"));
        // Let some events come, then kill at a random moment.
        t.wait_for("event ");
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        t.kill();
        let what = format!("trial {trial} (child seed {child_seed})");
        let e = reopen(&store, &what);
        let n = check_events(&e, &t.log, &what);
        eprintln!("{what}: {n} events, none taken back");
        events += n;
        e.shutdown().unwrap();
    }
    assert!(events > 0);
}

/// `Journal::Process` (issue 15): SIGKILL loses no acknowledged write. The
/// `journal-process` child prints `acked <n>` as each operation or
/// transaction returns; the parent kills it at a random moment, with a write
/// delay so long that only the journal (and the checkpoints) keep anything,
/// or a short one, so that flush cycles run under the kill; a quarter of the
/// trials first let it write past the journal's first segment (sealed at a
/// freeze past 8 MiB, deleted by a later durable cycle), half of those far
/// past the size at which the journal makes a cycle durable by itself (64
/// MiB; half the children never checkpoint). It reopens with
/// `Journal::Process` or with `Journal::Off` (the records are replayed
/// either way) and checks that the store is the history's state after the
/// last acknowledged group or after the one following it (journaled, killed
/// before it printed), nothing older and no transaction half applied.
#[test]
fn journal_process_loses_no_acknowledged_write_to_sigkill() {
    let seed = common::seed("crash-journal");
    let mut rng = Rng::new(seed);
    let trials = workload::trials("CRASH", 12);
    let (mut acked, mut lost, mut lossy, mut torn) = (0, 0, 0, 0);
    for trial in 0..trials {
        let store = Store::new();
        let child_seed = rng.next();
        let delay = if trial % 2 == 0 {
            3_600_000
        } else {
            1 + rng.below(30)
        };
        let reopen_with = if (trial / 2) % 2 == 0 {
            Journal::Process
        } else {
            Journal::Off
        };
        let mut t = workload::spawn(Spec {
            write_delay_ms: Some(delay),
            ..spec(&store, child_seed, "journal-process")
        });
        t.wait_for("ready");
        match trial % 8 {
            3 => t.wait_for_acked(30_000),
            7 => t.wait_for_acked(150_000),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        t.kill();
        let what =
            format!("journal trial {trial}: write delay {delay} ms, child seed {child_seed}");
        let point = workload::check_journal_trial(&store.path, reopen_with, child_seed, &t, &what);
        acked += t.acked;
        match point {
            Some(p) if p >= t.acked => {}
            Some(p) => {
                lost += t.acked - p;
                lossy += 1;
            }
            None => torn += 1,
        }
    }
    eprintln!(
        "journal Process under SIGKILL: {trials} trials, {acked} acknowledged operations, \
         {lost} of them lost (in {lossy} trials), {torn} trials not one point in history"
    );
    assert_eq!(
        (lost, torn),
        (0, 0),
        "acknowledged operations lost or states not in history (see the trials above)"
    );
}

/// A crash while `open` replays the journal. The store's journal holds
/// 3,000 writes of distinct keys (about 3 MiB), none flushed (written here
/// with `Journal::Process` and a buffer large enough, then `halt`). A child
/// opens the store with a 1 MiB buffer and aborts at a point of the opening
/// checkpoint's cycle (before its commit, after it, before its sync),
/// before `open` returned. The next open must still have every write.
///
/// Found by this test: the replay once ran with the flusher started, so a
/// cycle made room during it and committed a cut above every seq in the
/// journal; the next open took the whole journal as covered and lost the
/// records not yet applied (2,000 or so of the 3,000). The replay now
/// fills the buffer before any thread that could run a cycle starts.
#[cfg(feature = "failpoints")]
#[test]
fn a_crash_during_the_replay_at_open_loses_no_journaled_write() {
    const KEYS: u32 = 3000;
    let key = |i: u32| format!("replayed-{i:05}").into_bytes();
    let value = |i: u32| i.to_le_bytes().repeat(250);
    let store = Store::new();
    let e = Engine::open(
        store
            .quiet()
            .max_dirty_bytes(64 << 20)
            .journal(Journal::Process),
    )
    .unwrap();
    for i in 0..KEYS {
        e.set(&key(i), &value(i)).unwrap();
    }
    assert_eq!(e.stats().flushes, 0);
    millpond::testing::halt(&e);
    drop(e);

    for action in [
        "flush-before-commit=return",
        "flush-after-commit=return",
        "flush-before-sync=return",
    ] {
        let copy = Store::new();
        common::copy_dir(&store.path, &copy.path);
        let store = &copy;
        // The child's own history (keys `key-*`, `counter-*`) would not touch
        // these keys, but it never starts: the crash comes inside `open`.
        let mut t = workload::spawn(Spec {
            point: Some(action),
            write_delay_ms: Some(3_600_000),
            ..spec(store, 1, "journal-process")
        });
        assert!(
            t.wait_for_crash(),
            "{action}: the child never reached the crash point"
        );
        assert_eq!(
            t.acked, 0,
            "{action}: the child crashed after open returned"
        );
        let e = reopen(store, "after the crash during replay");
        let missing: Vec<u32> = (0..KEYS)
            .filter(|&i| e.get(&key(i)).unwrap().as_deref() != Some(&value(i)[..]))
            .collect();
        eprintln!(
            "{} of {KEYS} journaled writes missing after a crash during the replay \
         (first {:?}); this open replayed {} records, {:?}",
            missing.len(),
            missing.first(),
            e.stats().journal_replayed,
            e.stats()
        );
        assert!(
            missing.is_empty(),
            "{action}: {} of {KEYS} journaled writes lost by a crash during the replay",
            missing.len()
        );
        e.shutdown().unwrap();
    }
}
