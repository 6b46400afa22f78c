//! The header-service metadata channel of a stream: receives metadata messages
//! (`protocol::metadata`), checks them, and turns each into a ring record.
//!
//! **Ring record.** A checked event is stored as a [`MetadataRecord`] archived with `rkyv` 0.8:
//! [`encode_record`] writes it, [`decode_record`] validates the archive (`bytecheck`: every
//! offset, length, enum tag, bool and UTF-8 string is checked before anything is read), then the
//! record's `format_version`, kind and instrument, then the event itself
//! ([`MetadataEvent::validate`]), so a reader never trusts bytes it did not check. The ring's own
//! payload CRC guards against flipped bits; validation guards against misreading. A payload slice
//! that is not 16-byte aligned (rkyv's requirement) is copied into an aligned buffer first.
//!
//! **What the receiver checks** (`spawn`), per message: the wire format (header, body CRC,
//! JSON, keywords, exposure id; `protocol::metadata`), then the order of events
//! ([`MetadataOrder`]): per exposure at most one `StartIntegration` and one `EndReadout`, an
//! `EndReadout` only after its `StartIntegration`, and no exposure older than the newest one
//! already ended on the same instrument. A header that fails its checks (or a connection that ends
//! inside a message) closes the connection, because the length of what follows cannot be trusted;
//! a bad body or an ordering error skips only that message. Every refusal is counted under
//! [`RejectKind::BadMetadata`] and logged with the stream, connection, byte offset and reason.
//!
//! **Bounded memory.** [`MetadataOrder`] remembers the last [`ORDER_MEMORY_EXPOSURES`] exposures
//! plus one id per instrument; a connection holds one body buffer of at most
//! [`MAX_BODY_BYTES`]; the queue to the ring writer holds `capacity` items and a full queue blocks
//! the reader (back-pressure to the Header Service, which blocks too and never drops a message).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use ringbuffer::Clock;
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::config::Endpoint;
use crate::core::{IngestCounters, IngestObserver, RejectKind};
use crate::protocol::frame::InstrumentCode;
use crate::protocol::metadata::{
    Keyword, KeywordValue, MetadataError, MetadataEvent, MetadataHeader, MetadataKind, MAX_BODY_BYTES,
    METADATA_HEADER_BYTES,
};
use crate::source::{read_full, Filled, Listener, SHUTDOWN_POLL};

/// A checked header-service event, encoded as the payload of a ring metadata record.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataItem {
    /// The exposure it describes.
    pub exposure_id: u64,
    /// `StartIntegration` or `EndReadout`.
    pub kind: String,
    /// The ring record payload.
    pub record: Vec<u8>,
    /// The connection it came on, for logs.
    pub connection: String,
}

/// The [`MetadataRecord::format_version`] this code writes and the only one it reads.
pub const RECORD_FORMAT_VERSION: u16 = 1;

/// Alignment `rkyv` needs to access an archive in place.
const RECORD_ALIGNMENT: usize = 16;

/// The ring record of one header-service event (archived with `rkyv`).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MetadataRecord {
    /// [`RECORD_FORMAT_VERSION`] of the writer.
    pub format_version: u16,
    /// [`MetadataKind`] as a byte: 1 `StartIntegration`, 2 `EndReadout`.
    pub kind: u8,
    /// [`InstrumentCode`] as a byte.
    pub instrument: u8,
    /// DAYOBS x 100000 + SEQNUM.
    pub exposure_id: u64,
    /// When the ingest received the message, nanoseconds since the Unix epoch (its clock).
    pub received_ns: u64,
    /// The primary-header keywords, in FITS header order.
    pub keywords: Vec<RecordKeyword>,
}

/// One keyword of a [`MetadataRecord`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RecordKeyword {
    /// The FITS keyword.
    pub name: String,
    /// Its value.
    pub value: RecordValue,
}

/// A keyword's value in a [`MetadataRecord`] (mirrors [`KeywordValue`]).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RecordValue {
    /// A FITS string.
    Str(String),
    /// A FITS integer.
    Int(i64),
    /// A FITS real.
    Float(f64),
    /// A FITS logical.
    Bool(bool),
}

