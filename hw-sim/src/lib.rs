//! `hw-sim`: simulated LSSTCam, LATISS, header service and link faults.
//!
//! - [`geometry`] and [`frame`]: re-exported from `dma_ingest::protocol`, the input contract
//!   the simulator and the ingest share (camera geometry, the single source of truth for every
//!   crate; the DAQ frame protocol, byte diagram in `docs/daq-frame-protocol.md`).
//! - [`pixels`]: the seeded sky-like pixel generator: any segment of any exposure regenerated
//!   bit-for-bit from `(seed, exposure, detector, segment)` (and the scene: the field a visit
//!   observes and an optional injected transient), row range by row range, from a compact list
//!   of sources rendered on demand plus table-driven noise (what it simplifies is in its docs).
//!
//! - [`header_service`]: the header-service event model: per-exposure metadata (OBSID, DAYOBS in
//!   UTC-12, SEQNUM, DATE-BEG/END in TAI, MJD, EXPTIME, DARKTIME, FILTER, pointing, weather) as
//!   `StartIntegration` then `EndReadout` events, pure and deterministic, and their form on the
//!   metadata channel ([`metadata`], from `dma_ingest::protocol`: a 32-byte header and a JSON list
//!   of FITS keywords, sent on a connection separate from the frames).
//! - [`faults`]: malformed-frame injection for testing the ingest (bad magic, header or payload
//!   CRC, truncated, wrong length, duplicated, out of order, missing segment, disconnect), each
//!   counted.
//!
//! - [`transport`]: frames from DAQ to ingest over Unix stream sockets, TCP or a replay file; the
//!   receiver listens, the sender connects and blocks under back-pressure (never drops).
//! - [`link_proxy`]: a TCP fault proxy between summit and base (cut by reset or black hole,
//!   restore, bandwidth limit, latency, flapping schedule), controllable from tests.
//!
//! - [`night`]: the observing-night schedule: a lazy, time-ordered stream of header events and
//!   paced frame events for LSSTCam and LATISS together, plus time compression for a driver;
//!   optionally visits in pairs on the same field with a transient appearing in the second.
//!
//! - [`driver`]: plays a night schedule in (compressed) real time: generates each frame's pixels,
//!   encodes, optionally injects faults, and sends through a transport; sends the header events
//!   as metadata messages to an optional second transport, interleaved in schedule order.
//! - [`cli`]: what the command-line tools share (DEST syntax, pacing arguments, playing to a frame
//!   and a metadata destination).
//! - [`clock`]: simulated time (manual and accelerated) behind the workspace's one time trait,
//!   `ringbuffer::Clock`.
//!
//! Command-line tools: `hw-sim-camera` (play a night to a Unix socket, TCP or a replay file, with
//! `--metadata-to` for the header service's events), `hw-sim-auxtel` (LATISS alone),
//! `hw-sim-header-service` (the metadata alone, no pixels) and `hw-sim-link-proxy` (the fault
//! proxy with stdin control); `hil/netns-link-cut.sh` cuts a real veth link between two network
//! namespaces.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod driver;
pub mod faults;
pub use dma_ingest::protocol::{frame, geometry, metadata};
pub mod header_service;
pub mod link_proxy;
pub mod night;
pub mod pixels;
mod random;
pub mod transport;
