//! `ring-bench`: measures the ring on real files, honestly, next to `fio` on the same filesystem.
//!
//! - `append`: the write path. Appends `--total` bytes of `--record`-sized payloads from one
//!   prepared, aligned buffer (zero-copy `pwritev`, `O_DIRECT`), group-committing (`fdatasync`)
//!   every `--group` records, then runs `fio` with the same block size, `O_DIRECT` and
//!   `fdatasync` cadence, at queue depth 1 (what our synchronous append path is) and 16 (what the
//!   device can do with more I/O in flight), and prints GB/s (10^9 bytes per second), the ratio,
//!   CPU seconds and peak RSS.
//! - `reopen`: recovery after SIGKILL. Creates a large ring, lets a `child-append` process fill
//!   `--fill` bytes, kills it with SIGKILL, then times [`Ring::open`] and reports its peak RSS.
//! - `child-append`: the crash victim, used by `reopen` and by `tests/sigkill.rs`. Appends
//!   records whose length and content derive from (seed, sequence), commits in small groups and
//!   prints every acknowledged (durable) sequence number on stdout, one line each, flushed.
//!
//! Run the benchmarks with the release profile, e.g.
//! `cargo run --release -p ringbuffer --bin ring-bench -- append --dir /work/bench-tmp --total 4GiB`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::{Parser, Subcommand};
use ringbuffer::bench::{
    cpu_seconds, filesystem_of, fio_args, fio_available, kernel_release, reset_vm_hwm, run_fio, settle,
    utc_now, vm_hwm_kib, vm_rss_kib, WriteRun,
};
use ringbuffer::layout::{round_up_to_block, stored_record_bytes, CheckpointSlot, BLOCK_BYTES};
use ringbuffer::sim::SplitMix64;
use ringbuffer::{
    parse_size_bytes, AlignedBuf, BatchRecord, CreateOptions, Error, RecordKind, Ring, RingOptions,
};

