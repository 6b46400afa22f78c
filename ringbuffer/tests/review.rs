//! Review findings for `ringbuffer/`, each a minimal failing test (they fail against the code at
//! the time of the review; each says what it shows and which fix makes it pass).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ringbuffer::sim::{CrashMode, SimRing, SplitMix64};
use ringbuffer::{
    open_read_only_on, AlignedBuf, CreateOptions, CursorSpec, Error, ManualClock, RecordKind, Ring,
    RingOptions,
};

const RING_ID: u64 = 0x5EED;

fn payload(sequence: u64, nonce: u64, length: usize) -> AlignedBuf {
    let mut buffer = AlignedBuf::zeroed(length);
    let mut rng = SplitMix64::new(sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nonce);
    for chunk in buffer.as_mut_slice()[..length].chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    buffer
}

fn options(cursors: Vec<CursorSpec>) -> RingOptions {
    RingOptions { cursors, clock: Arc::new(ManualClock::new(1_000_000_000)), ..RingOptions::default() }
}

fn drain_only() -> RingOptions {
    options(vec![CursorSpec::required("drain")])
}

fn create(capacity: u64, max_payload: u32, options: RingOptions) -> (SimRing, Ring) {
    let sim = SimRing::new(capacity);
    let mut create = CreateOptions::new(capacity, 1);
    create.max_payload_bytes = max_payload;
    create.ring_id = Some(RING_ID);
    let ring = Ring::create_on(sim.files(), &create, options).expect("create");
    (sim, ring)
}

fn append(ring: &mut Ring, sequence: u64, nonce: u64, length: usize) -> u64 {
    let buffer = payload(sequence, nonce, length);
    let appended = ring.append(RecordKind::Frame, 0, buffer.as_slice(), length).expect("append");
    assert_eq!(appended.sequence, sequence);
    appended.offset
}

/// Finding 1. `Ring::add_cursor(name, true)` on an existing *optional* cursor that lags behind the
/// tail flips it to required without moving it: the next checkpoint computes the tail as that
/// cursor's stale position, i.e. the tail moves *backwards*, over space the writer already reused.
/// Here the lag exceeds the capacity, so `encode_checkpoint`'s `head - tail <= capacity` assert
/// panics (with a smaller lag and records written but not yet committed, `Ring::free_bytes`
/// underflows instead: a panic in debug, a huge "free" figure in release).
/// Fix: in `ensure_cursor` (ring.rs), when a cursor becomes required, set its `persisted` to
/// `max(persisted, tail)`; and make `Shared::checkpoint` never lower the tail
/// (`state.tail = max(state.tail, compute_tail(..))`, same for the encoded slot).
#[test]
fn making_a_lagging_optional_cursor_required_never_moves_the_tail_backwards() {
    let (_sim, mut ring) = create(
        64 << 10,
        8 << 10,
        options(vec![CursorSpec::required("drain"), CursorSpec::optional("archive")]),
    );
    let mut drain = ring.reader("drain").unwrap();
    // Three laps of 8 KiB records, drained and committed; `archive` never reads.
    for sequence in 1..=24u64 {
        append(&mut ring, sequence, 1, 4096);
        ring.commit().unwrap();
        while drain.next_record().unwrap().is_some() {}
        drain.commit().unwrap();
    }
    let oldest_before = ring.stats().oldest_sequence;
    assert_eq!(oldest_before, 25);

    let outcome = catch_unwind(AssertUnwindSafe(|| ring.add_cursor("archive", true)));
    assert!(matches!(outcome, Ok(Ok(()))), "add_cursor panicked or failed");
    let stats = ring.stats();
    assert!(
        stats.oldest_sequence >= oldest_before,
        "tail moved backwards from sequence {oldest_before} to {}",
        stats.oldest_sequence
    );
}

