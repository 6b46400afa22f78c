//! Seeded generator of sky-like raw segment pixels, for the DAQ simulator.
//!
//! A [`SegmentGenerator`] produces the 576 x 2048 big-endian `i32` pixels of one amplifier
//! segment, deterministically from `(seed, exposure_id, detector name, segment index)` and a
//! [`Scene`]: any segment, or any range of its rows, can be regenerated bit-for-bit later (to
//! verify what the ingest wrote).
//!
//! # How a segment is built
//!
//! A generator is COMPACT (about 10 KB on average, at most about 30 KB with the default sky, see
//! [`SegmentGenerator::heap_size_bytes`]): construction draws a deterministic list of sources
//! (stars with their flux, cosmic-ray track pixels; hot columns go into one per-column base row of
//! bias + sky), and precomputes densely only the few BLEEDING columns, those where stars push the
//! noiseless signal over the ADC limit: a whole column is needed to spread the saturated charge up
//! and down it, and the rows the bleed changed are kept. [`SegmentGenerator::generate_rows`] renders each row on demand: the base row, plus
//! the PSF stamp rows of the stars whose stamp crosses that row (stars are sorted by row), plus
//! the cosmic-ray pixels of the row, then the bleeding columns' precomputed values, then noise.
//! For noise it takes three windows, at hashed offsets, into one shared table of unit-normal
//! samples (`a`, `b`, `c`), and per pixel computes
//! `clip(noiseless + read_sigma * (a + b) / sqrt(2) + sky_sigma * c)` in fixed point; that loop has
//! no branches and no table gathers, so it vectorises. Everything about row `r` depends only on
//! `r`, so rows are identical however the segment is split into ranges.
//!
//! Memory is what the sources need: 16 B per star, 8 B per cosmic-ray pixel, the PSF stamp (at
//! most 49 x 49 `f64`), two 2.3 KB per-column rows and 4 B per row of each bleed trail (at most
//! 8 KB a column). A crowded sky (hundreds of stars per arcmin^2, dozens of saturated stars) grows
//! past the default's size; the default stays far below 256 KB, so the 3216 segments of a whole
//! LSSTCam exposure take about 30 MB of generators, well under 1 GB.
//!
//! # Scenes: revisited fields and injected transients
//!
//! A [`Scene`] says which FIELD the exposure looks at and whether a [`Transient`] is on. With a
//! field id, the static sky (stars, saturated stars and their bleed trails) is seeded from
//! `(seed, field, detector, segment)` instead of the exposure id, so two visits of the same field
//! show the same stars on the same pixels, while noise and cosmic rays still change with the
//! exposure. A transient is one extra point source per segment, at the position
//! [`transient_site`] gives for `(seed, field, detector, segment)`, present only in the exposures
//! whose scene switches it on. Without a field id everything is seeded from the exposure, as
//! before scenes existed.
//!
//! # Faithful
//!
//! - The vendor layout ([`Vendor::layout`]): prescan, serial overscan and parallel overscan hold
//!   bias + read noise only; the data region holds the signal.
//! - Per-amplifier bias (15000..30000 ADU), read noise (5..9 ADU), gain (1.4..1.7 e-/ADU) and hot
//!   columns depend on `(seed, detector, segment)` only, so they are stable across exposures, as
//!   an amplifier's are; stars depend on the field (or the exposure), cosmic rays and noise on the
//!   exposure.
//! - Sky level by [`Filter`] (u darkest, y brightest), with its Poisson noise added to the read
//!   noise in the data region. Stars with a Gaussian PSF of the given seeing FWHM (0.2"/pixel),
//!   a power-law flux distribution, and saturated stars clipped at [`MAX_ADC_VALUE`] whose excess
//!   charge bleeds up and down the column.
//! - Every value is clipped to `0..=MAX_ADC_VALUE` (18-bit ADC).
//!
//! # Simplified
//!
//! - Noise is Gaussian with one sigma per region (read noise; read + sky shot noise): the shot
//!   noise of stars, cosmic rays and hot columns is not modelled (so a difference of two visits of
//!   one field is pure noise wherever nothing changed, which makes transients easy to find).
//! - The noise table is finite (65,536 unit-normal samples at 1/256 sigma resolution): a row's
//!   noise is a sum of three windows into it, so noise is only statistically, not
//!   cryptographically, independent.
//! - Stars sit on whole pixels (one precomputed PSF stamp), are random per field or exposure (no
//!   sky catalogue: a field id is a seed, not a pointing), and saturate at the ADC limit rather
//!   than at a full well. Seeing is per exposure in reality; here the PSF comes from
//!   [`SkyParameters`], so two visits of a field with the same parameters have identical stars.
//! - A transient is a constant point source with the same PSF as the stars: no light curve, no
//!   host galaxy, no moving objects, and its position is drawn, not taken from a catalogue.
//! - No flat field, vignetting, sky gradient, cross-talk, deferred charge, or bias structure.
//!   Cosmic rays are straight tracks with a constant deposit per pixel; they do not bleed.

