//! Time enters the ring only through the [`Clock`] trait.
//!
//! Architecture invariant: the ring never reads the wall clock directly. Record timestamps,
//! the append-rate estimate and time-to-full all come from a `Clock`, so tests and the simulator
//! can run a whole night deterministically.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of time, in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + core::fmt::Debug {
    /// The current time.
    fn now_ns(&self) -> u64;
}

/// The real clock (production).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to (tests, simulation).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Self { now_ns: AtomicU64::new(start_ns) }
    }

    /// Moves the clock forward.
    pub fn advance_ns(&self, delta_ns: u64) {
        self.now_ns.fetch_add(delta_ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }
}
