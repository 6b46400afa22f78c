//! The metadata channel: the Header Service's per-exposure events on the wire, one definition for
//! the sender (`hw-sim`) and the receiver (the ingest, next issue).
//!
//! A message is a 32-byte little-endian [`MetadataHeader`] followed by a body of exactly
//! `body_length` bytes: UTF-8 JSON, an array of `[KEYWORD, value]` pairs in FITS primary-header
//! order. A value is a JSON string, integer, float or bool; floats are always written with a
//! decimal point or an exponent (`30.0`, `1e-7`), so an integer-valued float reads back as a float.
//! [`encode_message`] writes one, [`decode_message`] reads one from a byte slice and
//! [`MetadataReader`] reads them one at a time from any [`Read`] (a socket, a replay file).
//!
//! Both sides run the same checks ([`MetadataEvent::validate`]), so the sender cannot write what
//! the receiver refuses: keyword names are FITS keywords (1 to 8 of `A-Z 0-9 - _`), none twice;
//! strings are printable ASCII that fits one 80-column card; floats are finite; the keywords
//! [`REQUIRED_KEYWORDS`] (and `DATE-END` for `EndReadout`) are present with the right types; and
//! the header's exposure id is `DAYOBS x 100000 + SEQNUM`. The byte diagram and the rules are in
//! `docs/daq-frame-protocol.md`, "Metadata channel".

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};

use serde_json::{Number, Value};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::frame::InstrumentCode;
use super::read_until_full_or_end;

/// `"HSEV"` (Header Service EVent), bytes 0..4 of every message.
pub const METADATA_MAGIC: [u8; 4] = *b"HSEV";
/// The metadata protocol version this code writes and the newest it reads.
pub const METADATA_VERSION: u16 = 1;
/// Size of [`MetadataHeader`]; the body starts at this offset.
pub const METADATA_HEADER_BYTES: usize = 32;
/// Largest body accepted (64 KiB): a primary header is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest string value: an 80-column card minus `KEYWORD = ` (10 columns) and the two quotes;
/// a quote inside the value counts twice (FITS doubles it).
pub const MAX_STRING_VALUE_CHARS: usize = 68;
/// The largest SEQNUM an exposure id (DAYOBS x 100000 + SEQNUM) can hold.
pub const MAX_EXPOSURE_SEQNUM: i64 = 99_999;
/// Keywords every event carries.
pub const REQUIRED_KEYWORDS: [&str; 6] = ["OBSID", "DAYOBS", "SEQNUM", "IMGTYPE", "DATE-BEG", "EXPTIME"];
/// Keywords an `EndReadout` carries in addition to [`REQUIRED_KEYWORDS`].
pub const REQUIRED_END_READOUT_KEYWORDS: [&str; 1] = ["DATE-END"];

/// Which Header Service event a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MetadataKind {
    /// Published at shutter open: what is known then (no `DATE-END`).
    StartIntegration = 1,
    /// Published at the end of readout: the complete primary-header metadata.
    EndReadout = 2,
}

impl MetadataKind {
    /// Decodes the wire value.
    pub fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::StartIntegration),
            2 => Some(Self::EndReadout),
            _ => None,
        }
    }

    /// `"StartIntegration"` or `"EndReadout"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::StartIntegration => "StartIntegration",
            Self::EndReadout => "EndReadout",
        }
    }
}

impl fmt::Display for MetadataKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The fixed header at byte 0 of a message.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct MetadataHeader {
    /// [`METADATA_MAGIC`].
    pub magic: [u8; 4],
    /// [`METADATA_VERSION`].
    pub version: U16,
    /// [`MetadataKind`].
    pub kind: U16,
    /// [`InstrumentCode`], the same byte as in a frame header.
    pub instrument: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// DAYOBS (YYYYMMDD) x 100000 + SEQNUM, as in the frames of the exposure.
    pub exposure_id: U64,
    /// Bytes of the JSON body that follows, at most [`MAX_BODY_BYTES`].
    pub body_length: U32,
    /// CRC32 (IEEE, `crc32fast`) of the body.
    pub body_crc32: U32,
    /// CRC32 of header bytes 0..28.
    pub header_crc32: U32,
}

const _: () = assert!(core::mem::size_of::<MetadataHeader>() == METADATA_HEADER_BYTES);
const _: () = assert!(core::mem::offset_of!(MetadataHeader, exposure_id) == 12);
const _: () = assert!(core::mem::offset_of!(MetadataHeader, body_length) == 20);
const _: () = assert!(core::mem::offset_of!(MetadataHeader, header_crc32) == 28);

/// One header keyword's value.
#[derive(Debug, Clone, PartialEq)]
pub enum KeywordValue {
    /// A FITS string: printable ASCII, at most [`MAX_STRING_VALUE_CHARS`] once quotes are doubled.
    Str(String),
    /// A FITS integer.
    Int(i64),
    /// A FITS real; finite.
    Float(f64),
    /// A FITS logical.
    Bool(bool),
}

