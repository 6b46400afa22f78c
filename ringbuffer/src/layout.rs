//! On-disk layouts: the record header and the checkpoint slot, byte for byte.
//!
//! Everything here is little-endian and defined with `zerocopy`, so the structs *are* the bytes
//! on disk. `docs/ringbuffer-format.md` draws the same layouts as diagrams; the `const` asserts
//! below keep the two honest. Encoding and validation are pure functions: no I/O happens here.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Every write to the data file is a multiple of this size, at an offset that is a multiple of
/// it, so that `O_DIRECT` works on every common filesystem and device.
pub const BLOCK_BYTES: u64 = 4096;
/// [`BLOCK_BYTES`] as a `usize`, for buffer arithmetic.
pub const BLOCK_BYTES_USIZE: usize = 4096;

/// `"SRRC"`: Summit Ring ReCord.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SRRC");
/// `"SRCK"`: Summit Ring ChecKpoint.
pub const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"SRCK");
/// The on-disk format version this code writes and the newest it can read.
pub const FORMAT_VERSION: u16 = 1;

/// Number of checkpoint slots in the meta file, written alternately.
pub const CHECKPOINT_SLOTS: usize = 2;
/// Maximum number of named cursors a ring can hold (fixed: the checkpoint has a fixed size).
pub const MAX_CURSORS: usize = 8;
/// Maximum length of a cursor name in bytes.
pub const CURSOR_NAME_BYTES: usize = 24;
/// Size of the meta file: one block per checkpoint slot.
pub const META_FILE_BYTES: u64 = BLOCK_BYTES * CHECKPOINT_SLOTS as u64;

/// What a record holds. The ring itself only interprets [`RecordKind::Padding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// Fills the rest of a lap when the next record does not fit before the end of the data
    /// file; readers skip it. Written only by the ring.
    Padding = 1,
    /// A DAQ frame: header plus pixel rows, exactly as received.
    Frame = 2,
    /// Header-service metadata for an exposure (an `rkyv` archive).
    Metadata = 3,
    /// A marker, such as "exposure incomplete".
    Marker = 4,
    /// Written by recovery at the start of a region it quarantined: readers jump from here to
    /// the position in its [`HoleExtent`]. Never returned to readers.
    Hole = 5,
}

impl RecordKind {
    /// Decodes the on-disk byte; `None` for values this version does not know.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Padding),
            2 => Some(Self::Frame),
            3 => Some(Self::Metadata),
            4 => Some(Self::Marker),
            5 => Some(Self::Hole),
            _ => None,
        }
    }
}

/// The fixed header at the start of every record's first block.
///
/// The header occupies bytes `0..64` of a 4096-byte block; the rest of the block is zero. The
/// payload follows in the next block, padded with zeros to a multiple of 4096 bytes.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct RecordHeader {
    /// [`RECORD_MAGIC`].
    pub magic: U32,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: U16,
    /// [`RecordKind`] as a byte.
    pub kind: u8,
    /// Application flags, stored and returned untouched.
    pub flags: u8,
    /// Monotonic sequence number of the record in its ring, starting at 1. Padding records
    /// carry the sequence number of the record that follows them and do not consume one.
    pub sequence: U64,
    /// Logical byte offset of this record: `lap = logical_offset / capacity`,
    /// `position = logical_offset % capacity`. A record found anywhere else is misplaced or stale.
    pub logical_offset: U64,
    /// Random identifier of the ring, chosen at creation: data of another ring (or of an earlier
    /// format of this directory) is never taken for ours.
    pub ring_id: U64,
    /// Open generation of the writer: incremented each time the ring is opened for writing.
    /// Recovery ignores records of older generations beyond the last checkpoint.
    pub generation: U32,
    /// Stream the record belongs to (LSSTCam, LATISS, ...), fixed per ring at creation.
    pub stream_id: U32,
    /// Length of the payload in bytes, without padding.
    pub payload_length: U32,
    /// CRC32 (IEEE, `crc32fast`) of the `payload_length` payload bytes.
    pub payload_crc32: U32,
    /// Time of the append from the ring's clock, nanoseconds since the Unix epoch.
    pub timestamp_ns: U64,
    /// Zero.
    pub reserved: U32,
    /// CRC32 of bytes `0..60` of this header.
    pub header_crc32: U32,
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 64);
const _: () = assert!(core::mem::offset_of!(RecordHeader, header_crc32) == 60);

