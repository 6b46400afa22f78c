//! `hw-sim-link-proxy`: command-line front end to [`hw_sim::link_proxy::LinkProxy`], a TCP fault
//! proxy between summit and base.
//!
//! Forwards every connection accepted on `--listen` to `--upstream`, optionally with a bandwidth
//! limit, a latency and a flapping schedule, and takes control commands on stdin, one per line
//! (see `--help`). Every command answers exactly one line on stdout: `ok ...` or `error: ...`.
//! The first stdout line is `ok listening <addr> upstream <addr>`, so `--listen 127.0.0.1:0`
//! can be used and the chosen port read back.

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hw_sim::link_proxy::{CutMode, FlapSchedule, LinkControl, LinkProxy, LinkState, MAX_SCHEDULE_STEPS};

/// Longest accepted control line in bytes (without the newline); longer lines are rejected.
const MAX_LINE_BYTES: usize = 1024;
/// Longest accepted latency (anything longer is surely a typo).
const MAX_LATENCY: Duration = Duration::from_secs(60);

const CONTROL_HELP: &str = "\
CONTROL COMMANDS (stdin, one per line; each answers one line `ok ...` or `error: ...`):
  cut reset          shut down existing connections; new ones are accepted then closed
  cut blackhole      drop bytes silently; sockets stay open; new ones are never forwarded
  restore            bring the link up again
  bandwidth <rate>   limit each direction of each connection, e.g. 100MB/s, 512KiB/s, 1000; or `off`
  latency <ms>       delay every forwarded chunk by <ms> milliseconds (0 to disable), e.g. 20 or 20ms
  status             print the state, settings and counters
  quit               stop the proxy and exit 0 (end of stdin does the same)

The first stdout line is `ok listening <addr> upstream <addr>`.
Lines longer than 1024 bytes are rejected with an error.";

/// TCP link fault proxy: forwards connections from --listen to --upstream and lets you cut,
/// black-hole, slow down or delay the link, from a schedule or interactively on stdin.
#[derive(Parser, Debug)]
#[command(name = "hw-sim-link-proxy", version, after_help = CONTROL_HELP)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9000 (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Address every accepted connection is forwarded to, e.g. 127.0.0.1:9001.
    #[arg(long)]
    upstream: SocketAddr,
    /// Initial bandwidth limit per direction per connection: bytes per second with an optional
    /// unit (B, KB, MB, GB = powers of 1000; KiB, MiB, GiB = powers of 1024) and optional `/s`,
    /// e.g. 100MB/s; `off` for none.
    #[arg(long, value_parser = parse_rate, default_value = "off")]
    bandwidth: Rate,
    /// Initial latency added to every forwarded chunk, e.g. 20ms, 1s, 500us (a bare number is ms).
    #[arg(long, value_parser = parse_latency, default_value = "0ms")]
    latency: Duration,
    /// Flapping schedule: comma-separated `<offset>:<state>` steps with non-decreasing offsets
    /// from start, states `up`, `down-reset`, `down-blackhole`; e.g. "0s:up,10s:down-reset,15s:up".
    #[arg(long, value_parser = parse_flap)]
    flap: Option<FlapSchedule>,
}

/// A bandwidth limit in bytes per second; `None` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rate(Option<u64>);

impl std::fmt::Display for Rate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => write!(formatter, "off"),
            Some(bytes_per_second) => write!(formatter, "{bytes_per_second}B/s"),
        }
    }
}

/// Parses `off` or a positive byte rate such as `100MB/s`, `512KiB/s`, `1000`.
fn parse_rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(Rate(None));
    }
    let body = text.strip_suffix("/s").unwrap_or(text);
    let digits_end = body.find(|c: char| !c.is_ascii_digit()).unwrap_or(body.len());
    let (number, unit) = body.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("bad rate `{text}`: expected a number such as 100MB/s, or `off`"));
    }
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("bad rate unit `{unit}` in `{text}`: use B, KB, MB, GB, KiB, MiB or GiB")),
    };
    let value: u64 = number.parse().map_err(|_| format!("bad rate `{text}`: number too large"))?;
    let bytes_per_second =
        value.checked_mul(multiplier).ok_or_else(|| format!("bad rate `{text}`: number too large"))?;
    if bytes_per_second == 0 {
        return Err(format!("bad rate `{text}`: must be positive (use `cut` to stop traffic)"));
    }
    Ok(Rate(Some(bytes_per_second)))
}

/// Parses a duration `<number><unit>` with unit `us`, `ms`, `s` or `m`; a bare number is in
/// seconds if `bare_is_seconds` (schedule offsets), else in milliseconds (latency).
fn parse_duration(text: &str, bare_is_seconds: bool) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("bad duration `{text}`: expected e.g. 20ms or 10s"));
    }
    let value: u64 = number.parse().map_err(|_| format!("bad duration `{text}`: number too large"))?;
    let unit = if unit.is_empty() {
        if bare_is_seconds {
            "s"
        } else {
            "ms"
        }
    } else {
        unit
    };
    let duration = match unit {
        "us" => Duration::from_micros(value),
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.checked_mul(60).ok_or_else(|| format!("bad duration `{text}`"))?),
        _ => return Err(format!("bad duration unit `{unit}` in `{text}`: use us, ms, s or m")),
    };
    Ok(duration)
}

