//! [`Keeper`]: the one owner of the open storage, its health, the blob id
//! allocator and what is durable.
//!
//! Everything else reaches storage through [`Keeper::storage`], reports
//! failures through [`Keeper::health`], and makes a state durable only
//! through [`Keeper::sync`], which always poisons the engine when it fails
//! (DESIGN.md, invariant 12). The other durable writes are the creation
//! record recovery writes first into a new store (seq 0: it promises
//! nothing; DESIGN.md, invariant 18) and [`Keeper::record_journal`], which
//! rewrites the durable point it already holds with the journal in use.
//! The keeper also replaces the storage in
//! process when it keeps failing ([`Keeper::reopen`]): the dirty map and the
//! pending cycle stay in memory meanwhile.
//!
//! Locks: the storage `RwLock` is a leaf lock. Readers hold its read guard
//! for the length of one storage call or one cycle step; `reopen` and
//! `close` take it for writing, so they wait for those to finish, and
//! readers wait (they do not fail) while the storage is being replaced.
//! `durable` is a leaf lock held only by `sync` and `record_journal`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};

use super::faulty::{Faults, FaultyStorage};
use super::{Backend, BlobId, Storage};
use crate::buffer::Seq;
use crate::codec::{Digest, DurableRecord};
use crate::error::{Error, Result};
use crate::recovery::{self, Recovered};

/// Consecutive failed flush attempts after which writes are refused.
pub(crate) const FAILING_AFTER: u32 = 5;

/// Consecutive failed flush attempts after which the keeper tries to replace
/// the storage (a backend such as sled keeps its first I/O error for as long
/// as it is open).
pub(crate) const REOPEN_AFTER: u32 = 2;

/// The storage backend, borrowed: `close` and `reopen` wait for it to be
/// dropped.
pub(crate) type StorageRef<'a> = MappedRwLockReadGuard<'a, dyn Storage>;

/// The one owner of storage and durability. See the module documentation.
pub(crate) struct Keeper {
    backend: Box<dyn Backend>,
    /// Wraps every storage the backend opens (tests only).
    faults: Option<Arc<Faults>>,
    /// The open storage; `None` once closed (shutdown), or while a reopen
    /// could not open the backend again (then `lost` says why).
    storage: RwLock<Option<Arc<dyn Storage>>>,
    lost: Mutex<Option<String>>,
    health: Health,
    blobs: BlobIds,
    /// The newest durable record written (or found at open).
    durable: Mutex<Option<DurableRecord>>,
    /// Storage replacements so far.
    reopens: AtomicU64,
    /// The first segment of the journal in use (0: none), carried by every
    /// durable record written (see [`Keeper::record_journal`]).
    journal: AtomicU64,
}

impl Keeper {
    /// Opens the backend and recovers the store (see `recovery`), then makes
    /// the state it found durable if the durable record does not already
    /// cover it: what open serves is never less durable than what a
    /// checkpoint would promise.
    pub(crate) fn open(
        backend: Box<dyn Backend>,
        faults: Option<Arc<Faults>>,
        accept_loss: bool,
    ) -> Result<(Keeper, Recovered)> {
        let storage = open_wrapped(&*backend, &faults)?;
        let recovered = recover(&*storage, accept_loss)?;
        let keeper = Keeper {
            backend,
            faults,
            storage: RwLock::new(Some(storage)),
            lost: Mutex::new(None),
            health: Health::default(),
            blobs: BlobIds::new(recovered.next_blob, recovered.blobs_exist),
            durable: Mutex::new(recovered.durable),
            reopens: AtomicU64::new(0),
            journal: AtomicU64::new(recovered.durable.map_or(0, |d| d.journal)),
        };
        if recovered.needs_sync {
            keeper.sync(recovered.last_seq, recovered.digest)?;
        }
        Ok((keeper, recovered))
    }

