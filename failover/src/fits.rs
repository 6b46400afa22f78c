//! Raw FITS files: one file per detector per exposure, streamed from the ring's frames and the
//! Header Service's metadata, with bounded memory and no per-pixel work.
//!
//! # What a file holds
//!
//! - A primary HDU with a header only (`NAXIS = 0`): `SIMPLE`, `BITPIX = 8`, `NAXIS`, `EXTEND`,
//!   then the metadata keywords in the order the [`MetadataEvent`] lists them (OBSID, CAMCODE,
//!   INSTRUME, CONTRLLR, DAYOBS, SEQNUM, IMGTYPE, DATE-OBS, ..., HEADVER), then the per-file
//!   keywords INSTRUME (only if the metadata lacks it), RAFTBAY, CCDSLOT, CCD_MANU, LSST_NUM,
//!   IMAGETAG, FILENAME, DETSIZE, then (incomplete files only) `INCOMPL = T` with COMMENT cards
//!   naming the missing segments, then CHECKSUM and `DATASUM = '0'`.
//! - One IMAGE extension per segment in extension order (`Segment10`..`Segment17`, then
//!   `Segment07`..`Segment00`; 8 for a wavefront half-sensor): `BITPIX = 32`, 576 x 2048,
//!   EXTNAME, CHANNEL, DATASEC, DETSEC, DETSIZE, DTV1, DTV2, DTM1_1, DTM2_2, CCDSUM, CHECKSUM,
//!   DATASUM, then the pixel bytes exactly as the frames carry them (big-endian `i32`, FITS byte
//!   order) padded with zeros to a 2880-byte block. No BZERO/BSCALE: values are 18-bit.
//!
//! Cards are 80 columns in fixed format (strings quoted from column 11 with `'` doubled and at
//! least 8 characters between the quotes; integers, reals and logicals right-justified to
//! column 30; reals in Rust's shortest round-trip form with a decimal point and an upper-case
//! `E` exponent, so a reader gets the same `f64` back); headers end with `END` and are padded
//! with spaces to 2880 bytes.
//!
//! # Streaming and checksums
//!
//! The writer never holds a segment, let alone the 75 MB of a CCD: it pulls each segment's bytes
//! from a [`SegmentSource`] in chunks and writes them straight out. DATASUM sits in the header,
//! before the data, so the writer first asks the source for every segment's 32-bit
//! ones'-complement sum (the FITS checksum convention of Seaman and Pence). The sum is a sum of
//! big-endian 32-bit words with end-around carry, so the sum of a segment is the [`combine`] of
//! the [`ones_complement_sum`]s of its chunks whenever each chunk is a multiple of 4 bytes long
//! (whole rows are): a caller can sum each frame once as it arrives and combine the frame sums
//! later. By default the writer also re-sums the bytes as they pass and fails with
//! [`FitsError::DatasumMismatch`] if they differ from what the source promised (a corrupt source
//! would otherwise give a file whose checksum fails). CHECKSUM is the 16-character ASCII
//! encoding ([`encode_checksum`]) of the complement of the HDU's sum computed with CHECKSUM set
//! to `'0000000000000000'`, so that the whole HDU then sums to all ones (negative zero).
//!
//! # Incomplete exposures
//!
//! A source reports a missing segment by returning `None` from
//! [`SegmentSource::segment_sum`]. With [`WriteOptions::allow_incomplete`] the file still has
//! every extension; a missing segment's data are all zeros (so its DATASUM is `'0'`), its
//! extension header carries a COMMENT saying so, and the primary header carries `INCOMPL = T`
//! plus COMMENT cards listing the missing EXTNAMEs. Complete files carry no INCOMPL keyword.
//! Without the option a missing segment is an error ([`FitsError::MissingSegments`]) and
//! nothing is written.
//!
//! # Detector transform (DTV/DTM)
//!
//! `detector = DTM * image + DTV` per axis (IRAF convention, 1-based pixels), consistent with
//! DETSEC and DATASEC: with `d` the first DATASEC pixel on the axis (`prescan + 1` in x, `1` in y)
//! and `s` the first DETSEC value on the axis,
//!
//! - axis not flipped (DETSEC first < last): `DTM = 1`, `DTV = s - d`;
//! - axis flipped (DETSEC first > last): `DTM = -1`, `DTV = s + d`.
//!
//! So image pixel `d` maps to detector pixel `s` either way, and the last DATASEC pixel to the
//! last DETSEC value. ITL `Segment10`, DATASEC `[4:512,1:2000]`, DETSEC `[509:1,1:2000]`:
//! `DTV1 = 513`, `DTM1_1 = -1`, `DTV2 = 0`, `DTM2_2 = 1`. DTV are written as integers, DTM as
//! reals (`1.0`, `-1.0`); the off-diagonal terms are zero and not written.
//!
//! # Names
//!
//! File name (FILENAME): `{CAMCODE}_{CONTRLLR}_{DAYOBS}_{SEQNUM:06}_{RAFT}_{SENSOR}.fits`, e.g.
//! `MC_O_20250415_000060_R22_S11.fits`; object key: `raw/{instrument}/{dayobs}/{obsid}/{filename}`
//! with instrument `LSSTCam` or `LATISS` ([`object_key`]).
//!
//! # Assumptions (not in `shared/domain.md`)
//!
//! - `BITPIX = 8` in the header-only primary HDU (any BITPIX is legal with `NAXIS = 0`).
//! - LSST_NUM is a synthetic, deterministic serial ([`lsst_num`]): `ITL-3800C-{code}` or
//!   `E2V-CCD250-{code}` with `code` built from the raft and slot. The real serials are in the
//!   camera's hardware database; replace this when that table is available.
//! - IMAGETAG is a synthetic, deterministic 16-hex-digit tag of the OBSID ([`image_tag`]), the
//!   same for every detector of an exposure (the DAQ's real tag is not on the metadata channel).
//! - DTV/DTM as above (the convention obs_lsst-era raws follow); CCDSUM is `'1 1'` (no binning).

use std::fmt;
use std::io::{self, Write};

use dma_ingest::protocol::geometry::{
    Detector, DetectorKind, Instrument, Segment, Vendor, SEGMENT_COLUMNS, SEGMENT_ROWS, SEGMENT_SIZE_BYTES,
};
use dma_ingest::protocol::metadata::{is_valid_keyword_name, KeywordValue, MetadataError, MetadataEvent};

/// Bytes of a FITS block: headers and data are padded to a multiple of this.
pub const BLOCK_BYTES: usize = 2880;
/// Bytes of one header card.
pub const CARD_BYTES: usize = 80;
/// Cards in one header block.
pub const CARDS_PER_BLOCK: usize = BLOCK_BYTES / CARD_BYTES;
/// BITPIX of the header-only primary HDU (**Assumption**, see the module docs).
pub const PRIMARY_BITPIX: i64 = 8;
/// BITPIX of every image extension: 32-bit signed integers.
pub const IMAGE_BITPIX: i64 = 32;
/// Longest text of a COMMENT or HISTORY card (columns 9..80).
pub const MAX_COMMENTARY_CHARS: usize = 72;
/// The CHECKSUM value written before the real one is computed; its characters are the
/// encoding's zero, so replacing it by the encoding of `x` adds exactly `x` to the HDU's sum.
pub const CHECKSUM_PLACEHOLDER: &str = "0000000000000000";

const _: () = assert!(BLOCK_BYTES.is_multiple_of(4) && CARD_BYTES * CARDS_PER_BLOCK == BLOCK_BYTES);

/// Keywords the writer owns: metadata carrying any of them is refused.
const RESERVED_KEYWORDS: [&str; 30] = [
    "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "BZERO",
    "BSCALE", "END", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "EXTNAME", "CHANNEL", "DATASEC", "DETSEC",
    "DETSIZE", "DTV1", "DTV2", "DTM1_1", "DTM2_2", "CCDSUM", "RAFTBAY", "CCDSLOT", "CCD_MANU", "INCOMPL",
];
/// More per-file keywords the writer owns.
const RESERVED_PER_FILE_KEYWORDS: [&str; 3] = ["LSST_NUM", "IMAGETAG", "FILENAME"];

/// One 80-column header card.
pub type Card = [u8; CARD_BYTES];

