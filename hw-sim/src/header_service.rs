//! The header-service simulator's event model (issue 3 item 6): pure and deterministic.
//!
//! Given an [`ExposureRequest`] (instrument, controller, start of integration in Unix nanoseconds
//! UTC, exposure time, image type, filter, pointing, weather seed), [`HeaderService::exposure`]
//! assigns the next SEQNUM of that instrument's observing day and returns the two metadata events
//! in the order the real Header Service sees them: [`EventKind::StartIntegration`] at shutter open,
//! then [`EventKind::EndReadout`] at shutter close plus [`READOUT_SECONDS`]. Each carries a
//! [`HeaderMetadata`] with the primary-header keywords of `shared/domain.md` ("Raw files").
//! No I/O, no threads, no clock: time is whatever the caller passes in.
//!
//! [`HeaderEvent::to_metadata_event`] turns an event into the metadata channel's
//! [`MetadataEvent`] (the keywords in FITS primary-header order, see [`METADATA_KEYWORD_ORDER`]),
//! which [`crate::driver`] encodes and sends at the event's time.
//!
//! Also here: the identifiers [`obsid`], [`filename`] and [`exposure_id`], the observing day
//! [`dayobs_from_unix_ns`] (the date in UTC-12, so it rolls over at 12:00 UTC), and the time
//! helpers [`utc_to_tai_ns`], [`iso_tai`], [`mjd_from_tai_ns`] with a self-contained civil-date
//! conversion ([`days_from_civil`], [`civil_from_days`]; no date library).
//!
//! # Assumptions (not in `domain.md`)
//!
//! - TAI - UTC = 37 s ([`TAI_MINUS_UTC_SECONDS`]), the value since 2017-01-01; no leap second
//!   after 2017 is assumed (true as of writing), and no earlier leap second is modelled, so times
//!   before 2017 are off by the leap seconds in between.
//! - DATE-BEG/DATE-END are the shutter-open/close instants in TAI, written as ISO 8601 with
//!   milliseconds, truncated (floored) to the millisecond. MJD counts TAI days the same way
//!   (MJD 40587.0 = 1970-01-01T00:00:00 TAI on this calendar).
//! - Readout takes [`READOUT_SECONDS`] (2 s); DARKTIME = EXPTIME + 0.2..0.4 s, drawn
//!   deterministically from the seed and exposure id.
//! - Weather (AIRTEMP in deg C, PRESSURE in hPa, HUMIDITY in %, WINDSPD in m/s) is a sum of slow
//!   sinusoids of time whose phases come from the seed, around plausible Cerro Pachon values;
//!   it is sampled at the start of integration, and both events carry the same values.
//! - On the metadata channel `StartIntegration` carries only what is known at shutter open: no
//!   DATE-END, MJD-END or DARKTIME (the dark time is known once the readout is done). HEADVER is
//!   [`HEADVER`], this simulator's header layout version.

use crate::random::{mix, unit};
use std::fmt;

use crate::frame::InstrumentCode;
use crate::geometry::{Instrument, RaftId, SensorId};
use crate::metadata::{Keyword, KeywordValue, MetadataEvent, MetadataKind};

/// TAI - UTC in seconds since 2017-01-01 (assumed unchanged since: no later leap second).
pub const TAI_MINUS_UTC_SECONDS: i64 = 37;
/// TAI - UTC in nanoseconds.
pub const TAI_MINUS_UTC_NS: i64 = TAI_MINUS_UTC_SECONDS * NS_PER_SECOND;
/// Seconds from shutter close to the end of readout.
pub const READOUT_SECONDS: i64 = 2;
/// The largest SEQNUM that fits the six digits of OBSID and file names.
pub const MAX_SEQNUM: u32 = 999_999;
/// The longest exposure time accepted, in seconds (one day).
pub const MAX_EXPTIME_SECONDS: f64 = 86_400.0;
/// HEADVER of the simulated headers (this simulator's header layout version).
pub const HEADVER: i64 = 1;
/// The keywords of an `EndReadout` metadata event, in order; a `StartIntegration` has the same
/// order without DATE-END, MJD-END and DARKTIME.
pub const METADATA_KEYWORD_ORDER: [&str; 24] = [
    "OBSID", "CAMCODE", "INSTRUME", "CONTRLLR", "DAYOBS", "SEQNUM", "IMGTYPE", "DATE-OBS", "DATE-BEG",
    "DATE-END", "MJD-BEG", "MJD-END", "EXPTIME", "DARKTIME", "FILTER", "RA", "DEC", "ROTPA", "AIRMASS",
    "AIRTEMP", "PRESSURE", "HUMIDITY", "WINDSPD", "HEADVER",
];