impl MetadataRecord {
    /// The record of `event`, received at `received_ns`.
    pub fn from_event(event: &MetadataEvent, received_ns: u64) -> MetadataRecord {
        MetadataRecord {
            format_version: RECORD_FORMAT_VERSION,
            kind: event.kind as u16 as u8,
            instrument: event.instrument as u8,
            exposure_id: event.exposure_id,
            received_ns,
            keywords: event
                .keywords
                .iter()
                .map(|keyword| RecordKeyword {
                    name: keyword.name.clone(),
                    value: match &keyword.value {
                        KeywordValue::Str(text) => RecordValue::Str(text.clone()),
                        KeywordValue::Int(number) => RecordValue::Int(*number),
                        KeywordValue::Float(number) => RecordValue::Float(*number),
                        KeywordValue::Bool(flag) => RecordValue::Bool(*flag),
                    },
                })
                .collect(),
        }
    }

    /// The event and its receive time; checks the version, kind, instrument and the event itself.
    pub fn into_event(self) -> Result<(MetadataEvent, u64), RecordError> {
        if self.format_version != RECORD_FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion { found: self.format_version });
        }
        let kind = MetadataKind::from_u16(u16::from(self.kind))
            .ok_or(RecordError::UnknownKind { found: self.kind })?;
        let instrument = InstrumentCode::from_u8(self.instrument)
            .ok_or(RecordError::UnknownInstrument { found: self.instrument })?;
        let keywords = self
            .keywords
            .into_iter()
            .map(|keyword| {
                let value = match keyword.value {
                    RecordValue::Str(text) => KeywordValue::Str(text),
                    RecordValue::Int(number) => KeywordValue::Int(number),
                    RecordValue::Float(number) => KeywordValue::Float(number),
                    RecordValue::Bool(flag) => KeywordValue::Bool(flag),
                };
                Keyword { name: keyword.name, value }
            })
            .collect();
        let event = MetadataEvent { kind, instrument, exposure_id: self.exposure_id, keywords };
        event.validate().map_err(|source| RecordError::InvalidEvent { source })?;
        Ok((event, self.received_ns))
    }
}

/// Why bytes are not a metadata ring record this code can read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The archive failed validation (an offset, length, tag or string is out of bounds or
    /// invalid), or it is not an archive of a [`MetadataRecord`] at all.
    #[error("metadata record ({length} bytes) fails validation: {reason}")]
    Invalid {
        /// Bytes of the record.
        length: usize,
        /// rkyv's (bytecheck's) reason.
        reason: String,
    },
    /// A record written by a newer (or unknown) format.
    #[error(
        "metadata record format_version {found} is not supported \
         (this reader knows only {RECORD_FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// An unknown event kind byte.
    #[error("metadata record has unknown event kind {found} (1 StartIntegration, 2 EndReadout)")]
    UnknownKind {
        /// The kind found.
        found: u8,
    },
    /// An unknown instrument byte.
    #[error("metadata record has unknown instrument code {found}")]
    UnknownInstrument {
        /// The code found.
        found: u8,
    },
    /// The event inside does not pass [`MetadataEvent::validate`].
    #[error("metadata record holds an invalid event: {source}")]
    InvalidEvent {
        /// What is wrong with it.
        #[source]
        source: MetadataError,
    },
}

/// The ring record payload of `event`, received at `received_ns` (an `rkyv` archive of its
/// [`MetadataRecord`]).
pub fn encode_record(event: &MetadataEvent, received_ns: u64) -> Vec<u8> {
    encode_metadata_record(&MetadataRecord::from_event(event, received_ns))
}

/// The archive of `record` (any field values, for tests of the reader).
fn encode_metadata_record(record: &MetadataRecord) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(record)
        .expect("serialising owned strings and vectors cannot fail")
        .into_vec()
}

/// Validates a ring record payload and returns its event and receive time. `bytes` may have any
/// alignment (a misaligned slice is copied into an aligned buffer first).
pub fn decode_record(bytes: &[u8]) -> Result<(MetadataEvent, u64), RecordError> {
    let aligned;
    let bytes = if (bytes.as_ptr() as usize).is_multiple_of(RECORD_ALIGNMENT) {
        bytes
    } else {
        let mut copy = AlignedVec::<RECORD_ALIGNMENT>::with_capacity(bytes.len());
        copy.extend_from_slice(bytes);
        aligned = copy;
        aligned.as_slice()
    };
    let invalid =
        |error: rancor::Error| RecordError::Invalid { length: bytes.len(), reason: error.to_string() };
    let archived = rkyv::access::<ArchivedMetadataRecord, rancor::Error>(bytes).map_err(invalid)?;
    // Refuse another format before deserialising anything else.
    let format_version = archived.format_version.to_native();
    if format_version != RECORD_FORMAT_VERSION {
        return Err(RecordError::UnsupportedVersion { found: format_version });
    }
    let record = rkyv::deserialize::<MetadataRecord, rancor::Error>(archived).map_err(invalid)?;
    record.into_event()
}

