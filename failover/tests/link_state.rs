//! The link state machine ([`failover::link::LinkMonitor`]) in simulated time: detection bound,
//! hysteresis (no flapping), RECOVERING with a backlog, DEGRADED on slow or lossy probes, the
//! bounded transition history, and option validation.

use std::time::Duration;

use failover::link::{
    LinkMonitor, LinkOptions, LinkState, LinkTransition, ProbeFailure, ProbeOutcome, TransitionReason,
    LOSS_WINDOW, TRANSITION_HISTORY,
};

const MS: u64 = 1_000_000;

fn ok(rtt_ms: u64) -> ProbeOutcome {
    ProbeOutcome::Ok { rtt: Duration::from_millis(rtt_ms) }
}

fn failed() -> ProbeOutcome {
    ProbeOutcome::Failed { reason: ProbeFailure::Timeout }
}

/// A monitor with default options, brought UP with M fast probes; returns it and the time.
fn up_monitor(options: LinkOptions) -> (LinkMonitor, u64) {
    let mut monitor = LinkMonitor::new(options, 0).expect("valid options");
    let mut now = 0;
    for _ in 0..options.successes_to_up {
        now += 500 * MS;
        monitor.record_probe(ok(5), now);
    }
    assert_eq!(monitor.state(), LinkState::Up);
    (monitor, now)
}

#[test]
fn defaults_meet_the_three_second_detection_budget() {
    let options = LinkOptions::default();
    options.validate().expect("defaults are valid");
    let budget = Duration::from_secs(3);
    // The formula (probes on a fixed grid) ...
    assert!(options.probe_interval * options.failures_to_down + options.probe_timeout <= budget);
    // ... and the bound for probes run one at a time, which is what the runner does.
    assert!(options.detection_bound() <= budget, "{:?}", options.detection_bound());
    assert!(options.probe_timeout < options.probe_interval * options.failures_to_down);
}

/// Replays the runner's schedule in simulated time: a probe starts every interval, or when the
/// previous one ends if it overran; while the link is cut a probe fails after `fail_after`.
/// Returns the time from the cut to DOWN.
fn simulated_detection(options: LinkOptions, cut_at_ns: u64, fail_after: Duration) -> u64 {
    let mut monitor = LinkMonitor::new(options, 0).expect("valid options");
    let interval = options.probe_interval.as_nanos() as u64;
    let rtt = 5 * MS;
    let mut start = 0;
    loop {
        let (outcome, end) = if start < cut_at_ns {
            (ok(5), start + rtt)
        } else {
            (failed(), start + fail_after.as_nanos() as u64)
        };
        if let Some(transition) = monitor.record_probe(outcome, end) {
            if transition.to == LinkState::Down {
                assert!(start >= cut_at_ns);
                return end - cut_at_ns;
            }
        }
        start = (start + interval).max(end);
        assert!(start < cut_at_ns + 60_000 * MS, "cut never detected");
    }
}

#[test]
fn a_cut_is_down_within_three_seconds_with_defaults() {
    let options = LinkOptions::default();
    let mut worst_ns = 0;
    // Cut at every 10 ms offset within an interval, well after the link came up.
    for offset_ms in 0..500 {
        let cut_at = 5_000 * MS + offset_ms * MS;
        for fail_after in [Duration::ZERO, options.probe_timeout] {
            worst_ns = worst_ns.max(simulated_detection(options, cut_at, fail_after));
        }
    }
    assert!(worst_ns <= 3_000 * MS, "worst detection {} ms", worst_ns / MS);
    assert!(worst_ns <= options.detection_bound().as_nanos() as u64);
}

