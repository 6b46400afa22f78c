//! Malformed-frame injection (issue 3 item 8): a [`FaultInjector`] sits between a stream of
//! well-formed encoded frames and the transport, and corrupts, truncates, pads, duplicates,
//! reorders or drops some of them, or asks the transport to disconnect, as a [`FaultPlan`] says.
//!
//! A plan is a seed plus a per-frame rate for each [`FaultKind`] (drawn from a SplitMix64) and/or
//! an explicit list of `frame_sequence` numbers with the fault each one gets (the list wins).
//! Same plan + same input → same output, byte for byte.
//!
//! Every injected fault is counted per kind ([`FaultInjector::counts`]) and logged with the
//! `frame_sequence` it hit ([`FaultInjector::injected`]), so tests of the ingest can assert its
//! reaction. What the receiver sees for each kind:
//!
//! | kind | on the wire | `decode_frame` / detection |
//! |------|-------------|----------------------------|
//! | [`FaultKind::BadMagic`] | a copy with magic byte 0 inverted | [`FrameError::BadMagic`] |
//! | [`FaultKind::BadHeaderCrc`] | a copy with one of header bytes 4..64 altered | [`FrameError::HeaderCrc`] |
//! | [`FaultKind::BadPayloadCrc`] | a copy with one pixel byte altered | [`FrameError::PayloadCrc`] |
//! | [`FaultKind::TruncatedFrame`] | a strict prefix | [`FrameError::Truncated`] (< 4096 bytes) or [`FrameError::WrongLength`] |
//! | [`FaultKind::WrongLength`] | the frame plus or minus 4096 bytes | [`FrameError::WrongLength`] |
//! | [`FaultKind::DuplicatedFrame`] | the frame twice | repeated `frame_sequence` |
//! | [`FaultKind::OutOfOrderFrame`] | the frame held back and sent after the next one | `frame_sequence` goes down |
//! | [`FaultKind::MissingSegment`] | nothing for every frame of one segment | `(exposure, raft, sensor, segment)` never seen, gap in `frame_sequence` |
//! | [`FaultKind::DisconnectMidExposure`] | [`Emit::Disconnect`] instead of the frame | the connection closes |
//!
//! Rules that keep the counts honest:
//! - At most one fault per input frame.
//! - While a frame is held back for reordering, the next frame that is actually sent gets no
//!   fault (it is the one that overtakes the held frame); frames of a segment being dropped stay
//!   dropped meanwhile. [`FaultKind::OutOfOrderFrame`] is counted when the held frame is released
//!   after a later one; a frame still held when the stream ends comes out of
//!   [`FaultInjector::finish`] in order and is not counted.
//! - [`FaultKind::MissingSegment`] drops the chosen frame and every later frame of the same
//!   `(exposure_id, raft, sensor, segment)` up to and including its end-of-segment frame; it is
//!   counted once per segment. Drawn at random it only starts at a segment's first frame
//!   (`first_row == 0`) so the whole segment goes missing; an explicit entry naming a later frame
//!   drops that segment from that frame on.
//! - Input that does not parse as a frame header is passed through unchanged and never faulted.

use crate::random::SplitMix64;
use std::collections::{BTreeMap, HashSet};

use crate::frame::{
    FrameError, FrameHeader, FLAG_END_OF_SEGMENT, FRAME_ALIGN_BYTES, FRAME_HEADER_BLOCK_BYTES,
};

