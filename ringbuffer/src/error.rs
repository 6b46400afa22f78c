//! The ring's error type. Every message names the ring, the field or offset, the value and,
//! where there is one, what the operator can do.

use std::io;
use std::path::PathBuf;

/// Errors from opening, appending to, reading or inspecting a ring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed.
    #[error("{path}: {operation} failed: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An I/O call at a known offset of a file failed.
    #[error("{path}: {operation} at byte offset {offset} failed: {source}")]
    IoAt {
        /// The file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// Byte offset in the file.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The directory or files do not hold a ring this code can read.
    #[error("{path}: not a usable ring: {detail}")]
    NotARing {
        /// The file or directory.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The ring was written by a newer version of this software.
    #[error(
        "{path}: ring format version {found} is newer than this software supports ({supported}); \
         upgrade summit-ring/summit-node, or restore a compatible binary"
    )]
    NewerFormat {
        /// The meta file.
        path: PathBuf,
        /// Version on disk.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// A ring file is shorter or longer than its checkpoint says.
    #[error(
        "{path}: file is {actual_bytes} bytes but the ring needs {expected_bytes}: truncated or replaced"
    )]
    WrongSize {
        /// The file.
        path: PathBuf,
        /// Size the checkpoint requires.
        expected_bytes: u64,
        /// Size found.
        actual_bytes: u64,
    },
    /// `create` found a ring (or other files) already in the directory.
    #[error("{path}: already holds a ring; refusing to format it (use `summit-ring create --force` to destroy its data deliberately)")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// Another process has the ring open for writing.
    #[error("{path}: ring is open by another process (lock held); stop it first")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A configuration or creation parameter is invalid.
    #[error("invalid ring setting `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The ring refuses appends after a failed write or fsync (fail-stop).
    #[error("ring is poisoned and refuses writes: {cause}; restart the process to recover from the last durable state")]
    Poisoned {
        /// The original failure.
        cause: String,
    },
    /// Policy `reject`: the ring is full and the record was refused (counted).
    #[error("ring full: record of {needed_bytes} bytes refused ({free_bytes} bytes free; policy reject)")]
    Rejected {
        /// Bytes the record needs.
        needed_bytes: u64,
        /// Bytes free.
        free_bytes: u64,
    },
    /// Policy `block`: the ring is full; retry after a required cursor moves.
    #[error("ring full: record of {needed_bytes} bytes must wait ({free_bytes} bytes free; policy block)")]
    WouldBlock {
        /// Bytes the record needs.
        needed_bytes: u64,
        /// Bytes free.
        free_bytes: u64,
    },
    /// Too many records are written but not yet durable: wait for the writes in flight to be
    /// confirmed and make them durable ([`crate::Ring::commit`] or
    /// [`crate::Ring::begin_sync`]) before planning more.
    #[error(
        "{unsynced_bytes} bytes are not durable yet ({in_flight} writes in flight); sync before appending more \
         (limit {limit_bytes} bytes, {max_in_flight} writes)"
    )]
    SyncRequired {
        /// Bytes written or planned since the durable head.
        unsynced_bytes: u64,
        /// Planned writes not yet confirmed.
        in_flight: usize,
        /// The unsynced-bytes limit.
        limit_bytes: u64,
        /// The maximum of planned writes in flight.
        max_in_flight: usize,
    },
    /// The payload is larger than the ring's maximum record payload.
    #[error("payload of {length_bytes} bytes exceeds the ring's maximum of {max_bytes} bytes")]
    TooLarge {
        /// Payload length.
        length_bytes: u64,
        /// Maximum.
        max_bytes: u64,
    },
    /// The payload buffer is not 4096-aligned or not padded to a multiple of 4096 bytes.
    #[error(
        "payload buffer must start on a 4096-byte boundary and be padded to a multiple of 4096 bytes \
             (address {address:#x}, padded length {padded_bytes}, payload length {length_bytes})"
    )]
    Misaligned {
        /// Buffer address.
        address: usize,
        /// Length of the padded buffer.
        padded_bytes: usize,
        /// Payload length inside it.
        length_bytes: usize,
    },
    /// No cursor of that name exists, and no more can be added.
    #[error("cursor `{name}`: {reason}")]
    Cursor {
        /// The cursor.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result with the ring's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: &std::path::Path, operation: &'static str, source: io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), operation, source }
}