/// Exposures [`MetadataOrder`] remembers.
pub const ORDER_MEMORY_EXPOSURES: usize = 64;

/// Why an event is out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// A second `StartIntegration` or `EndReadout` for the same exposure.
    #[error("duplicate {kind} for exposure {exposure_id}")]
    Duplicate {
        /// The exposure.
        exposure_id: u64,
        /// The event repeated.
        kind: MetadataKind,
    },
    /// An `EndReadout` with no `StartIntegration` before it (or one older than the remembered
    /// exposures).
    #[error("EndReadout for exposure {exposure_id} without StartIntegration")]
    EndWithoutStart {
        /// The exposure.
        exposure_id: u64,
    },
    /// An event for an exposure older than the newest exposure already ended on its instrument.
    #[error(
        "{kind} for exposure {exposure_id} is out of order: \
         exposure {newest_ended} of the same instrument already ended"
    )]
    OutOfOrder {
        /// The exposure.
        exposure_id: u64,
        /// The event.
        kind: MetadataKind,
        /// The newest exposure already ended.
        newest_ended: u64,
    },
}

/// What is known of one remembered exposure.
#[derive(Debug, Clone, Copy)]
struct Seen {
    instrument: InstrumentCode,
    exposure_id: u64,
    ended: bool,
}

/// Checks the order of header-service events, remembering the last [`ORDER_MEMORY_EXPOSURES`]
/// exposures (and, per instrument, the newest exposure ended). An exposure forgotten because
/// 64 newer ones started is treated as never started.
#[derive(Debug, Default)]
pub struct MetadataOrder {
    /// Oldest first; at most [`ORDER_MEMORY_EXPOSURES`].
    recent: VecDeque<Seen>,
    /// Newest exposure ended, per instrument (one entry per instrument seen: at most two).
    newest_ended: Vec<(InstrumentCode, u64)>,
}

impl MetadataOrder {
    /// Nothing seen yet.
    pub fn new() -> MetadataOrder {
        MetadataOrder::default()
    }

    /// Checks `event` against what was accepted before and, when it is in order, remembers it.
    /// A refused event changes nothing.
    pub fn accept(&mut self, event: &MetadataEvent) -> Result<(), OrderError> {
        let exposure_id = event.exposure_id;
        let position = self
            .recent
            .iter()
            .position(|seen| seen.instrument == event.instrument && seen.exposure_id == exposure_id);
        match position {
            Some(index) if event.kind == MetadataKind::StartIntegration || self.recent[index].ended => {
                return Err(OrderError::Duplicate { exposure_id, kind: event.kind });
            }
            None if event.kind == MetadataKind::EndReadout => {
                return Err(OrderError::EndWithoutStart { exposure_id });
            }
            _ => {}
        }
        let newest = self.newest_ended.iter().position(|(instrument, _)| *instrument == event.instrument);
        if let Some(newest_ended) =
            newest.map(|index| self.newest_ended[index].1).filter(|newest| exposure_id < *newest)
        {
            return Err(OrderError::OutOfOrder { exposure_id, kind: event.kind, newest_ended });
        }
        match position {
            Some(index) => {
                self.recent[index].ended = true;
                match newest {
                    Some(index) => self.newest_ended[index].1 = self.newest_ended[index].1.max(exposure_id),
                    None => self.newest_ended.push((event.instrument, exposure_id)),
                }
            }
            None => {
                if self.recent.len() == ORDER_MEMORY_EXPOSURES {
                    self.recent.pop_front();
                }
                self.recent.push_back(Seen { instrument: event.instrument, exposure_id, ended: false });
            }
        }
        Ok(())
    }
}

