//! `drain-child`: a stream's drain in a process of its own, for the crash test in
//! `tests/tests/drain.rs` (SIGKILL mid-multipart upload, then a restart).
//!
//! Usage: `drain-child RING_DIR S3_ENDPOINT BUCKET`. Opens the ring in `RING_DIR` (LATISS), drains
//! it to the bucket (test credentials, path-style HTTP), prints `drained EXPOSURE` per exposure
//! confirmed and `done` when the ring is drained, then keeps running until killed.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dma_ingest::protocol::geometry::Focalplane;
use failover::drain::{DrainOptions, Drainer, StepOutcome};
use ringbuffer::{Ring, RingOptions, SystemClock};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ring_dir, endpoint, bucket] = args.as_slice() else {
        eprintln!("usage: drain-child RING_DIR S3_ENDPOINT BUCKET");
        std::process::exit(2);
    };
    let ring = Ring::open(&PathBuf::from(ring_dir), RingOptions::default()).unwrap_or_else(|error| {
        eprintln!("drain-child: {error}");
        std::process::exit(2);
    });
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .unwrap_or_else(|error| {
            eprintln!("drain-child: {error}");
            std::process::exit(2);
        });
    let reader = ring.reader("drain").expect("drain cursor");
    let options = DrainOptions { retry_initial: Duration::from_millis(50), ..DrainOptions::default() };
    let mut drainer =
        Drainer::new(reader, Arc::new(store), true, Focalplane::latiss(), Arc::new(SystemClock), options)
            .expect("drainer");
    let stop = AtomicBool::new(false);
    let mut idle_steps = 0;
    loop {
        match drainer.step(&stop).expect("drain step") {
            StepOutcome::Drained { exposure_id, .. } => {
                println!("drained {exposure_id}");
                idle_steps = 0;
            }
            _ => {
                idle_steps += 1;
                if idle_steps == 20 {
                    println!("done");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
