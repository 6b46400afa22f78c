//! The external-write API (`Ring::plan_append`, `confirm_written`, `begin_sync`/`finish_sync`,
//! `external_write_failed`) on real files: the test plays the io_uring ingest, writing the blocks
//! the ring planned itself with positional writes on `Ring::direct_data_fd()`, and checks that
//! readers, commits, wrap-around, the full policy, recovery and the in-flight limits keep the
//! ring's invariants.

use std::path::{Path, PathBuf};

use ringbuffer::{
    AlignedBuf, BatchRecord, CreateOptions, Error, FullPolicy, PlannedAppend, PlannedBlock, RecordKind, Ring,
    RingOptions, MAX_EXTERNAL_IN_FLIGHT,
};

const BLOCK: usize = 4096;

fn payload(sequence: u64, length: usize) -> Vec<u8> {
    (0..length).map(|index| (sequence as usize * 31 + index * 7 + 1) as u8).collect()
}

fn ring_path(directory: &tempfile::TempDir) -> PathBuf {
    directory.path().join("ring")
}

fn create(path: &Path, capacity: u64, max_payload: u32, options: RingOptions) -> Ring {
    let mut create = CreateOptions::new(capacity, 7);
    create.max_payload_bytes = max_payload;
    create.ring_id = Some(0xE7E7);
    let ring = Ring::create(path, &create, options).expect("create");
    assert!(ring.direct_data_fd().is_some(), "the test directory must support O_DIRECT");
    ring
}

/// One positional write of the whole buffer, as the io_uring ingest issues it.
fn pwrite_all(ring: &Ring, buffer: &[u8], offset: u64) {
    let fd = ring.direct_data_fd().expect("O_DIRECT data file");
    let written = rustix::io::pwrite(fd, buffer, offset).expect("pwrite");
    assert_eq!(written, buffer.len(), "short O_DIRECT write");
}

fn write_padding(ring: &Ring, padding: &PlannedBlock) {
    let mut block = AlignedBuf::zeroed(BLOCK);
    block.as_mut_slice()[..64].copy_from_slice(&padding.header);
    pwrite_all(ring, block.as_slice(), padding.physical_offset);
}

/// The zero-copy layout: header block (header, then zeros) followed by the payload padded with
/// zeros to a multiple of 4096, written in one go.
fn record_buffer(planned: &PlannedAppend, payload: &[u8]) -> AlignedBuf {
    let mut buffer = AlignedBuf::zeroed(BLOCK + payload.len());
    assert_eq!(buffer.len(), BLOCK + payload.len().div_ceil(BLOCK) * BLOCK);
    buffer.as_mut_slice()[..64].copy_from_slice(&planned.record.header);
    buffer.as_mut_slice()[BLOCK..BLOCK + payload.len()].copy_from_slice(payload);
    buffer
}

/// Writes everything `planned` asks for.
fn write_planned(ring: &Ring, planned: &PlannedAppend, payload: &[u8]) {
    if let Some(padding) = &planned.padding {
        write_padding(ring, padding);
    }
    let buffer = record_buffer(planned, payload);
    pwrite_all(ring, buffer.as_slice(), planned.record.physical_offset);
}

/// Plans, writes and confirms one frame whose payload is `payload(sequence, length)`.
fn external_append(ring: &mut Ring, length: usize) -> PlannedAppend {
    let sequence = ring.next_sequence();
    let bytes = payload(sequence, length);
    let planned = ring.plan_append(RecordKind::Frame, 0, length, crc32fast::hash(&bytes)).expect("plan");
    assert_eq!(planned.sequence, sequence);
    write_planned(ring, &planned, &bytes);
    ring.confirm_written(planned.sequence).expect("confirm");
    planned
}

fn stored_bytes(length: usize) -> u64 {
    (BLOCK + length.div_ceil(BLOCK) * BLOCK) as u64
}

fn reject_options() -> RingOptions {
    RingOptions { full_policy: FullPolicy::Reject, ..RingOptions::default() }
}

