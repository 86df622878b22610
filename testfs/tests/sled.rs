//! sled 0.34.7 (the engine under millpond) on a real testfs mount. Skips
//! (with one printed line) when FUSE is unavailable.

mod common;

use common::{dirs, fsync_tree};

const SYNCED: u32 = 200;
const FLUSHED_ONLY: u32 = 200;

fn key(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(100)).into_bytes()
}

fn config(path: &std::path::Path) -> sled::Config {
    // No background flusher: the test decides when sled flushes (its
    // flusher thread would otherwise fsync every 500 ms).
    sled::Config::new().path(path).flush_every_ms(None)
}

/// Leaves a database whose filesystem was cut. Dropping it would panic:
/// sled 0.34.7's drop path unwraps an fsync (pagecache/logger.rs:467), which
/// now fails with EIO. Its files stay open, so the unmount that follows
/// takes the abort-and-detach path. (A writer in a child process, killed
/// after the cut, avoids this.)
fn abandon(db: sled::Db) {
    std::mem::forget(db);
}

fn count_present(db: &sled::Db, range: std::ops::Range<u32>) -> usize {
    range
        .filter(|i| {
            let got = db.get(key(*i)).expect("get");
            if let Some(v) = &got {
                assert_eq!(&v[..], &value(*i)[..], "a present key has its value");
            }
            got.is_some()
        })
        .count()
}

#[test]
fn sled_power_cut_keeps_fsynced_keys() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let store = d.mnt.join("db");
    let db = config(&store).open().unwrap();
    for i in 0..SYNCED {
        db.insert(key(i), value(i)).unwrap();
    }
    db.flush().unwrap();
    fsync_tree(&d.mnt).unwrap();
    let after_fsync = m.stats();
    for i in SYNCED..SYNCED + FLUSHED_ONLY {
        db.insert(key(i), value(i)).unwrap();
    }
    db.flush().unwrap(); // sync_file_range + pwrite: reaches the FS, not durable
    let before_cut = m.stats();
    m.power_cut().unwrap();
    abandon(db);
    m.unmount().unwrap();

    let db = config(&d.backing.join("db")).open().unwrap();
    let synced = count_present(&db, 0..SYNCED);
    let flushed = count_present(&db, SYNCED..SYNCED + FLUSHED_ONLY);
    println!(
        "after power cut: {synced}/{SYNCED} fsynced keys, {flushed}/{FLUSHED_ONLY} \
         flushed-only keys; sled's own fsyncs between our fsync and the cut: {} file, {} dir",
        before_cut.file_fsyncs - after_fsync.file_fsyncs,
        before_cut.dir_fsyncs - after_fsync.dir_fsyncs,
    );
    assert!(
        before_cut.writes > after_fsync.writes,
        "the flushed-only keys did reach the filesystem"
    );
    assert_eq!(synced, SYNCED as usize, "every fsynced key survives");
    if before_cut.file_fsyncs == after_fsync.file_fsyncs {
        // sled did not fsync on its own: nothing after our fsync is durable.
        assert_eq!(flushed, 0, "flushed-only keys are lost");
    }
}

#[test]
fn sled_clean_unmount_keeps_everything() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let db = config(&d.mnt.join("db")).open().unwrap();
    let n = SYNCED + FLUSHED_ONLY;
    for i in 0..n {
        db.insert(key(i), value(i)).unwrap();
    }
    db.flush().unwrap();
    drop(db);
    m.unmount().unwrap();
    let db = config(&d.backing.join("db")).open().unwrap();
    assert_eq!(count_present(&db, 0..n), n as usize);
}

#[test]
fn sled_survives_a_torn_cut_of_unsynced_writes() {
    let Some(d) = dirs() else { return };
    for seed in 0..3u64 {
        let backing = d.backing.join(format!("run{seed}"));
        std::fs::create_dir(&backing).unwrap();
        let m = testfs::mount(&backing, &d.mnt).unwrap();
        let db = config(&d.mnt.join("db")).open().unwrap();
        for i in 0..SYNCED {
            db.insert(key(i), value(i)).unwrap();
        }
        db.flush().unwrap();
        fsync_tree(&d.mnt).unwrap();
        for i in SYNCED..SYNCED + FLUSHED_ONLY {
            db.insert(key(i), value(i)).unwrap();
        }
        db.flush().unwrap();
        let torn = m.power_cut_torn(seed).unwrap();
        abandon(db);
        m.unmount().unwrap();
        let db = config(&backing.join("db")).open().unwrap();
        let synced = count_present(&db, 0..SYNCED);
        let flushed = count_present(&db, SYNCED..SYNCED + FLUSHED_ONLY);
        println!("seed {seed}: torn {torn:?}; {synced} fsynced, {flushed} flushed-only keys");
        assert_eq!(synced, SYNCED as usize);
    }
}

#[test]
fn sled_file_lock_works_on_the_mount() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let db = config(&d.mnt.join("db")).open().unwrap();
    // sled flock()s its `db` file; the kernel handles flock locally for this
    // FUSE mount, so a second open in the same process is refused.
    let second = config(&d.mnt.join("db")).open();
    assert!(second.is_err(), "the lock is enforced");
    db.insert(b"k", b"v").unwrap();
    db.flush().unwrap();
    drop(db);
    m.unmount().unwrap();
}
