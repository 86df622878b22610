//! The workloads: deterministic from a seed, each checking its own result.
//!
//! A workload runs its timed phase through the ops of [`Target`] only, keeps
//! what it needs to know the expected final state (a version per key, or
//! nothing when the state follows from the seed), and after the store has
//! been closed and reopened compares every key it wrote.
//!
//! Every write stores a value that differs from the key's previous one (a
//! version or sequence number is embedded): sled skips an insert of an
//! unchanged value, so a constant value would measure nothing.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

mod session_doc;
mod ycsb;

pub use ycsb::{Phase, Ycsb};

use super::measure::Latencies;
use super::targets::{describe, show_key, Atomicity, Change, Expect, Target, Tuning};
use super::targets::{unix_millis, TargetKind, SECOND_TREE_PREFIX};

// ---------------------------------------------------------------------------
// Randomness

/// The splitmix64 finalizer: a bijection on u64 that mixes well.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of a few numbers (for seeds and per-key choices).
pub fn hash3(a: u64, b: u64, c: u64) -> u64 {
    const G: u64 = 0x9e37_79b9_7f4a_7c15;
    mix64(mix64(mix64(a.wrapping_add(G)) ^ b.wrapping_add(G)) ^ c.wrapping_add(G))
}

/// xorshift64*: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point).
        Rng(mix64(seed) | 1)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Fills `buf` with bytes that depend only on `seed`.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut state = seed;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        c.copy_from_slice(&mix64(state).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let n = rest.len();
        rest.copy_from_slice(&mix64(state).to_le_bytes()[..n]);
    }
}

/// Zipf over ranks `0..n` (rank 0 the most frequent): P(rank k) is
/// proportional to 1 / (k + 1)^s. Sampled exactly by binary search in the
/// cumulative distribution (n is at most a few million here).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        assert!(n > 0, "Zipf over an empty set");
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// A seeded permutation of `0..n` (Fisher-Yates), so that the hot ranks of a
/// skewed workload are spread over the keyspace.
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

// ---------------------------------------------------------------------------
// The workload catalogue

/// The workloads, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Session state: Zipf-skewed read-modify-writes of 2-8 KiB values.
    Sessions,
    /// sessions with JSON documents for values (LZ4 halves them).
    SessionsJson,
    /// Task states: pending -> processing -> done, each a 2-key change.
    Tasks,
    /// An append-only journal of 200-byte events with sequence keys.
    Journal,
    /// Unique 100-byte inserts in random key order (no overwrite).
    UniformInsert,
    /// 90 % gets / 10 % sets over a working set larger than the buffer.
    ReadHeavy,
    /// TTL churn: short-TTL keys expiring while new ones arrive, paced.
    TtlChurn,
    /// YCSB load: insert 100,000 records of 1 KiB, hashed key order.
    YcsbLoad,
    /// YCSB A: 50 % reads, 50 % updates, zipfian, on the loaded records.
    YcsbA,
    /// YCSB B: 95 % reads, 5 % updates, zipfian.
    YcsbB,
    /// YCSB C: 100 % reads of loaded, durable records, zipfian.
    YcsbC,
    /// YCSB F: 50 % reads, 50 % read-modify-writes, zipfian.
    YcsbF,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 12] = [
        WorkloadKind::Sessions,
        WorkloadKind::SessionsJson,
        WorkloadKind::Tasks,
        WorkloadKind::Journal,
        WorkloadKind::UniformInsert,
        WorkloadKind::ReadHeavy,
        WorkloadKind::TtlChurn,
        WorkloadKind::YcsbLoad,
        WorkloadKind::YcsbA,
        WorkloadKind::YcsbB,
        WorkloadKind::YcsbC,
        WorkloadKind::YcsbF,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Sessions => "sessions",
            WorkloadKind::SessionsJson => "sessions-json",
            WorkloadKind::Tasks => "tasks",
            WorkloadKind::Journal => "journal",
            WorkloadKind::UniformInsert => "uniform-insert",
            WorkloadKind::ReadHeavy => "read-heavy",
            WorkloadKind::TtlChurn => "ttl-churn",
            WorkloadKind::YcsbLoad => "ycsb-load",
            WorkloadKind::YcsbA => "ycsb-a",
            WorkloadKind::YcsbB => "ycsb-b",
            WorkloadKind::YcsbC => "ycsb-c",
            WorkloadKind::YcsbF => "ycsb-f",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sizes and seed of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub scale: f64,
    pub seed: u64,
}

impl Params {
    /// `base * scale`, at least `min`.
    fn scaled(&self, base: u64, min: u64) -> u64 {
        ((base as f64 * self.scale).round() as u64).max(min)
    }
}

/// What the timed phase did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Operations (each one timed).
    pub ops: u64,
    /// Bytes the workload asked to store: key plus value of every write
    /// (key only for a delete). Reads count nothing.
    pub logical_bytes: u64,
    pub latencies: Latencies,
    /// Remarks for the report (e.g. a change that was not atomic).
    pub notes: Vec<String>,
}

impl Outcome {
    fn absorb(&mut self, m: Meter) {
        self.ops += m.latencies.len() as u64;
        self.logical_bytes += m.logical_bytes;
        self.latencies.merge(m.latencies);
    }
}

/// One thread's measurements.
pub struct Meter {
    pub latencies: Latencies,
    pub logical_bytes: u64,
}

impl Meter {
    fn new(ops: u64) -> Meter {
        Meter {
            latencies: Latencies::with_capacity(ops as usize),
            logical_bytes: 0,
        }
    }

    /// Runs and times one op.
    #[inline]
    fn op<R>(&mut self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let started = Instant::now();
        let r = f();
        self.latencies.record_since(started);
        r
    }
}

/// A workload. The driver calls, in order: `prepare` (untimed, followed by
/// a durable point), `run` (timed), then `verify` on the reopened store.
pub trait Workload {
    /// Sizes and shape, for the report.
    fn describe(&self) -> String;
    fn threads(&self) -> usize;
    /// The store configuration for this workload, and a note if it differs
    /// from the command line's.
    fn tuning(&self, base: Tuning, _target: TargetKind) -> (Tuning, Option<String>) {
        (base, None)
    }
    fn prepare<T: Target>(&mut self, _t: &T) -> Result<()> {
        Ok(())
    }
    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome>;
    /// Compares the store's contents with what the run wrote. Returns how
    /// many keys were checked; any difference is an error.
    fn verify<T: Target>(&self, t: &T) -> Result<u64>;
    /// Remarks from the last `verify`, for the report.
    fn verify_notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Runs `f(thread index)` on `n` threads and collects the results.
fn in_threads<R: Send>(n: usize, f: impl Fn(usize) -> Result<R> + Sync) -> Result<Vec<R>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let f = &f;
                s.spawn(move || f(i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("a workload thread panicked"))?
            })
            .collect()
    })
}

