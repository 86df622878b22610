//! Flushing: coalescing (guarantee 2), no lost update while a key is being
//! flushed (guarantee 3), bounded staleness (guarantee 4), backpressure and
//! space reclaimed from superseded values.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, u64_value, Store};

#[test]
fn repeated_writes_to_a_key_are_persisted_once() {
    let store = Store::new();
    let e = store.open(store.quiet());
    for i in 0..10_000u64 {
        e.set(b"hot", &i.to_le_bytes()).unwrap();
    }
    let cp = e.checkpoint().unwrap();
    let stats = e.stats();
    assert_eq!(stats.writes, 10_000);
    assert_eq!(stats.coalesced_writes, 9_999);
    assert_eq!(cp.flushed_entries, 1);
    assert_eq!(stats.flushed_entries, 1);
    assert_eq!(stats.flushes, 1);
    e.shutdown().unwrap();
    let e = store.open(store.quiet());
    assert_eq!(u64_value(&e.get(b"hot").unwrap().unwrap()), 9_999);
}

#[test]
fn coalescing_with_continuous_flushing_still_saves_writes() {
    let store = Store::new();
    let e = store.open(store.busy());
    for i in 0..10_000u64 {
        e.set(b"hot", &i.to_le_bytes()).unwrap();
    }
    e.checkpoint().unwrap();
    let stats = e.stats();
    assert!(
        stats.flushed_entries + stats.coalesced_writes >= 10_000,
        "{stats:?}"
    );
    assert!(stats.flushed_entries < 10_000, "{stats:?}");
}

/// The Reflex bug: a write made while its key is being flushed was dropped,
/// or overwritten by the older value being flushed. Here every write lands
/// while flushes run back to back, and each is read back at once.
#[test]
fn a_write_during_a_flush_of_its_key_is_never_lost() {
    let store = Store::new();
    let e = store.open(store.busy());
    let mut last = 0;
    // At least 20 000 writes, and on until flushes have run under them (a
    // fast build can do 20 000 within one cycle).
    let started = std::time::Instant::now();
    let mut i = 0u64;
    while i < 20_000 || e.stats().flushes <= 1 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no flush ran: {:?}",
            e.stats()
        );
        i += 1;
        e.set(b"k", &i.to_le_bytes()).unwrap();
        // Large values take the blob path of the flush.
        if i % 7 == 0 {
            let mut big = vec![0u8; 2048];
            big[..8].copy_from_slice(&i.to_le_bytes());
            e.set(b"big", &big).unwrap();
            last = i;
        }
        assert_eq!(u64_value(&e.get(b"k").unwrap().unwrap()), i);
    }
    assert!(e.stats().flushes > 1, "{:?}", e.stats());
    e.shutdown().unwrap();
    let e = store.open(store.quiet());
    assert_eq!(u64_value(&e.get(b"k").unwrap().unwrap()), i);
    let big = e.get(b"big").unwrap().unwrap();
    assert_eq!(u64_value(&big[..8]), last);
}

#[test]
fn concurrent_modifies_never_lose_an_update() {
    let store = Store::new();
    let e = store.open(store.busy());
    let threads = 4;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                // At least 2000 rounds, and on until flushes have run
                // under the modifies.
                let mut rounds = 0u64;
                while rounds < 2_000 || rounds % 100 != 0 || e.stats().flushes < 3 {
                    // Two shared counters and one of the thread's own.
                    let key = if rounds % 2 == 0 { "even" } else { "odd" };
                    for k in [key, &format!("own-{t}")] {
                        e.modify(k.as_bytes(), |v| {
                            let n = v.as_deref().map_or(0, u64_value);
                            *v = Some((n + 1).to_le_bytes().to_vec());
                        })
                        .unwrap();
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let rounds: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let total: u64 = rounds.iter().sum();
    let check = |e: &millpond::Engine| {
        let get = |k: &str| u64_value(&e.get(k.as_bytes()).unwrap().unwrap());
        assert_eq!(get("even") + get("odd"), total);
        for (t, n) in rounds.iter().enumerate() {
            assert_eq!(get(&format!("own-{t}")), *n);
        }
    };
    check(&e);
    assert!(e.stats().flushes >= 3);
    e.shutdown().unwrap();
    check(&store.open(store.quiet()));
}

#[test]
fn an_acknowledged_write_reaches_disk_without_a_checkpoint() {
    let store = Store::new();
    let e = store.open(store.quiet().write_delay(Duration::from_millis(20)));
    e.set(b"k", b"v").unwrap();
    let seq = e.stats().last_seq;
    // The engine flushes on its own once the write is `write_delay` old.
    eventually("the write is flushed", || e.stats().flushed_seq >= seq);
    let stats = e.stats();
    assert_eq!(stats.dirty_entries, 0);
    assert_eq!(stats.syncs, 0, "no checkpoint was asked for");
    // (tests/crash.rs checks that a flushed write survives SIGKILL.)
}

#[test]
fn writers_wait_when_the_buffer_is_full_and_memory_stays_bounded() {
    let store = Store::new();
    let max = 256 * 1024;
    let e = store.open(store.quiet().max_dirty_bytes(max));
    let value = vec![1u8; 1000];
    let mut peak = 0;
    for i in 0..5_000u32 {
        e.set(&i.to_be_bytes(), &value).unwrap();
        peak = peak.max(e.stats().dirty_bytes);
    }
    assert!(
        peak <= max + 2000,
        "dirty bytes peaked at {peak}, limit {max}"
    );
    assert!(e.stats().flushes > 0);
    e.checkpoint().unwrap();
    for i in (0..5_000u32).step_by(97) {
        assert_eq!(e.get(&i.to_be_bytes()).unwrap().unwrap(), value);
    }
}

#[test]
fn superseded_and_deleted_values_free_their_blobs() {
    let store = Store::new();
    let e = store.open(store.quiet());
    for round in 0..20u8 {
        for k in 0..50u8 {
            e.set(&[k], &vec![round; 8192]).unwrap();
        }
        e.checkpoint().unwrap();
    }
    for k in 0..25u8 {
        assert!(e.delete(&[k]).unwrap());
    }
    e.shutdown().unwrap();
    let db = sled::open(&store.path).unwrap();
    let blobs = db.open_tree("blob").unwrap();
    assert_eq!(blobs.len(), 25, "one blob per live key");
    let meta = db.open_tree("meta").unwrap();
    assert_eq!(meta.scan_prefix([1u8]).count(), 25);
    // No gc record is left behind.
    assert_eq!(meta.scan_prefix(b"\x00gc").count(), 0);
}

#[test]
fn checkpoints_while_writers_keep_going() {
    let store = Store::new();
    let e = store.open(store.quiet().write_delay(Duration::from_millis(50)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (e, stop) = (e.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                e.set(&(i % 1000).to_be_bytes(), &i.to_le_bytes()).unwrap();
                i += 1;
            }
            i
        })
    };
    let mut last = 0;
    for _ in 0..20 {
        let before = e.stats().last_seq;
        let cp = e.checkpoint().unwrap();
        assert!(
            cp.seq >= before,
            "checkpoint {cp:?} misses writes up to {before}"
        );
        assert!(cp.seq >= last);
        last = cp.seq;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    assert!(e.stats().syncs >= 1);
}
