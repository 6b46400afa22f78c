//! One console session: a parsed line in, a [`Reply`] out. The same for the serial port and the
//! socket; the front ends only move bytes and decide whether the session is in operator mode.
//!
//! A read-only session may run every command that only shows things; a command that changes
//! state ([`Access::Operator`]) is refused with a message saying how to get operator mode.
//! Every operator command, run or refused, is logged with the session's origin.

use serde::Serialize;

use crate::console::command::{find_help, parse_line, Access, Command, COMMANDS};
use crate::console::line::LineError;
use crate::console::render;
use crate::csc::{AckCode, CommandAck};
use crate::status::NodeControl;

/// The prompt of a read-only session (serial port; the socket client prints its own).
pub const PROMPT_READ_ONLY: &str = "summit> ";
/// The prompt of an operator session.
pub const PROMPT_OPERATOR: &str = "summit# ";
/// The greeting says this when the session is in operator mode (the socket client reads it to
/// choose its prompt).
pub const GREETING_OPERATOR_MARK: &str = "operator mode";

/// What a session answers to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The answer: lines separated by `\n`, no trailing newline; empty for an empty line. Holds
    /// no control character other than `\n`.
    pub text: String,
    /// `false` when the line was refused or the command failed (the client's exit code is 1).
    pub ok: bool,
    /// The session ends after this reply (`quit`).
    pub close: bool,
}

impl Reply {
    fn new(ok: bool, text: String) -> Reply {
        Reply { text: keep_newlines_only(text), ok, close: false }
    }

    fn empty() -> Reply {
        Reply { text: String::new(), ok: true, close: false }
    }
}

/// One operator's (or script's) conversation with the node.
#[derive(Debug, Clone)]
pub struct Session {
    /// Commands that change state are allowed.
    pub operator: bool,
    /// Who is on the other end, for the log (`serial /dev/ttyS0`, `socket uid 1000 pid 4242`).
    origin: String,
    /// Lines answered.
    lines_total: u64,
}

impl Session {
    /// A session whose origin in the log is `local` (e.g. the terminal of `summit-node sim`).
    pub fn new(operator: bool) -> Session {
        Session::with_origin(operator, "local")
    }

    /// A session; `origin` says who is on the other end, for the log.
    pub fn with_origin(operator: bool, origin: impl Into<String>) -> Session {
        Session { operator, origin: origin.into(), lines_total: 0 }
    }

    /// Who is on the other end.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Lines answered so far (rejected ones included).
    pub fn lines_total(&self) -> u64 {
        self.lines_total
    }

    /// `summit# ` in operator mode, `summit> ` otherwise.
    pub fn prompt(&self) -> &'static str {
        if self.operator {
            PROMPT_OPERATOR
        } else {
            PROMPT_READ_ONLY
        }
    }

    /// The first thing a session shows: the node, the version and the mode.
    pub fn greeting(&self, node: &dyn NodeControl) -> String {
        let mode = if self.operator { GREETING_OPERATOR_MARK } else { "read-only" };
        let name = render::printable(&node.status().node);
        let version = env!("CARGO_PKG_VERSION");
        format!("summit-node {version} console on {name}: {mode}; type 'help'")
    }

    /// The answer to a line the line discipline rejected.
    pub fn reject_line(&mut self, error: &LineError) -> Reply {
        self.lines_total += 1;
        Reply::new(false, error.to_string())
    }

    /// Parses and runs one line.
    pub fn handle_line(&mut self, line: &str, node: &dyn NodeControl) -> Reply {
        self.lines_total += 1;
        let parsed = parse_line(line);
        let json = parsed.json;
        let command = match parsed.command {
            Ok(None) => return Reply::empty(),
            Ok(Some(command)) => command,
            Err(error) => return failure(json, None, &error.to_string()),
        };
        let (origin, name) = (&self.origin, command.name());
        if command.access() == Access::Operator {
            if !self.operator {
                tracing::warn!(%origin, command = name, "console: refused, read-only");
                return failure(json, Some(command.name()), &permission_denied(command.name()));
            }
            tracing::info!(%origin, command = name, "console: operator command");
        }
        let reply = self.execute(&command, json, node);
        if command.access() == Access::Operator {
            tracing::info!(%origin, command = name, ok = reply.ok, "console: operator command done");
        }
        reply
    }

    fn execute(&self, command: &Command, json: bool, node: &dyn NodeControl) -> Reply {
        let name = command.name();
        let now_unix_seconds = now_unix_seconds();
        match command {
            Command::Help { topic } => {
                let help = topic.as_deref().and_then(find_help);
                let text = || render::render_help(help, self.operator);
                match help {
                    Some(row) => success(json, name, row, text),
                    None => success(json, name, &COMMANDS, text),
                }
            }
            Command::Status => {
                let status = node.status();
                success(json, name, &status, || render::render_status(&status, now_unix_seconds))
            }
            Command::Buffer => {
                let rings = node.status().rings;
                success(json, name, &rings, || render::render_buffer(&rings))
            }
            Command::Link => {
                let link = node.status().link;
                success(json, name, &link, || render::render_link(&link, now_unix_seconds))
            }
            Command::Drain => {
                let drains = node.status().drain;
                success(json, name, &drains, || render::render_drain(&drains))
            }
            Command::Csc => {
                let csc = node.status().csc;
                success(json, name, &csc, || render::render_csc(&csc, now_unix_seconds))
            }
            Command::Exposures { count } => {
                let mut exposures = node.exposures(*count);
                exposures.truncate(*count);
                success(json, name, &exposures, || render::render_exposures(&exposures))
            }
            Command::Log { count } => {
                let mut lines = node.log_tail(*count);
                // Oldest first: keep the newest `count`.
                let excess = lines.len().saturating_sub(*count);
                lines.drain(..excess);
                success(json, name, &lines, || render::render_log(&lines))
            }
            Command::DrainPause => action(json, name, node.drain_pause(true)),
            Command::DrainResume => action(json, name, node.drain_pause(false)),
            Command::DrainRate { bytes_per_second } => action(json, name, node.drain_rate(*bytes_per_second)),
            Command::Fiber { cut } => action(json, name, node.fiber(*cut)),
            Command::Control(csc_command) => acknowledged(json, &node.csc_command(csc_command.clone())),
            Command::Quit => {
                let mut reply = success(json, name, &Message { message: "bye" }, || "bye".to_string());
                reply.close = true;
                reply
            }
        }
    }
}

