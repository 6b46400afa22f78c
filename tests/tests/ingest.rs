//! The ingest test suite: every scenario runs on both I/O paths (io_uring and portable), through
//! real Unix sockets into real `O_DIRECT` rings in temporary directories.
//!
//! - `bit_identical`: hw-sim's driver plays LATISS; the ring holds every frame byte for byte as
//!   re-encoded from regenerated pixels, the metadata records decode to exactly the events sent,
//!   and no pixel byte was copied in user space.
//! - `fault_*`: each malformed kind hw-sim injects (bad magic, header CRC, payload CRC, truncated,
//!   wrong length, duplicated, out of order, missing segment, disconnect): the right counter
//!   moves, a `Rejected` event names the connection, a header-level fault closes the connection
//!   and a new one then works, nothing bad reaches the ring, the ingest keeps running.
//! - `fallback_parity`: the same seeded input (with random faults) through both paths gives the
//!   same ring records and the same completeness events.
//! - `reconnect_*`: a sender that drops mid-exposure and comes back within the reconnect grace
//!   completes it; one that comes back too late gets `ExposureIncomplete` (disconnect) and its
//!   frames are still written, as late frames.
//! - `full_ring_*`: a small ring nobody drains, under the `reject` and the `block` policy.
//! - `two_streams_*`: a stalled LSSTCam stream does not stall LATISS.
//! - `metadata_survives_sigkill_*`: an ingest in a child process (`ingest-child`) is killed with
//!   SIGKILL; the ring reopens with every durable metadata record intact.
//!
//! Everything is seeded: the night plan, the sky and the fault plans derive from one seed per test,
//! printed when a test fails; `INGEST_TEST_SEED=N` reruns with seed N. Waits are on events or
//! counters with a 30 s deadline, never on elapsed time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dma_ingest::completeness::{CompletenessEvent, IncompleteExposure, IncompleteReason, TrackerOptions};
use dma_ingest::metadata_channel::decode_record;
use dma_ingest::{
    Backend, BackendChoice, Endpoint, IngestCounters, IngestEvent, IngestHandle, IngestOptions, RejectKind,
};
use hw_sim::driver::{
    instrument_code, play_with_metadata, raft_wire_code, segment_wire_code, sensor_wire_code, PlayOptions,
};
use hw_sim::faults::{Emit, FaultInjector, FaultKind, FaultPlan};
use hw_sim::frame::{
    decode_frame, encode_frame, frame_length_bytes, FrameFields, FLAG_END_OF_EXPOSURE, FLAG_END_OF_SEGMENT,
};
use hw_sim::geometry::{Detector, Focalplane, Instrument, SEGMENT_COLUMNS, SEGMENT_ROWS};
use hw_sim::header_service::HeaderEvent;
use hw_sim::metadata::{encode_message, MetadataEvent};
use hw_sim::night::{Event, LatissPlan, NightPlan, NightSchedule};
use hw_sim::pixels::{Scene, SegmentGenerator, SkyParameters};
use hw_sim::transport::{FrameSink, UnixFrameSender};
use ringbuffer::{CreateOptions, FullPolicy, Reader, RecordKind, Ring, RingOptions, SystemClock};

/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// First shutter open of every simulated night (2025-04-16T00:00:00Z).
const START_NS: i64 = 1_744_761_600_000_000_000;
/// Stream ids stamped on ring records.
const LSSTCAM_STREAM_ID: u32 = 1;
const LATISS_STREAM_ID: u32 = 2;

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// The test's seed: `INGEST_TEST_SEED` if set, else `default`. The guard prints it on failure.
fn seed(test: &'static str, default: u64) -> (u64, SeedGuard) {
    let seed = std::env::var("INGEST_TEST_SEED").ok().and_then(|text| text.parse().ok()).unwrap_or(default);
    (seed, SeedGuard { test, seed })
}

struct SeedGuard {
    test: &'static str,
    seed: u64,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {} (rerun with INGEST_TEST_SEED={})",
                self.test, self.seed, self.seed
            );
        }
    }
}

fn sky(seed: u64) -> SkyParameters {
    SkyParameters { seed: seed ^ 0x5EED_0F5C_1E55, ..SkyParameters::default() }
}

// ---------------------------------------------------------------------------------------------
// The expected stream: what hw-sim sends, regenerated independently of the driver
// ---------------------------------------------------------------------------------------------

/// `(exposure_id, raft, sensor, segment, first_row)`: a frame's identity on the wire.
type FrameKey = (u64, u8, u8, u8, u16);

/// One frame of a schedule, enough to regenerate its pixels and re-encode it.
#[derive(Debug, Clone, Copy)]
struct FrameSpec {
    instrument: Instrument,
    exposure_id: u64,
    detector: Detector,
    segment: usize,
    first_row: u32,
    row_count: u32,
    flags: u8,
    frame_sequence: u64,
    readout_ns: u64,
    scene: Scene,
}

impl FrameSpec {
    fn fields(&self) -> FrameFields {
        FrameFields {
            instrument: instrument_code(self.instrument),
            flags: self.flags,
            raft: raft_wire_code(self.detector.raft()),
            sensor: sensor_wire_code(self.detector.sensor()),
            segment: segment_wire_code(&self.detector.segment(self.segment)),
            segment_columns: SEGMENT_COLUMNS as u16,
            segment_rows: SEGMENT_ROWS as u16,
            first_row: self.first_row as u16,
            row_count: self.row_count as u16,
            exposure_id: self.exposure_id,
            frame_sequence: self.frame_sequence,
            readout_ns: self.readout_ns,
        }
    }

    fn key(&self) -> FrameKey {
        let fields = self.fields();
        (fields.exposure_id, fields.raft, fields.sensor, fields.segment, fields.first_row)
    }

    /// The whole frame (header block, pixels, padding) from regenerated pixels.
    fn encode(&self, sky: SkyParameters) -> Vec<u8> {
        let generator = SegmentGenerator::for_detector_in_scene(
            sky,
            self.scene,
            self.exposure_id,
            &self.detector,
            self.segment,
        );
        let mut pixels = vec![0; self.row_count as usize * SEGMENT_COLUMNS as usize * 4];
        generator.generate_rows(self.first_row, self.row_count, &mut pixels);
        let mut frame = vec![0; frame_length_bytes(pixels.len())];
        encode_frame(&self.fields(), &pixels, &mut frame);
        frame
    }

    /// `R00_S00 Segment10`, as completeness events print a segment.
    fn segment_name(&self) -> String {
        format!("{} {}", self.detector, self.detector.segment(self.segment).extname())
    }
}

enum Item {
    Header(HeaderEvent),
    Frame(FrameSpec),
}

/// A night's events in order, with frame counters as hw-sim's driver assigns them.
struct Stream {
    items: Vec<Item>,
    sky: SkyParameters,
}

