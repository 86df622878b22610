//! [`Engine`]: the public handle and its verbs.
//!
//! An `Engine` is a cheap clone of an `Arc<Handle>`. The `Handle` owns the
//! flusher threads; dropping the last `Engine` drops the `Handle`, which runs
//! the same path as [`Engine::shutdown`]. The threads hold only `Arc<Shared>`,
//! so they never keep the handle alive.
//!
//! The verbs check their arguments and call the read path (`lookup.rs`), or
//! the write path and read-modify-write (`access.rs`).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::buffer::DirtyMap;
use crate::config::{Config, Location};
use crate::error::{Error, Result};
use crate::flush::cycle::Cycles;
use crate::flush::{FlushControl, Flusher};
use crate::journal::{self, replay::Replay, Journal};
use crate::purger::Purger;
use crate::recovery;
use crate::shared::Shared;
use crate::stats::{Checkpoint, Counters, Stats};
use crate::storage::{self, keeper::Keeper};
use crate::txn::{self, Transaction, TransactionError};
use crate::verify::VerifyReport;
use crate::watch::Watchers;

thread_local! {
    /// Depth of engine closures (`modify`) running on this thread. Engine
    /// calls made from inside one would deadlock on the shard lock the
    /// closure runs under, so they are refused with [`Error::Reentrant`].
    static IN_CLOSURE: Cell<u32> = const { Cell::new(0) };
}

pub(crate) struct ClosureGuard;

impl ClosureGuard {
    pub(crate) fn enter() -> ClosureGuard {
        IN_CLOSURE.with(|c| c.set(c.get() + 1));
        ClosureGuard
    }
}

