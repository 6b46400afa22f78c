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
use ringbuffer::report::{human_bytes, inspect_text, verify_text};
use ringbuffer::{open_read_only, parse_size_bytes, CreateOptions, Ring, RingOptions};

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
            print!("{}", inspect_text(&ring));
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { dir } => {
            let ring = open_read_only(&dir)?;
            let report = ring.verify()?;
            print!("{}", verify_text(&ring, &report));
            Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