#[test]
fn externally_written_records_read_back_bit_identical() {
    let directory = tempfile::tempdir().unwrap();
    let path = ring_path(&directory);
    let mut ring = create(&path, 4 << 20, 256 << 10, RingOptions::default());
    let lengths = [1usize, 0, 4096, 4097, 10_000, 200_000, 65_536, 3];
    let mut expected_offset = 0u64;
    for (index, &length) in lengths.iter().enumerate() {
        let sequence = index as u64 + 1;
        let bytes = payload(sequence, length);
        let kind = if index % 2 == 0 { RecordKind::Frame } else { RecordKind::Metadata };
        let flags = index as u8 * 3;
        let planned = ring.plan_append(kind, flags, length, crc32fast::hash(&bytes)).unwrap();
        assert_eq!(planned.sequence, sequence);
        assert_eq!(planned.logical_offset, expected_offset);
        assert_eq!(planned.record.physical_offset, expected_offset);
        assert!(planned.padding.is_none());
        assert_eq!(ring.external_writes_in_flight(), 1);
        write_planned(&ring, &planned, &bytes);
        ring.confirm_written(sequence).unwrap();
        assert_eq!(ring.external_writes_in_flight(), 0);
        expected_offset += stored_bytes(length);
    }
    assert_eq!(ring.commit().unwrap(), lengths.len() as u64);
    assert_eq!(ring.stats().appended_bytes_total, expected_offset);

    let check = |ring: &Ring| {
        let mut reader = ring.reader("drain").unwrap();
        for (index, &length) in lengths.iter().enumerate() {
            let sequence = index as u64 + 1;
            let record = reader.next_record().unwrap().expect("record");
            assert_eq!(record.info.sequence, sequence);
            assert_eq!(record.info.flags, index as u8 * 3);
            assert_eq!(record.info.stream_id, 7);
            let kind = if index % 2 == 0 { RecordKind::Frame } else { RecordKind::Metadata };
            assert_eq!(record.info.kind, kind);
            assert_eq!(record.payload, payload(sequence, length).as_slice());
        }
        assert!(reader.next_record().unwrap().is_none());
        let report = ring.verify().unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.good_records, lengths.len() as u64);
    };
    check(&ring);
    ring.close().unwrap();
    let ring = Ring::open(&path, RingOptions::default()).unwrap();
    assert_eq!(ring.durable_sequence(), lengths.len() as u64);
    check(&ring);
}

#[test]
fn records_that_do_not_fit_before_the_lap_end_get_a_padding_record_readers_skip() {
    let directory = tempfile::tempdir().unwrap();
    let path = ring_path(&directory);
    let capacity = 256u64 << 10;
    let mut ring = create(&path, capacity, 16 << 10, RingOptions::default());
    let mut reader = ring.reader("drain").unwrap();
    let length_of = |sequence: u64| 1 + (sequence as usize * 977) % (12 << 10);
    let mut next_expected = 1u64;
    let drain = |ring: &mut Ring, reader: &mut ringbuffer::Reader, next_expected: &mut u64| {
        ring.commit().unwrap();
        while let Some(record) = reader.next_record().unwrap() {
            assert_eq!(record.info.sequence, *next_expected);
            assert_eq!(record.payload, payload(*next_expected, length_of(*next_expected)).as_slice());
            *next_expected += 1;
        }
        reader.commit().unwrap();
    };
    let mut paddings = 0;
    let mut end_offset = 0u64;
    for sequence in 1..=120u64 {
        let length = length_of(sequence);
        let bytes = payload(sequence, length);
        let planned = loop {
            match ring.plan_append(RecordKind::Frame, 0, length, crc32fast::hash(&bytes)) {
                Ok(planned) => break planned,
                Err(Error::WouldBlock { .. }) => drain(&mut ring, &mut reader, &mut next_expected),
                Err(other) => panic!("unexpected {other}"),
            }
        };
        assert_eq!(planned.sequence, sequence);
        if let Some(padding) = &planned.padding {
            paddings += 1;
            // The padding ends the lap; the record starts the next one.
            assert_eq!(padding.physical_offset, end_offset % capacity);
            assert!(padding.physical_offset + stored_bytes(length) > capacity);
            assert_eq!(planned.record.physical_offset, 0);
            assert_eq!(planned.logical_offset % capacity, 0);
            assert_eq!(planned.logical_offset, end_offset.div_ceil(capacity) * capacity);
        } else {
            assert_eq!(planned.logical_offset, end_offset);
        }
        assert!(planned.record.physical_offset + stored_bytes(length) <= capacity);
        write_planned(&ring, &planned, &bytes);
        ring.confirm_written(sequence).unwrap();
        end_offset = planned.logical_offset + stored_bytes(length);
    }
    drain(&mut ring, &mut reader, &mut next_expected);
    assert_eq!(next_expected, 121);
    assert!(paddings >= 2, "the test must wrap more than once ({paddings} paddings)");
    assert!(end_offset > 2 * capacity);
    // Padding counts as appended bytes, as for the ring's own appends.
    assert_eq!(ring.stats().appended_bytes_total, end_offset);
    let report = ring.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    drop(reader);
    drop(ring);
    // Reopening (unclean stop) finds the same head.
    let ring = Ring::open(&path, RingOptions::default()).unwrap();
    assert_eq!(ring.durable_sequence(), 120);
    assert!(ring.verify().unwrap().is_clean());
}

