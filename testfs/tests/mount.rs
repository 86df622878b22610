//! Integration tests through a real FUSE mount. Each test skips (with one
//! printed line) when FUSE is unavailable (no /dev/fuse, or not root).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use common::{dirs, fsync_dir, fsync_file};
use testfs::Tree;

#[test]
fn clean_unmount_persists_the_live_view() {
    let Some(d) = dirs() else { return };
    fs::write(d.backing.join("pre"), b"existing").unwrap();
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    assert_eq!(fs::read(d.mnt.join("pre")).unwrap(), b"existing");
    fs::create_dir_all(d.mnt.join("a/b")).unwrap();
    fs::write(d.mnt.join("a/b/f"), b"hello").unwrap();
    fs::write(d.mnt.join("tmp"), b"renamed").unwrap();
    fs::rename(d.mnt.join("tmp"), d.mnt.join("a/final")).unwrap();
    fs::write(d.mnt.join("gone"), b"x").unwrap();
    fs::remove_file(d.mnt.join("gone")).unwrap();
    fs::remove_file(d.mnt.join("pre")).unwrap();
    let live = Tree::read_from(&d.mnt).unwrap();
    m.unmount().unwrap();
    let on_disk = Tree::read_from(&d.backing).unwrap();
    assert_eq!(on_disk.file("a/b/f"), Some(&b"hello"[..]));
    assert_eq!(on_disk.file("a/final"), Some(&b"renamed"[..]));
    assert!(!on_disk.exists("tmp") && !on_disk.exists("gone") && !on_disk.exists("pre"));
    // Same names and contents as the live view (permissions aside: the
    // backing root keeps its own).
    let strip = |t: &Tree| match t {
        Tree::Dir { entries, .. } => entries.clone(),
        Tree::File { .. } => unreachable!(),
    };
    assert_eq!(strip(&on_disk), strip(&live));
    // The mountpoint is an ordinary empty directory again.
    assert_eq!(fs::read_dir(&d.mnt).unwrap().count(), 0);
}

#[test]
fn power_cut_keeps_only_what_was_fsynced() {
    let Some(d) = dirs() else { return };
    fs::write(d.backing.join("old"), b"v1").unwrap();
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    // a: data and entry fsynced. b: entry only. c: data only.
    fs::write(d.mnt.join("a"), b"A").unwrap();
    fsync_file(&d.mnt.join("a")).unwrap();
    fs::write(d.mnt.join("b"), b"B").unwrap();
    fsync_dir(&d.mnt).unwrap();
    fs::write(d.mnt.join("c"), b"C").unwrap();
    fsync_file(&d.mnt.join("c")).unwrap();
    // old: appended without fsync; the open handle stays open over the cut.
    let mut old = OpenOptions::new()
        .append(true)
        .open(d.mnt.join("old"))
        .unwrap();
    old.write_all(b"v2").unwrap();
    assert_eq!(fs::read(d.mnt.join("old")).unwrap(), b"v1v2");
    let stats = m.stats();
    assert_eq!((stats.file_fsyncs, stats.dir_fsyncs), (2, 1));

    m.power_cut().unwrap();
    assert!(m.is_cut());
    let after_cut = Tree::read_from(&d.backing).unwrap();
    assert_eq!(after_cut.file("a"), Some(&b"A"[..]));
    assert_eq!(after_cut.file("b"), Some(&b""[..]));
    assert!(!after_cut.exists("c"));
    assert_eq!(after_cut.file("old"), Some(&b"v1"[..]));
    // The writer keeps running but gets nowhere.
    assert!(old.write_all(b"v3").is_err());
    assert!(fs::write(d.mnt.join("new"), b"x").is_err());
    assert!(fs::read(d.mnt.join("a")).is_err());
    assert!(m.power_cut().is_err(), "a second cut is refused");

    m.unmount().unwrap(); // with `old` still open
    assert_eq!(Tree::read_from(&d.backing).unwrap(), after_cut);
    drop(old);
}

