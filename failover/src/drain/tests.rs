//! The drain's own tests: upload order, options, and, on a real ring of hw-sim LATISS exposures
//! drained to a local directory, the rate limit measured in the drain's clock, pause and resume,
//! and an object that appears at the base between the drain's check and its PUT.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dma_ingest::completeness::CompletenessEvent;
use dma_ingest::{BackendChoice, Endpoint, IngestEvent, IngestHandle, IngestOptions};
use hw_sim::clock::AcceleratedClock;
use hw_sim::driver::{play_with_metadata, PlayOptions};
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule};
use hw_sim::pixels::SkyParameters;
use hw_sim::transport::UnixFrameSender;
use object_store::local::LocalFileSystem;
use object_store::ObjectStoreExt;
use ringbuffer::{CreateOptions, Ring, RingOptions, SystemClock};

use super::*;

const START_NS: i64 = 1_744_761_600_000_000_000;

#[test]
fn files_go_out_wavefront_first_then_science_then_guiders() {
    let focalplane = Focalplane::lsstcam_subset(&["R00", "R22", "R44"]).expect("rafts");
    let kinds: Vec<DetectorKind> =
        upload_order(&focalplane).iter().map(|&index| focalplane.detectors()[index].kind()).collect();
    assert_eq!(kinds.len(), focalplane.detectors().len());
    let first_science = kinds.iter().position(|kind| *kind == DetectorKind::Science).expect("science");
    let first_guider = kinds.iter().position(|kind| *kind == DetectorKind::Guider).expect("guiders");
    assert!(kinds[..first_science].iter().all(|kind| *kind == DetectorKind::WavefrontHalf));
    assert_eq!(first_science, 4, "two corner rafts, two wavefront half-sensors each");
    assert!(kinds[first_science..first_guider].iter().all(|kind| *kind == DetectorKind::Science));
    assert!(kinds[first_guider..].iter().all(|kind| *kind == DetectorKind::Guider));
}

#[test]
fn invalid_options_are_refused_naming_the_field_and_the_defaults_are_valid() {
    assert_eq!(DrainOptions::default().validate(), Ok(()));
    let none_in_flight = DrainOptions { files_in_flight: 0, ..DrainOptions::default() };
    let error = none_in_flight.validate().expect_err("0 files in flight");
    assert!(error.contains("files_in_flight is 0"), "{error}");
    let backwards = DrainOptions { retry_max: Duration::from_millis(1), ..DrainOptions::default() };
    assert!(backwards.validate().expect_err("retry_max below retry_initial").contains("retry_max"));
}

#[test]
fn the_largest_file_fits_the_pool_buffers() {
    // A LATISS file is 16 extensions of 2 header blocks and 1639 data blocks plus the primary
    // header (75,576,960 B with the simulator's metadata): the buffers hold it without growing.
    assert!(largest_file_bytes(&Focalplane::latiss()) >= 75_576_960);
    assert!(largest_file_bytes(&Focalplane::latiss()) < 76 << 20);
}

/// Ingests `count` LATISS exposures (frames and header-service records) into a new ring in
/// `directory` and returns the ring once every exposure is complete and its metadata durable.
fn ingest(directory: &Path, count: u32) -> Ring {
    let mut create =
        CreateOptions::new((u64::from(count) * 80_000_000 + (64 << 20)).next_multiple_of(4096), 2);
    create.max_payload_bytes = 5 << 20;
    let ring = Ring::create(&directory.join("ring"), &create, RingOptions::default()).expect("ring");
    let (frames, metadata) = (directory.join("frames.sock"), directory.join("metadata.sock"));
    let mut options = IngestOptions::new("latiss");
    options.backend = BackendChoice::Auto;
    let ingest = IngestHandle::start(
        ring,
        Focalplane::latiss(),
        &Endpoint::Unix(frames.clone()),
        Some(&Endpoint::Unix(metadata.clone())),
        options,
        Arc::new(SystemClock),
    )
    .expect("start ingest");
    let mut plan = NightPlan::baseline(START_NS, 0, 11);
    plan.latiss = Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count });
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(plan, &lsstcam, &latiss).expect("schedule");
    {
        let mut sink = UnixFrameSender::connect(&frames).expect("connect frames");
        let mut meta = UnixFrameSender::connect(&metadata).expect("connect metadata");
        let play = PlayOptions::new(SkyParameters::default());
        play_with_metadata(schedule, &mut sink, Some(&mut meta), play, &mut |_| {}).expect("play");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut complete, mut durable) = (0, 0);
    while (complete < count || durable < 2 * count) && Instant::now() < deadline {
        match ingest.events().recv_timeout(Duration::from_millis(100)) {
            Ok(IngestEvent::Completeness(CompletenessEvent::ExposureComplete { .. })) => complete += 1,
            Ok(IngestEvent::MetadataDurable { .. }) => durable += 1,
            Ok(IngestEvent::Failed { detail }) => panic!("ingest failed: {detail}"),
            _ => {}
        }
    }
    assert_eq!((complete, durable), (count, 2 * count), "ingest did not finish");
    ingest.shutdown().expect("shutdown")
}

