//! sd_notify against real datagram sockets: a socket file and a Linux abstract socket stand in
//! for systemd's `NOTIFY_SOCKET`; the notifier is built from explicit values (the process
//! environment is never changed). The last test runs the real daemon (`summit-node run`) under
//! such a socket, as systemd would: READY, STATUS, WATCHDOG within the watchdog period, then
//! STOPPING and a clean exit within its bound after SIGTERM.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use summit_node::notify::{Notifier, NotifyAddress, NotifyError, STATUS_BYTES_MAX};

/// Receives one datagram as text (or fails after 5 s).
fn receive(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let mut buffer = vec![0u8; 4096];
    let length = socket.recv(&mut buffer).expect("a datagram within 5 s");
    String::from_utf8(buffer[..length].to_vec()).expect("UTF-8 datagram")
}

fn own_pid() -> u32 {
    std::process::id()
}

#[test]
fn ready_status_watchdog_and_stopping_arrive_at_a_socket_file() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("binding the stand-in for systemd");
    let notifier = Notifier::from_values(Some(path.as_os_str()), None, None, own_pid()).expect("notifier");
    assert!(notifier.is_enabled());
    assert_eq!(notifier.address(), Some(&NotifyAddress::Path(path.clone())));

    notifier.ready().expect("READY");
    notifier.status("ENABLED | rings 12% | link UP").expect("STATUS");
    notifier.watchdog().expect("WATCHDOG");
    notifier.extend_timeout(Duration::from_secs(20)).expect("EXTEND_TIMEOUT_USEC");
    notifier.stopping().expect("STOPPING");

    assert_eq!(receive(&systemd), "READY=1");
    assert_eq!(receive(&systemd), "STATUS=ENABLED | rings 12% | link UP");
    assert_eq!(receive(&systemd), "WATCHDOG=1");
    assert_eq!(receive(&systemd), "EXTEND_TIMEOUT_USEC=20000000");
    assert_eq!(receive(&systemd), "STOPPING=1");
}

#[test]
fn ready_and_watchdog_arrive_at_an_abstract_socket() {
    let name = format!("summit-node-notify-test-{}", own_pid());
    let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let systemd = UnixDatagram::bind_addr(&address).expect("binding the abstract stand-in for systemd");
    let variable = format!("@{name}");
    let notifier =
        Notifier::from_values(Some(OsStr::new(&variable)), None, None, own_pid()).expect("notifier");
    assert_eq!(notifier.address(), Some(&NotifyAddress::Abstract(name.clone().into_bytes())));
    assert_eq!(notifier.address().expect("enabled").to_string(), variable);

    notifier.ready().expect("READY");
    notifier.watchdog().expect("WATCHDOG");
    assert_eq!(receive(&systemd), "READY=1");
    assert_eq!(receive(&systemd), "WATCHDOG=1");
}

#[test]
fn status_text_stays_one_line_and_bounded() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("bind");
    let notifier = Notifier::from_values(Some(path.as_os_str()), None, None, own_pid()).expect("notifier");

    notifier.status("FAULT\nerrorCode=100").expect("STATUS");
    assert_eq!(receive(&systemd), "STATUS=FAULT errorCode=100");

    // Multi-byte characters across the cut: the text is cut at a character boundary.
    let long = "é".repeat(STATUS_BYTES_MAX);
    notifier.status(&long).expect("STATUS");
    let received = receive(&systemd);
    let text = received.strip_prefix("STATUS=").expect("a STATUS line");
    assert_eq!(text.len(), STATUS_BYTES_MAX);
    assert!(text.chars().all(|c| c == 'é'));
}

#[test]
fn watchdog_interval_is_half_of_watchdog_usec_when_it_is_meant_for_this_process() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("notify.sock");
    let _systemd = UnixDatagram::bind(&path).expect("bind");
    let socket = Some(path.as_os_str());
    let own = own_pid().to_string();

    let notifier = Notifier::from_values(socket, Some("30000000"), None, own_pid()).expect("no WATCHDOG_PID");
    assert_eq!(notifier.watchdog_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));

    let notifier = Notifier::from_values(socket, Some("30000000"), Some(&own), own_pid()).expect("our pid");
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));

    let notifier =
        Notifier::from_values(socket, Some("30000000"), Some("1"), own_pid()).expect("another pid");
    assert_eq!(notifier.watchdog_interval(), None, "WATCHDOG_PID names another process");

    let notifier = Notifier::from_values(socket, None, None, own_pid()).expect("no watchdog");
    assert_eq!(notifier.watchdog_interval(), None);

    let notifier = Notifier::from_values(None, Some("30000000"), None, own_pid()).expect("no socket");
    assert_eq!(notifier.watchdog_interval(), None, "nobody to ping without NOTIFY_SOCKET");
}

