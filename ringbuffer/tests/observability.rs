//! What operators and the ingest rely on beyond correctness: the payload reaches storage without
//! a copy, cursors can start from one another, fill thresholds and time-to-full are reported,
//! rings live side by side, and the `summit-ring` tool reports corruption with its location.

use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use ringbuffer::sim::SimRing;
use ringbuffer::{
    AlignedBuf, CreateOptions, ManualClock, RecordKind, Ring, RingEventKind, RingFiles, RingOptions, Storage,
};

/// A storage wrapper that records the address of every buffer handed to a write.
#[derive(Debug)]
struct AddressRecorder {
    inner: Arc<dyn Storage>,
    addresses: Mutex<Vec<(usize, usize)>>,
}

impl Storage for AddressRecorder {
    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }
    fn write_all_at(&self, offset: u64, buffers: &[&[u8]]) -> io::Result<()> {
        self.addresses.lock().unwrap().extend(buffers.iter().map(|b| (b.as_ptr() as usize, b.len())));
        self.inner.write_all_at(offset, buffers)
    }
    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact_at(offset, buffer)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn location(&self) -> &Path {
        self.inner.location()
    }
}

fn manual_options(clock: Arc<ManualClock>) -> RingOptions {
    RingOptions { clock, ..RingOptions::default() }
}

#[test]
fn payload_reaches_storage_as_the_callers_own_buffer_without_a_copy() {
    let sim = SimRing::new(1 << 20);
    let recorder =
        Arc::new(AddressRecorder { inner: Arc::new(sim.data.clone()), addresses: Mutex::new(Vec::new()) });
    let files = RingFiles { meta: Arc::new(sim.meta.clone()), data: recorder.clone() };
    let mut create = CreateOptions::new(1 << 20, 1);
    create.ring_id = Some(1);
    let mut ring = Ring::create_on(files, &create, manual_options(Arc::new(ManualClock::new(0)))).unwrap();
    let mut buffer = AlignedBuf::zeroed(64 << 10);
    buffer.as_mut_slice().fill(0x5A);
    recorder.addresses.lock().unwrap().clear();
    ring.append(RecordKind::Frame, 0, buffer.as_slice(), 64 << 10).unwrap();
    let addresses = recorder.addresses.lock().unwrap().clone();
    // One header block of the ring's own, then the caller's payload buffer itself.
    assert_eq!(addresses.len(), 2, "{addresses:?}");
    assert_eq!(addresses[0].1, 4096);
    assert_eq!(addresses[1], (buffer.as_slice().as_ptr() as usize, 64 << 10));
}

#[test]
fn a_reader_can_start_from_another_cursors_position() {
    let sim = SimRing::new(1 << 20);
    let mut ring = Ring::create_on(
        sim.files(),
        &CreateOptions::new(1 << 20, 1),
        manual_options(Arc::new(ManualClock::new(0))),
    )
    .unwrap();
    for _ in 0..10 {
        ring.append_copy(RecordKind::Frame, 0, b"frame").unwrap();
    }
    ring.commit().unwrap();
    let mut drain = ring.reader("drain").unwrap();
    for _ in 0..4 {
        drain.next_record().unwrap().unwrap();
    }
    drain.commit().unwrap();
    // `archive` replays exactly what the drain has not yet confirmed.
    let mut archive = ring.reader_from("archive", "drain").unwrap();
    assert_eq!(archive.next_record().unwrap().unwrap().info.sequence, 5);
    let error = ring.reader_from("prompt", "nonesuch").unwrap_err().to_string();
    assert!(error.contains("nonesuch") && error.contains("drain"), "{error}");
    let error = ring.reader("drain").unwrap_err().to_string();
    assert!(error.contains("already has an open reader"), "{error}");
}

