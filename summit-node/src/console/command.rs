//! The console's command language: one [`Command`] enum, its parser, which commands change state
//! (operator mode) and the help table.
//!
//! A line is split on whitespace. `--json` anywhere selects JSON output; any other word starting
//! with `--` is an error. Command words are matched without regard to ASCII case (`exitcontrol`
//! is `exitControl`); arguments (a configuration override's label) are kept as typed.

use crate::csc::CscCommand;

/// The largest count `exposures [n]` and `log [n]` accept.
pub const MAX_LIST_COUNT: usize = 1000;
/// `exposures` without a count shows this many.
pub const DEFAULT_EXPOSURES_COUNT: usize = 10;
/// `log` without a count shows this many lines.
pub const DEFAULT_LOG_LINES_COUNT: usize = 20;
/// The highest drain rate limit `drain rate` accepts, MB/s (10^6 bytes per second).
pub const MAX_DRAIN_RATE_MEGABYTES_PER_SECOND: f64 = 100_000.0;

/// Bytes in one MB (the console's rates are decimal: `drain rate 200` is 200 * 10^6 bytes/s).
pub const BYTES_PER_MEGABYTE: f64 = 1e6;

/// One console command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `help [command]`.
    Help {
        /// One command's name, or `None` for the list.
        topic: Option<String>,
    },
    /// `status`: the node at a glance.
    Status,
    /// `buffer`: every ring in detail.
    Buffer,
    /// `link`: the link monitor.
    Link,
    /// `drain`: every stream's drain.
    Drain,
    /// `drain pause` (operator).
    DrainPause,
    /// `drain resume` (operator).
    DrainResume,
    /// `drain rate N|off` (operator).
    DrainRate {
        /// The limit, bytes per second; `None` removes it.
        bytes_per_second: Option<u64>,
    },
    /// `exposures [n]`.
    Exposures {
        /// How many, newest first (1..=[`MAX_LIST_COUNT`]).
        count: usize,
    },
    /// `csc`: the observatory-control state.
    Csc,
    /// `start [override]`, `enable`, `disable`, `standby`, `exitControl` (operator).
    Control(CscCommand),
    /// `log [n]`.
    Log {
        /// How many lines, oldest first (1..=[`MAX_LIST_COUNT`]).
        count: usize,
    },
    /// `fiber cut|restore` (operator; simulation mode only).
    Fiber {
        /// `true` to cut, `false` to restore.
        cut: bool,
    },
    /// `quit` or `exit`: ends a socket session.
    Quit,
}

/// Whether a command may run in a read-only session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only shows things.
    ReadOnly,
    /// Changes the node's state: needs operator mode.
    Operator,
}

impl Command {
    /// Read-only or operator.
    pub fn access(&self) -> Access {
        match self {
            Command::DrainPause
            | Command::DrainResume
            | Command::DrainRate { .. }
            | Command::Control(_)
            | Command::Fiber { .. } => Access::Operator,
            Command::Help { .. }
            | Command::Status
            | Command::Buffer
            | Command::Link
            | Command::Drain
            | Command::Exposures { .. }
            | Command::Csc
            | Command::Log { .. }
            | Command::Quit => Access::ReadOnly,
        }
    }

    /// The command as the console spells it, without arguments (`drain pause`, `exitControl`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Help { .. } => "help",
            Command::Status => "status",
            Command::Buffer => "buffer",
            Command::Link => "link",
            Command::Drain => "drain",
            Command::DrainPause => "drain pause",
            Command::DrainResume => "drain resume",
            Command::DrainRate { .. } => "drain rate",
            Command::Exposures { .. } => "exposures",
            Command::Csc => "csc",
            Command::Control(command) => command.name(),
            Command::Log { .. } => "log",
            Command::Fiber { cut: true } => "fiber cut",
            Command::Fiber { cut: false } => "fiber restore",
            Command::Quit => "quit",
        }
    }
}

