//! `failover`: link monitor, island mode and the drain of raw FITS files to the base store.
//!
//! - [`link`]: the summit-to-base link monitor: UP / DEGRADED / DOWN / RECOVERING with
//!   hysteresis, fed by TCP or HTTP probes on its own thread (it never blocks on the link it
//!   watches); defaults detect a cut within 3 s (worst case 2.75 s) and never flap on one lost
//!   probe.
//! - [`fits`]: raw FITS files, one per detector per exposure, streamed from per-segment sources
//!   with DATASUM and CHECKSUM per HDU (pixel bytes pass through unchanged), the real file-name
//!   convention and object keys; checked by fitsverify and astropy in the tests.
//!
//! - [`drain`]: reads the ring's `drain` cursor, assembles each detector's file from its frames
//!   (fetched back from the ring) and the header-service records, and uploads up to
//!   `files_in_flight` files at once through `object_store` (HEAD first, conditional PUT,
//!   multipart above 128 MiB), verifies each (ETag MD5 or read-back CRC32), never overwrites
//!   different bytes, and advances the cursor only after every file of the exposures behind it is
//!   confirmed; island mode, pause, a token-bucket rate limit, and a live lane that sends the
//!   newest exposure first (the two lanes share upload claims, so a file crosses the link once).
//! - [`store`]: opening the base store (a local directory or an S3 bucket), shared by the
//!   daemon and `verify-base`.
//! - [`manifest`]: the drain's record of confirmed objects and `verify-base`, which checks the
//!   base against it after an outage (missing, extra, mismatched objects by key).
//!
//! Tested against a local directory and a real S3-protocol server (moto), with the link cut
//! mid-upload (a proxy, and a veth link between network namespaces), the drain killed
//! mid-multipart, the S3 server stopped, failing and slow. Benchmark: `scripts/bench-drain`
//! (figures in the README).
#![forbid(unsafe_code)]

pub mod drain;
pub mod fits;
pub mod link;
pub mod manifest;
pub mod store;
