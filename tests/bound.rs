//! The dirty-byte bound (invariant 10): every verb keeps the buffer at or
//! under `max_dirty_bytes`, also when many threads write at once and when a
//! `modify` grows its value (its new size is known only after its closure
//! ran). `Stats::peak_dirty_bytes` is the highest byte count ever reached.

mod common;

use std::time::Duration;

use common::{u64_value, Store};

const MAX: usize = 256 * 1024;
const MODIFIERS: u64 = 8;
const MODIFIES: u64 = 1_500;
/// Keys the modifiers share (and the transactions write too).
const SHARED_KEYS: u64 = 32;
const WRITERS: u64 = 2;
const WRITES: u64 = 1_500;
const TRANSACTORS: u64 = 2;
const TRANSACTIONS: u64 = 400;
const TXN_KEYS: u64 = 16;

/// A counter followed by padding that grows with it: 8 bytes up to about
/// 8 KiB, then back to 8 (so values cross the inline threshold both ways).
fn counted(n: u64, step: usize) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.resize(8 + (n % 16) as usize * step, 0xAB);
    v
}

fn count_of(v: &[u8]) -> u64 {
    u64_value(&v[..8])
}

#[test]
fn every_verb_keeps_dirty_bytes_under_the_bound() {
    let store = Store::new();
    let e = store.open(store.quiet().max_dirty_bytes(MAX));
    let mut threads = Vec::new();
    // Read-modify-writes that grow their values, several on each key.
    for t in 0..MODIFIERS {
        let e = e.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..MODIFIES {
                let key = format!("m-{}", (i + t) % SHARED_KEYS);
                e.modify(key.as_bytes(), |v| {
                    let n = v.as_deref().map_or(0, count_of) + 1;
                    *v = Some(counted(n, 512));
                })
                .unwrap();
            }
        }));
    }
    // Blind writers, with deletes and short-lived keys for the purger.
    for t in 0..WRITERS {
        let e = e.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..WRITES {
                let key = format!("w-{t}-{}", i % 64);
                e.set(
                    key.as_bytes(),
                    &vec![t as u8; 1024 + (i % 3) as usize * 1024],
                )
                .unwrap();
                if i % 5 == 0 {
                    e.delete(format!("w-{t}-{}", (i + 32) % 64).as_bytes())
                        .unwrap();
                }
                let short = format!("x-{t}-{}", i % 32);
                e.set_with_ttl(short.as_bytes(), &[1; 200], Duration::from_millis(1))
                    .unwrap();
            }
        }));
    }
    // Transactions that count on a shared key and one of their own keys,
    // growing their values.
    for t in 0..TRANSACTORS {
        let e = e.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..TRANSACTIONS {
                let a = format!("m-{}", (i * 3 + t) % SHARED_KEYS);
                let b = format!("t-{}", (i * 7 + t) % TXN_KEYS);
                e.transaction(|tx| {
                    for k in [&a, &b] {
                        let n = tx.get(k.as_bytes())?.map_or(0, |v| count_of(&v)) + 1;
                        tx.set(k.as_bytes(), &counted(n, 512))?;
                    }
                    Ok(())
                })
                .unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let stats = e.stats();
    let peak = stats.peak_dirty_bytes;
    eprintln!(
        "peak dirty bytes {peak}, bound {MAX}: {:.3}x; {} flushes",
        peak as f64 / MAX as f64,
        stats.flushes
    );
    assert!(stats.flushes > 0, "{stats:?}");
    assert!(peak <= MAX, "dirty bytes peaked at {peak}, bound {MAX}");
    assert!(
        peak > MAX / 2,
        "the test never filled the buffer: {stats:?}"
    );

    // No update was lost on the way.
    let check = |e: &millpond::Engine| {
        let count = |k: String| e.get(k.as_bytes()).unwrap().map_or(0, |v| count_of(&v));
        let shared: u64 = (0..SHARED_KEYS).map(|k| count(format!("m-{k}"))).sum();
        let own: u64 = (0..TXN_KEYS).map(|k| count(format!("t-{k}"))).sum();
        assert_eq!(shared, MODIFIERS * MODIFIES + TRANSACTORS * TRANSACTIONS);
        assert_eq!(own, TRANSACTORS * TRANSACTIONS);
    };
    check(&e);
    e.shutdown().unwrap();
    check(&store.open(store.quiet()));
}