#[test]
fn fill_thresholds_time_to_full_and_oldest_undrained_age_are_reported() {
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let sim = SimRing::new(1 << 20);
    let mut ring =
        Ring::create_on(sim.files(), &CreateOptions::new(1 << 20, 1), manual_options(clock.clone())).unwrap();
    let buffer = AlignedBuf::zeroed(12 << 10);
    // 16 KiB per record, one record a second: 16 KiB/s.
    for _ in 0..52 {
        ring.append(RecordKind::Frame, 0, buffer.as_slice(), 12 << 10).unwrap();
        ring.commit().unwrap();
        clock.advance_ns(1_000_000_000);
    }
    let stats = ring.stats();
    assert_eq!(stats.used_bytes, (52 * 16) << 10);
    assert!((stats.fill_ratio - 52.0 * 16.0 / 1024.0).abs() < 1e-9);
    assert_eq!(stats.thresholds, vec![(0.80, true), (0.95, false)]);
    let rate = stats.append_rate_bytes_per_second.expect("rate known");
    assert!((rate - 16384.0).abs() < 1.0, "rate {rate}");
    let time_to_full = stats.time_to_full_seconds.expect("time to full known");
    assert!((time_to_full - 12.0).abs() < 0.01, "time to full {time_to_full}");
    let oldest = stats.oldest_undrained.expect("undrained data");
    assert_eq!(oldest.sequence, 1);
    assert!((oldest.age_seconds - 52.0).abs() < 1e-9, "age {}", oldest.age_seconds);
    let drain = stats.cursors.iter().find(|c| c.name == "drain").unwrap();
    assert_eq!((drain.lag_records, drain.lag_bytes), (52, (52 * 16) << 10));
    let crossings: Vec<_> = ring
        .recent_events()
        .into_iter()
        .filter_map(|e| match e.kind {
            RingEventKind::FillThreshold { threshold_percent, rising, .. } => {
                Some((threshold_percent, rising))
            }
            _ => None,
        })
        .collect();
    assert_eq!(crossings, vec![(80, true)]);
}

#[test]
fn rings_of_several_streams_live_side_by_side_and_are_written_concurrently() {
    let parent = tempfile::tempdir().unwrap();
    let writers: Vec<_> = [("lsstcam", 1u32), ("latiss", 2), ("metadata", 3)]
        .into_iter()
        .map(|(name, stream_id)| {
            let directory = parent.path().join(name);
            std::thread::spawn(move || {
                let mut ring =
                    Ring::create(&directory, &CreateOptions::new(8 << 20, stream_id), RingOptions::default())
                        .unwrap();
                for index in 0..50u32 {
                    let payload = format!("{name} record {index}");
                    ring.append_copy(RecordKind::Frame, 0, payload.as_bytes()).unwrap();
                    ring.commit().unwrap();
                }
                ring.close().unwrap();
                directory
            })
        })
        .collect();
    for (writer, (name, stream_id)) in
        writers.into_iter().zip([("lsstcam", 1u32), ("latiss", 2), ("metadata", 3)])
    {
        let directory = writer.join().unwrap();
        let ring = Ring::open(&directory, RingOptions::default()).unwrap();
        let mut reader = ring.reader("drain").unwrap();
        for index in 0..50u32 {
            let record = reader.next_record().unwrap().expect("record");
            assert_eq!(record.info.stream_id, stream_id);
            assert_eq!(record.payload, format!("{name} record {index}").as_bytes());
        }
    }
}

#[test]
fn summit_ring_verify_names_the_location_of_a_corrupt_record_and_exits_1() {
    let directory = tempfile::tempdir().unwrap();
    let ring_dir = directory.path().join("latiss");
    let tool = env!("CARGO_BIN_EXE_summit-ring");
    let created = Command::new(tool)
        .args(["create", ring_dir.to_str().unwrap(), "--capacity", "4MiB", "--stream-id", "2"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let mut ring = Ring::open(&ring_dir, RingOptions::default()).unwrap();
    for index in 0..5u8 {
        ring.append_copy(RecordKind::Frame, 0, &[index; 10_000]).unwrap();
    }
    ring.close().unwrap();

    let clean = Command::new(tool).args(["verify", ring_dir.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("5 good records") && stdout.contains("verify: clean"), "{stdout}");

    // Flip a payload byte of record 3 (each record: 4096 header + 12288 padded payload).
    let data_path = ring_dir.join("ring.data");
    let mut data = std::fs::read(&data_path).unwrap();
    let record_3_payload = 2 * 16384 + 4096 + 100;
    data[record_3_payload] ^= 0xFF;
    std::fs::write(&data_path, data).unwrap();

    let corrupt = Command::new(tool).args(["verify", ring_dir.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&corrupt.stdout);
    assert_eq!(corrupt.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("data offset 32768"), "{stdout}");
    assert!(stdout.contains("payload CRC32 mismatch"), "{stdout}");
    assert!(stdout.contains("expected sequence 3"), "{stdout}");
    assert!(stdout.contains("4 good records"), "{stdout}");

    let inspect = Command::new(tool).args(["inspect", ring_dir.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{stdout}");
    assert!(stdout.contains("5 retained, sequences 1..=5"), "{stdout}");

    let missing = Command::new(tool).args(["inspect", "/nonexistent/ring"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/ring"));
}
