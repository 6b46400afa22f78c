//! The link monitor's runner ([`failover::link::LinkMonitorHandle`]) with scripted probes:
//! timestamps from the workspace clock, a hanging probe never blocks `status()` or
//! `set_backlog()`, and the bounded event queue drops and counts on overflow.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use failover::link::{
    LinkMonitorHandle, LinkOptions, LinkState, Probe, ProbeFailure, ProbeOutcome, EVENT_QUEUE_CAPACITY,
};
use ringbuffer::ManualClock;

/// Succeeds while `up`, otherwise hangs for the whole timeout and fails (a black hole).
struct ScriptedProbe {
    up: Arc<AtomicBool>,
    probes: Arc<AtomicU64>,
}

impl Probe for ScriptedProbe {
    fn probe(&mut self, timeout: Duration) -> ProbeOutcome {
        self.probes.fetch_add(1, Ordering::SeqCst);
        if self.up.load(Ordering::SeqCst) {
            ProbeOutcome::Ok { rtt: Duration::from_micros(100) }
        } else {
            thread::sleep(timeout);
            ProbeOutcome::Failed { reason: ProbeFailure::Timeout }
        }
    }
}

/// Fails twice then succeeds, forever: with N = 2 and M = 1, a transition every 1.5 probes.
struct FlappingProbe {
    count: u64,
}

impl Probe for FlappingProbe {
    fn probe(&mut self, _timeout: Duration) -> ProbeOutcome {
        self.count += 1;
        if self.count.is_multiple_of(3) {
            ProbeOutcome::Ok { rtt: Duration::from_micros(10) }
        } else {
            ProbeOutcome::Failed { reason: ProbeFailure::Refused }
        }
    }
}

fn wait_for(handle: &LinkMonitorHandle, to: LinkState, deadline: Duration) -> failover::link::LinkTransition {
    let give_up = Instant::now() + deadline;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match handle.next_event(left) {
            Some(transition) if transition.to == to => return transition,
            Some(_) => {}
            None => panic!("no transition to {to} within {deadline:?}; status {:?}", handle.status()),
        }
    }
}

#[test]
fn timestamps_come_from_the_clock_and_a_hanging_probe_blocks_nobody() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let up = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(AtomicU64::new(0));
    let probe = ScriptedProbe { up: Arc::clone(&up), probes: Arc::clone(&probes) };
    let options = LinkOptions {
        probe_interval: Duration::from_millis(110),
        probe_timeout: Duration::from_millis(300),
        degraded_rtt: Duration::from_millis(100),
        ..LinkOptions::default()
    };
    let handle = LinkMonitorHandle::spawn(Box::new(probe), options, clock.clone()).expect("spawn");
    let transition = wait_for(&handle, LinkState::Up, Duration::from_secs(10));
    assert_eq!(transition.at_ns, 1_000_000, "the clock did not move");
    assert_eq!(handle.status().since_ns, 1_000_000);

    clock.advance_ns(5_000_000_000);
    up.store(false, Ordering::SeqCst);
    // While probes hang for 300 ms each, status() and set_backlog() answer at once.
    let mut slowest = Duration::ZERO;
    let mut seen_in_flight = 0;
    let give_up = Instant::now() + Duration::from_secs(10);
    while handle.state() != LinkState::Down {
        assert!(Instant::now() < give_up, "never DOWN: {:?}", handle.status());
        let start = Instant::now();
        let status = handle.status();
        handle.set_backlog(1 << 30);
        slowest = slowest.max(start.elapsed());
        seen_in_flight += u32::from(status.probe_in_flight);
        thread::sleep(Duration::from_millis(5));
    }
    assert!(seen_in_flight > 10, "probes were not observed in flight ({seen_in_flight})");
    assert!(slowest < Duration::from_millis(50), "status() took {slowest:?}");
    let transition = wait_for(&handle, LinkState::Down, Duration::from_secs(1));
    assert_eq!(transition.at_ns, 5_001_000_000);

    up.store(true, Ordering::SeqCst);
    let transition = wait_for(&handle, LinkState::Recovering, Duration::from_secs(10));
    assert_eq!(transition.from, LinkState::Down);
    clock.advance_ns(1_000);
    handle.set_backlog(0);
    let transition = handle.try_next_event().expect("set_backlog(0) transitions at once");
    assert_eq!((transition.from, transition.to), (LinkState::Recovering, LinkState::Up));
    assert_eq!(transition.at_ns, 5_001_001_000);
    assert_eq!(handle.events_dropped(), 0);

    // Shutdown waits for at most the probe in flight.
    up.store(false, Ordering::SeqCst);
    let before = probes.load(Ordering::SeqCst);
    while probes.load(Ordering::SeqCst) == before {
        thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    handle.shutdown();
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_event_queue_drops_and_counts_on_overflow() {
    let options = LinkOptions {
        probe_interval: Duration::from_millis(1),
        probe_timeout: Duration::from_millis(1),
        failures_to_down: 2,
        successes_to_up: 1,
        degraded_rtt: Duration::from_micros(500),
        ..LinkOptions::default()
    };
    let clock = Arc::new(ManualClock::new(0));
    let handle =
        LinkMonitorHandle::spawn(Box::new(FlappingProbe { count: 0 }), options, clock).expect("spawn");
    let give_up = Instant::now() + Duration::from_secs(30);
    while handle.events_dropped() < 5 {
        assert!(Instant::now() < give_up, "queue never overflowed: {:?}", handle.status());
        thread::sleep(Duration::from_millis(5));
    }
    let status = handle.status();
    assert_eq!(status.recent_transitions.len(), failover::link::TRANSITION_HISTORY);
    // The queue kept the oldest EVENT_QUEUE_CAPACITY, in order: Up, Down, Up, ...
    for index in 0..EVENT_QUEUE_CAPACITY {
        let transition = handle.try_next_event().expect("queued");
        let expected = if index.is_multiple_of(2) { LinkState::Up } else { LinkState::Down };
        assert_eq!(transition.to, expected, "event {index}");
    }
    handle.shutdown();
}