/// A kind of fault the injector can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The magic number is wrong.
    BadMagic,
    /// A header byte is altered, so the header CRC fails.
    BadHeaderCrc,
    /// A pixel byte is altered, so the payload CRC fails.
    BadPayloadCrc,
    /// Only a prefix of the frame is sent.
    TruncatedFrame,
    /// 4096 bytes too many or too few.
    WrongLength,
    /// The frame is sent twice.
    DuplicatedFrame,
    /// The frame is sent after the next one.
    OutOfOrderFrame,
    /// No frame of one segment is sent.
    MissingSegment,
    /// The transport should close the connection instead of sending the frame.
    DisconnectMidExposure,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::BadMagic,
        FaultKind::BadHeaderCrc,
        FaultKind::BadPayloadCrc,
        FaultKind::TruncatedFrame,
        FaultKind::WrongLength,
        FaultKind::DuplicatedFrame,
        FaultKind::OutOfOrderFrame,
        FaultKind::MissingSegment,
        FaultKind::DisconnectMidExposure,
    ];

    /// Whether `error`, from [`crate::frame::decode_frame`], is what a frame corrupted by this
    /// kind fails with. Always false for the kinds that leave frames intact.
    pub fn explains(self, error: &FrameError) -> bool {
        match self {
            FaultKind::BadMagic => matches!(error, FrameError::BadMagic { .. }),
            FaultKind::BadHeaderCrc => matches!(error, FrameError::HeaderCrc { .. }),
            FaultKind::BadPayloadCrc => matches!(error, FrameError::PayloadCrc { .. }),
            FaultKind::TruncatedFrame => {
                matches!(error, FrameError::Truncated { .. } | FrameError::WrongLength { .. })
            }
            FaultKind::WrongLength => matches!(error, FrameError::WrongLength { .. }),
            FaultKind::DuplicatedFrame
            | FaultKind::OutOfOrderFrame
            | FaultKind::MissingSegment
            | FaultKind::DisconnectMidExposure => false,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many faults of each kind were injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// [`FaultKind::BadMagic`].
    pub bad_magic: u64,
    /// [`FaultKind::BadHeaderCrc`].
    pub bad_header_crc: u64,
    /// [`FaultKind::BadPayloadCrc`].
    pub bad_payload_crc: u64,
    /// [`FaultKind::TruncatedFrame`].
    pub truncated_frame: u64,
    /// [`FaultKind::WrongLength`].
    pub wrong_length: u64,
    /// [`FaultKind::DuplicatedFrame`].
    pub duplicated_frame: u64,
    /// [`FaultKind::OutOfOrderFrame`].
    pub out_of_order_frame: u64,
    /// [`FaultKind::MissingSegment`] (segments, not frames).
    pub missing_segment: u64,
    /// [`FaultKind::DisconnectMidExposure`].
    pub disconnect_mid_exposure: u64,
}

impl FaultCounts {
    /// The count for one kind.
    pub fn get(&self, kind: FaultKind) -> u64 {
        *self.field(kind)
    }

    /// All faults injected.
    pub fn total(&self) -> u64 {
        FaultKind::ALL.iter().map(|&kind| self.get(kind)).sum()
    }

    fn field(&self, kind: FaultKind) -> &u64 {
        match kind {
            FaultKind::BadMagic => &self.bad_magic,
            FaultKind::BadHeaderCrc => &self.bad_header_crc,
            FaultKind::BadPayloadCrc => &self.bad_payload_crc,
            FaultKind::TruncatedFrame => &self.truncated_frame,
            FaultKind::WrongLength => &self.wrong_length,
            FaultKind::DuplicatedFrame => &self.duplicated_frame,
            FaultKind::OutOfOrderFrame => &self.out_of_order_frame,
            FaultKind::MissingSegment => &self.missing_segment,
            FaultKind::DisconnectMidExposure => &self.disconnect_mid_exposure,
        }
    }

    fn increment(&mut self, kind: FaultKind) {
        let field = match kind {
            FaultKind::BadMagic => &mut self.bad_magic,
            FaultKind::BadHeaderCrc => &mut self.bad_header_crc,
            FaultKind::BadPayloadCrc => &mut self.bad_payload_crc,
            FaultKind::TruncatedFrame => &mut self.truncated_frame,
            FaultKind::WrongLength => &mut self.wrong_length,
            FaultKind::DuplicatedFrame => &mut self.duplicated_frame,
            FaultKind::OutOfOrderFrame => &mut self.out_of_order_frame,
            FaultKind::MissingSegment => &mut self.missing_segment,
            FaultKind::DisconnectMidExposure => &mut self.disconnect_mid_exposure,
        };
        *field += 1;
    }
}

/// Which frames get which fault: per-kind rates drawn from a seeded generator, plus explicit
/// `frame_sequence` numbers (which take precedence).
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    seed: u64,
    rates: [f64; 9],
    explicit: BTreeMap<u64, FaultKind>,
}

