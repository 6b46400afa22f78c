//! The observing-night schedule (issue 3 item 5): pure, deterministic, lazy.
//!
//! A [`NightPlan`] (start instant, LSSTCam visit count and timing, rows per readout step, an
//! optional [`LatissPlan`], a seed) and the two focal planes (LSSTCam, possibly a raft subset, and
//! LATISS) give a [`NightSchedule`]: an iterator of [`TimedEvent`]s in non-decreasing simulated
//! time, merged across the two cameras. Per exposure it yields the Header Service's
//! `StartIntegration` at shutter open, then the readout [`Event::Frame`]s paced evenly over the
//! readout window (all segments read in parallel, `frames_per_segment` steps), then `EndReadout`
//! at shutter close + readout, at the same instant as the last frames.
//!
//! No threads, no sleeping, no wall clock: time is simulated Unix nanoseconds (UTC) starting at
//! [`NightPlan::start_unix_ns`]. A driver paces real time with [`TimeCompression`].
//!
//! Memory is bounded: each camera holds at most its current exposure's two header events and a
//! frame cursor, whatever the visit count ([`NightSchedule::buffered_header_event_count`]).
//!
//! # Simplifications (not in `domain.md`)
//!
//! - Every LSSTCam visit is a SCIENCE exposure of the same length in the same filter
//!   ([`LSSTCAM_FILTER`]); no u-band 38 s visits, no calibration frames, no slews or filter
//!   changes beyond the fixed gap. LATISS likewise ([`LATISS_FILTER`]), on its own cadence from the
//!   same start instant.
//! - Pointing (RA, DEC, ROTPA, AIRMASS) is drawn from the seed and the exposure's index, not from
//!   a survey strategy.
//! - Readout must take the Header Service's [`READOUT_SECONDS`]; frames split each segment's
//!   [`SEGMENT_ROWS`] rows into `frames_per_segment` near-equal row ranges, the k-th stamped at
//!   shutter close + (k+1)/`frames_per_segment` of the readout.
//! - Ties in time: LSSTCam's event first; within an exposure, frames in (step, detector, segment)
//!   order, and `EndReadout` after the last frame.

use crate::random::{mix, unit};
use std::time::Duration;

use crate::geometry::{Focalplane, Instrument, SEGMENT_ROWS};
use crate::header_service::{
    Controller, ExposureRequest, HeaderEvent, HeaderService, ImageType, MAX_EXPTIME_SECONDS, MAX_SEQNUM,
    READOUT_SECONDS,
};

const NS_PER_SECOND: i64 = 1_000_000_000;
/// FILTER of every simulated LSSTCam visit (placeholder).
pub const LSSTCAM_FILTER: &str = "r_57";
/// FILTER of every simulated LATISS exposure (placeholder).
pub const LATISS_FILTER: &str = "SDSSr_65mm";

/// LATISS's own cadence: `count` exposures, one every `cadence_seconds`, from the night's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatissPlan {
    /// EXPTIME of each exposure, seconds.
    pub exposure_seconds: f64,
    /// From one shutter open to the next, seconds; at least exposure + readout.
    pub cadence_seconds: f64,
    /// How many exposures.
    pub count: u32,
}

/// What the night consists of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NightPlan {
    /// First shutter open of both cameras, nanoseconds since 1970-01-01 UTC.
    pub start_unix_ns: i64,
    /// Number of LSSTCam visits (one exposure each).
    pub visit_count: u32,
    /// LSSTCam EXPTIME, seconds (30.0).
    pub exposure_seconds: f64,
    /// From the end of one visit's readout to the next shutter open, seconds (8.0 for a 40 s
    /// cadence with 30 s exposures and 2 s readout).
    pub visit_gap_seconds: f64,
    /// Shutter close to end of readout, seconds; must equal [`READOUT_SECONDS`] (2.0).
    pub readout_seconds: f64,
    /// Readout steps: each segment's rows arrive in this many frames, 1..=[`SEGMENT_ROWS`].
    pub frames_per_segment: u32,
    /// LATISS's exposures, if it observes tonight.
    pub latiss: Option<LatissPlan>,
    /// Seed of pointing and weather: same plan, same night.
    pub seed: u64,
}

