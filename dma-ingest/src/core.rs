//! What both I/O paths share: frame validation in one pass, completeness, counters, events.
//!
//! The io_uring path ([`crate::uring`]) and the portable path ([`crate::portable`]) differ only in
//! how bytes move (who reads the socket, who writes the ring, who calls `fdatasync`). Everything
//! that decides what is good, what is written and what is announced lives here, so the two paths
//! cannot disagree: the ingest test suite runs against both.
//!
//! A frame's life: its header block is parsed ([`parse_header`]; a bad header closes the
//! connection, because its length cannot be trusted), its payload checked in one CRC pass that
//! also yields the ring record's CRC ([`check_payload`]; a bad payload is skipped, the stream
//! stays in step), the completeness tracker admits it (duplicates and unknown detectors are
//! rejected), it is written and made durable, and only then [`StreamCore::frames_durable`]
//! announces it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use ringbuffer::{Clock, Ring, RingStats};

use crate::completeness::{Admitted, CompletenessEvent, CompletenessTracker, Rejection};
use crate::config::IngestOptions;
use crate::protocol::frame::{FrameError, FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use crate::protocol::geometry::Focalplane;

/// Logged when shutdown finds a frame still waiting for ring space.
pub(crate) const NOT_WRITTEN_AT_SHUTDOWN: &str =
    "frame not written: shutting down while the ring is full (the sender still holds it)";

/// Why a frame or message was refused; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Header magic is not `DAQF`.
    BadMagic,
    /// Header CRC mismatch.
    HeaderCrc,
    /// Header fields contradict each other, unknown version or instrument.
    BadHeader,
    /// Frame longer than the buffers.
    TooLarge,
    /// The connection ended inside a frame.
    Truncated,
    /// Pixel CRC mismatch.
    PayloadCrc,
    /// Rows already received (pending or durable) or an exposure already complete.
    Duplicate,
    /// Instrument, detector, segment or rows this stream does not have.
    NotInFocalplane,
    /// The ring is full and its policy is `reject`.
    RingFull,
    /// A malformed or inconsistent header-service message.
    BadMetadata,
}

impl RejectKind {
    /// All kinds, in counter order.
    pub const ALL: [RejectKind; 10] = [
        RejectKind::BadMagic,
        RejectKind::HeaderCrc,
        RejectKind::BadHeader,
        RejectKind::TooLarge,
        RejectKind::Truncated,
        RejectKind::PayloadCrc,
        RejectKind::Duplicate,
        RejectKind::NotInFocalplane,
        RejectKind::RingFull,
        RejectKind::BadMetadata,
    ];

    /// Snake-case name, as in counters and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectKind::BadMagic => "bad_magic",
            RejectKind::HeaderCrc => "header_crc",
            RejectKind::BadHeader => "bad_header",
            RejectKind::TooLarge => "too_large",
            RejectKind::Truncated => "truncated",
            RejectKind::PayloadCrc => "payload_crc",
            RejectKind::Duplicate => "duplicate",
            RejectKind::NotInFocalplane => "not_in_focalplane",
            RejectKind::RingFull => "ring_full",
            RejectKind::BadMetadata => "bad_metadata",
        }
    }

    fn index(self) -> usize {
        RejectKind::ALL.iter().position(|kind| *kind == self).expect("every kind is listed")
    }

    /// The kind of a frame error.
    pub fn of_frame_error(error: &FrameError) -> RejectKind {
        match error {
            FrameError::BadMagic { .. } => RejectKind::BadMagic,
            FrameError::HeaderCrc { .. } => RejectKind::HeaderCrc,
            FrameError::Truncated { .. } => RejectKind::Truncated,
            FrameError::PayloadCrc { .. } => RejectKind::PayloadCrc,
            FrameError::UnsupportedVersion { .. }
            | FrameError::UnknownInstrument { .. }
            | FrameError::Inconsistent { .. }
            | FrameError::WrongLength { .. } => RejectKind::BadHeader,
        }
    }
}

