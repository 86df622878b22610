//! Power-loss trials on `testfs`, a FUSE filesystem that drops everything
//! not fsynced when the power is cut (see `testfs/`). Killing the process
//! (`tests/crash.rs`) only proves millpond survives its own death; these
//! prove its durability promises against the loss of the operating system's
//! unsynced writes.
//!
//! Each trial mounts a fresh testfs, runs a child workload
//! (`common/workload.rs`) on the mount, cuts the power at a random moment
//! while the child runs (half the cuts also tear one pending write), kills
//! the child, unmounts, reopens the store from the backing directory and
//! checks that everything up to the last acknowledged checkpoint is there,
//! that the state is one point in history, that no transaction is half
//! applied, and that reopening neither fails nor panics.
//!
//! `Synced` writes (`set_with`) and `Synced` watchers are checked the same
//! way: every write acknowledged, and every change a watcher was told of,
//! is there after the cut.
//!
//! The journal (issue 15): with `Journal::Power` no acknowledged write is
//! lost and the store is one point in history; with `Journal::Periodic(d)`
//! it is one point in history, holding every write the journal had
//! certainly synced; `Journal::Off` is the control (it loses acknowledged
//! writes not yet checkpointed: a figure, not asserted).
//!
//! Needs root and `/dev/fuse`; without them every test prints one line
//! saying why and passes. Trials: `MILLPOND_POWER_TRIALS` (default 16 for
//! the engine, half that per journal mode, a quarter for the journal's
//! control, 6 per sled control); seed: `MILLPOND_SEED`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::workload::{self, check_bank, check_events, matching_prefix, read_all, Spec};
use common::Rng;
use millpond::{Config, Engine, Journal};

#[test]
fn child() {
    workload::child_main();
}

/// A fresh testfs mount over a fresh backing directory.
struct Mounted {
    _tmp: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    fs: Option<testfs::Mount>,
}

impl Mounted {
    fn new() -> Option<Mounted> {
        if let Err(why) = testfs::fuse_available() {
            println!("skipping power-loss test: {why}");
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let backing = tmp.path().join("backing");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&backing).expect("mkdir");
        std::fs::create_dir(&mnt).expect("mkdir");
        let fs = testfs::mount(&backing, &mnt).expect("mount testfs");
        Some(Mounted {
            _tmp: tmp,
            backing,
            mnt,
            fs: Some(fs),
        })
    }

    fn fs(&self) -> &testfs::Mount {
        self.fs.as_ref().expect("mounted")
    }

    /// Cuts the power (torn with `Some(seed)`); returns a description.
    fn cut(&self, torn: Option<u64>) -> String {
        match torn {
            None => {
                self.fs().power_cut().expect("power cut");
                "clean cut".into()
            }
            Some(seed) => match self.fs().power_cut_torn(seed).expect("power cut") {
                Some(t) => format!(
                    "torn cut ({} of {} bytes of a write to {})",
                    t.applied,
                    t.len,
                    t.path.display()
                ),
                None => "torn cut (nothing pending)".into(),
            },
        }
    }

    fn unmount(&mut self) {
        if let Some(fs) = self.fs.take() {
            fs.unmount().expect("unmount");
        }
    }
}

fn spec<'a>(store: &'a std::path::Path, seed: u64, mode: &'a str, delay: Option<u64>) -> Spec<'a> {
    Spec {
        test: "child",
        store,
        seed,
        mode,
        write_delay_ms: delay,
        point: None,
    }
}

fn reopen(path: &std::path::Path, what: &str) -> Engine {
    Engine::open(Config::new(path))
        .unwrap_or_else(|err| panic!("{what}: reopening after the power cut failed: {err}"))
}

