//! The write-ahead journal: [`Journal`] (the mode a store is opened with).
//!
//! With a mode other than [`Journal::Off`], every write is appended to the
//! journal's files (`journal/` in the store directory) as a checksummed
//! record with its seq, under the shard lock that orders it, before the call
//! that made it returns; `open` replays the records a crash left beyond the
//! store's recovered cut. See DESIGN.md, "Journal".

use std::time::Duration;

/// How the write-ahead journal protects acknowledged writes
/// ([`Config::journal`](crate::Config::journal)). The default is
/// [`Journal::Off`].
///
/// | mode | a write survives a process crash | a write survives a power cut |
/// |---|---|---|
/// | `Off` | once a flush cycle committed it (within `write_delay` plus one cycle) | after a later `checkpoint` |
/// | `Periodic(d)` | within about `d` (the background write) | within about `d` (the background fdatasync) |
/// | `Process` | on return | after a later `checkpoint`, or within the journal's own syncs |
/// | `Power` | on return | on return |
///
/// `Process` and `Power` use group commit: writers that return at about the
/// same time share one `write` (and, for `Power`, one `fdatasync`). A
/// temporary store ([`Config::temporary`](crate::Config::temporary)) has no
/// files and takes only `Off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Journal {
    /// No journal: a write is in memory until a flush cycle commits it.
    #[default]
    Off,
    /// Records are written and fdatasynced in the background every `d`
    /// (like Redis's `appendfsync everysec`): a crash or a power cut loses
    /// at most about `d` of acknowledged writes. Between 1 ms and 1 hour.
    Periodic(Duration),
    /// Each write is handed to the operating system (written, not synced)
    /// before it returns: no acknowledged write is lost to a crash of the
    /// process.
    Process,
    /// Each write is fdatasynced before it returns: no acknowledged write is
    /// lost to a power cut.
    Power,
}