/// Every file under `root`, sorted, as (path relative to `root`, bytes).
fn files_under(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                found.push((path.strip_prefix(root).expect("under root").to_path_buf(), bytes));
            }
        }
    }
    found.sort();
    found
}

fn local_store(directory: &Path) -> Arc<dyn ObjectStore> {
    std::fs::create_dir_all(directory).expect("base directory");
    Arc::new(LocalFileSystem::new_with_prefix(directory).expect("local store"))
}

/// Steps `drainer` until `count` exposures are drained (complete), calling `each_step` after
/// every step; panics after `timeout`.
fn drain_all(drainer: &mut Drainer, count: usize, timeout: Duration, mut each_step: impl FnMut(&Drainer)) {
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + timeout;
    let mut drained = 0;
    while drained < count {
        assert!(Instant::now() < deadline, "drained {drained} of {count} exposures in {timeout:?}");
        match drainer.step(&stop).expect("step") {
            StepOutcome::Drained { incomplete: false, files: 1, .. } => drained += 1,
            StepOutcome::Drained { exposure_id, .. } => panic!("exposure {exposure_id} drained wrongly"),
            StepOutcome::Idle => std::thread::sleep(Duration::from_millis(5)),
            other => panic!("unexpected {other:?}"),
        }
        each_step(drainer);
    }
}

/// Issue 5: "a configurable rate limit so the drain leaves room on a shared link". With a limit
/// of X bytes/s, draining B bytes takes at least (B - burst) / X of the drain's clock, burst being
/// one file sent in one PUT, or one part of a multipart upload. The clock runs 40 times faster
/// than the wall, so the test is short; the bound holds whatever the scheduling, since every
/// admission is decided on the clock's readings.
#[test]
fn a_rate_limited_drain_takes_at_least_the_bytes_beyond_one_burst_over_the_limit_in_clock_time() {
    let work = tempfile::tempdir().expect("tempdir");
    let count = 3;
    let ring = ingest(work.path(), count);
    let limit_bytes_per_second = 2_000_000u64;
    for (name, cursor, options) in [
        ("one PUT per file", "prompt", DrainOptions::default()),
        (
            "multipart, 8 MiB parts",
            "archive",
            DrainOptions {
                multipart_threshold_bytes: 32 << 20,
                part_bytes: 8 << 20,
                ..DrainOptions::default()
            },
        ),
    ] {
        let base = work.path().join(format!("base-{cursor}"));
        let clock = Arc::new(AcceleratedClock::new(START_NS as u64, 40.0));
        let reader = ring.reader_from(cursor, "drain").expect("reader");
        let part_bytes = options.part_bytes as u64;
        let single_put = options.multipart_threshold_bytes >= 75_576_960;
        let mut drainer =
            Drainer::new(reader, local_store(&base), false, Focalplane::latiss(), clock.clone(), options)
                .expect("drainer");
        drainer.control().rate_limit_bytes_per_second.store(limit_bytes_per_second, Ordering::Relaxed);
        let started_ns = clock.now_ns();
        let mut most_in_flight = 0;
        drain_all(&mut drainer, count as usize, Duration::from_secs(60), |drainer| {
            most_in_flight = most_in_flight.max(drainer.files_in_flight());
        });
        let elapsed_ns = clock.now_ns() - started_ns;
        let files = files_under(&base);
        assert_eq!(files.len(), count as usize, "{name}");
        let bytes: u64 = files.iter().map(|(_, bytes)| bytes.len() as u64).sum();
        let largest_file = files.iter().map(|(_, bytes)| bytes.len() as u64).max().unwrap_or(0);
        let burst = if single_put { largest_file.max(part_bytes) } else { part_bytes };
        let bound_ns = (bytes - burst) as u128 * 1_000_000_000 / u128::from(limit_bytes_per_second);
        println!(
            "{name}: {bytes} B in {:.2} s of clock (bound {:.2} s), up to {most_in_flight} files in flight",
            elapsed_ns as f64 / 1e9,
            bound_ns as f64 / 1e9
        );
        assert!(u128::from(elapsed_ns) >= bound_ns, "{name}: {elapsed_ns} ns < {bound_ns} ns");
        assert_eq!(drainer.control().bytes_uploaded_total.load(Ordering::Relaxed), bytes);
    }
}

