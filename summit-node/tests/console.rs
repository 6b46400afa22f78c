//! The operator console end to end, against a `FakeNode` that records every call that changes
//! state: sessions in process; the serial server over a real pseudo-terminal pair (the server
//! opens the slave through `serialport`, the test types on the master); the socket server with
//! the real client, including peers that are not root (a child process run as `nobody`).
//!
//! Rig: the pseudo-terminal tests need `/dev/ptmx`; the `nobody` tests need root. Each checks
//! and prints `SKIPPED: ...` when its rig is missing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use summit_node::console::{
    run_client_with, serve_serial, serve_unix, ConsoleConnection, SerialConsoleOptions, Session,
    UnixConsoleOptions, UserDatabase,
};
use summit_node::csc::{AckCode, CommandAck, CscCommand, SummaryState};
use summit_node::status::{
    CscView, DrainView, ExposureView, IngestView, LinkView, LogLine, NodeControl, NodeStatus, RingView,
    TransitionView,
};

/// How long a test waits for any expected output before failing (with what it received).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The fake node.

/// Fixed, realistic views; records the calls that change state.
#[derive(Default)]
struct FakeNode {
    calls: Mutex<Vec<String>>,
}

impl FakeNode {
    fn new() -> Arc<FakeNode> {
        Arc::new(FakeNode::default())
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|calls| calls.clone()).unwrap_or_default()
    }

    fn record(&self, call: String) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

fn now_unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

fn ring(stream: &str, capacity_bytes: u64, used_bytes: u64) -> RingView {
    RingView {
        stream: stream.to_string(),
        location: format!("/data/rings/{}", stream.to_lowercase()),
        capacity_bytes,
        used_bytes,
        fill_ratio: used_bytes as f64 / capacity_bytes as f64,
        head_sequence: 1_204_331,
        drain_sequence: 1_198_002,
        oldest_undrained_exposure: Some(2026112400123),
        oldest_undrained_age_seconds: Some(11_520.0),
        append_rate_bytes_per_second: Some(250e6),
        time_to_full_seconds: Some(20_000.0),
        poisoned: None,
    }
}

fn drain(stream: &str, paused: bool) -> DrainView {
    DrainView {
        stream: stream.to_string(),
        paused,
        rate_limit_bytes_per_second: Some(300_000_000),
        rate_bytes_per_second: 212e6,
        backlog_bytes: 318_000_000_000,
        backlog_files: 1234,
        time_to_empty_seconds: Some(1500.0),
        objects_confirmed_total: 40_213,
        bytes_uploaded_total: 2_100_000_000_000,
        upload_failures_total: 3,
        exposures_drained_total: 212,
        conflicts_total: 0,
    }
}

impl NodeControl for FakeNode {
    fn status(&self) -> NodeStatus {
        let now = now_unix_seconds();
        NodeStatus {
            node: "summit-test-01".to_string(),
            version: "0.1.0".to_string(),
            simulation: false,
            uptime_seconds: 93_784.0,
            csc: CscView {
                state: SummaryState::Enabled,
                since_unix: now - 11_520.0,
                error_code: None,
                error_report: None,
            },
            rings: vec![
                ring("LSSTCam", 4_000_000_000_000, 1_200_000_000_000),
                ring("LATISS", 500_000_000_000, 0),
            ],
            ingest: vec![IngestView {
                stream: "LSSTCam".to_string(),
                running: true,
                backend: "IoUring: probe succeeded".to_string(),
                frames_total: 1_000_000,
                bytes_total: 3_000_000_000_000,
                rejected_total: 2,
                exposures_complete_total: 310,
                exposures_incomplete_total: 1,
            }],
            link: LinkView {
                state: "UP".to_string(),
                since_unix: now - 600.0,
                rtt_ms: Some(12.34),
                target: "tcp 10.0.0.1:9000".to_string(),
                transitions: vec![
                    TransitionView {
                        time_unix: now - 900.0,
                        from: "UP".to_string(),
                        to: "DOWN".to_string(),
                        reason: "3 probes failed".to_string(),
                    },
                    TransitionView {
                        time_unix: now - 600.0,
                        from: "DOWN".to_string(),
                        to: "UP".to_string(),
                        reason: "3 probes answered".to_string(),
                    },
                ],
            },
            drain: vec![drain("LSSTCam", false), drain("LATISS", true)],
        }
    }

    fn exposures(&self, limit: usize) -> Vec<ExposureView> {
        (0..limit.min(3) as u64)
            .map(|index| ExposureView {
                stream: "LSSTCam".to_string(),
                exposure_id: 2026112400125 - index,
                segments_durable: 3024 - index as u32,
                segments_expected: 3024,
                acquisition: if index == 0 { "complete" } else { "incomplete" }.to_string(),
                drain: if index == 0 { "pending" } else { "drained" }.to_string(),
            })
            .collect()
    }