impl KeywordValue {
    /// `"string"`, `"integer"`, `"float"` or `"bool"`.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Str(_) => "string",
            Self::Int(_) => "integer",
            Self::Float(_) => "float",
            Self::Bool(_) => "bool",
        }
    }
}

/// One `[KEYWORD, value]` pair of the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyword {
    /// The FITS keyword, e.g. `DATE-BEG`.
    pub name: String,
    /// Its value.
    pub value: KeywordValue,
}

impl Keyword {
    /// A keyword named `name` (any `Into<String>`) holding `value`.
    pub fn new(name: impl Into<String>, value: KeywordValue) -> Self {
        Self { name: name.into(), value }
    }
}

/// One Header Service event: what a message carries.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataEvent {
    /// Which event.
    pub kind: MetadataKind,
    /// Which camera.
    pub instrument: InstrumentCode,
    /// DAYOBS x 100000 + SEQNUM.
    pub exposure_id: u64,
    /// The primary-header keywords, in FITS header order.
    pub keywords: Vec<Keyword>,
}

/// Why bytes are not a valid metadata message (or an event cannot be encoded). Every variant
/// names the value found and, for body errors, the keyword or its index in the body.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Fewer bytes than the header, or than the header says the message holds.
    #[error("metadata message truncated: {needed} bytes needed, {found} available")]
    Truncated {
        /// Bytes the message needs (header, or header plus body).
        needed: usize,
        /// Bytes available.
        found: usize,
    },
    /// Bytes after the message in a slice that should hold exactly one.
    #[error("{extra} bytes after the {message_bytes}-byte metadata message")]
    TrailingBytes {
        /// Length of the message.
        message_bytes: usize,
        /// Bytes left over.
        extra: usize,
    },
    /// Not a metadata header.
    #[error("bad metadata magic {found:02x?} (expected \"HSEV\")")]
    BadMagic {
        /// Bytes 0..4 found.
        found: [u8; 4],
    },
    /// The header is corrupt.
    #[error("metadata header CRC32 mismatch (header says {stored:#010x}, computed {computed:#010x})")]
    HeaderCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
    /// A newer protocol version.
    #[error("metadata protocol version {found} is not supported (newest known: {METADATA_VERSION})")]
    UnsupportedVersion {
        /// Version found.
        found: u16,
    },
    /// An unknown event kind.
    #[error("unknown metadata event kind {found} (1 StartIntegration, 2 EndReadout)")]
    UnknownKind {
        /// Kind found.
        found: u16,
    },
    /// An unknown instrument code.
    #[error("unknown instrument code {found} in metadata header")]
    UnknownInstrument {
        /// Code found.
        found: u8,
    },
    /// Reserved header bytes that are not zero.
    #[error("metadata header reserved bytes 9..12 are {found:02x?}, not zero")]
    NonZeroReserved {
        /// Bytes found.
        found: [u8; 3],
    },
    /// The body is longer than [`MAX_BODY_BYTES`].
    #[error("metadata body of {found} bytes exceeds the {MAX_BODY_BYTES}-byte maximum")]
    BodyTooLong {
        /// Length in the header (or of the body to encode).
        found: usize,
    },
    /// The body is corrupt.
    #[error("metadata body CRC32 mismatch (header says {stored:#010x}, computed {computed:#010x})")]
    BodyCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
    /// The body is not UTF-8.
    #[error("metadata body is not UTF-8 (valid up to byte {valid_up_to} of the body)")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The body is not a JSON array of `[string, value]` pairs.
    #[error("metadata body is not a JSON array of [KEYWORD, value] pairs: {source}")]
    InvalidJson {
        /// serde_json's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A value that is not a string, integer, float or bool (or a float that is not finite, or an
    /// integer beyond `i64`).
    #[error("keyword {name} (pair {index}) has an unsupported value {found}")]
    UnsupportedValue {
        /// The keyword.
        name: String,
        /// Its index in the body.
        index: usize,
        /// The value, as JSON (or Rust) text.
        found: String,
    },
    /// A name that is not a FITS keyword.
    #[error("keyword name {name:?} (pair {index}) is not 1 to 8 characters of A-Z 0-9 - _")]
    InvalidKeywordName {
        /// The name found.
        name: String,
        /// Its index in the body.
        index: usize,
    },
    /// A keyword given twice.
    #[error("keyword {name} appears twice (pairs {first_index} and {index})")]
    DuplicateKeyword {
        /// The keyword.
        name: String,
        /// First occurrence.
        first_index: usize,
        /// Second occurrence.
        index: usize,
    },
    /// A string value with a character FITS cannot hold.
    #[error("keyword {name} (pair {index}): string has non-printable or non-ASCII character {character:?} at char {position}")]
    NonPrintableString {
        /// The keyword.
        name: String,
        /// Its index in the body.
        index: usize,
        /// The character.
        character: char,
        /// Its position (in characters) in the string.
        position: usize,
    },
    /// A string value too long for one card.
    #[error("keyword {name} (pair {index}): string is {length} characters once quotes are doubled, more than {MAX_STRING_VALUE_CHARS}")]
    StringTooLong {
        /// The keyword.
        name: String,
        /// Its index in the body.
        index: usize,
        /// Length with quotes doubled.
        length: usize,
    },
    /// A required keyword is absent.
    #[error("{kind} for exposure {exposure_id} lacks required keyword {name}")]
    MissingKeyword {
        /// The event kind.
        kind: MetadataKind,
        /// Exposure id in the header.
        exposure_id: u64,
        /// The keyword.
        name: &'static str,
    },
    /// A required keyword with a value of the wrong type or form.
    #[error("keyword {name} must be {expected}, found {found:?}")]
    WrongKeywordValue {
        /// The keyword.
        name: &'static str,
        /// What it must be.
        expected: &'static str,
        /// The value found.
        found: KeywordValue,
    },
    /// The header's exposure id disagrees with DAYOBS and SEQNUM.
    #[error("exposure id {exposure_id} in the header is not DAYOBS {dayobs} x 100000 + SEQNUM {seqnum} = {expected}")]
    ExposureIdMismatch {
        /// Exposure id in the header.
        exposure_id: u64,
        /// DAYOBS of the body.
        dayobs: u32,
        /// SEQNUM of the body.
        seqnum: i64,
        /// What the exposure id should be.
        expected: u64,
    },
}

