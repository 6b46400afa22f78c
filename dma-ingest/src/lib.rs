//! `dma-ingest`: receives camera DAQ frames and writes them into the persistent rings.
//!
//! One [`IngestHandle`] per stream (LSSTCam, LATISS) receives DAQ frames from a Unix socket, TCP,
//! a replay file or a DMA character device, checks each frame in one pass, writes it to the
//! stream's ring without copying its pixels, makes it durable by group commit, and announces
//! completeness (segment durable, detector complete, exposure complete or incomplete). Header
//! service messages arrive on their own channel and become metadata records in the same ring.
//!
//! - [`protocol`]: the input contract shared with `hw-sim`, `failover` and `summit-node`: the
//!   frame protocol, camera geometry and the metadata message.
//! - [`config`]: endpoints, the I/O path choice, and the fixed sizes set at start.
//! - [`ingest`]: [`IngestHandle::start`] / [`IngestHandle::shutdown`], choosing the path.
//! - `core`: what both paths share (validation, admission, counters, events) so they cannot
//!   disagree; `uring`: the io_uring path; `portable`: the fallback path.
//! - [`completeness`]: per exposure and detector, which segments are durable.
//! - [`metadata_channel`]: the header-service channel and its `rkyv` ring records.
//!
//! The buffer lifecycle and what happens on cancellation are in `docs/dma-ingest.md`. This is the
//! only crate of the workspace allowed `unsafe`, and only in `uring` (io_uring needs it), each
//! block with a SAFETY comment.

pub mod completeness;
pub mod config;
mod core;
pub mod ingest;
pub mod metadata_channel;
mod portable;
pub mod protocol;
mod source;
mod uring;

pub use crate::core::{IngestCounters, IngestEvent, IngestObserver, RejectKind};
pub use config::{BackendChoice, Endpoint, IngestOptions};
pub use ingest::{Backend, IngestHandle, StartError};
pub use uring::probe as probe_io_uring;
