//! [`Engine::verify`](crate::Engine::verify) and
//! [`Engine::repair`](crate::Engine::repair): a full consistency check of
//! what is stored, and the repairs that never touch live data.
//!
//! Verification holds the cycle lock (no flush cycle runs meanwhile; writers
//! go on into the buffer) and reads every record, every blob, the deadline
//! index, the gc records and the format and state records:
//! - every metadata record decodes and passes its checksum;
//! - every blob a record points at exists, with the length and checksum the
//!   record gives;
//! - every blob is pointed at by a record (else: an orphan);
//! - the deadline index and the records' deadlines agree;
//! - every gc record decodes; the format version is known;
//! - the store digest of the records equals the one in the state record,
//!   and the state is no older than the durable record (and, at the same
//!   seq, has its digest).
//!
//! Repair removes orphan blobs, rewrites the deadline index where it
//! disagrees with the records, and purges expired keys. Corrupt records and
//! records whose blob is missing are reported, never removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::SystemTime;

use crate::buffer::Seq;
use crate::clock::UnixMillis;
use crate::codec::{self, Digest, ValueRef, FORMAT_VERSION};
use crate::error::{DisplayKey, Result};
use crate::shared::Shared;
use crate::storage::{BlobId, Commit, DeadlineOp, MetaOp, SysKey};
use crate::tree::shown_key;

const PAGE: usize = 4096;

/// One inconsistency found by [`Engine::verify`](crate::Engine::verify).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A metadata record that fails its checksum or does not decode.
    CorruptRecord {
        /// The key (a key of the default keyspace as given; a tree's key as
        /// stored: `[0x02, len(name)] ++ name ++ key`).
        key: Vec<u8>,
        /// What the decoder found.
        detail: String,
    },
    /// A record points at a blob that is not in the blob tree.
    MissingBlob {
        /// The key (a key of the default keyspace as given; a tree's key as
        /// stored: `[0x02, len(name)] ++ name ++ key`).
        key: Vec<u8>,
        /// The blob id.
        blob: u64,
    },
    /// A blob whose length or checksum differs from its record's.
    CorruptBlob {
        /// The key (a key of the default keyspace as given; a tree's key as
        /// stored: `[0x02, len(name)] ++ name ++ key`).
        key: Vec<u8>,
        /// The blob id.
        blob: u64,
        /// What differs.
        detail: String,
    },
    /// A blob no record points at.
    OrphanBlob {
        /// The blob id.
        blob: u64,
        /// Its length.
        len: u64,
    },
    /// The deadline index disagrees with a record's deadline (`index` and
    /// `record` in milliseconds since the Unix epoch; `None`: absent).
    DeadlineMismatch {
        /// The key (a key of the default keyspace as given; a tree's key as
        /// stored: `[0x02, len(name)] ++ name ++ key`).
        key: Vec<u8>,
        /// What the deadline index holds.
        index: Option<u64>,
        /// What the record holds.
        record: Option<u64>,
    },
    /// A gc record that does not decode (the blobs it lists are unknown).
    CorruptGcRecord {
        /// Its id.
        id: u64,
    },
    /// The records differ from what the committed state says they are (a
    /// record lost, added or rolled back without its state record).
    DigestMismatch {
        /// The digest the state record holds.
        expected: String,
        /// The digest of the records found.
        found: String,
    },
    /// The store is older than its last durable point.
    RolledBack {
        /// Every write up to this seq was made durable.
        durable_seq: u64,
        /// The store holds writes up to this seq.
        found_seq: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptRecord { key, detail } => {
                write!(f, "corrupt record {}: {detail}", DisplayKey(key))
            }
            Problem::MissingBlob { key, blob } => {
                write!(
                    f,
                    "record {} points at blob {blob}, which is missing",
                    DisplayKey(key)
                )
            }
            Problem::CorruptBlob { key, blob, detail } => {
                write!(f, "blob {blob} of {} is corrupt: {detail}", DisplayKey(key))
            }
            Problem::OrphanBlob { blob, len } => {
                write!(f, "blob {blob} ({len} bytes) belongs to no record")
            }
            Problem::DeadlineMismatch { key, index, record } => write!(
                f,
                "deadline index of {} says {index:?}, its record {record:?}",
                DisplayKey(key)
            ),
            Problem::CorruptGcRecord { id } => write!(f, "gc record {id} does not decode"),
            Problem::DigestMismatch { expected, found } => write!(
                f,
                "the records do not match the committed state: it says {expected}, \
                 the records give {found}"
            ),
            Problem::RolledBack {
                durable_seq,
                found_seq,
            } => write!(
                f,
                "the store holds writes up to seq {found_seq}, older than its last durable \
                 point (seq {durable_seq})"
            ),
        }
    }
}