/// Bytes of the header covered by its CRC.
const RECORD_HEADER_CRC_SPAN: usize = 60;

/// Why a block is not the record the ring expected there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordDefect {
    /// The block is all zeros (never written, or zero-filled by the medium).
    Zeroed,
    /// The magic number is wrong: not a record header at all.
    BadMagic,
    /// The header's CRC does not match: the header is torn or corrupt.
    HeaderCrc,
    /// A valid header from a newer, unknown format version.
    UnknownVersion(u16),
    /// A valid header of an unknown record kind.
    UnknownKind(u8),
    /// A valid header of another ring (or of an earlier format of this directory).
    ForeignRing,
    /// A valid header whose logical offset differs from where it was found: stale data from an
    /// earlier lap, or a misdirected write. Carries the offset the header claims.
    Misplaced(u64),
    /// A valid header with an unexpected sequence number. Carries the sequence found.
    SequenceGap(u64),
    /// A valid header whose payload length is larger than the ring allows.
    PayloadTooLong(u32),
    /// A valid header, but the payload bytes do not match its CRC (torn or corrupt payload).
    PayloadCrc,
    /// A valid header from an older writer generation past the last checkpoint: data that
    /// was never acknowledged before an earlier crash.
    OldGeneration(u32),
    /// A hole marker whose extent is corrupt or points outside the readable region.
    BadHoleExtent,
    /// A region an earlier recovery quarantined (marked by a hole record); its records are lost.
    /// Carries the class of defect recovery found there.
    QuarantinedAtRecovery(DefectClass),
}

/// The kind of a [`RecordDefect`] without its details: what a hole marker remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DefectClass {
    /// [`RecordDefect::Zeroed`].
    Zeroed = 1,
    /// [`RecordDefect::BadMagic`].
    BadMagic = 2,
    /// [`RecordDefect::HeaderCrc`].
    HeaderCrc = 3,
    /// [`RecordDefect::UnknownVersion`].
    UnknownVersion = 4,
    /// [`RecordDefect::UnknownKind`].
    UnknownKind = 5,
    /// [`RecordDefect::ForeignRing`].
    ForeignRing = 6,
    /// [`RecordDefect::Misplaced`].
    Misplaced = 7,
    /// [`RecordDefect::SequenceGap`].
    SequenceGap = 8,
    /// [`RecordDefect::PayloadTooLong`].
    PayloadTooLong = 9,
    /// [`RecordDefect::PayloadCrc`].
    PayloadCrc = 10,
    /// [`RecordDefect::OldGeneration`].
    OldGeneration = 11,
    /// [`RecordDefect::BadHoleExtent`].
    BadHoleExtent = 12,
    /// A code this version does not know.
    Unknown = 255,
}

impl DefectClass {
    /// Decodes a stored code.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => Self::Zeroed,
            2 => Self::BadMagic,
            3 => Self::HeaderCrc,
            4 => Self::UnknownVersion,
            5 => Self::UnknownKind,
            6 => Self::ForeignRing,
            7 => Self::Misplaced,
            8 => Self::SequenceGap,
            9 => Self::PayloadTooLong,
            10 => Self::PayloadCrc,
            11 => Self::OldGeneration,
            12 => Self::BadHoleExtent,
            _ => Self::Unknown,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Zeroed => "zero-filled header block",
            Self::BadMagic => "bad magic",
            Self::HeaderCrc => "header CRC32 mismatch",
            Self::UnknownVersion => "unknown record format version",
            Self::UnknownKind => "unknown record kind",
            Self::ForeignRing => "record of another ring",
            Self::Misplaced => "stale or misplaced record",
            Self::SequenceGap => "unexpected sequence number",
            Self::PayloadTooLong => "payload too long",
            Self::PayloadCrc => "payload CRC32 mismatch",
            Self::OldGeneration => "record of an older writer generation",
            Self::BadHoleExtent => "corrupt hole marker",
            Self::Unknown => "unknown defect",
        }
    }
}

