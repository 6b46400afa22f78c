//! The observatory-control state machine ([`summit_node::csc::Csc`]) against domain.md's table,
//! the JSON-line form of its events, and the events publisher on a real Unix socket and file.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringbuffer::ManualClock;
use serde_json::Value;
use summit_node::csc::{
    error_codes, AckCode, Csc, CscCommand, CscEvent, EventTopic, SummaryState, CSC_NAME,
    TAI_MINUS_UTC_SECONDS,
};
use summit_node::events::{EventError, EventOptions, EventPublisher, SOCKET_MODE};

const T0_NS: u64 = 1_795_000_000_000_000_000;

fn start() -> CscCommand {
    CscCommand::Start { configuration_override: None }
}

const ALL_STATES: [SummaryState; 5] = [
    SummaryState::Standby,
    SummaryState::Disabled,
    SummaryState::Enabled,
    SummaryState::Fault,
    SummaryState::Offline,
];

fn all_commands() -> [CscCommand; 5] {
    [start(), CscCommand::Enable, CscCommand::Disable, CscCommand::Standby, CscCommand::ExitControl]
}

/// Runs a command to completion, asserting it is accepted; returns the events.
fn run(csc: &mut Csc, command: &CscCommand, now_ns: u64) -> Vec<CscEvent> {
    let target =
        csc.begin(command).unwrap_or_else(|ack| panic!("{} rejected: {}", command.name(), ack.result));
    csc.complete(target, now_ns)
}

/// A CSC brought into `state` through valid commands.
fn csc_in(state: SummaryState) -> Csc {
    let mut csc = Csc::new(T0_NS);
    match state {
        SummaryState::Standby => {}
        SummaryState::Disabled => {
            run(&mut csc, &start(), T0_NS);
        }
        SummaryState::Enabled => {
            run(&mut csc, &start(), T0_NS);
            run(&mut csc, &CscCommand::Enable, T0_NS);
        }
        SummaryState::Fault => {
            csc.fault(error_codes::RING_POISONED, "ring LSSTCam poisoned: fsync failed", "", T0_NS);
        }
        SummaryState::Offline => {
            run(&mut csc, &CscCommand::ExitControl, T0_NS);
        }
    }
    assert_eq!(csc.state(), state);
    csc
}

#[test]
fn commands_walk_standby_disabled_enabled_and_back_publishing_each_summary_state() {
    let mut csc = Csc::new(T0_NS);
    assert_eq!(csc.state(), SummaryState::Standby);
    assert!(!csc.acquisition_allowed());

    let steps = [
        (start(), SummaryState::Disabled, false),
        (CscCommand::Enable, SummaryState::Enabled, true),
        (CscCommand::Disable, SummaryState::Disabled, false),
        (CscCommand::Standby, SummaryState::Standby, false),
        (CscCommand::ExitControl, SummaryState::Offline, false),
    ];
    for (step, (command, expected, acquiring)) in steps.iter().enumerate() {
        let now_ns = T0_NS + (step as u64 + 1) * 1_000_000_000;
        let target = csc.begin(command).expect("valid in this state");
        assert_eq!(target, *expected);
        assert_eq!(csc.state(), csc.view().0, "begin changes nothing yet");
        assert_eq!(csc.pending(), Some(command));
        let events = csc.complete(target, now_ns);
        assert_eq!(events, [CscEvent::SummaryState { summary_state: expected.code() }]);
        assert_eq!(csc.state(), *expected);
        assert_eq!(csc.since_unix_ns(), now_ns);
        assert_eq!(csc.acquisition_allowed(), *acquiring, "acquisition in {}", expected.name());
        assert_eq!(csc.pending(), None);
    }
    assert!(csc.exit_requested());
}