/// Finding 2. Readers (and `verify`) search past a defect with `min_generation = 0`; inside the
/// durable region, stale records of an older generation survive only inside holes that recovery
/// quarantined, and a single on-disk hole marker is all that keeps readers from searching there.
/// One bit flipped in that 4 KiB marker (bit rot at rest) makes the drain search the hole, take a
/// never-acknowledged generation-1 record for "record 9", return its payload, and then skip
/// record 5, which recovery made durable and the next commit acknowledged.
/// Fix: in `Scanner::resync` (reader.rs), accept only headers whose generation is at least the
/// generation of the last valid record (or hole marker) the scan passed (generations never
/// decrease along the log); pass that floor from `Reader::advance`/`verify` instead of 0. Also
/// have recovery zero position-valid headers of older generations inside a quarantined region
/// (`scan_after_checkpoint`, `ScanStep::Resynced`) so the marker is not the only defence.
#[test]
fn a_corrupt_hole_marker_never_lets_a_stale_record_of_an_older_generation_through() {
    let (sim, mut ring) = create(128 << 10, 8 << 10, drain_only());
    // Resync window: 2 * (4096 + 8192) + 4096 = 28672 bytes.

    // Generation 1: record 1 acknowledged (header only, at 0); header-only records 2..=9 at
    // 4096..=32768 never acknowledged. The crash keeps only record 9 (at 32768), beyond the
    // window of a search starting at 4096: generation 2 cuts the log at (4096, 2).
    append(&mut ring, 1, 1, 0);
    ring.commit().unwrap();
    for sequence in 2..=9 {
        append(&mut ring, sequence, 1, 0);
    }
    drop(ring);
    sim.crash_keeping(&[(32768, 4096)]);
    let mut ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    assert_eq!(ring.durable_sequence(), 1);

    // Generation 2: record 2 (8 KiB, at 4096) acknowledged; 3, 4, 5 at 16384, 28672, 40960 not.
    // The crash keeps only record 5. Generation 3 rejects generation 1's record 9 at 32768
    // (OldGeneration), resynchronises on record 5, writes a hole marker at 16384 -> (40960, 5).
    assert_eq!(append(&mut ring, 2, 2, 8192), 4096);
    ring.commit().unwrap();
    assert_eq!(append(&mut ring, 3, 2, 8192), 16384);
    assert_eq!(append(&mut ring, 4, 2, 8192), 28672);
    assert_eq!(append(&mut ring, 5, 2, 8192), 40960);
    drop(ring);
    sim.crash_keeping(&[(40960, 12288)]);
    let mut ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    assert_eq!(ring.commit().unwrap(), 5, "record 5 is acknowledged");
    drop(ring);

    // Bit rot in the hole marker's header.
    sim.data.flip_bit(16384 + 20, 3);

    let ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    let mut drain = ring.reader("drain").unwrap();
    let mut delivered = Vec::new();
    while let Some(record) = drain.next_record().unwrap() {
        delivered.push(record.info.sequence);
    }
    assert_eq!(
        delivered,
        vec![1, 2, 5],
        "stale generation-1 record returned / acknowledged record 5 skipped"
    );
}

/// Finding 3. `summit-ring verify` opens read-only (a snapshot of tail and head) while the
/// daemon keeps draining and appending. Space behind the live tail is legitimately reused, and
/// the read-only scan reports the reused records as corruption (`Misplaced`): `verify` exits 1
/// ("bad records found") on a perfectly healthy ring. Readers handle this (`skip_if_overrun`),
/// `verify` does not, and a read-only `Shared` never learns the new tail.
/// Fix: in `stats::verify` (and `Reader::advance`) for `OpenMode::ReadOnly`, on a defect re-read
/// the newest checkpoint slot from `ring.meta`; if its tail is past the defect, count the skipped
/// records as "reclaimed during the scan" and continue at that tail instead of reporting a bad
/// region.
#[test]
fn read_only_verify_of_a_live_ring_does_not_report_reclaimed_space_as_corruption() {
    let (sim, mut ring) = create(64 << 10, 8 << 10, drain_only());
    let mut drain = ring.reader("drain").unwrap();
    let mut sequence = 0;
    let mut lap = |ring: &mut Ring, drain: &mut ringbuffer::Reader| {
        for _ in 0..4 {
            sequence += 1;
            append(ring, sequence, 1, 4096);
        }
        ring.commit().unwrap();
        while drain.next_record().unwrap().is_some() {}
        drain.commit().unwrap();
        for _ in 0..4 {
            sequence += 1;
            append(ring, sequence, 1, 4096);
        }
        ring.commit().unwrap();
    };
    lap(&mut ring, &mut drain);
    // The operator starts `summit-ring verify` now...
    let inspector = open_read_only_on(sim.files()).unwrap();
    // ...while the daemon drains and appends (reusing the oldest, drained space)...
    lap(&mut ring, &mut drain);
    lap(&mut ring, &mut drain);
    // ...and the scan reaches that space.
    let report = inspector.verify().unwrap();
    assert!(report.is_clean(), "healthy live ring reported as corrupt: {:#?}", report.bad_regions);
}

