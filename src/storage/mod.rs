//! The on-disk side, behind one narrow trait: [`Storage`].
//!
//! The engine never names sled: it reads and writes metadata records and
//! blobs through this trait, and `storage::sled` is the only file that turns
//! those calls into sled operations (and sled errors into [`Error`]s). A test
//! can wrap a `Storage` to fail chosen calls, and a second backend is one new
//! module implementing it: `storage::memory`, the memory backend, keeps a
//! store in maps in memory (`Config::temporary`).
//!
//! What an implementation must provide:
//! - **Two keyspaces**: the metadata tree (one small record per user key, the
//!   deadline index of keys with an expiry deadline, and a few system records
//!   named by [`SysKey`]) and the blob tree (values by [`BlobId`], written
//!   once, removed when unreachable).
//! - **An atomic commit**: [`Storage::commit`] applies a whole [`Commit`] to
//!   the metadata tree or none of it, even across a crash. It is the commit
//!   point of a flush cycle.
//! - **Ordering**: after [`Storage::flush`] returns, everything written before
//!   it survives the death of this process, and a crash never keeps a later
//!   write while losing an earlier one that was flushed before it.
//! - **Durability**: after [`Storage::sync`] returns, everything written before
//!   it survives a power cut.
//!
//!   The memory backend keeps these two within the process only: what it
//!   holds survives a simulated crash (`testing::halt`) and a reopen, and
//!   nothing survives the end of the process.
//! - **A durable record outside its own log** ([`Storage::write_durable`]):
//!   what the last durable point promised, kept where a rollback of the
//!   store's own files cannot take it along, so that `open` can tell a store
//!   that came back older than promised from one left as it was.
//!
//! A backend is opened (and reopened after a storage failure) through a
//! [`Backend`]; [`keeper::Keeper`] is the one owner of the open storage, its
//! health, blob ids and what is durable.

#[cfg_attr(
    not(feature = "testing"),
    allow(
        dead_code,
        reason = "the fault plan is reachable only with the testing feature"
    )
)]
pub(crate) mod faulty;
pub(crate) mod keeper;
pub(crate) mod memory;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod sled;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{Digest, DurableRecord};
use crate::config::{Config, Location};
use crate::error::Result;

/// The backend `config` selects, and where its store is (what
/// `Engine::dir` returns): the sled backend for a store directory, made
/// absolute here once, so that a later change of working directory cannot
/// move the store; the memory backend for a temporary store, named
/// `memory:N`, without touching the file system.
pub(crate) fn backend(config: &Config) -> Result<(PathBuf, Box<dyn Backend>)> {
    Ok(match config.location() {
        Location::Dir(dir) => {
            let dir = std::path::absolute(dir)?;
            let backend = sled::SledBackend {
                dir: dir.clone(),
                cache_capacity: config.cache_capacity,
            };
            (dir, Box::new(backend))
        }
        Location::Memory(contents) => {
            let backend = memory::MemoryBackend {
                contents: Arc::clone(contents),
            };
            (contents.name().to_path_buf(), Box::new(backend))
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(target) => {
            let backend = postgres::PostgresBackend::new(
                Arc::clone(target),
                config.lease_ttl,
                config.partitioning.clone(),
            );
            (target.name().to_path_buf(), Box::new(backend))
        }
    })
}

/// How a storage backend is opened: once by `Engine::open`, again by the
/// keeper after a storage failure (see `Keeper::reopen`).
pub(crate) trait Backend: Send + Sync + 'static {
    /// Opens the store (creating what the backend needs for a new one).
    fn open(&self) -> Result<Arc<dyn Storage>>;

    /// Cheaply checks whether the medium accepts writes again (for example
    /// after a full disk was freed), without touching the store.
    fn probe(&self) -> Result<()>;

    /// Makes sure this engine may write `key` (an internal key) before the
    /// write is made: a backend shared by many engines takes or renews the
    /// lease of the key's partition ([`crate::Error::NotOwner`] when another
    /// engine holds it; with `request`, that engine is also asked to hand
    /// it over: a user's write asks, the purger does not). Called without
    /// any engine lock held; may block on the backend. Lasts across reopens
    /// of the storage. Default: always.
    fn claim(&self, _key: &[u8], _request: bool) -> Result<()> {
        Ok(())
    }

    /// Under the key's shard lock, just before a write of `key` goes into
    /// the dirty map: may this engine make it now? Must not block.
    /// `freezes` is the dirty map's freeze count read under that lock, so
    /// the write lands in a frozen map numbered at most `freezes + 1`
    /// (which [`Backend::cycle_done`] uses to know when it is committed).
    /// `Ok(Some(epoch))`: yes, under the right `epoch`; `Ok(None)`: not
    /// without [`Backend::claim`] first (outside the lock); `Err`: refused
    /// ([`crate::Error::NotOwner`]), also when `expected` is given and the
    /// right is no longer at that epoch (a read-modify-write whose change
    /// is inserted after waiting for room must still be under the right it
    /// read under). Default: always, epoch 0.
    fn admit_write(
        &self,
        _key: &[u8],
        _freezes: u64,
        _expected: Option<u64>,
    ) -> Result<Option<u64>> {
        Ok(Some(0))
    }

    /// After a flush cycle succeeded, when every frozen map up to the
    /// `freezes`-th is committed: a shared backend hands over the
    /// partitions other engines asked for whose every admitted write is
    /// now committed. Returns whether a handover still waits for a cycle.
    /// May block. Default: nothing to hand over.
    fn cycle_done(&self, _freezes: u64) -> bool {
        false
    }

    /// Whether a handover waits for a cycle (the coordinator then runs one
    /// even with nothing dirty). Must not block. Default: never.
    fn handing_over(&self) -> bool {
        false
    }

    /// How often the flush coordinator, between cycles, calls
    /// [`Backend::poll_requests`]; `None`: never. Default: never.
    fn handover_poll(&self) -> Option<Duration> {
        None
    }

    /// Between cycles: looks for other engines' requests for what this
    /// engine holds. Returns whether a handover now waits for a cycle. May
    /// block. Default: none.
    fn poll_requests(&self) -> bool {
        false
    }

    /// The deadline index entries (`(key, encoded deadline record)`) of the
    /// keys of what this engine took from other engines since the last call
    /// (a shared store: the partitions taken at a new epoch), so that the
    /// purger indexes deadlines another engine stored. May block. Default:
    /// none.
    fn taken_deadlines(&self) -> Result<Vec<(Bytes, Bytes)>> {
        Ok(Vec::new())
    }

    /// Whether this engine is the only one writing the store, so that what
    /// it indexed of the store (stored deadlines) stays true while it does
    /// not change it. Default: yes.
    fn exclusive(&self) -> bool {
        true
    }

    /// A count that moves whenever this engine's right to write some key
    /// changes (on a shared store: a lease taken at a new epoch, lost, or
    /// released). Must not block. Default: 0, a store no other engine
    /// writes.
    fn ownership_changes(&self) -> u64 {
        0
    }

    /// Whether a value of `key` read from storage may be cached, and for
    /// how long: `Some(t)` when only this engine can change `key` in
    /// storage for as long as this returns the same `t`, where `t` is
    /// [`Backend::ownership_changes`]; `None` when another engine may
    /// change it now. A value is cached only if the token was the same
    /// before its storage read (or, for a value this engine flushed,
    /// before its commit) and when it is cached, and a cached value answers
    /// only while the token is still that. Called under a shard lock: must
    /// not block. Default: `Some(0)`.
    fn cache_token(&self, _key: &[u8]) -> Option<u64> {
        Some(self.ownership_changes())
    }

    /// Lets go of what [`Backend::claim`] took, after a successful final
    /// flush at shutdown. Default: nothing to do.
    fn release(&self) -> Result<()> {
        Ok(())
    }
}