    fn log_tail(&self, limit: usize) -> Vec<LogLine> {
        let lines = [("WARN", "link DOWN: 3 probes failed"), ("INFO", "link UP\nsecond line \u{1b}[31m")];
        lines
            .iter()
            .take(limit)
            .map(|&(level, message)| LogLine {
                time_unix: 1_700_000_000.0,
                level: level.to_string(),
                target: "failover::link".to_string(),
                message: message.to_string(),
            })
            .collect()
    }

    fn drain_pause(&self, paused: bool) -> Result<String, String> {
        self.record(format!("drain_pause({paused})"));
        Ok(if paused { "drain paused on 2 streams" } else { "drain resumed on 2 streams" }.to_string())
    }

    fn drain_rate(&self, bytes_per_second: Option<u64>) -> Result<String, String> {
        self.record(format!("drain_rate({bytes_per_second:?})"));
        Ok("drain rate set".to_string())
    }

    fn csc_command(&self, command: CscCommand) -> CommandAck {
        self.record(format!("csc_command({command:?})"));
        match command {
            CscCommand::Disable => CommandAck {
                command: command.name().to_string(),
                ack: AckCode::Failed,
                result: "not valid in STANDBY".to_string(),
            },
            _ => CommandAck {
                command: command.name().to_string(),
                ack: AckCode::Complete,
                result: String::new(),
            },
        }
    }

    fn fiber(&self, cut: bool) -> Result<String, String> {
        self.record(format!("fiber({cut})"));
        Err("not in simulation mode".to_string())
    }
}

fn parse_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text:?}"))
}

// ---------------------------------------------------------------------------------------------
// Sessions in process: every command, text and JSON.

#[test]
fn every_read_only_command_answers_in_text_and_in_one_line_of_json() {
    let node = FakeNode::new();
    let mut session = Session::new(false);
    for (line, name) in [
        ("help", "help"),
        ("help drain rate", "help"),
        ("status", "status"),
        ("buffer", "buffer"),
        ("link", "link"),
        ("drain", "drain"),
        ("exposures 2", "exposures"),
        ("csc", "csc"),
        ("log 5", "log"),
    ] {
        let reply = session.handle_line(line, &*node);
        assert!(reply.ok && !reply.close && !reply.text.is_empty(), "{line}: {reply:?}");
        let reply = session.handle_line(&format!("{line} --json"), &*node);
        assert!(reply.ok, "{line} --json: {reply:?}");
        assert!(!reply.text.contains('\n'), "{line} --json is one line: {}", reply.text);
        let json = parse_json(&reply.text);
        assert_eq!(json["ok"], true, "{line}");
        assert_eq!(json["command"], name, "{line}");
        assert!(!json["data"].is_null(), "{line}");
    }
    assert!(node.calls().is_empty(), "read-only commands changed nothing: {:?}", node.calls());
}

#[test]
fn text_replies_show_units_durations_and_percentages() {
    let node = FakeNode::new();
    let mut session = Session::new(false);
    let buffer = session.handle_line("buffer", &*node).text;
    for expected in
        ["LSSTCam (/data/rings/lsstcam)", "4.00 TB", "1.20 TB (30.0%)", "2026112400123, age 3h12m"]
    {
        assert!(buffer.contains(expected), "{expected:?} in\n{buffer}");
    }
    assert!(buffer.contains("time to full               5h33m"), "aligned:\n{buffer}");
    let drain = session.handle_line("drain", &*node).text;
    for expected in ["212 MB/s (limit 300 MB/s)", "1234 files, 318 GB", "25m00s", "LATISS (PAUSED"] {
        assert!(drain.contains(expected), "{expected:?} in\n{drain}");
    }
    let link = session.handle_line("link", &*node).text;
    for expected in ["UP since", "(10m00s ago)", "12.3 ms", "DOWN -> UP", "3 probes answered"] {
        assert!(link.contains(expected), "{expected:?} in\n{link}");
    }
    let csc = session.handle_line("csc", &*node).text;
    assert!(csc.contains("ENABLED (2)") && csc.contains("(3h12m ago)") && csc.contains("errorCode"), "{csc}");
    let exposures = session.handle_line("exposures", &*node).text;
    assert!(exposures.contains("2026112400125  3024/3024  complete     pending"), "{exposures}");
    let log = session.handle_line("log", &*node).text;
    assert!(log.contains("2023-11-14T22:13:20Z WARN  failover::link: link DOWN"), "{log}");
    assert!(log.contains("link UP\\nsecond line \\x1b[31m"), "log lines are escaped:\n{log}");
}

