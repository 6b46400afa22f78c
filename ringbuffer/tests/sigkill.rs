//! Real-process crash test: a writer process (`ring-bench child-append`) is killed with SIGKILL
//! at random moments, on real files with `O_DIRECT` (the default options), and after every kill
//! the ring is reopened here and must hold every acknowledged record, intact.
//!
//! Design:
//! - One 16 MiB ring lives in a temporary directory for the whole test; each cycle spawns a new
//!   child that *reopens* it and continues appending (records of up to 128 KiB whose length and
//!   content derive from the sequence number), group-committing and printing each acknowledged
//!   sequence on stdout.
//! - The ring has to wrap around many times, so the child is also the drain (`--drain`): when
//!   more than half the ring is retained it reads the oldest records through the `drain` cursor
//!   (checking their contents), commits the cursor and prints `drained <next-sequence>`. The
//!   drain commits are checkpoints, so kills also land in the middle of checkpoint writes and of
//!   the recovery that the next child performs when it opens the ring.
//! - The moment of the kill comes from a seeded SplitMix64: after a random number of
//!   acknowledgements plus a random delay, or (one cycle in eight) a random delay right after
//!   spawning, which kills the child during its own open/recovery. The seed is printed; rerun a
//!   failure with `RING_TEST_SEED=<seed>`.
//! - After each kill this process opens the ring for writing (as the next writer would) and
//!   checks: the durable head is at or past the last acknowledged sequence; `verify()` is clean;
//!   the drain cursor did not move back past a reported drain commit; and reading from the drain
//!   cursor to the head yields every sequence, gap-free, with exactly the generated content.
//!   Everything acknowledged and not yet reported drained is therefore proved present.
//! - A last cycle lets a child finish cleanly (`--max-records`) and checks the same.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringbuffer::sim::SplitMix64;
use ringbuffer::{CreateOptions, Ring, RingOptions};

const CAPACITY_BYTES: u64 = 16 << 20;
const MAX_RECORD_BYTES: u64 = 128 << 10;
const KILL_CYCLES: u32 = 60;
const DEFAULT_SEED: u64 = 0x5EED_0FC0_FFEE;

// ---------------------------------------------------------------------------------------------
// The record generator: an independent copy of the one in `src/bin/ring-bench.rs` (the test
// checks the child's output against its own copy, not the child's word). Keep them identical.

fn record_length(seed: u64, sequence: u64, max_length: u64) -> u64 {
    let mix = SplitMix64::new(seed ^ sequence.wrapping_mul(0xD134_2543_DE82_EF95)).next_u64();
    if mix.is_multiple_of(8) {
        1 + (mix >> 8) % max_length.min(8192)
    } else {
        let half = max_length / 2;
        max_length - (mix >> 8) % (half + 1)
    }
}

fn record_matches(seed: u64, sequence: u64, max_length: u64, payload: &[u8]) -> bool {
    if payload.len() as u64 != record_length(seed, sequence, max_length) {
        return false;
    }
    let mut state = SplitMix64::new(seed.wrapping_add(sequence)).next_u64();
    let mut first = Some(sequence);
    payload.chunks(8).all(|chunk| {
        let word = first.take().unwrap_or_else(|| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            state ^ (state >> 29)
        });
        chunk == &word.to_le_bytes()[..chunk.len()]
    })
}

// ---------------------------------------------------------------------------------------------
// The child process.

enum Line {
    Acknowledged(u64),
    Drained(u64),
}

/// A running `child-append`; killed (and reaped) on drop, so a failing assertion never leaves
/// an orphan writing into the temporary directory.
struct Victim {
    child: Child,
    lines: mpsc::Receiver<Line>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr_thread: Option<JoinHandle<String>>,
}

