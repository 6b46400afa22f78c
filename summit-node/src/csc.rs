//! The node as a commandable device of the observatory control system (a CSC, as in ts_salobj):
//! summary states, commands and their acknowledgement codes, the state machine [`Csc`] that
//! decides every transition in one place, and the events a CSC publishes ([`CscEvent`])
//! (../shared/domain.md, "Observatory Control System devices").
//!
//! # The state machine
//!
//! ```text
//!            start              enable
//!  STANDBY ---------> DISABLED ---------> ENABLED
//!     ^  <---------      ^     <---------
//!     |    standby       |       disable
//!     | exitControl      |                    any state but OFFLINE --fault()--> FAULT
//!     v                  |                    FAULT --standby--> STANDBY (the only way out)
//!  OFFLINE (the process exits)
//! ```
//!
//! [`Csc`] is pure: no I/O, no threads, no clock (time comes in as Unix nanoseconds). A command
//! runs in three steps, so the node performs the side effects between them and the machine stays
//! the one place that decides:
//!
//! 1. [`Csc::begin`] checks the command against the current state. A command not valid there is
//!    rejected with its final acknowledgement (`FAILED`, see below) and changes nothing.
//! 2. The node does the work (open the rings, start or stop the ingest, ...).
//! 3. [`Csc::complete`] enters the target state and returns the events to publish
//!    (`summaryState`), or [`Csc::failed`] leaves the state unchanged and returns the `FAILED`
//!    acknowledgement, as ts_salobj does when a `begin_<command>` hook raises.
//!
//! [`Csc::fault`] moves to FAULT from any state but OFFLINE and returns `errorCode` then
//! `summaryState`, in that order (domain.md). Only `standby` leaves FAULT. Acquisition is allowed
//! in ENABLED only ([`Csc::acquisition_allowed`]).
//!
//! # Acknowledgement of a command not valid in the current state: `FAILED` (-302)
//!
//! ts_salobj (`BaseCsc._do_change_state`) raises `ExpectedError("{cmd} not allowed in state
//! {state}")`, and its command reader (`topics/controller_command.py`, `_run_callback`) turns
//! every exception of a command callback, `ExpectedError` included, into a final acknowledgement
//! `CMD_FAILED` (-302) with `result = "Failed: {exception}"`. `CMD_NOACK` (-301) is not sent by a
//! CSC at all: it is what a *remote* reports when it timed out without seeing any
//! acknowledgement (`AckTimeoutError`). So an invalid transition is acknowledged `FAILED`, with a
//! result naming the command, the current state and the states the command is valid from:
//! `enable is not valid in STANDBY (valid from DISABLED)`.
//!
//! # Events as JSON lines, and their Kafka topics
//!
//! [`CscEvent::to_json_line`] writes one event as one line (no newline):
//!
//! ```text
//! {"topic":"lsst.sal.SummitNode.logevent_summaryState","private_sndStamp":1795000037.25,
//!  "private_seqNum":3,"summaryState":2}
//! ```
//!
//! - `topic` is the Kafka topic the future adapter writes to: `lsst.sal.{CSC}.logevent_{name}`
//!   with `CSC` = [`CSC_NAME`] (`SummitNode`); every event, the heartbeat included, is a
//!   `logevent_` topic, as in ts_salobj. Commands would arrive on `lsst.sal.SummitNode.command_{x}`
//!   and be acknowledged on `lsst.sal.SummitNode.ackcmd`.
//! - `private_sndStamp` is the send time in TAI Unix seconds (UTC Unix seconds plus
//!   [`TAI_MINUS_UTC_SECONDS`]), as SAL stamps it; `private_seqNum` counts per topic from 1, as a
//!   SAL writer does. The adapter maps both to the Avro fields of the same names and adds the
//!   fields this file leaves out (`salIndex` 0, `private_origin` (pid), `private_identity`
//!   (`SummitNode`), `private_efdStamp`, `private_kafkaStamp`, `private_revCode` from the schema).
//! - The remaining keys are the topic's own fields, spelled exactly as in the SAL generic
//!   events (camelCase): the adapter passes them through unchanged into the Avro record.

use serde::Serialize;

use crate::status::CscView;

