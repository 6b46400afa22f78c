//! The link monitor over real sockets: an HTTP "base" answering 403 (as an object store does to an
//! anonymous request) behind `hw_sim::link_proxy::LinkProxy`, probed through the proxy. A reset
//! cut and a black-hole cut both take the link DOWN within a generous deadline, restore brings it
//! back UP, added latency makes it DEGRADED, and `status()` answers promptly while probes hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use failover::link::{
    HttpProbe, LinkMonitorHandle, LinkOptions, LinkState, LinkTransition, Probe, ProbeFailure, ProbeOutcome,
    TcpConnectProbe,
};
use hw_sim::link_proxy::{CutMode, LinkProxy};
use ringbuffer::SystemClock;

/// A minimal HTTP server answering every request with `403 Forbidden`.
struct Base {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Base {
    fn start() -> Base {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind base");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(error) => panic!("base accept: {error}"),
                }
            }
        });
        Base { address, stop, thread: Some(thread) }
    }
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut request = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
    assert!(request.starts_with(b"HEAD /bucket HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&request));
    let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

impl Drop for Base {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits for the next transition to `to`, returning it and how long it took.
fn wait_for(handle: &LinkMonitorHandle, to: LinkState, deadline: Duration) -> (LinkTransition, Duration) {
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        match handle.next_event(left) {
            Some(transition) if transition.to == to => return (transition, start.elapsed()),
            Some(_) => {}
            None => panic!("no transition to {to} within {deadline:?}; status {:?}", handle.status()),
        }
    }
}

fn drain_events(handle: &LinkMonitorHandle) {
    while handle.try_next_event().is_some() {}
}

#[test]
fn http_probe_counts_any_status_line_and_fails_on_reset_and_timeout() {
    let base = Base::start();
    let mut probe = HttpProbe::new(base.address, "s3.base.example", "/bucket").expect("probe");
    assert!(matches!(probe.probe(Duration::from_secs(2)), ProbeOutcome::Ok { .. }));

    let proxy = LinkProxy::start("127.0.0.1:0".parse().expect("addr"), base.address).expect("proxy");
    let mut probe = HttpProbe::new(proxy.local_addr(), "s3.base.example", "/bucket").expect("probe");
    assert!(matches!(probe.probe(Duration::from_secs(2)), ProbeOutcome::Ok { .. }));
    proxy.control().cut(CutMode::Reset);
    assert_eq!(probe.probe(Duration::from_secs(2)), ProbeOutcome::Failed { reason: ProbeFailure::Reset });
    proxy.control().cut(CutMode::BlackHole);
    let start = Instant::now();
    assert_eq!(
        probe.probe(Duration::from_millis(200)),
        ProbeOutcome::Failed { reason: ProbeFailure::Timeout }
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "{took:?}");

    // Not HTTP at all.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
    });
    let mut probe = HttpProbe::new(address, "base", "/").expect("probe");
    assert_eq!(
        probe.probe(Duration::from_secs(2)),
        ProbeOutcome::Failed { reason: ProbeFailure::BadResponse }
    );
    server.join().expect("server");

    let error = HttpProbe::new(address, "base\r\nX-Evil: 1", "/").expect_err("header injection");
    assert_eq!(error.field, "host");
    let error = HttpProbe::new(address, "base", "bucket").expect_err("relative path");
    assert_eq!(error.field, "path");
}

#[test]
fn tcp_probe_sees_a_closed_port() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut probe = TcpConnectProbe { address: listener.local_addr().expect("address") };
    assert!(matches!(probe.probe(Duration::from_secs(2)), ProbeOutcome::Ok { .. }));
    drop(listener);
    assert_eq!(probe.probe(Duration::from_secs(2)), ProbeOutcome::Failed { reason: ProbeFailure::Refused });
}