use crate::random::{finalize, SplitMix64};
use std::sync::OnceLock;

use crate::frame::MAX_ADC_VALUE;
use crate::geometry::{Detector, SegmentLayout, Vendor, BYTES_PER_PIXEL, SEGMENT_COLUMNS, SEGMENT_ROWS};

const COLUMNS: usize = SEGMENT_COLUMNS as usize;
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
/// A noiseless value that clips to [`MAX_ADC_VALUE`] whatever noise is added (noise stays far below).
const SATURATED_TEMPLATE_VALUE: i32 = MAX_ADC_VALUE + 1_000_000;
/// Largest PSF stamp radius in pixels (a 5" FWHM needs 18).
const PSF_STAMP_MAX_RADIUS: i32 = 24;
/// Largest total flux of one star, ADU (keeps sums far from `i32` overflow).
pub const STAR_FLUX_MAX_ADU: f64 = 5.0e7;
/// Largest seeing the generator accepts, arcseconds FWHM.
const SEEING_FWHM_MAX_ARCSEC: f64 = 5.0;
/// A transient sits at least this far (pixels) from the data region's edges, so its whole PSF
/// stamp is inside whatever the seeing.
const TRANSIENT_EDGE_MARGIN: u32 = PSF_STAMP_MAX_RADIUS as u32 + 1;

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

/// An injected transient: a point source (same PSF as the stars) of `flux_adu` total ADU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transient {
    /// Total flux above sky, ADU, in `0..=`[`STAR_FLUX_MAX_ADU`].
    pub flux_adu: f64,
}

/// What an exposure looks at, beyond the [`SkyParameters`]; see the module docs.
///
/// The default (no field, no transient) seeds the whole sky from the exposure id.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scene {
    /// The field observed: exposures with the same field id show the same stars.
    pub field_id: Option<u64>,
    /// A transient switched on in this exposure, at [`transient_site`] of the field (the exposure
    /// id stands in for the field when `field_id` is `None`).
    pub transient: Option<Transient>,
}

impl Scene {
    /// The key the static sky and the transient position derive from: the field id, or the
    /// exposure id without one.
    pub fn field_key(&self, exposure_id: u64) -> u64 {
        self.field_id.unwrap_or(exposure_id)
    }
}

/// Where a segment's transient is, in the segment's own pixel coordinates (0-based, columns
/// counted from the first prescan column, rows from the first row read out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransientSite {
    /// Row of the PSF centre (inside the data rows).
    pub row: u32,
    /// Column of the PSF centre (inside the data columns).
    pub column: u32,
}

/// Where the transient of segment `segment_index` of `detector_name` sits when the field with
/// key `field_key` ([`Scene::field_key`]) is observed with sky seed `seed`: a pure function of
/// `(seed, field, detector, segment)`, at least 25 pixels inside the data region.
pub fn transient_site(
    seed: u64,
    field_key: u64,
    detector_name: &str,
    segment_index: usize,
    vendor: Vendor,
) -> TransientSite {
    let layout = vendor.layout();
    let mut rng = SplitMix64::new(finalize(
        amplifier_key(seed, detector_name, segment_index) ^ finalize(field_key ^ 0x7EA7),
    ));
    let span = |length: u32| u64::from(length - 2 * TRANSIENT_EDGE_MARGIN);
    let column = layout.prescan_columns + TRANSIENT_EDGE_MARGIN + rng.below(span(layout.data_columns)) as u32;
    let row = TRANSIENT_EDGE_MARGIN + rng.below(span(layout.data_rows)) as u32;
    TransientSite { row, column }
}

/// One star (or the transient): PSF centre and total flux.
#[derive(Debug, Clone, Copy)]
struct Star {
    row: i32,
    column: i32,
    flux_adu: f64,
}

/// One pixel of a cosmic-ray track.
#[derive(Debug, Clone, Copy)]
struct CosmicRayPixel {
    row: u16,
    column: u16,
    deposit_adu: i32,
}

/// A column whose stars went over the ADC limit: its noiseless values over the rows the bleed
/// changed (saturated runs and trails, cosmic rays included); other rows render as usual.
#[derive(Debug, Clone)]
struct BleedingColumn {
    column: usize,
    first_row: usize,
    rows: Box<[i32]>,
}

