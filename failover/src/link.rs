//! Summit-to-base link monitor: periodic probes of the base, hysteresis, and the link state the
//! rest of the appliance acts on (island mode when DOWN, the drain when UP or RECOVERING).
//!
//! Three layers:
//!
//! - [`LinkMonitor`]: a pure state machine. No I/O, no clock reads: the caller feeds it probe
//!   outcomes ([`LinkMonitor::record_probe`]) and the drain's backlog ([`LinkMonitor::set_backlog`]),
//!   each with the time, and gets back at most one [`LinkTransition`] per call. Deterministic, so
//!   tests drive it with plain nanosecond values.
//! - [`Probe`]: one cheap request to the base, bounded by a timeout: [`TcpConnectProbe`] (a TCP
//!   handshake) and [`HttpProbe`] (an HTTP/1.1 `HEAD` over `std::net`; any status line proves the
//!   link, so an object store answering 403 or 404 counts as reachable).
//! - [`LinkMonitorHandle`]: runs a probe every [`LinkOptions::probe_interval`] on its own thread and
//!   publishes a [`LinkStatus`] snapshot and a bounded queue of transitions. Nothing a caller does
//!   through the handle waits on the link: a hanging probe is bounded by its timeout and the thread
//!   holds no lock while probing.
//!
//! # States and rules
//!
//! | from | to | when |
//! |------|----|------|
//! | UP, DEGRADED, RECOVERING | DOWN | `failures_to_down` (N) consecutive failed probes |
//! | DOWN | UP, or RECOVERING if the backlog is not empty | `successes_to_up` (M) consecutive successes |
//! | UP | DEGRADED | N consecutive slow probes (rtt > `degraded_rtt`), or loss ≥ `degraded_loss` |
//! | DEGRADED | UP | M consecutive fast probes (rtt ≤ ¾ `degraded_rtt`) and loss ≤ ½ `degraded_loss` |
//! | RECOVERING | UP (or DEGRADED if the link is slow or lossy) | the backlog reaches 0 |
//!
//! Loss is the number of failed probes among the last [`LOSS_WINDOW`] divided by [`LOSS_WINDOW`]
//! (slots not yet filled count as neither), and the window is cleared when the link leaves DOWN, so
//! the failures of the cut itself do not degrade the link that just came back. Link quality is
//! tracked in RECOVERING too but shown only once the backlog is drained.
//!
//! The monitor starts in DOWN: the link is not assumed up until M probes proved it.
//! Since N ≥ 2 and `degraded_loss` > 1/[`LOSS_WINDOW`] (both validated), a single lost probe never
//! changes UP.
//!
//! # Detection time
//!
//! Probes run one at a time: a probe starts every `probe_interval`, or at once when the previous
//! one took longer. After a cut, the first probe that can fail starts within one interval, and each
//! failing probe takes at most `probe_timeout` (a reset fails at once, a black hole at the timeout).
//! So a cut is DOWN within [`LinkOptions::detection_bound`] =
//! `interval + (N - 1) * max(interval, timeout) + timeout`, which the defaults keep under 3 s
//! (0.5 + 2 × 0.75 + 0.75 = 2.75 s), leaving 250 ms for thread scheduling, which the bound does not
//! include. With a timeout of 1 s the serial bound would be 3.5 s, which is why the default timeout
//! is 750 ms.
//!
//! # Time
//!
//! Every timestamp (`since_ns`, `at_ns`) comes from the workspace [`Clock`]. The runner paces
//! probes and measures round-trip times with the monotonic `std::time::Instant`, which only ever
//! yields durations, never timestamps.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringbuffer::Clock;

/// Probes in the sliding window that loss is measured over.
pub const LOSS_WINDOW: u32 = 20;
/// Transitions kept for the console (oldest dropped first).
pub const TRANSITION_HISTORY: usize = 32;
/// Transitions queued for [`LinkMonitorHandle::next_event`] before new ones are dropped (and counted).
pub const EVENT_QUEUE_CAPACITY: usize = 64;
/// Longest HTTP status line read by [`HttpProbe`].
const MAX_STATUS_LINE_BYTES: usize = 512;

