//! The ring: creation, opening with recovery, group-commit appends, checkpoints and cursors.
//!
//! One [`Ring`] is the single writer of a ring directory; any number of [`Reader`]s (one per
//! named cursor) share its state through an `Arc`. Positions are *logical* byte offsets that only
//! grow: `physical = logical % capacity`, `lap = logical / capacity`. Everything between the
//! tail (the slowest persisted required cursor) and the durable head is intact and readable.
//!
//! Order of durability, the invariant everything else leans on:
//! 1. records are written, then `fdatasync`ed, and only then is the durable head advanced and
//!    the append acknowledged (`commit` returns);
//! 2. a checkpoint only names a head that is already durable;
//! 3. a cursor position counts for reclamation only once a checkpoint holding it is durable.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zerocopy::IntoBytes;

use crate::aligned::{is_block_aligned, AlignedBuf};
use crate::clock::Clock;
use crate::config::{validate_cursor_name, CreateOptions, FullPolicy, RingOptions};
use crate::error::{io_error, Error, Result};
use crate::layout::{
    round_up_to_block, stored_record_bytes, CheckpointSlot, CursorEntry, DefectClass, Expectation,
    HoleExtent, RecordDefect, RecordHeader, RecordKind, SlotDefect, BLOCK_BYTES, BLOCK_BYTES_USIZE,
    CHECKPOINT_FLAG_CLEAN_CLOSE, CHECKPOINT_SLOTS, CURSOR_FLAG_REQUIRED, CURSOR_NAME_BYTES, FORMAT_VERSION,
    HOLE_EXTENT_OFFSET, MAX_CURSORS, META_FILE_BYTES,
};
use crate::stats::{Counters, EventLog, RateEstimator, RingEvent, RingEventKind};
use crate::storage::{
    FileStorage, RingFiles, Storage, CREATING_SUFFIX, DATA_FILE_NAME, LOCK_FILE_NAME, META_FILE_NAME,
};

/// A point in the ring: the logical offset of a record and its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Logical byte offset (`lap * capacity + physical`).
    pub offset: u64,
    /// Sequence number of the record at that offset.
    pub sequence: u64,
}

/// One (time, head offset) point of the append-rate estimate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateSample {
    pub time_ns: u64,
    pub head_offset: u64,
}

/// Most records in one [`Ring::append_batch`].
pub const MAX_BATCH_RECORDS: usize = 64;
/// Most writes in flight in one [`Ring::append_batch`].
pub const MAX_IO_DEPTH: usize = 16;
/// Most records [`Ring::plan_append`] lets an external writer have in flight (planned, not yet
/// confirmed written).
pub const MAX_EXTERNAL_IN_FLIGHT: usize = 256;

/// One record of a batch: the same arguments as [`Ring::append`].
#[derive(Clone, Copy, Debug)]
pub struct BatchRecord<'a> {
    /// Kind.
    pub kind: RecordKind,
    /// Application flags.
    pub flags: u8,
    /// 4096-aligned payload buffer, padded to a multiple of 4096 bytes.
    pub padded: &'a [u8],
    /// Payload length inside `padded`.
    pub payload_length: usize,
}

/// A write planned by `append_batch`: a record (index into the batch) or padding (`None`).
#[derive(Clone, Copy, Debug)]
struct PlannedWrite {
    at: Position,
    record: Option<usize>,
}

/// What an append returns: where the record went. It is *not yet durable*; it is acknowledged
/// once [`Ring::commit`] returns a durable sequence at or past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number.
    pub sequence: u64,
    /// The record's logical offset.
    pub offset: u64,
}

/// How to open a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The single writer: takes the lock, recovers, bumps the generation, writes a checkpoint.
    ReadWrite,
    /// Inspection while a writer may be running: no lock, no writes, recovery in memory only.
    ReadOnly,
}

/// Fixed facts about a ring, from its checkpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub ring_id: u64,
    pub capacity_bytes: u64,
    pub max_payload_bytes: u32,
    pub stream_id: u32,
    pub generation: u32,
    pub created_ns: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct CursorState {
    pub name: heapless::String<CURSOR_NAME_BYTES>,
    pub required: bool,
    pub persisted: Position,
    pub in_use: bool,
}

#[derive(Debug)]
pub(crate) struct State {
    pub durable: Position,
    pub tail: Position,
    pub cursors: heapless::Vec<CursorState, MAX_CURSORS>,
    pub poisoned: Option<String>,
}

#[derive(Debug)]
struct MetaWriter {
    checkpoint_sequence: u64,
    block: AlignedBuf,
}

