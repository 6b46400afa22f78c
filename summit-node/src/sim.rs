//! `summit-node sim`: the whole appliance on one machine, against simulated hardware, with
//! embedded defaults (no configuration file).
//!
//! ```text
//!  hw-sim LSSTCam (one raft) --frames, metadata--> unix sockets --> node: ingest -> ring -> drain --+
//!  hw-sim LATISS --------------frames, metadata--> unix sockets --> node: ingest -> ring -> drain --+
//!                                                                                                  |
//!        base directory (data_dir/base) <---------------- drain (object_store, local directory) <--+
//!        base heartbeat (HTTP, loopback) <-- link proxy = the simulated fiber <-- link monitor probes
//! ```
//!
//! The base is a local directory; the *fiber* is a [`LinkProxy`] in front of a small HTTP
//! heartbeat that stands for the base's object store. Cutting the fiber (a key, the console's
//! `fiber cut`, or a scheduled cut) makes the link monitor see DOWN within 3 s, the drain goes to
//! island mode (it sends nothing while the link is down, as it would in production) and the
//! backlog grows in the rings; restoring it drains the backlog. Uploads to the local directory
//! themselves do not cross the proxy: the simulation models the cut through the link monitor,
//! which is what the drain obeys (a real S3 base behind a cut link is tested in `tests/`).
//!
//! Everything lives under one data directory (default `./summit-sim-data`): the rings, the base,
//! the manifest, the console and events sockets, the events file. A directory holding the
//! marker file `.summit-sim` is wiped at the next start unless `--keep-data`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hw_sim::driver::{play_with_metadata, PlayOptions, PlayReport};
use hw_sim::geometry::Focalplane;
use hw_sim::link_proxy::{FlapSchedule, LinkProxy, LinkState as ProxyState};
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule, TimeCompression};
use hw_sim::pixels::SkyParameters;
use hw_sim::transport::FrameWriter;
use ringbuffer::SystemClock;

use crate::config::Config;
use crate::node::{Node, NodeOptions};

/// The marker that makes a data directory the simulation's (and so safe to wipe).
pub const MARKER_FILE: &str = ".summit-sim";

/// LSSTCam visit period at the baseline cadence: 30 s exposure, 2 s readout, 8 s gap.
const LSSTCAM_VISIT_SECONDS: f64 = 40.0;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Where everything lives.
    pub data_dir: PathBuf,
    /// LSSTCam rafts to simulate (empty: LATISS only).
    pub rafts: Vec<String>,
    /// LSSTCam visits (30 s exposures every 40 s).
    pub visits: u32,
    /// LATISS exposures.
    pub latiss_exposures: u32,
    /// LATISS exposure time, seconds.
    pub latiss_exposure_seconds: f64,
    /// LATISS cadence (shutter open to shutter open), seconds.
    pub latiss_cadence_seconds: f64,
    /// Simulated seconds per wall second.
    pub compression: f64,
    /// Seed of the sky, pointing and weather: same seed, same pixels.
    pub seed: u64,
    /// Cut the fiber over this part of the night: (start, end) as fractions of the night's wall
    /// duration (e.g. (0.33, 0.67)).
    pub fiber_cut: Option<(f64, f64)>,
    /// Keep an earlier simulation's data (default: wipe a directory holding the marker).
    pub keep_data: bool,
    /// The night's first shutter open, ns since 1970 (default: now).
    pub start_unix_ns: Option<i64>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            data_dir: PathBuf::from("summit-sim-data"),
            rafts: vec!["R22".to_owned()],
            visits: 10,
            latiss_exposures: 10,
            latiss_exposure_seconds: 30.0,
            latiss_cadence_seconds: 40.0,
            compression: 10.0,
            seed: 1,
            fiber_cut: None,
            keep_data: false,
            start_unix_ns: None,
        }
    }
}

