//! Per-call durability: `set_with(.., Flushed)` and `set_with(.., Synced)`
//! from 1, 4 and 16 threads, each thread writing its own keys and waiting
//! for each write; writes/s and fsyncs (or flush cycles) per write, from
//! `Stats::syncs` and `Stats::flushes`. Concurrent waiters share one cycle
//! (group commit), so the cost per write falls with the threads. Then the
//! delivery latency of a watcher: from a `Flushed` write's call to its
//! event, and from the end of the flush (its `set_with` returning) to the
//! event. `cargo bench --bench durability` (`DURABILITY_SECS` sets the time
//! per case, default 3 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use millpond::{Config, Durability, Engine};

fn open(dir: &std::path::Path) -> Engine {
    Engine::open(
        Config::new(dir)
            // Only the waiters start cycles.
            .write_delay(Duration::from_secs(3600)),
    )
    .expect("open")
}

fn run(durability: Durability, threads: usize, secs: f64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = open(&tmp.path().join("store"));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let before = e.stats();
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (e, stop, writes) = (e.clone(), stop.clone(), writes.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                let value = [7u8; 100];
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("t{t:02}-{:08}", i % 10_000);
                    e.set_with(k.as_bytes(), &value, durability).expect("write");
                    i += 1;
                }
                writes.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("writer");
    }
    let took = started.elapsed().as_secs_f64();
    let after = e.stats();
    let n = writes.load(Ordering::Relaxed).max(1) as f64;
    let syncs = (after.syncs - before.syncs) as f64;
    let flushes = (after.flushes - before.flushes) as f64;
    println!(
        "{:<8} {:>3} threads  {:>9.0} writes/s  {:>6.3} fsyncs/write  {:>6.3} flush cycles/write  ({} writes)",
        format!("{durability:?}"),
        threads,
        n / took,
        syncs / n,
        flushes / n,
        n as u64
    );
    e.shutdown().expect("shutdown");
}

fn watcher_latency(rounds: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = open(&tmp.path().join("store"));
    let mut sub = e.watch_prefix(b"w", Durability::Flushed).expect("watch");
    let mut from_call = Vec::with_capacity(rounds);
    let mut from_flush = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let called = Instant::now();
        e.set_with(format!("w{i}").as_bytes(), b"v", Durability::Flushed)
            .expect("write");
        let flushed = Instant::now();
        let ev = sub.next_timeout(Duration::from_secs(60)).expect("an event");
        let got = Instant::now();
        assert_eq!(ev.key(), format!("w{i}").as_bytes());
        from_call.push(got - called);
        // The event is handed over before the writer is answered: often
        // already queued when `set_with` returns.
        from_flush.push(got.saturating_duration_since(flushed));
    }
    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    };
    println!(
        "watcher, Flushed: write call to event p50 {:?} p99 {:?}; set_with returned to event p50 {:?} p99 {:?} ({rounds} rounds)",
        pct(&mut from_call, 0.5),
        pct(&mut from_call, 0.99),
        pct(&mut from_flush, 0.5),
        pct(&mut from_flush, 0.99),
    );
    e.shutdown().expect("shutdown");
}

fn main() {
    let secs: f64 = std::env::var("DURABILITY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    println!("per-call durability, {secs} s per case, 100-byte values, write_delay 1 h");
    for durability in [Durability::Flushed, Durability::Synced] {
        for threads in [1, 4, 16] {
            run(durability, threads, secs);
        }
    }
    watcher_latency(500);
}
