//! `ingest-bench`: the ingest (`dma-ingest`) on a real disk, next to `fio` and a naive copy loop
//! measured in the same run on the same directory.
//!
//! Input: LATISS frames generated once in memory by `hw-sim` (one exposure: 16 whole-segment
//! frames of 4096 + 4,718,592 bytes), re-sent over a local Unix socket with fresh exposure ids and
//! frame sequence numbers (only the 64-byte header is patched, its CRC recomputed), so the sender
//! costs little; with `--input replay` the same frames are written once to a replay file in tmpfs
//! and read by the ingest's file endpoint instead (no sender, no socket: on a fast disk the
//! socket transport alone is slower than `fio`). Contenders, alternated round by round with `sync` and a
//! pause before each timed run, medians reported:
//! - `io_uring`: the ingest's io_uring path into a ring (`O_DIRECT`), durable (group commit);
//! - `portable`: the ingest's portable path, same input;
//! - `fio`: sequential `O_DIRECT` write, io_uring engine, block size = one ring record of a
//!   whole-segment frame (4096 header block + frame), the physical limit of the directory;
//! - `naive`: `read()` from the socket into a `Vec`, buffered `write()` to a file, `fdatasync`
//!   every `--naive-sync` bytes and at the end (the baseline a straightforward receiver would be);
//! - `socket`: the same reads, the bytes discarded: the input's own ceiling.
//!
//! CPU of the ingest side: the ingest runs in this process, on its own threads (and io_uring's
//! kernel workers, which are threads of this process). Its CPU is this process's CPU over the
//! run (`/proc/self/stat`, which also counts threads that exited) minus what the benchmark's own
//! threads used (the sender, the reader following the ring if any, and the main thread, each
//! reading `/proc/thread-self/stat` at its start and end). The naive loop's receiver thread is
//! measured the same way. Kernel writeback of the naive loop's page cache runs in kernel threads
//! and is NOT charged to it (which flatters the naive loop). Resolution: 10 ms per reading.
//!
//! Then, per ingest path: frame-to-durable latency at LATISS's nominal rate (one exposure of 16
//! segments x 4 frames read out over 2 s, the 38 s pause between exposures compressed to
//! `--latency-gap`), measured per frame from the sender's `write` of the frame returning to a
//! ring `Reader` (following the durable head with `wait_for_data`) returning the record; and the
//! growth of this process's VmRSS over `--rss-total` bytes through a smaller ring drained by a
//! reader that commits its cursor.
//!
//! Run: `scripts/bench-ingest SCRATCH_DIR`, or
//! `cargo run --release -p hw-sim --example ingest-bench -- --dir SCRATCH_DIR`.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use dma_ingest::completeness::CompletenessEvent;
use dma_ingest::{Backend, BackendChoice, Endpoint, IngestEvent, IngestHandle, IngestOptions};
use hw_sim::driver::{play, PlayOptions};
use hw_sim::frame::FrameHeader;
use hw_sim::geometry::Focalplane;
use hw_sim::night::{LatissPlan, NightPlan, NightSchedule};
use hw_sim::pixels::SkyParameters;
use hw_sim::transport::{FrameSink, UnixFrameSender};
use ringbuffer::bench::{
    cpu_seconds, filesystem_of, fio_args, fio_available, kernel_release, run_fio, settle, thread_cpu_seconds,
    utc_now, vm_rss_kib, WriteRun,
};
use ringbuffer::layout::{round_up_to_block, stored_record_bytes};
use ringbuffer::{parse_size_bytes, CreateOptions, Ring, RingOptions, SystemClock};
use zerocopy::{FromBytes, IntoBytes};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "ingest-bench", about = "Benchmark the ingest paths against fio and a naive copy loop")]
struct Cli {
    /// Scratch directory on the filesystem under test (everything the benchmark writes goes here
    /// and is removed afterwards).
    #[arg(long)]
    dir: PathBuf,
    /// Frame bytes sent per throughput run (rounded down to whole exposures of 16 frames).
    #[arg(long, default_value = "4GiB", value_parser = size_arg)]
    total: u64,
    /// Rounds of the four throughput contenders (order reversed every other round); medians.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// fio queue depth.
    #[arg(long, default_value_t = 4)]
    fio_depth: u32,
    /// fio `--fdatasync` interval, in writes (16 whole-segment records: about one exposure).
    #[arg(long, default_value_t = 16)]
    fio_group: u64,
    /// The naive loop's `fdatasync` interval, bytes.
    #[arg(long, default_value = "64MiB", value_parser = size_arg)]
    naive_sync: u64,
    /// Exposures sent at the LATISS readout pace for the latency measurement.
    #[arg(long, default_value_t = 8)]
    latency_exposures: u32,
    /// Pause between two exposures of the latency measurement, seconds (nominal: 38).
    #[arg(long, default_value_t = 1.0)]
    latency_gap: f64,
    /// Frame bytes through the drained ring for the RSS measurement.
    #[arg(long, default_value = "10GiB", value_parser = size_arg)]
    rss_total: u64,
    /// Capacity of the drained ring of the RSS measurement.
    #[arg(long, default_value = "4GiB", value_parser = size_arg)]
    rss_ring: u64,
    /// The completeness tracker's `max_open_exposures` (default: the ingest's default). At full
    /// rate more exposures than this can be admitted but not yet durable; the oldest is then
    /// declared incomplete (evicted) although all its frames become durable.
    #[arg(long)]
    max_open_exposures: Option<usize>,
    /// Run only this throughput contender, `--rounds` times, and print each run (for profiling):
    /// io_uring, portable, fio, naive or socket.
    #[arg(long)]
    only: Option<String>,
    /// Measure on written extents instead of fresh `fallocate`d ones: create the throughput rings
    /// with `zero_fill` and write fio's file once before its timed run (the state of a ring after
    /// its first lap). Isolates ext4's unwritten-extent conversion at `fdatasync`.
    #[arg(long)]
    zero_fill: bool,
    /// Where the frames come from: `socket` (hw-sim's sender over a Unix socket, the default) or
    /// `replay` (a replay file of every lap written once to `--replay-dir` before the rounds and
    /// read by the ingest's file endpoint: no sender, no socket, the closest this machine has to
    /// a DMA device). With `replay`, `naive` reads the file and `socket` becomes the file read
    /// and discarded.
    #[arg(long, default_value = "socket")]
    input: String,
    /// Directory of the replay file (`--input replay`); tmpfs keeps the disk out of the reads.
    #[arg(long, default_value = "/dev/shm")]
    replay_dir: PathBuf,
}

