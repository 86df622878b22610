//! The in-memory side of the engine: the [`DirtyMap`] of acknowledged writes
//! not yet persisted, and the [`expiry::ExpiryIndex`] of deadlines and the
//! [`cache::ReadCache`] of clean values each of its shards keeps.

pub(crate) mod cache;
pub(crate) mod dirty;
pub(crate) mod expiry;

pub(crate) use dirty::{DirtyMap, Entry, Frozen, Seq, Slot};
