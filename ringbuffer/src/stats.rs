//! Observability: counters, the fixed-size recent-events ring, the append-rate estimate,
//! [`RingStats`] for operators, and [`verify`], the full scan.
//!
//! Counters end in `_total`. The events ring holds the last [`EVENT_CAPACITY`] events
//! (corruption, torn tails, overruns, thresholds, poisoning) so the console can dump them
//! without a debugger; each is also logged with `tracing` when it happens.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;
use crate::layout::{RecordDefect, RecordKind};
use crate::reader::Scanner;
use crate::ring::{Position, RateSample, ScanStep, Shared};

/// Number of recent events kept per ring.
pub const EVENT_CAPACITY: usize = 64;
/// Number of bad regions a [`VerifyReport`] lists (all are counted).
pub const VERIFY_LISTED_DEFECTS: usize = 1000;

/// Monotonic counters of one open ring.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records appended.
    pub appends_total: AtomicU64,
    /// Bytes appended (headers and padding included).
    pub appended_bytes_total: AtomicU64,
    /// Group commits (data `fdatasync`s).
    pub syncs_total: AtomicU64,
    /// Checkpoints written.
    pub checkpoints_total: AtomicU64,
    /// Appends refused because the ring was full (policy `reject`).
    pub rejected_full_total: AtomicU64,
    /// Appends that met a full ring under policy `block`.
    pub would_block_total: AtomicU64,
    /// Records found corrupt and skipped (detections; persisted in checkpoints).
    pub quarantined_records_total: AtomicU64,
    /// Torn tails truncated at open.
    pub torn_tail_truncations_total: AtomicU64,
    /// Records an optional cursor missed because the writer reused their space.
    pub overrun_records_total: AtomicU64,
}

/// Something an operator should know about, with where it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum RingEventKind {
    /// Invalid data inside valid data: skipped, never returned.
    Quarantined {
        /// Logical offset of the bad record.
        logical_offset: u64,
        /// Lap of that offset.
        lap: u64,
        /// Byte offset in `ring.data`.
        physical_offset: u64,
        /// Sequence number expected there.
        expected_sequence: u64,
        /// Sequence number of the next valid record.
        resumed_sequence: u64,
        /// What was wrong.
        defect: RecordDefect,
    },
    /// An incomplete last write found at open and cut off.
    TornTailTruncated {
        /// Logical offset of the torn record.
        logical_offset: u64,
        /// Byte offset in `ring.data`.
        physical_offset: u64,
        /// Sequence number it would have had (never acknowledged, or corrupt).
        sequence: u64,
        /// What was wrong.
        defect: RecordDefect,
    },
    /// An optional cursor fell behind the tail and skipped records the writer reused.
    CursorOverrun {
        /// Cursor name.
        cursor: heapless::String<24>,
        /// First sequence missed.
        from_sequence: u64,
        /// Where the cursor resumed.
        to_sequence: u64,
    },
    /// The fill level crossed a configured threshold.
    FillThreshold {
        /// Threshold, percent.
        threshold_percent: u32,
        /// Fill now, percent.
        fill_percent: u32,
        /// Rising (crossed upwards) or falling.
        rising: bool,
    },
    /// The ring refuses writes after an I/O failure.
    Poisoned {
        /// The failure, shortened.
        cause: heapless::String<96>,
    },
}

/// An event with its time (from the ring's clock).
#[derive(Clone, Debug, PartialEq)]
pub struct RingEvent {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// What happened.
    pub kind: RingEventKind,
}

impl std::fmt::Display for RingEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RingEventKind::Quarantined {
                logical_offset,
                lap,
                physical_offset,
                expected_sequence,
                resumed_sequence,
                defect,
            } => write!(
                f,
                "quarantined: {defect} at data offset {physical_offset} (lap {lap}, logical {logical_offset}); \
                 expected sequence {expected_sequence}, resumed at {resumed_sequence}"
            ),
            RingEventKind::TornTailTruncated { logical_offset, physical_offset, sequence, defect } => write!(
                f,
                "torn tail truncated: {defect} at data offset {physical_offset} (logical {logical_offset}), \
                 sequence {sequence} onwards"
            ),
            RingEventKind::CursorOverrun { cursor, from_sequence, to_sequence } => write!(
                f,
                "cursor `{cursor}` overrun: records {from_sequence}..{to_sequence} were reclaimed before it read them"
            ),
            RingEventKind::FillThreshold { threshold_percent, fill_percent, rising } => write!(
                f,
                "fill {} {threshold_percent}% (now {fill_percent}%)",
                if *rising { "rose above" } else { "fell below" }
            ),
            RingEventKind::Poisoned { cause } => write!(f, "poisoned: {cause}"),
        }
    }
}

