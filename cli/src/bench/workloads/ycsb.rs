//! The YCSB core workloads (Cooper et al., "Benchmarking Cloud Serving
//! Systems with YCSB", SoCC 2010): a load phase and the read/update mixes
//! A, B, C and F, with YCSB's record shape and key popularity.
//!
//! - Records: `RECORDS` (scaled) keys `user` + 20 digits, in hashed order
//!   (YCSB's default `insertorder=hashed`: inserts land all over the key
//!   range), each 1 KiB.
//! - Key choice: [`YcsbZipfian`], YCSB's zipfian generator (constant 0.99)
//!   over the record count, its ranks scattered over the records by a seeded
//!   permutation (YCSB's scrambled variant hashes the rank instead; a
//!   permutation keeps every record reachable).
//! - Every phase after the load runs on a store preloaded, untimed, by the
//!   load phase and then made durable, so the records it reads are on disk
//!   (millpond: flushed).
//!
//! Every value records who wrote it: `id (8 bytes) | writer (4) | version
//! (4)`, then bytes that depend only on those three. Writer 0 is the load
//! (and the read-modify-writes of F, which count versions per record);
//! writer `t + 1` is thread `t` of an A or B run, which counts its own
//! versions per record. Reads are checked against what the reading thread
//! knows (its own last write, never an older value); after reopening, each
//! record must hold the last write of one of the threads that wrote it (two
//! threads' blind writes to one key may land in either order), byte for
//! byte, or its loaded value if none did.

use std::time::Instant;

use anyhow::{bail, Result};

use super::super::measure::Latencies;
use super::super::targets::{describe, show_key, Target};
use super::{fill, hash3, in_threads, mix64, permutation, Checker, Meter, Outcome, Params, Rng};

/// YCSB's zipfian generator (the method of Gray et al., "Quickly Generating
/// Billion-Record Synthetic Databases", SIGMOD 1994, as YCSB's
/// `ZipfianGenerator` uses it): ranks `0..n`, rank 0 the most popular,
/// P(rank k) close to `1 / ((k + 1)^theta * zeta(n, theta))`, in O(1) per
/// draw after an O(n) setup. Ranks 0 and 1 are drawn with exactly their
/// Zipf probability, the tail by a closed-form approximation. Deterministic
/// for a given [`Rng`] seed.
#[derive(Debug, Clone)]
pub struct YcsbZipfian {
    items: u64,
    /// zeta(n, theta) = sum over i in 1..=n of 1 / i^theta.
    zetan: f64,
    alpha: f64,
    eta: f64,
    /// 1 + 0.5^theta: below it (times zetan), rank 1.
    second: f64,
}

impl YcsbZipfian {
    /// YCSB's `zipfianconstant`.
    pub const THETA: f64 = 0.99;

    /// Over `items` ranks (at least 2), with exponent `theta` (0 < theta < 1).
    pub fn new(items: u64, theta: f64) -> YcsbZipfian {
        assert!(items >= 2, "a zipfian over fewer than 2 items");
        assert!(theta > 0.0 && theta < 1.0, "zipfian constant {theta}");
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(items);
        let zeta2 = zeta(2);
        YcsbZipfian {
            items,
            zetan,
            alpha: 1.0 / (1.0 - theta),
            eta: (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
            second: 1.0 + 0.5f64.powf(theta),
        }
    }

    /// One rank in `0..items`.
    #[inline]
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.second {
            return 1;
        }
        let r = self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        (r as u64).min(self.items - 1)
    }

    /// The exact Zipf probability of `rank`, for comparison.
    #[cfg(test)]
    fn probability(&self, rank: u64) -> f64 {
        let theta = 1.0 - 1.0 / self.alpha;
        1.0 / ((rank + 1) as f64).powf(theta) / self.zetan
    }
}

/// Which YCSB phase a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Insert every record (timed).
    Load,
    /// 50 % reads, 50 % updates (blind overwrites of the whole record).
    A,
    /// 95 % reads, 5 % updates.
    B,
    /// 100 % reads.
    C,
    /// 50 % reads, 50 % read-modify-writes (one atomic `modify` each).
    F,
}

impl Phase {
    /// Per mille of the ops that write.
    fn write_per_mille(self) -> u64 {
        match self {
            Phase::Load => 1000,
            Phase::A | Phase::F => 500,
            Phase::B => 50,
            Phase::C => 0,
        }
    }
}

