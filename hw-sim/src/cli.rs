//! What the simulator's command-line tools share (`hw-sim-camera`, `hw-sim-auxtel`,
//! `hw-sim-header-service`): the DEST syntax, the pacing and seed arguments, and playing a
//! schedule to a frame destination and an optional metadata destination with progress lines.
//!
//! A DEST is `unix:PATH` (connect to a listening Unix stream socket), `tcp:HOST:PORT` (connect over
//! TCP) or `file:PATH` (create a new replay file; an existing file is never overwritten). The
//! receiver listens, the simulator connects, for frames and metadata alike.

use std::io;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::driver::{play_with_metadata, PlayOptions, PlayReport};
use crate::night::{NightSchedule, TimeCompression};
use crate::transport::{FrameSink, ReplayFileWriter, TcpFrameSender, UnixFrameSender};

/// The default time compression: 60 simulated seconds per wall second.
pub const DEFAULT_COMPRESSION: f64 = 60.0;

/// An opened DEST.
#[derive(Debug)]
pub enum Destination {
    /// `unix:PATH`.
    Unix(UnixFrameSender),
    /// `tcp:HOST:PORT`.
    Tcp(TcpFrameSender),
    /// `file:PATH`.
    File(ReplayFileWriter),
}

impl Destination {
    /// Opens `spec` (given as `flag`, e.g. `--to`, for error messages): connects or creates the
    /// file.
    pub fn open(flag: &str, spec: &str) -> Result<Destination, String> {
        let fail = |error: io::Error| format!("cannot open {flag} {spec}: {error}");
        match parse_destination(flag, spec)? {
            ("unix", path) => UnixFrameSender::connect(path).map(Destination::Unix).map_err(fail),
            ("tcp", address) => TcpFrameSender::connect(address).map(Destination::Tcp).map_err(fail),
            (_, path) => ReplayFileWriter::create(path).map(Destination::File).map_err(fail),
        }
    }

    /// Where to send.
    pub fn sink(&mut self) -> &mut dyn FrameSink {
        match self {
            Destination::Unix(sender) => sender,
            Destination::Tcp(sender) => sender,
            Destination::File(writer) => writer,
        }
    }

    /// Flushes a replay file to disk; closes a connection (by dropping it).
    pub fn finish(self) -> io::Result<()> {
        match self {
            Destination::File(writer) => writer.finish(),
            Destination::Unix(_) | Destination::Tcp(_) => Ok(()),
        }
    }
}

/// Checks the DEST syntax without opening anything: `(scheme, rest)` with scheme `unix`, `tcp` or
/// `file` and a non-empty rest.
pub fn parse_destination<'a>(flag: &str, spec: &'a str) -> Result<(&'a str, &'a str), String> {
    match spec.split_once(':') {
        Some((scheme @ ("unix" | "tcp" | "file"), rest)) if !rest.is_empty() => Ok((scheme, rest)),
        _ => Err(format!("{flag} {spec:?} is not unix:PATH, tcp:HOST:PORT or file:PATH")),
    }
}

/// Pacing and seed, common to every simulator tool.
#[derive(Debug, Clone, clap::Args)]
pub struct PacingArgs {
    /// Simulated seconds per wall second (60: a 40 s visit takes 0.67 s). Default 60.
    #[arg(long, value_name = "FACTOR", conflicts_with = "as_fast_as_possible")]
    pub compression: Option<f64>,

    /// Send as fast as the receiver accepts, without pacing.
    #[arg(long)]
    pub as_fast_as_possible: bool,

    /// Seed of the sky, pointing and weather: same seed, same night.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl PacingArgs {
    /// The time compression asked for; `None` with `--as-fast-as-possible`.
    pub fn time_compression(&self) -> Result<Option<TimeCompression>, String> {
        if self.as_fast_as_possible {
            return Ok(None);
        }
        let factor = self.compression.unwrap_or(DEFAULT_COMPRESSION);
        if !(factor.is_finite() && factor > 0.0) {
            return Err(format!("--compression {factor} must be a positive number"));
        }
        Ok(Some(TimeCompression { factor }))
    }
}

/// Where a camera tool sends its frames and metadata, and how its segments are split.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Where to send frames: unix:PATH (Unix stream socket), tcp:HOST:PORT, or file:PATH (a new
    /// replay file; an existing file is not overwritten).
    #[arg(long, value_name = "DEST")]
    pub to: String,

    /// Where to send the header service's metadata messages (StartIntegration at shutter open,
    /// EndReadout at the end of readout), same DEST syntax, on a connection of its own; without
    /// it no metadata is sent.
    #[arg(long, value_name = "DEST")]
    pub metadata_to: Option<String>,

    /// Frames each segment's 2048 rows are split into (1..=2048).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=2048))]
    pub frames_per_segment: u32,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub pacing: PacingArgs,
}

/// Now, in nanoseconds since 1970-01-01 UTC: the night starts when the tool starts.
pub fn now_unix_ns() -> Result<i64, String> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| format!("system clock before 1970: {error}"))?;
    Ok(since_epoch.as_nanos() as i64)
}

/// Runs a tool's `run`, printing its error as `NAME: error: ...` and exiting non-zero.
pub fn exit_code(name: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{name}: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn gigabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// Opens `args.to` (and `args.metadata_to`), plays `schedule` with `options`, printing one line
/// per exposure (out of `exposures`) and a summary on stdout, then closes both destinations.
pub fn play_to_destinations(
    schedule: NightSchedule<'_>,
    args: &StreamArgs,
    options: PlayOptions,
    exposures: u64,
) -> Result<PlayReport, String> {
    // Both DESTs are checked before either is opened: a typo creates no empty replay file.
    parse_destination("--to", &args.to)?;
    if let Some(spec) = &args.metadata_to {
        parse_destination("--metadata-to", spec)?;
    }
    let mut frames = Destination::open("--to", &args.to)?;
    let mut metadata = match &args.metadata_to {
        Some(spec) => Some(Destination::open("--metadata-to", spec)?),
        None => None,
    };
    let metadata_sink = metadata.as_mut().map(Destination::sink);
    let report = play_with_metadata(schedule, frames.sink(), metadata_sink, options, &mut |progress| {
        let report = progress.report;
        println!(
            "exposure {}/{} {}: {} frames, {:.3} GB sent, {} metadata messages, {:.1} s",
            report.exposures_completed,
            exposures,
            progress.end_readout.metadata.obsid,
            report.frames_sent_total,
            gigabytes(report.bytes_sent_total),
            report.metadata_messages_sent_total,
            report.wall_seconds
        );
    })
    .map_err(|error| format!("sending failed: {error}"))?;
    frames.finish().map_err(|error| format!("closing {} failed: {error}", args.to))?;
    if let (Some(destination), Some(spec)) = (metadata, &args.metadata_to) {
        destination.finish().map_err(|error| format!("closing {spec} failed: {error}"))?;
    }
    let metadata_line = match &args.metadata_to {
        Some(spec) => format!(
            "{} metadata messages ({} bytes) to {spec}",
            report.metadata_messages_sent_total, report.metadata_bytes_sent_total
        ),
        None => format!("{} header events (no --metadata-to: not sent)", report.header_events_total),
    };
    println!(
        "done: {} frames, {:.3} GB in {:.2} s ({:.3} GB/s), {metadata_line}",
        report.frames_sent_total,
        gigabytes(report.bytes_sent_total),
        report.wall_seconds,
        gigabytes(report.bytes_sent_total) / report.wall_seconds.max(1e-9),
    );
    Ok(report)
}