impl Victim {
    fn spawn(ring_dir: &Path, content_seed: u64, group: u64, max_records: Option<u64>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ring-bench"));
        command
            .arg("child-append")
            .arg("--dir")
            .arg(ring_dir)
            .args(["--record", &MAX_RECORD_BYTES.to_string()])
            .args(["--group", &group.to_string()])
            .args(["--seed", &content_seed.to_string()])
            .arg("--drain")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(max) = max_records {
            command.args(["--max-records", &max.to_string()]);
        }
        let mut child = command.spawn().expect("spawn ring-bench child-append");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let (sender, lines) = mpsc::channel();
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parsed = match line.strip_prefix("drained ") {
                    Some(sequence) => Line::Drained(sequence.parse().expect("drained line")),
                    None => Line::Acknowledged(
                        line.parse().unwrap_or_else(|_| panic!("unexpected child output {line:?}")),
                    ),
                };
                if sender.send(parsed).is_err() {
                    break;
                }
            }
        });
        let stderr_thread = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self { child, lines, stdout_thread: Some(stdout_thread), stderr_thread: Some(stderr_thread) }
    }

    /// Joins the output threads (the child must be dead) and returns its stderr.
    fn finish_output(&mut self) -> String {
        if let Some(thread) = self.stdout_thread.take() {
            thread.join().expect("stdout reader");
        }
        self.stderr_thread.take().map(|thread| thread.join().expect("stderr reader")).unwrap_or_default()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test knows from the children's stdout, over all cycles.
#[derive(Debug, Default)]
struct Reported {
    /// Highest acknowledged (durable) sequence.
    acknowledged: u64,
    /// Highest "drained <n>": every record before `n` was consumed and may be reclaimed.
    drained: u64,
}

impl Reported {
    fn take(&mut self, line: Line) {
        match line {
            Line::Acknowledged(sequence) => {
                assert!(
                    sequence >= self.acknowledged,
                    "acknowledgements went backwards: {sequence} after {}",
                    self.acknowledged
                );
                self.acknowledged = sequence;
            }
            Line::Drained(sequence) => {
                assert!(sequence >= self.drained, "drain went backwards");
                self.drained = sequence;
            }
        }
    }
}

/// Reopens the ring as the next writer would and checks it against what was reported.
/// Returns (durable sequence, logical offset of the durable head).
fn check_ring(ring_dir: &Path, content_seed: u64, reported: &Reported, context: &str) -> (u64, u64) {
    let ring = Ring::open(ring_dir, RingOptions::default())
        .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    let durable = ring.durable_sequence();
    assert!(
        durable >= reported.acknowledged,
        "{context}: ACKNOWLEDGED RECORDS LOST: durable sequence {durable} < acknowledged {}",
        reported.acknowledged
    );
    let report = ring.verify().expect("verify");
    assert!(report.is_clean(), "{context}: verify not clean: {report:?}");

    let mut reader = ring.reader("drain").expect("drain reader");
    let start = reader.position();
    assert!(
        start.sequence >= reported.drained,
        "{context}: drain cursor at {} is behind a reported drain commit ({})",
        start.sequence,
        reported.drained
    );
    assert!(
        start.sequence <= durable + 1,
        "{context}: drain cursor {} past the head {durable}",
        start.sequence
    );
    let mut expected = start.sequence;
    let mut head_offset = start.offset;
    while let Some(record) = reader.next_record().expect("read") {
        assert_eq!(record.info.sequence, expected, "{context}: gap or reordering in the retained records");
        assert!(
            record_matches(content_seed, expected, MAX_RECORD_BYTES, record.payload),
            "{context}: record {expected} is not what was appended (length {})",
            record.payload.len()
        );
        head_offset = record.info.end.offset;
        expected += 1;
    }
    assert_eq!(expected, durable + 1, "{context}: reader stopped before the durable head");
    let retained = durable + 1 - start.sequence;
    assert_eq!(report.good_records, retained, "{context}: verify count");
    if retained > 0 {
        assert_eq!(report.sequence_range, Some((start.sequence, durable)));
    }
    (durable, head_offset)
}

fn test_seed() -> u64 {
    match std::env::var("RING_TEST_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("RING_TEST_SEED={text:?} is not a number"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

#[test]
fn acknowledged_records_survive_sigkill_of_the_writer_process() {
    let seed = test_seed();
    // Printed both ways: stderr shows with `cargo test`'s captured output on failure and live
    // with --nocapture.
    println!("sigkill test seed: {seed} (reproduce with RING_TEST_SEED={seed})");
    eprintln!("sigkill test seed: {seed} (reproduce with RING_TEST_SEED={seed})");
    let started = Instant::now();
    let mut rng = SplitMix64::new(seed);
    let content_seed = rng.next_u64();
    let directory = tempfile::tempdir().expect("tempdir");
    let ring_dir = directory.path().join("ring");
    drop(
        Ring::create(&ring_dir, &CreateOptions::new(CAPACITY_BYTES, 9), RingOptions::default())
            .expect("create ring"),
    );

    let mut reported = Reported::default();
    let mut previous_durable = 0u64;
    let mut head_offset = 0u64;
    let mut startup_kills = 0u32;
    for cycle in 0..KILL_CYCLES {
        let group = 1 + rng.below(8);
        let (wait_acks, delay_us) =
            if rng.below(8) == 0 { (0, rng.below(30_000)) } else { (1 + rng.below(60), rng.below(3_000)) };
        let context =
            format!("seed {seed} cycle {cycle} (group {group}, kill after {wait_acks} acks + {delay_us} us)");
        let acknowledged_before = reported.acknowledged;
        let mut victim = Victim::spawn(&ring_dir, content_seed, group, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < wait_acks {
            let timeout = deadline.saturating_duration_since(Instant::now());
            match victim.lines.recv_timeout(timeout) {
                Ok(line) => {
                    if matches!(line, Line::Acknowledged(_)) {
                        seen += 1;
                    }
                    reported.take(line);
                }
                Err(error) => {
                    let _ = victim.child.kill();
                    let status = victim.child.wait().expect("wait");
                    let stderr = victim.finish_output();
                    panic!("{context}: no acknowledgement ({error:?}); child {status}; stderr:\n{stderr}");
                }
            }
        }
        std::thread::sleep(Duration::from_micros(delay_us));
        victim.child.kill().expect("SIGKILL the child");
        let status = victim.child.wait().expect("wait");
        let stderr = victim.finish_output();
        // Everything the child printed before it died was acknowledged.
        while let Ok(line) = victim.lines.try_recv() {
            reported.take(line);
        }
        assert_eq!(
            status.signal(),
            Some(9),
            "{context}: child ended on its own ({status}) instead of by SIGKILL; stderr:\n{stderr}"
        );
        if reported.acknowledged == acknowledged_before {
            startup_kills += 1;
        }
        drop(victim);
        let (durable, offset) = check_ring(&ring_dir, content_seed, &reported, &context);
        assert!(
            durable >= previous_durable,
            "{context}: durable head went back from {previous_durable} to {durable}"
        );
        println!(
            "{context}: acknowledged {} drained<{} durable {durable} lap {}",
            reported.acknowledged,
            reported.drained,
            offset / CAPACITY_BYTES
        );
        previous_durable = durable;
        head_offset = offset;
    }

    // A clean finish: the child appends a fixed number of records, commits, closes, exits 0.
    let mut victim = Victim::spawn(&ring_dir, content_seed, 3, Some(25));
    let status = victim.child.wait().expect("wait");
    let stderr = victim.finish_output();
    while let Ok(line) = victim.lines.try_recv() {
        reported.take(line);
    }
    assert!(status.success(), "clean child failed ({status}):\n{stderr}");
    drop(victim);
    assert_eq!(reported.acknowledged, previous_durable + 25);
    let (durable, offset) = check_ring(&ring_dir, content_seed, &reported, "clean finish");
    assert_eq!(durable, reported.acknowledged);
    head_offset = head_offset.max(offset);

    let laps = head_offset / CAPACITY_BYTES;
    let summary = format!(
        "sigkill test seed {seed}: {KILL_CYCLES} SIGKILLs ({startup_kills} before the child's \
         first acknowledgement), {durable} records acknowledged, ring wrapped {laps} times, \
         {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    eprintln!("{summary}");
    assert!(laps >= 2, "the ring should have wrapped around at least twice");
}