/// The CSC's name in topic names (`lsst.sal.SummitNode.logevent_summaryState`).
pub const CSC_NAME: &str = "SummitNode";

/// TAI minus UTC, seconds: 37 since 2017-01-01 (IERS Bulletin C); no leap second has been
/// announced after it. SAL stamps (`private_sndStamp`) are TAI Unix seconds.
pub const TAI_MINUS_UTC_SECONDS: f64 = 37.0;

/// The heartbeat period, seconds (ts_salobj `HEARTBEAT_INTERVAL`).
pub const HEARTBEAT_INTERVAL_SECONDS: u64 = 1;

/// Error codes published with `errorCode` on the way to FAULT. Stable numbers: operators and
/// the observatory's alarms key on them.
pub mod error_codes {
    /// A ring failed (a write or fsync error): it is poisoned and refuses writes (fail-stop).
    pub const RING_POISONED: i32 = 100;
    /// An ingest could not start, or stopped on its own.
    pub const INGEST_FAILED: i32 = 101;
    /// The configuration (or a configuration override) is invalid.
    pub const CONFIG_INVALID: i32 = 102;
    /// A drain stopped on an error it cannot retry (ring read, manifest write).
    pub const DRAIN_FAILED: i32 = 103;
    /// A ring could not be opened or created at `start`.
    pub const RING_OPEN_FAILED: i32 = 104;
    /// The events publisher (socket or file) failed.
    pub const EVENTS_FAILED: i32 = 105;
    /// A bug: an invariant of the node did not hold.
    pub const INTERNAL_ERROR: i32 = 199;

    /// The constant's name for a code (`RING_POISONED`), or `None` for an unknown code.
    pub fn name(code: i32) -> Option<&'static str> {
        match code {
            RING_POISONED => Some("RING_POISONED"),
            INGEST_FAILED => Some("INGEST_FAILED"),
            CONFIG_INVALID => Some("CONFIG_INVALID"),
            DRAIN_FAILED => Some("DRAIN_FAILED"),
            RING_OPEN_FAILED => Some("RING_OPEN_FAILED"),
            EVENTS_FAILED => Some("EVENTS_FAILED"),
            INTERNAL_ERROR => Some("INTERNAL_ERROR"),
            _ => None,
        }
    }
}

/// The summary state, with the observatory's numeric codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SummaryState {
    /// Configured, not acquiring (1).
    Disabled,
    /// Acquiring (2).
    Enabled,
    /// An unrecoverable error; only `standby` leaves it (3).
    Fault,
    /// Exited control (4).
    Offline,
    /// Not configured (5).
    Standby,
}

impl SummaryState {
    /// The numeric code published in `summaryState`.
    pub fn code(self) -> i32 {
        match self {
            SummaryState::Disabled => 1,
            SummaryState::Enabled => 2,
            SummaryState::Fault => 3,
            SummaryState::Offline => 4,
            SummaryState::Standby => 5,
        }
    }

    /// The state of a numeric code, or `None` if the code is not a summary state.
    pub fn from_code(code: i32) -> Option<SummaryState> {
        match code {
            1 => Some(SummaryState::Disabled),
            2 => Some(SummaryState::Enabled),
            3 => Some(SummaryState::Fault),
            4 => Some(SummaryState::Offline),
            5 => Some(SummaryState::Standby),
            _ => None,
        }
    }

    /// `DISABLED`, `ENABLED`, `FAULT`, `OFFLINE`, `STANDBY`.
    pub fn name(self) -> &'static str {
        match self {
            SummaryState::Disabled => "DISABLED",
            SummaryState::Enabled => "ENABLED",
            SummaryState::Fault => "FAULT",
            SummaryState::Offline => "OFFLINE",
            SummaryState::Standby => "STANDBY",
        }
    }
}

/// A state-transition command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CscCommand {
    /// STANDBY -> DISABLED, optionally naming a configuration override.
    Start {
        /// A configuration override (a label the node knows), or `None` for the default.
        configuration_override: Option<String>,
    },
    /// DISABLED -> ENABLED.
    Enable,
    /// ENABLED -> DISABLED.
    Disable,
    /// DISABLED or FAULT -> STANDBY.
    Standby,
    /// STANDBY -> OFFLINE; the process then exits.
    ExitControl,
}