/// State of the summit-to-base link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Probes succeed, fast and without notable loss.
    Up,
    /// Probes succeed but slowly, or too many are lost.
    Degraded,
    /// The base is unreachable: the summit runs as an island.
    Down,
    /// The link is back after DOWN and the drain is sending the backlog.
    Recovering,
}

impl LinkState {
    /// Upper-case name, as shown on the console.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Up => "UP",
            LinkState::Degraded => "DEGRADED",
            LinkState::Down => "DOWN",
            LinkState::Recovering => "RECOVERING",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Why a probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeFailure {
    /// No answer within the probe timeout (a black-holed link).
    Timeout,
    /// The connection was refused.
    Refused,
    /// The connection was reset, aborted or closed before an answer.
    Reset,
    /// No route to the base (network or host unreachable).
    Unreachable,
    /// The base answered something that is not an HTTP status line.
    BadResponse,
    /// Any other I/O error.
    Io(ErrorKind),
}

impl ProbeFailure {
    /// Classifies an I/O error.
    pub fn from_io(error: &io::Error) -> ProbeFailure {
        match error.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ProbeFailure::Timeout,
            ErrorKind::ConnectionRefused => ProbeFailure::Refused,
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected
            | ErrorKind::UnexpectedEof => ProbeFailure::Reset,
            ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable | ErrorKind::AddrNotAvailable => {
                ProbeFailure::Unreachable
            }
            kind => ProbeFailure::Io(kind),
        }
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Timeout => formatter.write_str("timeout"),
            ProbeFailure::Refused => formatter.write_str("connection refused"),
            ProbeFailure::Reset => formatter.write_str("connection reset or closed"),
            ProbeFailure::Unreachable => formatter.write_str("unreachable"),
            ProbeFailure::BadResponse => formatter.write_str("not an HTTP status line"),
            ProbeFailure::Io(kind) => write!(formatter, "I/O error: {kind}"),
        }
    }
}

/// Result of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The base answered after `rtt`.
    Ok {
        /// Time from the start of the probe to the answer.
        rtt: Duration,
    },
    /// The base did not answer.
    Failed {
        /// Why.
        reason: ProbeFailure,
    },
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionReason {
    /// `count` consecutive probes failed, the last with `last`.
    ConsecutiveFailures {
        /// Consecutive failures counted.
        count: u32,
        /// Why the last probe failed.
        last: ProbeFailure,
    },
    /// `count` consecutive probes succeeded after DOWN.
    ConsecutiveSuccesses {
        /// Consecutive successes counted.
        count: u32,
    },
    /// `count` consecutive probes were slower than `degraded_rtt`, the last taking `rtt`.
    SlowRtt {
        /// Round-trip time of the last probe.
        rtt: Duration,
        /// Consecutive slow probes counted.
        count: u32,
    },
    /// `failed` of the last [`LOSS_WINDOW`] probes failed.
    Loss {
        /// Failed probes in the window.
        failed: u32,
    },
    /// Probes are fast again and loss is low: `rtt` of the last probe, `failed` in the window.
    QualityRestored {
        /// Round-trip time of the last probe.
        rtt: Duration,
        /// Failed probes in the window.
        failed: u32,
    },
    /// The drain reported an empty backlog.
    BacklogDrained,
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransitionReason::ConsecutiveFailures { count, last } => {
                write!(formatter, "{count} consecutive probes failed (last: {last})")
            }
            TransitionReason::ConsecutiveSuccesses { count } => {
                write!(formatter, "{count} consecutive probes succeeded")
            }
            TransitionReason::SlowRtt { rtt, count } => {
                write!(formatter, "{count} consecutive slow probes (last rtt {rtt:?})")
            }
            TransitionReason::Loss { failed } => {
                write!(formatter, "{failed} of the last {LOSS_WINDOW} probes failed")
            }
            TransitionReason::QualityRestored { rtt, failed } => {
                write!(
                    formatter,
                    "probes fast again (rtt {rtt:?}, {failed} of the last {LOSS_WINDOW} failed)"
                )
            }
            TransitionReason::BacklogDrained => formatter.write_str("backlog drained"),
        }
    }
}

