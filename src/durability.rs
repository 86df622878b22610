//! [`Durability`]: how far a write must have gone before the call that made
//! it returns, and the wait for it.
//!
//! A write that asks for more than [`Durability::Buffered`] is made as usual
//! (into the dirty map, with its seq), then waits for the flush cycle that
//! covers its seq: the caller registers with the coordinator *after* its
//! write, and the coordinator takes its waiters before it freezes, so the
//! cycle that answers holds the write. Every waiter registered before a
//! cycle starts shares it (group commit): N writers asking for `Synced` at
//! once cost one fsync, not N.
//!
//! With a journal, the write's journal record answers instead of a cycle:
//! `Flushed` waits until it is written to the journal's file, `Synced`
//! until it is fdatasynced there (one sync shared by every writer waiting
//! at the time), and neither waits for a flush cycle.

use crate::buffer::dirty::Inserted;
use crate::error::{Error, Result};
use crate::journal::Reach;
use crate::shared::Shared;
use crate::stats::Counters;

/// How far a write must have gone before the call returns (see
/// [`Engine::set_with`](crate::Engine::set_with)), or which changes a
/// watcher is told about (see
/// [`Engine::watch_prefix`](crate::Engine::watch_prefix)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Durability {
    /// In memory: visible to every read at once, persisted by the next flush
    /// cycle (within `write_delay` plus one cycle). Lost by a crash before
    /// that. The default of every write.
    #[default]
    Buffered,
    /// Committed to the store and handed to the operating system: survives
    /// a crash of this process, not a power cut. The write waits for the
    /// next flush cycle (which it starts at once, without waiting for
    /// `write_delay`), shared with every other waiter.
    Flushed,
    /// Flushed and fsynced: survives a power cut. The write waits for the
    /// next durable cycle, as [`Engine::checkpoint`](crate::Engine::checkpoint)
    /// does, shared with every other waiter and checkpoint.
    Synced,
}

impl Shared {
    /// Returns once `written` is as durable as `durability` asks. The write
    /// must have been acknowledged before the call.
    pub(crate) fn wait_for(&self, written: &Inserted, durability: Durability) -> Result<()> {
        if let (Some(journal), Some(ticket)) = (self.buffer.journal(), written.ticket) {
            return match durability {
                Durability::Buffered => Ok(()),
                Durability::Flushed => journal.wait(ticket, Reach::Written),
                Durability::Synced => journal.wait(ticket, Reach::Synced),
            };
        }
        let seq = written.seq;
        let reached = |c: &std::sync::atomic::AtomicU64| Counters::get(c) >= seq.0;
        let counter = match durability {
            Durability::Buffered => return Ok(()),
            Durability::Flushed => &self.counters.flushed_seq,
            Durability::Synced => &self.counters.durable_seq,
        };
        // A cycle answers a waiter only with a cut at or past every write
        // acknowledged before the waiter registered; the loop is a guard.
        while !reached(counter) {
            if durability == Durability::Synced && self.health().is_poisoned() {
                return Err(self.health().poison_error());
            }
            let rx = match durability {
                Durability::Synced => self.flush.request_sync()?,
                _ => self.flush.request_flush()?,
            };
            match rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::Closed),
            }
        }
        Ok(())
    }
}