impl CscCommand {
    /// The command's name as the observatory spells it (`start`, ..., `exitControl`).
    pub fn name(&self) -> &'static str {
        match self {
            CscCommand::Start { .. } => "start",
            CscCommand::Enable => "enable",
            CscCommand::Disable => "disable",
            CscCommand::Standby => "standby",
            CscCommand::ExitControl => "exitControl",
        }
    }

    /// The command of a name (`start` without an override); `None` for an unknown name.
    /// Names are matched exactly, as the observatory spells them.
    pub fn from_name(name: &str) -> Option<CscCommand> {
        match name {
            "start" => Some(CscCommand::Start { configuration_override: None }),
            "enable" => Some(CscCommand::Enable),
            "disable" => Some(CscCommand::Disable),
            "standby" => Some(CscCommand::Standby),
            "exitControl" => Some(CscCommand::ExitControl),
            _ => None,
        }
    }

    /// The states this command is valid from (the transition table, part one).
    pub fn valid_from(&self) -> &'static [SummaryState] {
        match self {
            CscCommand::Start { .. } => &[SummaryState::Standby],
            CscCommand::Enable => &[SummaryState::Disabled],
            CscCommand::Disable => &[SummaryState::Enabled],
            CscCommand::Standby => &[SummaryState::Disabled, SummaryState::Fault],
            CscCommand::ExitControl => &[SummaryState::Standby],
        }
    }

    /// The state this command leads to (the transition table, part two).
    pub fn target(&self) -> SummaryState {
        match self {
            CscCommand::Start { .. } => SummaryState::Disabled,
            CscCommand::Enable => SummaryState::Enabled,
            CscCommand::Disable => SummaryState::Disabled,
            CscCommand::Standby => SummaryState::Standby,
            CscCommand::ExitControl => SummaryState::Offline,
        }
    }
}

/// Command acknowledgement codes (ts_salobj `SalRetCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AckCode {
    /// Received (300).
    CmdAck,
    /// Under way (301).
    InProgress,
    /// Done (303).
    Complete,
    /// Not allowed to this sender (-300).
    NoPerm,
    /// No acknowledgement seen: what a remote reports when it timed out waiting (-301). A CSC
    /// does not send it; a command invalid in the current state is `Failed`.
    NoAck,
    /// Tried and failed, or not valid in the current state (-302).
    Failed,
    /// Aborted (-303).
    Aborted,
    /// Timed out (-304).
    Timeout,
}

impl AckCode {
    /// The numeric code.
    pub fn code(self) -> i32 {
        match self {
            AckCode::CmdAck => 300,
            AckCode::InProgress => 301,
            AckCode::Complete => 303,
            AckCode::NoPerm => -300,
            AckCode::NoAck => -301,
            AckCode::Failed => -302,
            AckCode::Aborted => -303,
            AckCode::Timeout => -304,
        }
    }
}

/// The final acknowledgement of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandAck {
    /// The command's name.
    pub command: String,
    /// The code.
    pub ack: AckCode,
    /// Why, in words (empty when `Complete`).
    pub result: String,
}

impl CommandAck {
    /// `COMPLETE`, with an empty result.
    pub fn complete(command: &CscCommand) -> CommandAck {
        CommandAck { command: command.name().to_owned(), ack: AckCode::Complete, result: String::new() }
    }

    /// `FAILED`, saying why.
    pub fn failed(command: &CscCommand, result: impl Into<String>) -> CommandAck {
        CommandAck { command: command.name().to_owned(), ack: AckCode::Failed, result: result.into() }
    }
}

/// The Python `logging` level numbers `logMessage` and `logLevel` carry.
pub mod log_levels {
    /// `logging.ERROR`.
    pub const ERROR: i32 = 40;
    /// `logging.WARNING`.
    pub const WARNING: i32 = 30;
    /// `logging.INFO`.
    pub const INFO: i32 = 20;
    /// `logging.DEBUG`.
    pub const DEBUG: i32 = 10;
    /// Below `DEBUG` (tracing's TRACE; Python has no name for 5).
    pub const TRACE: i32 = 5;

