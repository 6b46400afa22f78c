//! Transports (issue 3 item 7): how frames travel from the camera DAQ (or `hw-sim`) to the summit
//! node's ingest, over a Unix stream socket, over TCP, or through a replay file.
//!
//! The rules (also in `docs/daq-frame-protocol.md`, "Transports"):
//! - **The receiver listens, the sender connects.** The ingest binds a Unix stream socket path or
//!   a TCP port and accepts; the DAQ (here [`UnixFrameSender::connect`], [`TcpFrameSender::connect`])
//!   connects and pushes frames, as a real DAQ pushes to the node. One connection is one stream:
//!   `frame_sequence` counts from 1 on it. A sender that disconnects simply drops its sender.
//! - **The stream is frames back to back**, nothing else: each frame's header says its length
//!   ([`FrameHeader::frame_length_bytes`]), so no extra framing is needed and every frame starts at
//!   a multiple of 4096 bytes from the start of the stream.
//! - **Back-pressure, never silent loss.** [`FrameSink::send`] is a blocking `write_all`: when the
//!   receiver reads more slowly than the sender writes, the kernel's socket buffers fill and `send`
//!   blocks until the receiver catches up. Nothing is dropped or queued without limit on the
//!   sender's side; a receiver that has gone away makes `send` fail (`BrokenPipe`,
//!   `ConnectionReset`), never succeed silently.
//! - **A replay file is the stream written to disk**: the concatenation of frames, each already a
//!   multiple of 4096 bytes, with no file header. It can be read back with [`ReplayFileReader`],
//!   written to a socket unchanged, or written with `O_DIRECT` unchanged.
//! - **Senders do not check frames**: [`crate::faults`] sends malformed ones on purpose.
//! - **Metadata travels the same way, on a connection of its own.** A metadata message
//!   ([`crate::metadata`]) is just bytes, so the same [`FrameSink`]s send it (the driver's
//!   `metadata` sink); [`crate::metadata::MetadataReader`] reads such a stream (or file) back one
//!   message at a time. Frames and metadata are never mixed on one connection.
//! - **The reader does not resynchronise.** [`FrameReader`] reads one frame at a time and checks
//!   its header; on a bad header or an end of stream inside a frame it returns an error naming
//!   the byte offset and then refuses to read further. The ingest decides what to do (drop the
//!   connection, count, alarm); it does not check the payload CRC either
//!   ([`FrameHeader::validate_frame`] is the ingest's call).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::frame::{FrameError, FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use dma_ingest::protocol::read_until_full_or_end;

/// Where a sender puts whole frames (or whole metadata messages, on a metadata connection).
pub trait FrameSink {
    /// Sends one frame (any bytes: the sender does not check them). Blocks until every byte has
    /// been handed to the operating system, so a slow receiver slows the sender down
    /// (back-pressure); it never drops a frame. An error (receiver gone, disk full) means the frame
    /// may have been sent in part: the stream is then unusable.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// A [`FrameSink`] over any [`Write`] target, counting what it sent.
#[derive(Debug)]
pub struct FrameWriter<W: Write> {
    inner: W,
    frames_sent_total: u64,
    bytes_sent_total: u64,
}

/// Sends frames over a Unix stream socket to a listening ingest.
pub type UnixFrameSender = FrameWriter<UnixStream>;
/// Sends frames over TCP to a listening ingest.
pub type TcpFrameSender = FrameWriter<TcpStream>;
/// Writes frames to a replay file (the concatenation of the frames).
pub type ReplayFileWriter = FrameWriter<File>;

impl<W: Write> FrameWriter<W> {
    /// Sends frames into `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, frames_sent_total: 0, bytes_sent_total: 0 }
    }

    /// Frames sent so far.
    pub fn frames_sent_total(&self) -> u64 {
        self.frames_sent_total
    }

    /// Bytes sent so far.
    pub fn bytes_sent_total(&self) -> u64 {
        self.bytes_sent_total
    }

