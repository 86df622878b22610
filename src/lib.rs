//! millpond: an embedded key-value storage engine with a write-behind buffer.
//!
//! Writes land in an in-memory dirty map and return at memory speed; reads see
//! them at once, from any thread. Flusher threads persist the dirty map into
//! [sled](https://docs.rs/sled/0.34.7) in the background, coalescing repeated
//! writes to a key into one, with metadata records and values kept in
//! separate trees. [`Engine::checkpoint`] returns once everything
//! acknowledged before it is durable; [`Engine::shutdown`] (or dropping the
//! last handle) persists everything and closes the store.
//!
//! ```
//! # fn main() -> millpond::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use millpond::{Config, Engine};
//!
//! let engine = Engine::open(Config::new(dir.path().join("store")))?;
//! engine.set(b"session:42", b"{\"user\":\"ada\"}")?;
//! assert_eq!(engine.get(b"session:42")?.unwrap(), b"{\"user\":\"ada\"}");
//!
//! // An atomic read-modify-write.
//! engine.modify(b"visits", |v| {
//!     let n = v.as_deref().map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
//!     *v = Some((n + 1).to_le_bytes().to_vec());
//! })?;
//!
//! // Durable on return.
//! engine.checkpoint()?;
//! engine.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! # What else it does
//!
//! - **Expiry**: [`Engine::set_with_ttl`], [`Engine::expire`],
//!   [`Engine::persist`], [`Engine::ttl`]; an expired key is absent to every
//!   read at once, and a background purger removes it from memory and disk.
//!   Time comes from a [`Clock`] ([`MockClock`] in tests).
//! - **Small verbs**: [`Engine::contains_key`], [`Engine::replace`] (set,
//!   returning the old value), [`Engine::compare_and_swap`],
//!   [`Engine::first`], [`Engine::last`], [`Engine::len`],
//!   [`Engine::is_empty`].
//! - **Transactions**: [`Engine::transaction`] runs a closure over any number
//!   of keys, serializably, retrying it on conflict; a flush never splits
//!   one. [`Engine::try_transaction`] lets the closure abort with its own
//!   error type ([`TransactionError::Abort`]); inside, [`Transaction`] has
//!   `get`, `set`, `delete`, `modify`, typed values and TTLs.
//! - **Iteration**: [`Engine::range`], [`Engine::iter`] and
//!   [`Engine::scan_prefix`] return an [`Iter`]: live keys in order, from
//!   both ends, merged across the buffer and the disk, each page of 256 keys
//!   one point in history; [`Iter::keys`] skips the values.
//! - **Named keyspaces**: [`Engine::tree`] gives a [`Tree`] with the same
//!   verbs over keys of its own, sharing the engine's buffer, flushes and
//!   checkpoints; a transaction spans trees ([`Transaction::tree`]).
//! - **Per-call durability**: [`Engine::set_with`] returns once the write is
//!   [`Durability::Flushed`] (survives a crash) or [`Durability::Synced`]
//!   (survives a power cut); concurrent callers share one cycle and fsync.
//! - **A write-ahead journal**: [`Config::journal`] with
//!   [`Journal::Process`] makes every write survive a crash of the process
//!   on return, [`Journal::Power`] a power cut (concurrent writers share
//!   one `fdatasync`), [`Journal::Periodic`] within a period; the buffer
//!   still coalesces what reaches the store, and `open` replays what a
//!   crash left in the journal.
//! - **Watchers**: [`Engine::watch_prefix`] gives a [`Subscriber`] of
//!   [`Event`]s, told only once a change is flushed or synced: never one a
//!   crash could take back.
//! - **Checking**: [`Engine::verify`] checks every stored record and blob,
//!   and [`Engine::repair`] fixes what it can without touching live data.
//! - **Typed values**: [`Engine::get_as`], [`Engine::set_as`] (postcard).
//! - **Temporary stores**: [`Config::temporary`] keeps a store in memory,
//!   with no files, for tests and scratch state.
//!
//! ```
//! # fn main() -> millpond::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use std::time::Duration;
//! use millpond::{Config, Durability, Engine};
//!
//! let engine = Engine::open(Config::new(dir.path().join("store")))?;
//! let orders = engine.tree("orders")?;
//! let mut paid = orders.watch_prefix(b"", Durability::Flushed)?;
//! orders.set_with(b"o-1", b"paid", Durability::Synced)?; // fsynced on return
//! assert!(orders.compare_and_swap(b"o-1", Some(b"paid"), Some(b"shipped"))?);
//! let first = paid.next_timeout(Duration::from_secs(10)).unwrap();
//! assert_eq!(first.key(), b"o-1");
//! for item in orders.range(b"o-".as_slice()..).rev() {
//!     let (key, value) = item?;
//!     println!("{key:?} = {value:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Size [`Config::max_dirty_bytes`] to about twice the data rewritten within
//! `write_delay`: a flush cycle holds the copy it is writing while new writes
//! go on.
//!
//! # Durability contract
//!
//! - A write acknowledged by `set`, `delete` or `modify` is visible to every
//!   later read at once.
//! - It reaches the store's files (surviving a crash of this process) within
//!   `write_delay` plus one flush cycle.
//! - It survives a power cut once a [`Engine::checkpoint`] started after it
//!   has returned `Ok`, or once [`Engine::shutdown`] has returned `Ok`.
//! - A write made with [`Engine::set_with`] and [`Durability::Flushed`]
//!   survives a crash of the process once the call returns; with
//!   [`Durability::Synced`], a power cut.
//! - With a journal ([`Config::journal`]), a write survives a crash of the
//!   process on return under [`Journal::Process`], a power cut on return
//!   under [`Journal::Power`], and both within about `d` under
//!   [`Journal::Periodic`]`(d)`.
//! - After a crash, the store reopens at one point of the write history, no
//!   older than the last successful checkpoint: never a mix of two flushes,
//!   never a value that was not written.
//!
//! DESIGN.md in the repository states the invariants behind these promises.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod buffer;
mod clock;
mod codec;
mod config;
mod durability;
mod engine;
mod error;
mod flush;
mod iter;
mod journal;
mod lookup;
mod purger;
mod recovery;
mod shared;
mod stats;
mod storage;
mod tree;
mod txn;
mod value;
mod verify;
mod watch;

