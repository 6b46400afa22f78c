//! The camera driver (issue 3): plays a [`NightSchedule`] over a [`FrameSink`] as the DAQ would.
//!
//! For each [`Event::Frame`] it generates the rows with the seeded [`SegmentGenerator`], encodes
//! one DAQ frame ([`encode_frame`]: wire codes from the geometry, `frame_sequence` counting from 1
//! on the stream, end-of-segment and end-of-exposure flags, `readout_ns` = the event's simulated
//! time), optionally passes it through a [`FaultInjector`], and sends it. With a
//! [`TimeCompression`] it sleeps until each event's compressed wall time; without one it sends as
//! fast as the sink accepts (the sink blocks under back-pressure, so nothing is dropped).
//!
//! **Header events go to the metadata channel.** Each `StartIntegration` and `EndReadout` is
//! counted in the [`PlayReport`] and, when [`play_with_metadata`] is given a metadata sink, encoded
//! as one metadata message ([`HeaderEvent::to_metadata_event`], [`encode_message`];
//! `docs/daq-frame-protocol.md`, "Metadata channel") and sent at its scheduled time. Frames and
//! metadata are interleaved in schedule order, so an exposure's `StartIntegration` is sent before
//! its first frame and its `EndReadout` after its last frame. [`play`] and [`play_with_progress`]
//! send no metadata (they are [`play_with_metadata`] without a metadata sink);
//! [`play_header_events`] sends only the metadata, skipping the frames.
//!
//! **Bounded memory.** Whatever the night's length the driver holds one pixel buffer and one frame
//! buffer (one frame each, at most a whole segment), the schedule's own bounded state, and one
//! compact segment generator per segment IN FLIGHT (about 10 KB each with the default sky, far
//! below 256 KB: [`SegmentGenerator::heap_size_bytes`]), capped at
//! [`PlayOptions::max_cached_generators`] ([`DEFAULT_MAX_CACHED_GENERATORS`] holds every segment of
//! LSSTCam and LATISS). A generator is built at its segment's first frame and dropped at its
//! end-of-segment frame, so memory is bounded by the segments read out in parallel: the whole
//! 3216-segment focal plane takes well under 1 GB of generators (about 30 MB with the default
//! sky). Beyond a smaller cap the other segments get a generator rebuilt for each frame (slower,
//! bit-identical: the pixels depend only on `(seed, exposure, detector, segment)` and the frame's
//! [`Scene`](crate::pixels::Scene)). The fault injector keeps its own log of injected faults (one
//! entry per fault).
//!
//! **Disconnect.** When the injector asks for [`FaultKind::DisconnectMidExposure`](crate::faults::FaultKind),
//! the driver cannot close a `dyn FrameSink`: it stops playing and reports
//! [`PlayReport::disconnected`]; the caller drops the sink (closing the connection). Reconnecting
//! and resuming is not built.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use crate::faults::{FaultCounts, FaultInjector, FaultPlan};
use crate::frame::{
    encode_frame, frame_length_bytes, FrameFields, FLAG_END_OF_EXPOSURE, FLAG_END_OF_SEGMENT,
};
use crate::geometry::{Instrument, SEGMENT_COLUMNS, SEGMENT_ROWS, SEGMENT_SIZE_BYTES};
use crate::header_service::{EventKind, HeaderEvent};
use crate::metadata::encode_message;
use crate::night::{Event, NightSchedule, TimeCompression};
use crate::pixels::{SegmentGenerator, SkyParameters};
use crate::transport::FrameSink;

/// Default for [`PlayOptions::max_cached_generators`]: 4096, more than the 3216 + 16 segments of
/// LSSTCam and LATISS together, so every segment in flight is cached (well under 1 GB; see the
/// module docs).
pub const DEFAULT_MAX_CACHED_GENERATORS: usize = 4096;

/// How to play a schedule.
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// Pace events at `sim / factor` wall time from the first event; `None`: as fast as possible.
    pub compression: Option<TimeCompression>,
    /// The simulated sky (its seed fixes the pixels).
    pub sky: SkyParameters,
    /// Malformed frames to inject; `None`: every frame is well formed.
    pub fault_plan: Option<FaultPlan>,
    /// Stop after the `EndReadout` of this many LSSTCam visits (a LATISS exposure still being read
    /// out then is cut short); `None`: play the whole schedule.
    pub max_visits: Option<u32>,
    /// At most this many segment generators are kept between frames (see the module docs).
    pub max_cached_generators: usize,
}

