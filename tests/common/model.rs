//! A model of millpond (a `BTreeMap` of values with deadlines) and a checker
//! that runs a sequence of operations against both, comparing every key after
//! every step.
//!
//! Shared by `tests/model.rs` (proptest), `tests/fuzz_seeds.rs` (the fuzz
//! seed corpus replayed under `cargo test`) and `fuzz/fuzz_targets/ops.rs`
//! (cargo-fuzz), so this file depends only on millpond, std and tempfile.
//!
//! The store is a temporary one (the memory backend, [`Backend::Memory`]) by
//! default: no files, so a run costs about a millisecond instead of tens
//! (a sled store in a temporary directory, fsynced at every checkpoint);
//! its reopens and crashes go through the same engine code. [`run_on`] with [`Backend::Sled`] checks the sled backend,
//! with `Backend::Postgres` (feature `postgres`) the PostgreSQL backend.
//!
//! What is checked:
//! - after every step, every key reads (`get`, `ttl`, `contains_key`) as the
//!   model says, in the default keyspace and in the tree `t` (model keys
//!   `KEYS..2 * KEYS`, with the same user keys as the default keyspace's, so
//!   a collision between keyspaces would show), and iteration (`iter`,
//!   `range` over a sub-range, both directions, each keyspace alone) lists
//!   exactly the model's live keys in order;
//! - `compare_and_swap` returns and does what the model says;
//! - `delete`, `expire`, `persist` return what the model says;
//! - after a clean reopen (shutdown, or drop of the last handle) the store
//!   equals the model: nothing acknowledged is lost;
//! - after a crash (`halt`), the store equals the model as it was after some
//!   step since the last durable point (checkpoint or clean reopen): one
//!   point in history, no older than the last checkpoint.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use millpond::testing::{halt, Faults, StorageOp};
use millpond::{Config, Engine, Error, Journal, MockClock};

/// Keys are `key-0` .. `key-7`; model keys `KEYS..2 * KEYS` are the same
/// user keys in the tree `t`.
pub const KEYS: u8 = 8;

/// Value lengths: empty, inline, and long enough for the blob tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    Empty,
    Small,
    Large,
}

impl Len {
    fn bytes(self) -> usize {
        match self {
            Len::Empty => 0,
            Len::Small => 13,
            Len::Large => 2100,
        }
    }
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set {
        key: u8,
        len: Len,
    },
    SetTtl {
        key: u8,
        len: Len,
        ttl_ms: u16,
    },
    Delete {
        key: u8,
    },
    /// Appends a byte; deletes a value longer than 2000 bytes.
    Modify {
        key: u8,
    },
    /// Sets (`Some`) or deletes (`None`) keys in one transaction.
    Transaction {
        writes: Vec<(u8, Option<Len>)>,
    },
    Expire {
        key: u8,
        ttl_ms: u16,
    },
    Persist {
        key: u8,
    },
    Purge,
    Checkpoint,
    Advance {
        ms: u16,
    },
    /// Shutdown, then open again.
    Reopen,
    /// Drop the last handle (no shutdown call), then open again.
    DropReopen,
    /// A crash at a flush-cycle boundary, then open again.
    Crash,
    /// The next commit of a flush cycle fails (it is retried).
    FailCommit,
    /// `compare_and_swap` of a key (`0..2 * KEYS`): with the live value as
    /// expected (`hit`) or a value it never has; to a new value or absent.
    Cas {
        key: u8,
        hit: bool,
        new: Option<Len>,
    },
    /// Sets (`Some`) or deletes (`None`) key `key` (`0..KEYS`) of the tree.
    TreeWrite {
        key: u8,
        len: Option<Len>,
    },
    /// One transaction writing keys of both keyspaces (`0..2 * KEYS`).
    CrossTransaction {
        writes: Vec<(u8, Option<Len>)>,
    },
}

