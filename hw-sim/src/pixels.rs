//! Seeded generator of sky-like raw segment pixels, for the DAQ simulator.
//!
//! A [`SegmentGenerator`] produces the 576 x 2048 big-endian `i32` pixels of one amplifier
//! segment, deterministically from `(seed, exposure_id, detector name, segment index)`: any segment,
//! or any range of its rows, can be regenerated bit-for-bit later (to verify what the ingest wrote).
//!
//! # How a segment is built
//!
//! Construction builds a dense TEMPLATE of the noiseless segment once (bias everywhere; sky, stars,
//! hot columns, saturation bleed trails and cosmic rays in the data region).
//! [`SegmentGenerator::generate_rows`] then adds noise and writes bytes, which is the hot path:
//! per row it takes three windows, at hashed offsets, into one shared table of unit-normal samples
//! (`a`, `b`, `c`), and per pixel computes
//! `clip(template + read_sigma * (a + b) / sqrt(2) + sky_sigma * c)` in fixed point. The loop has
//! no branches and no table gathers, so it vectorises; noise of row `r` depends only on `r`, so
//! rows are identical however the segment is split into ranges.
//!
//! # Faithful
//!
//! - The vendor layout ([`Vendor::layout`]): prescan, serial overscan and parallel overscan hold
//!   bias + read noise only; the data region holds the signal.
//! - Per-amplifier bias (15000..30000 ADU), read noise (5..9 ADU), gain (1.4..1.7 e-/ADU) and hot
//!   columns depend on `(seed, detector, segment)` only, so they are stable across exposures, as
//!   an amplifier's are; sky, stars, cosmic rays and noise also depend on the exposure.
//! - Sky level by [`Filter`] (u darkest, y brightest), with its Poisson noise added to the read
//!   noise in the data region. Stars with a Gaussian PSF of the given seeing FWHM (0.2"/pixel),
//!   a power-law flux distribution, and saturated stars clipped at [`MAX_ADC_VALUE`] whose excess
//!   charge bleeds up and down the column.
//! - Every value is clipped to `0..=MAX_ADC_VALUE` (18-bit ADC).
//!
//! # Simplified
//!
//! - Noise is Gaussian with one sigma per region (read noise; read + sky shot noise): the shot
//!   noise of stars, cosmic rays and hot columns is not modelled.
//! - The noise table is finite (65,536 unit-normal samples at 1/256 sigma resolution): a row's
//!   noise is a sum of three windows into it, so noise is only statistically, not
//!   cryptographically, independent.
//! - Stars sit on whole pixels (one precomputed PSF stamp), are random per exposure (no sky
//!   catalogue, no pointing), and saturate at the ADC limit rather than at a full well.
//! - No flat field, vignetting, sky gradient, cross-talk, deferred charge, or bias structure.
//!   Cosmic rays are straight tracks with a constant deposit per pixel.

use crate::random::{finalize, SplitMix64};
use std::sync::OnceLock;

use crate::frame::MAX_ADC_VALUE;
use crate::geometry::{Detector, SegmentLayout, Vendor, BYTES_PER_PIXEL, SEGMENT_COLUMNS, SEGMENT_ROWS};

const COLUMNS: usize = SEGMENT_COLUMNS as usize;
const ROWS: usize = SEGMENT_ROWS as usize;
/// Bytes of one generated row.
pub const ROW_SIZE_BYTES: usize = COLUMNS * BYTES_PER_PIXEL;

/// Pixel scale of LSSTCam and LATISS-like CCDs, arcseconds per 10 um pixel.
const PIXEL_SCALE_ARCSEC: f64 = 0.2;
/// Entries of the unit-normal table windows start in (a power of two: offsets are masked).
const NOISE_TABLE_STARTS: usize = 1 << 16;
/// Fixed-point scale of the unit-normal table: one sigma is 256.
const NOISE_TABLE_ONE_SIGMA: f64 = 256.0;
/// Fixed-point bits of the per-pixel noise product (table scale 2^8 times sigma scale 2^8).
const NOISE_PRODUCT_SHIFT: u32 = 16;
/// A template value that clips to [`MAX_ADC_VALUE`] whatever noise is added (noise stays far below).
const SATURATED_TEMPLATE_VALUE: i32 = MAX_ADC_VALUE + 1_000_000;
/// Largest PSF stamp radius in pixels (a 5" FWHM needs 18).
const PSF_STAMP_MAX_RADIUS: i32 = 24;
/// Largest total flux of one star, ADU (keeps template sums far from `i32` overflow).
const STAR_FLUX_MAX_ADU: f64 = 5.0e7;
/// Largest seeing the generator accepts, arcseconds FWHM.
const SEEING_FWHM_MAX_ARCSEC: f64 = 5.0;