impl RingEvent {
    pub(crate) fn log(&self, ring: String) {
        match &self.kind {
            RingEventKind::FillThreshold { rising: false, .. } => {
                tracing::info!(%ring, event = %self, "ring event")
            }
            RingEventKind::Poisoned { .. } => tracing::error!(%ring, event = %self, "ring event"),
            _ => tracing::warn!(%ring, event = %self, "ring event"),
        }
    }
}

/// Fixed-size ring of recent events; the oldest is dropped when full.
#[derive(Debug)]
pub struct EventLog {
    events: heapless::Deque<RingEvent, EVENT_CAPACITY>,
}

impl EventLog {
    pub(crate) fn new() -> Self {
        Self { events: heapless::Deque::new() }
    }

    pub(crate) fn push(&mut self, event: RingEvent) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(event);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &RingEvent> {
        self.events.iter()
    }
}

/// Append rate over the last minute, from (time, head offset) samples at most one a second.
#[derive(Debug, Default)]
pub struct RateEstimator {
    samples: heapless::Deque<RateSample, 64>,
}

const RATE_WINDOW_NS: u64 = 60_000_000_000;
const RATE_SAMPLE_SPACING_NS: u64 = 1_000_000_000;

impl RateEstimator {
    pub(crate) fn sample(&mut self, time_ns: u64, head_offset: u64) {
        if let Some(last) = self.samples.back() {
            if time_ns < last.time_ns + RATE_SAMPLE_SPACING_NS && self.samples.len() > 1 {
                // Refresh the newest sample instead of adding one.
                let last = self.samples.back_mut().expect("not empty");
                *last = RateSample { time_ns, head_offset };
                return;
            }
        }
        if self.samples.is_full() {
            self.samples.pop_front();
        }
        let _ = self.samples.push_back(RateSample { time_ns, head_offset });
        while self.samples.len() > 2
            && self.samples.front().is_some_and(|s| s.time_ns + RATE_WINDOW_NS < time_ns)
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window, if two samples span some time.
    pub fn bytes_per_second(&self) -> Option<f64> {
        let first = self.samples.front()?;
        let last = self.samples.back()?;
        let elapsed_ns = last.time_ns.checked_sub(first.time_ns).filter(|&d| d > 0)?;
        Some((last.head_offset - first.head_offset) as f64 * 1e9 / elapsed_ns as f64)
    }
}

/// Lag of one cursor behind the durable head.
#[derive(Clone, Debug, PartialEq)]
pub struct CursorStats {
    /// Name.
    pub name: String,
    /// Whether reclamation waits for it.
    pub required: bool,
    /// Persisted position.
    pub position: Position,
    /// Durable records it has not yet persisted past.
    pub lag_records: u64,
    /// Durable bytes it has not yet persisted past.
    pub lag_bytes: u64,
}

/// The oldest record the drain has not confirmed.
#[derive(Clone, Debug, PartialEq)]
pub struct OldestRecord {
    /// Its sequence number.
    pub sequence: u64,
    /// Its append time (nanoseconds since the Unix epoch).
    pub timestamp_ns: u64,
    /// How long ago that was, in seconds.
    pub age_seconds: f64,
}

/// A snapshot of a ring's state for operators.
#[derive(Clone, Debug, PartialEq)]
pub struct RingStats {
    /// Ring directory or data file.
    pub location: String,
    /// Ring id.
    pub ring_id: u64,
    /// Stream id.
    pub stream_id: u32,
    /// Writer generation.
    pub generation: u32,
    /// Capacity of the data file.
    pub capacity_bytes: u64,
    /// Bytes between the tail and the written head (retained, not reclaimable).
    pub used_bytes: u64,
    /// `used / capacity`.
    pub fill_ratio: f64,
    /// Configured thresholds and whether each is crossed.
    pub thresholds: Vec<(f64, bool)>,
    /// Oldest retained sequence.
    pub oldest_sequence: u64,
    /// Last durable sequence (0 if none).
    pub durable_sequence: u64,
    /// Durable records retained.
    pub retained_records: u64,
    /// Append rate over the last minute, bytes per second.
    pub append_rate_bytes_per_second: Option<f64>,
    /// Seconds until full at that rate, if the rate is positive.
    pub time_to_full_seconds: Option<f64>,
    /// Per-cursor lag.
    pub cursors: Vec<CursorStats>,
    /// Oldest record not confirmed by the `drain` cursor.
    pub oldest_undrained: Option<OldestRecord>,
    /// Why the ring refuses writes, if it does.
    pub poisoned: Option<String>,
    /// Appends since open.
    pub appends_total: u64,
    /// Bytes appended since open (headers and padding included).
    pub appended_bytes_total: u64,
    /// Group commits since open.
    pub syncs_total: u64,
    /// Checkpoints since open.
    pub checkpoints_total: u64,
    /// Refused appends since open (policy reject).
    pub rejected_full_total: u64,
    /// Appends that met a full ring since open (policy block).
    pub would_block_total: u64,
    /// Corrupt records detected over the ring's life.
    pub quarantined_records_total: u64,
    /// Torn tails truncated since open.
    pub torn_tail_truncations_total: u64,
    /// Records optional cursors missed since open.
    pub overrun_records_total: u64,
}

impl RingStats {
    pub(crate) fn collect(shared: &Shared, written: Position, rate: &RateEstimator) -> Self {
        let (durable, tail, cursors, poisoned) = {
            let state = shared.state();
            (state.durable, state.tail, state.cursors.clone(), state.poisoned.clone())
        };
        let capacity = shared.geometry.capacity_bytes;
        let used_bytes = written.offset - tail.offset;
        let fill_ratio = used_bytes as f64 / capacity as f64;
        let append_rate = rate.bytes_per_second();
        let time_to_full_seconds =
            append_rate.filter(|&r| r > 0.0).map(|r| (capacity - used_bytes) as f64 / r);
        let cursor_stats = cursors
            .iter()
            .map(|c| CursorStats {
                name: c.name.to_string(),
                required: c.required,
                position: c.persisted,
                lag_records: durable.sequence.saturating_sub(c.persisted.sequence),
                lag_bytes: durable.offset.saturating_sub(c.persisted.offset),
            })
            .collect();
        let oldest_undrained = cursors
            .iter()
            .find(|c| c.name.as_str() == "drain")
            .and_then(|c| oldest_record_at(shared, c.persisted, durable));
        let counter = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = &shared.counters;
        Self {
            location: shared.display_location(),
            ring_id: shared.geometry.ring_id,
            stream_id: shared.geometry.stream_id,
            generation: shared.geometry.generation,
            capacity_bytes: capacity,
            used_bytes,
            fill_ratio,
            thresholds: shared.options.fill_thresholds.iter().map(|&t| (t, fill_ratio >= t)).collect(),
            oldest_sequence: tail.sequence,
            durable_sequence: durable.sequence - 1,
            retained_records: durable.sequence - tail.sequence,
            append_rate_bytes_per_second: append_rate,
            time_to_full_seconds,
            cursors: cursor_stats,
            oldest_undrained,
            poisoned,
            appends_total: counter(&counters.appends_total),
            appended_bytes_total: counter(&counters.appended_bytes_total),
            syncs_total: counter(&counters.syncs_total),
            checkpoints_total: counter(&counters.checkpoints_total),
            rejected_full_total: counter(&counters.rejected_full_total),
            would_block_total: counter(&counters.would_block_total),
            quarantined_records_total: counter(&counters.quarantined_records_total),
            torn_tail_truncations_total: counter(&counters.torn_tail_truncations_total),
            overrun_records_total: counter(&counters.overrun_records_total),
        }
    }
}

/// Reads the header of the first real record at or after `at` (skipping padding) to learn its age.
fn oldest_record_at(shared: &Shared, at: Position, durable: Position) -> Option<OldestRecord> {
    let mut block = crate::aligned::AlignedBuf::zeroed(crate::layout::BLOCK_BYTES_USIZE);
    let mut position = at;
    // A few steps: padding at a lap end, hole records left by recovery.
    for _ in 0..8 {
        if position.offset >= durable.offset {
            return None;
        }
        shared.read_data(position.offset, block.as_mut_slice()).ok()?;
        let header = crate::layout::RecordHeader::from_block(block.as_slice());
        header.validate(block.as_slice(), &shared.expectation(position, 0)).ok()?;
        match header.record_kind() {
            Some(RecordKind::Padding) => {
                position =
                    Position { offset: shared.next_lap_start(position.offset), sequence: position.sequence };
                continue;
            }
            Some(RecordKind::Hole) => {
                let extent = crate::layout::HoleExtent::from_block(block.as_slice())?;
                position =
                    Position { offset: extent.resume_offset.get(), sequence: extent.resume_sequence.get() };
                continue;
            }
            _ => {}
        }
        let now_ns = shared.options.clock.now_ns();
        let timestamp_ns = header.timestamp_ns.get();
        return Some(OldestRecord {
            sequence: header.sequence.get(),
            timestamp_ns,
            age_seconds: now_ns.saturating_sub(timestamp_ns) as f64 / 1e9,
        });
    }
    None
}

/// One bad region found by [`verify`].
#[derive(Clone, Debug, PartialEq)]
pub struct BadRegion {
    /// Byte offset in `ring.data`.
    pub physical_offset: u64,
    /// Logical offset.
    pub logical_offset: u64,
    /// Lap.
    pub lap: u64,
    /// Sequence expected there.
    pub expected_sequence: u64,
    /// Sequence of the next valid record.
    pub resumed_sequence: u64,
    /// What was wrong.
    pub defect: RecordDefect,
}

/// Result of a full scan of the retained records.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct VerifyReport {
    /// Valid records.
    pub good_records: u64,
    /// Their payload bytes.
    pub good_payload_bytes: u64,
    /// First and last valid sequence numbers.
    pub sequence_range: Option<(u64, u64)>,
    /// Bad regions (the first [`VERIFY_LISTED_DEFECTS`]).
    pub bad_regions: Vec<BadRegion>,
    /// Number of bad regions, listed or not.
    pub bad_region_count: u64,
    /// Records lost inside bad regions.
    pub bad_records: u64,
    /// Read-only view of a live ring: records the writer reclaimed (drained, then reused) while
    /// the scan ran. Not corruption.
    pub reclaimed_during_scan_records: u64,
}

