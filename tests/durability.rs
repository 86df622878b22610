//! Nothing lost silently: a store that comes back older than its last
//! durable point (or blank, or without its durable record) is refused;
//! `Config::accept_data_loss` opens it anyway and records a new baseline;
//! what open finds is made durable before it serves; every sync that fails
//! poisons; a storage that keeps failing is replaced in process and nothing
//! acknowledged is lost; sled removing its own blob files never fails a
//! checkpoint.

mod common;

use std::fs;
use std::time::Duration;

use common::{eventually, Store};
use millpond::testing::{Faults, StorageOp};
use millpond::{Engine, Error};

fn corrupt_message(e: Error) -> String {
    match e {
        Error::Corrupt { .. } => e.to_string(),
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
}

/// A store with `n` keys, checkpointed and shut down.
fn store_with(store: &Store, n: u64, tag: u8) {
    let e = store.open(store.quiet());
    for i in 0..n {
        e.set(&i.to_be_bytes(), &[tag; 100]).unwrap();
    }
    e.set(b"big", &vec![tag; 3000]).unwrap();
    e.shutdown().unwrap();
}

#[test]
fn a_store_rolled_back_behind_its_durable_record_is_refused() {
    let store = Store::new();
    store_with(&store, 50, 1);
    // Keep the store's files as they were at that point.
    let old = tempfile::tempdir().unwrap();
    common::copy_dir(&store.path, old.path());
    // A later checkpoint (new values, more keys).
    store_with(&store, 80, 2);
    // Roll the store's own files back, keeping the durable record: what a
    // store whose log lost its newest part looks like after recovery.
    let record = fs::read(store.path.join("millpond.durable")).unwrap();
    fs::remove_dir_all(&store.path).unwrap();
    common::copy_dir(old.path(), &store.path);
    fs::write(store.path.join("millpond.durable"), record).unwrap();

    let msg = corrupt_message(Engine::open(store.quiet()).unwrap_err());
    assert!(msg.contains("older than its last durable point"), "{msg}");

    // Accepting the loss opens it at the state its files hold...
    let e = store.open(store.quiet().accept_data_loss(true));
    assert_eq!(e.get(&0u64.to_be_bytes()).unwrap().unwrap(), vec![1u8; 100]);
    assert!(e.get(&70u64.to_be_bytes()).unwrap().is_none());
    assert!(e.verify().unwrap().is_clean());
    e.shutdown().unwrap();
    // ... and records it as the new baseline.
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"big").unwrap().unwrap(), vec![1u8; 3000]);
}

#[test]
fn a_store_whose_files_came_back_blank_is_refused() {
    let store = Store::new();
    store_with(&store, 20, 1);
    // sled recovers a truncated log as an empty database.
    fs::write(store.path.join("db"), b"").unwrap();
    for entry in fs::read_dir(&store.path).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_string_lossy().starts_with("snap.") {
            fs::remove_file(store.path.join(name)).unwrap();
        }
    }
    let err = Engine::open(store.quiet()).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "a blank store where one existed must be refused: {err:?}"
    );
    // postmortem (fuzz target `damage`, seed rollback-2): with its durable
    // record file emptied too, the blank store was taken for one whose
    // creation a crash had cut short, and created anew.
    let durable = store.path.join("millpond.durable");
    let kept = fs::read(&durable).unwrap();
    fs::write(&durable, b"").unwrap();
    let msg = corrupt_message(Engine::open(store.quiet()).unwrap_err());
    assert!(msg.contains("durable record"), "{msg}");
    fs::write(&durable, kept).unwrap();
    let e = store.open(store.quiet().accept_data_loss(true));
    assert!(e.get(&0u64.to_be_bytes()).unwrap().is_none());
    e.set(b"new", b"life").unwrap();
    e.shutdown().unwrap();
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"new").unwrap().unwrap(), b"life");
}

#[test]
fn a_missing_or_damaged_durable_record_is_refused() {
    let store = Store::new();
    store_with(&store, 20, 1);
    let path = store.path.join("millpond.durable");
    let good = fs::read(&path).unwrap();

    // One damaged slot: the other still holds the newest record.
    let mut one = good.clone();
    one[0] ^= 1;
    fs::write(&path, &one).unwrap();
    let e = store.open(store.quiet());
    assert_eq!(e.get(&3u64.to_be_bytes()).unwrap().unwrap(), vec![1u8; 100]);
    e.shutdown().unwrap();

    // Both slots damaged.
    let mut both = good.clone();
    both[0] ^= 1;
    both[512] ^= 1;
    fs::write(&path, &both).unwrap();
    let msg = corrupt_message(Engine::open(store.quiet()).unwrap_err());
    assert!(msg.contains("durable record"), "{msg}");

    // Gone.
    fs::remove_file(&path).unwrap();
    let msg = corrupt_message(Engine::open(store.quiet()).unwrap_err());
    assert!(msg.contains("durable record is missing"), "{msg}");
    let e = store.open(store.quiet().accept_data_loss(true));
    assert_eq!(e.get(&3u64.to_be_bytes()).unwrap().unwrap(), vec![1u8; 100]);
    e.shutdown().unwrap();
    assert!(path.exists(), "accepting writes a new durable record");
    store.open(store.quiet()).shutdown().unwrap();
}