#[test]
fn readers_see_records_only_after_finish_sync_and_a_failed_sync_poisons() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring = create(&ring_path(&directory), 4 << 20, 64 << 10, RingOptions::default());
    let mut reader = ring.reader("drain").unwrap();
    assert!(ring.begin_sync().is_none(), "nothing to sync in an empty ring");
    for _ in 0..3 {
        external_append(&mut ring, 5000);
    }
    let ticket = ring.begin_sync().expect("confirmed records to sync");
    assert_eq!(ticket.last_sequence(), 3);
    assert!(reader.next_record().unwrap().is_none(), "a record is visible before its sync finished");
    assert_eq!(ring.durable_sequence(), 0);
    rustix::fs::fdatasync(ring.direct_data_fd().unwrap()).unwrap();
    assert_eq!(ring.finish_sync(ticket, Ok(())).unwrap(), 3);
    assert_eq!(ring.durable_sequence(), 3);
    for sequence in 1..=3 {
        let record = reader.next_record().unwrap().expect("durable record");
        assert_eq!(record.info.sequence, sequence);
        assert_eq!(record.payload, payload(sequence, 5000).as_slice());
    }
    assert!(reader.next_record().unwrap().is_none());
    assert!(ring.begin_sync().is_none(), "everything confirmed is durable");

    external_append(&mut ring, 100);
    let ticket = ring.begin_sync().expect("record 4 to sync");
    assert_eq!(ticket.last_sequence(), 4);
    let error = ring.finish_sync(ticket, Err(std::io::Error::other("injected EIO"))).unwrap_err();
    assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    assert!(ring.poisoned().expect("poisoned").contains("injected EIO"));
    assert_eq!(ring.durable_sequence(), 3);
    assert!(reader.next_record().unwrap().is_none(), "a record whose sync failed became visible");
    let bytes = payload(5, 10);
    for error in [
        ring.append_copy(RecordKind::Frame, 0, &bytes).unwrap_err(),
        ring.plan_append(RecordKind::Frame, 0, 10, crc32fast::hash(&bytes)).unwrap_err(),
        ring.commit().unwrap_err(),
        ring.finish_sync(ticket, Ok(())).unwrap_err(),
    ] {
        assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    }
    assert_eq!(ring.durable_sequence(), 3);
}

