//! The running node: the rings, the ingest of each stream, the link monitor and the drain, driven
//! by the observatory-control state machine ([`crate::csc`]).
//!
//! # What runs in which state
//!
//! | state      | rings  | drain (backlog + live lane) | ingest (frames accepted) | link monitor |
//! |------------|--------|-----------------------------|--------------------------|--------------|
//! | STANDBY    | closed | stopped                     | no                       | probing      |
//! | DISABLED   | open   | running                     | no                       | probing      |
//! | ENABLED    | open   | running                     | **yes**                  | probing      |
//! | FAULT      | open (what could be kept) | stopped  | no                       | probing      |
//! | OFFLINE    | closed | stopped                     | no                       | stopped      |
//!
//! `start` opens (or creates) the rings and starts the drain; `enable` starts the ingest (the
//! frame and metadata endpoints listen); `disable` stops it, with every acknowledged frame
//! durable; `standby` stops the drain (its cursor is persisted at every confirmation) and closes
//! the rings. The buffered data drains in DISABLED too: draining is not acquisition.
//!
//! # Threads
//!
//! Per stream: the ingest's own thread(s) (dma-ingest), one *ingest supervisor* that owns the
//! ingest handle, consumes its completeness events into the exposure table and watches for a
//! failure, and one thread per drain lane looping on [`Drainer::step`]. Shared: the link
//! monitor's probe thread, and the housekeeping loop ([`Node::run`]) that applies faults,
//! refreshes the statistics, estimates rates and talks to systemd. Nothing on the data path takes
//! the node's lock; the console reads snapshots.
//!
//! # Faults
//!
//! A failed ring (fail-stop: a write or fsync error poisons it), an ingest that stopped, or a
//! drain error is reported on a channel; the housekeeping loop moves the node to FAULT with an
//! error code (errorCode, then summaryState, as the observatory expects). Acquisition stops;
//! `standby` is the way out, then `start` reopens the rings (recovery checks them).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dma_ingest::completeness::CompletenessEvent;
use dma_ingest::{IngestEvent, IngestHandle, IngestObserver, IngestOptions};
use failover::drain::{DrainControl, DrainOptions, Drainer, StepOutcome, UploadClaims};
use failover::link::{HttpProbe, LinkMonitorHandle, Probe, TcpConnectProbe};
use failover::manifest::Manifest;
use object_store::ObjectStore;
use ringbuffer::{Clock, CreateOptions, CursorSpec, Ring, RingOptions, RingStats};

use crate::config::{BaseLocation, Config, ProbeTarget, StreamPlan};
use crate::csc::{AckCode, CommandAck, Csc, CscCommand, CscEvent, SummaryState};
use crate::events::EventPublisher;
use crate::logging::LogBuffer;
use crate::status::{
    CscView, DrainView, ExposureView, IngestView, LinkView, LogLine, NodeControl, NodeStatus, RingView,
    TransitionView,
};

/// Error codes the node publishes with `errorCode` on its way to FAULT.
pub mod error_codes {
    /// A ring failed (write or fsync error): it is poisoned and refuses writes.
    pub const RING_FAILED: i32 = crate::csc::error_codes::RING_POISONED;
    /// An ingest could not start or stopped on its own.
    pub const INGEST_FAILED: i32 = crate::csc::error_codes::INGEST_FAILED;
    /// A drain stopped on an error it cannot retry (ring read, manifest write).
    pub const DRAIN_FAILED: i32 = crate::csc::error_codes::DRAIN_FAILED;
    /// A ring could not be opened or created at `start`.
    pub const RING_OPEN_FAILED: i32 = crate::csc::error_codes::RING_OPEN_FAILED;
}

/// Exposures remembered for the console's `exposures [n]`.
const EXPOSURE_HISTORY: usize = 256;
/// Cursor of the drain's live lane (optional: an overrun only leaves the work to the backlog).
const LIVE_CURSOR: &str = "live";
/// How often the housekeeping loop runs.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(200);

/// How the node is built.
pub struct NodeOptions {
    /// The validated configuration.
    pub config: Config,
    /// Running `summit-node sim`.
    pub simulation: bool,
    /// The simulated fiber (sim only).
    pub fiber: Option<hw_sim::link_proxy::LinkControl>,
    /// Captured log lines for the console's `log` (absent: `log` says so).
    pub log: Option<LogBuffer>,
    /// Where CSC events go (absent: only logged).
    pub events: Option<Arc<EventPublisher>>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
}

/// A failure reported to the housekeeping loop.
#[derive(Debug)]
struct Fault {
    code: i32,
    report: String,
}

/// Observable state of one stream, shared by its threads and the console.
struct StreamShared {
    plan: StreamPlan,
    /// Bytes of a typical detector file of this stream (for the backlog-files estimate).
    file_bytes_estimate: u64,
    ring_stats: Mutex<Option<RingStats>>,
    observer: Mutex<Option<Arc<IngestObserver>>>,
    backlog_control: Mutex<Option<Arc<DrainControl>>>,
    backlog_bytes: AtomicU64,
    exposures_complete_total: AtomicU64,
    exposures_incomplete_total: AtomicU64,
    /// Upload rate estimate, bytes per second (f64 bits).
    drain_rate_bits: AtomicU64,
    /// `bytes_uploaded_total` at the last estimate.
    last_uploaded: AtomicU64,
}

impl StreamShared {
    fn drain_rate(&self) -> f64 {
        f64::from_bits(self.drain_rate_bits.load(Ordering::Relaxed))
    }
}

/// The operator's drain controls, applied by every lane before each step.
struct DrainSettings {
    paused: AtomicBool,
    /// Shared by the streams: each stream's lanes get an equal part. 0 = unlimited.
    rate_limit_bytes_per_second: AtomicU64,
    lanes_sharing: u64,
    /// Every running lane's controls, so that an operator's change reaches a lane in the middle
    /// of a long step (a step lasts until an exposure is confirmed) at once, not at its next step.
    lanes: Mutex<Vec<std::sync::Weak<DrainControl>>>,
}