/// State shared by the writer and every reader.
#[derive(Debug)]
pub(crate) struct Shared {
    pub files: RingFiles,
    pub geometry: Geometry,
    pub options: RingOptions,
    pub mode: OpenMode,
    pub state: Mutex<State>,
    pub durable_changed: Condvar,
    pub space_freed: Condvar,
    meta: Mutex<MetaWriter>,
    pub poisoned_flag: AtomicBool,
    holes: Mutex<heapless::Vec<(Position, Position, DefectClass), MAX_KNOWN_HOLES>>,
    pub counters: Counters,
    pub events: Mutex<EventLog>,
    pub directory: Option<PathBuf>,
    _lock: Option<File>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread while holding the lock leaves plain data behind; the ring's
    // own invariants are re-checked on every read, so continuing is safe.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn record_event(&self, kind: RingEventKind) {
        let event = RingEvent { time_ns: self.options.clock.now_ns(), kind };
        event.log(self.display_location());
        lock(&self.events).push(event);
    }

    pub(crate) fn display_location(&self) -> String {
        match &self.directory {
            Some(directory) => directory.display().to_string(),
            None => self.files.data.location().display().to_string(),
        }
    }

    /// Where data resumes if this open's recovery quarantined a region starting at `at`.
    pub(crate) fn known_hole(&self, at: Position) -> Option<(Position, DefectClass)> {
        lock(&self.holes)
            .iter()
            .find(|(start, _, _)| start.offset == at.offset)
            .map(|&(_, resume, class)| (resume, class))
    }

    fn remember_hole(&self, at: Position, resume: Position, class: DefectClass) {
        if lock(&self.holes).push((at, resume, class)).is_err() {
            tracing::warn!(
                ring = %self.display_location(),
                "more than {MAX_KNOWN_HOLES} quarantined regions in one recovery; read-write opens still \
                 mark them on disk, read-only inspection may report later ones again"
            );
        }
    }

    /// Most bytes a writer may have appended and not yet synced. Appends commit before going past
    /// it, so after a crash recovery knows how far beyond the durable head stale writes can lie.
    pub(crate) fn unsynced_limit_bytes(&self) -> u64 {
        let largest_record_bytes = stored_record_bytes(u64::from(self.geometry.max_payload_bytes));
        (512 << 20).max(4 * largest_record_bytes)
    }

    pub(crate) fn expectation(&self, at: Position, min_generation: u32) -> Expectation {
        Expectation {
            ring_id: self.geometry.ring_id,
            logical_offset: at.offset,
            sequence: Some(at.sequence),
            min_generation,
            max_payload_bytes: self.geometry.max_payload_bytes,
        }
    }

    pub(crate) fn physical(&self, logical_offset: u64) -> u64 {
        logical_offset % self.geometry.capacity_bytes
    }

    /// Logical offset of the start of the lap after the one holding `logical_offset`.
    pub(crate) fn next_lap_start(&self, logical_offset: u64) -> u64 {
        (logical_offset / self.geometry.capacity_bytes + 1) * self.geometry.capacity_bytes
    }

    pub(crate) fn read_data(&self, logical_offset: u64, buffer: &mut [u8]) -> Result<()> {
        let physical = self.physical(logical_offset);
        debug_assert!(physical + buffer.len() as u64 <= self.geometry.capacity_bytes);
        self.files.data.read_exact_at(physical, buffer).map_err(|source| Error::IoAt {
            path: self.files.data.location().to_path_buf(),
            operation: "read",
            offset: physical,
            source,
        })
    }

    fn poison(&self, cause: String) -> Error {
        tracing::error!(ring = %self.display_location(), %cause, "ring poisoned: refusing all further writes");
        let mut state = self.state();
        if state.poisoned.is_none() {
            state.poisoned = Some(cause.clone());
        }
        self.poisoned_flag.store(true, Ordering::SeqCst);
        drop(state);
        self.record_event(RingEventKind::Poisoned { cause: short_text(&cause) });
        self.space_freed.notify_all();
        Error::Poisoned { cause }
    }

    pub(crate) fn check_poisoned(&self) -> Result<()> {
        if self.poisoned_flag.load(Ordering::SeqCst) {
            let cause = self.state().poisoned.clone().unwrap_or_default();
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    /// Writes a checkpoint, optionally moving one cursor, and only then lets the writer reclaim
    /// the space the cursor moved past.
    pub(crate) fn checkpoint(&self, cursor_update: Option<(usize, Position)>) -> Result<()> {
        self.checkpoint_with(cursor_update, false)
    }

    /// Writes a checkpoint; `clean_close` marks that the writer appends nothing after it.
    fn checkpoint_with(&self, cursor_update: Option<(usize, Position)>, clean_close: bool) -> Result<()> {
        if self.mode == OpenMode::ReadOnly {
            return Err(Error::InvalidConfig {
                field: "mode",
                value: "read-only".into(),
                reason: "a read-only ring cannot persist checkpoints or cursor positions".into(),
            });
        }
        let mut meta = lock(&self.meta);
        self.check_poisoned()?;
        let next_sequence = meta.checkpoint_sequence + 1;
        let slot = {
            let state = self.state();
            let mut cursors = state.cursors.clone();
            if let Some((index, position)) = cursor_update {
                cursors[index].persisted = position;
            }
            let tail = compute_tail(&cursors, state.durable).max(state.tail);
            let mut slot = self.encode_checkpoint(next_sequence, state.durable, tail, &cursors);
            if clean_close {
                slot.flags = CHECKPOINT_FLAG_CLEAN_CLOSE.into();
                slot.seal();
            }
            slot
        };
        self.write_slot(&mut meta, &slot)?;
        // The older slot is what recovery falls back to if the newest is lost: reuse space only
        // once both slots release it.
        if slot.tail_offset.get() > self.state().tail.offset {
            let mut again = slot;
            again.checkpoint_sequence = (meta.checkpoint_sequence + 1).into();
            again.seal();
            self.write_slot(&mut meta, &again)?;
        }
        {
            let mut state = self.state();
            if let Some((index, position)) = cursor_update {
                state.cursors[index].persisted = position;
            }
            // The tail never moves backwards: space already reclaimed stays reclaimed.
            state.tail = compute_tail(&state.cursors, state.durable).max(state.tail);
        }
        self.counters.checkpoints_total.fetch_add(1, Ordering::Relaxed);
        self.space_freed.notify_all();
        Ok(())
    }

    /// Writes one sealed slot to its place in `ring.meta` and makes it durable; poisons on failure.
    fn write_slot(&self, meta: &mut MetaWriter, slot: &CheckpointSlot) -> Result<()> {
        let checkpoint_sequence = slot.checkpoint_sequence.get();
        assert_eq!(checkpoint_sequence, meta.checkpoint_sequence + 1, "checkpoints are written in order");
        let block = meta.block.as_mut_slice();
        block.fill(0);
        block[..slot.as_bytes().len()].copy_from_slice(slot.as_bytes());
        let slot_offset = (checkpoint_sequence % CHECKPOINT_SLOTS as u64) * BLOCK_BYTES;
        let meta_storage = &self.files.meta;
        if let Err(source) = meta_storage.write_all_at(slot_offset, &[meta.block.as_slice()]) {
            let location = meta_storage.location().display();
            return Err(self.poison(format!("checkpoint write to {location} failed: {source}")));
        }
        if let Err(source) = meta_storage.sync_data() {
            let location = meta_storage.location().display();
            return Err(self.poison(format!("fdatasync of {location} failed: {source}")));
        }
        meta.checkpoint_sequence = checkpoint_sequence;
        Ok(())
    }

    fn encode_checkpoint(
        &self,
        checkpoint_sequence: u64,
        head: Position,
        tail: Position,
        cursors: &[CursorState],
    ) -> CheckpointSlot {
        assert!(tail.offset <= head.offset, "tail {tail:?} past head {head:?}");
        assert!(head.offset - tail.offset <= self.geometry.capacity_bytes);
        let mut slot = CheckpointSlot::zeroed();
        slot.checkpoint_sequence = checkpoint_sequence.into();
        slot.ring_id = self.geometry.ring_id.into();
        slot.capacity_bytes = self.geometry.capacity_bytes.into();
        slot.max_payload_bytes = self.geometry.max_payload_bytes.into();
        slot.stream_id = self.geometry.stream_id.into();
        slot.generation = self.geometry.generation.into();
        slot.created_ns = self.geometry.created_ns.into();
        slot.head_offset = head.offset.into();
        slot.head_sequence = head.sequence.into();
        slot.tail_offset = tail.offset.into();
        slot.tail_sequence = tail.sequence.into();
        slot.quarantined_records_total =
            self.counters.quarantined_records_total.load(Ordering::Relaxed).into();
        slot.cursor_count = u32::try_from(cursors.len()).expect("at most 8 cursors").into();
        for (entry, cursor) in slot.cursors.iter_mut().zip(cursors) {
            entry.name[..cursor.name.len()].copy_from_slice(cursor.name.as_bytes());
            entry.flags = if cursor.required { CURSOR_FLAG_REQUIRED } else { 0 }.into();
            entry.logical_offset = cursor.persisted.offset.into();
            entry.sequence = cursor.persisted.sequence.into();
        }
        slot.seal();
        slot
    }
}

/// Zeroes what a crashed writer may have left beyond the recovered head: its unsynced writes
/// (at most `unsynced_limit_bytes`, plus padding) that recovery did not keep. Afterwards nothing
/// past the head can be taken for a record of the current lap, so a reader that must search past
/// a damaged header can never land on a stale one. Only reclaimable space (behind the tail, one
/// lap back) is touched.
fn wipe_beyond_head(shared: &Shared, head: Position, tail: Position) -> Result<()> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let capacity = shared.geometry.capacity_bytes;
    let largest_record_bytes = stored_record_bytes(u64::from(shared.geometry.max_payload_bytes));
    let end =
        (head.offset + shared.unsynced_limit_bytes() + 2 * largest_record_bytes).min(tail.offset + capacity);
    let zeros = AlignedBuf::zeroed(usize::try_from(CHUNK_BYTES).expect("1 MiB"));
    let started = Instant::now();
    let mut at = head.offset;
    while at < end {
        let physical = shared.physical(at);
        let length = CHUNK_BYTES.min(capacity - physical).min(end - at);
        let length_usize = usize::try_from(length).expect("chunk fits");
        shared
            .files
            .data
            .write_all_at(physical, &[&zeros.as_slice()[..length_usize]])
            .map_err(|e| io_error(shared.files.data.location(), "zero the space beyond the head", e))?;
        at += length;
    }
    tracing::info!(
        ring = %shared.display_location(),
        wiped_bytes = end.saturating_sub(head.offset),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "zeroed what an unclean stop may have left beyond the head"
    );
    Ok(())
}

/// Most quarantined regions one recovery remembers in memory (read-only opens rely on it).
const MAX_KNOWN_HOLES: usize = 64;

/// Records recovery's decision on disk: a hole record at the start of a quarantined region,
/// pointing at the first valid record after it, so readers follow recovery instead of searching.
fn write_hole_marker(shared: &Shared, at: Position, resume: Position, class: DefectClass) -> Result<()> {
    let geometry = shared.geometry;
    let header = RecordHeader::new(
        RecordKind::Hole,
        0,
        at.sequence,
        at.offset,
        geometry.ring_id,
        geometry.generation,
        geometry.stream_id,
        &[],
        shared.options.clock.now_ns(),
    );
    let mut block = AlignedBuf::zeroed(BLOCK_BYTES_USIZE);
    block.as_mut_slice()[..64].copy_from_slice(header.as_bytes());
    let extent = HoleExtent::new(resume.offset, resume.sequence, class);
    block.as_mut_slice()[HOLE_EXTENT_OFFSET..HOLE_EXTENT_OFFSET + 24].copy_from_slice(extent.as_bytes());
    shared
        .files
        .data
        .write_all_at(shared.physical(at.offset), &[block.as_slice()])
        .map_err(|e| io_error(shared.files.data.location(), "write a hole marker", e))
}

/// The reclaim point: the slowest persisted required cursor (the head if there is none).
fn compute_tail(cursors: &[CursorState], head: Position) -> Position {
    cursors.iter().filter(|c| c.required).map(|c| c.persisted).min().unwrap_or(head)
}

fn short_text(text: &str) -> heapless::String<96> {
    let mut short = heapless::String::new();
    for character in text.chars() {
        if short.push(character).is_err() {
            break;
        }
    }
    short
}

/// The single writer of a ring.
#[derive(Debug)]
pub struct Ring {
    shared: Arc<Shared>,
    /// Next position to place a record at: everything before it is written or planned.
    written: Position,
    /// Everything before this position is written (planned records confirmed by their writer).
    confirmed: Position,
    /// Planned records not yet confirmed, oldest first: (sequence, position after the record).
    external_in_flight: heapless::Deque<(u64, Position), MAX_EXTERNAL_IN_FLIGHT>,
    unsynced_records: u64,
    unsynced_bytes: u64,
    bytes_since_checkpoint: u64,
    header_block: AlignedBuf,
    batch_headers: AlignedBuf,
    rate: RateEstimator,
    thresholds_crossed: usize,
}

fn header_bytes(header: &RecordHeader) -> [u8; 64] {
    header.as_bytes().try_into().expect("a record header is 64 bytes")
}

