//! Versioned, checksummed encoding of everything millpond stores in the
//! metadata tree (serde + postcard).
//!
//! Every record is framed the same way:
//!
//! ```text
//! [tag: u8][postcard body][crc32 (little endian) of tag and body: 4 bytes]
//! ```
//!
//! The tag names the record kind and its version, so a later format can add a
//! kind or a version beside the old one. Decoding never panics: a short
//! record, a checksum mismatch, an unknown tag or a body that does not decode
//! (or leaves bytes over) is an [`Error::Corrupt`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The on-disk format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// First bytes of the format record: marks a directory as a millpond store.
pub(crate) const MAGIC: [u8; 8] = *b"millpond";

/// Record tags (kind and version).
const TAG_META_V1: u8 = 0x01;
const TAG_FORMAT: u8 = 0x10;
const TAG_STATE_V1: u8 = 0x11;
const TAG_GC_V1: u8 = 0x12;
const TAG_DEADLINE_V1: u8 = 0x13;
const TAG_COMMIT_LOG_V1: u8 = 0x14;

const CRC_LEN: usize = 4;

/// Where a stored value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ValueRef<'a> {
    /// Inside the metadata record itself (values up to `inline_threshold`).
    Inline(#[serde(borrow)] &'a [u8]),
    /// In the blob tree, under `id`.
    Blob(BlobRef),
}

/// A pointer from a metadata record to a value in the blob tree, with what is
/// needed to check the value when it is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobRef {
    /// Key of the value in the blob tree. Unique for the life of the store.
    pub id: u64,
    /// Length of the value.
    pub len: u64,
    /// CRC-32 of the value.
    pub crc: u32,
}

impl BlobRef {
    pub(crate) fn for_value(id: u64, value: &[u8]) -> BlobRef {
        BlobRef {
            id,
            len: value.len() as u64,
            crc: crc32fast::hash(value),
        }
    }

    /// Checks a value read from the blob tree against this pointer.
    pub(crate) fn check(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if value.len() as u64 != self.len {
            return Err(Error::corrupt(
                Some(key),
                format!(
                    "blob {} is {} bytes, its record says {}",
                    self.id,
                    value.len(),
                    self.len
                ),
            ));
        }
        if crc32fast::hash(value) != self.crc {
            return Err(Error::corrupt(
                Some(key),
                format!("blob {} fails its checksum", self.id),
            ));
        }
        Ok(())
    }
}

/// The metadata record of one user key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord<'a> {
    /// Sequence number of the write that produced this record.
    pub seq: u64,
    /// Expiry deadline, in milliseconds since the Unix epoch.
    pub deadline: Option<u64>,
    /// The value, inline or by reference.
    #[serde(borrow)]
    pub value: ValueRef<'a>,
}

/// Marks a directory as a millpond store and names its format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FormatRecord {
    pub magic: [u8; 8],
    pub version: u32,
}

/// Engine state committed with every flush cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    /// Highest write sequence number included in the committed state.
    pub last_seq: u64,
    /// Every blob id below this was allocated by a committed cycle (or by an
    /// attempt whose blobs a gc record lists); ids from here up are orphans
    /// of a cycle that never committed.
    pub next_blob: u64,
}

/// Blobs that a committed cycle made unreachable, to be removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GcRecord {
    pub blobs: Vec<u64>,
}

fn frame<T: Serialize>(tag: u8, body: &T) -> Result<Vec<u8>> {
    // postcard fails only on shapes these records do not have, or when its
    // writer fails (a Vec never does); the error is still passed on.
    let mut out = postcard::to_extend(body, vec![tag])
        .map_err(|e| Error::Encode(format!("record does not encode: {e}")))?;
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks frame and checksum; returns the tag and the body.
fn unframe<'a>(key: Option<&[u8]>, raw: &'a [u8]) -> Result<(u8, &'a [u8])> {
    if raw.len() < 1 + CRC_LEN {
        return Err(Error::corrupt(
            key,
            format!("record is {} bytes, too short", raw.len()),
        ));
    }
    let (framed, crc) = raw.split_at(raw.len() - CRC_LEN);
    let mut crc_bytes = [0u8; CRC_LEN];
    crc_bytes.copy_from_slice(crc);
    if crc32fast::hash(framed) != u32::from_le_bytes(crc_bytes) {
        return Err(Error::corrupt(key, "record fails its checksum"));
    }
    Ok((framed[0], &framed[1..]))
}

