//! How the console shows things: units (decimal: kB, MB, GB; rates in MB/s; durations as
//! `3h12m`; fill as a percentage; times in UTC with their age), aligned text for people and one
//! line of JSON (`{"ok":true,"command":..,"data":..}` / `{"ok":false,"error":..}`) for scripts.
//!
//! Text from the node (log messages, reasons, labels) goes through [`printable`], so a reply
//! never carries a control character to a terminal or into the socket protocol.

use std::fmt::Write as _;

use serde::Serialize;

use crate::console::command::{CommandHelp, COMMANDS};
use crate::csc::{AckCode, CommandAck};
use crate::status::{CscView, DrainView, ExposureView, LinkView, LogLine, NodeStatus, RingView};

/// Seconds in a minute, hour and day, for durations.
const SECONDS_PER_MINUTE: u64 = 60;
const SECONDS_PER_HOUR: u64 = 3600;
const SECONDS_PER_DAY: u64 = 86_400;

/// Bytes as decimal units with three significant digits: `512 B`, `1.23 kB`, `45.6 GB`, `4.00 TB`.
pub fn format_bytes(bytes: u64) -> String {
    format_decimal(bytes as f64, "B")
}

/// A rate in bytes per second as decimal units: `250 MB/s`, `1.50 GB/s`; `-` if not a number.
pub fn format_rate(bytes_per_second: f64) -> String {
    if !bytes_per_second.is_finite() || bytes_per_second < 0.0 {
        return "-".to_string();
    }
    format_decimal(bytes_per_second, "B/s")
}

fn format_decimal(value: f64, unit: &str) -> String {
    const PREFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if value < 999.5 {
        return format!("{value:.0} {unit}");
    }
    let mut scaled = value / 1000.0;
    let mut prefix = 1;
    // 999.95 and above would round up to "1000": take the next prefix instead.
    while scaled >= 999.95 && prefix + 1 < PREFIXES.len() {
        scaled /= 1000.0;
        prefix += 1;
    }
    let digits = if scaled < 9.995 {
        format!("{scaled:.2}")
    } else if scaled < 99.95 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.0}")
    };
    format!("{digits} {}{unit}", PREFIXES[prefix])
}

/// A duration, two units at most: `45s`, `12m05s`, `3h12m`, `2d03h`; `-` if negative or not a
/// number.
pub fn format_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_string();
    }
    // Beyond ten million days the exact figure does not matter.
    let total = seconds.min(1e12).round() as u64;
    let (days, hours) = (total / SECONDS_PER_DAY, total % SECONDS_PER_DAY / SECONDS_PER_HOUR);
    let (minutes, secs) = (total % SECONDS_PER_HOUR / SECONDS_PER_MINUTE, total % SECONDS_PER_MINUTE);
    if total < SECONDS_PER_MINUTE {
        format!("{secs}s")
    } else if total < SECONDS_PER_HOUR {
        format!("{minutes}m{secs:02}s")
    } else if total < SECONDS_PER_DAY {
        format!("{hours}h{minutes:02}m")
    } else {
        format!("{days}d{hours:02}h")
    }
}

/// A ratio as a percentage with one decimal: `0.732` -> `73.2%`.
pub fn format_percent(ratio: f64) -> String {
    if !ratio.is_finite() {
        return "-".to_string();
    }
    format!("{:.1}%", ratio * 100.0)
}

/// Unix time (seconds) as UTC: `2026-11-24T19:03:12Z`.
pub fn format_unix_time(unix_seconds: f64) -> String {
    if !unix_seconds.is_finite() {
        return "-".to_string();
    }
    // Years -9999..=9999 fit easily; clamping keeps the arithmetic in range.
    let seconds = unix_seconds.clamp(-3e11, 2.5e11).floor() as i64;
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// A time and how long ago it was: `2026-11-24T16:00:00Z (3h12m ago)`.
pub fn format_time_and_age(unix_seconds: f64, now_unix_seconds: f64) -> String {
    let age_seconds = (now_unix_seconds - unix_seconds).max(0.0);
    format!("{} ({} ago)", format_unix_time(unix_seconds), format_duration(age_seconds))
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    let shifted = days_since_epoch + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// Text from elsewhere made safe to show on one line: control characters (newlines included)
/// become escapes (`\n`, `\x1b`, `\u{85}`).
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push(' '),
            _ if character.is_control() && u32::from(character) < 0x80 => {
                let _ = write!(shown, "\\x{:02x}", u32::from(character));
            }
            _ if character.is_control() => {
                let _ = write!(shown, "\\u{{{:x}}}", u32::from(character));
            }
            _ => shown.push(character),
        }
    }
    shown
}