/// Counters of one stream's ingest (all monotonic, `_total`), readable while it runs.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Frames whose header and payload were read completely.
    pub frames_received_total: AtomicU64,
    /// Frames durable in the ring.
    pub frames_durable_total: AtomicU64,
    /// Frame bytes (whole frames, header block included) durable in the ring.
    pub frame_bytes_durable_total: AtomicU64,
    /// Frames written from the very buffer the receive filled (io_uring: the same registered
    /// buffer index; portable: the same allocation): every durable frame on a zero-copy path.
    pub frames_written_in_place_total: AtomicU64,
    /// Payload bytes copied in user space on the frame path. Zero by design; metadata records
    /// (small, re-encoded) are counted in `metadata_bytes_copied_total`.
    pub frame_payload_bytes_copied_total: AtomicU64,
    /// Bytes of metadata records built in user space.
    pub metadata_bytes_copied_total: AtomicU64,
    /// Frames accepted whose sender frame counter went backwards (reordered; still written).
    pub frames_out_of_order_total: AtomicU64,
    /// Frames admitted after their exposure was declared incomplete (still written).
    pub frames_late_total: AtomicU64,
    /// Metadata messages durable in the ring.
    pub metadata_durable_total: AtomicU64,
    /// Rejections by [`RejectKind`] (index = position in [`RejectKind::ALL`]).
    pub rejected_total: [AtomicU64; 10],
    /// Connections accepted.
    pub connections_total: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused_total: AtomicU64,
    /// Connections closed by the ingest because their stream could not be trusted.
    pub connections_closed_bad_total: AtomicU64,
    /// Times a frame waited for space under the `block` policy.
    pub ring_full_waits_total: AtomicU64,
    /// `fdatasync`s issued.
    pub syncs_total: AtomicU64,
    /// Events dropped because the event queue was full.
    pub events_dropped_total: AtomicU64,
}

impl IngestCounters {
    /// Rejections of one kind.
    pub fn rejected(&self, kind: RejectKind) -> u64 {
        self.rejected_total[kind.index()].load(Ordering::Relaxed)
    }