#[test]
fn starts_down_and_comes_up_after_m_consecutive_successes() {
    let options = LinkOptions::default();
    let mut monitor = LinkMonitor::new(options, 7).expect("valid options");
    assert_eq!((monitor.state(), monitor.since_ns()), (LinkState::Down, 7));
    assert_eq!(monitor.record_probe(ok(5), 10), None);
    assert_eq!(monitor.record_probe(ok(5), 20), None);
    assert_eq!(monitor.record_probe(failed(), 30), None, "a failure restarts the count");
    assert_eq!(monitor.record_probe(ok(5), 40), None);
    assert_eq!(monitor.record_probe(ok(5), 50), None);
    let transition = monitor.record_probe(ok(5), 60).expect("third success in a row");
    assert_eq!(
        transition,
        LinkTransition {
            from: LinkState::Down,
            to: LinkState::Up,
            at_ns: 60,
            reason: TransitionReason::ConsecutiveSuccesses { count: 3 },
        }
    );
    assert_eq!((monitor.state(), monitor.since_ns()), (LinkState::Up, 60));
    assert_eq!(monitor.last_rtt(), Some(Duration::from_millis(5)));
}

#[test]
fn n_consecutive_failures_take_the_link_down() {
    let (mut monitor, mut now) = up_monitor(LinkOptions::default());
    now += 500 * MS;
    assert_eq!(monitor.record_probe(failed(), now), None);
    now += 500 * MS;
    assert_eq!(monitor.record_probe(failed(), now), None);
    now += 500 * MS;
    let reason = ProbeFailure::Refused;
    let transition = monitor.record_probe(ProbeOutcome::Failed { reason }, now).expect("third failure");
    assert_eq!((transition.from, transition.to, transition.at_ns), (LinkState::Up, LinkState::Down, now));
    assert_eq!(transition.reason, TransitionReason::ConsecutiveFailures { count: 3, last: reason });
    assert_eq!(monitor.consecutive_failures(), 3);
    assert_eq!(monitor.since_ns(), now);
}

#[test]
fn a_single_lost_probe_never_changes_up() {
    let (mut monitor, mut now) = up_monitor(LinkOptions::default());
    for round in 0..100 {
        now += 500 * MS;
        let outcome = if round % 7 == 3 { failed() } else { ok(5) };
        assert_eq!(monitor.record_probe(outcome, now), None, "round {round}");
        assert_eq!(monitor.state(), LinkState::Up);
    }
    // Two lost in a row (fewer than N) do not either.
    let (mut monitor, mut now) = up_monitor(LinkOptions::default());
    for outcome in [failed(), failed(), ok(5)] {
        now += 500 * MS;
        assert_eq!(monitor.record_probe(outcome, now), None);
    }
    assert_eq!(monitor.state(), LinkState::Up);
}

#[test]
fn loss_below_the_threshold_stays_up() {
    let (mut monitor, mut now) = up_monitor(LinkOptions::default());
    // One probe in ten lost: 2 of 20 < 0.2.
    for round in 0_u32..500 {
        now += 500 * MS;
        let outcome = if round.is_multiple_of(10) { failed() } else { ok(5) };
        assert_eq!(monitor.record_probe(outcome, now), None, "round {round}");
    }
    assert_eq!(monitor.state(), LinkState::Up);
}

#[test]
fn alternating_loss_degrades_but_never_goes_down() {
    for pattern in [&[false, true][..], &[true, false], &[true, true, false]] {
        let (mut monitor, mut now) = up_monitor(LinkOptions::default());
        let mut states = Vec::new();
        for round in 0..400 {
            now += 500 * MS;
            let outcome = if pattern[round % pattern.len()] { failed() } else { ok(5) };
            if let Some(transition) = monitor.record_probe(outcome, now) {
                states.push(transition.to);
                assert!(matches!(transition.reason, TransitionReason::Loss { failed } if failed >= 4));
            }
            assert_ne!(monitor.state(), LinkState::Down, "pattern {pattern:?} round {round}");
        }
        assert_eq!(states, [LinkState::Degraded], "pattern {pattern:?}: degraded once, no flapping");
        // Loss stops: DEGRADED clears once the window holds at most 2 failures.
        let mut restored_after = None;
        for round in 0..LOSS_WINDOW {
            now += 500 * MS;
            if let Some(transition) = monitor.record_probe(ok(5), now) {
                assert_eq!(transition.to, LinkState::Up);
                restored_after = Some(round + 1);
                break;
            }
        }
        let restored_after = restored_after.expect("restored within a window");
        assert!(restored_after >= 3, "pattern {pattern:?}");
    }
}

