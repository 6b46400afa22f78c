//! Camera geometry: the single source of truth for which detectors and amplifier segments exist,
//! what they are called, and how their pixels are laid out.
//!
//! Every other crate (the DAQ simulator, the frame protocol, the FITS writer, the ingest and
//! monitoring code) asks this module instead of hard-coding `16`, `576` or `"Segment10"`.
//! The module needs nothing beyond `std` and allocates only when a [`Focalplane`] is built.
//!
//! Reading order: [`Instrument`], [`Vendor`] and its [`SegmentLayout`], the identifiers
//! [`RaftId`] and [`SensorId`], a [`Detector`] and its [`Segment`]s with their [`Section`]s,
//! and finally the [`Focalplane`] that lists detectors in a stable order.
//!
//! # Sources
//!
//! Facts come from `shared/domain.md` (public Rubin sources: lsstcam docs, obs_lsst camera
//! headers). Anything that file does not state is marked **Assumption** where it is used, with
//! where it comes from and what must check it. The assumptions, in one place:
//!
//! - [`ITL_SCIENCE_RAFTS`]: which science rafts are ITL (the rest e2v), and that corner rafts are
//!   ITL — taken from obs_lsst's LSSTCam camera description, not from domain.md.
//! - [`Segment::detsec`]: the DETSEC convention (which block each amplifier occupies and which
//!   axes are flipped), from the camera team's eotest sensor geometry and obs_lsst's `flipXY`
//!   per amplifier; not stated in domain.md.
//! - [`DetectorKind::WavefrontHalf`]: a half-sensor reads out the first 8 extensions of the
//!   16-segment order (`Segment10`..`Segment17`), and its DETSIZE is `[1:4072,1:2000]`.
//! - [`Vendor::ccd_manu`]: the `CCD_MANU` header values `ITL` and `E2V`.
//!
//! # Conventions
//!
//! Sections are FITS/IRAF style: 1-based, inclusive, `[x_first:x_last,y_first:y_last]`, x being
//! the column (serial direction) and y the row (parallel direction).

use std::fmt;

/// Columns in every read-out amplifier segment, prescan and overscan included.
pub const SEGMENT_COLUMNS: u32 = 576;
/// Rows in every read-out amplifier segment, parallel overscan included.
pub const SEGMENT_ROWS: u32 = 2048;
/// Pixels in one segment.
pub const SEGMENT_PIXEL_COUNT: usize = SEGMENT_COLUMNS as usize * SEGMENT_ROWS as usize;
/// Each raw pixel is a 32-bit signed integer (`i32`).
pub const BYTES_PER_PIXEL: usize = std::mem::size_of::<i32>();
/// Significant bits of the ADC value held in each `i32` pixel.
pub const ADC_BITS: u32 = 18;
/// Bytes in one uncompressed segment: 576 x 2048 x 4 = 4,718,592.
pub const SEGMENT_SIZE_BYTES: usize = SEGMENT_PIXEL_COUNT * BYTES_PER_PIXEL;
/// Segments of a full-frame CCD (science sensors, guiders, the LATISS CCD).
pub const CCD_SEGMENT_COUNT: usize = 16;
/// Segments of a wavefront half-sensor.
pub const WAVEFRONT_HALF_SEGMENT_COUNT: usize = 8;
/// Amplifiers side by side along x in a full-frame CCD (and in a wavefront half-sensor).
pub const AMPLIFIERS_PER_ROW: u32 = 8;

/// LSSTCam science detectors: 21 rafts of 9.
pub const LSSTCAM_SCIENCE_DETECTOR_COUNT: usize = 189;
/// LSSTCam guider CCDs: 4 corner rafts of 2.
pub const LSSTCAM_GUIDER_DETECTOR_COUNT: usize = 8;
/// LSSTCam wavefront half-sensors: 4 corner rafts of 2.
pub const LSSTCAM_WAVEFRONT_DETECTOR_COUNT: usize = 8;
/// Segments in one full LSSTCam exposure: 189x16 + 8x16 + 8x8.
pub const LSSTCAM_SEGMENT_COUNT: usize = 3216;

const _: () = assert!(SEGMENT_SIZE_BYTES == 4_718_592);
const _: () = assert!(LSSTCAM_SCIENCE_DETECTOR_COUNT == LSSTCAM_SCIENCE_RAFTS.len() * 9);
const _: () = assert!(LSSTCAM_GUIDER_DETECTOR_COUNT == LSSTCAM_CORNER_RAFTS.len() * 2);
const _: () = assert!(LSSTCAM_WAVEFRONT_DETECTOR_COUNT == LSSTCAM_CORNER_RAFTS.len() * 2);
const _: () = assert!(
    LSSTCAM_SEGMENT_COUNT
        == LSSTCAM_SCIENCE_DETECTOR_COUNT * CCD_SEGMENT_COUNT
            + LSSTCAM_GUIDER_DETECTOR_COUNT * CCD_SEGMENT_COUNT
            + LSSTCAM_WAVEFRONT_DETECTOR_COUNT * WAVEFRONT_HALF_SEGMENT_COUNT
);
const _: () = assert!(SEGMENT_EXTNAMES.len() == CCD_SEGMENT_COUNT);
const _: () = assert!(CCD_SEGMENT_COUNT as u32 == 2 * AMPLIFIERS_PER_ROW);
const _: () = assert!(WAVEFRONT_HALF_SEGMENT_COUNT as u32 == AMPLIFIERS_PER_ROW);

/// A camera whose data the appliance handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instrument {
    /// The main camera (189 science CCDs, 4 corner rafts).
    LsstCam,
    /// The Auxiliary Telescope's camera (one ITL CCD).
    Latiss,
}

impl Instrument {
    /// The camera code used in OBSID, CAMCODE and file names: `MC` or `AT`.
    pub const fn camera_code(self) -> &'static str {
        match self {
            Instrument::LsstCam => "MC",
            Instrument::Latiss => "AT",
        }
    }

    /// A human-readable name for messages (not a FITS keyword value).
    pub const fn display_name(self) -> &'static str {
        match self {
            Instrument::LsstCam => "LSSTCam",
            Instrument::Latiss => "LATISS",
        }
    }
}

