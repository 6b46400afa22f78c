//! The systemd unit shipped in `packaging/summit-node.service`: the keys the daemon relies on
//! (`Type=notify`, the watchdog, restart policy, hardening, the writable paths), its stop
//! timeout against the daemon's own shutdown bound, `systemd-analyze verify` (a visible
//! `SKIPPED` line when the tool is not installed: Debian package `systemd`), and that the
//! system-call filter it names lets io_uring through.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("summit-node sits in the repository root")
        .to_owned()
}

fn unit_path() -> PathBuf {
    repository_root().join("packaging/summit-node.service")
}

fn unit_text() -> String {
    let path = unit_path();
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// `(section, key, value)` for every assignment, in file order (a key may repeat).
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut assignments = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        assert!(!line.ends_with('\\'), "line {}: continuation lines are not expected: {raw}", number + 1);
        let (key, value) =
            line.split_once('=').unwrap_or_else(|| panic!("line {}: not KEY=VALUE: {raw}", number + 1));
        assert!(!section.is_empty(), "line {}: an assignment before any [Section]", number + 1);
        assignments.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
    }
    assignments
}

/// The values of `section.key`, in order.
fn values(assignments: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    assignments
        .iter()
        .filter(|(in_section, in_key, _)| in_section == section && in_key == key)
        .map(|(_, _, value)| value.clone())
        .collect()
}

/// The single value of `[Service] key`.
fn service_value(assignments: &[(String, String, String)], key: &str) -> String {
    let found = values(assignments, "Service", key);
    assert_eq!(found.len(), 1, "[Service] {key}= must be set exactly once, found {found:?}");
    found[0].clone()
}

/// Seconds of a systemd time span as used in this unit (`30s`, `5min`, `60`).
fn seconds(span: &str) -> u64 {
    let (number, unit) = span.split_at(span.find(|c: char| !c.is_ascii_digit()).unwrap_or(span.len()));
    let number: u64 =
        number.parse().unwrap_or_else(|_| panic!("time span {span:?} does not start with a number"));
    match unit {
        "" | "s" | "sec" => number,
        "min" => number * 60,
        other => panic!("time span unit {other:?} of {span:?} is not handled by this test"),
    }
}

#[test]
fn unit_declares_notify_watchdog_restart_and_the_daemon_command() {
    let assignments = parse_unit(&unit_text());
    assert_eq!(service_value(&assignments, "Type"), "notify");
    assert_eq!(service_value(&assignments, "NotifyAccess"), "main");
    assert_eq!(
        service_value(&assignments, "ExecStart"),
        "/usr/local/bin/summit-node run --config /etc/summit-node/summit-node.toml"
    );
    assert_eq!(seconds(&service_value(&assignments, "WatchdogSec")), 30);
    assert_eq!(service_value(&assignments, "Restart"), "on-failure");
    assert_eq!(seconds(&service_value(&assignments, "RestartSec")), 5);
    assert_eq!(service_value(&assignments, "KillSignal"), "SIGTERM");
    assert_eq!(service_value(&assignments, "User"), "summit");
    assert_eq!(service_value(&assignments, "Group"), "summit");
    assert_eq!(service_value(&assignments, "SupplementaryGroups"), "dialout");
    assert_eq!(service_value(&assignments, "LimitMEMLOCK"), "infinity");
    assert_eq!(service_value(&assignments, "StateDirectory"), "summit-node");
    assert_eq!(service_value(&assignments, "RuntimeDirectory"), "summit-node");
    assert_eq!(values(&assignments, "Install", "WantedBy"), ["multi-user.target"]);
}