/// What was wrong with a line. The messages name the word and say what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// The first word is no command.
    #[error("unknown command '{0}'; type 'help'")]
    UnknownCommand(String),
    /// `--something` other than `--json`.
    #[error("unknown option '{0}'; the only option is '--json'")]
    UnknownOption(String),
    /// Only `--json` on the line.
    #[error("no command given; type 'help'")]
    NoCommand,
    /// More words than the command takes.
    #[error("{command}: unexpected argument '{argument}' (usage: {usage})")]
    UnexpectedArgument {
        /// The command.
        command: &'static str,
        /// The first word too many.
        argument: String,
        /// The command's usage line.
        usage: &'static str,
    },
    /// `exposures abc`, `log x`.
    #[error("{command}: '{value}' is not a count (expected 1..={max_count})")]
    NotACount {
        /// The command.
        command: &'static str,
        /// The word given.
        value: String,
        /// [`MAX_LIST_COUNT`].
        max_count: usize,
    },
    /// `exposures 0`, `log 5000`.
    #[error("{command}: {value} is out of range (expected 1..={max_count})")]
    CountOutOfRange {
        /// The command.
        command: &'static str,
        /// The number given.
        value: u64,
        /// [`MAX_LIST_COUNT`].
        max_count: usize,
    },
    /// `drain` followed by something other than `pause`, `resume`, `rate`.
    #[error("drain: unknown subcommand '{0}'; expected 'pause', 'resume' or 'rate'")]
    UnknownDrainSubcommand(String),
    /// `drain rate` without a value.
    #[error("drain rate: expected MB/s (e.g. 'drain rate 200') or 'off'")]
    DrainRateMissing,
    /// `drain rate abc`.
    #[error("drain rate: '{0}' is not a rate; expected MB/s (e.g. 'drain rate 200') or 'off'")]
    DrainRateInvalid(String),
    /// `drain rate 0`, `drain rate 1e9`.
    #[error(
        "drain rate: {0} MB/s is out of range (expected more than 0 and at most {max} MB/s; \
         to stop the drain use 'drain pause')",
        max = MAX_DRAIN_RATE_MEGABYTES_PER_SECOND
    )]
    DrainRateOutOfRange(String),
    /// `fiber` without `cut` or `restore`.
    #[error("fiber: expected 'cut' or 'restore' (usage: fiber cut|restore)")]
    FiberExpected,
    /// `help nosuchcommand`.
    #[error("help: unknown command '{0}'; type 'help' for the list")]
    UnknownHelpTopic(String),
}

/// A parsed line: the command (or `None` for an empty line) and the output format. The format
/// is known even when the command is not, so errors come out in the format asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// `--json` was on the line.
    pub json: bool,
    /// The command, `Ok(None)` for an empty line, or what was wrong.
    pub command: Result<Option<Command>, ParseError>,
}

/// One row of the help table.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CommandHelp {
    /// The command word(s), as `help <name>` takes them (`drain pause`).
    pub name: &'static str,
    /// Usage with arguments.
    pub usage: &'static str,
    /// `true` when the command needs operator mode.
    pub operator: bool,
    /// What it does.
    pub summary: &'static str,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CommandHelp] = &[
    help_row("help", "help [command]", false, "this list, or one command's usage"),
    help_row("status", "status", false, "the node at a glance"),
    help_row("buffer", "buffer", false, "per ring: capacity, use, sequences, oldest undrained, time to full"),
    help_row("link", "link", false, "link state, since when, probe round trip, recent transitions"),
    help_row("drain", "drain", false, "per stream: rate, backlog files and bytes, time to empty"),
    help_row("drain pause", "drain pause", true, "pause every stream's drain"),
    help_row("drain resume", "drain resume", true, "resume every stream's drain"),
    help_row("drain rate", "drain rate <MB/s>|off", true, "limit the drain (MB = 10^6 bytes), or lift it"),
    help_row("exposures", "exposures [n]", false, "the n newest exposures (default 10): completeness, drain"),
    help_row("csc", "csc", false, "observatory-control state, since when, error code"),
    help_row("start", "start [override]", true, "STANDBY -> DISABLED (optional configuration override)"),
    help_row("enable", "enable", true, "DISABLED -> ENABLED (acquire)"),
    help_row("disable", "disable", true, "ENABLED -> DISABLED (stop acquiring)"),
    help_row("standby", "standby", true, "DISABLED or FAULT -> STANDBY"),
    help_row("exitControl", "exitControl", true, "STANDBY -> OFFLINE; the node then exits"),
    help_row("log", "log [n]", false, "the last n log lines (default 20)"),
    help_row("fiber", "fiber cut|restore", true, "simulation only: cut or restore the simulated fiber"),
    help_row("quit", "quit", false, "end this session (also 'exit')"),
];