impl fmt::Display for Instrument {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.display_name())
    }
}

/// The pixel layout of one read-out amplifier segment, in columns and rows.
///
/// Columns run prescan | data | serial overscan; rows run data | parallel overscan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentLayout {
    /// Serial prescan columns before the data.
    pub prescan_columns: u32,
    /// Imaging columns.
    pub data_columns: u32,
    /// Serial overscan columns after the data.
    pub serial_overscan_columns: u32,
    /// Imaging rows.
    pub data_rows: u32,
    /// Parallel overscan rows after the data.
    pub parallel_overscan_rows: u32,
}

impl SegmentLayout {
    /// All columns of the segment; always [`SEGMENT_COLUMNS`].
    pub const fn total_columns(&self) -> u32 {
        self.prescan_columns + self.data_columns + self.serial_overscan_columns
    }

    /// All rows of the segment; always [`SEGMENT_ROWS`].
    pub const fn total_rows(&self) -> u32 {
        self.data_rows + self.parallel_overscan_rows
    }

    /// DATASEC as a [`Section`]: the data columns after the prescan, the data rows from row 1.
    pub const fn datasec(&self) -> Section {
        Section {
            x_first: self.prescan_columns + 1,
            x_last: self.prescan_columns + self.data_columns,
            y_first: 1,
            y_last: self.data_rows,
        }
    }
}

const ITL_LAYOUT: SegmentLayout = SegmentLayout {
    prescan_columns: 3,
    data_columns: 509,
    serial_overscan_columns: 64,
    data_rows: 2000,
    parallel_overscan_rows: 48,
};

const E2V_LAYOUT: SegmentLayout = SegmentLayout {
    prescan_columns: 10,
    data_columns: 512,
    serial_overscan_columns: 54,
    data_rows: 2002,
    parallel_overscan_rows: 46,
};

const _: () = assert!(ITL_LAYOUT.total_columns() == SEGMENT_COLUMNS);
const _: () = assert!(ITL_LAYOUT.total_rows() == SEGMENT_ROWS);
const _: () = assert!(E2V_LAYOUT.total_columns() == SEGMENT_COLUMNS);
const _: () = assert!(E2V_LAYOUT.total_rows() == SEGMENT_ROWS);

/// The CCD manufacturer, which fixes the segment layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// Imaging Technology Laboratory (University of Arizona).
    Itl,
    /// Teledyne e2v.
    E2v,
}

impl Vendor {
    /// The segment layout of this vendor's CCDs.
    pub const fn layout(self) -> SegmentLayout {
        match self {
            Vendor::Itl => ITL_LAYOUT,
            Vendor::E2v => E2V_LAYOUT,
        }
    }

    /// The DATASEC keyword value, the same for every segment of this vendor.
    pub const fn datasec(self) -> &'static str {
        match self {
            Vendor::Itl => "[4:512,1:2000]",
            Vendor::E2v => "[11:522,1:2002]",
        }
    }

    /// The DETSIZE keyword value of a full 16-segment CCD of this vendor.
    pub const fn detsize(self) -> &'static str {
        match self {
            Vendor::Itl => "[1:4072,1:4000]",
            Vendor::E2v => "[1:4096,1:4004]",
        }
    }

    /// The `CCD_MANU` primary-header value.
    ///
    /// **Assumption** (not in domain.md): real obs_lsst-era headers spell these `ITL` and `E2V`.
    pub const fn ccd_manu(self) -> &'static str {
        match self {
            Vendor::Itl => "ITL",
            Vendor::E2v => "E2V",
        }
    }
}

/// A rectangle in FITS/IRAF section notation: 1-based, inclusive on both ends.
///
/// `x_first > x_last` (or `y_first > y_last`) denotes a flipped axis, as real DETSECs use (see
/// [`Segment::detsec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Section {
    /// First column, 1-based.
    pub x_first: u32,
    /// Last column, 1-based, inclusive.
    pub x_last: u32,
    /// First row, 1-based.
    pub y_first: u32,
    /// Last row, 1-based, inclusive.
    pub y_last: u32,
}

impl Section {
    /// Columns covered.
    pub const fn width(&self) -> u32 {
        self.x_first.abs_diff(self.x_last) + 1
    }

    /// Rows covered.
    pub const fn height(&self) -> u32 {
        self.y_first.abs_diff(self.y_last) + 1
    }
}

impl fmt::Display for Section {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "[{}:{},{}:{}]", self.x_first, self.x_last, self.y_first, self.y_last)
    }
}

/// Raft names by `[row][column]`, so that [`RaftId::name`] never allocates.
const RAFT_NAMES: [[&str; 5]; 5] = [
    ["R00", "R01", "R02", "R03", "R04"],
    ["R10", "R11", "R12", "R13", "R14"],
    ["R20", "R21", "R22", "R23", "R24"],
    ["R30", "R31", "R32", "R33", "R34"],
    ["R40", "R41", "R42", "R43", "R44"],
];

/// A raft position `R{row}{column}` on the 5x5 raft grid (`R00`..`R44`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RaftId {
    row: u8,
    column: u8,
}

impl RaftId {
    /// The raft at `row`, `column`; both must be below 5 (a programmer error otherwise).
    pub const fn new(row: u8, column: u8) -> RaftId {
        assert!(row < 5, "raft row must be 0..=4");
        assert!(column < 5, "raft column must be 0..=4");
        RaftId { row, column }
    }

    /// The raft named `name` (`"R22"`), or `None` if no raft position has that name.
    pub fn from_name(name: &str) -> Option<RaftId> {
        (0..5u8)
            .flat_map(|row| (0..5u8).map(move |column| RaftId::new(row, column)))
            .find(|raft| raft.name() == name)
    }

    /// Grid row, 0..=4.
    pub const fn row(self) -> u8 {
        self.row
    }