/// Issue 5: "pause and resume controls". Paused from the start, nothing is sent; resumed, the
/// first file goes; paused again after it, the files waiting for the rate limit stay put (no
/// confirmation, nothing new at the base); resumed, every exposure is drained exactly once,
/// byte for byte what the manifest says, and the cursor reaches the head.
#[test]
fn pausing_stops_between_files_and_resuming_drains_everything_exactly_once() {
    let work = tempfile::tempdir().expect("tempdir");
    let count = 3;
    let ring = ingest(work.path(), count);
    let base = work.path().join("base");
    let manifest_path = work.path().join("manifest.jsonl");
    let mut drainer = Drainer::new(
        ring.reader("drain").expect("drain cursor"),
        local_store(&base),
        false,
        Focalplane::latiss(),
        Arc::new(SystemClock),
        DrainOptions::default(),
    )
    .expect("drainer")
    .with_manifest(Manifest::open(&manifest_path).expect("manifest"));
    let control = Arc::clone(drainer.control());
    // 40 MB/s: after the first file (one burst), the next waits about 1.9 s for its tokens.
    control.rate_limit_bytes_per_second.store(40_000_000, Ordering::Relaxed);
    control.paused.store(true, Ordering::Relaxed);
    let stop = AtomicBool::new(false);
    let paused_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < paused_until {
        assert_eq!(drainer.step(&stop).expect("step"), StepOutcome::Paused);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(files_under(&base).is_empty(), "nothing is sent while paused");
    assert_eq!(drainer.files_in_flight(), 0, "nothing was even assembled");

    control.paused.store(false, Ordering::Relaxed);
    drain_all(&mut drainer, 1, Duration::from_secs(30), |_| {});
    control.paused.store(true, Ordering::Relaxed);
    let confirmed = control.objects_confirmed_total.load(Ordering::Relaxed);
    assert_eq!(confirmed, 1);
    let paused_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < paused_until {
        assert_eq!(drainer.step(&stop).expect("step"), StepOutcome::Paused);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(control.objects_confirmed_total.load(Ordering::Relaxed), confirmed, "nothing confirmed");
    assert_eq!(files_under(&base).len(), 1, "nothing new at the base while paused");
    assert!(drainer.files_in_flight() > 0, "the next files wait, assembled, for the resume");

    control.paused.store(false, Ordering::Relaxed);
    control.rate_limit_bytes_per_second.store(0, Ordering::Relaxed);
    drain_all(&mut drainer, count as usize - 1, Duration::from_secs(30), |_| {});
    let files = files_under(&base);
    assert_eq!(files.len(), count as usize);
    let (entries, warnings) = Manifest::load(&manifest_path).expect("manifest");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(entries.len(), count as usize, "each exposure recorded once");
    for ((path, bytes), entry) in files.iter().zip(&entries) {
        assert_eq!(Path::new(&entry.key), path.as_path());
        assert_eq!((entry.size, entry.crc32), (bytes.len() as u64, crc32fast::hash(bytes)), "{}", entry.key);
    }
    assert_eq!(control.objects_already_present_total.load(Ordering::Relaxed), 0, "nothing sent twice");
    assert_eq!(control.upload_failures_total.load(Ordering::Relaxed), 0);
    assert_eq!(drainer.step(&stop).expect("step"), StepOutcome::Idle);
    assert_eq!(drainer.backlog_bytes(), 0, "the cursor is at the head");
}

/// The check before a PUT and the PUT are two requests: an object written at the base between
/// them (the live lane, another node) must not be overwritten. The PUT is conditional
/// (`If-None-Match: *`; a hard link that must not exist, on a local directory), so the drain finds
/// the object, compares it, and sends its own bytes to the conflict key. The base's PUTs are
/// delayed by 1.5 s; the other writer writes 0.5 s into the drain (whether that lands before or
/// after the drain's HEAD, the outcome must be the same).
#[test]
fn an_object_written_at_the_base_just_before_our_put_is_kept_and_ours_goes_to_the_conflict_key() {
    let work = tempfile::tempdir().expect("tempdir");
    let ring = ingest(work.path(), 1);
    // The file the drain will send: drained once to a reference directory.
    let reference = work.path().join("reference");
    let reader = ring.reader_from("prompt", "drain").expect("reader");
    let mut drainer =
        Drainer::new(reader, local_store(&reference), false, Focalplane::latiss(), Arc::new(SystemClock), {
            DrainOptions::default()
        })
        .expect("drainer");
    drain_all(&mut drainer, 1, Duration::from_secs(30), |_| {});
    drop(drainer);
    let [(key, ours)]: [(PathBuf, Vec<u8>); 1] = files_under(&reference).try_into().expect("one file");

    // An in-memory base (it PUTs conditionally, like S3) whose PUTs wait 1.5 s.
    let base = Arc::new(object_store::memory::InMemory::new());
    let slow_puts = object_store::throttle::ThrottleConfig {
        wait_put_per_call: Duration::from_millis(1500),
        ..Default::default()
    };
    let store = Arc::new(object_store::throttle::ThrottledStore::new(Arc::clone(&base), slow_puts));
    let mut drainer = Drainer::new(
        ring.reader("drain").expect("drain cursor"),
        store,
        false,
        Focalplane::latiss(),
        Arc::new(SystemClock),
        DrainOptions::default(),
    )
    .expect("drainer");
    let theirs: Vec<u8> = ours.iter().map(|byte| byte ^ 0x5a).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let key = object_store::path::Path::from(key.to_str().expect("utf-8 key"));
    let other_writer = {
        let (base, key, theirs) = (Arc::clone(&base), key.clone(), theirs.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            runtime.block_on(base.put(&key, theirs.into())).expect("the other writer");
            runtime
        })
    };
    drain_all(&mut drainer, 1, Duration::from_secs(30), |_| {});
    let runtime = other_writer.join().expect("other writer");
    let control = drainer.control();
    assert_eq!(control.conflicts_total.load(Ordering::Relaxed), 1);
    let read = |key: &object_store::path::Path| {
        runtime.block_on(async { base.get(key).await?.bytes().await }).expect("object").to_vec()
    };
    assert_eq!(read(&key), theirs, "not overwritten");
    let conflict = object_store::path::Path::from(format!("{key}.conflict-{:08x}", crc32fast::hash(&ours)));
    assert_eq!(read(&conflict), ours);
}

/// A store that forwards everything to `inner` and, when a PUT is sent, counts it in `puts`
/// before waiting `put_delay`: a test can act exactly while a PUT is on the wire, and count what
/// crossed the link.
#[derive(Debug)]
struct PutSignallingStore {
    inner: Arc<dyn ObjectStore>,
    puts: Arc<AtomicUsize>,
    put_delay: Duration,
}

impl std::fmt::Display for PutSignallingStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "PutSignallingStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for PutSignallingStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        options: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.put_delay).await;
        // A copy, as a store across a network holds: `InMemory` would otherwise keep the slice
        // of the drain's pool buffer for as long as the object lives, and the pool would run dry.
        let mut copy = Vec::with_capacity(payload.content_length());
        for chunk in payload.iter() {
            copy.extend_from_slice(chunk);
        }
        self.inner.put_opts(location, object_store::PutPayload::from(copy), options).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, options).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A step whose `stop` is set mid-upload returns between attempts: the PUT under way completes
