//! Tests of the TCP link fault proxy against an echo server, all on 127.0.0.1: pass-through,
//! reset and black-hole cuts, restore, bandwidth limit, latency and a flap schedule.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hw_sim::link_proxy::{CutMode, FlapSchedule, LinkProxy, LinkState};

const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// An echo server on an ephemeral port; stops and joins its threads on drop.
struct EchoServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = thread::spawn(move || {
            let mut workers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stop = Arc::clone(&stop);
                        workers.push(thread::spawn(move || echo(stream, &stop)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for worker in workers {
                worker.join().unwrap();
            }
        });
        EchoServer { addr, stopping, thread: Some(thread) }
    }
}

fn echo(mut stream: TcpStream, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut buffer = [0_u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(size) => {
                if stream.write_all(&buffer[..size]).is_err() {
                    return;
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn start_pair() -> (EchoServer, LinkProxy) {
    let server = EchoServer::start();
    let proxy = LinkProxy::start("127.0.0.1:0".parse().unwrap(), server.addr).unwrap();
    (server, proxy)
}

fn connect(proxy: &LinkProxy) -> TcpStream {
    let stream = TcpStream::connect_timeout(&proxy.local_addr(), IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut echoed = vec![0_u8; message.len()];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, message);
}

/// True if the peer closed the connection (EOF or reset) within the read timeout.
fn sees_close(stream: &mut TcpStream) -> bool {
    let mut buffer = [0_u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn bytes_pass_through_and_are_counted() {
    let (_server, proxy) = start_pair();
    let mut client = connect(&proxy);
    round_trip(&mut client, b"hello summit");
    let control = proxy.control();
    assert_eq!(control.state(), LinkState::Up);
    assert_eq!(control.connections_total(), 1);
    // The counter is bumped just after the write the client already saw: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(1);
    while control.bytes_forwarded_total() < 2 * 12 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(control.bytes_forwarded_total(), 2 * 12);
}

#[test]
fn reset_closes_existing_and_new_connections_until_restored() {
    let (_server, proxy) = start_pair();
    let control = proxy.control();
    let mut existing = connect(&proxy);
    round_trip(&mut existing, b"before cut");

    control.cut(CutMode::Reset);
    assert_eq!(control.state(), LinkState::Down(CutMode::Reset));
    existing.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(sees_close(&mut existing), "existing connection must see EOF or reset within 1 s");

    let mut refused = connect(&proxy);
    let _ = refused.write_all(b"anyone?");
    assert!(sees_close(&mut refused), "new connection must be closed without data");
    assert!(control.connections_reset_total() >= 2);

    control.restore();
    let mut fresh = connect(&proxy);
    round_trip(&mut fresh, b"after restore");
}

#[test]
fn black_hole_swallows_bytes_until_restored() {
    let (_server, proxy) = start_pair();
    let control = proxy.control();
    let mut existing = connect(&proxy);
    round_trip(&mut existing, b"before cut");

    control.cut(CutMode::BlackHole);
    existing.write_all(b"into the void").unwrap();
    existing.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buffer = [0_u8; 64];
    let error = existing.read(&mut buffer).expect_err("no echo may arrive through a black hole");
    assert!(matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{error}");

    let mut held = connect(&proxy);
    held.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    held.write_all(b"held").unwrap();
    let error = held.read(&mut buffer).expect_err("a held connection is never forwarded");
    assert!(matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{error}");

    control.restore();
    let mut fresh = connect(&proxy);
    round_trip(&mut fresh, b"after restore");
    existing.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    round_trip(&mut existing, b"existing flows again");
}

#[test]
fn bandwidth_limit_slows_a_transfer() {
    let (_server, proxy) = start_pair();
    proxy.control().set_bandwidth_limit(Some(200_000));
    let mut client = connect(&proxy);
    let message: Vec<u8> = (0..100_000_u32).map(|index| index as u8).collect();
    let mut reader = client.try_clone().unwrap();
    let started = Instant::now();
    let echo_reader = thread::spawn(move || {
        let mut echoed = vec![0_u8; 100_000];
        reader.read_exact(&mut echoed).unwrap();
        echoed
    });
    client.write_all(&message).unwrap();
    let echoed = echo_reader.join().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(echoed, message);
    // 100 KB at 200 KB/s with a 20 KB burst: at least 0.4 s each way (they overlap). Lower bound only.
    assert!(elapsed >= Duration::from_millis(350), "took only {elapsed:?}");
}

#[test]
fn latency_delays_a_round_trip() {
    let (_server, proxy) = start_pair();
    proxy.control().set_latency(Duration::from_millis(100));
    let mut client = connect(&proxy);
    let started = Instant::now();
    round_trip(&mut client, b"ping");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(100), "took only {elapsed:?}");
}

#[test]
fn flap_schedule_goes_down_then_up() {
    let (_server, proxy) = start_pair();
    let control = proxy.control();
    proxy.run_schedule(FlapSchedule::new(vec![
        (Duration::ZERO, LinkState::Down(CutMode::Reset)),
        (Duration::from_millis(300), LinkState::Up),
    ]));
    let deadline = Instant::now() + Duration::from_secs(1);
    while control.state() == LinkState::Up && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(control.state(), LinkState::Down(CutMode::Reset));
    let mut refused = connect(&proxy);
    assert!(sees_close(&mut refused));

    let deadline = Instant::now() + Duration::from_secs(2);
    while control.state() != LinkState::Up && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(control.state(), LinkState::Up);
    let mut fresh = connect(&proxy);
    round_trip(&mut fresh, b"after flap");
}

#[test]
fn dropping_the_proxy_stops_a_long_schedule_promptly() {
    let (_server, proxy) = start_pair();
    proxy.run_schedule(FlapSchedule::new(vec![(Duration::from_secs(60), LinkState::Down(CutMode::Reset))]));
    let _client = connect(&proxy);
    let started = Instant::now();
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(5), "drop took {:?}", started.elapsed());
}