impl DrainSettings {
    /// Applies the settings to `control` and keeps it for [`DrainSettings::apply_all`].
    fn register(&self, control: &Arc<DrainControl>) {
        self.apply(control);
        let mut lanes = lock(&self.lanes);
        lanes.retain(|lane| lane.strong_count() > 0);
        if !lanes.iter().any(|lane| std::ptr::eq(lane.as_ptr(), Arc::as_ptr(control))) {
            lanes.push(Arc::downgrade(control));
        }
    }

    /// Applies the settings to every running lane (an operator changed them).
    fn apply_all(&self) {
        for lane in lock(&self.lanes).iter().filter_map(std::sync::Weak::upgrade) {
            self.apply(&lane);
        }
    }

    fn apply(&self, control: &DrainControl) {
        control.paused.store(self.paused.load(Ordering::SeqCst), Ordering::SeqCst);
        let limit = self.rate_limit_bytes_per_second.load(Ordering::SeqCst);
        control
            .rate_limit_bytes_per_second
            .store(limit.div_ceil(self.lanes_sharing.max(1)), Ordering::SeqCst);
    }
}

/// The ring of one stream while the node is started.
enum RingSlot {
    /// Open, no ingest.
    Idle(Box<Ring>),
    /// The ingest owns it; its supervisor gives it back when stopped.
    Ingesting { stop: Arc<AtomicBool>, supervisor: JoinHandle<Result<Ring, String>> },
    /// Lost with a failed ingest (FAULT); `standby` then `start` reopens it.
    Lost,
}

struct StreamRuntime {
    slot: RingSlot,
    drain_stop: Arc<AtomicBool>,
    drains: Vec<JoinHandle<()>>,
}

struct Lifecycle {
    csc: Csc,
    /// One per stream while started (DISABLED, ENABLED, FAULT).
    runtimes: Vec<StreamRuntime>,
    error: Option<(i32, String)>,
}

/// Recent exposures for the console.
#[derive(Default)]
struct ExposureTable {
    entries: Mutex<VecDeque<ExposureView>>,
}

impl ExposureTable {
    fn update(&self, stream: &str, exposure_id: u64, expected: u32, change: impl FnOnce(&mut ExposureView)) {
        let mut entries = lock(&self.entries);
        let index =
            entries.iter().position(|entry| entry.stream == stream && entry.exposure_id == exposure_id);
        let index = match index {
            Some(index) => index,
            None => {
                if entries.len() == EXPOSURE_HISTORY {
                    entries.pop_front();
                }
                entries.push_back(ExposureView {
                    stream: stream.to_owned(),
                    exposure_id,
                    segments_durable: 0,
                    segments_expected: expected,
                    acquisition: "acquiring".into(),
                    drain: "pending".into(),
                });
                entries.len() - 1
            }
        };
        change(&mut entries[index]);
    }

    fn newest(&self, limit: usize) -> Vec<ExposureView> {
        let entries = lock(&self.entries);
        let mut newest: Vec<ExposureView> = entries.iter().cloned().collect();
        newest.sort_by_key(|entry| std::cmp::Reverse(entry.exposure_id));
        newest.truncate(limit);
        newest
    }

    fn oldest_pending(&self, stream: &str) -> Option<u64> {
        lock(&self.entries)
            .iter()
            .filter(|entry| entry.stream == stream && entry.drain != "drained")
            .map(|entry| entry.exposure_id)
            .min()
    }
}

/// The running node. Shared (`Arc`) between the console servers, the housekeeping loop and the
/// signal handling in `main`.
pub struct Node {
    config: Config,
    simulation: bool,
    fiber: Option<hw_sim::link_proxy::LinkControl>,
    log: Option<LogBuffer>,
    events: Option<Arc<EventPublisher>>,
    clock: Arc<dyn Clock>,
    started: Instant,
    streams: Vec<Arc<StreamShared>>,
    store: Arc<dyn ObjectStore>,
    verify_by_etag: bool,
    link: Arc<LinkMonitorHandle>,
    link_target: String,
    exposures: Arc<ExposureTable>,
    lifecycle: Mutex<Lifecycle>,
    faults: Sender<Fault>,
    fault_receiver: Mutex<Receiver<Fault>>,
    drain_settings: Arc<DrainSettings>,
    exit_requested: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Opens the base store of the configuration (creating a local base directory).
pub fn open_store(config: &Config) -> Result<(Arc<dyn ObjectStore>, bool), String> {
    match config.base_location().map_err(|error| error.to_string())? {
        BaseLocation::Directory(directory) => {
            std::fs::create_dir_all(&directory).map_err(|error| {
                format!("cannot create the base directory {}: {error}", directory.display())
            })?;
            Ok((failover::store::open_directory(&directory)?, false))
        }
        BaseLocation::S3 { bucket } => {
            let settings = failover::store::S3Settings {
                endpoint: config.base.endpoint.clone(),
                bucket,
                region: Some(config.base.region.clone()),
                access_key_id: None,
                secret_access_key: None,
            };
            // S3 computes the MD5 of a single-part upload as its ETag: verification without a read.
            Ok((failover::store::open_s3(&settings)?, true))
        }
    }
}

impl Node {
    /// Builds the node: opens the base store, starts the link monitor, and enters the configured
    /// initial state (running `start` and `enable` as needed). Fails if the configuration's
    /// resources cannot be set up (the error says which).
    pub fn new(options: NodeOptions) -> Result<Arc<Node>, String> {
        let NodeOptions { config, simulation, fiber, log, events, clock } = options;
        config.validate().map_err(|error| error.to_string())?;
        let plans = config.streams().map_err(|error| error.to_string())?;
        std::fs::create_dir_all(&config.node.data_dir).map_err(|error| {
            format!("cannot create the data directory {}: {error}", config.node.data_dir.display())
        })?;
        let (store, verify_by_etag) = open_store(&config)?;
        let (probe, link_target): (Box<dyn Probe + Send>, String) = match config
            .probe_target()
            .map_err(|error| error.to_string())?
        {
            ProbeTarget::Tcp(address) => (Box::new(TcpConnectProbe { address }), format!("tcp {address}")),
            ProbeTarget::Http { address, host, path } => (
                Box::new(HttpProbe::new(address, &host, &path).map_err(|error| error.to_string())?),
                format!("http {address}{path}"),
            ),
        };
        let link_options = config.link_options().map_err(|error| error.to_string())?;
        let link = LinkMonitorHandle::spawn(probe, link_options, Arc::clone(&clock))
            .map_err(|error| format!("cannot start the link monitor: {error}"))?;
        let streams: Vec<Arc<StreamShared>> = plans
            .into_iter()
            .map(|plan| {
                let segments = plan.focalplane.segment_count() as u64;
                let detectors = plan.focalplane.detector_count().max(1) as u64;
                let segment_bytes = dma_ingest::config::WHOLE_SEGMENT_FRAME_BYTES as u64;
                Arc::new(StreamShared {
                    file_bytes_estimate: segments * segment_bytes / detectors,
                    plan,
                    ring_stats: Mutex::new(None),
                    observer: Mutex::new(None),
                    backlog_control: Mutex::new(None),
                    backlog_bytes: AtomicU64::new(0),
                    exposures_complete_total: AtomicU64::new(0),
                    exposures_incomplete_total: AtomicU64::new(0),
                    drain_rate_bits: AtomicU64::new(0f64.to_bits()),
                    last_uploaded: AtomicU64::new(0),
                })
            })
            .collect();
        let (faults, fault_receiver) = mpsc::channel();
        let rate_limit = (config.drain.rate_limit_mb_per_s * 1e6) as u64;
        let streams_len = streams.len();
        let node = Arc::new(Node {
            drain_settings: Arc::new(DrainSettings {
                paused: AtomicBool::new(config.drain.paused),
                rate_limit_bytes_per_second: AtomicU64::new(rate_limit),
                lanes_sharing: streams_len as u64,
                lanes: Mutex::new(Vec::new()),
            }),
            config,
            simulation,
            fiber,
            log,
            events,
            clock: Arc::clone(&clock),
            started: Instant::now(),
            streams,
            store,
            verify_by_etag,
            link: Arc::new(link),
            link_target,
            exposures: Arc::new(ExposureTable::default()),
            lifecycle: Mutex::new(Lifecycle {
                csc: Csc::new(clock.now_ns()),
                runtimes: Vec::new(),
                error: None,
            }),
            faults,
            fault_receiver: Mutex::new(fault_receiver),
            exit_requested: AtomicBool::new(false),
        });
        node.announce_start();
        node.enter_initial_state()?;
        Ok(node)
    }