impl PlayOptions {
    /// As fast as possible, no faults, whole schedule, default cache size.
    pub fn new(sky: SkyParameters) -> PlayOptions {
        PlayOptions {
            compression: None,
            sky,
            fault_plan: None,
            max_visits: None,
            max_cached_generators: DEFAULT_MAX_CACHED_GENERATORS,
        }
    }
}

/// What a play did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlayReport {
    /// Frames encoded from the schedule (before faults).
    pub frames_generated_total: u64,
    /// Frames handed to the sink (after faults: duplicates count twice, dropped ones not at all).
    pub frames_sent_total: u64,
    /// Bytes handed to the sink.
    pub bytes_sent_total: u64,
    /// Header events seen (`StartIntegration` + `EndReadout`), sent or not.
    pub header_events_total: u64,
    /// Metadata messages handed to the metadata sink (0 without one).
    pub metadata_messages_sent_total: u64,
    /// Bytes handed to the metadata sink.
    pub metadata_bytes_sent_total: u64,
    /// `StartIntegration` events seen.
    pub start_integration_total: u64,
    /// `EndReadout` events seen, i.e. exposures whose readout was played to the end.
    pub exposures_completed: u64,
    /// Faults injected, per kind (all zero without a fault plan).
    pub fault_counts: FaultCounts,
    /// The injector asked for a disconnect: the play stopped there.
    pub disconnected: bool,
    /// Segment generators built (one per segment when the cache holds every segment in flight).
    pub generators_built: u64,
    /// Largest delay of an event behind its compressed wall time, seconds (0 without compression).
    pub max_lag_seconds: f64,
    /// Wall time of the play, seconds.
    pub wall_seconds: f64,
}

impl PlayReport {
    /// Bytes sent per wall second (0 for an instantaneous play).
    pub fn bytes_per_second(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.bytes_sent_total as f64 / self.wall_seconds
        } else {
            0.0
        }
    }
}

/// Reported to [`play_with_progress`]'s callback at each exposure's `EndReadout`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposureProgress<'a> {
    /// The `EndReadout` event (OBSID, exposure id, times...).
    pub end_readout: &'a HeaderEvent,
    /// The report so far (`wall_seconds` up to now).
    pub report: &'a PlayReport,
}

/// Plays `schedule` into `sink`; see the module docs. Errors are the sink's.
pub fn play(
    schedule: NightSchedule<'_>,
    sink: &mut dyn FrameSink,
    options: PlayOptions,
) -> io::Result<PlayReport> {
    play_with_progress(schedule, sink, options, &mut |_| {})
}