fn body<'a, T: Deserialize<'a>>(key: Option<&[u8]>, what: &str, bytes: &'a [u8]) -> Result<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(Error::corrupt(
            key,
            format!("{what} has {} trailing bytes", rest.len()),
        )),
        Err(e) => Err(Error::corrupt(key, format!("{what} does not decode: {e}"))),
    }
}

fn expect_tag(key: Option<&[u8]>, what: &str, found: u8, want: u8) -> Result<()> {
    if found == want {
        Ok(())
    } else {
        Err(Error::corrupt(
            key,
            format!("{what} has tag {found:#04x}, expected {want:#04x}"),
        ))
    }
}

pub(crate) fn encode_meta(rec: &MetaRecord<'_>) -> Result<Vec<u8>> {
    frame(TAG_META_V1, rec)
}

/// Decodes the metadata record stored for `key`. Inline values borrow from
/// `raw`.
pub(crate) fn decode_meta<'a>(key: &[u8], raw: &'a [u8]) -> Result<MetaRecord<'a>> {
    let (tag, bytes) = unframe(Some(key), raw)?;
    expect_tag(Some(key), "metadata record", tag, TAG_META_V1)?;
    body(Some(key), "metadata record", bytes)
}

pub(crate) fn encode_format() -> Result<Vec<u8>> {
    frame(
        TAG_FORMAT,
        &FormatRecord {
            magic: MAGIC,
            version: FORMAT_VERSION,
        },
    )
}

pub(crate) fn decode_format(raw: &[u8]) -> Result<FormatRecord> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "format record", tag, TAG_FORMAT)?;
    body(None, "format record", bytes)
}

pub(crate) fn encode_state(state: &StateRecord) -> Result<Vec<u8>> {
    frame(TAG_STATE_V1, state)
}

pub(crate) fn decode_state(raw: &[u8]) -> Result<StateRecord> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "state record", tag, TAG_STATE_V1)?;
    body(None, "state record", bytes)
}

/// A change to a key's deadline index entry, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LoggedDeadline<'a> {
    Keep,
    Set(#[serde(borrow)] &'a [u8]),
    Clear,
}

/// One change to the metadata tree, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LoggedOp<'a> {
    /// A user record and its deadline entry.
    Put {
        key: &'a [u8],
        record: &'a [u8],
        #[serde(borrow)]
        deadline: LoggedDeadline<'a>,
    },
    /// Removal of a user record, and its deadline entry change.
    Remove {
        key: &'a [u8],
        #[serde(borrow)]
        deadline: LoggedDeadline<'a>,
    },
    /// A system record, by its key in the metadata tree, written or removed.
    Sys {
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
}

impl LoggedOp<'_> {
    /// The metadata-tree key this change writes.
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            LoggedOp::Put { key, .. }
            | LoggedOp::Remove { key, .. }
            | LoggedOp::Sys { key, .. } => key,
        }
    }
}

/// A whole commit, written as one record before it is applied: its
/// presence after a crash means the commit happened and must be applied
/// again (see `storage::sled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommitLog<'a> {
    #[serde(borrow)]
    pub ops: Vec<LoggedOp<'a>>,
}

pub(crate) fn encode_commit_log(log: &CommitLog<'_>) -> Result<Vec<u8>> {
    frame(TAG_COMMIT_LOG_V1, log)
}

pub(crate) fn decode_commit_log(raw: &[u8]) -> Result<CommitLog<'_>> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "commit log", tag, TAG_COMMIT_LOG_V1)?;
    body(None, "commit log", bytes)
}

