//! Helpers shared by the behaviour tests.
#![allow(dead_code)]

pub mod pg;
pub mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use millpond::{Config, Engine};

/// Values longer than this go to the blob tree in the tests' stores.
pub const BLOB_OVER: usize = 1024;

/// A store directory that is removed when dropped.
pub struct Store {
    _tmp: tempfile::TempDir,
    pub path: PathBuf,
}

impl Store {
    pub fn new() -> Store {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("store");
        Store { _tmp: tmp, path }
    }

    /// A configuration with a write delay long enough that nothing is
    /// flushed unless the test asks for it. Values over 1 KiB go to the blob
    /// tree (the tests use values of a few KiB to exercise it).
    pub fn quiet(&self) -> Config {
        Config::new(&self.path)
            .write_delay(Duration::from_secs(3600))
            .inline_threshold(BLOB_OVER)
    }

    /// A configuration that flushes almost continuously.
    pub fn busy(&self) -> Config {
        Config::new(&self.path)
            .write_delay(Duration::from_millis(1))
            .inline_threshold(BLOB_OVER)
    }

    pub fn open(&self, config: Config) -> Engine {
        Engine::open(config).expect("open")
    }
}

/// How long a test waits for a condition before it calls the wait a hang.
/// Tests never assume how much work fits in a time: they run until what
/// they need has been observed, and this bound only catches a true hang (it
/// is far beyond what any machine, debug build or loaded, needs).
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Polls `cond` until it holds; panics after [`HANG_LIMIT`] (a hang guard,
/// not a timing assertion).
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let patience = Patience::new(what);
    while !cond() {
        patience.check();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The hang guard of a loop that runs until a condition is observed (keep
/// writing until flushes ran under the writes, and the like).
pub struct Patience {
    what: String,
    started: Instant,
}

impl Patience {
    pub fn new(what: &str) -> Patience {
        Patience {
            what: what.to_string(),
            started: Instant::now(),
        }
    }

    /// Panics once [`HANG_LIMIT`] has passed since `new`.
    pub fn check(&self) {
        assert!(
            self.started.elapsed() < HANG_LIMIT,
            "gave up after {HANG_LIMIT:?} waiting for: {}",
            self.what
        );
    }
}

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from the environment (`MILLPOND_SEED`) or the clock; printed so a
/// failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("MILLPOND_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: MILLPOND_SEED={seed}");
    seed
}

/// `len` bytes that do not compress (a value the engine stores as written,
/// for tests of how stored values are laid out).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

pub fn u64_value(v: &[u8]) -> u64 {
    u64::from_le_bytes(v.try_into().expect("an 8-byte counter"))
}

pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_size(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// Opens the sled database of a store directly (to inspect or damage it),
/// retrying while the lock of a just-closed engine lingers: sled 0.34 may
/// release its file lock a moment after its `Db` is dropped.
pub fn open_raw_sled(path: &Path) -> sled::Db {
    let started = Instant::now();
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(
                    started.elapsed() < HANG_LIMIT,
                    "the store's lock was never released: {e}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("opening {} with sled: {e}", path.display()),
        }
    }
}

/// Copies a directory tree (a store, to damage or roll back a copy of it).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// The blobs in a store's raw blob tree: a value's parts (12-byte keys: id
/// then part) count once.
#[allow(dead_code)]
pub fn distinct_blobs(blobs: &sled::Tree) -> usize {
    let mut ids: Vec<[u8; 8]> = blobs
        .iter()
        .map(|kv| {
            let k = kv.expect("blob key").0;
            k[..8].try_into().expect("a blob key of at least 8 bytes")
        })
        .collect();
    ids.dedup();
    ids.len()
}