/// Collects differences between a store and the expected contents.
#[derive(Default)]
pub(crate) struct Checker {
    checked: u64,
    wrong: u64,
    examples: Vec<String>,
}

impl Checker {
    fn check(&mut self, key: &[u8], found: Option<&[u8]>, want: Option<&[u8]>) {
        self.checked += 1;
        if found != want {
            self.wrong += 1;
            if self.examples.len() < 5 {
                self.examples.push(format!(
                    "key {}: found {}, expected {}",
                    show_key(key),
                    describe(found),
                    describe(want)
                ));
            }
        }
    }

    pub(crate) fn check_get<T: Target>(
        &mut self,
        t: &T,
        key: &[u8],
        want: Option<&[u8]>,
    ) -> Result<()> {
        let found = t.get(key)?;
        self.check(key, found.as_ref().map(AsRef::as_ref), want);
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<u64> {
        if self.wrong > 0 {
            bail!(
                "verification failed: {} of {} keys differ from what the workload wrote; {}",
                self.wrong,
                self.checked,
                self.examples.join("; ")
            );
        }
        Ok(self.checked)
    }
}

fn key_u64(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

// ---------------------------------------------------------------------------
// 1. sessions

/// Web-framework session state: `KEYS` sessions of 2-8 KiB, updated by
/// `modify` (read, bump a version, rewrite a 64-byte field) with Zipf-skewed
/// key choice from 2 threads. Preloaded before the timed phase. The values
/// are random bytes, which no store can compress; with [`Sessions::json`]
/// (`sessions-json`) they are JSON documents ([`session_doc`]) instead,
/// updated in place the same way.
pub struct Sessions {
    seed: u64,
    json: bool,
    keys: usize,
    updates: u64,
    threads: usize,
    zipf_s: f64,
    /// Update count per key, after the run.
    counts: Vec<u32>,
}

impl Sessions {
    pub const KEYS: usize = 10_000;
    pub const UPDATES: u64 = 1_000_000;
    const FIELD: usize = 64;

    pub fn new(p: Params) -> Sessions {
        Sessions {
            seed: p.seed,
            json: false,
            keys: Sessions::KEYS,
            updates: p.scaled(Sessions::UPDATES, 1_000),
            threads: 2,
            zipf_s: 0.99,
            counts: Vec::new(),
        }
    }

    /// The same workload with JSON session documents for values.
    pub fn json(p: Params) -> Sessions {
        Sessions {
            json: true,
            ..Sessions::new(p)
        }
    }

    pub(crate) fn key(i: usize) -> Vec<u8> {
        format!("session:{i:08}").into_bytes()
    }

    fn size(&self, i: usize) -> usize {
        2048 + (hash3(self.seed, 1, i as u64) % (8192 - 2048 + 1)) as usize
    }

    pub(crate) fn initial(&self, i: usize) -> Vec<u8> {
        if self.json {
            return session_doc::initial(self.seed, i, self.size(i));
        }
        let mut v = vec![0; self.size(i)];
        fill(&mut v, hash3(self.seed, 2, i as u64));
        v[..8].copy_from_slice(&0u64.to_le_bytes());
        v
    }

    /// One update of session `i`'s value, random or JSON.
    fn change(json: bool, seed: u64, i: usize, v: &mut [u8]) {
        if json {
            session_doc::update(seed, i, v);
        } else {
            Sessions::update(seed, i, v);
        }
    }

    /// One update: version + 1, and a 64-byte field rewritten (where and
    /// with what depends only on key and new version).
    pub(crate) fn update(seed: u64, i: usize, v: &mut [u8]) {
        let version = u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8])) + 1;
        v[..8].copy_from_slice(&version.to_le_bytes());
        let h = hash3(seed, i as u64, version);
        let room = (v.len() - 8 - Sessions::FIELD) as u64;
        let at = 8 + (h % room) as usize;
        fill(&mut v[at..at + Sessions::FIELD], h);
    }
}

impl Workload for Sessions {
    fn describe(&self) -> String {
        format!(
            "{} keys of 2-8 KiB{}, {} modify ops, Zipf s={} (preloaded)",
            self.keys,
            if self.json { " (JSON)" } else { "" },
            self.updates,
            self.zipf_s
        )
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn prepare<T: Target>(&mut self, t: &T) -> Result<()> {
        for i in 0..self.keys {
            t.set(&Sessions::key(i), &self.initial(i))?;
        }
        Ok(())
    }

    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        let zipf = Zipf::new(self.keys, self.zipf_s);
        let perm = permutation(self.keys, hash3(self.seed, 3, 0));
        let keys: Vec<Vec<u8>> = (0..self.keys).map(Sessions::key).collect();
        let per_thread = self.updates / self.threads as u64;
        let extra = self.updates % self.threads as u64;
        let (seed, json) = (self.seed, self.json);
        let results = in_threads(self.threads, |th| {
            let ops = per_thread + u64::from((th as u64) < extra);
            let mut rng = Rng::new(hash3(seed, 4, th as u64));
            let mut meter = Meter::new(ops);
            let mut counts = vec![0u32; keys.len()];
            for _ in 0..ops {
                let i = perm[zipf.sample(&mut rng)] as usize;
                let key = &keys[i];
                let len = meter.op(|| {
                    t.modify(key, |v| {
                        v.as_mut().map(|v| {
                            Sessions::change(json, seed, i, v);
                            v.len()
                        })
                    })
                })?;
                let Some(len) = len else {
                    bail!("session {} is missing", show_key(key));
                };
                counts[i] += 1;
                meter.logical_bytes += (key.len() + len) as u64;
            }
            Ok((meter, counts))
        })?;
        let mut out = Outcome::default();
        self.counts = vec![0; self.keys];
        for (meter, counts) in results {
            out.absorb(meter);
            for (total, c) in self.counts.iter_mut().zip(counts) {
                *total += c;
            }
        }
        let hot = self.counts.iter().max().copied().unwrap_or(0);
        let touched = self.counts.iter().filter(|&&c| c > 0).count();
        out.notes.push(format!(
            "hottest key updated {hot} times, {touched} of {} keys touched",
            self.keys
        ));
        Ok(out)
    }

