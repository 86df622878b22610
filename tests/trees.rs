//! Trees (named keyspaces): keys never collide across keyspaces, iteration
//! and watchers of one never see another's keys, transactions span them
//! atomically, they survive reopen and crashes, and the format is marked.
//! Also the easier transactions: typed aborts, `modify`, typed values and
//! TTLs inside a transaction.

mod common;

use std::time::Duration;

use common::{Store, HANG_LIMIT};
use millpond::{Config, Durability, Engine, Error, TransactionError};

fn keys(it: millpond::Iter) -> Vec<Vec<u8>> {
    it.keys()
        .map(|k| k.map(|k| k.to_vec()))
        .collect::<millpond::Result<_>>()
        .unwrap()
}

#[test]
fn keyspaces_never_collide_nor_show_each_others_keys() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let a = e.tree("a").unwrap();
    let b = e.tree(b"b").unwrap();
    let empty = e.tree("").unwrap();
    // The same key in four keyspaces, and keys that spell another
    // keyspace's internal prefix.
    e.set(b"k", b"engine").unwrap();
    a.set(b"k", b"a").unwrap();
    // A long value that does not compress: the store's format version stays
    // the one trees need (2), checked below.
    let long = common::noise(9, 3000);
    b.set(b"k", &long).unwrap();
    empty.set(b"k", b"empty").unwrap();
    e.set(b"\x02\x01ak", b"looks like a/k").unwrap();
    a.set(b"\x01k", b"looks like engine k").unwrap();
    for round in 0..2 {
        assert_eq!(e.get(b"k").unwrap().unwrap(), b"engine");
        assert_eq!(a.get(b"k").unwrap().unwrap(), b"a");
        assert_eq!(b.get(b"k").unwrap().unwrap(), long);
        assert_eq!(empty.get(b"k").unwrap().unwrap(), b"empty");
        assert_eq!(keys(e.iter()), vec![b"\x02\x01ak".to_vec(), b"k".to_vec()]);
        assert_eq!(keys(a.iter()), vec![b"\x01k".to_vec(), b"k".to_vec()]);
        let rev: Vec<Vec<u8>> = a.iter().keys().rev().map(|k| k.unwrap().to_vec()).collect();
        assert_eq!(rev, vec![b"k".to_vec(), b"\x01k".to_vec()]);
        assert_eq!(keys(b.iter()), vec![b"k".to_vec()]);
        assert_eq!(keys(empty.range::<&[u8], _>(..)), vec![b"k".to_vec()]);
        assert_eq!(a.len().unwrap(), 2);
        assert_eq!(e.tree("c").unwrap().first().unwrap(), None);
        if round == 0 {
            e.checkpoint().unwrap();
        }
    }
    assert!(a.delete(b"k").unwrap());
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"engine");
    assert!(a.compare_and_swap(b"k", None, Some(b"again")).unwrap());
    assert_eq!(a.replace(b"k", b"x").unwrap().unwrap(), b"again");
    assert_eq!(a.name(), b"a");
    drop((a, b, empty));
    e.shutdown().unwrap();

    // Reopened: the same, and the format says the store has trees.
    let e = store.open(store.quiet());
    assert_eq!(e.tree("a").unwrap().get(b"k").unwrap().unwrap(), b"x");
    assert_eq!(e.get(b"k").unwrap().unwrap(), b"engine");
    assert!(e.verify().unwrap().is_clean());
    drop(e);
    let db = sled::open(&store.path).unwrap();
    let meta = db.open_tree("meta").unwrap();
    let format = meta.get(b"\x00format").unwrap().unwrap();
    // [tag 0x10][postcard: magic (8 bytes), version 2][crc]
    assert_eq!(format[0], 0x10);
    assert_eq!(format[9], 2, "the format record is not version 2");
}

#[test]
fn a_store_without_trees_keeps_format_version_1() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set(b"k", b"v").unwrap();
    e.shutdown().unwrap();
    drop(e);
    let db = sled::open(&store.path).unwrap();
    let meta = db.open_tree("meta").unwrap();
    assert_eq!(meta.get(b"\x00format").unwrap().unwrap()[9], 1);
}

#[test]
fn a_watcher_of_a_tree_sees_only_its_keys_without_the_prefix() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let sessions = e.tree("sessions").unwrap();
    let mut sub = sessions.watch_prefix(b"", Durability::Flushed).unwrap();
    e.set(b"s1", b"engine").unwrap();
    e.tree("other").unwrap().set(b"s1", b"other").unwrap();
    sessions
        .set_with(b"s1", b"ada", Durability::Flushed)
        .unwrap();
    let ev = sub.next_timeout(HANG_LIMIT).unwrap();
    assert_eq!((ev.key(), ev.value()), (&b"s1"[..], Some(&b"ada"[..])));
    assert!(sub.next_timeout(Duration::from_millis(50)).is_none());
}

