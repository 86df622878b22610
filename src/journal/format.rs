//! The journal's on-disk format: segment headers and records.
//!
//! A segment file (`journal/<number as 16 hex digits>.log`) is a 32-byte
//! header followed by records, back to back:
//!
//! | bytes | header field |
//! |---|---|
//! | 0..8 | magic `mpjournl` |
//! | 8..12 | format version (1), little-endian |
//! | 12..20 | segment number (the file's name) |
//! | 20..28 | base: every record in the segment has a seq above it |
//! | 28..32 | CRC-32 of bytes 0..28 |
//!
//! A record is `len: u32, crc: u32, body[len]` (CRC-32 of the body), and a
//! body is `count: u32` then `count` writes, each
//! `seq: u64, flags: u8, [deadline: u64], key_len: u32, key, slot`, where
//! flags bits 0-1 are the slot's kind (0 tombstone, 1 value, 2 blob
//! pointer, 3 pointer to a compressed blob), bit 2 says a deadline follows;
//! a value slot is `len: u32, bytes`, a blob pointer `id: u64, len: u64,
//! crc: u32`, a compressed blob's pointer the same then `compressed: u64`
//! (no build writes kind 2 or 3 now: with a journal, `expire` and `persist`
//! of a stored long value write the value itself; both are read). Every
//! integer is
//! little-endian. A record holds one write, or every write of one
//! transaction: it is applied whole or not at all.
//!
//! Decoding never panics: a short, oversized or mis-checksummed record is
//! the end of what can be read.

use bytes::Bytes;

use crate::buffer::{Seq, Slot};
use crate::clock::UnixMillis;
use crate::codec::BlobRef;

pub(crate) const HEADER_LEN: usize = 32;
const MAGIC: [u8; 8] = *b"mpjournl";
const VERSION: u32 = 1;
/// `len` and `crc` before each record's body.
pub(crate) const FRAME_LEN: usize = 8;
/// Longest record body: what the frame's `u32` length can say. The engine
/// refuses a write or transaction whose record would be longer before it
/// hands out its seqs (`Config::validate` bounds a value, the transaction
/// commit its writes together), so none is ever written.
pub(crate) const MAX_BODY: usize = u32::MAX as usize;

const KIND_TOMBSTONE: u8 = 0;
const KIND_VALUE: u8 = 1;
const KIND_BLOB: u8 = 2;
const KIND_COMPRESSED_BLOB: u8 = 3;
const HAS_DEADLINE: u8 = 4;

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub number: u64,
    pub base: Seq,
}