impl Stream {
    fn new(plan: NightPlan, lsstcam_rafts: &[&str], sky: SkyParameters) -> Stream {
        let lsstcam = Focalplane::lsstcam_subset(lsstcam_rafts).expect("rafts");
        let latiss = Focalplane::latiss();
        let schedule = NightSchedule::new(plan, &lsstcam, &latiss).expect("valid plan");
        let mut items = Vec::new();
        let mut frame_sequence = 0;
        for timed in schedule {
            match timed.event {
                Event::Header(header) => items.push(Item::Header(*header)),
                Event::Frame {
                    exposure_id,
                    detector,
                    segment,
                    first_row,
                    row_count,
                    end_of_segment,
                    end_of_exposure,
                    scene,
                } => {
                    frame_sequence += 1;
                    let focalplane = if timed.instrument == Instrument::LsstCam { &lsstcam } else { &latiss };
                    let mut flags = 0;
                    if end_of_segment {
                        flags |= FLAG_END_OF_SEGMENT;
                    }
                    if end_of_exposure {
                        flags |= FLAG_END_OF_EXPOSURE;
                    }
                    items.push(Item::Frame(FrameSpec {
                        instrument: timed.instrument,
                        exposure_id,
                        detector: focalplane.detectors()[detector],
                        segment,
                        first_row,
                        row_count,
                        flags,
                        frame_sequence,
                        readout_ns: timed.sim_time_ns.max(0) as u64,
                        scene,
                    }));
                }
            }
        }
        Stream { items, sky }
    }

    /// `count` LATISS exposures, each segment in `frames_per_segment` frames.
    fn latiss(count: u32, frames_per_segment: u32, seed: u64) -> Stream {
        Stream::new(latiss_plan(count, frames_per_segment, seed), &["R22"], sky(seed))
    }

    fn frames(&self) -> Vec<FrameSpec> {
        self.items
            .iter()
            .filter_map(|item| match item {
                Item::Frame(spec) => Some(*spec),
                Item::Header(_) => None,
            })
            .collect()
    }

    fn headers(&self) -> Vec<&HeaderEvent> {
        self.items
            .iter()
            .filter_map(|item| match item {
                Item::Header(header) => Some(header),
                Item::Frame(_) => None,
            })
            .collect()
    }

    fn exposures(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.frames().iter().map(|spec| spec.exposure_id).collect();
        ids.dedup();
        ids
    }

    fn by_key(&self) -> HashMap<FrameKey, FrameSpec> {
        self.frames().into_iter().map(|spec| (spec.key(), spec)).collect()
    }
}

fn latiss_plan(count: u32, frames_per_segment: u32, seed: u64) -> NightPlan {
    NightPlan {
        frames_per_segment,
        latiss: Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count }),
        ..NightPlan::baseline(START_NS, 0, seed)
    }
}

fn lsstcam_plan(visits: u32, frames_per_segment: u32, seed: u64) -> NightPlan {
    NightPlan { frames_per_segment, ..NightPlan::baseline(START_NS, visits, seed) }
}

// ---------------------------------------------------------------------------------------------
// Running an ingest
// ---------------------------------------------------------------------------------------------

struct Setup {
    focalplane: Focalplane,
    stream_id: u32,
    capacity_bytes: u64,
    full_policy: FullPolicy,
    buffer_count: usize,
    tracker: TrackerOptions,
    metadata: bool,
}

impl Setup {
    fn latiss() -> Setup {
        Setup {
            focalplane: Focalplane::latiss(),
            stream_id: LATISS_STREAM_ID,
            capacity_bytes: 256 << 20,
            full_policy: FullPolicy::Block,
            buffer_count: 8,
            tracker: TrackerOptions::default(),
            metadata: false,
        }
    }
}

/// One running ingest, its directory, and every event it has announced so far.
struct Harness {
    dir: tempfile::TempDir,
    ingest: Option<IngestHandle>,
    events: Vec<IngestEvent>,
    /// A reader of the `drain` cursor opened before the ingest started (the ring then belongs to
    /// the ingest thread).
    drain: Option<Reader>,
}

impl Harness {
    fn start(choice: BackendChoice, setup: Setup) -> Harness {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut create = CreateOptions::new(setup.capacity_bytes, setup.stream_id);
        create.max_payload_bytes = 5 << 20;
        let options = RingOptions { full_policy: setup.full_policy, ..RingOptions::default() };
        let ring = Ring::create(&dir.path().join("ring"), &create, options).expect("ring");
        let drain = ring.reader("drain").expect("drain reader");
        let mut options =
            IngestOptions::new(if setup.stream_id == LSSTCAM_STREAM_ID { "lsstcam" } else { "latiss" });
        options.backend = choice;
        options.buffer_count = setup.buffer_count;
        options.tracker = setup.tracker;
        let metadata = Endpoint::Unix(dir.path().join("metadata.sock"));
        let ingest = IngestHandle::start(
            ring,
            setup.focalplane,
            &Endpoint::Unix(dir.path().join("frames.sock")),
            setup.metadata.then_some(&metadata),
            options,
            Arc::new(SystemClock),
        )
        .expect("ingest starts");
        let expected = match choice {
            BackendChoice::IoUring => Backend::IoUring,
            BackendChoice::Portable => Backend::Portable,
            BackendChoice::Auto => ingest.backend(),
        };
        assert_eq!(ingest.backend(), expected, "the ingest runs the path asked for");
        Harness { dir, ingest: Some(ingest), events: Vec::new(), drain: Some(drain) }
    }

    fn ingest(&self) -> &IngestHandle {
        self.ingest.as_ref().expect("running")
    }

    fn counters(&self) -> &IngestCounters {
        &self.ingest().observer().counters
    }

