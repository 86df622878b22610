//! The `millpond` binary on real stores: every command, its exit codes and
//! its messages, including a deliberately damaged store that `verify` must
//! catch.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn millpond(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(args)
        .output()
        .expect("run millpond")
}

fn ok(args: &[&str]) -> String {
    let out = millpond(args);
    assert!(
        out.status.success(),
        "millpond {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `len` bytes that do not compress (xorshift64 from `seed`): a value the
/// engine stores at its full length.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("a utf-8 path")
}

#[test]
fn set_get_del_scan_and_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let d = p(&dir);
    // Read commands never create a store.
    let out = millpond(&["get", d, "k"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no store"));
    assert!(!dir.exists());

    ok(&["set", d, "user:1", "ada"]);
    ok(&["set", d, "user:2", "bob", "--ttl", "10m"]);
    ok(&["set", d, "bin\\x00key", "\\xff\\x00"]);
    ok(&["set", d, "big", &"x".repeat(20_000)]);
    assert_eq!(ok(&["get", d, "user:1"]), "ada\n");
    assert_eq!(ok(&["get", d, "bin\\x00key"]), "\\xff\\x00\n");
    assert_eq!(ok(&["get", d, "62696e006b6579", "--hex"]), "ff00\n");
    let json = ok(&["get", d, "user:2", "--json"]);
    assert!(
        json.starts_with("{\"key\": \"user:2\", \"value\": \"bob\", \"ttl_ms\": "),
        "{json}"
    );

    assert_eq!(
        ok(&["scan", d, "--prefix", "user:"]),
        "user:1\tada\nuser:2\tbob\n"
    );
    assert_eq!(ok(&["scan", d, "--limit", "1"]).lines().count(), 1);
    assert_eq!(
        ok(&["scan", d, "--prefix", "user:1", "--json"]),
        "{\"key\": \"user:1\", \"value\": \"ada\"}\n"
    );

    let stats = ok(&["stats", d]);
    assert!(stats.contains("keys               4"), "{stats}");
    assert!(stats.contains("blob values      1"), "{stats}");
    assert!(stats.contains("keys with a TTL    1"), "{stats}");
    assert!(ok(&["stats", d, "--json"]).contains("\"keys\": 4"));

    ok(&["del", d, "user:1"]);
    let out = millpond(&["del", d, "user:1"]);
    assert_eq!(out.status.code(), Some(1));
    let out = millpond(&["get", d, "user:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no value for key user:1"));
}

#[test]
fn bad_input_gets_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("not-a-store");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    for cmd in ["stats", "verify", "scan", "dump"] {
        let out = millpond(&[cmd, p(&other)]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a millpond store"), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
    let out = millpond(&["set", p(&other), "k", "v"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a millpond store"));
    let out = millpond(&["set", p(&tmp.path().join("s")), "k", "v", "--ttl", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a duration"));
    let out = millpond(&["get", p(&tmp.path().join("s")), "zz", "--hex"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not hex"));
}

#[test]
fn a_store_held_by_another_engine_is_refused_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let engine = millpond::Engine::open(millpond::Config::new(&dir)).unwrap();
    let out = millpond(&["get", p(&dir), "k"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another engine"), "{err}");
    assert!(!err.contains("panicked"));
    engine.shutdown().unwrap();
}

#[test]
fn dump_and_load_move_keys_values_and_deadlines() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for i in 0..40 {
        ok(&["set", p(&a), &format!("k{i:03}"), &format!("value {i}")]);
        if i == 0 {
            ok(&["set", p(&a), "big", &"y".repeat(30_000)]);
            ok(&["set", p(&a), "temp", "t", "--ttl", "1h"]);
            ok(&["set", p(&a), "gone", "g", "--ttl", "1ms"]);
        }
    }
    std::thread::sleep(Duration::from_millis(5));
    let dump = millpond(&["dump", p(&a)]);
    assert!(dump.status.success());
    assert!(dump.stdout.starts_with(b"millpond-dump 1\n"));

    let mut load = Command::new(env!("CARGO_BIN_EXE_millpond"))
        .args(["load", p(&b)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("loaded 42 keys"));
    assert_eq!(ok(&["scan", p(&a)]), ok(&["scan", p(&b)]));
    let ttl = ok(&["get", p(&b), "temp", "--json"]);
    assert!(
        !ttl.contains("\"ttl_ms\": null"),
        "the deadline moved too: {ttl}"
    );
    assert_eq!(millpond(&["get", p(&b), "gone"]).status.code(), Some(1));

    // A damaged or truncated dump is refused.
    for bad in [
        dump.stdout[..dump.stdout.len() - 3].to_vec(),
        b"something else\n".to_vec(),
    ] {
        let mut load = Command::new(env!("CARGO_BIN_EXE_millpond"))
            .args(["load", p(&tmp.path().join("c"))])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        load.stdin.take().unwrap().write_all(&bad).unwrap();
        let out = load.wait_with_output().unwrap();
        assert!(!out.status.success());
    }
}

#[test]
fn verify_catches_a_damaged_store_and_repair_fixes_what_it_can() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let d = p(&dir);
    for i in 0..20 {
        ok(&["set", d, &format!("k{i}"), &format!("v{i}")]);
    }
    // Written twice: the first blob is freed, so an id below the committed
    // next id is free for the orphan below (ids at or above it are swept at
    // open).
    ok(&["set", d, "big", &"z".repeat(40_000)]);
    ok(&["set", d, "big", &"w".repeat(40_000)]);
    assert!(ok(&["verify", d]).contains("clean: no problem found"));

    // Damage a record and add an orphan blob, directly in the sled trees.
    {
        let db = sled::open(&dir).unwrap();
        let meta = db.open_tree("meta").unwrap();
        let mut rec = meta.get(b"\x01k7").unwrap().unwrap().to_vec();
        rec[2] ^= 0x10;
        meta.insert(b"\x01k7", rec).unwrap();
        let blob = db.open_tree("blob").unwrap();
        let ids: Vec<u64> = blob
            .iter()
            // A long value's parts are under its id and a part number.
            .map(|kv| u64::from_be_bytes(kv.unwrap().0[..8].try_into().unwrap()))
            .collect();
        let orphan = (0..).find(|i| !ids.contains(i)).unwrap();
        assert!(orphan < *ids.iter().max().unwrap());
        blob.insert(orphan.to_be_bytes(), vec![1; 10]).unwrap();
        db.flush().unwrap();
    }
    let out = millpond(&["verify", d]);
    assert_eq!(out.status.code(), Some(2));
    let report = String::from_utf8_lossy(&out.stdout);
    // The damaged record also no longer matches the store digest.
    assert!(report.contains("3 problem(s)"), "{report}");
    assert!(report.contains("corrupt record \"k7\""), "{report}");
    assert!(
        report.contains("do not match the committed state"),
        "{report}"
    );
    assert!(report.contains("belongs to no record"), "{report}");

    let out = millpond(&["verify", d, "--repair"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the report is of what was found"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("repaired: 1"));
    // The orphan is gone; the corrupt record (live data) is kept and
    // reported.
    let out = millpond(&["verify", d, "--json"]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("corrupt record"), "{json}");
    assert!(!json.contains("belongs to no record"), "{json}");
    assert_eq!(ok(&["get", d, "k8"]), "v8\n");
}

#[test]
fn a_rolled_back_store_is_refused_until_the_loss_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let d = p(&dir);
    for i in 0..20 {
        ok(&["set", d, &format!("k{i}"), &format!("v{i}")]);
    }
    // sled recovers an emptied log (and no snapshot) as an empty database.
    std::fs::write(dir.join("db"), b"").unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("snap.")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let out = millpond(&["verify", d]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("durable record promises"), "{err}");
    let out = millpond(&["get", d, "k1"]);
    assert_ne!(out.status.code(), Some(0), "reads are refused too");
    // --accept-loss needs --repair.
    assert_ne!(
        millpond(&["verify", d, "--accept-loss"]).status.code(),
        Some(0)
    );
    millpond(&["verify", d, "--repair", "--accept-loss"]);
    assert!(ok(&["verify", d]).contains("clean: no problem found"));
    assert_eq!(millpond(&["get", d, "k1"]).status.code(), Some(1));
}

/// Makes sled 0.34 panic while opening the store in `dir`: with the
/// snapshot files gone, sled rebuilds its state from the segment headers
/// of its `db` file, and a header copied from segment 0 over segment 1
/// (a duplicate sequence number) fails an assertion inside sled.
fn damage_so_that_sled_panics_on_open(dir: &Path) {
    // `conf` is text lines, then a checksum.
    let conf = String::from_utf8_lossy(&std::fs::read(dir.join("conf")).unwrap()).into_owned();
    let segment: usize = conf
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: "))
        .expect("a segment size in sled's conf")
        .trim()
        .parse()
        .unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("snap.") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let mut db = std::fs::read(dir.join("db")).unwrap();
    const SEGMENT_HEADER: usize = 20;
    assert!(
        db.len() > segment + SEGMENT_HEADER,
        "the store needs two segments"
    );
    let header = db[..SEGMENT_HEADER].to_vec();
    db[segment..segment + SEGMENT_HEADER].copy_from_slice(&header);
    std::fs::write(dir.join("db"), db).unwrap();
}

#[test]
fn a_store_on_which_sled_panics_gets_one_error_line_and_no_panic_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        // About 1.6 MB of values that do not compress (so they are stored
        // at their length): several of sled's 512 KiB segments.
        let e = millpond::Engine::open(millpond::Config::new(&dir)).unwrap();
        for i in 0..16u8 {
            e.set(&[i], &noise(u64::from(i), 100_000)).unwrap();
        }
        e.shutdown().unwrap();
    }
    damage_so_that_sled_panics_on_open(&dir);
    for args in [
        &["stats", p(&dir)][..],
        &["verify", p(&dir)],
        &["get", p(&dir), "k"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_millpond"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("run millpond");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        // sled did panic (the library reports the panic it caught) ...
        assert!(
            err.contains("the storage layer failed while opening"),
            "{args:?}: {err}"
        );
        // ... and only the tool's own error line was printed.
        assert!(err.starts_with("millpond: error: "), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for noise in [
            "panicked at",
            "stack backtrace",
            "RUST_BACKTRACE",
            "sled-0.34",
        ] {
            assert!(!err.contains(noise), "{args:?}: {noise:?} in {err}");
        }
    }
}

#[test]
fn dump_refuses_a_store_with_named_trees_rather_than_leave_them_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let e = millpond::Engine::open(millpond::Config::new(&dir)).unwrap();
        e.set(b"plain", b"1").unwrap();
        // A long value that does not compress is stored in parts, which
        // makes the store format version 3: the tree is found by its
        // records, not only by version 2.
        e.tree("sessions")
            .unwrap()
            .set(b"s1", &noise(99, 20_000))
            .unwrap();
        let r = e.verify().unwrap();
        assert_eq!((r.format_version, r.tree_records), (3, 1));
        e.shutdown().unwrap();
    }
    let out = millpond(&["dump", p(&dir)]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("named trees"), "{err}");
    assert!(out.stdout.is_empty(), "nothing half-written");
}

/// `bench --journal-modes` at a tiny size: every side at every thread count
/// runs in its own process, is checked after reopening, and has its rows;
/// the figures themselves are not looked at (they depend on the machine).
#[test]
fn bench_journal_modes_runs_and_checks_every_side() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = p(tmp.path());
    let common = [
        "bench",
        "--journal-modes",
        "--keys",
        "200",
        "--scale",
        "0.01",
        "--dir",
        dir,
    ];
    let mut args = common.to_vec();
    args.extend(["--threads", "1,2"]);
    let text = ok(&args);
    let sides = [
        "millpond Off",
        "millpond Periodic(100ms)",
        "millpond Process",
        "millpond Power",
        "sled insert+flush()",
        "redb Immediate commit",
        "fjall insert+persist(SyncAll)",
    ];
    for side in sides {
        // One row in the summary, one per thread count in the details.
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(side)).collect();
        assert_eq!(rows.len(), 3, "{side}:\n{text}");
        assert!(
            rows[1..].iter().all(|r| r.ends_with("ok (200 keys)")),
            "{side}:\n{text}"
        );
    }
    for ratio in [
        "Process / Off",
        "Power / sled insert+flush()",
        "Power / redb Immediate commit",
        "Power / fjall insert+persist(SyncAll)",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(ratio)),
            "{ratio}:\n{text}"
        );
    }
    assert!(
        text.contains("ops/s @1") && text.contains("p99 @2"),
        "{text}"
    );
    assert!(text.contains("stores in "), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
    // The stores are gone.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    // --target narrows the sides; --json gives every run's report.
    let mut args = common.to_vec();
    args.extend(["--target", "millpond,redb", "--threads", "2", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    let runs = json["runs"].as_array().unwrap();
    let targets: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, [&sides[..4], &sides[5..6]].concat());
    for r in runs {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["threads"], 2);
        assert_eq!(r["verified_keys"], 200);
        assert!(r["ops"].as_u64().unwrap() >= 2, "each thread writes");
    }

    // Nonsense is refused before anything runs.
    for (bad, message) in [
        (&["--keys", "3", "--threads", "4"][..], "--keys must be"),
        (&["--target", "in-memory"], "makes no write durable"),
        (&["--threads", "0"], "--threads takes counts"),
    ] {
        let mut args = vec!["bench", "--journal-modes", "--dir", dir];
        args.extend(bad);
        let out = millpond(&args);
        assert!(!out.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{bad:?}: {err}");
    }
}

/// `bench --backend postgres` at a tiny size on a temporary server (the
/// sessions workload, its default): every side runs, is checked after
/// reopening (all 10,000 session keys), and has its row and ratio; the
/// figures themselves are not looked at.
#[cfg(feature = "postgres")]
#[test]
fn bench_postgres_runs_and_checks_every_side() {
    let out = millpond(&["bench", "--backend", "postgres", "--scale", "0.001"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The bench says so when it cannot start its temporary server (no
    // binaries, not root, no postgres user).
    if !out.status.success() && stderr.contains("no temporary PostgreSQL server can be started") {
        eprintln!("skipping: {stderr}");
        return;
    }
    assert!(
        out.status.success(),
        "bench --backend postgres failed: {stderr}"
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    for side in [
        "millpond (postgres backend)",
        "naive upsert per write, synchronous_commit=on",
        "naive upsert per write, synchronous_commit=off",
    ] {
        let row = text
            .lines()
            .find(|l| l.starts_with(side))
            .unwrap_or_else(|| panic!("no row for {side}:\n{text}"));
        assert!(!row.contains("FAILED"), "{row}\n{text}");
        assert!(
            row.trim_end().ends_with("10,000"),
            "every key checked: {row}"
        );
        let ratio = text.lines().find(|l| l.starts_with(&format!("vs {side}")));
        assert_eq!(
            ratio.is_some(),
            !side.starts_with("millpond"),
            "ratio row of {side}:\n{text}"
        );
    }
    assert!(text.contains("millpond / naive"), "{text}");
    // Without --workload, sessions only, under its own header.
    assert!(text.starts_with("sessions on PostgreSQL"), "{text}");
    assert_eq!(text.matches(" on PostgreSQL ").count(), 1, "{text}");
    // Handovers between two engines, each timed (two groups of 16 may
    // share a partition: those are not counted).
    for owner in [
        "idle (nothing dirty)",
        "busy (writing every partition it holds)",
    ] {
        let row = text
            .lines()
            .find(|l| l.starts_with(owner))
            .unwrap_or_else(|| panic!("no handover row for {owner}:\n{text}"));
        let count: usize = row[owner.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no handover count: {row}"));
        assert!(count > 0 && row.contains(" ms"), "{row}");
    }
    assert!(!text.contains("handover: FAILED"), "{text}");
    // ttl-churn (the naive sides have no TTLs) is refused, before anything
    // runs.
    let out = millpond(&[
        "bench",
        "--backend",
        "postgres",
        "--workload",
        "sessions,ttl-churn",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not run ttl-churn"), "{err}");
}

/// Without the feature, `bench --backend postgres` says how to get it.
#[cfg(not(feature = "postgres"))]
#[test]
fn bench_postgres_needs_the_feature() {
    let out = millpond(&["bench", "--backend", "postgres"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without the postgres feature"), "{err}");
}