/// (and is recorded), nothing else starts, so a drain dropped next leaves nothing half done; the
/// next step without `stop` goes on.
#[test]
fn a_stopped_step_returns_between_attempts_and_the_next_step_goes_on() {
    let work = tempfile::tempdir().expect("tempdir");
    let ring = ingest(work.path(), 2);
    let base: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let puts = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(PutSignallingStore {
        inner: Arc::clone(&base),
        puts: Arc::clone(&puts),
        put_delay: Duration::from_millis(800),
    });
    let mut drainer = Drainer::new(
        ring.reader("drain").expect("drain cursor"),
        store,
        false,
        Focalplane::latiss(),
        Arc::new(SystemClock),
        // One file in flight: when the stop comes, exactly one PUT is under way.
        DrainOptions { files_in_flight: 1, ..DrainOptions::default() },
    )
    .expect("drainer");
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Stop while the first PUT is on the wire (however long assembling it took).
            while puts.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
            Instant::now()
        })
    };
    let outcome = drainer.step(&stop).expect("step");
    let returned = Instant::now();
    let stopped = stopper.join().expect("stopper");
    let control = Arc::clone(drainer.control());
    let confirmed = control.objects_confirmed_total.load(Ordering::Relaxed);
    println!("stopped step: {outcome:?}, returned {:?} after the stop", returned - stopped);
    assert_eq!(confirmed, 1, "the PUT under way when stopped completed");
    assert!(matches!(outcome, StepOutcome::Drained { .. }), "and its exposure was recorded: {outcome:?}");
    // Still stopped: nothing new starts.
    assert_eq!(drainer.step(&stop).expect("step"), StepOutcome::Idle);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(control.objects_confirmed_total.load(Ordering::Relaxed), 1, "nothing started while stopped");
    stop.store(false, Ordering::SeqCst);
    drain_all(&mut drainer, 1, Duration::from_secs(30), |_| {});
    assert_eq!(control.objects_confirmed_total.load(Ordering::Relaxed), 2);
    assert_eq!(control.upload_failures_total.load(Ordering::Relaxed), 0);
}