    /// Logs and publishes what the node is at start (softwareVersions, simulationMode, the
    /// initial summaryState).
    fn announce_start(&self) {
        tracing::info!(
            node = %self.config.node.name,
            version = env!("CARGO_PKG_VERSION"),
            simulation = self.simulation,
            streams = self.streams.len(),
            base = %self.config.base.url,
            link = %self.link_target,
            "summit-node starting"
        );
        let lifecycle = lock(&self.lifecycle);
        self.publish_all(lifecycle.csc.startup_events(self.simulation, self.clock.now_ns()));
    }

    fn publish_all(&self, events: Vec<CscEvent>) {
        if let Some(publisher) = &self.events {
            for event in events {
                publisher.publish(event);
            }
        }
    }

    fn enter_initial_state(&self) -> Result<(), String> {
        use crate::config::InitialState;
        let mut commands = Vec::new();
        if self.config.node.initial_state != InitialState::Standby {
            commands.push(CscCommand::Start { configuration_override: None });
        }
        if self.config.node.initial_state == InitialState::Enabled {
            commands.push(CscCommand::Enable);
        }
        for command in commands {
            let ack = self.command(command);
            if ack.ack != AckCode::Complete {
                return Err(format!("entering the initial state: {}", ack.result));
            }
        }
        Ok(())
    }

    /// Runs an observatory-control command to completion and returns its final acknowledgement.
    pub fn command(&self, command: CscCommand) -> CommandAck {
        let mut lifecycle = lock(&self.lifecycle);
        let target = match lifecycle.csc.begin(&command) {
            Ok(target) => target,
            Err(ack) => {
                tracing::warn!(command = command.name(), result = %ack.result, "command rejected");
                return ack;
            }
        };
        let outcome = match (&command, target) {
            (CscCommand::Start { .. }, _) => self.start_streams(&mut lifecycle),
            (CscCommand::Enable, _) => self.enable_streams(&mut lifecycle),
            (CscCommand::Disable, _) => self.disable_streams(&mut lifecycle),
            (CscCommand::Standby, _) => {
                self.stop_streams(&mut lifecycle);
                Ok(())
            }
            (CscCommand::ExitControl, _) => {
                self.exit_requested.store(true, Ordering::SeqCst);
                Ok(())
            }
        };
        match outcome {
            Ok(()) => {
                if matches!(command, CscCommand::Standby) {
                    lifecycle.error = None;
                }
                let events = lifecycle.csc.complete(target, self.clock.now_ns());
                self.publish_all(events);
                if lifecycle.csc.state() != target {
                    // A fault while the command ran: the node stays in FAULT.
                    let reason = format!(
                        "the node went to {} while {} ran",
                        lifecycle.csc.state().name(),
                        command.name()
                    );
                    return lifecycle.csc.failed(&command, &reason);
                }
                tracing::info!(command = command.name(), state = target.name(), "command complete");
                if matches!(command, CscCommand::Start { .. }) {
                    self.publish_all(vec![lifecycle.csc.configuration_applied(&self.config_label())]);
                }
                CommandAck {
                    command: command.name().to_owned(),
                    ack: AckCode::Complete,
                    result: String::new(),
                }
            }
            Err(failure) => {
                tracing::error!(command = command.name(), %failure, "command failed");
                let ack = lifecycle.csc.failed(&command, &failure);
                if let Some((code, report)) = failure_fault(&command, &failure) {
                    self.enter_fault(&mut lifecycle, code, &report);
                }
                ack
            }
        }
    }

    fn config_label(&self) -> String {
        format!("{} ({})", self.config.node.name, if self.simulation { "simulation" } else { "production" })
    }

    /// STANDBY -> DISABLED: open (or create) every ring and start its drain lanes.
    fn start_streams(&self, lifecycle: &mut Lifecycle) -> Result<(), String> {
        let mut runtimes = Vec::new();
        for shared in &self.streams {
            match self.open_stream(shared) {
                Ok(runtime) => runtimes.push(runtime),
                Err(error) => {
                    // Undo what was opened: nothing stays half started.
                    lifecycle.runtimes = runtimes;
                    self.stop_streams(lifecycle);
                    return Err(error);
                }
            }
        }
        lifecycle.runtimes = runtimes;
        Ok(())
    }

