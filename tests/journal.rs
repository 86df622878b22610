//! The write-ahead journal (`Config::journal`): what a crash leaves in it is
//! replayed by `open`, whole records only; damage is refused; segments are
//! deleted once a durable cycle covers them; group commit shares writes.
//!
//! A crash here is `millpond::testing::halt` (the engine stops without
//! flushing); SIGKILL and power cuts are in `crash.rs` and `power.rs`.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::Store;
use millpond::{Config, Durability, Engine, Error, Journal};

const MODES: [Journal; 3] = [
    Journal::Periodic(Duration::from_millis(5)),
    Journal::Process,
    Journal::Power,
];

fn segments(store: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = match fs::read_dir(store.join("journal")) {
        Ok(rd) => rd.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The segments with a header (not the one made ahead, still zeros).
fn begun(store: &Path) -> Vec<std::path::PathBuf> {
    segments(store)
        .into_iter()
        .filter(|p| fs::read(p).unwrap().iter().take(32).any(|b| *b != 0))
        .collect()
}

/// Where the records of a segment end (zeros follow).
fn records_end(data: &[u8]) -> usize {
    data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

fn crash(engine: Engine) {
    millpond::testing::halt(&engine);
}

#[test]
fn every_acknowledged_write_survives_a_crash_with_process_and_power() {
    for mode in [Journal::Process, Journal::Power] {
        let store = Store::new();
        let e = store.open(store.quiet().journal(mode));
        for i in 0..500u32 {
            e.set(format!("k{i}").as_bytes(), &i.to_le_bytes()).unwrap();
        }
        // A long value (blob-sized), a delete, a TTL and a modify.
        e.set(b"long", &vec![7u8; 5000]).unwrap();
        e.delete(b"k3").unwrap();
        e.set_with_ttl(b"ttl", b"t", Duration::from_secs(3600))
            .unwrap();
        e.modify(b"k4", |v| *v = Some(b"changed".to_vec())).unwrap();
        assert_eq!(e.stats().flushes, 0, "{mode:?}: nothing was flushed");
        crash(e);

        let e = store.open(store.quiet().journal(mode));
        assert!(e.stats().journal_replayed >= 504, "{mode:?}");
        for i in 0..500u32 {
            let got = e.get(format!("k{i}").as_bytes()).unwrap();
            match i {
                3 => assert!(got.is_none()),
                4 => assert_eq!(got.unwrap(), b"changed"),
                _ => assert_eq!(got.unwrap(), &i.to_le_bytes()[..], "{mode:?} k{i}"),
            }
        }
        assert_eq!(e.get(b"long").unwrap().unwrap(), &vec![7u8; 5000][..]);
        assert!(e.ttl(b"ttl").unwrap().is_some());
        e.shutdown().unwrap();
    }
}

#[test]
fn a_transaction_is_replayed_whole() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set(b"a", b"100").unwrap();
    e.transaction(|tx| {
        tx.set(b"a", b"60")?;
        tx.set(b"b", b"40")?;
        tx.delete(b"c")?;
        Ok(())
    })
    .unwrap();
    crash(e);
    let e = store.open(store.quiet().journal(Journal::Process));
    assert_eq!(e.get(b"a").unwrap().unwrap(), b"60");
    assert_eq!(e.get(b"b").unwrap().unwrap(), b"40");
    e.shutdown().unwrap();
}

#[test]
fn periodic_writes_survive_once_the_period_passed() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(MODES[0]));
    for i in 0..100u32 {
        e.set(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    // A sync completed after another that began after the writes returned
    // covers them (syncs run one at a time).
    let syncs = e.stats().journal_file_syncs;
    common::eventually("two more periodic syncs", || {
        e.stats().journal_file_syncs >= syncs + 2
    });
    crash(e);
    let e = store.open(store.quiet());
    for i in 0..100u32 {
        assert!(e.get(format!("k{i}").as_bytes()).unwrap().is_some(), "k{i}");
    }
    e.shutdown().unwrap();
}

#[test]
fn opening_without_a_journal_replays_it_and_removes_it() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set(b"k", b"v").unwrap();
    crash(e);
    assert!(!segments(&store.path).is_empty());
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v");
    assert!(segments(&store.path).is_empty());
    assert!(!store.path.join("journal").exists());
    e.shutdown().unwrap();
    // And what it replayed is in the store.
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v");
    e.shutdown().unwrap();
}

#[test]
fn a_clean_shutdown_leaves_nothing_to_replay() {
    for mode in MODES {
        let store = Store::new();
        let e = store.open(store.quiet().journal(mode));
        e.set(b"k", b"v").unwrap();
        e.shutdown().unwrap();
        let e = store.open(store.quiet().journal(mode));
        assert_eq!(e.stats().journal_replayed, 0);
        assert_eq!(e.get(b"k").unwrap().unwrap(), b"v");
        // One segment: the new one (the old ones were deleted by open).
        assert_eq!(begun(&store.path).len(), 1, "{mode:?}");
        e.shutdown().unwrap();
    }
}

#[test]
fn a_second_crash_after_a_replay_loses_nothing() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set(b"a", b"1").unwrap();
    crash(e);
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set(b"b", b"2").unwrap();
    crash(e);
    let e = store.open(store.quiet().journal(Journal::Process));
    assert_eq!(e.get(b"a").unwrap().unwrap(), b"1");
    assert_eq!(e.get(b"b").unwrap().unwrap(), b"2");
    e.shutdown().unwrap();
}

