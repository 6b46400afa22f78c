//! `summit-ring`: the operator's tool for ring directories.
//!
//! - `create DIR --capacity 64GiB --stream-id 1` preallocates a new ring (refuses to touch an
//!   existing one unless `--force`).
//! - `inspect DIR` prints capacity, fill, cursor lags, the oldest undrained record and recent
//!   events. It opens the ring read-only and takes no lock, so it works while the daemon runs.
//! - `verify DIR` scans every retained record and lists bad ones with their locations.
//!   Exit status: 0 clean, 1 bad records found, 2 the ring could not be read at all.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringbuffer::{open_read_only, parse_size_bytes, CreateOptions, Ring, RingOptions, RingStats};

#[derive(Parser)]
#[command(name = "summit-ring", version, about = "Create, inspect and verify summit ring buffers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and preallocate a new ring in DIR.
    Create {
        /// Ring directory (created if missing).
        dir: PathBuf,
        /// Capacity of the data file, e.g. 64GiB (binary units; a multiple of 4096).
        #[arg(long)]
        capacity: String,
        /// Stream id stamped on every record (e.g. 1 LSSTCam, 2 LATISS, 3 metadata).
        #[arg(long)]
        stream_id: u32,
        /// Largest record payload, e.g. 16MiB (default: 16MiB, or capacity/8 if smaller).
        #[arg(long)]
        max_payload: Option<String>,
        /// Destroy an existing ring in DIR and its data.
        #[arg(long)]
        force: bool,
        /// Write the whole data file once now, so the first lap runs at full disk speed
        /// (recommended for production rings; takes capacity / disk bandwidth).
        #[arg(long)]
        zero_fill: bool,
    },
    /// Show capacity, fill, cursor lags, oldest undrained record and recent events.
    Inspect {
        /// Ring directory.
        dir: PathBuf,
    },
    /// Scan every retained record and report good and bad ones with their locations.
    Verify {
        /// Ring directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ringbuffer::storage=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("summit-ring: error: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode, ringbuffer::Error> {
    match command {
        Command::Create { dir, capacity, stream_id, max_payload, force, zero_fill } => {
            let mut create = CreateOptions::new(parse_size_bytes(&capacity)?, stream_id);
            if let Some(max_payload) = max_payload {
                let bytes = parse_size_bytes(&max_payload)?;
                create.max_payload_bytes =
                    u32::try_from(bytes).map_err(|_| ringbuffer::Error::InvalidConfig {
                        field: "max_payload",
                        value: max_payload.clone(),
                        reason: "must be below 4 GiB".into(),
                    })?;
            }
            create.force = force;
            create.zero_fill = zero_fill;
            let ring = Ring::create(&dir, &create, RingOptions::default())?;
            let stats = ring.stats();
            ring.close()?;
            println!(
                "created ring {} ({} capacity, stream {}, ring id {:016x}, max payload {})",
                dir.display(),
                human_bytes(stats.capacity_bytes),
                stats.stream_id,
                stats.ring_id,
                human_bytes(u64::from(create.max_payload_bytes)),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { dir } => {
            let ring = open_read_only(&dir)?;
            print_stats(&ring.stats());
            let events = ring.recent_events();
            if !events.is_empty() {
                println!("events found while opening:");
                for event in events {
                    println!("  {event}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { dir } => {
            let ring = open_read_only(&dir)?;
            let report = ring.verify()?;
            match report.sequence_range {
                Some((first, last)) => println!(
                    "{} good records ({} of payload), sequences {first}..={last}",
                    report.good_records,
                    human_bytes(report.good_payload_bytes)
                ),
                None => println!("no records retained"),
            }
            for event in ring.recent_events() {
                println!("found while opening: {event}");
            }
            if report.reclaimed_during_scan_records > 0 {
                println!(
                    "{} record(s) were drained and their space reused by the running writer during the scan \
                     (not corruption)",
                    report.reclaimed_during_scan_records
                );
            }
            if report.is_clean() {
                println!("verify: clean");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "verify: {} bad region(s), {} record(s) unreadable:",
                report.bad_region_count, report.bad_records
            );
            for bad in &report.bad_regions {
                println!(
                    "  data offset {} (lap {}, logical {}): {}; expected sequence {}, next valid {}",
                    bad.physical_offset,
                    bad.lap,
                    bad.logical_offset,
                    bad.defect,
                    bad.expected_sequence,
                    bad.resumed_sequence
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn print_stats(stats: &RingStats) {
    println!("ring          {}", stats.location);
    println!(
        "ring id       {:016x}  stream {}  generation {}",
        stats.ring_id, stats.stream_id, stats.generation
    );
    println!(
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
    println!("thresholds    {}", thresholds.join(", "));
    if stats.retained_records == 0 {
        println!("records       none retained (next sequence {})", stats.durable_sequence + 1);
    } else {
        println!(
            "records       {} retained, sequences {}..={}",
            stats.retained_records, stats.oldest_sequence, stats.durable_sequence
        );
    }
    match (stats.append_rate_bytes_per_second, stats.time_to_full_seconds) {
        (Some(rate), Some(seconds)) => {
            println!("append rate   {}/s, full in {:.0} s at this rate", human_bytes(rate as u64), seconds)
        }
        _ => println!("append rate   not known here (measured by the writing process, shown on its console)"),
    }
    println!("cursors");
    for cursor in &stats.cursors {
        println!(
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
            println!("oldest undrained record: sequence {}, {:.1} s old", oldest.sequence, oldest.age_seconds)
        }
        None if stats.cursors.iter().any(|c| c.name == "drain" && c.lag_records > 0) => {
            println!("oldest undrained record: unreadable at the drain position (run `summit-ring verify`)")
        }
        None => println!("oldest undrained record: none (drain is caught up)"),
    }
    println!(
        "corruption    {} quarantined records (lifetime detections), {} torn tail(s) found at this open",
        stats.quarantined_records_total, stats.torn_tail_truncations_total
    );
    if let Some(cause) = &stats.poisoned {
        println!("POISONED      {cause}");
    }
}

fn human_bytes(bytes: u64) -> String {
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
