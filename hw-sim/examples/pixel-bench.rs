//! Single-threaded throughput of the sky-like pixel generator, next to a `fill` reference.
//!
//! Run in release mode: `cargo run --release -p hw-sim --example pixel-bench [gigabytes]`.
//! It writes about 2 GB (by default) of segments into one reused 4.7 MB buffer three ways and
//! prints GB/s (10^9 bytes per second) on one core:
//! - `fill`: `slice::fill` of the same buffer, the memset-style ceiling;
//! - `generate_segment`: rows rendered from prebuilt (compact) generators, noise and byte output
//!   (the streaming cost);
//! - `new + generate_segment`: a fresh generator per segment, construction included (what a DAQ
//!   simulator pays when every segment of every exposure is new).
//!
//! Then it plays 3 visits of raft R22 (144 segments, 4 frames each, 2.05 GB) through the camera
//! driver into `io::sink()`: generation + frame encoding, without any file or socket.

use std::hint::black_box;
use std::time::Instant;

use hw_sim::driver::{play, PlayOptions};
use hw_sim::geometry::{Focalplane, Vendor, SEGMENT_SIZE_BYTES};
use hw_sim::night::{NightPlan, NightSchedule};
use hw_sim::pixels::{SegmentGenerator, SkyParameters};
use hw_sim::transport::FrameWriter;

fn main() {
    let gigabytes: f64 = std::env::args().nth(1).map_or(2.0, |arg| arg.parse().expect("gigabytes: a number"));
    let segment_count = ((gigabytes * 1e9) / SEGMENT_SIZE_BYTES as f64).ceil() as usize;
    let total_bytes = (segment_count * SEGMENT_SIZE_BYTES) as f64;
    let mut buffer = vec![0u8; SEGMENT_SIZE_BYTES];
    let params = SkyParameters::default();
    let vendor_of = |index: usize| if index.is_multiple_of(2) { Vendor::Itl } else { Vendor::E2v };
    println!(
        "{segment_count} segments of {SEGMENT_SIZE_BYTES} B = {:.2} GB per measurement, one thread",
        total_bytes / 1e9
    );

    let started = Instant::now();
    for index in 0..segment_count {
        buffer.fill(index as u8);
        black_box(&mut buffer);
    }
    let fill_rate = total_bytes / started.elapsed().as_secs_f64() / 1e9;
    println!("fill (memset reference)    {fill_rate:7.2} GB/s");

    let templates: Vec<SegmentGenerator> =
        (0..16).map(|index| SegmentGenerator::new(params, 1, "R22_S11", index, vendor_of(index))).collect();
    let started = Instant::now();
    for index in 0..segment_count {
        templates[index % templates.len()].generate_segment(&mut buffer);
        black_box(&mut buffer);
    }
    let generate_rate = total_bytes / started.elapsed().as_secs_f64() / 1e9;
    println!(
        "generate_segment           {generate_rate:7.2} GB/s  ({:.0}% of fill)",
        100.0 * generate_rate / fill_rate
    );

    let started = Instant::now();
    for index in 0..segment_count {
        let generator =
            SegmentGenerator::new(params, 2 + (index / 16) as u64, "R22_S11", index % 16, vendor_of(index));
        generator.generate_segment(&mut buffer);
        black_box(&mut buffer);
    }
    let fresh_rate = total_bytes / started.elapsed().as_secs_f64() / 1e9;
    println!(
        "new + generate_segment     {fresh_rate:7.2} GB/s  ({:.0}% of fill)",
        100.0 * fresh_rate / fill_rate
    );

    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22 exists");
    let latiss = Focalplane::latiss();
    let plan = NightPlan::baseline(1_744_758_000_000_000_000, 3, 1);
    let schedule = NightSchedule::new(plan, &lsstcam, &latiss).expect("a valid plan");
    let mut sink = FrameWriter::new(std::io::sink());
    let report = play(schedule, &mut sink, PlayOptions::new(params)).expect("io::sink never fails");
    println!(
        "driver, 3 visits of R22      {:7.2} GB/s  ({:.2} GB in {:.2} s, {} generators built)",
        report.bytes_per_second() / 1e9,
        report.bytes_sent_total as f64 / 1e9,
        report.wall_seconds,
        report.generators_built
    );
}