#[test]
fn invalid_watchdog_variables_are_errors_naming_the_value() {
    for usec in ["0", "-5", "30s", ""] {
        let error = Notifier::from_values(None, Some(usec), None, own_pid()).expect_err(usec);
        assert!(matches!(error, NotifyError::InvalidWatchdogUsec { .. }), "{usec}: {error}");
        assert!(error.to_string().contains(&format!("WATCHDOG_USEC={usec:?}")), "{error}");
    }
    let error = Notifier::from_values(None, Some("1000"), Some("self"), own_pid()).expect_err("bad pid");
    assert!(error.to_string().contains("WATCHDOG_PID=\"self\""), "{error}");
}

#[test]
fn missing_socket_file_gives_an_error_naming_the_socket_and_the_message() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("gone.sock");
    let notifier = Notifier::from_values(Some(path.as_os_str()), None, None, own_pid()).expect("notifier");
    let error = notifier.ready().expect_err("nobody listens");
    let NotifyError::Send { source, .. } = &error else {
        panic!("expected a send error, got {error:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("READY=1"), "{text}");
}

#[test]
fn without_notify_socket_every_call_is_a_no_op() {
    for notifier in [
        Notifier::from_values(None, None, None, own_pid()).expect("unset"),
        Notifier::from_values(Some(OsStr::new("")), None, None, own_pid()).expect("empty counts as unset"),
        Notifier::disabled(),
    ] {
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.address(), None);
        notifier.ready().expect("no-op");
        notifier.status("anything").expect("no-op");
        notifier.watchdog().expect("no-op");
        notifier.stopping().expect("no-op");
    }
}

#[test]
fn notify_socket_must_be_absolute_or_abstract() {
    for value in ["relative/notify.sock", "@", "notify"] {
        let error = Notifier::from_values(Some(OsStr::new(value)), None, None, own_pid()).expect_err(value);
        assert!(matches!(error, NotifyError::InvalidSocket { .. }), "{value}: {error}");
        assert!(error.to_string().contains(value), "{error}");
    }
}

/// A configuration with every path under `directory`, starting in STANDBY (no ring opened).
fn daemon_config(directory: &Path) -> String {
    let root = directory.display();
    format!(
        r#"[node]
name = "notify-test"
data_dir = "{root}/data"
initial_state = "standby"
shutdown_timeout_s = 5

[[stream]]
instrument = "LATISS"
frames = "unix:{root}/run/frames.sock"
metadata = "unix:{root}/run/metadata.sock"
ring_capacity = "64MiB"
full_policy = "block"
backend = "portable"

[base]
url = "file://{root}/base"

[link]
probe = "tcp:127.0.0.1:9"

[console]
socket = "{root}/run/console.sock"

[events]
socket = "{root}/run/events.sock"
file = "{root}/data/events.jsonl"
"#
    )
}

/// Kills the daemon if the test fails before it exited.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn daemon_under_a_notify_socket_says_ready_status_watchdog_then_stopping_on_sigterm() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let config = directory.path().join("summit-node.toml");
    std::fs::write(&config, daemon_config(directory.path())).expect("writing the configuration");
    let notify_path = directory.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify_path).expect("binding the stand-in for systemd");
    systemd.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let watchdog = Duration::from_secs(2);

    let daemon = Command::new(env!("CARGO_BIN_EXE_summit-node"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting summit-node run");
    let mut daemon = KillOnDrop(daemon);
    let daemon = &mut daemon.0;
    let next = || {
        let mut buffer = [0u8; 4096];
        let length = systemd.recv(&mut buffer).unwrap_or_else(|error| panic!("no notification: {error}"));
        (Instant::now(), String::from_utf8_lossy(&buffer[..length]).into_owned())
    };

    assert_eq!(next().1, "READY=1", "READY first");
    let mut watchdog_times = Vec::new();
    let mut statuses = Vec::new();
    while watchdog_times.len() < 3 {
        let (at, message) = next();
        match message.as_str() {
            "WATCHDOG=1" => watchdog_times.push(at),
            status if status.starts_with("STATUS=") => statuses.push(status.to_owned()),
            other => panic!("unexpected notification {other:?}"),
        }
    }
    assert!(
        statuses.iter().any(|status| status.starts_with("STATUS=STANDBY")),
        "a STATUS line naming the state: {statuses:?}"
    );
    for pair in watchdog_times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap < watchdog, "WATCHDOG=1 pings {gap:?} apart, longer than WatchdogSec {watchdog:?}");
    }

    let pid = rustix::process::Pid::from_child(daemon);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let terminated = Instant::now();
    loop {
        let (_, message) = next();
        if message == "STOPPING=1" {
            break;
        }
        assert!(message == "WATCHDOG=1" || message.starts_with("STATUS="), "unexpected {message:?}");
    }
    let status = loop {
        if let Some(status) = daemon.try_wait().expect("waiting for the daemon") {
            break status;
        }
        assert!(terminated.elapsed() < Duration::from_secs(10), "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(status.success(), "summit-node run exited with {status}: {stderr}");
    assert!(!directory.path().join("run/events.sock").exists(), "the events socket is removed on exit");
    let events = std::fs::read_to_string(directory.path().join("data/events.jsonl")).expect("events file");
    assert!(events.contains(r#""summaryState":5"#), "summaryState(STANDBY) published: {events}");
}
