//! [`Config`]: the by-value builder handed to [`Engine::open`](crate::Engine::open).
//!
//! Every default is stated on its setter. Nothing is validated while building;
//! [`Config::validate`] runs inside `open`, so a bad value is an
//! [`Error::Config`] from `open`, never a panic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::storage::faulty::Faults;
use crate::storage::memory::Contents;
#[cfg(feature = "postgres")]
use crate::storage::postgres::{Partitioning, Target};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The longest value accepted with a journal: its record (with a key of up
/// to 1 MiB) stays well within what a record's frame can say.
const MAX_JOURNALED_VALUE: usize = 1024 * MIB;

/// How an engine is opened. Build it with [`Config::new`] and the setters, then
/// pass it to [`Engine::open`](crate::Engine::open).
///
/// ```
/// use std::time::Duration;
/// let config = millpond::Config::new("/tmp/my-store")
///     .write_delay(Duration::from_millis(200))
///     .max_dirty_bytes(16 << 20);
/// # let _ = config;
/// ```
///
/// [`Config::temporary`] makes a store that lives in memory instead.
#[derive(Clone)]
pub struct Config {
    location: Location,
    pub(crate) write_delay: Duration,
    pub(crate) max_dirty_bytes: usize,
    /// `None`: a quarter of `max_dirty_bytes`.
    read_cache_bytes: Option<usize>,
    pub(crate) flush_threads: usize,
    pub(crate) cache_capacity: u64,
    pub(crate) max_key_len: usize,
    /// `None`: the default, which depends on `max_dirty_bytes`.
    max_value_len: Option<usize>,
    pub(crate) inline_threshold: usize,
    pub(crate) compression: Compression,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) faults: Option<Arc<Faults>>,
    /// The first retry backoff after a failed flush cycle.
    pub(crate) retry_backoff: Duration,
    pub(crate) accept_data_loss: bool,
    pub(crate) journal: Journal,
    /// How long a partition lease lasts (the PostgreSQL backend).
    pub(crate) lease_ttl: Duration,
    /// How keys are grouped into partitions (the PostgreSQL backend).
    #[cfg(feature = "postgres")]
    pub(crate) partitioning: Partitioning,
}

/// How values longer than [`Config::inline_threshold`] are kept in the blob
/// tree ([`Config::compression`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Stored as written.
    None,
    /// Compressed with LZ4 (block format) in the flush workers, when that
    /// saves at least an eighth of the value; a value whose first KiB does
    /// not compress so is stored as written without a full attempt. Reads
    /// decompress (and check the value's checksum). Text such as JSON
    /// typically shrinks to a half or less; random or already compressed
    /// bytes are stored as written at the cost of the trial.
    Lz4,
}

/// Where a store is, and so which storage backend opens it.
#[derive(Clone)]
pub(crate) enum Location {
    /// A store directory (the sled backend).
    Dir(PathBuf),
    /// A store in memory (the memory backend), shared by the clones of the
    /// config that made it.
    Memory(Arc<Contents>),
    /// A PostgreSQL database (the PostgreSQL backend).
    #[cfg(feature = "postgres")]
    Postgres(Arc<Target>),
}

impl Config {
    /// A configuration for the store in `dir` with every default. The
    /// directory is created by `open` if it does not exist; an existing
    /// directory must be empty or hold a millpond store.
    pub fn new(dir: impl AsRef<Path>) -> Config {
        Config::at(Location::Dir(dir.as_ref().to_path_buf()))
    }