/// Rows of cells as aligned columns (every column but the last padded to its widest cell),
/// each row starting with `indent`.
fn push_table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from(indent);
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[index]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn row<const N: usize>(cells: [String; N]) -> Vec<String> {
    cells.into()
}

fn pair(label: &str, value: String) -> Vec<String> {
    vec![label.to_string(), value]
}

fn finish(mut out: String) -> String {
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

/// `help`: every command, or one command's usage.
pub fn render_help(topic: Option<&CommandHelp>, operator: bool) -> String {
    let mut out = String::new();
    let access = |help: &CommandHelp| if help.operator { "operator" } else { "" }.to_string();
    match topic {
        Some(help) => {
            let _ = writeln!(out, "usage: {}", help.usage);
            let _ = writeln!(out, "{}", help.summary);
            if help.operator {
                let _ = writeln!(out, "changes state: needs operator mode");
            }
        }
        None => {
            let rows: Vec<Vec<String>> = COMMANDS
                .iter()
                .map(|help| row([help.usage.to_string(), access(help), help.summary.to_string()]))
                .collect();
            push_table(&mut out, "", &rows);
            let mode = if operator {
                "this session is in operator mode"
            } else {
                "this session is read-only: commands marked 'operator' are refused"
            };
            let _ = writeln!(out, "add --json to any command for one line of JSON\n{mode}");
        }
    }
    finish(out)
}

/// `status`: the node at a glance.
pub fn render_status(status: &NodeStatus, now_unix_seconds: f64) -> String {
    let mut out = String::new();
    let mode = if status.simulation { ", simulation" } else { "" };
    let mut rows = vec![
        pair(
            "node",
            format!("{} (summit-node {}{mode})", printable(&status.node), printable(&status.version)),
        ),
        pair("uptime", format_duration(status.uptime_seconds)),
        pair(
            "csc",
            format!(
                "{} since {}",
                status.csc.state.name(),
                time_age(status.csc.since_unix, now_unix_seconds)
            ),
        ),
    ];
    let rtt = status.link.rtt_ms.map_or_else(|| "no probe answered".to_string(), format_milliseconds);
    rows.push(pair(
        "link",
        format!(
            "{} since {}, round trip {rtt}",
            printable(&status.link.state),
            time_age(status.link.since_unix, now_unix_seconds)
        ),
    ));
    for ring in &status.rings {
        let mut value = format!(
            "{} of {} ({}), time to full {}",
            format_bytes(ring.used_bytes),
            format_bytes(ring.capacity_bytes),
            format_percent(ring.fill_ratio),
            optional_duration(ring.time_to_full_seconds, "not filling")
        );
        if let Some(reason) = &ring.poisoned {
            let _ = write!(value, ", FAILED: {}", printable(reason));
        }
        rows.push(pair(&format!("ring {}", printable(&ring.stream)), value));
    }
    for ingest in &status.ingest {
        let state = if ingest.running { "running" } else { "stopped" };
        rows.push(pair(
            &format!("ingest {}", printable(&ingest.stream)),
            format!(
                "{state}, {} frames, {}, {} rejected, exposures {} complete / {} incomplete",
                ingest.frames_total,
                format_bytes(ingest.bytes_total),
                ingest.rejected_total,
                ingest.exposures_complete_total,
                ingest.exposures_incomplete_total
            ),
        ));
    }
    for drain in &status.drain {
        let state = if drain.paused { "PAUSED, " } else { "" };
        rows.push(pair(
            &format!("drain {}", printable(&drain.stream)),
            format!(
                "{state}{}, backlog {} files / {}, empty in {}",
                format_rate(drain.rate_bytes_per_second),
                drain.backlog_files,
                format_bytes(drain.backlog_bytes),
                optional_duration(drain.time_to_empty_seconds, "- (not draining)")
            ),
        ));
    }
    push_table(&mut out, "", &rows);
    finish(out)
}

/// `buffer`: every ring in detail.
pub fn render_buffer(rings: &[RingView]) -> String {
    let mut out = String::new();
    if rings.is_empty() {
        return "no rings configured".to_string();
    }
    for ring in rings {
        let _ = writeln!(out, "{} ({})", printable(&ring.stream), printable(&ring.location));
        let oldest = match (ring.oldest_undrained_exposure, ring.oldest_undrained_age_seconds) {
            (Some(exposure), Some(age)) => format!("{exposure}, age {}", format_duration(age)),
            (Some(exposure), None) => format!("{exposure}"),
            (None, Some(age)) => format!("unknown exposure, age {}", format_duration(age)),
            (None, None) => "none (everything drained)".to_string(),
        };
        let mut rows = vec![
            pair("capacity", format_bytes(ring.capacity_bytes)),
            pair("used", format!("{} ({})", format_bytes(ring.used_bytes), format_percent(ring.fill_ratio))),
            pair("head sequence", ring.head_sequence.to_string()),
            pair("drain sequence", ring.drain_sequence.to_string()),
            pair("oldest undrained exposure", oldest),
            pair(
                "append rate",
                ring.append_rate_bytes_per_second.map_or_else(|| "-".to_string(), format_rate),
            ),
            pair("time to full", optional_duration(ring.time_to_full_seconds, "- (not filling)")),
        ];
        if let Some(reason) = &ring.poisoned {
            rows.push(pair("FAILED (writes refused)", printable(reason)));
        }
        push_table(&mut out, "  ", &rows);
    }
    finish(out)
}

/// `link`: the link monitor's state and recent transitions.
pub fn render_link(link: &LinkView, now_unix_seconds: f64) -> String {
    let mut out = String::new();
    let rows = vec![
        pair(
            "state",
            format!("{} since {}", printable(&link.state), time_age(link.since_unix, now_unix_seconds)),
        ),
        pair("target", printable(&link.target)),
        pair("round trip", link.rtt_ms.map_or_else(|| "no probe answered".to_string(), format_milliseconds)),
    ];
    push_table(&mut out, "", &rows);
    if link.transitions.is_empty() {
        out.push_str("no transitions yet\n");
    } else {
        out.push_str("recent transitions (oldest first)\n");
        let rows: Vec<Vec<String>> = link
            .transitions
            .iter()
            .map(|transition| {
                row([
                    format_unix_time(transition.time_unix),
                    format!("{} -> {}", printable(&transition.from), printable(&transition.to)),
                    printable(&transition.reason),
                ])
            })
            .collect();
        push_table(&mut out, "  ", &rows);
    }
    finish(out)
}

/// `drain`: every stream's drain.
pub fn render_drain(drains: &[DrainView]) -> String {
    let mut out = String::new();
    if drains.is_empty() {
        return "no drain configured".to_string();
    }
    for drain in drains {
        let state = if drain.paused { "PAUSED by an operator" } else { "running" };
        let _ = writeln!(out, "{} ({state})", printable(&drain.stream));
        let limit = match drain.rate_limit_bytes_per_second {
            Some(limit) => format!("limit {}", format_rate(limit as f64)),
            None => "no limit".to_string(),
        };
        let rows = vec![
            pair("rate", format!("{} ({limit})", format_rate(drain.rate_bytes_per_second))),
            pair("backlog", format!("{} files, {}", drain.backlog_files, format_bytes(drain.backlog_bytes))),
            pair("time to empty", optional_duration(drain.time_to_empty_seconds, "- (not draining)")),
            pair(
                "confirmed at the base",
                format!(
                    "{} files, {}, {} exposures",
                    drain.objects_confirmed_total,
                    format_bytes(drain.bytes_uploaded_total),
                    drain.exposures_drained_total
                ),
            ),
            pair(
                "problems",
                format!(
                    "{} failed uploads (retried), {} conflicts",
                    drain.upload_failures_total, drain.conflicts_total
                ),
            ),
        ];
        push_table(&mut out, "  ", &rows);
    }
    finish(out)
}

/// `exposures [n]`: one row per exposure, newest first.
pub fn render_exposures(exposures: &[ExposureView]) -> String {
    if exposures.is_empty() {
        return "no exposures yet".to_string();
    }
    let mut out = String::new();
    let mut rows = vec![row([
        "stream".to_string(),
        "exposure".to_string(),
        "segments".to_string(),
        "acquisition".to_string(),
        "drain".to_string(),
    ])];
    for exposure in exposures {
        rows.push(row([
            printable(&exposure.stream),
            exposure.exposure_id.to_string(),
            format!("{}/{}", exposure.segments_durable, exposure.segments_expected),
            printable(&exposure.acquisition),
            printable(&exposure.drain),
        ]));
    }
    push_table(&mut out, "", &rows);
    finish(out)
}

/// `csc`: the summary state, since when, the error code.
pub fn render_csc(csc: &CscView, now_unix_seconds: f64) -> String {
    let mut out = String::new();
    let error = match (csc.error_code, &csc.error_report) {
        (Some(code), Some(report)) => format!("{code}: {}", printable(report)),
        (Some(code), None) => code.to_string(),
        (None, Some(report)) => format!("- ({})", printable(report)),
        (None, None) => "none".to_string(),
    };
    let rows = vec![
        pair("summaryState", format!("{} ({})", csc.state.name(), csc.state.code())),
        pair("since", time_age(csc.since_unix, now_unix_seconds)),
        pair("errorCode", error),
    ];
    push_table(&mut out, "", &rows);
    finish(out)
}

/// `log [n]`: oldest first.
pub fn render_log(lines: &[LogLine]) -> String {
    if lines.is_empty() {
        return "no log lines captured".to_string();
    }
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(
            out,
            "{} {:<5} {}: {}",
            format_unix_time(line.time_unix),
            printable(&line.level),
            printable(&line.target),
            printable(&line.message)
        );
    }
    finish(out)
}