impl MetadataEvent {
    /// The value of keyword `name`, if present.
    pub fn get(&self, name: &str) -> Option<&KeywordValue> {
        self.keywords.iter().find(|keyword| keyword.name == name).map(|keyword| &keyword.value)
    }

    /// The string value of keyword `name`, if present and a string.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(KeywordValue::Str(value)) => Some(value),
            _ => None,
        }
    }

    /// The integer value of keyword `name`, if present and an integer.
    pub fn get_int(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(KeywordValue::Int(value)) => Some(*value),
            _ => None,
        }
    }

    /// Checks the keywords (names, duplicates, values, required keywords with their types) and
    /// that the exposure id is DAYOBS x 100000 + SEQNUM. Run by [`encode_message`] and
    /// [`decode_message`] alike.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(self.keywords.len());
        for (index, keyword) in self.keywords.iter().enumerate() {
            check_keyword(keyword, index)?;
            if let Some(&first_index) = seen.get(keyword.name.as_str()) {
                return Err(MetadataError::DuplicateKeyword {
                    name: keyword.name.clone(),
                    first_index,
                    index,
                });
            }
            seen.insert(&keyword.name, index);
        }
        let required = REQUIRED_KEYWORDS.iter().chain(match self.kind {
            MetadataKind::StartIntegration => [].iter(),
            MetadataKind::EndReadout => REQUIRED_END_READOUT_KEYWORDS.iter(),
        });
        for &name in required {
            let value = self.get(name).ok_or(MetadataError::MissingKeyword {
                kind: self.kind,
                exposure_id: self.exposure_id,
                name,
            })?;
            check_required_type(name, value)?;
        }
        // Both were checked above: DAYOBS is 8 digits, SEQNUM in 1..=MAX_EXPOSURE_SEQNUM.
        let dayobs = self.get_str("DAYOBS").and_then(parse_dayobs).expect("DAYOBS checked");
        let seqnum = self.get_int("SEQNUM").expect("SEQNUM checked");
        let expected = u64::from(dayobs) * 100_000 + seqnum as u64;
        if expected != self.exposure_id {
            return Err(MetadataError::ExposureIdMismatch {
                exposure_id: self.exposure_id,
                dayobs,
                seqnum,
                expected,
            });
        }
        Ok(())
    }
}

