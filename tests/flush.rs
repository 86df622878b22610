//! Flushing: coalescing (guarantee 2), no lost update while a key is being
//! flushed (guarantee 3), bounded staleness (guarantee 4), backpressure and
//! space reclaimed from superseded values.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, u64_value, Patience, Store};

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
    // At least 10,000 writes, and on until several flushes ran under them
    // and writes were coalesced between two of them: how many writes fit
    // between two flushes depends on the machine, so the test waits for it.
    let patience = Patience::new("flushes under the writes and a coalesced write");
    let mut writes = 0u64;
    loop {
        e.set(b"hot", &writes.to_le_bytes()).unwrap();
        writes += 1;
        if writes >= 10_000 && writes % 100 == 0 {
            let stats = e.stats();
            if stats.flushes >= 3 && stats.coalesced_writes > 0 {
                break;
            }
            patience.check();
        }
    }
    e.checkpoint().unwrap();
    let stats = e.stats();
    assert_eq!(stats.writes, writes, "{stats:?}");
    assert!(
        stats.flushed_entries + stats.coalesced_writes >= writes,
        "{stats:?}"
    );
    assert!(stats.flushed_entries < writes, "{stats:?}");
    e.shutdown().unwrap();
    let e = store.open(store.quiet());
    assert_eq!(u64_value(&e.get(b"hot").unwrap().unwrap()), writes - 1);
}

/// The Reflex bug: a write made while its key is being flushed was dropped,
/// or overwritten by the older value being flushed. Here every write lands
/// while flushes run back to back, and each is read back at once.
#[test]
fn a_write_during_a_flush_of_its_key_is_never_lost() {
    let store = Store::new();
    let e = store.open(store.busy());
    // At least 20,000 writes, and on until several flushes ran under them
    // (however fast the machine writes).
    let patience = Patience::new("flushes under the writes");
    let mut last = 0;
    let mut i = 0u64;
    while i < 20_000 || i % 100 != 0 || e.stats().flushes < 3 {
        if i % 100 == 0 {
            patience.check();
        }
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
    assert!(e.stats().flushes >= 3, "{:?}", e.stats());
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
                let patience = Patience::new("flushes under the modifies");
                let mut rounds = 0u64;
                while rounds < 2_000 || rounds % 100 != 0 || e.stats().flushes < 3 {
                    if rounds % 100 == 0 {
                        patience.check();
                    }
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
    let db = common::open_raw_sled(&store.path);
    let blobs = db.open_tree("blob").unwrap();
    assert_eq!(common::distinct_blobs(&blobs), 25, "one blob per live key");
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
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (e, stop, written) = (e.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                e.set(&(i % 1000).to_be_bytes(), &i.to_le_bytes()).unwrap();
                i += 1;
                written.store(i, Ordering::Relaxed);
            }
            i
        })
    };
    // The checkpoints start once the writer runs, and go on (at least 20)
    // until writes have landed during several of them: a thread may start
    // late, and an empty checkpoint can be quicker than one write.
    eventually("the writer started", || written.load(Ordering::Relaxed) > 0);
    let patience = Patience::new("writes during the checkpoints");
    let (mut checkpoints, mut overlapped, mut last) = (0, 0, 0);
    while checkpoints < 20 || overlapped < 5 {
        patience.check();
        let writes_before = written.load(Ordering::Relaxed);
        let before = e.stats().last_seq;
        let cp = e.checkpoint().unwrap();
        assert!(
            cp.seq >= before,
            "checkpoint {cp:?} misses writes up to {before}"
        );
        assert!(cp.seq >= last);
        last = cp.seq;
        checkpoints += 1;
        if written.load(Ordering::Relaxed) > writes_before {
            overlapped += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    assert!(e.stats().syncs >= 1);
}

/// sled writes a page over about 128 KiB to a file of its own under
/// `blobs/`, and a failed write of one (a full disk) stops sled for good;
/// millpond stores long values in parts so that no page of its gets there.
#[test]
fn long_values_never_become_files_of_sleds_own() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let sizes = [
        6 * 1024,
        6 * 1024 + 1,
        8 * 1024,
        32 * 1024,
        130 * 1024,
        1 << 20,
    ];
    // Values that do not compress: stored at their full length.
    let value = |round: u8, k: usize| {
        common::noise(u64::from(round) << 8 | k as u64, sizes[k % sizes.len()])
    };
    for round in 0..3u8 {
        for k in 0..60usize {
            e.set(&(k as u32).to_be_bytes(), &value(round, k)).unwrap();
        }
        e.checkpoint().unwrap();
    }
    for k in 0..60usize {
        assert_eq!(
            e.get(&(k as u32).to_be_bytes()).unwrap().unwrap(),
            value(2, k)
        );
    }
    let r = e.verify().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.blobs, 60);
    // A build that knows no parts refuses the store by its version.
    assert_eq!(r.format_version, 3);
    e.shutdown().unwrap();
    drop(e);
    let files = std::fs::read_dir(store.path.join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files, 0, "sled wrote pages to files of their own");
    let e = store.open(store.quiet());
    for k in 0..60usize {
        assert_eq!(
            e.get(&(k as u32).to_be_bytes()).unwrap().unwrap(),
            value(2, k)
        );
    }
}