    /// The storage, or [`Error::Closed`] after shutdown. Recursive: a caller
    /// may hold one while taking another, even with a writer waiting.
    pub(crate) fn storage(&self) -> Result<StorageRef<'_>> {
        RwLockReadGuard::try_map(self.storage.read_recursive(), |s| s.as_deref()).map_err(|_| {
            match &*self.lost.lock() {
                Some(reason) => Error::Storage(format!(
                    "the storage is being reopened after a failure: {reason}"
                )),
                None => Error::Closed,
            }
        })
    }

    pub(crate) fn health(&self) -> &Health {
        &self.health
    }

    pub(crate) fn blobs(&self) -> &BlobIds {
        &self.blobs
    }

    /// [`Backend::claim`]: may this engine write `key` (an internal key)?
    pub(crate) fn claim(&self, key: &[u8], request: bool) -> Result<()> {
        self.backend.claim(key, request)
    }

    /// [`Backend::admit_write`], under the key's shard lock.
    pub(crate) fn admit_write(
        &self,
        key: &[u8],
        freezes: u64,
        expected: Option<u64>,
    ) -> Result<Option<u64>> {
        self.backend.admit_write(key, freezes, expected)
    }

    /// [`Backend::taken_deadlines`].
    pub(crate) fn taken_deadlines(&self) -> Result<Vec<(Bytes, Bytes)>> {
        self.backend.taken_deadlines()
    }

    /// [`Backend::exclusive`].
    pub(crate) fn exclusive(&self) -> bool {
        self.backend.exclusive()
    }

    /// [`Backend::cycle_done`], after a successful cycle.
    pub(crate) fn cycle_done(&self, freezes: u64) -> bool {
        self.backend.cycle_done(freezes)
    }

    /// [`Backend::handing_over`], without blocking.
    pub(crate) fn handing_over(&self) -> bool {
        self.backend.handing_over()
    }

    /// [`Backend::handover_poll`].
    pub(crate) fn handover_poll(&self) -> Option<std::time::Duration> {
        self.backend.handover_poll()
    }

    /// [`Backend::poll_requests`], between cycles.
    pub(crate) fn poll_requests(&self) -> bool {
        self.backend.poll_requests()
    }

    /// [`Backend::ownership_changes`], without blocking.
    pub(crate) fn ownership_changes(&self) -> u64 {
        self.backend.ownership_changes()
    }

    /// [`Backend::cache_token`], without blocking.
    pub(crate) fn cache_token(&self, key: &[u8]) -> Option<u64> {
        self.backend.cache_token(key)
    }

    /// [`Backend::release`], at shutdown after a successful final flush.
    pub(crate) fn release(&self) -> Result<()> {
        self.backend.release()
    }

    /// Storage replacements so far.
    pub(crate) fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// Makes every write committed so far durable, and records that the
    /// state at `seq` (whose store digest is `digest`) is: the storage's
    /// sync, then a new durable record. The only way anything is made
    /// durable. Any failure poisons the engine: after a failed fsync the
    /// kernel may have dropped the pages it could not write, so no later
    /// success may be trusted for them.
    pub(crate) fn sync(&self, seq: Seq, digest: Digest) -> Result<()> {
        if self.health.is_poisoned() {
            return Err(self.health.poison_error());
        }
        let mut durable = self.durable.lock();
        let outcome = self.storage().and_then(|storage| {
            storage.sync()?;
            let record = DurableRecord {
                generation: durable.map_or(1, |d| d.generation + 1),
                seq: seq.0,
                digest,
                journal: self.journal.load(Ordering::SeqCst),
            };
            storage.write_durable(&record)?;
            Ok(record)
        });
        match outcome {
            Ok(record) => {
                *durable = Some(record);
                Ok(())
            }
            Err(Error::Closed) => Err(Error::Closed),
            Err(e) => {
                self.health.poison(format!("fsync failed: {e}"));
                Err(self.health.poison_error())
            }
        }
    }

    /// Records in the durable record that the journal in use began with
    /// segment `first` (0: no journal is in use), keeping its durable point:
    /// from then on `open` refuses a journal without that segment or a later
    /// one (a journal deleted whole would otherwise lose what it promised
    /// without a trace). Called by `open` after it begins a journal's first
    /// segment, and with 0 before it deletes a journal it no longer uses.
    /// The one durable record written besides [`Keeper::sync`]'s and the
    /// creation record; a failure poisons, as in `sync`.
    pub(crate) fn record_journal(&self, first: u64) -> Result<()> {
        if self.health.is_poisoned() {
            return Err(self.health.poison_error());
        }
        let mut durable = self.durable.lock();
        self.journal.store(first, Ordering::SeqCst);
        let Some(current) = *durable else {
            // Only a store whose recovery wrote no durable record (never:
            // creation writes one); the next sync carries it.
            return Ok(());
        };
        if current.journal == first {
            return Ok(());
        }
        let record = DurableRecord {
            generation: current.generation + 1,
            journal: first,
            ..current
        };
        match self.storage().and_then(|s| s.write_durable(&record)) {
            Ok(()) => {
                *durable = Some(record);
                Ok(())
            }
            Err(Error::Closed) => Err(Error::Closed),
            Err(e) => {
                self.health
                    .poison(format!("writing the durable record failed: {e}"));
                Err(self.health.poison_error())
            }
        }
    }

    /// The last durable point: `(seq, digest)` of the newest durable record.
    pub(crate) fn durable(&self) -> Option<DurableRecord> {
        *self.durable.lock()
    }

    /// Replaces the storage with a freshly opened one, if the backend's
    /// probe says the medium accepts writes again. Returns what recovery
    /// found in the reopened store, or `None` if the probe failed (nothing
    /// was changed). Called by the flush coordinator between cycles, never
    /// during one, with `released`, the cut of the last cycle this engine
    /// committed, flushed and released from memory: a reopened store that
    /// holds less has lost cycles that were flushed but not yet durable (a
    /// PostgreSQL server that crashed while this engine kept running), and
    /// the engine is poisoned, since what it acknowledged as flushed is
    /// gone; a reopen of the engine serves the state found. A cycle that
    /// committed but whose flush failed (a full disk: sled's commit was in
    /// its memory only) is still pending in memory and is retried whole, so
    /// a store that lost it has lost nothing the engine does not hold.
    pub(crate) fn reopen(&self, released: Seq) -> Result<Option<Recovered>> {
        if self.backend.probe().is_err() {
            return Ok(None);
        }
        let mut slot = self.storage.write();
        let mut lost = self.lost.lock();
        match slot.take() {
            Some(old) => drop_storage(old)?,
            // Closed by shutdown: nothing to reopen.
            None if lost.is_none() => return Err(Error::Closed),
            // A previous reopen could not open it: try again.
            None => {}
        }
        let opened = open_wrapped(&*self.backend, &self.faults).and_then(|storage| {
            // A reopened store must hold at least what was made durable.
            let recovered = recover(&*storage, false)?;
            Ok((storage, recovered))
        });
        match opened {
            Ok((storage, recovered)) => {
                if recovered.last_seq < released {
                    self.health.poison(format!(
                        "the reopened store holds writes up to seq {} but cycles up to seq {} \
                         had been flushed: it lost flushed writes that were not yet durable",
                        recovered.last_seq.0, released.0
                    ));
                }
                *slot = Some(storage);
                *lost = None;
                self.reopens.fetch_add(1, Ordering::Relaxed);
                Ok(Some(recovered))
            }
            Err(e @ Error::Corrupt { .. }) => {
                // The store came back damaged: nothing more may be written
                // to it or reported durable.
                *lost = Some(e.to_string());
                self.health
                    .poison(format!("the reopened store is damaged: {e}"));
                Err(e)
            }
            Err(e) => {
                *lost = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Closes the storage (its lock is released). Later calls to
    /// [`Keeper::storage`] return [`Error::Closed`].
    pub(crate) fn close(&self) -> Result<()> {
        let mut slot = self.storage.write();
        *self.lost.lock() = None;
        match slot.take() {
            Some(storage) => drop_storage(storage),
            None => Ok(()),
        }
    }
}

/// [`recovery::recover`], with a panic inside the backend (sled panics on
/// some damaged files) turned into [`Error::Corrupt`].
fn recover(storage: &dyn Storage, accept_loss: bool) -> Result<Recovered> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        recovery::recover(storage, accept_loss)
    }))
    .unwrap_or_else(|_| {
        Err(Error::corrupt(
            None,
            "the storage layer failed while recovering the store",
        ))
    })
}