const NS_PER_SECOND: i64 = 1_000_000_000;
const NS_PER_DAY: i64 = 86_400 * NS_PER_SECOND;
/// MJD of 1970-01-01.
const MJD_UNIX_EPOCH: i64 = 40_587;
/// DAYOBS is the date in UTC-12.
const DAYOBS_OFFSET_NS: i64 = 12 * 3600 * NS_PER_SECOND;

/// Who drove the exposure: the CONTRLLR keyword and the second field of OBSID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// `O`: driven by the Observatory Control System.
    Ocs,
    /// `C`: driven by the Camera Control System.
    Ccs,
}

impl Controller {
    /// The one-letter code, `'O'` or `'C'`.
    pub const fn code(self) -> char {
        match self {
            Controller::Ocs => 'O',
            Controller::Ccs => 'C',
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.code())
    }
}

/// The IMGTYPE of an exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageType {
    /// `SCIENCE`: an on-sky exposure.
    Science,
    /// `BIAS`: zero-second, shutter closed.
    Bias,
    /// `DARK`: shutter closed.
    Dark,
    /// `FLAT`: flat-field illumination.
    Flat,
    /// `ENGTEST`: engineering test.
    Engtest,
}

impl ImageType {
    /// The IMGTYPE header value, e.g. `"SCIENCE"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ImageType::Science => "SCIENCE",
            ImageType::Bias => "BIAS",
            ImageType::Dark => "DARK",
            ImageType::Flat => "FLAT",
            ImageType::Engtest => "ENGTEST",
        }
    }
}