/// Starts the metadata channel of stream `stream`: binds (or opens) `endpoint` now, then on its
/// own thread accepts connections one at a time, reads and checks messages and sends each good
/// one as a [`MetadataItem`] on a queue of `capacity` items (a full queue blocks the reader:
/// back-pressure). The thread ends when `shutdown` is set, when the receiver is dropped, or at
/// the end of a file endpoint; it drops the sender then.
pub(crate) fn spawn(
    endpoint: Endpoint,
    stream: String,
    observer: Arc<IngestObserver>,
    shutdown: Arc<AtomicBool>,
    capacity: usize,
    clock: Arc<dyn Clock>,
) -> io::Result<(Receiver<MetadataItem>, JoinHandle<()>)> {
    let listener = Listener::open(&endpoint)?;
    let (sender, receiver) = std::sync::mpsc::sync_channel(capacity.max(1));
    let channel =
        Channel { stream, observer, shutdown, clock, sender, order: MetadataOrder::new(), body: Vec::new() };
    let handle = thread::Builder::new()
        .name(format!("{}-metadata", channel.stream))
        .spawn(move || channel.run(listener, &endpoint))?;
    Ok((receiver, handle))
}

/// How one connection ended.
enum Ended {
    /// End of stream, or the connection was closed as untrustworthy: accept the next.
    Connection,
    /// Shutdown requested or the receiver is gone: stop the channel.
    Channel,
}

/// The state of the metadata thread.
struct Channel {
    stream: String,
    observer: Arc<IngestObserver>,
    shutdown: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    sender: SyncSender<MetadataItem>,
    order: MetadataOrder,
    body: Vec<u8>,
}

impl Channel {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    fn run(mut self, mut listener: Listener, endpoint: &Endpoint) {
        let once = listener.is_once();
        let mut number = 0u64;
        tracing::info!(stream = %self.stream, %endpoint, "metadata channel listening");
        while !self.stopping() {
            match listener.accept(number + 1) {
                Ok(Some((mut input, connection))) => {
                    number += 1;
                    tracing::info!(stream = %self.stream, %connection, "metadata connection opened");
                    let ended = self.serve(&mut *input, &connection);
                    tracing::info!(stream = %self.stream, %connection, "metadata connection ended");
                    if matches!(ended, Ended::Channel) {
                        break;
                    }
                }
                Ok(None) if once => break,
                Ok(None) => thread::sleep(SHUTDOWN_POLL / 10),
                Err(error) => {
                    tracing::warn!(stream = %self.stream, %endpoint, %error, "metadata accept failed");
                    thread::sleep(SHUTDOWN_POLL);
                }
            }
        }
    }

    /// Counts and logs a refused message.
    fn reject(&self, connection: &str, offset_bytes: u64, exposure_id: Option<u64>, reason: &str) {
        let index = RejectKind::ALL
            .iter()
            .position(|kind| *kind == RejectKind::BadMetadata)
            .expect("BadMetadata is a reject kind");
        IngestCounters::add(&self.observer.counters.rejected_total[index], 1);
        tracing::warn!(
            stream = %self.stream,
            connection,
            offset_bytes,
            exposure_id,
            reason,
            "metadata message rejected"
        );
    }

    /// Reads messages from one connection until it ends, must be closed, or the channel stops.
    fn serve(&mut self, input: &mut dyn Read, connection: &str) -> Ended {
        let mut offset_bytes = 0u64;
        loop {
            let message_offset = offset_bytes;
            let (header, decoded) = match self.read_message(input, connection, message_offset) {
                Ok(message) => message,
                Err(ended) => return ended,
            };
            offset_bytes += header.message_length() as u64;
            let received_ns = self.clock.now_ns();
            let exposure_id = header.exposure_id.get();
            let checked = decoded.map_err(|error| error.to_string()).and_then(|event| {
                self.order.accept(&event).map(|()| event).map_err(|error| error.to_string())
            });
            let event = match checked {
                Ok(event) => event,
                Err(reason) => {
                    self.reject(connection, message_offset, Some(exposure_id), &reason);
                    continue;
                }
            };
            let record = encode_record(&event, received_ns);
            let item = MetadataItem {
                exposure_id,
                kind: event.kind.name().to_owned(),
                record,
                connection: connection.to_owned(),
            };
            if !self.send(item) {
                return Ended::Channel;
            }
        }
    }

