//! The metadata channel end to end: the driver interleaves metadata messages with frames in
//! schedule order, and the `hw-sim-header-service`, `hw-sim-auxtel` and `hw-sim-camera` binaries
//! send decodable metadata to a real Unix socket listener (or a file) in the order the Header
//! Service publishes it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::rc::Rc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hw_sim::driver::{play_header_events, play_with_metadata, PlayOptions};
use hw_sim::frame::{decode_frame, frame_length_bytes, FrameHeader, InstrumentCode, FLAG_END_OF_EXPOSURE};
use hw_sim::geometry::{Focalplane, SEGMENT_SIZE_BYTES};
use hw_sim::metadata::{decode_message, MetadataEvent, MetadataKind, MetadataReader};
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule, TimeCompression};
use hw_sim::pixels::SkyParameters;
use hw_sim::transport::{FrameReader, FrameSink};

const START_NS: i64 = 1_700_000_000_000_000_000;

fn temp_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("hw-sim-metadata-{name}-{}-{nanos}", std::process::id()))
}

/// What a play sent, on which channel, in order.
#[derive(Debug, PartialEq)]
enum Sent {
    Frame(FrameHeader),
    Metadata(MetadataEvent),
}

/// A sink appending what it is sent to a log shared with the other channel's sink.
struct Recorder {
    log: Rc<RefCell<Vec<Sent>>>,
    metadata: bool,
}

impl FrameSink for Recorder {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let sent = if self.metadata {
            Sent::Metadata(decode_message(bytes).expect("a valid metadata message"))
        } else {
            Sent::Frame(decode_frame(bytes).expect("a valid frame"))
        };
        self.log.borrow_mut().push(sent);
        Ok(())
    }
}

fn latiss_plan(count: u32) -> NightPlan {
    NightPlan {
        frames_per_segment: 1,
        latiss: Some(LatissPlan { exposure_seconds: 1.0, cadence_seconds: 4.0, count }),
        ..NightPlan::baseline(START_NS, 0, 7)
    }
}

#[test]
fn the_driver_sends_start_integration_before_the_first_frame_and_end_readout_after_the_last() {
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).unwrap();
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(latiss_plan(2), &lsstcam, &latiss).unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut frames = Recorder { log: log.clone(), metadata: false };
    let mut metadata = Recorder { log: log.clone(), metadata: true };
    let options = PlayOptions::new(SkyParameters::default());
    let report =
        play_with_metadata(schedule, &mut frames, Some(&mut metadata), options, &mut |_| {}).unwrap();
    assert_eq!((report.header_events_total, report.metadata_messages_sent_total), (4, 4));
    assert!(report.metadata_bytes_sent_total > 4 * 32);

    let log = log.borrow();
    assert_eq!(log.len(), 2 * (16 + 2));
    for exposure in log.chunks(18) {
        let (Sent::Metadata(start), Sent::Metadata(end)) = (&exposure[0], &exposure[17]) else {
            panic!("an exposure does not start and end with metadata: {exposure:?}");
        };
        assert_eq!((start.kind, end.kind), (MetadataKind::StartIntegration, MetadataKind::EndReadout));
        assert_eq!(start.exposure_id, end.exposure_id);
        assert_eq!(start.instrument, InstrumentCode::Latiss);
        for sent in &exposure[1..17] {
            let Sent::Frame(frame) = sent else { panic!("metadata in the middle of a readout: {sent:?}") };
            assert_eq!(frame.exposure_id.get(), start.exposure_id);
        }
        let Sent::Frame(last) = &exposure[16] else { unreachable!() };
        assert_ne!(last.flags & FLAG_END_OF_EXPOSURE, 0);
    }
}

#[test]
fn play_header_events_sends_only_metadata_and_paces_it() {
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).unwrap();
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(latiss_plan(1), &lsstcam, &latiss).unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut metadata = Recorder { log: log.clone(), metadata: true };
    let mut seen = Vec::new();
    // 1 s open + 2 s readout = 3 s simulated; 0.3 s at factor 10.
    let compression = Some(TimeCompression { factor: 10.0 });
    let report = play_header_events(schedule, &mut metadata, compression, &mut |event, _| {
        seen.push(event.metadata.obsid.clone())
    })
    .unwrap();
    assert!(report.wall_seconds >= 0.29, "played in {} s", report.wall_seconds);
    assert_eq!((report.frames_sent_total, report.metadata_messages_sent_total), (0, 2));
    assert_eq!(report.exposures_completed, 1);
    assert_eq!(seen.len(), 2);
    assert_eq!(log.borrow().len(), 2);
}

/// Accepts one connection on `listener` and reads metadata messages until the sender closes.
fn collect_metadata(listener: UnixListener) -> JoinHandle<Vec<MetadataEvent>> {
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        read_metadata(stream)
    })
}

