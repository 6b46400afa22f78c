//! Helpers shared by the drain's fault tests (`drain_faults.rs`): a real S3-protocol server
//! (moto) that can be stopped and restarted on its port or run inside a network namespace, boto3
//! as the independent client, LATISS exposures ingested into a ring with hw-sim, where each
//! exposure's records lie in the ring, the files the base must hold (built from regenerated
//! pixels), and the drain driven on its own thread.
//!
//! Copied, not shared, from `tests/tests/drain.rs` (`S3Server`, `expected_files`,
//! `start_ingest`), extended; the two can be merged here.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dma_ingest::completeness::CompletenessEvent;
use dma_ingest::protocol::frame::FrameHeader;
use dma_ingest::{Endpoint, IngestEvent, IngestHandle, IngestOptions};
use failover::drain::{Drainer, StepOutcome};
use failover::fits::{combine, ones_complement_sum, RawFile, SegmentSource, WriteOptions};
use hw_sim::driver::{play_with_metadata, ExposureProgress, PlayOptions};
use hw_sim::geometry::{Focalplane, SEGMENT_ROWS};
use hw_sim::header_service::EventKind;
use hw_sim::night::{Event, LatissPlan, NightPlan, NightSchedule, TimeCompression};
use hw_sim::pixels::{SegmentGenerator, SkyParameters, ROW_SIZE_BYTES};
use hw_sim::transport::UnixFrameSender;
use ringbuffer::{CreateOptions, RecordKind, Ring, RingOptions, SystemClock};

/// The night's first shutter open (2025-04-16 00:00 UTC); night `day` starts `day` days later.
pub const START_NS: i64 = 1_744_761_600_000_000_000;
/// The bucket every test drains to.
pub const BUCKET: &str = "base";
/// LATISS's real cadence: 30 s exposures, one every 40 s (2 s readout, the rest overheads).
pub const LATISS_EXPOSURE_SECONDS: f64 = 30.0;
/// See [`LATISS_EXPOSURE_SECONDS`].
pub const LATISS_CADENCE_SECONDS: f64 = 40.0;

/// The tests of one binary run one at a time: each starts servers, rings and threads sized for the
/// 2-core CI machine, and the latency test measures time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the binary's test lock (a test that panicked released it: the lock is recovered).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A seed from `DRAIN_FAULTS_SEED` (to replay a failure) or from the clock, printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("DRAIN_FAULTS_SEED") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("DRAIN_FAULTS_SEED={text:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    };
    println!("{test}: seed {seed} (replay with DRAIN_FAULTS_SEED={seed})");
    seed
}

/// SplitMix64, for the tests' own seeded choices (delays, cut points).
pub struct TestRng(u64);

impl TestRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    /// Uniform in `low..=high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        assert!(low <= high, "empty range {low}..={high}");
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Duration::from_millis(low + z % (high - low + 1))
    }
}

/// A real S3-protocol server (moto's server mode, from PyPI), stopped on drop. `scripts/test-all`
/// installs it. Moto keeps objects in memory: a restart loses them, like a base that lost data.
pub struct S3Server {
    child: Option<std::process::Child>,
    address: SocketAddr,
    namespace: Option<String>,
}

impl S3Server {
    /// On a free loopback port.
    pub fn start() -> S3Server {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        S3Server::start_at(SocketAddr::from(([127, 0, 0, 1], port)), None)
    }

    /// On `address`, inside network namespace `namespace` if given (`ip netns exec`).
    pub fn start_at(address: SocketAddr, namespace: Option<&str>) -> S3Server {
        let mut server = S3Server { child: None, address, namespace: namespace.map(str::to_owned) };
        server.restart();
        server
    }