/// What a sync started by [`Ring::begin_sync`] will make durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "hand the fdatasync's result to Ring::finish_sync"]
pub struct SyncTicket {
    covers: Position,
}

impl SyncTicket {
    /// The last sequence number the sync covers.
    pub fn last_sequence(&self) -> u64 {
        self.covers.sequence - 1
    }
}

/// One 4096-byte block to write at a byte offset of the ring's data file: the 64-byte record
/// header at its start, zeros after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedBlock {
    /// Byte offset in the data file (a multiple of 4096).
    pub physical_offset: u64,
    /// The record header; bytes 64..4096 of the block are zero.
    pub header: [u8; 64],
}

/// Where [`Ring::plan_append`] placed a record.
///
/// Write `padding` (if any: a padding record's header block, which ends the lap), then the
/// record's header block at `record.physical_offset`, immediately followed by the payload padded
/// with zeros to a multiple of 4096 (one write of `4096 + padded payload` bytes from a buffer
/// that holds the header block in front of the payload is the zero-copy way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedAppend {
    /// The record's sequence number.
    pub sequence: u64,
    /// Its logical offset (position + lap).
    pub logical_offset: u64,
    /// The record's header block.
    pub record: PlannedBlock,
    /// A padding record to write first when the record does not fit before the end of the lap.
    pub padding: Option<PlannedBlock>,
}

/// Outcome of scanning forward from a known-good position.
pub(crate) enum ScanStep {
    /// A valid record (or padding) at the expected position.
    Valid { header: RecordHeader, next: Position },
    /// An invalid record, and a valid one was found further on.
    Resynced { defect: RecordDefect, resume: Position },
    /// An invalid record with nothing valid after it within reach.
    End { defect: RecordDefect },
    /// A region an earlier recovery quarantined (a hole marker on disk, or one found by this
    /// open's recovery); continue at `resume`.
    Hole { resume: Position, class: DefectClass },
}

impl Ring {
    /// Creates a ring in `directory` (created if missing) and opens it for writing.
    ///
    /// Refuses with [`Error::AlreadyExists`] if the directory already holds ring files, unless
    /// `create.force` is set.
    pub fn create(directory: &Path, create: &CreateOptions, options: RingOptions) -> Result<Self> {
        create.validate()?;
        options.validate()?;
        std::fs::create_dir_all(directory).map_err(|e| io_error(directory, "create directory", e))?;
        let lock_file = take_lock(directory)?;
        let data_path = directory.join(DATA_FILE_NAME);
        let meta_path = directory.join(META_FILE_NAME);
        let data_creating = directory.join(format!("{DATA_FILE_NAME}{CREATING_SUFFIX}"));
        let meta_creating = directory.join(format!("{META_FILE_NAME}{CREATING_SUFFIX}"));
        if data_path.exists() && !meta_path.exists() && meta_creating.exists() {
            // `ring.meta` is renamed into place last: without it, `ring.data` is the half of an
            // interrupted create and never held a record.
            tracing::warn!(path = %data_path.display(), "removing the data file of an interrupted create");
            std::fs::remove_file(&data_path).map_err(|e| io_error(&data_path, "remove", e))?;
        }
        if data_path.exists() || meta_path.exists() {
            if !create.force {
                return Err(Error::AlreadyExists { path: directory.to_path_buf() });
            }
            tracing::warn!(directory = %directory.display(), "create --force: destroying the existing ring");
            for path in [&data_path, &meta_path] {
                if path.exists() {
                    std::fs::remove_file(path).map_err(|e| io_error(path, "remove", e))?;
                }
            }
        }
        // Build the ring under temporary names and rename it into place, `ring.meta` last: a
        // crash at any point leaves either no ring (and `*.creating` leftovers that the next
        // create removes) or a complete one, never a directory that neither opens nor creates.
        for leftover in [&data_creating, &meta_creating] {
            if leftover.exists() {
                tracing::warn!(path = %leftover.display(), "removing the leftover of an interrupted create");
                std::fs::remove_file(leftover).map_err(|e| io_error(leftover, "remove", e))?;
            }
        }
        let data = FileStorage::create(&data_creating, create.capacity_bytes, create.zero_fill)
            .map_err(|e| io_error(&data_creating, "create and fallocate", e))?;
        let meta = FileStorage::create(&meta_creating, META_FILE_BYTES, false)
            .map_err(|e| io_error(&meta_creating, "create and fallocate", e))?;
        let files = RingFiles { meta: Arc::new(meta), data: Arc::new(data) };
        write_initial_checkpoints(&files, create, &*options.clock)?;
        drop(files);
        std::fs::rename(&data_creating, &data_path).map_err(|e| io_error(&data_creating, "rename", e))?;
        sync_directory(directory)?;
        std::fs::rename(&meta_creating, &meta_path).map_err(|e| io_error(&meta_creating, "rename", e))?;
        sync_directory(directory)?;
        let files = open_files(directory, options.direct_io)?;
        Self::open_inner(files, options, OpenMode::ReadWrite, Some(directory), Some(lock_file))
    }

    /// Opens the ring in `directory` for writing. Never creates or formats anything.
    pub fn open(directory: &Path, options: RingOptions) -> Result<Self> {
        options.validate()?;
        let lock_file = take_lock(directory)?;
        let files = open_files(directory, options.direct_io)?;
        Self::open_inner(files, options, OpenMode::ReadWrite, Some(directory), Some(lock_file))
    }

    /// Creates a ring on the given storage (tests and the simulator use [`crate::sim::SimRing`]).
    pub fn create_on(files: RingFiles, create: &CreateOptions, options: RingOptions) -> Result<Self> {
        create.validate()?;
        options.validate()?;
        check_size(&*files.data, create.capacity_bytes)?;
        check_size(&*files.meta, META_FILE_BYTES)?;
        let mut block = AlignedBuf::zeroed(BLOCK_BYTES_USIZE);
        if !create.force {
            for slot_index in 0..CHECKPOINT_SLOTS as u64 {
                read_meta_block(&*files.meta, slot_index, &mut block)?;
                if !block.as_slice().iter().all(|&b| b == 0) {
                    return Err(Error::AlreadyExists { path: files.meta.location().to_path_buf() });
                }
            }
        }
        write_initial_checkpoints(&files, create, &*options.clock)?;
        Self::open_inner(files, options, OpenMode::ReadWrite, None, None)
    }

    /// Opens a ring on the given storage.
    pub fn open_on(files: RingFiles, options: RingOptions) -> Result<Self> {
        options.validate()?;
        Self::open_inner(files, options, OpenMode::ReadWrite, None, None)
    }

    fn open_inner(
        files: RingFiles,
        options: RingOptions,
        mode: OpenMode,
        directory: Option<&Path>,
        lock_file: Option<File>,
    ) -> Result<Self> {
        let started = Instant::now();
        let shared = Arc::new(recover(files, options, mode, directory, lock_file)?);
        let written = shared.state().durable;
        let max_payload = shared.geometry.max_payload_bytes;
        let ring = Self {
            shared,
            written,
            confirmed: written,
            external_in_flight: heapless::Deque::new(),
            unsynced_records: 0,
            unsynced_bytes: 0,
            bytes_since_checkpoint: 0,
            header_block: AlignedBuf::zeroed(BLOCK_BYTES_USIZE),
            batch_headers: AlignedBuf::zeroed(2 * MAX_BATCH_RECORDS * BLOCK_BYTES_USIZE),
            rate: RateEstimator::default(),
            thresholds_crossed: 0,
        };
        tracing::info!(
            ring = %ring.shared.display_location(),
            head_sequence = written.sequence,
            max_payload_bytes = max_payload,
            recovery_ms = started.elapsed().as_millis() as u64,
            ?mode,
            "ring open"
        );
        Ok(ring)
    }

    /// Appends a record whose payload is `padded[..payload_length]`, without copying it.
    ///
    /// `padded` must start on a 4096-byte boundary and its length must be the payload length
    /// rounded up to a multiple of 4096 (bytes past `payload_length` are written as they are;
    /// zero them if they matter). The record is written but not durable: it is acknowledged
    /// once [`Ring::commit`] returns. When full, the configured [`FullPolicy`] decides.
    pub fn append(
        &mut self,
        kind: RecordKind,
        flags: u8,
        padded: &[u8],
        payload_length: usize,
    ) -> Result<Appended> {
        self.shared.check_poisoned()?;
        self.check_writable()?;
        self.check_no_external_writes()?;
        self.check_payload(kind, padded, payload_length)?;
        let record_bytes = stored_record_bytes(payload_length as u64);
        let start = self.written;
        let capacity = self.shared.geometry.capacity_bytes;
        let remaining_in_lap = capacity - self.shared.physical(start.offset);
        let padding_bytes = if record_bytes > remaining_in_lap { remaining_in_lap } else { 0 };
        if self.unsynced_bytes + padding_bytes + record_bytes > self.shared.unsynced_limit_bytes() {
            self.commit()?;
        }
        self.reserve(padding_bytes + record_bytes)?;

        let now_ns = self.shared.options.clock.now_ns();
        let mut at = start;
        if padding_bytes > 0 {
            self.write_record(RecordKind::Padding, 0, at, &[], &[], now_ns)?;
            at.offset += padding_bytes;
            assert_eq!(self.shared.physical(at.offset), 0);
        }
        let payload = &padded[..payload_length];
        self.write_record(kind, flags, at, payload, padded, now_ns)?;
        self.written = Position { offset: at.offset + record_bytes, sequence: at.sequence + 1 };
        self.confirmed = self.written;
        self.unsynced_records += 1;
        self.unsynced_bytes += padding_bytes + record_bytes;
        self.bytes_since_checkpoint += padding_bytes + record_bytes;
        self.shared.counters.appends_total.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.appended_bytes_total.fetch_add(padding_bytes + record_bytes, Ordering::Relaxed);
        Ok(Appended { sequence: at.sequence, offset: at.offset })
    }