#[test]
fn every_command_outside_its_states_is_rejected_failed_naming_command_state_and_valid_states() {
    let mut rejected = 0;
    for state in ALL_STATES {
        for command in all_commands() {
            let mut csc = csc_in(state);
            let valid = command.valid_from().contains(&state);
            match csc.begin(&command) {
                Ok(target) => {
                    assert!(valid, "{} accepted in {}", command.name(), state.name());
                    assert_eq!(target, command.target());
                }
                Err(ack) => {
                    assert!(!valid, "{} rejected in {}: {}", command.name(), state.name(), ack.result);
                    rejected += 1;
                    assert_eq!(
                        ack.ack,
                        AckCode::Failed,
                        "ts_salobj acknowledges an invalid transition FAILED"
                    );
                    assert_eq!(ack.ack.code(), -302);
                    assert_eq!(ack.command, command.name());
                    let valid_names: Vec<&str> = command.valid_from().iter().map(|s| s.name()).collect();
                    let expected = format!(
                        "{} is not valid in {} (valid from {})",
                        command.name(),
                        state.name(),
                        valid_names.join(", ")
                    );
                    assert!(
                        ack.result.starts_with(&expected),
                        "{:?} should start with {expected:?}",
                        ack.result
                    );
                    assert_eq!(csc.state(), state, "a rejected command changes nothing");
                    assert_eq!(csc.pending(), None);
                }
            }
        }
    }
    // 25 pairs, 6 valid transitions (start, enable, disable, standby x2, exitControl).
    assert_eq!(rejected, 25 - 6);
}

#[test]
fn enable_in_standby_is_rejected_with_the_exact_message() {
    let mut csc = Csc::new(T0_NS);
    let ack = csc.begin(&CscCommand::Enable).expect_err("not valid in STANDBY");
    assert_eq!(ack.result, "enable is not valid in STANDBY (valid from DISABLED)");
}

#[test]
fn fault_publishes_error_code_then_summary_state_and_stops_acquisition() {
    let mut csc = csc_in(SummaryState::Enabled);
    assert!(csc.acquisition_allowed());
    let events = csc.fault(error_codes::RING_POISONED, "ring LSSTCam poisoned", "ring.rs:412", T0_NS + 5);
    assert_eq!(
        events,
        [
            CscEvent::ErrorCode {
                error_code: 100,
                error_report: "ring LSSTCam poisoned".into(),
                traceback: "ring.rs:412".into()
            },
            CscEvent::SummaryState { summary_state: 3 },
        ]
    );
    assert_eq!(csc.state(), SummaryState::Fault);
    assert_eq!(csc.since_unix_ns(), T0_NS + 5);
    assert!(!csc.acquisition_allowed());
    assert_eq!(csc.last_error(), Some((100, "ring LSSTCam poisoned")));
    let view = csc.status_view();
    assert_eq!(view.state, SummaryState::Fault);
    assert_eq!(view.error_code, Some(100));
}

#[test]
fn only_standby_leaves_fault_and_rejections_in_fault_say_why_and_how_out() {
    let mut csc = csc_in(SummaryState::Fault);
    for command in [start(), CscCommand::Enable, CscCommand::Disable, CscCommand::ExitControl] {
        let ack = csc.begin(&command).expect_err("only standby leaves FAULT");
        assert!(ack.result.contains("errorCode=100: ring LSSTCam poisoned"), "{}", ack.result);
        assert!(ack.result.ends_with("send standby to leave FAULT"), "{}", ack.result);
    }
    assert_eq!(
        run(&mut csc, &CscCommand::Standby, T0_NS + 9),
        [CscEvent::summary_state(SummaryState::Standby)]
    );
    assert_eq!(csc.state(), SummaryState::Standby);
    assert_eq!(csc.last_error(), Some((100, "ring LSSTCam poisoned: fsync failed")), "kept for the console");
    run(&mut csc, &start(), T0_NS + 10);
    assert_eq!(csc.state(), SummaryState::Disabled);
}

#[test]
fn a_second_fault_publishes_the_new_error_and_offline_ignores_faults() {
    let mut csc = csc_in(SummaryState::Fault);
    let events = csc.fault(error_codes::DRAIN_FAILED, "manifest write failed", "", T0_NS + 1);
    assert_eq!(events.len(), 2);
    assert!(matches!(events[0], CscEvent::ErrorCode { error_code: 103, .. }));
    assert_eq!(csc.since_unix_ns(), T0_NS, "still the same FAULT");

    let mut csc = csc_in(SummaryState::Offline);
    assert!(csc.fault(error_codes::INGEST_FAILED, "late", "", T0_NS + 1).is_empty());
    assert_eq!(csc.state(), SummaryState::Offline);
}