/// [`play`], calling `on_exposure` after each exposure's `EndReadout`.
pub fn play_with_progress(
    schedule: NightSchedule<'_>,
    sink: &mut dyn FrameSink,
    options: PlayOptions,
    on_exposure: &mut dyn FnMut(&ExposureProgress<'_>),
) -> io::Result<PlayReport> {
    play_with_metadata(schedule, sink, None, options, on_exposure)
}

/// [`play_with_progress`], also sending each header event to `metadata` (when given) as a
/// metadata message at its scheduled time, interleaved with the frames in schedule order. Errors
/// are either sink's.
pub fn play_with_metadata(
    schedule: NightSchedule<'_>,
    sink: &mut dyn FrameSink,
    mut metadata: Option<&mut dyn FrameSink>,
    options: PlayOptions,
    on_exposure: &mut dyn FnMut(&ExposureProgress<'_>),
) -> io::Result<PlayReport> {
    let wall_start = Instant::now();
    let lsstcam = schedule.focalplane(Instrument::LsstCam);
    let latiss = schedule.focalplane(Instrument::Latiss);
    let mut injector = options.fault_plan.clone().map(FaultInjector::new);
    let mut report = PlayReport::default();
    let mut cache: HashMap<(Instrument, u64, usize, usize), SegmentGenerator> = HashMap::new();
    let mut pixels: Vec<u8> = Vec::with_capacity(SEGMENT_SIZE_BYTES);
    let mut frame: Vec<u8> = Vec::new();
    let mut origin_ns: Option<i64> = None;
    let mut lsstcam_visits_done = 0u32;
    let mut frame_sequence = 0u64;

    if options.max_visits == Some(0) {
        report.wall_seconds = wall_start.elapsed().as_secs_f64();
        return Ok(report);
    }
    for timed in schedule {
        let origin = *origin_ns.get_or_insert(timed.sim_time_ns);
        if let Some(compression) = options.compression {
            let sim_offset = Duration::from_nanos((timed.sim_time_ns - origin).max(0) as u64);
            let due = wall_start + compression.wall_offset(sim_offset);
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            } else {
                report.max_lag_seconds = report.max_lag_seconds.max((now - due).as_secs_f64());
            }
        }
        match timed.event {
            Event::Header(header) => {
                report.header_events_total += 1;
                if let Some(metadata) = &mut metadata {
                    send_metadata(&mut **metadata, &header, &mut report)?;
                }
                match header.kind {
                    EventKind::StartIntegration => report.start_integration_total += 1,
                    EventKind::EndReadout => {
                        report.exposures_completed += 1;
                        report.wall_seconds = wall_start.elapsed().as_secs_f64();
                        if let Some(injector) = &injector {
                            report.fault_counts = injector.counts();
                        }
                        on_exposure(&ExposureProgress { end_readout: &header, report: &report });
                        if timed.instrument == Instrument::LsstCam {
                            lsstcam_visits_done += 1;
                            if options.max_visits.is_some_and(|max| lsstcam_visits_done >= max) {
                                break;
                            }
                        }
                    }
                }
            }
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
                let focalplane = if timed.instrument == Instrument::LsstCam { lsstcam } else { latiss };
                let detector_geometry = &focalplane.detectors()[detector];
                let key = (timed.instrument, exposure_id, detector, segment);
                pixels.resize(row_count as usize * SEGMENT_COLUMNS as usize * 4, 0);
                match cache.get(&key) {
                    Some(generator) => generator.generate_rows(first_row, row_count, &mut pixels),
                    None => {
                        let generator = SegmentGenerator::for_detector_in_scene(
                            options.sky,
                            scene,
                            exposure_id,
                            detector_geometry,
                            segment,
                        );
                        report.generators_built += 1;
                        generator.generate_rows(first_row, row_count, &mut pixels);
                        if !end_of_segment && cache.len() < options.max_cached_generators {
                            cache.insert(key, generator);
                        }
                    }
                }
                if end_of_segment {
                    cache.remove(&key);
                }

                frame_sequence += 1;
                let mut flags = 0;
                if end_of_segment {
                    flags |= FLAG_END_OF_SEGMENT;
                }
                if end_of_exposure {
                    flags |= FLAG_END_OF_EXPOSURE;
                }
                let fields = FrameFields {
                    instrument: instrument_code(timed.instrument),
                    flags,
                    raft: raft_wire_code(detector_geometry.raft()),
                    sensor: sensor_wire_code(detector_geometry.sensor()),
                    segment: segment_wire_code(&detector_geometry.segment(segment)),
                    segment_columns: SEGMENT_COLUMNS as u16,
                    segment_rows: SEGMENT_ROWS as u16,
                    first_row: first_row as u16,
                    row_count: row_count as u16,
                    exposure_id,
                    frame_sequence,
                    readout_ns: timed.sim_time_ns.max(0) as u64,
                };
                frame.resize(frame_length_bytes(pixels.len()), 0);
                encode_frame(&fields, &pixels, &mut frame);
                report.frames_generated_total += 1;

                match injector.as_mut() {
                    None => send(sink, &frame, &mut report)?,
                    Some(injector) => {
                        let emit = injector.apply(frame.clone());
                        report.fault_counts = injector.counts();
                        if emit.is_disconnect() {
                            report.disconnected = true;
                            break;
                        }
                        for bytes in emit.into_frames() {
                            send(sink, &bytes, &mut report)?;
                        }
                    }
                }
            }
        }
    }
    if let Some(injector) = injector.as_mut() {
        if !report.disconnected {
            if let Some(held) = injector.finish() {
                send(sink, &held, &mut report)?;
            }
        }
        report.fault_counts = injector.counts();
    }
    report.wall_seconds = wall_start.elapsed().as_secs_f64();
    Ok(report)
}

