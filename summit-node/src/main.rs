//! `summit-node`: the daemon's command line.
//!
//! - `run --config FILE`: production (under systemd: READY, STATUS, WATCHDOG; SIGTERM stops it
//!   cleanly within `node.shutdown_timeout_s`).
//! - `sim`: the whole appliance against simulated hardware, embedded defaults, live progress.
//! - `console`, `status`: the operator console client (Unix socket).
//! - `ring inspect|verify`, `check-config`, `verify-base`: operator tools.
//!
//! Exit status: 0 success; 1 a check found problems (verify, verify-base, check-config) or the
//! console reported an error; 2 the command could not run (bad arguments, unreadable files).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use summit_node::config::{Config, LogFormatChoice};
use summit_node::console;
use summit_node::logging::{self, LogFormat};
use summit_node::node::{Node, NodeOptions};
use summit_node::notify::Notifier;
use summit_node::sim::{SimOptions, Simulation};
use summit_node::status::{NodeControl, NodeStatus};

/// Where `console` and `status` connect without `--socket` or `--config`.
const DEFAULT_SOCKET: &str = "/run/summit-node/console.sock";

#[derive(Parser)]
#[command(
    name = "summit-node",
    version,
    about = "The summit appliance: camera ingest into crash-safe rings, island mode, drain to the base",
    long_about = "The summit appliance daemon.\n\n\
        Try it on a laptop with `summit-node sim` (no configuration needed). In production it runs \
        as a systemd service: `summit-node run --config /etc/summit-node/summit-node.toml`.\n\
        Operators talk to a running node with `summit-node console` (or over its serial port)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (production): ingest, rings, link monitor, drain, console, CSC events.
    Run {
        /// The configuration file (see summit-node.example.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the whole appliance against simulated hardware: one LSSTCam raft and LATISS, a
    /// simulated fiber, a local base directory. Type `c` + Enter to cut the fiber, `r` + Enter
    /// to restore it, `q` + Enter to stop; any console command works too.
    Sim(SimArgs),
    /// The operator console of a running node: one command (`summit-node console buffer`) or
    /// interactive (no command).
    Console {
        /// The console socket.
        #[arg(long, value_name = "PATH", conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Take the socket from this configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A command to run (e.g. `buffer --json`); without one, an interactive session.
        command: Vec<String>,
    },
    /// The node's status (the console's `status`).
    Status {
        /// The console socket.
        #[arg(long, value_name = "PATH", conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Take the socket from this configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or verify a stream's ring (read-only; safe while the node runs).
    Ring {
        #[command(subcommand)]
        action: RingAction,
    },
    /// Check a configuration file: every error names the field, the value and what is expected.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Check the base against the drain's manifests: missing, extra and mismatched objects.
    VerifyBase {
        /// The configuration file (base, data directory).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Compare sizes only; do not read every object back for its CRC32.
        #[arg(long)]
        no_read_back: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RingAction {
    /// Capacity, fill, cursors, oldest undrained record.
    Inspect(RingArgs),
    /// Scan every retained record; list bad ones with their locations (exit 1 if any).
    Verify(RingArgs),
}

#[derive(clap::Args)]
struct RingArgs {
    /// The configuration file (the rings are under its data directory).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The stream (`LSSTCam` or `LATISS`); default: every stream.
    #[arg(long)]
    stream: Option<String>,
}

#[derive(clap::Args)]
struct SimArgs {
    /// Where everything goes (rings, base, sockets). An earlier simulation's directory is wiped.
    #[arg(long, value_name = "DIR", default_value = "summit-sim-data")]
    data_dir: PathBuf,
    /// LSSTCam rafts to simulate (comma-separated; `none` for LATISS only).
    #[arg(long, default_value = "R22", value_delimiter = ',')]
    rafts: Vec<String>,
    /// LSSTCam visits (30 s exposures every 40 s).
    #[arg(long, default_value_t = 10)]
    visits: u32,
    /// LATISS exposures (30 s every 40 s).
    #[arg(long, default_value_t = 10)]
    latiss_exposures: u32,
    /// Simulated seconds per wall second (10: a 40 s visit takes 4 s).
    #[arg(long, default_value_t = 10.0)]
    compression: f64,
    /// Seed of the sky, pointing and weather.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cut the fiber during this part of the night, as fractions of it (e.g. `0.33,0.67`).
    #[arg(long, value_name = "START,END", value_parser = cut_arg)]
    cut: Option<(f64, f64)>,
    /// Keep an earlier simulation's data instead of wiping it.
    #[arg(long)]
    keep_data: bool,
    /// Keep running after the night is drained (until `q` or Ctrl-C).
    #[arg(long)]
    keep_running: bool,
    /// Log level for the terminal (the console's `log` keeps info and above).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Sim(args) => sim(args),
        Command::Console { socket, config, command } => socket_path(socket, config).and_then(|socket| {
            let line = command.join(" ");
            console_client(&socket, (!line.is_empty()).then_some(line.as_str()))
        }),
        Command::Status { socket, config, json } => socket_path(socket, config)
            .and_then(|socket| console_client(&socket, Some(if json { "status --json" } else { "status" }))),
        Command::Ring { action } => ring(action),
        Command::CheckConfig { file } => check_config(&file),
        Command::VerifyBase { config, no_read_back, json } => verify_base(&config, !no_read_back, json),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("summit-node: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn socket_path(socket: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(socket) = socket {
        return Ok(socket);
    }
    if let Some(file) = config {
        return Ok(Config::load(&file).map_err(|error| error.to_string())?.console.socket);
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

fn console_client(socket: &Path, command: Option<&str>) -> Result<ExitCode, String> {
    let code = console::run_client(socket, command)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)))
}

fn load_config(file: &Path) -> Result<Config, String> {
    Config::load(file).map_err(|error| error.to_string())
}

fn check_config(file: &Path) -> Result<ExitCode, String> {
    if let Err(error) = std::fs::metadata(file) {
        return Err(format!("cannot read {}: {error}", file.display()));
    }
    match Config::load(file) {
        Ok(config) => {
            let streams = config.streams().map_err(|error| error.to_string())?;
            println!("{}: valid", file.display());
            println!("  node      {} (data in {})", config.node.name, config.node.data_dir.display());
            for stream in streams {
                println!(
                    "  stream    {}: {} detectors, ring {} GiB at {}, frames {}, metadata {}",
                    stream.instrument,
                    stream.focalplane.detector_count(),
                    stream.ring_capacity_bytes >> 30,
                    stream.ring_directory.display(),
                    stream.frames,
                    stream.metadata
                );
            }
            println!("  base      {}", config.base.url);
            println!("  link      probe {}", config.link.probe);
            println!(
                "  console   {} ({} serial port(s))",
                config.console.socket.display(),
                config.console.serial.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("summit-node: {error}");
            Ok(ExitCode::from(1))
        }
    }
}

fn ring(action: RingAction) -> Result<ExitCode, String> {
    let (args, verify) = match action {
        RingAction::Inspect(args) => (args, false),
        RingAction::Verify(args) => (args, true),
    };
    let config = load_config(&args.config)?;
    let streams = config.streams().map_err(|error| error.to_string())?;
    let selected: Vec<_> = streams
        .iter()
        .filter(|stream| {
            args.stream.as_ref().is_none_or(|name| name.eq_ignore_ascii_case(&stream.instrument))
        })
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = streams.iter().map(|stream| stream.instrument.as_str()).collect();
        return Err(format!("no stream {:?} in {} (streams: {names:?})", args.stream, args.config.display()));
    }
    let mut clean = true;
    for stream in selected {
        println!("== {} ==", stream.instrument);
        let ring = ringbuffer::open_read_only(&stream.ring_directory)
            .map_err(|error| format!("ring {}: {error}", stream.ring_directory.display()))?;
        if verify {
            let report = ring
                .verify()
                .map_err(|error| format!("verify {}: {error}", stream.ring_directory.display()))?;
            print!("{}", ringbuffer::report::verify_text(&ring, &report));
            clean &= report.is_clean();
        } else {
            print!("{}", ringbuffer::report::inspect_text(&ring));
        }
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn verify_base(file: &Path, read_back: bool, json: bool) -> Result<ExitCode, String> {
    let config = load_config(file)?;
    let report = summit_node::node::verify_base(&config, read_back)?;
    if json {
        println!("{}", report.to_json());
    } else {
        let manifests = config.manifest_directory().display().to_string();
        print!("{}", report.text(&config.base.url, &manifests));
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn log_format(choice: LogFormatChoice) -> LogFormat {
    match choice {
        LogFormatChoice::Human => LogFormat::Human,
        LogFormatChoice::Json => LogFormat::Json,
    }
}

/// Stop flags set by SIGTERM and SIGINT.
fn signal_flag() -> Result<Arc<AtomicBool>, String> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .map_err(|error| format!("cannot handle signal {signal}: {error}"))?;
    }
    Ok(flag)
}

/// A one-line status for systemd's STATUS= and the logs.
fn status_line(status: &NodeStatus) -> String {
    let backlog: u64 = status.drain.iter().map(|drain| drain.backlog_bytes).sum();
    let fills: Vec<String> =
        status.rings.iter().map(|ring| format!("{} {:.1}%", ring.stream, ring.fill_ratio * 100.0)).collect();
    format!(
        "{} | rings {} | link {} | backlog {:.2} GB",
        status.csc.state.name(),
        fills.join(", "),
        status.link.state,
        backlog as f64 / 1e9
    )
}

fn run(file: &Path) -> Result<ExitCode, String> {
    let config = load_config(file)?;
    let log = logging::init(log_format(config.logging.format), &config.logging.level)?;
    let stop = signal_flag()?;
    let notifier = Notifier::from_env().map_err(|error| format!("NOTIFY_SOCKET: {error}"))?;
    let events = summit_node::events::EventPublisher::start(&config.events.socket, &config.events.file)
        .map_err(|error| format!("events: {error}"))?;
    let events = Arc::new(events);
    // Warnings and errors also go to the observatory as logMessage events.
    log.forward_to_events(Arc::clone(&events), tracing::Level::WARN);
    let heartbeat = events
        .spawn_heartbeat(Duration::from_secs(1), Arc::clone(&stop))
        .map_err(|error| format!("cannot start the heartbeat: {error}"))?;
    let node = Node::new(NodeOptions {
        config: config.clone(),
        simulation: false,
        fiber: None,
        log: Some(log),
        events: Some(Arc::clone(&events)),
        clock: Arc::new(ringbuffer::SystemClock),
    })
    .inspect_err(|_| events.shutdown())?;
    let consoles = summit_node::node::serve_consoles(&config, &node, &stop).inspect_err(|_| {
        // Already acquiring: stop cleanly (everything durable, rings closed) before exiting.
        let _ = node.shutdown();
    })?;
    if let Err(error) = notifier.ready() {
        tracing::warn!(%error, "sd_notify READY failed");
    }
    let watchdog_every = notifier.watchdog_interval();
    let mut last_watchdog = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(60);
    node.run(&stop, &mut |node| {
        if let Some(interval) = watchdog_every {
            if last_watchdog.elapsed() >= interval {
                last_watchdog = Instant::now();
                if let Err(error) = notifier.watchdog() {
                    tracing::warn!(%error, "sd_notify WATCHDOG failed");
                }
            }
        }
        if last_status.elapsed() >= Duration::from_secs(5) {
            last_status = Instant::now();
            let _ = notifier.status(&status_line(&node.status()));
        }
    });
    tracing::info!(exit_control = node.exit_requested(), "stopping");
    let _ = notifier.stopping();
    let result = node.shutdown();
    stop.store(true, Ordering::SeqCst);
    for thread in consoles {
        let _ = thread.join();
    }
    let _ = heartbeat.join();
    // The last events (summaryState on the way out) are written, and the socket removed.
    events.shutdown();
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            tracing::error!(%error, "shutdown incomplete");
            Ok(ExitCode::from(1))
        }
    }
}

fn sim(args: SimArgs) -> Result<ExitCode, String> {
    let log = logging::init(LogFormat::Human, &args.log_level)?;
    let stop = signal_flag()?;
    let rafts =
        if args.rafts.iter().any(|raft| raft.eq_ignore_ascii_case("none")) { Vec::new() } else { args.rafts };
    let options = SimOptions {
        data_dir: args.data_dir,
        rafts,
        visits: args.visits,
        latiss_exposures: args.latiss_exposures,
        compression: args.compression,
        seed: args.seed,
        fiber_cut: args.cut,
        keep_data: args.keep_data,
        ..SimOptions::default()
    };
    println!(
        "summit-node sim: {} LSSTCam visit(s) on raft(s) {:?} and {} LATISS exposure(s), {}x faster than real time \
         (about {:.0} s of night), data in {}",
        if options.rafts.is_empty() { 0 } else { options.visits },
        options.rafts,
        options.latiss_exposures,
        options.compression,
        options.night_wall_seconds(),
        options.data_dir.display()
    );
    let simulation = Simulation::start(options, Some(log))?;
    println!(
        "console: `summit-node console --socket {}` in another terminal; here: c + Enter cuts the fiber, \
         r + Enter restores it, q + Enter stops, or type any console command (help)",
        simulation.config().console.socket.display()
    );
    let quit = Arc::new(AtomicBool::new(false));
    spawn_keyboard(Arc::clone(simulation.node()), Arc::clone(&quit));
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut finished = false;
    while !stop.load(Ordering::SeqCst) && !quit.load(Ordering::SeqCst) && !simulation.node().exit_requested()
    {
        std::thread::sleep(Duration::from_millis(200));
        let every = if tty { Duration::from_secs(1) } else { Duration::from_secs(5) };
        if last_line.elapsed() >= every {
            last_line = Instant::now();
            let line = progress_line(&simulation, started);
            if tty {
                print!("\r\x1b[2K{line}");
            } else {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
        }
        if !finished && simulation.all_drained() {
            finished = true;
            println!("\nnight complete: every exposure acquired and confirmed at the base");
            if !args.keep_running {
                break;
            }
        }
    }
    if tty {
        println!();
    }
    let config = simulation.config().clone();
    let cameras_done = simulation.cameras_done();
    let result = simulation.shutdown();
    result?;
    let report = summit_node::node::verify_base(&config, true)?;
    print!("{}", report.text(&config.base.url, &config.manifest_directory().display().to_string()));
    if !cameras_done {
        println!("stopped before the end of the night");
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn progress_line(simulation: &Simulation, started: Instant) -> String {
    let status = simulation.node().status();
    let backlog: u64 = status.drain.iter().map(|drain| drain.backlog_bytes).sum();
    let drained: u64 = status.drain.iter().map(|drain| drain.exposures_drained_total).sum();
    let files: u64 = status.drain.iter().map(|drain| drain.objects_confirmed_total).sum();
    let fills: Vec<String> =
        status.rings.iter().map(|ring| format!("{} {:.1}%", ring.stream, ring.fill_ratio * 100.0)).collect();
    format!(
        "[{:>6.1} s] {} | read out {}/{} | rings {} | link {} | backlog {:.2} GB | base {} files, {} exposures",
        started.elapsed().as_secs_f64(),
        status.csc.state.name(),
        simulation.exposures_read_out(),
        simulation.options().exposure_count(),
        fills.join(", "),
        status.link.state,
        backlog as f64 / 1e9,
        files,
        drained
    )
}

/// `START,END` of `--cut`: two fractions of the night (their range is checked with the other
/// simulation options).
fn cut_arg(text: &str) -> Result<(f64, f64), String> {
    let fraction = |part: &str| {
        part.trim()
            .parse::<f64>()
            .map_err(|_| format!("{part:?} is not a number (expected START,END, e.g. 0.33,0.67)"))
    };
    match text.split_once(',') {
        Some((start, end)) => Ok((fraction(start)?, fraction(end)?)),
        None => Err(format!("{text:?}: expected START,END, two fractions of the night, e.g. 0.33,0.67")),
    }
}

/// Reads the terminal: `c`/`r`/`q` shortcuts, anything else is a console command (operator).
fn spawn_keyboard(node: Arc<Node>, quit: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut session = console::Session::new(true);
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let reply = match line.trim() {
                "c" | "cut" => Some(node.fiber(true).unwrap_or_else(|error| error)),
                "r" | "restore" => Some(node.fiber(false).unwrap_or_else(|error| error)),
                "q" | "quit" => {
                    quit.store(true, Ordering::SeqCst);
                    break;
                }
                "" => None,
                command => Some(session.handle_line(command, node.as_ref()).text),
            };
            if let Some(reply) = reply {
                println!("\n{}", reply.trim_end());
            }
        }
    });
}
