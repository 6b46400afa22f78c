//! Completeness tracking: which rows of which segment of which detector of which exposure have
//! arrived, and which are safely on disk.
//!
//! The ingest validates a frame header ([`FrameHeader::parse`]), asks the [`CompletenessTracker`]
//! to [`admit`](CompletenessTracker::admit) the frame *before* writing it, and reports it
//! [`durable`](CompletenessTracker::durable) once the write and its `fdatasync` have finished. The
//! tracker answers with [`CompletenessEvent`]s: a segment whose 2048 rows are all durable, a
//! detector whose segments all are, an exposure whose detectors all are, or an exposure declared
//! incomplete (timeout, lost connection, or evicted to make room for a newer one).
//!
//! The tracker is pure logic: no I/O, no clock reads (every call takes `now_ns`, nanoseconds on
//! whatever monotonic clock the caller uses), no allocation after construction except for the
//! events it emits and the [`open_exposures`](CompletenessTracker::open_exposures) summary.
//!
//! # Semantics
//!
//! - **What is expected.** Every segment of every detector of the [`Focalplane`] the tracker was
//!   built with (this stream's detectors: a full LSSTCam, a raft subset, or LATISS). An exposure is
//!   complete when all of them are durable, whatever order the frames came in.
//!   [`FLAG_END_OF_EXPOSURE`] is recorded (and reported) but never used to decide completeness:
//!   frames may arrive out of order.
//! - **Admission** checks, in order: the instrument; that the detector exists in this focal plane;
//!   that the segment exists for that detector (wavefront half-sensors have only
//!   `Segment10`..`Segment17`); that the rows lie within the segment's 2048 rows; then the
//!   exposure's state. Rows already admitted (pending or durable) are a [`Rejection::Duplicate`],
//!   whether the frame is an exact duplicate or merely overlaps. A rejected frame changes nothing
//!   beyond the deadline [`poll`](CompletenessTracker::poll) that `admit` runs first (in
//!   particular it never opens an exposure nor evicts one).
//! - **Deadlines.** An open exposure's deadline is the time of the last frame admitted for it plus
//!   [`TrackerOptions::incomplete_timeout_ns`] (so a slow but live stream is not cut off; durable
//!   notifications do not move it). [`connection_lost`](CompletenessTracker::connection_lost)
//!   pulls every open exposure's deadline in to `now + reconnect_grace_ns` if that is earlier; a
//!   frame admitted afterwards (the sender reconnected) restores the normal rule. Exposures past
//!   their deadline are declared incomplete by [`poll`](CompletenessTracker::poll) (which `admit`
//!   and `connection_lost` also run first), with reason [`IncompleteReason::Disconnect`] if the
//!   grace set the deadline, [`IncompleteReason::Timeout`] otherwise.
//! - **Bounded open exposures.** At most [`TrackerOptions::max_open_exposures`] are open (16 by
//!   default: ten minutes of LSSTCam visits). A frame of a new exposure when all are in use
//!   evicts the oldest one with no frame waiting to become durable (the oldest of all only if
//!   every one has frames in flight), declared incomplete with [`IncompleteReason::Evicted`].
//! - **Closed exposures.** Complete and incomplete exposures are closed: their row bitmaps are
//!   reused. Their ids are remembered in a FIFO of [`TrackerOptions::closed_history`] entries
//!   (default 64). A frame of a remembered *complete* exposure is a [`Rejection::Duplicate`]. A
//!   frame of a remembered *incomplete* exposure is admitted as a **late** frame
//!   ([`Admitted::is_late`]): the caller may still store it, it is counted, but its rows are not
//!   tracked (a duplicate late frame is not detected) and no second exposure-level event is ever
//!   emitted for that exposure. **Beyond the history** an exposure id is forgotten: a frame for it
//!   opens it again as a new exposure, which will end with a second exposure-level event
//!   (usually an incomplete one). With 64 ids and one exposure per ~40 s, that takes a frame more
//!   than 40 minutes late.
//! - **Abandoned frames.** An admitted frame that will not be written after all (ring refused it,
//!   shutdown) is handed back with [`abandon`](CompletenessTracker::abandon): its rows are
//!   released so a resend is admitted.
//! - **Durable after close.** [`durable`](CompletenessTracker::durable) for a frame whose exposure
//!   was closed meanwhile (declared incomplete while its write was in flight) is counted and
//!   otherwise ignored.
//!
//! # Memory
//!
//! Fixed at construction: for each of the `max_open_exposures` slots, a 2048-bit row bitmap
//! ([`BITMAP_BYTES_PER_SEGMENT`] = 256 bytes) and a 2-byte durable-row count per segment, and a
//! 1-byte durable-segment count per detector; plus small state (the focal plane, a wire-code lookup
//! table of 3.7 KiB, the closed-exposure FIFO). [`CompletenessTracker::memory_bound`] gives the
//! bound; for the full LSSTCam focal plane (3216 segments) with the default 4 slots it is about
//! 3.3 MB (`4 x 3216 x 258` bytes plus under 64 KiB). Events carry at most
//! [`MAX_LISTED_MISSING`] missing segments by name, plus the total count.
//!
//! # Wire codes
//!
//! The reverse of [`raft_wire_code`](crate::protocol::frame::raft_wire_code), `sensor_wire_code` and `segment_wire_code`
//! (`docs/daq-frame-protocol.md`): [`raft_from_wire`], [`sensor_from_wire`],
//! [`segment_index_from_wire`], [`instrument_from_wire`] and [`detector_index_from_wire`].

use std::collections::VecDeque;
use std::fmt;

use crate::protocol::frame::{FrameHeader, FLAG_END_OF_EXPOSURE};
use crate::protocol::geometry::{
    Detector, DetectorKind, Focalplane, Instrument, RaftId, SensorId, CCD_SEGMENT_COUNT, SEGMENT_ROWS,
};

/// Bytes of row bitmap per segment: 2048 rows, one bit each.
pub const BITMAP_BYTES_PER_SEGMENT: usize = SEGMENT_ROWS as usize / 8;
/// Most missing segments an [`IncompleteExposure`] lists by name (the count is always complete).
pub const MAX_LISTED_MISSING: usize = 32;

const ROWS: usize = SEGMENT_ROWS as usize;
const BITMAP_WORDS: usize = ROWS / 64;
type RowBitmap = [u64; BITMAP_WORDS];
const _: () = assert!(std::mem::size_of::<RowBitmap>() == BITMAP_BYTES_PER_SEGMENT);

/// Wire raft codes are `row * 10 + column`, at most 44; sensor codes at most 41.
const WIRE_RAFT_CODES: usize = 45;
const WIRE_SENSOR_CODES: usize = 42;
const NO_DETECTOR: u16 = u16::MAX;

// ---------------------------------------------------------------------------------------------
// Wire codes -> geometry
// ---------------------------------------------------------------------------------------------

/// The camera of a frame's `instrument` byte: 1 LSSTCam, 2 LATISS.
pub fn instrument_from_wire(code: u8) -> Option<Instrument> {
    match code {
        1 => Some(Instrument::LsstCam),
        2 => Some(Instrument::Latiss),
        _ => None,
    }
}

/// The raft of a frame's `raft` byte: its two digits (`22` is `R22`, `0` is `R00`).
pub fn raft_from_wire(code: u8) -> Option<RaftId> {
    let (row, column) = (code / 10, code % 10);
    (row < 5 && column < 5).then(|| RaftId::new(row, column))
}

/// The sensor slot of a frame's `sensor` byte: `11` is `S11`; `30`/`31` are the guiders
/// `SG0`/`SG1`; `40`/`41` the wavefront half-sensors `SW0`/`SW1`.
pub fn sensor_from_wire(code: u8) -> Option<SensorId> {
    match code {
        30 | 31 => Some(SensorId::guider(code - 30)),
        40 | 41 => Some(SensorId::wavefront_half(code - 40)),
        _ => {
            let (row, column) = (code / 10, code % 10);
            (row < 3 && column < 3).then(|| SensorId::science(row, column))
        }
    }
}

/// The position in extension order of a frame's `segment` byte (the EXTNAME digits) for a
/// detector of `kind`: `10`..`17` are 0..7 (`Segment10`..`Segment17`), `7`..`0` are 8..15
/// (`Segment07`..`Segment00`). `None` if the code is not a segment of that kind of detector
/// (wavefront half-sensors have only `Segment10`..`Segment17`).
pub fn segment_index_from_wire(code: u8, kind: DetectorKind) -> Option<usize> {
    let index = match code {
        10..=17 => usize::from(code - 10),
        0..=7 => CCD_SEGMENT_COUNT - 1 - usize::from(code),
        _ => return None,
    };
    (index < kind.segment_count()).then_some(index)
}

/// The index in `focalplane.detectors()` of the detector a frame's `raft` and `sensor` bytes
/// name, if this focal plane has it. (The tracker uses a lookup table built from this.)
pub fn detector_index_from_wire(focalplane: &Focalplane, raft: u8, sensor: u8) -> Option<usize> {
    let (raft, sensor) = (raft_from_wire(raft)?, sensor_from_wire(sensor)?);
    focalplane.iter().position(|detector| detector.raft() == raft && detector.sensor() == sensor)
}

