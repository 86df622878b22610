//! The public verbs, read-your-writes (guarantee 1), typed values, and bad
//! input (guarantee 7).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Patience, Store};
use millpond::{Config, Engine, Error};
use serde::{Deserialize, Serialize};

#[test]
fn set_get_delete_modify() {
    let store = Store::new();
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"missing").unwrap(), None);
    e.set(b"k", b"v1").unwrap();
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v1");
    e.set(b"k", b"v2").unwrap();
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v2");
    assert!(e.delete(b"k").unwrap());
    assert!(!e.delete(b"k").unwrap());
    assert_eq!(e.get(b"k").unwrap(), None);

    // modify: create, change, leave alone, delete.
    let seen = e
        .modify(b"n", |v| {
            let was = v.clone();
            *v = Some(b"1".to_vec());
            was
        })
        .unwrap();
    assert_eq!(seen, None);
    e.modify(b"n", |v| v.as_mut().unwrap().push(b'2')).unwrap();
    assert_eq!(e.get(b"n").unwrap().unwrap(), b"12");
    let writes = e.stats().writes;
    e.modify(b"n", |_| ()).unwrap();
    assert_eq!(
        e.stats().writes,
        writes,
        "an unchanged value is not written"
    );
    e.modify(b"n", |v| *v = None).unwrap();
    assert_eq!(e.get(b"n").unwrap(), None);

    // The empty key and the empty value are ordinary.
    e.set(b"", b"").unwrap();
    assert_eq!(e.get(b"").unwrap().unwrap(), b"");
    e.shutdown().unwrap();
}

#[test]
fn reads_see_writes_from_any_thread_flushed_or_not() {
    let store = Store::new();
    // A tiny write delay: the keys are flushed while they are being read.
    let e = store.open(store.busy());
    let (tx, rx) = crossbeam_channel::unbounded::<u64>();
    let writer = {
        let e = e.clone();
        std::thread::spawn(move || {
            let patience = Patience::new("flushes under the reader");
            let mut i = 0u64;
            // Keep writing until several flush cycles ran under the reader.
            while i < 3000 || (i % 100 != 0 || e.stats().flushes < 3) {
                if i % 100 == 0 {
                    patience.check();
                }
                i += 1;
                let key = format!("key-{}", i % 300);
                // Every third value goes to the blob tree.
                let len = if i % 3 == 0 { 3000 } else { 8 };
                let mut value = vec![0u8; len];
                value[..8].copy_from_slice(&i.to_le_bytes());
                e.set(key.as_bytes(), &value).unwrap();
                tx.send(i).unwrap();
            }
        })
    };
    let reader = {
        let e = e.clone();
        std::thread::spawn(move || {
            for i in rx {
                let key = format!("key-{}", i % 300);
                let v = e.get(key.as_bytes()).unwrap().expect("a written key");
                let seen = u64::from_le_bytes(v[..8].try_into().unwrap());
                // Written before the send, so never older than `i`.
                assert!(seen >= i, "read {seen} after {i} was written");
            }
        })
    };
    writer.join().unwrap();
    reader.join().unwrap();
    assert!(e.stats().flushes >= 3, "the test must overlap flushes");
    e.shutdown().unwrap();
}

