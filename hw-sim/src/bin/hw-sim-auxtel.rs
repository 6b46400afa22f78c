//! `hw-sim-auxtel`: plays LATISS (the Auxiliary Telescope's camera) alone: its exposures as DAQ
//! frames to an ingest or a replay file, and optionally the header service's metadata on a second
//! connection. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use hw_sim::cli::{exit_code, now_unix_ns, play_to_destinations, StreamArgs};
use hw_sim::driver::PlayOptions;
use hw_sim::geometry::Focalplane;
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule};
use hw_sim::pixels::SkyParameters;

/// Simulated LATISS DAQ: plays Auxiliary Telescope exposures as DAQ frames.
///
/// LATISS is one ITL CCD (raft R00, sensor S00, 16 segments, camera code AT). Each exposure opens
/// the shutter for --exposure-seconds, then reads out for 2 s; a new exposure starts every
/// --cadence-seconds. Every segment is read out as --frames-per-segment frames of seeded sky-like
/// pixels. With --metadata-to, the header service's StartIntegration (shutter open) and
/// EndReadout (end of readout) go to a second destination. The receiver must already be
/// listening (the ingest listens, the camera connects).
///
/// Examples:
///   hw-sim-auxtel --to file:/tmp/auxtel.replay --exposures 2 --as-fast-as-possible
///   hw-sim-auxtel --to unix:/run/ingest.sock --metadata-to unix:/run/ingest-meta.sock
///   hw-sim-auxtel --to tcp:127.0.0.1:7000 --exposure-seconds 5 --cadence-seconds 10 --compression 10
#[derive(Debug, Parser)]
#[command(name = "hw-sim-auxtel", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    stream: StreamArgs,

    /// LATISS exposures to play.
    #[arg(long, default_value_t = 3)]
    exposures: u32,

    /// Exposure time (EXPTIME) of each exposure, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    exposure_seconds: f64,

    /// From one shutter open to the next, seconds; at least the exposure time + 2 s of readout.
    #[arg(long, value_name = "SECONDS", default_value_t = 40.0)]
    cadence_seconds: f64,
}

fn main() -> ExitCode {
    exit_code("hw-sim-auxtel", run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), String> {
    let compression = args.stream.pacing.time_compression()?;
    // The schedule wants an LSSTCam focal plane too; with no visits it is never read out.
    let lsstcam =
        Focalplane::lsstcam_subset(&["R22"]).map_err(|error| format!("LSSTCam geometry: {error}"))?;
    let latiss = Focalplane::latiss();
    let seed = args.stream.pacing.seed;
    let plan = NightPlan {
        frames_per_segment: args.stream.frames_per_segment,
        latiss: Some(LatissPlan {
            exposure_seconds: args.exposure_seconds,
            cadence_seconds: args.cadence_seconds,
            count: args.exposures,
        }),
        ..NightPlan::baseline(now_unix_ns()?, 0, seed)
    };
    let schedule =
        NightSchedule::new(plan, &lsstcam, &latiss).map_err(|error| format!("invalid exposures: {error}"))?;
    let options =
        PlayOptions { compression, ..PlayOptions::new(SkyParameters { seed, ..SkyParameters::default() }) };
    eprintln!(
        "hw-sim-auxtel: {} LATISS exposure(s) of {} s every {} s, {} frames per segment, to {}{}",
        args.exposures,
        args.exposure_seconds,
        args.cadence_seconds,
        args.stream.frames_per_segment,
        args.stream.to,
        args.stream.metadata_to.as_deref().map(|spec| format!(", metadata to {spec}")).unwrap_or_default(),
    );
    play_to_destinations(schedule, &args.stream, options, u64::from(args.exposures))?;
    Ok(())
}