/// Writes a frame's detector as `R22_S11` if its codes decode, else as the raw codes.
struct WireDetector {
    raft: u8,
    sensor: u8,
}

impl fmt::Display for WireDetector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (raft_from_wire(self.raft), sensor_from_wire(self.sensor)) {
            (Some(raft), Some(sensor)) => write!(formatter, "{raft}_{sensor}"),
            _ => write!(formatter, "raft code {} sensor code {}", self.raft, self.sensor),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Options, admission results, events
// ---------------------------------------------------------------------------------------------

/// How long to wait and how much to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerOptions {
    /// An open exposure is declared incomplete this long after the last frame admitted for it
    /// (default 60 s).
    pub incomplete_timeout_ns: u64,
    /// After [`CompletenessTracker::connection_lost`], open exposures get at most this long for
    /// the sender to reconnect and resume (default 5 s).
    pub reconnect_grace_ns: u64,
    /// Exposures tracked at once (default 16); at least 1. Sets the memory (see the module doc):
    /// about 13 MB for the whole LSSTCam focal plane, 66 KB for LATISS.
    pub max_open_exposures: usize,
    /// Closed exposure ids remembered for duplicate and late-frame detection (default 64).
    pub closed_history: usize,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            incomplete_timeout_ns: 60_000_000_000,
            reconnect_grace_ns: 5_000_000_000,
            max_open_exposures: 16,
            closed_history: 64,
        }
    }
}

/// One segment of one detector of this stream's focal plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRef {
    /// Index of the detector in the focal plane's stable order.
    pub detector_index: usize,
    /// The detector (displays as `R22_S11`).
    pub detector: Detector,
    /// Position of the segment in extension order (0 = `Segment10`).
    pub segment_index: usize,
}

impl SegmentRef {
    /// The segment's EXTNAME, e.g. `"Segment10"`.
    pub fn extname(&self) -> &'static str {
        self.detector.segment(self.segment_index).extname()
    }
}

impl fmt::Display for SegmentRef {
    /// `R22_S11 Segment10`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.detector, self.extname())
    }
}

/// Why a frame was not admitted. Nothing in the tracker changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The frame's instrument is not this stream's.
    WrongInstrument {
        /// Exposure id in the frame.
        exposure_id: u64,
        /// The frame's `instrument` byte.
        found: u8,
        /// This stream's camera.
        expected: Instrument,
    },
    /// No such detector in this stream's focal plane (or the codes name no detector at all).
    UnknownDetector {
        /// Exposure id in the frame.
        exposure_id: u64,
        /// The frame's `raft` byte.
        raft: u8,
        /// The frame's `sensor` byte.
        sensor: u8,
    },
    /// The detector has no such segment.
    UnknownSegment {
        /// Exposure id in the frame.
        exposure_id: u64,
        /// The detector.
        detector: Detector,
        /// The frame's `segment` byte (EXTNAME digits).
        segment: u8,
    },
    /// The rows are not within the segment's 2048 (or the frame claims another segment height).
    BadRows {
        /// Exposure id in the frame.
        exposure_id: u64,
        /// The segment.
        segment: SegmentRef,
        /// First row claimed.
        first_row: u16,
        /// Rows claimed.
        row_count: u16,
        /// Segment height claimed.
        segment_rows: u16,
    },
    /// Some of the rows were already admitted (pending or durable), or the exposure is already
    /// complete.
    Duplicate {
        /// Exposure id in the frame.
        exposure_id: u64,
        /// The segment.
        segment: SegmentRef,
        /// First row of the frame.
        first_row: u16,
        /// Rows of the frame.
        row_count: u16,
        /// The exposure was already closed as complete.
        exposure_complete: bool,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::WrongInstrument { exposure_id, found, expected } => {
                let found_name = instrument_from_wire(*found).map_or("unknown", Instrument::display_name);
                write!(
                    formatter,
                    "exposure {exposure_id}: frame from instrument code {found} ({found_name}) on a \
                     {expected} stream"
                )
            }
            Rejection::UnknownDetector { exposure_id, raft, sensor } => write!(
                formatter,
                "exposure {exposure_id}: detector {} is not in this stream's focal plane",
                WireDetector { raft: *raft, sensor: *sensor }
            ),
            Rejection::UnknownSegment { exposure_id, detector, segment } => write!(
                formatter,
                "exposure {exposure_id}: {detector} has no segment Segment{segment:02} ({} segments)",
                detector.segment_count()
            ),
            Rejection::BadRows { exposure_id, segment, first_row, row_count, segment_rows } => {
                let end = u32::from(*first_row) + u32::from(*row_count);
                write!(
                    formatter,
                    "exposure {exposure_id}: {segment} rows {first_row}..{end} ({row_count} rows of a \
                     claimed {segment_rows}) are not within the segment's {SEGMENT_ROWS} rows"
                )
            }
            Rejection::Duplicate { exposure_id, segment, first_row, row_count, exposure_complete } => {
                let end = u32::from(*first_row) + u32::from(*row_count);
                if *exposure_complete {
                    write!(
                        formatter,
                        "exposure {exposure_id}: duplicate {segment} rows {first_row}..{end}: the \
                         exposure is already complete"
                    )
                } else {
                    write!(
                        formatter,
                        "exposure {exposure_id}: duplicate {segment} rows {first_row}..{end}: some of \
                         these rows were already received"
                    )
                }
            }
        }
    }
}

impl std::error::Error for Rejection {}

/// A frame the tracker accepted: write it, then hand this back to
/// [`CompletenessTracker::durable`] (it is consumed, so a frame cannot be made durable twice).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an admitted frame must be reported durable once written"]
pub struct Admitted {
    exposure_id: u64,
    segment: SegmentRef,
    global_segment: u32,
    first_row: u16,
    row_count: u16,
    frame_sequence: u64,
    /// `Some((slot, generation))` for an open exposure, `None` for a late frame.
    slot: Option<(usize, u64)>,
}

impl Admitted {
    /// The frame's exposure id.
    pub fn exposure_id(&self) -> u64 {
        self.exposure_id
    }

    /// The frame's segment.
    pub fn segment(&self) -> SegmentRef {
        self.segment
    }

    /// First row and row count of the frame.
    pub fn rows(&self) -> (u16, u16) {
        (self.first_row, self.row_count)
    }

    /// The sender's frame counter.
    pub fn frame_sequence(&self) -> u64 {
        self.frame_sequence
    }

    /// The frame belongs to an exposure already declared incomplete: store it if wanted, but it
    /// changes no completeness state.
    pub fn is_late(&self) -> bool {
        self.slot.is_none()
    }
}

/// Why an exposure was declared incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncompleteReason {
    /// No frame for [`TrackerOptions::incomplete_timeout_ns`].
    Timeout,
    /// The connection was lost and no frame came within [`TrackerOptions::reconnect_grace_ns`].
    Disconnect,
    /// Closed to make room for a newer exposure ([`TrackerOptions::max_open_exposures`]).
    Evicted,
}

impl fmt::Display for IncompleteReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            IncompleteReason::Timeout => "timeout",
            IncompleteReason::Disconnect => "disconnect",
            IncompleteReason::Evicted => "evicted",
        })
    }
}

/// An exposure declared incomplete and closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteExposure {
    /// The exposure.
    pub exposure_id: u64,
    /// Why it was closed.
    pub reason: IncompleteReason,
    /// Segments whose rows are all durable.
    pub durable_segments: usize,
    /// Segments of this stream's focal plane.
    pub expected_segments: usize,
    /// The first (in focal-plane and extension order) at most [`MAX_LISTED_MISSING`] segments not
    /// all durable (never received, partly received, or written but not yet durable).
    pub missing: Vec<SegmentRef>,
    /// All segments not all durable: `expected_segments - durable_segments`.
    pub missing_count: usize,
    /// Frames admitted whose [`CompletenessTracker::durable`] had not come yet.
    pub pending_frames: u64,
    /// A frame with [`FLAG_END_OF_EXPOSURE`] was seen.
    pub end_of_exposure_seen: bool,
}

impl fmt::Display for IncompleteExposure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "exposure {} incomplete ({}): {}/{} segments durable, {} missing",
            self.exposure_id, self.reason, self.durable_segments, self.expected_segments, self.missing_count
        )?;
        for (position, segment) in self.missing.iter().enumerate() {
            formatter.write_str(if position == 0 { ": " } else { ", " })?;
            write!(formatter, "{segment}")?;
        }
        if self.missing.len() < self.missing_count {
            write!(formatter, ", and {} more", self.missing_count - self.missing.len())?;
        }
        Ok(())
    }
}