pub use clock::{Clock, MockClock, SystemClock};
pub use config::{Compression, Config};
pub use durability::Durability;
pub use engine::Engine;
pub use error::{Error, Result};
pub use iter::{Iter, Keys};
pub use journal::Journal;
pub use stats::{Checkpoint, Stats};
pub use tree::Tree;
pub use txn::{Transaction, TransactionError, TransactionTree};
pub use value::Value;
pub use verify::{Problem, VerifyReport};
pub use watch::{Event, Subscriber};

/// Test support, for millpond's own tests and fuzz targets: a fault plan for
/// the storage layer, a simulated crash, and raw record decoding. Only with
/// the `testing` feature; not part of the stable API.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::engine::halt;
    pub use crate::storage::faulty::{Faults, StorageOp};

    /// Decodes `bytes` as every system record (format, state, gc, deadline,
    /// redo log, undo log, durable record, journal segment header, journal
    /// record) and as a compressed blob (after a 4-byte little-endian
    /// length of the value it claims to hold);
    /// returns how many accepted it. Never panics.
    pub fn decode_system_records(bytes: &[u8]) -> usize {
        use crate::codec;
        use crate::journal::format;
        let shared = bytes::Bytes::copy_from_slice(bytes);
        let compressed = bytes.split_first_chunk::<4>().map(|(len, stored)| {
            let blob = codec::BlobRef {
                id: 0,
                len: u64::from(u32::from_le_bytes(*len)),
                crc: 0,
                compressed: Some(stored.len() as u64),
            };
            blob.value(b"key", bytes::Bytes::copy_from_slice(stored))
        });
        [
            codec::decode_format(bytes).is_ok(),
            codec::decode_state(bytes).is_ok(),
            codec::decode_gc(bytes).is_ok(),
            codec::decode_deadline(b"key", bytes).is_ok(),
            codec::decode_commit_log(bytes).is_ok(),
            codec::decode_undo_log(bytes).is_ok(),
            codec::decode_durable(bytes).is_some(),
            format::decode_header(bytes).is_ok(),
            matches!(format::read_record(&shared, 0), format::Next::Record(..)),
            matches!(compressed, Some(Ok(_))),
        ]
        .into_iter()
        .filter(|ok| *ok)
        .count()
    }

    /// Decodes `bytes` as a stored metadata record of `key`; returns the
    /// inline value if it has one. Never panics.
    pub fn decode_record(key: &[u8], bytes: &[u8]) -> crate::Result<Option<Vec<u8>>> {
        crate::codec::decode_meta(key, bytes).map(|r| match r.value {
            crate::codec::ValueRef::Inline(v) => Some(v.to_vec()),
            crate::codec::ValueRef::Blob(_) => None,
        })
    }
}

/// The README's code samples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