#[test]
fn buffer_json_carries_the_ring_views() {
    let node = FakeNode::new();
    let reply = Session::new(false).handle_line("--json buffer", &*node);
    let json = parse_json(&reply.text);
    let rings = json["data"].as_array().map_or(0, Vec::len);
    assert_eq!(rings, 2);
    assert_eq!(json["data"][0]["stream"], "LSSTCam");
    assert_eq!(json["data"][0]["capacity_bytes"], 4_000_000_000_000u64);
    assert_eq!(json["data"][0]["oldest_undrained_exposure"], 2026112400123u64);
}

#[test]
fn a_read_only_session_is_refused_every_operator_command_and_the_node_sees_nothing() {
    let node = FakeNode::new();
    let mut session = Session::new(false);
    for line in
        ["drain pause", "drain resume", "drain rate 200", "start", "enable", "exitcontrol", "fiber cut"]
    {
        let reply = session.handle_line(line, &*node);
        assert!(!reply.ok, "{line}");
        assert!(reply.text.starts_with("permission denied: '"), "{line}: {}", reply.text);
        assert!(reply.text.contains("needs operator mode"), "{line}: {}", reply.text);
    }
    let reply = session.handle_line("drain pause", &*node);
    assert_eq!(
        reply.text,
        "permission denied: 'drain pause' changes state and needs operator mode (serial: operator = true \
         for this port in the configuration; socket: membership of the operator group)"
    );
    let json = parse_json(&session.handle_line("drain pause --json", &*node).text);
    assert_eq!(json["ok"], false);
    assert!(json["error"].as_str().is_some_and(|error| error.starts_with("permission denied")));
    assert!(node.calls().is_empty(), "{:?}", node.calls());
}

#[test]
fn operator_commands_reach_the_node_with_rates_in_megabytes_per_second() {
    let node = FakeNode::new();
    let mut session = Session::new(true);
    assert_eq!(session.handle_line("drain pause", &*node).text, "drain paused on 2 streams");
    assert!(session.handle_line("drain resume", &*node).ok);
    assert!(session.handle_line("drain rate 200", &*node).ok);
    assert!(session.handle_line("drain rate off", &*node).ok);
    assert!(session.handle_line("start Night-2", &*node).ok);
    assert_eq!(
        node.calls(),
        vec![
            "drain_pause(true)",
            "drain_pause(false)",
            "drain_rate(Some(200000000))",
            "drain_rate(None)",
            "csc_command(Start { configuration_override: Some(\"Night-2\") })",
        ]
    );
}

#[test]
fn csc_commands_show_the_ack_code_number_and_name_and_the_result() {
    let node = FakeNode::new();
    let mut session = Session::new(true);
    let reply = session.handle_line("enable", &*node);
    assert_eq!((reply.ok, reply.text.as_str()), (true, "enable: COMPLETE (303)"));
    let reply = session.handle_line("disable", &*node);
    assert_eq!((reply.ok, reply.text.as_str()), (false, "disable: FAILED (-302)\nnot valid in STANDBY"));
    let reply = session.handle_line("ExitControl", &*node);
    assert_eq!(reply.text, "exitControl: COMPLETE (303)");
    let json = parse_json(&session.handle_line("disable --json", &*node).text);
    assert_eq!(json["ok"], false);
    assert_eq!(json["data"]["ack"], "FAILED");
    assert_eq!(json["data"]["ack_code"], -302);
    assert_eq!(json["data"]["result"], "not valid in STANDBY");
    let json = parse_json(&session.handle_line("--json enable", &*node).text);
    assert_eq!((json["ok"].as_bool(), json["data"]["ack_code"].as_i64()), (Some(true), Some(303)));
}

#[test]
fn a_node_refusal_is_an_error_reply_naming_the_command() {
    let node = FakeNode::new();
    let mut session = Session::new(true);
    let reply = session.handle_line("fiber cut", &*node);
    assert_eq!((reply.ok, reply.text.as_str()), (false, "fiber cut failed: not in simulation mode"));
    let json = parse_json(&session.handle_line("fiber restore --json", &*node).text);
    assert_eq!(json["command"], "fiber restore");
    assert_eq!(json["error"], "fiber restore failed: not in simulation mode");
}