/// One change of link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTransition {
    /// State left.
    pub from: LinkState,
    /// State entered.
    pub to: LinkState,
    /// When (the `now_ns` of the call that caused it).
    pub at_ns: u64,
    /// Why.
    pub reason: TransitionReason,
}

/// An option out of range; names the field and the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("link option `{field}` = {value}: {reason}")]
pub struct LinkOptionsError {
    /// The field at fault.
    pub field: &'static str,
    /// Its value, as given.
    pub value: String,
    /// What it must be.
    pub reason: &'static str,
}

/// Probe cadence and thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkOptions {
    /// Time between the starts of two probes (default 500 ms).
    pub probe_interval: Duration,
    /// Longest a probe may take before it counts as failed (default 750 ms); must be below
    /// `probe_interval * failures_to_down`.
    pub probe_timeout: Duration,
    /// Consecutive failures that take the link DOWN (N, default 3, at least 2).
    pub failures_to_down: u32,
    /// Consecutive successes that bring it back from DOWN, and fast probes that clear DEGRADED
    /// (M, default 3, at least 1).
    pub successes_to_up: u32,
    /// Round-trip time above which a probe is slow (default 200 ms; below `probe_timeout`).
    pub degraded_rtt: Duration,
    /// Fraction of the last [`LOSS_WINDOW`] probes failed at which the link is DEGRADED (default
    /// 0.2; above 1/[`LOSS_WINDOW`] so one lost probe never degrades, at most 1).
    pub degraded_loss: f64,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(750),
            failures_to_down: 3,
            successes_to_up: 3,
            degraded_rtt: Duration::from_millis(200),
            degraded_loss: 0.2,
        }
    }
}

impl LinkOptions {
    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), LinkOptionsError> {
        fn invalid(field: &'static str, value: impl fmt::Debug, reason: &'static str) -> LinkOptionsError {
            LinkOptionsError { field, value: format!("{value:?}"), reason }
        }
        if self.probe_interval.is_zero() {
            return Err(invalid("probe_interval", self.probe_interval, "must be positive"));
        }
        if !(2..=1000).contains(&self.failures_to_down) {
            return Err(invalid(
                "failures_to_down",
                self.failures_to_down,
                "must be 2 to 1000 (one lost probe must never take the link down)",
            ));
        }
        if !(1..=1000).contains(&self.successes_to_up) {
            return Err(invalid("successes_to_up", self.successes_to_up, "must be 1 to 1000"));
        }
        if self.probe_timeout.is_zero() {
            return Err(invalid("probe_timeout", self.probe_timeout, "must be positive"));
        }
        if self.probe_timeout >= self.probe_interval.saturating_mul(self.failures_to_down) {
            return Err(invalid(
                "probe_timeout",
                self.probe_timeout,
                "must be below probe_interval * failures_to_down",
            ));
        }
        if self.degraded_rtt.is_zero() || self.degraded_rtt >= self.probe_timeout {
            return Err(invalid(
                "degraded_rtt",
                self.degraded_rtt,
                "must be positive and below probe_timeout",
            ));
        }
        let min_loss = 1.0 / f64::from(LOSS_WINDOW);
        if !(self.degraded_loss > min_loss && self.degraded_loss <= 1.0) {
            return Err(invalid(
                "degraded_loss",
                self.degraded_loss,
                "must be above 1/20 (one lost probe in the window) and at most 1",
            ));
        }
        Ok(())
    }

    /// Longest time from a cut to DOWN with probes run one at a time (see the module docs):
    /// `interval + (N - 1) * max(interval, timeout) + timeout`.
    pub fn detection_bound(&self) -> Duration {
        let step = self.probe_interval.max(self.probe_timeout);
        self.probe_interval
            .saturating_add(step.saturating_mul(self.failures_to_down.saturating_sub(1)))
            .saturating_add(self.probe_timeout)
    }

    /// Failed probes in the window at which the link is DEGRADED.
    fn degrade_failures(&self) -> u32 {
        (self.degraded_loss * f64::from(LOSS_WINDOW) - 1e-9).ceil().max(1.0) as u32
    }

    /// Failed probes in the window at or below which DEGRADED may clear.
    fn restore_failures(&self) -> u32 {
        (self.degraded_loss * f64::from(LOSS_WINDOW) / 2.0 + 1e-9).floor() as u32
    }

    /// Round-trip time at or below which a probe counts towards clearing DEGRADED (¾ of
    /// `degraded_rtt`: the hysteresis band).
    fn fast_rtt(&self) -> Duration {
        self.degraded_rtt * 3 / 4
    }
}