/// What [`Engine::verify`](crate::Engine::verify) found (and, from
/// [`Engine::repair`](crate::Engine::repair), what it fixed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The store's format version.
    pub format_version: u32,
    /// Stored metadata records (one per stored key).
    pub records: u64,
    /// Of those, records of named trees ([`Engine::tree`](crate::Engine::tree)).
    pub tree_records: u64,
    /// Of those, values stored inline in the record.
    pub inline_values: u64,
    /// Bytes of keys and records in the metadata tree.
    pub metadata_bytes: u64,
    /// Blobs in the blob tree.
    pub blobs: u64,
    /// Bytes of blobs, as stored (compressed values at their compressed
    /// length).
    pub blob_bytes: u64,
    /// Stored records with a deadline.
    pub ttl_records: u64,
    /// Of those, already expired (waiting for the purger).
    pub expired_records: u64,
    /// The soonest deadline of a stored record still live.
    pub soonest_deadline: Option<SystemTime>,
    /// Every inconsistency found.
    pub problems: Vec<Problem>,
    /// Problems fixed and expired keys purged (by `repair`).
    pub repaired: u64,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Shared {
    /// The checks; with `repair`, also the fixes that need the cycle lock
    /// (orphans, deadline index).
    pub(crate) fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let storage = self.storage()?;
        let _cycle = self.cycle_lock.lock();
        let now = self.now();
        let mut r = VerifyReport {
            format_version: match storage.get_sys(SysKey::Format)? {
                Some(raw) => codec::decode_format(&raw)?.version,
                None => FORMAT_VERSION,
            },
            ..VerifyReport::default()
        };

        // Records, and the blobs they point at.
        let mut digest = Digest::default();
        let mut referenced: HashSet<BlobId> = HashSet::new();
        let mut deadlines: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let page = storage.scan_meta(&from, PAGE)?;
            let full = page.len() == PAGE;
            for (key, raw) in &page {
                r.records += 1;
                if key.first() == Some(&crate::tree::TREE_TAG) {
                    r.tree_records += 1;
                }
                r.metadata_bytes += (key.len() + raw.len()) as u64;
                digest.add(key, raw);
                let rec = match codec::decode_meta(key, raw) {
                    Ok(rec) => rec,
                    Err(e) => {
                        r.problems.push(Problem::CorruptRecord {
                            key: shown_key(key).to_vec(),
                            detail: e.to_string(),
                        });
                        continue;
                    }
                };
                if let Some(d) = rec.deadline {
                    r.ttl_records += 1;
                    deadlines.insert(key.to_vec(), d);
                    if UnixMillis(d) <= now {
                        r.expired_records += 1;
                    } else {
                        let t = UnixMillis(d).to_system_time();
                        r.soonest_deadline = Some(r.soonest_deadline.map_or(t, |s| s.min(t)));
                    }
                }
                match rec.value {
                    ValueRef::Inline(_) => r.inline_values += 1,
                    ValueRef::Blob(b) => {
                        referenced.insert(b.id);
                        match storage.get_blob(b.id)? {
                            None => r.problems.push(Problem::MissingBlob {
                                key: shown_key(key).to_vec(),
                                blob: b.id,
                            }),
                            Some(v) => {
                                if let Err(e) = b.value(key, v) {
                                    r.problems.push(Problem::CorruptBlob {
                                        key: shown_key(key).to_vec(),
                                        blob: b.id,
                                        detail: e.to_string(),
                                    });
                                }
                            }
                        }
                    }
                }
            }
            match page.last() {
                Some((last, _)) if full => {
                    from = last.to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }

        // Every blob, for orphans.
        let mut orphans = Vec::new();
        let mut next: BlobId = 0;
        loop {
            let page = storage.scan_blobs(next, PAGE)?;
            let full = page.len() == PAGE;
            for (id, v) in &page {
                r.blobs += 1;
                r.blob_bytes += v.len() as u64;
                if !referenced.contains(id) {
                    orphans.push(*id);
                    r.problems.push(Problem::OrphanBlob {
                        blob: *id,
                        len: v.len() as u64,
                    });
                }
            }
            match page.last() {
                Some((id, _)) if full => next = id + 1,
                _ => break,
            }
        }

        // The deadline index against the records.
        let mut index: HashMap<Vec<u8>, Option<u64>> = HashMap::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let page = storage.scan_deadlines(&from, PAGE)?;
            let full = page.len() == PAGE;
            for (key, raw) in &page {
                index.insert(key.to_vec(), codec::decode_deadline(key, raw).ok());
            }
            match page.last() {
                Some((last, _)) if full => {
                    from = last.to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let mut fixes = Vec::new();
        for (key, &d) in &deadlines {
            let in_index = index.remove(key);
            if in_index != Some(Some(d)) {
                r.problems.push(Problem::DeadlineMismatch {
                    key: shown_key(key).to_vec(),
                    index: in_index.flatten(),
                    record: Some(d),
                });
                fixes.push((key.clone(), Some(d)));
            }
        }
        for (key, d) in index {
            r.problems.push(Problem::DeadlineMismatch {
                key: shown_key(&key).to_vec(),
                index: d,
                record: None,
            });
            fixes.push((key, None));
        }

        for id in storage.gc_ids()? {
            if let Some(raw) = storage.get_sys(SysKey::Gc(id))? {
                if codec::decode_gc(&raw).is_err() {
                    r.problems.push(Problem::CorruptGcRecord { id });
                }
            }
        }

        // The records against the committed state, the state against the
        // last durable point.
        let state = match storage.get_sys(SysKey::State)? {
            Some(raw) => Some(codec::decode_state(&raw)?),
            None => None,
        };
        let (state_seq, state_digest) =
            state.map_or((0, Some(Digest::default())), |s| (s.last_seq, s.digest));
        // A store shared by many engines: the sum of their state records.
        let lanes = storage.store_digest()?;
        if let Some(expected) = lanes.or(state_digest) {
            if expected != digest {
                r.problems.push(Problem::DigestMismatch {
                    expected: expected.to_string(),
                    found: digest.to_string(),
                });
            }
        }
        if let Some(d) = self.keeper.durable() {
            if state_seq < d.seq {
                r.problems.push(Problem::RolledBack {
                    durable_seq: d.seq,
                    found_seq: state_seq,
                });
            } else if lanes.is_none()
                && state_seq == d.seq
                && Some(d.digest) != state_digest
                && d.digest != digest
            {
                // (Reported once when the state record agrees with it.)
                r.problems.push(Problem::DigestMismatch {
                    expected: d.digest.to_string(),
                    found: digest.to_string(),
                });
            }
        }

        if repair {
            if !orphans.is_empty() {
                storage.remove_blobs(&orphans)?;
                r.repaired += orphans.len() as u64;
            }
            if !fixes.is_empty() {
                // A key written since the scan is left alone: its next flush
                // writes its deadline entry.
                let mut ops = Vec::new();
                for (key, d) in &fixes {
                    let shard = self.buffer.lock(self.buffer.shard_of(key));
                    if shard.get(key).is_some() {
                        continue;
                    }
                    drop(shard);
                    let deadline = match d {
                        Some(d) => DeadlineOp::Set(codec::encode_deadline(*d)?),
                        None => DeadlineOp::Clear,
                    };
                    // Rewrite the record itself unchanged, with its index
                    // entry, in one atomic commit.
                    match storage.get_meta(key)? {
                        Some(raw) => ops.push(MetaOp::Put {
                            key: key.clone().into_boxed_slice(),
                            record: raw.to_vec(),
                            deadline,
                        }),
                        None => ops.push(MetaOp::Remove {
                            key: key.clone().into_boxed_slice(),
                            deadline,
                        }),
                    }
                }
                r.repaired += ops.len() as u64;
                storage.commit(Commit {
                    ops,
                    ..Commit::default()
                })?;
            }
            // Records are rewritten unchanged, so the digest stands; the
            // durable point is the state's.
            drop(storage);
            let rolled_back = r
                .problems
                .iter()
                .any(|p| matches!(p, Problem::RolledBack { .. }));
            if let (Some(d), false) = (state_digest, rolled_back) {
                self.keeper.sync(Seq(state_seq), d)?;
            }
        }
        Ok(r)
    }
}