/// Key of a value in the blob tree. Allocated by the flusher, increasing,
/// never reused.
pub(crate) type BlobId = u64;

/// A system record in the metadata tree (outside the user keyspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SysKey {
    /// The format record ([`crate::codec::FormatRecord`]).
    Format,
    /// The engine state committed with every cycle ([`crate::codec::StateRecord`]).
    State,
    /// Blobs made unreachable by a committed cycle, still to remove
    /// ([`crate::codec::GcRecord`]), by gc record id.
    Gc(u64),
}

/// What a change does to a key's entry in the deadline index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeadlineOp {
    /// Leave it as it is (the key had no deadline and has none).
    Keep,
    /// Store this encoded deadline record.
    Set(Vec<u8>),
    /// Remove it.
    Clear,
}

/// One change to the user keyspace of the metadata tree.
#[derive(Debug)]
pub(crate) enum MetaOp {
    /// Store an encoded metadata record under a user key.
    Put {
        key: Box<[u8]>,
        record: Vec<u8>,
        deadline: DeadlineOp,
    },
    /// Remove a user key.
    Remove {
        key: Box<[u8]>,
        deadline: DeadlineOp,
    },
}

/// Everything one flush cycle changes in the metadata tree, applied atomically.
#[derive(Debug, Default)]
pub(crate) struct Commit {
    /// User key changes, at most one per key.
    pub ops: Vec<MetaOp>,
    /// System records to write (`Some`) or remove (`None`).
    pub sys: Vec<(SysKey, Option<Vec<u8>>)>,
    /// Empty, or for each of `ops` the record its key holds when `commit`
    /// is called (`None`: no record), so that a backend that needs it (the
    /// sled backend's undo log) need not read it again. The flush cycle
    /// fills it with what its workers read to prepare the ops: it settles
    /// any failed commit before they read, and nothing else writes user
    /// records before its commit. Debug builds of the sled backend check it.
    pub replaced: Vec<Option<Bytes>>,
}

