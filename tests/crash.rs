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
//!   applying a logged commit, which the next open must finish).
//!
//! Trials: `MILLPOND_CRASH_TRIALS` (default 8); seed: `MILLPOND_SEED`.

mod common;

use std::time::Duration;

use common::workload::{
    self, assert_one_point_in_history, check_bank, check_events, value_for, Spec,
};
use common::{Rng, Store};
use millpond::{Config, Engine};

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
