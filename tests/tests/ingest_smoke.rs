//! Smoke test of the ingest on both I/O paths: two LATISS exposures from hw-sim over a Unix
//! socket end up durable in the ring, bit-identical to regenerated frames.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dma_ingest::completeness::CompletenessEvent;
use dma_ingest::{Backend, BackendChoice, Endpoint, IngestEvent, IngestHandle, IngestOptions};
use hw_sim::driver::{play_with_metadata, PlayOptions};
use hw_sim::geometry::Focalplane;
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule};
use hw_sim::pixels::SkyParameters;
use hw_sim::transport::UnixFrameSender;
use ringbuffer::{CreateOptions, RecordKind, Ring, RingOptions, SystemClock};

fn run(choice: BackendChoice, expected: Backend) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut create = CreateOptions::new(256 << 20, 2);
    create.max_payload_bytes = 5 << 20;
    let ring = Ring::create(&dir.path().join("ring"), &create, RingOptions::default()).expect("ring");
    let frames = Endpoint::Unix(dir.path().join("frames.sock"));
    let metadata = Endpoint::Unix(dir.path().join("metadata.sock"));
    let mut options = IngestOptions::new("latiss");
    options.backend = choice;
    let ingest = IngestHandle::start(
        ring,
        Focalplane::latiss(),
        &frames,
        Some(&metadata),
        options,
        Arc::new(SystemClock),
    )
    .expect("start");
    assert_eq!(ingest.backend(), expected);

    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let mut plan = NightPlan::baseline(1_744_761_600_000_000_000, 0, 7);
    plan.latiss = Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count: 2 });
    let schedule = NightSchedule::new(plan, &lsstcam, &latiss).expect("schedule");
    let mut sink = UnixFrameSender::connect(dir.path().join("frames.sock")).expect("connect frames");
    let mut meta_sink = UnixFrameSender::connect(dir.path().join("metadata.sock")).expect("connect metadata");
    let sky = SkyParameters::default();
    let report =
        play_with_metadata(schedule, &mut sink, Some(&mut meta_sink), PlayOptions::new(sky), &mut |_| {})
            .expect("play");
    drop(sink);
    drop(meta_sink);
    assert_eq!(report.exposures_completed, 2);

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut complete = 0;
    let mut metadata_durable = 0;
    while (complete < 2 || metadata_durable < 4) && Instant::now() < deadline {
        match ingest.events().recv_timeout(Duration::from_millis(100)) {
            Ok(IngestEvent::Completeness(CompletenessEvent::ExposureComplete { .. })) => complete += 1,
            Ok(IngestEvent::MetadataDurable { .. }) => metadata_durable += 1,
            Ok(IngestEvent::Rejected { detail, .. }) => panic!("rejected: {detail}"),
            Ok(IngestEvent::Failed { detail }) => panic!("failed: {detail}"),
            _ => {}
        }
    }
    assert_eq!((complete, metadata_durable), (2, 4));
    let counters = &ingest.observer().counters;
    let frames_durable = counters.frames_durable_total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(frames_durable, report.frames_sent_total);
    let ring = ingest.shutdown().expect("shutdown");

    let mut reader = ring.reader("drain").expect("drain reader");
    let mut frames_read = 0u64;
    let mut metadata_read = 0u64;
    let mut pixels = Vec::new();
    while let Some(record) = reader.next_record().expect("read") {
        match record.info.kind {
            RecordKind::Frame => {
                let header = hw_sim::frame::decode_frame(record.payload).expect("valid frame in ring");
                let detector = &latiss.detectors()[0];
                let generator = hw_sim::pixels::SegmentGenerator::for_detector(
                    sky,
                    header.exposure_id.get(),
                    detector,
                    (0..16)
                        .find(|index| {
                            hw_sim::driver::segment_wire_code(&detector.segment(*index)) == header.segment
                        })
                        .expect("segment"),
                );
                pixels.resize(header.payload_length.get() as usize, 0);
                generator.generate_rows(
                    u32::from(header.first_row.get()),
                    u32::from(header.row_count.get()),
                    &mut pixels,
                );
                assert_eq!(
                    &record.payload[4096..4096 + pixels.len()],
                    &pixels[..],
                    "frame {frames_read} differs"
                );
                frames_read += 1;
            }
            RecordKind::Metadata => {
                dma_ingest::metadata_channel::decode_record(record.payload).expect("metadata record");
                metadata_read += 1;
            }
            other => panic!("unexpected record kind {other:?}"),
        }
    }
    assert_eq!(frames_read, report.frames_sent_total);
    assert_eq!(metadata_read, 4);
}

#[test]
fn io_uring_path_ingests_latiss_bit_identical() {
    run(BackendChoice::IoUring, Backend::IoUring);
}

#[test]
fn portable_path_ingests_latiss_bit_identical() {
    run(BackendChoice::Portable, Backend::Portable);
}