impl fmt::Display for ImageType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `year`-`month`-`day`
/// (H. Hinnant's days-from-civil). `month` is 1..=12 and `day` 1..=31; not validated.
pub const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = if month > 2 { month - 3 } else { month + 9 } as i64;
    let day_of_year = (153 * month_from_march + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian `(year, month, day)` of `days` since 1970-01-01 (inverse of
/// [`days_from_civil`]).
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// The DAYOBS (`YYYYMMDD` as an integer) of an instant: its date in UTC-12, so the observing day
/// changes at 12:00 UTC and 11:59:59 UTC still belongs to the previous day.
pub const fn dayobs_from_unix_ns(unix_ns_utc: i64) -> u32 {
    let days = (unix_ns_utc - DAYOBS_OFFSET_NS).div_euclid(NS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    (year as u32) * 10_000 + month * 100 + day
}

/// The exposure id: DAYOBS x 100000 + SEQNUM.
pub const fn exposure_id(dayobs: u32, seqnum: u32) -> u64 {
    dayobs as u64 * 100_000 + seqnum as u64
}

/// The OBSID `{CAMCODE}_{CONTRLLR}_{DAYOBS}_{SEQNUM:06}`, e.g. `MC_O_20250415_000060`.
pub fn obsid(camcode: &str, controller: Controller, dayobs: u32, seqnum: u32) -> String {
    format!("{camcode}_{}_{dayobs:08}_{seqnum:06}", controller.code())
}

/// The raw file name `{OBSID}_{RAFT}_{SENSOR}.fits`, e.g. `MC_O_20250415_000060_R22_S11.fits`.
pub fn filename(
    camcode: &str,
    controller: Controller,
    dayobs: u32,
    seqnum: u32,
    raft: RaftId,
    sensor: SensorId,
) -> String {
    format!("{}_{}_{}.fits", obsid(camcode, controller, dayobs, seqnum), raft.name(), sensor.name())
}

/// The TAI instant of a UTC instant, both in nanoseconds since 1970-01-01 on their own scale.
pub const fn utc_to_tai_ns(unix_ns_utc: i64) -> i64 {
    unix_ns_utc + TAI_MINUS_UTC_NS
}

/// ISO 8601 `YYYY-MM-DDThh:mm:ss.sss` of a TAI instant (nanoseconds since 1970-01-01 TAI),
/// truncated to the millisecond; no zone suffix (the scale is TAI).
pub fn iso_tai(tai_ns: i64) -> String {
    let days = tai_ns.div_euclid(NS_PER_DAY);
    let ns_of_day = tai_ns.rem_euclid(NS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let ms_of_day = ns_of_day / 1_000_000;
    let (hours, minutes) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (seconds, millis) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}")
}

/// The Modified Julian Date of a TAI instant (nanoseconds since 1970-01-01 TAI).
pub fn mjd_from_tai_ns(tai_ns: i64) -> f64 {
    let days = tai_ns.div_euclid(NS_PER_DAY);
    let ns_of_day = tai_ns.rem_euclid(NS_PER_DAY);
    (days + MJD_UNIX_EPOCH) as f64 + ns_of_day as f64 / NS_PER_DAY as f64
}

/// What the caller asks for: one exposure as the observatory would command it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposureRequest {
    /// The camera taking the exposure.
    pub instrument: Instrument,
    /// Who drove it (CONTRLLR).
    pub controller: Controller,
    /// Start of integration (shutter open), nanoseconds since 1970-01-01 UTC.
    pub start_unix_ns: i64,
    /// Exposure time in seconds, 0..=[`MAX_EXPTIME_SECONDS`].
    pub exptime_s: f64,
    /// IMGTYPE.
    pub image_type: ImageType,
    /// FILTER, e.g. `"r_57"`.
    pub filter: String,
    /// RA of the boresight, degrees.
    pub ra: f64,
    /// DEC of the boresight, degrees.
    pub dec: f64,
    /// ROTPA, the rotator position angle, degrees.
    pub rotpa: f64,
    /// AIRMASS.
    pub airmass: f64,
    /// Seed of the weather (and DARKTIME overhead): same seed, same values.
    pub weather_seed: u64,
}

/// Which of the Header Service's two events this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Published at shutter open; END fields are `None`.
    StartIntegration,
    /// Published at shutter close + [`READOUT_SECONDS`]; all fields set.
    EndReadout,
}

/// The primary-header metadata one event carries (keyword in each field's doc).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMetadata {
    /// OBSID, e.g. `MC_O_20250415_000060`.
    pub obsid: String,
    /// CAMCODE: `MC` or `AT`.
    pub camcode: &'static str,
    /// CONTRLLR: `O` or `C`.
    pub controller: Controller,
    /// DAYOBS as the integer `YYYYMMDD` (see [`HeaderMetadata::dayobs_string`]).
    pub dayobs: u32,
    /// SEQNUM, from 1 each DAYOBS.
    pub seqnum: u32,
    /// The exposure id, DAYOBS x 100000 + SEQNUM.
    pub exposure_id: u64,
    /// IMGTYPE.
    pub image_type: ImageType,
    /// DATE-BEG: shutter open, ISO 8601 TAI with milliseconds.
    pub date_beg: String,
    /// DATE-END: shutter close; `None` in [`EventKind::StartIntegration`].
    pub date_end: Option<String>,
    /// MJD-BEG (TAI).
    pub mjd_beg: f64,
    /// MJD-END (TAI); `None` in [`EventKind::StartIntegration`].
    pub mjd_end: Option<f64>,
    /// EXPTIME, seconds.
    pub exptime: f64,
    /// DARKTIME, seconds (EXPTIME plus readout-related dark time).
    pub darktime: f64,
    /// FILTER.
    pub filter: String,
    /// RA, degrees.
    pub ra: f64,
    /// DEC, degrees.
    pub dec: f64,
    /// ROTPA, degrees.
    pub rotpa: f64,
    /// AIRMASS.
    pub airmass: f64,
    /// AIRTEMP, degrees Celsius.
    pub airtemp: f64,
    /// PRESSURE, hPa.
    pub pressure: f64,
    /// HUMIDITY, percent.
    pub humidity: f64,
    /// WINDSPD, m/s.
    pub windspd: f64,
}

impl HeaderMetadata {
    /// DAYOBS as the header string `YYYYMMDD`.
    pub fn dayobs_string(&self) -> String {
        format!("{:08}", self.dayobs)
    }
}

/// One Header Service event.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderEvent {
    /// Which event.
    pub kind: EventKind,
    /// When it is published, nanoseconds since 1970-01-01 UTC.
    pub time_unix_ns: i64,
    /// The metadata it carries.
    pub metadata: HeaderMetadata,
}

