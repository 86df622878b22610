//! `verify` finds every kind of damage it promises to, `repair` fixes what
//! it can without touching live data.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::Store;
use millpond::{Clock, Engine, MockClock, Problem};

fn filled(store: &Store, clock: &Arc<MockClock>) -> Engine {
    let e = store.open(store.quiet().clock(clock.clone()));
    for i in 0..30u8 {
        let len = if i % 3 == 0 { 4000 } else { 20 };
        e.set(&[b'k', i], &vec![i; len]).unwrap();
    }
    e.set_with_ttl(b"ttl-soon", b"x", Duration::from_secs(10))
        .unwrap();
    e.set_with_ttl(b"ttl-late", &[7; 5000], Duration::from_secs(100))
        .unwrap();
    e
}

/// Runs `f` on the store's sled trees (meta, blob) with the engine closed.
fn with_trees(store: &Store, f: impl FnOnce(&sled::Tree, &sled::Tree)) {
    let db = common::open_raw_sled(&store.path);
    let meta = db.open_tree("meta").unwrap();
    let blob = db.open_tree("blob").unwrap();
    f(&meta, &blob);
    db.flush().unwrap();
}

#[test]
fn a_healthy_store_verifies_clean_with_its_counts() {
    let store = Store::new();
    let c = Arc::new(MockClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31),
    ));
    let e = filled(&store, &c);
    let r = e.verify().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.format_version, 1);
    assert_eq!(r.records, 32);
    assert_eq!(r.blobs, 11);
    assert_eq!(r.inline_values, 21);
    assert_eq!(r.ttl_records, 2);
    assert_eq!(r.expired_records, 0);
    assert_eq!(r.soonest_deadline, Some(c.now() + Duration::from_secs(10)));
    assert!(r.blob_bytes >= 10 * 4000 + 5000);
}

#[test]
fn damage_of_every_kind_is_found_and_only_safe_repairs_are_made() {
    let store = Store::new();
    let c = Arc::new(MockClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31),
    ));
    let e = filled(&store, &c);
    e.checkpoint().unwrap();
    // Rewriting a large value frees its old blob id (ids below the
    // committed next id are not swept at open, so an orphan put there stays
    // for verify to find).
    e.set(b"k\x00", &[0; 4000]).unwrap();
    e.shutdown().unwrap();
    drop(e);
    let mut orphan = 0;
    with_trees(&store, |meta, blob| {
        let ids: Vec<u64> = blob
            .iter()
            .map(|kv| u64::from_be_bytes(kv.unwrap().0[..].try_into().unwrap()))
            .collect();
        orphan = (0..).find(|i| !ids.contains(i)).unwrap();
        assert!(orphan < *ids.last().unwrap());
        // A corrupt record (inline value).
        let mut rec = meta.get(b"\x01k\x01").unwrap().unwrap().to_vec();
        rec[3] ^= 0x40;
        meta.insert(b"\x01k\x01", rec).unwrap();
        // A record whose blob is gone, and one whose blob is damaged.
        let blob_of = |key: &[u8]| {
            let rec = meta.get(key).unwrap().unwrap();
            // The blob id is the 8 bytes the record points at; find it by
            // looking for the blob whose value has the key's fill byte.
            let fill = key[key.len() - 1];
            blob.iter()
                .map(|kv| kv.unwrap())
                .find(|(_, v)| v.len() == 4000 && v[0] == fill)
                .map(|(k, _)| k)
                .unwrap_or_else(|| panic!("no blob for {rec:?}"))
        };
        let missing = blob_of(b"\x01k\x03");
        blob.remove(missing).unwrap();
        let damaged = blob_of(b"\x01k\x06");
        let mut v = blob.get(&damaged).unwrap().unwrap().to_vec();
        v[10] ^= 1;
        blob.insert(damaged, v).unwrap();
        // An orphan blob.
        blob.insert(orphan.to_be_bytes(), vec![1u8; 99]).unwrap();
        // A missing and a stale deadline entry.
        meta.remove(b"\x00ttlttl-soon").unwrap();
        meta.insert(
            b"\x00ttlk\x09",
            meta.get(b"\x00ttlttl-late").unwrap().unwrap(),
        )
        .unwrap();
    });
    let e = store.open(store.quiet().clock(c.clone()));
    let r = e.verify().unwrap();
    let has = |f: &dyn Fn(&Problem) -> bool| r.problems.iter().any(f);
    assert!(
        has(&|p| matches!(p, Problem::CorruptRecord { key, .. } if key == b"k\x01")),
        "{:?}",
        r.problems
    );
    assert!(has(
        &|p| matches!(p, Problem::MissingBlob { key, .. } if key == b"k\x03")
    ));
    assert!(has(
        &|p| matches!(p, Problem::CorruptBlob { key, .. } if key == b"k\x06")
    ));
    assert!(has(
        &|p| matches!(p, Problem::OrphanBlob { blob, len: 99 } if *blob == orphan)
    ));
    assert!(has(
        &|p| matches!(p, Problem::DeadlineMismatch { key, index: None, record: Some(_) } if key == b"ttl-soon")
    ));
    assert!(has(
        &|p| matches!(p, Problem::DeadlineMismatch { key, index: Some(_), record: None } if key == b"k\x09")
    ));
    // The damaged record no longer matches the store digest of the
    // committed state.
    assert!(has(&|p| matches!(p, Problem::DigestMismatch { .. })));
    assert_eq!(r.problems.len(), 7, "{:?}", r.problems);
    for p in &r.problems {
        assert!(!p.to_string().is_empty());
    }

    let fixed = e.repair().unwrap();
    assert_eq!(fixed.repaired, 3, "the orphan and the two deadline entries");
    let after = e.verify().unwrap();
    // Live data is never removed: the corrupt record and the record with a
    // missing or damaged blob are still reported, and so is the digest.
    assert_eq!(after.problems.len(), 4, "{:?}", after.problems);
    assert_eq!(after.records, 32);
    // The repaired deadline index works across a reopen.
    e.shutdown().unwrap();
    drop(e);
    let e = store.open(store.quiet().clock(c.clone()));
    assert_eq!(e.ttl(b"ttl-soon").unwrap(), Some(Duration::from_secs(10)));
    assert_eq!(e.ttl(b"k\x09").unwrap(), None);
    assert_eq!(e.stats().ttl_keys, 2);
}

#[test]
fn repair_purges_expired_keys() {
    let store = Store::new();
    let c = Arc::new(MockClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31),
    ));
    let e = filled(&store, &c);
    e.checkpoint().unwrap();
    c.advance(Duration::from_secs(50));
    let r = e.verify().unwrap();
    assert!(r.is_clean());
    // The background purger may already have run.
    assert!(r.expired_records <= 1);
    e.repair().unwrap();
    // Purged exactly once, by the repair or by the background purger.
    assert_eq!(e.stats().expired, 1);
    let after = e.verify().unwrap();
    assert_eq!(
        (after.expired_records, after.ttl_records, after.records),
        (0, 1, 31)
    );
}
