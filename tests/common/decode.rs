//! Checks for the `decode` fuzz target: arbitrary bytes as a stored
//! metadata record, and as damage (flipped bytes, overwritten runs,
//! truncation) applied to a whole store directory.
//!
//! Shared by `tests/fuzz_seeds.rs` and `fuzz/fuzz_targets/decode.rs`; depends
//! only on millpond, std and tempfile. A damaged store may fail to open or
//! return errors; it must never panic and never return a value that was not
//! written to that key.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use millpond::{Config, Engine};

/// Decodes `data` as a metadata record and as every system record; any
/// outcome but a panic is fine. Returns whether it decoded as a metadata
/// record.
pub fn check_record(data: &[u8]) -> bool {
    millpond::testing::decode_system_records(data);
    millpond::testing::decode_record(b"key", data).is_ok()
}

/// The undamaged store every case starts from.
struct Template {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Every value ever written, per key.
    written: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// The value of every key at the last checkpoint (`None`: deleted).
    last: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Files of the store, relative to its directory, sorted.
    files: Vec<PathBuf>,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("template");
        let e = Engine::open(
            Config::new(&path)
                .write_delay(Duration::from_secs(3600))
                .inline_threshold(1024),
        )
        .expect("open");
        let mut written: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
        let mut last: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for round in 0..3u8 {
            for k in 0..24u8 {
                let key = format!("key-{k}").into_bytes();
                let len = if k % 4 == 0 { 3000 } else { 10 + k as usize };
                let value = vec![round * 32 + k; len];
                if k % 5 == 0 {
                    e.set_with_ttl(&key, &value, Duration::from_secs(86_400))
                        .expect("set");
                } else {
                    e.set(&key, &value).expect("set");
                }
                written
                    .entry(key.clone())
                    .or_default()
                    .insert(value.clone());
                last.insert(key, Some(value));
            }
            for k in (round..24).step_by(7) {
                e.delete(format!("key-{k}").as_bytes()).expect("delete");
                last.insert(format!("key-{k}").into_bytes(), None);
            }
            e.checkpoint().expect("checkpoint");
        }
        e.shutdown().expect("shutdown");
        drop(e);
        let mut files = Vec::new();
        collect_files(&path, Path::new(""), &mut files);
        files.sort();
        Template {
            _dir: dir,
            path,
            written,
            last,
            files,
        }
    })
}

fn collect_files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        let rel = rel.join(entry.file_name());
        if entry.path().is_dir() {
            collect_files(root, &rel, out);
        } else {
            out.push(rel);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Applies the damage `data` describes to a copy of the template store,
/// opens it and reads every key. Returns a description of a wrong answer.
///
/// `data` is read in 6-byte steps: `[kind, file, offset (3 bytes, LE), byte]`;
/// kind 0 flips bits (xor `byte`), 1 truncates, 2 overwrites 8 bytes with
/// `byte`.
pub fn check_damaged_store(data: &[u8]) -> Result<(), String> {
    let t = template();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("store");
    copy_dir(&t.path, &path).map_err(|e| e.to_string())?;
    for step in data.chunks(6).take(16) {
        let [kind, file, o0, o1, o2, byte] = match step {
            &[a, b, c, d, e, f] => [a, b, c, d, e, f],
            _ => break,
        };
        if t.files.is_empty() {
            break;
        }
        let file = path.join(&t.files[file as usize % t.files.len()]);
        let Ok(mut bytes) = std::fs::read(&file) else {
            continue;
        };
        let offset = u32::from_le_bytes([o0, o1, o2, 0]) as usize;
        match kind % 3 {
            0 if !bytes.is_empty() => {
                let at = offset % bytes.len();
                bytes[at] ^= byte.max(1);
            }
            1 => bytes.truncate(offset % (bytes.len() + 1)),
            2 if !bytes.is_empty() => {
                let at = offset % bytes.len();
                let end = (at + 8).min(bytes.len());
                bytes[at..end].fill(byte);
            }
            _ => {}
        }
        std::fs::write(&file, &bytes).map_err(|e| e.to_string())?;
    }
    let Ok(e) = Engine::open(Config::new(&path).write_delay(Duration::from_secs(3600))) else {
        return Ok(()); // Refusing a damaged store is a fine answer.
    };
    // Every value read must have been written to its key; and a store that
    // reads without error and verifies clean must be exactly as it was
    // left (anything else is a silent rollback).
    let mut intact = true;
    for (key, values) in &t.written {
        match e.get(key) {
            Ok(Some(v)) => {
                if !values.contains(&v[..]) {
                    return Err(format!(
                        "key {:?} returned {} bytes that were never written to it",
                        String::from_utf8_lossy(key),
                        v.len()
                    ));
                }
                intact &= t.last.get(key).and_then(|l| l.as_deref()) == Some(&v[..]);
            }
            Ok(None) => intact &= t.last.get(key).is_none_or(|l| l.is_none()),
            Err(_) => return Ok(()), // Reported by a read.
        }
    }
    let clean = e.verify().is_ok_and(|r| r.is_clean());
    let _ = e.set(b"after-damage", b"1");
    let _ = e.shutdown();
    if clean && !intact {
        return Err(
            "the store opened at another state and verify found nothing: \
                    a silent rollback"
                .into(),
        );
    }
    Ok(())
}