const fn help_row(
    name: &'static str,
    usage: &'static str,
    operator: bool,
    summary: &'static str,
) -> CommandHelp {
    CommandHelp { name, usage, operator, summary }
}

/// The help row of `name` (`drain rate`, `exitcontrol`; any ASCII case).
pub fn find_help(name: &str) -> Option<&'static CommandHelp> {
    let name = if name.eq_ignore_ascii_case("exit") { "quit" } else { name };
    COMMANDS.iter().find(|row| row.name.eq_ignore_ascii_case(name))
}

/// Parses one line (already checked by the line discipline).
pub fn parse_line(line: &str) -> ParsedLine {
    let mut json = false;
    let mut unknown_option = None;
    // At most the line's words; a line has at most MAX_LINE_BYTES bytes, so this is bounded.
    let mut words: Vec<&str> = Vec::new();
    for word in line.split_whitespace() {
        if word.eq_ignore_ascii_case("--json") {
            json = true;
        } else if word.starts_with("--") {
            unknown_option.get_or_insert(word);
        } else {
            words.push(word);
        }
    }
    let command = match unknown_option {
        Some(option) => Err(ParseError::UnknownOption(option.to_string())),
        None if words.is_empty() && json => Err(ParseError::NoCommand),
        None if words.is_empty() => Ok(None),
        None => parse_words(&words).map(Some),
    };
    ParsedLine { json, command }
}

fn parse_words(words: &[&str]) -> Result<Command, ParseError> {
    let (first, arguments) = match words.split_first() {
        Some(split) => split,
        None => return Err(ParseError::NoCommand),
    };
    let word = first.to_ascii_lowercase();
    let command = match word.as_str() {
        "help" | "?" => return parse_help(arguments),
        "status" => Command::Status,
        "buffer" => Command::Buffer,
        "link" => Command::Link,
        "drain" => return parse_drain(arguments),
        "exposures" => {
            let count = parse_count("exposures", "exposures [n]", arguments, DEFAULT_EXPOSURES_COUNT)?;
            return Ok(Command::Exposures { count });
        }
        "csc" => Command::Csc,
        "start" => return parse_start(arguments),
        "enable" => Command::Control(CscCommand::Enable),
        "disable" => Command::Control(CscCommand::Disable),
        "standby" => Command::Control(CscCommand::Standby),
        "exitcontrol" => Command::Control(CscCommand::ExitControl),
        "log" => {
            let count = parse_count("log", "log [n]", arguments, DEFAULT_LOG_LINES_COUNT)?;
            return Ok(Command::Log { count });
        }
        "fiber" => return parse_fiber(arguments),
        "quit" | "exit" => Command::Quit,
        _ => return Err(ParseError::UnknownCommand(first.to_string())),
    };
    // The commands above take no arguments.
    match arguments.first() {
        None => Ok(command),
        Some(argument) => {
            let usage = find_help(command.name()).map_or("", |row| row.usage);
            Err(ParseError::UnexpectedArgument {
                command: command.name(),
                argument: argument.to_string(),
                usage,
            })
        }
    }
}