/// One segment's sources and noise parameters; renders rows on demand (see the module docs).
///
/// Compact (see [`SegmentGenerator::heap_size_bytes`]); [`SegmentGenerator::generate_rows`] does
/// not allocate.
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
    /// Noiseless data row without stars or cosmic rays: bias, bias + sky, hot columns.
    base_data_row: Box<[i32; COLUMNS]>,
    psf: PsfStamp,
    /// Stars (and the transient, when on), sorted by row.
    stars: Vec<Star>,
    /// Cosmic-ray pixels, sorted by row.
    cosmic_rays: Vec<CosmicRayPixel>,
    /// Columns precomputed densely, sorted by column.
    bleeding_columns: Vec<BleedingColumn>,
}

impl SegmentGenerator {
    /// [`SegmentGenerator::with_scene`] with the default [`Scene`] (everything seeded from the
    /// exposure).
    pub fn new(
        params: SkyParameters,
        exposure_id: u64,
        detector_name: &str,
        segment_index: usize,
        vendor: Vendor,
    ) -> SegmentGenerator {
        SegmentGenerator::with_scene(
            params,
            Scene::default(),
            exposure_id,
            detector_name,
            segment_index,
            vendor,
        )
    }

    /// Builds the generator of segment `segment_index` of detector `detector_name` (e.g. `R22_S11`)
    /// in exposure `exposure_id` looking at `scene`. Cost: tens of microseconds with the default sky.
    pub fn with_scene(
        params: SkyParameters,
        scene: Scene,
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
        if let Some(transient) = scene.transient {
            assert!(
                (0.0..=STAR_FLUX_MAX_ADU).contains(&transient.flux_adu),
                "transient flux must be in 0..={STAR_FLUX_MAX_ADU} ADU"
            );
        }

        let amplifier_key = amplifier_key(params.seed, detector_name, segment_index);
        let exposure_key = finalize(amplifier_key ^ finalize(exposure_id ^ 0x0E_C905));
        let static_sky_key = match scene.field_id {
            Some(field_id) => finalize(amplifier_key ^ finalize(field_id ^ 0xF1E1D)),
            None => exposure_key,
        };
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

        let mut base_data_row = Box::new([bias_adu; COLUMNS]);
        base_data_row[data_columns.clone()].fill(bias_adu + sky_adu.round() as i32);
        let hot_column_count = amplifier_rng.below(4);
        for _ in 0..hot_column_count {
            let column = data_columns.start + amplifier_rng.below(data_columns.len() as u64) as usize;
            base_data_row[column] += 200 + amplifier_rng.below(4_800) as i32;
        }

        let mut generator = SegmentGenerator {
            layout,
            bias_adu,
            read_noise_adu,
            gain_electrons_per_adu,
            sky_adu,
            read_noise_scale: fixed_point_sigma(read_noise_adu / std::f64::consts::SQRT_2),
            sky_noise_scale_by_column,
            noise_key: finalize(exposure_key ^ 0x4015E),
            base_data_row,
            psf: PsfStamp::new(params.seeing_fwhm_arcsec),
            stars: Vec::new(),
            cosmic_rays: Vec::new(),
            bleeding_columns: Vec::new(),
        };
        generator.draw_stars(&params, &mut SplitMix64::new(static_sky_key));
        if let Some(transient) = scene.transient {
            let site = transient_site(
                params.seed,
                scene.field_key(exposure_id),
                detector_name,
                segment_index,
                vendor,
            );
            generator.stars.push(Star {
                row: site.row as i32,
                column: site.column as i32,
                flux_adu: transient.flux_adu,
            });
        }
        generator.stars.sort_by_key(|star| star.row);
        let mut cosmic_ray_rng = SplitMix64::new(finalize(exposure_key ^ 0xC051C));
        for _ in 0..params.cosmic_rays_per_segment {
            generator.add_cosmic_ray(&mut cosmic_ray_rng);
        }
        generator.cosmic_rays.sort_by_key(|pixel| pixel.row);
        generator.find_bleeding_columns();
        generator
    }

    /// [`SegmentGenerator::new`] for segment `segment_index` of `detector` (named as in file names).
    pub fn for_detector(
        params: SkyParameters,
        exposure_id: u64,
        detector: &Detector,
        segment_index: usize,
    ) -> SegmentGenerator {
        SegmentGenerator::for_detector_in_scene(
            params,
            Scene::default(),
            exposure_id,
            detector,
            segment_index,
        )
    }