    fn count(&self, counter: impl Fn(&IngestCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        counter(self.counters()).load(Ordering::Relaxed)
    }

    fn frames_socket(&self) -> PathBuf {
        self.dir.path().join("frames.sock")
    }

    fn connect(&self) -> UnixFrameSender {
        UnixFrameSender::connect(self.frames_socket()).expect("connect to the frame socket")
    }

    fn connect_metadata(&self) -> UnixFrameSender {
        UnixFrameSender::connect(self.dir.path().join("metadata.sock"))
            .expect("connect to the metadata socket")
    }

    /// Collects events until `done(events so far)` holds; fails after [`DEADLINE`].
    fn wait_events(&mut self, what: &str, done: impl Fn(&[IngestEvent]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.collect();
            if done(&self.events) {
                return;
            }
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {what}; events so far: {}", summary(&self.events));
            let ingest = self.ingest.as_ref().expect("running");
            match ingest.events().recv_timeout((deadline - now).min(Duration::from_millis(100))) {
                Ok(event) => self.events.push(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("the ingest stopped while waiting for {what}"),
            }
        }
    }

    /// Waits until `done(counters)` holds; fails after [`DEADLINE`].
    fn wait_counters(&mut self, what: &str, done: impl Fn(&IngestCounters) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self.counters()) {
            self.collect();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; counters: {}; events: {}",
                counters_summary(self.counters()),
                summary(&self.events)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.collect();
    }

    fn collect(&mut self) {
        if let Some(ingest) = &self.ingest {
            self.events.extend(ingest.events().try_iter());
        }
    }

    /// Stops the ingest (everything received made durable) and returns the ring.
    fn shutdown(&mut self) -> Ring {
        let ingest = self.ingest.take().expect("running");
        assert!(!ingest.is_finished(), "the ingest thread ended by itself (crashed?)");
        self.events.extend(ingest.events().try_iter());
        let ring = ingest.shutdown().expect("clean shutdown");
        assert!(ring.poisoned().is_none(), "ring poisoned: {:?}", ring.poisoned());
        ring
    }
}

fn summary(events: &[IngestEvent]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut notable = Vec::new();
    for event in events {
        let name = match event {
            IngestEvent::Completeness(CompletenessEvent::SegmentDurable { .. }) => "segment durable".into(),
            IngestEvent::Completeness(CompletenessEvent::DetectorComplete { .. }) => {
                "detector complete".into()
            }
            IngestEvent::MetadataDurable { .. } => "metadata durable".into(),
            other => {
                notable.push(format!("{other:?}"));
                continue;
            }
        };
        *counts.entry(name).or_default() += 1;
    }
    format!("{counts:?} {notable:#?}")
}

fn counters_summary(counters: &IngestCounters) -> String {
    let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let rejected: Vec<String> = RejectKind::ALL
        .iter()
        .filter(|kind| counters.rejected(**kind) > 0)
        .map(|kind| format!("{}={}", kind.as_str(), counters.rejected(*kind)))
        .collect();
    format!(
        "received {} durable {} out_of_order {} late {} connections {} closed_bad {} full_waits {} \
         metadata {} rejected [{}]",
        get(&counters.frames_received_total),
        get(&counters.frames_durable_total),
        get(&counters.frames_out_of_order_total),
        get(&counters.frames_late_total),
        get(&counters.connections_total),
        get(&counters.connections_closed_bad_total),
        get(&counters.ring_full_waits_total),
        get(&counters.metadata_durable_total),
        rejected.join(" ")
    )
}

fn completed(events: &[IngestEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            IngestEvent::Completeness(CompletenessEvent::ExposureComplete { exposure_id, .. }) => {
                Some(*exposure_id)
            }
            _ => None,
        })
        .collect()
}

fn incomplete(events: &[IngestEvent]) -> Vec<&IncompleteExposure> {
    events
        .iter()
        .filter_map(|event| match event {
            IngestEvent::Completeness(CompletenessEvent::ExposureIncomplete(incomplete)) => Some(incomplete),
            _ => None,
        })
        .collect()
}

fn rejections(events: &[IngestEvent]) -> Vec<(RejectKind, String)> {
    events
        .iter()
        .filter_map(|event| match event {
            IngestEvent::Rejected { kind, connection, .. } => Some((*kind, connection.clone())),
            _ => None,
        })
        .collect()
}

fn metadata_durable(events: &[IngestEvent]) -> usize {
    events.iter().filter(|event| matches!(event, IngestEvent::MetadataDurable { .. })).count()
}

fn exposure_closed(events: &[IngestEvent], exposure_id: u64) -> bool {
    completed(events).contains(&exposure_id)
        || incomplete(events).iter().any(|incomplete| incomplete.exposure_id == exposure_id)
}

/// Fails if any event says the ring failed.
fn assert_no_failure(events: &[IngestEvent]) {
    for event in events {
        assert!(!matches!(event, IngestEvent::Failed { .. }), "ingest failed: {event:?}");
    }
}

fn assert_rejected_exactly(counters: &IngestCounters, expected: &[(RejectKind, u64)]) {
    for kind in RejectKind::ALL {
        let want = expected.iter().find(|(known, _)| *known == kind).map_or(0, |(_, count)| *count);
        assert_eq!(
            counters.rejected(kind),
            want,
            "rejected {}: {}",
            kind.as_str(),
            counters_summary(counters)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sending and reading back
// ---------------------------------------------------------------------------------------------

fn send_frames(sender: &mut UnixFrameSender, frames: &[FrameSpec], sky: SkyParameters) {
    for spec in frames {
        sender.send(&spec.encode(sky)).expect("send a frame");
    }
}

fn send_metadata(sender: &mut UnixFrameSender, header: &HeaderEvent) {
    let message = encode_message(&header.to_metadata_event()).expect("encodable event");
    sender.send(&message).expect("send a metadata message");
}

/// Checks one ring frame record: it decodes (header and pixel CRC), it is a frame the stream
/// sent, and its bytes are exactly that frame re-encoded from regenerated pixels. Returns its key.
fn check_frame(payload: &[u8], expected: &HashMap<FrameKey, FrameSpec>, sky: SkyParameters) -> FrameKey {
    let header = decode_frame(payload).unwrap_or_else(|error| panic!("invalid frame in the ring: {error}"));
    let key = (header.exposure_id.get(), header.raft, header.sensor, header.segment, header.first_row.get());
    let spec = expected.get(&key).unwrap_or_else(|| panic!("the ring holds a frame never sent: {key:?}"));
    let regenerated = spec.encode(sky);
    assert_eq!(payload.len(), regenerated.len(), "frame {key:?}: length");
    assert!(payload == regenerated.as_slice(), "frame {key:?}: ring bytes differ from the regenerated frame");
    key
}

/// What a ring holds, checked record by record.
#[derive(Debug, Default)]
struct RingContents {
    /// Frames in ring order.
    frames: Vec<FrameKey>,
    /// Metadata events in ring order.
    metadata: Vec<MetadataEvent>,
    /// Ring sequence numbers of the metadata records.
    metadata_sequences: Vec<u64>,
}

fn read_ring(
    reader: &mut Reader,
    expected: &HashMap<FrameKey, FrameSpec>,
    sky: SkyParameters,
) -> RingContents {
    let mut contents = RingContents::default();
    while let Some(record) = reader.next_record().expect("read the ring") {
        match record.info.kind {
            RecordKind::Frame => contents.frames.push(check_frame(record.payload, expected, sky)),
            RecordKind::Metadata => {
                let (event, _received_ns) = decode_record(record.payload).expect("valid metadata record");
                contents.metadata.push(event);
                contents.metadata_sequences.push(record.info.sequence);
            }
            other => panic!("unexpected record kind {other:?}"),
        }
    }
    contents
}

fn assert_no_duplicates(keys: &[FrameKey]) {
    let mut seen = HashSet::new();
    for key in keys {
        assert!(seen.insert(*key), "frame {key:?} is twice in the ring");
    }
}

/// A thread that drains `reader` as the archiver would: checks every record, commits its cursor
/// after each one (freeing the space), until `frames` frames were read.
fn spawn_drain(
    mut reader: Reader,
    frames: usize,
    expected: HashMap<FrameKey, FrameSpec>,
    sky: SkyParameters,
) -> JoinHandle<Vec<FrameKey>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        let mut keys = Vec::new();
        while keys.len() < frames {
            assert!(Instant::now() < deadline, "drain: only {} of {frames} frames arrived", keys.len());
            match reader.next_record().expect("drain read") {
                Some(record) => {
                    assert_eq!(record.info.kind, RecordKind::Frame, "drain: only frames were sent");
                    keys.push(check_frame(record.payload, &expected, sky));
                }
                None => {
                    reader.wait_for_data(Duration::from_millis(100));
                    continue;
                }
            }
            reader.commit().expect("drain commit");
        }
        keys
    })
}

macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[test]
                fn io_uring() {
                    super::$scenario(dma_ingest::BackendChoice::IoUring);
                }

