//! What the node reports and the controls it accepts: the one interface between the running
//! node ([`crate::node`]) and everything that shows or commands it (the operator console, the
//! `status` subcommand, the simulation's progress display, systemd's STATUS line).
//!
//! Every view is a plain snapshot (serde-serialisable, so `--json` output is the same structure)
//! taken under short locks; nothing here holds a lock on the data path.

use serde::Serialize;

use crate::csc::{CommandAck, CscCommand, SummaryState};

/// A snapshot of the whole node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The node's name (from the configuration).
    pub node: String,
    /// The software version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// `true` in `summit-node sim` (simulated camera, header service and fiber).
    pub simulation: bool,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
    /// The observatory-control state.
    pub csc: CscView,
    /// One per stream (LSSTCam, LATISS), in configuration order.
    pub rings: Vec<RingView>,
    /// One per stream.
    pub ingest: Vec<IngestView>,
    /// The summit-to-base link.
    pub link: LinkView,
    /// One per stream.
    pub drain: Vec<DrainView>,
}

/// The commandable device's state.
#[derive(Debug, Clone, Serialize)]
pub struct CscView {
    /// The summary state.
    pub state: SummaryState,
    /// Unix time (seconds) of the last state change.
    pub since_unix: f64,
    /// The last error code while in FAULT (or the last one seen), with its report.
    pub error_code: Option<i32>,
    /// What the error was.
    pub error_report: Option<String>,
}

/// One stream's ring.
#[derive(Debug, Clone, Serialize)]
pub struct RingView {
    /// `LSSTCam` or `LATISS`.
    pub stream: String,
    /// The ring's directory.
    pub location: String,
    /// Bytes the ring can hold.
    pub capacity_bytes: u64,
    /// Bytes held (not yet released by every required cursor).
    pub used_bytes: u64,
    /// `used / capacity`.
    pub fill_ratio: f64,
    /// The last durable record's sequence number.
    pub head_sequence: u64,
    /// The first record the drain has not confirmed.
    pub drain_sequence: u64,
    /// The oldest exposure still in the ring and not drained, if known.
    pub oldest_undrained_exposure: Option<u64>,
    /// Age of the oldest undrained record, seconds.
    pub oldest_undrained_age_seconds: Option<f64>,
    /// Recent append rate.
    pub append_rate_bytes_per_second: Option<f64>,
    /// At the current append rate and with the drain stopped, seconds until the ring is full.
    pub time_to_full_seconds: Option<f64>,
    /// Set once the ring failed (fail-stop): why.
    pub poisoned: Option<String>,
}

/// One stream's ingest.
#[derive(Debug, Clone, Serialize)]
pub struct IngestView {
    /// `LSSTCam` or `LATISS`.
    pub stream: String,
    /// `true` while frames are accepted (ENABLED).
    pub running: bool,
    /// The I/O path and why it was chosen (`IoUring: ...` / `Portable: ...`), empty if stopped.
    pub backend: String,
    /// Frames made durable.
    pub frames_total: u64,
    /// Payload bytes made durable.
    pub bytes_total: u64,
    /// Frames or messages refused (all kinds).
    pub rejected_total: u64,
    /// Exposures complete / incomplete (as announced by the completeness tracker).
    pub exposures_complete_total: u64,
    /// Exposures declared incomplete (timeout or disconnect).
    pub exposures_incomplete_total: u64,
}

/// The link monitor.
#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    /// `UP`, `DEGRADED`, `DOWN` or `RECOVERING`.
    pub state: String,
    /// Unix time (seconds) of the last transition.
    pub since_unix: f64,
    /// The last successful probe's round trip, milliseconds.
    pub rtt_ms: Option<f64>,
    /// What the monitor probes (`tcp 10.0.0.1:9000`).
    pub target: String,
    /// Recent transitions, oldest first.
    pub transitions: Vec<TransitionView>,
}

/// One link transition.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionView {
    /// Unix time (seconds).
    pub time_unix: f64,
    /// Previous state.
    pub from: String,
    /// New state.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// One stream's drain.
#[derive(Debug, Clone, Serialize)]
pub struct DrainView {
    /// `LSSTCam` or `LATISS`.
    pub stream: String,
    /// Paused by an operator.
    pub paused: bool,
    /// The configured rate limit, bytes per second (`None` = unlimited).
    pub rate_limit_bytes_per_second: Option<u64>,
    /// Recent upload rate, bytes per second.
    pub rate_bytes_per_second: f64,
    /// Ring bytes not yet confirmed at the base.
    pub backlog_bytes: u64,
    /// Detector files not yet confirmed at the base (estimated from the backlog).
    pub backlog_files: u64,
    /// At the recent upload rate, seconds until the backlog is empty (`None`: not draining).
    pub time_to_empty_seconds: Option<f64>,
    /// Files confirmed at the base.
    pub objects_confirmed_total: u64,
    /// Bytes uploaded and verified.
    pub bytes_uploaded_total: u64,
    /// Failed attempts (each retried).
    pub upload_failures_total: u64,
    /// Exposures fully drained.
    pub exposures_drained_total: u64,
    /// Conflicting objects found at the base (never overwritten).
    pub conflicts_total: u64,
}

/// One exposure, for `exposures [n]`.
#[derive(Debug, Clone, Serialize)]
pub struct ExposureView {
    /// `LSSTCam` or `LATISS`.
    pub stream: String,
    /// DAYOBS*100000+SEQNUM.
    pub exposure_id: u64,
    /// Segments durable in the ring.
    pub segments_durable: u32,
    /// Segments expected for this node's detectors.
    pub segments_expected: u32,
    /// `acquiring`, `complete` or `incomplete`.
    pub acquisition: String,
    /// `pending` (in the ring, not at the base) or `drained` (every file confirmed).
    pub drain: String,
}

/// One captured log line, for `log [n]`.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Unix time (seconds).
    pub time_unix: f64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`.
    pub level: String,
    /// The tracing target (module path).
    pub target: String,
    /// The message followed by its structured fields (`key=value`).
    pub message: String,
}

/// What the console (and the other front ends) may ask of the node. Implemented by
/// [`crate::node::Node`]; tests may implement it to drive the console alone.
pub trait NodeControl: Send + Sync + 'static {
    /// A snapshot of everything.
    fn status(&self) -> NodeStatus;
    /// The most recent `limit` exposures, newest first.
    fn exposures(&self, limit: usize) -> Vec<ExposureView>;
    /// The most recent `limit` log lines, oldest first.
    fn log_tail(&self, limit: usize) -> Vec<LogLine>;
    /// Pauses (`true`) or resumes (`false`) every stream's drain. Returns what was done.
    fn drain_pause(&self, paused: bool) -> Result<String, String>;
    /// Sets (or with `None` removes) the drain rate limit, bytes per second, shared by the
    /// streams. Returns what was done.
    fn drain_rate(&self, bytes_per_second: Option<u64>) -> Result<String, String>;
    /// An observatory-control command (`start`, `enable`, `disable`, `standby`, `exitControl`).
    fn csc_command(&self, command: CscCommand) -> CommandAck;
    /// The simulated fiber: cut (`true`) or restore it. An error outside simulation mode.
    fn fiber(&self, cut: bool) -> Result<String, String>;
}