#[test]
fn engine_is_a_shareable_handle() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<Engine>();
    let store = Store::new();
    let e = Arc::new(store.open(store.quiet()));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 0..100u32 {
                    e.set(format!("{t}/{i}").as_bytes(), &i.to_le_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(e.stats().writes, 400);
    assert_eq!(
        e.get(b"3/99").unwrap().unwrap(),
        99u32.to_le_bytes().to_vec()
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    user: String,
    visits: u32,
}

#[test]
fn typed_values_round_trip_and_bad_ones_are_errors() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let s = Session {
        user: "ada".into(),
        visits: 3,
    };
    e.set_as(b"s", &s).unwrap();
    assert_eq!(e.get_as::<Session>(b"s").unwrap(), Some(s));
    assert_eq!(e.get_as::<Session>(b"none").unwrap(), None);
    e.set(b"bad", &[0xff; 3]).unwrap();
    match e.get_as::<Session>(b"bad") {
        Err(Error::Decode { key, .. }) => assert_eq!(key, b"bad"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    e.set_as(b"str", "text").unwrap();
    assert_eq!(e.get_as::<String>(b"str").unwrap().unwrap(), "text");
}

#[test]
fn oversized_keys_and_values_are_refused() {
    let store = Store::new();
    let e = store.open(store.quiet().max_key_len(8).max_value_len(16));
    assert!(matches!(
        e.set(b"123456789", b"v"),
        Err(Error::TooLarge {
            what: "key",
            len: 9,
            max: 8
        })
    ));
    assert!(matches!(
        e.set(b"k", &[0; 17]),
        Err(Error::TooLarge {
            what: "value",
            len: 17,
            max: 16
        })
    ));
    assert!(matches!(e.get(b"123456789"), Err(Error::TooLarge { .. })));
    let r = e.modify(b"k", |v| *v = Some(vec![0; 17]));
    assert!(matches!(r, Err(Error::TooLarge { what: "value", .. })));
    assert_eq!(
        e.get(b"k").unwrap(),
        None,
        "a refused write leaves no trace"
    );
    e.set(b"12345678", &[0; 16]).unwrap();
}

#[test]
fn invalid_config_is_an_error_from_open() {
    let store = Store::new();
    for c in [
        store.quiet().flush_threads(0),
        store.quiet().max_dirty_bytes(1),
        store.quiet().max_value_len(usize::MAX),
    ] {
        assert!(matches!(Engine::open(c), Err(Error::Config(_))));
    }
    assert!(!store.path.exists(), "a refused config creates nothing");
}

#[test]
fn calling_the_engine_from_a_modify_closure_is_refused() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let inner = e
        .modify(b"k", |v| {
            *v = Some(b"1".to_vec());
            (e.get(b"k").err(), e.set(b"x", b"y").err(), e.stats().writes)
        })
        .unwrap();
    assert!(matches!(inner.0, Some(Error::Reentrant)));
    assert!(matches!(inner.1, Some(Error::Reentrant)));
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"1");
}

#[test]
fn a_panicking_modify_closure_writes_nothing() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set(b"k", b"before").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        e.modify(b"k", |v| {
            *v = Some(b"after".to_vec());
            panic!("closure fails");
        })
    }));
    assert!(r.is_err());
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"before");
    // The engine is still usable, from this thread too.
    e.set(b"k", b"again").unwrap();
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"again");
}

#[test]
fn a_second_engine_on_a_store_in_use_is_refused() {
    let store = Store::new();
    let e = store.open(store.quiet());
    match Engine::open(store.quiet()) {
        Err(Error::Locked { path }) => assert!(path.ends_with("store")),
        other => panic!("expected Locked, got {other:?}"),
    }
    e.set(b"still", b"works").unwrap();
    e.shutdown().unwrap();
    // After shutdown the lock is released: the store opens at once.
    let again = store.open(store.quiet());
    assert_eq!(again.get(b"still").unwrap().unwrap(), b"works");
}

