//! `failover`: link monitor, island mode and the drain of raw FITS files to the base store.
//!
//! **Not built yet (issue 5).** This crate will hold the summit-to-base link monitor
//! (UP / DEGRADED / DOWN / RECOVERING with hysteresis), raw FITS assembly per detector from the
//! ring's frames and header-service metadata, and the resumable, exactly-once drain to an
//! S3-compatible object store that advances the ring's `drain` cursor only after the base
//! confirmed an object.
//!
//! Today it contains no code: nothing here pretends to drain anything.
#![forbid(unsafe_code)]
