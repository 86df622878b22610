//! `verify` finds every kind of damage it promises to, `repair` fixes what
//! it can without touching live data.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::Store;
use millpond::{Clock, Compression, Engine, MockClock, Problem};

fn filled(store: &Store, clock: &Arc<MockClock>) -> Engine {
    let e = store.open(store.quiet().clock(clock.clone()));
    // Long values that do not compress, so the blob tree holds them as
    // written, each starting with its key's last byte.
    for i in 0..30u8 {
        let mut v = if i % 3 == 0 {
            common::noise(u64::from(i), 4000)
        } else {
            vec![i; 20]
        };
        v[0] = i;
        e.set(&[b'k', i], &v).unwrap();
    }
    e.set_with_ttl(b"ttl-soon", b"x", Duration::from_secs(10))
        .unwrap();
    e.set_with_ttl(
        b"ttl-late",
        &common::noise(7, 5000),
        Duration::from_secs(100),
    )
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

/// A JSON-like document of about `len` bytes, which compresses well.
fn document(n: u64, len: usize) -> Vec<u8> {
    let mut d = format!("{{\"id\":{n},\"events\":[");
    let mut i = 0u64;
    while d.len() + 60 < len {
        d.push_str(&format!(
            "{{\"at\":{},\"path\":\"/products/{}\",\"ok\":true}},",
            1_700_000_000 + i * 7 + n,
            i % 13
        ));
        i += 1;
    }
    d.push_str("null]}");
    d.into_bytes()
}

#[test]
fn compressible_values_are_stored_compressed_and_read_back_whole() {
    for compression in [Compression::Lz4, Compression::None] {
        let store = Store::new();
        let config = || store.quiet().compression(compression);
        let e = store.open(config());
        let docs: Vec<Vec<u8>> = (0..20)
            .map(|n| document(n, 2000 + 500 * n as usize))
            .collect();
        for (n, d) in docs.iter().enumerate() {
            e.set(&[b'd', n as u8], d).unwrap();
        }
        // Random bytes: never worth compressing.
        e.set(b"noise", &common::noise(3, 6000)).unwrap();
        e.checkpoint().unwrap();
        let logical: usize = docs.iter().map(Vec::len).sum::<usize>() + 6000;
        let r = e.verify().unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!(r.blobs, 21);
        match compression {
            Compression::Lz4 => {
                assert!(
                    r.blob_bytes < 6000 + logical as u64 / 3,
                    "{} of {logical}",
                    r.blob_bytes
                );
                // Builds without compression refuse the store.
                assert_eq!(r.format_version, 4);
            }
            _ => {
                assert_eq!(r.blob_bytes, logical as u64);
                // Values over 6 KiB are stored in parts (version 3).
                assert_eq!(r.format_version, 3);
            }
        }
        e.shutdown().unwrap();
        drop(e);
        // Read back whole after reopening, with either setting: a store
        // holds each value as it was written.
        for reopen in [Compression::None, Compression::Lz4] {
            let e = store.open(store.quiet().compression(reopen));
            for (n, d) in docs.iter().enumerate() {
                assert_eq!(e.get(&[b'd', n as u8]).unwrap().unwrap(), d[..]);
            }
            assert_eq!(e.get(b"noise").unwrap().unwrap(), common::noise(3, 6000));
            // A metadata-only change keeps the stored (compressed) blob.
            e.expire(b"d\x05", Duration::from_secs(3600)).unwrap();
            e.shutdown().unwrap();
            drop(e);
        }
        let e = store.open(config());
        assert_eq!(e.get(b"d\x05").unwrap().unwrap(), docs[5][..]);
        assert!(e.ttl(b"d\x05").unwrap().is_some());
        assert!(e.verify().unwrap().is_clean());
    }
}

#[test]
fn a_damaged_compressed_blob_is_corrupt_and_never_returned_as_data() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let doc = document(1, 5000);
    e.set(b"doc", &doc).unwrap();
    e.shutdown().unwrap();
    drop(e);
    for at in [0usize, 7, 100] {
        with_trees(&store, |_, blob| {
            let (id, v) = blob.iter().next().unwrap().unwrap();
            assert!(v.len() < doc.len() / 2, "stored compressed");
            let mut v = v.to_vec();
            let at = at % v.len();
            v[at] ^= 0x5a;
            blob.insert(id, v).unwrap();
        });
        let e = store.open(store.quiet());
        match e.get(b"doc") {
            Err(millpond::Error::Corrupt { key: Some(k), .. }) => assert_eq!(k, b"doc"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let r = e.verify().unwrap();
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::CorruptBlob { key, .. } if key == b"doc")),
            "{:?}",
            r.problems
        );
        e.shutdown().unwrap();
        drop(e);
        // Undo the damage for the next position.
        with_trees(&store, |_, blob| {
            let (id, v) = blob.iter().next().unwrap().unwrap();
            let mut v = v.to_vec();
            let at = at % v.len();
            v[at] ^= 0x5a;
            blob.insert(id, v).unwrap();
        });
    }
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"doc").unwrap().unwrap(), doc);
}