/// Two lanes of one stream that see the same exposures at the same moment (the live lane and the
/// backlog lane with no backlog) send each file once: the lane that claimed a key uploads it, the
/// other waits for the claim and finds the object at the base. Each PUT is slowed so that both
/// lanes are certainly on the same file at once.
#[test]
fn two_lanes_sharing_claims_send_each_file_across_the_link_once() {
    const EXPOSURES: u32 = 3;
    let work = tempfile::tempdir().expect("tempdir");
    let mut ring = ingest(work.path(), EXPOSURES);
    ring.add_cursor("second", false).expect("second cursor");
    let base: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let puts = Arc::new(AtomicUsize::new(0));
    let store: Arc<dyn ObjectStore> = Arc::new(PutSignallingStore {
        inner: Arc::clone(&base),
        puts: Arc::clone(&puts),
        put_delay: Duration::from_millis(300),
    });
    let claims = Arc::new(UploadClaims::default());
    let lane = |cursor: &str| {
        Drainer::new(
            ring.reader(cursor).expect("cursor"),
            Arc::clone(&store),
            false,
            Focalplane::latiss(),
            Arc::new(SystemClock),
            DrainOptions::default(),
        )
        .expect("drainer")
        .with_upload_claims(Arc::clone(&claims))
    };
    let lanes = [lane("drain"), lane("second")];
    let controls: Vec<_> = lanes.iter().map(|drainer| Arc::clone(drainer.control())).collect();
    let threads: Vec<_> = lanes
        .into_iter()
        .map(|mut drainer| {
            std::thread::spawn(move || {
                drain_all(&mut drainer, EXPOSURES as usize, Duration::from_secs(60), |_| {});
                drainer
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("lane");
    }
    let sum = |counter: fn(&DrainControl) -> &std::sync::atomic::AtomicU64| {
        controls.iter().map(|control| counter(control).load(Ordering::Relaxed)).sum::<u64>()
    };
    assert_eq!(puts.load(Ordering::SeqCst), EXPOSURES as usize, "one PUT per file, both lanes together");
    assert_eq!(
        sum(|control| &control.objects_confirmed_total),
        2 * u64::from(EXPOSURES),
        "each lane confirmed each file"
    );
    assert_eq!(sum(|control| &control.objects_already_present_total), u64::from(EXPOSURES));
    assert_eq!(sum(|control| &control.conflicts_total), 0);
    assert_eq!(claims.keys.lock().expect("claims").len(), 0, "every claim released");
}