impl FaultPlan {
    /// A plan that injects nothing yet, drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, rates: [0.0; 9], explicit: BTreeMap::new() }
    }

    /// Each eligible frame gets `kind` with probability `rate`. Panics unless `rate` is in
    /// `0..=1` and all rates together stay at most 1.
    pub fn with_rate(mut self, kind: FaultKind, rate: f64) -> Self {
        assert!((0.0..=1.0).contains(&rate), "fault rate {rate} is not in 0..=1");
        self.rates[kind.index()] = rate;
        let sum: f64 = self.rates.iter().sum();
        assert!(sum <= 1.0 + 1e-12, "fault rates add up to {sum}, more than 1");
        self
    }

    /// The frame whose `frame_sequence` is `frame_sequence` gets `kind` (replacing any earlier
    /// entry for it, and overriding the rates).
    pub fn at(mut self, frame_sequence: u64, kind: FaultKind) -> Self {
        self.explicit.insert(frame_sequence, kind);
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The rate for `kind`.
    pub fn rate(&self, kind: FaultKind) -> f64 {
        self.rates[kind.index()]
    }
}

/// What to send for one input frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Send nothing (dropped, or held back for reordering).
    Nothing,
    /// Send one frame (unchanged or faulted).
    One(Vec<u8>),
    /// Send two frames, in this order (a duplicate, or a later frame then a held-back one).
    Two(Vec<u8>, Vec<u8>),
    /// Do not send the frame: close the connection.
    Disconnect,
}

impl Emit {
    /// The frames to send, in order (none for [`Emit::Disconnect`]).
    pub fn into_frames(self) -> Vec<Vec<u8>> {
        match self {
            Emit::Nothing | Emit::Disconnect => Vec::new(),
            Emit::One(frame) => vec![frame],
            Emit::Two(first, second) => vec![first, second],
        }
    }

    /// Whether the transport should close the connection.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Emit::Disconnect)
    }
}

/// One item on the simulated wire, as produced by [`FaultInjector::apply_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Frame bytes.
    Frame(Vec<u8>),
    /// The connection is closed here.
    Disconnect,
}

/// Applies a [`FaultPlan`] to a stream of well-formed frames.
#[derive(Debug)]
pub struct FaultInjector {
    plan: FaultPlan,
    rng: SplitMix64,
    counts: FaultCounts,
    injected: Vec<(u64, FaultKind)>,
    held: Option<Vec<u8>>,
    dropping: HashSet<SegmentKey>,
}

/// `(exposure_id, raft, sensor, segment)`.
type SegmentKey = (u64, u8, u8, u8);