fn parse_help(arguments: &[&str]) -> Result<Command, ParseError> {
    if arguments.is_empty() {
        return Ok(Command::Help { topic: None });
    }
    let topic = arguments.join(" ");
    match find_help(&topic).or_else(|| find_help(arguments[0])) {
        Some(row) => Ok(Command::Help { topic: Some(row.name.to_string()) }),
        None => Err(ParseError::UnknownHelpTopic(topic)),
    }
}

fn parse_drain(arguments: &[&str]) -> Result<Command, ParseError> {
    let (subcommand, rest) = match arguments.split_first() {
        None => return Ok(Command::Drain),
        Some(split) => split,
    };
    let (command, rest) = match subcommand.to_ascii_lowercase().as_str() {
        "pause" => (Command::DrainPause, rest),
        "resume" => (Command::DrainResume, rest),
        "rate" => {
            let (value, rest) = rest.split_first().ok_or(ParseError::DrainRateMissing)?;
            (Command::DrainRate { bytes_per_second: parse_drain_rate(value)? }, rest)
        }
        _ => return Err(ParseError::UnknownDrainSubcommand(subcommand.to_string())),
    };
    match rest.first() {
        None => Ok(command),
        Some(argument) => {
            let usage = find_help(command.name()).map_or("", |row| row.usage);
            Err(ParseError::UnexpectedArgument {
                command: command.name(),
                argument: argument.to_string(),
                usage,
            })
        }
    }
}

/// `200` (MB/s) -> `Some(200_000_000)` bytes per second; `off` -> `None`.
fn parse_drain_rate(value: &str) -> Result<Option<u64>, ParseError> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let megabytes_per_second: f64 = match value.parse() {
        Ok(number) if f64::is_finite(number) => number,
        _ => return Err(ParseError::DrainRateInvalid(value.to_string())),
    };
    let in_range = megabytes_per_second > 0.0 && megabytes_per_second <= MAX_DRAIN_RATE_MEGABYTES_PER_SECOND;
    let bytes_per_second = (megabytes_per_second * BYTES_PER_MEGABYTE).round();
    if !in_range || bytes_per_second < 1.0 {
        return Err(ParseError::DrainRateOutOfRange(value.to_string()));
    }
    // In range: at most 10^11, exactly representable, so the conversion is exact.
    Ok(Some(bytes_per_second as u64))
}

fn parse_count(
    command: &'static str,
    usage: &'static str,
    arguments: &[&str],
    default_count: usize,
) -> Result<usize, ParseError> {
    let (value, rest) = match arguments.split_first() {
        None => return Ok(default_count),
        Some(split) => split,
    };
    if let Some(argument) = rest.first() {
        return Err(ParseError::UnexpectedArgument { command, argument: argument.to_string(), usage });
    }
    let not_a_count =
        || ParseError::NotACount { command, value: value.to_string(), max_count: MAX_LIST_COUNT };
    if !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(not_a_count());
    }
    let number: u64 = value.parse().map_err(|_| not_a_count())?;
    match usize::try_from(number) {
        Ok(count) if (1..=MAX_LIST_COUNT).contains(&count) => Ok(count),
        _ => Err(ParseError::CountOutOfRange { command, value: number, max_count: MAX_LIST_COUNT }),
    }
}

fn parse_start(arguments: &[&str]) -> Result<Command, ParseError> {
    match arguments {
        [] => Ok(Command::Control(CscCommand::Start { configuration_override: None })),
        [label] => {
            Ok(Command::Control(CscCommand::Start { configuration_override: Some(label.to_string()) }))
        }
        [_, extra, ..] => Err(ParseError::UnexpectedArgument {
            command: "start",
            argument: extra.to_string(),
            usage: "start [override]",
        }),
    }
}