    fn verify<T: Target>(&self, t: &T) -> Result<u64> {
        let mut checker = Checker::default();
        for i in 0..self.keys {
            let mut want = self.initial(i);
            for _ in 0..self.counts.get(i).copied().unwrap_or(0) {
                Sessions::change(self.json, self.seed, i, &mut want);
            }
            checker.check_get(t, &Sessions::key(i), Some(&want))?;
        }
        checker.finish()
    }
}

// ---------------------------------------------------------------------------
// 2. task states

/// Task states: each task is created (its record, pending, and its
/// write-once 4 KiB payload), started (record -> processing, plus a lease
/// in the second tree) and finished (record -> done, lease removed). Each
/// of the three steps is one 2-key change checked against the expected
/// previous state. Each of 2 threads runs its tasks as a pipeline: a task
/// starts `WINDOW` creations after its own and finishes `WINDOW` steps
/// later.
pub struct Tasks {
    seed: u64,
    tasks: u64,
    threads: usize,
}

const PENDING: u8 = 1;
const PROCESSING: u8 = 2;
const DONE: u8 = 3;

impl Tasks {
    pub const TASKS: u64 = 100_000;
    const WINDOW: u64 = 1_000;
    const RECORD: usize = 48;
    const LEASE: usize = 32;
    const PAYLOAD: usize = 4096;

    pub fn new(p: Params) -> Tasks {
        Tasks {
            seed: p.seed,
            tasks: p.scaled(Tasks::TASKS, 100),
            threads: 2,
        }
    }

    fn record(&self, id: u64, state: u8) -> [u8; Tasks::RECORD] {
        let mut r = [0; Tasks::RECORD];
        fill(&mut r, hash3(self.seed, 10 + u64::from(state), id));
        r[0] = state;
        r[1..9].copy_from_slice(&id.to_be_bytes());
        r
    }

    fn lease(&self, id: u64) -> [u8; Tasks::LEASE] {
        let mut l = [0; Tasks::LEASE];
        fill(&mut l, hash3(self.seed, 20, id));
        l
    }

    fn payload(&self, id: u64) -> Vec<u8> {
        let mut p = vec![0; Tasks::PAYLOAD];
        fill(&mut p, hash3(self.seed, 21, id));
        p[..8].copy_from_slice(&id.to_be_bytes());
        p
    }

    fn record_key(id: u64) -> Vec<u8> {
        key_u64(b"task/", id)
    }

    fn payload_key(id: u64) -> Vec<u8> {
        key_u64(b"payload/", id)
    }

    fn lease_key(id: u64) -> Vec<u8> {
        let mut prefix = SECOND_TREE_PREFIX.to_vec();
        prefix.extend_from_slice(b"lease/");
        key_u64(&prefix, id)
    }

    /// Step `step` (0 create, 1 start, 2 finish) of task `id`: one 2-key
    /// change, checked against the state the previous step left.
    fn step<T: Target>(&self, t: &T, id: u64, step: u8, meter: &mut Meter) -> Result<Atomicity> {
        let rk = Tasks::record_key(id);
        if step == 0 {
            let record = self.record(id, PENDING);
            let payload = self.payload(id);
            let pk = Tasks::payload_key(id);
            let changes = [
                Change {
                    key: &rk,
                    expect: Expect::Absent,
                    new: Some(&record),
                },
                Change {
                    key: &pk,
                    expect: Expect::Absent,
                    new: Some(&payload),
                },
            ];
            return self.apply(t, &changes, meter);
        }
        let (from, to) = if step == 1 {
            (PENDING, PROCESSING)
        } else {
            (PROCESSING, DONE)
        };
        let (old, new) = (self.record(id, from), self.record(id, to));
        let lease = self.lease(id);
        let lk = Tasks::lease_key(id);
        let lease_change = if step == 1 {
            // Started: the lease appears.
            (Expect::Absent, Some(&lease[..]))
        } else {
            // Finished: the lease goes.
            (Expect::Equals(&lease[..]), None)
        };
        let changes = [
            Change {
                key: &rk,
                expect: Expect::Equals(&old),
                new: Some(&new),
            },
            Change {
                key: &lk,
                expect: lease_change.0,
                new: lease_change.1,
            },
        ];
        self.apply(t, &changes, meter)
    }

    fn apply<T: Target>(
        &self,
        t: &T,
        changes: &[Change<'_>],
        meter: &mut Meter,
    ) -> Result<Atomicity> {
        let atomicity = meter.op(|| t.apply(changes))?;
        meter.logical_bytes += changes
            .iter()
            .map(|c| (c.key.len() + c.new.map_or(0, <[u8]>::len)) as u64)
            .sum::<u64>();
        Ok(atomicity)
    }
}

impl Workload for Tasks {
    fn describe(&self) -> String {
        format!(
            "{} tasks x 3 steps (create with 4 KiB payload, start, finish), each a 2-key change",
            self.tasks
        )
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        let threads = self.threads as u64;
        let this = &*self;
        let results = in_threads(self.threads, |th| {
            let th = th as u64;
            // This thread's tasks: th, th + threads, ...
            let mine = (this.tasks + threads - 1 - th) / threads;
            let id = |j: u64| th + j * threads;
            let mut meter = Meter::new(3 * mine);
            let mut per_key = false;
            let w = Tasks::WINDOW;
            for j in 0..mine + 2 * w {
                let mut steps = [None; 3];
                if j < mine {
                    steps[0] = Some((id(j), 0));
                }
                if j >= w && j - w < mine {
                    steps[1] = Some((id(j - w), 1));
                }
                if j >= 2 * w && j - 2 * w < mine {
                    steps[2] = Some((id(j - 2 * w), 2));
                }
                for (task, step) in steps.into_iter().flatten() {
                    per_key |= this.step(t, task, step, &mut meter)? == Atomicity::PerKey;
                }
            }
            Ok((meter, per_key))
        })?;
        let mut out = Outcome::default();
        let mut per_key = false;
        for (meter, p) in results {
            out.absorb(meter);
            per_key |= p;
        }
        if per_key {
            out.notes.push(
                "NOT TRANSACTIONAL: each 2-key change is two separate modify calls (the engine \
                 has no multi-key transactions yet)"
                    .into(),
            );
        } else {
            out.notes
                .push("each 2-key change is atomic (sled: a two-tree transaction)".into());
        }
        Ok(out)
    }