#[test]
fn slow_rtt_degrades_with_hysteresis_and_recovers() {
    let options = LinkOptions::default();
    let (mut monitor, mut now) = up_monitor(options);
    let mut probe = |monitor: &mut LinkMonitor, rtt_ms| {
        now += 500 * MS;
        monitor.record_probe(ok(rtt_ms), now)
    };
    // Two slow probes, then a fast one: not enough.
    assert_eq!(probe(&mut monitor, 300), None);
    assert_eq!(probe(&mut monitor, 300), None);
    assert_eq!(probe(&mut monitor, 20), None);
    // N slow in a row.
    assert_eq!(probe(&mut monitor, 250), None);
    assert_eq!(probe(&mut monitor, 250), None);
    let transition = probe(&mut monitor, 300).expect("third slow probe");
    assert_eq!((transition.from, transition.to), (LinkState::Up, LinkState::Degraded));
    assert_eq!(transition.reason, TransitionReason::SlowRtt { rtt: Duration::from_millis(300), count: 3 });
    // Just under degraded_rtt is inside the hysteresis band: still DEGRADED.
    for _ in 0..10 {
        assert_eq!(probe(&mut monitor, 180), None);
    }
    assert_eq!(monitor.state(), LinkState::Degraded);
    // M fast probes restore UP.
    assert_eq!(probe(&mut monitor, 20), None);
    assert_eq!(probe(&mut monitor, 20), None);
    let transition = probe(&mut monitor, 20).expect("third fast probe");
    assert_eq!((transition.from, transition.to), (LinkState::Degraded, LinkState::Up));
    assert!(matches!(transition.reason, TransitionReason::QualityRestored { .. }));
    // A degraded link still goes DOWN on N failures.
    assert_eq!(probe(&mut monitor, 300), None);
    assert_eq!(probe(&mut monitor, 300), None);
    assert_eq!(probe(&mut monitor, 300).map(|t| t.to), Some(LinkState::Degraded));
    for expected in [None, None, Some(LinkState::Down)] {
        now += 500 * MS;
        assert_eq!(monitor.record_probe(failed(), now).map(|t| t.to), expected);
    }
}

#[test]
fn down_then_recovering_then_up_with_a_backlog() {
    let (mut monitor, mut now) = up_monitor(LinkOptions::default());
    for _ in 0..3 {
        now += 500 * MS;
        monitor.record_probe(failed(), now);
    }
    assert_eq!(monitor.state(), LinkState::Down);
    // Island mode: data piles up; the backlog alone changes nothing.
    assert_eq!(monitor.set_backlog(40 << 30, now), None);
    // Many failures during the cut must not leave the link DEGRADED when it comes back.
    for _ in 0..50 {
        now += 500 * MS;
        assert_eq!(monitor.record_probe(failed(), now), None);
    }
    for _ in 0..2 {
        now += 500 * MS;
        assert_eq!(monitor.record_probe(ok(5), now), None);
    }
    now += 500 * MS;
    let transition = monitor.record_probe(ok(5), now).expect("M successes");
    assert_eq!((transition.from, transition.to), (LinkState::Down, LinkState::Recovering));
    assert_eq!(monitor.since_ns(), now);
    // Draining: still RECOVERING while bytes remain, whatever the probes say.
    for backlog in [30_u64 << 30, 10 << 30, 1] {
        now += 500 * MS;
        assert_eq!(monitor.set_backlog(backlog, now), None);
        assert_eq!(monitor.record_probe(ok(5), now), None);
        assert_eq!(monitor.state(), LinkState::Recovering);
    }
    now += 100 * MS;
    let transition = monitor.set_backlog(0, now).expect("drained");
    assert_eq!(
        transition,
        LinkTransition {
            from: LinkState::Recovering,
            to: LinkState::Up,
            at_ns: now,
            reason: TransitionReason::BacklogDrained,
        }
    );
    assert_eq!(monitor.status().backlog_bytes, 0);
    // A backlog while UP does not mean RECOVERING.
    assert_eq!(monitor.set_backlog(1 << 20, now), None);
    assert_eq!(monitor.state(), LinkState::Up);
}

