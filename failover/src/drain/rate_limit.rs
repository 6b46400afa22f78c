//! The drain's rate limit: a token bucket counted in bytes, with time from the drain's [`Clock`]
//! so that tests can drive it deterministically.
//!
//! # The bucket
//!
//! Tokens refill at the current limit (`DrainControl::rate_limit_bytes_per_second`, read at every
//! admission, so a change applies to the next unit) up to the bucket's capacity, which the drain
//! sets to one part (`DrainOptions::part_bytes`). A *unit* is what goes out in one request: a part
//! of a multipart upload, or a whole file sent in one PUT. A unit is admitted when the bucket holds
//! `min(unit, capacity)` tokens; its whole size is then taken, so a unit larger than the capacity
//! (a single-PUT file) leaves the bucket in debt, repaid at the limit before the next admission.
//!
//! **Bound.** Starting full, with a constant limit `R`, the bytes admitted by clock time `T` are at
//! most `burst + R * T`, where `burst = max(capacity, largest unit)`: one part, or one file for
//! files sent in a single PUT. Tokens never exceed the capacity and, after an admission, never fall
//! below `capacity - unit`, so the tokens spent by `T` are at most `capacity + R * T + (unit -
//! capacity)`. Sending `B` bytes therefore takes at least `(B - burst) / R` of clock time.
//!
//! A limit of 0 means unlimited: units are admitted at once and the bucket is kept full, so a limit
//! set later starts with at most one burst. Refills are exact integer arithmetic in
//! byte-nanoseconds (`bytes * 1e9`), so no rounding accumulates over a night.
//!
//! # Order
//!
//! Concurrent uploads wait in line: [`RateLimiter`] hands out tickets and admits them strictly in
//! ticket order, so a file dispatched earlier is not overtaken by later ones (the drain's cursor
//! moves in order). The line holds at most `max_waiters` tickets (fixed at start).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Nanoseconds per second: tokens are kept in byte-nanoseconds so refills are exact.
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// What [`TokenBucket::try_take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The unit may be sent now; its tokens are taken.
    Admitted,
    /// Not enough tokens: ask again after this many nanoseconds of clock time (at the current
    /// limit; a change of limit changes the answer).
    WaitNs(u64),
}

/// A token bucket in bytes (see the module docs). Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity_bytes: u64,
    /// Tokens, in bytes times 10^9; negative while a unit larger than the capacity is repaid.
    tokens_scaled: i128,
    /// When the tokens were last refilled.
    refilled_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `capacity_bytes` (more than 0) at clock time `now_ns`.
    pub fn new(capacity_bytes: u64, now_ns: u64) -> TokenBucket {
        assert!(capacity_bytes > 0, "a token bucket needs a capacity above 0 bytes");
        TokenBucket {
            capacity_bytes,
            tokens_scaled: i128::from(capacity_bytes) * NANOS_PER_SECOND,
            refilled_ns: now_ns,
        }
    }

    /// The capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Tokens now held, in whole bytes (negative while in debt); for tests and the console.
    pub fn tokens_bytes(&self) -> i64 {
        (self.tokens_scaled / NANOS_PER_SECOND) as i64
    }

    fn capacity_scaled(&self) -> i128 {
        i128::from(self.capacity_bytes) * NANOS_PER_SECOND
    }

    /// Adds what `rate_bytes_per_second` earned since the last refill (a clock that went back
    /// earns nothing), up to the capacity.
    fn refill(&mut self, rate_bytes_per_second: u64, now_ns: u64) {
        let elapsed_ns = now_ns.saturating_sub(self.refilled_ns);
        self.refilled_ns = self.refilled_ns.max(now_ns);
        let earned = i128::from(rate_bytes_per_second) * i128::from(elapsed_ns);
        self.tokens_scaled = (self.tokens_scaled + earned).min(self.capacity_scaled());
    }

    /// Admits a unit of `unit_bytes` at clock time `now_ns` under a limit of
    /// `rate_bytes_per_second` (0 = unlimited), or says how long to wait.
    pub fn try_take(&mut self, unit_bytes: u64, rate_bytes_per_second: u64, now_ns: u64) -> Admission {
        if rate_bytes_per_second == 0 {
            self.tokens_scaled = self.capacity_scaled();
            self.refilled_ns = self.refilled_ns.max(now_ns);
            return Admission::Admitted;
        }
        self.refill(rate_bytes_per_second, now_ns);
        let needed = i128::from(unit_bytes.min(self.capacity_bytes)) * NANOS_PER_SECOND;
        if self.tokens_scaled >= needed {
            self.tokens_scaled -= i128::from(unit_bytes) * NANOS_PER_SECOND;
            debug_assert!(self.tokens_scaled >= -(i128::from(unit_bytes) * NANOS_PER_SECOND));
            return Admission::Admitted;
        }
        let missing = needed - self.tokens_scaled;
        let rate = i128::from(rate_bytes_per_second);
        let wait_ns = (missing + rate - 1) / rate;
        Admission::WaitNs(u64::try_from(wait_ns).unwrap_or(u64::MAX).max(1))
    }

    /// Gives back the tokens of a unit that was admitted but not sent (the object was already at
    /// the base), up to the capacity.
    pub fn refund(&mut self, unit_bytes: u64) {
        let refunded = self.tokens_scaled + i128::from(unit_bytes) * NANOS_PER_SECOND;
        self.tokens_scaled = refunded.min(self.capacity_scaled());
    }
}