/// History and bank workloads, with the default write delay and with one so
/// long that only checkpoints persist anything; clean and torn cuts.
#[test]
fn power_cuts_lose_no_checkpoint_and_split_no_transaction() {
    let seed = common::seed("power");
    let mut rng = Rng::new(seed);
    let trials = workload::trials("POWER", 16);
    let (mut lost, mut ran) = (0, 0);
    for trial in 0..trials {
        let Some(mut m) = Mounted::new() else { return };
        let mode = if trial % 2 == 0 { "history" } else { "bank" };
        let delay = if (trial / 2) % 2 == 0 { 500 } else { 3_600_000 };
        let torn = ((trial / 4) % 2 == 1).then(|| rng.next());
        let child_seed = rng.next();
        let store = m.mnt.join("store");
        let mut t = workload::spawn(spec(&store, child_seed, mode, Some(delay)));
        t.wait_for("checkpoint");
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let cut = m.cut(torn);
        t.kill();
        m.unmount();
        let what = format!(
            "trial {trial}: {mode}, write delay {delay} ms, {cut}, child seed {child_seed}"
        );
        let e = reopen(&m.backing.join("store"), &what);
        match mode {
            "history" => {
                let n = matching_prefix(child_seed, &read_all(&e), t.checkpoint);
                eprintln!(
                    "{what}: last checkpoint {}, recovered prefix {n:?}",
                    t.checkpoint
                );
                if n.is_none() {
                    lost += 1;
                }
            }
            _ => {
                let transfers = check_bank(&e, &what);
                eprintln!(
                    "{what}: last checkpoint {} transfers, recovered {transfers}",
                    t.checkpoint
                );
                if transfers < t.checkpoint {
                    lost += 1;
                }
            }
        }
        ran += 1;
        e.shutdown().unwrap();
    }
    eprintln!("power cuts: {ran} trials, {lost} lost a checkpoint or a point in history");
    assert_eq!(lost, 0, "checkpoints lost in {lost} of {ran} power cuts");
}