/// What the tracker reports, through the `out` callback of its methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletenessEvent {
    /// All 2048 rows of a segment are durable.
    SegmentDurable {
        /// The exposure.
        exposure_id: u64,
        /// The segment.
        segment: SegmentRef,
    },
    /// All segments of a detector are durable: its raw file can be assembled.
    DetectorComplete {
        /// The exposure.
        exposure_id: u64,
        /// Index of the detector in the focal plane's stable order.
        detector_index: usize,
        /// The detector.
        detector: Detector,
    },
    /// Every detector of this stream's focal plane is complete. The exposure is closed.
    ExposureComplete {
        /// The exposure.
        exposure_id: u64,
        /// Detectors complete (all of the focal plane's).
        detectors: usize,
        /// Segments durable (all of the focal plane's).
        segments: usize,
        /// A frame with [`FLAG_END_OF_EXPOSURE`] was seen.
        end_of_exposure_seen: bool,
    },
    /// The exposure is closed without being complete; no further exposure-level event follows
    /// for it (see the module doc for the closed-exposure history).
    ExposureIncomplete(IncompleteExposure),
}

/// One open exposure, for the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenExposureSummary {
    /// The exposure.
    pub exposure_id: u64,
    /// Segments whose rows are all durable.
    pub durable_segments: usize,
    /// Segments of this stream's focal plane.
    pub expected_segments: usize,
    /// Time since its first frame was admitted.
    pub age_ns: u64,
    /// When it will be declared incomplete unless a frame comes.
    pub deadline_ns: u64,
    /// Frames admitted whose durable notification has not come yet.
    pub pending_frames: u64,
    /// A frame with [`FLAG_END_OF_EXPOSURE`] was seen.
    pub end_of_exposure_seen: bool,
}

/// Running totals since construction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    /// Frames admitted for open exposures.
    pub frames_admitted: u64,
    /// Late frames admitted (exposure already declared incomplete).
    pub frames_late: u64,
    /// Durable notifications for frames of open exposures.
    pub frames_durable: u64,
    /// Durable notifications for late frames or for frames whose exposure closed meanwhile.
    pub frames_durable_after_close: u64,
    /// Admitted frames given back with [`CompletenessTracker::abandon`].
    pub frames_abandoned: u64,
    /// [`Rejection::WrongInstrument`].
    pub rejected_wrong_instrument: u64,
    /// [`Rejection::UnknownDetector`].
    pub rejected_unknown_detector: u64,
    /// [`Rejection::UnknownSegment`].
    pub rejected_unknown_segment: u64,
    /// [`Rejection::BadRows`].
    pub rejected_bad_rows: u64,
    /// [`Rejection::Duplicate`].
    pub rejected_duplicate: u64,
    /// Exposures completed.
    pub exposures_complete: u64,
    /// Exposures declared incomplete.
    pub exposures_incomplete: u64,
}

// ---------------------------------------------------------------------------------------------
// The tracker
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Complete,
    Incomplete,
}

#[derive(Debug, Clone, Copy)]
struct OpenExposure {
    exposure_id: u64,
    /// Opening order: the smallest is evicted first; also tells `Admitted`s of a reused slot apart.
    generation: u64,
    first_frame_ns: u64,
    deadline_ns: u64,
    deadline_is_disconnect: bool,
    frames_admitted: u64,
    frames_durable: u64,
    durable_segments: usize,
    complete_detectors: usize,
    end_of_exposure_seen: bool,
}

/// Per-exposure, per-detector completeness for one ingest stream. See the module doc.
#[derive(Debug)]
pub struct CompletenessTracker {
    focalplane: Focalplane,
    instrument: Instrument,
    options: TrackerOptions,
    segment_count: usize,
    /// First global segment index of each detector.
    segment_base: Vec<u32>,
    /// `raft_code * WIRE_SENSOR_CODES + sensor_code` -> detector index, or [`NO_DETECTOR`].
    detector_by_wire: Vec<u16>,
    slots: Vec<Option<OpenExposure>>,
    /// `slot * segment_count + global_segment`: rows admitted (pending or durable).
    rows_admitted: Vec<RowBitmap>,
    /// `slot * segment_count + global_segment`: rows durable.
    rows_durable: Vec<u16>,
    /// `slot * detector_count + detector`: segments durable.
    detector_durable_segments: Vec<u8>,
    closed: VecDeque<(u64, Closed)>,
    next_generation: u64,
    counters: TrackerCounters,
}

impl CompletenessTracker {
    /// A tracker for this stream's detectors. Allocates all its memory now
    /// ([`CompletenessTracker::memory_bound`]).
    ///
    /// # Panics
    ///
    /// If `options.max_open_exposures` is 0 or the focal plane is empty.
    pub fn new(focalplane: Focalplane, options: TrackerOptions) -> CompletenessTracker {
        assert!(options.max_open_exposures > 0, "max_open_exposures must be at least 1");
        assert!(focalplane.detector_count() > 0, "the focal plane has no detector");
        let segment_count = focalplane.segment_count();
        let detector_count = focalplane.detector_count();
        let mut segment_base = Vec::with_capacity(detector_count);
        let mut detector_by_wire = vec![NO_DETECTOR; WIRE_RAFT_CODES * WIRE_SENSOR_CODES];
        let mut base = 0u32;
        for (index, detector) in focalplane.iter().enumerate() {
            segment_base.push(base);
            base += detector.segment_count() as u32;
            let raft = usize::from(detector.raft().row() * 10 + detector.raft().column());
            detector_by_wire[raft * WIRE_SENSOR_CODES + usize::from(sensor_code(detector.sensor()))] =
                u16::try_from(index).expect("fewer than 65535 detectors");
        }
        let slots = options.max_open_exposures;
        CompletenessTracker {
            instrument: focalplane.instrument(),
            segment_count,
            segment_base,
            detector_by_wire,
            slots: vec![None; slots],
            rows_admitted: vec![[0; BITMAP_WORDS]; slots * segment_count],
            rows_durable: vec![0; slots * segment_count],
            detector_durable_segments: vec![0; slots * detector_count],
            closed: VecDeque::with_capacity(options.closed_history),
            next_generation: 0,
            counters: TrackerCounters::default(),
            focalplane,
            options,
        }
    }

    /// The most memory a tracker for this focal plane and these options holds:
    /// `max_open_exposures x (segments x 258 + detectors)` bytes plus fixed state (under 64 KiB
    /// for LSSTCam with the defaults).
    pub fn memory_bound(focalplane: &Focalplane, options: &TrackerOptions) -> usize {
        let slots = options.max_open_exposures;
        slots * focalplane.segment_count() * (BITMAP_BYTES_PER_SEGMENT + 2)
            + slots * (focalplane.detector_count() + std::mem::size_of::<Option<OpenExposure>>())
            + focalplane.detector_count() * (std::mem::size_of::<Detector>() + 4)
            + WIRE_RAFT_CODES * WIRE_SENSOR_CODES * 2
            + options.closed_history * std::mem::size_of::<(u64, Closed)>()
            + std::mem::size_of::<CompletenessTracker>()
    }

    /// The memory this tracker holds now, from its allocations' capacities (constant after
    /// construction).
    pub fn memory_bytes(&self) -> usize {
        self.rows_admitted.capacity() * std::mem::size_of::<RowBitmap>()
            + self.rows_durable.capacity() * 2
            + self.detector_durable_segments.capacity()
            + self.slots.capacity() * std::mem::size_of::<Option<OpenExposure>>()
            + std::mem::size_of_val(self.focalplane.detectors())
            + self.segment_base.capacity() * 4
            + self.detector_by_wire.capacity() * 2
            + self.closed.capacity() * std::mem::size_of::<(u64, Closed)>()
            + std::mem::size_of::<CompletenessTracker>()
    }

    /// This stream's detectors.
    pub fn focalplane(&self) -> &Focalplane {
        &self.focalplane
    }

    /// The options in force.
    pub fn options(&self) -> &TrackerOptions {
        &self.options
    }

    /// Running totals.
    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    /// Decides whether to write a frame whose header passed [`FrameHeader::parse`]; see the
    /// module doc for the checks. First runs [`poll`](Self::poll) (an overdue exposure is
    /// declared incomplete, not left to be evicted). Opening a new exposure with every slot in use
    /// evicts the oldest open exposure, reported through `out`.
    pub fn admit(
        &mut self,
        header: &FrameHeader,
        now_ns: u64,
        out: &mut impl FnMut(CompletenessEvent),
    ) -> Result<Admitted, Rejection> {
        self.poll(now_ns, out);
        let result = self.check_and_admit(header, now_ns, out);
        if let Err(rejection) = &result {
            let counter = match rejection {
                Rejection::WrongInstrument { .. } => &mut self.counters.rejected_wrong_instrument,
                Rejection::UnknownDetector { .. } => &mut self.counters.rejected_unknown_detector,
                Rejection::UnknownSegment { .. } => &mut self.counters.rejected_unknown_segment,
                Rejection::BadRows { .. } => &mut self.counters.rejected_bad_rows,
                Rejection::Duplicate { .. } => &mut self.counters.rejected_duplicate,
            };
            *counter += 1;
        }
        result
    }