const _: () = assert!(ROW_SIZE_BYTES == 2304);
const _: () = assert!(NOISE_TABLE_STARTS.is_power_of_two());

/// The filter in the beam, which sets the sky level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// u band (darkest sky).
    U,
    /// g band.
    G,
    /// r band.
    R,
    /// i band.
    I,
    /// z band.
    Z,
    /// y band (brightest sky).
    Y,
}

impl Filter {
    /// All filters, bluest first.
    pub const ALL: [Filter; 6] = [Filter::U, Filter::G, Filter::R, Filter::I, Filter::Z, Filter::Y];

    /// Dark-sky background in electrons per pixel in a 30 s exposure.
    ///
    /// **Assumption** (not in domain.md): rough figures from LSST sky brightness estimates
    /// (u ~22.9 to y ~18.6 mag/arcsec^2), good to a factor of two; they only need the right order.
    pub const fn sky_electrons_per_pixel(self) -> f64 {
        match self {
            Filter::U => 80.0,
            Filter::G => 400.0,
            Filter::R => 800.0,
            Filter::I => 1300.0,
            Filter::Z => 2000.0,
            Filter::Y => 2400.0,
        }
    }

    /// The FILTER header letter.
    pub const fn name(self) -> &'static str {
        match self {
            Filter::U => "u",
            Filter::G => "g",
            Filter::R => "r",
            Filter::I => "i",
            Filter::Z => "z",
            Filter::Y => "y",
        }
    }
}

/// What the simulated sky looks like; the same for every segment of an exposure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkyParameters {
    /// Filter in the beam.
    pub filter: Filter,
    /// Seeing, full width at half maximum in arcseconds (0.1..=5).
    pub seeing_fwhm_arcsec: f64,
    /// Mean stars per square arcminute of imaging area (a segment is about 11.3 arcmin^2).
    pub star_density_per_arcmin2: f64,
    /// Extra bright stars per segment, bright enough to saturate and bleed (0 disables them).
    pub saturated_stars_per_segment: u32,
    /// Cosmic-ray tracks per segment.
    pub cosmic_rays_per_segment: u32,
    /// Seed of the whole simulation: same seed, same pixels.
    pub seed: u64,
}

impl Default for SkyParameters {
    fn default() -> Self {
        SkyParameters {
            filter: Filter::R,
            seeing_fwhm_arcsec: 0.7,
            star_density_per_arcmin2: 10.0,
            saturated_stars_per_segment: 1,
            cosmic_rays_per_segment: 5,
            seed: 0x5EED_0F5C_1E55,
        }
    }
}

/// The noiseless template of one segment plus its noise parameters; generates rows on demand.
///
/// Holds one segment's template (4.7 MB); [`SegmentGenerator::generate_rows`] does not allocate.
#[derive(Debug, Clone)]
pub struct SegmentGenerator {
    layout: SegmentLayout,
    bias_adu: i32,
    read_noise_adu: f64,
    gain_electrons_per_adu: f64,
    sky_adu: f64,
    /// `read_noise / sqrt(2)` in 1/256 ADU: scales the sum of two unit-normal windows.
    read_noise_scale: i32,
    /// Per column: sky shot-noise sigma in 1/256 ADU for data columns, 0 for prescan/overscan.
    sky_noise_scale_by_column: Box<[i32; COLUMNS]>,
    /// Key of the per-row noise offsets.
    noise_key: u64,
    /// Row-major noiseless pixels, `COLUMNS * ROWS`.
    template: Vec<i32>,
}

