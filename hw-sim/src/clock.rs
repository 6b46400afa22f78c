//! Simulated time for a whole night: a manual clock and an accelerated one, behind the one time
//! trait every crate uses.
//!
//! The workspace's time trait is [`ringbuffer::Clock`] (`now_ns`, nanoseconds since the Unix
//! epoch): `ringbuffer` is the bottom of the dependency graph, so every crate can take a
//! `Arc<dyn Clock>` without depending on the simulator. Production uses
//! [`ringbuffer::SystemClock`]; tests use [`ringbuffer::ManualClock`] (re-exported here as
//! [`ManualClock`]) or [`AcceleratedClock`], which runs a simulated night `factor` times faster
//! than the wall clock so a night plays in minutes.

use std::time::{Duration, Instant};

pub use ringbuffer::{Clock, ManualClock};

/// Simulated time that starts at `start_ns` and runs `factor` times faster than real time.
#[derive(Debug)]
pub struct AcceleratedClock {
    start_ns: u64,
    started: Instant,
    factor: f64,
}

impl AcceleratedClock {
    /// A clock reading `start_ns` now and advancing `factor` simulated seconds per real second.
    ///
    /// Panics if `factor` is not finite and positive (a programmer error).
    pub fn new(start_ns: u64, factor: f64) -> Self {
        assert!(
            factor.is_finite() && factor > 0.0,
            "time compression factor must be finite and > 0, got {factor}"
        );
        Self { start_ns, started: Instant::now(), factor }
    }

    /// The compression factor.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// Real time to wait until the simulated clock reads `sim_ns` (zero if it already has).
    pub fn wall_time_until(&self, sim_ns: u64) -> Duration {
        let now_ns = self.now_ns();
        if sim_ns <= now_ns {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((sim_ns - now_ns) as f64 / 1e9 / self.factor)
    }

    /// Sleeps until the simulated clock reads at least `sim_ns`.
    pub fn sleep_until(&self, sim_ns: u64) {
        loop {
            let wait = self.wall_time_until(sim_ns);
            if wait.is_zero() {
                return;
            }
            std::thread::sleep(wait);
        }
    }
}

impl Clock for AcceleratedClock {
    fn now_ns(&self) -> u64 {
        let elapsed_sim_ns = self.started.elapsed().as_secs_f64() * 1e9 * self.factor;
        self.start_ns.saturating_add(elapsed_sim_ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const NIGHT_START_NS: u64 = 1_744_761_600_000_000_000; // 2025-04-16T00:00:00Z

    #[test]
    fn an_accelerated_clock_starts_at_its_start_and_runs_faster_than_real_time() {
        let clock = AcceleratedClock::new(NIGHT_START_NS, 1000.0);
        let first = clock.now_ns();
        assert!(first >= NIGHT_START_NS);
        std::thread::sleep(Duration::from_millis(20));
        let advanced_ns = clock.now_ns() - first;
        // At least 20 ms real x 1000 = 20 s simulated (a lower bound only: machines are noisy).
        assert!(advanced_ns >= 20_000_000_000, "advanced only {advanced_ns} ns");
    }

    #[test]
    fn sleeping_until_a_simulated_instant_waits_the_compressed_time() {
        let clock = AcceleratedClock::new(NIGHT_START_NS, 600.0);
        let target = NIGHT_START_NS + 30_000_000_000; // 30 s simulated = 50 ms real
        let started = Instant::now();
        clock.sleep_until(target);
        assert!(clock.now_ns() >= target);
        assert!(started.elapsed() >= Duration::from_millis(45), "{:?}", started.elapsed());
        assert_eq!(clock.wall_time_until(NIGHT_START_NS), Duration::ZERO, "the past needs no wait");
    }

    #[test]
    fn both_clocks_serve_the_workspace_time_trait() {
        let clocks: Vec<Arc<dyn Clock>> = vec![
            Arc::new(ManualClock::new(NIGHT_START_NS)),
            Arc::new(AcceleratedClock::new(NIGHT_START_NS, 10.0)),
        ];
        for clock in clocks {
            assert!(clock.now_ns() >= NIGHT_START_NS);
        }
    }

    #[test]
    #[should_panic(expected = "time compression factor")]
    fn a_non_positive_factor_is_a_programmer_error() {
        let _ = AcceleratedClock::new(0, 0.0);
    }
}