/// The replay file of `--input replay` (written once), else `None`.
static REPLAY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

fn replay_file() -> Option<&'static PathBuf> {
    REPLAY.get().and_then(Option::as_ref)
}

/// Removes the file when dropped (the replay file, however the run ends).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes every lap of `set` (patched as the sender would) back to back into `path`.
fn write_replay(set: &mut FrameSet, laps: u64, path: &Path) -> Result<u64, BoxError> {
    let mut file = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let per_lap = set.frames.len();
    let (mut sequence, mut bytes) = (0u64, 0u64);
    for lap in 0..laps {
        for index in 0..per_lap {
            sequence += 1;
            let frame = set.prepare(lap, index, sequence);
            file.write_all(frame)?;
            bytes += frame.len() as u64;
        }
    }
    file.flush()?;
    Ok(bytes)
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size_bytes(text).map_err(|e| e.to_string())
}

/// Targets of the issue, printed next to the figures (not asserted).
const TARGET_FIO_RATIO: f64 = 0.9;
const TARGET_P99_MS: f64 = 50.0;
const TARGET_RSS_GROWTH_MIB: f64 = 16.0;
/// LATISS readout: every segment's rows in 4 frames, over 2 s.
const LATENCY_FRAMES_PER_SEGMENT: u32 = 4;
const READOUT_SECONDS: f64 = 2.0;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ingest-bench: error: {error}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input: frames generated once, re-sent with fresh ids.

/// One exposure's frames, encoded once; each lap patches their headers with a new exposure id.
struct FrameSet {
    frames: Vec<Vec<u8>>,
    base_exposure_id: u64,
}

impl FrameSet {
    /// One LATISS exposure of 16 segments, `frames_per_segment` frames each, from hw-sim.
    fn latiss(frames_per_segment: u32) -> Result<FrameSet, BoxError> {
        struct Collect(Vec<Vec<u8>>);
        impl FrameSink for Collect {
            fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
                self.0.push(frame.to_vec());
                Ok(())
            }
        }
        let lsstcam = Focalplane::lsstcam_subset(&["R22"])?;
        let latiss = Focalplane::latiss();
        let plan = NightPlan {
            visit_count: 0,
            frames_per_segment,
            latiss: Some(LatissPlan { exposure_seconds: 30.0, cadence_seconds: 40.0, count: 1 }),
            ..NightPlan::baseline(1_764_000_000_000_000_000, 0, 7)
        };
        let schedule = NightSchedule::new(plan, &lsstcam, &latiss)?;
        let mut sink = Collect(Vec::new());
        play(schedule, &mut sink, PlayOptions::new(SkyParameters::default()))?;
        let first = header_of(sink.0.first().ok_or("hw-sim produced no frame")?)?;
        Ok(FrameSet { base_exposure_id: first.exposure_id.get(), frames: sink.0 })
    }

    fn bytes_per_lap(&self) -> u64 {
        self.frames.iter().map(|frame| frame.len() as u64).sum()
    }

    fn stored_bytes_per_lap(&self) -> u64 {
        self.frames.iter().map(|frame| stored_record_bytes(frame.len() as u64)).sum()
    }

    /// Gives frame `index` of lap `lap` its exposure id and connection frame sequence (header
    /// CRC recomputed; the pixels and their CRC do not change).
    fn prepare(&mut self, lap: u64, index: usize, frame_sequence: u64) -> &[u8] {
        let frame = &mut self.frames[index];
        let (header, _) = FrameHeader::mut_from_prefix(frame).expect("a frame starts with its header");
        header.exposure_id = (self.base_exposure_id + lap).into();
        header.frame_sequence = frame_sequence.into();
        header.header_crc32 = crc32fast::hash(&header.as_bytes()[..60]).into();
        frame
    }
}

fn header_of(frame: &[u8]) -> Result<FrameHeader, BoxError> {
    Ok(FrameHeader::read_from_prefix(frame).map_err(|_| "frame shorter than its header")?.0)
}

/// How the sender paces its frames.
#[derive(Clone, Copy)]
enum Pace {
    /// As fast as the receiver takes them.
    Flat,
    /// Each lap (exposure) read out over `READOUT_SECONDS`, frames evenly spaced, then `gap`.
    Readout { gap: Duration },
}