impl Drop for ClosureGuard {
    fn drop(&mut self) {
        IN_CLOSURE.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

fn in_closure() -> bool {
    IN_CLOSURE.with(|c| c.get() > 0)
}

pub(crate) fn not_reentrant() -> Result<()> {
    if in_closure() {
        Err(Error::Reentrant)
    } else {
        Ok(())
    }
}

/// A handle to an open store. Cheap to clone; clones share one engine and may
/// be used from any thread.
///
/// See the [crate documentation](crate) for an overview and the durability
/// contract.
#[derive(Clone)]
pub struct Engine {
    handle: Arc<Handle>,
}

/// Owner of the flusher threads; its drop is the engine's shutdown.
struct Handle {
    shared: Arc<Shared>,
    lifecycle: Mutex<Lifecycle>,
}

enum Lifecycle {
    /// Running; the purger is started once `open` is done with the journal
    /// (its tombstones take seqs, which must come after the journal's
    /// first base).
    Running(Flusher, Option<Purger>),
    /// Shut down, with the outcome of the final flush.
    Stopped(Result<()>),
}

impl Engine {
    /// Opens the store in `config`'s directory, creating it if the directory
    /// is missing or empty; or the in-memory store of a
    /// [`Config::temporary`] config (blank at its first open).
    ///
    /// Errors: [`Error::Config`] for an invalid configuration,
    /// [`Error::Locked`] if another engine holds the store,
    /// [`Error::NotAStore`] for a directory holding something else,
    /// [`Error::UnsupportedFormat`] for a store from an unknown format
    /// version, [`Error::Corrupt`] or [`Error::Io`] for damaged files.
    pub fn open(config: Config) -> Result<Engine> {
        config.validate()?;
        let (dir, backend) = storage::backend(&config)?;
        let (keeper, recovered) =
            Keeper::open(backend, config.faults.clone(), config.accept_data_loss)?;
        // Writes the journal holds beyond the store's cut (read before the
        // buffer exists: its seqs continue after the journal's).
        let replay = match config.location() {
            Location::Dir(_) => journal::replay::read(
                &dir.join(journal::DIR),
                recovered.last_seq,
                recovered.durable.map_or(0, |d| d.journal),
                config.accept_data_loss,
            )?,
            #[cfg(feature = "postgres")]
            Location::Postgres(_) => Replay {
                last_seq: recovered.last_seq,
                ..Replay::default()
            },
            Location::Memory(_) => Replay {
                last_seq: recovered.last_seq,
                ..Replay::default()
            },
        };
        let buffer = DirtyMap::new(
            replay.last_seq.max(recovered.last_seq),
            config.max_dirty_bytes,
            config.read_cache_limit(),
        );
        recovery::load_deadlines(&*keeper.storage()?, &buffer)?;
        let shared = Arc::new(Shared {
            dir,
            keeper,
            buffer,
            counters: Counters::default(),
            flush: FlushControl::new(),
            watchers: Watchers::default(),
            trees_marked: Default::default(),
            txn_lane: Mutex::new(()),
            cycle_lock: Mutex::new(()),
            closed: Default::default(),
            config,
        });
        Counters::set_max(&shared.counters.flushed_seq, recovered.last_seq.0);
        Counters::set_max(&shared.counters.durable_seq, recovered.last_seq.0);
        // Before any thread that could run a cycle starts (see
        // `Shared::replay_record`).
        let replayed = replay.records.len();
        for record in replay.records {
            shared.replay_record(record);
        }
        Counters::add(&shared.counters.journal_replayed, replayed as u64);
        let cycles = Cycles::new(&recovered);
        let flusher = Flusher::start(&shared, cycles)?;
        let engine = Engine {
            handle: Arc::new(Handle {
                shared,
                lifecycle: Mutex::new(Lifecycle::Running(flusher, None)),
            }),
        };
        // On an error the engine is dropped, which shuts it down.
        engine.open_journal(replayed, replay.next_number, &replay.files)?;
        let purger = Purger::start(&engine.handle.shared)?;
        if let Lifecycle::Running(_, slot) = &mut *engine.handle.lifecycle.lock() {
            *slot = Some(purger);
        }
        Ok(engine)
    }

    /// The journal's part of `open`, once the `replayed` records found
    /// beyond the store's cut are in the dirty map: makes them durable in
    /// the store (a checkpoint), then begins segment `next_number` (with a
    /// journal mode other than `Off`), then deletes the segment `files`
    /// found, whose every record is now durable in the store. No write is
    /// accepted before it returns.
    fn open_journal(&self, replayed: usize, next_number: u64, files: &[PathBuf]) -> Result<()> {
        let s = self.shared();
        let Location::Dir(_) = s.config.location() else {
            return Ok(());
        };
        if replayed > 0 {
            self.checkpoint()?;
            log::info!("millpond: replayed {replayed} journal records");
        }
        let mode = s.config.journal;
        if mode != Journal::Off {
            s.buffer
                .attach_journal(|base| journal::Writer::start(&s.dir, mode, next_number, base))?;
        }
        // The durable record promises the journal in use from its first
        // segment on (or no journal), before the old segments go.
        s.keeper
            .record_journal(if mode == Journal::Off { 0 } else { next_number })?;
        for file in files {
            if let Err(e) = std::fs::remove_file(file) {
                log::warn!(
                    "millpond: removing journal segment {} failed: {e}",
                    file.display()
                );
            }
        }
        if mode == Journal::Off && !files.is_empty() {
            // Empty now: a store without a journal keeps no directory for it.
            let _ = std::fs::remove_dir(s.dir.join(journal::DIR));
        }
        Ok(())
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Refuses a page of an iteration from inside a closure or after
    /// shutdown.
    pub(crate) fn check_iterable(&self) -> Result<()> {
        not_reentrant()?;
        self.shared().check_open()
    }

    /// Runs `f` as a serializable transaction over any number of keys, and
    /// returns what it returns.
    ///
    /// Inside `f`, [`Transaction::get`] sees the transaction's own writes and
    /// otherwise one consistent state of the engine; [`Transaction::set`],
    /// [`Transaction::set_with_ttl`] and [`Transaction::delete`] take effect,
    /// all together, only if `f` returns `Ok` and the commit succeeds. The
    /// result is as if all committed transactions (and all other writes) had
    /// run one at a time. A flush cycle persists all of a transaction's writes
    /// or none of them.
    ///
    /// **`f` may run more than once**: when another writer changed something
    /// it read, the attempt is discarded and `f` runs again (after a short
    /// backoff). So `f` must have no effects outside the transaction. After
    /// 1000 failed attempts the call returns [`Error::Conflict`]; transactions
    /// that keep conflicting take an exclusive lane, one at a time, before
    /// that.
    ///
    /// If `f` returns `Err`, nothing is written and the error is returned.
    /// Starting a transaction inside `f` returns [`Error::Reentrant`].
    pub fn transaction<R>(&self, f: impl FnMut(&mut Transaction<'_>) -> Result<R>) -> Result<R> {
        not_reentrant()?;
        txn::run(self.shared(), f)
    }

    /// [`Engine::transaction`], with a closure that can abort with its own
    /// error type: returning `Err(TransactionError::Abort(e))` writes
    /// nothing and returns the same; engine errors (`?` on the
    /// transaction's verbs) come back as [`TransactionError::Engine`], and a
    /// conflict still runs the closure again.
    ///
    /// ```
    /// # fn main() -> millpond::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use millpond::{Engine, Config, TransactionError};
    /// let engine = Engine::open(Config::new(dir.path().join("s")))?;
    /// #[derive(Debug, PartialEq)]
    /// struct Insufficient(u64);
    /// engine.set_as(b"alice", &10u64)?;
    /// let r = engine.try_transaction(|tx| {
    ///     let balance: u64 = tx.get_as(b"alice")?.unwrap_or(0);
    ///     if balance < 30 {
    ///         return Err(TransactionError::Abort(Insufficient(balance)));
    ///     }
    ///     tx.set_as(b"alice", &(balance - 30))?;
    ///     Ok(())
    /// });
    /// assert!(matches!(r, Err(TransactionError::Abort(Insufficient(10)))));
    /// # Ok(()) }
    /// ```
    pub fn try_transaction<R, E>(
        &self,
        f: impl FnMut(&mut Transaction<'_>) -> std::result::Result<R, TransactionError<E>>,
    ) -> std::result::Result<R, TransactionError<E>> {
        not_reentrant()?;
        txn::run(self.shared(), f)
    }

    /// Checks everything stored: every metadata record and its checksum,
    /// every blob against its record, blobs that no record points at
    /// (orphans), the deadline index against the records, the gc and format
    /// records. Runs a checkpoint first, so the check covers every write
    /// acknowledged before the call; flush cycles wait while it reads, and
    /// writers go on. Reads the whole store: a tool, not a hot path.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.checkpoint()?;
        self.shared().verify(false)
    }

    /// [`Engine::verify`], then fixes what can be fixed without touching live
    /// data: removes orphan blobs, rewrites the deadline index where it
    /// disagrees with the records, and purges expired keys; then
    /// checkpoints. Corrupt records and records whose blob is missing are
    /// reported, never removed. The report lists what was found;
    /// `repaired` counts the fixes and purged keys.
    pub fn repair(&self) -> Result<VerifyReport> {
        self.checkpoint()?;
        let mut report = self.shared().verify(true)?;
        report.repaired += self.purge_expired()?;
        self.checkpoint()?;
        Ok(report)
    }

    /// Runs the expiry purger now, over every key: each key whose deadline
    /// has passed is deleted (from memory now, from disk at the next flush).
    /// Returns the number of keys purged. The background purger does the
    /// same every 100 ms in bounded slices; this is for callers that want it
    /// done at a known time (and for tests that move a mock clock).
    pub fn purge_expired(&self) -> Result<u64> {
        not_reentrant()?;
        let s = self.shared();
        s.check_open()?;
        Ok(s.purge(None))
    }

    /// Returns once every write acknowledged before the call is durable on
    /// disk (written, flushed and fsynced). Writers are not blocked while it
    /// runs; concurrent checkpoints share one flush cycle.
    ///
    /// On error nothing is claimed: buffered writes are kept and retried,
    /// except after a failed fsync, which poisons the engine
    /// ([`Error::Poisoned`]).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        not_reentrant()?;
        let s = self.shared();
        s.check_open()?;
        if s.health().is_poisoned() {
            return Err(s.health().poison_error());
        }
        let started = Instant::now();
        let rx = s.flush.request_sync()?;
        match rx.recv() {
            Ok(Ok((seq, entries))) => Ok(Checkpoint {
                seq: seq.0,
                flushed_entries: entries,
                duration: started.elapsed(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Stops accepting writes, persists and fsyncs everything buffered, joins
    /// every engine thread and closes the store (its lock is released, so it
    /// can be opened again). Afterwards every operation returns
    /// [`Error::Closed`].
    ///
    /// Idempotent: later calls return the outcome of the first. Dropping the
    /// last handle does the same, logging any error.
    pub fn shutdown(&self) -> Result<()> {
        not_reentrant()?;
        self.handle.shutdown()
    }

    /// The engine's counters.
    pub fn stats(&self) -> Stats {
        let s = self.shared();
        let (dirty_entries, writes, coalesced_writes) = if in_closure() {
            // A shard lock is held by this thread: count without blocking.
            s.buffer.counts_nonblocking()
        } else {
            s.buffer.counts()
        };
        let c = &s.counters;
        let journal = s.buffer.journal().map(|j| j.counts()).unwrap_or_default();
        Stats {
            writes,
            coalesced_writes,
            flushes: Counters::get(&c.flushes),
            flushed_entries: Counters::get(&c.flushed_entries),
            dirty_entries,
            dirty_bytes: s.buffer.bytes(),
            peak_dirty_bytes: s.buffer.peak_bytes(),
            flush_errors: Counters::get(&c.flush_errors),
            storage_reopens: s.keeper.reopens(),
            last_flush_duration: c.last_flush(),
            syncs: Counters::get(&c.syncs),
            expired: Counters::get(&c.expired),
            transactions: Counters::get(&c.transactions),
            transaction_retries: Counters::get(&c.transaction_retries),
            ttl_keys: if in_closure() {
                0
            } else {
                s.buffer.deadlines()
            },
            blobs_written: Counters::get(&c.blobs_written),
            last_seq: s.buffer.last_seq().0,
            flushed_seq: Counters::get(&c.flushed_seq),
            durable_seq: Counters::get(&c.durable_seq),
            journal_replayed: Counters::get(&c.journal_replayed),
            journal_file_writes: journal.file_writes,
            journal_file_syncs: journal.file_syncs,
            journal_bytes: journal.retained_bytes,
        }
    }

    /// The store directory (absolute); for a temporary store, its name
    /// (`memory:N`, see [`Config::temporary`]), which names no directory.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.shared().dir)
            .field("closed", &self.shared().closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Handle {
    fn shutdown(&self) -> Result<()> {
        let mut life = self.lifecycle.lock();
        if let Lifecycle::Stopped(outcome) = &*life {
            return match outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            };
        }
        let s = &self.shared;
        // Every write checks `closed` under its shard lock, and the final
        // cycle's freeze takes every shard lock after this store: a write
        // either completed before the freeze (and is in it) or sees `closed`.
        s.closed.store(true, Ordering::SeqCst);
        s.buffer.wake_waiters();
        let rx = s.flush.request_shutdown();
        let flushed = match rx.recv() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Storage(
                "the flush coordinator stopped before the final flush".into(),
            )),
        };
        let previous = std::mem::replace(&mut *life, Lifecycle::Stopped(Ok(())));
        let joined = match previous {
            Lifecycle::Running(flusher, purger) => {
                let purger_ok = purger.is_none_or(Purger::stop);
                flusher.join().and(if purger_ok {
                    Ok(())
                } else {
                    Err(Error::Storage("the expiry purger thread panicked".into()))
                })
            }
            Lifecycle::Stopped(_) => Ok(()),
        };
        // Whatever `Periodic` still holds is written and synced (the final
        // cycle made it durable in the store too, unless it failed).
        if let Some(journal) = s.buffer.journal() {
            journal.stop(true);
        }
        // Subscribers end; a `Synced` one gets what the final sync covered.
        s.watchers.close(flushed.is_ok());
        // A backend shared by many engines lets go of this engine's leases,
        // only once the final flush committed everything acknowledged (a
        // failed one leaves them to expire). A failure to release is only
        // logged: the leases then expire.
        if flushed.is_ok() {
            if let Err(e) = s.keeper.release() {
                log::warn!("millpond: releasing the leases at shutdown failed: {e}");
            }
        }
        // Closing storage releases the store's lock.
        let closed = s.keeper.close();
        let outcome = flushed.and(joined).and(closed);
        *life = Lifecycle::Stopped(match &outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(e.duplicate()),
        });
        outcome
    }
}

/// Test support (feature `testing`): simulates a crash of the process at a
/// flush-cycle boundary.
/// The engine stops at once: its threads exit without flushing the dirty
/// map, storage is closed, and every operation returns [`Error::Closed`].
/// Writes not yet flushed are lost, as in a crash.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn halt(engine: &Engine) {
    let h = &engine.handle;
    let mut life = h.lifecycle.lock();
    if let Lifecycle::Stopped(_) = &*life {
        return;
    }
    let s = &h.shared;
    s.closed.store(true, Ordering::SeqCst);
    s.buffer.wake_waiters();
    s.flush.request_halt();
    if let Lifecycle::Running(flusher, purger) =
        std::mem::replace(&mut *life, Lifecycle::Stopped(Ok(())))
    {
        if let Some(purger) = purger {
            purger.stop();
        }
        if let Err(e) = flusher.join() {
            log::error!("millpond: halting: {e}");
        }
    }
    // Records not yet written are lost, as in a crash.
    if let Some(journal) = s.buffer.journal() {
        journal.stop(false);
    }
    s.watchers.close(false);
    if let Err(e) = s.keeper.close() {
        log::error!("millpond: halting: {e}");
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("millpond: shutdown on drop of the last handle failed: {e}");
        }
    }
}

const _: () = {
    const fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Engine>();
};