impl NightPlan {
    /// The baseline LSSTCam night: 30 s visits every 40 s (2 s readout, 8 s gap), 4 frames per
    /// segment, no LATISS.
    pub const fn baseline(start_unix_ns: i64, visit_count: u32, seed: u64) -> NightPlan {
        NightPlan {
            start_unix_ns,
            visit_count,
            exposure_seconds: 30.0,
            visit_gap_seconds: 8.0,
            readout_seconds: READOUT_SECONDS as f64,
            frames_per_segment: 4,
            latiss: None,
            seed,
        }
    }
}

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NightPlanError {
    /// A duration that is negative, not finite or too long.
    #[error("{field} = {value} s is not in 0..={MAX_EXPTIME_SECONDS} s")]
    InvalidSeconds {
        /// The plan field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// The readout differs from what the Header Service stamps on `EndReadout`.
    #[error("readout_seconds = {0} s, but the Header Service's readout is {READOUT_SECONDS} s")]
    ReadoutMismatch(f64),
    /// `frames_per_segment` outside 1..=SEGMENT_ROWS.
    #[error("frames_per_segment = {0} is not in 1..={SEGMENT_ROWS}")]
    InvalidFramesPerSegment(u32),
    /// More exposures than six-digit SEQNUMs.
    #[error("{field} = {value} exceeds {MAX_SEQNUM}, the SEQNUMs of one observing day")]
    TooManyExposures {
        /// The plan field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// LATISS would open its shutter before its previous readout ends.
    #[error("LATISS cadence {cadence_seconds} s is shorter than exposure + readout ({busy_seconds} s)")]
    LatissCadenceTooShort {
        /// The cadence asked for.
        cadence_seconds: f64,
        /// Exposure plus readout.
        busy_seconds: f64,
    },
    /// A focal plane passed for the wrong camera.
    #[error("focal plane for {expected:?} is of {found:?}")]
    WrongFocalplane {
        /// The camera expected.
        expected: Instrument,
        /// The camera passed.
        found: Instrument,
    },
}

/// What happens at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A Header Service event (`StartIntegration` or `EndReadout`), boxed so that the far more
    /// numerous frame events stay small.
    Header(Box<HeaderEvent>),
    /// One frame of readout: consecutive rows of one segment.
    Frame {
        /// DAYOBS x 100000 + SEQNUM, as in the header events.
        exposure_id: u64,
        /// Index into the focal plane's [`Focalplane::detectors`].
        detector: usize,
        /// Segment index within the detector.
        segment: usize,
        /// First row carried (0-based).
        first_row: u32,
        /// Rows carried.
        row_count: u32,
        /// This frame holds the segment's last rows.
        end_of_segment: bool,
        /// This is the exposure's last frame.
        end_of_exposure: bool,
    },
}

/// An [`Event`] of one camera at a simulated instant.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    /// Simulated time, nanoseconds since 1970-01-01 UTC.
    pub sim_time_ns: i64,
    /// The camera.
    pub instrument: Instrument,
    /// What happens.
    pub event: Event,
}

/// Simulated time runs `factor` times faster than wall time (600: a 10 h night in 1 min).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeCompression {
    /// Simulated seconds per wall second; finite and > 0.
    pub factor: f64,
}

impl TimeCompression {
    /// The wall-clock offset from the driver's start at which an event `sim_offset` after the
    /// night's start is due.
    pub fn wall_offset(&self, sim_offset: Duration) -> Duration {
        assert!(self.factor.is_finite(), "compression factor must be finite");
        assert!(self.factor > 0.0, "compression factor must be positive");
        Duration::from_nanos((sim_offset.as_nanos() as f64 / self.factor).round() as u64)
    }
}

/// Fixed timing of one camera's exposures, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Timing {
    instrument: Instrument,
    first_start_unix_ns: i64,
    period_ns: i64,
    exposure_seconds: f64,
    exposure_ns: i64,
    readout_ns: i64,
    count: u32,
    frames_per_segment: u32,
}

/// Where a camera is within its current exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `StartIntegration` is next.
    Start,
    /// The frame of readout step `step`, detector `detector`, segment `segment` is next.
    Frames { step: u32, detector: usize, segment: usize },
    /// `EndReadout` is next.
    End,
}

/// One camera's lazy event stream: the current exposure only.
#[derive(Debug)]
struct CameraStream<'a> {
    timing: Timing,
    focalplane: &'a Focalplane,
    seed: u64,
    /// Index of the next exposure to start.
    next_exposure: u32,
    /// The current exposure's shutter-open instant, id and header events not yet yielded.
    start_unix_ns: i64,
    exposure_id: u64,
    start_event: Option<Box<HeaderEvent>>,
    end_event: Option<Box<HeaderEvent>>,
    phase: Option<Phase>,
}

