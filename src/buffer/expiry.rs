//! [`ExpiryIndex`]: the keys of one shard that carry an expiry deadline,
//! ordered by deadline.
//!
//! Each shard of the dirty map owns one, guarded by the shard's lock, so
//! keeping it exact costs no extra lock on the write path. It covers every
//! key of the shard whose current value has a deadline, whether that value
//! is dirty in memory or only on disk (the index is rebuilt at open from the
//! stored deadline index, without marking anything dirty).
//!
//! Invariants:
//! - One entry per key: `by_key` and `by_deadline` hold the same
//!   `(key, deadline)` pairs, no key twice (no stale duplicates).
//! - A key is present iff its current value has a deadline; every write to
//!   the key updates its entry under the shard lock.
//!
//! Insert, update and remove are O(log n); finding expired keys is
//! O(log n + k) for k keys.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::clock::UnixMillis;

/// The deadline index of one shard.
#[derive(Debug, Default)]
pub(crate) struct ExpiryIndex {
    by_deadline: BTreeSet<(UnixMillis, Arc<[u8]>)>,
    by_key: HashMap<Arc<[u8]>, UnixMillis>,
}

impl ExpiryIndex {
    /// Sets (`Some`) or clears (`None`) the deadline of `key`. Returns
    /// whether the key had one before.
    pub(crate) fn set(&mut self, key: &[u8], deadline: Option<UnixMillis>) -> bool {
        // The common case on the write path: no deadline before or after.
        if deadline.is_none() && self.by_key.is_empty() {
            return false;
        }
        match deadline {
            None => match self.by_key.remove_entry(key) {
                Some((k, old)) => {
                    self.by_deadline.remove(&(old, k));
                    true
                }
                None => false,
            },
            Some(d) => match self.by_key.get_key_value(key) {
                Some((k, &old)) => {
                    let k = Arc::clone(k);
                    if old != d {
                        self.by_deadline.remove(&(old, Arc::clone(&k)));
                        self.by_deadline.insert((d, Arc::clone(&k)));
                        self.by_key.insert(k, d);
                    }
                    true
                }
                None => {
                    let k: Arc<[u8]> = Arc::from(key);
                    self.by_deadline.insert((d, Arc::clone(&k)));
                    self.by_key.insert(k, d);
                    false
                }
            },
        }
    }

    /// The deadline of `key`, if it has one.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8]) -> Option<UnixMillis> {
        self.by_key.get(key).copied()
    }

    /// Up to `limit` keys whose deadline is at or before `now`, earliest
    /// first. They stay in the index until their entries are changed.
    pub(crate) fn expired(&self, now: UnixMillis, limit: usize) -> Vec<Arc<[u8]>> {
        self.by_deadline
            .iter()
            .take_while(|(d, _)| *d <= now)
            .take(limit)
            .map(|(_, k)| Arc::clone(k))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    #[cfg(test)]
    fn check(&self) {
        assert_eq!(self.by_key.len(), self.by_deadline.len());
        for (d, k) in &self.by_deadline {
            assert_eq!(self.by_key.get(k), Some(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn one_entry_per_key() {
        let mut ix = ExpiryIndex::default();
        assert!(!ix.set(b"a", Some(UnixMillis(10))));
        assert!(ix.set(b"a", Some(UnixMillis(5))));
        assert!(!ix.set(b"b", Some(UnixMillis(7))));
        ix.check();
        assert_eq!(ix.len(), 2);
        let expired = ix.expired(UnixMillis(6), 10);
        assert_eq!(expired, vec![Arc::<[u8]>::from(&b"a"[..])]);
        assert!(ix.set(b"a", None));
        assert!(!ix.set(b"a", None));
        ix.check();
        assert_eq!(ix.get(b"b"), Some(UnixMillis(7)));
        assert_eq!(ix.expired(UnixMillis(100), 10).len(), 1);
    }

    proptest! {
        /// The index agrees with a plain map of key -> deadline after any
        /// sequence of updates.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..16, proptest::option::of(0u64..50)), 0..200), now in 0u64..60) {
            let mut ix = ExpiryIndex::default();
            let mut model: BTreeMap<u8, u64> = BTreeMap::new();
            for (k, d) in ops {
                let had = ix.set(&[k], d.map(UnixMillis));
                prop_assert_eq!(had, model.contains_key(&k));
                match d {
                    Some(d) => { model.insert(k, d); }
                    None => { model.remove(&k); }
                }
                ix.check();
            }
            prop_assert_eq!(ix.len(), model.len());
            let mut want: Vec<(u64, u8)> = model.iter().filter(|(_, d)| **d <= now).map(|(k, d)| (*d, *k)).collect();
            want.sort();
            let got: Vec<u8> = ix.expired(UnixMillis(now), usize::MAX).iter().map(|k| k[0]).collect();
            prop_assert_eq!(got, want.into_iter().map(|(_, k)| k).collect::<Vec<_>>());
        }
    }
}