    /// The underlying target (e.g. to set a write timeout).
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Gives back the underlying target.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> FrameSink for FrameWriter<W> {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.inner.write_all(frame)?;
        self.inner.flush()?;
        self.frames_sent_total += 1;
        self.bytes_sent_total += frame.len() as u64;
        Ok(())
    }
}

impl FrameWriter<UnixStream> {
    /// Connects to the ingest listening on the Unix stream socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .map_err(|error| context(error, format!("connecting to Unix socket {}", path.display())))?;
        Ok(Self::new(stream))
    }
}

impl FrameWriter<TcpStream> {
    /// Connects to the ingest listening on TCP at `address`.
    pub fn connect(address: impl ToSocketAddrs + std::fmt::Debug) -> io::Result<Self> {
        let stream = TcpStream::connect(&address)
            .map_err(|error| context(error, format!("connecting over TCP to {address:?}")))?;
        Ok(Self::new(stream))
    }
}

impl FrameWriter<File> {
    /// Creates a replay file at `path`; refuses to overwrite an existing file (a recorded night
    /// is not clobbered by accident).
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::create_new(path)
            .map_err(|error| context(error, format!("creating replay file {}", path.display())))?;
        Ok(Self::new(file))
    }

    /// Flushes the replay file to stable storage and closes it.
    pub fn finish(self) -> io::Result<()> {
        self.inner.sync_all()
    }
}

fn context(error: io::Error, what: String) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// Why [`FrameReader::read_frame`] returned no frame. Offsets count bytes from the start of the
/// stream (or replay file).
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The stream ended inside a frame.
    #[error("stream ended at byte offset {end_offset_bytes}, inside the frame starting at byte offset {frame_offset_bytes} ({found_bytes} of its {expected_bytes} bytes arrived)")]
    Truncated {
        /// Where the frame started.
        frame_offset_bytes: u64,
        /// Where the stream ended.
        end_offset_bytes: u64,
        /// Bytes the frame needed so far: the header block, or the whole frame once parsed.
        expected_bytes: usize,
        /// Bytes of the frame that arrived.
        found_bytes: usize,
    },
    /// The header block is not a valid frame header.
    #[error("bad frame header at byte offset {frame_offset_bytes}: {source}")]
    BadHeader {
        /// Where the frame started.
        frame_offset_bytes: u64,
        /// What is wrong with it.
        #[source]
        source: FrameError,
    },
    /// The frame is longer than the caller's buffer.
    #[error("frame at byte offset {frame_offset_bytes} is {frame_bytes} bytes, more than the {buffer_bytes}-byte buffer; give a larger buffer")]
    BufferTooSmall {
        /// Where the frame started.
        frame_offset_bytes: u64,
        /// Its length according to its header.
        frame_bytes: usize,
        /// The buffer's length.
        buffer_bytes: usize,
    },
    /// Reading failed.
    #[error("read error at byte offset {offset_bytes} (frame starting at byte offset {frame_offset_bytes}): {source}")]
    Io {
        /// Where the frame started.
        frame_offset_bytes: u64,
        /// How far the stream had been read.
        offset_bytes: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An earlier call failed; the reader does not resynchronise.
    #[error("frame reader stopped after an error in the frame at byte offset {frame_offset_bytes}; it does not resynchronise")]
    Stopped {
        /// Where the failed frame started.
        frame_offset_bytes: u64,
    },
}

/// Reads frames one at a time from a stream of frames back to back.
#[derive(Debug)]
pub struct FrameReader<R: Read> {
    inner: R,
    offset_bytes: u64,
    frames_read_total: u64,
    failed_frame_offset_bytes: Option<u64>,
}

/// Reads the frames of a replay file.
pub type ReplayFileReader = FrameReader<File>;

