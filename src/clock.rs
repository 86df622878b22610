//! Time as the engine sees it: [`Clock`], the real [`SystemClock`] and a
//! [`MockClock`] that tests move by hand.
//!
//! Expiry deadlines are wall-clock instants (they are stored on disk and must
//! survive a restart), kept internally as [`UnixMillis`]. Flush scheduling is
//! not deadline-based on disk and uses the monotonic `Instant` directly.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time. Implement it to control how the engine sees
/// time (for example to test expiry without sleeping).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock. The default.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. Share it (in an `Arc`) between the
/// test and [`Config::clock`](crate::Config::clock).
#[derive(Debug)]
pub struct MockClock {
    /// Milliseconds since the Unix epoch.
    millis: AtomicU64,
}

impl MockClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> MockClock {
        MockClock {
            millis: AtomicU64::new(UnixMillis::from_system_time(start).0),
        }
    }

    /// Moves the clock forward by `by` (rounded down to whole milliseconds).
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(ms))
            });
    }

    /// Sets the clock to `to` (which may be earlier than now).
    pub fn set(&self, to: SystemTime) {
        self.millis
            .store(UnixMillis::from_system_time(to).0, Ordering::SeqCst);
    }
}

impl Default for MockClock {
    /// A clock stopped at the real time of its creation.
    fn default() -> MockClock {
        MockClock::new(SystemTime::now())
    }
}

impl Clock for MockClock {
    fn now(&self) -> SystemTime {
        UnixMillis(self.millis.load(Ordering::SeqCst)).to_system_time()
    }
}

/// A wall-clock instant as whole milliseconds since the Unix epoch: the unit
/// in which expiry deadlines are kept in memory and on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct UnixMillis(pub u64);

impl UnixMillis {
    pub(crate) fn from_system_time(t: SystemTime) -> UnixMillis {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => UnixMillis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => UnixMillis(0),
        }
    }

    pub(crate) fn now(clock: &dyn Clock) -> UnixMillis {
        UnixMillis::from_system_time(clock.now())
    }

    pub(crate) fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_clock_moves_only_when_told() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = MockClock::new(start);
        assert_eq!(c.now(), start);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), start + Duration::from_millis(1500));
        c.set(start);
        assert_eq!(c.now(), start);
    }

    #[test]
    fn times_before_the_epoch_clamp_to_zero() {
        assert_eq!(
            UnixMillis::from_system_time(UNIX_EPOCH - Duration::from_secs(1)),
            UnixMillis(0)
        );
    }
}
