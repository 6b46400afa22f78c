//! What an ingest is told at start-up: where frames and metadata come from, which I/O path to use,
//! and the fixed sizes of everything it holds (buffer pool, connections, commit batching).
//!
//! Every maximum is fixed here, at start-up: memory does not grow with traffic or backlog.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::completeness::TrackerOptions;
use crate::protocol::frame::{frame_length_bytes, FRAME_HEADER_BLOCK_BYTES};
use crate::protocol::geometry::SEGMENT_SIZE_BYTES;

/// Largest frame the default pool accepts: one whole segment (4096 + 4,718,592 bytes).
pub const WHOLE_SEGMENT_FRAME_BYTES: usize = frame_length_bytes(SEGMENT_SIZE_BYTES);

/// The endpoint syntaxes, for error messages.
const ENDPOINT_FORMS: &str = "unix:PATH, tcp:HOST:PORT, file:PATH or device:PATH";

/// Where a stream's bytes come from. The ingest listens; the camera DAQ (or `hw-sim`) connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Listen on a Unix stream socket at this path (an existing socket file is replaced).
    Unix(PathBuf),
    /// Listen on a TCP address.
    Tcp(SocketAddr),
    /// Read a replay file (frames back to back) once, from the start to its end.
    File(PathBuf),
    /// Read a character device (a DMA driver's endpoint) as one endless stream.
    Device(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    /// `unix:PATH`, `tcp:HOST:PORT`, `file:PATH` or `device:PATH`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = text
            .split_once(':')
            .ok_or_else(|| format!("endpoint {text:?} has no scheme; expected {ENDPOINT_FORMS}"))?;
        if rest.is_empty() {
            return Err(format!("endpoint {text:?} names no path or address after {scheme:?}"));
        }
        match scheme {
            "unix" => Ok(Endpoint::Unix(rest.into())),
            "tcp" => rest.parse().map(Endpoint::Tcp).map_err(|error| {
                format!("endpoint {text:?}: {rest:?} is not an IP address and port: {error}")
            }),
            "file" => Ok(Endpoint::File(rest.into())),
            "device" => Ok(Endpoint::Device(rest.into())),
            other => Err(format!(
                "endpoint {text:?}: unknown scheme {other:?}; expected unix, tcp, file or device"
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(formatter, "unix:{}", path.display()),
            Endpoint::Tcp(address) => write!(formatter, "tcp:{address}"),
            Endpoint::File(path) => write!(formatter, "file:{}", path.display()),
            Endpoint::Device(path) => write!(formatter, "device:{}", path.display()),
        }
    }
}

/// Which I/O path moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring when the kernel allows it (and the ring's data file is `O_DIRECT`), otherwise the
    /// portable path; the choice and its reason are logged at start.
    #[default]
    Auto,
    /// io_uring or fail at start (with the reason).
    IoUring,
    /// The portable path (threads, `read`, `pwritev`, `fdatasync`), whatever the kernel offers.
    Portable,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(BackendChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(BackendChoice::IoUring),
            "portable" => Ok(BackendChoice::Portable),
            other => Err(format!("backend {other:?}: expected auto, io_uring or portable")),
        }
    }
}

/// How one stream's ingest runs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Name of the stream in logs, events and statistics (e.g. `lsstcam`, `latiss`).
    pub stream: String,
    /// I/O path.
    pub backend: BackendChoice,
    /// Receive buffers in the fixed pool (each holds one frame plus the ring's 4096-byte record
    /// header block). When all are busy the ingest stops reading: back-pressure to the sender.
    pub buffer_count: usize,
    /// Largest frame accepted, bytes (a multiple of 4096). A frame announcing more is rejected and
    /// its connection closed.
    pub max_frame_bytes: usize,
    /// Most frame connections open at once; more are refused (closed at accept, counted).
    pub max_connections: usize,
    /// Make writes durable at least this often while data flows (group commit also syncs as soon
    /// as the previous sync returns).
    pub max_commit_delay: Duration,
    /// Completeness tracking (incomplete timeout, reconnect grace, open exposures).
    pub tracker: TrackerOptions,
    /// Capacity of the event queue; events beyond it are dropped and counted, never blocking
    /// acquisition.
    pub event_queue: usize,
    /// Under the ring's `block` policy, how long a frame waits for space before the ingest checks
    /// again (the connection is not read meanwhile: back-pressure).
    pub full_retry_interval: Duration,
}

