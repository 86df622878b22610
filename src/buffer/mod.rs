//! The in-memory side of the engine: the [`DirtyMap`] of acknowledged writes
//! not yet persisted.

pub(crate) mod dirty;

pub(crate) use dirty::{DirtyMap, Entry, Frozen, Seq, Slot};
