//! `hw-sim`: simulated LSSTCam, LATISS, header service and link faults.
//!
//! **Partly built (issue 3).** Built so far:
//! - [`geometry`]: camera geometry, the single source of truth for every crate: LSSTCam's 189
//!   science CCDs, 8 guiders and 8 wavefront half-sensors, LATISS, ITL and e2v segment layouts,
//!   extension order, DATASEC/DETSEC/DETSIZE, raft subsets. Assumptions not in `domain.md` are
//!   marked in its docs (DETSEC flips in particular must be checked before the FITS writer).
//! - [`frame`]: the DAQ frame protocol, the ingest's input contract (one definition for sender
//!   and receiver; byte diagram in `docs/daq-frame-protocol.md`).
//! - [`pixels`]: the seeded sky-like pixel generator: any segment of any exposure regenerated
//!   bit-for-bit from `(seed, exposure, detector, segment)`, row range by row range, from a
//!   per-segment template plus table-driven noise (what it simplifies is listed in its docs).
//!
//! Not built yet: the observing-night driver, the header-service simulator, transports, malformed-frame
//! injection, the link fault proxy, the simulated clock and the CLIs. Nothing here pretends to
//! simulate them.
#![forbid(unsafe_code)]

pub mod frame;
pub mod geometry;
pub mod pixels;