    /// Grid column, 0..=4.
    pub const fn column(self) -> u8 {
        self.column
    }

    /// The name, e.g. `"R22"`; also the RAFTBAY header value.
    pub const fn name(self) -> &'static str {
        RAFT_NAMES[self.row as usize][self.column as usize]
    }

    /// Whether this is one of LSSTCam's four corner positions (R00, R04, R40, R44), which hold
    /// guiders and wavefront sensors instead of science CCDs.
    pub const fn is_lsstcam_corner(self) -> bool {
        (self.row == 0 || self.row == 4) && (self.column == 0 || self.column == 4)
    }
}

impl fmt::Display for RaftId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The 21 LSSTCam science rafts, in row-major order.
pub const LSSTCAM_SCIENCE_RAFTS: [RaftId; 21] = [
    RaftId::new(0, 1),
    RaftId::new(0, 2),
    RaftId::new(0, 3),
    RaftId::new(1, 0),
    RaftId::new(1, 1),
    RaftId::new(1, 2),
    RaftId::new(1, 3),
    RaftId::new(1, 4),
    RaftId::new(2, 0),
    RaftId::new(2, 1),
    RaftId::new(2, 2),
    RaftId::new(2, 3),
    RaftId::new(2, 4),
    RaftId::new(3, 0),
    RaftId::new(3, 1),
    RaftId::new(3, 2),
    RaftId::new(3, 3),
    RaftId::new(3, 4),
    RaftId::new(4, 1),
    RaftId::new(4, 2),
    RaftId::new(4, 3),
];

/// The 4 LSSTCam corner rafts (guiders and wavefront half-sensors), in row-major order.
pub const LSSTCAM_CORNER_RAFTS: [RaftId; 4] =
    [RaftId::new(0, 0), RaftId::new(0, 4), RaftId::new(4, 0), RaftId::new(4, 4)];

/// The LSSTCam science rafts built with ITL sensors; the other 13 science rafts are e2v.
///
/// **Assumption** (from obs_lsst's LSSTCam camera description, not from domain.md, which says
/// only that each raft is all ITL or all e2v). Corner rafts (guiders and wavefront sensors) are
/// also ITL, likewise from obs_lsst.
pub const ITL_SCIENCE_RAFTS: [RaftId; 8] = [
    RaftId::new(0, 1),
    RaftId::new(0, 2),
    RaftId::new(0, 3),
    RaftId::new(1, 0),
    RaftId::new(2, 0),
    RaftId::new(4, 1),
    RaftId::new(4, 2),
    RaftId::new(4, 3),
];

/// The vendor of every sensor in an LSSTCam raft. See [`ITL_SCIENCE_RAFTS`] for the assumption.
pub fn lsstcam_raft_vendor(raft: RaftId) -> Vendor {
    if raft.is_lsstcam_corner() || ITL_SCIENCE_RAFTS.contains(&raft) {
        Vendor::Itl
    } else {
        Vendor::E2v
    }
}

/// What a detector is for; fixes its segment count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DetectorKind {
    /// A science CCD (`S00`..`S22`), 16 segments. The LATISS CCD is one too.
    Science,
    /// A guider CCD on a corner raft (`SG0`, `SG1`), 16 segments.
    Guider,
    /// A wavefront half-sensor on a corner raft (`SW0`, `SW1`), 8 segments, 4072x2000 imaging
    /// area.
    ///
    /// **Assumption** (domain.md gives the count, not which amplifiers): the half-sensor reads
    /// out the first 8 extensions of the 16-segment order, `Segment10`..`Segment17`, as one row
    /// of amplifiers; its DETSIZE is `[1:4072,1:2000]`.
    WavefrontHalf,
}

impl DetectorKind {
    /// Read-out segments of a detector of this kind.
    pub const fn segment_count(self) -> usize {
        match self {
            DetectorKind::Science | DetectorKind::Guider => CCD_SEGMENT_COUNT,
            DetectorKind::WavefrontHalf => WAVEFRONT_HALF_SEGMENT_COUNT,
        }
    }
}

const SCIENCE_SENSOR_NAMES: [&str; 9] = ["S00", "S01", "S02", "S10", "S11", "S12", "S20", "S21", "S22"];
const GUIDER_SENSOR_NAMES: [&str; 2] = ["SG0", "SG1"];
const WAVEFRONT_SENSOR_NAMES: [&str; 2] = ["SW0", "SW1"];

/// A sensor slot within a raft: `S00`..`S22`, `SG0`/`SG1` or `SW0`/`SW1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SensorId {
    kind: DetectorKind,
    /// Science: `row * 3 + column` (0..9); guider and wavefront: 0 or 1.
    index: u8,
}

impl SensorId {
    /// Science slot `S{row}{column}`; both must be below 3.
    pub const fn science(row: u8, column: u8) -> SensorId {
        assert!(row < 3, "science sensor row must be 0..=2");
        assert!(column < 3, "science sensor column must be 0..=2");
        SensorId { kind: DetectorKind::Science, index: row * 3 + column }
    }

    /// Guider slot `SG{index}`; index must be 0 or 1.
    pub const fn guider(index: u8) -> SensorId {
        assert!(index < 2, "guider index must be 0 or 1");
        SensorId { kind: DetectorKind::Guider, index }
    }

    /// Wavefront half-sensor slot `SW{index}`; index must be 0 or 1.
    pub const fn wavefront_half(index: u8) -> SensorId {
        assert!(index < 2, "wavefront index must be 0 or 1");
        SensorId { kind: DetectorKind::WavefrontHalf, index }
    }

    /// What the sensor in this slot is for.
    pub const fn kind(self) -> DetectorKind {
        self.kind
    }

    /// The name, e.g. `"S11"`, `"SG0"`, `"SW1"`; also the CCDSLOT header value.
    pub const fn name(self) -> &'static str {
        match self.kind {
            DetectorKind::Science => SCIENCE_SENSOR_NAMES[self.index as usize],
            DetectorKind::Guider => GUIDER_SENSOR_NAMES[self.index as usize],
            DetectorKind::WavefrontHalf => WAVEFRONT_SENSOR_NAMES[self.index as usize],
        }
    }
}