/// Why a raw file cannot be built or written.
#[derive(Debug, thiserror::Error)]
pub enum FitsError {
    /// The metadata event fails its own validation.
    #[error("invalid metadata event: {0}")]
    Metadata(#[from] MetadataError),
    /// The metadata disagrees with the detector or lacks what the file needs.
    #[error("metadata keyword {keyword}: {reason}")]
    MetadataKeyword {
        /// The keyword at fault.
        keyword: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A card that cannot be formatted.
    #[error("cannot format card {keyword}: {reason}")]
    InvalidCard {
        /// The keyword.
        keyword: String,
        /// What is wrong.
        reason: String,
    },
    /// Segments are missing and [`WriteOptions::allow_incomplete`] is off.
    #[error("{detector}: segments missing ({}); set allow_incomplete to write a zero-filled file", extnames.join(", "))]
    MissingSegments {
        /// The detector, e.g. `R22_S11`.
        detector: String,
        /// EXTNAMEs of the missing segments.
        extnames: Vec<&'static str>,
    },
    /// The source delivered a chunk whose length is not a multiple of 4 bytes.
    #[error("{extname}: chunk of {length} bytes at offset {offset} is not a multiple of 4 bytes")]
    UnalignedChunk {
        /// The segment.
        extname: &'static str,
        /// Bytes of the segment delivered before the chunk.
        offset: usize,
        /// The chunk's length.
        length: usize,
    },
    /// The source delivered more or fewer bytes than a segment holds.
    #[error("{extname}: source delivered {found} bytes, a segment is {expected}")]
    SegmentLength {
        /// The segment.
        extname: &'static str,
        /// [`SEGMENT_SIZE_BYTES`].
        expected: usize,
        /// Bytes delivered (at least this many when too many).
        found: usize,
    },
    /// The bytes delivered do not sum to what [`SegmentSource::segment_sum`] promised.
    #[error("{extname}: data sum {computed:#010x} differs from the promised {promised:#010x}")]
    DatasumMismatch {
        /// The segment.
        extname: &'static str,
        /// What the source said.
        promised: u32,
        /// What the bytes sum to.
        computed: u32,
    },
    /// Reading the source or writing the output failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

// ---------------------------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------------------------

/// Folds the carries above bit 31 back in (end-around carry).
fn fold(mut sum: u64) -> u32 {
    while sum > u64::from(u32::MAX) {
        sum = (sum & u64::from(u32::MAX)) + (sum >> 32);
    }
    sum as u32
}

/// The 32-bit ones'-complement sum of `bytes` read as big-endian 32-bit words (the FITS checksum
/// convention). `bytes.len()` must be a multiple of 4 (a programmer error otherwise).
///
/// Sums of consecutive pieces combine with [`combine`]:
/// `ones_complement_sum(a ++ b) == combine(ones_complement_sum(a), ones_complement_sum(b))`
/// when `a.len()` is a multiple of 4. All zeros sum to 0.
pub fn ones_complement_sum(bytes: &[u8]) -> u32 {
    assert!(
        bytes.len().is_multiple_of(4),
        "ones'-complement sum of {} bytes: not a multiple of 4",
        bytes.len()
    );
    // At most 2^28 words per piece: the u64 accumulator cannot overflow.
    let mut total = 0u32;
    for piece in bytes.chunks(1 << 30) {
        let piece_sum: u64 = piece
            .chunks_exact(4)
            .map(|word| u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]])))
            .sum();
        total = combine(total, fold(piece_sum));
    }
    total
}

/// Ones'-complement addition of two sums (add, then add the carry back in).
pub fn combine(a: u32, b: u32) -> u32 {
    fold(u64::from(a) + u64::from(b))
}