#[test]
fn rename_becomes_durable_with_the_directory_fsync() {
    for fsync_after_rename in [false, true] {
        let Some(d) = dirs() else { return };
        let m = testfs::mount(&d.backing, &d.mnt).unwrap();
        fs::create_dir(d.mnt.join("snaps")).unwrap();
        fsync_dir(&d.mnt).unwrap();
        let snaps = d.mnt.join("snaps");
        fs::write(snaps.join("snap.tmp"), b"snapshot").unwrap();
        fsync_file(&snaps.join("snap.tmp")).unwrap();
        fsync_dir(&snaps).unwrap();
        fs::rename(snaps.join("snap.tmp"), snaps.join("snap")).unwrap();
        if fsync_after_rename {
            fsync_dir(&snaps).unwrap();
        }
        m.power_cut().unwrap();
        m.unmount().unwrap();
        let t = Tree::read_from(&d.backing).unwrap();
        if fsync_after_rename {
            assert_eq!(t.file("snaps/snap"), Some(&b"snapshot"[..]));
            assert!(!t.exists("snaps/snap.tmp"));
        } else {
            assert_eq!(t.file("snaps/snap.tmp"), Some(&b"snapshot"[..]));
            assert!(!t.exists("snaps/snap"));
        }
    }
}

#[test]
fn torn_power_cut_applies_a_prefix_of_a_pending_write() {
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut applied_lengths = Vec::new();
    for seed in [1u64, 2, 3] {
        let Some(d) = dirs() else { return };
        fs::write(d.backing.join("log"), b"base").unwrap();
        let m = testfs::mount(&d.backing, &d.mnt).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(d.mnt.join("log"))
            .unwrap();
        f.write_all_at(&pattern, 4).unwrap();
        let torn = m.power_cut_torn(seed).unwrap().expect("one pending write");
        m.unmount().unwrap();
        drop(f);
        assert_eq!(torn.path, std::path::Path::new("log"));
        assert!(torn.offset >= 4 && torn.applied <= torn.len);
        let start = (torn.offset - 4) as usize;
        let mut want = b"base".to_vec();
        if torn.applied > 0 {
            want.resize(torn.offset as usize, 0);
            want.extend_from_slice(&pattern[start..start + torn.applied]);
        }
        assert_eq!(fs::read(d.backing.join("log")).unwrap(), want, "{torn:?}");
        applied_lengths.push(torn.applied);
    }
    println!("torn prefix lengths for seeds 1..=3: {applied_lengths:?}");
}

#[test]
fn failed_fsync_reports_eio_and_the_data_never_becomes_durable() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let path = d.mnt.join("f");
    let mut f = File::create(&path).unwrap();
    f.sync_all().unwrap();
    fsync_dir(&d.mnt).unwrap();
    f.write_all(b"lost").unwrap();
    m.fail_fsync(1);
    let err = f.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(m.stats().failed_fsyncs, 1);
    // A retry "succeeds" but the data is gone from the durable view; reads
    // still see it.
    f.sync_all().unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"lost");
    f.write_all(b"+kept").unwrap();
    f.sync_data().unwrap();
    m.power_cut().unwrap();
    m.unmount().unwrap();
    assert_eq!(
        fs::read(d.backing.join("f")).unwrap(),
        b"\0\0\0\0+kept",
        "the dropped write leaves a hole"
    );
}

#[test]
fn fsync_error_is_reported_to_every_descriptor_open_at_the_failure() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let path = d.mnt.join("f");
    File::create(&path).unwrap();
    fsync_dir(&d.mnt).unwrap();
    // Two open file descriptions of one file (two FUSE opens, two handles).
    let mut first = OpenOptions::new().write(true).open(&path).unwrap();
    let second = OpenOptions::new().write(true).open(&path).unwrap();
    first.write_all(b"lost").unwrap();
    m.fail_fsync(1);
    let eio = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(eio(first.sync_all()), Some(libc::EIO), "the failing fsync");
    // Written after the failure: the reporting fsync makes it durable.
    second.write_all_at(b"kept", 4).unwrap();
    assert_eq!(
        eio(second.sync_all()),
        Some(libc::EIO),
        "reported to the other descriptor too"
    );
    second.sync_all().unwrap();
    first.sync_all().unwrap();
    // Opened after the failure: never sees it.
    let third = File::open(&path).unwrap();
    third.sync_all().unwrap();
    let stats = m.stats();
    assert_eq!((stats.failed_fsyncs, stats.reported_fsync_errors), (1, 1));
    m.power_cut().unwrap();
    m.unmount().unwrap();
    drop((first, second, third));
    assert_eq!(fs::read(d.backing.join("f")).unwrap(), b"\0\0\0\0kept");
}