impl fmt::Display for SensorId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// EXTNAMEs in extension order: `Segment10`..`Segment17`, then `Segment07`..`Segment00`.
const SEGMENT_EXTNAMES: [&str; 16] = [
    "Segment10",
    "Segment11",
    "Segment12",
    "Segment13",
    "Segment14",
    "Segment15",
    "Segment16",
    "Segment17",
    "Segment07",
    "Segment06",
    "Segment05",
    "Segment04",
    "Segment03",
    "Segment02",
    "Segment01",
    "Segment00",
];

/// One CCD (or wavefront half-sensor): one raw FITS file per exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Detector {
    instrument: Instrument,
    raft: RaftId,
    sensor: SensorId,
    vendor: Vendor,
}

impl Detector {
    fn new(instrument: Instrument, raft: RaftId, sensor: SensorId, vendor: Vendor) -> Detector {
        if sensor.kind() != DetectorKind::Science {
            assert!(raft.is_lsstcam_corner(), "guiders and wavefront sensors sit on corner rafts");
            assert_eq!(instrument, Instrument::LsstCam, "only LSSTCam has guiders and wavefront sensors");
        }
        Detector { instrument, raft, sensor, vendor }
    }

    /// The camera this detector belongs to.
    pub const fn instrument(&self) -> Instrument {
        self.instrument
    }

    /// The raft (RAFTBAY).
    pub const fn raft(&self) -> RaftId {
        self.raft
    }

    /// The sensor slot (CCDSLOT).
    pub const fn sensor(&self) -> SensorId {
        self.sensor
    }

    /// Science, guider or wavefront half-sensor.
    pub const fn kind(&self) -> DetectorKind {
        self.sensor.kind()
    }

    /// The CCD manufacturer, which fixes the segment layout.
    pub const fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// Read-out segments: 16, or 8 for a wavefront half-sensor.
    pub const fn segment_count(&self) -> usize {
        self.kind().segment_count()
    }

    /// Uncompressed bytes of one exposure of this detector (`i32` pixels).
    pub const fn size_bytes(&self) -> usize {
        self.segment_count() * SEGMENT_SIZE_BYTES
    }

    /// The detector's imaging area as a [`Section`]; its DETSIZE keyword value when displayed.
    ///
    /// Full CCDs: 8 x 2 amplifiers' data areas (equal to [`Vendor::detsize`]). Wavefront
    /// half-sensors: 8 x 1 (see the assumption on [`DetectorKind::WavefrontHalf`]).
    pub const fn detsize(&self) -> Section {
        let layout = self.vendor.layout();
        let amplifier_rows = (self.segment_count() as u32) / AMPLIFIERS_PER_ROW;
        Section {
            x_first: 1,
            x_last: AMPLIFIERS_PER_ROW * layout.data_columns,
            y_first: 1,
            y_last: amplifier_rows * layout.data_rows,
        }
    }

    /// The segment at `index` in extension order (0 = `Segment10`, 8 = `Segment07`,
    /// 15 = `Segment00`). `index` must be below [`Detector::segment_count`].
    pub fn segment(&self, index: usize) -> Segment {
        assert!(index < self.segment_count(), "segment index {index} out of range for {self}");
        let layout = self.vendor.layout();
        let data_columns = layout.data_columns;
        let data_rows = layout.data_rows;
        let amplifier = (index % 8) as u32;
        let is_top_row = index < 8;
        // Column block of the amplifier: Segment1N and Segment0N both sit at block N (N = index
        // for Segment1N; index 8 + (7 - N) for Segment0N).
        let block = if is_top_row { amplifier } else { 7 - amplifier };
        let (left, right) = (block * data_columns + 1, (block + 1) * data_columns);
        let detsec = match (self.kind(), is_top_row, self.vendor) {
            // Segment1N: bottom half, read from its right edge: x flipped.
            (DetectorKind::WavefrontHalf, _, _) | (_, true, _) => {
                Section { x_first: right, x_last: left, y_first: 1, y_last: data_rows }
            }
            // Segment0N of an ITL sensor: top half, x and y flipped.
            (_, false, Vendor::Itl) => {
                Section { x_first: right, x_last: left, y_first: 2 * data_rows, y_last: data_rows + 1 }
            }
            // Segment0N of an e2v sensor: top half, y flipped only.
            (_, false, Vendor::E2v) => {
                Section { x_first: left, x_last: right, y_first: 2 * data_rows, y_last: data_rows + 1 }
            }
        };
        Segment { index: index as u8, vendor: self.vendor, detsec }
    }

    /// All segments in extension order (the order of the image extensions in the raw file).
    pub fn segments(&self) -> impl ExactSizeIterator<Item = Segment> + '_ {
        (0..self.segment_count()).map(move |index| self.segment(index))
    }
}

impl fmt::Display for Detector {
    /// `R22_S11`, as in raw file names.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}_{}", self.raft.name(), self.sensor.name())
    }
}

/// One read-out amplifier segment: one image extension of a raw file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// 0-based position in the extension order.
    index: u8,
    vendor: Vendor,
    detsec: Section,
}

impl Segment {
    /// 0-based position in the extension order.
    pub const fn index(&self) -> usize {
        self.index as usize
    }

    /// The CHANNEL keyword: 1-based position in the extension order.
    pub const fn channel(&self) -> u32 {
        self.index as u32 + 1
    }