/// An observatory-control command's acknowledgement: `enable: COMPLETE (303)` and its result.
pub fn render_ack(ack: &CommandAck) -> String {
    let mut out = format!("{}: {} ({})", printable(&ack.command), ack_name(ack.ack), ack.ack.code());
    if !ack.result.is_empty() {
        let _ = write!(out, "\n{}", printable(&ack.result));
    }
    out
}

/// The acknowledgement code's name (`COMPLETE`, `NO_ACK`...): the same words its JSON carries.
pub fn ack_name(ack: AckCode) -> &'static str {
    match ack {
        AckCode::CmdAck => "CMD_ACK",
        AckCode::InProgress => "IN_PROGRESS",
        AckCode::Complete => "COMPLETE",
        AckCode::NoPerm => "NO_PERM",
        AckCode::NoAck => "NO_ACK",
        AckCode::Failed => "FAILED",
        AckCode::Aborted => "ABORTED",
        AckCode::Timeout => "TIMEOUT",
    }
}

fn time_age(unix_seconds: f64, now_unix_seconds: f64) -> String {
    format_time_and_age(unix_seconds, now_unix_seconds)
}

fn optional_duration(seconds: Option<f64>, when_none: &str) -> String {
    seconds.map_or_else(|| when_none.to_string(), format_duration)
}