    /// A record the caller may append: not one of the ring's own kinds, not over the maximum.
    fn check_kind_and_length(&self, kind: RecordKind, payload_length: usize) -> Result<()> {
        if matches!(kind, RecordKind::Padding | RecordKind::Hole) {
            return Err(Error::InvalidConfig {
                field: "kind",
                value: format!("{kind:?}"),
                reason: "padding and hole records are written by the ring itself".into(),
            });
        }
        let max_bytes = u64::from(self.shared.geometry.max_payload_bytes);
        if payload_length as u64 > max_bytes {
            return Err(Error::TooLarge { length_bytes: payload_length as u64, max_bytes });
        }
        Ok(())
    }

    fn check_payload(&self, kind: RecordKind, padded: &[u8], payload_length: usize) -> Result<()> {
        self.check_kind_and_length(kind, payload_length)?;
        let padded_length = usize::try_from(round_up_to_block(payload_length as u64)).expect("fits");
        if !is_block_aligned(padded) || padded.len() != padded_length {
            return Err(Error::Misaligned {
                address: padded.as_ptr() as usize,
                padded_bytes: padded.len(),
                length_bytes: payload_length,
            });
        }
        Ok(())
    }

    /// Appends a group of records with up to `io_depth` writes in flight, without copying any
    /// payload, and returns the sequence numbers they got. Like [`Ring::append`], the records
    /// are written, not durable, until [`Ring::commit`] returns.
    ///
    /// All or nothing for space: if the whole batch does not fit, nothing is written and the full
    /// policy's error is returned. At most [`MAX_BATCH_RECORDS`] records per batch, at most
    /// [`MAX_IO_DEPTH`] writes in flight.
    pub fn append_batch(
        &mut self,
        records: &[BatchRecord<'_>],
        io_depth: usize,
    ) -> Result<std::ops::RangeInclusive<u64>> {
        self.shared.check_poisoned()?;
        self.check_writable()?;
        self.check_no_external_writes()?;
        if records.is_empty() || records.len() > MAX_BATCH_RECORDS {
            return Err(Error::InvalidConfig {
                field: "batch length",
                value: records.len().to_string(),
                reason: format!("a batch holds 1 to {MAX_BATCH_RECORDS} records"),
            });
        }
        for record in records {
            self.check_payload(record.kind, record.padded, record.payload_length)?;
        }
        // Lay the batch out: every record, and any padding record before it, gets its position.
        let geometry = self.shared.geometry;
        let capacity = geometry.capacity_bytes;
        let now_ns = self.shared.options.clock.now_ns();
        let mut writes: heapless::Vec<PlannedWrite, { 2 * MAX_BATCH_RECORDS }> = heapless::Vec::new();
        let mut at = self.written;
        for (index, record) in records.iter().enumerate() {
            let record_bytes = stored_record_bytes(record.payload_length as u64);
            let remaining_in_lap = capacity - self.shared.physical(at.offset);
            if record_bytes > remaining_in_lap {
                writes.push(PlannedWrite { at, record: None }).expect("at most 2 writes per record");
                at.offset += remaining_in_lap;
            }
            writes.push(PlannedWrite { at, record: Some(index) }).expect("at most 2 writes per record");
            at = Position { offset: at.offset + record_bytes, sequence: at.sequence + 1 };
        }
        let batch_bytes = at.offset - self.written.offset;
        let unsynced_limit = self.shared.unsynced_limit_bytes();
        if batch_bytes > unsynced_limit {
            return Err(Error::InvalidConfig {
                field: "batch bytes",
                value: batch_bytes.to_string(),
                reason: format!("a batch may hold at most {unsynced_limit} bytes; split it"),
            });
        }
        if self.unsynced_bytes + batch_bytes > unsynced_limit {
            self.commit()?;
        }
        self.reserve(batch_bytes)?;

        for (write, block) in
            writes.iter().zip(self.batch_headers.as_mut_slice().chunks_mut(BLOCK_BYTES_USIZE))
        {
            let (kind, flags, payload) = match write.record {
                Some(index) => {
                    let record = &records[index];
                    (record.kind, record.flags, &record.padded[..record.payload_length])
                }
                None => (RecordKind::Padding, 0, &[][..]),
            };
            let header = RecordHeader::new(
                kind,
                flags,
                write.at.sequence,
                write.at.offset,
                geometry.ring_id,
                geometry.generation,
                geometry.stream_id,
                payload,
                now_ns,
            );
            block.fill(0);
            block[..64].copy_from_slice(header.as_bytes());
        }
        let headers = self.batch_headers.as_slice();
        let data = &*self.shared.files.data;
        let shared = &*self.shared;
        let writes = &writes;
        let write_one = |slot: usize| -> std::io::Result<()> {
            let write = &writes[slot];
            let header = &headers[slot * BLOCK_BYTES_USIZE..(slot + 1) * BLOCK_BYTES_USIZE];
            let physical = shared.physical(write.at.offset);
            match write.record {
                Some(index) if !records[index].padded.is_empty() => {
                    let padded = records[index].padded;
                    assert!(physical + BLOCK_BYTES + padded.len() as u64 <= capacity);
                    data.write_all_at(physical, &[header, padded])
                }
                _ => data.write_all_at(physical, &[header]),
            }
        };
        let io_depth = io_depth.clamp(1, MAX_IO_DEPTH).min(writes.len());
        let result = if io_depth == 1 {
            (0..writes.len()).try_for_each(write_one)
        } else {
            // Each worker writes every io_depth-th record; the kernel sees io_depth writes in
            // flight. The workers borrow the caller's buffers: nothing is copied, and the scope
            // guarantees no write outlives them.
            std::thread::scope(|scope| {
                let workers: heapless::Vec<_, MAX_IO_DEPTH> = (0..io_depth)
                    .map(|worker| {
                        let write_one = &write_one;
                        scope.spawn(move || (worker..writes.len()).step_by(io_depth).try_for_each(write_one))
                    })
                    .collect();
                workers.into_iter().try_for_each(|worker| worker.join().expect("write worker panicked"))
            })
        };
        if let Err(source) = result {
            return Err(self.shared.poison(format!(
                "write of the batch starting at sequence {} to {} failed: {source}",
                self.written.sequence,
                data.location().display()
            )));
        }
        let first_sequence = self.written.sequence;
        let appended_bytes = at.offset - self.written.offset;
        self.written = at;
        self.confirmed = at;
        self.unsynced_records += records.len() as u64;
        self.unsynced_bytes += appended_bytes;
        self.bytes_since_checkpoint += appended_bytes;
        self.shared.counters.appends_total.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.shared.counters.appended_bytes_total.fetch_add(appended_bytes, Ordering::Relaxed);
        Ok(first_sequence..=at.sequence - 1)
    }

    /// Appends a payload from any slice by copying it into an aligned buffer. For small records
    /// (metadata, markers); the pixel path uses [`Ring::append`], which never copies.
    pub fn append_copy(&mut self, kind: RecordKind, flags: u8, payload: &[u8]) -> Result<Appended> {
        let mut buffer = AlignedBuf::zeroed(payload.len());
        buffer.as_mut_slice()[..payload.len()].copy_from_slice(payload);
        self.append(kind, flags, buffer.as_slice(), payload.len())
    }

    /// Like [`Ring::append`], but under [`FullPolicy::Block`] waits up to `timeout` for a
    /// required cursor to free space before giving up with [`Error::WouldBlock`].
    pub fn append_blocking(
        &mut self,
        kind: RecordKind,
        flags: u8,
        padded: &[u8],
        payload_length: usize,
        timeout: Duration,
    ) -> Result<Appended> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.append(kind, flags, padded, payload_length) {
                Err(Error::WouldBlock { needed_bytes, .. }) => {
                    let now = Instant::now();
                    if now >= deadline || !self.wait_for_space(needed_bytes, deadline - now) {
                        return self.append(kind, flags, padded, payload_length);
                    }
                }
                other => return other,
            }
        }
    }

    /// Readers follow the writer's durable head; a read-only view of a possibly live ring cannot
    /// know what is durable, so it offers inspection (`stats`, `verify`) only.
    fn check_readable(&self, cursor: &str) -> Result<()> {
        if self.shared.mode == OpenMode::ReadOnly {
            return Err(Error::Cursor {
                name: cursor.into(),
                reason: format!(
                    "{} is open read-only for inspection; readers need the writer, which alone knows what \
                     is durable",
                    self.shared.display_location()
                ),
            });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.shared.mode == OpenMode::ReadOnly {
            return Err(Error::InvalidConfig {
                field: "mode",
                value: "read-only".into(),
                reason: "this ring was opened read-only for inspection".into(),
            });
        }
        Ok(())
    }

    fn free_bytes(&self) -> u64 {
        let tail = self.shared.state().tail;
        self.shared.geometry.capacity_bytes - (self.written.offset - tail.offset)
    }

    fn reserve(&mut self, needed_bytes: u64) -> Result<()> {
        if needed_bytes <= self.free_bytes() {
            return Ok(());
        }
        // Readers can only drain what is durable: space held by this writer's own unsynced
        // records would never be freed by waiting. Make them durable so the drain can move on.
        if self.unsynced_records > 0 {
            self.commit()?;
        }
        let free_bytes = self.free_bytes();
        if needed_bytes <= free_bytes {
            return Ok(());
        }
        match self.shared.options.full_policy {
            FullPolicy::Reject => {
                self.shared.counters.rejected_full_total.fetch_add(1, Ordering::Relaxed);
                Err(Error::Rejected { needed_bytes, free_bytes })
            }
            FullPolicy::Block => {
                self.shared.counters.would_block_total.fetch_add(1, Ordering::Relaxed);
                Err(Error::WouldBlock { needed_bytes, free_bytes })
            }
        }
    }

    /// Waits until at least `needed_bytes` are free or `timeout` passes; `true` if they are.
    /// Space frees only when a required cursor commits past durable records; an append that
    /// meets a full ring commits the writer's own unsynced records first, so they never hold it.
    pub fn wait_for_space(&self, needed_bytes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let capacity = self.shared.geometry.capacity_bytes;
        let mut state = self.shared.state();
        loop {
            if capacity - (self.written.offset - state.tail.offset) >= needed_bytes {
                return true;
            }
            if state.poisoned.is_some() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .space_freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn write_record(
        &mut self,
        kind: RecordKind,
        flags: u8,
        at: Position,
        payload: &[u8],
        padded: &[u8],
        now_ns: u64,
    ) -> Result<()> {
        let geometry = self.shared.geometry;
        let header = RecordHeader::new(
            kind,
            flags,
            at.sequence,
            at.offset,
            geometry.ring_id,
            geometry.generation,
            geometry.stream_id,
            payload,
            now_ns,
        );
        let block = self.header_block.as_mut_slice();
        block[..64].copy_from_slice(header.as_bytes());
        let physical = self.shared.physical(at.offset);
        assert!(physical.is_multiple_of(BLOCK_BYTES));
        assert!(physical + BLOCK_BYTES + padded.len() as u64 <= geometry.capacity_bytes);
        let data = &self.shared.files.data;
        let result = if padded.is_empty() {
            data.write_all_at(physical, &[self.header_block.as_slice()])
        } else {
            data.write_all_at(physical, &[self.header_block.as_slice(), padded])
        };
        result.map_err(|source| {
            self.shared.poison(format!(
                "write of record {} at {} (offset {physical}) failed: {source}",
                at.sequence,
                data.location().display()
            ))
        })
    }

    /// Group commit: makes every record appended so far durable (of planned records, only those
    /// confirmed written), publishes the durable head to readers, and returns the last durable
    /// sequence number (0 if the ring never held one).
    /// Writes a checkpoint when `checkpoint_interval_bytes` were appended since the last one.
    pub fn commit(&mut self) -> Result<u64> {
        self.shared.check_poisoned()?;
        if let Some(ticket) = self.begin_sync() {
            let result = self.shared.files.data.sync_data();
            self.finish_sync(ticket, result)?;
        }
        Ok(self.shared.state().durable.sequence - 1)
    }

    /// The first half of [`Ring::commit`], for a writer that issues the `fdatasync` itself (the
    /// io_uring ingest): returns what a sync started now would make durable (every record written
    /// or confirmed so far), or `None` when that is already durable. Issue one `fdatasync` of the
    /// data file after this call, then hand its result to [`Ring::finish_sync`].
    pub fn begin_sync(&mut self) -> Option<SyncTicket> {
        let durable = self.shared.state().durable;
        (self.confirmed.sequence > durable.sequence).then_some(SyncTicket { covers: self.confirmed })
    }

    /// The second half of [`Ring::commit`]: on success publishes the ticket's records as durable
    /// (readers see them, the rate and fill thresholds update, a checkpoint is written when due)
    /// and returns the last durable sequence; on failure poisons the ring (fail-stop).
    pub fn finish_sync(&mut self, ticket: SyncTicket, result: std::io::Result<()>) -> Result<u64> {
        self.shared.check_poisoned()?;
        if let Err(source) = result {
            let data = &self.shared.files.data;
            return Err(self.shared.poison(format!(
                "fdatasync of {} failed: {source}; records after sequence {} may be lost and the page \
                 cache cannot be trusted",
                data.location().display(),
                self.shared.state().durable.sequence.saturating_sub(1)
            )));
        }
        let covers = ticket.covers;
        {
            let mut state = self.shared.state();
            if covers.sequence <= state.durable.sequence {
                return Ok(state.durable.sequence - 1);
            }
            state.durable = covers;
        }
        self.unsynced_records = self.written.sequence - covers.sequence;
        self.unsynced_bytes = self.written.offset - covers.offset;
        self.shared.counters.syncs_total.fetch_add(1, Ordering::Relaxed);
        self.shared.durable_changed.notify_all();
        self.rate.sample(self.shared.options.clock.now_ns(), covers.offset);
        self.check_thresholds();
        if self.bytes_since_checkpoint >= self.shared.options.checkpoint_interval_bytes {
            self.shared.checkpoint(None)?;
            // The checkpoint names the durable head `covers`: what lies past it (planned or
            // confirmed after the ticket) is still to be scanned by recovery.
            self.bytes_since_checkpoint = self.written.offset - covers.offset;
        }
        Ok(covers.sequence - 1)
    }

    /// The data file's descriptor when it is a real file opened with `O_DIRECT`, for a writer
    /// that writes planned records itself ([`Ring::plan_append`]); `None` otherwise (simulated
    /// storage, or a filesystem without `O_DIRECT`: use [`Ring::append`]).
    pub fn direct_data_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.shared.files.data.direct_fd()
    }

    /// Places a record of `payload_length` bytes whose payload CRC32 the caller computed, for a
    /// writer that writes it itself (the io_uring ingest, from its registered buffers), and
    /// returns where: see [`PlannedAppend`]. Nothing is written by this call.
    ///
    /// The caller must write the planned blocks, then report each record, in plan order, with
    /// [`Ring::confirm_written`] (or [`Ring::external_write_failed`], which poisons the ring).
    /// Only confirmed records are made durable by a sync. Space and the full policy work as in
    /// [`Ring::append`]; at most [`MAX_EXTERNAL_IN_FLIGHT`] planned records may be unconfirmed,
    /// and [`Error::SyncRequired`] asks the caller to sync when the unsynced bytes reach the
    /// limit that bounds recovery.
    pub fn plan_append(
        &mut self,
        kind: RecordKind,
        flags: u8,
        payload_length: usize,
        payload_crc32: u32,
    ) -> Result<PlannedAppend> {
        self.shared.check_poisoned()?;
        self.check_writable()?;
        self.check_kind_and_length(kind, payload_length)?;
        let record_bytes = stored_record_bytes(payload_length as u64);
        let capacity = self.shared.geometry.capacity_bytes;
        let remaining_in_lap = capacity - self.shared.physical(self.written.offset);
        let padding_bytes = if record_bytes > remaining_in_lap { remaining_in_lap } else { 0 };
        let limit_bytes = self.shared.unsynced_limit_bytes();
        if self.unsynced_bytes + padding_bytes + record_bytes > limit_bytes {
            self.commit()?;
        }
        if self.external_in_flight.is_full()
            || self.unsynced_bytes + padding_bytes + record_bytes > limit_bytes
        {
            return Err(Error::SyncRequired {
                unsynced_bytes: self.unsynced_bytes,
                in_flight: self.external_in_flight.len(),
                limit_bytes,
                max_in_flight: MAX_EXTERNAL_IN_FLIGHT,
            });
        }
        self.reserve(padding_bytes + record_bytes)?;

        let geometry = self.shared.geometry;
        let now_ns = self.shared.options.clock.now_ns();
        let mut at = self.written;
        let padding = (padding_bytes > 0).then(|| {
            let header = RecordHeader::new(
                RecordKind::Padding,
                0,
                at.sequence,
                at.offset,
                geometry.ring_id,
                geometry.generation,
                geometry.stream_id,
                &[],
                now_ns,
            );
            let planned = PlannedBlock {
                physical_offset: self.shared.physical(at.offset),
                header: header_bytes(&header),
            };
            at.offset += padding_bytes;
            planned
        });
        let physical_offset = self.shared.physical(at.offset);
        assert!(physical_offset + record_bytes <= capacity);
        let header = RecordHeader::with_payload_crc(
            kind,
            flags,
            at.sequence,
            at.offset,
            geometry.ring_id,
            geometry.generation,
            geometry.stream_id,
            payload_length as u32,
            payload_crc32,
            now_ns,
        );
        let end = Position { offset: at.offset + record_bytes, sequence: at.sequence + 1 };
        self.external_in_flight.push_back((at.sequence, end)).expect("checked not full above");
        self.written = end;
        self.unsynced_records += 1;
        self.unsynced_bytes += padding_bytes + record_bytes;
        self.bytes_since_checkpoint += padding_bytes + record_bytes;
        self.shared.counters.appends_total.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.appended_bytes_total.fetch_add(padding_bytes + record_bytes, Ordering::Relaxed);
        Ok(PlannedAppend {
            sequence: at.sequence,
            logical_offset: at.offset,
            record: PlannedBlock { physical_offset, header: header_bytes(&header) },
            padding,
        })
    }

    /// Reports that the planned record `sequence` (and its padding) is written. Records must be
    /// confirmed in the order they were planned.
    pub fn confirm_written(&mut self, sequence: u64) -> Result<()> {
        self.shared.check_poisoned()?;
        match self.external_in_flight.front() {
            Some(&(expected, end)) if expected == sequence => {
                self.external_in_flight.pop_front();
                self.confirmed = end;
                Ok(())
            }
            front => Err(Error::InvalidConfig {
                field: "confirmed sequence",
                value: sequence.to_string(),
                reason: match front {
                    Some((expected, _)) => format!("records are confirmed in plan order; next is {expected}"),
                    None => "no planned record is waiting for confirmation".into(),
                },
            }),
        }
    }

    /// Reports that writing the planned record `sequence` failed: the ring is poisoned
    /// (fail-stop, as for its own writes) and the returned error says why.
    pub fn external_write_failed(&mut self, sequence: u64, source: std::io::Error) -> Error {
        let data = &self.shared.files.data;
        self.shared
            .poison(format!("write of record {sequence} to {} failed: {source}", data.location().display()))
    }

    /// Planned records not yet confirmed.
    pub fn external_writes_in_flight(&self) -> usize {
        self.external_in_flight.len()
    }

    fn check_no_external_writes(&self) -> Result<()> {
        if self.external_in_flight.is_empty() {
            return Ok(());
        }
        Err(Error::InvalidConfig {
            field: "append",
            value: format!("{} planned writes in flight", self.external_in_flight.len()),
            reason: "the ring's own appends wait until every planned record is confirmed".into(),
        })
    }

    /// Appends and commits one record: acknowledged when this returns.
    pub fn append_durable(
        &mut self,
        kind: RecordKind,
        flags: u8,
        padded: &[u8],
        payload_length: usize,
    ) -> Result<Appended> {
        let appended = self.append(kind, flags, padded, payload_length)?;
        self.commit()?;
        Ok(appended)
    }

    /// Commits and writes a checkpoint, so the next open has nothing to scan.
    ///
    /// With planned records still unconfirmed ([`Ring::plan_append`]) their blocks may yet land
    /// beyond the durable head, so the close is not clean: what is confirmed is committed, no
    /// clean-close checkpoint is written (the next open zeroes beyond the head as after a crash)
    /// and an error says so.
    pub fn close(mut self) -> Result<()> {
        self.commit()?;
        if !self.external_in_flight.is_empty() {
            return Err(Error::InvalidConfig {
                field: "close",
                value: format!("{} planned writes in flight", self.external_in_flight.len()),
                reason: "unconfirmed planned records may still be written past the durable head; the ring \
                         was closed uncleanly (the next open recovers as after a crash)"
                    .into(),
            });
        }
        self.shared.checkpoint_with(None, true)
    }

    fn check_thresholds(&mut self) {
        let thresholds = &self.shared.options.fill_thresholds;
        let fill = self.fill_ratio();
        let crossed = thresholds.iter().filter(|&&t| fill >= t).count();
        if crossed != self.thresholds_crossed {
            let threshold = if crossed > self.thresholds_crossed {
                thresholds[crossed - 1]
            } else {
                thresholds[self.thresholds_crossed - 1]
            };
            self.shared.record_event(RingEventKind::FillThreshold {
                threshold_percent: (threshold * 100.0).round() as u32,
                fill_percent: (fill * 100.0).round() as u32,
                rising: crossed > self.thresholds_crossed,
            });
            self.thresholds_crossed = crossed;
        }
    }

    fn fill_ratio(&self) -> f64 {
        let capacity = self.shared.geometry.capacity_bytes;
        (capacity - self.free_bytes()) as f64 / capacity as f64
    }

    /// Opens a reader for the named cursor, starting at its persisted position.
    pub fn reader(&self, cursor: &str) -> Result<crate::reader::Reader> {
        self.check_readable(cursor)?;
        crate::reader::Reader::open(Arc::clone(&self.shared), cursor, None)
    }

    /// Opens a reader for `cursor`, starting at another cursor's persisted position
    /// (e.g. replay what `drain` has not yet confirmed, as `prompt`).
    pub fn reader_from(&self, cursor: &str, start_at_cursor: &str) -> Result<crate::reader::Reader> {
        self.check_readable(cursor)?;
        crate::reader::Reader::open(Arc::clone(&self.shared), cursor, Some(start_at_cursor))
    }

    /// Adds a cursor at the oldest retained record, or makes an optional one required (moving it
    /// up to the tail if it lagged behind), and persists it in a checkpoint. Refuses to make a
    /// required cursor optional: that is [`Ring::set_cursor_required`].
    pub fn add_cursor(&mut self, name: &str, required: bool) -> Result<()> {
        self.change_cursor(name, required, Demotion::Refuse)
    }

    /// Sets whether `name` holds back reclamation. Making a required cursor optional releases
    /// the undrained data behind it at the next checkpoint; `drain` can never be made optional.
    pub fn set_cursor_required(&mut self, name: &str, required: bool) -> Result<()> {
        self.change_cursor(name, required, Demotion::Allow)
    }

    fn change_cursor(&mut self, name: &str, required: bool, demotion: Demotion) -> Result<()> {
        self.check_writable()?;
        validate_cursor_name(name)?;
        {
            let mut state = self.shared.state();
            let tail = state.tail;
            ensure_cursor(&mut state.cursors, name, required, tail, demotion)?;
        }
        self.shared.checkpoint(None)
    }

    /// Current figures: capacity, fill, cursor lags, oldest undrained record, counters.
    pub fn stats(&self) -> crate::stats::RingStats {
        crate::stats::RingStats::collect(&self.shared, self.written, &self.rate)
    }

    /// Scans every retained record and reports good and bad ones with their locations.
    pub fn verify(&self) -> Result<crate::stats::VerifyReport> {
        crate::stats::verify(&self.shared)
    }

    /// The most recent events (corruption, truncation, thresholds, poisoning), oldest first.
    pub fn recent_events(&self) -> Vec<RingEvent> {
        lock(&self.shared.events).iter().cloned().collect()
    }

    /// The last durable sequence number (0 if none).
    pub fn durable_sequence(&self) -> u64 {
        self.shared.state().durable.sequence - 1
    }

    /// The next sequence number an append will get.
    pub fn next_sequence(&self) -> u64 {
        self.written.sequence
    }

    /// The ring's capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.shared.geometry.capacity_bytes
    }

    /// Largest payload a record may carry.
    pub fn max_payload_bytes(&self) -> u32 {
        self.shared.geometry.max_payload_bytes
    }

    /// Whether the ring refuses writes after an I/O failure, and why.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.state().poisoned.clone()
    }
}