impl SegmentGenerator {
    /// Builds the template of segment `segment_index` of detector `detector_name` (e.g. `R22_S11`)
    /// in exposure `exposure_id`. Cost: a few milliseconds and one 4.7 MB allocation.
    pub fn new(
        params: SkyParameters,
        exposure_id: u64,
        detector_name: &str,
        segment_index: usize,
        vendor: Vendor,
    ) -> SegmentGenerator {
        assert!(params.seeing_fwhm_arcsec >= 0.1, "seeing FWHM must be at least 0.1 arcsec");
        assert!(params.seeing_fwhm_arcsec <= SEEING_FWHM_MAX_ARCSEC, "seeing FWHM must be at most 5 arcsec");
        assert!(params.star_density_per_arcmin2 >= 0.0, "star density must not be negative");
        assert!(params.star_density_per_arcmin2 <= 1000.0, "star density must be at most 1000/arcmin^2");
        assert!(segment_index < 16, "a detector has at most 16 segments");

        let amplifier_key =
            finalize(finalize(params.seed ^ 0xA3F1) ^ hash_name(detector_name) ^ segment_index as u64);
        let exposure_key = finalize(amplifier_key ^ finalize(exposure_id ^ 0x0E_C905));
        let mut amplifier_rng = SplitMix64::new(amplifier_key);
        let bias_adu = 15_000 + amplifier_rng.below(15_001) as i32;
        let read_noise_adu = 5.0 + 4.0 * amplifier_rng.unit();
        let gain_electrons_per_adu = 1.4 + 0.3 * amplifier_rng.unit();
        let sky_adu = params.filter.sky_electrons_per_pixel() / gain_electrons_per_adu;
        let sky_noise_adu = (sky_adu / gain_electrons_per_adu).sqrt();

        let layout = vendor.layout();
        let data_columns = data_column_range(&layout);
        let mut sky_noise_scale_by_column = Box::new([0i32; COLUMNS]);
        sky_noise_scale_by_column[data_columns.clone()].fill(fixed_point_sigma(sky_noise_adu));

        let mut generator = SegmentGenerator {
            layout,
            bias_adu,
            read_noise_adu,
            gain_electrons_per_adu,
            sky_adu,
            read_noise_scale: fixed_point_sigma(read_noise_adu / std::f64::consts::SQRT_2),
            sky_noise_scale_by_column,
            noise_key: finalize(exposure_key ^ 0x4015E),
            template: Vec::new(),
        };
        generator.build_template(&params, &mut amplifier_rng, &mut SplitMix64::new(exposure_key));
        generator
    }

    /// [`SegmentGenerator::new`] for segment `segment_index` of `detector` (named as in file names).
    pub fn for_detector(
        params: SkyParameters,
        exposure_id: u64,
        detector: &Detector,
        segment_index: usize,
    ) -> SegmentGenerator {
        assert!(segment_index < detector.segment_count(), "segment index beyond the detector's segments");
        SegmentGenerator::new(params, exposure_id, &detector.to_string(), segment_index, detector.vendor())
    }

    /// This amplifier's bias level, ADU.
    pub fn bias_adu(&self) -> i32 {
        self.bias_adu
    }

    /// This amplifier's read noise, ADU.
    pub fn read_noise_adu(&self) -> f64 {
        self.read_noise_adu
    }

    /// This amplifier's gain, electrons per ADU.
    pub fn gain_electrons_per_adu(&self) -> f64 {
        self.gain_electrons_per_adu
    }

    /// Sky level above bias in the data region, ADU.
    pub fn sky_adu(&self) -> f64 {
        self.sky_adu
    }

    /// The vendor layout the segment follows.
    pub fn layout(&self) -> SegmentLayout {
        self.layout
    }

    /// Writes the whole segment into `out` (exactly 576 x 2048 x 4 bytes), big-endian `i32`.
    pub fn generate_segment(&self, out: &mut [u8]) {
        self.generate_rows(0, SEGMENT_ROWS, out);
    }

