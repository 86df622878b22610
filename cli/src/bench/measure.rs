//! What a run measures about itself: per-op latencies, the bytes the process
//! sent to the block device (`/proc/self/io`), its peak resident set
//! (`/proc/self/status`), and the size of a store on disk.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Per-op latencies of one thread (or of a whole run, once merged), in
/// nanoseconds. Kept exactly (one `u32` per op; an op longer than ~4.3 s is
/// clamped), sorted once at the end.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    nanos: Vec<u32>,
    sorted: bool,
}

impl Latencies {
    /// With room for `n` ops, so that recording does not reallocate.
    pub fn with_capacity(n: usize) -> Latencies {
        Latencies {
            nanos: Vec::with_capacity(n),
            sorted: true,
        }
    }

    /// Records the time since `started` as one op.
    #[inline]
    pub fn record_since(&mut self, started: Instant) {
        let ns = started.elapsed().as_nanos();
        self.record_nanos(u32::try_from(ns).unwrap_or(u32::MAX));
    }

    /// Records one op of `ns` nanoseconds.
    #[inline]
    pub fn record_nanos(&mut self, ns: u32) {
        self.nanos.push(ns);
        self.sorted = false;
    }

    /// Adds another thread's ops.
    pub fn merge(&mut self, other: Latencies) {
        if self.nanos.is_empty() {
            *self = other;
        } else {
            self.nanos.extend_from_slice(&other.nanos);
            self.sorted = false;
        }
    }

    /// Ops recorded.
    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `q`-quantile (0 < q <= 1) by the nearest-rank method: the
    /// smallest recorded value with at least `q` of all values at or below
    /// it. 0 when nothing was recorded.
    pub fn quantile(&mut self, q: f64) -> u32 {
        self.sort();
        let n = self.nanos.len();
        if n == 0 {
            return 0;
        }
        let rank = (q * n as f64).ceil() as usize;
        self.nanos[rank.clamp(1, n) - 1]
    }

    /// The mean (0 when empty).
    pub fn mean(&self) -> u32 {
        if self.nanos.is_empty() {
            return 0;
        }
        let sum: u64 = self.nanos.iter().map(|&n| u64::from(n)).sum();
        u32::try_from(sum / self.nanos.len() as u64).unwrap_or(u32::MAX)
    }

    /// The largest recorded value (0 when empty).
    pub fn max(&mut self) -> u32 {
        self.sort();
        self.nanos.last().copied().unwrap_or(0)
    }
}

/// The process's I/O counters that matter here, from `/proc/self/io`
/// (summed over all its threads, live and exited).
#[derive(Debug, Clone, Copy, Default)]
pub struct IoCounters {
    /// Bytes this process caused to be sent to the storage layer (counted
    /// when a page is dirtied).
    pub write_bytes: u64,
    /// Of those, bytes whose write was cancelled (truncated or deleted
    /// before writeback).
    pub cancelled_write_bytes: u64,
}

impl IoCounters {
    /// Reads `/proc/self/io`.
    pub fn read() -> Result<IoCounters> {
        let text = fs::read_to_string("/proc/self/io")
            .context("reading /proc/self/io (needed for bytes written to the device)")?;
        let field = |name: &str| -> Result<u64> {
            proc_field(&text, name)
                .with_context(|| format!("/proc/self/io has no usable `{name}` line"))
        };
        Ok(IoCounters {
            write_bytes: field("write_bytes")?,
            cancelled_write_bytes: field("cancelled_write_bytes")?,
        })
    }
}

/// The value of a `name: number [kB]` line.
fn proc_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Peak resident set size of this process so far, in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> Result<u64> {
    let text = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    match proc_field(&text, "VmHWM") {
        Some(kib) => Ok(kib * 1024),
        None => bail!("/proc/self/status has no VmHWM line"),
    }
}

/// Space the files of a directory tree take on disk: their allocated blocks
/// (like `du`, directories themselves not counted), so sparse or
/// preallocated files count for what they really hold. 0 for a missing
/// path.
pub fn disk_usage(path: &Path) -> io::Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        let mut total = 0;
        for entry in fs::read_dir(path)? {
            total += disk_usage(&entry?.path())?;
        }
        Ok(total)
    } else if meta.is_file() {
        Ok(meta.blocks() * 512)
    } else {
        Ok(0)
    }
}