#[test]
fn recovering_goes_down_on_a_new_cut_and_drains_to_degraded_on_a_slow_link() {
    let options = LinkOptions::default();
    let mut monitor = LinkMonitor::new(options, 0).expect("valid options");
    let mut now = 0;
    monitor.set_backlog(1 << 30, now);
    for _ in 0..3 {
        now += 500 * MS;
        monitor.record_probe(ok(5), now);
    }
    assert_eq!(monitor.state(), LinkState::Recovering);
    for _ in 0..3 {
        now += 500 * MS;
        monitor.record_probe(failed(), now);
    }
    assert_eq!(monitor.state(), LinkState::Down);
    // Back, slow: RECOVERING is shown while draining, DEGRADED once drained.
    for _ in 0..10 {
        now += 500 * MS;
        let transition = monitor.record_probe(ok(400), now);
        assert!(transition.is_none() || transition.map(|t| t.to) == Some(LinkState::Recovering));
    }
    assert_eq!(monitor.state(), LinkState::Recovering);
    assert_eq!(monitor.set_backlog(0, now).map(|t| t.to), Some(LinkState::Degraded));
}

#[test]
fn the_transition_history_is_bounded() {
    let options = LinkOptions::default();
    let mut monitor = LinkMonitor::new(options, 0).expect("valid options");
    let mut now = 0;
    let mut all = Vec::new();
    for _ in 0..50 {
        for outcome in [ok(5), ok(5), ok(5), failed(), failed(), failed()] {
            now += 500 * MS;
            all.extend(monitor.record_probe(outcome, now));
        }
    }
    assert_eq!(all.len(), 100);
    let recent: Vec<LinkTransition> = monitor.recent_transitions().copied().collect();
    assert_eq!(recent.len(), TRANSITION_HISTORY);
    assert_eq!(recent[..], all[all.len() - TRANSITION_HISTORY..]);
    let status = monitor.status();
    assert_eq!(status.recent_transitions[..], all[all.len() - TRANSITION_HISTORY..]);
    assert_eq!(status.probes_total, 300);
    assert_eq!(status.probe_failures_total, 150);
    assert_eq!((status.state, status.since_ns), (LinkState::Down, now));
}

#[test]
fn option_errors_name_the_field_and_value() {
    let defaults = LinkOptions::default();
    let cases: Vec<(LinkOptions, &str, &str)> = vec![
        (LinkOptions { probe_interval: Duration::ZERO, ..defaults }, "probe_interval", "0ns"),
        (LinkOptions { probe_timeout: Duration::ZERO, ..defaults }, "probe_timeout", "0ns"),
        (LinkOptions { probe_timeout: Duration::from_millis(1500), ..defaults }, "probe_timeout", "1.5s"),
        (LinkOptions { failures_to_down: 1, ..defaults }, "failures_to_down", "1"),
        (LinkOptions { successes_to_up: 0, ..defaults }, "successes_to_up", "0"),
        (LinkOptions { degraded_rtt: Duration::from_millis(750), ..defaults }, "degraded_rtt", "750ms"),
        (LinkOptions { degraded_rtt: Duration::ZERO, ..defaults }, "degraded_rtt", "0ns"),
        (LinkOptions { degraded_loss: 0.05, ..defaults }, "degraded_loss", "0.05"),
        (LinkOptions { degraded_loss: 1.5, ..defaults }, "degraded_loss", "1.5"),
        (LinkOptions { degraded_loss: f64::NAN, ..defaults }, "degraded_loss", "NaN"),
    ];
    for (options, field, value) in cases {
        let error = options.validate().expect_err(field);
        assert_eq!(error.field, field);
        assert_eq!(error.value, value);
        let message = error.to_string();
        assert!(message.contains(field) && message.contains(value), "{message}");
        let error = LinkMonitor::new(options, 0).expect_err("rejected by new too");
        assert_eq!(error.field, field);
    }
}