    /// Writes rows `first_row..first_row + row_count` (0-based) into `out`, which must be exactly
    /// `row_count * 576 * 4` bytes: big-endian `i32`, row-major, 576 pixels a row. The bytes of a
    /// row do not depend on which range it was generated in.
    pub fn generate_rows(&self, first_row: u32, row_count: u32, out: &mut [u8]) {
        assert!(first_row <= SEGMENT_ROWS, "first row beyond the segment");
        assert!(row_count <= SEGMENT_ROWS - first_row, "row range beyond the segment");
        assert_eq!(out.len(), row_count as usize * ROW_SIZE_BYTES, "output must hold exactly the rows");

        let table = unit_normal_table();
        let no_sky_noise = [0i32; COLUMNS];
        let mut row_values = [0i32; COLUMNS];
        for (row_offset, row_out) in out.chunks_exact_mut(ROW_SIZE_BYTES).enumerate() {
            let row = first_row as usize + row_offset;
            let template_row: &[i32; COLUMNS] =
                self.template[row * COLUMNS..][..COLUMNS].try_into().expect("a row is COLUMNS wide");
            let sky_scale = if row < self.layout.data_rows as usize {
                &*self.sky_noise_scale_by_column
            } else {
                &no_sky_noise
            };
            let offsets = SplitMix64::new(finalize(self.noise_key ^ row as u64)).next_u64();
            let window = |shift: u32| -> &[i16; COLUMNS] {
                let start = (offsets >> shift) as usize & (NOISE_TABLE_STARTS - 1);
                table[start..][..COLUMNS].try_into().expect("table has a COLUMNS tail")
            };
            noisy_row(
                template_row,
                window(0),
                window(16),
                window(32),
                self.read_noise_scale,
                sky_scale,
                &mut row_values,
            );
            for (bytes, value) in row_out.chunks_exact_mut(BYTES_PER_PIXEL).zip(row_values.iter()) {
                bytes.copy_from_slice(&value.to_be_bytes());
            }
        }
    }

    fn build_template(
        &mut self,
        params: &SkyParameters,
        amplifier_rng: &mut SplitMix64,
        rng: &mut SplitMix64,
    ) {
        let layout = self.layout;
        let data_columns = data_column_range(&layout);
        let data_rows = layout.data_rows as usize;

        let mut data_row = [self.bias_adu; COLUMNS];
        data_row[data_columns.clone()].fill(self.bias_adu + self.sky_adu.round() as i32);
        let hot_column_count = amplifier_rng.below(4);
        for _ in 0..hot_column_count {
            let column = data_columns.start + amplifier_rng.below(data_columns.len() as u64) as usize;
            data_row[column] += 200 + amplifier_rng.below(4_800) as i32;
        }
        let overscan_row = [self.bias_adu; COLUMNS];

        self.template = Vec::with_capacity(COLUMNS * ROWS);
        for row in 0..ROWS {
            self.template.extend_from_slice(if row < data_rows { &data_row } else { &overscan_row });
        }

        let psf = PsfStamp::new(params.seeing_fwhm_arcsec);
        let data_area_arcmin2 =
            data_columns.len() as f64 * data_rows as f64 * (PIXEL_SCALE_ARCSEC / 60.0).powi(2);
        let star_count_mean = params.star_density_per_arcmin2 * data_area_arcmin2;
        let star_count = (star_count_mean + rng.unit()).floor() as u64;
        let mut bleeding_columns: Vec<usize> = Vec::new();
        for _ in 0..star_count {
            // Number counts N(>F) ~ F^-0.6 from 300 ADU up.
            let flux_adu = (300.0 * rng.unit_open().powf(-1.0 / 0.6)).min(STAR_FLUX_MAX_ADU);
            self.add_star(&psf, flux_adu, rng, &mut bleeding_columns);
        }
        for _ in 0..params.saturated_stars_per_segment {
            let flux_adu = 5.0e6 * (1.0 + 9.0 * rng.unit());
            self.add_star(&psf, flux_adu, rng, &mut bleeding_columns);
        }
        bleeding_columns.sort_unstable();
        bleeding_columns.dedup();
        for column in bleeding_columns {
            self.bleed_column(column);
        }
        for _ in 0..params.cosmic_rays_per_segment {
            self.add_cosmic_ray(rng);
        }
    }