    fn open_stream(&self, shared: &Arc<StreamShared>) -> Result<StreamRuntime, String> {
        let plan = &shared.plan;
        let ring = open_ring(plan, &self.clock)?;
        *lock(&shared.ring_stats) = Some(ring.stats());
        let drain_stop = Arc::new(AtomicBool::new(false));
        let mut drains = Vec::new();
        let manifest_path = self.config.manifest_directory().join(format!("{}.jsonl", plan.instrument));
        if let Some(parent) = manifest_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        }
        let manifest = Manifest::open(&manifest_path)
            .map_err(|error| format!("manifest {}: {error}", manifest_path.display()))?;
        let options = DrainOptions {
            incomplete_timeout: Duration::from_secs(self.config.drain.incomplete_timeout_s),
            ..DrainOptions::default()
        };
        let mut lanes = vec![(false, ring.reader("drain").map_err(|error| error.to_string())?)];
        if self.config.drain.live_lane {
            lanes.push((true, ring.reader_from(LIVE_CURSOR, "drain").map_err(|error| error.to_string())?));
        }
        let mut manifest = Some(manifest);
        // Both lanes claim the keys they upload, so a file both see at once crosses the link once.
        let claims = Arc::new(UploadClaims::default());
        for (live, reader) in lanes {
            let lane_options = DrainOptions { live, ..options.clone() };
            let build: LaneBuilder = {
                let store = Arc::clone(&self.store);
                let verify_by_etag = self.verify_by_etag;
                let focalplane = plan.focalplane.clone();
                let clock = Arc::clone(&self.clock);
                let link = Arc::clone(&self.link);
                let claims = Arc::clone(&claims);
                Box::new(move |reader| {
                    Ok(Drainer::new(
                        reader,
                        Arc::clone(&store),
                        verify_by_etag,
                        focalplane.clone(),
                        Arc::clone(&clock),
                        lane_options.clone(),
                    )?
                    .with_link_monitor(Arc::clone(&link))
                    .with_upload_claims(Arc::clone(&claims)))
                })
            };
            let mut drainer = build(reader)
                .map_err(|error| format!("cannot start the drain of {}: {error}", plan.instrument))?;
            if !live {
                drainer = drainer.with_manifest(manifest.take().expect("one backlog lane"));
                *lock(&shared.backlog_control) = Some(Arc::clone(drainer.control()));
            }
            self.drain_settings.register(drainer.control());
            let lane = DrainLane {
                settings: Arc::clone(&self.drain_settings),
                drainer: Some(drainer),
                rebuild: live.then_some(build),
                live,
                stop: Arc::clone(&drain_stop),
                shared: Arc::clone(shared),
                exposures: Arc::clone(&self.exposures),
                faults: self.faults.clone(),
            };
            let name = format!("drain-{}-{}", plan.instrument, if live { "live" } else { "backlog" });
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || lane.run())
                .map_err(|error| format!("cannot start a drain thread: {error}"))?;
            drains.push(thread);
        }
        tracing::info!(stream = %plan.instrument, ring = %plan.ring_directory.display(), "stream started (draining)");
        Ok(StreamRuntime { slot: RingSlot::Idle(Box::new(ring)), drain_stop, drains })
    }

    /// DISABLED -> ENABLED: start every stream's ingest.
    fn enable_streams(&self, lifecycle: &mut Lifecycle) -> Result<(), String> {
        for (index, shared) in self.streams.iter().enumerate() {
            let runtime = &mut lifecycle.runtimes[index];
            let RingSlot::Idle(ring) = std::mem::replace(&mut runtime.slot, RingSlot::Lost) else {
                return Err(format!("{}: the ring is not open", shared.plan.instrument));
            };
            let plan = &shared.plan;
            let mut options = IngestOptions::new(&plan.instrument);
            options.backend = plan.backend;
            // Checked before the ring is handed over, so a refusal keeps it.
            if let Err(error) = dma_ingest::ingest::choose_backend(plan.backend, &ring) {
                runtime.slot = RingSlot::Idle(ring);
                self.disable_streams(lifecycle)?;
                return Err(format!("{}: {error}", plan.instrument));
            }
            let handle = match IngestHandle::start(
                *ring,
                plan.focalplane.clone(),
                &plan.frames,
                Some(&plan.metadata),
                options,
                Arc::clone(&self.clock),
            ) {
                Ok(handle) => handle,
                Err(error) => return Err(format!("{}: cannot start the ingest: {error}", plan.instrument)),
            };
            *lock(&shared.observer) = Some(Arc::clone(handle.observer()));
            let stop = Arc::new(AtomicBool::new(false));
            let supervisor = IngestSupervisor {
                handle,
                stop: Arc::clone(&stop),
                shared: Arc::clone(shared),
                exposures: Arc::clone(&self.exposures),
                faults: self.faults.clone(),
            };
            let supervisor = std::thread::Builder::new()
                .name(format!("supervise-{}", plan.instrument))
                .spawn(move || supervisor.run())
                .map_err(|error| format!("cannot start the ingest supervisor: {error}"))?;
            runtime.slot = RingSlot::Ingesting { stop, supervisor };
            tracing::info!(stream = %plan.instrument, frames = %plan.frames, metadata = %plan.metadata, "acquiring");
        }
        Ok(())
    }

    /// ENABLED -> DISABLED: stop every ingest; every acknowledged frame is durable when it returns.
    fn disable_streams(&self, lifecycle: &mut Lifecycle) -> Result<(), String> {
        let mut failures = Vec::new();
        for (index, runtime) in lifecycle.runtimes.iter_mut().enumerate() {
            let shared = &self.streams[index];
            if let RingSlot::Ingesting { stop, supervisor } =
                std::mem::replace(&mut runtime.slot, RingSlot::Lost)
            {
                stop.store(true, Ordering::SeqCst);
                match supervisor.join() {
                    Ok(Ok(ring)) => {
                        *lock(&shared.ring_stats) = Some(ring.stats());
                        runtime.slot = RingSlot::Idle(Box::new(ring));
                        tracing::info!(stream = %shared.plan.instrument, "acquisition stopped; all frames durable");
                    }
                    Ok(Err(error)) => failures.push(format!("{}: {error}", shared.plan.instrument)),
                    Err(_) => {
                        failures.push(format!("{}: the ingest supervisor panicked", shared.plan.instrument))
                    }
                }
            } else if let RingSlot::Idle(ring) = std::mem::replace(&mut runtime.slot, RingSlot::Lost) {
                runtime.slot = RingSlot::Idle(ring);
            }
            *lock(&shared.observer) = None;
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// To STANDBY (or on the way out): stop ingest and drain, close the rings.
    fn stop_streams(&self, lifecycle: &mut Lifecycle) {
        if let Err(error) = self.disable_streams(lifecycle) {
            tracing::error!(%error, "stopping the ingest");
        }
        for (index, runtime) in lifecycle.runtimes.drain(..).enumerate() {
            let shared = &self.streams[index];
            runtime.drain_stop.store(true, Ordering::SeqCst);
            for thread in runtime.drains {
                if thread.join().is_err() {
                    tracing::error!(stream = %shared.plan.instrument, "a drain thread panicked");
                }
            }
            *lock(&shared.backlog_control) = None;
            if let RingSlot::Idle(ring) = runtime.slot {
                *lock(&shared.ring_stats) = Some(ring.stats());
                if let Err(error) = (*ring).close() {
                    tracing::error!(stream = %shared.plan.instrument, %error, "closing the ring");
                }
            }
            tracing::info!(stream = %shared.plan.instrument, "stream stopped (ring closed)");
        }
    }

    fn enter_fault(&self, lifecycle: &mut Lifecycle, code: i32, report: &str) {
        if lifecycle.csc.state() == SummaryState::Fault {
            return;
        }
        tracing::error!(error_code = code, %report, "going to FAULT");
        // Acquisition stops; what is durable stays. The drain stops too: `standby` then `start`
        // recovers the rings before anything reads them again.
        if let Err(error) = self.disable_streams(lifecycle) {
            tracing::error!(%error, "stopping the ingest on the way to FAULT");
        }
        for runtime in &lifecycle.runtimes {
            runtime.drain_stop.store(true, Ordering::SeqCst);
        }
        lifecycle.error = Some((code, report.to_owned()));
        let events = lifecycle.csc.fault(code, report, "", self.clock.now_ns());
        self.publish_all(events);
    }

    /// `true` once `exitControl` completed: the process should exit.
    pub fn exit_requested(&self) -> bool {
        self.exit_requested.load(Ordering::SeqCst)
    }

    /// The current summary state.
    pub fn state(&self) -> SummaryState {
        lock(&self.lifecycle).csc.state()
    }

    /// One round of housekeeping: applies reported faults, refreshes statistics and rate
    /// estimates. Called by [`Node::run`] every 200 ms; tests may call it directly.
    pub fn housekeeping(&self, elapsed: Duration) {
        let faults: Vec<Fault> = {
            let receiver = lock(&self.fault_receiver);
            std::iter::from_fn(|| receiver.try_recv().ok()).collect()
        };
        if !faults.is_empty() {
            let mut lifecycle = lock(&self.lifecycle);
            for fault in faults {
                self.enter_fault(&mut lifecycle, fault.code, &fault.report);
            }
        }
        // A command may hold the lifecycle for long (recovery at `start`): skip the idle rings'
        // statistics then rather than wait, so the loop (and systemd's watchdog) keeps going.
        if let Ok(lifecycle) = self.lifecycle.try_lock() {
            for (index, runtime) in lifecycle.runtimes.iter().enumerate() {
                if let RingSlot::Idle(ring) = &runtime.slot {
                    *lock(&self.streams[index].ring_stats) = Some(ring.stats());
                }
            }
        }
        for shared in &self.streams {
            if let Some(observer) = lock(&shared.observer).as_ref() {
                let stats = lock(&observer.ring_stats).clone();
                if stats.is_some() {
                    *lock(&shared.ring_stats) = stats;
                }
            }
            if let Some(control) = lock(&shared.backlog_control).as_ref() {
                let uploaded = control.bytes_uploaded_total.load(Ordering::Relaxed);
                let previous = shared.drain_rate();
                let seconds = elapsed.as_secs_f64().max(1e-3);
                let instant_rate =
                    uploaded.saturating_sub(shared.last_uploaded.swap(uploaded, Ordering::Relaxed)) as f64
                        / seconds;
                // Exponential moving average over about 5 s.
                let weight = (seconds / 5.0).min(1.0);
                let rate = previous + (instant_rate - previous) * weight;
                shared.drain_rate_bits.store(rate.to_bits(), Ordering::Relaxed);
            }
        }
    }

    /// The housekeeping loop: runs until `stop` is set or `exitControl` completed, calling
    /// `tick` (systemd STATUS and WATCHDOG, the simulation's display) after every round.
    pub fn run(&self, stop: &AtomicBool, tick: &mut dyn FnMut(&Node)) {
        let mut last = Instant::now();
        while !stop.load(Ordering::SeqCst) && !self.exit_requested() {
            std::thread::sleep(HOUSEKEEPING_INTERVAL);
            let now = Instant::now();
            self.housekeeping(now - last);
            last = now;
            tick(self);
        }
    }

    /// The SIGTERM path: stops accepting frames, makes everything durable, persists the drain
    /// cursors, closes the rings and the link monitor. Bounded by the configuration's
    /// `node.shutdown_timeout_s`: returns an error if that passed (the caller exits anyway).
    pub fn shutdown(self: &Arc<Node>) -> Result<(), String> {
        let timeout = Duration::from_secs(self.config.node.shutdown_timeout_s);
        let node = Arc::clone(self);
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lifecycle = lock(&node.lifecycle);
            node.stop_streams(&mut lifecycle);
            let _ = done.send(());
        });
        let outcome = finished.recv_timeout(timeout);
        if let Some(events) = &self.events {
            // The last events written, subscribers told, the socket removed.
            events.shutdown();
        }
        match outcome {
            Ok(()) => {
                tracing::info!("shutdown complete: every acknowledged frame durable, rings closed");
                Ok(())
            }
            Err(_) => Err(format!("shutdown did not finish within {} s", timeout.as_secs())),
        }
    }

    fn ring_view(&self, shared: &StreamShared) -> RingView {
        let stats = lock(&shared.ring_stats).clone();
        let plan = &shared.plan;
        let mut view = RingView {
            stream: plan.instrument.clone(),
            location: plan.ring_directory.display().to_string(),
            capacity_bytes: plan.ring_capacity_bytes,
            used_bytes: 0,
            fill_ratio: 0.0,
            head_sequence: 0,
            drain_sequence: 0,
            oldest_undrained_exposure: self.exposures.oldest_pending(&plan.instrument),
            oldest_undrained_age_seconds: None,
            append_rate_bytes_per_second: None,
            time_to_full_seconds: None,
            poisoned: None,
        };
        if let Some(stats) = stats {
            view.capacity_bytes = stats.capacity_bytes;
            view.used_bytes = stats.used_bytes;
            view.fill_ratio = stats.fill_ratio;
            view.head_sequence = stats.durable_sequence;
            view.drain_sequence = stats
                .cursors
                .iter()
                .find(|cursor| cursor.name == "drain")
                .map(|cursor| stats.durable_sequence.saturating_sub(cursor.lag_records))
                .unwrap_or(0);
            view.oldest_undrained_age_seconds =
                stats.oldest_undrained.as_ref().map(|oldest| oldest.age_seconds);
            view.append_rate_bytes_per_second = stats.append_rate_bytes_per_second;
            view.time_to_full_seconds = stats.time_to_full_seconds;
            view.poisoned = stats.poisoned;
        }
        view
    }

    fn ingest_view(&self, shared: &StreamShared) -> IngestView {
        let observer = lock(&shared.observer).clone();
        let mut view = IngestView {
            stream: shared.plan.instrument.clone(),
            running: observer.is_some(),
            backend: String::new(),
            frames_total: 0,
            bytes_total: 0,
            rejected_total: 0,
            exposures_complete_total: shared.exposures_complete_total.load(Ordering::Relaxed),
            exposures_incomplete_total: shared.exposures_incomplete_total.load(Ordering::Relaxed),
        };
        if let Some(observer) = observer {
            view.backend = lock(&observer.backend).clone();
            view.frames_total = observer.counters.frames_durable_total.load(Ordering::Relaxed);
            view.bytes_total = observer.counters.frame_bytes_durable_total.load(Ordering::Relaxed);
            view.rejected_total = observer.counters.rejected_all();
        }
        view
    }

    fn drain_view(&self, shared: &StreamShared) -> DrainView {
        let control = lock(&shared.backlog_control).clone();
        // Bytes behind the persisted drain cursor: everything not yet confirmed at the base (the
        // drain's reader runs ahead of it to index exposures, so its own figure is smaller).
        let persisted_lag = lock(&shared.ring_stats).as_ref().and_then(|stats| {
            stats.cursors.iter().find(|cursor| cursor.name == "drain").map(|cursor| cursor.lag_bytes)
        });
        let backlog_bytes = persisted_lag.unwrap_or_else(|| shared.backlog_bytes.load(Ordering::Relaxed));
        let rate = shared.drain_rate();
        let load = |counter: Option<&AtomicU64>| counter.map_or(0, |counter| counter.load(Ordering::Relaxed));
        let limit = self.drain_settings.rate_limit_bytes_per_second.load(Ordering::Relaxed);
        DrainView {
            stream: shared.plan.instrument.clone(),
            paused: self.drain_settings.paused.load(Ordering::Relaxed),
            rate_limit_bytes_per_second: (limit > 0).then_some(limit),
            rate_bytes_per_second: rate,
            backlog_bytes,
            backlog_files: backlog_bytes.div_ceil(shared.file_bytes_estimate.max(1)),
            time_to_empty_seconds: if backlog_bytes == 0 {
                Some(0.0)
            } else {
                (rate > 1e3).then(|| backlog_bytes as f64 / rate)
            },
            objects_confirmed_total: load(control.as_deref().map(|c| &c.objects_confirmed_total)),
            bytes_uploaded_total: load(control.as_deref().map(|c| &c.bytes_uploaded_total)),
            upload_failures_total: load(control.as_deref().map(|c| &c.upload_failures_total)),
            exposures_drained_total: load(control.as_deref().map(|c| &c.exposures_drained_total)),
            conflicts_total: load(control.as_deref().map(|c| &c.conflicts_total)),
        }
    }

    fn link_view(&self) -> LinkView {
        let status = self.link.status();
        LinkView {
            state: status.state.name().to_owned(),
            since_unix: unix_seconds(status.since_ns),
            rtt_ms: status.last_rtt.map(|rtt| rtt.as_secs_f64() * 1e3),
            target: self.link_target.clone(),
            transitions: status
                .recent_transitions
                .iter()
                .map(|transition| TransitionView {
                    time_unix: unix_seconds(transition.at_ns),
                    from: transition.from.name().to_owned(),
                    to: transition.to.name().to_owned(),
                    reason: transition.reason.to_string(),
                })
                .collect(),
        }
    }
}

