//! Format compatibility: a ring written by format version 1 is committed under
//! `tests/fixtures/v1-ring/` and must keep opening, reading and verifying in every later version.
//!
//! Each fixture was produced by this file itself, with `RING_WRITE_FIXTURES=<fixture directory
//! name> cargo test -p ringbuffer --test fixtures`. Never regenerate one: it records what an
//! earlier build wrote (`v1-ring` predates the clean-close flag and hole records). Add a new
//! fixture beside them instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringbuffer::{open_read_only, AlignedBuf, CreateOptions, ManualClock, RecordKind, Ring, RingOptions};

const FIXTURE_RECORDS: u64 = 40;
const DRAINED_RECORDS: u64 = 20;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-ring")
}

fn fixture_payload(sequence: u64) -> Vec<u8> {
    let length = (sequence as usize * 1237) % 6000;
    (0..length).map(|index| (sequence as usize + index * 13) as u8).collect()
}

fn write_fixture(directory: &Path) {
    let options = RingOptions {
        clock: Arc::new(ManualClock::new(1_732_000_000_000_000_000)),
        ..RingOptions::default()
    };
    let mut create = CreateOptions::new(256 << 10, 2);
    create.ring_id = Some(0x5EED_0001_0000_0001);
    let mut ring = Ring::create(directory, &create, options).unwrap();
    let mut drain = ring.reader("drain").unwrap();
    for sequence in 1..=FIXTURE_RECORDS {
        let payload = fixture_payload(sequence);
        let mut buffer = AlignedBuf::zeroed(payload.len());
        buffer.as_mut_slice()[..payload.len()].copy_from_slice(&payload);
        ring.append(RecordKind::Frame, (sequence % 7) as u8, buffer.as_slice(), payload.len()).unwrap();
        ring.commit().unwrap();
        if sequence % 10 == 0 && sequence <= DRAINED_RECORDS {
            while drain.next_record().unwrap().is_some() {}
            drain.commit().unwrap();
        }
    }
    drop(drain);
    ring.close().unwrap();
    std::fs::remove_file(directory.join("ring.lock")).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn version_1_fixture_still_opens_reads_and_verifies() {
    if std::env::var("RING_WRITE_FIXTURES").as_deref() == Ok("v1-ring") {
        let directory = fixture_dir();
        let _ = std::fs::remove_dir_all(&directory);
        write_fixture(&directory);
    }
    let readonly = open_read_only(&fixture_dir()).expect("the v1 fixture must open read-only");
    let report = readonly.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.sequence_range, Some((DRAINED_RECORDS + 1, FIXTURE_RECORDS)));
    drop(readonly);

    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), scratch.path());
    let ring =
        Ring::open(scratch.path(), RingOptions::default()).expect("the v1 fixture must open for writing");
    assert_eq!(ring.durable_sequence(), FIXTURE_RECORDS);
    let mut reader = ring.reader("drain").unwrap();
    for sequence in DRAINED_RECORDS + 1..=FIXTURE_RECORDS {
        let record = reader.next_record().unwrap().expect("fixture record");
        assert_eq!(record.info.sequence, sequence);
        assert_eq!(record.info.flags, (sequence % 7) as u8);
        assert_eq!(record.payload, fixture_payload(sequence).as_slice());
    }
    assert!(reader.next_record().unwrap().is_none());
    let mut prompt = ring.reader("prompt").unwrap();
    let first = prompt.next_record().unwrap().expect("record");
    assert_eq!(first.info.sequence, DRAINED_RECORDS + 1, "optional cursors start at the tail");
}

fn hole_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-ring-with-hole")
}

/// Records 1..=5 acknowledged; record 6 written with a damaged header and record 7 intact, never
/// committed; the next open quarantines record 6 and writes a hole record over it; clean close.
fn write_hole_fixture(directory: &Path) {
    let options = || RingOptions {
        clock: Arc::new(ManualClock::new(1_732_000_000_000_000_000)),
        ..RingOptions::default()
    };
    let mut create = CreateOptions::new(256 << 10, 1);
    create.ring_id = Some(0x5EED_0001_0000_0002);
    let mut ring = Ring::create(directory, &create, options()).unwrap();
    let mut offsets = Vec::new();
    for sequence in 1..=7u64 {
        let payload = fixture_payload(sequence);
        let mut buffer = AlignedBuf::zeroed(payload.len());
        buffer.as_mut_slice()[..payload.len()].copy_from_slice(&payload);
        offsets.push(ring.append(RecordKind::Frame, 0, buffer.as_slice(), payload.len()).unwrap().offset);
        if sequence == 5 {
            ring.commit().unwrap();
        }
    }
    drop(ring);
    let data_path = directory.join("ring.data");
    let mut data = std::fs::read(&data_path).unwrap();
    data[usize::try_from(offsets[5]).unwrap() + 20] ^= 0x40;
    std::fs::write(&data_path, data).unwrap();
    let ring = Ring::open(directory, options()).unwrap();
    ring.close().unwrap();
    std::fs::remove_file(directory.join("ring.lock")).unwrap();
}

#[test]
fn version_1_fixture_with_a_hole_record_still_skips_the_quarantined_record() {
    if std::env::var("RING_WRITE_FIXTURES").as_deref() == Ok("v1-ring-with-hole") {
        let directory = hole_fixture_dir();
        let _ = std::fs::remove_dir_all(&directory);
        write_hole_fixture(&directory);
    }
    let readonly = open_read_only(&hole_fixture_dir()).expect("the v1 hole fixture must open read-only");
    let report = readonly.verify().unwrap();
    assert_eq!(report.good_records, 6, "{report:?}");
    assert_eq!(report.bad_region_count, 1, "{report:?}");
    let bad = &report.bad_regions[0];
    assert_eq!((bad.expected_sequence, bad.resumed_sequence), (6, 7), "{report:?}");
    assert_eq!(
        bad.defect,
        ringbuffer::RecordDefect::QuarantinedAtRecovery(ringbuffer::layout::DefectClass::HeaderCrc),
        "{report:?}"
    );
    drop(readonly);

    let scratch = tempfile::tempdir().unwrap();
    copy_dir(&hole_fixture_dir(), scratch.path());
    let ring = Ring::open(scratch.path(), RingOptions::default()).unwrap();
    assert_eq!(ring.durable_sequence(), 7);
    let mut reader = ring.reader("drain").unwrap();
    let mut delivered = Vec::new();
    while let Some(record) = reader.next_record().unwrap() {
        assert_eq!(record.payload, fixture_payload(record.info.sequence).as_slice());
        delivered.push(record.info.sequence);
    }
    assert_eq!(delivered, vec![1, 2, 3, 4, 5, 7]);
}
