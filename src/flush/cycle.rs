//! One flush cycle, step by step. This order is what makes a crash at any
//! instant recover to one point in the write history (see DESIGN.md, "Crash
//! cases"):
//!
//! 1. **Freeze** the dirty map at a cut (all shard locks held at once).
//! 2. **Prepare** in parallel (workers): write large values to the blob tree
//!    under fresh ids, encode every metadata record.
//! 3. **Barrier**: if any blob was written, flush storage, so the blobs reach
//!    the operating system before any record that points at them.
//! 4. **Commit**: every record of the cycle, the state record (cut, next
//!    blob id, store digest) and a gc record listing the blobs this cycle
//!    made unreachable, applied atomically by `Storage::commit`. This is the
//!    commit point.
//! 5. **Flush** storage (the cycle now survives a process crash); on a
//!    durable cycle (checkpoint, shutdown) also **sync** through the keeper
//!    (survives a power cut; the durable record then names the cut).
//!    With a journal, the segments the sync covers are then deleted.
//! 6. **Release** the frozen maps: reads of those keys go to storage.
//! 7. **Collect** the unreachable blobs, then remove the gc record.
//!
//! With the `failpoints` feature, the process can be made to abort at
//! `flush-before-blobs` (step 2), `flush-before-commit` (between 3 and 4),
//! `commit-mid-apply` (inside 4, in `storage::sled`), `flush-after-commit`
//! (between 4 and 5) and `flush-before-sync` (in 5), for the crash tests.
//!
//! A failure in steps 2 to 5 keeps the frozen maps (nothing acknowledged is
//! dropped) and the cycle is retried as a whole; blobs written by the failed
//! attempt are listed in the gc record of the attempt that commits. Each
//! attempt starts by settling a commit that failed half way
//! (`Storage::settle`) and reading the store digest it builds on from the
//! stored state record. A failed sync poisons the engine instead (see
//! `Keeper::sync`).

use std::sync::Arc;
use std::time::Instant;

use crate::buffer::{Frozen, Seq};
use crate::codec::{self, Digest, GcRecord, StateRecord};
use crate::error::Result;
use crate::flush::worker::{Pool, Prepared};
use crate::recovery::Recovered;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::storage::{BlobId, Commit, SysKey};

/// A crash point: with the `failpoints` feature and the point's action set to
/// `return` (for example `FAILPOINTS=flush-after-commit=3*off->return`), the
/// process aborts here. Does nothing otherwise.
#[inline]
fn crash_point(_name: &str) {
    #[cfg(feature = "failpoints")]
    let _ = fail::eval(_name, |_| std::process::abort());
}

/// A frozen cycle that has not committed yet (kept across failed attempts).
struct Pending {
    frozen: Arc<Frozen>,
    /// Blobs written by failed attempts at this cycle.
    orphans: Vec<BlobId>,
}

/// The coordinator's record of cycles: the one in flight, what is
/// committed, what is durable.
pub(crate) struct Cycles {
    pending: Option<Pending>,
    next_gc_id: u64,
    /// Cut of the last committed cycle (or the recovered state).
    committed: Seq,
    /// Cut of the last cycle whose frozen maps were released (committed and
    /// flushed: only storage holds it now), or the recovered state. A
    /// committed cycle whose flush failed is still pending, in memory.
    released: Seq,
    /// The store digest of the committed state; `None` when it must be read
    /// again from the stored state record (after a failed attempt, which
    /// may have committed without finishing, or a storage replacement).
    digest: Option<Digest>,
    /// Cut of the last state made durable by a sync.
    synced: Seq,
    /// A commit happened since the last sync.
    unsynced: bool,
    /// The store's format version is known to allow compressed values.
    compression_marked: bool,
}

/// What a run of [`Cycles::run`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    /// Everything up to this seq is committed (and durable if synced).
    pub committed: Seq,
    /// Entries committed by this run.
    pub entries: u64,
}

impl Cycles {
    /// Starts from the state found at open, which the keeper made durable
    /// before the engine serves (see `Keeper::open`).
    pub(crate) fn new(recovered: &Recovered) -> Cycles {
        Cycles {
            pending: None,
            next_gc_id: recovered.next_gc_id,
            committed: recovered.last_seq,
            released: recovered.last_seq,
            digest: Some(recovered.digest),
            synced: recovered.last_seq,
            unsynced: false,
            compression_marked: false,
        }
    }