#[test]
fn the_journal_is_truncated_by_durable_cycles() {
    let store = Store::new();
    let e = store.open(
        Config::new(&store.path)
            .write_delay(Duration::from_millis(1))
            .journal(Journal::Process),
    );
    // 4 KiB values: about 40 MiB of journal, past the segment size several
    // times over.
    let value = vec![1u8; 4096];
    for i in 0..10_000u32 {
        e.set(format!("k{}", i % 2000).as_bytes(), &value).unwrap();
    }
    e.checkpoint().unwrap();
    // A freeze that seals the segment holding the last writes comes with a
    // later cycle; after one more checkpoint at most the newest segment and
    // the one sealed last remain.
    e.set(b"after", b"x").unwrap();
    e.checkpoint().unwrap();
    let left = begun(&store.path).len();
    assert!(left <= 2, "{left} segments left after checkpoints");
    assert!(e.stats().journal_bytes < 20 << 20, "{:?}", e.stats());
    e.shutdown().unwrap();
}

#[test]
fn group_commit_shares_syncs_among_concurrent_writers() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Power));
    let threads = 8;
    let per = 200;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let e = e.clone();
            scope.spawn(move || {
                for i in 0..per {
                    e.set(format!("t{t}-{i}").as_bytes(), b"v").unwrap();
                }
            });
        }
    });
    let s = e.stats();
    // Every write was synced before it returned, and no write needed more
    // than one sync: at most one per write (sharing makes it fewer; how
    // many fewer depends on scheduling, so it is not asserted).
    assert!(s.journal_file_syncs >= 1);
    assert!(s.journal_file_syncs <= (threads * per) as u64, "{s:?}");
    crash(e);
    let e = store.open(store.quiet());
    assert_eq!(e.len().unwrap(), threads * per);
    e.shutdown().unwrap();
}

#[test]
fn set_with_synced_is_answered_by_the_journal_not_a_cycle() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set_with(b"k", b"v", Durability::Synced).unwrap();
    let s = e.stats();
    assert_eq!(s.syncs, 0, "no durable cycle ran");
    assert!(s.journal_file_syncs >= 1);
    crash(e);
    let e = store.open(store.quiet());
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"v");
    e.shutdown().unwrap();
}

#[test]
fn a_bad_last_record_of_the_newest_segment_is_a_torn_write() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set(b"a", b"1").unwrap();
    crash(e);
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set(b"b", b"2").unwrap();
    crash(e);
    let segs = begun(&store.path);
    assert_eq!(segs.len(), 1);
    let newest = &segs[0];
    let mut data = fs::read(newest).unwrap();
    // Flip a byte in the last record.
    let n = records_end(&data);
    data[n - 1] ^= 0x55;
    fs::write(newest, &data).unwrap();
    // The newest segment with a bad last record: a torn write, the end.
    let e = store.open(store.quiet().journal(Journal::Process));
    assert!(e.get(b"b").unwrap().is_none());
    assert_eq!(e.get(b"a").unwrap().unwrap(), b"1");
    e.shutdown().unwrap();
}

