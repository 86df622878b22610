//! Expiry: per-key deadlines, read-time invisibility, the purger, reclaimed
//! space, and deadlines across reopen. Time is moved with a `MockClock`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{eventually, Patience, Store};
use millpond::{Config, Engine, MockClock};

const MIN: Duration = Duration::from_secs(60);

fn clock() -> Arc<MockClock> {
    Arc::new(MockClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ))
}

fn open(store: &Store, clock: &Arc<MockClock>) -> Engine {
    store.open(store.quiet().clock(clock.clone()))
}

/// What the store holds on disk: (user records, blobs, deadline entries).
fn on_disk(store: &Store) -> (usize, usize, usize) {
    let db = common::open_raw_sled(&store.path);
    let meta = db.open_tree("meta").unwrap();
    let blobs = db.open_tree("blob").unwrap();
    let counts = (
        meta.scan_prefix([1u8]).count(),
        common::distinct_blobs(&blobs),
        meta.scan_prefix(b"\x00ttl").count(),
    );
    drop((meta, blobs, db));
    counts
}

#[test]
fn a_dirty_key_expires_at_its_deadline() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    e.set_with_ttl(b"k", b"v", MIN).unwrap();
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v");
    assert_eq!(e.ttl(b"k").unwrap(), Some(MIN));
    c.advance(MIN - Duration::from_millis(1));
    assert_eq!(e.ttl(b"k").unwrap(), Some(Duration::from_millis(1)));
    assert!(e.get(b"k").unwrap().is_some());
    c.advance(Duration::from_millis(1));
    // Invisible to every read at once, before any purge.
    assert_eq!(e.get(b"k").unwrap(), None);
    assert_eq!(e.get_as::<u8>(b"k").unwrap(), None);
    assert_eq!(e.ttl(b"k").unwrap(), None);
    assert!(!e.delete(b"k").unwrap());
    assert!(!e.expire(b"k", MIN).unwrap());
    assert!(!e.persist(b"k").unwrap());
    assert!(e.modify(b"k", |v| v.is_none()).unwrap());
    assert_eq!(e.stats().expired, 0);
}

#[test]
fn a_flushed_key_expires_at_its_deadline() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    e.set_with_ttl(b"small", b"v", MIN).unwrap();
    e.set_with_ttl(b"large", &[9; 5000], MIN).unwrap();
    e.checkpoint().unwrap();
    assert_eq!(e.stats().dirty_entries, 0);
    assert_eq!(e.get(b"large").unwrap().unwrap().len(), 5000);
    c.advance(MIN);
    assert_eq!(e.get(b"small").unwrap(), None);
    assert_eq!(e.get(b"large").unwrap(), None);
    assert_eq!(e.ttl(b"large").unwrap(), None);
}

#[test]
fn a_zero_ttl_expires_at_once() {
    let store = Store::new();
    let e = open(&store, &clock());
    e.set_with_ttl(b"k", b"v", Duration::ZERO).unwrap();
    assert_eq!(e.get(b"k").unwrap(), None);
}

#[test]
fn deadlines_survive_reopen() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    e.set_with_ttl(b"a", b"1", 10 * MIN).unwrap();
    e.set_with_ttl(b"b", &[2; 3000], 20 * MIN).unwrap();
    e.set(b"c", b"3").unwrap();
    e.shutdown().unwrap();
    drop(e);

    let e = open(&store, &c);
    // The index is rebuilt without marking anything dirty.
    let stats = e.stats();
    assert_eq!((stats.ttl_keys, stats.dirty_entries), (2, 0));
    assert_eq!(e.ttl(b"a").unwrap(), Some(10 * MIN));
    assert_eq!(e.ttl(b"b").unwrap(), Some(20 * MIN));
    assert_eq!(e.ttl(b"c").unwrap(), None);
    c.advance(15 * MIN);
    assert_eq!(e.get(b"a").unwrap(), None);
    assert_eq!(e.get(b"b").unwrap().unwrap().len(), 3000);
    // Purged exactly once, by this call or by the background purger (whose
    // next tick may come at any moment).
    assert!(e.purge_expired().unwrap() <= 1);
    assert_eq!(e.stats().expired, 1);
    assert_eq!(e.stats().ttl_keys, 1);
}

#[test]
fn a_plain_set_clears_the_deadline_in_memory_and_on_disk() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    e.set_with_ttl(b"k", b"old", MIN).unwrap();
    e.checkpoint().unwrap();
    e.set(b"k", b"new").unwrap();
    assert_eq!(e.ttl(b"k").unwrap(), None);
    e.shutdown().unwrap();
    drop(e);
    assert_eq!(on_disk(&store).2, 0, "the stored deadline entry is gone");
    let e = open(&store, &c);
    c.advance(10 * MIN);
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"new");
    assert_eq!(e.purge_expired().unwrap(), 0);
}