/// When a failed command leaves the node in FAULT (it lost a ring), and with which code.
fn failure_fault(command: &CscCommand, failure: &str) -> Option<(i32, String)> {
    match command {
        CscCommand::Enable => Some((error_codes::INGEST_FAILED, failure.to_owned())),
        CscCommand::Disable => Some((error_codes::INGEST_FAILED, failure.to_owned())),
        CscCommand::Start { .. } => None,
        CscCommand::Standby | CscCommand::ExitControl => None,
    }
}

/// Opens the stream's ring, creating it (with its directory) on first start.
fn open_ring(plan: &StreamPlan, clock: &Arc<dyn Clock>) -> Result<Ring, String> {
    let options = RingOptions {
        full_policy: plan.full_policy,
        cursors: vec![
            CursorSpec::required("drain"),
            CursorSpec::optional(LIVE_CURSOR),
            CursorSpec::optional("prompt"),
            CursorSpec::optional("archive"),
        ],
        clock: Arc::clone(clock),
        ..RingOptions::default()
    };
    let directory: &PathBuf = &plan.ring_directory;
    if directory.join("ring.meta").exists() {
        let ring = Ring::open(directory, options)
            .map_err(|error| format!("cannot open the ring {}: {error}", directory.display()))?;
        if ring.capacity_bytes() != plan.ring_capacity_bytes {
            tracing::warn!(
                ring = %directory.display(),
                on_disk = ring.capacity_bytes(),
                configured = plan.ring_capacity_bytes,
                "the ring on disk keeps its size; the configured ring_capacity applies only at creation"
            );
        }
        return Ok(ring);
    }
    std::fs::create_dir_all(directory)
        .map_err(|error| format!("cannot create the ring directory {}: {error}", directory.display()))?;
    let stream_id = match plan.focalplane.instrument() {
        dma_ingest::protocol::geometry::Instrument::LsstCam => 1,
        dma_ingest::protocol::geometry::Instrument::Latiss => 2,
    };
    let mut create = CreateOptions::new(plan.ring_capacity_bytes, stream_id);
    create.zero_fill = plan.zero_fill;
    tracing::info!(ring = %directory.display(), capacity_bytes = plan.ring_capacity_bytes, "creating the ring");
    Ring::create(directory, &create, options)
        .map_err(|error| format!("cannot create the ring {}: {error}", directory.display()))
}

