//! `hw-sim-camera`: plays a simulated observing night (LSSTCam rafts, optionally LATISS) as DAQ
//! frames to an ingest over a Unix socket or TCP, or into a replay file. See `--help`.

use std::io;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use hw_sim::driver::{play_with_progress, PlayOptions, PlayReport};
use hw_sim::geometry::Focalplane;
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule, TimeCompression};
use hw_sim::pixels::SkyParameters;
use hw_sim::transport::{FrameSink, ReplayFileWriter, TcpFrameSender, UnixFrameSender};

/// Simulated camera DAQ: plays an observing night as DAQ frames.
///
/// Each LSSTCam visit is a 30 s exposure followed by a 2 s readout and an 8 s gap; every segment of
/// the chosen rafts is read out as --frames-per-segment frames of seeded sky-like pixels. The
/// receiver must already be listening (the ingest listens, the camera connects). Header-service
/// events are generated but not sent: their channel does not exist yet.
///
/// Examples:
///   hw-sim-camera --to file:/tmp/night.replay --visits 1 --as-fast-as-possible
///   hw-sim-camera --to unix:/run/ingest.sock --rafts R22,R00 --compression 60
///   hw-sim-camera --to tcp:127.0.0.1:7000 --latiss
#[derive(Debug, Parser)]
#[command(name = "hw-sim-camera", version, verbatim_doc_comment)]
struct Args {
    /// Where to send frames: unix:PATH (Unix stream socket), tcp:HOST:PORT, or file:PATH (a new
    /// replay file; an existing file is not overwritten).
    #[arg(long, value_name = "DEST")]
    to: String,

    /// LSSTCam rafts to read out, comma-separated (R00..R44; corner rafts R00, R04, R40, R44 hold
    /// guiders and wavefront sensors).
    #[arg(long, value_name = "RAFTS", value_delimiter = ',', default_value = "R22")]
    rafts: Vec<String>,

    /// LSSTCam visits to play.
    #[arg(long, default_value_t = 3)]
    visits: u32,

    /// Frames each segment's 2048 rows are split into (1..=2048).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=2048))]
    frames_per_segment: u32,

    /// Simulated seconds per wall second (60: a 40 s visit takes 0.67 s). Default 60.
    #[arg(long, value_name = "FACTOR", conflicts_with = "as_fast_as_possible")]
    compression: Option<f64>,

    /// Send as fast as the receiver accepts, without pacing.
    #[arg(long)]
    as_fast_as_possible: bool,

    /// Seed of the sky and of the schedule: same seed, same pixels.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Also play LATISS on the same stream: one 30 s exposure every 40 s, one per visit.
    #[arg(long)]
    latiss: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hw-sim-camera: error: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Destination {
    Unix(UnixFrameSender),
    Tcp(TcpFrameSender),
    File(ReplayFileWriter),
}

impl Destination {
    fn open(spec: &str) -> Result<Destination, String> {
        let fail = |error: io::Error| format!("cannot open --to {spec}: {error}");
        match spec.split_once(':') {
            Some(("unix", path)) if !path.is_empty() => {
                UnixFrameSender::connect(path).map(Destination::Unix).map_err(fail)
            }
            Some(("tcp", address)) if !address.is_empty() => {
                TcpFrameSender::connect(address).map(Destination::Tcp).map_err(fail)
            }
            Some(("file", path)) if !path.is_empty() => {
                ReplayFileWriter::create(path).map(Destination::File).map_err(fail)
            }
            _ => Err(format!("--to {spec:?} is not unix:PATH, tcp:HOST:PORT or file:PATH")),
        }
    }

    fn sink(&mut self) -> &mut dyn FrameSink {
        match self {
            Destination::Unix(sender) => sender,
            Destination::Tcp(sender) => sender,
            Destination::File(writer) => writer,
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Destination::File(writer) => writer.finish(),
            Destination::Unix(_) | Destination::Tcp(_) => Ok(()),
        }
    }
}

fn gigabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn run(args: &Args) -> Result<(), String> {
    let compression = match (args.as_fast_as_possible, args.compression) {
        (true, _) => None,
        (false, factor) => {
            let factor = factor.unwrap_or(60.0);
            if !(factor.is_finite() && factor > 0.0) {
                return Err(format!("--compression {factor} must be a positive number"));
            }
            Some(TimeCompression { factor })
        }
    };
    let raft_names: Vec<&str> = args.rafts.iter().map(|name| name.trim()).collect();
    let lsstcam = Focalplane::lsstcam_subset(&raft_names).map_err(|error| format!("--rafts: {error}"))?;
    let latiss = Focalplane::latiss();
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| format!("system clock before 1970: {error}"))?
        .as_nanos() as i64;
    let mut plan = NightPlan::baseline(start_unix_ns, args.visits, args.seed);
    plan.frames_per_segment = args.frames_per_segment;
    if args.latiss {
        plan.latiss = Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count: args.visits });
    }
    let schedule =
        NightSchedule::new(plan, &lsstcam, &latiss).map_err(|error| format!("invalid night: {error}"))?;
    let options = PlayOptions {
        compression,
        ..PlayOptions::new(SkyParameters { seed: args.seed, ..SkyParameters::default() })
    };

    let mut destination = Destination::open(&args.to)?;
    let exposures = args.visits as u64 * if args.latiss { 2 } else { 1 };
    eprintln!(
        "hw-sim-camera: {} visit(s) of {} ({} segments){}, {} frames per segment, to {}",
        args.visits,
        raft_names.join(","),
        lsstcam.segment_count(),
        if args.latiss { " + LATISS" } else { "" },
        args.frames_per_segment,
        args.to
    );
    let report = play_with_progress(schedule, destination.sink(), options, &mut |progress| {
        let report = progress.report;
        println!(
            "exposure {}/{} {}: {} frames, {:.3} GB sent, {:.1} s",
            report.exposures_completed,
            exposures,
            progress.end_readout.metadata.obsid,
            report.frames_sent_total,
            gigabytes(report.bytes_sent_total),
            report.wall_seconds
        );
    })
    .map_err(|error| format!("sending to {} failed: {error}", args.to))?;
    destination.finish().map_err(|error| format!("closing {} failed: {error}", args.to))?;
    print_summary(&report);
    Ok(())
}

fn print_summary(report: &PlayReport) {
    println!(
        "done: {} frames, {:.3} GB in {:.2} s ({:.3} GB/s), {} header events (not sent: no channel yet)",
        report.frames_sent_total,
        gigabytes(report.bytes_sent_total),
        report.wall_seconds,
        gigabytes(report.bytes_sent_total) / report.wall_seconds.max(1e-9),
        report.header_events_total
    );
}