/// A copy of the monitor's state for the console and the rest of the appliance.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkStatus {
    /// Current state.
    pub state: LinkState,
    /// When the current state was entered.
    pub since_ns: u64,
    /// Round-trip time of the last successful probe.
    pub last_rtt: Option<Duration>,
    /// When the last probe was recorded.
    pub last_probe_ns: Option<u64>,
    /// Consecutive failed probes up to now.
    pub consecutive_failures: u32,
    /// Consecutive successful probes up to now.
    pub consecutive_successes: u32,
    /// Failed probes among the last [`LOSS_WINDOW`] (since the link last left DOWN).
    pub failed_in_window: u32,
    /// Backlog last reported by the drain.
    pub backlog_bytes: u64,
    /// Probes recorded since start.
    pub probes_total: u64,
    /// Failed probes recorded since start.
    pub probe_failures_total: u64,
    /// Whether a probe is running now (set only by [`LinkMonitorHandle`]).
    pub probe_in_flight: bool,
    /// The last [`TRANSITION_HISTORY`] transitions, oldest first.
    pub recent_transitions: heapless::Vec<LinkTransition, TRANSITION_HISTORY>,
}

/// The pure link state machine: see the module docs for the rules.
#[derive(Debug)]
pub struct LinkMonitor {
    options: LinkOptions,
    state: LinkState,
    since_ns: u64,
    last_rtt: Option<Duration>,
    last_probe_ns: Option<u64>,
    consecutive_failures: u32,
    consecutive_successes: u32,
    /// Consecutive successful probes slower than `degraded_rtt` (failures leave it unchanged).
    consecutive_slow: u32,
    /// Consecutive successful probes at or below the fast threshold.
    consecutive_fast: u32,
    /// Last [`LOSS_WINDOW`] outcomes, newest in bit 0, a set bit is a failure.
    window_bits: u32,
    /// Whether the link is slow or lossy (tracked outside DOWN, shown as DEGRADED unless
    /// RECOVERING).
    degraded: bool,
    backlog_bytes: u64,
    probes_total: u64,
    probe_failures_total: u64,
    transitions: heapless::Deque<LinkTransition, TRANSITION_HISTORY>,
}