/// One YCSB phase.
pub struct Ycsb {
    phase: Phase,
    seed: u64,
    records: u64,
    ops: u64,
    threads: usize,
    /// A and B: per thread, per record, the version of its last write (0:
    /// none). F: one list, the read-modify-writes per record.
    written: Vec<Vec<u32>>,
}

/// A record's value, for one (writer, version).
const VALUE: usize = 1024;

impl Ycsb {
    pub const RECORDS: u64 = 100_000;
    pub const OPS: u64 = 500_000;

    pub fn new(p: Params, phase: Phase) -> Ycsb {
        Ycsb {
            phase,
            seed: p.seed,
            records: p.scaled(Ycsb::RECORDS, 1_000),
            ops: p.scaled(Ycsb::OPS, 1_000),
            threads: 2,
            written: Vec::new(),
        }
    }

    /// `user` + 20 digits; distinct for distinct ids (`mix64` is a
    /// bijection), in an order unrelated to the id's.
    fn key(&self, id: u64) -> Vec<u8> {
        format!("user{:020}", mix64(hash3(self.seed, 80, 0) ^ id)).into_bytes()
    }

    fn value(&self, id: u64, writer: u32, version: u32, buf: &mut [u8; VALUE]) {
        fill(
            buf,
            hash3(
                self.seed,
                81 + u64::from(writer),
                id << 32 | u64::from(version),
            ),
        );
        buf[..8].copy_from_slice(&id.to_le_bytes());
        buf[8..12].copy_from_slice(&writer.to_le_bytes());
        buf[12..16].copy_from_slice(&version.to_le_bytes());
    }

    /// `(id, writer, version)` of a stored value, if it has the shape of one.
    fn header(v: &[u8]) -> Option<(u64, u32, u32)> {
        if v.len() != VALUE {
            return None;
        }
        let id = u64::from_le_bytes(v[..8].try_into().ok()?);
        let writer = u32::from_le_bytes(v[8..12].try_into().ok()?);
        let version = u32::from_le_bytes(v[12..16].try_into().ok()?);
        Some((id, writer, version))
    }

    /// Inserts every record from `threads` threads (thread `t` takes ids
    /// `t, t + threads, ...`), each timed.
    fn load<T: Target>(&self, t: &T) -> Result<Outcome> {
        let threads = self.threads as u64;
        let results = in_threads(self.threads, |th| {
            let th = th as u64;
            let mine = (self.records + threads - 1 - th) / threads;
            let mut meter = Meter::new(mine);
            let mut v = [0; VALUE];
            for j in 0..mine {
                let id = th + j * threads;
                let key = self.key(id);
                self.value(id, 0, 0, &mut v);
                meter.op(|| t.set(&key, &v))?;
                meter.logical_bytes += (key.len() + VALUE) as u64;
            }
            Ok(meter)
        })?;
        let mut out = Outcome::default();
        for meter in results {
            out.absorb(meter);
        }
        Ok(out)
    }