    /// The EXTNAME keyword, e.g. `"Segment10"`.
    pub const fn extname(&self) -> &'static str {
        SEGMENT_EXTNAMES[self.index as usize]
    }

    /// The DATASEC keyword value (the same for every segment of a vendor).
    pub const fn datasec(&self) -> &'static str {
        self.vendor.datasec()
    }

    /// The pixel layout of this segment.
    pub const fn layout(&self) -> SegmentLayout {
        self.vendor.layout()
    }

    /// Where this segment's data area lies in detector coordinates (the DETSEC keyword).
    ///
    /// Real raw headers flip axes (written first > last) so that every amplifier's readout
    /// corner maps onto the detector consistently. The convention, from the LSST camera team's
    /// sensor geometry (eotest `AmplifierGeometry`) and obs_lsst's camera description
    /// (`flipXY` per amplifier), with `dc`, `dr` the vendor's data columns and rows:
    ///
    /// - `Segment1N`: bottom half, column block N, x flipped: `[(N+1)*dc:N*dc+1,1:dr]`
    ///   (ITL `Segment10` = `[509:1,1:2000]`);
    /// - `Segment0N`, ITL: top half, column block N, x and y flipped:
    ///   `[(N+1)*dc:N*dc+1,2*dr:dr+1]`;
    /// - `Segment0N`, e2v: top half, column block N, y flipped: `[N*dc+1:(N+1)*dc,2*dr:dr+1]`
    ///   (e2v `Segment00` = `[1:512,4004:2003]`);
    /// - wavefront half-sensor `Segment1N` (ITL): as a science `Segment1N`, DETSIZE
    ///   `[1:4072,1:2000]` (**Assumption**: the half-sensor is treated as the bottom half).
    ///
    /// The 16 (or 8) sections tile the detector's DETSIZE exactly; the tests check that.
    pub const fn detsec(&self) -> Section {
        self.detsec
    }
}

/// Errors from selecting detectors by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeometryError {
    /// A raft name that the instrument does not have.
    UnknownRaft {
        /// The camera whose rafts were searched.
        instrument: Instrument,
        /// The name as given.
        name: String,
    },
    /// The same raft named twice in one selection.
    DuplicateRaft {
        /// The raft named more than once.
        name: String,
    },
    /// A selection that names no raft at all.
    EmptySelection {
        /// The camera whose rafts were to be selected.
        instrument: Instrument,
    },
}

fn write_valid_raft_names(formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
    formatter.write_str("valid raft names: ")?;
    for (position, raft) in lsstcam_rafts().enumerate() {
        if position > 0 {
            formatter.write_str(", ")?;
        }
        formatter.write_str(raft.name())?;
    }
    Ok(())
}

impl fmt::Display for GeometryError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GeometryError::UnknownRaft { instrument, name } => {
                write!(formatter, "unknown raft name {name:?} for {instrument}; ")?;
                write_valid_raft_names(formatter)
            }
            GeometryError::DuplicateRaft { name } => {
                write!(formatter, "raft {name:?} is listed more than once; list each raft once")
            }
            GeometryError::EmptySelection { instrument } => {
                write!(formatter, "no raft named for the {instrument} subset; name at least one; ")?;
                write_valid_raft_names(formatter)
            }
        }
    }
}

impl std::error::Error for GeometryError {}

/// All 25 LSSTCam raft positions in row-major order (R00, R01, .., R44).
fn lsstcam_rafts() -> impl Iterator<Item = RaftId> {
    (0..5u8).flat_map(|row| (0..5u8).map(move |column| RaftId::new(row, column)))
}

/// The detectors of one raft in their stable order: science `S00`..`S22` row-major, or corner
/// `SG0`, `SG1`, `SW0`, `SW1`.
fn lsstcam_raft_detectors(raft: RaftId) -> impl Iterator<Item = Detector> {
    let vendor = lsstcam_raft_vendor(raft);
    let sensors: Vec<SensorId> = if raft.is_lsstcam_corner() {
        vec![
            SensorId::guider(0),
            SensorId::guider(1),
            SensorId::wavefront_half(0),
            SensorId::wavefront_half(1),
        ]
    } else {
        (0..3u8).flat_map(|row| (0..3u8).map(move |column| SensorId::science(row, column))).collect()
    };
    sensors.into_iter().map(move |sensor| Detector::new(Instrument::LsstCam, raft, sensor, vendor))
}

/// The detectors of a camera, or of a chosen subset of its rafts, in a stable order:
/// rafts row-major (R00, R01, .., R44), and within a raft as in [`SensorId`]'s listing
/// (`S00`..`S22`, or `SG0`, `SG1`, `SW0`, `SW1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Focalplane {
    instrument: Instrument,
    detectors: Vec<Detector>,
}

impl Focalplane {
    /// The full LSSTCam: 189 science CCDs, 8 guiders and 8 wavefront half-sensors.
    pub fn lsstcam() -> Focalplane {
        let detectors: Vec<Detector> = lsstcam_rafts().flat_map(lsstcam_raft_detectors).collect();
        let focalplane = Focalplane { instrument: Instrument::LsstCam, detectors };
        assert_eq!(focalplane.segment_count(), LSSTCAM_SEGMENT_COUNT);
        focalplane
    }

    /// LATISS: one ITL science CCD, `R00_S00`.
    pub fn latiss() -> Focalplane {
        let detector =
            Detector::new(Instrument::Latiss, RaftId::new(0, 0), SensorId::science(0, 0), Vendor::Itl);
        Focalplane { instrument: Instrument::Latiss, detectors: vec![detector] }
    }

    /// The LSSTCam detectors of the named rafts (e.g. `&["R22", "R00"]`), with the same
    /// sensors and vendors as [`Focalplane::lsstcam`]. The result is in the stable focal-plane
    /// order whatever the order of `raft_names`.
    ///
    /// Errors: an unknown name (the message lists the valid ones), a name given twice, or an
    /// empty list.
    pub fn lsstcam_subset(raft_names: &[&str]) -> Result<Focalplane, GeometryError> {
        if raft_names.is_empty() {
            return Err(GeometryError::EmptySelection { instrument: Instrument::LsstCam });
        }
        let mut selected: Vec<RaftId> = Vec::with_capacity(raft_names.len());
        for name in raft_names {
            let raft = RaftId::from_name(name).ok_or_else(|| GeometryError::UnknownRaft {
                instrument: Instrument::LsstCam,
                name: (*name).to_owned(),
            })?;
            if selected.contains(&raft) {
                return Err(GeometryError::DuplicateRaft { name: (*name).to_owned() });
            }
            selected.push(raft);
        }
        let detectors =
            lsstcam_rafts().filter(|raft| selected.contains(raft)).flat_map(lsstcam_raft_detectors).collect();
        Ok(Focalplane { instrument: Instrument::LsstCam, detectors })
    }

