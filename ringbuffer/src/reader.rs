//! Reading the ring: the validating [`Scanner`] shared by recovery, readers and `verify`, and
//! the [`Reader`] that follows one named cursor.
//!
//! Every record is checked right after it is read (header CRC, ring id, position and lap,
//! sequence, payload CRC) and never returned if any check fails. A bad record inside the durable
//! region is quarantined: counted, reported with its location, and skipped by resynchronising on
//! the next valid record header.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::layout::{
    round_up_to_block, stored_record_bytes, DefectClass, Expectation, HoleExtent, RecordDefect, RecordHeader,
    RecordKind, BLOCK_BYTES, BLOCK_BYTES_USIZE,
};
use crate::ring::{OpenMode, Position, ScanStep, Shared};
use crate::stats::RingEventKind;

/// Bytes read at once while searching for the next valid header.
const SEARCH_CHUNK_BYTES: usize = 1 << 20;

/// Validating record reader with fixed buffers (sized once from the ring's maximum payload).
#[derive(Debug)]
pub(crate) struct Scanner {
    header_block: AlignedBuf,
    pub(crate) payload: AlignedBuf,
    search_chunk: AlignedBuf,
}

impl Scanner {
    pub(crate) fn new(shared: &Shared) -> Self {
        Self {
            header_block: AlignedBuf::zeroed(BLOCK_BYTES_USIZE),
            payload: AlignedBuf::zeroed(
                usize::try_from(round_up_to_block(u64::from(shared.geometry.max_payload_bytes)))
                    .expect("fits"),
            ),
            search_chunk: AlignedBuf::zeroed(SEARCH_CHUNK_BYTES),
        }
    }

    /// Reads and validates the record expected at `at`, leaving its payload in `self.payload`.
    ///
    /// `limit` is the logical offset no record may extend past. `known_head` is the durable head
    /// when reading the durable region: then an invalid record is always corruption (never a torn
    /// tail) and, if nothing valid follows, reading resumes at the head.
    pub(crate) fn step(
        &mut self,
        shared: &Shared,
        at: Position,
        min_generation: u32,
        limit: u64,
        known_head: Option<Position>,
    ) -> Result<ScanStep> {
        let capacity = shared.geometry.capacity_bytes;
        if let Some((resume, class)) = shared.known_hole(at) {
            return Ok(ScanStep::Hole { resume, class });
        }
        shared.read_data(at.offset, self.header_block.as_mut_slice())?;
        let header = RecordHeader::from_block(self.header_block.as_slice());
        if let Err(defect) =
            header.validate(self.header_block.as_slice(), &shared.expectation(at, min_generation))
        {
            return self.resync(shared, at, defect, min_generation, limit, known_head);
        }
        if header.record_kind() == Some(RecordKind::Hole) {
            return match HoleExtent::from_block(self.header_block.as_slice()) {
                Some(extent) if hole_extent_is_possible(&extent, at, limit) => Ok(ScanStep::Hole {
                    resume: Position {
                        offset: extent.resume_offset.get(),
                        sequence: extent.resume_sequence.get(),
                    },
                    class: DefectClass::from_code(extent.defect_class.get()),
                }),
                _ => self.resync(shared, at, RecordDefect::BadHoleExtent, min_generation, limit, known_head),
            };
        }
        if header.record_kind() == Some(RecordKind::Padding) {
            let next = Position { offset: shared.next_lap_start(at.offset), sequence: at.sequence };
            return Ok(ScanStep::Valid { header, next });
        }
        let stored = header.stored_bytes();
        let physical = shared.physical(at.offset);
        if physical + stored > capacity || at.offset + stored > limit {
            let defect = RecordDefect::PayloadTooLong(header.payload_length.get());
            return self.resync(shared, at, defect, min_generation, limit, known_head);
        }
        let payload_length = header.payload_length.get() as usize;
        let padded_length = usize::try_from(round_up_to_block(payload_length as u64)).expect("fits");
        if padded_length > 0 {
            shared.read_data(at.offset + BLOCK_BYTES, &mut self.payload.as_mut_slice()[..padded_length])?;
        }
        let next = Position { offset: at.offset + stored, sequence: at.sequence + 1 };
        if let Err(defect) = header.validate_payload(&self.payload.as_slice()[..payload_length]) {
            // The header is sound, so the next record's position is known: it decides between
            // corruption in the middle (something valid follows) and a torn tail.
            if let Some(head) = known_head {
                let resume = if next.offset <= head.offset { next } else { head };
                return Ok(ScanStep::Resynced { defect, resume });
            }
            if next.offset < limit && self.header_is_valid_at(shared, next, min_generation)? {
                return Ok(ScanStep::Resynced { defect, resume: next });
            }
            // The next record may be damaged too: search the whole window, as for a bad header,
            // before calling this the end of the log.
            return self.resync(shared, at, defect, min_generation, limit, None);
        }
        Ok(ScanStep::Valid { header, next })
    }

