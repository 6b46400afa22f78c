//! A time-compressed observing night in simulation, end to end, through the daemon
//! (`summit_node::sim`, what `summit-node sim` runs): one LSSTCam raft (R22, 9 CCDs) and LATISS,
//! 20 exposures, with the simulated fiber cut for the middle third of the night.
//!
//! What must hold:
//! - every frame the cameras sent is durable in the rings (none rejected, every exposure
//!   complete);
//! - the console, asked over its Unix socket during the cut, shows island mode (link DOWN) and a
//!   growing backlog;
//! - after the restore the backlog drains within the expected time: the catch-up target is
//!   twice the acquisition rate, so a backlog built over a cut of length T drains within T once
//!   the link is back even while acquisition goes on (backlog shrinks at drain - acquisition >=
//!   acquisition); the test allows that plus a fixed margin for the last exposure's readout and
//!   assembly;
//! - the base holds exactly the expected raw FITS files (no more, no fewer), byte-identical to
//!   files built independently from regenerated frames and the header service's metadata, and
//!   `verify-base` against the drain's manifests is clean.
//!
//! The night is fixed (start time, seed) so a failure replays exactly.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use failover::fits::{combine, ones_complement_sum, RawFile, SegmentSource, WriteOptions};
use hw_sim::geometry::{Focalplane, SEGMENT_ROWS};
use hw_sim::header_service::EventKind;
use hw_sim::night::{Event, NightPlan, NightSchedule};
use hw_sim::pixels::{SegmentGenerator, SkyParameters, ROW_SIZE_BYTES};
use summit_node::console::ConsoleConnection;
use summit_node::sim::{SimOptions, Simulation};
use summit_node::status::NodeControl;

/// 2025-04-16T00:00:00Z: a fixed night, so object keys and pixels are the same on every run.
const START_NS: i64 = 1_744_761_600_000_000_000;
const SEED: u64 = 7;
/// Simulated seconds per wall second. One raft plus LATISS at this compression is about
/// 2 x 21 MB/s of acquisition: a 2x catch-up asks the drain for about 85 MB/s to a local disk.
const COMPRESSION: f64 = 2.0;

fn options(data_dir: &Path) -> SimOptions {
    SimOptions {
        data_dir: data_dir.to_owned(),
        rafts: vec!["R22".to_owned()],
        visits: 6,
        latiss_exposures: 14,
        latiss_exposure_seconds: 15.0,
        latiss_cadence_seconds: 17.0,
        compression: COMPRESSION,
        seed: SEED,
        fiber_cut: Some((1.0 / 3.0, 2.0 / 3.0)),
        keep_data: false,
        start_unix_ns: Some(START_NS),
    }
}

/// Segments rendered by the pixel simulator: the independent source of the expected files.
struct Regenerated {
    generators: Vec<SegmentGenerator>,
    buffer: Vec<u8>,
}

impl SegmentSource for Regenerated {
    fn segment_sum(&mut self, index: usize) -> io::Result<Option<u32>> {
        self.buffer.resize(SEGMENT_ROWS as usize * ROW_SIZE_BYTES, 0);
        self.generators[index].generate_segment(&mut self.buffer);
        Ok(Some(combine(0, ones_complement_sum(&self.buffer))))
    }

    fn read_segment(
        &mut self,
        index: usize,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.buffer.resize(SEGMENT_ROWS as usize * ROW_SIZE_BYTES, 0);
        self.generators[index].generate_segment(&mut self.buffer);
        sink(&self.buffer)
    }
}

/// Calls `check(key, bytes)` for every file the base must hold, built from regenerated pixels.
fn for_each_expected_file(options: &SimOptions, check: &mut dyn FnMut(String, Vec<u8>)) {
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let (lsstcam_plan, latiss_plan): (NightPlan, NightPlan) = options.plans(START_NS);
    let sky: SkyParameters = options.sky();
    for (plan, focalplane) in [(lsstcam_plan, &lsstcam), (latiss_plan, &latiss)] {
        for timed in NightSchedule::new(plan, &lsstcam, &latiss).expect("schedule") {
            let Event::Header(header) = timed.event else { continue };
            if header.kind != EventKind::EndReadout || timed.instrument != focalplane.instrument() {
                continue;
            }
            let metadata = header.to_metadata_event();
            for detector in focalplane.detectors() {
                let raw = RawFile::new(*detector, &metadata).expect("metadata valid");
                let mut source = Regenerated {
                    generators: (0..detector.segment_count())
                        .map(|index| {
                            SegmentGenerator::for_detector(sky, metadata.exposure_id, detector, index)
                        })
                        .collect(),
                    buffer: Vec::new(),
                };
                let mut bytes = Vec::new();
                raw.write(&mut bytes, &mut source, &WriteOptions::default()).expect("write expected file");
                check(raw.object_key().to_owned(), bytes);
            }
        }
    }
}

fn walk(directory: &Path, files: &mut BTreeMap<String, PathBuf>, base: &Path) {
    for entry in std::fs::read_dir(directory).expect("read base") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            walk(&path, files, base);
        } else {
            let key = path.strip_prefix(base).expect("under base").to_string_lossy().into_owned();
            files.insert(key, path);
        }
    }
}

fn fitsverify(path: &Path) {
    let output =
        std::process::Command::new("fitsverify").arg("-q").arg(path).output().expect(
            "fitsverify must be installed (scripts/test-all installs it: apt-get install fitsverify)",
        );
    let text = String::from_utf8_lossy(&output.stdout);
    let clean = text.contains("verification OK") || text.contains("0 warning(s) and 0 error(s)");
    assert!(output.status.success() && clean, "{}: {text}", path.display());
}