                #[test]
                fn portable() {
                    super::$scenario(dma_ingest::BackendChoice::Portable);
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// 1. Bit-identical frames, metadata, zero copy
// ---------------------------------------------------------------------------------------------

fn bit_identical(choice: BackendChoice) {
    let (seed, _guard) = seed("bit_identical", 7);
    let stream = Stream::latiss(2, 4, seed);
    let mut harness = Harness::start(choice, Setup { metadata: true, ..Setup::latiss() });

    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(latiss_plan(2, 4, seed), &lsstcam, &latiss).expect("schedule");
    let mut frames = harness.connect();
    let mut metadata = harness.connect_metadata();
    let report = play_with_metadata(
        schedule,
        &mut frames,
        Some(&mut metadata),
        PlayOptions::new(stream.sky),
        &mut |_| {},
    )
    .expect("play");
    drop(frames);
    drop(metadata);
    let sent = stream.frames().len() as u64;
    assert_eq!(report.frames_sent_total, sent, "the driver sent the regenerated schedule's frames");
    assert_eq!(report.metadata_messages_sent_total, 4);

    harness.wait_events("2 exposures complete and 4 metadata records durable", |events| {
        completed(events).len() == 2 && metadata_durable(events) == 4
    });
    assert_eq!(completed(&harness.events), stream.exposures());
    let durable = harness.count(|c| &c.frames_durable_total);
    assert_eq!(durable, sent);
    assert_eq!(harness.count(|c| &c.frames_written_in_place_total), durable, "every durable frame in place");
    assert_eq!(harness.count(|c| &c.frame_payload_bytes_copied_total), 0, "no pixel byte copied");
    assert_rejected_exactly(harness.counters(), &[]);

    let ring = harness.shutdown();
    assert_no_failure(&harness.events);
    let mut reader = harness.drain.take().expect("drain reader");
    let contents = read_ring(&mut reader, &stream.by_key(), stream.sky);
    drop(ring);
    let expected_keys: Vec<FrameKey> = stream.frames().iter().map(FrameSpec::key).collect();
    assert_eq!(contents.frames, expected_keys, "every frame, once, in the order sent");
    let expected_metadata: Vec<MetadataEvent> =
        stream.headers().iter().map(|header| header.to_metadata_event()).collect();
    assert_eq!(contents.metadata, expected_metadata, "metadata records decode to the events sent");
}

both_backends!(bit_identical);

// ---------------------------------------------------------------------------------------------
// 2. Malformed input
// ---------------------------------------------------------------------------------------------

/// One LATISS exposure in 32 frames (two per segment); frame 5 (index 4) gets the fault.
/// For [`FaultKind::WrongLength`], `longer` picks the direction (the first fault seed from the
/// test's seed on that gives it).
fn fault_scenario(choice: BackendChoice, kind: FaultKind, longer: bool) {
    let (seed, _guard) = seed("fault scenario", 11 + kind as u64);
    let stream = Stream::latiss(1, 2, seed);
    let frames = stream.frames();
    let sky = stream.sky;
    let at = 4;
    let good_length = frame_length_bytes(frames[at].row_count as usize * SEGMENT_COLUMNS as usize * 4);
    let mut fault_seed = seed;
    if kind == FaultKind::WrongLength {
        loop {
            let mut injector =
                FaultInjector::new(FaultPlan::new(fault_seed).at(frames[at].frame_sequence, kind));
            let emits: Vec<Emit> =
                frames[..=at].iter().map(|spec| injector.apply(spec.encode(sky))).collect();
            match emits.last() {
                Some(Emit::One(bytes)) if (bytes.len() > good_length) == longer => break,
                _ => fault_seed += 1,
            }
        }
    }
    let mut tracker = TrackerOptions { reconnect_grace_ns: 30_000_000_000, ..TrackerOptions::default() };
    if kind == FaultKind::MissingSegment {
        tracker.incomplete_timeout_ns = 3_000_000_000;
    }
    let mut harness = Harness::start(choice, Setup { tracker, ..Setup::latiss() });
    let mut injector = FaultInjector::new(FaultPlan::new(fault_seed).at(frames[at].frame_sequence, kind));
    let mut sender = harness.connect();
    for spec in &frames[..at] {
        for bytes in injector.apply(spec.encode(sky)).into_frames() {
            sender.send(&bytes).expect("send");
        }
    }
    let faulted = injector.apply(frames[at].encode(sky));
    let closed_bad_before = harness.count(|c| &c.connections_closed_bad_total);
    assert_eq!(closed_bad_before, 0);

    // What the ingest must do: rejections by kind, whether it closes the connection, and which
    // frames a new connection (or the same one) must then send to complete the exposure.
    let expected_rejections: Vec<(RejectKind, u64)>;
    let mut closes = false;
    let mut exposure_completes = true;
    let mut expected_in_ring: Vec<FrameKey> = frames.iter().map(FrameSpec::key).collect();
    match (kind, faulted) {
        (FaultKind::BadMagic | FaultKind::BadHeaderCrc, Emit::One(bytes)) => {
            // The ingest may close before reading all of it: the send may fail.
            let _ = sender.send(&bytes);
            let reject =
                if kind == FaultKind::BadMagic { RejectKind::BadMagic } else { RejectKind::HeaderCrc };
            expected_rejections = vec![(reject, 1)];
            closes = true;
            reconnect_and_send(&mut harness, sender, closes, &frames[at..], sky);
        }
        (FaultKind::TruncatedFrame, Emit::One(bytes)) => {
            assert!(bytes.len() < good_length, "a strict prefix");
            sender.send(&bytes).expect("send the prefix");
            expected_rejections = vec![(RejectKind::Truncated, 1)];
            closes = true;
            // Closing the connection ends the stream inside the frame.
            reconnect_and_send(&mut harness, sender, closes, &frames[at..], sky);
        }
        (FaultKind::WrongLength, Emit::One(bytes)) if bytes.len() > good_length => {
            // The frame itself is intact; the 4096 bytes after it are read as the next header.
            let _ = sender.send(&bytes);
            expected_rejections = vec![(RejectKind::BadMagic, 1)];
            closes = true;
            reconnect_and_send(&mut harness, sender, closes, &frames[at + 1..], sky);
        }
        (FaultKind::WrongLength, Emit::One(bytes)) => {
            // 4096 bytes short: the next frame's header block completes it (pixel CRC fails),
            // then the next frame's pixels are read as a header.
            assert_eq!(bytes.len() + 4096, good_length);
            let _ = sender.send(&bytes);
            let _ = sender.send(&frames[at + 1].encode(sky));
            expected_rejections = vec![(RejectKind::PayloadCrc, 1), (RejectKind::BadMagic, 1)];
            closes = true;
            reconnect_and_send(&mut harness, sender, closes, &frames[at..], sky);
        }
        (FaultKind::BadPayloadCrc, Emit::One(bytes)) => {
            // Only this frame is refused; the stream stays in step; a resend completes it.
            sender.send(&bytes).expect("send");
            send_frames(&mut sender, &frames[at + 1..], sky);
            send_frames(&mut sender, &frames[at..=at], sky);
            expected_rejections = vec![(RejectKind::PayloadCrc, 1)];
            let resent = expected_in_ring.remove(at);
            expected_in_ring.push(resent);
        }
        (FaultKind::DuplicatedFrame, Emit::Two(first, second)) => {
            assert!(first == second);
            sender.send(&first).expect("send");
            sender.send(&second).expect("send");
            send_frames(&mut sender, &frames[at + 1..], sky);
            expected_rejections = vec![(RejectKind::Duplicate, 1)];
        }
        (FaultKind::OutOfOrderFrame, Emit::Nothing) => {
            let Emit::Two(later, held) = injector.apply(frames[at + 1].encode(sky)) else {
                panic!("the held frame comes out after the next one")
            };
            sender.send(&later).expect("send");
            sender.send(&held).expect("send");
            send_frames(&mut sender, &frames[at + 2..], sky);
            expected_rejections = vec![];
            expected_in_ring.swap(at, at + 1);
        }
        (FaultKind::MissingSegment, Emit::Nothing) => {
            for spec in &frames[at + 1..] {
                for bytes in injector.apply(spec.encode(sky)).into_frames() {
                    sender.send(&bytes).expect("send");
                }
            }
            expected_rejections = vec![];
            exposure_completes = false;
            expected_in_ring.retain(|key| {
                let missing = frames[at].key();
                (key.0, key.1, key.2, key.3) != (missing.0, missing.1, missing.2, missing.3)
            });
            assert_eq!(expected_in_ring.len(), frames.len() - 2);
        }
        (FaultKind::DisconnectMidExposure, Emit::Disconnect) => {
            // A clean close at a frame boundary: not a bad connection; the sender comes back.
            expected_rejections = vec![];
            reconnect_and_send(&mut harness, sender, closes, &frames[at..], sky);
        }
        (kind, emit) => panic!("unexpected injector output for {kind:?}: {emit:?}"),
    }
    assert_eq!(injector.counts().get(kind), 1, "hw-sim injected one {kind:?}");

    let exposure_id = frames[0].exposure_id;
    harness.wait_events("the exposure to close", |events| exposure_closed(events, exposure_id));
    if exposure_completes {
        assert_eq!(completed(&harness.events), vec![exposure_id], "{}", summary(&harness.events));
    } else {
        let incomplete = incomplete(&harness.events);
        assert_eq!(incomplete.len(), 1, "{}", summary(&harness.events));
        assert_eq!(incomplete[0].reason, IncompleteReason::Timeout);
        assert_eq!(incomplete[0].missing_count, 1);
        let missing: Vec<String> = incomplete[0].missing.iter().map(ToString::to_string).collect();
        assert_eq!(missing, vec![frames[at].segment_name()]);
        assert_eq!(incomplete[0].pending_frames, 0);
    }
    let counters = harness.counters();
    assert_rejected_exactly(counters, &expected_rejections);
    let closed_bad = counters.connections_closed_bad_total.load(Ordering::Relaxed);
    assert_eq!(closed_bad, u64::from(closes), "connections closed as bad");
    let out_of_order = counters.frames_out_of_order_total.load(Ordering::Relaxed);
    // The reordered frame, or the good copy of a frame refused for its pixel CRC, resent last.
    let reordered = matches!(kind, FaultKind::OutOfOrderFrame | FaultKind::BadPayloadCrc);
    assert_eq!(out_of_order, u64::from(reordered), "frames out of order (a refused duplicate is not)");
    let durable = counters.frames_durable_total.load(Ordering::Relaxed);
    assert_eq!(durable, expected_in_ring.len() as u64);
    assert_eq!(counters.frames_late_total.load(Ordering::Relaxed), 0);
    let total_rejected: u64 = expected_rejections.iter().map(|(_, count)| count).sum();
    let rejected_events = rejections(&harness.events);
    assert_eq!(rejected_events.len() as u64, total_rejected, "one Rejected event per rejection");
    for (kind, connection) in &rejected_events {
        assert_eq!(connection, "unix#1", "the {} rejection names the first connection", kind.as_str());
    }

    let ring = harness.shutdown();
    assert_no_failure(&harness.events);
    let mut reader = harness.drain.take().expect("drain reader");
    let contents = read_ring(&mut reader, &stream.by_key(), sky);
    drop(ring);
    assert_no_duplicates(&contents.frames);
    assert_eq!(contents.frames, expected_in_ring, "the ring holds exactly the good frames");
}

/// Closes `sender` (the old connection), waits until the ingest has closed it as bad if it must,
/// then sends `frames` on a new connection.
fn reconnect_and_send(
    harness: &mut Harness,
    sender: UnixFrameSender,
    bad: bool,
    frames: &[FrameSpec],
    sky: SkyParameters,
) {
    drop(sender);
    if bad {
        harness.wait_counters("the ingest to close the bad connection", |counters| {
            counters.connections_closed_bad_total.load(Ordering::Relaxed) > 0
        });
    }
    let mut sender = harness.connect();
    send_frames(&mut sender, frames, sky);
}

fn fault_bad_magic(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::BadMagic, false);
}
fn fault_bad_header_crc(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::BadHeaderCrc, false);
}
fn fault_bad_payload_crc(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::BadPayloadCrc, false);
}
fn fault_truncated(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::TruncatedFrame, false);
}
fn fault_wrong_length_longer(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::WrongLength, true);
}
fn fault_wrong_length_shorter(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::WrongLength, false);
}
fn fault_duplicated(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::DuplicatedFrame, false);
}
fn fault_out_of_order(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::OutOfOrderFrame, false);
}
fn fault_missing_segment(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::MissingSegment, false);
}
fn fault_disconnect(choice: BackendChoice) {
    fault_scenario(choice, FaultKind::DisconnectMidExposure, false);
}