/// What the sender did.
struct Sent {
    bytes: u64,
    cpu_seconds: f64,
}

/// Sends `laps` laps of `set` to the Unix socket at `socket`; records when each frame's write
/// returned (index = frame sequence - 1) in `sent_at` if given.
fn spawn_sender(
    mut set: FrameSet,
    socket: PathBuf,
    laps: u64,
    pace: Pace,
    sent_at: Option<Arc<Mutex<Vec<Option<Instant>>>>>,
) -> JoinHandle<Result<(Sent, FrameSet), BoxError>> {
    std::thread::spawn(move || {
        let cpu_before = thread_cpu_seconds();
        let mut sink = UnixFrameSender::connect(&socket)?;
        let per_lap = set.frames.len();
        let spacing = Duration::from_secs_f64(READOUT_SECONDS / per_lap as f64);
        let mut sequence = 0u64;
        let mut bytes = 0u64;
        for lap in 0..laps {
            let lap_start = Instant::now();
            for index in 0..per_lap {
                if let Pace::Readout { .. } = pace {
                    let due = lap_start + spacing * index as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                sequence += 1;
                let frame = set.prepare(lap, index, sequence);
                sink.send(frame)?;
                bytes += frame.len() as u64;
                if let Some(sent_at) = &sent_at {
                    let now = Instant::now();
                    sent_at.lock().unwrap_or_else(|p| p.into_inner())[(sequence - 1) as usize] = Some(now);
                }
            }
            if let Pace::Readout { gap } = pace {
                std::thread::sleep(gap);
            }
        }
        drop(sink);
        let sent = Sent { bytes, cpu_seconds: thread_cpu_seconds() - cpu_before };
        Ok((sent, set))
    })
}

// ---------------------------------------------------------------------------------------------
// Runs

/// The block device's request counters (`/sys/class/block/DEV/stat`) at one moment, to show
/// what each contender asks of the disk: write requests and their size, flushes, busy time.
#[derive(Clone, Copy, Default)]
struct DiskStat {
    write_requests: u64,
    write_sectors: u64,
    flushes: u64,
    busy_ms: u64,
}

/// `/sys/class/block/DEV/stat` of the device holding the scratch directory, set once at start.
static DISK_STAT_PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

impl DiskStat {
    /// The stat file of the device `dir` is on (`None` for a device that has none, e.g. tmpfs).
    fn path_for(dir: &Path) -> Option<PathBuf> {
        let text = filesystem_of(dir);
        let device = text.split(" on ").nth(1)?.split_whitespace().next()?;
        let name = device.strip_prefix("/dev/")?;
        let path = PathBuf::from(format!("/sys/class/block/{name}/stat"));
        path.exists().then_some(path)
    }

    fn now() -> Option<DiskStat> {
        let path = DISK_STAT_PATH.get()?.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        let fields: Vec<u64> = text.split_whitespace().filter_map(|field| field.parse().ok()).collect();
        Some(DiskStat {
            write_requests: *fields.get(4)?,
            write_sectors: *fields.get(6)?,
            busy_ms: *fields.get(9)?,
            flushes: fields.get(15).copied().unwrap_or(0),
        })
    }

    /// What happened since `self`, as text for a run's line.
    fn since(before: Option<DiskStat>, wall_seconds: f64) -> String {
        let (Some(before), Some(after)) = (before, DiskStat::now()) else { return String::new() };
        let requests = after.write_requests - before.write_requests;
        let kib = (after.write_sectors - before.write_sectors) as f64 * 512.0 / 1024.0;
        format!(
            "  disk: {requests} write requests of {:.0} KiB avg, {} flushes, busy {:.0}%",
            kib / requests.max(1) as f64,
            after.flushes - before.flushes,
            (after.busy_ms - before.busy_ms) as f64 / 10.0 / wall_seconds
        )
    }
}

/// One timed run of any contender.
struct Measured {
    /// Frame bytes (or fio bytes) per second, GB/s.
    gbps: f64,
    /// Bytes as stored on disk per second (ring: frame + record header block), GB/s.
    stored_gbps: f64,
    /// CPU seconds of the receiving side (ingest threads; naive receiver; fio's own figure).
    cpu_seconds: f64,
    /// Bytes the `gbps` figure counts.
    bytes: u64,
    /// The sender's CPU seconds (0 for fio).
    sender_cpu_seconds: f64,
    wall_seconds: f64,
    /// Exposures the ingest declared incomplete although every frame was sent.
    incomplete_exposures: u64,
    /// What the disk saw during the run ([`DiskStat::since`]).
    disk: String,
}

impl Measured {
    fn cpu_per_gb(&self) -> f64 {
        self.cpu_seconds / (self.bytes as f64 / 1e9)
    }

    fn sender_cpu_per_gb(&self) -> f64 {
        self.sender_cpu_seconds / (self.bytes as f64 / 1e9)
    }
}

/// Medians of runs of one contender (each figure the median over the runs, via [`WriteRun`]).
struct Summary {
    runs: Vec<Measured>,
}

impl Summary {
    fn median_of(&self, figure: impl Fn(&Measured) -> f64) -> f64 {
        let mut runs: Vec<WriteRun> = self
            .runs
            .iter()
            .map(|run| WriteRun { payload_gbps: figure(run), wall_seconds: 0.0, cpu_seconds: 0.0 })
            .collect();
        WriteRun::median(&mut runs).payload_gbps
    }

    fn gbps(&self) -> f64 {
        self.median_of(|run| run.gbps)
    }

    fn stored_gbps(&self) -> f64 {
        self.median_of(|run| run.stored_gbps)
    }

    fn cpu_per_gb(&self) -> f64 {
        self.median_of(Measured::cpu_per_gb)
    }

    fn sender_cpu_per_gb(&self) -> f64 {
        self.median_of(Measured::sender_cpu_per_gb)
    }

    fn list(&self) -> String {
        self.runs.iter().map(|run| format!("{:.3}", run.gbps)).collect::<Vec<_>>().join(" ")
    }
}

/// CPU used by this process (all threads) and by the calling thread, at one moment.
struct CpuMark {
    process: f64,
    main: f64,
}

impl CpuMark {
    fn now() -> CpuMark {
        CpuMark { process: cpu_seconds(), main: thread_cpu_seconds() }
    }

    /// CPU of everything but the main thread since `self`, minus `excluded` (the benchmark's
    /// other threads).
    fn others_since(&self, excluded: f64) -> f64 {
        let now = CpuMark::now();
        ((now.process - self.process) - (now.main - self.main) - excluded).max(0.0)
    }
}

/// A ring for `stored_bytes` of records (plus slack) in `dir/ring`.
fn create_ring(dir: &Path, capacity: u64) -> Result<Ring, BoxError> {
    // The previous run's ring was just removed: ext4 reuses its blocks only once the deletion is
    // committed, and on a nearly full disk the new ring's fallocate needs them.
    let _ = std::process::Command::new("sync").status();
    let mut create = CreateOptions::new(round_up_to_block(capacity), 2);
    create.max_payload_bytes = 5 << 20;
    create.zero_fill = ZERO_FILL.get().copied().unwrap_or(false);
    Ok(Ring::create(&dir.join("ring"), &create, RingOptions::default())?)
}

/// The ingest on `backend`, reading `replay` if given, else listening on `dir/frames.sock`.
fn start_ingest(
    ring: Ring,
    dir: &Path,
    backend: Backend,
    replay: Option<&PathBuf>,
) -> Result<IngestHandle, BoxError> {
    let mut options = IngestOptions::new("latiss");
    if let Some(open) = MAX_OPEN_EXPOSURES.get().copied().flatten() {
        options.tracker.max_open_exposures = open;
    }
    options.backend = match backend {
        Backend::IoUring => BackendChoice::IoUring,
        Backend::Portable => BackendChoice::Portable,
    };
    let frames = match replay {
        Some(path) => Endpoint::File(path.clone()),
        None => Endpoint::Unix(dir.join("frames.sock")),
    };
    let ingest =
        IngestHandle::start(ring, Focalplane::latiss(), &frames, None, options, Arc::new(SystemClock))?;
    if ingest.backend() != backend {
        return Err(format!("asked for {backend:?}, got {:?}", ingest.backend()).into());
    }
    Ok(ingest)
}

/// Waits until `frames` frames are durable (draining events; a failure or rejection is an error),
/// calling `tick` with the durable count on the way. Gives up after `limit`. Returns how many
/// exposures the ingest declared incomplete meanwhile (every frame is sent, so: none expected).
fn wait_durable(
    ingest: &IngestHandle,
    frames: u64,
    limit: Duration,
    tick: &mut dyn FnMut(u64),
) -> Result<u64, BoxError> {
    let mut incomplete = 0;
    let deadline = Instant::now() + limit;
    let counters = &ingest.observer().counters;
    loop {
        let durable = counters.frames_durable_total.load(Ordering::Acquire);
        tick(durable);
        if durable >= frames {
            return Ok(incomplete);
        }
        if Instant::now() > deadline {
            return Err(format!("only {durable} of {frames} frames durable after {limit:?}").into());
        }
        match ingest.events().recv_timeout(Duration::from_millis(2)) {
            Ok(IngestEvent::Failed { detail }) => return Err(format!("ingest failed: {detail}").into()),
            Ok(IngestEvent::Rejected { detail, .. }) => {
                return Err(format!("frame rejected: {detail}").into())
            }
            Ok(IngestEvent::Completeness(CompletenessEvent::ExposureIncomplete(_))) => incomplete += 1,
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("ingest ended early".into()),
        }
    }
}

fn sender_result(
    sender: JoinHandle<Result<(Sent, FrameSet), BoxError>>,
) -> Result<(Sent, FrameSet), BoxError> {
    sender.join().map_err(|_| "sender panicked")?
}

/// (a)/(b): `laps` exposures through the ingest into a fresh ring, as fast as it takes them.
fn ingest_throughput(
    dir: &Path,
    backend: Backend,
    set: FrameSet,
    laps: u64,
) -> Result<(Measured, FrameSet), BoxError> {
    let frames = laps * set.frames.len() as u64;
    let stored = laps * set.stored_bytes_per_lap();
    // Slack so the fill stays below the ring's 80% warning.
    let ring = create_ring(dir, stored + stored / 4 + (64 << 20))?;
    settle();
    let ingest = start_ingest(ring, dir, backend, replay_file())?;
    let disk = DiskStat::now();
    let cpu = CpuMark::now();
    let started = Instant::now();
    let input = match replay_file() {
        Some(_) => Err(set),
        None => Ok(spawn_sender(set, dir.join("frames.sock"), laps, Pace::Flat, None)),
    };
    let waited = wait_durable(&ingest, frames, Duration::from_secs(600), &mut |_| {});
    let wall_seconds = started.elapsed().as_secs_f64();
    let disk = DiskStat::since(disk, wall_seconds);
    let (sent, set) = match input {
        Ok(sender) => sender_result(sender)?,
        Err(set) => (Sent { bytes: laps * set.bytes_per_lap(), cpu_seconds: 0.0 }, set),
    };
    let cpu_seconds = cpu.others_since(sent.cpu_seconds);
    let incomplete_exposures = waited?;
    ingest.shutdown()?.close()?;
    std::fs::remove_dir_all(dir.join("ring"))?;
    Ok((
        Measured {
            gbps: sent.bytes as f64 / wall_seconds / 1e9,
            stored_gbps: stored as f64 / wall_seconds / 1e9,
            cpu_seconds,
            bytes: sent.bytes,
            sender_cpu_seconds: sent.cpu_seconds,
            wall_seconds,
            incomplete_exposures,
            disk,
        },
        set,
    ))
}

/// (d): socket -> `Vec` -> buffered file, `fdatasync` every `sync_every` bytes and at the end.
/// Without `sync_every`, the bytes read are discarded: the socket transfer alone, the ceiling any
/// receiver on this socket has.
fn naive_throughput(
    dir: &Path,
    set: FrameSet,
    laps: u64,
    sync_every: Option<u64>,
) -> Result<(Measured, FrameSet), BoxError> {
    let socket = dir.join("naive.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let path = dir.join("naive.dat");
    settle();
    let disk = DiskStat::now();
    let cpu = CpuMark::now();
    let started = Instant::now();
    let receiver = std::thread::spawn(move || -> Result<u64, BoxError> {
        let mut stream: Box<dyn Read> = match replay_file() {
            Some(replay) => Box::new(std::fs::File::open(replay)?),
            None => Box::new(listener.accept()?.0),
        };
        let mut file = sync_every.map(|_| std::fs::File::create(&path)).transpose()?;
        let mut buffer = vec![0u8; 1 << 20];
        let (mut total, mut unsynced) = (0u64, 0u64);
        loop {
            let count = stream.read(&mut buffer)?;
            if count == 0 {
                break;
            }
            total += count as u64;
            let (Some(file), Some(sync_every)) = (file.as_mut(), sync_every) else { continue };
            file.write_all(&buffer[..count])?;
            unsynced += count as u64;
            if unsynced >= sync_every {
                file.sync_data()?;
                unsynced = 0;
            }
        }
        if let Some(file) = file {
            file.sync_data()?;
        }
        Ok(total)
    });
    let input = match replay_file() {
        Some(_) => Err(set),
        None => Ok(spawn_sender(set, socket.clone(), laps, Pace::Flat, None)),
    };
    let received = receiver.join().map_err(|_| "naive receiver panicked")?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let disk = DiskStat::since(disk, wall_seconds);
    let (sent, set) = match input {
        Ok(sender) => sender_result(sender)?,
        Err(set) => (Sent { bytes: laps * set.bytes_per_lap(), cpu_seconds: 0.0 }, set),
    };
    let cpu_seconds = cpu.others_since(sent.cpu_seconds);
    let received = received?;
    if received != sent.bytes {
        return Err(format!("naive loop received {received} of {} bytes", sent.bytes).into());
    }
    if sync_every.is_some() {
        std::fs::remove_file(dir.join("naive.dat"))?;
    }
    std::fs::remove_file(&socket)?;
    let gbps = received as f64 / wall_seconds / 1e9;
    Ok((
        Measured {
            gbps,
            stored_gbps: gbps,
            cpu_seconds,
            bytes: received,
            sender_cpu_seconds: sent.cpu_seconds,
            wall_seconds,
            incomplete_exposures: 0,
            disk,
        },
        set,
    ))
}

/// (c): fio, same block size as one ring record of a whole-segment frame, same directory.
fn fio_throughput(dir: &Path, block: u64, total: u64, group: u64, depth: u32) -> Result<Measured, BoxError> {
    let file = dir.join("fio-reference.dat");
    if ZERO_FILL.get().copied().unwrap_or(false) {
        // Same extent state as a zero-filled ring: the file is written once, untimed, first.
        run_fio(&fio_args(&file, block, total, group, depth)).map_err(|e| e.to_string())?;
    }
    settle();
    let disk = DiskStat::now();
    let result = run_fio(&fio_args(&file, block, total, group, depth)).map_err(|e| e.to_string())?;
    let wall_seconds = result.runtime_ms / 1e3;
    // fio's own runtime; the counters also see its file layout before the timed writes.
    let disk = DiskStat::since(disk, wall_seconds);
    std::fs::remove_file(&file)?;
    Ok(Measured {
        gbps: result.bw_bytes / 1e9,
        stored_gbps: result.bw_bytes / 1e9,
        cpu_seconds: result.cpu_percent / 100.0 * wall_seconds,
        bytes: total,
        sender_cpu_seconds: 0.0,
        wall_seconds,
        incomplete_exposures: 0,
        disk,
    })
}

/// Frame-to-durable latencies (seconds, sorted) at the LATISS readout pace.
fn ingest_latency(
    dir: &Path,
    backend: Backend,
    set: FrameSet,
    exposures: u32,
    gap: Duration,
) -> Result<(Vec<f64>, u64, FrameSet), BoxError> {
    let laps = u64::from(exposures);
    let frames = laps * set.frames.len() as u64;
    let ring = create_ring(dir, laps * set.stored_bytes_per_lap() + (64 << 20))?;
    let mut reader = ring.reader("drain")?;
    settle();
    let ingest = start_ingest(ring, dir, backend, None)?;
    let sent_at = Arc::new(Mutex::new(vec![None; frames as usize]));
    let follower = std::thread::spawn(move || -> Result<Vec<(u64, Instant)>, BoxError> {
        let mut seen = Vec::with_capacity(frames as usize);
        while (seen.len() as u64) < frames {
            if !reader.wait_for_data(Duration::from_secs(30)) {
                return Err(format!("no durable record for 30 s after {} frames", seen.len()).into());
            }
            while let Some(record) = reader.next_record()? {
                let visible = Instant::now();
                seen.push((header_of(record.payload)?.frame_sequence.get(), visible));
            }
        }
        Ok(seen)
    });
    let sender =
        spawn_sender(set, dir.join("frames.sock"), laps, Pace::Readout { gap }, Some(Arc::clone(&sent_at)));
    let waited = wait_durable(&ingest, frames, Duration::from_secs(600), &mut |_| {});
    let (_, set) = sender_result(sender)?;
    let seen = follower.join().map_err(|_| "follower panicked")??;
    let incomplete = waited?;
    ingest.shutdown()?.close()?;
    std::fs::remove_dir_all(dir.join("ring"))?;
    let sent_at = sent_at.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies = Vec::with_capacity(seen.len());
    for (sequence, visible) in seen {
        let sent = sent_at[(sequence - 1) as usize].ok_or("a record was visible before its send returned")?;
        latencies.push(visible.saturating_duration_since(sent).as_secs_f64());
    }
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, incomplete, set))
}