impl Op {
    /// Decodes fuzzer bytes into operations (at most `max`). Every byte
    /// string decodes to something.
    pub fn decode_all(data: &[u8], max: usize) -> Vec<Op> {
        let mut bytes = data.iter().copied();
        let mut next = move || bytes.next();
        let mut ops = Vec::new();
        while ops.len() < max {
            let Some(tag) = next() else { break };
            let key = next().unwrap_or(0) % KEYS;
            let len = match next().unwrap_or(1) % 3 {
                0 => Len::Empty,
                1 => Len::Small,
                _ => Len::Large,
            };
            let ms = u16::from_le_bytes([next().unwrap_or(0), next().unwrap_or(0)]);
            if tag >= 240 {
                let key2 = key + KEYS * (ms as u8 % 2);
                ops.push(match tag % 3 {
                    0 => Op::Cas {
                        key: key2,
                        hit: ms % 3 != 0,
                        new: (ms % 5 != 0).then_some(len),
                    },
                    1 => Op::TreeWrite {
                        key,
                        len: (ms % 4 != 0).then_some(len),
                    },
                    _ => Op::CrossTransaction {
                        writes: vec![
                            (key, Some(len)),
                            ((key + 3) % KEYS + KEYS, (ms % 2 == 0).then_some(len)),
                        ],
                    },
                });
                continue;
            }
            ops.push(match tag % 15 {
                0 | 1 => Op::Set { key, len },
                2 => Op::SetTtl {
                    key,
                    len,
                    ttl_ms: ms,
                },
                3 => Op::Delete { key },
                4 => Op::Modify { key },
                5 => {
                    let n = (ms % 4) as u8 + 1;
                    Op::Transaction {
                        writes: (0..n)
                            .map(|i| {
                                let k = (key + i * 3) % KEYS;
                                (k, (i != 1).then_some(len))
                            })
                            .collect(),
                    }
                }
                6 => Op::Expire { key, ttl_ms: ms },
                7 => Op::Persist { key },
                8 => Op::Purge,
                9 => Op::Checkpoint,
                10 => Op::Advance { ms },
                11 => Op::Reopen,
                12 => Op::DropReopen,
                13 => Op::Crash,
                _ => Op::FailCommit,
            });
        }
        ops
    }
}

/// What the model holds for a key: its value and deadline (ms since epoch).
type State = BTreeMap<u8, (Vec<u8>, Option<u64>)>;

/// What a reader sees of a key: its value and remaining time (ms).
type Visible = BTreeMap<u8, (Vec<u8>, Option<u64>)>;

/// A failed check, with the steps that led to it.
pub struct Failure {
    pub step: usize,
    pub message: String,
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}", self.step, self.message)
    }
}

/// The storage backend a run checks.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// A temporary store (`Config::temporary`).
    Memory,
    /// A sled store in a temporary directory.
    Sled,
    /// A sled store with a write-ahead journal in this mode: after a crash
    /// under `Process` or `Power`, the store equals the model (nothing
    /// acknowledged is lost); under `Periodic`, some point since the last
    /// durable point, as without a journal.
    Journaled(Journal),
    /// A PostgreSQL store (feature `postgres`) in a fresh database, whose
    /// connection string the function returns (it creates the database).
    #[cfg(feature = "postgres")]
    Postgres(fn() -> String),
}

/// Runs `ops` against a fresh temporary store (the memory backend) and the
/// model.
///
/// `write_delay`: `None` for a deterministic run (nothing is flushed except
/// by checkpoint, reopen and crash), or a delay for flushes running between
/// and during the steps.
pub fn run(ops: &[Op], write_delay: Option<Duration>) -> Result<(), Failure> {
    run_on(Backend::Memory, ops, write_delay)
}