    fn verify<T: Target>(&self, t: &T) -> Result<u64> {
        let mut checker = Checker::default();
        for id in 0..self.tasks {
            checker.check_get(t, &Tasks::record_key(id), Some(&self.record(id, DONE)))?;
            checker.check_get(t, &Tasks::payload_key(id), Some(&self.payload(id)))?;
            checker.check_get(t, &Tasks::lease_key(id), None)?;
        }
        checker.finish()
    }
}

// ---------------------------------------------------------------------------
// 3. journal

/// A chat stream's journal: append-only 200-byte events under big-endian
/// u64 sequence keys, one writer; the store does the batching.
pub struct Journal {
    seed: u64,
    events: u64,
}

impl Journal {
    pub const EVENTS: u64 = 500_000;
    const EVENT: usize = 200;

    pub fn new(p: Params) -> Journal {
        Journal {
            seed: p.seed,
            events: p.scaled(Journal::EVENTS, 1_000),
        }
    }

    fn event(&self, seq: u64, buf: &mut [u8; Journal::EVENT]) {
        fill(buf, hash3(self.seed, 30, seq));
        buf[..8].copy_from_slice(&seq.to_be_bytes());
    }
}

impl Workload for Journal {
    fn describe(&self) -> String {
        format!(
            "{} events of 200 B, big-endian u64 sequence keys",
            self.events
        )
    }

    fn threads(&self) -> usize {
        1
    }

    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        let mut meter = Meter::new(self.events);
        let mut ev = [0; Journal::EVENT];
        for seq in 0..self.events {
            self.event(seq, &mut ev);
            let key = seq.to_be_bytes();
            meter.op(|| t.set(&key, &ev))?;
            meter.logical_bytes += (key.len() + ev.len()) as u64;
        }
        let mut out = Outcome::default();
        out.absorb(meter);
        Ok(out)
    }

    fn verify<T: Target>(&self, t: &T) -> Result<u64> {
        let mut checker = Checker::default();
        let mut ev = [0; Journal::EVENT];
        for seq in 0..self.events {
            self.event(seq, &mut ev);
            checker.check_get(t, &seq.to_be_bytes(), Some(&ev))?;
        }
        checker.finish()
    }
}

// ---------------------------------------------------------------------------
// 4. uniform insert

/// Unique keys in random order, 100-byte values, never overwritten: nothing
/// to coalesce, the worst case for a write buffer.
pub struct UniformInsert {
    seed: u64,
    keys: u64,
}

impl UniformInsert {
    pub const KEYS: u64 = 1_000_000;
    const VALUE: usize = 100;

    pub fn new(p: Params) -> UniformInsert {
        UniformInsert {
            seed: p.seed,
            keys: p.scaled(UniformInsert::KEYS, 1_000),
        }
    }

    /// Distinct for distinct `i` (`mix64` is a bijection).
    fn key(&self, i: u64) -> [u8; 10] {
        let mut k = [0; 10];
        k[..2].copy_from_slice(b"u/");
        k[2..].copy_from_slice(&mix64(hash3(self.seed, 40, 0).wrapping_add(i)).to_be_bytes());
        k
    }

    fn value(&self, i: u64, buf: &mut [u8; UniformInsert::VALUE]) {
        fill(buf, hash3(self.seed, 41, i));
    }
}

impl Workload for UniformInsert {
    fn describe(&self) -> String {
        format!(
            "{} unique keys x 100 B, random order, no overwrites",
            self.keys
        )
    }

    fn threads(&self) -> usize {
        1
    }

    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        let mut meter = Meter::new(self.keys);
        let mut v = [0; UniformInsert::VALUE];
        for i in 0..self.keys {
            let key = self.key(i);
            self.value(i, &mut v);
            meter.op(|| t.set(&key, &v))?;
            meter.logical_bytes += (key.len() + v.len()) as u64;
        }
        let mut out = Outcome::default();
        out.absorb(meter);
        Ok(out)
    }

    fn verify<T: Target>(&self, t: &T) -> Result<u64> {
        let mut checker = Checker::default();
        let mut v = [0; UniformInsert::VALUE];
        for i in 0..self.keys {
            self.value(i, &mut v);
            checker.check_get(t, &self.key(i), Some(&v))?;
        }
        checker.finish()
    }
}

// ---------------------------------------------------------------------------
// 5. read-heavy

/// 90 % gets / 10 % sets, uniform over a preloaded working set much larger
/// than millpond's buffer (which is made small for this run), so most reads
/// go to storage. 2 threads, each owning half the keys, so every get is
/// checked against the version the thread last wrote.
pub struct ReadHeavy {
    seed: u64,
    keys: usize,
    ops: u64,
    threads: usize,
    versions: Vec<u32>,
}

impl ReadHeavy {
    pub const KEYS: usize = 100_000;
    pub const OPS: u64 = 1_000_000;
    /// millpond's `max_dirty_bytes` for this workload.
    pub const MAX_DIRTY_BYTES: usize = 4 << 20;
    const VALUE: usize = 256;

    pub fn new(p: Params) -> ReadHeavy {
        ReadHeavy {
            seed: p.seed,
            keys: ReadHeavy::KEYS,
            ops: p.scaled(ReadHeavy::OPS, 1_000),
            threads: 2,
            versions: Vec::new(),
        }
    }

    fn key(i: usize) -> Vec<u8> {
        format!("item:{i:08}").into_bytes()
    }

    fn value(&self, i: usize, version: u32, buf: &mut [u8; ReadHeavy::VALUE]) {
        fill(buf, hash3(self.seed, 50 + u64::from(version), i as u64));
        buf[..4].copy_from_slice(&version.to_le_bytes());
        buf[4..12].copy_from_slice(&(i as u64).to_le_bytes());
    }
}