#[test]
fn confirming_out_of_plan_order_is_an_error_and_changes_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring = create(&ring_path(&directory), 4 << 20, 64 << 10, RingOptions::default());
    let mut reader = ring.reader("drain").unwrap();
    assert!(matches!(ring.confirm_written(1), Err(Error::InvalidConfig { .. })), "nothing is planned");
    let mut planned = Vec::new();
    for sequence in 1..=2u64 {
        let bytes = payload(sequence, 3000);
        let plan = ring.plan_append(RecordKind::Frame, 0, 3000, crc32fast::hash(&bytes)).unwrap();
        write_planned(&ring, &plan, &bytes);
        planned.push(plan);
    }
    for wrong in [2u64, 3, 0] {
        let error = ring.confirm_written(wrong).unwrap_err();
        assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
        assert_eq!(ring.external_writes_in_flight(), 2);
        assert!(ring.begin_sync().is_none(), "a wrong confirmation made a record syncable");
        assert_eq!(ring.commit().unwrap(), 0);
        assert!(reader.next_record().unwrap().is_none());
    }
    assert!(ring.poisoned().is_none());
    ring.confirm_written(1).unwrap();
    assert!(ring.confirm_written(1).is_err(), "confirmed twice");
    assert_eq!(ring.commit().unwrap(), 1);
    ring.confirm_written(2).unwrap();
    assert_eq!(ring.commit().unwrap(), 2);
    for sequence in 1..=2 {
        assert_eq!(reader.next_record().unwrap().expect("record").info.sequence, sequence);
    }
}

#[test]
fn commit_does_not_make_an_unconfirmed_record_durable() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring = create(&ring_path(&directory), 4 << 20, 64 << 10, RingOptions::default());
    let mut reader = ring.reader("drain").unwrap();
    // The ring's own append and an external one, interleaved.
    let own = payload(1, 700);
    ring.append_copy(RecordKind::Marker, 9, &own).unwrap();
    external_append(&mut ring, 9000);
    assert_eq!(ring.commit().unwrap(), 2);

    let bytes = payload(3, 20_000);
    let planned = ring.plan_append(RecordKind::Frame, 0, bytes.len(), crc32fast::hash(&bytes)).unwrap();
    assert_eq!(planned.sequence, 3);
    write_planned(&ring, &planned, &bytes);
    // Written but not confirmed: the sync must not cover it.
    assert_eq!(ring.commit().unwrap(), 2, "commit made an unconfirmed record durable");
    assert_eq!(ring.durable_sequence(), 2);
    assert_eq!(ring.stats().durable_sequence, 2);
    let first = reader.next_record().unwrap().expect("record 1");
    assert_eq!((first.info.sequence, first.info.kind, first.info.flags), (1, RecordKind::Marker, 9));
    assert_eq!(first.payload, own.as_slice());
    assert_eq!(reader.next_record().unwrap().expect("record 2").payload, payload(2, 9000).as_slice());
    assert!(reader.next_record().unwrap().is_none());

    ring.confirm_written(3).unwrap();
    assert_eq!(ring.commit().unwrap(), 3);
    let third = reader.next_record().unwrap().expect("record 3");
    assert_eq!(third.info.sequence, 3);
    assert_eq!(third.payload, bytes.as_slice());
}

