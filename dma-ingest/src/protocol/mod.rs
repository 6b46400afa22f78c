//! The camera's input contract: what every crate agrees a frame, a detector and a header-service
//! event are.
//!
//! - [`geometry`]: camera geometry, the single source of truth for every crate (LSSTCam's 189
//!   science CCDs, 8 guiders and 8 wavefront half-sensors, LATISS, ITL and e2v segment layouts,
//!   extension order, DATASEC/DETSEC/DETSIZE, raft subsets).
//! - [`frame`]: the DAQ frame protocol (byte diagram in `docs/daq-frame-protocol.md`), one
//!   definition for the sender (`hw-sim`) and the receiver (this crate's ingest).
//!
//! This module has no `unsafe` and no I/O: `hw-sim`, `failover` and `summit-node` depend on it
//! without depending on io_uring.
#![forbid(unsafe_code)]

pub mod frame;
pub mod geometry;