fn read_metadata(source: impl io::Read) -> Vec<MetadataEvent> {
    let mut reader = MetadataReader::new(source);
    let mut events = Vec::new();
    while let Some(event) = reader.read_message().expect("a valid metadata message") {
        events.push(event);
    }
    events
}

/// Accepts one connection on `listener` and reads (and fully validates) frames until it closes.
fn collect_frames(listener: UnixListener) -> JoinHandle<Vec<FrameHeader>> {
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        read_frames(stream)
    })
}

fn read_frames(source: impl io::Read) -> Vec<FrameHeader> {
    let mut reader = FrameReader::new(source);
    let mut buffer = vec![0u8; frame_length_bytes(SEGMENT_SIZE_BYTES)];
    let mut headers = Vec::new();
    while let Some(header) = reader.read_frame(&mut buffer).unwrap() {
        headers.push(decode_frame(&buffer[..header.frame_length_bytes()]).unwrap());
    }
    headers
}

fn run(binary: &str, args: &[&str]) -> Output {
    let output = Command::new(binary).args(args).output().unwrap();
    assert!(output.status.success(), "{binary} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// Checks what a header service sends: per camera, SEQNUM increasing from 1, each exposure's
/// StartIntegration then its EndReadout, OBSID, DAYOBS and SEQNUM agreeing with the exposure id.
/// Returns the exposure ids per camera code.
fn check_header_service_order(events: &[MetadataEvent]) -> BTreeMap<String, Vec<u64>> {
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut done: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in events {
        let camcode = event.get_str("CAMCODE").unwrap().to_owned();
        let obsid = event.get_str("OBSID").unwrap();
        let dayobs = event.get_str("DAYOBS").unwrap();
        let seqnum = event.get_int("SEQNUM").unwrap();
        assert_eq!(obsid, format!("{camcode}_O_{dayobs}_{seqnum:06}"));
        assert_eq!(event.exposure_id, dayobs.parse::<u64>().unwrap() * 100_000 + seqnum as u64);
        let expected_code = if camcode == "AT" { InstrumentCode::Latiss } else { InstrumentCode::LsstCam };
        assert_eq!(event.instrument, expected_code);
        match event.kind {
            MetadataKind::StartIntegration => {
                assert!(
                    !open.contains_key(&camcode),
                    "{obsid}: StartIntegration before the previous EndReadout"
                );
                let previous = done.get(&camcode).map_or(0, Vec::len) as i64;
                assert_eq!(seqnum, previous + 1, "{obsid}: SEQNUM does not follow");
                open.insert(camcode, event.exposure_id);
            }
            MetadataKind::EndReadout => {
                assert_eq!(
                    open.remove(&camcode),
                    Some(event.exposure_id),
                    "{obsid}: EndReadout without start"
                );
                assert!(event.get_str("DATE-END").is_some());
                done.entry(camcode).or_default().push(event.exposure_id);
            }
        }
    }
    assert!(open.is_empty(), "exposures never ended: {open:?}");
    done
}

#[test]
fn the_header_service_cli_sends_ordered_metadata_to_a_unix_socket() {
    let socket = temp_path("hs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let receiver = collect_metadata(listener);
    let output = run(
        env!("CARGO_BIN_EXE_hw-sim-header-service"),
        &["--to", &unix(&socket), "--exposures", "3", "--compression", "1000"],
    );
    let events = receiver.join().unwrap();
    std::fs::remove_file(&socket).unwrap();
    assert_eq!(events.len(), 12);
    let done = check_header_service_order(&events);
    assert_eq!(done.get("MC").map(Vec::len), Some(3));
    assert_eq!(done.get("AT").map(Vec::len), Some(3));

    let stdout = String::from_utf8_lossy(&output.stdout);
    let first = events[0].get_str("OBSID").unwrap();
    assert!(stdout.contains(&format!("{first} StartIntegration")), "stdout: {stdout}");
    assert!(stdout.contains("done: 12 metadata messages"), "stdout: {stdout}");
}

#[test]
fn the_header_service_cli_writes_latiss_only_metadata_to_a_file() {
    let path = temp_path("hs.metadata");
    run(
        env!("CARGO_BIN_EXE_hw-sim-header-service"),
        &[
            "--to",
            &format!("file:{}", path.display()),
            "--instrument",
            "latiss",
            "--exposures",
            "2",
            "--as-fast-as-possible",
        ],
    );
    let events = read_metadata(std::fs::File::open(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    let done = check_header_service_order(&events);
    assert_eq!(done.keys().collect::<Vec<_>>(), ["AT"]);
    assert_eq!(done["AT"].len(), 2);
}

#[test]
fn the_auxtel_cli_sends_latiss_frames_and_metadata_to_unix_sockets() {
    let frames_socket = temp_path("at-frames.sock");
    let metadata_socket = temp_path("at-meta.sock");
    let frames_receiver = collect_frames(UnixListener::bind(&frames_socket).unwrap());
    let metadata_receiver = collect_metadata(UnixListener::bind(&metadata_socket).unwrap());
    let output = run(
        env!("CARGO_BIN_EXE_hw-sim-auxtel"),
        &[
            "--to",
            &unix(&frames_socket),
            "--metadata-to",
            &unix(&metadata_socket),
            "--exposures",
            "2",
            "--exposure-seconds",
            "5",
            "--cadence-seconds",
            "8",
            "--frames-per-segment",
            "1",
            "--as-fast-as-possible",
        ],
    );
    let frames = frames_receiver.join().unwrap();
    let events = metadata_receiver.join().unwrap();
    std::fs::remove_file(&frames_socket).unwrap();
    std::fs::remove_file(&metadata_socket).unwrap();

    assert_eq!(frames.len(), 32);
    for frame in &frames {
        assert_eq!(frame.instrument_code(), Some(InstrumentCode::Latiss));
        assert_eq!((frame.raft, frame.sensor), (0, 0), "LATISS is R00_S00");
    }
    let done = check_header_service_order(&events);
    let last_frame_ids: Vec<u64> = frames
        .iter()
        .filter(|frame| frame.flags & FLAG_END_OF_EXPOSURE != 0)
        .map(|frame| frame.exposure_id.get())
        .collect();
    assert_eq!(done["AT"], last_frame_ids);
    assert_eq!(events[0].get("EXPTIME"), Some(&hw_sim::metadata::KeywordValue::Float(5.0)));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("done: 32 frames"), "stdout: {stdout}");
    assert!(stdout.contains("4 metadata messages"), "stdout: {stdout}");
}

#[test]
fn the_camera_cli_sends_metadata_matching_its_frames() {
    let replay = temp_path("camera.replay");
    let metadata_socket = temp_path("camera-meta.sock");
    let metadata_receiver = collect_metadata(UnixListener::bind(&metadata_socket).unwrap());
    run(
        env!("CARGO_BIN_EXE_hw-sim-camera"),
        &[
            "--to",
            &format!("file:{}", replay.display()),
            "--metadata-to",
            &unix(&metadata_socket),
            "--visits",
            "2",
            "--frames-per-segment",
            "1",
            "--latiss",
            "--as-fast-as-possible",
        ],
    );
    let events = metadata_receiver.join().unwrap();
    std::fs::remove_file(&metadata_socket).unwrap();
    let frames = read_frames(std::fs::File::open(&replay).unwrap());
    std::fs::remove_file(&replay).unwrap();

    let done = check_header_service_order(&events);
    let started: BTreeSet<u64> = events
        .iter()
        .filter(|event| event.kind == MetadataKind::StartIntegration)
        .map(|event| event.exposure_id)
        .collect();
    let framed: BTreeSet<u64> = frames.iter().map(|frame| frame.exposure_id.get()).collect();
    assert_eq!(started, framed, "every exposure's StartIntegration arrives");
    for (camcode, code) in [("MC", InstrumentCode::LsstCam), ("AT", InstrumentCode::Latiss)] {
        let last_frame_ids: Vec<u64> = frames
            .iter()
            .filter(|frame| frame.instrument_code() == Some(code) && frame.flags & FLAG_END_OF_EXPOSURE != 0)
            .map(|frame| frame.exposure_id.get())
            .collect();
        assert_eq!(done[camcode], last_frame_ids, "{camcode}: EndReadout ids match the last frames");
    }
}

#[test]
fn every_simulator_explains_itself() {
    for binary in [
        env!("CARGO_BIN_EXE_hw-sim-camera"),
        env!("CARGO_BIN_EXE_hw-sim-auxtel"),
        env!("CARGO_BIN_EXE_hw-sim-header-service"),
    ] {
        let output = run(binary, &["--help"]);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("Examples:"), "{binary}: {help}");
        assert!(help.contains("--to <DEST>"), "{binary}: {help}");
        assert!(help.contains("--as-fast-as-possible"), "{binary}: {help}");
    }
    let help = run(env!("CARGO_BIN_EXE_hw-sim-camera"), &["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--metadata-to <DEST>"));
}

#[test]
fn a_bad_metadata_destination_fails_clearly() {
    let replay = temp_path("never.replay");
    let output = Command::new(env!("CARGO_BIN_EXE_hw-sim-auxtel"))
        .args([
            "--to",
            &format!("file:{}", replay.display()),
            "--metadata-to",
            "ftp:x",
            "--as-fast-as-possible",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--metadata-to \"ftp:x\" is not unix:PATH"), "{stderr}");
    assert!(!replay.exists(), "a bad --metadata-to left a replay file behind");
}