    /// A configuration, with every default, for a new **temporary store**:
    /// one that lives in this process's memory and never touches the disk.
    /// For tests, caches and scratch state that need millpond's semantics
    /// but no files.
    ///
    /// - Everything behaves as for a store directory: writes are buffered
    ///   and flushed by cycles, [`Engine::checkpoint`](crate::Engine::checkpoint)
    ///   and [`Engine::shutdown`](crate::Engine::shutdown) return once
    ///   every write acknowledged before them is in the store, reads,
    ///   scans, expiry, transactions and `verify` work the same.
    /// - Nothing is durable beyond the process: when it exits (or crashes),
    ///   the store is gone, whatever was checkpointed.
    /// - The store belongs to this config and its clones: `Engine::open`
    ///   with a clone, after the engine that had it open was shut down or
    ///   dropped, reopens it with everything that engine persisted
    ///   (everything acknowledged, after a clean shutdown). While one engine
    ///   has it open, another `open` fails with [`Error::Locked`], as for a
    ///   directory. Each call of `temporary` makes a new, separate store.
    /// - Its memory (every stored value, held beside the write buffer) is
    ///   freed when the last clone of the config, and the last handle of
    ///   every engine opened with one, are dropped.
    /// - [`Config::dir`] (and [`Engine::dir`](crate::Engine::dir)) return
    ///   the store's name, `memory:N` (unique in the process), which names
    ///   no directory; it appears in error messages.
    ///   [`Config::cache_capacity`] has no effect.
    ///
    /// ```
    /// # fn main() -> millpond::Result<()> {
    /// use millpond::{Config, Engine};
    ///
    /// let config = Config::temporary();
    /// let engine = Engine::open(config.clone())?;
    /// engine.set(b"k", b"v")?;
    /// engine.shutdown()?;
    ///
    /// // A clone of the config reopens the same store.
    /// let engine = Engine::open(config)?;
    /// assert_eq!(engine.get(b"k")?.unwrap(), b"v");
    /// # Ok(()) }
    /// ```
    pub fn temporary() -> Config {
        Config::at(Location::Memory(Contents::new()))
    }

    /// A configuration, with every default, for a store in a **PostgreSQL
    /// database** (feature `postgres`): `conninfo` is a libpq connection
    /// string, such as `"host=127.0.0.1 port=5433 user=millpond dbname=app"`
    /// (or a `postgresql://` URL). The rest of `Config` means the same as for
    /// a store directory.
    ///
    /// - `open` creates millpond's tables (`millpond_*`) in the database if
    ///   they are missing; a database holds one store, which **many engines**
    ///   (in one or many processes, on one or many machines) may have open
    ///   at once. The keyspace is split into 64 partitions by a hash of the
    ///   key (or of a part of it: [`Config::partition_by`]); an engine takes
    ///   a partition's lease at its first write to it, renews it with every
    ///   flush, and lets it go at shutdown.
    /// - A write to a partition another engine holds fails with
    ///   [`Error::NotOwner`] and **asks that engine to hand it over**: the
    ///   owner stops admitting writes to it, flushes it (its unflushed
    ///   writes included) and releases it after its next flush cycle (at
    ///   once if nothing is dirty; it looks for requests every 200 ms
    ///   between cycles), so a retry succeeds after about that long. An
    ///   engine that handed a partition over may ask for it back the same
    ///   way. Retry `NotOwner` from a write with a short sleep; route the
    ///   keys of one session (or task) to one process where you can, since
    ///   two engines writing one partition pass it back and forth.
    /// - A lease not renewed for [`Config::lease_ttl`] (its engine paused,
    ///   or cut off) may be taken by another engine. If the engine that
    ///   lost it had unflushed writes to it, it is fenced: its flush is
    ///   rolled back, its writes to that partition fail with
    ///   [`Error::NotOwner`] for the rest of its life, and so do its
    ///   checkpoints. If it had none, it may ask for the partition back.
    /// - A read of a key another engine owns returns what that engine last
    ///   flushed (at most its `write_delay` plus one cycle old); the read
    ///   cache holds only keys of partitions this engine holds, while it
    ///   holds them.
    /// - A flush cycle is one PostgreSQL transaction. A write survives the
    ///   death of the engine's process once flushed (within `write_delay`
    ///   plus one cycle), and survives a crash of the server once a later
    ///   [`Engine::checkpoint`](crate::Engine::checkpoint) or
    ///   [`Engine::shutdown`](crate::Engine::shutdown) returned `Ok`: those
    ///   wait for the server's WAL flush (`synchronous_commit = on`), the
    ///   background cycles do not. An engine that finds the server lost
    ///   flushed cycles it had not yet made durable (a server crash) is
    ///   poisoned, and serves again once reopened.
    /// - [`Config::dir`] (and [`Engine::dir`](crate::Engine::dir)) return
    ///   `postgres:<dbname>`, which names no directory and never shows the
    ///   password. [`Config::cache_capacity`] has no effect, and the
    ///   journal must be [`Journal::Off`].
    /// - A connection string that does not parse is an [`Error::Config`]
    ///   from `open`.
    ///
    /// See DESIGN.md, "PostgreSQL backend".
    #[cfg(feature = "postgres")]
    pub fn postgres(conninfo: &str) -> Config {
        Config::at(Location::Postgres(Target::parse(conninfo)))
    }

