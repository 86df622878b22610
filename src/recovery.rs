//! What `open` does to a store before the engine serves it.
//!
//! 1. The format record: a blank store gets one (and is synced); a store
//!    without one, or with a foreign magic, is refused as not a millpond
//!    store; an unknown version is refused as unsupported.
//! 2. The state record: the last committed cut and the next blob id.
//! 3. Orphans of a cycle that never committed: every blob with an id at or
//!    above the committed next blob id is removed.
//! 4. Gc records left by cycles that committed but did not finish removing
//!    the blobs they made unreachable: the blobs are removed, then the record.
//!
//! 5. The expiry index is rebuilt from the stored deadline index
//!    ([`load_deadlines`]).
//!
//! None of this reads user records or values, so open does not scan the
//! store (step 5 reads one small entry per key that has a deadline). Steps 3 and 4 end with a sync, so their effects do not have to be
//! redone after another crash (they are idempotent in any case).

use crate::buffer::{DirtyMap, Seq};
use crate::clock::UnixMillis;
use crate::codec::{self, StateRecord, FORMAT_VERSION, MAGIC};
use crate::error::{Error, Result};
use crate::storage::{Storage, SysKey};

/// What recovery found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recovered {
    /// Sequence number of the last committed write.
    pub last_seq: Seq,
    /// Next blob id to allocate.
    pub next_blob: u64,
    /// Next gc record id to use.
    pub next_gc_id: u64,
    /// Whether the blob tree holds any blob.
    pub blobs_exist: bool,
}

pub(crate) fn recover(storage: &dyn Storage, dir: &std::path::Path) -> Result<Recovered> {
    let created = check_format(storage, dir)?;
    let state = match storage.get_sys(SysKey::State)? {
        Some(raw) => codec::decode_state(&raw)?,
        None => StateRecord::default(),
    };
    let mut changed = storage.remove_blobs_from(state.next_blob)? > 0;

    let gc_ids = storage.gc_ids()?;
    for &id in &gc_ids {
        let Some(raw) = storage.get_sys(SysKey::Gc(id))? else {
            continue;
        };
        match codec::decode_gc(&raw) {
            Ok(gc) => {
                storage.remove_blobs(&gc.blobs)?;
                storage.put_sys(SysKey::Gc(id), None)?;
                changed = true;
            }
            // The blobs it lists cannot be known; leave the record for
            // `verify` to report.
            Err(e) => log::warn!("millpond: unreadable gc record {id} left in place: {e}"),
        }
    }
    if changed || created {
        storage.sync()?;
    }
    Ok(Recovered {
        last_seq: Seq(state.last_seq),
        next_blob: state.next_blob,
        next_gc_id: gc_ids.last().map_or(0, |id| id + 1),
        blobs_exist: !storage.blobs_empty()?,
    })
}

/// Checks (or, on a blank store, writes) the format record. Returns whether
/// the store was created.
fn check_format(storage: &dyn Storage, dir: &std::path::Path) -> Result<bool> {
    match storage.get_sys(SysKey::Format)? {
        Some(raw) => {
            let format = codec::decode_format(&raw)?;
            if format.magic != MAGIC {
                return Err(Error::NotAStore {
                    path: dir.to_path_buf(),
                    reason: "its format record has a foreign marker".into(),
                });
            }
            if format.version != FORMAT_VERSION {
                return Err(Error::UnsupportedFormat {
                    found: format.version,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(false)
        }
        None if storage.is_blank()? => {
            storage.put_sys(SysKey::Format, Some(&codec::encode_format()?))?;
            Ok(true)
        }
        None => Err(Error::NotAStore {
            path: dir.to_path_buf(),
            reason: "it holds a database without a millpond format record".into(),
        }),
    }
}

/// Rebuilds the expiry index from the stored deadline index: one entry per
/// key with a deadline, nothing marked dirty. Reads only keys with a
/// deadline, never values. An unreadable deadline entry falls back to the
/// deadline in the key's metadata record.
pub(crate) fn load_deadlines(storage: &dyn Storage, buffer: &DirtyMap) -> Result<usize> {
    const PAGE: usize = 10_000;
    let mut from: Vec<u8> = Vec::new();
    let mut loaded = 0;
    loop {
        let page = storage.scan_deadlines(&from, PAGE)?;
        let full = page.len() == PAGE;
        for (key, raw) in &page {
            let deadline = match codec::decode_deadline(key, raw) {
                Ok(d) => Some(d),
                Err(e) => {
                    log::warn!("millpond: {e}; using the deadline in its record");
                    match storage.get_meta(key)? {
                        Some(rec) => codec::decode_meta(key, &rec).ok().and_then(|r| r.deadline),
                        None => None,
                    }
                }
            };
            if let Some(d) = deadline {
                buffer.index_stored_deadline(key, UnixMillis(d));
                loaded += 1;
            }
        }
        match page.last() {
            Some((last, _)) if full => {
                // The next key after `last`.
                from = last.to_vec();
                from.push(0);
            }
            _ => return Ok(loaded),
        }
    }
}
