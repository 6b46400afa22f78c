//! `failover`: link monitor, island mode and the drain of raw FITS files to the base store.
//!
//! **Partly built (issue 5).**
//! - [`link`]: the summit-to-base link monitor: UP / DEGRADED / DOWN / RECOVERING with
//!   hysteresis, fed by TCP or HTTP probes on its own thread (it never blocks on the link it
//!   watches); defaults detect a cut within 3 s (worst case 2.75 s) and never flap on one lost
//!   probe.
//! - [`fits`]: raw FITS files, one per detector per exposure, streamed from per-segment sources
//!   with DATASUM and CHECKSUM per HDU (pixel bytes pass through unchanged), the real file-name
//!   convention and object keys; checked by fitsverify and astropy in the tests.
//!
//! Not built yet: the drain (reading the ring's `drain` cursor, assembling files from frames,
//! uploading to the base through `object_store`, advancing the cursor only after the base
//! confirmed), island mode wiring, priorities and base verification. Nothing here pretends to
//! drain anything.
#![forbid(unsafe_code)]

pub mod fits;
pub mod link;
