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
//! # Revisits and injected transients (optional)
//!
//! With [`NightPlan::revisits`] set, LSSTCam visits come in PAIRS on the same field, as the survey
//! takes them: visits `2k` and `2k + 1` (0-based) share a field id ([`NightPlan::field_id`]) and
//! the pointing in their header events (RA, DEC, ROTPA and AIRMASS), so their frames show the same
//! stars on the same pixels ([`crate::pixels::Scene`]). In the second visit of each pair a
//! transient appears in every segment of a chosen fraction of the detectors, with the flux the
//! [`RevisitPlan`] gives. Each [`Event::Frame`] carries its [`Scene`], and [`NightPlan::scene`]
//! computes it from the plan alone, so a verifier can regenerate any frame without the schedule;
//! [`NightPlan::transient_sites`] lists where the transients of an exposure are, for first-look
//! tests. LATISS exposures are never paired and never get transients. Without revisits (the
//! baseline) every frame's scene is [`Scene::default`] and nothing changes.
//!
//! # Simplifications (not in `domain.md`)
//!
//! - Every LSSTCam visit is a SCIENCE exposure of the same length in the same filter
//!   ([`LSSTCAM_FILTER`]); no u-band 38 s visits, no calibration frames, no slews or filter
//!   changes beyond the fixed gap. LATISS likewise ([`LATISS_FILTER`]), on its own cadence from the
//!   same start instant.
//! - Pointing (RA, DEC, ROTPA, AIRMASS) is drawn from the seed and the exposure's index (the pair's
//!   first index with revisits), not from a survey strategy; a revisit repeats the airmass too,
//!   although the real one drifts in the 40 s between the two visits.
//! - Revisit pairs are back to back (the survey separates a pair by tens of minutes) and the
//!   transient is switched on in the second visit only: no light curve, no disappearing sources.
//! - Readout must take the Header Service's [`READOUT_SECONDS`]; frames split each segment's
//!   [`SEGMENT_ROWS`] rows into `frames_per_segment` near-equal row ranges, the k-th stamped at
//!   shutter close + (k+1)/`frames_per_segment` of the readout.
//! - Ties in time: LSSTCam's event first; within an exposure, frames in (step, detector, segment)
//!   order, and `EndReadout` after the last frame.

use crate::random::{mix, unit};
use std::time::Duration;

use crate::geometry::{Detector, Focalplane, Instrument, SEGMENT_ROWS};
use crate::header_service::{
    Controller, ExposureRequest, HeaderEvent, HeaderService, ImageType, MAX_EXPTIME_SECONDS, MAX_SEQNUM,
    READOUT_SECONDS,
};
use crate::pixels::{hash_name, transient_site, Scene, Transient, STAR_FLUX_MAX_ADU};

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

/// LSSTCam visits in pairs on one field, with a transient in the second visit of each pair (see
/// the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RevisitPlan {
    /// Total flux of each transient, ADU (`0..=`[`STAR_FLUX_MAX_ADU`]; 0: pairs without transients).
    pub transient_flux_adu: f64,
    /// Fraction of the detectors (0..=1) whose segments get a transient; 1.0: all of them. Which
    /// detectors is drawn per pair from the plan's seed.
    pub transient_detector_fraction: f64,
}

impl RevisitPlan {
    /// A transient of `transient_flux_adu` ADU in every segment of every detector.
    pub const fn everywhere(transient_flux_adu: f64) -> RevisitPlan {
        RevisitPlan { transient_flux_adu, transient_detector_fraction: 1.0 }
    }
}