#[test]
fn parse_errors_come_back_in_the_format_asked_for() {
    let node = FakeNode::new();
    let mut session = Session::new(true);
    let reply = session.handle_line("exposures abc", &*node);
    assert_eq!(
        (reply.ok, reply.text.as_str()),
        (false, "exposures: 'abc' is not a count (expected 1..=1000)")
    );
    let json = parse_json(&session.handle_line("frobnicate --json", &*node).text);
    assert_eq!(json, serde_json::json!({"ok": false, "error": "unknown command 'frobnicate'; type 'help'"}));
    let reply = session.handle_line("", &*node);
    assert_eq!((reply.ok, reply.text.as_str(), reply.close), (true, "", false));
    let reply = session.handle_line("quit", &*node);
    assert!(reply.ok && reply.close);
    assert!(node.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The serial console over a real pseudo-terminal pair.

/// The master side of a pseudo-terminal; the slave's path is what the server opens.
struct Pty {
    master: OwnedFd,
    slave_path: PathBuf,
    /// Received and not yet consumed by `read_until`.
    pending: Vec<u8>,
}

impl Pty {
    /// `None` (after printing a visible skip) when this machine has no pseudo-terminals.
    fn open() -> Option<Pty> {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let opened =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).and_then(|master| {
                grantpt(&master)?;
                unlockpt(&master)?;
                let name = ptsname(&master, Vec::new())?;
                Ok((master, name))
            });
        match opened {
            Ok((master, name)) => {
                let slave_path = PathBuf::from(name.to_string_lossy().into_owned());
                Some(Pty { master, slave_path, pending: Vec::new() })
            }
            Err(error) => {
                println!("SKIPPED: needs pseudo-terminals (/dev/ptmx): {error}");
                None
            }
        }
    }

    fn write(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match rustix::io::write(&self.master, bytes) {
                Ok(written) => bytes = &bytes[written..],
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => panic!("write to the pty master: {error}"),
            }
        }
    }

    /// Reads until `needle` arrives (within [`REPLY_TIMEOUT`]); returns everything up to and
    /// including it, keeping the rest for the next call.
    fn read_until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(position) = find(&self.pending, needle.as_bytes()) {
                let end = position + needle.len();
                let taken: Vec<u8> = self.pending.drain(..end).collect();
                return String::from_utf8_lossy(&taken).into_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && self.wait_readable(left),
                "no {needle:?} within {REPLY_TIMEOUT:?}; received {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            let mut chunk = [0u8; 4096];
            match rustix::io::read(&self.master, &mut chunk) {
                Ok(count) => self.pending.extend_from_slice(&chunk[..count]),
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
                // EIO: the slave is not open (the server is between two opens); wait on.
                Err(rustix::io::Errno::IO) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("read from the pty master: {error}"),
            }
        }
    }

    fn wait_readable(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut descriptors = [PollFd::new(&self.master, PollFlags::IN)];
        let timeout = Timespec::try_from(timeout).unwrap_or(Timespec { tv_sec: 10, tv_nsec: 0 });
        matches!(poll(&mut descriptors, Some(&timeout)), Ok(ready) if ready > 0)
    }

    /// Types a line and returns what came back up to the next prompt.
    fn command(&mut self, line: &[u8], prompt: &str) -> String {
        self.write(line);
        self.write(b"\r");
        self.read_until(prompt)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Joins a server thread, failing the test if it does not end within [`REPLY_TIMEOUT`].
fn stop_and_join(stop: &AtomicBool, handle: JoinHandle<()>) {
    stop.store(true, Ordering::Release);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(handle.join().is_ok());
    });
    assert_eq!(receiver.recv_timeout(REPLY_TIMEOUT), Ok(true), "the server thread ended cleanly and in time");
}

struct SerialRig {
    pty: Pty,
    node: Arc<FakeNode>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    prompt: &'static str,
}

impl SerialRig {
    fn start(operator: bool) -> Option<SerialRig> {
        let mut pty = Pty::open()?;
        let node = FakeNode::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut options = SerialConsoleOptions::new(&pty.slave_path);
        options.operator = operator;
        let handle = serve_serial(options, node.clone(), stop.clone()).expect("serial console starts");
        let prompt = if operator { "summit# " } else { "summit> " };
        let greeting = pty.read_until(prompt);
        let mode = if operator { "operator mode" } else { "read-only" };
        assert!(greeting.contains(&format!("console on summit-test-01: {mode}")), "{greeting:?}");
        Some(SerialRig { pty, node, stop, handle: Some(handle), prompt })
    }

    fn command(&mut self, line: &[u8]) -> String {
        self.pty.command(line, self.prompt)
    }
}

impl Drop for SerialRig {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            stop_and_join(&self.stop, handle);
        }
    }
}

#[test]
fn serial_status_answers_with_echo_crlf_and_a_prompt() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(b"status");
    assert!(output.starts_with("status\r\n"), "the line is echoed, then CRLF: {output:?}");
    assert!(output.contains("summit-test-01 (summit-node 0.1.0)"), "{output:?}");
    assert!(output.contains("\r\ncsc "), "{output:?}");
    assert!(!output.replace("\r\n", "").contains('\n'), "every line ends in CRLF: {output:?}");
    assert!(output.ends_with("\r\nsummit> "), "{output:?}");
}

