//! The drain end to end on a local-directory base: hw-sim LATISS exposures are ingested into a
//! ring, drained to raw FITS files under `raw/LATISS/{dayobs}/{obsid}/`, and the files are
//! byte-identical to files built independently from regenerated pixels and the header service's
//! metadata, and pass fitsverify. Draining the same data again (what a restart after a crash
//! between upload and cursor commit does) confirms the objects already there without sending
//! them twice; an object changed at the base is never overwritten.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dma_ingest::completeness::CompletenessEvent;
use dma_ingest::{BackendChoice, Endpoint, IngestEvent, IngestHandle, IngestOptions};
use failover::drain::{DrainOptions, Drainer, StepOutcome};
use failover::fits::{combine, ones_complement_sum, RawFile, SegmentSource, WriteOptions};
use hw_sim::driver::{play_with_metadata, PlayOptions};
use hw_sim::geometry::{Focalplane, SEGMENT_ROWS};
use hw_sim::header_service::EventKind;
use hw_sim::night::{Event, LatissPlan, NightPlan, NightSchedule};
use hw_sim::pixels::{SegmentGenerator, SkyParameters, ROW_SIZE_BYTES};
use hw_sim::transport::UnixFrameSender;
use object_store::local::LocalFileSystem;
use ringbuffer::{CreateOptions, Ring, RingOptions, SystemClock};

const START_NS: i64 = 1_744_761_600_000_000_000;
const EXPOSURES: u32 = 2;

fn plan() -> NightPlan {
    let mut plan = NightPlan::baseline(START_NS, 0, 11);
    plan.latiss = Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count: EXPOSURES });
    plan
}

/// Ingests the night into a new ring in `directory` and returns the ring.
fn ingest(directory: &Path) -> Ring {
    let mut create = CreateOptions::new(512 << 20, 2);
    create.max_payload_bytes = 5 << 20;
    let ring = Ring::create(&directory.join("ring"), &create, RingOptions::default()).expect("ring");
    let frames = directory.join("frames.sock");
    let metadata = directory.join("metadata.sock");
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
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(plan(), &lsstcam, &latiss).expect("schedule");
    let mut sink = UnixFrameSender::connect(&frames).expect("connect frames");
    let mut meta = UnixFrameSender::connect(&metadata).expect("connect metadata");
    play_with_metadata(
        schedule,
        &mut sink,
        Some(&mut meta),
        PlayOptions::new(SkyParameters::default()),
        &mut |_| {},
    )
    .expect("play");
    drop((sink, meta));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut complete, mut metadata_durable) = (0, 0);
    while (complete < EXPOSURES || metadata_durable < 2 * EXPOSURES) && Instant::now() < deadline {
        match ingest.events().recv_timeout(Duration::from_millis(100)) {
            Ok(IngestEvent::Completeness(CompletenessEvent::ExposureComplete { .. })) => complete += 1,
            Ok(IngestEvent::MetadataDurable { .. }) => metadata_durable += 1,
            Ok(IngestEvent::Failed { detail }) => panic!("ingest failed: {detail}"),
            _ => {}
        }
    }
    assert_eq!((complete, metadata_durable), (EXPOSURES, 2 * EXPOSURES), "ingest did not finish");
    ingest.shutdown().expect("shutdown")
}

/// Drains `ring` into the base directory until every exposure is drained.
fn drain(ring: &Ring, base: &Path) -> Arc<failover::drain::DrainControl> {
    drain_to(ring, Arc::new(LocalFileSystem::new_with_prefix(base).expect("base directory")), false)
}

/// Drains `ring` into `store` until every exposure is drained.
fn drain_to(
    ring: &Ring,
    store: Arc<dyn object_store::ObjectStore>,
    verify_by_etag: bool,
) -> Arc<failover::drain::DrainControl> {
    let mut drainer = Drainer::new(
        ring.reader("drain").expect("drain cursor"),
        store,
        verify_by_etag,
        Focalplane::latiss(),
        Arc::new(SystemClock),
        DrainOptions::default(),
    )
    .expect("drainer");
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drained = 0;
    while drained < EXPOSURES {
        assert!(Instant::now() < deadline, "drain did not finish");
        match drainer.step(&stop).expect("drain step") {
            StepOutcome::Drained { incomplete, files, .. } => {
                assert!(!incomplete);
                assert_eq!(files, 1);
                drained += 1;
            }
            StepOutcome::Idle | StepOutcome::Paused | StepOutcome::Island => {
                std::thread::sleep(Duration::from_millis(10))
            }
        }
    }
    Arc::clone(drainer.control())
}