/// Plays only the header events of `schedule` into `metadata`, paced by `compression` (`None`: as
/// fast as the sink accepts), calling `on_event` after each is sent; frame events are skipped
/// without generating pixels (give the schedule a small focal plane and one frame per segment: it
/// still iterates them). The report counts header events and metadata sent; its frame fields are 0.
pub fn play_header_events(
    schedule: NightSchedule<'_>,
    metadata: &mut dyn FrameSink,
    compression: Option<TimeCompression>,
    on_event: &mut dyn FnMut(&HeaderEvent, &PlayReport),
) -> io::Result<PlayReport> {
    let wall_start = Instant::now();
    let mut report = PlayReport::default();
    let mut origin_ns: Option<i64> = None;
    for timed in schedule {
        let Event::Header(header) = timed.event else { continue };
        let origin = *origin_ns.get_or_insert(timed.sim_time_ns);
        if let Some(compression) = compression {
            let sim_offset = Duration::from_nanos((timed.sim_time_ns - origin).max(0) as u64);
            let wall_due = wall_start + compression.wall_offset(sim_offset);
            match wall_due.checked_duration_since(Instant::now()) {
                Some(wait) => std::thread::sleep(wait),
                None => report.max_lag_seconds = report.max_lag_seconds.max(wall_due.elapsed().as_secs_f64()),
            }
        }
        report.header_events_total += 1;
        send_metadata(metadata, &header, &mut report)?;
        match header.kind {
            EventKind::StartIntegration => report.start_integration_total += 1,
            EventKind::EndReadout => report.exposures_completed += 1,
        }
        report.wall_seconds = wall_start.elapsed().as_secs_f64();
        on_event(&header, &report);
    }
    report.wall_seconds = wall_start.elapsed().as_secs_f64();
    Ok(report)
}

/// Encodes `header` as a metadata message and sends it.
fn send_metadata(
    metadata: &mut dyn FrameSink,
    header: &HeaderEvent,
    report: &mut PlayReport,
) -> io::Result<()> {
    let message = encode_message(&header.to_metadata_event()).map_err(|error| {
        io::Error::new(io::ErrorKind::InvalidData, format!("encoding {}: {error}", header.metadata.obsid))
    })?;
    metadata.send(&message)?;
    report.metadata_messages_sent_total += 1;
    report.metadata_bytes_sent_total += message.len() as u64;
    Ok(())
}

fn send(sink: &mut dyn FrameSink, frame: &[u8], report: &mut PlayReport) -> io::Result<()> {
    sink.send(frame)?;
    report.frames_sent_total += 1;
    report.bytes_sent_total += frame.len() as u64;
    Ok(())
}

