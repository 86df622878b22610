//! Watchers (`watch_prefix`): events only after a flush (or a sync), in seq
//! order per key, expiry as removal, a bounded queue that reports lag, and
//! the end of a subscription at shutdown.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Store, HANG_LIMIT};
use millpond::{Durability, Event, MockClock};

/// Long enough to show that nothing comes without a flush (the engine would
/// not flush for an hour).
const QUIET: Duration = Duration::from_millis(50);

fn changed(e: &Event) -> (Vec<u8>, Option<Vec<u8>>) {
    assert!(e.lagged().is_none(), "unexpected {e:?}");
    (e.key().to_vec(), e.value().map(<[u8]>::to_vec))
}

#[test]
fn events_come_only_after_the_change_is_flushed() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let mut sub = e.watch_prefix(b"user/", Durability::Flushed).unwrap();
    e.set(b"user/1", b"ada").unwrap();
    e.set(b"other/1", b"x").unwrap();
    e.set(b"user/2", &vec![5u8; 3000]).unwrap();
    assert!(sub.next_timeout(QUIET).is_none(), "an event before a flush");
    e.set_with(b"user/3", b"bob", Durability::Flushed).unwrap();
    let mut got: Vec<_> = (0..3)
        .map(|_| changed(&sub.next_timeout(HANG_LIMIT).expect("an event")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (b"user/1".to_vec(), Some(b"ada".to_vec())),
            (b"user/2".to_vec(), Some(vec![5u8; 3000])),
            (b"user/3".to_vec(), Some(b"bob".to_vec())),
        ]
    );
    assert!(sub.next_timeout(QUIET).is_none(), "{:?}", sub.try_next());

    // Removal, and a metadata-only change of a value in the blob tree.
    e.delete(b"user/1").unwrap();
    e.expire(b"user/2", Duration::from_secs(3600)).unwrap();
    e.checkpoint().unwrap();
    let mut got: Vec<_> = (0..2)
        .map(|_| changed(&sub.next_timeout(HANG_LIMIT).unwrap()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (b"user/1".to_vec(), None),
            (b"user/2".to_vec(), Some(vec![5u8; 3000])),
        ]
    );
    // Several subscribers, the empty prefix sees everything.
    let mut all = e.watch_prefix(b"", Durability::Buffered).unwrap();
    e.set_with(b"z", b"1", Durability::Flushed).unwrap();
    assert_eq!(changed(&all.next_timeout(HANG_LIMIT).unwrap()).0, b"z");
    assert!(sub.next_timeout(QUIET).is_none());
}

/// A metadata-only change of a value that only storage holds, compressed:
/// the event carries the value, as a read returns it.
#[test]
fn a_new_deadline_for_a_stored_compressed_value_is_told_with_the_value() {
    let store = Store::new();
    let doc: Vec<u8> = br#"{"user":"ada","cart":[1,2,3],"path":"/products/9"}"#.repeat(100);
    let e = store.open(store.quiet());
    e.set(b"user/9", &doc).unwrap();
    e.shutdown().unwrap();
    drop(e);
    // Reopened: nothing of it in memory.
    let e = store.open(store.quiet());
    assert!(
        e.verify().unwrap().blob_bytes < doc.len() as u64 / 4,
        "stored compressed"
    );
    let mut sub = e.watch_prefix(b"user/", Durability::Flushed).unwrap();
    e.expire(b"user/9", Duration::from_secs(3600)).unwrap();
    e.checkpoint().unwrap();
    assert_eq!(
        changed(&sub.next_timeout(HANG_LIMIT).expect("an event")),
        (b"user/9".to_vec(), Some(doc.clone()))
    );
    assert_eq!(e.get(b"user/9").unwrap().unwrap(), doc);
}

#[test]
fn synced_subscribers_wait_for_a_sync() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let mut synced = e.watch_prefix(b"k", Durability::Synced).unwrap();
    let mut flushed = e.watch_prefix(b"k", Durability::Flushed).unwrap();
    e.set_with(b"k1", b"v", Durability::Flushed).unwrap();
    assert!(flushed.next_timeout(HANG_LIMIT).is_some());
    assert!(
        synced.next_timeout(QUIET).is_none(),
        "an event before a sync"
    );
    e.set_with(b"k2", b"v", Durability::Synced).unwrap();
    let keys: Vec<Vec<u8>> = (0..2)
        .map(|_| synced.next_timeout(HANG_LIMIT).unwrap().key().to_vec())
        .collect();
    assert_eq!(keys, vec![b"k1".to_vec(), b"k2".to_vec()]);
}