/// The deadline index entry of a key: its deadline, in milliseconds since
/// the Unix epoch (the same as in its metadata record).
pub(crate) fn encode_deadline(deadline: u64) -> Result<Vec<u8>> {
    frame(TAG_DEADLINE_V1, &deadline)
}

pub(crate) fn decode_deadline(key: &[u8], raw: &[u8]) -> Result<u64> {
    let (tag, bytes) = unframe(Some(key), raw)?;
    expect_tag(Some(key), "deadline record", tag, TAG_DEADLINE_V1)?;
    body(Some(key), "deadline record", bytes)
}

pub(crate) fn encode_gc(gc: &GcRecord) -> Result<Vec<u8>> {
    frame(TAG_GC_V1, gc)
}

pub(crate) fn decode_gc(raw: &[u8]) -> Result<GcRecord> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "gc record", tag, TAG_GC_V1)?;
    body(None, "gc record", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode_meta(&MetaRecord {
            seq: 42,
            deadline: Some(1_700_000_000_000),
            value: ValueRef::Inline(b"hello"),
        })
        .unwrap()
    }

    #[test]
    fn meta_round_trips_and_borrows_inline_values() {
        let raw = sample();
        let rec = decode_meta(b"k", &raw).unwrap();
        assert_eq!(rec.seq, 42);
        assert_eq!(rec.deadline, Some(1_700_000_000_000));
        let ValueRef::Inline(v) = rec.value else {
            panic!("expected inline")
        };
        assert_eq!(v, b"hello");
        let offset = v.as_ptr() as usize - raw.as_ptr() as usize;
        assert!(offset > 0 && offset + v.len() < raw.len());

        let blob = BlobRef::for_value(7, b"big value");
        let raw = encode_meta(&MetaRecord {
            seq: 1,
            deadline: None,
            value: ValueRef::Blob(blob),
        })
        .unwrap();
        assert_eq!(decode_meta(b"k", &raw).unwrap().value, ValueRef::Blob(blob));
        blob.check(b"k", b"big value").unwrap();
        assert!(blob.check(b"k", b"big valuf").is_err());
        assert!(blob.check(b"k", b"big").is_err());
    }

    #[test]
    fn every_single_byte_flip_and_truncation_is_detected() {
        let raw = sample();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[i] ^= 1 << bit;
                assert!(matches!(
                    decode_meta(b"k", &bad),
                    Err(Error::Corrupt { .. })
                ));
            }
        }
        for len in 0..raw.len() {
            assert!(decode_meta(b"k", &raw[..len]).is_err());
        }
    }

    #[test]
    fn kinds_are_not_confused() {
        let state = encode_state(&StateRecord {
            last_seq: 1,
            next_blob: 2,
        })
        .unwrap();
        assert!(decode_meta(b"k", &state).is_err());
        assert!(decode_format(&state).is_err());
        assert_eq!(decode_state(&state).unwrap().next_blob, 2);
        let gc = encode_gc(&GcRecord {
            blobs: vec![1, 2, 3],
        })
        .unwrap();
        assert_eq!(decode_gc(&gc).unwrap().blobs, vec![1, 2, 3]);
        let log = CommitLog {
            ops: vec![
                LoggedOp::Put {
                    key: b"k",
                    record: b"r",
                    deadline: LoggedDeadline::Set(b"d"),
                },
                LoggedOp::Remove {
                    key: b"",
                    deadline: LoggedDeadline::Clear,
                },
                LoggedOp::Sys {
                    key: b"\x00state",
                    value: None,
                },
            ],
        };
        let raw = encode_commit_log(&log).unwrap();
        assert_eq!(decode_commit_log(&raw).unwrap(), log);
        assert!(decode_commit_log(&raw[..raw.len() - 1]).is_err());
        let d = encode_deadline(1_700_000_000_123).unwrap();
        assert_eq!(decode_deadline(b"k", &d).unwrap(), 1_700_000_000_123);
        assert!(decode_gc(&d).is_err());
        let f = decode_format(&encode_format().unwrap()).unwrap();
        assert_eq!((f.magic, f.version), (MAGIC, FORMAT_VERSION));
    }
}
