//! [`ReadCache`]: each shard's cache of **clean** values, what storage holds
//! for keys that have no dirty entry, so that a hot key read again costs a
//! map lookup instead of a storage read, a checksum and a decode.
//!
//! Invariant (guarded by the shard's mutex, like everything in a shard): a
//! cached value is exactly what storage holds for its key. It holds because
//! storage changes a key only by committing a write that went through
//! [`DirtyMap::insert`](super::DirtyMap::insert) first, and that insert
//! drops the key's cached value under the same lock; and a value read from
//! storage is cached only by the probe that confirmed it under the lock (no
//! dirty entry, the shard's generation unchanged since before the read; see
//! `lookup.rs`). Deadlines are checked at every read, as for any value.
//!
//! Each shard's cache is bounded (`Config::read_cache_bytes` / shards,
//! counting keys, values and a per-entry overhead); past its bound it drops
//! about a quarter of its entries, in the map's order. Above three quarters
//! of its bound (where a shrink leaves it), only one value read in
//! [`ADMIT_WHEN_FULL`] is cached: when the keys read are
//! many more than fit, caching every one costs an insert and a share of a
//! shrink on every read, for a hit rate no better than the cache's share of
//! them (`millpond bench`'s read-heavy workload reads 100,000 keys
//! uniformly through a 1 MiB cache); a hot key is read often enough to get
//! in anyway. Absence is cached too (a key storage does not hold).

use std::collections::HashMap;

use super::dirty::{Key, ENTRY_OVERHEAD};
use crate::lookup::Found;

/// Above three quarters of its bound, one value read in this many is cached.
pub(crate) const ADMIT_WHEN_FULL: u32 = 8;

#[derive(Debug, Default)]
pub(crate) struct ReadCache {
    /// Each key's value and the cache token it is valid under
    /// (`Backend::cache_token`).
    values: HashMap<Key, (Option<Found>, u64)>,
    bytes: usize,
    /// This shard's bound in bytes; 0 turns the cache off.
    budget: usize,
    /// Values not cached since the last one admitted above three quarters.
    passed: u32,
    /// Values cached, for tests.
    #[cfg(test)]
    admitted: u64,
}

fn cost(key: &[u8], found: &Option<Found>) -> usize {
    key.len() + found.as_ref().map_or(0, Found::held_len) + ENTRY_OVERHEAD
}

impl ReadCache {
    pub(crate) fn new(budget: usize) -> ReadCache {
        ReadCache {
            budget,
            ..ReadCache::default()
        }
    }

    /// What storage holds for `key`, if cached under `token`
    /// (`Some(None)`: no record).
    pub(crate) fn get(&self, key: &[u8], token: u64) -> Option<&Option<Found>> {
        if self.values.is_empty() {
            return None;
        }
        match self.values.get(key) {
            Some((found, t)) if *t == token => Some(found),
            _ => None,
        }
    }

    /// Caches what storage holds for `key` (confirmed by the caller under
    /// the shard lock), valid while the cache token is `token`.
    pub(crate) fn put(&mut self, key: &[u8], found: Option<Found>, token: u64) {
        let c = cost(key, &found);
        if self.budget == 0 || c > self.budget / 4 {
            return;
        }
        if self.bytes + c > self.budget / 4 * 3 {
            self.passed += 1;
            if self.passed < ADMIT_WHEN_FULL {
                return;
            }
            self.passed = 0;
        }
        #[cfg(test)]
        {
            self.admitted += 1;
        }
        if let Some((old, _)) = self.values.insert(Box::from(key), (found, token)) {
            self.bytes -= cost(key, &old);
        }
        self.bytes += c;
        if self.bytes > self.budget {
            self.shrink();
        }
    }

    /// Whether this cache holds anything at all (a budget above 0).
    pub(crate) fn is_on(&self) -> bool {
        self.budget > 0
    }

    /// Forgets `key` (it is being written).
    pub(crate) fn invalidate(&mut self, key: &[u8]) {
        if self.values.is_empty() {
            return;
        }
        if let Some((old, _)) = self.values.remove(key) {
            self.bytes -= cost(key, &old);
        }
    }

    /// Drops entries until the cache is at three quarters of its bound.
    fn shrink(&mut self) {
        let target = self.budget / 4 * 3;
        let mut bytes = self.bytes;
        self.values.retain(|k, (v, _)| {
            if bytes <= target {
                return true;
            }
            bytes -= cost(k, v);
            false
        });
        self.bytes = bytes;
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Seq;
    use crate::lookup::Held;

    fn found(len: usize) -> Option<Found> {
        Some(Found {
            held: Held::Bytes(bytes::Bytes::from(vec![7u8; len])),
            deadline: None,
            seq: Seq(1),
        })
    }

    #[test]
    fn stays_within_its_bound_and_forgets_written_keys() {
        let mut c = ReadCache::new(10_000);
        for i in 0..1000u32 {
            c.put(&i.to_be_bytes(), found(100), 0);
            assert!(c.bytes() <= 10_000);
        }
        let total: usize = c.values.iter().map(|(k, (v, _))| cost(k, v)).sum();
        assert_eq!(total, c.bytes());
        // With room:
        let mut c = ReadCache::new(10_000);
        c.put(b"k", found(10), 0);
        assert!(c.get(b"k", 0).is_some());
        c.invalidate(b"k");
        assert!(c.get(b"k", 0).is_none());
        c.put(b"absent", None, 0);
        assert!(matches!(c.get(b"absent", 0), Some(None)));
        // A value too large for the cache is not cached.
        c.put(b"big", found(5000), 0);
        assert!(c.get(b"big", 0).is_none());
        let total: usize = c.values.iter().map(|(k, (v, _))| cost(k, v)).sum();
        assert_eq!(total, c.bytes());
    }

    #[test]
    fn a_full_cache_admits_one_value_in_so_many() {
        let mut c = ReadCache::new(10_000);
        let mut i = 0u32;
        while c.bytes() + cost(&i.to_be_bytes(), &found(100)) <= 7_500 {
            c.put(&i.to_be_bytes(), found(100), 0);
            assert!(c.get(&i.to_be_bytes(), 0).is_some(), "room: cached");
            i += 1;
        }
        let before = c.admitted;
        for j in i..i + 100 * ADMIT_WHEN_FULL {
            c.put(&j.to_be_bytes(), found(100), 0);
            assert!(c.bytes() <= 10_000);
        }
        assert_eq!(c.admitted - before, 100);
    }

    #[test]
    fn a_value_answers_only_under_the_token_it_was_cached_with() {
        let mut c = ReadCache::new(10_000);
        c.put(b"k", found(10), 7);
        assert!(c.get(b"k", 7).is_some());
        assert!(c.get(b"k", 8).is_none(), "another token: not trusted");
        c.put(b"k", found(10), 8);
        assert!(c.get(b"k", 8).is_some());
        assert!(c.get(b"k", 7).is_none());
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let mut c = ReadCache::new(0);
        c.put(b"k", found(1), 0);
        assert!(c.get(b"k", 0).is_none());
    }
}