impl Workload for ReadHeavy {
    fn describe(&self) -> String {
        format!(
            "{} ops (90 % get, 10 % set) uniform over {} keys x 256 B (preloaded)",
            self.ops, self.keys
        )
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn tuning(&self, base: Tuning, target: TargetKind) -> (Tuning, Option<String>) {
        let tuning = Tuning {
            max_dirty_bytes: Some(ReadHeavy::MAX_DIRTY_BYTES),
            ..base
        };
        let note = (target == TargetKind::Millpond).then(|| {
            format!(
                "millpond runs with max_dirty_bytes = {} MiB (working set ~{} MiB)",
                ReadHeavy::MAX_DIRTY_BYTES >> 20,
                (self.keys * (ReadHeavy::VALUE + 13)) >> 20
            )
        });
        (tuning, note)
    }

    fn prepare<T: Target>(&mut self, t: &T) -> Result<()> {
        let mut v = [0; ReadHeavy::VALUE];
        for i in 0..self.keys {
            self.value(i, 0, &mut v);
            t.set(&ReadHeavy::key(i), &v)?;
        }
        self.versions = vec![0; self.keys];
        Ok(())
    }

    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        let threads = self.threads;
        let keys: Vec<Vec<u8>> = (0..self.keys).map(ReadHeavy::key).collect();
        let this = &*self;
        let results = in_threads(threads, |th| {
            let ops =
                this.ops / threads as u64 + u64::from(th < (this.ops % threads as u64) as usize);
            // This thread's keys: th, th + threads, ...
            let mine = ((this.keys + threads - 1 - th) / threads) as u64;
            let mut versions = vec![0u32; this.keys];
            let mut rng = Rng::new(hash3(this.seed, 51, th as u64));
            let mut meter = Meter::new(ops);
            let mut v = [0; ReadHeavy::VALUE];
            for _ in 0..ops {
                let i = th + threads * rng.below(mine) as usize;
                let key = &keys[i];
                if rng.below(10) == 0 {
                    versions[i] += 1;
                    this.value(i, versions[i], &mut v);
                    meter.op(|| t.set(key, &v))?;
                    meter.logical_bytes += (key.len() + v.len()) as u64;
                } else {
                    let got = meter.op(|| t.get(key))?;
                    let got = got.as_ref().map(AsRef::as_ref);
                    let ok = got.is_some_and(|g| {
                        g.len() == ReadHeavy::VALUE && g[..4] == versions[i].to_le_bytes()
                    });
                    if !ok {
                        bail!(
                            "read-heavy: get of {} returned {}, expected version {}",
                            show_key(key),
                            describe(got),
                            versions[i]
                        );
                    }
                }
            }
            Ok((meter, versions))
        })?;
        let mut out = Outcome::default();
        for (meter, versions) in results {
            out.absorb(meter);
            for (total, v) in self.versions.iter_mut().zip(versions) {
                *total += v;
            }
        }
        out.notes
            .push("every get was checked against the latest version".into());
        Ok(out)
    }

    fn verify<T: Target>(&self, t: &T) -> Result<u64> {
        let mut checker = Checker::default();
        let mut v = [0; ReadHeavy::VALUE];
        for i in 0..self.keys {
            self.value(i, self.versions.get(i).copied().unwrap_or(0), &mut v);
            checker.check_get(t, &ReadHeavy::key(i), Some(&v))?;
        }
        checker.finish()
    }
}

// ---------------------------------------------------------------------------
// 6. TTL churn

/// One key written by a ttl-churn thread (its id is its index in the
/// thread's list): when it was written and with which TTL, which bound its
/// deadline.
#[derive(Debug, Clone, Copy)]
struct Written {
    /// [`unix_millis`] just before the write.
    at: u64,
    /// Milliseconds the clock moved during the write.
    took: u32,
    ttl: u32,
}

impl Written {
    /// The earliest deadline the store can have given the key.
    fn earliest(&self) -> u64 {
        self.at + u64::from(self.ttl)
    }

    /// The latest.
    fn latest(&self) -> u64 {
        self.earliest() + u64::from(self.took)
    }