impl VerifyReport {
    fn record_bad_region(&mut self, capacity: u64, at: Position, resume: Position, defect: RecordDefect) {
        self.bad_region_count += 1;
        self.bad_records += resume.sequence.saturating_sub(at.sequence);
        if self.bad_regions.len() < VERIFY_LISTED_DEFECTS {
            self.bad_regions.push(BadRegion {
                physical_offset: at.offset % capacity,
                logical_offset: at.offset,
                lap: at.offset / capacity,
                expected_sequence: at.sequence,
                resumed_sequence: resume.sequence,
                defect,
            });
        }
    }
    /// Whether every retained record is valid.
    pub fn is_clean(&self) -> bool {
        self.bad_region_count == 0
    }
}

/// For a read-only view, the live tail from the newest checkpoint, if it has moved past `at`.
fn reclaimed_since_open(shared: &Shared, at: Position) -> Result<Option<Position>> {
    if shared.mode != crate::ring::OpenMode::ReadOnly {
        return Ok(None);
    }
    let checkpoint = crate::ring::newest_checkpoint(&*shared.files.meta)?;
    let live_tail =
        Position { offset: checkpoint.tail_offset.get(), sequence: checkpoint.tail_sequence.get() };
    Ok((live_tail.offset > at.offset).then_some(live_tail))
}