/// VmRSS at the stages of pushing `laps` exposures through a ring of `capacity` drained by a
/// reader committing its cursor.
struct RssRun {
    before_start_kib: u64,
    after_first_gb_kib: u64,
    end_kib: u64,
    bytes: u64,
    wall_seconds: f64,
    incomplete_exposures: u64,
}

fn ingest_rss(
    dir: &Path,
    backend: Backend,
    set: FrameSet,
    laps: u64,
    capacity: u64,
) -> Result<(RssRun, FrameSet), BoxError> {
    let frames = laps * set.frames.len() as u64;
    let ring = create_ring(dir, capacity)?;
    let mut reader = ring.reader("drain")?;
    settle();
    let before_start_kib = vm_rss_kib();
    let ingest = start_ingest(ring, dir, backend, None)?;
    let done = Arc::new(AtomicBool::new(false));
    let drain_done = Arc::clone(&done);
    let drain = std::thread::spawn(move || -> Result<u64, BoxError> {
        let (mut records, mut since_commit) = (0u64, 0u64);
        while !drain_done.load(Ordering::Acquire) || reader.wait_for_data(Duration::ZERO) {
            if !reader.wait_for_data(Duration::from_millis(50)) {
                continue;
            }
            while let Some(record) = reader.next_record()? {
                records += 1;
                since_commit += record.payload.len() as u64;
                if since_commit >= 256 << 20 {
                    reader.commit()?;
                    since_commit = 0;
                }
            }
        }
        reader.commit()?;
        Ok(records)
    });
    let started = Instant::now();
    let sender = spawn_sender(set, dir.join("frames.sock"), laps, Pace::Flat, None);
    let first_gb_frames = (1_000_000_000 / WHOLE_FRAME_BYTES).max(1);
    let mut after_first_gb_kib = 0;
    let waited = wait_durable(&ingest, frames, Duration::from_secs(1200), &mut |durable| {
        if after_first_gb_kib == 0 && durable >= first_gb_frames {
            after_first_gb_kib = vm_rss_kib();
        }
    });
    let end_kib = vm_rss_kib();
    let wall_seconds = started.elapsed().as_secs_f64();
    let (sent, set) = sender_result(sender)?;
    done.store(true, Ordering::Release);
    let drained = drain.join().map_err(|_| "drain panicked")??;
    let incomplete_exposures = waited?;
    ingest.shutdown()?.close()?;
    std::fs::remove_dir_all(dir.join("ring"))?;
    if drained != frames {
        return Err(format!("drained {drained} of {frames} records").into());
    }
    Ok((
        RssRun {
            before_start_kib,
            after_first_gb_kib,
            end_kib,
            bytes: sent.bytes,
            wall_seconds,
            incomplete_exposures,
        },
        set,
    ))
}

