//! `hil`: the hardware-in-the-loop harness.
//!
//! **Not built yet.** This crate will hold the rigs (what hardware a scenario needs, checked
//! before it runs, with a visible skip when absent), scenarios, the runner and its reports.
//!
//! Today it contains no code: no hardware test runs, and none is reported as passing.
#![forbid(unsafe_code)]
