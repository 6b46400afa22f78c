//! The node as a commandable device of the observatory control system (a CSC, as in ts_salobj):
//! summary states, commands and their acknowledgement codes (../shared/domain.md).

use serde::Serialize;

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
    /// Not acknowledged: not valid now, e.g. in this state (-301).
    NoAck,
    /// Tried and failed (-302).
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