    fn header_is_valid_at(&mut self, shared: &Shared, at: Position, min_generation: u32) -> Result<bool> {
        shared.read_data(at.offset, self.header_block.as_mut_slice())?;
        let header = RecordHeader::from_block(self.header_block.as_slice());
        Ok(header.validate(self.header_block.as_slice(), &shared.expectation(at, min_generation)).is_ok())
    }

    /// Searches forward from a bad record for the next valid header (any sequence at or after
    /// the expected one), at most two maximum-size records away.
    fn resync(
        &mut self,
        shared: &Shared,
        at: Position,
        defect: RecordDefect,
        min_generation: u32,
        limit: u64,
        known_head: Option<Position>,
    ) -> Result<ScanStep> {
        let capacity = shared.geometry.capacity_bytes;
        let window = 2 * stored_record_bytes(u64::from(shared.geometry.max_payload_bytes)) + BLOCK_BYTES;
        let search_end = limit.min(at.offset + window);
        let mut probe = at.offset + BLOCK_BYTES;
        while probe < search_end {
            let physical = shared.physical(probe);
            let chunk_bytes = (SEARCH_CHUNK_BYTES as u64).min(capacity - physical).min(search_end - probe);
            let chunk_length = usize::try_from(chunk_bytes).expect("chunk fits");
            shared.read_data(probe, &mut self.search_chunk.as_mut_slice()[..chunk_length])?;
            for (index, block) in
                self.search_chunk.as_slice()[..chunk_length].chunks(BLOCK_BYTES_USIZE).enumerate()
            {
                let candidate_offset = probe + (index * BLOCK_BYTES_USIZE) as u64;
                let header = RecordHeader::from_block(block);
                let expect = Expectation {
                    sequence: None,
                    ..shared.expectation(Position { offset: candidate_offset, sequence: 0 }, min_generation)
                };
                if header.validate(block, &expect).is_ok() && header.sequence.get() >= at.sequence {
                    let resume = Position { offset: candidate_offset, sequence: header.sequence.get() };
                    return Ok(ScanStep::Resynced { defect, resume });
                }
            }
            probe += chunk_bytes;
        }
        match known_head {
            Some(head) if head.offset > at.offset => Ok(ScanStep::Resynced { defect, resume: head }),
            _ => Ok(ScanStep::End { defect }),
        }
    }
}

/// A hole marker may only point forward, to a block boundary, within the readable region.
fn hole_extent_is_possible(extent: &HoleExtent, at: Position, limit: u64) -> bool {
    let resume_offset = extent.resume_offset.get();
    resume_offset > at.offset
        && resume_offset <= limit
        && resume_offset.is_multiple_of(BLOCK_BYTES)
        && extent.resume_sequence.get() >= at.sequence
}

/// What the reader knows about a record it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// Sequence number.
    pub sequence: u64,
    /// Kind.
    pub kind: RecordKind,
    /// Application flags.
    pub flags: u8,
    /// Stream id.
    pub stream_id: u32,
    /// Append time, nanoseconds since the Unix epoch, from the writer's clock.
    pub timestamp_ns: u64,
    /// Where the record starts.
    pub position: Position,
    /// Where the next record starts: pass it to [`Reader::commit_at`] once this record is done.
    pub end: Position,
}

/// A record returned by a reader; the payload borrows the reader's buffer.
#[derive(Debug)]
pub struct Record<'a> {
    /// Header facts.
    pub info: RecordInfo,
    /// The payload, validated against its CRC.
    pub payload: &'a [u8],
}

/// A reader following one named cursor. At most one reader per cursor is open at a time.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    cursor_index: usize,
    name: String,
    position: Position,
    scanner: Scanner,
    /// Ends of the records returned most recently: positions `commit_at` accepts without a read.
    recent_ends: heapless::Deque<Position, RECENT_ENDS>,
}

/// Record ends a reader remembers for `commit_at` (a drain has at most this many in flight).
const RECENT_ENDS: usize = 256;