type BoxError = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(name = "ring-bench", about = "Benchmark the ring's write path and crash recovery against fio")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Append throughput of the ring, then fio (iodepth 1 and 16) on the same directory.
    Append {
        /// Scratch directory on the filesystem under test (the ring goes in DIR/ring).
        #[arg(long)]
        dir: PathBuf,
        /// Payload bytes to append.
        #[arg(long, default_value = "4GiB", value_parser = size_arg)]
        total: u64,
        /// Payload bytes per record (fio block size).
        #[arg(long, default_value = "1MiB", value_parser = size_arg)]
        record: u64,
        /// Records per group commit (fio --fdatasync); at most 64.
        #[arg(long, default_value_t = 16)]
        group: u64,
        /// Writes in flight for the batched runs (fio --iodepth); runs at depth 1 are always made.
        #[arg(long, default_value_t = 4)]
        depth: usize,
        /// Pairs of runs per configuration (alternating ring-first and fio-first); medians reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Recovery time and memory after a writer is SIGKILLed mid-stream.
    Reopen {
        /// Scratch directory (the ring goes in DIR/ring).
        #[arg(long)]
        dir: PathBuf,
        /// Ring capacity.
        #[arg(long, default_value = "16GiB", value_parser = size_arg)]
        capacity: u64,
        /// Acknowledged bytes (stored, headers included) after which the writer is killed.
        #[arg(long, default_value = "2GiB", value_parser = size_arg)]
        fill: u64,
        /// Largest payload of the child's records (lengths vary between half and all of it).
        #[arg(long, default_value = "1MiB", value_parser = size_arg)]
        record: u64,
        /// Records per group commit in the child.
        #[arg(long, default_value_t = 16)]
        group: u64,
        /// Skip the full `verify()` scan after reopening.
        #[arg(long)]
        no_verify: bool,
    },
    /// Append deterministic records and print each acknowledged sequence (crash victim).
    ChildAppend {
        /// The ring directory itself (opened; created only if it holds no ring, never reformatted).
        #[arg(long)]
        dir: PathBuf,
        /// Largest payload; record lengths vary with the sequence number up to this.
        #[arg(long, value_parser = size_arg)]
        record: u64,
        /// Stop (commit, close, exit 0) after appending this many records in this run.
        #[arg(long)]
        max_records: Option<u64>,
        /// Records per group commit.
        #[arg(long, default_value_t = 4)]
        group: u64,
        /// Seed of the record contents (must be the same for every run on one ring).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Capacity, used only when the ring has to be created.
        #[arg(long, default_value = "64MiB", value_parser = size_arg)]
        capacity: u64,
        /// Also act as the drain: when more than half the ring is retained, read (and check)
        /// records through the `drain` cursor down to a quarter, commit the cursor and print
        /// `drained <next-sequence>`. This lets the ring wrap around indefinitely.
        #[arg(long)]
        drain: bool,
    },
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size_bytes(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        BenchCommand::ChildAppend { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        BenchCommand::Append { dir, total, record, group, depth, rounds } => {
            bench_append(&dir, total, record, group, depth, rounds.max(1))
        }
        BenchCommand::Reopen { dir, capacity, fill, record, group, no_verify } => {
            bench_reopen(&dir, capacity, fill, record, group, !no_verify)
        }
        BenchCommand::ChildAppend { dir, record, max_records, group, seed, capacity, drain } => {
            child_append(&ChildArgs { dir, record, max_records, group, seed, capacity, drain })
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ring-bench: error: {error}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic records (tests/sigkill.rs has an independent copy of this generator: keep them
// identical).

/// Payload length of record `sequence`: usually between half and all of `max_length`, one in
/// eight small (1..=8192 bytes); mostly not a multiple of 4096, so padding is exercised.
fn record_length(seed: u64, sequence: u64, max_length: u64) -> u64 {
    let mix = SplitMix64::new(seed ^ sequence.wrapping_mul(0xD134_2543_DE82_EF95)).next_u64();
    if mix.is_multiple_of(8) {
        1 + (mix >> 8) % max_length.min(8192)
    } else {
        let half = max_length / 2;
        max_length - (mix >> 8) % (half + 1)
    }
}

/// Payload of record `sequence`: its sequence number (little endian), then a cheap word pattern.
fn fill_record(seed: u64, sequence: u64, payload: &mut [u8]) {
    let mut words = PatternWords::new(seed, sequence);
    for chunk in payload.chunks_mut(8) {
        let word = words.next_word();
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
}

/// Whether `payload` is exactly record `sequence` (length and contents).
fn record_matches(seed: u64, sequence: u64, max_length: u64, payload: &[u8]) -> bool {
    if payload.len() as u64 != record_length(seed, sequence, max_length) {
        return false;
    }
    let mut words = PatternWords::new(seed, sequence);
    payload.chunks(8).all(|chunk| chunk == &words.next_word().to_le_bytes()[..chunk.len()])
}

struct PatternWords {
    first: Option<u64>,
    state: u64,
}

impl PatternWords {
    fn new(seed: u64, sequence: u64) -> Self {
        Self { first: Some(sequence), state: SplitMix64::new(seed.wrapping_add(sequence)).next_u64() }
    }

    fn next_word(&mut self) -> u64 {
        if let Some(first) = self.first.take() {
            return first;
        }
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.state ^ (self.state >> 29)
    }
}

// ---------------------------------------------------------------------------------------------
// child-append

struct ChildArgs {
    dir: PathBuf,
    record: u64,
    max_records: Option<u64>,
    group: u64,
    seed: u64,
    capacity: u64,
    drain: bool,
}

fn child_append(args: &ChildArgs) -> Result<ExitCode, BoxError> {
    if args.group == 0 || args.record == 0 {
        return Err("--group and --record must be positive".into());
    }
    let mut ring = if args.dir.join(ringbuffer::storage::META_FILE_NAME).exists() {
        Ring::open(&args.dir, RingOptions::default())?
    } else {
        // Ring::create refuses (AlreadyExists) if any ring file is present: never reformats.
        let mut create = CreateOptions::new(args.capacity, 1);
        create.max_payload_bytes =
            create.max_payload_bytes.max(u32::try_from(args.record).map_err(|_| "--record too large")?);
        Ring::create(&args.dir, &create, RingOptions::default())?
    };
    if args.record > u64::from(ring.max_payload_bytes()) {
        return Err(format!(
            "--record {} exceeds the ring's maximum payload {}",
            args.record,
            ring.max_payload_bytes()
        )
        .into());
    }
    let capacity = ring.capacity_bytes();
    let mut drain = if args.drain { Some(ring.reader("drain")?) } else { None };
    let mut buffer = AlignedBuf::zeroed(usize::try_from(args.record)?);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut appended_records = 0u64;
    let mut pending = 0u64;
    let mut written_end = 0u64;
    loop {
        if args.max_records.is_some_and(|max| appended_records >= max) {
            break;
        }
        let sequence = ring.next_sequence();
        let length = usize::try_from(record_length(args.seed, sequence, args.record))?;
        fill_record(args.seed, sequence, &mut buffer.as_mut_slice()[..length]);
        let padded = usize::try_from(round_up_to_block(length as u64))?;
        let appended = match ring.append(RecordKind::Frame, 0, &buffer.as_slice()[..padded], length) {
            Ok(appended) => appended,
            Err(Error::WouldBlock { .. }) if drain.is_some() => {
                // Full before the half-way drain caught up (a record larger than a quarter of
                // the ring): make everything durable and drain it all.
                commit_and_report(&mut ring, &mut out)?;
                pending = 0;
                if let Some(reader) = drain.as_mut() {
                    drain_to(reader, written_end, 0, args, &mut out)?;
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if appended.sequence != sequence {
            return Err(format!(
                "append got sequence {}, next_sequence() said {sequence}",
                appended.sequence
            )
            .into());
        }
        written_end = appended.offset + stored_record_bytes(length as u64);
        appended_records += 1;
        pending += 1;
        if pending >= args.group {
            commit_and_report(&mut ring, &mut out)?;
            pending = 0;
            if let Some(reader) = drain.as_mut() {
                if written_end - reader.position().offset > capacity / 2 {
                    drain_to(reader, written_end, capacity / 4, args, &mut out)?;
                }
            }
        }
    }
    if pending > 0 {
        commit_and_report(&mut ring, &mut out)?;
    }
    drop(drain);
    ring.close()?;
    Ok(ExitCode::SUCCESS)
}

fn commit_and_report(ring: &mut Ring, out: &mut impl Write) -> Result<(), BoxError> {
    let acknowledged = ring.commit()?;
    writeln!(out, "{acknowledged}")?;
    out.flush()?;
    Ok(())
}

/// Reads (and checks) durable records through the drain cursor until at most `keep_bytes` stay
/// retained, then persists the cursor and prints `drained <next-sequence>`.
fn drain_to(
    reader: &mut ringbuffer::Reader,
    written_end: u64,
    keep_bytes: u64,
    args: &ChildArgs,
    out: &mut impl Write,
) -> Result<(), BoxError> {
    let mut last_end = None;
    while written_end.saturating_sub(reader.position().offset) > keep_bytes {
        let Some(record) = reader.next_record()? else {
            break;
        };
        let sequence = record.info.sequence;
        if !record_matches(args.seed, sequence, args.record, record.payload) {
            return Err(format!("drained record {sequence} does not match its generator").into());
        }
        last_end = Some(record.info.end);
    }
    if let Some(end) = last_end {
        reader.commit_at(end)?;
        writeln!(out, "drained {}", end.sequence)?;
        out.flush()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// append benchmark

/// Where the writes land: freshly `fallocate`d extents (the first lap of a new ring) or extents
/// already written once (every later lap; or a ring created with `--zero-fill`).
#[derive(Clone, Copy, PartialEq)]
enum Extents {
    Fresh,
    Written,
}

impl Extents {
    fn label(self) -> &'static str {
        match self {
            Extents::Fresh => "fresh fallocate",
            Extents::Written => "written before",
        }
    }
}

fn bench_append(
    dir: &Path,
    total: u64,
    record: u64,
    group: u64,
    depth: usize,
    rounds: usize,
) -> Result<ExitCode, BoxError> {
    if record == 0 || group == 0 || total < record {
        return Err("need --record > 0, --group > 0 and --total >= --record".into());
    }
    if group > ringbuffer::MAX_BATCH_RECORDS as u64 || depth == 0 || depth > ringbuffer::MAX_IO_DEPTH {
        return Err(format!(
            "need --group <= {} and 1 <= --depth <= {}",
            ringbuffer::MAX_BATCH_RECORDS,
            ringbuffer::MAX_IO_DEPTH
        )
        .into());
    }
    if !fio_available() {
        eprintln!();
        eprintln!("################################################################");
        eprintln!("## ERROR: `fio` is not installed or not on PATH.              ##");
        eprintln!("## The benchmark compares against fio; install it first:      ##");
        eprintln!("##     apt-get install -y fio   (or run scripts/bench-ring)   ##");
        eprintln!("################################################################");
        return Ok(ExitCode::from(3));
    }
    std::fs::create_dir_all(dir)?;
    let ring_dir = dir.join("ring");
    let fio_file = dir.join("fio-reference.dat");
    for leftover in [&ring_dir, &fio_file] {
        if leftover.exists() {
            return Err(format!(
                "{} already exists (left over from an interrupted run?); remove it first",
                leftover.display()
            )
            .into());
        }
    }
    let records = total / record;
    let payload_bytes = records * record;
    let stored_bytes = records * stored_record_bytes(record);

    let invocation: Vec<String> = std::env::args().collect();
    println!("# ring-bench append  {}  kernel {}  {}", utc_now(), kernel_release(), filesystem_of(dir));
    println!("# command:  {}", invocation.join(" "));
    println!(
        "# ring:     {records} records x {record} B payload (+{BLOCK_BYTES} B header block each), \
         group commit (fdatasync) every {group} records, O_DIRECT pwritev, queue depth 1 (append) \
         or {depth} (append_batch)"
    );
    println!(
        "# fio:      {}",
        fio_args(&fio_file, record, payload_bytes, group, depth as u32)
            .join(" ")
            .replace("--output-format=json", "")
    );
    println!("# Each ring run is compared with fio on the same directory, same block size, same fdatasync");
    println!("# interval, same queue depth, same extent state (fresh fallocate, or written before).");
    println!("# GB = 10^9 bytes; throughput counts payload bytes only");
    println!();

    let mut rows = Vec::new();
    for extents in [Extents::Fresh, Extents::Written] {
        let depths: &[usize] = if depth == 1 { &[1] } else { &[1, depth] };
        for &queue_depth in depths {
            // Two runs each, in the order ring, fio, fio, ring, each after a settle pause: on a
            // virtual disk the host writes back the previous run's data while the next one runs,
            // so whoever always ran second would be penalised.
            let mut ring_runs = Vec::new();
            let mut fio_runs = Vec::new();
            for round in 0..rounds {
                let ring_first = round % 2 == 0;
                for ring_turn in [ring_first, !ring_first] {
                    if ring_turn {
                        ring_runs.push(ring_write_run(
                            &ring_dir,
                            extents,
                            records,
                            record,
                            group,
                            queue_depth,
                        )?);
                    } else {
                        fio_runs.push(fio_write_run(
                            &fio_file,
                            extents,
                            record,
                            payload_bytes,
                            group,
                            queue_depth,
                        )?);
                    }
                }
            }
            let ring = WriteRun::median(&mut ring_runs);
            let fio = WriteRun::median(&mut fio_runs);
            println!(
                "{:<16} qd {:>2}: ring {} GB/s   fio {} GB/s   ratio of medians {:.2}",
                extents.label(),
                queue_depth,
                ring_runs.iter().map(|r| format!("{:.3}", r.payload_gbps)).collect::<Vec<_>>().join(" "),
                fio_runs.iter().map(|r| format!("{:.3}", r.payload_gbps)).collect::<Vec<_>>().join(" "),
                ring.payload_gbps / fio.payload_gbps
            );
            rows.push((extents, queue_depth, ring, fio));
        }
    }
    let peak_rss_kib = vm_hwm_kib();
    println!();
    println!("medians of {rounds} runs each:");
    println!("| extents          | qd | ring GB/s | fio GB/s | ring / fio | ring CPU s/GB |");
    println!("|------------------|----|-----------|----------|------------|---------------|");
    for (extents, queue_depth, ring, fio) in &rows {
        println!(
            "| {:<16} | {:>2} | {:>9.3} | {:>8.3} | {:>10.2} | {:>13.3} |",
            extents.label(),
            queue_depth,
            ring.payload_gbps,
            fio.payload_gbps,
            ring.payload_gbps / fio.payload_gbps,
            ring.cpu_seconds / (payload_bytes as f64 / 1e9)
        );
    }
    println!(
        "stored {:.2} GB per run incl. header blocks; peak RSS of this process (VmHWM) {:.1} MiB",
        stored_bytes as f64 / 1e9,
        peak_rss_kib as f64 / 1024.0
    );
    println!(
        "note: a new ring's first lap writes fresh fallocated extents (ext4 converts them at \
         fdatasync); later laps, or a ring created with `summit-ring create --zero-fill`, write \
         extents written before."
    );
    Ok(ExitCode::SUCCESS)
}

fn ring_write_run(
    ring_dir: &Path,
    extents: Extents,
    records: u64,
    record: u64,
    group: u64,
    queue_depth: usize,
) -> Result<WriteRun, BoxError> {
    let record_usize = usize::try_from(record)?;
    let capacity = round_up_to_block(records * stored_record_bytes(record) + (64 << 20));
    let mut create = CreateOptions::new(capacity, 1);
    create.max_payload_bytes = create.max_payload_bytes.max(u32::try_from(record)?);
    create.zero_fill = extents == Extents::Written;
    let mut ring = Ring::create(ring_dir, &create, RingOptions::default())?;
    settle();
    let mut buffer = AlignedBuf::zeroed(record_usize);
    fill_record(0x5EED, 1, &mut buffer.as_mut_slice()[..record_usize]);
    let batch_record = BatchRecord {
        kind: RecordKind::Frame,
        flags: 0,
        padded: buffer.as_slice(),
        payload_length: record_usize,
    };
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut appended = 0u64;
    while appended < records {
        let count = group.min(records - appended);
        if queue_depth == 1 {
            for _ in 0..count {
                ring.append(RecordKind::Frame, 0, buffer.as_slice(), record_usize)?;
            }
        } else {
            let batch = vec![batch_record; usize::try_from(count)?];
            ring.append_batch(&batch, queue_depth)?;
        }
        ring.commit()?;
        appended += count;
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds() - cpu_before;
    let last = ring.durable_sequence();
    ring.close()?;
    std::fs::remove_dir_all(ring_dir)?;
    if last != records {
        return Err(format!("committed {last} records, expected {records}").into());
    }
    Ok(WriteRun { payload_gbps: (records * record) as f64 / wall_seconds / 1e9, wall_seconds, cpu_seconds })
}

fn fio_write_run(
    fio_file: &Path,
    extents: Extents,
    record: u64,
    payload_bytes: u64,
    group: u64,
    queue_depth: usize,
) -> Result<WriteRun, BoxError> {
    let args = fio_args(fio_file, record, payload_bytes, group, queue_depth as u32);
    if extents == Extents::Written {
        // An unmeasured first pass writes every extent once, as zero-fill does for the ring.
        run_fio(&args)?;
        settle();
    }
    let result = run_fio(&args)?;
    std::fs::remove_file(fio_file)?;
    Ok(WriteRun {
        payload_gbps: result.bw_bytes / 1e9,
        wall_seconds: result.runtime_ms / 1e3,
        cpu_seconds: result.cpu_percent / 100.0 * result.runtime_ms / 1e3,
    })
}

// ---------------------------------------------------------------------------------------------
// reopen benchmark

fn bench_reopen(
    dir: &Path,
    capacity: u64,
    fill: u64,
    record: u64,
    group: u64,
    verify: bool,
) -> Result<ExitCode, BoxError> {
    const SEED: u64 = 0xB0B;
    std::fs::create_dir_all(dir)?;
    let ring_dir = dir.join("ring");
    if ring_dir.exists() {
        return Err(format!(
            "{} already exists (left over from an interrupted run?); remove it first",
            ring_dir.display()
        )
        .into());
    }
    let invocation: Vec<String> = std::env::args().collect();
    let executable = std::env::current_exe()?;
    let child_args: Vec<String> = vec![
        "child-append".into(),
        "--dir".into(),
        ring_dir.display().to_string(),
        "--record".into(),
        record.to_string(),
        "--group".into(),
        group.to_string(),
        "--seed".into(),
        SEED.to_string(),
    ];
    println!("# ring-bench reopen  {}  kernel {}  {}", utc_now(), kernel_release(), filesystem_of(dir));
    println!("# command: {}", invocation.join(" "));
    println!(
        "# child:   {} {}   (killed with SIGKILL once {fill} B acknowledged)",
        executable.display(),
        child_args.join(" ")
    );
    let created = Instant::now();
    let ring = Ring::create(&ring_dir, &CreateOptions::new(capacity, 1), RingOptions::default())?;
    let checkpoint_interval = RingOptions::default().checkpoint_interval_bytes;
    drop(ring);
    let create_seconds = created.elapsed().as_secs_f64();

    let mut child =
        Command::new(&executable).args(&child_args).stdout(Stdio::piped()).stdin(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut acknowledged = 0u64;
    let mut acknowledged_bytes = 0u64;
    let filling = Instant::now();
    while acknowledged_bytes < fill {
        let Some(line) = lines.next() else {
            let status = child.wait()?;
            return Err(format!("child exited ({status}) before filling {fill} B").into());
        };
        let sequence: u64 = line?.trim().parse()?;
        for acked in acknowledged + 1..=sequence {
            acknowledged_bytes += stored_record_bytes(record_length(SEED, acked, record));
        }
        acknowledged = acknowledged.max(sequence);
    }
    child.kill()?; // SIGKILL
    let status = child.wait()?;
    // Acknowledgements printed before death still count.
    for line in lines {
        if let Ok(sequence) = line?.trim().parse::<u64>() {
            for acked in acknowledged + 1..=sequence {
                acknowledged_bytes += stored_record_bytes(record_length(SEED, acked, record));
            }
            acknowledged = acknowledged.max(sequence);
        }
    }
    let fill_seconds = filling.elapsed().as_secs_f64();
    println!(
        "child:   killed ({status}) after {fill_seconds:.2} s; last acknowledged sequence \
         {acknowledged} ({:.3} GiB stored)",
        acknowledged_bytes as f64 / (1u64 << 30) as f64
    );

    // Where recovery starts: the newest valid checkpoint (read exactly as `open` will).
    let meta = std::fs::read(ring_dir.join(ringbuffer::storage::META_FILE_NAME))?;
    let checkpoint = meta
        .chunks(4096)
        .filter_map(|block| CheckpointSlot::decode(block).ok())
        .max_by_key(|slot| slot.checkpoint_sequence.get())
        .ok_or("no valid checkpoint after the kill")?;

    let hwm_reset = reset_vm_hwm();
    let rss_before_kib = vm_rss_kib();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let ring = Ring::open(&ring_dir, RingOptions::default())?;
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let open_cpu = cpu_seconds() - cpu_before;
    let open_hwm_kib = vm_hwm_kib();
    let durable = ring.durable_sequence();
    let checkpoint_head_sequence = checkpoint.head_sequence.get();
    let scanned_records = (durable + 1).saturating_sub(checkpoint_head_sequence);
    let scanned_bytes: u64 = (checkpoint_head_sequence..=durable)
        .map(|sequence| stored_record_bytes(record_length(SEED, sequence, record)))
        .sum();
    println!(
        "reopen:  Ring::open {open_ms:.1} ms ({open_cpu:.2} s CPU); recovered durable sequence \
         {durable} (acknowledged {acknowledged}: {}); scanned {scanned_records} records / \
         {:.1} MiB written after the newest checkpoint (interval {} MiB)",
        if durable >= acknowledged { "none lost" } else { "ACKNOWLEDGED RECORDS LOST" },
        scanned_bytes as f64 / (1u64 << 20) as f64,
        checkpoint_interval >> 20
    );
    println!(
        "memory:  peak RSS during open {:.1} MiB{} (RSS before open {:.1} MiB)",
        open_hwm_kib as f64 / 1024.0,
        if hwm_reset {
            " (VmHWM reset just before open)"
        } else {
            " (VmHWM of the whole process: reset not permitted)"
        },
        rss_before_kib as f64 / 1024.0
    );
    let mut verify_summary = String::from("skipped");
    let mut verify_clean = true;
    if verify {
        let started = Instant::now();
        let report = ring.verify()?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "verify:  {} good records, {} bad regions, {seconds:.2} s ({:.2} GB/s of payload read \
             and checked)",
            report.good_records,
            report.bad_region_count,
            report.good_payload_bytes as f64 / seconds / 1e9
        );
        verify_clean = report.is_clean() && report.good_records == durable;
        verify_summary =
            format!("{} / {} bad", if verify_clean { "clean" } else { "NOT CLEAN" }, report.bad_region_count);
        if !verify_clean {
            println!("verify:  NOT CLEAN: {report:?}");
        }
    }
    drop(ring);
    std::fs::remove_dir_all(&ring_dir)?;

    println!();
    println!("| {:<40} | {:>22} | {:>10} |", "measurement", "value", "target");
    println!("|{:-<42}|{:->24}|{:->12}|", "", "", "");
    println!(
        "| {:<40} | {:>22} | {:>10} |",
        "ring capacity / create+fallocate",
        format!("{} GiB / {create_seconds:.2} s", capacity >> 30),
        ""
    );
    println!(
        "| {:<40} | {:>22} | {:>10} |",
        "acknowledged before SIGKILL",
        format!("{:.3} GiB", acknowledged_bytes as f64 / (1u64 << 30) as f64),
        ""
    );
    println!(
        "| {:<40} | {:>22} | {:>10} |",
        "recovery scan after newest checkpoint",
        format!("{scanned_records} rec / {:.0} MiB", scanned_bytes as f64 / (1u64 << 20) as f64),
        ""
    );
    println!(
        "| {:<40} | {:>22} | {:>10} |",
        "Ring::open (recovery) time",
        format!("{open_ms:.1} ms"),
        "< 1000 ms"
    );
    println!(
        "| {:<40} | {:>22} | {:>10} |",
        "peak RSS during reopen",
        format!("{:.1} MiB", open_hwm_kib as f64 / 1024.0),
        "< 64 MiB"
    );
    println!(
        "| {:<40} | {:>22} | {:>10} |",
        "acknowledged records lost",
        acknowledged.saturating_sub(durable),
        "0"
    );
    println!("| {:<40} | {:>22} | {:>10} |", "verify() after reopen", verify_summary, "clean");
    let pass = open_ms < 1000.0 && open_hwm_kib < 64 * 1024 && durable >= acknowledged && verify_clean;
    println!("result: {}", if pass { "PASS" } else { "FAIL" });
    Ok(if pass { ExitCode::SUCCESS } else { ExitCode::from(4) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_generator() {
        for sequence in 1..200 {
            let length = record_length(7, sequence, 100_000);
            assert!((1..=100_000).contains(&length));
            let mut payload = vec![0u8; usize::try_from(length).unwrap()];
            fill_record(7, sequence, &mut payload);
            assert!(record_matches(7, sequence, 100_000, &payload));
            if payload.len() > 9 {
                payload[9] ^= 1;
                assert!(!record_matches(7, sequence, 100_000, &payload));
            }
        }
    }
}