/// Owns a running ingest: turns its events into the exposure table and reports a failure.
struct IngestSupervisor {
    handle: IngestHandle,
    stop: Arc<AtomicBool>,
    shared: Arc<StreamShared>,
    exposures: Arc<ExposureTable>,
    faults: Sender<Fault>,
}

impl IngestSupervisor {
    fn run(self) -> Result<Ring, String> {
        let stream = self.shared.plan.instrument.clone();
        let expected = self.shared.plan.focalplane.segment_count() as u32;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return self.handle.shutdown();
            }
            match self.handle.events().recv_timeout(Duration::from_millis(100)) {
                Ok(event) => self.apply(&stream, expected, event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The ingest thread ended on its own: a failure (it runs until stopped).
                    let result = self.handle.wait();
                    let report = match &result {
                        Ok(_) => format!("{stream}: the ingest stopped on its own"),
                        Err(error) => format!("{stream}: the ingest failed: {error}"),
                    };
                    let _ = self.faults.send(Fault { code: error_codes::INGEST_FAILED, report });
                    return result;
                }
            }
        }
    }

    fn apply(&self, stream: &str, expected: u32, event: IngestEvent) {
        match event {
            IngestEvent::Completeness(CompletenessEvent::SegmentDurable { exposure_id, .. }) => {
                self.exposures.update(stream, exposure_id, expected, |entry| entry.segments_durable += 1);
            }
            IngestEvent::Completeness(CompletenessEvent::ExposureComplete { exposure_id, .. }) => {
                self.shared.exposures_complete_total.fetch_add(1, Ordering::Relaxed);
                self.exposures
                    .update(stream, exposure_id, expected, |entry| entry.acquisition = "complete".into());
                tracing::info!(%stream, exposure_id, "exposure complete");
            }
            IngestEvent::Completeness(CompletenessEvent::ExposureIncomplete(incomplete)) => {
                self.shared.exposures_incomplete_total.fetch_add(1, Ordering::Relaxed);
                let durable = incomplete.durable_segments as u32;
                self.exposures.update(stream, incomplete.exposure_id, expected, |entry| {
                    entry.acquisition = "incomplete".into();
                    entry.segments_durable = durable;
                });
                tracing::warn!(%stream, %incomplete, "exposure incomplete");
            }
            IngestEvent::Completeness(CompletenessEvent::DetectorComplete { .. }) => {}
            IngestEvent::Rejected { .. } | IngestEvent::MetadataDurable { .. } => {}
            IngestEvent::Failed { detail } => {
                let _ = self
                    .faults
                    .send(Fault { code: error_codes::RING_FAILED, report: format!("{stream}: {detail}") });
            }
        }
    }
}

