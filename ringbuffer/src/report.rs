//! Human-readable reports of a ring for operators: what `summit-ring inspect|verify` and
//! `summit-node ring inspect|verify` print, written once so the two tools agree.

use std::fmt::Write as _;

use crate::{Ring, RingStats, VerifyReport};

/// `inspect`: capacity, fill, thresholds, records, rate, cursors, the oldest undrained record,
/// corruption counters, and the events found while opening.
pub fn inspect_text(ring: &Ring) -> String {
    let mut text = stats_text(&ring.stats());
    let events = ring.recent_events();
    if !events.is_empty() {
        text.push_str("events found while opening:\n");
        for event in events {
            let _ = writeln!(text, "  {event}");
        }
    }
    text
}

/// `verify`: the scan's result, then every bad region with its location. The verdict is
/// [`VerifyReport::is_clean`].
pub fn verify_text(ring: &Ring, report: &VerifyReport) -> String {
    let mut text = String::new();
    match report.sequence_range {
        Some((first, last)) => {
            let _ = writeln!(
                text,
                "{} good records ({} of payload), sequences {first}..={last}",
                report.good_records,
                human_bytes(report.good_payload_bytes)
            );
        }
        None => text.push_str("no records retained\n"),
    }
    for event in ring.recent_events() {
        let _ = writeln!(text, "found while opening: {event}");
    }
    if report.reclaimed_during_scan_records > 0 {
        let _ = writeln!(
            text,
            "{} record(s) were drained and their space reused by the running writer during the scan \
             (not corruption)",
            report.reclaimed_during_scan_records
        );
    }
    if report.is_clean() {
        text.push_str("verify: clean\n");
        return text;
    }
    let _ = writeln!(
        text,
        "verify: {} bad region(s), {} record(s) unreadable:",
        report.bad_region_count, report.bad_records
    );
    for bad in &report.bad_regions {
        let _ = writeln!(
            text,
            "  data offset {} (lap {}, logical {}): {}; expected sequence {}, next valid {}",
            bad.physical_offset,
            bad.lap,
            bad.logical_offset,
            bad.defect,
            bad.expected_sequence,
            bad.resumed_sequence
        );
    }
    text
}

/// The statistics part of [`inspect_text`].
pub fn stats_text(stats: &RingStats) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "ring          {}", stats.location);
    let _ = writeln!(
        text,
        "ring id       {:016x}  stream {}  generation {}",
        stats.ring_id, stats.stream_id, stats.generation
    );
    let _ = writeln!(
        text,
        "capacity      {}   used {} ({:.1}%)",
        human_bytes(stats.capacity_bytes),
        human_bytes(stats.used_bytes),
        stats.fill_ratio * 100.0
    );
    let thresholds: Vec<String> = stats
        .thresholds
        .iter()
        .map(|(t, crossed)| format!("{:.0}% {}", t * 100.0, if *crossed { "CROSSED" } else { "ok" }))
        .collect();
    let _ = writeln!(text, "thresholds    {}", thresholds.join(", "));
    if stats.retained_records == 0 {
        let _ = writeln!(text, "records       none retained (next sequence {})", stats.durable_sequence + 1);
    } else {
        let _ = writeln!(
            text,
            "records       {} retained, sequences {}..={}",
            stats.retained_records, stats.oldest_sequence, stats.durable_sequence
        );
    }
    match (stats.append_rate_bytes_per_second, stats.time_to_full_seconds) {
        (Some(rate), Some(seconds)) => {
            let _ = writeln!(
                text,
                "append rate   {}/s, full in {:.0} s at this rate",
                human_bytes(rate as u64),
                seconds
            );
        }
        _ => {
            let _ = writeln!(
                text,
                "append rate   not known here (measured by the writing process, shown on its console)"
            );
        }
    }
    let _ = writeln!(text, "cursors");
    for cursor in &stats.cursors {
        let _ = writeln!(
            text,
            "  {:<10} {:<9} at sequence {:>10}  lag {} records, {}",
            cursor.name,
            if cursor.required { "required" } else { "optional" },
            cursor.position.sequence,
            cursor.lag_records,
            human_bytes(cursor.lag_bytes)
        );
    }
    match &stats.oldest_undrained {
        Some(oldest) => {
            let _ = writeln!(
                text,
                "oldest undrained record: sequence {}, {:.1} s old",
                oldest.sequence, oldest.age_seconds
            );
        }
        None if stats.cursors.iter().any(|c| c.name == "drain" && c.lag_records > 0) => {
            let _ = writeln!(
                text,
                "oldest undrained record: unreadable at the drain position (run `summit-ring verify`)"
            );
        }
        None => {
            let _ = writeln!(text, "oldest undrained record: none (drain is caught up)");
        }
    }
    let _ = writeln!(
        text,
        "corruption    {} quarantined records (lifetime detections), {} torn tail(s) found at this open",
        stats.quarantined_records_total, stats.torn_tail_truncations_total
    );
    if let Some(cause) = &stats.poisoned {
        let _ = writeln!(text, "POISONED      {cause}");
    }
    text
}

/// `1.50 GiB`: binary units, two decimals.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}
