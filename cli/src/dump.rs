//! `dump` and `load`: a streaming, versioned export of a store's live keys,
//! values and deadlines, to move data between versions or machines.
//!
//! # Format, version 1
//!
//! ```text
//! "millpond-dump 1\n"                      the header line
//! frame*                                   one per key, then the end frame
//! frame := [len: u32 LE][body: len bytes][crc32(body): u32 LE]
//! body  := postcard(Frame)
//! Frame := Record { key: bytes, value: bytes, deadline_ms: Option<u64> }
//!        | End { records: u64 }
//! ```
//!
//! `deadline_ms` is the absolute expiry time (milliseconds since the Unix
//! epoch; `u64::MAX` for one too far to count), so a key keeps its deadline
//! across the move; a key whose deadline has passed when it is loaded is
//! skipped. The `End` frame carries the number of records: a dump cut
//! short, or with a damaged frame, is refused rather than loaded in part
//! silently. Keys come in key order. Only the default keyspace is dumped: a
//! store with records in named trees, or marked as one in which trees were
//! opened (format version 2), is refused.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use millpond::{Clock, Engine, SystemClock};
use serde::{Deserialize, Serialize};

use crate::store::{self, Create};

const HEADER: &[u8] = b"millpond-dump 1\n";
/// Longest frame body accepted (a key and a value at their largest, with
/// room to spare).
const MAX_FRAME: u32 = 64 << 20;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Frame {
    Record {
        key: Vec<u8>,
        value: Vec<u8>,
        deadline_ms: Option<u64>,
    },
    End {
        records: u64,
    },
}

/// `millpond dump DIR > file`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// The store directory.
    pub dir: PathBuf,
}

/// `millpond load DIR < file`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The store directory (created if missing; existing keys are
    /// overwritten by the dump's).
    pub dir: PathBuf,
}

fn write_frame(out: &mut impl Write, frame: &Frame) -> Result<()> {
    let body = postcard::to_stdvec(frame).context("encoding a frame")?;
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&body)?;
    out.write_all(&crc32fast::hash(&body).to_le_bytes())?;
    Ok(())
}

/// The next frame; `None` at a clean end of input (only valid after `End`).
fn read_frame(input: &mut impl Read) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        bail!("damaged dump: a frame of {len} bytes");
    }
    let mut body = vec![0; len as usize];
    input
        .read_exact(&mut body)
        .context("the dump is cut short inside a frame")?;
    let mut crc = [0u8; 4];
    input
        .read_exact(&mut crc)
        .context("the dump is cut short inside a frame")?;
    if crc32fast::hash(&body) != u32::from_le_bytes(crc) {
        bail!("damaged dump: a frame fails its checksum");
    }
    Ok(Some(
        postcard::from_bytes(&body).context("damaged dump: a frame does not decode")?,
    ))
}