#[test]
fn directory_fsync_error_is_reported_to_every_open_descriptor() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let first = File::open(&d.mnt).unwrap();
    let second = File::open(&d.mnt).unwrap();
    File::create(d.mnt.join("lost")).unwrap();
    m.fail_fsync(1);
    let eio = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(eio(first.sync_all()), Some(libc::EIO));
    File::create(d.mnt.join("kept")).unwrap();
    assert_eq!(eio(second.sync_all()), Some(libc::EIO));
    second.sync_all().unwrap();
    first.sync_all().unwrap();
    fsync_dir(&d.mnt).unwrap(); // a new descriptor
    m.power_cut().unwrap();
    m.unmount().unwrap();
    drop((first, second));
    assert!(d.backing.join("kept").exists());
    assert!(!d.backing.join("lost").exists());
}

#[test]
fn failing_directory_fsync_counts_with_file_fsyncs() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    fs::write(d.mnt.join("f"), b"x").unwrap();
    m.fail_fsync(2);
    fsync_file(&d.mnt.join("f")).unwrap();
    let err = fsync_dir(&d.mnt).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    fsync_dir(&d.mnt).unwrap();
    m.unmount().unwrap();
    // Clean unmount, but the entry was dropped by the failed fsync.
    assert!(!d.backing.join("f").exists());
}

#[test]
fn clean_unmount_with_a_file_still_open() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let mut f = File::create(d.mnt.join("open")).unwrap();
    f.write_all(b"data").unwrap();
    m.unmount().unwrap();
    assert_eq!(fs::read(d.backing.join("open")).unwrap(), b"data");
    assert!(f.write_all(b"more").is_err());
}