    /// How long a partition lease of the PostgreSQL backend lasts, measured
    /// by the server's clock. Default: 10 s. Between 1 s and 1 hour. An
    /// engine that dies holds its partitions for up to this long; an engine
    /// paused or cut off for longer may lose them (see
    /// [`Error::NotOwner`]).
    #[cfg(feature = "postgres")]
    pub fn lease_ttl(mut self, ttl: Duration) -> Config {
        self.lease_ttl = ttl;
        self
    }

    /// Groups the keys of a PostgreSQL store into partitions by a part of
    /// each key (feature `postgres`): a key's partition is a hash of its
    /// keyspace and of what `group` returns for it, instead of the whole
    /// key. Keys that `group` maps to the same bytes share a partition, so
    /// one engine owns them all: with `group` returning the session id of
    /// keys such as `sess:42:cart`, every key of a session is written by the
    /// engine that holds its session's partition.
    ///
    /// - `group` must be a pure function of the key, the same in every
    ///   engine that opens the database (a plain `fn`: no captured state).
    ///   It may return any part of the key, or all of it.
    /// - `name` names the grouping. The first engine that opens a database
    ///   records it there (the default grouping, the whole key, is named
    ///   `key`); `open` refuses with [`Error::Config`](crate::Error::Config)
    ///   an engine whose grouping has another name, so that no two engines
    ///   put one key in different partitions. A name is 1 to 64 bytes.
    ///
    /// ```
    /// use millpond::Config;
    ///
    /// /// `sess:<id>:<field>` -> `sess:<id>`; other keys whole.
    /// fn session(key: &[u8]) -> &[u8] {
    ///     match key.iter().skip(5).position(|b| *b == b':') {
    ///         Some(end) if key.starts_with(b"sess:") => &key[..5 + end],
    ///         _ => key,
    ///     }
    /// }
    ///
    /// let config = Config::postgres("host=127.0.0.1 dbname=app")
    ///     .partition_by("session-id", session);
    /// # let _ = config;
    /// ```
    #[cfg(feature = "postgres")]
    pub fn partition_by(mut self, name: &str, group: fn(&[u8]) -> &[u8]) -> Config {
        self.partitioning = Partitioning::new(name, group);
        self
    }

    fn at(location: Location) -> Config {
        Config {
            location,
            write_delay: Duration::from_millis(500),
            max_dirty_bytes: default_max_dirty_bytes(),
            read_cache_bytes: None,
            flush_threads: 2,
            cache_capacity: 1024 * 1024 * 1024,
            max_key_len: 16 * KIB,
            max_value_len: None,
            inline_threshold: KIB,
            compression: Compression::Lz4,
            default_ttl: None,
            clock: Arc::new(SystemClock),
            faults: None,
            retry_backoff: Duration::from_millis(10),
            accept_data_loss: false,
            journal: Journal::Off,
            lease_ttl: Duration::from_secs(10),
            #[cfg(feature = "postgres")]
            partitioning: Partitioning::default(),
        }
    }

    /// The longest an acknowledged write may live only in memory before a
    /// flush cycle starts writing it to disk. Default: 500 ms. Zero means a
    /// cycle starts as soon as anything is dirty (writes still return before
    /// they are flushed). At most one hour.
    pub fn write_delay(mut self, delay: Duration) -> Config {
        self.write_delay = delay;
        self
    }

    /// Bound on buffered (not yet persisted) data, counting keys, values and a
    /// fixed per-entry overhead. A flush starts early when half of it is used;
    /// writers wait when all of it is used. While a flush cycle runs, a hot
    /// key can be buffered twice (the copy being flushed and a newer one), so
    /// give it about twice the data you rewrite within `write_delay`.
    /// Default: 1/32 of the machine's physical memory, at least 64 MiB and at
    /// most 512 MiB (64 MiB where the memory size cannot be read); see
    /// DESIGN.md, "Sizing the buffer". At least 64 KiB.
    pub fn max_dirty_bytes(mut self, bytes: usize) -> Config {
        self.max_dirty_bytes = bytes;
        self
    }