#[test]
fn expire_persist_and_ttl() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    assert!(!e.expire(b"missing", MIN).unwrap());
    assert!(!e.persist(b"missing").unwrap());
    assert_eq!(e.ttl(b"missing").unwrap(), None);

    e.set(b"k", b"v").unwrap();
    assert!(!e.persist(b"k").unwrap(), "no deadline to remove");
    assert!(e.expire(b"k", MIN).unwrap());
    assert_eq!(e.ttl(b"k").unwrap(), Some(MIN));
    assert!(e.expire(b"k", 2 * MIN).unwrap());
    assert_eq!(e.ttl(b"k").unwrap(), Some(2 * MIN));
    assert!(e.persist(b"k").unwrap());
    assert_eq!(e.ttl(b"k").unwrap(), None);
    c.advance(10 * MIN);
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v");
}

#[test]
fn expire_of_a_stored_blob_value_writes_only_metadata() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    let value = vec![5u8; 10_000];
    e.set(b"big", &value).unwrap();
    e.shutdown().unwrap();
    drop(e);
    let e = open(&store, &c);
    assert!(e.expire(b"big", MIN).unwrap());
    e.checkpoint().unwrap();
    assert_eq!(e.stats().blobs_written, 0, "the value was not rewritten");
    assert_eq!(e.get(b"big").unwrap().unwrap(), value);
    assert!(e.persist(b"big").unwrap());
    assert!(e.expire(b"big", MIN).unwrap());
    // A modify of a value only held as a blob pointer loads it.
    e.modify(b"big", |v| v.as_mut().unwrap()[0] = 6).unwrap();
    assert_eq!(e.get(b"big").unwrap().unwrap()[..2], [6, 5]);
    assert_eq!(
        e.ttl(b"big").unwrap(),
        Some(MIN),
        "modify keeps the deadline"
    );
    e.shutdown().unwrap();
    drop(e);
    assert_eq!(on_disk(&store), (1, 1, 1));
}

#[test]
fn modify_keeps_the_deadline_and_default_ttl_applies_to_plain_writes() {
    let store = Store::new();
    let c = clock();
    let e = store.open(store.quiet().clock(c.clone()).default_ttl(Some(5 * MIN)));
    e.set(b"plain", b"1").unwrap();
    assert_eq!(e.ttl(b"plain").unwrap(), Some(5 * MIN));
    e.set_with_ttl(b"own", b"1", MIN).unwrap();
    assert_eq!(e.ttl(b"own").unwrap(), Some(MIN));
    e.modify(b"created", |v| *v = Some(b"x".to_vec())).unwrap();
    assert_eq!(e.ttl(b"created").unwrap(), Some(5 * MIN));
    c.advance(MIN / 2);
    e.modify(b"own", |v| *v = Some(b"2".to_vec())).unwrap();
    assert_eq!(e.ttl(b"own").unwrap(), Some(MIN / 2));
    e.set_as(b"typed", &7u32).unwrap();
    assert_eq!(e.ttl(b"typed").unwrap(), Some(5 * MIN));
}

#[test]
fn purging_reclaims_records_blobs_and_deadline_entries() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    for i in 0..100u32 {
        let len = if i % 2 == 0 { 4000 } else { 10 };
        e.set_with_ttl(&i.to_be_bytes(), &vec![1; len], MIN)
            .unwrap();
    }
    e.set(b"keep", b"forever").unwrap();
    e.checkpoint().unwrap();
    e.shutdown().unwrap();
    drop(e);
    assert_eq!(on_disk(&store), (101, 50, 100));

    let e = open(&store, &c);
    c.advance(MIN);
    // Each purged exactly once, by this call or by the background purger.
    assert!(e.purge_expired().unwrap() <= 100);
    assert_eq!(e.stats().expired, 100);
    assert_eq!(e.stats().ttl_keys, 0);
    e.shutdown().unwrap();
    drop(e);
    assert_eq!(on_disk(&store), (1, 0, 0));
}