/// Finding 4. A `Reader` of a read-only ring returns records that are not durable: read-only
/// recovery scans whatever the live writer has written (page cache, volatile disk cache) and
/// publishes it as the durable head. ARCHITECTURE.md: "readers never see a record that is not
/// durable". After a power loss the record is gone.
/// Fix: either refuse `reader()` on a read-only ring (inspection only), or cap a read-only ring's
/// readable head at the newest checkpoint's head (the only head known durable), and say in
/// docs/ringbuffer-format.md that read-only figures past it are "written, not known durable".
#[test]
fn a_read_only_reader_never_returns_a_record_that_is_not_durable() {
    let (sim, mut ring) = create(1 << 20, 8 << 10, drain_only());
    append(&mut ring, 1, 1, 100); // written, not committed: not acknowledged
    let inspector = open_read_only_on(sim.files()).unwrap();
    // A read-only view is for inspection: opening a reader on it is refused outright.
    let seen = match inspector.reader("drain") {
        Ok(mut reader) => reader.next_record().unwrap().map(|record| record.info.sequence),
        Err(error) => {
            assert!(error.to_string().contains("read-only"), "{error}");
            None
        }
    };
    drop(inspector);
    drop(ring);
    sim.crash(CrashMode::DropUnsynced);
    let ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    assert_eq!(ring.durable_sequence(), 0, "the record did not survive the power loss");
    assert_eq!(seen, None, "a read-only reader returned record 1, which was never durable");
}

/// Finding 5. `Ring::append` accepts `RecordKind::Hole` from the caller. The ring then treats
/// the caller's record as a corrupt hole marker (its extent bytes are zero): it is acknowledged by
/// `commit`, never returned to the drain, and reported as corruption. (`RecordKind::Padding`
/// panics in `check_payload` instead of returning an error.)
/// Fix: in `Ring::check_payload` return `Error::InvalidConfig { field: "kind", .. }` for
/// `Padding` and `Hole` (both `append` and `append_batch` go through it).
#[test]
fn a_record_kind_reserved_for_the_ring_is_refused_not_silently_lost() {
    let (_sim, mut ring) = create(1 << 20, 8 << 10, drain_only());
    let buffer = payload(1, 1, 100);
    match ring.append(RecordKind::Hole, 0, buffer.as_slice(), 100) {
        Err(_) => {}
        Ok(_) => {
            ring.commit().unwrap();
            let mut drain = ring.reader("drain").unwrap();
            let returned = drain.next_record().unwrap().is_some();
            panic!(
                "a Hole-kind record was accepted and acknowledged, then returned: {returned}, verify: {:?}",
                ring.verify().unwrap().bad_regions
            );
        }
    }
    let padding =
        catch_unwind(AssertUnwindSafe(|| ring.append(RecordKind::Padding, 0, buffer.as_slice(), 100)));
    assert!(matches!(padding, Ok(Err(_))), "append(Padding) must return an error, not panic");
}

/// Finding 6. `Ring::create`'s comment promises that a crash at any point leaves "either no ring
/// or a complete one, never a directory that neither opens nor creates". A crash between the two
/// renames (`ring.data` in place, `ring.meta` still `ring.meta.creating`) leaves exactly that:
/// `open` says `ring.meta` is missing, `create` says the directory "already holds a ring".
/// Fix: in `Ring::create`, treat `ring.meta` missing + `ring.meta.creating` present as an
/// interrupted create (remove `ring.data` too, with a warning), since `ring.meta` is the commit
/// point.
#[test]
fn a_create_interrupted_between_its_two_renames_can_be_created_again() {
    let directory = tempfile::tempdir().unwrap();
    let ring =
        Ring::create(directory.path(), &CreateOptions::new(1 << 20, 1), RingOptions::default()).unwrap();
    drop(ring);
    // The state a crash between `rename(ring.data.creating)` and `rename(ring.meta.creating)` leaves.
    std::fs::rename(directory.path().join("ring.meta"), directory.path().join("ring.meta.creating")).unwrap();
    let error = Ring::open(directory.path(), RingOptions::default()).unwrap_err();
    assert!(matches!(error, Error::NotARing { .. }), "{error}");
    let created = Ring::create(directory.path(), &CreateOptions::new(1 << 20, 1), RingOptions::default());
    assert!(created.is_ok(), "neither opens nor creates: {}", created.unwrap_err());
}

/// Finding 7. `CreateOptions::validate` accepts capacities (4096, 8192) in which a maximum-size
/// record can never be appended once the head is not at a lap start: the padding plus the record
/// exceed the capacity even when the ring is empty, so `block` waits forever.
/// Fix: in `CreateOptions::validate` require `capacity >= 2 * stored_record_bytes(max_payload)
/// minus 4096` (equivalently: capacity at least 12 KiB and `max_payload <= (capacity - 4096) / 2`
/// after rounding), naming both values.
#[test]
fn a_ring_too_small_for_a_maximum_size_record_after_padding_is_refused_at_creation() {
    // 8 KiB with 1 KiB payloads: once the head is off a lap start, padding plus a largest record
    // (8 KiB) exceeds the capacity even when empty, so an append would wait forever.
    let sim = SimRing::new(8192);
    let mut create = CreateOptions::new(8192, 1);
    create.max_payload_bytes = 1024;
    let error = Ring::create_on(sim.files(), &create, drain_only()).unwrap_err().to_string();
    assert!(error.contains("capacity_bytes") && error.contains("12288"), "{error}");
    // The smallest ring that always fits a largest record: 2 x 8 KiB - 4 KiB.
    let (_sim, mut ring) = self::create(12288, 1024, drain_only());
    let mut drain = ring.reader("drain").unwrap();
    for sequence in 1..=5u64 {
        append(&mut ring, sequence, 1, 1024);
        ring.commit().unwrap();
        while drain.next_record().unwrap().is_some() {}
        drain.commit().unwrap();
    }
}