    /// Reads one message: its header (checked) and its decoded body, or how the connection ended.
    /// A header that fails its checks, a truncated message or a read error ends the connection
    /// (counted and logged here); a body that fails its checks is returned as an error.
    fn read_message(
        &mut self,
        input: &mut dyn Read,
        connection: &str,
        message_offset: u64,
    ) -> Result<(MetadataHeader, Result<MetadataEvent, MetadataError>), Ended> {
        let shutdown = Arc::clone(&self.shutdown);
        let stopping = move || shutdown.load(Ordering::Relaxed);
        let mut header_bytes = [0u8; METADATA_HEADER_BYTES];
        let header = match read_full(input, &mut header_bytes, &stopping) {
            Ok(Filled::Full) => match MetadataHeader::parse(&header_bytes) {
                Ok(header) => header,
                Err(error) => {
                    self.reject(connection, message_offset, None, &format!("{error}; connection closed"));
                    IngestCounters::add(&self.observer.counters.connections_closed_bad_total, 1);
                    return Err(Ended::Connection);
                }
            },
            Ok(Filled::CleanEnd) => return Err(Ended::Connection),
            Ok(Filled::Shutdown) => return Err(Ended::Channel),
            Ok(Filled::Truncated { found }) => {
                let reason = format!(
                    "connection ended inside the message header ({found} of {METADATA_HEADER_BYTES} bytes)"
                );
                self.reject(connection, message_offset, None, &reason);
                return Err(Ended::Connection);
            }
            Err(error) => {
                self.read_failed(connection, message_offset, &error);
                return Err(Ended::Connection);
            }
        };
        // parse() refused anything longer than MAX_BODY_BYTES: the buffer stays bounded.
        let body_length = header.body_length().min(MAX_BODY_BYTES);
        let mut body = std::mem::take(&mut self.body);
        body.resize(body_length, 0);
        let filled = read_full(input, &mut body, &stopping);
        let result = match filled {
            Ok(Filled::Full) => Ok((header, header.decode_body(&body))),
            Ok(Filled::CleanEnd) | Ok(Filled::Truncated { .. }) => {
                let found = if let Ok(Filled::Truncated { found }) = filled { found } else { 0 };
                let reason =
                    format!("connection ended inside the message body ({found} of {body_length} bytes)");
                self.reject(connection, message_offset, Some(header.exposure_id.get()), &reason);
                Err(Ended::Connection)
            }
            Ok(Filled::Shutdown) => Err(Ended::Channel),
            Err(error) => {
                self.read_failed(connection, message_offset, &error);
                Err(Ended::Connection)
            }
        };
        self.body = body;
        result
    }

    /// Logs a read error (the connection is closed).
    fn read_failed(&self, connection: &str, offset_bytes: u64, error: &io::Error) {
        tracing::warn!(
            stream = %self.stream,
            connection,
            offset_bytes,
            %error,
            "metadata read failed; connection closed"
        );
    }