    /// Rejections of every kind.
    pub fn rejected_all(&self) -> u64 {
        self.rejected_total.iter().map(|count| count.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// What the ingest announces (to the archive, the drain, local processing, the console).
#[derive(Debug, Clone, PartialEq)]
pub enum IngestEvent {
    /// Completeness: segment durable, detector complete, exposure complete or incomplete.
    Completeness(CompletenessEvent),
    /// A frame or message was refused.
    Rejected {
        /// Why.
        kind: RejectKind,
        /// The connection it came on (e.g. `unix#3`).
        connection: String,
        /// The exposure, when the header could be read.
        exposure_id: Option<u64>,
        /// Detector and segment (`R22_S11 Segment10`), when known.
        segment: Option<String>,
        /// The full reason.
        detail: String,
    },
    /// A header-service event is durable in the ring.
    MetadataDurable {
        /// Its exposure.
        exposure_id: u64,
        /// `StartIntegration` or `EndReadout`.
        kind: String,
        /// The record's sequence number in the ring.
        sequence: u64,
    },
    /// The ring failed (a write or `fdatasync` error): the ingest stopped. Fatal.
    Failed {
        /// What failed.
        detail: String,
    },
}

/// A handle on a running ingest's observable state, shared with its I/O thread.
#[derive(Debug)]
pub struct IngestObserver {
    /// Counters.
    pub counters: IngestCounters,
    /// The ring's statistics as of the last sync (the ring itself belongs to the ingest thread).
    pub ring_stats: Mutex<Option<RingStats>>,
    /// Which I/O path runs, and why it was chosen.
    pub backend: Mutex<String>,
}

/// The per-stream state both I/O paths drive.
pub(crate) struct StreamCore {
    pub(crate) ring: Ring,
    tracker: CompletenessTracker,
    pub(crate) observer: Arc<IngestObserver>,
    events: SyncSender<IngestEvent>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) options: IngestOptions,
    /// Completeness events collected during one call, then queued.
    pending_events: Vec<CompletenessEvent>,
}

impl StreamCore {
    pub(crate) fn new(
        ring: Ring,
        focalplane: Focalplane,
        options: IngestOptions,
        clock: Arc<dyn Clock>,
    ) -> (StreamCore, Receiver<IngestEvent>) {
        let (events, receiver) = std::sync::mpsc::sync_channel(options.event_queue);
        let observer = Arc::new(IngestObserver {
            counters: IngestCounters::default(),
            ring_stats: Mutex::new(Some(ring.stats())),
            backend: Mutex::new(String::new()),
        });
        let core = StreamCore {
            ring,
            tracker: CompletenessTracker::new(focalplane, options.tracker),
            observer,
            events,
            clock,
            options,
            pending_events: Vec::new(),
        };
        (core, receiver)
    }

    pub(crate) fn counters(&self) -> &IngestCounters {
        &self.observer.counters
    }

    pub(crate) fn emit(&self, event: IngestEvent) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.events.try_send(event) {
            IngestCounters::add(&self.counters().events_dropped_total, 1);
        }
    }

    fn flush_completeness(&mut self) {
        for event in std::mem::take(&mut self.pending_events) {
            if let CompletenessEvent::ExposureIncomplete { .. } = &event {
                tracing::warn!(stream = %self.options.stream, ?event, "exposure incomplete");
            } else {
                tracing::debug!(stream = %self.options.stream, ?event, "completeness");
            }
            self.emit(IngestEvent::Completeness(event));
        }
    }

    /// Counts, logs (naming connection, exposure and segment) and announces a rejection.
    pub(crate) fn reject(
        &self,
        kind: RejectKind,
        connection: &str,
        header: Option<&FrameHeader>,
        detail: String,
    ) {
        IngestCounters::add(&self.counters().rejected_total[kind.index()], 1);
        let exposure_id = header.map(|header| header.exposure_id.get());
        let segment = header.map(|header| {
            format!("raft {} sensor {} segment {:02}", header.raft, header.sensor, header.segment)
        });
        tracing::warn!(
            stream = %self.options.stream,
            connection,
            exposure_id,
            segment = segment.as_deref().unwrap_or("unknown"),
            reason = kind.as_str(),
            "frame rejected: {detail}"
        );
        self.emit(IngestEvent::Rejected {
            kind,
            connection: connection.to_owned(),
            exposure_id,
            segment,
            detail,
        });
    }

    /// Admits a frame whose payload checked out; `None` when refused (already counted and
    /// logged).
    pub(crate) fn admit(
        &mut self,
        connection: &mut ConnectionState,
        header: &FrameHeader,
    ) -> Option<Admitted> {
        let sequence = header.frame_sequence.get();
        // Counted only if admitted: a refused duplicate is not a reordered frame.
        let backwards = sequence <= connection.last_frame_sequence;
        connection.last_frame_sequence = connection.last_frame_sequence.max(sequence);
        let now_ns = self.clock.now_ns();
        let mut pending = std::mem::take(&mut self.pending_events);
        let result = self.tracker.admit(header, now_ns, &mut |event| pending.push(event));
        self.pending_events = pending;
        self.flush_completeness();
        match result {
            Ok(admitted) => {
                if backwards {
                    IngestCounters::add(&self.counters().frames_out_of_order_total, 1);
                }
                if admitted.is_late() {
                    IngestCounters::add(&self.counters().frames_late_total, 1);
                }
                Some(admitted)
            }
            Err(rejection) => {
                let kind = match rejection {
                    Rejection::Duplicate { .. } => RejectKind::Duplicate,
                    _ => RejectKind::NotInFocalplane,
                };
                self.reject(kind, &connection.name, Some(header), rejection.to_string());
                None
            }
        }
    }

    /// Announces frames that just became durable (in ring order).
    pub(crate) fn frames_durable(&mut self, frames: impl IntoIterator<Item = (Admitted, u64)>) {
        let now_ns = self.clock.now_ns();
        let mut pending = std::mem::take(&mut self.pending_events);
        for (admitted, frame_bytes) in frames {
            IngestCounters::add(&self.counters().frames_durable_total, 1);
            IngestCounters::add(&self.counters().frame_bytes_durable_total, frame_bytes);
            self.tracker.durable(admitted, now_ns, &mut |event| pending.push(event));
        }
        self.pending_events = pending;
        self.flush_completeness();
    }

    /// An admitted frame will not be written (ring full under `reject`, or shutdown while
    /// waiting for space): its rows are released so a resend is not taken for a duplicate.
    pub(crate) fn abandon(&mut self, admitted: Admitted) {
        self.tracker.abandon(admitted);
    }

    /// A frame connection ended (cleanly or not): open exposures get the reconnect grace.
    pub(crate) fn connection_lost(&mut self) {
        let now_ns = self.clock.now_ns();
        let mut pending = std::mem::take(&mut self.pending_events);
        self.tracker.connection_lost(now_ns, &mut |event| pending.push(event));
        self.pending_events = pending;
        self.flush_completeness();
    }

    /// Declares timed-out exposures incomplete; call regularly.
    pub(crate) fn poll_deadlines(&mut self) {
        let now_ns = self.clock.now_ns();
        let mut pending = std::mem::take(&mut self.pending_events);
        self.tracker.poll(now_ns, &mut |event| pending.push(event));
        self.pending_events = pending;
        self.flush_completeness();
    }

    /// Publishes the ring's statistics for observers.
    pub(crate) fn publish_ring_stats(&self) {
        let stats = self.ring.stats();
        *self.observer.ring_stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stats);
    }

    /// The ring failed: log, announce, and return the error text.
    pub(crate) fn fail(&self, error: &ringbuffer::Error) -> String {
        let detail = error.to_string();
        tracing::error!(stream = %self.options.stream, %detail, "ingest stopped: the ring failed");
        self.emit(IngestEvent::Failed { detail: detail.clone() });
        detail
    }
}

/// Per-connection state both paths keep.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    /// `unix#3`, `tcp#1 127.0.0.1:5555`, `file /x.replay`: names the connection in logs.
    pub(crate) name: String,
    /// Highest sender frame counter seen.
    pub(crate) last_frame_sequence: u64,
}