impl LinkMonitor {
    /// A monitor in DOWN since `now_ns`, after validating `options`.
    pub fn new(options: LinkOptions, now_ns: u64) -> Result<LinkMonitor, LinkOptionsError> {
        options.validate()?;
        Ok(LinkMonitor {
            options,
            state: LinkState::Down,
            since_ns: now_ns,
            last_rtt: None,
            last_probe_ns: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
            consecutive_slow: 0,
            consecutive_fast: 0,
            window_bits: 0,
            degraded: false,
            backlog_bytes: 0,
            probes_total: 0,
            probe_failures_total: 0,
            transitions: heapless::Deque::new(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &LinkOptions {
        &self.options
    }

    /// Current state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// When the current state was entered.
    pub fn since_ns(&self) -> u64 {
        self.since_ns
    }

    /// Round-trip time of the last successful probe.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Consecutive failed probes up to now.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Failed probes among the last [`LOSS_WINDOW`] since the link last left DOWN.
    pub fn failed_in_window(&self) -> u32 {
        (self.window_bits & window_mask()).count_ones()
    }

    /// Recent transitions, oldest first (at most [`TRANSITION_HISTORY`]).
    pub fn recent_transitions(&self) -> impl Iterator<Item = &LinkTransition> {
        self.transitions.iter()
    }

    /// A copy of the state (with `probe_in_flight` false).
    pub fn status(&self) -> LinkStatus {
        let mut recent_transitions = heapless::Vec::new();
        for transition in &self.transitions {
            // Same capacity as the deque: never full.
            let _ = recent_transitions.push(*transition);
        }
        LinkStatus {
            state: self.state,
            since_ns: self.since_ns,
            last_rtt: self.last_rtt,
            last_probe_ns: self.last_probe_ns,
            consecutive_failures: self.consecutive_failures,
            consecutive_successes: self.consecutive_successes,
            failed_in_window: self.failed_in_window(),
            backlog_bytes: self.backlog_bytes,
            probes_total: self.probes_total,
            probe_failures_total: self.probe_failures_total,
            probe_in_flight: false,
            recent_transitions,
        }
    }

    /// Records one probe outcome observed at `now_ns`; returns the transition it caused, if any
    /// (also logged and kept in the history).
    pub fn record_probe(&mut self, outcome: ProbeOutcome, now_ns: u64) -> Option<LinkTransition> {
        self.probes_total += 1;
        self.last_probe_ns = Some(now_ns);
        let options = self.options;
        match outcome {
            ProbeOutcome::Ok { rtt } => {
                self.last_rtt = Some(rtt);
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
                self.window_bits <<= 1;
                if rtt > options.degraded_rtt {
                    self.consecutive_slow = self.consecutive_slow.saturating_add(1);
                } else {
                    self.consecutive_slow = 0;
                }
                if rtt <= options.fast_rtt() {
                    self.consecutive_fast = self.consecutive_fast.saturating_add(1);
                } else {
                    self.consecutive_fast = 0;
                }
            }
            ProbeOutcome::Failed { .. } => {
                self.probe_failures_total += 1;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
                self.consecutive_fast = 0;
                self.window_bits = (self.window_bits << 1) | 1;
            }
        }
        self.window_bits &= window_mask();

        if self.state == LinkState::Down {
            if self.consecutive_successes < options.successes_to_up {
                return None;
            }
            let reason = TransitionReason::ConsecutiveSuccesses { count: self.consecutive_successes };
            // The cut's failures must not degrade the link that just came back.
            self.window_bits = 0;
            self.consecutive_slow = 0;
            self.degraded = false;
            let to = if self.backlog_bytes > 0 { LinkState::Recovering } else { LinkState::Up };
            return Some(self.transition(to, now_ns, reason));
        }

        if let ProbeOutcome::Failed { reason } = outcome {
            if self.consecutive_failures >= options.failures_to_down {
                let reason =
                    TransitionReason::ConsecutiveFailures { count: self.consecutive_failures, last: reason };
                self.degraded = false;
                self.consecutive_slow = 0;
                return Some(self.transition(LinkState::Down, now_ns, reason));
            }
        }

        // Link quality, with hysteresis.
        let failed = self.failed_in_window();
        let quality_change = if !self.degraded {
            if failed >= options.degrade_failures() {
                Some(TransitionReason::Loss { failed })
            } else if self.consecutive_slow >= options.failures_to_down {
                let rtt = self.last_rtt.unwrap_or_default();
                Some(TransitionReason::SlowRtt { rtt, count: self.consecutive_slow })
            } else {
                None
            }
        } else if self.consecutive_fast >= options.successes_to_up && failed <= options.restore_failures() {
            Some(TransitionReason::QualityRestored { rtt: self.last_rtt.unwrap_or_default(), failed })
        } else {
            None
        };
        let reason = quality_change?;
        self.degraded = !self.degraded;
        let to = match self.state {
            LinkState::Recovering => return None,
            _ if self.degraded => LinkState::Degraded,
            _ => LinkState::Up,
        };
        if to == self.state {
            return None;
        }
        Some(self.transition(to, now_ns, reason))
    }

    /// Records the drain's backlog at `now_ns`; leaves RECOVERING when it reaches 0.
    pub fn set_backlog(&mut self, bytes: u64, now_ns: u64) -> Option<LinkTransition> {
        self.backlog_bytes = bytes;
        if self.state != LinkState::Recovering || bytes > 0 {
            return None;
        }
        let to = if self.degraded { LinkState::Degraded } else { LinkState::Up };
        Some(self.transition(to, now_ns, TransitionReason::BacklogDrained))
    }

    fn transition(&mut self, to: LinkState, now_ns: u64, reason: TransitionReason) -> LinkTransition {
        let transition = LinkTransition { from: self.state, to, at_ns: now_ns, reason };
        self.state = to;
        self.since_ns = now_ns;
        if self.transitions.is_full() {
            self.transitions.pop_front();
        }
        let _ = self.transitions.push_back(transition);
        let (from, to) = (transition.from.name(), transition.to.name());
        let last_rtt_us = self.last_rtt.map(|rtt| rtt.as_micros() as u64);
        if transition.to == LinkState::Down || transition.to == LinkState::Degraded {
            tracing::warn!(
                from,
                to,
                at_ns = now_ns,
                %reason,
                last_rtt_us,
                consecutive_failures = self.consecutive_failures,
                failed_in_window = self.failed_in_window(),
                backlog_bytes = self.backlog_bytes,
                "link state changed"
            );
        } else {
            tracing::info!(
                from,
                to,
                at_ns = now_ns,
                %reason,
                last_rtt_us,
                consecutive_failures = self.consecutive_failures,
                failed_in_window = self.failed_in_window(),
                backlog_bytes = self.backlog_bytes,
                "link state changed"
            );
        }
        transition
    }
}

fn window_mask() -> u32 {
    (1_u32 << LOSS_WINDOW) - 1
}

/// One cheap request to the base.
pub trait Probe {
    /// Probes once, taking at most about `timeout`.
    fn probe(&mut self, timeout: Duration) -> ProbeOutcome;
}

/// Probes with a TCP handshake to `address` (no DNS lookup: a lookup could block unbounded).
///
/// It proves only that something accepts connections at `address`: in front of a local proxy or
/// a load balancer that accepts on its own, it cannot see a cut behind it; use [`HttpProbe`] there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConnectProbe {
    /// Where to connect.
    pub address: SocketAddr,
}

impl Probe for TcpConnectProbe {
    fn probe(&mut self, timeout: Duration) -> ProbeOutcome {
        let start = Instant::now();
        match TcpStream::connect_timeout(&self.address, timeout) {
            Ok(_stream) => ProbeOutcome::Ok { rtt: start.elapsed() },
            Err(error) => {
                tracing::debug!(address = %self.address, %error, "tcp probe failed");
                ProbeOutcome::Failed { reason: ProbeFailure::from_io(&error) }
            }
        }
    }
}

/// Probes with an HTTP/1.1 `HEAD path` to `address` (no DNS lookup), sending `Host: host`.
///
/// Any HTTP status line counts as reachable: an object store answering 403 or 404 still proves
/// the link. A timeout, a reset, or bytes that are not a status line are failures. The whole probe
/// (connect, write, read of the status line) is bounded by the timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    address: SocketAddr,
    host: String,
    path: String,
}

impl HttpProbe {
    /// A probe of `path` (starting with `/`) on `address`, with `host` as the `Host` header; both
    /// must be visible ASCII without spaces.
    pub fn new(address: SocketAddr, host: &str, path: &str) -> Result<HttpProbe, LinkOptionsError> {
        let clean = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_graphic());
        if !clean(host) {
            return Err(LinkOptionsError {
                field: "host",
                value: format!("{host:?}"),
                reason: "must be non-empty visible ASCII without spaces",
            });
        }
        if !clean(path) || !path.starts_with('/') {
            return Err(LinkOptionsError {
                field: "path",
                value: format!("{path:?}"),
                reason: "must start with '/' and be visible ASCII without spaces",
            });
        }
        Ok(HttpProbe { address, host: host.to_owned(), path: path.to_owned() })
    }

    /// Where the probe connects.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn exchange(&self, start: Instant, timeout: Duration) -> Result<(), ProbeFailure> {
        let deadline = start + timeout;
        let remaining = || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(ProbeFailure::Timeout)
            } else {
                Ok(left)
            }
        };
        let io_failure = |error: io::Error| ProbeFailure::from_io(&error);
        let mut stream = TcpStream::connect_timeout(&self.address, remaining()?).map_err(io_failure)?;
        let _ = stream.set_nodelay(true);
        let request = format!(
            "HEAD {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: summit-link-monitor\r\nConnection: close\r\n\r\n",
            self.path, self.host
        );
        stream.set_write_timeout(Some(remaining()?)).map_err(io_failure)?;
        stream.write_all(request.as_bytes()).map_err(io_failure)?;
        let mut line = [0_u8; MAX_STATUS_LINE_BYTES];
        let mut filled = 0;
        loop {
            stream.set_read_timeout(Some(remaining()?)).map_err(io_failure)?;
            match stream.read(&mut line[filled..]) {
                Ok(0) => return Err(ProbeFailure::Reset),
                Ok(read) => filled += read,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(io_failure(error)),
            }
            if let Some(end) = line[..filled].iter().position(|&byte| byte == b'\n') {
                return if is_status_line(&line[..end]) { Ok(()) } else { Err(ProbeFailure::BadResponse) };
            }
            if filled == line.len() {
                return Err(ProbeFailure::BadResponse);
            }
        }
    }
}