    /// Queues `item`, waiting while the queue is full; false when the channel must stop.
    fn send(&self, mut item: MetadataItem) -> bool {
        loop {
            match self.sender.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if self.stopping() {
                        return false;
                    }
                    item = back;
                    thread::sleep(SHUTDOWN_POLL / 10);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use std::time::Duration;

    use ringbuffer::ManualClock;

    use super::*;
    use crate::core::IngestCounters;
    use crate::protocol::metadata::encode_message;

    const DAYOBS: u64 = 20_250_415;

    /// A valid event of exposure `seqnum` with keywords of all four value types.
    fn event(kind: MetadataKind, seqnum: i64) -> MetadataEvent {
        let value = |text: &str| KeywordValue::Str(text.to_owned());
        let mut keywords = vec![
            Keyword::new("OBSID", value(&format!("MC_O_{DAYOBS}_{seqnum:06}"))),
            Keyword::new("CAMCODE", value("MC")),
            Keyword::new("DAYOBS", value(&DAYOBS.to_string())),
            Keyword::new("SEQNUM", KeywordValue::Int(seqnum)),
            Keyword::new("IMGTYPE", value("SCIENCE")),
            Keyword::new("DATE-BEG", value("2025-04-16T00:00:00.000")),
            Keyword::new("EXPTIME", KeywordValue::Float(30.0)),
            Keyword::new("MJD-BEG", KeywordValue::Float(60_781.0 + 1.0 / 3.0)),
            Keyword::new("TINY", KeywordValue::Float(-1e-300)),
            Keyword::new("NEGINT", KeywordValue::Int(i64::MIN)),
            Keyword::new("SHUTTER", KeywordValue::Bool(true)),
            Keyword::new("DOME", KeywordValue::Bool(false)),
            Keyword::new("QUOTED", value("it's a long string value that does not fit inline")),
        ];
        if kind == MetadataKind::EndReadout {
            keywords.push(Keyword::new("DATE-END", value("2025-04-16T00:00:30.000")));
        }
        let exposure_id = DAYOBS * 100_000 + seqnum as u64;
        MetadataEvent { kind, instrument: InstrumentCode::LsstCam, exposure_id, keywords }
    }

    /// `bytes` copied to an address that is 1 modulo 16.
    fn misaligned(bytes: &[u8]) -> (AlignedVec<RECORD_ALIGNMENT>, usize) {
        let mut buffer = AlignedVec::<RECORD_ALIGNMENT>::with_capacity(bytes.len() + 1);
        buffer.push(0xAA);
        buffer.extend_from_slice(bytes);
        (buffer, 1)
    }

    #[test]
    fn a_record_round_trips_to_the_identical_event_and_receive_time() {
        for kind in [MetadataKind::StartIntegration, MetadataKind::EndReadout] {
            let original = event(kind, 60);
            let record = encode_record(&original, 1_744_761_600_123_456_789);
            let (decoded, received_ns) = decode_record(&record).expect("a record we wrote");
            assert_eq!(decoded, original);
            assert_eq!(received_ns, 1_744_761_600_123_456_789);
            for keyword in &original.keywords {
                if let KeywordValue::Float(value) = keyword.value {
                    let Some(KeywordValue::Float(back)) = decoded.get(&keyword.name) else {
                        panic!("{} is no longer a float", keyword.name)
                    };
                    assert_eq!(back.to_bits(), value.to_bits(), "{}", keyword.name);
                }
            }
            assert_eq!(encode_record(&original, 1_744_761_600_123_456_789), record, "deterministic");
        }
    }

    #[test]
    fn a_misaligned_slice_decodes() {
        let original = event(MetadataKind::EndReadout, 7);
        let record = encode_record(&original, 42);
        let (buffer, start) = misaligned(&record);
        let slice = &buffer[start..];
        assert!(!(slice.as_ptr() as usize).is_multiple_of(RECORD_ALIGNMENT), "the test slice is misaligned");
        assert_eq!(decode_record(slice).expect("misaligned but valid"), (original, 42));
    }

    #[test]
    fn flipped_bytes_are_never_silently_read_as_the_same_event() {
        let original = event(MetadataKind::EndReadout, 60);
        let record = encode_record(&original, 99);
        let (mut rejected, mut unnoticed) = (0, 0);
        for position in 0..record.len() {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut corrupt = record.clone();
                corrupt[position] ^= mask;
                match decode_record(&corrupt) {
                    Err(_) => rejected += 1,
                    // Only filler may change unnoticed: struct padding (written as 0x00) and the
                    // unused tail of a short inline string (0xFF after the first 0xFF). The ring's
                    // payload CRC catches those.
                    Ok(decoded) if decoded == (original.clone(), 99) => {
                        unnoticed += 1;
                        assert!(
                            matches!(record[position], 0x00 | 0xFF),
                            "flipping byte {position} (mask {mask:#04x}, was {:#04x}) went unnoticed",
                            record[position]
                        );
                    }
                    Ok(_) => {}
                }
            }
        }
        assert!(rejected > record.len(), "validation rejected only {rejected} corruptions");
        // rkyv's filler is about a quarter of a record's bytes.
        assert!(unnoticed < record.len(), "{unnoticed} of {} corruptions unnoticed", 3 * record.len());

        // The root's last byte is the high byte of the keyword vector's length: flipped, the vector
        // runs past the buffer.
        let mut corrupt = record.clone();
        let tail = corrupt.len() - 1;
        corrupt[tail] ^= 0xFF;
        assert!(decode_record(&corrupt).is_err_and(|error| matches!(error, RecordError::Invalid { .. })));
        assert!(matches!(decode_record(b"not a metadata record"), Err(RecordError::Invalid { .. })));
        assert!(matches!(decode_record(&[]), Err(RecordError::Invalid { .. })));
    }

    #[test]
    fn an_unknown_format_version_kind_or_instrument_is_refused_by_name() {
        let base = MetadataRecord::from_event(&event(START, 8), 5);
        let mut newer = base.clone();
        newer.format_version = 2;
        let error = decode_record(&encode_metadata_record(&newer)).unwrap_err();
        assert!(matches!(error, RecordError::UnsupportedVersion { found: 2 }), "{error}");
        assert!(error.to_string().contains("format_version 2"), "{error}");

        let mut kind = base.clone();
        kind.kind = 3;
        assert!(matches!(
            decode_record(&encode_metadata_record(&kind)),
            Err(RecordError::UnknownKind { found: 3 })
        ));
        let mut instrument = base.clone();
        instrument.instrument = 9;
        assert!(matches!(
            decode_record(&encode_metadata_record(&instrument)),
            Err(RecordError::UnknownInstrument { found: 9 })
        ));
        let mut bad_event = base;
        bad_event.exposure_id += 1;
        assert!(matches!(
            decode_record(&encode_metadata_record(&bad_event)),
            Err(RecordError::InvalidEvent { source: MetadataError::ExposureIdMismatch { .. } })
        ));
    }

    fn bare(kind: MetadataKind, instrument: InstrumentCode, exposure_id: u64) -> MetadataEvent {
        MetadataEvent { kind, instrument, exposure_id, keywords: Vec::new() }
    }

    const START: MetadataKind = MetadataKind::StartIntegration;
    const END: MetadataKind = MetadataKind::EndReadout;
    const MC: InstrumentCode = InstrumentCode::LsstCam;
    const AT: InstrumentCode = InstrumentCode::Latiss;

    #[test]
    fn ordering_accepts_start_then_end_and_refuses_duplicates() {
        let mut order = MetadataOrder::new();
        order.accept(&bare(START, MC, 10)).unwrap();
        let error = order.accept(&bare(START, MC, 10)).unwrap_err();
        assert_eq!(error, OrderError::Duplicate { exposure_id: 10, kind: START });
        assert_eq!(error.to_string(), "duplicate StartIntegration for exposure 10");
        order.accept(&bare(END, MC, 10)).unwrap();
        let error = order.accept(&bare(END, MC, 10)).unwrap_err();
        assert_eq!(error, OrderError::Duplicate { exposure_id: 10, kind: END });
        assert_eq!(
            order.accept(&bare(START, MC, 10)),
            Err(OrderError::Duplicate { exposure_id: 10, kind: START })
        );
        // The same id on another instrument is another exposure.
        order.accept(&bare(START, AT, 10)).unwrap();
        order.accept(&bare(END, AT, 10)).unwrap();
    }

    #[test]
    fn ordering_refuses_an_end_without_a_start() {
        let mut order = MetadataOrder::new();
        let error = order.accept(&bare(END, MC, 11)).unwrap_err();
        assert_eq!(error, OrderError::EndWithoutStart { exposure_id: 11 });
        assert_eq!(error.to_string(), "EndReadout for exposure 11 without StartIntegration");
        // A refused event changes nothing: the exposure can still start and end.
        order.accept(&bare(START, MC, 11)).unwrap();
        order.accept(&bare(END, MC, 11)).unwrap();
        // A start on another instrument does not count.
        order.accept(&bare(START, AT, 12)).unwrap();
        assert_eq!(order.accept(&bare(END, MC, 12)), Err(OrderError::EndWithoutStart { exposure_id: 12 }));
    }

    #[test]
    fn ordering_refuses_exposures_older_than_the_newest_ended() {
        let mut order = MetadataOrder::new();
        order.accept(&bare(START, MC, 20)).unwrap();
        order.accept(&bare(START, MC, 21)).unwrap();
        order.accept(&bare(END, MC, 21)).unwrap();
        let error = order.accept(&bare(END, MC, 20)).unwrap_err();
        assert_eq!(error, OrderError::OutOfOrder { exposure_id: 20, kind: END, newest_ended: 21 });
        assert!(error.to_string().contains("exposure 20 is out of order"), "{error}");
        assert_eq!(
            order.accept(&bare(START, MC, 19)),
            Err(OrderError::OutOfOrder { exposure_id: 19, kind: START, newest_ended: 21 })
        );
        // Newer exposures, and older ones of another instrument, are fine.
        order.accept(&bare(START, MC, 22)).unwrap();
        order.accept(&bare(START, AT, 5)).unwrap();
        order.accept(&bare(END, AT, 5)).unwrap();
    }

    #[test]
    fn ordering_memory_is_bounded_to_the_last_exposures() {
        let mut order = MetadataOrder::new();
        for exposure_id in 1..=1000 {
            order.accept(&bare(START, MC, exposure_id)).unwrap();
            assert!(order.recent.len() <= ORDER_MEMORY_EXPOSURES);
        }
        assert_eq!(order.recent.len(), ORDER_MEMORY_EXPOSURES);
        // The oldest remembered can still end; one forgotten reads as never started.
        let oldest = 1000 - ORDER_MEMORY_EXPOSURES as u64 + 1;
        assert_eq!(
            order.accept(&bare(END, MC, oldest - 1)),
            Err(OrderError::EndWithoutStart { exposure_id: oldest - 1 })
        );
        order.accept(&bare(END, MC, oldest)).unwrap();
    }

    fn observer() -> Arc<IngestObserver> {
        Arc::new(IngestObserver {
            counters: IngestCounters::default(),
            ring_stats: Mutex::new(None),
            backend: Mutex::new(String::new()),
        })
    }

    fn bad_metadata(observer: &IngestObserver) -> u64 {
        observer.counters.rejected(RejectKind::BadMetadata)
    }

    fn connect(path: &std::path::Path) -> UnixStream {
        for _ in 0..200 {
            if let Ok(stream) = UnixStream::connect(path) {
                return stream;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("cannot connect to {}", path.display());
    }

    #[test]
    fn the_channel_passes_good_messages_in_order_and_counts_bad_ones() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("metadata.sock");
        let observer = observer();
        let shutdown = Arc::new(AtomicBool::new(false));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
        let (items, handle) = spawn(
            Endpoint::Unix(path.clone()),
            "lsstcam".into(),
            Arc::clone(&observer),
            Arc::clone(&shutdown),
            2,
            clock,
        )
        .unwrap();

        let good = [event(START, 1), event(END, 1), event(START, 2)];
        let mut bad_crc = encode_message(&event(END, 1)).unwrap();
        let last = bad_crc.len() - 2;
        bad_crc[last] ^= 0x01;
        let mut stream = Vec::new();
        stream.extend(encode_message(&good[0]).unwrap());
        stream.extend(&bad_crc);
        stream.extend(encode_message(&good[1]).unwrap());
        stream.extend(encode_message(&event(END, 7)).unwrap());
        stream.extend(encode_message(&good[2]).unwrap());
        let mut socket = connect(&path);
        socket.write_all(&stream).unwrap();
        drop(socket);

        for expected in &good {
            let item = items.recv_timeout(Duration::from_secs(10)).expect("a good message");
            assert_eq!(item.exposure_id, expected.exposure_id);
            assert_eq!(item.kind, expected.kind.name());
            assert_eq!(item.connection, "unix#1");
            assert_eq!(decode_record(&item.record).unwrap(), (expected.clone(), 1_000));
        }
        assert_eq!(bad_metadata(&observer), 2);
        assert!(items.recv_timeout(Duration::from_millis(200)).is_err(), "only the good messages");

        // A bad header closes its connection; the next connection is accepted and read.
        let mut socket = connect(&path);
        let mut bad_header = encode_message(&event(END, 2)).unwrap();
        bad_header[0] = b'X';
        socket.write_all(&bad_header).unwrap();
        socket.write_all(&encode_message(&event(END, 2)).unwrap()).unwrap();
        let mut second = connect(&path);
        second.write_all(&encode_message(&event(END, 2)).unwrap()).unwrap();
        let item = items.recv_timeout(Duration::from_secs(10)).expect("the next connection is read");
        assert_eq!((item.exposure_id, item.connection.as_str()), (good[2].exposure_id, "unix#3"));
        assert_eq!(bad_metadata(&observer), 3);
        assert_eq!(observer.counters.connections_closed_bad_total.load(Ordering::Relaxed), 1);

        shutdown.store(true, Ordering::Relaxed);
        handle.join().unwrap();
        assert!(items.recv().is_err(), "the sender is dropped when the thread ends");
    }

    #[test]
    fn a_file_endpoint_is_read_to_its_end_and_a_truncated_message_is_counted() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("metadata.replay");
        let mut bytes = encode_message(&event(START, 3)).unwrap();
        bytes.extend(encode_message(&event(END, 3)).unwrap());
        let cut = encode_message(&event(START, 4)).unwrap();
        bytes.extend(&cut[..cut.len() - 10]);
        std::fs::write(&path, &bytes).unwrap();
        let observer = observer();
        let (items, handle) = spawn(
            Endpoint::File(path),
            "latiss".into(),
            Arc::clone(&observer),
            Arc::new(AtomicBool::new(false)),
            1,
            Arc::new(ManualClock::new(0)),
        )
        .unwrap();
        let kinds: Vec<String> = items.iter().map(|item| item.kind).collect();
        assert_eq!(kinds, ["StartIntegration", "EndReadout"]);
        handle.join().unwrap();
        assert_eq!(bad_metadata(&observer), 1);
    }
}