#[test]
fn cuts_through_the_proxy_go_down_and_restore_comes_back_up() {
    let base = Base::start();
    let proxy = LinkProxy::start("127.0.0.1:0".parse().expect("addr"), base.address).expect("proxy");
    let control = proxy.control();
    let options = LinkOptions {
        probe_interval: Duration::from_millis(50),
        probe_timeout: Duration::from_millis(140),
        degraded_rtt: Duration::from_millis(100),
        ..LinkOptions::default()
    };
    let bound = options.detection_bound();
    // Generous: scheduling on a loaded 2-core CI machine.
    let deadline = bound * 10;
    let probe = HttpProbe::new(proxy.local_addr(), "s3.base.example", "/bucket").expect("probe");
    let handle = LinkMonitorHandle::spawn(Box::new(probe), options, Arc::new(SystemClock)).expect("spawn");
    wait_for(&handle, LinkState::Up, deadline);

    // Reset: probes fail at once.
    drain_events(&handle);
    control.cut(CutMode::Reset);
    let (transition, took) = wait_for(&handle, LinkState::Down, deadline);
    eprintln!("reset cut detected after {took:?} (bound {bound:?})");
    assert!(matches!(transition.reason, failover::link::TransitionReason::ConsecutiveFailures { .. }));
    control.restore();
    let (transition, took) = wait_for(&handle, LinkState::Up, deadline);
    assert_eq!(transition.from, LinkState::Down);
    eprintln!("restore seen after {took:?}");

    // Black hole: probes hang until their timeout; status() answers meanwhile.
    drain_events(&handle);
    control.cut(CutMode::BlackHole);
    let cut_at = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut samples_in_flight = 0;
    let mut down_after = None;
    while down_after.is_none() || samples_in_flight < 20 {
        assert!(cut_at.elapsed() < deadline * 2, "black hole: {:?}", handle.status());
        let start = Instant::now();
        let status = handle.status();
        slowest = slowest.max(start.elapsed());
        samples_in_flight += u32::from(status.probe_in_flight);
        if down_after.is_none() && status.state == LinkState::Down {
            down_after = Some(cut_at.elapsed());
        }
        thread::sleep(Duration::from_millis(2));
    }
    let down_after = down_after.expect("down");
    eprintln!("black-hole cut detected after {down_after:?} (bound {bound:?}); slowest status() {slowest:?}");
    assert!(down_after < deadline);
    assert!(slowest < Duration::from_millis(50), "status() took {slowest:?} while probes hung");
    let (transition, _) = wait_for(&handle, LinkState::Down, deadline);
    assert!(matches!(
        transition.reason,
        failover::link::TransitionReason::ConsecutiveFailures { last: ProbeFailure::Timeout, .. }
    ));

    // Restore with a backlog: RECOVERING until the drain reports 0.
    handle.set_backlog(123_456);
    control.restore();
    let (transition, _) = wait_for(&handle, LinkState::Recovering, deadline);
    assert_eq!(transition.from, LinkState::Down);
    handle.set_backlog(0);
    let (transition, _) = wait_for(&handle, LinkState::Up, Duration::from_secs(1));
    assert_eq!(transition.from, LinkState::Recovering);
    assert_eq!(handle.events_dropped(), 0);
    handle.shutdown();
}

#[test]
fn latency_through_the_proxy_degrades_and_clears() {
    let base = Base::start();
    let proxy = LinkProxy::start("127.0.0.1:0".parse().expect("addr"), base.address).expect("proxy");
    let control = proxy.control();
    let options = LinkOptions {
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(290),
        degraded_rtt: Duration::from_millis(60),
        ..LinkOptions::default()
    };
    let probe = HttpProbe::new(proxy.local_addr(), "s3.base.example", "/bucket").expect("probe");
    let handle = LinkMonitorHandle::spawn(Box::new(probe), options, Arc::new(SystemClock)).expect("spawn");
    let deadline = Duration::from_secs(10);
    wait_for(&handle, LinkState::Up, deadline);
    // 40 ms each way: about 80 ms a probe, above 60 ms and well within the 290 ms timeout.
    control.set_latency(Duration::from_millis(40));
    let (transition, _) = wait_for(&handle, LinkState::Degraded, deadline);
    assert!(matches!(transition.reason, failover::link::TransitionReason::SlowRtt { .. }), "{transition:?}");
    assert!(handle.status().last_rtt.expect("rtt") > Duration::from_millis(60));
    control.set_latency(Duration::ZERO);
    let (transition, _) = wait_for(&handle, LinkState::Up, deadline);
    assert_eq!(transition.from, LinkState::Degraded);
    handle.shutdown();
}