#[test]
fn unit_is_hardened_and_writable_only_where_the_daemon_writes() {
    let assignments = parse_unit(&unit_text());
    for (key, expected) in [
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ] {
        assert_eq!(service_value(&assignments, key), expected, "[Service] {key}=");
    }
    let writable: BTreeSet<String> = values(&assignments, "Service", "ReadWritePaths")
        .iter()
        .flat_map(|value| value.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let expected: BTreeSet<String> = ["/var/lib/summit-node", "/run/summit-node"].map(String::from).into();
    assert_eq!(writable, expected, "ReadWritePaths= must be the data directory and the sockets' directory");
    // The serial console and device: DAQ endpoints are real devices.
    assert!(values(&assignments, "Service", "PrivateDevices").iter().all(|value| value == "no"));
    assert!(
        values(&assignments, "Service", "DeviceAllow").is_empty(),
        "DeviceAllow= would close other devices"
    );
}

#[test]
fn every_hardening_line_of_the_unit_has_a_comment() {
    let text = unit_text();
    let lines: Vec<&str> = text.lines().collect();
    let hardening_start =
        lines.iter().position(|line| line.contains("--- Hardening")).expect("a hardening block");
    let mut undocumented = Vec::new();
    for (index, line) in lines.iter().enumerate().skip(hardening_start + 1) {
        if line.starts_with('[') {
            break;
        }
        let is_assignment = !line.trim().is_empty() && !line.starts_with('#');
        let commented = index > 0 && lines[index - 1].starts_with('#');
        // A comment may cover a group of related lines (CapabilityBoundingSet + AmbientCapabilities).
        let grouped = index > 1 && !lines[index - 1].starts_with('#') && !lines[index - 1].trim().is_empty();
        if is_assignment && !commented && !grouped {
            undocumented.push(*line);
        }
    }
    assert!(undocumented.is_empty(), "hardening lines without a comment: {undocumented:?}");
}

#[test]
fn stop_timeout_leaves_room_for_the_daemons_bounded_shutdown() {
    let assignments = parse_unit(&unit_text());
    let stop_timeout_seconds = seconds(&service_value(&assignments, "TimeoutStopSec"));
    assert_eq!(stop_timeout_seconds, 60);
    let example = repository_root().join("summit-node/summit-node.example.toml");
    let text = std::fs::read_to_string(&example).expect("the example configuration");
    let config: toml::Table = text.parse().expect("the example configuration is TOML");
    let shutdown_timeout_seconds =
        config["node"]["shutdown_timeout_s"].as_integer().expect("node.shutdown_timeout_s");
    assert!(
        (shutdown_timeout_seconds as u64) + 10 <= stop_timeout_seconds,
        "node.shutdown_timeout_s = {shutdown_timeout_seconds} must stay at least 10 s below TimeoutStopSec"
    );
    let watchdog_seconds = seconds(&service_value(&assignments, "WatchdogSec"));
    assert!(watchdog_seconds >= 10, "a watchdog under 10 s would kill a daemon busy with an fsync burst");
}

/// `systemd-analyze`, or `None` after printing the visible skip line.
fn systemd_analyze(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("systemd-analyze")).find(|path| path.is_file())
    });
    if found.is_none() {
        // Straight to the stderr descriptor: `eprintln!` would be captured by the test harness.
        let line = format!("SKIPPED: systemd-analyze not installed (Debian package systemd): {test}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    found
}

/// The unit as installed, but running the binary this test suite built (`verify` checks that
/// `ExecStart`'s program exists and is executable).
fn unit_pointing_at_the_built_binary(directory: &Path) -> PathBuf {
    let binary = env!("CARGO_BIN_EXE_summit-node");
    let text = unit_text();
    assert!(text.contains("ExecStart=/usr/local/bin/summit-node "));
    let rewritten = text.replace("ExecStart=/usr/local/bin/summit-node ", &format!("ExecStart={binary} "));
    let path = directory.join("summit-node.service");
    std::fs::write(&path, rewritten).expect("writing the unit copy");
    path
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_any_warning() {
    let Some(tool) = systemd_analyze("systemd_analyze_verify_accepts_the_unit_without_any_warning") else {
        return;
    };
    let directory = tempfile::tempdir().expect("temporary directory");
    let unit = unit_pointing_at_the_built_binary(directory.path());
    let output = Command::new(&tool)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .current_dir(directory.path())
        .output()
        .expect("running systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // `verify` exits 0 on unknown keys and unparsable values: they are warnings on stderr.
    assert!(output.status.success(), "systemd-analyze verify failed ({}):\n{stdout}{stderr}", output.status);
    assert!(
        stderr.trim().is_empty() && stdout.trim().is_empty(),
        "systemd-analyze verify warned:\n{stdout}{stderr}"
    );
}

#[test]
fn systemd_analyze_verify_reports_a_misspelt_key_so_the_check_above_is_real() {
    let Some(tool) =
        systemd_analyze("systemd_analyze_verify_reports_a_misspelt_key_so_the_check_above_is_real")
    else {
        return;
    };
    let directory = tempfile::tempdir().expect("temporary directory");
    let unit = unit_pointing_at_the_built_binary(directory.path());
    let text = std::fs::read_to_string(&unit).expect("the copy").replace("ProtectSystem=", "ProtectSystm=");
    std::fs::write(&unit, text).expect("writing the broken copy");
    let output =
        Command::new(&tool).args(["verify", "--man=no"]).arg(&unit).output().expect("running verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unknown key") && stderr.contains("ProtectSystm"), "no warning: {stderr}");
}

/// The system calls of a filter set (`@system-service`), nested sets expanded.
fn syscalls_of(tool: &Path, set: &str, seen: &mut BTreeSet<String>, calls: &mut BTreeSet<String>) {
    if !seen.insert(set.to_owned()) {
        return;
    }
    let output = Command::new(tool).args(["syscall-filter", set]).output().expect("running syscall-filter");
    assert!(output.status.success(), "systemd-analyze syscall-filter {set} failed");
    for line in String::from_utf8_lossy(&output.stdout).lines().skip(1) {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        if entry.starts_with('@') {
            syscalls_of(tool, entry, seen, calls);
        } else {
            calls.insert(entry.to_owned());
        }
    }
}

#[test]
fn system_call_filter_of_the_unit_allows_io_uring() {
    let Some(tool) = systemd_analyze("system_call_filter_of_the_unit_allows_io_uring") else {
        return;
    };
    let assignments = parse_unit(&unit_text());
    let filters = values(&assignments, "Service", "SystemCallFilter");
    if filters.is_empty() {
        return; // No filter: nothing is blocked.
    }
    let mut allowed = BTreeSet::new();
    for filter in &filters {
        assert!(!filter.starts_with('~'), "a deny list ({filter}) needs this test extended");
        let mut seen = BTreeSet::new();
        for entry in filter.split_whitespace() {
            if entry.starts_with('@') {
                syscalls_of(&tool, entry, &mut seen, &mut allowed);
            } else {
                allowed.insert(entry.to_owned());
            }
        }
    }
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register", "fdatasync", "pwritev"] {
        assert!(allowed.contains(call), "SystemCallFilter={filters:?} blocks {call}");
    }
}