impl EventKind {
    /// The metadata channel's kind for this event.
    pub const fn metadata_kind(self) -> MetadataKind {
        match self {
            EventKind::StartIntegration => MetadataKind::StartIntegration,
            EventKind::EndReadout => MetadataKind::EndReadout,
        }
    }
}

impl HeaderEvent {
    /// The camera, from CAMCODE.
    pub fn instrument(&self) -> Instrument {
        if self.metadata.camcode == Instrument::Latiss.camera_code() {
            Instrument::Latiss
        } else {
            Instrument::LsstCam
        }
    }

    /// The event as the metadata channel carries it: the keywords in [`METADATA_KEYWORD_ORDER`]
    /// (DAYOBS as the string `YYYYMMDD`, DATE-OBS = DATE-BEG), `StartIntegration` without the
    /// keywords known only at the end of readout.
    pub fn to_metadata_event(&self) -> MetadataEvent {
        use KeywordValue::{Float, Int, Str};
        let metadata = &self.metadata;
        let instrument = self.instrument();
        let text = |value: &str| Str(value.to_owned());
        let mut keywords = vec![
            ("OBSID", text(&metadata.obsid)),
            ("CAMCODE", text(metadata.camcode)),
            ("INSTRUME", text(instrument.display_name())),
            ("CONTRLLR", text(&metadata.controller.to_string())),
            ("DAYOBS", Str(metadata.dayobs_string())),
            ("SEQNUM", Int(i64::from(metadata.seqnum))),
            ("IMGTYPE", text(metadata.image_type.as_str())),
            ("DATE-OBS", text(&metadata.date_beg)),
            ("DATE-BEG", text(&metadata.date_beg)),
        ];
        if let Some(date_end) = &metadata.date_end {
            keywords.push(("DATE-END", text(date_end)));
        }
        keywords.push(("MJD-BEG", Float(metadata.mjd_beg)));
        if let Some(mjd_end) = metadata.mjd_end {
            keywords.push(("MJD-END", Float(mjd_end)));
        }
        keywords.push(("EXPTIME", Float(metadata.exptime)));
        if self.kind == EventKind::EndReadout {
            keywords.push(("DARKTIME", Float(metadata.darktime)));
        }
        keywords.extend([
            ("FILTER", text(&metadata.filter)),
            ("RA", Float(metadata.ra)),
            ("DEC", Float(metadata.dec)),
            ("ROTPA", Float(metadata.rotpa)),
            ("AIRMASS", Float(metadata.airmass)),
            ("AIRTEMP", Float(metadata.airtemp)),
            ("PRESSURE", Float(metadata.pressure)),
            ("HUMIDITY", Float(metadata.humidity)),
            ("WINDSPD", Float(metadata.windspd)),
            ("HEADVER", Int(HEADVER)),
        ]);
        MetadataEvent {
            kind: self.kind.metadata_kind(),
            instrument: match instrument {
                Instrument::LsstCam => InstrumentCode::LsstCam,
                Instrument::Latiss => InstrumentCode::Latiss,
            },
            exposure_id: metadata.exposure_id,
            keywords: keywords.into_iter().map(|(name, value)| Keyword::new(name, value)).collect(),
        }
    }
}

/// Why an exposure was refused (before any SEQNUM is used).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderServiceError {
    /// EXPTIME not finite or outside 0..=[`MAX_EXPTIME_SECONDS`].
    #[error("exposure time {0} s is not in 0..={MAX_EXPTIME_SECONDS} s")]
    InvalidExposureTime(f64),
    /// The observing day already used every six-digit SEQNUM.
    #[error("DAYOBS {dayobs} has no SEQNUM left after {MAX_SEQNUM}")]
    SeqnumExhausted {
        /// The full observing day.
        dayobs: u32,
    },
}

/// SEQNUM assignment for one instrument: 1, 2, ... within a DAYOBS, back to 1 when DAYOBS changes
/// (in either direction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceCounter {
    dayobs: Option<u32>,
    last_seqnum: u32,
}

impl SequenceCounter {
    /// A counter that has assigned nothing yet.
    pub const fn new() -> SequenceCounter {
        SequenceCounter { dayobs: None, last_seqnum: 0 }
    }

