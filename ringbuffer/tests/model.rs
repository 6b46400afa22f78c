//! Model-based property test of the ring over the storage fault layer.
//!
//! `proptest` generates a small ring (64–256 KiB, maximum payload 8–16 KiB, policy `block` or
//! `reject`, checkpoint interval from "every commit" to "never") and a random sequence of
//! operations: append (one record, or a batch through `append_batch`), group commit, read on the
//! `drain` (required) or `prompt` (optional) cursor, persist a cursor (at the reader's position
//! or at the end of an earlier record), reopen a reader, crash (dropping or tearing unsynced
//! writes, seeded) and reopen, and plain reopen (the process restarts, the page cache survives).
//! Three storage faults join them:
//!
//! - `LoseNewestCheckpointSlot`: at a restart (plain or crash), one bit flips in the first 508
//!   bytes of the newest checkpoint slot of `ring.meta` (only when both slots are valid: the
//!   format survives the loss of one). Recovery falls back to the older slot; the model takes that
//!   slot's cursor positions (the drain, hence the tail, is the same in both slots by design; the
//!   optional `prompt` may go back and re-read).
//! - `FailSync`: `fail_next_syncs(1)` on `ring.data` (at a group commit) or `ring.meta` (at the
//!   checkpoint of a group commit or of a cursor commit). The call fails with `Error::Poisoned`,
//!   and so do every later append, batch and commit; a restart then restores service. A failed
//!   data sync drops the unsynced writes (the commit's records are unacknowledged and gone); a
//!   failed checkpoint after a successful data sync leaves the commit's records durable and
//!   visible, and the model expects them to survive. If the call syncs nothing on that file
//!   (nothing to commit, no checkpoint due, cursor not moving), the failure is disarmed.
//! - `FlipDurableBit`: one durable bit flips in the header (first 64 bytes) or the payload of a
//!   live record between the persisted drain cursor and the durable head. The model marks that
//!   record *damaged*. At most two consecutive records are damaged (longer damage may exceed the
//!   resync window, a documented known limit), and never a damaged payload right before a damaged
//!   header (a known bug, reproduced by a named test at the end of this file).
//!
//! Each operation runs against the real [`Ring`] on a [`SimRing`] and against [`Model`], a plain
//! in-memory description of what the ring must hold:
//!
//! - every record appended in the current incarnation of each sequence number, with its payload
//!   length, a per-append nonce (payload bytes are a function of sequence number and nonce, so a
//!   stale record left by an earlier incarnation of the same sequence number is told apart), its
//!   kind, flags, timestamp and exact logical offset (padding included);
//! - the acknowledged sequence: the last value `commit` returned, or, after a reopen, the
//!   recovered durable head (recovery `fdatasync`s and checkpoints what it found before it
//!   returns, and the next `commit` acknowledges it);
//! - the persisted positions of both cursors and the written head, hence the exact free space
//!   (`capacity - (written - drain persisted)`), which decides whether an append must succeed or
//!   must be refused;
//! - the bad regions recovery quarantined after a torn crash, and the damaged records.
//!
//! Invariants checked after every operation:
//!
//! 1. A record returned by a reader has exactly the payload, kind, flags, timestamp, position and
//!    end the model holds for its sequence number; sequence numbers strictly increase per reader.
//!    No reader ever returns a quarantined or damaged record.
//! 2. After crash + reopen, `durable_sequence()` is at least the last acknowledged sequence and
//!    at most the last appended one. With `DropUnsynced` it is exactly the acknowledged one; on a
//!    plain reopen it is exactly the last appended one (unsynced writes are still in the page
//!    cache, unless a failed data sync dropped them). Unacknowledged records that survive are read
//!    back intact. The one exception: damaged records at the very end of the log cannot be told
//!    from a torn tail and may be cut off (`TornTailTruncated` or silently), nothing after them.
//!    `open` never fails because of damage or a lost slot.
//! 3. An append (or a whole batch) fails with `WouldBlock`/`Rejected`, with the exact needed and
//!    free byte counts, if and only if it does not fit in front of the persisted drain cursor;
//!    before failing, the writer makes its own unsynced records durable (they are acknowledged).
//!    Readers are gap-free: each returns the smallest live durable record at or after
//!    `max(last returned + 1, its starting position, the tail)`. For `drain` the tail is its own
//!    persisted position, so it sees every record exactly once, except that after a reopen it
//!    re-reads from its persisted position, with identical content. `prompt` may skip only what
//!    the drain has released (overrun).
//! 4. After every reopen, after every bit flip, and at the end of each case, `verify()` counts
//!    exactly the retained live, undamaged records as good, reports a bad region only where
//!    recovery quarantined one or at a damaged record (covering only quarantined or damaged
//!    sequences), and reports every retained damaged record.
//!
//! Why bad regions may exist at all, and what is asserted about them: with `CrashMode::Torn`
//! each unsynced write is kept, lost or torn independently, so an unacknowledged record N can be
//! torn while the later, also unacknowledged, record N+1 survives intact. Recovery
//! (`scan_after_checkpoint` + `Scanner::resync`) cannot tell that from corruption in the middle
//! of the log: it resynchronises on N+1, counts N as quarantined and keeps the bad bytes inside
//! the durable region. That is by design and loses nothing acknowledged. So the test accepts a
//! region quarantined by recovery only (a) after a torn crash, never after `DropUnsynced` or a
//! plain reopen, (b) starting beyond the acknowledged head, (c) at the logical offset and expected
//! sequence of a `Quarantined` event recovery reported, and (d) spanning only sequences recovery
//! quarantined; or where it covers nothing but damaged records (recovery meets damage after the
//! checkpoint's head, or after an older one when the newest slot is lost, and writes a hole).
//! `verify` may describe the defect differently and may report adjacent quarantined regions as
//! one; it may not skip a live record, and no reader may return a quarantined sequence.
//!
//! Determinism: a fixed proptest seed, a fixed ring id, a [`ManualClock`], seeded crashes.
//! Batches written by several threads (`io_depth > 1`) are committed at once: the order in which
//! the workers queue their writes varies, and a seeded torn crash depends on that order.
//! Bit flips and lost slots are chosen from the model by their seeds. 1024 cases take about two
//! seconds. `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override the case count and the seed for
//! deeper runs (20 000 cases take about 35 s).

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use ringbuffer::layout::CheckpointSlot;
use ringbuffer::sim::{CrashMode, SimFile, SimRing, SplitMix64};
use ringbuffer::{
    AlignedBuf, BatchRecord, Clock, CreateOptions, CursorSpec, Error, FullPolicy, ManualClock, Position,
    Reader, RecordDefect, RecordKind, Ring, RingEventKind, RingOptions,
};

const BLOCK: u64 = 4096;
const RING_ID: u64 = 0x5EED_0F0D_E100_0001;
const STREAM_ID: u32 = 7;
const CLOCK_START_NS: u64 = 1_700_000_000_000_000_000;
/// Most records in one generated batch.
const MAX_GENERATED_BATCH: usize = 5;

// ---------------------------------------------------------------------------------------------
// Operations and configuration
// ---------------------------------------------------------------------------------------------

/// Which named cursor an operation acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// Required: holds back reclamation.
    Drain,
    /// Optional: may be overrun.
    Prompt,
}

impl Cursor {
    fn name(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Prompt => "prompt",
        }
    }
}

/// How an append picks its payload length (resolved against the ring's maximum at run time).
#[derive(Clone, Copy, Debug)]
enum Size {
    /// Zero bytes: a header-only record.
    Empty,
    /// The maximum payload.
    Max,
    /// Right around a block boundary: `k * 4096 - 1`, `k * 4096` or `k * 4096 + 1`.
    BlockEdge(u8),
    /// Anything from 0 to the maximum.
    Any(u32),
}