impl<'a> CameraStream<'a> {
    fn new(timing: Timing, focalplane: &'a Focalplane, seed: u64) -> CameraStream<'a> {
        assert!(timing.frames_per_segment >= 1);
        assert!(!focalplane.detectors().is_empty());
        CameraStream {
            timing,
            focalplane,
            seed,
            next_exposure: 0,
            start_unix_ns: 0,
            exposure_id: 0,
            start_event: None,
            end_event: None,
            phase: None,
        }
    }

    /// Starts the next exposure if the current one is finished; `false` when the night is over.
    fn ensure_exposure(&mut self, header_service: &mut HeaderService) -> bool {
        if self.phase.is_some() {
            return true;
        }
        if self.next_exposure >= self.timing.count {
            return false;
        }
        let index = self.next_exposure;
        self.next_exposure += 1;
        let request = self.request(index);
        let [start, end] =
            header_service.exposure(&request).expect("the plan was validated in NightSchedule::new");
        self.start_unix_ns = request.start_unix_ns;
        self.exposure_id = start.metadata.exposure_id;
        self.start_event = Some(Box::new(start));
        self.end_event = Some(Box::new(end));
        self.phase = Some(Phase::Start);
        true
    }

    fn request(&self, index: u32) -> ExposureRequest {
        let timing = &self.timing;
        let draw = |channel: u64| {
            let instrument_code = timing.instrument as u64;
            unit(mix(self.seed ^ mix((instrument_code << 56) ^ (u64::from(index) << 8) ^ channel)))
        };
        ExposureRequest {
            instrument: timing.instrument,
            controller: Controller::Ocs,
            start_unix_ns: timing.first_start_unix_ns + i64::from(index) * timing.period_ns,
            exptime_s: timing.exposure_seconds,
            image_type: ImageType::Science,
            filter: match timing.instrument {
                Instrument::LsstCam => LSSTCAM_FILTER,
                Instrument::Latiss => LATISS_FILTER,
            }
            .to_owned(),
            ra: 360.0 * draw(1),
            dec: -90.0 + 80.0 * draw(2),
            rotpa: 360.0 * draw(3),
            airmass: 1.0 + 1.0 * draw(4),
            weather_seed: self.seed,
        }
    }

    /// The time of the next event, starting the next exposure if needed.
    fn peek_time(&mut self, header_service: &mut HeaderService) -> Option<i64> {
        if !self.ensure_exposure(header_service) {
            return None;
        }
        let close_ns = self.start_unix_ns + self.timing.exposure_ns;
        match self.phase.expect("ensure_exposure set a phase") {
            Phase::Start => Some(self.start_unix_ns),
            Phase::Frames { step, .. } => Some(close_ns + self.step_offset_ns(step + 1)),
            Phase::End => Some(close_ns + self.timing.readout_ns),
        }
    }

    /// The instant `steps_done` of the readout steps are complete, from shutter close.
    fn step_offset_ns(&self, steps_done: u32) -> i64 {
        self.timing.readout_ns * i64::from(steps_done) / i64::from(self.timing.frames_per_segment)
    }

    /// Yields the next event; call [`CameraStream::peek_time`] first.
    fn take(&mut self, sim_time_ns: i64) -> TimedEvent {
        let phase = self.phase.expect("peek_time started an exposure");
        let event = match phase {
            Phase::Start => {
                self.phase = Some(Phase::Frames { step: 0, detector: 0, segment: 0 });
                Event::Header(self.start_event.take().expect("StartIntegration yielded once"))
            }
            Phase::End => {
                self.phase = None;
                Event::Header(self.end_event.take().expect("EndReadout yielded once"))
            }
            Phase::Frames { step, detector, segment } => self.take_frame(step, detector, segment),
        };
        TimedEvent { sim_time_ns, instrument: self.timing.instrument, event }
    }

    fn take_frame(&mut self, step: u32, detector: usize, segment: usize) -> Event {
        let steps = self.timing.frames_per_segment;
        let detectors = self.focalplane.detectors();
        let last_segment = segment + 1 == detectors[detector].segment_count();
        let last_detector = detector + 1 == detectors.len();
        let last_step = step + 1 == steps;
        let first_row = row_boundary(step, steps);
        let row_count = row_boundary(step + 1, steps) - first_row;
        assert!(row_count > 0);
        self.phase = Some(match (last_segment, last_detector, last_step) {
            (false, _, _) => Phase::Frames { step, detector, segment: segment + 1 },
            (true, false, _) => Phase::Frames { step, detector: detector + 1, segment: 0 },
            (true, true, false) => Phase::Frames { step: step + 1, detector: 0, segment: 0 },
            (true, true, true) => Phase::End,
        });
        Event::Frame {
            exposure_id: self.exposure_id,
            detector,
            segment,
            first_row,
            row_count,
            end_of_segment: last_step,
            end_of_exposure: last_step && last_detector && last_segment,
        }
    }

    fn buffered_header_event_count(&self) -> usize {
        usize::from(self.start_event.is_some()) + usize::from(self.end_event.is_some())
    }
}

/// First row of readout step `step` of `steps`: rows split as evenly as integers allow.
fn row_boundary(step: u32, steps: u32) -> u32 {
    step * SEGMENT_ROWS / steps
}

/// The night's events in time order, generated one exposure at a time (see the module docs).
#[derive(Debug)]
pub struct NightSchedule<'a> {
    header_service: HeaderService,
    lsstcam: CameraStream<'a>,
    latiss: CameraStream<'a>,
}