/// The wire codes of the frame header (defined once, with their reverse, in the protocol).
pub use crate::frame::{instrument_code, raft_wire_code, segment_wire_code, sensor_wire_code};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultKind;
    use crate::frame::{decode_frame, InstrumentCode};
    use crate::geometry::{Focalplane, RaftId, SensorId};
    use crate::night::{LatissPlan, NightPlan};
    use crate::transport::{FrameWriter, ReplayFileReader, ReplayFileWriter};
    use std::collections::HashSet;

    const START_NS: i64 = 1_700_000_000_000_000_000;

    fn latiss_plan(count: u32, frames_per_segment: u32) -> NightPlan {
        NightPlan {
            visit_count: 0,
            frames_per_segment,
            latiss: Some(LatissPlan { exposure_seconds: 1.0, cadence_seconds: 4.0, count }),
            ..NightPlan::baseline(START_NS, 0, 7)
        }
    }

    fn play_to_vec(plan: NightPlan, options: PlayOptions) -> (PlayReport, Vec<u8>) {
        let lsstcam = Focalplane::lsstcam_subset(&["R22"]).unwrap();
        let latiss = Focalplane::latiss();
        let schedule = NightSchedule::new(plan, &lsstcam, &latiss).unwrap();
        let mut sink = FrameWriter::new(Vec::new());
        let report = play(schedule, &mut sink, options).unwrap();
        assert_eq!(report.frames_sent_total, sink.frames_sent_total());
        assert_eq!(report.bytes_sent_total, sink.bytes_sent_total());
        (report, sink.into_inner())
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        std::env::temp_dir().join(format!("hw-sim-driver-{name}-{}-{nanos}.replay", std::process::id()))
    }

    #[test]
    fn wire_codes_follow_the_protocol_doc() {
        assert_eq!(raft_wire_code(RaftId::new(2, 2)), 22);
        assert_eq!(raft_wire_code(RaftId::new(0, 0)), 0);
        assert_eq!(raft_wire_code(RaftId::new(4, 3)), 43);
        assert_eq!(sensor_wire_code(SensorId::science(1, 1)), 11);
        assert_eq!(sensor_wire_code(SensorId::science(2, 0)), 20);
        assert_eq!(sensor_wire_code(SensorId::guider(1)), 31);
        assert_eq!(sensor_wire_code(SensorId::wavefront_half(0)), 40);
        let focalplane = Focalplane::latiss();
        let detector = &focalplane.detectors()[0];
        let codes: Vec<u8> = detector.segments().map(|segment| segment_wire_code(&segment)).collect();
        assert_eq!(codes, [10, 11, 12, 13, 14, 15, 16, 17, 7, 6, 5, 4, 3, 2, 1, 0]);
    }

    /// One visit of R22 into a replay file, read back: every frame valid, sequence 1..=N, every
    /// segment's rows exactly once, pixels regenerated bit for bit.
    #[test]
    fn one_visit_of_r22_round_trips_through_a_replay_file() {
        let lsstcam = Focalplane::lsstcam_subset(&["R22"]).unwrap();
        let latiss = Focalplane::latiss();
        let plan = NightPlan::baseline(START_NS, 1, 3);
        let schedule = NightSchedule::new(plan, &lsstcam, &latiss).unwrap();
        let path = temp_path("r22");
        let sky = SkyParameters::default();
        let mut writer = ReplayFileWriter::create(&path).unwrap();
        let options = PlayOptions { max_cached_generators: 200, ..PlayOptions::new(sky) };
        let report = play(schedule, &mut writer, options).unwrap();
        writer.finish().unwrap();

        let segments = lsstcam.segment_count() as u64;
        assert_eq!(segments, 144);
        assert_eq!(report.frames_generated_total, segments * 4);
        assert_eq!(report.frames_sent_total, segments * 4);
        assert_eq!(report.header_events_total, 2);
        assert_eq!(report.exposures_completed, 1);
        assert_eq!(report.generators_built, segments);
        assert_eq!(report.fault_counts, FaultCounts::default());
        assert!(!report.disconnected);

        let mut reader = ReplayFileReader::open(&path).unwrap();
        let mut buffer = vec![0u8; frame_length_bytes(SEGMENT_SIZE_BYTES)];
        let mut rows_seen: HashMap<(u8, u8, u8), Vec<bool>> = HashMap::new();
        let mut sequence = 0u64;
        let mut checked_pixels = false;
        let mut exposure_ids = HashSet::new();
        while let Some(header) = reader.read_frame(&mut buffer).unwrap() {
            let frame = &buffer[..header.frame_length_bytes()];
            let decoded = decode_frame(frame).unwrap();
            sequence += 1;
            assert_eq!(decoded.frame_sequence.get(), sequence);
            assert_eq!(decoded.instrument_code(), Some(InstrumentCode::LsstCam));
            assert_eq!(decoded.raft, 22);
            exposure_ids.insert(decoded.exposure_id.get());
            let first = decoded.first_row.get() as usize;
            let count = decoded.row_count.get() as usize;
            let rows = rows_seen
                .entry((decoded.raft, decoded.sensor, decoded.segment))
                .or_insert_with(|| vec![false; SEGMENT_ROWS as usize]);
            for seen in &mut rows[first..first + count] {
                assert!(!*seen, "row sent twice");
                *seen = true;
            }
            if !checked_pixels && decoded.sensor == 11 && decoded.segment == 7 && first > 0 {
                let detector = lsstcam.detectors().iter().find(|d| d.to_string() == "R22_S11").unwrap();
                let index = detector.segments().position(|s| s.extname() == "Segment07").unwrap();
                let generator =
                    SegmentGenerator::for_detector(sky, decoded.exposure_id.get(), detector, index);
                let mut expected = vec![0u8; count * SEGMENT_COLUMNS as usize * 4];
                generator.generate_rows(first as u32, count as u32, &mut expected);
                let payload = &frame[crate::frame::FRAME_HEADER_BLOCK_BYTES..][..expected.len()];
                assert!(payload == expected.as_slice(), "pixels differ from the regenerated rows");
                checked_pixels = true;
            }
        }
        assert!(checked_pixels);
        assert_eq!(sequence, segments * 4);
        assert_eq!(exposure_ids.len(), 1);
        assert_eq!(rows_seen.len() as u64, segments);
        assert!(rows_seen.values().all(|rows| rows.iter().all(|&seen| seen)));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn cache_size_does_not_change_the_bytes() {
        let sky = SkyParameters::default();
        let (cached, cached_bytes) = play_to_vec(
            latiss_plan(1, 4),
            PlayOptions { max_cached_generators: 16, ..PlayOptions::new(sky) },
        );
        let (uncached, uncached_bytes) =
            play_to_vec(latiss_plan(1, 4), PlayOptions { max_cached_generators: 0, ..PlayOptions::new(sky) });
        assert_eq!(cached.generators_built, 16);
        assert_eq!(uncached.generators_built, 64);
        assert_eq!(cached.frames_sent_total, 64);
        assert!(cached_bytes == uncached_bytes);
    }

    #[test]
    fn faults_are_injected_and_counted() {
        let sky = SkyParameters::default();
        let plan = FaultPlan::new(1).at(3, FaultKind::DuplicatedFrame).at(5, FaultKind::BadPayloadCrc);
        let options = PlayOptions { fault_plan: Some(plan), ..PlayOptions::new(sky) };
        let (report, _) = play_to_vec(latiss_plan(1, 1), options);
        assert_eq!(report.frames_generated_total, 16);
        assert_eq!(report.frames_sent_total, 17);
        assert_eq!(report.fault_counts.duplicated_frame, 1);
        assert_eq!(report.fault_counts.bad_payload_crc, 1);

        let plan = FaultPlan::new(1).at(5, FaultKind::DisconnectMidExposure);
        let options = PlayOptions { fault_plan: Some(plan), ..PlayOptions::new(sky) };
        let (report, bytes) = play_to_vec(latiss_plan(2, 1), options);
        assert!(report.disconnected);
        assert_eq!(report.frames_sent_total, 4);
        assert_eq!(bytes.len() as u64, 4 * frame_length_bytes(SEGMENT_SIZE_BYTES) as u64);
        assert_eq!(report.fault_counts.disconnect_mid_exposure, 1);
    }

    #[test]
    fn compression_paces_and_max_visits_stops() {
        let sky = SkyParameters::default();
        // One LATISS exposure: 1 s open + 2 s readout = 3 s simulated, 0.3 s at factor 10.
        let options =
            PlayOptions { compression: Some(TimeCompression { factor: 10.0 }), ..PlayOptions::new(sky) };
        let (report, _) = play_to_vec(latiss_plan(1, 1), options);
        assert!(report.wall_seconds >= 0.29, "played in {} s", report.wall_seconds);
        assert_eq!(report.exposures_completed, 1);

        let lsstcam = Focalplane::lsstcam_subset(&["R22"]).unwrap();
        let latiss = Focalplane::latiss();
        let plan = NightPlan { frames_per_segment: 1, ..NightPlan::baseline(START_NS, 3, 1) };
        let schedule = NightSchedule::new(plan, &lsstcam, &latiss).unwrap();
        let mut sink = FrameWriter::new(io::sink());
        let mut progress = Vec::new();
        let options = PlayOptions { max_visits: Some(1), ..PlayOptions::new(sky) };
        let report = play_with_progress(schedule, &mut sink, options, &mut |p| {
            progress.push((p.end_readout.metadata.exposure_id, p.report.frames_sent_total))
        })
        .unwrap();
        assert_eq!(report.exposures_completed, 1);
        assert_eq!(report.frames_sent_total, 144);
        assert_eq!(progress.len(), 1);
        assert_eq!(progress[0].1, 144);
    }
}