both_backends!(
    fault_bad_magic,
    fault_bad_header_crc,
    fault_bad_payload_crc,
    fault_truncated,
    fault_wrong_length_longer,
    fault_wrong_length_shorter,
    fault_duplicated,
    fault_out_of_order,
    fault_missing_segment,
    fault_disconnect,
);

// ---------------------------------------------------------------------------------------------
// 3. Fallback parity
// ---------------------------------------------------------------------------------------------

/// What one run of the parity input produced.
struct ParityRun {
    ring: Ring,
    drain: Reader,
    completeness: Vec<CompletenessEvent>,
    rejected: Vec<IngestEvent>,
    metadata: Vec<IngestEvent>,
    counters: Vec<(String, u64)>,
}

/// Two LATISS exposures in 64 frames each, with seeded random payload-CRC, duplicate and
/// out-of-order faults and one missing segment, plus their metadata. Each exposure is sent as a
/// phase (StartIntegration durable, frames, exposure closed, EndReadout durable) so that the
/// order of records in the ring does not depend on thread timing.
fn parity_run(choice: BackendChoice, seed: u64) -> ParityRun {
    let stream = Stream::latiss(2, 4, seed);
    let sky = stream.sky;
    let tracker = TrackerOptions { incomplete_timeout_ns: 3_000_000_000, ..TrackerOptions::default() };
    let mut harness = Harness::start(choice, Setup { tracker, metadata: true, ..Setup::latiss() });
    let frames = stream.frames();
    let per_exposure = frames.len() / 2;
    // Segment 3 of the second exposure never comes.
    let plan = FaultPlan::new(seed)
        .with_rate(FaultKind::BadPayloadCrc, 0.04)
        .with_rate(FaultKind::DuplicatedFrame, 0.04)
        .with_rate(FaultKind::OutOfOrderFrame, 0.04)
        .at(frames[per_exposure + 3].frame_sequence, FaultKind::MissingSegment);
    let mut injector = FaultInjector::new(plan);
    let mut sender = harness.connect();
    let mut metadata = harness.connect_metadata();
    let headers = stream.headers();
    for (index, exposure_id) in stream.exposures().into_iter().enumerate() {
        send_metadata(&mut metadata, headers[2 * index]);
        harness.wait_events("StartIntegration durable", |events| metadata_durable(events) == 2 * index + 1);
        for spec in &frames[index * per_exposure..(index + 1) * per_exposure] {
            for bytes in injector.apply(spec.encode(sky)).into_frames() {
                sender.send(&bytes).expect("send");
            }
        }
        if let Some(held) = injector.finish() {
            sender.send(&held).expect("send");
        }
        harness.wait_events("the exposure to close", |events| exposure_closed(events, exposure_id));
        send_metadata(&mut metadata, headers[2 * index + 1]);
        harness.wait_events("EndReadout durable", |events| metadata_durable(events) == 2 * index + 2);
    }
    let counts = injector.counts();
    assert!(counts.total() >= 3, "the seed injects a few faults: {counts:?}");
    let c = harness.counters();
    let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let mut counters = vec![
        ("frames_received".to_owned(), get(&c.frames_received_total)),
        ("frames_durable".to_owned(), get(&c.frames_durable_total)),
        ("frames_in_place".to_owned(), get(&c.frames_written_in_place_total)),
        ("payload_copied".to_owned(), get(&c.frame_payload_bytes_copied_total)),
        ("out_of_order".to_owned(), get(&c.frames_out_of_order_total)),
        ("late".to_owned(), get(&c.frames_late_total)),
        ("metadata_durable".to_owned(), get(&c.metadata_durable_total)),
        ("closed_bad".to_owned(), get(&c.connections_closed_bad_total)),
    ];
    counters.extend(RejectKind::ALL.iter().map(|kind| (kind.as_str().to_owned(), c.rejected(*kind))));
    drop(sender);
    drop(metadata);
    let ring = harness.shutdown();
    assert_no_failure(&harness.events);
    let mut completeness = Vec::new();
    let mut rejected = Vec::new();
    let mut metadata = Vec::new();
    for event in std::mem::take(&mut harness.events) {
        match event {
            IngestEvent::Completeness(event) => completeness.push(event),
            event @ IngestEvent::Rejected { .. } => rejected.push(event),
            event @ IngestEvent::MetadataDurable { .. } => metadata.push(event),
            IngestEvent::Failed { .. } => unreachable!("checked above"),
        }
    }
    let drain = harness.drain.take().expect("drain reader");
    ParityRun { ring, drain, completeness, rejected, metadata, counters }
}