#[test]
fn serial_backspace_erases_on_screen_and_in_the_line() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(b"cscx\x7f");
    assert!(output.starts_with("cscx\x08 \x08\r\n"), "{output:?}");
    assert!(output.contains("summaryState"), "the erased line ran as 'csc': {output:?}");
}

#[test]
fn serial_buffer_json_parses_with_the_ring_fields() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(b"buffer --json");
    let line = output.split("\r\n").find(|line| line.starts_with('{')).unwrap_or_default();
    let json = parse_json(line);
    assert_eq!(json["ok"], true);
    assert_eq!(json["command"], "buffer");
    for field in ["stream", "capacity_bytes", "used_bytes", "fill_ratio", "head_sequence", "drain_sequence"] {
        assert!(!json["data"][0][field].is_null(), "{field} in {line}");
    }
    assert_eq!(json["data"][1]["stream"], "LATISS");
}

#[test]
fn serial_over_long_line_is_refused_and_the_next_command_works() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(&[b'x'; 1000]);
    assert!(output.contains("line too long: more than 256 bytes; discarded"), "{output:?}");
    assert_eq!(output.matches("line too long").count(), 1, "reported once");
    assert!(rig.command(b"csc").contains("ENABLED (2)"));
}

#[test]
fn serial_control_characters_are_refused_and_the_next_command_works() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(b"sta\x1b[Atus");
    assert!(output.contains("sta^["), "the control character is shown: {output:?}");
    assert!(output.contains("control character 0x1b at column 4; line discarded"), "{output:?}");
    // Ctrl-C is just a control character here: no signal, no hang.
    let output = rig.command(b"\x03");
    assert!(output.contains("control character 0x03 at column 1"), "{output:?}");
    assert!(rig.command(b"link").contains("tcp 10.0.0.1:9000"));
}

#[test]
fn serial_invalid_utf8_is_refused_and_the_next_command_works() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(b"stat\xff\xfeus");
    assert!(output.contains("invalid UTF-8 (byte 0xff) at column 5; line discarded"), "{output:?}");
    assert!(rig.command(b"status").contains("summit-test-01"));
}

#[test]
fn serial_read_only_port_refuses_drain_pause_and_the_node_sees_no_call() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(b"drain pause");
    assert!(output.contains("permission denied: 'drain pause' changes state"), "{output:?}");
    assert!(rig.node.calls().is_empty(), "{:?}", rig.node.calls());
}

#[test]
fn serial_operator_port_drain_pause_reaches_the_node() {
    let Some(mut rig) = SerialRig::start(true) else { return };
    let output = rig.command(b"drain pause");
    assert!(output.contains("drain paused on 2 streams"), "{output:?}");
    assert_eq!(rig.node.calls(), vec!["drain_pause(true)"]);
}

#[test]
fn serial_quit_starts_a_fresh_session_instead_of_closing_the_port() {
    let Some(mut rig) = SerialRig::start(false) else { return };
    let output = rig.command(b"quit");
    assert!(output.contains("bye\r\nsummit-node"), "{output:?}");
    assert!(rig.command(b"csc").contains("summaryState"));
}

#[test]
fn serial_device_missing_then_appearing_then_lost_then_back_is_served_each_time() {
    let Some(mut first) = Pty::open() else { return };
    let directory = tempfile::tempdir().expect("temporary directory");
    let device = directory.path().join("console-tty");
    let node = FakeNode::new();
    let stop = Arc::new(AtomicBool::new(false));
    let handle = serve_serial(SerialConsoleOptions::new(&device), node, stop.clone()).expect("starts");
    // Missing at start: the server retries every second; the device then appears.
    std::os::unix::fs::symlink(&first.slave_path, &device).expect("symlink");
    assert!(first.read_until("summit> ").contains("console on summit-test-01"));
    assert!(first.command(b"csc", "summit> ").contains("summaryState"));
    // The device goes away (the master closes: the slave hangs up) and a new one appears.
    drop(first);
    let Some(mut second) = Pty::open() else { return };
    std::fs::remove_file(&device).expect("remove the old link");
    std::os::unix::fs::symlink(&second.slave_path, &device).expect("symlink");
    assert!(second.read_until("summit> ").contains("console on summit-test-01"));
    assert!(second.command(b"status", "summit> ").contains("summit-test-01"));
    stop_and_join(&stop, handle);
}

#[test]
fn serial_console_rejects_a_zero_baud_rate_at_start() {
    let mut options = SerialConsoleOptions::new("/dev/null");
    options.baud_rate = 0;
    let error = serve_serial(options, FakeNode::new(), Arc::new(AtomicBool::new(false))).err();
    assert!(error.is_some_and(|error| error.to_string().contains("baud rate must be above 0")));
}