    /// The Python level of a tracing level.
    pub fn from_tracing(level: &tracing::Level) -> i32 {
        match *level {
            tracing::Level::ERROR => ERROR,
            tracing::Level::WARN => WARNING,
            tracing::Level::INFO => INFO,
            tracing::Level::DEBUG => DEBUG,
            tracing::Level::TRACE => TRACE,
        }
    }
}

/// The topics this CSC publishes (all SAL generic events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventTopic {
    /// `logevent_summaryState`.
    SummaryState,
    /// `logevent_heartbeat`.
    Heartbeat,
    /// `logevent_errorCode`.
    ErrorCode,
    /// `logevent_logMessage`.
    LogMessage,
    /// `logevent_softwareVersions`.
    SoftwareVersions,
    /// `logevent_configurationApplied`.
    ConfigurationApplied,
    /// `logevent_simulationMode`.
    SimulationMode,
    /// `logevent_logLevel`.
    LogLevel,
}

impl EventTopic {
    /// Every topic, in [`EventTopic::index`] order.
    pub const ALL: [EventTopic; 8] = [
        EventTopic::SummaryState,
        EventTopic::Heartbeat,
        EventTopic::ErrorCode,
        EventTopic::LogMessage,
        EventTopic::SoftwareVersions,
        EventTopic::ConfigurationApplied,
        EventTopic::SimulationMode,
        EventTopic::LogLevel,
    ];

    /// A dense index (0..8), for per-topic tables of fixed size.
    pub fn index(self) -> usize {
        match self {
            EventTopic::SummaryState => 0,
            EventTopic::Heartbeat => 1,
            EventTopic::ErrorCode => 2,
            EventTopic::LogMessage => 3,
            EventTopic::SoftwareVersions => 4,
            EventTopic::ConfigurationApplied => 5,
            EventTopic::SimulationMode => 6,
            EventTopic::LogLevel => 7,
        }
    }

    /// The SAL name without prefix (`summaryState`).
    pub fn name(self) -> &'static str {
        match self {
            EventTopic::SummaryState => "summaryState",
            EventTopic::Heartbeat => "heartbeat",
            EventTopic::ErrorCode => "errorCode",
            EventTopic::LogMessage => "logMessage",
            EventTopic::SoftwareVersions => "softwareVersions",
            EventTopic::ConfigurationApplied => "configurationApplied",
            EventTopic::SimulationMode => "simulationMode",
            EventTopic::LogLevel => "logLevel",
        }
    }

    /// The Kafka topic (`lsst.sal.SummitNode.logevent_summaryState`).
    pub fn kafka_topic(self) -> &'static str {
        match self {
            EventTopic::SummaryState => "lsst.sal.SummitNode.logevent_summaryState",
            EventTopic::Heartbeat => "lsst.sal.SummitNode.logevent_heartbeat",
            EventTopic::ErrorCode => "lsst.sal.SummitNode.logevent_errorCode",
            EventTopic::LogMessage => "lsst.sal.SummitNode.logevent_logMessage",
            EventTopic::SoftwareVersions => "lsst.sal.SummitNode.logevent_softwareVersions",
            EventTopic::ConfigurationApplied => "lsst.sal.SummitNode.logevent_configurationApplied",
            EventTopic::SimulationMode => "lsst.sal.SummitNode.logevent_simulationMode",
            EventTopic::LogLevel => "lsst.sal.SummitNode.logevent_logLevel",
        }
    }

    /// `true` for state-like topics whose latest value a subscriber that connects later should
    /// still see (SAL keeps the last event of a topic for late joiners); `false` for the
    /// heartbeat and log messages.
    pub fn is_latched(self) -> bool {
        !matches!(self, EventTopic::Heartbeat | EventTopic::LogMessage)
    }
}