#[test]
fn fallback_parity() {
    let (seed, _guard) = seed("fallback_parity", 23);
    let portable = std::thread::spawn(move || parity_run(BackendChoice::Portable, seed));
    let mut uring = parity_run(BackendChoice::IoUring, seed);
    let mut portable = portable.join().expect("portable run");
    assert_eq!(uring.counters, portable.counters, "counters");
    assert_eq!(uring.completeness, portable.completeness, "completeness events, in order");
    assert_eq!(uring.rejected, portable.rejected, "rejections");
    assert_eq!(uring.metadata, portable.metadata, "metadata durable events (ring sequences)");

    // The rings, record by record: same kinds, same frame bytes (themselves the regenerated
    // frames), same metadata events (their records differ only in the receive time).
    let stream = Stream::latiss(2, 4, seed);
    let expected = stream.by_key();
    let mut records = 0;
    loop {
        let a = uring.drain.next_record().expect("read io_uring ring");
        let b = portable.drain.next_record().expect("read portable ring");
        let (a, b) = match (a, b) {
            (None, None) => break,
            (Some(a), Some(b)) => (a, b),
            (a, b) => panic!(
                "record {records}: one ring ends first: {:?} vs {:?}",
                a.map(|r| r.info),
                b.map(|r| r.info)
            ),
        };
        assert_eq!(a.info.kind, b.info.kind, "record {records}: kind");
        assert_eq!(a.info.sequence, b.info.sequence, "record {records}: sequence");
        assert_eq!(a.info.flags, b.info.flags, "record {records}: flags");
        match a.info.kind {
            RecordKind::Frame => {
                assert!(a.payload == b.payload, "record {records}: frame bytes differ");
                check_frame(a.payload, &expected, stream.sky);
            }
            RecordKind::Metadata => {
                let a = decode_record(a.payload).expect("metadata").0;
                let b = decode_record(b.payload).expect("metadata").0;
                assert_eq!(a, b, "record {records}: metadata event");
            }
            other => panic!("unexpected record kind {other:?}"),
        }
        records += 1;
    }
    assert!(records > 100, "{records} records compared");
    drop((uring.ring, portable.ring));
}

// ---------------------------------------------------------------------------------------------
// 4. Disconnect and reconnect mid-exposure
// ---------------------------------------------------------------------------------------------

fn reconnect_within_grace(choice: BackendChoice) {
    let (seed, _guard) = seed("reconnect_within_grace", 31);
    let stream = Stream::latiss(1, 2, seed);
    let frames = stream.frames();
    let tracker = TrackerOptions { reconnect_grace_ns: 30_000_000_000, ..TrackerOptions::default() };
    let mut harness = Harness::start(choice, Setup { tracker, ..Setup::latiss() });
    let half = frames.len() / 2;
    let mut sender = harness.connect();
    send_frames(&mut sender, &frames[..half], stream.sky);
    harness.wait_counters("the first half durable", |c| {
        c.frames_durable_total.load(Ordering::Relaxed) == half as u64
    });
    drop(sender);
    let mut sender = harness.connect();
    send_frames(&mut sender, &frames[half..], stream.sky);
    let exposure_id = frames[0].exposure_id;
    harness.wait_events("the exposure to close", |events| exposure_closed(events, exposure_id));
    assert_eq!(completed(&harness.events), vec![exposure_id], "{}", summary(&harness.events));
    assert!(incomplete(&harness.events).is_empty());
    assert_rejected_exactly(harness.counters(), &[]);
    assert_eq!(harness.count(|c| &c.connections_total), 2);
    assert_eq!(harness.count(|c| &c.frames_late_total), 0);

    let ring = harness.shutdown();
    let contents = read_ring(harness.drain.as_mut().expect("drain"), &stream.by_key(), stream.sky);
    drop(ring);
    let expected: Vec<FrameKey> = frames.iter().map(FrameSpec::key).collect();
    assert_eq!(contents.frames, expected, "each frame once");
}

