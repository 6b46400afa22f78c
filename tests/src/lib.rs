//! `summit-tests`: cross-crate integration tests and project policy checks.
//!
//! The tests live in `tests/tests/`. They use simulated hardware only and are reproducible by
//! seed. `policy.rs` checks the project's conventions (every source file opens with a `//!` doc,
//! every crate is listed in ARCHITECTURE.md, `.ci/run` calls the README's test command) so that
//! CI and humans run the same checks.
//!
//! The library holds what the tests share with other test binaries:
//! - [`s3_fault_proxy`]: an HTTP proxy in front of a real S3-protocol server that answers
//!   `503 SlowDown`, `500 InternalError` or a `200` with an error body in its place, and slows
//!   answers down, seeded (used by `tests/tests/drain_faults.rs`).
#![forbid(unsafe_code)]

pub mod s3_fault_proxy;