impl SimOptions {
    /// The night's plan for the LSSTCam player (no LATISS) and the LATISS player (no visits).
    pub fn plans(&self, start_unix_ns: i64) -> (NightPlan, NightPlan) {
        let lsstcam =
            NightPlan { latiss: None, ..NightPlan::baseline(start_unix_ns, self.visits, self.seed) };
        let latiss = NightPlan {
            latiss: Some(LatissPlan {
                exposure_seconds: self.latiss_exposure_seconds,
                cadence_seconds: self.latiss_cadence_seconds,
                count: self.latiss_exposures,
            }),
            ..NightPlan::baseline(start_unix_ns, 0, self.seed)
        };
        (lsstcam, latiss)
    }

    /// The sky the pixels are generated from.
    pub fn sky(&self) -> SkyParameters {
        SkyParameters { seed: self.seed, ..SkyParameters::default() }
    }

    /// Wall seconds the night takes at the chosen compression.
    pub fn night_wall_seconds(&self) -> f64 {
        let lsstcam =
            if self.rafts.is_empty() { 0.0 } else { f64::from(self.visits) * LSSTCAM_VISIT_SECONDS };
        let latiss = f64::from(self.latiss_exposures) * self.latiss_cadence_seconds;
        lsstcam.max(latiss) / self.compression
    }

    /// Exposures the night holds.
    pub fn exposure_count(&self) -> u64 {
        let visits = if self.rafts.is_empty() { 0 } else { u64::from(self.visits) };
        visits + u64::from(self.latiss_exposures)
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.compression.is_finite() && self.compression > 0.0 && self.compression <= 1000.0) {
            return Err(format!("--compression {}: expected a number in (0, 1000]", self.compression));
        }
        if self.exposure_count() == 0 {
            return Err("nothing to simulate: give --visits with rafts, or --latiss-exposures".into());
        }
        if let Some((start, end)) = self.fiber_cut {
            if !(0.0..1.0).contains(&start) || !(start..=1.5).contains(&end) || start >= end {
                return Err(format!(
                    "fiber cut {start}..{end}: expected 0 <= start < end <= 1.5 (fractions of the night)"
                ));
            }
        }
        Ok(())
    }
}