impl ConnectionState {
    pub(crate) fn new(name: String) -> ConnectionState {
        ConnectionState { name, last_frame_sequence: 0 }
    }
}

/// Parses and checks a frame's header block. Any error means the frame's length cannot be
/// trusted: the caller closes the connection.
pub(crate) fn parse_header(
    block: &[u8],
    max_frame_bytes: usize,
) -> Result<FrameHeader, (RejectKind, String)> {
    let header =
        FrameHeader::parse(block).map_err(|error| (RejectKind::of_frame_error(&error), error.to_string()))?;
    let frame_bytes = header.frame_length_bytes();
    if frame_bytes > max_frame_bytes {
        return Err((
            RejectKind::TooLarge,
            format!("frame of {frame_bytes} bytes exceeds the ingest's maximum of {max_frame_bytes} bytes"),
        ));
    }
    Ok(header)
}

/// Checks a whole frame's pixel CRC and returns the CRC32 of the whole frame (the ring record's
/// payload CRC), in one pass over the bytes: the pixel CRC is computed once and combined with
/// the CRCs of the header block and the padding.
pub(crate) fn check_payload(header: &FrameHeader, frame: &[u8]) -> Result<u32, FrameError> {
    let expected = header.frame_length_bytes();
    if frame.len() != expected {
        return Err(FrameError::WrongLength { expected, found: frame.len() });
    }
    let pixels_end = FRAME_HEADER_BLOCK_BYTES + header.payload_length.get() as usize;
    let mut whole = crc32fast::Hasher::new();
    whole.update(&frame[..FRAME_HEADER_BLOCK_BYTES]);
    let mut pixels = crc32fast::Hasher::new();
    pixels.update(&frame[FRAME_HEADER_BLOCK_BYTES..pixels_end]);
    let pixels_crc = pixels.clone().finalize();
    if pixels_crc != header.payload_crc32.get() {
        return Err(FrameError::PayloadCrc { stored: header.payload_crc32.get(), computed: pixels_crc });
    }
    whole.combine(&pixels);
    whole.update(&frame[pixels_end..]);
    Ok(whole.finalize())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::frame::{encode_frame, frame_length_bytes, FrameFields, InstrumentCode};

    /// One valid LATISS frame of `row_count` rows of bytes `fill` (segment 10, first rows).
    pub(crate) fn frame(row_count: u16, fill: u8) -> Vec<u8> {
        let pixels = vec![fill; row_count as usize * 576 * 4];
        let fields = FrameFields {
            instrument: InstrumentCode::Latiss,
            flags: if row_count == 2048 { crate::protocol::frame::FLAG_END_OF_SEGMENT } else { 0 },
            raft: 0,
            sensor: 0,
            segment: 10,
            segment_columns: 576,
            segment_rows: 2048,
            first_row: 0,
            row_count,
            exposure_id: 2025041500001,
            frame_sequence: 1,
            readout_ns: 1,
        };
        let mut out = vec![0; frame_length_bytes(pixels.len())];
        encode_frame(&fields, &pixels, &mut out);
        out
    }

    #[test]
    fn the_one_pass_crc_equals_the_crc_of_the_whole_frame_with_and_without_padding() {
        for rows in [1u16, 3, 512, 2048] {
            let bytes = frame(rows, 0x5a);
            let header = parse_header(&bytes, 64 << 20).expect("valid header");
            let crc = check_payload(&header, &bytes).expect("valid payload");
            assert_eq!(crc, crc32fast::hash(&bytes), "rows {rows}");
        }
    }

    #[test]
    fn a_flipped_pixel_bit_is_a_payload_crc_error() {
        let mut bytes = frame(4, 1);
        bytes[FRAME_HEADER_BLOCK_BYTES + 100] ^= 0x10;
        let header = parse_header(&bytes, 64 << 20).expect("header untouched");
        assert!(matches!(check_payload(&header, &bytes), Err(FrameError::PayloadCrc { .. })));
    }

    #[test]
    fn a_frame_longer_than_the_buffers_is_too_large() {
        let bytes = frame(2048, 1);
        let (kind, detail) = parse_header(&bytes, 1 << 20).expect_err("4.7 MB frame, 1 MiB limit");
        assert_eq!(kind, RejectKind::TooLarge);
        assert!(detail.contains("exceeds"), "{detail}");
    }

    #[test]
    fn a_bad_magic_is_classified() {
        let mut bytes = frame(1, 1);
        bytes[0] ^= 0xff;
        assert_eq!(parse_header(&bytes, 64 << 20).expect_err("bad magic").0, RejectKind::BadMagic);
    }
}
