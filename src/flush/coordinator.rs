//! The flush coordinator thread: decides when a cycle runs, runs it, retries
//! failures, and answers the callers waiting on it.
//!
//! A cycle starts when any of these holds (and no retry backoff is running):
//! - the oldest write not yet frozen has waited `write_delay`;
//! - the buffer passed half of `max_dirty_bytes` (a writer set `urgent`);
//! - a checkpoint is waiting (the cycle then ends with a sync);
//! - the journal holds more than `journal::SYNC_AFTER_BYTES` (the cycle
//!   ends with a sync, after which its covered segments are deleted);
//! - a cycle failed earlier and its backoff has passed;
//! - shutdown was asked (final durable cycle, then exit).
//!
//! After [`REOPEN_AFTER`] failures in a row (other than a failed sync, which
//! poisons), the keeper replaces the storage before the next attempt, once
//! its probe shows the medium accepts writes again: a backend that keeps its
//! first I/O error (sled) recovers from a full disk that was freed without a
//! restart. The dirty map and the pending cycle stay in memory meanwhile.

use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::flush::cycle::Cycles;
use crate::flush::worker::Pool;
use crate::flush::SyncOutcome;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::storage::keeper::REOPEN_AFTER;

/// Longest sleep when nothing is dirty (a safety net; writers wake the
/// coordinator when the buffer becomes dirty).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Retry backoff after a failed cycle: doubles from the first
/// (`Config::retry_backoff`, 10 ms by default) to the last.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Attempts at the final cycle before shutdown gives up and reports.
const SHUTDOWN_ATTEMPTS: u32 = 3;