impl RecordDefect {
    /// The defect's class; for a region quarantined at recovery, the class found then.
    pub fn class(&self) -> DefectClass {
        match self {
            Self::Zeroed => DefectClass::Zeroed,
            Self::BadMagic => DefectClass::BadMagic,
            Self::HeaderCrc => DefectClass::HeaderCrc,
            Self::UnknownVersion(_) => DefectClass::UnknownVersion,
            Self::UnknownKind(_) => DefectClass::UnknownKind,
            Self::ForeignRing => DefectClass::ForeignRing,
            Self::Misplaced(_) => DefectClass::Misplaced,
            Self::SequenceGap(_) => DefectClass::SequenceGap,
            Self::PayloadTooLong(_) => DefectClass::PayloadTooLong,
            Self::PayloadCrc => DefectClass::PayloadCrc,
            Self::OldGeneration(_) => DefectClass::OldGeneration,
            Self::BadHoleExtent => DefectClass::BadHoleExtent,
            Self::QuarantinedAtRecovery(class) => *class,
        }
    }
}

impl core::fmt::Display for RecordDefect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Zeroed => write!(f, "zero-filled block where a record header was expected"),
            Self::BadMagic => write!(f, "bad magic (not a record header)"),
            Self::HeaderCrc => write!(f, "header CRC32 mismatch (torn or corrupt header)"),
            Self::UnknownVersion(v) => write!(f, "unknown record format version {v}"),
            Self::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            Self::ForeignRing => write!(f, "record belongs to another ring (ring id mismatch)"),
            Self::Misplaced(claimed) => write!(
                f,
                "record claims logical offset {claimed} (stale data from another lap or a misdirected write)"
            ),
            Self::SequenceGap(found) => write!(f, "unexpected sequence number {found}"),
            Self::PayloadTooLong(len) => write!(f, "payload length {len} exceeds the ring's maximum"),
            Self::PayloadCrc => write!(f, "payload CRC32 mismatch (torn or corrupt payload)"),
            Self::OldGeneration(g) => {
                write!(f, "record of older writer generation {g} past the last checkpoint")
            }
            Self::BadHoleExtent => write!(f, "hole marker with a corrupt or impossible extent"),
            Self::QuarantinedAtRecovery(class) => {
                write!(f, "{} (region quarantined at recovery, marked by a hole record)", class.describe())
            }
        }
    }
}

/// What the ring expects to find at a position; used to validate a header.
#[derive(Clone, Copy, Debug)]
pub struct Expectation {
    /// The ring's id.
    pub ring_id: u64,
    /// The logical offset being read.
    pub logical_offset: u64,
    /// The sequence number expected, or `None` to accept any (used when resynchronising).
    pub sequence: Option<u64>,
    /// Minimum writer generation accepted.
    pub min_generation: u32,
    /// Maximum payload length accepted.
    pub max_payload_bytes: u32,
}

