//! Multi-key transactions: serializable, consistent within every attempt,
//! atomic, deadlock-free under contention, and compatible with `modify` and
//! plain writes on the same keys. (Crash atomicity: `tests/crash.rs`.)

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{u64_value, Rng, Store};
use millpond::{Engine, Error, MockClock, Transaction};

const ACCOUNTS: u64 = 20;
const INITIAL: u64 = 1_000;

fn account(i: u64) -> Vec<u8> {
    format!("account-{i:03}").into_bytes()
}

fn balance(tx: &mut Transaction<'_>, i: u64) -> millpond::Result<u64> {
    Ok(tx.get(&account(i))?.map_or(0, |v| u64_value(&v)))
}

fn open_bank(e: &Engine) {
    e.transaction(|tx| {
        for i in 0..ACCOUNTS {
            tx.set(&account(i), &INITIAL.to_le_bytes())?;
        }
        Ok(())
    })
    .unwrap();
}

/// Moves `amount` from `from` to `to` if `from` has it.
fn transfer(e: &Engine, from: u64, to: u64, amount: u64) -> bool {
    e.transaction(|tx| {
        let a = balance(tx, from)?;
        if a < amount {
            return Ok(false);
        }
        let b = balance(tx, to)?;
        tx.set(&account(from), &(a - amount).to_le_bytes())?;
        tx.set(&account(to), &(b + amount).to_le_bytes())?;
        Ok(true)
    })
    .unwrap()
}

fn total(e: &Engine) -> u64 {
    e.transaction(|tx| {
        let mut sum = 0;
        for i in 0..ACCOUNTS {
            sum += balance(tx, i)?;
        }
        // Every attempt sees one consistent state, even one that is retried:
        // the invariant holds inside the closure, not only in its result.
        assert_eq!(sum, ACCOUNTS * INITIAL, "an attempt saw a torn state");
        Ok(sum)
    })
    .unwrap()
}