impl Reader {
    pub(crate) fn open(shared: Arc<Shared>, name: &str, start_at_cursor: Option<&str>) -> Result<Self> {
        let (cursor_index, position) = {
            let mut state = shared.state();
            let known: Vec<String> = state.cursors.iter().map(|c| c.name.to_string()).collect();
            let find = |wanted: &str| {
                state.cursors.iter().position(|c| c.name.as_str() == wanted).ok_or_else(|| Error::Cursor {
                    name: wanted.into(),
                    reason: format!("no such cursor (this ring has: {})", known.join(", ")),
                })
            };
            let cursor_index = find(name)?;
            let start_index = match start_at_cursor {
                Some(other) => find(other)?,
                None => cursor_index,
            };
            if state.cursors[cursor_index].in_use {
                return Err(Error::Cursor { name: name.into(), reason: "already has an open reader".into() });
            }
            state.cursors[cursor_index].in_use = true;
            let mut position = state.cursors[start_index].persisted;
            if position.offset < state.tail.offset {
                position = state.tail;
            }
            (cursor_index, position)
        };
        let scanner = Scanner::new(&shared);
        Ok(Self {
            shared,
            cursor_index,
            name: name.into(),
            position,
            scanner,
            recent_ends: heapless::Deque::new(),
        })
    }

    /// The cursor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the next read starts.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Moves the reader to the durable head, skipping everything before it (not committed: call
    /// [`Reader::commit`] to persist). For a consumer that only wants what arrives from now on,
    /// such as the drain's live lane, which sends the newest exposure first while a backlog waits.
    pub fn skip_to_head(&mut self) {
        self.position = self.shared.state().durable;
        self.recent_ends.clear();
    }

    /// Bytes between this cursor's persisted position and the durable head: the backlog a
    /// consumer still has to confirm (the drain's, while the link is down).
    pub fn backlog_bytes(&self) -> u64 {
        let state = self.shared.state();
        state
            .durable
            .offset
            .saturating_sub(state.cursors[self.cursor_index].persisted.offset.max(state.tail.offset))
    }