pub(crate) fn encode_header(h: &SegmentHeader) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&h.number.to_le_bytes());
    out[20..28].copy_from_slice(&h.base.0.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Why a header could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadHeader {
    /// Shorter than a header, or zeros where it should be: a segment file
    /// made (ahead, or cut short by a crash) but never begun.
    Unwritten,
    /// Another format version.
    Version(u32),
    /// Wrong magic or checksum.
    Damaged,
}

pub(crate) fn decode_header(raw: &[u8]) -> Result<SegmentHeader, BadHeader> {
    let head = raw.get(..HEADER_LEN).ok_or(BadHeader::Unwritten)?;
    if head.iter().all(|b| *b == 0) {
        return Err(BadHeader::Unwritten);
    }
    let mut r = Reader::new(head);
    let magic = r.take(8).ok_or(BadHeader::Damaged)?;
    let version = r.u32().ok_or(BadHeader::Damaged)?;
    let number = r.u64().ok_or(BadHeader::Damaged)?;
    let base = r.u64().ok_or(BadHeader::Damaged)?;
    let crc = r.u32().ok_or(BadHeader::Damaged)?;
    if magic != MAGIC || crc != crc32fast::hash(&raw[..28]) {
        return Err(BadHeader::Damaged);
    }
    if version != VERSION {
        return Err(BadHeader::Version(version));
    }
    Ok(SegmentHeader {
        number,
        base: Seq(base),
    })
}

/// One write as a record holds it.
#[derive(Debug, Clone)]
pub(crate) struct JournalWrite {
    pub seq: Seq,
    pub key: Box<[u8]>,
    pub slot: Slot,
    pub deadline: Option<UnixMillis>,
}

/// Appends one record holding `writes` to `out`.
pub(crate) fn append_record<'a>(
    out: &mut Vec<u8>,
    writes: impl ExactSizeIterator<Item = (Seq, &'a [u8], &'a Slot, Option<UnixMillis>)>,
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    put_u32(out, writes.len());
    for (seq, key, slot, deadline) in writes {
        out.extend_from_slice(&seq.0.to_le_bytes());
        let kind = match slot {
            Slot::Tombstone => KIND_TOMBSTONE,
            Slot::Value(_) => KIND_VALUE,
            Slot::Blob(b) if b.compressed.is_some() => KIND_COMPRESSED_BLOB,
            Slot::Blob(_) => KIND_BLOB,
        };
        out.push(kind | if deadline.is_some() { HAS_DEADLINE } else { 0 });
        if let Some(d) = deadline {
            out.extend_from_slice(&d.0.to_le_bytes());
        }
        put_u32(out, key.len());
        out.extend_from_slice(key);
        match slot {
            Slot::Tombstone => {}
            Slot::Value(v) => {
                put_u32(out, v.len());
                out.extend_from_slice(v);
            }
            Slot::Blob(b) => {
                out.extend_from_slice(&b.id.to_le_bytes());
                out.extend_from_slice(&b.len.to_le_bytes());
                out.extend_from_slice(&b.crc.to_le_bytes());
                if let Some(n) = b.compressed {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
    }
    let body_len = out.len() - start - FRAME_LEN;
    let crc = crc32fast::hash(&out[start + FRAME_LEN..]);
    // At most `MAX_BODY`: the engine refuses longer records before their
    // seqs are handed out; a longer one could not be framed (and would read
    // back as a torn record).
    debug_assert!(body_len <= MAX_BODY, "a journal record past its frame");
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// What is at an offset of a segment's record area.
#[derive(Debug)]
pub(crate) enum Next {
    /// A whole record, and the offset after it.
    Record(Vec<JournalWrite>, usize),
    /// Nothing more: the data ends here, or only zeros follow (the rest of
    /// a segment's preallocated space).
    End,
    /// Bytes that are not a whole, valid record: a torn write or damage.
    Bad(&'static str),
}

/// Reads the record at `at` in `data` (a whole segment file, header
/// included, shared so that values are slices of it, not copies).
pub(crate) fn read_record(data: &Bytes, at: usize) -> Next {
    let Some(rest) = data.get(at..) else {
        return Next::Bad("offset past the end");
    };
    if rest.is_empty() {
        return Next::End;
    }
    let mut r = Reader::new(rest);
    let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
        return Next::Bad("a record's frame is cut short");
    };
    let len = len as usize;
    if len == 0 && crc == 0 {
        // Zeros where a frame should be: the end of what was written, if
        // only zeros follow (the segment's preallocated space); otherwise a
        // write whose first page never reached the device.
        return if rest.iter().all(|b| *b == 0) {
            Next::End
        } else {
            Next::Bad("zeros where a record should begin")
        };
    }
    let Some(body) = r.take(len) else {
        return Next::Bad("a record is cut short");
    };
    if crc32fast::hash(body) != crc {
        return Next::Bad("a record's checksum does not match");
    }
    let body_at = at + FRAME_LEN;
    match decode_body(data, body_at, body) {
        Some(writes) => Next::Record(writes, body_at + len),
        None => Next::Bad("a record's body does not decode"),
    }
}

fn decode_body(data: &Bytes, body_at: usize, body: &[u8]) -> Option<Vec<JournalWrite>> {
    let mut r = Reader::new(body);
    let count = r.u32()? as usize;
    // Each write takes at least 13 bytes: a count past that is damage.
    if count == 0 || count > body.len() / 13 {
        return None;
    }
    let mut writes = Vec::with_capacity(count);
    for _ in 0..count {
        let seq = Seq(r.u64()?);
        let flags = r.u8()?;
        if flags & !(HAS_DEADLINE | 3) != 0 {
            return None;
        }
        let deadline = if flags & HAS_DEADLINE != 0 {
            Some(UnixMillis(r.u64()?))
        } else {
            None
        };
        let key_len = r.u32()? as usize;
        let key = Box::from(r.take(key_len)?);
        let slot = match flags & 3 {
            KIND_TOMBSTONE => Slot::Tombstone,
            KIND_VALUE => {
                let len = r.u32()? as usize;
                let from = body_at + r.at;
                r.take(len)?;
                Slot::Value(data.slice(from..from + len))
            }
            kind => Slot::Blob(BlobRef {
                id: r.u64()?,
                len: r.u64()?,
                crc: r.u32()?,
                compressed: if kind == KIND_COMPRESSED_BLOB {
                    Some(r.u64()?)
                } else {
                    None
                },
            }),
        };
        writes.push(JournalWrite {
            seq,
            key,
            slot,
            deadline,
        });
    }
    if r.at != body.len() {
        return None;
    }
    Some(writes)
}

/// Bounds-checked little-endian reads.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.data.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(Seq, Vec<u8>, Slot, Option<UnixMillis>)> {
        vec![
            (
                Seq(7),
                b"k1".to_vec(),
                Slot::Value(Bytes::from_static(b"v")),
                None,
            ),
            (Seq(9), b"k2".to_vec(), Slot::Tombstone, Some(UnixMillis(5))),
            (
                Seq(12),
                vec![],
                Slot::Blob(BlobRef {
                    id: 3,
                    len: 4,
                    crc: 5,
                    compressed: None,
                }),
                Some(UnixMillis(u64::MAX)),
            ),
            (
                Seq(13),
                b"k3".to_vec(),
                Slot::Blob(BlobRef {
                    id: 4,
                    len: 9000,
                    crc: 6,
                    compressed: Some(3000),
                }),
                None,
            ),
        ]
    }

    fn encode(writes: &[(Seq, Vec<u8>, Slot, Option<UnixMillis>)]) -> Vec<u8> {
        let mut out = Vec::new();
        append_record(
            &mut out,
            writes.iter().map(|(s, k, v, d)| (*s, k.as_slice(), v, *d)),
        );
        out
    }

    #[test]
    fn a_record_round_trips() {
        let writes = sample();
        let mut data = encode(&writes);
        data.extend(encode(&writes[..1]));
        let data = Bytes::from(data);
        let Next::Record(read, next) = read_record(&data, 0) else {
            panic!("not a record");
        };
        assert_eq!(read.len(), writes.len());
        for (w, (seq, key, slot, deadline)) in read.iter().zip(&writes) {
            assert_eq!(w.seq, *seq);
            assert_eq!(&*w.key, key.as_slice());
            assert_eq!(w.deadline, *deadline);
            assert_eq!(format!("{:?}", w.slot), format!("{slot:?}"));
        }
        let Next::Record(one, end) = read_record(&data, next) else {
            panic!("not a record");
        };
        assert_eq!(one.len(), 1);
        assert!(matches!(read_record(&data, end), Next::End));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_bad_never_a_panic() {
        let data = encode(&sample());
        for cut in 1..data.len() {
            let d = Bytes::copy_from_slice(&data[..cut]);
            assert!(matches!(read_record(&d, 0), Next::Bad(_)), "cut at {cut}");
        }
        for byte in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[byte] ^= 1 << bit;
                let d = Bytes::from(d);
                assert!(
                    matches!(read_record(&d, 0), Next::Bad(_)),
                    "flip {byte}:{bit}"
                );
            }
        }
        let zeros = Bytes::from(vec![0u8; 64]);
        assert!(matches!(read_record(&zeros, 0), Next::End));
        let mut holed = vec![0u8; 64];
        holed.extend(&data);
        let holed = Bytes::from(holed);
        assert!(matches!(read_record(&holed, 0), Next::Bad(_)));
        // A record followed by zeros: the record, then the end.
        let mut padded = data.clone();
        padded.extend([0u8; 100]);
        let padded = Bytes::from(padded);
        let Next::Record(_, next) = read_record(&padded, 0) else {
            panic!("not a record");
        };
        assert!(matches!(read_record(&padded, next), Next::End));
    }

    #[test]
    fn headers_round_trip_and_damage_is_told_apart() {
        let h = SegmentHeader {
            number: 42,
            base: Seq(1000),
        };
        let raw = encode_header(&h);
        assert_eq!(decode_header(&raw), Ok(h));
        assert_eq!(decode_header(&raw[..10]), Err(BadHeader::Unwritten));
        assert_eq!(decode_header(&[0u8; 64]), Err(BadHeader::Unwritten));
        let mut flipped = raw;
        flipped[21] ^= 1;
        assert_eq!(decode_header(&flipped), Err(BadHeader::Damaged));
        let mut v2 = raw;
        v2[8] = 2;
        let crc = crc32fast::hash(&v2[..28]);
        v2[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&v2), Err(BadHeader::Version(2)));
    }
}