#[test]
fn concurrent_transfers_keep_the_total_for_every_auditor() {
    let store = Store::new();
    let e = store.open(store.busy());
    open_bank(&e);
    let stop = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (e, transfers) = (e.clone(), transfers.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(t + 1);
                // At least 1500 transfers, and on until a flush ran under
                // them (a fast build can finish 1500 before the first).
                let started = std::time::Instant::now();
                let mut n = 0;
                while n < 1500 || e.stats().flushes == 0 {
                    assert!(started.elapsed() < Duration::from_secs(60), "no flush ran");
                    n += 1;
                    let from = rng.below(ACCOUNTS);
                    let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                    if transfer(&e, from, to, 1 + rng.below(50)) {
                        transfers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let auditor = {
        let (e, stop) = (e.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut audits = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(total(&e), ACCOUNTS * INITIAL);
                audits += 1;
            }
            audits
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(auditor.join().unwrap() > 0);
    assert!(transfers.load(Ordering::Relaxed) > 0);
    let stats = e.stats();
    assert!(stats.flushes > 0, "transfers must overlap flushes");
    assert!(stats.transactions > 0);
    assert_eq!(total(&e), ACCOUNTS * INITIAL);
    e.shutdown().unwrap();
    let e = store.open(store.quiet());
    assert_eq!(total(&e), ACCOUNTS * INITIAL);
}

#[test]
fn an_aborted_transaction_leaves_no_trace() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set(b"a", b"1").unwrap();
    let writes = e.stats().writes;
    let r: millpond::Result<()> = e.transaction(|tx| {
        tx.set(b"a", b"2")?;
        tx.set(b"b", b"2")?;
        assert!(tx.delete(b"a")?);
        Err(Error::Encode("the caller gave up".into()))
    });
    assert!(matches!(r, Err(Error::Encode(m)) if m == "the caller gave up"));
    assert_eq!(e.get(b"a").unwrap().unwrap(), b"1");
    assert_eq!(e.get(b"b").unwrap(), None);
    assert_eq!(e.stats().writes, writes);
    assert_eq!(e.stats().transactions, 0);
}

#[test]
fn a_transaction_sees_its_own_writes() {
    let store = Store::new();
    let c = Arc::new(MockClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31),
    ));
    let e = store.open(store.quiet().clock(c.clone()));
    e.set(b"x", b"old").unwrap();
    e.set(b"big", &[1; 5000]).unwrap();
    e.checkpoint().unwrap();
    let out = e
        .transaction(|tx| {
            assert_eq!(tx.get(b"x")?.unwrap(), b"old");
            tx.set(b"x", b"new")?;
            assert_eq!(tx.get(b"x")?.unwrap(), b"new");
            assert!(tx.delete(b"x")?);
            assert_eq!(tx.get(b"x")?, None);
            assert!(!tx.delete(b"x")?);
            assert!(!tx.delete(b"never")?);
            assert_eq!(tx.get(b"big")?.unwrap().len(), 5000);
            tx.set_with_ttl(b"t", b"ttl", Duration::from_secs(10))?;
            tx.set_with_ttl(b"gone", b"ttl", Duration::ZERO)?;
            assert_eq!(tx.get(b"gone")?, None);
            Ok(tx.get(b"t")?.map(|v| v.to_vec()))
        })
        .unwrap();
    assert_eq!(out.unwrap(), b"ttl");
    assert_eq!(e.get(b"x").unwrap(), None);
    assert_eq!(e.ttl(b"t").unwrap(), Some(Duration::from_secs(10)));
    c.advance(Duration::from_secs(10));
    assert_eq!(e.get(b"t").unwrap(), None);
    assert_eq!(
        e.transaction(|tx| tx.get(b"t")).unwrap(),
        None,
        "expired keys are absent in transactions too"
    );
}

#[test]
fn a_conflict_heavy_workload_finishes_without_lost_updates() {
    let store = Store::new();
    let e = store.open(store.busy());
    let threads = 4u64;
    let per_thread = 400u64;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    e.transaction(|tx| {
                        // Every transaction touches the same hot key.
                        let n = tx.get(b"hot")?.map_or(0, |v| u64_value(&v));
                        tx.set(b"hot", &(n + 1).to_le_bytes())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        u64_value(&e.get(b"hot").unwrap().unwrap()),
        threads * per_thread
    );
    assert_eq!(e.stats().transactions, threads * per_thread);
}

#[test]
fn transactions_modify_and_plain_writes_on_the_same_keys_lose_nothing() {
    let store = Store::new();
    let e = store.open(store.busy());
    let per_thread = 1000u64;
    let by_txn = {
        let e = e.clone();
        std::thread::spawn(move || {
            for _ in 0..per_thread {
                e.transaction(|tx| {
                    let n = tx.get(b"counter")?.map_or(0, |v| u64_value(&v));
                    tx.set(b"counter", &(n + 1).to_le_bytes())?;
                    // A plain-written key read in the same transaction.
                    tx.get(b"noise")?;
                    Ok(())
                })
                .unwrap();
            }
        })
    };
    let by_modify = {
        let e = e.clone();
        std::thread::spawn(move || {
            for _ in 0..per_thread {
                e.modify(b"counter", |v| {
                    let n = v.as_deref().map_or(0, u64_value);
                    *v = Some((n + 1).to_le_bytes().to_vec());
                })
                .unwrap();
            }
        })
    };
    let by_set = {
        let e = e.clone();
        std::thread::spawn(move || {
            for i in 0..per_thread {
                e.set(b"noise", &i.to_le_bytes()).unwrap();
            }
        })
    };
    for h in [by_txn, by_modify, by_set] {
        h.join().unwrap();
    }
    assert_eq!(
        u64_value(&e.get(b"counter").unwrap().unwrap()),
        2 * per_thread
    );
}

/// Write skew: each transaction checks a constraint over two keys and
/// changes one of them. Snapshot isolation would let both commit and break
/// the constraint (x + y >= 0); serializability does not.
#[test]
fn write_skew_is_prevented() {
    let store = Store::new();
    let e = store.open(store.quiet());
    for round in 0..200u64 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        e.set(x.as_bytes(), &50i64.to_le_bytes()).unwrap();
        e.set(y.as_bytes(), &50i64.to_le_bytes()).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = [x.clone(), y.clone()]
            .into_iter()
            .map(|target| {
                let (e, b, x, y) = (e.clone(), barrier.clone(), x.clone(), y.clone());
                std::thread::spawn(move || {
                    b.wait();
                    e.transaction(|tx| {
                        let get = |tx: &mut Transaction<'_>, k: &str| -> millpond::Result<i64> {
                            Ok(i64::from_le_bytes(
                                tx.get(k.as_bytes())?.unwrap()[..].try_into().unwrap(),
                            ))
                        };
                        let (vx, vy) = (get(tx, &x)?, get(tx, &y)?);
                        if vx + vy >= 100 {
                            let v = get(tx, &target)?;
                            tx.set(target.as_bytes(), &(v - 100).to_le_bytes())?;
                        }
                        Ok(())
                    })
                    .unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let read = |k: &str| {
            i64::from_le_bytes(
                e.get(k.as_bytes()).unwrap().unwrap()[..]
                    .try_into()
                    .unwrap(),
            )
        };
        assert!(read(&x) + read(&y) >= 0, "round {round}: write skew");
    }
}

#[test]
fn the_closure_may_run_again_and_only_the_committed_result_is_returned() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set(b"k", &0u64.to_le_bytes()).unwrap();
    let attempts = AtomicU64::new(0);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(0);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            ready_rx.recv().unwrap();
            e.set(b"k", &7u64.to_le_bytes()).unwrap();
            go_tx.send(()).unwrap();
        });
        e.transaction(|tx| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            let v = u64_value(&tx.get(b"k")?.unwrap());
            if n == 0 {
                // Let another writer change what this attempt read.
                ready_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            }
            tx.set(b"k", &(v + 1).to_le_bytes())?;
            Ok(v)
        })
        .unwrap()
    });
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(result, 7, "the committed attempt read the new value");
    assert_eq!(u64_value(&e.get(b"k").unwrap().unwrap()), 8);
    assert_eq!(e.stats().transaction_retries, 1);
}

#[test]
fn nested_transactions_and_closed_engines_are_errors() {
    let store = Store::new();
    let e = store.open(store.quiet());
    let inner = e
        .transaction(|_| Ok(e.transaction(|_| Ok(())).err()))
        .unwrap();
    assert!(matches!(inner, Some(Error::Reentrant)));
    // The engine's own verbs may be called from a transaction closure (they
    // are not part of the transaction).
    e.transaction(|_| e.set(b"outside", b"1")).unwrap();
    assert_eq!(e.get(b"outside").unwrap().unwrap(), b"1");
    e.shutdown().unwrap();
    assert!(matches!(e.transaction(|_| Ok(())), Err(Error::Closed)));
}

#[test]
fn oversized_writes_in_a_transaction_are_refused() {
    let store = Store::new();
    let e = store.open(store.quiet().max_value_len(10));
    let r = e.transaction(|tx| tx.set(b"k", &[0; 11]));
    assert!(matches!(r, Err(Error::TooLarge { what: "value", .. })));
    assert_eq!(e.get(b"k").unwrap(), None);
}