#[test]
fn expiry_shows_as_a_removal() {
    let store = Store::new();
    let clock = Arc::new(MockClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    ));
    let e = store.open(store.quiet().clock(clock.clone()));
    let mut sub = e.watch_prefix(b"", Durability::Flushed).unwrap();
    e.set_with_ttl(b"token", b"abc", Duration::from_secs(10))
        .unwrap();
    e.checkpoint().unwrap();
    assert_eq!(
        changed(&sub.next_timeout(HANG_LIMIT).unwrap()),
        (b"token".to_vec(), Some(b"abc".to_vec()))
    );
    clock.advance(Duration::from_secs(11));
    assert_eq!(e.purge_expired().unwrap(), 1);
    e.checkpoint().unwrap();
    assert_eq!(
        changed(&sub.next_timeout(HANG_LIMIT).unwrap()),
        (b"token".to_vec(), None)
    );
    // A value already expired when it is flushed is a removal too.
    e.set_with_ttl(b"brief", b"x", Duration::ZERO).unwrap();
    e.checkpoint().unwrap();
    assert_eq!(
        changed(&sub.next_timeout(HANG_LIMIT).unwrap()),
        (b"brief".to_vec(), None)
    );
}

#[test]
fn a_slow_subscriber_gets_a_lag_event_in_place_of_what_was_dropped() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let mut sub = e.watch_prefix(b"", Durability::Flushed).unwrap();
    let n = 20_000u32;
    for i in 0..n {
        e.set(format!("k{i:06}").as_bytes(), b"v").unwrap();
    }
    e.checkpoint().unwrap();
    let mut changes = 0u64;
    let mut missed = 0u64;
    let mut last_seq = 0;
    let mut order = Vec::new();
    // Room for a few more: the next event goes in after the lag report.
    for _ in 0..100 {
        let ev = sub.next_timeout(HANG_LIMIT).unwrap();
        last_seq = ev.seq().unwrap();
        changes += 1;
    }
    e.set(b"later", b"v").unwrap();
    e.checkpoint().unwrap();
    while let Some(ev) = sub.next_timeout(QUIET) {
        match ev.lagged() {
            Some(m) => {
                missed += m;
                order.push("lag");
            }
            None => {
                let seq = ev.seq().unwrap();
                assert!(seq > last_seq, "events out of seq order");
                last_seq = seq;
                changes += 1;
                if ev.key() == b"later" {
                    order.push("later");
                }
            }
        }
    }
    assert_eq!(changes + missed, u64::from(n) + 1);
    assert!(missed > 0);
    // The gap is reported before anything that came after it.
    assert_eq!(order, vec!["lag", "later"]);
}

#[test]
fn each_keys_events_come_in_write_order_while_flushes_run() {
    let store = Store::new();
    let e = store.open(store.busy());
    let mut sub = e.watch_prefix(b"c", Durability::Flushed).unwrap();
    let writes = 3000u64;
    let keys = 5u64;
    let writer = {
        let e = e.clone();
        std::thread::spawn(move || {
            for i in 1..=writes {
                e.set(format!("c{}", i % keys).as_bytes(), &i.to_le_bytes())
                    .unwrap();
            }
            e.checkpoint().unwrap();
        })
    };
    let mut last: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut events = 0;
    // The last write of every key is always flushed, so always an event.
    while last.values().filter(|&&v| v + keys > writes).count() < keys as usize {
        let ev = sub.next_timeout(HANG_LIMIT).expect("an event");
        let v = common::u64_value(ev.value().unwrap());
        let prev = last.insert(ev.key().to_vec(), v).unwrap_or(0);
        assert!(v > prev, "key {:?}: {v} after {prev}", ev.key());
        events += 1;
    }
    writer.join().unwrap();
    eprintln!("{events} events for {writes} writes (the rest were coalesced)");
}

#[test]
fn a_subscriber_ends_after_shutdown() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let mut flushed = e.watch_prefix(b"", Durability::Flushed).unwrap();
    let mut synced = e.watch_prefix(b"", Durability::Synced).unwrap();
    e.set(b"k", b"v").unwrap();
    let reader = std::thread::spawn(move || flushed.by_ref().count());
    e.shutdown().unwrap();
    // The final cycle's change is delivered, then the iteration ends.
    assert_eq!(reader.join().unwrap(), 1);
    assert_eq!(synced.next_timeout(HANG_LIMIT).unwrap().key(), b"k");
    assert!(synced.next_timeout(HANG_LIMIT).is_none());
    assert!(matches!(
        e.watch_prefix(b"", Durability::Flushed),
        Err(millpond::Error::Closed)
    ));
}
