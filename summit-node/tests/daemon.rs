//! `summit-node` as systemd and an operator run it: the real binary in real processes, with real
//! sockets, files and signals, and asserting what a user would check afterwards.
//!
//! Every daemon gets its own temporary directory holding its configuration, data directory,
//! base (`file:///...`), console, events and camera sockets, and its log (stderr). The link
//! monitor probes a TCP listener the test holds (so the link is UP), and the camera is the
//! hardware simulator playing one LATISS exposure, as fast as possible, into the node's frame
//! and metadata sockets. A fake systemd is a datagram socket named in `NOTIFY_SOCKET`.
//!
//! Rig: Linux, a writable temporary directory; operator commands on the console need root or a
//! group the daemon is told is the operator group (the tests pick whichever applies, see
//! [`operator_group_line`]). Every wait is bounded; a daemon still running when a test ends is
//! killed.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hw_sim::driver::{play_with_metadata, PlayOptions, PlayReport};
use hw_sim::geometry::Focalplane;
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule, TimeCompression};
use hw_sim::pixels::SkyParameters;
use hw_sim::transport::FrameWriter;
use serde_json::Value;
use summit_node::console::ConsoleConnection;

const BINARY: &str = env!("CARGO_BIN_EXE_summit-node");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/summit-node.example.toml");

/// 2025-04-16T00:00:00Z: a fixed night, so the exposure and its pixels are the same every run.
const NIGHT_START_NS: i64 = 1_744_761_600_000_000_000;
const SKY_SEED: u64 = 11;
/// `node.shutdown_timeout_s` of every test configuration.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a daemon may take to serve its console after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

const TOPIC_PREFIX: &str = "lsst.sal.SummitNode.logevent_";

// ---------------------------------------------------------------------------------------------
// The rig: a stand-in for the base, the configuration, the daemon process, a fake systemd.
// ---------------------------------------------------------------------------------------------

/// A TCP listener standing for the base's object store: what the link monitor probes. It accepts
/// and drops every connection, so un-accepted probes never fill its backlog.
struct BaseStandIn {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BaseStandIn {
    fn start() -> BaseStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the base stand-in");
        let address = listener.local_addr().expect("the base stand-in's address");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((connection, _)) => drop(connection),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BaseStandIn { address, stop, thread: Some(thread) }
    }
}

impl Drop for BaseStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where one daemon's files and sockets are, all under one temporary directory.
struct NodeFiles {
    directory: tempfile::TempDir,
    config: PathBuf,
    data_dir: PathBuf,
    base_dir: PathBuf,
    console_socket: PathBuf,
    events_file: PathBuf,
    frames: PathBuf,
    metadata: PathBuf,
    ring_directory: PathBuf,
    log: PathBuf,
}

impl NodeFiles {
    fn new() -> NodeFiles {
        let directory =
            tempfile::Builder::new().prefix("summit-daemon-").tempdir().expect("temporary directory");
        let root = directory.path().to_owned();
        let data_dir = root.join("data");
        NodeFiles {
            config: root.join("summit-node.toml"),
            base_dir: root.join("base"),
            console_socket: root.join("console.sock"),
            events_file: data_dir.join("events.jsonl"),
            frames: root.join("latiss-frames.sock"),
            metadata: root.join("latiss-metadata.sock"),
            ring_directory: data_dir.join("rings").join("LATISS"),
            log: root.join("summit-node.log"),
            data_dir,
            directory,
        }
    }

    fn root(&self) -> &Path {
        self.directory.path()
    }

    /// Writes a LATISS-only configuration: a 256 MiB ring, a `file://` base, a fast link probe of
    /// `base`, the given initial state, `shutdown_timeout_s` = [`SHUTDOWN_TIMEOUT`].
    fn write_config(&self, base: &BaseStandIn, initial_state: &str) {
        let text = format!(
            r#"[node]
name = "daemon-test"
data_dir = "{data_dir}"
initial_state = "{initial_state}"
shutdown_timeout_s = {shutdown}

[[stream]]
instrument = "LATISS"
frames = "unix:{frames}"
metadata = "unix:{metadata}"
ring_capacity = "256MiB"

[base]
url = "file://{base_dir}"

[link]
probe = "tcp:{probe}"
probe_interval_ms = 100
probe_timeout_ms = 250
failures_to_down = 3
successes_to_up = 2
degraded_rtt_ms = 200

[console]
socket = "{console}"
{operator_group}

[events]
socket = "{events_socket}"
file = "{events_file}"

[logging]
format = "human"
level = "info"
"#,
            data_dir = self.data_dir.display(),
            shutdown = SHUTDOWN_TIMEOUT.as_secs(),
            frames = self.frames.display(),
            metadata = self.metadata.display(),
            base_dir = self.base_dir.display(),
            probe = base.address,
            console = self.console_socket.display(),
            operator_group = operator_group_line(),
            events_socket = self.root().join("events.sock").display(),
            events_file = self.events_file.display(),
        );
        std::fs::write(&self.config, text).expect("writing the configuration");
    }

