//! The DAQ frame protocol: the ingest's input contract, one definition for sender and receiver.
//!
//! A frame carries consecutive pixel rows of one amplifier segment. It is a 4096-byte header
//! block (a 64-byte little-endian [`FrameHeader`], then zeros) followed by the rows as big-endian
//! `i32` (FITS byte order) holding 18-bit ADC values, zero-padded to a multiple of 4096 bytes. So
//! the whole frame can be written to disk with `O_DIRECT` exactly as received, and its pixel bytes
//! can go into a FITS file unchanged. The byte diagram is in `docs/daq-frame-protocol.md`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::protocol::geometry::{DetectorKind, Instrument, RaftId, Segment, SensorId};

/// `"DAQF"`.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"DAQF");
/// The protocol version this code writes and the newest it reads.
pub const FRAME_VERSION: u16 = 1;
/// Size of the header block; the pixel rows start at this offset.
pub const FRAME_HEADER_BLOCK_BYTES: usize = 4096;
/// Every frame's total length is a multiple of this.
pub const FRAME_ALIGN_BYTES: usize = 4096;
/// Bytes per pixel on the wire (big-endian `i32`).
pub const BYTES_PER_PIXEL: usize = 4;
/// Largest ADC value: pixels hold 18-bit values.
pub const MAX_ADC_VALUE: i32 = (1 << 18) - 1;

/// Flag: this frame holds the last rows of its segment.
pub const FLAG_END_OF_SEGMENT: u8 = 1;
/// Flag: this frame is the last one of its exposure on this stream.
pub const FLAG_END_OF_EXPOSURE: u8 = 2;

/// Which camera a frame comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InstrumentCode {
    /// LSSTCam, camera code `MC`.
    LsstCam = 1,
    /// LATISS, camera code `AT`.
    Latiss = 2,
}

impl InstrumentCode {
    /// Decodes the wire byte.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::LsstCam),
            2 => Some(Self::Latiss),
            _ => None,
        }
    }
}

/// The fixed header at byte 0 of a frame.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct FrameHeader {
    /// [`FRAME_MAGIC`].
    pub magic: U32,
    /// [`FRAME_VERSION`].
    pub version: U16,
    /// Offset of the first pixel byte: [`FRAME_HEADER_BLOCK_BYTES`].
    pub header_block_bytes: U16,
    /// [`InstrumentCode`].
    pub instrument: u8,
    /// [`FLAG_END_OF_SEGMENT`], [`FLAG_END_OF_EXPOSURE`].
    pub flags: u8,
    /// Raft as its two digits: `R22` is 22, `R00` is 0.
    pub raft: u8,
    /// Sensor: `S11` is 11; guiders `SG0`/`SG1` are 30/31; wavefront `SW0`/`SW1` are 40/41.
    pub sensor: u8,
    /// Segment as the digits of its EXTNAME: `Segment10` is 10, `Segment07` is 7.
    pub segment: u8,
    /// Zero.
    pub reserved_a: u8,
    /// Columns of the segment (576).
    pub segment_columns: U16,
    /// Rows of the segment (2048).
    pub segment_rows: U16,
    /// First row carried by this frame (0-based).
    pub first_row: U16,
    /// Rows carried by this frame.
    pub row_count: U16,
    /// Zero.
    pub reserved_b: U16,
    /// DAYOBS (YYYYMMDD) x 100000 + SEQNUM.
    pub exposure_id: U64,
    /// Sender's frame counter on this stream, from 1: reveals duplicates, gaps and reordering.
    pub frame_sequence: U64,
    /// Pixel bytes: `row_count x segment_columns x 4` (without padding).
    pub payload_length: U32,
    /// CRC32 (IEEE) of the `payload_length` pixel bytes.
    pub payload_crc32: U32,
    /// When the rows were read out, ns since the Unix epoch (sender's clock).
    pub readout_ns: U64,
    /// Zero.
    pub reserved_c: U32,
    /// CRC32 of header bytes 0..60.
    pub header_crc32: U32,
}

const _: () = assert!(core::mem::size_of::<FrameHeader>() == 64);
const _: () = assert!(core::mem::offset_of!(FrameHeader, header_crc32) == 60);
const _: () = assert!(FRAME_HEADER_BLOCK_BYTES.is_multiple_of(FRAME_ALIGN_BYTES));