#[test]
fn a_transaction_spans_trees_atomically() {
    let store = Store::new();
    let e = store.open(store.busy());
    let accounts = e.tree("accounts").unwrap();
    let audit = e.tree("audit").unwrap();
    accounts.set_as(b"alice", &100u64).unwrap();
    for i in 0..50u64 {
        e.transaction(|tx| {
            let mut acc = tx.tree(&accounts)?;
            let n: u64 = acc.get_as(b"alice")?.unwrap();
            acc.set_as(b"alice", &(n - 1))?;
            tx.tree(&audit)?.set_as(format!("{i:03}").as_bytes(), &n)?;
            tx.set(b"last", &i.to_le_bytes())
        })
        .unwrap();
    }
    assert_eq!(accounts.get_as::<u64>(b"alice").unwrap(), Some(50));
    assert_eq!(audit.len().unwrap(), 50);
    // A tree of another engine is refused.
    let other_store = Store::new();
    let other = other_store.open(other_store.quiet());
    let foreign = other.tree("accounts").unwrap();
    let r = e.transaction(|tx| tx.tree(&foreign).map(drop));
    assert!(matches!(r, Err(Error::ForeignTree)), "{r:?}");
    e.shutdown().unwrap();
    // A crash never splits one: after a halt mid-stream, the audit count
    // and the balance agree.
    let e = store.open(store.busy());
    let (accounts, audit) = (e.tree("accounts").unwrap(), e.tree("audit").unwrap());
    for i in 50..90u64 {
        e.transaction(|tx| {
            let mut acc = tx.tree(&accounts)?;
            let n: u64 = acc.get_as(b"alice")?.unwrap();
            acc.set_as(b"alice", &(n - 1))?;
            tx.tree(&audit)?.set_as(format!("{i:03}").as_bytes(), &n)
        })
        .unwrap();
    }
    millpond::testing::halt(&e);
    drop((accounts, audit, e));
    let e = Engine::open(Config::new(&store.path)).unwrap();
    let balance: u64 = e
        .tree("accounts")
        .unwrap()
        .get_as(b"alice")
        .unwrap()
        .unwrap();
    let audited = e.tree("audit").unwrap().len().unwrap() as u64;
    assert_eq!(
        balance,
        100 - audited,
        "a transaction over two trees was split"
    );
}

#[derive(Debug, PartialEq)]
struct Insufficient(u64);

impl std::fmt::Display for Insufficient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "only {}", self.0)
    }
}

impl std::error::Error for Insufficient {}

#[test]
fn a_transaction_aborts_with_the_callers_own_error_and_writes_nothing() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set_as(b"alice", &10u64).unwrap();
    let r = e.try_transaction(|tx| {
        let n: u64 = tx.get_as(b"alice")?.unwrap();
        tx.set(b"touched", b"yes")?;
        if n < 30 {
            return Err(TransactionError::Abort(Insufficient(n)));
        }
        Ok(())
    });
    match r {
        Err(TransactionError::Abort(Insufficient(10))) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(e.get(b"touched").unwrap(), None);
    let msg = e
        .try_transaction::<(), Insufficient>(|_| Err(TransactionError::Abort(Insufficient(1))))
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "transaction aborted: only 1");
    // Engine errors come back as such; success returns the value.
    let r = e.try_transaction::<(), Insufficient>(|tx| {
        tx.set(&vec![0u8; 1 << 20], b"v")?;
        Ok(())
    });
    assert!(matches!(
        r,
        Err(TransactionError::Engine(Error::TooLarge { .. }))
    ));
    let r: Result<u64, TransactionError<Insufficient>> =
        e.try_transaction(|tx| Ok(tx.get_as::<u64>(b"alice")?.unwrap()));
    assert_eq!(r.unwrap(), 10);
}

#[test]
fn modify_typed_values_and_ttls_inside_a_transaction() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set_with_ttl(b"token", b"abc", Duration::from_secs(60))
        .unwrap();
    e.set(b"n", b"1").unwrap();
    let seen = e
        .transaction(|tx| {
            let before = tx.modify(b"n", |v| {
                let was = v.clone();
                v.as_mut().unwrap().push(b'2');
                was
            })?;
            // The transaction sees its own modify.
            assert_eq!(tx.get(b"n")?.unwrap(), b"12");
            // A modify that creates, and one that deletes.
            tx.modify(b"new", |v| *v = Some(b"made".to_vec()))?;
            tx.modify(b"gone", |v| *v = None)?;
            // TTLs: the key keeps its deadline through a modify.
            tx.modify(b"token", |v| v.as_mut().unwrap().push(b'd'))?;
            let ttl = tx.ttl(b"token")?.unwrap();
            assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50));
            assert!(tx.expire(b"n", Duration::from_secs(5))?);
            assert!(!tx.expire(b"missing", Duration::from_secs(5))?);
            tx.set_as(b"typed", &(1u32, "two"))?;
            assert_eq!(tx.get_as::<(u32, String)>(b"typed")?.unwrap().1, "two");
            Ok(before)
        })
        .unwrap();
    assert_eq!(seen.unwrap(), b"1");
    assert_eq!(e.get(b"n").unwrap().unwrap(), b"12");
    assert!(e.ttl(b"n").unwrap().unwrap() <= Duration::from_secs(5));
    assert_eq!(e.get(b"new").unwrap().unwrap(), b"made");
    assert_eq!(e.get(b"token").unwrap().unwrap(), b"abcd");
    assert!(e.ttl(b"token").unwrap().is_some());
    assert_eq!(
        e.get_as::<(u32, String)>(b"typed").unwrap().unwrap(),
        (1, "two".to_string())
    );
}