    fn check_and_admit(
        &mut self,
        header: &FrameHeader,
        now_ns: u64,
        out: &mut impl FnMut(CompletenessEvent),
    ) -> Result<Admitted, Rejection> {
        let exposure_id = header.exposure_id.get();
        if instrument_from_wire(header.instrument) != Some(self.instrument) {
            return Err(Rejection::WrongInstrument {
                exposure_id,
                found: header.instrument,
                expected: self.instrument,
            });
        }
        let (raft, sensor) = (header.raft, header.sensor);
        let detector_index = self.lookup_detector(raft, sensor).ok_or(Rejection::UnknownDetector {
            exposure_id,
            raft,
            sensor,
        })?;
        let detector = self.focalplane.detectors()[detector_index];
        let segment_index = segment_index_from_wire(header.segment, detector.kind())
            .ok_or(Rejection::UnknownSegment { exposure_id, detector, segment: header.segment })?;
        let segment = SegmentRef { detector_index, detector, segment_index };
        let (first_row, row_count) = (header.first_row.get(), header.row_count.get());
        let end = usize::from(first_row) + usize::from(row_count);
        if row_count == 0 || end > ROWS || u32::from(header.segment_rows.get()) != SEGMENT_ROWS {
            return Err(Rejection::BadRows {
                exposure_id,
                segment,
                first_row,
                row_count,
                segment_rows: header.segment_rows.get(),
            });
        }
        let global_segment = self.segment_base[detector_index] + segment_index as u32;
        let end_of_exposure = header.flags & FLAG_END_OF_EXPOSURE != 0;
        let mut admitted = Admitted {
            exposure_id,
            segment,
            global_segment,
            first_row,
            row_count,
            frame_sequence: header.frame_sequence.get(),
            slot: None,
        };

        let slot = match self.open_slot(exposure_id) {
            Some(slot) => {
                let bitmap = &self.rows_admitted[slot * self.segment_count + global_segment as usize];
                if bitmap_any(bitmap, usize::from(first_row), end) {
                    return Err(Rejection::Duplicate {
                        exposure_id,
                        segment,
                        first_row,
                        row_count,
                        exposure_complete: false,
                    });
                }
                slot
            }
            None => match self.closed.iter().find(|(id, _)| *id == exposure_id).map(|(_, closed)| *closed) {
                Some(Closed::Complete) => {
                    return Err(Rejection::Duplicate {
                        exposure_id,
                        segment,
                        first_row,
                        row_count,
                        exposure_complete: true,
                    });
                }
                Some(Closed::Incomplete) => {
                    self.counters.frames_late += 1;
                    return Ok(admitted);
                }
                None => self.open(exposure_id, now_ns, out),
            },
        };

        let index = slot * self.segment_count + global_segment as usize;
        bitmap_set(&mut self.rows_admitted[index], usize::from(first_row), end);
        let state = self.slots[slot].as_mut().expect("slot is open");
        state.frames_admitted += 1;
        state.deadline_ns = now_ns.saturating_add(self.options.incomplete_timeout_ns);
        state.deadline_is_disconnect = false;
        state.end_of_exposure_seen |= end_of_exposure;
        self.counters.frames_admitted += 1;
        admitted.slot = Some((slot, state.generation));
        Ok(admitted)
    }

    /// Records that an admitted frame is on disk (after its `fdatasync`), and reports the
    /// segment, detector and exposure completions this brings.
    pub fn durable(&mut self, admitted: Admitted, now_ns: u64, out: &mut impl FnMut(CompletenessEvent)) {
        let _ = now_ns; // Durability does not move deadlines (see the module doc).
        let Some((slot, generation)) = admitted.slot else {
            self.counters.frames_durable_after_close += 1;
            return;
        };
        let Some(state) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            self.counters.frames_durable_after_close += 1;
            return;
        };
        if state.generation != generation || state.exposure_id != admitted.exposure_id {
            self.counters.frames_durable_after_close += 1;
            return;
        }
        self.counters.frames_durable += 1;
        state.frames_durable += 1;
        let exposure_id = admitted.exposure_id;
        let index = slot * self.segment_count + admitted.global_segment as usize;
        self.rows_durable[index] += admitted.row_count;
        debug_assert!(usize::from(self.rows_durable[index]) <= ROWS, "admitted rows never overlap");
        if usize::from(self.rows_durable[index]) != ROWS {
            return;
        }
        state.durable_segments += 1;
        let segment = admitted.segment;
        out(CompletenessEvent::SegmentDurable { exposure_id, segment });
        let detector_slot = slot * self.focalplane.detector_count() + segment.detector_index;
        self.detector_durable_segments[detector_slot] += 1;
        if usize::from(self.detector_durable_segments[detector_slot]) != segment.detector.segment_count() {
            return;
        }
        state.complete_detectors += 1;
        out(CompletenessEvent::DetectorComplete {
            exposure_id,
            detector_index: segment.detector_index,
            detector: segment.detector,
        });
        if state.complete_detectors != self.focalplane.detector_count() {
            return;
        }
        let end_of_exposure_seen = state.end_of_exposure_seen;
        let segments = state.durable_segments;
        self.close(slot, Closed::Complete);
        self.counters.exposures_complete += 1;
        out(CompletenessEvent::ExposureComplete {
            exposure_id,
            detectors: self.focalplane.detector_count(),
            segments,
            end_of_exposure_seen,
        });
    }

    /// An admitted frame will not be written after all (the ring refused it, or the ingest is
    /// shutting down): its rows are released, so a resend is admitted rather than taken for a
    /// duplicate. Emits nothing and does not move deadlines. For a late frame, or one whose
    /// exposure closed meanwhile, it only counts.
    pub fn abandon(&mut self, admitted: Admitted) {
        self.counters.frames_abandoned += 1;
        let Some((slot, generation)) = admitted.slot else { return };
        let Some(state) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return };
        if state.generation != generation || state.exposure_id != admitted.exposure_id {
            return;
        }
        state.frames_admitted -= 1;
        let index = slot * self.segment_count + admitted.global_segment as usize;
        let start = usize::from(admitted.first_row);
        bitmap_clear(&mut self.rows_admitted[index], start, start + usize::from(admitted.row_count));
    }

    /// The stream's connection is gone: every open exposure must see a frame within
    /// [`TrackerOptions::reconnect_grace_ns`] (if that is sooner than its deadline) or be declared
    /// incomplete with [`IncompleteReason::Disconnect`]. Then runs [`poll`](Self::poll).
    pub fn connection_lost(&mut self, now_ns: u64, out: &mut impl FnMut(CompletenessEvent)) {
        let grace_deadline = now_ns.saturating_add(self.options.reconnect_grace_ns);
        for state in self.slots.iter_mut().flatten() {
            if grace_deadline < state.deadline_ns {
                state.deadline_ns = grace_deadline;
                state.deadline_is_disconnect = true;
            }
        }
        self.poll(now_ns, out);
    }

    /// Declares every open exposure whose deadline is at or before `now_ns` incomplete, oldest
    /// first, and closes it.
    pub fn poll(&mut self, now_ns: u64, out: &mut impl FnMut(CompletenessEvent)) {
        loop {
            let overdue = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, state)| state.map(|state| (slot, state)))
                .filter(|(_, state)| state.deadline_ns <= now_ns)
                .min_by_key(|(_, state)| state.generation);
            let Some((slot, state)) = overdue else { break };
            let reason = if state.deadline_is_disconnect {
                IncompleteReason::Disconnect
            } else {
                IncompleteReason::Timeout
            };
            self.declare_incomplete(slot, reason, out);
        }
    }

    /// The open exposures, oldest first, for the console.
    pub fn open_exposures(&self, now_ns: u64) -> Vec<OpenExposureSummary> {
        let mut open: Vec<&OpenExposure> = self.slots.iter().flatten().collect();
        open.sort_by_key(|state| state.generation);
        open.into_iter()
            .map(|state| OpenExposureSummary {
                exposure_id: state.exposure_id,
                durable_segments: state.durable_segments,
                expected_segments: self.segment_count,
                age_ns: now_ns.saturating_sub(state.first_frame_ns),
                deadline_ns: state.deadline_ns,
                pending_frames: state.frames_admitted - state.frames_durable,
                end_of_exposure_seen: state.end_of_exposure_seen,
            })
            .collect()
    }

    fn lookup_detector(&self, raft: u8, sensor: u8) -> Option<usize> {
        let (raft, sensor) = (usize::from(raft), usize::from(sensor));
        if raft >= WIRE_RAFT_CODES || sensor >= WIRE_SENSOR_CODES {
            return None;
        }
        let index = self.detector_by_wire[raft * WIRE_SENSOR_CODES + sensor];
        (index != NO_DETECTOR).then_some(usize::from(index))
    }

    fn open_slot(&self, exposure_id: u64) -> Option<usize> {
        self.slots.iter().position(|state| state.is_some_and(|state| state.exposure_id == exposure_id))
    }

    /// Opens `exposure_id` in a free slot, evicting the oldest open exposure if there is none.
    fn open(&mut self, exposure_id: u64, now_ns: u64, out: &mut impl FnMut(CompletenessEvent)) -> usize {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                // The oldest exposure with nothing waiting to become durable; only if every open
                // exposure has frames in flight, the oldest of all.
                let (oldest, _) = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, state)| {
                        state.map(|state| {
                            (slot, (state.frames_admitted != state.frames_durable, state.generation))
                        })
                    })
                    .min_by_key(|(_, key)| *key)
                    .expect("every slot is in use");
                self.declare_incomplete(oldest, IncompleteReason::Evicted, out);
                oldest
            }
        };
        let segments = slot * self.segment_count..(slot + 1) * self.segment_count;
        self.rows_admitted[segments.clone()].fill([0; BITMAP_WORDS]);
        self.rows_durable[segments].fill(0);
        let detector_count = self.focalplane.detector_count();
        self.detector_durable_segments[slot * detector_count..(slot + 1) * detector_count].fill(0);
        self.slots[slot] = Some(OpenExposure {
            exposure_id,
            generation: self.next_generation,
            first_frame_ns: now_ns,
            deadline_ns: now_ns.saturating_add(self.options.incomplete_timeout_ns),
            deadline_is_disconnect: false,
            frames_admitted: 0,
            frames_durable: 0,
            durable_segments: 0,
            complete_detectors: 0,
            end_of_exposure_seen: false,
        });
        self.next_generation += 1;
        slot
    }

    fn declare_incomplete(
        &mut self,
        slot: usize,
        reason: IncompleteReason,
        out: &mut impl FnMut(CompletenessEvent),
    ) {
        let state = self.slots[slot].expect("slot is open");
        let durable = &self.rows_durable[slot * self.segment_count..(slot + 1) * self.segment_count];
        let mut missing = Vec::new();
        let mut missing_count = 0;
        for (detector_index, detector) in self.focalplane.iter().enumerate() {
            let base = self.segment_base[detector_index] as usize;
            for segment_index in 0..detector.segment_count() {
                if usize::from(durable[base + segment_index]) == ROWS {
                    continue;
                }
                missing_count += 1;
                if missing.len() < MAX_LISTED_MISSING {
                    missing.push(SegmentRef { detector_index, detector: *detector, segment_index });
                }
            }
        }
        debug_assert_eq!(missing_count, self.segment_count - state.durable_segments);
        self.close(slot, Closed::Incomplete);
        self.counters.exposures_incomplete += 1;
        out(CompletenessEvent::ExposureIncomplete(IncompleteExposure {
            exposure_id: state.exposure_id,
            reason,
            durable_segments: state.durable_segments,
            expected_segments: self.segment_count,
            missing,
            missing_count,
            pending_frames: state.frames_admitted - state.frames_durable,
            end_of_exposure_seen: state.end_of_exposure_seen,
        }));
    }

    fn close(&mut self, slot: usize, how: Closed) {
        let state = self.slots[slot].take().expect("slot is open");
        if self.options.closed_history == 0 {
            return;
        }
        if self.closed.len() == self.options.closed_history {
            self.closed.pop_front();
        }
        self.closed.push_back((state.exposure_id, how));
    }
}