#[test]
fn reopen_after_an_unclean_stop_keeps_exactly_the_synced_records() {
    let directory = tempfile::tempdir().unwrap();
    let path = ring_path(&directory);
    let mut ring = create(&path, 4 << 20, 64 << 10, RingOptions::default());
    let mut offsets = Vec::new();
    for _ in 0..3 {
        offsets.push(external_append(&mut ring, 6000).logical_offset);
    }
    let ticket = ring.begin_sync().unwrap();
    rustix::fs::fdatasync(ring.direct_data_fd().unwrap()).unwrap();
    assert_eq!(ring.finish_sync(ticket, Ok(())).unwrap(), 3);
    // Record 4: its header block reached the file, its payload did not (a torn write the
    // writer never confirmed). Record 5: planned, never written.
    let bytes = payload(4, 6000);
    let torn = ring.plan_append(RecordKind::Frame, 0, bytes.len(), crc32fast::hash(&bytes)).unwrap();
    let buffer = record_buffer(&torn, &bytes);
    pwrite_all(&ring, &buffer.as_slice()[..BLOCK], torn.record.physical_offset);
    let bytes = payload(5, 6000);
    let never = ring.plan_append(RecordKind::Frame, 0, bytes.len(), crc32fast::hash(&bytes)).unwrap();
    assert_eq!(never.sequence, 5);
    assert_eq!(ring.external_writes_in_flight(), 2);
    drop(ring);

    let ring = Ring::open(&path, RingOptions::default()).unwrap();
    assert_eq!(ring.durable_sequence(), 3);
    assert_eq!(ring.next_sequence(), 4);
    let mut reader = ring.reader("drain").unwrap();
    for sequence in 1..=3u64 {
        let record = reader.next_record().unwrap().expect("synced record");
        assert_eq!(record.info.sequence, sequence);
        assert_eq!(record.info.position.offset, offsets[sequence as usize - 1]);
        assert_eq!(record.payload, payload(sequence, 6000).as_slice());
    }
    assert!(reader.next_record().unwrap().is_none());
    let report = ring.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.good_records, 3);
    // The torn header was wiped: nothing stale lies beyond the head.
    let data = std::fs::read(path.join("ring.data")).unwrap();
    let at = usize::try_from(torn.record.physical_offset).unwrap();
    assert!(data[at..at + BLOCK].iter().all(|&b| b == 0), "stale header beyond the head");

    // The writer carries on where the synced records end.
    let mut ring = ring;
    let replanned = external_append(&mut ring, 6000);
    assert_eq!((replanned.sequence, replanned.logical_offset), (4, torn.logical_offset));
    assert_ne!(replanned.record.header, torn.record.header, "a new generation stamps new headers");
    assert_eq!(ring.commit().unwrap(), 4);
    let record = reader.next_record().unwrap().expect("record 4");
    assert_eq!(record.payload, payload(4, 6000).as_slice());
}

#[test]
fn close_with_planned_records_in_flight_is_not_a_clean_close() {
    let directory = tempfile::tempdir().unwrap();
    let path = ring_path(&directory);
    let mut ring = create(&path, 4 << 20, 64 << 10, RingOptions::default());
    external_append(&mut ring, 5000);
    external_append(&mut ring, 5000);
    // Record 3: only its header block landed before the writer gave up; never confirmed.
    let bytes = payload(3, 5000);
    let torn = ring.plan_append(RecordKind::Frame, 0, bytes.len(), crc32fast::hash(&bytes)).unwrap();
    let buffer = record_buffer(&torn, &bytes);
    pwrite_all(&ring, &buffer.as_slice()[..BLOCK], torn.record.physical_offset);
    let error = ring.close().unwrap_err();
    assert!(error.to_string().contains("in flight"), "{error}");

    let ring = Ring::open(&path, RingOptions::default()).unwrap();
    // What was confirmed was committed by close.
    assert_eq!(ring.durable_sequence(), 2);
    // Not a clean close: the next open zeroed what the unconfirmed write left beyond the head.
    let data = std::fs::read(path.join("ring.data")).unwrap();
    let at = usize::try_from(torn.record.physical_offset).unwrap();
    assert!(data[at..at + BLOCK].iter().all(|&b| b == 0), "stale header survived a close");
    assert!(ring.verify().unwrap().is_clean());
    ring.close().unwrap();
}

