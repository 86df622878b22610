//! Fault injection at the storage seam: failed writes are retried and their
//! data kept; persistent failures are reported and refuse new writes; a
//! failed fsync poisons the engine; after the fault clears (or a reopen)
//! nothing acknowledged is lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, u64_value, Store};
use millpond::testing::{Faults, StorageOp};
use millpond::{Config, Engine, Error};

fn open(store: &Store, faults: &Arc<Faults>, delay_ms: u64) -> Engine {
    store.open(
        store
            .quiet()
            .write_delay(Duration::from_millis(delay_ms))
            .faults(faults.clone()),
    )
}

fn blob_count(store: &Store) -> usize {
    let db = common::open_raw_sled(&store.path);
    let n = common::distinct_blobs(&db.open_tree("blob").unwrap());
    drop(db);
    n
}

/// The fault plan wraps whichever backend the config picks: a temporary
/// store's commit fails as planned, is retried, and a failed fsync poisons.
#[test]
fn faults_wrap_a_temporary_store_too() {
    let faults = Faults::new();
    let config = Config::temporary()
        .write_delay(Duration::from_secs(3600))
        .faults(faults.clone());
    let e = Engine::open(config.clone()).unwrap();
    e.set(b"k", b"v").unwrap();
    faults.fail_nth(StorageOp::Commit, 1);
    assert!(e.checkpoint().is_err());
    e.checkpoint().unwrap();
    assert_eq!(faults.injected(), 1);
    faults.fail_nth(StorageOp::Sync, 1);
    e.set(b"k", b"w").unwrap();
    assert!(e.checkpoint().is_err());
    assert!(matches!(e.set(b"k", b"x"), Err(Error::Poisoned { .. })));
    drop(e);
    faults.clear();
    // The commit before the failed sync is in the store.
    let e = Engine::open(config).unwrap();
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"w");
}

#[test]
fn a_failed_commit_is_retried_and_loses_nothing() {
    let store = Store::new();
    let faults = Faults::new();
    let e = open(&store, &faults, 5);
    faults.fail_nth(StorageOp::Commit, 1);
    for i in 0..100u64 {
        e.set(&i.to_be_bytes(), &i.to_le_bytes()).unwrap();
        e.set(&[b'b', i as u8], &vec![i as u8; 3000]).unwrap();
    }
    eventually("the failed cycle is retried", || {
        let s = e.stats();
        s.flush_errors >= 1 && s.dirty_entries == 0
    });
    assert_eq!(faults.injected(), 1);
    for i in 0..100u64 {
        assert_eq!(u64_value(&e.get(&i.to_be_bytes()).unwrap().unwrap()), i);
    }
    e.shutdown().unwrap();
    drop(e);
    // The blobs the failed attempt wrote were collected.
    assert_eq!(blob_count(&store), 100);
    let e = store.open(store.quiet());
    for i in 0..100u64 {
        assert_eq!(u64_value(&e.get(&i.to_be_bytes()).unwrap().unwrap()), i);
        assert_eq!(
            e.get(&[b'b', i as u8]).unwrap().unwrap(),
            vec![i as u8; 3000]
        );
    }
}

#[test]
fn failed_blob_writes_and_flushes_are_retried() {
    for op in [StorageOp::PutBlob, StorageOp::Flush, StorageOp::RemoveBlobs] {
        let store = Store::new();
        let faults = Faults::new();
        let e = open(&store, &faults, 3_600_000);
        for round in 0..3u8 {
            for k in 0..20u8 {
                e.set(&[k], &vec![round; 2000 + k as usize]).unwrap();
            }
            faults.fail_nth(op, 1);
            // The checkpoint reports the failure, or succeeds if its cycle
            // did not reach the failing call; either way a retry succeeds.
            if e.checkpoint().is_err() {
                e.checkpoint().unwrap();
            }
        }
        assert!(faults.injected() >= 1, "{op:?}");
        e.shutdown().unwrap();
        drop(e);
        let e = store.open(store.quiet());
        for k in 0..20u8 {
            assert_eq!(
                e.get(&[k]).unwrap().unwrap(),
                vec![2; 2000 + k as usize],
                "{op:?}"
            );
        }
        e.shutdown().unwrap();
        drop(e);
        assert_eq!(blob_count(&store), 20, "{op:?}: no orphan blob is left");
    }
}