impl FrameReader<File> {
    /// Opens the replay file at `path`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = File::open(path)
            .map_err(|error| context(error, format!("opening replay file {}", path.display())))?;
        Ok(Self::new(file))
    }
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `inner`, whose first byte starts a frame.
    pub fn new(inner: R) -> Self {
        Self { inner, offset_bytes: 0, frames_read_total: 0, failed_frame_offset_bytes: None }
    }

    /// Bytes read so far: the offset of the next frame after a successful read.
    pub fn offset_bytes(&self) -> u64 {
        self.offset_bytes
    }

    /// Frames read so far.
    pub fn frames_read_total(&self) -> u64 {
        self.frames_read_total
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next whole frame into the start of `buffer`, which must hold at least the header
    /// block (a whole-segment frame is `frame_length_bytes(576 * 2048 * 4)`). Returns its parsed
    /// header (the frame is `buffer[..header.frame_length_bytes()]`), or `Ok(None)` when the
    /// stream ends cleanly at a frame boundary. The payload CRC is not checked. After an error
    /// every later call returns [`ReadFrameError::Stopped`].
    pub fn read_frame(&mut self, buffer: &mut [u8]) -> Result<Option<FrameHeader>, ReadFrameError> {
        assert!(buffer.len() >= FRAME_HEADER_BLOCK_BYTES, "frame buffer smaller than a header block");
        if let Some(frame_offset_bytes) = self.failed_frame_offset_bytes {
            return Err(ReadFrameError::Stopped { frame_offset_bytes });
        }
        let frame_offset_bytes = self.offset_bytes;
        let result = self.read_one_frame(buffer, frame_offset_bytes);
        match &result {
            Ok(Some(_)) => self.frames_read_total += 1,
            Ok(None) => {}
            Err(_) => self.failed_frame_offset_bytes = Some(frame_offset_bytes),
        }
        result
    }

    fn read_one_frame(
        &mut self,
        buffer: &mut [u8],
        frame_offset_bytes: u64,
    ) -> Result<Option<FrameHeader>, ReadFrameError> {
        let truncated = |expected_bytes: usize, found_bytes: usize| ReadFrameError::Truncated {
            frame_offset_bytes,
            end_offset_bytes: frame_offset_bytes + found_bytes as u64,
            expected_bytes,
            found_bytes,
        };
        let header_found =
            self.read_until_full_or_end(&mut buffer[..FRAME_HEADER_BLOCK_BYTES], frame_offset_bytes)?;
        if header_found == 0 {
            return Ok(None);
        }
        if header_found < FRAME_HEADER_BLOCK_BYTES {
            return Err(truncated(FRAME_HEADER_BLOCK_BYTES, header_found));
        }
        let header = FrameHeader::parse(&buffer[..FRAME_HEADER_BLOCK_BYTES])
            .map_err(|source| ReadFrameError::BadHeader { frame_offset_bytes, source })?;
        let frame_bytes = header.frame_length_bytes();
        if frame_bytes > buffer.len() {
            return Err(ReadFrameError::BufferTooSmall {
                frame_offset_bytes,
                frame_bytes,
                buffer_bytes: buffer.len(),
            });
        }
        let rest_found = self
            .read_until_full_or_end(&mut buffer[FRAME_HEADER_BLOCK_BYTES..frame_bytes], frame_offset_bytes)?;
        if FRAME_HEADER_BLOCK_BYTES + rest_found < frame_bytes {
            return Err(truncated(frame_bytes, FRAME_HEADER_BLOCK_BYTES + rest_found));
        }
        Ok(Some(header))
    }

    /// Fills `buffer` unless the stream ends first; returns the bytes read.
    fn read_until_full_or_end(
        &mut self,
        buffer: &mut [u8],
        frame_offset_bytes: u64,
    ) -> Result<usize, ReadFrameError> {
        read_until_full_or_end(&mut self.inner, buffer, &mut self.offset_bytes).map_err(|source| {
            ReadFrameError::Io { frame_offset_bytes, offset_bytes: self.offset_bytes, source }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::frame::{
        encode_frame, frame_length_bytes, FrameFields, InstrumentCode, FLAG_END_OF_SEGMENT, MAX_ADC_VALUE,
    };

    const SEGMENT_COLUMNS: u16 = 576;
    const SEGMENT_ROWS: u16 = 2048;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .subsec_nanos();
            let path = std::env::temp_dir().join(format!("hw-sim-{name}-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&path).expect("create temp dir");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Frame `sequence` (from 1) of a stream: `row_count` rows, pixels depending on the sequence.
    fn frame(sequence: u64, row_count: u16) -> Vec<u8> {
        let first_row = ((sequence - 1) * u64::from(row_count) % u64::from(SEGMENT_ROWS)) as u16;
        let pixels: Vec<u8> = (0..usize::from(row_count) * usize::from(SEGMENT_COLUMNS))
            .flat_map(|i| ((i as i32 * 31 + sequence as i32 * 7) & MAX_ADC_VALUE).to_be_bytes())
            .collect();
        let fields = FrameFields {
            instrument: InstrumentCode::LsstCam,
            flags: if first_row + row_count == SEGMENT_ROWS { FLAG_END_OF_SEGMENT } else { 0 },
            raft: 22,
            sensor: 11,
            segment: 10,
            segment_columns: SEGMENT_COLUMNS,
            segment_rows: SEGMENT_ROWS,
            first_row,
            row_count,
            exposure_id: 2025041500060,
            frame_sequence: sequence,
            readout_ns: 1_744_700_000_000_000_000 + sequence,
        };
        let mut out = vec![0; frame_length_bytes(pixels.len())];
        encode_frame(&fields, &pixels, &mut out);
        out
    }

    /// Frames 1..=count with 1, 2, 3... rows (so several lengths).
    fn frames(count: u64) -> Vec<Vec<u8>> {
        (1..=count).map(|sequence| frame(sequence, (sequence % 5 + 1) as u16)).collect()
    }

    fn read_all<R: Read>(reader: &mut FrameReader<R>) -> Vec<Vec<u8>> {
        let mut buffer = vec![0; frame_length_bytes(16 * 576 * 4)];
        let mut received = Vec::new();
        while let Some(header) = reader.read_frame(&mut buffer).expect("read frame") {
            received.push(buffer[..header.frame_length_bytes()].to_vec());
        }
        received
    }

    fn send_all(sink: &mut impl FrameSink, frames: &[Vec<u8>]) {
        for frame in frames {
            sink.send(frame).expect("send frame");
        }
    }

    #[test]
    fn frames_sent_over_a_unix_socket_arrive_byte_identical_and_in_order() {
        let dir = TempDir::new("transport-unix");
        let socket_path = dir.0.join("ingest.sock");
        let listener = UnixListener::bind(&socket_path).unwrap();
        let sent = frames(12);
        let to_send = sent.clone();
        let sender = thread::spawn(move || {
            let mut sender = UnixFrameSender::connect(&socket_path).unwrap();
            send_all(&mut sender, &to_send);
            assert_eq!(sender.frames_sent_total(), 12);
        });
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = FrameReader::new(stream);
        assert_eq!(read_all(&mut reader), sent);
        assert_eq!(reader.frames_read_total(), 12);
        sender.join().unwrap();
    }

    #[test]
    fn frames_sent_over_tcp_on_loopback_arrive_byte_identical_and_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let sent = frames(12);
        let to_send = sent.clone();
        let sender = thread::spawn(move || {
            let mut sender = TcpFrameSender::connect(address).unwrap();
            send_all(&mut sender, &to_send);
        });
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_all(&mut FrameReader::new(stream)), sent);
        sender.join().unwrap();
    }

    #[test]
    fn a_replay_file_is_the_concatenation_of_its_frames_and_reads_back_in_order() {
        let dir = TempDir::new("transport-replay");
        let path = dir.0.join("night.frames");
        let sent = frames(9);
        let mut writer = ReplayFileWriter::create(&path).unwrap();
        send_all(&mut writer, &sent);
        writer.finish().unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), sent.concat());
        assert_eq!(read_all(&mut ReplayFileReader::open(&path).unwrap()), sent);
        let error = ReplayFileWriter::create(&path).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert!(error.to_string().contains("night.frames"), "{error}");
    }

    #[test]
    fn a_stream_truncated_mid_frame_is_an_error_naming_the_offset() {
        let sent = frames(3);
        let first_two_bytes = sent[0].len() + sent[1].len();
        let mut stream = sent.concat();
        stream.truncate(first_two_bytes + 4096 + 100);
        let mut reader = FrameReader::new(stream.as_slice());
        let mut buffer = vec![0; frame_length_bytes(16 * 576 * 4)];
        assert!(reader.read_frame(&mut buffer).unwrap().is_some());
        assert!(reader.read_frame(&mut buffer).unwrap().is_some());
        let error = reader.read_frame(&mut buffer).unwrap_err();
        let expected_end = first_two_bytes as u64 + 4096 + 100;
        assert!(
            matches!(error, ReadFrameError::Truncated { frame_offset_bytes, end_offset_bytes, .. }
                if frame_offset_bytes == first_two_bytes as u64 && end_offset_bytes == expected_end),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("byte offset {first_two_bytes}")), "{message}");
        assert!(message.contains(&format!("byte offset {expected_end}")), "{message}");
        assert!(matches!(reader.read_frame(&mut buffer), Err(ReadFrameError::Stopped { .. })));
    }

    #[test]
    fn a_stream_ending_inside_a_header_block_is_truncated_not_clean_end() {
        let sent = frames(1);
        let mut stream = sent[0].clone();
        stream.extend_from_slice(&[0x44; 10]);
        let mut reader = FrameReader::new(stream.as_slice());
        let mut buffer = vec![0; frame_length_bytes(16 * 576 * 4)];
        assert!(reader.read_frame(&mut buffer).unwrap().is_some());
        let error = reader.read_frame(&mut buffer).unwrap_err();
        assert!(matches!(error, ReadFrameError::Truncated { found_bytes: 10, .. }), "{error}");
    }

    #[test]
    fn a_bad_header_is_an_error_naming_the_offset_and_the_reader_does_not_resynchronise() {
        let mut sent = frames(3);
        sent[1][0] ^= 1;
        let stream = sent.concat();
        let mut reader = FrameReader::new(stream.as_slice());
        let mut buffer = vec![0; frame_length_bytes(16 * 576 * 4)];
        assert!(reader.read_frame(&mut buffer).unwrap().is_some());
        let error = reader.read_frame(&mut buffer).unwrap_err();
        assert!(
            matches!(error, ReadFrameError::BadHeader { source: FrameError::BadMagic { .. }, .. }),
            "{error}"
        );
        assert!(error.to_string().contains(&format!("byte offset {}", sent[0].len())), "{error}");
        assert!(matches!(reader.read_frame(&mut buffer), Err(ReadFrameError::Stopped { .. })));
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_refused() {
        let stream = frame(1, 8);
        let mut buffer = vec![0; 8192];
        let error = FrameReader::new(stream.as_slice()).read_frame(&mut buffer).unwrap_err();
        assert!(matches!(error, ReadFrameError::BufferTooSmall { frame_bytes: 24576, .. }), "{error}");
    }

    #[test]
    fn a_sender_on_a_unix_socket_blocks_when_the_receiver_does_not_read_and_loses_nothing() {
        let dir = TempDir::new("transport-backpressure");
        let socket_path = dir.0.join("ingest.sock");
        let listener = UnixListener::bind(&socket_path).unwrap();
        // 64 frames of 16 rows: about 3.4 MB, far more than the kernel's socket buffers.
        let sent: Vec<Vec<u8>> = (1..=64).map(|sequence| frame(sequence, 16)).collect();
        let to_send = sent.clone();
        let (done_sender, done_receiver) = mpsc::channel();
        let sender = thread::spawn(move || {
            let mut sender = UnixFrameSender::connect(&socket_path).unwrap();
            sender.get_ref().set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            send_all(&mut sender, &to_send);
            done_sender.send(sender.frames_sent_total()).unwrap();
        });

        // Nobody reads: the sender must still be blocked after 300 ms.
        assert!(
            matches!(
                done_receiver.recv_timeout(Duration::from_millis(300)),
                Err(mpsc::RecvTimeoutError::Timeout)
            ),
            "the sender finished although nobody read"
        );
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_all(&mut FrameReader::new(stream)), sent);
        assert_eq!(done_receiver.recv_timeout(Duration::from_secs(2)).unwrap(), 64);
        sender.join().unwrap();
    }
}