/// Writes both checkpoint slots of a new ring and makes them durable.
fn write_initial_checkpoints(files: &RingFiles, create: &CreateOptions, clock: &dyn Clock) -> Result<()> {
    let mut block = AlignedBuf::zeroed(BLOCK_BYTES_USIZE);
    let ring_id = create.ring_id.unwrap_or_else(random_ring_id);
    let created_ns = clock.now_ns();
    let start = Position { offset: 0, sequence: 1 };
    for checkpoint_sequence in 1..=CHECKPOINT_SLOTS as u64 {
        let mut slot = CheckpointSlot::zeroed();
        slot.checkpoint_sequence = checkpoint_sequence.into();
        slot.ring_id = ring_id.into();
        slot.capacity_bytes = create.capacity_bytes.into();
        slot.max_payload_bytes = create.max_payload_bytes.into();
        slot.stream_id = create.stream_id.into();
        slot.generation = 0.into();
        slot.created_ns = created_ns.into();
        slot.head_offset = start.offset.into();
        slot.head_sequence = start.sequence.into();
        slot.tail_offset = start.offset.into();
        slot.tail_sequence = start.sequence.into();
        slot.seal();
        let bytes = block.as_mut_slice();
        bytes.fill(0);
        bytes[..512].copy_from_slice(slot.as_bytes());
        let offset = (checkpoint_sequence % CHECKPOINT_SLOTS as u64) * BLOCK_BYTES;
        files
            .meta
            .write_all_at(offset, &[block.as_slice()])
            .map_err(|e| io_error(files.meta.location(), "write initial checkpoint", e))?;
    }
    files.meta.sync_data().map_err(|e| io_error(files.meta.location(), "fdatasync", e))?;
    tracing::info!(
        location = %files.meta.location().display(),
        capacity_bytes = create.capacity_bytes,
        stream_id = create.stream_id,
        ring_id = format_args!("{ring_id:016x}"),
        "ring created"
    );
    Ok(())
}

