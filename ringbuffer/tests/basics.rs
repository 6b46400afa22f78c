//! Basic behaviour of the ring on real files and on the fault layer: append, commit, read,
//! reopen, cursors, wrap-around, full-ring policies, and clear errors for bad rings.

use std::sync::Arc;
use std::time::Duration;

use ringbuffer::sim::{CrashMode, SimRing};
use ringbuffer::{
    AlignedBuf, BatchRecord, CreateOptions, CursorSpec, Error, FullPolicy, ManualClock, RecordKind, Ring,
    RingOptions,
};

fn payload(sequence: u64, length: usize) -> AlignedBuf {
    let mut buffer = AlignedBuf::zeroed(length);
    for (index, byte) in buffer.as_mut_slice()[..length].iter_mut().enumerate() {
        *byte = (sequence as usize * 31 + index * 7) as u8;
    }
    buffer
}

fn sim_options() -> RingOptions {
    RingOptions { clock: Arc::new(ManualClock::new(1_000_000_000)), ..RingOptions::default() }
}

fn create_sim(capacity: u64, max_payload: u32, options: RingOptions) -> (SimRing, Ring) {
    let sim = SimRing::new(capacity);
    let mut create = CreateOptions::new(capacity, 1);
    create.max_payload_bytes = max_payload;
    create.ring_id = Some(0xABCD);
    let ring = Ring::create_on(sim.files(), &create, options).expect("create");
    (sim, ring)
}

#[test]
fn appended_records_read_back_intact_after_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let ring_path = directory.path().join("lsstcam");
    let mut ring =
        Ring::create(&ring_path, &CreateOptions::new(64 << 20, 1), RingOptions::default()).unwrap();
    for sequence in 1..=20u64 {
        let length = 1000 + sequence as usize * 5000;
        let buffer = payload(sequence, length);
        let appended = ring.append(RecordKind::Frame, 0, buffer.as_slice(), length).unwrap();
        assert_eq!(appended.sequence, sequence);
    }
    assert_eq!(ring.commit().unwrap(), 20);
    drop(ring);

    let ring = Ring::open(&ring_path, RingOptions::default()).unwrap();
    assert_eq!(ring.durable_sequence(), 20);
    let mut reader = ring.reader("drain").unwrap();
    for sequence in 1..=20u64 {
        let length = 1000 + sequence as usize * 5000;
        let record = reader.next_record().unwrap().expect("record present");
        assert_eq!(record.info.sequence, sequence);
        assert_eq!(record.payload, &payload(sequence, length).as_slice()[..length]);
    }
    assert!(reader.next_record().unwrap().is_none());
}

#[test]
fn second_writer_is_refused_while_the_first_holds_the_lock() {
    let directory = tempfile::tempdir().unwrap();
    let _ring =
        Ring::create(directory.path(), &CreateOptions::new(1 << 20, 1), RingOptions::default()).unwrap();
    let error = Ring::open(directory.path(), RingOptions::default()).unwrap_err();
    assert!(matches!(error, Error::Locked { .. }), "{error}");
}

#[test]
fn create_refuses_to_format_an_existing_ring() {
    let directory = tempfile::tempdir().unwrap();
    let ring =
        Ring::create(directory.path(), &CreateOptions::new(1 << 20, 1), RingOptions::default()).unwrap();
    drop(ring);
    let error =
        Ring::create(directory.path(), &CreateOptions::new(1 << 20, 1), RingOptions::default()).unwrap_err();
    assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
    assert!(error.to_string().contains("--force"), "{error}");
}