    /// The timed mix of A, B, C or F.
    fn mix<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        let phase = self.phase;
        let zipf = YcsbZipfian::new(self.records, YcsbZipfian::THETA);
        let perm = permutation(self.records as usize, hash3(self.seed, 82, 0));
        let keys: Vec<Vec<u8>> = (0..self.records).map(|id| self.key(id)).collect();
        let threads = self.threads as u64;
        let this = &*self;
        let results = in_threads(self.threads, |th| {
            let ops = this.ops / threads + u64::from((th as u64) < this.ops % threads);
            let mut rng = Rng::new(hash3(this.seed, 83, th as u64));
            let mut meter = Meter::new(ops);
            let mut reads = Latencies::with_capacity(ops as usize);
            let mut writes = Latencies::with_capacity(ops as usize / 2);
            // A, B: this thread's last version per record; F: the newest
            // version this thread has seen or made.
            let mut mine = vec![0u32; keys.len()];
            let mut v = [0; VALUE];
            let me = th as u32 + 1;
            for _ in 0..ops {
                let id = u64::from(perm[zipf.next(&mut rng) as usize]);
                let key = &keys[id as usize];
                let write = rng.below(1000) < phase.write_per_mille();
                let started = Instant::now();
                if !write {
                    let got = t.get(key)?;
                    let ns = elapsed_ns(started);
                    meter.latencies.record_nanos(ns);
                    reads.record_nanos(ns);
                    let got = got.as_ref().map(AsRef::as_ref);
                    let head = got.and_then(Ycsb::header);
                    let ok = match (phase, head) {
                        (_, Some((i, _, _))) if i != id => false,
                        (Phase::C, Some((_, w, ver))) => w == 0 && ver == 0,
                        (Phase::F, Some((_, w, ver))) => {
                            let fresh = w == 0 && ver >= mine[id as usize];
                            mine[id as usize] = mine[id as usize].max(ver);
                            fresh
                        }
                        (_, Some((_, w, ver))) if w == me => ver == mine[id as usize],
                        (_, Some((_, 0, ver))) => ver == 0 && mine[id as usize] == 0,
                        (_, Some((_, w, ver))) => w <= threads as u32 && ver > 0,
                        (_, None) => false,
                    };
                    if !ok {
                        bail!(
                            "ycsb: get of {} (record {id}) returned {}, not what thread {th} \
                             could see (its last version {})",
                            show_key(key),
                            describe(got),
                            mine[id as usize]
                        );
                    }
                } else if phase == Phase::F {
                    let made = t.modify(key, |cur| {
                        let cur = cur.as_mut()?;
                        let (i, w, ver) = Ycsb::header(cur)?;
                        if i != id || w != 0 {
                            return None;
                        }
                        let mut next = [0; VALUE];
                        this.value(id, 0, ver + 1, &mut next);
                        cur.copy_from_slice(&next);
                        Some(ver + 1)
                    });
                    let ns = elapsed_ns(started);
                    meter.latencies.record_nanos(ns);
                    writes.record_nanos(ns);
                    let Some(ver) = made? else {
                        bail!(
                            "ycsb-f: record {id} ({}) was missing or not a record",
                            show_key(key)
                        );
                    };
                    mine[id as usize] = ver;
                    meter.logical_bytes += (key.len() + VALUE) as u64;
                } else {
                    let ver = mine[id as usize] + 1;
                    this.value(id, me, ver, &mut v);
                    // Timed from here: making the value is the workload's
                    // work, not the store's.
                    let started = Instant::now();
                    t.set(key, &v)?;
                    let ns = elapsed_ns(started);
                    meter.latencies.record_nanos(ns);
                    writes.record_nanos(ns);
                    mine[id as usize] = ver;
                    meter.logical_bytes += (key.len() + VALUE) as u64;
                }
            }
            Ok((meter, reads, writes, mine))
        })?;
        let mut out = Outcome::default();
        let (mut reads, mut writes) = (Latencies::default(), Latencies::default());
        self.written.clear();
        let mut modifies = vec![0u32; keys.len()];
        for (meter, r, w, mine) in results {
            out.absorb(meter);
            reads.merge(r);
            writes.merge(w);
            if phase == Phase::F {
                // Versions count every thread's modifies: the newest wins.
                for (m, v) in modifies.iter_mut().zip(mine) {
                    *m = (*m).max(v);
                }
            } else {
                self.written.push(mine);
            }
        }
        if phase == Phase::F {
            self.written.push(modifies);
        }
        let what = if phase == Phase::F {
            "read-modify-writes"
        } else {
            "updates"
        };
        let mut kind = |name: &str, l: &mut Latencies| {
            if l.len() > 0 {
                out.notes.push(format!(
                    "{name}: {} ops, p50 {}, p99 {}, mean {}",
                    l.len(),
                    super::super::report::fmt_ns(l.quantile(0.5)),
                    super::super::report::fmt_ns(l.quantile(0.99)),
                    super::super::report::fmt_ns(l.mean())
                ));
            }
        };
        kind("reads", &mut reads);
        kind(what, &mut writes);
        let touched = match phase {
            Phase::F => self.written[0].iter().filter(|&&c| c > 0).count(),
            _ => (0..keys.len())
                .filter(|&i| self.written.iter().any(|w| w[i] > 0))
                .count(),
        };
        if phase != Phase::C {
            out.notes.push(format!(
                "{touched} of {} records written during the run",
                self.records
            ));
        }
        Ok(out)
    }
}

fn elapsed_ns(started: Instant) -> u32 {
    u32::try_from(started.elapsed().as_nanos()).unwrap_or(u32::MAX)
}