/// Four threads write with `Durability::Synced`; a Synced watcher prints
/// what it is told. After a power cut at a random moment, every write whose
/// `set_with` returned is there, and so is every change the watcher saw.
#[test]
fn no_synced_write_or_synced_event_is_lost_by_a_power_cut() {
    let seed = common::seed("power-synced");
    let mut rng = Rng::new(seed);
    let trials = workload::trials("POWER", 16) / 2;
    let (mut acked, mut events) = (0, 0);
    for trial in 0..trials.max(2) {
        let Some(mut m) = Mounted::new() else { return };
        let child_seed = rng.next();
        let store = m.mnt.join("store");
        // Nothing but the Synced writes makes anything durable.
        let mut t = workload::spawn(spec(&store, child_seed, "synced", Some(3_600_000)));
        t.wait_for("acked ");
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let cut = m.cut((trial % 2 == 1).then(|| rng.next()));
        t.kill();
        m.unmount();
        let what = format!("synced trial {trial}: {cut}, child seed {child_seed}");
        let e = reopen(&m.backing.join("store"), &what);
        let mut missing = Vec::new();
        for line in &t.log {
            if let Some(k) = line.strip_prefix("acked ") {
                acked += 1;
                if e.get(k.as_bytes()).unwrap().is_none() {
                    missing.push(k.to_string());
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{what}: {} Synced writes lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        events += check_events(&e, &t.log, &what);
        eprintln!("{what}: every acknowledged Synced write and every Synced event is there");
        e.shutdown().unwrap();
    }
    eprintln!("power cuts: {acked} Synced writes and {events} Synced events checked, none lost");
}

#[test]
fn a_completed_shutdown_survives_a_power_cut() {
    let seed = common::seed("power-shutdown");
    let mut rng = Rng::new(seed);
    for trial in 0..2 {
        let Some(mut m) = Mounted::new() else { return };
        let child_seed = rng.next();
        let store = m.mnt.join("store");
        let mut t = workload::spawn(spec(&store, child_seed, "shutdown", Some(3_600_000)));
        let line = t.wait_for("shutdown ");
        let n: u64 = line["shutdown ".len()..].parse().unwrap();
        let cut = m.cut((trial == 1).then(|| rng.next()));
        t.kill();
        m.unmount();
        let what = format!("shutdown trial {trial}: {cut}, child seed {child_seed}");
        let e = reopen(&m.backing.join("store"), &what);
        // Everything up to the shutdown, exactly.
        assert_eq!(
            matching_prefix(child_seed, &read_all(&e), n),
            Some(n),
            "{what}: writes acknowledged before shutdown() returned were lost"
        );
    }
}

/// The control: raw sled, with `flush()` as its checkpoint, loses
/// checkpointed keys under the same cuts (so the filesystem does catch what
/// it should); with `flush()` plus fsync of every file and directory, it
/// does not.
#[test]
fn control_sled_flush_loses_data_and_flush_plus_fsync_does_not() {
    let seed = common::seed("power-control");
    let mut rng = Rng::new(seed);
    let trials = workload::trials("POWER_CONTROL", 6);
    for (mode, must_lose) in [("sled-flush", true), ("sled-fsync", false)] {
        let mut lost_trials = 0;
        for trial in 0..trials {
            let Some(mut m) = Mounted::new() else { return };
            let store = m.mnt.join("sled");
            let mut t = workload::spawn(spec(&store, rng.next(), mode, None));
            t.wait_for("checkpoint");
            std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
            let cut = m.cut((trial % 2 == 1).then(|| rng.next()));
            t.kill();
            m.unmount();
            let present = workload::sled_keys_present(&m.backing.join("sled"), t.checkpoint);
            eprintln!(
                "{mode} trial {trial} ({cut}): {present} of {} checkpointed keys survived",
                t.checkpoint
            );
            if present < t.checkpoint {
                lost_trials += 1;
            }
        }
        eprintln!("{mode}: checkpointed keys lost in {lost_trials} of {trials} power cuts");
        if must_lose {
            assert!(
                lost_trials > 0,
                "{mode}: no power cut lost a flushed-only checkpoint: the filesystem does not \
                 drop unsynced writes"
            );
        } else {
            assert_eq!(lost_trials, 0, "{mode}: fsynced keys were lost");
        }
    }
}

// postmortem: with a fresh descriptor per checkpoint fsync, the late trial
// acknowledged a checkpoint whose data testfs had dropped: sled's background
// `sync_all` had been the one to see the EIO. Fixed by fsyncing through
// descriptors opened with the store (`storage::sled::Syncer`).
/// The fsyncgate lesson: a failed fsync is not retried into a false
/// success. The checkpoint it belonged to fails, writes and checkpoints are
/// refused until reopen, and after a power cut the last checkpoint that did
/// succeed is there. In the second trial sled's own background flusher
/// meets the failure first; millpond must still see it (testfs reports a
/// failure to every descriptor open at the time, as Linux does, and millpond
/// fsyncs through descriptors it opened with the store).
#[test]
fn a_failed_fsync_is_reported_and_the_last_good_checkpoint_survives() {
    let seed = common::seed("power-fsync");
    let mut rng = Rng::new(seed);
    for trial in 0..2 {
        let Some(mut m) = Mounted::new() else { return };
        let child_seed = rng.next();
        let store = m.mnt.join("store");
        let mut t = workload::spawn(spec(&store, child_seed, "fsync-fail", Some(3_600_000)));
        t.wait_for("armed");
        m.fs().fail_fsync(1);
        t.send(if trial == 0 { "go" } else { "go-late" });
        for expected in ["checkpoint-failed", "writes-refused", "checkpoints-refused"] {
            let line = t.wait_for_any(&[expected, "unexpected"]);
            assert!(line.starts_with(expected), "trial {trial}: {line}");
        }
        assert_eq!(
            t.checkpoint, 500,
            "the failed checkpoint was not reported as done"
        );
        let cut = m.cut((trial == 1).then(|| rng.next()));
        t.kill();
        m.unmount();
        let what = format!("fsync trial {trial}: {cut}, child seed {child_seed}");
        let e = reopen(&m.backing.join("store"), &what);
        let n = matching_prefix(child_seed, &read_all(&e), 500);
        eprintln!("{what}: recovered prefix {n:?}");
        assert!(
            n.is_some(),
            "{what}: the last good checkpoint (500) was lost"
        );
    }
}

/// What one journal trial found.
struct JournalCut {
    trial: workload::Trial,
    /// The point in history recovered (`None`: not one).
    point: Option<u64>,
    /// Unix millis just before the cut.
    cut_at: u64,
    what: String,
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A trial of a `journal-*` child (`mode`) on a fresh mount: waits for its
/// first `first` line, cuts the power at a random moment after it (clean or
/// torn), and checks the store reopened from the backing directory with the
/// child's journal mode or with `Journal::Off`
/// ([`workload::check_journal_trial`]). Write delay: so long that only the
/// journal and the checkpoints keep anything, or a short one. `None` if
/// testfs cannot be mounted.
fn journal_cut(rng: &mut Rng, trial: u64, mode: &str, first: &str) -> Option<JournalCut> {
    let mut m = Mounted::new()?;
    let child_seed = rng.next();
    let delay = if trial % 2 == 0 {
        3_600_000
    } else {
        1 + rng.below(30)
    };
    let torn = ((trial / 2) % 2 == 1).then(|| rng.next());
    let journal = workload::journal_of(mode).expect("a journal mode");
    let reopen_with = if (trial / 4) % 2 == 0 {
        journal
    } else {
        Journal::Off
    };
    let store = m.mnt.join("store");
    let mut t = workload::spawn(spec(&store, child_seed, mode, Some(delay)));
    t.wait_for(first);
    std::thread::sleep(Duration::from_millis(rng.below(400)));
    let cut_at = unix_millis();
    let cut = m.cut(torn);
    t.kill();
    m.unmount();
    let what =
        format!("{mode} trial {trial}: write delay {delay} ms, {cut}, child seed {child_seed}");
    let point =
        workload::check_journal_trial(&m.backing.join("store"), reopen_with, child_seed, &t, &what);
    Some(JournalCut {
        trial: t,
        point,
        cut_at,
        what,
    })
}

/// `Journal::Power` (issue 15): a power cut loses no acknowledged write
/// (the child prints `acked <n>` as each operation or transaction returns)
/// and leaves no torn state: the store is the history's state after the
/// last acknowledged group or the one after it (synced, cut before it was
/// printed).
#[test]
fn journal_power_loses_no_acknowledged_write_to_a_power_cut() {
    let seed = common::seed("power-journal");
    let mut rng = Rng::new(seed);
    let trials = workload::trials("POWER", 16) / 2;
    let (mut acked, mut lost, mut lossy, mut torn) = (0, 0, 0, 0);
    for trial in 0..trials {
        let Some(c) = journal_cut(&mut rng, trial, "journal-power", "acked ") else {
            return;
        };
        acked += c.trial.acked;
        match c.point {
            Some(p) if p >= c.trial.acked => {}
            Some(p) => {
                eprintln!(
                    "{}: LOST {} acknowledged operations",
                    c.what,
                    c.trial.acked - p
                );
                lost += c.trial.acked - p;
                lossy += 1;
            }
            None => torn += 1,
        }
    }
    eprintln!(
        "journal Power under power cuts: {trials} trials, {acked} acknowledged operations, \
         {lost} of them lost (in {lossy} trials), {torn} torn states"
    );
    assert_eq!(
        (lost, torn),
        (0, 0),
        "acknowledged operations lost or torn states (see the trials above)"
    );
}

/// `Journal::Periodic(50 ms)` (issue 15): after a power cut the store is one
/// point in history, at or past the last checkpoint and past every
/// operation the child reported `synced` (the journal had certainly
/// fdatasynced it: timing-free, see `workload::journal_child`), which is
/// what "nothing older than `d` plus one sync is lost" comes to without
/// assuming how soon the background thread runs. How old the oldest lost
/// acknowledged write was at the cut is printed, not asserted.
#[test]
fn journal_periodic_loses_nothing_it_synced_to_a_power_cut() {
    let seed = common::seed("power-journal-periodic");
    let mut rng = Rng::new(seed);
    let trials = workload::trials("POWER", 16) / 2;
    let (mut acked, mut lost, mut bad, mut oldest) = (0, 0, 0, 0);
    for trial in 0..trials {
        // A first `synced` line before the cut, so that every trial checks
        // one.
        let Some(c) = journal_cut(&mut rng, trial, "journal-periodic-50", "synced ") else {
            return;
        };
        let t = &c.trial;
        acked += t.acked;
        let floor = t.synced.max(t.checkpoint);
        match c.point {
            Some(p) if p >= floor => {
                lost += t.acked.saturating_sub(p);
                if let Some(at) = t.acked_after(p) {
                    let age = c.cut_at.saturating_sub(at);
                    eprintln!(
                        "{}: {} acknowledged operations lost, the oldest acknowledged {age} ms \
                         before the cut",
                        c.what,
                        t.acked.saturating_sub(p)
                    );
                    oldest = oldest.max(age);
                }
            }
            _ => {
                eprintln!(
                    "{}: NOT one point in history at or past {floor} (synced {}, checkpoint {})",
                    c.what, t.synced, t.checkpoint
                );
                bad += 1;
            }
        }
    }
    eprintln!(
        "journal Periodic(50 ms) under power cuts: {trials} trials, {acked} acknowledged \
         operations, {lost} lost (allowed), the oldest lost one acknowledged {oldest} ms before \
         its cut; {bad} trials lost a synced operation or were not one point in history"
    );
    assert_eq!(bad, 0, "synced operations lost or torn states (see above)");
}

/// The journal's control: `Journal::Off` under the same cuts recovers one
/// point in history at or past the last checkpoint, and loses the
/// acknowledged operations after it that no cycle made durable (how many
/// is printed, not asserted).
#[test]
fn control_journal_off_loses_acknowledged_writes_to_a_power_cut() {
    let seed = common::seed("power-journal-off");
    let mut rng = Rng::new(seed);
    let trials = (workload::trials("POWER", 16) / 4).max(2);
    let (mut acked, mut lost, mut lossy, mut bad) = (0, 0, 0, 0);
    for trial in 0..trials {
        let Some(c) = journal_cut(&mut rng, trial, "journal-off", "acked ") else {
            return;
        };
        let t = &c.trial;
        acked += t.acked;
        match c.point {
            Some(p) if p >= t.checkpoint => {
                if p < t.acked {
                    lost += t.acked - p;
                    lossy += 1;
                }
            }
            _ => bad += 1,
        }
    }
    eprintln!(
        "journal Off under power cuts (control): {trials} trials, {acked} acknowledged \
         operations, {lost} lost (in {lossy} trials); {bad} trials lost a checkpoint or were not \
         one point in history"
    );
    assert_eq!(bad, 0, "checkpoints lost or torn states (see above)");
}

/// `Journal::Power` and a metadata-only change of a long value: `expire` of
/// a key whose blob a flush cycle wrote but no sync made durable, then a
/// power cut. The journal's record must bring the value back whole (found
/// by review: it held only a pointer to the blob, which the cut took away
/// with its cycle, and the replayed record then named a missing blob, or a
/// blob id handed out again to another key).
#[test]
fn an_expire_journaled_after_an_unsynced_cycle_survives_a_power_cut() {
    for trial in 0..4 {
        let Some(mut m) = Mounted::new() else { return };
        let store = m.mnt.join("store");
        let mut t = workload::spawn(spec(&store, trial, "expire-blob", Some(1)));
        t.wait_for("expired 0");
        let cut = m.cut(None);
        t.kill();
        m.unmount();
        let e = Engine::open(Config::new(m.backing.join("store")).journal(Journal::Power))
            .unwrap_or_else(|err| panic!("trial {trial} ({cut}): reopen failed: {err}"));
        let got = e.get(b"blob-0");
        assert_eq!(
            got.as_ref().ok().and_then(|v| v.as_deref()),
            Some(&workload::value_for(0, 0).repeat(2)[..]),
            "trial {trial} ({cut}): the expired value came back as {got:?}"
        );
        assert!(
            e.ttl(b"blob-0").unwrap().is_some(),
            "trial {trial}: its deadline"
        );
        e.shutdown().unwrap();
    }
}