/// Builds a drain lane's `Drainer` on a reader.
type LaneBuilder = Box<dyn Fn(ringbuffer::Reader) -> std::io::Result<Drainer> + Send>;

/// One drain lane's loop.
struct DrainLane {
    drainer: Option<Drainer>,
    /// The live lane restarts from the head after an error (the backlog lane holds the data).
    rebuild: Option<LaneBuilder>,
    settings: Arc<DrainSettings>,
    live: bool,
    stop: Arc<AtomicBool>,
    shared: Arc<StreamShared>,
    exposures: Arc<ExposureTable>,
    faults: Sender<Fault>,
}

impl DrainLane {
    fn run(mut self) {
        let stream = self.shared.plan.instrument.clone();
        let expected = self.shared.plan.focalplane.segment_count() as u32;
        while !self.stop.load(Ordering::SeqCst) {
            let Some(drainer) = self.drainer.as_mut() else { return };
            self.settings.register(drainer.control());
            if !self.live {
                self.shared.backlog_bytes.store(drainer.backlog_bytes(), Ordering::Relaxed);
            }
            match drainer.step(&self.stop) {
                Ok(StepOutcome::Drained { exposure_id, files, incomplete }) => {
                    let state = match (self.live, incomplete) {
                        (true, _) => "sent (live)",
                        (false, false) => "drained",
                        (false, true) => "drained (incomplete)",
                    };
                    self.exposures.update(&stream, exposure_id, expected, |entry| {
                        // The backlog lane's confirmation is final; the live lane's comes first.
                        if !(self.live && entry.drain.starts_with("drained")) {
                            entry.drain = state.into();
                        }
                    });
                    tracing::info!(%stream, exposure_id, files, incomplete, live = self.live, "exposure at the base");
                }
                Ok(StepOutcome::Idle) => std::thread::sleep(Duration::from_millis(50)),
                Ok(StepOutcome::Paused) | Ok(StepOutcome::Island) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(error) if self.live => self.restart_live_lane(&stream, &error.to_string()),
                Err(error) => {
                    let report = format!("{stream} drain (backlog): {error}");
                    let _ = self.faults.send(Fault { code: error_codes::DRAIN_FAILED, report });
                    return;
                }
            }
        }
        if let (false, Some(drainer)) = (self.live, self.drainer.as_ref()) {
            self.shared.backlog_bytes.store(drainer.backlog_bytes(), Ordering::Relaxed);
        }
    }