/// Opens a ring read-only for inspection: no lock, no writes. Recovery happens in memory, so the
/// figures describe what a writer would find if it opened the ring now.
pub fn open_read_only(directory: &Path) -> Result<Ring> {
    let options = RingOptions { cursors: Vec::new(), ..RingOptions::default() };
    let files = open_files_read_only(directory)?;
    Ring::open_inner(files, options, OpenMode::ReadOnly, Some(directory), None)
}

/// Opens a ring on the given storage read-only.
pub fn open_read_only_on(files: RingFiles) -> Result<Ring> {
    let options = RingOptions { cursors: Vec::new(), ..RingOptions::default() };
    Ring::open_inner(files, options, OpenMode::ReadOnly, None, None)
}

/// Whether a required cursor may be made optional (which releases the data it holds back).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Demotion {
    Refuse,
    Allow,
}

fn ensure_cursor(
    cursors: &mut heapless::Vec<CursorState, MAX_CURSORS>,
    name: &str,
    required: bool,
    tail: Position,
    demotion: Demotion,
) -> Result<()> {
    if let Some(existing) = cursors.iter_mut().find(|c| c.name.as_str() == name) {
        if existing.required && !required {
            if demotion == Demotion::Refuse || name == "drain" {
                return Err(Error::Cursor {
                    name: name.into(),
                    reason: if name == "drain" {
                        "the drain cursor is always required; making it optional would release undrained data"
                            .into()
                    } else {
                        "is required in this ring but listed as optional; making it optional releases the \
                         data it holds back, so do it deliberately with Ring::set_cursor_required"
                            .into()
                    },
                });
            }
            tracing::warn!(cursor = name, "cursor made optional: the data it held back may now be reclaimed");
            existing.required = false;
        } else if !existing.required && required {
            // An optional cursor may lag behind the tail (overrun); a required one defines it.
            existing.persisted = existing.persisted.max(tail);
            existing.required = true;
            tracing::info!(cursor = name, "cursor made required");
        }
        return Ok(());
    }
    let mut cursor_name = heapless::String::new();
    cursor_name.push_str(name).map_err(|()| Error::Cursor {
        name: name.into(),
        reason: format!("name longer than {CURSOR_NAME_BYTES} bytes"),
    })?;
    cursors.push(CursorState { name: cursor_name, required, persisted: tail, in_use: false }).map_err(|_| {
        Error::Cursor {
            name: name.into(),
            reason: format!("the ring already has the maximum of {MAX_CURSORS} cursors"),
        }
    })
}

