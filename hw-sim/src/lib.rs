//! `hw-sim`: simulated LSSTCam, LATISS, header service and link faults.
//!
//! **Not built yet (issue 3).** This crate will hold the DAQ frame protocol shared by sender and
//! receiver, the camera geometry (one source of truth for every crate), a seeded, fast pixel
//! generator that looks like sky, an observing-night driver, a header-service simulator, frame
//! transports, malformed-frame injection and a link fault proxy.
//!
//! Today it contains no code: nothing here pretends to simulate anything.
#![forbid(unsafe_code)]
