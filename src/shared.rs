//! [`Shared`]: the state that the engine handles and the flusher threads share,
//! and [`Health`], the engine's verdict on whether it may accept writes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};

use crate::buffer::DirtyMap;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::flush::FlushControl;
use crate::stats::Counters;
use crate::storage::{BlobId, Storage};

/// Consecutive failed flush attempts after which writes are refused.
pub(crate) const FAILING_AFTER: u32 = 5;

/// Everything the engine's threads share. Owned through an `Arc` by the
/// public handle and by every flusher thread.
pub(crate) struct Shared {
    pub config: Config,
    /// The store directory, made absolute at open.
    pub dir: PathBuf,
    /// The storage backend; taken out (and so closed) by shutdown, which
    /// releases the store's lock while handles may still exist.
    pub storage: RwLock<Option<Arc<dyn Storage>>>,
    pub buffer: DirtyMap,
    pub counters: Counters,
    pub flush: FlushControl,
    pub health: Health,
    pub blobs: BlobIds,
    /// Held by the coordinator while a flush cycle runs, and by `verify`
    /// while it reads the stores: verification never sees half a cycle.
    /// Taken before any shard lock.
    pub cycle_lock: Mutex<()>,
    /// The exclusive lane: held for a whole attempt by transactions that
    /// failed `txn::EXCLUSIVE_AFTER` times. Taken before any shard lock.
    pub txn_lane: Mutex<()>,
    /// Set once by shutdown, before its final flush; read under a shard lock
    /// by every write (see `Engine::shutdown` for why that is enough).
    pub closed: AtomicBool,
}

/// The storage backend, borrowed: shutdown waits for it to be dropped
/// before it closes the store.
pub(crate) type StorageRef<'a> = MappedRwLockReadGuard<'a, dyn Storage>;

impl Shared {
    /// The storage backend, or [`Error::Closed`] after shutdown. Recursive:
    /// a caller may hold one while taking another, even with shutdown
    /// waiting to close the store.
    pub(crate) fn storage(&self) -> Result<StorageRef<'_>> {
        RwLockReadGuard::try_map(self.storage.read_recursive(), |s| s.as_deref())
            .map_err(|_| Error::Closed)
    }
}

/// The blob id allocator.
#[derive(Debug)]
pub(crate) struct BlobIds {
    /// The next id to hand out. Ids are never reused.
    next: AtomicU64,
    /// False only while the blob tree is known to be empty: a flush then need
    /// not look up the records it replaces to find superseded blobs.
    may_exist: AtomicBool,
}

impl BlobIds {
    pub(crate) fn new(next: BlobId, may_exist: bool) -> BlobIds {
        BlobIds {
            next: AtomicU64::new(next),
            may_exist: AtomicBool::new(may_exist),
        }
    }

    pub(crate) fn allocate(&self) -> BlobId {
        self.may_exist.store(true, Ordering::SeqCst);
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// Every id below this has been handed out.
    pub(crate) fn next(&self) -> BlobId {
        self.next.load(Ordering::SeqCst)
    }

    pub(crate) fn may_exist(&self) -> bool {
        self.may_exist.load(Ordering::SeqCst)
    }
}

/// Whether the engine may accept writes.
///
/// - Flush failures are counted; after [`FAILING_AFTER`] in a row, writes are
///   refused with [`Error::FlushFailing`] until a flush succeeds.
/// - A failed fsync poisons the engine for good ([`Error::Poisoned`]): the
///   kernel may have dropped the pages it could not write, so retrying the
///   fsync could report success for data that is gone.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failures: AtomicU32,
    last_failure: Mutex<String>,
    poisoned: AtomicBool,
    poison_reason: Mutex<String>,
}

impl Health {
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(self.poison_error());
        }
        let failures = self.failures.load(Ordering::Acquire);
        if failures >= FAILING_AFTER {
            return Err(Error::FlushFailing {
                attempts: failures,
                reason: self.last_failure.lock().clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(crate) fn poison_error(&self) -> Error {
        Error::Poisoned {
            reason: self.poison_reason.lock().clone(),
        }
    }

    pub(crate) fn poison(&self, reason: String) {
        let mut r = self.poison_reason.lock();
        if !self.poisoned.load(Ordering::Acquire) {
            *r = reason;
            self.poisoned.store(true, Ordering::Release);
        }
    }

    pub(crate) fn flush_failed(&self, error: &Error) -> u32 {
        *self.last_failure.lock() = error.to_string();
        self.failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn flush_succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }
}