fn random_ring_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the operating system's randomness.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish() | 1
}

fn take_lock(directory: &Path) -> Result<File> {
    let path = directory.join(LOCK_FILE_NAME);
    if !directory.is_dir() {
        return Err(Error::NotARing { path: directory.to_path_buf(), detail: "no such directory".into() });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(&path, "open lock file", e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path, "lock", e)),
    }
}

fn sync_directory(directory: &Path) -> Result<()> {
    File::open(directory).and_then(|d| d.sync_all()).map_err(|e| io_error(directory, "fsync directory", e))
}

fn open_files(directory: &Path, direct_io: bool) -> Result<RingFiles> {
    let data_path = directory.join(DATA_FILE_NAME);
    let meta_path = directory.join(META_FILE_NAME);
    for path in [&meta_path, &data_path] {
        if !path.exists() {
            let interrupted = directory.join(format!("{META_FILE_NAME}{CREATING_SUFFIX}")).exists();
            return Err(Error::NotARing {
                path: path.clone(),
                detail: if interrupted {
                    "file missing: a create was interrupted here and no ring exists; run `summit-ring create` again"
                        .into()
                } else {
                    "file missing (create a ring with `summit-ring create`)".into()
                },
            });
        }
    }
    let data = FileStorage::open(&data_path, direct_io).map_err(|e| io_error(&data_path, "open", e))?;
    let meta = FileStorage::open(&meta_path, false).map_err(|e| io_error(&meta_path, "open", e))?;
    Ok(RingFiles { meta: Arc::new(meta), data: Arc::new(data) })
}

fn open_files_read_only(directory: &Path) -> Result<RingFiles> {
    // Opened without write permission: inspection works on a read-only mount or for an operator
    // who may not write the ring.
    let mut files = Vec::with_capacity(2);
    for name in [META_FILE_NAME, DATA_FILE_NAME] {
        let path = directory.join(name);
        if !path.exists() {
            return open_files(directory, false);
        }
        let storage = FileStorage::open_read_only(&path).map_err(|e| io_error(&path, "open read-only", e))?;
        files.push(Arc::new(storage) as Arc<dyn Storage>);
    }
    let data = files.pop().expect("two files");
    let meta = files.pop().expect("two files");
    Ok(RingFiles { meta, data })
}

fn check_size(storage: &dyn Storage, expected_bytes: u64) -> Result<()> {
    let actual_bytes = storage.len_bytes();
    if actual_bytes != expected_bytes {
        return Err(Error::WrongSize {
            path: storage.location().to_path_buf(),
            expected_bytes,
            actual_bytes,
        });
    }
    Ok(())
}

fn read_meta_block(meta: &dyn Storage, slot_index: u64, block: &mut AlignedBuf) -> Result<()> {
    meta.read_exact_at(slot_index * BLOCK_BYTES, block.as_mut_slice())
        .map_err(|e| io_error(meta.location(), "read checkpoint", e))
}

/// Reads both checkpoint slots and returns the newest valid one.
pub(crate) fn newest_checkpoint(meta: &dyn Storage) -> Result<CheckpointSlot> {
    read_checkpoints(meta).map(|(newest, _)| newest)
}