#[derive(Clone, Debug)]
enum Op {
    /// `Ring::append` of one record.
    Append(Size),
    /// `Ring::append_batch`; `concurrent` uses several writer threads (and commits at once).
    AppendBatch { sizes: Vec<Size>, concurrent: bool },
    /// `Ring::commit`.
    Commit,
    /// Up to `count` calls to `next_record` (stops early at the durable head).
    Read { cursor: Cursor, count: u8 },
    /// `Reader::commit`: persist at the reader's position.
    CommitCursor(Cursor),
    /// `Reader::commit_at` the end of the `back`-th last record this reader returned.
    CommitCursorAt { cursor: Cursor, back: u8 },
    /// Drop the reader and open a new one (restarts at the persisted position).
    ReopenReader(Cursor),
    /// Drop everything, crash the storage, reopen.
    Crash { torn: bool, seed: u64 },
    /// Drop everything and reopen without a crash.
    Reopen,
    /// Drop everything, restart as `restart` says, and before the reopen flip one bit (chosen by
    /// `bit`) in the first 508 bytes of the newest checkpoint slot, if both slots are valid.
    /// Recovery must fall back to the older slot.
    LoseNewestCheckpointSlot { restart: Restart, bit: u16 },
    /// Arm `fail_next_syncs(1)` on one file and run the call that syncs it: it must fail with
    /// `Error::Poisoned`, and so must every later append and commit; then restart and reopen.
    FailSync { data_or_meta: SyncTarget, restart: Restart },
    /// Flip one durable bit in the header (first 64 bytes) or payload of a live retained
    /// record, chosen by `block_seed`. That record is damaged: never to be returned.
    FlipDurableBit { block_seed: u64 },
}

/// How the process stops before a reopen.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// The process restarts; the page cache survives.
    Plain,
    /// Power loss: every unsynced write is lost.
    Drop,
    /// Power loss: unsynced writes are kept, lost or torn, seeded.
    Torn(u64),
}

impl Restart {
    fn crash_mode(self) -> Option<CrashMode> {
        match self {
            Self::Plain => None,
            Self::Drop => Some(CrashMode::DropUnsynced),
            Self::Torn(seed) => Some(CrashMode::Torn { seed }),
        }
    }
}

/// Which `fdatasync` fails, and which call makes it.
#[derive(Clone, Copy, Debug)]
enum SyncTarget {
    /// `ring.data`, at a group commit (one record is appended first if none is unsynced).
    Data,
    /// `ring.meta`, at the checkpoint a group commit writes once `checkpoint_interval_bytes` were
    /// appended (if the commit writes none, nothing fails and the failure is disarmed).
    MetaAtCommit,
    /// `ring.meta`, at a cursor commit (one record is read first if the cursor would not move).
    MetaAtCursorCommit(Cursor),
}

#[derive(Clone, Debug)]
struct Setup {
    capacity: u64,
    max_payload: u32,
    policy: FullPolicy,
    checkpoint_interval: u64,
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(64u64 << 10), Just(128u64 << 10), Just(256u64 << 10)],
        prop_oneof![Just(8u32 << 10), Just(16u32 << 10)],
        any::<bool>(),
        prop_oneof![Just(4096u64), Just(48u64 << 10), Just(1u64 << 40)],
    )
        .prop_map(|(capacity, max_payload, reject, checkpoint_interval)| Setup {
            capacity,
            max_payload: max_payload.min(u32::try_from(capacity / 8).expect("small ring")),
            policy: if reject { FullPolicy::Reject } else { FullPolicy::Block },
            checkpoint_interval,
        })
}

fn cursor_strategy() -> impl Strategy<Value = Cursor> {
    prop_oneof![3 => Just(Cursor::Drain), 1 => Just(Cursor::Prompt)]
}

fn size_strategy() -> impl Strategy<Value = Size> {
    prop_oneof![
        1 => Just(Size::Empty),
        1 => Just(Size::Max),
        2 => any::<u8>().prop_map(Size::BlockEdge),
        6 => any::<u32>().prop_map(Size::Any),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        36 => size_strategy().prop_map(Op::Append),
        5 => (proptest::collection::vec(size_strategy(), 1..=MAX_GENERATED_BATCH), any::<bool>())
            .prop_map(|(sizes, concurrent)| Op::AppendBatch { sizes, concurrent }),
        14 => Just(Op::Commit),
        16 => (cursor_strategy(), 1..8u8).prop_map(|(cursor, count)| Op::Read { cursor, count }),
        8 => cursor_strategy().prop_map(Op::CommitCursor),
        3 => (cursor_strategy(), any::<u8>()).prop_map(|(cursor, back)| Op::CommitCursorAt { cursor, back }),
        2 => cursor_strategy().prop_map(Op::ReopenReader),
        4 => (any::<bool>(), any::<u64>()).prop_map(|(torn, seed)| Op::Crash { torn, seed }),
        2 => Just(Op::Reopen),
        7 => fault_strategy(),
    ]
}

/// The injected faults, as one branch of `op_strategy` (a `prop_oneof!` of more than ten
/// branches builds a much slower value tree).
fn fault_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (restart_strategy(), any::<u16>()).prop_map(|(restart, bit)| Op::LoseNewestCheckpointSlot { restart, bit }),
        2 => (sync_target_strategy(), restart_strategy())
            .prop_map(|(data_or_meta, restart)| Op::FailSync { data_or_meta, restart }),
        3 => any::<u64>().prop_map(|block_seed| Op::FlipDurableBit { block_seed }),
    ]
}

fn restart_strategy() -> impl Strategy<Value = Restart> {
    prop_oneof![Just(Restart::Plain), Just(Restart::Drop), any::<u64>().prop_map(Restart::Torn)]
}