impl RecordHeader {
    /// Builds a header with both CRCs filled in.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: RecordKind,
        flags: u8,
        sequence: u64,
        logical_offset: u64,
        ring_id: u64,
        generation: u32,
        stream_id: u32,
        payload: &[u8],
        timestamp_ns: u64,
    ) -> Self {
        let payload_length = u32::try_from(payload.len()).expect("payload length checked by caller");
        Self::with_payload_crc(
            kind,
            flags,
            sequence,
            logical_offset,
            ring_id,
            generation,
            stream_id,
            payload_length,
            crc32fast::hash(payload),
            timestamp_ns,
        )
    }

    /// Like [`RecordHeader::new`], for a payload whose CRC32 the caller already computed (the
    /// ingest folds it into the single validation pass over the pixels).
    #[allow(clippy::too_many_arguments)]
    pub fn with_payload_crc(
        kind: RecordKind,
        flags: u8,
        sequence: u64,
        logical_offset: u64,
        ring_id: u64,
        generation: u32,
        stream_id: u32,
        payload_length: u32,
        payload_crc32: u32,
        timestamp_ns: u64,
    ) -> Self {
        let mut header = Self {
            magic: RECORD_MAGIC.into(),
            format_version: FORMAT_VERSION.into(),
            kind: kind as u8,
            flags,
            sequence: sequence.into(),
            logical_offset: logical_offset.into(),
            ring_id: ring_id.into(),
            generation: generation.into(),
            stream_id: stream_id.into(),
            payload_length: payload_length.into(),
            payload_crc32: payload_crc32.into(),
            timestamp_ns: timestamp_ns.into(),
            reserved: 0.into(),
            header_crc32: 0.into(),
        };
        header.header_crc32 = header.compute_header_crc().into();
        header
    }

    fn compute_header_crc(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[..RECORD_HEADER_CRC_SPAN])
    }

    /// Reads a header from the first 64 bytes of a block. Never fails: validation is separate.
    pub fn from_block(block: &[u8]) -> Self {
        let (header, _) = Self::read_from_prefix(block).expect("block holds at least 64 bytes");
        header
    }

    /// The record kind, if known.
    pub fn record_kind(&self) -> Option<RecordKind> {
        RecordKind::from_u8(self.kind)
    }

    /// Validates everything the header alone can tell, against what the ring expects here.
    pub fn validate(&self, block: &[u8], expect: &Expectation) -> Result<(), RecordDefect> {
        if self.magic.get() != RECORD_MAGIC {
            let zeroed = block.iter().all(|&b| b == 0);
            return Err(if zeroed { RecordDefect::Zeroed } else { RecordDefect::BadMagic });
        }
        if self.header_crc32.get() != self.compute_header_crc() {
            return Err(RecordDefect::HeaderCrc);
        }
        if self.format_version.get() > FORMAT_VERSION {
            return Err(RecordDefect::UnknownVersion(self.format_version.get()));
        }
        if self.record_kind().is_none() {
            return Err(RecordDefect::UnknownKind(self.kind));
        }
        if self.ring_id.get() != expect.ring_id {
            return Err(RecordDefect::ForeignRing);
        }
        if self.logical_offset.get() != expect.logical_offset {
            return Err(RecordDefect::Misplaced(self.logical_offset.get()));
        }
        if self.generation.get() < expect.min_generation {
            return Err(RecordDefect::OldGeneration(self.generation.get()));
        }
        if self.payload_length.get() > expect.max_payload_bytes {
            return Err(RecordDefect::PayloadTooLong(self.payload_length.get()));
        }
        match expect.sequence {
            Some(sequence) if sequence != self.sequence.get() => {
                Err(RecordDefect::SequenceGap(self.sequence.get()))
            }
            _ => Ok(()),
        }
    }

    /// Checks the payload bytes (exactly `payload_length` of them) against the header's CRC.
    pub fn validate_payload(&self, payload: &[u8]) -> Result<(), RecordDefect> {
        debug_assert_eq!(payload.len() as u64, u64::from(self.payload_length.get()));
        if crc32fast::hash(payload) == self.payload_crc32.get() {
            Ok(())
        } else {
            Err(RecordDefect::PayloadCrc)
        }
    }

    /// Bytes the record occupies on disk: the header block plus the padded payload.
    /// Padding records report one block; their real extent runs to the end of the lap.
    pub fn stored_bytes(&self) -> u64 {
        stored_record_bytes(u64::from(self.payload_length.get()))
    }
}

/// Where the data resumes after a hole: bytes `64..88` of a [`RecordKind::Hole`] record's header
/// block (which has no payload). Its own CRC protects it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct HoleExtent {
    /// Logical offset of the first valid record after the hole.
    pub resume_offset: U64,
    /// Its sequence number.
    pub resume_sequence: U64,
    /// [`DefectClass`] recovery found at the start of the hole.
    pub defect_class: U32,
    /// CRC32 of bytes `0..20` of this extent.
    pub extent_crc32: U32,
}