impl<'a> NightSchedule<'a> {
    /// Validates `plan` and the focal planes; nothing is generated until iteration.
    pub fn new(
        plan: NightPlan,
        lsstcam: &'a Focalplane,
        latiss: &'a Focalplane,
    ) -> Result<NightSchedule<'a>, NightPlanError> {
        check_focalplane(lsstcam, Instrument::LsstCam)?;
        check_focalplane(latiss, Instrument::Latiss)?;
        let exposure_ns = checked_ns("exposure_seconds", plan.exposure_seconds)?;
        let gap_ns = checked_ns("visit_gap_seconds", plan.visit_gap_seconds)?;
        let readout_ns = checked_ns("readout_seconds", plan.readout_seconds)?;
        if readout_ns != READOUT_SECONDS * NS_PER_SECOND {
            return Err(NightPlanError::ReadoutMismatch(plan.readout_seconds));
        }
        if !(1..=SEGMENT_ROWS).contains(&plan.frames_per_segment) {
            return Err(NightPlanError::InvalidFramesPerSegment(plan.frames_per_segment));
        }
        check_count("visit_count", plan.visit_count)?;
        let lsstcam_timing = Timing {
            instrument: Instrument::LsstCam,
            first_start_unix_ns: plan.start_unix_ns,
            period_ns: exposure_ns + readout_ns + gap_ns,
            exposure_seconds: plan.exposure_seconds,
            exposure_ns,
            readout_ns,
            count: plan.visit_count,
            frames_per_segment: plan.frames_per_segment,
        };
        let latiss_timing = match plan.latiss {
            None => Timing { count: 0, instrument: Instrument::Latiss, ..lsstcam_timing },
            Some(latiss_plan) => {
                let latiss_exposure_ns = checked_ns("latiss.exposure_seconds", latiss_plan.exposure_seconds)?;
                let cadence_ns = checked_ns("latiss.cadence_seconds", latiss_plan.cadence_seconds)?;
                if cadence_ns < latiss_exposure_ns + readout_ns {
                    return Err(NightPlanError::LatissCadenceTooShort {
                        cadence_seconds: latiss_plan.cadence_seconds,
                        busy_seconds: latiss_plan.exposure_seconds + plan.readout_seconds,
                    });
                }
                check_count("latiss.count", latiss_plan.count)?;
                Timing {
                    instrument: Instrument::Latiss,
                    first_start_unix_ns: plan.start_unix_ns,
                    period_ns: cadence_ns,
                    exposure_seconds: latiss_plan.exposure_seconds,
                    exposure_ns: latiss_exposure_ns,
                    readout_ns,
                    count: latiss_plan.count,
                    frames_per_segment: plan.frames_per_segment,
                }
            }
        };
        Ok(NightSchedule {
            header_service: HeaderService::new(),
            lsstcam: CameraStream::new(lsstcam_timing, lsstcam, plan.seed),
            latiss: CameraStream::new(latiss_timing, latiss, plan.seed),
        })
    }

    /// The focal plane of `instrument` that this schedule's [`Event::Frame::detector`] indices
    /// refer to.
    pub fn focalplane(&self, instrument: Instrument) -> &'a Focalplane {
        match instrument {
            Instrument::LsstCam => self.lsstcam.focalplane,
            Instrument::Latiss => self.latiss.focalplane,
        }
    }

    /// Header events generated but not yet yielded, both cameras: never more than 4, whatever the
    /// night's length (the schedule holds one exposure per camera).
    pub fn buffered_header_event_count(&self) -> usize {
        self.lsstcam.buffered_header_event_count() + self.latiss.buffered_header_event_count()
    }
}