#[test]
fn failed_side_effects_leave_the_state_unchanged_with_a_failed_ack() {
    let mut csc = Csc::new(T0_NS);
    let command = start();
    csc.begin(&command).expect("valid");
    let ack = csc.failed(&command, "cannot create /var/lib/summit-node/rings/LSSTCam: Permission denied");
    assert_eq!(ack.ack, AckCode::Failed);
    assert_eq!(ack.command, "start");
    assert!(ack.result.contains("remaining in STANDBY"), "{}", ack.result);
    assert!(ack.result.ends_with("Permission denied"), "{}", ack.result);
    assert_eq!(csc.state(), SummaryState::Standby);
    assert_eq!(csc.pending(), None);
    assert!(csc.begin(&command).is_ok(), "the command may be retried");
}

#[test]
fn a_command_is_refused_while_another_is_in_progress() {
    let mut csc = Csc::new(T0_NS);
    let target = csc.begin(&start()).expect("valid");
    let ack = csc.begin(&CscCommand::ExitControl).expect_err("start in progress");
    assert_eq!(ack.ack, AckCode::Failed);
    assert_eq!(ack.result, "exitControl rejected: start is still in progress");
    csc.complete(target, T0_NS + 1);
    assert_eq!(csc.state(), SummaryState::Disabled);
}

#[test]
fn a_fault_during_a_command_wins_over_its_completion() {
    let mut csc = csc_in(SummaryState::Disabled);
    let target = csc.begin(&CscCommand::Enable).expect("valid");
    csc.fault(error_codes::INGEST_FAILED, "endpoint tcp:0.0.0.0:7100 in use", "", T0_NS + 1);
    assert!(csc.complete(target, T0_NS + 2).is_empty(), "no summaryState(ENABLED) after FAULT");
    assert_eq!(csc.state(), SummaryState::Fault);
    assert!(!csc.acquisition_allowed());
    assert_eq!(csc.pending(), None);
}

#[test]
fn startup_events_announce_versions_simulation_and_the_initial_state() {
    let csc = Csc::new(T0_NS);
    let events = csc.startup_events(true, T0_NS);
    let topics: Vec<EventTopic> = events.iter().map(CscEvent::topic).collect();
    assert_eq!(topics, [EventTopic::SoftwareVersions, EventTopic::SimulationMode, EventTopic::SummaryState]);
    assert_eq!(events[1], CscEvent::SimulationMode { mode: 1 });
    assert_eq!(events[2], CscEvent::SummaryState { summary_state: 5 });
}

#[test]
fn codes_and_names_match_the_observatory() {
    let codes: Vec<i32> = ALL_STATES.iter().map(|state| state.code()).collect();
    assert_eq!(codes, [5, 1, 2, 3, 4]);
    for state in ALL_STATES {
        assert_eq!(SummaryState::from_code(state.code()), Some(state));
    }
    assert_eq!(SummaryState::from_code(0), None);
    for command in all_commands() {
        assert_eq!(CscCommand::from_name(command.name()), Some(command.clone()));
    }
    assert_eq!(CscCommand::from_name("exitcontrol"), None);
    let acks = [
        (AckCode::CmdAck, 300),
        (AckCode::InProgress, 301),
        (AckCode::Complete, 303),
        (AckCode::NoPerm, -300),
        (AckCode::NoAck, -301),
        (AckCode::Failed, -302),
        (AckCode::Aborted, -303),
        (AckCode::Timeout, -304),
    ];
    for (ack, code) in acks {
        assert_eq!(ack.code(), code);
    }
    let error_codes = [100, 101, 102, 103, 104, 105, 199];
    let names: std::collections::BTreeSet<&str> =
        error_codes.iter().map(|code| error_codes::name(*code).expect("named")).collect();
    assert_eq!(names.len(), error_codes.len(), "one name per code");
    assert_eq!(error_codes::name(100), Some("RING_POISONED"));
}

