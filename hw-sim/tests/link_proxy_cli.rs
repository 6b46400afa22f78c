//! End-to-end test of the `hw-sim-link-proxy` binary: an echo server upstream on 127.0.0.1, the
//! proxy driven through its stdin, bytes checked to pass before `cut reset`, not after, and again
//! after `restore`; bad commands answer `error:`; `quit` exits 0. Every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_millis(500);

/// Starts a detached echo server on an ephemeral 127.0.0.1 port (it dies with the test process).
fn start_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buffer = [0u8; 4096];
                while let Ok(read @ 1..) = stream.read(&mut buffer) {
                    if stream.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

/// The proxy process; killed on drop if the test failed before `quit`.
struct ProxyProcess {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<String>,
}

impl ProxyProcess {
    fn spawn(upstream: SocketAddr) -> ProxyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hw-sim-link-proxy"))
            .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, replies) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        ProxyProcess { child, stdin, replies }
    }

    fn next_line(&self) -> String {
        self.replies.recv_timeout(REPLY_TIMEOUT).expect("no reply from hw-sim-link-proxy within 2 s")
    }

    fn command(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.next_line()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects through the proxy and returns whether `payload` comes back intact.
fn echoes(proxy: SocketAddr, payload: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&proxy, IO_TIMEOUT) else { return false };
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream_echoes(&mut stream, payload)
}

/// Writes `payload` to an open stream and returns whether it comes back intact.
fn stream_echoes(stream: &mut TcpStream, payload: &[u8]) -> bool {
    if stream.write_all(payload).is_err() {
        return false;
    }
    let mut received = vec![0u8; payload.len()];
    stream.read_exact(&mut received).is_ok() && received == payload
}

#[test]
fn cli_controls_the_link_from_stdin() {
    let started = Instant::now();
    let upstream = start_echo_server();
    let mut proxy = ProxyProcess::spawn(upstream);

    let banner = proxy.next_line();
    let address: SocketAddr = banner
        .strip_prefix("ok listening ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected banner `{banner}`"))
        .parse()
        .unwrap();

    // Up: bytes pass, on a connection kept open across the cut.
    let mut open = TcpStream::connect_timeout(&address, IO_TIMEOUT).unwrap();
    open.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    open.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    assert!(stream_echoes(&mut open, b"before the cut"));
    assert!(echoes(address, b"second connection"));
    let status = proxy.command("status");
    assert!(status.starts_with("ok state=up "), "{status}");
    assert!(status.contains("connections=2"), "{status}");
    assert!(!status.contains("bytes_forwarded=0 "), "{status}");

    // Settings commands answer ok; bad values and commands answer error, never crash.
    assert_eq!(proxy.command("latency 5"), "ok latency 5ms");
    assert_eq!(proxy.command("bandwidth 10MB/s"), "ok bandwidth 10000000B/s");
    assert!(proxy.command("bandwidth 0").starts_with("error: "));
    assert!(proxy.command("bandwidth lots").starts_with("error: "));
    assert!(proxy.command("latency -3").starts_with("error: "));
    assert!(proxy.command("cut sideways").starts_with("error: "));
    let unknown = proxy.command("frobnicate now");
    assert!(unknown.starts_with("error: ") && unknown.contains("frobnicate"), "{unknown}");
    assert!(proxy.command(&"x".repeat(5000)).contains("longer than 1024"));
    assert!(proxy.command("").starts_with("error: "));
    assert_eq!(proxy.command("bandwidth off"), "ok bandwidth off");
    assert_eq!(proxy.command("latency 0"), "ok latency 0ms");
    assert!(echoes(address, b"still up after errors"));

    // Reset cut: the open connection and new ones carry nothing.
    assert_eq!(proxy.command("cut reset"), "ok cut reset");
    assert!(!stream_echoes(&mut open, b"after the cut"));
    assert!(!echoes(address, b"new connection while cut"));
    let status = proxy.command("status");
    assert!(status.starts_with("ok state=down-reset "), "{status}");

    // Restore: new connections carry bytes again.
    assert_eq!(proxy.command("restore"), "ok restored");
    assert!(echoes(address, b"after restore"));
    assert!(proxy.command("status").starts_with("ok state=up "));

    // Quit exits 0 (within the reply timeout).
    assert_eq!(proxy.command("quit"), "ok quit");
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let exit = loop {
        if let Some(exit) = proxy.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "hw-sim-link-proxy did not exit after quit");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "exit status {exit}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}