    /// The camera these detectors belong to.
    pub fn instrument(&self) -> Instrument {
        self.instrument
    }

    /// The detectors in the stable order.
    pub fn detectors(&self) -> &[Detector] {
        &self.detectors
    }

    /// Iterates over the detectors in the stable order.
    pub fn iter(&self) -> std::slice::Iter<'_, Detector> {
        self.detectors.iter()
    }

    /// Number of detectors (raw files per exposure).
    pub fn detector_count(&self) -> usize {
        self.detectors.len()
    }

    /// Number of detectors of one kind.
    pub fn detector_count_of_kind(&self, kind: DetectorKind) -> usize {
        self.detectors.iter().filter(|detector| detector.kind() == kind).count()
    }

    /// Number of read-out segments per exposure over all detectors.
    pub fn segment_count(&self) -> usize {
        self.detectors.iter().map(Detector::segment_count).sum()
    }

    /// The detector in `raft`, slot `sensor`, if this focal plane has it.
    pub fn detector(&self, raft: RaftId, sensor: SensorId) -> Option<&Detector> {
        self.detectors.iter().find(|detector| detector.raft() == raft && detector.sensor() == sensor)
    }
}

impl<'a> IntoIterator for &'a Focalplane {
    type Item = &'a Detector;
    type IntoIter = std::slice::Iter<'a, Detector>;

    fn into_iter(self) -> Self::IntoIter {
        self.detectors.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn raft_names(focalplane: &Focalplane) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for detector in focalplane {
            if names.last() != Some(&detector.raft().name()) {
                names.push(detector.raft().name());
            }
        }
        names
    }

    fn full_ccd(vendor: Vendor) -> Detector {
        let focalplane = Focalplane::lsstcam();
        *focalplane
            .iter()
            .find(|detector| detector.vendor() == vendor && detector.kind() == DetectorKind::Science)
            .expect("LSSTCam has science CCDs of both vendors")
    }

    fn wavefront_half() -> Detector {
        *Focalplane::lsstcam()
            .iter()
            .find(|detector| detector.kind() == DetectorKind::WavefrontHalf)
            .expect("LSSTCam has wavefront half-sensors")
    }

    /// The section with both axes in increasing order.
    fn normalized(section: &Section) -> Section {
        Section {
            x_first: section.x_first.min(section.x_last),
            x_last: section.x_first.max(section.x_last),
            y_first: section.y_first.min(section.y_last),
            y_last: section.y_first.max(section.y_last),
        }
    }

    fn sections_overlap(a: &Section, b: &Section) -> bool {
        let (a, b) = (normalized(a), normalized(b));
        a.x_first <= b.x_last && b.x_first <= a.x_last && a.y_first <= b.y_last && b.y_first <= a.y_last
    }

    /// The detector's DETSECs lie inside DETSIZE, do not overlap, and their areas add up to
    /// DETSIZE's: together they tile it exactly.
    fn assert_detsecs_tile_detsize(detector: &Detector) {
        let detsize = detector.detsize();
        let layout = detector.vendor().layout();
        let detsecs: Vec<Section> = detector.segments().map(|segment| segment.detsec()).collect();
        let mut area_pixels: u64 = 0;
        for (position, flipped) in detsecs.iter().enumerate() {
            let detsec = &normalized(flipped);
            assert!(detsec.x_first >= detsize.x_first, "{detector} {detsec}: left of DETSIZE");
            assert!(detsec.x_last <= detsize.x_last, "{detector} {detsec}: right of DETSIZE");
            assert!(detsec.y_first >= detsize.y_first, "{detector} {detsec}: below DETSIZE");
            assert!(detsec.y_last <= detsize.y_last, "{detector} {detsec}: above DETSIZE");
            assert_eq!(detsec.width(), layout.data_columns, "{detector} {detsec}: width");
            assert_eq!(detsec.height(), layout.data_rows, "{detector} {detsec}: height");
            for other in &detsecs[position + 1..] {
                assert!(!sections_overlap(flipped, other), "{detector}: {flipped} overlaps {other}");
            }
            area_pixels += u64::from(detsec.width()) * u64::from(detsec.height());
        }
        assert_eq!(area_pixels, u64::from(detsize.width()) * u64::from(detsize.height()));
    }

    #[test]
    fn full_lsstcam_has_189_science_8_guider_8_wavefront_detectors_and_3216_segments() {
        let focalplane = Focalplane::lsstcam();
        assert_eq!(focalplane.instrument(), Instrument::LsstCam);
        assert_eq!(focalplane.detector_count_of_kind(DetectorKind::Science), 189);
        assert_eq!(focalplane.detector_count_of_kind(DetectorKind::Guider), 8);
        assert_eq!(focalplane.detector_count_of_kind(DetectorKind::WavefrontHalf), 8);
        assert_eq!(focalplane.detector_count(), 205);
        assert_eq!(focalplane.segment_count(), 3216);
        let segments_by_iteration: usize = focalplane.iter().map(|detector| detector.segments().len()).sum();
        assert_eq!(segments_by_iteration, 3216);
    }

    #[test]
    fn full_lsstcam_exposure_is_about_15_gigabytes_as_int32() {
        let total_bytes: usize = Focalplane::lsstcam().iter().map(Detector::size_bytes).sum();
        assert_eq!(total_bytes, 3216 * 4_718_592);
        assert_eq!(full_ccd(Vendor::Itl).size_bytes(), 16 * 4_718_592);
    }