/// One event, with the SAL generic event's fields (serialised with the SAL field names).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CscEvent {
    /// The summary state changed (or is announced at start).
    #[serde(rename_all = "camelCase")]
    SummaryState {
        /// [`SummaryState::code`].
        summary_state: i32,
    },
    /// Alive: every [`HEARTBEAT_INTERVAL_SECONDS`], in every state.
    Heartbeat,
    /// Why the CSC went to FAULT; published right before `summaryState(FAULT)`.
    #[serde(rename_all = "camelCase")]
    ErrorCode {
        /// One of [`error_codes`].
        error_code: i32,
        /// What happened, in words.
        error_report: String,
        /// Where, if known (empty otherwise).
        traceback: String,
    },
    /// A log message forwarded to the observatory.
    #[serde(rename_all = "camelCase")]
    LogMessage {
        /// The logger (tracing target).
        name: String,
        /// A Python logging level ([`log_levels`]).
        level: i32,
        /// The message.
        message: String,
        /// A traceback, or empty.
        traceback: String,
        /// Source file, or empty.
        file_path: String,
        /// Function (module path), or empty.
        function_name: String,
        /// Source line, or 0.
        line_number: i32,
        /// The process id.
        process: i32,
    },
    /// Versions of the software (published once at start).
    #[serde(rename_all = "camelCase")]
    SoftwareVersions {
        /// SAL version (`?`: SAL is not used).
        sal_version: String,
        /// ts_xml version (`?`: no XML interface definition yet).
        xml_version: String,
        /// OpenSplice version (`?`: no DDS).
        open_splice_version: String,
        /// This software's version.
        csc_version: String,
        /// `name=version` pairs, comma separated.
        subsystem_versions: String,
    },
    /// The configuration in force (published when `start` completes).
    #[serde(rename_all = "camelCase")]
    ConfigurationApplied {
        /// Names of the configurations applied, comma separated.
        configurations: String,
        /// Version of the configuration (a file's version or label).
        version: String,
        /// Where it came from (`file:///etc/summit-node/summit-node.toml`).
        url: String,
        /// The configuration schema's version.
        schema_version: String,
        /// Other events carrying configuration, comma separated.
        other_info: String,
    },
    /// 0 = real hardware; 1 = `summit-node sim`.
    SimulationMode {
        /// The mode.
        mode: i32,
    },
    /// The log level of a subsystem changed.
    LogLevel {
        /// A Python logging level ([`log_levels`]).
        level: i32,
        /// The subsystem (empty: the CSC itself).
        subsystem: String,
    },
}

/// The line a publisher writes: the topic and SAL's private fields, then the event's fields.
#[derive(Serialize)]
struct EventLine<'a> {
    topic: &'static str,
    #[serde(rename = "private_sndStamp")]
    snd_stamp_tai_seconds: f64,
    #[serde(rename = "private_seqNum")]
    seq_num: u64,
    #[serde(flatten)]
    event: &'a CscEvent,
}

impl CscEvent {
    /// The event's topic.
    pub fn topic(&self) -> EventTopic {
        match self {
            CscEvent::SummaryState { .. } => EventTopic::SummaryState,
            CscEvent::Heartbeat => EventTopic::Heartbeat,
            CscEvent::ErrorCode { .. } => EventTopic::ErrorCode,
            CscEvent::LogMessage { .. } => EventTopic::LogMessage,
            CscEvent::SoftwareVersions { .. } => EventTopic::SoftwareVersions,
            CscEvent::ConfigurationApplied { .. } => EventTopic::ConfigurationApplied,
            CscEvent::SimulationMode { .. } => EventTopic::SimulationMode,
            CscEvent::LogLevel { .. } => EventTopic::LogLevel,
        }
    }

    /// `summaryState` of a state.
    pub fn summary_state(state: SummaryState) -> CscEvent {
        CscEvent::SummaryState { summary_state: state.code() }
    }

    /// `softwareVersions` of this build: SAL, XML and OpenSplice versions `?` (not used).
    pub fn software_versions() -> CscEvent {
        CscEvent::SoftwareVersions {
            sal_version: "?".into(),
            xml_version: "?".into(),
            open_splice_version: "?".into(),
            csc_version: env!("CARGO_PKG_VERSION").into(),
            subsystem_versions: String::new(),
        }
    }

    /// `simulationMode`: 1 in `summit-node sim`, 0 on real hardware.
    pub fn simulation_mode(simulation: bool) -> CscEvent {
        CscEvent::SimulationMode { mode: i32::from(simulation) }
    }

