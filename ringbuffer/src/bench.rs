//! Helpers shared by the workspace's benchmarks (`ring-bench` here, `ingest-bench` in `hw-sim`):
//! running `fio` and reading its JSON, medians of alternated runs, settling the disk between
//! runs, and process figures from procfs (CPU seconds, RSS). No `unsafe`: everything comes from
//! procfs and child processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

type BoxError = Box<dyn std::error::Error>;

/// One measured write run.
pub struct WriteRun {
    /// Throughput, GB/s (10^9 bytes per second) of the bytes the benchmark counts.
    pub payload_gbps: f64,
    /// Wall-clock seconds of the run.
    pub wall_seconds: f64,
    /// CPU seconds (user + system) charged to the run.
    pub cpu_seconds: f64,
}

impl WriteRun {
    /// The run with the median throughput (the mean of the middle two for an even count).
    pub fn median(runs: &mut [WriteRun]) -> WriteRun {
        runs.sort_by(|a, b| a.payload_gbps.total_cmp(&b.payload_gbps));
        let middle = runs.len() / 2;
        let pick = if runs.len() % 2 == 1 { &runs[middle..=middle] } else { &runs[middle - 1..=middle] };
        let count = pick.len() as f64;
        WriteRun {
            payload_gbps: pick.iter().map(|r| r.payload_gbps).sum::<f64>() / count,
            wall_seconds: pick.iter().map(|r| r.wall_seconds).sum::<f64>() / count,
            cpu_seconds: pick.iter().map(|r| r.cpu_seconds).sum::<f64>() / count,
        }
    }
}

/// Flushes dirty data and waits a moment, so one run's writeback does not land in the next.
pub fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_secs(2));
}

/// Whether `fio --version` runs.
pub fn fio_available() -> bool {
    Command::new("fio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// fio arguments for a sequential `O_DIRECT` write of `size` bytes in blocks of `record` bytes
/// (io_uring engine, queue depth `iodepth`, `fdatasync` every `group` writes, JSON output).
pub fn fio_args(file: &Path, record: u64, size: u64, group: u64, iodepth: u32) -> Vec<String> {
    vec![
        "--name=ringref".into(),
        format!("--filename={}", file.display()),
        "--rw=write".into(),
        format!("--bs={record}"),
        "--direct=1".into(),
        "--ioengine=io_uring".into(),
        format!("--iodepth={iodepth}"),
        format!("--size={size}"),
        format!("--fdatasync={group}"),
        "--output-format=json".into(),
    ]
}

/// What one fio job reported.
pub struct FioResult {
    /// Write bandwidth, bytes per second.
    pub bw_bytes: f64,
    /// Runtime, milliseconds.
    pub runtime_ms: f64,
    /// CPU, user + system, percent of one core over the runtime.
    pub cpu_percent: f64,
}

/// Runs fio with `args`; on failure prints the command and fio's output and returns an error.
pub fn run_fio(args: &[String]) -> Result<FioResult, BoxError> {
    let output = Command::new("fio").args(args).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed = parse_fio_json(&text);
    match parsed {
        Some(result) if output.status.success() => Ok(result),
        _ => {
            eprintln!("################ ERROR: fio failed ################");
            eprintln!("fio {}", args.join(" "));
            eprintln!("status: {}", output.status);
            eprintln!("stderr: {}", String::from_utf8_lossy(&output.stderr));
            eprintln!("stdout (first 2000 bytes): {:.2000}", text);
            Err("fio failed (see above)".into())
        }
    }
}

/// Pulls the first job's write bandwidth, runtime and CPU out of fio's JSON (a tiny scanner, not
/// a JSON parser: fio's layout is stable and these keys are unambiguous within a job).
pub fn parse_fio_json(text: &str) -> Option<FioResult> {
    let json = &text[text.find('{')?..];
    let job = &json[json.find("\"jobs\"")?..];
    if number_after(job, "\"error\"")? != 0.0 {
        return None;
    }
    let write = object_after(job, "\"write\"")?;
    Some(FioResult {
        bw_bytes: number_after(write, "\"bw_bytes\"")?,
        runtime_ms: number_after(write, "\"runtime\"")?,
        cpu_percent: number_after(job, "\"usr_cpu\"")? + number_after(job, "\"sys_cpu\"")?,
    })
}

/// The text from the first `key : {` onwards (skipping `key` used as a plain value).
fn object_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(found) = text[from..].find(key) {
        let after = &text[from + found + key.len()..];
        let object =
            after.trim_start().strip_prefix(':').map(str::trim_start).filter(|rest| rest.starts_with('{'));
        if object.is_some() {
            return object;
        }
        from += found + key.len();
    }
    None
}

fn number_after(text: &str, key: &str) -> Option<f64> {
    let after = &text[text.find(key)? + key.len()..];
    let rest = after.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A `kB` field of `/proc/self/status` (e.g. `"VmRSS:"`), KiB; 0 if unreadable.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident set size (VmHWM), KiB.
pub fn vm_hwm_kib() -> u64 {
    proc_status_kib("VmHWM:")
}

/// Current resident set size (VmRSS), KiB.
pub fn vm_rss_kib() -> u64 {
    proc_status_kib("VmRSS:")
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`); false if not permitted.
pub fn reset_vm_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// User + system CPU seconds of this process so far, every thread included (also threads that
/// have exited): `/proc/self/stat`.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_in("/proc/self/stat")
}

/// User + system CPU seconds of the calling thread so far: `/proc/thread-self/stat`.
pub fn thread_cpu_seconds() -> f64 {
    cpu_seconds_in("/proc/thread-self/stat")
}

/// User + system CPU seconds from a `stat` file of procfs (fields 14 and 15, in USER_HZ = 100
/// ticks per second on Linux); 0 if unreadable.
fn cpu_seconds_in(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime field 15.
    let ticks = |index: usize| fields.get(index - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(14) + ticks(15)) as f64 / 100.0
}

/// The running kernel's release (`/proc/sys/kernel/osrelease`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// "on <device> <fstype> <mount point>" for the mount holding `path` (longest prefix match).
pub fn filesystem_of(path: &Path) -> String {
    let Ok(absolute) = std::fs::canonicalize(path) else {
        return String::new();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return String::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (device, mount_point, fs_type) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            absolute.starts_with(mount_point).then(|| {
                (mount_point.len(), format!("{} on {device} {fs_type} {mount_point}", path.display()))
            })
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, text)| text)
        .unwrap_or_default()
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ` (UTC), from the system clock.
pub fn utc_now() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_json_is_read() {
        let text = r#"note: a warning line
{ "jobs" : [ { "jobname" : "ringref", "error" : 0,
  "job options" : { "rw" : "write", "write_hint" : "none" },
  "read" : { "bw_bytes" : 0, "runtime" : 0 },
  "write" : { "io_bytes" : 10, "bw_bytes" : 2255760134, "runtime" : 119 },
  "usr_cpu" : 1.5, "sys_cpu" : 3.25 } ] }"#;
        let result = parse_fio_json(text).unwrap();
        assert_eq!(result.bw_bytes, 2_255_760_134.0);
        assert_eq!(result.runtime_ms, 119.0);
        assert_eq!(result.cpu_percent, 4.75);
    }

    #[test]
    fn dates_are_civil() {
        assert!(utc_now().starts_with("20"));
    }

    #[test]
    fn cpu_and_rss_are_read() {
        assert!(vm_rss_kib() > 0);
        assert!(cpu_seconds() >= thread_cpu_seconds());
    }
}