    /// Adds a star of total `flux_adu` at a random data pixel; notes columns that went over the ADC.
    fn add_star(
        &mut self,
        psf: &PsfStamp,
        flux_adu: f64,
        rng: &mut SplitMix64,
        bleeding_columns: &mut Vec<usize>,
    ) {
        let data_columns = data_column_range(&self.layout);
        let data_rows = self.layout.data_rows as i32;
        let center_column = data_columns.start as i32 + rng.below(data_columns.len() as u64) as i32;
        let center_row = rng.below(data_rows as u64) as i32;
        let radius = psf.radius;
        for stamp_row in -radius..=radius {
            let row = center_row + stamp_row;
            if row < 0 || row >= data_rows {
                continue;
            }
            for stamp_column in -radius..=radius {
                let column = center_column + stamp_column;
                if column < data_columns.start as i32 || column >= data_columns.end as i32 {
                    continue;
                }
                let signal_adu = (flux_adu * psf.weight(stamp_column, stamp_row)) as i32;
                let pixel = &mut self.template[row as usize * COLUMNS + column as usize];
                *pixel += signal_adu;
                if *pixel > MAX_ADC_VALUE {
                    bleeding_columns.push(column as usize);
                }
            }
        }
    }

    /// Clips every over-range run of `column` at the ADC limit and spreads its excess charge half
    /// up, half down the column, filling pixels to the limit: a bleed trail.
    fn bleed_column(&mut self, column: usize) {
        let data_rows = self.layout.data_rows as usize;
        let mut row = 0;
        while row < data_rows {
            if self.template[row * COLUMNS + column] <= MAX_ADC_VALUE {
                row += 1;
                continue;
            }
            let run_first = row;
            let mut excess: i64 = 0;
            while row < data_rows && self.template[row * COLUMNS + column] > MAX_ADC_VALUE {
                excess += i64::from(self.template[row * COLUMNS + column] - MAX_ADC_VALUE);
                self.template[row * COLUMNS + column] = SATURATED_TEMPLATE_VALUE;
                row += 1;
            }
            let mut up = excess / 2;
            let mut down = excess - up;
            let mut below = row;
            while down > 0 && below < data_rows {
                down = self.fill_towards_limit(below, column, down);
                below += 1;
            }
            let mut above = run_first;
            while up > 0 && above > 0 {
                above -= 1;
                up = self.fill_towards_limit(above, column, up);
            }
            row = below.max(row);
        }
    }

    /// Moves up to `charge_adu` into pixel (`row`, `column`) up to the ADC limit; returns the rest.
    fn fill_towards_limit(&mut self, row: usize, column: usize, charge_adu: i64) -> i64 {
        let pixel = &mut self.template[row * COLUMNS + column];
        if *pixel >= MAX_ADC_VALUE {
            // Already saturated (another run, or this one): the charge passes through it.
            *pixel = SATURATED_TEMPLATE_VALUE;
            return charge_adu;
        }
        let room = i64::from(MAX_ADC_VALUE - *pixel);
        if charge_adu >= room {
            *pixel = SATURATED_TEMPLATE_VALUE;
            charge_adu - room
        } else {
            *pixel += charge_adu as i32;
            0
        }
    }

    /// Adds a straight cosmic-ray track of 1..=24 pixels at a random angle in the data region.
    fn add_cosmic_ray(&mut self, rng: &mut SplitMix64) {
        let data_columns = data_column_range(&self.layout);
        let data_rows = self.layout.data_rows as f64;
        let mut column = data_columns.start as f64 + rng.unit() * data_columns.len() as f64;
        let mut row = rng.unit() * data_rows;
        let length_pixels = 1 + rng.below(24);
        let angle = rng.unit() * std::f64::consts::TAU;
        let deposit_adu = 500 + rng.below(4_000) as i32;
        for _ in 0..length_pixels {
            let inside = column >= data_columns.start as f64
                && column < data_columns.end as f64
                && row >= 0.0
                && row < data_rows;
            if inside {
                let pixel = &mut self.template[row as usize * COLUMNS + column as usize];
                *pixel = (*pixel + deposit_adu).min(SATURATED_TEMPLATE_VALUE);
            }
            column += angle.cos();
            row += angle.sin();
        }
    }
}