    /// Writes the event as one JSON line (without the newline) into `line` (cleared first), with
    /// its SAL stamps: `private_sndStamp` = `now_unix_ns` in TAI seconds, `private_seqNum` =
    /// `seq_num`.
    pub fn write_json_line(&self, seq_num: u64, now_unix_ns: u64, line: &mut Vec<u8>) {
        line.clear();
        let stamped = EventLine {
            topic: self.topic().kafka_topic(),
            snd_stamp_tai_seconds: tai_unix_seconds(now_unix_ns),
            seq_num,
            event: self,
        };
        // Serialising plain strings and numbers into a Vec cannot fail.
        serde_json::to_writer(&mut *line, &stamped).expect("a CscEvent serialises to JSON");
        debug_assert!(!line.contains(&b'\n'), "JSON escapes newlines in strings");
    }

    /// [`CscEvent::write_json_line`] into a new `String`.
    pub fn to_json_line(&self, seq_num: u64, now_unix_ns: u64) -> String {
        let mut line = Vec::new();
        self.write_json_line(seq_num, now_unix_ns, &mut line);
        String::from_utf8(line).expect("serde_json writes UTF-8")
    }
}

/// TAI Unix seconds of a UTC Unix time in nanoseconds (SAL's time stamps).
pub fn tai_unix_seconds(now_unix_ns: u64) -> f64 {
    now_unix_ns as f64 / 1e9 + TAI_MINUS_UTC_SECONDS
}

/// The observatory-control state machine: pure (no I/O, threads or clock), deciding every
/// transition in one place. See the module documentation for the protocol.
#[derive(Debug, Clone)]
pub struct Csc {
    state: SummaryState,
    since_unix_ns: u64,
    /// The command between `begin` and `complete`/`failed`.
    pending: Option<CscCommand>,
    /// The last error that led to FAULT (kept after leaving FAULT, for the console).
    last_error: Option<(i32, String)>,
}

impl Csc {
    /// A CSC in STANDBY (where every CSC starts) since `now_unix_ns`.
    pub fn new(now_unix_ns: u64) -> Csc {
        Csc { state: SummaryState::Standby, since_unix_ns: now_unix_ns, pending: None, last_error: None }
    }

    /// The summary state.
    pub fn state(&self) -> SummaryState {
        self.state
    }

    /// When the current state was entered, Unix nanoseconds.
    pub fn since_unix_ns(&self) -> u64 {
        self.since_unix_ns
    }

    /// The state and when it was entered (Unix nanoseconds).
    pub fn view(&self) -> (SummaryState, u64) {
        (self.state, self.since_unix_ns)
    }

    /// The state for the status views; `error_code`/`error_report` are the last error that
    /// led to FAULT, if any (kept after `standby`, so the console can still say what happened).
    pub fn status_view(&self) -> CscView {
        CscView {
            state: self.state,
            since_unix: self.since_unix_ns as f64 / 1e9,
            error_code: self.last_error.as_ref().map(|(code, _)| *code),
            error_report: self.last_error.as_ref().map(|(_, report)| report.clone()),
        }
    }

    /// The last error that led to FAULT: code and report.
    pub fn last_error(&self) -> Option<(i32, &str)> {
        self.last_error.as_ref().map(|(code, report)| (*code, report.as_str()))
    }

    /// The command begun and not yet completed or failed.
    pub fn pending(&self) -> Option<&CscCommand> {
        self.pending.as_ref()
    }

    /// `true` in ENABLED only: the only state that accepts frames.
    pub fn acquisition_allowed(&self) -> bool {
        self.state == SummaryState::Enabled
    }

    /// `true` once `exitControl` completed: the process should exit.
    pub fn exit_requested(&self) -> bool {
        self.state == SummaryState::Offline
    }

    /// What a CSC publishes when it starts: `softwareVersions`, `simulationMode`, then the
    /// initial `summaryState`.
    pub fn startup_events(&self, simulation: bool, _now_unix_ns: u64) -> Vec<CscEvent> {
        vec![
            CscEvent::software_versions(),
            CscEvent::simulation_mode(simulation),
            CscEvent::summary_state(self.state),
        ]
    }

    /// `configurationApplied` for a configuration named `label` (published once `start`
    /// completes).
    pub fn configuration_applied(&self, label: &str) -> CscEvent {
        CscEvent::ConfigurationApplied {
            configurations: label.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            url: String::new(),
            schema_version: "v1".to_owned(),
            other_info: String::new(),
        }
    }