/// Scans every record from the tail to the durable head, validating each.
pub(crate) fn verify(shared: &Shared) -> Result<VerifyReport> {
    let (durable, tail) = {
        let state = shared.state();
        (state.durable, state.tail)
    };
    let capacity = shared.geometry.capacity_bytes;
    let mut scanner = Scanner::new(shared);
    let mut report = VerifyReport::default();
    let mut at = tail;
    while at.offset < durable.offset {
        match scanner.step(shared, at, 0, durable.offset, Some(durable))? {
            ScanStep::Valid { header, next } => {
                if header.record_kind() != Some(RecordKind::Padding) {
                    report.good_records += 1;
                    report.good_payload_bytes += u64::from(header.payload_length.get());
                    let sequence = header.sequence.get();
                    report.sequence_range = Some(match report.sequence_range {
                        None => (sequence, sequence),
                        Some((first, _)) => (first, sequence),
                    });
                }
                at = next;
            }
            ScanStep::Resynced { defect, resume } => {
                // A read-only view of a live ring: the writer may have reclaimed and reused this
                // space since the scan began. Then it is not corruption.
                if let Some(live_tail) = reclaimed_since_open(shared, at)? {
                    report.reclaimed_during_scan_records += live_tail.sequence - at.sequence;
                    at = live_tail;
                    continue;
                }
                report.record_bad_region(capacity, at, resume, defect);
                at = resume;
            }
            ScanStep::Hole { resume, class } => {
                report.record_bad_region(capacity, at, resume, RecordDefect::QuarantinedAtRecovery(class));
                at = resume;
            }
            ScanStep::End { .. } => unreachable!("a known head always resynchronises"),
        }
    }
    Ok(report)
}