#[test]
fn reject_policy_refuses_a_plan_on_a_full_ring_and_changes_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring = create(&ring_path(&directory), 64 << 10, 8 << 10, reject_options());
    let mut reader = ring.reader("drain").unwrap();
    for sequence in 1..=8u64 {
        assert_eq!(external_append(&mut ring, 4096).sequence, sequence);
    }
    assert_eq!(ring.commit().unwrap(), 8);
    let before = ring.stats();
    let bytes = payload(9, 4096);
    let error = ring.plan_append(RecordKind::Frame, 0, 4096, crc32fast::hash(&bytes)).unwrap_err();
    match error {
        Error::Rejected { needed_bytes, free_bytes } => {
            assert_eq!(needed_bytes, 8192);
            assert_eq!(free_bytes, 0);
        }
        other => panic!("expected Rejected, got {other}"),
    }
    let after = ring.stats();
    assert_eq!(after.rejected_full_total, before.rejected_full_total + 1);
    assert_eq!(after.appends_total, before.appends_total);
    assert_eq!(after.appended_bytes_total, before.appended_bytes_total);
    assert_eq!(ring.next_sequence(), 9);
    assert_eq!(ring.external_writes_in_flight(), 0);
    assert!(ring.begin_sync().is_none());
    assert_eq!(ring.commit().unwrap(), 8);
    // Nothing was overwritten.
    let report = ring.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.good_records, 8);
    for sequence in 1..=8u64 {
        let record = reader.next_record().unwrap().expect("record");
        assert_eq!(record.info.sequence, sequence);
        assert_eq!(record.payload, payload(sequence, 4096).as_slice());
    }
    // Once drained, the same plan fits and wraps to the start of the next lap.
    reader.commit().unwrap();
    let planned = ring.plan_append(RecordKind::Frame, 0, 4096, crc32fast::hash(&bytes)).unwrap();
    assert_eq!((planned.sequence, planned.logical_offset, planned.record.physical_offset), (9, 64 << 10, 0));
}

#[test]
fn the_rings_own_appends_wait_for_planned_records_to_be_confirmed() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring = create(&ring_path(&directory), 4 << 20, 64 << 10, RingOptions::default());
    let mut reader = ring.reader("drain").unwrap();
    let bytes = payload(1, 2000);
    let planned = ring.plan_append(RecordKind::Frame, 0, bytes.len(), crc32fast::hash(&bytes)).unwrap();
    write_planned(&ring, &planned, &bytes);

    let own = payload(2, 300);
    let mut padded = AlignedBuf::zeroed(own.len());
    padded.as_mut_slice()[..own.len()].copy_from_slice(&own);
    let batch = [BatchRecord {
        kind: RecordKind::Metadata,
        flags: 0,
        padded: padded.as_slice(),
        payload_length: 300,
    }];
    for error in [
        ring.append_copy(RecordKind::Metadata, 0, &own).unwrap_err(),
        ring.append(RecordKind::Metadata, 0, padded.as_slice(), 300).unwrap_err(),
        ring.append_batch(&batch, 1).unwrap_err(),
    ] {
        assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
    }
    assert_eq!(ring.next_sequence(), 2);
    assert_eq!(ring.stats().appends_total, 1);

    ring.confirm_written(1).unwrap();
    assert_eq!(ring.append_copy(RecordKind::Metadata, 0, &own).unwrap().sequence, 2);
    assert_eq!(ring.commit().unwrap(), 2);
    assert_eq!(reader.next_record().unwrap().expect("record 1").payload, bytes.as_slice());
    let second = reader.next_record().unwrap().expect("record 2");
    assert_eq!((second.info.sequence, second.info.kind), (2, RecordKind::Metadata));
    assert_eq!(second.payload, own.as_slice());
}