#[test]
fn a_persistent_failure_is_reported_and_refuses_new_writes_until_it_clears() {
    let store = Store::new();
    let faults = Faults::new();
    let e = open(&store, &faults, 1);
    e.set(b"before", b"1").unwrap();
    e.checkpoint().unwrap();
    faults.fail_all(StorageOp::Commit);
    e.set(b"during", b"2").unwrap();
    // The checkpoint reports the failure.
    assert!(matches!(e.checkpoint(), Err(Error::Io(_))));
    // Once the failures pile up, new writes are refused rather than
    // acknowledged and lost.
    eventually("writes are refused", || {
        matches!(e.set(b"x", b"y"), Err(Error::FlushFailing { .. }))
    });
    assert!(e.stats().flush_errors >= 5);
    // Reads still work, including the unflushed write.
    assert_eq!(e.get(b"during").unwrap().unwrap(), b"2");
    faults.clear();
    eventually("a flush succeeds again", || e.set(b"after", b"3").is_ok());
    e.checkpoint().unwrap();
    e.shutdown().unwrap();
    drop(e);
    let e = store.open(store.quiet());
    for (k, v) in [
        (&b"before"[..], &b"1"[..]),
        (b"during", b"2"),
        (b"after", b"3"),
    ] {
        assert_eq!(e.get(k).unwrap().unwrap(), v);
    }
}

#[test]
fn a_failed_fsync_poisons_the_engine_and_the_last_checkpoint_survives() {
    let store = Store::new();
    let faults = Faults::new();
    let e = open(&store, &faults, 3_600_000);
    e.set(b"safe", b"1").unwrap();
    e.checkpoint().unwrap();
    e.set(b"unsure", b"2").unwrap();
    faults.fail_nth(StorageOp::Sync, 1);
    let syncs_before = faults.calls(StorageOp::Sync);
    match e.checkpoint() {
        Err(Error::Poisoned { reason }) => assert!(reason.contains("fsync"), "{reason}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
    // Not acknowledged, not retried: writes and checkpoints are refused.
    assert!(matches!(e.set(b"more", b"3"), Err(Error::Poisoned { .. })));
    assert!(matches!(e.checkpoint(), Err(Error::Poisoned { .. })));
    assert!(matches!(e.shutdown(), Err(Error::Poisoned { .. })));
    assert_eq!(
        faults.calls(StorageOp::Sync),
        syncs_before + 1,
        "the failed fsync was not retried"
    );
    // Reads still answer from memory and disk.
    drop(e);
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"safe").unwrap().unwrap(), b"1");
    assert_eq!(e.get(b"more").unwrap(), None);
}

#[test]
fn shutdown_reports_a_failure_that_does_not_clear() {
    let store = Store::new();
    let faults = Faults::new();
    let e = open(&store, &faults, 3_600_000);
    e.set(b"checkpointed", b"1").unwrap();
    e.checkpoint().unwrap();
    e.set(b"buffered", b"2").unwrap();
    faults.fail_all(StorageOp::Commit);
    assert!(matches!(e.shutdown(), Err(Error::Io(_))));
    assert!(
        matches!(e.shutdown(), Err(Error::Io(_))),
        "the same outcome again"
    );
    assert!(matches!(e.get(b"checkpointed"), Err(Error::Closed)));
    drop(e);
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"checkpointed").unwrap().unwrap(), b"1");
}

#[test]
fn a_failed_read_is_an_error_and_the_next_read_works() {
    let store = Store::new();
    let faults = Faults::new();
    // Without the read cache, every read below goes to storage.
    let e = store.open(store.quiet().read_cache_bytes(0).faults(faults.clone()));
    e.set(b"k", &[7; 5000]).unwrap();
    e.checkpoint().unwrap();
    faults.fail_nth(StorageOp::GetMeta, 1);
    assert!(matches!(e.get(b"k"), Err(Error::Io(_))));
    assert_eq!(e.get(b"k").unwrap().unwrap(), vec![7; 5000]);
    faults.fail_nth(StorageOp::GetBlob, 1);
    assert!(matches!(e.get(b"k"), Err(Error::Io(_))));
    assert!(matches!(e.modify(b"k", |_| ()), Ok(())));
}