    /// The live lane is an optimisation: after an error (typically a record it lagged behind was
    /// reclaimed once the backlog lane confirmed it) it starts again at the head; the backlog
    /// lane, which holds every record until confirmed, is unaffected.
    fn restart_live_lane(&mut self, stream: &str, error: &str) {
        // Expected when the backlog lane is caught up and confirms an exposure first (its space
        // is then reclaimed under the live lane): nothing is lost, so not a warning.
        tracing::info!(%stream, %error, "live drain lane restarts at the head; the backlog lane has the data");
        let (Some(old), Some(rebuild)) = (self.drainer.take(), self.rebuild.as_ref()) else { return };
        match rebuild(old.into_reader()) {
            Ok(drainer) => self.drainer = Some(drainer),
            Err(error) => {
                let report = format!("{stream} drain (live): cannot restart: {error}");
                let _ = self.faults.send(Fault { code: error_codes::DRAIN_FAILED, report });
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl NodeControl for Node {
    fn status(&self) -> NodeStatus {
        let (csc, error) = {
            let lifecycle = lock(&self.lifecycle);
            (lifecycle.csc.view(), lifecycle.error.clone())
        };
        NodeStatus {
            node: self.config.node.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            simulation: self.simulation,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            csc: CscView {
                state: csc.0,
                since_unix: unix_seconds(csc.1),
                error_code: error.as_ref().map(|(code, _)| *code),
                error_report: error.map(|(_, report)| report),
            },
            rings: self.streams.iter().map(|shared| self.ring_view(shared)).collect(),
            ingest: self.streams.iter().map(|shared| self.ingest_view(shared)).collect(),
            link: self.link_view(),
            drain: self.streams.iter().map(|shared| self.drain_view(shared)).collect(),
        }
    }

    fn exposures(&self, limit: usize) -> Vec<ExposureView> {
        self.exposures.newest(limit)
    }

    fn log_tail(&self, limit: usize) -> Vec<LogLine> {
        match &self.log {
            Some(log) => log.tail(limit),
            None => Vec::new(),
        }
    }

    fn drain_pause(&self, paused: bool) -> Result<String, String> {
        self.drain_settings.paused.store(paused, Ordering::SeqCst);
        self.drain_settings.apply_all();
        tracing::info!(
            paused,
            "drain {}",
            if paused { "paused by an operator" } else { "resumed by an operator" }
        );
        Ok(if paused {
            "drain paused (the rings keep filling; nothing is lost)".into()
        } else {
            "drain resumed".into()
        })
    }

    fn drain_rate(&self, bytes_per_second: Option<u64>) -> Result<String, String> {
        if bytes_per_second == Some(0) {
            return Err("a rate limit of 0 would stop the drain: use 'drain pause' instead".into());
        }
        self.drain_settings
            .rate_limit_bytes_per_second
            .store(bytes_per_second.unwrap_or(0), Ordering::SeqCst);
        self.drain_settings.apply_all();
        tracing::info!(rate_limit_bytes_per_second = bytes_per_second.unwrap_or(0), "drain rate limit set");
        Ok(match bytes_per_second {
            Some(rate) => format!("drain rate limit {:.1} MB/s, shared by the streams", rate as f64 / 1e6),
            None => "drain rate limit removed".into(),
        })
    }

    fn csc_command(&self, command: CscCommand) -> CommandAck {
        self.command(command)
    }

    fn fiber(&self, cut: bool) -> Result<String, String> {
        let Some(fiber) = &self.fiber else {
            return Err("there is no simulated fiber: 'fiber' works only in 'summit-node sim'".into());
        };
        if cut {
            fiber.cut(hw_sim::link_proxy::CutMode::Reset);
            tracing::warn!("simulated fiber cut by an operator");
            Ok("simulated fiber cut: the link monitor will report DOWN within 3 s; acquisition goes on"
                .into())
        } else {
            fiber.restore();
            tracing::warn!("simulated fiber restored by an operator");
            Ok("simulated fiber restored: the backlog drains once the link is UP".into())
        }
    }
}

/// Checks the base against every stream's manifest (what `verify-base` and the simulation's
/// closing check run): missing, extra and mismatched objects under `raw/`.
pub fn verify_base(config: &Config, read_back: bool) -> Result<failover::manifest::VerifyReport, String> {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for stream in config.streams().map_err(|error| error.to_string())? {
        let path = config.manifest_directory().join(format!("{}.jsonl", stream.instrument));
        if !path.exists() {
            warnings.push(format!(
                "no manifest for {} at {} (nothing drained yet?)",
                stream.instrument,
                path.display()
            ));
            continue;
        }
        let (loaded, load_warnings) = Manifest::load(&path)
            .map_err(|error| format!("cannot read the manifest {}: {error}", path.display()))?;
        entries.extend(loaded);
        warnings.extend(load_warnings.into_iter().map(|warning| format!("{}: {warning}", path.display())));
    }
    let (store, _) = open_store(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    let mut report = runtime
        .block_on(failover::manifest::verify_base(store.as_ref(), "raw/", &entries, read_back))
        .map_err(|error| error.to_string())?;
    report.warnings.splice(0..0, warnings);
    Ok(report)
}

/// Starts the console servers of `config` for `node` (the Unix socket and every serial port);
/// they stop when `stop` is set.
pub fn serve_consoles(
    config: &Config,
    node: &Arc<Node>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let control: Arc<dyn NodeControl> = node.clone();
    let mut threads = Vec::new();
    let options = crate::console::UnixConsoleOptions {
        path: config.console.socket.clone(),
        group: config.console.socket_group.clone(),
        operator_group: config.console.operator_group.clone(),
        ..crate::console::UnixConsoleOptions::default()
    };
    threads.push(
        crate::console::serve_unix(options, Arc::clone(&control), Arc::clone(stop))
            .map_err(|error| format!("console socket {}: {error}", config.console.socket.display()))?,
    );
    for serial in &config.console.serial {
        let options = crate::console::SerialConsoleOptions {
            device: serial.device.clone(),
            baud_rate: serial.baud_rate,
            operator: serial.operator,
        };
        threads.push(
            crate::console::serve_serial(options, Arc::clone(&control), Arc::clone(stop))
                .map_err(|error| format!("serial console {}: {error}", serial.device.display()))?,
        );
    }
    Ok(threads)
}
