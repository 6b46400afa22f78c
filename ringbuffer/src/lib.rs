//! `ringbuffer`: a persistent, crash-safe ring of checksummed records on preallocated storage.
//!
//! The summit keeps every camera frame here while the link to the base is down. One ring per
//! stream (LSSTCam, LATISS, metadata) lives in its own directory: `ring.data` (preallocated,
//! fixed capacity) and `ring.meta` (two checkpoint slots written alternately).
//!
//! # Design principles
//! - **Acknowledged means durable.** [`Ring::append`] writes; [`Ring::commit`] is the group
//!   commit that `fdatasync`s, then publishes the durable head to readers and acknowledges.
//! - **Zero-copy.** Appends take a caller-owned, 4096-aligned buffer and hand it to the kernel
//!   (`pwritev`, `O_DIRECT`): payload bytes are never copied in user space.
//! - **Everything is checked.** Each record carries CRC32s of its header and payload, its
//!   sequence number, its logical offset (position and lap), the ring id and the writer
//!   generation. Torn, stale, misplaced or foreign data is detected, never returned.
//! - **Undrained data is never overwritten.** Space is reclaimed only behind the *persisted*
//!   positions of required cursors (`drain` always is one). When full, the policy is `block`
//!   or `reject`.
//! - **Fail-stop.** After a failed write or `fsync` the ring refuses writes and says why.
//! - **Bounded memory and bounded recovery.** No index in memory; buffers sized at open from
//!   the maximum payload. Open reads the newest valid checkpoint and scans only what was written
//!   after it (at most `checkpoint_interval_bytes`, plus a bounded resync window).
//! - **Nondeterminism behind traits.** Time comes from [`Clock`], storage from [`Storage`]; the
//!   fault layer in [`sim`] crashes, tears, flips bits and fails `fsync`s reproducibly by seed.
//!
//! The byte layouts are drawn in `docs/ringbuffer-format.md`.
//!
//! # Modules, in reading order
//! - [`layout`]: the on-disk record header and checkpoint slot.
//! - [`storage`]: the `Storage` trait and the real file implementation.
//! - [`config`]: creation and open options.
//! - `ring`: [`Ring`], the writer; open, recovery, append, commit, checkpoints.
//! - `reader`: [`Reader`], the cursor-following validating reader.
//! - [`stats`]: counters, events, [`RingStats`], `verify`.
//! - [`report`]: the operator's text reports of a ring (`inspect`, `verify`).
//! - [`sim`]: the storage fault layer for tests and simulation.
//! - [`clock`], [`aligned`], [`error`]: small supporting pieces.
//! - [`bench`]: helpers shared by the benchmarks (fio, medians, procfs figures).
#![forbid(unsafe_code)]

pub mod aligned;
pub mod bench;
pub mod clock;
pub mod config;
pub mod error;
pub mod layout;
mod reader;
pub mod report;
mod ring;
pub mod sim;
pub mod stats;
pub mod storage;

pub use aligned::AlignedBuf;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{parse_size_bytes, CreateOptions, CursorSpec, FullPolicy, RingOptions};
pub use error::{Error, Result};
pub use layout::{RecordDefect, RecordKind};
pub use reader::{Reader, Record, RecordInfo};
pub use ring::{
    open_read_only, open_read_only_on, Appended, BatchRecord, OpenMode, PlannedAppend, PlannedBlock,
    Position, Ring, SyncTicket, MAX_BATCH_RECORDS, MAX_EXTERNAL_IN_FLIGHT, MAX_IO_DEPTH,
};
pub use stats::{BadRegion, CursorStats, RingEvent, RingEventKind, RingStats, VerifyReport};
pub use storage::{FileStorage, RingFiles, Storage};