/// The refusal a read-only session gets for an operator command.
pub fn permission_denied(command_name: &str) -> String {
    format!(
        "permission denied: '{command_name}' changes state and needs operator mode (serial: operator = \
         true for this port in the configuration; socket: membership of the operator group)"
    )
}

#[derive(Serialize)]
struct Message<T: Serialize> {
    message: T,
}

/// An acknowledgement with its numeric code, for JSON.
#[derive(Serialize)]
struct AckData<'a> {
    command: &'a str,
    ack: AckCode,
    ack_code: i32,
    result: &'a str,
}

fn success<T: Serialize>(json: bool, name: &str, data: &T, text: impl FnOnce() -> String) -> Reply {
    if json {
        Reply::new(true, render::json_ok(name, data))
    } else {
        Reply::new(true, text())
    }
}

fn failure(json: bool, name: Option<&str>, error: &str) -> Reply {
    if json {
        Reply::new(false, render::json_error(name, error))
    } else {
        Reply::new(false, error.to_string())
    }
}

/// A node action's result: what was done, or why not.
fn action(json: bool, name: &str, result: Result<String, String>) -> Reply {
    match result {
        Ok(done) => success(json, name, &Message { message: &done }, || render::printable(&done)),
        Err(error) => failure(json, Some(name), &format!("{name} failed: {}", render::printable(&error))),
    }
}

/// An observatory-control command's acknowledgement; positive codes are success.
fn acknowledged(json: bool, ack: &CommandAck) -> Reply {
    let ok = ack.ack.code() > 0;
    let text = render::render_ack(ack);
    if !json {
        return Reply::new(ok, text);
    }
    let data = AckData { command: &ack.command, ack: ack.ack, ack_code: ack.ack.code(), result: &ack.result };
    if ok {
        Reply::new(true, render::json_ok(&ack.command, &data))
    } else {
        let error = text.replace('\n', ": ");
        Reply::new(false, render::json_error_with(Some(&ack.command), &error, Some(&data)))
    }
}

/// Replaces every control character but `\n` (a reply must never carry one to a terminal or
/// into the socket protocol, whose reply terminator starts with EOT).
fn keep_newlines_only(text: String) -> String {
    if !text.chars().any(|character| character.is_control() && character != '\n') {
        return text;
    }
    text.chars()
        .map(|character| if character.is_control() && character != '\n' { '\u{fffd}' } else { character })
        .collect()
}

fn now_unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since_epoch| since_epoch.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_never_carry_control_characters_other_than_newline() {
        assert_eq!(keep_newlines_only("a\nb".to_string()), "a\nb");
        assert_eq!(keep_newlines_only("\u{4}ok\r\n\x1b".to_string()), "\u{fffd}ok\u{fffd}\n\u{fffd}");
    }

    #[test]
    fn permission_denied_names_the_command_and_how_to_get_operator_mode() {
        assert_eq!(
            permission_denied("drain pause"),
            "permission denied: 'drain pause' changes state and needs operator mode (serial: operator = \
             true for this port in the configuration; socket: membership of the operator group)"
        );
    }
}