fn parse_fiber(arguments: &[&str]) -> Result<Command, ParseError> {
    let command = match arguments.first().map(|word| word.to_ascii_lowercase()) {
        Some(word) if word == "cut" => Command::Fiber { cut: true },
        Some(word) if word == "restore" => Command::Fiber { cut: false },
        _ => return Err(ParseError::FiberExpected),
    };
    match arguments.get(1) {
        None => Ok(command),
        Some(argument) => Err(ParseError::UnexpectedArgument {
            command: command.name(),
            argument: argument.to_string(),
            usage: "fiber cut|restore",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(line: &str) -> Command {
        match parse_line(line).command {
            Ok(Some(command)) => command,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse_line(line).command {
            Err(error) => error.to_string(),
            other => panic!("{line:?} gave {other:?}, not an error"),
        }
    }

    #[test]
    fn every_read_only_command_parses() {
        assert_eq!(command("help"), Command::Help { topic: None });
        assert_eq!(command("help drain rate"), Command::Help { topic: Some("drain rate".to_string()) });
        assert_eq!(command("help exitcontrol"), Command::Help { topic: Some("exitControl".to_string()) });
        assert_eq!(command("status"), Command::Status);
        assert_eq!(command("buffer"), Command::Buffer);
        assert_eq!(command("link"), Command::Link);
        assert_eq!(command("drain"), Command::Drain);
        assert_eq!(command("exposures"), Command::Exposures { count: DEFAULT_EXPOSURES_COUNT });
        assert_eq!(command("exposures 25"), Command::Exposures { count: 25 });
        assert_eq!(command("exposures 1000"), Command::Exposures { count: 1000 });
        assert_eq!(command("csc"), Command::Csc);
        assert_eq!(command("log"), Command::Log { count: DEFAULT_LOG_LINES_COUNT });
        assert_eq!(command("log 1"), Command::Log { count: 1 });
        assert_eq!(command("quit"), Command::Quit);
        assert_eq!(command("exit"), Command::Quit);
        for line in ["help", "status", "buffer", "link", "drain", "exposures 3", "csc", "log", "quit"] {
            assert_eq!(command(line).access(), Access::ReadOnly, "{line}");
        }
    }

    #[test]
    fn every_operator_command_parses() {
        assert_eq!(command("drain pause"), Command::DrainPause);
        assert_eq!(command("drain resume"), Command::DrainResume);
        assert_eq!(command("drain rate 200"), Command::DrainRate { bytes_per_second: Some(200_000_000) });
        assert_eq!(command("drain rate 12.5"), Command::DrainRate { bytes_per_second: Some(12_500_000) });
        assert_eq!(command("drain rate off"), Command::DrainRate { bytes_per_second: None });
        assert_eq!(command("start"), Command::Control(CscCommand::Start { configuration_override: None }));
        assert_eq!(
            command("start Night-2"),
            Command::Control(CscCommand::Start { configuration_override: Some("Night-2".to_string()) })
        );
        assert_eq!(command("enable"), Command::Control(CscCommand::Enable));
        assert_eq!(command("disable"), Command::Control(CscCommand::Disable));
        assert_eq!(command("standby"), Command::Control(CscCommand::Standby));
        assert_eq!(command("exitControl"), Command::Control(CscCommand::ExitControl));
        assert_eq!(command("exitcontrol"), Command::Control(CscCommand::ExitControl));
        assert_eq!(command("fiber cut"), Command::Fiber { cut: true });
        assert_eq!(command("fiber restore"), Command::Fiber { cut: false });
        for line in ["drain pause", "drain resume", "drain rate off", "start", "enable", "fiber cut"] {
            assert_eq!(command(line).access(), Access::Operator, "{line}");
        }
    }

    #[test]
    fn command_words_ignore_case_and_extra_whitespace() {
        assert_eq!(command("  STATUS \t"), Command::Status);
        assert_eq!(command("Drain\tPause"), Command::DrainPause);
        assert_eq!(command("EXITCONTROL"), Command::Control(CscCommand::ExitControl));
    }

    #[test]
    fn json_anywhere_on_the_line_selects_json() {
        for line in ["--json buffer", "buffer --json", "exposures --json 5"] {
            let parsed = parse_line(line);
            assert!(parsed.json, "{line}");
            assert!(matches!(parsed.command, Ok(Some(_))), "{line}");
        }
        let parsed = parse_line("nonsense --json");
        assert!(parsed.json);
        assert_eq!(parsed.command, Err(ParseError::UnknownCommand("nonsense".to_string())));
        assert!(!parse_line("status").json);
    }

    #[test]
    fn an_empty_line_is_no_command_and_json_alone_is_an_error() {
        assert_eq!(parse_line("").command, Ok(None));
        assert_eq!(parse_line(" \t ").command, Ok(None));
        assert_eq!(error("--json"), "no command given; type 'help'");
    }

    #[test]
    fn errors_name_what_was_wrong() {
        assert_eq!(error("foo"), "unknown command 'foo'; type 'help'");
        assert_eq!(error("exposures abc"), "exposures: 'abc' is not a count (expected 1..=1000)");
        assert_eq!(error("exposures -5"), "exposures: '-5' is not a count (expected 1..=1000)");
        assert_eq!(error("exposures 0"), "exposures: 0 is out of range (expected 1..=1000)");
        assert_eq!(error("log 1001"), "log: 1001 is out of range (expected 1..=1000)");
        assert_eq!(
            error("log 99999999999999999999999"),
            "log: '99999999999999999999999' is not a count (expected 1..=1000)"
        );
        assert_eq!(error("exposures 5 6"), "exposures: unexpected argument '6' (usage: exposures [n])");
        assert_eq!(error("drain rate"), "drain rate: expected MB/s (e.g. 'drain rate 200') or 'off'");
        assert_eq!(
            error("drain rate fast"),
            "drain rate: 'fast' is not a rate; expected MB/s (e.g. 'drain rate 200') or 'off'"
        );
        assert!(error("drain rate 0").starts_with("drain rate: 0 MB/s is out of range"));
        assert!(error("drain rate -3").starts_with("drain rate: -3 MB/s is out of range"));
        assert!(error("drain rate 1e9").contains("at most 100000 MB/s"));
        assert!(error("drain rate nan").contains("'nan' is not a rate"));
        assert!(error("drain rate inf").contains("is not a rate"));
        assert_eq!(
            error("drain stop"),
            "drain: unknown subcommand 'stop'; expected 'pause', 'resume' or 'rate'"
        );
        assert_eq!(error("drain pause now"), "drain pause: unexpected argument 'now' (usage: drain pause)");
        assert_eq!(error("status all"), "status: unexpected argument 'all' (usage: status)");
        assert_eq!(error("start a b"), "start: unexpected argument 'b' (usage: start [override])");
        assert_eq!(error("enable now"), "enable: unexpected argument 'now' (usage: enable)");
        assert_eq!(error("fiber"), "fiber: expected 'cut' or 'restore' (usage: fiber cut|restore)");
        assert_eq!(error("fiber snip"), "fiber: expected 'cut' or 'restore' (usage: fiber cut|restore)");
        assert_eq!(
            error("fiber cut twice"),
            "fiber cut: unexpected argument 'twice' (usage: fiber cut|restore)"
        );
        assert_eq!(error("help frobnicate"), "help: unknown command 'frobnicate'; type 'help' for the list");
        assert_eq!(error("status --verbose"), "unknown option '--verbose'; the only option is '--json'");
    }

    #[test]
    fn every_command_has_a_help_row_and_names_match() {
        for line in [
            "help",
            "status",
            "buffer",
            "link",
            "drain",
            "drain pause",
            "drain resume",
            "drain rate 1",
            "exposures",
            "csc",
            "start",
            "enable",
            "disable",
            "standby",
            "exitControl",
            "log",
            "quit",
        ] {
            let parsed = command(line);
            let row = find_help(parsed.name()).unwrap_or_else(|| panic!("no help row for {line}"));
            assert_eq!(row.operator, parsed.access() == Access::Operator, "{line}");
        }
        assert!(find_help("fiber").is_some_and(|row| row.operator));
    }
}
