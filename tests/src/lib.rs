//! `summit-tests`: cross-crate integration tests and project policy checks.
//!
//! The tests live in `tests/tests/`. They use simulated hardware only and are reproducible by
//! seed. `policy.rs` checks the project's conventions (every source file opens with a `//!` doc,
//! every crate is listed in ARCHITECTURE.md, `.ci/run` calls the README's test command) so that
//! CI and humans run the same checks.
#![forbid(unsafe_code)]