/// `--max-open-exposures`, set once at start.
static MAX_OPEN_EXPOSURES: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
/// `--zero-fill`: rings created with `zero_fill` and fio files written once before the timed run.
static ZERO_FILL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

const WHOLE_FRAME_BYTES: u64 = dma_ingest::config::WHOLE_SEGMENT_FRAME_BYTES as u64;

// ---------------------------------------------------------------------------------------------

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], percent: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn run(cli: &Cli) -> Result<ExitCode, BoxError> {
    if !fio_available() {
        eprintln!("ingest-bench: `fio` is not on PATH; install it (scripts/bench-ingest does)");
        return Ok(ExitCode::from(3));
    }
    dma_ingest::probe_io_uring().map_err(|reason| format!("io_uring is not usable here: {reason}"))?;
    let _ = MAX_OPEN_EXPOSURES.set(cli.max_open_exposures);
    let _ = ZERO_FILL.set(cli.zero_fill);
    let _ = DISK_STAT_PATH.set(DiskStat::path_for(&cli.dir));
    let dir = &cli.dir;
    std::fs::create_dir_all(dir)?;
    for leftover in ["ring", "fio-reference.dat", "naive.dat"] {
        if dir.join(leftover).exists() {
            return Err(format!(
                "{} already exists (interrupted run?); remove it first",
                dir.join(leftover).display()
            )
            .into());
        }
    }
    let mut set = FrameSet::latiss(1)?;
    let per_lap = set.bytes_per_lap();
    let laps = (cli.total / per_lap).max(1);
    let frame_bytes = set.frames[0].len() as u64;
    let record_bytes = stored_record_bytes(frame_bytes);
    let fio_total = laps * set.stored_bytes_per_lap();
    let invocation: Vec<String> = std::env::args().collect();
    println!("# ingest-bench  {}  kernel {}  {}", utc_now(), kernel_release(), filesystem_of(dir));
    println!("# command: {}", invocation.join(" "));
    println!("# load average at start: {}  ({} CPUs)", load_average(), std::thread::available_parallelism()?);
    let replay = match cli.input.as_str() {
        "socket" => None,
        "replay" => {
            let path = cli.replay_dir.join(format!("ingest-bench-replay-{}.dat", std::process::id()));
            let written = write_replay(&mut set, laps, &path)?;
            println!(
                "# replay file: {} ({:.2} GB, written before the rounds)",
                path.display(),
                written as f64 / 1e9
            );
            Some(path)
        }
        other => return Err(format!("--input {other}: expected socket or replay").into()),
    };
    let _ = REPLAY.set(replay.clone());
    let _remove_replay = RemoveOnDrop(replay.clone());
    println!(
        "# input:   LATISS, {} whole-segment frames of {frame_bytes} B per exposure (generated once \
         by hw-sim), {laps} exposures = {:.2} GB per throughput run, {}",
        set.frames.len(),
        (laps * per_lap) as f64 / 1e9,
        if replay.is_some() {
            "read from the replay file by the ingest's file endpoint (no sender); 'socket' = the file read and discarded"
        } else {
            "over a Unix socket"
        }
    );
    println!(
        "# fio:     {}",
        fio_args(&dir.join("fio-reference.dat"), record_bytes, fio_total, cli.fio_group, cli.fio_depth)
            .join(" ")
            .replace("--output-format=json", "")
    );
    println!(
        "# naive:   read() 1 MiB -> Vec -> File::write_all (page cache), fdatasync every {} B and at the end",
        cli.naive_sync
    );
    println!(
        "# GB = 10^9 B. Ingest GB/s count frame bytes received; 'disk GB/s' adds the ring's 4096 B header"
    );
    println!("# block per record (what fio's block size includes); the ratio to fio uses disk bytes.");
    println!();

    // Throughput: a, b, c, d (and the socket alone) in turn, the order reversed every other round.
    let contenders = ["io_uring", "portable", "fio", "naive", "socket"];
    let only = match &cli.only {
        Some(name) => {
            Some(contenders.iter().position(|c| c == name).ok_or_else(|| format!("--only {name}: unknown"))?)
        }
        None => None,
    };
    let mut results: Vec<Vec<Measured>> = (0..contenders.len()).map(|_| Vec::new()).collect();
    for round in 0..cli.rounds.max(1) {
        let mut order: Vec<usize> = (0..contenders.len()).filter(|c| only.is_none_or(|o| o == *c)).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for which in order {
            let measured = match which {
                0 | 1 => {
                    let backend = if which == 0 { Backend::IoUring } else { Backend::Portable };
                    let (measured, back) = ingest_throughput(dir, backend, set, laps)?;
                    set = back;
                    measured
                }
                2 => fio_throughput(dir, record_bytes, fio_total, cli.fio_group, cli.fio_depth)?,
                _ => {
                    let sync = (which == 3).then_some(cli.naive_sync);
                    let (measured, back) = naive_throughput(dir, set, laps, sync)?;
                    set = back;
                    measured
                }
            };
            println!(
                "round {round} {:<9} {:.3} GB/s  ({:.2} s, {:.2} CPU s, sender {:.2} CPU s, {} exposures \
                 declared incomplete)  load {}{}",
                contenders[which],
                measured.gbps,
                measured.wall_seconds,
                measured.cpu_seconds,
                measured.sender_cpu_seconds,
                measured.incomplete_exposures,
                load_average(),
                measured.disk
            );
            results[which].push(measured);
        }
    }
    if only.is_some() {
        let _ = std::fs::remove_file(dir.join("frames.sock"));
        return Ok(ExitCode::SUCCESS);
    }
    let summaries: Vec<Summary> = results.into_iter().map(|runs| Summary { runs }).collect();
    drop(set);

    // Latency at the LATISS pace, then RSS over a drained ring, per ingest path.
    let mut latency_set = FrameSet::latiss(LATENCY_FRAMES_PER_SEGMENT)?;
    let gap = Duration::from_secs_f64(cli.latency_gap);
    let mut latencies = Vec::new();
    for backend in [Backend::IoUring, Backend::Portable] {
        let (sorted, incomplete, back) =
            ingest_latency(dir, backend, latency_set, cli.latency_exposures, gap)?;
        latency_set = back;
        println!(
            "latency {backend:?}: {} frames, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {incomplete} \
             exposures declared incomplete  load {}",
            sorted.len(),
            percentile(&sorted, 50.0) * 1e3,
            percentile(&sorted, 99.0) * 1e3,
            sorted.last().copied().unwrap_or(f64::NAN) * 1e3,
            load_average()
        );
        latencies.push(sorted);
    }
    drop(latency_set);
    let mut set = FrameSet::latiss(1)?;
    let rss_laps = (cli.rss_total / per_lap).max(1);
    let mut rss_runs = Vec::new();
    for backend in [Backend::IoUring, Backend::Portable] {
        let (rss, back) = ingest_rss(dir, backend, set, rss_laps, cli.rss_ring)?;
        set = back;
        println!(
            "rss {backend:?}: {:.2} GB through a {:.1} GiB ring in {:.1} s ({:.2} GB/s with the drain): \
             VmRSS {:.1} MiB before start, {:.1} MiB after 1 GB, {:.1} MiB at the end; {} exposures \
             declared incomplete",
            rss.bytes as f64 / 1e9,
            cli.rss_ring as f64 / (1u64 << 30) as f64,
            rss.wall_seconds,
            rss.bytes as f64 / rss.wall_seconds / 1e9,
            rss.before_start_kib as f64 / 1024.0,
            rss.after_first_gb_kib as f64 / 1024.0,
            rss.end_kib as f64 / 1024.0,
            rss.incomplete_exposures
        );
        rss_runs.push(rss);
    }
    drop(set);
    let _ = std::fs::remove_file(dir.join("frames.sock"));

    // The table.
    let fio = &summaries[2];
    let naive = &summaries[3];
    println!();
    println!("medians of {} runs each (individual GB/s in order):", cli.rounds.max(1));
    for (name, summary) in contenders.iter().zip(&summaries) {
        println!("  {name:<9} {}", summary.list());
    }
    println!();
    println!(
        "| {:<9} | {:>7} | {:>9} | {:>6} | {:>9} | {:>12} | {:>14} | {:>14} | {:>17} |",
        "path",
        "GB/s",
        "disk GB/s",
        "/ fio",
        "CPU s/GB",
        "sender s/GB",
        "p50 / p99 ms",
        "RSS growth MiB",
        "(from start)"
    );
    println!(
        "|{:-<11}|{:->9}|{:->11}|{:->8}|{:->11}|{:->14}|{:->16}|{:->16}|{:->19}|",
        "", "", "", "", "", "", "", "", ""
    );
    for which in 0..contenders.len() {
        let summary = &summaries[which];
        let (latency, rss, rss_start) = if which < 2 {
            let sorted = &latencies[which];
            let rss = &rss_runs[which];
            (
                format!("{:.1} / {:.1}", percentile(sorted, 50.0) * 1e3, percentile(sorted, 99.0) * 1e3),
                format!("{:+.1}", (rss.end_kib as f64 - rss.after_first_gb_kib as f64) / 1024.0),
                format!("{:+.1}", (rss.end_kib as f64 - rss.before_start_kib as f64) / 1024.0),
            )
        } else {
            (String::new(), String::new(), String::new())
        };
        println!(
            "| {:<9} | {:>7.3} | {:>9.3} | {:>6.2} | {:>9.3} | {:>12} | {:>14} | {:>14} | {:>17} |",
            contenders[which],
            summary.gbps(),
            summary.stored_gbps(),
            summary.stored_gbps() / fio.stored_gbps(),
            summary.cpu_per_gb(),
            if which == 2 { "-".to_string() } else { format!("{:.3}", summary.sender_cpu_per_gb()) },
            latency,
            rss,
            rss_start
        );
    }
    println!("(fio's CPU is fio's own usr+sys figure; the naive loop's excludes kernel writeback threads)");
    println!();
    let uring = &summaries[0];
    let ratio = uring.stored_gbps() / fio.stored_gbps();
    let cpu_ratio = uring.cpu_per_gb() / naive.cpu_per_gb();
    let p99_ms = percentile(&latencies[0], 99.0) * 1e3;
    let growth_mib = (rss_runs[0].end_kib as f64 - rss_runs[0].after_first_gb_kib as f64) / 1024.0;
    println!("targets (io_uring path; not asserted):");
    println!(
        "  throughput >= {TARGET_FIO_RATIO}x fio:            {ratio:.2}x  {}",
        met(ratio >= TARGET_FIO_RATIO)
    );
    println!("  CPU/GB <= 0.5x naive loop's:        {cpu_ratio:.2}x  {}", met(cpu_ratio <= 0.5));
    println!(
        "  frame-to-durable p99 < {TARGET_P99_MS} ms:       {p99_ms:.1} ms  {}",
        met(p99_ms < TARGET_P99_MS)
    );
    println!(
        "  RSS growth < {TARGET_RSS_GROWTH_MIB} MiB over {:.0} GB:     {growth_mib:+.1} MiB \
         (after the first GB to the end)  {}",
        rss_runs[0].bytes as f64 / 1e9,
        met(growth_mib < TARGET_RSS_GROWTH_MIB)
    );
    println!("# load average at end: {}", load_average());
    Ok(ExitCode::SUCCESS)
}