fn reconnect_too_late(choice: BackendChoice) {
    let (seed, _guard) = seed("reconnect_too_late", 37);
    let stream = Stream::latiss(1, 2, seed);
    let frames = stream.frames();
    let tracker = TrackerOptions { reconnect_grace_ns: 200_000_000, ..TrackerOptions::default() };
    let mut harness = Harness::start(choice, Setup { tracker, ..Setup::latiss() });
    let half = frames.len() / 2;
    let mut sender = harness.connect();
    send_frames(&mut sender, &frames[..half], stream.sky);
    harness.wait_counters("the first half durable", |c| {
        c.frames_durable_total.load(Ordering::Relaxed) == half as u64
    });
    drop(sender);
    let exposure_id = frames[0].exposure_id;
    harness.wait_events("the exposure declared incomplete", |events| exposure_closed(events, exposure_id));
    {
        let incomplete = incomplete(&harness.events);
        assert_eq!(incomplete.len(), 1, "{}", summary(&harness.events));
        assert_eq!(incomplete[0].reason, IncompleteReason::Disconnect);
        // The first half is the first 1024 rows of every segment: no segment is whole.
        assert_eq!(incomplete[0].durable_segments, 0);
        assert_eq!(incomplete[0].missing_count, 16);
        assert_eq!(incomplete[0].pending_frames, 0);
    }

    let mut sender = harness.connect();
    send_frames(&mut sender, &frames[half..], stream.sky);
    harness.wait_counters("the late frames durable", |c| {
        c.frames_durable_total.load(Ordering::Relaxed) == frames.len() as u64
    });
    assert_eq!(harness.count(|c| &c.frames_late_total), (frames.len() - half) as u64);
    assert_rejected_exactly(harness.counters(), &[]);

    let ring = harness.shutdown();
    assert!(completed(&harness.events).is_empty(), "no second exposure-level event");
    assert_eq!(incomplete(&harness.events).len(), 1, "no second exposure-level event");
    let contents = read_ring(harness.drain.as_mut().expect("drain"), &stream.by_key(), stream.sky);
    drop(ring);
    let expected: Vec<FrameKey> = frames.iter().map(FrameSpec::key).collect();
    assert_eq!(contents.frames, expected, "late frames are written too");
}

both_backends!(reconnect_within_grace, reconnect_too_late);

// ---------------------------------------------------------------------------------------------
// 5. Full ring
// ---------------------------------------------------------------------------------------------

/// 64 MiB holds 56 frames of a quarter segment (1.19 MB each with the record header).
const SMALL_RING_BYTES: u64 = 64 << 20;

fn full_ring_reject(choice: BackendChoice) {
    let (seed, _guard) = seed("full_ring_reject", 41);
    let stream = Stream::latiss(1, 4, seed);
    let frames = stream.frames();
    let setup =
        Setup { capacity_bytes: SMALL_RING_BYTES, full_policy: FullPolicy::Reject, ..Setup::latiss() };
    let mut harness = Harness::start(choice, setup);
    let mut sender = harness.connect();
    send_frames(&mut sender, &frames, stream.sky);
    let total = frames.len() as u64;
    harness.wait_counters("every frame durable or refused", |c| {
        c.frames_durable_total.load(Ordering::Relaxed) + c.rejected(RejectKind::RingFull) == total
    });
    let durable = harness.count(|c| &c.frames_durable_total);
    let refused = harness.counters().rejected(RejectKind::RingFull);
    assert!(durable > 40 && refused > 0, "durable {durable}, refused {refused}");
    assert_rejected_exactly(harness.counters(), &[(RejectKind::RingFull, refused)]);
    let rejected = rejections(&harness.events);
    assert_eq!(rejected.len() as u64, refused);
    assert!(rejected
        .iter()
        .all(|(kind, connection)| *kind == RejectKind::RingFull && connection == "unix#1"));
    assert!(completed(&harness.events).is_empty());

    let ring = harness.shutdown();
    assert_no_failure(&harness.events);
    let contents = read_ring(harness.drain.as_mut().expect("drain"), &stream.by_key(), stream.sky);
    drop(ring);
    let expected: Vec<FrameKey> = frames[..durable as usize].iter().map(FrameSpec::key).collect();
    assert_eq!(contents.frames, expected, "the earlier frames, intact and in order");
}

fn full_ring_block(choice: BackendChoice) {
    let (seed, _guard) = seed("full_ring_block", 43);
    let stream = Stream::latiss(2, 4, seed);
    let frames = stream.frames();
    let setup = Setup { capacity_bytes: SMALL_RING_BYTES, buffer_count: 4, ..Setup::latiss() };
    let mut harness = Harness::start(choice, setup);
    let sender = {
        let mut sender = harness.connect();
        let frames = frames.clone();
        let sky = stream.sky;
        std::thread::spawn(move || send_frames(&mut sender, &frames, sky))
    };
    harness.wait_counters("the ingest to wait for ring space", |c| {
        c.ring_full_waits_total.load(Ordering::Relaxed) > 0
    });
    // Back-pressure: with the ring full and the pool busy, the sender cannot finish. (Checking
    // a negative takes some time; the assertion cannot fail spuriously.)
    std::thread::sleep(Duration::from_millis(300));
    assert!(!sender.is_finished(), "the sender is blocked while the ring is full");
    assert!(harness.count(|c| &c.frames_durable_total) < frames.len() as u64);
    assert_rejected_exactly(harness.counters(), &[]);

    let drain = spawn_drain(harness.drain.take().expect("drain"), frames.len(), stream.by_key(), stream.sky);
    harness.wait_events("both exposures complete", |events| completed(events).len() == 2);
    assert_eq!(completed(&harness.events), stream.exposures());
    sender.join().expect("the sender finished");
    let drained = drain.join().expect("drain");
    let expected: Vec<FrameKey> = frames.iter().map(FrameSpec::key).collect();
    assert_eq!(drained, expected, "every frame, intact, in order");
    assert_rejected_exactly(harness.counters(), &[]);
    let _ring = harness.shutdown();
    assert_no_failure(&harness.events);
}

both_backends!(full_ring_reject, full_ring_block);

// ---------------------------------------------------------------------------------------------
// 6. Two streams, one stalled
// ---------------------------------------------------------------------------------------------

/// LSSTCam corner raft R00 (2 guiders, 2 wavefront half-sensors: 48 segments, one frame each,
/// 226 MB) into a 64 MiB ring nobody drains, so it stalls; LATISS (two exposures) on its own
/// ingest completes meanwhile. Then a drain frees LSSTCam's ring and it completes too.
fn two_streams(choice: BackendChoice) {
    let (seed, _guard) = seed("two_streams", 47);
    let lsstcam_stream = Stream::new(lsstcam_plan(1, 1, seed), &["R00"], sky(seed));
    let latiss_stream = Stream::latiss(2, 4, seed);
    let lsstcam_setup = Setup {
        focalplane: Focalplane::lsstcam_subset(&["R00"]).expect("R00"),
        stream_id: LSSTCAM_STREAM_ID,
        capacity_bytes: SMALL_RING_BYTES,
        buffer_count: 4,
        ..Setup::latiss()
    };
    let mut lsstcam = Harness::start(choice, lsstcam_setup);
    let mut latiss = Harness::start(choice, Setup::latiss());

    let lsstcam_frames = lsstcam_stream.frames();
    let lsstcam_sender = {
        let mut sender = lsstcam.connect();
        let frames = lsstcam_frames.clone();
        let sky = lsstcam_stream.sky;
        std::thread::spawn(move || send_frames(&mut sender, &frames, sky))
    };
    lsstcam.wait_counters("LSSTCam to stall on its full ring", |c| {
        c.ring_full_waits_total.load(Ordering::Relaxed) > 0
    });

    let mut sender = latiss.connect();
    send_frames(&mut sender, &latiss_stream.frames(), latiss_stream.sky);
    latiss.wait_events("both LATISS exposures complete", |events| completed(events).len() == 2);
    assert_eq!(completed(&latiss.events), latiss_stream.exposures());
    // LSSTCam is still stalled: its sender blocked, its visit not complete.
    assert!(!lsstcam_sender.is_finished(), "the LSSTCam sender is blocked meanwhile");
    assert!(lsstcam.count(|c| &c.frames_durable_total) < lsstcam_frames.len() as u64);
    lsstcam.collect();
    assert!(completed(&lsstcam.events).is_empty());

    let drain = spawn_drain(
        lsstcam.drain.take().expect("drain"),
        lsstcam_frames.len(),
        lsstcam_stream.by_key(),
        lsstcam_stream.sky,
    );
    lsstcam.wait_events("the LSSTCam visit complete", |events| completed(events).len() == 1);
    assert_eq!(completed(&lsstcam.events), lsstcam_stream.exposures());
    lsstcam_sender.join().expect("LSSTCam sender");
    let drained = drain.join().expect("drain");
    assert_eq!(drained, lsstcam_frames.iter().map(FrameSpec::key).collect::<Vec<_>>());
    for harness in [&lsstcam, &latiss] {
        assert_rejected_exactly(harness.counters(), &[]);
    }
    let _lsstcam_ring = lsstcam.shutdown();
    let latiss_ring = latiss.shutdown();
    assert_no_failure(&lsstcam.events);
    assert_no_failure(&latiss.events);
    let contents =
        read_ring(latiss.drain.as_mut().expect("drain"), &latiss_stream.by_key(), latiss_stream.sky);
    drop(latiss_ring);
    assert_eq!(contents.frames, latiss_stream.frames().iter().map(FrameSpec::key).collect::<Vec<_>>());
}