    /// Returns the next durable record, or `None` when the reader has caught up with the
    /// durable head. Corrupt records are skipped (and reported), never returned.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        let Some((info, payload_length)) = self.advance()? else {
            return Ok(None);
        };
        Ok(Some(Record { info, payload: &self.scanner.payload.as_slice()[..payload_length] }))
    }

    fn advance(&mut self) -> Result<Option<(RecordInfo, usize)>> {
        let shared = Arc::clone(&self.shared);
        let capacity = shared.geometry.capacity_bytes;
        loop {
            let (durable, tail) = {
                let state = shared.state();
                (state.durable, state.tail)
            };
            if self.position.offset >= durable.offset {
                return Ok(None);
            }
            if self.skip_if_overrun(tail) {
                continue;
            }
            let at = self.position;
            let step = self.scanner.step(&shared, at, 0, durable.offset, Some(durable))?;
            // The writer may have reused this space while we read (only for optional cursors):
            // that is an overrun, not corruption.
            if self.skip_if_overrun(shared.state().tail) {
                continue;
            }
            match step {
                ScanStep::Valid { header, next } => {
                    self.position = next;
                    let Some(kind) = header.record_kind() else { continue };
                    if matches!(kind, RecordKind::Padding | RecordKind::Hole) {
                        continue;
                    }
                    let info = RecordInfo {
                        sequence: header.sequence.get(),
                        kind,
                        flags: header.flags,
                        stream_id: header.stream_id.get(),
                        timestamp_ns: header.timestamp_ns.get(),
                        position: at,
                        end: next,
                    };
                    if self.recent_ends.is_full() {
                        self.recent_ends.pop_front();
                    }
                    let _ = self.recent_ends.push_back(next);
                    return Ok(Some((info, header.payload_length.get() as usize)));
                }
                ScanStep::Resynced { defect, resume } => {
                    shared
                        .counters
                        .quarantined_records_total
                        .fetch_add(resume.sequence.saturating_sub(at.sequence).max(1), Ordering::Relaxed);
                    shared.record_event(RingEventKind::Quarantined {
                        logical_offset: at.offset,
                        lap: at.offset / capacity,
                        physical_offset: shared.physical(at.offset),
                        expected_sequence: at.sequence,
                        resumed_sequence: resume.sequence,
                        defect,
                    });
                    self.position = resume;
                }
                ScanStep::Hole { resume, class } => {
                    // Recovery quarantined this region (and counted it); follow its decision, and
                    // tell whoever watches this reader that records are missing here.
                    if resume.sequence > at.sequence {
                        shared.record_event(RingEventKind::Quarantined {
                            logical_offset: at.offset,
                            lap: at.offset / capacity,
                            physical_offset: shared.physical(at.offset),
                            expected_sequence: at.sequence,
                            resumed_sequence: resume.sequence,
                            defect: RecordDefect::QuarantinedAtRecovery(class),
                        });
                    }
                    self.position = resume;
                }
                ScanStep::End { .. } => unreachable!("a known head always resynchronises"),
            }
        }
    }

    fn skip_if_overrun(&mut self, tail: Position) -> bool {
        if self.position.offset >= tail.offset {
            return false;
        }
        let skipped_records = tail.sequence.saturating_sub(self.position.sequence);
        self.shared.counters.overrun_records_total.fetch_add(skipped_records, Ordering::Relaxed);
        self.shared.record_event(RingEventKind::CursorOverrun {
            cursor: short_name(&self.name),
            from_sequence: self.position.sequence,
            to_sequence: tail.sequence,
        });
        self.position = tail;
        true
    }

    /// Reads again a record this reader (or any reader of this ring) returned before, by its
    /// [`RecordInfo`]: random access for a consumer that indexes records on a first pass and
    /// assembles them later (the drain builds one detector file from frames interleaved with other
    /// detectors'). The record is validated again (both CRCs, position, sequence).
    ///
    /// Fails with [`Error::Cursor`] when the record is no longer in the ring (its space was
    /// reclaimed: only behind the slowest required cursor, so never for records a required
    /// cursor has not committed past) or is not a valid record with that sequence any more.
    pub fn fetch(&mut self, info: &RecordInfo) -> Result<Record<'_>> {
        let shared = Arc::clone(&self.shared);
        let (durable, tail) = {
            let state = shared.state();
            (state.durable, state.tail)
        };
        let gone = |reason: String| Error::Cursor { name: self.name.clone(), reason };
        if info.position.offset < tail.offset || info.end.offset > durable.offset {
            return Err(gone(format!(
                "record {} at logical offset {} is not in the ring's durable range ({}..{})",
                info.sequence, info.position.offset, tail.offset, durable.offset
            )));
        }
        match self.scanner.step(&shared, info.position, 0, durable.offset, Some(durable))? {
            ScanStep::Valid { header, next }
                if header.sequence.get() == info.sequence
                    && next == info.end
                    && shared.state().tail.offset <= info.position.offset =>
            {
                let payload_length = header.payload_length.get() as usize;
                Ok(Record { info: *info, payload: &self.scanner.payload.as_slice()[..payload_length] })
            }
            _ => Err(gone(format!(
                "record {} at logical offset {} no longer reads back valid",
                info.sequence, info.position.offset
            ))),
        }
    }

    /// Waits until a durable record past the reader's position exists (tail -f), or `timeout`
    /// passes. Returns whether one does.
    pub fn wait_for_data(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state();
        loop {
            if state.durable.offset > self.position.offset {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .durable_changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Persists the cursor at the reader's current position (everything returned so far is done).
    pub fn commit(&mut self) -> Result<()> {
        self.commit_at(self.position)
    }

    /// Persists the cursor at `position`, which must be a record boundary the reader has passed
    /// (a [`RecordInfo::end`]). Durable when this returns; only then may the space behind it be
    /// reused.
    pub fn commit_at(&mut self, position: Position) -> Result<()> {
        if self.shared.mode == OpenMode::ReadOnly {
            return Err(Error::Cursor { name: self.name.clone(), reason: "ring opened read-only".into() });
        }
        let persisted = self.shared.state().cursors[self.cursor_index].persisted;
        if position.offset > self.position.offset || position.sequence > self.position.sequence {
            return Err(Error::Cursor {
                name: self.name.clone(),
                reason: format!(
                    "cannot commit sequence {} past the reader's position (sequence {})",
                    position.sequence, self.position.sequence
                ),
            });
        }
        if position.offset <= persisted.offset {
            return Ok(());
        }
        if position != self.position && !self.recent_ends.iter().any(|&end| end == position) {
            self.check_record_boundary(position)?;
        }
        self.shared.checkpoint(Some((self.cursor_index, position)))
    }

    /// A position the reader did not just return must hold a valid record header (data, padding
    /// or hole) with that very sequence number; anything else would strand the cursor.
    fn check_record_boundary(&mut self, position: Position) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        if !position.offset.is_multiple_of(BLOCK_BYTES) {
            return Err(Error::Cursor {
                name: self.name.clone(),
                reason: format!(
                    "cannot commit at offset {}: records start on 4096-byte boundaries; commit a \
                     RecordInfo::end returned by this reader",
                    position.offset
                ),
            });
        }
        let mut block = AlignedBuf::zeroed(BLOCK_BYTES_USIZE);
        shared.read_data(position.offset, block.as_mut_slice())?;
        let header = RecordHeader::from_block(block.as_slice());
        header.validate(block.as_slice(), &shared.expectation(position, 0)).map_err(|defect| Error::Cursor {
            name: self.name.clone(),
            reason: format!(
                "cannot commit at offset {} sequence {}: not the start of a record ({defect}); commit a \
                 RecordInfo::end returned by this reader",
                position.offset, position.sequence
            ),
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.state().cursors[self.cursor_index].in_use = false;
    }
}

fn short_name(name: &str) -> heapless::String<24> {
    let mut short = heapless::String::new();
    let _ = short.push_str(&name[..name.len().min(24)]);
    short
}
