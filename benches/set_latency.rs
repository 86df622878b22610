//! Per-operation latency of `set`: p50, p99 and p99.9 for millpond (flushing
//! in the background as usual) beside a sharded in-memory map, in one run:
//! millpond with the default 64 MiB buffer, and with 256 MiB (enough to hold
//! the ~39 MB working set twice, as a flush cycle needs; see DESIGN.md,
//! "Sizing"). `cargo bench --bench set_latency`.
//!
//! 6 000 000 sets of 100-byte values over 200 000 keys (each rewritten 30
//! times, every value different), timed one by one with `Instant`; the
//! figures include the timer's own cost (tens of nanoseconds).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use parking_lot::Mutex;

const OPS: u64 = 6_000_000;
const KEYS: u64 = 200_000;

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"session:00000000";
    k[8..].copy_from_slice(&(i % KEYS).to_be_bytes());
    k
}

fn percentiles(mut nanos: Vec<u32>) -> (u32, u32, u32, f64) {
    let mean = nanos.iter().map(|&n| f64::from(n)).sum::<f64>() / nanos.len() as f64;
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() as f64 * q) as usize).min(nanos.len() - 1)];
    (at(0.50), at(0.99), at(0.999), mean)
}

fn time_sets(mut set: impl FnMut(&[u8], &[u8])) -> Vec<u32> {
    let mut nanos = Vec::with_capacity(OPS as usize);
    let mut value = [0u8; 100];
    for i in 0..OPS {
        value[..8].copy_from_slice(&i.to_le_bytes());
        let k = key(i);
        let t = Instant::now();
        set(&k, &value);
        nanos.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    nanos
}

fn millpond_run(dir: &std::path::Path, max_dirty: usize) -> ((u32, u32, u32, f64), u64) {
    let engine = millpond::Engine::open(millpond::Config::new(dir).max_dirty_bytes(max_dirty))
        .expect("open");
    // Warm up (allocations, first flushes), then measure.
    let _ = time_sets(|k, v| engine.set(k, v).expect("set"));
    let p = percentiles(time_sets(|k, v| engine.set(k, v).expect("set")));
    let flushes = engine.stats().flushes;
    engine.shutdown().expect("shutdown");
    (p, flushes)
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (m, flushes) = millpond_run(&tmp.path().join("default"), 64 << 20);
    let (m256, flushes256) = millpond_run(&tmp.path().join("big"), 256 << 20);
    let shards: Vec<Mutex<HashMap<Vec<u8>, Vec<u8>>>> =
        (0..64).map(|_| Mutex::new(HashMap::new())).collect();
    let hasher = RandomState::new();

    let _ = time_sets(|k, v| {
        shards[(hasher.hash_one(k) % 64) as usize]
            .lock()
            .insert(k.to_vec(), v.to_vec());
    });
    let i = percentiles(time_sets(|k, v| {
        shards[(hasher.hash_one(k) % 64) as usize]
            .lock()
            .insert(k.to_vec(), v.to_vec());
    }));

    println!("set latency: {OPS} sets of 100 B over {KEYS} keys, one thread, timed one by one");
    println!();
    println!("| | p50 | p99 | p99.9 | mean | p99 / p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, (p50, p99, p999, mean)) in [
        ("millpond, 64 MiB buffer (default)", m),
        ("millpond, 256 MiB buffer", m256),
        ("in-memory map", i),
    ] {
        println!(
            "| {name} | {p50} ns | {p99} ns | {p999} ns | {mean:.0} ns | {:.1}x |",
            f64::from(p99) / f64::from(p50)
        );
    }
    println!();
    for (name, m, flushes) in [("64 MiB", m, flushes), ("256 MiB", m256, flushes256)] {
        println!(
            "millpond ({name}) / in-memory: p50 {:.2}x, mean {:.2}x (throughput {:.2}x); {flushes} \
             flush cycles ran",
            f64::from(m.0) / f64::from(i.0),
            m.3 / i.3,
            i.3 / m.3,
        );
    }
}