fn open_wrapped(backend: &dyn Backend, faults: &Option<Arc<Faults>>) -> Result<Arc<dyn Storage>> {
    let storage = backend.open()?;
    Ok(match faults {
        Some(f) => Arc::new(FaultyStorage::new(storage, Arc::clone(f))),
        None => storage,
    })
}

/// Drops a storage, which closes it. sled 0.34 panics in its drop when its
/// final fsync fails (it unwraps the result); that is an I/O error here, not
/// a crash.
fn drop_storage(storage: Arc<dyn Storage>) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(storage))).map_err(|_| {
        Error::Io(std::io::Error::other(
            "closing the store failed (its final fsync failed)",
        ))
    })
}

/// The blob id allocator.
#[derive(Debug)]
pub(crate) struct BlobIds {
    /// The next id to hand out. Ids are never reused.
    next: AtomicU64,
    /// False only while the blob tree is known to be empty.
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
}

/// Whether the engine may accept writes.
///
/// - Flush failures are counted; after [`FAILING_AFTER`] in a row, writes are
///   refused with [`Error::FlushFailing`] until a flush succeeds.
/// - A failed sync poisons the engine for good ([`Error::Poisoned`]); only
///   [`Keeper::sync`] poisons.
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

    fn poison(&self, reason: String) {
        let mut r = self.poison_reason.lock();
        if !self.poisoned.load(Ordering::Acquire) {
            *r = reason;
            self.poisoned.store(true, Ordering::Release);
        }
    }

    /// Counts a failed flush attempt; returns the failures in a row.
    pub(crate) fn flush_failed(&self, error: &Error) -> u32 {
        *self.last_failure.lock() = error.to_string();
        self.failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn flush_succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }
}