/// The wire code of a sensor slot (the forward of [`sensor_from_wire`]), from its name's digits.
fn sensor_code(sensor: SensorId) -> u8 {
    let name = sensor.name().as_bytes();
    let digit = |index: usize| name[index] - b'0';
    match sensor.kind() {
        DetectorKind::Science => digit(1) * 10 + digit(2),
        DetectorKind::Guider => 30 + digit(2),
        DetectorKind::WavefrontHalf => 40 + digit(2),
    }
}

/// The mask of rows `start..end` (already clipped to the segment) within 64-row word `word`.
fn word_mask(word: usize, start: usize, end: usize) -> u64 {
    let low = start.max(word * 64) - word * 64;
    let high = end.min(word * 64 + 64) - word * 64;
    let below_high = if high == 64 { u64::MAX } else { (1u64 << high) - 1 };
    below_high & !((1u64 << low) - 1)
}

fn bitmap_any(bitmap: &RowBitmap, start: usize, end: usize) -> bool {
    (start / 64..end.div_ceil(64)).any(|word| bitmap[word] & word_mask(word, start, end) != 0)
}

fn bitmap_set(bitmap: &mut RowBitmap, start: usize, end: usize) {
    let words = start / 64..end.div_ceil(64);
    for (bits, word) in bitmap[words.clone()].iter_mut().zip(words) {
        *bits |= word_mask(word, start, end);
    }
}