    /// [`SegmentGenerator::with_scene`] for segment `segment_index` of `detector`.
    pub fn for_detector_in_scene(
        params: SkyParameters,
        scene: Scene,
        exposure_id: u64,
        detector: &Detector,
        segment_index: usize,
    ) -> SegmentGenerator {
        assert!(segment_index < detector.segment_count(), "segment index beyond the detector's segments");
        SegmentGenerator::with_scene(
            params,
            scene,
            exposure_id,
            &detector.to_string(),
            segment_index,
            detector.vendor(),
        )
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

    /// Bytes this generator owns on the heap (sources, PSF stamp, per-column rows, bleeding
    /// columns); the struct itself adds `size_of::<SegmentGenerator>()`.
    pub fn heap_size_bytes(&self) -> usize {
        use std::mem::size_of;
        2 * size_of::<[i32; COLUMNS]>()
            + self.psf.weights.capacity() * size_of::<f64>()
            + self.stars.capacity() * size_of::<Star>()
            + self.cosmic_rays.capacity() * size_of::<CosmicRayPixel>()
            + self.bleeding_columns.capacity() * size_of::<BleedingColumn>()
            + self.bleeding_columns.iter().map(|column| column.rows.len() * size_of::<i32>()).sum::<usize>()
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
        let overscan_row = [self.bias_adu; COLUMNS];
        let mut data_row = [0i32; COLUMNS];
        let mut row_values = [0i32; COLUMNS];
        for (row_offset, row_out) in out.chunks_exact_mut(ROW_SIZE_BYTES).enumerate() {
            let row = first_row as usize + row_offset;
            let (noiseless, sky_scale) = if row < self.layout.data_rows as usize {
                self.noiseless_data_row(row, &mut data_row);
                (&data_row, &*self.sky_noise_scale_by_column)
            } else {
                (&overscan_row, &no_sky_noise)
            };
            let offsets = SplitMix64::new(finalize(self.noise_key ^ row as u64)).next_u64();
            let window = |shift: u32| -> &[i16; COLUMNS] {
                let start = (offsets >> shift) as usize & (NOISE_TABLE_STARTS - 1);
                table[start..][..COLUMNS].try_into().expect("table has a COLUMNS tail")
            };
            noisy_row(
                noiseless,
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

    /// The noiseless values of data row `row` (before clipping): base row, stars, cosmic rays,
    /// then the bleeding columns' precomputed values. Every value is at most
    /// [`SATURATED_TEMPLATE_VALUE`].
    fn noiseless_data_row(&self, row: usize, out: &mut [i32; COLUMNS]) {
        out.copy_from_slice(&*self.base_data_row);
        let row = row as i32;
        let radius = self.psf.radius;
        let data_columns = data_column_range(&self.layout);
        let (first_column, end_column) = (data_columns.start as i32, data_columns.end as i32);
        let first_star = self.stars.partition_point(|star| star.row < row - radius);
        for star in self.stars[first_star..].iter().take_while(|star| star.row <= row + radius) {
            let weights = self.psf.row_weights(row - star.row);
            let left = (star.column - radius).max(first_column);
            let right = (star.column + radius + 1).min(end_column);
            for column in left..right {
                let signal_adu = (star.flux_adu * weights[(column - star.column + radius) as usize]) as i32;
                let pixel = &mut out[column as usize];
                // Only bleeding columns (overwritten below) can exceed the ADC limit here.
                *pixel = pixel.saturating_add(signal_adu);
            }
        }
        let first_ray = self.cosmic_rays.partition_point(|pixel| i32::from(pixel.row) < row);
        for ray in self.cosmic_rays[first_ray..].iter().take_while(|pixel| i32::from(pixel.row) == row) {
            let pixel = &mut out[usize::from(ray.column)];
            *pixel = pixel.saturating_add(ray.deposit_adu).min(SATURATED_TEMPLATE_VALUE);
        }
        for bleeding in &self.bleeding_columns {
            if let Some(&value) = bleeding.rows.get((row as usize).wrapping_sub(bleeding.first_row)) {
                out[bleeding.column] = value;
            }
        }
    }

    /// Draws the field's (or exposure's) stars: the power-law population, then the saturated ones.
    fn draw_stars(&mut self, params: &SkyParameters, rng: &mut SplitMix64) {
        let data_columns = data_column_range(&self.layout);
        let data_rows = self.layout.data_rows;
        let data_area_arcmin2 =
            data_columns.len() as f64 * f64::from(data_rows) * (PIXEL_SCALE_ARCSEC / 60.0).powi(2);
        let star_count_mean = params.star_density_per_arcmin2 * data_area_arcmin2;
        let star_count = (star_count_mean + rng.unit()).floor() as u64;
        let draw_star = |flux_adu: f64, rng: &mut SplitMix64| Star {
            column: data_columns.start as i32 + rng.below(data_columns.len() as u64) as i32,
            row: rng.below(u64::from(data_rows)) as i32,
            flux_adu,
        };
        let mut stars =
            Vec::with_capacity(star_count as usize + params.saturated_stars_per_segment as usize + 1);
        for _ in 0..star_count {
            // Number counts N(>F) ~ F^-0.6 from 300 ADU up.
            let flux_adu = (300.0 * rng.unit_open().powf(-1.0 / 0.6)).min(STAR_FLUX_MAX_ADU);
            stars.push(draw_star(flux_adu, rng));
        }
        for _ in 0..params.saturated_stars_per_segment {
            let flux_adu = 5.0e6 * (1.0 + 9.0 * rng.unit());
            stars.push(draw_star(flux_adu, rng));
        }
        self.stars = stars;
    }

    /// Finds the columns where stars push a noiseless pixel over the ADC limit and precomputes
    /// them densely, bleed trails and cosmic rays included. A cheap upper bound per column (base
    /// plus each touching star's largest contribution to it) rules out almost every column first.
    fn find_bleeding_columns(&mut self) {
        let data_columns = data_column_range(&self.layout);
        let radius = self.psf.radius;
        let mut upper_bound: Vec<i64> = self.base_data_row.iter().map(|&value| i64::from(value)).collect();
        let centre_row = self.psf.row_weights(0);
        for star in &self.stars {
            for dx in -radius..=radius {
                let column = star.column + dx;
                if column >= 0 && data_columns.contains(&(column as usize)) {
                    upper_bound[column as usize] +=
                        i64::from((star.flux_adu * centre_row[(dx + radius) as usize]) as i32);
                }
            }
        }
        let data_rows = self.layout.data_rows as usize;
        let mut column_values: Vec<i64> = vec![0; data_rows];
        for column in data_columns {
            if upper_bound[column] <= i64::from(MAX_ADC_VALUE) {
                continue;
            }
            column_values.fill(i64::from(self.base_data_row[column]));
            for star in self.stars.iter().filter(|star| (star.column - column as i32).abs() <= radius) {
                for dy in -radius..=radius {
                    let row = star.row + dy;
                    if (0..data_rows as i32).contains(&row) {
                        let weight =
                            self.psf.row_weights(dy)[(column as i32 - star.column + radius) as usize];
                        column_values[row as usize] += i64::from((star.flux_adu * weight) as i32);
                    }
                }
            }
            if column_values.iter().all(|&value| value <= i64::from(MAX_ADC_VALUE)) {
                continue;
            }
            let before_bleed = column_values.clone();
            bleed(&mut column_values);
            let changed = |row: &usize| column_values[*row] != before_bleed[*row];
            let first_row = (0..data_rows).find(changed).expect("a saturated pixel changes");
            let last_row = (0..data_rows).rev().find(changed).expect("a saturated pixel changes");
            let mut rows: Box<[i32]> =
                column_values[first_row..=last_row].iter().map(|&value| value as i32).collect();
            for ray in self.cosmic_rays.iter().filter(|ray| usize::from(ray.column) == column) {
                if let Some(pixel) = rows.get_mut(usize::from(ray.row).wrapping_sub(first_row)) {
                    *pixel = (*pixel + ray.deposit_adu).min(SATURATED_TEMPLATE_VALUE);
                }
            }
            self.bleeding_columns.push(BleedingColumn { column, first_row, rows });
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
                self.cosmic_rays.push(CosmicRayPixel { row: row as u16, column: column as u16, deposit_adu });
            }
            column += angle.cos();
            row += angle.sin();
        }
    }
}

/// Clips every over-range run of a column's noiseless data rows at the ADC limit and spreads its
/// excess charge half up, half down the column, filling pixels to the limit: a bleed trail.
/// Saturated pixels become [`SATURATED_TEMPLATE_VALUE`]; every value ends at most that.
fn bleed(column: &mut [i64]) {
    let limit = i64::from(MAX_ADC_VALUE);
    let saturated = i64::from(SATURATED_TEMPLATE_VALUE);
    let rows = column.len();
    // Moves up to `charge` into `pixel` up to the ADC limit; returns the rest.
    let fill_towards_limit = |pixel: &mut i64, charge: i64| -> i64 {
        if *pixel >= limit {
            // Already saturated (another run, or this one): the charge passes through it.
            *pixel = saturated;
            return charge;
        }
        let room = limit - *pixel;
        if charge >= room {
            *pixel = saturated;
            charge - room
        } else {
            *pixel += charge;
            0
        }
    };
    let mut row = 0;
    while row < rows {
        if column[row] <= limit {
            row += 1;
            continue;
        }
        let run_first = row;
        let mut excess: i64 = 0;
        while row < rows && column[row] > limit {
            excess += column[row] - limit;
            column[row] = saturated;
            row += 1;
        }
        let mut up = excess / 2;
        let mut down = excess - up;
        let mut below = row;
        while down > 0 && below < rows {
            down = fill_towards_limit(&mut column[below], down);
            below += 1;
        }
        let mut above = run_first;
        while up > 0 && above > 0 {
            above -= 1;
            up = fill_towards_limit(&mut column[above], up);
        }
        row = below.max(row);
    }
    for value in column.iter_mut() {
        *value = (*value).min(saturated);
    }
}

/// `out = clip(noiseless + noise)` for one row; branch-free so that it vectorises.
#[inline]
fn noisy_row(
    noiseless: &[i32; COLUMNS],
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
        out[column] = (noiseless[column] + noise_adu).clamp(0, MAX_ADC_VALUE);
    }
}

fn data_column_range(layout: &SegmentLayout) -> std::ops::Range<usize> {
    let first = layout.prescan_columns as usize;
    first..first + layout.data_columns as usize
}

/// The key of everything that belongs to the amplifier itself: `(seed, detector, segment)`.
fn amplifier_key(seed: u64, detector_name: &str, segment_index: usize) -> u64 {
    finalize(finalize(seed ^ 0xA3F1) ^ hash_name(detector_name) ^ segment_index as u64)
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
#[derive(Debug, Clone)]
struct PsfStamp {
    radius: i32,
    /// Row-major `(2 * radius + 1)^2` weights summing to 1.
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

    /// The stamp row `dy` (`-radius..=radius`) from the centre: `2 * radius + 1` weights.
    fn row_weights(&self, dy: i32) -> &[f64] {
        let side = (2 * self.radius + 1) as usize;
        &self.weights[(dy + self.radius) as usize * side..][..side]
    }
}

/// FNV-1a of a detector name: stable across runs and platforms (unlike `std`'s hasher).
pub(crate) fn hash_name(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{SEGMENT_PIXEL_COUNT, SEGMENT_SIZE_BYTES};

    const ROWS: usize = SEGMENT_ROWS as usize;

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

    fn field_generator(
        params: SkyParameters,
        scene: Scene,
        exposure_id: u64,
        segment: usize,
    ) -> SegmentGenerator {
        SegmentGenerator::with_scene(params, scene, exposure_id, "R22_S11", segment, Vendor::Itl)
    }

    fn noiseless(generator: &SegmentGenerator) -> Vec<i32> {
        let mut row = [0i32; COLUMNS];
        let mut all = Vec::new();
        for index in 0..generator.layout().data_rows as usize {
            generator.noiseless_data_row(index, &mut row);
            all.extend_from_slice(&row);
        }
        all
    }

    /// The straightforward dense construction (the pre-compact implementation's algorithm):
    /// a full noiseless data region, stars added, over-range columns bled, cosmic rays added.
    fn dense_reference(generator: &SegmentGenerator) -> Vec<i32> {
        let data_rows = generator.layout().data_rows as usize;
        let data_columns = data_column_range(&generator.layout());
        let mut template: Vec<i64> =
            (0..data_rows).flat_map(|_| generator.base_data_row.iter().map(|&v| i64::from(v))).collect();
        let radius = generator.psf.radius;
        for star in &generator.stars {
            for dy in -radius..=radius {
                for dx in -radius..=radius {
                    let (row, column) = (star.row + dy, star.column + dx);
                    if (0..data_rows as i32).contains(&row) && data_columns.contains(&(column as usize)) {
                        let weight = generator.psf.row_weights(dy)[(dx + radius) as usize];
                        template[row as usize * COLUMNS + column as usize] +=
                            i64::from((star.flux_adu * weight) as i32);
                    }
                }
            }
        }
        for column in 0..COLUMNS {
            let mut values: Vec<i64> = (0..data_rows).map(|row| template[row * COLUMNS + column]).collect();
            if values.iter().any(|&value| value > i64::from(MAX_ADC_VALUE)) {
                bleed(&mut values);
                for (row, value) in values.into_iter().enumerate() {
                    template[row * COLUMNS + column] = value;
                }
            }
        }
        for ray in &generator.cosmic_rays {
            let pixel = &mut template[usize::from(ray.row) * COLUMNS + usize::from(ray.column)];
            *pixel = (*pixel + i64::from(ray.deposit_adu)).min(i64::from(SATURATED_TEMPLATE_VALUE));
        }
        template.into_iter().map(|value| value as i32).collect()
    }

    #[test]
    fn rows_rendered_on_demand_equal_the_dense_construction() {
        let crowded = SkyParameters {
            star_density_per_arcmin2: 100.0,
            saturated_stars_per_segment: 6,
            cosmic_rays_per_segment: 60,
            seeing_fwhm_arcsec: 1.4,
            ..SkyParameters::default()
        };
        for (params, segment) in [(SkyParameters::default(), 0), (crowded, 1), (crowded, 2)] {
            let generator = field_generator(params, Scene::default(), 17, segment);
            assert!(!generator.bleeding_columns.is_empty(), "no saturated star to test the bleed with");
            let rendered = noiseless(&generator);
            let reference = dense_reference(&generator);
            let differing = rendered.iter().zip(&reference).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "segment {segment}: {differing} noiseless pixels differ");
        }
    }

    #[test]
    fn a_generator_is_small_enough_to_cache_every_segment_in_flight() {
        let focalplane = crate::geometry::Focalplane::lsstcam();
        let mut total = 0usize;
        let mut largest = 0usize;
        let mut count = 0usize;
        // Every segment of a sample of detectors (ITL, e2v, guiders, wavefront) of one exposure.
        for detector in focalplane.detectors().iter().step_by(7) {
            for segment in 0..detector.segment_count() {
                let generator = SegmentGenerator::for_detector(
                    SkyParameters::default(),
                    2025041500060,
                    detector,
                    segment,
                );
                // Everything the generator owns, counted from its parts (lengths, not capacities).
                let owned = 2 * COLUMNS * 4
                    + generator.psf.weights.len() * 8
                    + generator.stars.len() * std::mem::size_of::<Star>()
                    + generator.cosmic_rays.len() * std::mem::size_of::<CosmicRayPixel>()
                    + generator.bleeding_columns.len() * std::mem::size_of::<BleedingColumn>()
                    + generator.bleeding_columns.iter().map(|column| column.rows.len() * 4).sum::<usize>();
                assert!(generator.heap_size_bytes() >= owned, "{} < {owned}", generator.heap_size_bytes());
                assert!(
                    generator.heap_size_bytes() <= owned + 1024,
                    "{} > {owned}",
                    generator.heap_size_bytes()
                );
                let size = generator.heap_size_bytes() + std::mem::size_of::<SegmentGenerator>();
                total += size;
                largest = largest.max(size);
                count += 1;
            }
        }
        let mean = total / count;
        assert!(largest <= 256 * 1024, "largest generator {largest} B");
        assert!(mean * 3216 < 100_000_000, "mean {mean} B: a whole exposure would need {} B", mean * 3216);
        assert!(mean > 4 * 1024, "mean {mean} B: heap_size_bytes misses the per-column rows");
    }

    #[test]
    fn two_visits_of_a_field_show_the_same_stars_and_other_fields_differ() {
        let params = SkyParameters { cosmic_rays_per_segment: 0, ..SkyParameters::default() };
        let field = |field_id: u64| Scene { field_id: Some(field_id), transient: None };
        for segment in [0, 9] {
            let first = field_generator(params, field(7), 2025041500060, segment);
            let second = field_generator(params, field(7), 2025041500061, segment);
            let other_field = field_generator(params, field(8), 2025041500061, segment);
            assert!(noiseless(&first) == noiseless(&second), "same field, different stars");
            assert!(noiseless(&first) != noiseless(&other_field), "different fields, same stars");
            // Noise still changes with the exposure.
            assert!(generate(&first) != generate(&second));
            // Without a field, the stars change with the exposure.
            let unfielded = |exposure_id| field_generator(params, Scene::default(), exposure_id, segment);
            assert!(noiseless(&unfielded(2025041500060)) != noiseless(&unfielded(2025041500061)));
        }
        // Cosmic rays change with the exposure even on the same field.
        let with_rays = SkyParameters::default();
        let first = field_generator(with_rays, field(7), 2025041500060, 3);
        let second = field_generator(with_rays, field(7), 2025041500061, 3);
        assert!(noiseless(&first) != noiseless(&second));
    }

    #[test]
    fn transient_sites_are_deterministic_inside_the_data_region_and_vary() {
        let mut sites = std::collections::HashSet::new();
        for vendor in [Vendor::Itl, Vendor::E2v] {
            let layout = vendor.layout();
            let data_columns = data_column_range(&layout);
            for segment in 0..16 {
                for field in 0..4 {
                    let site = transient_site(5, field, "R22_S11", segment, vendor);
                    assert_eq!(site, transient_site(5, field, "R22_S11", segment, vendor));
                    let column = site.column as usize;
                    assert!(column >= data_columns.start + 25 && column + 25 < data_columns.end, "{site:?}");
                    assert!(site.row >= 25 && site.row + 25 < layout.data_rows, "{site:?}");
                    sites.insert((vendor, site));
                }
            }
        }
        assert!(sites.len() > 120, "only {} distinct sites of 128", sites.len());
        assert_ne!(
            transient_site(5, 0, "R22_S11", 0, Vendor::Itl),
            transient_site(6, 0, "R22_S11", 0, Vendor::Itl)
        );
        assert_ne!(
            transient_site(5, 0, "R22_S11", 0, Vendor::Itl),
            transient_site(5, 0, "R22_S12", 0, Vendor::Itl)
        );
    }

    /// A difference image of two visits of one field holds nothing but noise, except the
    /// transient, which sits at its reported site in the second visit only.
    #[test]
    fn a_difference_image_shows_only_the_transient_at_its_site() {
        let params = SkyParameters { cosmic_rays_per_segment: 0, ..SkyParameters::default() };
        let flux_adu = 50_000.0;
        let field_id = 41;
        for (segment, vendor) in [(2, Vendor::Itl), (13, Vendor::E2v)] {
            let build = |exposure_id, transient: Option<Transient>| {
                SegmentGenerator::with_scene(
                    params,
                    Scene { field_id: Some(field_id), transient },
                    exposure_id,
                    "R10_S01",
                    segment,
                    vendor,
                )
            };
            let first = build(100, None);
            let second = build(101, Some(Transient { flux_adu }));
            let site = transient_site(params.seed, field_id, "R10_S01", segment, vendor);
            let before = pixels(&generate(&first));
            let after = pixels(&generate(&second));
            let noise_sigma =
                (first.read_noise_adu().powi(2) + first.sky_adu() / first.gain_electrons_per_adu()).sqrt()
                    * std::f64::consts::SQRT_2;
            let radius = first.psf.radius as u32;
            let mut largest_elsewhere = 0.0f64;
            for row in 0..ROWS as u32 {
                for column in 0..COLUMNS as u32 {
                    let index = row as usize * COLUMNS + column as usize;
                    let difference = f64::from(after[index] - before[index]);
                    if row.abs_diff(site.row) > radius || column.abs_diff(site.column) > radius {
                        largest_elsewhere = largest_elsewhere.max(difference.abs());
                    }
                }
            }
            assert!(
                largest_elsewhere < 8.0 * noise_sigma,
                "{vendor:?}: a residual of {largest_elsewhere} ADU away from the transient (sigma {noise_sigma})"
            );
            let centre = site.row as usize * COLUMNS + site.column as usize;
            let peak_adu = flux_adu * first.psf.row_weights(0)[radius as usize];
            let difference = f64::from(after[centre] - before[centre]);
            assert!(difference > 0.8 * peak_adu, "{vendor:?}: transient peak {difference} vs {peak_adu} ADU");
            assert!(difference > 20.0 * noise_sigma);
            let sky_level = f64::from(first.bias_adu()) + first.sky_adu();
            assert!(f64::from(after[centre]) > sky_level + 0.8 * peak_adu, "second visit: no transient");
            // The first visit shows the field without the transient at the site: the same noiseless
            // value as a third visit without it.
            let third = build(102, None);
            let noiseless_first = noiseless(&first);
            assert_eq!(noiseless_first, noiseless(&third));
            let noiseless_second = noiseless(&second);
            assert!(f64::from(noiseless_second[centre] - noiseless_first[centre]) > 0.8 * peak_adu);
        }
    }

    #[test]
    fn a_transient_on_the_default_scene_follows_the_exposure() {
        let params = SkyParameters::default();
        let scene = Scene { field_id: None, transient: Some(Transient { flux_adu: 1.0e5 }) };
        let generator = field_generator(params, scene, 77, 4);
        let site = transient_site(params.seed, scene.field_key(77), "R22_S11", 4, Vendor::Itl);
        let plain = field_generator(params, Scene::default(), 77, 4);
        let centre = site.row as usize * COLUMNS + site.column as usize;
        assert!(noiseless(&generator)[centre] - noiseless(&plain)[centre] > 5_000);
    }
}