    /// `http://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Kills the server (connections refused from now on; its objects are gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same address (empty: no bucket, no objects) and waits until
    /// it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let (host, port) = (self.address.ip().to_string(), self.address.port().to_string());
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = std::process::Command::new("ip");
                command.args(["netns", "exec", namespace, "python3"]);
                command
            }
            None => std::process::Command::new("python3"),
        };
        let child = command
            .args(["-m", "moto.server", "-H", &host, "-p", &port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/test-all installs moto[server])");
        self.child = Some(child);
        let address = self.address;
        let wait = move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
                assert!(Instant::now() < deadline, "moto server did not start on {address}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        // Asked from the server's own namespace: from another one, a cut or missing route could
        // send the connection to whatever answers behind the default route.
        match &self.namespace {
            Some(namespace) => in_namespace(namespace, wait),
            None => wait(),
        }
    }

    /// Runs a boto3 snippet (the independent client) with `s3` bound to this server.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{code}",
            self.endpoint()
        );
        // Run next to the server (in its namespace, if it has one), whatever the link's state.
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = std::process::Command::new("ip");
                command.args(["netns", "exec", namespace, "python3"]);
                command
            }
            None => std::process::Command::new("python3"),
        };
        let output = command.args(["-c", &script]).output().expect("python3");
        assert!(output.status.success(), "boto3: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Creates the test bucket.
    pub fn create_bucket(&self) {
        self.boto3(&format!("s3.create_bucket(Bucket='{BUCKET}')"));
    }

    /// What the bucket holds, read with boto3: every key (with its bytes, downloaded into
    /// `scratch`) and every multipart upload still open.
    pub fn contents(&self, scratch: &Path) -> BaseContents {
        let directory = scratch.join(format!("download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).expect("download directory");
        let listing = self.boto3(&format!(
            "keys = []\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}'):\n    \
                 keys += [o['Key'] for o in page.get('Contents', [])]\n\
             for index, key in enumerate(keys):\n    \
                 s3.download_file('{BUCKET}', key, '{directory}/%d' % index)\n    \
                 print('key', key)\n\
             for upload in s3.list_multipart_uploads(Bucket='{BUCKET}').get('Uploads', []):\n    \
                 print('upload', upload['Key'], upload['UploadId'])\n",
            directory = directory.display()
        ));
        let mut contents = BaseContents::default();
        for line in listing.lines() {
            if let Some(key) = line.strip_prefix("key ") {
                let path = directory.join(contents.objects.len().to_string());
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                contents.objects.push((key.to_owned(), bytes));
            } else if let Some(upload) = line.strip_prefix("upload ") {
                contents.open_uploads.push(upload.to_owned());
            }
        }
        std::fs::remove_dir_all(&directory).expect("remove downloads");
        contents
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bucket's contents as boto3 saw them.
#[derive(Default)]
pub struct BaseContents {
    /// (key, bytes), in listing order.
    pub objects: Vec<(String, Vec<u8>)>,
    /// `key upload-id` of every multipart upload neither completed nor aborted.
    pub open_uploads: Vec<String>,
}

impl BaseContents {
    /// Asserts the bucket holds exactly `expected` (same keys, byte-identical), no other key,
    /// and no open multipart upload.
    pub fn assert_exactly(&self, expected: &[ExpectedFile]) {
        let mut keys: Vec<&str> = self.objects.iter().map(|(key, _)| key.as_str()).collect();
        keys.sort_unstable();
        let mut wanted: Vec<&str> = expected.iter().map(|file| file.key.as_str()).collect();
        wanted.sort_unstable();
        assert_eq!(keys, wanted, "the base holds exactly the expected keys, no extra");
        for file in expected {
            let (_, bytes) = self.objects.iter().find(|(key, _)| *key == file.key).expect("listed above");
            assert!(
                *bytes == file.bytes,
                "{} at the base ({} bytes) differs from the file built from regenerated frames ({} bytes)",
                file.key,
                bytes.len(),
                file.bytes.len()
            );
        }
        assert!(
            self.open_uploads.is_empty(),
            "multipart uploads left open at the base: {:?}",
            self.open_uploads
        );
    }
}

/// An S3 client of the test bucket at `endpoint` with `retry` (test credentials, plain HTTP).
pub fn s3_store(endpoint: &str, retry: object_store::RetryConfig) -> Arc<dyn object_store::ObjectStore> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .with_retry(retry)
        .build()
        .expect("S3 store");
    Arc::new(store)
}

/// The appliance's own S3 client (`failover::store::open_s3`: its timeouts and retries) of the
/// test bucket at `endpoint`.
pub fn appliance_store(endpoint: &str) -> Arc<dyn object_store::ObjectStore> {
    failover::store::open_s3(&failover::store::S3Settings {
        endpoint: Some(endpoint.to_owned()),
        bucket: BUCKET.to_owned(),
        region: Some("us-east-1".to_owned()),
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some("test".to_owned()),
    })
    .expect("the appliance's S3 store")
}

/// `count` LATISS exposures at the real cadence, on night `day`.
pub fn latiss_plan(day: i64, count: u32) -> NightPlan {
    let mut plan = NightPlan::baseline(START_NS + day * 86_400_000_000_000, 0, 11);
    plan.latiss = Some(LatissPlan {
        exposure_seconds: LATISS_EXPOSURE_SECONDS,
        cadence_seconds: LATISS_CADENCE_SECONDS,
        count,
    });
    plan
}

/// A running LATISS ingest into a new 1 GiB ring in `directory`, with readers on `cursors`
/// (optional cursors, added before the ring moves into the ingest).
///
/// Bounded: [`LiveIngest::play`] and [`LiveIngest::wait_durable`] give up after a deadline and on
/// an ingest `Failed` event, and then the ingest is *abandoned* (leaked, not dropped): an ingest
/// that stopped reading leaves the player and its own reader threads blocked on the sockets, and
/// dropping it would wait for them forever. The test fails; the process ends the threads.
pub struct LiveIngest {
    ingest: Option<IngestHandle>,
    /// One reader per cursor asked for, in order.
    pub readers: Vec<ringbuffer::Reader>,
    /// The frame socket.
    pub frames: PathBuf,
    /// The header-service socket.
    pub metadata: PathBuf,
    /// Exposures complete, and `EndReadout` records durable, seen so far.
    seen: std::cell::Cell<(u32, u32)>,
    /// Exposures already waited for.
    waited: std::cell::Cell<u32>,
    abandoned: std::cell::Cell<bool>,
}

/// An exposure's `EndReadout` as the player sent it.
#[derive(Clone, Copy, Debug)]
pub struct EndReadout {
    /// The exposure.
    pub exposure_id: u64,
    /// When it was sent (after the exposure's last frame), ns since the Unix epoch.
    pub sent_ns: u64,
}

/// Starts a LATISS ingest; see [`LiveIngest`]. `drain` is the ring's required cursor.
pub fn start_ingest(directory: &Path, cursors: &[&str]) -> LiveIngest {
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
    LiveIngest {
        ingest: Some(ingest),
        readers,
        frames,
        metadata,
        seen: std::cell::Cell::new((0, 0)),
        waited: std::cell::Cell::new(0),
        abandoned: std::cell::Cell::new(false),
    }
}

impl LiveIngest {
    fn handle(&self) -> &IngestHandle {
        self.ingest.as_ref().expect("the ingest runs")
    }

    /// Fails the test, abandoning the ingest (see [`LiveIngest`]).
    fn abandon(&self, why: String) -> ! {
        self.abandoned.set(true);
        panic!("{why} (the ingest is abandoned, not dropped: its threads may be blocked)");
    }

    /// Reads the ingest's events for up to `wait`, counting completions.
    fn pump(&self, wait: Duration) {
        match self.handle().events().recv_timeout(wait) {
            Ok(IngestEvent::Completeness(CompletenessEvent::ExposureComplete { .. })) => {
                let (complete, ends) = self.seen.get();
                self.seen.set((complete + 1, ends));
            }
            Ok(IngestEvent::MetadataDurable { kind, .. }) if kind == "EndReadout" => {
                let (complete, ends) = self.seen.get();
                self.seen.set((complete, ends + 1));
            }
            Ok(IngestEvent::Failed { detail }) => self.abandon(format!("ingest failed: {detail}")),
            _ => {}
        }
    }

    /// Plays `plan`'s LATISS exposures into the ingest's sockets from a player thread
    /// (`compression` None: as fast as the ingest accepts), calling `on_end_readout` for each
    /// exposure's `EndReadout` once it was sent. Fails (abandoning the ingest) if the play does
    /// not end within its schedule plus 60 s, or the ingest fails.
    pub fn play(
        &self,
        plan: NightPlan,
        compression: Option<TimeCompression>,
        on_end_readout: &mut dyn FnMut(EndReadout),
    ) {
        use ringbuffer::Clock;
        let count = plan.latiss.map_or(0, |latiss| latiss.count);
        let schedule_seconds = match compression {
            Some(compression) => f64::from(count) * LATISS_CADENCE_SECONDS / compression.factor,
            None => 10.0 * f64::from(count),
        };
        let deadline = Instant::now() + Duration::from_secs_f64(schedule_seconds + 60.0);
        let (frames, metadata) = (self.frames.clone(), self.metadata.clone());
        let (sender, ends) = std::sync::mpsc::channel::<EndReadout>();
        let player = std::thread::Builder::new()
            .name("player".to_owned())
            .spawn(move || {
                let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
                let latiss = Focalplane::latiss();
                let schedule = NightSchedule::new(plan, &lsstcam, &latiss).expect("schedule");
                let mut sink = UnixFrameSender::connect(&frames).expect("connect frames");
                let mut meta = UnixFrameSender::connect(&metadata).expect("connect metadata");
                let mut options = PlayOptions::new(SkyParameters::default());
                options.compression = compression;
                let mut on_exposure = |progress: &ExposureProgress<'_>| {
                    let exposure_id = progress.end_readout.metadata.exposure_id;
                    let _ = sender.send(EndReadout { exposure_id, sent_ns: SystemClock.now_ns() });
                };
                play_with_metadata(schedule, &mut sink, Some(&mut meta), options, &mut on_exposure)
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            })
            .expect("spawn the player");
        loop {
            while let Ok(end) = ends.try_recv() {
                on_end_readout(end);
            }
            if player.is_finished() {
                break;
            }
            if Instant::now() >= deadline {
                self.abandon(format!(
                    "the play of {count} LATISS exposures did not end within {:.0} s: the ingest stopped \
                     reading? ({:?} complete and EndReadout durable so far)",
                    schedule_seconds + 60.0,
                    self.seen.get()
                ));
            }
            self.pump(Duration::from_millis(20));
        }
        while let Ok(end) = ends.try_recv() {
            on_end_readout(end);
        }
        match player.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.abandon(format!("play: {error}")),
            Err(_) => self.abandon("the player panicked".to_owned()),
        }
    }

    /// Waits for `count` more exposures (beyond those already waited for) to be complete and
    /// their `EndReadout` durable; fails (abandoning the ingest) after 60 s.
    pub fn wait_durable(&self, count: u32) {
        let target = self.waited.get() + count;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.get().0 < target || self.seen.get().1 < target {
            if Instant::now() >= deadline {
                self.abandon(format!(
                    "ingest: {:?} exposures complete and EndReadout durable, {target} expected",
                    self.seen.get()
                ));
            }
            self.pump(Duration::from_millis(100));
        }
        self.waited.set(target);
    }

    /// Stops the ingest (everything received is durable) and returns its ring.
    pub fn shutdown(mut self) -> Ring {
        self.ingest.take().expect("the ingest runs").shutdown().expect("shutdown")
    }
}

impl Drop for LiveIngest {
    fn drop(&mut self) {
        if self.abandoned.get() {
            std::mem::forget(self.ingest.take());
        }
    }
}

/// Ingests `count` LATISS exposures of night `day` into a new ring in `directory` and returns
/// the ring (closed by the ingest, reopened for the drain) and where each exposure lies in it.
pub fn ingest_backlog(directory: &Path, day: i64, count: u32) -> (Ring, Vec<ExposureSpan>) {
    let live = start_ingest(directory, &[]);
    live.play(latiss_plan(day, count), None, &mut |_| {});
    live.wait_durable(count);
    let mut ring = live.shutdown();
    let spans = exposure_spans(&mut ring);
    assert_eq!(spans.len(), count as usize, "one span per exposure");
    (ring, spans)
}

/// Where one exposure's records lie in the ring.
#[derive(Clone, Debug)]
pub struct ExposureSpan {
    /// The exposure.
    pub exposure_id: u64,
    /// Offset of its first record.
    pub first_offset: u64,
    /// End offset of its last record: a drain cursor at or past it has released the exposure.
    pub end_offset: u64,
}

/// Reads the whole ring through an optional `audit` cursor and returns the exposures' spans in
/// ring order.
fn exposure_spans(ring: &mut Ring) -> Vec<ExposureSpan> {
    ring.add_cursor("audit", false).expect("audit cursor");
    let mut reader = ring.reader("audit").expect("audit reader");
    let mut spans: Vec<ExposureSpan> = Vec::new();
    while let Some(record) = reader.next_record().expect("read the ring") {
        let exposure_id = match record.info.kind {
            RecordKind::Frame => FrameHeader::parse(record.payload).expect("frame").exposure_id.get(),
            RecordKind::Metadata => {
                dma_ingest::metadata_channel::decode_record(record.payload).expect("metadata").0.exposure_id
            }
            _ => continue,
        };
        let (start, end) = (record.info.position.offset, record.info.end.offset);
        match spans.iter_mut().find(|span| span.exposure_id == exposure_id) {
            Some(span) => span.end_offset = span.end_offset.max(end),
            None => spans.push(ExposureSpan { exposure_id, first_offset: start, end_offset: end }),
        }
    }
    spans
}

/// The persisted position (offset) of the ring's `drain` cursor.
pub fn persisted_drain_offset(ring: &Ring) -> u64 {
    ring.stats().cursors.iter().find(|cursor| cursor.name == "drain").expect("drain cursor").position.offset
}

/// One file the base must hold.
#[derive(Clone)]
pub struct ExpectedFile {
    /// Its exposure.
    pub exposure_id: u64,
    /// The object key.
    pub key: String,
    /// The bytes, built from regenerated pixels and the header service's metadata.
    pub bytes: Vec<u8>,
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

/// The key each exposure of `plan` gets, without building the file.
pub fn expected_keys(plan: NightPlan) -> Vec<(u64, String)> {
    end_readouts(plan)
        .into_iter()
        .map(|metadata| {
            let detector = Focalplane::latiss().detectors()[0];
            let raw = RawFile::new(detector, &metadata).expect("metadata valid");
            (metadata.exposure_id, raw.object_key().to_owned())
        })
        .collect()
}

fn end_readouts(plan: NightPlan) -> Vec<dma_ingest::protocol::metadata::MetadataEvent> {
    let lsstcam = Focalplane::lsstcam_subset(&["R22"]).expect("R22");
    let latiss = Focalplane::latiss();
    NightSchedule::new(plan, &lsstcam, &latiss)
        .expect("schedule")
        .filter_map(|timed| match timed.event {
            Event::Header(header) if header.kind == EventKind::EndReadout => Some(header.to_metadata_event()),
            _ => None,
        })
        .collect()
}

/// The files the base must hold for `plan`'s LATISS exposures.
pub fn expected_files(plan: NightPlan) -> Vec<ExpectedFile> {
    let detector = Focalplane::latiss().detectors()[0];
    end_readouts(plan)
        .into_iter()
        .map(|metadata| {
            let raw = RawFile::new(detector, &metadata).expect("metadata valid");
            let mut source = Regenerated {
                generators: (0..detector.segment_count())
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
            ExpectedFile { exposure_id: metadata.exposure_id, key: raw.object_key().to_owned(), bytes }
        })
        .collect()
}

/// What a drain thread reports: every `Drained`, and every change of outcome kind.
#[derive(Clone, Debug)]
pub struct Report {
    /// When the step returned.
    pub at: Instant,
    /// What it returned.
    pub outcome: StepOutcome,
}

/// A drain stepping on its own thread until `stop` is set; the test reads its reports.
pub struct DrainThread {
    /// Set to stop the drain (a step in a retry loop returns at once).
    pub stop: Arc<AtomicBool>,
    /// The reports, bounded ([`REPORTS_CAPACITY`]); a full queue fails the drain thread.
    pub reports: Receiver<Report>,
    thread: Option<JoinHandle<Drainer>>,
}

/// Reports queued before the drain thread fails (the test reads them as they come).
pub const REPORTS_CAPACITY: usize = 4096;

impl DrainThread {
    /// Steps `drainer` every 10 ms when it has nothing to do.
    pub fn spawn(name: &str, mut drainer: Drainer) -> DrainThread {
        let stop = Arc::new(AtomicBool::new(false));
        let (sender, reports) = std::sync::mpsc::sync_channel(REPORTS_CAPACITY);
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut last = None;
                while !stopping.load(Ordering::Relaxed) {
                    let outcome = drainer.step(&stopping).expect("drain step");
                    let kind = std::mem::discriminant(&outcome);
                    let drained = matches!(outcome, StepOutcome::Drained { .. });
                    if drained || last != Some(kind) {
                        send(&sender, Report { at: Instant::now(), outcome: outcome.clone() });
                    }
                    last = Some(kind);
                    if !drained {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                drainer
            })
            .expect("spawn the drain thread");
        DrainThread { stop, reports, thread: Some(thread) }
    }

    /// Waits for the next `Drained` report (other reports go to `seen`).
    pub fn next_drained(&self, timeout: Duration, seen: &mut Vec<Report>) -> Option<(u64, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let report = self.reports.recv_timeout(left).ok()?;
            seen.push(report.clone());
            if let StepOutcome::Drained { exposure_id, incomplete, .. } = report.outcome {
                assert!(!incomplete, "exposure {exposure_id} drained incomplete");
                return Some((exposure_id, report.at));
            }
        }
    }

    /// Reports queued now.
    pub fn pending(&self) -> Vec<Report> {
        self.reports.try_iter().collect()
    }

    /// Stops the drain and returns it.
    pub fn finish(mut self) -> Drainer {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("joined once").join().expect("the drain thread panicked")
    }
}

impl Drop for DrainThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn send(sender: &SyncSender<Report>, report: Report) {
    match sender.try_send(report) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        Err(TrySendError::Full(_)) => panic!("the test stopped reading the drain's reports"),
    }
}

/// A current-thread tokio runtime for the object_store calls the tests make themselves.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Runs `work` on a new thread inside network namespace `namespace` (`/var/run/netns/NAME`, as
/// `ip netns add` makes it) and returns its result. Threads `work` starts stay in the namespace;
/// the caller's thread never leaves its own.
pub fn in_namespace<T: Send + 'static>(namespace: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/var/run/netns").join(namespace);
    std::thread::Builder::new()
        .name(format!("netns-{namespace}"))
        .spawn(move || {
            let file =
                std::fs::File::open(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|error| panic!("setns into {}: {error}", path.display()));
            work()
        })
        .expect("spawn a thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