both_backends!(two_streams);

/// A character device (the DMA driver's endpoint; here a FIFO whose writer stays open) that
/// falls silent must not hold the shutdown: the reader waits for data at most 50 ms at a time and
/// notices the stop. One exposure goes through the device first (every frame durable); then the
/// device says nothing and `shutdown` returns within a second, with the frames in the ring.
fn a_silent_device_does_not_hold_the_shutdown(choice: BackendChoice) {
    use std::io::Write as _;
    let (seed, _guard) = seed("a_silent_device_does_not_hold_the_shutdown", 53);
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let stream = Stream::latiss(1, 1, seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("dma0");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success(), "mkfifo failed");
    // Read-write, so the open does not wait for a reader and the device stays "open" after.
    let mut device = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).expect("open fifo");
    let mut create = CreateOptions::new(256 << 20, LATISS_STREAM_ID);
    create.max_payload_bytes = 5 << 20;
    let ring = Ring::create(&dir.path().join("ring"), &create, RingOptions::default()).expect("ring");
    let mut drain = ring.reader("drain").expect("drain reader");
    let mut options = IngestOptions::new("latiss");
    options.backend = choice;
    let ingest = IngestHandle::start(
        ring,
        Focalplane::latiss(),
        &Endpoint::Device(fifo.clone()),
        None,
        options,
        Arc::new(SystemClock),
    )
    .expect("ingest starts");
    let frames = stream.frames();
    let writer = {
        let frames = frames.clone();
        let sky = stream.sky;
        std::thread::spawn(move || {
            for spec in &frames {
                device.write_all(&spec.encode(sky)).expect("write to the device");
            }
            device
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while ingest.observer().counters.frames_durable_total.load(Ordering::Relaxed) < frames.len() as u64 {
        assert!(Instant::now() < deadline, "the frames did not become durable");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _device_still_open = writer.join().expect("writer");
    let started = Instant::now();
    // In a thread, so that a shutdown that hangs fails the test instead of hanging it.
    let (done, shut) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(ingest.shutdown());
    });
    let ring = shut
        .recv_timeout(Duration::from_secs(5))
        .expect("shutdown still waiting after 5 s with the device silent")
        .expect("shutdown");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?} with the device silent");
    let contents = read_ring(&mut drain, &stream.by_key(), stream.sky);
    drop(ring);
    assert_eq!(contents.frames, frames.iter().map(FrameSpec::key).collect::<Vec<_>>());
}

both_backends!(a_silent_device_does_not_hold_the_shutdown);

// ---------------------------------------------------------------------------------------------
// 7. Metadata records survive SIGKILL
// ---------------------------------------------------------------------------------------------

/// The child process, killed (SIGKILL) and reaped when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_line(lines: &Receiver<String>, what: &str, seen: &mut Vec<String>, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(seen) {
        let now = Instant::now();
        assert!(now < deadline, "timed out waiting for the child: {what}; it printed {seen:#?}");
        match lines.recv_timeout(deadline - now) {
            Ok(line) => {
                assert!(!line.starts_with("failed") && !line.starts_with("rejected"), "child: {line}");
                seen.push(line);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the child exited while waiting for {what}: {seen:#?}")
            }
        }
    }
}

fn metadata_survives_sigkill(choice: BackendChoice) {
    let (seed, _guard) = seed("metadata_survives_sigkill", 53);
    let stream = Stream::latiss(2, 1, seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let ring_dir = dir.path().join("ring");
    let frames_socket = dir.path().join("frames.sock");
    let metadata_socket = dir.path().join("metadata.sock");
    let backend = match choice {
        BackendChoice::IoUring => "io_uring",
        _ => "portable",
    };
    let arg = |path: &Path| path.to_str().expect("UTF-8 temp path").to_owned();
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_ingest-child"))
            .args([arg(&ring_dir), arg(&frames_socket), arg(&metadata_socket), backend.to_owned()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ingest-child"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (line_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    wait_line(&lines, "listening", &mut seen, |seen| seen.iter().any(|line| line.starts_with("listening")));
    let expected_backend = if choice == BackendChoice::IoUring { "IoUring" } else { "Portable" };
    assert_eq!(seen[0], format!("listening {expected_backend}"));

    // Every header event of both exposures, and the first three (whole-segment) frames.
    let mut metadata = UnixFrameSender::connect(&metadata_socket).expect("connect metadata");
    let headers = stream.headers();
    for header in &headers {
        send_metadata(&mut metadata, header);
    }
    let frames = stream.frames();
    let mut sender = UnixFrameSender::connect(&frames_socket).expect("connect frames");
    send_frames(&mut sender, &frames[..3], stream.sky);
    wait_line(&lines, "4 metadata and 3 segments durable", &mut seen, |seen| {
        seen.iter().filter(|line| line.starts_with("metadata-durable")).count() == 4
            && seen.iter().filter(|line| line.starts_with("segment-durable")).count() == 3
    });
    drop(child); // SIGKILL, then reaped.
    drop((sender, metadata));

    let ring = Ring::open(&ring_dir, RingOptions::default()).expect("the ring reopens after SIGKILL");
    let mut reader = ring.reader("drain").expect("drain reader");
    let contents = read_ring(&mut reader, &stream.by_key(), stream.sky);
    let expected: Vec<MetadataEvent> = headers.iter().map(|header| header.to_metadata_event()).collect();
    assert_eq!(contents.metadata, expected, "metadata records read back identical");
    let announced: Vec<u64> = seen
        .iter()
        .filter_map(|line| line.strip_prefix("metadata-durable "))
        .map(|rest| rest.rsplit(' ').next().and_then(|sequence| sequence.parse().ok()).expect("sequence"))
        .collect();
    assert_eq!(contents.metadata_sequences, announced, "at the ring sequences announced durable");
    let mut frames_read = contents.frames.clone();
    frames_read.sort_unstable();
    let mut expected_frames: Vec<FrameKey> = frames[..3].iter().map(FrameSpec::key).collect();
    expected_frames.sort_unstable();
    assert_eq!(frames_read, expected_frames, "and the durable frames");
}

both_backends!(metadata_survives_sigkill);