fn sync_target_strategy() -> impl Strategy<Value = SyncTarget> {
    prop_oneof![
        Just(SyncTarget::Data),
        Just(SyncTarget::MetaAtCommit),
        cursor_strategy().prop_map(SyncTarget::MetaAtCursorCommit),
    ]
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// The payload of the append with this sequence number and nonce: pseudo-random bytes seeded by
/// both, so two incarnations of one sequence number (before and after a truncating crash) differ.
fn payload_bytes(sequence: u64, nonce: u64, length: usize) -> AlignedBuf {
    let mut buffer = AlignedBuf::zeroed(length);
    let mut rng = SplitMix64::new(sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nonce);
    for chunk in buffer.as_mut_slice()[..length].chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    buffer
}

fn kind_for(sequence: u64) -> RecordKind {
    match sequence % 3 {
        0 => RecordKind::Frame,
        1 => RecordKind::Metadata,
        _ => RecordKind::Marker,
    }
}

fn flags_for(nonce: u64) -> u8 {
    (nonce.wrapping_mul(37) % 251) as u8
}

fn stored_bytes(payload_length: usize) -> u64 {
    BLOCK + (payload_length as u64).div_ceil(BLOCK) * BLOCK
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// What the model knows about one appended record (latest incarnation of its sequence number).
#[derive(Clone, Debug)]
struct ModelRecord {
    /// Where the writer stood before this record (start of its padding, if any).
    padding_start: u64,
    /// Logical offset of the record itself.
    offset: u64,
    length: usize,
    nonce: u64,
    flags: u8,
    timestamp_ns: u64,
    /// Quarantined by recovery after a torn crash: never to be returned again.
    dead: bool,
    /// A durable bit of it was flipped (`Op::FlipDurableBit`): never to be returned again.
    damaged: bool,
    /// The flipped bit is in its payload (its header is sound).
    damaged_payload: bool,
}

impl ModelRecord {
    fn end(&self) -> u64 {
        self.offset + stored_bytes(self.length)
    }

    /// Dead or damaged: readers must not return it and `verify` must not count it.
    fn gone(&self) -> bool {
        self.dead || self.damaged
    }
}

/// A bad region recovery reported (so `verify` may report it too).
#[derive(Clone, Copy, Debug)]
struct QuarantinedRegion {
    logical_offset: u64,
    expected_sequence: u64,
    /// For failure messages: `verify` may resume elsewhere after merging adjacent regions.
    #[allow(dead_code)]
    resumed_sequence: u64,
    #[allow(dead_code)]
    defect: RecordDefect,
}

#[derive(Debug)]
struct Model {
    capacity: u64,
    records: BTreeMap<u64, ModelRecord>,
    next_sequence: u64,
    /// Logical offset the next append starts at (before any padding).
    written_offset: u64,
    /// Last acknowledged (and durable) sequence.
    acked: u64,
    drain_persisted: Position,
    prompt_persisted: Position,
    quarantined: Vec<QuarantinedRegion>,
    next_nonce: u64,
    /// A failed `fdatasync(ring.data)` dropped the unsynced writes (as Linux may drop dirty
    /// pages): even without a crash, the next recovery finds exactly the acknowledged records.
    unsynced_dropped: bool,
}

impl Model {
    fn new(capacity: u64) -> Self {
        let start = Position { offset: 0, sequence: 1 };
        Self {
            capacity,
            records: BTreeMap::new(),
            next_sequence: 1,
            written_offset: 0,
            acked: 0,
            drain_persisted: start,
            prompt_persisted: start,
            quarantined: Vec::new(),
            next_nonce: 1,
            unsynced_dropped: false,
        }
    }

    /// The reclaim point: the only required cursor is `drain`.
    fn tail(&self) -> Position {
        self.drain_persisted
    }

    fn persisted(&self, cursor: Cursor) -> Position {
        match cursor {
            Cursor::Drain => self.drain_persisted,
            Cursor::Prompt => self.prompt_persisted,
        }
    }

    fn set_persisted(&mut self, cursor: Cursor, position: Position) {
        match cursor {
            Cursor::Drain => self.drain_persisted = position,
            Cursor::Prompt => self.prompt_persisted = position,
        }
    }

    /// The next record a reader must return: the smallest live, durable sequence at or after
    /// `from` and the tail (records behind the tail may have been reclaimed).
    fn next_live(&self, from: u64) -> Option<u64> {
        let from = from.max(self.tail().sequence);
        if from > self.acked {
            return None;
        }
        self.records
            .range(from..=self.acked)
            .find(|(_, record)| !record.gone())
            .map(|(&sequence, _)| sequence)
    }

    /// Live durable records between the tail and the durable head.
    fn retained_live_records(&self) -> u64 {
        let from = self.tail().sequence;
        if from > self.acked {
            return 0;
        }
        self.records.range(from..=self.acked).filter(|(_, record)| !record.gone()).count() as u64
    }

    fn is_gone(&self, sequence: u64) -> bool {
        self.records.get(&sequence).is_some_and(ModelRecord::gone)
    }

    fn is_damaged(&self, sequence: u64) -> bool {
        self.records.get(&sequence).is_some_and(|record| record.damaged)
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: the real ring next to the model
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ReaderSlot {
    reader: Option<Reader>,
    /// Persisted sequence of the cursor when this reader was opened.
    start: u64,
    last: Option<u64>,
    /// Ends of the records this reader returned (for `commit_at`).
    ends: Vec<Position>,
}

struct Harness {
    setup: Setup,
    clock: Arc<ManualClock>,
    sim: SimRing,
    ring: Option<Ring>,
    drain: ReaderSlot,
    prompt: ReaderSlot,
    model: Model,
    /// Operation counter, for failure messages.
    step: usize,
}

impl Harness {
    fn options(&self) -> RingOptions {
        RingOptions {
            full_policy: self.setup.policy,
            cursors: vec![CursorSpec::required("drain"), CursorSpec::optional("prompt")],
            checkpoint_interval_bytes: self.setup.checkpoint_interval,
            clock: self.clock.clone(),
            ..RingOptions::default()
        }
    }

    fn new(setup: &Setup) -> Self {
        let mut create = CreateOptions::new(setup.capacity, STREAM_ID);
        create.max_payload_bytes = setup.max_payload;
        create.ring_id = Some(RING_ID);
        let mut harness = Self {
            setup: setup.clone(),
            clock: Arc::new(ManualClock::new(CLOCK_START_NS)),
            sim: SimRing::new(setup.capacity),
            ring: None,
            drain: ReaderSlot::default(),
            prompt: ReaderSlot::default(),
            model: Model::new(setup.capacity),
            step: 0,
        };
        let ring = Ring::create_on(harness.sim.files(), &create, harness.options()).expect("create");
        harness.ring = Some(ring);
        harness.check_figures();
        harness
    }

    fn ring(&mut self) -> &mut Ring {
        self.ring.as_mut().expect("ring open")
    }

    fn slot(&mut self, cursor: Cursor) -> &mut ReaderSlot {
        match cursor {
            Cursor::Drain => &mut self.drain,
            Cursor::Prompt => &mut self.prompt,
        }
    }

    fn ensure_reader(&mut self, cursor: Cursor) {
        if self.slot(cursor).reader.is_some() {
            return;
        }
        let reader = self.ring.as_ref().expect("ring open").reader(cursor.name()).expect("open reader");
        let start = self.model.persisted(cursor).sequence;
        *self.slot(cursor) = ReaderSlot { reader: Some(reader), start, last: None, ends: Vec::new() };
    }

    fn apply(&mut self, op: &Op) {
        self.step += 1;
        match op {
            Op::Append(size) => self.append(&[*size], None),
            Op::AppendBatch { sizes, concurrent } => self.append(sizes, Some(*concurrent)),
            Op::Commit => self.commit(),
            Op::Read { cursor, count } => {
                for _ in 0..*count {
                    if !self.read_one(*cursor) {
                        break;
                    }
                }
            }
            Op::CommitCursor(cursor) => {
                self.ensure_reader(*cursor);
                let reader = self.slot(*cursor).reader.as_mut().expect("reader");
                let position = reader.position();
                reader.commit().expect("cursor commit");
                self.persisted_cursor(*cursor, position);
            }
            Op::CommitCursorAt { cursor, back } => {
                self.ensure_reader(*cursor);
                let slot = self.slot(*cursor);
                if slot.ends.is_empty() {
                    return;
                }
                let index = slot.ends.len() - 1 - usize::from(*back) % slot.ends.len();
                let position = slot.ends[index];
                slot.reader.as_mut().expect("reader").commit_at(position).expect("cursor commit_at");
                self.persisted_cursor(*cursor, position);
            }
            Op::ReopenReader(cursor) => {
                *self.slot(*cursor) = ReaderSlot::default();
                self.ensure_reader(*cursor);
            }
            Op::Crash { torn, seed } => {
                let mode = if *torn { CrashMode::Torn { seed: *seed } } else { CrashMode::DropUnsynced };
                self.reopen(Some(mode));
            }
            Op::Reopen => self.reopen(None),
            Op::LoseNewestCheckpointSlot { restart, bit } => self.lose_newest_checkpoint_slot(*restart, *bit),
            Op::FailSync { data_or_meta, restart } => self.fail_sync(*data_or_meta, *restart),
            Op::FlipDurableBit { block_seed } => self.flip_durable_bit(*block_seed),
        }
        self.check_figures();
    }

    fn payload_length(&self, size: Size) -> usize {
        let max = self.setup.max_payload as usize;
        match size {
            Size::Empty => 0,
            Size::Max => max,
            Size::BlockEdge(choice) => {
                let blocks = max / BLOCK as usize;
                let base = (usize::from(choice / 3) % blocks + 1) * BLOCK as usize;
                match choice % 3 {
                    0 => base - 1,
                    1 => base,
                    _ => (base + 1).min(max),
                }
            }
            Size::Any(raw) => raw as usize % (max + 1),
        }
    }

    /// Appends one record (`batch` is `None`) or a batch, after laying the records out exactly
    /// as the ring must (padding at the end of a lap), and checks the outcome against the free
    /// space in front of the persisted drain cursor.
    fn append(&mut self, sizes: &[Size], batch: Option<bool>) {
        let step = self.step;
        self.clock.advance_ns(1_000);
        let timestamp_ns = self.clock.now_ns();
        let capacity = self.model.capacity;
        let first_sequence = self.model.next_sequence;
        let start = self.model.written_offset;
        let mut planned: Vec<ModelRecord> = Vec::new();
        let mut at = start;
        for &size in sizes {
            let length = self.payload_length(size);
            let nonce = self.model.next_nonce;
            self.model.next_nonce += 1;
            let record_bytes = stored_bytes(length);
            let remaining_in_lap = capacity - at % capacity;
            let padding = if record_bytes > remaining_in_lap { remaining_in_lap } else { 0 };
            planned.push(ModelRecord {
                padding_start: at,
                offset: at + padding,
                length,
                nonce,
                flags: flags_for(nonce),
                timestamp_ns,
                dead: false,
                damaged: false,
                damaged_payload: false,
            });
            at += padding + record_bytes;
        }
        let needed = at - start;
        let tail = self.model.tail().offset;
        assert!(start >= tail && start - tail <= capacity, "model: written head behind the tail");
        let free = capacity - (start - tail);
        let last_sequence = first_sequence + planned.len() as u64 - 1;

        let buffers: Vec<AlignedBuf> = planned
            .iter()
            .zip(first_sequence..)
            .map(|(record, sequence)| payload_bytes(sequence, record.nonce, record.length))
            .collect();
        let result = match batch {
            None => {
                let record = &planned[0];
                let appended = self.ring().append(
                    kind_for(first_sequence),
                    record.flags,
                    buffers[0].as_slice(),
                    record.length,
                );
                appended.map(|appended| {
                    assert_eq!(appended.offset, record.offset, "step {step}: offset of {first_sequence}");
                    appended.sequence..=appended.sequence
                })
            }
            Some(concurrent) => {
                let records: Vec<BatchRecord<'_>> = planned
                    .iter()
                    .zip(&buffers)
                    .zip(first_sequence..)
                    .map(|((record, buffer), sequence)| BatchRecord {
                        kind: kind_for(sequence),
                        flags: record.flags,
                        padded: buffer.as_slice(),
                        payload_length: record.length,
                    })
                    .collect();
                let io_depth = if concurrent { 3 } else { 1 };
                self.ring.as_mut().expect("ring open").append_batch(&records, io_depth)
            }
        };
        match result {
            Ok(sequences) => {
                assert!(
                    needed <= free,
                    "step {step}: append of {needed} bytes succeeded with only {free} free in front of \
                     the persisted drain cursor (it would overwrite undrained data)"
                );
                assert_eq!(sequences, first_sequence..=last_sequence, "step {step}: sequences");
                for (sequence, record) in (first_sequence..).zip(planned) {
                    self.model.records.insert(sequence, record);
                }
                self.model.next_sequence = last_sequence + 1;
                self.model.written_offset = at;
            }
            Err(Error::WouldBlock { needed_bytes, free_bytes }) if self.setup.policy == FullPolicy::Block => {
                assert!(needed > free, "step {step}: WouldBlock for {needed} bytes with {free} free");
                assert_eq!((needed_bytes, free_bytes), (needed, free), "step {step}: needed and free");
                // A full ring first makes the writer's own unsynced records durable (the drain can
                // only free durable space).
                self.model.acked = self.model.next_sequence - 1;
            }
            Err(Error::Rejected { needed_bytes, free_bytes }) if self.setup.policy == FullPolicy::Reject => {
                assert!(needed > free, "step {step}: Rejected for {needed} bytes with {free} free");
                assert_eq!((needed_bytes, free_bytes), (needed, free), "step {step}: needed and free");
                self.model.acked = self.model.next_sequence - 1;
            }
            Err(other) => panic!("step {step}: append failed unexpectedly: {other}"),
        }
        if batch == Some(true) {
            // See the module documentation: keeps seeded torn crashes deterministic.
            self.commit();
        }
    }

    fn commit(&mut self) {
        let step = self.step;
        let durable = self.ring().commit().expect("commit");
        assert_eq!(
            durable,
            self.model.next_sequence - 1,
            "step {step}: commit must make every appended record durable"
        );
        self.model.acked = durable;
    }

    /// One `next_record` call; returns whether a record came back.
    fn read_one(&mut self, cursor: Cursor) -> bool {
        self.ensure_reader(cursor);
        let step = self.step;
        let name = cursor.name();
        let slot = match cursor {
            Cursor::Drain => &mut self.drain,
            Cursor::Prompt => &mut self.prompt,
        };
        let model = &self.model;
        let from = slot.last.map_or(slot.start, |last| last + 1);
        let expected = model.next_live(from);
        let record = slot.reader.as_mut().expect("reader").next_record().expect("next_record");
        let Some(record) = record else {
            assert_eq!(
                expected, None,
                "step {step}: `{name}` reported the end while a durable record is unread (acked {})",
                model.acked
            );
            return false;
        };
        let info = record.info;
        let sequence = info.sequence;
        if let Some(last) = slot.last {
            assert!(sequence > last, "step {step}: `{name}` returned {sequence} after {last}");
        }
        let Some(wanted) = model.records.get(&sequence) else {
            panic!(
                "step {step}: `{name}` returned sequence {sequence}, never appended in this incarnation \
                 (next sequence {})",
                model.next_sequence
            );
        };
        assert!(
            !wanted.dead,
            "step {step}: `{name}` returned sequence {sequence}, which recovery quarantined as lost"
        );
        assert!(
            !wanted.damaged,
            "step {step}: `{name}` returned sequence {sequence}, whose durable bytes were damaged (a flipped bit)"
        );
        assert_eq!(
            Some(sequence),
            expected,
            "step {step}: `{name}` skipped or repeated records (reading from {from}, tail {:?})",
            model.tail()
        );
        let wanted_payload = payload_bytes(sequence, wanted.nonce, wanted.length);
        let wanted_payload = &wanted_payload.as_slice()[..wanted.length];
        if record.payload != wanted_payload {
            let first_difference = record.payload.iter().zip(wanted_payload).position(|(a, b)| a != b);
            panic!(
                "step {step}: `{name}` returned corrupt or stale data for sequence {sequence}: length {} \
                 (model {}), first difference at {first_difference:?}",
                record.payload.len(),
                wanted.length
            );
        }
        assert_eq!(info.kind, kind_for(sequence), "step {step}: kind of {sequence}");
        assert_eq!(info.flags, wanted.flags, "step {step}: flags of {sequence}");
        assert_eq!(info.stream_id, STREAM_ID, "step {step}: stream of {sequence}");
        assert_eq!(info.timestamp_ns, wanted.timestamp_ns, "step {step}: timestamp of {sequence}");
        assert_eq!(info.position, Position { offset: wanted.offset, sequence }, "step {step}: position");
        assert_eq!(info.end, Position { offset: wanted.end(), sequence: sequence + 1 }, "step {step}: end");
        slot.last = Some(sequence);
        slot.ends.push(info.end);
        true
    }

    fn persisted_cursor(&mut self, cursor: Cursor, position: Position) {
        let current = self.model.persisted(cursor);
        // A commit at or behind the persisted position changes nothing.
        if position.offset > current.offset {
            assert!(position.sequence >= current.sequence);
            self.model.set_persisted(cursor, position);
        }
    }

    /// Drops readers and ring, optionally crashes the storage, reopens and checks recovery.
    fn reopen(&mut self, crash: Option<CrashMode>) {
        self.shut_down(crash);
        self.open_and_check(crash);
    }

    /// Drops readers and ring (the process stops), then applies the crash, if any.
    fn shut_down(&mut self, crash: Option<CrashMode>) {
        self.drain = ReaderSlot::default();
        self.prompt = ReaderSlot::default();
        self.ring = None;
        if let Some(mode) = crash {
            self.sim.crash(mode);
        }
    }

    /// Whether every sequence in `from..=to` is lost anyway (dead or damaged): recovery may cut
    /// such records off the end of the log.
    fn all_gone(&self, from: u64, to: u64) -> bool {
        (from..=to).all(|sequence| self.model.is_gone(sequence))
    }

    /// Opens the ring after `shut_down` and checks what recovery found against the model.
    fn open_and_check(&mut self, crash: Option<CrashMode>) {
        let step = self.step;
        let ring = Ring::open_on(self.sim.files(), self.options()).expect("reopen");
        let recovered = ring.durable_sequence();
        let last_appended = self.model.next_sequence - 1;
        let acked = self.model.acked;
        let torn = matches!(crash, Some(CrashMode::Torn { .. }));
        // What can still be on the medium (or in the page cache) beyond the acknowledged head.
        let last_written = if self.model.unsynced_dropped { acked } else { last_appended };
        let (lowest, highest) = match crash {
            None => (last_written, last_written),
            Some(CrashMode::DropUnsynced) => (acked, acked),
            Some(CrashMode::Torn { .. }) => (acked, last_written),
        };
        // Damaged (or dead) records at the very end of the log cannot be told from a torn tail and
        // may be cut off; nothing else may be lost.
        assert!(
            recovered <= highest && (recovered >= lowest || self.all_gone(recovered + 1, lowest)),
            "step {step}: recovered durable sequence {recovered} outside [{lowest}, {highest}] (acked {acked}, \
             last appended {last_appended}, crash {crash:?})"
        );

        // What recovery quarantined or cut off: only damaged records, or unacknowledged data after
        // a torn crash.
        for event in ring.recent_events() {
            match event.kind {
                RingEventKind::Quarantined {
                    logical_offset,
                    expected_sequence,
                    resumed_sequence,
                    defect,
                    ..
                } => {
                    assert!(expected_sequence <= resumed_sequence && resumed_sequence <= recovered + 1);
                    for sequence in expected_sequence..resumed_sequence {
                        let record =
                            self.model.records.get_mut(&sequence).expect("quarantined an appended record");
                        assert!(
                            record.damaged || (torn && sequence > acked),
                            "step {step}: recovery quarantined record {sequence} ({defect} at {logical_offset}, \
                             crash {crash:?}, acked {acked}), which was neither damaged nor unacknowledged \
                             and torn"
                        );
                        if !record.damaged {
                            record.dead = true;
                        }
                    }
                    self.model.quarantined.push(QuarantinedRegion {
                        logical_offset,
                        expected_sequence,
                        resumed_sequence,
                        defect,
                    });
                }
                RingEventKind::TornTailTruncated { sequence, defect, .. } => assert!(
                    sequence > acked || self.all_gone(sequence, acked),
                    "step {step}: recovery truncated acknowledged record {sequence} ({defect}, acked {acked})"
                ),
                _ => {}
            }
        }

        // Where the writer resumes: just past record `recovered`, or past the padding in front of
        // the next (lost) record if that padding survived.
        let stats = ring.stats();
        let drain = stats.cursors.iter().find(|c| c.name == "drain").expect("drain cursor");
        assert_eq!(drain.position, self.model.drain_persisted, "step {step}: persisted drain position");
        let written = drain.position.offset + stats.used_bytes;
        let candidates = match self.model.records.get(&(recovered + 1)) {
            Some(lost) if recovered < last_appended => vec![lost.padding_start, lost.offset],
            _ => vec![self.model.written_offset],
        };
        assert!(
            candidates.contains(&written),
            "step {step}: recovered head at {written}, expected one of {candidates:?}"
        );
        let _lost = self.model.records.split_off(&(recovered + 1));
        self.model.next_sequence = recovered + 1;
        self.model.written_offset = written;
        self.model.acked = recovered;
        self.model.unsynced_dropped = false;
        // A persisted optional cursor behind the tail is moved up to it.
        if self.model.prompt_persisted.offset < self.model.drain_persisted.offset {
            self.model.prompt_persisted = self.model.drain_persisted;
        }
        self.ring = Some(ring);
        self.check_verify();
    }

    /// `Op::LoseNewestCheckpointSlot`: the format survives the loss of one checkpoint slot.
    fn lose_newest_checkpoint_slot(&mut self, restart: Restart, bit: u16) {
        let step = self.step;
        let crash = restart.crash_mode();
        self.shut_down(crash);
        let meta = &self.sim.meta;
        let blocks = [meta.read_durable(0, BLOCK as usize), meta.read_durable(BLOCK, BLOCK as usize)];
        let (Ok(slot0), Ok(slot1)) = (CheckpointSlot::decode(&blocks[0]), CheckpointSlot::decode(&blocks[1]))
        else {
            // Only one valid slot: losing it would lose the ring (not a survivable fault).
            self.open_and_check(crash);
            return;
        };
        assert_eq!(&blocks[0][..4], b"SRCK");
        let checkpoint_sequence =
            |block: &[u8]| u64::from_le_bytes(block[8..16].try_into().expect("eight bytes"));
        let newest = usize::from(checkpoint_sequence(&blocks[1]) > checkpoint_sequence(&blocks[0]));
        let older = if newest == 0 { slot1 } else { slot0 };
        let byte = u64::from(bit / 8) % 508;
        meta.flip_bit(newest as u64 * BLOCK + byte, (bit % 8) as u8);
        assert!(
            CheckpointSlot::decode(&meta.read_durable(newest as u64 * BLOCK, BLOCK as usize)).is_err(),
            "step {step}: a flipped bit must invalidate the slot"
        );

        // Recovery continues from the older slot: its cursor positions become the persisted ones.
        // Every tail move is written to both slots, so the drain (the only required cursor, hence
        // the tail) is the same there; an optional cursor may go back (it re-reads, nothing lost).
        let tail = Position { offset: older.tail_offset.get(), sequence: older.tail_sequence.get() };
        assert_eq!(tail, self.model.drain_persisted, "step {step}: the older slot's tail");
        let persisted = |name: &str| {
            older
                .cursors_in_use()
                .iter()
                .find(|entry| entry.name_str() == name)
                .map(|entry| Position { offset: entry.logical_offset.get(), sequence: entry.sequence.get() })
        };
        if let Some(drain) = persisted("drain") {
            assert_eq!(drain, self.model.drain_persisted, "step {step}: the older slot's drain cursor");
        }
        self.model.prompt_persisted = match persisted("prompt") {
            Some(prompt) if prompt.offset >= tail.offset => prompt,
            _ => tail,
        };
        self.open_and_check(crash);
    }

    /// `Op::FailSync`: a failed `fdatasync` poisons the ring; a restart restores service.
    fn fail_sync(&mut self, target: SyncTarget, restart: Restart) {
        let step = self.step;
        // Make sure the call below has something to sync.
        match target {
            SyncTarget::Data | SyncTarget::MetaAtCommit => {
                if self.model.next_sequence - 1 == self.model.acked {
                    self.append(&[Size::Empty], None);
                }
            }
            SyncTarget::MetaAtCursorCommit(cursor) => {
                self.ensure_reader(cursor);
                let position = self.slot(cursor).reader.as_ref().expect("reader").position();
                if position.offset <= self.model.persisted(cursor).offset {
                    self.read_one(cursor);
                }
            }
        }
        let file: &SimFile = match target {
            SyncTarget::Data => &self.sim.data,
            SyncTarget::MetaAtCommit | SyncTarget::MetaAtCursorCommit(_) => &self.sim.meta,
        };
        let file = file.clone();
        file.fail_next_syncs(1);
        let syncs_before = file.sync_calls_total();
        let result = match target {
            SyncTarget::Data | SyncTarget::MetaAtCommit => self.ring().commit().map(Some),
            SyncTarget::MetaAtCursorCommit(cursor) => {
                let reader = self.slot(cursor).reader.as_mut().expect("reader");
                let position = reader.position();
                let committed = reader.commit();
                if committed.is_ok() {
                    self.persisted_cursor(cursor, position);
                }
                committed.map(|()| None)
            }
        };
        match result {
            Ok(durable) => {
                // Nothing was synced on that file (nothing to commit, no checkpoint due, or the
                // cursor did not move): disarm.
                assert_eq!(
                    file.sync_calls_total(),
                    syncs_before,
                    "step {step}: a sync that failed went unnoticed"
                );
                file.fail_next_syncs(0);
                if let Some(durable) = durable {
                    assert_eq!(durable, self.model.next_sequence - 1, "step {step}: commit");
                    self.model.acked = durable;
                }
                return;
            }
            Err(Error::Poisoned { .. }) => {}
            Err(other) => {
                panic!("step {step}: a failed fdatasync of {target:?} must poison the ring, got {other}")
            }
        }
        assert_eq!(file.sync_calls_total(), syncs_before + 1, "step {step}: exactly one failed sync");
        match target {
            // The unsynced records were never acknowledged, and the failed sync dropped them.
            SyncTarget::Data => self.model.unsynced_dropped = true,
            // The data sync succeeded and published the durable head before the checkpoint
            // failed: those records are durable (and visible), though `commit` reported failure.
            SyncTarget::MetaAtCommit => self.model.acked = self.model.next_sequence - 1,
            // The cursor did not move.
            SyncTarget::MetaAtCursorCommit(_) => {}
        }
        assert_eq!(
            self.ring().durable_sequence(),
            self.model.acked,
            "step {step}: durable head after the failure"
        );
        assert!(self.ring().poisoned().is_some(), "step {step}: poisoned");

        // Fail-stop: every later write is refused with the original cause.
        let buffer = payload_bytes(self.model.next_sequence, 0, 0);
        let append = self.ring().append(RecordKind::Frame, 0, buffer.as_slice(), 0);
        assert!(
            matches!(append, Err(Error::Poisoned { .. })),
            "step {step}: append after poisoning: {append:?}"
        );
        let batch =
            [BatchRecord { kind: RecordKind::Frame, flags: 0, padded: buffer.as_slice(), payload_length: 0 }];
        let batch = self.ring().append_batch(&batch, 1);
        assert!(
            matches!(batch, Err(Error::Poisoned { .. })),
            "step {step}: batch after poisoning: {batch:?}"
        );
        let commit = self.ring().commit();
        assert!(
            matches!(commit, Err(Error::Poisoned { .. })),
            "step {step}: commit after poisoning: {commit:?}"
        );
        self.check_figures();

        self.reopen(restart.crash_mode());
    }

    /// `Op::FlipDurableBit`: media corruption of one live retained record.
    fn flip_durable_bit(&mut self, block_seed: u64) {
        let from = self.model.tail().sequence;
        let acked = self.model.acked;
        if from > acked {
            return;
        }
        let mut rng = SplitMix64::new(block_seed);
        let in_header = rng.below(2) == 0;
        let model = &self.model;
        let damaged = |sequence: u64| model.is_damaged(sequence);
        let eligible: Vec<u64> = model
            .records
            .range(from..=acked)
            .filter(|&(&sequence, record)| {
                // At most two consecutive damaged records: longer damage may exceed the resync
                // window (the format's first known limit; a single record never does).
                let run_of_three = (damaged(sequence - 1)
                    && (damaged(sequence - 2) || damaged(sequence + 1)))
                    || (damaged(sequence + 1) && damaged(sequence + 2));
                !record.gone() && !run_of_three
            })
            .map(|(&sequence, _)| sequence)
            .collect();
        if eligible.is_empty() {
            return;
        }
        let sequence = eligible[rng.below(eligible.len() as u64) as usize];
        let capacity = self.model.capacity;
        let record = self.model.records.get_mut(&sequence).expect("eligible record");
        let byte = if in_header || record.length == 0 {
            rng.below(64)
        } else {
            record.damaged_payload = true;
            BLOCK + rng.below(record.length as u64)
        };
        self.sim.data.flip_bit(record.offset % capacity + byte, rng.below(8) as u8);
        record.damaged = true;
        self.check_verify();
    }

    fn check_verify(&mut self) {
        let step = self.step;
        let report = self.ring().verify().expect("verify");
        assert_eq!(
            report.bad_region_count,
            report.bad_regions.len() as u64,
            "step {step}: all bad regions listed"
        );
        for region in &report.bad_regions {
            let starts_at_quarantine = self.model.quarantined.iter().any(|quarantined| {
                (quarantined.logical_offset, quarantined.expected_sequence)
                    == (region.logical_offset, region.expected_sequence)
            });
            let starts_at_damage = self
                .model
                .records
                .get(&region.expected_sequence)
                .is_some_and(|record| record.damaged && record.offset == region.logical_offset);
            let only_gone =
                (region.expected_sequence..region.resumed_sequence).all(|s| self.model.is_gone(s));
            assert!(
                (starts_at_quarantine || starts_at_damage) && only_gone,
                "step {step}: verify reports a bad region that is neither damage nor a region recovery \
                 quarantined, or that covers a live record: {region:?} (quarantined: {:?})",
                self.model.quarantined
            );
        }
        // Every damaged retained record is reported.
        let tail = self.model.tail().sequence;
        if tail <= self.model.acked {
            for (&sequence, _) in self.model.records.range(tail..=self.model.acked).filter(|(_, r)| r.damaged)
            {
                assert!(
                    report
                        .bad_regions
                        .iter()
                        .any(|region| (region.expected_sequence..region.resumed_sequence).contains(&sequence)),
                    "step {step}: verify does not report damaged record {sequence} (report {report:?})"
                );
            }
        }
        assert_eq!(
            report.good_records,
            self.model.retained_live_records(),
            "step {step}: verify's good records vs the model's live retained records (report {report:?})"
        );
    }

    /// Cheap figures that must agree with the model after every operation.
    fn check_figures(&mut self) {
        let step = self.step;
        let next_sequence = self.model.next_sequence;
        let acked = self.model.acked;
        let used = self.model.written_offset - self.model.tail().offset;
        let drain = self.model.drain_persisted;
        let prompt = self.model.prompt_persisted;
        let ring = self.ring();
        assert_eq!(ring.next_sequence(), next_sequence, "step {step}: next sequence");
        assert_eq!(ring.durable_sequence(), acked, "step {step}: durable sequence");
        let stats = ring.stats();
        assert_eq!(stats.used_bytes, used, "step {step}: used bytes (written head - tail)");
        assert_eq!(stats.oldest_sequence, drain.sequence, "step {step}: tail");
        for cursor in &stats.cursors {
            match cursor.name.as_str() {
                "drain" => {
                    assert!(cursor.required);
                    assert_eq!(cursor.position, drain, "step {step}: drain persisted");
                }
                "prompt" => {
                    assert!(!cursor.required);
                    assert_eq!(cursor.position, prompt, "step {step}: prompt persisted");
                }
                other => panic!("unexpected cursor {other}"),
            }
        }
    }

    /// End of a case: commit, drain everything, and check the whole ring once more.
    fn finish(&mut self) {
        self.step += 1;
        self.commit();
        while self.read_one(Cursor::Drain) {}
        self.check_verify();
    }
}

fn run(setup: &Setup, ops: &[Op]) {
    let mut harness = Harness::new(setup);
    for op in ops {
        harness.apply(op);
    }
    harness.finish();
}

fn config() -> Config {
    let from_env = |name: &str| std::env::var(name).ok().and_then(|value| value.parse::<u64>().ok());
    Config {
        cases: from_env("PROPTEST_CASES").map_or(1024, |cases| u32::try_from(cases).unwrap_or(u32::MAX)),
        rng_seed: RngSeed::Fixed(from_env("PROPTEST_RNG_SEED").unwrap_or(0x5EED_CAFE)),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/model.txt"))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_operations_never_lose_acknowledged_records_or_return_wrong_data(
        setup in setup_strategy(),
        ops in proptest::collection::vec(op_strategy(), 1..160),
    ) {
        run(&setup, &ops);
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic reproductions of the bugs the model found
// ---------------------------------------------------------------------------------------------
//
// Root cause of all three: recovery (`scan_after_checkpoint`) validates records past the
// checkpoint with `min_generation` = the checkpoint's generation and, after a torn crash,
// quarantines bad regions ("holes") *into* the durable log. Readers (`Reader::advance`) and
// `verify` walk that log again later, with `min_generation` 0 and their own resynchronisation,
// so they can resolve a hole differently from recovery: they accept a header left by an older
// generation (whose unacknowledged tail an earlier recovery cut off, at the very logical offset
// and sequence number the newer generation reused), or they miss the header recovery resumed on.
// They then skip durable records or return a stale payload.
//
// All of them pass since recovery records its decisions as hole records (readers follow them
// instead of searching) and zeroes what a crashed writer may have left beyond the head; the
// fourth (two damaged records in a row) since the payload-CRC path searches the whole window.

fn small_ring() -> (SimRing, Ring, impl Fn() -> RingOptions) {
    let sim = SimRing::new(128 << 10);
    let mut create = CreateOptions::new(128 << 10, STREAM_ID);
    create.max_payload_bytes = 8 << 10;
    create.ring_id = Some(RING_ID);
    let options = || RingOptions {
        cursors: vec![CursorSpec::required("drain")],
        clock: Arc::new(ManualClock::new(CLOCK_START_NS)),
        ..RingOptions::default()
    };
    let ring = Ring::create_on(sim.files(), &create, options()).expect("create");
    (sim, ring, options)
}

/// Appends the incarnation `nonce` of record `sequence` and returns its logical offset.
fn append_exact(ring: &mut Ring, sequence: u64, nonce: u64, length: usize) -> u64 {
    let buffer = payload_bytes(sequence, nonce, length);
    let appended = ring.append(RecordKind::Frame, 0, buffer.as_slice(), length).expect("append");
    assert_eq!(appended.sequence, sequence);
    appended.offset
}

/// Everything the drain returns, as (sequence, payload).
fn drain_all(ring: &Ring) -> Vec<(u64, Vec<u8>)> {
    let mut drain = ring.reader("drain").expect("reader");
    let mut records = Vec::new();
    while let Some(record) = drain.next_record().expect("next_record") {
        records.push((record.info.sequence, record.payload.to_vec()));
    }
    records
}

/// Found by the model (regression `46fda41f` in `proptest-regressions/model.txt`, recorded before
/// batches joined the operation mix, so that seed now generates another case), minimised by hand.
///
/// A record recovery found and made durable (so the next `commit` acknowledges it) is skipped by
/// the drain and by `verify`: a stale generation-1 header with a torn payload sits where
/// recovery started a quarantined region; readers take it for a record and jump to its end.
#[test]
fn a_record_recovered_behind_a_stale_header_of_an_older_generation_is_delivered() {
    let (sim, mut ring, options) = small_ring();

    // Generation 1: records 1 and 2 acknowledged. Record 3 (4095 bytes: header block at 8192,
    // payload block at 12288) is torn by the crash: its header reaches the disk, its payload not.
    append_exact(&mut ring, 1, 1, 0);
    append_exact(&mut ring, 2, 1, 0);
    assert_eq!(ring.commit().unwrap(), 2);
    assert_eq!(append_exact(&mut ring, 3, 1, 4095), 8192);
    drop(ring);
    sim.crash_keeping(&[(8192, 4096)]);

    // Generation 2 cuts off the torn record (correct) and reuses sequence 3 at offset 8192 for
    // a header-only record; record 4 follows at 12288. The crash loses record 3, keeps record 4.
    let mut ring = Ring::open_on(sim.files(), options()).expect("reopen");
    assert_eq!(ring.durable_sequence(), 2);
    assert_eq!(append_exact(&mut ring, 3, 2, 0), 8192);
    assert_eq!(append_exact(&mut ring, 4, 2, 0), 12288);
    drop(ring);
    sim.crash_keeping(&[(12288, 4096)]);

    // Generation 3: recovery rejects generation 1's header at 8192 (OldGeneration), finds record
    // 4 at 12288, quarantines 3 and recovers 4 as durable. Correct so far.
    let mut ring = Ring::open_on(sim.files(), options()).expect("reopen");
    assert_eq!(ring.durable_sequence(), 4);
    assert_eq!(ring.commit().unwrap(), 4, "record 4 is acknowledged");

    // The drain accepts generation 1's header at 8192 (any generation will do), fails its
    // payload CRC, resumes at that stale record's end (16384, the durable head) and never
    // returns record 4.
    let delivered: Vec<u64> = drain_all(&ring).into_iter().map(|(sequence, _)| sequence).collect();
    let report = ring.verify().unwrap();
    assert_eq!(delivered, vec![1, 2, 4], "acknowledged record 4 must reach the drain (verify: {report:?})");
    assert_eq!(report.good_records, 3, "verify must count record 4 (report: {report:?})");
}

/// Same root cause, worse outcome: the drain returns the payload of a record that was never
/// acknowledged, that recovery cut off, and whose sequence number recovery then reported as
/// quarantined; the newer incarnation of that sequence number was lost.
#[test]
fn a_quarantined_sequence_number_is_never_returned_with_the_stale_payload_of_an_older_generation() {
    let (sim, mut ring, options) = small_ring();
    let stale_payload = payload_bytes(6, 1, 100);
    // Records 2..=5 are largest records (12 KiB on disk): three lost ones put record 6 beyond
    // the resync window of a search starting at record 2 (two largest records plus a block).
    let sizes = |sequence: u64| match sequence {
        2..=5 => 8192,
        6 => 100,
        _ => 0,
    };
    let offsets = [0u64, 0, 4096, 16384, 28672, 40960, 53248, 61440];

    // Generation 1: record 1 acknowledged; records 2..=7 unacknowledged. The crash keeps record
    // 2's header (not its payload), loses 3, 4 and 5 and keeps record 6 whole.
    append_exact(&mut ring, 1, 1, 0);
    assert_eq!(ring.commit().unwrap(), 1);
    for sequence in 2..=7 {
        assert_eq!(append_exact(&mut ring, sequence, 1, sizes(sequence)), offsets[sequence as usize]);
    }
    drop(ring);
    sim.crash_keeping(&[(4096, 4096), (53248, 8192)]);

    // Generation 2: record 2's payload is torn and no valid header follows within the window, so
    // recovery cuts the log at record 2 (nothing after record 1 was acknowledged). Generation 1's
    // intact record 6 was left at 53248 (the post-crash wipe erases it; either way it must never
    // come back). Generation 2 appends records 2..=7 again with new payloads; the crash keeps all
    // but record 6.
    let mut ring = Ring::open_on(sim.files(), options()).expect("reopen");
    assert_eq!(ring.durable_sequence(), 1);
    for sequence in 2..=7 {
        assert_eq!(append_exact(&mut ring, sequence, 2, sizes(sequence)), offsets[sequence as usize]);
    }
    drop(ring);
    sim.crash_keeping(&[(4096, 49152), (61440, 4096)]);

    // Generation 3: recovery keeps 2..=5, finds no generation-2 record 6, resynchronises on 7,
    // reports 6 as quarantined and recovers up to 7.
    let ring = Ring::open_on(sim.files(), options()).expect("reopen");
    assert_eq!(ring.durable_sequence(), 7);
    let quarantined: Vec<(u64, u64)> = ring
        .recent_events()
        .into_iter()
        .filter_map(|event| match event.kind {
            RingEventKind::Quarantined { expected_sequence, resumed_sequence, .. } => {
                Some((expected_sequence, resumed_sequence))
            }
            _ => None,
        })
        .collect();
    assert_eq!(quarantined, vec![(6, 7)], "recovery quarantines record 6");

    // The drain must never return generation 1's stale record 6 under the quarantined number.
    let delivered = drain_all(&ring);
    let stale = delivered
        .iter()
        .any(|(sequence, payload)| *sequence == 6 && payload[..] == stale_payload.as_slice()[..100]);
    let sequences: Vec<u64> = delivered.iter().map(|(sequence, _)| *sequence).collect();
    assert!(!stale, "the drain returned generation 1's stale, never acknowledged record 6 ({sequences:?})");
    assert_eq!(sequences, vec![1, 2, 3, 4, 5, 7], "record 6 was quarantined by recovery");
}

/// Found by the model (`proptest-regressions/model.txt`) once commit 658ab18 erased stale
/// headers inside quarantined holes; minimised by hand. Passes before that commit.
///
/// Two quarantined holes follow each other. Readers resolve the first hole by searching forward
/// (any generation) within `Scanner::resync`'s window for the header recovery resumed on:
/// generation 1's record 3. The second recovery rejected that header as stale and erased it, so
/// the readers' search finds nothing in the window and jumps to the durable head, skipping
/// record 4, which recovery found, made durable and counted.
#[test]
fn a_record_recovered_after_two_adjacent_quarantined_holes_is_delivered() {
    let (sim, mut ring, options) = small_ring();

    // Generation 1 (window of a resync: 2 * (4096 + 8192) + 4096 = 28672 bytes): records 1, 2
    // and 3 of 8192 bytes at 0, 12288 and 24576, none acknowledged. The crash keeps only
    // record 3's header.
    assert_eq!(append_exact(&mut ring, 1, 1, 8192), 0);
    assert_eq!(append_exact(&mut ring, 2, 1, 8192), 12288);
    assert_eq!(append_exact(&mut ring, 3, 1, 8192), 24576);
    drop(ring);
    sim.crash_keeping(&[(24576, 4096)]);

    // Generation 2: recovery finds nothing at 0, resynchronises on record 3's header (hole 1:
    // records 1 and 2), finds record 3's payload torn and cuts the log there. Head: (24576, 3).
    // Generation 2 appends header-only records 3 and 4 at 24576 and 28672; the crash keeps 4.
    let mut ring = Ring::open_on(sim.files(), options()).expect("reopen");
    assert_eq!(ring.durable_sequence(), 2);
    assert_eq!(append_exact(&mut ring, 3, 2, 0), 24576);
    assert_eq!(append_exact(&mut ring, 4, 2, 0), 28672);
    drop(ring);
    sim.crash_keeping(&[(28672, 4096)]);

    // Generation 3: recovery rejects generation 1's header at 24576, resynchronises on record 4
    // (hole 2: record 3) and recovers record 4 as durable.
    let mut ring = Ring::open_on(sim.files(), options()).expect("reopen");
    assert_eq!(ring.durable_sequence(), 4);
    assert_eq!(ring.commit().unwrap(), 4, "record 4 is acknowledged");

    let delivered: Vec<u64> = drain_all(&ring).into_iter().map(|(sequence, _)| sequence).collect();
    let report = ring.verify().unwrap();
    assert_eq!(delivered, vec![4], "acknowledged record 4 must reach the drain (verify: {report:?})");
    assert_eq!(report.good_records, 1, "verify must count record 4 (report: {report:?})");
}

/// Found by the model once `Op::FlipDurableBit` may damage two adjacent records (regression
/// `92fb4507` in `proptest-regressions/model.txt`); minimised by hand. Still fails.
///
/// Recovery (`Scanner::step` without a known head) treats a record whose header is sound and
/// whose payload fails its CRC as a torn tail unless the header right after it is valid, and then
/// stops without searching further. When that next header is damaged too, the log is cut at the
/// first damaged record: every acknowledged, intact record after the two is lost and its sequence
/// number reused. The format's known limits allow losses only for damage longer than the resync
/// window (three or more consecutive maximum-size records); here two records are damaged, one of
/// them header-only, and record 3 is intact.
#[test]
fn an_acknowledged_record_after_a_payload_damaged_and_a_header_damaged_record_survives_recovery() {
    let (sim, mut ring, options) = small_ring();

    // Records 1 (8192 bytes at 0), 2 and 3 (header-only, at 12288 and 16384), all acknowledged;
    // the checkpoint still names head 0 (the default interval is 256 MiB), so recovery scans them.
    assert_eq!(append_exact(&mut ring, 1, 1, 8192), 0);
    assert_eq!(append_exact(&mut ring, 2, 1, 0), 12288);
    assert_eq!(append_exact(&mut ring, 3, 1, 0), 16384);
    assert_eq!(ring.commit().unwrap(), 3);
    drop(ring);

    // Bit rot at rest: one bit of record 1's payload, one bit of record 2's header.
    sim.data.flip_bit(4096 + 100, 3);
    sim.data.flip_bit(12288 + 20, 5);

    let ring = Ring::open_on(sim.files(), options()).expect("reopen despite the damage");
    let events: Vec<RingEventKind> = ring.recent_events().into_iter().map(|event| event.kind).collect();
    assert_eq!(
        ring.durable_sequence(),
        3,
        "acknowledged, intact record 3 must survive two damaged records (events: {events:?})"
    );
    let delivered: Vec<u64> = drain_all(&ring).into_iter().map(|(sequence, _)| sequence).collect();
    assert_eq!(delivered, vec![3], "records 1 and 2 are damaged, record 3 is not");
}