#[test]
fn posix_errors_and_metadata_through_the_mount() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let mnt = &d.mnt;
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/f"), b"0123456789").unwrap();
    fs::write(mnt.join("file"), b"").unwrap();
    let kind = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(kind(fs::create_dir(mnt.join("d"))), Some(libc::EEXIST));
    assert_eq!(kind(fs::remove_dir(mnt.join("d"))), Some(libc::ENOTEMPTY));
    assert_eq!(kind(fs::remove_dir(mnt.join("file"))), Some(libc::ENOTDIR));
    assert_eq!(kind(fs::remove_file(mnt.join("d"))), Some(libc::EISDIR));
    assert_eq!(kind(fs::remove_file(mnt.join("nope"))), Some(libc::ENOENT));
    assert_eq!(
        kind(fs::rename(mnt.join("file"), mnt.join("d"))),
        Some(libc::EISDIR)
    );
    assert_eq!(
        kind(fs::rename(mnt.join("d"), mnt.join("d/sub"))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        kind(fs::write(mnt.join("file/x"), b"")),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        kind(File::create_new(mnt.join("file")).map(|_| ())),
        Some(libc::EEXIST)
    );

    // Truncate, extend, read at offsets, seek past the end and write.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("d/f"))
        .unwrap();
    f.set_len(4).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 4);
    f.set_len(6).unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"0123\0\0");
    f.seek(SeekFrom::Start(8)).unwrap();
    f.write_all(b"end").unwrap();
    let mut two = [0u8; 2];
    f.read_exact_at(&mut two, 9).unwrap();
    assert_eq!(&two, b"nd");
    assert_eq!(fs::read(mnt.join("d/f")).unwrap(), b"0123\0\0\0\0end");
    // O_TRUNC (sent by the kernel as a setattr).
    fs::write(mnt.join("d/f"), b"short").unwrap();
    assert_eq!(fs::read(mnt.join("d/f")).unwrap(), b"short");
    drop(f);

    // chmod and utimes are accepted.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(mnt.join("file"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(mnt.join("file")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    File::options()
        .write(true)
        .open(mnt.join("file"))
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();

    // A directory listing larger than one readdir buffer.
    fs::create_dir(mnt.join("many")).unwrap();
    for i in 0..300 {
        fs::write(mnt.join(format!("many/entry-{i:03}")), b"").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(mnt.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 300);
    assert_eq!(names[299], "entry-299");
    // A larger file.
    let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 253) as u8).collect();
    fs::write(mnt.join("big"), &big).unwrap();
    assert_eq!(fs::read(mnt.join("big")).unwrap(), big);

    // statfs works (df); a statvfs-using call: available space is queried
    // by some tools.
    m.unmount().unwrap();
    assert_eq!(fs::read(d.backing.join("big")).unwrap().len(), 3 << 20);
    assert_eq!(
        fs::metadata(d.backing.join("file"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn drop_without_unmount_acts_as_power_cut() {
    let Some(d) = dirs() else { return };
    {
        let m = testfs::mount(&d.backing, &d.mnt).unwrap();
        fs::write(d.mnt.join("f"), b"unsynced").unwrap();
        fsync_dir(&d.mnt).unwrap();
        drop(m);
    }
    assert_eq!(fs::read(d.backing.join("f")).unwrap(), b"");
    assert_eq!(fs::read_dir(&d.mnt).unwrap().count(), 0, "unmounted");
}

#[test]
fn remount_sees_the_durable_state() {
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    fs::write(d.mnt.join("f"), b"one").unwrap();
    fsync_file(&d.mnt.join("f")).unwrap();
    fsync_dir(&d.mnt).unwrap();
    fs::write(d.mnt.join("g"), b"unsynced").unwrap();
    m.power_cut().unwrap();
    m.unmount().unwrap();
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    assert_eq!(fs::read(d.mnt.join("f")).unwrap(), b"one");
    assert_eq!(
        fs::read(d.mnt.join("g")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    m.unmount().unwrap();
}

#[test]
fn fallocate_through_the_mount() {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let f = File::create(d.mnt.join("f")).unwrap();
    f.write_all_at(b"abcdef", 0).unwrap();
    let fd = f.as_raw_fd();
    fallocate(fd, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 6);
    fallocate(fd, FallocateFlags::empty(), 0, 10).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10);
    let hole = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(fd, hole, 1, 2).unwrap();
    assert_eq!(fs::read(d.mnt.join("f")).unwrap(), b"a\0\0def\0\0\0\0");
    m.unmount().unwrap();
    assert_eq!(fs::read(d.backing.join("f")).unwrap(), b"a\0\0def\0\0\0\0");
}

#[test]
fn syncfs_and_close_are_not_durability_points() {
    use std::os::fd::AsRawFd;
    let Some(d) = dirs() else { return };
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    File::create(d.mnt.join("f")).unwrap();
    fsync_dir(&d.mnt).unwrap();
    {
        let mut f = OpenOptions::new()
            .write(true)
            .open(d.mnt.join("f"))
            .unwrap();
        f.write_all(b"data").unwrap();
        f.flush().unwrap();
        nix::unistd::syncfs(f.as_raw_fd()).unwrap();
    } // close
    let stats = m.stats();
    assert_eq!((stats.file_fsyncs, stats.dir_fsyncs), (0, 1));
    m.power_cut().unwrap();
    m.unmount().unwrap();
    assert_eq!(fs::read(d.backing.join("f")).unwrap(), b"");
}

#[test]
fn power_cut_while_a_child_process_is_writing() {
    let Some(d) = dirs() else { return };
    fs::write(d.backing.join("log"), b"").unwrap();
    let m = testfs::mount(&d.backing, &d.mnt).unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("i=0; while :; do echo line$i >> log; i=$((i+1)); done")
        .current_dir(&d.mnt)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the writer is well under way.
    for _ in 0..10_000 {
        if m.stats().writes >= 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(m.stats().writes >= 200, "the writer got going");
    let torn = m.power_cut_torn(42).unwrap().expect("pending appends");
    child.kill().unwrap();
    child.wait().unwrap();
    m.unmount().unwrap();
    // Nothing was fsynced: the durable log is empty but for the torn prefix
    // of one append, at that append's offset.
    let log = fs::read(d.backing.join("log")).unwrap();
    let end = if torn.applied == 0 {
        0
    } else {
        torn.offset as usize + torn.applied
    };
    assert_eq!(log.len(), end, "{torn:?}");
    let tail = &log[end - torn.applied..];
    assert!(log[..end - torn.applied].iter().all(|b| *b == 0));
    let text = std::str::from_utf8(tail).unwrap();
    assert!(
        "line".starts_with(text) || text.starts_with("line"),
        "{text:?}"
    );
}