/// Segments rendered by the pixel simulator, as an independent source of the expected file.
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

/// The files the base must hold: (path under the base, bytes).
fn expected_files() -> Vec<(PathBuf, Vec<u8>)> {
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let detector = latiss.detectors()[0];
    let mut files = Vec::new();
    for timed in NightSchedule::new(plan(), &lsstcam, &latiss).expect("schedule") {
        let Event::Header(header) = timed.event else { continue };
        if header.kind != EventKind::EndReadout {
            continue;
        }
        let metadata = header.to_metadata_event();
        let raw = RawFile::new(detector, &metadata).expect("metadata valid");
        let mut source = Regenerated {
            generators: (0..16)
                .map(|index| {
                    SegmentGenerator::for_detector(
                        SkyParameters::default(),
                        metadata.exposure_id,
                        &detector,
                        index,
                    )
                })
                .collect(),
            buffer: Vec::new(),
        };
        let mut bytes = Vec::new();
        raw.write(&mut bytes, &mut source, &WriteOptions::default()).expect("write expected file");
        files.push((PathBuf::from(raw.object_key()), bytes));
    }
    assert_eq!(files.len(), EXPOSURES as usize);
    files
}

fn fitsverify(path: &Path) {
    let output =
        std::process::Command::new("fitsverify").arg("-q").arg(path).output().expect(
            "fitsverify must be installed (scripts/test-all installs it: apt-get install fitsverify)",
        );
    let text = String::from_utf8_lossy(&output.stdout);
    // `-q` prints "verification OK" when there are no errors and no warnings.
    let clean = text.contains("verification OK") || text.contains("0 warning(s) and 0 error(s)");
    assert!(output.status.success() && clean, "{}: {text}", path.display());
}

#[test]
fn drained_files_are_byte_identical_to_files_built_from_regenerated_frames_and_a_resend_is_not_duplicated() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base");
    std::fs::create_dir_all(&base).expect("base");
    let first = work.path().join("first");
    std::fs::create_dir_all(&first).expect("dir");
    let ring = ingest(&first);
    let control = drain(&ring, &base);
    assert_eq!(control.objects_confirmed_total.load(Ordering::Relaxed), u64::from(EXPOSURES));
    assert_eq!(control.objects_already_present_total.load(Ordering::Relaxed), 0);

    let expected = expected_files();
    for (key, bytes) in &expected {
        let path = base.join(key);
        let stored = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(stored == *bytes, "{} differs from the file built from regenerated frames", key.display());
        fitsverify(&path);
    }
    // The cursor moved past everything: a new reader of the same ring has nothing left to drain.
    let mut reader = ring.reader("drain").expect("the drainer closed its reader");
    assert!(reader.next_record().expect("read").is_none(), "the drain cursor is at the head");
    drop(reader);

    // A restart after a crash between upload and cursor commit sees the same data again.
    let second = work.path().join("second");
    std::fs::create_dir_all(&second).expect("dir");
    let again = ingest(&second);
    let control = drain(&again, &base);
    assert_eq!(control.objects_already_present_total.load(Ordering::Relaxed), u64::from(EXPOSURES));
    assert_eq!(control.bytes_uploaded_total.load(Ordering::Relaxed), 0, "nothing is sent twice");
    assert_eq!(control.conflicts_total.load(Ordering::Relaxed), 0);

    // A different object under the same key is never overwritten.
    let (key, bytes) = &expected[0];
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    std::fs::write(base.join(key), &changed).expect("change the object at the base");
    let third = work.path().join("third");
    std::fs::create_dir_all(&third).expect("dir");
    let once_more = ingest(&third);
    let control = drain(&once_more, &base);
    assert_eq!(control.conflicts_total.load(Ordering::Relaxed), 1);
    assert_eq!(std::fs::read(base.join(key)).expect("object"), changed, "the changed object is left alone");
    let conflict = format!("{}.conflict-{:08x}", key.display(), crc32fast::hash(bytes));
    assert_eq!(std::fs::read(base.join(&conflict)).expect("conflict object"), *bytes);
}