// ---------------------------------------------------------------------------------------------
// The socket console with the real client.

struct SocketRig {
    /// Holds the socket (and the user database fixture) until the rig is dropped.
    _directory: tempfile::TempDir,
    socket: PathBuf,
    node: Arc<FakeNode>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl SocketRig {
    fn start(configure: impl FnOnce(&mut UnixConsoleOptions, &Path)) -> SocketRig {
        let directory = tempfile::tempdir().expect("temporary directory");
        let socket = directory.path().join("console.sock");
        let mut options = UnixConsoleOptions::new(&socket);
        configure(&mut options, directory.path());
        let node = FakeNode::new();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = serve_unix(options, node.clone(), stop.clone()).expect("socket console starts");
        SocketRig { _directory: directory, socket, node, stop, handle: Some(handle) }
    }

    /// `summit-node console -c <command>`: (exit code, output).
    fn one_shot(&self, command: &str) -> (i32, String) {
        let mut output = Vec::new();
        let code = run_client_with(&self.socket, Some(command), &mut &b""[..], &mut output, false)
            .unwrap_or_else(|error| panic!("client: {error}"));
        (code, String::from_utf8_lossy(&output).into_owned())
    }

    fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            stop_and_join(&self.stop, handle);
        }
    }
}

impl Drop for SocketRig {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A user database in `directory`: the given passwd and group lines.
fn fixture_database(directory: &Path, passwd: &str, group: &str) -> UserDatabase {
    let database =
        UserDatabase { passwd_path: directory.join("passwd"), group_path: directory.join("group") };
    std::fs::write(&database.passwd_path, passwd).expect("passwd fixture");
    std::fs::write(&database.group_path, group).expect("group fixture");
    database
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn socket_is_mode_0660_and_owned_by_the_configured_group() {
    if !is_root() {
        println!("SKIPPED: needs root to give the socket an arbitrary group");
        return;
    }
    let rig = SocketRig::start(|options, directory| {
        options.user_database = fixture_database(directory, "", "console:x:4242:\n");
        options.group = Some("console".to_string());
    });
    let metadata = std::fs::symlink_metadata(&rig.socket).expect("socket exists");
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o660);
    assert_eq!(metadata.gid(), 4242);
}

#[test]
fn socket_refuses_to_start_with_a_group_missing_from_the_group_file() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut options = UnixConsoleOptions::new(directory.path().join("console.sock"));
    options.user_database = fixture_database(directory.path(), "", "other:x:1:\n");
    options.operator_group = Some("summit-ops".to_string());
    let error = serve_unix(options, FakeNode::new(), Arc::new(AtomicBool::new(false))).err();
    let message = error.map(|error| error.to_string()).unwrap_or_default();
    assert!(message.contains("group 'summit-ops' is not in"), "{message}");
    assert!(!directory.path().join("console.sock").exists(), "no socket left behind");
}

#[test]
fn root_peer_is_operator_and_the_one_shot_client_reaches_the_node() {
    if !is_root() {
        println!("SKIPPED: the test process must be root to be an operator without a group");
        return;
    }
    let rig = SocketRig::start(|_, _| {});
    let (code, output) = rig.one_shot("drain pause");
    assert_eq!((code, output.as_str()), (0, "drain paused on 2 streams\n"));
    assert_eq!(rig.node.calls(), vec!["drain_pause(true)"]);
    let connection = ConsoleConnection::connect(&rig.socket).expect("connects");
    assert!(connection.operator, "{:?}", connection.greeting);
}

#[test]
fn one_shot_client_exit_code_is_0_for_ok_and_1_for_an_error() {
    let rig = SocketRig::start(|_, _| {});
    let (code, output) = rig.one_shot("status");
    assert_eq!(code, 0);
    assert!(output.contains("summit-test-01"), "{output}");
    let (code, output) = rig.one_shot("frobnicate");
    assert_eq!((code, output.as_str()), (1, "unknown command 'frobnicate'; type 'help'\n"));
    let (code, output) = rig.one_shot("exposures abc --json");
    assert_eq!(code, 1);
    let json = parse_json(output.trim_end());
    assert_eq!(json["error"], "exposures: 'abc' is not a count (expected 1..=1000)");
    let (code, output) = rig.one_shot("status --json");
    assert_eq!(code, 0);
    assert_eq!(parse_json(output.trim_end())["data"]["node"], "summit-test-01");
}