#[test]
fn a_temporary_store_lives_in_memory_and_its_config_clones_reopen_it() {
    let config = Config::temporary()
        .write_delay(Duration::from_secs(3600))
        .inline_threshold(common::BLOB_OVER);
    let name = config.dir().to_path_buf();
    assert!(name.to_string_lossy().starts_with("memory:"), "{name:?}");
    let e = Engine::open(config.clone()).unwrap();
    assert_eq!(e.dir(), name);
    e.set(b"small", b"v").unwrap();
    e.set(b"large", &[7u8; 3000]).unwrap();
    e.set_with_ttl(b"ttl", b"t", Duration::from_secs(600))
        .unwrap();
    let cp = e.checkpoint().unwrap();
    assert_eq!(cp.flushed_entries, 3);
    e.set(b"after", b"checkpoint").unwrap();
    // In use: a second engine is refused, naming the store.
    match Engine::open(config.clone()) {
        Err(Error::Locked { path }) => assert_eq!(path, name),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(e.verify().unwrap().is_clean());
    e.shutdown().unwrap();
    // Nothing was created under its name.
    assert!(!name.exists());

    let again = Engine::open(config.clone()).unwrap();
    assert_eq!(again.get(b"small").unwrap().unwrap(), b"v");
    assert_eq!(again.get(b"large").unwrap().unwrap(), &[7u8; 3000][..]);
    assert_eq!(again.get(b"after").unwrap().unwrap(), b"checkpoint");
    assert!(again.ttl(b"ttl").unwrap().is_some());
    assert_eq!(again.stats().ttl_keys, 1);
    drop(again);

    // Another temporary store is a separate, blank one.
    let other = Engine::open(Config::temporary()).unwrap();
    assert_ne!(other.dir(), name);
    assert_eq!(other.get(b"small").unwrap(), None);
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
    let r = Engine::open(Config::new(tmp.path()));
    assert!(matches!(r, Err(Error::NotAStore { .. })), "{r:?}");
    // Nothing was created in it.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    // A sled database that millpond did not create.
    let sled_dir = tmp.path().join("plain-sled");
    {
        let db = sled::open(&sled_dir).unwrap();
        db.insert(b"foreign", b"data").unwrap();
        db.flush().unwrap();
    }
    let r = Engine::open(Config::new(&sled_dir));
    assert!(matches!(r, Err(Error::NotAStore { .. })), "{r:?}");
}

/// Encodes a format record as DESIGN.md specifies: tag 0x10, postcard body
/// (magic, version), CRC-32 of tag and body, little endian.
fn format_record(version: u32) -> Vec<u8> {
    let mut rec = postcard::to_extend(&(*b"millpond", version), vec![0x10]).unwrap();
    let crc = crc32fast::hash(&rec);
    rec.extend_from_slice(&crc.to_le_bytes());
    rec
}

fn with_meta_tree(store: &Store, f: impl FnOnce(&sled::Tree)) {
    let db = common::open_raw_sled(&store.path);
    let meta = db.open_tree("meta").unwrap();
    f(&meta);
    db.flush().unwrap();
    drop(meta);
    drop(db);
}

#[test]
fn a_store_from_an_unknown_format_version_is_refused() {
    let store = Store::new();
    store.open(store.quiet()).shutdown().unwrap();
    with_meta_tree(&store, |meta| {
        // The record as this build writes it is what the test encodes.
        assert_eq!(meta.get(b"\x00format").unwrap().unwrap(), format_record(1));
        meta.insert(b"\x00format", format_record(99)).unwrap();
    });
    let r = Engine::open(store.quiet());
    assert!(
        matches!(
            r,
            Err(Error::UnsupportedFormat {
                found: 99,
                supported: 4
            })
        ),
        "{r:?}"
    );
}

#[test]
fn a_checksum_mismatch_is_corrupt_and_never_returned_as_data() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set(b"small", b"inline value").unwrap();
    // Stored as written (it does not compress), so the byte damaged below
    // is the value's.
    e.set(b"large", &common::noise(7, 4096)).unwrap();
    e.shutdown().unwrap();
    with_meta_tree(&store, |meta| {
        let mut rec = meta.get(b"\x01small").unwrap().unwrap().to_vec();
        let last = rec.len() - 6;
        rec[last] ^= 0x01;
        meta.insert(b"\x01small", rec).unwrap();
    });
    {
        // Damage the large value in the blob tree.
        let db = common::open_raw_sled(&store.path);
        let blobs = db.open_tree("blob").unwrap();
        let (id, mut v) = blobs
            .iter()
            .next()
            .unwrap()
            .map(|(k, v)| (k, v.to_vec()))
            .unwrap();
        v[100] ^= 0xff;
        blobs.insert(id, v).unwrap();
        db.flush().unwrap();
    }
    let e = store.open(store.quiet());
    for key in [&b"small"[..], b"large"] {
        match e.get(key) {
            Err(Error::Corrupt { key: Some(k), .. }) => assert_eq!(k, key),
            other => panic!("expected Corrupt for {key:?}, got {other:?}"),
        }
    }
    // A corrupt value is not silently replaced by a read-modify-write.
    assert!(matches!(
        e.modify(b"small", |v| *v = Some(b"x".to_vec())),
        Err(Error::Corrupt { .. })
    ));
    // Overwriting it with a blind set is allowed and repairs the key.
    e.set(b"small", b"fresh").unwrap();
    assert_eq!(e.get(b"small").unwrap().unwrap(), b"fresh");
}

