//! The camera's input contract: what every crate agrees a frame, a detector and a header-service
//! event are.
//!
//! - [`geometry`]: camera geometry, the single source of truth for every crate (LSSTCam's 189
//!   science CCDs, 8 guiders and 8 wavefront half-sensors, LATISS, ITL and e2v segment layouts,
//!   extension order, DATASEC/DETSEC/DETSIZE, raft subsets).
//! - [`frame`]: the DAQ frame protocol (byte diagram in `docs/daq-frame-protocol.md`), one
//!   definition for the sender (`hw-sim`) and the receiver (this crate's ingest).
//! - [`metadata`]: the metadata channel, the Header Service's `StartIntegration` and
//!   `EndReadout` events on the wire (a 32-byte header and a JSON body of FITS keywords; same
//!   document, "Metadata channel").
//!
//! This module has no `unsafe` and does no I/O of its own (the metadata reader reads any
//! `std::io::Read` it is given): `hw-sim`, `failover` and `summit-node` depend on it without
//! depending on io_uring.
#![forbid(unsafe_code)]

pub mod frame;
pub mod geometry;
pub mod metadata;

use std::io::{self, Read};

/// Fills `buffer` from `inner` unless the stream ends first, retrying interrupted reads, adding
/// every byte read to `offset_bytes` (so on an error it says how far the stream got). Returns the
/// bytes read: less than `buffer.len()` only at the end of the stream. Shared by the frame and
/// metadata readers.
pub fn read_until_full_or_end(
    inner: &mut impl Read,
    buffer: &mut [u8],
    offset_bytes: &mut u64,
) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match inner.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => {
                filled += read;
                *offset_bytes += read as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}