fn backoff(shared: &Shared, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (shared.config.retry_backoff * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// The coordinator's main loop. Returns after shutdown was asked and the
/// final cycle ran (it is retried up to `SHUTDOWN_ATTEMPTS` times).
pub(crate) fn run(shared: &Shared, pool: &Pool, mut cycles: Cycles) {
    let mut retry_at: Option<Instant> = None;
    let mut next_poll = Instant::now();
    loop {
        let now = Instant::now();
        let backoff_over = retry_at.is_none_or(|t| now >= t);
        let (shutdown, waiting, halt) = {
            let r = shared.flush.requests();
            (
                r.shutdown,
                !r.syncs.is_empty() || !r.flushes.is_empty(),
                r.halt,
            )
        };
        if halt {
            answer(take_waiters(shared), &Err(crate::error::Error::Closed));
            return;
        }
        let dirty_for = shared.buffer.dirty_for();
        // The journal has grown past its bound: the next cycle is durable,
        // so that truncation shrinks it (only with something to freeze).
        let journal_due =
            dirty_for.is_some() && shared.buffer.journal().is_some_and(|j| j.wants_sync());
        // A partition another engine asked for is released by a cycle that
        // froze after the request was seen (see `Backend::cycle_done`).
        let due = cycles.has_pending()
            || shared.flush.is_urgent()
            || dirty_for.is_some_and(|d| d >= shared.config.write_delay)
            || shared.keeper.handing_over();

        if shared.health().is_poisoned() {
            // Nothing more may be reported durable: answer every waiter with
            // the poison and stop flushing once shutdown is asked.
            for tx in take_waiters(shared) {
                let _ = tx.send(Err(shared.health().poison_error()));
            }
            if shutdown {
                return;
            }
            wait(shared, Some(IDLE_WAIT));
            continue;
        }

        if shutdown {
            final_cycle(shared, pool, &mut cycles);
            return;
        }

        if backoff_over && (waiting || due || journal_due) {
            // Taken before the freeze: the cycle covers every write
            // acknowledged before a waiter registered.
            let (syncs, flushes) = {
                let mut r = shared.flush.requests();
                if r.shutdown || r.halt {
                    // Asked since this turn began: shutdown's waiter is
                    // answered by the final cycle (with its retries), never
                    // by the outcome of a regular one.
                    continue;
                }
                (std::mem::take(&mut r.syncs), std::mem::take(&mut r.flushes))
            };
            let sync = !syncs.is_empty() || journal_due;
            let outcome: SyncOutcome = cycles
                .run(shared, pool, sync)
                .map(|r| (r.committed, r.entries));
            match &outcome {
                Ok(_) => {
                    shared.health().flush_succeeded();
                    retry_at = None;
                }
                Err(e) => {
                    Counters::add(&shared.counters.flush_errors, 1);
                    let failures = shared.health().flush_failed(e);
                    log::warn!("millpond: flush failed (attempt {failures}): {e}");
                    retry_at = Some(Instant::now() + backoff(shared, failures));
                    // Writers blocked on a full buffer must see the failure.
                    shared.buffer.wake_waiters();
                    if failures >= REOPEN_AFTER && !shared.health().is_poisoned() {
                        reopen(shared, &mut cycles);
                    }
                }
            }
            answer(syncs, &outcome);
            answer(flushes, &outcome);
            continue;
        }

        // Between cycles, other engines' requests for what this one holds
        // are looked for now and then (a commit also sees them).
        let poll = shared.keeper.handover_poll();
        if let Some(every) = poll {
            if now >= next_poll {
                next_poll = now + every;
                if shared.keeper.poll_requests() {
                    continue;
                }
            }
        }

        // Sleep until something is due.
        let mut timeout = IDLE_WAIT;
        if let Some(d) = dirty_for {
            timeout = timeout.min(shared.config.write_delay.saturating_sub(d));
        }
        if let Some(t) = retry_at {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        if poll.is_some() {
            timeout = timeout.min(next_poll.saturating_duration_since(now));
        }
        wait(shared, Some(timeout));
    }
}

/// Replaces the storage through the keeper (between cycles: the cycle lock
/// keeps verification out meanwhile).
fn reopen(shared: &Shared, cycles: &mut Cycles) {
    let _cycle = shared.cycle_lock.lock();
    match shared.keeper.reopen(cycles.released()) {
        Ok(Some(recovered)) => {
            log::warn!(
                "millpond: storage reopened after failures (recovered at seq {})",
                recovered.last_seq.0
            );
            cycles.reopened(&recovered);
            // The store may have lost the raise of its format for trees
            // (never flushed before the failure): made again before any
            // cycle can commit a tree's record. (Compression's raise is
            // the cycle's own, `Cycles::reopened`.)
            if shared
                .trees_marked
                .load(std::sync::atomic::Ordering::Acquire)
            {
                let raised = shared
                    .storage()
                    .and_then(|s| s.raise_format(crate::codec::FORMAT_VERSION_TREES));
                if let Err(e) = raised {
                    log::warn!("millpond: raising the store's format after a reopen failed: {e}");
                }
            }
        }
        // The medium still refuses writes: try again after the next failure.
        Ok(None) => {}
        Err(e) => log::warn!("millpond: reopening the storage failed: {e}"),
    }
}

fn wait(shared: &Shared, timeout: Option<Duration>) {
    let rx = shared.flush.wake_receiver();
    match timeout {
        Some(t) => match rx.recv_timeout(t) {
            Ok(()) | Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        },
        None => {
            let _ = rx.recv();
        }
    }
}

/// The last durable cycle, retried a few times; its outcome goes to every
/// waiter, shutdown included.
fn final_cycle(shared: &Shared, pool: &Pool, cycles: &mut Cycles) {
    let syncs = take_waiters(shared);
    let mut attempt = 0;
    let outcome: SyncOutcome = loop {
        attempt += 1;
        match cycles.run(shared, pool, true) {
            Ok(r) => break Ok((r.committed, r.entries)),
            Err(e) => {
                Counters::add(&shared.counters.flush_errors, 1);
                shared.health().flush_failed(&e);
                log::warn!("millpond: final flush failed (attempt {attempt}): {e}");
                if attempt >= SHUTDOWN_ATTEMPTS || shared.health().is_poisoned() {
                    log::error!("millpond: shutdown could not persist every buffered write: {e}");
                    break Err(e);
                }
                std::thread::sleep(backoff(shared, attempt));
                reopen(shared, cycles);
            }
        }
    };
    answer(syncs, &outcome);
}

/// Every caller waiting for a flush or a sync.
fn take_waiters(shared: &Shared) -> Vec<crossbeam_channel::Sender<SyncOutcome>> {
    let mut r = shared.flush.requests();
    let mut all = std::mem::take(&mut r.syncs);
    all.append(&mut r.flushes);
    all
}

fn answer(syncs: Vec<crossbeam_channel::Sender<SyncOutcome>>, outcome: &SyncOutcome) {
    for tx in syncs {
        let _ = tx.send(match outcome {
            Ok(v) => Ok(*v),
            Err(e) => Err(e.duplicate()),
        });
    }
}