/// A tiny HTTP responder standing for the base's object store: what the link monitor probes.
struct Heartbeat {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start() -> Result<Heartbeat, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|error| format!("base heartbeat: {error}"))?;
        let address = listener.local_addr().map_err(|error| format!("base heartbeat: {error}"))?;
        listener.set_nonblocking(true).map_err(|error| format!("base heartbeat: {error}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sim-base-heartbeat".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                            let mut request = [0u8; 1024];
                            let _ = stream.read(&mut request);
                            let _ = stream.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            );
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .map_err(|error| format!("base heartbeat: {error}"))?;
        Ok(Heartbeat { address, stop, thread: Some(thread) })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Progress of the simulated cameras.
#[derive(Debug, Default)]
pub struct CameraProgress {
    /// LSSTCam exposures read out (EndReadout sent).
    pub lsstcam_exposures: AtomicU64,
    /// LATISS exposures read out.
    pub latiss_exposures: AtomicU64,
}

/// A running simulation.
pub struct Simulation {
    options: SimOptions,
    config: Config,
    node: Arc<Node>,
    proxy: LinkProxy,
    _heartbeat: Heartbeat,
    players: Vec<JoinHandle<Result<PlayReport, String>>>,
    progress: Arc<CameraProgress>,
    /// Stops the console servers and the housekeeping thread.
    console_stop: Arc<AtomicBool>,
    consoles: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Simulation {
    /// Prepares the data directory, starts the node (ENABLED), the fiber and the cameras.
    pub fn start(options: SimOptions, log: Option<crate::logging::LogBuffer>) -> Result<Simulation, String> {
        options.validate()?;
        let data_dir = prepare_data_dir(&options.data_dir, options.keep_data)?;
        let heartbeat = Heartbeat::start()?;
        let proxy = LinkProxy::start("127.0.0.1:0".parse().expect("literal address"), heartbeat.address)
            .map_err(|error| format!("the simulated fiber (link proxy): {error}"))?;
        let mut config = Config::simulation(&data_dir, &options.rafts, proxy.local_addr());
        config.link.probe = format!("http://{}/health", proxy.local_addr());
        config.validate().map_err(|error| format!("the simulation's configuration: {error}"))?;
        let events = crate::events::EventPublisher::start(&config.events.socket, &config.events.file)
            .map_err(|error| format!("events: {error}"))?;
        let node = Node::new(NodeOptions {
            config: config.clone(),
            simulation: true,
            fiber: Some(proxy.control()),
            log,
            events: Some(Arc::new(events)),
            clock: Arc::new(SystemClock),
        })?;
        let console_stop = Arc::new(AtomicBool::new(false));
        let mut consoles = crate::node::serve_consoles(&config, &node, &console_stop)?;
        // The node's housekeeping (faults, statistics, rates), as `summit-node run` does it.
        let housekeeping_node = Arc::clone(&node);
        let housekeeping_stop = Arc::clone(&console_stop);
        consoles.push(
            std::thread::Builder::new()
                .name("sim-housekeeping".into())
                .spawn(move || housekeeping_node.run(&housekeeping_stop, &mut |_| {}))
                .map_err(|error| format!("cannot start the housekeeping thread: {error}"))?,
        );
        let start_unix_ns = match options.start_unix_ns {
            Some(start) => start,
            None => hw_sim::cli::now_unix_ns()?,
        };
        let progress = Arc::new(CameraProgress::default());
        let (lsstcam_plan, latiss_plan) = options.plans(start_unix_ns);
        let mut players = Vec::new();
        let streams = config.streams().map_err(|error| error.to_string())?;
        for plan in streams {
            let is_latiss = plan.instrument == "LATISS";
            let night = if is_latiss { latiss_plan } else { lsstcam_plan };
            let counter = Arc::clone(&progress);
            let compression = TimeCompression { factor: options.compression };
            let sky = options.sky();
            let rafts = options.rafts.clone();
            let frames = socket_path(&plan.frames)?;
            let metadata = socket_path(&plan.metadata)?;
            let thread = std::thread::Builder::new()
                .name(format!("sim-camera-{}", plan.instrument))
                .spawn(move || {
                    play_camera(night, &rafts, &frames, &metadata, compression, sky, &|| {
                        let total =
                            if is_latiss { &counter.latiss_exposures } else { &counter.lsstcam_exposures };
                        total.fetch_add(1, Ordering::Relaxed);
                    })
                })
                .map_err(|error| format!("cannot start a simulated camera: {error}"))?;
            players.push(thread);
        }
        if let Some((start, end)) = options.fiber_cut {
            let night = options.night_wall_seconds();
            proxy.run_schedule(FlapSchedule::new(vec![
                (
                    Duration::from_secs_f64(start * night),
                    ProxyState::Down(hw_sim::link_proxy::CutMode::Reset),
                ),
                (Duration::from_secs_f64(end * night), ProxyState::Up),
            ]));
        }
        tracing::info!(
            data_dir = %data_dir.display(),
            rafts = ?options.rafts,
            visits = options.visits,
            latiss_exposures = options.latiss_exposures,
            compression = options.compression,
            night_wall_seconds = options.night_wall_seconds(),
            "simulation started"
        );
        Ok(Simulation {
            options,
            config,
            node,
            proxy,
            _heartbeat: heartbeat,
            players,
            progress,
            console_stop,
            consoles,
            started: Instant::now(),
        })
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The configuration the node runs with (paths of the sockets, the base, the rings).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The options.
    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// The simulated fiber.
    pub fn fiber(&self) -> hw_sim::link_proxy::LinkControl {
        self.proxy.control()
    }

    /// Exposures read out by the simulated cameras so far.
    pub fn exposures_read_out(&self) -> u64 {
        self.progress.lsstcam_exposures.load(Ordering::Relaxed)
            + self.progress.latiss_exposures.load(Ordering::Relaxed)
    }

    /// Wall time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether both cameras finished their night.
    pub fn cameras_done(&self) -> bool {
        self.players.iter().all(JoinHandle::is_finished)
    }

    /// Waits for the cameras to finish; returns their reports (an error names the camera).
    pub fn join_cameras(&mut self) -> Result<Vec<PlayReport>, String> {
        self.players
            .drain(..)
            .map(|player| player.join().map_err(|_| "a simulated camera panicked".to_owned())?)
            .collect()
    }

    /// Whether every exposure of the night is drained to the base (backlog lanes confirmed).
    pub fn all_drained(&self) -> bool {
        use crate::status::NodeControl;
        let status = self.node.status();
        let drained: u64 = status.drain.iter().map(|drain| drain.exposures_drained_total).sum();
        self.cameras_done() && drained >= self.options.exposure_count()
    }

    /// Stops the console, the node (SIGTERM path) and the fiber.
    pub fn shutdown(self) -> Result<(), String> {
        self.console_stop.store(true, Ordering::SeqCst);
        for console in self.consoles {
            let _ = console.join();
        }
        let result = self.node.shutdown();
        drop(self.proxy);
        result
    }
}

fn socket_path(endpoint: &dma_ingest::Endpoint) -> Result<PathBuf, String> {
    match endpoint {
        dma_ingest::Endpoint::Unix(path) => Ok(path.clone()),
        other => Err(format!("the simulation expects unix sockets, not {other}")),
    }
}

/// Plays one camera's night to the node's sockets, calling `on_exposure` at each EndReadout.
fn play_camera(
    night: NightPlan,
    rafts: &[String],
    frames: &Path,
    metadata: &Path,
    compression: TimeCompression,
    sky: SkyParameters,
    on_exposure: &dyn Fn(),
) -> Result<PlayReport, String> {
    let raft_names: Vec<&str> =
        if rafts.is_empty() { vec!["R22"] } else { rafts.iter().map(String::as_str).collect() };
    let lsstcam =
        Focalplane::lsstcam_subset(&raft_names).map_err(|error| format!("LSSTCam geometry: {error}"))?;
    let latiss = Focalplane::latiss();
    let schedule =
        NightSchedule::new(night, &lsstcam, &latiss).map_err(|error| format!("night plan: {error}"))?;
    let mut frame_sink = FrameWriter::<UnixStream>::connect(frames)
        .map_err(|error| format!("camera cannot connect to {}: {error}", frames.display()))?;
    let mut metadata_sink = FrameWriter::<UnixStream>::connect(metadata)
        .map_err(|error| format!("header service cannot connect to {}: {error}", metadata.display()))?;
    let options = PlayOptions { compression: Some(compression), ..PlayOptions::new(sky) };
    let report =
        play_with_metadata(schedule, &mut frame_sink, Some(&mut metadata_sink), options, &mut |_| {
            on_exposure()
        })
        .map_err(|error| format!("camera: sending failed: {error}"))?;
    // Closing the connections tells the ingest the camera is done (dropping them closes them).
    drop(frame_sink);
    drop(metadata_sink);
    Ok(report)
}

/// Creates the data directory, wiping an earlier simulation's (marked) data unless `keep`.
fn prepare_data_dir(data_dir: &Path, keep: bool) -> Result<PathBuf, String> {
    let absolute = if data_dir.is_absolute() {
        data_dir.to_owned()
    } else {
        std::env::current_dir().map_err(|error| format!("current directory: {error}"))?.join(data_dir)
    };
    if absolute.exists() {
        let marked = absolute.join(MARKER_FILE).exists();
        let empty = std::fs::read_dir(&absolute).map(|mut entries| entries.next().is_none()).unwrap_or(false);
        if !marked && !empty {
            return Err(format!(
                "{} exists and is not a simulation data directory (no {MARKER_FILE} in it): choose another --data-dir",
                absolute.display()
            ));
        }
        if marked && !keep {
            std::fs::remove_dir_all(&absolute).map_err(|error| {
                format!("cannot wipe the earlier simulation in {}: {error}", absolute.display())
            })?;
        }
    }
    std::fs::create_dir_all(&absolute)
        .map_err(|error| format!("cannot create {}: {error}", absolute.display()))?;
    std::fs::write(absolute.join(MARKER_FILE), "summit-node sim data directory: wiped at the next start\n")
        .map_err(|error| format!("cannot write the marker in {}: {error}", absolute.display()))?;
    Ok(absolute)
}