#[test]
fn too_many_unconfirmed_plans_ask_for_a_sync() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring = create(&ring_path(&directory), 4 << 20, 64 << 10, RingOptions::default());
    let mut reader = ring.reader("drain").unwrap();
    let mut planned = Vec::new();
    for sequence in 1..=MAX_EXTERNAL_IN_FLIGHT as u64 {
        let bytes = payload(sequence, 16);
        let plan = ring.plan_append(RecordKind::Marker, 0, 16, crc32fast::hash(&bytes)).unwrap();
        assert_eq!(plan.sequence, sequence);
        write_planned(&ring, &plan, &bytes);
        planned.push(plan);
    }
    assert_eq!(ring.external_writes_in_flight(), MAX_EXTERNAL_IN_FLIGHT);
    let extra = payload(MAX_EXTERNAL_IN_FLIGHT as u64 + 1, 16);
    let crc = crc32fast::hash(&extra);
    match ring.plan_append(RecordKind::Marker, 0, 16, crc).unwrap_err() {
        Error::SyncRequired { in_flight, max_in_flight, .. } => {
            assert_eq!(in_flight, MAX_EXTERNAL_IN_FLIGHT);
            assert_eq!(max_in_flight, MAX_EXTERNAL_IN_FLIGHT);
        }
        other => panic!("expected SyncRequired, got {other}"),
    }
    // Refused without side effects, and a sync alone does not help: the plans need confirming.
    assert_eq!(ring.next_sequence(), MAX_EXTERNAL_IN_FLIGHT as u64 + 1);
    assert_eq!(ring.commit().unwrap(), 0);
    assert!(matches!(ring.plan_append(RecordKind::Marker, 0, 16, crc), Err(Error::SyncRequired { .. })));
    assert!(ring.poisoned().is_none());

    ring.confirm_written(1).unwrap();
    let plan = ring.plan_append(RecordKind::Marker, 0, 16, crc).unwrap();
    assert_eq!(plan.sequence, MAX_EXTERNAL_IN_FLIGHT as u64 + 1);
    write_planned(&ring, &plan, &extra);
    for sequence in 2..=plan.sequence {
        ring.confirm_written(sequence).unwrap();
    }
    assert_eq!(ring.commit().unwrap(), plan.sequence);
    for sequence in 1..=plan.sequence {
        let record = reader.next_record().unwrap().expect("record");
        assert_eq!(record.info.sequence, sequence);
        assert_eq!(record.payload, payload(sequence, 16).as_slice());
    }
    assert!(reader.next_record().unwrap().is_none());
}

#[test]
fn a_failed_external_write_poisons_the_ring() {
    let directory = tempfile::tempdir().unwrap();
    let mut ring = create(&ring_path(&directory), 4 << 20, 64 << 10, RingOptions::default());
    external_append(&mut ring, 100);
    let bytes = payload(2, 100);
    let planned = ring.plan_append(RecordKind::Frame, 0, 100, crc32fast::hash(&bytes)).unwrap();
    let error = ring.external_write_failed(planned.sequence, std::io::Error::other("injected EIO"));
    assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    assert!(matches!(ring.confirm_written(2), Err(Error::Poisoned { .. })));
    assert!(matches!(ring.commit(), Err(Error::Poisoned { .. })));
    assert_eq!(ring.durable_sequence(), 0, "a poisoned ring made records durable");
}

#[test]
fn checkpoints_count_the_bytes_a_sync_left_uncovered() {
    let directory = tempfile::tempdir().unwrap();
    let options = RingOptions { checkpoint_interval_bytes: 16 << 10, ..RingOptions::default() };
    let mut ring = create(&ring_path(&directory), 4 << 20, 64 << 10, options);
    // 8 KiB confirmed, 8 KiB planned and unconfirmed: the sync covers the first only.
    external_append(&mut ring, 4096);
    let bytes = payload(2, 4096);
    let pending = ring.plan_append(RecordKind::Frame, 0, 4096, crc32fast::hash(&bytes)).unwrap();
    write_planned(&ring, &pending, &bytes);
    let checkpoints = ring.stats().checkpoints_total;
    assert_eq!(ring.commit().unwrap(), 1);
    assert_eq!(ring.stats().checkpoints_total, checkpoints + 1, "16 KiB appended: a checkpoint is due");
    // The checkpoint names head 2; record 2 and record 3 make 16 KiB past it: due again.
    ring.confirm_written(2).unwrap();
    external_append(&mut ring, 4096);
    assert_eq!(ring.commit().unwrap(), 3);
    assert_eq!(
        ring.stats().checkpoints_total,
        checkpoints + 2,
        "bytes written past a checkpoint's head were forgotten"
    );
}
