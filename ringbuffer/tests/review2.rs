//! Second review of `ringbuffer/` (hole records, the post-crash wipe, dual-slot tail checkpoints,
//! read-only opens, `Reader::commit_at`): each finding is a minimal deterministic test that fails
//! against the code at the time of the review, and its doc comment says which fix makes it pass.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ringbuffer::sim::{CrashMode, SimRing, SplitMix64};
use ringbuffer::{
    AlignedBuf, CreateOptions, CursorSpec, ManualClock, Position, RecordKind, Ring, RingOptions,
};

const RING_ID: u64 = 0x5EED_0002;

fn payload(sequence: u64, nonce: u64, length: usize) -> AlignedBuf {
    let mut buffer = AlignedBuf::zeroed(length);
    let mut rng = SplitMix64::new(sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nonce);
    for chunk in buffer.as_mut_slice()[..length].chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    buffer
}

fn drain_only() -> RingOptions {
    RingOptions {
        cursors: vec![CursorSpec::required("drain")],
        clock: Arc::new(ManualClock::new(1_000_000_000)),
        ..RingOptions::default()
    }
}

fn create(capacity: u64, max_payload: u32) -> (SimRing, Ring) {
    let sim = SimRing::new(capacity);
    let mut create = CreateOptions::new(capacity, 1);
    create.max_payload_bytes = max_payload;
    create.ring_id = Some(RING_ID);
    let ring = Ring::create_on(sim.files(), &create, drain_only()).expect("create");
    (sim, ring)
}

fn append(ring: &mut Ring, sequence: u64, nonce: u64, length: usize) -> u64 {
    let buffer = payload(sequence, nonce, length);
    let appended = ring.append(RecordKind::Frame, 0, buffer.as_slice(), length).expect("append");
    assert_eq!(appended.sequence, sequence);
    appended.offset
}

/// `checkpoint_sequence` and generation of each valid-looking slot (`None` if not a checkpoint).
fn slot_summary(sim: &SimRing) -> Vec<Option<(u64, u32)>> {
    (0..2u64)
        .map(|slot| {
            let bytes = sim.meta.read_durable(slot * 4096, 512);
            (bytes[..4] == *b"SRCK").then(|| {
                (
                    u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
                    u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
                )
            })
        })
        .collect()
}

fn drain_all(ring: &Ring) -> Vec<(u64, Vec<u8>)> {
    let mut drain = ring.reader("drain").unwrap();
    let mut delivered = Vec::new();
    while let Some(record) = drain.next_record().unwrap() {
        delivered.push((record.info.sequence, record.payload.to_vec()));
    }
    delivered
}

/// Finding 1. The clean-close flag is trusted even when recovery *fell back* to it because the
/// newer slot is unreadable. The newer slot was the recovery checkpoint of the session opened
/// after the clean close (generation 2); that session appended, crashed, and left unsynced
/// generation-2 records beyond its head. Falling back to the clean slot (generation 1) skips the
/// wipe *and* hands out generation 2 again, so the leftovers carry the new writer's own
/// generation. After the next crash, recovery's resync window lands on one of them (position,
/// generation and "sequence >= expected" all match) and keeps it: the drain returns record 10, a
/// record of an earlier life that was never acknowledged, and the ring's sequence jumps to 11.
/// Without the corrupt slot the wipe zeroes it and the drain gets 1, 2, 3.
///
/// Fix (ring.rs, `recover`/`newest_checkpoint`): skip the wipe on *clean close* only when the
/// chosen slot is provably the last checkpoint ever written, i.e. the other slot is valid and
/// holds `checkpoint_sequence - 1`; when the other slot is invalid (a newer checkpoint may have
/// been lost) wipe as after an unclean stop. Also, on such a fallback, do not reuse
/// `generation + 1`: take the generation past any seen while scanning (or `+ 2`), so a lost
/// slot can never make two writers share a generation.
#[test]
fn falling_back_to_a_clean_close_slot_still_wipes_what_the_lost_session_left() {
    // Resync window: 2 * (4096 + 8192) + 4096 = 28672 bytes.
    let (sim, mut ring) = create(128 << 10, 8 << 10);
    append(&mut ring, 1, 1, 0); // header-only record at 0
    ring.commit().unwrap();
    ring.close().unwrap(); // clean-close checkpoint, generation 1

    // Generation 2: its recovery checkpoint goes to the other slot; record 2 (at 4096) is
    // acknowledged, 3..=10 (8192..=36864) are not, and the crash keeps only record 10.
    let mut ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    assert_eq!(append(&mut ring, 2, 2, 0), 4096);
    ring.commit().unwrap();
    for sequence in 3..=10 {
        append(&mut ring, sequence, 2, 0);
    }
    drop(ring);
    sim.crash_keeping(&[(36864, 4096)]);

    // Bit rot in generation 2's (newest) checkpoint slot.
    let slots = slot_summary(&sim);
    let newest = if slots[0] > slots[1] { 0 } else { 1 };
    assert_eq!(slots[newest].map(|(_, generation)| generation), Some(2), "{slots:?}");
    sim.meta.flip_bit(newest as u64 * 4096 + 200, 0);

    // Falls back to the clean slot: record 2 is found by the scan, record 10 lies beyond the
    // resync window from 8192 and stays where it is.
    let mut ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    assert_eq!(ring.durable_sequence(), 2);
    assert_eq!(append(&mut ring, 3, 3, 0), 8192);
    assert_eq!(ring.commit().unwrap(), 3, "record 3 acknowledged");
    drop(ring);
    sim.crash(CrashMode::DropUnsynced); // a kill with nothing unsynced

    let ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    let delivered: Vec<u64> = drain_all(&ring).into_iter().map(|(sequence, _)| sequence).collect();
    assert_eq!(
        delivered,
        vec![1, 2, 3],
        "a never-acknowledged record of the crashed session was kept and returned (durable sequence {})",
        ring.durable_sequence()
    );
}