#[test]
fn every_operation_after_shutdown_is_closed() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let clone = e.clone();
    e.set(b"k", b"v").unwrap();
    e.shutdown().unwrap();
    e.shutdown().unwrap();
    assert!(matches!(clone.get(b"k"), Err(Error::Closed)));
    assert!(matches!(clone.set(b"k", b"v"), Err(Error::Closed)));
    assert!(matches!(clone.delete(b"k"), Err(Error::Closed)));
    assert!(matches!(clone.modify(b"k", |_| ()), Err(Error::Closed)));
    assert!(matches!(clone.checkpoint(), Err(Error::Closed)));
    assert!(matches!(clone.get_as::<u8>(b"k"), Err(Error::Closed)));
    assert!(matches!(clone.set_as(b"k", &1u8), Err(Error::Closed)));
    clone.shutdown().unwrap();
    let _ = clone.stats();
}

#[test]
fn relative_paths_are_resolved_at_open() {
    // The engine keeps the absolute path, so a later change of working
    // directory (by any thread) cannot move the store.
    let tmp = tempfile::tempdir_in(".").unwrap();
    let relative = std::path::Path::new(tmp.path().file_name().unwrap()).join("store");
    assert!(relative.is_relative());
    let e = Engine::open(Config::new(&relative).write_delay(Duration::from_secs(60))).unwrap();
    assert!(e.dir().is_absolute());
    assert_eq!(e.dir(), std::path::absolute(&relative).unwrap());
    e.shutdown().unwrap();
}

#[test]
fn scan_lists_live_keys_in_order_across_buffer_and_disk() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let mut model = std::collections::BTreeMap::new();
    // Flushed keys, some large, over several pages.
    for i in 0..700u32 {
        let k = format!("user/{i:04}").into_bytes();
        let v = if i % 50 == 0 {
            vec![i as u8; 3000]
        } else {
            i.to_le_bytes().to_vec()
        };
        e.set(&k, &v).unwrap();
        model.insert(k, v);
    }
    e.set(b"other/1", b"x").unwrap();
    e.set(b"user", b"the prefix itself").unwrap();
    model.insert(b"user".to_vec(), b"the prefix itself".to_vec());
    e.checkpoint().unwrap();
    // Buffered changes on top: overwrites, deletes, new keys between old ones.
    for i in (0..700u32).step_by(7) {
        let k = format!("user/{i:04}").into_bytes();
        if i % 2 == 0 {
            assert!(e.delete(&k).unwrap());
            model.remove(&k);
        } else {
            e.set(&k, b"changed").unwrap();
            model.insert(k, b"changed".to_vec());
        }
        let new = format!("user/{i:04}-new").into_bytes();
        e.set(&new, b"new").unwrap();
        model.insert(new, b"new".to_vec());
    }
    e.set_with_ttl(b"user/gone", b"x", Duration::ZERO).unwrap();
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = e
        .scan_prefix(b"user")
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<millpond::Result<_>>()
        .unwrap();
    let expected: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
    assert_eq!(scanned.len(), expected.len());
    assert!(scanned == expected, "the scan differs from the model");
    assert_eq!(e.scan_prefix(b"other/").count(), 1);
    assert_eq!(e.scan_prefix(b"none").count(), 0);
    assert_eq!(e.scan_prefix(b"").count(), expected.len() + 1);
}

/// The read cache: a flushed value read once is served from memory; a write
/// to the key (flushed or not) is seen at once, and after a reopen.
#[test]
fn cached_reads_follow_every_write() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set(b"k", b"v1").unwrap();
    e.set(b"big", &vec![1u8; 3000]).unwrap();
    e.checkpoint().unwrap();
    for _ in 0..3 {
        assert_eq!(e.get(b"k").unwrap().unwrap(), b"v1");
        assert_eq!(e.get(b"big").unwrap().unwrap(), vec![1u8; 3000]);
        assert!(e.get(b"never").unwrap().is_none());
    }
    e.set(b"k", b"v2").unwrap();
    e.set(b"never", b"now").unwrap();
    e.set(b"big", &vec![2u8; 3000]).unwrap();
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v2");
    e.checkpoint().unwrap();
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v2");
    assert_eq!(e.get(b"never").unwrap().unwrap(), b"now");
    assert_eq!(e.get(b"big").unwrap().unwrap(), vec![2u8; 3000]);
    assert!(e.delete(b"k").unwrap());
    e.checkpoint().unwrap();
    assert!(e.get(b"k").unwrap().is_none());
    e.shutdown().unwrap();
    let e = store.open(store.quiet());
    assert!(e.get(b"k").unwrap().is_none());
    assert_eq!(e.get(b"big").unwrap().unwrap(), vec![2u8; 3000]);
}