#[test]
fn interactive_client_sends_each_input_line_and_ends_at_quit() {
    let rig = SocketRig::start(|_, _| {});
    let mut input = &b"csc\n\nnonsense\r\nquit\nstatus\n"[..];
    let mut output = Vec::new();
    let code = run_client_with(&rig.socket, None, &mut input, &mut output, false).expect("client runs");
    let output = String::from_utf8_lossy(&output);
    assert_eq!(code, 0);
    assert!(output.starts_with("summit-node 0.1.0 console on summit-test-01"), "{output}");
    assert!(output.contains("summaryState"), "{output}");
    assert!(output.contains("unknown command 'nonsense'"), "{output}");
    assert!(output.ends_with("bye\n"), "nothing after quit: {output}");
}

/// Reads `count` replies (up to their terminator lines) from a raw socket.
fn read_raw_replies(reader: &mut BufReader<UnixStream>, count: usize) -> Vec<(String, String)> {
    let mut replies = Vec::new();
    let mut text = String::new();
    while replies.len() < count {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("a reply within the timeout");
        assert!(read > 0, "the server closed early after {replies:?}");
        match line.strip_prefix('\u{4}') {
            Some(terminator) => replies.push((std::mem::take(&mut text), terminator.trim_end().to_string())),
            None => text.push_str(&line),
        }
    }
    replies
}

#[test]
fn socket_line_errors_are_answered_in_step_and_the_session_goes_on() {
    let rig = SocketRig::start(|_, _| {});
    let stream = UnixStream::connect(&rig.socket).expect("connects");
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let greeting = read_raw_replies(&mut reader, 1);
    assert_eq!(greeting[0].1, "ok");
    let mut input = Vec::new();
    input.extend_from_slice(&[b'y'; 1000]);
    input.extend_from_slice(b"\nsta\x1btus\r\nstat\xffus\n");
    input.extend_from_slice(&[b'z'; 10_240]);
    input.extend_from_slice(b"\r\ncsc\n");
    (&stream).write_all(&input).expect("send");
    let replies = read_raw_replies(&mut reader, 5);
    assert_eq!(
        replies[0],
        ("line too long: more than 256 bytes; discarded\n".to_string(), "error".to_string())
    );
    assert!(replies[1].0.starts_with("control character 0x1b at column 4"), "{replies:?}");
    assert!(replies[2].0.starts_with("invalid UTF-8 (byte 0xff) at column 5"), "{replies:?}");
    assert!(replies[3].0.starts_with("line too long"), "{replies:?}");
    assert_eq!(replies[4].1, "ok");
    assert!(replies[4].0.contains("summaryState"), "{replies:?}");
}

#[test]
fn max_connections_is_enforced_and_a_freed_place_is_reused() {
    let rig = SocketRig::start(|options, _| options.max_connections = 2);
    let mut first = ConsoleConnection::connect(&rig.socket).expect("first");
    let _second = ConsoleConnection::connect(&rig.socket).expect("second");
    let refused = ConsoleConnection::connect(&rig.socket).err().unwrap_or_default();
    assert_eq!(refused, "console busy: 2 sessions open (at most 2); try again later");
    let bye = first.request("quit").expect("quit");
    assert!(bye.close, "{bye:?}");
    let mut third = ConsoleConnection::connect(&rig.socket).expect("the freed place is reused");
    assert!(third.request("csc").expect("csc").text.contains("summaryState"));
}

#[test]
fn a_stale_socket_is_replaced_but_a_live_socket_or_another_file_is_refused() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("console.sock");
    let start = |path: &Path| {
        serve_unix(UnixConsoleOptions::new(path), FakeNode::new(), Arc::new(AtomicBool::new(false)))
    };

    drop(UnixListener::bind(&path).expect("a socket nobody serves"));
    let stop = Arc::new(AtomicBool::new(false));
    let handle =
        serve_unix(UnixConsoleOptions::new(&path), FakeNode::new(), stop.clone()).expect("stale replaced");
    let live = start(&path).err().map(|error| error.to_string()).unwrap_or_default();
    assert!(live.contains("is in use"), "{live}");
    stop_and_join(&stop, handle);
    assert!(!path.exists(), "the server removed its socket when it stopped");

    std::fs::write(&path, b"precious").expect("a regular file");
    let refused = start(&path).err().map(|error| error.to_string()).unwrap_or_default();
    assert!(refused.contains("exists and is not a socket; refusing to remove it"), "{refused}");
    assert_eq!(std::fs::read(&path).ok(), Some(b"precious".to_vec()), "the file is untouched");
}

#[test]
fn stopping_ends_open_sessions_and_removes_the_socket() {
    let mut rig = SocketRig::start(|_, _| {});
    let stream = UnixStream::connect(&rig.socket).expect("connects");
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    let mut reader = BufReader::new(stream);
    read_raw_replies(&mut reader, 1);
    rig.stop();
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).ok(), Some(0), "the session was closed");
    assert!(!rig.socket.exists());
}