    /// The keeper replaced the storage: continue from what the reopened
    /// store holds. A pending cycle is kept (it is retried whole), and the
    /// next durable cycle syncs whatever the state is.
    pub(crate) fn reopened(&mut self, recovered: &Recovered) {
        // A reopened store may have lost writes that were never flushed,
        // the format record's raise among them: raised again before the
        // next commit that needs it.
        self.compression_marked = false;
        self.committed = recovered.last_seq;
        self.digest = None;
        self.next_gc_id = self.next_gc_id.max(recovered.next_gc_id);
        self.unsynced = true;
    }

    /// Cut of the last cycle released from memory: a storage that comes
    /// back with less has lost writes this engine no longer holds.
    pub(crate) fn released(&self) -> Seq {
        self.released
    }

    /// Whether a frozen cycle is waiting to be retried.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Persists everything acknowledged before the call: first a cycle left
    /// over from a failed attempt, then a fresh freeze of the dirty map. With
    /// `sync`, ends with a sync, and on success every write up to
    /// `Report::committed` is durable.
    pub(crate) fn run(&mut self, shared: &Shared, pool: &Pool, sync: bool) -> Result<Report> {
        // Verification reads the stores between cycles, never during one.
        let _cycle = shared.cycle_lock.lock();
        let mut entries = 0;
        loop {
            let fresh = self.pending.is_none();
            if fresh {
                shared.flush.take_urgent();
                match shared.buffer.freeze() {
                    Some(frozen) => {
                        self.pending = Some(Pending {
                            frozen: Arc::new(frozen),
                            orphans: Vec::new(),
                        });
                        // A segment sealed by the freeze is closed now, off
                        // the writers' path (and can go at this cycle's
                        // sync).
                        if let Some(journal) = shared.buffer.journal() {
                            journal.rotate();
                        }
                    }
                    None => break,
                }
            }
            entries += self.commit_pending(shared, pool)?;
            if fresh {
                break;
            }
        }
        if sync && self.unsynced {
            let started = Instant::now();
            let digest = match self.digest {
                Some(d) => d,
                None => stored_digest(shared)?,
            };
            crash_point("flush-before-sync");
            shared.keeper.sync(self.committed, digest)?;
            // Journal segments whose every record is now durable in the
            // store are not needed by any recovery.
            if let Some(journal) = shared.buffer.journal() {
                journal.truncate(self.committed);
            }
            shared.watchers.synced();
            self.unsynced = false;
            self.synced = self.committed;
            Counters::add(&shared.counters.syncs, 1);
            Counters::set_max(&shared.counters.durable_seq, self.synced.0);
            log::debug!("millpond: synced in {:?}", started.elapsed());
        }
        // Every frozen map up to the last freeze is committed (the last
        // freeze happened in this run, after every earlier one committed):
        // a shared backend hands over what was asked for and is flushed.
        shared.keeper.cycle_done(shared.buffer.freezes());
        Ok(Report {
            committed: if sync { self.synced } else { self.committed },
            entries,
        })
    }

    /// Steps 2 to 7 for the pending cycle. Returns the entries committed.
    fn commit_pending(&mut self, shared: &Shared, pool: &Pool) -> Result<u64> {
        let Some(pending) = self.pending.as_ref() else {
            return Ok(0);
        };
        let frozen = Arc::clone(&pending.frozen);
        let orphans = pending.orphans.clone();
        let started = Instant::now();

        // A commit that failed half way is settled first (rolled back, or
        // finished past its commit point), so the records this attempt
        // reads (and replaces) are those it builds on.
        if self.digest.is_none() {
            shared.storage()?.settle()?;
            self.digest = Some(stored_digest(shared)?);
        }

        // 2. Prepare.
        crash_point("flush-before-blobs");
        let mut prepared = Prepared::default();
        for part in pool.prepare(&frozen) {
            prepared.ops.extend(part.ops);
            prepared.replaced.extend(part.replaced);
            prepared.written.extend(part.written);
            prepared.superseded.extend(part.superseded);
            prepared.digest.merge(part.digest);
            prepared.compressed |= part.compressed;
            if prepared.error.is_none() {
                prepared.error = part.error;
            }
        }
        let written = prepared.written.clone();
        match self.commit_prepared(shared, &frozen, prepared, orphans, started) {
            Ok(n) => {
                self.pending = None;
                Ok(n)
            }
            Err(e) => {
                // Whatever this attempt wrote is unreachable unless it
                // committed; the attempt that commits lists it for removal.
                if let Some(p) = self.pending.as_mut() {
                    p.orphans.extend(written);
                }
                // It may have committed without finishing: the next attempt
                // reads the digest back.
                self.digest = None;
                Err(e)
            }
        }
    }