impl FaultInjector {
    /// An injector following `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        let rng = SplitMix64::new(plan.seed);
        Self {
            plan,
            rng,
            counts: FaultCounts::default(),
            injected: Vec::new(),
            held: None,
            dropping: HashSet::new(),
        }
    }

    /// Faults injected so far, per kind.
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    /// Every fault injected so far with the `frame_sequence` of the frame it hit, in order.
    pub fn injected(&self) -> &[(u64, FaultKind)] {
        &self.injected
    }

    /// What to send for `frame`, the next well-formed encoded frame of the stream.
    pub fn apply(&mut self, frame: Vec<u8>) -> Emit {
        // One draw per input frame whatever happens, so later choices do not depend on earlier ones.
        let draw = self.rng.unit();
        let Ok(header) = FrameHeader::parse(&frame) else {
            return self.send(frame);
        };
        let sequence = header.frame_sequence.get();
        let key = (header.exposure_id.get(), header.raft, header.sensor, header.segment);
        let ends_segment = header.flags & FLAG_END_OF_SEGMENT != 0;

        if self.dropping.contains(&key) {
            if ends_segment {
                self.dropping.remove(&key);
            }
            return Emit::Nothing;
        }
        if self.held.is_some() {
            return self.send(frame);
        }
        let kind = match self.plan.explicit.get(&sequence) {
            Some(&kind) => Some(kind),
            None => self.pick(draw, header.first_row.get() == 0),
        };
        let Some(kind) = kind else {
            return Emit::One(frame);
        };
        if kind != FaultKind::OutOfOrderFrame {
            self.record(sequence, kind);
        }
        match kind {
            FaultKind::BadMagic => Emit::One(self.corrupt(frame, 0..1)),
            FaultKind::BadHeaderCrc => Emit::One(self.corrupt(frame, 4..64)),
            FaultKind::BadPayloadCrc => {
                let payload = header.payload_length.get() as usize;
                Emit::One(self.corrupt(frame, FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + payload))
            }
            FaultKind::TruncatedFrame => {
                let mut frame = frame;
                let keep = self.rng.below(frame.len() as u64) as usize;
                frame.truncate(keep);
                Emit::One(frame)
            }
            FaultKind::WrongLength => {
                let mut frame = frame;
                // Every frame has at least one 4096-byte block of pixels, so shortening leaves
                // the header block intact and the receiver sees the length mismatch.
                if self.rng.next_u64() & 1 == 0 && frame.len() >= FRAME_HEADER_BLOCK_BYTES + FRAME_ALIGN_BYTES
                {
                    frame.truncate(frame.len() - FRAME_ALIGN_BYTES);
                } else {
                    frame.resize(frame.len() + FRAME_ALIGN_BYTES, 0);
                }
                Emit::One(frame)
            }
            FaultKind::DuplicatedFrame => Emit::Two(frame.clone(), frame),
            FaultKind::OutOfOrderFrame => {
                self.held = Some(frame);
                Emit::Nothing
            }
            FaultKind::MissingSegment => {
                if !ends_segment {
                    self.dropping.insert(key);
                }
                Emit::Nothing
            }
            FaultKind::DisconnectMidExposure => Emit::Disconnect,
        }
    }

    /// Ends the stream: a frame still held back for reordering, if any (sent in order, not counted).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.held.take()
    }

    /// Runs a whole stream through [`FaultInjector::apply`] and [`FaultInjector::finish`].
    pub fn apply_all(&mut self, frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<Wire> {
        let mut wire = Vec::new();
        for frame in frames {
            let emit = self.apply(frame);
            if emit.is_disconnect() {
                wire.push(Wire::Disconnect);
            }
            wire.extend(emit.into_frames().into_iter().map(Wire::Frame));
        }
        wire.extend(self.finish().map(Wire::Frame));
        wire
    }

    /// Sends `frame`, releasing a held-back frame after it.
    fn send(&mut self, frame: Vec<u8>) -> Emit {
        match self.held.take() {
            Some(held) => {
                if let Ok(header) = FrameHeader::parse(&held) {
                    self.record(header.frame_sequence.get(), FaultKind::OutOfOrderFrame);
                }
                Emit::Two(frame, held)
            }
            None => Emit::One(frame),
        }
    }

    fn record(&mut self, sequence: u64, kind: FaultKind) {
        self.counts.increment(kind);
        self.injected.push((sequence, kind));
    }

    fn pick(&self, draw: f64, starts_segment: bool) -> Option<FaultKind> {
        let mut cumulative = 0.0;
        for kind in FaultKind::ALL {
            cumulative += self.plan.rates[kind.index()];
            if draw < cumulative {
                return (kind != FaultKind::MissingSegment || starts_segment).then_some(kind);
            }
        }
        None
    }

    /// Alters one byte in `range` (XOR with a non-zero value).
    fn corrupt(&mut self, mut frame: Vec<u8>, range: std::ops::Range<usize>) -> Vec<u8> {
        let at = range.start + self.rng.below((range.end - range.start) as u64) as usize;
        frame[at] ^= 1 + self.rng.below(255) as u8;
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, encode_frame, frame_length_bytes, FrameFields, InstrumentCode};

    const COLUMNS: u16 = 16;
    const ROWS: u16 = 32;
    const ROWS_PER_FRAME: u16 = 8;

    /// Two exposures x two segments x four frames, `frame_sequence` 1..=16.
    fn stream() -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut sequence = 0;
        for exposure_id in [2025041500060u64, 2025041500061] {
            for segment in [10u8, 11] {
                for first_row in (0..ROWS).step_by(usize::from(ROWS_PER_FRAME)) {
                    sequence += 1;
                    let last = first_row + ROWS_PER_FRAME == ROWS;
                    let fields = FrameFields {
                        instrument: InstrumentCode::LsstCam,
                        flags: if last { FLAG_END_OF_SEGMENT } else { 0 },
                        raft: 22,
                        sensor: 11,
                        segment,
                        segment_columns: COLUMNS,
                        segment_rows: ROWS,
                        first_row,
                        row_count: ROWS_PER_FRAME,
                        exposure_id,
                        frame_sequence: sequence,
                        readout_ns: 1_744_700_000_000_000_000 + sequence,
                    };
                    let pixels: Vec<u8> = (0..usize::from(ROWS_PER_FRAME * COLUMNS))
                        .flat_map(|i| ((i as i32 * 37 + sequence as i32) & 0x3FFFF).to_be_bytes())
                        .collect();
                    let mut out = vec![0; frame_length_bytes(pixels.len())];
                    encode_frame(&fields, &pixels, &mut out);
                    frames.push(out);
                }
            }
        }
        frames
    }

    fn frames_of(wire: &[Wire]) -> Vec<&[u8]> {
        wire.iter()
            .filter_map(|item| match item {
                Wire::Frame(frame) => Some(frame.as_slice()),
                Wire::Disconnect => None,
            })
            .collect()
    }

    fn sequences(wire: &[Wire]) -> Vec<u64> {
        frames_of(wire).iter().map(|frame| decode_frame(frame).unwrap().frame_sequence.get()).collect()
    }

    #[test]
    fn an_empty_plan_changes_nothing() {
        let mut injector = FaultInjector::new(FaultPlan::new(1));
        let wire = injector.apply_all(stream());
        assert_eq!(wire, stream().into_iter().map(Wire::Frame).collect::<Vec<_>>());
        assert_eq!(injector.counts().total(), 0);
    }

    #[test]
    fn corrupted_frames_fail_decode_with_the_expected_error() {
        let corrupting = [
            FaultKind::BadMagic,
            FaultKind::BadHeaderCrc,
            FaultKind::BadPayloadCrc,
            FaultKind::TruncatedFrame,
            FaultKind::WrongLength,
        ];
        for kind in corrupting {
            for seed in 0..50 {
                let mut injector = FaultInjector::new(FaultPlan::new(seed).at(3, kind).at(14, kind));
                let wire = injector.apply_all(stream());
                let frames = frames_of(&wire);
                assert_eq!(frames.len(), 16);
                for (index, frame) in frames.iter().enumerate() {
                    let result = decode_frame(frame);
                    if index == 2 || index == 13 {
                        let error = result.unwrap_err();
                        assert!(kind.explains(&error), "{kind:?} seed {seed}: {error}");
                    } else {
                        assert_eq!(result.unwrap().frame_sequence.get(), index as u64 + 1);
                    }
                }
                assert_eq!(injector.counts().get(kind), 2);
                assert_eq!(injector.counts().total(), 2);
                assert_eq!(injector.injected(), &[(3, kind), (14, kind)]);
            }
        }
        // Both truncation outcomes happen.
        let outcomes: HashSet<bool> = (0..50)
            .map(|seed| {
                let mut injector = FaultInjector::new(FaultPlan::new(seed).at(1, FaultKind::TruncatedFrame));
                let Emit::One(frame) = injector.apply(stream().remove(0)) else { panic!() };
                matches!(decode_frame(&frame), Err(FrameError::Truncated { .. }))
            })
            .collect();
        assert_eq!(outcomes.len(), 2);
    }

    #[test]
    fn duplicates_repeat_a_frame_sequence() {
        let mut injector = FaultInjector::new(FaultPlan::new(7).at(5, FaultKind::DuplicatedFrame));
        let wire = injector.apply_all(stream());
        let seen = sequences(&wire);
        assert_eq!(seen.len(), 17);
        let repeated: Vec<u64> = seen.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        assert_eq!(repeated, vec![5]);
        assert_eq!(injector.counts().duplicated_frame, 1);
        assert_eq!(injector.counts().total(), 1);
    }

    #[test]
    fn out_of_order_frames_are_sent_after_the_next_one() {
        // Frame 6 is held; frame 7 would be faulted but overtakes 6 unchanged.
        let plan = FaultPlan::new(7)
            .at(6, FaultKind::OutOfOrderFrame)
            .at(7, FaultKind::BadMagic)
            .at(16, FaultKind::OutOfOrderFrame);
        let mut injector = FaultInjector::new(plan);
        let mut first = stream();
        let emits: Vec<Emit> = first.drain(..7).map(|frame| injector.apply(frame)).collect();
        assert_eq!(emits[5], Emit::Nothing);
        assert!(matches!(emits[6], Emit::Two(..)));
        let mut wire = Vec::new();
        for emit in emits {
            wire.extend(emit.into_frames().into_iter().map(Wire::Frame));
        }
        wire.extend(injector.apply_all(first));
        let seen = sequences(&wire);
        let mut expected: Vec<u64> = (1..=16).collect();
        expected.swap(5, 6);
        assert_eq!(seen, expected, "16 is held at the end and flushed in order");
        let descents: Vec<(u64, u64)> =
            seen.windows(2).filter(|w| w[1] < w[0]).map(|w| (w[0], w[1])).collect();
        assert_eq!(descents, vec![(7, 6)]);
        assert_eq!(injector.counts().out_of_order_frame, 1);
        assert_eq!(injector.counts().total(), 1);
        assert_eq!(injector.injected(), &[(6, FaultKind::OutOfOrderFrame)]);
    }

    #[test]
    fn a_missing_segment_drops_all_its_frames() {
        // Frame 9 starts exposure 61, segment 10.
        let mut injector = FaultInjector::new(FaultPlan::new(3).at(9, FaultKind::MissingSegment));
        let wire = injector.apply_all(stream());
        let seen = sequences(&wire);
        assert_eq!(seen, (1..=8).chain(13..=16).collect::<Vec<_>>());
        let segments: HashSet<SegmentKey> = frames_of(&wire)
            .iter()
            .map(|frame| {
                let header = decode_frame(frame).unwrap();
                (header.exposure_id.get(), header.raft, header.sensor, header.segment)
            })
            .collect();
        assert_eq!(segments.len(), 3);
        assert!(!segments.contains(&(2025041500061, 22, 11, 10)));
        assert_eq!(injector.counts().missing_segment, 1);
        assert_eq!(injector.counts().total(), 1);
    }

    #[test]
    fn a_disconnect_replaces_its_frame() {
        let mut injector = FaultInjector::new(FaultPlan::new(3).at(10, FaultKind::DisconnectMidExposure));
        let wire = injector.apply_all(stream());
        assert_eq!(wire.len(), 16);
        assert_eq!(wire[9], Wire::Disconnect);
        assert_eq!(sequences(&wire), (1..=9).chain(11..=16).collect::<Vec<_>>());
        assert_eq!(injector.counts().disconnect_mid_exposure, 1);
    }

    fn random_plan(seed: u64) -> FaultPlan {
        FaultKind::ALL.iter().fold(FaultPlan::new(seed), |plan, &kind| plan.with_rate(kind, 0.08))
    }

    #[test]
    fn same_plan_and_input_give_the_same_output() {
        let input: Vec<Vec<u8>> = (0..8).flat_map(|_| stream()).collect();
        let mut a = FaultInjector::new(random_plan(42));
        let mut b = FaultInjector::new(random_plan(42));
        let mut c = FaultInjector::new(random_plan(43));
        let wire_a = a.apply_all(input.clone());
        assert_eq!(wire_a, b.apply_all(input.clone()));
        assert_eq!(a.counts(), b.counts());
        assert_eq!(a.injected(), b.injected());
        assert_ne!(wire_a, c.apply_all(input));
        let counts = a.counts();
        assert!(counts.total() > 10, "{counts:?}");
        assert_eq!(counts.total(), a.injected().len() as u64);
        let undecodable = frames_of(&wire_a).iter().filter(|frame| decode_frame(frame).is_err()).count();
        let corrupting = counts.bad_magic
            + counts.bad_header_crc
            + counts.bad_payload_crc
            + counts.truncated_frame
            + counts.wrong_length;
        assert_eq!(undecodable as u64, corrupting);
        let disconnects = wire_a.iter().filter(|item| **item == Wire::Disconnect).count();
        assert_eq!(disconnects as u64, counts.disconnect_mid_exposure);
    }

    #[test]
    #[should_panic(expected = "more than 1")]
    fn rates_above_one_are_refused() {
        let _ = FaultPlan::new(0).with_rate(FaultKind::BadMagic, 0.6).with_rate(FaultKind::WrongLength, 0.6);
    }
}
