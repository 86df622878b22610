//! Disk-full trial (issue #12): writes fill a small tmpfs until the engine
//! refuses them; once space is freed, writes are accepted again without
//! reopening, `checkpoint` and `shutdown` succeed, and a reopened store holds
//! every acknowledged write with its last acknowledged value (and nothing
//! that was refused).
//!
//! Needs root to mount the tmpfs; without it (or if the mount fails) the test
//! prints one line saying why and passes. Every wait is bounded generously
//! (a hang guard, not a timing assertion); the time to recover after space
//! is freed is printed, and must be under 30 s (the goal is 10 s).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::Rng;
use millpond::{Config, Engine};

const MIB: usize = 1024 * 1024;
/// The tmpfs, and the ballast that leaves the store a few MiB of it.
const FS_SIZE: usize = 16 * MIB;
const BALLAST: usize = 10 * MIB;
/// Bounds on waiting (hang guards).
const FILL_LIMIT: Duration = Duration::from_secs(120);
const RECOVER_LIMIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a fresh directory, unmounted when dropped (also when
/// the test panics).
struct Tmpfs {
    dir: PathBuf,
    // Dropped after the unmount in `drop`: removes the mount point.
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts it, or says why not (one printed line) and returns `None`.
    fn mount(size: usize) -> Option<Tmpfs> {
        if let Err(why) = is_root() {
            println!("skipping disk-full test: {why} (needed to mount a tmpfs)");
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir, _tmp: tmp }),
            Ok(o) => {
                println!(
                    "skipping disk-full test: mounting a tmpfs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipping disk-full test: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        // Something may still hold a file open after a failure: detach lazily.
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount the tmpfs at {}", self.dir.display());
        }
    }
}

/// Whether the effective user is root (from `/proc/self/status`).
fn is_root() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or("no Uid line in /proc/self/status")?;
    if euid == "0" {
        Ok(())
    } else {
        Err(format!("not running as root (euid {euid})"))
    }
}

fn config(store: &Path) -> Config {
    Config::new(store)
        .write_delay(Duration::from_millis(5))
        // Little buffered data: what is acknowledged but not yet on disk
        // when the disk fills must fit once space is freed.
        .max_dirty_bytes(MIB)
        .inline_threshold(common::BLOB_OVER)
}

/// A value distinct per key: half of them of 1-4 KiB, half of 8-32 KiB
/// (long values, whose blob tree leaves sled would write to files of their
/// own if millpond did not store them in parts: a failed write of one, on
/// this full disk, hung the engine in its flush for good in 3 of 6 runs
/// with this mix, 2 of 5 with values of 8-32 KiB only).
fn value(rng: &mut Rng, key: &[u8]) -> Vec<u8> {
    let len = if rng.below(2) == 0 {
        8 * 1024 + rng.below(24 * 1024) as usize
    } else {
        1024 + rng.below(3 * 1024) as usize
    };
    let mut v = key.to_vec();
    v.extend((v.len()..len).map(|_| rng.next() as u8));
    v
}

/// What one writer thread did: every acknowledged write, and the error that
/// stopped it (`None` if it was told to stop).
struct Written {
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
    refused: Option<(Vec<u8>, String)>,
}

fn writer(e: Engine, t: u64, seed: u64, stop: Arc<AtomicBool>) -> Written {
    let mut rng = Rng::new(seed ^ t);
    let mut acked = BTreeMap::new();
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return Written {
                acked,
                refused: None,
            };
        }
        let key = format!("w{t}-{n:08}").into_bytes();
        let v = value(&mut rng, &key);
        match e.set(&key, &v) {
            Ok(()) => {
                acked.insert(key, v);
            }
            Err(err) => {
                return Written {
                    acked,
                    refused: Some((key, err.to_string())),
                }
            }
        }
    }
    unreachable!()
}