    #[test]
    fn every_domain_science_raft_is_present_and_no_other() {
        let expected: BTreeSet<&str> = [
            "R01", "R02", "R03", "R10", "R11", "R12", "R13", "R14", "R20", "R21", "R22", "R23", "R24", "R30",
            "R31", "R32", "R33", "R34", "R41", "R42", "R43",
        ]
        .into_iter()
        .collect();
        let focalplane = Focalplane::lsstcam();
        let actual: BTreeSet<&str> = focalplane
            .iter()
            .filter(|detector| detector.kind() == DetectorKind::Science)
            .map(|detector| detector.raft().name())
            .collect();
        assert_eq!(actual, expected);
        for raft in LSSTCAM_SCIENCE_RAFTS {
            let sensors: Vec<&str> =
                focalplane.iter().filter(|d| d.raft() == raft).map(|d| d.sensor().name()).collect();
            assert_eq!(sensors, ["S00", "S01", "S02", "S10", "S11", "S12", "S20", "S21", "S22"]);
        }
    }

    #[test]
    fn corner_rafts_hold_two_guiders_and_two_wavefront_half_sensors_all_itl() {
        let focalplane = Focalplane::lsstcam();
        for name in ["R00", "R04", "R40", "R44"] {
            let raft = RaftId::from_name(name).expect("corner raft name is valid");
            assert!(raft.is_lsstcam_corner());
            let detectors: Vec<&Detector> = focalplane.iter().filter(|d| d.raft() == raft).collect();
            let sensors: Vec<&str> = detectors.iter().map(|d| d.sensor().name()).collect();
            assert_eq!(sensors, ["SG0", "SG1", "SW0", "SW1"]);
            let segment_counts: Vec<usize> = detectors.iter().map(|d| d.segment_count()).collect();
            assert_eq!(segment_counts, [16, 16, 8, 8]);
            assert!(detectors.iter().all(|d| d.vendor() == Vendor::Itl));
        }
    }

    #[test]
    fn science_rafts_follow_obs_lsst_vendor_assignment_8_itl_and_13_e2v() {
        let focalplane = Focalplane::lsstcam();
        let science = || focalplane.iter().filter(|d| d.kind() == DetectorKind::Science);
        assert_eq!(science().filter(|d| d.vendor() == Vendor::Itl).count(), 8 * 9);
        assert_eq!(science().filter(|d| d.vendor() == Vendor::E2v).count(), 13 * 9);
        let itl_names: Vec<&str> = ITL_SCIENCE_RAFTS.iter().map(|raft| raft.name()).collect();
        assert_eq!(itl_names, ["R01", "R02", "R03", "R10", "R20", "R41", "R42", "R43"]);
        assert!(ITL_SCIENCE_RAFTS.iter().all(|raft| LSSTCAM_SCIENCE_RAFTS.contains(raft)));
    }

    #[test]
    fn focalplane_iterates_in_stable_row_major_raft_order() {
        let names = raft_names(&Focalplane::lsstcam());
        let expected: Vec<&str> = RAFT_NAMES.iter().flatten().copied().collect();
        assert_eq!(names, expected);
        assert_eq!(Focalplane::lsstcam(), Focalplane::lsstcam());
        let first = Focalplane::lsstcam().detectors()[0];
        assert_eq!(first.to_string(), "R00_SG0");
    }

    #[test]
    fn latiss_is_one_itl_ccd_r00_s00_with_16_segments() {
        let focalplane = Focalplane::latiss();
        assert_eq!(focalplane.instrument(), Instrument::Latiss);
        assert_eq!(focalplane.detector_count(), 1);
        assert_eq!(focalplane.segment_count(), 16);
        let detector = focalplane.detectors()[0];
        assert_eq!(detector.to_string(), "R00_S00");
        assert_eq!(detector.raft().name(), "R00");
        assert_eq!(detector.sensor().name(), "S00");
        assert_eq!(detector.kind(), DetectorKind::Science);
        assert_eq!(detector.vendor(), Vendor::Itl);
        assert_eq!(detector.instrument().camera_code(), "AT");
    }

    #[test]
    fn camera_codes_are_mc_and_at() {
        assert_eq!(Instrument::LsstCam.camera_code(), "MC");
        assert_eq!(Instrument::Latiss.camera_code(), "AT");
    }

    #[test]
    fn detector_and_sensor_names_match_raw_file_names() {
        let focalplane = Focalplane::lsstcam();
        let r22 = RaftId::from_name("R22").expect("R22 is valid");
        let detector = focalplane.detector(r22, SensorId::science(1, 1)).expect("R22_S11 exists");
        assert_eq!(detector.to_string(), "R22_S11");
        assert_eq!(SensorId::guider(0).name(), "SG0");
        assert_eq!(SensorId::wavefront_half(1).name(), "SW1");
        assert_eq!(RaftId::new(2, 2).name(), "R22");
        assert_eq!(RaftId::from_name("R5"), None);
        assert_eq!(RaftId::from_name("R55"), None);
    }

    #[test]
    fn datasec_and_detsize_strings_match_each_vendor_and_its_layout() {
        assert_eq!(Vendor::Itl.datasec(), "[4:512,1:2000]");
        assert_eq!(Vendor::Itl.detsize(), "[1:4072,1:4000]");
        assert_eq!(Vendor::E2v.datasec(), "[11:522,1:2002]");
        assert_eq!(Vendor::E2v.detsize(), "[1:4096,1:4004]");
        for vendor in [Vendor::Itl, Vendor::E2v] {
            let layout = vendor.layout();
            assert_eq!(layout.datasec().to_string(), vendor.datasec());
            assert_eq!(layout.total_columns(), 576);
            assert_eq!(layout.total_rows(), 2048);
            let detector = full_ccd(vendor);
            assert_eq!(detector.detsize().to_string(), vendor.detsize());
            assert!(detector.segments().all(|segment| segment.datasec() == vendor.datasec()));
        }
    }