/// What a frame says about itself, before CRCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFields {
    /// Camera.
    pub instrument: InstrumentCode,
    /// Flags.
    pub flags: u8,
    /// Raft digits.
    pub raft: u8,
    /// Sensor code.
    pub sensor: u8,
    /// Segment digits.
    pub segment: u8,
    /// Segment columns.
    pub segment_columns: u16,
    /// Segment rows.
    pub segment_rows: u16,
    /// First row.
    pub first_row: u16,
    /// Row count.
    pub row_count: u16,
    /// Exposure id.
    pub exposure_id: u64,
    /// Frame counter.
    pub frame_sequence: u64,
    /// Readout time.
    pub readout_ns: u64,
}

/// Why bytes are not a valid frame. Every variant names the value found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header block.
    #[error("frame shorter than its {FRAME_HEADER_BLOCK_BYTES}-byte header block ({found} bytes)")]
    Truncated {
        /// Bytes available.
        found: usize,
    },
    /// Not a frame header.
    #[error("bad frame magic {found:#010x} (expected {FRAME_MAGIC:#010x})")]
    BadMagic {
        /// Magic found.
        found: u32,
    },
    /// The header is corrupt.
    #[error("frame header CRC32 mismatch (header says {stored:#010x}, computed {computed:#010x})")]
    HeaderCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
    /// A newer protocol version.
    #[error("frame protocol version {found} is not supported (newest known: {FRAME_VERSION})")]
    UnsupportedVersion {
        /// Version found.
        found: u16,
    },
    /// An unknown instrument code.
    #[error("unknown instrument code {found}")]
    UnknownInstrument {
        /// Code found.
        found: u8,
    },
    /// Header fields that contradict one another.
    #[error("inconsistent frame header: {what} (first_row {first_row}, row_count {row_count}, segment {columns}x{rows}, payload_length {payload_length})")]
    Inconsistent {
        /// What is wrong.
        what: &'static str,
        /// First row.
        first_row: u16,
        /// Rows.
        row_count: u16,
        /// Segment columns.
        columns: u16,
        /// Segment rows.
        rows: u16,
        /// Payload length.
        payload_length: u32,
    },
    /// The frame's length does not match its header.
    #[error("frame is {found} bytes but its header implies {expected}")]
    WrongLength {
        /// Length implied by the header.
        expected: usize,
        /// Length received.
        found: usize,
    },
    /// The pixel bytes are corrupt.
    #[error("frame payload CRC32 mismatch (header says {stored:#010x}, computed {computed:#010x})")]
    PayloadCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
}

impl FrameHeader {
    /// A header for `fields` and these pixel bytes, both CRCs filled in.
    pub fn new(fields: &FrameFields, pixels: &[u8]) -> Self {
        let payload_length = u32::try_from(pixels.len()).expect("a frame carries less than 4 GiB");
        let mut header = Self {
            magic: FRAME_MAGIC.into(),
            version: FRAME_VERSION.into(),
            header_block_bytes: u16::try_from(FRAME_HEADER_BLOCK_BYTES).expect("4096").into(),
            instrument: fields.instrument as u8,
            flags: fields.flags,
            raft: fields.raft,
            sensor: fields.sensor,
            segment: fields.segment,
            reserved_a: 0,
            segment_columns: fields.segment_columns.into(),
            segment_rows: fields.segment_rows.into(),
            first_row: fields.first_row.into(),
            row_count: fields.row_count.into(),
            reserved_b: 0.into(),
            exposure_id: fields.exposure_id.into(),
            frame_sequence: fields.frame_sequence.into(),
            payload_length: payload_length.into(),
            payload_crc32: crc32fast::hash(pixels).into(),
            readout_ns: fields.readout_ns.into(),
            reserved_c: 0.into(),
            header_crc32: 0.into(),
        };
        header.header_crc32 = header.compute_header_crc().into();
        header
    }