#[test]
fn every_topic_is_a_sal_logevent_of_the_summit_node() {
    assert_eq!(CSC_NAME, "SummitNode");
    for (index, topic) in EventTopic::ALL.iter().enumerate() {
        assert_eq!(topic.index(), index);
        assert_eq!(topic.kafka_topic(), format!("lsst.sal.{CSC_NAME}.logevent_{}", topic.name()));
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
}

#[test]
fn json_lines_carry_topic_tai_stamp_sequence_and_sal_field_names() {
    let now_ns = 1_795_000_000_250_000_000;
    let line = CscEvent::summary_state(SummaryState::Enabled).to_json_line(3, now_ns);
    assert!(
        line.starts_with(r#"{"topic":"lsst.sal.SummitNode.logevent_summaryState","private_sndStamp":"#),
        "{line}"
    );
    let value = parse(&line);
    assert_eq!(value["private_seqNum"], 3);
    assert_eq!(value["summaryState"], 2);
    let stamp = value["private_sndStamp"].as_f64().expect("a number");
    assert!((stamp - (1_795_000_000.25 + TAI_MINUS_UTC_SECONDS)).abs() < 1e-6, "TAI seconds: {stamp}");

    let heartbeat = parse(&CscEvent::Heartbeat.to_json_line(1, now_ns));
    let keys: Vec<&str> = heartbeat.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 3, "topic and private fields only: {keys:?}");
    assert_eq!(heartbeat["topic"], "lsst.sal.SummitNode.logevent_heartbeat");

    let error = parse(
        &CscEvent::ErrorCode {
            error_code: 100,
            error_report: "line one\nline two".into(),
            traceback: String::new(),
        }
        .to_json_line(1, now_ns),
    );
    assert_eq!(error["errorCode"], 100);
    assert_eq!(error["errorReport"], "line one\nline two", "newlines escaped, still one line");
    assert_eq!(error["traceback"], "");

    let versions = parse(&CscEvent::software_versions().to_json_line(1, now_ns));
    for key in ["salVersion", "xmlVersion", "openSpliceVersion", "cscVersion", "subsystemVersions"] {
        assert!(versions.get(key).is_some(), "softwareVersions lacks {key}");
    }
    assert_eq!(versions["cscVersion"], env!("CARGO_PKG_VERSION"));

    let log = parse(
        &CscEvent::LogMessage {
            name: "summit_node::node".into(),
            level: 30,
            message: "link down".into(),
            traceback: String::new(),
            file_path: "node.rs".into(),
            function_name: "summit_node::node".into(),
            line_number: 7,
            process: 42,
        }
        .to_json_line(1, now_ns),
    );
    for key in ["name", "level", "message", "traceback", "filePath", "functionName", "lineNumber", "process"]
    {
        assert!(log.get(key).is_some(), "logMessage lacks {key}");
    }
    let applied = parse(&Csc::new(T0_NS).configuration_applied("summit-node-01").to_json_line(1, now_ns));
    for key in ["configurations", "version", "url", "schemaVersion", "otherInfo"] {
        assert!(applied.get(key).is_some(), "configurationApplied lacks {key}");
    }
    let level = parse(&CscEvent::LogLevel { level: 20, subsystem: String::new() }.to_json_line(1, now_ns));
    assert_eq!(level["topic"], "lsst.sal.SummitNode.logevent_logLevel");
    assert_eq!(level["level"], 20);
}

// ---- The events publisher on a real socket and file ----

fn publisher_in(directory: &Path) -> EventPublisher {
    let options =
        EventOptions::new(&directory.join("run/events.sock"), &directory.join("state/events.jsonl"));
    EventPublisher::start_with(options, Arc::new(ManualClock::new(T0_NS))).expect("publisher starts")
}

/// Waits until `condition` holds (or fails after 10 s).
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn subscribe(publisher: &EventPublisher) -> BufReader<UnixStream> {
    let before = publisher.counters().subscribers_accepted_total;
    let stream = UnixStream::connect(publisher.socket_path()).expect("connecting to the events socket");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    wait_for("the subscriber to be accepted", || publisher.counters().subscribers_accepted_total > before);
    BufReader::new(stream)
}

fn next_line(reader: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line within 10 s");
    assert!(line.ends_with('\n'), "a whole line: {line:?}");
    parse(&line)
}

#[test]
fn subscriber_receives_summary_state_then_heartbeat_and_the_file_holds_both() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let publisher = publisher_in(directory.path());
    let mode = std::fs::metadata(publisher.socket_path()).expect("socket exists").permissions().mode();
    assert_eq!(mode & 0o777, SOCKET_MODE);
    let mut subscriber = subscribe(&publisher);

    publisher.publish(CscEvent::summary_state(SummaryState::Standby));
    publisher.publish(CscEvent::Heartbeat);
    publisher.publish(CscEvent::Heartbeat);

    let first = next_line(&mut subscriber);
    assert_eq!(first["topic"], "lsst.sal.SummitNode.logevent_summaryState");
    assert_eq!(first["summaryState"], 5);
    assert_eq!(first["private_seqNum"], 1);
    assert_eq!(first["private_sndStamp"].as_f64(), Some(T0_NS as f64 / 1e9 + TAI_MINUS_UTC_SECONDS));
    let second = next_line(&mut subscriber);
    assert_eq!(second["topic"], "lsst.sal.SummitNode.logevent_heartbeat");
    assert_eq!(second["private_seqNum"], 1, "sequence numbers count per topic");
    assert_eq!(next_line(&mut subscriber)["private_seqNum"], 2);

    let file = publisher.file_path().to_owned();
    let socket = publisher.socket_path().to_owned();
    publisher.shutdown();
    let text = std::fs::read_to_string(&file).expect("events file");
    let lines: Vec<Value> = text.lines().map(parse).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], first);
    assert_eq!(lines[1], second);
    assert!(!socket.exists(), "the socket is removed at shutdown");
    let mut rest = String::new();
    assert_eq!(subscriber.read_to_string(&mut rest).expect("EOF after shutdown"), 0);
}