impl Iterator for NightSchedule<'_> {
    type Item = TimedEvent;

    fn next(&mut self) -> Option<TimedEvent> {
        let lsstcam_time = self.lsstcam.peek_time(&mut self.header_service);
        let latiss_time = self.latiss.peek_time(&mut self.header_service);
        match (lsstcam_time, latiss_time) {
            (None, None) => None,
            (Some(time), None) => Some(self.lsstcam.take(time)),
            (None, Some(time)) => Some(self.latiss.take(time)),
            (Some(lsstcam), Some(latiss)) if lsstcam <= latiss => Some(self.lsstcam.take(lsstcam)),
            (Some(_), Some(latiss)) => Some(self.latiss.take(latiss)),
        }
    }
}

fn check_focalplane(focalplane: &Focalplane, expected: Instrument) -> Result<(), NightPlanError> {
    if focalplane.instrument() != expected {
        return Err(NightPlanError::WrongFocalplane { expected, found: focalplane.instrument() });
    }
    Ok(())
}

/// Seconds to nanoseconds, rounded as the Header Service rounds EXPTIME.
fn checked_ns(field: &'static str, seconds: f64) -> Result<i64, NightPlanError> {
    if !(seconds.is_finite() && (0.0..=MAX_EXPTIME_SECONDS).contains(&seconds)) {
        return Err(NightPlanError::InvalidSeconds { field, value: seconds });
    }
    Ok((seconds * NS_PER_SECOND as f64).round() as i64)
}