const _: () = assert!(core::mem::size_of::<HoleExtent>() == 24);
/// Offset of the [`HoleExtent`] inside a hole record's header block.
pub const HOLE_EXTENT_OFFSET: usize = 64;

impl HoleExtent {
    /// An extent pointing at `resume_offset` / `resume_sequence`, CRC filled in.
    pub fn new(resume_offset: u64, resume_sequence: u64, defect_class: DefectClass) -> Self {
        let mut extent = Self {
            resume_offset: resume_offset.into(),
            resume_sequence: resume_sequence.into(),
            defect_class: u32::from(defect_class as u8).into(),
            extent_crc32: 0.into(),
        };
        extent.extent_crc32 = crc32fast::hash(&extent.as_bytes()[..20]).into();
        extent
    }

    /// Reads the extent from a hole record's header block; `None` if its CRC does not match.
    pub fn from_block(block: &[u8]) -> Option<Self> {
        let (extent, _) = Self::read_from_prefix(&block[HOLE_EXTENT_OFFSET..]).ok()?;
        (crc32fast::hash(&extent.as_bytes()[..20]) == extent.extent_crc32.get()).then_some(extent)
    }
}

/// Rounds `bytes` up to a multiple of [`BLOCK_BYTES`].
pub const fn round_up_to_block(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Bytes a record with a payload of `payload_bytes` occupies on disk.
pub const fn stored_record_bytes(payload_bytes: u64) -> u64 {
    BLOCK_BYTES + round_up_to_block(payload_bytes)
}

/// One named reader position in a checkpoint.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct CursorEntry {
    /// UTF-8 name, zero-padded. An all-zero name marks an unused entry.
    pub name: [u8; CURSOR_NAME_BYTES],
    /// Bit 0: [`CURSOR_FLAG_REQUIRED`].
    pub flags: U32,
    /// Zero.
    pub reserved: U32,
    /// Logical offset of the next record this cursor will read.
    pub logical_offset: U64,
    /// Sequence number of the next record this cursor will read.
    pub sequence: U64,
}

const _: () = assert!(core::mem::size_of::<CursorEntry>() == 48);

/// Cursor flag: space is reclaimed only once this cursor has moved past it.
pub const CURSOR_FLAG_REQUIRED: u32 = 1;

/// One checkpoint slot: the superblock (ring geometry) plus the state at a durable point.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct CheckpointSlot {
    /// [`CHECKPOINT_MAGIC`].
    pub magic: U32,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: U16,
    /// Index of this slot in the meta file (`checkpoint_sequence % 2`).
    pub slot_index: U16,
    /// Monotonic checkpoint number; the valid slot with the highest one wins.
    pub checkpoint_sequence: U64,
    /// Random identifier of the ring, chosen at creation.
    pub ring_id: U64,
    /// Size of the data file in bytes, a multiple of 4096.
    pub capacity_bytes: U64,
    /// Largest payload a record may carry.
    pub max_payload_bytes: U32,
    /// Stream the ring belongs to.
    pub stream_id: U32,
    /// Writer generation that wrote this checkpoint.
    pub generation: U32,
    /// Number of cursor entries in use.
    pub cursor_count: U32,
    /// Logical offset just past the last durable record at the time of the checkpoint.
    pub head_offset: U64,
    /// Sequence number of the next record to be appended.
    pub head_sequence: U64,
    /// Logical offset of the oldest retained record (the reclaim point).
    pub tail_offset: U64,
    /// Sequence number of the oldest retained record.
    pub tail_sequence: U64,
    /// Records quarantined as corrupt over the ring's life.
    pub quarantined_records_total: U64,
    /// Creation time from the ring's clock, nanoseconds since the Unix epoch.
    pub created_ns: U64,
    /// The cursors.
    pub cursors: [CursorEntry; MAX_CURSORS],
    /// Bit 0: [`CHECKPOINT_FLAG_CLEAN_CLOSE`].
    pub flags: U32,
    /// Zero.
    pub reserved: [u8; 24],
    /// CRC32 of bytes `0..508` of this slot.
    pub slot_crc32: U32,
}