/// A real S3-protocol server (moto's server mode, from PyPI) on a free loopback port, stopped on
/// drop. `scripts/test-all` installs it.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/test-all installs moto[server])");
        let server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Runs a boto3 snippet (the independent client) with `s3` bound to this server.
    fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{code}",
            self.endpoint
        );
        let output = std::process::Command::new("python3").args(["-c", &script]).output().expect("python3");
        assert!(output.status.success(), "boto3: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn drained_objects_in_a_real_s3_server_read_back_with_boto3_identical() {
    let server = S3Server::start();
    server.boto3("s3.create_bucket(Bucket='base')");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_allow_http(true)
        .with_bucket_name("base")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .expect("S3 store");
    let work = tempfile::tempdir().expect("tempdir");
    let ring = ingest(work.path());
    let control = drain_to(&ring, Arc::new(store), true);
    assert_eq!(control.objects_confirmed_total.load(Ordering::Relaxed), u64::from(EXPOSURES));
    for (key, bytes) in expected_files() {
        let local = work.path().join("readback.fits");
        server.boto3(&format!("s3.download_file('base', '{}', '{}')", key.display(), local.display()));
        let stored = std::fs::read(&local).expect("downloaded object");
        assert!(stored == bytes, "{} read back by boto3 differs from the expected file", key.display());
    }
    let listing = server.boto3("print(s3.list_objects_v2(Bucket='base')['KeyCount'])");
    assert_eq!(listing.trim(), EXPOSURES.to_string(), "exactly the expected objects, no extras");
    // The CRC32 travels with each object as user metadata.
    for (key, bytes) in expected_files() {
        let stored = server.boto3(&format!(
            "print(s3.head_object(Bucket='base', Key='{}')['Metadata'].get('crc32', 'absent'))",
            key.display()
        ));
        assert_eq!(stored.trim(), format!("{:08x}", crc32fast::hash(&bytes)), "{}", key.display());
    }
}

#[test]
fn the_link_cut_mid_upload_many_times_leaves_exactly_the_expected_objects() {
    use failover::link::{HttpProbe, LinkMonitorHandle, LinkOptions};
    use hw_sim::link_proxy::{CutMode, LinkProxy};

    let server = S3Server::start();
    server.boto3("s3.create_bucket(Bucket='base')");
    let upstream: std::net::SocketAddr =
        server.endpoint.trim_start_matches("http://").parse().expect("moto address");
    let proxy = LinkProxy::start("127.0.0.1:0".parse().expect("addr"), upstream).expect("proxy");
    let link = proxy.control();
    // 40 MB/s: each 75.5 MB file takes about 2 s, so the cuts land mid-upload.
    link.set_bandwidth_limit(Some(40_000_000));
    let summit_side = format!("http://{}", proxy.local_addr());
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&summit_side)
        .with_allow_http(true)
        .with_bucket_name("base")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .with_retry(object_store::RetryConfig { max_retries: 0, ..Default::default() })
        .build()
        .expect("S3 store through the proxy");
    let options = LinkOptions {
        probe_interval: Duration::from_millis(50),
        probe_timeout: Duration::from_millis(100),
        degraded_rtt: Duration::from_millis(80),
        ..LinkOptions::default()
    };
    let probe = HttpProbe::new(proxy.local_addr(), "127.0.0.1", "/").expect("probe");
    let monitor =
        Arc::new(LinkMonitorHandle::spawn(Box::new(probe), options, Arc::new(SystemClock)).expect("monitor"));

    let work = tempfile::tempdir().expect("tempdir");
    let ring = ingest(work.path());
    let drain_options = DrainOptions {
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..DrainOptions::default()
    };
    let mut drainer = Drainer::new(
        ring.reader("drain").expect("drain cursor"),
        Arc::new(store),
        true,
        Focalplane::latiss(),
        Arc::new(SystemClock),
        drain_options,
    )
    .expect("drainer")
    .with_link_monitor(Arc::clone(&monitor));
    let stop = Arc::new(AtomicBool::new(false));
    let drain_thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut drained = Vec::new();
            let mut islands = 0u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while drained.len() < EXPOSURES as usize && Instant::now() < deadline {
                match drainer.step(&stop).expect("drain step") {
                    StepOutcome::Drained { exposure_id, .. } => drained.push(exposure_id),
                    StepOutcome::Island => {
                        islands += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            (drained, islands, Arc::clone(drainer.control()))
        })
    };
    // Cut and restore the link five times while files are in flight.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(900));
        link.cut(CutMode::Reset);
        std::thread::sleep(Duration::from_millis(600));
        link.restore();
    }
    let (drained, islands, control) = drain_thread.join().expect("drain thread");
    stop.store(true, Ordering::Relaxed);
    assert_eq!(drained.len(), EXPOSURES as usize, "every exposure drained after the cuts");
    assert!(
        control.upload_failures_total.load(Ordering::Relaxed) + islands > 0,
        "the cuts were felt (failed uploads or island steps)"
    );
    assert_eq!(control.conflicts_total.load(Ordering::Relaxed), 0);
    for (key, bytes) in expected_files() {
        let local = work.path().join("readback.fits");
        server.boto3(&format!("s3.download_file('base', '{}', '{}')", key.display(), local.display()));
        assert!(std::fs::read(&local).expect("object") == bytes, "{} differs", key.display());
    }
    let listing = server.boto3(
        "r = s3.list_objects_v2(Bucket='base'); print(r['KeyCount']); \
         u = s3.list_multipart_uploads(Bucket='base'); print(len(u.get('Uploads', [])))",
    );
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines, [EXPOSURES.to_string().as_str(), "0"], "exactly the objects, no leftover parts");
}