/// `HTTP/1.x NNN ...`
fn is_status_line(line: &[u8]) -> bool {
    line.len() >= 12
        && line.starts_with(b"HTTP/1.")
        && line[7].is_ascii_digit()
        && line[8] == b' '
        && line[9..12].iter().all(u8::is_ascii_digit)
}

impl Probe for HttpProbe {
    fn probe(&mut self, timeout: Duration) -> ProbeOutcome {
        let start = Instant::now();
        match self.exchange(start, timeout) {
            Ok(()) => ProbeOutcome::Ok { rtt: start.elapsed() },
            Err(reason) => {
                tracing::debug!(address = %self.address, %reason, "http probe failed");
                ProbeOutcome::Failed { reason }
            }
        }
    }
}

/// Why [`LinkMonitorHandle::spawn`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkMonitorError {
    /// An option is out of range.
    #[error(transparent)]
    Options(#[from] LinkOptionsError),
    /// The probe thread could not be started.
    #[error("cannot start the link monitor thread: {0}")]
    Spawn(#[source] io::Error),
}

struct Shared {
    clock: Arc<dyn Clock>,
    /// Taken by the probe thread to record an outcome and by `set_backlog`; never during a probe.
    monitor: Mutex<LinkMonitor>,
    /// Published copy, taken only to copy in or out.
    status: Mutex<LinkStatus>,
    events: Mutex<VecDeque<LinkTransition>>,
    events_ready: Condvar,
    events_dropped: AtomicU64,
    stopping: Mutex<bool>,
    stop_requested: Condvar,
}

/// Locks, recovering the data if a thread panicked while holding the lock (every critical section
/// here leaves the data consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Publishes the monitor's state and queues `transition`; called with the monitor locked so
    /// events are queued in order.
    /// `in_flight` `None` keeps the published flag.
    fn publish(&self, monitor: &LinkMonitor, transition: Option<LinkTransition>, in_flight: Option<bool>) {
        let mut status = monitor.status();
        {
            let mut published = lock(&self.status);
            status.probe_in_flight = in_flight.unwrap_or(published.probe_in_flight);
            *published = status;
        }
        if let Some(transition) = transition {
            let mut events = lock(&self.events);
            if events.len() >= EVENT_QUEUE_CAPACITY {
                self.events_dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                events.push_back(transition);
                self.events_ready.notify_all();
            }
        }
    }

    fn set_in_flight(&self, in_flight: bool) {
        lock(&self.status).probe_in_flight = in_flight;
    }
}