    /// Step 1 of a command: checks it against the current state. `Ok(target)`: the node now
    /// performs the side effects and then calls [`Csc::complete`] or [`Csc::failed`]. `Err`:
    /// the final acknowledgement (`FAILED`), nothing changed.
    pub fn begin(&mut self, command: &CscCommand) -> Result<SummaryState, CommandAck> {
        if let Some(pending) = &self.pending {
            let result = format!("{} rejected: {} is still in progress", command.name(), pending.name());
            return Err(CommandAck::failed(command, result));
        }
        if !command.valid_from().contains(&self.state) {
            return Err(CommandAck::failed(command, self.invalid_transition_reason(command)));
        }
        self.pending = Some(command.clone());
        Ok(command.target())
    }

    /// Step 3 of a command that succeeded: enters `target` and returns the events to publish
    /// (`summaryState`). If a fault came in while the command ran, the fault wins: the state
    /// stays FAULT and nothing is returned (check [`Csc::state`] before acknowledging `COMPLETE`)
    /// -- except for `standby`, which is valid from FAULT and leaves it as usual.
    ///
    /// # Panics
    /// If no command was begun, or `target` is not the begun command's target (a bug).
    pub fn complete(&mut self, target: SummaryState, now_unix_ns: u64) -> Vec<CscEvent> {
        let pending = self.pending.take();
        let pending = pending.expect("Csc::complete without Csc::begin");
        assert_eq!(pending.target(), target, "Csc::complete with another target than begin's command");
        if self.state == SummaryState::Fault && !pending.valid_from().contains(&SummaryState::Fault) {
            return Vec::new();
        }
        self.enter(target, now_unix_ns);
        vec![CscEvent::summary_state(target)]
    }

    /// Step 3 of a command whose side effects failed: the state is unchanged and the final
    /// acknowledgement is `FAILED` with `reason`.
    ///
    /// # Panics
    /// If `command` is not the command begun (a bug).
    pub fn failed(&mut self, command: &CscCommand, reason: &str) -> CommandAck {
        let pending = self.pending.take();
        assert_eq!(pending.as_ref(), Some(command), "Csc::failed for a command that was not begun");
        let result = format!("{} failed; remaining in {}: {reason}", command.name(), self.state.name());
        CommandAck::failed(command, result)
    }

    /// An unrecoverable error: enters FAULT (from any state but OFFLINE) and returns
    /// `errorCode` then `summaryState(FAULT)`, in that order. A fault while in FAULT publishes
    /// both again with the new error (as ts_salobj does). In OFFLINE (the process is exiting)
    /// nothing changes and nothing is returned.
    pub fn fault(
        &mut self,
        error_code: i32,
        report: &str,
        traceback: &str,
        now_unix_ns: u64,
    ) -> Vec<CscEvent> {
        if self.state == SummaryState::Offline {
            return Vec::new();
        }
        self.last_error = Some((error_code, report.to_owned()));
        if self.state != SummaryState::Fault {
            self.enter(SummaryState::Fault, now_unix_ns);
        }
        vec![
            CscEvent::ErrorCode {
                error_code,
                error_report: report.to_owned(),
                traceback: traceback.to_owned(),
            },
            CscEvent::summary_state(SummaryState::Fault),
        ]
    }

    fn enter(&mut self, state: SummaryState, now_unix_ns: u64) {
        self.state = state;
        self.since_unix_ns = now_unix_ns;
    }

    /// `enable is not valid in STANDBY (valid from DISABLED)`, and in FAULT what the fault was
    /// and how to leave it.
    fn invalid_transition_reason(&self, command: &CscCommand) -> String {
        let valid: Vec<&str> = command.valid_from().iter().map(|state| state.name()).collect();
        let mut reason = format!(
            "{} is not valid in {} (valid from {})",
            command.name(),
            self.state.name(),
            valid.join(", ")
        );
        if self.state == SummaryState::Fault {
            if let Some((code, report)) = &self.last_error {
                reason.push_str(&format!("; FAULT errorCode={code}: {report}"));
            }
            reason.push_str("; send standby to leave FAULT");
        }
        reason
    }
}