#[test]
fn ring_wraps_around_and_reclaims_only_behind_the_drain_cursor() {
    let (_sim, mut ring) = create_sim(256 << 10, 16 << 10, sim_options());
    let mut reader = ring.reader("drain").unwrap();
    let mut next_expected = 1u64;
    for sequence in 1..=200u64 {
        let length = 1 + (sequence as usize * 977) % (12 << 10);
        let buffer = payload(sequence, length);
        loop {
            match ring.append(RecordKind::Frame, 0, buffer.as_slice(), length) {
                Ok(appended) => {
                    assert_eq!(appended.sequence, sequence);
                    break;
                }
                Err(Error::WouldBlock { .. }) => {
                    ring.commit().unwrap();
                    while let Some(record) = reader.next_record().unwrap() {
                        let expected_length = 1 + (next_expected as usize * 977) % (12 << 10);
                        assert_eq!(record.info.sequence, next_expected);
                        assert_eq!(
                            record.payload,
                            &payload(next_expected, expected_length).as_slice()[..expected_length]
                        );
                        next_expected += 1;
                    }
                    reader.commit().unwrap();
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
    }
    ring.commit().unwrap();
    while let Some(record) = reader.next_record().unwrap() {
        assert_eq!(record.info.sequence, next_expected);
        next_expected += 1;
    }
    assert_eq!(next_expected, 201);
    assert!(ring.verify().unwrap().is_clean());
}

#[test]
fn full_ring_rejects_under_reject_policy_and_counts_it() {
    let options = RingOptions { full_policy: FullPolicy::Reject, ..sim_options() };
    let (_sim, mut ring) = create_sim(64 << 10, 8 << 10, options);
    let buffer = payload(1, 4096);
    let mut accepted = 0;
    loop {
        match ring.append(RecordKind::Frame, 0, buffer.as_slice(), 4096) {
            Ok(_) => accepted += 1,
            Err(Error::Rejected { needed_bytes, free_bytes }) => {
                assert_eq!(needed_bytes, 8192);
                assert!(free_bytes < needed_bytes);
                break;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 8);
    ring.commit().unwrap();
    assert_eq!(ring.stats().rejected_full_total, 1);
    // Nothing was overwritten: all eight records are still there.
    assert_eq!(ring.verify().unwrap().good_records, 8);
}

#[test]
fn full_ring_blocks_until_the_drain_commits() {
    let (_sim, mut ring) = create_sim(64 << 10, 8 << 10, sim_options());
    let buffer = payload(1, 4096);
    for _ in 0..8 {
        ring.append(RecordKind::Frame, 0, buffer.as_slice(), 4096).unwrap();
    }
    ring.commit().unwrap();
    let error = ring.append(RecordKind::Frame, 0, buffer.as_slice(), 4096).unwrap_err();
    assert!(matches!(error, Error::WouldBlock { .. }), "{error}");
    let mut reader = ring.reader("drain").unwrap();
    let drainer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        reader.next_record().unwrap().expect("record");
        reader.commit().unwrap();
    });
    let appended =
        ring.append_blocking(RecordKind::Frame, 0, buffer.as_slice(), 4096, Duration::from_secs(10)).unwrap();
    assert_eq!(appended.sequence, 9);
    drainer.join().unwrap();
}

#[test]
fn optional_cursor_is_overrun_not_blocking() {
    let options = RingOptions {
        cursors: vec![CursorSpec::required("drain"), CursorSpec::optional("prompt")],
        ..sim_options()
    };
    let (_sim, mut ring) = create_sim(64 << 10, 8 << 10, options);
    let mut drain = ring.reader("drain").unwrap();
    let mut prompt = ring.reader("prompt").unwrap();
    let buffer = payload(1, 4096);
    for _ in 0..20 {
        if ring.append(RecordKind::Frame, 0, buffer.as_slice(), 4096).is_err() {
            ring.commit().unwrap();
            while drain.next_record().unwrap().is_some() {}
            drain.commit().unwrap();
            ring.append(RecordKind::Frame, 0, buffer.as_slice(), 4096).unwrap();
        }
    }
    ring.commit().unwrap();
    let first = prompt.next_record().unwrap().expect("record").info.sequence;
    assert!(first > 1, "prompt should have skipped reclaimed records, got {first}");
    assert!(ring.stats().overrun_records_total > 0);
}

#[test]
fn readers_follow_the_durable_head_live() {
    let (_sim, mut ring) = create_sim(1 << 20, 8 << 10, sim_options());
    let mut reader = ring.reader("prompt").unwrap();
    let follower = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while seen.len() < 5 {
            if !reader.wait_for_data(Duration::from_secs(10)) {
                panic!("timed out waiting for data");
            }
            while let Some(record) = reader.next_record().unwrap() {
                seen.push(record.info.sequence);
            }
        }
        seen
    });
    let buffer = payload(1, 100);
    for _ in 0..5 {
        ring.append(RecordKind::Frame, 0, buffer.as_slice(), 100).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        ring.commit().unwrap();
    }
    assert_eq!(follower.join().unwrap(), vec![1, 2, 3, 4, 5]);
}

#[test]
fn uncommitted_records_are_not_visible_and_not_kept_after_crash() {
    let (sim, mut ring) = create_sim(1 << 20, 8 << 10, sim_options());
    let buffer = payload(1, 100);
    ring.append(RecordKind::Frame, 0, buffer.as_slice(), 100).unwrap();
    ring.commit().unwrap();
    ring.append(RecordKind::Frame, 0, buffer.as_slice(), 100).unwrap();
    let mut reader = ring.reader("archive").unwrap();
    assert_eq!(reader.next_record().unwrap().unwrap().info.sequence, 1);
    assert!(reader.next_record().unwrap().is_none(), "unsynced record must not be visible");
    drop(reader);
    drop(ring);
    sim.crash(CrashMode::DropUnsynced);
    let ring = Ring::open_on(sim.files(), sim_options()).unwrap();
    assert_eq!(ring.durable_sequence(), 1);
}

#[test]
fn misaligned_payload_is_refused() {
    let (_sim, mut ring) = create_sim(1 << 20, 8 << 10, sim_options());
    let buffer = AlignedBuf::zeroed(8192);
    let error = ring.append(RecordKind::Frame, 0, &buffer.as_slice()[1..4097], 4096).unwrap_err();
    assert!(matches!(error, Error::Misaligned { .. }), "{error}");
    let error = ring.append(RecordKind::Frame, 0, buffer.as_slice(), 100).unwrap_err();
    assert!(matches!(error, Error::Misaligned { .. }), "{error}");
    let error = ring.append_copy(RecordKind::Frame, 0, &vec![0u8; 9000]).unwrap_err();
    assert!(matches!(error, Error::TooLarge { .. }), "{error}");
}

#[test]
fn batch_append_with_parallel_writes_reads_back_intact_on_real_files() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring =
        Ring::create(directory.path(), &CreateOptions::new(32 << 20, 1), RingOptions::default()).unwrap();
    let buffers: Vec<(AlignedBuf, usize)> = (1..=40u64)
        .map(|sequence| {
            let length = (sequence as usize * 40_961) % (1 << 20) + 1;
            (payload(sequence, length), length)
        })
        .collect();
    let mut reader = ring.reader("drain").unwrap();
    for chunk in buffers.chunks(16) {
        let batch: Vec<BatchRecord<'_>> = chunk
            .iter()
            .map(|(buffer, length)| BatchRecord {
                kind: RecordKind::Frame,
                flags: 1,
                padded: &buffer.as_slice()[..ringbuffer::layout::round_up_to_block(*length as u64) as usize],
                payload_length: *length,
            })
            .collect();
        ring.append_batch(&batch, 4).unwrap();
        ring.commit().unwrap();
    }
    for (index, (buffer, length)) in buffers.iter().enumerate() {
        let record = reader.next_record().unwrap().expect("record");
        assert_eq!(record.info.sequence, index as u64 + 1);
        assert_eq!(record.payload, &buffer.as_slice()[..*length]);
    }
    assert!(reader.next_record().unwrap().is_none());
}