fn check_count(field: &'static str, value: u32) -> Result<(), NightPlanError> {
    if value > MAX_SEQNUM {
        return Err(NightPlanError::TooManyExposures { field, value });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::header_service::{exposure_id, EventKind};

    /// 2025-04-15T23:00:00Z: DAYOBS 20250415 for the whole night.
    const START_UNIX_NS: i64 = 1_744_758_000 * NS_PER_SECOND;

    fn r22() -> Focalplane {
        Focalplane::lsstcam_subset(&["R22"]).expect("R22 exists")
    }

    fn header(event: &TimedEvent) -> Option<&HeaderEvent> {
        match &event.event {
            Event::Header(header) => Some(header),
            Event::Frame { .. } => None,
        }
    }

    #[test]
    fn event_times_never_decrease_across_both_cameras() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let mut plan = NightPlan::baseline(START_UNIX_NS, 5, 7);
        plan.latiss = Some(LatissPlan { exposure_seconds: 20.0, cadence_seconds: 27.0, count: 8 });
        let mut previous = i64::MIN;
        for event in NightSchedule::new(plan, &lsstcam, &latiss).unwrap() {
            assert!(event.sim_time_ns >= previous, "{event:?} after {previous}");
            previous = event.sim_time_ns;
        }
    }

    #[test]
    fn every_segment_of_an_exposure_gets_each_row_exactly_once() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let plan = NightPlan::baseline(START_UNIX_NS, 1, 1);
        let mut rows: HashMap<(usize, usize), Vec<u32>> = HashMap::new();
        let mut end_of_exposure_count = 0;
        let mut frame_count = 0;
        let mut last_was_end_of_exposure = false;
        for event in NightSchedule::new(plan, &lsstcam, &latiss).unwrap() {
            let Event::Frame {
                detector, segment, first_row, row_count, end_of_segment, end_of_exposure, ..
            } = event.event
            else {
                continue;
            };
            frame_count += 1;
            let seen = rows.entry((detector, segment)).or_default();
            assert_eq!(first_row, seen.len() as u32, "rows arrive in order, without gaps");
            seen.extend(first_row..first_row + row_count);
            assert_eq!(end_of_segment, seen.len() as u32 == SEGMENT_ROWS);
            end_of_exposure_count += usize::from(end_of_exposure);
            last_was_end_of_exposure = end_of_exposure;
        }
        assert_eq!(rows.len(), lsstcam.segment_count());
        assert_eq!(rows.len(), 9 * 16);
        for seen in rows.values() {
            assert_eq!(*seen, (0..SEGMENT_ROWS).collect::<Vec<_>>());
        }
        assert_eq!(frame_count, 9 * 16 * 4);
        assert_eq!(end_of_exposure_count, 1);
        assert!(last_was_end_of_exposure);
    }

    #[test]
    fn frames_are_paced_evenly_over_the_readout_and_end_readout_comes_last() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let plan = NightPlan::baseline(START_UNIX_NS, 1, 1);
        let events: Vec<TimedEvent> = NightSchedule::new(plan, &lsstcam, &latiss).unwrap().collect();
        let close = START_UNIX_NS + 30 * NS_PER_SECOND;
        let mut frame_times: Vec<i64> = events
            .iter()
            .filter(|event| matches!(event.event, Event::Frame { .. }))
            .map(|event| event.sim_time_ns)
            .collect();
        frame_times.dedup();
        let step = NS_PER_SECOND / 2;
        assert_eq!(frame_times, vec![close + step, close + 2 * step, close + 3 * step, close + 4 * step]);

        let first = header(&events[0]).expect("StartIntegration first");
        assert_eq!(first.kind, EventKind::StartIntegration);
        assert_eq!(events[0].sim_time_ns, START_UNIX_NS);
        let last = header(events.last().unwrap()).expect("EndReadout last");
        assert_eq!(last.kind, EventKind::EndReadout);
        assert_eq!(last.time_unix_ns, START_UNIX_NS + 32 * NS_PER_SECOND);
        assert_eq!(events.last().unwrap().sim_time_ns, last.time_unix_ns);
    }

    #[test]
    fn visits_follow_the_forty_second_cadence() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let mut plan = NightPlan::baseline(START_UNIX_NS, 6, 1);
        plan.frames_per_segment = 1;
        let starts: Vec<i64> = NightSchedule::new(plan, &lsstcam, &latiss)
            .unwrap()
            .filter_map(|event| {
                header(&event).filter(|h| h.kind == EventKind::StartIntegration).map(|h| h.time_unix_ns)
            })
            .collect();
        let expected: Vec<i64> = (0..6).map(|i| START_UNIX_NS + i * 40 * NS_PER_SECOND).collect();
        assert_eq!(starts, expected);
    }

    #[test]
    fn latiss_events_interleave_with_lsstcam_in_time_order() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let mut plan = NightPlan::baseline(START_UNIX_NS, 3, 1);
        plan.frames_per_segment = 2;
        plan.latiss = Some(LatissPlan { exposure_seconds: 15.0, cadence_seconds: 25.0, count: 4 });
        let headers: Vec<(Instrument, EventKind, i64)> = NightSchedule::new(plan, &lsstcam, &latiss)
            .unwrap()
            .filter_map(|event| header(&event).map(|h| (event.instrument, h.kind, h.time_unix_ns)))
            .collect();
        let s = |seconds: i64| START_UNIX_NS + seconds * NS_PER_SECOND;
        use EventKind::{EndReadout as End, StartIntegration as Start};
        use Instrument::{Latiss as At, LsstCam as Mc};
        let expected = vec![
            (Mc, Start, s(0)),
            (At, Start, s(0)),
            (At, End, s(17)),
            (At, Start, s(25)),
            (Mc, End, s(32)),
            (Mc, Start, s(40)),
            (At, End, s(42)),
            (At, Start, s(50)),
            (At, End, s(67)),
            (Mc, End, s(72)),
            (At, Start, s(75)),
            (Mc, Start, s(80)),
            (At, End, s(92)),
            (Mc, End, s(112)),
        ];
        assert_eq!(headers, expected);
    }

    #[test]
    fn frame_exposure_ids_match_the_header_events() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let mut plan = NightPlan::baseline(START_UNIX_NS, 3, 1);
        plan.frames_per_segment = 1;
        plan.latiss = Some(LatissPlan { exposure_seconds: 10.0, cadence_seconds: 30.0, count: 2 });
        let mut current: HashMap<Instrument, u64> = HashMap::new();
        let mut seqnums: HashMap<Instrument, Vec<u32>> = HashMap::new();
        for event in NightSchedule::new(plan, &lsstcam, &latiss).unwrap() {
            match &event.event {
                Event::Header(h) => {
                    assert_eq!(h.metadata.dayobs, 20250415);
                    assert_eq!(h.metadata.exposure_id, exposure_id(h.metadata.dayobs, h.metadata.seqnum));
                    if h.kind == EventKind::StartIntegration {
                        current.insert(event.instrument, h.metadata.exposure_id);
                        seqnums.entry(event.instrument).or_default().push(h.metadata.seqnum);
                    } else {
                        assert_eq!(current[&event.instrument], h.metadata.exposure_id);
                    }
                }
                Event::Frame { exposure_id, .. } => assert_eq!(current[&event.instrument], *exposure_id),
            }
        }
        assert_eq!(seqnums[&Instrument::LsstCam], vec![1, 2, 3]);
        assert_eq!(seqnums[&Instrument::Latiss], vec![1, 2]);
        assert_eq!(current[&Instrument::LsstCam], 20250415 * 100_000 + 3);
    }

    #[test]
    fn a_thousand_visit_night_is_generated_lazily_with_bounded_buffering() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let mut plan = NightPlan::baseline(START_UNIX_NS, 1000, 3);
        plan.frames_per_segment = 1;
        let mut schedule = NightSchedule::new(plan, &lsstcam, &latiss).unwrap();
        assert_eq!(schedule.buffered_header_event_count(), 0, "nothing generated before iteration");
        let mut event_count = 0u64;
        let mut last_time = 0;
        while let Some(event) = schedule.next() {
            assert!(schedule.buffered_header_event_count() <= 1, "one camera, one exposure at most");
            event_count += 1;
            last_time = event.sim_time_ns;
        }
        assert_eq!(event_count, 1000 * (2 + 9 * 16));
        assert_eq!(last_time, START_UNIX_NS + (999 * 40 + 32) * NS_PER_SECOND);
    }

    #[test]
    fn same_plan_same_night() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let mut plan = NightPlan::baseline(START_UNIX_NS, 2, 11);
        plan.frames_per_segment = 1;
        plan.latiss = Some(LatissPlan { exposure_seconds: 5.0, cadence_seconds: 20.0, count: 3 });
        let first: Vec<TimedEvent> = NightSchedule::new(plan, &lsstcam, &latiss).unwrap().collect();
        let second: Vec<TimedEvent> = NightSchedule::new(plan, &lsstcam, &latiss).unwrap().collect();
        assert_eq!(first, second);
    }

    #[test]
    fn invalid_plans_are_refused() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let base = NightPlan::baseline(START_UNIX_NS, 1, 1);
        let refuse = |plan: NightPlan| NightSchedule::new(plan, &lsstcam, &latiss).unwrap_err();
        assert_eq!(refuse(NightPlan { readout_seconds: 3.0, ..base }), NightPlanError::ReadoutMismatch(3.0));
        assert_eq!(
            refuse(NightPlan { frames_per_segment: 0, ..base }),
            NightPlanError::InvalidFramesPerSegment(0)
        );
        assert!(matches!(
            refuse(NightPlan { exposure_seconds: f64::NAN, ..base }),
            NightPlanError::InvalidSeconds { field: "exposure_seconds", .. }
        ));
        let latiss_plan = LatissPlan { exposure_seconds: 30.0, cadence_seconds: 31.0, count: 1 };
        assert!(matches!(
            refuse(NightPlan { latiss: Some(latiss_plan), ..base }),
            NightPlanError::LatissCadenceTooShort { .. }
        ));
        let swapped = NightSchedule::new(base, &latiss, &lsstcam).unwrap_err();
        assert_eq!(
            swapped,
            NightPlanError::WrongFocalplane { expected: Instrument::LsstCam, found: Instrument::Latiss }
        );
    }

    #[test]
    fn a_ten_hour_night_at_factor_600_takes_one_minute() {
        let compression = TimeCompression { factor: 600.0 };
        assert_eq!(compression.wall_offset(Duration::from_secs(10 * 3600)), Duration::from_secs(60));
        assert_eq!(compression.wall_offset(Duration::from_secs(40)), Duration::from_nanos(66_666_667));
        assert_eq!(
            TimeCompression { factor: 1.0 }.wall_offset(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(compression.wall_offset(Duration::ZERO), Duration::ZERO);
    }
}