/// `command --json` over the console socket, parsed.
fn console_json(console: &mut ConsoleConnection, command: &str) -> serde_json::Value {
    let reply = console.request(&format!("{command} --json")).expect("console request");
    assert!(reply.ok, "console `{command}` failed: {}", reply.text);
    let value: serde_json::Value = serde_json::from_str(&reply.text).expect("console JSON");
    value["data"].clone()
}

fn total_backlog_bytes(drain: &serde_json::Value) -> u64 {
    drain
        .as_array()
        .expect("drain views")
        .iter()
        .map(|view| view["backlog_bytes"].as_u64().expect("bytes"))
        .sum()
}

#[test]
fn a_night_with_the_fiber_cut_for_a_third_of_it_loses_nothing_and_drains_after_the_restore() {
    eprintln!("night: start {START_NS} ns, seed {SEED}, compression {COMPRESSION}");
    let work = tempfile::tempdir().expect("tempdir");
    let options = options(&work.path().join("sim"));
    let night = Duration::from_secs_f64(options.night_wall_seconds());
    let (cut_at, restore_at) = (night / 3, night * 2 / 3);
    let mut simulation = Simulation::start(options.clone(), None).expect("simulation starts");
    let started = Instant::now();
    let config = simulation.config().clone();
    let mut console = ConsoleConnection::connect(&config.console.socket).expect("console socket");

    // Through the night: sample the console's link and drain views.
    let mut island_samples: Vec<(Duration, String, u64)> = Vec::new();
    let mut backlog_at_restore = None;
    let mut drained_at = None;
    let deadline = night * 4 + Duration::from_secs(120);
    while drained_at.is_none() {
        let now = started.elapsed();
        assert!(now < deadline, "the night did not drain within {deadline:?}");
        let link = console_json(&mut console, "link");
        let drain = console_json(&mut console, "drain");
        let state = link["state"].as_str().expect("state").to_owned();
        let backlog = total_backlog_bytes(&drain);
        // From 3.5 s after the cut (detection takes at most 2.75 s) to just before the restore.
        if now > cut_at + Duration::from_millis(3500) && now + Duration::from_millis(300) < restore_at {
            island_samples.push((now, state.clone(), backlog));
        }
        if now >= restore_at && backlog_at_restore.is_none() {
            backlog_at_restore = Some((now, backlog));
        }
        if simulation.all_drained() {
            drained_at = Some(now);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let drained_at = drained_at.expect("drained");

    // Island mode seen on the console, with the backlog growing.
    assert!(island_samples.len() >= 4, "too few samples during the cut: {island_samples:?}");
    for (at, state, _) in &island_samples {
        assert_eq!(
            state, "DOWN",
            "the console shows island mode during the cut (at {at:?}): {island_samples:?}"
        );
    }
    let first_backlog = island_samples.first().expect("sample").2;
    let last_backlog = island_samples.last().expect("sample").2;
    assert!(last_backlog > first_backlog, "the backlog grows during the cut: {island_samples:?}");
    let status_text = console.request("status").expect("status").text;
    eprintln!("console after the night:\n{status_text}");

    // After the restore: drained within the cut's length (2x catch-up) plus a margin.
    let (restored_seen_at, backlog) = backlog_at_restore.expect("restore observed");
    let cut_length = restore_at - cut_at;
    let margin = Duration::from_secs(30);
    let catch_up = drained_at.saturating_sub(restored_seen_at);
    eprintln!(
        "night {night:?}, cut {cut_at:?}..{restore_at:?}, backlog at restore {:.2} GB, drained {catch_up:?} after it",
        backlog as f64 / 1e9
    );
    assert!(
        drained_at <= restore_at.max(night) + cut_length + margin,
        "the backlog drained {catch_up:?} after the restore; expected within {cut_length:?} + {margin:?} of the night's end"
    );

    // Every frame accounted for.
    let reports = simulation.join_cameras().expect("cameras");
    let frames_sent: u64 = reports.iter().map(|report| report.frames_sent_total).sum();
    let status = simulation.node().status();
    let frames_durable: u64 = status.ingest.iter().map(|ingest| ingest.frames_total).sum();
    let rejected: u64 = status.ingest.iter().map(|ingest| ingest.rejected_total).sum();
    let complete: u64 = status.ingest.iter().map(|ingest| ingest.exposures_complete_total).sum();
    let incomplete: u64 = status.ingest.iter().map(|ingest| ingest.exposures_incomplete_total).sum();
    assert_eq!(frames_durable, frames_sent, "every frame sent is durable");
    assert_eq!(rejected, 0);
    assert_eq!((complete, incomplete), (20, 0), "every exposure complete");
    drop(console);
    simulation.shutdown().expect("clean shutdown");

    // The base: exactly the expected files, byte-identical.
    let base = work.path().join("sim").join("base");
    let mut at_base = BTreeMap::new();
    walk(&base, &mut at_base, &base);
    let mut expected_count = 0;
    let mut verified = Vec::new();
    for_each_expected_file(&options, &mut |key, bytes| {
        expected_count += 1;
        let path = at_base.remove(&key).unwrap_or_else(|| panic!("missing at the base: {key}"));
        let actual = std::fs::read(&path).expect("read base file");
        assert!(actual == bytes, "{key}: differs from the file built from regenerated frames");
        verified.push(path);
    });
    assert_eq!(expected_count, 6 * 9 + 14, "expected files");
    assert!(at_base.is_empty(), "unexpected objects at the base: {:?}", at_base.keys().collect::<Vec<_>>());
    fitsverify(verified.first().expect("an LSSTCam file"));
    fitsverify(verified.last().expect("a LATISS file"));
    let report = summit_node::node::verify_base(&config, true).expect("verify-base runs");
    assert!(report.is_clean(), "{}", report.text(&config.base.url, "manifests"));
}