const _: () = assert!(core::mem::size_of::<CheckpointSlot>() == 512);
const _: () = assert!(core::mem::offset_of!(CheckpointSlot, slot_crc32) == 508);
const _: () = assert!(core::mem::offset_of!(CheckpointSlot, cursors) == 96);
const _: () = assert!(core::mem::offset_of!(CheckpointSlot, flags) == 480);

/// Checkpoint flag: written by a clean close; nothing was appended after it.
pub const CHECKPOINT_FLAG_CLEAN_CLOSE: u32 = 1;

/// Why a checkpoint slot was not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotDefect {
    /// All zeros: never written.
    Zeroed,
    /// Not a checkpoint.
    BadMagic,
    /// Torn or corrupt.
    Crc,
    /// Written by a newer format version.
    NewerVersion(u16),
    /// Internally inconsistent (e.g. head behind tail, capacity not a multiple of 4096).
    Inconsistent(&'static str),
}

impl core::fmt::Display for SlotDefect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Zeroed => write!(f, "all zeros"),
            Self::BadMagic => write!(f, "bad magic"),
            Self::Crc => write!(f, "CRC32 mismatch"),
            Self::NewerVersion(v) => write!(f, "format version {v} is newer than {FORMAT_VERSION}"),
            Self::Inconsistent(why) => write!(f, "inconsistent: {why}"),
        }
    }
}

impl CheckpointSlot {
    /// An all-zero slot, to be filled in.
    pub fn zeroed() -> Self {
        Self::new_zeroed()
    }

    fn compute_crc(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[..508])
    }

    /// Fills in magic, version, slot index and CRC, ready to be written.
    pub fn seal(&mut self) {
        self.magic = CHECKPOINT_MAGIC.into();
        self.format_version = FORMAT_VERSION.into();
        let slot_index = self.checkpoint_sequence.get() % CHECKPOINT_SLOTS as u64;
        self.slot_index = u16::try_from(slot_index).expect("two slots").into();
        self.slot_crc32 = self.compute_crc().into();
    }

    /// Reads and validates a slot from a block.
    pub fn decode(block: &[u8]) -> Result<Self, SlotDefect> {
        let (slot, _) = Self::read_from_prefix(block).expect("block holds at least 512 bytes");
        if slot.magic.get() != CHECKPOINT_MAGIC {
            return Err(if block.iter().all(|&b| b == 0) {
                SlotDefect::Zeroed
            } else {
                SlotDefect::BadMagic
            });
        }
        if slot.slot_crc32.get() != slot.compute_crc() {
            return Err(SlotDefect::Crc);
        }
        if slot.format_version.get() > FORMAT_VERSION {
            return Err(SlotDefect::NewerVersion(slot.format_version.get()));
        }
        let capacity = slot.capacity_bytes.get();
        if capacity == 0 || capacity % BLOCK_BYTES != 0 {
            return Err(SlotDefect::Inconsistent("capacity is not a positive multiple of 4096"));
        }
        if slot.head_offset.get() < slot.tail_offset.get() {
            return Err(SlotDefect::Inconsistent("head is behind tail"));
        }
        if slot.tail_sequence.get() == 0 || slot.head_sequence.get() < slot.tail_sequence.get() {
            return Err(SlotDefect::Inconsistent("sequence numbers out of order"));
        }
        if !slot.head_offset.get().is_multiple_of(BLOCK_BYTES)
            || !slot.tail_offset.get().is_multiple_of(BLOCK_BYTES)
        {
            return Err(SlotDefect::Inconsistent("head or tail not on a 4096-byte boundary"));
        }
        for cursor in slot.cursors_in_use_unchecked() {
            let (offset, sequence) = (cursor.logical_offset.get(), cursor.sequence.get());
            if !offset.is_multiple_of(BLOCK_BYTES) || sequence == 0 || sequence > slot.head_sequence.get() {
                return Err(SlotDefect::Inconsistent("cursor position impossible"));
            }
        }
        if slot.head_offset.get() - slot.tail_offset.get() > capacity {
            return Err(SlotDefect::Inconsistent("more data retained than capacity"));
        }
        if slot.cursor_count.get() as usize > MAX_CURSORS {
            return Err(SlotDefect::Inconsistent("too many cursors"));
        }
        Ok(slot)
    }

    /// Cursor entries in use.
    pub fn cursors_in_use(&self) -> &[CursorEntry] {
        &self.cursors[..self.cursor_count.get() as usize]
    }

    fn cursors_in_use_unchecked(&self) -> &[CursorEntry] {
        &self.cursors[..(self.cursor_count.get() as usize).min(MAX_CURSORS)]
    }
}