/// [`run`] on a fresh store of `backend`.
pub fn run_on(backend: Backend, ops: &[Op], write_delay: Option<Duration>) -> Result<(), Failure> {
    let mut c = Checker::new(backend, write_delay);
    for (step, op) in ops.iter().enumerate() {
        c.apply(op).map_err(|message| Failure { step, message })?;
        c.compare().map_err(|message| Failure {
            step,
            message: format!("after {op:?}: {message}"),
        })?;
    }
    c.engine().shutdown().map_err(|e| Failure {
        step: ops.len(),
        message: format!("final shutdown failed: {e}"),
    })?;
    Ok(())
}

/// The user key of model key `k` (in its keyspace).
fn key(k: u8) -> Vec<u8> {
    format!("key-{}", k % KEYS).into_bytes()
}

/// The name of the model's tree.
const TREE: &str = "t";

struct Checker {
    /// The sled store's directory, removed when dropped.
    _dir: Option<tempfile::TempDir>,
    /// What every open uses; for a temporary store, its clones share the
    /// store.
    config: Config,
    clock: Arc<MockClock>,
    faults: Arc<Faults>,
    /// `None` only while it is being reopened.
    engine: Option<Engine>,
    model: State,
    /// The model after each step since the last durable point; the first is
    /// the durable point itself.
    history: Vec<State>,
    /// Current mock time, ms since the Unix epoch.
    now: u64,
    /// A crash loses no acknowledged write (a `Process` or `Power`
    /// journal).
    crash_keeps_all: bool,
    /// Makes every written value unique.
    counter: u32,
}