fn format_milliseconds(milliseconds: f64) -> String {
    if !milliseconds.is_finite() || milliseconds < 0.0 {
        return "-".to_string();
    }
    format!("{milliseconds:.1} ms")
}

#[derive(Serialize)]
struct JsonSuccess<'a, T: Serialize> {
    ok: bool,
    command: &'a str,
    data: &'a T,
}

#[derive(Serialize)]
struct JsonFailure<'a, T: Serialize> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a T>,
}

/// `{"ok":true,"command":"buffer","data":...}` on one line.
pub fn json_ok<T: Serialize>(command: &str, data: &T) -> String {
    encode(&JsonSuccess { ok: true, command, data })
}

/// `{"ok":false,"command":"enable","error":"...","data":...}` on one line; `command` (when it is
/// known) and `data` (e.g. a refused command's acknowledgement) are left out when `None`.
pub fn json_error_with<T: Serialize>(command: Option<&str>, error: &str, data: Option<&T>) -> String {
    encode(&JsonFailure { ok: false, command, error, data })
}

/// `{"ok":false,"error":"..."}` (with `"command"` when known) on one line.
pub fn json_error(command: Option<&str>, error: &str) -> String {
    json_error_with::<()>(command, error, None)
}

fn encode<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(line) => line,
        // The views hold only strings, numbers and options; this is not expected, but an
        // operator still gets one parsable line.
        Err(error) => {
            let message = serde_json::to_string(&format!("cannot encode the reply as JSON: {error}"))
                .unwrap_or_else(|_| "\"cannot encode the reply as JSON\"".to_string());
            format!("{{\"ok\":false,\"error\":{message}}}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_decimal_units_with_three_significant_digits() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1000), "1.00 kB");
        assert_eq!(format_bytes(1234), "1.23 kB");
        assert_eq!(format_bytes(45_600_000_000), "45.6 GB");
        assert_eq!(format_bytes(4_000_000_000_000), "4.00 TB");
        assert_eq!(format_bytes(999_960), "1.00 MB");
        assert_eq!(format_bytes(123_456_789_012), "123 GB");
        assert_eq!(format_bytes(u64::MAX), "18.4 EB");
    }

    #[test]
    fn rates_are_bytes_per_second_in_decimal_units() {
        assert_eq!(format_rate(250e6), "250 MB/s");
        assert_eq!(format_rate(1.5e9), "1.50 GB/s");
        assert_eq!(format_rate(0.0), "0 B/s");
        assert_eq!(format_rate(999.7), "1.00 kB/s");
        assert_eq!(format_rate(f64::NAN), "-");
        assert_eq!(format_rate(-1.0), "-");
    }

    #[test]
    fn durations_show_two_units_at_most() {
        assert_eq!(format_duration(0.0), "0s");
        assert_eq!(format_duration(0.4), "0s");
        assert_eq!(format_duration(45.0), "45s");
        assert_eq!(format_duration(59.6), "1m00s");
        assert_eq!(format_duration(725.0), "12m05s");
        assert_eq!(format_duration(3.0 * 3600.0 + 12.0 * 60.0 + 30.0), "3h12m");
        assert_eq!(format_duration(3600.0 + 5.0 * 60.0), "1h05m");
        assert_eq!(format_duration(2.0 * 86_400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(format_duration(-1.0), "-");
        assert_eq!(format_duration(f64::INFINITY), "-");
        assert_eq!(format_duration(1e300), "11574074d01h");
    }

    #[test]
    fn fill_is_a_percentage() {
        assert_eq!(format_percent(0.732), "73.2%");
        assert_eq!(format_percent(1.0), "100.0%");
        assert_eq!(format_percent(0.0), "0.0%");
        assert_eq!(format_percent(f64::NAN), "-");
    }

    #[test]
    fn times_are_utc_with_their_age() {
        assert_eq!(format_unix_time(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_time(1_700_000_000.9), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix_time(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_time(-1.0), "1969-12-31T23:59:59Z");
        assert_eq!(format_time_and_age(1_700_000_000.0, 1_700_011_520.0), "2023-11-14T22:13:20Z (3h12m ago)");
        assert_eq!(format_time_and_age(1_700_000_000.0, 1_600_000_000.0), "2023-11-14T22:13:20Z (0s ago)");
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("a\nb\x1b[0m\u{85}\tc"), "a\\nb\\x1b[0m\\u{85} c");
        assert_eq!(printable("caf\u{e9}"), "caf\u{e9}");
        assert_eq!(printable("\u{4}"), "\\x04");
    }

    #[test]
    fn tables_align_columns() {
        let mut out = String::new();
        push_table(&mut out, "  ", &[pair("a", "1".to_string()), pair("longer", "2".to_string())]);
        assert_eq!(out, "  a       1\n  longer  2\n");
    }

    #[test]
    fn json_is_one_line_with_ok_first() {
        assert_eq!(json_ok("log", &vec![1, 2]), r#"{"ok":true,"command":"log","data":[1,2]}"#);
        assert_eq!(json_error(None, "bad\nthing"), r#"{"ok":false,"error":"bad\nthing"}"#);
        assert_eq!(json_error(Some("enable"), "no"), r#"{"ok":false,"command":"enable","error":"no"}"#);
        assert_eq!(json_error(None, "\u{4}"), r#"{"ok":false,"error":"\u0004"}"#);
    }

    #[test]
    fn ack_names_are_the_json_names() {
        use AckCode::*;
        for ack in [CmdAck, InProgress, Complete, NoPerm, NoAck, Failed, Aborted, Timeout] {
            assert_eq!(serde_json::to_value(ack).ok(), Some(serde_json::Value::from(ack_name(ack))));
        }
    }

    #[test]
    fn acknowledgements_show_name_code_and_result() {
        let ack = CommandAck {
            command: "enable".to_string(),
            ack: AckCode::NoAck,
            result: "in STANDBY".to_string(),
        };
        assert_eq!(render_ack(&ack), "enable: NO_ACK (-301)\nin STANDBY");
        let ack = CommandAck { command: "start".to_string(), ack: AckCode::Complete, result: String::new() };
        assert_eq!(render_ack(&ack), "start: COMPLETE (303)");
    }
}