#[test]
fn a_full_disk_that_is_freed_again_loses_nothing() {
    let Some(fs) = Tmpfs::mount(FS_SIZE) else {
        return;
    };
    let seed = common::seed("disk-full");
    let ballast = fs.dir.join("ballast");
    std::fs::write(&ballast, vec![0x5A; BALLAST]).expect("write the ballast");
    let store = fs.dir.join("store");
    let e = Engine::open(config(&store)).expect("open");

    // 1. Fill: two writers until each has a write refused.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for t in 0..2 {
        let (e, stop, tx) = (e.clone(), Arc::clone(&stop), tx.clone());
        std::thread::Builder::new()
            .name(format!("writer-{t}"))
            .spawn(move || {
                let _ = tx.send(writer(e, t, seed, stop));
            })
            .expect("spawn");
    }
    drop(tx);
    let mut acked = BTreeMap::new();
    let mut refused = Vec::new();
    for _ in 0..2 {
        let w = match rx.recv_timeout(FILL_LIMIT.saturating_sub(started.elapsed())) {
            Ok(w) => w,
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                panic!(
                    "writes were neither refused nor stopped within {FILL_LIMIT:?} \
                     (the disk never filled, or a write blocked)"
                );
            }
        };
        acked.extend(w.acked);
        match w.refused {
            Some(r) => refused.push(r),
            None => panic!("a writer stopped without a refusal"),
        }
    }
    let fill_time = started.elapsed();
    let bytes: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "disk full after {fill_time:.1?}: {} writes ({} KiB) acknowledged; refused: {}",
        acked.len(),
        bytes / 1024,
        refused
            .iter()
            .map(|(_, err)| err.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the disk filled"
    );

    // 2. Free the space; writes must be accepted again without a reopen.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let freed = Instant::now();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let v = attempt.to_le_bytes();
        match e.set(b"probe", &v) {
            Ok(()) => {
                acked.insert(b"probe".to_vec(), v.to_vec());
                break;
            }
            Err(err) => assert!(
                freed.elapsed() < RECOVER_LIMIT,
                "no write accepted within {RECOVER_LIMIT:?} of freeing space \
                 ({attempt} attempts); last error: {err}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let recovered_in = freed.elapsed();
    eprintln!("a write was accepted {recovered_in:.2?} after freeing space ({attempt} attempts)");
    // Writes go on being accepted.
    let mut rng = Rng::new(seed ^ 0xF4EE);
    for n in 0..64 {
        let key = format!("after-{n:04}").into_bytes();
        let v = value(&mut rng, &key);
        e.set(&key, &v)
            .unwrap_or_else(|err| panic!("write {n} after recovery was refused: {err}"));
        acked.insert(key, v);
    }

    // 3. Checkpoint and shutdown succeed.
    let cp = e.checkpoint().expect("checkpoint after freeing space");
    eprintln!("checkpoint after recovery: seq {}", cp.seq);
    e.shutdown().expect("shutdown after freeing space");
    drop(e);

    // 4. Reopened (same tmpfs): every acknowledged write with its value,
    // nothing that was refused.
    let e = Engine::open(config(&store)).expect("reopen");
    let (mut missing, mut changed) = (0, 0);
    for (k, v) in &acked {
        match e.get(k).expect("get") {
            None => missing += 1,
            Some(got) if got[..] != v[..] => changed += 1,
            Some(_) => {}
        }
    }
    let listed: Vec<Vec<u8>> = e
        .scan_prefix(b"")
        .map(|item| item.expect("scan").0.to_vec())
        .collect();
    let extra: Vec<_> = listed.iter().filter(|k| !acked.contains_key(*k)).collect();
    let refused_present = refused.iter().filter(|(k, _)| listed.contains(k)).count();
    eprintln!(
        "reopened: {} acknowledged writes, {missing} missing, {changed} changed, \
         {} keys not acknowledged ({refused_present} of them refused writes)",
        acked.len(),
        extra.len()
    );
    assert_eq!(
        (missing, changed),
        (0, 0),
        "acknowledged writes lost after the disk was full and freed"
    );
    assert!(
        extra.is_empty(),
        "keys that were never acknowledged: {:?}",
        extra
            .iter()
            .take(5)
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>()
    );
    e.shutdown().expect("shutdown");
}