    /// Replaces `from` (which must be there) by `to` in the configuration file.
    fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("reading the configuration");
        assert!(text.contains(from), "the configuration must contain {from:?}");
        std::fs::write(&self.config, text.replacen(from, to, 1)).expect("writing the configuration");
    }

    /// Every line of the events file, parsed.
    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events_file).unwrap_or_else(|error| {
            panic!("reading the events file {}: {error}", self.events_file.display())
        });
        text.lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("an event line is not JSON ({error}): {line}"))
            })
            .collect()
    }
}

/// The `operator_group` line that makes this test process an operator on the console socket:
/// none for root (always an operator), else the group the process runs with.
fn operator_group_line() -> String {
    if rustix::process::geteuid().is_root() {
        return String::new();
    }
    let gid = rustix::process::getegid().as_raw();
    let groups = std::fs::read_to_string("/etc/group").expect("rig: /etc/group is readable");
    let name = groups
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 3 && fields[2].parse() == Ok(gid))
        .map(|fields| fields[0].to_owned())
        .unwrap_or_else(|| panic!("rig: this test needs root, or its group (gid {gid}) named in /etc/group"));
    format!("operator_group = \"{name}\"")
}

/// A `summit-node run` process; killed on drop if it is still running.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `summit-node run --config` with `environment` set and every sd_notify variable and
    /// `RUST_LOG` otherwise removed; stderr goes to the log file.
    fn start(files: &NodeFiles, environment: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let log = std::fs::File::create(&files.log).expect("creating the log file");
        let mut command = Command::new(BINARY);
        command
            .args(["run", "--config"])
            .arg(&files.config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (name, value) in environment {
            command.env(name, value);
        }
        let child = command.spawn().expect("starting summit-node run");
        Daemon { child, log: files.log.clone() }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with `what` and the daemon's log.
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- summit-node log ---\n{}", self.log_text())
    }

    /// The exit status, once the process exited within `timeout`.
    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for summit-node") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A console session, once the daemon serves its socket (it must not exit meanwhile).
    fn console(&mut self, socket: &Path) -> ConsoleConnection {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for summit-node") {
                self.fail(&format!("summit-node exited ({status}) before serving its console"));
            }
            match ConsoleConnection::connect(socket) {
                Ok(connection) => return connection,
                Err(error) if Instant::now() >= deadline => {
                    self.fail(&format!("no console within {START_TIMEOUT:?}: {error}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("signalling summit-node");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A stand-in for systemd's notification socket: records every datagram with its arrival time.
struct FakeSystemd {
    path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeSystemd {
    fn bind(path: PathBuf) -> FakeSystemd {
        let socket = UnixDatagram::bind(&path).expect("binding the fake systemd's socket");
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_messages, thread_stop) = (Arc::clone(&messages), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while !thread_stop.load(Ordering::Relaxed) {
                if let Ok(length) = socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                    thread_messages.lock().expect("messages").push((Instant::now(), text));
                }
            }
        });
        FakeSystemd { path, messages, stop, thread: Some(thread) }
    }

    /// Every `KEY=VALUE` line received so far, with its arrival time.
    fn assignments(&self) -> Vec<(Instant, String)> {
        let messages = self.messages.lock().expect("messages");
        messages.iter().flat_map(|(at, text)| text.lines().map(move |line| (*at, line.to_owned()))).collect()
    }

    /// Arrival times of `line` (exactly) so far.
    fn times_of(&self, line: &str) -> Vec<Instant> {
        self.assignments().into_iter().filter(|(_, text)| text == line).map(|(at, _)| at).collect()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: the console, the camera, the operator tools.
// ---------------------------------------------------------------------------------------------

/// Polls `probe` every 100 ms until it returns `Some`, for at most `timeout`.
fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `line` (which should carry `--json`) and returns the whole parsed reply, asserting the
/// reply's `ok` flag matches the envelope's.
fn request_json(console: &mut ConsoleConnection, line: &str) -> Value {
    let reply = console.request(line).unwrap_or_else(|error| panic!("console {line:?}: {error}"));
    let value: Value = serde_json::from_str(&reply.text)
        .unwrap_or_else(|error| panic!("console {line:?}: not one line of JSON ({error}): {}", reply.text));
    assert_eq!(
        value["ok"],
        Value::Bool(reply.ok),
        "console {line:?}: envelope and terminator disagree: {value}"
    );
    value
}

/// `request_json` for a command that must succeed: its `data`.
fn data_of(console: &mut ConsoleConnection, line: &str) -> Value {
    let value = request_json(console, line);
    assert_eq!(value["ok"], true, "console {line:?} failed: {value}");
    value["data"].clone()
}

/// Runs an observatory-control command that must complete (ack COMPLETE, 303).
fn command_completes(console: &mut ConsoleConnection, command: &str) {
    let data = data_of(console, &format!("{command} --json"));
    assert_eq!(data["ack"], "COMPLETE", "{command}: {data}");
    assert_eq!(data["ack_code"], 303, "{command}: {data}");
}

fn summary_state(console: &mut ConsoleConnection) -> String {
    data_of(console, "csc --json")["state"].as_str().expect("csc state is a string").to_owned()
}

/// Plays one LATISS exposure into the node's frame and metadata sockets, as fast as possible,
/// as `summit-node sim` plays its camera; closing the connections tells the ingest it is done.
fn play_one_latiss_exposure(frames: &Path, metadata: &Path) -> PlayReport {
    play_latiss(frames, metadata, 1, None).expect("playing the LATISS exposure")
}

/// Plays `count` LATISS exposures (2 s, every 5 s), paced by `compression` (`None`: as fast as
/// possible). An error once the node closes the connections.
fn play_latiss(
    frames: &Path,
    metadata: &Path,
    count: u32,
    compression: Option<TimeCompression>,
) -> std::io::Result<PlayReport> {
    let night = NightPlan {
        latiss: Some(LatissPlan { exposure_seconds: 2.0, cadence_seconds: 5.0, count }),
        ..NightPlan::baseline(NIGHT_START_NS, 0, SKY_SEED)
    };
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("LSSTCam geometry");
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(night, &lsstcam, &latiss).expect("night plan");
    let mut frame_sink = FrameWriter::<UnixStream>::connect(frames)
        .unwrap_or_else(|error| panic!("camera cannot connect to {}: {error}", frames.display()));
    let mut metadata_sink = FrameWriter::<UnixStream>::connect(metadata)
        .unwrap_or_else(|error| panic!("header service cannot connect to {}: {error}", metadata.display()));
    let options = PlayOptions {
        compression,
        ..PlayOptions::new(SkyParameters { seed: SKY_SEED, ..SkyParameters::default() })
    };
    let report =
        play_with_metadata(schedule, &mut frame_sink, Some(&mut metadata_sink), options, &mut |_| {});
    drop(frame_sink);
    drop(metadata_sink);
    report
}

/// Runs the binary with `arguments` to completion (within 60 s) and returns its output.
fn summit_node(arguments: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(BINARY)
        .args(arguments)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting summit-node");
    // Both pipes are read on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for summit-node") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("summit-node {arguments:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `summit-node check-config FILE` on the shipped example with `from` replaced by `to`.
fn check_config_with(directory: &Path, from: &str, to: &str) -> Output {
    let example = std::fs::read_to_string(EXAMPLE).expect("reading the shipped example");
    assert!(example.contains(from), "the example must contain {from:?}");
    let file = directory.join("edited.toml");
    std::fs::write(&file, example.replacen(from, to, 1)).expect("writing the edited example");
    summit_node(&["check-config".as_ref(), file.as_os_str()])
}

/// Asserts `check-config` exited 1 and its message holds every one of `needles`.
fn assert_rejected(output: &Output, needles: &[&str]) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "check-config must exit 1: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "check-config's message must name {needle:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

/// The `topic` of an event without the common prefix (`summaryState`).
fn topic(event: &Value) -> &str {
    event["topic"].as_str().and_then(|topic| topic.strip_prefix(TOPIC_PREFIX)).unwrap_or("?")
}

fn summary_states(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter(|event| topic(event) == "summaryState")
        .map(|event| event["summaryState"].as_i64().expect("summaryState is a number"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. check-config
// ---------------------------------------------------------------------------------------------

#[test]
fn check_config_accepts_the_shipped_example() {
    let output = summit_node(&["check-config".as_ref(), EXAMPLE.as_ref()]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "check-config on the example: {}{stdout}", text(&output.stderr));
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(stdout.contains("LSSTCam") && stdout.contains("LATISS"), "both streams listed: {stdout}");
}

#[test]
fn check_config_rejects_each_bad_field_naming_the_field_and_the_value() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let directory = directory.path();
    // An unknown key: its line (the key is on line N of the edited file) and its name.
    let unknown = check_config_with(directory, "[drain]\n", "[drain]\nrate_limit = 5\n");
    let example = std::fs::read_to_string(EXAMPLE).expect("example");
    let line = example.lines().position(|line| line == "[drain]").expect("[drain] in the example") + 2;
    assert_rejected(&unknown, &[&format!("line {line}"), "rate_limit"]);
    // A bad instrument.
    let instrument = check_config_with(directory, "instrument = \"LSSTCam\"", "instrument = \"HSC\"");
    assert_rejected(&instrument, &["stream[0].instrument", "\"HSC\""]);
    // A size below the minimum.
    let size = check_config_with(directory, "ring_capacity = \"8GiB\"", "ring_capacity = \"1MiB\"");
    assert_rejected(&size, &["stream[1].ring_capacity", "1048576"]);
    // A relative data directory.
    let data_dir = check_config_with(
        directory,
        "data_dir = \"/var/lib/summit-node\"",
        "data_dir = \"var/lib/summit-node\"",
    );
    assert_rejected(&data_dir, &["node.data_dir", "\"var/lib/summit-node\"", "absolute"]);
}

/// A size whose unit does not parse is reported at its line, but with the ring library's
/// wording (`invalid ring setting \`size\``) instead of the configuration's field name.
#[test]
fn check_config_names_ring_capacity_when_its_unit_is_unknown() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let output =
        check_config_with(directory.path(), "ring_capacity = \"64GiB\"", "ring_capacity = \"64 parsecs\"");
    assert_rejected(&output, &["ring_capacity", "64 parsecs"]);
}

// ---------------------------------------------------------------------------------------------
// 2. run under a fake systemd: ready, watchdog, acquire, drain, SIGTERM, then the tools.
// ---------------------------------------------------------------------------------------------

#[test]
fn run_under_systemd_acquires_drains_and_stops_cleanly_on_sigterm() {
    let base = BaseStandIn::start();
    let files = NodeFiles::new();
    files.write_config(&base, "enabled");
    let systemd = FakeSystemd::bind(files.root().join("notify.sock"));
    let mut daemon = Daemon::start(
        &files,
        &[("NOTIFY_SOCKET", systemd.path.as_os_str()), ("WATCHDOG_USEC", "2000000".as_ref())],
    );

    // systemd sees READY, then WATCHDOG at least twice within 3 s, and a STATUS line.
    let ready = wait_until(START_TIMEOUT, || systemd.times_of("READY=1").first().copied())
        .unwrap_or_else(|| daemon.fail("no READY=1 within the start timeout"));
    let pinged = wait_until(Duration::from_secs(3), || {
        let pings: Vec<Instant> =
            systemd.times_of("WATCHDOG=1").into_iter().filter(|at| *at > ready).collect();
        (pings.len() >= 2).then_some(pings)
    });
    let notifications = systemd.assignments();
    let pings = pinged
        .unwrap_or_else(|| daemon.fail(&format!("WATCHDOG=1 fewer than twice in 3 s: {notifications:?}")));
    assert!(pings[1] - ready <= Duration::from_secs(3), "{notifications:?}");
    let status_line = notifications
        .iter()
        .map(|(_, line)| line)
        .find(|line| line.starts_with("STATUS="))
        .unwrap_or_else(|| daemon.fail(&format!("no STATUS= line: {notifications:?}")));
    assert!(status_line.contains("ENABLED"), "STATUS names the state: {status_line}");

    // The console: status parses, csc shows the configured initial state.
    let mut console = daemon.console(&files.console_socket);
    assert!(console.operator, "this session must be an operator: {}", console.greeting.text);
    let status = data_of(&mut console, "status --json");
    assert_eq!(status["node"], "daemon-test", "{status}");
    assert_eq!(status["csc"]["state"], "ENABLED", "{status}");
    assert_eq!(status["rings"][0]["stream"], "LATISS", "{status}");
    assert_eq!(status["ingest"][0]["running"], true, "{status}");
    assert_eq!(summary_state(&mut console), "ENABLED");
    let csc_text = console.request("csc").expect("csc");
    assert!(csc_text.ok && csc_text.text.contains("ENABLED (2)"), "{}", csc_text.text);

    // One LATISS exposure: complete in the ring, then drained to the base once the link is UP.
    let report = play_one_latiss_exposure(&files.frames, &files.metadata);
    assert!(report.frames_sent_total > 0, "{report:?}");
    let exposure = wait_until(Duration::from_secs(30), || {
        let exposures = data_of(&mut console, "exposures --json");
        let first = exposures.as_array().and_then(|list| list.first()).cloned()?;
        (first["acquisition"] == "complete" && first["drain"] == "drained").then_some(first)
    });
    let exposure = exposure.unwrap_or_else(|| {
        let exposures = data_of(&mut console, "exposures --json");
        let status = data_of(&mut console, "status --json");
        daemon.fail(&format!("the exposure was not complete and drained within 30 s: {exposures}\n{status}"))
    });
    assert_eq!(exposure["stream"], "LATISS", "{exposure}");
    assert_eq!(exposure["segments_durable"], exposure["segments_expected"], "{exposure}");
    let drain = wait_until(Duration::from_secs(10), || {
        let drain = data_of(&mut console, "drain --json");
        let latiss = drain.as_array()?.first()?.clone();
        (latiss["exposures_drained_total"] == 1 && latiss["backlog_bytes"] == 0).then_some(latiss)
    })
    .unwrap_or_else(|| {
        let drain = data_of(&mut console, "drain --json");
        daemon.fail(&format!("drain --json does not show the exposure drained: {drain}"))
    });
    assert_eq!(drain["objects_confirmed_total"], 1, "one LATISS file: {drain}");
    assert_eq!(drain["conflicts_total"], 0, "{drain}");
    let status_command =
        summit_node(&["status".as_ref(), "--config".as_ref(), files.config.as_os_str(), "--json".as_ref()]);
    assert!(status_command.status.success(), "summit-node status: {}", text(&status_command.stderr));
    let status_json: Value = serde_json::from_slice(&status_command.stdout).expect("status --json is JSON");
    assert_eq!(status_json["data"]["csc"]["state"], "ENABLED", "{status_json}");

    // SIGTERM, with an operator's session still open: STOPPING=1, exit 0 within
    // node.shutdown_timeout_s, and the session is closed.
    daemon.signal(rustix::process::Signal::TERM);
    let terminated = Instant::now();
    let status = daemon
        .wait_for_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|| daemon.fail(&format!("no exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM")));
    let shutdown_time = terminated.elapsed();
    let log = daemon.log_text();
    assert!(status.success(), "summit-node run exited with {status} after SIGTERM:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let stopping = wait_until(Duration::from_secs(1), || systemd.times_of("STOPPING=1").first().copied());
    assert!(stopping.is_some(), "STOPPING=1 after SIGTERM: {:?}", systemd.assignments());
    eprintln!("shutdown after SIGTERM took {shutdown_time:?}");
    assert!(console.request("status").is_err(), "the session ends with the daemon");

    // The operator tools afterwards: the ring verifies, the base is clean.
    let config = files.config.as_os_str();
    let verify = summit_node(&["ring".as_ref(), "verify".as_ref(), "--config".as_ref(), config]);
    assert!(verify.status.success(), "ring verify: {}{}", text(&verify.stdout), text(&verify.stderr));
    assert!(text(&verify.stdout).contains("verify: clean"), "{}", text(&verify.stdout));
    let inspect = summit_node(&["ring".as_ref(), "inspect".as_ref(), "--config".as_ref(), config]);
    let inspect_text = text(&inspect.stdout);
    assert!(inspect.status.success(), "ring inspect: {inspect_text}{}", text(&inspect.stderr));
    assert!(inspect_text.contains("== LATISS =="), "{inspect_text}");
    assert!(inspect_text.contains(&files.ring_directory.display().to_string()), "{inspect_text}");
    let verify_base = summit_node(&["verify-base".as_ref(), "--config".as_ref(), config]);
    let verify_base_text = text(&verify_base.stdout);
    assert!(verify_base.status.success(), "verify-base: {verify_base_text}{}", text(&verify_base.stderr));
    assert!(verify_base_text.contains("CLEAN"), "{verify_base_text}");
    assert!(verify_base_text.contains("matched 1,"), "the one LATISS file: {verify_base_text}");

    // The events file: summaryState STANDBY (the announcement), DISABLED, ENABLED; heartbeats;
    // softwareVersions; configurationApplied.
    let events = files.events();
    assert_eq!(summary_states(&events), vec![5, 1, 2], "summaryState events in order");
    let count = |name: &str| events.iter().filter(|event| topic(event) == name).count();
    assert!(count("heartbeat") >= 2, "heartbeats in the events file: {}", count("heartbeat"));
    assert_eq!(count("softwareVersions"), 1);
    assert_eq!(count("configurationApplied"), 1);
    let versions = events.iter().find(|event| topic(event) == "softwareVersions").expect("softwareVersions");
    assert_eq!(versions["cscVersion"], env!("CARGO_PKG_VERSION"), "{versions}");
}

/// systemd's stop arriving while the camera is reading out: the daemon still exits 0 within its
/// bound, and every frame it had acknowledged is in the ring, which verifies clean.
#[test]
fn sigterm_during_a_readout_stops_within_the_bound_with_every_acknowledged_frame_durable() {
    let base = BaseStandIn::start();
    let files = NodeFiles::new();
    files.write_config(&base, "enabled");
    let mut daemon = Daemon::start(&files, &[]);
    let mut console = daemon.console(&files.console_socket);
    let (frames, metadata) = (files.frames.clone(), files.metadata.clone());
    // Real time: each readout spreads its frames over 2 s.
    let camera =
        std::thread::spawn(move || play_latiss(&frames, &metadata, 3, Some(TimeCompression { factor: 1.0 })));
    let acknowledged = wait_until(Duration::from_secs(15), || {
        let ingest = data_of(&mut console, "status --json")["ingest"][0].clone();
        let frames_total = ingest["frames_total"].as_u64()?;
        (frames_total > 0 && ingest["exposures_complete_total"] == 0).then_some(frames_total)
    })
    .unwrap_or_else(|| daemon.fail("no frame durable during the first readout"));

    daemon.signal(rustix::process::Signal::TERM);
    let status = daemon.wait_for_exit(SHUTDOWN_TIMEOUT).unwrap_or_else(|| {
        daemon.fail(&format!("no exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM mid-readout"))
    });
    let log = daemon.log_text();
    assert!(status.success(), "exit after SIGTERM mid-readout: {status}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(console.request("status").is_err(), "the session ends with the daemon");
    assert!(camera.join().expect("the camera thread").is_err(), "the camera is cut off, not finished");

    let verify =
        summit_node(&["ring".as_ref(), "verify".as_ref(), "--config".as_ref(), files.config.as_os_str()]);
    let verify_text = text(&verify.stdout);
    assert!(verify.status.success(), "ring verify: {verify_text}{}", text(&verify.stderr));
    assert!(verify_text.contains("verify: clean"), "{verify_text}");
    let records: u64 = verify_text
        .lines()
        .find_map(|line| line.split_once(" good records"))
        .and_then(|(count, _)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("ring verify counts the good records: {verify_text}"));
    assert!(
        records >= acknowledged,
        "{acknowledged} frames were acknowledged before SIGTERM, the ring holds {records} records"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The CSC over the console, from STANDBY to OFFLINE.
// ---------------------------------------------------------------------------------------------

/// Whether a camera can connect to the frame socket right now.
fn frames_accepted(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

#[test]
fn csc_commands_over_the_console_walk_standby_to_enabled_and_exit_control_ends_the_process() {
    let base = BaseStandIn::start();
    let files = NodeFiles::new();
    files.write_config(&base, "standby");
    let mut daemon = Daemon::start(&files, &[]);
    let mut console = daemon.console(&files.console_socket);
    assert_eq!(summary_state(&mut console), "STANDBY");
    assert!(!files.frames.exists(), "STANDBY: no frame socket");

    // enable is not valid in STANDBY: FAILED (-302), saying why.
    let refused = request_json(&mut console, "enable --json");
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["data"]["ack"], "FAILED", "{refused}");
    assert_eq!(refused["data"]["ack_code"], -302, "{refused}");
    let result = refused["data"]["result"].as_str().unwrap_or_default();
    assert!(result.contains("STANDBY") && result.contains("DISABLED"), "{refused}");
    assert_eq!(summary_state(&mut console), "STANDBY");

    command_completes(&mut console, "start");
    assert_eq!(summary_state(&mut console), "DISABLED");
    assert!(!frames_accepted(&files.frames), "DISABLED: frames refused");
    assert_eq!(data_of(&mut console, "status --json")["ingest"][0]["running"], false);

    command_completes(&mut console, "enable");
    assert_eq!(summary_state(&mut console), "ENABLED");
    assert!(frames_accepted(&files.frames), "ENABLED: the frame socket accepts a camera");
    assert_eq!(data_of(&mut console, "status --json")["ingest"][0]["running"], true);

    command_completes(&mut console, "disable");
    assert_eq!(summary_state(&mut console), "DISABLED");
    assert!(!frames_accepted(&files.frames), "DISABLED again: frames refused");
    assert_eq!(data_of(&mut console, "status --json")["ingest"][0]["running"], false);

    command_completes(&mut console, "standby");
    assert_eq!(summary_state(&mut console), "STANDBY");
    command_completes(&mut console, "exitControl");

    // The process exits by itself, with status 0, closing the session it was commanded from.
    let status = daemon
        .wait_for_exit(Duration::from_secs(15))
        .unwrap_or_else(|| daemon.fail("summit-node still running 15 s after exitControl"));
    let log = daemon.log_text();
    assert!(status.success(), "exit after exitControl: {status}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(console.request("csc").is_err(), "the session ends with the daemon");

    // Every transition was published; the last summaryState is OFFLINE (4).
    let events = files.events();
    assert_eq!(summary_states(&events), vec![5, 1, 2, 1, 5, 4], "summaryState events in order");
    let ring =
        summit_node(&["ring".as_ref(), "verify".as_ref(), "--config".as_ref(), files.config.as_os_str()]);
    assert!(
        ring.status.success(),
        "ring verify after exitControl: {}{}",
        text(&ring.stdout),
        text(&ring.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. drain pause from an operator session.
// ---------------------------------------------------------------------------------------------

#[test]
fn drain_pause_from_an_operator_session_shows_paused_in_drain_json() {
    let base = BaseStandIn::start();
    let files = NodeFiles::new();
    files.write_config(&base, "disabled");
    let mut daemon = Daemon::start(&files, &[]);
    let mut console = daemon.console(&files.console_socket);
    assert!(console.operator, "root or the operator group is an operator: {}", console.greeting.text);
    assert_eq!(data_of(&mut console, "drain --json")[0]["paused"], false);
    let paused = data_of(&mut console, "drain pause --json");
    assert!(paused["message"].as_str().unwrap_or_default().contains("paused"), "{paused}");
    assert_eq!(data_of(&mut console, "drain --json")[0]["paused"], true);
    let resumed = console.request("drain resume").expect("drain resume");
    assert!(resumed.ok, "{}", resumed.text);
    assert_eq!(data_of(&mut console, "drain --json")[0]["paused"], false);
    drop(console);
    daemon.signal(rustix::process::Signal::TERM);
    let status =
        daemon.wait_for_exit(SHUTDOWN_TIMEOUT).unwrap_or_else(|| daemon.fail("no exit after SIGTERM"));
    assert!(status.success(), "{status}\n{}", daemon.log_text());
}

// ---------------------------------------------------------------------------------------------
// 5. Bad things at start.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_frames_socket_in_a_missing_directory_fails_the_start_naming_the_path() {
    let base = BaseStandIn::start();
    let files = NodeFiles::new();
    files.write_config(&base, "enabled");
    let missing = files.root().join("no-such-directory").join("latiss-frames.sock");
    files.edit_config(
        &format!("frames = \"unix:{}\"", files.frames.display()),
        &format!("frames = \"unix:{}\"", missing.display()),
    );
    let mut daemon = Daemon::start(&files, &[]);
    let status = daemon
        .wait_for_exit(Duration::from_secs(20))
        .unwrap_or_else(|| daemon.fail("summit-node kept running with an impossible frame socket"));
    let log = daemon.log_text();
    assert!(!status.success(), "run must fail: {status}\n{log}");
    assert!(status.code().is_some(), "an exit, not a signal: {status}\n{log}");
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    let error_line = log
        .lines()
        .find(|line| line.starts_with("summit-node: error:"))
        .unwrap_or_else(|| panic!("a final error line:\n{log}"));
    assert!(error_line.contains(&missing.display().to_string()), "the error names the path: {error_line}");
    assert!(
        !missing.parent().expect("parent").exists(),
        "the directory is not created behind the operator's back"
    );
    assert_eq!(status.code(), Some(2), "could not run: exit 2\n{log}");
    // The observatory was told why: errorCode (INGEST_FAILED, naming the path), then FAULT.
    let events = files.events();
    let error_code = events
        .iter()
        .find(|event| topic(event) == "errorCode")
        .unwrap_or_else(|| panic!("an errorCode event: {events:?}"));
    assert_eq!(error_code["errorCode"], summit_node::csc::error_codes::INGEST_FAILED, "{error_code}");
    let report = error_code["errorReport"].as_str().unwrap_or_default();
    assert!(report.contains(&missing.display().to_string()), "{error_code}");
    assert_eq!(summary_states(&events).last(), Some(&3), "summaryState FAULT last");
    assert!(!files.root().join("events.sock").exists(), "the events socket is removed on the way out");
    // What the failed start had opened is sound.
    let ring =
        summit_node(&["ring".as_ref(), "verify".as_ref(), "--config".as_ref(), files.config.as_os_str()]);
    assert!(ring.status.success(), "ring verify: {}{}", text(&ring.stdout), text(&ring.stderr));
}

#[test]
fn a_console_socket_in_a_missing_directory_fails_the_start_naming_the_path() {
    let base = BaseStandIn::start();
    let files = NodeFiles::new();
    files.write_config(&base, "enabled");
    let missing = files.root().join("no-such-directory").join("console.sock");
    files.edit_config(
        &format!("socket = \"{}\"", files.console_socket.display()),
        &format!("socket = \"{}\"", missing.display()),
    );
    let mut daemon = Daemon::start(&files, &[]);
    let status = daemon
        .wait_for_exit(Duration::from_secs(20))
        .unwrap_or_else(|| daemon.fail("summit-node kept running without its console socket"));
    let log = daemon.log_text();
    assert_eq!(status.code(), Some(2), "run must fail with 2 (could not run): {status}\n{log}");
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    let error_line = log
        .lines()
        .find(|line| line.starts_with("summit-node: error:"))
        .unwrap_or_else(|| panic!("a final error line:\n{log}"));
    assert!(error_line.contains(&missing.display().to_string()), "the error names the path: {error_line}");
}

/// A ring the daemon created and closed cleanly, then its `ring.meta` overwritten with garbage
/// (a disk error, an operator's mistake): `start` must fail naming the ring directory, and the
/// node must never "repair" it by creating a fresh ring over the data.
#[test]
fn a_garbage_ring_meta_fails_start_naming_the_ring_directory_and_is_left_untouched() {
    let base = BaseStandIn::start();
    let files = NodeFiles::new();
    files.write_config(&base, "disabled");
    let mut daemon = Daemon::start(&files, &[]);
    drop(daemon.console(&files.console_socket));
    daemon.signal(rustix::process::Signal::TERM);
    let status =
        daemon.wait_for_exit(SHUTDOWN_TIMEOUT).unwrap_or_else(|| daemon.fail("no exit after SIGTERM"));
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    let meta = files.ring_directory.join("ring.meta");
    let meta_bytes = std::fs::metadata(&meta).expect("the daemon created ring.meta").len() as u32;
    let garbage: Vec<u8> =
        (0..meta_bytes).map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&meta, &garbage).expect("overwriting ring.meta with garbage");
    let before = ring_directory_state(&files.ring_directory);

    // From STANDBY, `start` over the console is refused.
    files.edit_config("initial_state = \"disabled\"", "initial_state = \"standby\"");
    let mut daemon = Daemon::start(&files, &[]);
    let mut console = daemon.console(&files.console_socket);
    let refused = request_json(&mut console, "start --json");
    assert_eq!(refused["ok"], false, "start must fail on a garbage ring.meta: {refused}");
    assert_eq!(refused["data"]["ack"], "FAILED", "{refused}");
    let result = refused["data"]["result"].as_str().unwrap_or_default().to_owned();
    let ring_directory = files.ring_directory.display().to_string();
    assert!(result.contains(&ring_directory), "names the ring directory: {result}");
    assert_eq!(summary_state(&mut console), "STANDBY", "a failed start stays in STANDBY");
    assert_eq!(std::fs::read(&meta).expect("ring.meta"), garbage, "ring.meta is not rewritten");
    assert_eq!(ring_directory_state(&files.ring_directory), before, "the ring directory is untouched");
    drop(console);
    daemon.signal(rustix::process::Signal::TERM);
    let status =
        daemon.wait_for_exit(SHUTDOWN_TIMEOUT).unwrap_or_else(|| daemon.fail("no exit after SIGTERM"));
    assert!(status.success(), "{status}\n{}", daemon.log_text());

    // Starting straight into DISABLED fails the process instead, with the same message.
    files.edit_config("initial_state = \"standby\"", "initial_state = \"disabled\"");
    let mut daemon = Daemon::start(&files, &[]);
    let status =
        daemon.wait_for_exit(Duration::from_secs(20)).unwrap_or_else(|| daemon.fail("still running"));
    let log = daemon.log_text();
    assert!(!status.success() && status.code().is_some(), "run must fail: {status}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let error_line = log
        .lines()
        .find(|line| line.starts_with("summit-node: error:"))
        .unwrap_or_else(|| panic!("a final error line:\n{log}"));
    assert!(error_line.contains(&ring_directory), "names the ring directory: {error_line}");
    assert_eq!(std::fs::read(&meta).expect("ring.meta"), garbage, "ring.meta is not rewritten");
    assert_eq!(ring_directory_state(&files.ring_directory), before, "the ring directory is untouched");
}

/// The files of a ring directory with their sizes and modification times, but the lock file
/// (`ring.lock`), which opening a ring creates to keep a second writer out.
fn ring_directory_state(directory: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut listing: Vec<(String, u64, std::time::SystemTime)> = std::fs::read_dir(directory)
        .expect("listing the ring directory")
        .map(|entry| {
            let entry = entry.expect("a directory entry");
            let metadata = entry.metadata().expect("metadata");
            let modified = metadata.modified().expect("modification time");
            (entry.file_name().to_string_lossy().into_owned(), metadata.len(), modified)
        })
        .filter(|(name, _, _)| name != ringbuffer::storage::LOCK_FILE_NAME)
        .collect();
    listing.sort();
    listing
}

// ---------------------------------------------------------------------------------------------
// 6. The command line itself.
// ---------------------------------------------------------------------------------------------

#[test]
fn help_for_every_subcommand_exits_0_and_says_what_it_does() {
    let cases: &[(&[&str], &str)] = &[
        (&["--help"], "summit appliance"),
        (&["run", "--help"], "Run the node"),
        (&["sim", "--help"], "simulated hardware"),
        (&["console", "--help"], "operator console"),
        (&["status", "--help"], "status"),
        (&["ring", "--help"], "Inspect or verify"),
        (&["ring", "inspect", "--help"], "Capacity, fill, cursors"),
        (&["ring", "verify", "--help"], "Scan every retained record"),
        (&["check-config", "--help"], "Check a configuration file"),
        (&["verify-base", "--help"], "Check the base against the drain's manifests"),
    ];
    for (arguments, says) in cases {
        let arguments: Vec<&std::ffi::OsStr> = arguments.iter().map(|argument| argument.as_ref()).collect();
        let output = summit_node(&arguments);
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "summit-node {arguments:?}: {}{stdout}", text(&output.stderr));
        assert!(stdout.contains("Usage:"), "summit-node {arguments:?}: {stdout}");
        assert!(stdout.contains(says), "summit-node {arguments:?} must say {says:?}: {stdout}");
    }
    let top = text(&summit_node(&["--help".as_ref()]).stdout);
    for subcommand in ["run", "sim", "console", "status", "ring", "check-config", "verify-base"] {
        assert!(
            top.lines().any(|line| line.trim_start().starts_with(subcommand)),
            "{subcommand} listed: {top}"
        );
    }
}

/// `sim --cut START,END` as the README writes it: one argument, two fractions. A malformed or
/// out-of-range cut is refused naming it, before anything starts; a good one runs a short night
/// (one LATISS exposure, 40x) with the fiber cut through the middle of it, ending CLEAN.
#[test]
fn sim_cut_takes_start_comma_end_and_refuses_a_bad_one() {
    for (cut, says) in
        [("0.5", "expected START,END"), ("0.2,x", "\"x\" is not a number"), ("0.6,0.4", "fiber cut 0.6..0.4")]
    {
        let output = summit_node(&["sim".as_ref(), "--cut".as_ref(), cut.as_ref()]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "--cut {cut}: {stderr}");
        assert!(stderr.contains(says), "--cut {cut} must say {says:?}: {stderr}");
    }
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("sim");
    let arguments: Vec<&std::ffi::OsStr> = vec![
        "sim".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--rafts".as_ref(),
        "none".as_ref(),
        "--latiss-exposures".as_ref(),
        "1".as_ref(),
        "--compression".as_ref(),
        "40".as_ref(),
        "--cut".as_ref(),
        "0.3,0.7".as_ref(),
    ];
    let output = summit_node(&arguments);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "sim --cut 0.3,0.7: {}{stdout}", text(&output.stderr));
    assert!(stdout.contains("CLEAN"), "the night ends clean: {stdout}");
}

#[test]
fn console_without_a_node_exits_2_saying_none_is_running() {
    let output = summit_node(&["console".as_ref(), "--socket".as_ref(), "/nonexistent".as_ref()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent"), "names the socket: {stderr}");
    assert!(stderr.contains("is summit-node running?"), "says no node is running there: {stderr}");
    let one_shot =
        summit_node(&["console".as_ref(), "--socket".as_ref(), "/nonexistent".as_ref(), "status".as_ref()]);
    assert_eq!(one_shot.status.code(), Some(2), "{}", text(&one_shot.stderr));
}