    /// The `(dayobs, seqnum)` that the next exposure starting at `start_unix_ns` (UTC) would get,
    /// without assigning it.
    pub fn peek(&self, start_unix_ns: i64) -> Result<(u32, u32), HeaderServiceError> {
        let dayobs = dayobs_from_unix_ns(start_unix_ns);
        let seqnum = if self.dayobs == Some(dayobs) { self.last_seqnum + 1 } else { 1 };
        if seqnum > MAX_SEQNUM {
            return Err(HeaderServiceError::SeqnumExhausted { dayobs });
        }
        Ok((dayobs, seqnum))
    }

    /// Assigns `(dayobs, seqnum)` to the exposure starting at `start_unix_ns` (UTC).
    pub fn next(&mut self, start_unix_ns: i64) -> Result<(u32, u32), HeaderServiceError> {
        let (dayobs, seqnum) = self.peek(start_unix_ns)?;
        self.dayobs = Some(dayobs);
        self.last_seqnum = seqnum;
        Ok((dayobs, seqnum))
    }
}

/// The simulated Header Service: one [`SequenceCounter`] per instrument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderService {
    lsstcam: SequenceCounter,
    latiss: SequenceCounter,
}

impl HeaderService {
    /// A service that has seen no exposure yet.
    pub const fn new() -> HeaderService {
        HeaderService { lsstcam: SequenceCounter::new(), latiss: SequenceCounter::new() }
    }

    /// The counter of `instrument`.
    pub fn counter_mut(&mut self, instrument: Instrument) -> &mut SequenceCounter {
        match instrument {
            Instrument::LsstCam => &mut self.lsstcam,
            Instrument::Latiss => &mut self.latiss,
        }
    }

    /// Assigns the exposure its SEQNUM and returns its events in publication order:
    /// StartIntegration, then EndReadout. Nothing is assigned if the request is refused.
    pub fn exposure(&mut self, request: &ExposureRequest) -> Result<[HeaderEvent; 2], HeaderServiceError> {
        let exptime = request.exptime_s;
        if !(exptime.is_finite() && (0.0..=MAX_EXPTIME_SECONDS).contains(&exptime)) {
            return Err(HeaderServiceError::InvalidExposureTime(exptime));
        }
        let (dayobs, seqnum) = self.counter_mut(request.instrument).next(request.start_unix_ns)?;
        let exposure_id = exposure_id(dayobs, seqnum);
        let camcode = request.instrument.camera_code();

        let exptime_ns = (exptime * NS_PER_SECOND as f64).round() as i64;
        let begin_tai = utc_to_tai_ns(request.start_unix_ns);
        let end_tai = begin_tai + exptime_ns;
        let weather = Weather::at(request.weather_seed, request.start_unix_ns);
        let dark_overhead = 0.2 + 0.2 * unit(mix(request.weather_seed ^ mix(exposure_id)));

        let start = HeaderMetadata {
            obsid: obsid(camcode, request.controller, dayobs, seqnum),
            camcode,
            controller: request.controller,
            dayobs,
            seqnum,
            exposure_id,
            image_type: request.image_type,
            date_beg: iso_tai(begin_tai),
            date_end: None,
            mjd_beg: mjd_from_tai_ns(begin_tai),
            mjd_end: None,
            exptime,
            darktime: exptime + dark_overhead,
            filter: request.filter.clone(),
            ra: request.ra,
            dec: request.dec,
            rotpa: request.rotpa,
            airmass: request.airmass,
            airtemp: weather.airtemp,
            pressure: weather.pressure,
            humidity: weather.humidity,
            windspd: weather.windspd,
        };
        let end = HeaderMetadata {
            date_end: Some(iso_tai(end_tai)),
            mjd_end: Some(mjd_from_tai_ns(end_tai)),
            ..start.clone()
        };
        Ok([
            HeaderEvent {
                kind: EventKind::StartIntegration,
                time_unix_ns: request.start_unix_ns,
                metadata: start,
            },
            HeaderEvent {
                kind: EventKind::EndReadout,
                time_unix_ns: request.start_unix_ns + exptime_ns + READOUT_SECONDS * NS_PER_SECOND,
                metadata: end,
            },
        ])
    }
}

/// Weather keywords at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Weather {
    airtemp: f64,
    pressure: f64,
    humidity: f64,
    windspd: f64,
}