/// A [`TokenBucket`] shared by concurrent uploads, admitting them in ticket order.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<LimiterState>,
    max_waiters: usize,
}

#[derive(Debug)]
struct LimiterState {
    bucket: TokenBucket,
    /// Tickets waiting, oldest first; at most `max_waiters`.
    line: VecDeque<u64>,
    next_ticket: u64,
}

impl RateLimiter {
    /// A limiter whose bucket holds `capacity_bytes`, full at `now_ns`, with room in its line for
    /// `max_waiters` uploads waiting at once.
    pub fn new(capacity_bytes: u64, max_waiters: usize, now_ns: u64) -> Arc<RateLimiter> {
        assert!(max_waiters > 0, "a rate limiter needs room for at least one waiter");
        Arc::new(RateLimiter {
            state: Mutex::new(LimiterState {
                bucket: TokenBucket::new(capacity_bytes, now_ns),
                line: VecDeque::with_capacity(max_waiters),
                next_ticket: 0,
            }),
            max_waiters,
        })
    }

    fn lock(&self) -> MutexGuard<'_, LimiterState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the line; the ticket leaves it when admitted or dropped.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        assert!(
            state.line.len() < self.max_waiters,
            "more than {} uploads waiting for the rate limit (the drain bounds them)",
            self.max_waiters
        );
        let number = state.next_ticket;
        state.next_ticket += 1;
        state.line.push_back(number);
        Ticket { limiter: Arc::clone(self), number, admitted: false }
    }

    /// Gives back the tokens of an admitted unit that was not sent.
    pub fn refund(&self, unit_bytes: u64) {
        self.lock().bucket.refund(unit_bytes);
    }
}

/// A place in a [`RateLimiter`]'s line.
#[derive(Debug)]
pub struct Ticket {
    limiter: Arc<RateLimiter>,
    number: u64,
    admitted: bool,
}