    /// Steps 3 to 7.
    fn commit_prepared(
        &mut self,
        shared: &Shared,
        frozen: &Frozen,
        prepared: Prepared,
        orphans: Vec<BlobId>,
        started: Instant,
    ) -> Result<u64> {
        if let Some(e) = prepared.error {
            return Err(e);
        }
        let storage = shared.storage()?;
        // 3. Barrier.
        if !prepared.written.is_empty() {
            storage.flush()?;
        }
        // 4. Commit, in a store whose format version says it may hold
        // what the commit stores.
        if prepared.compressed && !self.compression_marked {
            storage.raise_format(codec::FORMAT_VERSION_COMPRESSION)?;
            self.compression_marked = true;
        }
        crash_point("flush-before-commit");
        let mut gc_blobs = prepared.superseded;
        gc_blobs.extend(orphans);
        let base = self.digest.unwrap_or_default();
        let digest = base.apply(prepared.digest);
        let mut commit = Commit {
            ops: prepared.ops,
            sys: Vec::with_capacity(2),
            replaced: prepared.replaced,
        };
        commit.sys.push((
            SysKey::State,
            Some(codec::encode_state(&StateRecord {
                last_seq: frozen.cut.0,
                next_blob: shared.keeper.blobs().next(),
                digest: Some(digest),
            })?),
        ));
        let gc_id = if gc_blobs.is_empty() {
            None
        } else {
            let id = self.next_gc_id;
            self.next_gc_id += 1;
            commit.sys.push((
                SysKey::Gc(id),
                Some(codec::encode_gc(&GcRecord {
                    blobs: gc_blobs.clone(),
                })?),
            ));
            Some(id)
        };
        // The cache token before the commit: what it stores may be cached
        // at the release only if the token is still this (no other engine
        // can have written its keys since).
        let token_before = shared.keeper.ownership_changes();
        storage.commit(commit)?;
        crash_point("flush-after-commit");
        self.unsynced = true;
        self.committed = frozen.cut;
        self.digest = Some(digest);
        // 5. Flush. The cycle now survives a crash of the process: its
        // changes may be told to watchers.
        storage.flush()?;
        shared.watchers.flushed(frozen, &*storage, shared.now());
        // 6. Release.
        shared
            .buffer
            .release(frozen, token_before, |key| shared.keeper.cache_token(key));
        self.released = frozen.cut;
        let c = &shared.counters;
        Counters::add(&c.flushes, 1);
        Counters::add(&c.flushed_entries, frozen.entries as u64);
        Counters::set_max(&c.flushed_seq, frozen.cut.0);
        c.record_flush(started.elapsed());
        // 7. Collect. A failure leaves the gc record for the next open.
        if let Some(id) = gc_id {
            let collected = storage
                .remove_blobs(&gc_blobs)
                .and_then(|()| storage.put_sys(SysKey::Gc(id), None));
            if let Err(e) = collected {
                log::warn!(
                    "millpond: removing unreachable blobs failed, left for the next open: {e}"
                );
            }
        }
        Ok(frozen.entries as u64)
    }
}

/// The store digest in the stored state record.
fn stored_digest(shared: &Shared) -> Result<Digest> {
    let storage = shared.storage()?;
    match storage.get_sys(SysKey::State)? {
        Some(raw) => match codec::decode_state(&raw)?.digest {
            Some(d) => Ok(d),
            None => crate::recovery::digest_of_records(&*storage),
        },
        None => Ok(Digest::default()),
    }
}