/// postmortem: a checkpoint right after reopening a store that a killed
/// process had flushed but not synced returned `Ok` without any fsync: the
/// state found at open was counted as durable.
#[test]
fn open_makes_the_state_it_found_durable_before_serving() {
    let store = Store::new();
    let e = store.open(store.busy());
    for i in 0..100u64 {
        e.set(&i.to_be_bytes(), b"flushed, never synced").unwrap();
    }
    let last = e.stats().last_seq;
    eventually("the writes are flushed", || e.stats().flushed_seq >= last);
    assert_eq!(e.stats().syncs, 0);
    // A crash: nothing more is flushed or synced.
    millpond::testing::halt(&e);
    drop(e);

    let faults = Faults::new();
    let e = store.open(store.quiet().faults(faults.clone()));
    assert!(
        faults.calls(StorageOp::Sync) >= 1,
        "open served a state it had not made durable"
    );
    let cp = e.checkpoint().unwrap();
    assert!(cp.seq >= last);
    assert_eq!(e.stats().durable_seq, last);
}

/// postmortem: `repair` synced through the storage directly, and a failed
/// sync there left the engine accepting writes it could no longer promise.
#[test]
fn a_failed_sync_in_repair_poisons_the_engine() {
    let store = Store::new();
    let faults = Faults::new();
    let e = store.open(store.quiet().faults(faults.clone()));
    e.set(b"k", b"v").unwrap();
    e.checkpoint().unwrap();
    faults.fail_all(StorageOp::Sync);
    assert!(e.repair().is_err());
    assert!(matches!(e.set(b"k", b"w"), Err(Error::Poisoned { .. })));
    assert!(matches!(e.checkpoint(), Err(Error::Poisoned { .. })));
}

/// A storage that keeps failing (as sled does after its first I/O error,
/// for example on a full disk) is replaced in process; writes are refused
/// meanwhile and reads keep working; once the cause clears, writes resume
/// and nothing acknowledged is lost.
#[test]
fn a_storage_that_keeps_failing_is_reopened_and_nothing_is_lost() {
    let store = Store::new();
    let faults = Faults::new();
    let e = store.open(
        store
            .quiet()
            .write_delay(Duration::from_millis(2))
            .faults(faults.clone()),
    );
    e.set(b"before", b"flushed").unwrap();
    e.checkpoint().unwrap();
    faults.fail_all(StorageOp::Commit);
    let mut acknowledged = 0u64;
    // Write until the engine refuses (it refuses after repeated failures).
    let refused = loop {
        match e.set(&acknowledged.to_be_bytes(), &acknowledged.to_le_bytes()) {
            Ok(()) => acknowledged += 1,
            Err(err) => break err,
        }
        if acknowledged % 100 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(acknowledged < 10_000_000, "writes were never refused");
    };
    assert!(matches!(refused, Error::FlushFailing { .. }), "{refused:?}");
    eventually("the storage is reopened", || e.stats().storage_reopens >= 1);
    // Reads keep working, from memory and from storage.
    assert_eq!(e.get(b"before").unwrap().unwrap(), b"flushed");
    assert_eq!(
        e.get(&0u64.to_be_bytes()).unwrap().unwrap(),
        &0u64.to_le_bytes()[..]
    );
    faults.clear();
    eventually("writes are accepted again", || {
        e.set(b"after", b"ok").is_ok()
    });
    e.checkpoint().unwrap();
    e.shutdown().unwrap();
    drop(e);
    let e = store.open(store.quiet());
    for i in 0..acknowledged {
        assert_eq!(
            e.get(&i.to_be_bytes()).unwrap().unwrap(),
            &i.to_le_bytes()[..],
            "acknowledged write {i} lost"
        );
    }
    assert_eq!(e.get(b"after").unwrap().unwrap(), b"ok");
    assert!(e.verify().unwrap().is_clean());
}

/// postmortem: with values over sled's out-of-line page size (~128 KiB),
/// which sled keeps as files under `blobs/` and deletes by itself, a
/// checkpoint failed (and poisoned the engine) when a file listed by the
/// sync vanished before it was opened.
#[test]
fn sled_removing_its_own_blob_files_never_fails_a_checkpoint() {
    let store = Store::new();
    let e = store.open(store.quiet().max_dirty_bytes(64 << 20));
    let rounds = std::env::var("MILLPOND_SYNC_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u32);
    for round in 0..rounds {
        for k in 0..4u8 {
            e.set(&[k], &vec![(round as u8) ^ k; 200 * 1024]).unwrap();
        }
        e.checkpoint()
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
    }
    e.shutdown().unwrap();
}

#[test]
fn a_damaged_state_record_is_refused_and_rebuilt_when_the_loss_is_accepted() {
    let store = Store::new();
    store_with(&store, 30, 1);
    {
        let db = common::open_raw_sled(&store.path);
        let meta = db.open_tree("meta").unwrap();
        let mut raw = meta.get(b"\x00state").unwrap().unwrap().to_vec();
        raw[1] ^= 0x55;
        meta.insert(b"\x00state", raw).unwrap();
        db.flush().unwrap();
    }
    let msg = corrupt_message(Engine::open(store.quiet()).unwrap_err());
    assert!(msg.contains("state record"), "{msg}");
    let e = store.open(store.quiet().accept_data_loss(true));
    assert_eq!(e.get(&7u64.to_be_bytes()).unwrap().unwrap(), vec![1u8; 100]);
    assert_eq!(e.get(b"big").unwrap().unwrap(), vec![1u8; 3000]);
    assert!(e.verify().unwrap().is_clean());
    // New writes get seqs above every stored one, and new blobs fresh ids.
    e.set(b"big", &vec![2u8; 3000]).unwrap();
    e.set(&7u64.to_be_bytes(), b"after").unwrap();
    e.shutdown().unwrap();
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"big").unwrap().unwrap(), vec![2u8; 3000]);
    assert_eq!(e.get(&7u64.to_be_bytes()).unwrap().unwrap(), b"after");
    assert!(e.verify().unwrap().is_clean());
}