/// `out = clip(template + noise)` for one row; branch-free so that it vectorises.
#[inline]
fn noisy_row(
    template: &[i32; COLUMNS],
    read_a: &[i16; COLUMNS],
    read_b: &[i16; COLUMNS],
    sky: &[i16; COLUMNS],
    read_noise_scale: i32,
    sky_noise_scale: &[i32; COLUMNS],
    out: &mut [i32; COLUMNS],
) {
    const ROUNDING: i32 = 1 << (NOISE_PRODUCT_SHIFT - 1);
    for column in 0..COLUMNS {
        let read = (i32::from(read_a[column]) + i32::from(read_b[column])) * read_noise_scale;
        let shot = i32::from(sky[column]) * sky_noise_scale[column];
        let noise_adu = (read + shot + ROUNDING) >> NOISE_PRODUCT_SHIFT;
        out[column] = (template[column] + noise_adu).clamp(0, MAX_ADC_VALUE);
    }
}

fn data_column_range(layout: &SegmentLayout) -> std::ops::Range<usize> {
    let first = layout.prescan_columns as usize;
    first..first + layout.data_columns as usize
}

/// A sigma in ADU as the fixed-point multiplier of a unit-normal table entry.
fn fixed_point_sigma(sigma_adu: f64) -> i32 {
    assert!((0.0..=1000.0).contains(&sigma_adu), "noise sigma out of range");
    (sigma_adu * NOISE_TABLE_ONE_SIGMA).round() as i32
}

/// Unit-normal samples times 256, `NOISE_TABLE_STARTS + COLUMNS` long so any start has a full row.
/// Built once per process from a fixed seed (Box-Muller), identical in every run.
fn unit_normal_table() -> &'static [i16] {
    static TABLE: OnceLock<Vec<i16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = SplitMix64::new(0xDD5E_ED7A_B1E0);
        (0..NOISE_TABLE_STARTS + COLUMNS)
            .map(|_| {
                let radius = (-2.0 * rng.unit_open().ln()).sqrt();
                let z = radius * (std::f64::consts::TAU * rng.unit()).cos();
                (z * NOISE_TABLE_ONE_SIGMA).round().clamp(-6.0 * 256.0, 6.0 * 256.0) as i16
            })
            .collect()
    })
}

/// A normalised Gaussian PSF sampled on whole pixels, built once per segment.
struct PsfStamp {
    radius: i32,
    weights: Vec<f64>,
}

impl PsfStamp {
    fn new(seeing_fwhm_arcsec: f64) -> PsfStamp {
        let sigma_pixels = seeing_fwhm_arcsec / PIXEL_SCALE_ARCSEC / (8.0 * 2f64.ln()).sqrt();
        let radius = ((4.0 * sigma_pixels).ceil() as i32).clamp(1, PSF_STAMP_MAX_RADIUS);
        let side = 2 * radius + 1;
        let mut weights: Vec<f64> = (0..side * side)
            .map(|index| {
                let dx = f64::from(index % side - radius);
                let dy = f64::from(index / side - radius);
                (-(dx * dx + dy * dy) / (2.0 * sigma_pixels * sigma_pixels)).exp()
            })
            .collect();
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|weight| *weight /= total);
        PsfStamp { radius, weights }
    }

    fn weight(&self, dx: i32, dy: i32) -> f64 {
        let side = 2 * self.radius + 1;
        self.weights[((dy + self.radius) * side + dx + self.radius) as usize]
    }
}

