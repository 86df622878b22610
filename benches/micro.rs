//! Micro-benchmarks of single engine calls, each beside the same op on raw
//! sled 0.34.7 and/or an in-memory map in the same run.
//!
//! `cargo bench --bench micro` (about 2-3 minutes on 2 cores, most of it
//! building the stores for `open`). Divan's options apply, e.g. `cargo bench
//! --bench micro -- get_flushed` for one group.
//!
//! - `set`: 100-byte values, each different (a counter in the first 8
//!   bytes: sled skips a write of an equal value), cycling over 10,000 keys,
//!   engine opened with the default `write_delay` (500 ms), so background
//!   flushes run during the measurement, as sled's own flusher does
//!   (`flush_every_ms` 500, its default). In-memory: 64 `parking_lot`
//!   mutexes over `HashMap`s, hashed like millpond's dirty map.
//! - `get_dirty`: 4,096 keys written and never flushed (`write_delay` 1 h),
//!   read in a precomputed random order.
//! - `get_flushed`: the same keys after `checkpoint()` (the dirty map is
//!   empty, every read goes to sled and decodes a record), beside raw sled
//!   holding the same keys and values.
//! - `modify`: increment a u64 counter (1,024 counters, cycled).
//! - `checkpoint`: N keys rewritten (untimed), then one `checkpoint()`
//!   (flush cycle + fsync), timed whole.
//! - `open`: `Engine::open` + `shutdown` of a store of N keys of 100 bytes
//!   (built once, reused), beside raw sled opening and closing the same
//!   directory.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use divan::{black_box, Bencher};
use millpond::{Config, Engine};
use parking_lot::Mutex;

fn main() {
    divan::main();
    // The stores live in one temporary directory for the whole run.
    if let Some(dir) = ROOT.lock().take() {
        let _ = dir.close();
    }
}

static ROOT: LazyLock<Mutex<Option<tempfile::TempDir>>> = LazyLock::new(|| {
    Mutex::new(Some(
        tempfile::Builder::new()
            .prefix("millpond-micro-")
            .tempdir()
            .expect("a temporary directory"),
    ))
});

/// A fresh directory under the run's temporary directory.
fn fresh_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = ROOT.lock();
    let root = root.as_ref().expect("the run's directory").path();
    root.join(format!("{name}-{n}"))
}

const VALUE: usize = 100;

fn key(i: usize) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(key).collect()
}

/// 100 bytes that differ with `version`.
fn value(i: usize, version: u64) -> [u8; VALUE] {
    let mut v = [0u8; VALUE];
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    for chunk in v.chunks_exact_mut(4) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&(x as u32).to_le_bytes());
    }
    v[..8].copy_from_slice(&version.to_le_bytes());
    v
}

/// Indexes into `0..n` in a fixed random order (xorshift), 65,536 of them.
fn random_order(n: usize) -> Vec<u32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..1 << 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((u128::from(x) * n as u128) >> 64) as u32
        })
        .collect()
}

fn open_millpond(dir: &Path, write_delay: Duration) -> Engine {
    Engine::open(Config::new(dir).write_delay(write_delay)).expect("open millpond")
}

fn open_sled(dir: &Path) -> sled::Db {
    sled::Config::new().path(dir).open().expect("open sled")
}

const HOUR: Duration = Duration::from_secs(3600);
const DEFAULT_DELAY: Duration = Duration::from_millis(500);

/// The in-memory baseline: 64 `parking_lot` mutexes over `HashMap`s, the
/// shard chosen by the same hasher millpond's dirty map uses (std
/// `RandomState`), values shared by reads without a copy.
struct ShardedMap {
    hasher: RandomState,
    shards: Vec<Mutex<MapShard>>,
}

type MapShard = HashMap<Box<[u8]>, Arc<[u8]>>;