impl Weather {
    /// Smooth in time: each value is a base plus sinusoids with periods of hours to a day, whose
    /// phases (and the bases, a little) come from the seed.
    fn at(seed: u64, unix_ns_utc: i64) -> Weather {
        let hours = unix_ns_utc as f64 / (3600.0 * NS_PER_SECOND as f64);
        let wave = |channel: u64, period_hours: f64| {
            let phase = unit(mix(seed ^ mix(channel))) * std::f64::consts::TAU;
            (std::f64::consts::TAU * hours / period_hours + phase).sin()
        };
        let offset = |channel: u64| unit(mix(seed ^ mix(channel))) - 0.5;
        Weather {
            airtemp: 10.0 + 4.0 * offset(1) + 3.0 * wave(2, 24.0) + 0.8 * wave(3, 2.7),
            pressure: 743.0 + 6.0 * offset(4) + 1.5 * wave(5, 12.0) + 0.5 * wave(6, 5.3),
            humidity: (30.0 + 20.0 * offset(7) + 12.0 * wave(8, 24.0) + 4.0 * wave(9, 3.1)).clamp(0.0, 100.0),
            windspd: (6.0 + 4.0 * offset(10) + 3.0 * wave(11, 6.0) + 1.5 * wave(12, 1.3)).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ns (on whichever scale) of a calendar instant.
    fn ns(year: i64, month: u32, day: u32, hour: i64, minute: i64, second: i64, millis: i64) -> i64 {
        days_from_civil(year, month, day) * NS_PER_DAY
            + ((hour * 60 + minute) * 60 + second) * NS_PER_SECOND
            + millis * 1_000_000
    }

    fn request(instrument: Instrument, start_unix_ns: i64, exptime_s: f64) -> ExposureRequest {
        ExposureRequest {
            instrument,
            controller: Controller::Ocs,
            start_unix_ns,
            exptime_s,
            image_type: ImageType::Science,
            filter: "r_57".to_owned(),
            ra: 150.1,
            dec: -30.2,
            rotpa: 12.5,
            airmass: 1.07,
            weather_seed: 42,
        }
    }

    #[test]
    fn civil_conversion_round_trips_and_hits_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2025, 4, 15), 20_193);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in (-800_000..800_000).step_by(97) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29) + 1), (2024, 3, 1));
    }

    #[test]
    fn dayobs_rolls_over_at_noon_utc() {
        assert_eq!(dayobs_from_unix_ns(ns(2025, 4, 15, 11, 59, 59, 999)), 20250414);
        assert_eq!(dayobs_from_unix_ns(ns(2025, 4, 15, 12, 0, 0, 0)), 20250415);
        assert_eq!(dayobs_from_unix_ns(ns(2025, 4, 16, 3, 0, 0, 0)), 20250415);
        assert_eq!(dayobs_from_unix_ns(ns(2025, 1, 1, 6, 0, 0, 0)), 20241231);
    }

    #[test]
    fn obsid_filename_and_exposure_id_match_domain_examples() {
        assert_eq!(obsid("MC", Controller::Ocs, 20250415, 60), "MC_O_20250415_000060");
        assert_eq!(obsid("AT", Controller::Ccs, 20240624, 106), "AT_C_20240624_000106");
        assert_eq!(
            filename("MC", Controller::Ocs, 20250415, 60, RaftId::new(2, 2), SensorId::science(1, 1)),
            "MC_O_20250415_000060_R22_S11.fits"
        );
        let at = Instrument::Latiss.camera_code();
        assert_eq!(
            filename(at, Controller::Ocs, 20240624, 106, RaftId::new(0, 0), SensorId::science(0, 0)),
            "AT_O_20240624_000106_R00_S00.fits"
        );
        assert_eq!(exposure_id(20250415, 60), 2_025_041_500_060);
        assert_eq!(exposure_id(20240624, 106), 2_024_062_400_106);
    }

    #[test]
    fn tai_offset_iso_format_and_mjd() {
        let utc = ns(2025, 4, 15, 23, 58, 35, 345);
        assert_eq!(utc_to_tai_ns(utc) - utc, 37 * NS_PER_SECOND);
        assert_eq!(iso_tai(utc_to_tai_ns(utc)), "2025-04-15T23:59:12.345");
        // TAI crosses midnight 37 s before UTC does.
        assert_eq!(iso_tai(utc_to_tai_ns(ns(2025, 4, 15, 23, 59, 30, 0))), "2025-04-16T00:00:07.000");
        // Truncated, not rounded, to the millisecond.
        assert_eq!(iso_tai(ns(2025, 4, 15, 0, 0, 0, 999) + 999_999), "2025-04-15T00:00:00.999");
        assert_eq!(mjd_from_tai_ns(ns(2025, 4, 15, 0, 0, 0, 0)), 60780.0);
        assert_eq!(mjd_from_tai_ns(ns(1970, 1, 1, 0, 0, 0, 0)), 40587.0);
        assert!((mjd_from_tai_ns(ns(2025, 4, 15, 6, 0, 0, 0)) - 60780.25).abs() < 1e-12);
    }

    #[test]
    fn events_are_ordered_with_end_readout_after_exposure_and_readout() {
        let mut service = HeaderService::new();
        // 2025-04-14T23:59:23 UTC = 2025-04-15T00:00:00 TAI.
        let start = ns(2025, 4, 14, 23, 59, 23, 0);
        let [first, second] = service.exposure(&request(Instrument::LsstCam, start, 30.0)).unwrap();
        assert_eq!(first.kind, EventKind::StartIntegration);
        assert_eq!(second.kind, EventKind::EndReadout);
        assert_eq!(first.time_unix_ns, start);
        assert_eq!(second.time_unix_ns, start + 32 * NS_PER_SECOND);

        let begin = &first.metadata;
        assert_eq!(begin.obsid, "MC_O_20250414_000001");
        assert_eq!(
            (begin.camcode, begin.controller.code(), begin.dayobs_string()),
            ("MC", 'O', "20250414".into())
        );
        assert_eq!((begin.seqnum, begin.exposure_id), (1, 2_025_041_400_001));
        assert_eq!(begin.date_beg, "2025-04-15T00:00:00.000");
        assert_eq!(begin.mjd_beg, 60780.0);
        assert_eq!((begin.date_end.as_deref(), begin.mjd_end), (None, None));
        assert!(begin.darktime >= begin.exptime + 0.1 && begin.darktime <= begin.exptime + 2.0);

        let end = &second.metadata;
        assert_eq!(end.date_end.as_deref(), Some("2025-04-15T00:00:30.000"));
        assert!((end.mjd_end.unwrap() - (60780.0 + 30.0 / 86_400.0)).abs() < 1e-9);
        assert_eq!(end.date_beg, begin.date_beg);
        assert_eq!((end.image_type.as_str(), end.filter.as_str()), ("SCIENCE", "r_57"));
        assert_eq!((end.ra, end.dec, end.rotpa, end.airmass), (150.1, -30.2, 12.5, 1.07));
        let strip =
            |metadata: &HeaderMetadata| HeaderMetadata { date_end: None, mjd_end: None, ..metadata.clone() };
        assert_eq!(strip(end), *begin);
    }

    #[test]
    fn metadata_events_carry_the_keywords_in_fits_order_and_survive_the_wire() {
        use crate::metadata::{decode_message, encode_message};
        let mut service = HeaderService::new();
        let start = ns(2025, 4, 14, 23, 59, 23, 0);
        let [first, second] = service.exposure(&request(Instrument::Latiss, start, 30.0)).unwrap();
        let (begin, end) = (first.to_metadata_event(), second.to_metadata_event());
        assert_eq!((begin.kind, end.kind), (MetadataKind::StartIntegration, MetadataKind::EndReadout));
        assert_eq!(begin.instrument, InstrumentCode::Latiss);
        assert_eq!(end.exposure_id, 2_025_041_400_001);

        let names = |event: &MetadataEvent| event.keywords.iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&end), METADATA_KEYWORD_ORDER);
        let known_at_open: Vec<&str> = METADATA_KEYWORD_ORDER
            .into_iter()
            .filter(|name| !["DATE-END", "MJD-END", "DARKTIME"].contains(name))
            .collect();
        assert_eq!(names(&begin), known_at_open);

        assert_eq!(end.get_str("OBSID"), Some("AT_O_20250414_000001"));
        assert_eq!(end.get_str("DAYOBS"), Some("20250414"));
        assert_eq!(end.get_str("INSTRUME"), Some("LATISS"));
        assert_eq!(end.get_str("CONTRLLR"), Some("O"));
        assert_eq!(end.get_int("SEQNUM"), Some(1));
        assert_eq!(end.get_str("DATE-OBS"), Some("2025-04-15T00:00:00.000"));
        assert_eq!(end.get_str("DATE-END"), Some("2025-04-15T00:00:30.000"));
        assert_eq!(end.get("EXPTIME"), Some(&KeywordValue::Float(30.0)));
        assert_eq!(end.get("HEADVER"), Some(&KeywordValue::Int(HEADVER)));

        for event in [begin, end] {
            assert_eq!(decode_message(&encode_message(&event).unwrap()).unwrap(), event);
        }
    }

    #[test]
    fn seqnum_counts_per_instrument_and_resets_at_dayobs_change() {
        let mut service = HeaderService::new();
        let mut seq = |instrument, start| {
            let [event, _] = service.exposure(&request(instrument, start, 15.0)).unwrap();
            (event.metadata.dayobs, event.metadata.seqnum)
        };
        assert_eq!(seq(Instrument::LsstCam, ns(2025, 4, 15, 23, 0, 0, 0)), (20250415, 1));
        assert_eq!(seq(Instrument::LsstCam, ns(2025, 4, 16, 3, 0, 0, 0)), (20250415, 2));
        assert_eq!(seq(Instrument::Latiss, ns(2025, 4, 16, 3, 0, 1, 0)), (20250415, 1));
        assert_eq!(seq(Instrument::LsstCam, ns(2025, 4, 16, 11, 59, 59, 0)), (20250415, 3));
        assert_eq!(seq(Instrument::LsstCam, ns(2025, 4, 16, 12, 0, 0, 0)), (20250416, 1));
        assert_eq!(seq(Instrument::LsstCam, ns(2025, 4, 16, 23, 0, 0, 0)), (20250416, 2));
        assert_eq!(seq(Instrument::Latiss, ns(2025, 4, 16, 23, 0, 0, 0)), (20250416, 1));
    }

    #[test]
    fn refused_requests_use_no_seqnum() {
        let mut service = HeaderService::new();
        let start = ns(2025, 4, 15, 23, 0, 0, 0);
        for bad in [-1.0, f64::NAN, f64::INFINITY, MAX_EXPTIME_SECONDS + 1.0] {
            let refused = service.exposure(&request(Instrument::LsstCam, start, bad));
            assert!(matches!(refused, Err(HeaderServiceError::InvalidExposureTime(_))));
        }
        let [event, _] = service.exposure(&request(Instrument::LsstCam, start, 0.0)).unwrap();
        assert_eq!(event.metadata.seqnum, 1);

        let mut counter = SequenceCounter { dayobs: Some(20250415), last_seqnum: MAX_SEQNUM };
        assert_eq!(counter.next(start), Err(HeaderServiceError::SeqnumExhausted { dayobs: 20250415 }));
        assert_eq!(counter.next(ns(2025, 4, 16, 12, 0, 0, 0)), Ok((20250416, 1)));
    }

    #[test]
    fn weather_is_deterministic_plausible_and_smooth() {
        let start = ns(2025, 4, 15, 23, 0, 0, 0);
        assert_eq!(Weather::at(7, start), Weather::at(7, start));
        assert_ne!(Weather::at(7, start), Weather::at(8, start));
        for seed in 0..50u64 {
            let mut previous = Weather::at(seed, start);
            for step in 1..200i64 {
                let now = Weather::at(seed, start + step * 40 * NS_PER_SECOND);
                assert!((-5.0..=25.0).contains(&now.airtemp), "{now:?}");
                assert!((725.0..=760.0).contains(&now.pressure), "{now:?}");
                assert!((0.0..=100.0).contains(&now.humidity), "{now:?}");
                assert!((0.0..=20.0).contains(&now.windspd), "{now:?}");
                // 40 s apart: changes of a small fraction of a unit.
                assert!((now.airtemp - previous.airtemp).abs() < 0.1);
                assert!((now.pressure - previous.pressure).abs() < 0.1);
                assert!((now.humidity - previous.humidity).abs() < 0.5);
                assert!((now.windspd - previous.windspd).abs() < 0.5);
                previous = now;
            }
        }
    }
}