impl super::Workload for Ycsb {
    fn describe(&self) -> String {
        let shape = format!("{} records x 1 KiB", self.records);
        let mix = match self.phase {
            Phase::Load => return format!("insert {shape}, hashed key order (YCSB load)"),
            Phase::A => "50 % reads, 50 % updates",
            Phase::B => "95 % reads, 5 % updates",
            Phase::C => "100 % reads",
            Phase::F => "50 % reads, 50 % read-modify-writes",
        };
        format!(
            "{} ops: {mix}, zipfian {} over {shape} (preloaded by the load phase, durable)",
            self.ops,
            YcsbZipfian::THETA
        )
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn prepare<T: Target>(&mut self, t: &T) -> Result<()> {
        if self.phase != Phase::Load {
            self.load(t)?;
        }
        Ok(())
    }

    fn run<T: Target>(&mut self, t: &T) -> Result<Outcome> {
        match self.phase {
            Phase::Load => self.load(t),
            _ => self.mix(t),
        }
    }

    fn verify<T: Target>(&self, t: &T) -> Result<u64> {
        let mut checker = Checker::default();
        let mut want = [0; VALUE];
        for id in 0..self.records {
            let key = self.key(id);
            let found = t.get(&key)?;
            let found = found.as_ref().map(AsRef::as_ref);
            let i = id as usize;
            match self.phase {
                Phase::Load | Phase::C => self.value(id, 0, 0, &mut want),
                Phase::F => self.value(id, 0, self.written[0][i], &mut want),
                Phase::A | Phase::B => {
                    // The last write of the thread that wrote what was
                    // found, if that thread wrote the record at all; else
                    // the last write of any thread that did; else the load.
                    let writer = found
                        .and_then(Ycsb::header)
                        .map(|(_, w, _)| w as usize)
                        .filter(|&w| w >= 1 && self.written.get(w - 1).is_some_and(|l| l[i] > 0))
                        .or_else(|| (1..=self.written.len()).find(|&w| self.written[w - 1][i] > 0));
                    match writer {
                        Some(w) => self.value(id, w as u32, self.written[w - 1][i], &mut want),
                        None => self.value(id, 0, 0, &mut want),
                    }
                }
            }
            checker.check(&key, found, Some(&want));
        }
        checker.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Workload, Zipf};
    use super::*;
    use crate::bench::targets::{MemoryTarget, Tuning};
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn the_ycsb_zipfian_is_deterministic_for_a_seed() {
        let z = YcsbZipfian::new(100_000, YcsbZipfian::THETA);
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..1000).map(|_| z.next(&mut rng)).collect::<Vec<u64>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(9).iter().all(|&r| r < 100_000));
    }

    #[test]
    fn the_ycsb_zipfian_has_the_zipf_shape() {
        let n = 10_000u64;
        let z = YcsbZipfian::new(n, YcsbZipfian::THETA);
        let mut rng = Rng::new(11);
        let draws = 2_000_000u64;
        let mut hits = vec![0u64; n as usize];
        for _ in 0..draws {
            hits[z.next(&mut rng) as usize] += 1;
        }
        let p = |k: usize| hits[k] as f64 / draws as f64;
        // Ranks 0 and 1 are drawn with exactly their Zipf probability.
        for k in 0..2 {
            let want = z.probability(k as u64);
            assert!(
                (p(k) - want).abs() < 0.003,
                "P({k}) = {}, want {want}",
                p(k)
            );
        }
        // The head's mass, against the exact distribution (the tail is an
        // approximation: within a few percent).
        let exact = Zipf::new(n as usize, YcsbZipfian::THETA);
        let mut rng = Rng::new(12);
        let mut exact_hits = vec![0u64; n as usize];
        for _ in 0..draws {
            exact_hits[exact.sample(&mut rng)] += 1;
        }
        for top in [10usize, 100, 1000] {
            let got: u64 = hits[..top].iter().sum();
            let want: u64 = exact_hits[..top].iter().sum();
            let (got, want) = (got as f64 / draws as f64, want as f64 / draws as f64);
            assert!(
                (got - want).abs() < 0.03,
                "top {top} ranks: {got:.3} of draws, exact Zipf {want:.3}"
            );
        }
        // Popularity falls with rank, bucket by bucket (log-spaced).
        let mut last = f64::INFINITY;
        for (lo, hi) in [(0, 1), (1, 10), (10, 100), (100, 1000), (1000, 10_000)] {
            let per_rank = hits[lo..hi].iter().sum::<u64>() as f64 / (hi - lo) as f64;
            assert!(per_rank < last, "ranks {lo}..{hi}: {per_rank} per rank");
            last = per_rank;
        }
        // The tail is reached, up to the last rank's neighbourhood.
        assert!(hits[(n as usize - 100)..].iter().sum::<u64>() > 0);
    }

    fn quick(phase: Phase) -> Ycsb {
        let mut w = Ycsb::new(
            Params {
                scale: 0.01,
                seed: 3,
            },
            phase,
        );
        w.ops = 20_000;
        w
    }

    fn tuning() -> Tuning {
        Tuning {
            write_delay: Duration::from_millis(10),
            max_dirty_bytes: Some(1 << 20),
            flush_threads: 1,
            inline_threshold: None,
            compression: None,
        }
    }

    #[test]
    fn every_ycsb_phase_checks_out_on_a_correct_store() {
        for phase in [Phase::Load, Phase::A, Phase::B, Phase::C, Phase::F] {
            let mut w = quick(phase);
            let t = MemoryTarget::open(Path::new("unused"), &tuning()).unwrap();
            w.prepare(&t).unwrap();
            let out = w.run(&t).unwrap();
            let want = if phase == Phase::Load {
                w.records
            } else {
                w.ops
            };
            assert_eq!(out.ops, want, "{phase:?}");
            assert_eq!(w.verify(&t).unwrap(), w.records, "{phase:?}");
            if phase != Phase::Load {
                assert!(
                    out.notes.iter().any(|n| n.starts_with("reads: ")),
                    "{phase:?}"
                );
            }
        }
    }

    #[test]
    fn a_lost_or_stale_record_fails_the_ycsb_check() {
        let mut w = quick(Phase::A);
        let t = MemoryTarget::open(Path::new("unused"), &tuning()).unwrap();
        w.prepare(&t).unwrap();
        w.run(&t).unwrap();
        w.verify(&t).unwrap();
        // The hottest record, written by both threads: put back an older
        // version of one thread's writes.
        let hot = (0..w.records as usize)
            .max_by_key(|&i| w.written[0][i].min(w.written[1][i]))
            .unwrap();
        assert!(w.written[0][hot] > 1 && w.written[1][hot] > 1);
        let mut old = [0; VALUE];
        w.value(hot as u64, 1, w.written[0][hot] - 1, &mut old);
        t.set(&w.key(hot as u64), &old).unwrap();
        let err = w.verify(&t).unwrap_err().to_string();
        assert!(err.contains("1 of"), "{err}");
        // Either thread's last write is accepted.
        let mut last = [0; VALUE];
        w.value(hot as u64, 2, w.written[1][hot], &mut last);
        t.set(&w.key(hot as u64), &last).unwrap();
        w.verify(&t).unwrap();
        // A record back at its loaded value after being written: lost.
        let mut loaded = [0; VALUE];
        w.value(hot as u64, 0, 0, &mut loaded);
        t.set(&w.key(hot as u64), &loaded).unwrap();
        assert!(w.verify(&t).is_err());

        // F: one read-modify-write lost.
        let mut w = quick(Phase::F);
        let t = MemoryTarget::open(Path::new("unused"), &tuning()).unwrap();
        w.prepare(&t).unwrap();
        w.run(&t).unwrap();
        w.verify(&t).unwrap();
        let hot = (0..w.records as usize)
            .max_by_key(|&i| w.written[0][i])
            .unwrap();
        w.written[0][hot] += 1;
        assert!(w.verify(&t).is_err());
    }

    #[test]
    fn ycsb_keys_are_distinct_and_values_differ_per_write() {
        let w = quick(Phase::A);
        let mut keys: Vec<Vec<u8>> = (0..w.records).map(|i| w.key(i)).collect();
        assert!(keys.iter().all(|k| k.len() == 24 && k.starts_with(b"user")));
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len() as u64, w.records);
        let (mut a, mut b) = ([0; VALUE], [0; VALUE]);
        w.value(5, 1, 1, &mut a);
        w.value(5, 1, 2, &mut b);
        assert_ne!(a, b);
        w.value(5, 2, 1, &mut b);
        assert_ne!(a, b);
        assert_eq!(Ycsb::header(&a), Some((5, 1, 1)));
        assert_eq!(Ycsb::header(&a[..100]), None);
    }
}