    /// Bound on the read cache: clean values read from storage, kept so that
    /// a key read again costs a map lookup instead of a storage read, a
    /// checksum and a decode (counting keys, values and a per-entry
    /// overhead; values that are not in memory, such as long values read
    /// only for their deadline, count only their key). A write to a key
    /// drops its cached value. Default: a quarter of `max_dirty_bytes`. Zero
    /// turns it off. Separate from the storage layer's own page cache
    /// (`cache_capacity`).
    pub fn read_cache_bytes(mut self, bytes: usize) -> Config {
        self.read_cache_bytes = Some(bytes);
        self
    }

    /// The read cache's bound, default applied.
    pub(crate) fn read_cache_limit(&self) -> usize {
        self.read_cache_bytes.unwrap_or(self.max_dirty_bytes / 4)
    }

    /// Number of flusher threads that write a flush cycle's values in
    /// parallel. Default: 2. Between 1 and 64.
    pub fn flush_threads(mut self, threads: usize) -> Config {
        self.flush_threads = threads;
        self
    }

    /// Size of the storage layer's page cache, in bytes (handed to sled).
    /// Default: 1 GiB (sled's own default). At least 1 MiB. No effect on a
    /// [temporary](Config::temporary) store.
    pub fn cache_capacity(mut self, bytes: u64) -> Config {
        self.cache_capacity = bytes;
        self
    }

    /// Longest key accepted; longer keys are [`Error::TooLarge`]. Default:
    /// 16 KiB. Between 1 byte and 1 MiB.
    pub fn max_key_len(mut self, bytes: usize) -> Config {
        self.max_key_len = bytes;
        self
    }

    /// Longest value accepted; longer values are [`Error::TooLarge`].
    /// Default: 16 MiB or `max_dirty_bytes / 2`, whichever is smaller. At
    /// most `max_dirty_bytes / 2`, so that any accepted value fits in the
    /// buffer.
    pub fn max_value_len(mut self, bytes: usize) -> Config {
        self.max_value_len = Some(bytes);
        self
    }

    /// The longest value accepted, default applied.
    pub(crate) fn value_limit(&self) -> usize {
        self.max_value_len
            .unwrap_or_else(|| (16 * MIB).min(self.max_dirty_bytes / 2))
    }

    /// Values up to this length are stored inside their metadata record (one
    /// lookup per read); longer ones are written once to the blob tree, so
    /// that neither a flush's commit log nor a metadata-only change (a new
    /// deadline) rewrites them. Default: 1 KiB. At most 6 KiB: sled writes
    /// a page of records over about 128 KiB to a file of its own, and a
    /// failed write of one (a full disk) stops sled 0.34.7 for good (see
    /// DESIGN.md, "On-disk format").
    pub fn inline_threshold(mut self, bytes: usize) -> Config {
        self.inline_threshold = bytes;
        self
    }

    /// How values longer than [`Config::inline_threshold`] are kept in the
    /// blob tree. Default: [`Compression::Lz4`]. The choice applies to
    /// values flushed from now on; a store holds each value as it was
    /// written, so either setting reads every store. The first compressed
    /// value raises the store's format version to 4, which builds without
    /// compression refuse to open.
    pub fn compression(mut self, compression: Compression) -> Config {
        self.compression = compression;
        self
    }

    /// The time to live given to values written without one (by `set`,
    /// `set_as`, a transaction's `set`, and a `modify` that creates a key).
    /// Default: `None` (such values never expire).
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Config {
        self.default_ttl = ttl;
        self
    }

