//! What every store command shares: opening a store (and refusing what is
//! not one), the text form of keys and values, durations on the command line.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use millpond::{Config, Engine};

/// How keys and values are written on the command line and printed.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Encoding {
    /// Keys and values on the command line, and in the output, are hex
    /// (`6b6579` for `key`) instead of text with `\xNN` escapes.
    #[arg(long, global = true)]
    pub hex: bool,
}

impl Encoding {
    /// Bytes from a command-line argument: hex, or text in which `\xNN` and
    /// `\\` are escapes (so any byte string can be given).
    pub fn parse(&self, arg: &str) -> Result<Vec<u8>> {
        if self.hex {
            return parse_hex(arg);
        }
        let bytes = arg.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1)) {
                (b'\\', Some(b'\\')) => {
                    out.push(b'\\');
                    i += 2;
                }
                (b'\\', Some(b'x')) => {
                    let hex = arg
                        .get(i + 2..i + 4)
                        .ok_or_else(|| anyhow!("{arg:?}: \\x needs two hex digits"))?;
                    out.extend(parse_hex(hex)?);
                    i += 4;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        Ok(out)
    }

    /// The printable form of `bytes`: hex, or text with every byte that is
    /// not printable ASCII (and `\`) escaped as `\xNN` / `\\`. `parse` reads
    /// it back.
    pub fn show(&self, bytes: &[u8]) -> String {
        let mut s = String::with_capacity(bytes.len());
        for &b in bytes {
            if self.hex {
                let _ = write!(s, "{b:02x}");
            } else if b == b'\\' {
                s.push_str("\\\\");
            } else if b.is_ascii_graphic() || b == b' ' {
                s.push(char::from(b));
            } else {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
        s
    }
}

/// Bytes from hex digits (two per byte, either case). Anything else - a
/// sign, a space, a non-ASCII character - is an error, never a panic.
fn parse_hex(s: &str) -> Result<Vec<u8>> {
    if let Some(bad) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        bail!("{s:?} is not hex: {bad:?} is not a hex digit");
    }
    if !s.len().is_multiple_of(2) {
        bail!("{s:?} is not hex: odd number of digits");
    }
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
            .ok_or_else(|| anyhow!("{s:?} is not hex"))
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// A duration such as `500ms`, `30s`, `10m`, `2h`, `7d` (a bare number is
/// seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a duration (examples: 500ms, 30s, 10m, 2h, 7d)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => bail!("{s:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow!("{s:?} is out of range"))
}

/// Whether a store may be created where none exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Only an existing store is opened.
    No,
    /// A missing or empty directory becomes a new store.
    Yes,
}

/// Opens the store in `dir`. Without `Create::Yes`, a missing directory is
/// refused rather than created. Nothing is flushed before `shutdown`.
pub fn open(dir: &Path, create: Create) -> Result<Engine> {
    if create == Create::No && !dir.exists() {
        bail!("there is no store at {}", dir.display());
    }
    if create == Create::No && dir.is_dir() && std::fs::read_dir(dir)?.next().is_none() {
        bail!("{} is an empty directory, not a store", dir.display());
    }
    Engine::open(Config::new(dir).write_delay(Duration::from_secs(3600)))
        .with_context(|| format!("cannot open the store at {}", dir.display()))
}

/// Opens an existing store even if it came back older than its last
/// durable point (`Config::accept_data_loss`): its state becomes the new
/// baseline.
pub fn open_accepting_loss(dir: &Path) -> Result<Engine> {
    if !dir.is_dir() {
        bail!("there is no store at {}", dir.display());
    }
    Engine::open(
        Config::new(dir)
            .write_delay(Duration::from_secs(3600))
            .accept_data_loss(true),
    )
    .with_context(|| format!("cannot open the store at {}", dir.display()))
}

/// A quoted JSON string of `s` (which `show` made printable ASCII, so only
/// `"` and `\` need escaping).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bytes in a directory tree (allocated size of its files).
pub fn size_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += size_on_disk(&e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// `1.5 MiB` etc.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_hex_round_trip_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        for hex in [false, true] {
            let e = Encoding { hex };
            assert_eq!(e.parse(&e.show(&all)).unwrap(), all);
        }
        let text = Encoding { hex: false };
        assert_eq!(text.show(b"user:1 ok"), "user:1 ok");
        assert_eq!(text.show(b"a\x00\\"), "a\\x00\\\\");
        assert!(text.parse("\\x0").is_err());
        assert!(Encoding { hex: true }.parse("abc").is_err());
    }

    #[test]
    fn bad_hex_is_an_error_not_a_panic() {
        let hex = Encoding { hex: true };
        assert_eq!(hex.parse("00fFa5").unwrap(), [0x00, 0xff, 0xa5]);
        assert_eq!(hex.parse("").unwrap(), b"");
        // Non-ASCII characters: byte offsets that are not char boundaries.
        for bad in [
            "a\u{e9}0",
            "\u{e9}",
            "0\u{e9}",
            "\u{1f600}00",
            "0\u{1f600}0",
        ] {
            let err = hex.parse(bad).unwrap_err().to_string();
            assert!(err.contains("is not hex"), "{bad:?}: {err}");
        }
        // A sign is not a digit (`u8::from_str_radix` would take "+f").
        for bad in ["+f", "-1", " 1", "0x", "abc"] {
            assert!(hex.parse(bad).is_err(), "{bad:?}");
        }
        let text = Encoding { hex: false };
        for bad in ["\\x+f", "\\x\u{e9}", "a\\x\u{e9}0", "\\x0\u{e9}"] {
            assert!(text.parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(text.parse("\u{e9}\\x41").unwrap(), "\u{e9}A".as_bytes());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_and_json() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(json_string("a\"b\\"), "\"a\\\"b\\\\\"");
    }
}