    #[test]
    fn segment_layouts_match_domain_columns_and_rows() {
        let itl = Vendor::Itl.layout();
        assert_eq!((itl.prescan_columns, itl.data_columns, itl.serial_overscan_columns), (3, 509, 64));
        assert_eq!((itl.data_rows, itl.parallel_overscan_rows), (2000, 48));
        let e2v = Vendor::E2v.layout();
        assert_eq!((e2v.prescan_columns, e2v.data_columns, e2v.serial_overscan_columns), (10, 512, 54));
        assert_eq!((e2v.data_rows, e2v.parallel_overscan_rows), (2002, 46));
    }

    #[test]
    fn ccd_extensions_run_segment10_to_17_then_07_to_00_with_1_based_channels() {
        let detector = full_ccd(Vendor::E2v);
        let extnames: Vec<&str> = detector.segments().map(|segment| segment.extname()).collect();
        assert_eq!(
            extnames,
            [
                "Segment10",
                "Segment11",
                "Segment12",
                "Segment13",
                "Segment14",
                "Segment15",
                "Segment16",
                "Segment17",
                "Segment07",
                "Segment06",
                "Segment05",
                "Segment04",
                "Segment03",
                "Segment02",
                "Segment01",
                "Segment00",
            ]
        );
        assert_eq!(detector.segment(0).extname(), "Segment10");
        assert_eq!(detector.segment(8).extname(), "Segment07");
        assert_eq!(detector.segment(15).extname(), "Segment00");
        let channels: Vec<u32> = detector.segments().map(|segment| segment.channel()).collect();
        assert_eq!(channels, (1..=16).collect::<Vec<u32>>());
        assert!(detector.segments().enumerate().all(|(index, segment)| segment.index() == index));
    }

    #[test]
    fn wavefront_half_sensor_reads_out_segment10_to_17() {
        let detector = wavefront_half();
        assert_eq!(detector.segment_count(), 8);
        let extnames: Vec<&str> = detector.segments().map(|segment| segment.extname()).collect();
        assert_eq!(
            extnames,
            [
                "Segment10",
                "Segment11",
                "Segment12",
                "Segment13",
                "Segment14",
                "Segment15",
                "Segment16",
                "Segment17"
            ]
        );
        assert_eq!(detector.detsize().to_string(), "[1:4072,1:2000]");
    }

    #[test]
    fn detsecs_tile_detsize_exactly_for_both_vendors_and_wavefront_halves() {
        assert_detsecs_tile_detsize(&full_ccd(Vendor::Itl));
        assert_detsecs_tile_detsize(&full_ccd(Vendor::E2v));
        assert_detsecs_tile_detsize(&wavefront_half());
        assert_detsecs_tile_detsize(&Focalplane::latiss().detectors()[0]);
    }

    #[test]
    fn detsecs_follow_the_camera_flip_convention_for_both_vendors() {
        let itl = full_ccd(Vendor::Itl);
        let detsec = |detector: &Detector, extname: &str| {
            let segment = detector.segments().find(|segment| segment.extname() == extname).expect("extname");
            segment.detsec().to_string()
        };
        assert_eq!(detsec(&itl, "Segment10"), "[509:1,1:2000]");
        assert_eq!(detsec(&itl, "Segment17"), "[4072:3564,1:2000]");
        assert_eq!(detsec(&itl, "Segment07"), "[4072:3564,4000:2001]");
        assert_eq!(detsec(&itl, "Segment00"), "[509:1,4000:2001]");
        let e2v = full_ccd(Vendor::E2v);
        assert_eq!(detsec(&e2v, "Segment10"), "[512:1,1:2002]");
        assert_eq!(detsec(&e2v, "Segment00"), "[1:512,4004:2003]");
        assert_eq!(detsec(&e2v, "Segment07"), "[3585:4096,4004:2003]");
        let wavefront = wavefront_half();
        assert_eq!(detsec(&wavefront, "Segment13"), "[2036:1528,1:2000]");
    }

    #[test]
    fn subset_selects_named_rafts_in_focalplane_order() {
        let subset = Focalplane::lsstcam_subset(&["R22", "R00"]).expect("both rafts exist");
        assert_eq!(subset.instrument(), Instrument::LsstCam);
        assert_eq!(raft_names(&subset), ["R00", "R22"]);
        assert_eq!(subset.detector_count_of_kind(DetectorKind::Science), 9);
        assert_eq!(subset.detector_count_of_kind(DetectorKind::Guider), 2);
        assert_eq!(subset.detector_count_of_kind(DetectorKind::WavefrontHalf), 2);
        assert_eq!(subset.segment_count(), 9 * 16 + 2 * 16 + 2 * 8);
        let full = Focalplane::lsstcam();
        for detector in &subset {
            assert_eq!(full.detector(detector.raft(), detector.sensor()), Some(detector));
        }
    }

    #[test]
    fn subset_with_unknown_raft_names_it_and_lists_valid_names() {
        let error = Focalplane::lsstcam_subset(&["R22", "R99"]).expect_err("R99 does not exist");
        assert_eq!(
            error,
            GeometryError::UnknownRaft { instrument: Instrument::LsstCam, name: "R99".to_owned() }
        );
        let message = error.to_string();
        assert!(message.contains("\"R99\""), "{message}");
        assert!(message.contains("R00, R01, R02"), "{message}");
        assert!(message.ends_with("R43, R44"), "{message}");
    }

    #[test]
    fn subset_rejects_duplicate_and_empty_raft_lists() {
        let duplicate = Focalplane::lsstcam_subset(&["R22", "R22"]).expect_err("R22 twice");
        assert_eq!(duplicate, GeometryError::DuplicateRaft { name: "R22".to_owned() });
        let empty = Focalplane::lsstcam_subset(&[]).expect_err("no rafts");
        assert_eq!(empty, GeometryError::EmptySelection { instrument: Instrument::LsstCam });
    }

    #[test]
    #[should_panic(expected = "segment index 16 out of range")]
    fn segment_index_past_the_end_is_a_programmer_error() {
        full_ccd(Vendor::Itl).segment(16);
    }
}
