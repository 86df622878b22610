//! [`Shared`]: the state that the engine handles and the flusher threads share.
//!
//! Storage, its health, blob ids and what is durable are not here: they
//! belong to the [`Keeper`], which `Shared` holds and which is their only
//! owner.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use parking_lot::Mutex;

use crate::buffer::DirtyMap;
use crate::config::Config;
use crate::error::Result;
use crate::flush::FlushControl;
use crate::stats::Counters;
use crate::storage::keeper::{Health, Keeper, StorageRef};
use crate::watch::Watchers;

/// Everything the engine's threads share. Owned through an `Arc` by the
/// public handle and by every flusher thread.
pub(crate) struct Shared {
    pub config: Config,
    /// The store directory, made absolute at open (a temporary store's
    /// name, `memory:N`).
    pub dir: PathBuf,
    /// The storage, its health, blob ids and durability.
    pub keeper: Keeper,
    pub buffer: DirtyMap,
    pub counters: Counters,
    pub flush: FlushControl,
    /// The subscribers of `watch_prefix`, told about changes by flush cycles.
    pub watchers: Watchers,
    /// The store's format record says it may hold trees (version 2).
    pub trees_marked: AtomicBool,
    /// Held by the coordinator while a flush cycle runs (and while it
    /// replaces a failed storage), and by `verify` while it reads the
    /// stores: verification never sees half a cycle. Taken before any shard
    /// lock.
    pub cycle_lock: Mutex<()>,
    /// The exclusive lane: held for a whole attempt by transactions that
    /// failed `txn::EXCLUSIVE_AFTER` times. Taken before any shard lock.
    pub txn_lane: Mutex<()>,
    /// Set once by shutdown, before its final flush; read under a shard lock
    /// by every write (see `Engine::shutdown` for why that is enough).
    pub closed: AtomicBool,
}

impl Shared {
    /// The storage backend, or [`crate::Error::Closed`] after shutdown.
    /// Recursive: a caller may hold one while taking another.
    pub(crate) fn storage(&self) -> Result<StorageRef<'_>> {
        self.keeper.storage()
    }

    /// Whether the engine may accept writes (owned by the keeper).
    pub(crate) fn health(&self) -> &Health {
        self.keeper.health()
    }
}