/// Finding 1, second face: the lag is within the capacity when `add_cursor` runs, but a record
/// is written and not yet committed. The checkpoint accepts the backwards tail; the next append
/// computes `capacity - (written - tail)` with `written - tail > capacity`: an overflow panic in
/// debug builds; in release (no overflow checks) a free-space figure near 2^64, after which the
/// writer no longer blocks and overwrites the drain's undrained records. Same fix.
#[test]
fn making_a_lagging_optional_cursor_required_keeps_free_space_sane() {
    let (_sim, mut ring) = create(
        64 << 10,
        8 << 10,
        options(vec![CursorSpec::required("drain"), CursorSpec::optional("archive")]),
    );
    let mut drain = ring.reader("drain").unwrap();
    for sequence in 1..=8u64 {
        append(&mut ring, sequence, 1, 4096); // one full lap of 8 KiB records
    }
    ring.commit().unwrap();
    while drain.next_record().unwrap().is_some() {}
    drain.commit().unwrap();
    append(&mut ring, 9, 1, 4096); // reuses the space of record 1; not committed yet
    ring.add_cursor("archive", true).expect("add_cursor");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let buffer = payload(10, 1, 4096);
        ring.append(RecordKind::Frame, 0, buffer.as_slice(), 4096).map(|_| ())
    }));
    assert!(outcome.is_ok(), "append panicked after add_cursor moved the tail behind reused space");
    let stats = ring.stats();
    assert!(stats.used_bytes <= stats.capacity_bytes, "used {} > capacity", stats.used_bytes);
}

/// Finding 8. docs/ringbuffer-format.md: "`drain` always is [required]"; config.rs: "a required
/// cursor is never dropped silently". But an open whose `RingOptions::cursors` lists `drain` as
/// optional silently demotes it (`ensure_cursor` only logs at info): the next checkpoint moves
/// the tail to the head and undrained records become reclaimable.
/// Fix: in `ensure_cursor` (ring.rs), refuse (`Error::Cursor`) to turn a required cursor into an
/// optional one from `RingOptions` at open, and always refuse it for `drain`; offer an explicit
/// `Ring::demote_cursor` for the deliberate case.
#[test]
fn opening_with_drain_listed_as_optional_does_not_release_undrained_records() {
    let (sim, mut ring) = create(64 << 10, 8 << 10, drain_only());
    for sequence in 1..=4u64 {
        append(&mut ring, sequence, 1, 4096);
    }
    ring.commit().unwrap();
    ring.close().unwrap();
    let reopened = Ring::open_on(sim.files(), options(vec![CursorSpec::optional("drain")]));
    if let Ok(ring) = reopened {
        let stats = ring.stats();
        assert_eq!(
            (stats.oldest_sequence, stats.used_bytes),
            (1, 4 * 8192),
            "undrained records 1..=4 were released by a cursor spec"
        );
    }
}

/// Finding 9. `Reader::commit_at` checks only that the position is not past the reader's; it
/// accepts a position that is no record boundary the reader passed (here: the right offset with a
/// wrong sequence). After a reopen the drain expects that sequence there, calls the record
/// corrupt (`SequenceGap`), skips it, and an undrained, intact record is never delivered.
/// Fix: in `Reader::commit_at`, accept `self.position` as is; for any other position read the
/// header block at `position.offset` and require it to validate with `expectation(position, 0)`
/// (or remember the `end` of the last returned record and accept only that).
#[test]
fn commit_at_refuses_a_position_that_is_not_a_record_boundary() {
    let (sim, mut ring) = create(64 << 10, 8 << 10, drain_only());
    for sequence in 1..=3u64 {
        append(&mut ring, sequence, 1, 100);
    }
    ring.commit().unwrap();
    let mut drain = ring.reader("drain").unwrap();
    let first = drain.next_record().unwrap().unwrap().info;
    let bogus = ringbuffer::Position { offset: first.end.offset, sequence: first.end.sequence - 1 };
    let accepted = drain.commit_at(bogus).is_ok();
    drop(drain);
    ring.close().unwrap();
    let ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    let mut drain = ring.reader("drain").unwrap();
    let mut delivered = Vec::new();
    while let Some(record) = drain.next_record().unwrap() {
        delivered.push(record.info.sequence);
    }
    assert!(!accepted || delivered == vec![2, 3], "accepted {bogus:?}; then delivered {delivered:?}");
}
