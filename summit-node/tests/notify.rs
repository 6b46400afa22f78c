//! sd_notify against real datagram sockets: a socket file and a Linux abstract socket stand in
//! for systemd's `NOTIFY_SOCKET`; the notifier is built from explicit values (the process
//! environment is never changed).

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

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