/// Parses a latency (bare number = milliseconds), at most [`MAX_LATENCY`].
fn parse_latency(text: &str) -> Result<Duration, String> {
    let latency = parse_duration(text, false)?;
    if latency > MAX_LATENCY {
        return Err(format!("latency `{}` exceeds the maximum of {} s", text.trim(), MAX_LATENCY.as_secs()));
    }
    Ok(latency)
}

/// Parses a flapping schedule such as `0s:up,10s:down-reset,15s:up`.
fn parse_flap(text: &str) -> Result<FlapSchedule, String> {
    let mut steps = Vec::new();
    for step in text.split(',') {
        let step = step.trim();
        let (offset, state) = step.split_once(':').ok_or_else(|| {
            format!("bad flap step `{step}`: expected <offset>:<state>, e.g. 10s:down-reset")
        })?;
        let offset =
            parse_duration(offset, true).map_err(|error| format!("in flap step `{step}`: {error}"))?;
        let state = match state.trim() {
            "up" => LinkState::Up,
            "down-reset" => LinkState::Down(CutMode::Reset),
            "down-blackhole" => LinkState::Down(CutMode::BlackHole),
            other => {
                return Err(format!(
                    "bad flap state `{other}` in `{step}`: use up, down-reset or down-blackhole"
                ))
            }
        };
        if let Some(&(previous, _)) = steps.last() {
            if offset < previous {
                return Err(format!("flap offsets must not decrease (at `{step}`)"));
            }
        }
        if steps.len() == MAX_SCHEDULE_STEPS {
            return Err(format!("flap schedule has more than {MAX_SCHEDULE_STEPS} steps"));
        }
        steps.push((offset, state));
    }
    Ok(FlapSchedule::new(steps))
}

/// Name of a link state as printed by `status`.
fn state_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Up => "up",
        LinkState::Down(CutMode::Reset) => "down-reset",
        LinkState::Down(CutMode::BlackHole) => "down-blackhole",
    }
}

/// The interactive session: the proxy's control handle plus the settings it cannot report.
struct Session {
    control: LinkControl,
    bandwidth: Rate,
    latency: Duration,
}

/// What to do after a command.
enum Next {
    Continue(String),
    Quit(String),
}

impl Session {
    /// Runs one command line; `Err` is the error message (without the `error: ` prefix).
    fn execute(&mut self, line: &str) -> Result<Next, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["cut", "reset"] => {
                self.control.cut(CutMode::Reset);
                "ok cut reset".to_owned()
            }
            ["cut", "blackhole"] => {
                self.control.cut(CutMode::BlackHole);
                "ok cut blackhole".to_owned()
            }
            ["cut", other] => return Err(format!("unknown cut mode `{other}`: use `reset` or `blackhole`")),
            ["cut", ..] => return Err("usage: cut reset|blackhole".to_owned()),
            ["restore"] => {
                self.control.restore();
                "ok restored".to_owned()
            }
            ["bandwidth", rate] => {
                let rate = parse_rate(rate)?;
                self.control.set_bandwidth_limit(rate.0);
                self.bandwidth = rate;
                format!("ok bandwidth {rate}")
            }
            ["bandwidth", ..] => return Err("usage: bandwidth <rate|off>, e.g. bandwidth 100MB/s".to_owned()),
            ["latency", latency] => {
                let latency = parse_latency(latency)?;
                self.control.set_latency(latency);
                self.latency = latency;
                format!("ok latency {}ms", latency.as_millis())
            }
            ["latency", ..] => return Err("usage: latency <ms>, e.g. latency 20".to_owned()),
            ["status"] => self.status(),
            ["quit"] => return Ok(Next::Quit("ok quit".to_owned())),
            [] => {
                return Err("empty command: use cut, restore, bandwidth, latency, status or quit".to_owned())
            }
            [command, ..] => {
                return Err(format!(
                    "unknown command `{command}`: use cut, restore, bandwidth, latency, status or quit"
                ))
            }
        };
        Ok(Next::Continue(reply))
    }

    fn status(&self) -> String {
        format!(
            "ok state={} bandwidth={} latency_ms={} bytes_forwarded={} connections={} connections_reset={}",
            state_name(self.control.state()),
            self.bandwidth,
            self.latency.as_millis(),
            self.control.bytes_forwarded_total(),
            self.control.connections_total(),
            self.control.connections_reset_total(),
        )
    }
}

