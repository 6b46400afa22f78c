//! `hw-sim-camera`: plays a simulated observing night (LSSTCam rafts, optionally LATISS) as DAQ
//! frames to an ingest over a Unix socket or TCP, or into a replay file, and optionally the header
//! service's metadata on a second connection. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use hw_sim::cli::{exit_code, now_unix_ns, play_to_destinations, StreamArgs};
use hw_sim::driver::PlayOptions;
use hw_sim::geometry::Focalplane;
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule, RevisitPlan};
use hw_sim::pixels::SkyParameters;

/// Simulated camera DAQ: plays an observing night as DAQ frames.
///
/// Each LSSTCam visit is a 30 s exposure followed by a 2 s readout and an 8 s gap; every segment of
/// the chosen rafts is read out as --frames-per-segment frames of seeded sky-like pixels. With
/// --metadata-to, the header service's events go to a second destination at their scheduled
/// times: StartIntegration at shutter open (before the exposure's first frame), EndReadout at the
/// end of readout (after its last frame). The receiver must already be listening on each
/// destination (the ingest listens, the camera connects).
///
/// Examples:
///   hw-sim-camera --to file:/tmp/night.replay --visits 1 --as-fast-as-possible
///   hw-sim-camera --to unix:/run/ingest.sock --metadata-to unix:/run/ingest-meta.sock --rafts R22,R00
///   hw-sim-camera --to tcp:127.0.0.1:7000 --metadata-to tcp:127.0.0.1:7001 --latiss --compression 120
#[derive(Debug, Parser)]
#[command(name = "hw-sim-camera", version, verbatim_doc_comment)]
struct Args {
    #[command(flatten)]
    stream: StreamArgs,

    /// LSSTCam rafts to read out, comma-separated (R00..R44; corner rafts R00, R04, R40, R44 hold
    /// guiders and wavefront sensors).
    #[arg(long, value_name = "RAFTS", value_delimiter = ',', default_value = "R22")]
    rafts: Vec<String>,

    /// LSSTCam visits to play.
    #[arg(long, default_value_t = 3)]
    visits: u32,

    /// Also play LATISS on the same streams: one 30 s exposure every 40 s, one per visit.
    #[arg(long)]
    latiss: bool,

    /// LSSTCam visits in pairs on one field: visits 2k and 2k+1 share the stars and the pointing
    /// (RA, DEC, ROTPA), and the second visit of each pair holds an injected transient in every
    /// segment of the chosen detectors (see --transient-flux, --transient-fraction).
    #[arg(long)]
    revisit_pairs: bool,

    /// Total flux of each injected transient, ADU (0: pairs without transients).
    #[arg(long, value_name = "ADU", default_value_t = 50_000.0, requires = "revisit_pairs")]
    transient_flux: f64,

    /// Fraction of the detectors (0..=1) that get transients in the second visit of a pair.
    #[arg(long, value_name = "FRACTION", default_value_t = 1.0, requires = "revisit_pairs")]
    transient_fraction: f64,
}

fn main() -> ExitCode {
    exit_code("hw-sim-camera", run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), String> {
    let compression = args.stream.pacing.time_compression()?;
    let raft_names: Vec<&str> = args.rafts.iter().map(|name| name.trim()).collect();
    let lsstcam = Focalplane::lsstcam_subset(&raft_names).map_err(|error| format!("--rafts: {error}"))?;
    let latiss = Focalplane::latiss();
    let seed = args.stream.pacing.seed;
    let mut plan = NightPlan::baseline(now_unix_ns()?, args.visits, seed);
    plan.frames_per_segment = args.stream.frames_per_segment;
    if args.latiss {
        plan.latiss = Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count: args.visits });
    }
    if args.revisit_pairs {
        plan.revisits = Some(RevisitPlan {
            transient_flux_adu: args.transient_flux,
            transient_detector_fraction: args.transient_fraction,
        });
    }
    let schedule =
        NightSchedule::new(plan, &lsstcam, &latiss).map_err(|error| format!("invalid night: {error}"))?;
    let options =
        PlayOptions { compression, ..PlayOptions::new(SkyParameters { seed, ..SkyParameters::default() }) };

    let exposures = u64::from(args.visits) * if args.latiss { 2 } else { 1 };
    eprintln!(
        "hw-sim-camera: {} visit(s) of {} ({} segments){}, {} frames per segment, to {}{}",
        args.visits,
        raft_names.join(","),
        lsstcam.segment_count(),
        if args.latiss { " + LATISS" } else { "" },
        args.stream.frames_per_segment,
        args.stream.to,
        args.stream.metadata_to.as_deref().map(|spec| format!(", metadata to {spec}")).unwrap_or_default(),
    );
    play_to_destinations(schedule, &args.stream, options, exposures)?;
    Ok(())
}
