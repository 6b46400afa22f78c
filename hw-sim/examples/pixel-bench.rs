//! Single-threaded throughput of the sky-like pixel generator, next to a `fill` reference.
//!
//! Run in release mode: `cargo run --release -p hw-sim --example pixel-bench [gigabytes]`.
//! It writes about 2 GB (by default) of segments into one reused 4.7 MB buffer three ways and
//! prints GB/s (10^9 bytes per second) on one core:
//! - `fill`: `slice::fill` of the same buffer, the memset-style ceiling;
//! - `generate_segment`: noise and byte output from prebuilt templates (the streaming cost);
//! - `new + generate_segment`: a fresh generator per segment, template build included (what a
//!   DAQ simulator pays when every segment of every exposure is new).

use std::hint::black_box;
use std::time::Instant;

use hw_sim::geometry::{Vendor, SEGMENT_SIZE_BYTES};
use hw_sim::pixels::{SegmentGenerator, SkyParameters};

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
}
