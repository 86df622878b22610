//! Cost of TTL keys against plain keys, side by side in one run, and the
//! memory the expiry index takes per key.
//!
//! `cargo bench --bench ttl` (`MILLPOND_BENCH_KEYS` sets the key count,
//! default 200 000). Each round writes the same keys once plainly and once
//! with a TTL, on two engines opened the same way, alternating which goes
//! first; the table reports the median round and the ratio. Memory per
//! indexed key is measured with a counting allocator: the allocation growth
//! when `expire` gives deadlines to keys that are already dirty (so the
//! dirty map does not grow and nothing is flushed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use millpond::{Config, Engine};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"session:00000000";
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn open(dir: &std::path::Path) -> Engine {
    Engine::open(
        Config::new(dir)
            .write_delay(Duration::from_secs(3600))
            .max_dirty_bytes(1 << 30),
    )
    .expect("open")
}

/// Writes `n` keys with 100-byte values; returns the time taken.
fn write_all(e: &Engine, n: u64, round: u64, ttl: Option<Duration>) -> Duration {
    let mut value = [0u8; 100];
    let started = Instant::now();
    for i in 0..n {
        value[..8].copy_from_slice(&(i ^ round).to_le_bytes());
        match ttl {
            Some(ttl) => e.set_with_ttl(&key(i), &value, ttl).expect("set_with_ttl"),
            None => e.set(&key(i), &value).expect("set"),
        }
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::var("MILLPOND_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let rounds = 5;
    let tmp = tempfile::tempdir().expect("tempdir");

    // Throughput: plain vs TTL writes, then reads of each, then a purge.
    let plain = open(&tmp.path().join("plain"));
    let ttl = open(&tmp.path().join("ttl"));
    let (mut t_plain, mut t_ttl) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            t_plain.push(write_all(&plain, n, round, None));
            t_ttl.push(write_all(&ttl, n, round, Some(Duration::from_secs(3600))));
        } else {
            t_ttl.push(write_all(&ttl, n, round, Some(Duration::from_secs(3600))));
            t_plain.push(write_all(&plain, n, round, None));
        }
    }
    let read = |e: &Engine| {
        let started = Instant::now();
        for i in 0..n {
            assert!(e.get(&key(i)).expect("get").is_some());
        }
        started.elapsed()
    };
    let (r_plain, r_ttl) = (read(&plain), read(&ttl));
    let per_sec = |d: Duration| n as f64 / d.as_secs_f64();
    let (wp, wt) = (median(t_plain), median(t_ttl));
    println!("millpond TTL benchmark: {n} keys, 16-byte keys, 100-byte values, median of {rounds} rounds");
    println!();
    println!("| op | plain keys (ops/s) | TTL keys (ops/s) | TTL / plain |");
    println!("|---|---:|---:|---:|");
    println!(
        "| set vs set_with_ttl (dirty, coalescing) | {:.0} | {:.0} | {:.2} |",
        per_sec(wp),
        per_sec(wt),
        wp.as_secs_f64() / wt.as_secs_f64()
    );
    println!(
        "| get (dirty) | {:.0} | {:.0} | {:.2} |",
        per_sec(r_plain),
        per_sec(r_ttl),
        r_plain.as_secs_f64() / r_ttl.as_secs_f64()
    );
    let (c_plain, c_ttl) = {
        let s = Instant::now();
        plain.checkpoint().expect("checkpoint");
        let p = s.elapsed();
        let s = Instant::now();
        ttl.checkpoint().expect("checkpoint");
        (p, s.elapsed())
    };
    println!(
        "| checkpoint of {n} entries | {:.0} | {:.0} | {:.2} |",
        per_sec(c_plain),
        per_sec(c_ttl),
        c_plain.as_secs_f64() / c_ttl.as_secs_f64()
    );
    let (g_plain, g_ttl) = (read(&plain), read(&ttl));
    println!(
        "| get (flushed) | {:.0} | {:.0} | {:.2} |",
        per_sec(g_plain),
        per_sec(g_ttl),
        g_plain.as_secs_f64() / g_ttl.as_secs_f64()
    );
    plain.shutdown().expect("shutdown");
    ttl.shutdown().expect("shutdown");
    drop((plain, ttl));

    // Reopen: the TTL store rebuilds its expiry index.
    let s = Instant::now();
    let plain = open(&tmp.path().join("plain"));
    let o_plain = s.elapsed();
    let s = Instant::now();
    let ttl = open(&tmp.path().join("ttl"));
    let o_ttl = s.elapsed();
    assert_eq!(ttl.stats().ttl_keys as u64, n);
    println!(
        "| open (ms; TTL store rebuilds its index) | {:.1} | {:.1} | {:.2} |",
        o_plain.as_secs_f64() * 1e3,
        o_ttl.as_secs_f64() * 1e3,
        o_ttl.as_secs_f64() / o_plain.as_secs_f64()
    );
    plain.shutdown().expect("shutdown");
    drop(plain);
    drop(ttl);

    // Memory per indexed key.
    let e = open(&tmp.path().join("memory"));
    write_all(&e, n, 0, None);
    let before = ALLOCATED.load(Ordering::SeqCst);
    for i in 0..n {
        assert!(e
            .expire(&key(i), Duration::from_secs(3600))
            .expect("expire"));
    }
    let after = ALLOCATED.load(Ordering::SeqCst);
    assert_eq!(e.stats().ttl_keys as u64, n);
    println!();
    println!(
        "expiry index memory: {:.1} bytes per key ({} keys of 16 bytes; {} bytes in all)",
        (after - before) as f64 / n as f64,
        n,
        after - before
    );
    drop(e);
}
