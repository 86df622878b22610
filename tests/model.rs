//! Model-based property tests: random operation sequences (writes with and
//! without deadlines, deletes, modifies, compare-and-swaps, writes to a tree
//! and transactions across keyspaces, transactions, checkpoints, time
//! moving, clean reopens, drops without shutdown, crashes, injected commit
//! failures) run against the engine and a `BTreeMap` model; every key is
//! compared after every step (see `common/model.rs`), on a temporary store
//! (the memory backend), on a sled store, and on a sled store with each
//! journal mode (where a crash under `Process` or `Power` must lose
//! nothing acknowledged), and (feature `postgres`) on a PostgreSQL store. Also a concurrency property:
//! threads incrementing shared counters with `modify` and transactions while
//! flushes run; after close and reopen the sums are exact.
//!
//! Cases: `PROPTEST_CASES` (default 64) for the memory backend's properties,
//! a quarter of that (plus one) for the sled ones and the concurrency
//! property, whose cases cost tens of milliseconds each instead of about one.

mod common;

#[path = "common/model.rs"]
mod model;

use std::time::Duration;

use millpond::Journal;
use model::{Backend, Len, Op, KEYS};
use proptest::prelude::*;

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![Just(Len::Empty), Just(Len::Small), Just(Len::Large)]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        6 => (key.clone(), len()).prop_map(|(key, len)| Op::Set { key, len }),
        3 => (key.clone(), len(), 0u16..3000).prop_map(|(key, len, ttl_ms)| Op::SetTtl { key, len, ttl_ms }),
        2 => key.clone().prop_map(|key| Op::Delete { key }),
        3 => key.clone().prop_map(|key| Op::Modify { key }),
        2 => proptest::collection::vec((key.clone(), proptest::option::of(len())), 1..4)
            .prop_map(|writes| Op::Transaction { writes }),
        1 => (key.clone(), 0u16..3000).prop_map(|(key, ttl_ms)| Op::Expire { key, ttl_ms }),
        1 => key.prop_map(|key| Op::Persist { key }),
        1 => Just(Op::Purge),
        2 => Just(Op::Checkpoint),
        2 => (0u16..2000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropReopen),
        2 => Just(Op::Crash),
        1 => Just(Op::FailCommit),
        2 => (0..2 * KEYS, any::<bool>(), proptest::option::of(len()))
            .prop_map(|(key, hit, new)| Op::Cas { key, hit, new }),
        2 => (0..KEYS, proptest::option::of(len())).prop_map(|(key, len)| Op::TreeWrite { key, len }),
        1 => proptest::collection::vec((0..2 * KEYS, proptest::option::of(len())), 1..4)
            .prop_map(|writes| Op::CrossTransaction { writes }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

/// A new database on the shared test server.
#[cfg(feature = "postgres")]
fn pg_database() -> String {
    common::pg::PgServer::shared()
        .expect("a PostgreSQL server")
        .database()
}

/// Runs `ops` on a fresh store of `backend` against the model.
fn check(backend: Backend, ops: &[Op], delay: Option<u64>) -> Result<(), TestCaseError> {
    if let Err(f) = model::run_on(backend, ops, delay.map(Duration::from_millis)) {
        prop_assert!(
            false,
            "{:?}\nops: {:?}",
            f,
            &ops[..=f.step.min(ops.len() - 1)]
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Deterministic: nothing is flushed except by checkpoint, reopen and
    /// crash, so a crash recovers exactly the last durable point.
    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        check(Backend::Memory, &ops, None)?;
    }

    /// Flushes run between and during the steps (1-3 ms write delay), so a
    /// crash may recover any point after the last checkpoint.
    #[test]
    fn engine_matches_the_model_while_flushing(
        ops in proptest::collection::vec(op(), 1..60),
        delay in 0u64..3,
    ) {
        check(Backend::Memory, &ops, Some(delay))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 4 + 1, ..ProptestConfig::default() })]

    /// `engine_matches_the_model` on a sled store: its commit log, blob
    /// files, file lock and reopen.
    #[test]
    fn engine_on_sled_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        check(Backend::Sled, &ops, None)?;
    }

    /// `engine_matches_the_model_while_flushing` on a sled store.
    #[test]
    fn engine_on_sled_matches_the_model_while_flushing(
        ops in proptest::collection::vec(op(), 1..60),
        delay in 0u64..3,
    ) {
        check(Backend::Sled, &ops, Some(delay))?;
    }

    /// `engine_on_sled_matches_the_model_while_flushing` with each journal
    /// mode: a crash under `Process` or `Power` loses no acknowledged
    /// write, under `Periodic` it recovers one point in history.
    #[test]
    fn engine_with_a_journal_matches_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        delay in proptest::option::of(0u64..3),
        mode in prop_oneof![
            Just(Journal::Periodic(Duration::from_millis(2))),
            Just(Journal::Process),
            Just(Journal::Power),
        ],
    ) {
        check(Backend::Journaled(mode), &ops, delay)?;
    }

    /// `engine_matches_the_model_while_flushing` on a PostgreSQL store (a
    /// real server, one database per case; passes without running where no
    /// server can be started, see `common/pg.rs`).
    #[cfg(feature = "postgres")]
    #[test]
    fn engine_on_postgres_matches_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        delay in proptest::option::of(0u64..3),
    ) {
        if common::pg::PgServer::shared().is_some() {
            check(Backend::Postgres(pg_database), &ops, delay)?;
        }
    }

    /// Threads increment shared counters with `modify` and with 2-key
    /// transactions while flushes run; sums are exact before and after a
    /// close and reopen.
    #[test]
    fn concurrent_increments_are_exact_after_reopen(
        threads in 2usize..5,
        keys in 1u8..6,
        per_thread in 50u64..300,
        delay in 0u64..3,
    ) {
        let store = common::Store::new();
        let e = store.open(store.quiet().write_delay(Duration::from_millis(delay)));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let k = [((i as usize + t) % keys as usize) as u8];
                        if i % 2 == 0 {
                            e.modify(&k, |v| {
                                let n = v.as_deref().map_or(0, common::u64_value);
                                *v = Some((n + 1).to_le_bytes().to_vec());
                            })
                            .unwrap();
                        } else {
                            // Moves one unit into `k` from nowhere, and counts
                            // the transaction in a second key.
                            e.transaction(|tx| {
                                let n = tx.get(&k)?.map_or(0, |v| common::u64_value(&v));
                                let c = tx.get(b"txns")?.map_or(0, |v| common::u64_value(&v));
                                tx.set(&k, &(n + 1).to_le_bytes())?;
                                tx.set(b"txns", &(c + 1).to_le_bytes())
                            })
                            .unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let check = |e: &millpond::Engine| -> Result<(), TestCaseError> {
            let sum: u64 = (0..keys)
                .map(|k| e.get(&[k]).unwrap().map_or(0, |v| common::u64_value(&v)))
                .sum();
            prop_assert_eq!(sum, threads as u64 * per_thread);
            let txns = e.get(b"txns").unwrap().map_or(0, |v| common::u64_value(&v));
            prop_assert_eq!(txns, threads as u64 * (per_thread / 2));
            Ok(())
        };
        check(&e)?;
        e.shutdown().unwrap();
        drop(e);
        check(&store.open(store.quiet()))?;
    }
}