    /// The clock that expiry deadlines are measured with. Default: the system
    /// clock. Tests pass a [`MockClock`](crate::MockClock) to move time
    /// without sleeping.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Config {
        self.clock = clock;
        self
    }

    /// Test support: storage calls fail as `faults` says (see
    /// [`testing::Faults`](crate::testing::Faults)). Not for production use.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn faults(mut self, faults: Arc<Faults>) -> Config {
        self.faults = Some(faults);
        self
    }

    /// Test support: the wait before the first retry of a failed flush
    /// cycle; it doubles with every failure in a row, up to 1 s. Default:
    /// 10 ms. The model checker and the fuzz target shorten it so that an
    /// injected failure does not cost them most of their time. Not for
    /// production use.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn retry_backoff(mut self, first: Duration) -> Config {
        self.retry_backoff = first;
        self
    }

    /// Opens a store that came back damaged: older than its last durable
    /// point (a checkpoint or shutdown that returned `Ok`), blank where a
    /// store existed, with records that differ from what was made durable,
    /// or with its durable record missing or damaged. By default `open`
    /// refuses such a store with [`Error::Corrupt`], saying what was
    /// promised and what was found. With `true`, it opens the store at the
    /// state its files hold, logs a warning, and records that state as the
    /// new durable baseline (the loss is accepted for good). Default:
    /// `false`. `millpond repair --accept-loss` does this from the command
    /// line.
    pub fn accept_data_loss(mut self, accept: bool) -> Config {
        self.accept_data_loss = accept;
        self
    }

    /// The write-ahead journal's mode: how soon an acknowledged write
    /// survives a crash of the process or a power cut without waiting for
    /// a flush cycle (see [`Journal`]). Default: [`Journal::Off`]. A
    /// [temporary](Config::temporary) store, and a PostgreSQL one, take
    /// only `Off`.
    pub fn journal(mut self, mode: Journal) -> Config {
        self.journal = mode;
        self
    }

    /// The store directory; for a [temporary](Config::temporary) store,
    /// its name (`memory:N`), which names no directory.
    pub fn dir(&self) -> &Path {
        match &self.location {
            Location::Dir(dir) => dir,
            Location::Memory(contents) => contents.name(),
            #[cfg(feature = "postgres")]
            Location::Postgres(target) => target.name(),
        }
    }

    /// Where the store is.
    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    /// Checks every value; called by `open`.
    pub(crate) fn validate(&self) -> Result<()> {
        fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
            if ok {
                Ok(())
            } else {
                Err(Error::Config(msg()))
            }
        }
        check(!self.dir().as_os_str().is_empty(), || {
            "the store directory is an empty path".into()
        })?;
        check(self.write_delay <= Duration::from_secs(3600), || {
            format!("write_delay is {:?}, more than one hour", self.write_delay)
        })?;
        if let Journal::Periodic(every) = self.journal {
            check(
                every >= Duration::from_millis(1) && every <= Duration::from_secs(3600),
                || format!("Journal::Periodic({every:?}) is not between 1 ms and 1 hour"),
            )?;
        }
        check(
            self.journal == Journal::Off || matches!(self.location, Location::Dir(_)),
            || {
                "a temporary or PostgreSQL store has no files: its journal must be Journal::Off"
                    .into()
            },
        )?;
        check(
            self.journal == Journal::Off || self.value_limit() <= MAX_JOURNALED_VALUE,
            || {
                format!(
                    "max_value_len ({}) is more than a journal record holds (1 GiB)",
                    self.value_limit()
                )
            },
        )?;
        #[cfg(feature = "postgres")]
        if let Location::Postgres(target) = &self.location {
            if let Some(reason) = target.invalid() {
                return Err(Error::Config(reason.to_owned()));
            }
            check((1..=64).contains(&self.partitioning.name().len()), || {
                format!(
                    "the partition_by name is {} bytes, not 1 to 64",
                    self.partitioning.name().len()
                )
            })?;
            check(
                self.lease_ttl >= Duration::from_secs(1)
                    && self.lease_ttl <= Duration::from_secs(3600),
                || {
                    format!(
                        "lease_ttl is {:?}, not between 1 s and 1 hour",
                        self.lease_ttl
                    )
                },
            )?;
        }
        check(self.max_dirty_bytes >= 64 * KIB, || {
            format!(
                "max_dirty_bytes is {}, less than 64 KiB",
                self.max_dirty_bytes
            )
        })?;
        check((1..=64).contains(&self.flush_threads), || {
            format!(
                "flush_threads is {}, not between 1 and 64",
                self.flush_threads
            )
        })?;
        check(self.cache_capacity >= MIB as u64, || {
            format!("cache_capacity is {}, less than 1 MiB", self.cache_capacity)
        })?;
        check((1..=MIB).contains(&self.max_key_len), || {
            format!(
                "max_key_len is {}, not between 1 and 1 MiB",
                self.max_key_len
            )
        })?;
        check(self.value_limit() <= self.max_dirty_bytes / 2, || {
            format!(
                "max_value_len ({}) is more than half of max_dirty_bytes ({})",
                self.value_limit(),
                self.max_dirty_bytes
            )
        })?;
        check(self.inline_threshold <= MAX_INLINE, || {
            format!(
                "inline_threshold is {}, more than {} KiB",
                self.inline_threshold,
                MAX_INLINE / KIB
            )
        })?;
        Ok(())
    }
}