// ---------------------------------------------------------------------------------------------
// Peers that are not root: this test binary, run again as `nobody`, is the client.

const CHILD_SOCKET_ENV: &str = "SUMMIT_CONSOLE_TEST_CHILD_SOCKET";
const CHILD_COMMAND_ENV: &str = "SUMMIT_CONSOLE_TEST_CHILD_COMMAND";
const NOBODY_ID: u32 = 65534;

/// Not a test of its own: the client half of the `nobody` tests, which run this binary again
/// with only this test selected and the socket in the environment. Without it, it returns.
#[test]
fn console_client_child_process() {
    let (Ok(socket), Ok(command)) = (std::env::var(CHILD_SOCKET_ENV), std::env::var(CHILD_COMMAND_ENV))
    else {
        return;
    };
    let mut output = Vec::new();
    let result = run_client_with(Path::new(&socket), Some(&command), &mut &b""[..], &mut output, false);
    println!("CHILD-UID={}", rustix::process::geteuid().as_raw());
    println!("CHILD-OUTPUT={}", String::from_utf8_lossy(&output).trim_end());
    println!("CHILD-RESULT={result:?}");
}

/// Runs `command` through the client as uid/gid `nobody`; returns the child's marker lines.
fn run_client_as_nobody(socket: &Path, command: &str) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let executable = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(executable)
        .args(["--exact", "console_client_child_process", "--nocapture", "--test-threads=1"])
        .env(CHILD_SOCKET_ENV, socket)
        .env(CHILD_COMMAND_ENV, command)
        .uid(NOBODY_ID)
        .gid(NOBODY_ID)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => {
            println!("SKIPPED: cannot run the test binary as nobody: {error}");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The harness prints `test console_client_child_process ... ` before the first marker.
    let markers: Vec<&str> =
        stdout.lines().filter_map(|line| line.find("CHILD-").map(|start| &line[start..])).collect();
    if markers.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("SKIPPED: the test binary did not run as nobody: {stdout} {stderr}");
        return None;
    }
    Some(markers.join("\n"))
}

/// A socket `nobody` can reach: group `nogroup` (65534) in the fixture, directory world-searchable.
fn start_for_nobody(operator_group_line: &'static str) -> Option<SocketRig> {
    if !is_root() {
        println!("SKIPPED: needs root to run a client as nobody");
        return None;
    }
    let rig = SocketRig::start(|options, directory| {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
        let group = format!("root:x:0:\nnogroup:x:65534:\n{operator_group_line}\n");
        options.user_database = fixture_database(directory, passwd, &group);
        options.group = Some("nogroup".to_string());
        options.operator_group = Some("summit-ops".to_string());
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    });
    Some(rig)
}

#[test]
fn a_peer_outside_the_operator_group_is_read_only_and_refused_drain_pause() {
    let Some(rig) = start_for_nobody("summit-ops:x:4243:alice") else { return };
    let Some(markers) = run_client_as_nobody(&rig.socket, "drain pause") else { return };
    assert!(markers.contains("CHILD-UID=65534"), "{markers}");
    assert!(markers.contains("CHILD-OUTPUT=permission denied: 'drain pause' changes state"), "{markers}");
    assert!(markers.contains("CHILD-RESULT=Ok(1)"), "{markers}");
    assert!(rig.node.calls().is_empty(), "{:?}", rig.node.calls());
    // Reading is allowed.
    let Some(markers) = run_client_as_nobody(&rig.socket, "csc") else { return };
    assert!(markers.contains("CHILD-RESULT=Ok(0)") && markers.contains("summaryState"), "{markers}");
}

#[test]
fn a_peer_in_the_operator_group_is_an_operator_and_drain_pause_reaches_the_node() {
    let Some(rig) = start_for_nobody("summit-ops:x:4243:alice,nobody") else { return };
    let Some(markers) = run_client_as_nobody(&rig.socket, "drain pause") else { return };
    assert!(markers.contains("CHILD-OUTPUT=drain paused on 2 streams"), "{markers}");
    assert!(markers.contains("CHILD-RESULT=Ok(0)"), "{markers}");
    assert_eq!(rig.node.calls(), vec!["drain_pause(true)"]);
}

#[test]
fn a_peer_outside_the_socket_group_cannot_connect_at_all() {
    if !is_root() {
        println!("SKIPPED: needs root to run a client as nobody");
        return;
    }
    let rig = SocketRig::start(|options, directory| {
        options.user_database = fixture_database(directory, "", "console:x:4242:\n");
        options.group = Some("console".to_string());
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    });
    let Some(markers) = run_client_as_nobody(&rig.socket, "csc") else { return };
    assert!(markers.contains("cannot connect to the console socket"), "{markers}");
    assert!(markers.contains("are you in its group?"), "{markers}");
}