    fn compute_header_crc(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[..60])
    }

    /// Parses and checks the header at the start of `bytes` (at least the header block): magic,
    /// header CRC, version, instrument, and that its fields agree with one another.
    pub fn parse(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() < FRAME_HEADER_BLOCK_BYTES {
            return Err(FrameError::Truncated { found: bytes.len() });
        }
        let (header, _) =
            Self::read_from_prefix(bytes).map_err(|_| FrameError::Truncated { found: bytes.len() })?;
        if header.magic.get() != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: header.magic.get() });
        }
        let computed = header.compute_header_crc();
        if header.header_crc32.get() != computed {
            return Err(FrameError::HeaderCrc { stored: header.header_crc32.get(), computed });
        }
        if header.version.get() != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { found: header.version.get() });
        }
        if InstrumentCode::from_u8(header.instrument).is_none() {
            return Err(FrameError::UnknownInstrument { found: header.instrument });
        }
        header.check_consistency()?;
        Ok(header)
    }

    fn check_consistency(&self) -> Result<(), FrameError> {
        let inconsistent = |what| FrameError::Inconsistent {
            what,
            first_row: self.first_row.get(),
            row_count: self.row_count.get(),
            columns: self.segment_columns.get(),
            rows: self.segment_rows.get(),
            payload_length: self.payload_length.get(),
        };
        if usize::from(self.header_block_bytes.get()) != FRAME_HEADER_BLOCK_BYTES {
            return Err(inconsistent("header block size is not 4096"));
        }
        if self.row_count.get() == 0 || self.segment_columns.get() == 0 {
            return Err(inconsistent("no rows or no columns"));
        }
        if u32::from(self.first_row.get()) + u32::from(self.row_count.get())
            > u32::from(self.segment_rows.get())
        {
            return Err(inconsistent("rows run past the end of the segment"));
        }
        let expected_payload =
            u64::from(self.row_count.get()) * u64::from(self.segment_columns.get()) * BYTES_PER_PIXEL as u64;
        if u64::from(self.payload_length.get()) != expected_payload {
            return Err(inconsistent("payload length is not rows x columns x 4"));
        }
        let ends_segment = u32::from(self.first_row.get()) + u32::from(self.row_count.get())
            == u32::from(self.segment_rows.get());
        if (self.flags & FLAG_END_OF_SEGMENT != 0) != ends_segment {
            return Err(inconsistent("end-of-segment flag disagrees with the rows carried"));
        }
        Ok(())
    }

    /// The instrument (checked by [`FrameHeader::parse`]).
    pub fn instrument_code(&self) -> Option<InstrumentCode> {
        InstrumentCode::from_u8(self.instrument)
    }

    /// Total bytes of the frame: header block plus pixel rows padded to 4096.
    pub fn frame_length_bytes(&self) -> usize {
        frame_length_bytes(self.payload_length.get() as usize)
    }

    /// Checks a whole frame (header already parsed): its length, then the pixel CRC.
    pub fn validate_frame(&self, frame: &[u8]) -> Result<(), FrameError> {
        let expected = self.frame_length_bytes();
        if frame.len() != expected {
            return Err(FrameError::WrongLength { expected, found: frame.len() });
        }
        let pixels =
            &frame[FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + self.payload_length.get() as usize];
        let computed = crc32fast::hash(pixels);
        if computed != self.payload_crc32.get() {
            return Err(FrameError::PayloadCrc { stored: self.payload_crc32.get(), computed });
        }
        Ok(())
    }
}

/// The frame protocol's camera byte.
pub fn instrument_code(instrument: Instrument) -> InstrumentCode {
    match instrument {
        Instrument::LsstCam => InstrumentCode::LsstCam,
        Instrument::Latiss => InstrumentCode::Latiss,
    }
}

/// The raft's two digits: `R22` → 22, `R00` → 0.
pub fn raft_wire_code(raft: RaftId) -> u8 {
    raft.row() * 10 + raft.column()
}

/// `S11` → 11; guiders `SG0`/`SG1` → 30/31; wavefront `SW0`/`SW1` → 40/41.
pub fn sensor_wire_code(sensor: SensorId) -> u8 {
    let name = sensor.name().as_bytes();
    let digit = |index: usize| name[index] - b'0';
    match sensor.kind() {
        DetectorKind::Science => digit(1) * 10 + digit(2),
        DetectorKind::Guider => 30 + digit(2),
        DetectorKind::WavefrontHalf => 40 + digit(2),
    }
}

/// The digits of the EXTNAME: `Segment10` → 10, `Segment07` → 7.
pub fn segment_wire_code(segment: &Segment) -> u8 {
    let digits = segment.extname().trim_start_matches("Segment");
    digits.parse().expect("EXTNAMEs are Segment followed by two digits")
}

/// Total frame bytes for a payload of `payload_bytes`.
pub const fn frame_length_bytes(payload_bytes: usize) -> usize {
    FRAME_HEADER_BLOCK_BYTES + payload_bytes.div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES
}