fn parse_dayobs(text: &str) -> Option<u32> {
    if text.len() == 8 && text.bytes().all(|byte| byte.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// Is `name` a FITS keyword: 1 to 8 characters of `A-Z 0-9 - _`?
pub fn is_valid_keyword_name(name: &str) -> bool {
    (1..=8).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_')
}

fn check_keyword(keyword: &Keyword, index: usize) -> Result<(), MetadataError> {
    let name = &keyword.name;
    if !is_valid_keyword_name(name) {
        return Err(MetadataError::InvalidKeywordName { name: name.clone(), index });
    }
    match &keyword.value {
        KeywordValue::Str(text) => {
            if let Some((position, character)) =
                text.chars().enumerate().find(|(_, character)| !(' '..='~').contains(character))
            {
                return Err(MetadataError::NonPrintableString {
                    name: name.clone(),
                    index,
                    character,
                    position,
                });
            }
            let length = text.len() + text.bytes().filter(|&byte| byte == b'\'').count();
            if length > MAX_STRING_VALUE_CHARS {
                return Err(MetadataError::StringTooLong { name: name.clone(), index, length });
            }
        }
        KeywordValue::Float(value) if !value.is_finite() => {
            return Err(MetadataError::UnsupportedValue {
                name: name.clone(),
                index,
                found: value.to_string(),
            });
        }
        KeywordValue::Float(_) | KeywordValue::Int(_) | KeywordValue::Bool(_) => {}
    }
    Ok(())
}

fn check_required_type(name: &'static str, value: &KeywordValue) -> Result<(), MetadataError> {
    let (ok, expected) = match name {
        "SEQNUM" => (
            matches!(value, KeywordValue::Int(seqnum) if (1..=MAX_EXPOSURE_SEQNUM).contains(seqnum)),
            "an integer in 1..=99999",
        ),
        "EXPTIME" => (matches!(value, KeywordValue::Float(_) | KeywordValue::Int(_)), "a number"),
        "DAYOBS" => (
            matches!(value, KeywordValue::Str(text) if parse_dayobs(text).is_some()),
            "a string of 8 digits YYYYMMDD",
        ),
        _ => (matches!(value, KeywordValue::Str(_)), "a string"),
    };
    if ok {
        Ok(())
    } else {
        Err(MetadataError::WrongKeywordValue { name, expected, found: value.clone() })
    }
}

impl MetadataHeader {
    fn compute_header_crc(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[..28])
    }

    /// Parses and checks the header at the start of `bytes` (at least [`METADATA_HEADER_BYTES`]):
    /// magic, header CRC, version, kind, instrument, reserved bytes, body length.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetadataError> {
        let truncated = MetadataError::Truncated { needed: METADATA_HEADER_BYTES, found: bytes.len() };
        let (header, _) = Self::read_from_prefix(bytes).map_err(|_| truncated)?;
        if header.magic != METADATA_MAGIC {
            return Err(MetadataError::BadMagic { found: header.magic });
        }
        let computed = header.compute_header_crc();
        if header.header_crc32.get() != computed {
            return Err(MetadataError::HeaderCrc { stored: header.header_crc32.get(), computed });
        }
        if header.version.get() != METADATA_VERSION {
            return Err(MetadataError::UnsupportedVersion { found: header.version.get() });
        }
        if MetadataKind::from_u16(header.kind.get()).is_none() {
            return Err(MetadataError::UnknownKind { found: header.kind.get() });
        }
        if InstrumentCode::from_u8(header.instrument).is_none() {
            return Err(MetadataError::UnknownInstrument { found: header.instrument });
        }
        if header.reserved != [0; 3] {
            return Err(MetadataError::NonZeroReserved { found: header.reserved });
        }
        if header.body_length() > MAX_BODY_BYTES {
            return Err(MetadataError::BodyTooLong { found: header.body_length() });
        }
        Ok(header)
    }

    /// Body bytes following the header.
    pub fn body_length(&self) -> usize {
        self.body_length.get() as usize
    }

    /// Header plus body.
    pub fn message_length(&self) -> usize {
        METADATA_HEADER_BYTES + self.body_length()
    }

    /// Checks the body's CRC, then decodes and validates it into the event.
    pub fn decode_body(&self, body: &[u8]) -> Result<MetadataEvent, MetadataError> {
        if body.len() != self.body_length() {
            return Err(MetadataError::Truncated {
                needed: self.message_length(),
                found: METADATA_HEADER_BYTES + body.len(),
            });
        }
        let computed = crc32fast::hash(body);
        if computed != self.body_crc32.get() {
            return Err(MetadataError::BodyCrc { stored: self.body_crc32.get(), computed });
        }
        let text = std::str::from_utf8(body)
            .map_err(|error| MetadataError::InvalidUtf8 { valid_up_to: error.valid_up_to() })?;
        let pairs: Vec<(String, Value)> =
            serde_json::from_str(text).map_err(|source| MetadataError::InvalidJson { source })?;
        let keywords = pairs
            .into_iter()
            .enumerate()
            .map(|(index, (name, value))| {
                let value = match value {
                    Value::String(text) => KeywordValue::Str(text),
                    Value::Bool(flag) => KeywordValue::Bool(flag),
                    Value::Number(number) if number.is_f64() => {
                        KeywordValue::Float(number.as_f64().expect("is_f64"))
                    }
                    Value::Number(number) if number.is_i64() => {
                        KeywordValue::Int(number.as_i64().expect("is_i64"))
                    }
                    other => {
                        return Err(MetadataError::UnsupportedValue { name, index, found: other.to_string() })
                    }
                };
                Ok(Keyword { name, value })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let event = MetadataEvent {
            kind: MetadataKind::from_u16(self.kind.get()).expect("checked by parse"),
            instrument: InstrumentCode::from_u8(self.instrument).expect("checked by parse"),
            exposure_id: self.exposure_id.get(),
            keywords,
        };
        event.validate()?;
        Ok(event)
    }
}

/// The JSON body of `event` (no validation).
fn encode_body(event: &MetadataEvent) -> Vec<u8> {
    let pairs: Vec<Value> = event
        .keywords
        .iter()
        .map(|keyword| {
            let value = match &keyword.value {
                KeywordValue::Str(text) => Value::String(text.clone()),
                KeywordValue::Int(number) => Value::Number((*number).into()),
                // Non-finite floats are refused by validate(); serde_json writes finite floats
                // with a decimal point or an exponent.
                KeywordValue::Float(number) => Number::from_f64(*number).map_or(Value::Null, Value::Number),
                KeywordValue::Bool(flag) => Value::Bool(*flag),
            };
            Value::Array(vec![Value::String(keyword.name.clone()), value])
        })
        .collect();
    serde_json::to_vec(&Value::Array(pairs)).expect("a Value always serialises")
}

/// Validates `event` and encodes it as one message (header then body), appended to `out`.
pub fn encode_message_into(event: &MetadataEvent, out: &mut Vec<u8>) -> Result<(), MetadataError> {
    event.validate()?;
    let body = encode_body(event);
    if body.len() > MAX_BODY_BYTES {
        return Err(MetadataError::BodyTooLong { found: body.len() });
    }
    let mut header = MetadataHeader {
        magic: METADATA_MAGIC,
        version: METADATA_VERSION.into(),
        kind: (event.kind as u16).into(),
        instrument: event.instrument as u8,
        reserved: [0; 3],
        exposure_id: event.exposure_id.into(),
        body_length: (body.len() as u32).into(),
        body_crc32: crc32fast::hash(&body).into(),
        header_crc32: 0.into(),
    };
    header.header_crc32 = header.compute_header_crc().into();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Validates `event` and encodes it as one message.
pub fn encode_message(event: &MetadataEvent) -> Result<Vec<u8>, MetadataError> {
    let mut out = Vec::with_capacity(1024);
    encode_message_into(event, &mut out)?;
    Ok(out)
}

/// Decodes exactly one message (header, body CRC, JSON, validation) from `bytes`.
pub fn decode_message(bytes: &[u8]) -> Result<MetadataEvent, MetadataError> {
    let header = MetadataHeader::parse(bytes)?;
    let length = header.message_length();
    if bytes.len() < length {
        return Err(MetadataError::Truncated { needed: length, found: bytes.len() });
    }
    if bytes.len() > length {
        return Err(MetadataError::TrailingBytes { message_bytes: length, extra: bytes.len() - length });
    }
    header.decode_body(&bytes[METADATA_HEADER_BYTES..])
}

/// Why [`MetadataReader::read_message`] returned no event. Offsets count bytes from the start of
/// the stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadMetadataError {
    /// The stream ended inside a message.
    #[error("metadata stream ended inside the message at byte offset {message_offset_bytes} ({found_bytes} of its {expected_bytes} bytes arrived)")]
    Truncated {
        /// Where the message started.
        message_offset_bytes: u64,
        /// Bytes needed so far: the header, or the whole message once the header is parsed.
        expected_bytes: usize,
        /// Bytes of the message that arrived.
        found_bytes: usize,
    },
    /// The message is invalid.
    #[error("bad metadata message at byte offset {message_offset_bytes}: {source}")]
    Invalid {
        /// Where the message started.
        message_offset_bytes: u64,
        /// What is wrong with it.
        #[source]
        source: MetadataError,
    },
    /// Reading failed.
    #[error("read error in the metadata message at byte offset {message_offset_bytes}: {source}")]
    Io {
        /// Where the message started.
        message_offset_bytes: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An earlier call failed; the reader does not resynchronise.
    #[error("metadata reader stopped after an error in the message at byte offset {message_offset_bytes}; it does not resynchronise")]
    Stopped {
        /// Where the failed message started.
        message_offset_bytes: u64,
    },
}

/// Reads metadata messages one at a time from a stream of messages back to back.
#[derive(Debug)]
pub struct MetadataReader<R: Read> {
    inner: R,
    offset_bytes: u64,
    messages_read_total: u64,
    failed_message_offset_bytes: Option<u64>,
    body: Vec<u8>,
}

impl<R: Read> MetadataReader<R> {
    /// Reads messages from `inner`, whose first byte starts a message.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset_bytes: 0,
            messages_read_total: 0,
            failed_message_offset_bytes: None,
            body: Vec::new(),
        }
    }

    /// Bytes read so far.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }

    /// Messages read so far.
    pub fn messages_read_total(&self) -> u64 {
        self.messages_read_total
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads, checks and decodes the next message; `Ok(None)` when the stream ends cleanly at a
    /// message boundary. After an error every later call returns [`ReadMetadataError::Stopped`].
    pub fn read_message(&mut self) -> Result<Option<MetadataEvent>, ReadMetadataError> {
        if let Some(message_offset_bytes) = self.failed_message_offset_bytes {
            return Err(ReadMetadataError::Stopped { message_offset_bytes });
        }
        let message_offset_bytes = self.offset_bytes;
        let result = self.read_one(message_offset_bytes);
        match &result {
            Ok(Some(_)) => self.messages_read_total += 1,
            Ok(None) => {}
            Err(_) => self.failed_message_offset_bytes = Some(message_offset_bytes),
        }
        result
    }

    fn read_one(&mut self, message_offset_bytes: u64) -> Result<Option<MetadataEvent>, ReadMetadataError> {
        let invalid = |source| ReadMetadataError::Invalid { message_offset_bytes, source };
        let mut header_bytes = [0u8; METADATA_HEADER_BYTES];
        let found = fill(&mut self.inner, &mut header_bytes, &mut self.offset_bytes, message_offset_bytes)?;
        if found == 0 {
            return Ok(None);
        }
        if found < METADATA_HEADER_BYTES {
            return Err(ReadMetadataError::Truncated {
                message_offset_bytes,
                expected_bytes: METADATA_HEADER_BYTES,
                found_bytes: found,
            });
        }
        let header = MetadataHeader::parse(&header_bytes).map_err(invalid)?;
        self.body.resize(header.body_length(), 0);
        let found = fill(&mut self.inner, &mut self.body, &mut self.offset_bytes, message_offset_bytes)?;
        if found < header.body_length() {
            return Err(ReadMetadataError::Truncated {
                message_offset_bytes,
                expected_bytes: header.message_length(),
                found_bytes: METADATA_HEADER_BYTES + found,
            });
        }
        header.decode_body(&self.body).map(Some).map_err(invalid)
    }
}

/// [`read_until_full_or_end`], an I/O error naming the message.
fn fill(
    inner: &mut impl Read,
    buffer: &mut [u8],
    offset_bytes: &mut u64,
    message_offset_bytes: u64,
) -> Result<usize, ReadMetadataError> {
    read_until_full_or_end(inner, buffer, offset_bytes)
        .map_err(|source| ReadMetadataError::Io { message_offset_bytes, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyword(name: &str, value: KeywordValue) -> Keyword {
        Keyword::new(name, value)
    }

    fn event(kind: MetadataKind) -> MetadataEvent {
        let mut keywords = vec![
            keyword("OBSID", KeywordValue::Str("MC_O_20250415_000060".into())),
            keyword("CAMCODE", KeywordValue::Str("MC".into())),
            keyword("DAYOBS", KeywordValue::Str("20250415".into())),
            keyword("SEQNUM", KeywordValue::Int(60)),
            keyword("IMGTYPE", KeywordValue::Str("SCIENCE".into())),
            keyword("DATE-BEG", KeywordValue::Str("2025-04-16T00:00:00.000".into())),
            keyword("EXPTIME", KeywordValue::Float(30.0)),
            keyword("MJD-BEG", KeywordValue::Float(60_781.0 + 1.0 / 3.0)),
            keyword("TINY", KeywordValue::Float(1e-300)),
            keyword("HUGE", KeywordValue::Float(-1.5e300)),
            keyword("NEGINT", KeywordValue::Int(i64::MIN)),
            keyword("SHUTTER", KeywordValue::Bool(true)),
            keyword("QUOTED", KeywordValue::Str("it's".into())),
        ];
        if kind == MetadataKind::EndReadout {
            keywords.push(keyword("DATE-END", KeywordValue::Str("2025-04-16T00:00:30.000".into())));
        }
        MetadataEvent { kind, instrument: InstrumentCode::LsstCam, exposure_id: 2_025_041_500_060, keywords }
    }

    /// Re-encodes a message whose header or body was edited, with fresh CRCs.
    fn reseal(mut header: MetadataHeader, body: &[u8]) -> Vec<u8> {
        header.body_length = (body.len() as u32).into();
        header.body_crc32 = crc32fast::hash(body).into();
        header.header_crc32 = header.compute_header_crc().into();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn good_header() -> MetadataHeader {
        MetadataHeader::parse(&encode_message(&event(MetadataKind::EndReadout)).unwrap()).unwrap()
    }

    fn with_body(body: &str) -> Result<MetadataEvent, MetadataError> {
        decode_message(&reseal(good_header(), body.as_bytes()))
    }

    /// The body of the good EndReadout event as JSON text, edited by `edit`.
    fn edited_body(edit: impl FnOnce(&mut Vec<Keyword>)) -> Result<MetadataEvent, MetadataError> {
        let mut edited = event(MetadataKind::EndReadout);
        edit(&mut edited.keywords);
        decode_message(&reseal(good_header(), &encode_body(&edited)))
    }

    #[test]
    fn messages_round_trip_and_floats_stay_floats() {
        for kind in [MetadataKind::StartIntegration, MetadataKind::EndReadout] {
            let original = event(kind);
            let bytes = encode_message(&original).unwrap();
            assert_eq!(&bytes[..4], b"HSEV");
            assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), kind as u16);
            assert_eq!(
                bytes.len(),
                METADATA_HEADER_BYTES + MetadataHeader::parse(&bytes).unwrap().body_length()
            );
            let decoded = decode_message(&bytes).unwrap();
            assert_eq!(decoded, original);
            assert_eq!(decoded.get("EXPTIME"), Some(&KeywordValue::Float(30.0)));
        }
        let body = String::from_utf8(encode_body(&event(MetadataKind::StartIntegration))).unwrap();
        assert!(body.starts_with(r#"[["OBSID","MC_O_20250415_000060"],["CAMCODE","MC"]"#), "{body}");
        assert!(body.contains(r#"["EXPTIME",30.0]"#), "{body}");
    }

    #[test]
    fn a_stream_of_messages_reads_back_in_order_and_ends_cleanly() {
        let mut stream = Vec::new();
        let events = [event(MetadataKind::StartIntegration), event(MetadataKind::EndReadout)];
        for event in &events {
            encode_message_into(event, &mut stream).unwrap();
        }
        let mut reader = MetadataReader::new(stream.as_slice());
        assert_eq!(reader.read_message().unwrap().as_ref(), Some(&events[0]));
        assert_eq!(reader.read_message().unwrap().as_ref(), Some(&events[1]));
        assert!(reader.read_message().unwrap().is_none());
        assert_eq!(reader.messages_read_total(), 2);
        assert_eq!(reader.offset_bytes(), stream.len() as u64);
    }

    #[test]
    fn a_truncated_stream_and_a_bad_message_name_their_offset_and_stop_the_reader() {
        let first = encode_message(&event(MetadataKind::StartIntegration)).unwrap();
        let second = encode_message(&event(MetadataKind::EndReadout)).unwrap();
        let mut stream = [first.clone(), second.clone()].concat();
        stream.truncate(first.len() + 40);
        let mut reader = MetadataReader::new(stream.as_slice());
        reader.read_message().unwrap().unwrap();
        let error = reader.read_message().unwrap_err();
        assert!(
            matches!(error, ReadMetadataError::Truncated { message_offset_bytes, found_bytes: 40, .. }
                if message_offset_bytes == first.len() as u64),
            "{error}"
        );
        assert!(matches!(reader.read_message(), Err(ReadMetadataError::Stopped { .. })));

        let short_header = &first[..10];
        let error = MetadataReader::new(short_header).read_message().unwrap_err();
        assert!(matches!(error, ReadMetadataError::Truncated { expected_bytes: 32, found_bytes: 10, .. }));

        let mut corrupt = [first.clone(), second].concat();
        corrupt[first.len()] = b'X';
        let mut reader = MetadataReader::new(corrupt.as_slice());
        reader.read_message().unwrap().unwrap();
        let error = reader.read_message().unwrap_err();
        assert!(
            matches!(&error, ReadMetadataError::Invalid { source: MetadataError::BadMagic { .. }, .. }),
            "{error}"
        );
        assert!(error.to_string().contains(&format!("byte offset {}", first.len())), "{error}");
    }

    #[test]
    fn header_defects_are_named() {
        let good = encode_message(&event(MetadataKind::EndReadout)).unwrap();
        let body = &good[METADATA_HEADER_BYTES..];

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(
            matches!(decode_message(&bad_magic), Err(MetadataError::BadMagic { found }) if &found == b"XSEV")
        );

        let mut bad_crc = good.clone();
        bad_crc[13] ^= 1;
        assert!(matches!(decode_message(&bad_crc), Err(MetadataError::HeaderCrc { .. })));

        let mut header = good_header();
        header.version = 2.into();
        assert!(matches!(
            decode_message(&reseal(header, body)),
            Err(MetadataError::UnsupportedVersion { found: 2 })
        ));

        let mut header = good_header();
        header.kind = 3.into();
        assert!(matches!(
            decode_message(&reseal(header, body)),
            Err(MetadataError::UnknownKind { found: 3 })
        ));

        let mut header = good_header();
        header.instrument = 9;
        assert!(matches!(
            decode_message(&reseal(header, body)),
            Err(MetadataError::UnknownInstrument { found: 9 })
        ));

        let mut header = good_header();
        header.reserved = [0, 1, 0];
        assert!(matches!(decode_message(&reseal(header, body)), Err(MetadataError::NonZeroReserved { .. })));

        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        let error = decode_message(&reseal(good_header(), &huge)).unwrap_err();
        assert!(
            matches!(error, MetadataError::BodyTooLong { found } if found == MAX_BODY_BYTES + 1),
            "{error}"
        );

        assert!(matches!(
            decode_message(&good[..20]),
            Err(MetadataError::Truncated { needed: 32, found: 20 })
        ));
        let cut = good.len() - 5;
        assert!(
            matches!(decode_message(&good[..cut]), Err(MetadataError::Truncated { needed, found }) if needed == good.len() && found == cut)
        );
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(decode_message(&long), Err(MetadataError::TrailingBytes { extra: 1, .. })));

        let mut bad_body = good.clone();
        bad_body[METADATA_HEADER_BYTES + 3] ^= 1;
        assert!(matches!(decode_message(&bad_body), Err(MetadataError::BodyCrc { .. })));
    }

    #[test]
    fn body_encoding_defects_are_named() {
        let mut not_utf8 = br#"[["OBSID","#.to_vec();
        not_utf8.extend_from_slice(&[0xFF, 0xFE]);
        let error = decode_message(&reseal(good_header(), &not_utf8)).unwrap_err();
        assert!(matches!(error, MetadataError::InvalidUtf8 { valid_up_to: 10 }), "{error}");

        for bad_json in [r#"[["OBSID","x"]"#, r#"{"OBSID":"x"}"#, r#"[["OBSID"]]"#, r#"[[1,"x"]]"#] {
            let error = with_body(bad_json).unwrap_err();
            assert!(matches!(error, MetadataError::InvalidJson { .. }), "{bad_json}: {error}");
            assert!(error.to_string().contains("column"), "{error}");
        }
        for (body, found) in [
            (r#"[["OBSID",null]]"#, "null"),
            (r#"[["OBSID",[1]]]"#, "[1]"),
            (r#"[["OBSID",18446744073709551615]]"#, "18446744073709551615"),
        ] {
            let error = with_body(body).unwrap_err();
            assert!(
                matches!(&error, MetadataError::UnsupportedValue { name, index: 0, found: f } if name == "OBSID" && f == found),
                "{body}: {error}"
            );
        }
        let error = edited_body(|keywords| keywords[7].value = KeywordValue::Float(f64::NAN)).unwrap_err();
        assert!(matches!(error, MetadataError::UnsupportedValue { .. }), "{error}");
    }

    #[test]
    fn keyword_defects_are_named() {
        for bad_name in ["", "TOOLONGNAME", "lower", "SP ACE", "DATE.BEG"] {
            let error = edited_body(|keywords| keywords[1].name = bad_name.into()).unwrap_err();
            assert!(
                matches!(&error, MetadataError::InvalidKeywordName { name, index: 1 } if name == bad_name),
                "{bad_name:?}: {error}"
            );
        }
        let error = edited_body(|keywords| keywords[1].name = "OBSID".into()).unwrap_err();
        assert!(matches!(error, MetadataError::DuplicateKeyword { first_index: 0, index: 1, .. }), "{error}");

        let error =
            edited_body(|keywords| keywords[1].value = KeywordValue::Str("M\u{e9}".into())).unwrap_err();
        assert!(
            matches!(
                error,
                MetadataError::NonPrintableString { index: 1, character: '\u{e9}', position: 1, .. }
            ),
            "{error}"
        );
        let error = edited_body(|keywords| keywords[1].value = KeywordValue::Str("a\nb".into())).unwrap_err();
        assert!(matches!(error, MetadataError::NonPrintableString { character: '\n', .. }), "{error}");

        edited_body(|keywords| keywords[1].value = KeywordValue::Str("x".repeat(68))).unwrap();
        let error =
            edited_body(|keywords| keywords[1].value = KeywordValue::Str("x".repeat(69))).unwrap_err();
        assert!(matches!(error, MetadataError::StringTooLong { length: 69, .. }), "{error}");
        let quotes = format!("{}'", "x".repeat(67));
        let error = edited_body(|keywords| keywords[1].value = KeywordValue::Str(quotes)).unwrap_err();
        assert!(matches!(error, MetadataError::StringTooLong { length: 69, .. }), "{error}");
    }

    #[test]
    fn required_keywords_and_the_exposure_id_are_checked() {
        for name in REQUIRED_KEYWORDS.iter().chain(&REQUIRED_END_READOUT_KEYWORDS) {
            let error = edited_body(|keywords| keywords.retain(|keyword| keyword.name != *name)).unwrap_err();
            assert!(
                matches!(error, MetadataError::MissingKeyword { name: missing, kind: MetadataKind::EndReadout, .. } if missing == *name),
                "{name}: {error}"
            );
        }
        // StartIntegration does not need DATE-END.
        let start = event(MetadataKind::StartIntegration);
        assert!(start.get("DATE-END").is_none());
        start.validate().unwrap();

        let error = edited_body(|keywords| keywords[3].value = KeywordValue::Str("60".into())).unwrap_err();
        assert!(matches!(error, MetadataError::WrongKeywordValue { name: "SEQNUM", .. }), "{error}");
        let error =
            edited_body(|keywords| keywords[2].value = KeywordValue::Str("2025-04-15".into())).unwrap_err();
        assert!(matches!(error, MetadataError::WrongKeywordValue { name: "DAYOBS", .. }), "{error}");
        let error = edited_body(|keywords| keywords[0].value = KeywordValue::Int(1)).unwrap_err();
        assert!(matches!(error, MetadataError::WrongKeywordValue { name: "OBSID", .. }), "{error}");

        let error = edited_body(|keywords| keywords[3].value = KeywordValue::Int(61)).unwrap_err();
        assert!(
            matches!(
                error,
                MetadataError::ExposureIdMismatch {
                    exposure_id: 2_025_041_500_060,
                    expected: 2_025_041_500_061,
                    ..
                }
            ),
            "{error}"
        );
        let mut header = good_header();
        header.exposure_id = 2_025_041_600_060.into();
        let body = encode_body(&event(MetadataKind::EndReadout));
        let error = decode_message(&reseal(header, &body)).unwrap_err();
        assert!(error.to_string().contains("DAYOBS 20250415"), "{error}");
    }

    #[test]
    fn the_sender_refuses_what_the_receiver_would() {
        let mut bad = event(MetadataKind::EndReadout);
        bad.exposure_id += 1;
        assert!(matches!(encode_message(&bad), Err(MetadataError::ExposureIdMismatch { .. })));
        let mut bad = event(MetadataKind::StartIntegration);
        bad.keywords.push(Keyword::new("PAD", KeywordValue::Str("x".repeat(60))));
        encode_message(&bad).unwrap();
        for index in 0..1200 {
            bad.keywords.push(Keyword::new(format!("K{index}"), KeywordValue::Str("x".repeat(60))));
        }
        assert!(matches!(encode_message(&bad), Err(MetadataError::BodyTooLong { .. })));
    }
}