fn bitmap_clear(bitmap: &mut RowBitmap, start: usize, end: usize) {
    let words = start / 64..end.div_ceil(64);
    for (bits, word) in bitmap[words.clone()].iter_mut().zip(words) {
        *bits &= !word_mask(word, start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{
        raft_wire_code, segment_wire_code, sensor_wire_code, FrameFields, InstrumentCode, FLAG_END_OF_SEGMENT,
    };
    use crate::protocol::geometry::{LSSTCAM_SEGMENT_COUNT, SEGMENT_COLUMNS};

    const EXPOSURE: u64 = 2025041500060;
    const SECOND: u64 = 1_000_000_000;
    const T0: u64 = 1_000 * SECOND;

    fn zeros() -> &'static [u8] {
        static ZEROS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        ZEROS.get_or_init(|| vec![0; ROWS * SEGMENT_COLUMNS as usize * 4])
    }

    /// A frame of `detector`'s segment at `segment_index` (extension order).
    fn frame(
        instrument: Instrument,
        detector: &Detector,
        segment_index: usize,
        exposure_id: u64,
        first_row: u16,
        row_count: u16,
    ) -> FrameHeader {
        let segment = detector.segment(segment_index);
        let fields = FrameFields {
            instrument: match instrument {
                Instrument::LsstCam => InstrumentCode::LsstCam,
                Instrument::Latiss => InstrumentCode::Latiss,
            },
            flags: if usize::from(first_row + row_count) == ROWS { FLAG_END_OF_SEGMENT } else { 0 },
            raft: raft_wire_code(detector.raft()),
            sensor: sensor_wire_code(detector.sensor()),
            segment: segment_wire_code(&segment),
            segment_columns: SEGMENT_COLUMNS as u16,
            segment_rows: SEGMENT_ROWS as u16,
            first_row,
            row_count,
            exposure_id,
            frame_sequence: 1,
            readout_ns: 0,
        };
        let pixels = &zeros()[..usize::from(row_count) * SEGMENT_COLUMNS as usize * 4];
        FrameHeader::new(&fields, pixels)
    }

    /// Every frame of one exposure of `focalplane`, `parts` frames per segment, in order.
    fn exposure_frames(focalplane: &Focalplane, exposure_id: u64, parts: u16) -> Vec<FrameHeader> {
        let rows = SEGMENT_ROWS as u16 / parts;
        let mut frames = Vec::new();
        for detector in focalplane {
            for segment in 0..detector.segment_count() {
                for part in 0..parts {
                    frames.push(frame(
                        focalplane.instrument(),
                        detector,
                        segment,
                        exposure_id,
                        part * rows,
                        rows,
                    ));
                }
            }
        }
        frames
    }

    fn latiss_tracker() -> CompletenessTracker {
        CompletenessTracker::new(Focalplane::latiss(), TrackerOptions::default())
    }

    /// Admits and makes durable each frame at once; returns the events.
    fn feed(
        tracker: &mut CompletenessTracker,
        frames: &[FrameHeader],
        now_ns: u64,
    ) -> Vec<CompletenessEvent> {
        let mut events = Vec::new();
        for header in frames {
            let admitted = tracker.admit(header, now_ns, &mut |e| events.push(e)).expect("admitted");
            tracker.durable(admitted, now_ns, &mut |e| events.push(e));
        }
        events
    }

    fn count(events: &[CompletenessEvent]) -> (usize, usize, usize, usize) {
        let mut counts = (0, 0, 0, 0);
        for event in events {
            match event {
                CompletenessEvent::SegmentDurable { .. } => counts.0 += 1,
                CompletenessEvent::DetectorComplete { .. } => counts.1 += 1,
                CompletenessEvent::ExposureComplete { .. } => counts.2 += 1,
                CompletenessEvent::ExposureIncomplete(_) => counts.3 += 1,
            }
        }
        counts
    }

    fn incomplete(events: &[CompletenessEvent]) -> Vec<&IncompleteExposure> {
        events
            .iter()
            .filter_map(|event| match event {
                CompletenessEvent::ExposureIncomplete(incomplete) => Some(incomplete),
                _ => None,
            })
            .collect()
    }

    /// Seeded xorshift64 Fisher-Yates shuffle.
    fn shuffle<T>(items: &mut [T], mut seed: u64) {
        for i in (1..items.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            items.swap(i, (seed % (i as u64 + 1)) as usize);
        }
    }

    #[test]
    fn wire_codes_round_trip_every_detector_and_segment() {
        for focalplane in [Focalplane::lsstcam(), Focalplane::latiss()] {
            for (index, detector) in focalplane.iter().enumerate() {
                let (raft, sensor) = (raft_wire_code(detector.raft()), sensor_wire_code(detector.sensor()));
                assert_eq!(raft_from_wire(raft), Some(detector.raft()));
                assert_eq!(sensor_from_wire(sensor), Some(detector.sensor()));
                assert_eq!(detector_index_from_wire(&focalplane, raft, sensor), Some(index), "{detector}");
                for segment in detector.segments() {
                    let code = segment_wire_code(&segment);
                    assert_eq!(segment_index_from_wire(code, detector.kind()), Some(segment.index()));
                }
            }
        }
        assert_eq!(raft_from_wire(22), Some(RaftId::new(2, 2)));
        assert_eq!(sensor_from_wire(31), Some(SensorId::guider(1)));
        assert_eq!(sensor_from_wire(40), Some(SensorId::wavefront_half(0)));
        assert_eq!(segment_index_from_wire(7, DetectorKind::Science), Some(8));
        assert_eq!(segment_index_from_wire(0, DetectorKind::Science), Some(15));
        for bad in [5, 25, 50, 99, 255] {
            assert_eq!(raft_from_wire(bad), None, "{bad}");
        }
        for bad in [3, 13, 23, 30 + 2, 39, 42, 255] {
            assert_eq!(sensor_from_wire(bad), None, "{bad}");
        }
        for bad in [8, 9, 18, 255] {
            assert_eq!(segment_index_from_wire(bad, DetectorKind::Science), None, "{bad}");
        }
        assert_eq!(segment_index_from_wire(7, DetectorKind::WavefrontHalf), None);
        assert_eq!(instrument_from_wire(1), Some(Instrument::LsstCam));
        assert_eq!(instrument_from_wire(2), Some(Instrument::Latiss));
        assert_eq!(instrument_from_wire(3), None);
    }

    #[test]
    fn latiss_exposure_in_order_completes_every_segment_detector_and_the_exposure() {
        let mut tracker = latiss_tracker();
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 4);
        assert_eq!(frames.len(), 64);
        let events = feed(&mut tracker, &frames, T0);
        assert_eq!(count(&events), (16, 1, 1, 0));
        assert_eq!(
            events.last(),
            Some(&CompletenessEvent::ExposureComplete {
                exposure_id: EXPOSURE,
                detectors: 1,
                segments: 16,
                end_of_exposure_seen: false,
            })
        );
        match &events[0] {
            CompletenessEvent::SegmentDurable { exposure_id, segment } => {
                assert_eq!(*exposure_id, EXPOSURE);
                assert_eq!(segment.to_string(), "R00_S00 Segment10");
            }
            other => panic!("first event {other:?}"),
        }
        assert!(tracker.open_exposures(T0).is_empty());
        assert_eq!(tracker.counters().exposures_complete, 1);
    }

    #[test]
    fn latiss_exposure_in_random_order_with_writes_in_flight_completes_the_same() {
        let mut tracker = latiss_tracker();
        let mut frames = exposure_frames(tracker.focalplane(), EXPOSURE, 4);
        shuffle(&mut frames, 0x5EED_1234_ABCD_0001);
        // Every frame admitted first, durable later in another shuffled order.
        let mut events = Vec::new();
        let mut admitted: Vec<Admitted> = frames
            .iter()
            .map(|header| tracker.admit(header, T0, &mut |e| events.push(e)).expect("admitted"))
            .collect();
        assert!(events.is_empty());
        let summary = tracker.open_exposures(T0 + SECOND);
        assert_eq!(summary.len(), 1);
        assert_eq!((summary[0].durable_segments, summary[0].expected_segments), (0, 16));
        assert_eq!((summary[0].age_ns, summary[0].pending_frames), (SECOND, 64));
        shuffle(&mut admitted, 42);
        for frame in admitted {
            tracker.durable(frame, T0 + SECOND, &mut |e| events.push(e));
        }
        assert_eq!(count(&events), (16, 1, 1, 0));
        assert!(matches!(events.last(), Some(CompletenessEvent::ExposureComplete { .. })));
    }

    #[test]
    fn duplicate_frames_are_rejected_while_pending_and_once_durable() {
        let mut tracker = latiss_tracker();
        let detector = Focalplane::latiss().detectors()[0];
        let header = frame(Instrument::Latiss, &detector, 3, EXPOSURE, 512, 512);
        let mut events = Vec::new();
        let first = tracker.admit(&header, T0, &mut |e| events.push(e)).unwrap();
        let pending = tracker.admit(&header, T0, &mut |e| events.push(e)).unwrap_err();
        assert!(matches!(pending, Rejection::Duplicate { exposure_complete: false, .. }), "{pending}");
        let message = pending.to_string();
        assert!(message.contains(&EXPOSURE.to_string()), "{message}");
        assert!(message.contains("R00_S00 Segment13 rows 512..1024"), "{message}");
        tracker.durable(first, T0, &mut |e| events.push(e));
        let durable = tracker.admit(&header, T0, &mut |e| events.push(e)).unwrap_err();
        assert!(matches!(durable, Rejection::Duplicate { .. }), "{durable}");
        assert_eq!(tracker.counters().rejected_duplicate, 2);
        assert_eq!(tracker.counters().frames_admitted, 1);
        assert!(events.is_empty());
    }

    #[test]
    fn a_frame_of_a_complete_exposure_is_a_duplicate() {
        let mut tracker = latiss_tracker();
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 1);
        feed(&mut tracker, &frames, T0);
        let rejection = tracker.admit(&frames[5], T0, &mut |_| {}).unwrap_err();
        assert!(matches!(rejection, Rejection::Duplicate { exposure_complete: true, .. }), "{rejection}");
        assert!(rejection.to_string().contains("already complete"), "{rejection}");
        assert!(tracker.open_exposures(T0).is_empty(), "a rejected frame opens nothing");
    }

    #[test]
    fn overlapping_rows_are_rejected() {
        let mut tracker = latiss_tracker();
        let detector = Focalplane::latiss().detectors()[0];
        let mut events = Vec::new();
        let _pending = tracker
            .admit(&frame(Instrument::Latiss, &detector, 0, EXPOSURE, 100, 50), T0, &mut |e| events.push(e))
            .unwrap();
        for (first, count) in [(149, 10), (90, 11), (120, 1), (0, 2048)] {
            let header = frame(Instrument::Latiss, &detector, 0, EXPOSURE, first, count);
            let rejection = tracker.admit(&header, T0, &mut |e| events.push(e)).unwrap_err();
            assert!(matches!(rejection, Rejection::Duplicate { .. }), "{first}+{count}: {rejection}");
        }
        // Adjacent rows on both sides and the same rows of another segment are fine.
        for (segment, first, count) in [(0, 150, 10), (0, 64, 36), (1, 100, 50)] {
            let header = frame(Instrument::Latiss, &detector, segment, EXPOSURE, first, count);
            let _pending = tracker.admit(&header, T0, &mut |e| events.push(e)).expect("no overlap");
        }
        assert!(events.is_empty());
    }

    #[test]
    fn unknown_detector_wrong_instrument_and_bad_rows_are_rejected_by_name() {
        let subset = Focalplane::lsstcam_subset(&["R22"]).unwrap();
        let mut tracker = CompletenessTracker::new(subset, TrackerOptions::default());
        let full = Focalplane::lsstcam();
        let r23_s11 = full.detector(RaftId::new(2, 3), SensorId::science(1, 1)).unwrap();
        let header = frame(Instrument::LsstCam, r23_s11, 0, EXPOSURE, 0, 8);
        let rejection = tracker.admit(&header, T0, &mut |_| {}).unwrap_err();
        assert_eq!(rejection, Rejection::UnknownDetector { exposure_id: EXPOSURE, raft: 23, sensor: 11 });
        let message = rejection.to_string();
        assert!(message.contains("R23_S11") && message.contains(&EXPOSURE.to_string()), "{message}");

        let mut garbage = header;
        garbage.raft = 99;
        let message = tracker.admit(&garbage, T0, &mut |_| {}).unwrap_err().to_string();
        assert!(message.contains("raft code 99 sensor code 11"), "{message}");

        let r22_s11 = full.detector(RaftId::new(2, 2), SensorId::science(1, 1)).unwrap();
        let latiss_frame = frame(Instrument::Latiss, r22_s11, 0, EXPOSURE, 0, 8);
        let rejection = tracker.admit(&latiss_frame, T0, &mut |_| {}).unwrap_err();
        assert!(matches!(rejection, Rejection::WrongInstrument { found: 2, .. }), "{rejection}");
        assert!(rejection.to_string().contains("LATISS"), "{rejection}");

        let mut past_end = frame(Instrument::LsstCam, r22_s11, 0, EXPOSURE, 2040, 8);
        past_end.row_count = 16.into();
        let rejection = tracker.admit(&past_end, T0, &mut |_| {}).unwrap_err();
        assert!(matches!(rejection, Rejection::BadRows { .. }), "{rejection}");
        assert!(rejection.to_string().contains("R22_S11 Segment10 rows 2040..2056"), "{rejection}");
        assert!(tracker.open_exposures(T0).is_empty(), "rejected frames open nothing");
        let counters = tracker.counters();
        assert_eq!(
            (
                counters.rejected_unknown_detector,
                counters.rejected_wrong_instrument,
                counters.rejected_bad_rows
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn wavefront_half_sensor_has_no_segment07() {
        let focalplane = Focalplane::lsstcam_subset(&["R00"]).unwrap();
        let sw0 = *focalplane.detector(RaftId::new(0, 0), SensorId::wavefront_half(0)).unwrap();
        let sg0 = *focalplane.detector(RaftId::new(0, 0), SensorId::guider(0)).unwrap();
        let mut tracker = CompletenessTracker::new(focalplane, TrackerOptions::default());
        // Build a Segment07 frame on the guider (which has it) and retarget it at SW0.
        let mut header = frame(Instrument::LsstCam, &sg0, 8, EXPOSURE, 0, 8);
        assert_eq!(header.segment, 7);
        let _pending = tracker.admit(&header, T0, &mut |_| {}).expect("a guider has Segment07");
        header.sensor = 40;
        let rejection = tracker.admit(&header, T0, &mut |_| {}).unwrap_err();
        assert_eq!(rejection, Rejection::UnknownSegment { exposure_id: EXPOSURE, detector: sw0, segment: 7 });
        let message = rejection.to_string();
        assert!(message.contains("R00_SW0 has no segment Segment07"), "{message}");
        let _pending = tracker
            .admit(&frame(Instrument::LsstCam, &sw0, 7, EXPOSURE, 0, 8), T0, &mut |_| {})
            .expect("Segment17 exists");
    }

    #[test]
    fn a_missing_segment_is_listed_after_the_timeout() {
        let mut tracker = latiss_tracker();
        let mut frames = exposure_frames(tracker.focalplane(), EXPOSURE, 4);
        // Drop the third quarter of Segment07 (extension 8).
        let dropped = frames.remove(8 * 4 + 2);
        assert_eq!((dropped.segment, dropped.first_row.get()), (7, 1024));
        let mut events = feed(&mut tracker, &frames, T0);
        assert_eq!(count(&events), (15, 0, 0, 0));
        let timeout = tracker.options().incomplete_timeout_ns;
        tracker.poll(T0 + timeout - 1, &mut |e| events.push(e));
        assert_eq!(count(&events), (15, 0, 0, 0), "not before the deadline");
        tracker.poll(T0 + timeout, &mut |e| events.push(e));
        let declared = incomplete(&events);
        assert_eq!(declared.len(), 1);
        let declared = declared[0];
        assert_eq!(declared.reason, IncompleteReason::Timeout);
        assert_eq!((declared.durable_segments, declared.expected_segments), (15, 16));
        assert_eq!(declared.missing_count, 1);
        assert_eq!(declared.missing[0].to_string(), "R00_S00 Segment07");
        assert_eq!(declared.missing[0].extname(), "Segment07");
        assert!(declared.to_string().contains("R00_S00 Segment07"), "{declared}");
        assert!(tracker.open_exposures(T0 + timeout).is_empty());
        tracker.poll(T0 + 10 * timeout, &mut |e| events.push(e));
        assert_eq!(incomplete(&events).len(), 1, "declared once");
    }

    #[test]
    fn the_timeout_runs_from_the_last_frame() {
        let mut tracker = latiss_tracker();
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 4);
        let timeout = tracker.options().incomplete_timeout_ns;
        let mut events = feed(&mut tracker, &frames[..10], T0);
        events.extend(feed(&mut tracker, &frames[10..20], T0 + timeout - 1));
        tracker.poll(T0 + timeout + 1, &mut |e| events.push(e));
        assert_eq!(count(&events), (5, 0, 0, 0), "a frame came within the timeout");
        events.extend(feed(&mut tracker, &frames[20..], T0 + 2 * timeout - 2));
        assert_eq!(count(&events), (16, 1, 1, 0));
    }

    #[test]
    fn connection_lost_declares_disconnect_after_the_grace() {
        let mut tracker = latiss_tracker();
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 4);
        let grace = tracker.options().reconnect_grace_ns;
        let mut events = feed(&mut tracker, &frames[..40], T0);
        assert_eq!(count(&events), (10, 0, 0, 0));
        let lost = T0 + SECOND;
        tracker.connection_lost(lost, &mut |e| events.push(e));
        assert_eq!(tracker.open_exposures(lost)[0].deadline_ns, lost + grace);
        tracker.poll(lost + grace - 1, &mut |e| events.push(e));
        assert_eq!(count(&events), (10, 0, 0, 0), "not before the grace ends");
        tracker.poll(lost + grace, &mut |e| events.push(e));
        let declared = incomplete(&events);
        assert_eq!(declared.len(), 1);
        assert_eq!(declared[0].reason, IncompleteReason::Disconnect);
        assert_eq!((declared[0].durable_segments, declared[0].missing_count), (10, 6));
    }

    #[test]
    fn frames_arriving_within_the_grace_complete_the_exposure() {
        let mut tracker = latiss_tracker();
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 4);
        let grace = tracker.options().reconnect_grace_ns;
        let mut events = feed(&mut tracker, &frames[..40], T0);
        tracker.connection_lost(T0 + SECOND, &mut |e| events.push(e));
        let reconnected = T0 + SECOND + grace - 1;
        events.extend(feed(&mut tracker, &frames[40..], reconnected));
        tracker.poll(reconnected + grace * 10, &mut |e| events.push(e));
        assert_eq!(count(&events), (16, 1, 1, 0));
    }

    #[test]
    fn eviction_spares_an_exposure_whose_frames_are_still_in_flight() {
        let options = TrackerOptions { max_open_exposures: 2, ..TrackerOptions::default() };
        let mut tracker = CompletenessTracker::new(Focalplane::latiss(), options);
        let detector = Focalplane::latiss().detectors()[0];
        let mut events = Vec::new();
        // The oldest exposure has a frame admitted but not yet durable; the newer one has none.
        let in_flight = tracker
            .admit(&frame(Instrument::Latiss, &detector, 0, EXPOSURE, 0, 2048), T0, &mut |e| events.push(e))
            .unwrap();
        let settled = tracker
            .admit(&frame(Instrument::Latiss, &detector, 0, EXPOSURE + 1, 0, 2048), T0 + 1, &mut |e| {
                events.push(e)
            })
            .unwrap();
        tracker.durable(settled, T0 + 1, &mut |e| events.push(e));
        let third = frame(Instrument::Latiss, &detector, 0, EXPOSURE + 2, 0, 2048);
        let _ = tracker.admit(&third, T0 + 2, &mut |e| events.push(e)).unwrap();
        let declared = incomplete(&events);
        assert_eq!(declared.len(), 1);
        assert_eq!((declared[0].exposure_id, declared[0].reason), (EXPOSURE + 1, IncompleteReason::Evicted));
        tracker.durable(in_flight, T0 + 3, &mut |e| events.push(e));
        assert_eq!(tracker.open_exposures(T0 + 3).len(), 2, "the in-flight exposure stayed open");
    }

    #[test]
    fn opening_one_exposure_too_many_evicts_the_oldest() {
        let options = TrackerOptions { max_open_exposures: 2, ..TrackerOptions::default() };
        let mut tracker = CompletenessTracker::new(Focalplane::latiss(), options);
        let detector = Focalplane::latiss().detectors()[0];
        let mut events = Vec::new();
        for (offset, exposure) in [EXPOSURE, EXPOSURE + 1, EXPOSURE + 2].into_iter().enumerate() {
            let header = frame(Instrument::Latiss, &detector, 0, exposure, 0, 2048);
            let admitted = tracker.admit(&header, T0 + offset as u64, &mut |e| events.push(e)).unwrap();
            tracker.durable(admitted, T0 + offset as u64, &mut |e| events.push(e));
        }
        let declared = incomplete(&events);
        assert_eq!(declared.len(), 1);
        assert_eq!((declared[0].exposure_id, declared[0].reason), (EXPOSURE, IncompleteReason::Evicted));
        assert_eq!((declared[0].durable_segments, declared[0].missing_count), (1, 15));
        assert_eq!(declared[0].missing.len(), 15);
        let open: Vec<u64> = tracker.open_exposures(T0 + 2).iter().map(|s| s.exposure_id).collect();
        assert_eq!(open, [EXPOSURE + 1, EXPOSURE + 2]);
        assert_eq!(tracker.counters().exposures_incomplete, 1);
    }

    #[test]
    fn a_late_frame_after_incomplete_is_admitted_and_counted_but_never_completes() {
        let mut tracker = latiss_tracker();
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 1);
        let (last, first_fifteen) = frames.split_last().unwrap();
        let mut events = feed(&mut tracker, first_fifteen, T0);
        let in_flight = tracker.admit(&frames[0], T0, &mut |_| {});
        assert!(in_flight.is_err(), "duplicate of a durable segment");
        let timeout = tracker.options().incomplete_timeout_ns;
        tracker.poll(T0 + timeout, &mut |e| events.push(e));
        assert_eq!(count(&events), (15, 0, 0, 1));
        let late =
            tracker.admit(last, T0 + timeout + 1, &mut |e| events.push(e)).expect("late frame admitted");
        assert!(late.is_late());
        assert_eq!(late.exposure_id(), EXPOSURE);
        tracker.durable(late, T0 + timeout + 1, &mut |e| events.push(e));
        tracker.poll(T0 + 10 * timeout, &mut |e| events.push(e));
        assert_eq!(count(&events), (15, 0, 0, 1), "no second exposure-level event");
        assert!(tracker.open_exposures(T0 + 10 * timeout).is_empty());
        assert_eq!(tracker.counters().frames_late, 1);
        assert_eq!(tracker.counters().frames_durable_after_close, 1);
    }

    #[test]
    fn a_write_in_flight_when_the_exposure_closes_is_counted_not_applied() {
        let options = TrackerOptions { max_open_exposures: 1, ..TrackerOptions::default() };
        let mut tracker = CompletenessTracker::new(Focalplane::latiss(), options);
        let detector = Focalplane::latiss().detectors()[0];
        let mut events = Vec::new();
        let old = tracker.admit(&frame(Instrument::Latiss, &detector, 0, EXPOSURE, 0, 2048), T0, &mut |_| {});
        let new = frame(Instrument::Latiss, &detector, 0, EXPOSURE + 1, 0, 1024);
        let new = tracker.admit(&new, T0, &mut |e| events.push(e)).unwrap();
        assert_eq!(incomplete(&events).len(), 1, "the old exposure was evicted");
        // The old frame's write finishes after its slot was reused: it must not count there.
        tracker.durable(old.unwrap(), T0, &mut |e| events.push(e));
        tracker.durable(new, T0, &mut |e| events.push(e));
        assert_eq!(count(&events), (0, 0, 0, 1));
        assert_eq!(tracker.counters().frames_durable_after_close, 1);
        assert_eq!(tracker.open_exposures(T0)[0].pending_frames, 0);
    }

    #[test]
    fn an_abandoned_frame_releases_its_rows_for_a_resend() {
        let mut tracker = latiss_tracker();
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 2);
        let mut events = Vec::new();
        let neighbour = tracker.admit(&frames[1], T0, &mut |e| events.push(e)).unwrap();
        let abandoned = tracker.admit(&frames[0], T0, &mut |e| events.push(e)).unwrap();
        tracker.abandon(abandoned);
        assert_eq!(tracker.open_exposures(T0)[0].pending_frames, 1);
        assert!(tracker.admit(&frames[1], T0, &mut |_| {}).is_err(), "the neighbour's rows stay taken");
        let resent = tracker.admit(&frames[0], T0, &mut |e| events.push(e)).expect("rows were released");
        tracker.durable(resent, T0, &mut |e| events.push(e));
        tracker.durable(neighbour, T0, &mut |e| events.push(e));
        events.extend(feed(&mut tracker, &frames[2..], T0));
        assert_eq!(count(&events), (16, 1, 1, 0));
        assert_eq!(tracker.counters().frames_abandoned, 1);
    }

    #[test]
    fn a_write_in_flight_does_not_count_for_a_reopened_exposure_of_the_same_id() {
        let options =
            TrackerOptions { max_open_exposures: 1, closed_history: 0, ..TrackerOptions::default() };
        let mut tracker = CompletenessTracker::new(Focalplane::latiss(), options);
        let frames = exposure_frames(tracker.focalplane(), EXPOSURE, 2);
        let mut events = Vec::new();
        let in_flight = tracker.admit(&frames[0], T0, &mut |e| events.push(e)).unwrap();
        let timeout = tracker.options().incomplete_timeout_ns;
        tracker.poll(T0 + timeout, &mut |e| events.push(e));
        // Forgotten at once (no history): the same id opens again in the same slot.
        let reopened = tracker.admit(&frames[1], T0 + timeout, &mut |e| events.push(e)).unwrap();
        tracker.durable(in_flight, T0 + timeout, &mut |e| events.push(e));
        tracker.durable(reopened, T0 + timeout, &mut |e| events.push(e));
        assert_eq!(count(&events), (0, 0, 0, 1), "the old write must not complete Segment10");
        assert_eq!(tracker.counters().frames_durable_after_close, 1);
    }

    #[test]
    fn the_closed_history_is_bounded() {
        let options = TrackerOptions { closed_history: 2, ..TrackerOptions::default() };
        let mut tracker = CompletenessTracker::new(Focalplane::latiss(), options);
        for exposure in 0..3 {
            let frames = exposure_frames(tracker.focalplane(), EXPOSURE + exposure, 1);
            feed(&mut tracker, &frames, T0);
        }
        let detector = Focalplane::latiss().detectors()[0];
        let repeat = |exposure| frame(Instrument::Latiss, &detector, 0, exposure, 0, 2048);
        assert!(tracker.admit(&repeat(EXPOSURE + 2), T0, &mut |_| {}).is_err(), "remembered");
        assert!(tracker.admit(&repeat(EXPOSURE), T0, &mut |_| {}).is_ok(), "forgotten: opened again");
    }

    #[test]
    fn lsstcam_full_focalplane_one_frame_per_segment_completes_in_bounded_memory() {
        let focalplane = Focalplane::lsstcam();
        let options = TrackerOptions::default();
        let bound = CompletenessTracker::memory_bound(&focalplane, &options);
        let bitmaps = options.max_open_exposures * LSSTCAM_SEGMENT_COUNT * BITMAP_BYTES_PER_SEGMENT;
        assert_eq!(bitmaps, 16 * 3216 * 256);
        assert!(bound <= bitmaps + 16 * 3216 * 2 + 64 * 1024, "bound {bound}");
        assert!(bound < 14 << 20, "the whole focal plane stays under 14 MiB: {bound}");
        let mut tracker = CompletenessTracker::new(focalplane, options);
        let before = tracker.memory_bytes();
        assert!(before > bitmaps && before <= bound, "{bitmaps} < {before} <= {bound}");

        let mut frames = exposure_frames(tracker.focalplane(), EXPOSURE, 1);
        assert_eq!(frames.len(), 3216);
        shuffle(&mut frames, 7);
        let mut events = feed(&mut tracker, &frames, T0);
        assert_eq!(count(&events), (3216, 205, 1, 0));
        assert_eq!(
            events.pop(),
            Some(CompletenessEvent::ExposureComplete {
                exposure_id: EXPOSURE,
                detectors: 205,
                segments: 3216,
                end_of_exposure_seen: false,
            })
        );
        // Five more exposures (more than the slots) through the same memory.
        // (Retargeted headers keep a stale header CRC: the tracker trusts `FrameHeader::parse`.)
        for exposure in 1..=5 {
            for header in &mut frames {
                header.exposure_id = (EXPOSURE + exposure).into();
            }
            let events = feed(&mut tracker, &frames, T0 + exposure);
            assert_eq!(count(&events), (3216, 205, 1, 0));
        }
        assert_eq!(tracker.memory_bytes(), before);
    }

    #[test]
    fn end_of_exposure_flag_is_recorded_but_not_relied_on() {
        let mut tracker = latiss_tracker();
        let mut frames = exposure_frames(tracker.focalplane(), EXPOSURE, 2);
        frames[0].flags |= FLAG_END_OF_EXPOSURE; // arrives first, out of order
        let events = feed(&mut tracker, &frames[..1], T0);
        assert!(events.is_empty());
        assert!(tracker.open_exposures(T0)[0].end_of_exposure_seen);
        let events = feed(&mut tracker, &frames[1..], T0);
        assert!(matches!(
            events.last(),
            Some(CompletenessEvent::ExposureComplete { end_of_exposure_seen: true, .. })
        ));
    }

    #[test]
    fn row_bitmap_masks_cover_exactly_the_rows() {
        let mut bitmap = [0u64; BITMAP_WORDS];
        bitmap_set(&mut bitmap, 60, 130);
        assert_eq!(bitmap.iter().map(|w| w.count_ones()).sum::<u32>(), 70);
        assert!(!bitmap_any(&bitmap, 0, 60));
        assert!(!bitmap_any(&bitmap, 130, 2048));
        assert!(bitmap_any(&bitmap, 59, 61));
        assert!(bitmap_any(&bitmap, 129, 130));
        bitmap_set(&mut bitmap, 0, 2048);
        assert!(bitmap.iter().all(|&w| w == u64::MAX));
        bitmap_clear(&mut bitmap, 1, 2047);
        assert_eq!(bitmap.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        assert!(
            bitmap_any(&bitmap, 0, 1) && bitmap_any(&bitmap, 2047, 2048) && !bitmap_any(&bitmap, 1, 2047)
        );
    }
}