#[test]
fn a_store_reopened_after_its_keys_expired_returns_none_of_them() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    for i in 0..50u32 {
        e.set_with_ttl(&i.to_be_bytes(), &[1; 2000], MIN).unwrap();
    }
    e.shutdown().unwrap();
    drop(e);
    c.advance(2 * MIN);
    let e = open(&store, &c);
    for i in 0..50u32 {
        assert_eq!(e.get(&i.to_be_bytes()).unwrap(), None);
    }
    // The background purger removes them without being asked.
    eventually("the purger ran", || e.stats().expired == 50);
    e.shutdown().unwrap();
    drop(e);
    assert_eq!(on_disk(&store), (0, 0, 0));
}

#[test]
fn a_write_racing_with_the_purger_is_never_deleted() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    // Deterministic: the key expired, then was written again before the
    // purge ran.
    e.set_with_ttl(b"k", b"old", MIN).unwrap();
    c.advance(MIN);
    e.set(b"k", b"new").unwrap();
    assert_eq!(e.purge_expired().unwrap(), 0);
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"new");

    // Concurrent: writers keep rewriting keys (some with short deadlines)
    // while time moves and purges run back to back.
    let expired_before = e.stats().expired;
    let stop = Arc::new(AtomicBool::new(false));
    let purger = {
        let (e, c, stop) = (e.clone(), c.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                c.advance(Duration::from_millis(7));
                e.purge_expired().unwrap();
            }
        })
    };
    let writers: Vec<_> = (0..2u8)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                // At least 3000 writes, and on (in rounds of 50, one per
                // key) until purges have removed keys under the writes:
                // the purger thread runs at the scheduler's pace.
                let patience = Patience::new("purges under the writes");
                let mut i = 0u32;
                while i < 3000 || i % 50 != 0 || e.stats().expired == expired_before {
                    if i % 50 == 0 {
                        patience.check();
                    }
                    let key = [t, (i % 50) as u8];
                    if i % 3 == 0 {
                        e.set_with_ttl(&key, &i.to_le_bytes(), Duration::from_millis(5))
                            .unwrap();
                    } else {
                        e.set(&key, &i.to_le_bytes()).unwrap();
                        // A plain write is never purged.
                        let got = e.get(&key).unwrap().expect("a live value");
                        assert_eq!(got, i.to_le_bytes().to_vec());
                    }
                    i += 1;
                }
                i
            })
        })
        .collect();
    let written: Vec<u32> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    purger.join().unwrap();
    // The last write of every key was a plain set or a TTL write; check
    // each against the model.
    for t in 0..2u8 {
        for k in 0..50u32 {
            let last = (0..written[usize::from(t)])
                .rev()
                .find(|i| i % 50 == k)
                .unwrap();
            let got = e.get(&[t, k as u8]).unwrap();
            if last % 3 == 0 {
                // Its deadline may or may not have passed.
                if let Some(v) = got {
                    assert_eq!(v, last.to_le_bytes().to_vec());
                }
            } else {
                assert_eq!(got.unwrap(), last.to_le_bytes().to_vec());
            }
        }
    }
    assert!(e.stats().expired > expired_before);
}

#[test]
fn a_modify_in_progress_blocks_the_purge_of_its_key() {
    let store = Store::new();
    let c = clock();
    let e = open(&store, &c);
    e.set_with_ttl(b"k", b"1", MIN).unwrap();
    let (entered_tx, entered_rx) = crossbeam_channel::bounded(0);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
    let modifier = {
        let e = e.clone();
        std::thread::spawn(move || {
            e.modify(b"k", |v| {
                entered_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                // Still live when the closure started: extend it.
                v.as_mut().unwrap().push(b'2');
            })
            .unwrap();
        })
    };
    entered_rx.recv().unwrap();
    c.advance(2 * MIN);
    let purge = {
        let e = e.clone();
        std::thread::spawn(move || e.purge_expired().unwrap())
    };
    // The purge waits for the modify's lock, then finds the key expired
    // (modify kept its deadline) and purges the modified value.
    std::thread::sleep(Duration::from_millis(20));
    go_tx.send(()).unwrap();
    modifier.join().unwrap();
    // Purged once, by that purge or by the background purger, which may
    // have been waiting for the lock too.
    assert!(purge.join().unwrap() <= 1);
    assert_eq!(e.stats().expired, 1);
    assert_eq!(e.get(b"k").unwrap(), None);
    assert_eq!(
        e.stats().writes,
        2,
        "set and modify; the purge is not a write"
    );
}

#[test]
fn config_clock_default_is_the_system_clock() {
    let store = Store::new();
    let e = Engine::open(Config::new(&store.path)).unwrap();
    e.set_with_ttl(b"k", b"v", Duration::from_secs(3600))
        .unwrap();
    let left = e.ttl(b"k").unwrap().unwrap();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
}