/// The most `inline_threshold` may be: a leaf of the metadata tree (up to 20
/// records) stays under sled's ~128 KiB limit for pages kept in its log,
/// as a blob tree leaf does with values in parts of 6 KiB
/// (`storage::sled::BLOB_PART`).
const MAX_INLINE: usize = 6 * KIB;

/// The default `max_dirty_bytes`: a share of physical memory, with a floor
/// and a cap. A buffer that holds the hot set twice keeps coalescing under
/// load (cycles then run on the `write_delay` timer instead of the fill
/// watermark); the cap keeps an embedded library's default footprint
/// modest on large machines.
fn default_max_dirty_bytes() -> usize {
    const FLOOR: usize = 64 * MIB;
    const CAP: usize = 512 * MIB;
    physical_memory().map_or(FLOOR, |m| (m / 32).clamp(FLOOR, CAP))
}

/// Physical memory in bytes (Linux: `MemTotal` in `/proc/meminfo`).
fn physical_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: usize = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Config");
        f.field("dir", &self.dir())
            .field("write_delay", &self.write_delay)
            .field("max_dirty_bytes", &self.max_dirty_bytes)
            .field("flush_threads", &self.flush_threads)
            .field("cache_capacity", &self.cache_capacity)
            .field("max_key_len", &self.max_key_len)
            .field("max_value_len", &self.value_limit())
            .field("inline_threshold", &self.inline_threshold)
            .field("compression", &self.compression)
            .field("default_ttl", &self.default_ttl)
            .field("clock", &self.clock)
            .field("retry_backoff", &self.retry_backoff)
            .field("accept_data_loss", &self.accept_data_loss)
            .field("lease_ttl", &self.lease_ttl);
        #[cfg(feature = "postgres")]
        f.field("partition_by", &self.partitioning.name());
        f.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_buffer_is_a_bounded_share_of_memory() {
        let d = default_max_dirty_bytes();
        assert!((64 * MIB..=512 * MIB).contains(&d), "{d}");
        if let Some(m) = physical_memory() {
            assert_eq!(d, (m / 32).clamp(64 * MIB, 512 * MIB));
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::new("x").validate().unwrap();
        Config::temporary().validate().unwrap();
    }

    #[test]
    fn temporary_stores_are_named_apart_and_shared_by_clones() {
        let a = Config::temporary();
        let b = Config::temporary();
        assert!(
            a.dir().to_string_lossy().starts_with("memory:"),
            "{:?}",
            a.dir()
        );
        assert_ne!(a.dir(), b.dir());
        let clone = a.clone().write_delay(Duration::ZERO);
        assert_eq!(clone.dir(), a.dir());
        match (a.location(), clone.location()) {
            (Location::Memory(x), Location::Memory(y)) => assert!(Arc::ptr_eq(x, y)),
            _ => panic!("a temporary config is in memory"),
        }
    }

    #[test]
    fn the_value_limit_follows_a_small_buffer() {
        let c = Config::new("x").max_dirty_bytes(256 * KIB);
        c.validate().unwrap();
        assert_eq!(c.value_limit(), 128 * KIB);
        assert_eq!(Config::new("x").value_limit(), 16 * MIB);
        assert_eq!(Config::new("x").inline_threshold, KIB);
    }

    #[test]
    fn bad_values_are_config_errors() {
        let bad = [
            Config::new(""),
            Config::new("x").flush_threads(0),
            Config::new("x").flush_threads(65),
            Config::new("x").max_dirty_bytes(10),
            Config::new("x").write_delay(Duration::from_secs(7200)),
            Config::new("x").cache_capacity(0),
            Config::new("x").max_key_len(0),
            Config::new("x").max_dirty_bytes(MIB).max_value_len(MIB),
            Config::new("x").inline_threshold(MIB),
            Config::new("x").inline_threshold(6 * KIB + 1),
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::Config(_))), "{c:?}");
        }
    }
}
