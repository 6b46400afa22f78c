//! `summit-node`: the summit appliance daemon.
//!
//! **Not built yet (issue 6).** This crate will hold the daemon: configuration files, wiring of
//! ingest, rings, prompt processing and drain, the operator console (serial and ssh), the
//! observatory-control commandable device (STANDBY / DISABLED / ENABLED / FAULT / OFFLINE),
//! systemd integration (sd_notify READY / WATCHDOG) and the one-command simulation mode.
//! It is the only crate that reads configuration files or owns process-level concerns.
//!
//! Today it contains no code: there is no daemon to run yet.
#![forbid(unsafe_code)]