#[test]
fn a_missing_segment_is_refused_unless_loss_is_accepted() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Process));
    e.set(b"a", b"1").unwrap();
    crash(e);
    for made_ahead in segments(&store.path) {
        if !begun(&store.path).contains(&made_ahead) {
            fs::remove_file(made_ahead).unwrap();
        }
    }
    let seg = begun(&store.path).pop().unwrap();
    // Rename the only segment to a later number: the records between the
    // store's cut and its base are missing.
    let data = fs::read(&seg).unwrap();
    let mut raised = data.clone();
    raised[12..20].copy_from_slice(&9u64.to_le_bytes());
    raised[20..28].copy_from_slice(&1000u64.to_le_bytes());
    let crc = crc32(&raised[..28]);
    raised[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::remove_file(&seg).unwrap();
    fs::write(
        store.path.join("journal").join(format!("{:016x}.log", 9)),
        raised,
    )
    .unwrap();
    let err = Engine::open(store.quiet()).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    let e = Engine::open(store.quiet().accept_data_loss(true)).unwrap();
    e.shutdown().unwrap();
}

/// CRC-32 (IEEE), as the journal's headers use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_temporary_store_takes_no_journal() {
    let err = Engine::open(Config::temporary().journal(Journal::Process)).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err =
        Engine::open(Config::temporary().journal(Journal::Periodic(Duration::ZERO))).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    // A value longer than a journal record may hold.
    let store = Store::new();
    let err = Engine::open(
        store
            .quiet()
            .journal(Journal::Process)
            .max_dirty_bytes(8 << 30)
            .max_value_len(2 << 30),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn a_crash_with_several_segments_replays_them_all() {
    let store = Store::new();
    // A small buffer: cycles run (and seal segments) without any sync.
    let config = || {
        store
            .quiet()
            .max_dirty_bytes(4 << 20)
            .journal(Journal::Process)
    };
    let e = store.open(config());
    let value = vec![3u8; 3000];
    let mut n = 0u32;
    // Until the journal has at least three begun segments (sealed at 4 MiB,
    // the first at 512 KiB).
    while begun(&store.path).len() < 3 {
        e.set(format!("k{n}").as_bytes(), &value).unwrap();
        // Some expire at once: the purger's tombstones are journaled too.
        if n % 10 == 0 {
            e.set_with_ttl(format!("t{n}").as_bytes(), b"x", Duration::ZERO)
                .unwrap();
        }
        n += 1;
        assert!(n < 1_000_000, "no segment was sealed");
    }
    assert_eq!(e.stats().syncs, 0, "no durable cycle truncated the journal");
    crash(e);
    let e = store.open(config());
    for i in 0..n {
        assert_eq!(
            e.get(format!("k{i}").as_bytes()).unwrap().as_deref(),
            Some(&value[..]),
            "k{i} of {n}"
        );
    }
    e.shutdown().unwrap();
}

#[test]
fn a_journal_deleted_whole_is_refused_unless_loss_is_accepted() {
    let store = Store::new();
    let e = store.open(store.quiet().journal(Journal::Power));
    e.set(b"k", b"acknowledged, only in the journal").unwrap();
    crash(e);
    fs::remove_dir_all(store.path.join("journal")).unwrap();
    let err = Engine::open(store.quiet().journal(Journal::Power)).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("journal"), "{err}");
    // Accepted: the store as its files hold it, and a new baseline.
    let e = Engine::open(store.quiet().accept_data_loss(true)).unwrap();
    assert!(e.get(b"k").unwrap().is_none());
    e.shutdown().unwrap();
    let e = Engine::open(store.quiet()).unwrap();
    e.shutdown().unwrap();
}