/// Runs a [`Probe`] every [`LinkOptions::probe_interval`] on its own thread; see the module docs.
///
/// Dropping the handle shuts the thread down (waiting for a probe in flight, at most the timeout).
pub struct LinkMonitorHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for LinkMonitorHandle {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("LinkMonitorHandle").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl LinkMonitorHandle {
    /// Starts probing with `probe` at once, then every interval; timestamps come from `clock`.
    pub fn spawn(
        probe: Box<dyn Probe + Send>,
        options: LinkOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<LinkMonitorHandle, LinkMonitorError> {
        let monitor = LinkMonitor::new(options, clock.now_ns())?;
        let status = monitor.status();
        let shared = Arc::new(Shared {
            clock,
            monitor: Mutex::new(monitor),
            status: Mutex::new(status),
            events: Mutex::new(VecDeque::with_capacity(EVENT_QUEUE_CAPACITY)),
            events_ready: Condvar::new(),
            events_dropped: AtomicU64::new(0),
            stopping: Mutex::new(false),
            stop_requested: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("link-monitor".to_owned())
            .spawn(move || probe_loop(&thread_shared, probe, options))
            .map_err(LinkMonitorError::Spawn)?;
        Ok(LinkMonitorHandle { shared, thread: Some(thread) })
    }

    /// A copy of the current status; never waits for a probe.
    pub fn status(&self) -> LinkStatus {
        lock(&self.shared.status).clone()
    }

    /// Current state (same source as [`status`](Self::status)).
    pub fn state(&self) -> LinkState {
        lock(&self.shared.status).state
    }

    /// Reports the drain's backlog; leaves RECOVERING at once when it reaches 0. Never waits for
    /// a probe.
    pub fn set_backlog(&self, bytes: u64) {
        let mut monitor = lock(&self.shared.monitor);
        let transition = monitor.set_backlog(bytes, self.shared.clock.now_ns());
        self.shared.publish(&monitor, transition, None);
    }

    /// The oldest queued transition, if any.
    pub fn try_next_event(&self) -> Option<LinkTransition> {
        lock(&self.shared.events).pop_front()
    }

    /// The oldest queued transition, waiting up to `timeout` for one.
    pub fn next_event(&self, timeout: Duration) -> Option<LinkTransition> {
        let deadline = Instant::now() + timeout;
        let mut events = lock(&self.shared.events);
        loop {
            if let Some(transition) = events.pop_front() {
                return Some(transition);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            events = self
                .shared
                .events_ready
                .wait_timeout(events, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Transitions dropped because the queue held [`EVENT_QUEUE_CAPACITY`] unread ones.
    pub fn events_dropped(&self) -> u64 {
        self.shared.events_dropped.load(Ordering::Relaxed)
    }

    /// Stops the probe thread and waits for it (at most one probe timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        *lock(&self.shared.stopping) = true;
        self.shared.stop_requested.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("link monitor thread panicked");
            }
        }
    }
}

impl Drop for LinkMonitorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn probe_loop(shared: &Shared, mut probe: Box<dyn Probe + Send>, options: LinkOptions) {
    let mut next_start = Instant::now();
    loop {
        {
            let mut stopping = lock(&shared.stopping);
            loop {
                if *stopping {
                    return;
                }
                let wait = next_start.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                stopping = shared
                    .stop_requested
                    .wait_timeout(stopping, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
        }
        let started = Instant::now();
        shared.set_in_flight(true);
        // No lock is held while probing.
        let outcome = probe.probe(options.probe_timeout);
        let outcome = match outcome {
            // A probe that overran its timeout failed, whatever it says.
            ProbeOutcome::Ok { rtt } if rtt > options.probe_timeout => {
                ProbeOutcome::Failed { reason: ProbeFailure::Timeout }
            }
            outcome => outcome,
        };
        {
            let mut monitor = lock(&shared.monitor);
            let transition = monitor.record_probe(outcome, shared.clock.now_ns());
            shared.publish(&monitor, transition, Some(false));
        }
        next_start = (started + options.probe_interval).max(Instant::now());
    }
}