/// Plays `count` LATISS exposures of the night starting `day` days after `START_NS` into the
/// ingest's sockets.
fn play_latiss(frames: &Path, metadata: &Path, day: i64, count: u32) {
    play_latiss_with(frames, Some(metadata), day, count);
}

/// [`play_latiss`], optionally without the header service's messages.
fn play_latiss_with(frames: &Path, metadata: Option<&Path>, day: i64, count: u32) {
    let mut plan = NightPlan::baseline(START_NS + day * 86_400_000_000_000, 0, 11);
    plan.latiss = Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count });
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(plan, &lsstcam, &latiss).expect("schedule");
    let mut sink = UnixFrameSender::connect(frames).expect("connect frames");
    let mut meta = metadata.map(|path| UnixFrameSender::connect(path).expect("connect metadata"));
    let meta = meta.as_mut().map(|sender| sender as &mut dyn hw_sim::transport::FrameSink);
    play_with_metadata(schedule, &mut sink, meta, PlayOptions::new(SkyParameters::default()), &mut |_| {})
        .expect("play");
}

#[test]
fn the_live_lane_sends_the_newest_exposure_while_the_backlog_lane_catches_up_in_order() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base");
    std::fs::create_dir_all(&base).expect("base");
    let LiveIngest { ingest, mut readers, frames, metadata } = start_ingest(work.path(), &["drain", "live"]);
    let live_reader = readers.pop().expect("live reader");
    let backlog_reader = readers.pop().expect("drain reader");
    // A backlog of three exposures (the link was down), then the link is back.
    play_latiss(&frames, &metadata, 0, 3);
    let wait_complete = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut complete = 0;
        while complete < count {
            assert!(Instant::now() < deadline, "ingest did not complete {count} exposures");
            if let Ok(IngestEvent::Completeness(CompletenessEvent::ExposureComplete { .. })) =
                ingest.events().recv_timeout(Duration::from_millis(100))
            {
                complete += 1;
            }
        }
    };
    wait_complete(3);
    std::thread::sleep(Duration::from_millis(200)); // the last metadata records are durable too
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(&base).expect("base directory"));
    let lane = |reader, live| {
        let options = DrainOptions { live, ..DrainOptions::default() };
        Drainer::new(reader, Arc::clone(&store), false, Focalplane::latiss(), Arc::new(SystemClock), options)
            .expect("drainer")
    };
    let backlog = lane(backlog_reader, false);
    let live = lane(live_reader, true);
    // The backlog lane shares the link: 40 MB/s, about 2 s a file.
    backlog.control().rate_limit_bytes_per_second.store(40_000_000, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |mut drainer: Drainer, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let mut order = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match drainer.step(&stop).expect("drain step") {
                    StepOutcome::Drained { exposure_id, .. } => order.push((exposure_id, Instant::now())),
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            (order, Arc::clone(drainer.control()))
        })
    };
    let backlog_thread = spawn(backlog, Arc::clone(&stop));
    let live_thread = spawn(live, Arc::clone(&stop));
    // The newest exposure, a day later (a new DAYOBS, so new exposure ids).
    play_latiss(&frames, &metadata, 1, 1);
    wait_complete(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected_files = 4;
    while walk_fits(&base).len() < expected_files {
        assert!(Instant::now() < deadline, "the base did not receive {expected_files} files");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the backlog lane finish (it confirms the newest file without sending it again).
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (backlog_order, backlog_control) = backlog_thread.join().expect("backlog lane");
    let (live_order, _live_control) = live_thread.join().expect("live lane");
    let _ = ingest.shutdown().expect("shutdown");

    assert_eq!(live_order.len(), 1, "the live lane sends only the newest exposure: {live_order:?}");
    let (newest, newest_at) = live_order[0];
    let backlog_ids: Vec<u64> = backlog_order.iter().map(|(id, _)| *id).collect();
    let mut sorted = backlog_ids.clone();
    sorted.sort_unstable();
    assert_eq!(backlog_ids, sorted, "the backlog drains in order");
    assert_eq!(backlog_ids.len(), 4, "the backlog lane confirms every exposure, the newest included");
    assert_eq!(*backlog_ids.last().expect("4 ids"), newest);
    let third_backlog_at = backlog_order[2].1;
    assert!(newest_at < third_backlog_at, "the newest exposure reached the base before the backlog was done");
    assert_eq!(backlog_control.objects_already_present_total.load(Ordering::Relaxed), 1);
    assert_eq!(backlog_control.conflicts_total.load(Ordering::Relaxed), 0);
}

#[test]
fn a_drain_killed_mid_multipart_upload_and_restarted_leaves_exactly_the_expected_objects() {
    use hw_sim::link_proxy::LinkProxy;
    use std::io::BufRead;

    let server = S3Server::start();
    server.boto3("s3.create_bucket(Bucket='base')");
    let work = tempfile::tempdir().expect("tempdir");
    drop(ingest(work.path())); // a ring with the night's exposures, closed
    let upstream: std::net::SocketAddr =
        server.endpoint.trim_start_matches("http://").parse().expect("moto address");
    // 20 MB/s through the proxy: a 75.5 MB file takes about 4 s, so the kill lands mid-upload.
    let proxy = LinkProxy::start("127.0.0.1:0".parse().expect("addr"), upstream).expect("proxy");
    proxy.control().set_bandwidth_limit(Some(20_000_000));
    let ring_dir = work.path().join("ring");
    let spawn = |endpoint: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_drain-child"))
            .args([ring_dir.to_str().expect("utf-8 path"), &endpoint, "base"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("drain-child")
    };
    let mut first = spawn(format!("http://{}", proxy.local_addr()));
    std::thread::sleep(Duration::from_millis(1500));
    first.kill().expect("SIGKILL the drain");
    first.wait().expect("reap");
    let before = server.boto3("print(s3.list_objects_v2(Bucket='base')['KeyCount'])");
    assert_eq!(before.trim(), "0", "killed before its first file completed");

    // Restart at full speed: it resumes from its persisted cursor.
    let mut second = spawn(server.endpoint.clone());
    let stdout = second.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drained = 0;
    while drained < EXPOSURES {
        assert!(Instant::now() < deadline, "the restarted drain did not finish");
        match lines.next() {
            Some(Ok(line)) if line.starts_with("drained ") => drained += 1,
            Some(Ok(_)) => {}
            _ => panic!("drain-child ended early"),
        }
    }
    second.kill().expect("stop the drain");
    second.wait().expect("reap");
    for (key, bytes) in expected_files() {
        let local = work.path().join("readback.fits");
        server.boto3(&format!("s3.download_file('base', '{}', '{}')", key.display(), local.display()));
        assert!(std::fs::read(&local).expect("object") == bytes, "{} differs", key.display());
    }
    let listing = server.boto3(
        "r = s3.list_objects_v2(Bucket='base'); print(r['KeyCount']); \
         u = s3.list_multipart_uploads(Bucket='base'); print(len(u.get('Uploads', [])))",
    );
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines[0], EXPOSURES.to_string(), "exactly the expected objects: no second version, no extra");
    // The killed process's upload cannot be aborted by anyone who does not know its id: at most
    // one orphan, for the bucket's AbortIncompleteMultipartUpload lifecycle rule.
    assert!(lines[1] == "0" || lines[1] == "1", "orphaned uploads: {}", lines[1]);
}

#[test]
fn the_drain_records_a_manifest_that_verify_base_checks_the_base_against() {
    use failover::manifest::{verify_base, Manifest};

    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base");
    std::fs::create_dir_all(&base).expect("base");
    let ring = ingest(work.path());
    let manifest_path = work.path().join("drain-manifest.jsonl");
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(&base).expect("base directory"));
    let mut drainer = Drainer::new(
        ring.reader("drain").expect("drain cursor"),
        Arc::clone(&store),
        false,
        Focalplane::latiss(),
        Arc::new(SystemClock),
        DrainOptions::default(),
    )
    .expect("drainer")
    .with_manifest(Manifest::open(&manifest_path).expect("manifest"));
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drained = 0;
    while drained < EXPOSURES {
        assert!(Instant::now() < deadline, "drain did not finish");
        if let StepOutcome::Drained { .. } = drainer.step(&stop).expect("step") {
            drained += 1;
        }
    }
    let (entries, warnings) = Manifest::load(&manifest_path).expect("load manifest");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(entries.len(), EXPOSURES as usize);
    let runtime = tokio_runtime();
    let report = runtime.block_on(verify_base(store.as_ref(), "raw/", &entries, true)).expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.matched, EXPOSURES as usize);

    // After an "outage" an object went missing: verification names it.
    std::fs::remove_file(base.join(&entries[0].key)).expect("remove one object");
    let report = runtime.block_on(verify_base(store.as_ref(), "raw/", &entries, true)).expect("verify");
    assert!(!report.is_clean());
    assert_eq!(report.missing.len(), 1, "{report:?}");
    assert!(format!("{:?}", report.missing[0]).contains(&entries[0].key));
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn an_exposure_without_metadata_is_held_in_the_ring_while_later_exposures_drain() {
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base");
    std::fs::create_dir_all(&base).expect("base");
    let LiveIngest { ingest, mut readers, frames, metadata } = start_ingest(work.path(), &["drain"]);
    let reader = readers.pop().expect("drain reader");
    play_latiss_with(&frames, None, 0, 1); // the header service was down
    play_latiss_with(&frames, Some(&metadata), 1, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut complete = 0;
    while complete < 2 {
        assert!(Instant::now() < deadline, "ingest did not complete");
        if let Ok(IngestEvent::Completeness(CompletenessEvent::ExposureComplete { .. })) =
            ingest.events().recv_timeout(Duration::from_millis(100))
        {
            complete += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let store = Arc::new(LocalFileSystem::new_with_prefix(&base).expect("base directory"));
    let options = DrainOptions { incomplete_timeout: Duration::from_millis(200), ..DrainOptions::default() };
    let mut drainer =
        Drainer::new(reader, store, false, Focalplane::latiss(), Arc::new(SystemClock), options)
            .expect("drainer");
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut drained = Vec::new();
    while drained.is_empty() || drainer.control().exposures_held_total.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the drain neither drained nor held: {drained:?}");
        if let StepOutcome::Drained { exposure_id, .. } = drainer.step(&stop).expect("step") {
            drained.push(exposure_id);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(drained.len(), 1, "only the exposure with metadata is drained");
    assert_eq!(walk_fits(&base).len(), 1);
    assert_eq!(drainer.open_exposures().len(), 1, "the other one is held");
    assert!(drainer.backlog_bytes() > 0, "the cursor stays before the held exposure");
    drop(drainer);
    let _ = ingest.shutdown().expect("shutdown");
}

/// A running LATISS ingest into a new 1 GiB ring in `directory`, with readers on `cursors`
/// (created as optional cursors if the ring does not have them), opened before the ring moves
/// into the ingest.
struct LiveIngest {
    ingest: IngestHandle,
    readers: Vec<ringbuffer::Reader>,
    frames: PathBuf,
    metadata: PathBuf,
}

fn start_ingest(directory: &Path, cursors: &[&str]) -> LiveIngest {
    let mut create = CreateOptions::new(1 << 30, 2);
    create.max_payload_bytes = 5 << 20;
    let mut ring = Ring::create(&directory.join("ring"), &create, RingOptions::default()).expect("ring");
    let readers = cursors
        .iter()
        .map(|cursor| {
            if ring.reader(cursor).is_err() {
                ring.add_cursor(cursor, false).expect("add cursor");
            }
            ring.reader(cursor).expect("reader")
        })
        .collect();
    let (frames, metadata) = (directory.join("frames.sock"), directory.join("metadata.sock"));
    let ingest = IngestHandle::start(
        ring,
        Focalplane::latiss(),
        &Endpoint::Unix(frames.clone()),
        Some(&Endpoint::Unix(metadata.clone())),
        IngestOptions::new("latiss"),
        Arc::new(SystemClock),
    )
    .expect("ingest");
    LiveIngest { ingest, readers, frames, metadata }
}

#[test]
fn an_exposure_missing_a_segment_is_drained_after_the_timeout_as_an_incomplete_file() {
    use hw_sim::faults::{FaultKind, FaultPlan};

    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("base");
    std::fs::create_dir_all(&base).expect("base");
    let LiveIngest { ingest, mut readers, frames, metadata } = start_ingest(work.path(), &["drain"]);
    let mut plan = NightPlan::baseline(START_NS, 0, 11);
    plan.latiss = Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count: 1 });
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    let schedule = NightSchedule::new(plan, &lsstcam, &latiss).expect("schedule");
    let mut options = PlayOptions::new(SkyParameters::default());
    // Frame 5 and every later frame of its segment never arrive.
    options.fault_plan = Some(FaultPlan::new(5).at(5, FaultKind::MissingSegment));
    let mut sink = UnixFrameSender::connect(&frames).expect("connect frames");
    let mut meta = UnixFrameSender::connect(&metadata).expect("connect metadata");
    let report =
        play_with_metadata(schedule, &mut sink, Some(&mut meta), options, &mut |_| {}).expect("play");
    assert_eq!(report.fault_counts.get(FaultKind::MissingSegment), 1);
    drop((sink, meta));
    std::thread::sleep(Duration::from_millis(500)); // everything sent is durable

    let store = Arc::new(LocalFileSystem::new_with_prefix(&base).expect("base directory"));
    let drain_options =
        DrainOptions { incomplete_timeout: Duration::from_millis(300), ..DrainOptions::default() };
    let mut drainer = Drainer::new(
        readers.pop().expect("drain reader"),
        store,
        false,
        Focalplane::latiss(),
        Arc::new(SystemClock),
        drain_options,
    )
    .expect("drainer");
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        assert!(Instant::now() < deadline, "the incomplete exposure was never drained");
        match drainer.step(&stop).expect("step") {
            StepOutcome::Drained { incomplete, files, .. } => break (incomplete, files),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(outcome, (true, 1), "drained once, marked incomplete");
    assert_eq!(drainer.control().exposures_incomplete_total.load(Ordering::Relaxed), 1);
    assert_eq!(drainer.backlog_bytes(), 0, "the cursor moved past it: it is not held forever");
    let file = walk_fits(&base).pop().expect("one file at the base");
    fitsverify(&file);
    let bytes = std::fs::read(&file).expect("file");
    let primary = String::from_utf8_lossy(&bytes[..2880 * 4]);
    assert!(primary.contains("INCOMPL =                    T"), "the primary header says INCOMPL = T");
    drop(drainer);
    let _ = ingest.shutdown().expect("shutdown");
}

fn walk_fits(directory: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(directory).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk_fits(&path));
        } else if path.extension().is_some_and(|extension| extension == "fits") {
            found.push(path);
        }
    }
    found
}