/// Milliseconds since the Unix epoch on `clock`.
fn now_ms(clock: &dyn Clock) -> u64 {
    clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The absolute deadline of a key with `ttl` left at `now_ms`; a deadline
/// too far to count saturates at the latest one (as the engine's do).
fn deadline_after(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// The time left before `deadline_ms` at `now_ms`; `None` once it has
/// passed (a key is live while the time is before its deadline).
fn time_left(deadline_ms: u64, now_ms: u64) -> Option<Duration> {
    match deadline_ms.checked_sub(now_ms) {
        None | Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    }
}

/// Writes every live key to stdout.
pub fn dump(args: DumpArgs) -> Result<ExitCode> {
    let e = store::open(&args.dir, Create::No)?;
    // The dump format holds only the default keyspace, so an incomplete
    // dump is refused rather than written: a store with records in named
    // trees, or marked as one in which trees were opened (format version 2;
    // versions 3 and 4, a store with values in parts or compressed, may
    // have trees too, and then has their records if they hold anything).
    let report = e.verify()?;
    if report.format_version == 2 || report.tree_records > 0 {
        e.shutdown()?;
        bail!(
            "{} has named trees, which the dump format does not hold yet; refusing \
             to write a dump that would leave them out",
            args.dir.display()
        );
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let records = write_dump(&e, &mut out, &SystemClock)?;
    out.flush()?;
    e.shutdown()?;
    eprintln!("millpond: dumped {records} keys");
    Ok(ExitCode::SUCCESS)
}

/// Writes the header, a frame per live key of `e` and the end frame;
/// deadlines are made absolute with `clock`. Returns the keys written.
fn write_dump(e: &Engine, out: &mut impl Write, clock: &dyn Clock) -> Result<u64> {
    out.write_all(HEADER)?;
    let mut records = 0u64;
    for item in e.scan_prefix(b"") {
        let (key, value) = item?;
        let deadline_ms = e.ttl(&key)?.map(|t| deadline_after(now_ms(clock), t));
        write_frame(
            out,
            &Frame::Record {
                key: key.to_vec(),
                value: value.to_vec(),
                deadline_ms,
            },
        )?;
        records += 1;
    }
    write_frame(out, &Frame::End { records })?;
    Ok(records)
}

/// Reads a dump from stdin into the store; durable when it returns.
pub fn load(args: LoadArgs) -> Result<ExitCode> {
    let stdin = std::io::stdin();
    let mut input = BufReader::new(stdin.lock());
    let mut header = Vec::new();
    input.read_until(b'\n', &mut header)?;
    if header != HEADER {
        if header.starts_with(b"millpond-dump ") {
            bail!(
                "unsupported dump version: {:?} (this build reads version 1)",
                String::from_utf8_lossy(&header).trim()
            );
        }
        bail!("the input is not a millpond dump");
    }
    let e = store::open(&args.dir, Create::Yes)?;
    let (loaded, expired) = load_frames(&e, &mut input, &SystemClock)?;
    e.shutdown()?;
    eprintln!("millpond: loaded {loaded} keys ({expired} already expired, skipped)");
    Ok(ExitCode::SUCCESS)
}

/// Reads the frames after the header into `e`, up to the end frame; a key
/// whose deadline has passed on `clock` is skipped. Returns the keys loaded
/// and the keys skipped.
fn load_frames(e: &Engine, input: &mut impl Read, clock: &dyn Clock) -> Result<(u64, u64)> {
    let (mut loaded, mut expired) = (0u64, 0u64);
    loop {
        match read_frame(input)? {
            None => bail!(
                "the dump is cut short: no end frame after {} keys",
                loaded + expired
            ),
            Some(Frame::End { records }) => {
                if records != loaded + expired {
                    bail!(
                        "damaged dump: it says {records} keys, it held {}",
                        loaded + expired
                    );
                }
                break;
            }
            Some(Frame::Record {
                key,
                value,
                deadline_ms,
            }) => match deadline_ms {
                None => {
                    e.set(&key, &value)?;
                    loaded += 1;
                }
                // One reading of the clock decides both whether the key is
                // still live and how long it has left.
                Some(d) => match time_left(d, now_ms(clock)) {
                    None => expired += 1,
                    Some(left) => {
                        e.set_with_ttl(&key, &value, left)?;
                        loaded += 1;
                    }
                },
            },
        }
    }
    Ok((loaded, expired))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::SystemTime;

    use millpond::{Config, MockClock};

    use super::*;

    /// Some time in 2027, in ms since the Unix epoch.
    const T: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// A clock that moves forward 2 ms every time it is read: time passes
    /// between any two reads, as it may on a real machine.
    #[derive(Debug)]
    struct Ticking(AtomicU64);

    impl Clock for Ticking {
        fn now(&self) -> SystemTime {
            at(self.0.fetch_add(2, Ordering::SeqCst))
        }
    }

    /// An engine in a fresh directory whose clock stands at `T`.
    fn engine() -> (tempfile::TempDir, Engine) {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::new(tmp.path().join("store"))
            .write_delay(Duration::from_secs(3600))
            .clock(Arc::new(MockClock::new(at(T))));
        let e = Engine::open(config).unwrap();
        (tmp, e)
    }

    fn record(key: &[u8], deadline_ms: Option<u64>) -> Frame {
        Frame::Record {
            key: key.to_vec(),
            value: b"v".to_vec(),
            deadline_ms,
        }
    }

    #[test]
    fn a_deadline_passing_while_a_key_is_loaded_never_underflows() {
        let mut dump = Vec::new();
        for frame in [
            // A deadline equal to the time it is read has passed.
            record(b"at-deadline", Some(T)),
            // Live when checked, passed 2 ms later.
            record(b"just-live", Some(T + 3)),
            record(b"passed", Some(T - 5)),
            record(b"long-lived", Some(T + 60_000)),
            record(b"no-deadline", None),
            Frame::End { records: 5 },
        ] {
            write_frame(&mut dump, &frame).unwrap();
        }
        let (_tmp, e) = engine();
        let clock = Ticking(AtomicU64::new(T));
        let (loaded, expired) = load_frames(&e, &mut &dump[..], &clock).unwrap();
        assert_eq!((loaded, expired), (3, 2));
        // Loaded with the time it had left when it was read (at most 3 ms),
        // never with a wrapped-around one.
        let left = e.ttl(b"just-live").unwrap().unwrap();
        assert!(left <= Duration::from_millis(3), "{left:?}");
        assert_eq!(e.get(b"at-deadline").unwrap(), None);
        assert_eq!(e.get(b"passed").unwrap(), None);
        let left = e.ttl(b"long-lived").unwrap().unwrap();
        assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(59),
            "{left:?}"
        );
        assert_eq!(e.ttl(b"no-deadline").unwrap(), None);
        assert!(e.get(b"no-deadline").unwrap().is_some());
    }

    #[test]
    fn deadline_arithmetic_saturates() {
        assert_eq!(deadline_after(T, Duration::from_secs(1)), T + 1000);
        assert_eq!(deadline_after(T, Duration::MAX), u64::MAX);
        assert_eq!(
            deadline_after(u64::MAX - 1, Duration::from_millis(5)),
            u64::MAX
        );
        assert_eq!(time_left(T + 5, T), Some(Duration::from_millis(5)));
        assert_eq!(time_left(T, T), None);
        assert_eq!(time_left(T, T + 1), None);
        assert_eq!(time_left(0, u64::MAX), None);
        assert_eq!(
            time_left(u64::MAX, 0),
            Some(Duration::from_millis(u64::MAX))
        );
    }

    #[test]
    fn a_deadline_too_far_to_count_is_dumped_as_the_latest_one() {
        let (_tmp, e) = engine();
        // The engine saturates this deadline at the end of time.
        e.set_with_ttl(b"forever", b"v", Duration::MAX).unwrap();
        e.set_with_ttl(b"ten-s", b"v", Duration::from_secs(10))
            .unwrap();
        e.set(b"plain", b"v").unwrap();
        // The dump's clock is a little ahead of the engine's.
        let clock = MockClock::new(at(T + 1));
        let mut dump = Vec::new();
        assert_eq!(write_dump(&e, &mut dump, &clock).unwrap(), 3);
        let mut input = &dump[HEADER.len()..];
        let mut deadlines = Vec::new();
        while let Some(Frame::Record {
            key, deadline_ms, ..
        }) = read_frame(&mut input).unwrap()
        {
            deadlines.push((key, deadline_ms));
        }
        assert_eq!(
            deadlines,
            [
                (b"forever".to_vec(), Some(u64::MAX)),
                (b"plain".to_vec(), None),
                (b"ten-s".to_vec(), Some(T + 1 + 10_000)),
            ]
        );
        // Loaded back, the far deadline is still far.
        let (_tmp2, copy) = engine();
        let (loaded, expired) = load_frames(&copy, &mut &dump[HEADER.len()..], &clock).unwrap();
        assert_eq!((loaded, expired), (3, 0));
        assert!(copy.ttl(b"forever").unwrap().unwrap() > Duration::from_secs(1 << 40));
    }

    #[test]
    fn frames_round_trip_and_damage_is_detected() {
        let frames = [
            Frame::Record {
                key: b"k".to_vec(),
                value: vec![0, 1, 2],
                deadline_ms: Some(5),
            },
            Frame::End { records: 1 },
        ];
        let mut buf = Vec::new();
        write_frame(&mut buf, &frames[0]).unwrap();
        let first = buf.len();
        write_frame(&mut buf, &frames[1]).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), frames[0]);
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), frames[1]);
        assert!(read_frame(&mut r).unwrap().is_none());
        let mut bad = buf.clone();
        bad[6] ^= 1;
        assert!(read_frame(&mut &bad[..]).is_err());
        // Cut between frames: the first reads, then a clean end of input.
        let mut r = &buf[..first];
        assert!(read_frame(&mut r).unwrap().is_some());
        assert!(read_frame(&mut r).unwrap().is_none());
        // Cut inside a frame: an error.
        assert!(read_frame(&mut &buf[..first - 2]).is_err());
    }
}