impl IngestOptions {
    /// Defaults for a stream named `stream`: auto backend, 16 whole-segment buffers (75 MB),
    /// 4 connections, 10 ms maximum commit delay, tracker defaults, 4096 queued events.
    pub fn new(stream: &str) -> IngestOptions {
        IngestOptions {
            stream: stream.to_owned(),
            backend: BackendChoice::Auto,
            buffer_count: 16,
            max_frame_bytes: WHOLE_SEGMENT_FRAME_BYTES,
            max_connections: 4,
            max_commit_delay: Duration::from_millis(10),
            tracker: TrackerOptions::default(),
            event_queue: 4096,
            full_retry_interval: Duration::from_millis(20),
        }
    }

    /// Checks the sizes; the error names the field, the value and what is expected.
    pub fn validate(&self) -> Result<(), String> {
        if self.stream.is_empty() {
            return Err("stream: must not be empty".into());
        }
        if !(2..=1024).contains(&self.buffer_count) {
            return Err(format!("buffer_count = {}: expected 2..=1024", self.buffer_count));
        }
        if self.max_frame_bytes < 2 * FRAME_HEADER_BLOCK_BYTES
            || !self.max_frame_bytes.is_multiple_of(FRAME_HEADER_BLOCK_BYTES)
            || self.max_frame_bytes > 64 << 20
        {
            return Err(format!(
                "max_frame_bytes = {}: expected a multiple of 4096 between 8192 and 64 MiB",
                self.max_frame_bytes
            ));
        }
        if !(1..=64).contains(&self.max_connections) {
            return Err(format!("max_connections = {}: expected 1..=64", self.max_connections));
        }
        if self.max_commit_delay.is_zero() || self.max_commit_delay > Duration::from_secs(1) {
            return Err(format!("max_commit_delay = {:?}: expected 1 ns..=1 s", self.max_commit_delay));
        }
        if self.event_queue == 0 {
            return Err("event_queue = 0: expected at least 1".into());
        }
        Ok(())
    }

    /// Bytes of one pool buffer: the ring's record header block, then the frame.
    pub fn buffer_bytes(&self) -> usize {
        FRAME_HEADER_BLOCK_BYTES + self.max_frame_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print_back() {
        for text in ["unix:/run/ingest.sock", "tcp:127.0.0.1:7000", "file:/tmp/n.replay", "device:/dev/daq0"]
        {
            let endpoint: Endpoint = text.parse().expect(text);
            assert_eq!(endpoint.to_string(), text);
        }
    }

    #[test]
    fn bad_endpoints_name_what_is_wrong() {
        assert!("nowhere".parse::<Endpoint>().unwrap_err().contains("no scheme"));
        assert!("tcp:localhost".parse::<Endpoint>().unwrap_err().contains("not an IP address"));
        assert!("ftp:/x".parse::<Endpoint>().unwrap_err().contains("unknown scheme \"ftp\""));
        assert!("unix:".parse::<Endpoint>().unwrap_err().contains("names no path"));
    }

    #[test]
    fn options_validation_names_the_field() {
        let mut options = IngestOptions::new("latiss");
        assert_eq!(options.validate(), Ok(()));
        options.buffer_count = 1;
        assert!(options.validate().unwrap_err().starts_with("buffer_count = 1"));
        options.buffer_count = 4;
        options.max_frame_bytes = 5000;
        assert!(options.validate().unwrap_err().starts_with("max_frame_bytes = 5000"));
    }
}