    /// What a read between `r0` and `r1` (the clock just before and just
    /// after it) must find. A store treats a value as live while its clock
    /// is before the deadline, and its clock read during the op lies in
    /// `[r0, r1]`.
    fn due(&self, r0: u64, r1: u64) -> Due {
        if r1 < self.earliest() {
            Due::Live
        } else if r0 >= self.latest() {
            Due::Expired
        } else {
            Due::Either
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The deadline has not passed: the value must be there.
    Live,
    /// The deadline has passed: the key must be absent.
    Expired,
    /// The read and the deadline fell in the same millisecond or two:
    /// either is right (a value, if there, must still be the right one).
    Either,
}

/// Checked reads, by what they had to find.
#[derive(Debug, Default, Clone, Copy)]
struct DueCounts {
    live: u64,
    expired: u64,
    either: u64,
}

impl DueCounts {
    fn add(&mut self, d: Due) {
        match d {
            Due::Live => self.live += 1,
            Due::Expired => self.expired += 1,
            Due::Either => self.either += 1,
        }
    }

    fn merge(&mut self, o: DueCounts) {
        self.live += o.live;
        self.expired += o.expired;
        self.either += o.either;
    }
}

/// A session store or task-lease table: 2 threads write new keys
/// (`ttl/{thread}/{id}`, 100-300 B) with short TTLs, and read back keys
/// written in the last 3 s, checking each read against the key's deadline:
/// present with its value while the TTL has not passed, absent once it
/// has. Most TTLs are 250 ms to 2 s, so the live set stays bounded while
/// most keys written have expired; 5 % are 20-40 s leases, still live when
/// the store is reopened and checked.
///
/// The ops are paced (`RATE` ops/s over both threads), because expiry runs
/// on wall-clock time: at the same pace every target holds the same live
/// set and has the same number of keys to expire, so device bytes, disk
/// space and memory compare like for like. A target that cannot keep the
/// pace runs flat out and falls behind (reported); the share of the
/// threads' time spent inside ops is reported as well.
pub struct TtlChurn {
    seed: u64,
    ops: u64,
    threads: usize,
    /// Ops per second, all threads together.
    rate: f64,
    /// Per mille of the ops that write a new key (the rest read).
    write_per_mille: u64,
    /// TTL range of most keys (ms, inclusive).
    short_ttl: (u32, u32),
    /// TTL range of the leases (ms, inclusive).
    lease_ttl: (u32, u32),
    lease_per_mille: u64,
    /// Reads pick a key written within this many ms.
    read_window_ms: u64,
    /// Per thread, every key written, after the run.
    written: Vec<Vec<Written>>,
    /// What `verify` found, for the report.
    verified: parking_lot::Mutex<Vec<String>>,
}

impl TtlChurn {
    pub const OPS: u64 = 500_000;
    pub const RATE: f64 = 100_000.0;
    const MIN_VALUE: usize = 100;
    const MAX_VALUE: usize = 300;

    pub fn new(p: Params) -> TtlChurn {
        TtlChurn {
            seed: p.seed,
            ops: p.scaled(TtlChurn::OPS, 1_000),
            threads: 2,
            rate: TtlChurn::RATE,
            write_per_mille: 600,
            short_ttl: (250, 2_000),
            lease_ttl: (20_000, 40_000),
            lease_per_mille: 50,
            read_window_ms: 3_000,
            written: Vec::new(),
            verified: parking_lot::Mutex::default(),
        }
    }

    /// `ttl/TT/IIIIIIIIII`: thread and id in decimal, fixed width.
    fn key(th: usize, id: u64) -> [u8; 17] {
        let mut k = *b"ttl/00/0000000000";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for b in k[at..at + width].iter_mut().rev() {
                *b = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(4, 2, th as u64);
        put(7, 10, id);
        k
    }

    fn ttl_ms(&self, th: usize, id: u64) -> u32 {
        let h = hash3(self.seed, 60 + th as u64, id);
        let (lo, hi) = if h % 1000 < self.lease_per_mille {
            self.lease_ttl
        } else {
            self.short_ttl
        };
        lo + ((h >> 16) % u64::from(hi - lo + 1)) as u32
    }

    fn value(&self, th: usize, id: u64, buf: &mut Vec<u8>) {
        let h = hash3(self.seed, 70 + th as u64, id);
        let span = (TtlChurn::MAX_VALUE - TtlChurn::MIN_VALUE + 1) as u64;
        buf.resize(TtlChurn::MIN_VALUE + (h % span) as usize, 0);
        fill(buf, h);
        buf[..8].copy_from_slice(&id.to_le_bytes());
    }

    /// Checks what a read of key `id` of thread `th` found.
    #[allow(clippy::too_many_arguments)]
    fn check_read(
        &self,
        th: usize,
        id: u64,
        w: &Written,
        (r0, r1): (u64, u64),
        found: Option<&[u8]>,
        counts: &mut DueCounts,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let due = w.due(r0, r1);
        self.value(th, id, buf);
        let ok = match (due, found) {
            (Due::Expired, None) | (Due::Either, None) => true,
            (Due::Live, Some(v)) | (Due::Either, Some(v)) => v == &buf[..],
            _ => false,
        };
        if !ok {
            bail!(
                "ttl-churn: get of {} returned {}, expected {} (TTL {} ms, deadline between {} \
                 and {} ms since the epoch, read between {r0} and {r1})",
                show_key(&TtlChurn::key(th, id)),
                describe(found),
                match due {
                    Due::Expired => "no value (expired)".to_string(),
                    _ => describe(Some(buf)),
                },
                w.ttl,
                w.earliest(),
                w.latest()
            );
        }
        counts.add(due);
        Ok(())
    }
}

impl Workload for TtlChurn {
    fn describe(&self) -> String {
        format!(
            "{} ops paced at {} ops/s: {} % set_with_ttl of new keys x 100-300 B (TTL {}-{} ms; \
             {} % leases of {}-{} s), {} % gets of keys written in the last {} s, each checked \
             against its deadline",
            self.ops,
            self.rate,
            self.write_per_mille / 10,
            self.short_ttl.0,
            self.short_ttl.1,
            self.lease_per_mille / 10,
            self.lease_ttl.0 / 1000,
            self.lease_ttl.1 / 1000,
            100 - self.write_per_mille / 10,
            self.read_window_ms / 1000
        )
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn tuning(&self, base: Tuning, target: TargetKind) -> (Tuning, Option<String>) {
        let how = match target {
            TargetKind::Millpond => {
                "expiry: Engine::set_with_ttl; the engine's purger (every 100 ms) deletes expired \
                 keys from memory, the next flush from disk"
            }
            TargetKind::Sled => {
                "expiry emulated: 8-byte deadline + value in one tree, deadline||key in an index \
                 tree, both written in one sled transaction; gets check the deadline; a \
                 background thread sweeps expired entries every 100 ms (256 per transaction)"
            }
            TargetKind::Fjall => {
                "expiry emulated as on sled, in two fjall keyspaces written in one batch under \
                 the key's stripe lock; a background thread sweeps expired entries every 100 ms \
                 (256 per batch)"
            }
            TargetKind::Redb => {
                "expiry emulated as on sled, in two redb tables written in one write \
                 transaction; a background thread sweeps expired entries every 100 ms (256 per \
                 transaction)"
            }
            TargetKind::InMemory => {
                "expiry emulated: deadline beside each value, an ordered (deadline, key) index \
                 per shard under the shard's lock; gets check the deadline; a background thread \
                 sweeps expired entries every 100 ms"
            }
        };
        (base, Some(how.into()))
    }

    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        let threads = self.threads;
        let this = &*self;
        // Between two ops of one thread.
        let interval = Duration::from_secs_f64(threads as f64 / this.rate);
        let started = Instant::now();
        let results = in_threads(threads, |th| {
            let ops =
                this.ops / threads as u64 + u64::from((th as u64) < this.ops % threads as u64);
            let mut rng = Rng::new(hash3(this.seed, 62, th as u64));
            let mut meter = Meter::new(ops);
            let mut written: Vec<Written> =
                Vec::with_capacity((ops * this.write_per_mille / 1000 + 64) as usize);
            let mut counts = DueCounts::default();
            let mut max_lag = Duration::ZERO;
            let mut value = Vec::with_capacity(TtlChurn::MAX_VALUE);
            for i in 0..ops {
                if i % 64 == 0 {
                    let due = started + interval.mul_f64(i as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else {
                        max_lag = max_lag.max(now - due);
                    }
                }
                if written.is_empty() || rng.below(1000) < this.write_per_mille {
                    let id = written.len() as u64;
                    let key = TtlChurn::key(th, id);
                    let ttl = this.ttl_ms(th, id);
                    this.value(th, id, &mut value);
                    let at = unix_millis();
                    meter.op(|| t.set_with_ttl(&key, &value, Duration::from_millis(ttl.into())))?;
                    let took = unix_millis().saturating_sub(at);
                    written.push(Written {
                        at,
                        took: u32::try_from(took).unwrap_or(u32::MAX),
                        ttl,
                    });
                    meter.logical_bytes += (key.len() + value.len()) as u64;
                } else {
                    let now = unix_millis();
                    let from = written
                        .partition_point(|w| w.at + this.read_window_ms < now)
                        .min(written.len() - 1);
                    let id = (from + rng.below((written.len() - from) as u64) as usize) as u64;
                    let key = TtlChurn::key(th, id);
                    let r0 = unix_millis();
                    let got = meter.op(|| t.get(&key))?;
                    let r1 = unix_millis();
                    let w = &written[id as usize];
                    let found = got.as_ref().map(AsRef::as_ref);
                    this.check_read(th, id, w, (r0, r1), found, &mut counts, &mut value)?;
                }
            }
            Ok((meter, written, counts, max_lag))
        })?;
        let elapsed = started.elapsed();
        let mut out = Outcome::default();
        let mut counts = DueCounts::default();
        let mut lag = Duration::ZERO;
        self.written.clear();
        for (meter, written, c, max_lag) in results {
            out.absorb(meter);
            self.written.push(written);
            counts.merge(c);
            lag = lag.max(max_lag);
        }
        let planned = Duration::from_secs_f64(self.ops as f64 / self.rate);
        out.notes.push(format!(
            "gets checked during the run: {} live and present, {} expired and absent, {} within \
             a millisecond of their deadline (either accepted)",
            counts.live, counts.expired, counts.either
        ));
        let busy = out.latencies.mean() as f64 * out.ops as f64
            / (threads as f64 * elapsed.as_secs_f64() * 1e9);
        let pace = if lag > Duration::from_millis(50) {
            format!(
                "FELL BEHIND the pace: ops took {:.2} s for a planned {:.2} s (up to {:.0} ms late)",
                elapsed.as_secs_f64(),
                planned.as_secs_f64(),
                lag.as_secs_f64() * 1e3
            )
        } else {
            format!(
                "kept the pace ({:.2} s for a planned {:.2} s, at most {:.1} ms late)",
                elapsed.as_secs_f64(),
                planned.as_secs_f64(),
                lag.as_secs_f64() * 1e3
            )
        };
        out.notes.push(format!(
            "{pace}; the threads spent {:.1} % of that time inside ops",
            busy * 100.0
        ));
        Ok(out)
    }

    fn verify<T: Target>(&self, t: &T) -> Result<u64> {
        // First, before the store's purger or sweeper gets going again:
        // what it still holds with a deadline.
        let held = t.ttl_entries()?;
        let now = unix_millis();
        let all = || self.written.iter().flatten();
        let surely_live = all().filter(|w| w.earliest() > now).count() as u64;
        let maybe_live = all().filter(|w| w.latest() > now).count() as u64;
        let total = all().count() as u64;

        let mut checker = Checker::default();
        let mut counts = DueCounts::default();
        let mut buf = Vec::with_capacity(TtlChurn::MAX_VALUE);
        for (th, written) in self.written.iter().enumerate() {
            for (id, w) in written.iter().enumerate() {
                let key = TtlChurn::key(th, id as u64);
                let r0 = unix_millis();
                let got = t.get(&key)?;
                let r1 = unix_millis();
                let found = got.as_ref().map(AsRef::as_ref);
                let due = w.due(r0, r1);
                counts.add(due);
                self.value(th, id as u64, &mut buf);
                let want = match (due, found) {
                    (Due::Expired, _) | (Due::Either, None) => None,
                    (Due::Live, _) | (Due::Either, Some(_)) => Some(&buf[..]),
                };
                checker.check(&key, found, want);
            }
        }
        let mut notes = self.verified.lock();
        notes.clear();
        notes.push(format!(
            "final check after reopening: {} keys live and present, {} expired and absent, {} \
             within a millisecond of their deadline (either accepted)",
            counts.live, counts.expired, counts.either
        ));
        let lingering = held.saturating_sub(maybe_live);
        let live = if surely_live == maybe_live {
            format!("{surely_live}")
        } else {
            format!("{surely_live}-{maybe_live}")
        };
        notes.push(format!(
            "expired entries still held at reopen: {lingering} ({held} entries with a deadline, \
             {live} of the {total} keys written still live)"
        ));
        drop(notes);
        checker.finish()
    }

    fn verify_notes(&self) -> Vec<String> {
        self.verified.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_has_the_expected_shape() {
        let n = 10_000;
        let s = 0.99;
        let zipf = Zipf::new(n, s);
        let mut rng = Rng::new(7);
        let mut hits = vec![0u64; n];
        let draws = 1_000_000;
        for _ in 0..draws {
            hits[zipf.sample(&mut rng)] += 1;
        }
        // P(rank 0) = 1 / H(n, s).
        let h: f64 = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).sum();
        let p0 = hits[0] as f64 / draws as f64;
        assert!(
            (p0 - 1.0 / h).abs() < 0.005,
            "P(rank 0) = {p0}, want {}",
            1.0 / h
        );
        // Rank 0 is drawn 2^s times as often as rank 1, 10^s as often as rank 9.
        let r01 = hits[0] as f64 / hits[1] as f64;
        assert!((r01 - 2f64.powf(s)).abs() < 0.1, "rank0/rank1 = {r01}");
        let r09 = hits[0] as f64 / hits[9] as f64;
        assert!((r09 - 10f64.powf(s)).abs() < 0.8, "rank0/rank9 = {r09}");
        // Heavy head: the top 1 % of ranks take well over a third of draws.
        let top: u64 = hits[..n / 100].iter().sum();
        assert!(top as f64 / draws as f64 > 0.4);
        // Every rank is reachable, even the last.
        assert!(hits[n - 1] > 0);
    }

    #[test]
    fn the_rng_is_deterministic_and_uniform_enough() {
        let a: Vec<u64> = {
            let mut r = Rng::new(1);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(1);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(2);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[r.below(10) as usize] += 1;
        }
        assert!(buckets.iter().all(|&c| (9_000..11_000).contains(&c)));
    }

    #[test]
    fn a_permutation_is_a_permutation() {
        let mut p = permutation(1000, 3);
        assert_ne!(p[..10], (0..10).collect::<Vec<u32>>()[..]);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn session_updates_always_change_the_value() {
        let s = Sessions::new(Params {
            scale: 1.0,
            seed: 9,
        });
        let mut v = s.initial(5);
        assert!((2048..=8192).contains(&v.len()));
        let before = v.clone();
        Sessions::update(9, 5, &mut v);
        assert_ne!(v, before);
        assert_eq!(v.len(), before.len());
        assert_eq!(v[..8], 1u64.to_le_bytes());
    }

    use crate::bench::targets::MemoryTarget;
    use std::path::Path;
    use std::time::Duration;

    fn tuning() -> Tuning {
        Tuning {
            write_delay: Duration::from_millis(10),
            max_dirty_bytes: Some(1 << 20),
            flush_threads: 1,
            inline_threshold: None,
            compression: None,
        }
    }

    /// Runs `w` on a fresh in-memory store; returns the store.
    fn run_on_memory<W: Workload>(w: &mut W) -> MemoryTarget {
        let t = MemoryTarget::open(Path::new("unused"), &tuning()).unwrap();
        w.prepare(&t).unwrap();
        let out = w.run(&t).unwrap();
        assert!(out.ops > 0);
        assert_eq!(out.latencies.len() as u64, out.ops);
        assert!(out.logical_bytes > 0);
        t
    }

    #[test]
    fn every_workload_checks_out_on_a_correct_store() {
        let p = Params {
            scale: 0.002,
            seed: 5,
        };
        let mut w = Sessions::new(p);
        let t = run_on_memory(&mut w);
        assert_eq!(w.verify(&t).unwrap(), Sessions::KEYS as u64);
        let mut w = Tasks::new(p);
        let t = run_on_memory(&mut w);
        assert_eq!(w.verify(&t).unwrap(), 3 * w.tasks);
        let mut w = Journal::new(p);
        let t = run_on_memory(&mut w);
        assert_eq!(w.verify(&t).unwrap(), w.events);
        let mut w = UniformInsert::new(p);
        let t = run_on_memory(&mut w);
        assert_eq!(w.verify(&t).unwrap(), w.keys);
        let mut w = ReadHeavy::new(p);
        let t = run_on_memory(&mut w);
        assert_eq!(w.verify(&t).unwrap(), ReadHeavy::KEYS as u64);
        let mut w = quick_ttl_churn(5);
        let t = run_on_memory(&mut w);
        let written: u64 = w.written.iter().map(|v| v.len() as u64).sum();
        assert_eq!(w.verify(&t).unwrap(), written);
    }

    /// A ttl-churn of ~0.4 s with TTLs of 20-80 ms, so that keys expire
    /// during the run; leases of 10 minutes, so that they are live at the
    /// end however slowly the machine runs it.
    fn quick_ttl_churn(seed: u64) -> TtlChurn {
        let mut w = TtlChurn::new(Params { scale: 1.0, seed });
        w.ops = 8_000;
        w.rate = 20_000.0;
        w.short_ttl = (20, 80);
        w.lease_ttl = (600_000, 600_000);
        w.read_window_ms = 300;
        w
    }

    /// The number in a note, after `what`.
    fn count_in(notes: &[String], what: &str) -> u64 {
        notes
            .iter()
            .find_map(|n| {
                let at = n.find(what)?;
                n[..at].split_whitespace().last()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no \"{what}\" in {notes:?}"))
    }

    #[test]
    fn ttl_churn_checks_expiry_on_every_target() {
        use crate::bench::targets::{FjallTarget, MillpondTarget, RedbTarget, SledTarget};
        fn on<T: Target>(dir: &Path) {
            let mut w = quick_ttl_churn(8);
            let t = T::open(dir, &tuning()).unwrap();
            let out = w.run(&t).unwrap();
            assert_eq!(out.ops, 8_000);
            // Reads found both live and expired keys.
            assert!(
                count_in(&out.notes, "live and present") > 100,
                "{:?}",
                out.notes
            );
            assert!(
                count_in(&out.notes, "expired and absent") > 100,
                "{:?}",
                out.notes
            );
            let closed = t.close().unwrap();
            let t = T::reopen(dir, &tuning(), closed.handle).unwrap();
            let checked = w.verify(&t).unwrap();
            assert_eq!(
                checked,
                w.written.iter().map(|v| v.len() as u64).sum::<u64>()
            );
            let notes = w.verify_notes();
            // The leases are live at the end, the short keys are not.
            assert!(count_in(&notes, "keys live and present") > 50, "{notes:?}");
            assert!(count_in(&notes, "expired and absent") > 2_000, "{notes:?}");
            assert!(notes
                .iter()
                .any(|n| n.contains("expired entries still held")));
            t.close().unwrap();
        }
        let tmp = tempfile::Builder::new()
            .prefix("millpond-ttl-churn-")
            .tempdir()
            .unwrap();
        let base = tmp.path();
        on::<MemoryTarget>(&base.join("mem"));
        on::<MillpondTarget>(&base.join("millpond"));
        on::<SledTarget>(&base.join("sled"));
        on::<FjallTarget>(&base.join("fjall"));
        on::<RedbTarget>(&base.join("redb"));
    }

    #[test]
    fn ttl_churn_fails_on_a_resurrected_or_lost_key() {
        let mut w = quick_ttl_churn(9);
        let t = run_on_memory(&mut w);
        w.verify(&t).unwrap();
        // An expired key written back without a TTL.
        let expired = (0..w.written[0].len())
            .find(|&id| w.written[0][id].latest() < unix_millis())
            .unwrap();
        let key = TtlChurn::key(0, expired as u64);
        let mut v = Vec::new();
        w.value(0, expired as u64, &mut v);
        t.set(&key, &v).unwrap();
        let err = w.verify(&t).unwrap_err().to_string();
        assert!(err.contains("1 of"), "{err}");
        t.modify(&key, |v| *v = None).unwrap();
        w.verify(&t).unwrap();
        // A live lease lost.
        let lease = (0..w.written[1].len())
            .find(|&id| w.written[1][id].earliest() > unix_millis() + 1_000)
            .unwrap();
        t.modify(&TtlChurn::key(1, lease as u64), |v| *v = None)
            .unwrap();
        let err = w.verify(&t).unwrap_err().to_string();
        assert!(err.contains("1 of"), "{err}");
    }

    #[test]
    fn ttl_churn_keys_and_ttls() {
        assert_eq!(&TtlChurn::key(3, 1_234_567), b"ttl/03/0001234567");
        let w = TtlChurn::new(Params {
            scale: 1.0,
            seed: 1,
        });
        let ttls: Vec<u32> = (0..10_000).map(|id| w.ttl_ms(0, id)).collect();
        let leases = ttls.iter().filter(|&&t| t >= 20_000).count();
        assert!((400..600).contains(&leases), "{leases} leases");
        assert!(ttls
            .iter()
            .all(|&t| (250..=2_000).contains(&t) || (20_000..=40_000).contains(&t)));
        let mut v = Vec::new();
        w.value(1, 5, &mut v);
        assert!((100..=300).contains(&v.len()));
        let first = v.clone();
        w.value(1, 6, &mut v);
        assert_ne!(first, v);
    }

    #[test]
    fn a_wrong_final_state_fails_verification() {
        let p = Params {
            scale: 0.002,
            seed: 6,
        };
        let mut w = Journal::new(p);
        let t = run_on_memory(&mut w);
        // One event silently rewritten, one lost.
        t.set(&3u64.to_be_bytes(), b"not the event").unwrap();
        t.modify(&7u64.to_be_bytes(), |v| *v = None).unwrap();
        let err = w.verify(&t).unwrap_err().to_string();
        assert!(err.contains("2 of 1000 keys differ"), "{err}");

        let mut w = Sessions::new(p);
        let t = run_on_memory(&mut w);
        // A lost update: one session one version behind.
        let hot = (0..Sessions::KEYS).max_by_key(|&i| w.counts[i]).unwrap();
        w.counts[hot] += 1;
        assert!(w.verify(&t).is_err());
    }

    #[test]
    fn uniform_keys_are_unique() {
        let u = UniformInsert::new(Params {
            scale: 0.01,
            seed: 1,
        });
        let mut keys: Vec<[u8; 10]> = (0..10_000).map(|i| u.key(i)).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 10_000);
    }
}