/// FNV-1a of a detector name: stable across runs and platforms (unlike `std`'s hasher).
fn hash_name(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{SEGMENT_PIXEL_COUNT, SEGMENT_SIZE_BYTES};

    fn generate(generator: &SegmentGenerator) -> Vec<u8> {
        let mut out = vec![0u8; SEGMENT_SIZE_BYTES];
        generator.generate_segment(&mut out);
        out
    }

    fn pixels(bytes: &[u8]) -> Vec<i32> {
        bytes.chunks_exact(4).map(|b| i32::from_be_bytes(b.try_into().unwrap())).collect()
    }

    fn default_generator(
        exposure_id: u64,
        detector: &str,
        segment: usize,
        vendor: Vendor,
    ) -> SegmentGenerator {
        SegmentGenerator::new(SkyParameters::default(), exposure_id, detector, segment, vendor)
    }

    fn mean(values: impl Iterator<Item = i32>) -> (f64, f64) {
        let values: Vec<f64> = values.map(f64::from).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        (mean, variance.sqrt())
    }

    #[test]
    fn same_inputs_regenerate_identical_bytes() {
        let first = generate(&default_generator(2025041500060, "R22_S11", 3, Vendor::Itl));
        let second = generate(&default_generator(2025041500060, "R22_S11", 3, Vendor::Itl));
        assert_eq!(first.len(), SEGMENT_SIZE_BYTES);
        assert!(first == second);
    }

    #[test]
    fn row_ranges_equal_slices_of_the_full_segment() {
        for vendor in [Vendor::Itl, Vendor::E2v] {
            let generator = default_generator(7, "R10_S02", 9, vendor);
            let full = generate(&generator);
            for (first_row, row_count) in [(0, 1), (0, 100), (1, 7), (1999, 3), (2000, 48), (2047, 1), (5, 0)]
            {
                let mut part = vec![0u8; row_count as usize * ROW_SIZE_BYTES];
                generator.generate_rows(first_row, row_count, &mut part);
                let start = first_row as usize * ROW_SIZE_BYTES;
                assert!(part == full[start..start + part.len()], "rows {first_row}+{row_count} differ");
            }
            let mut pieces = Vec::new();
            for first_row in (0..SEGMENT_ROWS).step_by(300) {
                let row_count = 300.min(SEGMENT_ROWS - first_row);
                let mut part = vec![0u8; row_count as usize * ROW_SIZE_BYTES];
                generator.generate_rows(first_row, row_count, &mut part);
                pieces.extend_from_slice(&part);
            }
            assert!(pieces == full);
        }
    }

    #[test]
    fn different_segments_detectors_exposures_and_seeds_differ() {
        let base = generate(&default_generator(1, "R22_S11", 0, Vendor::Itl));
        assert!(base != generate(&default_generator(1, "R22_S11", 1, Vendor::Itl)));
        assert!(base != generate(&default_generator(1, "R22_S12", 0, Vendor::Itl)));
        assert!(base != generate(&default_generator(2, "R22_S11", 0, Vendor::Itl)));
        let reseeded = SkyParameters { seed: 99, ..SkyParameters::default() };
        assert!(base != generate(&SegmentGenerator::new(reseeded, 1, "R22_S11", 0, Vendor::Itl)));
    }

    #[test]
    fn amplifier_properties_are_stable_across_exposures_and_in_range() {
        for segment in 0..16 {
            let first = default_generator(1, "R01_S00", segment, Vendor::E2v);
            let later = default_generator(2, "R01_S00", segment, Vendor::E2v);
            assert_eq!(first.bias_adu(), later.bias_adu());
            assert_eq!(first.read_noise_adu(), later.read_noise_adu());
            assert!((15_000..=30_000).contains(&first.bias_adu()));
            assert!((5.0..=9.0).contains(&first.read_noise_adu()));
        }
    }

    #[test]
    fn overscan_and_prescan_hold_bias_plus_read_noise() {
        for vendor in [Vendor::Itl, Vendor::E2v] {
            let generator = default_generator(42, "R22_S11", 5, vendor);
            let values = pixels(&generate(&generator));
            let layout = generator.layout();
            let bias = f64::from(generator.bias_adu());
            let overscan_first = (layout.prescan_columns + layout.data_columns) as usize;
            let serial = (0..layout.data_rows as usize)
                .flat_map(|row| (overscan_first..COLUMNS).map(move |column| row * COLUMNS + column));
            let parallel = (layout.data_rows as usize * COLUMNS)..SEGMENT_PIXEL_COUNT;
            let prescan = (0..ROWS)
                .flat_map(|row| (0..layout.prescan_columns as usize).map(move |c| row * COLUMNS + c));
            for (name, indexes) in [
                ("serial overscan", serial.collect::<Vec<_>>()),
                ("parallel overscan", parallel.collect()),
                ("prescan", prescan.collect()),
            ] {
                let (mean, sigma) = mean(indexes.iter().map(|&index| values[index]));
                assert!((mean - bias).abs() < 0.5, "{vendor:?} {name}: mean {mean} vs bias {bias}");
                let expected = generator.read_noise_adu();
                assert!(
                    (sigma - expected).abs() < 0.1 * expected,
                    "{vendor:?} {name}: sigma {sigma} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn every_pixel_is_an_18_bit_value() {
        let crowded = SkyParameters {
            star_density_per_arcmin2: 200.0,
            saturated_stars_per_segment: 20,
            cosmic_rays_per_segment: 200,
            filter: Filter::Y,
            ..SkyParameters::default()
        };
        for segment in 0..4 {
            let values =
                pixels(&generate(&SegmentGenerator::new(crowded, 3, "R30_S21", segment, Vendor::Itl)));
            assert!(values.iter().all(|value| (0..=MAX_ADC_VALUE).contains(value)));
        }
    }

    #[test]
    fn saturated_stars_clip_at_the_adc_limit_and_bleed_along_the_column() {
        let params = SkyParameters { saturated_stars_per_segment: 3, ..SkyParameters::default() };
        let generator = SegmentGenerator::new(params, 11, "R22_S11", 2, Vendor::Itl);
        let values = pixels(&generate(&generator));
        let saturated: Vec<usize> =
            (0..SEGMENT_PIXEL_COUNT).filter(|&index| values[index] == MAX_ADC_VALUE).collect();
        assert!(saturated.len() > 50, "only {} saturated pixels", saturated.len());
        // A bleed trail: some column holds a vertical run of saturated pixels longer than the PSF core.
        let longest_run = (0..COLUMNS)
            .map(|column| {
                let mut longest = 0;
                let mut run = 0;
                for row in 0..ROWS {
                    run = if values[row * COLUMNS + column] == MAX_ADC_VALUE { run + 1 } else { 0 };
                    longest = longest.max(run);
                }
                longest
            })
            .max()
            .unwrap();
        assert!(longest_run > 20, "longest saturated column run is {longest_run}");

        let none = SkyParameters { saturated_stars_per_segment: 0, star_density_per_arcmin2: 0.0, ..params };
        let values = pixels(&generate(&SegmentGenerator::new(none, 11, "R22_S11", 2, Vendor::Itl)));
        assert!(!values.contains(&MAX_ADC_VALUE));
    }

    #[test]
    fn sky_level_rises_from_u_to_y() {
        let data_median = |filter: Filter| {
            let params = SkyParameters { filter, ..SkyParameters::default() };
            let generator = SegmentGenerator::new(params, 5, "R22_S11", 0, Vendor::E2v);
            let layout = generator.layout();
            let values = pixels(&generate(&generator));
            let mut data: Vec<i32> = (0..layout.data_rows as usize)
                .flat_map(|row| data_column_range(&layout).map(move |column| row * COLUMNS + column))
                .map(|index| values[index] - generator.bias_adu())
                .collect();
            data.sort_unstable();
            let median = f64::from(data[data.len() / 2]);
            assert!(
                (median - generator.sky_adu()).abs() < 5.0,
                "{filter:?}: {median} vs {}",
                generator.sky_adu()
            );
            median
        };
        let medians: Vec<f64> = Filter::ALL.iter().map(|&filter| data_median(filter)).collect();
        assert!(medians.windows(2).all(|pair| pair[0] < pair[1]), "{medians:?}");
    }

    #[test]
    fn for_detector_names_the_detector_as_in_file_names() {
        let focalplane = crate::geometry::Focalplane::lsstcam();
        let detector = focalplane.detectors()[0];
        let by_detector = SegmentGenerator::for_detector(SkyParameters::default(), 1, &detector, 4);
        let by_name =
            SegmentGenerator::new(SkyParameters::default(), 1, &detector.to_string(), 4, detector.vendor());
        assert!(generate(&by_detector) == generate(&by_name));
    }
}