impl CursorEntry {
    /// The cursor's name as text (names are validated as UTF-8 when created).
    pub fn name_str(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(CURSOR_NAME_BYTES);
        core::str::from_utf8(&self.name[..end]).unwrap_or("<invalid utf-8>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectation(offset: u64, sequence: u64) -> Expectation {
        Expectation {
            ring_id: 7,
            logical_offset: offset,
            sequence: Some(sequence),
            min_generation: 1,
            max_payload_bytes: 1 << 20,
        }
    }

    fn block_with(header: &RecordHeader) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK_BYTES_USIZE];
        block[..64].copy_from_slice(header.as_bytes());
        block
    }

    #[test]
    fn header_round_trips_and_validates() {
        let payload = b"pixels";
        let header = RecordHeader::new(RecordKind::Frame, 3, 42, 8192, 7, 1, 2, payload, 99);
        let block = block_with(&header);
        let decoded = RecordHeader::from_block(&block);
        assert_eq!(decoded, header);
        assert_eq!(decoded.validate(&block, &expectation(8192, 42)), Ok(()));
        assert_eq!(decoded.validate_payload(payload), Ok(()));
        assert_eq!(decoded.validate_payload(b"pixelz"), Err(RecordDefect::PayloadCrc));
    }

    #[test]
    fn header_defects_are_named() {
        let header = RecordHeader::new(RecordKind::Frame, 0, 42, 8192, 7, 1, 2, b"x", 0);
        let block = block_with(&header);
        assert_eq!(header.validate(&block, &expectation(4096, 42)), Err(RecordDefect::Misplaced(8192)));
        assert_eq!(header.validate(&block, &expectation(8192, 43)), Err(RecordDefect::SequenceGap(42)));
        let mut other_ring = expectation(8192, 42);
        other_ring.ring_id = 8;
        assert_eq!(header.validate(&block, &other_ring), Err(RecordDefect::ForeignRing));

        let mut flipped = block.clone();
        flipped[20] ^= 0x10;
        let torn = RecordHeader::from_block(&flipped);
        assert_eq!(torn.validate(&flipped, &expectation(8192, 42)), Err(RecordDefect::HeaderCrc));

        let zeros = vec![0u8; BLOCK_BYTES_USIZE];
        assert_eq!(
            RecordHeader::from_block(&zeros).validate(&zeros, &expectation(0, 1)),
            Err(RecordDefect::Zeroed)
        );
    }

    #[test]
    fn checkpoint_slot_seals_and_detects_corruption() {
        let mut slot = CheckpointSlot::zeroed();
        slot.checkpoint_sequence = 5.into();
        slot.capacity_bytes = (1u64 << 30).into();
        slot.head_offset = 8192.into();
        slot.head_sequence = 3.into();
        slot.tail_sequence = 1.into();
        slot.seal();
        let mut block = vec![0u8; BLOCK_BYTES_USIZE];
        block[..512].copy_from_slice(slot.as_bytes());
        let decoded = CheckpointSlot::decode(&block).expect("valid slot");
        assert_eq!(decoded.slot_index.get(), 1);
        block[100] ^= 1;
        assert_eq!(CheckpointSlot::decode(&block).err(), Some(SlotDefect::Crc));
    }

    #[test]
    fn stored_sizes_are_block_multiples() {
        assert_eq!(stored_record_bytes(0), 4096);
        assert_eq!(stored_record_bytes(1), 8192);
        assert_eq!(stored_record_bytes(4096), 8192);
        assert_eq!(stored_record_bytes(1 << 20), 4096 + (1 << 20));
    }
}