/// The newest valid checkpoint, and whether the other slot holds its immediate predecessor:
/// only then is it certain that no newer checkpoint was lost.
fn read_checkpoints(meta: &dyn Storage) -> Result<(CheckpointSlot, bool)> {
    if meta.len_bytes() < META_FILE_BYTES {
        return Err(Error::WrongSize {
            path: meta.location().to_path_buf(),
            expected_bytes: META_FILE_BYTES,
            actual_bytes: meta.len_bytes(),
        });
    }
    let mut block = AlignedBuf::zeroed(BLOCK_BYTES_USIZE);
    let mut best: Option<CheckpointSlot> = None;
    let mut valid_sequences: heapless::Vec<u64, CHECKPOINT_SLOTS> = heapless::Vec::new();
    let mut defects: Vec<String> = Vec::new();
    let mut newer_version = None;
    for slot_index in 0..CHECKPOINT_SLOTS as u64 {
        read_meta_block(meta, slot_index, &mut block)?;
        match CheckpointSlot::decode(block.as_slice()) {
            Ok(slot) => {
                let _ = valid_sequences.push(slot.checkpoint_sequence.get());
                if best.is_none_or(|b| slot.checkpoint_sequence.get() > b.checkpoint_sequence.get()) {
                    best = Some(slot);
                }
            }
            Err(SlotDefect::NewerVersion(found)) => newer_version = Some(found),
            Err(defect) => {
                tracing::warn!(meta = %meta.location().display(), slot_index, %defect, "checkpoint slot unusable");
                defects.push(format!("slot {slot_index}: {defect}"));
            }
        }
    }
    if let Some(found) = newer_version {
        return Err(Error::NewerFormat {
            path: meta.location().to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    let newest = best.ok_or_else(|| Error::NotARing {
        path: meta.location().to_path_buf(),
        detail: format!("no valid checkpoint ({})", defects.join("; ")),
    })?;
    let newest_sequence = newest.checkpoint_sequence.get();
    let predecessor_intact = valid_sequences.iter().any(|&s| s + 1 == newest_sequence);
    Ok((newest, predecessor_intact))
}

/// Opening: newest valid checkpoint, then a forward scan of what was written since.
fn recover(
    files: RingFiles,
    options: RingOptions,
    mode: OpenMode,
    directory: Option<&Path>,
    lock_file: Option<File>,
) -> Result<Shared> {
    let (checkpoint, predecessor_intact) = read_checkpoints(&*files.meta)?;
    check_size(&*files.meta, META_FILE_BYTES)?;
    check_size(&*files.data, checkpoint.capacity_bytes.get())?;
    let checkpoint_generation = checkpoint.generation.get();
    if !predecessor_intact {
        tracing::warn!(
            meta = %files.meta.location().display(),
            checkpoint_sequence = checkpoint.checkpoint_sequence.get(),
            "the other checkpoint slot does not hold this checkpoint's predecessor: a newer checkpoint \
             may have been lost; recovering conservatively"
        );
    }
    // A lost newer checkpoint was written by a writer that derived its generation from this one:
    // the same session (g), a normal open (g + 1) or a fallback open (g + 2). Its leftovers may
    // lie beyond the head, so take a generation none of them can have.
    let generation = match mode {
        OpenMode::ReadWrite if predecessor_intact => checkpoint_generation + 1,
        OpenMode::ReadWrite => checkpoint_generation + 3,
        OpenMode::ReadOnly => checkpoint_generation,
    };
    let geometry = Geometry {
        ring_id: checkpoint.ring_id.get(),
        capacity_bytes: checkpoint.capacity_bytes.get(),
        max_payload_bytes: checkpoint.max_payload_bytes.get(),
        stream_id: checkpoint.stream_id.get(),
        generation,
        created_ns: checkpoint.created_ns.get(),
    };
    if u64::from(geometry.max_payload_bytes) > geometry.capacity_bytes / 8 {
        return Err(Error::NotARing {
            path: files.meta.location().to_path_buf(),
            detail: format!(
                "checkpoint's max payload ({} bytes) exceeds an eighth of the capacity ({} bytes)",
                geometry.max_payload_bytes, geometry.capacity_bytes
            ),
        });
    }
    let head = Position { offset: checkpoint.head_offset.get(), sequence: checkpoint.head_sequence.get() };
    let tail = Position { offset: checkpoint.tail_offset.get(), sequence: checkpoint.tail_sequence.get() };
    let mut cursors: heapless::Vec<CursorState, MAX_CURSORS> = heapless::Vec::new();
    for entry in checkpoint.cursors_in_use() {
        cursors
            .push(cursor_from_entry(entry, tail, head, &*files.meta)?)
            .expect("checkpoint holds at most MAX_CURSORS cursors");
    }
    for spec in &options.cursors {
        ensure_cursor(&mut cursors, &spec.name, spec.required, tail, Demotion::Refuse)?;
    }
    let shared = Shared {
        files,
        geometry,
        options,
        mode,
        state: Mutex::new(State { durable: head, tail, cursors, poisoned: None }),
        durable_changed: Condvar::new(),
        space_freed: Condvar::new(),
        meta: Mutex::new(MetaWriter {
            checkpoint_sequence: checkpoint.checkpoint_sequence.get(),
            block: AlignedBuf::zeroed(BLOCK_BYTES_USIZE),
        }),
        poisoned_flag: AtomicBool::new(false),
        holes: Mutex::new(heapless::Vec::new()),
        counters: Counters::default(),
        events: Mutex::new(EventLog::new()),
        directory: directory.map(Path::to_path_buf),
        _lock: lock_file,
    };
    shared
        .counters
        .quarantined_records_total
        .store(checkpoint.quarantined_records_total.get(), Ordering::Relaxed);

    let recovered_head = scan_after_checkpoint(&shared, head, tail, checkpoint_generation)?;
    shared.state().durable = recovered_head;
    // A clean close is trusted only if no newer checkpoint can have been lost.
    let clean_close = checkpoint.flags.get() & CHECKPOINT_FLAG_CLEAN_CLOSE != 0 && predecessor_intact;
    if mode == OpenMode::ReadWrite {
        // What the scan found may sit only in the page cache (the process died, the machine did
        // not): make it durable before anyone is told it exists.
        shared
            .files
            .data
            .sync_data()
            .map_err(|e| io_error(shared.files.data.location(), "fdatasync after recovery", e))?;
        // The checkpoint first: afterwards both slots name this tail, so the wipe below touches
        // only space that no slot recovery could fall back to still retains.
        shared.checkpoint(None)?;
        if !clean_close {
            wipe_beyond_head(&shared, recovered_head, shared.state().tail)?;
            shared
                .files
                .data
                .sync_data()
                .map_err(|e| io_error(shared.files.data.location(), "fdatasync after the wipe", e))?;
        }
    }
    Ok(shared)
}

fn cursor_from_entry(
    entry: &CursorEntry,
    tail: Position,
    head: Position,
    meta: &dyn Storage,
) -> Result<CursorState> {
    let name_text = entry.name_str();
    let mut name = heapless::String::new();
    name.push_str(name_text).map_err(|()| Error::NotARing {
        path: meta.location().to_path_buf(),
        detail: "cursor name too long in checkpoint".into(),
    })?;
    let required = entry.flags.get() & CURSOR_FLAG_REQUIRED != 0;
    let mut persisted = Position { offset: entry.logical_offset.get(), sequence: entry.sequence.get() };
    if persisted.offset > head.offset {
        return Err(Error::NotARing {
            path: meta.location().to_path_buf(),
            detail: format!(
                "cursor `{name_text}` (offset {}, sequence {}) is past the checkpoint's head (offset {}, sequence {})",
                persisted.offset, persisted.sequence, head.offset, head.sequence
            ),
        });
    }
    if persisted.offset < tail.offset {
        // Only an optional cursor can be behind the tail (its data may have been reused). A
        // required one there means an inconsistent checkpoint: clamp and say so, never panic,
        // so a bad checkpoint cannot become a crash loop.
        if required {
            tracing::warn!(
                meta = %meta.location().display(),
                cursor = name_text,
                cursor_sequence = persisted.sequence,
                tail_sequence = tail.sequence,
                "required cursor behind the tail in the checkpoint; moved to the tail"
            );
        }
        persisted = tail;
    }
    Ok(CursorState { name, required, persisted, in_use: false })
}

/// Scans records written after the checkpoint. Returns the recovered head: just past the last
/// valid record. Corruption followed by valid records is quarantined; an invalid record with
/// nothing valid after it is a torn tail and is truncated.
fn scan_after_checkpoint(
    shared: &Shared,
    head: Position,
    tail: Position,
    generation: u32,
) -> Result<Position> {
    let mut scanner = crate::reader::Scanner::new(shared);
    let mut at = head;
    let limit = tail.offset + shared.geometry.capacity_bytes;
    let mut recovered_records = 0u64;
    loop {
        if at.offset >= limit {
            return Ok(at);
        }
        match scanner.step(shared, at, generation, limit, None)? {
            ScanStep::Valid { next, header } => {
                if header.record_kind() != Some(RecordKind::Padding) {
                    recovered_records += 1;
                }
                at = next;
            }
            ScanStep::Resynced { defect, resume } => {
                shared
                    .counters
                    .quarantined_records_total
                    .fetch_add(resume.sequence - at.sequence, Ordering::Relaxed);
                shared.record_event(RingEventKind::Quarantined {
                    logical_offset: at.offset,
                    lap: at.offset / shared.geometry.capacity_bytes,
                    physical_offset: shared.physical(at.offset),
                    expected_sequence: at.sequence,
                    resumed_sequence: resume.sequence,
                    defect,
                });
                shared.remember_hole(at, resume, defect.class());
                if shared.mode == OpenMode::ReadWrite {
                    write_hole_marker(shared, at, resume, defect.class())?;
                }
                at = resume;
            }
            ScanStep::Hole { resume, .. } => {
                // An earlier recovery quarantined this region (we fell back to an older
                // checkpoint): follow its marker.
                at = resume;
            }
            ScanStep::End { defect } => {
                // The 64-byte header lies in one sector, written atomically: a header that is not
                // valid here is what an earlier lap (or nothing) left, the normal end of the log.
                // A valid header of this generation with a bad payload is a torn write.
                if recovered_records > 0 {
                    tracing::info!(
                        ring = %shared.display_location(),
                        recovered_records,
                        head_sequence = at.sequence,
                        end = %defect,
                        "recovery scan found records written after the last checkpoint"
                    );
                }
                if matches!(defect, RecordDefect::PayloadCrc | RecordDefect::HeaderCrc) {
                    shared.counters.torn_tail_truncations_total.fetch_add(1, Ordering::Relaxed);
                    shared.record_event(RingEventKind::TornTailTruncated {
                        logical_offset: at.offset,
                        physical_offset: shared.physical(at.offset),
                        sequence: at.sequence,
                        defect,
                    });
                }
                return Ok(at);
            }
        }
    }
}