/// One line read from the control input.
enum Line {
    /// A complete line (newline removed), at most [`MAX_LINE_BYTES`] bytes.
    Text(Vec<u8>),
    /// A line longer than [`MAX_LINE_BYTES`]; the rest of it was discarded.
    TooLong,
    /// End of input.
    End,
}

/// Reads one line with bounded memory: a longer line is consumed and reported as too long.
fn read_line(input: &mut impl BufRead) -> io::Result<Line> {
    let mut buffer = Vec::new();
    let limit = (MAX_LINE_BYTES + 1) as u64;
    let read = io::Read::take(&mut *input, limit).read_until(b'\n', &mut buffer)?;
    if read == 0 {
        return Ok(Line::End);
    }
    if buffer.last() == Some(&b'\n') {
        buffer.pop();
        if buffer.last() == Some(&b'\r') {
            buffer.pop();
        }
        return Ok(Line::Text(buffer));
    }
    if buffer.len() <= MAX_LINE_BYTES {
        return Ok(Line::Text(buffer)); // last line without a newline
    }
    // Discard the rest of the over-long line, a bounded chunk at a time.
    loop {
        buffer.clear();
        let read = io::Read::take(&mut *input, limit).read_until(b'\n', &mut buffer)?;
        if read == 0 || buffer.last() == Some(&b'\n') {
            return Ok(Line::TooLong);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let proxy = match LinkProxy::start(args.listen, args.upstream) {
        Ok(proxy) => proxy,
        Err(error) => {
            eprintln!("error: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let control = proxy.control();
    control.set_bandwidth_limit(args.bandwidth.0);
    control.set_latency(args.latency);
    if let Some(schedule) = args.flap {
        proxy.run_schedule(schedule);
    }
    let mut session = Session { control, bandwidth: args.bandwidth, latency: args.latency };
    let mut stdout = io::stdout().lock();
    let mut say = |line: &str| -> bool { writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_ok() };
    if !say(&format!("ok listening {} upstream {}", proxy.local_addr(), args.upstream)) {
        return ExitCode::FAILURE;
    }
    let mut stdin = io::stdin().lock();
    loop {
        let reply = match read_line(&mut stdin) {
            Ok(Line::End) => return ExitCode::SUCCESS,
            Ok(Line::TooLong) => format!("error: line longer than {MAX_LINE_BYTES} bytes rejected"),
            Ok(Line::Text(bytes)) => match std::str::from_utf8(&bytes) {
                Err(_) => "error: line is not valid UTF-8".to_owned(),
                Ok(text) => match session.execute(text) {
                    Ok(Next::Continue(reply)) => reply,
                    Ok(Next::Quit(reply)) => {
                        say(&reply);
                        return ExitCode::SUCCESS;
                    }
                    Err(message) => format!("error: {message}"),
                },
            },
            Err(error) => {
                eprintln!("error: reading stdin: {error}");
                return ExitCode::FAILURE;
            }
        };
        if !say(&reply) {
            return ExitCode::FAILURE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100MB/s"), Ok(Rate(Some(100_000_000))));
        assert_eq!(parse_rate("2KiB/s"), Ok(Rate(Some(2048))));
        assert_eq!(parse_rate("1000"), Ok(Rate(Some(1000))));
        assert_eq!(parse_rate("off"), Ok(Rate(None)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10XB/s").is_err());
        assert!(parse_rate("99999999999999999999GB").is_err());
    }

    #[test]
    fn durations_and_flaps_parse() {
        assert_eq!(parse_latency("20"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_latency("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_latency("10h").is_err());
        assert!(parse_latency("61s").is_err());
        let schedule = parse_flap("0s:up,10s:down-reset,15:down-blackhole").unwrap();
        assert_eq!(
            schedule.steps,
            vec![
                (Duration::ZERO, LinkState::Up),
                (Duration::from_secs(10), LinkState::Down(CutMode::Reset)),
                (Duration::from_secs(15), LinkState::Down(CutMode::BlackHole)),
            ]
        );
        assert!(parse_flap("10s:up,5s:up").is_err());
        assert!(parse_flap("10s:sideways").is_err());
        assert!(parse_flap("up").is_err());
    }

    #[test]
    fn over_long_lines_are_rejected_and_skipped() {
        let mut input = Vec::new();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\nstatus\r\n");
        input.extend(std::iter::repeat_n(b'y', MAX_LINE_BYTES));
        input.extend_from_slice(b"\nquit");
        let mut reader = io::Cursor::new(input);
        assert!(matches!(read_line(&mut reader).unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut reader).unwrap(), Line::Text(text) if text == b"status"));
        assert!(matches!(read_line(&mut reader).unwrap(), Line::Text(text) if text.len() == MAX_LINE_BYTES));
        assert!(matches!(read_line(&mut reader).unwrap(), Line::Text(text) if text == b"quit"));
        assert!(matches!(read_line(&mut reader).unwrap(), Line::End));
    }
}