/// Finding 2. `Reader::commit_at` with a position whose offset is not block-aligned (API misuse:
/// not a `RecordInfo::end`) panics instead of returning an error: `check_record_boundary` reads
/// a 4096-byte header block at `position.offset`, and `Shared::read_data`'s
/// `debug_assert!(physical + len <= capacity)` fires when the unaligned offset lies in the last
/// block of the data file (in release builds the read fails or, with `O_DIRECT`, is `EINVAL`).
/// Fix (reader.rs, `Reader::commit_at`): refuse `position.offset % 4096 != 0` with
/// `Error::Cursor` before anything is read (and treat a read error in `check_record_boundary` as
/// "not the start of a record").
#[test]
fn commit_at_an_unaligned_offset_is_an_error_not_a_panic() {
    let (_sim, mut ring) = create(64 << 10, 8 << 10);
    for sequence in 1..=8u64 {
        append(&mut ring, sequence, 1, 4096); // one full lap of 8 KiB records
    }
    ring.commit().unwrap();
    let mut drain = ring.reader("drain").unwrap();
    while drain.next_record().unwrap().is_some() {}
    assert_eq!(drain.position(), Position { offset: 65536, sequence: 9 });
    let bogus = Position { offset: 65535, sequence: 8 };
    let outcome = catch_unwind(AssertUnwindSafe(|| drain.commit_at(bogus)));
    assert!(matches!(outcome, Ok(Err(_))), "commit_at({bogus:?}) must be refused with an error, not panic");
}

/// Finding 3. The wipe reuses space before *both* checkpoint slots have released it, which the
/// dual-slot rule (format doc, invariant 5) exists to prevent. A drain commit that moves the tail
/// writes slot A (tail 32768), and the process dies before the second copy reaches slot B
/// (still tail 0, head 0). The next open recovers from A and wipes up to A's `tail + capacity`,
/// zeroing records 1..=4, which B still names as retained; it dies after the wipe's
/// `fdatasync` and before its own checkpoint reaches slot B. If slot A is then lost (the case
/// the older slot exists for), recovery falls back to B, meets zeros at offset 0, finds nothing
/// in the resync window and cuts the log at sequence 1: acknowledged, undrained records 5..=8
/// are truncated (and then wiped), and sequence numbers restart at 1.
///
/// Fixed (ring.rs, `recover`): recovery writes its checkpoint before the wipe, so both slots name
/// the moved tail before anything is zeroed. The test makes recovery fail between its steps
/// (its checkpoint's fdatasync fails) and then loses the newest slot.
#[test]
fn the_wipe_never_zeroes_space_the_older_checkpoint_slot_still_retains() {
    let (sim, mut ring) = create(128 << 10, 8 << 10);
    for sequence in 1..=8u64 {
        append(&mut ring, sequence, 1, 4096); // 8 KiB records at 0..65536
    }
    assert_eq!(ring.commit().unwrap(), 8, "records 1..=8 acknowledged");
    let mut drain = ring.reader("drain").unwrap();
    let mut end = None;
    for _ in 0..4 {
        end = Some(drain.next_record().unwrap().unwrap().info.end);
    }
    let meta_before = sim.meta.read_durable(0, 8192);
    drain.commit_at(end.unwrap()).unwrap(); // moves the tail: two slot writes
    let slots = slot_summary(&sim);
    // The process dies between the two writes: the second copy never reached the medium.
    let second = if slots[0] > slots[1] { 0 } else { 1 };
    let first = 1 - second;
    sim.meta.overwrite_durable(second as u64 * 4096, &meta_before[second * 4096..(second + 1) * 4096]);
    drop(drain);
    drop(ring);
    sim.crash(CrashMode::DropUnsynced);

    // Restart, and recovery's own checkpoint fails to reach the medium (its fdatasync fails):
    // the open fails. Recovery writes that checkpoint *before* it wipes, so nothing was zeroed
    // yet; had it wiped first, records 1..=4, which slot B still retains, would be gone.
    sim.meta.fail_next_syncs(1);
    let error = Ring::open_on(sim.files(), drain_only()).unwrap_err();
    assert!(error.to_string().contains("fdatasync"), "{error}");
    sim.crash(CrashMode::DropUnsynced);

    // The newest slot is lost; recovery falls back to the older one.
    sim.meta.flip_bit(first as u64 * 4096 + 200, 0);
    let ring = Ring::open_on(sim.files(), drain_only()).unwrap();
    let delivered: Vec<u64> = drain_all(&ring).into_iter().map(|(sequence, _)| sequence).collect();
    assert!(
        ring.durable_sequence() >= 8 && (5..=8).all(|s| delivered.contains(&s)),
        "acknowledged undrained records lost: durable sequence {}, delivered {delivered:?}",
        ring.durable_sequence()
    );
}