#[test]
fn late_subscriber_first_gets_the_latest_state_events_in_publication_order() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let publisher = publisher_in(directory.path());
    publisher.publish(CscEvent::software_versions());
    publisher.publish(CscEvent::summary_state(SummaryState::Enabled));
    publisher.publish(CscEvent::Heartbeat);
    publisher.publish(CscEvent::ErrorCode {
        error_code: 100,
        error_report: "poisoned".into(),
        traceback: "".into(),
    });
    publisher.publish(CscEvent::summary_state(SummaryState::Fault));
    wait_for("five lines written", || publisher.counters().written_total == 5);

    let mut late = subscribe(&publisher);
    let replayed: Vec<Value> = (0..3).map(|_| next_line(&mut late)).collect();
    assert_eq!(replayed[0]["topic"], "lsst.sal.SummitNode.logevent_softwareVersions");
    assert_eq!(replayed[1]["topic"], "lsst.sal.SummitNode.logevent_errorCode");
    assert_eq!(replayed[2]["summaryState"], 3, "the latest summaryState (FAULT), not ENABLED");
    assert_eq!(replayed[2]["private_seqNum"], 2);
    publisher.publish(CscEvent::Heartbeat);
    let live = next_line(&mut late);
    assert_eq!(live["topic"], "lsst.sal.SummitNode.logevent_heartbeat");
    assert_eq!(live["private_seqNum"], 2, "heartbeats are not replayed, only new ones sent");
}

#[test]
fn publishing_100k_events_never_blocks_on_a_subscriber_that_never_reads() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let publisher = publisher_in(directory.path());
    let _stalled = subscribe(&publisher);

    let started = Instant::now();
    for index in 0..100_000u32 {
        if index % 1000 == 0 {
            publisher.publish(CscEvent::summary_state(SummaryState::Enabled));
        } else {
            publisher.publish(CscEvent::Heartbeat);
        }
    }
    let publishing = started.elapsed();
    assert!(publishing < Duration::from_secs(5), "100k publishes took {publishing:?}");

    // However far the publishing thread got, more events push the stalled subscriber over its
    // limit: it is dropped, and publishing goes on.
    let mut extra = 0u64;
    wait_for("the stalled subscriber to be dropped", || {
        publisher.publish(CscEvent::summary_state(SummaryState::Enabled));
        extra += 1;
        publisher.counters().subscribers_dropped_total == 1
    });
    publisher.publish(CscEvent::summary_state(SummaryState::Offline));
    let counters = publisher.counters();
    assert_eq!(counters.published_total, 100_001 + extra);
    assert_eq!(counters.subscribers_connected, 0);
    assert_eq!(
        counters.dropped_total, counters.heartbeats_dropped_total,
        "a full queue gives up heartbeats before anything else"
    );
    publisher.shutdown();
    let counters = publisher.counters();
    assert_eq!(counters.written_total + counters.dropped_total, 100_001 + extra);
    let text = std::fs::read_to_string(publisher.file_path()).expect("events file");
    let summary_states = text.lines().map(parse).filter(|line| line.get("summaryState").is_some()).count();
    assert_eq!(summary_states as u64, 100 + extra + 1, "no summaryState was dropped");
    let last = text.lines().last().map(parse).expect("lines");
    assert_eq!(last["summaryState"], 4);
}