impl Ticket {
    /// Admits a unit of `unit_bytes` if this ticket is first in line and the bucket allows it
    /// (see [`TokenBucket::try_take`]); a ticket behind others is told to wait `poll_ns`.
    pub fn try_admit(
        &mut self,
        unit_bytes: u64,
        rate_bytes_per_second: u64,
        now_ns: u64,
        poll_ns: u64,
    ) -> Admission {
        assert!(!self.admitted, "a ticket admits one unit");
        let mut state = self.limiter.lock();
        if rate_bytes_per_second > 0 && state.line.front() != Some(&self.number) {
            return Admission::WaitNs(poll_ns);
        }
        let admission = state.bucket.try_take(unit_bytes, rate_bytes_per_second, now_ns);
        if admission == Admission::Admitted {
            self.admitted = true;
            state.line.retain(|&number| number != self.number);
        }
        admission
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.admitted {
            self.limiter.lock().line.retain(|&number| number != self.number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_full_bucket_admits_one_burst_then_paces_at_the_limit() {
        let mut bucket = TokenBucket::new(16 * MIB, 0);
        let rate = 8 * MIB; // bytes per second
        assert_eq!(bucket.try_take(16 * MIB, rate, 0), Admission::Admitted);
        // Empty: the next part waits exactly 2 s of clock time.
        assert_eq!(bucket.try_take(16 * MIB, rate, 0), Admission::WaitNs(2_000_000_000));
        assert_eq!(bucket.try_take(16 * MIB, rate, 1_000_000_000), Admission::WaitNs(1_000_000_000));
        assert_eq!(bucket.try_take(16 * MIB, rate, 2_000_000_000), Admission::Admitted);
        assert_eq!(bucket.tokens_bytes(), 0);
    }

    #[test]
    fn a_unit_larger_than_the_capacity_goes_when_the_bucket_is_full_and_leaves_a_debt() {
        let mut bucket = TokenBucket::new(16 * MIB, 0);
        let rate = 16 * MIB;
        assert_eq!(bucket.try_take(64 * MIB, rate, 0), Admission::Admitted);
        assert_eq!(bucket.tokens_bytes(), -48 * MIB as i64);
        // The debt (48 MiB) and one capacity's worth (16 MiB) before the next unit: 4 s.
        assert_eq!(bucket.try_take(64 * MIB, rate, 0), Admission::WaitNs(4_000_000_000));
        assert_eq!(bucket.try_take(64 * MIB, rate, 4_000_000_000), Admission::Admitted);
    }

    #[test]
    fn tokens_never_exceed_the_capacity_however_long_the_bucket_idles() {
        let mut bucket = TokenBucket::new(10 * MIB, 0);
        assert_eq!(bucket.try_take(10 * MIB, MIB, 0), Admission::Admitted);
        assert_eq!(bucket.try_take(MIB, MIB, 3_600_000_000_000), Admission::Admitted);
        assert_eq!(bucket.tokens_bytes(), 9 * MIB as i64, "refilled to the capacity only");
    }

    #[test]
    fn unlimited_admits_at_once_and_keeps_the_bucket_full_for_a_limit_set_later() {
        let mut bucket = TokenBucket::new(16 * MIB, 0);
        for step in 0..100 {
            assert_eq!(bucket.try_take(75 * MIB, 0, step), Admission::Admitted);
        }
        assert_eq!(bucket.tokens_bytes(), 16 * MIB as i64);
        assert_eq!(bucket.try_take(16 * MIB, MIB, 100), Admission::Admitted);
        assert_eq!(bucket.try_take(16 * MIB, MIB, 100), Admission::WaitNs(16_000_000_000));
    }

    #[test]
    fn a_lower_limit_set_while_waiting_lengthens_the_wait_at_the_next_question() {
        let mut bucket = TokenBucket::new(8 * MIB, 0);
        assert_eq!(bucket.try_take(8 * MIB, 8 * MIB, 0), Admission::Admitted);
        assert_eq!(bucket.try_take(8 * MIB, 8 * MIB, 0), Admission::WaitNs(1_000_000_000));
        // Half a second later the limit is 1 MiB/s: the limit in force when asked applies since
        // the previous question (waiters ask at least every 20 ms), so 0.5 MiB were earned and
        // the remaining 7.5 MiB take 7.5 s.
        assert_eq!(bucket.try_take(8 * MIB, MIB, 500_000_000), Admission::WaitNs(7_500_000_000));
        // Back to 8 MiB/s half a second later: 4 MiB more earned, 3.5 MiB to go at 8 MiB/s.
        assert_eq!(bucket.try_take(8 * MIB, 8 * MIB, 1_000_000_000), Admission::WaitNs(437_500_000));
    }

    #[test]
    fn a_clock_that_goes_back_earns_no_tokens() {
        let mut bucket = TokenBucket::new(MIB, 10_000_000_000);
        assert_eq!(bucket.try_take(MIB, MIB, 10_000_000_000), Admission::Admitted);
        assert_eq!(bucket.try_take(MIB, MIB, 5_000_000_000), Admission::WaitNs(1_000_000_000));
        assert_eq!(bucket.try_take(MIB, MIB, 11_000_000_000), Admission::Admitted);
    }

    #[test]
    fn a_refund_returns_tokens_up_to_the_capacity() {
        let mut bucket = TokenBucket::new(4 * MIB, 0);
        assert_eq!(bucket.try_take(4 * MIB, MIB, 0), Admission::Admitted);
        bucket.refund(8 * MIB);
        assert_eq!(bucket.tokens_bytes(), 4 * MIB as i64);
    }

    /// The documented bound, checked over a simulated clock: whatever the unit sizes, the bytes
    /// admitted by time T never exceed burst + R * T.
    #[test]
    fn admitted_bytes_never_exceed_one_burst_plus_the_limit_times_the_elapsed_clock_time() {
        let capacity = 16 * MIB;
        let rate = 40_000_000;
        let units = [75_576_960, 16 * MIB, 3 * MIB, 37_797_120, 16 * MIB, 75_576_960, MIB];
        let burst = units.iter().copied().max().unwrap_or(0).max(capacity);
        let mut bucket = TokenBucket::new(capacity, 0);
        let (mut now_ns, mut admitted) = (0u64, 0u64);
        for round in 0..200 {
            let unit = units[round % units.len()];
            loop {
                match bucket.try_take(unit, rate, now_ns) {
                    Admission::Admitted => break,
                    Admission::WaitNs(wait_ns) => now_ns += wait_ns,
                }
            }
            admitted += unit;
            let allowed = u128::from(burst) + u128::from(rate) * u128::from(now_ns) / 1_000_000_000;
            assert!(u128::from(admitted) <= allowed, "round {round}: {admitted} B by {now_ns} ns");
        }
        // And the pace is the limit: over 200 units the average is within 1% of it.
        let average = admitted as f64 / (now_ns as f64 / 1e9);
        assert!((average / rate as f64 - 1.0).abs() < 0.01, "average {average:.0} B/s");
    }

    #[test]
    fn tickets_are_admitted_in_order_and_a_dropped_ticket_leaves_the_line() {
        let limiter = RateLimiter::new(MIB, 3, 0);
        let mut first = limiter.ticket();
        let mut second = limiter.ticket();
        let third = limiter.ticket();
        let rate = MIB;
        assert_eq!(second.try_admit(MIB, rate, 0, 7), Admission::WaitNs(7), "second waits for first");
        assert_eq!(first.try_admit(MIB, rate, 0, 7), Admission::Admitted);
        assert_eq!(second.try_admit(MIB, rate, 0, 7), Admission::WaitNs(1_000_000_000));
        drop(third);
        let mut fourth = limiter.ticket();
        assert_eq!(fourth.try_admit(MIB, rate, 2_000_000_000, 7), Admission::WaitNs(7));
        drop(second);
        assert_eq!(fourth.try_admit(MIB, rate, 2_000_000_000, 7), Admission::Admitted);
        // Unlimited: no line at all.
        let mut fifth = limiter.ticket();
        let mut sixth = limiter.ticket();
        assert_eq!(sixth.try_admit(MIB, 0, 2_000_000_000, 7), Admission::Admitted);
        assert_eq!(fifth.try_admit(MIB, 0, 2_000_000_000, 7), Admission::Admitted);
    }
}