/// The storage seam. Every method may be called from several threads at once.
pub(crate) trait Storage: Send + Sync + 'static {
    /// The metadata record stored under a user key.
    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>>;

    /// [`Storage::get_meta`] of each of `keys`, in their order. A backend
    /// whose reads are round trips (PostgreSQL) reads them together; the
    /// default reads them one by one.
    fn get_metas(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        keys.iter().map(|key| self.get_meta(key)).collect()
    }

    /// Up to `limit` metadata records with user keys `>= from`, in key order:
    /// `(key, encoded record)`.
    fn scan_meta(&self, from: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>>;

    /// Up to `limit` metadata records with user keys `>= from` and `< to`
    /// (`None`: no upper bound), in **descending** key order.
    fn scan_meta_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>>;

    /// Up to `limit` deadline index entries with user keys `>= from`, in key
    /// order: `(key, encoded deadline record)`.
    fn scan_deadlines(&self, from: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>>;

    /// Up to `limit` blobs with ids `>= from`, in id order.
    fn scan_blobs(&self, from: BlobId, limit: usize) -> Result<Vec<(BlobId, Bytes)>>;

    /// A value in the blob tree.
    fn get_blob(&self, id: BlobId) -> Result<Option<Bytes>>;

    /// Writes a value to the blob tree. Not visible through any metadata
    /// record until a later [`Storage::commit`] points at it.
    fn put_blob(&self, id: BlobId, value: &[u8]) -> Result<()>;

    /// [`Storage::put_blob`] of each of `blobs`: together where that saves
    /// round trips (PostgreSQL), one by one by default. On an error, any
    /// of them may have been written.
    fn put_blobs(&self, blobs: &[(BlobId, Bytes)]) -> Result<()> {
        blobs.iter().try_for_each(|(id, v)| self.put_blob(*id, v))
    }

    /// Removes blobs (missing ones are ignored).
    fn remove_blobs(&self, ids: &[BlobId]) -> Result<()>;

    /// Removes every blob with an id `>= first`; returns how many there were.
    fn remove_blobs_from(&self, first: BlobId) -> Result<usize>;

    /// Where the store is, for messages.
    fn path(&self) -> std::path::PathBuf;

    /// Whether the store holds no data at all, not even outside millpond's
    /// keyspaces (a new database, or one whose creation never completed).
    fn is_blank(&self) -> Result<bool>;

    /// Whether the blob tree holds no blob at all.
    fn blobs_empty(&self) -> Result<bool>;

    /// Applies a commit atomically.
    fn commit(&self, commit: Commit) -> Result<()>;

    /// A system record.
    fn get_sys(&self, key: SysKey) -> Result<Option<Bytes>>;

    /// Writes (`Some`) or removes (`None`) one system record outside any
    /// commit: the format record of a new store, a processed gc record.
    fn put_sys(&self, key: SysKey, value: Option<&[u8]>) -> Result<()>;

    /// Raises the store's format version to `version` (never lowers it):
    /// the one writer of the format record after a store's creation.
    /// Called before the first record that needs the version is written (a
    /// tree's, a value in parts, a compressed value), so that a store
    /// holding one always says so. Callers in one engine serialize (the
    /// cycle lock, or a flush cycle's own thread); a backend that several
    /// engines write (PostgreSQL) makes the read and the write one atomic
    /// step.
    fn raise_format(&self, version: u32) -> Result<()> {
        let current = match self.get_sys(SysKey::Format)? {
            Some(raw) => crate::codec::decode_format(&raw)?.version,
            None => crate::codec::FORMAT_VERSION,
        };
        if current < version {
            let raw = crate::codec::encode_format_version(version)?;
            self.put_sys(SysKey::Format, Some(&raw))?;
        }
        Ok(())
    }

    /// Ids of every gc record present.
    fn gc_ids(&self) -> Result<Vec<u64>>;

    /// Hands every write made so far to the operating system (survives the
    /// death of this process, not a power cut).
    fn flush(&self) -> Result<()>;

    /// [`Storage::flush`], then makes every write made so far durable
    /// (survives a power cut).
    fn sync(&self) -> Result<()>;

    /// Finishes a commit that failed after it began to change the store
    /// (applied only in part): rolls it back whole, or, past its commit
    /// point, completes it. A later commit, and every read made to prepare
    /// one, must see the store as it was before that commit or after it,
    /// never between.
    fn settle(&self) -> Result<()>;

    /// The newest durable record, `None` if the store never had one.
    /// A record that is present but unreadable is `Error::Corrupt`.
    fn read_durable(&self) -> Result<Option<DurableRecord>>;

    /// Whether the durable record's place exists at all, even with no
    /// record in it yet (a crash while the store was being created): it is
    /// made only after a new store's format record is durable, so a blank
    /// store beside it is a damaged one.
    fn durable_exists(&self) -> Result<bool>;

    /// Replaces the durable record and makes it durable (survives a power
    /// cut) before returning; a torn write leaves the previous one readable.
    fn write_durable(&self, record: &DurableRecord) -> Result<()>;

    /// The store digest of every user record when the state record does not
    /// hold it: a store shared by many engines keeps one state record per
    /// engine, each with the digest of the changes that engine committed,
    /// and the store's digest is their sum (`verify`). Default: `None`, the
    /// state record holds it.
    fn store_digest(&self) -> Result<Option<Digest>> {
        Ok(None)
    }
}
