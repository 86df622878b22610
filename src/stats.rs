//! [`Stats`], the engine's counters as seen by users, and [`Checkpoint`], what
//! a completed checkpoint reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of the engine's counters, from [`Engine::stats`](crate::Engine::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Writes accepted (sets, deletes and changing modifies), since open.
    pub writes: u64,
    /// Writes that replaced a write not yet persisted: each one is a write
    /// the disk never saw.
    pub coalesced_writes: u64,
    /// Flush cycles that committed something to disk, since open.
    pub flushes: u64,
    /// Entries (one per key per cycle) committed by those cycles.
    pub flushed_entries: u64,
    /// Entries buffered and not yet persisted (including a cycle in flight).
    pub dirty_entries: usize,
    /// Bytes buffered and not yet persisted, as counted against
    /// `max_dirty_bytes`.
    pub dirty_bytes: usize,
    /// The highest `dirty_bytes` since open. At most `max_dirty_bytes`:
    /// every write reserves its bytes before it enters the buffer. The one
    /// exception is a single write (or one transaction's writes) larger
    /// than the bound, admitted alone into an empty buffer.
    pub peak_dirty_bytes: usize,
    /// Failed flush attempts (each is retried), since open.
    pub flush_errors: u64,
    /// Times the storage was closed and reopened in process after flush
    /// attempts kept failing (for example on a full disk that was freed),
    /// since open.
    pub storage_reopens: u64,
    /// Duration of the last successful flush cycle.
    pub last_flush_duration: Option<Duration>,
    /// Flush cycles that ended with an fsync (checkpoints, shutdown).
    pub syncs: u64,
    /// Values written to the blob tree (values longer than the inline
    /// threshold).
    pub blobs_written: u64,
    /// Keys deleted because their deadline passed (by the purger), since
    /// open.
    pub expired: u64,
    /// Transactions committed, since open.
    pub transactions: u64,
    /// Transaction attempts that conflicted and were retried, since open.
    pub transaction_retries: u64,
    /// Keys that currently have an expiry deadline (in memory or on disk).
    pub ttl_keys: usize,
    /// Sequence number of the newest accepted write.
    pub last_seq: u64,
    /// Sequence number of the newest write known to be on disk (flushed,
    /// possibly not yet fsynced).
    pub flushed_seq: u64,
    /// Sequence number of the newest write known to be durable (fsynced).
    pub durable_seq: u64,
    /// Journal records replayed by `open` (writes a crash left only in the
    /// journal).
    pub journal_replayed: u64,
    /// Writes of journal records to the journal's files, since open (one
    /// per group commit; 0 without a journal).
    pub journal_file_writes: u64,
    /// fdatasyncs of the journal's files, since open.
    pub journal_file_syncs: u64,
    /// Bytes in the journal's segments (deleted once a durable cycle covers
    /// them).
    pub journal_bytes: u64,
}

/// What [`Engine::checkpoint`](crate::Engine::checkpoint) made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkpoint {
    /// Every write with a sequence number up to this one is durable.
    pub seq: u64,
    /// Entries the checkpoint's flush cycles committed (0 if everything
    /// was already on disk).
    pub flushed_entries: u64,
    /// How long the checkpoint took, from request to fsync.
    pub duration: Duration,
}

/// Counters updated by the flusher threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub flushes: AtomicU64,
    pub flushed_entries: AtomicU64,
    pub flush_errors: AtomicU64,
    /// Microseconds, plus one; 0 = no flush yet.
    pub last_flush_micros: AtomicU64,
    pub syncs: AtomicU64,
    pub expired: AtomicU64,
    pub transactions: AtomicU64,
    pub transaction_retries: AtomicU64,
    pub blobs_written: AtomicU64,
    pub flushed_seq: AtomicU64,
    pub durable_seq: AtomicU64,
    pub journal_replayed: AtomicU64,
}

impl Counters {
    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_max(c: &AtomicU64, n: u64) {
        c.fetch_max(n, Ordering::Relaxed);
    }

    pub(crate) fn record_flush(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.last_flush_micros.store(micros + 1, Ordering::Relaxed);
    }

    pub(crate) fn last_flush(&self) -> Option<Duration> {
        match self.last_flush_micros.load(Ordering::Relaxed) {
            0 => None,
            m => Some(Duration::from_micros(m - 1)),
        }
    }
}
