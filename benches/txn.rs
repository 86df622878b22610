//! Transaction throughput: 2-key transfers between accounts, at low and high
//! contention, with millpond transactions and, in the same run, with sled
//! 0.34.7 multi-tree transactions (accounts split over two trees by parity,
//! so most transfers span both).
//!
//! `cargo bench --bench txn` (`MILLPOND_BENCH_TRANSFERS` per thread, default
//! 50 000; 2 threads). Both engines flush with the same staleness (500 ms);
//! the timed phase ends with a durable point (millpond `checkpoint`, sled
//! `flush`). Each run checks that the total balance is unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use millpond::{Config, Engine};

const THREADS: u64 = 2;
const INITIAL: u64 = 1_000_000;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn pair(rng: &mut Rng, accounts: u64) -> (u64, u64) {
    let from = rng.below(accounts);
    (from, (from + 1 + rng.below(accounts - 1)) % accounts)
}

fn millpond_run(dir: &std::path::Path, accounts: u64, per_thread: u64) -> (Duration, u64) {
    let e = Engine::open(Config::new(dir)).expect("open");
    e.transaction(|tx| {
        for i in 0..accounts {
            tx.set(&key(i), &INITIAL.to_le_bytes())?;
        }
        Ok(())
    })
    .expect("init");
    e.checkpoint().expect("checkpoint");
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + t);
                for _ in 0..per_thread {
                    let (from, to) = pair(&mut rng, accounts);
                    e.transaction(|tx| {
                        let a = u64::from_le_bytes(
                            tx.get(&key(from))?.expect("account")[..]
                                .try_into()
                                .expect("8 bytes"),
                        );
                        let b = u64::from_le_bytes(
                            tx.get(&key(to))?.expect("account")[..]
                                .try_into()
                                .expect("8 bytes"),
                        );
                        tx.set(&key(from), &(a - 1).to_le_bytes())?;
                        tx.set(&key(to), &(b + 1).to_le_bytes())
                    })
                    .expect("transfer");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    e.checkpoint().expect("checkpoint");
    let took = started.elapsed();
    let total: u64 = (0..accounts)
        .map(|i| {
            u64::from_le_bytes(
                e.get(&key(i)).expect("get").expect("account")[..]
                    .try_into()
                    .expect("8 bytes"),
            )
        })
        .sum();
    assert_eq!(total, accounts * INITIAL, "millpond lost money");
    let retries = e.stats().transaction_retries;
    e.shutdown().expect("shutdown");
    (took, retries)
}

fn sled_run(dir: &std::path::Path, accounts: u64, per_thread: u64) -> Duration {
    use sled::Transactional;
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(Some(500))
        .open()
        .expect("sled open");
    let trees = Arc::new([
        db.open_tree("even").expect("tree"),
        db.open_tree("odd").expect("tree"),
    ]);
    for i in 0..accounts {
        trees[(i % 2) as usize]
            .insert(key(i), &INITIAL.to_le_bytes())
            .expect("insert");
    }
    db.flush().expect("flush");
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let trees = trees.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + t);
                for _ in 0..per_thread {
                    let (from, to) = pair(&mut rng, accounts);
                    (&trees[0], &trees[1])
                        .transaction(|(even, odd)| {
                            let tree = |i: u64| if i % 2 == 0 { even } else { odd };
                            let read = |i: u64| -> sled::transaction::ConflictableTransactionResult<
                                u64,
                                (),
                            > {
                                let v = tree(i).get(key(i))?.expect("account");
                                Ok(u64::from_le_bytes(v[..].try_into().expect("8 bytes")))
                            };
                            let (a, b) = (read(from)?, read(to)?);
                            tree(from).insert(&key(from), &(a - 1).to_le_bytes())?;
                            tree(to).insert(&key(to), &(b + 1).to_le_bytes())?;
                            Ok(())
                        })
                        .expect("sled transfer");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    db.flush().expect("flush");
    let took = started.elapsed();
    let total: u64 = (0..accounts)
        .map(|i| {
            let v = trees[(i % 2) as usize]
                .get(key(i))
                .expect("get")
                .expect("account");
            u64::from_le_bytes(v[..].try_into().expect("8 bytes"))
        })
        .sum();
    assert_eq!(total, accounts * INITIAL, "sled lost money");
    took
}

fn main() {
    let per_thread: u64 = std::env::var("MILLPOND_BENCH_TRANSFERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = (THREADS * per_thread) as f64;
    println!("2-key transfers, {THREADS} threads x {per_thread}, timed to a durable point");
    println!();
    println!("| contention | accounts | millpond (transfers/s) | retries | sled transactions (transfers/s) | millpond / sled |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, accounts) in [("low", 10_000u64), ("high", 4)] {
        let (m, retries) =
            millpond_run(&tmp.path().join(format!("m-{name}")), accounts, per_thread);
        let s = sled_run(&tmp.path().join(format!("s-{name}")), accounts, per_thread);
        println!(
            "| {name} | {accounts} | {:.0} | {retries} | {:.0} | {:.1}x |",
            n / m.as_secs_f64(),
            n / s.as_secs_f64(),
            s.as_secs_f64() / m.as_secs_f64()
        );
    }
}
