//! `ingest-child`: one LATISS stream's ingest in a process of its own, for the crash test in
//! `tests/tests/ingest.rs` (metadata records survive a SIGKILL).
//!
//! Usage: `ingest-child RING_DIR FRAMES_SOCKET METADATA_SOCKET io_uring|portable`. Creates a
//! 64 MiB ring in `RING_DIR`, starts the ingest on the two Unix sockets with the chosen I/O path,
//! prints `listening BACKEND` once both sockets accept, then one line per event on stdout:
//! `metadata-durable EXPOSURE KIND SEQUENCE`, `segment-durable EXPOSURE SEGMENT`,
//! `exposure-complete EXPOSURE`, `rejected KIND DETAIL` or `failed DETAIL`. It runs until it is
//! killed; the test kills it with SIGKILL, so nothing here ever shuts the ingest down cleanly.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use dma_ingest::completeness::CompletenessEvent;
use dma_ingest::protocol::geometry::Focalplane;
use dma_ingest::{BackendChoice, Endpoint, IngestEvent, IngestHandle, IngestOptions};
use ringbuffer::{CreateOptions, Ring, RingOptions, SystemClock};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ring_dir, frames, metadata, backend] = args.as_slice() else {
        eprintln!("usage: ingest-child RING_DIR FRAMES_SOCKET METADATA_SOCKET io_uring|portable");
        std::process::exit(2);
    };
    let backend: BackendChoice = backend.parse().unwrap_or_else(|error| {
        eprintln!("ingest-child: {error}");
        std::process::exit(2);
    });
    let mut create = CreateOptions::new(64 << 20, 2);
    create.max_payload_bytes = 5 << 20;
    let ring = Ring::create(&PathBuf::from(ring_dir), &create, RingOptions::default())
        .unwrap_or_else(|error| panic!("creating the ring in {ring_dir}: {error}"));
    let mut options = IngestOptions::new("latiss");
    options.backend = backend;
    options.buffer_count = 4;
    let ingest = IngestHandle::start(
        ring,
        Focalplane::latiss(),
        &Endpoint::Unix(frames.into()),
        Some(&Endpoint::Unix(metadata.into())),
        options,
        Arc::new(SystemClock),
    )
    .unwrap_or_else(|error| panic!("starting the ingest: {error}"));
    // stdout is line-buffered: each line reaches the test as soon as it is printed.
    println!("listening {:?}", ingest.backend());
    while let Ok(event) = ingest.events().recv() {
        match event {
            IngestEvent::MetadataDurable { exposure_id, kind, sequence } => {
                println!("metadata-durable {exposure_id} {kind} {sequence}");
            }
            IngestEvent::Completeness(CompletenessEvent::SegmentDurable { exposure_id, segment }) => {
                println!("segment-durable {exposure_id} {}", segment.extname());
            }
            IngestEvent::Completeness(CompletenessEvent::ExposureComplete { exposure_id, .. }) => {
                println!("exposure-complete {exposure_id}");
            }
            IngestEvent::Completeness(_) => {}
            IngestEvent::Rejected { kind, detail, .. } => println!("rejected {} {detail}", kind.as_str()),
            IngestEvent::Failed { detail } => println!("failed {detail}"),
        }
    }
}
