//! `hw-sim-header-service`: plays only the header service of a simulated night: each exposure's
//! StartIntegration and EndReadout metadata messages, for LSSTCam and/or LATISS, to an ingest's
//! metadata channel or a file. See `--help`.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use hw_sim::cli::{exit_code, now_unix_ns, Destination, PacingArgs};
use hw_sim::driver::play_header_events;
use hw_sim::geometry::Focalplane;
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule};

/// Simulated header service: sends per-exposure metadata messages, no pixels.
///
/// For each exposure it sends StartIntegration at shutter open and EndReadout at the end of
/// readout (shutter close + 2 s), each a 32-byte header and a JSON list of FITS primary-header
/// keywords (OBSID, DAYOBS, SEQNUM, DATE-BEG, EXPTIME, ...; see docs/daq-frame-protocol.md,
/// "Metadata channel"). LSSTCam visits are 30 s exposures every 40 s; LATISS exposures are 30 s
/// every 40 s too, from the same start. Each event is printed as it is sent. The receiver must
/// already be listening (the ingest listens, the header service connects).
///
/// Examples:
///   hw-sim-header-service --to unix:/run/ingest-meta.sock
///   hw-sim-header-service --to file:/tmp/night.metadata --exposures 10 --as-fast-as-possible
///   hw-sim-header-service --to tcp:127.0.0.1:7001 --instrument latiss --compression 120
#[derive(Debug, Parser)]
#[command(name = "hw-sim-header-service", version, verbatim_doc_comment)]
struct Args {
    /// Where to send metadata messages: unix:PATH (Unix stream socket), tcp:HOST:PORT, or
    /// file:PATH (a new file; an existing file is not overwritten).
    #[arg(long, value_name = "DEST")]
    to: String,

    /// Which camera's exposures to announce.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    instrument: Which,

    /// Exposures per camera.
    #[arg(long, default_value_t = 3)]
    exposures: u32,

    #[command(flatten)]
    pacing: PacingArgs,
}

/// The `--instrument` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// LSSTCam only (camera code MC).
    Lsstcam,
    /// LATISS only (camera code AT).
    Latiss,
    /// Both cameras.
    Both,
}

fn main() -> ExitCode {
    exit_code("hw-sim-header-service", run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), String> {
    let compression = args.pacing.time_compression()?;
    // Frame events are skipped, not generated: the smallest focal plane and one frame per segment
    // keep the schedule cheap to walk.
    let lsstcam =
        Focalplane::lsstcam_subset(&["R22"]).map_err(|error| format!("LSSTCam geometry: {error}"))?;
    let latiss = Focalplane::latiss();
    let lsstcam_visits = if args.instrument == Which::Latiss { 0 } else { args.exposures };
    let plan = NightPlan {
        frames_per_segment: 1,
        latiss: (args.instrument != Which::Lsstcam).then_some(LatissPlan {
            exposure_seconds: 30.0,
            cadence_seconds: 40.0,
            count: args.exposures,
        }),
        ..NightPlan::baseline(now_unix_ns()?, lsstcam_visits, args.pacing.seed)
    };
    let schedule =
        NightSchedule::new(plan, &lsstcam, &latiss).map_err(|error| format!("invalid night: {error}"))?;
    let mut destination = Destination::open("--to", &args.to)?;
    eprintln!(
        "hw-sim-header-service: {} exposure(s) of {:?}, to {}",
        args.exposures, args.instrument, args.to
    );
    let report = play_header_events(schedule, destination.sink(), compression, &mut |event, report| {
        println!(
            "{} {} {:?} exposure {} ({:.1} s)",
            report.header_events_total,
            event.metadata.obsid,
            event.kind,
            event.metadata.exposure_id,
            report.wall_seconds
        );
    })
    .map_err(|error| format!("sending to {} failed: {error}", args.to))?;
    destination.finish().map_err(|error| format!("closing {} failed: {error}", args.to))?;
    println!(
        "done: {} metadata messages ({} bytes) for {} exposure(s) in {:.2} s",
        report.metadata_messages_sent_total,
        report.metadata_bytes_sent_total,
        report.exposures_completed,
        report.wall_seconds
    );
    Ok(())
}