/// The type of the filesystem `path` is on (`ext4`, `tmpfs`, ...), from
/// `/proc/self/mountinfo`: that of the mount whose mount point is the
/// longest prefix of the path (the last such mount, if one is stacked on
/// another). `None` when it cannot be told.
pub fn filesystem_type(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).ok()?;
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_type_of(&table, &path)
}

/// [`filesystem_type`] of `path` (canonical) in a `mountinfo` table.
fn mount_type_of(table: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in table.lines() {
        // `id parent major:minor root mount-point options [optional...] -
        // type source super-options`
        let Some((fields, rest)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(point), Some(kind)) = (
            fields.split(' ').nth(4),
            rest.split(' ').next().filter(|k| !k.is_empty()),
        ) else {
            continue;
        };
        let point = unescape_mount_path(point);
        if !path.starts_with(&point) {
            continue;
        }
        let depth = Path::new(&point).components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, kind.to_string()));
        }
    }
    best.map(|(_, kind)| kind)
}

/// A path of `mountinfo`, where space, tab, newline and backslash are
/// written as `\` and three octal digits.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a filesystem of this type keeps its files in memory only, where
/// an fsync does not reach a device.
pub fn is_memory_filesystem(kind: &str) -> bool {
    matches!(kind, "tmpfs" | "ramfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut l = Latencies::with_capacity(1000);
        // 1..=1000, recorded out of order.
        for i in (1..=1000u32).rev() {
            l.record_nanos(i);
        }
        assert_eq!(l.len(), 1000);
        assert_eq!(l.quantile(0.5), 500);
        assert_eq!(l.quantile(0.99), 990);
        assert_eq!(l.quantile(0.999), 999);
        assert_eq!(l.quantile(1.0), 1000);
        assert_eq!(l.max(), 1000);
        assert_eq!(l.mean(), 500);
    }

    #[test]
    fn percentiles_of_small_and_merged_sets() {
        let mut empty = Latencies::default();
        assert_eq!(empty.quantile(0.5), 0);
        assert_eq!(empty.max(), 0);

        let mut a = Latencies::default();
        a.record_nanos(10);
        assert_eq!(a.quantile(0.999), 10);

        let mut b = Latencies::default();
        for _ in 0..98 {
            b.record_nanos(1);
        }
        b.record_nanos(1_000);
        a.merge(b);
        // 100 values: 98 ones, 10, 1000.
        assert_eq!(a.quantile(0.5), 1);
        assert_eq!(a.quantile(0.98), 1);
        assert_eq!(a.quantile(0.99), 10);
        assert_eq!(a.quantile(0.999), 1_000);
    }

    #[test]
    fn proc_fields_parse() {
        let io = "rchar: 1\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n";
        assert_eq!(proc_field(io, "write_bytes"), Some(4096));
        assert_eq!(proc_field(io, "cancelled_write_bytes"), Some(0));
        let status = "Name:\tx\nVmHWM:\t  12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(proc_field(status, "VmHWM"), Some(12345));
        assert_eq!(proc_field(status, "VmPeak"), None);
    }

    #[test]
    fn the_filesystem_of_a_path_is_that_of_its_deepest_mount() {
        let table = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw,size=100k
31 22 0:27 / /tmp/a\\040b rw shared:6 - xfs /dev/vdb rw
32 30 0:28 / /tmp rw shared:7 - overlay overlay rw
garbage line
";
        let kind = |p: &str| mount_type_of(table, Path::new(p));
        assert_eq!(kind("/work/x").as_deref(), Some("ext4"));
        assert_eq!(kind("/").as_deref(), Some("ext4"));
        // The later of two mounts on /tmp.
        assert_eq!(kind("/tmp/bench").as_deref(), Some("overlay"));
        assert_eq!(kind("/tmp/a b/c").as_deref(), Some("xfs"));
        // A prefix by components, not by characters.
        assert_eq!(kind("/tmpx").as_deref(), Some("ext4"));
        assert_eq!(mount_type_of("", Path::new("/")), None);
        assert!(is_memory_filesystem("tmpfs"));
        assert!(!is_memory_filesystem("ext4"));
        assert!(filesystem_type(Path::new("/")).is_some());
    }

    #[test]
    fn this_process_can_be_measured() {
        IoCounters::read().unwrap();
        assert!(peak_rss_bytes().unwrap() > 0);
    }
}