/// Writes a complete frame (header block, pixels, zero padding) into `out`, which must be exactly
/// [`frame_length_bytes`] long. Returns the header written.
pub fn encode_frame(fields: &FrameFields, pixels: &[u8], out: &mut [u8]) -> FrameHeader {
    assert_eq!(out.len(), frame_length_bytes(pixels.len()), "output buffer is not the frame's length");
    let header = FrameHeader::new(fields, pixels);
    out[..FRAME_HEADER_BLOCK_BYTES].fill(0);
    out[..64].copy_from_slice(header.as_bytes());
    out[FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + pixels.len()].copy_from_slice(pixels);
    out[FRAME_HEADER_BLOCK_BYTES + pixels.len()..].fill(0);
    header
}

/// Parses and fully validates one frame: header, length and pixel CRC.
pub fn decode_frame(frame: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = FrameHeader::parse(frame)?;
    header.validate_frame(frame)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(first_row: u16, row_count: u16) -> FrameFields {
        FrameFields {
            instrument: InstrumentCode::LsstCam,
            flags: if first_row + row_count == 2048 { FLAG_END_OF_SEGMENT } else { 0 },
            raft: 22,
            sensor: 11,
            segment: 10,
            segment_columns: 576,
            segment_rows: 2048,
            first_row,
            row_count,
            exposure_id: 2025041500060,
            frame_sequence: 7,
            readout_ns: 1_744_700_000_000_000_000,
        }
    }

    fn pixels(rows: u16) -> Vec<u8> {
        (0..usize::from(rows) * 576).flat_map(|i| ((i as i32 * 37) & MAX_ADC_VALUE).to_be_bytes()).collect()
    }

    fn frame(first_row: u16, row_count: u16) -> Vec<u8> {
        let pixels = pixels(row_count);
        let mut out = vec![0xEE; frame_length_bytes(pixels.len())];
        encode_frame(&fields(first_row, row_count), &pixels, &mut out);
        out
    }

    #[test]
    fn a_whole_segment_frame_is_exactly_one_header_block_plus_the_segment() {
        let whole = frame(0, 2048);
        assert_eq!(whole.len(), 4096 + 576 * 2048 * 4);
        assert_eq!(whole.len() % FRAME_ALIGN_BYTES, 0);
        let header = decode_frame(&whole).unwrap();
        assert_eq!(header.exposure_id.get(), 2025041500060);
        assert_eq!(header.flags & FLAG_END_OF_SEGMENT, FLAG_END_OF_SEGMENT);
        assert_eq!(&whole[4096..4100], &0i32.to_be_bytes());
    }

    #[test]
    fn partial_frames_are_padded_to_4096_and_round_trip() {
        let part = frame(100, 3);
        assert_eq!(part.len(), 4096 + 8192);
        assert!(part[4096 + 3 * 576 * 4..].iter().all(|&b| b == 0), "padding is zero");
        assert_eq!(decode_frame(&part).unwrap(), FrameHeader::parse(&part).unwrap());
    }

    #[test]
    fn every_defect_is_named() {
        let good = frame(0, 16);
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        assert!(matches!(decode_frame(&bad_magic), Err(FrameError::BadMagic { .. })));
        let mut bad_header = good.clone();
        bad_header[30] ^= 1;
        assert!(matches!(decode_frame(&bad_header), Err(FrameError::HeaderCrc { .. })));
        let mut bad_payload = good.clone();
        bad_payload[5000] ^= 1;
        assert!(matches!(decode_frame(&bad_payload), Err(FrameError::PayloadCrc { .. })));
        assert!(matches!(decode_frame(&good[..4000]), Err(FrameError::Truncated { found: 4000 })));
        assert!(matches!(decode_frame(&good[..good.len() - 4096]), Err(FrameError::WrongLength { .. })));
        let message = decode_frame(&bad_payload).unwrap_err().to_string();
        assert!(message.contains("payload CRC32"), "{message}");
    }

    #[test]
    fn contradictory_headers_are_refused() {
        let pixels = pixels(4);
        let mut out = vec![0; frame_length_bytes(pixels.len())];
        let mut lying = fields(2046, 4); // runs past row 2048
        lying.flags = FLAG_END_OF_SEGMENT;
        encode_frame(&lying, &pixels, &mut out);
        let error = decode_frame(&out).unwrap_err();
        assert!(matches!(error, FrameError::Inconsistent { .. }), "{error}");
        assert!(error.to_string().contains("first_row 2046"), "{error}");

        let mut missing_flag = fields(2044, 4);
        missing_flag.flags = 0;
        encode_frame(&missing_flag, &pixels, &mut out);
        assert!(matches!(decode_frame(&out), Err(FrameError::Inconsistent { .. })));
    }
}