/// Where one transient of an exposure is ([`NightPlan::transient_sites`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TransientLocation {
    /// Index into the focal plane's [`Focalplane::detectors`].
    pub detector: usize,
    /// The detector's name as in file names, e.g. `R22_S11`.
    pub detector_name: String,
    /// Segment index within the detector.
    pub segment: usize,
    /// Row of the PSF centre in the segment (0-based, as read out).
    pub row: u32,
    /// Column of the PSF centre in the segment (0-based, prescan included).
    pub column: u32,
    /// Total flux, ADU.
    pub flux_adu: f64,
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
    /// LSSTCam visits in pairs on one field with transients; `None`: every visit on its own field.
    pub revisits: Option<RevisitPlan>,
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
            revisits: None,
        }
    }

    /// The field id of exposure `exposure_index` (the camera's exposures counted from 0 at the
    /// night's start, i.e. SEQNUM - 1 on a night within one DAYOBS): the same for both visits of
    /// an LSSTCam revisit pair, `None` without revisits and for LATISS.
    pub fn field_id(&self, instrument: Instrument, exposure_index: u32) -> Option<u64> {
        self.revisits?;
        (instrument == Instrument::LsstCam)
            .then(|| mix(self.seed ^ mix(0xF1E1_D000 ^ u64::from(exposure_index / 2))))
    }

    /// The scene of detector `detector_name` (e.g. `R22_S11`) in exposure `exposure_index`: its
    /// field, and the transient when this is the second visit of a pair and the detector is among
    /// the chosen fraction. What [`Event::Frame::scene`] carries; a pure function of the plan.
    pub fn scene(&self, instrument: Instrument, exposure_index: u32, detector_name: &str) -> Scene {
        let (Some(revisits), Some(field_id)) = (self.revisits, self.field_id(instrument, exposure_index))
        else {
            return Scene::default();
        };
        let second_visit = exposure_index % 2 == 1;
        let chosen = unit(mix(self.seed ^ mix(field_id ^ hash_name(detector_name) ^ 0x7EA7)))
            < revisits.transient_detector_fraction;
        let transient = (second_visit && chosen && revisits.transient_flux_adu > 0.0)
            .then_some(Transient { flux_adu: revisits.transient_flux_adu });
        Scene { field_id: Some(field_id), transient }
    }

    /// Every transient of exposure `exposure_index` on `focalplane`, with the pixel seed
    /// `sky_seed` ([`crate::pixels::SkyParameters::seed`]): one per segment of each chosen detector.
    /// Empty without revisits, in the first visit of a pair, and for LATISS.
    pub fn transient_sites(
        &self,
        sky_seed: u64,
        instrument: Instrument,
        exposure_index: u32,
        focalplane: &Focalplane,
    ) -> Vec<TransientLocation> {
        let mut sites = Vec::new();
        for (detector_index, detector) in focalplane.detectors().iter().enumerate() {
            let name = detector.to_string();
            let scene = self.scene(instrument, exposure_index, &name);
            let (Some(transient), Some(field_id)) = (scene.transient, scene.field_id) else {
                continue;
            };
            for segment in 0..detector.segment_count() {
                let site = transient_site(sky_seed, field_id, &name, segment, detector.vendor());
                sites.push(TransientLocation {
                    detector: detector_index,
                    detector_name: name.clone(),
                    segment,
                    row: site.row,
                    column: site.column,
                    flux_adu: transient.flux_adu,
                });
            }
        }
        sites
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
    /// A revisit plan with a flux or fraction out of range.
    #[error("revisits.{field} = {value} is out of range (flux 0..={STAR_FLUX_MAX_ADU} ADU, fraction 0..=1)")]
    InvalidRevisits {
        /// The plan field.
        field: &'static str,
        /// Its value.
        value: f64,
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
        /// The field and transient of this detector in this exposure ([`NightPlan::scene`]).
        scene: Scene,
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
    /// The plan (its seed and revisits).
    plan: NightPlan,
    /// Index of the next exposure to start.
    next_exposure: u32,
    /// The current exposure's shutter-open instant, id and header events not yet yielded.
    start_unix_ns: i64,
    exposure_id: u64,
    /// Index of the current exposure (0-based).
    exposure_index: u32,
    start_event: Option<Box<HeaderEvent>>,
    end_event: Option<Box<HeaderEvent>>,
    phase: Option<Phase>,
}

impl<'a> CameraStream<'a> {
    fn new(timing: Timing, focalplane: &'a Focalplane, plan: NightPlan) -> CameraStream<'a> {
        assert!(timing.frames_per_segment >= 1);
        assert!(!focalplane.detectors().is_empty());
        CameraStream {
            timing,
            focalplane,
            plan,
            next_exposure: 0,
            start_unix_ns: 0,
            exposure_id: 0,
            exposure_index: 0,
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
        self.exposure_index = index;
        self.start_event = Some(Box::new(start));
        self.end_event = Some(Box::new(end));
        self.phase = Some(Phase::Start);
        true
    }

    fn request(&self, index: u32) -> ExposureRequest {
        let timing = &self.timing;
        // Both visits of a revisit pair point where the first one does.
        let pointing_index = match self.plan.field_id(timing.instrument, index) {
            Some(_) => index & !1,
            None => index,
        };
        let seed = self.plan.seed;
        let draw = |channel: u64| {
            let instrument_code = timing.instrument as u64;
            unit(mix(seed ^ mix((instrument_code << 56) ^ (u64::from(pointing_index) << 8) ^ channel)))
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
            weather_seed: seed,
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
            scene: self.scene(&detectors[detector]),
        }
    }

    fn scene(&self, detector: &Detector) -> Scene {
        if self.plan.revisits.is_none() {
            return Scene::default();
        }
        self.plan.scene(self.timing.instrument, self.exposure_index, &detector.to_string())
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
        if let Some(revisits) = plan.revisits {
            let flux = revisits.transient_flux_adu;
            if !(flux.is_finite() && (0.0..=STAR_FLUX_MAX_ADU).contains(&flux)) {
                return Err(NightPlanError::InvalidRevisits { field: "transient_flux_adu", value: flux });
            }
            let fraction = revisits.transient_detector_fraction;
            if !(0.0..=1.0).contains(&fraction) {
                return Err(NightPlanError::InvalidRevisits {
                    field: "transient_detector_fraction",
                    value: fraction,
                });
            }
        }
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
            lsstcam: CameraStream::new(lsstcam_timing, lsstcam, plan),
            latiss: CameraStream::new(latiss_timing, latiss, plan),
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

    fn pointing(event: &TimedEvent) -> Option<(u32, [f64; 4])> {
        header(event).filter(|h| h.kind == EventKind::StartIntegration).map(|h| {
            let m = &h.metadata;
            (m.seqnum, [m.ra, m.dec, m.rotpa, m.airmass])
        })
    }

    #[test]
    fn the_baseline_has_no_revisits_and_default_scenes() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let mut plan = NightPlan::baseline(START_UNIX_NS, 4, 5);
        assert_eq!(plan.revisits, None);
        plan.frames_per_segment = 1;
        let events: Vec<TimedEvent> = NightSchedule::new(plan, &lsstcam, &latiss).unwrap().collect();
        for event in &events {
            if let Event::Frame { scene, .. } = &event.event {
                assert_eq!(*scene, Scene::default());
            }
        }
        let pointings: Vec<[f64; 4]> = events.iter().filter_map(pointing).map(|(_, p)| p).collect();
        assert_eq!(pointings.len(), 4);
        for pair in pointings.windows(2) {
            assert_ne!(pair[0], pair[1], "without revisits every visit points elsewhere");
        }
        assert_eq!(plan.field_id(Instrument::LsstCam, 0), None);
        assert_eq!(plan.scene(Instrument::LsstCam, 1, "R22_S11"), Scene::default());
        assert!(plan.transient_sites(1, Instrument::LsstCam, 1, &lsstcam).is_empty());
    }

    #[test]
    fn revisit_pairs_share_field_and_pointing_and_the_second_visit_has_the_transient() {
        let (lsstcam, latiss) = (r22(), Focalplane::latiss());
        let baseline = NightPlan { frames_per_segment: 1, ..NightPlan::baseline(START_UNIX_NS, 5, 5) };
        let revisits = RevisitPlan::everywhere(40_000.0);
        let plan = NightPlan {
            revisits: Some(revisits),
            latiss: Some(LatissPlan { exposure_seconds: 10.0, cadence_seconds: 20.0, count: 3 }),
            ..baseline
        };
        let events: Vec<TimedEvent> = NightSchedule::new(plan, &lsstcam, &latiss).unwrap().collect();
        let lsstcam_pointings: Vec<[f64; 4]> = events
            .iter()
            .filter(|event| event.instrument == Instrument::LsstCam)
            .filter_map(pointing)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(lsstcam_pointings.len(), 5);
        assert_eq!(lsstcam_pointings[0], lsstcam_pointings[1]);
        assert_eq!(lsstcam_pointings[2], lsstcam_pointings[3]);
        assert_ne!(lsstcam_pointings[1], lsstcam_pointings[2]);
        assert_ne!(lsstcam_pointings[3], lsstcam_pointings[4]);
        // The first visit of each pair points where the baseline's visit does.
        let baseline_pointings: Vec<[f64; 4]> = NightSchedule::new(baseline, &lsstcam, &latiss)
            .unwrap()
            .filter_map(|event| pointing(&event))
            .map(|(_, p)| p)
            .collect();
        assert_eq!(lsstcam_pointings[0], baseline_pointings[0]);
        assert_eq!(lsstcam_pointings[2], baseline_pointings[2]);

        let mut exposure_index: HashMap<Instrument, u32> = HashMap::new();
        let mut fields: Vec<Option<u64>> = vec![None; 5];
        let mut frames_with_transient = [0usize; 5];
        for event in &events {
            match &event.event {
                Event::Header(h) if h.kind == EventKind::StartIntegration => {
                    exposure_index.insert(event.instrument, h.metadata.seqnum - 1);
                }
                Event::Header(_) => {}
                Event::Frame { detector, scene, .. } => {
                    let index = exposure_index[&event.instrument];
                    let name = lsstcam.detectors()[*detector].to_string();
                    if event.instrument == Instrument::Latiss {
                        assert_eq!(*scene, Scene::default(), "LATISS is never paired");
                        continue;
                    }
                    assert_eq!(
                        *scene,
                        plan.scene(Instrument::LsstCam, index, &name),
                        "scene not from the plan"
                    );
                    assert!(scene.field_id.is_some());
                    let field = fields[index as usize].get_or_insert(scene.field_id.unwrap());
                    assert_eq!(Some(*field), scene.field_id, "one field per exposure");
                    assert_eq!(scene.transient.is_some(), index % 2 == 1);
                    if let Some(transient) = scene.transient {
                        assert_eq!(transient.flux_adu, 40_000.0);
                        frames_with_transient[index as usize] += 1;
                    }
                }
            }
        }
        assert_eq!(fields[0], fields[1]);
        assert_eq!(fields[2], fields[3]);
        assert_ne!(fields[1], fields[2]);
        assert_ne!(fields[3], fields[4]);
        assert_eq!(frames_with_transient, [0, 144, 0, 144, 0]);
        let sites = plan.transient_sites(9, Instrument::LsstCam, 1, &lsstcam);
        assert_eq!(sites.len(), 144);
        assert!(plan.transient_sites(9, Instrument::LsstCam, 0, &lsstcam).is_empty());
        assert!(plan.transient_sites(9, Instrument::Latiss, 1, &latiss).is_empty());
        let first = &sites[0];
        let detector = &lsstcam.detectors()[first.detector];
        assert_eq!(first.detector_name, detector.to_string());
        let site =
            transient_site(9, fields[1].unwrap(), &first.detector_name, first.segment, detector.vendor());
        assert_eq!((first.row, first.column, first.flux_adu), (site.row, site.column, 40_000.0));
    }

    #[test]
    fn the_transient_detector_fraction_chooses_about_that_many_detectors() {
        let focalplane = Focalplane::lsstcam();
        let detectors = focalplane.detectors().len();
        let chosen = |fraction: f64, pair: u32| {
            let revisits = RevisitPlan { transient_flux_adu: 1000.0, transient_detector_fraction: fraction };
            let plan = NightPlan { revisits: Some(revisits), ..NightPlan::baseline(START_UNIX_NS, 10, 3) };
            focalplane
                .detectors()
                .iter()
                .filter(|d| plan.scene(Instrument::LsstCam, 2 * pair + 1, &d.to_string()).transient.is_some())
                .count()
        };
        assert_eq!(chosen(1.0, 0), detectors);
        assert_eq!(chosen(0.0, 0), 0);
        for pair in 0..3 {
            let half = chosen(0.5, pair);
            assert!((detectors / 2 - 25..=detectors / 2 + 25).contains(&half), "{half} of {detectors}");
        }
        let none = NightPlan {
            revisits: Some(RevisitPlan::everywhere(0.0)),
            ..NightPlan::baseline(START_UNIX_NS, 2, 3)
        };
        assert_eq!(none.scene(Instrument::LsstCam, 1, "R22_S11").transient, None);
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
        for (flux, fraction, field) in [
            (-1.0, 1.0, "transient_flux_adu"),
            (f64::INFINITY, 1.0, "transient_flux_adu"),
            (1.0e9, 1.0, "transient_flux_adu"),
            (100.0, 1.5, "transient_detector_fraction"),
            (100.0, f64::NAN, "transient_detector_fraction"),
        ] {
            let revisits = RevisitPlan { transient_flux_adu: flux, transient_detector_fraction: fraction };
            assert!(matches!(
                refuse(NightPlan { revisits: Some(revisits), ..base }),
                NightPlanError::InvalidRevisits { field: refused, .. } if refused == field
            ));
        }
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