/// The 16-character ASCII encoding of `value` (Seaman and Pence; CFITSIO's `ffesum` without
/// complementing): characters from `0x30` on, avoiding punctuation, such that the
/// ones'-complement sum of the 16 bytes minus that of 16 `'0'`s is `value`. The writer encodes the
/// complement of an HDU's sum so that the HDU then sums to all ones.
pub fn encode_checksum(value: u32) -> [u8; 16] {
    const EXCLUDED: [u8; 13] = [0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x40, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f, 0x60];
    const OFFSET: u8 = b'0';
    let mut unshifted = [0u8; 16];
    for (byte_index, byte) in value.to_be_bytes().into_iter().enumerate() {
        let quotient = byte / 4 + OFFSET;
        let remainder = byte % 4;
        let mut characters = [quotient; 4];
        characters[0] += remainder;
        loop {
            let mut changed = false;
            for excluded in EXCLUDED {
                for pair in [0, 2] {
                    if characters[pair] == excluded || characters[pair + 1] == excluded {
                        characters[pair] += 1;
                        characters[pair + 1] -= 1;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        for (position, character) in characters.into_iter().enumerate() {
            unshifted[4 * position + byte_index] = character;
        }
    }
    // Rotate one place to the right, so the encoding lines up with 32-bit words of the header.
    std::array::from_fn(|index| unshifted[(index + 15) % 16])
}

// ---------------------------------------------------------------------------------------------
// Cards
// ---------------------------------------------------------------------------------------------

/// A real in FITS fixed format that reads back as the same `f64`: Rust's shortest round-trip
/// digits, always with a decimal point, an exponent written `E+NN`/`E-NN` (at least two digits).
/// `None` for NaN and infinities, which FITS header values cannot hold.
pub fn format_float(value: f64) -> Option<String> {
    if !value.is_finite() {
        return None;
    }
    let fixed_or_exponent = to_fits_real(&format!("{value:?}"));
    if fixed_or_exponent.len() <= 20 {
        return Some(fixed_or_exponent);
    }
    // A long fixed form (e.g. 0.00012345678901234567): the exponent form is shorter.
    let exponent = to_fits_real(&format!("{value:e}"));
    Some(if exponent.len() < fixed_or_exponent.len() { exponent } else { fixed_or_exponent })
}

/// Rust's `1e-7` / `1.5e300` / `30.0` into FITS's `1.0E-07` / `1.5E+300` / `30.0`.
fn to_fits_real(rust: &str) -> String {
    match rust.split_once('e') {
        Some((mantissa, exponent)) => {
            let mantissa = if mantissa.contains('.') { mantissa.to_owned() } else { format!("{mantissa}.0") };
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            format!("{mantissa}E{sign}{digits:0>2}")
        }
        None if rust.contains('.') => rust.to_owned(),
        None => format!("{rust}.0"),
    }
}

fn card_error(keyword: &str, reason: impl Into<String>) -> FitsError {
    FitsError::InvalidCard { keyword: keyword.to_owned(), reason: reason.into() }
}

fn is_printable_ascii(text: &str) -> bool {
    text.bytes().all(|byte| (b' '..=b'~').contains(&byte))
}

/// One `KEYWORD = value / comment` card in fixed format (see the module docs). The comment is
/// cut to what fits; pass `""` for none. Errors: an invalid keyword name, a non-printable or
/// too-long string (more than 68 characters once quotes are doubled), a non-finite real.
pub fn format_card(keyword: &str, value: &KeywordValue, comment: &str) -> Result<Card, FitsError> {
    if !is_valid_keyword_name(keyword) {
        return Err(card_error(keyword, "not a FITS keyword (1 to 8 of A-Z 0-9 - _)"));
    }
    if !is_printable_ascii(comment) {
        return Err(card_error(keyword, "comment is not printable ASCII"));
    }
    let value_text = match value {
        KeywordValue::Str(text) => {
            if !is_printable_ascii(text) {
                return Err(card_error(keyword, format!("string {text:?} is not printable ASCII")));
            }
            let escaped = text.replace('\'', "''");
            if escaped.len() > 68 {
                return Err(card_error(
                    keyword,
                    format!("string of {} characters (at most 68)", escaped.len()),
                ));
            }
            // At least 8 characters between the quotes; a comment starts after column 30 at least.
            format!("{:<20}", format!("'{escaped:<8}'"))
        }
        KeywordValue::Int(integer) => format!("{integer:>20}"),
        KeywordValue::Float(real) => {
            let text = format_float(*real)
                .ok_or_else(|| card_error(keyword, format!("real {real} is not finite")))?;
            format!("{text:>20}")
        }
        KeywordValue::Bool(logical) => format!("{:>20}", if *logical { "T" } else { "F" }),
    };
    let mut text = format!("{keyword:<8}= {value_text}");
    // " / " and at least one character of comment.
    if !comment.is_empty() && text.len() + 4 <= CARD_BYTES {
        let room = CARD_BYTES - text.len() - 3;
        text.push_str(" / ");
        text.push_str(&comment[..comment.len().min(room)]);
    }
    Ok(pad_card(&text))
}

/// A commentary card: `COMMENT` or `HISTORY` (or blank) followed by `text` in columns 9..80.
/// Errors: another keyword, text longer than [`MAX_COMMENTARY_CHARS`] or not printable ASCII.
pub fn format_commentary_card(keyword: &str, text: &str) -> Result<Card, FitsError> {
    if !matches!(keyword, "COMMENT" | "HISTORY" | "") {
        return Err(card_error(keyword, "commentary keywords are COMMENT, HISTORY and blank"));
    }
    if text.len() > MAX_COMMENTARY_CHARS || !is_printable_ascii(text) {
        return Err(card_error(
            keyword,
            format!("text must be at most 72 printable ASCII characters: {text:?}"),
        ));
    }
    Ok(pad_card(&format!("{keyword:<8}{text}")))
}

/// `text` (at most 80 ASCII characters) padded with spaces to a card.
fn pad_card(text: &str) -> Card {
    debug_assert!(text.len() <= CARD_BYTES);
    let mut card = [b' '; CARD_BYTES];
    card[..text.len()].copy_from_slice(text.as_bytes());
    card
}

/// The text of a card, trailing spaces removed (for tests and messages).
pub fn card_text(card: &Card) -> &str {
    std::str::from_utf8(card).unwrap_or("").trim_end()
}

/// A header under construction: cards in order, without CHECKSUM, DATASUM and END.
#[derive(Debug, Clone, Default)]
pub struct HeaderCards {
    cards: Vec<Card>,
}

impl HeaderCards {
    /// An empty header.
    pub fn new() -> HeaderCards {
        HeaderCards::default()
    }

    /// Appends `keyword = value / comment`.
    pub fn push(&mut self, keyword: &str, value: KeywordValue, comment: &str) -> Result<(), FitsError> {
        self.cards.push(format_card(keyword, &value, comment)?);
        Ok(())
    }

    /// Appends a COMMENT card.
    pub fn push_comment(&mut self, text: &str) -> Result<(), FitsError> {
        self.cards.push(format_commentary_card("COMMENT", text)?);
        Ok(())
    }

    /// The cards so far.
    pub fn cards(&self) -> &[Card] {
        &self.cards
    }

    /// Bytes of the finished header: these cards plus CHECKSUM, DATASUM and END, in blocks.
    pub fn finished_len(&self) -> usize {
        padded_len(CARD_BYTES * (self.cards.len() + 3))
    }

    /// The finished header bytes: the cards, `CHECKSUM`, `DATASUM = '{datasum}'`, `END`, padded
    /// with spaces to whole blocks; CHECKSUM is set so that the header plus data whose
    /// ones'-complement sum is `datasum` sum to all ones. Returns the bytes and the CHECKSUM.
    pub fn finish(&self, datasum: u32) -> Result<(Vec<u8>, String), FitsError> {
        let mut bytes = Vec::with_capacity(self.finished_len());
        for card in &self.cards {
            bytes.extend_from_slice(card);
        }
        let checksum_offset = bytes.len();
        let placeholder = KeywordValue::Str(CHECKSUM_PLACEHOLDER.to_owned());
        bytes.extend_from_slice(&format_card("CHECKSUM", &placeholder, "HDU checksum")?);
        let datasum_value = KeywordValue::Str(datasum.to_string());
        bytes.extend_from_slice(&format_card("DATASUM", &datasum_value, "data unit checksum")?);
        bytes.extend_from_slice(&pad_card("END"));
        bytes.resize(padded_len(bytes.len()), b' ');
        let hdu_sum = combine(ones_complement_sum(&bytes), datasum);
        let encoded = encode_checksum(!hdu_sum);
        // The value starts after `CHECKSUM= '` (column 12).
        bytes[checksum_offset + 11..checksum_offset + 27].copy_from_slice(&encoded);
        let checksum = String::from_utf8_lossy(&encoded).into_owned();
        Ok((bytes, checksum))
    }
}

/// `length` rounded up to whole 2880-byte blocks.
pub const fn padded_len(length: usize) -> usize {
    length.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Bytes of one extension's data unit: a segment padded to whole blocks.
pub const SEGMENT_DATA_UNIT_BYTES: usize = padded_len(SEGMENT_SIZE_BYTES);

// ---------------------------------------------------------------------------------------------
// Geometry keywords and names
// ---------------------------------------------------------------------------------------------

/// The detector-coordinate transform of a segment: `detector = DTM * image + DTV` per axis
/// (formulas in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorTransform {
    /// DTV1: x offset.
    pub dtv1: i64,
    /// DTV2: y offset.
    pub dtv2: i64,
    /// DTM1_1: `1` or `-1` (x flipped).
    pub dtm1_1: i64,
    /// DTM2_2: `1` or `-1` (y flipped).
    pub dtm2_2: i64,
}

/// DTV1, DTV2, DTM1_1, DTM2_2 of `segment`, from its DETSEC and its layout's DATASEC.
pub fn detector_transform(segment: &Segment) -> DetectorTransform {
    let detsec = segment.detsec();
    let datasec = segment.layout().datasec();
    let axis = |detsec_first: u32, detsec_last: u32, data_first: u32| {
        let (first, data_first) = (i64::from(detsec_first), i64::from(data_first));
        if detsec_first > detsec_last {
            (first + data_first, -1)
        } else {
            (first - data_first, 1)
        }
    };
    let (dtv1, dtm1_1) = axis(detsec.x_first, detsec.x_last, datasec.x_first);
    let (dtv2, dtm2_2) = axis(detsec.y_first, detsec.y_last, datasec.y_first);
    DetectorTransform { dtv1, dtv2, dtm1_1, dtm2_2 }
}

/// The INSTRUME value and object-key directory: `LSSTCam` or `LATISS`.
pub const fn instrument_name(instrument: Instrument) -> &'static str {
    match instrument {
        Instrument::LsstCam => "LSSTCam",
        Instrument::Latiss => "LATISS",
    }
}

/// The raw file name `{CAMCODE}_{CONTRLLR}_{DAYOBS}_{SEQNUM:06}_{RAFT}_{SENSOR}.fits`.
pub fn raw_filename(
    camcode: &str,
    controller: &str,
    dayobs: &str,
    seqnum: i64,
    detector: &Detector,
) -> String {
    format!(
        "{camcode}_{controller}_{dayobs}_{seqnum:06}_{}_{}.fits",
        detector.raft().name(),
        detector.sensor().name()
    )
}

/// The object key `raw/{instrument}/{dayobs}/{obsid}/{filename}`, instrument `LSSTCam` or `LATISS`,
/// dayobs `YYYYMMDD`.
pub fn object_key(instrument: Instrument, dayobs: &str, obsid: &str, filename: &str) -> String {
    format!("raw/{}/{dayobs}/{obsid}/{filename}", instrument_name(instrument))
}

/// The slot's two-digit code: science `S{r}{c}` is `rc`, guiders `SG0`/`SG1` 30/31, wavefront
/// `SW0`/`SW1` 40/41 (as in the frame protocol's sensor byte).
fn sensor_code(detector: &Detector) -> u32 {
    let name = detector.sensor().name().as_bytes();
    let last = u32::from(name[2] - b'0');
    match detector.kind() {
        DetectorKind::Science => u32::from(name[1] - b'0') * 10 + last,
        DetectorKind::Guider => 30 + last,
        DetectorKind::WavefrontHalf => 40 + last,
    }
}

/// LSST_NUM. **Assumption**: synthetic and deterministic, not the real serial:
/// `ITL-3800C-{RRSS}` or `E2V-CCD250-{RRSS}`, `RR` the raft's digits and `SS` the slot code
/// (`S11` is 11, `SG0` 30, `SW1` 41); e.g. `E2V-CCD250-2211` for R22_S11.
pub fn lsst_num(detector: &Detector) -> String {
    let raft = detector.raft();
    let code = (u32::from(raft.row()) * 10 + u32::from(raft.column())) * 100 + sensor_code(detector);
    match detector.vendor() {
        Vendor::Itl => format!("ITL-3800C-{code:04}"),
        Vendor::E2v => format!("E2V-CCD250-{code:04}"),
    }
}

/// IMAGETAG. **Assumption**: synthetic, 16 lower-case hex digits of the FNV-1a 64-bit hash of
/// the OBSID, so every detector of an exposure has the same tag.
pub fn image_tag(obsid: &str) -> String {
    let hash = obsid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Comments for the metadata keywords we know (others get none).
fn metadata_comment(keyword: &str) -> &'static str {
    match keyword {
        "OBSID" => "observation id",
        "CAMCODE" => "camera code",
        "INSTRUME" => "instrument",
        "CONTRLLR" => "controller: O = OCS, C = CCS",
        "DAYOBS" => "observing day (UTC-12), YYYYMMDD",
        "SEQNUM" => "sequence number within DAYOBS",
        "IMGTYPE" => "image type",
        "DATE-OBS" => "start of exposure (TAI)",
        "DATE-BEG" => "start of exposure (TAI)",
        "DATE-END" => "end of exposure (TAI)",
        "MJD-BEG" => "start of exposure, MJD (TAI)",
        "MJD-END" => "end of exposure, MJD (TAI)",
        "EXPTIME" => "exposure time [s]",
        "DARKTIME" => "dark time [s]",
        "FILTER" => "filter",
        "RA" => "boresight right ascension [deg]",
        "DEC" => "boresight declination [deg]",
        "ROTPA" => "rotator position angle [deg]",
        "AIRMASS" => "airmass",
        "AIRTEMP" => "air temperature [deg C]",
        "PRESSURE" => "barometric pressure [hPa]",
        "HUMIDITY" => "relative humidity [%]",
        "WINDSPD" => "wind speed [m/s]",
        "HEADVER" => "header version",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// Where the writer pulls each segment's pixel bytes from (the ring's frames, in production).
///
/// Segments are named by their index in extension order ([`Detector::segment`]). The writer calls
/// [`segment_sum`](SegmentSource::segment_sum) for every segment first (the primary header must
/// say whether any is missing, and each DATASUM precedes its data), then
/// [`read_segment`](SegmentSource::read_segment) once for each present segment, in order.
pub trait SegmentSource {
    /// The [`ones_complement_sum`] of segment `index`'s [`SEGMENT_SIZE_BYTES`] pixel bytes (for
    /// example the [`combine`] of its frames' sums), or `None` if the segment is missing.
    fn segment_sum(&mut self, index: usize) -> io::Result<Option<u32>>;

    /// Passes segment `index`'s pixel bytes to `sink`, row-major from row 0 as big-endian `i32`,
    /// in chunks whose lengths are multiples of 4 bytes (whole rows are), [`SEGMENT_SIZE_BYTES`]
    /// in all. An error from `sink` must be returned as is.
    fn read_segment(&mut self, index: usize, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>)
        -> io::Result<()>;
}

/// How [`RawFile::write`] treats missing segments and the sums a source promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write a zero-filled extension for each missing segment and mark the file `INCOMPL = T`
    /// (see the module docs) instead of failing. Default: off.
    pub allow_incomplete: bool,
    /// Re-sum the bytes as they pass and fail if they differ from the promised sum. Default: on
    /// (it costs one add per 4 bytes, no copy).
    pub verify_datasums: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { allow_incomplete: false, verify_datasums: true }
    }
}

/// What [`RawFile::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Bytes written: the whole file.
    pub bytes_written: u64,
    /// Indices (extension order) of the segments written as zeros.
    pub missing_segments: Vec<usize>,
    /// DATASUM of each HDU, primary first (the primary's is 0).
    pub datasums: Vec<u32>,
    /// CHECKSUM of each HDU, primary first.
    pub checksums: Vec<String>,
}

/// One detector's raw file of one exposure: the validated metadata and the names, ready to write.
#[derive(Debug, Clone)]
pub struct RawFile {
    detector: Detector,
    /// The primary header up to (not including) INCOMPL, CHECKSUM and DATASUM.
    primary: HeaderCards,
    obsid: String,
    dayobs: String,
    filename: String,
    object_key: String,
}

impl RawFile {
    /// Checks `metadata` against `detector` and builds the primary header. Errors: the event
    /// fails [`MetadataEvent::validate`]; its instrument, CAMCODE or INSTRUME differ from the
    /// detector's camera; CAMCODE or CONTRLLR is missing or not a string; OBSID is not
    /// `{CAMCODE}_{CONTRLLR}_{DAYOBS}_{SEQNUM:06}`; it carries a keyword the writer owns
    /// (structural, checksum, commentary, per-file or extension keywords).
    pub fn new(detector: Detector, metadata: &MetadataEvent) -> Result<RawFile, FitsError> {
        metadata.validate()?;
        let instrument = detector.instrument();
        let keyword_error = |keyword: &str, reason: String| FitsError::MetadataKeyword {
            keyword: keyword.to_owned(),
            reason,
        };
        let event_instrument = match metadata.instrument {
            dma_ingest::protocol::frame::InstrumentCode::LsstCam => Instrument::LsstCam,
            dma_ingest::protocol::frame::InstrumentCode::Latiss => Instrument::Latiss,
        };
        if event_instrument != instrument {
            return Err(keyword_error(
                "INSTRUME",
                format!("event is for {event_instrument}, detector {detector} is {instrument}'s"),
            ));
        }
        let string = |keyword: &str| {
            metadata
                .get_str(keyword)
                .ok_or_else(|| keyword_error(keyword, "missing or not a string".to_owned()))
        };
        let camcode = string("CAMCODE")?;
        if camcode != instrument.camera_code() {
            return Err(keyword_error(
                "CAMCODE",
                format!("{camcode:?}, expected {:?}", instrument.camera_code()),
            ));
        }
        let controller = string("CONTRLLR")?;
        let dayobs = string("DAYOBS")?;
        let obsid = string("OBSID")?;
        let seqnum =
            metadata.get_int("SEQNUM").ok_or_else(|| keyword_error("SEQNUM", "missing".to_owned()))?;
        let expected_obsid = format!("{camcode}_{controller}_{dayobs}_{seqnum:06}");
        if obsid != expected_obsid {
            return Err(keyword_error("OBSID", format!("{obsid:?}, expected {expected_obsid:?}")));
        }
        for keyword in &metadata.keywords {
            let name = keyword.name.as_str();
            if RESERVED_KEYWORDS.contains(&name) || RESERVED_PER_FILE_KEYWORDS.contains(&name) {
                return Err(keyword_error(
                    name,
                    "is written by the FITS writer, not taken from metadata".into(),
                ));
            }
        }
        if let Some(value) = metadata.get("INSTRUME") {
            if *value != KeywordValue::Str(instrument_name(instrument).to_owned()) {
                return Err(keyword_error(
                    "INSTRUME",
                    format!("{value:?}, expected {:?}", instrument_name(instrument)),
                ));
            }
        }

        let filename = raw_filename(camcode, controller, dayobs, seqnum, &detector);
        let object_key = object_key(instrument, dayobs, obsid, &filename);
        let mut primary = HeaderCards::new();
        primary.push("SIMPLE", KeywordValue::Bool(true), "conforms to FITS standard")?;
        primary.push("BITPIX", KeywordValue::Int(PRIMARY_BITPIX), "no primary data")?;
        primary.push("NAXIS", KeywordValue::Int(0), "header only")?;
        primary.push("EXTEND", KeywordValue::Bool(true), "one image extension per segment")?;
        for keyword in &metadata.keywords {
            primary.push(&keyword.name, keyword.value.clone(), metadata_comment(&keyword.name))?;
        }
        let text = |value: &str| KeywordValue::Str(value.to_owned());
        if metadata.get("INSTRUME").is_none() {
            primary.push("INSTRUME", text(instrument_name(instrument)), "instrument")?;
        }
        primary.push("RAFTBAY", text(detector.raft().name()), "raft position")?;
        primary.push("CCDSLOT", text(detector.sensor().name()), "sensor slot in the raft")?;
        primary.push("CCD_MANU", text(detector.vendor().ccd_manu()), "CCD manufacturer")?;
        primary.push("LSST_NUM", KeywordValue::Str(lsst_num(&detector)), "CCD serial (synthetic)")?;
        primary.push("IMAGETAG", KeywordValue::Str(image_tag(obsid)), "image tag (synthetic)")?;
        primary.push("FILENAME", text(&filename), "original file name")?;
        primary.push("DETSIZE", KeywordValue::Str(detector.detsize().to_string()), "detector size")?;
        Ok(RawFile {
            detector,
            primary,
            obsid: obsid.to_owned(),
            dayobs: dayobs.to_owned(),
            filename,
            object_key,
        })
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// OBSID.
    pub fn obsid(&self) -> &str {
        &self.obsid
    }

    /// DAYOBS, `YYYYMMDD`.
    pub fn dayobs(&self) -> &str {
        &self.dayobs
    }

    /// FILENAME, e.g. `MC_O_20250415_000060_R22_S11.fits`.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The object key, `raw/{instrument}/{dayobs}/{obsid}/{filename}`.
    pub fn object_key(&self) -> &str {
        &self.object_key
    }

    /// The primary header's cards before INCOMPL, CHECKSUM and DATASUM.
    pub fn primary_cards(&self) -> &[Card] {
        self.primary.cards()
    }

    /// The file's exact size in bytes when the segments at `missing` (extension-order indices)
    /// are missing (`&[]` for a complete file): known before writing, e.g. for a Content-Length.
    pub fn size_bytes(&self, missing: &[usize]) -> Result<u64, FitsError> {
        let primary = self.primary_header(missing)?.finished_len();
        let extensions: usize = self
            .detector
            .segments()
            .map(|segment| {
                Ok(extension_header(&self.detector, &segment, missing.contains(&segment.index()))?
                    .finished_len())
            })
            .sum::<Result<usize, FitsError>>()?;
        Ok((primary + extensions + self.detector.segment_count() * SEGMENT_DATA_UNIT_BYTES) as u64)
    }

    fn primary_header(&self, missing: &[usize]) -> Result<HeaderCards, FitsError> {
        let mut header = self.primary.clone();
        if !missing.is_empty() {
            header.push("INCOMPL", KeywordValue::Bool(true), "segments missing, written as zeros")?;
            let names: Vec<&str> =
                missing.iter().map(|&index| self.detector.segment(index).extname()).collect();
            let mut line = String::from("Missing segments (zero-filled):");
            for name in names {
                if line.len() + 1 + name.len() > MAX_COMMENTARY_CHARS {
                    header.push_comment(&line)?;
                    line.clear();
                    line.push_str(name);
                } else {
                    line.push(' ');
                    line.push_str(name);
                }
            }
            header.push_comment(&line)?;
        }
        Ok(header)
    }

    /// Writes the whole file to `out` in order (primary header, then each extension's header and
    /// data), pulling the pixel bytes from `source`. Nothing is written if segments are missing
    /// without [`WriteOptions::allow_incomplete`]; on any other error the output is partial and
    /// must be discarded. `out` should be buffered (or a file written in large chunks).
    pub fn write<W: Write + ?Sized, S: SegmentSource + ?Sized>(
        &self,
        out: &mut W,
        source: &mut S,
        options: &WriteOptions,
    ) -> Result<WriteSummary, FitsError> {
        let segment_count = self.detector.segment_count();
        let mut sums = Vec::with_capacity(segment_count);
        for index in 0..segment_count {
            sums.push(source.segment_sum(index)?);
        }
        let missing: Vec<usize> = (0..segment_count).filter(|&index| sums[index].is_none()).collect();
        if !missing.is_empty() && !options.allow_incomplete {
            return Err(FitsError::MissingSegments {
                detector: self.detector.to_string(),
                extnames: missing.iter().map(|&index| self.detector.segment(index).extname()).collect(),
            });
        }

        let mut summary = WriteSummary {
            bytes_written: 0,
            missing_segments: missing.clone(),
            datasums: Vec::with_capacity(segment_count + 1),
            checksums: Vec::with_capacity(segment_count + 1),
        };
        let (primary, checksum) = self.primary_header(&missing)?.finish(0)?;
        out.write_all(&primary)?;
        summary.bytes_written += primary.len() as u64;
        summary.datasums.push(0);
        summary.checksums.push(checksum);

        for segment in self.detector.segments() {
            let index = segment.index();
            let datasum = sums[index].unwrap_or(0);
            let (header, checksum) =
                extension_header(&self.detector, &segment, sums[index].is_none())?.finish(datasum)?;
            out.write_all(&header)?;
            summary.bytes_written += header.len() as u64;
            summary.datasums.push(datasum);
            summary.checksums.push(checksum);
            match sums[index] {
                Some(promised) => copy_segment(out, source, &segment, promised, options.verify_datasums)?,
                None => write_zeros(out, SEGMENT_SIZE_BYTES)?,
            }
            write_zeros(out, SEGMENT_DATA_UNIT_BYTES - SEGMENT_SIZE_BYTES)?;
            summary.bytes_written += SEGMENT_DATA_UNIT_BYTES as u64;
        }
        out.flush()?;
        Ok(summary)
    }
}

/// The header of one image extension, without CHECKSUM, DATASUM and END.
fn extension_header(detector: &Detector, segment: &Segment, missing: bool) -> Result<HeaderCards, FitsError> {
    let transform = detector_transform(segment);
    let text = |value: &str| KeywordValue::Str(value.to_owned());
    let mut header = HeaderCards::new();
    header.push("XTENSION", text("IMAGE"), "image extension")?;
    header.push("BITPIX", KeywordValue::Int(IMAGE_BITPIX), "32-bit signed integers")?;
    header.push("NAXIS", KeywordValue::Int(2), "two axes")?;
    header.push("NAXIS1", KeywordValue::Int(i64::from(SEGMENT_COLUMNS)), "columns")?;
    header.push("NAXIS2", KeywordValue::Int(i64::from(SEGMENT_ROWS)), "rows")?;
    header.push("PCOUNT", KeywordValue::Int(0), "no parameters")?;
    header.push("GCOUNT", KeywordValue::Int(1), "one group")?;
    header.push("EXTNAME", text(segment.extname()), "amplifier segment")?;
    header.push("CHANNEL", KeywordValue::Int(i64::from(segment.channel())), "readout channel")?;
    header.push("DATASEC", text(segment.datasec()), "data section")?;
    header.push("DETSEC", KeywordValue::Str(segment.detsec().to_string()), "detector section")?;
    header.push("DETSIZE", KeywordValue::Str(detector.detsize().to_string()), "detector size")?;
    header.push("DTV1", KeywordValue::Int(transform.dtv1), "detector transformation vector")?;
    header.push("DTV2", KeywordValue::Int(transform.dtv2), "detector transformation vector")?;
    header.push("DTM1_1", KeywordValue::Float(transform.dtm1_1 as f64), "detector transformation matrix")?;
    header.push("DTM2_2", KeywordValue::Float(transform.dtm2_2 as f64), "detector transformation matrix")?;
    header.push("CCDSUM", text("1 1"), "binning")?;
    if missing {
        header.push_comment("Segment missing from the exposure: data are zeros.")?;
    }
    Ok(header)
}

/// Copies one segment from `source` to `out`, checking chunk alignment, length and (optionally) sum.
fn copy_segment<W: Write + ?Sized, S: SegmentSource + ?Sized>(
    out: &mut W,
    source: &mut S,
    segment: &Segment,
    promised: u32,
    verify: bool,
) -> Result<(), FitsError> {
    let extname = segment.extname();
    let mut delivered = 0usize;
    let mut sum = 0u32;
    let mut failure: Option<FitsError> = None;
    let mut sink = |chunk: &[u8]| -> io::Result<()> {
        if !chunk.len().is_multiple_of(4) {
            failure = Some(FitsError::UnalignedChunk { extname, offset: delivered, length: chunk.len() });
            return Err(io::Error::other("unaligned chunk"));
        }
        if delivered + chunk.len() > SEGMENT_SIZE_BYTES {
            failure = Some(FitsError::SegmentLength {
                extname,
                expected: SEGMENT_SIZE_BYTES,
                found: delivered + chunk.len(),
            });
            return Err(io::Error::other("segment too long"));
        }
        if verify {
            sum = combine(sum, ones_complement_sum(chunk));
        }
        delivered += chunk.len();
        out.write_all(chunk)
    };
    let result = source.read_segment(segment.index(), &mut sink);
    if let Some(failure) = failure {
        return Err(failure);
    }
    result?;
    if delivered != SEGMENT_SIZE_BYTES {
        return Err(FitsError::SegmentLength { extname, expected: SEGMENT_SIZE_BYTES, found: delivered });
    }
    if verify && sum != promised {
        return Err(FitsError::DatasumMismatch { extname, promised, computed: sum });
    }
    Ok(())
}

fn write_zeros<W: Write + ?Sized>(out: &mut W, mut count: usize) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while count > 0 {
        let chunk = count.min(ZEROS.len());
        out.write_all(&ZEROS[..chunk])?;
        count -= chunk;
    }
    Ok(())
}

impl fmt::Display for RawFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.object_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dma_ingest::protocol::frame::InstrumentCode;
    use dma_ingest::protocol::geometry::{Focalplane, RaftId, SensorId};
    use dma_ingest::protocol::metadata::{Keyword, MetadataKind};

    fn card(keyword: &str, value: KeywordValue, comment: &str) -> String {
        let card = format_card(keyword, &value, comment).expect("card formats");
        assert_eq!(card.len(), 80);
        String::from_utf8(card.to_vec()).expect("ASCII")
    }

    fn metadata(instrument: Instrument) -> MetadataEvent {
        use KeywordValue::{Float, Int, Str};
        let camcode = instrument.camera_code();
        let text = |value: &str| Str(value.to_owned());
        let keywords = [
            ("OBSID", text(&format!("{camcode}_O_20250415_000060"))),
            ("CAMCODE", text(camcode)),
            ("INSTRUME", text(instrument_name(instrument))),
            ("CONTRLLR", text("O")),
            ("DAYOBS", text("20250415")),
            ("SEQNUM", Int(60)),
            ("IMGTYPE", text("SCIENCE")),
            ("DATE-BEG", text("2025-04-16T03:00:00.000")),
            ("DATE-END", text("2025-04-16T03:00:30.000")),
            ("MJD-BEG", Float(60781.125)),
            ("EXPTIME", Float(30.0)),
            ("FILTER", text("r_57")),
            ("RA", Float(-12.345678901234567)),
        ];
        MetadataEvent {
            kind: MetadataKind::EndReadout,
            instrument: match instrument {
                Instrument::LsstCam => InstrumentCode::LsstCam,
                Instrument::Latiss => InstrumentCode::Latiss,
            },
            exposure_id: 20250415 * 100_000 + 60,
            keywords: keywords.into_iter().map(|(name, value)| Keyword::new(name, value)).collect(),
        }
    }

    fn lsstcam(raft: &str, sensor: SensorId) -> Detector {
        let raft = RaftId::from_name(raft).expect("raft");
        *Focalplane::lsstcam().detector(raft, sensor).expect("detector")
    }

    fn latiss() -> Detector {
        Focalplane::latiss().detectors()[0]
    }

    /// A source whose pixel at (row, column) of segment `index` is a fixed function; `missing`
    /// segments report `None`; `chunk_rows` rows per chunk.
    struct PatternSource {
        missing: Vec<usize>,
        chunk_rows: usize,
        corrupt: bool,
    }

    fn pattern_rows(index: usize, first_row: usize, rows: usize) -> Vec<u8> {
        let columns = SEGMENT_COLUMNS as usize;
        let mut bytes = Vec::with_capacity(rows * columns * 4);
        for row in first_row..first_row + rows {
            for column in 0..columns {
                let value = ((index * 7919 + row * 131 + column * 17) % 262_144) as i32;
                bytes.extend_from_slice(&value.to_be_bytes());
            }
        }
        bytes
    }

    impl SegmentSource for PatternSource {
        fn segment_sum(&mut self, index: usize) -> io::Result<Option<u32>> {
            if self.missing.contains(&index) {
                return Ok(None);
            }
            let mut sum = 0;
            for first_row in (0..SEGMENT_ROWS as usize).step_by(self.chunk_rows) {
                sum = combine(sum, ones_complement_sum(&pattern_rows(index, first_row, self.chunk_rows)));
            }
            Ok(Some(sum))
        }

        fn read_segment(
            &mut self,
            index: usize,
            sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
        ) -> io::Result<()> {
            for first_row in (0..SEGMENT_ROWS as usize).step_by(self.chunk_rows) {
                let mut rows = pattern_rows(index, first_row, self.chunk_rows);
                if self.corrupt && first_row == 0 {
                    rows[3] ^= 1;
                }
                sink(&rows)?;
            }
            Ok(())
        }
    }

    fn source(missing: &[usize]) -> PatternSource {
        PatternSource { missing: missing.to_vec(), chunk_rows: 256, corrupt: false }
    }

    /// Splits a written file into HDUs (header bytes, data bytes) by parsing NAXIS cards.
    fn hdus(file: &[u8]) -> Vec<(&[u8], &[u8])> {
        let mut result = Vec::new();
        let mut offset = 0;
        while offset < file.len() {
            let mut end = offset;
            let mut data_bytes = 0usize;
            loop {
                let card = &file[end..end + CARD_BYTES];
                end += CARD_BYTES;
                let text = std::str::from_utf8(card).expect("ASCII");
                if text.starts_with("NAXIS1  =") {
                    data_bytes = 4 * text[10..30].trim().parse::<usize>().expect("NAXIS1");
                }
                if text.starts_with("NAXIS2  =") {
                    data_bytes *= text[10..30].trim().parse::<usize>().expect("NAXIS2");
                }
                if text.trim_end() == "END" {
                    break;
                }
            }
            let header_end = padded_len(end);
            let data_end = header_end + padded_len(data_bytes);
            result.push((&file[offset..header_end], &file[header_end..data_end]));
            offset = data_end;
        }
        result
    }

    fn header_value<'a>(header: &'a [u8], keyword: &str) -> Option<&'a str> {
        header.chunks_exact(CARD_BYTES).map(|card| std::str::from_utf8(card).expect("ASCII")).find_map(
            |card| (card[..8].trim_end() == keyword && &card[8..10] == "= ").then(|| card[10..].trim()),
        )
    }

    #[test]
    fn string_cards_are_quoted_padded_to_8_and_double_their_quotes() {
        assert_eq!(
            card("XTENSION", KeywordValue::Str("IMAGE".into()), ""),
            format!("{:<80}", "XTENSION= 'IMAGE   '")
        );
        assert_eq!(
            card("OBSID", KeywordValue::Str("O'Brien".into()), "who"),
            format!("{:<80}", "OBSID   = 'O''Brien'           / who")
        );
        let long = "x".repeat(68);
        assert_eq!(card("LONG", KeywordValue::Str(long.clone()), "no room"), format!("LONG    = '{long}'"));
        assert!(format_card("LONG", &KeywordValue::Str("x".repeat(69)), "").is_err());
        assert!(format_card("LONG", &KeywordValue::Str("'".repeat(35)), "").is_err());
        assert!(format_card("BAD", &KeywordValue::Str("tab\there".into()), "").is_err());
        assert!(format_card("lower", &KeywordValue::Int(1), "").is_err());
        assert!(format_card("TOOLONGKW", &KeywordValue::Int(1), "").is_err());
    }

    #[test]
    fn numbers_and_logicals_are_right_justified_to_column_30() {
        assert_eq!(&card("NAXIS1", KeywordValue::Int(576), "")[..30], "NAXIS1  =                  576");
        assert_eq!(&card("SIMPLE", KeywordValue::Bool(true), "c")[..33], "SIMPLE  =                    T / ");
        assert_eq!(&card("EXTEND", KeywordValue::Bool(false), "")[..30], "EXTEND  =                    F");
        assert_eq!(&card("EXPTIME", KeywordValue::Float(30.0), "")[..30], "EXPTIME =                 30.0");
        assert_eq!(&card("DTM1_1", KeywordValue::Float(-1.0), "")[..30], "DTM1_1  =                 -1.0");
        assert_eq!(&card("BIG", KeywordValue::Int(i64::MIN), "")[10..30], i64::MIN.to_string());
        assert!(format_card("X", &KeywordValue::Float(f64::NAN), "").is_err());
        assert!(format_card("X", &KeywordValue::Float(f64::INFINITY), "").is_err());
        // A comment is cut to fit the card.
        let with_comment = card("NAXIS", KeywordValue::Int(0), &"c".repeat(100));
        assert_eq!(with_comment.len(), 80);
        assert!(with_comment.ends_with("ccc"));
    }

    #[test]
    fn reals_use_shortest_round_trip_digits_with_point_and_upper_case_exponent() {
        let cases: [(f64, &str); 9] = [
            (30.0, "30.0"),
            (0.1, "0.1"),
            (1e-7, "1.0E-07"),
            (-2.5e-12, "-2.5E-12"),
            (1.5e300, "1.5E+300"),
            (1e16, "1.0E+16"),
            (60781.125, "60781.125"),
            (-0.0, "-0.0"),
            (123456789012345.67, "123456789012345.67"),
        ];
        for (value, expected) in cases {
            assert_eq!(format_float(value).as_deref(), Some(expected), "{value:?}");
        }
        let awkward =
            [0.000123456789012345_67, -1.2345678901234567e-5, 60_781.123_456_789_01, 1.0 / 3.0, f64::MAX];
        for value in awkward.into_iter().chain(cases.iter().map(|(value, _)| *value)) {
            let text = format_float(value).expect("finite");
            assert!(text.contains('.'), "{text}");
            assert!(text.len() <= 24, "{text}");
            assert_eq!(text.parse::<f64>().expect("parses").to_bits(), value.to_bits(), "{text}");
        }
        assert_eq!(format_float(f64::NAN), None);
    }

    #[test]
    fn commentary_cards_hold_72_characters() {
        let comment = format_commentary_card("COMMENT", "hello").expect("card");
        assert_eq!(card_text(&comment), "COMMENT hello");
        assert!(format_commentary_card("COMMENT", &"x".repeat(72)).is_ok());
        assert!(format_commentary_card("COMMENT", &"x".repeat(73)).is_err());
        assert!(format_commentary_card("OBSID", "x").is_err());
    }

    #[test]
    fn checksum_encoding_matches_astropy_vectors() {
        // From astropy.io.fits `_ValidHDU._char_encode` (no complement), astropy 8.0.
        let vectors: [(u32, &str); 5] = [
            (0, "0000000000000000"),
            (0xffff_ffff, "orrrrooooooooooo"),
            (868_229_149, "7Bf889Z87Af877Z8"),
            (0x1234_5678, "N6AGN49EN4AEN49E"),
            (1, "0000100000000000"),
        ];
        for (value, expected) in vectors {
            assert_eq!(std::str::from_utf8(&encode_checksum(value)).expect("ASCII"), expected, "{value:#x}");
        }
    }

    #[test]
    fn encoding_adds_its_value_to_the_sum_of_sixteen_zeros() {
        // The value sits at byte 11 of its card (3 modulo 4), where the rotation lines it up.
        let placed = |characters: &[u8]| {
            let mut words = [0u8; 20];
            words[3..19].copy_from_slice(characters);
            ones_complement_sum(&words)
        };
        let zeros = placed(CHECKSUM_PLACEHOLDER.as_bytes());
        for value in [0u32, 1, 2, 0x7fff_ffff, 0xdead_beef, 0xffff_fffe, 0x0102_0304] {
            let encoded = encode_checksum(value);
            assert!(encoded.iter().all(|byte| byte.is_ascii_alphanumeric()), "{encoded:?}");
            // Replacing the zeros by the encoding adds `value` to the sum.
            assert_eq!(placed(&encoded), combine(zeros, value), "{value:#x}");
        }
    }

    #[test]
    fn ones_complement_sum_carries_around_and_combines_over_chunks() {
        assert_eq!(ones_complement_sum(&[]), 0);
        assert_eq!(ones_complement_sum(&[0; 4096]), 0);
        assert_eq!(ones_complement_sum(&[0, 0, 0, 1, 0, 0, 0, 2]), 3);
        assert_eq!(ones_complement_sum(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]), 1);
        assert_eq!(combine(0xffff_ffff, 0xffff_ffff), 0xffff_ffff);
        assert_eq!(combine(0x8000_0000, 0x8000_0001), 2);
        let bytes: Vec<u8> =
            (0..40_000u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let whole = ones_complement_sum(&bytes);
        for split in [0, 4, 400, 2304, 39_996, 40_000] {
            let (head, tail) = bytes.split_at(split);
            assert_eq!(combine(ones_complement_sum(head), ones_complement_sum(tail)), whole, "split {split}");
        }
    }

    #[test]
    fn finished_header_and_its_data_sum_to_negative_zero() {
        let data = pattern_rows(3, 0, 5);
        let datasum = ones_complement_sum(&data);
        let mut header = HeaderCards::new();
        header.push("XTENSION", KeywordValue::Str("IMAGE".into()), "").expect("card");
        let (bytes, checksum) = header.finish(datasum).expect("header");
        assert_eq!(bytes.len(), BLOCK_BYTES);
        assert_eq!(combine(ones_complement_sum(&bytes), datasum), 0xffff_ffff);
        assert_eq!(header_value(&bytes, "CHECKSUM"), Some(format!("'{checksum}'   / HDU checksum").as_str()));
        assert_eq!(
            header_value(&bytes, "DATASUM").map(|v| v.split('\'').nth(1)),
            Some(Some(&*datasum.to_string()))
        );
        let end = bytes
            .chunks_exact(CARD_BYTES)
            .position(|card| card_text(card.try_into().expect("card")) == "END");
        assert_eq!(end, Some(3));
    }

    #[test]
    fn detector_transform_maps_datasec_corners_onto_detsec_corners() {
        let itl = lsstcam("R01", SensorId::science(0, 0));
        let e2v = lsstcam("R22", SensorId::science(1, 1));
        let find = |detector: &Detector, extname: &str| {
            detector.segments().find(|segment| segment.extname() == extname).expect("segment")
        };
        let itl10 = detector_transform(&find(&itl, "Segment10"));
        assert_eq!(itl10, DetectorTransform { dtv1: 513, dtv2: 0, dtm1_1: -1, dtm2_2: 1 });
        let itl00 = detector_transform(&find(&itl, "Segment00"));
        assert_eq!(itl00, DetectorTransform { dtv1: 513, dtv2: 4001, dtm1_1: -1, dtm2_2: -1 });
        let e2v00 = detector_transform(&find(&e2v, "Segment00"));
        assert_eq!(e2v00, DetectorTransform { dtv1: -10, dtv2: 4005, dtm1_1: 1, dtm2_2: -1 });
        let wavefront = lsstcam("R00", SensorId::wavefront_half(0));
        for detector in [itl, e2v, wavefront, latiss()] {
            for segment in detector.segments() {
                let transform = detector_transform(&segment);
                let (datasec, detsec) = (segment.layout().datasec(), segment.detsec());
                let x = |image: u32| transform.dtm1_1 * i64::from(image) + transform.dtv1;
                let y = |image: u32| transform.dtm2_2 * i64::from(image) + transform.dtv2;
                assert_eq!(x(datasec.x_first), i64::from(detsec.x_first), "{detector} {}", segment.extname());
                assert_eq!(x(datasec.x_last), i64::from(detsec.x_last), "{detector} {}", segment.extname());
                assert_eq!(y(datasec.y_first), i64::from(detsec.y_first), "{detector} {}", segment.extname());
                assert_eq!(y(datasec.y_last), i64::from(detsec.y_last), "{detector} {}", segment.extname());
            }
        }
    }

    #[test]
    fn file_names_and_object_keys_follow_the_raw_convention() {
        let e2v = lsstcam("R22", SensorId::science(1, 1));
        let file = RawFile::new(e2v, &metadata(Instrument::LsstCam)).expect("valid");
        assert_eq!(file.filename(), "MC_O_20250415_000060_R22_S11.fits");
        assert_eq!(
            file.object_key(),
            "raw/LSSTCam/20250415/MC_O_20250415_000060/MC_O_20250415_000060_R22_S11.fits"
        );
        assert_eq!(file.obsid(), "MC_O_20250415_000060");
        let at = RawFile::new(latiss(), &metadata(Instrument::Latiss)).expect("valid");
        assert_eq!(at.filename(), "AT_O_20250415_000060_R00_S00.fits");
        assert_eq!(
            at.object_key(),
            "raw/LATISS/20250415/AT_O_20250415_000060/AT_O_20250415_000060_R00_S00.fits"
        );
        assert_eq!(lsst_num(&e2v), "E2V-CCD250-2211");
        assert_eq!(lsst_num(&lsstcam("R44", SensorId::guider(1))), "ITL-3800C-4431");
        assert_eq!(lsst_num(&latiss()), "ITL-3800C-0000");
        assert_eq!(image_tag("MC_O_20250415_000060").len(), 16);
        assert_eq!(image_tag("MC_O_20250415_000060"), image_tag("MC_O_20250415_000060"));
        assert_ne!(image_tag("MC_O_20250415_000060"), image_tag("MC_O_20250415_000061"));
    }

    #[test]
    fn primary_header_keeps_metadata_order_then_per_file_keywords() {
        let detector = lsstcam("R22", SensorId::science(1, 1));
        let file = RawFile::new(detector, &metadata(Instrument::LsstCam)).expect("valid");
        let names: Vec<&str> =
            file.primary_cards().iter().map(|card| card_text(card)[..8].trim_end()).collect();
        assert_eq!(
            names,
            [
                "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "OBSID", "CAMCODE", "INSTRUME", "CONTRLLR", "DAYOBS",
                "SEQNUM", "IMGTYPE", "DATE-BEG", "DATE-END", "MJD-BEG", "EXPTIME", "FILTER", "RA", "RAFTBAY",
                "CCDSLOT", "CCD_MANU", "LSST_NUM", "IMAGETAG", "FILENAME", "DETSIZE",
            ]
        );
        let ra = card_text(&file.primary_cards()[16]).to_owned();
        assert!(ra.starts_with("RA      =  -12.345678901234567 / "), "{ra}");
    }

    #[test]
    fn metadata_that_conflicts_with_the_detector_or_the_writer_is_refused() {
        let detector = lsstcam("R22", SensorId::science(1, 1));
        assert!(matches!(
            RawFile::new(detector, &metadata(Instrument::Latiss)),
            Err(FitsError::MetadataKeyword { keyword, .. }) if keyword == "INSTRUME"
        ));
        for (name, value) in [
            ("NAXIS", KeywordValue::Int(1)),
            ("CHECKSUM", KeywordValue::Str("x".into())),
            ("FILENAME", KeywordValue::Str("x".into())),
            ("DETSEC", KeywordValue::Str("x".into())),
        ] {
            let mut event = metadata(Instrument::LsstCam);
            event.keywords.push(Keyword::new(name, value));
            let error = RawFile::new(detector, &event).expect_err("reserved keyword");
            assert!(error.to_string().contains(name), "{error}");
        }
        let mut wrong_instrume = metadata(Instrument::LsstCam);
        wrong_instrume.keywords[2].value = KeywordValue::Str("LATISS".into());
        assert!(RawFile::new(detector, &wrong_instrume).is_err());
        let mut wrong_obsid = metadata(Instrument::LsstCam);
        wrong_obsid.keywords[0].value = KeywordValue::Str("MC_O_20250415_000061".into());
        assert!(RawFile::new(detector, &wrong_obsid).is_err());
        let mut no_controller = metadata(Instrument::LsstCam);
        no_controller.keywords.retain(|keyword| keyword.name != "CONTRLLR");
        assert!(RawFile::new(detector, &no_controller).is_err());
    }

    #[test]
    fn written_file_has_the_planned_size_and_every_hdu_sums_to_negative_zero() {
        let detector = lsstcam("R00", SensorId::wavefront_half(1));
        let file = RawFile::new(detector, &metadata(Instrument::LsstCam)).expect("valid");
        let mut out = Vec::new();
        let summary = file.write(&mut out, &mut source(&[]), &WriteOptions::default()).expect("writes");
        assert_eq!(summary.bytes_written, out.len() as u64);
        assert_eq!(file.size_bytes(&[]).expect("size"), out.len() as u64);
        assert_eq!(out.len() % BLOCK_BYTES, 0);
        let hdus = hdus(&out);
        assert_eq!(hdus.len(), 9);
        assert_eq!(summary.checksums.len(), 9);
        for (position, (header, data)) in hdus.iter().enumerate() {
            assert_eq!(
                combine(ones_complement_sum(header), ones_complement_sum(data)),
                0xffff_ffff,
                "HDU {position}"
            );
            assert_eq!(ones_complement_sum(data), summary.datasums[position]);
        }
        assert_eq!(header_value(hdus[1].0, "EXTNAME"), Some("'Segment10'          / amplifier segment"));
        assert_eq!(&hdus[2].1[..SEGMENT_SIZE_BYTES], &pattern_rows(1, 0, SEGMENT_ROWS as usize)[..]);
        assert!(hdus[2].1[SEGMENT_SIZE_BYTES..].iter().all(|&byte| byte == 0));
        assert_eq!(header_value(hdus[0].0, "INCOMPL"), None);
    }

    #[test]
    fn missing_segments_fail_unless_allowed_then_are_zeros_and_flagged() {
        let detector = lsstcam("R00", SensorId::wavefront_half(0));
        let file = RawFile::new(detector, &metadata(Instrument::LsstCam)).expect("valid");
        let mut out = Vec::new();
        let error =
            file.write(&mut out, &mut source(&[2, 7]), &WriteOptions::default()).expect_err("missing");
        assert!(error.to_string().contains("Segment12, Segment17"), "{error}");
        assert!(out.is_empty());

        let options = WriteOptions { allow_incomplete: true, ..WriteOptions::default() };
        let summary = file.write(&mut out, &mut source(&[2, 7]), &options).expect("writes");
        assert_eq!(summary.missing_segments, [2, 7]);
        assert_eq!(file.size_bytes(&[2, 7]).expect("size"), out.len() as u64);
        let hdus = hdus(&out);
        assert_eq!(header_value(hdus[0].0, "INCOMPL"), Some("T / segments missing, written as zeros"));
        let primary_text = String::from_utf8_lossy(hdus[0].0).into_owned();
        assert!(
            primary_text.contains("COMMENT Missing segments (zero-filled): Segment12 Segment17"),
            "{primary_text}"
        );
        for (position, (header, data)) in hdus.iter().enumerate() {
            assert_eq!(
                combine(ones_complement_sum(header), ones_complement_sum(data)),
                0xffff_ffff,
                "HDU {position}"
            );
        }
        assert!(hdus[3].1.iter().all(|&byte| byte == 0));
        assert!(String::from_utf8_lossy(hdus[3].0).contains("COMMENT Segment missing"));
    }

    #[test]
    fn a_source_that_breaks_its_promises_is_caught() {
        let detector = lsstcam("R00", SensorId::wavefront_half(0));
        let file = RawFile::new(detector, &metadata(Instrument::LsstCam)).expect("valid");
        let mut corrupt = PatternSource { missing: vec![], chunk_rows: 512, corrupt: true };
        let error =
            file.write(&mut io::sink(), &mut corrupt, &WriteOptions::default()).expect_err("mismatch");
        assert!(matches!(error, FitsError::DatasumMismatch { extname: "Segment10", .. }), "{error}");
        let mut short = PatternSource { missing: vec![], chunk_rows: 1000, corrupt: false };
        let error = file.write(&mut io::sink(), &mut short, &WriteOptions::default()).expect_err("too long");
        assert!(matches!(error, FitsError::SegmentLength { .. }), "{error}");

        struct Unaligned;
        impl SegmentSource for Unaligned {
            fn segment_sum(&mut self, _index: usize) -> io::Result<Option<u32>> {
                Ok(Some(0))
            }
            fn read_segment(
                &mut self,
                _: usize,
                sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
            ) -> io::Result<()> {
                sink(&[0; 6])
            }
        }
        let error =
            file.write(&mut io::sink(), &mut Unaligned, &WriteOptions::default()).expect_err("unaligned");
        assert!(matches!(error, FitsError::UnalignedChunk { length: 6, .. }), "{error}");
    }
}