#[test]
fn a_stalled_subscriber_is_dropped_while_a_reading_one_gets_every_line() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut options =
        EventOptions::new(&directory.path().join("events.sock"), &directory.path().join("events.jsonl"));
    options.subscriber_pending_bytes_max = 16 * 1024;
    let publisher = EventPublisher::start_with(options, Arc::new(ManualClock::new(T0_NS))).expect("start");
    let _stalled = subscribe(&publisher);
    let mut reader = subscribe(&publisher);

    // Rounds of 50 events, each read back before the next: the reader is never more than 50
    // lines behind, the stalled subscriber falls ever further behind.
    let mut expected_seq_num = 0u64;
    for _ in 0..100 {
        for _ in 0..50 {
            publisher.publish(CscEvent::summary_state(SummaryState::Enabled));
        }
        for _ in 0..50 {
            expected_seq_num += 1;
            let line = next_line(&mut reader);
            assert_eq!(line["private_seqNum"], expected_seq_num, "every line, in order");
        }
    }
    let counters = publisher.counters();
    assert_eq!(counters.subscribers_dropped_total, 1, "5000 lines overflow the stalled subscriber");
    assert_eq!(counters.subscribers_connected, 1, "the reader stays connected");
    assert_eq!(counters.dropped_total, 0);
}

#[test]
fn heartbeat_thread_publishes_every_interval_until_stopped() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let publisher = publisher_in(directory.path());
    let mut subscriber = subscribe(&publisher);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let thread = publisher.spawn_heartbeat(Duration::from_millis(50), Arc::clone(&stop)).expect("spawn");
    for expected in 1..=4 {
        let line = next_line(&mut subscriber);
        assert_eq!(line["topic"], "lsst.sal.SummitNode.logevent_heartbeat");
        assert_eq!(line["private_seqNum"], expected);
    }
    assert!(started.elapsed() >= Duration::from_millis(200), "4 beats take 4 intervals");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    thread.join().expect("the heartbeat thread ends");
    let published = publisher.counters().published_total;
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(publisher.counters().published_total, published, "no beat after stop");
}

#[test]
fn publisher_replaces_a_stale_socket_but_refuses_a_live_one_or_a_regular_file() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let socket = directory.path().join("run/events.sock");
    std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
    let file = directory.path().join("events.jsonl");
    drop(UnixListener::bind(&socket).expect("a stale socket file"));

    let publisher = EventPublisher::start(&socket, &file).expect("a stale socket is replaced");
    let error = EventPublisher::start(&socket, &file).expect_err("a live socket is not taken over");
    assert!(matches!(error, EventError::SocketInUse { .. }), "{error}");
    assert!(error.to_string().contains(&socket.display().to_string()), "{error}");
    drop(publisher);

    let regular = directory.path().join("not-a-socket");
    std::fs::write(&regular, "keep me").expect("a regular file");
    let error = EventPublisher::start(&regular, &file).expect_err("a regular file is never removed");
    assert!(matches!(error, EventError::NotASocket { .. }), "{error}");
    assert_eq!(std::fs::read_to_string(&regular).expect("still there"), "keep me");
}

#[test]
fn events_file_is_rotated_past_its_size_limit() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut options =
        EventOptions::new(&directory.path().join("events.sock"), &directory.path().join("events.jsonl"));
    options.file_bytes_max = 2_000;
    let publisher = EventPublisher::start_with(options, Arc::new(ManualClock::new(T0_NS))).expect("start");
    for _ in 0..100 {
        publisher.publish(CscEvent::Heartbeat);
    }
    publisher.shutdown();
    assert_eq!(publisher.counters().written_total, 100);
    let current = std::fs::read_to_string(directory.path().join("events.jsonl")).expect("current file");
    let rotated = std::fs::read_to_string(directory.path().join("events.jsonl.1")).expect("rotated file");
    for text in [&current, &rotated] {
        assert!(text.len() <= 2_000 + 200, "bounded: {} bytes", text.len());
        for line in text.lines() {
            assert_eq!(parse(line)["topic"], "lsst.sal.SummitNode.logevent_heartbeat");
        }
    }
    let last = parse(current.lines().last().expect("a line"));
    assert_eq!(last["private_seqNum"], 100, "the newest lines are in the current file");
}

#[test]
fn events_published_after_shutdown_are_counted_as_dropped() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let publisher = publisher_in(directory.path());
    publisher.shutdown();
    publisher.publish(CscEvent::Heartbeat);
    let counters = publisher.counters();
    assert_eq!(counters.published_total, 0);
    assert_eq!(counters.dropped_total, 1);
}