#[test]
fn batch_append_wraps_with_padding_and_is_all_or_nothing_when_full() {
    let (_sim, mut ring) = create_sim(64 << 10, 8 << 10, sim_options());
    let buffer = payload(7, 8192);
    let record =
        BatchRecord { kind: RecordKind::Frame, flags: 0, padded: buffer.as_slice(), payload_length: 8000 };
    // 12 KiB per record: five fit in 64 KiB.
    assert_eq!(ring.append_batch(&[record; 5], 3).unwrap(), 1..=5);
    ring.commit().unwrap();
    let error = ring.append_batch(&[record; 2], 2).unwrap_err();
    assert!(matches!(error, Error::WouldBlock { .. }), "{error}");
    assert_eq!(ring.next_sequence(), 6, "nothing of a refused batch is written");
    let mut drain = ring.reader("drain").unwrap();
    for _ in 0..3 {
        drain.next_record().unwrap().expect("record");
    }
    drain.commit().unwrap();
    // 60 KiB used of 64: the next record needs padding to the lap end, then wraps.
    assert_eq!(ring.append_batch(&[record; 2], 2).unwrap(), 6..=7);
    ring.commit().unwrap();
    for sequence in 4..=7 {
        let read = drain.next_record().unwrap().expect("record");
        assert_eq!(read.info.sequence, sequence);
        assert_eq!(read.payload, &buffer.as_slice()[..8000]);
    }
    assert!(ring.verify().unwrap().is_clean());
    let error = ring.append_batch(&[], 1).unwrap_err();
    assert!(error.to_string().contains("batch length"), "{error}");
}

#[test]
fn interrupted_create_leaves_no_ring_and_the_next_create_succeeds() {
    let directory = tempfile::tempdir().unwrap();
    // What a create killed before its final rename leaves behind.
    std::fs::write(directory.path().join("ring.data.creating"), vec![0xAB; 8192]).unwrap();
    std::fs::write(directory.path().join("ring.meta.creating"), vec![0xCD; 100]).unwrap();
    let error = Ring::open(directory.path(), RingOptions::default()).unwrap_err();
    assert!(matches!(error, Error::NotARing { .. }), "{error}");
    assert!(error.to_string().contains("ring.meta"), "{error}");

    let ring =
        Ring::create(directory.path(), &CreateOptions::new(1 << 20, 1), RingOptions::default()).unwrap();
    drop(ring);
    assert!(!directory.path().join("ring.data.creating").exists());
    assert!(!directory.path().join("ring.meta.creating").exists());
    Ring::open(directory.path(), RingOptions::default()).unwrap();
}