impl ShardedMap {
    fn new() -> ShardedMap {
        ShardedMap {
            hasher: RandomState::new(),
            shards: (0..64).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<MapShard> {
        &self.shards[(self.hasher.hash_one(key) % 64) as usize]
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        let value: Arc<[u8]> = Arc::from(value);
        let mut shard = self.shard(key).lock();
        match shard.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                shard.insert(key.into(), value);
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.shard(key).lock().get(key).cloned()
    }

    fn modify(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> Vec<u8>) {
        let mut shard = self.shard(key).lock();
        let new: Arc<[u8]> = Arc::from(f(shard.get(key).map(|v| &v[..])));
        shard.insert(key.into(), new);
    }
}

fn bump(v: Option<&[u8]>) -> Vec<u8> {
    let n = v.map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    (n + 1).to_le_bytes().to_vec()
}

// ---------------------------------------------------------------------------

/// A set of a 100-byte value (a different one every time).
#[divan::bench_group(sample_count = 500, sample_size = 10_000, max_time = 15)]
mod set {
    use super::*;

    const KEYS: usize = 10_000;

    #[divan::bench]
    fn millpond(bencher: Bencher) {
        let engine = open_millpond(&fresh_dir("set-millpond"), DEFAULT_DELAY);
        let keys = keys(KEYS);
        let mut n = 0u64;
        bencher.bench_local(|| {
            n += 1;
            let i = n as usize % KEYS;
            engine.set(&keys[i], &value(i, n)).expect("set");
        });
        engine.shutdown().expect("shutdown");
    }

    #[divan::bench]
    fn in_memory(bencher: Bencher) {
        let map = ShardedMap::new();
        let keys = keys(KEYS);
        let mut n = 0u64;
        bencher.bench_local(|| {
            n += 1;
            let i = n as usize % KEYS;
            map.set(&keys[i], &value(i, n));
        });
    }

    #[divan::bench]
    fn sled(bencher: Bencher) {
        let db = open_sled(&fresh_dir("set-sled"));
        let keys = keys(KEYS);
        let mut n = 0u64;
        bencher.bench_local(|| {
            n += 1;
            let i = n as usize % KEYS;
            db.insert(&keys[i], &value(i, n)[..]).expect("insert");
        });
        db.flush().expect("flush");
    }
}

const READ_KEYS: usize = 4_096;

/// A get of a key written and not flushed.
#[divan::bench_group(sample_count = 200, sample_size = 2_000, max_time = 5)]
mod get_dirty {
    use super::*;

    #[divan::bench]
    fn millpond(bencher: Bencher) {
        let engine = open_millpond(&fresh_dir("get-dirty"), HOUR);
        let keys = keys(READ_KEYS);
        for (i, k) in keys.iter().enumerate() {
            engine.set(k, &value(i, 1)).expect("set");
        }
        let order = random_order(READ_KEYS);
        let mut n = 0usize;
        bencher.bench_local(|| {
            n = n.wrapping_add(1);
            let k = &keys[order[n & 0xffff] as usize];
            black_box(engine.get(k).expect("get").expect("present"))
        });
        assert_eq!(engine.stats().flushes, 0, "nothing was flushed");
        engine.shutdown().expect("shutdown");
    }

    #[divan::bench]
    fn in_memory(bencher: Bencher) {
        let map = ShardedMap::new();
        let keys = keys(READ_KEYS);
        for (i, k) in keys.iter().enumerate() {
            map.set(k, &value(i, 1));
        }
        let order = random_order(READ_KEYS);
        let mut n = 0usize;
        bencher.bench_local(|| {
            n = n.wrapping_add(1);
            let k = &keys[order[n & 0xffff] as usize];
            black_box(map.get(k).expect("present"))
        });
    }
}

/// A get of a key on disk (flushed, not in the buffer; page cache warm).
#[divan::bench_group(sample_count = 200, sample_size = 2_000, max_time = 5)]
mod get_flushed {
    use super::*;

    #[divan::bench]
    fn millpond(bencher: Bencher) {
        let engine = open_millpond(&fresh_dir("get-flushed"), HOUR);
        let keys = keys(READ_KEYS);
        for (i, k) in keys.iter().enumerate() {
            engine.set(k, &value(i, 1)).expect("set");
        }
        engine.checkpoint().expect("checkpoint");
        assert_eq!(engine.stats().dirty_entries, 0, "every read goes to disk");
        let order = random_order(READ_KEYS);
        let mut n = 0usize;
        bencher.bench_local(|| {
            n = n.wrapping_add(1);
            let k = &keys[order[n & 0xffff] as usize];
            black_box(engine.get(k).expect("get").expect("present"))
        });
        engine.shutdown().expect("shutdown");
    }

    #[divan::bench]
    fn sled(bencher: Bencher) {
        let db = open_sled(&fresh_dir("get-flushed-sled"));
        let keys = keys(READ_KEYS);
        for (i, k) in keys.iter().enumerate() {
            db.insert(k, &value(i, 1)[..]).expect("insert");
        }
        db.flush().expect("flush");
        let order = random_order(READ_KEYS);
        let mut n = 0usize;
        bencher.bench_local(|| {
            n = n.wrapping_add(1);
            let k = &keys[order[n & 0xffff] as usize];
            black_box(db.get(k).expect("get").expect("present"))
        });
    }
}

/// Incrementing a u64 counter (read-modify-write of one key).
#[divan::bench_group(sample_count = 200, sample_size = 2_000, max_time = 5)]
mod modify {
    use super::*;

    const COUNTERS: usize = 1_024;

    #[divan::bench]
    fn millpond(bencher: Bencher) {
        let engine = open_millpond(&fresh_dir("modify"), DEFAULT_DELAY);
        let keys = keys(COUNTERS);
        let mut n = 0usize;
        bencher.bench_local(|| {
            n = n.wrapping_add(1);
            engine
                .modify(&keys[n % COUNTERS], |v| {
                    *v = Some(bump(v.as_deref()));
                })
                .expect("modify")
        });
        engine.shutdown().expect("shutdown");
    }

    #[divan::bench]
    fn in_memory(bencher: Bencher) {
        let map = ShardedMap::new();
        let keys = keys(COUNTERS);
        let mut n = 0usize;
        bencher.bench_local(|| {
            n = n.wrapping_add(1);
            map.modify(&keys[n % COUNTERS], bump);
        });
    }

    #[divan::bench]
    fn sled(bencher: Bencher) {
        let db = open_sled(&fresh_dir("modify-sled"));
        let keys = keys(COUNTERS);
        let mut n = 0usize;
        bencher.bench_local(|| {
            n = n.wrapping_add(1);
            db.update_and_fetch(&keys[n % COUNTERS], |v| Some(bump(v)))
                .expect("update")
        });
        db.flush().expect("flush");
    }
}

/// A whole `checkpoint()` (flush cycle + fsync) of N dirty entries of 100
/// bytes (the same N keys rewritten before each one, untimed).
#[divan::bench(args = [1_000, 10_000], sample_count = 15, sample_size = 1, max_time = 20)]
fn checkpoint(bencher: Bencher, n: usize) {
    let engine = open_millpond(&fresh_dir("checkpoint"), HOUR);
    let keys = keys(n);
    let mut round = 0u64;
    bencher
        .with_inputs(|| {
            round += 1;
            for (i, k) in keys.iter().enumerate() {
                engine.set(k, &value(i, round)).expect("set");
            }
        })
        .bench_local_refs(|()| {
            let cp = engine.checkpoint().expect("checkpoint");
            assert_eq!(cp.flushed_entries, n as u64);
        });
    engine.shutdown().expect("shutdown");
}

/// Stores of N keys, built once (by millpond with its default
/// configuration, then shut down) and shared by the `open` benchmarks.
fn store_of(n: usize) -> PathBuf {
    static STORES: LazyLock<Mutex<BTreeMap<usize, PathBuf>>> = LazyLock::new(Mutex::default);
    let mut stores = STORES.lock();
    if let Some(dir) = stores.get(&n) {
        return dir.clone();
    }
    let dir = fresh_dir(&format!("open-{n}"));
    let engine = Engine::open(Config::new(&dir)).expect("open");
    for i in 0..n {
        engine.set(&key(i), &value(i, 1)).expect("set");
    }
    engine.shutdown().expect("shutdown");
    stores.insert(n, dir.clone());
    dir
}

/// Opening a store of N keys and shutting it down (nothing written).
#[divan::bench_group(sample_count = 10, sample_size = 1, max_time = 10)]
mod open {
    use super::*;

    #[divan::bench(args = [10_000, 100_000, 1_000_000])]
    fn millpond(bencher: Bencher, n: usize) {
        let dir = store_of(n);
        bencher.bench_local(|| {
            let engine = open_millpond(&dir, DEFAULT_DELAY);
            engine.shutdown().expect("shutdown");
        });
        // Still every key: a spot check.
        let engine = open_millpond(&dir, DEFAULT_DELAY);
        assert!(engine.get(&key(n - 1)).expect("get").is_some());
        engine.shutdown().expect("shutdown");
    }

    /// Raw sled opening and closing the same directory (with millpond's
    /// sled configuration): the floor under millpond's open.
    #[divan::bench(args = [10_000, 100_000, 1_000_000])]
    fn sled(bencher: Bencher, n: usize) {
        let dir = store_of(n);
        bencher.bench_local(|| {
            let db = open_raw(&dir);
            db.flush().expect("flush");
            drop(db);
        });
    }

    /// The same, plus one read of millpond's format record (the first key
    /// of its metadata tree, which millpond's open reads first): what sled
    /// pays to bring in that first page.
    #[divan::bench(args = [10_000, 100_000, 1_000_000])]
    fn sled_and_first_read(bencher: Bencher, n: usize) {
        let dir = store_of(n);
        bencher.bench_local(|| {
            let db = open_raw(&dir);
            let meta = db.open_tree("meta").expect("meta tree");
            assert!(meta.get(b"\x00format").expect("get").is_some());
            db.flush().expect("flush");
            drop((meta, db));
        });
    }

    fn open_raw(dir: &Path) -> sled::Db {
        sled::Config::new()
            .path(dir)
            .cache_capacity(1 << 30)
            .open()
            .expect("open sled")
    }
}