impl Checker {
    fn new(backend: Backend, write_delay: Option<Duration>) -> Checker {
        let (dir, base) = match backend {
            Backend::Memory => (None, Config::temporary()),
            Backend::Sled | Backend::Journaled(_) => {
                let dir = tempfile::tempdir().expect("tempdir");
                let mut config = Config::new(dir.path().join("store"));
                if let Backend::Journaled(mode) = backend {
                    config = config.journal(mode);
                }
                (Some(dir), config)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(database) => (None, Config::postgres(&database())),
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(MockClock::new(start));
        let faults = Faults::new();
        let config = base
            // Large values (2100 bytes) go to the blob tree.
            .inline_threshold(1024)
            .write_delay(write_delay.unwrap_or(Duration::from_secs(3600)))
            .clock(clock.clone())
            .faults(faults.clone())
            // An injected commit failure is retried at once, not after the
            // default 10 ms (most of a run's time otherwise).
            .retry_backoff(Duration::from_micros(100));
        let mut c = Checker {
            engine: Some(try_open(&config).expect("open")),
            _dir: dir,
            config,
            clock,
            faults,
            model: State::new(),
            history: vec![State::new()],
            now: 1_700_000_000_000,
            counter: 0,
            crash_keeps_all: matches!(
                backend,
                Backend::Journaled(Journal::Process | Journal::Power)
            ),
        };
        c.history = vec![c.model.clone()];
        c
    }

    fn value(&mut self, len: Len) -> Vec<u8> {
        self.counter += 1;
        let mut v = self.counter.to_le_bytes().repeat(len.bytes() / 4 + 1);
        v.truncate(len.bytes());
        v
    }

    /// A write the engine acknowledged, in the model: `Some` value (with
    /// its deadline) or a removal.
    fn record(&mut self, k: u8, v: Option<Vec<u8>>, deadline: Option<u64>) {
        match v {
            Some(v) => {
                self.model.insert(k, (v, deadline));
            }
            None => {
                self.model.remove(&k);
            }
        }
    }

    fn live(&self, k: u8) -> Option<&(Vec<u8>, Option<u64>)> {
        self.model
            .get(&k)
            .filter(|(_, d)| d.is_none_or(|d| d > self.now))
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("an open engine")
    }

    /// Drops the engine (its last handle) and opens the store again.
    fn reopen(&mut self) -> Result<(), String> {
        drop(self.engine.take());
        self.faults.clear();
        self.engine = Some(try_open(&self.config)?);
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let e = self.engine().clone();
        let err = |what: &str, e: Error| format!("{what} failed: {e}");
        match *op {
            Op::Set { key: k, len } => {
                let v = self.value(len);
                e.set(&key(k), &v).map_err(|x| err("set", x))?;
                self.model.insert(k, (v, None));
            }
            Op::SetTtl {
                key: k,
                len,
                ttl_ms,
            } => {
                let v = self.value(len);
                e.set_with_ttl(&key(k), &v, Duration::from_millis(ttl_ms.into()))
                    .map_err(|x| err("set_with_ttl", x))?;
                self.model
                    .insert(k, (v, Some(self.now + u64::from(ttl_ms))));
            }
            Op::Delete { key: k } => {
                let want = self.live(k).is_some();
                let got = e.delete(&key(k)).map_err(|x| err("delete", x))?;
                if got != want {
                    return Err(format!("delete returned {got}, the model says {want}"));
                }
                self.model.remove(&k);
            }
            Op::Modify { key: k } => {
                let counter = self.counter.wrapping_add(1);
                self.counter = counter;
                e.modify(&key(k), |v| match v {
                    Some(x) if x.len() > 2000 => *v = None,
                    Some(x) => x.push(counter as u8),
                    None => *v = Some(vec![counter as u8]),
                })
                .map_err(|x| err("modify", x))?;
                match self.live(k).cloned() {
                    Some((x, _)) if x.len() > 2000 => {
                        self.model.remove(&k);
                    }
                    Some((mut x, d)) => {
                        x.push(counter as u8);
                        self.model.insert(k, (x, d));
                    }
                    None => {
                        self.model.insert(k, (vec![counter as u8], None));
                    }
                }
            }
            Op::Transaction { ref writes } => {
                let values: Vec<(u8, Option<Vec<u8>>)> = writes
                    .iter()
                    .map(|&(k, len)| (k, len.map(|l| self.value(l))))
                    .collect();
                e.transaction(|tx| {
                    for (k, v) in &values {
                        match v {
                            Some(v) => tx.set(&key(*k), v)?,
                            None => {
                                tx.delete(&key(*k))?;
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(|x| err("transaction", x))?;
                for (k, v) in values {
                    self.record(k, v, None);
                }
            }
            Op::Expire { key: k, ttl_ms } => {
                let want = self.live(k).is_some();
                let got = e
                    .expire(&key(k), Duration::from_millis(ttl_ms.into()))
                    .map_err(|x| err("expire", x))?;
                if got != want {
                    return Err(format!("expire returned {got}, the model says {want}"));
                }
                if let Some((v, _)) = self.live(k).cloned() {
                    self.model
                        .insert(k, (v, Some(self.now + u64::from(ttl_ms))));
                }
            }
            Op::Persist { key: k } => {
                let want = self.live(k).is_some_and(|(_, d)| d.is_some());
                let got = e.persist(&key(k)).map_err(|x| err("persist", x))?;
                if got != want {
                    return Err(format!("persist returned {got}, the model says {want}"));
                }
                if let Some((v, Some(_))) = self.live(k).cloned() {
                    self.model.insert(k, (v, None));
                }
            }
            Op::Purge => {
                e.purge_expired().map_err(|x| err("purge_expired", x))?;
                // Invisible already; the model drops them too.
                let now = self.now;
                self.model.retain(|_, (_, d)| d.is_none_or(|d| d > now));
            }
            Op::Checkpoint => {
                if let Err(first) = e.checkpoint() {
                    // An injected commit failure: the retry must succeed.
                    e.checkpoint()
                        .map_err(|x| format!("checkpoint failed twice: {first}, then {x}"))?;
                }
                self.history = vec![self.model.clone()];
                return Ok(());
            }
            Op::Advance { ms } => {
                self.clock.advance(Duration::from_millis(ms.into()));
                self.now += u64::from(ms);
                return Ok(());
            }
            Op::Reopen | Op::DropReopen => {
                if *op == Op::Reopen {
                    e.shutdown().map_err(|x| err("shutdown", x))?;
                }
                // Otherwise dropping the last handle shuts the engine down.
                drop(e);
                self.reopen()?;
                self.compare()
                    .map_err(|m| format!("after a clean reopen: {m}"))?;
                self.history = vec![self.model.clone()];
                return Ok(());
            }
            Op::Crash => {
                halt(&e);
                drop(e);
                self.reopen()?;
                let recovered = self.read_all()?;
                let now = self.now;
                let found = self
                    .history
                    .iter()
                    .rposition(|s| visible(s, now) == recovered)
                    .ok_or_else(|| {
                        format!(
                            "after a crash the store holds {recovered:?}, which is the state \
                             after none of the last {} steps (the oldest being the last checkpoint)",
                            self.history.len()
                        )
                    })?;
                if self.crash_keeps_all && found + 1 != self.history.len() {
                    return Err(format!(
                        "after a crash the store holds the state of {} steps ago: \
                         the journal lost acknowledged writes",
                        self.history.len() - 1 - found
                    ));
                }
                self.model = self.history[found].clone();
                self.history = vec![self.model.clone()];
                return Ok(());
            }
            Op::FailCommit => {
                self.faults.fail_nth(StorageOp::Commit, 1);
                return Ok(());
            }
            Op::Cas { key: k, hit, new } => {
                let live = self.live(k).map(|(v, _)| v.clone());
                let expected = if hit {
                    live.clone()
                } else {
                    Some(b"\xffnever".to_vec())
                };
                let new_value = new.map(|l| self.value(l));
                let got = if k < KEYS {
                    e.compare_and_swap(&key(k), expected.as_deref(), new_value.as_deref())
                } else {
                    e.tree(TREE).and_then(|t| {
                        t.compare_and_swap(&key(k), expected.as_deref(), new_value.as_deref())
                    })
                }
                .map_err(|x| err("compare_and_swap", x))?;
                if got != hit {
                    return Err(format!(
                        "compare_and_swap returned {got}, the model says {hit}"
                    ));
                }
                if hit {
                    let deadline = self.live(k).and_then(|(_, d)| *d);
                    self.record(k, new_value, deadline);
                }
            }
            Op::TreeWrite { key: k, len } => {
                let t = e.tree(TREE).map_err(|x| err("tree", x))?;
                match len {
                    Some(len) => {
                        let v = self.value(len);
                        t.set(&key(k), &v).map_err(|x| err("tree set", x))?;
                        self.model.insert(k % KEYS + KEYS, (v, None));
                    }
                    None => {
                        let want = self.live(k % KEYS + KEYS).is_some();
                        let got = t.delete(&key(k)).map_err(|x| err("tree delete", x))?;
                        if got != want {
                            return Err(format!(
                                "tree delete returned {got}, the model says {want}"
                            ));
                        }
                        self.model.remove(&(k % KEYS + KEYS));
                    }
                }
            }
            Op::CrossTransaction { ref writes } => {
                let values: Vec<(u8, Option<Vec<u8>>)> = writes
                    .iter()
                    .map(|&(k, len)| (k, len.map(|l| self.value(l))))
                    .collect();
                let t = e.tree(TREE).map_err(|x| err("tree", x))?;
                e.transaction(|tx| {
                    for (k, v) in &values {
                        if *k < KEYS {
                            match v {
                                Some(v) => tx.set(&key(*k), v)?,
                                None => drop(tx.delete(&key(*k))?),
                            }
                        } else {
                            let mut tt = tx.tree(&t)?;
                            match v {
                                Some(v) => tt.set(&key(*k), v)?,
                                None => drop(tt.delete(&key(*k))?),
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(|x| err("cross-keyspace transaction", x))?;
                for (k, v) in values {
                    self.record(k, v, None);
                }
            }
        }
        self.history.push(self.model.clone());
        Ok(())
    }

    /// Every key's visible value and remaining time, as the engine says.
    fn read_all(&self) -> Result<Visible, String> {
        let mut out = BTreeMap::new();
        let tree = self
            .engine()
            .tree(TREE)
            .map_err(|e| format!("tree failed: {e}"))?;
        for k in 0..2 * KEYS {
            let (v, ttl, has) = if k < KEYS {
                let e = self.engine();
                (e.get(&key(k)), e.ttl(&key(k)), e.contains_key(&key(k)))
            } else {
                (
                    tree.get(&key(k)),
                    tree.ttl(&key(k)),
                    tree.contains_key(&key(k)),
                )
            };
            let v = v.map_err(|e| format!("get of model key {k} failed: {e}"))?;
            let ttl = ttl.map_err(|e| format!("ttl of model key {k} failed: {e}"))?;
            let has = has.map_err(|e| format!("contains_key of model key {k} failed: {e}"))?;
            if has != v.is_some() {
                return Err(format!("model key {k}: contains_key says {has}, get {v:?}"));
            }
            if let Some(v) = v {
                out.insert(k, (v.to_vec(), ttl.map(|t| t.as_millis() as u64)));
            } else if ttl.is_some() {
                return Err(format!("key-{k} has no value but a ttl of {ttl:?}"));
            }
        }
        Ok(out)
    }

    fn compare(&self) -> Result<(), String> {
        let got = self.read_all()?;
        let want = visible(&self.model, self.now);
        if got != want {
            return Err(format!("the store holds {got:?}, the model {want:?}"));
        }
        // Iteration lists the same keys and values, in order, per keyspace,
        // from both ends, over the whole keyspace and over a sub-range.
        let tree = self
            .engine()
            .tree(TREE)
            .map_err(|e| format!("tree failed: {e}"))?;
        let (lo, hi) = (key(2), key(6));
        for in_tree in [false, true] {
            let expected: Pairs = want
                .iter()
                .filter(|(k, _)| (**k >= KEYS) == in_tree)
                .map(|(k, (v, _))| (key(*k), v.clone()))
                .collect();
            let sub: Pairs = expected
                .iter()
                .filter(|(k, _)| *k >= lo && *k < hi)
                .cloned()
                .collect();
            let (all, rev, range, range_rev) = if in_tree {
                (
                    tree.iter(),
                    tree.iter(),
                    tree.range(lo.clone()..hi.clone()),
                    tree.range(lo.clone()..hi.clone()),
                )
            } else {
                (
                    self.engine().scan_prefix(b"key-"),
                    self.engine().iter(),
                    self.engine().range(lo.clone()..hi.clone()),
                    self.engine().range(lo.clone()..hi.clone()),
                )
            };
            let mut rev = listed(rev.rev())?;
            rev.reverse();
            let mut range_rev = listed(range_rev.rev())?;
            range_rev.reverse();
            for (what, got, want) in [
                ("a scan", listed(all)?, &expected),
                ("a reverse iteration", rev, &expected),
                ("a range", listed(range)?, &sub),
                ("a reverse range", range_rev, &sub),
            ] {
                if got != *want {
                    return Err(format!(
                        "{what}{} lists {:?}, the model {:?}",
                        if in_tree { " of the tree" } else { "" },
                        shown(&got),
                        shown(want)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Keys and values, as listed.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn listed(
    it: impl Iterator<Item = millpond::Result<(millpond::Value, millpond::Value)>>,
) -> Result<Pairs, String> {
    it.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("iteration failed: {e}"))
}

fn shown(kv: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, usize)> {
    kv.iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.len()))
        .collect()
}

/// The keys of a model state that are live at `now`, with their remaining
/// time.
fn visible(state: &State, now: u64) -> Visible {
    state
        .iter()
        .filter(|(_, (_, d))| d.is_none_or(|d| d > now))
        .map(|(k, (v, d))| (*k, (v.clone(), d.map(|d| d - now))))
        .collect()
}

fn try_open(config: &Config) -> Result<Engine, String> {
    Engine::open(config.clone()).map_err(|e| format!("open failed: {e}"))
}
